/*
 * nn_kern_rows: the quantized product on matrices in their file layout
 * (NN_LAYOUT_ROWS), as a template that nn_kern_avx2.c and nn_kern_avx512.c
 * each compile with their own target flags. Internal to outpost_nn.
 *
 * Before including, define:
 *   NN_ROWS_DOT_U8S8(w, a)  __m256i of 8 int32: per lane, the dot product of
 *                           4 unsigned bytes of w with 4 signed bytes of a
 *                           (vpmaddubsw + vpmaddwd, or vpdpbusd)
 *   NN_ROWS_RB_MAX          weight rows per micro-kernel with 16 or more
 *                           activation rows: 2 (16 ymm registers) or 4 (32)
 * Defines nn_rows_matmul() (static), the nn_kern_ops.matmul contract for
 * quantized rows-layout W.
 *
 * Blocking: each weight row block is unpacked once and used against up to 4
 * activation rows, with llama.cpp's integer recipe (one float scale per
 * 32-element block). One weight row at a time, unless there are 16 or more
 * activation rows (then arithmetic dominates and more rows halve the
 * activation loads): a single row stream is what DRAM delivers fastest (see
 * the R16 notes in nn_kern_impl.h). Repacking (nn_mat_repack) is faster
 * still; this is the path for matrices that were not repacked.
 */
#ifndef NN_KERN_ROWS_H
#define NN_KERN_ROWS_H

#if !defined(NN_ROWS_DOT_U8S8) || !defined(NN_ROWS_RB_MAX)
#error "define NN_ROWS_DOT_U8S8 and NN_ROWS_RB_MAX before including nn_kern_rows.h"
#endif

#include "nn_kern_impl.h"

#include <immintrin.h>
#include <math.h>

static inline float rows_hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Activation rows per pass over a thread's weight rows: the tile's
 * activations (256 KiB) stay in L2 while every weight row is used against
 * all of them. */
static inline int rows_col_tile(size_t act_row_bytes)
{
    size_t t = (256u * 1024) / (act_row_bytes ? act_row_bytes : 1);
    return t < 4 ? 4 : t > 256 ? 256 : (int)t;
}

/* The 32 nibbles of a Q4 block as bytes, in element order. */
static inline __m256i rows_q4_unpack(const uint8_t *qs)
{
    __m128i v = _mm_loadu_si128((const __m128i *)qs);
    __m256i both = _mm256_set_m128i(_mm_srli_epi16(v, 4), v);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
}

/* Signed x signed: move w's sign onto a, since the instructions want one
 * unsigned operand (|w| <= 128, and 2 * 128 * 127 fits vpmaddubsw's 16 bits). */
static inline __m256i rows_dot_s8s8(__m256i w, __m256i a)
{
    return NN_ROWS_DOT_U8S8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
}

/* RB weight rows x CB activation rows over all nb blocks; forced inline with
 * constant T/RB/CB so that each instance keeps its accumulators in
 * registers. */
static inline __attribute__((always_inline)) void
rows_tile(const nn_type T, const int RB, const int CB, const uint8_t *w, size_t wstride,
          const nn_block_q8a *a, int64_t nb, float *y, int64_t ldy)
{
    __m256 acc[4][4];
    float macc[4][4];
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++)
#pragma GCC unroll 4
        for (int j = 0; j < CB; j++) {
            acc[i][j] = _mm256_setzero_ps();
            macc[i][j] = 0.0f;
        }
    const size_t bsz = T == NN_Q4_0   ? sizeof(nn_block_q4_0)
                       : T == NN_Q4_1 ? sizeof(nn_block_q4_1)
                                      : sizeof(nn_block_q8_0);
    for (int64_t b = 0; b < nb; b++) {
        __m256i wv[4];
        __m256 dw[4];
        float mw[4];
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) {
            const uint8_t *blk = w + (size_t)i * wstride + (size_t)b * bsz;
            uint16_t d;
            if (T == NN_Q4_0) {
                const nn_block_q4_0 *q = (const nn_block_q4_0 *)blk;
                wv[i] = _mm256_sub_epi8(rows_q4_unpack(q->qs), _mm256_set1_epi8(8));
                d = q->d;
            } else if (T == NN_Q4_1) {
                const nn_block_q4_1 *q = (const nn_block_q4_1 *)blk;
                wv[i] = rows_q4_unpack(q->qs);
                d = q->d;
                mw[i] = _cvtsh_ss(q->m);
            } else {
                const nn_block_q8_0 *q = (const nn_block_q8_0 *)blk;
                wv[i] = _mm256_loadu_si256((const __m256i *)q->qs);
                d = q->d;
            }
            dw[i] = _mm256_set1_ps(_cvtsh_ss(d));
        }
