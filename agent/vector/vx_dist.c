/*
 * vx_dist: the scalar kernels and the dispatch. See vx_dist.h. The SIMD
 * tiers live in vx_dist_simd.c (compiled with target attributes).
 *
 * Dispatch: the tier is picked once (pthread_once) from CPUID and
 * OUTPOST_VX_KERNELS, and the three kernels of that tier are stored in
 * atomic function pointers read with relaxed loads (a plain load on x86:
 * nothing on the hot path but an indirect call). Before the pick the
 * pointers hold resolvers that run vx_dist_init() and call on, so callers
 * that never call vx_dist_init() still get the best tier.
 *
 * Tiers: avx2 = AVX2 + FMA; avx512 = AVX-512 F + BW (f32 with 512-bit
 * FMAs, int8 with vpdpbusd where the CPU has VNNI, else vpmaddubsw). A
 * forced tier the CPU lacks falls back to the best one it has below it,
 * with a warning; an unknown value of OUTPOST_VX_KERNELS is warned about
 * and ignored.
 */
#include "vector/vx_dist.h"

#include "platform/pl_log.h"
#include "vector/vx_dist_simd.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

typedef float (*vx_f32_fn)(const float *, const float *, size_t);
typedef int32_t (*vx_i8_fn)(const int8_t *, const int8_t *, size_t);

static float dot_resolve(const float *a, const float *b, size_t dim);
static float l2sq_resolve(const float *a, const float *b, size_t dim);
static int32_t dot_i8_resolve(const int8_t *a, const int8_t *b, size_t dim);

static vx_tier g_tier = VX_TIER_SCALAR; /* written inside pthread_once only */
static bool g_have[3];                  /* tiers the CPU has; idem */
static bool g_have_vnni;                /* idem */
static _Atomic(vx_f32_fn) g_dot = dot_resolve;
static _Atomic(vx_f32_fn) g_l2sq = l2sq_resolve;
static _Atomic(vx_i8_fn) g_dot_i8 = dot_i8_resolve;
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

/* The kernels of tier t, which the CPU must have (g_have[t]). */
static vx_f32_fn tier_dot(vx_tier t)
{
#ifdef VX_DIST_HAVE_X86
    if (t == VX_TIER_AVX512)
        return vx_simd_dot_f32_avx512;
    if (t == VX_TIER_AVX2)
        return vx_simd_dot_f32_avx2;
#endif
    (void)t;
    return dot_scalar;
}

static vx_f32_fn tier_l2sq(vx_tier t)
{
#ifdef VX_DIST_HAVE_X86
    if (t == VX_TIER_AVX512)
        return vx_simd_l2sq_f32_avx512;
    if (t == VX_TIER_AVX2)
        return vx_simd_l2sq_f32_avx2;
#endif
    (void)t;
    return l2sq_scalar;
}

static vx_i8_fn tier_dot_i8(vx_tier t)
{
#ifdef VX_DIST_HAVE_X86
    if (t == VX_TIER_AVX512)
        return g_have_vnni ? vx_simd_dot_i8_avx512vnni : vx_simd_dot_i8_avx512bw;
    if (t == VX_TIER_AVX2)
        return vx_simd_dot_i8_avx2;
#endif
    (void)t;
    return dot_i8_scalar;
}

static void detect(void)
{
    g_have[VX_TIER_SCALAR] = true;
#ifdef VX_DIST_HAVE_X86
    /* libgcc's checks include the OS enabling the YMM/ZMM state (XCR0). */
    __builtin_cpu_init();
    g_have[VX_TIER_AVX2] = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    g_have[VX_TIER_AVX512] = g_have[VX_TIER_AVX2] && __builtin_cpu_supports("avx512f") &&
                             __builtin_cpu_supports("avx512bw");
    g_have_vnni = g_have[VX_TIER_AVX512] && __builtin_cpu_supports("avx512vnni");
#endif
}

static void pick(void)
{
    detect();
    vx_tier limit = VX_TIER_AVX512;
    bool forced = false;
    const char *env = getenv("OUTPOST_VX_KERNELS");
    if (env && *env) {
        if (strcmp(env, "scalar") == 0)
            limit = VX_TIER_SCALAR, forced = true;
        else if (strcmp(env, "avx2") == 0)
            limit = VX_TIER_AVX2, forced = true;
        else if (strcmp(env, "avx512") == 0)
            limit = VX_TIER_AVX512, forced = true;
        else
            PL_LOG_WARN("vx.kernels.unknown", "OUTPOST_VX_KERNELS", env, "expected",
                        "scalar|avx2|avx512");
    }
    vx_tier t = limit;
    while (t > VX_TIER_SCALAR && !g_have[t])
        t = (vx_tier)(t - 1);
    if (forced && t != limit)
        PL_LOG_WARN("vx.kernels.unsupported", "requested", vx_tier_name(limit), "using",
                    vx_tier_name(t), "reason", "the CPU lacks the instructions");
    g_tier = t;
    atomic_store_explicit(&g_dot, tier_dot(t), memory_order_relaxed);
    atomic_store_explicit(&g_l2sq, tier_l2sq(t), memory_order_relaxed);
    atomic_store_explicit(&g_dot_i8, tier_dot_i8(t), memory_order_relaxed);
}

void vx_dist_init(void) { pthread_once(&g_once, pick); }

vx_tier vx_dist_tier(void)
{
    vx_dist_init();
    return g_tier;
}

/* A tier the CPU lacks (or no such tier) runs as scalar. */
static vx_tier usable(vx_tier t)
{
    vx_dist_init();
    return (t == VX_TIER_AVX2 || t == VX_TIER_AVX512) && g_have[t] ? t : VX_TIER_SCALAR;
}

float vx_dot_f32_tier(vx_tier t, const float *a, const float *b, size_t dim)
{
    return tier_dot(usable(t))(a, b, dim);
}

float vx_l2sq_f32_tier(vx_tier t, const float *a, const float *b, size_t dim)
{
    return tier_l2sq(usable(t))(a, b, dim);
}

int32_t vx_dot_i8_tier(vx_tier t, const int8_t *a, const int8_t *b, size_t dim)
{
    return tier_dot_i8(usable(t))(a, b, dim);
}

static float dot_resolve(const float *a, const float *b, size_t dim)
{
    vx_dist_init();
    return atomic_load_explicit(&g_dot, memory_order_relaxed)(a, b, dim);
}

static float l2sq_resolve(const float *a, const float *b, size_t dim)
{
    vx_dist_init();
    return atomic_load_explicit(&g_l2sq, memory_order_relaxed)(a, b, dim);
}

static int32_t dot_i8_resolve(const int8_t *a, const int8_t *b, size_t dim)
{
    vx_dist_init();
    return atomic_load_explicit(&g_dot_i8, memory_order_relaxed)(a, b, dim);
}

float vx_dot_f32(const float *a, const float *b, size_t dim)
{
    return atomic_load_explicit(&g_dot, memory_order_relaxed)(a, b, dim);
}

float vx_l2sq_f32(const float *a, const float *b, size_t dim)
{
    return atomic_load_explicit(&g_l2sq, memory_order_relaxed)(a, b, dim);
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
    return atomic_load_explicit(&g_dot_i8, memory_order_relaxed)(a, b, dim);
}
