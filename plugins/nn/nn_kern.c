/*
 * nn_kern: element types, conversions, quantization, the scalar reference
 * kernels, and the choice of kernel tier (see nn_kern.h).
 *
 * The scalar functions here are the reference the SIMD tiers are tested
 * against, and the fallback for CPUs without AVX2. They follow ggml's
 * reference code where results must agree bit for bit (weight quantization,
 * f16/bf16 rounding) and the obvious loop everywhere else.
 */
#include "nn_kern.h"
#include "nn_kern_impl.h"
#include "nn_pool.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>


static inline const struct nn_kern_ops *K(void);

/* ======================================================================== */
/* Types                                                                     */
/* ======================================================================== */

const char *nn_type_name(nn_type t)
{
    switch (t) {
    case NN_F32: return "F32";
    case NN_F16: return "F16";
    case NN_BF16: return "BF16";
    case NN_Q4_0: return "Q4_0";
    case NN_Q4_1: return "Q4_1";
    case NN_Q8_0: return "Q8_0";
    }
    return "?";
}

bool nn_type_supported(uint32_t t)
{
    switch (t) {
    case NN_F32: case NN_F16: case NN_BF16: case NN_Q4_0: case NN_Q4_1: case NN_Q8_0:
        return true;
    }
    return false;
}

static int64_t type_block(nn_type t)
{
    return t == NN_Q4_0 || t == NN_Q4_1 || t == NN_Q8_0 ? NN_QK : 1;
}

static size_t type_block_bytes(nn_type t)
{
    switch (t) {
    case NN_F32: return 4;
    case NN_F16: case NN_BF16: return 2;
    case NN_Q4_0: return sizeof(nn_block_q4_0);
    case NN_Q4_1: return sizeof(nn_block_q4_1);
    case NN_Q8_0: return sizeof(nn_block_q8_0);
    }
    return 0;
}

size_t nn_row_bytes(nn_type t, int64_t n)
{
    if (!nn_type_supported((uint32_t)t) || n < 0 || n % type_block(t) != 0)
        return 0;
    return (size_t)(n / type_block(t)) * type_block_bytes(t);
}

_Static_assert(sizeof(nn_block_q4_0) == 18, "Q4_0 block is 18 bytes in GGUF");
_Static_assert(sizeof(nn_block_q4_1) == 20, "Q4_1 block is 20 bytes in GGUF");
_Static_assert(sizeof(nn_block_q8_0) == 34, "Q8_0 block is 34 bytes in GGUF");
_Static_assert(sizeof(nn_block_q8a) == 40, "activation block layout");

/* ======================================================================== */
/* f16 / bf16                                                                */
/* ======================================================================== */

float nn_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    if (exp == 0x1f) /* inf; NaN keeps its payload and is quieted, as F16C does */
        return nn_bits_f32(sign | 0x7f800000 | (mant << 13) | (mant ? 0x400000 : 0));
    if (exp != 0) /* normal: rebias 15 -> 127 */
        return nn_bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
    /* zero or subnormal: mant * 2^-24, exact in f32 */
    return nn_bits_f32(sign | nn_f32_bits((float)mant * 0x1p-24f));
}

uint16_t nn_f32_to_f16(float f)
{
    uint32_t x = nn_f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffff;
    if (ax > 0x7f800000) /* NaN: quieted, top payload bits kept (as F16C does) */
        return (uint16_t)(sign | 0x7e00 | ((ax >> 13) & 0x3ff));
    if (ax >= 0x477ff000) /* >= 65520 rounds to infinity */
        return sign | 0x7c00;
    if (ax < 0x38800000) {
        /* Below the smallest normal half (2^-14): adding 0.5 makes the FPU
         * round to a multiple of 2^-24 (0.5's ulp), the half subnormal step,
         * to nearest even; the low bits of the sum are the half's bits. */
        float r = nn_bits_f32(ax) + 0.5f;
        return (uint16_t)(sign | (nn_f32_bits(r) - 0x3f000000));
    }
    /* Normal: rebias the exponent and round the 13 dropped bits to nearest
     * even (a carry out of the mantissa correctly bumps the exponent). */
    uint32_t odd = (ax >> 13) & 1;
    ax += ((uint32_t)(15 - 127) << 23) + 0xfff + odd;
    return (uint16_t)(sign | (ax >> 13));
}

