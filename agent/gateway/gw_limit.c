/*
 * gw_limit: sharded counter table and the fixed/sliding window arithmetic.
 * The contract is in gw_limit.h; the reasoning in
 * docs/decisions/0011-gateway-cache-and-limits.md.
 *
 * Layout
 *   GW_LIMIT_SHARDS shards, each on its own cache line: a mutex, an
 *   open-addressing index (linear probing, backward-shift deletion, so no
 *   tombstones ever accumulate) of {identity hash, counter}, a sweep cursor
 *   and two small free lists of counters (fixed ones are small, sliding ones
 *   carry their ring). The shard is the top 6 bits of the identity hash, the
 *   home slot its low bits.
 *
 *   A fixed counter holds one count and the index of its window
 *   (now / window_ns). A sliding counter holds a ring of RING = 64 + 1
 *   sub-bucket sums: ring[b % RING] is sub-bucket b for b in
 *   (head - RING, head], where head is the newest sub-bucket it has seen;
 *   every other slot is zero, so the window's sum is the whole ring. The
 *   running total is recomputed exactly whenever head moves (at most once
 *   per sub-bucket), so fractional costs do not drift.
 *
 *   Tickets name a counter by (identity hash, incarnation id): a settle
 *   finds it by probing from its home slot, and a counter reclaimed (and
 *   perhaps re-created under the same identity) in between does not match,
 *   which is right because reclaiming means nothing in it counted any more.
 */
#include "gateway/gw_limit.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define RING (GW_LIMIT_SUB_BUCKETS + 1)
#define SHARD_BITS 6
#define INITIAL_SLOTS 16
#define FREE_KEEP 16   /* counters of each kind kept per shard for reuse */
#define SWEEP_STEP 2   /* index slots examined per shard and acquire */
#define NS_PER_S 1000000000ull
#define SWEEP_INTERVAL_NS 1000000ull /* 1 ms */
#define FIT_SLACK 1e-9 /* relative; absorbs rounding of fractional costs */

_Static_assert((1u << SHARD_BITS) == GW_LIMIT_SHARDS, "shard index is the top SHARD_BITS bits");

typedef struct lim_counter {
    struct lim_counter *next_free;
    uint64_t hash;
    uint64_t id;
    uint64_t window_ns;
    uint64_t bucket_ns;      /* fixed: window_ns; sliding: ceil(window_ns / 64) */
    uint64_t head;           /* fixed: window index; sliding: newest sub-bucket index */
    double count;            /* fixed: the window's count; sliding: sum of ring */
    gw_limit_unit unit;
    bool sliding;
    char key[GW_LIMIT_KEY_MAX];
    double ring[];           /* sliding only: RING sub-bucket sums */
} lim_counter;

typedef struct lim_slot {
    uint64_t hash;
    lim_counter *c;          /* NULL: empty */
} lim_slot;

typedef struct lim_shard {
    _Alignas(64) pthread_mutex_t mu;
    lim_slot *slots;         /* cap entries, cap a power of two */
    size_t cap;
    size_t n;
    size_t sweep_pos;
    lim_counter *free_fixed, *free_sliding;
    size_t n_free_fixed, n_free_sliding;
} lim_shard;

struct gw_limiter {
    size_t max_keys;
    _Atomic size_t live;
    _Atomic uint64_t next_id;
    _Atomic uint64_t last_sweep_ns; /* the last full sweep run from acquire; 0: none */
    lim_shard shards[GW_LIMIT_SHARDS];
};

/* A validated rule: what the table needs besides the rule itself. */
typedef struct lim_prep {
    uint64_t hash;
    uint64_t window_ns;
    uint64_t bucket_ns;
    size_t key_len;
    unsigned shard;
} lim_prep;

/* ------------------------------------------------------------------------ */
/* Identity and window arithmetic                                           */
/* ------------------------------------------------------------------------ */

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

static uint64_t identity_hash(const char *key, size_t len, gw_limit_unit unit, uint64_t window_ns,
                              bool sliding)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)key[i];
        h *= 0x100000001b3ull;
    }
    return mix64(h ^ mix64(window_ns * 8 + (uint64_t)unit * 2 + (sliding ? 1 : 0)));
}

