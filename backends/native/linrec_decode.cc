// linrec native decode programs: one call runs a whole model's decode step, a short list of operations over
// float32 row buffers (embedding rows, layer norms, the dense products of linrec_dense.cc, activations, the
// GatedLinearRNN and minGRU cells, residual adds).
//
// Why: PyTorch's eager step of a 4-layer LM issues ~60 small operations per layer, and at batch 1 their dispatch
// (~300 us per token, benchmarks/results/decode.md) costs as much as reading the weights. A program built once per
// decoder and run in one call leaves only the products' own time. The operations are the spec's (the
// framework steps are the reference and the tests compare with them within the float32 tolerance).
//
// Buffers: the caller passes `slots`, an array of pointers; an operation names its buffers by slot index. Each
// float buffer holds `m` rows, contiguous, of the width the operation states. Integer inputs (tokens, positions)
// are slots too, typed by the operation's flag. Nothing is allocated here.

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <initializer_list>

#if defined(__AVX2__)
#include <immintrin.h>
#define LINREC_DECODE_AVX2 1
#endif

extern "C" int linrec_dense_rows(int64_t m, int64_t k, int64_t n, const float* x, const float* packed,
                                 const float* bias, float* y);

namespace {

enum Code : int32_t {
  kGather = 1,     // dst[r] (+)= table w[idx[r]]            width, n = table rows; flag: 1 int32 idx, 2 add
  kSinusoid = 2,   // dst[r] += spec sinusoidal row pos[r]    width; src int32 positions
  kDense = 3,      // dst = src @ W + b (W packed)           width = K, n = N
  kAdd = 4,        // dst += src                             width
  kLayerNorm = 5,  // dst = layer_norm(src) * w + b          width, eps
  kAct = 6,        // dst = act(src)                         width, kind
  kGlrnnCell = 7,  // (u=src, h=aux) -> (h'=dst, y=extra)    width = H, kind = in | hidden << 8 | gate << 16, flag: 1 tied
  kCopy = 8,       // dst = src                              width
  kRmsNorm = 9,    // dst = src / rms(src) * w               width, eps
  kMinGruCell = 10,  // (u=src, h=aux) -> h'=dst               width = H, flag: 1 candidate g
  kGluAdd = 11,    // dst += src[:, :D] * sigmoid(src[:, D:])  width = D
  kMinLstmCell = 12,  // (u=src, h=aux) -> h'=dst               width = H, flag: 1 candidate g
  kGmhCell = 13,   // (u=src, S=aux) -> (S'=dst, o=extra)     width = H, n = K | V << 20 | R << 40, kind: gate
  kActMul = 14,    // dst *= act(src)                        width, kind
};

// kGmhCell's gate (gateloop_mh.md §2): sigmoid (real state), or a complex gate from magnitude and phase (the phase
// through identity or relu), or cartesian (sigma(|z|) z / |z|).
enum GmhGate : int32_t { kGmhReal = 0, kGmhMagPhase = 1, kGmhMagPhaseRelu = 2, kGmhCartesian = 3 };

enum Act : int32_t { kIdentity = 0, kTanh, kSigmoid, kRelu, kGelu, kGeluExact, kSilu, kSoftplus };

}  // namespace

// One operation of a program (the layout linrec.backends.native.decode.Op mirrors).
struct LinrecOp {
  int32_t code, dst, src, aux, extra, kind, flag, pad;
  int64_t width, n;
  double eps;
  const void* w;
  const float* b;
};