float nn_bf16_to_f32(uint16_t h)
{
    return nn_bits_f32((uint32_t)h << 16);
}

uint16_t nn_f32_to_bf16(float f)
{
    uint32_t u = nn_f32_bits(f);
    if ((u & 0x7fffffff) > 0x7f800000) /* NaN: keep it one (set the quiet bit) */
        return (uint16_t)((u >> 16) | 64);
    return (uint16_t)((u + (0x7fff + ((u >> 16) & 1))) >> 16);
}

/* ======================================================================== */
/* Quantization (ggml's reference rounding)                                  */
/* ======================================================================== */

static void quantize_q4_0(const float *x, nn_block_q4_0 *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += NN_QK) {
        /* The value of largest magnitude maps to -8, keeping its sign in d. */
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < NN_QK; j++)
            if (amax < fabsf(x[j])) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        const float d = max / -8;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = nn_f32_to_f16(d);
        for (int j = 0; j < NN_QK / 2; j++) {
            int q0 = (int)(x[j] * id + 8.5f), q1 = (int)(x[j + 16] * id + 8.5f);
            q0 = q0 < 15 ? q0 : 15;
            q1 = q1 < 15 ? q1 : 15;
            y[i].qs[j] = (uint8_t)(q0 | q1 << 4);
        }
    }
}

static void quantize_q4_1(const float *x, nn_block_q4_1 *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += NN_QK) {
        float min = x[0], max = x[0];
        for (int j = 1; j < NN_QK; j++) {
            min = x[j] < min ? x[j] : min;
            max = x[j] > max ? x[j] : max;
        }
        const float d = (max - min) / 15;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = nn_f32_to_f16(d);
        y[i].m = nn_f32_to_f16(min);
        for (int j = 0; j < NN_QK / 2; j++) {
            int q0 = (int)((x[j] - min) * id + 0.5f), q1 = (int)((x[j + 16] - min) * id + 0.5f);
            q0 = q0 < 15 ? q0 : 15;
            q1 = q1 < 15 ? q1 : 15;
            y[i].qs[j] = (uint8_t)(q0 | q1 << 4);
        }
    }
}

