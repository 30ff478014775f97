/*
 * gw_metrics: see gw_metrics.h.
 */
#include "gateway/gw_metrics.h"

#include <pthread.h>
#include <stdio.h>

#include "metrics/op_metrics.h"

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static op_metric *m_requests, *m_cache, *m_retries, *m_fallbacks, *m_limited, *m_tokens, *m_cost,
    *m_up, *m_ttfb, *m_logw;

static void init(void)
{
    static const char *const req_l[] = {"account", "gateway", "provider", "model", "status", NULL};
    static const char *const cache_l[] = {"account", "gateway", "result", NULL};
    static const char *const retry_l[] = {"account", "gateway", "provider", NULL};
    static const char *const gw_l[] = {"account", "gateway", NULL};
    static const char *const tok_l[] = {"account", "gateway", "provider", "model", "direction",
                                        NULL};
    static const char *const cost_l[] = {"account", "gateway", "provider", "model", NULL};
    static const char *const prov_l[] = {"provider", NULL};
    m_requests = op_metric_counter("outpost_gateway_requests_total",
                                   "Gateway requests answered, by status.", req_l);
    m_cache = op_metric_counter("outpost_gateway_cache_total",
                                "Gateway response cache lookups, by result.", cache_l);
    m_retries = op_metric_counter("outpost_gateway_retries_total",
                                  "Attempts retried on the same step.", retry_l);
    m_fallbacks = op_metric_counter("outpost_gateway_fallbacks_total",
                                    "Requests that fell back to a later step.", gw_l);
    m_limited = op_metric_counter("outpost_gateway_rate_limited_total",
                                  "Requests refused by a rate limit.", gw_l);
    m_tokens = op_metric_counter("outpost_gateway_tokens_total",
                                 "Tokens of gateway requests, in and out.", tok_l);
    m_cost = op_metric_counter("outpost_gateway_cost_usd_total",
                               "Cost of gateway requests in USD.", cost_l);
    m_up = op_metric_histogram("outpost_gateway_upstream_seconds",
                               "Duration of provider attempts.", prov_l, NULL, 0);
    m_ttfb = op_metric_histogram("outpost_gateway_upstream_ttfb_seconds",
                                 "Time from the start of an attempt to the provider's headers.",
                                 prov_l, NULL, 0);
    m_logw = op_metric_histogram("outpost_gateway_log_write_seconds",
                                 "Time to hand a log record to the log store.", gw_l, NULL, 0);
}

void gw_metrics_request(const char *account, const char *gateway, const char *provider,
                        const char *model, bool model_known, int status, int64_t tokens_in,
                        int64_t tokens_out, double cost)
{
    pthread_once(&g_once, init);
    char st[16];
    snprintf(st, sizeof st, "%d", status);
    const char *ml = !model || !*model ? "" : model_known ? model : "other";
    op_counter_inc(op_metric_with(m_requests, account, gateway, provider, ml, st));
    if (tokens_in > 0)
        op_counter_add(op_metric_with(m_tokens, account, gateway, provider, ml, "in"),
                       (double)tokens_in);
    if (tokens_out > 0)
        op_counter_add(op_metric_with(m_tokens, account, gateway, provider, ml, "out"),
                       (double)tokens_out);
    if (cost > 0)
        op_counter_add(op_metric_with(m_cost, account, gateway, provider, ml), cost);
}

void gw_metrics_cache(const char *account, const char *gateway, bool hit)
{
    pthread_once(&g_once, init);
    op_counter_inc(op_metric_with(m_cache, account, gateway, hit ? "hit" : "miss"));
}

void gw_metrics_retry(const char *account, const char *gateway, const char *provider)
{
    pthread_once(&g_once, init);
    op_counter_inc(op_metric_with(m_retries, account, gateway, provider));
}

void gw_metrics_fallback(const char *account, const char *gateway)
{
    pthread_once(&g_once, init);
    op_counter_inc(op_metric_with(m_fallbacks, account, gateway));
}

void gw_metrics_rate_limited(const char *account, const char *gateway)
{
    pthread_once(&g_once, init);
    op_counter_inc(op_metric_with(m_limited, account, gateway));
}

void gw_metrics_upstream_duration(const char *provider, double seconds)
{
    pthread_once(&g_once, init);
    op_histogram_observe(op_metric_with(m_up, provider), seconds);
}

void gw_metrics_upstream_ttfb(const char *provider, double seconds)
{
    pthread_once(&g_once, init);
    op_histogram_observe(op_metric_with(m_ttfb, provider), seconds);
}

void gw_metrics_log_write(const char *account, const char *gateway, double seconds)
{
    pthread_once(&g_once, init);
    op_histogram_observe(op_metric_with(m_logw, account, gateway), seconds);
}