static int prep_rule(const gw_limit_rule *r, lim_prep *p)
{
    size_t len = strnlen(r->key, GW_LIMIT_KEY_MAX);
    if (len == GW_LIMIT_KEY_MAX)
        return -1;
    if ((int)r->unit < GW_LIMIT_REQUESTS || (int)r->unit > GW_LIMIT_COST)
        return -1;
    if (!isfinite(r->limit) || r->limit <= 0)
        return -1;
    if (!isfinite(r->window_s) || r->window_s <= 0 || r->window_s > GW_LIMIT_MAX_WINDOW_S)
        return -1;
    double wns = nearbyint(r->window_s * 1e9);
    if (wns < 1)
        return -1;
    p->window_ns = (uint64_t)wns;
    p->bucket_ns = r->sliding ? (p->window_ns + GW_LIMIT_SUB_BUCKETS - 1) / GW_LIMIT_SUB_BUCKETS
                              : p->window_ns;
    p->key_len = len;
    p->hash = identity_hash(r->key, len, r->unit, p->window_ns, r->sliding);
    p->shard = (unsigned)(p->hash >> (64 - SHARD_BITS));
    return 0;
}

static bool fits(double used, double amount, double limit)
{
    return used + amount <= limit + limit * FIT_SLACK;
}

/* Whole seconds, rounded up, at least 1. */
static double ns_to_retry_s(uint64_t ns)
{
    uint64_t s = ns / NS_PER_S + (ns % NS_PER_S != 0);
    return s < 1 ? 1.0 : (double)s;
}

/* True when nothing charged to c counts any more at now. */
static bool counter_dead(const lim_counter *c, uint64_t now_ns)
{
    uint64_t b = now_ns / c->bucket_ns;
    if (b <= c->head)
        return false;
    return c->sliding ? b - c->head >= RING : true;
}

static double ring_sum(const lim_counter *c)
{
    double s = 0;
    for (size_t i = 0; i < RING; i++)
        s += c->ring[i];
    return s;
}

/* Moves c to now (never backwards): drops what left the window. */
static void counter_advance(lim_counter *c, uint64_t now_ns)
{
    uint64_t b = now_ns / c->bucket_ns;
    if (b <= c->head)
        return;
    if (!c->sliding) {
        c->count = 0;
        c->head = b;
        return;
    }
    uint64_t d = b - c->head;
    if (d >= RING) {
        memset(c->ring, 0, RING * sizeof c->ring[0]);
        c->count = 0;
    } else {
        for (uint64_t k = 1; k <= d; k++)
            c->ring[(c->head + k) % RING] = 0;
        c->count = ring_sum(c);
    }
    c->head = b;
}

/* Nanoseconds from now until `amount` fits under `limit`, assuming no other
 * charge; c is advanced and amount <= limit. */
static uint64_t counter_wait_ns(const lim_counter *c, double limit, double amount, uint64_t now_ns)
{
    if (!c->sliding) {
        uint64_t end = (c->head + 1) * c->window_ns;
        return end > now_ns ? end - now_ns : 1;
    }
    /* Sub-bucket head - 64 + k leaves the window when head + 1 + k begins. */
    double freed = 0;
    for (uint64_t k = 0; k < RING; k++) {
        freed += c->ring[(c->head + 1 + k) % RING];
        if (fits(c->count - freed, amount, limit) || k == RING - 1) {
            uint64_t at = (c->head + 1 + k) * c->bucket_ns;
            return at > now_ns ? at - now_ns : 1;
        }
    }
    return c->window_ns;
}

/* ------------------------------------------------------------------------ */
/* Shard index                                                              */
/* ------------------------------------------------------------------------ */

static bool counter_is(const lim_counter *c, const gw_limit_rule *r, const lim_prep *p)
{
    return c->window_ns == p->window_ns && c->sliding == r->sliding && c->unit == r->unit &&
           memcmp(c->key, r->key, p->key_len + 1) == 0;
}

static lim_counter *shard_find(const lim_shard *s, const gw_limit_rule *r, const lim_prep *p)
{
    size_t mask = s->cap - 1;
    for (size_t i = p->hash & mask; s->slots[i].c; i = (i + 1) & mask)
        if (s->slots[i].hash == p->hash && counter_is(s->slots[i].c, r, p))
            return s->slots[i].c;
    return NULL;
}

