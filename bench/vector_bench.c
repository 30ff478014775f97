/*
 * vector_bench: Outpost's HNSW engine (agent/vector/vx_hnsw, the index the
 * agent serves) on a cached dataset of bench/vector_corpus.py: build time,
 * memory, then recall@10 and queries per second over an ef sweep, single
 * thread and with several threads (the queries split across them). One JSON
 * object per line on stdout, the format bench/vector_peers.py writes for
 * hnswlib and FAISS, so bench/vector_bench.sh can put them in one table.
 *
 *   build/bench/vector_bench --data build/bench-data --name real --metric cosine
 *       [--M 16] [--efc 200] [--ef 10,16,...,256] [--threads 1,2] [--reps 3]
 *       [--min-s 0.25] [--k 10] [--max-n N] [--build-threads 1]
 *
 * Measurement (the same in vector_peers.py): each point runs the whole query
 * set, repeated until --min-s seconds have passed, --reps times; QPS is the
 * median over the reps of queries / wall seconds. Recall@10 is |returned top
 * 10 intersect exact top 10| / 10, averaged over the queries of the first
 * pass. Memory: vx_hnsw_memory_bytes and the growth of this process's
 * resident set across the build (the base vectors are loaded before).
 *
 * --build-threads 2 builds the graph from 2 threads calling vx_hnsw_insert
 * concurrently: vx_hnsw has one writer at a time (its writer mutex), so this
 * measures that contention rather than a parallel build; the default is 1.
 */
#include "vector/vx_hnsw.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_LIST 64

typedef struct mat {
    uint32_t n, dim;
    float *v; /* n * dim */
} mat;

typedef struct opts {
    const char *data, *name, *metric;
    uint32_t M, efc, k, reps, max_n, rerank;
    const char *index_cache;
    uint32_t ef[MAX_LIST], n_ef;
    uint32_t thr[MAX_LIST], n_thr;
    uint32_t build_threads;
    double min_s;
} opts;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static size_t rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return 0;
    unsigned long size = 0, res = 0;
    int ok = fscanf(f, "%lu %lu", &size, &res);
    fclose(f);
    return ok == 2 ? (size_t)res * (size_t)sysconf(_SC_PAGESIZE) : 0;
}

/* Reads a "VXB1" (float rows) or "VXG1" (int32 rows) file; bounds-checked
 * against the file size. Returns 0 or -1 with a message on stderr. */
static int read_file(const char *path, const char *magic, size_t elem, uint32_t *n, uint32_t *cols, void **out)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "vector_bench: %s: %s (run bench/vector_bench.sh, which makes the data)\n", path,
                strerror(errno));
        return -1;
    }
    char m[4];
    uint32_t hdr[2];
    int rc = -1;
    if (fread(m, 1, 4, f) != 4 || memcmp(m, magic, 4) != 0 || fread(hdr, 4, 2, f) != 2) {
        fprintf(stderr, "vector_bench: %s: bad header\n", path);
        goto done;
    }
    if (fseek(f, 0, SEEK_END) != 0)
        goto done;
    long size = ftell(f);
    if (hdr[0] == 0 || hdr[1] == 0 || hdr[1] > VX_HNSW_MAX_DIM || size < 12 ||
        (uint64_t)(size - 12) != (uint64_t)hdr[0] * hdr[1] * elem) {
        fprintf(stderr, "vector_bench: %s: size does not match its header\n", path);
        goto done;
    }
    void *p = malloc((size_t)size - 12);
    if (!p || fseek(f, 12, SEEK_SET) != 0 || fread(p, 1, (size_t)size - 12, f) != (size_t)size - 12) {
        free(p);
        fprintf(stderr, "vector_bench: %s: read failed\n", path);
        goto done;
    }
    *n = hdr[0];
    *cols = hdr[1];
    *out = p;
    rc = 0;
done:
    fclose(f);
    return rc;
}

static int parse_list(const char *s, uint32_t *out, uint32_t *n)
{
    *n = 0;
    while (*s) {
        char *end;
        unsigned long v = strtoul(s, &end, 10);
        if (end == s || v == 0 || v > 100000 || *n >= MAX_LIST)
            return -1;
        out[(*n)++] = (uint32_t)v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return -1;
    }
    return *n ? 0 : -1;
}

