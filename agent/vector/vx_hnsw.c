/*
 * vx_hnsw: HNSW graph index (see vx_hnsw.h for the model, threading and
 * file format).
 */
#include "vector/vx_hnsw.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define NONE UINT32_MAX
#define FILE_VERSION 2u /* 2: cosine rows as given, not normalized */
static const char MAGIC[8] = {'V', 'X', 'H', 'N', 'S', 'W', '0', '1'};

typedef struct hd {
    float d;
    uint32_t id;
} hd;

/* Binary max-heap on d (the candidate queue stores -d to pop the closest). */
typedef struct heap {
    hd *a;
    size_t n, cap;
} heap;

/* Per-search scratch, pooled per index so warm searches do not allocate. */
typedef struct scratch {
    struct scratch *next;
    uint32_t *tags; /* visited: tags[i] == epoch */
    uint32_t tags_cap, epoch;
    heap cand, res;
    hd *tmp;
    size_t tmp_cap;
    float *qf;
    int8_t *qc;
} scratch;

typedef struct qref {
    const int8_t *code;
    float scale, norm;
} qref;

struct vx_hnsw {
    uint32_t dim;
    vx_metric metric;
    vx_hnsw_params p;
    uint32_t maxM0, maxM;
    double mL;

    uint32_t count, cap, n_deleted;
    uint32_t entry, max_level;
    float *rows;
    /* cap rows of cstride bytes: the row's scale and float squared norm,
     * then its dim int8 codes, padded to 4 bytes; scoring a node touches
     * one contiguous run of memory, whose first line (the one prefetched
     * first) holds what the score needs last (see code_at, meta_at) */
    int8_t *codes;
    size_t cstride;
    uint8_t *levels, *deleted;
    uint32_t *links0;  /* cap * (1 + maxM0): count then ids */
    uint32_t **upper;  /* levels[i] * (1 + maxM) per node with level > 0 */
    size_t upper_bytes;
    uint64_t rng;

    pthread_mutex_t wmu;
    pthread_rwlock_t rw;
    pthread_mutex_t pool_mu;
    scratch *pool;
    size_t pool_bytes;

    /* writer-only: pending list updates [node, level, cnt, ids...] */
    uint32_t *pend;
    size_t pend_n, pend_cap;
};

/* ---------------------------------------------------------------- helpers */

static void heap_push(heap *h, float d, uint32_t id)
{
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h->a[p].d >= d)
            break;
        h->a[i] = h->a[p];
        i = p;
    }
    h->a[i] = (hd){d, id};
}

static hd heap_pop(heap *h)
{
    hd top = h->a[0];
    hd last = h->a[--h->n];
    size_t i = 0, n = h->n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && h->a[c + 1].d > h->a[c].d)
            c++;
        if (h->a[c].d <= last.d)
            break;
        h->a[i] = h->a[c];
        i = c;
    }
    if (n > 0)
        h->a[i] = last;
    return top;
}

