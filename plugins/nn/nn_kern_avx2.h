/*
 * nn_kern_avx2: the AVX2 + FMA + F16C kernels, declared for nn_kern_avx512.c
 * (which reuses those it does not improve on). Internal to outpost_nn. Call
 * only on a CPU that nn_tier_available(NN_TIER_AVX2) approved; semantics are
 * those of the public functions in nn_kern.h of the same name, and of
 * nn_kern_ops.matmul (nn_kern_impl.h) for nn_avx2_matmul.
 */
#ifndef NN_KERN_AVX2_H
#define NN_KERN_AVX2_H

#include "nn_kern_impl.h"

void nn_avx2_quantize_q8a(const float *x, nn_block_q8a *y, int64_t n);
void nn_avx2_matmul(const nn_mat *W, const void *act, int n, float *y, int64_t ldy, int64_t r0,
                    int64_t r1);
float nn_avx2_dot_f32(const float *a, const float *b, int64_t n);
float nn_avx2_dot_f16_f32(const uint16_t *a, const float *b, int64_t n);
void nn_avx2_axpy_f16(float *y, float alpha, const uint16_t *x, int64_t n);
void nn_avx2_axpy_f32(float *y, float alpha, const float *x, int64_t n);
void nn_avx2_f32_to_f16_row(const float *x, uint16_t *y, int64_t n);
void nn_avx2_f16_to_f32_row(const uint16_t *x, float *y, int64_t n);
void nn_avx2_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps);
void nn_avx2_layernorm(float *out, const float *x, const float *w, const float *b, int64_t n,
                       float eps);
float nn_avx2_softmax(float *x, int64_t n);
void nn_avx2_silu_mul(float *gate, const float *up, int64_t n);
void nn_avx2_gelu(float *x, int64_t n);
void nn_avx2_add(float *y, const float *x, int64_t n);
void nn_avx2_scale(float *x, float s, int64_t n);

#endif
