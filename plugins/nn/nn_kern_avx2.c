/*
 * nn_kern_avx2: the AVX2 + FMA + F16C tier (compiled with those flags only;
 * entered through nn_kern_ops_avx2 after nn_kern.c checked the CPU).
 *
 * Quantized products follow llama.cpp's integer recipe (vpmaddubsw unsigned
 * x signed bytes to 16-bit pairs, vpmaddwd to 32-bit, one float scale per
 * 32-element block), so they are exact in the integers and agree with the
 * scalar reference to float rounding. What differs from llama.cpp is the
 * blocking: each unpacked weight block is used against several activation
 * rows while it is in registers, and several weight rows share each
 * activation load, so n activation rows cost far less than n passes.
 *
 * The element-wise functions use polynomial exp (Cephes, ~2 ulp) and an erfc
 * (Numerical Recipes' Chebyshev fit, 1.2e-7 relative) evaluated so that
 * GELU stays within 1e-6 relative everywhere.
 */
#include "nn_kern_avx2.h"

#include <immintrin.h>
#include <math.h>

/* A literal, not a const int: the rounding mode must be an immediate even at
 * -O0. */
#define NN_ROUND_NEAREST (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

/* ======================================================================== */
/* Small helpers                                                             */
/* ======================================================================== */

static inline float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float hmax8(__m256 v)
{
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline int hsum8_epi32(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
    return _mm_cvtsi128_si32(s);
}

static inline float f16(uint16_t h)
{
    return _cvtsh_ss(h);
}

/* exp for 8 lanes: Cody-Waite reduction by ln2 and Cephes' degree-6
 * polynomial on [-ln2/2, ln2/2]; about 2 ulp. exp_core takes the reduced
 * argument r and n (x = n ln2 + r) and applies 2^n as two factors so that n
 * from -150 to 128 stays representable: results underflow gradually and
 * overflow to inf. */
static inline __m256 exp_core(__m256 fx, __m256 r)
{
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    __m256 y = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i n = _mm256_cvtps_epi32(fx);
    __m256i n1 = _mm256_srai_epi32(n, 1), n2 = _mm256_sub_epi32(n, n1);
    __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, _mm256_set1_epi32(127)), 23));
    __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, _mm256_set1_epi32(127)), 23));
    return _mm256_mul_ps(_mm256_mul_ps(y, s1), s2);
}

/* exp(x): x = -inf gives 0, NaN stays NaN. */
static inline __m256 exp8(__m256 x)
{
    /* max/min return their second operand for NaN: keep x there. */
    x = _mm256_min_ps(_mm256_set1_ps(88.8f), _mm256_max_ps(_mm256_set1_ps(-104.0f), x));
    __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), r);
    return exp_core(fx, r);
}

/* exp(hi + lo) for finite hi in [-1000, 88] and small |lo| (a few units):
 * lo joins after hi's reduction (hi - n*0.693359375 is exact), so a large
 * hi does not lose lo's digits to the rounding of hi + lo. */
static inline __m256 exp8_2(__m256 hi, __m256 lo)
{
    __m256 x = _mm256_add_ps(hi, lo);
    __m256 xc = _mm256_min_ps(_mm256_set1_ps(88.8f), _mm256_max_ps(_mm256_set1_ps(-104.0f), x));
    __m256 fx = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), hi);
    r = _mm256_add_ps(_mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), r), lo);
    __m256 y = exp_core(fx, r);
    /* below the clamp the reduction above is meaningless: the result is 0 */
    return _mm256_andnot_ps(_mm256_cmp_ps(x, _mm256_set1_ps(-104.0f), _CMP_LT_OQ), y);
}