namespace {

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

inline float activate(int32_t kind, float x) {
  switch (kind) {
    case kTanh: return std::tanh(x);
    case kSigmoid: return sigmoid(x);
    case kRelu: return x < 0.0f ? 0.0f : x;  // NaN passes
    case kGelu: {
      const float c = 0.7978845608028654f;  // sqrt(2 / pi)
      return 0.5f * x * (1.0f + std::tanh(c * (x + 0.044715f * x * x * x)));
    }
    case kGeluExact: return 0.5f * x * (1.0f + std::erf(x * 0.7071067811865476f));
    case kSilu: return x * sigmoid(x);
    case kSoftplus: return x > 20.0f ? x : std::log1p(std::exp(x));  // torch's threshold: above it softplus(x) = x
    default: return x;
  }
}

#ifdef LINREC_DECODE_AVX2
// Eight lanes of exp, tanh and the activations built on them (Cephes' single-precision polynomials, ~2 ulp): the
// scalar library calls cost ~15 ns each, as much per token as the products at batch 1. erf and log1p (gelu_exact,
// softplus) keep the scalar calls.
using V = __m256;

inline V splat(float x) { return _mm256_set1_ps(x); }

inline V vexp(V x) {
  const V input = x;
  // 2^n below stays a normal float; NaN passes (max/min return their second operand when one is NaN)
  x = _mm256_min_ps(splat(88.3f), _mm256_max_ps(splat(-87.3f), x));
  const V n = _mm256_floor_ps(_mm256_add_ps(_mm256_mul_ps(x, splat(1.44269504088896341f)), splat(0.5f)));
  x = _mm256_sub_ps(_mm256_sub_ps(x, _mm256_mul_ps(n, splat(0.693359375f))), _mm256_mul_ps(n, splat(-2.12194440e-4f)));
  V p = splat(1.9875691500e-4f);
  for (const float c : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f})
    p = _mm256_add_ps(_mm256_mul_ps(p, x), splat(c));
  p = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(p, _mm256_mul_ps(x, x)), x), splat(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const V y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  // beyond the clamp: exp overflows to inf, and underflows (to subnormals and 0) as 0
  const V high = _mm256_blendv_ps(y, splat(INFINITY), _mm256_cmp_ps(input, splat(88.72283f), _CMP_GT_OQ));
  return _mm256_blendv_ps(high, splat(0.0f), _mm256_cmp_ps(input, splat(-87.3f), _CMP_LT_OQ));
}

inline V vtanh(V x) {
  const V sign = _mm256_and_ps(x, splat(-0.0f));
  const V ax = _mm256_andnot_ps(splat(-0.0f), x);
  // |x| < 0.625: x + x^3 P(x^2); beyond: 1 - 2 / (exp(2|x|) + 1), which has no cancellation there
  const V z = _mm256_mul_ps(x, x);
  V p = splat(-5.70498872745e-3f);
  for (const float c : {2.06390887954e-2f, -5.37397155531e-2f, 1.33314422036e-1f, -3.33332819422e-1f})
    p = _mm256_add_ps(_mm256_mul_ps(p, z), splat(c));
  const V small = _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(p, z), x), x);
  const V e = vexp(_mm256_add_ps(ax, ax));
  const V large = _mm256_sub_ps(splat(1.0f), _mm256_div_ps(splat(2.0f), _mm256_add_ps(e, splat(1.0f))));
  const V big = _mm256_or_ps(large, sign);
  return _mm256_blendv_ps(small, big, _mm256_cmp_ps(ax, splat(0.625f), _CMP_GE_OQ));
}

inline V vsigmoid(V x) {
  return _mm256_div_ps(splat(1.0f), _mm256_add_ps(splat(1.0f), vexp(_mm256_sub_ps(splat(0.0f), x))));
}

inline bool vectorized(int32_t kind) { return kind != kGeluExact && kind != kSoftplus; }

inline V vactivate(int32_t kind, V x) {
  switch (kind) {
    case kTanh: return vtanh(x);
    case kSigmoid: return vsigmoid(x);
    case kRelu: return _mm256_max_ps(splat(0.0f), x);  // NaN passes
    case kGelu: {
      const V cube = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(x, x), x), splat(0.044715f));
      const V t = vtanh(_mm256_mul_ps(splat(0.7978845608028654f), _mm256_add_ps(x, cube)));
      return _mm256_mul_ps(_mm256_mul_ps(splat(0.5f), x), _mm256_add_ps(splat(1.0f), t));
    }
    case kSilu: return _mm256_mul_ps(x, vsigmoid(x));
    default: return x;
  }
}
#endif

