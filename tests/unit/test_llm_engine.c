/*
 * Unit tests for plugins/llama/llm_engine on a tiny synthetic model:
 * continuous batching gives every request exactly what it would get alone,
 * requests join while others decode, the queue is bounded, cancellation
 * frees the slot, and finish reasons, usage and streaming are right.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "llm_engine.h"
#include "llm_model.h"
#include "llm_tok.h"
#include "outpost/plugin.h"
#include "test_support.h"
#include "ts_llm.h"

typedef struct out {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    int code;
    char msg[256];
    char text[8192];
    size_t text_len;
    char streamed[8192];
    size_t streamed_len;
    int pieces;
    int prompt_tokens, completion_tokens;
    char finish[16];
    int stop_after_pieces; /* on_text returns -1 after this many (0: never) */
    /* When set, on_text (the scheduler thread) blocks after this many
     * pieces until *gate is nonzero: lets a test act "while this request
     * is decoding" without depending on how fast the machine is. */
    int hold_after_pieces;
    int *gate;
} out;

static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;

static void gate_open(int *gate)
{
    pthread_mutex_lock(&gate_mu);
    *gate = 1;
    pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_mu);
}

typedef struct env {
    char *dir;
    llm_model *m;
    llm_vocab *v;
    llm_engine *e;
    int metric_counts[16];
    pthread_mutex_t mu;
} env;

static int on_text(void *ctx, void *user, const char *t, size_t n)
{
    (void)ctx;
    out *o = user;
    pthread_mutex_lock(&o->mu);
    memcpy(o->streamed + o->streamed_len, t, n);
    o->streamed_len += n;
    o->pieces++;
    int stop = o->stop_after_pieces && o->pieces >= o->stop_after_pieces;
    int hold = o->hold_after_pieces && o->pieces == o->hold_after_pieces;
    pthread_cond_broadcast(&o->cv);
    pthread_mutex_unlock(&o->mu);
    if (hold) {
        pthread_mutex_lock(&gate_mu);
        while (!*o->gate)
            pthread_cond_wait(&gate_cv, &gate_mu);
        pthread_mutex_unlock(&gate_mu);
    }
    return stop ? -1 : 0;
}

static void on_done(void *ctx, void *user, const llm_result *r, int code, const char *msg)
{
    (void)ctx;
    out *o = user;
    pthread_mutex_lock(&o->mu);
    o->code = code;
    if (msg)
        snprintf(o->msg, sizeof o->msg, "%s", msg);
    if (r) {
        memcpy(o->text, r->text, r->len);
        o->text_len = r->len;
        o->prompt_tokens = r->prompt_tokens;
        o->completion_tokens = r->completion_tokens;
        snprintf(o->finish, sizeof o->finish, "%s", r->finish_reason);
    }
    o->done = 1;
    pthread_cond_broadcast(&o->cv);
    pthread_mutex_unlock(&o->mu);
}

static void on_metric(void *ctx, int id, double v)
{
    (void)v;
    env *e = ctx;
    pthread_mutex_lock(&e->mu);
    if (id > 0 && id < 16)
        e->metric_counts[id]++;
    pthread_mutex_unlock(&e->mu);
}

static void env_open(env *e, int max_batch, int max_queue, int batch_tokens)
{
    memset(e, 0, sizeof *e);
    pthread_mutex_init(&e->mu, NULL);
    e->dir = ts_tmpdir();
    ts_llm_spec spec = ts_llm_default();
    spec.wtype = 3;
    spec.etype = 8;
    spec.n_ctx = 512;
    char *path = ts_llm_write(e->dir, "m.gguf", &spec);
    char err[256];
    cr_assert_eq(llm_model_load(path, &e->m, err, sizeof err), 0, "%s", err);
    cr_assert_eq(llm_vocab_load(e->m->gguf, &e->v, err, sizeof err), 0, "%s", err);
    free(path);
    llm_engine_opts o = {.threads = 2, .max_batch = max_batch, .max_queue = max_queue,
                         .kv_tokens = 4096, .ctx = 512, .batch_tokens = batch_tokens};
    llm_engine_cb cb = {.ctx = e, .on_text = on_text, .on_done = on_done, .metric = on_metric};
    e->e = llm_engine_new(e->m, e->v, &o, &cb, err, sizeof err);
    cr_assert_not_null(e->e, "%s", err);
}

