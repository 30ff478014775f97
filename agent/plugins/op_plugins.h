/*
 * op_plugins: the plugin host. It loads model/task plugins (shared libraries
 * behind the ABI of include/outpost/plugin.h), loads model instances with
 * them, and carries inference requests between the HTTP layer and a plugin.
 * The plugin author's side is in docs/plugins.md.
 *
 * Objects (all refcounted, all opaque)
 * - op_plugin_set: every plugin found in the configured dirs, immutable once
 *   loaded (lookups take no lock). The last unref calls each plugin's fini()
 *   and dlclose()s it; models hold a ref, so this happens only after every
 *   model of the set was unloaded.
 * - op_plugin: one loaded plugin, owned by its set (no refcount of its own).
 * - op_model: one model instance. The last unref calls the plugin's
 *   model_unload(); every in-flight request holds a ref, so a model dropped
 *   by its owner (reload, shutdown) is unloaded only after its last request
 *   completed.
 * - op_infer: one inference request. The caller of op_infer_submit() holds
 *   one ref (op_infer_release); the host holds another until the plugin
 *   completes the request. The request holds a model ref until completion.
 *
 * Threading
 * - op_plugins_load() and op_model_load() may block (dlopen, reading model
 *   files): call them from a control thread, not an HTTP worker.
 * - Everything else is thread-safe.
 * - Callbacks (op_infer_callbacks) run on plugin threads, or on the caller's
 *   thread inside op_infer_submit()/op_infer_cancel() when a plugin completes
 *   synchronously. They must not block for long.
 * - Teardown (model_unload, fini, dlclose) never runs inside a call from a
 *   plugin (a completion on a plugin worker): when the last ref of a model or
 *   set drops there, the teardown is handed to the host's reaper thread, one
 *   per process, started on first need and idle otherwise (this module's only
 *   global besides the metric families). Everywhere else the last unref tears
 *   down at once, on the caller's thread. op_plugins_drain() waits until the
 *   reaper has nothing left (shutdown, tests).
 *
 * Errors: functions that can fail return 0 / an error code and write a
 * message into err; nothing here aborts on bad plugins or bad input.
 *
 * Metrics (agent/metrics): outpost_plugins_loaded_total{plugin},
 * outpost_plugins_refused_total{reason}, outpost_model_load_failures_total{model},
 * outpost_models_loaded, outpost_inference_requests_total{model,code} (code is
 * op_error_code_name(): "ok", "invalid_argument", ...; requests refused at
 * submit count too), outpost_inference_in_flight{model},
 * outpost_inference_duration_seconds{model} (submit to completion); and the
 * series plugins report through host->model_metric() (ABI minor 1), each
 * labelled {model}: outpost_inference_queue_depth, outpost_inference_running,
 * outpost_llm_kv_cache_used_tokens, outpost_llm_kv_cache_capacity_tokens
 * (gauges), outpost_inference_batch_size, outpost_inference_queue_wait_seconds,
 * outpost_llm_time_to_first_token_seconds,
 * outpost_llm_inter_token_latency_seconds (histograms),
 * outpost_inference_prompt_tokens_total, outpost_llm_generated_tokens_total
 * (counters). Their children are made at model load, before the plugin's
 * model_load() runs, and only where they can be filled: not for a plugin
 * older than minor 1, and the outpost_llm_* ones only for text generation.
 * Reports with an unknown id, into a series the model does not have, or of
 * a value that is negative, NaN or infinite, are dropped.
 *
 * Streaming: pieces reach on_emit as whole UTF-8 sequences (op_utf8.h); a
 * sequence a plugin cut between two emits is held back and handed on with
 * the next piece.
 */
#ifndef OP_PLUGINS_H
#define OP_PLUGINS_H

#include <stddef.h>

#include "config/op_config.h"
#include "outpost/plugin.h"

/* ------------------------------------------------------------------------ */
/* Plugins                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct op_plugin op_plugin;         /* one loaded plugin */
typedef struct op_plugin_set op_plugin_set; /* every plugin found in the configured dirs */

/* Why a plugin file was refused. reason is a short slug, also the label of
 * outpost_plugins_refused_total: abi_major | abi_minor | signature | no_entry
 * | dlopen | invalid | duplicate | init | nomem. */
typedef struct op_plugin_refusal {
    const char *path;    /* the .so file */
    const char *reason;  /* slug, static */
    const char *message; /* precise, e.g. "plugin ABI major 2, host supports 1" */
} op_plugin_refusal;

/*
 * Scans each dir for *.so files (sorted by name, byte order), dlopen()s each
 * with RTLD_NOW|RTLD_LOCAL, resolves outpost_plugin_entry, checks ABI major ==
 * host major, minor >= OUTPOST_PLUGIN_ABI_MINOR_MIN, struct_size >= the minor
 * 0 size, build signature equal, required fields non-NULL, name valid and
 * unique, then calls init(). A refused plugin is logged (event
 * plugin.refused, with path, reason and message), counted, and loading goes
 * on. A missing or unreadable dir is logged (plugin.dir_missing), not fatal.
 * Returns 0 with *out set (holding one ref), or -ENOMEM.
 *
 * Reload: loading a new set while the old one still serves is supported
 * (each gets its own init()/state), but dlopen() returns the library already
 * mapped for a path, so a .so replaced on disk is only picked up once the old
 * set is fully released.
 */
int op_plugins_load(const char *const *dirs, size_t n_dirs, op_plugin_set **out);

