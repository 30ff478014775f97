/*
 * Unit tests for the vector index object (agent/vector/vx_index): the
 * Vectorize seed example (cosine scores, stored values returned exactly),
 * recall@10 against exact search per metric, upsert/insert/delete
 * semantics, namespaces, exact filters (with and without metadata indexes,
 * selective ones keeping topK full), metadata-index backfill and deletion,
 * get_by_ids and list pagination (under concurrent upserts), every input
 * limit, queries racing the apply thread, snapshot + reopen, compaction
 * after many updates, and refusal of a corrupted index.json or WAL payload.
 * Sizes shrink under AddressSanitizer (the -O0 build is several times slower).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_support.h"
#include "vector/vx_index.h"
#include "vector/vx_wal.h"

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

TestSuite(vx_index, .timeout = 120);

/* ---------------------------------------------------------------- helpers */

static uint64_t g_rng = 0x1234567;
static double urand(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (double)(g_rng >> 11) / 9007199254740992.0;
}
static float nrand(void)
{
    double u = urand() + 1e-12, v = urand();
    return (float)(sqrt(-2 * log(u)) * cos(6.283185307179586 * v));
}

/* Clustered data: n rows of dim around 20 centres. */
static float *gen_data(size_t n, uint32_t dim)
{
    float *c = malloc(20 * dim * sizeof *c), *v = malloc(n * dim * sizeof *v);
    for (size_t i = 0; i < 20 * dim; i++)
        c[i] = nrand() * 3;
    for (size_t i = 0; i < n; i++)
        for (uint32_t d = 0; d < dim; d++)
            v[i * dim + d] = c[(i % 20) * dim + d] + nrand();
    free(c);
    return v;
}

static vx_index *make(const char *dir, uint32_t dim, vx_metric m, const vx_index_opts *o)
{
    vx_index_config c;
    memset(&c, 0, sizeof c);
    snprintf(c.name, sizeof c.name, "test-index");
    c.dimensions = dim;
    c.metric = m;
    vx_index_opts oo;
    vx_index_opts_init(&oo);
    oo.fsync = false;
    char path[1024], err[256] = "";
    snprintf(path, sizeof path, "%s/idx", dir);
    vx_index *x = NULL;
    int rc = vx_index_create(path, &c, o ? o : &oo, &x, err, sizeof err);
    cr_assert_eq(rc, 0, "create: %d %s", rc, err);
    return x;
}

__attribute__((unused)) static vx_index *reopen(const char *dir, const vx_index_opts *o)
{
    vx_index_opts oo;
    vx_index_opts_init(&oo);
    oo.fsync = false;
    char path[1024], err[256] = "";
    snprintf(path, sizeof path, "%s/idx", dir);
    vx_index *x = NULL;
    int rc = vx_index_open(path, o ? o : &oo, &x, err, sizeof err);
    cr_assert_eq(rc, 0, "open: %d %s", rc, err);
    return x;
}

static char g_ids[200000][16];
static const char *idn(size_t i)
{
    if (!g_ids[i][0])
        snprintf(g_ids[i], sizeof g_ids[i], "v%zu", i);
    return g_ids[i];
}

/* Upserts rows [from, to) of data as ids v<i>, optional metadata maker. */
static uint64_t put_rows(vx_index *x, const float *data, uint32_t dim, size_t from, size_t to,
                         json_t *(*md)(size_t i), const char *(*ns)(size_t i))
{
    uint64_t last = 0;
    for (size_t b = from; b < to; b += 1000) {
        size_t e = b + 1000 < to ? b + 1000 : to;
        vx_vector_in *v = calloc(e - b, sizeof *v);
        for (size_t i = b; i < e; i++) {
            v[i - b].id = idn(i);
            v[i - b].values = data + i * dim;
            v[i - b].metadata = md ? md(i) : NULL;
            v[i - b].ns = ns ? ns(i) : NULL;
        }
        char err[256] = "";
        int rc = vx_index_upsert(x, v, e - b, &last, err, sizeof err);
        cr_assert_eq(rc, 0, "upsert: %s", err);
        for (size_t i = b; i < e; i++)
            json_decref((json_t *)v[i - b].metadata);
        free(v);
    }
    return last;
}

static void wait_all(vx_index *x, uint64_t id)
{
    cr_assert_eq(vx_index_wait_applied(x, id, 60000), 0);
}

