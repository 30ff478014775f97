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
#include <time.h>

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

static vx_index *reopen(const char *dir, const vx_index_opts *o)
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
    char ids[5][16];
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

/* ---------------------------------------------------------------- filters */

/* Metadata of row i: cat = i % 100 (number), tag = "t" + i % 7 (string),
 * odd (boolean), nested.g = i % 4. */
static json_t *md_of(size_t i)
{
    char tag[8];
    snprintf(tag, sizeof tag, "t%zu", i % 7);
    return json_pack("{s:I,s:s,s:b,s:{s:I}}", "cat", (json_int_t)(i % 100), "tag", tag, "odd",
                     (int)(i & 1), "nested", "g", (json_int_t)(i % 4));
}

static bool keep_cat7(size_t i) { return i % 100 == 7; }
static bool keep_t3_even_ge50(size_t i) { return i % 7 == 3 && !(i & 1) && i % 100 >= 50; }

static vx_filter *pf(const char *text)
{
    char err[256];
    vx_filter *f = vx_filter_parse_text(text, strlen(text), err, sizeof err);
    cr_assert_not_null(f, "%s", err);
    return f;
}

/* Mean recall@k of filtered queries against exact search over kept rows;
 * every result must satisfy keep and the count must be min(k, |kept|). */
static double filtered_recall(vx_index *x, const float *data, size_t N, uint32_t dim,
                              const char *ftext, bool (*keep)(size_t), uint32_t k)
{
    vx_filter *f = pf(ftext);
    size_t hit = 0, tot = 0;
    for (size_t qi = 0; qi < 20; qi++) {
        const float *q = data + (N + qi) * dim;
        size_t ex[100];
        size_t ne = exact(data, N, dim, VX_EUCLIDEAN, q, k, keep, ex);
        vx_match *m = NULL;
        size_t n = query(x, q, k, NULL, f, &m);
        cr_assert_eq(n, ne, "filter %s: %zu results, %zu qualify", ftext, n, ne);
        for (size_t j = 0; j < n; j++)
            cr_assert(keep(id_num(m[j].id)), "filter %s returned %s", ftext, m[j].id);
        for (size_t i = 0; i < ne; i++)
            for (size_t j = 0; j < n; j++)
                if (id_num(m[j].id) == ex[i]) {
                    hit++;
                    break;
                }
        tot += ne;
        vx_matches_free(m, n);
    }
    vx_filter_free(f);
    return tot ? (double)hit / (double)tot : 1.0;
}

