#include "api/op_api.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/op_openai.h"
#include "gateway/gw_admin.h"
#include "gateway/gw_gateway.h"
#include "metrics/op_metrics.h"
#include "platform/pl_hash.h"
#include "platform/pl_log.h"
#include "platform/pl_time.h"
#include "runtime/op_runtime.h"
#include "vector/vx_api.h"

#define ACCOUNTS_PREFIX "/client/v4/accounts/"

/* ------------------------------------------------------------------------ */
/* responses                                                                 */
/* ------------------------------------------------------------------------ */

char *op_api_error_json(int code, const char *message)
{
    json_t *env = json_pack("{s:b, s:[{s:i, s:s}], s:[], s:n}", "success", 0, "errors", "code",
                            code, "message", message ? message : "", "messages", "result");
    char *s = env ? json_dumps(env, JSON_COMPACT) : NULL;
    json_decref(env);
    return s;
}

/* True for the OpenAI-compatible routes (/v1/..., and
 * /client/v4/accounts/{account}/ai/v1/...): their errors take OpenAI's shape,
 * which is what OpenAI's SDKs parse; every other route answers the Workers
 * AI envelope. Decided by the path, so that every error of those routes
 * (auth, unknown model, policy, plugin) has the same shape. */
static bool openai_path(const char *path)
{
    if (strncmp(path, "/v1/", 4) == 0)
        return !gw_is_gateway_path(NULL, path); /* error paths only */
    if (strncmp(path, ACCOUNTS_PREFIX, sizeof ACCOUNTS_PREFIX - 1) != 0)
        return false;
    const char *rest = strchr(path + sizeof ACCOUNTS_PREFIX - 1, '/');
    return rest && strncmp(rest, "/ai/v1/", 7) == 0;
}

/* OpenAI's error "code" for an API error code (docs/api.md). */
static const char *openai_code(int api_code)
{
    switch (api_code) {
    case OP_API_ERR_NO_ROUTE: return "unknown_url";
    case OP_API_ERR_METHOD: return "method_not_allowed";
    case OP_API_ERR_AUTH: return "invalid_api_key";
    case OP_API_ERR_FORBIDDEN: return "forbidden";
    case OP_API_ERR_ACCOUNT: return "account_not_found";
    case OP_API_ERR_NO_MODEL: return "model_not_found";
    case OP_API_ERR_MODEL_UNAVAILABLE: return "model_unavailable";
    case OP_API_ERR_POLICY_REJECT: return "policy_rejected";
    case OP_API_ERR_POLICY_FAILED: return "policy_failed";
    case OP_API_ERR_OVERLOADED: return "rate_limit_exceeded";
    case OP_API_ERR_TIMEOUT: return "timeout";
    case OP_API_ERR_INFERENCE: return "inference_failed";
    default: return NULL; /* OP_API_ERR_INVALID_INPUT: the message says what */
    }
}

static void respond_error(op_http_req *r, int status, int code, const char *message)
{
    if (openai_path(op_http_req_path(r))) {
        char *body = op_openai_error_json(status, message,
                                          code == OP_API_ERR_NO_MODEL ? "model" : NULL,
                                          openai_code(code));
        if (!body)
            op_http_respond(r, 500, "text/plain", "out of memory\n", 14);
        else
            op_http_respond(r, status, "application/json", body, strlen(body));
        free(body);
        return;
    }
    char *body = op_api_error_json(code, message);
    if (!body) {
        op_http_respond(r, 500, "text/plain", "out of memory\n", 14);
        return;
    }
    op_http_respond(r, status, "application/json", body, strlen(body));
    free(body);
}

/* Sends json (reference stolen) as the body, serialized with flags. */
static void respond_json_flags(op_http_req *r, int status, json_t *json, size_t flags)
{
    char *body = json ? json_dumps(json, flags) : NULL;
    json_decref(json);
    if (!body) {
        respond_error(r, 500, OP_API_ERR_INFERENCE, "out of memory");
        return;
    }
    op_http_respond(r, status, "application/json", body, strlen(body));
    free(body);
}

static void respond_openai(op_http_req *r, const op_openai_error *e)
{
    char *body = op_openai_error_json(e->status, e->message, e->param, e->code);
    if (!body) {
        op_http_respond(r, 500, "text/plain", "out of memory\n", 14);
        return;
    }
    op_http_respond(r, e->status, "application/json", body, strlen(body));
    free(body);
}

static void respond_json(op_http_req *r, int status, json_t *json)
{
    respond_json_flags(r, status, json, JSON_COMPACT);
}

/* {"result": result, "success": true, "errors": [], "messages": []} */
static json_t *envelope_ok(json_t *result)
{
    return json_pack("{s:o, s:b, s:[], s:[]}", "result", result ? result : json_null(), "success",
                     1, "errors", "messages");
}

/* ------------------------------------------------------------------------ */
/* authentication                                                            */
/* ------------------------------------------------------------------------ */

/* Finds the account whose token hashes to the bearer token. Every token of
 * every account is compared, in constant time each, so the time taken does
 * not depend on which one matched. */
static const op_config_account *account_for_token(const op_config *cfg, const char *token)
{
    uint8_t h[PL_SHA256_LEN];
    pl_sha256(token, strlen(token), h);
    const op_config_account *found = NULL;
    for (size_t i = 0; i < cfg->n_accounts; i++)
        for (size_t k = 0; k < cfg->accounts[i].n_tokens; k++)
            if (pl_secure_equal(h, cfg->accounts[i].tokens[k].sha256, PL_SHA256_LEN) && !found)
                found = &cfg->accounts[i];
    return found;
}