// dst[j] = act(src[j]) for j < count (dst may be src).
void activate_all(int32_t kind, const float* src, float* dst, int64_t count) {
  int64_t j = 0;
#ifdef LINREC_DECODE_AVX2
  if (vectorized(kind)) {
    for (; j + 8 <= count; j += 8) _mm256_storeu_ps(dst + j, vactivate(kind, _mm256_loadu_ps(src + j)));
  }
#endif
  for (; j < count; ++j) dst[j] = activate(kind, src[j]);
}

inline float* rows(void* const* slots, int32_t slot) { return static_cast<float*>(slots[slot]); }

int gather(const LinrecOp& op, void* const* slots, int64_t m) {
  const float* table = static_cast<const float*>(op.w);
  float* dst = rows(slots, op.dst);
  for (int64_t r = 0; r < m; ++r) {
    const int64_t i = (op.flag & 1) ? static_cast<const int32_t*>(slots[op.src])[r]
                                    : static_cast<const int64_t*>(slots[op.src])[r];
    if (i < 0 || i >= op.n) return 3;  // an index outside the table: never read past it
    const float* row = table + i * op.width;
    float* out = dst + r * op.width;
    if (op.flag & 2) {
      for (int64_t j = 0; j < op.width; ++j) out[j] += row[j];
    } else {
      for (int64_t j = 0; j < op.width; ++j) out[j] = row[j];
    }
  }
  return 0;
}

// The spec's table (gated_linear_rnn_lm.md): omega_k = 10000^(-2k/d) for column pair k, sin on even columns, cos on
// odd ones, computed in float64 and rounded once.
void sinusoid(const LinrecOp& op, void* const* slots, int64_t m) {
  const int32_t* pos = static_cast<const int32_t*>(slots[op.src]);
  float* dst = rows(slots, op.dst);
  const double scale = -2.0 * std::log(10000.0) / static_cast<double>(op.width);
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t j = 0; j < op.width; ++j) {
      const double angle = static_cast<double>(pos[r]) * std::exp(static_cast<double>(j / 2) * scale);
      dst[r * op.width + j] += static_cast<float>(j % 2 == 0 ? std::sin(angle) : std::cos(angle));
    }
  }
}

void layer_norm(const LinrecOp& op, void* const* slots, int64_t m) {
  const float* src = rows(slots, op.src);
  float* dst = rows(slots, op.dst);
  const float* scale = static_cast<const float*>(op.w);
  const int64_t d = op.width;
  for (int64_t r = 0; r < m; ++r) {
    const float* x = src + r * d;
    double mean = 0.0, var = 0.0;
    for (int64_t j = 0; j < d; ++j) mean += x[j];
    mean /= static_cast<double>(d);
    for (int64_t j = 0; j < d; ++j) var += (x[j] - mean) * (x[j] - mean);  // biased, as the spec
    const float rstd = static_cast<float>(1.0 / std::sqrt(var / static_cast<double>(d) + op.eps));
    const float mu = static_cast<float>(mean);
    for (int64_t j = 0; j < d; ++j) dst[r * d + j] = (x[j] - mu) * rstd * scale[j] + op.b[j];
  }
}

// The cell in passes over each row (the activations of every block first, in place in `u`, a scratch buffer):
// one activation per loop keeps the compiled code small (a loop dispatching three activations per element was
// unswitched into every combination of them, and took ~35 s to compile).
void glrnn_cell(const LinrecOp& op, void* const* slots, int64_t m) {
  const int64_t d = op.width;
  const int64_t blocks = (op.flag & 1) ? 3 : 4;
  const int32_t act_in = op.kind & 0xff, act_hidden = (op.kind >> 8) & 0xff, act_gate = (op.kind >> 16) & 0xff;
  float* u = rows(slots, op.src);
  const float* h = rows(slots, op.aux);
  float* h_out = rows(slots, op.dst);
  float* y = rows(slots, op.extra);
  for (int64_t r = 0; r < m; ++r) {
    float* ur = u + r * blocks * d;
    activate_all(act_in, ur, ur, d);
    activate_all(act_gate, ur + d, ur + d, (blocks - 1) * d);
    const float* i = ur + d;
    const float* o = ur + (blocks - 1) * d;
    const float* hr = h + r * d;
    float* next = h_out + r * d;
    float* yr = y + r * d;
    for (int64_t j = 0; j < d; ++j) {
      const float f = (op.flag & 1) ? 1.0f - i[j] : ur[2 * d + j];
      next[j] = i[j] * ur[j] + f * hr[j];
    }
    activate_all(act_hidden, next, yr, d);
    for (int64_t j = 0; j < d; ++j) yr[j] *= o[j];
  }
}

