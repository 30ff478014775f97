/*
 * gw_local: the agent's own models as a gateway provider. See gw_local.h.
 */
#include "gateway/gw_local.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/op_api.h"
#include "api/op_openai.h"
#include "plugins/op_plugins.h"

struct gw_local_call {
    _Atomic int refs;
    gw_response_cb cb;
    op_infer *infer;
    pthread_mutex_t mu;   /* infer pointer vs cancel */
    bool cancel_asked;
    bool stream;
    bool head_sent;
    bool aborted;         /* a callback returned -1 */
    bool is_openai;
    bool first_sent;      /* a chat stream's role chunk went out */
    op_openai_req oai;
};

bool gw_local_is_provider(const char *provider)
{
    return provider && (strcmp(provider, "local") == 0 || strcmp(provider, "workers-ai") == 0);
}

/* The OpenAI endpoint named by endpoint, or -1. */
static int openai_kind(const char *endpoint)
{
    if (strncmp(endpoint, "v1/", 3) == 0)
        endpoint += 3;
    else if (strncmp(endpoint, "/v1/", 4) == 0)
        endpoint += 4;
    if (*endpoint == '/')
        endpoint++;
    if (strcmp(endpoint, "chat/completions") == 0)
        return OP_OPENAI_CHAT;
    if (strcmp(endpoint, "completions") == 0)
        return OP_OPENAI_COMPLETIONS;
    if (strcmp(endpoint, "embeddings") == 0)
        return OP_OPENAI_EMBEDDINGS;
    return -1;
}

static const char *model_of_endpoint(const char *endpoint)
{
    if (*endpoint == '/')
        endpoint++;
    if (strncmp(endpoint, "ai/run/", 7) == 0)
        return endpoint + 7;
    if (strncmp(endpoint, "run/", 4) == 0)
        return endpoint + 4;
    return endpoint;
}

bool gw_local_model(const char *endpoint, json_t *body, char *out, size_t outlen)
{
    if (!endpoint)
        return false;
    const char *m = NULL;
    if (openai_kind(endpoint) >= 0)
        m = json_string_value(json_object_get(body, "model"));
    else
        m = model_of_endpoint(endpoint);
    if (!m || !*m || strlen(m) >= outlen)
        return false;
    snprintf(out, outlen, "%s", m);
    return true;
}

