/*
 * gw_exec: one gateway request through its steps. See gw_exec.h.
 *
 * State lives in one struct under one mutex. Provider callbacks arrive on
 * other threads through a per-attempt context that carries the attempt's
 * generation, so a callback of an attempt that was given up (a timeout, a
 * cancel) is recognised and ignored. Provider calls are started and
 * cancelled with the mutex released (a local model may answer before the
 * start function returns); sink and hook calls are made under it, which
 * keeps the sink's calls ordered.
 */
#include "gateway/gw_exec.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "api/op_api.h"
#include "gateway/gw_gateway.h"
#include "gateway/gw_local.h"
#include "gateway/gw_metrics.h"
#include "gateway/gw_usage.h"
#include "platform/pl_hash.h"
#include "platform/pl_log.h"
#include "platform/pl_time.h"


/* Bodies buffered to read them (non-streamed answers, error answers). */
#define GW_MAX_BUFFERED_BODY (32u << 20)
#define GW_MAX_ERROR_BODY (64u << 10)
#define GW_MAX_BACKOFF_MS 60000
/* Tokens reserved for a request that names no max_tokens. */
#define GW_DEFAULT_MAX_TOKENS 256
/* Generated text remembered to resume a cut stream. */
#define GW_MAX_RESUME_TEXT (256u << 10)
/* Attempts of one step a policy's "retry" may ask for. */
#define GW_MAX_POLICY_ATTEMPTS 10

typedef struct buf {
    char *p;
    size_t len, cap;
} buf;

static bool buf_add(buf *b, const char *d, size_t n, size_t max)
{
    if (b->len + n > max)
        return false;
    if (b->len + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 1024;
        while (c < b->len + n + 1)
            c *= 2;
        char *p = realloc(b->p, c);
        if (!p)
            return false;
        b->p = p;
        b->cap = c;
    }
    memcpy(b->p + b->len, d, n);
    b->len += n;
    b->p[b->len] = '\0';
    return true;
}