static lim_counter *shard_find_id(const lim_shard *s, uint64_t hash, uint64_t id)
{
    size_t mask = s->cap - 1;
    for (size_t i = hash & mask; s->slots[i].c; i = (i + 1) & mask)
        if (s->slots[i].hash == hash && s->slots[i].c->id == id)
            return s->slots[i].c;
    return NULL;
}

static void slots_put(lim_slot *slots, size_t cap, uint64_t hash, lim_counter *c)
{
    size_t mask = cap - 1, i = hash & mask;
    while (slots[i].c)
        i = (i + 1) & mask;
    slots[i].hash = hash;
    slots[i].c = c;
}

static int shard_resize(lim_shard *s, size_t ncap)
{
    lim_slot *ns = calloc(ncap, sizeof *ns);
    if (!ns)
        return -1;
    for (size_t i = 0; i < s->cap; i++)
        if (s->slots[i].c)
            slots_put(ns, ncap, s->slots[i].hash, s->slots[i].c);
    free(s->slots);
    s->slots = ns;
    s->cap = ncap;
    s->sweep_pos = 0;
    return 0;
}

/* Keeps the load under 70%. */
static int shard_reserve(lim_shard *s)
{
    if ((s->n + 1) * 10 <= s->cap * 7)
        return 0;
    return shard_resize(s, s->cap * 2);
}

/* After a burst of keys has been reclaimed, the index gives its memory back
 * too (below 1/8 full; growth happens at 70%, so no flapping). */
static void shard_maybe_shrink(lim_shard *s)
{
    size_t ncap = s->cap;
    while (ncap > INITIAL_SLOTS && s->n * 8 < ncap)
        ncap /= 2;
    if (ncap != s->cap)
        shard_resize(s, ncap); /* on failure it simply stays larger */
}

/* Removes slot i, shifting the rest of its cluster back so that every entry
 * stays reachable from its home slot. */
static void shard_remove_at(lim_shard *s, size_t i)
{
    size_t mask = s->cap - 1, j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!s->slots[j].c)
            break;
        size_t k = s->slots[j].hash & mask;
        bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
        if (!stays) {
            s->slots[i] = s->slots[j];
            i = j;
        }
    }
    s->slots[i].c = NULL;
    s->slots[i].hash = 0;
    s->n--;
}

static void counter_release(gw_limiter *l, lim_shard *s, lim_counter *c)
{
    atomic_fetch_sub_explicit(&l->live, 1, memory_order_relaxed);
    if (c->sliding && s->n_free_sliding < FREE_KEEP) {
        c->next_free = s->free_sliding;
        s->free_sliding = c;
        s->n_free_sliding++;
    } else if (!c->sliding && s->n_free_fixed < FREE_KEEP) {
        c->next_free = s->free_fixed;
        s->free_fixed = c;
        s->n_free_fixed++;
    } else {
        free(c);
    }
}

/* Reclaims dead counters of s: `budget` slots from the cursor on, or the
 * whole index when budget is SIZE_MAX. Returns how many. */
static size_t shard_sweep(gw_limiter *l, lim_shard *s, uint64_t now_ns, size_t budget)
{
    size_t reclaimed = 0;
    if (budget >= s->cap) {
        for (size_t i = 0; i < s->cap;) {
            lim_counter *c = s->slots[i].c;
            if (c && counter_dead(c, now_ns)) {
                shard_remove_at(s, i); /* slot i may now hold a shifted entry: look again */
                counter_release(l, s, c);
                reclaimed++;
            } else {
                i++;
            }
        }
        if (reclaimed)
            shard_maybe_shrink(s);
        return reclaimed;
    }
    for (size_t k = 0; k < budget; k++) {
        size_t i = s->sweep_pos & (s->cap - 1);
        lim_counter *c = s->slots[i].c;
        if (c && counter_dead(c, now_ns)) {
            shard_remove_at(s, i);
            counter_release(l, s, c);
            reclaimed++;
        } else {
            s->sweep_pos = i + 1;
        }
    }
    if (reclaimed)
        shard_maybe_shrink(s);
    return reclaimed;
}

