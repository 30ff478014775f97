/*
 * gw_cache: map, LRU, flights and the follower delivery protocol. The
 * contract is in gw_cache.h; the reasoning in
 * docs/decisions/0011-gateway-cache-and-limits.md.
 *
 * Layout
 *   c->mu guards two open-addressing maps (committed entries, running
 *   flights; both keyed by the 32-byte key, probed from a hash of it), the
 *   LRU list (head = most recently used) and the stats. Entries leave the
 *   map under c->mu; the cache's reference is dropped after it, so freeing
 *   bodies never happens under the lock.
 *
 *   A flight buffers what the leader forwarded in blocks that never move
 *   once allocated (4 KiB doubling to 64 KiB), so a follower can be handed
 *   a pointer into them and read it with no lock held while the leader
 *   appends. f->mu guards the blocks' lengths, the follower list and every
 *   follower's delivery state.
 *
 * Delivery protocol (the part that must never lose or repeat a byte)
 *   Each follower has a cursor `sent` and a `busy` flag: whoever sets busy
 *   (under f->mu) is the only thread that may call that follower's callbacks
 *   until it clears it, and it advances `sent` under f->mu before calling
 *   on_data with the bytes in between. A deliverer loops: head if not sent,
 *   buffered bytes past `sent`, the live piece if it is next, on_done if the
 *   flight ended, and clears busy only after finding nothing left while
 *   holding f->mu. Hence:
 *   - A joining follower is registered busy by its own thread and catches up
 *     from the buffer.
 *   - When the leader forwards a piece that is buffered, it delivers to every
 *     follower that is not busy; a busy one is caught up by its holder, whose
 *     final check under f->mu sees the new bytes (or, if it released before
 *     the append, the leader finds it not busy).
 *   - When a piece is not buffered (the flight went over its bound), the
 *     leader must hand it over before returning, so it waits for a busy
 *     follower (pinning it, so that it is not freed meanwhile) and then
 *     delivers itself. Nobody can join a flight that stopped buffering.
 *   - head and the end (commit, abort) are state, not pieces: they are
 *     delivered like buffered bytes.
 *   Unfollow marks the follower cancelled (deliverers stop before the next
 *   callback), waits until it is neither busy nor pinned, and frees it;
 *   from inside its own callback it only marks it, and the deliverer frees
 *   it when it lets go.
 *
 *   Flights are refcounted under f->mu: one for the leader until commit or
 *   abort, one per follower handle until it is freed.
 */
#include "gateway/gw_cache.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define MAP_MIN_CAP 64
#define BLOCK_MIN 4096
#define BLOCK_MAX 65536
#define EXPIRED_LOOKAHEAD 8 /* entries looked at from the LRU end for expired ones */

/* ------------------------------------------------------------------------ */
/* Types                                                                    */
/* ------------------------------------------------------------------------ */

struct gw_cache_entry {
    _Atomic uint32_t refs;
    gw_cache_entry *prev, *next; /* LRU under c->mu; next also links dropped entries */
    uint64_t expires_ns;
    size_t charge;
    gw_cache_key key;
    gw_cache_meta meta;
    size_t len;
    char body[];                 /* len bytes and a NUL */
};

typedef struct fl_block {
    struct fl_block *next;
    size_t cap, len;             /* len under f->mu; bytes below len never change */
    char data[];
} fl_block;

enum { FL_RUNNING = 0, FL_OK = 1, FL_FAILED = 2 };

struct gw_cache_follow {
    gw_flight *f;
    gw_cache_sub sub;
    gw_cache_follow *prev, *next; /* in f->followers */
    size_t sent;                  /* bytes handed to on_data (or about to be) */
    fl_block *blk;                /* where `sent` lies in the buffer (NULL: before the first) */
    size_t blk_off;
    bool head_sent, done_sent;
    bool busy;                    /* a thread owns this follower's callbacks */
    bool cancelled;               /* unfollow started: no more callbacks */
    bool free_on_release;         /* unfollowed from its own callback */
    unsigned pins;                /* the leader waits on it: do not free */
    pthread_t busy_thread;
};