void rms_norm(const LinrecOp& op, void* const* slots, int64_t m) {
  const float* src = rows(slots, op.src);
  float* dst = rows(slots, op.dst);
  const float* scale = static_cast<const float*>(op.w);
  const int64_t d = op.width;
  for (int64_t r = 0; r < m; ++r) {
    const float* x = src + r * d;
    double squares = 0.0;
    for (int64_t j = 0; j < d; ++j) squares += static_cast<double>(x[j]) * x[j];
    const float rstd = static_cast<float>(1.0 / std::sqrt(squares / static_cast<double>(d) + op.eps));
    for (int64_t j = 0; j < d; ++j) dst[r * d + j] = x[j] * rstd * scale[j];
  }
}

// minGRU (mingru.md): a = 1 - z = sigmoid(-u_z), b = z * candidate(u_h), h' = a h + b; candidate g(u) = u + 1/2 for
// u >= 0, else sigmoid(u) (flag 1), or u.
//
// minLSTM (minlstm.md): f' = f / (f + i), i' = i / (f + i), f = sigmoid(u_f), i = sigmoid(u_i), h' = f' h + i' c(u_h),
// from three exps as the fused scan kernel's lstm_gates (linrec_scan.cc): 1/f = 1 + e^{-u_f} and 1/i = 1 + e^{-u_i}
// scaled by e^{-m}, m = max(0, -u_f, -u_i), so no exponent is positive and their sum is >= 1 (no overflow, no 0/0).
// u is first raised to the lowest finite float: u = -inf would otherwise give inf - inf.
inline float candidate(bool g, float x) { return !g ? x : (x >= 0.0f ? x + 0.5f : sigmoid(x)); }

// (keep, take) = (a, z) of minGRU or (f', i') of minLSTM for one element
inline void min_rnn_gates(bool lstm, const float* u, int64_t d, int64_t j, float& keep, float& take) {
  if (!lstm) {
    keep = sigmoid(-u[j]);
    take = sigmoid(u[j]);
    return;
  }
  const float uf = std::max(u[j], -FLT_MAX), ui = std::max(u[d + j], -FLT_MAX);
  const float m = std::max(0.0f, std::max(-uf, -ui));
  const float base = std::exp(-m), inv_f = base + std::exp(-uf - m), inv_i = base + std::exp(-ui - m);
  const float r = 1.0f / (inv_f + inv_i);
  keep = inv_i * r;
  take = inv_f * r;
}

#ifdef LINREC_DECODE_AVX2
inline V vcandidate(bool g, V x) {
  if (!g) return x;
  return _mm256_blendv_ps(vsigmoid(x), _mm256_add_ps(x, splat(0.5f)), _mm256_cmp_ps(x, splat(0.0f), _CMP_GE_OQ));
}

inline void vmin_rnn_gates(bool lstm, const float* u, int64_t d, int64_t j, V& keep, V& take) {
  const V zero = splat(0.0f);
  if (!lstm) {
    const V z_in = _mm256_loadu_ps(u + j);
    keep = vsigmoid(_mm256_sub_ps(zero, z_in));
    take = vsigmoid(z_in);
    return;
  }
  // max(low, u) keeps a NaN u (maxps returns its second operand when one is NaN)
  const V low = splat(-FLT_MAX);
  const V f_in = _mm256_max_ps(low, _mm256_loadu_ps(u + j)), i_in = _mm256_max_ps(low, _mm256_loadu_ps(u + d + j));
  const V top = _mm256_max_ps(zero, _mm256_max_ps(_mm256_sub_ps(zero, f_in), _mm256_sub_ps(zero, i_in)));
  const V base = vexp(_mm256_sub_ps(zero, top));
  const V inv_f = _mm256_add_ps(base, vexp(_mm256_sub_ps(_mm256_sub_ps(zero, f_in), top)));
  const V inv_i = _mm256_add_ps(base, vexp(_mm256_sub_ps(_mm256_sub_ps(zero, i_in), top)));
  const V scale = _mm256_div_ps(splat(1.0f), _mm256_add_ps(inv_f, inv_i));
  keep = _mm256_mul_ps(inv_i, scale);
  take = _mm256_mul_ps(inv_f, scale);
}
#endif

