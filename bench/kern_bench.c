/*
 * kern_bench: throughput of nn_matmul (plugins/nn) on the shapes of the
 * shipped models, per kernel tier, layout and thread count.
 *
 *   build/bench/kern_bench                      # default table, 1 and 2 threads
 *   build/bench/kern_bench --threads 2 --n 1,8 --shape ffn_up --layout r16
 *   build/bench/kern_bench --cold               # weights streamed from DRAM
 *   build/bench/kern_bench --custom Q8_0:98304:576 --n 1
 *   build/bench/kern_bench --pool               # nn_pool run and barrier cost
 *
 * Each configuration runs nn_matmul through an nn_pool (the way the models
 * call it: the caller's thread plus workers, split by nn_split) for
 * --ms milliseconds, --trials times, and reports the best trial (the machine
 * may be shared; the best run is the one least disturbed). Columns:
 *   us     time of one product (all threads), activation preparation apart
 *   cpu_us the calling thread's CPU time per product (see time_runs)
 *   prep   time of nn_act_prepare for the same n rows (once per input; the
 *          models share it between the q/k/v and gate/up products)
 *   GB/s   weight bytes streamed per second (the figure of merit at n = 1,
 *          where a product is bound by memory bandwidth)
 *   GMAC/s multiply-accumulates per second (rows x cols x n / time)
 * "hot": the same matrix every time (it stays in L2/L3, as the per-layer
 * weights of a 135M model partly do); "--cold": a ring of copies larger
 * than the last-level cache, so every product reads its weights from DRAM,
 * as decoding a model larger than the cache does.
 */
#include "nn_kern.h"
#include "nn_pool.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct shape {
    const char *name;
    nn_type type;
    int64_t rows, cols;
} shape;

/* SmolLM2-135M (Q4_1 layers, Q8_0 tied output head) and all-MiniLM-L6-v2
 * (F32). */
static shape shapes[] = {
    {"attn_q", NN_Q4_1, 576, 576},     {"attn_kv", NN_Q4_1, 192, 576},
    {"ffn_up", NN_Q4_1, 1536, 576},    {"ffn_down", NN_Q4_1, 576, 1536},
    {"output", NN_Q8_0, 49152, 576},   {"bert_qkvo", NN_F32, 384, 384},
    {"bert_up", NN_F32, 1536, 384},    {"bert_down", NN_F32, 384, 1536},
    {NULL, NN_F32, 0, 0}, /* --custom */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t rng = 88172645463325252ull;

static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 11) * 0x1p-53 * 2.0 - 1.0);
}

