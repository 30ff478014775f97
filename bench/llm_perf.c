/*
 * llm_perf: Outpost's llama engine measured in-process, the way llama-bench
 * measures llama.cpp: random prompt tokens, greedy decoding with end-of-
 * generation ignored, so every run does exactly the asked-for work.
 *
 *   build/bench/llm_perf -m MODEL.gguf [-t THREADS] [-p PROMPT_TOKENS]
 *                        [-n GEN_TOKENS] [-np PARALLEL] [-r REPS] [--json]
 *                        [--no-repack]
 *
 * Weights are repacked at load as the plugin does by default (its option
 * `repack`); --no-repack measures the file layout.
 *
 * Reports, each as the median over REPS runs:
 *   pp   prompt processing tokens/s: one request of -p tokens, time to its
 *        first generated token (which includes one sampling step)
 *   tg   single-stream decode tokens/s: one request, -n tokens after a
 *        16-token prompt, counted from the first token to the last
 *   ttft time to first token of that 16-token prompt
 *   agg  aggregate decode tokens/s with -np concurrent requests of -n tokens
 *        each (started together), all tokens after each first one over the
 *        wall time from the first first-token to the last token
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "llm_engine.h"
#include "llm_model.h"
#include "llm_tok.h"
#include "outpost/plugin.h"

typedef struct run_req {
    uint64_t t_submit, t_first, t_last;
    int n_tokens;
    int done;
    int code;
} run_req;

typedef struct bench {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int pending;
} bench;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int on_text(void *ctx, void *user, const char *text, size_t len)
{
    (void)ctx, (void)text, (void)len;
    (void)user;
    return 0;
}

static void on_done(void *ctx, void *user, const llm_result *res, int code, const char *msg)
{
    bench *b = ctx;
    run_req *r = user;
    r->t_last = now_ns();
    r->code = code;
    r->n_tokens = res ? res->completion_tokens : 0;
    if (code)
        fprintf(stderr, "llm_perf: request failed: %s\n", msg);
    pthread_mutex_lock(&b->mu);
    r->done = 1;
    b->pending--;
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

static _Atomic uint64_t g_first_token_ns;

/* TTFT arrives as a metric: record when the first token of the currently
 * measured requests appeared. */
static void on_metric(void *ctx, int id, double v)
{
    (void)ctx;
    (void)v;
    if (id == OUTPOST_METRIC_TTFT_SECONDS) {
        uint64_t zero = 0;
        atomic_compare_exchange_strong(&g_first_token_ns, &zero, now_ns());
    }
}

static uint64_t g_rng = 88172645463325252ull;

static int32_t rand_token(int n_vocab)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (int32_t)(g_rng % (uint64_t)n_vocab);
}

/* Runs np requests of n_prompt random tokens and n_gen new tokens, started
 * together. Returns the wall time from submit to the last completion;
 * *first is the time of the first generated token (any request). */
