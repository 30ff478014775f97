/*
 * nn_kern: the CPU kernels of the model plugins: tensor element types and
 * their conversions, activation quantization, quantized and float matrix
 * products, and the vector operations of transformer layers.
 *
 * Types and layouts are ggml's, as stored in GGUF files (ids equal to
 * gguf_ggml_type): F32, F16, BF16, and the 32-element block formats Q4_0,
 * Q4_1, Q8_0. Quantized weights are never dequantized as a whole: a matmul
 * quantizes the activations once per call to nn_block_q8a blocks and takes
 * integer dot products block by block (as llama.cpp does), so results match
 * llama.cpp's to float rounding.
 *
 * Implementations: scalar C (the reference, always built), AVX2+FMA+F16C and
 * AVX-512 (F, BW, VL, VNNI), each compiled with its own target flags and
 * chosen once at run time from the CPU's features. OUTPOST_KERNELS=scalar|
 * avx2|avx512 in the environment forces a lower tier (tests, benchmarks);
 * asking for a tier the CPU lacks falls back to the best available.
 * nn_kern_select() lets tests switch tiers in-process.
 *
 * Threading: every function is reentrant. Functions taking (ith, nth) do
 * thread ith's share of the work; call them from every thread of an
 * nn_pool_run (see nn_pool.h) and put a barrier between a producer and its
 * consumers. No function allocates or locks.
 *
 * Errors: none at run time. Sizes are the caller's to get right; the model
 * loaders check shapes and types once at load (nn_row_bytes returns 0 for an
 * unsupported type or a length that is not a multiple of the block size).
 */
#ifndef NN_KERN_H
#define NN_KERN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------------------ */
/* Types                                                                     */
/* ------------------------------------------------------------------------ */

typedef enum nn_type {
    NN_F32 = 0,
    NN_F16 = 1,
    NN_Q4_0 = 2,
    NN_Q4_1 = 3,
    NN_Q8_0 = 8,
    NN_BF16 = 30,
} nn_type;

#define NN_QK 32 /* elements per quantized block */

/* value = (qs nibble - 8) * d; element i < 16 is the low nibble of qs[i],
 * element i + 16 its high nibble. */
typedef struct nn_block_q4_0 {
    uint16_t d; /* f16 */
    uint8_t qs[NN_QK / 2];
} nn_block_q4_0; /* 18 bytes */

/* value = nibble * d + m, nibbles ordered as in Q4_0. */
typedef struct nn_block_q4_1 {
    uint16_t d, m; /* f16 */
    uint8_t qs[NN_QK / 2];
} nn_block_q4_1; /* 20 bytes */

/* value = qs[i] * d */
typedef struct nn_block_q8_0 {
    uint16_t d; /* f16 */
    int8_t qs[NN_QK];
} nn_block_q8_0; /* 34 bytes */

/* Activations quantized for a dot with quantized weights (not a file
 * format): value = qs[i] * d, s = d * sum(qs) (Q4_1's offset term). d and s
 * hold f16-representable values, the ones llama.cpp's block_q8_0/q8_1 store,
 * so products equal llama.cpp's exactly up to float summation order. */
typedef struct nn_block_q8a {
    float d;
    float s;
    int8_t qs[NN_QK];
} nn_block_q8a; /* 40 bytes */

const char *nn_type_name(nn_type t); /* "Q4_1"; "?" if unknown */
bool nn_type_supported(uint32_t t);
/* Bytes of a row of n elements; 0 if t is unsupported or n is not a multiple
 * of t's block size. */
size_t nn_row_bytes(nn_type t, int64_t n);

float nn_f16_to_f32(uint16_t h);
uint16_t nn_f32_to_f16(float f);   /* round to nearest even */
float nn_bf16_to_f32(uint16_t h);
uint16_t nn_f32_to_bf16(float f);  /* round to nearest even; NaN stays NaN */

/* Rows of any supported type to f32 (n elements, n a multiple of the block). */
void nn_dequantize_row(nn_type t, const void *src, float *dst, int64_t n);
/* f32 to any supported type, with ggml's reference rounding (tests, and
 * weights converted at load). */
void nn_quantize_row(nn_type t, const float *src, void *dst, int64_t n);
/* f32 to activation blocks as llama.cpp's x86 quantize_row_q8_1 makes them:
 * qs = x * (127 / max|x|) rounded half to even, d = f16(max|x| / 127),
 * s = f16(max|x| / 127 * sum(qs)). n % 32 == 0. */
void nn_quantize_row_q8a(const float *x, nn_block_q8a *y, int64_t n);

/* ------------------------------------------------------------------------ */
/* Matrix products                                                           */
/* ------------------------------------------------------------------------ */

/* How a weight matrix's bytes are arranged. */
typedef enum nn_layout {
    NN_LAYOUT_ROWS = 0, /* row after row, as in the file */
    NN_LAYOUT_R16 = 1,  /* 16 rows interleaved per block, from nn_mat_repack */
} nn_layout;

/* A weight matrix: `rows` output features, each a row of `cols` input
 * features of `type`, rows row_bytes apart (>= nn_row_bytes(type, cols)).
 * Borrowed memory (usually the model file's mapping). `layout` is
 * NN_LAYOUT_ROWS (zero, so initializers that leave it out stay valid) except
 * for the result of nn_mat_repack. */
typedef struct nn_mat {
    nn_type type;
    int64_t rows;
    int64_t cols;
    const void *data;
    size_t row_bytes;
    nn_layout layout;
} nn_mat;

