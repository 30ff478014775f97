/*
 * nn_kern_avx512: the AVX-512 (F, BW, VL, DQ, VNNI) tier.
 */
#include "nn_kern_avx2.h"

#include <immintrin.h>

const nn_kern_ops nn_kern_ops_avx512 = {
    .tier = NN_TIER_AVX512,
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