static bool any_token_configured(const op_config *cfg)
{
    for (size_t i = 0; i < cfg->n_accounts; i++)
        if (cfg->accounts[i].n_tokens > 0)
            return true;
    return false;
}

/* Resolves the caller's account. path_account is the {account} of an
 * account-scoped path, or NULL. Answers the request and returns NULL when
 * access is refused. */
static const op_config_account *authenticate(op_http_req *r, const op_runtime *rt,
                                             const char *path_account)
{
    const char *authz = op_http_req_header(r, "Authorization");
    const op_config_account *acct = NULL;
    /* A loopback listener with no token configured anywhere has nothing to
     * check a token against: a client that must send one (OpenAI's SDKs
     * always do) is served as if it had sent none. Once any token is
     * configured, a token that is sent must be valid again. */
    if (authz && rt->listener_is_loopback && !any_token_configured(rt->cfg))
        authz = NULL;
    if (authz) {
        if (strncasecmp(authz, "Bearer ", 7) != 0) {
            respond_error(r, 401, OP_API_ERR_AUTH, "Authorization must be 'Bearer <token>'");
            return NULL;
        }
        const char *tok = authz + 7;
        while (*tok == ' ')
            tok++;
        acct = account_for_token(rt->cfg, tok);
        if (!acct) {
            respond_error(r, 401, OP_API_ERR_AUTH, "Authentication error: invalid API token");
            return NULL;
        }
        if (path_account && strcmp(path_account, acct->id) != 0) {
            respond_error(r, 403, OP_API_ERR_FORBIDDEN,
                          "the API token does not belong to this account");
            return NULL;
        }
        return acct;
    }
    if (!rt->listener_is_loopback) {
        respond_error(r, 401, OP_API_ERR_AUTH,
                      "Authentication error: an API token is required (Authorization: Bearer)");
        return NULL;
    }
    /* Loopback listener: the host's own users may call without a token. */
    if (path_account) {
        acct = op_config_find_account(rt->cfg, path_account);
        if (!acct) {
            respond_error(r, 404, OP_API_ERR_ACCOUNT, "no such account");
            return NULL;
        }
        return acct;
    }
    if (rt->cfg->n_accounts == 0) {
        respond_error(r, 403, OP_API_ERR_ACCOUNT, "no account is configured");
        return NULL;
    }
    return &rt->cfg->accounts[0];
}

/* ------------------------------------------------------------------------ */
/* simple endpoints                                                          */
/* ------------------------------------------------------------------------ */

static void handle_healthz(op_http_req *r)
{
    op_http_respond(r, 200, "application/json", "{\"status\":\"ok\"}", 15);
}

/* Readiness is open to probes without a token; which models failed, and
 * why, is shown only on loopback or with a valid token. */
static void handle_readyz(op_http_req *r, const op_runtime *rt)
{
    const char *authz = op_http_req_header(r, "Authorization");
    bool detail = rt->listener_is_loopback ||
                  (authz && strncasecmp(authz, "Bearer ", 7) == 0 &&
                   account_for_token(rt->cfg, authz + 7) != NULL);
    json_t *failed = json_array();
    for (size_t i = 0; i < rt->n_models; i++)
        if (!rt->models[i].model)
            json_array_append_new(failed, json_pack("{s:s, s:s}", "model", rt->models[i].cfg->id,
                                                    "error", rt->models[i].load_error
                                                                 ? rt->models[i].load_error
                                                                 : "not loaded"));
    bool ready = json_array_size(failed) == 0;
    if (!detail) {
        json_decref(failed);
        respond_json(r, ready ? 200 : 503, json_pack("{s:b}", "ready", ready));
        return;
    }
    respond_json(r, ready ? 200 : 503,
                 json_pack("{s:b, s:I, s:o}", "ready", ready, "models",
                           (json_int_t)rt->n_models, "failed", failed));
}

