/*
 * gw_gateway: the gateway service and its HTTP and WebSocket surfaces. See
 * gw_gateway.h; the request engine is gw_exec.
 */
#include "gateway/gw_gateway.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "api/op_api.h"
#include "gateway/gw_admin.h"
#include "gateway/gw_exec.h"
#include "gateway/gw_local.h"
#include "gateway/gw_metrics.h"
#include "gateway/gw_usage.h"
#include "http/op_ws.h"
#include "platform/pl_hash.h"
#include "platform/pl_log.h"
#include "platform/pl_time.h"

/* API error codes of the gateway (docs/gateway.md). */
enum {
    GW_ERR_BAD_REQUEST = 2001,
    GW_ERR_NO_GATEWAY = 2002,
    GW_ERR_UNAUTHORIZED = 2009,
};

/* Requests in flight on one WebSocket. */
#define GW_WS_MAX_IN_FLIGHT 64

/* ------------------------------------------------------------------------ */
/* the service                                                               */
/* ------------------------------------------------------------------------ */

static struct {
    gw_cache *cache;
    gw_limiter *limiter;
    gw_upstream *upstream;
    ls_store *logs;
    gw_registry *registry;
} g;

gw_cache *gw_svc_cache(void) { return g.cache; }
gw_limiter *gw_svc_limiter(void) { return g.limiter; }
gw_upstream *gw_svc_upstream(void) { return g.upstream; }
ls_store *gw_svc_logs(void) { return g.logs; }
gw_registry *gw_svc_registry(void) { return g.registry; }
int gw_svc_in_flight(void) { return gw_exec_in_flight(); }
void gw_svc_cancel_all(void) { gw_exec_cancel_all(); }

/* Every 10 s: reclaim expired cache entries and idle rate-limit counters
 * (both also reclaim lazily; this keeps an idle node's memory down too). */
static void sweep_tick(void *ctx, bool cancelled)
{
    (void)ctx;
    if (cancelled)
        return;
    uint64_t now = pl_time_mono_ns();
    gw_cache_sweep(g.cache, now);
    gw_limiter_sweep(g.limiter, now);
    gw_upstream_after(g.upstream, 10000, sweep_tick, NULL);
}

int gw_service_start(const op_config *cfg, char *err, size_t errlen)
{
    const op_config_gateway_opts *o = &cfg->gateway;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/logs", cfg->data_dir);
    mkdir(cfg->data_dir, 0750);
    ls_opts lo;
    ls_opts_init(&lo, dir);
    lo.segment_max_bytes = o->log_segment_bytes;
    lo.commit_interval_us = (uint32_t)o->log_commit_interval_us;
    lo.fsync = o->log_fsync;
    if (ls_open(&lo, &g.logs, err, errlen) != 0)
        return -1;
    g.registry = gw_registry_open(cfg->data_dir, err, errlen);
    if (!g.registry) {
        gw_service_stop();
        return -1;
    }
    g.cache = gw_cache_new(o->cache_bytes);
    g.limiter = gw_limiter_new(1u << 20);
    gw_upstream_opts uo;
    memset(&uo, 0, sizeof uo);
    uo.threads = o->upstream_threads > 0 ? o->upstream_threads : 1;
    g.upstream = gw_upstream_new(&uo, err, errlen);
    if (!g.cache || !g.limiter || !g.upstream) {
        if (!err[0])
            snprintf(err, errlen, "out of memory starting the gateway");
        gw_service_stop();
        return -1;
    }
    gw_service_configure(cfg);
    gw_upstream_after(g.upstream, 10000, sweep_tick, NULL);
    return 0;
}

void gw_service_configure(const op_config *cfg)
{
    if (g.logs && g.registry)
        gw_admin_apply_retention(g.registry, cfg, g.logs);
}

void gw_service_stop(void)
{
    gw_admin_stop(); /* log exports in progress end first */
    /* The upstream client first: it ends every call still running (their
     * requests answer and write their records), then the store. */
    if (g.upstream)
        gw_upstream_free(g.upstream);
    g.upstream = NULL;
    if (g.logs)
        ls_close(g.logs);
    g.logs = NULL;
    if (g.registry)
        gw_registry_close(g.registry);
    g.registry = NULL;
    if (g.cache)
        gw_cache_free(g.cache);
    g.cache = NULL;
    if (g.limiter)
        gw_limiter_free(g.limiter);
    g.limiter = NULL;
}

