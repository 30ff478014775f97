/*
 * gw_limit: the gateway's rate limiter. Counters are exact across every
 * thread of the node: a request is admitted only if every rule it is subject
 * to has room, and then all of them are charged in one step, so N admitted
 * out of any number of concurrent attempts means exactly N (design and why:
 * docs/decisions/0011-gateway-cache-and-limits.md).
 *
 * Model
 *   A rule names a counter by its identity (key, unit, window_s, sliding) and
 *   says how much that counter may hold (limit). The limit is not part of the
 *   identity: a reload that changes only the limit keeps the count. The same
 *   key with a per-minute and a per-day window is two counters, so a caller
 *   may compose one key and apply several windows to it.
 *
 *   Fixed windows are aligned to multiples of window_s on the clock the
 *   caller passes (CLOCK_MONOTONIC ns); the count restarts at each boundary.
 *
 *   Sliding windows count in GW_LIMIT_SUB_BUCKETS sub-buckets of
 *   w = ceil(window_ns / 64) ns, and the window is the current sub-bucket plus
 *   the 64 before it. An amount charged at t therefore counts until some time
 *   in [t + 64w, t + 65w): never less than window_s, at most one sub-bucket
 *   (1/64 of the window) more. Guarantee: no interval of length window_s
 *   ever holds more than `limit` admitted units.
 *
 *   Reservations: acquire charges the amounts given (a token limit reserves
 *   prompt + max_tokens); settle replaces them with the real amounts later.
 *   A settle lands in the window or sub-bucket the reservation was charged
 *   to; once that has left the window, it changes nothing.
 *
 * Memory
 *   At most max_keys counters are live. A counter whose window has fully
 *   passed (nothing in it counts any more) is reclaimed: a few slots are
 *   examined on every acquire (lazy), gw_limiter_sweep() reclaims all of
 *   them, and an acquire that finds the table full sweeps before refusing.
 *   Memory is O(max_keys) and, in steady state, O(keys active in a window).
 *   Freed counters go to a small per-shard free list, so creating counters
 *   does not allocate in steady state either.
 *
 * Threading
 *   Every function may be called from any thread, concurrently. The table is
 *   GW_LIMIT_SHARDS shards, each a mutex and an open-addressing index; an
 *   acquire locks the shards of its rules in ascending order (no deadlock)
 *   and holds them while it checks and charges. gw_limiter_free() must not
 *   race with anything else.
 *
 * Numbers: amounts and limits are doubles (requests, tokens, or cost in
 *   USD). An amount fits if used + amount <= limit * (1 + 1e-9): the slack
 *   only absorbs rounding of fractional costs; whole units are exact.
 *
 * Errors: -1 for bad arguments or a full key table; nothing is charged then.
 */
#ifndef GW_LIMIT_H
#define GW_LIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum gw_limit_unit {
    GW_LIMIT_REQUESTS = 0,
    GW_LIMIT_TOKENS = 1,
    GW_LIMIT_COST = 2,
} gw_limit_unit;

#define GW_LIMIT_KEY_MAX 160
typedef struct gw_limit_rule {
    char key[GW_LIMIT_KEY_MAX]; /* opaque, composed by the caller, e.g. "local/default/user:alice";
                                 * NUL-terminated within the array, else the call fails */
    gw_limit_unit unit;         /* part of the identity */
    double limit;               /* > 0, in units per window; not part of the identity */
    double window_s;            /* > 0 and <= GW_LIMIT_MAX_WINDOW_S; part of the identity */
    bool sliding;               /* sliding (sub-buckets) or fixed window; part of the identity */
} gw_limit_rule;

#define GW_LIMIT_MAX_RULES 8
#define GW_LIMIT_SHARDS 64
#define GW_LIMIT_SUB_BUCKETS 64
/* About 31 years: keeps every window in nanoseconds far from overflow. */
#define GW_LIMIT_MAX_WINDOW_S 1e9

/* One reservation; plain data. */
typedef struct gw_limit_res {
    uint64_t hash;   /* the counter's identity hash */
    uint64_t id;     /* the counter's incarnation: a reclaimed and re-created counter differs */
    uint64_t slot;   /* the fixed window or sliding sub-bucket index it was charged to */
    double reserved; /* what acquire charged */
} gw_limit_res;