static void handle_metrics(op_http_req *r)
{
    char *text;
    size_t len;
    vx_api_refresh_metrics(); /* per-index gauges as of this scrape */
    if (op_metrics_render(&text, &len) != 0) {
        respond_error(r, 500, OP_API_ERR_INFERENCE, "out of memory");
        return;
    }
    op_http_respond(r, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
    free(text);
}

static const char *task_display_name(const char *task)
{
    if (strcmp(task, "text-generation") == 0)
        return "Text Generation";
    if (strcmp(task, "text-embeddings") == 0)
        return "Text Embeddings";
    if (strcmp(task, "text-classification") == 0)
        return "Text Classification";
    return task;
}

/* A stable UUID-shaped id from the model id, as the catalog API has one. */
static void model_uuid(const char *id, char out[37])
{
    char hex[PL_SHA256_HEX_LEN + 1];
    pl_sha256_hex(id, strlen(id), hex);
    snprintf(out, 37, "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8, hex + 12, hex + 16, hex + 20);
}

static void handle_openai_models(op_http_req *r, const op_runtime *rt)
{
    json_t *data = json_array();
    for (size_t i = 0; i < rt->n_models; i++) {
        const op_config_model *c = rt->models[i].cfg;
        json_array_append_new(data, json_pack("{s:s, s:s, s:i, s:s, s:s}", "id", c->id, "object",
                                              "model", "created", 0, "owned_by", "outpost", "task",
                                              c->task));
        for (size_t k = 0; k < c->n_aliases; k++)
            json_array_append_new(data, json_pack("{s:s, s:s, s:i, s:s, s:s, s:s}", "id",
                                                  c->aliases[k], "object", "model", "created", 0,
                                                  "owned_by", "outpost", "task", c->task, "root",
                                                  c->id));
    }
    respond_json(r, 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
}

static void add_property(json_t *props, const char *name, long long v)
{
    if (v <= 0)
        return;
    char buf[32];
    snprintf(buf, sizeof buf, "%lld", v);
    json_array_append_new(props, json_pack("{s:s, s:s}", "property_id", name, "value", buf));
}

static long query_long(op_http_req *r, const char *name, long dflt, long lo, long hi)
{
    const char *v = op_http_req_query(r, name);
    if (!v || !*v)
        return dflt;
    char *end;
    long n = strtol(v, &end, 10);
    if (*end || n < lo)
        return dflt;
    return n > hi ? hi : n;
}

static void handle_models_search(op_http_req *r, const op_runtime *rt)
{
    const char *search = op_http_req_query(r, "search");
    const char *task = op_http_req_query(r, "task");
    long page = query_long(r, "page", 1, 1, 1000000);
    long per_page = query_long(r, "per_page", 50, 1, 1000);
    json_t *all = json_array();
    for (size_t i = 0; i < rt->n_models; i++) {
        const op_config_model *c = rt->models[i].cfg;
        if (search && *search && !strcasestr(c->id, search) &&
            !(c->description && strcasestr(c->description, search)))
            continue;
        if (task && *task && strcasecmp(task, c->task) != 0 &&
            strcasecmp(task, task_display_name(c->task)) != 0)
            continue;
        char uuid[37];
        model_uuid(c->id, uuid);
        json_t *props = json_array();
        const char *desc = c->description ? c->description : "";
        if (rt->models[i].model) {
            /* Workers AI's property names per task: a generator's window
             * is context_window; an embedder's (or classifier's) is
             * max_input_tokens, and an embedder has output_dimensions.
             * parameters is Outpost's own, when the plugin knows it. */
            const outpost_model_info *info = op_model_info(rt->models[i].model);
            if (strcmp(c->task, OUTPOST_TASK_TEXT_GENERATION) == 0) {
                add_property(props, "context_window", info->context_window);
            } else {
                add_property(props, "max_input_tokens", info->context_window);
                if (strcmp(c->task, OUTPOST_TASK_TEXT_EMBEDDINGS) == 0)
                    add_property(props, "output_dimensions", info->dimensions);
            }
            add_property(props, "parameters", info->parameters);
            if (!c->description && info->description)
                desc = info->description;
        }
        json_t *aliases = json_array();
        for (size_t k = 0; k < c->n_aliases; k++)
            json_array_append_new(aliases, json_string(c->aliases[k]));
        json_array_append_new(
            all, json_pack("{s:s, s:i, s:s, s:s, s:{s:s, s:s, s:s}, s:[], s:o, s:o, s:b}", "id",
                           uuid, "source", 1, "name", c->id, "description", desc, "task", "id",
                           c->task, "name", task_display_name(c->task), "description", "", "tags",
                           "properties", props, "aliases", aliases, "ready",
                           rt->models[i].model != NULL));
    }
    size_t total = json_array_size(all);
    json_t *result = json_array();
    size_t start = (size_t)(page - 1) * (size_t)per_page;
    for (size_t i = start; i < total && i < start + (size_t)per_page; i++)
        json_array_append(result, json_array_get(all, i));
    json_decref(all);
    json_t *env = envelope_ok(result);
    json_object_set_new(env, "result_info",
                        json_pack("{s:I, s:I, s:I, s:I}", "count",
                                  (json_int_t)json_array_size(json_object_get(env, "result")),
                                  "page", (json_int_t)page, "per_page", (json_int_t)per_page,
                                  "total_count", (json_int_t)total));
    respond_json(r, 200, env);
}

/* ------------------------------------------------------------------------ */
/* inference                                                                 */
/* ------------------------------------------------------------------------ */

/* One inference in flight. References: the HTTP request (op_http_req_ref),
 * the runtime snapshot, and the op_infer handle; freed when both the plugin
 * has completed and the connection has closed. */
typedef struct api_call {
    op_http_req *req;
    op_runtime *rt;
    op_infer *infer;
    pthread_mutex_t mu;
    _Atomic int refs;
    bool stream;
    bool stream_started;
    bool completed;
    _Atomic bool timed_out; /* cancelled by the watchdog, not by the client */
    bool cancel_requested;  /* by op_api_cancel_all (under the list lock) */
    uint64_t deadline_ns;
    op_openai_req *oai;     /* OpenAI-compatible request (owned), NULL for /ai/run */
    struct api_call *prev, *next; /* watchdog list */
} api_call;

static pthread_mutex_t g_calls_mu = PTHREAD_MUTEX_INITIALIZER;
static api_call *g_calls;
static _Atomic int g_calls_n;
static pthread_t g_watchdog;
static _Atomic bool g_watchdog_stop;
static bool g_watchdog_running;

static void call_unref(api_call *c)
{
    if (atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    pthread_mutex_lock(&g_calls_mu);
    if (c->prev)
        c->prev->next = c->next;
    else if (g_calls == c)
        g_calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
    pthread_mutex_unlock(&g_calls_mu);
    atomic_fetch_sub(&g_calls_n, 1);
    if (c->infer)
        op_infer_release(c->infer);
    op_http_req_unref(c->req);
    op_runtime_release(c->rt);
    pthread_mutex_destroy(&c->mu);
    free(c->oai);
    free(c);
}

char *op_api_sse_event(json_t *obj, size_t *len)
{
    char *s = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    if (!s)
        return NULL;
    size_t n = strlen(s);
    char *line = malloc(n + 9);
    if (line) {
        memcpy(line, "data: ", 6);
        memcpy(line + 6, s, n);
        memcpy(line + 6 + n, "\n\n", 3);
        *len = n + 8;
    }
    free(s);
    return line;
}

/* Writes one SSE event (obj's reference is stolen). Returns 0, or -1 if
 * the client is gone. */
static int sse_write_json(op_http_req *r, json_t *obj)
{
    size_t n;
    char *line = op_api_sse_event(obj, &n);
    int rc = line ? op_http_stream_write(r, line, n) : -1;
    free(line);
    return rc;
}

/* Opens the event stream (once): headers, then for OpenAI chat the chunk
 * that announces the assistant's role. The stream starts with the first
 * piece, so that an error before it is still an ordinary HTTP error. */
static int stream_open(api_call *c)
{
    if (c->stream_started)
        return 0;
    c->stream_started = true;
    if (op_http_stream_begin(c->req, 200, "text/event-stream") != 0)
        return -1;
    json_t *first = c->oai ? op_openai_chunk_first(c->oai) : NULL;
    return first ? sse_write_json(c->req, first) : 0;
}

static int call_on_emit(void *ctx, const char *text, size_t len)
{
    api_call *c = ctx;
    if (!c->stream)
        return 0; /* a plugin may emit for non-streamed requests too: ignore */
    if (stream_open(c) != 0)
        return -1;
    if (c->oai)
        return sse_write_json(c->req, op_openai_chunk_piece(c->oai, text, len));
    /* The host hands on valid UTF-8 only (op_utf8.h); the fallback is for
     * a piece jansson would still refuse. */
    json_t *piece = json_stringn(text, len);
    if (!piece)
        piece = json_string("\xef\xbf\xbd");
    json_t *o = json_object();
    json_object_set_new(o, "response", piece);
    return sse_write_json(c->req, o);
}

/* The API error code for a plugin's outpost_error_code. */
static int api_code_for(int code)
{
    switch (code) {
    case OUTPOST_ERR_INVALID_ARGUMENT:
    case OUTPOST_ERR_UNSUPPORTED: return OP_API_ERR_INVALID_INPUT;
    case OUTPOST_ERR_RESOURCE_EXHAUSTED: return OP_API_ERR_OVERLOADED;
    case OUTPOST_ERR_DEADLINE_EXCEEDED: return OP_API_ERR_TIMEOUT;
    default: return OP_API_ERR_INFERENCE;
    }
}

/* The end of a stream: the last events, then [DONE]. */
static void stream_finish(api_call *c, json_t *result, int code, const char *message)
{
    if (code == 0 && c->oai) {
        sse_write_json(c->req, op_openai_chunk_final(c->oai, result));
        json_t *usage = op_openai_chunk_usage(c->oai, result);
        if (usage)
            sse_write_json(c->req, usage);
    } else if (code == 0) {
        /* The last event carries the usage, as Workers AI streams do. */
        json_t *last = json_pack("{s:s}", "response", "");
        json_t *usage = json_object_get(result, "usage");
        if (usage)
            json_object_set(last, "usage", usage);
        sse_write_json(c->req, last);
    } else if (c->oai) {
        int api_code = api_code_for(code);
        sse_write_json(c->req, op_openai_error_object(op_http_status_for_error(code),
                                                      message ? message : "inference failed",
                                                      NULL, openai_code(api_code)));
    } else {
        sse_write_json(c->req, json_pack("{s:[{s:i, s:s}]}", "errors", "code",
                                         OP_API_ERR_INFERENCE, "message",
                                         message ? message : "inference failed"));
    }
    op_http_stream_write(c->req, "data: [DONE]\n\n", 14);
    op_http_stream_end(c->req);
}

static void call_on_complete(void *ctx, const char *result_json, size_t len, int code,
                             const char *message)
{
    api_call *c = ctx;
    pthread_mutex_lock(&c->mu);
    c->completed = true;
    pthread_mutex_unlock(&c->mu);
    json_t *result = NULL;
    char timeout_msg[96];
    if (code == OUTPOST_ERR_CANCELLED && c->timed_out) {
        snprintf(timeout_msg, sizeof timeout_msg,
                 "request exceeded server.request_timeout_s (%d s)",
                 c->rt->cfg->server.request_timeout_s);
        code = OUTPOST_ERR_DEADLINE_EXCEEDED;
        message = timeout_msg;
    }
    if (code == 0) {
        json_error_t jerr;
        result = json_loadb(result_json ? result_json : "", len, JSON_DECODE_ANY, &jerr);
        if (!result) {
            code = OUTPOST_ERR_INTERNAL;
            message = "the model plugin returned invalid JSON";
            PL_LOG_ERROR("inference.bad_result", "reason", jerr.text);
        }
    }
    if (c->stream && (c->stream_started || code == 0)) {
        stream_open(c); /* a client that left makes the writes fail, harmlessly */
        stream_finish(c, result, code, message);
    } else if (code == 0 && c->oai) {
        op_openai_error oe;
        json_t *resp = op_openai_response(c->oai, result, &oe);
        if (resp) {
            /* Embeddings are float32 (what base64 carries too): 9
             * significant digits give each value back exactly, where the
             * default 17 print the noise of its widening to double. */
            respond_json_flags(c->req, 200, resp,
                               JSON_COMPACT | (c->oai->kind == OP_OPENAI_EMBEDDINGS
                                                   ? JSON_REAL_PRECISION(9)
                                                   : 0));
        } else {
            if (oe.status >= 500)
                PL_LOG_ERROR("inference.bad_result", "model", c->oai->model, "reason", oe.message);
            respond_openai(c->req, &oe);
        }
    } else if (code == 0) {
        respond_json(c->req, 200, envelope_ok(json_incref(result)));
    } else {
        if (code == OUTPOST_ERR_RESOURCE_EXHAUSTED || code == OUTPOST_ERR_UNAVAILABLE)
            op_http_add_header(c->req, "Retry-After", "1");
        respond_error(c->req, op_http_status_for_error(code), api_code_for(code),
                      message ? message : "inference failed");
    }
    json_decref(result);
    call_unref(c); /* the plugin side's reference */
}

static void call_on_close(op_http_req *r, bool completed, void *user)
{
    api_call *c = user;
    (void)r;
    pthread_mutex_lock(&c->mu);
    bool running = !c->completed;
    pthread_mutex_unlock(&c->mu);
    /* c->infer is published under the list lock once submit returns. The
     * connection's reference keeps c and its op_infer alive past the lock. */
    pthread_mutex_lock(&g_calls_mu);
    op_infer *inf = running ? c->infer : NULL;
    pthread_mutex_unlock(&g_calls_mu);
    if (inf)
        op_infer_cancel(inf); /* client gone: free the model's slot */
    call_unref(c);                 /* the connection's reference */
}

/* Takes a reference unless c is already on its way out (refs at 0). */
static bool call_try_ref(api_call *c)
{
    int n = atomic_load(&c->refs);
    while (n > 0)
        if (atomic_compare_exchange_weak(&c->refs, &n, n + 1))
            return true;
    return false;
}

/* Cancels every call with a submitted inference for which pick() is true.
 * Cancels run outside the list lock: a plugin may complete synchronously
 * inside cancel(), and completion can take the lock to unlink the call. */
static void cancel_calls(bool (*pick)(api_call *c, uint64_t now))
{
    api_call *batch[256];
    size_t n;
    do {
        n = 0;
        uint64_t now = pl_time_mono_ns();
        pthread_mutex_lock(&g_calls_mu);
        for (api_call *c = g_calls; c && n < sizeof batch / sizeof batch[0]; c = c->next)
            if (c->infer && pick(c, now) && call_try_ref(c))
                batch[n++] = c;
        pthread_mutex_unlock(&g_calls_mu);
        for (size_t i = 0; i < n; i++) {
            op_infer_cancel(batch[i]->infer);
            call_unref(batch[i]);
        }
    } while (n == sizeof batch / sizeof batch[0]);
}

static bool pick_expired(api_call *c, uint64_t now)
{
    if (!c->deadline_ns || now <= c->deadline_ns)
        return false;
    c->deadline_ns = 0; /* cancel once (under the list lock) */
    c->timed_out = true;
    return true;
}

static bool pick_all(api_call *c, uint64_t now)
{
    (void)now;
    if (c->cancel_requested)
        return false;
    c->cancel_requested = true;
    return true;
}

static void *watchdog_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&g_watchdog_stop)) {
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
        cancel_calls(pick_expired);
    }
    return NULL;
}

int op_api_start(void)
{
    atomic_store(&g_watchdog_stop, false);
    if (pthread_create(&g_watchdog, NULL, watchdog_main, NULL) != 0)
        return -1;
    g_watchdog_running = true;
    return 0;
}

void op_api_stop(void)
{
    if (!g_watchdog_running)
        return;
    atomic_store(&g_watchdog_stop, true);
    pthread_join(g_watchdog, NULL);
    g_watchdog_running = false;
}

void op_api_cancel_all(void) { cancel_calls(pick_all); }

int op_api_in_flight(void) { return atomic_load(&g_calls_n); }

typedef struct hdr_vec {
    op_policy_header items[64];
    size_t n;
} hdr_vec;

static void collect_header(const char *name, const char *value, void *ctx)
{
    hdr_vec *v = ctx;
    if (v->n < sizeof v->items / sizeof v->items[0]) {
        v->items[v->n].name = name;
        v->items[v->n].value = value;
        v->n++;
    }
}

/* A rough prompt-size estimate for policies (about 4 bytes a token), for
 * models whose plugin cannot count (no count_tokens) or is not loaded. */
static long long estimate_tokens(json_t *body)
{
    size_t bytes = 0;
    json_t *prompt = json_object_get(body, "prompt");
    if (json_is_string(prompt))
        bytes += json_string_length(prompt);
    json_t *msgs = json_object_get(body, "messages");
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        json_t *content = json_object_get(m, "content");
        if (json_is_string(content))
            bytes += json_string_length(content);
    }
    json_t *text = json_object_get(body, "text");
    if (json_is_string(text))
        bytes += json_string_length(text);
    json_array_foreach(text, i, m) if (json_is_string(m)) bytes += json_string_length(m);
    return (long long)((bytes + 3) / 4);
}

