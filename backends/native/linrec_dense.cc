// linrec native dense products for decoding: y (M, N) = x (M, K) @ W (K, N) + bias (N), float32, few rows M.
//
// Why: a decode step at small batch reads every weight once per token and does ~1 multiply-add per weight, so its
// time is the time to stream the weights. The frameworks' BLAS calls run such a product on one core (MKL's sgemv,
// XLA:CPU's dot) at ~30-60 GB/s from the last-level cache; two cores streaming disjoint column panels read ~115 GB/s
// (benchmarks/decode.py). With more rows the product becomes compute-bound: at 16-32 rows the kernel runs at ~80-90 %
// of both cores' multiply-add peak, 1.2-2x faster than XLA:CPU's dot and MKL (benchmarks/results/dense.md);
// callers use it up to `linrec_dense_max_rows()` rows and keep the framework's product beyond.
//
// Layout: W is packed once, by the caller (linrec.backends.native.dense_pack), into panels of kPanel = 16 columns:
// panel p holds W[:, 16p:16p+16] as K contiguous rows of 16 floats (the last panel zero-padded), so each thread
// streams one contiguous block and each k step loads two 8-float vectors that every row of x reuses. Each output
// element is summed by one thread in the order k = 0..K-1 (one fused multiply-add per k), so results do not depend
// on the thread count.
//
// Threads: persistent workers (started on first use) that spin for a short while after each product and then
// sleep on a condition variable: a decode loop issues products microseconds apart, and waking a sleeping thread
// costs ~5-50 us, as much as the product. After fork() the child starts its own workers.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define LINREC_DENSE_AVX2 1
#endif
#if defined(__SSE2__)
#include <emmintrin.h>  // _mm_pause, also in builds without the CPU's own flags (the loader's fallback)
#endif

#ifdef __linux__
#include <pthread.h>
#endif

extern "C" int linrec_num_threads();
extern "C" int linrec_dense_rows(int64_t m, int64_t k, int64_t n, const float* x, const float* packed,
                                 const float* bias, float* y);