Test(vx_index, filters_exact_with_and_without_metadata_indexes)
{
    const size_t N = SLOW_BUILD ? 2000 : 5000;
    const uint32_t dim = 16;
    char *dir = ts_tmpdir();
    vx_index *x = make(dir, dim, VX_EUCLIDEAN, NULL);
    float *data = gen_data(N + 20, dim);
    wait_all(x, put_rows(x, data, dim, 0, N, md_of, NULL));
    const char *sel = "{\"cat\": 7}"; /* 1% of the vectors */
    const char *multi = "{\"tag\": \"t3\", \"odd\": false, \"cat\": {\"$gte\": 50}}";
    /* No metadata index: every clause post-filtered before the search. */
    double r1 = filtered_recall(x, data, N, dim, sel, keep_cat7, 10);
    double r2 = filtered_recall(x, data, N, dim, multi, keep_t3_even_ge50, 10);
    cr_assert_geq(r1, 0.99, "selective filter recall %.3f", r1);
    cr_assert_geq(r2, 0.95, "multi-clause recall %.3f", r2);
    /* Metadata indexes, created after the vectors: backfilled. */
    uint64_t id = 0;
    char err[256];
    cr_assert_eq(vx_index_meta_create(x, "cat", VX_META_NUMBER, &id, err, sizeof err), 0, "%s",
                 err);
    cr_assert_eq(vx_index_meta_create(x, "tag", VX_META_STRING, &id, err, sizeof err), 0);
    cr_assert_eq(vx_index_meta_create(x, "cat", VX_META_STRING, &id, err, sizeof err), -EEXIST);
    wait_all(x, id);
    vx_meta_def defs[VX_META_MAX_INDEXES];
    cr_assert_eq(vx_index_meta_list(x, defs), 2);
    cr_assert_str_eq(defs[0].property, "cat");
    cr_assert_eq(defs[0].type, VX_META_NUMBER);
    double r3 = filtered_recall(x, data, N, dim, sel, keep_cat7, 10);
    double r4 = filtered_recall(x, data, N, dim, multi, keep_t3_even_ge50, 10);
    cr_assert_geq(r3, 0.99, "indexed selective recall %.3f", r3);
    cr_assert_geq(r4, 0.95, "indexed multi-clause recall %.3f", r4);
    /* Indexed-only metadata returned. */
    vx_filter *f = pf(sel);
    vx_query qq = {.vector = data, .top_k = 3, .filter = f,
                   .return_metadata = VX_RETURN_META_INDEXED};
    vx_match *m = NULL;
    size_t n = 0;
    cr_assert_eq(vx_index_query(x, &qq, &m, &n, err, sizeof err), 0);
    cr_assert_eq(n, 3);
    cr_assert_eq(json_object_size(m[0].metadata), 2, "only cat and tag");
    cr_assert_eq(json_integer_value(json_object_get(m[0].metadata, "cat")), 7);
    vx_matches_free(m, n);
    vx_filter_free(f);
    /* Delete one; the other stays; deleting a missing one is ENOENT. */
    cr_assert_eq(vx_index_meta_delete(x, "cat", &id, err, sizeof err), 0);
    cr_assert_eq(vx_index_meta_delete(x, "cat", &id, err, sizeof err), -ENOENT);
    wait_all(x, id);
    cr_assert_eq(vx_index_meta_list(x, defs), 1);
    cr_assert_str_eq(defs[0].property, "tag");
    double r5 = filtered_recall(x, data, N, dim, sel, keep_cat7, 10);
    cr_assert_geq(r5, 0.99);
    /* Vectors upserted after the index are indexed as they come. */
    vx_vector_in v = {"late", data, NULL, NULL};
    json_t *md = json_pack("{s:s}", "tag", "late-tag");
    v.metadata = md;
    cr_assert_eq(vx_index_upsert(x, &v, 1, &id, err, sizeof err), 0);
    json_decref(md);
    wait_all(x, id);
    f = pf("{\"tag\": \"late-tag\"}");
    n = query(x, data + dim, 5, NULL, f, &m);
    cr_assert_eq(n, 1);
    cr_assert_str_eq(m[0].id, "late");
    vx_matches_free(m, n);
    vx_filter_free(f);
    /* nested key and $ne */
    f = pf("{\"nested.g\": {\"$ne\": 0}, \"cat\": {\"$lt\": 2}}");
    n = query(x, data, 50, NULL, f, &m);
    cr_assert_gt(n, 0);
    for (size_t i = 0; i < n; i++) {
        size_t k = id_num(m[i].id);
        cr_assert(k % 4 != 0 && k % 100 < 2, "%s", m[i].id);
    }
    vx_matches_free(m, n);
    vx_filter_free(f);
    vx_index_unref(x);
    free(data);
    ts_tmpdir_remove(dir);
    free(dir);
}

/* ---------------------------------------------------------------- list */

typedef struct churn {
    vx_index *x;
    atomic_bool stop;
    const float *data;
} churn;

static void *churn_main(void *arg)
{
    churn *c = arg;
    char id[32];
    for (size_t i = 0; !atomic_load(&c->stop); i++) {
        snprintf(id, sizeof id, "w%zu", i % 300);
        vx_vector_in v = {id, c->data + (i % 100) * 4, NULL, NULL};
        char err[128];
        uint64_t mid;
        cr_assert_eq(vx_index_upsert(c->x, &v, 1, &mid, err, sizeof err), 0);
    }
    return NULL;
}

Test(vx_index, list_pages_cover_every_id_once_under_concurrent_upserts)
{
    const size_t N = 2500;
    char *dir = ts_tmpdir();
    vx_index *x = make(dir, 4, VX_EUCLIDEAN, NULL);
    float *data = gen_data(N, 4);
    wait_all(x, put_rows(x, data, 4, 0, N, NULL, NULL));
    churn c = {x, false, data};
    pthread_t th;
    pthread_create(&th, NULL, churn_main, &c);
    unsigned char *seen = calloc(N, 1);
    char after[80] = "";
    size_t pages = 0, prev_ok = 0;
    for (;;) {
        vx_list_page p;
        char err[128];
        cr_assert_eq(vx_index_list(x, after, 97, &p, err, sizeof err), 0);
        pages++;
        for (size_t i = 0; i < p.count; i++) {
            cr_assert_gt(strcmp(p.ids[i], after), 0, "ids in byte order after the cursor");
            if (p.ids[i][0] == 'v') {
                size_t k = id_num(p.ids[i]);
                cr_assert_eq(seen[k], 0, "%s listed twice", p.ids[i]);
                seen[k] = 1;
            }
            snprintf(after, sizeof after, "%s", p.ids[i]);
        }
        bool more = p.truncated;
        cr_assert_geq(p.total, N);
        vx_list_page_free(&p);
        if (!more)
            break;
    }
    atomic_store(&c.stop, true);
    pthread_join(th, NULL);
    for (size_t i = 0; i < N; i++)
        prev_ok += seen[i];
    cr_assert_eq(prev_ok, N, "every stored id listed once: %zu of %zu", prev_ok, N);
    cr_assert_gt(pages, N / 97);
    vx_list_page p;
    char err[128];
    cr_assert_eq(vx_index_list(x, NULL, 1001, &p, err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "1000"), "%s", err);
    free(seen);
    vx_index_unref(x);
    free(data);
    ts_tmpdir_remove(dir);
    free(dir);
}

