/*
 * op_config: the agent's YAML configuration, parsed with libyaml into typed,
 * validated structs.
 *
 * Every error names its place as FILE:LINE:COLUMN (1-based, as editors count)
 * followed by a message: unknown keys, wrong types, out-of-range values,
 * missing required keys (reported at the mapping that lacks them), duplicate
 * keys and duplicate ids. Parsing collects all errors it can rather than
 * stopping at the first. Secrets are never echoed: not a token's sha256, not
 * a provider's api_key (nor the value of its api_key_env variable), not a
 * provider header's value; errors about those name the key and the provider.
 *
 * Ownership: op_config_load() returns a config the caller owns and releases
 * with op_config_free(); every string inside it is owned by the config. A
 * loaded config is never modified, so it may be read from any thread without
 * locks. Reload builds a new config and swaps it in (see op_runtime).
 *
 * Relative paths (data_dir, plugin dirs, model paths, policy files, lua lib
 * dir) are resolved against the directory of the config file at load time, so
 * the config works from any working directory.
 *
 * Reference: docs/config.md.
 */
#ifndef OP_CONFIG_H
#define OP_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "platform/pl_hash.h"
#include "platform/pl_log.h"

/* Input bounds: larger files and deeper nesting are refused with an error. */
#define OP_CONFIG_MAX_BYTES (1u << 20)
#define OP_CONFIG_MAX_DEPTH 32

/* Where a value came from, for errors found after parsing. */
typedef struct op_config_pos {
    int line;   /* 1-based; 0 if not from the file (a default) */
    int column; /* 1-based */
} op_config_pos;

typedef struct op_config_server {
    char *listen_host;        /* "127.0.0.1", "::1", "0.0.0.0" ... (required: server.listen) */
    uint16_t listen_port;     /* 0 = any free port */
    int workers;              /* HTTP worker threads; 0 = usable cores (default 0) */
    size_t max_body_bytes;    /* request bodies larger get 413 (default 10 MiB) */
    size_t max_header_bytes;  /* per-connection header memory (default 32 KiB) */
    int max_connections;      /* default 1024 */
    int idle_timeout_s;       /* keep-alive idle close (default 60) */
    int request_timeout_s;    /* whole inference request deadline (default 300) */
    int shutdown_grace_s;     /* SIGTERM: wait this long for in-flight (default 30) */
    op_config_pos pos;
} op_config_server;

typedef struct op_config_log {
    pl_log_level level;       /* default info */
    pl_log_format format;     /* "kv" (default) | "json" */
} op_config_log;

typedef struct op_config_token {
    char *name;                         /* label shown in logs, never the secret */
    uint8_t sha256[PL_SHA256_LEN];      /* SHA-256 of the bearer token */
    op_config_pos pos;
} op_config_token;

typedef struct op_config_account {
    char *id;                 /* [A-Za-z0-9_-]{1,64}, unique */
    char *name;               /* optional display name (defaults to id) */
    op_config_token *tokens;
    size_t n_tokens;
    op_config_pos pos;
} op_config_account;

/* A plugin-specific option: both key and value are strings as written
 * (numbers and booleans keep their YAML spelling). */
typedef struct op_config_kv {
    char *key;
    char *value;
} op_config_kv;

typedef struct op_config_model {
    char *id;                 /* catalog id, e.g. "@local/smollm2-135m-instruct" (unique) */
    char *plugin;             /* plugin name as the plugin declares it */
    char *task;               /* "text-generation", "text-embeddings", ... */
    char *path;               /* model file or directory, resolved; may be NULL */
    char *description;        /* optional */
    char **aliases;           /* more ids for the same model (unique across all ids) */
    size_t n_aliases;
    op_config_kv *options;    /* passed to the plugin unchanged */
    size_t n_options;
    op_config_pos pos;
} op_config_model;

typedef struct op_config_policy {
    char *lib_dir;            /* require("outpost.x") resolves in here (default: built-in lua/) */
    size_t memory_bytes;      /* Lua heap cap per worker state (default 8 MiB) */
    uint64_t instructions;    /* VM instruction budget per hook call (default 1,000,000) */
    char **files;             /* policy scripts, run in order */
    op_config_pos *file_pos;
    size_t n_files;
} op_config_policy;

