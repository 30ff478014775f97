/*
 * op_runtime: everything a request needs that config decides, as one
 * immutable, refcounted snapshot: the config, the loaded plugin set, the
 * loaded model instances and the compiled policy set.
 *
 * A request takes a reference with op_runtime_acquire() when it starts and
 * drops it when it ends, so a SIGHUP reload (op_runtime_publish of a new
 * snapshot) never pulls anything from under a request in flight: the old
 * snapshot, and models only it uses, go away with its last reference.
 *
 * Reload reuses what did not change: the plugin set (plugin dirs need a
 * restart), and every model instance whose id, plugin, task, path and options
 * are the same as before, so a reload that only edits policies or tokens
 * reloads no model.
 *
 * Threading: acquire/release/publish are thread-safe (a mutex around one
 * pointer swap); a snapshot is read-only after build.
 */
#ifndef OP_RUNTIME_H
#define OP_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/op_config.h"
#include "plugins/op_plugins.h"
#include "policy/op_policy.h"

typedef struct op_runtime_model {
    const op_config_model *cfg; /* points into rt->cfg */
    op_model *model;            /* NULL if it failed to load */
    char *load_error;           /* why it failed, else NULL */
} op_runtime_model;

typedef struct op_runtime {
    _Atomic int refs;
    uint64_t generation;
    op_config *cfg;             /* owned */
    op_plugin_set *plugins;     /* one reference */
    op_runtime_model *models;   /* aligned with cfg->models */
    size_t n_models;
    op_policy_set *policies;    /* NULL when no policy files are configured */
    bool listener_is_loopback;  /* tokens required when false */
} op_runtime;

/*
 * Builds a snapshot from cfg (ownership of cfg passes to the runtime, also on
 * failure). prev, if not NULL, lends its plugin set and unchanged models.
 * Models that fail to load do not fail the build: they are recorded with
 * their error (see /readyz). A policy set that does not compile does: returns
 * NULL with the reason in err.
 */
op_runtime *op_runtime_build(op_config *cfg, const op_runtime *prev, char *err, size_t errlen);

/* The current snapshot with a reference taken, or NULL before the first
 * publish. */
op_runtime *op_runtime_acquire(void);
void op_runtime_release(op_runtime *rt);
/* Makes rt current (takes over the caller's reference) and releases the old. */
void op_runtime_publish(op_runtime *rt);

/* The model entry whose id or alias is id, or NULL. */
const op_runtime_model *op_runtime_find_model(const op_runtime *rt, const char *id);
/* True if every configured model loaded. */
bool op_runtime_ready(const op_runtime *rt);

#endif
