/*
 * nn_kern_avx512: the AVX-512 tier (F, BW, VL, DQ, VNNI; compiled with those
 * flags only, entered through nn_kern_ops_avx512 after the CPU check).
 *
 * What it adds over AVX2: the repacked (R16) quantized product with
 * vpdpbusd, 16 weight rows per 512-bit register, one lane per row; the
 * rows-layout quantized product with 256-bit vpdpbusd and 4-row
 * micro-kernels (32 registers); and the float (F32/F16/BF16) product with
 * 512-bit FMAs and twice the registers for accumulators. The element-wise
 * functions stay AVX2: at the sizes the models use they are memory-bound
 * and a small part of a forward pass.
 *
 * Why 512-bit registers for the R16 product: a 64-byte chunk of the layout
 * holds the same four quants of 16 rows, so one vpdpbusd does 64
 * multiply-adds for 16 independent rows, and each broadcast activation word
 * and each float scale step serve 16 rows. On CPUs that split 512-bit
 * operations in two (AMD Zen 4) this halves the instruction count at equal
 * arithmetic; on Intel server cores it also doubles the arithmetic.
 */
#include "nn_kern_avx2.h"

#include <immintrin.h>

/* ======================================================================== */
/* Quantized matmul, rows layout                                             */
/* ======================================================================== */

/* vpdpbusd on 256-bit registers (VL): one instruction for vpmaddubsw +
 * vpmaddwd, and 32 registers allow four weight rows per micro-kernel. */
#define NN_ROWS_DOT_U8S8(w, a) _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, a)
#define NN_ROWS_RB_MAX 4
#include "nn_kern_rows.h"

/* ======================================================================== */
/* Quantized matmul, repacked layout                                         */
/* ======================================================================== */

static inline __m512i bcast4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

/* sum(qs) of count consecutive activation blocks (the Q4_0 and Q8_0
 * offsets, see nn_kern_impl.h). */
static void q8a_qsums(const nn_block_q8a *a, int64_t count, int32_t *out)
{
    for (int64_t i = 0; i < count; i++) {
        __m256i v = _mm256_loadu_si256((const __m256i *)a[i].qs);
        __m256i s = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(1), v);
        __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        t = _mm_add_epi32(t, _mm_unpackhi_epi64(t, t));
        t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 1));
        out[i] = _mm_cvtsi128_si32(t);
    }
}

static inline int32_t qsum_at(const int32_t *qsum, const nn_block_q8a *a, size_t idx)
{
    int32_t v;
    if (qsum)
        return qsum[idx];
    q8a_qsums(a + idx, 1, &v);
    return v;
}

/* A 16-row group against CB activation rows over all nb blocks (slices of
 * the layout in nn_kern_impl.h); lane l of every vector is row l of the
 * group. Unaligned loads: only Q4_1's slices (320 bytes) keep 64-byte
 * alignment. Weight quants are loaded (Q8_0,
 * stored +128) or unpacked (Q4_x) once per block into 8 registers (chunk g
 * holds elements 4g..4g+3 of each row) and dotted with each activation
 * row's 4-byte words broadcast to all lanes. qsum[j * nb + b] is sum(qs) of
 * activation row j's block b (Q4_0, Q8_0; NULL: summed here). */
static inline __attribute__((always_inline)) void
r16_tile(const nn_type T, const int CB, const uint8_t *grp, int64_t nb, const nn_block_q8a *a,
         const int32_t *qsum, float out[][16])
{
    const size_t hdr = T == NN_Q4_1 ? 64 : 32, slice = hdr + (T == NN_Q8_0 ? 512 : 256);
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m512 acc[8];
#pragma GCC unroll 8
    for (int j = 0; j < CB; j++)
        acc[j] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *sl = grp + (size_t)b * slice, *qs = sl + hdr;
        __m512i w[8];
        if (T == NN_Q8_0) {
#pragma GCC unroll 8
            for (int g = 0; g < 8; g++)
                w[g] = _mm512_loadu_si512((const void *)(qs + 64 * g));
        } else {
#pragma GCC unroll 4
            for (int g = 0; g < 4; g++) {
                __m512i p = _mm512_loadu_si512((const void *)(qs + 64 * g));
                w[g] = _mm512_and_si512(p, m4);
                w[g + 4] = _mm512_and_si512(_mm512_srli_epi16(p, 4), m4);
            }
        }
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)sl));
        const __m512 mw = T == NN_Q4_1 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(sl + 32)))
                                       : _mm512_setzero_ps();
