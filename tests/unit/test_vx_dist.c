/*
 * Unit tests for the distance kernels (agent/vector/vx_dist*.c).
 *
 * Every tier the CPU has is compared with the scalar tier on random vectors
 * of every dim 1..160 and of 127, 128, 129, 255, 256, 257, 384, 768, 1536,
 * from unaligned start offsets (tails and misalignment are where SIMD
 * kernels go wrong); tiers the CPU lacks run as scalar (vx_*_tier's
 * contract) and are then compared trivially.
 *
 * Float tolerance: a sum of n products evaluated in any association order
 * is within (h + 1) * u * M of the exact value, where h is the longest
 * chain of roundings any one product goes through, u = 2^-24 and
 * M = sum |a_i * b_i| (first-order bound). The scalar tier chains n/4 + 3
 * roundings, the AVX2 one n/32 + 10, the AVX-512 one n/64 + 12, so two
 * tiers differ by at most (n/4 + n/32 + 26) * u * M; the tests allow
 * (n/2 + 32) * u * M (4.6e-5 * M at n = 1536). A lost or doubled element
 * errs by about M/n, far above that for every n tested. Integer-valued
 * vectors (|x| <= 8) make every partial sum exact in float, so there every
 * tier must equal the scalar one exactly: that pins the tails bit for bit.
 * The int8 product is integer arithmetic: exact equality.
 */
#include "platform/pl_log.h"
#include "vector/vx_dist.h"
#include "vector/vx_dist_simd.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng_next(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* uniform in [-1, 1) */
static float rng_f(void) { return (float)((double)(rng_next() >> 11) / 9007199254740992.0 * 2.0 - 1.0); }

static const vx_tier k_tiers[] = {VX_TIER_SCALAR, VX_TIER_AVX2, VX_TIER_AVX512};
#define N_TIERS (sizeof k_tiers / sizeof k_tiers[0])

/* dims under test: 1..160 then the named ones */
static size_t dim_at(size_t k)
{
    static const size_t big[] = {255, 256, 257, 383, 384, 385, 768, 1000, 1536};
    return k < 160 ? k + 1 : big[k - 160];
}
#define N_DIMS (160 + 9)
#define MAX_DIM 1536
#define PAD 16

static double sum_abs_prod(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m += fabs((double)a[i] * (double)b[i]);
    return m;
}

static double sum_sq_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)(a[i] - b[i]);
        m += d * d;
    }
    return m;
}

static double tol(size_t n, double m) { return ((double)n / 2.0 + 32.0) * ldexp(1.0, -24) * m; }

Test(vx_dist, tier_names_and_pick)
{
    cr_expect_str_eq(vx_tier_name(VX_TIER_SCALAR), "scalar");
    cr_expect_str_eq(vx_tier_name(VX_TIER_AVX2), "avx2");
    cr_expect_str_eq(vx_tier_name(VX_TIER_AVX512), "avx512");
    vx_dist_init();
    vx_dist_init();
    vx_tier t = vx_dist_tier();
    cr_assert(t == VX_TIER_SCALAR || t == VX_TIER_AVX2 || t == VX_TIER_AVX512);
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (!getenv("OUTPOST_VX_KERNELS")) {
        bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
        cr_expect_eq(t, avx512 ? VX_TIER_AVX512 : avx2 ? VX_TIER_AVX2 : VX_TIER_SCALAR,
                     "picked %s", vx_tier_name(t));
    }
#endif
}