// u rows of 2H (minGRU: [u_z | u_h]) or 3H (minLSTM: [u_f | u_i | u_h]); flag 1: candidate g.
void min_rnn_cell(bool lstm, const LinrecOp& op, void* const* slots, int64_t m) {
  const int64_t d = op.width, blocks = lstm ? 3 : 2;
  const bool g = op.flag & 1;
  for (int64_t r = 0; r < m; ++r) {
    const float* u = rows(slots, op.src) + r * blocks * d;
    const float* uh = u + (blocks - 1) * d;
    const float* h = rows(slots, op.aux) + r * d;
    float* h_out = rows(slots, op.dst) + r * d;
    int64_t j = 0;
#ifdef LINREC_DECODE_AVX2
    for (; j + 8 <= d; j += 8) {
      V keep, take;
      vmin_rnn_gates(lstm, u, d, j, keep, take);
      const V b = _mm256_mul_ps(take, vcandidate(g, _mm256_loadu_ps(uh + j)));
      _mm256_storeu_ps(h_out + j, _mm256_add_ps(b, _mm256_mul_ps(keep, _mm256_loadu_ps(h + j))));
    }
#endif
    for (; j < d; ++j) {
      float keep, take;
      min_rnn_gates(lstm, u, d, j, keep, take);
      h_out[j] = take * candidate(g, uh[j]) + keep * h[j];
    }
  }
}

// The multi-head GateLoop's step (gateloop_mh.md §2) for each row: u = [q (H K) | k (H K) | v (H V) | gate blocks of
// H R, one for a real gate, two for a complex one], S (H, K, V) float32 or complex64 as (re, im) pairs:
// S' = diag(a) S + k v^T per head, o = Re(S')^T q (H V). Written as plain loops over short rows (V = 8 at the
// benchmark's heads): the state is H K V values per row, a few microseconds next to the products.
inline void gmh_gate(int32_t kind, const float* gate, int64_t offset, int64_t hr, float& re, float& im) {
  const float x = gate[offset];
  if (kind == kGmhReal) {
    re = sigmoid(x);
    im = 0.0f;
  } else if (kind == kGmhCartesian) {  // as the framework step: z = 0 (and a NaN z) gives sigma(0) = 1/2
    const float y = gate[hr + offset], sq = x * x + y * y;
    if (sq > 0.0f) {
      const float r = std::sqrt(sq), scale = sigmoid(r) / r;
      re = x * scale;
      im = y * scale;
    } else {
      re = 0.5f;
      im = 0.0f;
    }
  } else {
    float phase = gate[hr + offset];
    if (kind == kGmhMagPhaseRelu && phase < 0.0f) phase = 0.0f;  // NaN passes
    const float mag = sigmoid(x);
    re = mag * std::cos(phase);
    im = mag * std::sin(phase);
  }
}