/* NULL if no plugin of that name was loaded. */
op_plugin *op_plugins_find(op_plugin_set *set, const char *name);
size_t op_plugins_count(const op_plugin_set *set);
/* The i-th loaded plugin in load order (i < op_plugins_count), else NULL. */
op_plugin *op_plugins_at(op_plugin_set *set, size_t i);
/* Refusals of this load, in scan order; valid as long as the set. */
size_t op_plugins_refused_count(const op_plugin_set *set);
const op_plugin_refusal *op_plugins_refusal(const op_plugin_set *set, size_t i);

const char *op_plugin_name(const op_plugin *p);
const char *op_plugin_version(const op_plugin *p);
const char *op_plugin_path(const op_plugin *p);
/* 1 if the plugin declared task, else 0. */
int op_plugin_serves_task(const op_plugin *p, const char *task);

void op_plugin_set_ref(op_plugin_set *s);
/* NULL is a no-op. See "Teardown" above for where the last unref runs. */
void op_plugin_set_unref(op_plugin_set *s);

/* Waits until every teardown handed to the reaper thread has run, and every
 * completion in progress (which may hand one over) has returned. Never call
 * it from an op_infer callback (it would wait for itself). */
void op_plugins_drain(void);

/* ------------------------------------------------------------------------ */
/* Models                                                                    */
/* ------------------------------------------------------------------------ */

typedef struct op_model op_model; /* one loaded model instance, refcounted */

/*
 * Loads cfg with the plugin named cfg->plugin, on the CPU device with
 * cpu_threads threads (<= 0: every usable core). The model holds a ref on
 * set. Returns 0 with *out (one ref), or -1 with a message in err:
 *   "model '@local/x': plugin 'llama' not found"
 *   "model '@local/x': plugin 'echo' does not serve task 'text-classification'"
 *   "model '@local/x': <the plugin's message>"
 * Every failure increments outpost_model_load_failures_total{model}.
 */
int op_model_load(op_plugin_set *set, const op_config_model *cfg, int cpu_threads, op_model **out,
                  char *err, size_t errlen);
void op_model_ref(op_model *m);
/* NULL is a no-op. The last unref unloads the model; in-flight requests hold
 * refs, so that happens once the last of them completed. */
void op_model_unref(op_model *m);

const char *op_model_id(const op_model *m);
const char *op_model_task(const op_model *m);
const char *op_model_plugin_name(const op_model *m);
/* What the plugin reported; description is the config's if it has one, else
 * the plugin's (may be NULL). Strings are owned by the model. */
const outpost_model_info *op_model_info(const op_model *m);

/* The plugin's count of input tokens for body (a request input as submit()
 * would get it), through its optional count_tokens entry (ABI minor 1).
 * Returns 0 with *tokens set, or -1 when the plugin has no such entry or
 * cannot tell (the caller then estimates). Thread-safe; runs the plugin's
 * code on the calling thread. */
int op_model_count_tokens(op_model *m, const char *body, size_t len, long long *tokens);

/* ------------------------------------------------------------------------ */
/* Inference requests                                                        */
/* ------------------------------------------------------------------------ */

typedef struct op_infer op_infer; /* one inference request */

typedef struct op_infer_callbacks {
    void *ctx;
    /* A piece of streamed text, valid UTF-8 (a sequence cut by the plugin
     * comes whole with the next piece; bytes that are not UTF-8 arrive as
     * U+FFFD), not NUL-terminated, valid during the call;
     * return 0, or -1 if the client is gone (the request is then marked
     * cancelled and the plugin told to stop). Only for stream requests; may
     * be NULL. Calls for one request never overlap. */
    int (*on_emit)(void *ctx, const char *text, size_t len);
    /* Exactly once per successfully submitted request, maybe before
     * op_infer_submit returns. code 0: success, result_json is the JSON
     * result (NUL-terminated, valid during the call) and message is NULL;
     * else code is an outpost_error_code, result_json NULL, message set.
     * Required. */
    void (*on_complete)(void *ctx, const char *result_json, size_t len, int code,
                        const char *message);
} op_infer_callbacks;

/*
 * Creates a request (copies body, model_id and task; NULL model_id / task
 * mean the model's own) and submits it to m's plugin. cb is copied; cb->ctx
 * must stay valid until on_complete returned. Returns 0 with *out set (the
 * caller holds one ref and must call op_infer_release), or an
 * outpost_error_code > 0 with the message in err if the plugin refused the
 * submission (queue full, shutting down) or memory ran out; then no callback
 * comes and *out is NULL.
 */
int op_infer_submit(op_model *m, const char *model_id, const char *task, const char *body,
                    size_t len, int stream, const op_infer_callbacks *cb, op_infer **out,
                    char *err, size_t errlen);
/* Asks the plugin to stop the request (it completes with CANCELLED, or
 * normally if it was done). Thread-safe, idempotent, safe after completion,
 * NULL is a no-op. The caller must still hold its ref. */
void op_infer_cancel(op_infer *r);
/* Drops the caller's reference; the request lives on until completion.
 * NULL is a no-op. */
void op_infer_release(op_infer *r);

/* 1 once the request completed (on_complete has started), else 0. */
int op_infer_completed(const op_infer *r);

/* ------------------------------------------------------------------------ */
/* Error codes                                                               */
/* ------------------------------------------------------------------------ */

/* 0 → 200; INVALID_ARGUMENT 400, NOT_FOUND 404, UNSUPPORTED 400,
 * RESOURCE_EXHAUSTED 429, UNAVAILABLE 503, CANCELLED 499, DEADLINE_EXCEEDED
 * 504; INTERNAL and anything unknown 500. */
int op_http_status_for_error(int outpost_error_code);
/* "ok", "internal", "invalid_argument", "not_found", "unsupported",
 * "resource_exhausted", "unavailable", "cancelled", "deadline_exceeded";
 * unknown codes read "internal". Static strings. */
const char *op_error_code_name(int outpost_error_code);

#endif
