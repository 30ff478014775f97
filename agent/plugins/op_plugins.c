/*
 * op_plugins.c: finding, checking and loading plugin libraries; the host API
 * table (errors, log); the reaper thread that runs teardowns a plugin thread
 * must not run. Models and requests are in op_model.c.
 */
#include "plugins/op_plugins_internal.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "platform/pl_log.h"

#define OP_PLUGIN_NAME_MAX 64
/* sizeof(outpost_plugin) at minor 1: up to and including count_tokens. */
#define OP_PLUGIN_SIZE_V1_1 \
    (offsetof(outpost_plugin, count_tokens) + sizeof(((outpost_plugin *)0)->count_tokens))
#define OP_ERROR_MESSAGE_MAX 4096

/* ======================================================================== */
/* Error objects                                                             */
/* ======================================================================== */

struct outpost_error {
    outpost_error_code code;
    const char *message; /* points into the same allocation, or static */
};

/* error_new never returns NULL: when malloc fails the plugin gets this, and
 * error_free leaves it alone. */
static outpost_error g_error_oom = {OUTPOST_ERR_INTERNAL, "out of memory"};

static size_t utf8_truncate(const char *s, size_t max)
{
    size_t n = strnlen(s, max + 1);
    if (n <= max)
        return n;
    n = max;
    /* Do not cut a multi-byte sequence: back up over continuation bytes. */
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
        n--;
    return n;
}

outpost_error *op_error_new(outpost_error_code code, const char *message)
{
    if (code < OUTPOST_ERR_INTERNAL || code > OUTPOST_ERR_DEADLINE_EXCEEDED)
        code = OUTPOST_ERR_INTERNAL;
    if (!message)
        message = "";
    size_t n = utf8_truncate(message, OP_ERROR_MESSAGE_MAX);
    outpost_error *e = malloc(sizeof(*e) + n + 1);
    if (!e)
        return &g_error_oom;
    char *text = (char *)(e + 1);
    memcpy(text, message, n);
    text[n] = '\0';
    e->code = code;
    e->message = text;
    return e;
}

outpost_error_code op_error_code(const outpost_error *err)
{
    return err ? err->code : OUTPOST_ERR_INTERNAL;
}

const char *op_error_message(const outpost_error *err)
{
    return err ? err->message : "";
}

void op_error_free(outpost_error *err)
{
    if (err && err != &g_error_oom)
        free(err);
}

/* ======================================================================== */
/* Host API table                                                            */
/* ======================================================================== */

static void host_log(const outpost_host_api *host, outpost_log_level level, const char *event,
                     const char *message)
{
    /* The table is the first member of op_host_table, so the cast finds
     * which plugin is speaking. A NULL host still logs, without a name. */
    const char *name = "?";
    if (host) {
        const op_host_table *t = (const op_host_table *)host;
        if (t->plugin && t->plugin->desc && t->plugin->desc->name)
            name = t->plugin->desc->name;
    }
    pl_log_level l = PL_LOG_INFO;
    switch (level) {
    case OUTPOST_LOG_DEBUG: l = PL_LOG_DEBUG; break;
    case OUTPOST_LOG_INFO: l = PL_LOG_INFO; break;
    case OUTPOST_LOG_WARN: l = PL_LOG_WARN; break;
    case OUTPOST_LOG_ERROR: l = PL_LOG_ERROR; break;
    default: l = PL_LOG_WARN; break;
    }
    pl_log_event(l, event ? event : "plugin.log", "plugin", name, "msg", message ? message : "",
                 (const char *)0);
}

void op_host_table_init(op_host_table *t, op_plugin *p)
{
    memset(t, 0, sizeof(*t));
    t->plugin = p;
    outpost_host_api *a = &t->api;
    a->struct_size = (uint32_t)sizeof(*a);
    a->abi_major = OUTPOST_PLUGIN_ABI_MAJOR;
    a->abi_minor = OUTPOST_PLUGIN_ABI_MINOR;
    a->error_new = op_error_new;
    a->error_code = op_error_code;
    a->error_message = op_error_message;
    a->error_free = op_error_free;
    a->log = host_log;
    a->request_model_id = op_req_model_id;
    a->request_task = op_req_task;
    a->request_body = op_req_body;
    a->request_stream = op_req_stream;
    a->request_cancelled = op_req_cancelled;
    a->request_set_user = op_req_set_user;
    a->request_user = op_req_user;
    a->request_emit = op_req_emit;
    a->request_complete = op_req_complete;
    /* minor 1 */
    a->model_metric = op_host_model_metric;
}

