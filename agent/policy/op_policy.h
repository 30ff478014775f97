/*
 * op_policy: the Lua 5.4 policy host. Operators write policy files that
 * define hook functions (today: route); the gateway calls them on every
 * inference request. Guide for policy authors: docs/policies.md.
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
 *   allocations, coroutine resumes) is charged to the same budget; __gc
 *   metamethods are refused (finalizers would run outside any budget).
 *
 * Threading
 *   op_policy_set_* may be called from any thread. op_policy_route() may run
 *   concurrently on any number of threads with the same or different sets;
 *   each thread only touches its own Lua state. The thread-local state keeps a
 *   reference to its set until op_policy_thread_cleanup() or the next
 *   rebuild, so an idle thread keeps an old set alive: worker threads should
 *   call op_policy_thread_cleanup() when they exit.
 *
 * Globals (documented, process-wide): the metric families below are
 * registered once on first use (pthread_once); a set generation counter.
 *
 * Metrics
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
 * hook, its Lua name and how arguments are pushed and results read). Adding
 * a hook (on_error, on_response, limit) is one enum value, one registry row
 * and one public entry point like op_policy_route(). */
typedef enum op_policy_hook {
    OP_HOOK_ROUTE = 0, /* route(req) -> nil | {model=} | {reject={status=,message=}} */
    OP_HOOK_COUNT
} op_policy_hook;

/* The Lua name of a hook ("route"), or "?" if out of range. */
const char *op_policy_hook_name(op_policy_hook h);

/* --- route ------------------------------------------------------------ */

typedef struct op_policy_header {
    const char *name;
    const char *value;
} op_policy_header;

/* Borrowed by op_policy_route() for the duration of the call only. */
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
} op_route_request;

typedef enum op_route_action { OP_ROUTE_CONTINUE = 0, OP_ROUTE_REJECT = 1 } op_route_action;

typedef enum op_policy_status {
    OP_POLICY_OK = 0,     /* a decision was made (continue or reject) */
    OP_POLICY_ERROR = 1,  /* runtime error or invalid return value */
    OP_POLICY_BUDGET = 2, /* instruction budget exhausted */
    OP_POLICY_MEMORY = 3, /* memory cap reached; the thread's state is rebuilt next call */
} op_policy_status;

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
} op_route_decision;

/*
 * Runs every policy's route(req) in file order on this thread's Lua state for
 * set. A reject stops the chain; a rewrite is seen by the next policy (as
 * req.model). Files that define no route are skipped. On OP_POLICY_OK, out
 * holds the decision; on a failure, out->message and out->policy say what
 * failed and out->model holds the model as it was before the failing policy.
 * The caller decides what a failure means for the request (the gateway
 * answers 500). A NULL set or one without files continues unchanged.
 */
op_policy_status op_policy_route(op_policy_set *set, const op_route_request *req,
                                 op_route_decision *out);

/* Frees this thread's cached Lua state and its set reference (call at
 * worker-thread exit; safe if there is none). */
void op_policy_thread_cleanup(void);

/*
 * The offline tester behind
 *   outpostctl policy test POLICY.lua [MORE.lua ...] REQUEST.json
 *                     [--lib DIR] [--memory BYTES] [--instructions N]
 * argv[0] is the first positional (POLICY.lua), not a program name. Prints the
 * decision as one JSON object line on out:
 *   {"action":"continue","model":"..."}
 *   {"action":"reject","status":403,"message":"...","policy":"x.lua"}
 * and a timing line on err. Returns the process exit code: 0 a decision was
 * made (continue or reject); 1 a policy failed (load error, runtime error,
 * budget or memory; the reason is printed on err); 2 usage or input error
 * (bad arguments, unreadable file, invalid request JSON). The request JSON
 * format is in docs/policies.md ("Testing offline").
 */
int op_policy_cli(int argc, char **argv, FILE *out, FILE *err);

#endif