/* ---------------------------------------------------------------- limits */

Test(vx_index, limits_are_einval_naming_the_limit)
{
    char *dir = ts_tmpdir();
    vx_index *x = make(dir, 3, VX_COSINE, NULL);
    float ok[3] = {1, 2, 3}, bad[3] = {1, NAN, 3};
    char err[256], longid[70], longns[70];
    memset(longid, 'a', 65);
    longid[65] = '\0';
    memset(longns, 'n', 65);
    longns[65] = '\0';
    uint64_t id;
    vx_vector_in v = {longid, ok, NULL, NULL};
    cr_assert_eq(vx_index_upsert(x, &v, 1, &id, err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "64") && strstr(err, "id"), "%s", err);
    v = (vx_vector_in){"", ok, NULL, NULL};
    cr_assert_eq(vx_index_upsert(x, &v, 1, &id, err, sizeof err), -EINVAL);
    v = (vx_vector_in){"a", bad, NULL, NULL};
    cr_assert_eq(vx_index_insert(x, &v, 1, &id, err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "finite"), "%s", err);
    v = (vx_vector_in){"a", ok, longns, NULL};
    cr_assert_eq(vx_index_upsert(x, &v, 1, &id, err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "namespace"), "%s", err);
    char *big = malloc(11000);
    memset(big, 'x', 10999);
    big[10999] = '\0';
    json_t *md = json_pack("{s:s}", "k", big);
    v = (vx_vector_in){"a", ok, NULL, md};
    cr_assert_eq(vx_index_upsert(x, &v, 1, &id, err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "10240") && strstr(err, "metadata"), "%s", err);
    json_decref(md);
    free(big);
    cr_assert_eq(vx_index_check_dimensions(x, 4, err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "dimensions") && strstr(err, "3"), "%s", err);
    cr_assert_eq(vx_index_check_dimensions(x, 3, err, sizeof err), 0);
    vx_vector_in *many = calloc(5001, sizeof *many);
    for (size_t i = 0; i < 5001; i++)
        many[i] = (vx_vector_in){"same", ok, NULL, NULL};
    cr_assert_eq(vx_index_upsert(x, many, 5001, &id, err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "5000"), "%s", err);
    cr_assert_eq(vx_index_upsert(x, many, 0, &id, err, sizeof err), -EINVAL);
    free(many);
    const char *ids[1] = {longid};
    cr_assert_eq(vx_index_delete_ids(x, ids, 1, &id, err, sizeof err), -EINVAL);
    /* nothing invalid was logged */
    vx_index_info info;
    vx_index_info_get(x, &info);
    cr_assert_eq(info.last_mutation, 0);
    v = (vx_vector_in){"a", ok, NULL, NULL};
    cr_assert_eq(vx_index_upsert(x, &v, 1, &id, err, sizeof err), 0);
    wait_all(x, id);
    vx_query q = {.vector = ok, .top_k = 101};
    vx_match *m;
    size_t n;
    cr_assert_eq(vx_index_query(x, &q, &m, &n, err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "topK") && strstr(err, "100"), "%s", err);
    q.top_k = 0;
    cr_assert_eq(vx_index_query(x, &q, &m, &n, err, sizeof err), -EINVAL);
    q = (vx_query){.vector = ok, .top_k = 21, .return_values = true};
    cr_assert_eq(vx_index_query(x, &q, &m, &n, err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "20"), "%s", err);
    q = (vx_query){.vector = ok, .top_k = 21, .return_metadata = VX_RETURN_META_ALL};
    cr_assert_eq(vx_index_query(x, &q, &m, &n, err, sizeof err), -EINVAL);
    q = (vx_query){.vector = ok, .top_k = 21, .return_metadata = VX_RETURN_META_INDEXED};
    cr_assert_eq(vx_index_query(x, &q, &m, &n, err, sizeof err), 0);
    vx_matches_free(m, n);
    q = (vx_query){.vector = bad, .top_k = 2};
    cr_assert_eq(vx_index_query(x, &q, &m, &n, err, sizeof err), -EINVAL);
    q = (vx_query){.by_id = "nope", .top_k = 2};
    cr_assert_eq(vx_index_query(x, &q, &m, &n, err, sizeof err), -ENOENT);
    q = (vx_query){.by_id = "a", .top_k = 2};
    cr_assert_eq(vx_index_query(x, &q, &m, &n, err, sizeof err), 0);
    cr_assert_eq(n, 1);
    cr_assert(fabsf(m[0].score - 1.0f) < 1e-5f);
    vx_matches_free(m, n);
    cr_assert_eq(vx_index_meta_create(x, "$bad", VX_META_STRING, &id, err, sizeof err), -EINVAL);
    vx_index_config c;
    memset(&c, 0, sizeof c);
    snprintf(c.name, sizeof c.name, "Bad_Name");
    c.dimensions = 3;
    cr_assert_eq(vx_index_config_check(&c, 0, err, sizeof err), -EINVAL);
    snprintf(c.name, sizeof c.name, "good-name");
    cr_assert_eq(vx_index_config_check(&c, 0, err, sizeof err), 0);
    c.dimensions = 1537;
    cr_assert_eq(vx_index_config_check(&c, 0, err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "1536"), "%s", err);
    vx_index_unref(x);
    ts_tmpdir_remove(dir);
    free(dir);
}