/* ------------------------------------------------------------------------ */
/* small helpers                                                             */
/* ------------------------------------------------------------------------ */

static void respond_error(op_http_req *r, int status, int code, const char *msg)
{
    char *body = op_api_error_json(code, msg);
    op_http_respond(r, status, "application/json", body ? body : "", body ? strlen(body) : 0);
    free(body);
}

/* Splits "/v1/{account}/{gateway}[/rest]". */
static bool split_gateway_path(const char *path, char *account, size_t alen, char *gateway,
                               size_t glen, const char **rest)
{
    if (strncmp(path, "/v1/", 4) != 0)
        return false;
    const char *a = path + 4;
    const char *s1 = strchr(a, '/');
    if (!s1 || s1 == a || (size_t)(s1 - a) >= alen)
        return false;
    const char *gid = s1 + 1;
    const char *s2 = strchr(gid, '/');
    size_t gn = s2 ? (size_t)(s2 - gid) : strlen(gid);
    if (gn == 0 || gn >= glen)
        return false;
    memcpy(account, a, (size_t)(s1 - a));
    account[s1 - a] = '\0';
    memcpy(gateway, gid, gn);
    gateway[gn] = '\0';
    *rest = s2 ? s2 : "";
    return true;
}

bool gw_is_gateway_path(const op_config *cfg, const char *path)
{
    static const char *const own[] = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                                      "/v1/models", NULL};
    if (strncmp(path, "/v1/", 4) != 0)
        return false;
    for (size_t i = 0; own[i]; i++)
        if (strcmp(path, own[i]) == 0)
            return false;
    char a[80], gw[80];
    const char *rest;
    if (!split_gateway_path(path, a, sizeof a, gw, sizeof gw, &rest))
        return false;
    /* Only a configured account makes it a gateway path: any other
     * /v1/x/y (an OpenAI route this agent does not serve, such as
     * /v1/images/generations) stays an OpenAI-shaped 404. */
    if (cfg)
        return op_config_find_account(cfg, a) != NULL;
    op_runtime *rt = op_runtime_acquire();
    bool known = rt && op_config_find_account(rt->cfg, a) != NULL;
    op_runtime_release(rt);
    return known;
}

/* The token in "Bearer X" or "X". */
static const char *bearer(const char *v)
{
    if (!v)
        return NULL;
    if (strncasecmp(v, "Bearer ", 7) == 0)
        v += 7;
    while (*v == ' ')
        v++;
    return *v ? v : NULL;
}

/* Checks a gateway token against the gateway's tokens and its account's.
 * Returns the token's name, or NULL if it is not valid. */
static const char *token_valid(const op_config *cfg, const op_config_gateway *gw, const char *tok)
{
    if (!tok)
        return NULL;
    uint8_t h[PL_SHA256_LEN];
    pl_sha256(tok, strlen(tok), h);
    const char *name = NULL;
    for (size_t i = 0; i < gw->n_tokens; i++)
        if (pl_secure_equal(h, gw->tokens[i].sha256, PL_SHA256_LEN))
            name = gw->tokens[i].name;
    const op_config_account *acct = op_config_find_account(cfg, gw->account);
    for (size_t i = 0; acct && i < acct->n_tokens; i++)
        if (pl_secure_equal(h, acct->tokens[i].sha256, PL_SHA256_LEN))
            name = acct->tokens[i].name;
    return name;
}

typedef struct hdr_vec {
    op_policy_header items[64];
    size_t n;
} hdr_vec;

static void collect_header(const char *name, const char *value, void *ctx)
{
    hdr_vec *v = ctx;
    if (v->n < sizeof v->items / sizeof v->items[0])
        v->items[v->n++] = (op_policy_header){name, value};
}

static const char *req_header(void *ctx, const char *name)
{
    return op_http_req_header(ctx, name);
}

/* Appends n bytes to a growing buffer. Returns 0, or -1 out of memory. */
static int body_append(char **body, size_t *len, size_t *cap, const char *d, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap : 4096;
        while (c < *len + n + 1)
            c *= 2;
        char *p = realloc(*body, c);
        if (!p)
            return -1;
        *body = p;
        *cap = c;
    }
    memcpy(*body + *len, d, n);
    *len += n;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* the HTTP sink                                                             */
/* ------------------------------------------------------------------------ */