/* ======================================================================== */
/* Reaper                                                                    */
/* ======================================================================== */

_Thread_local int op_plugins_in_host_call;

static pthread_once_t g_reap_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t g_reap_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_reap_cv = PTHREAD_COND_INITIALIZER;   /* work queued */
static pthread_cond_t g_reap_idle = PTHREAD_COND_INITIALIZER; /* queue empty */
static op_reap_node *g_reap_head;
static op_reap_node **g_reap_tail = &g_reap_head;
static int g_reap_busy;
static int g_completing; /* request_complete() calls running: may still queue work */
static bool g_reap_started;

static void *reaper_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&g_reap_mu);
    for (;;) {
        while (!g_reap_head)
            pthread_cond_wait(&g_reap_cv, &g_reap_mu);
        op_reap_node *n = g_reap_head;
        g_reap_head = n->next;
        if (!g_reap_head)
            g_reap_tail = &g_reap_head;
        g_reap_busy++;
        pthread_mutex_unlock(&g_reap_mu);
        n->fn(n);
        pthread_mutex_lock(&g_reap_mu);
        g_reap_busy--;
        if (!g_reap_head && !g_reap_busy && !g_completing)
            pthread_cond_broadcast(&g_reap_idle);
    }
    return NULL;
}

static void reaper_start(void)
{
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    g_reap_started = pthread_create(&t, &attr, reaper_main, NULL) == 0;
    pthread_attr_destroy(&attr);
    if (g_reap_started)
        pthread_setname_np(t, "op-reaper");
}

void op_plugins_teardown(op_reap_node *node)
{
    if (op_plugins_in_host_call > 0) {
        pthread_once(&g_reap_once, reaper_start);
        if (g_reap_started) {
            pthread_mutex_lock(&g_reap_mu);
            node->next = NULL;
            *g_reap_tail = node;
            g_reap_tail = &node->next;
            pthread_cond_signal(&g_reap_cv);
            pthread_mutex_unlock(&g_reap_mu);
            return;
        }
        /* No thread to hand it to: leaking would be silent, tearing down
         * here may deadlock a plugin that joins its worker. Leak, loudly. */
        PL_LOG_ERROR("plugin.teardown_leaked", "msg", "cannot start the reaper thread");
        return;
    }
    node->fn(node);
}

void op_plugins_completion_begin(void)
{
    pthread_mutex_lock(&g_reap_mu);
    g_completing++;
    pthread_mutex_unlock(&g_reap_mu);
}

void op_plugins_completion_end(void)
{
    pthread_mutex_lock(&g_reap_mu);
    if (--g_completing == 0 && !g_reap_head && !g_reap_busy)
        pthread_cond_broadcast(&g_reap_idle);
    pthread_mutex_unlock(&g_reap_mu);
}

void op_plugins_drain(void)
{
    pthread_mutex_lock(&g_reap_mu);
    while (g_reap_head || g_reap_busy || g_completing)
        pthread_cond_wait(&g_reap_idle, &g_reap_mu);
    pthread_mutex_unlock(&g_reap_mu);
}

/* ======================================================================== */
/* Loading                                                                   */
/* ======================================================================== */

static op_metric_child *refused_counter(const char *reason)
{
    static const char *const labels[] = {"reason", NULL};
    op_metric *f = op_metric_counter("outpost_plugins_refused_total",
                                     "Plugin libraries refused at load, by reason.", labels);
    return op_metric_with(f, reason);
}

static op_metric_child *loaded_counter(const char *plugin)
{
    static const char *const labels[] = {"plugin", NULL};
    op_metric *f = op_metric_counter("outpost_plugins_loaded_total",
                                     "Plugin libraries loaded, by plugin name.", labels);
    return op_metric_with(f, plugin);
}

/* Records, logs and counts one refusal; never fails (a refusal that cannot
 * be recorded is still logged and counted). */