/* The route hook's tokens_estimate: the model's own count when the target
 * is loaded and its plugin can count (ABI minor 1, count_tokens), else the
 * byte estimate. */
static long long tokens_for_policy(const op_runtime_model *m, json_t *in, const char *body,
                                   size_t blen)
{
    long long n;
    if (m && m->model && op_model_count_tokens(m->model, body, blen, &n) == 0)
        return n;
    return estimate_tokens(in);
}

static const char *openai_endpoint_name(op_openai_kind kind)
{
    switch (kind) {
    case OP_OPENAI_CHAT: return "chat completions";
    case OP_OPENAI_COMPLETIONS: return "completions";
    case OP_OPENAI_EMBEDDINGS: return "embeddings";
    }
    return "?";
}

/* Checks that the model found for an OpenAI request can serve it: the
 * endpoint's task, and for embeddings the dimensions asked for. Answers and
 * returns false if not. */
static bool openai_model_fits(op_http_req *r, const op_openai_req *oai, const op_runtime_model *m,
                              const char *target)
{
    const char *want = oai->kind == OP_OPENAI_EMBEDDINGS ? "text-embeddings" : "text-generation";
    op_openai_error e = {.status = 400, .code = "model_not_supported"};
    if (strcmp(m->cfg->task, want) != 0) {
        snprintf(e.param, sizeof e.param, "model");
        snprintf(e.message, sizeof e.message,
                 "The model '%.200s' serves %s, not %s: use a %s model here.", target,
                 m->cfg->task, openai_endpoint_name(oai->kind), want);
        respond_openai(r, &e);
        return false;
    }
    long long dims = oai->kind == OP_OPENAI_EMBEDDINGS ? op_model_info(m->model)->dimensions : 0;
    if (oai->dimensions > 0 && dims > 0 && dims != oai->dimensions) {
        e.code = "invalid_value";
        snprintf(e.param, sizeof e.param, "dimensions");
        snprintf(e.message, sizeof e.message,
                 "Invalid 'dimensions': the model '%.200s' has %lld dimensions; send %lld or leave "
                 "'dimensions' out.",
                 target, dims, dims);
        respond_openai(r, &e);
        return false;
    }
    return true;
}