#pragma GCC unroll 4
        for (int j = 0; j < CB; j++) {
            const nn_block_q8a *qa = a + (size_t)j * (size_t)nb + b;
            __m256i av = _mm256_loadu_si256((const __m256i *)qa->qs);
            __m256 da = _mm256_set1_ps(qa->d);
#pragma GCC unroll 4
            for (int i = 0; i < RB; i++) {
                __m256i p = T == NN_Q4_1 ? NN_ROWS_DOT_U8S8(wv[i], av) : rows_dot_s8s8(wv[i], av);
                acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(dw[i], da),
                                            acc[i][j]);
                if (T == NN_Q4_1)
                    macc[i][j] = fmaf(mw[i], qa->s, macc[i][j]);
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++)
#pragma GCC unroll 4
        for (int j = 0; j < CB; j++)
            y[(int64_t)j * ldy + i] = rows_hsum8(acc[i][j]) + macc[i][j];
}

#define NN_ROWS_CB_CASES(T, RB)                                                                  \
    switch (cb) {                                                                                \
    case 1: rows_tile(T, RB, 1, w, ws, a, nb, y, ldy); break;                                    \
    case 2: rows_tile(T, RB, 2, w, ws, a, nb, y, ldy); break;                                    \
    case 3: rows_tile(T, RB, 3, w, ws, a, nb, y, ldy); break;                                    \
    default: rows_tile(T, RB, 4, w, ws, a, nb, y, ldy); break;                                   \
    }

#if NN_ROWS_RB_MAX >= 4
#define NN_ROWS_RB_CASES(T)                                                                      \
    if (rb == 4)                                                                                 \
        NN_ROWS_CB_CASES(T, 4)                                                                   \
    else if (rb == 2)                                                                            \
        NN_ROWS_CB_CASES(T, 2)                                                                   \
    else                                                                                         \
        NN_ROWS_CB_CASES(T, 1)
#else
#define NN_ROWS_RB_CASES(T)                                                                      \
    if (rb == 2)                                                                                 \
        NN_ROWS_CB_CASES(T, 2)                                                                   \
    else                                                                                         \
        NN_ROWS_CB_CASES(T, 1)
#endif

static void rows_tile_any(nn_type t, int rb, int cb, const uint8_t *w, size_t ws,
                          const nn_block_q8a *a, int64_t nb, float *y, int64_t ldy)
{
    if (t == NN_Q4_1) {
        NN_ROWS_RB_CASES(NN_Q4_1)
    } else if (t == NN_Q4_0) {
        NN_ROWS_RB_CASES(NN_Q4_0)
    } else {
        NN_ROWS_RB_CASES(NN_Q8_0)
    }
}

static void nn_rows_matmul(const nn_mat *W, const nn_block_q8a *act, int n, float *y,
                           int64_t ldy, int64_t r0, int64_t r1)
{
    const int64_t nb = W->cols / NN_QK;
    const int tile = rows_col_tile((size_t)nb * sizeof(nn_block_q8a));
    const int rbmax = n >= 16 ? NN_ROWS_RB_MAX : 1;
    for (int j0 = 0; j0 < n; j0 += tile) {
        int jn = n - j0 < tile ? n - j0 : tile;
        for (int64_t r = r0; r < r1;) {
            /* nn_matmul's shares start on multiples of 4, so the row blocks
             * (and each row's arithmetic) do not depend on the thread count */
            int rb = r1 - r >= rbmax ? rbmax : 1;
            const uint8_t *w = (const uint8_t *)W->data + (size_t)r * W->row_bytes;
            for (int j = 0; j < jn; j += 4) {
                int cb = jn - j < 4 ? jn - j : 4;
                rows_tile_any(W->type, rb, cb, w, W->row_bytes,
                              act + (size_t)(j0 + j) * (size_t)nb, nb,
                              y + (int64_t)(j0 + j) * ldy + r, ldy);
            }
            r += rb;
        }
    }
}

#endif
