/*
 * op_policy: the Lua 5.4 policy host. Operators write policy files that
 * define hook functions (route, limit, on_error, on_response); the inference
 * API and the AI gateway call them on every request. Guide for policy
 * authors: docs/policies.md; ready policies: lua/policies/.
 *
 * Model
 *   An op_policy_set is built from the config's `policy` section: every file
 *   is read, compiled (syntax check) and run once in a scratch state at load
 *   time, so a broken policy is refused at start-up or reload, never on the
 *   first request. The set is immutable and refcounted; a reload builds a new
 *   set and swaps it in, and requests still holding the old one finish on it.
 *
 *   Each thread that calls a hook gets its own lua_State for the set, created
 *   lazily on first use and cached in thread-local storage. It is rebuilt when
 *   the thread is next handed a different set (a reload), and after a memory
 *   failure (a Lua state that ran out of memory may hold half-built data).
 *   A policy's globals persist between calls on one thread and are NOT shared
 *   between threads.
 *
 * Sandbox and limits (details: docs/policies.md, "Limits")
 *   Files are loaded as text only (never binary chunks), each in its own
 *   environment table holding the safe subset of the standard library plus
 *   the `outpost` table. Memory: a counting allocator refuses allocations past
 *   memory_bytes per state. Time: an instruction budget per hook call through
 *   a count hook; once exhausted (or once memory ran out) every protected call
 *   inside the policy re-raises, so pcall cannot swallow the failure. Work
 *   done inside one C call (pattern scans, string.rep, table.move, big
 *   allocations, coroutine resumes, JSON conversion) is charged to the same
 *   budget; __gc metamethods are refused (finalizers would run outside any
 *   budget). Every hook runs under the same limits.
 *
 * Threading
 *   op_policy_set_* may be called from any thread. The hook entry points
 *   (op_policy_route, _limit, _on_error, _on_response) may run concurrently
 *   on any number of threads with the same or different sets; each thread
 *   only touches its own Lua state. The thread-local state keeps a reference
 *   to its set until op_policy_thread_cleanup() or the next rebuild, so an
 *   idle thread keeps an old set alive: worker threads should call
 *   op_policy_thread_cleanup() when they exit. Hooks must not be called from
 *   inside a hook (a policy cannot reach the host's entry points anyway).
 *
 * Globals (documented, process-wide): the metric families below are
 * registered once on first use (pthread_once); a set generation counter.
 *
 * Metrics (hook = route | limit | on_error | on_response)
 *   outpost_policy_invocations_total{policy,hook}        counter
 *   outpost_policy_failures_total{policy,hook,reason}    counter, reason = error|budget|memory
 *   outpost_policy_duration_seconds{hook}                histogram, one observation per chain run
 *
 * Logging: each failure logs one line, event policy.failed, with policy,
 * hook, reason and message. outpost.log() and print() from policies log as
 * event policy.log with the policy's name.
 */
#ifndef OP_POLICY_H
#define OP_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config/op_config.h"

/* Where require("outpost.x") looks when the config names no lib_dir. The
 * build should define OUTPOST_LUA_DIR to the installed (or source) lua/ dir;
 * without it, "lua" relative to the working directory is used. */
#ifndef OUTPOST_LUA_DIR
#define OUTPOST_LUA_DIR "lua"
#endif

/* Policy and library files larger than this are refused at load. */
#define OP_POLICY_MAX_FILE_BYTES (1u << 20)
/* String pattern functions (find, match, gmatch, gsub) refuse longer subjects. */
#define OP_POLICY_MAX_PATTERN_SUBJECT (1u << 20)

typedef struct op_policy_set op_policy_set; /* immutable, refcounted; shared by all threads */

/*
 * Reads, compiles and runs (in a scratch state, under the configured limits)
 * every file of cfg, in order. Returns 0 and a set with one reference, or -1
 * with err holding "FILE:LINE: message" (FILE as configured; LINE 0 when the
 * problem has no line, e.g. an unreadable file). An empty file list is valid:
 * the set then routes everything unchanged. cfg is not referenced after the
 * call.
 */
