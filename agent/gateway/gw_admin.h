/*
 * gw_admin: the AI gateway management API, in Cloudflare's shapes, under
 * /client/v4/accounts/{account}/ai-gateway/: gateways (list, create, get,
 * replace, delete) and their logs (list with filters and cursor pagination,
 * get, raw request/response bodies, feedback, delete by filter, NDJSON
 * export, usage sums). Reference: docs/gateway-api.md.
 *
 * op_api routes every request under .../ai-gateway here after it has
 * authenticated the caller for {account}; gw_admin trusts that.
 *
 * Answers: every request is answered before gw_admin_handle returns, in the
 * Workers AI envelope ({result, success, errors, messages}; errors through
 * op_api_error_json), except the export: it is handed to a thread of its own
 * that streams the records (application/x-ndjson) as the client reads them,
 * holding at most GW_EXPORT_BUFFER_BYTES unsent, so an export of millions of
 * logs costs neither a worker nor memory proportional to its size.
 *
 * Lifetime: reg and logs must outlive every export: the agent calls
 * gw_admin_stop() (ends exports in progress and waits for their threads)
 * before it stops the HTTP server and closes the store.
 *
 * Threading: gw_admin_handle runs concurrently on any HTTP worker.
 */
#ifndef GW_ADMIN_H
#define GW_ADMIN_H

#include "config/op_config.h"
#include "gateway/gw_registry.h"
#include "http/op_http.h"
#include "logstore/ls_store.h"

/* Error codes of this API (errors[].code; docs/gateway-api.md). Invalid
 * input is op_api's 5004, unknown routes 7000, wrong methods 7001. */
enum {
    GW_ADMIN_ERR_NO_GATEWAY = 7002,  /* 404 */
    GW_ADMIN_ERR_NO_LOG = 7003,      /* 404 */
    GW_ADMIN_ERR_EXISTS = 7004,      /* 409 */
    GW_ADMIN_ERR_READ_ONLY = 7005,   /* 409: defined in the config file */
    GW_ADMIN_ERR_TOO_MANY = 7006,    /* 409: per-account gateway cap */
    GW_ADMIN_ERR_STORE = 7007,       /* 503 / 507: the log store or the disk refused */
    GW_ADMIN_ERR_BUSY = 7008,        /* 503: too many exports running */
};

/* Page sizes of the logs list. */
#define GW_LOGS_PER_PAGE_DEFAULT 50
#define GW_LOGS_PER_PAGE_MAX 1000
/* Exports running at once (more: 503 with Retry-After). */
#define GW_EXPORTS_MAX 4
/* Unsent export bytes past which the export waits for the client. */
#define GW_EXPORT_BUFFER_BYTES (1u << 20)

/*
 * r: the request; cfg: the runtime's config (held by the caller for the
 * call); account: the authenticated account; rest: the path after
 * ".../ai-gateway" (e.g. "/gateways/default/logs"); logs: the log store, or
 * NULL when none is open (log routes then answer 503).
 */
void gw_admin_handle(op_http_req *r, const op_config *cfg, const char *account, const char *rest,
                     gw_registry *reg, ls_store *logs);

/* Sets the log store's retention of every gateway of cfg's accounts (config
 * and API ones) from their settings (retention_max_logs/max_age_s). The
 * agent calls it after opening the store and after each reload; gw_admin
 * itself calls it for a gateway it creates or replaces. */
void gw_admin_apply_retention(gw_registry *reg, const op_config *cfg, ls_store *logs);

/* Ends every export in progress (their streams stop at a record boundary)
 * and waits for their threads; exports asked for later are refused (503)
 * until gw_admin_start(). */
void gw_admin_stop(void);
void gw_admin_start(void);
/* Exports running now. */
int gw_admin_exports_in_flight(void);

#endif
