/*
 * Unit tests for the CPU kernels (plugins/nn/nn_kern*.c).
 *
 * References: f16/bf16 conversions are checked exhaustively against
 * definitions computed in double (and against the F16C instructions where
 * the CPU has them). Every kernel of every tier the CPU has is checked
 * against the scalar tier and against a double-precision evaluation of the
 * same quantized data; tiers the CPU lacks are skipped with the reason.
 *
 * Tolerances: the quantized dot products are exact integers in every tier,
 * so tiers differ only in the order of float operations on the per-block
 * terms. For a result built from m float operations (additions,
 * multiplications, FMAs) over terms whose magnitudes sum to M, any order is
 * within m * u * M of the exact value (u = 2^-24, first-order bound), so the
 * tests allow m = (terms + 8) with 2u, for the scalar and the SIMD results
 * alike. M counts |w_i * a_i| product by product (a kernel may scale partial
 * integer sums, SIMD lanes, before adding them). A wrong index or a lost
 * block would err by about M / terms, orders of magnitude above that. Element-wise functions built on exp/erf
 * approximations are allowed a few ulp (stated at each test).
 */
#include "nn_kern.h"
#include "nn_pool.h"

#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* ======================================================================== */
/* Helpers                                                                   */
/* ======================================================================== */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng_u64(void)
{
    /* splitmix64: deterministic, so a failure reproduces */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* uniform in [-1, 1) */
static float rng_f(void)
{
    return (float)((double)(rng_u64() >> 11) * 0x1p-53 * 2.0 - 1.0);
}

static void fill(float *x, int64_t n, float scale)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = rng_f() * scale;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void *xaligned(size_t n)
{
    void *p = aligned_alloc(64, (n + 63) / 64 * 64);
    cr_assert_not_null(p);
    return p;
}

static const nn_tier all_tiers[] = {NN_TIER_SCALAR, NN_TIER_AVX2, NN_TIER_AVX512};

/* Switches to tier t or skips the calling test, visibly. */
static void need_tier(nn_tier t)
{
    if (!nn_tier_available(t))
        cr_skip_test("this CPU cannot run the %s kernels", nn_tier_name(t));
    cr_assert_eq(nn_kern_select(t), t);
}

/* One test per tier: name_scalar, name_avx2, name_avx512. */
#define TIER_TESTS(suite, name)                                                                  \
    static void name(nn_tier tier);                                                              \
    Test(suite, name##_scalar) { need_tier(NN_TIER_SCALAR); name(NN_TIER_SCALAR); }              \
    Test(suite, name##_avx2) { need_tier(NN_TIER_AVX2); name(NN_TIER_AVX2); }                    \
    Test(suite, name##_avx512) { need_tier(NN_TIER_AVX512); name(NN_TIER_AVX512); }

static const double U = 0x1p-24; /* unit roundoff of f32 */

/* ======================================================================== */
/* f16 / bf16                                                                */
/* ======================================================================== */

/* The value of an IEEE half, from its definition. */
static double f16_value(uint16_t h)
{
    int sign = h >> 15, exp = (h >> 10) & 31, mant = h & 1023;
    double v = exp == 0 ? ldexp(mant, -24) : ldexp(1024 + mant, exp - 25);
    return sign ? -v : v;
}

Test(nn_f16, to_f32_exhaustive)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float f = nn_f16_to_f32((uint16_t)h);
        int exp = (h >> 10) & 31;
        if (exp == 31 && (h & 1023)) {
            cr_assert(isnan(f), "0x%04x", h);
            /* payload kept in the top mantissa bits, quiet bit set (F16C) */
            cr_assert_eq((f32_bits(f) >> 13) & 1023, (h & 1023) | 0x200);
            cr_assert_eq(f32_bits(f) >> 31, h >> 15);
        } else if (exp == 31) {
            cr_assert(isinf(f) && (f < 0) == (h >> 15), "0x%04x", h);
        } else {
            cr_assert_eq((double)f, f16_value((uint16_t)h), "0x%04x", h);
            cr_assert_eq(signbit(f) != 0, (h >> 15) != 0, "0x%04x sign", h);
        }
    }
}

Test(nn_f16, from_f32_round_trip_and_ties)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float f = nn_f16_to_f32((uint16_t)h);
        uint16_t back = nn_f32_to_f16(f);
        if (isnan(f))
            cr_assert_eq(back, h | 0x200, "NaN 0x%04x quieted, payload kept", h);
        else
            cr_assert_eq(back, h, "0x%04x -> %g -> 0x%04x", h, f, back);
    }
    /* Between each pair of adjacent finite positive halves: the exact midpoint
     * goes to the even one, one f32 ulp either side to the nearer. */
    for (uint32_t h = 0; h < 0x7bff; h++) {
        double a = f16_value((uint16_t)h), b = f16_value((uint16_t)(h + 1));
        float mid = (float)((a + b) / 2); /* exact: halves have 11 bits */
        cr_assert_eq((double)mid, (a + b) / 2);
        uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
        cr_assert_eq(nn_f32_to_f16(mid), even, "tie above 0x%04x", h);
        cr_assert_eq(nn_f32_to_f16(-mid), even | 0x8000, "negative tie above 0x%04x", h);
        cr_assert_eq(nn_f32_to_f16(nextafterf(mid, 0)), h);
        cr_assert_eq(nn_f32_to_f16(nextafterf(mid, INFINITY)), h + 1);
    }
    /* Overflow: 65504 is the largest half; 65520 (the tie with 2^16) and up
     * round to infinity, just below stays finite. */
    cr_assert_eq(nn_f32_to_f16(65504.0f), 0x7bff);
    cr_assert_eq(nn_f32_to_f16(nextafterf(65520.0f, 0)), 0x7bff);
    cr_assert_eq(nn_f32_to_f16(65520.0f), 0x7c00);
    cr_assert_eq(nn_f32_to_f16(1e10f), 0x7c00);
    cr_assert_eq(nn_f32_to_f16(-INFINITY), 0xfc00);
    cr_assert_eq(nn_f32_to_f16(0x1p-25f), 0x0000, "tie with zero goes to even zero");
    cr_assert_eq(nn_f32_to_f16(nextafterf(0x1p-25f, 1)), 0x0001);
    cr_assert_eq(nn_f32_to_f16(-0.0f), 0x8000);
}