static void refuse(op_plugin_set *set, const char *path, const char *reason, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void refuse(op_plugin_set *set, const char *path, const char *reason, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    PL_LOG_ERROR("plugin.refused", "path", path, "reason", reason, "msg", msg);
    op_counter_inc(refused_counter(reason));

    op_plugin_refusal *grown =
        realloc(set->refusals, (set->n_refusals + 1) * sizeof(*set->refusals));
    if (!grown)
        return;
    set->refusals = grown;
    char *p = strdup(path);
    char *m = strdup(msg);
    if (!p || !m) {
        free(p);
        free(m);
        return;
    }
    set->refusals[set->n_refusals++] = (op_plugin_refusal){p, reason, m};
}

static bool valid_name(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        char c = s[n];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
        if (n >= OP_PLUGIN_NAME_MAX)
            return false;
    }
    return n > 0;
}

/* Checks the descriptor's fields; on failure writes reason and message. */
static bool check_descriptor(const outpost_plugin *d, const char **reason, char *msg,
                             size_t msglen)
{
    if (d->abi_major != OUTPOST_PLUGIN_ABI_MAJOR) {
        *reason = "abi_major";
        snprintf(msg, msglen, "plugin ABI major %u, host supports %u", d->abi_major,
                 OUTPOST_PLUGIN_ABI_MAJOR);
        return false;
    }
    uint32_t minor_min = OUTPOST_PLUGIN_ABI_MINOR_MIN; /* a variable: MIN may be 0 */
    if (d->abi_minor < minor_min) {
        *reason = "abi_minor";
        snprintf(msg, msglen, "plugin ABI minor %u.%u, host needs at least %u.%u",
                 d->abi_major, d->abi_minor, OUTPOST_PLUGIN_ABI_MAJOR,
                 OUTPOST_PLUGIN_ABI_MINOR_MIN);
        return false;
    }
    /* From here on the fields are read only if the struct is big enough. */
    if (d->struct_size < OUTPOST_PLUGIN_SIZE_V1_0) {
        *reason = "invalid";
        snprintf(msg, msglen, "descriptor struct_size %u is smaller than the ABI %u.0 size %zu",
                 d->struct_size, OUTPOST_PLUGIN_ABI_MAJOR, (size_t)OUTPOST_PLUGIN_SIZE_V1_0);
        return false;
    }
    if (!d->build_signature || strcmp(d->build_signature, OUTPOST_PLUGIN_BUILD_SIGNATURE) != 0) {
        *reason = "signature";
        snprintf(msg, msglen, "build signature '%s' differs from the host's '%s'",
                 d->build_signature ? d->build_signature : "(null)",
                 OUTPOST_PLUGIN_BUILD_SIGNATURE);
        return false;
    }
    *reason = "invalid";
    const struct {
        const char *field;
        bool present;
    } required[] = {
        {"name", d->name != NULL},
        {"version", d->version != NULL},
        {"tasks", d->tasks != NULL},
        {"init", d->init != NULL},
        {"fini", d->fini != NULL},
        {"model_load", d->model_load != NULL},
        {"model_unload", d->model_unload != NULL},
        {"submit", d->submit != NULL},
        {"cancel", d->cancel != NULL},
    };
    for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++) {
        if (!required[i].present) {
            snprintf(msg, msglen, "required field '%s' is NULL", required[i].field);
            return false;
        }
    }
    if (!valid_name(d->name)) {
        snprintf(msg, msglen, "plugin name '%.80s' is not [a-z0-9_-]{1,64}", d->name);
        return false;
    }
    if (!d->tasks[0]) {
        snprintf(msg, msglen, "plugin '%s' declares no task", d->name);
        return false;
    }
    for (size_t i = 0; d->tasks[i]; i++) {
        if (!valid_name(d->tasks[i])) {
            snprintf(msg, msglen, "plugin '%s': task name '%.80s' is not [a-z0-9_-]{1,64}",
                     d->name, d->tasks[i]);
            return false;
        }
    }
    return true;
}

static op_plugin *find_plugin(op_plugin_set *set, const char *name)
{
    for (size_t i = 0; i < set->n; i++) {
        if (strcmp(set->plugins[i]->desc->name, name) == 0)
            return set->plugins[i];
    }
    return NULL;
}

static void plugin_free(op_plugin *p)
{
    if (!p)
        return;
    if (p->handle)
        dlclose(p->handle);
    free(p->path);
    free(p);
}

/* Loads one file into set, or refuses it. Returns -ENOMEM only when the set
 * itself cannot grow; every plugin problem is a refusal (0). */