/* ---------------------------------------------------------------- concurrency */

typedef struct reader {
    vx_index *x;
    const float *data;
    atomic_bool *stop;
    size_t queries;
    uint32_t dim;
} reader;

static void *reader_main(void *arg)
{
    reader *r = arg;
    vx_filter *f = pf("{\"tag\": {\"$in\": [\"t1\", \"t2\"]}}");
    for (size_t i = 0; !atomic_load(r->stop); i++) {
        vx_match *m = NULL;
        size_t n = 0;
        vx_query q = {.vector = r->data + (i % 500) * r->dim, .top_k = 10,
                      .filter = i % 3 == 0 ? f : NULL, .ns = i % 3 == 1 ? "one" : NULL,
                      .return_values = i % 2 == 0};
        char err[128];
        cr_assert_eq(vx_index_query(r->x, &q, &m, &n, err, sizeof err), 0, "%s", err);
        for (size_t k = 0; k < n; k++) {
            cr_assert_eq(m[k].id[0], 'v');
            cr_assert_lt(id_num(m[k].id), 200000);
            if (i % 3 == 0) {
                const char *t = json_string_value(json_object_get(m[k].metadata, "tag"));
                (void)t; /* metadata not asked: only the id check */
            }
        }
        vx_matches_free(m, n);
        vx_list_page p;
        cr_assert_eq(vx_index_list(r->x, "v5", 10, &p, err, sizeof err), 0);
        vx_list_page_free(&p);
        r->queries++;
    }
    vx_filter_free(f);
    return NULL;
}

Test(vx_index, queries_in_parallel_with_the_apply_thread)
{
    const size_t N = SLOW_BUILD ? 1500 : 6000;
    const uint32_t dim = 16;
    char *dir = ts_tmpdir();
    vx_index *x = make(dir, dim, VX_COSINE, NULL);
    float *data = gen_data(N, dim);
    uint64_t id = put_rows(x, data, dim, 0, 500, md_of, ns_of);
    atomic_bool stop = false;
    reader rd[3];
    pthread_t th[3];
    for (int i = 0; i < 3; i++) {
        rd[i] = (reader){x, data, &stop, 0, dim};
        pthread_create(&th[i], NULL, reader_main, &rd[i]);
    }
    /* updates, inserts, deletes and a metadata index while they query */
    for (size_t b = 500; b < N; b += 250) {
        id = put_rows(x, data, dim, b, b + 250 < N ? b + 250 : N, md_of, ns_of);
        id = put_rows(x, data, dim, b - 500, b - 400, md_of, ns_of);
        const char *del[3] = {idn(b - 100), idn(b - 99), idn(b - 98)};
        char err[128];
        cr_assert_eq(vx_index_delete_ids(x, del, 3, &id, err, sizeof err), 0);
        if (b == 1000)
            cr_assert_eq(vx_index_meta_create(x, "tag", VX_META_STRING, &id, err, sizeof err), 0);
    }
    wait_all(x, id);
    atomic_store(&stop, true);
    size_t total = 0;
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        total += rd[i].queries;
    }
    cr_assert_gt(total, 10);
    vx_index_info info;
    vx_index_info_get(x, &info);
    cr_log_info("%zu queries during %llu mutations; %llu compactions", total,
                (unsigned long long)info.processed_upto, (unsigned long long)info.compactions);
    cr_assert_eq(info.processed_upto, id);
    vx_index_unref(x);
    free(data);
    ts_tmpdir_remove(dir);
    free(dir);
}

