/*
 * Unit tests for the HNSW index core (agent/vector/vx_hnsw): recall@10
 * against exact brute force for each metric on clustered data, filtered
 * recall at 50/10/1% selectivity, tombstones (never returned, recall after
 * 30% delete + re-insert with repair), save/load round trips and refusal of
 * every truncation and of byte flips (and of checksum-valid crafted files),
 * concurrent searches during inserts and deletes, and the edges (empty
 * index, k above the live count, dim 1, bad arguments).
 * Sizes shrink under AddressSanitizer (the -O0 build is several times slower).
 */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "vector/vx_hnsw.h"

#if defined(__SANITIZE_ADDRESS__)
#define SLOW_BUILD 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SLOW_BUILD 1
#endif
#endif
#ifndef SLOW_BUILD
#define SLOW_BUILD 0
#endif

#define BIG_N (SLOW_BUILD ? 6000u : 20000u)
#define BIG_Q (SLOW_BUILD ? 100u : 200u)
#define DIM 64u
#define K 10u

TestSuite(vx_hnsw, .timeout = 120);

/* ---------------------------------------------------------------- data */

static uint64_t g_rng;

static uint64_t rnd(void)
{
    uint64_t z = (g_rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double unif(void)
{
    return ((double)(rnd() >> 11) + 0.5) / 9007199254740992.0;
}

static float gauss(void)
{
    return (float)(sqrt(-2.0 * log(unif())) * cos(6.283185307179586 * unif()));
}

/* n + q points of a gaussian mixture (40 centres, spread 1, noise 0.35),
 * one row per point; rows [n, n + q) are the queries. */
static float *mixture(uint32_t n, uint32_t q, uint32_t dim, uint64_t seed)
{
    g_rng = seed;
    enum { C = 40 };
    float *cent = malloc(sizeof(float) * C * dim);
    for (uint32_t i = 0; i < C * dim; i++)
        cent[i] = gauss();
    float *v = malloc(sizeof(float) * (size_t)(n + q) * dim);
    for (uint32_t i = 0; i < n + q; i++) {
        uint32_t c = (uint32_t)(rnd() % C);
        for (uint32_t d = 0; d < dim; d++)
            v[(size_t)i * dim + d] = cent[c * dim + d] + 0.35f * gauss();
    }
    free(cent);
    return v;
}

static vx_hnsw *build(const float *v, uint32_t n, uint32_t dim, vx_metric m, const vx_hnsw_params *p)
{
    vx_hnsw *x = NULL;
    cr_assert_eq(vx_hnsw_create(dim, m, p, &x), VX_HNSW_OK);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t s = UINT32_MAX;
        cr_assert_eq(vx_hnsw_insert(x, v + (size_t)i * dim, &s), VX_HNSW_OK);
        cr_assert_eq(s, i);
    }
    return x;
}

/* Exact top-k over the index's stored rows (live, allowed) for query q. */
static uint32_t truth(vx_hnsw *x, const float *q, uint32_t k, const uint64_t *allow, uint32_t *out)
{
    uint32_t dim = vx_hnsw_dim(x), n = vx_hnsw_count(x);
    vx_metric m = vx_hnsw_metric(x);
    float *qq = malloc(sizeof(float) * dim), *row = malloc(sizeof(float) * dim);
    memcpy(qq, q, sizeof(float) * dim);
    if (m == VX_COSINE)
        vx_normalize(qq, dim);
    float *bd = malloc(sizeof(float) * k);
    uint32_t got = 0;
    for (uint32_t j = 0; j < n; j++) {
        if (vx_hnsw_is_deleted(x, j) || (allow && !((allow[j >> 6] >> (j & 63)) & 1)))
            continue;
        vx_hnsw_vector(x, j, row);
        if (m == VX_COSINE)
            vx_normalize(row, dim); /* stored as given */
        float d = vx_distance(m, qq, row, dim);
        if (got < k) {
            got++;
        } else if (d >= bd[k - 1]) {
            continue;
        }
        uint32_t i = got - 1;
        while (i > 0 && bd[i - 1] > d) {
            bd[i] = bd[i - 1];
            out[i] = out[i - 1];
            i--;
        }
        bd[i] = d;
        out[i] = j;
    }
    free(qq);
    free(row);
    free(bd);
    return got;
}

/* Mean recall@k of nq searches; checks sortedness and the filter/tombstones. */
static double recall(vx_hnsw *x, const float *queries, uint32_t nq, uint32_t k, uint32_t ef,
                     const vx_hnsw_filter *f)
{
    uint32_t dim = vx_hnsw_dim(x);
    vx_hnsw_hit *hits = malloc(sizeof *hits * k);
    uint32_t *tr = malloc(sizeof *tr * k);
    double found = 0, total = 0;
    for (uint32_t qi = 0; qi < nq; qi++) {
        const float *q = queries + (size_t)qi * dim;
        uint32_t n = 0;
        cr_assert_eq(vx_hnsw_search(x, q, k, ef, f, hits, &n), VX_HNSW_OK);
        uint32_t t = truth(x, q, k, f ? f->allow : NULL, tr);
        cr_assert_eq(n, t, "query %u: %u hits, %u expected", qi, n, t);
        for (uint32_t i = 0; i < n; i++) {
            cr_assert(!vx_hnsw_is_deleted(x, hits[i].slot), "deleted slot %u returned", hits[i].slot);
            if (f)
                cr_assert((f->allow[hits[i].slot >> 6] >> (hits[i].slot & 63)) & 1, "filtered-out slot");
            if (i)
                cr_assert_leq(hits[i - 1].distance, hits[i].distance);
            for (uint32_t j = 0; j < t; j++)
                if (tr[j] == hits[i].slot) {
                    found++;
                    break;
                }
        }
        total += t;
    }
    free(hits);
    free(tr);
    return total ? found / total : 1.0;
}

static void recall_for(vx_metric m)
{
    float *v = mixture(BIG_N, BIG_Q, DIM, 42 + (uint64_t)m);
    vx_hnsw *x = build(v, BIG_N, DIM, m, NULL);
    double r = recall(x, v + (size_t)BIG_N * DIM, BIG_Q, K, 0, NULL);
    cr_log_info("recall@10 %s n=%u: %.4f (%zu bytes)", vx_metric_name(m), BIG_N, r, vx_hnsw_memory_bytes(x));
    cr_assert_geq(r, 0.95, "%s recall %.4f", vx_metric_name(m), r);
    vx_hnsw_free(x);
    free(v);
}

Test(vx_hnsw, recall_cosine)
{
    recall_for(VX_COSINE);
}

Test(vx_hnsw, recall_euclidean)
{
    recall_for(VX_EUCLIDEAN);
}

Test(vx_hnsw, recall_dot)
{
    recall_for(VX_DOT);
}

/* ---------------------------------------------------------------- filters */

Test(vx_hnsw, filtered_recall_50_10_1_percent)
{
    uint32_t nf = BIG_N / 2;
    float *v = mixture(nf, BIG_Q, DIM, 7);
    vx_hnsw *x = build(v, nf, DIM, VX_EUCLIDEAN, NULL);
    uint32_t words = (nf + 63) / 64;
    uint64_t *allow = malloc(sizeof(uint64_t) * words);
    const double sel[] = {0.5, 0.1, 0.01};
    for (int si = 0; si < 3; si++) {
        memset(allow, 0, sizeof(uint64_t) * words);
        uint32_t cnt = 0;
        g_rng = 1000 + (uint64_t)si;
        for (uint32_t i = 0; i < nf; i++)
            if (unif() < sel[si]) {
                allow[i >> 6] |= 1ull << (i & 63);
                cnt++;
            }
        vx_hnsw_filter f = {allow, nf, cnt};
        double r = recall(x, v + (size_t)nf * DIM, BIG_Q, K, 0, &f);
        cr_log_info("filtered recall at %.0f%% (%u allowed): %.4f", sel[si] * 100, cnt, r);
        cr_assert_geq(r, 0.95, "selectivity %.2f: recall %.4f", sel[si], r);
    }
    /* nbits shorter than the index: slots past it are never returned */
    memset(allow, 0xff, sizeof(uint64_t) * words);
    vx_hnsw_filter f = {allow, 100, 100};
    vx_hnsw_hit hits[K];
    uint32_t n = 0;
    cr_assert_eq(vx_hnsw_search(x, v + (size_t)nf * DIM, K, 0, &f, hits, &n), VX_HNSW_OK);
    cr_assert_eq(n, K);
    for (uint32_t i = 0; i < n; i++)
        cr_assert_lt(hits[i].slot, 100u);
    /* nothing allowed: no hits */
    f.n_allowed = 0;
    cr_assert_eq(vx_hnsw_search(x, v, K, 0, &f, hits, &n), VX_HNSW_OK);
    cr_assert_eq(n, 0u);
    free(allow);
    vx_hnsw_free(x);
    free(v);
}

/* The graph path at low selectivity (brute force disabled) still returns
 * only allowed slots, and with a large bound stays accurate. */
Test(vx_hnsw, filtered_graph_path_only_returns_allowed)
{
    uint32_t n = SLOW_BUILD ? 1500 : 5000;
    float *v = mixture(n, 50, 16, 9);
    vx_hnsw_params p;
    vx_hnsw_params_default(&p);
    p.filter_brute_per_k = 1;
    p.filter_brute_fraction = 1e-9;
    p.filter_ef_max = 4000;
    vx_hnsw *x = build(v, n, 16, VX_EUCLIDEAN, &p);
    uint64_t *allow = calloc((n + 63) / 64, sizeof(uint64_t));
    uint32_t cnt = 0;
    for (uint32_t i = 0; i < n; i += 20) {
        allow[i >> 6] |= 1ull << (i & 63);
        cnt++;
    }
    vx_hnsw_filter f = {allow, n, cnt};
    double r = recall(x, v + (size_t)n * 16, 50, K, 0, &f);
    cr_log_info("graph-path filtered recall at 5%%: %.4f", r);
    cr_assert_geq(r, 0.9);
    free(allow);
    vx_hnsw_free(x);
    free(v);
}

/* ---------------------------------------------------------------- deletes */

Test(vx_hnsw, deletes_never_returned_and_recall_after_reinsert)
{
    uint32_t n = BIG_N / 2;
    float *v = mixture(n, BIG_Q, DIM, 11);
    vx_hnsw *x = build(v, n, DIM, VX_COSINE, NULL);
    const float *qs = v + (size_t)n * DIM;
    double before = recall(x, qs, BIG_Q, K, 0, NULL);
    g_rng = 77;
    uint32_t *del = malloc(sizeof(uint32_t) * n);
    uint32_t nd = 0;
    for (uint32_t i = 0; i < n; i++)
        if (unif() < 0.3) {
            cr_assert_eq(vx_hnsw_delete(x, i), VX_HNSW_OK);
            del[nd++] = i;
        }
    cr_assert_eq(vx_hnsw_delete(x, del[0]), VX_HNSW_EINVAL, "double delete");
    cr_assert_eq(vx_hnsw_deleted(x), nd);
    cr_assert(vx_hnsw_needs_compact(x));
    /* tombstoned but unrepaired: never returned (recall() checks) */
    double tomb = recall(x, qs, BIG_Q, K, 0, NULL);
    cr_assert_geq(tomb, 0.9);
    cr_assert_eq(vx_hnsw_repair(x), VX_HNSW_OK);
    double repaired = recall(x, qs, BIG_Q, K, 0, NULL);
    for (uint32_t i = 0; i < nd; i++) {
        uint32_t s;
        cr_assert_eq(vx_hnsw_insert(x, v + (size_t)del[i] * DIM, &s), VX_HNSW_OK);
        cr_assert_eq(s, n + i);
    }
    cr_assert_eq(vx_hnsw_live(x), n);
    double after = recall(x, qs, BIG_Q, K, 0, NULL);
    cr_log_info("recall before %.4f tombstoned %.4f repaired %.4f after reinsert %.4f", before, tomb,
                repaired, after);
    cr_assert_geq(repaired, 0.95);
    cr_assert_geq(after, 0.95);
    cr_assert_geq(after, before - 0.02);
    free(del);
    vx_hnsw_free(x);
    free(v);
}

Test(vx_hnsw, delete_everything_then_insert)
{
    float *v = mixture(300, 5, 8, 3);
    vx_hnsw *x = build(v, 300, 8, VX_EUCLIDEAN, NULL);
    for (uint32_t i = 0; i < 300; i++)
        cr_assert_eq(vx_hnsw_delete(x, i), VX_HNSW_OK);
    vx_hnsw_hit hits[K];
    uint32_t n = 9;
    cr_assert_eq(vx_hnsw_search(x, v, K, 0, NULL, hits, &n), VX_HNSW_OK);
    cr_assert_eq(n, 0u);
    cr_assert_eq(vx_hnsw_repair(x), VX_HNSW_OK);
    cr_assert_eq(vx_hnsw_search(x, v, K, 0, NULL, hits, &n), VX_HNSW_OK);
    cr_assert_eq(n, 0u);
    for (uint32_t i = 0; i < 300; i++)
        cr_assert_eq(vx_hnsw_insert(x, v + (size_t)i * 8, NULL), VX_HNSW_OK);
    cr_assert_eq(vx_hnsw_live(x), 300u);
    double r = recall(x, v + 300 * 8, 5, K, 0, NULL);
    cr_assert_geq(r, 0.95);
    vx_hnsw_free(x);
    free(v);
}

/* ---------------------------------------------------------------- files */

static char *save_mem(vx_hnsw *x, size_t *len)
{
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    cr_assert_not_null(f);
    cr_assert_eq(vx_hnsw_save(x, f), VX_HNSW_OK);
    fclose(f);
    return buf;
}

static int load_mem(const char *buf, size_t len, vx_hnsw **out, const char **err)
{
    FILE *f = len ? fmemopen((void *)buf, len, "rb") : fopen("/dev/null", "rb");
    cr_assert_not_null(f);
    int rc = vx_hnsw_load(f, out, err);
    fclose(f);
    return rc;
}

Test(vx_hnsw, save_load_round_trip_identical)
{
    uint32_t n = SLOW_BUILD ? 1000 : 3000;
    float *v = mixture(n, 50, 32, 5);
    vx_hnsw *x = build(v, n, 32, VX_DOT, NULL);
    for (uint32_t i = 0; i < n; i += 7)
        vx_hnsw_delete(x, i);
    cr_assert_eq(vx_hnsw_repair(x), VX_HNSW_OK);
    for (uint32_t i = 0; i < n; i += 13)
        vx_hnsw_delete(x, i + 1);
    size_t len;
    char *buf = save_mem(x, &len);
    vx_hnsw *y = NULL;
    const char *err = NULL;
    cr_assert_eq(load_mem(buf, len, &y, &err), VX_HNSW_OK, "%s", err ? err : "");
    cr_assert_eq(vx_hnsw_count(y), vx_hnsw_count(x));
    cr_assert_eq(vx_hnsw_deleted(y), vx_hnsw_deleted(x));
    vx_hnsw_hit a[K], b[K];
    for (uint32_t q = 0; q < 50; q++) {
        uint32_t na, nb;
        const float *qv = v + (size_t)(n + q) * 32;
        cr_assert_eq(vx_hnsw_search(x, qv, K, 0, NULL, a, &na), VX_HNSW_OK);
        cr_assert_eq(vx_hnsw_search(y, qv, K, 0, NULL, b, &nb), VX_HNSW_OK);
        cr_assert_eq(na, nb);
        cr_assert_eq(memcmp(a, b, sizeof(vx_hnsw_hit) * na), 0, "query %u differs", q);
    }
    /* the loaded index keeps working identically for writes too */
    uint32_t sa, sb;
    cr_assert_eq(vx_hnsw_insert(x, v, &sa), VX_HNSW_OK);
    cr_assert_eq(vx_hnsw_insert(y, v, &sb), VX_HNSW_OK);
    cr_assert_eq(sa, sb);
    size_t l2, l3;
    char *b2 = save_mem(x, &l2), *b3 = save_mem(y, &l3);
    cr_assert_eq(l2, l3);
    cr_assert_eq(memcmp(b2, b3, l2), 0, "saved bytes differ after the same insert");
    free(b2);
    free(b3);
    free(buf);
    vx_hnsw_free(y);
    vx_hnsw_free(x);
    free(v);
}

Test(vx_hnsw, load_refuses_every_truncation_and_byte_flips)
{
    float *v = mixture(60, 0, 4, 8);
    vx_hnsw *x = build(v, 60, 4, VX_COSINE, NULL);
    vx_hnsw_delete(x, 3);
    size_t len;
    char *buf = save_mem(x, &len);
    for (size_t cut = 0; cut < len; cut++) {
        vx_hnsw *y = (vx_hnsw *)1;
        const char *err = NULL;
        cr_assert_eq(load_mem(buf, cut, &y, &err), VX_HNSW_ECORRUPT, "cut %zu accepted", cut);
        cr_assert_null(y);
        cr_assert_not_null(err);
    }
    /* trailing garbage */
    char *longer = malloc(len + 1);
    memcpy(longer, buf, len);
    longer[len] = 0;
    vx_hnsw *y = NULL;
    const char *err = NULL;
    cr_assert_eq(load_mem(longer, len + 1, &y, &err), VX_HNSW_ECORRUPT);
    free(longer);
    char *bad = malloc(len);
    g_rng = 99;
    for (int t = 0; t < 2000; t++) {
        memcpy(bad, buf, len);
        int flips = 1 + (int)(rnd() % 3);
        for (int i = 0; i < flips; i++)
            bad[rnd() % len] ^= (char)(1u << (rnd() % 8));
        y = NULL;
        err = NULL;
        cr_assert_eq(load_mem(bad, len, &y, &err), VX_HNSW_ECORRUPT, "flip trial %d accepted", t);
        cr_assert_not_null(err);
    }
    /* intact copy still loads */
    cr_assert_eq(load_mem(buf, len, &y, &err), VX_HNSW_OK);
    vx_hnsw_free(y);
    free(bad);
    free(buf);
    vx_hnsw_free(x);
    free(v);
}

/* Rewrites the trailing FNV-1a 64 so a crafted edit passes the checksum. */
static void fix_checksum(char *buf, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len - 8; i++)
        h = (h ^ (uint8_t)buf[i]) * 0x100000001b3ull;
    memcpy(buf + len - 8, &h, 8);
}