/* Reservations made by one acquire; caller-owned, plain data (copyable, no
 * pointers into the limiter). res[i] belongs to rule i of the acquire. */
typedef struct gw_limit_ticket {
    size_t n;
    bool settled;
    gw_limit_res res[GW_LIMIT_MAX_RULES];
} gw_limit_ticket;

typedef struct gw_limiter gw_limiter;

/* A limiter holding at most max_keys live counters (>= 1). NULL on
 * max_keys == 0 or out of memory. */
gw_limiter *gw_limiter_new(size_t max_keys);
/* Frees every counter. NULL is a no-op. Outstanding tickets become
 * meaningless (they must not be settled on another limiter). */
void gw_limiter_free(gw_limiter *l);

/*
 * Checks every rule and, only if all allow, charges amounts[i] to rule i,
 * all or none, atomically with respect to every other thread. n may be 0
 * (allowed, nothing charged); two rules naming the same counter are checked
 * against the sum of their amounts.
 *
 * Returns 0 (allowed; *t filled), 1 (limited: *retry_after_s = whole seconds
 * until the limiting rule would admit this amount if nothing else happened,
 * >= 1; *which = index of that rule; where several refuse, the one with the
 * longest wait), or -1 (bad arguments: n > GW_LIMIT_MAX_RULES, a rule out of
 * range, an amount negative or not finite, NULL pointers; or the key table
 * is full even after reclaiming: the caller answers 503). An amount larger
 * than its limit is refused with retry_after = ceil(window_s).
 *
 * now_ns: CLOCK_MONOTONIC ns (passed in so tests control time). Threads may
 * pass slightly different times; a counter never moves back: a call whose
 * now is older than what the counter has seen counts as at that time.
 * retry_after_s and which may be NULL.
 */
int gw_limit_acquire(gw_limiter *l, const gw_limit_rule *rules, const double *amounts, size_t n,
                     uint64_t now_ns, gw_limit_ticket *t, double *retry_after_s, size_t *which);

/*
 * Settles a ticket: actual[i] replaces the amount reserved for rule i (a
 * token limit reserves prompt + max_tokens up front and settles on the real
 * count when the stream ends; settling 0 refunds an attempt that never ran).
 * Each adjustment lands where the reservation was charged, and only if that
 * still counts at now_ns. A ticket is settled at most once (later calls do
 * nothing); actual == NULL or actual == reserved change nothing. A counter
 * never goes below 0. Non-finite or negative actual values are taken as 0.
 * actual has t->n values. The ticket itself is the caller's: settling one
 * ticket from two threads at once needs the caller's own lock.
 */
void gw_limit_settle(gw_limiter *l, gw_limit_ticket *t, const double *actual, uint64_t now_ns);

/* Remaining capacity of one rule at now: limit - used, at least 0 (limit
 * for a counter that does not exist; 0 for an invalid rule). Creates
 * nothing. */
double gw_limit_remaining(gw_limiter *l, const gw_limit_rule *r, uint64_t now_ns);

/* Seconds (whole, rounded up, >= 1) until the current window of rule r
 * ends (fixed) or until its oldest counted sub-bucket leaves the window
 * (sliding), for RateLimit-Reset style headers; 0 if the counter does not
 * exist or holds nothing, or r is invalid. */
double gw_limit_reset_s(gw_limiter *l, const gw_limit_rule *r, uint64_t now_ns);

/* Reclaims every counter whose window has fully passed at now; returns how
 * many. Locks one shard at a time. For a periodic timer; acquire also
 * reclaims lazily. */
size_t gw_limiter_sweep(gw_limiter *l, uint64_t now_ns);

/* Live counters (for metrics and tests). */
size_t gw_limiter_count(gw_limiter *l);
/* Slots of the shard indexes together (16 bytes each; for tests): they grow
 * with live counters and shrink again once those are reclaimed. */
size_t gw_limiter_index_slots(gw_limiter *l);

#endif