static void quantize_q8_0(const float *x, nn_block_q8_0 *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += NN_QK) {
        float amax = 0.0f;
        for (int j = 0; j < NN_QK; j++)
            amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
        const float d = amax / 127;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = nn_f32_to_f16(d);
        for (int j = 0; j < NN_QK; j++)
            y[i].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

void nn_quantize_row(nn_type t, const float *src, void *dst, int64_t n)
{
    switch (t) {
    case NN_F32:
        memmove(dst, src, (size_t)n * sizeof(float));
        return;
    case NN_F16:
        for (int64_t i = 0; i < n; i++)
            ((uint16_t *)dst)[i] = nn_f32_to_f16(src[i]);
        return;
    case NN_BF16:
        for (int64_t i = 0; i < n; i++)
            ((uint16_t *)dst)[i] = nn_f32_to_bf16(src[i]);
        return;
    case NN_Q4_0: quantize_q4_0(src, dst, n / NN_QK); return;
    case NN_Q4_1: quantize_q4_1(src, dst, n / NN_QK); return;
    case NN_Q8_0: quantize_q8_0(src, dst, n / NN_QK); return;
    }
}

void nn_dequantize_row(nn_type t, const void *src, float *dst, int64_t n)
{
    switch (t) {
    case NN_F32:
        memmove(dst, src, (size_t)n * sizeof(float));
        return;
    case NN_F16:
        K()->f16_to_f32_row(src, dst, n);
        return;
    case NN_BF16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = nn_bf16_to_f32(((const uint16_t *)src)[i]);
        return;
    case NN_Q4_0:
        for (int64_t i = 0; i < n / NN_QK; i++) {
            const nn_block_q4_0 *b = (const nn_block_q4_0 *)src + i;
            float d = nn_f16_to_f32(b->d);
            for (int j = 0; j < 16; j++) {
                dst[i * NN_QK + j] = (float)((b->qs[j] & 15) - 8) * d;
                dst[i * NN_QK + j + 16] = (float)((b->qs[j] >> 4) - 8) * d;
            }
        }
        return;
    case NN_Q4_1:
        for (int64_t i = 0; i < n / NN_QK; i++) {
            const nn_block_q4_1 *b = (const nn_block_q4_1 *)src + i;
            float d = nn_f16_to_f32(b->d), m = nn_f16_to_f32(b->m);
            for (int j = 0; j < 16; j++) {
                dst[i * NN_QK + j] = (float)(b->qs[j] & 15) * d + m;
                dst[i * NN_QK + j + 16] = (float)(b->qs[j] >> 4) * d + m;
            }
        }
        return;
    case NN_Q8_0:
        for (int64_t i = 0; i < n / NN_QK; i++) {
            const nn_block_q8_0 *b = (const nn_block_q8_0 *)src + i;
            float d = nn_f16_to_f32(b->d);
            for (int j = 0; j < NN_QK; j++)
                dst[i * NN_QK + j] = (float)b->qs[j] * d;
        }
        return;
    }
}

/* Activation blocks. Multiplying by 127/amax and rounding to nearest even is
 * what llama.cpp's x86 code does (quantize_row_q8_0/q8_1), so every tier
 * produces the same bytes as llama.cpp's AVX2 path, and d and s hold the
 * values ggml's f16 fields hold. */
static void quantize_q8a_scalar(const float *x, nn_block_q8a *y, int64_t n)
{
    for (int64_t i = 0; i < n / NN_QK; i++, x += NN_QK) {
        float amax = 0.0f;
        for (int j = 0; j < NN_QK; j++)
            amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        int sum = 0;
        for (int j = 0; j < NN_QK; j++) {
            int q = (int)nearbyintf(x[j] * id);
            y[i].qs[j] = (int8_t)q;
            sum += q;
        }
        /* ggml keeps d and s as f16 (s from the unrounded d): rounding them
         * the same way makes every product equal llama.cpp's, not merely
         * as accurate, so greedy decoding picks the same tokens. */
        const float d = amax / 127.0f;
        y[i].d = nn_f16_to_f32(nn_f32_to_f16(d));
        y[i].s = nn_f16_to_f32(nn_f32_to_f16(d * (float)sum));
    }
}

/* ======================================================================== */
/* Repacked layout (NN_LAYOUT_R16)                                           */
/* ======================================================================== */

size_t nn_mat_repack_bytes(const nn_mat *W)
{
    if (W->layout != NN_LAYOUT_ROWS ||
        (W->type != NN_Q4_0 && W->type != NN_Q4_1 && W->type != NN_Q8_0))
        return 0;
    size_t groups = (size_t)((W->rows + NN_R16 - 1) / NN_R16);
    return groups * nn_r16_group_bytes(W->type, W->cols);
}

/* Where row r's block b lives in a repacked matrix: its scale (and min), and
 * the start of its 4-byte quant chunks (chunk g at qs + 64 g). */
typedef struct r16_ref {
    const uint8_t *qs;
    const uint16_t *d, *m;
} r16_ref;

static r16_ref r16_locate(const nn_mat *W, int64_t r, int64_t b)
{
    int64_t lane = r % NN_R16;
    const uint8_t *slice = (const uint8_t *)W->data +
                           (size_t)(r / NN_R16) * nn_r16_group_bytes(W->type, W->cols) +
                           (size_t)b * nn_r16_slice_bytes(W->type);
    const uint16_t *d = (const uint16_t *)slice;
    r16_ref ref = {
        .qs = slice + nn_r16_hdr_bytes(W->type) + (size_t)lane * 4,
        .d = d + lane,
        .m = W->type == NN_Q4_1 ? d + NN_R16 + lane : NULL,
    };
    return ref;
}

nn_mat nn_mat_repack(const nn_mat *W, void *dst)
{
    int64_t nb = W->cols / NN_QK, groups = (W->rows + NN_R16 - 1) / NN_R16;
    size_t gbytes = nn_r16_group_bytes(W->type, W->cols);
    int chunks = (int)(nn_r16_qs_bytes(W->type) / 64);
    /* Zero first: padding rows get d = m = 0 and contribute nothing. */
    memset(dst, 0, (size_t)groups * gbytes);
    nn_mat out = *W;
    out.data = dst;
    out.layout = NN_LAYOUT_R16;
    out.row_bytes = nn_row_bytes(W->type, W->cols);
    for (int64_t r = 0; r < W->rows; r++) {
        const uint8_t *row = (const uint8_t *)W->data + (size_t)r * W->row_bytes;
        for (int64_t b = 0; b < nb; b++) {
            r16_ref ref = r16_locate(&out, r, b);
            const uint8_t *qs;
            uint16_t d, m = 0;
            switch (W->type) {
            case NN_Q4_0: {
                const nn_block_q4_0 *blk = (const nn_block_q4_0 *)row + b;
                d = blk->d, qs = blk->qs;
                break;
            }
            case NN_Q4_1: {
                const nn_block_q4_1 *blk = (const nn_block_q4_1 *)row + b;
                d = blk->d, m = blk->m, qs = blk->qs;
                break;
            }
            default: {
                const nn_block_q8_0 *blk = (const nn_block_q8_0 *)row + b;
                d = blk->d, qs = (const uint8_t *)blk->qs;
                break;
            }
            }
            /* ref points into dst, which is ours to write. */
            uint8_t *q = (uint8_t *)(uintptr_t)ref.qs;
            for (int g = 0; g < chunks; g++)
                for (int i = 0; i < 4; i++) /* Q8_0 offset by 128, see nn_kern_impl.h */
                    q[64 * g + i] = W->type == NN_Q8_0 ? qs[4 * g + i] ^ 0x80 : qs[4 * g + i];
            *(uint16_t *)(uintptr_t)ref.d = d;
            if (ref.m)
                *(uint16_t *)(uintptr_t)ref.m = m;
        }
    }
    return out;
}

/* Block b of row r of a repacked Q4_0/Q4_1/Q8_0 matrix, back in its file
 * form (blk points to the type's block struct). */
static void r16_get_block(const nn_mat *W, int64_t r, int64_t b, void *blk)
{
    r16_ref ref = r16_locate(W, r, b);
    int chunks = (int)(nn_r16_qs_bytes(W->type) / 64);
    uint8_t *qs;
    switch (W->type) {
    case NN_Q4_0:
        ((nn_block_q4_0 *)blk)->d = *ref.d;
        qs = ((nn_block_q4_0 *)blk)->qs;
        break;
    case NN_Q4_1:
        ((nn_block_q4_1 *)blk)->d = *ref.d;
        ((nn_block_q4_1 *)blk)->m = *ref.m;
        qs = ((nn_block_q4_1 *)blk)->qs;
        break;
    default:
        ((nn_block_q8_0 *)blk)->d = *ref.d;
        qs = (uint8_t *)((nn_block_q8_0 *)blk)->qs;
        break;
    }
    for (int g = 0; g < chunks; g++)
        for (int i = 0; i < 4; i++)
            qs[4 * g + i] = W->type == NN_Q8_0 ? ref.qs[64 * g + i] ^ 0x80 : ref.qs[64 * g + i];
}

void nn_mat_row_f32(const nn_mat *W, int64_t r, float *dst)
{
    if (W->layout == NN_LAYOUT_ROWS) {
        nn_dequantize_row(W->type, (const uint8_t *)W->data + (size_t)r * W->row_bytes, dst,
                          W->cols);
        return;
    }
    union {
        nn_block_q4_0 q4_0;
        nn_block_q4_1 q4_1;
        nn_block_q8_0 q8_0;
    } blk;
    for (int64_t b = 0; b < W->cols / NN_QK; b++) {
        r16_get_block(W, r, b, &blk);
        nn_dequantize_row(W->type, &blk, dst + b * NN_QK, NN_QK);
    }
}

nn_mat nn_mat_rows(const nn_mat *W, int64_t r0, int64_t r1)
{
    nn_mat s = *W;
    s.rows = r1 - r0;
    if (W->layout == NN_LAYOUT_R16)
        s.data = (const uint8_t *)W->data +
                 (size_t)(r0 / NN_R16) * nn_r16_group_bytes(W->type, W->cols);
    else
        s.data = (const uint8_t *)W->data + (size_t)r0 * W->row_bytes;
    return s;
}

/* ======================================================================== */
/* Scalar matmul                                                             */
/* ======================================================================== */

/* One weight block against one activation block: the integer dot product
 * is exact, and the float combination is llama.cpp's (vec_dot_q4_0_q8_0,
 * q4_1_q8_1, q8_0_q8_0). */
static float dot_blk_q4_0(const nn_block_q4_0 *w, const nn_block_q8a *a)
{
    int isum = 0;
    for (int j = 0; j < 16; j++)
        isum += ((w->qs[j] & 15) - 8) * a->qs[j] + ((w->qs[j] >> 4) - 8) * a->qs[j + 16];
    return nn_f16_to_f32(w->d) * a->d * (float)isum;
}

static float dot_blk_q4_1(const nn_block_q4_1 *w, const nn_block_q8a *a)
{
    int isum = 0;
    for (int j = 0; j < 16; j++)
        isum += (w->qs[j] & 15) * a->qs[j] + (w->qs[j] >> 4) * a->qs[j + 16];
    return nn_f16_to_f32(w->d) * a->d * (float)isum + nn_f16_to_f32(w->m) * a->s;
}

static float dot_blk_q8_0(const nn_block_q8_0 *w, const nn_block_q8a *a)
{
    int isum = 0;
    for (int j = 0; j < NN_QK; j++)
        isum += w->qs[j] * a->qs[j];
    return nn_f16_to_f32(w->d) * a->d * (float)isum;
}

static float dot_row_quant(const nn_mat *W, int64_t r, const nn_block_q8a *a)
{
    int64_t nb = W->cols / NN_QK;
    const uint8_t *row = (const uint8_t *)W->data + (size_t)r * W->row_bytes;
    union {
        nn_block_q4_0 q4_0;
        nn_block_q4_1 q4_1;
        nn_block_q8_0 q8_0;
    } tmp;
    float sum = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const void *blk;
        if (W->layout == NN_LAYOUT_R16) {
            r16_get_block(W, r, b, &tmp);
            blk = &tmp;
        } else {
            blk = row + (size_t)b * type_block_bytes(W->type);
        }
        switch (W->type) {
        case NN_Q4_0: sum += dot_blk_q4_0(blk, a + b); break;
        case NN_Q4_1: sum += dot_blk_q4_1(blk, a + b); break;
        default: sum += dot_blk_q8_0(blk, a + b); break;
        }
    }
    return sum;
}

