// linrec native CPU kernel: the linear recurrence h_t = a_t * h_{t-1} + b_t (spec/recurrence.md) and its VJP.
//
// Layout (row-major, contiguous): a (N, T, Da), b/h (N, T, D), h0/final (N, D), cut (N, T) bytes or absent.
//   N  = every leading (batch, vmap) axis flattened,
//   D  = the state flattened, D = Da * R: `a` is repeated R times along the contiguous state axis. This covers a full
//        decay (R = 1), a per-row decay of a matrix state (a: (H, K, 1), R = V) and a scalar decay (Da = 1); any other
//        broadcast is materialised by the caller.
//   cut[n, t] != 0: step t ignores the carried state (h_t = b_t), i.e. `linrec.spec.reference.cut_mask` in time order.
//   reverse: steps run t = T-1 .. 0, so "the previous step" of t is t+1.
// Supported (a, state) dtypes: (f32, f32), (f64, f64), (c64, c64), (c128, c128), and a real decay of a complex state
// (f32, c64), (f64, c128); and (bf16, bf16) streams with a float32 state (h0, final in float32; h rounded to bf16 as
// it is stored, see "bfloat16 streams"). IEEE semantics: build without -ffast-math; the carried state is never rounded.
//
// Two bindings of the same templates: a plain C ABI (ctypes: torch, numpy) and, when compiled with
// -DLINREC_WITH_XLA_FFI, XLA FFI handlers (jax.ffi.ffi_call).
//
// The build (build.py) compiles this file more than once, in parallel, and links the objects: -DLINREC_PARTS=mask
// selects the exports of one object (1: the plain scan and the ABI queries, 2: minGRU/minLSTM, 4: GatedLinearRNN,
// 8: the multi-head GateLoop forward, 16: its backward). Each object instantiates only the templates its exports
// reach, so the compiles share the work; without LINREC_PARTS the file is the whole library in one translation unit.
#ifndef LINREC_PARTS
#define LINREC_PARTS 31
#endif
#define LINREC_PART_SCAN (LINREC_PARTS & 1)
#define LINREC_PART_MINGRU (LINREC_PARTS & 2)
#define LINREC_PART_GLR (LINREC_PARTS & 4)
#define LINREC_PART_GMH_FWD (LINREC_PARTS & 8)
#define LINREC_PART_GMH_BWD (LINREC_PARTS & 16)

#include <algorithm>
#include <atomic>
#include <cmath>
#include <complex>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__AVX__)
#include <immintrin.h>
#endif

#ifdef __linux__
#include <sched.h>
#include <sys/mman.h>
#endif

namespace {

using c64 = std::complex<float>;
using c128 = std::complex<double>;

// ------------------------------------------------------------------------------------------------------------------
// Arithmetic. Complex products are written out as the textbook formula, which is what NumPy and XLA compute:
// std::complex's operator* adds C99 Annex G NaN/inf recovery (a call to __mulsc3) that blocks vectorisation.

template <class T>
inline T mul(T x, T y) { return x * y; }
template <class T>
inline std::complex<T> mul(std::complex<T> x, std::complex<T> y) {
  return {x.real() * y.real() - x.imag() * y.imag(), x.real() * y.imag() + x.imag() * y.real()};
}
template <class T>
inline std::complex<T> mul(T x, std::complex<T> y) { return {x * y.real(), x * y.imag()}; }

// PyTorch's autograd convention conjugates the Jacobian (recurrence.md §10); JAX's does not.
template <bool kConj, class T>
inline T cj(T x) { return x; }
template <bool kConj, class T>
inline std::complex<T> cj(std::complex<T> x) { return kConj ? std::conj(x) : x; }

// The cotangent of a real decay of a complex state is the real part (the imaginary direction does not exist).
template <class A, class S>
inline A project(S x) {
  if constexpr (std::is_same<A, S>::value) {
    return x;
  } else {
    return x.real();
  }
}

struct Shape {
  int64_t n, t, d, da, r;  // r = d / da
  // Backward kernels: elements between the cotangent's rows, d, or 0 when one row of d serves every step (the
  // expanded cotangent of a sum or mean, which the caller then need not materialise at the size of h).
  int64_t ct_rs = 0;
};

// kBadShape unless the cotangent's row stride is d (one row per step) or 0 (one row shared by every step).
int check_ct_stride(int64_t ct_row_stride, int64_t d);

// ------------------------------------------------------------------------------------------------------------------
// Threads. The scan is sequential in T but independent across (n, state element), so work items are (n, block of
// Da units); a block never splits one unit of R state elements, so the backward can sum a_bar over R locally and every
// output element is computed by exactly one thread in a fixed order (results do not depend on the thread count).

// Below this many state updates a single thread wins: starting threads costs ~20-50 us.
constexpr int64_t kMinParallelWork = int64_t{1} << 16;
// Narrower blocks than this many state elements make the inner (vectorised) loop too short.
constexpr int64_t kMinBlockElems = 64;

int num_threads() {
  static const int cached = [] {
    if (const char* env = std::getenv("LINREC_NUM_THREADS")) {
      int v = std::atoi(env);
      if (v >= 1) return v;
    }
#ifdef __linux__
    // The cores this process may run on (containers and taskset), not the machine's.
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
    return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  }();
  return cached;
}

template <class F>
void parallel_blocks(const Shape& s, F&& body) {
  if (s.n == 0 || s.da == 0) return;
  const int threads = s.n * s.t * s.d < kMinParallelWork ? 1 : num_threads();
  // Split each row into enough blocks to feed every thread a few items, but keep blocks wide.
  int64_t blocks_per_row = std::max<int64_t>(1, (4 * threads + s.n - 1) / s.n);
  blocks_per_row = std::min({blocks_per_row, s.da, std::max<int64_t>(1, s.d / kMinBlockElems)});
  const int64_t units = (s.da + blocks_per_row - 1) / blocks_per_row;
  blocks_per_row = (s.da + units - 1) / units;
  const int64_t items = s.n * blocks_per_row;
  auto run = [&](int64_t k) {
    const int64_t n = k / blocks_per_row, i0 = (k % blocks_per_row) * units;
    body(n, i0, std::min(i0 + units, s.da));
  };
  if (threads == 1 || items == 1) {
    for (int64_t k = 0; k < items; ++k) run(k);
    return;
  }
  std::atomic<int64_t> next{0};
  auto worker = [&] {
    for (int64_t k; (k = next.fetch_add(1, std::memory_order_relaxed)) < items;) run(k);
  };
  std::vector<std::thread> pool;
  const int64_t extra = std::min<int64_t>(threads, items) - 1;
  try {
    for (int64_t i = 0; i < extra; ++i) pool.emplace_back(worker);
  } catch (...) {
    // No more threads available: the caller's thread drains the remaining items.
  }
  worker();
  for (auto& th : pool) th.join();
}

// ------------------------------------------------------------------------------------------------------------------
// Output memory. Frameworks hand the kernel freshly mapped result buffers (XLA and torch allocate per call), so the
// first write to every 4 KiB page takes a page fault; at T*D in the millions that costs as much as the scan itself.
// Asking for transparent huge pages on the 2 MiB-aligned interior of a large output cuts the faults 512-fold. Advice
// only: where THP is off ("never") or the range is already populated it changes nothing; LINREC_HUGEPAGES=0 disables.

constexpr uintptr_t kHugePage = uintptr_t{1} << 21;

bool hugepages_enabled() {
  static const bool cached = [] {
    const char* env = std::getenv("LINREC_HUGEPAGES");
    return !(env && env[0] == '0');
  }();
  return cached;
}

void advise_output(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (bytes < 4 * kHugePage || !hugepages_enabled()) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHugePage - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

// ------------------------------------------------------------------------------------------------------------------
// Streaming stores. Each kernel keeps the row it carries from step to step (h in the forward, g in the backward) in
// a small per-thread buffer and only ever writes its outputs, never reads them back. Large outputs are then written
// with non-temporal stores: no read-for-ownership of lines about to be overwritten, and no cache pollution. This
// matters most for walks down through memory (the forward with reverse, the backward without), which hardware
// prefetchers serve poorly: measured on AMD EPYC, ordinary descending row writes ran 3x slower than ascending ones,
// streaming stores ran at full speed in both directions. Small outputs are left in cache for whoever reads them next.

constexpr size_t kStreamMinBytes = size_t{8} << 20;

bool stream_enabled(size_t output_bytes) {
  static const bool allowed = [] {
    const char* env = std::getenv("LINREC_STREAM_STORES");
    return !(env && env[0] == '0');
  }();
  return allowed && output_bytes >= kStreamMinBytes;
}

// Copies `bytes` from src to dst, with non-temporal stores where `stream` is set and the CPU has them.
inline void store_row(void* dst, const void* src, size_t bytes, bool stream) {
#if defined(__SSE2__)
  if (stream) {
    char* d = static_cast<char*>(dst);
    const char* c = static_cast<const char*>(src);
    const size_t head = std::min(bytes, (16 - reinterpret_cast<uintptr_t>(d) % 16) % 16);
    std::memcpy(d, c, head);
    size_t i = head;
    for (; i + 16 <= bytes; i += 16) {
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + i), _mm_loadu_si128(reinterpret_cast<const __m128i*>(c + i)));
    }
    std::memcpy(d + i, c + i, bytes - i);
    return;
  }
#endif
  (void)stream;
  std::memcpy(dst, src, bytes);
}

// Walks down through memory also read poorly (ascending: hardware prefetch), so the rows kPrefetchRows steps ahead
// are requested into L2 by hand: measured on AMD EPYC, the backward went from 16.6 ms to 9.4 ms (8x4096x512 f32).
// Into L2 rather than L1 (prefetcht1): L1 prefetches of three 2 KiB streams did not help at all.
constexpr int64_t kPrefetchRows = 8;

inline void prefetch_span(const void* p, size_t bytes) {
#if defined(__GNUC__)
  const char* c = static_cast<const char*>(p);
  for (size_t i = 0; i < bytes; i += 64) __builtin_prefetch(c + i, /*rw=*/0, /*locality=*/1);
#else
  (void)p;
  (void)bytes;
#endif
}

// Makes this thread's streaming stores visible before the work item is reported done.
inline void store_fence(bool stream) {
#if defined(__SSE2__)
  if (stream) _mm_sfence();
#endif
  (void)stream;
}

// ------------------------------------------------------------------------------------------------------------------
// bfloat16 streams (recurrence.md §5: low-precision inputs accumulate in float32 and are rounded once on output).
// With bf16 a, b the kernel reads them as 16-bit values, widens them exactly (bf16 is the top half of a float32),
// keeps the carried state in float32 and rounds each h (and, in the backward, each a_bar, b_bar) to bf16 as it is
// stored: the bytes moved are half those of float32, and the arithmetic is exactly the float32 kernel's on the
// widened values. The state that enters or leaves the kernel (h0, final, ct_final, h0_bar) stays float32.

struct bf16 {
  uint16_t bits;
};

// The arithmetic type of an element stored as M: float for bf16, M itself otherwise.
template <class M>
struct ComputeOf {
  using type = M;
};
template <>
struct ComputeOf<bf16> {
  using type = float;
};
template <class M>
using compute_t = typename ComputeOf<M>::type;

template <class T>
inline T ld(T x) { return x; }
inline float ld(bf16 x) {
  const uint32_t u = uint32_t{x.bits} << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// float32 -> bf16, round to nearest even. A NaN keeps its sign and top payload bits with the quiet bit set (plain
// rounding could carry a NaN's payload into the exponent and turn it into inf). Branch-free so the loop vectorises.
inline bf16 to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t quiet = (u >> 16) | 0x40u;
  const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
  return bf16{static_cast<uint16_t>(nan ? quiet : rounded)};
}

// Stores `count` computed values (type S) to memory of type M: straight from the row when M is S, else through
// `scratch` (count elements of M) rounded, so the streaming-store path sees the final bytes.
template <class M, class S>
inline void store_row_as(M* dst, const S* __restrict src, int64_t count, M* __restrict scratch, bool stream) {
  if constexpr (std::is_same<M, S>::value) {
    (void)scratch;
    store_row(dst, src, sizeof(M) * count, stream);
  } else {
    for (int64_t i = 0; i < count; ++i) scratch[i] = to_bf16(src[i]);
    store_row(dst, scratch, sizeof(M) * count, stream);
  }
}

