#include "runtime/op_runtime.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "platform/pl_log.h"

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static op_runtime *g_current;
static uint64_t g_generation;

static bool str_eq(const char *a, const char *b)
{
    if (!a || !b)
        return a == b;
    return strcmp(a, b) == 0;
}

/* Same plugin, task, path and options: the loaded instance can be reused. */
static bool model_same(const op_config_model *a, const op_config_model *b)
{
    if (!str_eq(a->id, b->id) || !str_eq(a->plugin, b->plugin) || !str_eq(a->task, b->task) ||
        !str_eq(a->path, b->path) || a->n_options != b->n_options)
        return false;
    for (size_t i = 0; i < a->n_options; i++)
        if (!str_eq(a->options[i].key, b->options[i].key) ||
            !str_eq(a->options[i].value, b->options[i].value))
            return false;
    return true;
}

static bool host_is_loopback(const char *host)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6);
    return false;
}

static void runtime_free(op_runtime *rt)
{
    for (size_t i = 0; i < rt->n_models; i++) {
        if (rt->models[i].model)
            op_model_unref(rt->models[i].model);
        free(rt->models[i].load_error);
    }
    free(rt->models);
    if (rt->policies)
        op_policy_set_unref(rt->policies);
    if (rt->plugins)
        op_plugin_set_unref(rt->plugins);
    op_config_free(rt->cfg);
    free(rt);
}

op_runtime *op_runtime_build(op_config *cfg, const op_runtime *prev, char *err, size_t errlen)
{
    op_runtime *rt = calloc(1, sizeof *rt);
    if (!rt) {
        snprintf(err, errlen, "out of memory");
        op_config_free(cfg);
        return NULL;
    }
    atomic_init(&rt->refs, 1);
    rt->cfg = cfg;
    rt->listener_is_loopback = host_is_loopback(cfg->server.listen_host);

    if (cfg->policy.n_files > 0 &&
        op_policy_set_load(&cfg->policy, &rt->policies, err, errlen) != 0) {
        runtime_free(rt);
        return NULL;
    }

    if (prev) {
        rt->plugins = prev->plugins;
        op_plugin_set_ref(rt->plugins);
    } else if (op_plugins_load((const char *const *)cfg->plugin_dirs, cfg->n_plugin_dirs,
                               &rt->plugins) != 0) {
        snprintf(err, errlen, "out of memory loading plugins");
        runtime_free(rt);
        return NULL;
    }

    rt->models = calloc(cfg->n_models ? cfg->n_models : 1, sizeof *rt->models);
    if (!rt->models) {
        snprintf(err, errlen, "out of memory");
        runtime_free(rt);
        return NULL;
    }
    rt->n_models = cfg->n_models;
    for (size_t i = 0; i < cfg->n_models; i++) {
        op_runtime_model *m = &rt->models[i];
        m->cfg = &cfg->models[i];
        if (prev) {
            for (size_t j = 0; j < prev->n_models; j++) {
                if (prev->models[j].model && model_same(m->cfg, prev->models[j].cfg)) {
                    m->model = prev->models[j].model;
                    op_model_ref(m->model);
                    break;
                }
            }
            if (m->model)
                continue;
        }
        char why[512];
        if (op_model_load(rt->plugins, m->cfg, cfg->cpu_threads, &m->model, why, sizeof why) != 0) {
            m->model = NULL;
            m->load_error = strdup(why);
            PL_LOG_ERROR("model.load_failed", "model", m->cfg->id, "reason", why);
        }
    }
    pthread_mutex_lock(&g_mu);
    rt->generation = ++g_generation;
    pthread_mutex_unlock(&g_mu);
    return rt;
}

op_runtime *op_runtime_acquire(void)
{
    pthread_mutex_lock(&g_mu);
    op_runtime *rt = g_current;
    if (rt)
        atomic_fetch_add(&rt->refs, 1);
    pthread_mutex_unlock(&g_mu);
    return rt;
}

void op_runtime_release(op_runtime *rt)
{
    if (rt && atomic_fetch_sub(&rt->refs, 1) == 1)
        runtime_free(rt);
}

void op_runtime_publish(op_runtime *rt)
{
    pthread_mutex_lock(&g_mu);
    op_runtime *old = g_current;
    g_current = rt;
    pthread_mutex_unlock(&g_mu);
    op_runtime_release(old);
}

const op_runtime_model *op_runtime_find_model(const op_runtime *rt, const char *id)
{
    for (size_t i = 0; i < rt->n_models; i++) {
        const op_config_model *c = rt->models[i].cfg;
        if (strcmp(c->id, id) == 0)
            return &rt->models[i];
        for (size_t k = 0; k < c->n_aliases; k++)
            if (strcmp(c->aliases[k], id) == 0)
                return &rt->models[i];
    }
    return NULL;
}

bool op_runtime_ready(const op_runtime *rt)
{
    for (size_t i = 0; i < rt->n_models; i++)
        if (!rt->models[i].model)
            return false;
    return true;
}