static size_t query(vx_index *x, const float *q, uint32_t k, const char *ns, const vx_filter *f,
                    vx_match **m)
{
    vx_query qq = {.vector = q, .top_k = k, .ns = ns, .filter = f};
    size_t n = 0;
    char err[256] = "";
    int rc = vx_index_query(x, &qq, m, &n, err, sizeof err);
    cr_assert_eq(rc, 0, "query: %d %s", rc, err);
    return n;
}

typedef struct dh {
    float d;
    size_t i;
} dh;
static int dh_cmp(const void *a, const void *b)
{
    const dh *x = a, *y = b;
    return x->d < y->d ? -1 : x->d > y->d ? 1 : 0;
}

/* Exact top k ids of q among rows allowed by keep (NULL = all). */
static size_t exact(const float *data, size_t n, uint32_t dim, vx_metric m, const float *q,
                    size_t k, bool (*keep)(size_t), size_t *out)
{
    dh *all = malloc(n * sizeof *all);
    size_t c = 0;
    float *a = malloc(dim * sizeof *a), *b = malloc(dim * sizeof *b);
    memcpy(b, q, dim * sizeof *b);
    if (m == VX_COSINE)
        vx_normalize(b, dim);
    for (size_t i = 0; i < n; i++) {
        if (keep && !keep(i))
            continue;
        memcpy(a, data + i * dim, dim * sizeof *a);
        if (m == VX_COSINE)
            vx_normalize(a, dim);
        all[c++] = (dh){vx_distance(m, a, b, dim), i};
    }
    qsort(all, c, sizeof *all, dh_cmp);
    size_t r = c < k ? c : k;
    for (size_t i = 0; i < r; i++)
        out[i] = all[i].i;
    free(all);
    free(a);
    free(b);
    return r;
}

static size_t id_num(const char *id) { return (size_t)strtoul(id + 1, NULL, 10); }

/* ---------------------------------------------------------------- seed */

Test(vx_index, seed_example_cosine_scores_and_exact_values)
{
    char *dir = ts_tmpdir();
    vx_index *x = make(dir, 3, VX_COSINE, NULL);
    static const float vals[5][3] = {{32.4f, 74.1f, 3.2f},
                                     {15.1f, 19.2f, 15.8f},
                                     {0.16f, 1.2f, 3.8f},
                                     {75.1f, 67.1f, 29.9f},
                                     {58.8f, 6.7f, 3.4f}};
    vx_vector_in v[5];
    char ids[5][4];
    for (int i = 0; i < 5; i++) {
        snprintf(ids[i], sizeof ids[i], "%d", i + 1);
        v[i] = (vx_vector_in){ids[i], vals[i], NULL, NULL};
    }
    uint64_t mid = 0;
    char err[256] = "";
    cr_assert_eq(vx_index_insert(x, v, 5, &mid, err, sizeof err), 0, "%s", err);
    cr_assert_eq(mid, 1);
    wait_all(x, mid);
    const float q[3] = {54.8f, 5.5f, 3.1f};
    vx_query qq = {.vector = q, .top_k = 3, .return_values = true};
    vx_match *m = NULL;
    size_t n = 0;
    cr_assert_eq(vx_index_query(x, &qq, &m, &n, err, sizeof err), 0, "%s", err);
    cr_assert_eq(n, 3);
    static const char *want[3] = {"5", "4", "2"};
    static const double score[3] = {0.999909, 0.789848, 0.611976};
    for (int i = 0; i < 3; i++) {
        cr_assert_str_eq(m[i].id, want[i]);
        cr_assert(fabs(m[i].score - score[i]) < 1e-5, "score %d: %f", i, (double)m[i].score);
        int vi = atoi(m[i].id) - 1;
        cr_assert_eq(memcmp(m[i].values, vals[vi], sizeof vals[vi]), 0,
                     "values of %s differ from the inserted ones", m[i].id);
        cr_assert_null(m[i].metadata);
    }
    vx_matches_free(m, n);
    vx_index_info info;
    vx_index_info_get(x, &info);
    cr_assert_eq(info.vector_count, 5);
    cr_assert_eq(info.processed_upto, 1);
    cr_assert_eq(info.last_mutation, 1);
    cr_assert_gt(info.processed_upto_ms, 0);
    cr_assert_gt(info.memory_bytes, 5 * 3 * sizeof(float));
    vx_index_unref(x);
    ts_tmpdir_remove(dir);
    free(dir);
}

/* ---------------------------------------------------------------- recall */

