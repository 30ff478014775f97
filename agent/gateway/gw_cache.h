/*
 * gw_cache: the gateway's exact-match response cache, with request
 * coalescing (design and why: docs/decisions/0011-gateway-cache-and-limits.md).
 *
 * Model
 *   Entries are keyed by a 32-byte SHA-256 the caller computes over what
 *   makes two requests identical (gateway, provider, endpoint, body, or a
 *   cf-aig-cache-key). An entry is the response exactly as the leader's
 *   client received it: status, metadata and the raw body bytes; a streamed
 *   response is kept as its text/event-stream bytes, so a HIT replays a
 *   valid stream. The cache never judges cacheability: it stores what a
 *   commit with store=true hands it (the caller passes store=false for
 *   errors, no-store requests and bodies it does not want kept).
 *
 *   A miss makes the caller the *leader* of a flight: it calls upstream and
 *   forwards what it sends its own client (head, then data pieces). An
 *   identical request arriving meanwhile becomes a *follower*: it receives
 *   the bytes sent so far (catch-up, from the joining thread, before
 *   gw_cache_begin returns) and then every later byte as the leader forwards
 *   it (live, from the leader's thread). Every byte reaches every follower
 *   exactly once, in order; piece boundaries may differ from the leader's.
 *
 * Bounds (memory is bounded by max_bytes and max_bytes / 4 more)
 *   - Entries: their charges (gw_cache_entry_charge: body, metadata, key and
 *     bookkeeping) sum to at most max_bytes; least recently used entries are
 *     evicted beyond it (expired ones near the LRU end first).
 *   - A body longer than max_bytes / 8 is not stored.
 *   - A flight buffers what it forwarded (followers catch up from it and the
 *     entry is built from it) up to max_bytes / 8, and all flights together
 *     up to max_bytes / 4. A flight that would go past either stops
 *     buffering: its followers still get every live byte, no new follower
 *     may join it (an identical request then leads a flight of its own), and
 *     its commit stores nothing.
 *   - Expired entries are treated as absent and reclaimed when looked up,
 *     when found near the LRU end on eviction, and by gw_cache_sweep().
 *
 * Ownership
 *   gw_cache_begin's HIT gives one entry reference: drop it with
 *   gw_cache_entry_unref() (entries are immutable, so body and meta may be
 *   read without any lock until then; a purged or evicted entry stays valid
 *   for whoever holds a reference).
 *   A LEAD gives a gw_flight that the caller must end with exactly one
 *   gw_flight_commit() or gw_flight_abort(), which free it.
 *   A FOLLOW gives a gw_cache_follow that the caller must end with exactly
 *   one gw_cache_unfollow(), also after on_done (it then only frees the
 *   handle). gw_cache_unfollow() may be called from inside one of that
 *   follower's own callbacks (for example from on_done).
 *
 * Threading
 *   Any number of threads may call gw_cache_begin, commit/abort their own
 *   flights, unfollow, purge, remove and read stats concurrently. One mutex
 *   guards the map, the LRU list and the stats, held only for lookups and
 *   pointer moves (bodies are copied and freed outside it). Each flight has
 *   its own mutex for its followers. The calls on one gw_flight must come
 *   from one thread at a time (the leader's). Follower callbacks never run
 *   under a lock of the cache; they run on the leader's thread, or on the
 *   joining thread for the catch-up (and, if the flight ended meanwhile,
 *   its on_done). A callback may call any function of this module (a
 *   gw_cache_begin to retry after on_done(false, false), unfollow) except
 *   the gw_flight_* calls of the flight it follows.
 *   gw_cache_free() must not race with anything, and every flight must have
 *   ended and every follower been unfollowed before it.
 *
 * Errors: allocation failures degrade to "not cached" or "not coalesced":
 *   begin then answers LEAD with a flight that buffers nothing (or, if even
 *   that cannot be allocated, a NULL flight, which every gw_flight_* call
 *   accepts as a no-op), so a request is never refused by the cache.
 */
#ifndef GW_CACHE_H
#define GW_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct gw_cache_key {
    uint8_t b[32]; /* SHA-256 computed by the caller */
} gw_cache_key;

typedef struct gw_cache_meta {
    int status;                 /* HTTP status of the stored answer */
    char content_type[128];
    bool stream;                /* body is a text/event-stream */
    int64_t tokens_in, tokens_out;
    double cost;
    char provider[64];
    char model[160];
    int step;
} gw_cache_meta;

typedef struct gw_cache gw_cache;
typedef struct gw_cache_entry gw_cache_entry; /* immutable once committed, refcounted */

/* A cache bounded by max_bytes (>= 1024); NULL otherwise or out of memory. */
gw_cache *gw_cache_new(size_t max_bytes);
/* Drops every entry (references held elsewhere stay valid). NULL: no-op. */
void gw_cache_free(gw_cache *c);

