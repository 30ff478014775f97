/*
 * outpost/plugin.h: the Outpost model/task plugin SDK.
 *
 * A plugin is a shared library that serves one or more tasks
 * ("text-generation", "text-embeddings", ...) for the models it can load. The
 * agent (the host) loads it with dlopen(), checks its ABI, asks it to load the
 * models named in the agent's config onto a device partition, and submits
 * inference requests to those model instances. Results and streamed output
 * come back through the host API table the plugin receives at init.
 *
 * ---------------------------------------------------------------------------
 * Versioning
 * ---------------------------------------------------------------------------
 * OUTPOST_PLUGIN_ABI_MAJOR changes when anything in this file changes in a way
 * that breaks binaries: the host refuses a plugin whose major differs from its
 * own. OUTPOST_PLUGIN_ABI_MINOR grows when something is added at the END of a
 * struct or table; the host refuses a plugin whose minor is below
 * OUTPOST_PLUGIN_ABI_MINOR_MIN (the oldest it still understands), and reads
 * fields past a plugin's own struct_size as absent. Tables therefore only grow
 * at the end, and each field added records the minor it arrived in. A plugin
 * built against a newer minor than the host's still loads: before it uses a
 * host API field added after minor 0 it checks host->struct_size (or
 * host->abi_minor), and fails init() with OUTPOST_ERR_UNSUPPORTED if it
 * cannot do without it. abi_major and abi_minor stay the first two fields of
 * outpost_plugin in every major, so any host can read them.
 *
 * Every plugin also embeds OUTPOST_PLUGIN_BUILD_SIGNATURE, a string of the
 * ABI major and of the type sizes and byte order the struct layouts below
 * depend on, as its compiler saw them (the preprocessor cannot see sizeof of
 * a struct, so struct sizes are checked separately through struct_size). A
 * mismatch (another data model, another byte order) is refused with both
 * signatures in the log line, instead of crashing later. Enums are assumed
 * int-sized: never build a plugin with -fshort-enums.
 *
 * ---------------------------------------------------------------------------
 * Entry point
 * ---------------------------------------------------------------------------
 * A plugin exports one symbol, OUTPOST_PLUGIN_ENTRY ("outpost_plugin_entry"):
 *
 *     OUTPOST_PLUGIN_EXPORT const outpost_plugin *outpost_plugin_entry(void);
 *
 * It returns a pointer to a static, immutable descriptor; it must not
 * allocate, start threads or touch the host. Use OUTPOST_PLUGIN_DEFINE().
 *
 * ---------------------------------------------------------------------------
 * Errors
 * ---------------------------------------------------------------------------
 * Every fallible call returns outpost_error*: NULL on success, else an error
 * made with host->error_new() (a code and a message). Ownership of a returned
 * error passes to the caller (the host frees errors returned to it; a plugin
 * frees errors the host returns to it with host->error_free()). Error codes map
 * to HTTP statuses at the API: INVALID_ARGUMENT 400, NOT_FOUND 404,
 * RESOURCE_EXHAUSTED 429, UNAVAILABLE 503, CANCELLED 499, DEADLINE_EXCEEDED
 * 504, UNSUPPORTED 400, INTERNAL 500. A message is shown to API clients: say
 * what was wrong with their input, not where in the plugin it was found.
 *
 * ---------------------------------------------------------------------------
 * Objects and ownership
 * ---------------------------------------------------------------------------
 * All handles are opaque.
 * - outpost_plugin_state: the plugin's global state, made by init(), freed by
 *   fini(). One per loaded plugin.
 * - outpost_model: one loaded model instance on one device partition, made by
 *   model_load(), freed by model_unload(). The host keeps it until no request
 *   uses it.
 * - outpost_request: one inference request, created and owned by the host. It
 *   stays valid from submit() until the plugin calls host->request_complete()
 *   for it, exactly once; after that call the plugin must not touch it. While
 *   the host runs cancel() for a request, its address is not reused for
 *   another request, so a plugin may look it up by address in its own tables
 *   (it may have completed meanwhile: then it is simply not found).
 *   Strings the host hands out through a request (input body, model id) live
 *   as long as the request.
 *
 * ---------------------------------------------------------------------------
 * Threading
 * ---------------------------------------------------------------------------
 * - init() and fini() are called once per load, from one thread, with no
 *   other call to that instance in flight. A config reload loads the plugins
 *   again while the previous load still serves its last requests; dlopen()
 *   shares one mapping of the library, so init() may run again before the
 *   earlier fini(). Keep all state in outpost_plugin_state, never in globals.
 * - model_load() and model_unload() may be called from any host thread, but
 *   never concurrently with any other call on the same model instance.
 * - submit() and cancel() may be called concurrently from any number of host
 *   threads, for the same or different model instances: a plugin queues work
 *   in submit() and returns quickly; it must not run a forward pass on the
 *   caller's thread (that thread serves HTTP).
 * - The host API functions (outpost_host_api) are thread-safe and may be
 *   called from any thread, including plugin-owned worker threads, and from
 *   inside submit() and cancel() themselves (a plugin may complete a request
 *   synchronously).
 * - The host never calls model_unload() or fini() from inside a host API
 *   call, so a plugin worker that completes the last request of a model can
 *   still be joined by model_unload().
 * - request_emit() calls for one request must not be concurrent with each
 *   other or with its request_complete(): one request, one producer.
 *
 * ---------------------------------------------------------------------------
 * Request data
 * ---------------------------------------------------------------------------
 * The input is the request body as UTF-8 JSON in the Workers AI shape of the
 * model's task (for text generation: prompt or messages, max_tokens,
 * temperature, ... ; for embeddings: {"text": "..." | ["...", ...]}). The host
 * has already parsed it as a JSON object, applied the policy's rewrites and
 * translated OpenAI-style bodies. The result is a JSON value, the "result" of
 * the Workers AI envelope, copied by the host. Streaming requests emit UTF-8
 * text pieces (tokens) with request_emit() and then complete with a result
 * that carries the usage.
 */