/* ---------------------------------------------------------------- persistence */

/* The top-10 ids of 20 queries, with and without filter/namespace. */
static char **answers(vx_index *x, const float *data, uint32_t dim, size_t *count)
{
    vx_filter *f = pf("{\"cat\": {\"$lt\": 30}}");
    char **out = calloc(60 * 10, sizeof *out);
    size_t c = 0;
    for (size_t qi = 0; qi < 60; qi++) {
        vx_match *m = NULL;
        size_t n = query(x, data + (qi % 20) * dim, 10, qi >= 40 ? "one" : NULL,
                         qi >= 20 && qi < 40 ? f : NULL, &m);
        for (size_t i = 0; i < n; i++)
            out[c++] = strdup(m[i].id);
        vx_matches_free(m, n);
    }
    vx_filter_free(f);
    *count = c;
    return out;
}

static void answers_free(char **a, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(a[i]);
    free(a);
}

static void reopen_same_results(bool snapshots)
{
    const size_t N = SLOW_BUILD ? 1200 : 3000;
    const uint32_t dim = 16;
    char *dir = ts_tmpdir();
    vx_index_opts o;
    vx_index_opts_init(&o);
    o.fsync = false;
    o.snapshot_every_mutations = snapshots ? 3 : 1000000;
    vx_index *x = make(dir, dim, VX_COSINE, &o);
    float *data = gen_data(N, dim);
    uint64_t id = put_rows(x, data, dim, 0, N, md_of, ns_of);
    char err[128];
    cr_assert_eq(vx_index_meta_create(x, "cat", VX_META_NUMBER, &id, err, sizeof err), 0);
    id = put_rows(x, data + dim, dim, 0, 300, md_of, ns_of); /* updates */
    const char *del[2] = {"v5", "v6"};
    cr_assert_eq(vx_index_delete_ids(x, del, 2, &id, err, sizeof err), 0);
    wait_all(x, id);
    vx_index_info a;
    vx_index_info_get(x, &a);
    if (snapshots)
        cr_assert_gt(a.snapshot_id, 0, "a snapshot was taken");
    size_t na;
    char **before = answers(x, data, dim, &na);
    vx_index_unref(x);
    x = reopen(dir, &o);
    vx_index_info b;
    vx_index_info_get(x, &b);
    cr_assert_eq(b.vector_count, a.vector_count);
    cr_assert_eq(b.processed_upto, a.processed_upto);
    cr_assert_eq(b.namespaces, a.namespaces);
    if (snapshots)
        cr_assert_lt(b.replayed_records, a.processed_upto);
    else
        cr_assert_eq(b.replayed_records, a.processed_upto);
    vx_meta_def defs[VX_META_MAX_INDEXES];
    cr_assert_eq(vx_index_meta_list(x, defs), 1);
    size_t nb;
    char **after = answers(x, data, dim, &nb);
    cr_assert_eq(na, nb);
    size_t same = 0;
    for (size_t i = 0; i < na; i++)
        same += strcmp(before[i], after[i]) == 0;
    /* the graph is loaded as saved (snapshot) or rebuilt identically
     * (replay, same seed and order): results match exactly */
    cr_assert_eq(same, na, "%zu of %zu answers equal", same, na);
    /* values and metadata survive exactly */
    size_t n;
    vx_match *m = get1(x, "v1000", &n);
    cr_assert_eq(n, 1);
    cr_assert_eq(memcmp(m[0].values, data + 1000 * dim, dim * sizeof(float)), 0);
    json_t *md = md_of(1000);
    cr_assert(json_equal(md, m[0].metadata));
    json_decref(md);
    vx_matches_free(m, n);
    m = get1(x, "v5", &n);
    cr_assert_eq(n, 0);
    vx_matches_free(m, n);
    cr_log_info("reopen (%s): open %.1f ms, %llu records replayed", snapshots ? "snapshot" : "log",
                b.open_ms, (unsigned long long)b.replayed_records);
    answers_free(before, na);
    answers_free(after, nb);
    vx_index_unref(x);
    free(data);
    ts_tmpdir_remove(dir);
    free(dir);
}

Test(vx_index, reopen_from_snapshot_gives_the_same_results) { reopen_same_results(true); }
Test(vx_index, reopen_from_log_replay_gives_the_same_results) { reopen_same_results(false); }