static void call_unref(gw_local_call *c)
{
    if (atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    if (c->infer)
        op_infer_release(c->infer);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static int send_head(gw_local_call *c, int status, const char *ctype)
{
    if (c->head_sent)
        return 0;
    c->head_sent = true;
    if (c->cb.on_head(c->cb.ctx, status, ctype, NULL, 0) != 0) {
        c->aborted = true;
        return -1;
    }
    return 0;
}

static int send_data(gw_local_call *c, const char *d, size_t n)
{
    if (c->aborted)
        return -1;
    if (c->cb.on_data(c->cb.ctx, d, n) != 0) {
        c->aborted = true;
        return -1;
    }
    return 0;
}

/* Sends obj as one SSE event (steals the reference). */
static int send_event(gw_local_call *c, json_t *obj)
{
    char *s = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    if (!s)
        return -1;
    size_t n = strlen(s);
    char *line = malloc(n + 9);
    int rc = -1;
    if (line) {
        memcpy(line, "data: ", 6);
        memcpy(line + 6, s, n);
        memcpy(line + 6 + n, "\n\n", 2);
        rc = send_data(c, line, n + 8);
        free(line);
    }
    free(s);
    return rc;
}

/* A whole answer: head, body, done. */
static void answer(gw_local_call *c, int status, const char *ctype, json_t *body)
{
    char *s = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (send_head(c, status, ctype) == 0 && s)
        send_data(c, s, strlen(s));
    free(s);
    c->cb.on_done(c->cb.ctx, c->aborted ? GW_UP_ABORTED : GW_UP_OK, NULL);
}

static int api_code_for(int code)
{
    switch (code) {
    case OUTPOST_ERR_INVALID_ARGUMENT:
    case OUTPOST_ERR_UNSUPPORTED: return OP_API_ERR_INVALID_INPUT;
    case OUTPOST_ERR_RESOURCE_EXHAUSTED: return OP_API_ERR_OVERLOADED;
    case OUTPOST_ERR_DEADLINE_EXCEEDED: return OP_API_ERR_TIMEOUT;
    case OUTPOST_ERR_NOT_FOUND: return OP_API_ERR_NO_MODEL;
    default: return OP_API_ERR_INFERENCE;
    }
}

/* The error body in the endpoint's shape. */
static json_t *error_body(gw_local_call *c, int status, int api_code, const char *msg)
{
    if (c->is_openai)
        return op_openai_error_object(status, msg, NULL, NULL);
    return json_pack("{s:n, s:b, s:[{s:i, s:s}], s:[]}", "result", "success", 0, "errors", "code",
                     api_code, "message", msg ? msg : "", "messages");
}

static void answer_error(gw_local_call *c, int status, int api_code, const char *msg)
{
    answer(c, status, "application/json", error_body(c, status, api_code, msg));
}

/* A chat stream opens with the chunk announcing the assistant's role. */
static int open_chat(gw_local_call *c)
{
    if (c->first_sent)
        return 0;
    c->first_sent = true;
    json_t *first = op_openai_chunk_first(&c->oai);
    return first ? send_event(c, first) : 0;
}

static int on_emit(void *ctx, const char *text, size_t len)
{
    gw_local_call *c = ctx;
    if (!c->stream)
        return 0;
    if (send_head(c, 200, "text/event-stream") != 0)
        return -1;
    if (c->is_openai) {
        if (open_chat(c) != 0)
            return -1;
        return send_event(c, op_openai_chunk_piece(&c->oai, text, len));
    }
    json_t *piece = json_stringn(text, len);
    if (!piece)
        piece = json_string("\xef\xbf\xbd");
    json_t *o = json_object();
    json_object_set_new(o, "response", piece);
    return send_event(c, o);
}

static void on_complete(void *ctx, const char *result_json, size_t len, int code,
                        const char *message)
{
    gw_local_call *c = ctx;
    json_t *result = NULL;
    if (code == 0) {
        result = json_loadb(result_json ? result_json : "", len, JSON_DECODE_ANY, NULL);
        if (!result) {
            code = OUTPOST_ERR_INTERNAL;
            message = "the model plugin returned invalid JSON";
        }
    }
    if (c->stream && (c->head_sent || code == 0)) {
        send_head(c, 200, "text/event-stream");
        if (c->is_openai)
            open_chat(c);
        if (code == 0 && c->is_openai) {
            send_event(c, op_openai_chunk_final(&c->oai, result));
            json_t *usage = op_openai_chunk_usage(&c->oai, result);
            if (usage)
                send_event(c, usage);
        } else if (code == 0) {
            json_t *last = json_pack("{s:s}", "response", "");
            json_t *usage = json_object_get(result, "usage");
            if (usage)
                json_object_set(last, "usage", usage);
            send_event(c, last);
        } else {
            int status = op_http_status_for_error(code);
            send_event(c, error_body(c, status, api_code_for(code),
                                     message ? message : "inference failed"));
        }
        send_data(c, "data: [DONE]\n\n", 14);
        /* A model failure after the stream began is a cut stream. */
        c->cb.on_done(c->cb.ctx,
                      c->aborted ? GW_UP_ABORTED : code == 0 ? GW_UP_OK : GW_UP_PROTOCOL,
                      code == 0 ? NULL : message);
    } else if (code == 0 && c->is_openai) {
        op_openai_error oe;
        json_t *resp = op_openai_response(&c->oai, result, &oe);
        if (resp)
            answer(c, 200, "application/json", resp);
        else
            answer(c, oe.status, "application/json",
                   op_openai_error_object(oe.status, oe.message, oe.param[0] ? oe.param : NULL,
                                          oe.code));
    } else if (code == 0) {
        answer(c, 200, "application/json",
               json_pack("{s:O, s:b, s:[], s:[]}", "result", result, "success", 1, "errors",
                         "messages"));
    } else {
        answer_error(c, op_http_status_for_error(code), api_code_for(code),
                     message ? message : "inference failed");
    }
    json_decref(result);
    call_unref(c); /* the plugin side's reference */
}

int gw_local_start(op_runtime *rt, const char *endpoint, const char *model, json_t *body,
                   const gw_response_cb *cb, gw_local_call **out)
{
    gw_local_call *c = calloc(1, sizeof *c);
    if (!c)
        return -1;
    atomic_init(&c->refs, 2); /* caller, and the completion path */
    pthread_mutex_init(&c->mu, NULL);
    c->cb = *cb;
    *out = c;

    int kind = openai_kind(endpoint ? endpoint : "");
    c->is_openai = kind >= 0;
    char target[256];
    if (model && *model)
        snprintf(target, sizeof target, "%s", model);
    else if (!gw_local_model(endpoint ? endpoint : "", body, target, sizeof target))
        target[0] = '\0';

    if (!json_is_object(body)) {
        answer_error(c, 400, OP_API_ERR_INVALID_INPUT, "the step's query must be a JSON object");
        call_unref(c);
        return 0;
    }
    if (!target[0]) {
        answer_error(c, 404, OP_API_ERR_NO_MODEL, "the step names no model");
        call_unref(c);
        return 0;
    }
    json_t *input = NULL;
    if (c->is_openai) {
        op_openai_error oe;
        json_t *copy = json_deep_copy(body);
        if (copy)
            json_object_set_new(copy, "model", json_string(target));
        input = copy ? op_openai_translate((op_openai_kind)kind, copy, &c->oai, &oe) : NULL;
        json_decref(copy);
        if (!input) {
            answer(c, oe.status ? oe.status : 400, "application/json",
                   op_openai_error_object(oe.status ? oe.status : 400, oe.message,
                                          oe.param[0] ? oe.param : NULL, oe.code));
            call_unref(c);
            return 0;
        }
        c->stream = c->oai.stream;
        /* The gateway counts tokens of every stream: ask for the usage chunk. */
        c->oai.include_usage = true;
    } else {
        input = json_incref(body);
        c->stream = json_is_true(json_object_get(body, "stream"));
    }

    const op_runtime_model *m = op_runtime_find_model(rt, target);
    char msg[768];
    if (!m || !m->model) {
        if (!m)
            snprintf(msg, sizeof msg, "No such model %s", target);
        else
            snprintf(msg, sizeof msg, "model %s is not available: %s", target,
                     m->load_error ? m->load_error : "not loaded");
        json_decref(input);
        answer_error(c, m ? 503 : 404, m ? OP_API_ERR_MODEL_UNAVAILABLE : OP_API_ERR_NO_MODEL, msg);
        call_unref(c);
        return 0;
    }
    const char *want = c->is_openai && c->oai.kind == OP_OPENAI_EMBEDDINGS ? "text-embeddings"
                       : c->is_openai                                     ? "text-generation"
                                                                          : NULL;
    if (want && strcmp(m->cfg->task, want) != 0) {
        snprintf(msg, sizeof msg, "The model '%.200s' serves %s, not %s.", target, m->cfg->task,
                 want);
        json_decref(input);
        answer_error(c, 400, OP_API_ERR_INVALID_INPUT, msg);
        call_unref(c);
        return 0;
    }
    char *text = json_dumps(input, JSON_COMPACT);
    json_decref(input);
    if (!text) {
        answer_error(c, 500, OP_API_ERR_INFERENCE, "out of memory");
        call_unref(c);
        return 0;
    }
    op_infer_callbacks icb = {.ctx = c, .on_emit = on_emit, .on_complete = on_complete};
    op_infer *inf = NULL;
    char err[512];
    int code = op_infer_submit(m->model, m->cfg->id, m->cfg->task, text, strlen(text), c->stream,
                               &icb, &inf, err, sizeof err);
    free(text);
    if (code != 0) {
        answer_error(c, op_http_status_for_error(code), api_code_for(code), err);
        call_unref(c); /* no completion will come */
        return 0;
    }
    pthread_mutex_lock(&c->mu);
    c->infer = inf;
    bool cancel = c->cancel_asked;
    pthread_mutex_unlock(&c->mu);
    if (cancel)
        op_infer_cancel(inf);
    return 0;
}

void gw_local_cancel(gw_local_call *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->mu);
    c->cancel_asked = true;
    op_infer *inf = c->infer;
    pthread_mutex_unlock(&c->mu);
    if (inf)
        op_infer_cancel(inf);
}

void gw_local_release(gw_local_call *c)
{
    if (c)
        call_unref(c);
}
