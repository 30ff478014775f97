/*
 * vx_dist_simd: the AVX2+FMA and AVX-512 tiers of vx_dist. See
 * vx_dist_simd.h for the contracts; vx_dist.c picks among them.
 *
 * Why target attributes rather than per-file flags: the functions here are
 * few and leaf-level, and keeping the file in agent/ (one glob, one set of
 * flags) means no build rule of its own; the helpers are static inline
 * with the same attribute so they inline into their callers.
 *
 * Float kernels: four vector accumulators (independent FMA chains hide the
 * FMA latency), then a masked load for the tail, so a row of any length
 * costs no scalar loop and reads no byte past its end. The sums associate
 * differently from the scalar tier; vx_dist.h's tests bound the difference.
 *
 * int8 kernels: integer arithmetic, so every tier returns the same value
 * (for codes in [-127, 127]; see vx_dist_simd.h):
 *   AVX2         vpmaddubsw needs one unsigned operand: |a| (vpsignb a,a)
 *                times b with a's sign moved onto it (vpsignb b,a); pairs
 *                of products fit int16 (2 * 127 * 128 < 32767), vpmaddwd
 *                widens them to int32.
 *   AVX-512 BW   the same on 512-bit registers (vpabsb, a masked negate).
 *   AVX-512 VNNI vpdpbusd: (a + 128) as unsigned times b, then subtract
 *                128 * sum(b) (summed by a second vpdpbusd against ones);
 *                exact for every int8, no int16 step to saturate.
 * The int32 lane sums wrap like the hardware adds, so the result is exact
 * whenever the true dot product fits int32 (dim up to 131072).
 */
#include "vector/vx_dist_simd.h"

#ifdef VX_DIST_HAVE_X86

#include <immintrin.h>
#include <string.h>

#define VX_AVX2 __attribute__((target("avx2,fma")))
#define VX_AVX512 __attribute__((target("avx512f")))
#define VX_AVX512BW __attribute__((target("avx512f,avx512bw")))
#define VX_AVX512VNNI __attribute__((target("avx512f,avx512bw,avx512vnni")))

/* ======================================================================== */
/* AVX2 + FMA                                                                */
/* ======================================================================== */

/* 8 all-ones words then 8 zeros: loading 8 words at (8 - n) gives a mask of
 * n leading lanes for vmaskmovps (masked-off lanes are not read, so the
 * tail never touches memory past the row). */
static const int32_t g_tail_mask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

VX_AVX2 static inline __m256i tail_mask8(size_t n)
{
    return _mm256_loadu_si256((const __m256i *)(const void *)(g_tail_mask + 8 - n));
}

VX_AVX2 static inline float hsum_ps256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

VX_AVX2 static inline int32_t hsum_epi32_256(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

VX_AVX2 float vx_simd_dot_f32_avx2(const float *a, const float *b, size_t dim)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= dim; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= dim; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    if (i < dim) {
        __m256i m = tail_mask8(dim - i);
        s1 = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m), s1);
    }
    return hsum_ps256(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

VX_AVX2 float vx_simd_l2sq_f32_avx2(const float *a, const float *b, size_t dim)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= dim; i += 32) {
        __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
        __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));
        __m256 d2 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16));
        __m256 d3 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24));
        s0 = _mm256_fmadd_ps(d0, d0, s0);
        s1 = _mm256_fmadd_ps(d1, d1, s1);
        s2 = _mm256_fmadd_ps(d2, d2, s2);
        s3 = _mm256_fmadd_ps(d3, d3, s3);
    }
    for (; i + 8 <= dim; i += 8) {
        __m256 d = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
        s0 = _mm256_fmadd_ps(d, d, s0);
    }
    if (i < dim) {
        __m256i m = tail_mask8(dim - i);
        __m256 d = _mm256_sub_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m));
        s1 = _mm256_fmadd_ps(d, d, s1);
    }
    return hsum_ps256(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

/* 32 products of a and b summed into the 8 int32 lanes of acc. */
VX_AVX2 static inline __m256i dot32_i8_avx2(__m256i acc, __m256i va, __m256i vb)
{
    __m256i ua = _mm256_sign_epi8(va, va);
    __m256i sb = _mm256_sign_epi8(vb, va);
    __m256i p16 = _mm256_maddubs_epi16(ua, sb);
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}

VX_AVX2 int32_t vx_simd_dot_i8_avx2(const int8_t *a, const int8_t *b, size_t dim)
{
    __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
    size_t i = 0;
    for (; i + 64 <= dim; i += 64) {
        s0 = dot32_i8_avx2(s0, _mm256_loadu_si256((const __m256i *)(const void *)(a + i)),
                           _mm256_loadu_si256((const __m256i *)(const void *)(b + i)));
        s1 = dot32_i8_avx2(s1, _mm256_loadu_si256((const __m256i *)(const void *)(a + i + 32)),
                           _mm256_loadu_si256((const __m256i *)(const void *)(b + i + 32)));
    }
    for (; i + 32 <= dim; i += 32)
        s0 = dot32_i8_avx2(s0, _mm256_loadu_si256((const __m256i *)(const void *)(a + i)),
                           _mm256_loadu_si256((const __m256i *)(const void *)(b + i)));
    if (i < dim) {
        /* No byte-masked load in AVX2: copy the tail into zeroed blocks
         * (zeros add nothing to the product). */
        int8_t ta[32] = {0}, tb[32] = {0};
        memcpy(ta, a + i, dim - i);
        memcpy(tb, b + i, dim - i);
        s1 = dot32_i8_avx2(s1, _mm256_loadu_si256((const __m256i *)(const void *)ta),
                           _mm256_loadu_si256((const __m256i *)(const void *)tb));
    }
    return hsum_epi32_256(_mm256_add_epi32(s0, s1));
}

/* ======================================================================== */
/* AVX-512                                                                   */
/* ======================================================================== */

static inline __mmask16 tail_mask16(size_t n) { return (__mmask16)((1u << n) - 1u); }

VX_AVX512 float vx_simd_dot_f32_avx512(const float *a, const float *b, size_t dim)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    __m512 s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 64 <= dim; i += 64) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
        s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), s2);
        s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), s3);
    }
    for (; i + 16 <= dim; i += 16)
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    if (i < dim) {
        __mmask16 m = tail_mask16(dim - i);
        s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

VX_AVX512 float vx_simd_l2sq_f32_avx512(const float *a, const float *b, size_t dim)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    __m512 s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 64 <= dim; i += 64) {
        __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
        __m512 d1 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16));
        __m512 d2 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32));
        __m512 d3 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48));
        s0 = _mm512_fmadd_ps(d0, d0, s0);
        s1 = _mm512_fmadd_ps(d1, d1, s1);
        s2 = _mm512_fmadd_ps(d2, d2, s2);
        s3 = _mm512_fmadd_ps(d3, d3, s3);
    }
    for (; i + 16 <= dim; i += 16) {
        __m512 d = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
        s0 = _mm512_fmadd_ps(d, d, s0);
    }
    if (i < dim) {
        __mmask16 m = tail_mask16(dim - i);
        __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i));
        s1 = _mm512_fmadd_ps(d, d, s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

static inline __mmask64 tail_mask64(size_t n)
{
    return n >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << n) - 1);
}

