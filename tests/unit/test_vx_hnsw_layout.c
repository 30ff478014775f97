/*
 * Unit tests for vx_hnsw's packed code rows (agent/vector/vx_hnsw.c keeps
 * each node's scale, squared norm and int8 codes in one padded row, and
 * its search prefetches rows ahead): for dimensions that are not a multiple
 * of the row padding (3, 97) and the embedding size of the bundled model
 * (384), every metric, and rerank factors 1 and 4:
 *   - every returned distance is the exact float32 distance of the query
 *     to the stored row (the re-rank reads the right row);
 *   - the graph search agrees with brute force (recall@10 >= 0.95 at
 *     ef 64 on 600 clustered points: a wrong row, scale or norm would
 *     scramble the int8 traversal far below that);
 *   - the same results after a save/load round trip (codes recomputed);
 *   - the memory figure grows with the index.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "vector/vx_hnsw.h"

#define N 600u
#define Q 25u
#define K 10u

TestSuite(vx_hnsw_layout, .timeout = 60);

static uint64_t g_rng;

static double unif(void)
{
    uint64_t z = (g_rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return ((double)(z >> 11) + 0.5) / 9007199254740992.0;
}

static float gauss(void)
{
    return (float)(sqrt(-2.0 * log(unif())) * cos(6.283185307179586 * unif()));
}

/* N + Q points around 12 centres (noise 0.3); rows N.. are the queries */
static float *points(uint32_t dim)
{
    float *cent = malloc(sizeof(float) * 12 * dim);
    for (uint32_t i = 0; i < 12 * dim; i++)
        cent[i] = gauss();
    float *v = malloc(sizeof(float) * (N + Q) * dim);
    for (uint32_t i = 0; i < N + Q; i++) {
        uint32_t c = (uint32_t)(unif() * 12) % 12;
        for (uint32_t d = 0; d < dim; d++)
            v[(size_t)i * dim + d] = cent[c * dim + d] + 0.3f * gauss();
    }
    free(cent);
    return v;
}

/* The index's exact distance of q (normalized for cosine) to a stored row:
 * cosine keeps rows as given with their inverse norm, and computes
 * -dot(q, row) * (1 / |row|) with the same kernels (so equal bit for bit). */
static float ref_distance(vx_metric m, const float *q, const float *row, uint32_t dim)
{
    if (m != VX_COSINE)
        return vx_distance(m, q, row, dim);
    float *t = malloc(sizeof(float) * dim);
    cr_assert(t);
    memcpy(t, row, sizeof(float) * dim);
    float n = vx_normalize(t, dim);
    free(t);
    return -vx_dot_f32(q, row, dim) * (n > 0 ? 1.0f / n : 0.0f);
}

/* Exact top-k slots of q (already normalized for cosine) over the rows. */
static void exact_top(vx_hnsw *x, const float *q, uint32_t *out)
{
    uint32_t dim = vx_hnsw_dim(x);
    float *row = malloc(sizeof(float) * dim);
    float best[K];
    for (uint32_t i = 0; i < K; i++)
        best[i] = INFINITY, out[i] = UINT32_MAX;
    for (uint32_t j = 0; j < N; j++) {
        cr_assert_eq(vx_hnsw_vector(x, j, row), VX_HNSW_OK);
        float d = ref_distance(vx_hnsw_metric(x), q, row, dim);
        if (d >= best[K - 1])
            continue;
        uint32_t i = K - 1;
        while (i > 0 && best[i - 1] > d) {
            best[i] = best[i - 1];
            out[i] = out[i - 1];
            i--;
        }
        best[i] = d;
        out[i] = j;
    }
    free(row);
}

/* Searches every query; checks exact distances; returns recall@K and
 * stores the hits in all[Q * K]. */