#pragma GCC unroll 8
        for (int j = 0; j < CB; j++) {
            const nn_block_q8a *qa = a + (size_t)j * (size_t)nb + b;
            /* two chains so consecutive vpdpbusd do not wait on each other */
            __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
#pragma GCC unroll 8
            for (int g = 0; g < 8; g += 2) {
                s0 = _mm512_dpbusd_epi32(s0, w[g], bcast4(qa->qs + 4 * g));
                s1 = _mm512_dpbusd_epi32(s1, w[g + 1], bcast4(qa->qs + 4 * g + 4));
            }
            __m512i isum = _mm512_add_epi32(s0, s1);
            /* Q4_0: (nib - 8) a = nib a - 8 a; Q8_0: q a = (q + 128) a - 128 a */
            if (T != NN_Q4_1)
                isum = _mm512_sub_epi32(
                    isum, _mm512_set1_epi32((T == NN_Q8_0 ? 128 : 8) *
                                            qsum_at(qsum, a, (size_t)j * (size_t)nb + b)));
            acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(dw, _mm512_set1_ps(qa->d)),
                                     acc[j]);
            if (T == NN_Q4_1)
                acc[j] = _mm512_fmadd_ps(mw, _mm512_set1_ps(qa->s), acc[j]);
        }
    }
#pragma GCC unroll 8
    for (int j = 0; j < CB; j++)
        _mm512_storeu_ps(out[j], acc[j]);
}

/* Activation rows per tile: 4 keeps 8 weight registers, 4 accumulators
 * and the temporaries well inside 32 registers with two dot chains each. */
#define R16_CB 4

#define R16_CASES(T)                                                                             \
    switch (cb) {                                                                                \
    case 1: r16_tile(T, 1, grp, nb, a, qsum, out); break;                                        \
    case 2: r16_tile(T, 2, grp, nb, a, qsum, out); break;                                        \
    case 3: r16_tile(T, 3, grp, nb, a, qsum, out); break;                                        \
    default: r16_tile(T, 4, grp, nb, a, qsum, out); break;                                       \
    }

static void r16_tile_any(nn_type t, int cb, const uint8_t *grp, int64_t nb, const nn_block_q8a *a,
                         const int32_t *qsum, float out[][16])
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
    /* The activation sums of a tile, on the stack (for K beyond
     * NN_QSUM_MAX blocks the kernel sums them as it goes). */
    int32_t qsum_buf[NN_QSUM_MAX];
    int32_t *qsum = W->type != NN_Q4_1 && nb <= NN_QSUM_MAX ? qsum_buf : NULL;
    if (qsum && tile > NN_QSUM_MAX / nb)
        tile = (int)(NN_QSUM_MAX / nb);
    for (int j0 = 0; j0 < n; j0 += tile) {
        int jn = n - j0 < tile ? n - j0 : tile;
        const nn_block_q8a *at = act + (size_t)j0 * (size_t)nb;
        if (qsum)
            q8a_qsums(at, jn * nb, qsum);
        for (int64_t r = r0; r < r1; r += NN_R16) {
            const uint8_t *grp = (const uint8_t *)W->data + (size_t)(r / NN_R16) * gbytes;
            int rows = r1 - r < NN_R16 ? (int)(r1 - r) : NN_R16;
            for (int j = 0; j < jn; j += R16_CB) {
                int cb = jn - j < R16_CB ? jn - j : R16_CB;
                float out[R16_CB][16];
                r16_tile_any(W->type, cb, grp, nb, at + (size_t)j * (size_t)nb,
                             qsum ? qsum + j * nb : NULL, out);
                for (int c = 0; c < cb; c++)
                    memcpy(y + (int64_t)(j0 + j + c) * ldy + r, out[c], sizeof(float) * (size_t)rows);
            }
        }
    }
}

