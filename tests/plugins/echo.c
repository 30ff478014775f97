/*
 * echo: a test plugin that behaves like a real one without a model. It
 * serves text-generation (echoes the prompt back word by word, streamed when
 * asked) and text-embeddings (a deterministic 4-wide vector per text), runs
 * every request on one worker thread per model instance fed by a bounded
 * queue, and honours cancellation between words. Test-only: never shipped.
 *
 * It also exercises ABI minor 1: it reports every outpost_model_metric
 * through host->model_metric() (queue depth, running, KV cache, batch size,
 * queue wait, time to first token, inter-token latency, token counters) and
 * provides count_tokens (the words the request would echo, which is also
 * its usage.prompt_tokens). Results carry Outpost's extensions: usage on
 * embeddings, finish_reason ("length" when max_tokens cut the echo) on
 * generations.
 *
 * Built twice: echo.so at the current ABI, and with ECHO_ABI_V0 as
 * echo_v0.so, a plugin as minor 0 built it (abi_minor 0, the minor-0
 * descriptor size, no count_tokens, no model_metric), to prove old plugins
 * still load and serve.
 *
 * Model options (all optional):
 *   delay_ms    per generated word, so tests can cancel mid-stream (default 0)
 *   max_queue   queued requests before RESOURCE_EXHAUSTED (default 64)
 *   dimensions  embedding width (default 4)
 *   hide_dimensions  1: report 0 (unknown) dimensions in the model info
 *   reflect     1: generate the request input itself (the JSON the host
 *               submitted, as one piece), so tests see what the host sent
 *   split_utf8  1: emit every streamed piece one byte at a time, cutting
 *               multi-byte characters, as a byte-level tokenizer does
 *   cut_utf8_end 1: end every stream with a lone UTF-8 lead byte (0xC3)
 *               that nothing completes
 *   misbehave   host robustness tests; completes inside submit() on the
 *               caller's thread: "double_complete" (completes twice),
 *               "emit_after_complete", "bad_json", "no_result"
 */
#include <errno.h>
#include <stdarg.h>
#include <jansson.h>
#include <math.h>
#include <stddef.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "outpost/plugin.h"

#define ECHO_DIM 4
#define ECHO_CONTEXT 4096

#ifdef ECHO_ABI_V0
#define ECHO_NAME "echo_v0"
#else
#define ECHO_NAME "echo"
#endif

/* One plugin, one host table: the plugin keeps it where every model sees it. */
struct outpost_plugin_state {
    const outpost_host_api *host;
};

typedef struct echo_item {
    struct echo_item *next;
    outpost_request *req;
    bool cancelled; /* cancel() arrived while queued */
    uint64_t submit_ns;
} echo_item;

typedef enum echo_misbehave {
    ECHO_OK = 0,
    ECHO_DOUBLE_COMPLETE,
    ECHO_EMIT_AFTER_COMPLETE,
    ECHO_BAD_JSON,
    ECHO_NO_RESULT,
} echo_misbehave;

struct outpost_model {
    const outpost_host_api *host;
    outpost_host_model *hm;     /* NULL when the host is older than minor 1 */
    bool embeddings;            /* task */
    long delay_ms;
    long max_queue;
    long dimensions;
    bool hide_dimensions;
    bool reflect;
    bool split_utf8;
    bool cut_utf8_end;
    echo_misbehave misbehave;

    pthread_mutex_t mu;
    pthread_cond_t cv;          /* queue non-empty, stop, or a cancel */
    echo_item *head, *tail;
    long queued;
    bool stop;
    outpost_request *current;   /* being processed by the worker */
    bool current_cancelled;
    pthread_t worker;
};

/* ======================================================================== */
/* Helpers                                                                   */
/* ======================================================================== */

static outpost_error *errorf(const outpost_host_api *h, outpost_error_code code, const char *fmt,
                             ...) __attribute__((format(printf, 3, 4)));