/* Optional load-time repacking of Q4_0/Q4_1/Q8_0 weights for nn_matmul: the
 * rows are interleaved 16 at a time so that one wide load holds the same
 * four quants of 16 rows and every SIMD lane accumulates its own row (no
 * horizontal sums, one scale multiply per 16 rows), and the whole matrix is
 * read as a single sequential stream. Same byte count as the original (rows
 * rounded up to 16). nn_matmul on the repacked matrix gives the original's
 * results to float rounding (the integer dot products are identical) and
 * was measured 1.1x (n = 1, weights from DRAM) to 5x (weights in cache, or
 * several activation rows) faster than on the original with AVX-512, never
 * slower; docs/decisions/0007-cpu-kernels.md has the figures. Every tier
 * reads it, so nn_kern_select after repacking is fine. Thread shares of a
 * repacked matrix must start on a multiple of 16 rows (nn_matmul's own split
 * does that; see nn_mat_rows).
 *
 * nn_mat_repack_bytes: bytes the copy needs; 0 if W's type has no repacked
 * layout (F32, F16, BF16) or W is not NN_LAYOUT_ROWS (nothing to do).
 * nn_mat_repack: writes the copy into dst (nn_mat_repack_bytes(W) bytes,
 * 64-byte aligned, owned by the caller, to outlive the returned matrix) and
 * returns the matrix describing it (layout NN_LAYOUT_R16, data = dst,
 * row_bytes = nn_row_bytes(type, cols)). W's memory is not read afterwards.
 * Call it only when nn_mat_repack_bytes(W) > 0. */
size_t nn_mat_repack_bytes(const nn_mat *W);
nn_mat nn_mat_repack(const nn_mat *W, void *dst);
/* Row r of W (either layout) to f32, cols elements: an embedding lookup in a
 * tied embedding/output matrix that was repacked for the output head. */
void nn_mat_row_f32(const nn_mat *W, int64_t r, float *dst);
/* Rows [r0, r1) of W as a matrix of their own, in either layout (for
 * NN_LAYOUT_R16, r0 must be a multiple of 16: nn_split with align 16 gives
 * such shares). Borrows W's memory. */
nn_mat nn_mat_rows(const nn_mat *W, int64_t r0, int64_t r1);

/* Bytes of one activation row of length k prepared for weights of wtype:
 * nn_block_q8a blocks for Q4_0/Q4_1/Q8_0, f32 for F32/F16/BF16. */
size_t nn_act_row_bytes(nn_type wtype, int64_t k);
/* Converts n activation rows x (row j at x + j*ldx floats, k wide) for a
 * matmul with weights of wtype into act (n rows of nn_act_row_bytes each,
 * back to back). Thread ith of nth converts its share of the rows. */
void nn_act_prepare(nn_type wtype, const float *x, int64_t ldx, int n, int64_t k, void *act,
                    int ith, int nth);
/* y[j*ldy + r] = sum_c W[r][c] * x_j[c] for every activation row j < n and
 * every weight row r of thread ith's share of W's rows (split with
 * nn_split in multiples of 4 rows, 16 for NN_LAYOUT_R16, so every row is
 * computed the same way whatever nth is: results do not depend on the
 * thread count). act is from nn_act_prepare(W->type, ...) with
 * k == W->cols. Activation rows are processed in register-blocked groups
 * (each weight block is unpacked once for up to 4 of them), so n > 1 costs
 * much less than n calls. */
void nn_matmul(const nn_mat *W, const void *act, int n, float *y, int64_t ldy, int ith, int nth);

/* ------------------------------------------------------------------------ */
/* Vector operations (f32 unless named)                                      */
/* ------------------------------------------------------------------------ */

float nn_dot_f32(const float *a, const float *b, int64_t n);
/* sum a[i] * b[i] with a in f16 (a KV cache row). */
float nn_dot_f16_f32(const uint16_t *a, const float *b, int64_t n);
/* y[i] += alpha * x[i] with x in f16. */
void nn_axpy_f16(float *y, float alpha, const uint16_t *x, int64_t n);
void nn_axpy_f32(float *y, float alpha, const float *x, int64_t n);
void nn_f32_to_f16_row(const float *x, uint16_t *y, int64_t n);

/* out = x / sqrt(mean(x^2) + eps) * w   (out may equal x) */
void nn_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps);
/* out = (x - mean) / sqrt(var + eps) * w + b   (out may equal x) */
void nn_layernorm(float *out, const float *x, const float *w, const float *b, int64_t n,
                  float eps);
/* In place: x = exp(x - max) / sum. Returns the sum before normalizing. */
float nn_softmax(float *x, int64_t n);
/* gate[i] = silu(gate[i]) * up[i] */
void nn_silu_mul(float *gate, const float *up, int64_t n);
/* x = 0.5 x (1 + erf(x / sqrt 2)), the exact GELU BERT uses. */
void nn_gelu(float *x, int64_t n);
void nn_add(float *y, const float *x, int64_t n);    /* y += x */
void nn_scale(float *x, float s, int64_t n);         /* x *= s */

/* ------------------------------------------------------------------------ */
/* Implementation selection                                                  */
/* ------------------------------------------------------------------------ */

typedef enum nn_tier { NN_TIER_SCALAR = 0, NN_TIER_AVX2 = 1, NN_TIER_AVX512 = 2 } nn_tier;

/* The tier in use (selected on first use of any kernel, thread-safe). */
nn_tier nn_kern_tier(void);
const char *nn_tier_name(nn_tier t); /* "scalar" | "avx2" | "avx512" */
/* True if this CPU can run tier t. */
bool nn_tier_available(nn_tier t);
/* Switches every kernel to tier t (if available; returns the tier now in
 * use). Not thread-safe against kernels running: tests and benchmarks only. */
nn_tier nn_kern_select(nn_tier t);

#endif
