/*
 * vx_dist: the scalar kernels and the dispatch. See vx_dist.h. The SIMD
 * tiers live in vx_dist_simd.c (compiled with target attributes, chosen at
 * run time); until they are, every tier is the scalar one.
 */
#include "vector/vx_dist.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static vx_tier g_tier = VX_TIER_SCALAR;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

int vx_metric_parse(const char *name)
{
    if (!name)
        return -1;
    if (strcmp(name, "cosine") == 0)
        return VX_COSINE;
    if (strcmp(name, "euclidean") == 0)
        return VX_EUCLIDEAN;
    if (strcmp(name, "dot-product") == 0)
        return VX_DOT;
    return -1;
}

const char *vx_metric_name(vx_metric m)
{
    switch (m) {
    case VX_COSINE: return "cosine";
    case VX_EUCLIDEAN: return "euclidean";
    case VX_DOT: return "dot-product";
    }
    return "?";
}

const char *vx_tier_name(vx_tier t)
{
    switch (t) {
    case VX_TIER_SCALAR: return "scalar";
    case VX_TIER_AVX2: return "avx2";
    case VX_TIER_AVX512: return "avx512";
    }
    return "?";
}

static float dot_scalar(const float *a, const float *b, size_t dim)
{
    /* Four partial sums: the same association the SIMD tiers use, so tiers
     * differ only by rounding inside each lane. */
    float s[4] = {0, 0, 0, 0};
    size_t i = 0;
    for (; i + 4 <= dim; i += 4)
        for (int k = 0; k < 4; k++)
            s[k] += a[i + k] * b[i + k];
    for (; i < dim; i++)
        s[0] += a[i] * b[i];
    return (s[0] + s[1]) + (s[2] + s[3]);
}

static float l2sq_scalar(const float *a, const float *b, size_t dim)
{
    float s[4] = {0, 0, 0, 0};
    size_t i = 0;
    for (; i + 4 <= dim; i += 4)
        for (int k = 0; k < 4; k++) {
            float d = a[i + k] - b[i + k];
            s[k] += d * d;
        }
    for (; i < dim; i++) {
        float d = a[i] - b[i];
        s[0] += d * d;
    }
    return (s[0] + s[1]) + (s[2] + s[3]);
}

static int32_t dot_i8_scalar(const int8_t *a, const int8_t *b, size_t dim)
{
    int32_t s = 0;
    for (size_t i = 0; i < dim; i++)
        s += (int32_t)a[i] * (int32_t)b[i];
    return s;
}

static void pick(void)
{
    g_tier = VX_TIER_SCALAR;
}

void vx_dist_init(void) { pthread_once(&g_once, pick); }

vx_tier vx_dist_tier(void)
{
    vx_dist_init();
    return g_tier;
}

float vx_dot_f32_tier(vx_tier t, const float *a, const float *b, size_t dim)
{
    (void)t;
    return dot_scalar(a, b, dim);
}

float vx_l2sq_f32_tier(vx_tier t, const float *a, const float *b, size_t dim)
{
    (void)t;
    return l2sq_scalar(a, b, dim);
}

int32_t vx_dot_i8_tier(vx_tier t, const int8_t *a, const int8_t *b, size_t dim)
{
    (void)t;
    return dot_i8_scalar(a, b, dim);
}

float vx_dot_f32(const float *a, const float *b, size_t dim)
{
    return vx_dot_f32_tier(g_tier, a, b, dim);
}

float vx_l2sq_f32(const float *a, const float *b, size_t dim)
{
    return vx_l2sq_f32_tier(g_tier, a, b, dim);
}

float vx_distance(vx_metric m, const float *a, const float *b, size_t dim)
{
    return m == VX_EUCLIDEAN ? vx_l2sq_f32(a, b, dim) : -vx_dot_f32(a, b, dim);
}

float vx_score(vx_metric m, float distance)
{
    return m == VX_EUCLIDEAN ? sqrtf(distance > 0 ? distance : 0) : -distance;
}

float vx_normalize(float *v, size_t dim)
{
    float n = sqrtf(dot_scalar(v, v, dim));
    if (n > 0) {
        float inv = 1.0f / n;
        for (size_t i = 0; i < dim; i++)
            v[i] *= inv;
    }
    return n;
}

float vx_quantize_i8(const float *v, size_t dim, int8_t *codes)
{
    float mx = 0;
    for (size_t i = 0; i < dim; i++)
        mx = fmaxf(mx, fabsf(v[i]));
    float scale = mx > 0 ? mx / 127.0f : 1.0f;
    float inv = 1.0f / scale;
    for (size_t i = 0; i < dim; i++) {
        long q = lrintf(v[i] * inv);
        codes[i] = (int8_t)(q > 127 ? 127 : q < -127 ? -127 : q);
    }
    return scale;
}

int32_t vx_dot_i8(const int8_t *a, const int8_t *b, size_t dim)
{
    return vx_dot_i8_tier(g_tier, a, b, dim);
}