#define HDR 92u /* header bytes (see vx_hnsw.h, Persistence) */

static void expect_refused(const char *buf, size_t len, const char *want)
{
    vx_hnsw *y = NULL;
    const char *err = NULL;
    cr_assert_eq(load_mem(buf, len, &y, &err), VX_HNSW_ECORRUPT, "accepted (want %s)", want);
    cr_assert_null(y);
    cr_assert_str_eq(err, want);
}

Test(vx_hnsw, load_bounds_checks_checksum_valid_crafted_files)
{
    float *v = mixture(40, 0, 4, 12);
    vx_hnsw *x = build(v, 40, 4, VX_EUCLIDEAN, NULL);
    size_t len;
    char *buf = save_mem(x, &len);
    char *c = malloc(len);
    const size_t slot0 = HDR, links0 = HDR + 2 + 4 * sizeof(float);
    uint32_t cnt0;
    memcpy(&cnt0, buf + links0, 4);
    cr_assert_gt(cnt0, 0u);
    /* sanity: fix_checksum of an untouched copy keeps it loadable */
    memcpy(c, buf, len);
    fix_checksum(c, len);
    cr_assert_eq(memcmp(c, buf, len), 0);

    uint32_t big = 1000000;
    memcpy(c, buf, len);
    memcpy(c + links0 + 4, &big, 4);
    fix_checksum(c, len);
    expect_refused(c, len, "bad neighbour id");

    uint32_t self = 0;
    memcpy(c, buf, len);
    memcpy(c + links0 + 4, &self, 4);
    fix_checksum(c, len);
    expect_refused(c, len, "bad neighbour id");

    uint32_t many = 10000;
    memcpy(c, buf, len);
    memcpy(c + links0, &many, 4);
    fix_checksum(c, len);
    expect_refused(c, len, "bad neighbour count");

    memcpy(c, buf, len);
    c[slot0] = (char)200;
    fix_checksum(c, len);
    expect_refused(c, len, "bad level or flag");

    memcpy(c, buf, len);
    float nan = NAN;
    memcpy(c + slot0 + 2, &nan, 4);
    fix_checksum(c, len);
    expect_refused(c, len, "non-finite vector value");

    uint32_t hugecount = 0x7ffffff0u; /* count field: memory must not follow it */
    memcpy(c, buf, len);
    memcpy(c + HDR - 16, &hugecount, 4);
    fix_checksum(c, len);
    vx_hnsw *y = NULL;
    const char *err = NULL;
    cr_assert_eq(load_mem(c, len, &y, &err), VX_HNSW_ECORRUPT);

    uint32_t dim0 = 0;
    memcpy(c, buf, len);
    memcpy(c + 12, &dim0, 4);
    fix_checksum(c, len);
    expect_refused(c, len, "bad dimension or metric");

    memcpy(c, buf, len);
    c[0] = 'Z';
    expect_refused(c, len, "bad magic");

    memcpy(c, buf, len);
    c[len - 1] ^= 1;
    expect_refused(c, len, "checksum mismatch");
    free(c);
    free(buf);
    vx_hnsw_free(x);
    free(v);
}