Test(vx_dist, f32_tiers_match_scalar_random)
{
    float *a = malloc((MAX_DIM + PAD) * sizeof *a), *b = malloc((MAX_DIM + PAD) * sizeof *b);
    cr_assert(a && b);
    for (size_t k = 0; k < N_DIMS; k++) {
        size_t n = dim_at(k);
        size_t oa = k % 7, ob = (k * 3) % 5; /* unaligned starts */
        for (size_t i = 0; i < n; i++) {
            a[oa + i] = rng_f() * 4.0f;
            b[ob + i] = rng_f();
        }
        const float *pa = a + oa, *pb = b + ob;
        double m_dot = sum_abs_prod(pa, pb, n), m_l2 = sum_sq_diff(pa, pb, n);
        float dot0 = vx_dot_f32_tier(VX_TIER_SCALAR, pa, pb, n);
        float l20 = vx_l2sq_f32_tier(VX_TIER_SCALAR, pa, pb, n);
        double exact = 0;
        for (size_t i = 0; i < n; i++)
            exact += (double)pa[i] * (double)pb[i];
        cr_assert_leq(fabs(dot0 - exact), tol(n, m_dot), "scalar n=%zu", n);
        for (size_t t = 1; t < N_TIERS; t++) {
            float d = vx_dot_f32_tier(k_tiers[t], pa, pb, n);
            float l = vx_l2sq_f32_tier(k_tiers[t], pa, pb, n);
            cr_assert_leq(fabs((double)d - dot0), tol(n, m_dot), "%s dot n=%zu: %.9g vs %.9g",
                          vx_tier_name(k_tiers[t]), n, d, dot0);
            cr_assert_leq(fabs((double)l - l20), tol(n, m_l2), "%s l2sq n=%zu: %.9g vs %.9g",
                          vx_tier_name(k_tiers[t]), n, l, l20);
        }
        cr_assert_eq(vx_dot_f32(pa, pb, n), vx_dot_f32_tier(vx_dist_tier(), pa, pb, n));
        cr_assert_eq(vx_l2sq_f32(pa, pb, n), vx_l2sq_f32_tier(vx_dist_tier(), pa, pb, n));
    }
    free(a);
    free(b);
}

Test(vx_dist, f32_tiers_exact_on_integers)
{
    float *a = malloc((MAX_DIM + PAD) * sizeof *a), *b = malloc((MAX_DIM + PAD) * sizeof *b);
    cr_assert(a && b);
    for (size_t k = 0; k < N_DIMS; k++) {
        size_t n = dim_at(k);
        size_t oa = (k * 5) % 11, ob = k % 3;
        for (size_t i = 0; i < n; i++) {
            a[oa + i] = (float)((int)(rng_next() % 17) - 8);
            b[ob + i] = (float)((int)(rng_next() % 17) - 8);
        }
        const float *pa = a + oa, *pb = b + ob;
        long dot = 0, l2 = 0;
        for (size_t i = 0; i < n; i++) {
            dot += (long)pa[i] * (long)pb[i];
            l2 += (long)(pa[i] - pb[i]) * (long)(pa[i] - pb[i]);
        }
        for (size_t t = 0; t < N_TIERS; t++) {
            cr_assert_eq(vx_dot_f32_tier(k_tiers[t], pa, pb, n), (float)dot, "%s dot n=%zu",
                         vx_tier_name(k_tiers[t]), n);
            cr_assert_eq(vx_l2sq_f32_tier(k_tiers[t], pa, pb, n), (float)l2, "%s l2sq n=%zu",
                         vx_tier_name(k_tiers[t]), n);
        }
    }
    free(a);
    free(b);
}

Test(vx_dist, f32_reads_no_element_outside_the_rows)
{
    /* NaN around the rows: a kernel that reads one element too many (or
     * lets a masked lane through) returns NaN. */
    float *a = malloc((MAX_DIM + 2 * PAD) * sizeof *a), *b = malloc((MAX_DIM + 2 * PAD) * sizeof *b);
    cr_assert(a && b);
    for (size_t k = 0; k < N_DIMS; k++) {
        size_t n = dim_at(k);
        for (size_t i = 0; i < n + 2 * PAD; i++)
            a[i] = b[i] = NAN;
        for (size_t i = 0; i < n; i++) {
            a[PAD + i] = 1.0f;
            b[PAD + i] = 2.0f;
        }
        for (size_t t = 0; t < N_TIERS; t++) {
            cr_assert_eq(vx_dot_f32_tier(k_tiers[t], a + PAD, b + PAD, n), 2.0f * (float)n);
            cr_assert_eq(vx_l2sq_f32_tier(k_tiers[t], a + PAD, b + PAD, n), (float)n);
        }
    }
    for (size_t t = 0; t < N_TIERS; t++) {
        cr_assert_eq(vx_dot_f32_tier(k_tiers[t], a, b, 0), 0.0f);
        cr_assert_eq(vx_l2sq_f32_tier(k_tiers[t], a, b, 0), 0.0f);
    }
    free(a);
    free(b);
}