int gmh_cell(const LinrecOp& op, void* const* slots, int64_t m) {
  const int64_t heads = op.width, K = op.n & 0xFFFFF, V = (op.n >> 20) & 0xFFFFF, R = (op.n >> 40) & 0xFFFFF;
  const int32_t kind = op.kind;
  if (kind < kGmhReal || kind > kGmhCartesian || (R != 1 && R != K)) return 2;
  const bool complex_state = kind != kGmhReal;
  const int64_t hk = heads * K, hv = heads * V, hr = heads * R;
  const int64_t u_width = 2 * hk + hv + (complex_state ? 2 : 1) * hr;
  const int64_t s_width = hk * V * (complex_state ? 2 : 1);
  const float* u = rows(slots, op.src);
  const float* s_in = rows(slots, op.aux);
  float* s_out = rows(slots, op.dst);
  float* o_all = rows(slots, op.extra);
  for (int64_t r = 0; r < m; ++r) {
    const float* q = u + r * u_width;
    const float* k = q + hk;
    const float* v = k + hk;
    const float* gate = v + hv;
    const float* s = s_in + r * s_width;
    float* sn = s_out + r * s_width;
    float* o = o_all + r * hv;
    for (int64_t j = 0; j < hv; ++j) o[j] = 0.0f;
    for (int64_t h = 0; h < heads; ++h) {
      const float* vh = v + h * V;
      float* oh = o + h * V;
      float a_re = 0.0f, a_im = 0.0f;
      if (R == 1) gmh_gate(kind, gate, h, hr, a_re, a_im);
      for (int64_t row = 0; row < K; ++row) {
        if (R != 1) gmh_gate(kind, gate, h * R + row, hr, a_re, a_im);
        const float kr = k[h * K + row], qr = q[h * K + row];
        const int64_t base = (h * K + row) * V;
        if (complex_state) {
          const float* sr = s + 2 * base;
          float* nr = sn + 2 * base;
          for (int64_t c = 0; c < V; ++c) {
            const float re = a_re * sr[2 * c] - a_im * sr[2 * c + 1] + kr * vh[c];
            nr[2 * c] = re;
            nr[2 * c + 1] = a_re * sr[2 * c + 1] + a_im * sr[2 * c];
            oh[c] += qr * re;
          }
        } else {
          for (int64_t c = 0; c < V; ++c) {
            const float next = a_re * s[base + c] + kr * vh[c];
            sn[base + c] = next;
            oh[c] += qr * next;
          }
        }
      }
    }
  }
  return 0;
}

// dst[j] *= act(src[j]) for j < count (the multi-head GateLoop's output gate).
void act_mul(int32_t kind, const float* src, float* dst, int64_t count) {
  int64_t j = 0;
#ifdef LINREC_DECODE_AVX2
  if (vectorized(kind)) {
    for (; j + 8 <= count; j += 8)
      _mm256_storeu_ps(dst + j, _mm256_mul_ps(_mm256_loadu_ps(dst + j), vactivate(kind, _mm256_loadu_ps(src + j))));
  }
#endif
  for (; j < count; ++j) dst[j] *= activate(kind, src[j]);
}

void glu_add(const LinrecOp& op, void* const* slots, int64_t m) {
  const int64_t d = op.width;
  const float* src = rows(slots, op.src);
  float* dst = rows(slots, op.dst);
  for (int64_t r = 0; r < m; ++r) {
    const float* value = src + r * 2 * d;
    const float* gate = value + d;
    float* out = dst + r * d;
    int64_t j = 0;
#ifdef LINREC_DECODE_AVX2
    for (; j + 8 <= d; j += 8) {
      const V add = _mm256_mul_ps(_mm256_loadu_ps(value + j), vsigmoid(_mm256_loadu_ps(gate + j)));
      _mm256_storeu_ps(out + j, _mm256_add_ps(_mm256_loadu_ps(out + j), add));
    }
#endif
    for (; j < d; ++j) out[j] += value[j] * sigmoid(gate[j]);
  }
}

}  // namespace