// A computed value as stored in memory of type M.
template <class M, class S>
inline M to_mem(S x) {
  if constexpr (std::is_same<M, S>::value) {
    return x;
  } else {
    return to_bf16(x);
  }
}

// Scratch for store_row_as: empty when no rounding is needed.
template <class M, class S>
std::vector<M> rounding_scratch(int64_t count) {
  return std::vector<M>(std::is_same<M, S>::value ? 0 : count);
}

// ------------------------------------------------------------------------------------------------------------------
// Forward: h_t = a_t * h_{t-1} + b_t over state units [i0, i1), updating the carried row in place. Restrict-qualified
// so the compiler vectorises without runtime alias checks (the carry is private scratch memory). AM, SM: the types of
// a and of b/h in memory; the carry is compute_t<SM>.

template <class AM, class SM, class S>
inline void fwd_step(int64_t units, int64_t r, const AM* __restrict a, const SM* __restrict b, S* __restrict carry,
                     SM* __restrict rounded) {
  if (r == 1 && !std::is_same<SM, S>::value) {
    // bf16: the rounded row is written in the same pass (one read of the carry, not two)
    for (int64_t d = 0; d < units; ++d) {
      const S c = mul(ld(a[d]), carry[d]) + ld(b[d]);
      carry[d] = c;
      rounded[d] = to_mem<SM>(c);
    }
  } else if (r == 1) {
    (void)rounded;
    for (int64_t d = 0; d < units; ++d) carry[d] = mul(ld(a[d]), carry[d]) + ld(b[d]);
  } else {
    for (int64_t i = 0; i < units; ++i) {
      const auto ai = ld(a[i]);
      for (int64_t d = i * r; d < (i + 1) * r; ++d) carry[d] = mul(ai, carry[d]) + ld(b[d]);
    }
  }
}

template <class AM, class SM, class S = compute_t<SM>>
void scan_fwd(const Shape& s, const AM* a, const SM* b, const S* h0, const uint8_t* cut, bool reverse, SM* h,
              S* fin) {
  const bool stream = stream_enabled(sizeof(SM) * s.n * s.t * s.d);
  parallel_blocks(s, [&](int64_t n, int64_t i0, int64_t i1) {
    const int64_t d0 = i0 * s.r, d1 = i1 * s.r, width = d1 - d0;
    std::vector<S> carry(h0 + n * s.d + d0, h0 + n * s.d + d1);
    std::vector<SM> h_mem = rounding_scratch<SM, S>(width);
    for (int64_t k = 0; k < s.t; ++k) {
      const int64_t row = n * s.t + (reverse ? s.t - 1 - k : k);
      const SM* b_row = b + row * s.d + d0;
      if (reverse && k + kPrefetchRows < s.t) {
        prefetch_span(b_row - kPrefetchRows * s.d, sizeof(SM) * width);
        prefetch_span(a + (row - kPrefetchRows) * s.da + i0, sizeof(AM) * (i1 - i0));
      }
      if (cut && cut[row]) {
        // A segment start: the carried state is dropped, as in the reference (h_t = a_t * 0 + b_t).
        S* __restrict c = carry.data();
        for (int64_t d = 0; d < width; ++d) c[d] = ld(b_row[d]);
      } else {
        fwd_step(i1 - i0, s.r, a + row * s.da + i0, b_row, carry.data(), h_mem.data());
        if (s.r == 1 && !std::is_same<SM, S>::value) {  // rounded by fwd_step already
          store_row(h + row * s.d + d0, h_mem.data(), sizeof(SM) * width, stream);
          continue;
        }
      }
      store_row_as(h + row * s.d + d0, carry.data(), width, h_mem.data(), stream);
    }
    std::copy(carry.begin(), carry.end(), fin + n * s.d + d0);
    store_fence(stream);
  });
}

// ------------------------------------------------------------------------------------------------------------------
// Backward (recurrence.md §10), walking the steps in the opposite order of the forward pass:
//   g_last = ct_h_last + ct_final,  g_k = ct_h_k + a_{k+1} g_{k+1}  (0 when step k+1 is cut),
//   a_bar_k = sum_R g_k h_{k-1}  (0 at cut steps),  b_bar_k = g_k,  h0_bar = a_0 g_0 (0 when step 0 is cut).
// g is carried in per-thread scratch (as the forward's h) and stored to b_bar; a_bar goes through a second row.
// With bf16 streams (AM = SM = bf16) a, h, ct_h are read as bf16, g and the a_bar sums are float32, a_bar and b_bar
// are rounded on store; h0, ct_final and h0_bar are float32.

// a_bar of one step from g and the previous state `prev` (h of the previous step, or h0 at the first).
template <bool kConj, class A, class S, class P>
inline void abar_row(int64_t units, int64_t r, const S* __restrict g, const P* __restrict prev, A* __restrict ab) {
  if (r == 1) {
    for (int64_t d = 0; d < units; ++d) ab[d] = project<A>(mul(g[d], cj<kConj>(S(ld(prev[d])))));
  } else {
    for (int64_t i = 0; i < units; ++i) {
      S acc(0);
      for (int64_t d = i * r; d < (i + 1) * r; ++d) acc += mul(g[d], cj<kConj>(S(ld(prev[d]))));
      ab[i] = project<A>(acc);
    }
  }
}

template <bool kConj, class AM, class SM, class A = compute_t<AM>, class S = compute_t<SM>>
void scan_bwd(const Shape& s, const AM* a, const SM* h, const S* h0, const SM* ct_h, const S* ct_final,
              const uint8_t* cut, bool reverse, AM* a_bar, SM* b_bar, S* h0_bar) {
  const bool stream = stream_enabled(sizeof(SM) * s.n * s.t * s.d);
  parallel_blocks(s, [&](int64_t n, int64_t i0, int64_t i1) {
    const int64_t d0 = i0 * s.r, d1 = i1 * s.r, width = d1 - d0, units = i1 - i0;
    auto row_of = [&](int64_t k) { return n * s.t + (reverse ? s.t - 1 - k : k); };
    std::vector<S> g_row(width);
    std::vector<A> ab_row(units);
    std::vector<SM> g_mem = rounding_scratch<SM, S>(width);
    std::vector<AM> ab_mem = rounding_scratch<AM, A>(units);
    S* __restrict g = g_row.data();
    A* __restrict ab = ab_row.data();
    const AM* a_next = nullptr;  // a of the step processed after this one (forward order), from unit i0
    bool cut_next = false;
    for (int64_t k = s.t - 1; k >= 0; --k) {
      const int64_t row = row_of(k);
      const SM* __restrict ct = ct_h + row * s.ct_rs + d0;
      if (!reverse && k > kPrefetchRows) {
        prefetch_span(ct - kPrefetchRows * s.ct_rs, sizeof(SM) * width);
        prefetch_span(h + (row - 1 - kPrefetchRows) * s.d + d0, sizeof(SM) * width);
        prefetch_span(a + (row - kPrefetchRows) * s.da + i0, sizeof(AM) * units);
      }
      if (a_next == nullptr) {
        const S* __restrict cf = ct_final + n * s.d + d0;
        for (int64_t d = 0; d < width; ++d) g[d] = ld(ct[d]) + cf[d];
      } else if (cut_next) {
        for (int64_t d = 0; d < width; ++d) g[d] = ld(ct[d]);
      } else if (s.r == 1) {
        for (int64_t d = 0; d < width; ++d) g[d] = ld(ct[d]) + mul(cj<kConj>(ld(a_next[d])), g[d]);
      } else {
        for (int64_t i = 0; i < units; ++i) {
          const A ai = cj<kConj>(ld(a_next[i]));
          for (int64_t d = i * s.r; d < (i + 1) * s.r; ++d) g[d] = ld(ct[d]) + mul(ai, g[d]);
        }
      }
      store_row_as(b_bar + row * s.d + d0, g, width, g_mem.data(), stream);
      const bool is_cut = cut && cut[row];
      if (is_cut) {
        std::fill(ab, ab + units, A(0));
      } else if (k == 0) {
        abar_row<kConj>(units, s.r, g, h0 + n * s.d + d0, ab);
      } else {
        abar_row<kConj>(units, s.r, g, h + row_of(k - 1) * s.d + d0, ab);
      }
      store_row_as(a_bar + row * s.da + i0, ab, units, ab_mem.data(), stream);
      a_next = a + row * s.da + i0;
      cut_next = is_cut;
    }
    S* __restrict out = h0_bar + n * s.d + d0;
    if (a_next == nullptr) {  // T == 0: final_state is initial_state
      std::copy(ct_final + n * s.d + d0, ct_final + n * s.d + d1, out);
    } else if (cut_next) {
      std::fill(out, out + width, S(0));
    } else {
      for (int64_t i = 0; i < units; ++i) {
        const A ai = cj<kConj>(ld(a_next[i]));
        for (int64_t d = i * s.r; d < (i + 1) * s.r; ++d) out[d] = mul(ai, g[d]);
      }
    }
    store_fence(stream);
  });
}

// ------------------------------------------------------------------------------------------------------------------
// minGRU with its gates fused into the scan (spec/mingru.md): per step, from the projection u = [u_z | u_h] (2H),
//   a = 1 - z = sigma(-u_z),  b = z * c(u_h),  z = sigma(u_z),  c = g (g(x) = x + 0.5 for x >= 0, else sigma(x))
//   or the identity;  h_t = a h_{t-1} + b.
// Reading u once and writing h once (12 bytes per state element in float32) replaces a gate pass that writes a and b
// and a scan that reads them back (28 bytes), and the backward writes du directly. Real dtypes only.

enum Candidate : int { kIdentity = 0, kG = 1 };

// exp(x) for x <= 0 in plain arithmetic the compiler vectorises (libm's exp is a scalar call that stops the gate
// loops from vectorising; with it the fused kernels ran ~10x slower than the plain scan). Cody-Waite reduction
// x = n ln2 + r, |r| <= ln2/2, a Taylor polynomial for e^r, and 2^n built in the exponent bits. Error: ~1 ulp in
// float32 (degree 7), ~2 ulp in float64 (degree 13). Below the smallest normal result it returns ~0 (clamped):
// sigmoids of |x| > 87 (float32) / 708 (float64) differ from the correctly rounded tiny values by < 1e-37 / 1e-307.
template <class S> struct ExpConsts;
template <> struct ExpConsts<float> {
  using I = int32_t;
  static constexpr float kMin = -87.0f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  static constexpr int kDegree = 7, kMantissa = 23, kBias = 127;
  static constexpr float kInverse[] = {0, 1.0f, 1 / 2.0f, 1 / 3.0f, 1 / 4.0f, 1 / 5.0f, 1 / 6.0f, 1 / 7.0f};
};
template <> struct ExpConsts<double> {
  using I = int64_t;
  static constexpr double kMin = -708.0, kLn2Hi = 0.6931471803691238, kLn2Lo = 1.9082149292705877e-10;
  static constexpr int kDegree = 13, kMantissa = 52, kBias = 1023;
  static constexpr double kInverse[] = {0, 1.0, 1 / 2.0, 1 / 3.0, 1 / 4.0, 1 / 5.0, 1 / 6.0, 1 / 7.0,
                                        1 / 8.0, 1 / 9.0, 1 / 10.0, 1 / 11.0, 1 / 12.0, 1 / 13.0};
};

// sum_{k <= K} r^k / k! in Horner form, unrolled at compile time (a loop here would stop the caller vectorising).
template <class S, int K, int k = K>
inline S horner(S r, S acc = S(1)) {
  if constexpr (k == 0) {
    return acc;
  } else {
    return horner<S, K, k - 1>(r, S(1) + acc * r * ExpConsts<S>::kInverse[k]);
  }
}

