/*
 * vx_dist_bench: time of one distance product (agent/vector/vx_dist) per
 * tier, for the embedding sizes Vectorize indexes hold (128, 384, 768,
 * 1536), float32 dot and squared L2 and the int8 dot of quantized rows.
 *
 *   build/bench/vx_dist_bench            # the table
 *   build/bench/vx_dist_bench --ms 200   # longer trials (default 60 ms)
 *   build/bench/vx_dist_bench --rows 4   # rows in L1 (default 64: in L2)
 *
 * Each cell scores one query against --rows rows (a search's inner loop;
 * 64 rows of 1536 floats are 384 KiB, in L2, so large f32 rows measure L2
 * bandwidth as much as arithmetic; --rows 4 keeps them in L1) for --ms
 * milliseconds, 3 trials, and reports the best trial in ns per product
 * (the machine may be shared; the best run is the one least disturbed),
 * with the speedup over the scalar tier. Tiers the CPU lacks print "-".
 */
#include "vector/vx_dist.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_ROWS 4096
static size_t ROWS = 64;
#define TRIALS 3

enum { K_DOT, K_L2, K_I8, K_COUNT };
static const char *const k_names[K_COUNT] = {"dot_f32", "l2sq_f32", "dot_i8"};

static volatile float g_sink_f;
static volatile int32_t g_sink_i;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* One pass: the query against every row; returns products done. */
static size_t pass(int k, vx_tier t, size_t dim, const float *q, const float *rows,
                   const int8_t *qi, const int8_t *rowsi)
{
    float sf = 0;
    int32_t si = 0;
    for (size_t r = 0; r < ROWS; r++) {
        switch (k) {
        case K_DOT: sf += vx_dot_f32_tier(t, q, rows + r * dim, dim); break;
        case K_L2: sf += vx_l2sq_f32_tier(t, q, rows + r * dim, dim); break;
        default: si += vx_dot_i8_tier(t, qi, rowsi + r * dim, dim); break;
        }
    }
    g_sink_f = sf;
    g_sink_i = si;
    return ROWS;
}

static double ns_per_product(int k, vx_tier t, size_t dim, double ms, const float *q,
                             const float *rows, const int8_t *qi, const int8_t *rowsi)
{
    double best = 1e30;
    for (int trial = 0; trial < TRIALS; trial++) {
        size_t n = 0;
        double t0 = now_s(), t1;
        do {
            for (int rep = 0; rep < 16; rep++)
                n += pass(k, t, dim, q, rows, qi, rowsi);
            t1 = now_s();
        } while ((t1 - t0) * 1e3 < ms);
        double ns = (t1 - t0) * 1e9 / (double)n;
        if (ns < best)
            best = ns;
    }
    return best;
}

int main(int argc, char **argv)
{
    double ms = 60;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--ms") == 0 && i + 1 < argc) {
            ms = atof(argv[++i]);
            if (ms <= 0)
                ms = 60;
        } else if (strcmp(argv[i], "--rows") == 0 && i + 1 < argc) {
            long r = atol(argv[++i]);
            ROWS = r >= 1 && r <= MAX_ROWS ? (size_t)r : 64;
        } else {
            fprintf(stderr, "usage: %s [--ms N] [--rows N]\n", argv[0]);
            return 2;
        }
    }
    static const size_t dims[] = {128, 384, 768, 1536};
    static const vx_tier tiers[] = {VX_TIER_SCALAR, VX_TIER_AVX2, VX_TIER_AVX512};
    size_t maxd = 1536;
    float *q = malloc(maxd * sizeof *q), *rows = malloc(ROWS * maxd * sizeof *rows);
    int8_t *qi = malloc(maxd), *rowsi = malloc(ROWS * maxd);
    if (!q || !rows || !qi || !rowsi) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    uint64_t s = 88172645463325252ull;
    for (size_t i = 0; i < ROWS * maxd; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        rows[i] = (float)((double)(s >> 40) / 16777216.0 - 0.5);
        if (i < maxd)
            q[i] = rows[i] * 0.5f + 0.1f;
    }
    vx_quantize_i8(q, maxd, qi);
    for (size_t r = 0; r < ROWS; r++)
        vx_quantize_i8(rows + r * maxd, maxd, rowsi + r * maxd);

    vx_tier best_tier = vx_dist_tier();
    /* A tier "present" runs its own kernels: vx_*_tier falls back to scalar
     * otherwise, so only tiers up to the CPU's best are timed. (With
     * OUTPOST_VX_KERNELS set, the best tier is the forced one.) */
    printf("vx_dist_bench: ns per product, best of %d x %.0f ms, %zu rows; tier in use: %s\n",
           TRIALS, ms, ROWS, vx_tier_name(best_tier));
    printf("%-6s %-9s %10s %10s %8s %10s %8s\n", "dim", "kernel", "scalar", "avx2", "x", "avx512",
           "x");
    for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++) {
        size_t dim = dims[di];
        /* rows laid out at this dim (the first ROWS * dim values) */
        for (int k = 0; k < K_COUNT; k++) {
            double ns[3];
            for (size_t ti = 0; ti < 3; ti++)
                ns[ti] = tiers[ti] <= best_tier
                             ? ns_per_product(k, tiers[ti], dim, ms, q, rows, qi, rowsi)
                             : -1;
            printf("%-6zu %-9s %10.1f", dim, k_names[k], ns[0]);
            for (size_t ti = 1; ti < 3; ti++) {
                if (ns[ti] < 0)
                    printf(" %10s %8s", "-", "-");
                else
                    printf(" %10.1f %7.1fx", ns[ti], ns[0] / ns[ti]);
            }
            printf("\n");
        }
    }
    free(q);
    free(rows);
    free(qi);
    free(rowsi);
    return 0;
}