static float dot_f32_scalar(const float *a, const float *b, int64_t n)
{
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++)
        sum += a[i] * b[i];
    return sum;
}

static float dot_f16_f32_scalar(const uint16_t *a, const float *b, int64_t n)
{
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++)
        sum += nn_f16_to_f32(a[i]) * b[i];
    return sum;
}

static float dot_bf16_f32(const uint16_t *a, const float *b, int64_t n)
{
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++)
        sum += nn_bf16_to_f32(a[i]) * b[i];
    return sum;
}

static void matmul_scalar(const nn_mat *W, const void *act, int n, float *y, int64_t ldy,
                          int64_t r0, int64_t r1)
{
    int64_t k = W->cols;
    size_t arow = nn_act_row_bytes(W->type, k);
    for (int64_t r = r0; r < r1; r++) {
        const void *wrow = (const uint8_t *)W->data + (size_t)r * W->row_bytes;
        for (int j = 0; j < n; j++) {
            const void *a = (const uint8_t *)act + (size_t)j * arow;
            float v;
            switch (W->type) {
            case NN_F32: v = dot_f32_scalar(wrow, a, k); break;
            case NN_F16: v = dot_f16_f32_scalar(wrow, a, k); break;
            case NN_BF16: v = dot_bf16_f32(wrow, a, k); break;
            default: v = dot_row_quant(W, r, a); break;
            }
            y[(int64_t)j * ldy + r] = v;
        }
    }
}