Test(vx_dist, i8_tiers_exact)
{
    int8_t *a = malloc(MAX_DIM + PAD), *b = malloc(MAX_DIM + PAD);
    cr_assert(a && b);
    for (size_t k = 0; k < N_DIMS; k++) {
        size_t n = dim_at(k);
        size_t oa = k % 13, ob = (k * 7) % 9;
        for (size_t i = 0; i < n; i++) {
            /* codes in [-127, 127], extremes often (int16 pair limits) */
            uint64_t r = rng_next();
            a[oa + i] = (r & 3) == 0 ? ((r & 4) ? 127 : -127) : (int8_t)((int)((r >> 8) % 255) - 127);
            b[ob + i] = (r & 24) == 0 ? ((r & 32) ? 127 : -127) : (int8_t)((int)((r >> 20) % 255) - 127);
        }
        const int8_t *pa = a + oa, *pb = b + ob;
        int32_t exact = 0;
        for (size_t i = 0; i < n; i++)
            exact += (int32_t)pa[i] * pb[i];
        for (size_t t = 0; t < N_TIERS; t++)
            cr_assert_eq(vx_dot_i8_tier(k_tiers[t], pa, pb, n), exact, "%s n=%zu",
                         vx_tier_name(k_tiers[t]), n);
        cr_assert_eq(vx_dot_i8(pa, pb, n), exact);
    }
    /* all extremes: the largest int16 pair sums the AVX2/BW path makes */
    memset(a, 127, MAX_DIM);
    memset(b, 0x81, MAX_DIM); /* -127 */
    for (size_t t = 0; t < N_TIERS; t++) {
        cr_assert_eq(vx_dot_i8_tier(k_tiers[t], a, b, MAX_DIM), -127 * 127 * MAX_DIM);
        cr_assert_eq(vx_dot_i8_tier(k_tiers[t], b, b, MAX_DIM), 127 * 127 * MAX_DIM);
        cr_assert_eq(vx_dot_i8_tier(k_tiers[t], a, b, 0), 0);
    }
    free(a);
    free(b);
}

#ifdef VX_DIST_HAVE_X86
/* The AVX-512 tier has two int8 kernels (VNNI where the CPU has it, else
 * BW): the tier functions reach only one, so both are called directly. The
 * VNNI one is exact over the whole int8 range, -128 included. */
Test(vx_dist, i8_avx512_variants_exact)
{
    __builtin_cpu_init();
    bool bw = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
    bool vnni = bw && __builtin_cpu_supports("avx512vnni");
    if (!bw)
        cr_skip_test("the CPU lacks AVX-512 BW");
    int8_t *a = malloc(MAX_DIM + PAD), *b = malloc(MAX_DIM + PAD);
    cr_assert(a && b);
    for (size_t k = 0; k < N_DIMS; k++) {
        size_t n = dim_at(k);
        size_t oa = k % 5, ob = (k * 3) % 7;
        for (size_t full = 0; full < 2; full++) {
            for (size_t i = 0; i < n; i++) {
                uint64_t r = rng_next();
                if (full) { /* every int8 */
                    a[oa + i] = (int8_t)(uint8_t)r;
                    b[ob + i] = (int8_t)(uint8_t)(r >> 8);
                } else {
                    a[oa + i] = (int8_t)((int)((r >> 8) % 255) - 127);
                    b[ob + i] = (int8_t)((int)((r >> 24) % 255) - 127);
                }
            }
            const int8_t *pa = a + oa, *pb = b + ob;
            int32_t exact = 0;
            for (size_t i = 0; i < n; i++)
                exact += (int32_t)pa[i] * pb[i];
            if (!full)
                cr_assert_eq(vx_simd_dot_i8_avx512bw(pa, pb, n), exact, "bw n=%zu", n);
            if (vnni)
                cr_assert_eq(vx_simd_dot_i8_avx512vnni(pa, pb, n), exact, "vnni n=%zu full=%zu", n,
                             full);
        }
    }
    memset(a, 0x80, MAX_DIM); /* -128 * -128 everywhere */
    if (vnni)
        cr_assert_eq(vx_simd_dot_i8_avx512vnni(a, a, MAX_DIM), 128 * 128 * MAX_DIM);
    free(a);
    free(b);
}
#endif