/* ======================================================================== */
/* Float matmul (F32 / F16 / BF16 weights)                                   */
/* ======================================================================== */

static inline __m512 load_w16(nn_type T, const void *w, int64_t k)
{
    if (T == NN_F32)
        return _mm512_loadu_ps((const float *)w + k);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)w + k));
    if (T == NN_F16)
        return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static inline float load_w1(nn_type T, const void *w, int64_t k)
{
    if (T == NN_F32)
        return ((const float *)w)[k];
    if (T == NN_F16)
        return _cvtsh_ss(((const uint16_t *)w)[k]);
    return nn_bf16_to_f32(((const uint16_t *)w)[k]);
}

/* RB weight rows x CB activation rows, 16-wide partial sums along k: 24
 * accumulators, 6 activation vectors and a weight vector in 32 registers.
 * The k % 16 tail is added in scalar. */
static inline __attribute__((always_inline)) void
f_tile(const nn_type T, const int RB, const int CB, const uint8_t *w, size_t ws, const float *x,
       int64_t k, float *y, int64_t ldy)
{
    __m512 acc[4][6];
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++)
#pragma GCC unroll 6
        for (int j = 0; j < CB; j++)
            acc[i][j] = _mm512_setzero_ps();
    int64_t c = 0;
    for (; c + 16 <= k; c += 16) {
        __m512 xv[6];
#pragma GCC unroll 6
        for (int j = 0; j < CB; j++)
            xv[j] = _mm512_loadu_ps(x + (int64_t)j * k + c);
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) {
            __m512 wv = load_w16(T, w + (size_t)i * ws, c);
#pragma GCC unroll 6
            for (int j = 0; j < CB; j++)
                acc[i][j] = _mm512_fmadd_ps(wv, xv[j], acc[i][j]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++)
#pragma GCC unroll 6
        for (int j = 0; j < CB; j++) {
            float s = _mm512_reduce_add_ps(acc[i][j]);
            for (int64_t t = c; t < k; t++)
                s += load_w1(T, w + (size_t)i * ws, t) * x[(int64_t)j * k + t];
            y[(int64_t)j * ldy + i] = s;
        }
}

#define F_CB 6

#define F_CASES(T, RB)                                                                           \
    switch (cb) {                                                                                \
    case 1: f_tile(T, RB, 1, w, ws, x, k, y, ldy); break;                                        \
    case 2: f_tile(T, RB, 2, w, ws, x, k, y, ldy); break;                                        \
    case 3: f_tile(T, RB, 3, w, ws, x, k, y, ldy); break;                                        \
    case 4: f_tile(T, RB, 4, w, ws, x, k, y, ldy); break;                                        \
    case 5: f_tile(T, RB, 5, w, ws, x, k, y, ldy); break;                                        \
    default: f_tile(T, RB, 6, w, ws, x, k, y, ldy); break;                                       \
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
            for (int j = 0; j < jn; j += F_CB) {
                int cb = jn - j < F_CB ? jn - j : F_CB;
                f_tile_any(W->type, rb, cb, w, W->row_bytes, act + (int64_t)(j0 + j) * k, k,
                           y + (int64_t)(j0 + j) * ldy + r, ldy);
            }
            r += rb;
        }
    }
}

static void matmul_avx512(const nn_mat *W, const void *act, int n, float *y, int64_t ldy,
                          int64_t r0, int64_t r1)
{
    switch (W->type) {
    case NN_F32: case NN_F16: case NN_BF16:
        f_rows(W, act, n, y, ldy, r0, r1);
        return;
    default:
        break;
    }
    if (W->layout == NN_LAYOUT_R16)
        q_r16(W, act, n, y, ldy, r0, r1);
    else
        nn_rows_matmul(W, act, n, y, ldy, r0, r1);
}

const nn_kern_ops nn_kern_ops_avx512 = {
    .tier = NN_TIER_AVX512,
    .quantize_q8a = nn_avx2_quantize_q8a,
    .matmul = matmul_avx512,
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
