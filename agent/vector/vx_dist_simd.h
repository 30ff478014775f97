/*
 * vx_dist_simd: the AVX2+FMA and AVX-512 kernels of vx_dist (internal to
 * agent/vector; callers use vx_dist.h).
 *
 * Each function is compiled for its instruction set with a target
 * attribute, so the rest of the build stays generic; calling one on a CPU
 * without those instructions is undefined (SIGILL), which is why only
 * vx_dist.c calls them, after its CPUID check. On other architectures the
 * file compiles to nothing and VX_DIST_HAVE_X86 stays undefined.
 *
 * Contracts: any dim (0 included), unaligned pointers, no allocation,
 * reentrant. The int8 products are exact (integer arithmetic) for codes in
 * [-127, 127] (what vx_quantize_i8 produces); the VNNI one is exact for
 * every int8, the sign-trick ones may differ from the scalar result when b
 * holds -128 opposite a negative a (vpsignb cannot negate -128).
 */
#ifndef VX_DIST_SIMD_H
#define VX_DIST_SIMD_H

#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define VX_DIST_HAVE_X86 1

float vx_simd_dot_f32_avx2(const float *a, const float *b, size_t dim);
float vx_simd_l2sq_f32_avx2(const float *a, const float *b, size_t dim);
int32_t vx_simd_dot_i8_avx2(const int8_t *a, const int8_t *b, size_t dim);

float vx_simd_dot_f32_avx512(const float *a, const float *b, size_t dim);
float vx_simd_l2sq_f32_avx512(const float *a, const float *b, size_t dim);
/* AVX-512 BW (vpmaddubsw + vpmaddwd, sign trick) */
int32_t vx_simd_dot_i8_avx512bw(const int8_t *a, const int8_t *b, size_t dim);
/* AVX-512 VNNI (vpdpbusd with the +128 offset trick) */
int32_t vx_simd_dot_i8_avx512vnni(const int8_t *a, const int8_t *b, size_t dim);
#endif

#endif