template <class S>
inline S exp_nonpositive(S x) {
  using C = ExpConsts<S>;
  using I = typename C::I;
  x = x < C::kMin ? C::kMin : x;
  const S n = static_cast<S>(static_cast<I>(x * S(1.4426950408889634) - S(0.5)));  // round(x / ln2), x <= 0
  const S r = (x - n * C::kLn2Hi) - n * C::kLn2Lo;
  const S p = horner<S, C::kDegree>(r);
  const I bits = (static_cast<I>(n) + C::kBias) << C::kMantissa;
  S scale;
  std::memcpy(&scale, &bits, sizeof(S));
  return p * scale;
}

// sigma(x) and sigma(-x) = 1 - sigma(x) from one exp, each accurate near 0 (no 1 - s cancellation).
template <class S>
inline void sigmoid_pair(S x, S& pos, S& neg) {
  const S e = exp_nonpositive(-std::abs(x));
  const S r = S(1) / (S(1) + e);
  pos = x >= 0 ? r : e * r;
  neg = x >= 0 ? e * r : r;
}

template <int kKind, class S>
inline S candidate_of(S x) {
  if constexpr (kKind == kIdentity) return x;
  // g(x) = x + 0.5 for x >= 0, else sigma(x), as a blend rather than a select: with AVX-512 GCC left the select
  // scalar. max(x, 0) keeps the unused branch finite at x = -inf (0 * inf would be NaN); NaN still gives NaN.
  const S e = exp_nonpositive(-std::abs(x));
  const S m = x >= 0 ? S(1) : S(0);
  return m * (std::max(x, S(0)) + S(0.5)) + (S(1) - m) * (e / (S(1) + e));
}

template <int kKind, class S>
inline S candidate_grad(S x) {
  if constexpr (kKind == kIdentity) return S(1);
  const S e = exp_nonpositive(-std::abs(x));
  const S s = e / (S(1) + e);  // sigma(-|x|): sigma(x) where it is used (x < 0)
  const S m = x >= 0 ? S(1) : S(0);
  return m + (S(1) - m) * s * (S(1) - s);
}

// minLSTM (spec/minlstm.md) runs through the same kernels, flagged by kMinLSTM in the `candidate` code: from
// u = [u_f | u_i | u_h] (3H),  a = f' = f / (f + i),  z = i' = i / (f + i),  f = sigma(u_f), i = sigma(u_i)
// (that is sigma(-d), sigma(d) with d = log(i / f)), and h_t = a h_{t-1} + z c(u_h) as in minGRU.
constexpr int kMinLSTM = 2;

// minLSTM's (z, a) = (i', f') and sigma(-u_i), sigma(-u_f) (the backward's d'(u)) from three exps, with no overflow
// or 0/0: 1/f = 1 + e^{-u_f} and 1/i = 1 + e^{-u_i}, both scaled by e^{-m}, m = max(0, -u_f, -u_i), so every
// exponent is <= 0, one scaled term is exactly 1 and the sum is >= 1. u is first raised to the lowest finite value:
// u = -inf would otherwise give inf - inf (NaN still gives NaN). Raising it further (to 2 kMin, as before) made
// two very negative logits equal: u = (-200, -180) gave f' = i' = 1/2 instead of sigma(-20), sigma(20).
template <class S>
inline void lstm_gates(S uf, S ui, S& z, S& a, S& not_f, S& not_i) {
  constexpr S kLow = std::numeric_limits<S>::lowest();
  uf = uf < kLow ? kLow : uf;
  ui = ui < kLow ? kLow : ui;
  const S m = std::max(S(0), std::max(-uf, -ui));
  const S base = exp_nonpositive(-m);
  const S ef = exp_nonpositive(-uf - m), ei = exp_nonpositive(-ui - m);
  const S inv_f = base + ef, inv_i = base + ei;  // e^{-m} / f, e^{-m} / i
  const S r = S(1) / (inv_f + inv_i);
  z = inv_f * r;
  a = inv_i * r;
  not_f = ef / inv_f;  // e^{-u_f} / (1 + e^{-u_f}) = sigma(-u_f)
  not_i = ei / inv_i;
}

// One forward step over a row. Not inlined: inlined into the threaded lambda, GCC loses the restrict qualifiers
// and leaves some instantiations scalar (this holds for every *_step function below).
template <int kKind, class S>
__attribute__((noinline)) void mingru_fwd_step(int64_t width, const S* __restrict uz, const S* __restrict uh,
                                               S* __restrict c) {
  for (int64_t d = 0; d < width; ++d) {
    S z, a;
    sigmoid_pair(uz[d], z, a);
    c[d] = a * c[d] + z * candidate_of<kKind>(uh[d]);
  }
}

template <int kKind, class S>
__attribute__((noinline)) void minlstm_fwd_step(int64_t width, const S* __restrict uf, const S* __restrict ui,
                                                const S* __restrict uh, S* __restrict c) {
  for (int64_t d = 0; d < width; ++d) {
    S z, a, not_f, not_i;
    lstm_gates(uf[d], ui[d], z, a, not_f, not_i);
    c[d] = a * c[d] + z * candidate_of<kKind>(uh[d]);
  }
}

// kKind: the candidate; kLSTM: minLSTM's gates (u rows of 3H) instead of minGRU's (2H).
template <int kKind, bool kLSTM, class S>
void mingru_fwd(const Shape& s, const S* u, const S* h0, S* h, S* fin) {
  constexpr int64_t kBlocks = kLSTM ? 3 : 2;
  const bool stream = stream_enabled(sizeof(S) * s.n * s.t * s.d);
  parallel_blocks(s, [&](int64_t n, int64_t i0, int64_t i1) {
    const int64_t width = i1 - i0;
    std::vector<S> carry(h0 + n * s.d + i0, h0 + n * s.d + i1);
    S* __restrict c = carry.data();
    for (int64_t k = 0; k < s.t; ++k) {
      const int64_t row = n * s.t + k;
      const S* __restrict uz = u + row * kBlocks * s.d + i0;
      const S* __restrict uh = uz + (kBlocks - 1) * s.d;
      if constexpr (kLSTM) {
        minlstm_fwd_step<kKind>(width, uz, uz + s.d, uh, c);
      } else {
        mingru_fwd_step<kKind>(width, uz, uh, c);
      }
      store_row(h + row * s.d + i0, c, sizeof(S) * width, stream);
    }
    std::copy(carry.begin(), carry.end(), fin + n * s.d + i0);
    store_fence(stream);
  });
}

// One backward step over a row of `width` state elements.
template <int kKind, class S>
__attribute__((noinline)) void mingru_bwd_step(int64_t width, const S* __restrict uz, const S* __restrict uh,
                                               const S* __restrict ct, const S* __restrict prev, S* __restrict g,
                                               S* __restrict a_next, S* __restrict dz, S* __restrict dh) {
  for (int64_t d = 0; d < width; ++d) {
    S z, a;
    sigmoid_pair(uz[d], z, a);
    const S gd = ct[d] + a_next[d] * g[d];
    const S c = candidate_of<kKind>(uh[d]);
    g[d] = gd;
    a_next[d] = a;
    dz[d] = z * a * (c - prev[d]) * gd;
    dh[d] = z * gd * candidate_grad<kKind>(uh[d]);
  }
}

// minLSTM's backward step: dd = z a (c - prev) g is the gradient of d = log(i / f), and
//   du_f = -dd sigma(-u_f),  du_i = dd sigma(-u_i)  (d'(u_i) = 1 - i, d'(u_f) = -(1 - f)),  du_h as minGRU's.
template <int kKind, class S>
__attribute__((noinline)) void minlstm_bwd_step(int64_t width, const S* __restrict uf, const S* __restrict ui,
                                                const S* __restrict uh, const S* __restrict ct,
                                                const S* __restrict prev, S* __restrict g, S* __restrict a_next,
                                                S* __restrict df, S* __restrict di, S* __restrict dh) {
  for (int64_t d = 0; d < width; ++d) {
    S z, a, not_f, not_i;
    lstm_gates(uf[d], ui[d], z, a, not_f, not_i);
    const S gd = ct[d] + a_next[d] * g[d];
    const S c = candidate_of<kKind>(uh[d]);
    g[d] = gd;
    a_next[d] = a;
    const S dd = z * a * (c - prev[d]) * gd;
    df[d] = -dd * not_f;
    di[d] = dd * not_i;
    dh[d] = z * gd * candidate_grad<kKind>(uh[d]);
  }
}

// Backward: g_k = ct_k + a_{k+1} g_{k+1} (+ ct_final at the last step), then through the gates
//   du_z = z a (c g - h_{k-1} g),  du_h = z g c'(u_h),  h0_bar = a_0 g_0  (minLSTM: du_f, du_i from du_z above).
template <int kKind, bool kLSTM, class S>
void mingru_bwd(const Shape& s, const S* u, const S* h, const S* h0, const S* ct_h, const S* ct_final,
                S* du, S* h0_bar) {
  constexpr int64_t kBlocks = kLSTM ? 3 : 2;
  const bool stream = stream_enabled(sizeof(S) * s.n * s.t * s.d);
  parallel_blocks(s, [&](int64_t n, int64_t i0, int64_t i1) {
    const int64_t width = i1 - i0;
    std::vector<S> g_row(ct_final + n * s.d + i0, ct_final + n * s.d + i1);
    std::vector<S> a_row(width, S(1));  // a of the step after this one; 1 past the end: g_last = ct + ct_final
    std::vector<S> du_z(width), du_i(kLSTM ? width : 0), du_h(width);
    S* __restrict g = g_row.data();
    S* __restrict a_next = a_row.data();
    S* __restrict dz = du_z.data();
    S* __restrict di = du_i.data();
    S* __restrict dh = du_h.data();
    for (int64_t k = s.t - 1; k >= 0; --k) {
      const int64_t row = n * s.t + k;
      if (k > kPrefetchRows) {
        for (int64_t block = 0; block < kBlocks; ++block)
          prefetch_span(u + (row - kPrefetchRows) * kBlocks * s.d + block * s.d + i0, sizeof(S) * width);
        prefetch_span(h + (row - 1 - kPrefetchRows) * s.d + i0, sizeof(S) * width);
        prefetch_span(ct_h + (row - kPrefetchRows) * s.ct_rs + i0, sizeof(S) * width);
      }
      const S* __restrict uz = u + row * kBlocks * s.d + i0;
      const S* __restrict uh = uz + (kBlocks - 1) * s.d;
      const S* __restrict ct = ct_h + row * s.ct_rs + i0;
      const S* __restrict prev = (k == 0 ? h0 + n * s.d : h + (row - 1) * s.d) + i0;
      S* out = du + row * kBlocks * s.d + i0;
      // at the last step g_row holds ct_final and a_next is 1, so g = ct + ct_final
      if constexpr (kLSTM) {
        minlstm_bwd_step<kKind>(width, uz, uz + s.d, uh, ct, prev, g, a_next, dz, di, dh);
        store_row(out + s.d, di, sizeof(S) * width, stream);
      } else {
        mingru_bwd_step<kKind>(width, uz, uh, ct, prev, g, a_next, dz, dh);
      }
      store_row(out, dz, sizeof(S) * width, stream);
      store_row(out + (kBlocks - 1) * s.d, dh, sizeof(S) * width, stream);
    }
    S* __restrict out = h0_bar + n * s.d + i0;
    for (int64_t d = 0; d < width; ++d) out[d] = s.t ? a_next[d] * g[d] : g[d];
    store_fence(stream);
  });
}

// ------------------------------------------------------------------------------------------------------------------
// GatedLinearRNN / GateLoop with its gates fused into the scan (spec/gated_linear_rnn.md), default activations:
// from u = [u_in | u_i | u_o] (tied, 3H) or [u_in | u_i | u_f | u_o] (untied, 4H) per step,
//   c = tanh(u_in), i = sigma(u_i), f = 1 - i = sigma(-u_i) (tied) or sigma(u_f), o = sigma(u_o),
//   h_t = f h_prev + i c,  y_t = tanh(h_t) o.
// The forward writes y and h (h is the backward's residual); the backward writes du directly. "prev" is t-1, or
// t+1 with reverse (the layer's reversed=True).

template <class S>
inline S tanh_of(S x) {
  const S e = exp_nonpositive(S(-2) * std::abs(x));
  const S t = (S(1) - e) / (S(1) + e);
  return x >= 0 ? t : -t;
}