#if defined(__x86_64__)
__attribute__((target("f16c"))) static uint16_t hw_f32_to_f16(float f)
{
    return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
}

__attribute__((target("f16c"))) static float hw_f16_to_f32(uint16_t h)
{
    return _cvtsh_ss(h);
}
#endif

Test(nn_f16, matches_f16c_hardware)
{
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("f16c"))
        cr_skip_test("this CPU has no F16C instructions to compare with");
    for (uint32_t h = 0; h < 65536; h++) {
        uint32_t a = f32_bits(nn_f16_to_f32((uint16_t)h)), b = f32_bits(hw_f16_to_f32((uint16_t)h));
        cr_assert_eq(a, b, "0x%04x: 0x%08x vs F16C 0x%08x", h, a, b);
    }
    /* Every exponent, random mantissas, NaNs and denormals included. */
    for (uint32_t i = 0; i < (1u << 22); i++) {
        uint32_t u = (uint32_t)rng_u64();
        if (i < 512)
            u = (u & 0x807fffff) | (i << 23); /* force each exponent and sign */
        float f = bits_f32(u);
        cr_assert_eq(nn_f32_to_f16(f), hw_f32_to_f16(f), "0x%08x", u);
    }
#else
    cr_skip_test("not an x86-64 build");
#endif
}

Test(nn_bf16, exhaustive)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float f = nn_bf16_to_f32((uint16_t)h);
        cr_assert_eq(f32_bits(f), h << 16);
        uint16_t back = nn_f32_to_bf16(f);
        if (isnan(f)) {
            cr_assert(isnan(nn_bf16_to_f32(back)), "NaN 0x%04x stays NaN", h);
            cr_assert_eq(back, h | 64);
            continue;
        }
        cr_assert_eq(back, h, "0x%04x", h);
        /* The midpoint to the next bf16 (when finite and both finite) is a
         * tie: it goes to the even one. */
        if ((h & 0x7fff) < 0x7f7f) {
            uint32_t mid = (h << 16) | 0x8000;
            uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
            cr_assert_eq(nn_f32_to_bf16(bits_f32(mid)), even, "tie above 0x%04x", h);
            cr_assert_eq(nn_f32_to_bf16(bits_f32(mid - 1)), h);
            cr_assert_eq(nn_f32_to_bf16(bits_f32(mid + 1)), (uint16_t)(h + 1));
        }
    }
    cr_assert_eq(nn_f32_to_bf16(bits_f32(0x7f7fffff)), 0x7f80, "max float rounds to inf");
    /* A signalling NaN whose payload is all in the low bits stays a NaN. */
    cr_assert(isnan(nn_bf16_to_f32(nn_f32_to_bf16(bits_f32(0x7f800001)))));
}

static void f16_rows(nn_tier tier)
{
    (void)tier;
    for (int64_t n = 0; n <= 70; n++) {
        float x[70] = {0};
        uint16_t h[70] = {0}, h2[70];
        for (int64_t i = 0; i < n; i++)
            x[i] = rng_f() * (i % 7 == 0 ? 70000.0f : i % 5 == 0 ? 1e-6f : 3.0f);
        nn_f32_to_f16_row(x, h, n);
        for (int64_t i = 0; i < n; i++) {
            h2[i] = nn_f32_to_f16(x[i]);
            cr_assert_eq(h[i], h2[i], "n=%ld i=%ld", (long)n, (long)i);
        }
        float back[70];
        nn_dequantize_row(NN_F16, h, back, n);
        for (int64_t i = 0; i < n; i++)
            cr_assert_eq(f32_bits(back[i]), f32_bits(nn_f16_to_f32(h[i])));
    }
}
TIER_TESTS(nn_f16, f16_rows)

/* ======================================================================== */
/* Quantization                                                              */
/* ======================================================================== */

Test(nn_quant, types_and_row_bytes)
{
    cr_assert_eq(nn_row_bytes(NN_Q4_1, 576), 18 * 20);
    cr_assert_eq(nn_row_bytes(NN_Q4_0, 64), 2 * 18);
    cr_assert_eq(nn_row_bytes(NN_Q8_0, 32), 34);
    cr_assert_eq(nn_row_bytes(NN_F32, 5), 20);
    cr_assert_eq(nn_row_bytes(NN_F16, 5), 10);
    cr_assert_eq(nn_row_bytes(NN_BF16, 3), 6);
    cr_assert_eq(nn_row_bytes(NN_Q4_1, 33), 0, "not a multiple of the block");
    cr_assert_eq(nn_row_bytes((nn_type)6, 32), 0, "Q5_0 is not supported");
    cr_assert(nn_type_supported(30) && !nn_type_supported(12));
    cr_assert_str_eq(nn_type_name(NN_Q4_1), "Q4_1");
    cr_assert_str_eq(nn_type_name((nn_type)99), "?");
    cr_assert_eq(nn_act_row_bytes(NN_Q4_1, 576), 18 * sizeof(nn_block_q8a));
    cr_assert_eq(nn_act_row_bytes(NN_F16, 384), 384 * sizeof(float));
}

/* Hand-checked blocks: ggml's reference rounding, including the clamp of
 * Q4_0's positive extreme and Q4_1's offset. */
