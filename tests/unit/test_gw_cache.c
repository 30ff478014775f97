/*
 * Unit tests for gw_cache: hit/miss/TTL, exact byte accounting and LRU
 * eviction, store=false, streams replayed byte for byte, coalescing (catch-up
 * then live bytes, leader abort, followers retrying, unfollow from inside a
 * callback), the buffer bounds of flights, and concurrency: followers joining
 * and leaving at random points while a leader streams from another thread
 * (with and without the flight buffer overflowing), and many threads using
 * many keys at once. Run under ASan too: a callback after unfollow or a
 * freed follower context shows up there.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gateway/gw_cache.h"

#define S(x) ((uint64_t)((x) * 1e9))
#define T0 S(1000)

static gw_cache_key key_of(unsigned n)
{
    gw_cache_key k;
    memset(&k, 0, sizeof k);
    memcpy(k.b, &n, sizeof n); /* structured keys: the map must cope */
    k.b[31] = 0x5a;
    return k;
}

static gw_cache_meta meta_of(int status, bool stream, int step)
{
    gw_cache_meta m;
    memset(&m, 0, sizeof m);
    m.status = status;
    m.stream = stream;
    m.step = step;
    snprintf(m.content_type, sizeof m.content_type, "%s",
             stream ? "text/event-stream" : "application/json");
    snprintf(m.provider, sizeof m.provider, "openai");
    snprintf(m.model, sizeof m.model, "gpt-test");
    return m;
}

/* The test stream: byte i of every response is pattern(i). */
static char pattern(size_t i)
{
    return (char)('a' + (i * 7 + i / 251) % 26);
}

static void fill_pattern(char *p, size_t off, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = pattern(off + i);
}

static bool is_pattern(const char *p, size_t off, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != pattern(off + i))
            return false;
    return true;
}

/* A LEAD that forwards `body` and commits it. */
static void lead_and_store(gw_cache *c, const gw_cache_key *k, const char *body, size_t len,
                           uint64_t ttl, uint64_t now)
{
    gw_cache_entry *hit;
    gw_flight *f;
    gw_cache_follow *fw;
    cr_assert_eq(gw_cache_begin(c, k, now, true, NULL, &hit, &f, &fw), GW_CACHE_LEAD);
    gw_cache_meta m = meta_of(200, false, 0);
    gw_flight_head(f, &m);
    gw_flight_data(f, body, len);
    gw_flight_commit(f, true, ttl, NULL, now);
}

static gw_cache_result probe(gw_cache *c, const gw_cache_key *k, uint64_t now)
{
    gw_cache_entry *hit;
    gw_flight *f;
    gw_cache_follow *fw;
    gw_cache_result r = gw_cache_begin(c, k, now, false, NULL, &hit, &f, &fw);
    if (r == GW_CACHE_HIT)
        gw_cache_entry_unref(hit);
    else
        gw_flight_abort(f);
    return r;
}

/* ---- a recording follower ---------------------------------------------- */

typedef struct rec {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    gw_cache *c;
    gw_cache_follow *fw;     /* set once begin returned */
    char *buf;
    size_t len, cap;
    int heads, dones;
    gw_cache_meta head;
    bool ok, delivered;
    bool closed;             /* unfollowed: any later callback is a bug */
    int late_calls;
    bool unfollowed;         /* someone called unfollow */
    size_t unfollow_at;      /* > 0: unfollow itself from on_data once len >= this */
    bool unfollow_in_done;
    bool retry_on_fail;      /* on_done(false, false): begin again from the callback */
    long slow_first_data_ns; /* sleep in the first on_data (a slow catch-up) */
    _Atomic bool in_first_data;
    _Atomic int in_on_data;  /* on_data calls running now */
    gw_cache_key key;
    gw_cache_result retry_result;
    gw_flight *retry_flight;
} rec;

static void rec_init(rec *r, gw_cache *c)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    r->c = c;
}

static void rec_destroy(rec *r)
{
    free(r->buf);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
}

static void on_head(void *ctx, const gw_cache_meta *m)
{
    rec *r = ctx;
    pthread_mutex_lock(&r->mu);
    if (r->closed || r->dones)
        r->late_calls++;
    r->heads++;
    r->head = *m;
    pthread_mutex_unlock(&r->mu);
}

static void on_data(void *ctx, const char *data, size_t len)
{
    rec *r = ctx;
    atomic_fetch_add(&r->in_on_data, 1);
    if (r->slow_first_data_ns && !atomic_exchange(&r->in_first_data, true)) {
        struct timespec ts = {r->slow_first_data_ns / 1000000000L, r->slow_first_data_ns % 1000000000L};
        nanosleep(&ts, NULL);
    }
    pthread_mutex_lock(&r->mu);
    if (r->closed || r->dones)
        r->late_calls++;
    if (r->len + len > r->cap) {
        r->cap = (r->len + len) * 2;
        r->buf = realloc(r->buf, r->cap);
    }
    memcpy(r->buf + r->len, data, len);
    r->len += len;
    bool self_unfollow = r->unfollow_at && r->len >= r->unfollow_at && r->fw && !r->unfollowed;
    if (self_unfollow)
        r->unfollowed = true;
    pthread_mutex_unlock(&r->mu);
    atomic_fetch_sub(&r->in_on_data, 1);
    if (self_unfollow) {
        gw_cache_unfollow(r->c, r->fw);
        /* The last touch of r: its owner may free it once closed is seen. */
        pthread_mutex_lock(&r->mu);
        r->closed = true;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
    }
}

