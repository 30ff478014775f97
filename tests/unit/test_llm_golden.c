/*
 * Golden tests of the llama plugin's model against llama.cpp on the shipped
 * model: greedy continuations of the exact prompt ids recorded in
 * tests/data/golden/smollm2_greedy.json (made by scripts/golden with
 * llama-cpp-python; versions and settings are in the file). The first 32
 * generated ids (or all, if fewer) must be equal.
 *
 * Skips visibly when the model (make models) or the golden file is absent.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "llm_engine.h"
#include "llm_model.h"
#include "llm_tok.h"

#define SMOLLM OUTPOST_MODELS_DIR "/SmolLM2-135M-Instruct.Q4_1.gguf"
#define GOLDEN OUTPOST_SOURCE_DIR "/tests/data/golden/smollm2_greedy.json"
#define MIN_EQUAL 32

typedef struct result {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done, code;
    int32_t ids[512];
    int n;
    char msg[256];
} result;

static void on_done(void *ctx, void *user, const llm_result *r, int code, const char *msg)
{
    (void)ctx;
    result *o = user;
    pthread_mutex_lock(&o->mu);
    o->code = code;
    if (msg)
        snprintf(o->msg, sizeof o->msg, "%s", msg);
    if (r) {
        o->n = r->n_tokens < 512 ? r->n_tokens : 512;
        memcpy(o->ids, r->tokens, (size_t)o->n * sizeof *o->ids);
    }
    o->done = 1;
    pthread_cond_broadcast(&o->cv);
    pthread_mutex_unlock(&o->mu);
}

static json_t *load_golden(void)
{
    if (access(SMOLLM, R_OK) != 0)
        cr_skip_test("the model %s is absent: run `make models`", SMOLLM);
    if (access(GOLDEN, R_OK) != 0)
        cr_skip_test("%s is absent: run scripts/golden/make_golden.sh", GOLDEN);
    json_error_t e;
    json_t *g = json_load_file(GOLDEN, 0, &e);
    cr_assert_not_null(g, "%s: %s", GOLDEN, e.text);
    return g;
}

/* Runs every case through an engine with the given batch settings; with
 * concurrent, all cases are submitted at once (continuous batching). */
static void run_cases(json_t *g, int threads, int max_batch, int batch_tokens, bool concurrent)
{
    char err[512];
    llm_model *m;
    llm_vocab *v;
    cr_assert_eq(llm_model_load(SMOLLM, &m, err, sizeof err), 0, "%s", err);
    cr_assert_eq(llm_vocab_load(m->gguf, &v, err, sizeof err), 0, "%s", err);
    llm_engine_opts o = {.threads = threads, .max_batch = max_batch, .max_queue = 64,
                         .kv_tokens = 16384, .ctx = 2048, .batch_tokens = batch_tokens};
    llm_engine_cb cb = {.on_done = on_done};
    llm_engine *e = llm_engine_new(m, v, &o, &cb, err, sizeof err);
    cr_assert_not_null(e, "%s", err);

    json_t *cases = json_object_get(g, "cases");
    size_t n = json_array_size(cases);
    cr_assert(n >= 8, "only %zu golden cases", n);
    result *res = calloc(n, sizeof *res);
    for (size_t i = 0; i < n; i++) {
        json_t *c = json_array_get(cases, i);
        json_t *pids = json_object_get(c, "prompt_ids"), *cids = json_object_get(c, "completion_ids");
        cr_assert(json_is_array(pids) && json_is_array(cids));
        llm_job *j = calloc(1, sizeof *j);
        j->n_prompt = (int)json_array_size(pids);
        j->prompt = malloc((size_t)j->n_prompt * sizeof *j->prompt);
        for (int k = 0; k < j->n_prompt; k++)
            j->prompt[k] = (int32_t)json_integer_value(json_array_get(pids, (size_t)k));
        j->max_tokens = (int)json_array_size(cids);
        j->sampling = (llm_sampling){.temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f};
        j->user = &res[i];
        pthread_mutex_init(&res[i].mu, NULL);
        pthread_cond_init(&res[i].cv, NULL);
        cr_assert_eq(llm_engine_submit(e, j, err, sizeof err), 0, "%s", err);
        if (!concurrent) {
            pthread_mutex_lock(&res[i].mu);
            while (!res[i].done)
                pthread_cond_wait(&res[i].cv, &res[i].mu);
            pthread_mutex_unlock(&res[i].mu);
        }
    }
    int exact = 0;
    for (size_t i = 0; i < n; i++) {
        pthread_mutex_lock(&res[i].mu);
        while (!res[i].done)
            pthread_cond_wait(&res[i].cv, &res[i].mu);
        pthread_mutex_unlock(&res[i].mu);
        json_t *c = json_array_get(cases, i);
        const char *name = json_string_value(json_object_get(c, "name"));
        cr_assert_eq(res[i].code, 0, "%s: %s", name, res[i].msg);
        json_t *cids = json_object_get(c, "completion_ids");
        int want_n = (int)json_array_size(cids);
        /* The reference may end with the end-of-generation token, which we
         * do not return. */
        if (want_n > 0 &&
            llm_vocab_is_eog(v, (int32_t)json_integer_value(json_array_get(cids, (size_t)want_n - 1))))
            want_n--;
        int need = want_n < MIN_EQUAL ? want_n : MIN_EQUAL;
        cr_assert(res[i].n >= need, "%s: generated %d tokens, the reference %d", name, res[i].n,
                  want_n);
        int same = 0;
        while (same < res[i].n && same < want_n &&
               res[i].ids[same] == (int32_t)json_integer_value(json_array_get(cids, (size_t)same)))
            same++;
        cr_assert(same >= need, "%s: first difference at generated token %d (ours %d, "
                  "llama.cpp %lld); %d must be equal", name, same, res[i].ids[same],
                  (long long)json_integer_value(json_array_get(cids, (size_t)same)), need);
        exact += same == want_n;
    }
    cr_log_info("golden: %d of %zu cases equal over their whole length (threads %d, batch %d, "
                "%s)", exact, n, threads, max_batch, concurrent ? "concurrent" : "one by one");
    free(res);
    llm_engine_free(e);
    llm_vocab_free(v);
    llm_model_free(m);
}

Test(llm_golden, greedy_continuations_equal_llama_cpp, .timeout = 600)
{
    json_t *g = load_golden();
    run_cases(g, 2, 1, 512, false);
    json_decref(g);
}

/* The same, all prompts at once through continuous batching with small
 * prefill chunks: batching must not change a single token. */
Test(llm_golden, greedy_continuations_hold_under_continuous_batching, .timeout = 600)
{
    json_t *g = load_golden();
    run_cases(g, 2, 8, 48, true);
    json_decref(g);
}