/* GELU (exact, erf form) for 8 lanes. With z = |x|/sqrt2,
 * erfc(z) = t exp(-z^2 + P(t)), t = 1/(1 + z/2) (Numerical Recipes erfcc,
 * fractional error < 1.2e-7). z^2 = x^2/2 is formed exactly (x*x plus its
 * FMA residual) and kept apart from P in the exponential, because rounding
 * a large -z^2 + P to float would cost ~z^2 ulp. Then gelu = x/2 erfc(z)
 * for x < 0 and x - x/2 erfc(z) for x >= 0. |x| is capped at 20 inside
 * (erfc(20/sqrt2) underflows), so infinities give +inf and -0; NaN stays
 * NaN. t is a reciprocal estimate refined by one Newton step (~1 ulp),
 * cheaper than a division. */
static inline __m256 gelu8(__m256 x)
{
    const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    __m256 ax = _mm256_min_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), x), _mm256_set1_ps(20.0f));
    __m256 den = _mm256_fmadd_ps(_mm256_set1_ps(0.35355339059327376f), ax, one); /* 1 + z/2 */
    __m256 t = _mm256_rcp_ps(den);
    t = _mm256_fmadd_ps(t, _mm256_fnmadd_ps(den, t, one), t);
    __m256 p = _mm256_set1_ps(0.17087277f);
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.82215223f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.48851587f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.13520398f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.27886807f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.18628806f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.09678418f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.37409196f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.00002368f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.26551223f));
    __m256 x2 = _mm256_mul_ps(ax, ax);
    __m256 x2e = _mm256_fmsub_ps(ax, ax, x2); /* ax*ax - fl(ax*ax), exact */
    __m256 e = exp8_2(_mm256_mul_ps(x2, _mm256_set1_ps(-0.5f)), _mm256_fnmadd_ps(x2e, half, p));
    __m256 herfc = _mm256_mul_ps(_mm256_mul_ps(half, ax), _mm256_mul_ps(t, e)); /* |x|/2 erfc */
    __m256 pos = _mm256_sub_ps(x, herfc);                                       /* x >= 0 */
    __m256 neg = _mm256_xor_ps(herfc, _mm256_set1_ps(-0.0f));                   /* x < 0 */
    __m256 g = _mm256_blendv_ps(pos, neg, x); /* the sign bit of x picks */
    return _mm256_blendv_ps(g, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

/* ======================================================================== */
/* Vector operations                                                         */
/* ======================================================================== */

float nn_avx2_dot_f32(const float *a, const float *b, int64_t n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float sum = hsum8(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < n; i++)
        sum += a[i] * b[i];
    return sum;
}

static inline __m256 load_f16x8(const uint16_t *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

float nn_avx2_dot_f16_f32(const uint16_t *a, const float *b, int64_t n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(load_f16x8(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(load_f16x8(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(load_f16x8(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(load_f16x8(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(load_f16x8(a + i), _mm256_loadu_ps(b + i), s0);
    float sum = hsum8(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < n; i++)
        sum += f16(a[i]) * b[i];
    return sum;
}

void nn_avx2_axpy_f16(float *y, float alpha, const uint16_t *x, int64_t n)
{
    __m256 va = _mm256_set1_ps(alpha);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, load_f16x8(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] = fmaf(alpha, f16(x[i]), y[i]);
}

void nn_avx2_axpy_f32(float *y, float alpha, const float *x, int64_t n)
{
    __m256 va = _mm256_set1_ps(alpha);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i,
                         _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] = fmaf(alpha, x[i], y[i]);
}

void nn_avx2_f32_to_f16_row(const float *x, uint16_t *y, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        y[i] = (uint16_t)_cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT);
}

void nn_avx2_f16_to_f32_row(const uint16_t *x, float *y, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, load_f16x8(x + i));
    for (; i < n; i++)
        y[i] = f16(x[i]);
}

static float sum_sq(const float *x, int64_t n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = s0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
        s0 = _mm256_fmadd_ps(a, a, s0);
        s1 = _mm256_fmadd_ps(b, b, s1);
    }
    for (; i + 8 <= n; i += 8) {
        __m256 a = _mm256_loadu_ps(x + i);
        s0 = _mm256_fmadd_ps(a, a, s0);
    }
    float s = hsum8(_mm256_add_ps(s0, s1));
    for (; i < n; i++)
        s += x[i] * x[i];
    return s;
}

void nn_avx2_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps)
{
    const float scale = 1.0f / sqrtf(sum_sq(x, n) / (float)n + eps);
    __m256 vs = _mm256_set1_ps(scale);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vs),
                                                _mm256_loadu_ps(w + i)));
    for (; i < n; i++)
        out[i] = x[i] * scale * w[i];
}

void nn_avx2_layernorm(float *out, const float *x, const float *w, const float *b, int64_t n,
                       float eps)
{
    __m256 s0 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_add_ps(s0, _mm256_loadu_ps(x + i));
    float sum = hsum8(s0);
    for (; i < n; i++)
        sum += x[i];
    const float mean = sum / (float)n;
    __m256 vm = _mm256_set1_ps(mean);
    s0 = _mm256_setzero_ps();
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + i), vm);
        s0 = _mm256_fmadd_ps(d, d, s0);
    }
    float var = hsum8(s0);
    for (; i < n; i++)
        var += (x[i] - mean) * (x[i] - mean);
    const float scale = 1.0f / sqrtf(var / (float)n + eps);
    __m256 vs = _mm256_set1_ps(scale);
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), vs);
        _mm256_storeu_ps(out + i,
                         _mm256_fmadd_ps(d, _mm256_loadu_ps(w + i), _mm256_loadu_ps(b + i)));
    }
    for (; i < n; i++)
        out[i] = fmaf((x[i] - mean) * scale, w[i], b[i]);
}

