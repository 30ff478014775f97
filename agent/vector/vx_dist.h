/*
 * vx_dist: the distance kernels of Outpost's vector indexes (road step 4).
 *
 * Vectors are float32 rows of `dim` values. Metrics (Vectorize's):
 *   cosine       vectors are L2-normalized on the way in, so the kernel is a
 *                dot product; the score returned to clients is the cosine
 *                similarity (1 = identical)
 *   euclidean    squared L2 distance in the kernel; the score is the
 *                distance (sqrt taken once, on the final top-k only)
 *   dot-product  the dot product (larger = closer)
 * Internally every kernel returns a *distance*: smaller is closer (cosine and
 * dot-product return the negated dot product), so one search loop serves
 * every metric.
 *
 * Quantized vectors: int8 codes with one float scale per vector
 * (x ~= scale * code, symmetric, |code| <= 127), scored against an int8
 * query with an integer dot product; the index re-ranks its candidates on
 * the float32 vectors.
 *
 * Tiers: scalar always; AVX2+FMA and AVX-512 (VNNI for int8) chosen once at
 * run time from the CPU; OUTPOST_VX_KERNELS=scalar|avx2|avx512 forces one
 * (tests compare every tier with the scalar one).
 *
 * Threading: every function is reentrant; vx_dist_init() is idempotent and
 * thread-safe (pthread_once). Errors: none (callers pass valid sizes).
 */
#ifndef VX_DIST_H
#define VX_DIST_H

#include <stddef.h>
#include <stdint.h>

typedef enum vx_metric {
    VX_COSINE = 0,
    VX_EUCLIDEAN = 1,
    VX_DOT = 2,
} vx_metric;

/* "cosine", "euclidean", "dot-product" <-> vx_metric; -1 if unknown. */
int vx_metric_parse(const char *name);
const char *vx_metric_name(vx_metric m);

typedef enum vx_tier { VX_TIER_SCALAR = 0, VX_TIER_AVX2 = 1, VX_TIER_AVX512 = 2 } vx_tier;

/* Picks the kernels (CPU features, OUTPOST_VX_KERNELS). */
void vx_dist_init(void);
vx_tier vx_dist_tier(void);
const char *vx_tier_name(vx_tier t);

/* float32 kernels of the current tier. */
float vx_dot_f32(const float *a, const float *b, size_t dim);
float vx_l2sq_f32(const float *a, const float *b, size_t dim);
/* The internal distance of metric m (smaller is closer). */
float vx_distance(vx_metric m, const float *a, const float *b, size_t dim);
/* The client-facing score for an internal distance (cosine similarity,
 * euclidean distance, dot product). */
float vx_score(vx_metric m, float distance);

/* Scales v to unit length in place; returns its former norm (0 leaves v). */
float vx_normalize(float *v, size_t dim);

/* int8 quantization: codes and scale for v (dim values); returns scale. */
float vx_quantize_i8(const float *v, size_t dim, int8_t *codes);
/* Integer dot product of two code rows; exact for codes in [-127, 127]
 * (all that vx_quantize_i8 produces). */
int32_t vx_dot_i8(const int8_t *a, const int8_t *b, size_t dim);

/* The same kernels of one given tier (tests and benchmarks); NULL-free:
 * a tier the CPU lacks falls back to scalar. */
float vx_dot_f32_tier(vx_tier t, const float *a, const float *b, size_t dim);
float vx_l2sq_f32_tier(vx_tier t, const float *a, const float *b, size_t dim);
int32_t vx_dot_i8_tier(vx_tier t, const int8_t *a, const int8_t *b, size_t dim);

#endif