static void on_done(void *ctx, bool ok, bool delivered)
{
    rec *r = ctx;
    pthread_mutex_lock(&r->mu);
    if (r->closed || r->dones)
        r->late_calls++;
    r->dones++;
    r->ok = ok;
    r->delivered = delivered;
    bool self_unfollow = r->unfollow_in_done && r->fw && !r->unfollowed;
    if (self_unfollow)
        r->unfollowed = true;
    pthread_mutex_unlock(&r->mu);
    if (r->retry_on_fail && !ok && !delivered) {
        gw_cache_entry *hit;
        gw_cache_follow *fw2;
        r->retry_result = gw_cache_begin(r->c, &r->key, T0, true, NULL, &hit, &r->retry_flight, &fw2);
    }
    if (self_unfollow)
        gw_cache_unfollow(r->c, r->fw);
    /* The last touch of r: its owner may free it once it sees this. */
    pthread_mutex_lock(&r->mu);
    if (self_unfollow)
        r->closed = true;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static const gw_cache_sub *sub_of(rec *r)
{
    static _Thread_local gw_cache_sub s;
    s = (gw_cache_sub){.ctx = r, .on_head = on_head, .on_data = on_data, .on_done = on_done};
    return &s;
}

static gw_cache_result follow(gw_cache *c, const gw_cache_key *k, rec *r)
{
    gw_cache_entry *hit;
    gw_flight *f;
    gw_cache_follow *fw;
    gw_cache_result res = gw_cache_begin(c, k, T0, true, sub_of(r), &hit, &f, &fw);
    pthread_mutex_lock(&r->mu);
    r->fw = fw;
    pthread_mutex_unlock(&r->mu);
    if (res == GW_CACHE_HIT)
        gw_cache_entry_unref(hit);
    if (res == GW_CACHE_LEAD)
        gw_flight_abort(f);
    return res;
}

/* Unfollows unless a callback did (then waits until that callback is done
 * with r); marks the record closed. */
static void rec_unfollow(rec *r)
{
    pthread_mutex_lock(&r->mu);
    bool mine = !r->unfollowed;
    r->unfollowed = true;
    while (!mine && !r->closed)
        pthread_cond_wait(&r->cv, &r->mu);
    pthread_mutex_unlock(&r->mu);
    if (mine) {
        gw_cache_unfollow(r->c, r->fw);
        pthread_mutex_lock(&r->mu);
        r->closed = true;
        pthread_mutex_unlock(&r->mu);
    }
}

/* ---- hit, miss, ttl, store=false ------------------------------------------ */

Test(gw_cache, hit_miss_and_ttl)
{
    gw_cache *c = gw_cache_new(1 << 20);
    gw_cache_key k = key_of(1);
    gw_cache_entry *hit;
    gw_flight *f;
    gw_cache_follow *fw;
    cr_assert_eq(gw_cache_begin(c, &k, T0, true, NULL, &hit, &f, &fw), GW_CACHE_LEAD);
    cr_assert_not_null(f);
    cr_assert_null(hit);
    cr_assert_null(fw);
    gw_cache_meta m = meta_of(200, false, 0);
    gw_flight_head(f, &m);
    gw_flight_data(f, "{\"result\":", 10);
    gw_flight_data(f, "42}", 3);
    gw_cache_meta fin = m;
    fin.tokens_in = 12;
    fin.tokens_out = 34;
    fin.cost = 0.5;
    gw_flight_commit(f, true, S(10), &fin, T0);

    cr_assert_eq(gw_cache_begin(c, &k, T0 + S(5), true, NULL, &hit, &f, &fw), GW_CACHE_HIT);
    size_t len = 0;
    const char *body = gw_cache_entry_body(hit, &len);
    cr_expect_eq(len, 13);
    cr_expect_str_eq(body, "{\"result\":42}");
    const gw_cache_meta *hm = gw_cache_entry_meta(hit);
    cr_expect_eq(hm->status, 200);
    cr_expect_eq(hm->tokens_out, 34, "the final meta replaces the head's");
    cr_expect_str_eq(hm->provider, "openai");
    cr_expect_eq(gw_cache_entry_ttl_left_s(hit, T0 + S(5)), 5);
    gw_cache_entry_unref(hit);

    cr_expect_eq(probe(c, &k, T0 + S(9.999)), GW_CACHE_HIT);
    cr_expect_eq(probe(c, &k, T0 + S(10)), GW_CACHE_LEAD, "expired at exactly ttl");
    gw_cache_stats st;
    gw_cache_stats_get(c, &st);
    cr_expect_eq(st.hits, 2);
    cr_expect_eq(st.misses, 2);
    cr_expect_eq(st.expired, 1);
    cr_expect_eq(st.entries, 0);
    cr_expect_eq(st.bytes, 0);
    gw_cache_free(c);
}

Test(gw_cache, errors_and_no_store_are_not_cached)
{
    gw_cache *c = gw_cache_new(1 << 20);
    gw_cache_key k = key_of(2);
    gw_cache_entry *hit;
    gw_flight *f;
    gw_cache_follow *fw;
    cr_assert_eq(gw_cache_begin(c, &k, T0, true, NULL, &hit, &f, &fw), GW_CACHE_LEAD);
    gw_cache_meta m = meta_of(500, false, 0);
    gw_flight_head(f, &m);
    gw_flight_data(f, "{\"error\":\"upstream\"}", 20);
    gw_flight_commit(f, false, S(60), NULL, T0);
    cr_expect_eq(probe(c, &k, T0), GW_CACHE_LEAD);

    /* ttl 0 stores nothing either; nor does an abort. */
    cr_assert_eq(gw_cache_begin(c, &k, T0, true, NULL, &hit, &f, &fw), GW_CACHE_LEAD);
    m.status = 200;
    gw_flight_head(f, &m);
    gw_flight_data(f, "ok", 2);
    gw_flight_commit(f, true, 0, NULL, T0);
    cr_expect_eq(probe(c, &k, T0), GW_CACHE_LEAD);
    cr_assert_eq(gw_cache_begin(c, &k, T0, true, NULL, &hit, &f, &fw), GW_CACHE_LEAD);
    gw_flight_head(f, &m);
    gw_flight_data(f, "ok", 2);
    gw_flight_abort(f);
    cr_expect_eq(probe(c, &k, T0), GW_CACHE_LEAD);
    gw_cache_stats st;
    gw_cache_stats_get(c, &st);
    cr_expect_eq(st.entries, 0);
    cr_expect_eq(st.flight_bytes, 0, "flight buffers are released");
    gw_cache_free(c);
}

Test(gw_cache, stream_bytes_replayed_identical)
{
    gw_cache *c = gw_cache_new(8u << 20);
    gw_cache_key k = key_of(3);
    gw_cache_entry *hit;
    gw_flight *f;
    gw_cache_follow *fw;
    cr_assert_eq(gw_cache_begin(c, &k, T0, true, NULL, &hit, &f, &fw), GW_CACHE_LEAD);
    gw_cache_meta m = meta_of(200, true, 1);
    gw_flight_head(f, &m);
    /* SSE events of many sizes, crossing every buffer block boundary. */
    size_t cap = 400000, len = 0;
    char *expect = malloc(cap);
    char ev[9000];
    for (int i = 0; len < 300000; i++) {
        size_t pad = (size_t)(i * 37 % 8000);
        int n = snprintf(ev, sizeof ev, "data: {\"response\":\"%d %.*s\"}\n\n", i, (int)pad,
                         "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                         "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
        gw_flight_data(f, ev, (size_t)n);
        memcpy(expect + len, ev, (size_t)n);
        len += (size_t)n;
    }
    gw_flight_data(f, "data: [DONE]\n\n", 14);
    memcpy(expect + len, "data: [DONE]\n\n", 14);
    len += 14;
    gw_flight_commit(f, true, S(60), NULL, T0);

    cr_assert_eq(gw_cache_begin(c, &k, T0, true, NULL, &hit, &f, &fw), GW_CACHE_HIT);
    size_t blen = 0;
    const char *body = gw_cache_entry_body(hit, &blen);
    cr_assert_eq(blen, len);
    cr_expect(memcmp(body, expect, len) == 0, "replayed stream differs");
    cr_expect(gw_cache_entry_meta(hit)->stream);
    cr_expect_str_eq(gw_cache_entry_meta(hit)->content_type, "text/event-stream");
    gw_cache_stats st;
    gw_cache_stats_get(c, &st);
    cr_expect_eq(st.bytes, gw_cache_entry_charge(len));
    gw_cache_entry_unref(hit);
    free(expect);
    gw_cache_free(c);
}

/* ---- accounting and eviction --------------------------------------------- */

Test(gw_cache, lru_eviction_by_bytes_is_exact)
{
    const size_t body = 500, charge = gw_cache_entry_charge(body);
    gw_cache *c = gw_cache_new(10 * charge);
    char buf[2000];
    memset(buf, 'b', sizeof buf);
    for (unsigned i = 0; i < 10; i++) {
        gw_cache_key k = key_of(i);
        lead_and_store(c, &k, buf, body, S(100), T0 + i);
    }
    gw_cache_stats st;
    gw_cache_stats_get(c, &st);
    cr_expect_eq(st.entries, 10);
    cr_expect_eq(st.bytes, 10 * charge, "exactly at the bound: nothing evicted");
    cr_expect_eq(st.evictions, 0);

    gw_cache_key k0 = key_of(0), k1 = key_of(1), k2 = key_of(2), k10 = key_of(10);
    cr_assert_eq(probe(c, &k0, T0 + S(1)), GW_CACHE_HIT); /* 0 becomes the most recent */
    lead_and_store(c, &k10, buf, body, S(100), T0 + S(1));
    gw_cache_stats_get(c, &st);
    cr_expect_eq(st.entries, 10);
    cr_expect_eq(st.bytes, 10 * charge);
    cr_expect_eq(st.evictions, 1);
    cr_expect_eq(probe(c, &k1, T0 + S(1)), GW_CACHE_LEAD, "1 was least recently used");
    cr_expect_eq(probe(c, &k0, T0 + S(1)), GW_CACHE_HIT);
    cr_expect_eq(probe(c, &k10, T0 + S(1)), GW_CACHE_HIT);

    /* A bigger entry pushes out as many as needed, oldest first. */
    gw_cache_key big = key_of(11);
    size_t big_len = 10 * charge / 8; /* the largest body stored */
    char *bb = calloc(1, big_len + 1);
    lead_and_store(c, &big, bb, big_len, S(100), T0 + S(1));
    gw_cache_stats_get(c, &st);
    cr_expect_leq(st.bytes, 10 * charge);
    cr_expect_eq(st.bytes, (st.entries - 1) * charge + gw_cache_entry_charge(big_len));
    cr_expect_eq(probe(c, &k2, T0 + S(1)), GW_CACHE_LEAD);
    cr_expect_eq(probe(c, &big, T0 + S(1)), GW_CACHE_HIT);

    /* One byte more than max_bytes / 8 is not stored. */
    gw_cache_key huge = key_of(12);
    lead_and_store(c, &huge, bb, big_len + 1, S(100), T0 + S(1));
    cr_expect_eq(probe(c, &huge, T0 + S(1)), GW_CACHE_LEAD);
    free(bb);
    gw_cache_free(c);
}

Test(gw_cache, expired_entries_go_before_live_ones)
{
    const size_t body = 500, charge = gw_cache_entry_charge(body);
    gw_cache *c = gw_cache_new(10 * charge);
    char buf[500];
    memset(buf, 'e', sizeof buf);
    for (unsigned i = 0; i < 10; i++) {
        gw_cache_key k = key_of(i);
        lead_and_store(c, &k, buf, body, i == 1 ? S(1) : S(100), T0);
    }
    gw_cache_key k10 = key_of(10);
    lead_and_store(c, &k10, buf, body, S(100), T0 + S(2));
    gw_cache_stats st;
    gw_cache_stats_get(c, &st);
    cr_expect_eq(st.expired, 1);
    cr_expect_eq(st.evictions, 0);
    gw_cache_key k0 = key_of(0), k1 = key_of(1);
    cr_expect_eq(probe(c, &k0, T0 + S(2)), GW_CACHE_HIT, "the LRU entry survives: 1 had expired");
    cr_expect_eq(probe(c, &k1, T0 + S(2)), GW_CACHE_LEAD);

    /* sweep reclaims every expired entry. */
    cr_expect_eq(gw_cache_sweep(c, T0 + S(50)), 0);
    cr_expect_eq(gw_cache_sweep(c, T0 + S(150)), 10);
    gw_cache_stats_get(c, &st);
    cr_expect_eq(st.entries, 0);
    cr_expect_eq(st.bytes, 0);
    gw_cache_free(c);
}

Test(gw_cache, purge_remove_and_references)
{
    gw_cache *c = gw_cache_new(1 << 20);
    for (unsigned i = 0; i < 5; i++) {
        gw_cache_key k = key_of(i);
        lead_and_store(c, &k, "hello", 5, S(100), T0);
    }
    gw_cache_key k0 = key_of(0), k1 = key_of(1), k9 = key_of(9);
    cr_expect(gw_cache_remove(c, &k0));
    cr_expect_not(gw_cache_remove(c, &k0));
    cr_expect_not(gw_cache_remove(c, &k9));
    gw_cache_entry *hit;
    gw_flight *f;
    gw_cache_follow *fw;
    cr_assert_eq(gw_cache_begin(c, &k1, T0, true, NULL, &hit, &f, &fw), GW_CACHE_HIT);
    gw_cache_purge(c);
    gw_cache_stats st;
    gw_cache_stats_get(c, &st);
    cr_expect_eq(st.entries, 0);
    cr_expect_eq(st.bytes, 0);
    size_t len;
    cr_expect_str_eq(gw_cache_entry_body(hit, &len), "hello", "a held entry outlives the purge");
    gw_cache_entry_unref(hit);
    cr_expect_eq(probe(c, &k1, T0), GW_CACHE_LEAD);
    cr_expect_null(gw_cache_new(100));
    gw_cache_free(c);
}

Test(gw_cache, replacing_an_entry_keeps_accounting)
{
    gw_cache *c = gw_cache_new(1 << 20);
    gw_cache_key k = key_of(7);
    lead_and_store(c, &k, "first", 5, S(100), T0);
    /* The entry expired: a new flight stores a new body in its place. */
    lead_and_store(c, &k, "second!", 7, S(100), T0 + S(200));
    gw_cache_stats st;
    gw_cache_stats_get(c, &st);
    cr_expect_eq(st.entries, 1);
    cr_expect_eq(st.bytes, gw_cache_entry_charge(7));
    /* Two leaders at once for one key: the later commit replaces. */
    gw_cache_entry *hit;
    gw_flight *f1, *f2;
    gw_cache_follow *fw;
    cr_assert(gw_cache_remove(c, &k));
    cr_assert_eq(gw_cache_begin(c, &k, T0, false, NULL, &hit, &f1, &fw), GW_CACHE_LEAD);
    cr_assert_eq(gw_cache_begin(c, &k, T0, false, NULL, &hit, &f2, &fw), GW_CACHE_LEAD);
    gw_cache_meta m = meta_of(200, false, 0);
    gw_flight_head(f1, &m);
    gw_flight_head(f2, &m);
    gw_flight_data(f1, "one", 3);
    gw_flight_data(f2, "two!", 4);
    gw_flight_commit(f1, true, S(100), NULL, T0);
    gw_flight_commit(f2, true, S(100), NULL, T0);
    gw_cache_stats_get(c, &st);
    cr_expect_eq(st.entries, 1);
    cr_expect_eq(st.bytes, gw_cache_entry_charge(4));
    cr_assert_eq(gw_cache_begin(c, &k, T0, false, NULL, &hit, &f1, &fw), GW_CACHE_HIT);
    size_t len;
    cr_expect_str_eq(gw_cache_entry_body(hit, &len), "two!");
    gw_cache_entry_unref(hit);
    gw_cache_free(c);
}

/* ---- coalescing ----------------------------------------------------------- */

Test(gw_cache, followers_get_exactly_the_leaders_bytes)
{
    gw_cache *c = gw_cache_new(8u << 20);
    gw_cache_key k = key_of(20);
    gw_cache_entry *hit;
    gw_flight *f;
    gw_cache_follow *fw;
    cr_assert_eq(gw_cache_begin(c, &k, T0, true, NULL, &hit, &f, &fw), GW_CACHE_LEAD);
    enum { N = 5 };
    rec r[N];
    for (int i = 0; i < N; i++)
        rec_init(&r[i], c);
    /* 0 joins before the head, 1 after it, 2..4 after some data. */
    cr_assert_eq(follow(c, &k, &r[0]), GW_CACHE_FOLLOW);
    cr_expect_eq(r[0].heads, 0);
    gw_cache_meta m = meta_of(200, true, 2);
    gw_flight_head(f, &m);
    cr_expect_eq(r[0].heads, 1, "live head");
    cr_assert_eq(follow(c, &k, &r[1]), GW_CACHE_FOLLOW);
    cr_expect_eq(r[1].heads, 1, "catch-up head, before begin returned");
    char piece[10000];
    size_t total = 0;
    for (int p = 0; p < 40; p++) {
        size_t n = (size_t)(p * 997 % 9000) + 1;
        fill_pattern(piece, total, n);
        gw_flight_data(f, piece, n);
        total += n;
        if (p == 3 || p == 17 || p == 39) {
            cr_assert_eq(follow(c, &k, &r[p == 3 ? 2 : p == 17 ? 3 : 4]), GW_CACHE_FOLLOW);
            cr_expect_eq(r[p == 3 ? 2 : p == 17 ? 3 : 4].len, total, "caught up at once");
        }
    }
    gw_cache_meta fin = m;
    fin.tokens_out = 99;
    gw_flight_commit(f, true, S(60), &fin, T0);
    for (int i = 0; i < N; i++) {
        cr_expect_eq(r[i].heads, 1);
        cr_expect_eq(r[i].head.step, 2);
        cr_expect_eq(r[i].dones, 1);
        cr_expect(r[i].ok);
        cr_expect(r[i].delivered);
        cr_expect_eq(r[i].len, total, "follower %d got %zu of %zu", i, r[i].len, total);
        cr_expect(is_pattern(r[i].buf, 0, r[i].len), "follower %d: bytes differ", i);
        cr_expect_eq(r[i].late_calls, 0);
        rec_unfollow(&r[i]);
        rec_destroy(&r[i]);
    }
    gw_cache_stats st;
    gw_cache_stats_get(c, &st);
    cr_expect_eq(st.coalesced, N);
    cr_expect_eq(st.misses, 1);
    cr_expect_eq(st.entries, 1);
    cr_expect_eq(st.flight_bytes, 0);
    /* Coalescing off, or no subscriber: a second leader, not a follower. */
    gw_cache_key k2 = key_of(21);
    gw_flight *f2, *f3, *f4;
    cr_assert_eq(gw_cache_begin(c, &k2, T0, true, NULL, &hit, &f2, &fw), GW_CACHE_LEAD);
    rec x;
    rec_init(&x, c);
    cr_assert_eq(gw_cache_begin(c, &k2, T0, false, sub_of(&x), &hit, &f3, &fw), GW_CACHE_LEAD);
    cr_assert_eq(gw_cache_begin(c, &k2, T0, true, NULL, &hit, &f4, &fw), GW_CACHE_LEAD);
    gw_flight_abort(f3);
    gw_flight_abort(f4);
    gw_flight_abort(f2);
    cr_expect_eq(x.dones, 0);
    rec_destroy(&x);
    gw_cache_free(c);
}

Test(gw_cache, leader_abort_tells_followers_whether_to_retry)
{
    gw_cache *c = gw_cache_new(1 << 20);
    gw_cache_key k = key_of(30);
    gw_cache_entry *hit;
    gw_flight *f;
    gw_cache_follow *fw;

    /* Abort before anything went out: delivered == false, retry. The
     * follower retries from inside on_done and becomes the new leader. */
    cr_assert_eq(gw_cache_begin(c, &k, T0, true, NULL, &hit, &f, &fw), GW_CACHE_LEAD);
    rec a;
    rec_init(&a, c);
    a.retry_on_fail = true;
    a.key = k;
    cr_assert_eq(follow(c, &k, &a), GW_CACHE_FOLLOW);
    gw_flight_abort(f);
    cr_expect_eq(a.dones, 1);
    cr_expect_not(a.ok);
    cr_expect_not(a.delivered);
    cr_expect_eq(a.heads, 0);
    cr_expect_eq(a.retry_result, GW_CACHE_LEAD);
    cr_assert_not_null(a.retry_flight);
    rec b;
    rec_init(&b, c);
    cr_assert_eq(follow(c, &k, &b), GW_CACHE_FOLLOW, "the retry is now the flight to follow");
    gw_cache_meta m = meta_of(200, true, 0);
    gw_flight_head(a.retry_flight, &m);
    gw_flight_data(a.retry_flight, "data: x\n\n", 9);
    gw_flight_commit(a.retry_flight, true, S(10), NULL, T0);
    cr_expect(b.ok);
    cr_expect_eq(b.len, 9);
    rec_unfollow(&a);
    rec_unfollow(&b);
    rec_destroy(&a);
    rec_destroy(&b);

    /* Abort after data went out: delivered == true, the response was cut. */
    gw_cache_key k2 = key_of(31);
    cr_assert_eq(gw_cache_begin(c, &k2, T0, true, NULL, &hit, &f, &fw), GW_CACHE_LEAD);
    rec d, e;
    rec_init(&d, c);
    rec_init(&e, c);
    cr_assert_eq(follow(c, &k2, &d), GW_CACHE_FOLLOW);
    gw_flight_head(f, &m);
    gw_flight_data(f, "data: partial\n\n", 15);
    cr_assert_eq(follow(c, &k2, &e), GW_CACHE_FOLLOW);
    gw_flight_abort(f);
    for (rec *r = &d; r; r = r == &d ? &e : NULL) {
        cr_expect_eq(r->dones, 1);
        cr_expect_not(r->ok);
        cr_expect(r->delivered);
        cr_expect_eq(r->len, 15);
        rec_unfollow(r);
        rec_destroy(r);
    }
    cr_expect_eq(probe(c, &k2, T0), GW_CACHE_LEAD, "nothing stored");
    gw_cache_free(c);
}

Test(gw_cache, unfollow_from_inside_callbacks)
{
    gw_cache *c = gw_cache_new(1 << 20);
    gw_cache_key k = key_of(40);
    gw_cache_entry *hit;
    gw_flight *f;
    gw_cache_follow *fw;
    cr_assert_eq(gw_cache_begin(c, &k, T0, true, NULL, &hit, &f, &fw), GW_CACHE_LEAD);
    rec a, b, d;
    rec_init(&a, c);
    rec_init(&b, c);
    rec_init(&d, c);
    a.unfollow_at = 100;
    b.unfollow_in_done = true;
    cr_assert_eq(follow(c, &k, &a), GW_CACHE_FOLLOW);
    cr_assert_eq(follow(c, &k, &b), GW_CACHE_FOLLOW);
    cr_assert_eq(follow(c, &k, &d), GW_CACHE_FOLLOW);
    gw_cache_meta m = meta_of(200, true, 0);
    gw_flight_head(f, &m);
    char piece[60];
    for (int i = 0; i < 10; i++) {
        fill_pattern(piece, (size_t)i * 60, 60);
        gw_flight_data(f, piece, 60);
    }
    gw_cache_unfollow(c, d.fw); /* from the outside, mid-stream */
    d.closed = true;
    gw_flight_commit(f, true, S(10), NULL, T0);
    cr_expect_eq(a.len, 120, "stopped right after the callback that unfollowed");
    cr_expect_eq(a.dones, 0);
    cr_expect_eq(b.dones, 1);
    cr_expect_eq(b.len, 600);
    cr_expect_eq(d.len, 600);
    cr_expect_eq(d.dones, 0);
    cr_expect_eq(a.late_calls + b.late_calls + d.late_calls, 0);
    rec_destroy(&a);
    rec_destroy(&b);
    rec_destroy(&d);
    gw_cache_free(c); /* ASan: the handles were all freed */
}

Test(gw_cache, a_finished_flight_cannot_be_joined)
{
    gw_cache *c = gw_cache_new(1 << 20);
    gw_cache_key k = key_of(41);
    gw_cache_entry *hit;
    gw_flight *f;
    gw_cache_follow *fw;
    cr_assert_eq(gw_cache_begin(c, &k, T0, true, NULL, &hit, &f, &fw), GW_CACHE_LEAD);
    gw_flight_commit(f, false, 0, NULL, T0); /* no head, no body, not stored */
    rec a;
    rec_init(&a, c);
    cr_assert_eq(follow(c, &k, &a), GW_CACHE_LEAD, "a finished flight cannot be joined");
    cr_expect_eq(a.dones, 0);
    rec_destroy(&a);
    gw_cache_free(c);
}

Test(gw_cache, flight_buffer_bounds)
{
    const size_t max = 80 * 1024; /* max_body 10 KiB, all flights 20 KiB */
    gw_cache *c = gw_cache_new(max);
    gw_cache_key k = key_of(50);
    gw_cache_entry *hit;
    gw_flight *f;
    gw_cache_follow *fw;
    cr_assert_eq(gw_cache_begin(c, &k, T0, true, NULL, &hit, &f, &fw), GW_CACHE_LEAD);
    rec a;
    rec_init(&a, c);
    cr_assert_eq(follow(c, &k, &a), GW_CACHE_FOLLOW);
    gw_cache_meta m = meta_of(200, true, 0);
    gw_flight_head(f, &m);
    char piece[1000];
    gw_cache_stats st;
    for (size_t off = 0; off < 30000; off += sizeof piece) {
        fill_pattern(piece, off, sizeof piece);
        gw_flight_data(f, piece, sizeof piece);
        gw_cache_stats_get(c, &st);
        cr_assert_leq(st.flight_bytes, max / 8);
        if (off == 20000) {
            rec late;
            rec_init(&late, c);
            cr_expect_eq(follow(c, &k, &late), GW_CACHE_LEAD,
                         "a flight that stopped buffering cannot be joined");
            rec_destroy(&late);
        }
    }
    gw_flight_commit(f, true, S(10), NULL, T0);
    cr_expect_eq(a.len, 30000, "the follower still got every live byte");
    cr_expect(is_pattern(a.buf, 0, a.len));
    cr_expect(a.ok);
    cr_expect_eq(probe(c, &k, T0), GW_CACHE_LEAD, "too large to store");
    gw_cache_stats_get(c, &st);
    cr_expect_eq(st.flight_bytes, 0, "released at the end, before the follower unfollowed");
    rec_unfollow(&a);
    rec_destroy(&a);

    /* All flights together stay under max_bytes / 4. */
    gw_flight *fs[4];
    for (unsigned i = 0; i < 4; i++) {
        gw_cache_key ki = key_of(60 + i);
        cr_assert_eq(gw_cache_begin(c, &ki, T0, true, NULL, &hit, &fs[i], &fw), GW_CACHE_LEAD);
        gw_flight_head(fs[i], &m);
        for (int p = 0; p < 9; p++)
            gw_flight_data(fs[i], piece, sizeof piece);
    }
    gw_cache_stats_get(c, &st);
    cr_expect_leq(st.flight_bytes, max / 4);
    for (unsigned i = 0; i < 4; i++)
        gw_flight_commit(fs[i], true, S(10), NULL, T0);
    gw_cache_stats_get(c, &st);
    cr_expect_eq(st.flight_bytes, 0);
    cr_expect_geq(st.entries, 2, "the first flights fit and were stored");
    cr_expect_lt(st.entries, 4, "a flight denied buffer space stores nothing");
    gw_cache_free(c);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- concurrency: one leader thread, followers joining and leaving --------- */

typedef struct stream_test {
    gw_cache *c;
    gw_cache_key key;
    size_t pieces;
    _Atomic bool leader_started, leader_done;
    size_t total;               /* set by the leader at the end */
    pthread_barrier_t go;
} stream_test;

static void *leader_main(void *arg)
{
    stream_test *t = arg;
    gw_cache_entry *hit;
    gw_flight *f;
    gw_cache_follow *fw;
    pthread_barrier_wait(&t->go);
    gw_cache_result r = gw_cache_begin(t->c, &t->key, T0, true, NULL, &hit, &f, &fw);
    if (r != GW_CACHE_LEAD)
        abort();
    atomic_store(&t->leader_started, true);
    gw_cache_meta m = meta_of(200, true, 7);
    gw_flight_head(f, &m);
    char piece[400];
    size_t off = 0;
    unsigned seed = 99;
    for (size_t i = 0; i < t->pieces; i++) {
        size_t n = 1 + (size_t)rand_r(&seed) % sizeof piece;
        fill_pattern(piece, off, n);
        gw_flight_data(f, piece, n);
        off += n;
        if (i % 4 == 0) {
            struct timespec ts = {0, 10000};
            nanosleep(&ts, NULL);
        }
    }
    t->total = off;
    gw_flight_commit(f, true, S(60), NULL, T0);
    atomic_store(&t->leader_done, true);
    return NULL;
}

typedef struct follower_arg {
    stream_test *t;
    unsigned seed;
    int followed, cancelled, completed, hits, leads;
    int failures;               /* wrong bytes, late callbacks, bad done */
} follower_arg;

static void *follower_main(void *arg)
{
    follower_arg *a = arg;
    stream_test *t = a->t;
    pthread_barrier_wait(&t->go);
    while (!atomic_load(&t->leader_started))
        sched_yield();
    /* Threads start at different phases of the stream. */
    struct timespec start = {0, (long)(a->seed % 8) * 15000000L};
    nanosleep(&start, NULL);
    for (int round = 0; round < 1000 && !atomic_load(&t->leader_done); round++) {
        struct timespec ts = {0, (long)(rand_r(&a->seed) % 100000)};
        nanosleep(&ts, NULL);
        rec *r = malloc(sizeof *r);
        rec_init(r, t->c);
        /* 0: to the end, 1: cancel from this thread after a while, 2: cancel
         * from inside on_data, 3: unfollow from inside on_done. */
        int dice = rand_r(&a->seed) % 40; /* modes 0 and 3 end the thread's rounds */
        int mode = dice == 0 ? 0 : dice == 1 ? 3 : dice < 20 ? 1 : 2;
        if (mode == 3)
            r->unfollow_in_done = true;
        gw_cache_entry *hit;
        gw_flight *f;
        gw_cache_follow *fw;
        gw_cache_result res = gw_cache_begin(t->c, &t->key, T0, true, sub_of(r), &hit, &f, &fw);
        if (res == GW_CACHE_HIT) {
            size_t len;
            const char *body = gw_cache_entry_body(hit, &len);
            if (!is_pattern(body, 0, len))
                a->failures++;
            gw_cache_entry_unref(hit);
            a->hits++;
        } else if (res == GW_CACHE_LEAD) {
            gw_flight_abort(f); /* overflowed flight, or the leader just ended */
            a->leads++;
        } else {
            a->followed++;
            pthread_mutex_lock(&r->mu);
            r->fw = fw;
            if (mode == 2) /* a little after the catch-up */
                r->unfollow_at = r->len + 1 + (size_t)rand_r(&a->seed) % 20000;
            pthread_mutex_unlock(&r->mu);
            if (mode == 1) {
                struct timespec ts2 = {0, (long)(rand_r(&a->seed) % 200000)};
                nanosleep(&ts2, NULL);
                a->cancelled++;
            } else {
                pthread_mutex_lock(&r->mu);
                while (!r->dones && !r->closed)
                    pthread_cond_wait(&r->cv, &r->mu);
                pthread_mutex_unlock(&r->mu);
            }
            rec_unfollow(r);
            /* After unfollow returned, nothing touches r: check, then free. */
            pthread_mutex_lock(&r->mu);
            if (r->late_calls || r->dones > 1 || r->heads > 1 || !is_pattern(r->buf, 0, r->len))
                a->failures++;
            if (r->dones && r->head.step == 7) {
                /* Followed the real leader to its end: all of it, in order. */
                a->completed++;
                if (!r->ok || r->len != t->total)
                    a->failures++;
            }
            pthread_mutex_unlock(&r->mu);
        }
        rec_destroy(r);
        memset(r, 0xdb, sizeof *r);
        free(r);
    }
    return NULL;
}

static void stream_with_followers(size_t max_bytes, size_t pieces, int *followed, int *completed)
{
    enum { F = 6 };
    stream_test t = {.pieces = pieces};
    t.c = gw_cache_new(max_bytes);
    t.key = key_of(77);
    pthread_barrier_init(&t.go, NULL, F + 1);
    pthread_t lt, ft[F];
    follower_arg fa[F];
    pthread_create(&lt, NULL, leader_main, &t);
    for (int i = 0; i < F; i++) {
        fa[i] = (follower_arg){.t = &t, .seed = 1000u + (unsigned)i * 9};
        pthread_create(&ft[i], NULL, follower_main, &fa[i]);
    }
    double t0 = now_s();
    pthread_join(lt, NULL);
    cr_log_info("leader streamed for %.0f ms", (now_s() - t0) * 1e3);
    *followed = *completed = 0;
    for (int i = 0; i < F; i++) {
        pthread_join(ft[i], NULL);
        cr_expect_eq(fa[i].failures, 0, "follower thread %d: %d failures", i, fa[i].failures);
        *followed += fa[i].followed;
        *completed += fa[i].completed;
    }
    gw_cache_stats st;
    gw_cache_stats_get(t.c, &st);
    cr_expect_eq(st.flight_bytes, 0);
    pthread_barrier_destroy(&t.go);
    gw_cache_free(t.c);
}

Test(gw_cache, followers_join_and_leave_at_random_points)
{
    int followed, completed;
    /* Fully buffered stream (~1.2 MB, max_body 8 MiB). */
    stream_with_followers(64u << 20, 6000, &followed, &completed);
    cr_log_info("buffered: %d followed, %d to the end", followed, completed);
    cr_expect_gt(followed, 0);
}

Test(gw_cache, followers_of_a_flight_over_its_buffer_bound)
{
    int followed, completed;
    /* max_body 256 KiB: the ~1.2 MB stream stops buffering after about a
     * fifth, and from then on live pieces go to busy followers by waiting
     * for them. */
    stream_with_followers(2u << 20, 6000, &followed, &completed);
    cr_log_info("overflowing: %d followed, %d to the end", followed, completed);
    cr_expect_gt(followed, 0);
}

typedef struct unfollower {
    rec *r;
    double took_s;
    int running_after; /* on_data calls still running when unfollow returned */
} unfollower;

static void *unfollower_main(void *arg)
{
    unfollower *u = arg;
    while (!atomic_load(&u->r->in_first_data))
        sched_yield();
    double t0 = now_s();
    gw_cache_unfollow(u->r->c, u->r->fw);
    u->took_s = now_s() - t0;
    u->running_after = atomic_load(&u->r->in_on_data);
    return NULL;
}

Test(gw_cache, unfollow_waits_for_a_running_callback)
{
    gw_cache *c = gw_cache_new(1 << 20);
    gw_cache_key k = key_of(91);
    gw_cache_entry *hit;
    gw_flight *f;
    gw_cache_follow *fw;
    cr_assert_eq(gw_cache_begin(c, &k, T0, true, NULL, &hit, &f, &fw), GW_CACHE_LEAD);
    rec *r = malloc(sizeof *r);
    rec_init(r, c);
    r->slow_first_data_ns = 50000000;
    cr_assert_eq(follow(c, &k, r), GW_CACHE_FOLLOW);
    unfollower u = {.r = r};
    pthread_t th;
    pthread_create(&th, NULL, unfollower_main, &u);
    /* on_data runs here, on the leader's thread, for 50 ms; the other
     * thread unfollows meanwhile and must wait for it to return. */
    gw_flight_data(f, "data: 1\n\n", 9);
    pthread_join(th, NULL);
    cr_expect_eq(u.running_after, 0, "unfollow returned while on_data still ran");
    cr_expect_gt(u.took_s, 0.01, "unfollow did not wait (%.3f s)", u.took_s);
    rec_destroy(r);
    free(r); /* the context goes right after unfollow: ASan sees any later use */
    gw_flight_data(f, "data: 2\n\n", 9);
    gw_flight_commit(f, true, S(10), NULL, T0);
    gw_cache_free(c);
}

typedef struct slow_join {
    gw_cache *c;
    gw_cache_key key;
    rec r;
    gw_cache_result res;
} slow_join;

static void *slow_join_main(void *arg)
{
    slow_join *j = arg;
    j->res = follow(j->c, &j->key, &j->r);
    return NULL;
}

Test(gw_cache, leader_waits_for_a_catching_up_follower_once_not_buffering)
{
    gw_cache *c = gw_cache_new(80 * 1024); /* max_body 10 KiB */
    slow_join j = {.c = c, .key = key_of(90)};
    rec_init(&j.r, c);
    j.r.slow_first_data_ns = 50000000; /* 50 ms in its first (catch-up) on_data */
    gw_cache_entry *hit;
    gw_flight *f;
    gw_cache_follow *fw;
    cr_assert_eq(gw_cache_begin(c, &j.key, T0, true, NULL, &hit, &f, &fw), GW_CACHE_LEAD);
    gw_cache_meta m = meta_of(200, true, 0);
    gw_flight_head(f, &m);
    char piece[9000];
    fill_pattern(piece, 0, 9000);
    gw_flight_data(f, piece, 9000);
    pthread_t th;
    pthread_create(&th, NULL, slow_join_main, &j);
    while (!atomic_load(&j.r.in_first_data))
        sched_yield();
    /* The follower is busy catching up on another thread; this piece goes
     * over the buffer bound, so the leader has to wait and hand it over. */
    fill_pattern(piece, 9000, 2000);
    double t0 = now_s();
    gw_flight_data(f, piece, 2000);
    double waited = now_s() - t0;
    fill_pattern(piece, 11000, 500);
    gw_flight_data(f, piece, 500);
    gw_flight_commit(f, true, S(10), NULL, T0);
    pthread_join(th, NULL);
    cr_assert_eq(j.res, GW_CACHE_FOLLOW);
    cr_expect_gt(waited, 0.01, "the leader returned after %.3f s without waiting", waited);
    cr_expect_eq(j.r.len, 11500);
    cr_expect(is_pattern(j.r.buf, 0, j.r.len), "bytes out of order or lost");
    cr_expect_eq(j.r.dones, 1);
    cr_expect(j.r.ok);
    cr_expect_eq(probe(c, &j.key, T0), GW_CACHE_LEAD, "over max_body: not stored");
    rec_unfollow(&j.r);
    rec_destroy(&j.r);
    gw_cache_free(c);
}

/* ---- concurrency: many threads, many keys ---------------------------------- */

typedef struct many_arg {
    gw_cache *c;
    _Atomic uint64_t *clock;
    unsigned seed;
    int failures;
} many_arg;

/* Body of key n: n's own pattern, length 100..2099. */
static size_t body_len_of(unsigned n)
{
    return 100 + (n * 397) % 2000;
}

static bool body_ok(unsigned n, const char *p, size_t len)
{
    if (len != body_len_of(n))
        return false;
    for (size_t i = 0; i < len; i++)
        if (p[i] != (char)('A' + (n + i) % 26))
            return false;
    return true;
}

static void *many_main(void *arg)
{
    many_arg *a = arg;
    char body[2200];
    for (int i = 0; i < 3000; i++) {
        unsigned n = (unsigned)rand_r(&a->seed) % 40;
        gw_cache_key k = key_of(n);
        uint64_t now = atomic_fetch_add(a->clock, S(0.0001));
        rec r;
        rec_init(&r, a->c);
        gw_cache_entry *hit;
        gw_flight *f;
        gw_cache_follow *fw;
        gw_cache_result res = gw_cache_begin(a->c, &k, now, true, sub_of(&r), &hit, &f, &fw);
        if (res == GW_CACHE_HIT) {
            size_t len;
            const char *p = gw_cache_entry_body(hit, &len);
            if (!body_ok(n, p, len) || gw_cache_entry_meta(hit)->step != (int)n)
                a->failures++;
            gw_cache_entry_unref(hit);
        } else if (res == GW_CACHE_LEAD) {
            size_t len = body_len_of(n);
            for (size_t j = 0; j < len; j++)
                body[j] = (char)('A' + (n + j) % 26);
            gw_cache_meta m = meta_of(200, false, (int)n);
            gw_flight_head(f, &m);
            gw_flight_data(f, body, len / 3);
            sched_yield();
            gw_flight_data(f, body + len / 3, len - len / 3);
            if (i % 7 == 0)
                gw_flight_abort(f);
            else
                gw_flight_commit(f, i % 5 != 0, S(0.05), NULL, now);
        } else {
            pthread_mutex_lock(&r.mu);
            r.fw = fw;
            while (!r.dones)
                pthread_cond_wait(&r.cv, &r.mu);
            if (r.ok && !body_ok(n, r.buf, r.len))
                a->failures++;
            if (!r.ok && r.delivered && r.len > body_len_of(n))
                a->failures++;
            pthread_mutex_unlock(&r.mu);
            gw_cache_unfollow(a->c, fw);
        }
        rec_destroy(&r);
        if (i % 500 == 0 && n == 3)
            gw_cache_purge(a->c);
    }
    return NULL;
}

Test(gw_cache, many_threads_many_keys)
{
    enum { TH = 6 };
    gw_cache *c = gw_cache_new(48 * 1024); /* ~25 entries: constant eviction */
    _Atomic uint64_t clock = T0;
    pthread_t th[TH];
    many_arg a[TH];
    for (int i = 0; i < TH; i++) {
        a[i] = (many_arg){.c = c, .clock = &clock, .seed = 7u * (unsigned)i + 1};
        pthread_create(&th[i], NULL, many_main, &a[i]);
    }
    for (int i = 0; i < TH; i++) {
        pthread_join(th[i], NULL);
        cr_expect_eq(a[i].failures, 0, "thread %d", i);
    }
    gw_cache_stats st;
    gw_cache_stats_get(c, &st);
    cr_expect_leq(st.bytes, 48 * 1024);
    cr_expect_eq(st.flight_bytes, 0);
    cr_expect_eq(st.hits + st.misses + st.coalesced, TH * 3000);
    cr_log_info("hits %llu misses %llu coalesced %llu evictions %llu expired %llu",
                (unsigned long long)st.hits, (unsigned long long)st.misses,
                (unsigned long long)st.coalesced, (unsigned long long)st.evictions,
                (unsigned long long)st.expired);
    cr_expect_gt(st.hits, 0);
    cr_expect_gt(st.evictions + st.expired, 0);
    gw_cache_purge(c);
    gw_cache_stats_get(c, &st);
    cr_expect_eq(st.bytes, 0);
    gw_cache_free(c);
}

/* ---- timing ---------------------------------------------------------------- */

Test(gw_cache, hit_lookup_timing)
{
    gw_cache *c = gw_cache_new(64u << 20);
    char body[1000];
    memset(body, 'h', sizeof body);
    for (unsigned i = 0; i < 10000; i++) {
        gw_cache_key k = key_of(i * 2654435761u);
        lead_and_store(c, &k, body, sizeof body, S(1000), T0);
    }
    const int iters = 500000;
    unsigned seed = 1;
    double t0 = now_s();
    for (int i = 0; i < iters; i++) {
        gw_cache_key k = key_of((unsigned)(rand_r(&seed) % 10000) * 2654435761u);
        gw_cache_entry *hit;
        gw_flight *f;
        gw_cache_follow *fw;
        if (gw_cache_begin(c, &k, T0 + 1, true, NULL, &hit, &f, &fw) != GW_CACHE_HIT)
            cr_assert_fail("miss");
        gw_cache_entry_unref(hit);
    }
    double ns = (now_s() - t0) / iters * 1e9;
    printf("gw_cache: HIT lookup + unref, 10k entries: %.0f ns\n", ns);
    cr_log_info("gw_cache: HIT lookup + unref, 10k entries: %.0f ns", ns);
    gw_cache_free(c);
}