template <bool kTied, class S>
inline void glr_gates(const S* __restrict u, int64_t hidden, int64_t d, S& c, S& i, S& f, S& o) {
  c = tanh_of(u[d]);
  S not_i;
  sigmoid_pair(u[hidden + d], i, not_i);
  if constexpr (kTied) {
    f = not_i;
    S unused;
    sigmoid_pair(u[2 * hidden + d], o, unused);
  } else {
    S unused;
    sigmoid_pair(u[2 * hidden + d], f, unused);
    sigmoid_pair(u[3 * hidden + d], o, unused);
  }
}

template <bool kTied, class S>
__attribute__((noinline)) void glr_fwd_step(int64_t width, int64_t hidden, const S* __restrict u, S* __restrict carry,
                         S* __restrict y_row) {
  for (int64_t d = 0; d < width; ++d) {
    S c, i, f, o;
    glr_gates<kTied>(u, hidden, d, c, i, f, o);
    const S h = f * carry[d] + i * c;
    carry[d] = h;
    y_row[d] = tanh_of(h) * o;
  }
}

template <bool kTied, class S>
void glr_fwd(const Shape& s, const S* u, const S* h0, bool reverse, S* y, S* h, S* fin) {
  const int64_t blocks = kTied ? 3 : 4;
  const bool stream = stream_enabled(sizeof(S) * s.n * s.t * s.d);
  parallel_blocks(s, [&](int64_t n, int64_t i0, int64_t i1) {
    const int64_t width = i1 - i0;
    std::vector<S> carry(h0 + n * s.d + i0, h0 + n * s.d + i1), y_row(width);
    for (int64_t k = 0; k < s.t; ++k) {
      const int64_t row = n * s.t + (reverse ? s.t - 1 - k : k);
      if (reverse && k + kPrefetchRows < s.t) {
        for (int64_t b = 0; b < blocks; ++b)
          prefetch_span(u + (row - kPrefetchRows) * blocks * s.d + b * s.d + i0, sizeof(S) * width);
      }
      glr_fwd_step<kTied>(width, s.d, u + row * blocks * s.d + i0, carry.data(), y_row.data());
      store_row(h + row * s.d + i0, carry.data(), sizeof(S) * width, stream);
      store_row(y + row * s.d + i0, y_row.data(), sizeof(S) * width, stream);
    }
    std::copy(carry.begin(), carry.end(), fin + n * s.d + i0);
    store_fence(stream);
  });
}

// One backward step: g = dy o tanh'(h) + f_next g_next (g_next starts as ct_final, f_next as 1), then the gates.
template <bool kTied, class S>
__attribute__((noinline)) void glr_bwd_step(int64_t width, int64_t hidden, const S* __restrict u, const S* __restrict h,
                         const S* __restrict prev, const S* __restrict dy, S* __restrict g, S* __restrict f_next,
                         S* __restrict du_in, S* __restrict du_i, S* __restrict du_f, S* __restrict du_o) {
  for (int64_t d = 0; d < width; ++d) {
    S c, i, f, o;
    glr_gates<kTied>(u, hidden, d, c, i, f, o);
    const S th = tanh_of(h[d]);
    const S gd = dy[d] * o * (S(1) - th * th) + f_next[d] * g[d];
    g[d] = gd;
    f_next[d] = f;
    du_in[d] = gd * i * (S(1) - c * c);
    du_o[d] = dy[d] * th * o * (S(1) - o);
    if constexpr (kTied) {
      du_i[d] = gd * i * f * (c - prev[d]);  // f = 1 - i
    } else {
      du_i[d] = gd * c * i * (S(1) - i);
      du_f[d] = gd * prev[d] * f * (S(1) - f);
    }
  }
}

template <bool kTied, class S>
void glr_bwd(const Shape& s, const S* u, const S* h, const S* h0, const S* ct_y, const S* ct_final, bool reverse,
             S* du, S* h0_bar) {
  const int64_t blocks = kTied ? 3 : 4;
  const bool stream = stream_enabled(sizeof(S) * s.n * s.t * s.d);
  parallel_blocks(s, [&](int64_t n, int64_t i0, int64_t i1) {
    const int64_t width = i1 - i0;
    auto row_of = [&](int64_t k) { return n * s.t + (reverse ? s.t - 1 - k : k); };
    std::vector<S> g(ct_final + n * s.d + i0, ct_final + n * s.d + i1), f_next(width, S(1)), du_row(blocks * width);
    for (int64_t k = s.t - 1; k >= 0; --k) {
      const int64_t row = row_of(k);
      if (!reverse && k > kPrefetchRows) {
        const int64_t ahead = row - kPrefetchRows;
        for (int64_t b = 0; b < blocks; ++b)
          prefetch_span(u + ahead * blocks * s.d + b * s.d + i0, sizeof(S) * width);
        prefetch_span(h + (ahead - 1) * s.d + i0, sizeof(S) * width);
        prefetch_span(ct_y + ahead * s.ct_rs + i0, sizeof(S) * width);
      }
      const S* prev = (k == 0 ? h0 + n * s.d : h + row_of(k - 1) * s.d) + i0;
      S* rows = du_row.data();  // blocks in u's order: in, i, (f,) o
      glr_bwd_step<kTied>(width, s.d, u + row * blocks * s.d + i0, h + row * s.d + i0, prev, ct_y + row * s.ct_rs + i0,
                          g.data(), f_next.data(), rows, rows + width, kTied ? nullptr : rows + 2 * width,
                          rows + (blocks - 1) * width);
      for (int64_t b = 0; b < blocks; ++b)
        store_row(du + row * blocks * s.d + b * s.d + i0, du_row.data() + b * width, sizeof(S) * width, stream);
    }
    S* out = h0_bar + n * s.d + i0;
    for (int64_t d = 0; d < width; ++d) out[d] = s.t ? f_next[d] * g[d] : g[d];
    store_fence(stream);
  });
}

// ------------------------------------------------------------------------------------------------------------------
// Multi-head GateLoop (spec/gateloop_mh.md §2) with the state kept local: per (batch row, head)
//   S_t = diag(a_t) S_{t-1} + k_t v_t^T,  o_t = S_t^T q_t,
// q, k (N, T, H, K) and v (N, T, H, V) real; a (N, T, H, R) with R = K (a gate per row) or 1 (per head), real or
// complex; S and o real or complex (the state dtype). The parallel path writes k (x) v and every S_t, (N, T, H, K, V)
// each; here neither exists. The forward keeps the state entering every chunk of kGmhChunk steps (ck: (N, H, chunks,
// K, V)); the backward recomputes one chunk's states from it and walks them backwards. Gradients in PyTorch's
// convention for complex values (dL/dRe + i dL/dIm; the JAX binding conjugates its complex cotangents):
//   G_t = dL/dS_t = q_t go_t^T + conj(a_{t+1}) G_{t+1}  (G at T from the final state's gradient),
//   dq_t = Re(conj(S_t) go_t) summed over V,  dk_t = Re(G_t) v_t,  dv_t = Re(G_t)^T k_t,
//   da_t = sum over V (and K for a gate per head) of G_t conj(S_{t-1}),  grad of S_{-1} = conj(a_0) G_0.
// A complex state is kept as separate real and imaginary planes, so the V-wide loops vectorise.

constexpr int64_t kGmhChunk = 32;

// x[0] + ... + x[n-1] in a fixed pairwise order (halves, then quarters...): the same at every thread count.
template <class R>
inline R lane_sum(const R* x, int64_t n) {
  if (n <= 2) return n == 0 ? R(0) : n == 1 ? x[0] : x[0] + x[1];
  const int64_t half = n / 2;
  return lane_sum(x, half) + lane_sum(x + half, n - half);
}

// lane_sum(x, N) for a compile-time N, in the same order, unrolled
template <int N, class R>
inline R lane_sum_n(const R* x) {
  if constexpr (N <= 2) {
    return N == 0 ? R(0) : N == 1 ? x[0] : x[0] + x[1];
  } else {
    return lane_sum_n<N / 2>(x) + lane_sum_n<N - N / 2>(x + N / 2);
  }
}

struct GmhShape {
  int64_t n, t, h, k, v, r;
  int64_t chunks() const { return (t + kGmhChunk - 1) / kGmhChunk; }
};

// kV: V as a compile-time constant (0: read from g), so the V-wide loops have a known trip count and vectorise
// without a remainder loop. kRO: a complex state read out as Re(o) (the layer's complex_output="real"): the
// output and its cotangent are real, half the bytes, and no imaginary part is written only to be dropped.
template <class R, bool kCS, bool kCG, int kV, bool kRO = false>
struct Gmh {
  using Real = R;
  static constexpr int kSW = kCS ? 2 : 1;  // scalars per state element in memory
  static constexpr int kOW = kCS && !kRO ? 2 : 1;  // scalars per output element (kRO: only Re(o) is written)
  static constexpr int kGW = kCG ? 2 : 1;  // scalars per gate
  const GmhShape& g;

  int64_t nv() const { return kV ? kV : g.v; }
  R sum_v(const R* x) const {  // the V lanes of a row, summed in lane_sum's order
    if constexpr (kV != 0) return lane_sum_n<kV>(x);
    return lane_sum(x, g.v);
  }

  // out[row] = sum_v(lanes + row V) for row < k. Eight float rows of eight lanes at a time with two rounds of
  // horizontal adds and one across the 128-bit halves: ((x0+x1)+(x2+x3)) + ((x4+x5)+(x6+x7)), lane_sum_n<8>'s
  // order, so the result is the same bits as the scalar sums.
  void sum_rows(const R* lanes, int64_t k, R* out) const {
    int64_t row = 0;
#if defined(__AVX__)
    if constexpr (kV == 8 && std::is_same_v<R, float>) {
      for (; row + 8 <= k; row += 8) {
        const float* x = lanes + row * 8;
        __m256 v[8];
        for (int i = 0; i < 8; ++i) v[i] = _mm256_loadu_ps(x + 8 * i);
        const __m256 t0 = _mm256_hadd_ps(v[0], v[1]), t1 = _mm256_hadd_ps(v[2], v[3]);
        const __m256 t2 = _mm256_hadd_ps(v[4], v[5]), t3 = _mm256_hadd_ps(v[6], v[7]);
        const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
        // u0 = (r0 lo, r1 lo, r2 lo, r3 lo | r0 hi, r1 hi, r2 hi, r3 hi) for rows 0-3, u1 for rows 4-7
        const __m256 lo = _mm256_permute2f128_ps(u0, u1, 0x20), hi = _mm256_permute2f128_ps(u0, u1, 0x31);
        _mm256_storeu_ps(out + row, _mm256_add_ps(lo, hi));
      }
    }
#endif
    for (; row < k; ++row) out[row] = sum_v(lanes + row * nv());
  }
  int64_t kv() const { return g.k * nv(); }
  // element offsets (in units of one real or complex value) of step t of item (n, head)
  int64_t qk_at(int64_t n, int64_t hd, int64_t t) const { return ((n * g.t + t) * g.h + hd) * g.k; }
  int64_t v_at(int64_t n, int64_t hd, int64_t t) const { return ((n * g.t + t) * g.h + hd) * nv(); }
  int64_t a_at(int64_t n, int64_t hd, int64_t t) const { return ((n * g.t + t) * g.h + hd) * g.r; }

  // one step on the planes (sr, si): rows decayed by the gate, plus k v^T on the real plane
  void step(R* __restrict sr, R* __restrict si, const R* __restrict kt, const R* __restrict vt,
            const R* __restrict at) const {
    for (int64_t row = 0; row < g.k; ++row) {
      const int64_t gidx = g.r == 1 ? 0 : row;
      const R ar = at[gidx * kGW], ai = kCG ? at[gidx * kGW + 1] : R(0);
      const R kr = kt[row];
      R* __restrict pr = sr + row * nv();
      R* __restrict pi = si + row * nv();
      for (int64_t c = 0; c < nv(); ++c) {
        const R xr = pr[c];
        if constexpr (kCS) {
          const R xi = pi[c];
          pr[c] = ar * xr - ai * xi + kr * vt[c];
          pi[c] = ar * xi + ai * xr;
        } else {
          pr[c] = ar * xr + kr * vt[c];
        }
      }
    }
  }