static int hd_cmp(const void *a, const void *b)
{
    const hd *x = a, *y = b;
    if (x->d < y->d)
        return -1;
    if (x->d > y->d)
        return 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Orders a node's neighbour candidates: by distance, ties by a hash of the
 * candidate and the node (*salt). Among equal vectors every distance ties;
 * ordered by id, every full list would keep the oldest nodes and a new
 * duplicate would never be linked back to, so it (and all later ones) would
 * be unreachable. A per-node pseudo-random order spreads the links. */
static inline uint64_t tie_mix(uint64_t v)
{
    v ^= v >> 33;
    v *= 0xff51afd7ed558ccdULL;
    v ^= v >> 33;
    v *= 0xc4ceb9fe1a85ec53ULL;
    return v ^ (v >> 33);
}

static int hd_cmp_salted(const void *a, const void *b, void *salt)
{
    const hd *x = a, *y = b;
    if (x->d < y->d)
        return -1;
    if (x->d > y->d)
        return 1;
    uint64_t s = (uint64_t)*(const uint32_t *)salt << 32;
    uint64_t hx = tie_mix(s | x->id), hy = tie_mix(s | y->id);
    if (hx != hy)
        return hx < hy ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static bool grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (*cap >= need)
        return true;
    size_t nc = *cap ? *cap : 16;
    while (nc < need)
        nc *= 2;
    void *q = realloc(*p, nc * elem);
    if (!q)
        return false;
    *p = q;
    *cap = nc;
    return true;
}

static bool all_finite(const float *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return false;
    return true;
}

static uint64_t rng_next(uint64_t *s)
{
    /* splitmix64: cheap, deterministic from the seed */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint32_t maxm(const vx_hnsw *x, uint32_t l)
{
    return l == 0 ? x->maxM0 : x->maxM;
}

static inline uint32_t *links(const vx_hnsw *x, uint32_t i, uint32_t l)
{
    if (l == 0)
        return x->links0 + (size_t)i * (1 + x->maxM0);
    return x->upper[i] + (size_t)(l - 1) * (1 + x->maxM);
}

static inline const int8_t *code_at(const vx_hnsw *x, uint32_t i)
{
    return x->codes + (size_t)i * x->cstride + 2 * sizeof(float);
}

/* m[0] = scale, m[1] = squared norm of row i */
static inline void meta_at(const vx_hnsw *x, uint32_t i, float m[2])
{
    memcpy(m, x->codes + (size_t)i * x->cstride, 2 * sizeof(float));
}

static inline qref node_ref(const vx_hnsw *x, uint32_t i)
{
    float m[2];
    meta_at(x, i, m);
    return (qref){code_at(x, i), m[0], m[1]};
}

/* Approximate internal distance from the int8 codes. */
static inline float dist_q(const vx_hnsw *x, const qref *q, uint32_t j)
{
    float m[2];
    meta_at(x, j, m);
    float dot = q->scale * m[0] * (float)vx_dot_i8(q->code, code_at(x, j), x->dim);
    if (x->metric == VX_EUCLIDEAN)
        return q->norm + m[1] - 2.0f * dot;
    return -dot;
}

static inline float dist_nodes(const vx_hnsw *x, uint32_t a, uint32_t b)
{
    qref q = node_ref(x, a);
    return dist_q(x, &q, b);
}

static inline float dist_exact(const vx_hnsw *x, const float *q, uint32_t j)
{
    const float *r = x->rows + (size_t)j * x->dim;
    if (x->metric == VX_COSINE) {
        float m[2];
        meta_at(x, j, m);
        return -vx_dot_f32(q, r, x->dim) * m[1];
    }
    return vx_distance(x->metric, q, r, x->dim);
}

static inline bool allowed(const vx_hnsw_filter *f, uint32_t s)
{
    if (!f)
        return true;
    if (s >= f->nbits)
        return false;
    return (f->allow[s >> 6] >> (s & 63)) & 1u;
}

/* ---------------------------------------------------------------- scratch */

static void scratch_free(scratch *s)
{
    free(s->tags);
    free(s->cand.a);
    free(s->res.a);
    free(s->tmp);
    free(s->qf);
    free(s->qc);
    free(s);
}

static scratch *scratch_get(vx_hnsw *x)
{
    pthread_mutex_lock(&x->pool_mu);
    scratch *s = x->pool;
    if (s)
        x->pool = s->next;
    pthread_mutex_unlock(&x->pool_mu);
    if (s)
        return s;
    s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->qf = malloc(sizeof(float) * x->dim);
    s->qc = malloc(x->dim);
    if (!s->qf || !s->qc) {
        scratch_free(s);
        return NULL;
    }
    return s;
}

static size_t scratch_bytes(const vx_hnsw *x, const scratch *s)
{
    return sizeof *s + (size_t)s->tags_cap * 4 + (s->cand.cap + s->res.cap + s->tmp_cap) * sizeof(hd) +
           (size_t)x->dim * 5;
}

static void scratch_put(vx_hnsw *x, scratch *s)
{
    pthread_mutex_lock(&x->pool_mu);
    s->next = x->pool;
    x->pool = s;
    pthread_mutex_unlock(&x->pool_mu);
}

/* Sizes s for a search over x->count nodes with a beam of `beam`. */
static bool scratch_ready(vx_hnsw *x, scratch *s, size_t beam)
{
    size_t n = x->count;
    if (s->tags_cap < n) {
        size_t nc = s->tags_cap;
        uint32_t *t = s->tags;
        if (!grow((void **)&t, &nc, n, sizeof *t))
            return false;
        memset(t + s->tags_cap, 0, (nc - s->tags_cap) * sizeof *t);
        s->tags = t;
        s->tags_cap = (uint32_t)nc;
    }
    size_t tmp_need = beam + 1;
    size_t rep = (size_t)x->maxM0 * (x->maxM0 + 1) + 1;
    if (tmp_need < rep)
        tmp_need = rep;
    if (!grow((void **)&s->cand.a, &s->cand.cap, n + 1, sizeof(hd)) ||
        !grow((void **)&s->res.a, &s->res.cap, beam + 2, sizeof(hd)) ||
        !grow((void **)&s->tmp, &s->tmp_cap, tmp_need, sizeof(hd)))
        return false;
    return true;
}

static void new_epoch(scratch *s)
{
    if (++s->epoch == 0) {
        memset(s->tags, 0, (size_t)s->tags_cap * sizeof *s->tags);
        s->epoch = 1;
    }
}

/* ---------------------------------------------------------------- graph */

static uint32_t greedy(const vx_hnsw *x, const qref *q, uint32_t cur, float *curd, uint32_t level)
{
    bool changed = true;
    while (changed) {
        changed = false;
        const uint32_t *L = links(x, cur, level);
        for (uint32_t i = 0; i < L[0]; i++) {
            float d = dist_q(x, q, L[1 + i]);
            if (d < *curd) {
                *curd = d;
                cur = L[1 + i];
                changed = true;
            }
        }
    }
    return cur;
}

/* Asks for node j's code row (and its scale and norm) ahead of use: a
 * traversal's time goes to cache misses on rows scattered over the whole
 * index, and the rows of one neighbour list are independent loads. */
static inline void prefetch_node(const vx_hnsw *x, uint32_t j)
{
    const char *p = (const char *)(x->codes + (size_t)j * x->cstride);
    for (size_t o = 0; o < x->cstride; o += 64)
        __builtin_prefetch(p + o);
    __builtin_prefetch(p + x->cstride - 1);
}

/* How many rows ahead of the one being scored are prefetched. */
#define PF_AHEAD 3

/* Beam search at one layer; leaves up to ef admitted nodes in s->res
 * (max-heap). query: admit only live, allowed nodes (construction admits
 * every node). Each expanded node's list is first filtered through the
 * visited tags into `fresh`, then scored in order while the rows a few
 * places ahead are prefetched, and the next candidate's list is prefetched
 * before the scoring starts. */
static void search_layer(const vx_hnsw *x, scratch *s, const qref *q, uint32_t ep, float epd, size_t ef,
                         uint32_t level, bool query, const vx_hnsw_filter *f)
{
    new_epoch(s);
    s->cand.n = 0;
    s->res.n = 0;
    const uint32_t epoch = s->epoch;
    uint32_t *tags = s->tags;
    tags[ep] = epoch;
    heap_push(&s->cand, -epd, ep);
    if (!query || (!x->deleted[ep] && allowed(f, ep)))
        heap_push(&s->res, epd, ep);
    float lower = s->res.n ? epd : INFINITY;
    uint32_t fresh[2 * 128];
    while (s->cand.n) {
        hd c = heap_pop(&s->cand);
        if (-c.d > lower && s->res.n >= ef)
            break;
        const uint32_t *L = links(x, c.id, level);
        uint32_t cnt = L[0], m = 0;
        for (uint32_t i = 0; i < cnt; i++)
            __builtin_prefetch(tags + L[1 + i]);
        for (uint32_t i = 0; i < cnt; i++) {
            uint32_t j = L[1 + i];
            if (tags[j] == epoch)
                continue;
            tags[j] = epoch;
            fresh[m++] = j;
            if (m <= PF_AHEAD)
                prefetch_node(x, j);
        }
        if (s->cand.n)
            __builtin_prefetch(links(x, s->cand.a[0].id, level));
        for (uint32_t i = 0; i < m; i++) {
            if (i + PF_AHEAD < m)
                prefetch_node(x, fresh[i + PF_AHEAD]);
            uint32_t j = fresh[i];
            float d = dist_q(x, q, j);
            if (s->res.n < ef || d < lower) {
                heap_push(&s->cand, -d, j);
                if (!query || (!x->deleted[j] && allowed(f, j))) {
                    heap_push(&s->res, d, j);
                    if (s->res.n > ef)
                        heap_pop(&s->res);
                    lower = s->res.a[0].d;
                }
            }
        }
    }
}

/* Drains s->res into s->tmp sorted ascending; returns the count. */
static size_t drain_sorted(scratch *s)
{
    size_t n = s->res.n;
    for (size_t i = n; i-- > 0;)
        s->tmp[i] = heap_pop(&s->res);
    return n;
}

/* The diverse-neighbour heuristic: c (sorted ascending by distance to the
 * base node) -> up to m ids in out, skipping tombstones. */
static uint32_t select_neighbours(const vx_hnsw *x, const hd *c, size_t nc, uint32_t m, uint32_t *out)
{
    uint32_t k = 0;
    for (size_t i = 0; i < nc && k < m; i++) {
        uint32_t id = c[i].id;
        if (x->deleted[id])
            continue;
        bool good = true;
        qref q = node_ref(x, id);
        for (uint32_t r = 0; r < k; r++) {
            if (dist_q(x, &q, out[r]) < c[i].d) {
                good = false;
                break;
            }
        }
        if (good)
            out[k++] = id;
    }
    return k;
}

static bool pend_add(vx_hnsw *x, uint32_t node, uint32_t level, const uint32_t *ids, uint32_t cnt)
{
    if (!grow((void **)&x->pend, &x->pend_cap, x->pend_n + 3 + cnt, sizeof(uint32_t)))
        return false;
    uint32_t *p = x->pend + x->pend_n;
    p[0] = node;
    p[1] = level;
    p[2] = cnt;
    memcpy(p + 3, ids, cnt * sizeof(uint32_t));
    x->pend_n += 3 + cnt;
    return true;
}

static void pend_apply(vx_hnsw *x)
{
    size_t i = 0;
    while (i < x->pend_n) {
        uint32_t *p = x->pend + i;
        uint32_t *L = links(x, p[0], p[1]);
        L[0] = p[2];
        memcpy(L + 1, p + 3, p[2] * sizeof(uint32_t));
        i += 3 + p[2];
    }
    x->pend_n = 0;
}

/* Grows every per-slot array to hold `need` slots; caller holds the
 * exclusive lock (or owns x alone). */
static bool ensure_cap(vx_hnsw *x, size_t need)
{
    if (x->cap >= need)
        return true;
    size_t nc = x->cap ? x->cap : 64;
    while (nc < need)
        nc *= 2;
    size_t d = x->dim;
    void *p;
#define REGROW(field, bytes)                      \
    do {                                          \
        p = realloc(x->field, (bytes));           \
        if (!p)                                   \
            return false;                         \
        x->field = p;                             \
    } while (0)
    REGROW(rows, nc * d * sizeof(float));
    REGROW(codes, nc * x->cstride);
    REGROW(levels, nc);
    REGROW(deleted, nc);
    REGROW(links0, nc * (1 + (size_t)x->maxM0) * sizeof(uint32_t));
    REGROW(upper, nc * sizeof(uint32_t *));
#undef REGROW
    x->cap = (uint32_t)nc;
    return true;
}

/* Writes row `slot` (the vector as given) and its codes; slot < cap; tmp
 * holds dim floats of scratch. Cosine: the float row stays as given (the
 * index above returns it, and keeping a normalized copy as well would cost
 * another 4 bytes a dimension), the codes are of the normalized vector,
 * and the meta's second float is the inverse norm, so an exact distance is
 * -dot(q, row) / |row| (dist_exact). Euclidean: the squared norm. */
static void store_row(vx_hnsw *x, uint32_t slot, const float *v, float *tmp, uint32_t level,
                      uint32_t *up)
{
    size_t d = x->dim;
    memcpy(x->rows + slot * d, v, d * sizeof(float));
    int8_t *row = x->codes + slot * x->cstride;
    float m[2];
    if (x->metric == VX_COSINE) {
        memcpy(tmp, v, d * sizeof(float));
        float n = vx_normalize(tmp, d);
        m[0] = vx_quantize_i8(tmp, d, row + sizeof m);
        m[1] = n > 0 ? 1.0f / n : 0.0f;
    } else {
        m[0] = vx_quantize_i8(v, d, row + sizeof m);
        m[1] = vx_dot_f32(v, v, d);
    }
    memset(row + sizeof m + d, 0, x->cstride - sizeof m - d);
    memcpy(row, m, sizeof m);
    x->levels[slot] = (uint8_t)level;
    x->deleted[slot] = 0;
    links(x, slot, 0)[0] = 0;
    x->upper[slot] = up;
}

/* ---------------------------------------------------------------- API */

void vx_hnsw_params_default(vx_hnsw_params *p)
{
    *p = (vx_hnsw_params){
        .M = 16,
        .ef_construction = 200,
        .ef_search = 64,
        .rerank_factor = 4,
        .filter_brute_per_k = 50,
        .filter_brute_fraction = 0.02,
        .filter_ef_max = 2000,
        .compact_fraction = 0.10,
        .seed = 0x5eed,
    };
}

static bool params_fill(vx_hnsw_params *o, const vx_hnsw_params *p)
{
    vx_hnsw_params_default(o);
    if (!p)
        return true;
    if (p->M)
        o->M = p->M;
    if (p->ef_construction)
        o->ef_construction = p->ef_construction;
    if (p->ef_search)
        o->ef_search = p->ef_search;
    if (p->rerank_factor)
        o->rerank_factor = p->rerank_factor;
    if (p->filter_brute_per_k)
        o->filter_brute_per_k = p->filter_brute_per_k;
    if (p->filter_brute_fraction > 0)
        o->filter_brute_fraction = p->filter_brute_fraction;
    if (p->filter_ef_max)
        o->filter_ef_max = p->filter_ef_max;
    if (p->compact_fraction > 0)
        o->compact_fraction = p->compact_fraction;
    if (p->seed)
        o->seed = p->seed;
    return o->M >= 2 && o->M <= 128 && o->ef_construction <= 100000 && o->ef_search <= 100000 &&
           o->rerank_factor <= 1024 && o->filter_brute_per_k <= 1000000 && o->filter_ef_max <= 1000000 &&
           isfinite(o->filter_brute_fraction) && o->filter_brute_fraction <= 1.0 &&
           isfinite(o->compact_fraction) && o->compact_fraction <= 1.0;
}

int vx_hnsw_create(uint32_t dim, vx_metric metric, const vx_hnsw_params *p, vx_hnsw **out)
{
    if (!out)
        return VX_HNSW_EINVAL;
    *out = NULL;
    if (dim == 0 || dim > VX_HNSW_MAX_DIM || (unsigned)metric > VX_DOT)
        return VX_HNSW_EINVAL;
    vx_hnsw *x = calloc(1, sizeof *x);
    if (!x)
        return VX_HNSW_ENOMEM;
    if (!params_fill(&x->p, p)) {
        free(x);
        return VX_HNSW_EINVAL;
    }
    vx_dist_init();
    x->dim = dim;
    x->metric = metric;
    x->maxM = x->p.M;
    x->maxM0 = 2 * x->p.M;
    x->cstride = 2 * sizeof(float) + (((size_t)dim + 3) & ~(size_t)3);
    x->mL = 1.0 / log((double)x->p.M);
    x->entry = NONE;
    x->rng = x->p.seed;
    pthread_mutex_init(&x->wmu, NULL);
    pthread_mutex_init(&x->pool_mu, NULL);
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    /* a steady stream of searches must not starve the writer */
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&x->rw, &ra);
    pthread_rwlockattr_destroy(&ra);
    *out = x;
    return VX_HNSW_OK;
}

void vx_hnsw_free(vx_hnsw *x)
{
    if (!x)
        return;
    for (uint32_t i = 0; i < x->count; i++)
        free(x->upper[i]);
    free(x->rows);
    free(x->codes);
    free(x->levels);
    free(x->deleted);
    free(x->links0);
    free(x->upper);
    free(x->pend);
    while (x->pool) {
        scratch *s = x->pool;
        x->pool = s->next;
        scratch_free(s);
    }
    pthread_mutex_destroy(&x->wmu);
    pthread_mutex_destroy(&x->pool_mu);
    pthread_rwlock_destroy(&x->rw);
    free(x);
}

uint32_t vx_hnsw_dim(const vx_hnsw *x)
{
    return x->dim;
}

vx_metric vx_hnsw_metric(const vx_hnsw *x)
{
    return x->metric;
}

void vx_hnsw_get_params(const vx_hnsw *x, vx_hnsw_params *out)
{
    *out = x->p;
}

uint32_t vx_hnsw_count(vx_hnsw *x)
{
    pthread_rwlock_rdlock(&x->rw);
    uint32_t n = x->count;
    pthread_rwlock_unlock(&x->rw);
    return n;
}

uint32_t vx_hnsw_deleted(vx_hnsw *x)
{
    pthread_rwlock_rdlock(&x->rw);
    uint32_t n = x->n_deleted;
    pthread_rwlock_unlock(&x->rw);
    return n;
}

uint32_t vx_hnsw_live(vx_hnsw *x)
{
    pthread_rwlock_rdlock(&x->rw);
    uint32_t n = x->count - x->n_deleted;
    pthread_rwlock_unlock(&x->rw);
    return n;
}

bool vx_hnsw_is_deleted(vx_hnsw *x, uint32_t slot)
{
    pthread_rwlock_rdlock(&x->rw);
    bool d = slot >= x->count || x->deleted[slot];
    pthread_rwlock_unlock(&x->rw);
    return d;
}

bool vx_hnsw_needs_compact(vx_hnsw *x)
{
    pthread_rwlock_rdlock(&x->rw);
    bool r = x->count > 0 && (double)x->n_deleted > x->p.compact_fraction * (double)x->count;
    pthread_rwlock_unlock(&x->rw);
    return r;
}

int vx_hnsw_vector(vx_hnsw *x, uint32_t slot, float *out)
{
    int rc = VX_HNSW_EINVAL;
    pthread_rwlock_rdlock(&x->rw);
    if (slot < x->count) {
        memcpy(out, x->rows + (size_t)slot * x->dim, x->dim * sizeof(float));
        rc = VX_HNSW_OK;
    }
    pthread_rwlock_unlock(&x->rw);
    return rc;
}

static uint32_t draw_level(vx_hnsw *x)
{
    /* U in (0, 1]: 53 random bits, never 0 */
    double u = ((double)(rng_next(&x->rng) >> 11) + 1.0) / 9007199254740992.0;
    double l = floor(-log(u) * x->mL);
    return l >= VX_HNSW_MAX_LEVEL ? VX_HNSW_MAX_LEVEL : (uint32_t)l;
}

/* Writer side of insert once the row is stored at slot n (unpublished):
 * computes the links into x->pend. Caller holds wmu only. */
static int link_new(vx_hnsw *x, uint32_t n, uint32_t level)
{
    scratch *s = scratch_get(x);
    if (!s || !scratch_ready(x, s, x->p.ef_construction)) {
        if (s)
            scratch_put(x, s);
        return VX_HNSW_ENOMEM;
    }
    int rc = VX_HNSW_OK;
    qref q = node_ref(x, n);
    uint32_t cur = x->entry;
    float curd = dist_q(x, &q, cur);
    for (uint32_t l = x->max_level; l > level; l--)
        cur = greedy(x, &q, cur, &curd, l);
    uint32_t sel[2 * 128 + 1], nl[2 * 128 + 1];
    uint32_t top = level < x->max_level ? level : x->max_level;
    for (uint32_t l = top + 1; l-- > 0;) {
        search_layer(x, s, &q, cur, curd, x->p.ef_construction, l, false, NULL);
        size_t nc = drain_sorted(s);
        cur = s->tmp[0].id;
        curd = s->tmp[0].d;
        uint32_t k = select_neighbours(x, s->tmp, nc, x->p.M, sel);
        if (!pend_add(x, n, l, sel, k)) {
            rc = VX_HNSW_ENOMEM;
            break;
        }
        uint32_t mm = maxm(x, l);
        for (uint32_t i = 0; i < k && rc == VX_HNSW_OK; i++) {
            uint32_t e = sel[i];
            const uint32_t *L = links(x, e, l);
            uint32_t cnt = L[0];
            if (cnt < mm) {
                memcpy(nl, L + 1, cnt * sizeof(uint32_t));
                nl[cnt] = n;
                if (!pend_add(x, e, l, nl, cnt + 1))
                    rc = VX_HNSW_ENOMEM;
                continue;
            }
            /* full: re-prune e's list plus the new node */
            qref qe = node_ref(x, e);
            for (uint32_t j = 0; j < cnt; j++)
                s->tmp[j] = (hd){dist_q(x, &qe, L[1 + j]), L[1 + j]};
            s->tmp[cnt] = (hd){dist_q(x, &qe, n), n};
            qsort_r(s->tmp, cnt + 1, sizeof(hd), hd_cmp_salted, &e);
            uint32_t kk = select_neighbours(x, s->tmp, cnt + 1, mm, nl);
            if (!pend_add(x, e, l, nl, kk))
                rc = VX_HNSW_ENOMEM;
        }
        if (rc != VX_HNSW_OK)
            break;
    }
    scratch_put(x, s);
    return rc;
}

int vx_hnsw_insert(vx_hnsw *x, const float *vec, uint32_t *slot)
{
    if (!x || !vec || !all_finite(vec, x->dim))
        return VX_HNSW_EINVAL;
    float *v = malloc(2 * sizeof(float) * x->dim); /* the row, then scratch */
    if (!v)
        return VX_HNSW_ENOMEM;
    memcpy(v, vec, sizeof(float) * x->dim);

    pthread_mutex_lock(&x->wmu);
    int rc = VX_HNSW_OK;
    uint32_t n = x->count;
    uint64_t rng_saved = x->rng;
    uint32_t level = draw_level(x);
    uint32_t *up = NULL;
    if (n >= (uint32_t)INT32_MAX) {
        rc = VX_HNSW_EFULL;
        goto out;
    }
    if (level > 0) {
        up = calloc((size_t)level * (1 + x->maxM), sizeof(uint32_t));
        if (!up) {
            rc = VX_HNSW_ENOMEM;
            goto out;
        }
    }
    /* phase 0: room and the row, unpublished (count stays n) */
    if (n >= x->cap) {
        pthread_rwlock_wrlock(&x->rw);
        bool ok = ensure_cap(x, (size_t)n + 1);
        pthread_rwlock_unlock(&x->rw);
        if (!ok) {
            rc = VX_HNSW_ENOMEM;
            goto out;
        }
    }
    store_row(x, n, v, v + x->dim, level, up);
    /* phase 1: search and choose links without the rwlock */
    x->pend_n = 0;
    if (x->entry != NONE) {
        rc = link_new(x, n, level);
        if (rc != VX_HNSW_OK)
            goto out;
    }
    /* phase 2: publish */
    pthread_rwlock_wrlock(&x->rw);
    pend_apply(x);
    if (x->entry == NONE || level > x->max_level) {
        x->entry = n;
        x->max_level = level;
    }
    x->count = n + 1;
    pthread_rwlock_unlock(&x->rw);
    up = NULL;
    if (slot)
        *slot = n;
out:
    if (rc != VX_HNSW_OK) {
        x->rng = rng_saved;
        x->pend_n = 0;
        if (n < x->cap)
            x->upper[n] = NULL;
        free(up);
    }
    pthread_mutex_unlock(&x->wmu);
    free(v);
    return rc;
}

int vx_hnsw_delete(vx_hnsw *x, uint32_t slot)
{
    if (!x)
        return VX_HNSW_EINVAL;
    pthread_mutex_lock(&x->wmu);
    int rc = VX_HNSW_EINVAL;
    if (slot < x->count && !x->deleted[slot]) {
        pthread_rwlock_wrlock(&x->rw);
        x->deleted[slot] = 1;
        x->n_deleted++;
        pthread_rwlock_unlock(&x->rw);
        rc = VX_HNSW_OK;
    }
    pthread_mutex_unlock(&x->wmu);
    return rc;
}

int vx_hnsw_repair(vx_hnsw *x)
{
    if (!x)
        return VX_HNSW_EINVAL;
    pthread_mutex_lock(&x->wmu);
    int rc = VX_HNSW_OK;
    scratch *s = NULL;
    if (x->n_deleted == 0)
        goto out;
    s = scratch_get(x);
    if (!s || !scratch_ready(x, s, 0)) {
        rc = VX_HNSW_ENOMEM;
        goto out;
    }
    uint32_t nl[2 * 128 + 1];
    for (uint32_t u = 0; u < x->count; u++) {
        if (x->deleted[u])
            continue;
        for (uint32_t l = 0; l <= x->levels[u]; l++) {
            const uint32_t *L = links(x, u, l);
            bool dirty = false;
            for (uint32_t i = 0; i < L[0] && !dirty; i++)
                dirty = x->deleted[L[1 + i]];
            if (!dirty)
                continue;
            new_epoch(s);
            s->tags[u] = s->epoch;
            qref qu = node_ref(x, u);
            size_t nc = 0;
            for (uint32_t i = 0; i < L[0]; i++) {
                uint32_t j = L[1 + i];
                if (!x->deleted[j]) {
                    if (s->tags[j] != s->epoch) {
                        s->tags[j] = s->epoch;
                        s->tmp[nc++] = (hd){dist_q(x, &qu, j), j};
                    }
                    continue;
                }
                const uint32_t *D = links(x, j, l);
                for (uint32_t t = 0; t < D[0]; t++) {
                    uint32_t k = D[1 + t];
                    if (x->deleted[k] || s->tags[k] == s->epoch)
                        continue;
                    s->tags[k] = s->epoch;
                    s->tmp[nc++] = (hd){dist_q(x, &qu, k), k};
                }
            }
            qsort_r(s->tmp, nc, sizeof(hd), hd_cmp_salted, &u);
            uint32_t k = select_neighbours(x, s->tmp, nc, maxm(x, l), nl);
            pthread_rwlock_wrlock(&x->rw);
            uint32_t *W = links(x, u, l);
            W[0] = k;
            memcpy(W + 1, nl, k * sizeof(uint32_t));
            pthread_rwlock_unlock(&x->rw);
        }
    }
    if (x->entry != NONE && x->deleted[x->entry]) {
        uint32_t best = NONE, bl = 0;
        for (uint32_t u = 0; u < x->count; u++)
            if (!x->deleted[u] && (best == NONE || x->levels[u] > bl)) {
                best = u;
                bl = x->levels[u];
            }
        pthread_rwlock_wrlock(&x->rw);
        x->entry = best;
        x->max_level = best == NONE ? 0 : bl;
        pthread_rwlock_unlock(&x->rw);
    }
out:
    if (s)
        scratch_put(x, s);
    pthread_mutex_unlock(&x->wmu);
    return rc;
}

static inline void prefetch_row(const vx_hnsw *x, uint32_t j)
{
    const char *p = (const char *)(x->rows + (size_t)j * x->dim);
    size_t bytes = (size_t)x->dim * sizeof(float);
    for (size_t o = 0; o < bytes; o += 64)
        __builtin_prefetch(p + o);
    __builtin_prefetch(p + bytes - 1);
}

/* Sorts s->tmp[0..nc) by exact distance and copies the best k out (the
 * float rows are prefetched a few candidates ahead: they are cold). */
static uint32_t rerank(const vx_hnsw *x, scratch *s, size_t nc, uint32_t k, vx_hnsw_hit *out)
{
    for (size_t i = 0; i < nc && i < PF_AHEAD; i++)
        prefetch_row(x, s->tmp[i].id);
    for (size_t i = 0; i < nc; i++) {
        if (i + PF_AHEAD < nc)
            prefetch_row(x, s->tmp[i + PF_AHEAD].id);
        s->tmp[i].d = dist_exact(x, s->qf, s->tmp[i].id);
    }
    qsort(s->tmp, nc, sizeof(hd), hd_cmp);
    uint32_t m = nc < k ? (uint32_t)nc : k;
    for (uint32_t i = 0; i < m; i++)
        out[i] = (vx_hnsw_hit){s->tmp[i].id, s->tmp[i].d};
    return m;
}

static uint32_t brute(const vx_hnsw *x, scratch *s, const vx_hnsw_filter *f, uint32_t k, vx_hnsw_hit *out)
{
    s->res.n = 0;
    uint32_t end = x->count;
    if (f && f->nbits < end)
        end = f->nbits;
    for (uint32_t j = 0; j < end; j++) {
        if (f && (j & 63) == 0 && f->allow[j >> 6] == 0) {
            j += 63;
            continue;
        }
        if (x->deleted[j] || !allowed(f, j))
            continue;
        float d = dist_exact(x, s->qf, j);
        if (s->res.n < k) {
            heap_push(&s->res, d, j);
        } else if (d < s->res.a[0].d || (d == s->res.a[0].d && j < s->res.a[0].id)) {
            heap_pop(&s->res);
            heap_push(&s->res, d, j);
        }
    }
    size_t n = drain_sorted(s);
    qsort(s->tmp, n, sizeof(hd), hd_cmp);
    for (size_t i = 0; i < n; i++)
        out[i] = (vx_hnsw_hit){s->tmp[i].id, s->tmp[i].d};
    return (uint32_t)n;
}

int vx_hnsw_search(vx_hnsw *x, const float *query, uint32_t k, uint32_t ef, const vx_hnsw_filter *f,
                   vx_hnsw_hit *results, uint32_t *n)
{
    if (n)
        *n = 0;
    if (!x || !query || !n || (k && !results) || (f && f->nbits && !f->allow))
        return VX_HNSW_EINVAL;
    if (!all_finite(query, x->dim))
        return VX_HNSW_EINVAL;
    if (k == 0 || (f && f->n_allowed == 0))
        return VX_HNSW_OK;
    scratch *s = scratch_get(x);
    if (!s)
        return VX_HNSW_ENOMEM;
    memcpy(s->qf, query, sizeof(float) * x->dim);
    if (x->metric == VX_COSINE)
        vx_normalize(s->qf, x->dim);
    qref q = {s->qc, vx_quantize_i8(s->qf, x->dim, s->qc), vx_dot_f32(s->qf, s->qf, x->dim)};

    int rc = VX_HNSW_OK;
    pthread_rwlock_rdlock(&x->rw);
    uint32_t live = x->count - x->n_deleted;
    if (k > live)
        k = live; /* never more hits than live slots (and no huge scratch) */
    if (ef == 0)
        ef = x->p.ef_search;
    uint64_t beam = (uint64_t)k * x->p.rerank_factor;
    if (beam < ef)
        beam = ef;
    if (beam < k)
        beam = k;
    bool exact = live <= beam || x->entry == NONE;
    if (!exact && f) {
        double thr = (double)k * x->p.filter_brute_per_k;
        double frac = x->p.filter_brute_fraction * live;
        if (frac > thr)
            thr = frac;
        if ((double)f->n_allowed < thr) {
            exact = true;
        } else {
            uint64_t bound = beam > x->p.filter_ef_max ? beam : x->p.filter_ef_max;
            uint64_t raised = beam * live / f->n_allowed;
            beam = raised > bound ? bound : raised < beam ? beam : raised;
        }
    }
    if (live == 0) {
        /* nothing to return */
    } else if (exact) {
        if (!scratch_ready(x, s, k))
            rc = VX_HNSW_ENOMEM;
        else
            *n = brute(x, s, f, k, results);
    } else if (!scratch_ready(x, s, (size_t)beam)) {
        rc = VX_HNSW_ENOMEM;
    } else {
        uint32_t cur = x->entry;
        float curd = dist_q(x, &q, cur);
        for (uint32_t l = x->max_level; l > 0; l--)
            cur = greedy(x, &q, cur, &curd, l);
        search_layer(x, s, &q, cur, curd, (size_t)beam, 0, true, f);
        size_t nc = drain_sorted(s);
        *n = rerank(x, s, nc, k, results);
    }
    pthread_rwlock_unlock(&x->rw);
    scratch_put(x, s);
    return rc;
}

size_t vx_hnsw_memory_bytes(vx_hnsw *x)
{
    pthread_mutex_lock(&x->wmu); /* upper_bytes and pend are writer state */
    pthread_rwlock_rdlock(&x->rw);
    size_t c = x->cap, d = x->dim;
    size_t b = sizeof *x + c * (d * sizeof(float) + x->cstride + 2 + sizeof(uint32_t *) +
                                (1 + (size_t)x->maxM0) * sizeof(uint32_t));
    for (uint32_t i = 0; i < x->count; i++)
        b += (size_t)x->levels[i] * (1 + x->maxM) * sizeof(uint32_t);
    b += x->pend_cap * sizeof(uint32_t);
    pthread_rwlock_unlock(&x->rw);
    pthread_mutex_lock(&x->pool_mu);
    for (scratch *s = x->pool; s; s = s->next)
        b += scratch_bytes(x, s);
    pthread_mutex_unlock(&x->pool_mu);
    pthread_mutex_unlock(&x->wmu);
    return b;
}

/* ---------------------------------------------------------------- files */

#define FNV_OFF 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull

typedef struct io {
    FILE *f;
    uint64_t h;
    bool bad;
} io;

static void hash(io *w, const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t h = w->h;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * FNV_PRIME;
    w->h = h;
}

static void wr(io *w, const void *p, size_t n)
{
    if (w->bad)
        return;
    hash(w, p, n);
    if (n && fwrite(p, 1, n, w->f) != n)
        w->bad = true;
}

static void wr32(io *w, uint32_t v)
{
    wr(w, &v, 4);
}

static void wr64(io *w, uint64_t v)
{
    wr(w, &v, 8);
}

static bool rd(io *r, void *p, size_t n)
{
    if (r->bad)
        return false;
    if (n && fread(p, 1, n, r->f) != n) {
        r->bad = true;
        return false;
    }
    hash(r, p, n);
    return true;
}

static uint32_t rd32(io *r)
{
    uint32_t v = 0;
    rd(r, &v, 4);
    return v;
}

static uint64_t rd64(io *r)
{
    uint64_t v = 0;
    rd(r, &v, 8);
    return v;
}

static double rdf64(io *r)
{
    double v = 0;
    rd(r, &v, 8);
    return v;
}

int vx_hnsw_save(vx_hnsw *x, FILE *f)
{
    if (!x || !f)
        return VX_HNSW_EINVAL;
    pthread_mutex_lock(&x->wmu); /* the writer's view is stable under wmu */
    io w = {f, FNV_OFF, false};
    wr(&w, MAGIC, 8);
    wr32(&w, FILE_VERSION);
    wr32(&w, x->dim);
    wr32(&w, (uint32_t)x->metric);
    wr32(&w, x->p.M);
    wr32(&w, x->p.ef_construction);
    wr32(&w, x->p.ef_search);
    wr32(&w, x->p.rerank_factor);
    wr32(&w, x->p.filter_brute_per_k);
    wr32(&w, x->p.filter_ef_max);
    wr(&w, &x->p.filter_brute_fraction, 8);
    wr(&w, &x->p.compact_fraction, 8);
    wr64(&w, x->p.seed);
    wr64(&w, x->rng);
    wr32(&w, x->count);
    wr32(&w, x->n_deleted);
    wr32(&w, x->entry);
    wr32(&w, x->max_level);
    for (uint32_t i = 0; i < x->count && !w.bad; i++) {
        uint8_t b[2] = {x->levels[i], x->deleted[i]};
        wr(&w, b, 2);
        wr(&w, x->rows + (size_t)i * x->dim, x->dim * sizeof(float));
        for (uint32_t l = 0; l <= x->levels[i]; l++) {
            const uint32_t *L = links(x, i, l);
            wr(&w, L, (1 + (size_t)L[0]) * sizeof(uint32_t));
        }
    }
    uint64_t h = w.h;
    wr64(&w, h);
    pthread_mutex_unlock(&x->wmu);
    if (w.bad || fflush(f) != 0)
        return VX_HNSW_EIO;
    return VX_HNSW_OK;
}

static int load_fail(vx_hnsw *x, const char **err, const char *why)
{
    if (err)
        *err = why;
    vx_hnsw_free(x);
    return VX_HNSW_ECORRUPT;
}

int vx_hnsw_load(FILE *f, vx_hnsw **out, const char **err)
{
    if (err)
        *err = NULL;
    if (!f || !out) {
        if (err)
            *err = "bad arguments";
        return VX_HNSW_EINVAL;
    }
    *out = NULL;
    io r = {f, FNV_OFF, false};
    char magic[8];
    if (!rd(&r, magic, 8))
        return load_fail(NULL, err, "truncated header");
    if (memcmp(magic, MAGIC, 8) != 0)
        return load_fail(NULL, err, "bad magic");
    uint32_t version = rd32(&r);
    uint32_t dim = rd32(&r), metric = rd32(&r);
    vx_hnsw_params p;
    p.M = rd32(&r);
    p.ef_construction = rd32(&r);
    p.ef_search = rd32(&r);
    p.rerank_factor = rd32(&r);
    p.filter_brute_per_k = rd32(&r);
    p.filter_ef_max = rd32(&r);
    p.filter_brute_fraction = rdf64(&r);
    p.compact_fraction = rdf64(&r);
    p.seed = rd64(&r);
    uint64_t rng = rd64(&r);
    uint32_t count = rd32(&r), n_deleted = rd32(&r), entry = rd32(&r), max_level = rd32(&r);
    if (r.bad)
        return load_fail(NULL, err, "truncated header");
    if (version != FILE_VERSION)
        return load_fail(NULL, err, "unsupported version");
    if (dim == 0 || dim > VX_HNSW_MAX_DIM || metric > VX_DOT)
        return load_fail(NULL, err, "bad dimension or metric");
    if (!(p.filter_brute_fraction > 0) || !(p.compact_fraction > 0) || !p.M || !p.ef_construction ||
        !p.ef_search || !p.rerank_factor || !p.filter_brute_per_k || !p.filter_ef_max || !p.seed)
        return load_fail(NULL, err, "bad parameters");
    if (count >= (uint32_t)INT32_MAX || n_deleted > count || max_level > VX_HNSW_MAX_LEVEL ||
        (entry != NONE && entry >= count) || (count == 0 && entry != NONE))
        return load_fail(NULL, err, "bad counts");
    vx_hnsw *x = NULL;
    if (vx_hnsw_create(dim, (vx_metric)metric, &p, &x) != VX_HNSW_OK)
        return load_fail(NULL, err, "bad parameters");
    x->rng = rng;
    float *row = malloc(2 * sizeof(float) * dim); /* a row, then scratch */
    if (!row)
        return load_fail(x, err, "out of memory");
    uint32_t deleted = 0;
    const char *why = NULL;
    for (uint32_t i = 0; i < count && !why; i++) {
        if (!ensure_cap(x, (size_t)i + 1)) {
            why = "out of memory";
            break;
        }
        uint8_t b[2];
        if (!rd(&r, b, 2) || !rd(&r, row, sizeof(float) * dim)) {
            why = "truncated";
            break;
        }
        if (b[0] > VX_HNSW_MAX_LEVEL || b[1] > 1) {
            why = "bad level or flag";
            break;
        }
        if (!all_finite(row, dim)) {
            why = "non-finite vector value";
            break;
        }
        uint32_t *up = NULL;
        if (b[0] > 0 && !(up = calloc((size_t)b[0] * (1 + x->maxM), sizeof(uint32_t)))) {
            why = "out of memory";
            break;
        }
        store_row(x, i, row, row + dim, b[0], up);
        x->deleted[i] = b[1];
        deleted += b[1];
        x->count = i + 1; /* owns up from here (freed by vx_hnsw_free) */
        for (uint32_t l = 0; l <= b[0]; l++) {
            uint32_t *L = links(x, i, l);
            uint32_t cnt = rd32(&r);
            if (r.bad) {
                why = "truncated";
                break;
            }
            if (cnt > maxm(x, l)) {
                why = "bad neighbour count";
                break;
            }
            if (!rd(&r, L + 1, (size_t)cnt * sizeof(uint32_t))) {
                why = "truncated";
                break;
            }
            L[0] = cnt;
            for (uint32_t t = 0; t < cnt; t++)
                if (L[1 + t] >= count || L[1 + t] == i) {
                    why = "bad neighbour id";
                    break;
                }
            if (why)
                break;
        }
    }
    free(row);
    if (why)
        return load_fail(x, err, why);
    uint64_t h = r.h;
    uint64_t stored = rd64(&r);
    if (r.bad)
        return load_fail(x, err, "truncated checksum");
    if (stored != h)
        return load_fail(x, err, "checksum mismatch");
    if (fgetc(f) != EOF)
        return load_fail(x, err, "trailing bytes");
    if (deleted != n_deleted)
        return load_fail(x, err, "tombstone count mismatch");
    /* links above layer 0 must point at nodes that have that layer */
    for (uint32_t i = 0; i < count; i++)
        for (uint32_t l = 1; l <= x->levels[i]; l++) {
            const uint32_t *L = links(x, i, l);
            for (uint32_t t = 0; t < L[0]; t++)
                if (x->levels[L[1 + t]] < l)
                    return load_fail(x, err, "link above a node's level");
        }
    if (entry == NONE) {
        if (deleted != count)
            return load_fail(x, err, "missing entry point");
    } else if (x->levels[entry] != max_level) {
        return load_fail(x, err, "entry point level mismatch");
    }
    x->entry = entry;
    x->max_level = entry == NONE ? 0 : max_level;
    x->n_deleted = n_deleted;
    *out = x;
    return VX_HNSW_OK;
}