struct gw_flight {
    gw_cache *c;
    gw_cache_key key;
    bool in_map;                  /* under c->mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;            /* a follower stopped being busy or pinned */
    /* under mu */
    unsigned refs;
    int state;
    bool has_head;
    gw_cache_meta head;           /* immutable once has_head */
    fl_block *first, *last;
    size_t stored;                /* buffered prefix of the response */
    size_t total;                 /* bytes forwarded */
    size_t reserved;              /* block capacity, charged to c->flight_bytes */
    bool buffering;
    gw_cache_follow *followers;
};

typedef struct cmap_slot {
    const gw_cache_key *k;        /* NULL: empty */
    void *v;
} cmap_slot;

typedef struct cmap {
    cmap_slot *s;
    size_t cap, n;                /* cap a power of two */
} cmap;

struct gw_cache {
    size_t max_bytes;
    size_t max_body;              /* max_bytes / 8: per entry and per flight buffer */
    size_t max_flight_bytes;      /* max_bytes / 4: all flight buffers */
    _Atomic size_t flight_bytes;
    pthread_mutex_t mu;
    cmap entries;                 /* key -> gw_cache_entry */
    cmap flights;                 /* key -> gw_flight (the one followers join) */
    gw_cache_entry *lru_head, *lru_tail;
    gw_cache_stats st;            /* entries, bytes and the counters */
};

/* ------------------------------------------------------------------------ */
/* Key map                                                                  */
/* ------------------------------------------------------------------------ */

static uint64_t key_hash(const gw_cache_key *k)
{
    uint64_t w[4];
    memcpy(w, k->b, sizeof w);
    /* Keys are SHA-256 in production; mixing all of it keeps tests with
     * structured keys from clustering. */
    uint64_t x = w[0] ^ (w[1] * 0x9e3779b97f4a7c15ull) ^ (w[2] * 0xc2b2ae3d27d4eb4full) ^
                 (w[3] * 0x165667b19e3779f9ull);
    x ^= x >> 31;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 29;
    return x;
}

static int cmap_init(cmap *m, size_t cap)
{
    m->s = calloc(cap, sizeof *m->s);
    m->cap = m->s ? cap : 0;
    m->n = 0;
    return m->s ? 0 : -1;
}

static void *cmap_get(const cmap *m, const gw_cache_key *k)
{
    size_t mask = m->cap - 1;
    for (size_t i = key_hash(k) & mask; m->s[i].k; i = (i + 1) & mask)
        if (memcmp(m->s[i].k->b, k->b, sizeof k->b) == 0)
            return m->s[i].v;
    return NULL;
}

static void cmap_place(cmap_slot *s, size_t cap, const gw_cache_key *k, void *v)
{
    size_t mask = cap - 1, i = key_hash(k) & mask;
    while (s[i].k)
        i = (i + 1) & mask;
    s[i].k = k;
    s[i].v = v;
}

static int cmap_resize(cmap *m, size_t ncap)
{
    cmap_slot *ns = calloc(ncap, sizeof *ns);
    if (!ns)
        return -1;
    for (size_t i = 0; i < m->cap; i++)
        if (m->s[i].k)
            cmap_place(ns, ncap, m->s[i].k, m->s[i].v);
    free(m->s);
    m->s = ns;
    m->cap = ncap;
    return 0;
}

/* k must not be in m; k must live as long as the slot (it points into v). */
static int cmap_put(cmap *m, const gw_cache_key *k, void *v)
{
    if ((m->n + 1) * 2 > m->cap && cmap_resize(m, m->cap * 2) != 0)
        return -1;
    cmap_place(m->s, m->cap, k, v);
    m->n++;
    return 0;
}