  void load(const R* src, R* __restrict sr, R* __restrict si) const {
    for (int64_t e = 0; e < kv(); ++e) {
      sr[e] = src[e * kSW];
      if constexpr (kCS) si[e] = src[e * kSW + 1];
    }
  }

  void save(const R* __restrict sr, const R* __restrict si, R* dst) const {
    for (int64_t e = 0; e < kv(); ++e) {
      dst[e * kSW] = sr[e];
      if constexpr (kCS) dst[e * kSW + 1] = si[e];
    }
  }

  // work items: (batch row, block of heads); a thread walks time once for all heads of its block, so each step
  // reads and writes contiguous (head, K or V) rows instead of one head's strided slice (a stride of H rows per
  // step put every access on a new cache line and page: 2.7x slower at H = 64)
  Shape work() const { return Shape{g.n, g.t, g.h * std::max<int64_t>(1, kv()), g.h, std::max<int64_t>(1, kv())}; }

  void forward(const R* q, const R* k, const R* v, const R* a, const R* s0, R* o, R* s_final, R* ck) const {
    parallel_blocks(work(), [&](int64_t n, int64_t h0, int64_t h1) {
      const int64_t kvn = kv(), heads = h1 - h0;
      std::vector<R> planes(2 * heads * kvn, R(0)), acc(2 * nv());
      auto plane_r = [&](int64_t hd) { return planes.data() + 2 * (hd - h0) * kvn; };
      auto plane_i = [&](int64_t hd) { return planes.data() + 2 * (hd - h0) * kvn + kvn; };
      for (int64_t hd = h0; hd < h1; ++hd) load(s0 + (n * g.h + hd) * kvn * kSW, plane_r(hd), plane_i(hd));
      for (int64_t t = 0; t < g.t; ++t) {
        for (int64_t hd = h0; hd < h1; ++hd) {
          R* sr = plane_r(hd);
          R* si = plane_i(hd);
          if (t % kGmhChunk == 0) save(sr, si, ck + ((n * g.h + hd) * g.chunks() + t / kGmhChunk) * kvn * kSW);
          step(sr, si, k + qk_at(n, hd, t), v + v_at(n, hd, t), a + a_at(n, hd, t) * kGW);
          const R* __restrict qt = q + qk_at(n, hd, t);
          R* __restrict accr = acc.data();
          R* __restrict acci = acc.data() + nv();
          std::fill(acc.begin(), acc.end(), R(0));
          for (int64_t row = 0; row < g.k; ++row) {
            const R qr = qt[row];
            const R* __restrict pr = sr + row * nv();
            const R* __restrict pi = si + row * nv();
            for (int64_t c = 0; c < nv(); ++c) {
              accr[c] += qr * pr[c];
              if constexpr (kOW == 2) acci[c] += qr * pi[c];
            }
          }
          R* __restrict ot = o + v_at(n, hd, t) * kOW;
          for (int64_t c = 0; c < nv(); ++c) {
            ot[c * kOW] = accr[c];
            if constexpr (kOW == 2) ot[c * kOW + 1] = acci[c];
          }
        }
      }
      for (int64_t hd = h0; hd < h1; ++hd) save(plane_r(hd), plane_i(hd), s_final + (n * g.h + hd) * kvn * kSW);
    });
  }

  // One head's backward step, row by row (each row V wide and elementwise, so it vectorises): G_t = G + q go^T,
  // its contributions to dv (gv, summed over the rows in order) and the per-lane terms of dq, dk, Re/Im da (lq, lk,
  // lar, lai: (K, V), summed over V by the caller), then G_{t-1} = conj(a_t) G_t in place. A function of its own so
  // the restrict qualifiers hold (GCC drops them on pointers local to the threaded lambda, and then gives up on its
  // alias checks: that loop stayed scalar).
  static __attribute__((noinline)) void bwd_head(int64_t k, int64_t width, int64_t r, const R* __restrict qt,
                                                 const R* __restrict kt, const R* __restrict at,
                                                 const R* __restrict got, const R* __restrict vt,
                                                 const R* __restrict sr, const R* __restrict si,
                                                 const R* __restrict pr, const R* __restrict pi, R* __restrict gr,
                                                 R* __restrict gi, R* __restrict gvt, R* __restrict lq,
                                                 R* __restrict lk, R* __restrict lar, R* __restrict lai) {
    const int64_t nv = kV ? kV : width;
    for (int64_t row = 0; row < k; ++row) {
      const R qr = qt[row], kr = kt[row];
      const int64_t gidx = r == 1 ? 0 : row;
      const R ar = at[gidx * kGW], ai = kCG ? at[gidx * kGW + 1] : R(0);
      const int64_t o = row * nv;
      for (int64_t c2 = 0; c2 < nv; ++c2) {
        const R gor = got[c2 * kOW];
        const R nr = gr[o + c2] + qr * gor;  // G_t: the later steps' gradient plus this step's read-out
        lk[o + c2] = nr * vt[c2];
        gvt[c2] += nr * kr;
        if constexpr (kCS) {
          const R goi = kOW == 2 ? got[c2 * kOW + 1] : R(0);
          const R ni = gi[o + c2] + qr * goi;
          lq[o + c2] = sr[o + c2] * gor + si[o + c2] * goi;
          lar[o + c2] = nr * pr[o + c2] + ni * pi[o + c2];  // Re(G conj(S_prev))
          if constexpr (kCG) lai[o + c2] = ni * pr[o + c2] - nr * pi[o + c2];  // Im(G conj(S_prev))
          gr[o + c2] = ar * nr + ai * ni;  // G_{t-1} = conj(a_t) G_t
          gi[o + c2] = ar * ni - ai * nr;
        } else {
          lq[o + c2] = sr[o + c2] * gor;
          lar[o + c2] = nr * pr[o + c2];
          gr[o + c2] = ar * nr;
        }
      }
    }
  }

  void backward(const R* q, const R* k, const R* v, const R* a, const R* ck, const R* go, const R* gs, R* gq, R* gk,
                R* gv, R* ga, R* gs0) const {
    parallel_blocks(work(), [&](int64_t n, int64_t h0, int64_t h1) {
      const int64_t kvn = kv(), heads = h1 - h0;
      // one chunk's states of every head of the block: slot (j, head) holds both planes of S before step t0 + j
      std::vector<R> states(2 * (kGmhChunk + 1) * heads * kvn), grad(2 * heads * kvn), ga_row(kGW * g.r),
          lanes(4 * kvn), sums(2 * g.k);
      auto slot_r = [&](int64_t j, int64_t hd) { return states.data() + 2 * (j * heads + hd - h0) * kvn; };
      auto slot_i = [&](int64_t j, int64_t hd) { return slot_r(j, hd) + kvn; };
      auto grad_r = [&](int64_t hd) { return grad.data() + 2 * (hd - h0) * kvn; };
      auto grad_i = [&](int64_t hd) { return grad_r(hd) + kvn; };
      for (int64_t hd = h0; hd < h1; ++hd) load(gs + (n * g.h + hd) * kvn * kSW, grad_r(hd), grad_i(hd));
      for (int64_t c = g.chunks() - 1; c >= 0; --c) {
        const int64_t t0 = c * kGmhChunk, t1 = std::min(g.t, t0 + kGmhChunk);
        for (int64_t hd = h0; hd < h1; ++hd)
          load(ck + ((n * g.h + hd) * g.chunks() + c) * kvn * kSW, slot_r(0, hd), slot_i(0, hd));
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t j = t - t0;
          for (int64_t hd = h0; hd < h1; ++hd) {
            std::copy(slot_r(j, hd), slot_r(j, hd) + 2 * kvn, slot_r(j + 1, hd));
            step(slot_r(j + 1, hd), slot_i(j + 1, hd), k + qk_at(n, hd, t), v + v_at(n, hd, t),
                 a + a_at(n, hd, t) * kGW);
          }
        }
        for (int64_t t = t1 - 1; t >= t0; --t) {
          const int64_t j = t - t0;
          for (int64_t hd = h0; hd < h1; ++hd) {
            const R* __restrict qt = q + qk_at(n, hd, t);
            const R* __restrict kt = k + qk_at(n, hd, t);
            const R* __restrict vt = v + v_at(n, hd, t);
            const R* __restrict at = a + a_at(n, hd, t) * kGW;
            const R* __restrict got = go + v_at(n, hd, t) * kOW;
            R* __restrict gvt = gv + v_at(n, hd, t);
            R* gr = grad_r(hd);
            R* gi = grad_i(hd);
            std::fill(gvt, gvt + nv(), R(0));
            std::fill(ga_row.begin(), ga_row.end(), R(0));
            // Each row's V-wide work is elementwise (it vectorises: IEEE order, no -ffast-math to reassociate
            // sums); the four sums over V of a row (dq, dk and Re/Im of da) are left per lane in `lanes` and
            // summed afterwards in a fixed pairwise order, so results do not depend on threads or vector width.
            R* lq = lanes.data();
            R* lk = lq + kvn;
            R* lar = lk + kvn;
            R* lai = lar + kvn;
            bwd_head(g.k, nv(), g.r, qt, kt, at, got, vt, slot_r(j + 1, hd), slot_i(j + 1, hd), slot_r(j, hd),
                     slot_i(j, hd), gr, gi, gvt, lq, lk, lar, lai);
            sum_rows(lq, g.k, gq + qk_at(n, hd, t));
            sum_rows(lk, g.k, gk + qk_at(n, hd, t));
            R* dar = sums.data();
            R* dai = dar + g.k;
            sum_rows(lar, g.k, dar);
            if constexpr (kCG) sum_rows(lai, g.k, dai);
            for (int64_t row = 0; row < g.k; ++row) {
              const int64_t gidx = g.r == 1 ? 0 : row;
              ga_row[gidx * kGW] += dar[row];
              if constexpr (kCG) ga_row[gidx * kGW + 1] += dai[row];
            }
            std::copy(ga_row.begin(), ga_row.end(), ga + a_at(n, hd, t) * kGW);
          }
        }
      }
      for (int64_t hd = h0; hd < h1; ++hd) save(grad_r(hd), grad_i(hd), gs0 + (n * g.h + hd) * kvn * kSW);
    });
  }
};

// ------------------------------------------------------------------------------------------------------------------
// dtype dispatch shared by both bindings.

// kBF16: bfloat16 a, b, h (and a_bar, b_bar) with a float32 state: h0, final, ct_final, h0_bar are float32.
enum Dtype : int { kF32 = 0, kF64 = 1, kC64 = 2, kC128 = 3, kBF16 = 4 };

// The dtype code of h0 / final for a state stream of code `s_dtype`.
int state_code(int s_dtype) { return s_dtype == kBF16 ? kF32 : s_dtype; }

enum Status : int { kOk = 0, kBadDtype = 1, kBadShape = 2 };

int check_shape(int64_t n, int64_t t, int64_t d, int64_t da) {
  if (n < 0 || t < 0 || d < 0 || da < 0) return kBadShape;
  if (da == 0) return d == 0 ? kOk : kBadShape;
  return d % da == 0 ? kOk : kBadShape;
}

int check_ct_stride(int64_t ct_row_stride, int64_t d) {
  return ct_row_stride == d || ct_row_stride == 0 ? kOk : kBadShape;
}

// Calls f(A*, S*) with null pointers of the right types for (a_dtype, s_dtype), or returns kBadDtype.
template <class F>
int dispatch(int a_dtype, int s_dtype, F&& f) {
  if (a_dtype == kF32 && s_dtype == kF32) return f(static_cast<float*>(nullptr), static_cast<float*>(nullptr));
  if (a_dtype == kF64 && s_dtype == kF64) return f(static_cast<double*>(nullptr), static_cast<double*>(nullptr));
  if (a_dtype == kC64 && s_dtype == kC64) return f(static_cast<c64*>(nullptr), static_cast<c64*>(nullptr));
  if (a_dtype == kC128 && s_dtype == kC128) return f(static_cast<c128*>(nullptr), static_cast<c128*>(nullptr));
  if (a_dtype == kF32 && s_dtype == kC64) return f(static_cast<float*>(nullptr), static_cast<c64*>(nullptr));
  if (a_dtype == kF64 && s_dtype == kC128) return f(static_cast<double*>(nullptr), static_cast<c128*>(nullptr));
  if (a_dtype == kBF16 && s_dtype == kBF16) return f(static_cast<bf16*>(nullptr), static_cast<bf16*>(nullptr));
  return kBadDtype;
}