typedef struct http_sink {
    pthread_mutex_t mu;
    _Atomic int refs;          /* the exec's sink, and the connection */
    op_http_req *req;
    gw_exec *exec;             /* the caller's reference, dropped at close */
    bool stream;
    int status;
    char ctype[128];
    char *body;
    size_t len, cap;
} http_sink;

static void hs_unref(http_sink *s)
{
    if (atomic_fetch_sub(&s->refs, 1) != 1)
        return;
    op_http_req_unref(s->req);
    free(s->body);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static void add_meta_headers(op_http_req *r, const gw_meta *m)
{
    op_http_add_header(r, "cf-aig-cache-status", m->cached ? "HIT" : "MISS");
    char v[32];
    if (m->step >= 0) {
        snprintf(v, sizeof v, "%d", m->step);
        op_http_add_header(r, "cf-aig-step", v);
    }
    if (m->log_id[0])
        op_http_add_header(r, "cf-aig-log-id", m->log_id);
    if (m->event_id[0])
        op_http_add_header(r, "cf-aig-event-id", m->event_id);
    if (m->retry_after_s > 0) {
        snprintf(v, sizeof v, "%d", m->retry_after_s);
        op_http_add_header(r, "Retry-After", v);
    }
}

static int hs_begin(void *ctx, int status, bool stream, const gw_meta *m)
{
    http_sink *s = ctx;
    s->stream = stream;
    s->status = status;
    snprintf(s->ctype, sizeof s->ctype, "%s", m->content_type);
    add_meta_headers(s->req, m);
    if (stream)
        return op_http_stream_begin(s->req, status, m->content_type);
    return 0;
}

static int hs_data(void *ctx, const char *d, size_t n)
{
    http_sink *s = ctx;
    if (s->stream)
        return op_http_stream_write(s->req, d, n);
    return body_append(&s->body, &s->len, &s->cap, d, n);
}

static void hs_end(void *ctx, const gw_meta *m, bool ok)
{
    (void)ok;
    http_sink *s = ctx;
    if (s->stream) {
        op_http_stream_end(s->req);
        return;
    }
    if (!s->status) {
        /* begin never ran (should not happen): still answer. */
        add_meta_headers(s->req, m);
        s->status = m->status ? m->status : 502;
    }
    op_http_respond(s->req, s->status, s->ctype[0] ? s->ctype : "application/json",
                    s->body ? s->body : "", s->len);
}

static void hs_release(void *ctx) { hs_unref(ctx); }

static void hs_on_close(op_http_req *r, bool completed, void *user)
{
    (void)r;
    http_sink *s = user;
    pthread_mutex_lock(&s->mu);
    gw_exec *e = s->exec;
    s->exec = NULL;
    pthread_mutex_unlock(&s->mu);
    if (e) {
        if (!completed)
            gw_exec_cancel(e);
        gw_exec_release(e);
    }
    hs_unref(s);
}

/* Runs steps for an HTTP request; takes over steps and opts. */
static void run_http(op_http_req *r, op_runtime *rt, gw_gateway_view *gwv, const char *account,
                     const char *token_name, gw_step *steps, size_t n_steps, gw_opts *opts)
{
    http_sink *s = calloc(1, sizeof *s);
    if (!s) {
        gw_steps_free(steps, n_steps);
        gw_opts_free(opts);
        gw_gateway_view_release(gwv);
        respond_error(r, 500, OP_API_ERR_INFERENCE, "out of memory");
        return;
    }
    pthread_mutex_init(&s->mu, NULL);
    atomic_init(&s->refs, 2);
    s->req = r;
    op_http_req_ref(r);
    op_http_req_set_user(r, s);
    op_http_req_on_close(r, hs_on_close);

    hdr_vec hv;
    hv.n = 0;
    op_http_req_headers(r, collect_header, &hv);
    atomic_fetch_add(&rt->refs, 1);
    gw_exec_params p = {
        .rt = rt,
        .gw = *gwv,
        .account = account,
        .path = op_http_req_path(r),
        .method = op_http_req_method(r),
        .token_name = token_name,
        .headers = hv.items,
        .n_headers = hv.n,
        .steps = steps,
        .n_steps = n_steps,
        .opts = *opts,
        .sink = {.ctx = s, .begin = hs_begin, .data = hs_data, .end = hs_end,
                 .release = hs_release},
    };
    memset(gwv, 0, sizeof *gwv);
    memset(opts, 0, sizeof *opts);
    gw_exec *e = gw_exec_start(&p);
    pthread_mutex_lock(&s->mu);
    s->exec = e;
    pthread_mutex_unlock(&s->mu);
}

/* ------------------------------------------------------------------------ */
/* the WebSocket API                                                         */
/* ------------------------------------------------------------------------ */

typedef struct ws_session {
    pthread_mutex_t mu;
    _Atomic int refs;
    op_ws *ws;                 /* known from the first message; NULL once closed */
    bool closed;
    op_runtime *rt;
    char account[80];
    char gateway[80];
    char *token_name;
    json_t *headers;           /* the upgrade request's cf-aig-* headers */
    gw_exec *execs[GW_WS_MAX_IN_FLIGHT];
} ws_session;

static void ws_unref(ws_session *w)
{
    if (atomic_fetch_sub(&w->refs, 1) != 1)
        return;
    op_runtime_release(w->rt);
    json_decref(w->headers);
    free(w->token_name);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

static void ws_send_json(ws_session *w, json_t *msg)
{
    char *s = json_dumps(msg, JSON_COMPACT);
    json_decref(msg);
    if (!s)
        return;
    pthread_mutex_lock(&w->mu);
    if (w->ws)
        op_ws_send(w->ws, OP_WS_TEXT, s, strlen(s));
    pthread_mutex_unlock(&w->mu);
    free(s);
}

static void ws_send_error(ws_session *w, const char *event_id, int code, const char *msg)
{
    json_t *m = json_pack("{s:s, s:{}, s:b, s:[{s:i, s:s}]}", "type", "universal.created",
                          "metadata", "success", 0, "errors", "code", code, "message", msg);
    if (event_id)
        json_object_set_new(json_object_get(m, "metadata"), "eventId", json_string(event_id));
    ws_send_json(w, m);
}

typedef struct ws_sink {
    ws_session *w;
    int slot;                  /* the session's slot of this request */
    char event_id[GW_EVENT_ID_MAX];
    bool stream;
    int status;
    gw_sse sse;
    char *body;
    size_t len, cap;
} ws_sink;

static json_t *ws_meta(const gw_meta *m, bool full)
{
    json_t *o = json_object();
    if (full) {
        json_object_set_new(o, "cacheStatus", json_string(m->cached ? "HIT" : "MISS"));
        json_object_set_new(o, "eventId", json_string(m->event_id));
        json_object_set_new(o, "logId", json_string(m->log_id));
        char step[16];
        snprintf(step, sizeof step, "%d", m->step);
        json_object_set_new(o, "step", json_string(step));
        json_object_set_new(o, "contentType", json_string(m->content_type));
    } else {
        json_object_set_new(o, "eventId", json_string(m->event_id));
    }
    return o;
}

static int wss_begin(void *ctx, int status, bool stream, const gw_meta *m)
{
    ws_sink *s = ctx;
    s->stream = stream;
    s->status = status;
    if (stream)
        ws_send_json(s->w, json_pack("{s:s, s:o}", "type", "universal.created", "metadata",
                                     ws_meta(m, true)));
    return 0;
}

typedef struct ev_ctx {
    ws_sink *s;
} ev_ctx;

static void wss_event(void *ctx, const char *data, size_t len)
{
    ws_sink *s = ctx;
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0)
        return;
    json_t *resp = json_loadb(data, len, 0, NULL);
    if (!resp)
        resp = json_stringn(data, len);
    if (!resp)
        return;
    json_t *msg = json_pack("{s:s, s:{s:s}, s:o}", "type", "universal.stream", "metadata",
                            "eventId", s->event_id, "response", resp);
    ws_send_json(s->w, msg);
}

static int wss_data(void *ctx, const char *d, size_t n)
{
    ws_sink *s = ctx;
    if (s->stream) {
        gw_sse_feed(&s->sse, d, n, wss_event, s);
        return 0;
    }
    return body_append(&s->body, &s->len, &s->cap, d, n);
}

static void wss_end(void *ctx, const gw_meta *m, bool ok)
{
    ws_sink *s = ctx;
    if (s->stream) {
        json_t *msg = json_pack("{s:s, s:o}", "type", "universal.done", "metadata",
                                ws_meta(m, true));
        if (!ok)
            json_object_set_new(msg, "success", json_false());
        ws_send_json(s->w, msg);
        return;
    }
    json_t *resp = json_loadb(s->body ? s->body : "", s->len, 0, NULL);
    if (!resp)
        resp = json_stringn(s->body ? s->body : "", s->len);
    json_t *msg = json_pack("{s:s, s:o}", "type", "universal.created", "metadata",
                            ws_meta(m, true));
    if (s->status >= 400) {
        json_object_set_new(msg, "success", json_false());
        json_t *errs = json_object_get(resp, "errors");
        if (json_is_array(errs) && json_array_size(errs) > 0)
            json_object_set(msg, "errors", errs);
        else
            json_object_set_new(msg, "errors",
                                json_pack("[{s:i, s:s}]", "code", s->status, "message",
                                          "the provider answered with an error"));
    }
    json_object_set_new(msg, "response", resp ? resp : json_null());
    ws_send_json(s->w, msg);
}

static void wss_release(void *ctx)
{
    ws_sink *s = ctx;
    ws_session *w = s->w;
    pthread_mutex_lock(&w->mu);
    w->execs[s->slot] = NULL; /* the exec is being freed: forget it */
    pthread_mutex_unlock(&w->mu);
    gw_sse_free(&s->sse);
    free(s->body);
    free(s);
    ws_unref(w);
}

typedef struct ws_hdr_ctx {
    json_t *req_headers; /* the request's headers (object) or NULL */
    json_t *session;     /* the session's */
} ws_hdr_ctx;

static const char *ws_header(void *ctx, const char *name)
{
    ws_hdr_ctx *h = ctx;
    const char *k;
    json_t *v;
    json_object_foreach(h->req_headers, k, v) if (strcasecmp(k, name) == 0 &&
                                                  json_is_string(v)) return json_string_value(v);
    json_object_foreach(h->session, k, v) if (strcasecmp(k, name) == 0 &&
                                              json_is_string(v)) return json_string_value(v);
    return NULL;
}

static void ws_create(ws_session *w, json_t *request)
{
    const char *event_id = NULL;
    json_t *first = json_is_array(request) ? json_array_get(request, 0) : request;
    event_id = json_string_value(json_object_get(first, "eventId"));
    if (event_id && strlen(event_id) >= GW_EVENT_ID_MAX) {
        ws_send_error(w, NULL, GW_ERR_BAD_REQUEST, "eventId is too long");
        return;
    }
    gw_gateway_view gv;
    if (!gw_registry_get(g.registry, w->rt->cfg, w->account, w->gateway, &gv)) {
        ws_send_error(w, event_id, GW_ERR_NO_GATEWAY, "the gateway no longer exists");
        return;
    }
    gw_step steps[GW_MAX_STEPS];
    char err[512];
    int n = gw_steps_parse(request, steps, GW_MAX_STEPS, err, sizeof err);
    if (n < 0) {
        gw_gateway_view_release(&gv);
        ws_send_error(w, event_id, GW_ERR_BAD_REQUEST, err);
        return;
    }
    gw_opts opts;
    gw_opts_init(&opts);
    ws_hdr_ctx hc = {json_object_get(first, "headers"), w->headers};
    if (gw_opts_parse(&opts, ws_header, &hc, err, sizeof err) != 0) {
        gw_opts_free(&opts);
        gw_steps_free(steps, (size_t)n);
        gw_gateway_view_release(&gv);
        ws_send_error(w, event_id, GW_ERR_BAD_REQUEST, err);
        return;
    }
    if (event_id)
        snprintf(opts.event_id, sizeof opts.event_id, "%s", event_id);

    ws_sink *s = calloc(1, sizeof *s);
    int slot = -1;
    pthread_mutex_lock(&w->mu);
    for (int i = 0; i < GW_WS_MAX_IN_FLIGHT && slot < 0; i++)
        if (!w->execs[i])
            slot = i;
    if (slot >= 0)
        w->execs[slot] = (gw_exec *)(uintptr_t)1; /* reserved */
    pthread_mutex_unlock(&w->mu);
    if (!s || slot < 0) {
        free(s);
        if (slot >= 0) {
            pthread_mutex_lock(&w->mu);
            w->execs[slot] = NULL;
            pthread_mutex_unlock(&w->mu);
        }
        gw_opts_free(&opts);
        gw_steps_free(steps, (size_t)n);
        gw_gateway_view_release(&gv);
        ws_send_error(w, event_id, 3040,
                      "too many requests in flight on this WebSocket (at most 64)");
        return;
    }
    s->w = w;
    atomic_fetch_add(&w->refs, 1);
    s->slot = slot;
    snprintf(s->event_id, sizeof s->event_id, "%s", event_id ? event_id : "");
    gw_sse_init(&s->sse, 1u << 20);
    atomic_fetch_add(&w->rt->refs, 1);
    char path[200];
    snprintf(path, sizeof path, "/v1/%s/%s", w->account, w->gateway);
    gw_exec_params p = {
        .rt = w->rt,
        .gw = gv,
        .account = w->account,
        .path = path,
        .method = "WS",
        .token_name = w->token_name,
        .steps = steps,
        .n_steps = (size_t)n,
        .opts = opts,
        .sink = {.ctx = s, .begin = wss_begin, .data = wss_data, .end = wss_end,
                 .release = wss_release},
    };
    gw_exec *e = gw_exec_start(&p);
    /* The slot keeps a weak pointer (for cancel at close); the request
     * lives on the references of its work in progress, and its sink's
     * release clears the slot. */
    if (e) {
        pthread_mutex_lock(&w->mu);
        w->execs[slot] = e;
        pthread_mutex_unlock(&w->mu);
        gw_exec_release(e);
    }
}

static void ws_on_message(op_ws *ws, int opcode, const uint8_t *data, size_t len, void *user)
{
    ws_session *w = user;
    pthread_mutex_lock(&w->mu);
    if (!w->closed)
        w->ws = ws;
    pthread_mutex_unlock(&w->mu);
    if (opcode != OP_WS_TEXT) {
        ws_send_error(w, NULL, GW_ERR_BAD_REQUEST, "messages must be JSON text");
        return;
    }
    json_error_t je;
    json_t *msg = json_loadb((const char *)data, len, 0, &je);
    if (!json_is_object(msg)) {
        char m[300];
        snprintf(m, sizeof m, "the message is not a JSON object: %s", msg ? "" : je.text);
        json_decref(msg);
        ws_send_error(w, NULL, GW_ERR_BAD_REQUEST, m);
        return;
    }
    const char *type = json_string_value(json_object_get(msg, "type"));
    json_t *request = json_object_get(msg, "request");
    if (!type || strcmp(type, "universal.create") != 0) {
        ws_send_error(w, NULL, GW_ERR_BAD_REQUEST,
                      "unknown message type: only universal.create is accepted");
    } else if (!json_is_object(request) && !json_is_array(request)) {
        ws_send_error(w, NULL, GW_ERR_BAD_REQUEST,
                      "universal.create needs a \"request\" (a step or an array of steps)");
    } else {
        ws_create(w, request);
    }
    json_decref(msg);
}

static void ws_on_close(op_ws *ws, uint16_t code, void *user)
{
    (void)ws;
    (void)code;
    ws_session *w = user;
    gw_exec *running[GW_WS_MAX_IN_FLIGHT];
    size_t n = 0;
    pthread_mutex_lock(&w->mu);
    w->ws = NULL;
    w->closed = true;
    for (int i = 0; i < GW_WS_MAX_IN_FLIGHT; i++)
        if (w->execs[i] && w->execs[i] != (gw_exec *)(uintptr_t)1 &&
            gw_exec_try_ref(w->execs[i]))
            running[n++] = w->execs[i];
    pthread_mutex_unlock(&w->mu);
    for (size_t i = 0; i < n; i++) {
        gw_exec_cancel(running[i]);
        gw_exec_release(running[i]);
    }
    ws_unref(w);
}

/* ------------------------------------------------------------------------ */
/* routes                                                                    */
/* ------------------------------------------------------------------------ */

/* The offered subprotocol that carries a token, "cf-aig-authorization.X". */
static bool ws_protocol_token(const char *offered, char *proto, size_t plen, const char **tok)
{
    if (!offered)
        return false;
    const char *p = offered;
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        const char *end = p;
        while (*end && *end != ',')
            end++;
        size_t n = (size_t)(end - p);
        while (n && p[n - 1] == ' ')
            n--;
        if (n > 21 && n < plen && strncmp(p, "cf-aig-authorization.", 21) == 0) {
            memcpy(proto, p, n);
            proto[n] = '\0';
            *tok = proto + 21;
            return true;
        }
        p = end;
    }
    return false;
}