static int load_one(op_plugin_set *set, const char *path)
{
    dlerror();
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *why = dlerror();
        refuse(set, path, "dlopen", "dlopen failed: %s", why ? why : "unknown error");
        return 0;
    }
    dlerror();
    void *sym = dlsym(h, OUTPOST_PLUGIN_ENTRY);
    if (!sym) {
        refuse(set, path, "no_entry", "no symbol '%s' (not an Outpost plugin)",
               OUTPOST_PLUGIN_ENTRY);
        dlclose(h);
        return 0;
    }
    outpost_plugin_entry_fn entry;
    /* POSIX guarantees object/function pointer conversion for dlsym. */
    memcpy(&entry, &sym, sizeof(entry));
    const outpost_plugin *d = entry();
    if (!d) {
        refuse(set, path, "invalid", "%s() returned NULL", OUTPOST_PLUGIN_ENTRY);
        dlclose(h);
        return 0;
    }
    const char *reason = NULL;
    char msg[512];
    if (!check_descriptor(d, &reason, msg, sizeof(msg))) {
        refuse(set, path, reason, "%s", msg);
        dlclose(h);
        return 0;
    }
    const op_plugin *other = find_plugin(set, d->name);
    if (other) {
        refuse(set, path, "duplicate", "plugin name '%s' is already loaded from %s", d->name,
               other->path);
        dlclose(h);
        return 0;
    }

    op_plugin *p = calloc(1, sizeof(*p));
    op_plugin **grown = realloc(set->plugins, (set->n + 1) * sizeof(*set->plugins));
    if (grown)
        set->plugins = grown;
    if (!p || !grown || !(p->path = strdup(path))) {
        refuse(set, path, "nomem", "out of memory");
        if (p)
            free(p->path);
        free(p);
        dlclose(h);
        return -ENOMEM;
    }
    p->set = set;
    p->handle = h;
    p->desc = d;
    /* Optional minor-1 entry: only where the plugin says it has it, and
     * only as far as its descriptor reaches. */
    if (d->abi_minor >= 1 && d->struct_size >= OP_PLUGIN_SIZE_V1_1)
        p->count_tokens = d->count_tokens;
    op_host_table_init(&p->host, p);

    outpost_error *e = d->init(&p->host.api, &p->state);
    if (e) {
        refuse(set, path, "init", "plugin '%s' init failed: %s", d->name, op_error_message(e));
        op_error_free(e);
        plugin_free(p);
        return 0;
    }
    set->plugins[set->n++] = p;

    char tasks[256] = "";
    size_t used = 0;
    for (size_t i = 0; d->tasks[i] && used < sizeof(tasks); i++) {
        int w = snprintf(tasks + used, sizeof(tasks) - used, "%s%s", i ? "," : "", d->tasks[i]);
        used += w > 0 ? (size_t)w : 0;
    }
    char abi[32];
    snprintf(abi, sizeof(abi), "%u.%u", d->abi_major, d->abi_minor);
    PL_LOG_INFO("plugin.loaded", "plugin", d->name, "version", d->version, "path", path, "abi",
                abi, "tasks", tasks);
    op_counter_inc(loaded_counter(d->name));
    return 0;
}

static int filter_so(const struct dirent *e)
{
    size_t n = strlen(e->d_name);
    return e->d_name[0] != '.' && n > 3 && strcmp(e->d_name + n - 3, ".so") == 0;
}

/* Byte order, not the locale's collation: the load order must not depend on
 * the environment the agent was started from. */