Test(nn_quant, known_blocks)
{
    float x[32];
    for (int i = 0; i < 32; i++)
        x[i] = (float)(i - 16) / 16.0f; /* -1 .. 0.9375 */
    nn_block_q4_0 q40;
    nn_quantize_row(NN_Q4_0, x, &q40, 32);
    /* max magnitude is -1 (x[0]) -> d = 1/8, x/d + 8.5 -> i/2 + 0.5 */
    cr_assert_eq(nn_f16_to_f32(q40.d), 0.125f);
    for (int j = 0; j < 16; j++) {
        /* x[j] * 8 + 8.5 = j/2 + 0.5; x[j+16] * 8 + 8.5 = j/2 + 8.5 */
        int lo = (int)((float)j / 2 + 0.5f), hi = (int)((float)j / 2 + 8.5f);
        cr_assert_eq(q40.qs[j] & 15, lo, "elem %d", j);
        cr_assert_eq(q40.qs[j] >> 4, hi > 15 ? 15 : hi, "elem %d", j + 16);
    }
    cr_assert_eq(q40.qs[0] & 15, 0, "-1 -> nibble 0 (value -8 d)");
    cr_assert_eq(q40.qs[15] >> 4, 15, "0.9375 -> 16, clamped to 15");

    nn_block_q4_1 q41;
    nn_quantize_row(NN_Q4_1, x, &q41, 32);
    cr_assert_eq(nn_f16_to_f32(q41.m), -1.0f);
    cr_assert_eq(nn_f16_to_f32(q41.d), nn_f16_to_f32(nn_f32_to_f16(1.9375f / 15)));
    cr_assert_eq(q41.qs[0] & 15, 0);
    cr_assert_eq(q41.qs[15] >> 4, 15);

    nn_block_q8_0 q8;
    nn_quantize_row(NN_Q8_0, x, &q8, 32);
    cr_assert_eq(q8.qs[0], -127);
    cr_assert_eq(q8.qs[16], 0);
    cr_assert_eq(q8.qs[24], (int8_t)roundf(0.5f * (1.0f / (1.0f / 127))));

    /* All-zero blocks quantize to zero scale and zero values. */
    float z[32] = {0};
    nn_quantize_row(NN_Q4_0, z, &q40, 32);
    cr_assert_eq(nn_f16_to_f32(q40.d), 0.0f); /* -0 (max / -8), as in ggml */
    nn_quantize_row(NN_Q8_0, z, &q8, 32);
    cr_assert_eq(q8.d, 0);
    nn_block_q8a a;
    nn_quantize_row_q8a(z, &a, 32);
    cr_assert(a.d == 0.0f && a.s == 0.0f);
}

/* Round trips stay within the rounding step (plus the f16 rounding of the
 * stored scale and minimum, which moves every value by at most |q| times the
 * scale's rounding error). */
Test(nn_quant, round_trip_error_bounds)
{
    enum { N = 32 * 64 };
    static float x[N], y[N];
    static uint8_t buf[N * 4];
    for (int trial = 0; trial < 20; trial++) {
        fill(x, N, trial % 2 ? 100.0f : 0.01f);
        for (int i = 0; i < N; i += 97)
            x[i] *= 8; /* outliers */
        const nn_type types[] = {NN_Q4_0, NN_Q4_1, NN_Q8_0, NN_F16, NN_BF16, NN_F32};
        for (size_t t = 0; t < sizeof types / sizeof *types; t++) {
            nn_type ty = types[t];
            nn_quantize_row(ty, x, buf, N);
            nn_dequantize_row(ty, buf, y, N);
            for (int b = 0; b < N / 32; b++) {
                float amax = 0, mn = x[b * 32], mx = x[b * 32];
                for (int j = 0; j < 32; j++) {
                    amax = fmaxf(amax, fabsf(x[b * 32 + j]));
                    mn = fminf(mn, x[b * 32 + j]);
                    mx = fmaxf(mx, x[b * 32 + j]);
                }
                double bound;
                switch (ty) {
                case NN_Q4_0: /* step amax/8; +8 clamps to +7: a full step */
                    bound = amax / 8.0 * (1 + 0x1p-10) * 1.0001 + 8 * amax / 8.0 * 0x1p-11;
                    break;
                case NN_Q4_1: /* half a step (range/15), f16 of d and m */
                    bound = (mx - mn) / 15.0 * (0.5 + 15 * 0x1p-11) + fabs(mn) * 0x1p-11 +
                            1e-6 * (mx - mn);
                    break;
                case NN_Q8_0:
                    bound = amax / 127.0 * (0.5 + 127 * 0x1p-11) * 1.0001;
                    break;
                default:
                    bound = 0;
                    break;
                }
                for (int j = 0; j < 32; j++) {
                    double v = x[b * 32 + j], e = fabs((double)y[b * 32 + j] - v);
                    if (ty == NN_F16)
                        bound = fabs(v) * 0x1p-11 + 0x1p-25;
                    else if (ty == NN_BF16)
                        bound = fabs(v) * 0x1p-8;
                    cr_assert(e <= bound, "%s block %d elem %d: %g vs %g (err %g > %g)",
                              nn_type_name(ty), b, j, y[b * 32 + j], v, e, bound);
                }
            }
        }
    }
}