/*
 * The path every inference takes, /ai/run and the OpenAI endpoints alike:
 * the policies' route hook (model, task, token estimate), the model lookup
 * (ids and aliases), then submission with the deadline and cancel-on-close.
 * in is the Workers AI input as JSON (borrowed) and body/blen the same as
 * text, which is what the plugin gets. oai (owned, freed here on every path)
 * is the OpenAI request being served, or NULL for /ai/run.
 */
static void run_inference(op_http_req *r, op_runtime *rt, const op_config_account *acct,
                          const char *model_id, json_t *in, const char *body, size_t blen,
                          op_openai_req *oai)
{
    char target[256];
    snprintf(target, sizeof target, "%s", model_id);
    const op_runtime_model *m = op_runtime_find_model(rt, target);

    if (rt->policies) {
        hdr_vec hv;
        hv.n = 0;
        op_http_req_headers(r, collect_header, &hv);
        op_route_request pr = {
            .account = acct->id,
            .model = target,
            .task = m ? m->cfg->task : NULL,
            .method = op_http_req_method(r),
            .path = op_http_req_path(r),
            .headers = hv.items,
            .n_headers = hv.n,
            .body_json = body,
            .body_len = blen,
            .tokens_estimate = tokens_for_policy(m, in, body, blen),
        };
        op_route_decision d;
        op_policy_status st = op_policy_route(rt->policies, &pr, &d);
        if (st != OP_POLICY_OK) {
            free(oai);
            respond_error(r, 500, OP_API_ERR_POLICY_FAILED, d.message);
            return;
        }
        if (d.action == OP_ROUTE_REJECT) {
            free(oai);
            respond_error(r, d.status >= 400 && d.status <= 599 ? d.status : 403,
                          OP_API_ERR_POLICY_REJECT, d.message);
            return;
        }
        if (strcmp(d.model, target) != 0) {
            snprintf(target, sizeof target, "%s", d.model);
            m = op_runtime_find_model(rt, target);
        }
    }

    if (!m) {
        free(oai);
        char msg[384];
        snprintf(msg, sizeof msg, "No such model %s", target);
        respond_error(r, 404, OP_API_ERR_NO_MODEL, msg);
        return;
    }
    if (!m->model) {
        free(oai);
        char msg[768];
        snprintf(msg, sizeof msg, "model %s is not available: %s", target,
                 m->load_error ? m->load_error : "not loaded");
        op_http_add_header(r, "Retry-After", "30");
        respond_error(r, 503, OP_API_ERR_MODEL_UNAVAILABLE, msg);
        return;
    }
    if (oai && !openai_model_fits(r, oai, m, target)) {
        free(oai);
        return;
    }
    bool stream = oai ? oai->stream : json_is_true(json_object_get(in, "stream"));

    api_call *c = calloc(1, sizeof *c);
    if (!c) {
        free(oai);
        respond_error(r, 500, OP_API_ERR_INFERENCE, "out of memory");
        return;
    }
    pthread_mutex_init(&c->mu, NULL);
    atomic_init(&c->refs, 3); /* connection, plugin side, this function */
    c->req = r;
    op_http_req_ref(r);
    c->rt = rt;
    atomic_fetch_add(&rt->refs, 1);
    c->stream = stream;
    c->oai = oai;
    int timeout = rt->cfg->server.request_timeout_s;
    c->deadline_ns = timeout > 0 ? pl_time_mono_ns() + (uint64_t)timeout * 1000000000ull : 0;
    atomic_fetch_add(&g_calls_n, 1);
    op_http_req_set_user(r, c);
    op_http_req_on_close(r, call_on_close);

    op_infer_callbacks cb = {.ctx = c, .on_emit = call_on_emit, .on_complete = call_on_complete};
    char err[512];
    op_infer *inf = NULL;
    /* The list lock is held across submit so the watchdog and cancel_all see
     * c->infer only once it is set. */
    pthread_mutex_lock(&g_calls_mu);
    c->next = g_calls;
    if (g_calls)
        g_calls->prev = c;
    g_calls = c;
    pthread_mutex_unlock(&g_calls_mu);
    int code = op_infer_submit(m->model, m->cfg->id, m->cfg->task, body, blen, stream, &cb, &inf,
                               err, sizeof err);
    if (code != 0) {
        int status = op_http_status_for_error(code);
        if (code == OUTPOST_ERR_RESOURCE_EXHAUSTED || code == OUTPOST_ERR_UNAVAILABLE)
            op_http_add_header(r, "Retry-After", "1");
        respond_error(r,
                      status, code == OUTPOST_ERR_RESOURCE_EXHAUSTED ? OP_API_ERR_OVERLOADED
                              : status == 400                        ? OP_API_ERR_INVALID_INPUT
                                                                     : OP_API_ERR_INFERENCE,
                      err);
        call_unref(c); /* no plugin completion will come */
    } else {
        pthread_mutex_lock(&g_calls_mu);
        c->infer = inf;
        pthread_mutex_unlock(&g_calls_mu);
    }
    call_unref(c); /* this function's reference */
}