static void env_close(env *e)
{
    llm_engine_free(e->e);
    llm_vocab_free(e->v);
    llm_model_free(e->m);
    ts_tmpdir_remove(e->dir);
    free(e->dir);
}

static out *out_new(void)
{
    out *o = calloc(1, sizeof *o);
    pthread_mutex_init(&o->mu, NULL);
    pthread_cond_init(&o->cv, NULL);
    return o;
}

static void out_wait(out *o)
{
    pthread_mutex_lock(&o->mu);
    while (!o->done)
        pthread_cond_wait(&o->cv, &o->mu);
    pthread_mutex_unlock(&o->mu);
}

/* Submits a greedy job of prompt tokens [seed-derived] and n new tokens. */
static int submit(env *e, out *o, int n_prompt, uint64_t seed, int max_tokens, bool ignore_eos,
                  const char *stop, char *err, size_t errlen)
{
    llm_job *j = calloc(1, sizeof *j);
    j->prompt = malloc((size_t)n_prompt * sizeof *j->prompt);
    for (int i = 0; i < n_prompt; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        j->prompt[i] = (int32_t)((seed >> 33) % 256); /* byte tokens */
    }
    j->n_prompt = n_prompt;
    j->max_tokens = max_tokens;
    j->sampling = (llm_sampling){.temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f};
    j->ignore_eos = ignore_eos;
    j->stream = true;
    if (stop) {
        j->stop[0] = stop;
        j->n_stop = 1;
    }
    j->user = o;
    return llm_engine_submit(e->e, j, err, errlen);
}

Test(llm_engine, batched_requests_get_what_they_get_alone)
{
    env e;
    env_open(&e, 8, 16, 64);
    enum { N = 8 };
    out *alone[N], *together[N];
    char err[256];
    /* Alone, one at a time. */
    for (int i = 0; i < N; i++) {
        alone[i] = out_new();
        cr_assert_eq(submit(&e, alone[i], 5 + 9 * i, 100 + i, 24, true, NULL, err, sizeof err), 0,
                     "%s", err);
        out_wait(alone[i]);
        cr_assert_eq(alone[i]->code, 0, "%s", alone[i]->msg);
    }
    /* All at once: prompts of different lengths, chunked prefill (batch
     * of 64 rows), decodes interleaved. */
    for (int i = 0; i < N; i++) {
        together[i] = out_new();
        cr_assert_eq(submit(&e, together[i], 5 + 9 * i, 100 + i, 24, true, NULL, err, sizeof err),
                     0, "%s", err);
    }
    for (int i = 0; i < N; i++) {
        out_wait(together[i]);
        cr_assert_eq(together[i]->code, 0, "%s", together[i]->msg);
        cr_assert_eq(together[i]->completion_tokens, 24);
        cr_assert_eq(together[i]->prompt_tokens, 5 + 9 * i);
        cr_assert_str_eq(together[i]->finish, "length");
        cr_assert_eq(together[i]->text_len, alone[i]->text_len, "request %d", i);
        cr_assert_eq(memcmp(together[i]->text, alone[i]->text, alone[i]->text_len), 0,
                     "request %d: batched text differs from alone", i);
        /* Streaming delivered exactly the text. */
        cr_assert_eq(together[i]->streamed_len, together[i]->text_len);
        cr_assert_eq(memcmp(together[i]->streamed, together[i]->text, together[i]->text_len), 0);
        free(alone[i]);
        free(together[i]);
    }
    /* Batches really had several sequences. */
    llm_engine_stats st;
    llm_engine_stats_get(e.e, &st);
    cr_assert(st.steps > 0 && st.generated_tokens == 2 * N * 24, "generated %llu",
              (unsigned long long)st.generated_tokens);
    cr_assert(e.metric_counts[OUTPOST_METRIC_TTFT_SECONDS] == 2 * N);
    cr_assert(e.metric_counts[OUTPOST_METRIC_ITL_SECONDS] == 2 * N * 23);
    cr_assert(e.metric_counts[OUTPOST_METRIC_QUEUE_WAIT_SECONDS] == 2 * N);
    cr_assert(e.metric_counts[OUTPOST_METRIC_BATCH_SIZE] > 0);
    env_close(&e);
}