/* ======================================================================== */
/* Scalar vector operations                                                  */
/* ======================================================================== */

static void axpy_f16_scalar(float *y, float alpha, const uint16_t *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] += alpha * nn_f16_to_f32(x[i]);
}

static void axpy_f32_scalar(float *y, float alpha, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] += alpha * x[i];
}

static void f32_to_f16_row_scalar(const float *x, uint16_t *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = nn_f32_to_f16(x[i]);
}

static void f16_to_f32_row_scalar(const uint16_t *x, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = nn_f16_to_f32(x[i]);
}

/* Sums of squares and means in double, as ggml does for its norms: a 4096
 * long row of similar values would otherwise lose digits to the running sum. */
static void rmsnorm_scalar(float *out, const float *x, const float *w, int64_t n, float eps)
{
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++)
        ss += (double)(x[i] * x[i]);
    const float scale = 1.0f / sqrtf((float)(ss / (double)n) + eps);
    for (int64_t i = 0; i < n; i++)
        out[i] = x[i] * scale * w[i];
}

static void layernorm_scalar(float *out, const float *x, const float *w, const float *b,
                             int64_t n, float eps)
{
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++)
        sum += (double)x[i];
    const float mean = (float)(sum / (double)n);
    double var = 0.0;
    for (int64_t i = 0; i < n; i++) {
        float dv = x[i] - mean;
        var += (double)(dv * dv);
    }
    const float scale = 1.0f / sqrtf((float)(var / (double)n) + eps);
    for (int64_t i = 0; i < n; i++)
        out[i] = (x[i] - mean) * scale * w[i] + b[i];
}