int op_policy_set_load(const op_config_policy *cfg, op_policy_set **out, char *err, size_t errlen);
void op_policy_set_ref(op_policy_set *s);
/* Drops one reference; frees the set at zero. NULL is a no-op. */
void op_policy_set_unref(op_policy_set *s);
size_t op_policy_set_count(const op_policy_set *s); /* number of policy files */
/* Basename of file i (as used in metrics, logs and decisions), or NULL. */
const char *op_policy_set_name(const op_policy_set *s, size_t i);

/* --- Hooks -------------------------------------------------------------
 * Every hook a policy may define, in one registry (op_policy.c keeps, per
 * hook, its Lua name, how its arguments are pushed and how its result is
 * read). Adding a hook is one enum value, one registry row and one public
 * entry point like op_policy_route().
 *
 * A file defines a hook by leaving a global function of that name once its
 * top-level code has run (the load check records which hooks a set has).
 * Each hook's chain rule is stated at its entry point. */
typedef enum op_policy_hook {
    OP_HOOK_ROUTE = 0,       /* route(req) -> nil | {model=, provider=} | {reject={status=,message=}} */
    OP_HOOK_LIMIT = 1,       /* limit(req) -> nil | rule | {rule, ...} */
    OP_HOOK_ON_ERROR = 2,    /* on_error(req, err) -> nil | {action=, ...} */
    OP_HOOK_ON_RESPONSE = 3, /* on_response(req, resp) -> nil | {action=, ...} */
    OP_HOOK_COUNT
} op_policy_hook;

/* The Lua name of a hook ("route"), or "?" if out of range. */
const char *op_policy_hook_name(op_policy_hook h);
/* The hook named name ("on_error"), or -1. */
int op_policy_hook_parse(const char *name);
/* Whether some file of s defines hook h. Lets a caller skip work only a hook
 * would read (buffering a response body for on_response, say). */
bool op_policy_set_has_hook(const op_policy_set *s, op_policy_hook h);

/* --- The request every hook sees ---------------------------------------- */

typedef struct op_policy_header {
    const char *name;
    const char *value;
} op_policy_header;

/*
 * Borrowed by every hook entry point for the duration of the call only.
 * Zero/NULL is "absent" for every field after tokens_estimate, so callers
 * written before the gateway keep working with designated initializers.
 * Lua builds a req field only when the policy reads it (req.body, req.headers
 * and req.metadata are converted on first read, once per hook call).
 */
typedef struct op_route_request {
    const char *account;
    const char *model;
    const char *task;                  /* may be NULL if the model is unknown */
    const char *method;
    const char *path;
    const op_policy_header *headers;   /* names as received; Lua sees them lower-cased */
    size_t n_headers;
    const char *body_json;             /* a JSON object; parsed only if the policy reads req.body */
    size_t body_len;
    long long tokens_estimate;         /* host's estimate of prompt tokens, -1 unknown */
    /* The AI gateway's fields; all absent outside the gateway. */
    const char *gateway;        /* gateway id, NULL outside the gateway */
    const char *provider;       /* "local", "workers-ai", or a configured upstream name */
    const char *endpoint;       /* the step's endpoint, e.g. "chat/completions" or "@cf/meta/llama-3.1-8b-instruct" */
    const char *metadata_json;  /* cf-aig-metadata object text (NUL-terminated), or NULL; Lua sees
                                   req.metadata as a table: {} when absent or not a JSON object */
    const char *token_name;     /* name of the gateway/account token that authenticated, or NULL */
    long long max_tokens;       /* from the body; <= 0 unknown (Lua: nil) */
    int step;                   /* 0-based index in the universal request's steps */
    int attempt;                /* 1-based attempt within the step; 0 = not in an attempt, and
                                   then Lua sees both req.step and req.attempt as nil */
    /* Identifies the client request (unique within the process, e.g. its
     * log id), or 0. With an id, req.headers/body/metadata are converted
     * once per request and shared by every hook call with the same id on
     * one thread (route, limit, on_error, on_response), as long as the
     * caller passes the same headers/body_json/metadata_json pointers and
     * lengths; different pointers or lengths are converted again. With 0
     * they are converted once per hook call. */
    uint64_t request_id;
} op_route_request;