static void recall_for(vx_metric met)
{
    const size_t N = SLOW_BUILD ? 2000 : 5000, Q = 50;
    const uint32_t dim = 32;
    char *dir = ts_tmpdir();
    vx_index *x = make(dir, dim, met, NULL);
    float *data = gen_data(N + Q, dim);
    wait_all(x, put_rows(x, data, dim, 0, N, NULL, NULL));
    size_t hit = 0, tot = 0;
    for (size_t qi = 0; qi < Q; qi++) {
        const float *q = data + (N + qi) * dim;
        size_t ex[10];
        size_t ne = exact(data, N, dim, met, q, 10, NULL, ex);
        vx_match *m = NULL;
        size_t n = query(x, q, 10, NULL, NULL, &m);
        cr_assert_eq(n, 10);
        for (size_t i = 1; i < n; i++) {
            if (met == VX_EUCLIDEAN)
                cr_assert_leq(m[i - 1].score, m[i].score + 1e-5f);
            else
                cr_assert_geq(m[i - 1].score, m[i].score - 1e-5f);
        }
        for (size_t i = 0; i < ne; i++)
            for (size_t j = 0; j < n; j++)
                if (id_num(m[j].id) == ex[i]) {
                    hit++;
                    break;
                }
        tot += ne;
        vx_matches_free(m, n);
    }
    double r = (double)hit / (double)tot;
    vx_index_info info;
    vx_index_info_get(x, &info);
    cr_log_info("recall@10 %s n=%zu: %.4f, %zu bytes (%.0f per vector)", vx_metric_name(met), N, r,
                info.memory_bytes, (double)info.memory_bytes / (double)N);
    cr_assert_geq(r, 0.95, "%s recall %.4f", vx_metric_name(met), r);
    vx_index_unref(x);
    free(data);
    ts_tmpdir_remove(dir);
    free(dir);
}

Test(vx_index, recall_cosine) { recall_for(VX_COSINE); }
Test(vx_index, recall_euclidean) { recall_for(VX_EUCLIDEAN); }
Test(vx_index, recall_dot) { recall_for(VX_DOT); }

/* ---------------------------------------------------------------- semantics */

static vx_match *get1(vx_index *x, const char *id, size_t *n)
{
    const char *ids[1] = {id};
    vx_match *m = NULL;
    char err[128];
    cr_assert_eq(vx_index_get(x, ids, 1, &m, n, err, sizeof err), 0);
    return m;
}

Test(vx_index, upsert_replaces_insert_keeps_delete_removes)
{
    char *dir = ts_tmpdir();
    vx_index *x = make(dir, 2, VX_EUCLIDEAN, NULL);
    float a[2] = {1, 2}, b[2] = {3, 4}, c[2] = {5, 6};
    json_t *ma = json_pack("{s:s}", "k", "a"), *mb = json_pack("{s:s}", "k", "b");
    vx_vector_in v = {"x", a, "n1", ma};
    uint64_t id;
    char err[256];
    cr_assert_eq(vx_index_upsert(x, &v, 1, &id, err, sizeof err), 0);
    /* insert of an existing id keeps the stored vector */
    v = (vx_vector_in){"x", b, "n2", mb};
    cr_assert_eq(vx_index_insert(x, &v, 1, &id, err, sizeof err), 0);
    wait_all(x, id);
    size_t n;
    vx_match *m = get1(x, "x", &n);
    cr_assert_eq(n, 1);
    cr_assert_eq(memcmp(m[0].values, a, sizeof a), 0);
    cr_assert_str_eq(m[0].ns, "n1");
    cr_assert_str_eq(json_string_value(json_object_get(m[0].metadata, "k")), "a");
    vx_matches_free(m, n);
    /* upsert replaces values, namespace and metadata whole */
    v = (vx_vector_in){"x", b, NULL, mb};
    cr_assert_eq(vx_index_upsert(x, &v, 1, &id, err, sizeof err), 0);
    wait_all(x, id);
    m = get1(x, "x", &n);
    cr_assert_eq(memcmp(m[0].values, b, sizeof b), 0);
    cr_assert_null(m[0].ns);
    cr_assert_str_eq(json_string_value(json_object_get(m[0].metadata, "k")), "b");
    vx_matches_free(m, n);
    /* duplicates in a batch: upsert keeps the last, insert the first */
    vx_vector_in d[3] = {{"y", a, NULL, NULL}, {"y", b, NULL, NULL}, {"y", c, NULL, NULL}};
    cr_assert_eq(vx_index_upsert(x, d, 3, &id, err, sizeof err), 0);
    vx_vector_in e[2] = {{"z", a, NULL, NULL}, {"z", c, NULL, NULL}};
    cr_assert_eq(vx_index_insert(x, e, 2, &id, err, sizeof err), 0);
    wait_all(x, id);
    m = get1(x, "y", &n);
    cr_assert_eq(memcmp(m[0].values, c, sizeof c), 0);
    vx_matches_free(m, n);
    m = get1(x, "z", &n);
    cr_assert_eq(memcmp(m[0].values, a, sizeof a), 0);
    vx_matches_free(m, n);
    vx_index_info info;
    vx_index_info_get(x, &info);
    cr_assert_eq(info.vector_count, 3);
    cr_assert_eq(info.deleted_slots, 1, "x replaced once (the batch dedupes y): %llu", (unsigned long long)info.deleted_slots);
    /* delete: missing ids are ignored */
    const char *del[2] = {"x", "nope"};
    cr_assert_eq(vx_index_delete_ids(x, del, 2, &id, err, sizeof err), 0);
    wait_all(x, id);
    m = get1(x, "x", &n);
    cr_assert_eq(n, 0);
    vx_matches_free(m, n);
    vx_match *q = NULL;
    float qv[2] = {1, 2};
    n = query(x, qv, 10, NULL, NULL, &q);
    cr_assert_eq(n, 2);
    for (size_t i = 0; i < n; i++)
        cr_assert_str_neq(q[i].id, "x");
    vx_matches_free(q, n);
    vx_index_info_get(x, &info);
    cr_assert_eq(info.vector_count, 2);
    cr_assert_eq(info.namespaces, 0);
    json_decref(ma);
    json_decref(mb);
    vx_index_unref(x);
    ts_tmpdir_remove(dir);
    free(dir);
}