/* The scalar tail goes through the vector code too (one padded lane set),
 * so every element gets the same exp. */
static inline __m256 load_tail(const float *x, int64_t m, float pad)
{
    float tmp[8];
    for (int j = 0; j < 8; j++)
        tmp[j] = j < m ? x[j] : pad;
    return _mm256_loadu_ps(tmp);
}

static inline void store_tail(float *x, __m256 v, int64_t m)
{
    float tmp[8];
    _mm256_storeu_ps(tmp, v);
    for (int j = 0; j < m; j++)
        x[j] = tmp[j];
}

float nn_avx2_softmax(float *x, int64_t n)
{
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(x + i));
    float max = hmax8(vmax);
    for (; i < n; i++)
        max = x[i] > max ? x[i] : max;
    __m256 vm = _mm256_set1_ps(max), vsum = _mm256_setzero_ps();
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
        _mm256_storeu_ps(x + i, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    if (i < n) {
        __m256 e = exp8(_mm256_sub_ps(load_tail(x + i, n - i, -INFINITY), vm));
        store_tail(x + i, e, n - i);
        vsum = _mm256_add_ps(vsum, e); /* padded lanes are exp(-inf) = 0 */
    }
    float sum = hsum8(vsum);
    nn_avx2_scale(x, 1.0f / sum, n);
    return sum;
}

static inline __m256 silu_mul8(__m256 g, __m256 u)
{
    __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
    return _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e)), u);
}

void nn_avx2_silu_mul(float *gate, const float *up, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(gate + i, silu_mul8(_mm256_loadu_ps(gate + i), _mm256_loadu_ps(up + i)));
    if (i < n)
        store_tail(gate + i, silu_mul8(load_tail(gate + i, n - i, 0), load_tail(up + i, n - i, 0)),
                   n - i);
}

void nn_avx2_gelu(float *x, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, gelu8(_mm256_loadu_ps(x + i)));
    if (i < n)
        store_tail(x + i, gelu8(load_tail(x + i, n - i, 0)), n - i);
}

void nn_avx2_add(float *y, const float *x, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_loadu_ps(x + i)));
    for (; i < n; i++)
        y[i] += x[i];
}

void nn_avx2_scale(float *x, float s, int64_t n)
{
    __m256 vs = _mm256_set1_ps(s);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vs));
    for (; i < n; i++)
        x[i] *= s;
}

/* ======================================================================== */
/* Activation quantization                                                   */
/* ======================================================================== */