extern "C" {

// Runs `n_ops` operations for `m` rows. Returns 0, 2 for bad sizes or an unknown operation, 3 for an index outside
// its table.
int linrec_decode_run(const LinrecOp* ops, int64_t n_ops, void* const* slots, int64_t m) {
  if (m < 0 || n_ops < 0) return 2;
  for (int64_t i = 0; i < n_ops; ++i) {
    const LinrecOp& op = ops[i];
    const int64_t count = m * op.width;
    int status = 0;
    switch (op.code) {
      case kGather: status = gather(op, slots, m); break;
      case kSinusoid: sinusoid(op, slots, m); break;
      case kDense:  // every row in one pass over the weights
        status = linrec_dense_rows(m, op.width, op.n, rows(slots, op.src), static_cast<const float*>(op.w), op.b,
                                   rows(slots, op.dst));
        break;
      case kAdd: {
        float* dst = rows(slots, op.dst);
        const float* src = rows(slots, op.src);
        for (int64_t j = 0; j < count; ++j) dst[j] += src[j];
        break;
      }
      case kLayerNorm: layer_norm(op, slots, m); break;
      case kAct: activate_all(op.kind, rows(slots, op.src), rows(slots, op.dst), count); break;
      case kGlrnnCell: glrnn_cell(op, slots, m); break;
      case kRmsNorm: rms_norm(op, slots, m); break;
      case kMinGruCell: min_rnn_cell(false, op, slots, m); break;
      case kGluAdd: glu_add(op, slots, m); break;
      case kMinLstmCell: min_rnn_cell(true, op, slots, m); break;
      case kGmhCell: status = gmh_cell(op, slots, m); break;
      case kActMul: act_mul(op.kind, rows(slots, op.src), rows(slots, op.dst), count); break;
      case kCopy: {
        float* dst = rows(slots, op.dst);
        const float* src = rows(slots, op.src);
        for (int64_t j = 0; j < count; ++j) dst[j] = src[j];
        break;
      }
      default: return 2;
    }
    if (status != 0) return status;
  }
  return 0;
}

}  // extern "C"

#ifdef LINREC_WITH_XLA_FFI
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// A program run from JAX: args (inputs, positions, L states), rets (out, L states, scratch); attributes `ops` (the
// address of the program's LinrecOp array, owned by the Python decoder that traced this call), `n_ops` and the
// scratch slots' `widths`. The slots are laid out as linrec.backends.native.decode.Layout says.
ffi::Error DecodeImpl(ffi::RemainingArgs args, ffi::RemainingRets rets, int64_t ops, int64_t n_ops,
                      ffi::Span<const int64_t> widths) {
  const size_t layers = args.size() - 2;
  if (args.size() < 2 || rets.size() != layers + 2)
    return ffi::Error::InvalidArgument("linrec: decode takes (inputs, positions, L states), returns (out, L states, "
                                       "scratch)");
  std::vector<void*> slots;
  for (size_t i = 0; i < 2; ++i) slots.push_back(args.get<ffi::AnyBuffer>(i).value().untyped_data());
  auto out = rets.get<ffi::AnyBuffer>(0).value();
  const int64_t m = out->dimensions().size() == 0 ? 0 : out->dimensions()[0];
  slots.push_back(out->untyped_data());
  for (size_t l = 0; l < layers; ++l) slots.push_back(args.get<ffi::AnyBuffer>(2 + l).value().untyped_data());
  for (size_t l = 0; l < layers; ++l) slots.push_back(rets.get<ffi::AnyBuffer>(1 + l).value()->untyped_data());
  auto scratch = rets.get<ffi::AnyBuffer>(layers + 1).value();
  float* base = static_cast<float*>(scratch->untyped_data());
  int64_t offset = 0;
  for (const int64_t width : widths) {
    slots.push_back(base + offset);
    offset += m * width;
  }
  if (static_cast<int64_t>(scratch->element_count()) < offset)
    return ffi::Error::InvalidArgument("linrec: decode scratch smaller than the program's buffers");
  const int status = linrec_decode_run(reinterpret_cast<const LinrecOp*>(ops), n_ops, slots.data(), m);
  if (status == 3) return ffi::Error::InvalidArgument("linrec: a token or position is outside its embedding table");
  if (status != 0) return ffi::Error::InvalidArgument("linrec: the native decode program refused its sizes");
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(linrec_decode_ffi, DecodeImpl,
                              ffi::Ffi::Bind()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<int64_t>("ops")
                                  .Attr<int64_t>("n_ops")
                                  .Attr<ffi::Span<const int64_t>>("widths"));
#endif  // LINREC_WITH_XLA_FFI