static float softmax_scalar(float *x, int64_t n)
{
    float max = -INFINITY;
    for (int64_t i = 0; i < n; i++)
        max = x[i] > max ? x[i] : max;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += (double)x[i];
    }
    const float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < n; i++)
        x[i] *= inv;
    return (float)sum;
}

static void silu_mul_scalar(float *gate, const float *up, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

float nn_gelu_ref1(float x)
{
    /* The limits at infinity (0.5 x erfc(inf) would be NaN at -inf). */
    if (isinf(x))
        return x > 0 ? x : -0.0f;
    /* In double: erfc(z) has relative slope 2z, so rounding x / sqrt2 to
     * float would cost 2 z^2 ulp in the tail (1e-5 at x = -12). */
    return (float)(0.5 * x * erfc(-(double)x * M_SQRT1_2));
}

static void gelu_scalar(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = nn_gelu_ref1(x[i]);
}

static void add_scalar(float *y, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] += x[i];
}

static void scale_scalar(float *x, float s, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        x[i] *= s;
}

const nn_kern_ops nn_kern_ops_scalar = {
    .tier = NN_TIER_SCALAR,
    .quantize_q8a = quantize_q8a_scalar,
    .matmul = matmul_scalar,
    .dot_f32 = dot_f32_scalar,
    .dot_f16_f32 = dot_f16_f32_scalar,
    .axpy_f16 = axpy_f16_scalar,
    .axpy_f32 = axpy_f32_scalar,
    .f32_to_f16_row = f32_to_f16_row_scalar,
    .f16_to_f32_row = f16_to_f32_row_scalar,
    .rmsnorm = rmsnorm_scalar,
    .layernorm = layernorm_scalar,
    .softmax = softmax_scalar,
    .silu_mul = silu_mul_scalar,
    .gelu = gelu_scalar,
    .add = add_scalar,
    .scale = scale_scalar,
};

/* ======================================================================== */
/* Tier selection                                                            */
/* ======================================================================== */

static _Atomic(const nn_kern_ops *) g_ops;

bool nn_tier_available(nn_tier t)
{
    switch (t) {
    case NN_TIER_SCALAR:
        return true;
#if defined(__x86_64__)
    case NN_TIER_AVX2:
        /* libgcc's checks include the OS enabling the YMM/ZMM state (XCR0). */
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("f16c");
    case NN_TIER_AVX512:
        return nn_tier_available(NN_TIER_AVX2) && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni");
#endif
    default:
        return false;
    }
}

static const nn_kern_ops *tier_ops(nn_tier t)
{
    switch (t) {
#if defined(__x86_64__)
    case NN_TIER_AVX512: return &nn_kern_ops_avx512;
    case NN_TIER_AVX2: return &nn_kern_ops_avx2;
#endif
    default: return &nn_kern_ops_scalar;
    }
}

static nn_tier best_tier(nn_tier limit)
{
    for (int t = (int)limit; t > NN_TIER_SCALAR; t--)
        if (nn_tier_available((nn_tier)t))
            return (nn_tier)t;
    return NN_TIER_SCALAR;
}