/* Same operations as the scalar reference (x * (127/amax), round to nearest
 * even), so the bytes are identical; this is llama.cpp's quantize_row_q8_1. */
void nn_avx2_quantize_q8a(const float *x, nn_block_q8a *y, int64_t n)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < n / NN_QK; i++, x += NN_QK) {
        __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8);
        __m256 v2 = _mm256_loadu_ps(x + 16), v3 = _mm256_loadu_ps(x + 24);
        __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                 _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
        const float amax = hmax8(m);
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        const __m256 vid = _mm256_set1_ps(id);
        __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, vid), NN_ROUND_NEAREST));
        __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, vid), NN_ROUND_NEAREST));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, vid), NN_ROUND_NEAREST));
        __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, vid), NN_ROUND_NEAREST));
        int sum = hsum8_epi32(_mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3)));
        /* Packing works within 128-bit lanes; the permute restores order. */
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)y[i].qs, p);
        /* ggml keeps d and s as f16 (s from the unrounded d): rounding them
         * the same way makes every product equal llama.cpp's, not merely
         * as accurate, so greedy decoding picks the same tokens. */
        const float d = amax / 127.0f;
        y[i].d = nn_f16_to_f32(nn_f32_to_f16(d));
        y[i].s = nn_f16_to_f32(nn_f32_to_f16(d * (float)sum));
    }
}

/* ======================================================================== */
/* Quantized matmul, rows layout                                             */
/* ======================================================================== */

/* Integer dot of 32 unsigned weight bytes with 32 signed activation bytes,
 * per 32-bit lane (no saturation: 2 * 15 * 127 and 2 * 128 * 127 fit the
 * 16-bit intermediate). */
static inline __m256i dot_u8s8(__m256i w, __m256i a)
{
    return _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1));
}

/* 16 ymm registers: two weight rows per micro-kernel at most. */
#define NN_ROWS_DOT_U8S8(w, a) dot_u8s8(w, a)
#define NN_ROWS_RB_MAX 2
#include "nn_kern_rows.h"

/* ======================================================================== */
/* Quantized matmul, repacked layout (16 rows interleaved)                   */
/* ======================================================================== */

/* sum(qs) of count consecutive activation blocks (Q4_0's -8 and Q8_0's
 * +128 offsets, see nn_kern_impl.h). */
static void q8a_qsums(const nn_block_q8a *a, int64_t count, int32_t *out)
{
    for (int64_t i = 0; i < count; i++)
        out[i] = hsum8_epi32(dot_u8s8(_mm256_set1_epi8(1),
                                      _mm256_loadu_si256((const __m256i *)a[i].qs)));
}

/* sum(qs) of activation block idx: from the tile's table, or computed here
 * when K is too long for the table (qsum NULL). */
static inline int32_t qsum_at(const int32_t *qsum, const nn_block_q8a *a, size_t idx)
{
    int32_t v;
    if (qsum)
        return qsum[idx];
    q8a_qsums(a + idx, 1, &v);
    return v;
}

static inline __m256i bcast4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

/* One 8-row half of a 16-row group against CB activation rows, all blocks.
 * Lane l of every vector is row l of the half. qsum[j * nb + b] is
 * sum(qs) of activation row j's block b (Q4_0 only; NULL: summed here). */