/* ---------------------------------------------------------------- build */

typedef struct build_job {
    vx_hnsw *x;
    const mat *base;
    atomic_uint next;
    atomic_int failed;
} build_job;

static void *build_worker(void *arg)
{
    build_job *j = arg;
    for (;;) {
        uint32_t i = atomic_fetch_add(&j->next, 1);
        if (i >= j->base->n)
            break;
        uint32_t slot;
        if (vx_hnsw_insert(j->x, j->base->v + (size_t)i * j->base->dim, &slot) != VX_HNSW_OK)
            atomic_store(&j->failed, 1);
    }
    return NULL;
}

/* ---------------------------------------------------------------- search */

typedef struct search_job {
    vx_hnsw *x;
    const mat *q;
    uint32_t k, ef, from, to;
    vx_hnsw_hit *hits; /* q->n * k, this job's rows written */
    uint32_t *nhits;
    int rc;
} search_job;

static void *search_worker(void *arg)
{
    search_job *j = arg;
    for (uint32_t i = j->from; i < j->to; i++) {
        int rc = vx_hnsw_search(j->x, j->q->v + (size_t)i * j->q->dim, j->k, j->ef, NULL,
                                j->hits + (size_t)i * j->k, &j->nhits[i]);
        if (rc != VX_HNSW_OK)
            j->rc = rc;
    }
    return NULL;
}

/* One pass of every query over `threads` threads (contiguous slices);
 * returns its wall seconds, or a negative value on failure. */