Test(vx_dist, quantize_round_trip)
{
    float v[777];
    int8_t c[777];
    for (size_t i = 0; i < 777; i++)
        v[i] = rng_f() * 3.0f;
    v[100] = -3.5f; /* the largest magnitude: code -127 */
    float scale = vx_quantize_i8(v, 777, c);
    cr_assert_float_eq(scale, 3.5f / 127.0f, 1e-7f);
    cr_assert_eq(c[100], -127);
    for (size_t i = 0; i < 777; i++) {
        cr_assert(c[i] >= -127 && c[i] <= 127);
        /* rounding to the nearest code: half a step, plus float slack */
        cr_assert_leq(fabsf(v[i] - scale * (float)c[i]), scale * 0.5f * (1.0f + 1e-5f),
                      "i=%zu v=%g code=%d", i, v[i], c[i]);
    }
    /* the quantized product approximates the float one */
    int8_t c2[777];
    float w[777];
    for (size_t i = 0; i < 777; i++)
        w[i] = rng_f();
    float s2 = vx_quantize_i8(w, 777, c2);
    double approx = (double)scale * s2 * vx_dot_i8(c, c2, 777);
    double exact = 0, bound = 0;
    for (size_t i = 0; i < 777; i++) {
        exact += (double)v[i] * w[i];
        bound += 0.5 * scale * fabs(w[i]) + 0.5 * s2 * fabs(v[i]) + 0.25 * scale * s2;
    }
    cr_assert_leq(fabs(approx - exact), bound);
    /* zero vector: scale 1, codes 0 */
    float z[5] = {0};
    int8_t cz[5] = {1, 1, 1, 1, 1};
    cr_assert_eq(vx_quantize_i8(z, 5, cz), 1.0f);
    for (int i = 0; i < 5; i++)
        cr_assert_eq(cz[i], 0);
}

Test(vx_dist, normalize)
{
    float v[3] = {3, 0, 4};
    cr_assert_float_eq(vx_normalize(v, 3), 5.0f, 1e-6f);
    cr_assert_float_eq(v[0], 0.6f, 1e-6f);
    cr_assert_eq(v[1], 0.0f);
    cr_assert_float_eq(v[2], 0.8f, 1e-6f);
    float big[1000];
    for (int i = 0; i < 1000; i++)
        big[i] = rng_f() * 100.0f;
    float n = vx_normalize(big, 1000);
    cr_assert_gt(n, 0.0f);
    cr_assert_float_eq(vx_dot_f32(big, big, 1000), 1.0f, 1e-5f);
    float z[4] = {0};
    cr_assert_eq(vx_normalize(z, 4), 0.0f);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(z[i], 0.0f);
}