#ifndef OUTPOST_PLUGIN_H
#define OUTPOST_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define OUTPOST_PLUGIN_ABI_MAJOR 1
#define OUTPOST_PLUGIN_ABI_MINOR 1
/* The oldest minor of this major that this header's host still accepts. */
#define OUTPOST_PLUGIN_ABI_MINOR_MIN 0

#define OUTPOST_PLUGIN_ENTRY "outpost_plugin_entry"
#define OUTPOST_PLUGIN_EXPORT __attribute__((visibility("default")))

/* ------------------------------------------------------------------------ */
/* Opaque handles                                                            */
/* ------------------------------------------------------------------------ */

typedef struct outpost_error outpost_error;
typedef struct outpost_plugin_state outpost_plugin_state;
typedef struct outpost_model outpost_model;
typedef struct outpost_request outpost_request;
typedef struct outpost_host_api outpost_host_api;
typedef struct outpost_host_model outpost_host_model; /* the host's side of a model (minor 1) */

typedef enum outpost_error_code {
    OUTPOST_ERR_INTERNAL = 1,
    OUTPOST_ERR_INVALID_ARGUMENT = 2,
    OUTPOST_ERR_NOT_FOUND = 3,
    OUTPOST_ERR_UNSUPPORTED = 4,
    OUTPOST_ERR_RESOURCE_EXHAUSTED = 5, /* queue full, out of KV cache: retry later */
    OUTPOST_ERR_UNAVAILABLE = 6,        /* model not ready, shutting down */
    OUTPOST_ERR_CANCELLED = 7,          /* host called cancel() */
    OUTPOST_ERR_DEADLINE_EXCEEDED = 8,
} outpost_error_code;

/* Tasks, by the names Workers AI uses. A plugin lists the ones it serves. */
#define OUTPOST_TASK_TEXT_GENERATION "text-generation"
#define OUTPOST_TASK_TEXT_EMBEDDINGS "text-embeddings"
#define OUTPOST_TASK_TEXT_CLASSIFICATION "text-classification"

/* ------------------------------------------------------------------------ */
/* Devices                                                                   */
/* ------------------------------------------------------------------------ */

typedef enum outpost_device_kind {
    OUTPOST_DEVICE_CPU = 0,
    OUTPOST_DEVICE_CUDA = 1, /* road step 7 */
} outpost_device_kind;