namespace {

constexpr int64_t kPanel = 16;
// Products reading fewer weights than this run on the calling thread alone (waking a worker costs more).
constexpr int64_t kMinParallelWeights = int64_t{1} << 15;
// How long an idle worker spins before it sleeps.
constexpr auto kSpin = std::chrono::microseconds(200);
constexpr int kMaxRows = 32;

struct Product {
  const float* x;
  const float* wp;
  const float* bias;  // may be null
  float* y;
  int64_t m, k, n;
};

#ifdef LINREC_DENSE_AVX2
// The accumulators of MR rows against one panel: two 8-float vectors per row, as a recursive struct of named
// members rather than an array. With arrays (`__m256 lo[MR]`) GCC 12 at -O3 kept the accumulators in registers but
// also stored every one of them to the stack on every k step (12 stores per 12 multiply-adds), which halved the
// product's speed at 6 rows; named members stay in registers.
template <int MR>
struct RowAcc {
  __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
  RowAcc<MR - 1> rest;
  __attribute__((always_inline)) void step(const float* x, int64_t ldx, __m256 w0, __m256 w1) {
    const __m256 xv = _mm256_broadcast_ss(x);
    lo = _mm256_fmadd_ps(xv, w0, lo);
    hi = _mm256_fmadd_ps(xv, w1, hi);
    rest.step(x + ldx, ldx, w0, w1);
  }
  __attribute__((always_inline)) void store(float* out) {
    _mm256_storeu_ps(out, lo);
    _mm256_storeu_ps(out + 8, hi);
    rest.store(out + kPanel);
  }
};
template <>
struct RowAcc<0> {
  void step(const float*, int64_t, __m256, __m256) {}
  void store(float*) {}
};
#endif

// Rows [0, MR) of x against panel `wp` (K x 16) -> out (MR x 16, row after row).
template <int MR>
__attribute__((noinline)) void panel_rows(const float* __restrict x, int64_t ldx, const float* __restrict wp,
                                          int64_t k_len, float* __restrict out) {
#ifdef LINREC_DENSE_AVX2
  RowAcc<MR> acc;
  for (int64_t k = 0; k < k_len; ++k)
    acc.step(x + k, ldx, _mm256_loadu_ps(wp + k * kPanel), _mm256_loadu_ps(wp + k * kPanel + 8));
  acc.store(out);
#else
  for (int j = 0; j < MR * kPanel; ++j) out[j] = 0.0f;
  for (int64_t k = 0; k < k_len; ++k)
    for (int r = 0; r < MR; ++r) {
      const float xv = x[r * ldx + k];
      for (int j = 0; j < kPanel; ++j) out[r * kPanel + j] = __builtin_fmaf(xv, wp[k * kPanel + j], out[r * kPanel + j]);
    }
#endif
}

template <int MR>
void rows_block(const Product& p, int64_t row, int64_t panel) {
  float acc[MR][kPanel];
  panel_rows<MR>(p.x + row * p.k, p.k, p.wp + panel * p.k * kPanel, p.k, &acc[0][0]);
  const int64_t n0 = panel * kPanel, width = std::min(kPanel, p.n - n0);
  for (int r = 0; r < MR; ++r) {
    float* y = p.y + (row + r) * p.n + n0;
    for (int64_t j = 0; j < width; ++j) y[j] = p.bias ? acc[r][j] + p.bias[n0 + j] : acc[r][j];
  }
}

// Panels [p0, p1) for every row.
void run_panels(const Product& p, int64_t p0, int64_t p1) {
  for (int64_t panel = p0; panel < p1; ++panel) {
    // Blocks of 6 rows: 12 accumulators, the two weight vectors and a broadcast fill 15 of AVX2's 16 registers
    // (8 rows spill; 4 rows leave the FMA units waiting on loads).
    int64_t row = 0;
    for (; row + 6 <= p.m; row += 6) rows_block<6>(p, row, panel);
    switch (p.m - row) {
      case 5: rows_block<5>(p, row, panel); break;
      case 4: rows_block<4>(p, row, panel); break;
      case 3: rows_block<3>(p, row, panel); break;
      case 2: rows_block<2>(p, row, panel); break;
      case 1: rows_block<1>(p, row, panel); break;
      default: break;
    }
  }
}

// The worker pool. Product g (the `generation` counter) is split into `threads` shares of panels; the caller runs
// share 0, and share i > 0 goes to whoever claims it first: worker i, or the caller once it is done with its own
// (claim[i]: g-1 -> g by compare-and-swap). So the caller never waits for a worker that is not running (another
// process's threads, or a framework's spinning OpenMP pool, may hold the other core: waiting for a descheduled worker
// cost up to ~0.5 ms per product), only for a share a running worker has claimed.
constexpr int kMaxThreads = 64;

struct Pool {
  int threads = 1;
  std::atomic<uint64_t> generation{0};
  std::atomic<uint64_t> claim[kMaxThreads] = {};
  std::atomic<uint64_t> done[kMaxThreads] = {};
  std::atomic<int> sleepers{0};
  const Product* current = nullptr;
  int64_t panels_per_thread = 0, panels = 0;
  std::mutex mu;
  std::condition_variable cv;
  std::mutex submit;  // one product at a time (callers on several threads take turns)
};

Pool* g_pool = nullptr;
std::once_flag* g_once = new std::once_flag;

void share(Pool* pool, int i) {
  const int64_t p0 = std::min(pool->panels, i * pool->panels_per_thread);
  const int64_t p1 = std::min(pool->panels, p0 + pool->panels_per_thread);
  if (p0 < p1) run_panels(*pool->current, p0, p1);
}

// Claim share i of product g for the calling thread; false when the other party already has it.
bool claim(Pool* pool, int i, uint64_t g) {
  uint64_t expected = g - 1;
  return pool->claim[i].compare_exchange_strong(expected, g, std::memory_order_acq_rel);
}

void worker(Pool* pool, int i) {
  uint64_t seen = 0;
  for (;;) {
    auto start = std::chrono::steady_clock::now();
    int spins = 0;
    uint64_t g;
    while ((g = pool->generation.load(std::memory_order_acquire)) == seen) {
      // Yield while waiting: a framework's own threads (PyTorch's OpenMP pool) may need this core meanwhile, and a
      // worker that only spun here slowed their parallel regions (minLSTM's decode step: 92 -> 199 us).
      std::this_thread::yield();
      if (++spins % 16 == 0 && std::chrono::steady_clock::now() - start > kSpin) {
        std::unique_lock<std::mutex> lock(pool->mu);
        pool->sleepers.fetch_add(1);
        pool->cv.wait(lock, [&] { return pool->generation.load() != seen; });
        pool->sleepers.fetch_sub(1);
        start = std::chrono::steady_clock::now();
      }
    }
    seen = g;
    if (claim(pool, i, g)) {  // (else the caller took this share, or product g is long done)
      share(pool, i);
      pool->done[i].store(g, std::memory_order_release);
    }
  }
}

void start_pool() {
  // Leaked on purpose: detached workers may still be waiting on it while the process exits.
  Pool* pool = new Pool;
  pool->threads = std::min(kMaxThreads, std::max(1, linrec_num_threads()));
  for (int i = 1; i < pool->threads; ++i) {
    try {
      std::thread(worker, pool, i).detach();
    } catch (...) {
      pool->threads = i;  // no more threads: the ones started share the work
      break;
    }
  }
  g_pool = pool;
}

#ifdef __linux__
// A forked child has only the forking thread: it must start its own workers.
void forget_pool_in_child() {
  g_pool = nullptr;
  g_once = new std::once_flag;
}
#endif

Pool* pool() {
#ifdef __linux__
  static const int registered = pthread_atfork(nullptr, nullptr, forget_pool_in_child);
  (void)registered;
#endif
  std::call_once(*g_once, start_pool);
  return g_pool;
}

void run_product(const Product& p) {
  const int64_t panels = (p.n + kPanel - 1) / kPanel;
  if (p.m == 0 || panels == 0) return;
  if (p.k * p.n < kMinParallelWeights || linrec_num_threads() == 1) {
    run_panels(p, 0, panels);
    return;
  }
  Pool* pl = pool();
  if (pl->threads == 1) {
    run_panels(p, 0, panels);
    return;
  }
  std::lock_guard<std::mutex> turn(pl->submit);
  pl->current = &p;
  pl->panels = panels;
  pl->panels_per_thread = (panels + pl->threads - 1) / pl->threads;
  const uint64_t g = pl->generation.load(std::memory_order_relaxed) + 1;
  pl->generation.store(g);  // seq_cst: ordered before the load of `sleepers` below (else a wakeup could be lost)
  if (pl->sleepers.load() > 0) {
    std::lock_guard<std::mutex> lock(pl->mu);
    pl->cv.notify_all();
  }
  share(pl, 0);
  for (int i = 1; i < pl->threads; ++i) {
    if (claim(pl, i, g)) {
      share(pl, i);
      pl->done[i].store(g, std::memory_order_relaxed);
    } else {
      while (pl->done[i].load(std::memory_order_acquire) != g) {
#if defined(__SSE2__)
        _mm_pause();
#endif
      }
    }
  }
}

}  // namespace