Test(vx_index, compaction_after_many_updates_keeps_recall)
{
    const size_t N = SLOW_BUILD ? 1500 : 4000, Q = 30;
    const uint32_t dim = 16;
    char *dir = ts_tmpdir();
    vx_index *x = make(dir, dim, VX_EUCLIDEAN, NULL);
    float *data = gen_data(N + Q, dim);
    float *other = gen_data(N, dim);
    wait_all(x, put_rows(x, other, dim, 0, N, md_of, ns_of));
    uint64_t id = 0;
    for (int round = 0; round < 3; round++) /* every vector rewritten 3 times */
        id = put_rows(x, round == 2 ? data : other, dim, 0, N, md_of, ns_of);
    wait_all(x, id);
    vx_index_info info;
    vx_index_info_get(x, &info);
    cr_assert_geq(info.compactions, 1);
    cr_assert_eq(info.vector_count, N);
    size_t hit = 0, tot = 0;
    for (size_t qi = 0; qi < Q; qi++) {
        const float *q = data + (N + qi) * dim;
        size_t ex[10];
        size_t ne = exact(data, N, dim, VX_EUCLIDEAN, q, 10, NULL, ex);
        vx_match *m = NULL;
        size_t n = query(x, q, 10, NULL, NULL, &m);
        for (size_t i = 0; i < ne; i++)
            for (size_t j = 0; j < n; j++)
                hit += id_num(m[j].id) == ex[i];
        tot += ne;
        vx_matches_free(m, n);
    }
    double r = (double)hit / (double)tot;
    cr_log_info("after %llu compactions: recall %.4f, %llu tombstones", (unsigned long long)info.compactions,
                r, (unsigned long long)info.deleted_slots);
    cr_assert_geq(r, 0.95);
    /* namespaces and filters still right after slots were remapped */
    vx_match *m = NULL;
    size_t n = query(x, data, 10, "three", NULL, &m);
    cr_assert_eq(n, 10);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(id_num(m[i].id) % 3, 0);
    vx_matches_free(m, n);
    vx_index_unref(x);
    free(data);
    free(other);
    ts_tmpdir_remove(dir);
    free(dir);
}

/* ---------------------------------------------------------------- corruption */

Test(vx_index, corrupt_index_json_or_wal_payload_is_refused_with_a_reason)
{
    char *dir = ts_tmpdir();
    vx_index *x = make(dir, 3, VX_COSINE, NULL);
    float ok[3] = {1, 2, 3};
    vx_vector_in v = {"a", ok, NULL, NULL};
    uint64_t id;
    char err[256] = "";
    cr_assert_eq(vx_index_upsert(x, &v, 1, &id, err, sizeof err), 0);
    vx_index_unref(x);
    char path[1024], wal[1024];
    snprintf(path, sizeof path, "%s/idx", dir);
    snprintf(wal, sizeof wal, "%s/idx/wal", dir);
    /* a payload the WAL accepts (valid frame) but the index cannot decode */
    vx_wal_opts wo;
    vx_wal_opts_init(&wo, wal);
    wo.fsync = false;
    vx_wal *w = NULL;
    cr_assert_eq(vx_wal_open(&wo, NULL, &w, NULL, err, sizeof err), 0, "%s", err);
    static const uint8_t junk[] = {3, 0, 0, 0, 1, 0, 0, 0, 200, 'x'};
    cr_assert_eq(vx_wal_append_sync(w, VX_WAL_UPSERT, junk, sizeof junk, &id), 0);
    vx_wal_close(w);
    vx_index_opts o;
    vx_index_opts_init(&o);
    o.fsync = false;
    x = NULL;
    err[0] = '\0';
    int rc = vx_index_open(path, &o, &x, err, sizeof err);
    cr_assert_eq(rc, -EBADMSG, "rc %d", rc);
    cr_assert_null(x);
    cr_assert(strstr(err, "record 2") && strstr(err, "malformed"), "%s", err);
    /* index.json damaged */
    char *cfg = ts_write_file(path, "index.json", "{\"format\": 1, \"name\": \"x\"");
    err[0] = '\0';
    rc = vx_index_open(path, &o, &x, err, sizeof err);
    cr_assert_eq(rc, -EBADMSG);
    cr_assert(strstr(err, "index.json"), "%s", err);
    free(cfg);
    cfg = ts_write_file(path, "index.json",
                        "{\"format\": 1, \"name\": \"x\", \"dimensions\": 0, \"metric\": \"cosine\"}");
    rc = vx_index_open(path, &o, &x, err, sizeof err);
    cr_assert_eq(rc, -EBADMSG);
    cr_assert(strstr(err, "dimensions"), "%s", err);
    free(cfg);
    /* creating over an existing directory */
    vx_index_config c;
    memset(&c, 0, sizeof c);
    snprintf(c.name, sizeof c.name, "x");
    c.dimensions = 3;
    cr_assert_eq(vx_index_create(path, &c, &o, &x, err, sizeof err), -EEXIST);
    ts_tmpdir_remove(dir);
    free(dir);
}