/* Parses the request body as a JSON object, or answers 400 and returns
 * NULL. */
static json_t *body_object(op_http_req *r, const char **body, size_t *blen)
{
    *body = op_http_req_body(r, blen);
    json_error_t jerr;
    json_t *in = json_loadb(*body, *blen, 0, &jerr);
    if (in && json_is_object(in))
        return in;
    char msg[256];
    if (!in)
        snprintf(msg, sizeof msg, "request body is not valid JSON: %s (line %d, column %d)",
                 jerr.text, jerr.line, jerr.column);
    else
        snprintf(msg, sizeof msg, "request body must be a JSON object");
    json_decref(in);
    respond_error(r, 400, OP_API_ERR_INVALID_INPUT, msg);
    return NULL;
}

static void handle_ai_run(op_http_req *r, op_runtime *rt, const op_config_account *acct,
                          const char *model_id)
{
    const char *body;
    size_t blen;
    json_t *in = body_object(r, &body, &blen);
    if (!in)
        return;
    run_inference(r, rt, acct, model_id, in, body, blen, NULL);
    json_decref(in);
}

/* POST /v1/chat/completions, /v1/completions, /v1/embeddings: translate to
 * the Workers AI input, then the same path as /ai/run. */
static void handle_openai(op_http_req *r, op_runtime *rt, const op_config_account *acct,
                          op_openai_kind kind)
{
    const char *raw;
    size_t rawlen;
    json_t *in = body_object(r, &raw, &rawlen);
    if (!in)
        return;
    op_openai_req *oai = malloc(sizeof *oai);
    if (!oai) {
        json_decref(in);
        respond_error(r, 500, OP_API_ERR_INFERENCE, "out of memory");
        return;
    }
    op_openai_error e;
    json_t *wai = op_openai_translate(kind, in, oai, &e);
    json_decref(in);
    if (!wai) {
        free(oai);
        respond_openai(r, &e);
        return;
    }
    char *body = json_dumps(wai, JSON_COMPACT);
    if (!body) {
        json_decref(wai);
        free(oai);
        respond_error(r, 500, OP_API_ERR_INFERENCE, "out of memory");
        return;
    }
    char model[OP_OPENAI_MODEL_MAX];
    memcpy(model, oai->model, sizeof model);
    run_inference(r, rt, acct, model, wai, body, strlen(body), oai);
    free(body);
    json_decref(wai);
}