extern "C" {

int linrec_dense_panel() { return static_cast<int>(kPanel); }

int linrec_dense_max_rows() { return kMaxRows; }

// Floats of the packed form of a (K, N) kernel.
int64_t linrec_dense_packed_size(int64_t k, int64_t n) { return (n + kPanel - 1) / kPanel * kPanel * k; }

// y (M, N) = x (M, K) @ W + bias (null: none), W packed (see the top); returns 2 for bad sizes.
int linrec_dense(int64_t m, int64_t k, int64_t n, const float* x, const float* packed, const float* bias, float* y) {
  if (m > kMaxRows) return 2;
  return linrec_dense_rows(m, k, n, x, packed, bias, y);
}

// linrec_dense for any number of rows (the decode programs: every row of a step in one pass over the weights).
int linrec_dense_rows(int64_t m, int64_t k, int64_t n, const float* x, const float* packed, const float* bias,
                      float* y) {
  if (m < 0 || k < 0 || n < 0) return 2;
  run_product(Product{x, packed, bias, y, m, k, n});
  return 0;
}

}  // extern "C"

#ifdef LINREC_WITH_XLA_FFI
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// x (M, K), packed (P, K, 16), bias (N,) or (0,) for none -> y (M, N); float32 only.
ffi::Error DenseImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> packed, ffi::Buffer<ffi::F32> bias,
                     ffi::ResultBuffer<ffi::F32> y) {
  auto xd = x.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || yd.size() != 2 || xd[0] != yd[0])
    return ffi::Error::InvalidArgument("linrec: dense takes x (M, K) and returns y (M, N)");
  const int64_t m = xd[0], k = xd[1], n = yd[1];
  if (m > kMaxRows)
    return ffi::Error::InvalidArgument("linrec: the native dense product takes at most " + std::to_string(kMaxRows) +
                                       " rows");
  if (static_cast<int64_t>(packed.element_count()) != linrec_dense_packed_size(k, n))
    return ffi::Error::InvalidArgument("linrec: the packed kernel does not match x (M, K) and y (M, N)");
  const int64_t nb = static_cast<int64_t>(bias.element_count());
  if (nb != 0 && nb != n) return ffi::Error::InvalidArgument("linrec: bias must be (N,) or (0,)");
  run_product(Product{x.typed_data(), packed.typed_data(), nb ? bias.typed_data() : nullptr, y->typed_data(), m, k,
                      n});
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(linrec_dense_ffi, DenseImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // packed
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y
);
#endif  // LINREC_WITH_XLA_FFI
