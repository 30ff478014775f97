/*
 * llm_engine: the scheduler thread of one llama model. See llm_engine.h.
 *
 * Locking: `mu` guards the queue, the active array's membership and the
 * stopping flag; submit() and cancel() take it briefly. Everything a
 * sequence computes with (its KV blocks, tokens, sampler, text) belongs to
 * the scheduler thread alone; the KV cache's bookkeeping too (reservations
 * happen under mu only because admission looks at the queue).
 */
#include "llm_engine.h"
#include "nn/nn_err.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "llm_forward.h"
#include "llm_kv.h"
#include "outpost/plugin.h"

typedef struct req {
    llm_job *job;
    uint64_t t_submit;  /* ns, monotonic */
    atomic_bool cancel;
    struct req *next;   /* queue link */
    llm_text text;      /* made at submit: it holds copies of the stop strings */

    /* running state (scheduler thread only) */
    llm_kv_seq kv;
    int32_t *tokens;    /* prompt, then generated tokens */
    int n_tokens, cap_tokens;
    int n_prompt;
    int n_past;         /* positions in the KV cache */
    int n_new;          /* positions this step adds */
    int logit_row;      /* this step's logits row, or -1 */
    int n_gen;
    int limit;          /* positions the sequence may reach */
    llm_sampler *sampler;
    uint64_t t_last;    /* last token, ns */
} req;

struct llm_engine {
    const llm_model *m;
    const llm_vocab *v;
    llm_engine_opts o;
    llm_engine_cb cb;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    req *q_head, *q_tail;
    int n_queued;
    req **active;      /* (max_batch) */
    int n_active;
    bool stopping;
    pthread_t thread;
    bool thread_started;

    llm_kv *kv;
    nn_pool *pool;
    llm_fwd *fwd;
    llm_row *rows;     /* (batch_tokens) */
    const llm_kv_seq **seqs; /* (max_batch) */
    float *logits;     /* (max_batch, n_vocab) */
    char piece[256];