/* --- AI gateway (docs/config.md, "gateways") -------------------------- */

typedef enum op_provider_kind {
    OP_PROVIDER_OPENAI = 0,     /* OpenAI-compatible API: {base_url}/chat/completions ... */
    OP_PROVIDER_WORKERS_AI = 1, /* Workers AI-compatible: {base_url}/ai/run/{model} */
} op_provider_kind;

/* An upstream HTTP provider of one gateway. Steps and pass-through paths name
 * it; "local" and "workers-ai" are reserved for the agent's own models. */
typedef struct op_config_provider {
    char *name;               /* [a-z0-9_-]{1,64}, unique in its gateway, not reserved */
    op_provider_kind kind;    /* kind: openai (default) | workers-ai */
    char *base_url;           /* http:// or https://, no trailing slash (required) */
    char *api_key;            /* sent as "Authorization: Bearer KEY"; never logged; may be NULL */
    char *api_key_env;        /* the environment variable api_key was read from at load, or
                               * NULL when the key was written in the file (or there is none) */
    op_config_kv *headers;    /* extra headers sent upstream, as written */
    size_t n_headers;
    int timeout_ms;           /* whole attempt (default 120000) */
    int connect_timeout_ms;   /* default 10000 */
    op_config_pos pos;
} op_config_provider;

typedef enum op_backoff {
    OP_BACKOFF_CONSTANT = 0,
    OP_BACKOFF_LINEAR = 1,
    OP_BACKOFF_EXPONENTIAL = 2,
} op_backoff;

typedef struct op_config_gateway {
    char *account;            /* must name a configured account (required) */
    char *id;                 /* [a-z0-9_-]{1,64}, unique per account (required) */
    bool authentication;      /* require a valid cf-aig-authorization (default false) */
    op_config_token *tokens;  /* gateway tokens, as account tokens (name + sha256) */
    size_t n_tokens;
    bool collect_logs;        /* write a log record per request (default true) */
    bool log_payloads;        /* keep request and response bodies in records (default true) */
    size_t max_payload_bytes; /* per body kept in a record (default 64 KiB, max 16 MiB) */
    uint64_t retention_max_logs; /* retention.max_logs: default 10,000,000; 0 = no limit */
    int64_t retention_max_age_s; /* retention.max_age_s: default 0 = no limit */
    int cache_ttl_s;          /* default TTL of the response cache; 0 = off unless cf-aig-cache-ttl */
    int request_timeout_ms;   /* per attempt; 0 = the provider's timeout (default 0) */
    int max_attempts;         /* per step, 1..5 (default 1) */
    int retry_delay_ms;       /* 0..5000 (default 100) */
    op_backoff backoff;       /* constant | linear | exponential (default exponential) */
    double rate_limit;        /* rate_limit.limit: requests per window; 0 = no gateway-wide
                               * limit (default 0) */
    double rate_limit_window_s; /* rate_limit.window_s, 1..86400 (default 60) */
    bool rate_limit_sliding;  /* rate_limit.technique: fixed (default) | sliding */
    bool sync_logs;           /* answer only once the log record is durable (default false) */
    op_config_provider *providers;
    size_t n_providers;
    op_config_pos pos;
} op_config_gateway;

/* Price of a model for cost accounting, USD per million tokens. Local models
 * without an entry get the Workers AI tier of their parameter count. */
typedef struct op_config_price {
    char *model;              /* model id (or alias) as steps name it (required) */
    double input_per_mtok;    /* input (default 0) */
    double output_per_mtok;   /* output (default 0) */
    op_config_pos pos;
} op_config_price;

/* Node-wide gateway settings: the `gateway:` section. */
typedef struct op_config_gateway_opts {
    size_t cache_bytes;       /* response cache bound, LRU beyond it (default 256 MiB) */
    int upstream_threads;     /* HTTP client threads (default 1) */
    int log_commit_interval_us; /* log store group commit window (default 2000) */
    bool log_fsync;           /* fdatasync each group commit (default true) */
    size_t log_segment_bytes; /* log segment size (default 64 MiB) */
    op_config_pos pos;
} op_config_gateway_opts;