/* A new, empty counter for rule r at now; NULL when max_keys are live or
 * memory ran out. */
static lim_counter *shard_create(gw_limiter *l, lim_shard *s, const gw_limit_rule *r,
                                 const lim_prep *p, uint64_t now_ns)
{
    if (atomic_fetch_add_explicit(&l->live, 1, memory_order_relaxed) >= l->max_keys) {
        atomic_fetch_sub_explicit(&l->live, 1, memory_order_relaxed);
        return NULL;
    }
    lim_counter *c = NULL;
    if (shard_reserve(s) == 0) {
        if (r->sliding && s->free_sliding) {
            c = s->free_sliding;
            s->free_sliding = c->next_free;
            s->n_free_sliding--;
        } else if (!r->sliding && s->free_fixed) {
            c = s->free_fixed;
            s->free_fixed = c->next_free;
            s->n_free_fixed--;
        } else {
            c = malloc(sizeof *c + (r->sliding ? RING * sizeof(double) : 0));
        }
    }
    if (!c) {
        atomic_fetch_sub_explicit(&l->live, 1, memory_order_relaxed);
        return NULL;
    }
    c->next_free = NULL;
    c->hash = p->hash;
    c->id = atomic_fetch_add_explicit(&l->next_id, 1, memory_order_relaxed) + 1;
    c->window_ns = p->window_ns;
    c->bucket_ns = p->bucket_ns;
    c->head = now_ns / p->bucket_ns;
    c->count = 0;
    c->unit = r->unit;
    c->sliding = r->sliding;
    memcpy(c->key, r->key, p->key_len + 1);
    if (r->sliding)
        memset(c->ring, 0, RING * sizeof c->ring[0]);
    slots_put(s->slots, s->cap, p->hash, c);
    s->n++;
    return c;
}

/* ------------------------------------------------------------------------ */
/* Public API                                                               */
/* ------------------------------------------------------------------------ */

gw_limiter *gw_limiter_new(size_t max_keys)
{
    if (max_keys == 0)
        return NULL;
    size_t size = (sizeof(gw_limiter) + 63) / 64 * 64;
    gw_limiter *l = aligned_alloc(64, size);
    if (!l)
        return NULL;
    memset(l, 0, size);
    l->max_keys = max_keys;
    atomic_init(&l->live, 0);
    atomic_init(&l->next_id, 0);
    atomic_init(&l->last_sweep_ns, 0);
    for (size_t i = 0; i < GW_LIMIT_SHARDS; i++) {
        lim_shard *s = &l->shards[i];
        pthread_mutex_init(&s->mu, NULL);
        s->cap = INITIAL_SLOTS;
        s->slots = calloc(s->cap, sizeof *s->slots);
        if (!s->slots) {
            for (size_t j = 0; j <= i; j++) {
                free(l->shards[j].slots);
                pthread_mutex_destroy(&l->shards[j].mu);
            }
            free(l);
            return NULL;
        }
    }
    return l;
}

static void free_list(lim_counter *c)
{
    while (c) {
        lim_counter *next = c->next_free;
        free(c);
        c = next;
    }
}

void gw_limiter_free(gw_limiter *l)
{
    if (!l)
        return;
    for (size_t i = 0; i < GW_LIMIT_SHARDS; i++) {
        lim_shard *s = &l->shards[i];
        for (size_t j = 0; j < s->cap; j++)
            free(s->slots[j].c);
        free(s->slots);
        free_list(s->free_fixed);
        free_list(s->free_sliding);
        pthread_mutex_destroy(&s->mu);
    }
    free(l);
}

/* A full sweep costs O(max_keys); when the table is full of live counters,
 * a stream of new keys must not make every acquire pay it. At most one full
 * sweep per SWEEP_INTERVAL_NS of the callers' clock runs from acquire. */
static size_t full_sweep_throttled(gw_limiter *l, uint64_t now_ns)
{
    uint64_t last = atomic_load_explicit(&l->last_sweep_ns, memory_order_relaxed);
    if (last != 0 && now_ns - last < SWEEP_INTERVAL_NS && now_ns >= last)
        return 0;
    if (!atomic_compare_exchange_strong(&l->last_sweep_ns, &last, now_ns ? now_ns : 1))
        return 0;
    return gw_limiter_sweep(l, now_ns);
}