static const nn_kern_ops *ops_init(void)
{
    nn_tier limit = NN_TIER_AVX512;
    const char *env = getenv("OUTPOST_KERNELS");
    if (env) {
        if (strcmp(env, "scalar") == 0)
            limit = NN_TIER_SCALAR;
        else if (strcmp(env, "avx2") == 0)
            limit = NN_TIER_AVX2;
    }
    /* Every thread that gets here computes the same answer, so a race
     * between two first calls stores the same pointer twice. */
    const nn_kern_ops *o = tier_ops(best_tier(limit));
    atomic_store_explicit(&g_ops, o, memory_order_release);
    return o;
}

static inline const nn_kern_ops *K(void)
{
    const nn_kern_ops *o = atomic_load_explicit(&g_ops, memory_order_acquire);
    return o ? o : ops_init();
}

nn_tier nn_kern_tier(void)
{
    return K()->tier;
}

const char *nn_tier_name(nn_tier t)
{
    switch (t) {
    case NN_TIER_SCALAR: return "scalar";
    case NN_TIER_AVX2: return "avx2";
    case NN_TIER_AVX512: return "avx512";
    }
    return "?";
}

nn_tier nn_kern_select(nn_tier t)
{
    const nn_kern_ops *o = tier_ops(best_tier(t));
    atomic_store_explicit(&g_ops, o, memory_order_release);
    return o->tier;
}

/* ======================================================================== */
/* Public entry points                                                       */
/* ======================================================================== */

size_t nn_act_row_bytes(nn_type wtype, int64_t k)
{
    switch (wtype) {
    case NN_Q4_0: case NN_Q4_1: case NN_Q8_0:
        return (size_t)(k / NN_QK) * sizeof(nn_block_q8a);
    default:
        return (size_t)k * sizeof(float);
    }
}

void nn_quantize_row_q8a(const float *x, nn_block_q8a *y, int64_t n)
{
    K()->quantize_q8a(x, y, n);
}

void nn_act_prepare(nn_type wtype, const float *x, int64_t ldx, int n, int64_t k, void *act,
                    int ith, int nth)
{
    long lo, hi;
    nn_split(n, ith, nth, 1, &lo, &hi);
    size_t arow = nn_act_row_bytes(wtype, k);
    const nn_kern_ops *o = K();
    for (long j = lo; j < hi; j++) {
        void *dst = (uint8_t *)act + (size_t)j * arow;
        const float *src = x + j * ldx;
        if (wtype == NN_Q4_0 || wtype == NN_Q4_1 || wtype == NN_Q8_0)
            o->quantize_q8a(src, dst, k);
        else
            memmove(dst, src, arow); /* act may alias x */
    }
}

void nn_matmul(const nn_mat *W, const void *act, int n, float *y, int64_t ldy, int ith, int nth)
{
    long lo, hi;
    nn_split((long)W->rows, ith, nth, W->layout == NN_LAYOUT_R16 ? NN_R16 : 4, &lo, &hi);
    if (lo < hi && n > 0)
        K()->matmul(W, act, n, y, ldy, lo, hi);
}

float nn_dot_f32(const float *a, const float *b, int64_t n)
{
    return K()->dot_f32(a, b, n);
}

float nn_dot_f16_f32(const uint16_t *a, const float *b, int64_t n)
{
    return K()->dot_f16_f32(a, b, n);
}

void nn_axpy_f16(float *y, float alpha, const uint16_t *x, int64_t n)
{
    K()->axpy_f16(y, alpha, x, n);
}

void nn_axpy_f32(float *y, float alpha, const float *x, int64_t n)
{
    K()->axpy_f32(y, alpha, x, n);
}

void nn_f32_to_f16_row(const float *x, uint16_t *y, int64_t n)
{
    K()->f32_to_f16_row(x, y, n);
}

void nn_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps)
{
    K()->rmsnorm(out, x, w, n, eps);
}

void nn_layernorm(float *out, const float *x, const float *w, const float *b, int64_t n,
                  float eps)
{
    K()->layernorm(out, x, w, b, n, eps);
}

float nn_softmax(float *x, int64_t n)
{
    return K()->softmax(x, n);
}

void nn_silu_mul(float *gate, const float *up, int64_t n)
{
    K()->silu_mul(gate, up, n);
}

void nn_gelu(float *x, int64_t n)
{
    K()->gelu(x, n);
}

void nn_add(float *y, const float *x, int64_t n)
{
    K()->add(y, x, n);
}

void nn_scale(float *x, float s, int64_t n)
{
    K()->scale(x, s, n);
}