static double run(llm_engine *e, bench *b, int n_vocab, int np, int n_prompt, int n_gen,
                  double *first_s, run_req *reqs)
{
    memset(reqs, 0, (size_t)np * sizeof *reqs);
    atomic_store(&g_first_token_ns, 0);
    pthread_mutex_lock(&b->mu);
    b->pending = np;
    pthread_mutex_unlock(&b->mu);
    uint64_t t0 = now_ns();
    for (int i = 0; i < np; i++) {
        llm_job *j = calloc(1, sizeof *j);
        j->prompt = malloc((size_t)n_prompt * sizeof *j->prompt);
        for (int k = 0; k < n_prompt; k++)
            j->prompt[k] = rand_token(n_vocab);
        j->n_prompt = n_prompt;
        j->max_tokens = n_gen;
        j->sampling = (llm_sampling){.temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f};
        j->ignore_eos = true;
        j->stream = true;
        j->user = &reqs[i];
        reqs[i].t_submit = now_ns();
        char err[256];
        if (llm_engine_submit(e, j, err, sizeof err) != 0) {
            fprintf(stderr, "llm_perf: submit: %s\n", err);
            exit(1);
        }
    }
    pthread_mutex_lock(&b->mu);
    while (b->pending > 0)
        pthread_cond_wait(&b->cv, &b->mu);
    pthread_mutex_unlock(&b->mu);
    uint64_t t1 = now_ns();
    for (int i = 0; i < np; i++)
        if (reqs[i].code) {
            fprintf(stderr, "llm_perf: a request failed\n");
            exit(1);
        }
    *first_s = (double)(atomic_load(&g_first_token_ns) - t0) / 1e9;
    return (double)(t1 - t0) / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    int threads = 2, pp = 512, tg = 128, np = 8, reps = 3;
    bool json = false, repack = true;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-m") && v)
            path = v, i++;
        else if (!strcmp(a, "-t") && v)
            threads = atoi(v), i++;
        else if (!strcmp(a, "-p") && v)
            pp = atoi(v), i++;
        else if (!strcmp(a, "-n") && v)
            tg = atoi(v), i++;
        else if (!strcmp(a, "-np") && v)
            np = atoi(v), i++;
        else if (!strcmp(a, "-r") && v)
            reps = atoi(v), i++;
        else if (!strcmp(a, "--json"))
            json = true;
        else if (!strcmp(a, "--no-repack"))
            repack = false;
        else {
            fprintf(stderr, "usage: %s -m MODEL.gguf [-t THREADS] [-p PROMPT_TOKENS] "
                    "[-n GEN_TOKENS] [-np PARALLEL] [-r REPS] [--json] [--no-repack]\n", argv[0]);
            return 2;
        }
    }
    if (!path || threads < 1 || pp < 1 || tg < 2 || np < 1 || reps < 1) {
        fprintf(stderr, "llm_perf: -m MODEL is required; counts must be positive (-n >= 2)\n");
        return 2;
    }
    char err[512];
    llm_model *m;
    llm_vocab *v;
    if (llm_model_load(path, &m, err, sizeof err) || llm_vocab_load(m->gguf, &v, err, sizeof err) ||
        (repack && llm_model_repack(m, err, sizeof err))) {
        fprintf(stderr, "llm_perf: %s: %s\n", path, err);
        return 1;
    }
    bench b = {.pending = 0};
    pthread_mutex_init(&b.mu, NULL);
    pthread_cond_init(&b.cv, NULL);
    int ctx = pp + tg + 16 > 2048 ? pp + tg + 16 : 2048;
    llm_engine_opts o = {.threads = threads, .max_batch = np > 1 ? np : 1, .max_queue = 64,
                         .kv_tokens = ctx * (np > 1 ? np : 1), .ctx = ctx, .batch_tokens = 512};
    if (o.batch_tokens < pp)
        o.batch_tokens = pp; /* one pass for the prompt, as llama-bench's default batch */
    llm_engine_cb cb = {.ctx = &b, .on_text = on_text, .on_done = on_done, .metric = on_metric};
    llm_engine *e = llm_engine_new(m, v, &o, &cb, err, sizeof err);
    if (!e) {
        fprintf(stderr, "llm_perf: %s\n", err);
        return 1;
    }
    const int V = m->hp.n_vocab;
    run_req *reqs = calloc((size_t)np, sizeof *reqs);
    double *pp_s = calloc((size_t)reps, sizeof(double)), *tg_s = calloc((size_t)reps, sizeof(double));
    double *ttft = calloc((size_t)reps, sizeof(double)), *agg = calloc((size_t)reps, sizeof(double));
    double first;
    run(e, &b, V, 1, 16, 4, &first, reqs); /* warm-up: pages in the weights */
    for (int r = 0; r < reps; r++) {
        run(e, &b, V, 1, pp, 2, &first, reqs);
        pp_s[r] = pp / first;
        double wall = run(e, &b, V, 1, 16, tg, &first, reqs);
        ttft[r] = first * 1e3;
        tg_s[r] = (reqs[0].n_tokens - 1) / (wall - first);
        wall = run(e, &b, V, np, 16, tg, &first, reqs);
        int total = 0;
        for (int i = 0; i < np; i++)
            total += reqs[i].n_tokens - 1;
        agg[r] = total / (wall - first);
    }
    double mpp = median(pp_s, reps), mtg = median(tg_s, reps), mttft = median(ttft, reps),
           magg = median(agg, reps);
    if (json)
        printf("{\"model\":\"%s\",\"threads\":%d,\"pp_tokens\":%d,\"tg_tokens\":%d,"
               "\"parallel\":%d,\"pp_tok_s\":%.2f,\"tg_tok_s\":%.2f,\"ttft_ms\":%.2f,"
               "\"agg_tok_s\":%.2f,\"repack\":%s}\n",
               path, threads, pp, tg, np, mpp, mtg, mttft, magg, repack ? "true" : "false");
    else
        printf("outpost llm_perf  %s  threads=%d\n"
               "  pp%-5d %10.2f tok/s\n"
               "  tg%-5d %10.2f tok/s   (ttft %.2f ms after a 16-token prompt)\n"
               "  agg x%-3d %9.2f tok/s  (%d streams of %d tokens)\n",
               path, threads, pp, mpp, tg, mtg, mttft, np, magg, np, tg);
    llm_engine_free(e);
    llm_vocab_free(v);
    llm_model_free(m);
    free(reqs), free(pp_s), free(tg_s), free(ttft), free(agg);
    return 0;
}