static void buf_free(buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* Copies src into dst (n bytes), cut to fit. */
static void scopy(char *dst, size_t n, const char *src)
{
    size_t l = strnlen(src ? src : "", n - 1);
    memcpy(dst, src ? src : "", l);
    dst[l] = '\0';
}

typedef struct attempt_ctx {
    struct gw_exec *e;
    uint64_t gen;
} attempt_ctx;

struct gw_exec {
    struct gw_exec *prev, *next; /* every live exec, for gw_exec_cancel_all */
    pthread_mutex_t mu;
    _Atomic int refs;
    op_runtime *rt;
    gw_gateway_view gw;
    char account[80];
    char *path, *method, *token_name;
    op_policy_header *headers;
    size_t n_headers;
    gw_step steps[GW_MAX_STEPS];
    size_t n_steps;
    gw_opts opts;
    gw_sink sink;

    /* progress */
    int step;                 /* current step */
    int attempt;              /* 1-based within the step */
    int attempts_total;
    uint64_t gen;             /* current attempt's generation */
    uint64_t done_gen;        /* the last attempt whose on_done ran */
    char provider[64];        /* current step's provider (after route) */
    char model[256];          /* current step's model (after route), may be "" */
    const op_config_provider *up_cfg; /* NULL for local */
    gw_upstream_call *up;
    gw_local_call *loc;
    bool cancelled;
    bool cancel_all_seen;     /* under g_list_mu */
    bool finished;            /* the sink got end */
    bool sink_begun;

    /* the current attempt's answer */
    int status;
    char ctype[128];
    bool stream;
    bool passing;             /* forwarding this attempt's answer to the client */
    buf body;                 /* buffered body (not passing), or the log copy */
    bool body_overflow;
    gw_sse sse;
    gw_usage usage;
    uint64_t attempt_t0;
    op_next_decision pending; /* a decision taken in on_head, applied at on_done */
    bool has_pending;
    bool timed_out;

    /* the last failure, answered if no step succeeds */
    int last_status;
    char last_ctype[128];
    buf last_body;
    char last_error[512];

    /* cache */
    bool cache_on;
    uint64_t cache_ttl_ns;
    gw_cache_key key;
    gw_flight *flight;
    gw_cache_follow *follow;
    bool following;

    /* what the hooks see, made once per step (see hook_texts) */
    char *hook_query;
    char *hook_meta;
    int hook_step;            /* the step hook_query belongs to; -1 none */
    uint64_t request_id;      /* policies decode body/metadata once per id */
    long long retry_after_ms; /* the current attempt's Retry-After */

    /* limits */
    gw_limit_ticket ticket;
    bool has_ticket;
    size_t n_rules;
    gw_limit_unit rule_units[GW_LIMIT_MAX_RULES];
    long long tokens_estimate, max_tokens;

    /* log */
    gw_meta meta;
    bool collect;
    int64_t created_ms;
    uint64_t t0_ns, ttfb_ns;
    buf log_resp;             /* response bytes kept for the record */
    char *log_req;            /* the answering step's request body */
    size_t log_req_len;
    uint64_t log_req_full, log_resp_full; /* sizes before capping */
    bool cached;
    double cost;              /* USD, set at the end */
    int answer_status;
    bool success;
    bool stream_cut;

    /* Resuming a stream cut mid-way (see "resumption" below). */
    buf delivered;            /* generated text passed to the client so far */
    bool delivered_overflow;  /* more than GW_MAX_RESUME_TEXT: no resumption */
    bool resuming;            /* this attempt continues a cut stream */
    bool resume_failed;       /* it did not reproduce what was delivered */
    size_t resume_matched;    /* bytes of delivered it reproduced so far */
    gw_sse rsse;              /* its events */
    int resumes;              /* resumptions so far */
};

static void exec_unref(gw_exec *e);
bool gw_exec_try_ref(gw_exec *e);
static void start_step(gw_exec *e);
static void start_attempt(gw_exec *e);

/* ------------------------------------------------------------------------ */
/* ids                                                                       */
/* ------------------------------------------------------------------------ */

/* A ULID: 48 bits of Unix ms then 80 random bits, Crockford base32. The
 * random bits come from a per-thread generator seeded from getrandom. */
static void ulid_new(char out[27], int64_t ms)
{
    static const char alphabet[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    static _Thread_local uint64_t s0, s1;
    if (!s0 && !s1) {
        uint64_t seed[2] = {0, 0};
        if (getrandom(seed, sizeof seed, 0) != (ssize_t)sizeof seed) {
            seed[0] = pl_time_mono_ns() ^ (uint64_t)(uintptr_t)&seed;
            seed[1] = (uint64_t)ms * 0x9e3779b97f4a7c15ull;
        }
        s0 = seed[0] | 1;
        s1 = seed[1];
    }
    /* xorshift128+ */
    uint64_t x = s0, y = s1;
    s0 = y;
    x ^= x << 23;
    s1 = x ^ y ^ (x >> 17) ^ (y >> 26);
    uint64_t r1 = s1 + y;
    uint64_t r2 = (r1 * 0x2545f4914f6cdd1dull) ^ (r1 >> 31);
    uint64_t t = (uint64_t)ms;
    for (int i = 9; i >= 0; i--) {
        out[i] = alphabet[t & 31];
        t >>= 5;
    }
    /* 80 bits: 16 characters. */
    for (int i = 0; i < 16; i++) {
        uint64_t src = i < 12 ? r1 : r2;
        int shift = i < 12 ? 5 * i : 5 * (i - 12);
        out[10 + i] = alphabet[(src >> shift) & 31];
    }
    out[26] = '\0';
}

/* ------------------------------------------------------------------------ */
/* options and steps                                                         */
/* ------------------------------------------------------------------------ */

void gw_opts_init(gw_opts *o)
{
    memset(o, 0, sizeof *o);
    o->cache_ttl_s = -1;
    o->retry_delay_ms = -1;
    o->backoff = -1;
    o->collect_log = -1;
}

void gw_opts_free(gw_opts *o)
{
    json_decref(o->metadata);
    o->metadata = NULL;
}

static bool parse_long(const char *s, long lo, long hi, long *out)
{
    if (!s)
        return false;
    while (isspace((unsigned char)*s))
        s++;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    while (isspace((unsigned char)*end))
        end++;
    if (errno || end == s || *end || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

static int parse_bool(const char *s)
{
    if (!s)
        return -1;
    if (strcasecmp(s, "true") == 0 || strcmp(s, "1") == 0)
        return 1;
    if (strcasecmp(s, "false") == 0 || strcmp(s, "0") == 0)
        return 0;
    return -1;
}

static int parse_backoff(const char *s)
{
    if (!s)
        return -1;
    if (strcasecmp(s, "constant") == 0)
        return OP_BACKOFF_CONSTANT;
    if (strcasecmp(s, "linear") == 0)
        return OP_BACKOFF_LINEAR;
    if (strcasecmp(s, "exponential") == 0)
        return OP_BACKOFF_EXPONENTIAL;
    return -1;
}

int gw_opts_parse(gw_opts *o, gw_header_fn get, void *ctx, char *err, size_t errlen)
{
    const char *v;
    long n;
    if ((v = get(ctx, "cf-aig-cache-ttl"))) {
        if (!parse_long(v, 0, 30L * 86400, &n)) {
            snprintf(err, errlen, "cf-aig-cache-ttl must be seconds from 0 to 2592000");
            return -1;
        }
        o->cache_ttl_s = (int)n;
    }
    if ((v = get(ctx, "cf-aig-skip-cache"))) {
        int b = parse_bool(v);
        if (b < 0) {
            snprintf(err, errlen, "cf-aig-skip-cache must be true or false");
            return -1;
        }
        o->skip_cache = b == 1;
    }
    if ((v = get(ctx, "cf-aig-cache-key"))) {
        size_t len = strlen(v);
        if (len == 0 || len >= sizeof o->cache_key) {
            snprintf(err, errlen, "cf-aig-cache-key must be 1 to %zu bytes",
                     sizeof o->cache_key - 1);
            return -1;
        }
        memcpy(o->cache_key, v, len + 1);
    }
    if ((v = get(ctx, "cf-aig-metadata"))) {
        json_error_t je;
        json_t *m = json_loads(v, 0, &je);
        if (!json_is_object(m)) {
            json_decref(m);
            snprintf(err, errlen, "cf-aig-metadata must be a JSON object");
            return -1;
        }
        if (json_object_size(m) > 5) {
            json_decref(m);
            snprintf(err, errlen, "cf-aig-metadata has more than 5 entries");
            return -1;
        }
        const char *k;
        json_t *x;
        json_object_foreach(m, k, x)
        {
            if (!json_is_string(x) && !json_is_number(x) && !json_is_boolean(x)) {
                snprintf(err, errlen,
                         "cf-aig-metadata entry '%.64s' must be a string, number or boolean", k);
                json_decref(m);
                return -1;
            }
            if (strlen(k) > 128 || (json_is_string(x) && json_string_length(x) > 1024)) {
                snprintf(err, errlen,
                         "cf-aig-metadata entry '%.64s' is too long (keys 128, values 1024 bytes)",
                         k);
                json_decref(m);
                return -1;
            }
        }
        json_decref(o->metadata);
        o->metadata = m;
    }
    if ((v = get(ctx, "cf-aig-request-timeout"))) {
        if (!parse_long(v, 1, 3600000, &n)) {
            snprintf(err, errlen, "cf-aig-request-timeout must be milliseconds from 1 to 3600000");
            return -1;
        }
        o->request_timeout_ms = (int)n;
    }
    if ((v = get(ctx, "cf-aig-max-attempts"))) {
        if (!parse_long(v, 1, 5, &n)) {
            snprintf(err, errlen, "cf-aig-max-attempts must be from 1 to 5");
            return -1;
        }
        o->max_attempts = (int)n;
    }
    if ((v = get(ctx, "cf-aig-retry-delay"))) {
        if (!parse_long(v, 0, 5000, &n)) {
            snprintf(err, errlen, "cf-aig-retry-delay must be milliseconds from 0 to 5000");
            return -1;
        }
        o->retry_delay_ms = (int)n;
    }
    if ((v = get(ctx, "cf-aig-backoff"))) {
        int b = parse_backoff(v);
        if (b < 0) {
            snprintf(err, errlen, "cf-aig-backoff must be constant, linear or exponential");
            return -1;
        }
        o->backoff = b;
    }
    if ((v = get(ctx, "cf-aig-collect-log"))) {
        int b = parse_bool(v);
        if (b < 0) {
            snprintf(err, errlen, "cf-aig-collect-log must be true or false");
            return -1;
        }
        o->collect_log = b;
    }
    if ((v = get(ctx, "cf-aig-event-id"))) {
        size_t len = strlen(v);
        if (len >= sizeof o->event_id) {
            snprintf(err, errlen, "cf-aig-event-id is longer than %zu bytes",
                     sizeof o->event_id - 1);
            return -1;
        }
        memcpy(o->event_id, v, len + 1);
    }
    if ((v = get(ctx, "cf-aig-custom-cost"))) {
        json_t *c = json_loads(v, 0, NULL);
        json_t *in = json_object_get(c, "per_token_in");
        json_t *out = json_object_get(c, "per_token_out");
        json_t *total = json_object_get(c, "total_cost");
        bool ok = json_is_object(c) && (in || out || total) &&
                  (!in || (json_is_number(in) && json_number_value(in) >= 0)) &&
                  (!out || (json_is_number(out) && json_number_value(out) >= 0)) &&
                  (!total || (json_is_number(total) && json_number_value(total) >= 0));
        if (!ok) {
            json_decref(c);
            snprintf(err, errlen,
                     "cf-aig-custom-cost must be a JSON object with per_token_in, per_token_out "
                     "or total_cost (numbers >= 0)");
            return -1;
        }
        o->has_custom_cost = true;
        o->cost_per_token_in = in ? json_number_value(in) : 0;
        o->cost_per_token_out = out ? json_number_value(out) : 0;
        o->custom_total = total != NULL;
        o->cost_total = total ? json_number_value(total) : 0;
        json_decref(c);
    }
    return 0;
}

static char *dup_str(json_t *v)
{
    const char *s = json_string_value(v);
    return s ? strdup(s) : NULL;
}

int gw_steps_parse(json_t *body, gw_step *steps, size_t max, char *err, size_t errlen)
{
    json_t *one[1] = {body};
    size_t n = 1;
    json_t **items = one;
    json_t *arr = NULL;
    if (json_is_array(body)) {
        arr = body;
        n = json_array_size(body);
        if (n == 0) {
            snprintf(err, errlen, "the request has no steps");
            return -1;
        }
        if (n > max) {
            snprintf(err, errlen, "the request has %zu steps; at most %zu are allowed", n, max);
            return -1;
        }
    } else if (!json_is_object(body)) {
        snprintf(err, errlen, "the body must be a step object or an array of steps");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *s = arr ? json_array_get(arr, i) : items[0];
        gw_step *st = &steps[i];
        memset(st, 0, sizeof *st);
        const char *bad = NULL;
        if (!json_is_object(s))
            bad = "must be an object";
        else if (!json_is_string(json_object_get(s, "provider")) ||
                 json_string_length(json_object_get(s, "provider")) == 0 ||
                 json_string_length(json_object_get(s, "provider")) > 64)
            bad = "needs \"provider\" (a string of 1 to 64 bytes)";
        else if (!json_is_string(json_object_get(s, "endpoint")) ||
                 json_string_length(json_object_get(s, "endpoint")) > 2048)
            bad = "needs \"endpoint\" (a string)";
        else if (json_object_get(s, "headers") && !json_is_object(json_object_get(s, "headers")))
            bad = "has \"headers\" that is not an object";
        else if (!json_object_get(s, "query"))
            bad = "needs \"query\" (the provider's request body)";
        else if (json_object_get(s, "config") && !json_is_object(json_object_get(s, "config")))
            bad = "has \"config\" that is not an object";
        if (!bad && json_is_object(json_object_get(s, "headers"))) {
            const char *k;
            json_t *v;
            json_object_foreach(json_object_get(s, "headers"), k, v)
            {
                if (!json_is_string(v)) {
                    bad = "has a header value that is not a string";
                    break;
                }
                if (strpbrk(k, "\r\n:") || strpbrk(json_string_value(v), "\r\n")) {
                    bad = "has a header with a line break or colon in it";
                    break;
                }
            }
        }
        if (bad) {
            gw_steps_free(steps, i);
            snprintf(err, errlen, "step %zu %s", i, bad);
            return -1;
        }
        st->provider = dup_str(json_object_get(s, "provider"));
        st->endpoint = dup_str(json_object_get(s, "endpoint"));
        st->headers = json_incref(json_object_get(s, "headers"));
        st->query = json_incref(json_object_get(s, "query"));
        st->config = json_incref(json_object_get(s, "config"));
        if (!st->provider || !st->endpoint) {
            gw_steps_free(steps, i + 1);
            snprintf(err, errlen, "out of memory");
            return -1;
        }
    }
    return (int)n;
}

void gw_steps_free(gw_step *steps, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(steps[i].provider);
        free(steps[i].endpoint);
        json_decref(steps[i].headers);
        json_decref(steps[i].query);
        json_decref(steps[i].config);
        free(steps[i].raw);
        memset(&steps[i], 0, sizeof steps[i]);
    }
}

/* ------------------------------------------------------------------------ */
/* settings of the current step                                              */
/* ------------------------------------------------------------------------ */

static long step_cfg_long(const gw_exec *e, const char *name, long dflt, long lo, long hi)
{
    json_t *v = json_object_get(e->steps[e->step].config, name);
    if (json_is_integer(v) && json_integer_value(v) >= lo && json_integer_value(v) <= hi)
        return (long)json_integer_value(v);
    return dflt;
}

static int max_attempts(const gw_exec *e)
{
    if (e->opts.max_attempts > 0)
        return e->opts.max_attempts;
    return (int)step_cfg_long(e, "maxAttempts", e->gw.cfg->max_attempts > 0 ? e->gw.cfg->max_attempts : 1,
                              1, 5);
}

/* True when the client, the step or the gateway set a request timeout. A
 * local model gets a timer only then: without one, its own limits (queue,
 * context, max_tokens) bound the request, and no timer keeps finished
 * requests' memory alive for the server's whole request timeout. */
static bool explicit_timeout(const gw_exec *e)
{
    return e->opts.request_timeout_ms > 0 || step_cfg_long(e, "requestTimeout", 0, 1, 3600000) > 0 ||
           e->gw.cfg->request_timeout_ms > 0;
}

static int timeout_ms(const gw_exec *e)
{
    if (e->opts.request_timeout_ms > 0)
        return e->opts.request_timeout_ms;
    long t = step_cfg_long(e, "requestTimeout", 0, 1, 3600000);
    if (t > 0)
        return (int)t;
    if (e->gw.cfg->request_timeout_ms > 0)
        return e->gw.cfg->request_timeout_ms;
    if (e->up_cfg)
        return e->up_cfg->timeout_ms > 0 ? e->up_cfg->timeout_ms : 120000;
    int s = e->rt->cfg->server.request_timeout_s;
    return s > 0 ? s * 1000 : 0;
}

/* The delay before attempt `next` (2, 3, ...) of the step. */
static int backoff_ms(const gw_exec *e, int next)
{
    long base = e->opts.retry_delay_ms >= 0
                    ? e->opts.retry_delay_ms
                    : step_cfg_long(e, "retryDelay", e->gw.cfg->retry_delay_ms, 0, 5000);
    int kind = e->opts.backoff;
    if (kind < 0) {
        const char *b = json_string_value(json_object_get(e->steps[e->step].config, "backoff"));
        kind = b ? parse_backoff(b) : -1;
        if (kind < 0)
            kind = (int)e->gw.cfg->backoff;
    }
    double d = (double)base;
    int k = next - 1; /* retries so far, >= 1 */
    if (kind == OP_BACKOFF_LINEAR)
        d *= k;
    else if (kind == OP_BACKOFF_EXPONENTIAL)
        d *= pow(2.0, k - 1);
    return d > GW_MAX_BACKOFF_MS ? GW_MAX_BACKOFF_MS : (int)d;
}

static int cache_ttl_s(const gw_exec *e)
{
    if (e->opts.cache_ttl_s >= 0)
        return e->opts.cache_ttl_s;
    return (int)step_cfg_long(e, "cacheTtl", e->gw.cfg->cache_ttl_s, 0, 30L * 86400);
}

static bool skip_cache(const gw_exec *e)
{
    return e->opts.skip_cache || json_is_true(json_object_get(e->steps[e->step].config, "skipCache"));
}

/* ------------------------------------------------------------------------ */
/* the answer                                                                */
/* ------------------------------------------------------------------------ */

static void meta_fill(gw_exec *e, int status, const char *ctype)
{
    e->meta.status = status;
    snprintf(e->meta.content_type, sizeof e->meta.content_type, "%s",
             ctype && *ctype ? ctype : "application/json");
    e->meta.cached = e->cached;
}

/* Begins the client's answer. Returns 0 or -1 (client gone). */
static int sink_begin(gw_exec *e, int status, const char *ctype, bool stream)
{
    if (e->sink_begun)
        return 0;
    e->sink_begun = true;
    e->answer_status = status;
    meta_fill(e, status, ctype);
    if (!e->ttfb_ns)
        e->ttfb_ns = pl_time_mono_ns();
    int rc = e->sink.begin(e->sink.ctx, status, stream, &e->meta);
    if (rc != 0)
        e->cancelled = true;
    return rc;
}

static int sink_data(gw_exec *e, const char *d, size_t n)
{
    e->log_resp_full += n;
    if (e->collect && e->gw.cfg->log_payloads)
        buf_add(&e->log_resp, d, n > e->gw.cfg->max_payload_bytes - e->log_resp.len
                                     ? e->gw.cfg->max_payload_bytes - e->log_resp.len
                                     : n,
                e->gw.cfg->max_payload_bytes);
    if (e->cancelled)
        return -1;
    if (e->sink.data(e->sink.ctx, d, n) != 0) {
        e->cancelled = true;
        return -1;
    }
    return 0;
}

static void finish(gw_exec *e, bool ok);

/* Answers with an error envelope made here (no provider answer to pass). */
static void answer_error(gw_exec *e, int status, int code, const char *msg)
{
    char *body = op_api_error_json(code, msg);
    if (sink_begin(e, status, "application/json", false) == 0 && body)
        sink_data(e, body, strlen(body));
    free(body);
    e->success = false;
    finish(e, true);
}

/* ------------------------------------------------------------------------ */
/* cost and limits                                                           */
/* ------------------------------------------------------------------------ */

/* USD per million tokens for the model, from the config's prices, else for
 * a local model the Workers AI tier of its parameter count. */
static void prices_for(const gw_exec *e, const char *provider, const char *model, double *in,
                       double *out)
{
    *in = *out = 0;
    const op_config *cfg = e->rt->cfg;
    for (size_t i = 0; i < cfg->n_prices; i++) {
        const op_config_price *p = &cfg->prices[i];
        if (model && strcmp(p->model, model) == 0) {
            *in = p->input_per_mtok;
            *out = p->output_per_mtok;
            return;
        }
    }
    if (!gw_local_is_provider(provider) || !model)
        return;
    const op_runtime_model *m = op_runtime_find_model(e->rt, model);
    if (!m || !m->model)
        return;
    int64_t params = op_model_info(m->model)->parameters;
    if (strcmp(m->cfg->task, "text-embeddings") == 0) {
        *in = params > 150000000 ? 0.015 : 0.008;
        return;
    }
    double b = params / 1e9;
    double tier = b <= 3.0 ? 0.10 : b <= 8.0 ? 0.15 : b <= 20.0 ? 0.20 : b <= 40.0 ? 0.50 : 0.75;
    *in = *out = tier;
}

static double cost_of(const gw_exec *e, int64_t tin, int64_t tout)
{
    if (e->opts.has_custom_cost) {
        if (e->opts.custom_total)
            return e->opts.cost_total;
        return (double)tin * e->opts.cost_per_token_in + (double)tout * e->opts.cost_per_token_out;
    }
    double pin, pout;
    prices_for(e, e->provider, e->model, &pin, &pout);
    return ((double)tin * pin + (double)tout * pout) / 1e6;
}

/* ------------------------------------------------------------------------ */
/* the log record and the end                                                */
/* ------------------------------------------------------------------------ */

/* Whether the model may be a metric label: a configured local model (id or
 * alias) or a priced one, so clients' model names cannot grow the series. */
static bool model_known(const gw_exec *e)
{
    const op_config *cfg = e->rt->cfg;
    if (op_config_find_model(cfg, e->model))
        return true;
    for (size_t i = 0; i < cfg->n_prices; i++)
        if (strcmp(cfg->prices[i].model, e->model) == 0)
            return true;
    return false;
}

static void write_log(gw_exec *e)
{
    ls_store *ls = gw_svc_logs();
    if (!ls)
        return;
    char *meta = e->opts.metadata ? json_dumps(e->opts.metadata, JSON_COMPACT) : NULL;
    uint64_t now = pl_time_mono_ns();
    ls_record rec;
    memset(&rec, 0, sizeof rec);
    memcpy(rec.id, e->meta.log_id, sizeof rec.id);
    rec.created_ms = e->created_ms;
    rec.account = e->account;
    rec.gateway = e->gw.cfg->id;
    rec.provider = e->provider;
    rec.model = e->model;
    rec.path = e->path;
    rec.event_id = e->opts.event_id[0] ? e->opts.event_id : NULL;
    rec.status = e->answer_status;
    rec.success = e->success;
    rec.cached = e->cached;
    rec.step = e->meta.step;
    rec.attempts = e->attempts_total;
    rec.tokens_in = e->usage.tokens_in > 0 ? (uint64_t)e->usage.tokens_in : 0;
    rec.tokens_out = e->usage.tokens_out > 0 ? (uint64_t)e->usage.tokens_out : 0;
    rec.cost = e->cost;
    rec.duration_ms = (double)(now - e->t0_ns) / 1e6;
    rec.ttfb_ms = e->ttfb_ns ? (double)(e->ttfb_ns - e->t0_ns) / 1e6 : rec.duration_ms;
    rec.metadata = meta;
    rec.request_content_type = "application/json";
    rec.response_content_type = e->meta.content_type;
    if (e->gw.cfg->log_payloads) {
        rec.request_body = e->log_req;
        rec.request_body_len = e->log_req_len;
        rec.request_size = e->log_req_full;
        rec.response_body = e->log_resp.p;
        rec.response_body_len = e->log_resp.len;
        rec.response_size = e->log_resp_full;
    }
    uint64_t seq = 0;
    uint64_t w0 = pl_time_mono_ns();
    int rc = ls_append(ls, &rec, &seq);
    if (rc == 0 && e->gw.cfg->sync_logs)
        rc = ls_wait(ls, seq, 10000);
    if (rc != 0)
        PL_LOG_WARN("gateway.log_failed", "gateway", e->gw.cfg->id, "log_id", e->meta.log_id,
                    "reason", strerror(rc < 0 ? -rc : rc));
    gw_metrics_log_write(e->account, e->gw.cfg->id, (double)(pl_time_mono_ns() - w0) / 1e9);
    free(meta);
}

/* Ends the request: sink end, limits settled, the log record. Under mu. */
static void finish(gw_exec *e, bool ok)
{
    if (e->finished)
        return;
    e->finished = true;
    if (!e->sink_begun)
        sink_begin(e, 502, "application/json", false);
    /* Limits are settled before the client sees the end, so that its next
     * request finds the real count, not the reservation. */
    e->cost = e->cached ? 0 : cost_of(e, e->usage.tokens_in, e->usage.tokens_out);
    if (e->has_ticket) {
        double actual[GW_LIMIT_MAX_RULES];
        for (size_t i = 0; i < e->n_rules; i++)
            actual[i] = e->rule_units[i] == GW_LIMIT_REQUESTS ? 1.0
                        : e->rule_units[i] == GW_LIMIT_TOKENS
                            ? (double)(e->usage.tokens_in + e->usage.tokens_out)
                            : e->cost;
        gw_limit_settle(gw_svc_limiter(), &e->ticket, actual, pl_time_mono_ns());
        e->has_ticket = false;
    }
    e->sink.end(e->sink.ctx, &e->meta, ok);
    if (e->collect)
        write_log(e);
    gw_metrics_request(e->account, e->gw.cfg->id, e->provider, e->model, model_known(e),
                       e->answer_status, e->usage.tokens_in, e->usage.tokens_out, e->cost);
}

/* ------------------------------------------------------------------------ */
/* hooks                                                                     */
/* ------------------------------------------------------------------------ */

static void route_request(gw_exec *e, op_route_request *pr, char *meta_buf, size_t meta_len)
{
    (void)meta_len;
    const gw_step *st = &e->steps[e->step];
    memset(pr, 0, sizeof *pr);
    pr->account = e->account;
    pr->model = e->model[0] ? e->model : NULL;
    const op_runtime_model *m = pr->model ? op_runtime_find_model(e->rt, pr->model) : NULL;
    pr->task = m ? m->cfg->task : NULL;
    pr->method = e->method;
    pr->path = e->path;
    pr->headers = e->headers;
    pr->n_headers = e->n_headers;
    pr->tokens_estimate = e->tokens_estimate;
    pr->gateway = e->gw.cfg->id;
    pr->provider = e->provider;
    pr->endpoint = st->endpoint;
    pr->metadata_json = meta_buf;
    pr->token_name = e->token_name;
    pr->max_tokens = e->max_tokens;
    pr->step = e->step;
    pr->attempt = e->attempt;
}

/* The texts the hooks see: the step's query and the metadata, serialized
 * once per step. The policy host decodes them once per request id, so the
 * id changes with the step (the body does too). */
static uint64_t next_request_id(void)
{
    static _Atomic uint64_t seq;
    return (atomic_fetch_add(&seq, 1) + 1) * GW_MAX_STEPS;
}

static void hook_texts(gw_exec *e, const char **q, const char **meta)
{
    if (e->hook_step != e->step) {
        free(e->hook_query);
        const gw_step *st = &e->steps[e->step];
        e->hook_query = st->raw ? strndup(st->raw, st->raw_len)
                                : json_dumps(st->query, JSON_COMPACT | JSON_ENCODE_ANY);
        e->hook_step = e->step;
        if (!e->hook_meta && e->opts.metadata)
            e->hook_meta = json_dumps(e->opts.metadata, JSON_COMPACT);
    }
    *q = e->hook_query;
    *meta = e->hook_meta;
}

static void hook_request(gw_exec *e, op_route_request *pr)
{
    const char *q, *meta;
    hook_texts(e, &q, &meta);
    route_request(e, pr, (char *)meta, 0);
    pr->body_json = q;
    pr->body_len = q ? strlen(q) : 0;
    pr->request_id = e->request_id + (uint64_t)e->step;
}

/* Runs on_error or on_response. Returns false if the policy failed (d then
 * holds FAIL with the reason). */
static void run_next_hook(gw_exec *e, bool error, const op_attempt_result *res, op_next_decision *d)
{
    memset(d, 0, sizeof *d);
    d->delay_ms = -1;
    if (!e->rt->policies)
        return;
    op_route_request pr;
    hook_request(e, &pr);
    op_policy_status st = error ? op_policy_on_error(e->rt->policies, &pr, res, d)
                                : op_policy_on_response(e->rt->policies, &pr, res, d);
    if (st != OP_POLICY_OK) {
        d->action = OP_NEXT_FAIL;
        d->status = 500;
    }
}

/* ------------------------------------------------------------------------ */
/* decisions                                                                 */
/* ------------------------------------------------------------------------ */

static void timer_retry(void *ctx, bool cancelled);

/* Keeps this attempt's answer as the one to give if every step fails. */
static void keep_failure(gw_exec *e, const char *why)
{
    e->last_status = e->status;
    snprintf(e->last_ctype, sizeof e->last_ctype, "%s", e->ctype);
    buf_free(&e->last_body);
    e->last_body = e->body;
    memset(&e->body, 0, sizeof e->body);
    snprintf(e->last_error, sizeof e->last_error, "step %d (%s): %s", e->step, e->provider, why);
}

/* Answers the last failure as it came (the provider's own error answer), or
 * a 502/504 envelope when there was no answer. */
static void answer_last_failure(gw_exec *e)
{
    if (e->last_status >= 400 && e->last_body.p) {
        if (sink_begin(e, e->last_status, e->last_ctype, false) == 0)
            sink_data(e, e->last_body.p, e->last_body.len);
        e->success = false;
        finish(e, true);
        return;
    }
    bool timeout = strstr(e->last_error, "timeout") != NULL;
    char msg[600];
    snprintf(msg, sizeof msg, "every step failed; last: %s", e->last_error);
    answer_error(e, timeout ? 504 : 502, timeout ? OP_API_ERR_TIMEOUT : OP_API_ERR_INFERENCE, msg);
}

static void next_step(gw_exec *e)
{
    if (e->flight) {
        gw_flight_abort(e->flight);
        e->flight = NULL;
    }
    if ((size_t)e->step + 1 >= e->n_steps) {
        answer_last_failure(e);
        return;
    }
    gw_metrics_fallback(e->account, e->gw.cfg->id);
    e->step++;
    start_step(e);
}

static void retry_after(gw_exec *e, int delay_ms)
{
    gw_metrics_retry(e->account, e->gw.cfg->id, e->provider);
    e->attempt++;
    if (delay_ms <= 0) {
        start_attempt(e);
        return;
    }
    atomic_fetch_add(&e->refs, 1);
    attempt_ctx *t = malloc(sizeof *t);
    if (!t || gw_upstream_after(gw_svc_upstream(), delay_ms, timer_retry, t) != 0) {
        free(t);
        atomic_fetch_sub(&e->refs, 1);
        start_attempt(e); /* no timer: retry at once rather than never */
        return;
    }
    t->e = e;
    t->gen = ++e->gen;
}

/* Applies what the policies (or the defaults) decided about a failed or
 * refused attempt. Under mu. */
static void apply_decision(gw_exec *e, const op_next_decision *d, bool retryable, const char *why)
{
    if (e->cancelled) {
        answer_error(e, 499, OP_API_ERR_INFERENCE, "client went away");
        return;
    }
    switch (d->action) {
    case OP_NEXT_RETRY:
        keep_failure(e, why);
        /* A policy may retry past max_attempts, not without end. */
        if (e->attempt >= GW_MAX_POLICY_ATTEMPTS)
            next_step(e);
        else
            retry_after(e, d->delay_ms >= 0 ? d->delay_ms : backoff_ms(e, e->attempt + 1));
        return;
    case OP_NEXT_FALLBACK:
        keep_failure(e, why);
        next_step(e);
        return;
    case OP_NEXT_FAIL: {
        if (e->flight) {
            gw_flight_abort(e->flight);
            e->flight = NULL;
        }
        int status = d->status >= 400 && d->status <= 599 ? d->status : 502;
        answer_error(e, status,
                     status == 500 ? OP_API_ERR_POLICY_FAILED : OP_API_ERR_POLICY_REJECT,
                     d->message[0] ? d->message : why);
        return;
    }
    case OP_NEXT_ACCEPT:
    case OP_NEXT_DEFAULT:
    default:
        keep_failure(e, why);
        if (retryable && e->attempt < max_attempts(e))
            retry_after(e, backoff_ms(e, e->attempt + 1));
        else
            next_step(e);
        return;
    }
}

/* ------------------------------------------------------------------------ */
/* provider callbacks                                                        */
/* ------------------------------------------------------------------------ */

/* ------------------------------------------------------------------------ */
/* resumption                                                                */
/*                                                                           */
/* A stream that fails after it began cannot start over: the client has its  */
/* first part. When the step has attempts left, the gateway calls it again   */
/* and checks that the new stream reproduces, text for text, what the client */
/* already has (it does for greedy or seeded requests, and for a provider    */
/* that replays); the new stream's events are then passed on from the point  */
/* the first one stopped, the overlapping event cut to its new part. If the  */
/* text differs, the client's stream ends there, as it would have.           */
/* ------------------------------------------------------------------------ */

/* The generated text of a stream event: OpenAI chat (choices[0].delta.
 * content), OpenAI completions (choices[0].text), Workers AI (response).
 * Returns the JSON string holding it and, for rewriting, its parent and
 * key; NULL if the event carries none. */
static json_t *event_text(json_t *ev, json_t **parent, const char **key)
{
    json_t *r = json_object_get(ev, "response");
    if (json_is_string(r)) {
        *parent = ev;
        *key = "response";
        return r;
    }
    json_t *c0 = json_array_get(json_object_get(ev, "choices"), 0);
    json_t *delta = json_object_get(c0, "delta");
    if (json_is_object(delta) && json_is_string(json_object_get(delta, "content"))) {
        *parent = delta;
        *key = "content";
        return json_object_get(delta, "content");
    }
    if (json_is_string(json_object_get(c0, "text"))) {
        *parent = c0;
        *key = "text";
        return json_object_get(c0, "text");
    }
    return NULL;
}

static void remember_text(gw_exec *e, const char *t, size_t n)
{
    if (e->delivered_overflow)
        return;
    if (!buf_add(&e->delivered, t, n, GW_MAX_RESUME_TEXT))
        e->delivered_overflow = true;
}

/* Every event of a stream passed on: usage, and the text delivered. */
static void on_sse_event(void *ctx, const char *data, size_t len)
{
    gw_exec *e = ctx;
    gw_usage_scan_event(&e->usage, data, len);
    if (e->delivered_overflow || (len == 6 && memcmp(data, "[DONE]", 6) == 0))
        return;
    json_t *ev = json_loadb(data, len, 0, NULL);
    json_t *parent;
    const char *key;
    json_t *t = ev ? event_text(ev, &parent, &key) : NULL;
    if (t)
        remember_text(e, json_string_value(t), json_string_length(t));
    json_decref(ev);
}

static int send_event_text(gw_exec *e, const char *data, size_t len)
{
    if (sink_data(e, "data: ", 6) != 0 || sink_data(e, data, len) != 0)
        return -1;
    return sink_data(e, "\n\n", 2);
}

/* One event of a resuming attempt. */
static void resume_event(void *ctx, const char *data, size_t len)
{
    gw_exec *e = ctx;
    if (e->resume_failed)
        return;
    gw_usage_scan_event(&e->usage, data, len);
    bool caught_up = e->resume_matched == e->delivered.len;
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        if (caught_up)
            send_event_text(e, data, len);
        else
            e->resume_failed = true; /* ended before reproducing the text */
        return;
    }
    json_t *ev = json_loadb(data, len, 0, NULL);
    json_t *parent = NULL;
    const char *key = NULL;
    json_t *t = ev ? event_text(ev, &parent, &key) : NULL;
    if (!t) {
        /* No text (the role chunk, a finish or usage chunk): passed on once
         * caught up, dropped before (the client had the first stream's). */
        if (caught_up)
            send_event_text(e, data, len);
        json_decref(ev);
        return;
    }
    const char *tx = json_string_value(t);
    size_t tl = json_string_length(t);
    size_t left = e->delivered.len - e->resume_matched;
    const char *want = e->delivered.p ? e->delivered.p + e->resume_matched : "";
    if (left == 0) {
        remember_text(e, tx, tl);
        e->resume_matched = e->delivered.len;
        send_event_text(e, data, len);
    } else if (tl <= left) {
        if (memcmp(tx, want, tl) == 0)
            e->resume_matched += tl;
        else
            e->resume_failed = true;
    } else if (memcmp(tx, want, left) == 0) {
        /* The event that crosses the seam: pass on its new part only. */
        json_t *rest = json_stringn(tx + left, tl - left);
        if (!rest) {
            e->resume_failed = true; /* the seam is inside a character */
        } else {
            remember_text(e, tx + left, tl - left);
            json_object_set_new(parent, key, rest);
            char *out = json_dumps(ev, JSON_COMPACT);
            if (out)
                send_event_text(e, out, strlen(out));
            free(out);
            e->resume_matched = e->delivered.len;
        }
    } else {
        e->resume_failed = true;
    }
    json_decref(ev);
}

static bool ctype_is_stream(const char *ct)
{
    return ct && strncasecmp(ct, "text/event-stream", 17) == 0;
}

/* Locks e and checks the callback belongs to the current attempt. */
static gw_exec *cb_enter(attempt_ctx *a)
{
    gw_exec *e = a->e;
    pthread_mutex_lock(&e->mu);
    if (a->gen != e->gen || e->finished) {
        pthread_mutex_unlock(&e->mu);
        return NULL;
    }
    return e;
}

static void cache_meta(gw_exec *e, gw_cache_meta *m)
{
    memset(m, 0, sizeof *m);
    m->status = e->status;
    snprintf(m->content_type, sizeof m->content_type, "%s", e->ctype);
    m->stream = e->stream;
    m->tokens_in = e->usage.tokens_in;
    m->tokens_out = e->usage.tokens_out;
    m->cost = cost_of(e, e->usage.tokens_in, e->usage.tokens_out);
    snprintf(m->provider, sizeof m->provider, "%s", e->provider);
    scopy(m->model, sizeof m->model, e->model);
    m->step = e->step;
}

/* Starts passing the answer to the client. Under mu. */
static int pass_begin(gw_exec *e)
{
    e->passing = true;
    e->meta.step = e->step;
    if (e->flight) {
        gw_cache_meta m;
        cache_meta(e, &m);
        gw_flight_head(e->flight, &m);
    }
    return sink_begin(e, e->status, e->ctype, e->stream);
}

static int pass_data(gw_exec *e, const char *d, size_t n)
{
    if (e->flight)
        gw_flight_data(e->flight, d, n);
    if (e->stream)
        gw_sse_feed(&e->sse, d, n, on_sse_event, e);
    return sink_data(e, d, n);
}

/* The answer was passed whole: store it in the cache, end. */
static void pass_end(gw_exec *e, bool ok)
{
    if (e->stream && !e->usage.reported) {
        /* A provider that reports no usage in its stream: each text event
         * is about one token, and the prompt is estimated. */
        e->usage.tokens_out = e->usage.text_events;
        e->usage.tokens_in = e->tokens_estimate > 0 ? e->tokens_estimate : 0;
    }
    /* A stream that ended without [DONE] was cut, however it ended. */
    if (e->stream && !e->usage.done)
        ok = false;
    bool good = ok && e->status < 400 && !e->usage.error_event;
    if (e->flight) {
        gw_cache_meta m;
        cache_meta(e, &m);
        if (good)
            gw_flight_commit(e->flight, e->cache_on, e->cache_ttl_ns, &m, pl_time_mono_ns());
        else
            gw_flight_abort(e->flight);
        e->flight = NULL;
    }
    e->success = good;
    e->stream_cut = !ok;
    finish(e, ok);
}

static int cb_head(void *ctx, int status, const char *ctype, const gw_header *h, size_t nh)
{
    gw_exec *e = cb_enter(ctx);
    if (!e)
        return -1;
    e->retry_after_ms = 0;
    for (size_t i = 0; i < nh; i++)
        if (h[i].name && h[i].value && strcasecmp(h[i].name, "retry-after") == 0) {
            long v;
            if (parse_long(h[i].value, 0, 86400, &v))
                e->retry_after_ms = (long long)v * 1000;
        }
    e->status = status;
    snprintf(e->ctype, sizeof e->ctype, "%s", ctype ? ctype : "");
    e->stream = ctype_is_stream(ctype) && status < 400;
    if (e->resuming) {
        /* The client's stream is open already: only a stream continues it. */
        int rc = -1;
        if (e->stream)
            e->passing = true, rc = 0;
        else
            e->resume_failed = true;
        pthread_mutex_unlock(&e->mu);
        return rc;
    }
    if (!e->ttfb_ns)
        e->ttfb_ns = pl_time_mono_ns();
    gw_metrics_upstream_ttfb(e->provider, (double)(pl_time_mono_ns() - e->attempt_t0) / 1e9);
    int rc = 0;
    if (e->stream) {
        /* A stream is committed to once it begins: on_response decides now,
         * without a body. */
        op_attempt_result res = {.status = status, .content_type = e->ctype,
                                 .duration_ms = (double)(pl_time_mono_ns() - e->attempt_t0) / 1e6,
                                 .max_attempts = max_attempts(e),
                                 .retry_after_ms = e->retry_after_ms};
        op_next_decision d;
        run_next_hook(e, false, &res, &d);
        if (d.action == OP_NEXT_RETRY || d.action == OP_NEXT_FALLBACK || d.action == OP_NEXT_FAIL) {
            e->pending = d;
            e->has_pending = true;
            rc = -1;
        } else {
            rc = pass_begin(e);
        }
    }
    pthread_mutex_unlock(&e->mu);
    return rc;
}

static int cb_data(void *ctx, const char *d, size_t n)
{
    gw_exec *e = cb_enter(ctx);
    if (!e)
        return -1;
    int rc = 0;
    if (e->resuming && e->passing) {
        gw_sse_feed(&e->rsse, d, n, resume_event, e);
        rc = e->resume_failed || e->cancelled ? -1 : 0;
    } else if (e->passing) {
        rc = pass_data(e, d, n);
    } else {
        size_t max = e->status >= 400 ? GW_MAX_ERROR_BODY : GW_MAX_BUFFERED_BODY;
        if (!buf_add(&e->body, d, n, max)) {
            if (e->status >= 400) {
                /* Keep the start of an error body; the rest does not matter. */
            } else {
                e->body_overflow = true;
                rc = -1;
            }
        }
    }
    pthread_mutex_unlock(&e->mu);
    return rc;
}

static const char *err_kind(gw_up_err err)
{
    switch (err) {
    case GW_UP_TIMEOUT: return "timeout";
    case GW_UP_TLS: return "tls";
    case GW_UP_PROTOCOL: return "protocol";
    case GW_UP_CONNECT: return "network";
    default: return "network";
    }
}

static void release_call(gw_exec *e, gw_upstream_call **up, gw_local_call **loc)
{
    *up = e->up;
    *loc = e->loc;
    e->up = NULL;
    e->loc = NULL;
}

/* Starts a new attempt that continues the client's cut stream, if the
 * step has attempts left and the delivered text is known. Under mu. */
static bool try_resume(gw_exec *e, const char *why)
{
    if (e->delivered_overflow || e->attempt >= max_attempts(e))
        return false;
    PL_LOG_WARN("gateway.stream_resume", "gateway", e->gw.cfg->id, "provider", e->provider,
                "reason", why);
    if (e->flight) {
        /* Followers had the first part; they end where it ended. */
        gw_flight_abort(e->flight);
        e->flight = NULL;
    }
    e->resuming = true;
    e->resume_failed = false;
    e->resume_matched = 0;
    e->resumes++;
    gw_sse_free(&e->rsse);
    gw_sse_init(&e->rsse, 1u << 20);
    retry_after(e, backoff_ms(e, e->attempt + 1));
    return true;
}

static void cb_done(void *ctx, gw_up_err err, const char *message)
{
    attempt_ctx *a = ctx;
    gw_exec *e = cb_enter(a);
    if (!e) {
        exec_unref(a->e);
        free(a);
        return;
    }
    gw_upstream_call *up;
    gw_local_call *loc;
    e->done_gen = a->gen;
    release_call(e, &up, &loc);
    double dur = (double)(pl_time_mono_ns() - e->attempt_t0) / 1e6;
    gw_metrics_upstream_duration(e->provider, dur / 1e3);
    if (e->timed_out && err != GW_UP_OK) {
        err = GW_UP_TIMEOUT;
        message = "the attempt exceeded its request timeout";
    }

    bool cut = (e->stream || e->resuming) && (err != GW_UP_OK || !e->usage.done);
    if ((e->passing || e->resuming) && cut && !e->cancelled && !e->resume_failed &&
        try_resume(e, message ? message : gw_up_err_name(err))) {
        /* a new attempt continues the stream */
    } else if (e->passing || e->resuming) {
        /* The answer was being passed on: a stream (or a whole body) ends. */
        if (cut)
            PL_LOG_WARN("gateway.stream_cut", "gateway", e->gw.cfg->id, "provider", e->provider,
                        "reason",
                        e->resume_failed ? "the retry did not reproduce the delivered text"
                        : message        ? message
                                         : gw_up_err_name(err));
        pass_end(e, err == GW_UP_OK && !e->resume_failed);
    } else if (e->cancelled) {
        answer_error(e, 499, OP_API_ERR_INFERENCE, "client went away");
    } else if (e->has_pending) {
        e->has_pending = false;
        op_next_decision d = e->pending;
        apply_decision(e, &d, false, "refused by the on_response policy");
    } else if (e->status >= 400) {
        op_attempt_result res = {.status = e->status, .error_kind = "http",
                                 .body = e->body.p, .body_len = e->body.len,
                                 .content_type = e->ctype, .duration_ms = dur,
                                 .max_attempts = max_attempts(e),
                                 .retry_after_ms = e->retry_after_ms};
        op_next_decision d;
        run_next_hook(e, true, &res, &d);
        char why[64];
        snprintf(why, sizeof why, "HTTP %d", e->status);
        apply_decision(e, &d, e->status == 429 || e->status >= 500, why);
    } else if (err != GW_UP_OK && e->status < 400) {
        char why[400];
        snprintf(why, sizeof why, "%s: %s", gw_up_err_name(err),
                 message ? message : "no response");
        if (e->body_overflow)
            snprintf(why, sizeof why, "the response is larger than %u bytes",
                     GW_MAX_BUFFERED_BODY);
        op_attempt_result res = {.status = e->status, .error_kind = err_kind(err),
                                 .message = why, .duration_ms = dur,
                                 .max_attempts = max_attempts(e),
                                 .retry_after_ms = e->retry_after_ms};
        op_next_decision d;
        run_next_hook(e, true, &res, &d);
        e->status = 0; /* no answer to pass on */
        apply_decision(e, &d, !e->body_overflow, why);
    } else {
        /* A whole answer: on_response may read it before it is passed on. */
        op_attempt_result res = {.status = e->status, .body = e->body.p, .body_len = e->body.len,
                                 .content_type = e->ctype, .duration_ms = dur,
                                 .max_attempts = max_attempts(e),
                                 .retry_after_ms = e->retry_after_ms};
        op_next_decision d;
        run_next_hook(e, false, &res, &d);
        if (d.action == OP_NEXT_RETRY || d.action == OP_NEXT_FALLBACK || d.action == OP_NEXT_FAIL) {
            apply_decision(e, &d, false, "refused by the on_response policy");
        } else {
            gw_usage_from_body(&e->usage, e->body.p ? e->body.p : "", e->body.len);
            if (!e->usage.reported)
                e->usage.tokens_in = e->tokens_estimate > 0 ? e->tokens_estimate : 0;
            buf b = e->body;
            memset(&e->body, 0, sizeof e->body);
            if (pass_begin(e) == 0 && b.p)
                pass_data(e, b.p, b.len);
            buf_free(&b);
            pass_end(e, true);
        }
    }
    pthread_mutex_unlock(&e->mu);
    if (up)
        gw_upstream_release(up);
    if (loc)
        gw_local_release(loc);
    exec_unref(e);
    free(a);
}

static void timer_retry(void *ctx, bool cancelled)
{
    attempt_ctx *t = ctx;
    gw_exec *e = t->e;
    pthread_mutex_lock(&e->mu);
    bool current = t->gen == e->gen && !e->finished;
    if (current && (cancelled || e->cancelled))
        answer_error(e, cancelled ? 503 : 499, OP_API_ERR_INFERENCE,
                     cancelled ? "the gateway is shutting down" : "client went away");
    else if (current)
        start_attempt(e);
    pthread_mutex_unlock(&e->mu);
    exec_unref(e);
    free(t);
}

/* The per-attempt timeout of a local model (upstream calls have their own
 * transfer timeout). */
static void timer_timeout(void *ctx, bool cancelled)
{
    attempt_ctx *t = ctx;
    gw_exec *e = t->e;
    gw_local_call *loc = NULL;
    pthread_mutex_lock(&e->mu);
    if (!cancelled && t->gen == e->gen && !e->finished && e->loc && !e->passing) {
        e->timed_out = true;
        loc = e->loc;
    }
    pthread_mutex_unlock(&e->mu);
    if (loc)
        gw_local_cancel(loc);
    exec_unref(e);
    free(t);
}

/* ------------------------------------------------------------------------ */
/* coalesced followers                                                       */
/* ------------------------------------------------------------------------ */

static void fol_head(void *ctx, const gw_cache_meta *m)
{
    gw_exec *e = ctx;
    pthread_mutex_lock(&e->mu);
    if (!e->finished) {
        e->status = m->status;
        snprintf(e->ctype, sizeof e->ctype, "%s", m->content_type);
        e->stream = m->stream;
        e->cached = true;
        e->meta.step = e->step;
        sink_begin(e, m->status, m->content_type, m->stream);
    }
    pthread_mutex_unlock(&e->mu);
}

static void fol_data(void *ctx, const char *d, size_t n)
{
    gw_exec *e = ctx;
    pthread_mutex_lock(&e->mu);
    if (!e->finished && e->sink_begun) {
        if (e->stream)
            gw_sse_feed(&e->sse, d, n, on_sse_event, e);
        else
            buf_add(&e->body, d, n, GW_MAX_BUFFERED_BODY);
        sink_data(e, d, n);
    }
    pthread_mutex_unlock(&e->mu);
}

static void fol_done(void *ctx, bool ok, bool delivered)
{
    gw_exec *e = ctx;
    pthread_mutex_lock(&e->mu);
    bool was = e->following;
    e->following = false;
    gw_cache_follow *fw = e->follow;
    e->follow = NULL;
    if (fw)
        gw_cache_unfollow(gw_svc_cache(), fw); /* allowed from its own on_done */
    if (was && !e->finished) {
        if (ok) {
            if (!e->stream)
                gw_usage_from_body(&e->usage, e->body.p ? e->body.p : "", e->body.len);
            e->success = e->status < 400;
            finish(e, true);
        } else if (delivered) {
            e->success = false;
            finish(e, false);
        } else {
            /* The leader failed before answering: go to the provider. */
            e->cached = false;
            e->cache_on = false;
            start_attempt(e);
        }
    }
    pthread_mutex_unlock(&e->mu);
    if (was)
        exec_unref(e); /* the follow's reference */
}

/* ------------------------------------------------------------------------ */
/* steps and attempts                                                        */
/* ------------------------------------------------------------------------ */

static const op_config_provider *find_provider(const gw_exec *e, const char *name)
{
    for (size_t i = 0; i < e->gw.cfg->n_providers; i++)
        if (strcmp(e->gw.cfg->providers[i].name, name) == 0)
            return &e->gw.cfg->providers[i];
    return NULL;
}

static const char *step_header(const gw_step *st, const char *name)
{
    const char *k;
    json_t *v;
    json_object_foreach(st->headers, k, v) if (strcasecmp(k, name) == 0) return json_string_value(v);
    return NULL;
}

/* The cache key: the gateway, provider, endpoint, model, the identity of
 * the credentials sent upstream, and the body (or cf-aig-cache-key). */
static void compute_key(gw_exec *e, const char *auth)
{
    const gw_step *st = &e->steps[e->step];
    /* The body: the client's bytes on pass-through paths, else the step's
     * query with its keys sorted. */
    char *q = e->opts.cache_key[0] ? NULL
              : st->raw            ? strndup(st->raw, st->raw_len)
                         : json_dumps(st->query, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    char cred[PL_SHA256_HEX_LEN + 1] = "";
    if (auth)
        pl_sha256_hex(auth, strlen(auth), cred);
    size_t n = strlen(e->account) + strlen(e->gw.cfg->id) + strlen(e->provider) +
               strlen(st->endpoint) + strlen(e->model) + sizeof cred + (q ? strlen(q) : 0) +
               strlen(e->opts.cache_key) + 16;
    char *m = malloc(n);
    if (!m) {
        memset(e->key.b, 0, sizeof e->key.b);
        e->cache_on = false;
        free(q);
        return;
    }
    int len;
    if (e->opts.cache_key[0])
        len = snprintf(m, n, "%s%c%s%ck%c%s", e->account, 0, e->gw.cfg->id, 0, 0,
                       e->opts.cache_key);
    else
        len = snprintf(m, n, "%s%c%s%cb%c%s%c%s%c%s%c%s%c%s", e->account, 0, e->gw.cfg->id, 0, 0,
                       e->provider, 0, st->endpoint, 0, e->model, 0, cred, 0, q ? q : "");
    pl_sha256(m, len > 0 ? (size_t)len : 0, e->key.b);
    free(m);
    free(q);
}

/* The Authorization value sent upstream: the step's own, else the
 * provider's configured key. */
static const char *upstream_auth(const gw_exec *e, char *out, size_t len)
{
    const char *a = step_header(&e->steps[e->step], "authorization");
    if (a)
        return a;
    if (e->up_cfg && e->up_cfg->api_key) {
        snprintf(out, len, "Bearer %s", e->up_cfg->api_key);
        return out;
    }
    return NULL;
}

static bool hop_by_hop(const char *k)
{
    static const char *const skip[] = {"host", "content-length", "connection", "transfer-encoding",
                                       "keep-alive", "upgrade", "te", "trailer", "expect",
                                       "proxy-authorization", "authorization", NULL};
    for (size_t i = 0; skip[i]; i++)
        if (strcasecmp(k, skip[i]) == 0)
            return true;
    return strncasecmp(k, "cf-aig-", 7) == 0;
}

/* Starts one attempt of the current step. Under mu; releases nothing. */
static void start_attempt(gw_exec *e)
{
    if (e->cancelled) {
        answer_error(e, 499, OP_API_ERR_INFERENCE, "client went away");
        return;
    }
    gw_step *st = &e->steps[e->step];
    e->attempts_total++;
    e->gen++;
    e->status = 0;
    e->ctype[0] = '\0';
    e->stream = false;
    e->passing = false;
    e->body_overflow = false;
    e->timed_out = false;
    e->has_pending = false;
    buf_free(&e->body);
    gw_sse_free(&e->sse);
    gw_sse_init(&e->sse, 1u << 20);
    memset(&e->usage, 0, sizeof e->usage);
    e->attempt_t0 = pl_time_mono_ns();

    attempt_ctx *a = malloc(sizeof *a);
    if (!a) {
        answer_error(e, 500, OP_API_ERR_INFERENCE, "out of memory");
        return;
    }
    a->e = e;
    a->gen = e->gen;
    atomic_fetch_add(&e->refs, 1);
    gw_response_cb cb = {.ctx = a, .on_head = cb_head, .on_data = cb_data, .on_done = cb_done};
    int tmo = timeout_ms(e);

    /* The request body: OpenAI-compatible streams ask for the usage chunk,
     * so that streamed requests are counted. */
    json_t *q = json_incref(st->query);
    bool openai_like = !e->up_cfg || e->up_cfg->kind == OP_PROVIDER_OPENAI;
    bool modified = false;
    if (openai_like && json_is_object(q) && json_is_true(json_object_get(q, "stream")) &&
        json_object_get(q, "messages") && !json_object_get(q, "stream_options")) {
        json_t *c = json_deep_copy(q);
        json_decref(q);
        q = c;
        json_object_set_new(q, "stream_options", json_pack("{s:b}", "include_usage", 1));
        modified = true;
    }

    if (!e->up_cfg) {
        /* A local model: start it with the lock released (it may answer at
         * once, on this thread). */
        gw_local_call *loc = NULL;
        char model[256];
        snprintf(model, sizeof model, "%s", e->model);
        op_runtime *rt = e->rt;
        char endpoint[2048];
        snprintf(endpoint, sizeof endpoint, "%s", st->endpoint);
        uint64_t gen = e->gen;
        pthread_mutex_unlock(&e->mu);
        int rc = gw_local_start(rt, endpoint, model[0] ? model : NULL, q, &cb, &loc);
        pthread_mutex_lock(&e->mu);
        json_decref(q);
        if (rc != 0) {
            atomic_fetch_sub(&e->refs, 1); /* a's; not the last: the caller's runs */
            free(a);
            if (gen == e->gen && !e->finished)
                answer_error(e, 500, OP_API_ERR_INFERENCE, "out of memory");
            return;
        }
        if (gen == e->gen && e->done_gen != gen && !e->finished) {
            e->loc = loc;
            if (tmo > 0 && explicit_timeout(e)) {
                attempt_ctx *t = malloc(sizeof *t);
                if (t) {
                    t->e = e;
                    t->gen = gen;
                    atomic_fetch_add(&e->refs, 1);
                    if (gw_upstream_after(gw_svc_upstream(), tmo, timer_timeout, t) != 0) {
                        atomic_fetch_sub(&e->refs, 1);
                        free(t);
                    }
                }
            }
        } else {
            gw_local_release(loc);
        }
        return;
    }

    /* An upstream over HTTP. */
    const op_config_provider *p = e->up_cfg;
    char url[4096];
    const char *ep = st->endpoint[0] == '/' ? st->endpoint + 1 : st->endpoint;
    if (p->kind == OP_PROVIDER_WORKERS_AI && ep[0] == '@')
        snprintf(url, sizeof url, "%s/run/%s", p->base_url, ep);
    else
        snprintf(url, sizeof url, "%s/%s", p->base_url, ep);
    gw_header hdrs[64];
    size_t nh = 0;
    char authbuf[1024];
    const char *auth = upstream_auth(e, authbuf, sizeof authbuf);
    hdrs[nh++] = (gw_header){"Content-Type", "application/json"};
    if (auth)
        hdrs[nh++] = (gw_header){"Authorization", auth};
    for (size_t i = 0; i < p->n_headers && nh < 48; i++)
        hdrs[nh++] = (gw_header){p->headers[i].key, p->headers[i].value};
    const char *k;
    json_t *v;
    json_object_foreach(st->headers, k, v)
    {
        if (nh >= 64)
            break;
        if (!hop_by_hop(k) && strcasecmp(k, "content-type") != 0)
            hdrs[nh++] = (gw_header){k, json_string_value(v)};
    }
    /* Unchanged pass-through bodies go out as the client's bytes: no
     * serialization on the hot path. */
    char *body = NULL;
    const char *out_body;
    size_t out_len;
    if (st->raw && !modified) {
        out_body = st->raw;
        out_len = st->raw_len;
    } else {
        body = json_dumps(q, JSON_COMPACT | JSON_ENCODE_ANY);
        out_body = body;
        out_len = body ? strlen(body) : 0;
    }
    json_decref(q);
    gw_upstream_req req = {.method = "POST", .url = url, .headers = hdrs, .n_headers = nh,
                           .body = out_body, .body_len = out_len,
                           .timeout_ms = tmo,
                           .connect_timeout_ms = p->connect_timeout_ms};
    gw_upstream_call *call = NULL;
    char err[256];
    /* Callbacks run on the client's loop thread and take mu: they wait for
     * this function's caller to let go of it. */
    if (gw_upstream_start(gw_svc_upstream(), &req, &cb, &call, err, sizeof err) != 0) {
        free(body);
        atomic_fetch_sub(&e->refs, 1); /* a's; not the last */
        free(a);
        char why[320];
        snprintf(why, sizeof why, "cannot call %s: %s", p->name, err);
        e->status = 0;
        op_next_decision d = {.action = OP_NEXT_DEFAULT, .delay_ms = -1};
        apply_decision(e, &d, false, why);
        return;
    }
    free(body);
    e->up = call;
}

/* Starts the current step: route, provider, cache. Under mu. */
static void start_step(gw_exec *e)
{
    gw_step *st = &e->steps[e->step];
    e->attempt = 1;
    snprintf(e->provider, sizeof e->provider, "%s", st->provider);
    if (!gw_local_model(st->endpoint, st->query, e->model, sizeof e->model)) {
        const char *m = json_string_value(json_object_get(st->query, "model"));
        snprintf(e->model, sizeof e->model, "%s", m ? m : "");
    }
    json_t *mt = json_object_get(st->query, "max_tokens");
    e->max_tokens = json_is_integer(mt) ? (long long)json_integer_value(mt) : -1;

    if (e->rt->policies) {
        op_route_request pr;
        hook_request(e, &pr);
        op_route_decision d;
        op_policy_status ps = op_policy_route(e->rt->policies, &pr, &d);
        if (ps != OP_POLICY_OK) {
            answer_error(e, 500, OP_API_ERR_POLICY_FAILED, d.message);
            return;
        }
        if (d.action == OP_ROUTE_REJECT) {
            answer_error(e, d.status >= 400 && d.status <= 599 ? d.status : 403,
                         OP_API_ERR_POLICY_REJECT, d.message);
            return;
        }
        if (d.model[0])
            snprintf(e->model, sizeof e->model, "%s", d.model);
        if (d.provider[0])
            snprintf(e->provider, sizeof e->provider, "%s", d.provider);
    }

    e->up_cfg = NULL;
    if (!gw_local_is_provider(e->provider)) {
        e->up_cfg = find_provider(e, e->provider);
        if (!e->up_cfg) {
            char why[160];
            snprintf(why, sizeof why, "no provider '%s' in gateway '%s'", e->provider,
                     e->gw.cfg->id);
            e->status = 0;
            buf_free(&e->body);
            if (e->n_steps == 1) {
                answer_error(e, 400, OP_API_ERR_INVALID_INPUT, why);
            } else {
                keep_failure(e, why);
                next_step(e);
            }
            return;
        }
    }

    /* The record keeps the body of the step that answers (this one, until
     * another is tried). */
    if (e->collect && e->gw.cfg->log_payloads) {
        free(e->log_req);
        e->log_req = st->raw ? strndup(st->raw, st->raw_len)
                             : json_dumps(st->query, JSON_COMPACT | JSON_ENCODE_ANY);
        e->log_req_len = e->log_req ? strlen(e->log_req) : 0;
        e->log_req_full = e->log_req_len;
        if (e->log_req_len > e->gw.cfg->max_payload_bytes)
            e->log_req_len = e->gw.cfg->max_payload_bytes;
    }

    /* The cache. */
    int ttl = cache_ttl_s(e);
    e->cache_on = ttl > 0 && !skip_cache(e);
    e->cache_ttl_ns = (uint64_t)ttl * 1000000000ull;
    if (e->cache_on) {
        char authbuf[1024];
        compute_key(e, upstream_auth(e, authbuf, sizeof authbuf));
        gw_cache_entry *hit = NULL;
        gw_cache_sub sub = {.ctx = e, .on_head = fol_head, .on_data = fol_data,
                            .on_done = fol_done};
        e->following = true;
        atomic_fetch_add(&e->refs, 1); /* the follow's, if it becomes one */
        gw_cache_result r = gw_cache_begin(gw_svc_cache(), &e->key, pl_time_mono_ns(), true,
                                           &sub, &hit, &e->flight, &e->follow);
        if (r != GW_CACHE_FOLLOW)
            atomic_fetch_sub(&e->refs, 1); /* not the last: whoever called holds one */
        if (r == GW_CACHE_HIT) {
            e->following = false;
            const gw_cache_meta *m = gw_cache_entry_meta(hit);
            size_t len;
            const char *b = gw_cache_entry_body(hit, &len);
            e->cached = true;
            e->status = m->status;
            e->stream = m->stream;
            e->usage.tokens_in = m->tokens_in;
            e->usage.tokens_out = m->tokens_out;
            e->meta.step = e->step;
            snprintf(e->model, sizeof e->model, "%s", m->model[0] ? m->model : e->model);
            gw_metrics_cache(e->account, e->gw.cfg->id, true);
            if (sink_begin(e, m->status, m->content_type, m->stream) == 0)
                sink_data(e, b, len);
            gw_cache_entry_unref(hit);
            e->success = true;
            finish(e, true);
            return;
        }
        gw_metrics_cache(e->account, e->gw.cfg->id, false);
        if (r == GW_CACHE_FOLLOW) {
            /* The leader's answer comes through fol_*. If it already came
             * whole (the catch-up ran inside gw_cache_begin), the handle was
             * not known to fol_done yet: end it here. */
            if (!e->following && e->follow) {
                gw_cache_follow *fw = e->follow;
                e->follow = NULL;
                gw_cache_unfollow(gw_svc_cache(), fw);
            }
            return;
        }
        e->following = false;
    }
    start_attempt(e);
}

/* ------------------------------------------------------------------------ */
/* limits                                                                    */
/* ------------------------------------------------------------------------ */

/* Checks the gateway's and the policies' rate limits. Returns true if the
 * request may go on; otherwise it has been answered. Under mu. */
static bool check_limits(gw_exec *e)
{
    gw_limit_rule rules[GW_LIMIT_MAX_RULES];
    double amounts[GW_LIMIT_MAX_RULES];
    size_t n = 0;
    long long reserve_tokens =
        (e->tokens_estimate > 0 ? e->tokens_estimate : 0) +
        (e->max_tokens > 0 ? e->max_tokens : GW_DEFAULT_MAX_TOKENS);
    if (e->gw.cfg->rate_limit > 0) {
        gw_limit_rule *r = &rules[n];
        memset(r, 0, sizeof *r);
        snprintf(r->key, sizeof r->key, "gw/%s/%s", e->account, e->gw.cfg->id);
        r->unit = GW_LIMIT_REQUESTS;
        r->limit = e->gw.cfg->rate_limit;
        r->window_s = e->gw.cfg->rate_limit_window_s > 0 ? e->gw.cfg->rate_limit_window_s : 60;
        r->sliding = e->gw.cfg->rate_limit_sliding;
        amounts[n++] = 1;
    }
    if (e->rt->policies) {
        op_limit_rule pr_rules[OP_POLICY_MAX_LIMIT_RULES];
        size_t np = 0;
        op_route_request pr;
        hook_request(e, &pr);
        op_route_decision fail;
        op_policy_status ps = op_policy_limit(e->rt->policies, &pr, pr_rules, &np, &fail);
        if (ps != OP_POLICY_OK) {
            answer_error(e, 500, OP_API_ERR_POLICY_FAILED, fail.message);
            return false;
        }
        for (size_t i = 0; i < np && n < GW_LIMIT_MAX_RULES; i++) {
            gw_limit_rule *r = &rules[n];
            memset(r, 0, sizeof *r);
            char key[2048];
            snprintf(key, sizeof key, "p/%s/%s/%s", e->account, e->gw.cfg->id, pr_rules[i].key);
            scopy(r->key, sizeof r->key, key);
            r->unit = pr_rules[i].unit == OP_LIMIT_TOKENS ? GW_LIMIT_TOKENS
                      : pr_rules[i].unit == OP_LIMIT_COST ? GW_LIMIT_COST
                                                          : GW_LIMIT_REQUESTS;
            r->limit = pr_rules[i].limit;
            r->window_s = pr_rules[i].window_s;
            r->sliding = pr_rules[i].sliding;
            amounts[n] = r->unit == GW_LIMIT_REQUESTS ? 1.0
                         : r->unit == GW_LIMIT_TOKENS ? (double)reserve_tokens
                                                      : cost_of(e, e->tokens_estimate > 0
                                                                       ? e->tokens_estimate
                                                                       : 0,
                                                                e->max_tokens > 0
                                                                    ? e->max_tokens
                                                                    : GW_DEFAULT_MAX_TOKENS);
            n++;
        }
    }
    if (n == 0)
        return true;
    double retry = 0;
    size_t which = 0;
    int rc = gw_limit_acquire(gw_svc_limiter(), rules, amounts, n, pl_time_mono_ns(), &e->ticket,
                              &retry, &which);
    if (rc == 0) {
        e->has_ticket = true;
        e->n_rules = n;
        for (size_t i = 0; i < n; i++)
            e->rule_units[i] = rules[i].unit;
        return true;
    }
    gw_metrics_rate_limited(e->account, e->gw.cfg->id);
    if (rc > 0) {
        e->meta.retry_after_s = (int)ceil(retry > 1 ? retry : 1);
        char msg[320];
        snprintf(msg, sizeof msg, "rate limit exceeded (%g %s per %g s); retry after %d s",
                 rules[which].limit,
                 rules[which].unit == GW_LIMIT_TOKENS ? "tokens"
                 : rules[which].unit == GW_LIMIT_COST ? "USD"
                                                      : "requests",
                 rules[which].window_s, e->meta.retry_after_s);
        answer_error(e, 429, 2003, msg);
    } else {
        e->meta.retry_after_s = 1;
        answer_error(e, 503, OP_API_ERR_OVERLOADED, "rate limiter is full");
    }
    return false;
}

/* ------------------------------------------------------------------------ */
/* life                                                                      */
/* ------------------------------------------------------------------------ */

static _Atomic int g_in_flight;
static pthread_mutex_t g_list_mu = PTHREAD_MUTEX_INITIALIZER;
static gw_exec *g_list;

void gw_exec_cancel_all(void)
{
    /* Snapshot with references (an exec at zero is being freed: its
     * removal waits for this lock, so it is skipped safely). */
    for (;;) {
        gw_exec *batch[64];
        size_t n = 0;
        pthread_mutex_lock(&g_list_mu);
        for (gw_exec *e = g_list; e && n < 64; e = e->next)
            if (!e->cancel_all_seen && gw_exec_try_ref(e)) {
                e->cancel_all_seen = true;
                batch[n++] = e;
            }
        pthread_mutex_unlock(&g_list_mu);
        if (n == 0)
            return;
        for (size_t i = 0; i < n; i++) {
            gw_exec_cancel(batch[i]);
            gw_exec_release(batch[i]);
        }
    }
}

int gw_exec_in_flight(void) { return atomic_load(&g_in_flight); }

static void exec_unref(gw_exec *e)
{
    if (atomic_fetch_sub(&e->refs, 1) != 1)
        return;
    pthread_mutex_lock(&g_list_mu);
    if (e->prev)
        e->prev->next = e->next;
    else if (g_list == e)
        g_list = e->next;
    if (e->next)
        e->next->prev = e->prev;
    pthread_mutex_unlock(&g_list_mu);
    if (e->sink.release)
        e->sink.release(e->sink.ctx);
    gw_steps_free(e->steps, e->n_steps);
    gw_opts_free(&e->opts);
    gw_gateway_view_release(&e->gw);
    op_runtime_release(e->rt);
    for (size_t i = 0; i < e->n_headers; i++) {
        free((char *)e->headers[i].name);
        free((char *)e->headers[i].value);
    }
    free(e->headers);
    free(e->path);
    free(e->method);
    free(e->token_name);
    buf_free(&e->body);
    buf_free(&e->last_body);
    buf_free(&e->log_resp);
    free(e->log_req);
    free(e->hook_query);
    free(e->hook_meta);
    buf_free(&e->delivered);
    gw_sse_free(&e->rsse);
    gw_sse_free(&e->sse);
    pthread_mutex_destroy(&e->mu);
    free(e);
    atomic_fetch_sub(&g_in_flight, 1);
}

bool gw_exec_try_ref(gw_exec *e)
{
    int n = atomic_load(&e->refs);
    while (n > 0)
        if (atomic_compare_exchange_weak(&e->refs, &n, n + 1))
            return true;
    return false;
}

void gw_exec_release(gw_exec *e)
{
    if (e)
        exec_unref(e);
}

static long long estimate_tokens(json_t *q)
{
    size_t bytes = 0;
    json_t *prompt = json_object_get(q, "prompt");
    if (json_is_string(prompt))
        bytes += json_string_length(prompt);
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(q, "messages"), i, m)
    {
        json_t *c = json_object_get(m, "content");
        if (json_is_string(c))
            bytes += json_string_length(c);
    }
    json_t *text = json_object_get(q, "text");
    if (!text)
        text = json_object_get(q, "input");
    if (json_is_string(text))
        bytes += json_string_length(text);
    json_array_foreach(text, i, m) if (json_is_string(m)) bytes += json_string_length(m);
    return (long long)((bytes + 3) / 4);
}

gw_exec *gw_exec_start(gw_exec_params *p)
{
    gw_exec *e = calloc(1, sizeof *e);
    if (!e) {
        gw_steps_free(p->steps, p->n_steps);
        gw_opts_free(&p->opts);
        gw_gateway_view_release(&p->gw);
        op_runtime_release(p->rt);
        if (p->sink.release)
            p->sink.release(p->sink.ctx);
        return NULL;
    }
    atomic_fetch_add(&g_in_flight, 1);
    /* Recursive: the cache runs a follower's catch-up callbacks, and a local
     * model may answer, on the thread that is inside the exec already. */
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&e->mu, &ma);
    pthread_mutexattr_destroy(&ma);
    /* The caller's. Work in progress holds more: each provider attempt, each
     * retry timer, and a coalesced follow. */
    atomic_init(&e->refs, 1);
    e->rt = p->rt;
    e->gw = p->gw;
    snprintf(e->account, sizeof e->account, "%s", p->account);
    e->path = strdup(p->path ? p->path : "");
    e->method = strdup(p->method ? p->method : "POST");
    e->token_name = p->token_name ? strdup(p->token_name) : NULL;
    e->headers = calloc(p->n_headers ? p->n_headers : 1, sizeof *e->headers);
    for (size_t i = 0; e->headers && i < p->n_headers; i++) {
        e->headers[i].name = strdup(p->headers[i].name);
        e->headers[i].value = strdup(p->headers[i].value);
        e->n_headers = i + 1;
    }
    e->n_steps = p->n_steps > GW_MAX_STEPS ? GW_MAX_STEPS : p->n_steps;
    memcpy(e->steps, p->steps, e->n_steps * sizeof *e->steps);
    e->opts = p->opts;
    e->sink = p->sink;
    pthread_mutex_lock(&g_list_mu);
    e->next = g_list;
    if (g_list)
        g_list->prev = e;
    g_list = e;
    pthread_mutex_unlock(&g_list_mu);
    e->t0_ns = pl_time_mono_ns();
    e->created_ms = pl_time_wall_ms();
    e->meta.step = -1;
    e->hook_step = -1;
    e->request_id = next_request_id();
    snprintf(e->meta.event_id, sizeof e->meta.event_id, "%s", e->opts.event_id);
    e->collect = e->opts.collect_log >= 0 ? e->opts.collect_log == 1 : e->gw.cfg->collect_logs;
    if (e->collect)
        ulid_new(e->meta.log_id, e->created_ms);
    gw_sse_init(&e->sse, 1u << 20);

    pthread_mutex_lock(&e->mu);
    if (e->n_steps > 0) {
        e->tokens_estimate = estimate_tokens(e->steps[0].query);
        json_t *mt = json_object_get(e->steps[0].query, "max_tokens");
        e->max_tokens = json_is_integer(mt) ? (long long)json_integer_value(mt) : -1;
        snprintf(e->provider, sizeof e->provider, "%s", e->steps[0].provider);
        if (!gw_local_model(e->steps[0].endpoint, e->steps[0].query, e->model, sizeof e->model)) {
            const char *m = json_string_value(json_object_get(e->steps[0].query, "model"));
            snprintf(e->model, sizeof e->model, "%s", m ? m : "");
        }
        if (check_limits(e))
            start_step(e);
    } else {
        answer_error(e, 400, OP_API_ERR_INVALID_INPUT, "the request has no steps");
    }
    pthread_mutex_unlock(&e->mu);
    return e;
}

void gw_exec_cancel(gw_exec *e)
{
    if (!e)
        return;
    pthread_mutex_lock(&e->mu);
    e->cancelled = true;
    gw_upstream_call *up = e->up;
    gw_local_call *loc = e->loc;
    gw_cache_follow *fw = e->follow;
    e->follow = NULL;
    if (up)
        gw_upstream_cancel(up); /* queues the cancel for the loop thread */
    pthread_mutex_unlock(&e->mu);
    if (loc)
        gw_local_cancel(loc);
    if (fw) {
        gw_cache_unfollow(gw_svc_cache(), fw);
        pthread_mutex_lock(&e->mu);
        bool was = e->following;
        if (was) {
            e->following = false;
            answer_error(e, 499, OP_API_ERR_INFERENCE, "client went away");
        }
        pthread_mutex_unlock(&e->mu);
        if (was)
            exec_unref(e); /* the follow's reference: no callback will drop it */
    }
}