static void q8a_blocks(nn_tier tier)
{
    enum { N = 32 * 40 };
    static float x[N];
    static nn_block_q8a a[N / 32], ref[N / 32];
    for (int trial = 0; trial < 50; trial++) {
        fill(x, N, trial % 3 == 0 ? 1e-3f : 50.0f);
        if (trial % 5 == 1) /* exact ties: x * 127/amax lands on .5 */
            for (int i = 0; i < N; i++)
                x[i] = (float)((int)(rng_u64() % 255) - 127) * 0.5f;
        for (int i = 0; i < 32; i++)
            x[64 + i] = 0; /* an all-zero block */
        nn_quantize_row_q8a(x, a, N);
        nn_kern_select(NN_TIER_SCALAR);
        nn_quantize_row_q8a(x, ref, N);
        nn_kern_select(tier);
        for (int b = 0; b < N / 32; b++) {
            /* Every tier rounds the same way: identical bytes. */
            cr_assert_eq(f32_bits(a[b].d), f32_bits(ref[b].d), "block %d d", b);
            cr_assert_eq(f32_bits(a[b].s), f32_bits(ref[b].s), "block %d s", b);
            cr_assert_arr_eq(a[b].qs, ref[b].qs, 32, "block %d quants", b);
            int sum = 0;
            float amax = 0;
            for (int j = 0; j < 32; j++) {
                sum += a[b].qs[j];
                amax = fmaxf(amax, fabsf(x[b * 32 + j]));
            }
            /* d and s are the values ggml's f16 fields hold (s from the
             * unrounded scale), as llama.cpp's quantize_row_q8_1 makes them. */
            const float d = amax / 127.0f;
            cr_assert_eq(f32_bits(a[b].d), f32_bits(nn_f16_to_f32(nn_f32_to_f16(d))), "block %d", b);
            cr_assert_eq(f32_bits(a[b].s), f32_bits(nn_f16_to_f32(nn_f32_to_f16(d * (float)sum))),
                         "block %d", b);
            for (int j = 0; j < 32; j++) {
                cr_assert(a[b].qs[j] >= -127 && a[b].qs[j] <= 127);
                /* qs was rounded against the unrounded scale; d itself is
                 * within half an f16 ulp of it: 2^-11 relative, or 2^-25
                 * absolute where the scale is an f16 subnormal (as it is in
                 * ggml for such small activations too). */
                double err = fabs((double)a[b].qs[j] * d - x[b * 32 + j]);
                cr_assert(err <= 0.5 * d * (1 + 1e-5) + 1e-30, "block %d elem %d", b, j);
                cr_assert(fabs((double)a[b].d - d) <= fmax(d * 0x1p-11, 0x1p-25), "block %d", b);
            }
        }
    }
}
TIER_TESTS(nn_quant, q8a_blocks)

/* ======================================================================== */
/* Matrix products                                                           */
/* ======================================================================== */

typedef struct test_mat {
    nn_mat W;
    void *data;
    float *deq; /* rows x cols, dequantized */
} test_mat;

static void mat_make(test_mat *m, nn_type t, int64_t rows, int64_t cols)
{
    size_t rb = nn_row_bytes(t, cols);
    cr_assert(rb > 0);
    m->data = xaligned(rb * (size_t)rows);
    m->deq = xaligned(sizeof(float) * (size_t)(rows * cols));
    float *row = malloc(sizeof(float) * (size_t)cols);
    for (int64_t r = 0; r < rows; r++) {
        fill(row, cols, r % 3 == 0 ? 0.05f : 1.0f);
        if (r % 7 == 0) /* some rows entirely non-negative (Q4_1 m > 0) */
            for (int64_t c = 0; c < cols; c++)
                row[c] = fabsf(row[c]) + 0.25f;
        uint8_t *dst = (uint8_t *)m->data + rb * (size_t)r;
        nn_quantize_row(t, row, dst, cols);
        nn_dequantize_row(t, dst, m->deq + r * cols, cols);
    }
    free(row);
    m->W = (nn_mat){.type = t, .rows = rows, .cols = cols, .data = m->data, .row_bytes = rb};
}

static void mat_free(test_mat *m)
{
    free(m->data);
    free(m->deq);
}

/* The exact value (in double) of output (r, j) from the same quantized data
 * the kernels see, and the bound on float rounding (see the file comment). */
static void ref_output(const test_mat *m, int64_t r, const void *act, int j, double *val,
                       double *tol)
{
    int64_t k = m->W.cols;
    size_t arow = nn_act_row_bytes(m->W.type, k);
    const void *a = (const uint8_t *)act + arow * (size_t)j;
    const float *w = m->deq + r * k;
    double sum = 0, mag = 0;
    int64_t terms;
    if (m->W.type == NN_F32 || m->W.type == NN_F16 || m->W.type == NN_BF16) {
        const float *x = a;
        for (int64_t c = 0; c < k; c++) {
            sum += (double)w[c] * x[c];
            mag += fabs((double)w[c] * x[c]);
        }
        terms = k;
    } else {
        const nn_block_q8a *qa = a;
        const uint8_t *row = (const uint8_t *)m->W.data + m->W.row_bytes * (size_t)r;
        for (int64_t b = 0; b < k / 32; b++) {
            double dw, mw = 0;
            int isum = 0, iabs = 0;
            if (m->W.type == NN_Q4_0) {
                const nn_block_q4_0 *q = (const nn_block_q4_0 *)row + b;
                dw = nn_f16_to_f32(q->d);
                for (int i = 0; i < 16; i++) {
                    int p0 = ((q->qs[i] & 15) - 8) * qa[b].qs[i];
                    int p1 = ((q->qs[i] >> 4) - 8) * qa[b].qs[i + 16];
                    isum += p0 + p1;
                    iabs += abs(p0) + abs(p1);
                }
            } else if (m->W.type == NN_Q4_1) {
                const nn_block_q4_1 *q = (const nn_block_q4_1 *)row + b;
                dw = nn_f16_to_f32(q->d);
                mw = nn_f16_to_f32(q->m);
                for (int i = 0; i < 16; i++) {
                    int p0 = (q->qs[i] & 15) * qa[b].qs[i], p1 = (q->qs[i] >> 4) * qa[b].qs[i + 16];
                    isum += p0 + p1;
                    iabs += abs(p0) + abs(p1);
                }
            } else {
                const nn_block_q8_0 *q = (const nn_block_q8_0 *)row + b;
                dw = nn_f16_to_f32(q->d);
                for (int i = 0; i < 32; i++) {
                    isum += q->qs[i] * qa[b].qs[i];
                    iabs += abs(q->qs[i] * qa[b].qs[i]);
                }
            }
            double t1 = dw * qa[b].d * isum, t2 = mw * qa[b].s;
            sum += t1 + t2;
            /* A kernel may scale partial integer sums (SIMD lanes) before
             * adding them: bound those by the sum of |products|. */
            mag += fabs(dw * qa[b].d) * iabs + fabs(t2);
        }
        terms = 2 * (k / 32);
    }
    *val = sum;
    *tol = (double)(terms + 8) * 2 * U * mag + 1e-30;
}