typedef enum op_policy_status {
    OP_POLICY_OK = 0,     /* a decision was made (route: continue or reject; others: any action) */
    OP_POLICY_ERROR = 1,  /* runtime error or invalid return value */
    OP_POLICY_BUDGET = 2, /* instruction budget exhausted */
    OP_POLICY_MEMORY = 3, /* memory cap reached; the thread's state is rebuilt next call */
} op_policy_status;

/* --- route ------------------------------------------------------------ */

typedef enum op_route_action { OP_ROUTE_CONTINUE = 0, OP_ROUTE_REJECT = 1 } op_route_action;

typedef struct op_route_decision {
    op_route_action action;
    char model[256];   /* the (possibly rewritten) target model */
    int status;        /* reject: HTTP status 400..599 chosen by the policy (default 403) */
    /* Reject message, or on failure the reason naming the policy file:
     *   "policy 'route.lua' failed: route.lua:12: attempt to index a nil value ..."
     *   "policy 'x.lua' exceeded its instruction budget (1000000)"
     *   "policy 'x.lua' exceeded its memory limit (8388608 bytes)" */
    char message[512];
    char policy[128];  /* basename of the policy that rejected or failed; "" otherwise */
    char provider[64]; /* the (possibly switched) provider; starts as req->provider, "" if NULL */
} op_route_decision;

/*
 * Runs every policy's route(req) in file order on this thread's Lua state for
 * set. A reject stops the chain; a rewrite of model or provider is what the
 * next policy sees as req.model / req.provider. Files that define no route
 * are skipped. On OP_POLICY_OK, out holds the decision; on a failure,
 * out->message and out->policy say what failed and out->model/provider hold
 * the values as they were before the failing policy. The caller decides what
 * a failure means for the request (the gateway answers 500). A NULL set or
 * one without files continues unchanged.
 */
op_policy_status op_policy_route(op_policy_set *set, const op_route_request *req,
                                 op_route_decision *out);

/* --- limit ------------------------------------------------------------- */

typedef enum op_limit_unit { OP_LIMIT_REQUESTS = 0, OP_LIMIT_TOKENS = 1, OP_LIMIT_COST = 2 } op_limit_unit;

typedef struct op_limit_rule {
    char key[160];      /* the policy's key, e.g. "user:alice"; the gateway prefixes account/gateway */
    op_limit_unit unit; /* unit="requests" (default) | "tokens" | "cost" */
    double limit;       /* limit=, > 0 and finite */
    double window_s;    /* window= seconds, > 0 and finite (default 60) */
    bool sliding;       /* sliding=true, or technique="sliding" (default: fixed window) */
} op_limit_rule;

#define OP_POLICY_MAX_LIMIT_RULES 8

/* "requests", "tokens", "cost", or "?". */
const char *op_limit_unit_name(op_limit_unit u);

/*
 * Runs every policy's limit(req) in file order. Each returns nil (no rule),
 * one rule table (it has a key), or an array of rule tables ({} is an empty
 * array). The rules of every policy are concatenated in file order into
 * rules, which has room for OP_POLICY_MAX_LIMIT_RULES; more is an error of
 * the policy that went past. The host only collects rules: counting usage
 * and refusing is the gateway's. A rule with a missing, empty or over-long
 * key, a limit or window that is not a positive finite number, or an unknown
 * unit or technique is an error naming the file. On OP_POLICY_OK, *n_rules
 * is set and fail->message is ""; on a failure, *n_rules is 0 and
 * fail->message / fail->policy say what failed (as route). fail->action is
 * always CONTINUE and fail->model/provider echo req.
 */
op_policy_status op_policy_limit(op_policy_set *set, const op_route_request *req,
                                 op_limit_rule *rules, size_t *n_rules, op_route_decision *fail);

/* --- on_error / on_response --------------------------------------------- */

typedef enum op_next_action {
    OP_NEXT_DEFAULT = 0,  /* no policy decided: the gateway applies its configured retries/fallback */
    OP_NEXT_ACCEPT = 1,   /* on_response: pass this response to the client */
    OP_NEXT_RETRY = 2,    /* try the same step again (after delay_ms) */
    OP_NEXT_FALLBACK = 3, /* go on to the next step */
    OP_NEXT_FAIL = 4,     /* stop; answer status/message */
} op_next_action;

/* "default", "accept", "retry", "fallback", "fail", or "?". */
const char *op_next_action_name(op_next_action a);