int run_fwd(int a_dtype, int s_dtype, int64_t n, int64_t t, int64_t d, int64_t da, const void* a, const void* b,
            const void* h0, const uint8_t* cut, bool reverse, void* h, void* fin) {
  if (int st = check_shape(n, t, d, da)) return st;
  const Shape s{n, t, d, da, da ? d / da : 1};
  return dispatch(a_dtype, s_dtype, [&](auto* at, auto* st) {
    using AM = std::remove_pointer_t<decltype(at)>;
    using SM = std::remove_pointer_t<decltype(st)>;
    using S = compute_t<SM>;
    advise_output(h, sizeof(SM) * n * t * d);
    scan_fwd<AM, SM>(s, static_cast<const AM*>(a), static_cast<const SM*>(b), static_cast<const S*>(h0), cut, reverse,
                     static_cast<SM*>(h), static_cast<S*>(fin));
    return int{kOk};
  });
}

int run_bwd(int a_dtype, int s_dtype, int64_t n, int64_t t, int64_t d, int64_t da, const void* a, const void* h,
            const void* h0, const void* ct_h, int64_t ct_row_stride, const void* ct_final, const uint8_t* cut,
            bool reverse, bool conjugate, void* a_bar, void* b_bar, void* h0_bar) {
  if (int st = check_shape(n, t, d, da)) return st;
  if (int st = check_ct_stride(ct_row_stride, d)) return st;
  const Shape s{n, t, d, da, da ? d / da : 1, ct_row_stride};
  return dispatch(a_dtype, s_dtype, [&](auto* at, auto* st) {
    using AM = std::remove_pointer_t<decltype(at)>;
    using SM = std::remove_pointer_t<decltype(st)>;
    using S = compute_t<SM>;
    advise_output(a_bar, sizeof(AM) * n * t * da);
    advise_output(b_bar, sizeof(SM) * n * t * d);
    auto call = [&](auto kernel) {
      kernel(s, static_cast<const AM*>(a), static_cast<const SM*>(h), static_cast<const S*>(h0),
             static_cast<const SM*>(ct_h), static_cast<const S*>(ct_final), cut, reverse, static_cast<AM*>(a_bar),
             static_cast<SM*>(b_bar), static_cast<S*>(h0_bar));
    };
    if (conjugate) {
      call(scan_bwd<true, AM, SM>);
    } else {
      call(scan_bwd<false, AM, SM>);
    }
    return int{kOk};
  });
}

template <class F>
int dispatch_real(int dtype, F&& f) {
  if (dtype == kF32) return f(static_cast<float*>(nullptr));
  if (dtype == kF64) return f(static_cast<double*>(nullptr));
  return kBadDtype;
}

int run_mingru_fwd(int dtype, int64_t n, int64_t t, int64_t hidden, int candidate, const void* u, const void* h0,
                   void* h, void* fin) {
  if (int st = check_shape(n, t, hidden, hidden)) return st;
  if (candidate < 0 || candidate > (kG | kMinLSTM)) return kBadShape;
  const Shape s{n, t, hidden, hidden, 1};
  return dispatch_real(dtype, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    advise_output(h, sizeof(S) * n * t * hidden);
    auto run = [&](auto kernel) {
      kernel(s, static_cast<const S*>(u), static_cast<const S*>(h0), static_cast<S*>(h), static_cast<S*>(fin));
    };
    switch (candidate) {
      case kG: run(mingru_fwd<kG, false, S>); break;
      case kIdentity: run(mingru_fwd<kIdentity, false, S>); break;
      case kG | kMinLSTM: run(mingru_fwd<kG, true, S>); break;
      default: run(mingru_fwd<kIdentity, true, S>);
    }
    return int{kOk};
  });
}

int run_mingru_bwd(int dtype, int64_t n, int64_t t, int64_t hidden, int candidate, const void* u, const void* h,
                   const void* h0, const void* ct_h, int64_t ct_row_stride, const void* ct_final, void* du,
                   void* h0_bar) {
  if (int st = check_shape(n, t, hidden, hidden)) return st;
  if (int st = check_ct_stride(ct_row_stride, hidden)) return st;
  if (candidate < 0 || candidate > (kG | kMinLSTM)) return kBadShape;
  const Shape s{n, t, hidden, hidden, 1, ct_row_stride};
  return dispatch_real(dtype, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    advise_output(du, sizeof(S) * n * t * (candidate & kMinLSTM ? 3 : 2) * hidden);
    auto run = [&](auto kernel) {
      kernel(s, static_cast<const S*>(u), static_cast<const S*>(h), static_cast<const S*>(h0),
             static_cast<const S*>(ct_h), static_cast<const S*>(ct_final), static_cast<S*>(du),
             static_cast<S*>(h0_bar));
    };
    switch (candidate) {
      case kG: run(mingru_bwd<kG, false, S>); break;
      case kIdentity: run(mingru_bwd<kIdentity, false, S>); break;
      case kG | kMinLSTM: run(mingru_bwd<kG, true, S>); break;
      default: run(mingru_bwd<kIdentity, true, S>);
    }
    return int{kOk};
  });
}

int run_glr_fwd(int dtype, int64_t n, int64_t t, int64_t hidden, int tied, const void* u, const void* h0,
                int reverse, void* y, void* h, void* fin) {
  if (int st = check_shape(n, t, hidden, hidden)) return st;
  const Shape s{n, t, hidden, hidden, 1};
  return dispatch_real(dtype, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    advise_output(y, sizeof(S) * n * t * hidden);
    advise_output(h, sizeof(S) * n * t * hidden);
    auto run = [&](auto kernel) {
      kernel(s, static_cast<const S*>(u), static_cast<const S*>(h0), reverse != 0, static_cast<S*>(y),
             static_cast<S*>(h), static_cast<S*>(fin));
    };
    tied ? run(glr_fwd<true, S>) : run(glr_fwd<false, S>);
    return int{kOk};
  });
}

int run_glr_bwd(int dtype, int64_t n, int64_t t, int64_t hidden, int tied, const void* u, const void* h,
                const void* h0, const void* ct_y, int64_t ct_row_stride, const void* ct_final, int reverse, void* du,
                void* h0_bar) {
  if (int st = check_shape(n, t, hidden, hidden)) return st;
  if (int st = check_ct_stride(ct_row_stride, hidden)) return st;
  const Shape s{n, t, hidden, hidden, 1, ct_row_stride};
  return dispatch_real(dtype, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    advise_output(du, sizeof(S) * n * t * (tied ? 3 : 4) * hidden);
    auto run = [&](auto kernel) {
      kernel(s, static_cast<const S*>(u), static_cast<const S*>(h), static_cast<const S*>(h0),
             static_cast<const S*>(ct_y), static_cast<const S*>(ct_final), reverse != 0, static_cast<S*>(du),
             static_cast<S*>(h0_bar));
    };
    tied ? run(glr_bwd<true, S>) : run(glr_bwd<false, S>);
    return int{kOk};
  });
}

// Multi-head GateLoop: `dtype` is the real dtype of q, k, v; complex_state / complex_gate choose the other types.
template <class R, bool kCS, bool kCG, bool kRO, class F>
int dispatch_gmh_width(int64_t v, F&& f) {
  switch (v) {
    case 8: return f(static_cast<Gmh<R, kCS, kCG, 8, kRO>*>(nullptr));
    case 16: return f(static_cast<Gmh<R, kCS, kCG, 16, kRO>*>(nullptr));
    case 32: return f(static_cast<Gmh<R, kCS, kCG, 32, kRO>*>(nullptr));
    case 64: return f(static_cast<Gmh<R, kCS, kCG, 64, kRO>*>(nullptr));
    default: return f(static_cast<Gmh<R, kCS, kCG, 0, kRO>*>(nullptr));
  }
}

template <class F>
int dispatch_gmh(int dtype, int complex_state, int complex_gate, int real_output, int64_t v, F&& f) {
  if (complex_gate && !complex_state) return kBadDtype;  // a complex gate makes the state complex
  return dispatch_real(dtype, [&](auto* tag) {
    using R = std::remove_pointer_t<decltype(tag)>;
    if (!complex_state) return dispatch_gmh_width<R, false, false, false>(v, f);
    if (real_output) {
      return complex_gate ? dispatch_gmh_width<R, true, true, true>(v, f)
                          : dispatch_gmh_width<R, true, false, true>(v, f);
    }
    return complex_gate ? dispatch_gmh_width<R, true, true, false>(v, f)
                        : dispatch_gmh_width<R, true, false, false>(v, f);
  });
}

int check_gmh(const GmhShape& g) {
  if (g.n < 0 || g.t < 0 || g.h < 0 || g.k < 0 || g.v < 0) return kBadShape;
  return g.r == 1 || g.r == g.k ? kOk : kBadShape;
}

int run_gmh_fwd(int dtype, int complex_state, int complex_gate, int real_output, const GmhShape& g, const void* q,
                const void* k, const void* v, const void* a, const void* s0, void* o, void* s_final, void* ck) {
  if (int st = check_gmh(g)) return st;
  return dispatch_gmh(dtype, complex_state, complex_gate, real_output, g.v, [&](auto* tag) {
    using K = std::remove_pointer_t<decltype(tag)>;
    using R = typename K::Real;
    const K kernel{g};
    kernel.forward(static_cast<const R*>(q), static_cast<const R*>(k), static_cast<const R*>(v),
                   static_cast<const R*>(a), static_cast<const R*>(s0), static_cast<R*>(o), static_cast<R*>(s_final),
                   static_cast<R*>(ck));
    return int{kOk};
  });
}

int run_gmh_bwd(int dtype, int complex_state, int complex_gate, int real_output, const GmhShape& g, const void* q,
                const void* k, const void* v, const void* a, const void* ck, const void* go, const void* gs, void* gq,
                void* gk, void* gv, void* ga, void* gs0) {
  if (int st = check_gmh(g)) return st;
  return dispatch_gmh(dtype, complex_state, complex_gate, real_output, g.v, [&](auto* tag) {
    using K = std::remove_pointer_t<decltype(tag)>;
    using R = typename K::Real;
    const K kernel{g};
    kernel.backward(static_cast<const R*>(q), static_cast<const R*>(k), static_cast<const R*>(v),
                    static_cast<const R*>(a), static_cast<const R*>(ck), static_cast<const R*>(go),
                    static_cast<const R*>(gs), static_cast<R*>(gq), static_cast<R*>(gk), static_cast<R*>(gv),
                    static_cast<R*>(ga), static_cast<R*>(gs0));
    return int{kOk};
  });
}

}  // namespace

// --------------------------------------------------------------------------------------------------------------------
// C ABI (ctypes). Every pointer must be non-null except `cut` (null: no resets); arrays contiguous as described at the
// top. Returns 0 on success, 1 for an unsupported dtype pair, 2 for inconsistent sizes.

