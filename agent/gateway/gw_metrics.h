/*
 * gw_metrics: the gateway's Prometheus metrics (docs/metrics.md).
 *
 *   outpost_gateway_requests_total{account,gateway,provider,model,status}  counter
 *   outpost_gateway_cache_total{account,gateway,result}   counter, result = hit | miss
 *   outpost_gateway_retries_total{account,gateway,provider} counter
 *   outpost_gateway_fallbacks_total{account,gateway}      counter
 *   outpost_gateway_rate_limited_total{account,gateway}   counter
 *   outpost_gateway_tokens_total{account,gateway,provider,model,direction} counter, in | out
 *   outpost_gateway_cost_usd_total{account,gateway,provider,model} counter
 *   outpost_gateway_upstream_seconds{provider}            histogram, per attempt
 *   outpost_gateway_upstream_ttfb_seconds{provider}       histogram, to response headers
 *   outpost_gateway_log_write_seconds{account,gateway}    histogram, handing a record to the store
 *
 * Label values: account, gateway and provider come from the config (bounded);
 * a model that is neither a configured local model nor priced in the config
 * is counted as "other", so that client-chosen names cannot grow the series
 * without bound. Threading: thread-safe (op_metrics).
 */
#ifndef GW_METRICS_H
#define GW_METRICS_H

#include <stdbool.h>
#include <stdint.h>

/* model_known: the model is a configured or priced one (else it is
 * counted as "other"); the caller decides from the request's config. */
void gw_metrics_request(const char *account, const char *gateway, const char *provider,
                        const char *model, bool model_known, int status, int64_t tokens_in,
                        int64_t tokens_out, double cost);
void gw_metrics_cache(const char *account, const char *gateway, bool hit);
void gw_metrics_retry(const char *account, const char *gateway, const char *provider);
void gw_metrics_fallback(const char *account, const char *gateway);
void gw_metrics_rate_limited(const char *account, const char *gateway);
void gw_metrics_upstream_duration(const char *provider, double seconds);
void gw_metrics_upstream_ttfb(const char *provider, double seconds);
void gw_metrics_log_write(const char *account, const char *gateway, double seconds);

#endif