/* Backward-shift deletion: no tombstones; shrinks when mostly empty. */
static void cmap_del(cmap *m, const gw_cache_key *k)
{
    size_t mask = m->cap - 1, i = key_hash(k) & mask;
    while (m->s[i].k && memcmp(m->s[i].k->b, k->b, sizeof k->b) != 0)
        i = (i + 1) & mask;
    if (!m->s[i].k)
        return;
    for (size_t j = i;;) {
        j = (j + 1) & mask;
        if (!m->s[j].k)
            break;
        size_t h = key_hash(m->s[j].k) & mask;
        bool stays = i <= j ? (i < h && h <= j) : (i < h || h <= j);
        if (!stays) {
            m->s[i] = m->s[j];
            i = j;
        }
    }
    m->s[i].k = NULL;
    m->s[i].v = NULL;
    m->n--;
    if (m->cap > MAP_MIN_CAP && m->n * 8 < m->cap)
        cmap_resize(m, m->cap / 2); /* on failure the map simply stays larger */
}

/* ------------------------------------------------------------------------ */
/* Entries and LRU (under c->mu unless said otherwise)                      */
/* ------------------------------------------------------------------------ */

size_t gw_cache_entry_charge(size_t body_len)
{
    return sizeof(gw_cache_entry) + body_len + 1;
}

const gw_cache_meta *gw_cache_entry_meta(const gw_cache_entry *e)
{
    return &e->meta;
}

const char *gw_cache_entry_body(const gw_cache_entry *e, size_t *len)
{
    if (len)
        *len = e->len;
    return e->body;
}

uint64_t gw_cache_entry_ttl_left_s(const gw_cache_entry *e, uint64_t now_ns)
{
    return e->expires_ns > now_ns ? (e->expires_ns - now_ns) / 1000000000ull : 0;
}

void gw_cache_entry_unref(gw_cache_entry *e)
{
    if (e && atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) == 1)
        free(e);
}