extern "C" {

#if LINREC_PART_SCAN
// Bumped whenever a signature below changes; the Python loader checks it.
int linrec_abi_version() { return 8; }

int linrec_has_ffi() {
#ifdef LINREC_WITH_XLA_FFI
  return 1;
#else
  return 0;
#endif
}

int linrec_num_threads() { return num_threads(); }

int linrec_scan_fwd(int a_dtype, int s_dtype, int64_t n, int64_t t, int64_t d, int64_t da, const void* a,
                    const void* b, const void* h0, const uint8_t* cut, int reverse, void* h, void* final_state) {
  return run_fwd(a_dtype, s_dtype, n, t, d, da, a, b, h0, cut, reverse != 0, h, final_state);
}

// conjugate = 0: JAX convention (no conjugation); 1: PyTorch's (conj of the Jacobian), recurrence.md §10.
// ct_row_stride: d, or 0 when ct_h is one row of d shared by every step (check_ct_stride).
int linrec_scan_bwd(int a_dtype, int s_dtype, int64_t n, int64_t t, int64_t d, int64_t da, const void* a,
                    const void* h, const void* h0, const void* ct_h, int64_t ct_row_stride, const void* ct_final,
                    const uint8_t* cut, int reverse, int conjugate, void* a_bar, void* b_bar, void* h0_bar) {
  return run_bwd(a_dtype, s_dtype, n, t, d, da, a, h, h0, ct_h, ct_row_stride, ct_final, cut, reverse != 0,
                 conjugate != 0, a_bar, b_bar, h0_bar);
}

#endif  // LINREC_PART_SCAN

#if LINREC_PART_MINGRU
// minGRU with fused gates: u (N, T, 2H) = [u_z | u_h] per step, h0 (N, H) -> h (N, T, H), final (N, H);
// candidate 0 = identity, 1 = g. Float32 (dtype 0) and float64 (1) only.
int linrec_mingru_fwd(int dtype, int64_t n, int64_t t, int64_t hidden, int candidate, const void* u, const void* h0,
                      void* h, void* final_state) {
  return run_mingru_fwd(dtype, n, t, hidden, candidate, u, h0, h, final_state);
}

// Its VJP given the output h: du (N, T, 2H) and h0_bar (N, H).
int linrec_mingru_bwd(int dtype, int64_t n, int64_t t, int64_t hidden, int candidate, const void* u, const void* h,
                      const void* h0, const void* ct_h, int64_t ct_row_stride, const void* ct_final, void* du,
                      void* h0_bar) {
  return run_mingru_bwd(dtype, n, t, hidden, candidate, u, h, h0, ct_h, ct_row_stride, ct_final, du, h0_bar);
}
#endif  // LINREC_PART_MINGRU

#if LINREC_PART_GLR
// GatedLinearRNN with fused gates (tanh input, sigmoid gates, tanh output): u (N, T, nH) with n = 3 (tied) or 4,
// h0 (N, H) -> y (N, T, H) = tanh(h) o, h (N, T, H), final (N, H). Float32 (0) and float64 (1).
int linrec_glr_fwd(int dtype, int64_t n, int64_t t, int64_t hidden, int tied, const void* u, const void* h0,
                   int reverse, void* y, void* h, void* final_state) {
  return run_glr_fwd(dtype, n, t, hidden, tied, u, h0, reverse, y, h, final_state);
}

// Its VJP given h and the cotangents of y and final: du (N, T, nH), h0_bar (N, H).
int linrec_glr_bwd(int dtype, int64_t n, int64_t t, int64_t hidden, int tied, const void* u, const void* h,
                   const void* h0, const void* ct_y, int64_t ct_row_stride, const void* ct_final, int reverse,
                   void* du, void* h0_bar) {
  return run_glr_bwd(dtype, n, t, hidden, tied, u, h, h0, ct_y, ct_row_stride, ct_final, reverse, du, h0_bar);
}
#endif  // LINREC_PART_GLR

#if LINREC_PART_GMH_FWD
// Multi-head GateLoop (see "Multi-head GateLoop" above): sizes (n, t, h, k, v, r); ck holds (n, h, ceil(t / 32), k, v)
// states. The chunk length is linrec_gmh_chunk(). real_output (a complex state): o and grad_o are Re(o), real.
int linrec_gmh_chunk() { return static_cast<int>(kGmhChunk); }

int linrec_gmh_fwd(int dtype, int complex_state, int complex_gate, int real_output, int64_t n, int64_t t, int64_t h,
                   int64_t k, int64_t v, int64_t r, const void* q, const void* kk, const void* vv, const void* a,
                   const void* s0, void* o, void* s_final, void* ck) {
  return run_gmh_fwd(dtype, complex_state, complex_gate, real_output, GmhShape{n, t, h, k, v, r}, q, kk, vv, a, s0, o,
                     s_final, ck);
}

#endif  // LINREC_PART_GMH_FWD

#if LINREC_PART_GMH_BWD
int linrec_gmh_bwd(int dtype, int complex_state, int complex_gate, int real_output, int64_t n, int64_t t, int64_t h,
                   int64_t k, int64_t v, int64_t r, const void* q, const void* kk, const void* vv, const void* a,
                   const void* ck, const void* go, const void* gs, void* gq, void* gk, void* gv, void* ga, void* gs0) {
  return run_gmh_bwd(dtype, complex_state, complex_gate, real_output, GmhShape{n, t, h, k, v, r}, q, kk, vv, a, ck, go,
                     gs, gq, gk, gv, ga, gs0);
}
#endif  // LINREC_PART_GMH_BWD

}  // extern "C"

// --------------------------------------------------------------------------------------------------------------------
// XLA FFI (JAX). Arrays arrive with any number of leading axes (the caller's N plus vmap's, from
// vmap_method="broadcast_all"); the last one or two axes are (T, D), the rest flatten into N.
// `cut` is (..., T) bool, or (..., 0) for "no resets" (FFI has no optional buffers).

#ifdef LINREC_WITH_XLA_FFI
#include <string>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

int code_of(ffi::DataType t) {
  switch (t) {
    case ffi::DataType::F32: return kF32;
    case ffi::DataType::F64: return kF64;
    case ffi::DataType::C64: return kC64;
    case ffi::DataType::C128: return kC128;
    case ffi::DataType::BF16: return kBF16;
    default: return -1;
  }
}

int64_t prod(ffi::AnyBuffer::Dimensions dims, size_t begin, size_t end) {
  int64_t p = 1;
  for (size_t i = begin; i < end; ++i) p *= dims[i];
  return p;
}

struct Geometry {
  int64_t n, t, d, da;
  bool has_cut;
};

// Derives (N, T, D, Da) from b (..., T, D) and a (..., T, Da), checking that the other buffers agree.
ffi::ErrorOr<Geometry> geometry(const ffi::AnyBuffer& a, const ffi::AnyBuffer& b, const ffi::AnyBuffer& h0,
                                const ffi::AnyBuffer& cut) {
  auto bd = b.dimensions(), ad = a.dimensions();
  if (bd.size() < 2 || ad.size() != bd.size())
    return ffi::Unexpected(ffi::Error::InvalidArgument("linrec: a and b must have the same rank >= 2"));
  const size_t r = bd.size();
  Geometry g{prod(bd, 0, r - 2), bd[r - 2], bd[r - 1], ad[r - 1], false};
  if (prod(ad, 0, r - 2) != g.n || ad[r - 2] != g.t || check_shape(g.n, g.t, g.d, g.da) != kOk)
    return ffi::Unexpected(ffi::Error::InvalidArgument("linrec: a must be (N, T, Da) with Da dividing D"));
  if (static_cast<int64_t>(h0.element_count()) != g.n * g.d)
    return ffi::Unexpected(ffi::Error::InvalidArgument("linrec: initial state must be (N, D)"));
  const int64_t cut_count = static_cast<int64_t>(cut.element_count());
  if (cut_count != 0 && cut_count != g.n * g.t)
    return ffi::Unexpected(ffi::Error::InvalidArgument("linrec: cut must be (N, T) or (N, 0)"));
  g.has_cut = cut_count != 0;
  return g;
}

ffi::Error status_error(int st) {
  if (st == kOk) return ffi::Error::Success();
  return ffi::Error::InvalidArgument(st == kBadDtype ? "linrec: unsupported dtype pair (a, b)"
                                                     : "linrec: inconsistent sizes");
}

ffi::Error FwdImpl(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::AnyBuffer h0, ffi::AnyBuffer cut, bool reverse,
                   ffi::Result<ffi::AnyBuffer> h, ffi::Result<ffi::AnyBuffer> fin) {
  auto g = geometry(a, b, h0, cut);
  if (g.has_error()) return g.error();
  const int sc = state_code(code_of(b.element_type()));
  if (code_of(h0.element_type()) != sc || h->element_type() != b.element_type() || code_of(fin->element_type()) != sc)
    return ffi::Error::InvalidArgument("linrec: h must have the dtype of b; h0 and final the state dtype");
  const uint8_t* c = g->has_cut ? static_cast<const uint8_t*>(cut.untyped_data()) : nullptr;
  return status_error(run_fwd(code_of(a.element_type()), code_of(b.element_type()), g->n, g->t, g->d, g->da,
                              a.untyped_data(), b.untyped_data(), h0.untyped_data(), c, reverse, h->untyped_data(),
                              fin->untyped_data()));
}

ffi::Error BwdImpl(ffi::AnyBuffer a, ffi::AnyBuffer h, ffi::AnyBuffer h0, ffi::AnyBuffer ct_h,
                   ffi::AnyBuffer ct_final, ffi::AnyBuffer cut, bool reverse, ffi::Result<ffi::AnyBuffer> a_bar,
                   ffi::Result<ffi::AnyBuffer> b_bar, ffi::Result<ffi::AnyBuffer> h0_bar) {
  auto g = geometry(a, h, h0, cut);
  if (g.has_error()) return g.error();
  const int sc = state_code(code_of(h.element_type()));
  if (ct_h.element_type() != h.element_type() || b_bar->element_type() != h.element_type() ||
      a_bar->element_type() != a.element_type() || code_of(h0.element_type()) != sc ||
      code_of(ct_final.element_type()) != sc || code_of(h0_bar->element_type()) != sc)
    return ffi::Error::InvalidArgument("linrec: ct_h, b_bar in the dtype of h, a_bar of a; h0, ct_final, h0_bar in "
                                       "the state dtype");
  const uint8_t* c = g->has_cut ? static_cast<const uint8_t*>(cut.untyped_data()) : nullptr;
  return status_error(run_bwd(code_of(a.element_type()), code_of(h.element_type()), g->n, g->t, g->d, g->da,
                              a.untyped_data(), h.untyped_data(), h0.untyped_data(), ct_h.untyped_data(), g->d,
                              ct_final.untyped_data(), c, reverse, /*conjugate=*/false, a_bar->untyped_data(),
                              b_bar->untyped_data(), h0_bar->untyped_data()));
}

// minGRU: u (..., T, 2H), h0 (..., H); leading axes flatten into N as above. minLSTM (kMinLSTM set in
// `candidate`): u (..., T, 3H).
ffi::Error MinGRUFwdImpl(ffi::AnyBuffer u, ffi::AnyBuffer h0, int32_t candidate, ffi::Result<ffi::AnyBuffer> h,
                         ffi::Result<ffi::AnyBuffer> fin) {
  auto ud = u.dimensions();
  const int64_t blocks = candidate & kMinLSTM ? 3 : 2;
  if (ud.size() < 2 || ud[ud.size() - 1] % blocks != 0)
    return ffi::Error::InvalidArgument("linrec: u must be (N, T, 2H) (minGRU) or (N, T, 3H) (minLSTM)");
  const int64_t n = prod(ud, 0, ud.size() - 2), t = ud[ud.size() - 2], hidden = ud[ud.size() - 1] / blocks;
  if (static_cast<int64_t>(h0.element_count()) != n * hidden)
    return ffi::Error::InvalidArgument("linrec: initial state must be (N, H)");
  return status_error(run_mingru_fwd(code_of(u.element_type()), n, t, hidden, candidate, u.untyped_data(),
                                     h0.untyped_data(), h->untyped_data(), fin->untyped_data()));
}

ffi::Error MinGRUBwdImpl(ffi::AnyBuffer u, ffi::AnyBuffer h, ffi::AnyBuffer h0, ffi::AnyBuffer ct_h,
                         ffi::AnyBuffer ct_final, int32_t candidate, ffi::Result<ffi::AnyBuffer> du,
                         ffi::Result<ffi::AnyBuffer> h0_bar) {
  auto ud = u.dimensions();
  const int64_t blocks = candidate & kMinLSTM ? 3 : 2;
  if (ud.size() < 2 || ud[ud.size() - 1] % blocks != 0)
    return ffi::Error::InvalidArgument("linrec: u must be (N, T, 2H) (minGRU) or (N, T, 3H) (minLSTM)");
  const int64_t n = prod(ud, 0, ud.size() - 2), t = ud[ud.size() - 2], hidden = ud[ud.size() - 1] / blocks;
  if (static_cast<int64_t>(h.element_count()) != n * t * hidden ||
      static_cast<int64_t>(h0.element_count()) != n * hidden ||
      ct_h.element_count() != h.element_count() || ct_final.element_count() != h0.element_count())
    return ffi::Error::InvalidArgument("linrec: inconsistent minGRU buffers");
  return status_error(run_mingru_bwd(code_of(u.element_type()), n, t, hidden, candidate, u.untyped_data(),
                                     h.untyped_data(), h0.untyped_data(), ct_h.untyped_data(), hidden,
                                     ct_final.untyped_data(), du->untyped_data(), h0_bar->untyped_data()));
}

