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
#include <stdarg.h>
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
    outpost_model_config mc = {
        .struct_size = (uint32_t)sizeof(mc),
        .id = cfg->id,
        .task = cfg->task,
        .path = cfg->path,
        .options = opts,
        .n_options = cfg->n_options,
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
    op_plugins_in_host_call++;
    int rc = r->cb.on_emit(r->cb.ctx, text, len);
    op_plugins_in_host_call--;
    if (rc != 0) {
        atomic_store(&r->cancelled, true);
        return -1;
    }
    return 0;
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