/* 64 products summed into the 16 int32 lanes of acc (sign trick). */
VX_AVX512BW static inline __m512i dot64_i8_bw(__m512i acc, __m512i va, __m512i vb)
{
    __m512i ua = _mm512_abs_epi8(va);
    __m512i sb = _mm512_mask_sub_epi8(vb, _mm512_movepi8_mask(va), _mm512_setzero_si512(), vb);
    __m512i p16 = _mm512_maddubs_epi16(ua, sb);
    return _mm512_add_epi32(acc, _mm512_madd_epi16(p16, _mm512_set1_epi16(1)));
}

VX_AVX512BW int32_t vx_simd_dot_i8_avx512bw(const int8_t *a, const int8_t *b, size_t dim)
{
    __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
    size_t i = 0;
    for (; i + 128 <= dim; i += 128) {
        s0 = dot64_i8_bw(s0, _mm512_loadu_si512(a + i), _mm512_loadu_si512(b + i));
        s1 = dot64_i8_bw(s1, _mm512_loadu_si512(a + i + 64), _mm512_loadu_si512(b + i + 64));
    }
    for (; i + 64 <= dim; i += 64)
        s0 = dot64_i8_bw(s0, _mm512_loadu_si512(a + i), _mm512_loadu_si512(b + i));
    if (i < dim) {
        __mmask64 m = tail_mask64(dim - i);
        s1 = dot64_i8_bw(s1, _mm512_maskz_loadu_epi8(m, a + i), _mm512_maskz_loadu_epi8(m, b + i));
    }
    return _mm512_reduce_add_epi32(_mm512_add_epi32(s0, s1));
}

VX_AVX512VNNI int32_t vx_simd_dot_i8_avx512vnni(const int8_t *a, const int8_t *b, size_t dim)
{
    const __m512i off = _mm512_set1_epi8((char)0x80);
    const __m512i ones = _mm512_set1_epi8(1);
    __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
    __m512i sb = _mm512_setzero_si512();
    size_t i = 0;
    for (; i + 128 <= dim; i += 128) {
        __m512i b0 = _mm512_loadu_si512(b + i), b1 = _mm512_loadu_si512(b + i + 64);
        s0 = _mm512_dpbusd_epi32(s0, _mm512_xor_si512(_mm512_loadu_si512(a + i), off), b0);
        s1 = _mm512_dpbusd_epi32(s1, _mm512_xor_si512(_mm512_loadu_si512(a + i + 64), off), b1);
        sb = _mm512_dpbusd_epi32(sb, ones, b0);
        sb = _mm512_dpbusd_epi32(sb, ones, b1);
    }
    for (; i < dim; i += 64) {
        /* Masked-off bytes load as 0: b = 0 there, so a + 128 adds nothing. */
        __mmask64 m = tail_mask64(dim - i);
        __m512i vb = _mm512_maskz_loadu_epi8(m, b + i);
        s0 = _mm512_dpbusd_epi32(s0, _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, a + i), off), vb);
        sb = _mm512_dpbusd_epi32(sb, ones, vb);
    }
    /* Lane-wise (a + 128) . b - 128 * sum(b), then one horizontal sum: the
     * lanes wrap like unsigned arithmetic, so the total is the exact
     * product modulo 2^32 even where a lane's offset products overflow. */
    __m512i t = _mm512_sub_epi32(_mm512_add_epi32(s0, s1), _mm512_slli_epi32(sb, 7));
    return (int32_t)(uint32_t)_mm512_reduce_add_epi32(t);
}

#else
/* ISO C forbids an empty translation unit. */
typedef int vx_dist_simd_unused;
#endif