static inline __attribute__((always_inline)) void
r16_half_tile(const nn_type T, const int CB, const uint8_t *grp, int half, int64_t nb,
              const nn_block_q8a *a, const int32_t *qsum, float out[][8])
{
    const size_t hdr = T == NN_Q4_1 ? 64 : 32, slice = hdr + (T == NN_Q8_0 ? 512 : 256);
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    __m256 acc[4];
#pragma GCC unroll 4
    for (int j = 0; j < CB; j++)
        acc[j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *sl = grp + (size_t)b * slice;
        const uint8_t *qs = sl + hdr + 32 * half;
        __m256i isum[4];
        if (T == NN_Q8_0) {
            /* vpmaddubsw has no room for (q + 128) * a in 16 bits: undo the
             * offset and move q's sign onto a instead (2 * 127 * 127 fits). */
#pragma GCC unroll 4
            for (int j = 0; j < CB; j++)
                isum[j] = _mm256_setzero_si256();
#pragma GCC unroll 8
            for (int g = 0; g < 8; g++) {
                __m256i wv = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(qs + 64 * g)),
                                              _mm256_set1_epi8((char)0x80));
                __m256i aw = _mm256_sign_epi8(wv, wv);
#pragma GCC unroll 4
                for (int j = 0; j < CB; j++) {
                    __m256i av = bcast4(a[(size_t)j * (size_t)nb + b].qs + 4 * g);
                    isum[j] = _mm256_add_epi32(isum[j], dot_u8s8(aw, _mm256_sign_epi8(av, wv)));
                }
            }
        } else {
            /* 16-bit partial sums: 8 products of at most 15 * 127 per lane
             * pair, so no saturation before the final vpmaddwd. */
            __m256i s16[4];
#pragma GCC unroll 4
            for (int j = 0; j < CB; j++)
                s16[j] = _mm256_setzero_si256();
#pragma GCC unroll 4
            for (int g = 0; g < 4; g++) {
                __m256i p = _mm256_loadu_si256((const __m256i *)(qs + 64 * g));
                __m256i lo = _mm256_and_si256(p, m4);
                __m256i hi = _mm256_and_si256(_mm256_srli_epi16(p, 4), m4);
#pragma GCC unroll 4
                for (int j = 0; j < CB; j++) {
                    const int8_t *aq = a[(size_t)j * (size_t)nb + b].qs;
                    s16[j] = _mm256_add_epi16(s16[j], _mm256_maddubs_epi16(lo, bcast4(aq + 4 * g)));
                    s16[j] = _mm256_add_epi16(s16[j], _mm256_maddubs_epi16(hi, bcast4(aq + 16 + 4 * g)));
                }
            }
#pragma GCC unroll 4
            for (int j = 0; j < CB; j++) {
                isum[j] = _mm256_madd_epi16(s16[j], _mm256_set1_epi16(1));
                if (T == NN_Q4_0) /* (nib - 8) * a = nib * a - 8 a */
                    isum[j] = _mm256_sub_epi32(
                        isum[j], _mm256_set1_epi32(8 * qsum_at(qsum, a, (size_t)j * (size_t)nb + b)));
            }
        }
        __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sl + 16 * half)));
        __m256 mw = T == NN_Q4_1 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sl + 32 + 16 * half)))
                                 : _mm256_setzero_ps();
#pragma GCC unroll 4
        for (int j = 0; j < CB; j++) {
            const nn_block_q8a *qa = a + (size_t)j * (size_t)nb + b;
            acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[j]),
                                     _mm256_mul_ps(dw, _mm256_set1_ps(qa->d)), acc[j]);
            if (T == NN_Q4_1)
                acc[j] = _mm256_fmadd_ps(mw, _mm256_set1_ps(qa->s), acc[j]);
        }
    }
#pragma GCC unroll 4
    for (int j = 0; j < CB; j++)
        _mm256_storeu_ps(out[j], acc[j]);
}

#define R16_CASES(T)                                                                             \
    switch (cb) {                                                                                \
    case 1: r16_half_tile(T, 1, grp, half, nb, a, qsum, out); break;                             \
    case 2: r16_half_tile(T, 2, grp, half, nb, a, qsum, out); break;                             \
    case 3: r16_half_tile(T, 3, grp, half, nb, a, qsum, out); break;                             \
    default: r16_half_tile(T, 4, grp, half, nb, a, qsum, out); break;                            \
    }

static void r16_tile(nn_type t, int cb, const uint8_t *grp, int half, int64_t nb,
                     const nn_block_q8a *a, const int32_t *qsum, float out[][8])
{
    if (t == NN_Q4_1)
        R16_CASES(NN_Q4_1)
    else if (t == NN_Q4_0)
        R16_CASES(NN_Q4_0)
    else
        R16_CASES(NN_Q8_0)
}