/* Runs W x act for n rows on the current tier into y (n x rows, ldy = rows + 3
 * so row strides are not the matrix height). */
static void run_matmul(const nn_mat *W, const void *act, int n, float *y, int64_t ldy)
{
    nn_matmul(W, act, n, y, ldy, 0, 1);
}

static void check_matmul(nn_tier tier, nn_type t, int64_t rows, int64_t k, int n, bool repack)
{
    test_mat m;
    mat_make(&m, t, rows, k);
    nn_mat W = m.W;
    void *packed = NULL;
    if (repack) {
        size_t pb = nn_mat_repack_bytes(&m.W);
        cr_assert(pb > 0);
        packed = xaligned(pb);
        W = nn_mat_repack(&m.W, packed);
        cr_assert_eq(W.layout, NN_LAYOUT_R16);
    }
    float *x = xaligned(sizeof(float) * (size_t)(n * (k + 5)));
    fill(x, n * (k + 5), 2.0f);
    size_t arow = nn_act_row_bytes(t, k);
    void *act = xaligned(arow * (size_t)n);
    nn_act_prepare(t, x, k + 5, n, k, act, 0, 1);

    int64_t ldy = rows + 3;
    float *y = xaligned(sizeof(float) * (size_t)(n * ldy));
    float *ys = xaligned(sizeof(float) * (size_t)(n * ldy));
    for (int64_t i = 0; i < n * ldy; i++)
        y[i] = ys[i] = -12345.0f; /* sentinels between rows must survive */
    run_matmul(&W, act, n, y, ldy);
    nn_kern_select(NN_TIER_SCALAR);
    run_matmul(&W, act, n, ys, ldy);
    nn_kern_select(tier);

    for (int j = 0; j < n; j++) {
        for (int64_t r = 0; r < rows; r++) {
            double val, tol;
            ref_output(&m, r, act, j, &val, &tol);
            float got = y[j * ldy + r], sc = ys[j * ldy + r];
            cr_assert(fabs(got - val) <= tol,
                      "%s %s%s %ldx%ld n=%d: y[%d][%ld] = %.9g, exact %.9g (tol %.3g)",
                      nn_tier_name(tier), nn_type_name(t), repack ? " r16" : "", (long)rows,
                      (long)k, n, j, (long)r, got, val, tol);
            cr_assert(fabs(sc - val) <= tol, "scalar reference off: %.9g vs %.9g", sc, val);
        }
        for (int64_t r = rows; r < ldy; r++)
            cr_assert_eq(y[j * ldy + r], -12345.0f, "wrote past the rows (row %ld)", (long)r);
    }
    free(x);
    free(act);
    free(y);
    free(ys);
    free(packed);
    mat_free(&m);
}

static const nn_type mm_types[] = {NN_Q4_1, NN_Q4_0, NN_Q8_0, NN_F32, NN_F16, NN_BF16};

static void matmul_shapes(nn_tier tier)
{
    const int64_t ks[] = {32, 64, 576, 1536};
    const int64_t rows_list[] = {1, 3, 4, 5, 16, 17, 35};
    for (size_t ti = 0; ti < sizeof mm_types / sizeof *mm_types; ti++)
        for (size_t ki = 0; ki < sizeof ks / sizeof *ks; ki++)
            for (size_t ri = 0; ri < sizeof rows_list / sizeof *rows_list; ri++) {
                int64_t k = ks[ki], rows = rows_list[ri];
                /* n = 1..17 on the small shapes, a few on the big ones. */
                for (int n = 1; n <= 17; n++) {
                    if (k >= 576 && rows > 5 && n != 1 && n != 4 && n != 9 && n != 17)
                        continue;
                    check_matmul(tier, mm_types[ti], rows, k, n, false);
                }
            }
}
TIER_TESTS(nn_matmul, matmul_shapes)

static void matmul_repacked(nn_tier tier)
{
    const int64_t ks[] = {32, 64, 576};
    const int64_t rows_list[] = {1, 15, 16, 17, 40, 64};
    for (size_t ti = 0; ti < 3; ti++) /* the quantized types */
        for (size_t ki = 0; ki < sizeof ks / sizeof *ks; ki++)
            for (size_t ri = 0; ri < sizeof rows_list / sizeof *rows_list; ri++)
                for (int n = 1; n <= 17; n += (n < 9 ? 1 : 4))
                    check_matmul(tier, mm_types[ti], rows_list[ri], ks[ki], n, true);
}
TIER_TESTS(nn_matmul, matmul_repacked)

/* Many activation rows: the kernels take them in column tiles (256 KiB of
 * activations, fewer for Q4_0/Q8_0 repacked, whose per-block activation
 * sums live in a 16 KiB table), so long rows and n = 70 cross several
 * tiles; K beyond the table (4097 blocks) takes the path that sums as it
 * goes. */
