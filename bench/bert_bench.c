/*
 * bert_bench: sentence embeddings per second of the bert plugin's engine,
 * in-process (tokenizer + packed forward pass, no HTTP), for batches of 1
 * and 32 sentences; the peer is sentence-transformers on the same CPU
 * (scripts/peers/ or docs/decisions/0008-bert-embeddings.md for the command).
 *
 *   build/bench/bert_bench [--model DIR] [--threads N] [--seconds S]
 *                          [--gemm blas|nn] [--batch N] [--print-texts]
 *
 * --print-texts writes the benchmark sentences, one per line, so the peer
 * embeds exactly the same ones.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bert_model.h"
#include "bert_tok.h"

void openblas_set_num_threads(int num_threads);

#ifndef OUTPOST_MODELS_DIR
#define OUTPOST_MODELS_DIR "models"
#endif

/* 64 English sentences of 6 to 25 words, deterministic. */
static char texts[64][256];

static void make_texts(void)
{
    static const char *const subj[] = {"The old fisherman", "A young engineer", "My neighbour's cat",
                                       "The city council", "An autonomous drone",
                                       "The research team", "Our edge server", "A quiet librarian"};
    static const char *const verb[] = {"quietly repaired", "carefully studied", "suddenly noticed",
                                       "proudly presented", "slowly rebuilt", "happily shared",
                                       "briefly discussed", "thoroughly tested"};
    static const char *const obj[] = {"the broken wooden bridge", "a new theory of language",
                                      "the results of the experiment",
                                      "an unusual pattern in the network traffic",
                                      "the recipe for her grandmother's apple pie",
                                      "a map of the ancient harbour",
                                      "the latency of every request on the cluster",
                                      "the schedule for next week's conference"};
    static const char *const tail[] = {"", " before sunrise", " in front of the whole village",
                                       " while the rain kept falling on the tin roof",
                                       " after a long and difficult winter",
                                       ", and nobody expected what happened next",
                                       " with help from two colleagues",
                                       " even though the budget had been cut twice this year"};
    for (int i = 0; i < 64; i++)
        snprintf(texts[i], sizeof texts[i], "%s %s %s%s.", subj[i % 8], verb[(i / 8 + i) % 8],
                 obj[(i * 3) % 8], tail[(i * 5 + i / 8) % 8]);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Embeds `batch` texts per call, rotating through the set, for `seconds`. */
static void run(bert_ctx *c, const bert_model *m, const bert_tok *t, int batch, double seconds,
                const char *label)
{
    const int S = m->cfg.max_seq;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)batch * (size_t)S);
    int *offs = malloc(sizeof(int) * ((size_t)batch + 1));
    float *out = malloc(sizeof(float) * (size_t)batch * (size_t)m->cfg.hidden);
    long done = 0, calls = 0, tokens = 0;
    int next = 0;
    double best = 1e9;
    /* one warm-up call */
    for (int pass = -1;; pass++) {
        double t0 = now_s();
        offs[0] = 0;
        for (int s = 0; s < batch; s++) {
            const char *x = texts[next++ % 64];
            offs[s + 1] = offs[s] + bert_tok_encode(t, x, strlen(x), ids + offs[s], S, NULL);
        }
        if (bert_encode(c, ids, offs, batch, out) != 0) {
            fprintf(stderr, "bert_encode failed\n");
            exit(1);
        }
        double dt = now_s() - t0;
        if (pass < 0)
            continue;
        best = dt < best ? dt : best;
        done += batch;
        calls++;
        tokens += offs[batch];
        static double start;
        if (pass == 0)
            start = t0;
        if (now_s() - start >= seconds) {
            double el = now_s() - start;
            printf("%-28s batch %3d: %8.1f embeddings/s  %7.2f ms/call (best %.2f)  %5.1f tokens/text\n",
                   label, batch, done / el, el / calls * 1e3, best * 1e3,
                   (double)tokens / (double)done);
            break;
        }
    }
    free(ids);
    free(offs);
    free(out);
}

int main(int argc, char **argv)
{
    const char *dir = OUTPOST_MODELS_DIR "/all-MiniLM-L6-v2";
    int threads = 2, only_batch = 0;
    double seconds = 3;
    bert_gemm gemm = BERT_GEMM_BLAS;
    make_texts();
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--model") == 0 && i + 1 < argc)
            dir = argv[++i];
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            seconds = atof(argv[++i]);
        else if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc)
            only_batch = atoi(argv[++i]);
        else if (strcmp(argv[i], "--gemm") == 0 && i + 1 < argc)
            gemm = strcmp(argv[++i], "nn") == 0 ? BERT_GEMM_NN : BERT_GEMM_BLAS;
        else if (strcmp(argv[i], "--print-texts") == 0) {
            for (int k = 0; k < 64; k++)
                printf("%s\n", texts[k]);
            return 0;
        } else {
            fprintf(stderr, "usage: %s [--model DIR] [--threads N] [--seconds S] [--gemm blas|nn] "
                            "[--batch N] [--print-texts]\n", argv[0]);
            return 2;
        }
    }
    openblas_set_num_threads(1);
    char err[512], path[4096];
    bert_model *m;
    bert_tok *t;
    if (bert_model_load(dir, &m, err, sizeof err) != 0) {
        fprintf(stderr, "%s: %s\n", dir, err);
        return 1;
    }
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (bert_tok_load(path, &t, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    bert_ctx *c = bert_ctx_new(m, 64 * m->cfg.max_seq, threads, gemm);
    if (!c) {
        fprintf(stderr, "no scratch\n");
        return 1;
    }
    char label[64];
    snprintf(label, sizeof label, "outpost %s, %d threads", gemm == BERT_GEMM_NN ? "nn" : "blas",
             threads);
    static const int batches[] = {1, 32};
    for (int b = 0; b < 2; b++) {
        if (!only_batch || only_batch == batches[b])
            run(c, m, t, batches[b], seconds, label);
    }
    if (only_batch && only_batch != 1 && only_batch != 32)
        run(c, m, t, only_batch, seconds, label);
    bert_ctx_free(c);
    bert_tok_free(t);
    bert_model_free(m);
    return 0;
}
