/*
 * nn_kern_impl: what the kernel tiers share inside outpost_nn (not for the
 * plugins): the operation table each tier fills in, the repacked weight
 * layout, and small scalar helpers.
 *
 * Tiers: nn_kern.c holds the scalar reference and picks a table once;
 * nn_kern_avx2.c and nn_kern_avx512.c are compiled with their target flags
 * and must only be entered through their tables after the CPU check. A tier
 * may reuse a lower tier's function for an entry it does not improve.
 *
 * Row ranges: the matmul entry computes weight rows [r0, r1) for all n
 * activation rows; nn_matmul does the thread split before calling it, so r0
 * is a multiple of 16 for NN_LAYOUT_R16 matrices (r1 may cut a group short
 * at the end of the matrix).
 */
#ifndef NN_KERN_IMPL_H
#define NN_KERN_IMPL_H

#include "nn_kern.h"

#include <string.h>

typedef struct nn_kern_ops {
    nn_tier tier;
    void (*quantize_q8a)(const float *x, nn_block_q8a *y, int64_t n);
    void (*matmul)(const nn_mat *W, const void *act, int n, float *y, int64_t ldy, int64_t r0,
                   int64_t r1);
    float (*dot_f32)(const float *a, const float *b, int64_t n);
    float (*dot_f16_f32)(const uint16_t *a, const float *b, int64_t n);
    void (*axpy_f16)(float *y, float alpha, const uint16_t *x, int64_t n);
    void (*axpy_f32)(float *y, float alpha, const float *x, int64_t n);
    void (*f32_to_f16_row)(const float *x, uint16_t *y, int64_t n);
    void (*f16_to_f32_row)(const uint16_t *x, float *y, int64_t n);
    void (*rmsnorm)(float *out, const float *x, const float *w, int64_t n, float eps);
    void (*layernorm)(float *out, const float *x, const float *w, const float *b, int64_t n,
                      float eps);
    float (*softmax)(float *x, int64_t n);
    void (*silu_mul)(float *gate, const float *up, int64_t n);
    void (*gelu)(float *x, int64_t n);
    void (*add)(float *y, const float *x, int64_t n);
    void (*scale)(float *x, float s, int64_t n);
} nn_kern_ops;

extern const nn_kern_ops nn_kern_ops_scalar;
#if defined(__x86_64__)
extern const nn_kern_ops nn_kern_ops_avx2;
extern const nn_kern_ops nn_kern_ops_avx512;
#endif

/* ------------------------------------------------------------------------ */
/* NN_LAYOUT_R16: 16 weight rows interleaved (see nn_mat_repack in nn_kern.h) */
/* ------------------------------------------------------------------------ */

/* Rows are taken 16 at a time ("group"; the last one padded with zero rows).
 * A group of a matrix with nb = cols / 32 blocks per row is nb block slices
 * back to back; the slice of block b holds, in order:
 *
 *   d:  16 f16 scales, rows 0..15 (32 bytes).
 *   m:  16 f16 minimums (Q4_1 only, 32 bytes).
 *   qs: the quant bytes of the 16 rows in chunks of 4 bytes: chunk g (g < 4
 *       for Q4_x, 8 for Q8_0) is row 0's bytes qs[4g..4g+3], then row 1's,
 *       ... row 15's: 64 bytes, so one 512-bit load (or two 256-bit ones)
 *       holds 4 consecutive quants of each of 16 rows, the operand of a
 *       per-row 32-bit lane dot product (vpdpbusd, or vpmaddubsw + vpmaddwd)
 *       against 4 activation bytes broadcast to every lane. For Q4_x a
 *       byte's low nibbles are elements 4g..4g+3 and its high nibbles
 *       elements 16+4g..16+4g+3, as in the original block. Q8_0 quants are
 *       stored offset by 128 (q ^ 0x80, an unsigned byte): vpdpbusd
 *       multiplies unsigned by signed bytes, and sum((q + 128) a) -
 *       128 sum(a) is exact in 32-bit integers, with sum(a) computed once
 *       per activation block rather than a sign fix-up per weight and
 *       activation row.
 *
 * So a slice is 16 blocks' bytes (288, 320 or 544) and a group is exactly
 * 16 * nn_row_bytes(type, cols): the same size as the original rows. A
 * product reads the matrix as one sequential stream: when the weights come
 * from DRAM (decoding a model larger than the cache) that is what hardware
 * prefetchers stream fastest, measured 1.9x faster than the same bytes
 * split into a quant stream and a scale stream, and 2.5x faster than four
 * row streams read side by side. */
#define NN_R16 16

static inline size_t nn_r16_qs_bytes(nn_type t) /* quant bytes of one slice */
{
    return t == NN_Q8_0 ? 512 : 256;
}

static inline size_t nn_r16_hdr_bytes(nn_type t) /* d (and m) before them */
{
    return t == NN_Q4_1 ? 64 : 32;
}

static inline size_t nn_r16_slice_bytes(nn_type t)
{
    return nn_r16_hdr_bytes(t) + nn_r16_qs_bytes(t);
}

static inline size_t nn_r16_group_bytes(nn_type t, int64_t cols)
{
    return NN_R16 * nn_row_bytes(t, cols);
}

/* Kernels that need sum(a) per activation block (Q4_0's -8 offset, Q8_0's
 * +128) compute it for a tile of activation rows into a stack array of this
 * many ints (16 KiB) and size the tile to fit. */
#define NN_QSUM_MAX 4096

/* ------------------------------------------------------------------------ */
/* Scalar helpers                                                            */
/* ------------------------------------------------------------------------ */

static inline uint32_t nn_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float nn_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Scalar GELU reference, exact: 0.5 x (1 + erf(x/sqrt2)) written with erfc so
 * that it stays accurate where 1 + erf cancels (x << 0). */
float nn_gelu_ref1(float x);

#endif