    _Atomic uint64_t steps, n_rows, prompt_tokens, generated_tokens;
    _Atomic int kv_used; /* mirror of the cache's use, for stats from other threads */
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void metric(llm_engine *e, int id, double v)
{
    if (e->cb.metric)
        e->cb.metric(e->cb.ctx, id, v);
}

static void free_req(req *r)
{
    if (!r)
        return;
    llm_sampler_free(r->sampler);
    llm_text_free(&r->text);
    free(r->tokens);
    if (r->job) {
        free(r->job->prompt);
        free(r->job);
    }
    free(r);
}

/* Gives r's KV blocks back, and updates the mirror other threads read
 * before anyone hears of the completion. */
static void release_kv(llm_engine *e, req *r)
{
    if (r->kv.blocks || r->kv.reserved)
        llm_kv_release(e->kv, &r->kv);
    atomic_store(&e->kv_used, llm_kv_used_tokens(e->kv));
}

/* Completes r with an error and frees it (scheduler thread, or free()). */
static void fail_req(llm_engine *e, req *r, int code, const char *msg)
{
    release_kv(e, r);
    e->cb.on_done(e->cb.ctx, r->job->user, NULL, code, msg);
    free_req(r);
}

/* ======================================================================== */
/* Submission and cancellation                                               */
/* ======================================================================== */

int llm_engine_submit(llm_engine *e, llm_job *job, char *err, size_t errlen)
{
    int ctx = e->o.ctx;
    if (job->n_prompt < 1 || !job->prompt) {
        nn_errf(err, errlen, "the prompt is empty");
        goto refuse_invalid;
    }
    if (job->n_prompt >= ctx) {
        nn_errf(err, errlen, "the prompt is %d tokens; this model's context is %d tokens", job->n_prompt,
             ctx);
        goto refuse_invalid;
    }
    for (int i = 0; i < job->n_prompt; i++)
        if (job->prompt[i] < 0 || job->prompt[i] >= e->m->hp.n_vocab) {
            nn_errf(err, errlen, "token id %d is outside the vocabulary (%d tokens)", job->prompt[i],
                 e->m->hp.n_vocab);
            goto refuse_invalid;
        }
    if (job->max_tokens < 1) {
        nn_errf(err, errlen, "max_tokens must be at least 1");
        goto refuse_invalid;
    }
    req *r = calloc(1, sizeof *r);
    if (!r || llm_text_init(&r->text, job->stop, job->n_stop)) {
        free(r);
        nn_errf(err, errlen, "out of memory");
        free(job->prompt);
        free(job);
        return OUTPOST_ERR_INTERNAL;
    }
    r->job = job;
    r->t_submit = now_ns();
    atomic_init(&r->cancel, false);
    long limit = (long)job->n_prompt + job->max_tokens;
    r->limit = limit < ctx ? (int)limit : ctx;

    pthread_mutex_lock(&e->mu);
    if (e->stopping) {
        pthread_mutex_unlock(&e->mu);
        nn_errf(err, errlen, "the model is being unloaded");
        free_req(r);
        return OUTPOST_ERR_UNAVAILABLE;
    }
    /* Room: a free sequence slot, or a queue place. */
    if (e->n_queued >= e->o.max_queue + (e->o.max_batch - e->n_active)) {
        int q = e->n_queued;
        pthread_mutex_unlock(&e->mu);
        nn_errf(err, errlen, "the model is busy: %d requests are queued; retry later", q);
        free_req(r);
        return OUTPOST_ERR_RESOURCE_EXHAUSTED;
    }
    if (e->q_tail)
        e->q_tail->next = r;
    else
        e->q_head = r;
    e->q_tail = r;
    e->n_queued++;
    metric(e, OUTPOST_METRIC_QUEUE_DEPTH, e->n_queued);
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return 0;

refuse_invalid:
    free(job->prompt);
    free(job);
    return OUTPOST_ERR_INVALID_ARGUMENT;
}

void llm_engine_cancel(llm_engine *e, void *user)
{
    pthread_mutex_lock(&e->mu);
    bool found = false;
    for (req *r = e->q_head; r && !found; r = r->next)
        if (r->job->user == user) {
            atomic_store(&r->cancel, true);
            found = true;
        }
    for (int i = 0; i < e->n_active && !found; i++)
        if (e->active[i]->job->user == user) {
            atomic_store(&e->active[i]->cancel, true);
            found = true;
        }
    if (found)
        pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

/* ======================================================================== */
/* Scheduler                                                                 */
/* ======================================================================== */

static bool is_cancelled(llm_engine *e, req *r)
{
    return atomic_load(&r->cancel) || (e->cb.is_cancelled && e->cb.is_cancelled(e->cb.ctx, r->job->user));
}

/* Sets up a newly admitted request's running state. Returns 0 or -1. */
static int start_req(llm_engine *e, req *r)
{
    llm_job *j = r->job;
    r->tokens = j->prompt;
    j->prompt = NULL;
    r->n_tokens = r->n_prompt = j->n_prompt;
    r->cap_tokens = j->n_prompt;
    r->sampler = llm_sampler_new(&j->sampling, e->m->hp.n_vocab);
    if (!r->sampler)
        return -1;
    for (int i = 0; i < r->n_prompt; i++)
        llm_sampler_accept(r->sampler, r->tokens[i], false);
    return 0;
}

static int push_token(req *r, int32_t tok)
{
    if (r->n_tokens == r->cap_tokens) {
        int cap = r->cap_tokens ? r->cap_tokens * 2 : 16;
        int32_t *t = realloc(r->tokens, (size_t)cap * sizeof *t);
        if (!t)
            return -1;
        r->tokens = t;
        r->cap_tokens = cap;
    }
    r->tokens[r->n_tokens++] = tok;
    return 0;
}

/* Sends whatever text is ready (stream jobs). Returns -1 if the client is
 * gone. */
static int flush_text(llm_engine *e, req *r)
{
    if (!r->job->stream || !e->cb.on_text)
        return 0;
    const char *p;
    size_t n = llm_text_take(&r->text, &p);
    if (n == 0)
        return 0;
    return e->cb.on_text(e->cb.ctx, r->job->user, p, n);
}

/* Completes r normally and frees it. */
static void finish_req(llm_engine *e, req *r, const char *reason)
{
    if (llm_text_finish(&r->text) != 0) {
        fail_req(e, r, OUTPOST_ERR_INTERNAL, "out of memory");
        return;
    }
    flush_text(e, r); /* the last piece; a client gone now changes nothing */
    release_kv(e, r);
    llm_result res = {
        .text = r->text.buf ? r->text.buf : "",
        .len = r->text.len,
        .prompt_tokens = r->n_prompt,
        .completion_tokens = r->n_gen,
        .finish_reason = reason,
        .tokens = r->tokens + r->n_prompt,
        .n_tokens = r->n_tokens - r->n_prompt,
    };
    e->cb.on_done(e->cb.ctx, r->job->user, &res, 0, NULL);
    free_req(r);
}

/* Removes active[i] (under mu), keeping arrival order. */
static void remove_active(llm_engine *e, int i)
{
    pthread_mutex_lock(&e->mu);
    memmove(&e->active[i], &e->active[i + 1], (size_t)(e->n_active - i - 1) * sizeof *e->active);
    e->n_active--;
    pthread_mutex_unlock(&e->mu);
}

/* Takes the sampled token for r. Returns NULL to go on, or a finish reason
 * ("stop", "length"), or "cancel" if the stream's client is gone, or
 * "oom". */
static const char *take_token(llm_engine *e, req *r, int32_t tok, uint64_t now)
{
    r->n_gen++;
    atomic_fetch_add(&e->generated_tokens, 1);
    metric(e, OUTPOST_METRIC_GENERATED_TOKENS, 1);
    if (r->n_gen == 1)
        metric(e, OUTPOST_METRIC_TTFT_SECONDS, (double)(now - r->t_submit) / 1e9);
    else
        metric(e, OUTPOST_METRIC_ITL_SECONDS, (double)(now - r->t_last) / 1e9);
    r->t_last = now;
    llm_sampler_accept(r->sampler, tok, true);

    if (llm_vocab_is_eog(e->v, tok) && !r->job->ignore_eos)
        return "stop";
    if (push_token(r, tok))
        return "oom";
    size_t n = llm_token_to_piece(e->v, tok, false, e->piece, sizeof e->piece);
    if (n > sizeof e->piece)
        n = sizeof e->piece; /* no real vocabulary has such tokens */
    int s = llm_text_append(&r->text, e->piece, n);
    if (s < 0)
        return "oom";
    if (s > 0)
        return "stop";
    if (flush_text(e, r) != 0)
        return "cancel";
    if (r->n_gen >= r->job->max_tokens || r->n_tokens >= r->limit)
        return "length";
    return NULL;
}

/* Scheduler thread, under mu. */
static void report_gauges(llm_engine *e)
{
    int used = llm_kv_used_tokens(e->kv);
    atomic_store(&e->kv_used, used);
    metric(e, OUTPOST_METRIC_QUEUE_DEPTH, e->n_queued);
    metric(e, OUTPOST_METRIC_RUNNING, e->n_active);
    metric(e, OUTPOST_METRIC_KV_USED_TOKENS, used);
}

/* One scheduling step. Returns false when the engine is stopping. */
static bool step(llm_engine *e)
{
    req *cancelled = NULL, *admitted[64];
    int n_admitted = 0;

    pthread_mutex_lock(&e->mu);
    while (!e->stopping && !e->q_head && e->n_active == 0)
        pthread_cond_wait(&e->cv, &e->mu);
    if (e->stopping) {
        pthread_mutex_unlock(&e->mu);
        return false;
    }
    /* Queued requests cancelled before they started. */
    for (req **pp = &e->q_head; *pp;) {
        req *r = *pp;
        if (is_cancelled(e, r)) {
            *pp = r->next;
            if (e->q_tail == r)
                e->q_tail = NULL;
            e->n_queued--;
            r->next = cancelled;
            cancelled = r;
        } else {
            pp = &r->next;
        }
    }
    if (!e->q_head)
        e->q_tail = NULL;
    else if (!e->q_tail)
        for (e->q_tail = e->q_head; e->q_tail->next;)
            e->q_tail = e->q_tail->next;
    /* Admission in arrival order, while a slot and the KV room are there. */
    while (e->q_head && e->n_active < e->o.max_batch && n_admitted < 64) {
        req *r = e->q_head;
        if (llm_kv_reserve(e->kv, &r->kv, r->limit) != 0)
            break;
        e->q_head = r->next;
        if (!e->q_head)
            e->q_tail = NULL;
        e->n_queued--;
        r->next = NULL;
        e->active[e->n_active++] = r;
        admitted[n_admitted++] = r;
    }
    report_gauges(e);
    pthread_mutex_unlock(&e->mu);

    while (cancelled) {
        req *r = cancelled;
        cancelled = r->next;
        fail_req(e, r, OUTPOST_ERR_CANCELLED, "the request was cancelled");
    }
    uint64_t now = now_ns();
    for (int i = 0; i < n_admitted; i++) {
        req *r = admitted[i];
        metric(e, OUTPOST_METRIC_QUEUE_WAIT_SECONDS, (double)(now - r->t_submit) / 1e9);
        if (start_req(e, r) != 0) {
            for (int k = 0; k < e->n_active; k++)
                if (e->active[k] == r) {
                    remove_active(e, k);
                    break;
                }
            fail_req(e, r, OUTPOST_ERR_INTERNAL, "out of memory");
        }
    }

    /* Running requests cancelled, then the batch. */
    for (int i = 0; i < e->n_active;) {
        req *r = e->active[i];
        if (is_cancelled(e, r)) {
            remove_active(e, i);
            fail_req(e, r, OUTPOST_ERR_CANCELLED, "the request was cancelled");
        } else {
            i++;
        }
    }
    if (e->n_active == 0)
        return true;

    int n_rows = 0, n_logits = 0;
    /* Decode rows first. */
    for (int i = 0; i < e->n_active; i++) {
        req *r = e->active[i];
        r->n_new = 0;
        r->logit_row = -1;
        e->seqs[i] = &r->kv;
        if (r->n_past >= r->n_prompt && r->n_past == r->n_tokens - 1) {
            e->rows[n_rows++] = (llm_row){r->tokens[r->n_past], r->n_past, i, n_logits};
            r->n_new = 1;
            r->logit_row = n_logits++;
        }
    }
    /* Then prompt chunks, oldest request first. */
    for (int i = 0; i < e->n_active && n_rows < e->o.batch_tokens; i++) {
        req *r = e->active[i];
        if (r->n_past >= r->n_prompt)
            continue;
        int chunk = r->n_prompt - r->n_past;
        if (chunk > e->o.batch_tokens - n_rows)
            chunk = e->o.batch_tokens - n_rows;
        for (int k = 0; k < chunk; k++) {
            int pos = r->n_past + k;
            bool last = pos == r->n_prompt - 1;
            e->rows[n_rows++] = (llm_row){r->tokens[pos], pos, i, last ? n_logits : -1};
        }
        r->n_new = chunk;
        if (r->n_past + chunk == r->n_prompt)
            r->logit_row = n_logits++;
    }
    for (int i = 0; i < e->n_active;) {
        req *r = e->active[i];
        if (r->n_new && llm_kv_grow(e->kv, &r->kv, r->n_past + r->n_new) != 0) {
            /* Reservations make this unreachable; fail safe if not. */
            remove_active(e, i);
            fail_req(e, r, OUTPOST_ERR_INTERNAL, "the KV cache is exhausted");
            return true; /* rows refer to indices that moved: rebuild next step */
        }
        i++;
    }
    if (n_rows == 0)
        return true;

    metric(e, OUTPOST_METRIC_BATCH_SIZE, e->n_active);
    llm_forward(e->fwd, e->rows, n_rows, e->seqs, e->logits);
    atomic_fetch_add(&e->steps, 1);
    atomic_fetch_add(&e->n_rows, (uint64_t)n_rows);

    now = now_ns();
    for (int i = 0; i < e->n_active;) {
        req *r = e->active[i];
        bool prompt_done = r->n_past < r->n_prompt && r->n_past + r->n_new == r->n_prompt;
        r->n_past += r->n_new;
        if (prompt_done) {
            atomic_fetch_add(&e->prompt_tokens, (uint64_t)r->n_prompt);
            metric(e, OUTPOST_METRIC_PROMPT_TOKENS, r->n_prompt);
        }
        const char *fin = NULL;
        if (r->logit_row >= 0) {
            float *lg = e->logits + (size_t)r->logit_row * (size_t)e->m->hp.n_vocab;
            fin = take_token(e, r, llm_sampler_sample(r->sampler, lg), now);
        }
        if (!fin) {
            i++;
            continue;
        }
        remove_active(e, i);
        if (strcmp(fin, "cancel") == 0)
            fail_req(e, r, OUTPOST_ERR_CANCELLED, "the client went away");
        else if (strcmp(fin, "oom") == 0)
            fail_req(e, r, OUTPOST_ERR_INTERNAL, "out of memory");
        else
            finish_req(e, r, fin);
    }
    pthread_mutex_lock(&e->mu);
    report_gauges(e);
    pthread_mutex_unlock(&e->mu);
    return true;
}

static void *scheduler_main(void *arg)
{
    llm_engine *e = arg;
    pthread_setname_np(pthread_self(), "llm-sched");
    while (step(e)) {
    }
    /* Stopping: fail what is left. */
    pthread_mutex_lock(&e->mu);
    req *q = e->q_head;
    e->q_head = e->q_tail = NULL;
    e->n_queued = 0;
    int n = e->n_active;
    e->n_active = 0;
    pthread_mutex_unlock(&e->mu);
    for (int i = 0; i < n; i++)
        fail_req(e, e->active[i], OUTPOST_ERR_UNAVAILABLE, "the model is being unloaded");
    while (q) {
        req *r = q;
        q = r->next;
        fail_req(e, r, OUTPOST_ERR_UNAVAILABLE, "the model is being unloaded");
    }
    return NULL;
}

/* ======================================================================== */
/* Life cycle                                                                */
/* ======================================================================== */

llm_engine *llm_engine_new(const llm_model *m, const llm_vocab *v, const llm_engine_opts *o,
                           const llm_engine_cb *cb, char *err, size_t errlen)
{
    if (o->threads < 1 || o->max_batch < 1 || o->max_queue < 0 || o->ctx < 2 ||
        o->kv_tokens < o->ctx || o->batch_tokens < o->max_batch || !cb->on_done) {
        nn_errf(err, errlen, "invalid engine options");
        return NULL;
    }
    llm_engine *e = calloc(1, sizeof *e);
    if (!e) {
        nn_errf(err, errlen, "out of memory");
        return NULL;
    }
    e->m = m;
    e->v = v;
    e->o = *o;
    e->cb = *cb;
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    const llm_hparams *hp = &m->hp;
    e->kv = llm_kv_new(hp->n_layer, hp->n_head_kv, hp->head_dim, o->kv_tokens);
    e->active = calloc((size_t)o->max_batch, sizeof *e->active);
    e->rows = malloc((size_t)o->batch_tokens * sizeof *e->rows);
    e->seqs = calloc((size_t)o->max_batch, sizeof *e->seqs);
    e->logits = malloc((size_t)o->max_batch * (size_t)hp->n_vocab * sizeof *e->logits);
    if (!e->kv || !e->active || !e->rows || !e->seqs || !e->logits) {
        nn_errf(err, errlen, "out of memory for a KV cache of %d tokens", o->kv_tokens);
        llm_engine_free(e);
        return NULL;
    }
    e->pool = nn_pool_new(o->threads, "llm");
    if (!e->pool) {
        nn_errf(err, errlen, "cannot start %d compute threads", o->threads);
        llm_engine_free(e);
        return NULL;
    }
    e->fwd = llm_fwd_new(m, e->kv, e->pool, o->batch_tokens, o->max_batch, o->ctx);
    if (!e->fwd) {
        nn_errf(err, errlen, "out of memory for forward-pass buffers");
        llm_engine_free(e);
        return NULL;
    }
    metric(e, OUTPOST_METRIC_KV_CAPACITY_TOKENS, llm_kv_capacity_tokens(e->kv));
    int rc = pthread_create(&e->thread, NULL, scheduler_main, e);
    if (rc != 0) {
        nn_errf(err, errlen, "cannot start the scheduler thread: %s", strerror(rc));
        llm_engine_free(e);
        return NULL;
    }
    e->thread_started = true;
    return e;
}

void llm_engine_free(llm_engine *e)
{
    if (!e)
        return;
    if (e->thread_started) {
        pthread_mutex_lock(&e->mu);
        e->stopping = true;
        pthread_cond_broadcast(&e->cv);
        pthread_mutex_unlock(&e->mu);
        pthread_join(e->thread, NULL);
    }
    llm_fwd_free(e->fwd);
    nn_pool_free(e->pool);
    llm_kv_free(e->kv);
    free(e->active);
    free(e->rows);
    free(e->seqs);
    free(e->logits);
    pthread_cond_destroy(&e->cv);
    pthread_mutex_destroy(&e->mu);
    free(e);
}

void llm_engine_stats_get(llm_engine *e, llm_engine_stats *out)
{
    pthread_mutex_lock(&e->mu);
    out->queued = e->n_queued;
    out->running = e->n_active;
    pthread_mutex_unlock(&e->mu);
    out->kv_used_tokens = atomic_load(&e->kv_used);
    out->kv_capacity_tokens = llm_kv_capacity_tokens(e->kv); /* fixed at creation */
    out->steps = atomic_load(&e->steps);
    out->rows = atomic_load(&e->n_rows);
    out->prompt_tokens = atomic_load(&e->prompt_tokens);
    out->generated_tokens = atomic_load(&e->generated_tokens);
}

const llm_engine_opts *llm_engine_options(const llm_engine *e)
{
    return &e->o;
}