Test(vx_dist, metric_parse_and_name)
{
    cr_expect_eq(vx_metric_parse("cosine"), VX_COSINE);
    cr_expect_eq(vx_metric_parse("euclidean"), VX_EUCLIDEAN);
    cr_expect_eq(vx_metric_parse("dot-product"), VX_DOT);
    cr_expect_eq(vx_metric_parse("Cosine"), -1);
    cr_expect_eq(vx_metric_parse("dot"), -1);
    cr_expect_eq(vx_metric_parse(""), -1);
    cr_expect_eq(vx_metric_parse(NULL), -1);
    for (int m = 0; m <= 2; m++)
        cr_expect_eq(vx_metric_parse(vx_metric_name((vx_metric)m)), m);
}

Test(vx_dist, distance_and_score_by_metric)
{
    /* The Vectorize example: cosine similarity of a vector with itself is 1. */
    float q[5] = {0.12f, 0.45f, 0.67f, 0.89f, 0.23f};
    float r[5];
    memcpy(r, q, sizeof q);
    vx_normalize(q, 5);
    vx_normalize(r, 5);
    float d = vx_distance(VX_COSINE, q, r, 5);
    cr_assert_float_eq(vx_score(VX_COSINE, d), 1.0f, 1e-6f);
    /* orthogonal: similarity 0; opposite: -1 */
    float x[2] = {1, 0}, y[2] = {0, 1}, nx[2] = {-1, 0};
    cr_assert_eq(vx_score(VX_COSINE, vx_distance(VX_COSINE, x, y, 2)), 0.0f);
    cr_assert_eq(vx_score(VX_COSINE, vx_distance(VX_COSINE, x, nx, 2)), -1.0f);
    /* closer means smaller distance */
    cr_assert_lt(vx_distance(VX_COSINE, x, x, 2), vx_distance(VX_COSINE, x, y, 2));
    /* euclidean: (0,0)-(3,4): distance 25 internally, score 5 */
    float o[2] = {0, 0}, p[2] = {3, 4};
    cr_assert_eq(vx_distance(VX_EUCLIDEAN, o, p, 2), 25.0f);
    cr_assert_eq(vx_score(VX_EUCLIDEAN, 25.0f), 5.0f);
    cr_assert_eq(vx_score(VX_EUCLIDEAN, -1e-7f), 0.0f); /* rounding below 0 */
    /* dot-product: (1,2,3).(4,5,6) = 32, distance -32 */
    float a[3] = {1, 2, 3}, b[3] = {4, 5, 6};
    cr_assert_eq(vx_distance(VX_DOT, a, b, 3), -32.0f);
    cr_assert_eq(vx_score(VX_DOT, vx_distance(VX_DOT, a, b, 3)), 32.0f);
}

/* Criterion runs each test in its own process, so the tier is picked
 * afresh here, after the variable is set. */
Test(vx_dist, env_forces_scalar)
{
    setenv("OUTPOST_VX_KERNELS", "scalar", 1);
    cr_assert_eq(vx_dist_tier(), VX_TIER_SCALAR);
    float a[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    cr_assert_eq(vx_dot_f32(a, a, 9), 285.0f);
}

Test(vx_dist, env_forces_avx2_when_present)
{
    setenv("OUTPOST_VX_KERNELS", "avx2", 1);
    vx_tier t = vx_dist_tier();
    cr_assert(t == VX_TIER_AVX2 || t == VX_TIER_SCALAR);
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        cr_assert_eq(t, VX_TIER_AVX2);
#endif
}

Test(vx_dist, env_unknown_is_warned_and_ignored)
{
    char path[] = "/tmp/vx_dist_logXXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    pl_log_set_fd(fd);
    setenv("OUTPOST_VX_KERNELS", "sse9", 1);
    vx_tier t = vx_dist_tier();
    pl_log_set_fd(-1);
    char buf[1024] = {0};
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    close(fd);
    unlink(path);
    cr_assert_gt(n, 0);
    cr_assert(strstr(buf, "vx.kernels.unknown") != NULL, "log: %s", buf);
    cr_assert(strstr(buf, "sse9") != NULL);
    cr_assert(t == VX_TIER_SCALAR || t == VX_TIER_AVX2 || t == VX_TIER_AVX512);
}