/* A partition of the server's hardware a model instance runs on. Filled by the
 * host; valid for the duration of model_load() (copy what you keep). */
typedef struct outpost_device {
    uint32_t struct_size;       /* sizeof(outpost_device) as the host built it */
    outpost_device_kind kind;
    int index;                  /* device index within its kind (0 for the CPU) */
    int threads;                /* CPU threads this instance may use (>= 1) */
    const char *name;           /* "cpu", "cuda:0" ... */
} outpost_device;

/* ------------------------------------------------------------------------ */
/* Models                                                                    */
/* ------------------------------------------------------------------------ */

/* One plugin-specific option from the agent config (strings as written). */
typedef struct outpost_option {
    const char *key;
    const char *value;
} outpost_option;

/* What the host asks a plugin to load. Valid during model_load() only. */
typedef struct outpost_model_config {
    uint32_t struct_size;
    const char *id;             /* the catalog id, e.g. "@local/smollm2-135m-instruct" */
    const char *task;           /* one of the tasks the plugin declared */
    const char *path;           /* model file or directory; NULL if none was configured */
    const outpost_option *options;
    size_t n_options;
    /* ---- ABI minor 1 ---- */
    /* The host's handle for this model instance, for host->model_metric().
     * Valid from model_load() until model_unload() returns. Read it only if
     * struct_size covers it (an older host leaves it out). */
    outpost_host_model *host_model;
} outpost_model_config;

/* What a loaded model reports about itself, for the catalog and scheduling.
 * The host zero-fills it and sets struct_size; the plugin fills in what it
 * knows, and never writes past struct_size (an older host has a smaller
 * struct). Strings must be static or owned by the model: the host copies them
 * as soon as model_load() returns. */
typedef struct outpost_model_info {
    uint32_t struct_size;
    const char *description;    /* one line for the catalog; may be NULL */
    int64_t context_window;     /* tokens; 0 if not applicable */
    int64_t parameters;         /* parameter count; 0 if unknown */
    int64_t dimensions;         /* embedding width; 0 if not applicable */
    int64_t max_batch;          /* requests decoded together; 0 = plugin decides */
    int64_t max_queue;          /* queued requests before RESOURCE_EXHAUSTED; 0 = unbounded */
} outpost_model_info;

/* ------------------------------------------------------------------------ */
/* The host API: what a plugin may call. All functions are thread-safe.      */
/* ------------------------------------------------------------------------ */

/* Per-model measurements a plugin reports with host->model_metric() (ABI
 * minor 1); the host turns them into Prometheus series labelled with the
 * model id (docs/metrics.md). Ids are stable; the host ignores ids it does
 * not know, so a plugin may report newer ones to an older host. */
typedef enum outpost_model_metric {
    /* gauges: value replaces the previous one */
    OUTPOST_METRIC_QUEUE_DEPTH = 1,        /* requests accepted, waiting to start */
    OUTPOST_METRIC_RUNNING = 2,            /* requests being computed */
    OUTPOST_METRIC_KV_USED_TOKENS = 3,     /* KV cache positions in use (or reserved) */
    OUTPOST_METRIC_KV_CAPACITY_TOKENS = 4, /* KV cache positions in all */
    /* histograms: one observation per call */
    OUTPOST_METRIC_BATCH_SIZE = 5,         /* requests computed together in one step */
    OUTPOST_METRIC_QUEUE_WAIT_SECONDS = 6, /* submit() to the start of its compute */
    OUTPOST_METRIC_TTFT_SECONDS = 7,       /* submit() to the first generated token */
    OUTPOST_METRIC_ITL_SECONDS = 8,        /* between two generated tokens of one request */
    /* counters: value is added */
    OUTPOST_METRIC_PROMPT_TOKENS = 9,      /* input tokens processed (prompts, texts embedded) */
    OUTPOST_METRIC_GENERATED_TOKENS = 10,  /* output tokens generated */
} outpost_model_metric;

typedef enum outpost_log_level {
    OUTPOST_LOG_DEBUG = 0,
    OUTPOST_LOG_INFO = 1,
    OUTPOST_LOG_WARN = 2,
    OUTPOST_LOG_ERROR = 3,
} outpost_log_level;

