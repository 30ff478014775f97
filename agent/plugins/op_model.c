/*
 * op_model.c: model instances and the inference-request lifecycle, including
 * the request half of the host API table (accessors, emit, complete).
 *
 * Request state machine: submitted → completed, once. `completed` is written
 * under r->mu so that exactly one of {request_complete, a refused submit}
 * wins; cancel reads it under the same lock to decide whether the plugin may
 * still see the request, and takes its own model ref so that cancel() never
 * runs on an unloaded model.
 */
#include "plugins/op_plugins_internal.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "drivers/cpu/drv_cpu.h"
#include "platform/pl_log.h"
#include "platform/pl_time.h"

#define N_CODES 9 /* 0 (ok) .. OUTPOST_ERR_DEADLINE_EXCEEDED */

static void errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void errf(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int clamp_code(int code)
{
    return code >= OUTPOST_ERR_INTERNAL && code <= OUTPOST_ERR_DEADLINE_EXCEEDED
               ? code
               : OUTPOST_ERR_INTERNAL;
}

/* ======================================================================== */
/* Metrics                                                                   */
/* ======================================================================== */

static op_metric_child *load_failures(const char *model)
{
    static const char *const labels[] = {"model", NULL};
    op_metric *f = op_metric_counter("outpost_model_load_failures_total",
                                     "Model loads that failed, by model id.", labels);
    return op_metric_with(f, model);
}

static op_metric_child *models_loaded(void)
{
    return op_metric_child_get(
        op_metric_gauge("outpost_models_loaded", "Model instances currently loaded.", NULL), NULL);
}

static void model_metrics(op_model *m)
{
    static const char *const model_code[] = {"model", "code", NULL};
    static const char *const model_only[] = {"model", NULL};
    op_metric *req = op_metric_counter("outpost_inference_requests_total",
                                       "Inference requests finished, by model and outcome code.",
                                       model_code);
    for (int c = 0; c < N_CODES; c++)
        m->m_requests[c] = op_metric_with(req, m->id, op_error_code_name(c));
    m->m_in_flight = op_metric_with(
        op_metric_gauge("outpost_inference_in_flight",
                        "Inference requests submitted and not yet completed.", model_only),
        m->id);
    m->m_duration = op_metric_with(
        op_metric_histogram("outpost_inference_duration_seconds",
                            "Inference request time from submit to completion.", model_only,
                            NULL, 0),
        m->id);
}

/* The series of host->model_metric(), by outpost_model_metric id. Buckets
 * are chosen per quantity: batch sizes in powers of two, time to first
 * token from a millisecond to a minute, inter-token latency in milliseconds
 * up to two seconds. Names and meaning: docs/metrics.md. */
static const double BATCH_BUCKETS[] = {1, 2, 4, 8, 16, 32, 64, 128, 256};
static const double TTFT_BUCKETS[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                      0.5,   1,      2.5,   5,    10,    30,   60};
static const double ITL_BUCKETS[] = {0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02,
                                     0.025, 0.03,   0.04,  0.05,   0.075, 0.1, 0.15,
                                     0.2,   0.3,    0.5,   0.75,   1,     2};

typedef struct plugin_metric_def {
    outpost_model_metric id;
    op_metric_type type;
    const char *name;
    const char *help;
    const double *buckets; /* histograms; NULL = the default seconds buckets */
    size_t n_buckets;
} plugin_metric_def;

#define NB(a) (sizeof(a) / sizeof((a)[0]))
static const plugin_metric_def PLUGIN_METRICS[] = {
    {OUTPOST_METRIC_QUEUE_DEPTH, OP_METRIC_GAUGE, "outpost_inference_queue_depth",
     "Requests accepted by the model's plugin and waiting to start, as it last reported.", NULL,
     0},
    {OUTPOST_METRIC_RUNNING, OP_METRIC_GAUGE, "outpost_inference_running",
     "Requests the model's plugin is computing now, as it last reported.", NULL, 0},
    {OUTPOST_METRIC_KV_USED_TOKENS, OP_METRIC_GAUGE, "outpost_llm_kv_cache_used_tokens",
     "KV cache positions in use or reserved, as the plugin last reported.", NULL, 0},
    {OUTPOST_METRIC_KV_CAPACITY_TOKENS, OP_METRIC_GAUGE, "outpost_llm_kv_cache_capacity_tokens",
     "KV cache positions in all, as the plugin last reported.", NULL, 0},
    {OUTPOST_METRIC_BATCH_SIZE, OP_METRIC_HISTOGRAM, "outpost_inference_batch_size",
     "Requests computed together in one step of the model.", BATCH_BUCKETS, NB(BATCH_BUCKETS)},
    {OUTPOST_METRIC_QUEUE_WAIT_SECONDS, OP_METRIC_HISTOGRAM,
     "outpost_inference_queue_wait_seconds",
     "Time from submit to the start of a request's computation.", NULL, 0},
    {OUTPOST_METRIC_TTFT_SECONDS, OP_METRIC_HISTOGRAM, "outpost_llm_time_to_first_token_seconds",
     "Time from submit to a request's first generated token.", TTFT_BUCKETS, NB(TTFT_BUCKETS)},
    {OUTPOST_METRIC_ITL_SECONDS, OP_METRIC_HISTOGRAM, "outpost_llm_inter_token_latency_seconds",
     "Time between two generated tokens of one request.", ITL_BUCKETS, NB(ITL_BUCKETS)},
    {OUTPOST_METRIC_PROMPT_TOKENS, OP_METRIC_COUNTER, "outpost_inference_prompt_tokens_total",
     "Input tokens processed (prompts, texts embedded).", NULL, 0},
    {OUTPOST_METRIC_GENERATED_TOKENS, OP_METRIC_COUNTER, "outpost_llm_generated_tokens_total",
     "Output tokens generated.", NULL, 0},
};
#undef NB

/* Caches m's children of the model_metric() families. Runs before the
 * plugin's model_load(), which may already report (the KV capacity). A
 * plugin older than minor 1 cannot report, and only a text generator has a
 * KV cache and tokens to time: no series is made that could only ever read
 * 0 (reports for a family the model has no series in are dropped). */
static void plugin_metrics(op_model *m, const op_plugin *p)
{
    static const char *const model_only[] = {"model", NULL};
    if (p->desc->abi_minor < 1)
        return;
    bool llm = strcmp(m->task, OUTPOST_TASK_TEXT_GENERATION) == 0;
    for (size_t i = 0; i < sizeof(PLUGIN_METRICS) / sizeof(PLUGIN_METRICS[0]); i++) {
        const plugin_metric_def *d = &PLUGIN_METRICS[i];
        if (!llm && strncmp(d->name, "outpost_llm_", 12) == 0)
            continue;
        op_metric *f = NULL;
        switch (d->type) {
        case OP_METRIC_GAUGE: f = op_metric_gauge(d->name, d->help, model_only); break;
        case OP_METRIC_COUNTER: f = op_metric_counter(d->name, d->help, model_only); break;
        case OP_METRIC_HISTOGRAM:
            f = op_metric_histogram(d->name, d->help, model_only, d->buckets, d->n_buckets);
            break;
        }
        m->m_plugin[d->id] = op_metric_with(f, m->id);
    }
}

void op_host_model_metric(outpost_host_model *hm, outpost_model_metric metric, double value)
{
    /* Every reported quantity is a finite count or duration >= 0: anything
     * else is a plugin bug that must not poison a series (a NaN or an
     * infinity in a histogram's _sum stays there for good). */
    if (!hm || (int)metric < 1 || (int)metric > OP_MODEL_METRIC_MAX || !isfinite(value) ||
        value < 0)
        return;
    op_metric_child *c = ((op_model *)(void *)hm)->m_plugin[metric];
    switch (metric) {
    case OUTPOST_METRIC_QUEUE_DEPTH:
    case OUTPOST_METRIC_RUNNING:
    case OUTPOST_METRIC_KV_USED_TOKENS:
    case OUTPOST_METRIC_KV_CAPACITY_TOKENS: op_gauge_set(c, value); break;
    case OUTPOST_METRIC_BATCH_SIZE:
    case OUTPOST_METRIC_QUEUE_WAIT_SECONDS:
    case OUTPOST_METRIC_TTFT_SECONDS:
    case OUTPOST_METRIC_ITL_SECONDS: op_histogram_observe(c, value); break;
    case OUTPOST_METRIC_PROMPT_TOKENS:
    case OUTPOST_METRIC_GENERATED_TOKENS: op_counter_add(c, value); break;
    }
}

/* ======================================================================== */
/* Models                                                                    */
/* ======================================================================== */

static void model_destroy(op_reap_node *node)
{
    op_model *m = (op_model *)((char *)node - offsetof(op_model, reap));
    if (m->pm)
        m->plugin->desc->model_unload(m->pm);
    op_gauge_add(models_loaded(), -1);
    PL_LOG_INFO("model.unloaded", "model", m->id, "plugin", m->plugin->desc->name);
    op_plugin_set_unref(m->set);
    free(m->id);
    free(m->task);
    free(m->description);
    free(m);
}

int op_model_load(op_plugin_set *set, const op_config_model *cfg, int cpu_threads, op_model **out,
                  char *err, size_t errlen)
{
    *out = NULL;
    const char *id = cfg && cfg->id ? cfg->id : "(unnamed)";
    if (!set || !cfg || !cfg->id || !cfg->plugin || !cfg->task) {
        errf(err, errlen, "model '%s': id, plugin and task are required", id);
        op_counter_inc(load_failures(id));
        return -1;
    }
    op_plugin *p = op_plugins_find(set, cfg->plugin);
    if (!p) {
        errf(err, errlen, "model '%s': plugin '%s' not found", id, cfg->plugin);
        op_counter_inc(load_failures(id));
        return -1;
    }
    if (!op_plugin_serves_task(p, cfg->task)) {
        errf(err, errlen, "model '%s': plugin '%s' does not serve task '%s'", id, cfg->plugin,
             cfg->task);
        op_counter_inc(load_failures(id));
        return -1;
    }

    op_model *m = calloc(1, sizeof(*m));
    outpost_option *opts = cfg->n_options ? calloc(cfg->n_options, sizeof(*opts)) : NULL;
    if (!m || (cfg->n_options && !opts) || !(m->id = strdup(cfg->id)) ||
        !(m->task = strdup(cfg->task))) {
        if (m) {
            free(m->id);
            free(m);
        }
        free(opts);
        errf(err, errlen, "model '%s': out of memory", id);
        op_counter_inc(load_failures(id));
        return -1;
    }
    for (size_t i = 0; i < cfg->n_options; i++)
        opts[i] = (outpost_option){cfg->options[i].key, cfg->options[i].value};

    if (cpu_threads <= 0) {
        const drv_cpu_info *cpu = drv_cpu_probe();
        cpu_threads = cpu && cpu->cores > 0 ? cpu->cores : 1;
    }
    outpost_device dev = {
        .struct_size = (uint32_t)sizeof(dev),
        .kind = OUTPOST_DEVICE_CPU,
        .index = 0,
        .threads = cpu_threads,
        .name = "cpu",
    };
    /* The plugin may report metrics from inside model_load(). */
    plugin_metrics(m, p);
    outpost_model_config mc = {
        .struct_size = (uint32_t)sizeof(mc),
        .id = cfg->id,
        .task = cfg->task,
        .path = cfg->path,
        .options = opts,
        .n_options = cfg->n_options,
        .host_model = (outpost_host_model *)(void *)m,
    };
    outpost_model_info info;
    memset(&info, 0, sizeof(info));
    info.struct_size = (uint32_t)sizeof(info);

    outpost_model *pm = NULL;
    outpost_error *e = p->desc->model_load(p->state, &mc, &dev, &pm, &info);
    free(opts);
    if (!e && !pm)
        e = op_error_new(OUTPOST_ERR_INTERNAL, "the plugin returned no model");
    if (e) {
        errf(err, errlen, "model '%s': %s", id, op_error_message(e));
        op_error_free(e);
        free(m->id);
        free(m->task);
        free(m);
        op_counter_inc(load_failures(id));
        return -1;
    }

    const char *desc = cfg->description ? cfg->description : info.description;
    if (desc && !(m->description = strdup(desc))) {
        p->desc->model_unload(pm);
        errf(err, errlen, "model '%s': out of memory", id);
        free(m->id);
        free(m->task);
        free(m);
        op_counter_inc(load_failures(id));
        return -1;
    }
    m->info = info;
    m->info.struct_size = (uint32_t)sizeof(m->info);
    m->info.description = m->description;
    atomic_init(&m->refs, 1);
    m->set = set;
    op_plugin_set_ref(set);
    m->plugin = p;
    m->pm = pm;
    m->reap.fn = model_destroy;
    model_metrics(m);
    op_gauge_add(models_loaded(), 1);

    char threads[16];
    snprintf(threads, sizeof(threads), "%d", cpu_threads);
    PL_LOG_INFO("model.loaded", "model", m->id, "plugin", p->desc->name, "task", m->task,
                "device", "cpu", "threads", threads);
    *out = m;
    return 0;
}

void op_model_ref(op_model *m)
{
    if (m)
        atomic_fetch_add(&m->refs, 1);
}

void op_model_unref(op_model *m)
{
    if (m && atomic_fetch_sub(&m->refs, 1) == 1)
        op_plugins_teardown(&m->reap);
}

const char *op_model_id(const op_model *m)
{
    return m->id;
}

const char *op_model_task(const op_model *m)
{
    return m->task;
}

const char *op_model_plugin_name(const op_model *m)
{
    return m->plugin->desc->name;
}

const outpost_model_info *op_model_info(const op_model *m)
{
    return &m->info;
}

int op_model_count_tokens(op_model *m, const char *body, size_t len, long long *tokens)
{
    if (!m || !body || !tokens || !m->plugin->count_tokens)
        return -1;
    int64_t n = -1;
    if (m->plugin->count_tokens(m->pm, body, len, &n) != 0 || n < 0)
        return -1;
    *tokens = (long long)n;
    return 0;
}

/* ======================================================================== */
/* Requests                                                                  */
/* ======================================================================== */

/* outpost_request is never defined: the handle is the op_infer itself. */
static op_infer *R(const outpost_request *req)
{
    return (op_infer *)(uintptr_t)req;
}

static void infer_free(op_infer *r)
{
    pthread_mutex_destroy(&r->mu);
    free(r->model_id);
    free(r->task);
    free(r->body);
    free(r);
}

static void infer_unref(op_infer *r)
{
    if (atomic_fetch_sub(&r->refs, 1) == 1)
        infer_free(r);
}

static void finish_metrics(op_model *m, int code, uint64_t start_ns)
{
    op_counter_inc(m->m_requests[code]);
    op_gauge_add(m->m_in_flight, -1);
    uint64_t now = pl_time_mono_ns();
    op_histogram_observe(m->m_duration, (double)(now - start_ns) / 1e9);
}

int op_infer_submit(op_model *m, const char *model_id, const char *task, const char *body,
                    size_t len, int stream, const op_infer_callbacks *cb, op_infer **out,
                    char *err, size_t errlen)
{
    *out = NULL;
    if (!m || !cb || !cb->on_complete || (!body && len)) {
        errf(err, errlen, "internal error: bad inference request");
        return OUTPOST_ERR_INTERNAL;
    }
    op_infer *r = calloc(1, sizeof(*r));
    if (!r) {
        errf(err, errlen, "out of memory");
        return OUTPOST_ERR_INTERNAL;
    }
    r->model_id = strdup(model_id ? model_id : m->id);
    r->task = strdup(task ? task : m->task);
    r->body = malloc(len + 1);
    if (!r->model_id || !r->task || !r->body || pthread_mutex_init(&r->mu, NULL) != 0) {
        free(r->model_id);
        free(r->task);
        free(r->body);
        free(r);
        errf(err, errlen, "out of memory");
        return OUTPOST_ERR_INTERNAL;
    }
    if (len)
        memcpy(r->body, body, len);
    r->body[len] = '\0';
    r->len = len;
    r->stream = stream ? 1 : 0;
    r->cb = *cb;
    atomic_init(&r->refs, 2);
    atomic_init(&r->done, false);
    atomic_init(&r->cancelled, false);
    op_model_ref(m);
    r->model = m;
    r->start_ns = pl_time_mono_ns();
    op_gauge_add(m->m_in_flight, 1);

    outpost_request *req = (outpost_request *)r;
    outpost_error *e = m->plugin->desc->submit(m->pm, &req, 1);
    if (!e) {
        *out = r;
        return 0;
    }

    pthread_mutex_lock(&r->mu);
    bool already = r->completed;
    r->completed = true;
    atomic_store(&r->done, true);
    pthread_mutex_unlock(&r->mu);
    if (already) {
        /* The plugin completed the request and then refused it: the
         * completion already reached the caller, so the refusal is the bug. */
        PL_LOG_ERROR("plugin.bug", "plugin", m->plugin->desc->name, "model", m->id, "msg",
                     "submit() returned an error for a request it had completed");
        op_error_free(e);
        *out = r;
        return 0;
    }
    int code = clamp_code(op_error_code(e));
    errf(err, errlen, "%s", op_error_message(e));
    op_error_free(e);
    finish_metrics(m, code, r->start_ns);
    r->model = NULL;
    op_model_unref(m);
    infer_free(r);
    return code;
}

void op_infer_cancel(op_infer *r)
{
    if (!r)
        return;
    atomic_store(&r->cancelled, true);
    pthread_mutex_lock(&r->mu);
    if (r->completed || r->cancel_sent) {
        pthread_mutex_unlock(&r->mu);
        return;
    }
    r->cancel_sent = true;
    op_model *m = r->model;
    op_model_ref(m);
    pthread_mutex_unlock(&r->mu);
    /* No lock held: the plugin may complete the request inside cancel(). */
    m->plugin->desc->cancel(m->pm, (outpost_request *)r);
    op_model_unref(m);
}

void op_infer_release(op_infer *r)
{
    if (r)
        infer_unref(r);
}

int op_infer_completed(const op_infer *r)
{
    return r && atomic_load(&((op_infer *)(uintptr_t)r)->done) ? 1 : 0;
}

/* ======================================================================== */
/* Host API: the request half                                                */
/* ======================================================================== */

const char *op_req_model_id(const outpost_request *req)
{
    return req ? R(req)->model_id : "";
}

const char *op_req_task(const outpost_request *req)
{
    return req ? R(req)->task : "";
}

const char *op_req_body(const outpost_request *req, size_t *len)
{
    if (!req) {
        if (len)
            *len = 0;
        return "";
    }
    if (len)
        *len = R(req)->len;
    return R(req)->body;
}

int op_req_stream(const outpost_request *req)
{
    return req ? R(req)->stream : 0;
}

int op_req_cancelled(const outpost_request *req)
{
    return req && atomic_load(&R(req)->cancelled) ? 1 : 0;
}

void op_req_set_user(outpost_request *req, void *user)
{
    if (req)
        R(req)->user = user;
}

void *op_req_user(const outpost_request *req)
{
    return req ? R(req)->user : NULL;
}

static const char *plugin_name_of(const op_infer *r)
{
    return r->model ? r->model->plugin->desc->name : "?";
}

int op_req_emit(outpost_request *req, const char *text, size_t len)
{
    if (!req)
        return -1;
    op_infer *r = R(req);
    if (atomic_load(&r->done)) {
        PL_LOG_ERROR("plugin.bug", "msg", "request_emit() after request_complete()");
        return -1;
    }
    if (atomic_load(&r->cancelled))
        return -1;
    if (!r->stream || !r->cb.on_emit || len == 0)
        return 0;
    if (!text) {
        PL_LOG_ERROR("plugin.bug", "plugin", plugin_name_of(r), "msg",
                     "request_emit() with NULL text");
        return -1;
    }
    /* Hand on whole UTF-8 sequences only; a token is a few bytes, so the
     * stack buffer is the rule and malloc the exception. */
    char small[256];
    size_t cap = len > SIZE_MAX / 4 ? 0 : OP_UTF8_STREAM_CAP(len);
    char *buf = cap && cap <= sizeof(small) ? small : (cap ? malloc(cap) : NULL);
    if (!buf) {
        PL_LOG_ERROR("inference.emit_failed", "model", r->model ? r->model->id : "?", "msg",
                     "out of memory");
        atomic_store(&r->cancelled, true);
        return -1;
    }
    size_t n = op_utf8_stream(&r->utf8_tail, text, len, false, buf);
    int rc = 0;
    if (n > 0) {
        op_plugins_in_host_call++;
        rc = r->cb.on_emit(r->cb.ctx, buf, n);
        op_plugins_in_host_call--;
    }
    if (buf != small)
        free(buf);
    if (rc != 0) {
        atomic_store(&r->cancelled, true);
        return -1;
    }
    return 0;
}

/* A stream that ends inside a UTF-8 sequence: what was held back can no
 * longer be completed, so the client gets U+FFFD for it. */
static void flush_utf8_tail(op_infer *r)
{
    if (!r->stream || !r->cb.on_emit || r->utf8_tail.n == 0 || atomic_load(&r->cancelled))
        return;
    char buf[OP_UTF8_STREAM_CAP(0)];
    size_t n = op_utf8_stream(&r->utf8_tail, NULL, 0, true, buf);
    if (n > 0)
        r->cb.on_emit(r->cb.ctx, buf, n);
}

/* Turns what the plugin gave into (code, message, NUL-terminated result). */
static int completion_outcome(op_infer *r, const char *result_json, size_t len,
                              outpost_error *err, const char **message, char **result)
{
    *message = NULL;
    *result = NULL;
    if (err) {
        *message = op_error_message(err);
        return clamp_code(op_error_code(err));
    }
    const char *bug = NULL;
    json_error_t jerr;
    if (!result_json) {
        bug = "request_complete() without a result or an error";
    } else {
        json_t *j = json_loadb(result_json, len, JSON_DECODE_ANY, &jerr);
        if (!j)
            bug = "request_complete() with a result that is not valid JSON";
        json_decref(j);
    }
    if (bug) {
        PL_LOG_ERROR("plugin.bug", "plugin", plugin_name_of(r), "model", r->model->id, "msg",
                     bug);
        *message = "the model returned an invalid result";
        return OUTPOST_ERR_INTERNAL;
    }
    *result = malloc(len + 1);
    if (!*result) {
        *message = "out of memory";
        return OUTPOST_ERR_INTERNAL;
    }
    memcpy(*result, result_json, len);
    (*result)[len] = '\0';
    return 0;
}

void op_req_complete(outpost_request *req, const char *result_json, size_t len,
                     outpost_error *err)
{
    if (!req) {
        op_error_free(err);
        return;
    }
    op_infer *r = R(req);
    op_plugins_in_host_call++;
    op_plugins_completion_begin();

    pthread_mutex_lock(&r->mu);
    bool twice = r->completed;
    r->completed = true;
    pthread_mutex_unlock(&r->mu);
    if (twice) {
        PL_LOG_ERROR("plugin.bug", "msg", "request_complete() called twice for one request");
        op_error_free(err);
        op_plugins_completion_end();
        op_plugins_in_host_call--;
        return;
    }
    atomic_store(&r->done, true);

    const char *message = NULL;
    char *result = NULL;
    int code = completion_outcome(r, result_json, len, err, &message, &result);
    op_model *m = r->model;
    if (code == 0)
        flush_utf8_tail(r);
    /* Metrics first: whoever sees the completion sees it counted. */
    finish_metrics(m, code, r->start_ns);
    r->cb.on_complete(r->cb.ctx, code ? NULL : result, code ? 0 : len, code, message);
    free(result);
    op_error_free(err);

    /* r->model is only read under r->mu by cancel while !completed, so it
     * may be dropped here without the lock. */
    r->model = NULL;
    op_model_unref(m);
    infer_unref(r);
    op_plugins_completion_end();
    op_plugins_in_host_call--;
}