/* ---------------------------------------------------------------- concurrency */

typedef struct reader_arg {
    vx_hnsw *x;
    const float *queries;
    uint32_t nq, dim;
    volatile int *stop;
    uint32_t searches;
    int bad;
} reader_arg;

static void *reader(void *p)
{
    reader_arg *a = p;
    vx_hnsw_hit hits[K];
    uint32_t i = 0;
    while (!__atomic_load_n(a->stop, __ATOMIC_ACQUIRE) || a->searches < 20) {
        uint32_t n = 0;
        const float *q = a->queries + (size_t)(i++ % a->nq) * a->dim;
        if (vx_hnsw_search(a->x, q, K, 0, NULL, hits, &n) != VX_HNSW_OK)
            a->bad++;
        uint32_t count = vx_hnsw_count(a->x);
        for (uint32_t j = 0; j < n; j++) {
            if (hits[j].slot >= count)
                a->bad++;
            if (j && hits[j - 1].distance > hits[j].distance)
                a->bad++;
        }
        a->searches++;
    }
    return NULL;
}

Test(vx_hnsw, concurrent_searches_during_inserts_and_deletes)
{
    uint32_t n0 = SLOW_BUILD ? 300 : 2000, n1 = SLOW_BUILD ? 1200 : 6000;
    float *v = mixture(n1, 40, 16, 21);
    vx_hnsw *x = build(v, n0, 16, VX_EUCLIDEAN, NULL);
    volatile int stop = 0;
    enum { T = 3 };
    pthread_t th[T];
    reader_arg args[T];
    for (int t = 0; t < T; t++) {
        args[t] = (reader_arg){x, v + (size_t)n1 * 16, 40, 16, &stop, 0, 0};
        cr_assert_eq(pthread_create(&th[t], NULL, reader, &args[t]), 0);
    }
    for (uint32_t i = n0; i < n1; i++) {
        cr_assert_eq(vx_hnsw_insert(x, v + (size_t)i * 16, NULL), VX_HNSW_OK);
        if (i % 10 == 0)
            cr_assert_eq(vx_hnsw_delete(x, i / 2), VX_HNSW_OK);
        if (i % 1000 == 0)
            cr_assert_eq(vx_hnsw_repair(x), VX_HNSW_OK);
    }
    __atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
    uint32_t total = 0;
    for (int t = 0; t < T; t++) {
        pthread_join(th[t], NULL);
        cr_assert_eq(args[t].bad, 0, "reader %d saw %d bad results", t, args[t].bad);
        total += args[t].searches;
    }
    cr_log_info("%u concurrent searches", total);
    double r = recall(x, v + (size_t)n1 * 16, 40, K, 0, NULL);
    cr_assert_geq(r, 0.95);
    cr_assert_gt(vx_hnsw_memory_bytes(x), (size_t)n1 * 16 * 5);
    vx_hnsw_free(x);
    free(v);
}