static void unlock_shards(gw_limiter *l, const unsigned *sh, size_t ns)
{
    for (size_t i = ns; i-- > 0;)
        pthread_mutex_unlock(&l->shards[sh[i]].mu);
}

int gw_limit_acquire(gw_limiter *l, const gw_limit_rule *rules, const double *amounts, size_t n,
                     uint64_t now_ns, gw_limit_ticket *t, double *retry_after_s, size_t *which)
{
    if (!l || n > GW_LIMIT_MAX_RULES || (n > 0 && (!rules || !amounts)))
        return -1;
    lim_prep p[GW_LIMIT_MAX_RULES];
    unsigned sh[GW_LIMIT_MAX_RULES];
    size_t ns = 0;
    for (size_t i = 0; i < n; i++) {
        if (prep_rule(&rules[i], &p[i]) != 0 || !isfinite(amounts[i]) || amounts[i] < 0)
            return -1;
        /* Insertion into the sorted, duplicate-free list of shards to lock. */
        size_t j = ns;
        while (j > 0 && sh[j - 1] > p[i].shard)
            j--;
        if (j > 0 && sh[j - 1] == p[i].shard)
            continue;
        memmove(&sh[j + 1], &sh[j], (ns - j) * sizeof sh[0]);
        sh[j] = p[i].shard;
        ns++;
    }
    if (n == 0) {
        if (t) {
            memset(t, 0, sizeof *t);
        }
        return 0;
    }
    if (atomic_load_explicit(&l->live, memory_order_relaxed) + n > l->max_keys)
        full_sweep_throttled(l, now_ns);

    lim_counter *c[GW_LIMIT_MAX_RULES];
    for (int attempt = 0;; attempt++) {
        for (size_t i = 0; i < ns; i++) {
            pthread_mutex_lock(&l->shards[sh[i]].mu);
            shard_sweep(l, &l->shards[sh[i]], now_ns, SWEEP_STEP);
        }
        size_t found = 0;
        for (; found < n; found++) {
            lim_shard *s = &l->shards[p[found].shard];
            c[found] = shard_find(s, &rules[found], &p[found]);
            if (!c[found])
                c[found] = shard_create(l, s, &rules[found], &p[found], now_ns);
            if (!c[found])
                break;
        }
        if (found == n)
            break;
        unlock_shards(l, sh, ns);
        /* Full: reclaim everywhere (one shard at a time, none held) and try
         * once more. Counters created above are empty and harmless. */
        if (attempt > 0 || full_sweep_throttled(l, now_ns) == 0)
            return -1;
    }

    for (size_t i = 0; i < n; i++)
        counter_advance(c[i], now_ns);

    size_t worst = n;
    uint64_t worst_ns = 0;
    for (size_t i = 0; i < n; i++) {
        double need = 0;
        for (size_t j = 0; j < n; j++)
            if (c[j] == c[i])
                need += amounts[j];
        if (fits(c[i]->count, need, rules[i].limit))
            continue;
        uint64_t wait = fits(0, need, rules[i].limit)
                            ? counter_wait_ns(c[i], rules[i].limit, need, now_ns)
                            : c[i]->window_ns;
        if (worst == n || wait > worst_ns) {
            worst = i;
            worst_ns = wait;
        }
    }
    if (worst < n) {
        unlock_shards(l, sh, ns);
        if (retry_after_s)
            *retry_after_s = ns_to_retry_s(worst_ns);
        if (which)
            *which = worst;
        return 1;
    }

    for (size_t i = 0; i < n; i++) {
        lim_counter *ci = c[i];
        if (ci->sliding)
            ci->ring[ci->head % RING] += amounts[i];
        ci->count += amounts[i];
        if (t) {
            t->res[i].hash = ci->hash;
            t->res[i].id = ci->id;
            t->res[i].slot = ci->head;
            t->res[i].reserved = amounts[i];
        }
    }
    unlock_shards(l, sh, ns);
    if (t) {
        t->n = n;
        t->settled = false;
    }
    return 0;
}

