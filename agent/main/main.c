/*
 * outpostd: the Outpost agent.
 *
 *   outpostd --config FILE [--listen HOST:PORT]
 *   outpostd --check-config FILE
 *
 * Signals: SIGTERM/SIGINT stop gracefully (stop accepting, let in-flight
 * requests finish for server.shutdown_grace_s, cancel the rest, exit 0);
 * SIGHUP reloads the config, policies and models without dropping
 * connections (a config with errors is reported and the old one kept).
 *
 * Every signal is blocked in every thread and taken synchronously here with
 * sigwait(), so no handler runs inside library code.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "api/op_api.h"
#include "config/op_config.h"
#include "gateway/gw_gateway.h"
#include "http/op_http.h"
#include "metrics/op_metrics.h"
#include "platform/pl_file.h"
#include "platform/pl_log.h"
#include "platform/pl_time.h"
#include "runtime/op_runtime.h"
#include "vector/vx_api.h"
#include "drivers/cpu/drv_cpu.h"

#ifndef OUTPOST_VERSION
#define OUTPOST_VERSION "0.0.0"
#endif
#ifndef OUTPOST_GIT_REV
#define OUTPOST_GIT_REV "unknown"
#endif

static void usage(FILE *f)
{
    fprintf(f, "usage: outpostd --config FILE [--listen HOST:PORT]\n"
               "       outpostd --check-config FILE\n"
               "       outpostd --version\n");
}

static void print_errors(const op_config_errors *errs)
{
    for (size_t i = 0; i < errs->n; i++)
        fprintf(stderr, "%s\n", errs->items[i].message);
}

/* --check-config: parse, validate, compile policies. Exit 0 or 2. */
static int check_config(const char *path)
{
    pl_log_configure(PL_LOG_ERROR, PL_LOG_FORMAT_KV);
    op_config *cfg = NULL;
    op_config_errors errs = {0};
    if (op_config_load(path, &cfg, &errs) != 0) {
        print_errors(&errs);
        op_config_errors_free(&errs);
        return 2;
    }
    int rc = 0;
    if (cfg->policy.n_files > 0) {
        op_policy_set *ps = NULL;
        char err[1024];
        if (op_policy_set_load(&cfg->policy, &ps, err, sizeof err) != 0) {
            fprintf(stderr, "%s\n", err);
            rc = 2;
        } else {
            op_policy_set_unref(ps);
        }
    }
    if (rc == 0)
        printf("%s: ok\n", path);
    op_config_free(cfg);
    return rc;
}

/* Parses HOST:PORT or [V6]:PORT into the config's server fields. */
static int apply_listen(op_config *cfg, const char *spec)
{
    char host[128];
    const char *colon;
    if (spec[0] == '[') {
        const char *end = strchr(spec, ']');
        if (!end || end[1] != ':' || (size_t)(end - spec - 1) >= sizeof host)
            return -1;
        memcpy(host, spec + 1, (size_t)(end - spec - 1));
        host[end - spec - 1] = '\0';
        colon = end + 1;
    } else {
        colon = strrchr(spec, ':');
        if (!colon || (size_t)(colon - spec) >= sizeof host || colon == spec)
            return -1;
        memcpy(host, spec, (size_t)(colon - spec));
        host[colon - spec] = '\0';
    }
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535 || colon[1] == '\0')
        return -1;
    char *h = strdup(host);
    if (!h)
        return -1;
    free(cfg->server.listen_host);
    cfg->server.listen_host = h;
    cfg->server.listen_port = (uint16_t)port;
    return 0;
}

static op_config *load_config(const char *path, const char *listen_override)
{
    op_config *cfg = NULL;
    op_config_errors errs = {0};
    if (op_config_load(path, &cfg, &errs) != 0) {
        for (size_t i = 0; i < errs.n; i++)
            PL_LOG_ERROR("config.error", "message", errs.items[i].message);
        op_config_errors_free(&errs);
        return NULL;
    }
    if (listen_override && apply_listen(cfg, listen_override) != 0) {
        PL_LOG_ERROR("config.error", "message", "--listen must be HOST:PORT", "value",
                     listen_override);
        op_config_free(cfg);
        return NULL;
    }
    return cfg;
}

static void reload(const char *path, const char *listen_override)
{
    uint64_t t0 = pl_time_mono_ns();
    op_config *cfg = load_config(path, listen_override);
    if (!cfg) {
        PL_LOG_ERROR("reload.failed", "reason", "config has errors; keeping the running config");
        return;
    }
    op_runtime *old = op_runtime_acquire();
    const char *key = old ? op_config_restart_required(old->cfg, cfg) : NULL;
    if (key)
        PL_LOG_WARN("config.restart_required", "key", key,
                    "reason", "this key changes only on restart; the rest is applied");
    pl_log_configure(cfg->log.level, cfg->log.format);
    char err[1024];
    op_runtime *rt = op_runtime_build(cfg, old, err, sizeof err);
    op_runtime_release(old);
    if (!rt) {
        PL_LOG_ERROR("reload.failed", "reason", err);
        return;
    }
    op_runtime_publish(rt);
    gw_service_configure(rt->cfg);
    char ms[32];
    snprintf(ms, sizeof ms, "%.1f", (double)(pl_time_mono_ns() - t0) / 1e6);
    PL_LOG_INFO("reload.done", "duration_ms", ms);
}

