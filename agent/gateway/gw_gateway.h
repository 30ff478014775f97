/*
 * gw_gateway: the AI gateway service of the agent and its HTTP surfaces.
 *
 * The service owns what every gateway request shares: the response cache,
 * the rate limiter, the upstream HTTP client, the log store and the gateway
 * registry. It is process-wide (one per agent), started once after the
 * first runtime snapshot is published and stopped at shutdown after the
 * HTTP server stopped taking requests.
 *
 * Surfaces (docs/gateway.md):
 *   POST /v1/{account}/{gateway}                     universal endpoint
 *   GET  /v1/{account}/{gateway}  (Upgrade)          WebSocket API
 *   POST /v1/{account}/{gateway}/{provider}/{path}   provider pass-through
 *   POST /v1/{account}/{gateway}/compat/chat/completions   OpenAI-compatible,
 *        "model": "{provider}/{model}"
 *   /client/v4/accounts/{account}/ai-gateway/...     management and logs API
 *
 * Threading: every function is thread-safe; handlers run on HTTP workers.
 * Errors: handlers answer every request (the Workers AI error envelope).
 */
#ifndef GW_GATEWAY_H
#define GW_GATEWAY_H

#include <stdbool.h>

#include "gateway/gw_cache.h"
#include "gateway/gw_limit.h"
#include "gateway/gw_registry.h"
#include "gateway/gw_upstream.h"
#include "http/op_http.h"
#include "logstore/ls_store.h"
#include "runtime/op_runtime.h"

/* Opens data_dir/logs and data_dir/gateways, creates the cache, limiter and
 * upstream client from cfg->gateway. Returns 0, or -1 with err. */
int gw_service_start(const op_config *cfg, char *err, size_t errlen);
/* Cancels requests in flight (the upstream client), flushes the log store
 * and frees everything. */
void gw_service_stop(void);
/* Applies per-gateway settings that live in the log store (retention) after
 * a reload. */
void gw_service_configure(const op_config *cfg);

gw_cache *gw_svc_cache(void);
gw_limiter *gw_svc_limiter(void);
gw_upstream *gw_svc_upstream(void);
ls_store *gw_svc_logs(void);
gw_registry *gw_svc_registry(void);
/* Gateway requests in flight (for shutdown), and cancelling them all. */
int gw_svc_in_flight(void);
void gw_svc_cancel_all(void);

/* True if path (the whole request path) is a gateway route: /v1/{a}/{g}...
 * with a configured account {a} of cfg, that is not one of the agent's own
 * OpenAI-compatible routes. cfg NULL: the current runtime's config (taken
 * and released here; pass the request's when the caller holds it). */
bool gw_is_gateway_path(const op_config *cfg, const char *path);
/* Answers a gateway route (rt: the request's snapshot, borrowed). */
void gw_handle(op_http_req *r, op_runtime *rt);

#endif