/* ---------------------------------------------------------------- open time */

/* Start-up cost from a snapshot vs. from log replay, and memory per vector.
 * Long (it builds the graph twice): runs only with OUTPOST_VX_BENCH=<n>
 * (vectors; e.g. 100000), skipped visibly otherwise. */
Test(vx_index, open_time_snapshot_vs_replay, .timeout = 900)
{
    const char *env = getenv("OUTPOST_VX_BENCH");
    if (!env || atol(env) <= 0)
        cr_skip_test("set OUTPOST_VX_BENCH=<vectors> to measure open times");
    const size_t N = (size_t)atol(env);
    const uint32_t dim = 64;
    cr_assert_leq(N, 200000);
    char *dir = ts_tmpdir();
    vx_index_opts o;
    vx_index_opts_init(&o);
    o.fsync = false;
    o.snapshot_every_mutations = 1000000;
    o.snapshot_every_bytes = 1ull << 40;
    vx_index *x = make(dir, dim, VX_COSINE, &o);
    float *data = gen_data(N, dim);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    wait_all(x, put_rows(x, data, dim, 0, N, md_of, ns_of));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    vx_index_info a;
    vx_index_info_get(x, &a);
    cr_log_warn("bench: %zu x %u cosine built in %.1f s, %zu bytes = %.0f bytes/vector, disk %llu",
                N, dim, (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9,
                a.memory_bytes, (double)a.memory_bytes / (double)N,
                (unsigned long long)a.disk_bytes);
    vx_index_unref(x);
    /* replay the whole log */
    x = reopen(dir, &o);
    vx_index_info b;
    vx_index_info_get(x, &b);
    cr_assert_eq(b.vector_count, N);
    cr_log_warn("bench: open by log replay: %.1f ms (%llu records)", b.open_ms,
                (unsigned long long)b.replayed_records);
    vx_index_unref(x);
    /* a reopen whose apply thread snapshots at once, then open from it */
    vx_index_opts os = o;
    os.snapshot_every_mutations = 1;
    x = reopen(dir, &os);
    for (int i = 0; i < 6000; i++) {
        vx_index_info_get(x, &b);
        if (b.snapshot_id)
            break;
        struct timespec nap = {0, 10000000};
        nanosleep(&nap, NULL);
    }
    cr_assert_gt(b.snapshot_id, 0);
    vx_index_unref(x);
    x = reopen(dir, &o);
    vx_index_info_get(x, &b);
    cr_assert_eq(b.vector_count, N);
    cr_assert_eq(b.replayed_records, 0);
    cr_log_warn("bench: open from snapshot: %.1f ms (disk %llu bytes)", b.open_ms,
                (unsigned long long)b.disk_bytes);
    vx_index_unref(x);
    free(data);
    ts_tmpdir_remove(dir);
    free(dir);
}

/* ---------------------------------------------------------------- untrusted log bytes */

/* Opens a fresh index whose log holds one record (type, payload) written
 * straight through vx_wal; returns open's result (the index closed). */
static int open_with_record(const char *root, int i, uint8_t type, const uint8_t *p, size_t len,
                            char *err, size_t errlen)
{
    char dir[1024], wal[1100];
    snprintf(dir, sizeof dir, "%s/f%d", root, i);
    snprintf(wal, sizeof wal, "%s/wal", dir);
    vx_index_config c;
    memset(&c, 0, sizeof c);
    snprintf(c.name, sizeof c.name, "fuzz");
    c.dimensions = 2;
    c.metric = VX_DOT;
    vx_index_opts o;
    vx_index_opts_init(&o);
    o.fsync = false;
    vx_index *x = NULL;
    cr_assert_eq(vx_index_create(dir, &c, &o, &x, err, errlen), 0);
    vx_index_unref(x);
    vx_wal_opts wo;
    vx_wal_opts_init(&wo, wal);
    wo.fsync = false;
    vx_wal *w = NULL;
    cr_assert_eq(vx_wal_open(&wo, NULL, &w, NULL, NULL, 0), 0);
    uint64_t id;
    cr_assert_eq(vx_wal_append_sync(w, type, p, len, &id), 0);
    vx_wal_close(w);
    err[0] = '\0';
    int rc = vx_index_open(dir, &o, &x, err, errlen);
    if (rc == 0) {
        vx_index_info info;
        vx_index_info_get(x, &info);
        cr_assert_eq(info.processed_upto, 1);
        vx_index_unref(x);
    }
    return rc;
}

Test(vx_index, damaged_log_payloads_never_crash_open)
{
    /* a valid upsert of two vectors, encoded as vx_index.c documents */
    uint8_t good[128];
    size_t n = 0;
    uint32_t u32;
    float f[2] = {1.5f, -2.0f};
    u32 = 2; memcpy(good + n, &u32, 4); n += 4; /* dim */
    u32 = 2; memcpy(good + n, &u32, 4); n += 4; /* count */
    for (int k = 0; k < 2; k++) {
        good[n++] = 2; memcpy(good + n, k ? "bb" : "aa", 2); n += 2;
        good[n++] = 1; good[n++] = 'n';
        const char *md = "{\"a\":1}";
        u32 = (uint32_t)strlen(md); memcpy(good + n, &u32, 4); n += 4;
        memcpy(good + n, md, u32); n += u32;
        memcpy(good + n, f, 8); n += 8;
    }
    char *root = ts_tmpdir();
    char err[256];
    int i = 0;
    cr_assert_eq(open_with_record(root, i++, VX_WAL_UPSERT, good, n, err, sizeof err), 0, "%s",
                 err);
    size_t refused = 0;
    for (size_t len = 1; len < n; len++) /* every truncation */
        refused += open_with_record(root, i++, VX_WAL_UPSERT, good, len, err, sizeof err) ==
                   -EBADMSG;
    cr_assert_eq(refused, n - 1, "every truncated payload refused");
    uint8_t bad[128];
    for (size_t pos = 0; pos < n; pos += 3) { /* byte damage: refused or applied, never a crash */
        memcpy(bad, good, n);
        bad[pos] ^= 0xa5;
        int rc = open_with_record(root, i++, VX_WAL_UPSERT, bad, n, err, sizeof err);
        cr_assert(rc == 0 || rc == -EBADMSG, "rc %d", rc);
        if (rc)
            cr_assert(strstr(err, "record 1"), "%s", err);
    }
    static const uint8_t del_bad[] = {5, 0, 0, 0, 1, 'x'};
    cr_assert_eq(open_with_record(root, i++, VX_WAL_DELETE, del_bad, sizeof del_bad, err,
                                  sizeof err), -EBADMSG);
    static const uint8_t meta_bad[] = {7, 3, 0, 'a', 'b', 'c'};
    cr_assert_eq(open_with_record(root, i++, VX_WAL_METADATA_INDEX_CREATE, meta_bad,
                                  sizeof meta_bad, err, sizeof err), -EBADMSG);
    static const uint8_t unknown[] = {1};
    cr_assert_eq(open_with_record(root, i++, 77, unknown, 1, err, sizeof err), -EBADMSG);
    cr_assert(strstr(err, "unknown record type"), "%s", err);
    ts_tmpdir_remove(root);
    free(root);
}

/* Backpressure: with more logged-but-unapplied bytes than max_pending_bytes
 * a writer waits write_timeout_ms, then gets -EAGAIN with a message; nothing
 * of the refused mutation is logged, and once the apply thread caught up
 * writes are accepted again. One batch of 1,000 vectors of 1,024
 * dimensions (4 MB encoded: a first mutation is always taken) keeps the
 * apply thread busy for far longer (hundreds of ms) than the 20 ms a
 * second writer waits. */
Test(vx_index, backpressure_eagain_then_accepts_again)
{
    char *dir = ts_tmpdir();
    vx_index_opts o;
    vx_index_opts_init(&o);
    o.fsync = false;
    o.max_pending_bytes = 1u << 20;
    o.write_timeout_ms = 20;
    const uint32_t dim = 1024;
    const size_t n = 1000;
    vx_index *x = make(dir, dim, VX_EUCLIDEAN, &o);
    float *data = gen_data(n + 1, dim);
    uint64_t first = put_rows(x, data, dim, 0, n, NULL, NULL);
    cr_assert_gt(first, 0);
    vx_vector_in v = {"late", data + n * dim, NULL, NULL};
    uint64_t id = 0;
    char err[256] = "";
    int rc = vx_index_upsert(x, &v, 1, &id, err, sizeof err);
    cr_assert_eq(rc, -EAGAIN, "rc %d: %s", rc, err);
    cr_expect(strstr(err, "pending") != NULL, "%s", err);
    vx_index_info info;
    vx_index_info_get(x, &info);
    cr_expect_eq(info.last_mutation, first, "the refused mutation was not logged");
    cr_assert_eq(vx_index_wait_applied(x, first, 60000), 0);
    rc = vx_index_upsert(x, &v, 1, &id, err, sizeof err);
    cr_assert_eq(rc, 0, "after catching up: %d %s", rc, err);
    cr_expect_eq(id, first + 1);
    vx_index_unref(x);
    free(data);
    ts_tmpdir_remove(dir);
    free(dir);
}