static void handle_ws(op_http_req *r, op_runtime *rt, gw_gateway_view *gv, const char *account,
                      const char *gateway)
{
    char proto[512] = "";
    const char *tok = bearer(op_http_req_header(r, "cf-aig-authorization"));
    const char *ptok = NULL;
    bool by_protocol = ws_protocol_token(op_http_req_header(r, "Sec-WebSocket-Protocol"), proto,
                                         sizeof proto, &ptok);
    if (!tok && by_protocol)
        tok = ptok;
    const char *token_name = NULL;
    if (gv->cfg->authentication) {
        token_name = token_valid(rt->cfg, gv->cfg, tok);
        if (!token_name) {
            gw_gateway_view_release(gv);
            respond_error(r, 401, GW_ERR_UNAUTHORIZED,
                          "Unauthorized: this gateway requires a valid cf-aig-authorization "
                          "token (header, or WebSocket subprotocol "
                          "cf-aig-authorization.TOKEN)");
            return;
        }
    }
    ws_session *w = calloc(1, sizeof *w);
    if (!w) {
        gw_gateway_view_release(gv);
        respond_error(r, 500, OP_API_ERR_INFERENCE, "out of memory");
        return;
    }
    pthread_mutex_init(&w->mu, NULL);
    atomic_init(&w->refs, 1); /* the connection's */
    w->rt = rt;
    atomic_fetch_add(&rt->refs, 1);
    snprintf(w->account, sizeof w->account, "%s", account);
    snprintf(w->gateway, sizeof w->gateway, "%s", gateway);
    w->token_name = token_name ? strdup(token_name) : NULL;
    /* Session-wide settings: the upgrade request's cf-aig-* headers. */
    w->headers = json_object();
    static const char *const names[] = {
        "cf-aig-cache-ttl",   "cf-aig-skip-cache",   "cf-aig-cache-key",  "cf-aig-metadata",
        "cf-aig-request-timeout", "cf-aig-max-attempts", "cf-aig-retry-delay", "cf-aig-backoff",
        "cf-aig-collect-log", "cf-aig-custom-cost",  NULL};
    for (size_t i = 0; names[i]; i++) {
        const char *v = op_http_req_header(r, names[i]);
        if (v)
            json_object_set_new(w->headers, names[i], json_string(v));
    }
    gw_gateway_view_release(gv);
    op_ws_handlers h = {.on_message = ws_on_message, .on_close = ws_on_close, .user = w,
                        .max_message_bytes = 4u << 20, .protocol = by_protocol ? proto : NULL};
    /* op_ws_accept calls on_close if the connection never becomes a
     * WebSocket after the 101; on -1 it answered an error and no handler
     * will run. */
    if (op_ws_accept(r, &h) != 0)
        ws_unref(w);
}