typedef struct outpost_host_api {
    uint32_t struct_size;       /* sizeof as the host built it: check before using fields past minor 0 */
    uint32_t abi_major;
    uint32_t abi_minor;

    /* Errors. error_new copies message (NULL reads as ""; very long messages
     * are truncated); a code outside outpost_error_code becomes
     * OUTPOST_ERR_INTERNAL. The returned error is owned by the caller until
     * handed to the host. Never returns NULL (falls back to a static
     * out-of-memory error that error_free ignores). error_free(NULL) is a
     * no-op. */
    outpost_error *(*error_new)(outpost_error_code code, const char *message);
    outpost_error_code (*error_code)(const outpost_error *err);
    const char *(*error_message)(const outpost_error *err);
    void (*error_free)(outpost_error *err);

    /* Structured log line from the plugin; host is the table the plugin got
     * at init (each plugin gets its own table, which is how the host knows
     * to add plugin=<name>). event is a dotted name ("echo.queue_full"). */
    void (*log)(const outpost_host_api *host, outpost_log_level level, const char *event,
                const char *message);

    /* Request accessors: valid until request_complete(). */
    const char *(*request_model_id)(const outpost_request *req);
    const char *(*request_task)(const outpost_request *req);
    /* The input JSON object (see "Request data"), NUL-terminated; len may
     * be NULL. */
    const char *(*request_body)(const outpost_request *req, size_t *len);
    /* 1 if the client asked for a stream (emit pieces), else 0. */
    int (*request_stream)(const outpost_request *req);
    /* 1 once the host wants this request to stop (client gone, deadline);
     * the plugin should then complete it soon with OUTPOST_ERR_CANCELLED. */
    int (*request_cancelled)(const outpost_request *req);
    /* Opaque per-request slot for the plugin's own bookkeeping. */
    void (*request_set_user)(outpost_request *req, void *user);
    void *(*request_user)(const outpost_request *req);

    /* Streams one piece of UTF-8 text to the client (copied). Returns 0, or
     * -1 if the client is gone or the request was cancelled (then stop and
     * complete with CANCELLED). Ignored (returns 0) when request_stream() is
     * 0; a call after request_complete() is a plugin bug, logged, returns -1. */
    int (*request_emit)(outpost_request *req, const char *text, size_t len);

    /* Ends the request, exactly once. On success err is NULL and result_json
     * is the JSON "result" value, len bytes, NUL not required (copied; for
     * streams it carries "usage"). On failure err's ownership passes to the
     * host and result_json is ignored. The host checks result_json is valid
     * JSON: invalid or NULL JSON without an error completes the request with
     * OUTPOST_ERR_INTERNAL. A second call for the same request is a plugin
     * bug: logged, ignored (err freed). */
    void (*request_complete)(outpost_request *req, const char *result_json, size_t len,
                             outpost_error *err);
    /* ---- ABI minor 0 ends here; later minors append below. ---- */

    /* ---- ABI minor 1 ---- */
    /* Reports one measurement for a model (see outpost_model_metric), from
     * any thread; lock-free on the host side, cheap enough for every token.
     * hm is cfg->host_model from model_load(). NULL hm, an unknown metric or
     * a NaN value is ignored. */
    void (*model_metric)(outpost_host_model *hm, outpost_model_metric metric, double value);
} outpost_host_api;

/* ------------------------------------------------------------------------ */
/* The plugin descriptor: what a plugin provides.                            */
/* ------------------------------------------------------------------------ */

