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

#include <algorithm>
#include <atomic>
#include <cmath>
#include <complex>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
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
};

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
      const SM* __restrict ct = ct_h + row * s.d + d0;
      if (!reverse && k > kPrefetchRows) {
        prefetch_span(ct - kPrefetchRows * s.d, sizeof(SM) * width);
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
// exponent is <= 0, one scaled term is exactly 1 and the sum is >= 1. u is first raised to 2 kMin, below which
// exp_nonpositive clamps anyway: u = -inf would otherwise give inf - inf (NaN still gives NaN).
template <class S>
inline void lstm_gates(S uf, S ui, S& z, S& a, S& not_f, S& not_i) {
  constexpr S kLow = S(2) * ExpConsts<S>::kMin;
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
        prefetch_span(ct_h + (row - kPrefetchRows) * s.d + i0, sizeof(S) * width);
      }
      const S* __restrict uz = u + row * kBlocks * s.d + i0;
      const S* __restrict uh = uz + (kBlocks - 1) * s.d;
      const S* __restrict ct = ct_h + row * s.d + i0;
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
        prefetch_span(ct_y + ahead * s.d + i0, sizeof(S) * width);
      }
      const S* prev = (k == 0 ? h0 + n * s.d : h + row_of(k - 1) * s.d) + i0;
      S* rows = du_row.data();  // blocks in u's order: in, i, (f,) o
      glr_bwd_step<kTied>(width, s.d, u + row * blocks * s.d + i0, h + row * s.d + i0, prev, ct_y + row * s.d + i0,
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
            const void* h0, const void* ct_h, const void* ct_final, const uint8_t* cut, bool reverse, bool conjugate,
            void* a_bar, void* b_bar, void* h0_bar) {
  if (int st = check_shape(n, t, d, da)) return st;
  const Shape s{n, t, d, da, da ? d / da : 1};
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
                   const void* h0, const void* ct_h, const void* ct_final, void* du, void* h0_bar) {
  if (int st = check_shape(n, t, hidden, hidden)) return st;
  if (candidate < 0 || candidate > (kG | kMinLSTM)) return kBadShape;
  const Shape s{n, t, hidden, hidden, 1};
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
                const void* h0, const void* ct_y, const void* ct_final, int reverse, void* du, void* h0_bar) {
  if (int st = check_shape(n, t, hidden, hidden)) return st;
  const Shape s{n, t, hidden, hidden, 1};
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

}  // namespace

// --------------------------------------------------------------------------------------------------------------------
// C ABI (ctypes). Every pointer must be non-null except `cut` (null: no resets); arrays contiguous as described at the
// top. Returns 0 on success, 1 for an unsupported dtype pair, 2 for inconsistent sizes.

extern "C" {

// Bumped whenever a signature below changes; the Python loader checks it.
int linrec_abi_version() { return 4; }

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
int linrec_scan_bwd(int a_dtype, int s_dtype, int64_t n, int64_t t, int64_t d, int64_t da, const void* a,
                    const void* h, const void* h0, const void* ct_h, const void* ct_final, const uint8_t* cut,
                    int reverse, int conjugate, void* a_bar, void* b_bar, void* h0_bar) {
  return run_bwd(a_dtype, s_dtype, n, t, d, da, a, h, h0, ct_h, ct_final, cut, reverse != 0, conjugate != 0, a_bar,
                 b_bar, h0_bar);
}

// minGRU with fused gates: u (N, T, 2H) = [u_z | u_h] per step, h0 (N, H) -> h (N, T, H), final (N, H);
// candidate 0 = identity, 1 = g. Float32 (dtype 0) and float64 (1) only.
int linrec_mingru_fwd(int dtype, int64_t n, int64_t t, int64_t hidden, int candidate, const void* u, const void* h0,
                      void* h, void* final_state) {
  return run_mingru_fwd(dtype, n, t, hidden, candidate, u, h0, h, final_state);
}

// Its VJP given the output h: du (N, T, 2H) and h0_bar (N, H).
int linrec_mingru_bwd(int dtype, int64_t n, int64_t t, int64_t hidden, int candidate, const void* u, const void* h,
                      const void* h0, const void* ct_h, const void* ct_final, void* du, void* h0_bar) {
  return run_mingru_bwd(dtype, n, t, hidden, candidate, u, h, h0, ct_h, ct_final, du, h0_bar);
}

// GatedLinearRNN with fused gates (tanh input, sigmoid gates, tanh output): u (N, T, nH) with n = 3 (tied) or 4,
// h0 (N, H) -> y (N, T, H) = tanh(h) o, h (N, T, H), final (N, H). Float32 (0) and float64 (1).
int linrec_glr_fwd(int dtype, int64_t n, int64_t t, int64_t hidden, int tied, const void* u, const void* h0,
                   int reverse, void* y, void* h, void* final_state) {
  return run_glr_fwd(dtype, n, t, hidden, tied, u, h0, reverse, y, h, final_state);
}

// Its VJP given h and the cotangents of y and final: du (N, T, nH), h0_bar (N, H).
int linrec_glr_bwd(int dtype, int64_t n, int64_t t, int64_t hidden, int tied, const void* u, const void* h,
                   const void* h0, const void* ct_y, const void* ct_final, int reverse, void* du, void* h0_bar) {
  return run_glr_bwd(dtype, n, t, hidden, tied, u, h, h0, ct_y, ct_final, reverse, du, h0_bar);
}

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
                              a.untyped_data(), h.untyped_data(), h0.untyped_data(), ct_h.untyped_data(),
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
                                     h.untyped_data(), h0.untyped_data(), ct_h.untyped_data(),
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
                                  h0.untyped_data(), ct_y.untyped_data(), ct_final.untyped_data(), reverse,
                                  du->untyped_data(), h0_bar->untyped_data()));
}

}  // namespace

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
#endif  // LINREC_WITH_XLA_FFI