static double run_pass(vx_hnsw *x, const mat *q, uint32_t k, uint32_t ef, uint32_t threads, vx_hnsw_hit *hits,
                       uint32_t *nhits)
{
    search_job jobs[MAX_LIST];
    pthread_t tid[MAX_LIST];
    double t0 = now_s();
    for (uint32_t t = 0; t < threads; t++) {
        jobs[t] = (search_job){x, q, k, ef, (uint32_t)((uint64_t)q->n * t / threads),
                               (uint32_t)((uint64_t)q->n * (t + 1) / threads), hits, nhits, 0};
        if (t > 0 && pthread_create(&tid[t], NULL, search_worker, &jobs[t]) != 0)
            return -1;
    }
    search_worker(&jobs[0]);
    int rc = jobs[0].rc;
    for (uint32_t t = 1; t < threads; t++) {
        pthread_join(tid[t], NULL);
        if (jobs[t].rc)
            rc = jobs[t].rc;
    }
    double el = now_s() - t0;
    return rc ? -1 : el;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double recall_at(const vx_hnsw_hit *hits, const uint32_t *nhits, const int32_t *gt, uint32_t gt_k,
                        uint32_t nq, uint32_t k)
{
    uint64_t found = 0;
    for (uint32_t i = 0; i < nq; i++)
        for (uint32_t r = 0; r < nhits[i] && r < k; r++)
            for (uint32_t g = 0; g < k && g < gt_k; g++)
                if ((int64_t)hits[(size_t)i * k + r].slot == (int64_t)gt[(size_t)i * gt_k + g]) {
                    found++;
                    break;
                }
    return (double)found / ((double)nq * k);
}

static void usage(void)
{
    fprintf(stderr, "usage: vector_bench --data DIR --name NAME --metric cosine|euclidean|dot-product\n"
                    "  [--M 16] [--efc 200] [--ef 10,16,24,...] [--threads 1,2] [--reps 3]\n"
                    "  [--min-s 0.25] [--k 10] [--max-n N] [--build-threads 1]\n"
                    "  [--rerank-factor R] [--index-cache FILE]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    opts o = {.data = "build/bench-data", .name = "real", .metric = "cosine", .M = 16, .efc = 200, .k = 10,
              .reps = 3, .min_s = 0.25, .build_threads = 1};
    parse_list("10,16,24,32,48,64,96,128,192,256", o.ef, &o.n_ef);
    parse_list("1,2", o.thr, &o.n_thr);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            usage();
        i++;
        if (!strcmp(a, "--data"))
            o.data = v;
        else if (!strcmp(a, "--name"))
            o.name = v;
        else if (!strcmp(a, "--metric"))
            o.metric = v;
        else if (!strcmp(a, "--M"))
            o.M = (uint32_t)atoi(v);
        else if (!strcmp(a, "--efc"))
            o.efc = (uint32_t)atoi(v);
        else if (!strcmp(a, "--k"))
            o.k = (uint32_t)atoi(v);
        else if (!strcmp(a, "--reps"))
            o.reps = (uint32_t)atoi(v);
        else if (!strcmp(a, "--rerank-factor"))
            o.rerank = (uint32_t)atoi(v);
        else if (!strcmp(a, "--index-cache"))
            o.index_cache = v;
        else if (!strcmp(a, "--max-n"))
            o.max_n = (uint32_t)atoi(v);
        else if (!strcmp(a, "--build-threads"))
            o.build_threads = (uint32_t)atoi(v);
        else if (!strcmp(a, "--min-s"))
            o.min_s = atof(v);
        else if (!strcmp(a, "--ef")) {
            if (parse_list(v, o.ef, &o.n_ef))
                usage();
        } else if (!strcmp(a, "--threads")) {
            if (parse_list(v, o.thr, &o.n_thr))
                usage();
        } else
            usage();
    }
    int metric = vx_metric_parse(o.metric);
    if (metric < 0 || o.k == 0 || o.k > 1000 || o.reps == 0 || o.reps > 99 || o.build_threads == 0 ||
        o.build_threads > MAX_LIST)
        usage();

    char path[4096];
    mat base = {0}, q = {0};
    int32_t *gt = NULL;
    uint32_t gt_n = 0, gt_k = 0;
    snprintf(path, sizeof path, "%s/%s.base.f32", o.data, o.name);
    if (read_file(path, "VXB1", 4, &base.n, &base.dim, (void **)&base.v))
        return 1;
    snprintf(path, sizeof path, "%s/%s.query.f32", o.data, o.name);
    if (read_file(path, "VXB1", 4, &q.n, &q.dim, (void **)&q.v))
        return 1;
    snprintf(path, sizeof path, "%s/%s.gt.i32", o.data, o.name);
    if (read_file(path, "VXG1", 4, &gt_n, &gt_k, (void **)&gt))
        return 1;
    if (q.dim != base.dim || gt_n != q.n || gt_k < o.k) {
        fprintf(stderr, "vector_bench: %s: base, queries and ground truth disagree\n", o.name);
        return 1;
    }
    if (o.max_n && o.max_n < base.n) {
        fprintf(stderr, "vector_bench: --max-n %u: recall is against the full set's ground truth\n", o.max_n);
        base.n = o.max_n;
    }

    vx_hnsw_params p;
    vx_hnsw_params_default(&p);
    vx_hnsw_hit *hits = NULL;
    uint32_t *nhits = NULL;
    p.M = o.M;
    p.ef_construction = o.efc;
    p.rerank_factor = o.rerank;
    vx_hnsw *x = NULL;
    if (o.index_cache) {
        /* development aid: reuse a saved graph (no build figures) */
        FILE *f = fopen(o.index_cache, "rb");
        const char *why = NULL;
        if (f && vx_hnsw_load(f, &x, &why) == VX_HNSW_OK) {
            fclose(f);
            fprintf(stderr, "vector_bench: graph loaded from %s\n", o.index_cache);
            goto searches;
        }
        if (f) {
            fclose(f);
            fprintf(stderr, "vector_bench: %s: %s; building\n", o.index_cache, why ? why : "?");
        }
    }
    if (vx_hnsw_create(base.dim, (vx_metric)metric, &p, &x) != VX_HNSW_OK) {
        fprintf(stderr, "vector_bench: vx_hnsw_create failed\n");
        return 1;
    }
    fprintf(stderr, "outpost %s: building %u x %u (M %u, ef_construction %u, %u thread%s)\n", o.name, base.n,
            base.dim, o.M, o.efc, o.build_threads, o.build_threads > 1 ? "s" : "");
    size_t rss0 = rss_bytes();
    build_job bj = {.x = x, .base = &base};
    atomic_init(&bj.next, 0);
    atomic_init(&bj.failed, 0);
    pthread_t btid[MAX_LIST];
    double t0 = now_s();
    for (uint32_t t = 1; t < o.build_threads; t++)
        if (pthread_create(&btid[t], NULL, build_worker, &bj) != 0)
            return 1;
    build_worker(&bj);
    for (uint32_t t = 1; t < o.build_threads; t++)
        pthread_join(btid[t], NULL);
    double build_s = now_s() - t0;
    if (atomic_load(&bj.failed) || vx_hnsw_count(x) != base.n) {
        fprintf(stderr, "vector_bench: insert failed\n");
        return 1;
    }
    /* one search per thread first: the scratch pool is then warm, and
     * counted in the memory figure as the agent would hold it */
    hits = calloc((size_t)q.n * o.k, sizeof *hits);
    nhits = calloc(q.n, sizeof *nhits);
    if (!hits || !nhits)
        return 1;
    uint32_t max_thr = 1;
    for (uint32_t t = 0; t < o.n_thr; t++)
        max_thr = o.thr[t] > max_thr ? o.thr[t] : max_thr;
    if (run_pass(x, &q, o.k, o.ef[0], max_thr, hits, nhits) < 0)
        return 1;
    size_t rss1 = rss_bytes();
    printf("{\"lib\":\"outpost\",\"dataset\":\"%s\",\"kind\":\"build\",\"n\":%u,\"dim\":%u,\"metric\":\"%s\","
           "\"threads\":%u,\"seconds\":%.3f,\"index_bytes\":%zu,\"rss_delta\":%zu,\"kernels\":\"%s\"}\n",
           o.name, base.n, base.dim, o.metric, o.build_threads, build_s, vx_hnsw_memory_bytes(x),
           rss1 > rss0 ? rss1 - rss0 : 0, vx_tier_name(vx_dist_tier()));
    fflush(stdout);
    if (o.index_cache) {
        FILE *f = fopen(o.index_cache, "wb");
        if (!f || vx_hnsw_save(x, f) != VX_HNSW_OK)
            fprintf(stderr, "vector_bench: could not save %s\n", o.index_cache);
        if (f)
            fclose(f);
    }
searches:
    if (!hits) {
        hits = calloc((size_t)q.n * o.k, sizeof *hits);
        nhits = calloc(q.n, sizeof *nhits);
        if (!hits || !nhits)
            return 1;
    }
    /* the graph's own rerank factor, or --rerank-factor */
    vx_hnsw_get_params(x, &p);
    fprintf(stderr, "outpost %s: rerank_factor %u (beam = max(ef, k * rerank_factor))\n", o.name, p.rerank_factor);
    for (uint32_t ti = 0; ti < o.n_thr; ti++) {
        uint32_t threads = o.thr[ti];
        for (uint32_t ei = 0; ei < o.n_ef; ei++) {
            uint32_t ef = o.ef[ei];
            double qps[99];
            double rec = 0;
            for (uint32_t r = 0; r < o.reps; r++) {
                uint64_t done = 0;
                double el = 0;
                do {
                    double s = run_pass(x, &q, o.k, ef, threads, hits, nhits);
                    if (s < 0) {
                        fprintf(stderr, "vector_bench: search failed\n");
                        return 1;
                    }
                    if (r == 0 && done == 0)
                        rec = recall_at(hits, nhits, gt, gt_k, q.n, o.k);
                    el += s;
                    done += q.n;
                } while (el < o.min_s);
                qps[r] = (double)done / el;
            }
            double sorted[99];
            memcpy(sorted, qps, sizeof(double) * o.reps);
            qsort(sorted, o.reps, sizeof(double), cmp_double);
            printf("{\"lib\":\"outpost\",\"dataset\":\"%s\",\"kind\":\"search\",\"threads\":%u,\"ef\":%u,"
                   "\"k\":%u,\"rerank_factor\":%u,\"recall\":%.4f,\"qps\":%.1f,\"qps_runs\":[",
                   o.name, threads, ef, o.k, p.rerank_factor, rec, sorted[o.reps / 2]);
            for (uint32_t r = 0; r < o.reps; r++)
                printf("%s%.1f", r ? "," : "", qps[r]);
            printf("]}\n");
            fflush(stdout);
            fprintf(stderr, "outpost %s: threads %u ef %u recall %.4f qps %.0f\n", o.name, threads, ef, rec,
                    sorted[o.reps / 2]);
        }
    }
    vx_hnsw_free(x);
    free(hits);
    free(nhits);
    free(gt);
    free(base.v);
    free(q.v);
    return 0;
}