static double check(vx_hnsw *x, const float *qs, vx_hnsw_hit *all)
{
    uint32_t dim = vx_hnsw_dim(x);
    vx_metric m = vx_hnsw_metric(x);
    float *qn = malloc(sizeof(float) * dim), *row = malloc(sizeof(float) * dim);
    uint32_t found = 0;
    for (uint32_t qi = 0; qi < Q; qi++) {
        memcpy(qn, qs + (size_t)qi * dim, sizeof(float) * dim);
        if (m == VX_COSINE)
            vx_normalize(qn, dim);
        vx_hnsw_hit *h = all + (size_t)qi * K;
        uint32_t n = 0;
        cr_assert_eq(vx_hnsw_search(x, qs + (size_t)qi * dim, K, 64, NULL, h, &n), VX_HNSW_OK);
        cr_assert_eq(n, K);
        for (uint32_t i = 0; i < n; i++) {
            cr_assert_lt(h[i].slot, N);
            cr_assert_eq(vx_hnsw_vector(x, h[i].slot, row), VX_HNSW_OK);
            float d = ref_distance(m, qn, row, dim);
            cr_assert_eq(h[i].distance, d, "dim %u %s: slot %u distance %g, exact %g", dim, vx_metric_name(m),
                         h[i].slot, (double)h[i].distance, (double)d);
        }
        uint32_t tr[K];
        exact_top(x, qn, tr);
        for (uint32_t i = 0; i < n; i++)
            for (uint32_t j = 0; j < K; j++)
                if (tr[j] == h[i].slot) {
                    found++;
                    break;
                }
    }
    free(qn);
    free(row);
    return (double)found / (Q * K);
}

static void one(uint32_t dim, vx_metric m, uint32_t rerank)
{
    g_rng = 1000u * dim + (uint64_t)m * 10u + rerank;
    float *v = points(dim);
    vx_hnsw_params p;
    vx_hnsw_params_default(&p);
    p.rerank_factor = rerank;
    vx_hnsw *x = NULL;
    cr_assert_eq(vx_hnsw_create(dim, m, &p, &x), VX_HNSW_OK);
    size_t empty = vx_hnsw_memory_bytes(x);
    for (uint32_t i = 0; i < N; i++)
        cr_assert_eq(vx_hnsw_insert(x, v + (size_t)i * dim, NULL), VX_HNSW_OK);
    cr_assert_gt(vx_hnsw_memory_bytes(x), empty + (size_t)N * dim * 5);

    vx_hnsw_hit *a = malloc(sizeof *a * Q * K), *b = malloc(sizeof *b * Q * K);
    double r = check(x, v + (size_t)N * dim, a);
    cr_assert_geq(r, 0.95, "dim %u %s rerank %u: recall %.3f", dim, vx_metric_name(m), rerank, r);

    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cr_assert_eq(vx_hnsw_save(x, f), VX_HNSW_OK);
    fclose(f);
    f = fmemopen(buf, len, "rb");
    vx_hnsw *y = NULL;
    const char *why = NULL;
    cr_assert_eq(vx_hnsw_load(f, &y, &why), VX_HNSW_OK, "%s", why ? why : "");
    fclose(f);
    double r2 = check(y, v + (size_t)N * dim, b);
    cr_assert_eq(r2, r);
    for (uint32_t i = 0; i < Q * K; i++) {
        cr_assert_eq(a[i].slot, b[i].slot);
        cr_assert_eq(a[i].distance, b[i].distance);
    }
    vx_hnsw_free(x);
    vx_hnsw_free(y);
    free(buf);
    free(a);
    free(b);
    free(v);
}

Test(vx_hnsw_layout, odd_and_embedding_dims_every_metric)
{
    const uint32_t dims[] = {3, 97, 384};
    const vx_metric ms[] = {VX_COSINE, VX_EUCLIDEAN, VX_DOT};
    for (size_t d = 0; d < sizeof dims / sizeof *dims; d++)
        for (size_t m = 0; m < sizeof ms / sizeof *ms; m++) {
            one(dims[d], ms[m], 1);
            one(dims[d], ms[m], 4);
        }
}