static int by_name(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

static int load_dir(op_plugin_set *set, const char *dir)
{
    struct dirent **names = NULL;
    int n = scandir(dir, &names, filter_so, by_name);
    if (n < 0) {
        PL_LOG_WARN("plugin.dir_missing", "path", dir, "msg", strerror(errno));
        return 0;
    }
    int rc = 0;
    for (int i = 0; i < n; i++) {
        if (rc == 0) {
            size_t len = strlen(dir) + 1 + strlen(names[i]->d_name) + 1;
            char *path = malloc(len);
            if (!path) {
                rc = -ENOMEM;
            } else {
                snprintf(path, len, "%s/%s", dir, names[i]->d_name);
                rc = load_one(set, path);
                free(path);
            }
        }
        free(names[i]);
    }
    free(names);
    return rc;
}

static void set_destroy(op_reap_node *node)
{
    op_plugin_set *set = (op_plugin_set *)((char *)node - offsetof(op_plugin_set, reap));
    /* Reverse load order, as teardown mirrors setup. */
    for (size_t i = set->n; i-- > 0;) {
        op_plugin *p = set->plugins[i];
        p->desc->fini(p->state);
        PL_LOG_INFO("plugin.unloaded", "plugin", p->desc->name, "path", p->path);
        plugin_free(p);
    }
    for (size_t i = 0; i < set->n_refusals; i++) {
        free((char *)set->refusals[i].path);
        free((char *)set->refusals[i].message);
    }
    free(set->refusals);
    free(set->plugins);
    free(set);
}

int op_plugins_load(const char *const *dirs, size_t n_dirs, op_plugin_set **out)
{
    *out = NULL;
    op_plugin_set *set = calloc(1, sizeof(*set));
    if (!set)
        return -ENOMEM;
    atomic_init(&set->refs, 1);
    set->reap.fn = set_destroy;
    if (!dirs)
        n_dirs = 0;
    for (size_t i = 0; i < n_dirs; i++) {
        if (!dirs[i])
            continue;
        int rc = load_dir(set, dirs[i]);
        if (rc) {
            set_destroy(&set->reap);
            return rc;
        }
    }
    char loaded[32], refused[32];
    snprintf(loaded, sizeof(loaded), "%zu", set->n);
    snprintf(refused, sizeof(refused), "%zu", set->n_refusals);
    PL_LOG_INFO("plugin.scan_done", "loaded", loaded, "refused", refused);
    *out = set;
    return 0;
}

op_plugin *op_plugins_find(op_plugin_set *set, const char *name)
{
    if (!set || !name)
        return NULL;
    return find_plugin(set, name);
}

size_t op_plugins_count(const op_plugin_set *set)
{
    return set ? set->n : 0;
}

op_plugin *op_plugins_at(op_plugin_set *set, size_t i)
{
    return set && i < set->n ? set->plugins[i] : NULL;
}

size_t op_plugins_refused_count(const op_plugin_set *set)
{
    return set ? set->n_refusals : 0;
}

const op_plugin_refusal *op_plugins_refusal(const op_plugin_set *set, size_t i)
{
    return set && i < set->n_refusals ? &set->refusals[i] : NULL;
}

const char *op_plugin_name(const op_plugin *p)
{
    return p->desc->name;
}

const char *op_plugin_version(const op_plugin *p)
{
    return p->desc->version;
}

const char *op_plugin_path(const op_plugin *p)
{
    return p->path;
}

int op_plugin_serves_task(const op_plugin *p, const char *task)
{
    if (!p || !task)
        return 0;
    for (size_t i = 0; p->desc->tasks[i]; i++) {
        if (strcmp(p->desc->tasks[i], task) == 0)
            return 1;
    }
    return 0;
}

void op_plugin_set_ref(op_plugin_set *s)
{
    if (s)
        atomic_fetch_add(&s->refs, 1);
}

void op_plugin_set_unref(op_plugin_set *s)
{
    if (s && atomic_fetch_sub(&s->refs, 1) == 1)
        op_plugins_teardown(&s->reap);
}

/* ======================================================================== */
/* Error codes                                                               */
/* ======================================================================== */

int op_http_status_for_error(int code)
{
    switch (code) {
    case 0: return 200;
    case OUTPOST_ERR_INVALID_ARGUMENT: return 400;
    case OUTPOST_ERR_NOT_FOUND: return 404;
    case OUTPOST_ERR_UNSUPPORTED: return 400;
    case OUTPOST_ERR_RESOURCE_EXHAUSTED: return 429;
    case OUTPOST_ERR_UNAVAILABLE: return 503;
    case OUTPOST_ERR_CANCELLED: return 499;
    case OUTPOST_ERR_DEADLINE_EXCEEDED: return 504;
    default: return 500;
    }
}

const char *op_error_code_name(int code)
{
    static const char *const names[] = {
        "ok", "internal", "invalid_argument", "not_found", "unsupported",
        "resource_exhausted", "unavailable", "cancelled", "deadline_exceeded",
    };
    if (code < 0 || (size_t)code >= sizeof(names) / sizeof(names[0]))
        return "internal";
    return names[code];
}