/* POST /v1/{a}/{g}/{provider}/{path}: one step made of the request. */
static int passthrough_step(op_http_req *r, const char *rest, json_t *body, gw_step *st,
                            char *err, size_t errlen)
{
    const char *prov = rest + 1;
    const char *slash = strchr(prov, '/');
    if (!slash || slash == prov || slash[1] == '\0') {
        snprintf(err, errlen, "the path must be /v1/{account}/{gateway}/{provider}/{endpoint}");
        return -1;
    }
    memset(st, 0, sizeof *st);
    st->provider = strndup(prov, (size_t)(slash - prov));
    st->endpoint = strdup(slash + 1);
    st->query = json_incref(body);
    size_t blen;
    const char *btxt = op_http_req_body(r, &blen);
    st->raw = malloc(blen + 1);
    if (st->raw) {
        memcpy(st->raw, btxt, blen);
        st->raw[blen] = '\0';
        st->raw_len = blen;
    }
    /* The request's own headers go upstream (its Authorization for the
     * provider, for instance), less hop-by-hop and gateway headers (the
     * step builder filters those). */
    st->headers = json_object();
    hdr_vec hv;
    hv.n = 0;
    op_http_req_headers(r, collect_header, &hv);
    for (size_t i = 0; i < hv.n; i++)
        if (strcasecmp(hv.items[i].name, "authorization") == 0 ||
            strncasecmp(hv.items[i].name, "x-", 2) == 0 ||
            strncasecmp(hv.items[i].name, "openai-", 7) == 0 ||
            strcasecmp(hv.items[i].name, "anthropic-version") == 0)
            json_object_set_new(st->headers, hv.items[i].name, json_string(hv.items[i].value));
    if (!st->provider || !st->endpoint || !st->headers) {
        gw_steps_free(st, 1);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    /* compat: the OpenAI-compatible endpoint for every provider, the model
     * named "{provider}/{model}". */
    if (strcmp(st->provider, "compat") == 0) {
        const char *model = json_string_value(json_object_get(body, "model"));
        const char *ms = model ? strchr(model, '/') : NULL;
        if (!ms || ms == model || ms[1] == '\0') {
            gw_steps_free(st, 1);
            snprintf(err, errlen, "compat requests name the model as \"{provider}/{model}\"");
            return -1;
        }
        free(st->provider);
        st->provider = strndup(model, (size_t)(ms - model));
        json_t *q = json_deep_copy(body);
        json_object_set_new(q, "model", json_string(ms + 1));
        json_decref(st->query);
        st->query = q;
        free(st->raw); /* the model changed: the body is serialized again */
        st->raw = NULL;
        st->raw_len = 0;
    }
    return 0;
}

void gw_handle(op_http_req *r, op_runtime *rt)
{
    char account[80], gateway[80];
    const char *rest = "";
    split_gateway_path(op_http_req_path(r), account, sizeof account, gateway, sizeof gateway,
                       &rest);
    if (!g.registry) {
        respond_error(r, 503, OP_API_ERR_MODEL_UNAVAILABLE, "the gateway is not running");
        return;
    }
    gw_gateway_view gv;
    if (!gw_registry_get(g.registry, rt->cfg, account, gateway, &gv)) {
        char msg[256];
        snprintf(msg, sizeof msg, "no gateway '%s' in account '%s'", gateway, account);
        respond_error(r, 404, GW_ERR_NO_GATEWAY, msg);
        return;
    }
    const char *method = op_http_req_method(r);
    bool is_root = rest[0] == '\0' || strcmp(rest, "/") == 0;
    if (is_root && strcmp(method, "GET") == 0 && op_http_req_header(r, "Upgrade")) {
        op_http_req_set_route(r, "gateway_ws");
        handle_ws(r, rt, &gv, account, gateway);
        return;
    }
    op_http_req_set_route(r, is_root ? "gateway_universal" : "gateway_provider");
    if (strcmp(method, "POST") != 0) {
        gw_gateway_view_release(&gv);
        op_http_add_header(r, "Allow", "POST");
        respond_error(r, 405, OP_API_ERR_METHOD,
                      "gateway endpoints take POST (or a WebSocket upgrade on the gateway URL)");
        return;
    }
    const char *token_name = NULL;
    if (gv.cfg->authentication) {
        token_name =
            token_valid(rt->cfg, gv.cfg, bearer(op_http_req_header(r, "cf-aig-authorization")));
        if (!token_name) {
            gw_gateway_view_release(&gv);
            respond_error(r, 401, GW_ERR_UNAUTHORIZED,
                          "Unauthorized: this gateway requires a valid cf-aig-authorization token");
            return;
        }
    }
    size_t blen;
    const char *btxt = op_http_req_body(r, &blen);
    json_error_t je;
    json_t *body = json_loadb(btxt, blen, 0, &je);
    if (!body) {
        gw_gateway_view_release(&gv);
        char msg[300];
        snprintf(msg, sizeof msg, "request body is not valid JSON: %s (line %d, column %d)",
                 je.text, je.line, je.column);
        respond_error(r, 400, GW_ERR_BAD_REQUEST, msg);
        return;
    }
    gw_step steps[GW_MAX_STEPS];
    char err[512];
    int n;
    if (is_root) {
        n = gw_steps_parse(body, steps, GW_MAX_STEPS, err, sizeof err);
    } else {
        n = passthrough_step(r, rest, body, &steps[0], err, sizeof err) == 0 ? 1 : -1;
    }
    json_decref(body);
    if (n < 0) {
        gw_gateway_view_release(&gv);
        respond_error(r, 400, GW_ERR_BAD_REQUEST, err);
        return;
    }
    gw_opts opts;
    gw_opts_init(&opts);
    if (gw_opts_parse(&opts, req_header, r, err, sizeof err) != 0) {
        gw_opts_free(&opts);
        gw_steps_free(steps, (size_t)n);
        gw_gateway_view_release(&gv);
        respond_error(r, 400, GW_ERR_BAD_REQUEST, err);
        return;
    }
    run_http(r, rt, &gv, account, token_name, steps, (size_t)n, &opts);
}