/* What one attempt produced. Borrowed for the call only. */
typedef struct op_attempt_result {
    int status;              /* upstream HTTP status; 0 when there was no response */
    const char *error_kind;  /* "http" (status >= 400), "timeout", "network", "tls", "protocol", or NULL on success */
    const char *message;     /* may be NULL */
    const char *body;        /* the response body when buffered (non-streamed, or an error body); NULL for a stream */
    size_t body_len;
    const char *content_type;
    double duration_ms;
    int max_attempts;        /* the step's configured attempts */
    long long retry_after_ms;/* the upstream's Retry-After header in ms; 0 = none (Lua: nil) */
} op_attempt_result;

/* A policy's delay_ms may be 0..OP_POLICY_MAX_DELAY_MS (10 minutes). */
#define OP_POLICY_MAX_DELAY_MS 600000

typedef struct op_next_decision {
    op_next_action action;
    int delay_ms;            /* RETRY: wait this long first; -1 = the gateway's configured backoff */
    int status;              /* FAIL: HTTP status to answer, 400..599 (default 502) */
    char message[512];       /* FAIL message, or on policy failure the reason naming the file (as route) */
    char policy[128];        /* the deciding or failing policy's basename; "" for DEFAULT */
} op_next_decision;

/*
 * on_error(req, err), after an attempt that failed (res->error_kind set):
 *   err = {status=, kind=, message=, body= (string or nil), body_len=,
 *          content_type=, retry_after_ms=, attempt=, max_attempts=, step=,
 *          duration_ms=}      (attempt and step are req->attempt, req->step)
 * returns nil (no opinion) | {action="retry", delay_ms=N} | {action="fallback"}
 *       | {action="fail", status=400..599, message=}.
 * Chain: policies run in file order; the first non-nil decision wins and
 * ends the chain; when every policy returns nil the action is DEFAULT. On a
 * failure out->action is DEFAULT and out->message/policy say what failed;
 * the gateway then decides (its configured behaviour, or a 500). A NULL set,
 * or one where no file defines the hook, gives DEFAULT without running Lua.
 */
op_policy_status op_policy_on_error(op_policy_set *set, const op_route_request *req,
                                    const op_attempt_result *res, op_next_decision *out);

/*
 * on_response(req, resp), after an attempt that got a response the gateway
 * would pass on: resp has err's fields (kind is nil; body is nil for a
 * stream). Same returns and chain as on_error, plus {action="accept"}.
 */
op_policy_status op_policy_on_response(op_policy_set *set, const op_route_request *req,
                                       const op_attempt_result *res, op_next_decision *out);

/* Frees this thread's cached Lua state and its set reference (call at
 * worker-thread exit; safe if there is none). */
void op_policy_thread_cleanup(void);

/*
 * The offline tester behind
 *   outpostctl policy test POLICY.lua [MORE.lua ...] REQUEST.json
 *       [--hook route|limit|on_error|on_response] [--result RESULT.json]
 *       [--lib DIR] [--memory BYTES] [--instructions N]
 * argv[0] is the first positional (POLICY.lua), not a program name. Runs one
 * hook (default route). on_error and on_response need --result: one result
 * object, or an array of them run in order on one Lua state. Prints one JSON
 * object line per decision on out:
 *   route:  {"action":"continue","model":"...","provider":"..."}  (provider when set)
 *           {"action":"reject","status":403,"message":"...","policy":"x.lua"}
 *   limit:  {"rules":[{"key":"...","unit":"tokens","limit":100000,"window":86400,"sliding":true}]}
 *   on_error, on_response:
 *           {"action":"retry","delay_ms":200,"policy":"x.lua"}  {"action":"fallback","policy":...}
 *           {"action":"fail","status":502,"message":"...","policy":...}
 *           {"action":"accept","policy":...}  {"action":"default"}
 * and a timing line on err. Returns the process exit code: 0 every decision
 * was made; 1 a policy failed (load error, runtime error, invalid return,
 * budget or memory; the reason is printed on err and later results are not
 * run); 2 usage or input error (bad arguments, unreadable file, invalid
 * request or result JSON). The file formats are in docs/policies.md
 * ("Testing offline").
 */
int op_policy_cli(int argc, char **argv, FILE *out, FILE *err);

#endif
