/*
 * gw_exec: one gateway request, from its steps to its log record. The
 * universal endpoint, the provider pass-through paths and the WebSocket API
 * all run requests through here; they differ only in how the request was
 * read and in the sink the answer goes to.
 *
 * A request is a list of steps {provider, endpoint, headers, query, config}.
 * For each step in order:
 *   1. the policies' route hook may reject, or switch provider or model;
 *   2. the response cache is looked up (when a TTL applies and the client did
 *      not ask to skip it): a HIT is answered from memory; an identical
 *      request already in flight is joined (its answer is shared as it
 *      arrives); otherwise this request leads and its answer is stored if it
 *      succeeds;
 *   3. attempts: the provider is called (local models in process, upstreams
 *      over HTTP); a failed attempt (no response, timeout, HTTP >= 400) goes
 *      to the on_error hook, a successful one to on_response; the decision
 *      (or, without one, the configured retries with backoff) retries the
 *      step after a delay, falls back to the next step, or fails.
 * Before the first step, the gateway's rate limit and the policies' limit
 * hook are checked; token limits reserve prompt + max_tokens and are settled
 * on the real count at the end. Streams are passed through as they arrive
 * (only a response that began to stream is committed to: failures before the
 * first byte reach the client are retried or fallen back; a stream cut
 * later ends the stream and is logged as failed). Every request, answered
 * from cache or not, becomes one log record (tokens and cost included, also
 * for streams).
 *
 * Threading: gw_exec_start runs on the caller's thread; the rest runs on the
 * upstream client's loop threads and the model plugins' threads. The sink's
 * callbacks are called one at a time, in order. gw_exec_cancel may be
 * called from any thread.
 *
 * Ownership: gw_exec_start takes over everything in the request (steps,
 * gateway view, runtime reference); the caller keeps one reference on the
 * returned exec and drops it with gw_exec_release.
 */
#ifndef GW_EXEC_H
#define GW_EXEC_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gateway/gw_registry.h"
#include "runtime/op_runtime.h"

#define GW_MAX_STEPS 16
#define GW_EVENT_ID_MAX 128
#define GW_CACHE_KEY_MAX 512

/* What the client is told about an answer (cf-aig-* headers, WebSocket
 * metadata). */
typedef struct gw_meta {
    int step;                       /* the step that answered, 0-based; -1 none */
    bool cached;                    /* cf-aig-cache-status HIT */
    char log_id[27];                /* cf-aig-log-id ("" when logs are not collected) */
    char event_id[GW_EVENT_ID_MAX]; /* cf-aig-event-id, echoed */
    char content_type[128];
    int status;
    int retry_after_s;              /* > 0: send Retry-After */
} gw_meta;

/* Where the answer goes. begin once, data zero or more times, end once. */
typedef struct gw_sink {
    void *ctx;
    /* stream: the body follows in pieces as it arrives. Returns 0, or -1 if
     * the client is gone (the request is then cancelled). */
    int (*begin)(void *ctx, int status, bool stream, const gw_meta *m);
    int (*data)(void *ctx, const char *d, size_t n);
    /* Last call: the answer is complete (ok) or was cut (a stream whose
     * provider failed after it began). m is final. */
    void (*end)(void *ctx, const gw_meta *m, bool ok);
    /* Called once after end, when nothing of the exec touches the sink any
     * more (frees ctx if the sink owns it). May be NULL. */
    void (*release)(void *ctx);
} gw_sink;

typedef struct gw_step {
    char *provider;
    char *endpoint;
    json_t *headers;   /* object of strings, or NULL */
    json_t *query;     /* the body sent to the provider */
    json_t *config;    /* per-step options or NULL: requestTimeout, maxAttempts,
                          retryDelay, backoff, cacheTtl, skipCache */
    char *raw;         /* the query exactly as the client sent it (pass-through
                          paths), sent upstream as is; NULL: serialize query */
    size_t raw_len;
} gw_step;

/* The cf-aig-* request headers, parsed (gw_opts_parse). */
typedef struct gw_opts {
    int cache_ttl_s;                 /* -1: the gateway's */
    bool skip_cache;
    char cache_key[GW_CACHE_KEY_MAX];/* "" none */
    json_t *metadata;                /* object, <= 5 scalar entries, or NULL (owned) */
    int request_timeout_ms;          /* 0: not given */
    int max_attempts;                /* 0: not given */
    int retry_delay_ms;              /* -1: not given */
    int backoff;                     /* -1: not given, else op_backoff */
    int collect_log;                 /* -1: the gateway's, 0, 1 */
    char event_id[GW_EVENT_ID_MAX];
    bool has_custom_cost;
    double cost_per_token_in, cost_per_token_out, cost_total; /* cf-aig-custom-cost */
    bool custom_total;
} gw_opts;

/* Header lookup for gw_opts_parse: the value of a header by lower-case
 * name, or NULL. */
typedef const char *(*gw_header_fn)(void *ctx, const char *name);

/* Parses the cf-aig-* headers. Returns 0, or -1 with a client error in err
 * (a 400: which header, what is wrong). Values already in o (defaults) stay
 * where a header is absent; call gw_opts_init first. */
void gw_opts_init(gw_opts *o);
int gw_opts_parse(gw_opts *o, gw_header_fn get, void *ctx, char *err, size_t errlen);
void gw_opts_free(gw_opts *o);

/* Parses the universal endpoint's body (one step object or an array of
 * them) into steps. Returns the count, or -1 with a 400 message in err. */
int gw_steps_parse(json_t *body, gw_step *steps, size_t max, char *err, size_t errlen);
void gw_steps_free(gw_step *steps, size_t n);

typedef struct gw_exec gw_exec;

typedef struct gw_exec_params {
    op_runtime *rt;            /* a reference passes to the exec */
    gw_gateway_view gw;        /* passes to the exec */
    const char *account;
    const char *path;          /* for the log record */
    const char *method;
    const char *token_name;    /* the authenticating token's name, or NULL */
    const op_policy_header *headers; /* the request's headers, for policies (copied) */
    size_t n_headers;
    gw_step *steps;            /* n_steps of them; pass to the exec (the array is copied) */
    size_t n_steps;
    gw_opts opts;              /* passes to the exec */
    gw_sink sink;
} gw_exec_params;

/* Starts the request. Always takes over the params' resources; the answer
 * (possibly an error) always reaches the sink. Returns the exec with one
 * reference for the caller, or NULL if out of memory (then the sink got a
 * 500 already, or nothing if even that failed). */
gw_exec *gw_exec_start(gw_exec_params *p);
/* The client went away: stop whatever is running. */
void gw_exec_cancel(gw_exec *e);
void gw_exec_release(gw_exec *e);
/* Takes a reference unless the exec is already being freed (a holder of a
 * weak pointer, such as a WebSocket session, checks it this way under the
 * lock that the sink's release also takes). */
bool gw_exec_try_ref(gw_exec *e);
/* Cancels every request in flight (shutdown after the grace period). */
void gw_exec_cancel_all(void);
/* Requests started and not yet freed. */
int gw_exec_in_flight(void);

#endif