// GatedLinearRNN: u (..., T, nH), h0 (..., H) with n = 3 (tied) or 4.
ffi::Error GlrFwdImpl(ffi::AnyBuffer u, ffi::AnyBuffer h0, bool tied, bool reverse, ffi::Result<ffi::AnyBuffer> y,
                      ffi::Result<ffi::AnyBuffer> h, ffi::Result<ffi::AnyBuffer> fin) {
  auto ud = u.dimensions(), hd = h0.dimensions();
  const int64_t blocks = tied ? 3 : 4;
  if (ud.size() < 2 || hd.size() < 1 || ud[ud.size() - 1] != blocks * hd[hd.size() - 1])
    return ffi::Error::InvalidArgument("linrec: u must be (N, T, nH) for h0 (N, H)");
  const int64_t n = prod(ud, 0, ud.size() - 2), t = ud[ud.size() - 2], hidden = hd[hd.size() - 1];
  if (static_cast<int64_t>(h0.element_count()) != n * hidden)
    return ffi::Error::InvalidArgument("linrec: initial state must be (N, H)");
  return status_error(run_glr_fwd(code_of(u.element_type()), n, t, hidden, tied, u.untyped_data(),
                                  h0.untyped_data(), reverse, y->untyped_data(), h->untyped_data(),
                                  fin->untyped_data()));
}

ffi::Error GlrBwdImpl(ffi::AnyBuffer u, ffi::AnyBuffer h, ffi::AnyBuffer h0, ffi::AnyBuffer ct_y,
                      ffi::AnyBuffer ct_final, bool tied, bool reverse, ffi::Result<ffi::AnyBuffer> du,
                      ffi::Result<ffi::AnyBuffer> h0_bar) {
  auto ud = u.dimensions(), hd = h0.dimensions();
  const int64_t blocks = tied ? 3 : 4;
  if (ud.size() < 2 || hd.size() < 1 || ud[ud.size() - 1] != blocks * hd[hd.size() - 1])
    return ffi::Error::InvalidArgument("linrec: u must be (N, T, nH) for h0 (N, H)");
  const int64_t n = prod(ud, 0, ud.size() - 2), t = ud[ud.size() - 2], hidden = hd[hd.size() - 1];
  if (static_cast<int64_t>(h.element_count()) != n * t * hidden ||
      static_cast<int64_t>(h0.element_count()) != n * hidden || ct_y.element_count() != h.element_count() ||
      ct_final.element_count() != h0.element_count())
    return ffi::Error::InvalidArgument("linrec: inconsistent GatedLinearRNN buffers");
  return status_error(run_glr_bwd(code_of(u.element_type()), n, t, hidden, tied, u.untyped_data(), h.untyped_data(),
                                  h0.untyped_data(), ct_y.untyped_data(), hidden, ct_final.untyped_data(), reverse,
                                  du->untyped_data(), h0_bar->untyped_data()));
}

// Multi-head GateLoop: q, k (..., T, H, K), v (..., T, H, V), a (..., T, H, R), s0 (..., H, K, V); the types come
// from the buffers (q's real dtype; s0 and a real or complex). ck: (..., H, chunks, K, V).
struct GmhGeometry {
  GmhShape g;
  int dtype, complex_state, complex_gate;
};

ffi::ErrorOr<GmhGeometry> gmh_geometry(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v, ffi::AnyBuffer a,
                                       ffi::AnyBuffer s) {
  auto qd = q.dimensions(), vd = v.dimensions(), ad = a.dimensions();
  if (qd.size() < 3 || vd.size() != qd.size() || ad.size() != qd.size())
    return ffi::Unexpected(ffi::Error::InvalidArgument("linrec: q, k (..., T, H, K), v (..., T, H, V), a (..., T, H, R) expected"));
  const size_t m = qd.size();
  const GmhShape g{prod(qd, 0, m - 3), qd[m - 3], qd[m - 2], qd[m - 1], vd[m - 1], ad[m - 1]};
  if (k.element_count() != q.element_count() || static_cast<int64_t>(v.element_count()) != g.n * g.t * g.h * g.v ||
      static_cast<int64_t>(a.element_count()) != g.n * g.t * g.h * g.r ||
      static_cast<int64_t>(s.element_count()) != g.n * g.h * g.k * g.v)
    return ffi::Unexpected(ffi::Error::InvalidArgument("linrec: inconsistent multi-head GateLoop buffers"));
  const int real = code_of(q.element_type()), state = code_of(s.element_type()), gate = code_of(a.element_type());
  const bool cs = state == kC64 || state == kC128, cg = gate == kC64 || gate == kC128;
  if (code_of(k.element_type()) != real || code_of(v.element_type()) != real)
    return ffi::Unexpected(ffi::Error::InvalidArgument("linrec: q, k, v must share one real dtype"));
  return GmhGeometry{g, real, cs, cg};
}

ffi::Error GmhFwdImpl(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v, ffi::AnyBuffer a, ffi::AnyBuffer s0,
                      ffi::Result<ffi::AnyBuffer> o, ffi::Result<ffi::AnyBuffer> fin, ffi::Result<ffi::AnyBuffer> ck) {
  auto geo = gmh_geometry(q, k, v, a, s0);
  if (geo.has_error()) return geo.error();
  const GmhGeometry& x = geo.value();
  const int real_output = x.complex_state && code_of(o->element_type()) == x.dtype;
  return status_error(run_gmh_fwd(x.dtype, x.complex_state, x.complex_gate, real_output, x.g, q.untyped_data(),
                                  k.untyped_data(), v.untyped_data(), a.untyped_data(), s0.untyped_data(),
                                  o->untyped_data(), fin->untyped_data(), ck->untyped_data()));
}

ffi::Error GmhBwdImpl(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v, ffi::AnyBuffer a, ffi::AnyBuffer ck,
                      ffi::AnyBuffer ct_o, ffi::AnyBuffer ct_final, ffi::Result<ffi::AnyBuffer> gq,
                      ffi::Result<ffi::AnyBuffer> gk, ffi::Result<ffi::AnyBuffer> gv, ffi::Result<ffi::AnyBuffer> ga,
                      ffi::Result<ffi::AnyBuffer> gs0) {
  auto geo = gmh_geometry(q, k, v, a, ct_final);
  if (geo.has_error()) return geo.error();
  const GmhGeometry& x = geo.value();
  const int real_output = x.complex_state && code_of(ct_o.element_type()) == x.dtype;
  return status_error(run_gmh_bwd(x.dtype, x.complex_state, x.complex_gate, real_output, x.g, q.untyped_data(),
                                  k.untyped_data(), v.untyped_data(), a.untyped_data(), ck.untyped_data(),
                                  ct_o.untyped_data(),
                                  ct_final.untyped_data(), gq->untyped_data(), gk->untyped_data(), gv->untyped_data(),
                                  ga->untyped_data(), gs0->untyped_data()));
}

}  // namespace

#if LINREC_PART_SCAN
XLA_FFI_DEFINE_HANDLER_SYMBOL(linrec_scan_fwd_ffi, FwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // a
                                  .Arg<ffi::AnyBuffer>()  // b
                                  .Arg<ffi::AnyBuffer>()  // h0
                                  .Arg<ffi::AnyBuffer>()  // cut
                                  .Attr<bool>("reverse")
                                  .Ret<ffi::AnyBuffer>()  // h
                                  .Ret<ffi::AnyBuffer>()  // final
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(linrec_scan_bwd_ffi, BwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // a
                                  .Arg<ffi::AnyBuffer>()  // h
                                  .Arg<ffi::AnyBuffer>()  // h0
                                  .Arg<ffi::AnyBuffer>()  // ct_h
                                  .Arg<ffi::AnyBuffer>()  // ct_final
                                  .Arg<ffi::AnyBuffer>()  // cut
                                  .Attr<bool>("reverse")
                                  .Ret<ffi::AnyBuffer>()  // a_bar
                                  .Ret<ffi::AnyBuffer>()  // b_bar
                                  .Ret<ffi::AnyBuffer>()  // h0_bar
);
#endif  // LINREC_PART_SCAN

#if LINREC_PART_MINGRU
XLA_FFI_DEFINE_HANDLER_SYMBOL(linrec_mingru_fwd_ffi, MinGRUFwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // u
                                  .Arg<ffi::AnyBuffer>()  // h0
                                  .Attr<int32_t>("candidate")
                                  .Ret<ffi::AnyBuffer>()  // h
                                  .Ret<ffi::AnyBuffer>()  // final
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(linrec_mingru_bwd_ffi, MinGRUBwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // u
                                  .Arg<ffi::AnyBuffer>()  // h
                                  .Arg<ffi::AnyBuffer>()  // h0
                                  .Arg<ffi::AnyBuffer>()  // ct_h
                                  .Arg<ffi::AnyBuffer>()  // ct_final
                                  .Attr<int32_t>("candidate")
                                  .Ret<ffi::AnyBuffer>()  // du
                                  .Ret<ffi::AnyBuffer>()  // h0_bar
);
#endif  // LINREC_PART_MINGRU

#if LINREC_PART_GLR
XLA_FFI_DEFINE_HANDLER_SYMBOL(linrec_glr_fwd_ffi, GlrFwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // u
                                  .Arg<ffi::AnyBuffer>()  // h0
                                  .Attr<bool>("tied")
                                  .Attr<bool>("reverse")
                                  .Ret<ffi::AnyBuffer>()  // y
                                  .Ret<ffi::AnyBuffer>()  // h
                                  .Ret<ffi::AnyBuffer>()  // final
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(linrec_glr_bwd_ffi, GlrBwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // u
                                  .Arg<ffi::AnyBuffer>()  // h
                                  .Arg<ffi::AnyBuffer>()  // h0
                                  .Arg<ffi::AnyBuffer>()  // ct_y
                                  .Arg<ffi::AnyBuffer>()  // ct_final
                                  .Attr<bool>("tied")
                                  .Attr<bool>("reverse")
                                  .Ret<ffi::AnyBuffer>()  // du
                                  .Ret<ffi::AnyBuffer>()  // h0_bar
);
#endif  // LINREC_PART_GLR

#if LINREC_PART_GMH_FWD
XLA_FFI_DEFINE_HANDLER_SYMBOL(linrec_gmh_fwd_ffi, GmhFwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // q
                                  .Arg<ffi::AnyBuffer>()  // k
                                  .Arg<ffi::AnyBuffer>()  // v
                                  .Arg<ffi::AnyBuffer>()  // a
                                  .Arg<ffi::AnyBuffer>()  // s0
                                  .Ret<ffi::AnyBuffer>()  // o
                                  .Ret<ffi::AnyBuffer>()  // final
                                  .Ret<ffi::AnyBuffer>()  // checkpoints
);

#endif  // LINREC_PART_GMH_FWD

#if LINREC_PART_GMH_BWD
XLA_FFI_DEFINE_HANDLER_SYMBOL(linrec_gmh_bwd_ffi, GmhBwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // q
                                  .Arg<ffi::AnyBuffer>()  // k
                                  .Arg<ffi::AnyBuffer>()  // v
                                  .Arg<ffi::AnyBuffer>()  // a
                                  .Arg<ffi::AnyBuffer>()  // checkpoints
                                  .Arg<ffi::AnyBuffer>()  // ct_o
                                  .Arg<ffi::AnyBuffer>()  // ct_final
                                  .Ret<ffi::AnyBuffer>()  // q_bar
                                  .Ret<ffi::AnyBuffer>()  // k_bar
                                  .Ret<ffi::AnyBuffer>()  // v_bar
                                  .Ret<ffi::AnyBuffer>()  // a_bar
                                  .Ret<ffi::AnyBuffer>()  // s0_bar
);
#endif  // LINREC_PART_GMH_BWD

#endif  // LINREC_WITH_XLA_FFI