static void q_r16(const nn_mat *W, const nn_block_q8a *act, int n, float *y, int64_t ldy,
                  int64_t r0, int64_t r1)
{
    const int64_t nb = W->cols / NN_QK;
    const size_t gbytes = nn_r16_group_bytes(W->type, W->cols);
    int tile = rows_col_tile((size_t)nb * sizeof(nn_block_q8a));
    /* Q4_0 needs the activation sums: a tile's worth on the stack (for K
     * beyond NN_QSUM_MAX blocks the kernel sums them as it goes). */
    int32_t qsum_buf[NN_QSUM_MAX];
    int32_t *qsum = W->type == NN_Q4_0 && nb <= NN_QSUM_MAX ? qsum_buf : NULL;
    if (qsum && tile > NN_QSUM_MAX / nb)
        tile = (int)(NN_QSUM_MAX / nb);
    for (int j0 = 0; j0 < n; j0 += tile) {
        int jn = n - j0 < tile ? n - j0 : tile;
        const nn_block_q8a *at = act + (size_t)j0 * (size_t)nb;
        if (qsum)
            q8a_qsums(at, jn * nb, qsum);
        for (int64_t r = r0; r < r1; r += 8) {
            const uint8_t *grp = (const uint8_t *)W->data + (size_t)(r / NN_R16) * gbytes;
            int half = (int)(r % NN_R16) / 8;
            int rows = r1 - r < 8 ? (int)(r1 - r) : 8;
            for (int j = 0; j < jn; j += 4) {
                int cb = jn - j < 4 ? jn - j : 4;
                float out[4][8];
                r16_tile(W->type, cb, grp, half, nb, at + (size_t)j * (size_t)nb,
                         qsum ? qsum + j * nb : NULL, out);
                for (int c = 0; c < cb; c++)
                    memcpy(y + (int64_t)(j0 + j + c) * ldy + r, out[c], sizeof(float) * (size_t)rows);
            }
        }
    }
}

/* ======================================================================== */
/* Float matmul (F32 / F16 / BF16 weights, f32 activations)                  */
/* ======================================================================== */

static inline __m256 load_w8(nn_type T, const void *w, int64_t k)
{
    if (T == NN_F32)
        return _mm256_loadu_ps((const float *)w + k);
    if (T == NN_F16)
        return load_f16x8((const uint16_t *)w + k);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + k));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static inline float load_w1(nn_type T, const void *w, int64_t k)
{
    if (T == NN_F32)
        return ((const float *)w)[k];
    if (T == NN_F16)
        return f16(((const uint16_t *)w)[k]);
    return nn_bf16_to_f32(((const uint16_t *)w)[k]);
}

/* RB weight rows x CB activation rows: 8-wide partial sums along k, reduced
 * at the end; the k % 8 tail is added in scalar. 12 accumulators + 3
 * activation vectors + 1 weight vector fill the 16 registers. */
static inline __attribute__((always_inline)) void
f_tile(const nn_type T, const int RB, const int CB, const uint8_t *w, size_t ws, const float *x,
       int64_t k, float *y, int64_t ldy)
{
    __m256 acc[4][3];
    #pragma GCC unroll 4
    for (int i = 0; i < RB; i++)
        #pragma GCC unroll 4
        for (int j = 0; j < CB; j++)
            acc[i][j] = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c + 8 <= k; c += 8) {
        __m256 xv[3];
        #pragma GCC unroll 4
        for (int j = 0; j < CB; j++)
            xv[j] = _mm256_loadu_ps(x + (int64_t)j * k + c);
        #pragma GCC unroll 4
        for (int i = 0; i < RB; i++) {
            __m256 wv = load_w8(T, w + (size_t)i * ws, c);
            #pragma GCC unroll 4
            for (int j = 0; j < CB; j++)
                acc[i][j] = _mm256_fmadd_ps(wv, xv[j], acc[i][j]);
        }
    }
    #pragma GCC unroll 4
    for (int i = 0; i < RB; i++)
        #pragma GCC unroll 4
        for (int j = 0; j < CB; j++) {
            float s = hsum8(acc[i][j]);
            for (int64_t t = c; t < k; t++)
                s += load_w1(T, w + (size_t)i * ws, t) * x[(int64_t)j * k + t];
            y[(int64_t)j * ldy + i] = s;
        }
}