/* ------------------------------------------------------------------------ */
/* routing                                                                   */
/* ------------------------------------------------------------------------ */

static bool is_get(op_http_req *r) { return strcmp(op_http_req_method(r), "GET") == 0; }
static bool is_post(op_http_req *r) { return strcmp(op_http_req_method(r), "POST") == 0; }

static void method_not_allowed(op_http_req *r, const char *allow)
{
    op_http_add_header(r, "Allow", allow);
    respond_error(r, 405, OP_API_ERR_METHOD, "method not allowed for this route");
}

/* Splits "/client/v4/accounts/{account}/rest" into account and rest. */
static bool split_account(const char *path, char *account, size_t alen, const char **rest)
{
    if (strncmp(path, ACCOUNTS_PREFIX, sizeof ACCOUNTS_PREFIX - 1) != 0)
        return false;
    const char *a = path + sizeof ACCOUNTS_PREFIX - 1;
    const char *slash = strchr(a, '/');
    size_t n = slash ? (size_t)(slash - a) : strlen(a);
    if (n == 0 || n >= alen)
        return false;
    memcpy(account, a, n);
    account[n] = '\0';
    *rest = slash ? slash : "";
    return true;
}

static void route_api(op_http_req *r, op_runtime *rt)
{
    const char *path = op_http_req_path(r);
    char account[80];
    const char *rest = NULL;
    bool scoped = split_account(path, account, sizeof account, &rest);
    const char *sub = scoped ? rest : path;

    /* The AI gateway: /v1/{account}/{gateway}/... (its own authentication,
     * cf-aig-authorization, decided per gateway), and the management API
     * under the account (account tokens, as every account route). */
    if (!scoped && gw_is_gateway_path(rt->cfg, path)) {
        gw_handle(r, rt);
        return;
    }
    if (scoped && strncmp(sub, "/ai-gateway/", 12) == 0) {
        op_http_req_set_route(r, "gateway_admin");
        if (authenticate(r, rt, account))
            gw_admin_handle(r, rt->cfg, account, sub + 11, gw_svc_registry(), gw_svc_logs());
        return;
    }

    /* Vectorize v2 (docs/vectorize.md), account tokens as every account route. */
    if (scoped && strncmp(sub, "/vectorize/v2/", 14) == 0) {
        op_http_req_set_route(r, "vectorize");
        if (authenticate(r, rt, account))
            vx_api_handle(r, rt, account, sub + 13);
        return;
    }

    if (strncmp(sub, "/ai/run/", 8) == 0 && (scoped || strcmp(path, sub) == 0)) {
        op_http_req_set_route(r, "ai_run");
        if (!is_post(r)) {
            method_not_allowed(r, "POST");
            return;
        }
        const op_config_account *acct = authenticate(r, rt, scoped ? account : NULL);
        if (!acct)
            return;
        if (sub[8] == '\0') {
            respond_error(r, 404, OP_API_ERR_NO_MODEL, "missing model in path");
            return;
        }
        handle_ai_run(r, rt, acct, sub + 8);
        return;
    }
    /* The OpenAI-compatible endpoints: /v1/X and .../ai/v1/X. */
    const char *v1 = !scoped && strncmp(path, "/v1/", 4) == 0   ? path + 3
                     : scoped && strncmp(sub, "/ai/v1/", 7) == 0 ? sub + 6
                                                                 : NULL;
    static const struct {
        const char *path;
        const char *route;
        op_openai_kind kind;
    } openai_routes[] = {
        {"/chat/completions", "openai_chat", OP_OPENAI_CHAT},
        {"/completions", "openai_completions", OP_OPENAI_COMPLETIONS},
        {"/embeddings", "openai_embeddings", OP_OPENAI_EMBEDDINGS},
    };
    for (size_t i = 0; v1 && i < sizeof openai_routes / sizeof openai_routes[0]; i++) {
        if (strcmp(v1, openai_routes[i].path) != 0)
            continue;
        op_http_req_set_route(r, openai_routes[i].route);
        if (!is_post(r)) {
            method_not_allowed(r, "POST");
            return;
        }
        const op_config_account *acct = authenticate(r, rt, scoped ? account : NULL);
        if (acct)
            handle_openai(r, rt, acct, openai_routes[i].kind);
        return;
    }
    if (v1 && strcmp(v1, "/models") == 0) {
        op_http_req_set_route(r, "models");
        if (!is_get(r)) {
            method_not_allowed(r, "GET");
            return;
        }
        if (authenticate(r, rt, scoped ? account : NULL))
            handle_openai_models(r, rt);
        return;
    }
    if (scoped && strcmp(sub, "/ai/models/search") == 0) {
        op_http_req_set_route(r, "models_search");
        if (!is_get(r)) {
            method_not_allowed(r, "GET");
            return;
        }
        if (authenticate(r, rt, account))
            handle_models_search(r, rt);
        return;
    }
    op_http_req_set_route(r, "unknown");
    /* Unknown routes still need a token off loopback, so that probing them
     * tells an anonymous caller nothing. */
    if (authenticate(r, rt, NULL))
        respond_error(r, 404, OP_API_ERR_NO_ROUTE, "no route for that URI");
}

void op_api_too_large(op_http_req *r, void *user)
{
    (void)user;
    respond_error(r, 413, 413, "request body exceeds server.max_body_bytes");
}

void op_api_handle(op_http_req *r, void *user)
{
    (void)user;
    const char *path = op_http_req_path(r);
    if (strcmp(path, "/healthz") == 0) {
        op_http_req_set_route(r, "healthz");
        handle_healthz(r);
        return;
    }
    if (strcmp(path, "/metrics") == 0) {
        op_http_req_set_route(r, "metrics");
        if (is_get(r))
            handle_metrics(r);
        else
            method_not_allowed(r, "GET");
        return;
    }
    op_runtime *rt = op_runtime_acquire();
    if (!rt) {
        respond_error(r, 503, OP_API_ERR_MODEL_UNAVAILABLE, "starting up");
        return;
    }
    if (strcmp(path, "/readyz") == 0) {
        op_http_req_set_route(r, "readyz");
        handle_readyz(r, rt);
    } else {
        route_api(r, rt);
    }
    op_runtime_release(rt);
}
