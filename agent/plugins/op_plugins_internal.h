/*
 * op_plugins_internal: structs and helpers shared by the plugin host's files
 * (op_plugins.c: loading, host API table, reaper; op_model.c: models and
 * requests). Not for use outside agent/plugins/.
 */
#ifndef OP_PLUGINS_INTERNAL_H
#define OP_PLUGINS_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "metrics/op_metrics.h"
#include "plugins/op_plugins.h"
#include "plugins/op_utf8.h"

/* A teardown deferred to the reaper thread (see op_plugins.h, Threading). */
typedef struct op_reap_node {
    struct op_reap_node *next;
    void (*fn)(struct op_reap_node *node);
} op_reap_node;

/* The table one plugin gets; api comes first so the host can find the plugin
 * from the table pointer the plugin passes to log(). */
typedef struct op_host_table {
    outpost_host_api api;
    op_plugin *plugin;
} op_host_table;

struct op_plugin {
    op_plugin_set *set;           /* owner, not a ref */
    void *handle;                 /* dlopen() */
    const outpost_plugin *desc;   /* the plugin's static descriptor */
    outpost_plugin_state *state;  /* from init() */
    char *path;
    op_host_table host;
    /* Optional entries past minor 0, read once at load: NULL when the
     * plugin's abi_minor or struct_size does not cover them (never read a
     * descriptor field past its struct_size: it is not the plugin's). */
    int (*count_tokens)(outpost_model *model, const char *body, size_t len, int64_t *tokens);
};

struct op_plugin_set {
    atomic_int refs;
    op_plugin **plugins;
    size_t n;
    op_plugin_refusal *refusals;  /* path and message owned here */
    size_t n_refusals;
    op_reap_node reap;
};

struct op_error_obj;

/* The per-model series behind host->model_metric() (ABI minor 1), indexed
 * by outpost_model_metric; children cached at load so a report is one
 * atomic update. Slot 0 and ids past OP_MODEL_METRIC_MAX are unused. */
#define OP_MODEL_METRIC_MAX OUTPOST_METRIC_GENERATED_TOKENS

struct op_model {
    atomic_int refs;
    op_plugin_set *set;           /* a ref */
    op_plugin *plugin;
    outpost_model *pm;            /* the plugin's instance */
    char *id;
    char *task;
    char *description;
    outpost_model_info info;      /* description points at the field above */
    op_metric_child *m_requests[9]; /* outpost_inference_requests_total{model,code 0..8} */
    op_metric_child *m_in_flight;
    op_metric_child *m_duration;
    op_metric_child *m_plugin[OP_MODEL_METRIC_MAX + 1]; /* model_metric() series */
    op_reap_node reap;
};

/* outpost_host_model is never defined: the handle a plugin gets in
 * outpost_model_config.host_model is the op_model itself. */

/* The host's outpost_request is an op_infer: the handle the plugin sees is a
 * cast of this struct's address. */
struct op_infer {
    atomic_int refs;              /* caller + one until completion */
    pthread_mutex_t mu;           /* completed, cancel_sent, model hand-off */
    bool completed;
    bool cancel_sent;
    atomic_bool done;             /* mirror of completed for lock-free reads */
    atomic_bool cancelled;        /* request_cancelled() */
    op_model *model;              /* a ref until completion */
    char *model_id;
    char *task;
    char *body;                   /* NUL-terminated copy */
    size_t len;
    int stream;
    op_infer_callbacks cb;
    void *user;                   /* request_set_user() */
    uint64_t start_ns;
    /* Streamed text is handed on only in whole UTF-8 sequences: the start
     * of a sequence cut at the end of a piece waits here for the rest
     * (op_utf8.h). Touched only by emit/complete, which never overlap. */
    op_utf8_tail utf8_tail;
};

/* Fills a per-plugin host API table (op_plugins.c). */
void op_host_table_init(op_host_table *t, op_plugin *p);

/* Nesting depth of host API calls on this thread: > 0 means a plugin called
 * us, so a last unref must go to the reaper. */
extern _Thread_local int op_plugins_in_host_call;

/* Runs node->fn(node) now, or on the reaper thread inside a host API call. */
void op_plugins_teardown(op_reap_node *node);
/* Bracket request_complete(), so op_plugins_drain() also waits for a
 * completion that has called back but not yet dropped its model ref. */
void op_plugins_completion_begin(void);
void op_plugins_completion_end(void);

/* Host API error helpers (op_plugins.c). */
outpost_error *op_error_new(outpost_error_code code, const char *message);
outpost_error_code op_error_code(const outpost_error *err);
const char *op_error_message(const outpost_error *err);
void op_error_free(outpost_error *err);

/* Request accessors and completion (op_model.c), installed in the table. */
const char *op_req_model_id(const outpost_request *req);
const char *op_req_task(const outpost_request *req);
const char *op_req_body(const outpost_request *req, size_t *len);
int op_req_stream(const outpost_request *req);
int op_req_cancelled(const outpost_request *req);
void op_req_set_user(outpost_request *req, void *user);
void *op_req_user(const outpost_request *req);
int op_req_emit(outpost_request *req, const char *text, size_t len);
void op_req_complete(outpost_request *req, const char *result_json, size_t len,
                     outpost_error *err);
/* host->model_metric (op_model.c). */
void op_host_model_metric(outpost_host_model *hm, outpost_model_metric metric, double value);

#endif
