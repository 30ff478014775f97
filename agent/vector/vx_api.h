/*
 * vx_api: the Vectorize v2 REST API of the agent, in Cloudflare's shapes,
 * under /client/v4/accounts/{account}/vectorize/v2/indexes, so that
 * Cloudflare's SDKs work against the agent with only a base URL change.
 * Reference: docs/vectorize.md.
 *
 * Routes (after ".../vectorize/v2"):
 *   POST   /indexes                          create (config {dimensions, metric} or {preset})
 *   GET    /indexes                          list
 *   GET    /indexes/{name}                   get
 *   DELETE /indexes/{name}                   delete
 *   GET    /indexes/{name}/info              dimensions, vectorCount, processedUpTo...
 *   POST   /indexes/{name}/insert | /upsert  NDJSON, {"vectors": [...]}, a JSON array, or a
 *                                            multipart/form-data part holding NDJSON
 *   POST   /indexes/{name}/query             vector (or vectorId / id, or text)
 *   POST   /indexes/{name}/get_by_ids        {ids}
 *   POST   /indexes/{name}/delete_by_ids     {ids}
 *   GET    /indexes/{name}/list              ?count=&cursor=
 *   POST   /indexes/{name}/metadata_index/create  {propertyName, indexType}
 *   GET    /indexes/{name}/metadata_index/list
 *   POST   /indexes/{name}/metadata_index/delete  {propertyName}
 *
 * op_api routes every request under .../vectorize/v2/ here after it has
 * authenticated the caller for {account}; vx_api trusts that.
 *
 * Answers: every request is answered before vx_api_handle returns, in the
 * envelope {result, success, errors, messages}; errors through
 * op_api_error_json, with a message that names the field or the limit
 * (4xx for the caller's mistakes, 429 on backpressure, 503 when the disk or
 * an embedding model failed). Mutations answer once durable (the mutation
 * id); they become visible to queries once applied (vx_index.h).
 *
 * Text in: an index created with a preset that names a text-embeddings
 * model the agent serves (id or alias) embeds "text" (insert/upsert vector
 * objects, query) with that model: the handler submits to the model and
 * waits for it on the HTTP worker, bounded by server.request_timeout_s.
 *
 * Lifetime: vx_api_start opens the store (<data_dir>/vectorize) once at
 * start-up; vx_api_stop closes it after the HTTP server stopped (no request
 * may be running). The store is not reopened on reload: the `vectorize:`
 * section takes effect at the next start.
 *
 * Threading: vx_api_handle runs concurrently on any HTTP worker; requests
 * on one index share it through references (vx_store.h).
 *
 * Metrics (docs/metrics.md): outpost_vectorize_requests_total{op,status},
 * outpost_vectorize_query_duration_seconds, outpost_vectorize_mutations_total{op},
 * outpost_vectorize_mutation_vectors_total{op}, and per index
 * ({account,index}) outpost_vectorize_vectors, _memory_bytes, _disk_bytes,
 * _pending_mutations, _open_seconds, refreshed by vx_api_refresh_metrics.
 */
#ifndef VX_API_H
#define VX_API_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "config/op_config.h"
#include "http/op_http.h"
#include "runtime/op_runtime.h"

/* Error codes of this API (errors[].code; docs/vectorize.md). Invalid input
 * is op_api's 5004 (400), unknown routes 7000, wrong methods 7001. */
enum {
    VX_API_ERR_NO_INDEX = 7100,  /* 404: no index of that name in the account */
    VX_API_ERR_EXISTS = 7101,    /* 409: the index or metadata index exists */
    VX_API_ERR_TOO_MANY = 7102,  /* 409: vectorize.max_indexes reached */
    VX_API_ERR_NOT_FOUND = 7103, /* 404: no such vector (query by id), metadata index */
    VX_API_ERR_BUSY = 7104,      /* 429: too many mutations pending (Retry-After) */
    VX_API_ERR_STORE = 7105,     /* 503: the disk failed, or the index is closing */
    VX_API_ERR_EMBED = 7106,     /* 503 / 4xx: the embedding model failed or refused */
    VX_API_ERR_DISABLED = 7107,  /* 404: vectorize.enabled is false */
};

/* Texts embedded per inference request (the rest in further requests). */
#define VX_API_EMBED_BATCH 128

/* Opens the store under <cfg->data_dir>/vectorize with cfg->vectorize's
 * settings (nothing when vectorize.enabled is false). Indexes that fail to
 * open are logged (vectorize.index_failed) and not served; that does not
 * fail the start. Returns 0, or -1 with the reason in err. */
int vx_api_start(const op_config *cfg, char *err, size_t errlen);
/* Closes the store (pending mutations are applied first). */
void vx_api_stop(void);

/* r: the request; rt: the runtime held by the caller for the call; account:
 * the authenticated account; rest: the path after ".../vectorize/v2" (e.g.
 * "/indexes/docs/query"). */
void vx_api_handle(op_http_req *r, op_runtime *rt, const char *account, const char *rest);

/* Sets the per-index gauges (vectors, memory, disk, pending mutations) of
 * every index of the configured accounts; op_api calls it before rendering
 * /metrics, so a scrape sees the state of that moment. */
void vx_api_refresh_metrics(void);

/* For tests: one NDJSON line as insert/upsert read it. Returns the object
 * (one reference; NULL with jerr when the line is not valid JSON, exactly
 * as json_loadb(line, len, JSON_REJECT_DUPLICATES) would judge it). When
 * *have_values, its top-level "values" was an array of dim numbers, read
 * into values[0..dim) as jansson and a float cast would read them, and the
 * object holds null in its place; else the object is jansson's own parse
 * and values is unspecified. scratch/cap: a buffer the call may grow and
 * the caller frees (reused across lines). */
json_t *vx_api_load_line(const char *line, size_t len, uint32_t dim, float *values,
                         bool *have_values, char **scratch, size_t *cap, json_error_t *jerr);

#endif