static void wait_in_flight(op_http_server *srv, int grace_s)
{
    uint64_t deadline = pl_time_mono_ns() + (uint64_t)grace_s * 1000000000ull;
    struct timespec tick = {0, 20 * 1000 * 1000};
    while ((op_http_server_in_flight(srv) > 0 || op_api_in_flight() > 0 ||
            gw_svc_in_flight() > 0) &&
           pl_time_mono_ns() < deadline)
        nanosleep(&tick, NULL);
    if (op_api_in_flight() > 0 || gw_svc_in_flight() > 0) {
        PL_LOG_WARN("shutdown.cancel", "reason", "grace period over; cancelling inference");
        op_api_cancel_all();
        gw_svc_cancel_all();
        uint64_t hard = pl_time_mono_ns() + 5000000000ull;
        while ((op_api_in_flight() > 0 || gw_svc_in_flight() > 0) && pl_time_mono_ns() < hard)
            nanosleep(&tick, NULL);
    }
}

int main(int argc, char **argv)
{
    const char *config_path = NULL, *listen = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--check-config") == 0 && i + 1 < argc)
            return check_config(argv[++i]);
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
            config_path = argv[++i];
        } else if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
            listen = argv[++i];
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("outpostd %s (%s)\n", OUTPOST_VERSION, OUTPOST_GIT_REV);
            return 0;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (!config_path) {
        usage(stderr);
        return 2;
    }

    uint64_t t0 = pl_time_mono_ns();
    /* Block the signals we take with sigwait before any thread exists, so
     * every thread inherits the mask. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    op_config *cfg = load_config(config_path, listen);
    if (!cfg)
        return 2;
    pl_log_configure(cfg->log.level, cfg->log.format);
    op_metrics_register_build_info(OUTPOST_VERSION, OUTPOST_GIT_REV);

    int rc = pl_file_mkdirs(cfg->data_dir);
    if (rc != 0) {
        PL_LOG_ERROR("startup.failed", "reason", "cannot create data_dir", "path", cfg->data_dir,
                     "error", strerror(-rc));
        op_config_free(cfg);
        return 1;
    }
    const drv_cpu_info *cpu = drv_cpu_probe();
    char cores[16];
    snprintf(cores, sizeof cores, "%d", cpu->cores);
    PL_LOG_INFO("startup", "version", OUTPOST_VERSION, "revision", OUTPOST_GIT_REV, "config",
                config_path, "cpu_cores", cores, "avx2", cpu->avx2 ? "true" : "false");

    op_http_options hopt = {
        .host = cfg->server.listen_host,
        .port = cfg->server.listen_port,
        .workers = cfg->server.workers > 0 ? cfg->server.workers : cpu->cores,
        .max_body_bytes = cfg->server.max_body_bytes,
        .max_header_bytes = cfg->server.max_header_bytes,
        .max_connections = cfg->server.max_connections,
        .idle_timeout_s = cfg->server.idle_timeout_s,
        .handler = op_api_handle,
        .too_large = op_api_too_large,
        .user = NULL,
    };
    int grace = cfg->server.shutdown_grace_s;
    char err[1024];
    op_runtime *rt = op_runtime_build(cfg, NULL, err, sizeof err);
    if (!rt) {
        PL_LOG_ERROR("startup.failed", "reason", err);
        return 2;
    }
    op_runtime_publish(rt);
        {
        op_runtime *g0 = op_runtime_acquire();
        int grc = gw_service_start(g0->cfg, err, sizeof err);
        op_runtime_release(g0);
        if (grc != 0) {
            PL_LOG_ERROR("startup.failed", "reason", "cannot start the AI gateway", "error", err);
            return 1;
        }
    }
    {
        op_runtime *v0 = op_runtime_acquire();
        int vrc = vx_api_start(v0->cfg, err, sizeof err);
        op_runtime_release(v0);
        if (vrc != 0) {
            PL_LOG_ERROR("startup.failed", "reason", "cannot open the vector indexes", "error",
                         err);
            return 1;
        }
    }
    if (op_api_start() != 0) {
        PL_LOG_ERROR("startup.failed", "reason", "cannot start the API watchdog");
        vx_api_stop();
        return 1;
    }
    /* hopt.host points into the config held by the published runtime, which
     * stays alive until the server has bound. */
    op_runtime *cur = op_runtime_acquire();
    op_http_server *srv = op_http_server_start(&hopt, err, sizeof err);
    op_runtime_release(cur);
    if (!srv) {
        PL_LOG_ERROR("startup.failed", "reason", err);
        op_api_stop();
        vx_api_stop();
        op_runtime_publish(NULL);
        return 1;
    }
    char addr[160], ms[32], workers[16];
    cur = op_runtime_acquire();
    snprintf(addr, sizeof addr, "%s:%u", cur->cfg->server.listen_host, op_http_server_port(srv));
    op_runtime_release(cur);
    snprintf(ms, sizeof ms, "%.1f", (double)(pl_time_mono_ns() - t0) / 1e6);
    snprintf(workers, sizeof workers, "%d", hopt.workers);
    PL_LOG_INFO("http.listening", "addr", addr, "workers", workers, "startup_ms", ms);

    for (;;) {
        int sig = 0;
        if (sigwait(&sigs, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            PL_LOG_INFO("reload.start", "signal", "SIGHUP");
            reload(config_path, listen);
            continue;
        }
        PL_LOG_INFO("shutdown.start", "signal", sig == SIGTERM ? "SIGTERM" : "SIGINT");
        break;
    }
    op_http_server_quiesce(srv);
    cur = op_runtime_acquire();
    if (cur) {
        grace = cur->cfg->server.shutdown_grace_s;
        op_runtime_release(cur);
    }
    wait_in_flight(srv, grace);
    /* Ends gateway calls still running (they answer), then flushes the
     * request logs durably. */
    gw_service_stop();
    op_http_server_stop(srv);
    /* No request runs now: apply what is pending and close the indexes. */
    vx_api_stop();
    op_api_stop();
    op_runtime_publish(NULL);
    op_plugins_drain(); /* model unloads handed to the plugin reaper */
    PL_LOG_INFO("shutdown.done");
    return 0;
}