static void *xalloc(size_t n)
{
    void *p = aligned_alloc(64, (n + 63) / 64 * 64);
    if (!p) {
        fprintf(stderr, "out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

typedef struct task {
    const nn_mat *W; /* ring of mats */
    int nmats, cur;
    const void *act;
    int n;
    float *y;
    /* for the prep timing */
    const float *x;
    void *act_out;
    int prep;
} task;

static void run_fn(void *p, int ith, int nth)
{
    task *t = p;
    if (t->prep)
        nn_act_prepare(t->W[0].type, t->x, t->W[0].cols, t->n, t->W[0].cols, t->act_out, ith, nth);
    else
        nn_matmul(&t->W[t->cur], t->act, t->n, t->y, t->W[0].rows, ith, nth);
}

static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Best time per run (seconds) over trials of ~ms milliseconds each; *cpu
 * gets the calling thread's CPU time per run in that trial (with one thread,
 * the time the kernel took while it had the CPU: on a shared machine, the
 * figure that preemption does not inflate). */
static double time_runs(nn_pool *pool, task *t, double ms, int trials, double *cpu)
{
    double best = 1e30, best_cpu = 1e30;
    for (int tr = 0; tr < trials; tr++) {
        /* warm-up run, then as many as fit in the time */
        nn_pool_run(pool, run_fn, t);
        int runs = 0;
        double t0 = now_s(), c0 = cpu_s(), el;
        do {
            t->cur = (t->cur + 1) % t->nmats;
            nn_pool_run(pool, run_fn, t);
            runs++;
            el = now_s() - t0;
        } while (el < ms * 1e-3);
        double c = (cpu_s() - c0) / runs;
        if (el / runs < best)
            best = el / runs;
        if (c < best_cpu)
            best_cpu = c;
    }
    if (cpu)
        *cpu = best_cpu;
    return best;
}

/* The pool's own cost: an empty run (wake every worker, wait for all), and a
 * barrier inside a run (a forward pass has a few per layer). */
typedef struct pool_task {
    nn_pool *pool;
    int barriers;
} pool_task;

static void pool_fn(void *p, int ith, int nth)
{
    pool_task *t = p;
    (void)ith;
    (void)nth;
    for (int i = 0; i < t->barriers; i++)
        nn_pool_barrier(t->pool);
}

static void bench_pool(const int *threads, int nthreads, double ms, int trials)
{
    printf("%-22s %3s %10s\n", "pool", "thr", "us");
    for (int ti = 0; ti < nthreads; ti++) {
        nn_pool *pool = nn_pool_new(threads[ti], "bench");
        if (!pool)
            exit(1);
        for (int b = 0; b <= 1; b++) {
            pool_task t = {pool, b ? 1000 : 0};
            double best = 1e30;
            for (int tr = 0; tr < trials; tr++) {
                int runs = 0;
                double t0 = now_s(), el;
                do {
                    nn_pool_run(pool, pool_fn, &t);
                    runs++;
                    el = now_s() - t0;
                } while (el < ms * 1e-3);
                best = el / runs < best ? el / runs : best;
            }
            printf("%-22s %3d %10.3f\n", b ? "barrier (in a run)" : "run (empty task)", threads[ti],
                   (b ? best / 1000 : best) * 1e6);
        }
        nn_pool_free(pool);
    }
}

static int parse_list(const char *s, int *out, int max)
{
    int k = 0;
    while (*s && k < max) {
        out[k++] = atoi(s);
        const char *c = strchr(s, ',');
        if (!c)
            break;
        s = c + 1;
    }
    return k;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: kern_bench [--threads LIST] [--n LIST] [--shape NAME] [--layout rows|r16|both]\n"
            "                  [--tier scalar|avx2|avx512] [--cold] [--ms MS] [--trials N]\n"
            "                  [--custom TYPE:ROWS:COLS] [--pool]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    int threads[8] = {1, 2}, nthreads = 2;
    int ns[16], nns = 0;
    const char *only = NULL, *layout = "both";
    double ms = 200;
    int trials = 3, cold = 0, pool_only = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            nthreads = parse_list(argv[++i], threads, 8);
        else if (!strcmp(argv[i], "--n") && i + 1 < argc)
            nns = parse_list(argv[++i], ns, 16);
        else if (!strcmp(argv[i], "--shape") && i + 1 < argc)
            only = argv[++i];
        else if (!strcmp(argv[i], "--layout") && i + 1 < argc)
            layout = argv[++i];
        else if (!strcmp(argv[i], "--ms") && i + 1 < argc)
            ms = atof(argv[++i]);
        else if (!strcmp(argv[i], "--trials") && i + 1 < argc)
            trials = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--cold"))
            cold = 1;
        else if (!strcmp(argv[i], "--pool"))
            pool_only = 1;
        else if (!strcmp(argv[i], "--custom") && i + 1 < argc) {
            /* TYPE:ROWS:COLS, e.g. Q8_0:8192:576 */
            char tn[16];
            long r, c;
            shape *cs = &shapes[sizeof shapes / sizeof *shapes - 1];
            if (sscanf(argv[++i], "%15[^:]:%ld:%ld", tn, &r, &c) != 3)
                usage();
            const nn_type ts[] = {NN_F32, NN_F16, NN_BF16, NN_Q4_0, NN_Q4_1, NN_Q8_0};
            for (size_t t = 0; t < sizeof ts / sizeof *ts; t++)
                if (!strcmp(tn, nn_type_name(ts[t])))
                    cs->type = ts[t];
            if (nn_row_bytes(cs->type, c) == 0 || r < 1)
                usage();
            cs->name = "custom";
            cs->rows = r;
            cs->cols = c;
            only = "custom";
        }
        else if (!strcmp(argv[i], "--tier") && i + 1 < argc) {
            const char *t = argv[++i];
            nn_tier want = !strcmp(t, "scalar") ? NN_TIER_SCALAR
                           : !strcmp(t, "avx2") ? NN_TIER_AVX2
                                                : NN_TIER_AVX512;
            if (nn_kern_select(want) != want)
                fprintf(stderr, "tier %s not available here, using %s\n", t,
                        nn_tier_name(nn_kern_tier()));
        } else
            usage();
    }
    if (pool_only) {
        bench_pool(threads, nthreads, ms, trials);
        return 0;
    }
    printf("tier %s, best of %d x %.0f ms%s\n", nn_tier_name(nn_kern_tier()), trials, ms,
           cold ? ", weights cold (ring larger than the LLC)" : ", weights hot (one matrix)");
    printf("%-10s %-5s %-4s %5s %3s %10s %10s %9s %8s %8s\n", "shape", "type", "lay", "n", "thr",
           "us", "cpu_us", "prep_us", "GB/s", "GMAC/s");

    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        const shape *sh = &shapes[s];
        if (!sh->name || (only && strcmp(only, sh->name)))
            continue;
        int quant = sh->type == NN_Q4_0 || sh->type == NN_Q4_1 || sh->type == NN_Q8_0;
        int def_q[] = {1, 2, 4, 8, 16, 64, 512}, def_f[] = {1, 16, 64, 512, 4096};
        int *nl = nns ? ns : quant ? def_q : def_f;
        int nn = nns ? nns : quant ? 7 : 5;

        /* The matrix: random values quantized with the reference rounding. */
        size_t rb = nn_row_bytes(sh->type, sh->cols), bytes = rb * (size_t)sh->rows;
        uint8_t *data = xalloc(bytes);
        float *row = xalloc(sizeof(float) * (size_t)sh->cols);
        for (int64_t r = 0; r < sh->rows; r++) {
            for (int64_t c = 0; c < sh->cols; c++)
                row[c] = frand();
            nn_quantize_row(sh->type, row, data + rb * (size_t)r, sh->cols);
        }
        free(row);
        nn_mat base = {.type = sh->type, .rows = sh->rows, .cols = sh->cols, .data = data,
                       .row_bytes = rb};

        for (int lay = 0; lay < 2; lay++) {
            if (lay == 1 && (!quant || !strcmp(layout, "rows")))
                continue;
            if (lay == 0 && quant && !strcmp(layout, "r16"))
                continue;
            /* The ring: enough copies to exceed a 256 MiB cache when cold. */
            nn_mat one = base;
            void *packed = NULL;
            if (lay == 1) {
                packed = xalloc(nn_mat_repack_bytes(&base));
                one = nn_mat_repack(&base, packed);
            }
            size_t mbytes = lay == 1 ? nn_mat_repack_bytes(&base) : bytes;
            int nmats = cold ? (int)((256u << 20) / mbytes + 1) : 1;
            nn_mat *mats = xalloc(sizeof(nn_mat) * (size_t)nmats);
            void **copies = xalloc(sizeof(void *) * (size_t)nmats);
            for (int m = 0; m < nmats; m++) {
                mats[m] = one;
                copies[m] = NULL;
                if (m > 0) {
                    copies[m] = xalloc(mbytes);
                    memcpy(copies[m], one.data, mbytes);
                    mats[m].data = copies[m];
                }
            }
            for (int ni = 0; ni < nn; ni++) {
                int n = nl[ni];
                float *x = xalloc(sizeof(float) * (size_t)n * (size_t)sh->cols);
                for (int64_t i = 0; i < n * sh->cols; i++)
                    x[i] = frand();
                void *act = xalloc(nn_act_row_bytes(sh->type, sh->cols) * (size_t)n);
                float *y = xalloc(sizeof(float) * (size_t)n * (size_t)sh->rows);
                nn_act_prepare(sh->type, x, sh->cols, n, sh->cols, act, 0, 1);
                for (int ti = 0; ti < nthreads; ti++) {
                    nn_pool *pool = nn_pool_new(threads[ti], "bench");
                    if (!pool)
                        return 1;
                    task t = {.W = mats, .nmats = nmats, .act = act, .n = n, .y = y, .x = x,
                              .act_out = act};
                    double tc;
                    double tm = time_runs(pool, &t, ms, trials, &tc);
                    t.prep = 1;
                    t.nmats = 1;
                    double tp = time_runs(pool, &t, ms / 4, trials, NULL);
                    nn_pool_free(pool);
                    double macs = (double)sh->rows * (double)sh->cols * n;
                    printf("%-10s %-5s %-4s %5d %3d %10.1f %10.1f %9.1f %8.2f %8.2f\n", sh->name,
                           nn_type_name(sh->type), lay ? "r16" : "rows", n, threads[ti],
                           tm * 1e6, tc * 1e6, tp * 1e6, (double)mbytes / tm * 1e-9,
                           macs / tm * 1e-9);
                    fflush(stdout);
                }
                free(x);
                free(act);
                free(y);
            }
            for (int m = 0; m < nmats; m++)
                free(copies[m]);
            free(copies);
            free(mats);
            free(packed);
        }
        free(data);
    }
    return 0;
}