typedef struct outpost_plugin {
    /* ---- identification (required) ---- */
    uint32_t abi_major;         /* OUTPOST_PLUGIN_ABI_MAJOR the plugin was built with */
    uint32_t abi_minor;         /* OUTPOST_PLUGIN_ABI_MINOR the plugin was built with */
    uint32_t struct_size;       /* sizeof(outpost_plugin) as the plugin was built */
    const char *build_signature;/* OUTPOST_PLUGIN_BUILD_SIGNATURE */
    const char *name;           /* unique among loaded plugins; [a-z0-9_-]{1,64} */
    const char *version;        /* the plugin's own version, free-form, non-NULL */
    const char *const *tasks;   /* NULL-terminated, non-empty list of task names served */

    /* ---- lifecycle (required) ---- */
    /* Called once after the ABI checks. host stays valid until fini(). On
     * error, leave nothing running: the library is unloaded next. */
    outpost_error *(*init)(const outpost_host_api *host, outpost_plugin_state **state);
    /* Called once, after every model was unloaded; join your threads. */
    void (*fini)(outpost_plugin_state *state);

    /* ---- models (required) ---- */
    /* Loads one model instance on dev. Fill info (see outpost_model_info). */
    outpost_error *(*model_load)(outpost_plugin_state *state, const outpost_model_config *cfg,
                                 const outpost_device *dev, outpost_model **model,
                                 outpost_model_info *info);
    /* Frees a model. The host calls it only once every request it submitted
     * to the model has completed. */
    void (*model_unload)(outpost_model *model);

    /* ---- requests (required) ---- */
    /* Accepts requests for asynchronous execution. For each request the
     * plugin will call request_complete() exactly once, possibly before
     * submit() returns. If submit() itself returns an error, NO request of
     * the batch was accepted and the plugin must not complete any of them. */
    outpost_error *(*submit)(outpost_model *model, outpost_request *const *reqs, size_t n);
    /* Asks the plugin to stop a submitted request early; the plugin still
     * completes it (with OUTPOST_ERR_CANCELLED, or normally if it already
     * finished). May be called for a request that already completed
     * concurrently: ignore unknown requests. */
    void (*cancel)(outpost_model *model, outpost_request *req);
    /* ---- ABI minor 0 ends here; later minors append below. ---- */

    /* ---- ABI minor 1 (optional: NULL, or absent in an older plugin) ---- */
    /* How many input tokens body (a request input, as submit() would get it)
     * amounts to for this model, counted with the model's own tokenizer and
     * chat template; for policies and rate limits, before the request is
     * submitted. Runs on an HTTP thread: it must be thread-safe, must not
     * queue or compute anything but the count, and should take microseconds
     * per kilobyte. Returns 0 with *tokens set, or -1 if it cannot tell (bad
     * input: the host then estimates, and submit() reports the error). */
    int (*count_tokens)(outpost_model *model, const char *body, size_t len, int64_t *tokens);
} outpost_plugin;

typedef const outpost_plugin *(*outpost_plugin_entry_fn)(void);

#define OUTPOST_PLUGIN_STR_(x) #x
#define OUTPOST_PLUGIN_STR(x) OUTPOST_PLUGIN_STR_(x)
/* ABI major, type sizes and byte order, compiled into both host and plugin.
 * It deliberately leaves out the minor, which may differ. */
#define OUTPOST_PLUGIN_BUILD_SIGNATURE                                              \
    "outpost-abi-" OUTPOST_PLUGIN_STR(OUTPOST_PLUGIN_ABI_MAJOR) ";ptr="              \
    OUTPOST_PLUGIN_STR(__SIZEOF_POINTER__) ";long=" OUTPOST_PLUGIN_STR(__SIZEOF_LONG__) \
    ";size_t=" OUTPOST_PLUGIN_STR(__SIZEOF_SIZE_T__) ";int=" OUTPOST_PLUGIN_STR(__SIZEOF_INT__) \
    ";order=" OUTPOST_PLUGIN_STR(__BYTE_ORDER__)

/* sizeof(outpost_plugin) at minor 0: the smallest descriptor a host accepts. */
#define OUTPOST_PLUGIN_SIZE_V1_0 \
    (offsetof(outpost_plugin, cancel) + sizeof(((outpost_plugin *)0)->cancel))

/* Declares the entry point for a static descriptor named `desc`. */
#define OUTPOST_PLUGIN_DEFINE(desc)                                                \
    OUTPOST_PLUGIN_EXPORT const outpost_plugin *outpost_plugin_entry(void);       \
    OUTPOST_PLUGIN_EXPORT const outpost_plugin *outpost_plugin_entry(void) { return &(desc); }

#ifdef __cplusplus
}
#endif

#endif /* OUTPOST_PLUGIN_H */