static void matmul_tiles(nn_tier tier)
{
    for (size_t ti = 0; ti < sizeof mm_types / sizeof *mm_types; ti++) {
        check_matmul(tier, mm_types[ti], 21, 4096, 70, false);
        if (ti < 3)
            check_matmul(tier, mm_types[ti], 21, 4096, 70, true);
    }
    check_matmul(tier, NN_Q4_0, 3, 32 * 4097, 2, true);
    check_matmul(tier, NN_Q8_0, 3, 32 * 4097, 2, true);
    check_matmul(tier, NN_Q4_1, 3, 32 * 4097, 2, true);
}
TIER_TESTS(nn_matmul, matmul_tiles)

Test(nn_matmul, repack_layout_and_rows)
{
    for (size_t ti = 0; ti < sizeof mm_types / sizeof *mm_types; ti++) {
        test_mat m;
        mat_make(&m, mm_types[ti], 21, 96);
        size_t pb = nn_mat_repack_bytes(&m.W);
        if (ti >= 3) {
            cr_assert_eq(pb, 0, "%s has no repacked layout", nn_type_name(mm_types[ti]));
            mat_free(&m);
            continue;
        }
        cr_assert_eq(pb, 32 * nn_row_bytes(mm_types[ti], 96), "two groups of 16 rows");
        void *packed = xaligned(pb);
        nn_mat R = nn_mat_repack(&m.W, packed);
        cr_assert_eq(nn_mat_repack_bytes(&R), 0, "already repacked");
        float row[96];
        for (int64_t r = 0; r < 21; r++) {
            nn_mat_row_f32(&R, r, row);
            cr_assert_arr_eq(row, m.deq + r * 96, sizeof row, "row %ld", (long)r);
            nn_mat_row_f32(&m.W, r, row);
            cr_assert_arr_eq(row, m.deq + r * 96, sizeof row);
        }
        /* Sub-matrices of either layout hold the same rows. */
        nn_mat sr = nn_mat_rows(&R, 16, 21), so = nn_mat_rows(&m.W, 3, 21);
        cr_assert_eq(sr.rows, 5);
        cr_assert_eq(so.rows, 18);
        for (int64_t r = 0; r < 5; r++) {
            nn_mat_row_f32(&sr, r, row);
            cr_assert_arr_eq(row, m.deq + (16 + r) * 96, sizeof row, "r16 sub-row %ld", (long)r);
        }
        for (int64_t r = 0; r < 18; r++) {
            nn_mat_row_f32(&so, r, row);
            cr_assert_arr_eq(row, m.deq + (3 + r) * 96, sizeof row, "sub-row %ld", (long)r);
        }
        free(packed);
        mat_free(&m);
    }
}

/* Threads: each output row is computed by exactly one thread with the same
 * code, so any thread count gives bit-identical results. */
typedef struct mm_task {
    const nn_mat *W;
    const float *x;
    void *act;
    int n;
    float *y;
    int64_t ldy;
    nn_pool *pool;
} mm_task;

static void mm_task_fn(void *p, int ith, int nth)
{
    mm_task *t = p;
    nn_act_prepare(t->W->type, t->x, t->W->cols, t->n, t->W->cols, t->act, ith, nth);
    nn_pool_barrier(t->pool);
    nn_matmul(t->W, t->act, t->n, t->y, t->ldy, ith, nth);
}

static void matmul_threads(nn_tier tier)
{
    (void)tier;
    const int ns[] = {1, 3, 8, 13};
    for (size_t ti = 0; ti < sizeof mm_types / sizeof *mm_types; ti++)
        for (int repack = 0; repack < 2; repack++) {
            if (repack && ti >= 3)
                continue;
            test_mat m;
            mat_make(&m, mm_types[ti], 203, 576);
            nn_mat W = m.W;
            void *packed = NULL;
            if (repack) {
                packed = xaligned(nn_mat_repack_bytes(&m.W));
                W = nn_mat_repack(&m.W, packed);
            }
            for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++) {
                int n = ns[ni];
                float *x = xaligned(sizeof(float) * (size_t)(n * 576));
                fill(x, n * 576, 1.0f);
                void *act = xaligned(nn_act_row_bytes(W.type, 576) * (size_t)n);
                float *y1 = xaligned(sizeof(float) * (size_t)(n * 203));
                float *y = xaligned(sizeof(float) * (size_t)(n * 203));
                for (int nth = 1; nth <= 3; nth++) {
                    nn_pool *pool = nn_pool_new(nth, "mm");
                    mm_task t = {&W, x, act, n, nth == 1 ? y1 : y, 203, pool};
                    nn_pool_run(pool, mm_task_fn, &t);
                    nn_pool_free(pool);
                    if (nth > 1)
                        cr_assert_arr_eq(y, y1, sizeof(float) * (size_t)(n * 203),
                                         "%s%s n=%d: %d threads differ from one",
                                         nn_type_name(W.type), repack ? " r16" : "", n, nth);
                }
                free(x);
                free(act);
                free(y1);
                free(y);
            }
            free(packed);
            mat_free(&m);
        }
}
TIER_TESTS(nn_matmul, matmul_threads)

/* ======================================================================== */
/* Vector operations                                                         */
/* ======================================================================== */

static const int64_t vec_lens[] = {0, 1, 2, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 576,
                                   1536, 4097};
#define VMAX 4097