static outpost_error *errorf(const outpost_host_api *h, outpost_error_code code, const char *fmt,
                             ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return h->error_new(code, msg);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* One model_metric() report, if the host has the function (minor 1). */
static void report(outpost_model *m, outpost_model_metric metric, double value)
{
#ifdef ECHO_ABI_V0
    (void)m, (void)metric, (void)value;
#else
    if (m->hm)
        m->host->model_metric(m->hm, metric, value);
#endif
}

/* Streams one piece; with split_utf8, one byte per call. */
static int emit(outpost_model *m, outpost_request *req, const char *text, size_t n)
{
    if (!m->split_utf8)
        return m->host->request_emit(req, text, n);
    for (size_t i = 0; i < n; i++)
        if (m->host->request_emit(req, text + i, 1) != 0)
            return -1;
    return 0;
}

static void complete_json(outpost_model *m, outpost_request *req, json_t *result)
{
    char *text = json_dumps(result, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(result);
    if (!text) {
        m->host->request_complete(req, NULL, 0,
                                  m->host->error_new(OUTPOST_ERR_INTERNAL, "out of memory"));
        return;
    }
    m->host->request_complete(req, text, strlen(text), NULL);
    free(text);
}

static void complete_error(outpost_model *m, outpost_request *req, outpost_error *e)
{
    m->host->request_complete(req, NULL, 0, e);
}

/* True once this request should stop; m->mu must be held. */
static bool stop_requested(outpost_model *m, outpost_request *req)
{
    return m->current_cancelled || m->host->request_cancelled(req);
}

/* Sleeps delay_ms unless cancelled first; returns true if cancelled. */
static bool pause_word(outpost_model *m, outpost_request *req)
{
    pthread_mutex_lock(&m->mu);
    if (m->delay_ms > 0 && !stop_requested(m, req)) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += m->delay_ms / 1000;
        until.tv_nsec += (m->delay_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        /* cancel() signals cv; request_cancelled() set by the host without
         * a cancel() call is seen at the next word. */
        while (!stop_requested(m, req) && !m->stop) {
            if (pthread_cond_timedwait(&m->cv, &m->mu, &until) == ETIMEDOUT)
                break;
        }
    }
    bool cancelled = stop_requested(m, req);
    pthread_mutex_unlock(&m->mu);
    return cancelled;
}

/* ======================================================================== */
/* Text generation                                                           */
/* ======================================================================== */

/* The text to echo: the prompt, or the content of the last user message. */
static outpost_error *generation_input(const outpost_host_api *h, json_t *in, const char **text,
                                       long *max_tokens)
{
    json_t *prompt = json_object_get(in, "prompt");
    json_t *messages = json_object_get(in, "messages");
    json_t *mt = json_object_get(in, "max_tokens");
    *max_tokens = 256;
    if (mt) {
        if (!json_is_integer(mt) || json_integer_value(mt) < 1)
            return errorf(h, OUTPOST_ERR_INVALID_ARGUMENT, "'max_tokens' must be a positive integer");
        *max_tokens = (long)json_integer_value(mt);
    }
    if (prompt) {
        if (!json_is_string(prompt))
            return errorf(h, OUTPOST_ERR_INVALID_ARGUMENT, "'prompt' must be a string");
        *text = json_string_value(prompt);
        return NULL;
    }
    if (!messages)
        return errorf(h, OUTPOST_ERR_INVALID_ARGUMENT, "either 'prompt' or 'messages' is required");
    if (!json_is_array(messages) || json_array_size(messages) == 0)
        return errorf(h, OUTPOST_ERR_INVALID_ARGUMENT, "'messages' must be a non-empty array");
    *text = NULL;
    size_t i;
    json_t *msg;
    json_array_foreach(messages, i, msg) {
        json_t *role = json_object_get(msg, "role");
        json_t *content = json_object_get(msg, "content");
        if (!json_is_object(msg))
            return errorf(h, OUTPOST_ERR_INVALID_ARGUMENT, "'messages[%zu]' must be an object", i);
        if (!json_is_string(role))
            return errorf(h, OUTPOST_ERR_INVALID_ARGUMENT, "'messages[%zu].role' must be a string", i);
        if (!json_is_string(content))
            return errorf(h, OUTPOST_ERR_INVALID_ARGUMENT,
                          "'messages[%zu].content' must be a string", i);
        if (strcmp(json_string_value(role), "user") == 0)
            *text = json_string_value(content);
    }
    if (!*text)
        return errorf(h, OUTPOST_ERR_INVALID_ARGUMENT, "'messages' has no message with role 'user'");
    return NULL;
}

static long count_words(const char *s)
{
    long n = 0;
    bool in = false;
    for (; *s; s++) {
        bool space = *s == ' ' || *s == '\t' || *s == '\n' || *s == '\r';
        if (!space && !in)
            n++;
        in = !space;
    }
    return n;
}

/* reflect: the whole input, as the host submitted it, is the response. */
static void run_reflect(outpost_model *m, outpost_request *req)
{
    const outpost_host_api *h = m->host;
    size_t len;
    const char *body = h->request_body(req, &len);
    if (h->request_stream(req) && emit(m, req, body, len) != 0) {
        complete_error(m, req, h->error_new(OUTPOST_ERR_CANCELLED, "request cancelled"));
        return;
    }
    json_t *result = json_pack("{s:s%, s:{s:i, s:i, s:i}, s:s}", "response", body, len, "usage",
                               "prompt_tokens", 1, "completion_tokens", 1, "total_tokens", 2,
                               "finish_reason", "stop");
    if (!result) {
        complete_error(m, req, h->error_new(OUTPOST_ERR_INTERNAL, "out of memory"));
        return;
    }
    complete_json(m, req, result);
}

static void run_generation(outpost_model *m, outpost_request *req, json_t *in,
                           uint64_t submit_ns)
{
    const outpost_host_api *h = m->host;
    const char *text = NULL;
    long max_tokens;
    outpost_error *e = generation_input(h, in, &text, &max_tokens);
    if (e) {
        complete_error(m, req, e);
        return;
    }
    if (m->reflect) {
        run_reflect(m, req);
        return;
    }
    long prompt_tokens = count_words(text);
    report(m, OUTPOST_METRIC_PROMPT_TOKENS, (double)prompt_tokens);
    report(m, OUTPOST_METRIC_KV_USED_TOKENS, (double)prompt_tokens);
    uint64_t last_ns = 0;
    int stream = h->request_stream(req);
    size_t cap = strlen(text) + 1;
    char *response = malloc(cap);
    char *piece = malloc(cap + 1);
    if (!response || !piece) {
        free(response);
        free(piece);
        complete_error(m, req, h->error_new(OUTPOST_ERR_INTERNAL, "out of memory"));
        return;
    }
    size_t used = 0;
    long generated = 0;
    const char *p = text;
    while (generated < max_tokens) {
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
            p++;
        if (!*p)
            break;
        const char *w = p;
        while (*p && *p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
            p++;
        if (pause_word(m, req))
            goto cancelled;
        /* A piece is " word" after the first, so pieces concatenate to the
         * response. */
        size_t n = 0;
        if (generated > 0)
            piece[n++] = ' ';
        memcpy(piece + n, w, (size_t)(p - w));
        n += (size_t)(p - w);
        memcpy(response + used, piece, n);
        used += n;
        generated++;
        /* One decode step: a batch of one, a token, its latency. */
        uint64_t t = now_ns();
        report(m, OUTPOST_METRIC_BATCH_SIZE, 1);
        report(m, OUTPOST_METRIC_GENERATED_TOKENS, 1);
        report(m, OUTPOST_METRIC_KV_USED_TOKENS, (double)(prompt_tokens + generated));
        if (generated == 1)
            report(m, OUTPOST_METRIC_TTFT_SECONDS, (double)(t - submit_ns) / 1e9);
        else
            report(m, OUTPOST_METRIC_ITL_SECONDS, (double)(t - last_ns) / 1e9);
        last_ns = t;
        if (stream && emit(m, req, piece, n) != 0)
            goto cancelled;
    }
    /* Stopped by max_tokens with words left: "length", as OpenAI says it. */
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    const char *finish = *p ? "length" : "stop";
    if (stream && m->cut_utf8_end && h->request_emit(req, "\xc3", 1) != 0)
        goto cancelled;
    response[used] = '\0';
    json_t *result = json_pack("{s:s, s:{s:I, s:I, s:I}, s:s}", "response", response, "usage",
                               "prompt_tokens", (json_int_t)prompt_tokens, "completion_tokens",
                               (json_int_t)generated, "total_tokens",
                               (json_int_t)(prompt_tokens + generated), "finish_reason", finish);
    free(response);
    free(piece);
    if (!result) {
        complete_error(m, req, h->error_new(OUTPOST_ERR_INTERNAL, "out of memory"));
        return;
    }
    complete_json(m, req, result);
    return;
cancelled:
    free(response);
    free(piece);
    complete_error(m, req, h->error_new(OUTPOST_ERR_CANCELLED, "request cancelled"));
}

/* ======================================================================== */
/* Embeddings                                                                */
/* ======================================================================== */

static uint64_t fnv1a(const char *s, uint64_t seed)
{
    uint64_t h = 1469598103934665603ULL ^ seed;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

/* A unit vector of dim values that depends only on the text. */
static json_t *embed(const char *text, long dim)
{
    double norm = 0;
    for (long i = 0; i < dim; i++) {
        double v = (double)(fnv1a(text, (uint64_t)i * 0x9E3779B97F4A7C15ULL) % 2001) / 1000.0 - 1.0;
        norm += v * v;
    }
    norm = norm > 0 ? sqrt(norm) : 1;
    json_t *row = json_array();
    for (long i = 0; i < dim; i++) {
        double v = (double)(fnv1a(text, (uint64_t)i * 0x9E3779B97F4A7C15ULL) % 2001) / 1000.0 - 1.0;
        json_array_append_new(row, json_real(v / norm));
    }
    return row;
}

static void run_embeddings(outpost_model *m, outpost_request *req, json_t *in)
{
    const outpost_host_api *h = m->host;
    json_t *text = json_object_get(in, "text");
    if (!text) {
        complete_error(m, req, h->error_new(OUTPOST_ERR_INVALID_ARGUMENT, "'text' is required"));
        return;
    }
    json_t *texts = json_is_string(text) ? json_pack("[O]", text) : json_incref(text);
    if (!json_is_array(texts) || json_array_size(texts) == 0) {
        json_decref(texts);
        complete_error(m, req,
                       h->error_new(OUTPOST_ERR_INVALID_ARGUMENT,
                                    "'text' must be a string or a non-empty array of strings"));
        return;
    }
    json_t *data = json_array();
    size_t i;
    json_t *t;
    long tokens = 0;
    json_array_foreach(texts, i, t) {
        if (!json_is_string(t)) {
            json_decref(data);
            json_decref(texts);
            complete_error(m, req,
                           errorf(h, OUTPOST_ERR_INVALID_ARGUMENT, "'text[%zu]' must be a string", i));
            return;
        }
        json_array_append_new(data, embed(json_string_value(t), m->dimensions));
        tokens += count_words(json_string_value(t));
    }
    report(m, OUTPOST_METRIC_BATCH_SIZE, (double)json_array_size(texts));
    report(m, OUTPOST_METRIC_PROMPT_TOKENS, (double)tokens);
    json_t *result = json_pack("{s:[I,I], s:o, s:s, s:{s:I, s:I}}", "shape",
                               (json_int_t)json_array_size(texts), (json_int_t)m->dimensions,
                               "data", data, "pooling", "mean", "usage", "prompt_tokens",
                               (json_int_t)tokens, "total_tokens", (json_int_t)tokens);
    json_decref(texts);
    if (!result) {
        complete_error(m, req, h->error_new(OUTPOST_ERR_INTERNAL, "out of memory"));
        return;
    }
    complete_json(m, req, result);
}

/* ======================================================================== */
/* Worker                                                                    */
/* ======================================================================== */

static void run_request(outpost_model *m, outpost_request *req, bool cancelled_in_queue,
                        uint64_t submit_ns)
{
    if (cancelled_in_queue || m->host->request_cancelled(req)) {
        complete_error(m, req, m->host->error_new(OUTPOST_ERR_CANCELLED, "request cancelled"));
        return;
    }
    size_t len;
    const char *body = m->host->request_body(req, &len);
    json_error_t jerr;
    json_t *in = json_loadb(body, len, 0, &jerr);
    if (!json_is_object(in)) {
        json_decref(in);
        complete_error(m, req, m->host->error_new(OUTPOST_ERR_INVALID_ARGUMENT,
                                                  "input must be a JSON object"));
        return;
    }
    if (m->embeddings)
        run_embeddings(m, req, in);
    else
        run_generation(m, req, in, submit_ns);
    json_decref(in);
}

static void *worker_main(void *arg)
{
    outpost_model *m = arg;
    pthread_mutex_lock(&m->mu);
    for (;;) {
        while (!m->head && !m->stop)
            pthread_cond_wait(&m->cv, &m->mu);
        if (!m->head)
            break; /* stop, and nothing left */
        echo_item *it = m->head;
        m->head = it->next;
        if (!m->head)
            m->tail = NULL;
        m->queued--;
        m->current = it->req;
        m->current_cancelled = false;
        report(m, OUTPOST_METRIC_QUEUE_DEPTH, (double)m->queued);
        pthread_mutex_unlock(&m->mu);

        report(m, OUTPOST_METRIC_RUNNING, 1);
        report(m, OUTPOST_METRIC_QUEUE_WAIT_SECONDS, (double)(now_ns() - it->submit_ns) / 1e9);
        run_request(m, it->req, it->cancelled, it->submit_ns);
        report(m, OUTPOST_METRIC_RUNNING, 0);
        report(m, OUTPOST_METRIC_KV_USED_TOKENS, 0);
        free(it);

        pthread_mutex_lock(&m->mu);
        m->current = NULL;
    }
    pthread_mutex_unlock(&m->mu);
    return NULL;
}

/* ======================================================================== */
/* Plugin entry points                                                       */
/* ======================================================================== */

static outpost_error *echo_init(const outpost_host_api *host, outpost_plugin_state **state)
{
    outpost_plugin_state *s = calloc(1, sizeof(*s));
    if (!s)
        return host->error_new(OUTPOST_ERR_INTERNAL, "out of memory");
    s->host = host;
    *state = s;
    host->log(host, OUTPOST_LOG_DEBUG, "echo.init", "echo plugin ready");
    return NULL;
}

static void echo_fini(outpost_plugin_state *state)
{
    free(state);
}

static outpost_error *parse_long(const outpost_host_api *h, const outpost_option *o, long min,
                                 long *out)
{
    char *end;
    errno = 0;
    long v = strtol(o->value ? o->value : "", &end, 10);
    if (errno || end == o->value || *end || v < min)
        return errorf(h, OUTPOST_ERR_INVALID_ARGUMENT, "option '%s' must be an integer >= %ld, got '%s'",
                      o->key, min, o->value ? o->value : "");
    *out = v;
    return NULL;
}

static outpost_error *parse_options(const outpost_host_api *h, const outpost_model_config *cfg,
                                    outpost_model *m)
{
    for (size_t i = 0; i < cfg->n_options; i++) {
        const outpost_option *o = &cfg->options[i];
        outpost_error *e = NULL;
        if (strcmp(o->key, "delay_ms") == 0) {
            e = parse_long(h, o, 0, &m->delay_ms);
        } else if (strcmp(o->key, "max_queue") == 0) {
            e = parse_long(h, o, 1, &m->max_queue);
        } else if (strcmp(o->key, "dimensions") == 0) {
            e = parse_long(h, o, 1, &m->dimensions);
            if (!e && m->dimensions > 4096)
                e = errorf(h, OUTPOST_ERR_INVALID_ARGUMENT, "option 'dimensions' must be <= 4096");
        } else if (strcmp(o->key, "hide_dimensions") == 0 || strcmp(o->key, "reflect") == 0 ||
                   strcmp(o->key, "split_utf8") == 0 || strcmp(o->key, "cut_utf8_end") == 0) {
            long v = 0;
            e = parse_long(h, o, 0, &v);
            bool on = v != 0;
            if (o->key[0] == 'h')
                m->hide_dimensions = on;
            else if (o->key[0] == 'r')
                m->reflect = on;
            else if (o->key[0] == 's')
                m->split_utf8 = on;
            else
                m->cut_utf8_end = on;
        } else if (strcmp(o->key, "misbehave") == 0) {
            static const char *const modes[] = {"", "double_complete", "emit_after_complete",
                                                "bad_json", "no_result"};
            m->misbehave = ECHO_OK;
            for (int k = 1; k < 5; k++) {
                if (o->value && strcmp(o->value, modes[k]) == 0)
                    m->misbehave = (echo_misbehave)k;
            }
            if (m->misbehave == ECHO_OK)
                e = errorf(h, OUTPOST_ERR_INVALID_ARGUMENT, "unknown misbehave mode '%s'",
                           o->value ? o->value : "");
        } else {
            e = errorf(h, OUTPOST_ERR_INVALID_ARGUMENT,
                       /* The test options (dimensions, reflect, ...) stay out of
                        * the message: tests/unit/test_plugins.c checks it. */
                       "unknown option '%s' (echo supports delay_ms, max_queue, misbehave)",
                       o->key);
        }
        if (e)
            return e;
    }
    return NULL;
}

static outpost_error *echo_model_load(outpost_plugin_state *state, const outpost_model_config *cfg,
                                      const outpost_device *dev, outpost_model **model,
                                      outpost_model_info *info)
{
    const outpost_host_api *h = state->host;
    if (dev->kind != OUTPOST_DEVICE_CPU)
        return h->error_new(OUTPOST_ERR_UNSUPPORTED, "echo runs on the CPU only");
    outpost_model *m = calloc(1, sizeof(*m));
    if (!m)
        return h->error_new(OUTPOST_ERR_INTERNAL, "out of memory");
    m->host = h;
    m->embeddings = strcmp(cfg->task, OUTPOST_TASK_TEXT_EMBEDDINGS) == 0;
    m->max_queue = 64;
    m->dimensions = ECHO_DIM;
#ifndef ECHO_ABI_V0
    /* Both sides must know minor 1: the host's table has model_metric and
     * its config has host_model. */
    if (h->struct_size >= offsetof(outpost_host_api, model_metric) + sizeof(h->model_metric) &&
        h->model_metric &&
        cfg->struct_size >= offsetof(outpost_model_config, host_model) + sizeof(cfg->host_model))
        m->hm = cfg->host_model;
#endif
    outpost_error *e = parse_options(h, cfg, m);
    if (e) {
        free(m);
        return e;
    }
    pthread_mutex_init(&m->mu, NULL);
    pthread_cond_init(&m->cv, NULL);
    if (pthread_create(&m->worker, NULL, worker_main, m) != 0) {
        pthread_cond_destroy(&m->cv);
        pthread_mutex_destroy(&m->mu);
        free(m);
        return h->error_new(OUTPOST_ERR_UNAVAILABLE, "cannot start the echo worker thread");
    }
    info->description = m->embeddings ? "Echo test embedder (4 dimensions)"
                                      : "Echo test generator (repeats the prompt)";
    info->context_window = ECHO_CONTEXT;
    info->dimensions = m->embeddings && !m->hide_dimensions ? m->dimensions : 0;
    info->max_batch = 1;
    info->max_queue = m->max_queue;
    report(m, OUTPOST_METRIC_KV_CAPACITY_TOKENS, m->embeddings ? 0 : ECHO_CONTEXT);
    report(m, OUTPOST_METRIC_QUEUE_DEPTH, 0);
    report(m, OUTPOST_METRIC_RUNNING, 0);
    *model = m;
    return NULL;
}

static void echo_model_unload(outpost_model *m)
{
    pthread_mutex_lock(&m->mu);
    m->stop = true;
    pthread_cond_broadcast(&m->cv);
    pthread_mutex_unlock(&m->mu);
    pthread_join(m->worker, NULL);
    pthread_cond_destroy(&m->cv);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

/* Deliberate ABI misuse, completing on the caller's thread. */
static void misbehave(outpost_model *m, outpost_request *req)
{
    const outpost_host_api *h = m->host;
    static const char ok[] = "{\"response\":\"x\"}";
    switch (m->misbehave) {
    case ECHO_DOUBLE_COMPLETE:
        h->request_complete(req, ok, strlen(ok), NULL);
        h->request_complete(req, ok, strlen(ok), h->error_new(OUTPOST_ERR_INTERNAL, "again"));
        break;
    case ECHO_EMIT_AFTER_COMPLETE:
        h->request_complete(req, ok, strlen(ok), NULL);
        h->request_emit(req, "late", 4);
        break;
    case ECHO_BAD_JSON:
        h->request_complete(req, "{\"response\":", 12, NULL);
        break;
    case ECHO_NO_RESULT:
        h->request_complete(req, NULL, 0, NULL);
        break;
    case ECHO_OK:
        break;
    }
}

static outpost_error *echo_submit(outpost_model *m, outpost_request *const *reqs, size_t n)
{
    if (m->misbehave != ECHO_OK) {
        for (size_t i = 0; i < n; i++)
            misbehave(m, reqs[i]);
        return NULL;
    }
    /* Allocate first: either every request of the batch is queued or none. */
    echo_item **items = calloc(n ? n : 1, sizeof(*items));
    bool oom = !items;
    for (size_t i = 0; !oom && i < n; i++)
        oom = !(items[i] = calloc(1, sizeof(echo_item)));
    if (oom) {
        for (size_t i = 0; items && i < n; i++)
            free(items[i]);
        free(items);
        return m->host->error_new(OUTPOST_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    pthread_mutex_lock(&m->mu);
    if (m->queued + (long)n > m->max_queue) {
        pthread_mutex_unlock(&m->mu);
        for (size_t i = 0; i < n; i++)
            free(items[i]);
        free(items);
        return errorf(m->host, OUTPOST_ERR_RESOURCE_EXHAUSTED, "echo queue is full (%ld requests)",
                      m->max_queue);
    }
    uint64_t t = now_ns();
    for (size_t i = 0; i < n; i++) {
        items[i]->req = reqs[i];
        items[i]->submit_ns = t;
        if (m->tail)
            m->tail->next = items[i];
        else
            m->head = items[i];
        m->tail = items[i];
    }
    m->queued += (long)n;
    report(m, OUTPOST_METRIC_QUEUE_DEPTH, (double)m->queued);
    pthread_cond_broadcast(&m->cv);
    pthread_mutex_unlock(&m->mu);
    free(items);
    return NULL;
}

static void echo_cancel(outpost_model *m, outpost_request *req)
{
    /* Only compares the address: req may have completed concurrently. */
    pthread_mutex_lock(&m->mu);
    if (m->current == req) {
        m->current_cancelled = true;
    } else {
        for (echo_item *it = m->head; it; it = it->next) {
            if (it->req == req)
                it->cancelled = true;
        }
    }
    pthread_cond_broadcast(&m->cv);
    pthread_mutex_unlock(&m->mu);
}

#ifndef ECHO_ABI_V0
/* The tokens a request amounts to: the words it would echo (generation) or
 * embed (embeddings), the same number its usage.prompt_tokens reports. Runs
 * on an HTTP thread and touches nothing shared. */
static int echo_count_tokens(outpost_model *m, const char *body, size_t len, int64_t *tokens)
{
    json_t *in = json_loadb(body, len, 0, NULL);
    int rc = -1;
    if (json_is_object(in)) {
        if (m->embeddings) {
            json_t *text = json_object_get(in, "text");
            json_t *texts = json_is_string(text) ? json_pack("[O]", text) : json_incref(text);
            if (json_is_array(texts)) {
                int64_t n = 0;
                size_t i;
                json_t *t;
                rc = 0;
                json_array_foreach(texts, i, t) {
                    if (!json_is_string(t))
                        rc = -1;
                    else
                        n += count_words(json_string_value(t));
                }
                *tokens = n;
            }
            json_decref(texts);
        } else {
            const char *text = NULL;
            long max_tokens;
            outpost_error *e = generation_input(m->host, in, &text, &max_tokens);
            if (e) {
                m->host->error_free(e);
            } else {
                *tokens = count_words(text);
                rc = 0;
            }
        }
    }
    json_decref(in);
    return rc;
}
#else
/* A minor-0 plugin has no count_tokens: what lies past its descriptor's
 * struct_size is not its to define. This one puts a function there that
 * answers an absurd count, so a host that reads past struct_size (or
 * ignores abi_minor) is caught by the count it passes on. */
static int echo_v0_past_the_end(outpost_model *m, const char *body, size_t len, int64_t *tokens)
{
    (void)m, (void)body, (void)len;
    *tokens = 999999;
    return 0;
}
#endif

static const char *const echo_tasks[] = {OUTPOST_TASK_TEXT_GENERATION, OUTPOST_TASK_TEXT_EMBEDDINGS,
                                         NULL};

static const outpost_plugin echo_plugin = {
    .abi_major = OUTPOST_PLUGIN_ABI_MAJOR,
#ifdef ECHO_ABI_V0
    /* As a plugin built against minor 0 would be: it knows no field past
     * cancel, and says so with its minor and its descriptor size. */
    .abi_minor = 0,
    .struct_size = OUTPOST_PLUGIN_SIZE_V1_0,
#else
    .abi_minor = OUTPOST_PLUGIN_ABI_MINOR,
    .struct_size = sizeof(outpost_plugin),
#endif
    .build_signature = OUTPOST_PLUGIN_BUILD_SIGNATURE,
    .name = ECHO_NAME,
    .version = "1.0.0",
    .tasks = echo_tasks,
    .init = echo_init,
    .fini = echo_fini,
    .model_load = echo_model_load,
    .model_unload = echo_model_unload,
    .submit = echo_submit,
    .cancel = echo_cancel,
#ifndef ECHO_ABI_V0
    .count_tokens = echo_count_tokens,
#else
    .count_tokens = echo_v0_past_the_end,
#endif
};

OUTPOST_PLUGIN_DEFINE(echo_plugin)