void gw_limit_settle(gw_limiter *l, gw_limit_ticket *t, const double *actual, uint64_t now_ns)
{
    if (!l || !t || t->settled)
        return;
    t->settled = true;
    if (!actual || t->n > GW_LIMIT_MAX_RULES)
        return;
    for (size_t i = 0; i < t->n; i++) {
        const gw_limit_res *r = &t->res[i];
        double a = isfinite(actual[i]) && actual[i] > 0 ? actual[i] : 0;
        if (!isfinite(r->reserved) || a == r->reserved)
            continue;
        double d = a - r->reserved;
        lim_shard *s = &l->shards[r->hash >> (64 - SHARD_BITS)];
        pthread_mutex_lock(&s->mu);
        lim_counter *c = shard_find_id(s, r->hash, r->id);
        if (c) {
            uint64_t cur = now_ns / c->bucket_ns;
            if (cur < c->head)
                cur = c->head;
            if (!c->sliding) {
                if (r->slot == cur && r->slot == c->head) {
                    c->count += d;
                    if (c->count < 0)
                        c->count = 0;
                }
            } else if (r->slot <= c->head && cur - r->slot < RING) {
                /* Still in the window: ring[slot % RING] still holds it. */
                double *b = &c->ring[r->slot % RING];
                if (*b + d < 0)
                    d = -*b;
                *b += d;
                c->count += d;
                if (c->count < 0)
                    c->count = 0;
            }
        }
        pthread_mutex_unlock(&s->mu);
    }
}

/* Finds r's counter, advanced to now, with its shard locked; NULL (shard
 * still locked) if absent. */
static lim_counter *lookup_locked(gw_limiter *l, const gw_limit_rule *r, const lim_prep *p,
                                  uint64_t now_ns)
{
    lim_shard *s = &l->shards[p->shard];
    pthread_mutex_lock(&s->mu);
    lim_counter *c = shard_find(s, r, p);
    if (c)
        counter_advance(c, now_ns);
    return c;
}

double gw_limit_remaining(gw_limiter *l, const gw_limit_rule *r, uint64_t now_ns)
{
    lim_prep p;
    if (!l || !r || prep_rule(r, &p) != 0)
        return 0;
    lim_counter *c = lookup_locked(l, r, &p, now_ns);
    double left = c ? r->limit - c->count : r->limit;
    pthread_mutex_unlock(&l->shards[p.shard].mu);
    return left > 0 ? left : 0;
}

double gw_limit_reset_s(gw_limiter *l, const gw_limit_rule *r, uint64_t now_ns)
{
    lim_prep p;
    if (!l || !r || prep_rule(r, &p) != 0)
        return 0;
    lim_counter *c = lookup_locked(l, r, &p, now_ns);
    double out = 0;
    if (c && c->count > 0) {
        uint64_t at = (c->head + 1) * c->bucket_ns;
        if (c->sliding) {
            for (uint64_t k = 0; k < RING; k++) {
                if (c->ring[(c->head + 1 + k) % RING] > 0) {
                    at = (c->head + 1 + k) * c->bucket_ns;
                    break;
                }
            }
        }
        out = ns_to_retry_s(at > now_ns ? at - now_ns : 1);
    }
    pthread_mutex_unlock(&l->shards[p.shard].mu);
    return out;
}

size_t gw_limiter_sweep(gw_limiter *l, uint64_t now_ns)
{
    if (!l)
        return 0;
    size_t reclaimed = 0;
    for (size_t i = 0; i < GW_LIMIT_SHARDS; i++) {
        lim_shard *s = &l->shards[i];
        pthread_mutex_lock(&s->mu);
        reclaimed += shard_sweep(l, s, now_ns, SIZE_MAX);
        pthread_mutex_unlock(&s->mu);
    }
    return reclaimed;
}

size_t gw_limiter_count(gw_limiter *l)
{
    return l ? atomic_load_explicit(&l->live, memory_order_relaxed) : 0;
}

size_t gw_limiter_index_slots(gw_limiter *l)
{
    if (!l)
        return 0;
    size_t n = 0;
    for (size_t i = 0; i < GW_LIMIT_SHARDS; i++) {
        pthread_mutex_lock(&l->shards[i].mu);
        n += l->shards[i].cap;
        pthread_mutex_unlock(&l->shards[i].mu);
    }
    return n;
}