const gw_cache_meta *gw_cache_entry_meta(const gw_cache_entry *e);
/* The stored body (NUL-terminated for convenience; len excludes the NUL). */
const char *gw_cache_entry_body(const gw_cache_entry *e, size_t *len);
/* Seconds the entry has left at now (rounded down, >= 0), for Age-like headers. */
uint64_t gw_cache_entry_ttl_left_s(const gw_cache_entry *e, uint64_t now_ns);
/* Drops one reference; frees at zero. NULL: no-op. Thread-safe. */
void gw_cache_entry_unref(gw_cache_entry *e);
/* Bytes an entry with a body of body_len is charged against max_bytes. */
size_t gw_cache_entry_charge(size_t body_len);

typedef struct gw_cache_sub {     /* a follower: callbacks run on the leader's thread, never under a cache lock */
    void *ctx;
    void (*on_head)(void *ctx, const gw_cache_meta *m);
    void (*on_data)(void *ctx, const char *data, size_t len);
    /* Last call. ok: the leader finished and committed (or finished an uncacheable success);
     * !ok: the leader failed or aborted: if nothing was delivered yet (delivered == false) the follower
     * should make its own upstream call; if data was already delivered, the response was cut.
     * delivered is true once on_head or on_data was called. */
    void (*on_done)(void *ctx, bool ok, bool delivered);
} gw_cache_sub;

typedef struct gw_flight gw_flight;             /* the leader's handle */
typedef struct gw_cache_follow gw_cache_follow; /* a follower's handle */
typedef enum gw_cache_result { GW_CACHE_HIT = 0, GW_CACHE_LEAD = 1, GW_CACHE_FOLLOW = 2 } gw_cache_result;

/*
 * Looks k up at now_ns (CLOCK_MONOTONIC ns). HIT: *hit set (one reference).
 * Otherwise, if an identical request is in flight and still buffering, and
 * coalesce is true and sub != NULL (with all three callbacks): FOLLOW,
 * *follow set, and sub's callbacks will be called (the catch-up part
 * possibly before this returns, from this thread; sub is copied). Otherwise
 * LEAD: *flight set; the caller makes the upstream call and must end the
 * flight with gw_flight_commit or gw_flight_abort. A LEAD becomes the flight
 * later identical requests follow unless another flight for k is already
 * running. Expired entries are treated as absent. Stats: a HIT counts in
 * hits, a FOLLOW in coalesced, a LEAD in misses.
 */
gw_cache_result gw_cache_begin(gw_cache *c, const gw_cache_key *k, uint64_t now_ns, bool coalesce,
                               const gw_cache_sub *sub, gw_cache_entry **hit, gw_flight **flight,
                               gw_cache_follow **follow);

/* The leader forwards its response as it goes (only once it decided to pass
 * it to its client): head once (later calls are ignored), then data pieces.
 * Followers get them too. f == NULL: no-op. */
void gw_flight_head(gw_flight *f, const gw_cache_meta *m);
void gw_flight_data(gw_flight *f, const char *data, size_t len);

/*
 * Ends the flight successfully. store: put the response in the cache with
 * ttl_ns (ttl_ns == 0 stores nothing); final_meta (NULL: the head's)
 * replaces the head's in the entry (token counts known only at the end);
 * an entry already there under the key is replaced. Followers get
 * on_done(ok=true). Frees f.
 */
void gw_flight_commit(gw_flight *f, bool store, uint64_t ttl_ns, const gw_cache_meta *final_meta,
                      uint64_t now_ns);
/* Ends the flight as failed: followers get on_done(false, delivered). Frees f. */
void gw_flight_abort(gw_flight *f);

/* A follower whose client went away, or one that is finished: after it
 * returns no more callbacks for that follower come (it waits for a callback
 * running on another thread), and fw is freed. Called from inside one of
 * fw's own callbacks, it returns at once and fw is freed when that callback
 * returns. */
void gw_cache_unfollow(gw_cache *c, gw_cache_follow *fw);

/* Drops every entry (running flights go on and may still commit). */
void gw_cache_purge(gw_cache *c);
/* Drops the entry of k (cf-aig-cache purge by key); false if there was none. */
bool gw_cache_remove(gw_cache *c, const gw_cache_key *k);
/* Drops every entry expired at now; returns how many. O(entries), for a timer. */
size_t gw_cache_sweep(gw_cache *c, uint64_t now_ns);

typedef struct gw_cache_stats {
    uint64_t entries, bytes;      /* now */
    uint64_t hits, misses, coalesced, evictions, expired; /* since creation */
    uint64_t flight_bytes;        /* now: bytes buffered by running flights */
} gw_cache_stats;
void gw_cache_stats_get(gw_cache *c, gw_cache_stats *s);

#endif