static void dots(nn_tier tier)
{
    (void)tier;
    static float a[VMAX], b[VMAX];
    static uint16_t h[VMAX];
    for (size_t li = 0; li < sizeof vec_lens / sizeof *vec_lens; li++) {
        int64_t n = vec_lens[li];
        fill(a, n, 3.0f);
        fill(b, n, 0.5f);
        nn_f32_to_f16_row(a, h, n);
        double ex = 0, eh = 0, mag = 0, magh = 0;
        for (int64_t i = 0; i < n; i++) {
            ex += (double)a[i] * b[i];
            mag += fabs((double)a[i] * b[i]);
            eh += (double)nn_f16_to_f32(h[i]) * b[i];
            magh += fabs((double)nn_f16_to_f32(h[i]) * b[i]);
        }
        double tol = (double)(n + 8) * 2 * U * mag + 1e-30;
        double tolh = (double)(n + 8) * 2 * U * magh + 1e-30;
        cr_assert(fabs(nn_dot_f32(a, b, n) - ex) <= tol, "dot_f32 n=%ld", (long)n);
        cr_assert(fabs(nn_dot_f16_f32(h, b, n) - eh) <= tolh, "dot_f16_f32 n=%ld", (long)n);
    }
}
TIER_TESTS(nn_vec, dots)

static void axpys(nn_tier tier)
{
    (void)tier;
    static float x[VMAX], y[VMAX], y0[VMAX];
    static uint16_t h[VMAX];
    for (size_t li = 0; li < sizeof vec_lens / sizeof *vec_lens; li++) {
        int64_t n = vec_lens[li];
        fill(x, n, 2.0f);
        fill(y0, n, 1.0f);
        nn_f32_to_f16_row(x, h, n);
        float alpha = rng_f() * 3;
        /* With or without FMA: one or two roundings, within 2 ulp of the
         * larger of the two magnitudes. */
        memcpy(y, y0, sizeof(float) * (size_t)n);
        nn_axpy_f32(y, alpha, x, n);
        for (int64_t i = 0; i < n; i++) {
            double ex = (double)y0[i] + (double)alpha * x[i];
            double tol = 2 * U * (fabs(y0[i]) + fabs(alpha * x[i])) * 2;
            cr_assert(fabs(y[i] - ex) <= tol, "axpy_f32 n=%ld i=%ld", (long)n, (long)i);
        }
        memcpy(y, y0, sizeof(float) * (size_t)n);
        nn_axpy_f16(y, alpha, h, n);
        for (int64_t i = 0; i < n; i++) {
            double ex = (double)y0[i] + (double)alpha * nn_f16_to_f32(h[i]);
            double tol = 2 * U * (fabs(y0[i]) + fabs(alpha * nn_f16_to_f32(h[i]))) * 2;
            cr_assert(fabs(y[i] - ex) <= tol, "axpy_f16 n=%ld i=%ld", (long)n, (long)i);
        }
        /* add and scale are single roundings: exact agreement. */
        memcpy(y, y0, sizeof(float) * (size_t)n);
        nn_add(y, x, n);
        for (int64_t i = 0; i < n; i++)
            cr_assert_eq(y[i], y0[i] + x[i]);
        memcpy(y, y0, sizeof(float) * (size_t)n);
        nn_scale(y, alpha, n);
        for (int64_t i = 0; i < n; i++)
            cr_assert_eq(y[i], y0[i] * alpha);
    }
}
TIER_TESTS(nn_vec, axpys)

static void norms(nn_tier tier)
{
    (void)tier;
    static float x[VMAX], w[VMAX], b[VMAX], out[VMAX], inpl[VMAX];
    for (size_t li = 1; li < sizeof vec_lens / sizeof *vec_lens; li++) {
        int64_t n = vec_lens[li];
        fill(x, n, 4.0f);
        for (int64_t i = 0; i < n; i++)
            x[i] += 1.5f; /* a mean far from zero tests the layernorm's centring */
        fill(w, n, 1.0f);
        fill(b, n, 1.0f);
        const float eps = 1e-5f;
        /* rmsnorm: exact in double, then allow 8 ulp of each output's own
         * size plus 2n ulp relative for the sum of squares. */
        double ss = 0;
        for (int64_t i = 0; i < n; i++)
            ss += (double)x[i] * x[i];
        double sc = 1.0 / sqrt(ss / (double)n + eps);
        nn_rmsnorm(out, x, w, n, eps);
        memcpy(inpl, x, sizeof(float) * (size_t)n);
        nn_rmsnorm(inpl, inpl, w, n, eps);
        for (int64_t i = 0; i < n; i++) {
            double ex = x[i] * sc * w[i];
            double tol = fabs(ex) * (8 + 2 * (double)n) * U + 1e-30;
            cr_assert(fabs(out[i] - ex) <= tol, "rmsnorm n=%ld i=%ld: %g vs %g", (long)n,
                      (long)i, out[i], ex);
            cr_assert_eq(inpl[i], out[i], "in place equals out of place");
        }
        double mean = 0, var = 0;
        for (int64_t i = 0; i < n; i++)
            mean += x[i];
        mean /= (double)n;
        for (int64_t i = 0; i < n; i++)
            var += (x[i] - mean) * (x[i] - mean);
        var /= (double)n;
        double isd = 1.0 / sqrt(var + eps);
        nn_layernorm(out, x, w, b, n, eps);
        memcpy(inpl, x, sizeof(float) * (size_t)n);
        nn_layernorm(inpl, inpl, w, b, n, eps);
        for (int64_t i = 0; i < n; i++) {
            double ex = (x[i] - mean) * isd * w[i] + b[i];
            /* the f32 mean is off by ~n ulp of the largest |x|; that error is
             * scaled by isd and w */
            double tol = (fabs((x[i] - mean) * isd * w[i]) * (16 + (double)n) + fabs(b[i]) * 4) * U +
                         (2 * (double)n + 8) * U * 6.0 * isd * fabs(w[i]) + 1e-30;
            cr_assert(fabs(out[i] - ex) <= tol, "layernorm n=%ld i=%ld: %g vs %g", (long)n,
                      (long)i, out[i], ex);
            cr_assert_eq(inpl[i], out[i]);
        }
    }
}
TIER_TESTS(nn_vec, norms)