#define F_CASES(T, RB)                                                                           \
    switch (cb) {                                                                                \
    case 1: f_tile(T, RB, 1, w, ws, x, k, y, ldy); break;                                        \
    case 2: f_tile(T, RB, 2, w, ws, x, k, y, ldy); break;                                        \
    default: f_tile(T, RB, 3, w, ws, x, k, y, ldy); break;                                       \
    }

static void f_tile_any(nn_type t, int rb, int cb, const uint8_t *w, size_t ws, const float *x,
                       int64_t k, float *y, int64_t ldy)
{
    if (t == NN_F32) {
        if (rb == 4)
            F_CASES(NN_F32, 4)
        else
            F_CASES(NN_F32, 1)
    } else if (t == NN_F16) {
        if (rb == 4)
            F_CASES(NN_F16, 4)
        else
            F_CASES(NN_F16, 1)
    } else {
        if (rb == 4)
            F_CASES(NN_BF16, 4)
        else
            F_CASES(NN_BF16, 1)
    }
}

static void f_rows(const nn_mat *W, const float *act, int n, float *y, int64_t ldy, int64_t r0,
                   int64_t r1)
{
    const int64_t k = W->cols;
    const int tile = rows_col_tile((size_t)k * sizeof(float));
    for (int j0 = 0; j0 < n; j0 += tile) {
        int jn = n - j0 < tile ? n - j0 : tile;
        for (int64_t r = r0; r < r1;) {
            int rb = r1 - r >= 4 ? 4 : 1;
            const uint8_t *w = (const uint8_t *)W->data + (size_t)r * W->row_bytes;
            for (int j = 0; j < jn; j += 3) {
                int cb = jn - j < 3 ? jn - j : 3;
                f_tile_any(W->type, rb, cb, w, W->row_bytes, act + (int64_t)(j0 + j) * k, k,
                           y + (int64_t)(j0 + j) * ldy + r, ldy);
            }
            r += rb;
        }
    }
}

void nn_avx2_matmul(const nn_mat *W, const void *act, int n, float *y, int64_t ldy, int64_t r0,
                    int64_t r1)
{
    switch (W->type) {
    case NN_F32: case NN_F16: case NN_BF16:
        f_rows(W, act, n, y, ldy, r0, r1);
        return;
    default:
        break;
    }
    if (W->layout == NN_LAYOUT_R16) {
        q_r16(W, act, n, y, ldy, r0, r1);
        return;
    }
    nn_rows_matmul(W, act, n, y, ldy, r0, r1);
}

const nn_kern_ops nn_kern_ops_avx2 = {
    .tier = NN_TIER_AVX2,
    .quantize_q8a = nn_avx2_quantize_q8a,
    .matmul = nn_avx2_matmul,
    .dot_f32 = nn_avx2_dot_f32,
    .dot_f16_f32 = nn_avx2_dot_f16_f32,
    .axpy_f16 = nn_avx2_axpy_f16,
    .axpy_f32 = nn_avx2_axpy_f32,
    .f32_to_f16_row = nn_avx2_f32_to_f16_row,
    .f16_to_f32_row = nn_avx2_f16_to_f32_row,
    .rmsnorm = nn_avx2_rmsnorm,
    .layernorm = nn_avx2_layernorm,
    .softmax = nn_avx2_softmax,
    .silu_mul = nn_avx2_silu_mul,
    .gelu = nn_avx2_gelu,
    .add = nn_avx2_add,
    .scale = nn_avx2_scale,
};