/* Vector indexes: the `vectorize:` section (docs/config.md, docs/vectorize.md).
 * Every key takes effect at the next start. The hnsw_* values are the graph
 * parameters given to indexes created from then on (an index keeps the ones
 * it was created with). */
typedef struct op_config_vectorize {
    bool enabled;             /* serve .../vectorize/v2 and open the store (default true) */
    int max_dimensions;       /* largest index dimensions accepted, 1..65536 (default 1536) */
    int max_indexes;          /* indexes per account, 1..100000 (default 100) */
    bool fsync;               /* fdatasync each WAL group commit (default true) */
    size_t snapshot_every_bytes;       /* log bytes since the last snapshot (default 64 MiB) */
    uint64_t snapshot_every_mutations; /* mutations since the last snapshot (default 10000) */
    int write_timeout_ms;     /* a writer's wait on backpressure before 429 (default 30000) */
    int hnsw_m;               /* hnsw.m: links per node, 2..128 (default 16) */
    int hnsw_ef_construction; /* hnsw.ef_construction: build beam, 1..10000 (default 200) */
    int hnsw_ef_search;       /* hnsw.ef_search: query beam, 1..10000 (default 64) */
    op_config_pos pos;
} op_config_vectorize;

typedef struct op_config {
    char *path;               /* the file this came from, as given */
    char *base_dir;           /* its directory, for relative paths */
    op_config_server server;
    op_config_log log;
    char *data_dir;           /* default "./var" relative to the config */
    int cpu_threads;          /* devices.cpu.threads; 0 = usable cores */
    char **plugin_dirs;       /* plugins.dirs */
    size_t n_plugin_dirs;
    op_config_account *accounts;
    size_t n_accounts;
    op_config_model *models;
    size_t n_models;
    op_config_policy policy;
    op_config_gateway *gateways;
    size_t n_gateways;
    op_config_price *prices;
    size_t n_prices;
    op_config_gateway_opts gateway;
    op_config_vectorize vectorize;
} op_config;

/* One diagnostic; message already starts with "FILE:LINE:COLUMN: ". */
typedef struct op_config_error {
    char *message;
} op_config_error;

typedef struct op_config_errors {
    op_config_error *items;
    size_t n;
} op_config_errors;

/*
 * Loads and validates path. On success returns 0 and sets *out. On failure
 * returns -1, leaves *out NULL and fills errs (at least one entry; free with
 * op_config_errors_free). I/O errors are reported as "FILE:0:0: <strerror>".
 */
int op_config_load(const char *path, op_config **out, op_config_errors *errs);

/* Same, from a buffer; name is used in messages, base_dir for relative paths
 * (NULL or "." leaves them relative to the working directory). errs, in both
 * calls, is overwritten, not appended to (pass a fresh or freed one), and may
 * be NULL when only success matters. op_config_load makes base_dir absolute. */
int op_config_parse(const char *name, const char *base_dir, const char *text, size_t len,
                    op_config **out, op_config_errors *errs);

void op_config_free(op_config *cfg);
void op_config_errors_free(op_config_errors *errs);

/* Lookups on a loaded config; NULL if absent. Model lookup matches id or alias. */
const op_config_account *op_config_find_account(const op_config *cfg, const char *id);
const op_config_model *op_config_find_model(const op_config *cfg, const char *id_or_alias);
const op_config_gateway *op_config_find_gateway(const op_config *cfg, const char *account,
                                                const char *id);

/*
 * Reload (SIGHUP) contract, see docs/config.md: accounts/tokens, log, policy,
 * models, gateways and prices apply live; server.*, data_dir, devices,
 * plugins.dirs, the node-wide `gateway:` section (cache_bytes,
 * upstream_threads, log_*) and the `vectorize:` section take effect only at
 * the next start. Returns NULL when every key that needs a
 * restart is equal in old and new_cfg, else the first one that differs
 * (e.g. "server.listen"), for the reload to log. Static string; no allocation.
 */
const char *op_config_restart_required(const op_config *old, const op_config *new_cfg);

#endif
