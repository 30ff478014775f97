/*
 * llm_engine: continuous batching for one loaded llama model.
 *
 * One scheduler thread per engine owns the KV cache, the active sequences
 * and a compute pool. Each step it
 *   1. takes cancelled requests out (queued or running) and completes them,
 *   2. admits queued requests in arrival order while a sequence slot is free
 *      and the KV cache can reserve prompt + max new tokens for them,
 *   3. builds one batch: a decode row for every sequence that is generating,
 *      then prompt chunks of sequences still prefilling, up to batch_tokens
 *      rows (decode first, so running streams keep their pace while a long
 *      prompt is read in chunks),
 *   4. runs the forward pass, samples a token for each sequence that has
 *      logits, streams text, and completes the sequences that finished.
 * A request submitted while others decode joins at the next step; it never
 * waits for them to finish.
 *
 * Requests carry token ids: tokenizing and chat templates happen before
 * submit (on the caller's thread). Output goes through callbacks invoked on
 * the scheduler thread; they must be short (copy and hand off).
 *
 * Ownership: the engine borrows model and vocab (they must outlive it).
 * llm_engine_submit takes ownership of the job (also on failure); the
 * callbacks receive job->user.
 * Threading: submit, cancel and stats are thread-safe; free joins the
 * scheduler after failing every request still queued or running with
 * OUTPOST_ERR_UNAVAILABLE.
 * Errors: submit returns an outpost_error_code (RESOURCE_EXHAUSTED when the
 * queue is full, UNAVAILABLE when stopping, INVALID_ARGUMENT when the job
 * cannot fit the context) with a message.
 */
#ifndef LLM_ENGINE_H
#define LLM_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "llm_model.h"
#include "llm_sample.h"
#include "llm_text.h"
#include "llm_tok.h"

typedef struct llm_engine_opts {
    int threads;      /* compute threads (>= 1) */
    int max_batch;    /* sequences computed together (>= 1) */
    int max_queue;    /* requests waiting beyond max_batch before RESOURCE_EXHAUSTED (>= 0) */
    int kv_tokens;    /* KV cache positions shared by all sequences */
    int ctx;          /* positions one sequence may use (<= kv_tokens, <= n_ctx_train) */
    int batch_tokens; /* rows in one forward pass (>= max_batch) */
} llm_engine_opts;

typedef struct llm_job {
    int32_t *prompt;      /* token ids, malloc'd; owned by the engine after submit */
    int n_prompt;         /* >= 1 */
    int max_tokens;       /* new tokens at most (>= 1) */
    llm_sampling sampling;
    const char *stop[LLM_MAX_STOP]; /* copied at submit */
    int n_stop;
    bool ignore_eos;      /* keep generating past end-of-generation tokens */
    bool stream;          /* call on_text as text becomes ready */
    void *user;
} llm_job;

typedef struct llm_result {
    const char *text;     /* UTF-8, valid during the callback */
    size_t len;
    int prompt_tokens;
    int completion_tokens;
    const char *finish_reason; /* "stop" | "length" */
    const int32_t *tokens;     /* the generated ids, valid during the callback; an */
    int n_tokens;              /* end-of-generation token that stopped it is not among them */
} llm_result;

/* Measurements, with the ids of outpost_model_metric (plugin.h). */
typedef void (*llm_metric_fn)(void *ctx, int metric, double value);

/* Every callback gets ctx (the engine's owner) and, per request, job->user. */
typedef struct llm_engine_cb {
    void *ctx;
    /* Streamed text (stream jobs only). Return -1 if the client is gone:
     * the request is then cancelled. */
    int (*on_text)(void *ctx, void *user, const char *text, size_t len);
    /* Exactly once per accepted job: code 0 with res, or an
     * outpost_error_code and a message. */
    void (*on_done)(void *ctx, void *user, const llm_result *res, int code, const char *message);
    /* Polled each step: true if the request should stop (client gone,
     * deadline). May be NULL. */
    bool (*is_cancelled)(void *ctx, void *user);
    llm_metric_fn metric; /* may be NULL */
} llm_engine_cb;

typedef struct llm_engine llm_engine;

/* Returns NULL with a reason (out of memory, thread start failure). */
llm_engine *llm_engine_new(const llm_model *m, const llm_vocab *v, const llm_engine_opts *o,
                           const llm_engine_cb *cb, char *err, size_t errlen);
void llm_engine_free(llm_engine *e); /* NULL is a no-op */

int llm_engine_submit(llm_engine *e, llm_job *job, char *err, size_t errlen);
/* Marks the job whose user is `user` for cancellation; it completes with
 * OUTPOST_ERR_CANCELLED at the next step. Unknown users are ignored. */
void llm_engine_cancel(llm_engine *e, void *user);

typedef struct llm_engine_stats {
    int queued, running;
    int kv_used_tokens, kv_capacity_tokens;
    uint64_t steps, rows, prompt_tokens, generated_tokens;
} llm_engine_stats;

void llm_engine_stats_get(llm_engine *e, llm_engine_stats *out);
const llm_engine_opts *llm_engine_options(const llm_engine *e);

#endif