Test(llm_engine, a_new_request_joins_while_another_decodes)
{
    env e;
    env_open(&e, 4, 4, 64);
    char err[256];
    out *longr = out_new(), *shortr = out_new();
    int gate = 0;
    longr->hold_after_pieces = 3;
    longr->gate = &gate;
    cr_assert_eq(submit(&e, longr, 8, 1, 300, true, NULL, err, sizeof err), 0, "%s", err);
    /* The long request stops in its third piece's callback until the short
     * one is queued, so it is certainly decoding when the short one comes;
     * it then has 297 tokens left against the short one's 3. */
    pthread_mutex_lock(&longr->mu);
    while (longr->pieces < 3)
        pthread_cond_wait(&longr->cv, &longr->mu);
    pthread_mutex_unlock(&longr->mu);
    cr_assert_eq(submit(&e, shortr, 8, 2, 3, true, NULL, err, sizeof err), 0, "%s", err);
    gate_open(&gate);
    out_wait(shortr);
    pthread_mutex_lock(&longr->mu);
    int long_done = longr->done;
    pthread_mutex_unlock(&longr->mu);
    cr_assert_not(long_done, "the short request waited for the long one to finish");
    out_wait(longr);
    cr_assert_eq(longr->completion_tokens, 300);
    free(longr);
    free(shortr);
    env_close(&e);
}

Test(llm_engine, queue_is_bounded)
{
    env e;
    env_open(&e, 1, 2, 16);
    char err[256];
    out *o[4];
    for (int i = 0; i < 3; i++) {
        o[i] = out_new();
        cr_assert_eq(submit(&e, o[i], 8, (uint64_t)i, 200, true, NULL, err, sizeof err), 0,
                     "request %d: %s", i, err);
    }
    /* One runs (or is about to), two wait: the fourth is refused unless the
     * first was already admitted (then one more fits). Keep submitting until
     * refused: it must happen by the fifth. */
    int refused = 0;
    out *extra[3] = {0};
    for (int i = 0; i < 3 && !refused; i++) {
        extra[i] = out_new();
        int rc = submit(&e, extra[i], 8, 50 + (uint64_t)i, 200, true, NULL, err, sizeof err);
        if (rc) {
            cr_assert_eq(rc, OUTPOST_ERR_RESOURCE_EXHAUSTED);
            cr_assert(strstr(err, "busy"), "%s", err);
            refused = 1;
            free(extra[i]);
            extra[i] = NULL;
        }
    }
    cr_assert(refused, "the queue never filled");
    for (int i = 0; i < 3; i++) {
        out_wait(o[i]);
        cr_assert_eq(o[i]->code, 0);
        free(o[i]);
        if (extra[i]) {
            out_wait(extra[i]);
            free(extra[i]);
        }
    }
    env_close(&e);
}