Test(vx_index, get_by_ids_in_order_skipping_missing)
{
    char *dir = ts_tmpdir();
    vx_index *x = make(dir, 4, VX_DOT, NULL);
    float *data = gen_data(50, 4);
    wait_all(x, put_rows(x, data, 4, 0, 50, NULL, NULL));
    const char *ids[5] = {"v7", "missing", "v3", "v49", "v7"};
    vx_match *m = NULL;
    size_t n = 0;
    char err[128];
    cr_assert_eq(vx_index_get(x, ids, 5, &m, &n, err, sizeof err), 0);
    cr_assert_eq(n, 4);
    cr_assert_str_eq(m[0].id, "v7");
    cr_assert_str_eq(m[1].id, "v3");
    cr_assert_str_eq(m[2].id, "v49");
    cr_assert_str_eq(m[3].id, "v7");
    cr_assert_eq(memcmp(m[2].values, data + 49 * 4, 16), 0);
    cr_assert(json_is_object(m[0].metadata));
    vx_matches_free(m, n);
    vx_index_unref(x);
    free(data);
    ts_tmpdir_remove(dir);
    free(dir);
}

static const char *ns_of(size_t i) { return i % 3 == 0 ? "three" : i % 3 == 1 ? "one" : NULL; }

Test(vx_index, namespaces_restrict_results)
{
    const size_t N = 1500;
    char *dir = ts_tmpdir();
    vx_index *x = make(dir, 8, VX_COSINE, NULL);
    float *data = gen_data(N, 8);
    wait_all(x, put_rows(x, data, 8, 0, N, NULL, ns_of));
    for (int qi = 0; qi < 10; qi++) {
        vx_match *m = NULL;
        vx_query qq = {.vector = data + qi * 8, .top_k = 20, .ns = "three"};
        size_t n = 0;
        char err[128];
        cr_assert_eq(vx_index_query(x, &qq, &m, &n, err, sizeof err), 0);
        cr_assert_eq(n, 20);
        for (size_t i = 0; i < n; i++) {
            cr_assert_eq(id_num(m[i].id) % 3, 0, "%s is not in namespace three", m[i].id);
            cr_assert_str_eq(m[i].ns, "three");
        }
        vx_matches_free(m, n);
    }
    vx_match *m = NULL;
    size_t n = query(x, data, 5, "nothing-here", NULL, &m);
    cr_assert_eq(n, 0);
    vx_matches_free(m, n);
    /* moving a vector to another namespace */
    vx_vector_in v = {"v0", data, "one", NULL};
    uint64_t id;
    char err[128];
    cr_assert_eq(vx_index_upsert(x, &v, 1, &id, err, sizeof err), 0);
    wait_all(x, id);
    n = query(x, data, 1, "one", NULL, &m);
    cr_assert_eq(n, 1);
    cr_assert_str_eq(m[0].id, "v0");
    vx_matches_free(m, n);
    vx_index_info info;
    vx_index_info_get(x, &info);
    cr_assert_eq(info.namespaces, 2);
    vx_index_unref(x);
    free(data);
    ts_tmpdir_remove(dir);
    free(dir);
}