/* ---------------------------------------------------------------- edges */

Test(vx_hnsw, empty_index)
{
    vx_hnsw *x = NULL;
    cr_assert_eq(vx_hnsw_create(8, VX_COSINE, NULL, &x), VX_HNSW_OK);
    float q[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    vx_hnsw_hit hits[4];
    uint32_t n = 7;
    cr_assert_eq(vx_hnsw_search(x, q, 4, 0, NULL, hits, &n), VX_HNSW_OK);
    cr_assert_eq(n, 0u);
    cr_assert_eq(vx_hnsw_repair(x), VX_HNSW_OK);
    cr_assert_not(vx_hnsw_needs_compact(x));
    cr_assert(vx_hnsw_is_deleted(x, 0));
    cr_assert_gt(vx_hnsw_memory_bytes(x), 0u);
    size_t len;
    char *buf = save_mem(x, &len);
    vx_hnsw *y = NULL;
    const char *err = NULL;
    cr_assert_eq(load_mem(buf, len, &y, &err), VX_HNSW_OK);
    cr_assert_eq(vx_hnsw_count(y), 0u);
    cr_assert_eq(vx_hnsw_dim(y), 8u);
    cr_assert_eq(vx_hnsw_metric(y), VX_COSINE);
    cr_assert_eq(vx_hnsw_search(y, q, 4, 0, NULL, hits, &n), VX_HNSW_OK);
    cr_assert_eq(n, 0u);
    free(buf);
    vx_hnsw_free(y);
    vx_hnsw_free(x);
}

Test(vx_hnsw, k_larger_than_live_count)
{
    vx_hnsw *x = NULL;
    cr_assert_eq(vx_hnsw_create(3, VX_EUCLIDEAN, NULL, &x), VX_HNSW_OK);
    for (int i = 0; i < 5; i++) {
        float r[3] = {(float)i, 0, 0};
        cr_assert_eq(vx_hnsw_insert(x, r, NULL), VX_HNSW_OK);
    }
    cr_assert_eq(vx_hnsw_delete(x, 2), VX_HNSW_OK);
    float q[3] = {0.1f, 0, 0};
    vx_hnsw_hit hits[50];
    uint32_t n = 0;
    cr_assert_eq(vx_hnsw_search(x, q, 50, 0, NULL, hits, &n), VX_HNSW_OK);
    cr_assert_eq(n, 4u);
    const uint32_t want[] = {0, 1, 3, 4};
    for (uint32_t i = 0; i < 4; i++)
        cr_assert_eq(hits[i].slot, want[i]);
    cr_assert_float_eq(hits[0].distance, 0.01f, 1e-6);
    vx_hnsw_free(x);
}

Test(vx_hnsw, dim_one)
{
    vx_hnsw *x = NULL;
    cr_assert_eq(vx_hnsw_create(1, VX_EUCLIDEAN, NULL, &x), VX_HNSW_OK);
    g_rng = 5;
    float vals[500];
    for (int i = 0; i < 500; i++) {
        vals[i] = (float)(unif() * 1000.0);
        cr_assert_eq(vx_hnsw_insert(x, &vals[i], NULL), VX_HNSW_OK);
    }
    float qs[30];
    for (int i = 0; i < 30; i++)
        qs[i] = (float)(unif() * 1000.0);
    double r = recall(x, qs, 30, 5, 0, NULL);
    cr_assert_geq(r, 0.95);
    /* cosine in 1-d: every positive value is identical to the query */
    vx_hnsw *c = NULL;
    cr_assert_eq(vx_hnsw_create(1, VX_COSINE, NULL, &c), VX_HNSW_OK);
    float a = 3, b = -2;
    cr_assert_eq(vx_hnsw_insert(c, &a, NULL), VX_HNSW_OK);
    cr_assert_eq(vx_hnsw_insert(c, &b, NULL), VX_HNSW_OK);
    vx_hnsw_hit hits[2];
    uint32_t n;
    float q = 0.5f;
    cr_assert_eq(vx_hnsw_search(c, &q, 2, 0, NULL, hits, &n), VX_HNSW_OK);
    cr_assert_eq(n, 2u);
    cr_assert_eq(hits[0].slot, 0u);
    cr_assert_float_eq(vx_score(VX_COSINE, hits[0].distance), 1.0f, 1e-5);
    vx_hnsw_free(c);
    vx_hnsw_free(x);
}

Test(vx_hnsw, bad_arguments)
{
    vx_hnsw *x = NULL;
    cr_assert_eq(vx_hnsw_create(0, VX_COSINE, NULL, &x), VX_HNSW_EINVAL);
    cr_assert_eq(vx_hnsw_create(VX_HNSW_MAX_DIM + 1, VX_COSINE, NULL, &x), VX_HNSW_EINVAL);
    cr_assert_eq(vx_hnsw_create(4, (vx_metric)7, NULL, &x), VX_HNSW_EINVAL);
    vx_hnsw_params p;
    vx_hnsw_params_default(&p);
    p.M = 1;
    cr_assert_eq(vx_hnsw_create(4, VX_COSINE, &p, &x), VX_HNSW_EINVAL);
    cr_assert_null(x);
    cr_assert_eq(vx_hnsw_create(4, VX_DOT, NULL, &x), VX_HNSW_OK);
    vx_hnsw_get_params(x, &p);
    cr_assert_eq(p.M, 16u);
    cr_assert_eq(p.ef_construction, 200u);
    cr_assert_eq(p.ef_search, 64u);
    float bad[4] = {1, NAN, 0, 0}, ok[4] = {1, 0, 0, 0};
    cr_assert_eq(vx_hnsw_insert(x, bad, NULL), VX_HNSW_EINVAL);
    bad[1] = INFINITY;
    cr_assert_eq(vx_hnsw_insert(x, bad, NULL), VX_HNSW_EINVAL);
    cr_assert_eq(vx_hnsw_count(x), 0u);
    cr_assert_eq(vx_hnsw_insert(x, ok, NULL), VX_HNSW_OK);
    cr_assert_eq(vx_hnsw_delete(x, 1), VX_HNSW_EINVAL);
    float out[4];
    cr_assert_eq(vx_hnsw_vector(x, 1, out), VX_HNSW_EINVAL);
    cr_assert_eq(vx_hnsw_vector(x, 0, out), VX_HNSW_OK);
    cr_assert_eq(memcmp(out, ok, sizeof ok), 0);
    vx_hnsw_hit hits[1];
    uint32_t n;
    cr_assert_eq(vx_hnsw_search(x, bad, 1, 0, NULL, hits, &n), VX_HNSW_EINVAL);
    cr_assert_eq(vx_hnsw_search(x, ok, 1, 0, NULL, hits, &n), VX_HNSW_OK);
    cr_assert_eq(n, 1u);
    cr_assert_eq(vx_hnsw_search(x, ok, 0, 0, NULL, hits, &n), VX_HNSW_OK);
    cr_assert_eq(n, 0u);
    vx_hnsw_free(x);
}

/* Duplicates: many stored vectors equal (the same document embedded twice,
 * a constant placeholder vector). All their distances tie; a full neighbour
 * list re-pruned with ties broken by id keeps the oldest nodes, so later
 * duplicates got no in-links and were unreachable (50 of 100 found). Ties
 * are broken per node pseudo-randomly instead: all stay reachable. */
/* Cosine keeps each vector as given: vx_hnsw_vector returns the inserted
 * floats exactly (the index above returns them to clients), also after
 * save/load, while scores are those of the normalized vectors. */
Test(vx_hnsw, cosine_rows_kept_as_given)
{
    vx_hnsw *x = NULL;
    cr_assert_eq(vx_hnsw_create(3, VX_COSINE, NULL, &x), VX_HNSW_OK);
    const float a[3] = {58.8f, 6.7f, 3.4f}, b[3] = {75.1f, 67.1f, 29.9f}, q[3] = {54.8f, 5.5f, 3.1f};
    cr_assert_eq(vx_hnsw_insert(x, a, NULL), VX_HNSW_OK);
    cr_assert_eq(vx_hnsw_insert(x, b, NULL), VX_HNSW_OK);
    float out[3];
    cr_assert_eq(vx_hnsw_vector(x, 1, out), VX_HNSW_OK);
    cr_assert_eq(memcmp(out, b, sizeof b), 0);
    vx_hnsw_hit h[2];
    uint32_t n = 0;
    cr_assert_eq(vx_hnsw_search(x, q, 2, 0, NULL, h, &n), VX_HNSW_OK);
    cr_assert_eq(n, 2u);
    cr_assert_eq(h[0].slot, 0u);
    cr_expect_float_eq(vx_score(VX_COSINE, h[0].distance), 0.999909f, 2e-6);
    cr_expect_float_eq(vx_score(VX_COSINE, h[1].distance), 0.789848f, 2e-6);
    size_t len = 0;
    char *buf = save_mem(x, &len);
    vx_hnsw *y = NULL;
    const char *err = NULL;
    cr_assert_eq(load_mem(buf, len, &y, &err), VX_HNSW_OK, "%s", err ? err : "");
    cr_assert_eq(vx_hnsw_vector(y, 0, out), VX_HNSW_OK);
    cr_assert_eq(memcmp(out, a, sizeof a), 0);
    vx_hnsw_free(y);
    vx_hnsw_free(x);
    free(buf);
}

Test(vx_hnsw, identical_vectors_all_reachable)
{
    const vx_metric metrics[] = {VX_COSINE, VX_EUCLIDEAN, VX_DOT};
    for (size_t mi = 0; mi < 3; mi++) {
        vx_hnsw *x = NULL;
        cr_assert_eq(vx_hnsw_create(8, metrics[mi], NULL, &x), VX_HNSW_OK);
        const float r[8] = {0.5f, -1, 2, 0.25f, 3, -0.5f, 1, 1};
        for (int i = 0; i < 3000; i++)
            cr_assert_eq(vx_hnsw_insert(x, r, NULL), VX_HNSW_OK);
        vx_hnsw_hit hits[100];
        uint32_t n = 0;
        cr_assert_eq(vx_hnsw_search(x, r, 100, 0, NULL, hits, &n), VX_HNSW_OK);
        cr_expect_eq(n, 100u, "metric %s: %u of 100 found", vx_metric_name(metrics[mi]), n);
        vx_hnsw_free(x);
    }
}

/* Groups of 8 equal vectors around distinct centres: recall of the 10
 * nearest (ties broken any way) stays high. */
Test(vx_hnsw, duplicate_groups_recall)
{
    const uint32_t groups = 1000, dup = 8, dim = 16, n = groups * dup;
    g_rng = 77;
    float *v = malloc((size_t)n * dim * sizeof *v), *c = malloc((size_t)dim * sizeof *c);
    cr_assert(v && c);
    for (uint32_t g = 0; g < groups; g++) {
        for (uint32_t d = 0; d < dim; d++)
            c[d] = gauss();
        for (uint32_t j = 0; j < dup; j++)
            memcpy(v + ((size_t)g * dup + j) * dim, c, dim * sizeof *c);
    }
    vx_hnsw *x = build(v, n, dim, VX_EUCLIDEAN, NULL);
    uint32_t hit = 0;
    for (uint32_t g = 0; g < groups; g += 10) {
        vx_hnsw_hit hits[16];
        uint32_t m = 0;
        cr_assert_eq(vx_hnsw_search(x, v + (size_t)g * dup * dim, 16, 0, NULL, hits, &m),
                     VX_HNSW_OK);
        for (uint32_t i = 0; i < m; i++)
            hit += hits[i].slot / dup == g;
    }
    /* each query's own group: 8 slots at distance 0 among its 16 */
    cr_expect_geq(hit, (groups / 10) * dup * 95 / 100, "%u of %u group members found", hit,
                  (groups / 10) * dup);
    vx_hnsw_free(x);
    free(v);
    free(c);
}