static void softmaxes(nn_tier tier)
{
    (void)tier;
    static float x[VMAX], x0[VMAX];
    for (size_t li = 1; li < sizeof vec_lens / sizeof *vec_lens; li++) {
        int64_t n = vec_lens[li];
        fill(x0, n, 20.0f);
        if (n > 3)
            x0[n / 2] = -INFINITY; /* a masked position */
        memcpy(x, x0, sizeof(float) * (size_t)n);
        float sum = nn_softmax(x, n);
        double mx = -INFINITY, es = 0;
        for (int64_t i = 0; i < n; i++)
            mx = fmax(mx, x0[i]);
        for (int64_t i = 0; i < n; i++)
            es += exp((double)x0[i] - mx);
        /* exp to within 4 ulp, the sum and the normalization add n + 4 */
        cr_assert(fabs(sum - es) <= es * (double)(n + 8) * U * 4, "softmax sum n=%ld", (long)n);
        for (int64_t i = 0; i < n; i++) {
            double ex = exp((double)x0[i] - mx) / es;
            cr_assert(fabs(x[i] - ex) <= ex * (double)(n + 16) * U * 4 + 1e-38,
                      "softmax n=%ld i=%ld: %g vs %g", (long)n, (long)i, x[i], ex);
        }
    }
}
TIER_TESTS(nn_vec, softmaxes)

static void activations(nn_tier tier)
{
    (void)tier;
    enum { N = 4096 };
    static float g[N], up[N], x[N], g0[N];
    /* Cover the whole useful range, with zeros, tiny and huge values. */
    for (int i = 0; i < N; i++)
        g0[i] = i < 3500 ? ((float)i - 1750.0f) / 100.0f : rng_f() * 200.0f;
    g0[0] = 0.0f;
    g0[1] = -0.0f;
    g0[2] = 1e-30f;
    g0[3] = -100.0f;
    g0[4] = 100.0f;
    fill(up, N, 2.0f);
    memcpy(g, g0, sizeof g);
    nn_silu_mul(g, up, N);
    /* GELU's special values (with a vector's worth of company) */
    float sp[9] = {INFINITY, -INFINITY, NAN, 1e30f, -1e30f, 20.0f, -20.0f, 0.0f, -0.0f};
    nn_gelu(sp, 9);
    cr_assert(isinf(sp[0]) && sp[0] > 0, "gelu(inf) = %g", sp[0]);
    cr_assert(sp[1] == 0.0f, "gelu(-inf) = %g", sp[1]);
    cr_assert(isnan(sp[2]), "gelu(nan) = %g", sp[2]);
    cr_assert(sp[3] == 1e30f && sp[4] == 0.0f && sp[5] == 20.0f, "%g %g %g", sp[3], sp[4], sp[5]);
    cr_assert(sp[6] <= 0.0f && sp[6] > -1e-30f && sp[7] == 0.0f && sp[8] == 0.0f);
    memcpy(x, g0, sizeof x);
    nn_gelu(x, N);
    for (int i = 0; i < N; i++) {
        double v = g0[i];
        double silu = v / (1.0 + exp(-v)) * up[i];
        /* the exp approximation and the division: 8 ulp of the result */
        cr_assert(fabs(g[i] - silu) <= fabs(silu) * 8 * U * 2 + 1e-37, "silu(%g): %g vs %g", v,
                  g[i], silu);
        double gelu = 0.5 * v * erfc(-v / sqrt(2.0));
        /* erfc approximation: within 1e-6 relative (documented in the kernels) */
        cr_assert(fabs(x[i] - gelu) <= fabs(gelu) * 1e-6 + 1e-37, "gelu(%.9g): %.9g vs %.9g", v,
                  x[i], gelu);
    }
}
TIER_TESTS(nn_vec, activations)

/* Each Criterion test runs in a fresh process, so the first kernel call here
 * is the one that reads OUTPOST_KERNELS. */
Test(nn_kern, env_var_limits_the_tier)
{
    setenv("OUTPOST_KERNELS", "avx2", 1);
    nn_tier want = nn_tier_available(NN_TIER_AVX2) ? NN_TIER_AVX2 : NN_TIER_SCALAR;
    cr_assert_eq(nn_kern_tier(), want, "got %s", nn_tier_name(nn_kern_tier()));
}

Test(nn_kern, env_var_scalar)
{
    setenv("OUTPOST_KERNELS", "scalar", 1);
    cr_assert_eq(nn_kern_tier(), NN_TIER_SCALAR);
    float a[3] = {1, 2, 3};
    cr_assert_eq(nn_dot_f32(a, a, 3), 14.0f);
}

Test(nn_kern, tier_names_and_select)
{
    cr_assert_str_eq(nn_tier_name(NN_TIER_SCALAR), "scalar");
    cr_assert_str_eq(nn_tier_name(NN_TIER_AVX2), "avx2");
    cr_assert_str_eq(nn_tier_name(NN_TIER_AVX512), "avx512");
    cr_assert(nn_tier_available(NN_TIER_SCALAR));
    nn_tier best = NN_TIER_SCALAR;
    for (size_t i = 0; i < 3; i++)
        if (nn_tier_available(all_tiers[i]))
            best = all_tiers[i];
    /* Asking for more than the CPU has gives the best it has. */
    cr_assert_eq(nn_kern_select(NN_TIER_AVX512), best);
    cr_assert_eq(nn_kern_tier(), best);
    cr_assert_eq(nn_kern_select(NN_TIER_SCALAR), NN_TIER_SCALAR);
    cr_assert_eq(nn_kern_tier(), NN_TIER_SCALAR);
}
