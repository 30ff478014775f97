/*
 * gw_registry: the set of AI gateways, from two sources.
 *
 *  - The config file (op_config.gateways): read-only here. They live in the
 *    runtime snapshot (op_runtime) and change only on reload; the caller
 *    passes the snapshot's config to every lookup, so a request sees the
 *    gateways of the snapshot it holds.
 *  - The management API (gw_admin): created, replaced and deleted at run
 *    time, and persisted, one JSON file per gateway, under
 *    DATA_DIR/gateways/ACCOUNT.ID.json (write a temp file, fsync, rename,
 *    fsync the directory: a crash leaves the old or the new file, never a
 *    torn one). Files are loaded at open; a file that does not parse, or
 *    whose contents are invalid, is skipped with a logged reason (event
 *    gateway.registry.skip) and left in place for the operator.
 *
 * A config gateway shadows an API gateway with the same account and id
 * (possible when a reload adds it to the file): lookups and listings show
 * the config one, and the API one reappears if the config entry goes away.
 *
 * API gateways have the defaults of config ones (gw_gateway_defaults), no
 * providers (providers, which hold upstream secrets, are config-only) and no
 * gateway tokens: with authentication on, such a gateway accepts the
 * account's API tokens in cf-aig-authorization.
 *
 * Ownership: each API gateway is an immutable, refcounted op_config_gateway
 * the registry owns. A lookup hands out a view holding one reference; an
 * update publishes a new gateway in its place and the old one is freed with
 * its last view. Views of config gateways point into the caller's config and
 * are valid as long as the caller holds that config.
 *
 * Threading: every function is thread-safe. gw_registry_get takes a read
 * lock for a binary search and one atomic increment; it never allocates.
 * Writers (create/replace/delete) are serialized among themselves and hold
 * the read side off only for the pointer swap, not for the file I/O.
 *
 * Errors: negative errno values: -EINVAL (bad settings, err says which),
 * -ENOENT, -EEXIST, -EROFS (defined in the config file), -EDQUOT (the
 * per-account cap), -ENOMEM, or the errno of a failed write (the in-memory
 * set is unchanged then).
 */
#ifndef GW_REGISTRY_H
#define GW_REGISTRY_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/op_config.h"

/* Longest gateway id, and the id alphabet: [a-z0-9_-]{1,64}. */
#define GW_ID_MAX 64
/* Bounds of API-settable values (the same as the config file's). */
#define GW_MAX_PAYLOAD_BYTES_MAX (16u << 20)
#define GW_MAX_ATTEMPTS_MAX 5
#define GW_RETRY_DELAY_MS_MAX 5000
#define GW_RATE_WINDOW_S_MAX 86400
#define GW_CACHE_TTL_S_MAX (30 * 86400)
/* Most gateways the API may create per account (config ones not counted). */
#define GW_API_GATEWAYS_PER_ACCOUNT_MAX 1000

typedef struct gw_registry gw_registry;

/* Opens DATA_DIR/gateways (created if missing) and loads its files.
 * Returns NULL with the reason in err when the directory cannot be created
 * or read. Corrupt files do not fail the open. */
gw_registry *gw_registry_open(const char *data_dir, char *err, size_t errlen);
/* Frees the registry. Views still held must have been released before. */
void gw_registry_close(gw_registry *reg);

typedef struct gw_gateway_view {
    const op_config_gateway *cfg;  /* valid until release */
    bool from_api;
    int64_t created_ms, modified_ms; /* wall ms; 0 for config ones */
    void *ref_;                      /* private */
} gw_gateway_view;

/* Finds account/id among cfg's gateways first (cfg may be NULL), then the
 * API-created ones. Returns true and fills *out (release it), else false
 * (and *out is zeroed, so releasing it is harmless). */
bool gw_registry_get(gw_registry *reg, const op_config *cfg, const char *account, const char *id,
                     gw_gateway_view *out);
/* Drops the view's reference; v is zeroed. NULL or zeroed views are fine. */
void gw_gateway_view_release(gw_gateway_view *v);
/* Every gateway of an account: cfg's in config order, then the API ones by
 * id (skipping any a config one shadows). The views passed to fn are valid
 * only during the call (take none of their pointers beyond it). fn runs
 * under the registry's read lock: it must not call the registry (a writer
 * would deadlock) and should be quick. */
void gw_registry_each(gw_registry *reg, const op_config *cfg, const char *account,
                      void (*fn)(const gw_gateway_view *v, void *ctx), void *ctx);
/* Number of API gateways (all accounts), for tests and metrics. */
size_t gw_registry_api_count(gw_registry *reg);

/* ---- writers: settings carry everything but account and id ---- */

/* Creates account/id from settings (copied; its account, id, tokens and
 * providers are ignored). -EEXIST if account/id exists in cfg or the API
 * set, -EINVAL if id is malformed, -EDQUOT past
 * GW_API_GATEWAYS_PER_ACCOUNT_MAX. On success fills *out if not NULL. */
int gw_registry_create(gw_registry *reg, const op_config *cfg, const char *account,
                       const char *id, const op_config_gateway *settings, gw_gateway_view *out,
                       char *err, size_t errlen);
/* Replaces the settings of an API gateway (created_ms kept, modified_ms
 * now). -EROFS if cfg defines account/id, -ENOENT if absent. */
int gw_registry_replace(gw_registry *reg, const op_config *cfg, const char *account,
                        const char *id, const op_config_gateway *settings, gw_gateway_view *out,
                        char *err, size_t errlen);
/* Deletes an API gateway and its file. -EROFS / -ENOENT as replace. */
int gw_registry_delete(gw_registry *reg, const op_config *cfg, const char *account,
                       const char *id, char *err, size_t errlen);

/* ---- settings and their JSON form (shared with gw_admin) ---- */

/* Fills g with the defaults of a gateway (see op_config.h); pointers NULL. */
void gw_gateway_defaults(op_config_gateway *g);
/* True if id matches [a-z0-9_-]{1,64}. */
bool gw_id_valid(const char *id);
/*
 * Applies the keys of a JSON object to g (unmentioned keys keep g's values;
 * null sets a key's default). Keys: Cloudflare's cache_ttl, collect_logs,
 * rate_limiting_interval, rate_limiting_limit, rate_limiting_technique,
 * authentication, log_management, log_management_strategy,
 * cache_invalidate_on_update, logpush; Outpost's max_attempts,
 * retry_delay_ms, backoff, log_payloads, max_payload_bytes,
 * request_timeout_ms, log_max_age_s, sync_logs; and the read-only keys the
 * JSON form shows (id, created_at, modified_at, source), which are ignored
 * (the caller checks id). Any other key, a wrong type or an out-of-range
 * value: returns -EINVAL with "KEY: why" in err.
 */
int gw_gateway_apply_json(op_config_gateway *g, const json_t *obj, char *err, size_t errlen);
/* The JSON form of a gateway, as the management API shows it (new
 * reference, or NULL when out of memory). */
json_t *gw_gateway_to_json(const gw_gateway_view *v);

#endif