Test(llm_engine, cancel_frees_the_slot_queued_or_running)
{
    env e;
    env_open(&e, 1, 4, 16);
    char err[256];
    out *run = out_new(), *queued = out_new(), *next = out_new();
    cr_assert_eq(submit(&e, run, 8, 1, 400, true, NULL, err, sizeof err), 0);
    cr_assert_eq(submit(&e, queued, 8, 2, 50, true, NULL, err, sizeof err), 0);
    llm_engine_cancel(e.e, queued);
    llm_engine_cancel(e.e, run);
    llm_engine_cancel(e.e, (void *)0x1234); /* unknown: ignored */
    out_wait(run);
    out_wait(queued);
    cr_assert_eq(run->code, OUTPOST_ERR_CANCELLED);
    cr_assert_eq(queued->code, OUTPOST_ERR_CANCELLED);
    /* The only slot is free again. */
    cr_assert_eq(submit(&e, next, 8, 3, 5, true, NULL, err, sizeof err), 0);
    out_wait(next);
    cr_assert_eq(next->code, 0);
    llm_engine_stats st;
    llm_engine_stats_get(e.e, &st);
    cr_assert_eq(st.running, 0);
    cr_assert_eq(st.kv_used_tokens, 0, "KV blocks leaked: %d", st.kv_used_tokens);
    free(run), free(queued), free(next);
    env_close(&e);
}

Test(llm_engine, client_gone_while_streaming_cancels)
{
    env e;
    env_open(&e, 2, 2, 16);
    char err[256];
    out *o = out_new();
    o->stop_after_pieces = 3;
    cr_assert_eq(submit(&e, o, 8, 9, 200, true, NULL, err, sizeof err), 0);
    out_wait(o);
    cr_assert_eq(o->code, OUTPOST_ERR_CANCELLED);
    cr_assert(o->pieces >= 3 && o->pieces < 10, "pieces %d", o->pieces);
    free(o);
    env_close(&e);
}

Test(llm_engine, context_and_input_limits)
{
    env e;
    env_open(&e, 2, 2, 16);
    char err[256];
    out *o = out_new();
    int rc = submit(&e, o, 512, 1, 10, true, NULL, err, sizeof err);
    cr_assert_eq(rc, OUTPOST_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(err, "512") && strstr(err, "context"), "%s", err);
    /* A prompt that nearly fills the context stops at the context, reason
     * "length". */
    cr_assert_eq(submit(&e, o, 500, 2, 100, true, NULL, err, sizeof err), 0, "%s", err);
    out_wait(o);
    cr_assert_eq(o->code, 0, "%s", o->msg);
    cr_assert_eq(o->completion_tokens, 12);
    cr_assert_str_eq(o->finish, "length");
    free(o);
    /* Token ids outside the vocabulary. */
    llm_job *j = calloc(1, sizeof *j);
    j->prompt = malloc(sizeof *j->prompt);
    j->prompt[0] = 1 << 20;
    j->n_prompt = 1;
    j->max_tokens = 1;
    j->sampling = (llm_sampling){.top_p = 1.0f, .repetition_penalty = 1.0f};
    cr_assert_eq(llm_engine_submit(e.e, j, err, sizeof err), OUTPOST_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(err, "vocabulary"), "%s", err);
    env_close(&e);
}

Test(llm_engine, stop_sequence_ends_with_reason_stop)
{
    env e;
    env_open(&e, 2, 2, 16);
    char err[256];
    /* First learn what greedy generates, then stop on a piece of it. */
    out *a = out_new();
    cr_assert_eq(submit(&e, a, 10, 77, 40, true, NULL, err, sizeof err), 0);
    out_wait(a);
    cr_assert(a->text_len > 8);
    char stop[4];
    size_t at = a->text_len / 2;
    /* A stop string of 2 ASCII-safe bytes from the middle, if printable. */
    memcpy(stop, a->text + at, 2);
    stop[2] = '\0';
    out *b = out_new();
    cr_assert_eq(submit(&e, b, 10, 77, 40, true, stop, err, sizeof err), 0);
    out_wait(b);
    cr_assert_eq(b->code, 0);
    const char *first = memmem(a->text, a->text_len, stop, 2);
    cr_assert_not_null(first);
    size_t want = (size_t)(first - a->text);
    if (strlen(stop) == 2) {
        cr_assert_str_eq(b->finish, "stop");
        cr_assert_eq(b->text_len, want, "text %zu bytes, want %zu", b->text_len, want);
        cr_assert_eq(memcmp(b->text, a->text, want), 0);
        cr_assert_eq(b->streamed_len, want);
    }
    free(a);
    free(b);
    env_close(&e);
}