static void lru_unlink(gw_cache *c, gw_cache_entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->lru_head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->lru_tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push_head(gw_cache *c, gw_cache_entry *e)
{
    e->prev = NULL;
    e->next = c->lru_head;
    if (c->lru_head)
        c->lru_head->prev = e;
    c->lru_head = e;
    if (!c->lru_tail)
        c->lru_tail = e;
}

/* Takes e out of the cache and onto *dropped, whose references the caller
 * drops once c->mu is released. */
static void entry_drop(gw_cache *c, gw_cache_entry *e, gw_cache_entry **dropped)
{
    cmap_del(&c->entries, &e->key);
    lru_unlink(c, e);
    c->st.entries--;
    c->st.bytes -= e->charge;
    e->next = *dropped;
    *dropped = e;
}

static void unref_dropped(gw_cache_entry *e)
{
    while (e) {
        gw_cache_entry *next = e->next;
        gw_cache_entry_unref(e);
        e = next;
    }
}

/* Brings bytes under max_bytes: expired entries near the LRU end go first,
 * then the least recently used. */
static void evict(gw_cache *c, uint64_t now_ns, gw_cache_entry **dropped)
{
    while (c->st.bytes > c->max_bytes && c->lru_tail) {
        gw_cache_entry *e = c->lru_tail;
        bool any_expired = false;
        for (size_t i = 0; e && i < EXPIRED_LOOKAHEAD; i++) {
            gw_cache_entry *prev = e->prev;
            if (now_ns >= e->expires_ns) {
                entry_drop(c, e, dropped);
                c->st.expired++;
                any_expired = true;
            }
            e = prev;
        }
        if (!any_expired) {
            entry_drop(c, c->lru_tail, dropped);
            c->st.evictions++;
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Cache                                                                    */
/* ------------------------------------------------------------------------ */

gw_cache *gw_cache_new(size_t max_bytes)
{
    if (max_bytes < 1024)
        return NULL;
    gw_cache *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->max_bytes = max_bytes;
    c->max_body = max_bytes / 8;
    c->max_flight_bytes = max_bytes / 4;
    atomic_init(&c->flight_bytes, 0);
    if (cmap_init(&c->entries, MAP_MIN_CAP) != 0 || cmap_init(&c->flights, MAP_MIN_CAP) != 0) {
        free(c->entries.s);
        free(c);
        return NULL;
    }
    pthread_mutex_init(&c->mu, NULL);
    return c;
}

void gw_cache_free(gw_cache *c)
{
    if (!c)
        return;
    gw_cache_purge(c);
    free(c->entries.s);
    free(c->flights.s);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

void gw_cache_purge(gw_cache *c)
{
    if (!c)
        return;
    gw_cache_entry *dropped = NULL;
    pthread_mutex_lock(&c->mu);
    while (c->lru_head)
        entry_drop(c, c->lru_head, &dropped);
    pthread_mutex_unlock(&c->mu);
    unref_dropped(dropped);
}

bool gw_cache_remove(gw_cache *c, const gw_cache_key *k)
{
    if (!c || !k)
        return false;
    gw_cache_entry *dropped = NULL;
    pthread_mutex_lock(&c->mu);
    gw_cache_entry *e = cmap_get(&c->entries, k);
    if (e)
        entry_drop(c, e, &dropped);
    pthread_mutex_unlock(&c->mu);
    unref_dropped(dropped);
    return e != NULL;
}

size_t gw_cache_sweep(gw_cache *c, uint64_t now_ns)
{
    if (!c)
        return 0;
    size_t n = 0;
    gw_cache_entry *dropped = NULL;
    pthread_mutex_lock(&c->mu);
    for (gw_cache_entry *e = c->lru_head; e;) {
        gw_cache_entry *next = e->next;
        if (now_ns >= e->expires_ns) {
            entry_drop(c, e, &dropped);
            c->st.expired++;
            n++;
        }
        e = next;
    }
    pthread_mutex_unlock(&c->mu);
    unref_dropped(dropped);
    return n;
}

void gw_cache_stats_get(gw_cache *c, gw_cache_stats *s)
{
    if (!c || !s)
        return;
    pthread_mutex_lock(&c->mu);
    *s = c->st;
    pthread_mutex_unlock(&c->mu);
    s->flight_bytes = atomic_load_explicit(&c->flight_bytes, memory_order_relaxed);
}

/* ------------------------------------------------------------------------ */
/* Flights: buffer                                                          */
/* ------------------------------------------------------------------------ */

static void meta_copy(gw_cache_meta *dst, const gw_cache_meta *src)
{
    *dst = *src;
    /* The strings are read later by whoever replays the entry. */
    dst->content_type[sizeof dst->content_type - 1] = '\0';
    dst->provider[sizeof dst->provider - 1] = '\0';
    dst->model[sizeof dst->model - 1] = '\0';
}

/* Appends a piece to f's buffer (f->mu held); false, with buffering turned
 * off for good, if a bound or memory says no. All or nothing. */
static bool buffer_append(gw_flight *f, const char *data, size_t len)
{
    gw_cache *c = f->c;
    if (f->stored + len > c->max_body)
        return false;
    size_t room = f->last ? f->last->cap - f->last->len : 0;
    size_t first = len < room ? len : room;
    size_t rest = len - first;
    fl_block *nb = NULL;
    if (rest > 0) {
        size_t want = f->last ? f->last->cap * 2 : BLOCK_MIN;
        if (want > BLOCK_MAX)
            want = BLOCK_MAX;
        if (want < rest)
            want = rest;
        /* The last block is full once `first` is copied, so reserved ==
         * stored + first here, and rest fits in what is left of max_body. */
        size_t left = c->max_body - f->reserved;
        if (want > left)
            want = left;
        size_t prev = atomic_fetch_add_explicit(&c->flight_bytes, want, memory_order_relaxed);
        if (prev + want > c->max_flight_bytes || !(nb = malloc(sizeof *nb + want))) {
            atomic_fetch_sub_explicit(&c->flight_bytes, want, memory_order_relaxed);
            return false;
        }
        nb->next = NULL;
        nb->cap = want;
        nb->len = 0;
        f->reserved += want;
    }
    if (first > 0) {
        memcpy(f->last->data + f->last->len, data, first);
        f->last->len += first;
    }
    if (nb) {
        memcpy(nb->data, data + first, rest);
        nb->len = rest;
        if (f->last)
            f->last->next = nb;
        else
            f->first = nb;
        f->last = nb;
    }
    f->stored += len;
    return true;
}

static void buffer_free(gw_flight *f)
{
    for (fl_block *b = f->first; b;) {
        fl_block *next = b->next;
        free(b);
        b = next;
    }
    f->first = f->last = NULL;
    f->stored = 0;
    atomic_fetch_sub_explicit(&f->c->flight_bytes, f->reserved, memory_order_relaxed);
    f->reserved = 0;
}

static void flight_destroy(gw_flight *f)
{
    buffer_free(f);
    pthread_cond_destroy(&f->cv);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

/* ------------------------------------------------------------------------ */
/* Flights: delivery (all with f->mu held; callbacks run with it released)  */
/* ------------------------------------------------------------------------ */

/*
 * Calls fw's callbacks for everything it has not had yet: the head, the
 * buffered bytes, the live piece (bytes [live_off, live_off + live_len) that
 * are not buffered, only while it is next for fw), and on_done once the
 * flight ended. The calling thread owns fw (fw->busy).
 */
static void deliver(gw_flight *f, gw_cache_follow *fw, const char *live, size_t live_off,
                    size_t live_len)
{
    while (!fw->cancelled && !fw->done_sent) {
        int state = f->state;
        bool delivered = fw->head_sent || fw->sent > 0;
        if (state == FL_FAILED && !delivered) {
            /* Nothing went out: the follower retries on its own, cleanly. */
        } else if (!fw->head_sent && f->has_head) {
            fw->head_sent = true;
            pthread_mutex_unlock(&f->mu);
            fw->sub.on_head(fw->sub.ctx, &f->head);
            pthread_mutex_lock(&f->mu);
            continue;
        } else if (fw->sent < f->stored) {
            if (!fw->blk) {
                fw->blk = f->first;
                fw->blk_off = 0;
            }
            while (fw->blk_off == fw->blk->len && fw->blk->next) {
                fw->blk = fw->blk->next;
                fw->blk_off = 0;
            }
            const char *p = fw->blk->data + fw->blk_off;
            size_t n = fw->blk->len - fw->blk_off;
            fw->blk_off += n;
            fw->sent += n;
            pthread_mutex_unlock(&f->mu);
            fw->sub.on_data(fw->sub.ctx, p, n);
            pthread_mutex_lock(&f->mu);
            continue;
        } else if (live && live_len > 0 && fw->sent == live_off) {
            fw->sent += live_len;
            pthread_mutex_unlock(&f->mu);
            fw->sub.on_data(fw->sub.ctx, live, live_len);
            pthread_mutex_lock(&f->mu);
            live = NULL;
            continue;
        } else if (state == FL_RUNNING) {
            return;
        }
        fw->done_sent = true;
        bool ok = state == FL_OK && fw->sent == f->total;
        pthread_mutex_unlock(&f->mu);
        fw->sub.on_done(fw->sub.ctx, ok, delivered);
        pthread_mutex_lock(&f->mu);
    }
}

/* Frees fw if it was unfollowed and nobody holds or waits on it. Returns
 * true if that dropped the flight's last reference (the caller destroys f
 * after unlocking). */
static bool reap(gw_flight *f, gw_cache_follow *fw)
{
    if (!fw->free_on_release || fw->busy || fw->pins > 0)
        return false;
    if (fw->prev)
        fw->prev->next = fw->next;
    else
        f->followers = fw->next;
    if (fw->next)
        fw->next->prev = fw->prev;
    free(fw);
    return --f->refs == 0;
}

/* Once the flight ended and every follower had its on_done (or left), nobody
 * reads the buffer again: give its memory back now rather than when the
 * last follower handle is freed (f->mu held). */
static void buffer_release_if_idle(gw_flight *f)
{
    if (f->state == FL_RUNNING || !f->first)
        return;
    for (const gw_cache_follow *fw = f->followers; fw; fw = fw->next)
        if (fw->busy || (!fw->done_sent && !fw->cancelled))
            return;
    buffer_free(f);
}

static void claim(gw_cache_follow *fw)
{
    fw->busy = true;
    fw->busy_thread = pthread_self();
}

static bool release(gw_flight *f, gw_cache_follow *fw)
{
    fw->busy = false;
    pthread_cond_broadcast(&f->cv);
    return reap(f, fw);
}

/*
 * The leader's pass over its followers after a change (head, a piece, the
 * end). live != NULL: that piece is not buffered, so every follower must
 * get it now, waiting for those another thread is delivering to. Followers
 * that join during the pass are added at the list head, behind the cursor:
 * they catch up by themselves.
 */
static void leader_pass(gw_flight *f, const char *live, size_t live_off, size_t live_len)
{
    gw_cache_follow *fw = f->followers;
    while (fw) {
        if (!fw->cancelled && !fw->done_sent && fw->busy && live) {
            fw->pins++;
            while (fw->busy)
                pthread_cond_wait(&f->cv, &f->mu);
            fw->pins--;
            pthread_cond_broadcast(&f->cv); /* an unfollow may wait for pins == 0 */
        }
        gw_cache_follow *next;
        if (fw->cancelled || fw->done_sent || fw->busy) {
            next = fw->next;
            reap(f, fw); /* the leader holds a reference: never the last one */
        } else {
            claim(fw);
            deliver(f, fw, live, live_off, live_len);
            next = fw->next;
            release(f, fw);
        }
        fw = next;
    }
}

/* ------------------------------------------------------------------------ */
/* Flights: API                                                             */
/* ------------------------------------------------------------------------ */

static gw_flight *flight_new(gw_cache *c, const gw_cache_key *k)
{
    gw_flight *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->c = c;
    f->key = *k;
    f->refs = 1;
    f->state = FL_RUNNING;
    f->buffering = true;
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    return f;
}

gw_cache_result gw_cache_begin(gw_cache *c, const gw_cache_key *k, uint64_t now_ns, bool coalesce,
                               const gw_cache_sub *sub, gw_cache_entry **hit, gw_flight **flight,
                               gw_cache_follow **follow)
{
    if (hit)
        *hit = NULL;
    if (flight)
        *flight = NULL;
    if (follow)
        *follow = NULL;
    if (!c || !k || !hit || !flight || !follow)
        return GW_CACHE_LEAD; /* a NULL flight: every gw_flight_* call ignores it */

    gw_cache_entry *dropped = NULL;
    pthread_mutex_lock(&c->mu);
    gw_cache_entry *e = cmap_get(&c->entries, k);
    if (e && now_ns >= e->expires_ns) {
        entry_drop(c, e, &dropped);
        c->st.expired++;
        e = NULL;
    }
    if (e) {
        if (c->lru_head != e) {
            lru_unlink(c, e);
            lru_push_head(c, e);
        }
        atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
        c->st.hits++;
        pthread_mutex_unlock(&c->mu);
        *hit = e;
        return GW_CACHE_HIT;
    }

    gw_flight *f = cmap_get(&c->flights, k);
    if (f && coalesce && sub && sub->on_head && sub->on_data && sub->on_done) {
        gw_cache_follow *fw = calloc(1, sizeof *fw);
        if (fw) {
            pthread_mutex_lock(&f->mu);
            if (f->buffering && f->state == FL_RUNNING) {
                fw->f = f;
                fw->sub = *sub;
                claim(fw);
                fw->next = f->followers;
                if (f->followers)
                    f->followers->prev = fw;
                f->followers = fw;
                f->refs++;
                c->st.coalesced++;
                pthread_mutex_unlock(&c->mu);
                unref_dropped(dropped);
                deliver(f, fw, NULL, 0, 0);
                release(f, fw); /* not unfollowed yet: the caller has no handle */
                buffer_release_if_idle(f);
                pthread_mutex_unlock(&f->mu);
                *follow = fw;
                return GW_CACHE_FOLLOW;
            }
            pthread_mutex_unlock(&f->mu);
            free(fw);
        }
    }

    c->st.misses++;
    gw_flight *nf = flight_new(c, k);
    if (nf && !f && cmap_put(&c->flights, &nf->key, nf) == 0)
        nf->in_map = true;
    pthread_mutex_unlock(&c->mu);
    unref_dropped(dropped);
    *flight = nf;
    return GW_CACHE_LEAD;
}

void gw_flight_head(gw_flight *f, const gw_cache_meta *m)
{
    if (!f || !m)
        return;
    pthread_mutex_lock(&f->mu);
    if (!f->has_head && f->state == FL_RUNNING) {
        meta_copy(&f->head, m);
        f->has_head = true;
        leader_pass(f, NULL, 0, 0);
    }
    pthread_mutex_unlock(&f->mu);
}

void gw_flight_data(gw_flight *f, const char *data, size_t len)
{
    if (!f || !data || len == 0)
        return;
    pthread_mutex_lock(&f->mu);
    if (f->state == FL_RUNNING) {
        size_t off = f->total;
        if (f->buffering && !buffer_append(f, data, len))
            f->buffering = false;
        bool buffered = f->buffering;
        f->total += len;
        if (f->followers)
            leader_pass(f, buffered ? NULL : data, off, len);
    }
    pthread_mutex_unlock(&f->mu);
}

/* Takes f out of the map, marks it ended, tells the followers, drops the
 * leader's reference. */
static void flight_end(gw_flight *f, int state, gw_cache_entry *e, uint64_t now_ns)
{
    gw_cache *c = f->c;
    gw_cache_entry *dropped = NULL;
    pthread_mutex_lock(&c->mu);
    if (f->in_map) {
        cmap_del(&c->flights, &f->key);
        f->in_map = false;
    }
    if (e) {
        gw_cache_entry *old = cmap_get(&c->entries, &e->key);
        if (old)
            entry_drop(c, old, &dropped);
        if (cmap_put(&c->entries, &e->key, e) == 0) {
            lru_push_head(c, e);
            c->st.entries++;
            c->st.bytes += e->charge;
            evict(c, now_ns, &dropped);
        } else {
            e->next = dropped;
            dropped = e;
        }
    }
    pthread_mutex_unlock(&c->mu);
    unref_dropped(dropped);

    pthread_mutex_lock(&f->mu);
    f->state = state;
    leader_pass(f, NULL, 0, 0);
    buffer_release_if_idle(f);
    bool last = --f->refs == 0;
    pthread_mutex_unlock(&f->mu);
    if (last)
        flight_destroy(f);
}

void gw_flight_commit(gw_flight *f, bool store, uint64_t ttl_ns, const gw_cache_meta *final_meta,
                      uint64_t now_ns)
{
    if (!f)
        return;
    gw_cache *c = f->c;
    gw_cache_entry *e = NULL;
    /* Only this thread appends, so the buffer can be read without f->mu. */
    if (store && ttl_ns > 0 && f->buffering && f->stored == f->total && f->total <= c->max_body &&
        (final_meta || f->has_head)) {
        e = malloc(gw_cache_entry_charge(f->total));
        if (e) {
            atomic_init(&e->refs, 1);
            e->prev = e->next = NULL;
            e->expires_ns = now_ns + ttl_ns < now_ns ? UINT64_MAX : now_ns + ttl_ns;
            e->charge = gw_cache_entry_charge(f->total);
            e->key = f->key;
            meta_copy(&e->meta, final_meta ? final_meta : &f->head);
            e->len = f->total;
            size_t off = 0;
            for (const fl_block *b = f->first; b; b = b->next) {
                memcpy(e->body + off, b->data, b->len);
                off += b->len;
            }
            e->body[off] = '\0';
        }
    }
    flight_end(f, FL_OK, e, now_ns);
}

void gw_flight_abort(gw_flight *f)
{
    if (f)
        flight_end(f, FL_FAILED, NULL, 0);
}

void gw_cache_unfollow(gw_cache *c, gw_cache_follow *fw)
{
    (void)c;
    if (!fw)
        return;
    gw_flight *f = fw->f;
    pthread_mutex_lock(&f->mu);
    fw->cancelled = true;
    if (fw->busy && pthread_equal(fw->busy_thread, pthread_self())) {
        /* From inside its own callback: whoever lets go of it last (this
         * thread's deliverer, or the leader if it is pinned) frees it. */
        fw->free_on_release = true;
        pthread_mutex_unlock(&f->mu);
        return;
    }
    while (fw->busy || fw->pins > 0)
        pthread_cond_wait(&f->cv, &f->mu);
    fw->free_on_release = true;
    bool last = reap(f, fw);
    pthread_mutex_unlock(&f->mu);
    if (last)
        flight_destroy(f);
}
