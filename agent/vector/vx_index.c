/*
 * vx_index: one Vectorize index (see vx_index.h for the contract).
 *
 * Layout of this file: helpers (errors, byte codec, maps, skip list), the
 * state (records, namespaces, the slot "generation"), the mutation codec
 * (WAL payloads), apply (shared by the apply thread and replay), snapshots,
 * compaction, the config file, open/close, the write path, reads, info.
 *
 * State
 *   rec        one stored vector: id, slot, namespace, metadata document
 *              (json_t, kept so filters are exact and metadata indexes can
 *              be backfilled), laid out in one allocation with its skip-list
 *              links and id bytes.
 *   id map     open addressing (linear probing, backward-shift deletion)
 *              from id to rec; the skip list keeps the same records in id
 *              byte order for vx_index_list.
 *   namespace  name -> array of the slots in it (a rec knows its position,
 *              so removal is a swap with the last); a namespace query
 *              builds its allow-bitmap in O(vectors in it).
 *   gen        everything indexed by slot: the graph, the metadata indexes,
 *              slot -> rec, the visible bitmap (slots published to queries)
 *              (the graph keeps every vector as the client sent it, also
 *              for cosine, so returned values are exactly the stored
 *              float32 values). Compaction builds a new gen and swaps it
 *              in.
 *
 * Concurrency
 *   x->rw (writer-preferring) guards the state; queries hold it shared for
 *   their whole run. The apply thread is the only thread that changes the
 *   state: it reads the state without the lock (nothing else writes), inserts
 *   new rows into the graph without the lock (the new slots are past every
 *   published slot and not in the visible bitmap, so no query can return
 *   them), then takes x->rw exclusively to publish the mutation: old slots
 *   tombstoned, records, namespaces, metadata, visible bits. Every query
 *   passes an allow-bitmap to the graph (the visible bitmap itself when it
 *   has neither namespace nor filter), so a query sees exactly the mutations
 *   published before it took the lock. Lock order: x->rw, then the graph's
 *   and vx_meta's own locks.
 *   x->mu guards the queue of logged-but-unapplied mutations, applied_id and
 *   the write-side bookkeeping. Writers append to the WAL while holding
 *   x->mu, so the queue is in mutation-id order.
 *
 * WAL payloads (little-endian, every length checked at decode):
 *   insert/upsert: u32 dim, u32 n, n x { u8 idlen, id, u8 nslen, ns,
 *                  u32 mdlen, compact JSON metadata (0 = none), dim x f32 }
 *   delete:        u32 n, n x { u8 idlen, id }
 *   meta create:   u8 type, u16 len, property
 *   meta delete:   u16 len, property
 *
 * Snapshot blob (through vx_wal's snapshot files, which checksum it):
 *   "VXIXSNP2", u32 dim, u32 metric, u64 upto id, i64 upto ms, u64 records,
 *   u32 metadata-index defs; defs x { u8 type, u16 len, property };
 *   records x { u8 idlen, id, u8 nslen, ns, u32 mdlen, metadata, u32 slot };
 *   then the graph (vx_hnsw_save), last
 *   so that it can be streamed through a FILE without a length up front.
 *   Taken by the apply thread between mutations (it is the only writer, so
 *   it streams the live state without blocking queries; mutations acked
 *   meanwhile wait in the queue).
 */

#include "vector/vx_index.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "platform/pl_err.h"
#include "platform/pl_file.h"
#include "platform/pl_hash.h"
#include "platform/pl_log.h"
#include "platform/pl_time.h"
#include "vector/vx_wal.h"

#define SNAP_MAGIC "VXIXSNP2" /* 2: no copy of cosine values (the graph keeps them) */
#define CONFIG_FORMAT 1
#define CONFIG_MAX_BYTES (64u << 10)
#define SKIP_MAX 24
#define PRESET_MAX 256

/* ================================================================ helpers */

static inline bool bget(const uint64_t *b, size_t i) { return (b[i >> 6] >> (i & 63)) & 1; }
static inline void bset(uint64_t *b, size_t i) { b[i >> 6] |= 1ull << (i & 63); }
static inline void bclr(uint64_t *b, size_t i) { b[i >> 6] &= ~(1ull << (i & 63)); }

/* Growable byte buffer for encoding. */
typedef struct wbuf {
    uint8_t *p;
    size_t n, cap;
    bool oom;
} wbuf;

static void wb_put(wbuf *b, const void *src, size_t len)
{
    if (b->oom)
        return;
    if (b->n + len > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + len)
            cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    if (len)
        memcpy(b->p + b->n, src, len);
    b->n += len;
}
static void wb_u8(wbuf *b, uint8_t v) { wb_put(b, &v, 1); }
static void wb_u16(wbuf *b, uint16_t v) { wb_put(b, &v, 2); }
static void wb_u32(wbuf *b, uint32_t v) { wb_put(b, &v, 4); }
static void wb_u64(wbuf *b, uint64_t v) { wb_put(b, &v, 8); }

/* Bounds-checked reader over untrusted bytes. */
typedef struct rbuf {
    const uint8_t *p;
    size_t n, off;
    bool bad;
} rbuf;

static const uint8_t *rb_take(rbuf *r, size_t len)
{
    if (r->bad || len > r->n - r->off) {
        r->bad = true;
        return NULL;
    }
    const uint8_t *p = r->p + r->off;
    r->off += len;
    return p;
}
static uint8_t rb_u8(rbuf *r)
{
    const uint8_t *p = rb_take(r, 1);
    return p ? p[0] : 0;
}
static uint16_t rb_u16(rbuf *r)
{
    uint16_t v = 0;
    const uint8_t *p = rb_take(r, 2);
    if (p)
        memcpy(&v, p, 2);
    return v;
}
static uint32_t rb_u32(rbuf *r)
{
    uint32_t v = 0;
    const uint8_t *p = rb_take(r, 4);
    if (p)
        memcpy(&v, p, 4);
    return v;
}

static uint64_t hash_bytes(const char *s, size_t n) { return pl_fnv1a64(s, n) | 1; }

static int bytes_cmp(const char *a, size_t al, const char *b, size_t bl)
{
    size_t n = al < bl ? al : bl;
    int c = n ? memcmp(a, b, n) : 0;
    if (c)
        return c;
    return al < bl ? -1 : al > bl ? 1 : 0;
}

/* Approximate heap bytes of a jansson value (its structs, hashtable and
 * strings as jansson 2.14 allocates them), so memory_bytes counts documents. */
static size_t json_mem(const json_t *j)
{
    if (!j)
        return 0;
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        size_t b = 96, n = json_object_size(j), buckets = 8;
        while (buckets < n)
            buckets *= 2;
        b += buckets * 16;
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)j, k, v) b += 64 + strlen(k) + json_mem(v);
        return b;
    }
    case JSON_ARRAY: {
        size_t b = 48 + json_array_size(j) * sizeof(json_t *);
        for (size_t i = 0; i < json_array_size(j); i++)
            b += json_mem(json_array_get(j, i));
        return b;
    }
    case JSON_STRING: return 48 + json_string_length(j) + 1;
    case JSON_INTEGER:
    case JSON_REAL: return 32;
    default: return 0; /* true, false, null are singletons */
    }
}

/* Removes a directory tree (index creation failure, vx_store's trash). */
static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)ftw;
    return (flag == FTW_DP ? rmdir(path) : unlink(path)) == 0 || errno == ENOENT ? 0 : -1;
}
int vx_index_remove_dir(const char *dir)
{
    if (nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS) != 0 && errno != ENOENT)
        return -errno;
    return 0;
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) == 0 ? 0 : -errno;
    close(fd);
    return rc;
}

/* ================================================================ state */

typedef struct vx_ns {
    uint64_t hash;
    char *name;
    uint32_t *slots;        /* the namespace's slots, unordered */
    uint32_t n, cap;
    uint32_t *cslots;       /* compaction: the new slots being built */
    uint32_t cn;
} vx_ns;

typedef struct rec {
    uint64_t hash;
    uint32_t slot;
    uint32_t ns_pos;        /* position in ns->slots */
    vx_ns *ns;              /* NULL = no namespace */
    json_t *md;             /* NULL = no metadata */
    uint32_t md_mem;        /* json_mem(md) */
    uint8_t idlen;
    uint8_t level;          /* skip-list levels (next[0..level)) */
    struct rec *next[];     /* then the id bytes, NUL-terminated */
} rec;

static inline char *rec_id(const rec *r) { return (char *)&r->next[r->level]; }
static inline size_t rec_size(const rec *r)
{
    return sizeof *r + r->level * sizeof(rec *) + r->idlen + 1u;
}

/* Open-addressing map of pointers whose first member is their hash. */
typedef struct pmap {
    void **e;
    size_t cap, n; /* cap a power of two (or 0) */
} pmap;

typedef bool (*pmap_eq)(const void *p, const char *key, size_t len);

static bool rec_eq(const void *p, const char *key, size_t len)
{
    const rec *r = p;
    return r->idlen == len && memcmp(rec_id(r), key, len) == 0;
}
static bool ns_eq(const void *p, const char *key, size_t len)
{
    const vx_ns *s = p;
    return strlen(s->name) == len && memcmp(s->name, key, len) == 0;
}

static void *pmap_get(const pmap *m, const char *key, size_t len, pmap_eq eq)
{
    if (!m->cap)
        return NULL;
    uint64_t h = hash_bytes(key, len);
    for (size_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        void *p = m->e[i];
        if (!p)
            return NULL;
        if (*(const uint64_t *)p == h && eq(p, key, len))
            return p;
    }
}

static int pmap_put(pmap *m, void *p) /* p's key is not in m */
{
    if ((m->n + 1) * 4 > m->cap * 3) {
        size_t cap = m->cap ? m->cap * 2 : 64;
        void **e = calloc(cap, sizeof *e);
        if (!e)
            return -ENOMEM;
        for (size_t i = 0; i < m->cap; i++) {
            if (!m->e[i])
                continue;
            size_t j = *(uint64_t *)m->e[i] & (cap - 1);
            while (e[j])
                j = (j + 1) & (cap - 1);
            e[j] = m->e[i];
        }
        free(m->e);
        m->e = e;
        m->cap = cap;
    }
    size_t j = *(uint64_t *)p & (m->cap - 1);
    while (m->e[j])
        j = (j + 1) & (m->cap - 1);
    m->e[j] = p;
    m->n++;
    return 0;
}

static void pmap_del(pmap *m, const void *p)
{
    if (!m->cap)
        return;
    size_t mask = m->cap - 1, i = *(const uint64_t *)p & mask;
    while (m->e[i] && m->e[i] != p)
        i = (i + 1) & mask;
    if (!m->e[i])
        return;
    /* Backward-shift deletion keeps probe chains without tombstones. */
    size_t j = i;
    for (;;) {
        m->e[i] = NULL;
        for (;;) {
            j = (j + 1) & mask;
            if (!m->e[j]) {
                m->n--;
                return;
            }
            size_t home = *(uint64_t *)m->e[j] & mask;
            /* move e[j] into the hole i unless its home lies in (i, j] */
            if (i <= j ? (home <= i || home > j) : (home <= i && home > j))
                break;
        }
        m->e[i] = m->e[j];
        i = j;
    }
}

/* Everything indexed by slot (see the file comment). */
typedef struct gen {
    vx_hnsw *g;
    vx_meta *meta;
    rec **slot_rec;     /* (cap) */
    uint64_t *visible;  /* (cap / 64) published, live slots */
    uint32_t cap;       /* slots the arrays hold, a multiple of 64 */
    uint32_t nvisible;
} gen;

typedef struct pend {
    struct pend *next;
    uint64_t id;
    int64_t ms;
    uint8_t type;
    uint8_t *payload;
    size_t len;
} pend;

typedef struct sbuf { /* a pooled query scratch bitmap */
    struct sbuf *next;
    uint64_t *w;
    size_t nw;
} sbuf;

struct vx_index {
    char *dir;
    vx_index_config cfg;
    vx_index_opts opts;
    atomic_int refs;
    vx_wal *wal;

    pthread_rwlock_t rw; /* the state below, up to 'mu' */
    gen cur;
    pmap ids, nss;
    rec *head[SKIP_MAX]; /* skip list heads */
    uint64_t nrec;
    size_t rec_bytes;    /* records + documents */
    vx_meta_def defs[VX_META_MAX_INDEXES];
    size_t ndefs;
    uint64_t state_id;   /* last mutation published */
    int64_t state_ms;
    uint64_t rng;        /* skip-list levels (apply thread) */

    pthread_mutex_t mu;  /* the queue and the write side */
    pthread_cond_t cv_work, cv_done;
    pend *qhead, *qtail;
    size_t qbytes;
    uint64_t applied_id;
    int64_t applied_ms;
    bool stop, failed;
    char fail_msg[256];
    vx_meta_def ldefs[VX_META_MAX_INDEXES]; /* applied + pending defs */
    size_t nldefs;
    pthread_t th;
    bool th_started;

    /* apply-thread bookkeeping */
    uint64_t since_snap_bytes, since_snap_muts, since_snap_vecs;
    uint32_t unrepaired;
    atomic_uint_fast64_t compactions;
    atomic_uint_fast64_t snapshot_id;

    double open_ms;
    uint64_t replayed;
    bool replaying;
    char replay_err[256];

    pthread_mutex_t pool_mu;
    sbuf *pool;
    char *remove_dir; /* vx_index_remove_on_close */
};

/* --- generation ----------------------------------------------------------- */

static void gen_free(gen *g)
{
    vx_hnsw_free(g->g);
    vx_meta_free(g->meta);
    free(g->slot_rec);
    free(g->visible);
    memset(g, 0, sizeof *g);
}

/* Grows g's arrays to hold slot `need - 1`. Caller holds x->rw exclusively
 * (or the state is private). */
static int gen_reserve(gen *g, uint64_t need)
{
    if (need <= g->cap)
        return 0;
    uint64_t cap = g->cap ? g->cap : 64;
    while (cap < need)
        cap *= 2;
    if (cap > (1ull << 31))
        return -ENOMEM;
    rec **sr = realloc(g->slot_rec, cap * sizeof *sr);
    if (!sr)
        return -ENOMEM;
    memset(sr + g->cap, 0, (cap - g->cap) * sizeof *sr);
    g->slot_rec = sr;
    uint64_t *vb = realloc(g->visible, cap / 8);
    if (!vb)
        return -ENOMEM;
    memset(vb + g->cap / 64, 0, (cap - g->cap) / 8);
    g->visible = vb;
    if (vx_meta_grow(g->meta, cap) != 0)
        return -ENOMEM;
    g->cap = (uint32_t)cap;
    return 0;
}

static int gen_init(gen *g, const vx_index_config *c)
{
    memset(g, 0, sizeof *g);
    if (vx_hnsw_create(c->dimensions, c->metric, &c->hnsw, &g->g) != VX_HNSW_OK)
        return -EINVAL;
    g->meta = vx_meta_new(0);
    if (!g->meta || gen_reserve(g, 64) != 0) {
        gen_free(g);
        return -ENOMEM;
    }
    return 0;
}

/* --- records, namespaces, skip list --------------------------------------- */

static uint32_t draw_level(vx_index *x)
{
    uint32_t l = 1;
    while (l < SKIP_MAX) {
        x->rng ^= x->rng << 13;
        x->rng ^= x->rng >> 7;
        x->rng ^= x->rng << 17;
        if ((x->rng & 3) != 0)
            break;
        l++;
    }
    return l;
}

/* Fills upd[l] with the last record before key at level l (NULL = head). */
static void skip_find(vx_index *x, const char *key, size_t len, rec **upd)
{
    rec *prev = NULL;
    for (int l = SKIP_MAX - 1; l >= 0; l--) {
        rec *nx = prev ? prev->next[l] : x->head[l];
        while (nx && bytes_cmp(rec_id(nx), nx->idlen, key, len) < 0) {
            prev = nx;
            nx = nx->next[l];
        }
        upd[l] = prev;
    }
}

static void skip_insert(vx_index *x, rec *r)
{
    rec *upd[SKIP_MAX];
    skip_find(x, rec_id(r), r->idlen, upd);
    for (uint32_t l = 0; l < r->level; l++) {
        rec **link = upd[l] ? &upd[l]->next[l] : &x->head[l];
        r->next[l] = *link;
        *link = r;
    }
}

static void skip_remove(vx_index *x, rec *r)
{
    rec *upd[SKIP_MAX];
    skip_find(x, rec_id(r), r->idlen, upd);
    for (uint32_t l = 0; l < r->level; l++) {
        rec **link = upd[l] ? &upd[l]->next[l] : &x->head[l];
        if (*link == r)
            *link = r->next[l];
    }
}

static rec *rec_new(vx_index *x, const char *id, size_t idlen)
{
    uint32_t level = draw_level(x);
    rec *r = calloc(1, sizeof *r + level * sizeof(rec *) + idlen + 1);
    if (!r)
        return NULL;
    r->level = (uint8_t)level;
    r->idlen = (uint8_t)idlen;
    memcpy(rec_id(r), id, idlen);
    r->hash = hash_bytes(id, idlen);
    return r;
}

static void ns_free(vx_ns *s)
{
    if (!s)
        return;
    free(s->name);
    free(s->slots);
    free(s->cslots);
    free(s);
}

/* Puts r (whose slot is set) into namespace name; caller holds rw. */
static int ns_add(vx_index *x, rec *r, const char *name, size_t len)
{
    r->ns = NULL;
    if (len == 0)
        return 0;
    vx_ns *s = pmap_get(&x->nss, name, len, ns_eq);
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s || !(s->name = strndup(name, len))) {
            free(s);
            return -ENOMEM;
        }
        s->hash = hash_bytes(name, len);
        if (pmap_put(&x->nss, s) != 0) {
            ns_free(s);
            return -ENOMEM;
        }
    }
    if (s->n == s->cap) {
        uint32_t cap = s->cap ? s->cap * 2 : 8;
        uint32_t *p = realloc(s->slots, cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        s->slots = p;
        s->cap = cap;
    }
    r->ns = s;
    r->ns_pos = s->n;
    s->slots[s->n++] = r->slot;
    return 0;
}

static void ns_remove(vx_index *x, rec *r)
{
    vx_ns *s = r->ns;
    if (!s)
        return;
    uint32_t last = s->slots[--s->n];
    if (r->ns_pos < s->n) {
        s->slots[r->ns_pos] = last;
        x->cur.slot_rec[last]->ns_pos = r->ns_pos;
    }
    r->ns = NULL;
    if (s->n == 0) {
        pmap_del(&x->nss, s);
        ns_free(s);
    }
}

/* Unpublishes r's current slot (tombstoned in the graph). Caller holds rw
 * exclusively. */
static void slot_retire(vx_index *x, rec *r)
{
    gen *g = &x->cur;
    uint32_t s = r->slot;
    ns_remove(x, r);
    g->slot_rec[s] = NULL;
    if (bget(g->visible, s)) {
        bclr(g->visible, s);
        g->nvisible--;
    }
    vx_meta_clear(g->meta, s);
    vx_hnsw_delete(g->g, s);
    x->unrepaired++;
}

static void rec_free_all(vx_index *x)
{
    rec *r = x->head[0];
    while (r) {
        rec *nx = r->next[0];
        json_decref(r->md);
        free(r);
        r = nx;
    }
    memset(x->head, 0, sizeof x->head);
    for (size_t i = 0; i < x->nss.cap; i++)
        ns_free(x->nss.e[i]);
    free(x->nss.e);
    free(x->ids.e);
    memset(&x->nss, 0, sizeof x->nss);
    memset(&x->ids, 0, sizeof x->ids);
    x->nrec = 0;
    x->rec_bytes = 0;
}

static const json_t *doc_of_slot(void *ctx, size_t slot)
{
    const gen *g = ctx;
    return slot < g->cap && g->slot_rec[slot] ? g->slot_rec[slot]->md : NULL;
}

/* ================================================================ codec */

typedef struct dvec { /* one decoded vector of an insert/upsert payload */
    const char *id, *ns, *md;
    uint32_t idlen, nslen, mdlen;
    const uint8_t *vals; /* dim little-endian f32 */
} dvec;

static bool no_nul(const char *s, size_t n) { return memchr(s, 0, n) == NULL; }

/* Decodes an insert/upsert payload; *out (malloc) gets the vectors. */
static int decode_vectors(const uint8_t *p, size_t len, uint32_t dim, dvec **out, uint32_t *nout,
                          char *err, size_t errlen)
{
    rbuf r = {p, len, 0, false};
    uint32_t d = rb_u32(&r), n = rb_u32(&r);
    if (r.bad || d != dim || n == 0 || n > VX_INDEX_BATCH_MAX) {
        pl_errf(err, errlen, "vector record: bad header (dim %" PRIu32 ", %" PRIu32 " vectors)", d,
               n);
        return -EBADMSG;
    }
    dvec *v = calloc(n, sizeof *v);
    if (!v)
        return -ENOMEM;
    for (uint32_t i = 0; i < n; i++) {
        v[i].idlen = rb_u8(&r);
        v[i].id = (const char *)rb_take(&r, v[i].idlen);
        v[i].nslen = rb_u8(&r);
        v[i].ns = (const char *)rb_take(&r, v[i].nslen);
        v[i].mdlen = rb_u32(&r);
        v[i].md = v[i].mdlen <= VX_INDEX_METADATA_MAX ? (const char *)rb_take(&r, v[i].mdlen)
                                                       : NULL;
        v[i].vals = rb_take(&r, (size_t)dim * 4);
        if (r.bad || v[i].idlen == 0 || v[i].idlen > VX_INDEX_ID_MAX ||
            v[i].nslen > VX_INDEX_NAMESPACE_MAX || v[i].mdlen > VX_INDEX_METADATA_MAX ||
            !no_nul(v[i].id, v[i].idlen) || !no_nul(v[i].ns, v[i].nslen)) {
            pl_errf(err, errlen, "vector record: vector %" PRIu32 " is malformed", i);
            free(v);
            return -EBADMSG;
        }
        for (uint32_t k = 0; k < dim; k++) {
            float f;
            memcpy(&f, v[i].vals + 4 * (size_t)k, 4);
            if (!isfinite(f)) {
                pl_errf(err, errlen, "vector record: vector %" PRIu32 " has a non-finite value", i);
                free(v);
                return -EBADMSG;
            }
        }
    }
    if (r.off != len) {
        pl_errf(err, errlen, "vector record: %zu trailing bytes", len - r.off);
        free(v);
        return -EBADMSG;
    }
    *out = v;
    *nout = n;
    return 0;
}

static json_t *parse_md(const char *s, size_t n)
{
    if (n == 0)
        return NULL;
    json_t *j = json_loadb(s, n, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, NULL);
    if (j && !json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

/* ================================================================ apply */

static int apply_vectors(vx_index *x, bool upsert, const uint8_t *p, size_t len, char *err,
                         size_t errlen)
{
    const uint32_t dim = x->cfg.dimensions;
    dvec *v = NULL;
    uint32_t n = 0;
    int rc = decode_vectors(p, len, dim, &v, &n, err, errlen);
    if (rc)
        return rc;
    x->since_snap_vecs += n; /* replay cost of the tail: see maybe_snapshot */
    /* Duplicates in the batch: upsert keeps the last, insert the first. A
     * small open-addressing table of batch positions. */
    size_t tcap = 16;
    while (tcap < 2 * (size_t)n)
        tcap *= 2;
    int32_t *tab = malloc(tcap * sizeof *tab);
    uint32_t *keep = malloc(n * sizeof *keep), *slots = malloc(n * sizeof *slots);
    json_t **mds = calloc(n, sizeof *mds);
    float *row = malloc(dim * sizeof *row);
    if (!tab || !keep || !slots || !mds || !row) {
        rc = -ENOMEM;
        goto out;
    }
    memset(tab, 0xff, tcap * sizeof *tab);
    uint32_t nk = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t k = upsert ? n - 1 - i : i;
        size_t h = hash_bytes(v[k].id, v[k].idlen) & (tcap - 1);
        bool dup = false;
        while (tab[h] >= 0) {
            const dvec *o = &v[tab[h]];
            if (o->idlen == v[k].idlen && memcmp(o->id, v[k].id, o->idlen) == 0) {
                dup = true;
                break;
            }
            h = (h + 1) & (tcap - 1);
        }
        if (dup)
            continue;
        tab[h] = (int32_t)k;
        if (!upsert && pmap_get(&x->ids, v[k].id, v[k].idlen, rec_eq))
            continue; /* insert keeps the stored vector */
        keep[nk++] = k;
    }
    /* Parse documents and insert rows into the graph, unpublished. */
    for (uint32_t i = 0; i < nk; i++) {
        const dvec *d = &v[keep[i]];
        if (d->mdlen) {
            mds[i] = parse_md(d->md, d->mdlen);
            if (!mds[i]) {
                pl_errf(err, errlen, "vector record: metadata of '%.*s' is not a JSON object",
                       (int)d->idlen, d->id);
                rc = -EBADMSG;
                goto out;
            }
        }
    }
    for (uint32_t i = 0; i < nk; i++) {
        memcpy(row, v[keep[i]].vals, dim * sizeof *row);
        int hr = vx_hnsw_insert(x->cur.g, row, &slots[i]);
        if (hr != VX_HNSW_OK) {
            pl_errf(err, errlen, "graph insert failed (%d)", hr);
            rc = hr == VX_HNSW_ENOMEM ? -ENOMEM : -EIO;
            goto out;
        }
    }
    /* Publish. */
    pthread_rwlock_wrlock(&x->rw);
    gen *g = &x->cur;
    if (nk && gen_reserve(g, (uint64_t)slots[nk - 1] + 1) != 0) {
        pthread_rwlock_unlock(&x->rw);
        rc = -ENOMEM;
        pl_errf(err, errlen, "out of memory");
        goto out;
    }
    for (uint32_t i = 0; i < nk; i++) {
        const dvec *d = &v[keep[i]];
        rec *r = pmap_get(&x->ids, d->id, d->idlen, rec_eq);
        if (r) {
            slot_retire(x, r);
            x->rec_bytes -= r->md_mem;
            json_decref(r->md);
            r->md = NULL;
        } else {
            r = rec_new(x, d->id, d->idlen);
            if (!r || pmap_put(&x->ids, r) != 0) {
                free(r);
                rc = -ENOMEM;
                break;
            }
            skip_insert(x, r);
            x->nrec++;
            x->rec_bytes += rec_size(r);
        }
        uint32_t s = slots[i];
        r->slot = s;
        r->md = mds[i];
        mds[i] = NULL;
        r->md_mem = (uint32_t)json_mem(r->md);
        x->rec_bytes += r->md_mem;
        g->slot_rec[s] = r;
        bset(g->visible, s);
        g->nvisible++;
        if (vx_meta_set(g->meta, s, r->md) != 0 || ns_add(x, r, d->ns, d->nslen) != 0) {
            rc = -ENOMEM;
            break;
        }
    }
    pthread_rwlock_unlock(&x->rw);
    if (rc)
        pl_errf(err, errlen, "out of memory");
out:
    if (mds)
        for (uint32_t i = 0; i < n; i++)
            json_decref(mds[i]);
    free(mds);
    free(row);
    free(slots);
    free(keep);
    free(tab);
    free(v);
    return rc;
}

static int apply_delete(vx_index *x, const uint8_t *p, size_t len, char *err, size_t errlen)
{
    rbuf r = {p, len, 0, false};
    uint32_t n = rb_u32(&r);
    if (r.bad || n == 0 || n > VX_INDEX_IDS_MAX) {
        pl_errf(err, errlen, "delete record: bad count");
        return -EBADMSG;
    }
    /* Validate the whole payload before changing anything. */
    size_t start = r.off;
    for (uint32_t i = 0; i < n; i++) {
        uint8_t l = rb_u8(&r);
        const char *id = (const char *)rb_take(&r, l);
        if (r.bad || l == 0 || l > VX_INDEX_ID_MAX || !no_nul(id, l)) {
            pl_errf(err, errlen, "delete record: id %" PRIu32 " is malformed", i);
            return -EBADMSG;
        }
    }
    if (r.off != len) {
        pl_errf(err, errlen, "delete record: trailing bytes");
        return -EBADMSG;
    }
    r.off = start;
    pthread_rwlock_wrlock(&x->rw);
    for (uint32_t i = 0; i < n; i++) {
        uint8_t l = rb_u8(&r);
        const char *id = (const char *)rb_take(&r, l);
        rec *e = pmap_get(&x->ids, id, l, rec_eq);
        if (!e)
            continue;
        slot_retire(x, e);
        pmap_del(&x->ids, e);
        skip_remove(x, e);
        x->nrec--;
        x->rec_bytes -= rec_size(e) + e->md_mem;
        json_decref(e->md);
        free(e);
    }
    pthread_rwlock_unlock(&x->rw);
    return 0;
}

static int decode_prop(rbuf *r, char *out, size_t cap)
{
    uint16_t l = rb_u16(r);
    const char *s = (const char *)rb_take(r, l);
    if (r->bad || l == 0 || l >= cap || !no_nul(s, l))
        return -1;
    memcpy(out, s, l);
    out[l] = '\0';
    return 0;
}

static long def_find(const vx_meta_def *d, size_t n, const char *prop)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(d[i].property, prop) == 0)
            return (long)i;
    return -1;
}

static int apply_meta(vx_index *x, bool create, const uint8_t *p, size_t len, char *err,
                      size_t errlen)
{
    rbuf r = {p, len, 0, false};
    vx_meta_def d;
    memset(&d, 0, sizeof d);
    uint8_t type = create ? rb_u8(&r) : 0;
    if ((create && type > VX_META_BOOLEAN) || decode_prop(&r, d.property, sizeof d.property) ||
        r.off != len) {
        pl_errf(err, errlen, "metadata-index record is malformed");
        return -EBADMSG;
    }
    d.type = (vx_meta_type)type;
    char e2[256];
    if (create) {
        /* A create the call-time checks let through always applies; one that
         * cannot (a log written by something else) is logged and skipped,
         * which is what a replica replaying it does too. */
        if (vx_meta_add_index(x->cur.meta, d.property, d.type, e2, sizeof e2) != 0) {
            PL_LOG_WARN("vx_index.meta_create_skipped", "dir", x->dir, "property", d.property,
                        "reason", e2);
            return 0;
        }
        if (vx_meta_backfill(x->cur.meta, d.property, doc_of_slot, &x->cur, e2, sizeof e2) != 0)
            PL_LOG_WARN("vx_index.meta_backfill_failed", "dir", x->dir, "property", d.property,
                        "reason", e2);
        pthread_rwlock_wrlock(&x->rw);
        x->defs[x->ndefs++] = d;
        pthread_rwlock_unlock(&x->rw);
    } else {
        if (vx_meta_drop_index(x->cur.meta, d.property, e2, sizeof e2) != 0)
            return 0;
        pthread_rwlock_wrlock(&x->rw);
        long i = def_find(x->defs, x->ndefs, d.property);
        if (i >= 0) {
            memmove(&x->defs[i], &x->defs[i + 1], (x->ndefs - (size_t)i - 1) * sizeof d);
            x->ndefs--;
        }
        pthread_rwlock_unlock(&x->rw);
    }
    return 0;
}

static int compact(vx_index *x);

/* Applies one logged mutation (apply thread, or replay at open). */
static int apply_record(vx_index *x, uint8_t type, const uint8_t *p, size_t len, uint64_t id,
                        int64_t ms, char *err, size_t errlen)
{
    int rc;
    switch (type) {
    case VX_WAL_INSERT: rc = apply_vectors(x, false, p, len, err, errlen); break;
    case VX_WAL_UPSERT: rc = apply_vectors(x, true, p, len, err, errlen); break;
    case VX_WAL_DELETE: rc = apply_delete(x, p, len, err, errlen); break;
    case VX_WAL_METADATA_INDEX_CREATE: rc = apply_meta(x, true, p, len, err, errlen); break;
    case VX_WAL_METADATA_INDEX_DELETE: rc = apply_meta(x, false, p, len, err, errlen); break;
    default:
        pl_errf(err, errlen, "unknown record type %u", (unsigned)type);
        rc = -EBADMSG;
    }
    if (rc)
        return rc;
    pthread_rwlock_wrlock(&x->rw);
    x->state_id = id;
    x->state_ms = ms;
    pthread_rwlock_unlock(&x->rw);
    x->since_snap_bytes += len;
    x->since_snap_muts++;
    /* Graph upkeep: rebuild once tombstones pass the compact threshold
     * (and number at least 32, so a tiny index is not rebuilt on every
     * update), else reconnect around tombstones every so often. */
    if (vx_hnsw_deleted(x->cur.g) >= 32 && vx_hnsw_needs_compact(x->cur.g)) {
        rc = compact(x);
        if (rc)
            pl_errf(err, errlen, "compaction failed: %s", strerror(-rc));
        return rc;
    }
    uint32_t count = vx_hnsw_count(x->cur.g);
    if (x->unrepaired > 256 && x->unrepaired > count / 50) {
        if (vx_hnsw_repair(x->cur.g) == VX_HNSW_OK)
            x->unrepaired = 0;
    }
    return 0;
}

/* ================================================================ compaction */

/* Rebuilds the graph and every slot-indexed structure from the live
 * records (apply thread): queries keep the old generation until the swap
 * under the exclusive lock. */
static int compact(vx_index *x)
{
    const uint32_t dim = x->cfg.dimensions;
    gen ng;
    memset(&ng, 0, sizeof ng);
    uint64_t n = x->nrec;
    uint32_t *newslot = malloc((n ? n : 1) * sizeof *newslot);
    uint32_t *newpos = malloc((n ? n : 1) * sizeof *newpos);
    float *row = malloc(dim * sizeof *row);
    int rc = -ENOMEM;
    if (!newslot || !newpos || !row)
        goto fail;
    if (vx_hnsw_create(dim, x->cfg.metric, &x->cfg.hnsw, &ng.g) != VX_HNSW_OK)
        goto fail;
    ng.meta = vx_meta_new(0);
    if (!ng.meta || gen_reserve(&ng, n + n / 4 + 64) != 0)
        goto fail;
    for (size_t i = 0; i < x->nss.cap; i++) {
        vx_ns *s = x->nss.e[i];
        if (!s)
            continue;
        free(s->cslots);
        s->cslots = malloc(s->n * sizeof *s->cslots);
        s->cn = 0;
        if (!s->cslots)
            goto fail;
    }
    size_t i = 0;
    for (rec *r = x->head[0]; r; r = r->next[0], i++) {
        vx_hnsw_vector(x->cur.g, r->slot, row);
        uint32_t s;
        if (vx_hnsw_insert(ng.g, row, &s) != VX_HNSW_OK)
            goto fail;
        newslot[i] = s;
        ng.slot_rec[s] = r;
        bset(ng.visible, s);
        ng.nvisible++;
        if (vx_meta_set(ng.meta, s, r->md) != 0)
            goto fail;
        if (r->ns) {
            newpos[i] = r->ns->cn;
            r->ns->cslots[r->ns->cn++] = s;
        }
    }
    for (size_t d = 0; d < x->ndefs; d++) {
        if (vx_meta_add_index(ng.meta, x->defs[d].property, x->defs[d].type, NULL, 0) != 0 ||
            vx_meta_backfill(ng.meta, x->defs[d].property, doc_of_slot, &ng, NULL, 0) != 0)
            goto fail;
    }
    pthread_rwlock_wrlock(&x->rw);
    i = 0;
    for (rec *r = x->head[0]; r; r = r->next[0], i++) {
        r->slot = newslot[i];
        if (r->ns)
            r->ns_pos = newpos[i];
    }
    for (size_t k = 0; k < x->nss.cap; k++) {
        vx_ns *s = x->nss.e[k];
        if (!s)
            continue;
        free(s->slots);
        s->slots = s->cslots;
        s->cap = s->n;
        s->cslots = NULL;
    }
    gen old = x->cur;
    x->cur = ng;
    pthread_rwlock_unlock(&x->rw);
    gen_free(&old);
    x->unrepaired = 0;
    atomic_fetch_add(&x->compactions, 1);
    rc = 0;
    goto done;
fail:
    for (size_t k = 0; k < x->nss.cap; k++) {
        vx_ns *s = x->nss.e[k];
        if (s) {
            free(s->cslots);
            s->cslots = NULL;
        }
    }
    gen_free(&ng);
done:
    free(newslot);
    free(newpos);
    free(row);
    return rc;
}

/* ================================================================ snapshots */

typedef struct snap_w {
    vx_wal_snap *s;
    wbuf b;
    int rc;
} snap_w;

static void sw_flush(snap_w *w)
{
    if (w->b.oom && !w->rc)
        w->rc = -ENOMEM;
    if (!w->rc && w->b.n)
        w->rc = vx_wal_snapshot_write(w->s, w->b.p, w->b.n);
    w->b.n = 0;
}

static ssize_t sw_cookie_write(void *c, const char *buf, size_t len)
{
    snap_w *w = c;
    if (w->rc)
        return -1;
    w->rc = vx_wal_snapshot_write(w->s, buf, len);
    return w->rc ? -1 : (ssize_t)len;
}

/* Writes the state at x->state_id into a new snapshot (apply thread). */
static int snapshot(vx_index *x)
{
    vx_wal_snap *s = NULL;
    int rc = vx_wal_snapshot_begin(x->wal, x->state_id, &s);
    if (rc)
        return rc;
    snap_w w = {s, {0}, 0};
    const uint32_t dim = x->cfg.dimensions;
    wb_put(&w.b, SNAP_MAGIC, 8);
    wb_u32(&w.b, dim);
    wb_u32(&w.b, (uint32_t)x->cfg.metric);
    wb_u64(&w.b, x->state_id);
    wb_u64(&w.b, (uint64_t)x->state_ms);
    wb_u64(&w.b, x->nrec);
    wb_u32(&w.b, (uint32_t)x->ndefs);
    for (size_t i = 0; i < x->ndefs; i++) {
        size_t l = strlen(x->defs[i].property);
        wb_u8(&w.b, (uint8_t)x->defs[i].type);
        wb_u16(&w.b, (uint16_t)l);
        wb_put(&w.b, x->defs[i].property, l);
    }
    for (rec *r = x->head[0]; r && !w.rc; r = r->next[0]) {
        wb_u8(&w.b, r->idlen);
        wb_put(&w.b, rec_id(r), r->idlen);
        size_t nl = r->ns ? strlen(r->ns->name) : 0;
        wb_u8(&w.b, (uint8_t)nl);
        wb_put(&w.b, r->ns ? r->ns->name : "", nl);
        char *md = r->md ? json_dumps(r->md, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
        size_t ml = md ? strlen(md) : 0;
        if (r->md && !md)
            w.b.oom = true;
        wb_u32(&w.b, (uint32_t)ml);
        wb_put(&w.b, md, ml);
        free(md);
        wb_u32(&w.b, r->slot);
        if (w.b.n >= (1u << 20))
            sw_flush(&w);
    }
    sw_flush(&w);
    if (!w.rc) {
        cookie_io_functions_t io = {.write = sw_cookie_write};
        FILE *f = fopencookie(&w, "w", io);
        if (!f) {
            w.rc = -ENOMEM;
        } else {
            setvbuf(f, NULL, _IOFBF, 1u << 20);
            int hr = vx_hnsw_save(x->cur.g, f);
            if (fclose(f) != 0 || hr != VX_HNSW_OK) {
                if (!w.rc)
                    w.rc = -EIO;
            }
        }
    }
    free(w.b.p);
    if (w.rc) {
        vx_wal_snapshot_abort(s);
        return w.rc;
    }
    rc = vx_wal_snapshot_commit(s);
    if (rc == 0) {
        atomic_store(&x->snapshot_id, x->state_id);
        x->since_snap_bytes = 0;
        x->since_snap_muts = 0;
        x->since_snap_vecs = 0;
    }
    return rc;
}

/* Snapshot reading: a buffered reader over vx_wal_snap_read. */
typedef struct snap_r {
    vx_wal_snap_reader *r;
    uint8_t *buf;
    size_t pos, len;
    int rc;
} snap_r;

static int sr_fill(snap_r *s)
{
    if (s->pos < s->len)
        return 0;
    ssize_t n = vx_wal_snap_read(s->r, s->buf, 1u << 16);
    if (n < 0) {
        s->rc = (int)n;
        return -1;
    }
    s->pos = 0;
    s->len = (size_t)n;
    return n == 0 ? -1 : 0;
}

static int sr_read(snap_r *s, void *out, size_t n)
{
    uint8_t *o = out;
    while (n) {
        if (sr_fill(s) != 0) {
            if (!s->rc)
                s->rc = -EBADMSG;
            return -1;
        }
        size_t k = s->len - s->pos < n ? s->len - s->pos : n;
        memcpy(o, s->buf + s->pos, k);
        s->pos += k;
        o += k;
        n -= k;
    }
    return 0;
}

static ssize_t sr_cookie_read(void *c, char *buf, size_t cap)
{
    snap_r *s = c;
    if (sr_fill(s) != 0)
        return s->rc ? -1 : 0;
    size_t k = s->len - s->pos < cap ? s->len - s->pos : cap;
    memcpy(buf, s->buf + s->pos, k);
    s->pos += k;
    return (ssize_t)k;
}

typedef struct lrec { /* a snapshot record before the graph is known */
    char id[VX_INDEX_ID_MAX + 1];
    char ns[VX_INDEX_NAMESPACE_MAX + 1];
    uint8_t idlen, nslen;
    uint32_t slot;
    json_t *md;
} lrec;

static int on_snapshot(void *ctx, vx_wal_snap_reader *rd, uint64_t upto)
{
    vx_index *x = ctx;
    const uint32_t dim = x->cfg.dimensions;
    char *e = x->replay_err;
    const size_t el = sizeof x->replay_err;
    snap_r s = {rd, malloc(1u << 16), 0, 0, 0};
    lrec *lr = NULL;
    uint64_t nrec = 0;
    int rc = -EBADMSG;
    vx_hnsw *g = NULL;
    if (!s.buf)
        return -ENOMEM;
    uint8_t hdr[44]; /* magic 8, dim 4, metric 4, id 8, ms 8, records 8, defs 4 */
    if (sr_read(&s, hdr, sizeof hdr) || memcmp(hdr, SNAP_MAGIC, 8) != 0) {
        pl_errf(e, el, "snapshot %" PRIu64 ": bad header", upto);
        goto out;
    }
    uint32_t sdim, smetric, ndefs;
    uint64_t sid, sms;
    memcpy(&sdim, hdr + 8, 4);
    memcpy(&smetric, hdr + 12, 4);
    memcpy(&sid, hdr + 16, 8);
    memcpy(&sms, hdr + 24, 8);
    memcpy(&nrec, hdr + 32, 8);
    memcpy(&ndefs, hdr + 40, 4);
    /* Records are at least 10 bytes each: the count is bounded by the blob. */
    if (sdim != dim || smetric != (uint32_t)x->cfg.metric || sid != upto ||
        ndefs > VX_META_MAX_INDEXES || nrec > vx_wal_snap_size(rd) / 10) {
        pl_errf(e, el, "snapshot %" PRIu64 ": header does not match index.json", upto);
        goto out;
    }
    vx_meta_def defs[VX_META_MAX_INDEXES];
    memset(defs, 0, sizeof defs);
    for (uint32_t i = 0; i < ndefs; i++) {
        uint8_t t;
        uint16_t l;
        if (sr_read(&s, &t, 1) || sr_read(&s, &l, 2) || t > VX_META_BOOLEAN || l == 0 ||
            l >= sizeof defs[i].property || sr_read(&s, defs[i].property, l)) {
            pl_errf(e, el, "snapshot %" PRIu64 ": bad metadata-index definition", upto);
            goto out;
        }
        defs[i].type = (vx_meta_type)t;
    }
    lr = calloc(nrec ? nrec : 1, sizeof *lr);
    char *mdbuf = malloc(VX_INDEX_METADATA_MAX);
    if (!lr || !mdbuf) {
        free(mdbuf);
        rc = -ENOMEM;
        goto out;
    }
    for (uint64_t i = 0; i < nrec; i++) {
        lrec *L = &lr[i];
        uint32_t ml = 0;
        bool ok = !sr_read(&s, &L->idlen, 1) && L->idlen >= 1 && L->idlen <= VX_INDEX_ID_MAX &&
                  !sr_read(&s, L->id, L->idlen) && no_nul(L->id, L->idlen) &&
                  !sr_read(&s, &L->nslen, 1) && L->nslen <= VX_INDEX_NAMESPACE_MAX &&
                  !sr_read(&s, L->ns, L->nslen) && no_nul(L->ns, L->nslen) &&
                  !sr_read(&s, &ml, 4) && ml <= VX_INDEX_METADATA_MAX &&
                  !sr_read(&s, mdbuf, ml) && !sr_read(&s, &L->slot, 4);
        if (ok && ml) {
            L->md = parse_md(mdbuf, ml);
            ok = L->md != NULL;
        }
        if (!ok) {
            free(mdbuf);
            pl_errf(e, el, "snapshot %" PRIu64 ": record %" PRIu64 " is malformed", upto, i);
            goto out;
        }
    }
    free(mdbuf);
    cookie_io_functions_t io = {.read = sr_cookie_read};
    FILE *f = fopencookie(&s, "r", io);
    if (!f) {
        rc = -ENOMEM;
        goto out;
    }
    const char *why = NULL;
    int hr = vx_hnsw_load(f, &g, &why);
    bool trailing = hr == VX_HNSW_OK && fgetc(f) != EOF;
    fclose(f);
    if (hr != VX_HNSW_OK || trailing || vx_hnsw_dim(g) != dim ||
        vx_hnsw_metric(g) != x->cfg.metric) {
        pl_errf(e, el, "snapshot %" PRIu64 ": graph refused: %s", upto,
               why ? why : trailing ? "trailing bytes" : "dimension or metric differs");
        goto out;
    }
    uint32_t count = vx_hnsw_count(g);
    if (vx_hnsw_live(g) != nrec) {
        pl_errf(e, el, "snapshot %" PRIu64 ": %" PRIu64 " records but %u live graph slots", upto,
               nrec, vx_hnsw_live(g));
        goto out;
    }
    /* Build the state (x is still private to open). */
    gen ng;
    memset(&ng, 0, sizeof ng);
    ng.g = g;
    g = NULL;
    ng.meta = vx_meta_new(0);
    if (!ng.meta || gen_reserve(&ng, (uint64_t)count + 64) != 0) {
        gen_free(&ng);
        rc = -ENOMEM;
        goto out;
    }
    gen_free(&x->cur);
    rec_free_all(x);
    x->cur = ng;
    for (uint64_t i = 0; i < nrec; i++) {
        lrec *L = &lr[i];
        gen *G = &x->cur;
        if (L->slot >= count || vx_hnsw_is_deleted(G->g, L->slot) || G->slot_rec[L->slot] ||
            pmap_get(&x->ids, L->id, L->idlen, rec_eq)) {
            pl_errf(e, el, "snapshot %" PRIu64 ": record %" PRIu64 " has a bad or repeated slot "
                          "or id", upto, i);
            goto out;
        }
        rec *r = rec_new(x, L->id, L->idlen);
        if (!r || pmap_put(&x->ids, r) != 0) {
            free(r);
            rc = -ENOMEM;
            goto out;
        }
        skip_insert(x, r);
        x->nrec++;
        r->slot = L->slot;
        r->md = L->md;
        L->md = NULL;
        r->md_mem = (uint32_t)json_mem(r->md);
        x->rec_bytes += rec_size(r) + r->md_mem;
        G->slot_rec[r->slot] = r;
        bset(G->visible, r->slot);
        G->nvisible++;
        if (vx_meta_set(G->meta, r->slot, r->md) != 0 || ns_add(x, r, L->ns, L->nslen) != 0) {
            rc = -ENOMEM;
            goto out;
        }
    }
    for (uint32_t i = 0; i < ndefs; i++) {
        if (vx_meta_add_index(x->cur.meta, defs[i].property, defs[i].type, e, el) != 0) {
            goto out;
        }
        if (vx_meta_backfill(x->cur.meta, defs[i].property, doc_of_slot, &x->cur, e, el) != 0) {
            rc = -ENOMEM;
            goto out;
        }
        x->defs[x->ndefs++] = defs[i];
    }
    x->state_id = upto;
    x->state_ms = (int64_t)sms;
    x->unrepaired = vx_hnsw_deleted(x->cur.g);
    rc = 0;
out:
    if (rc && s.rc && s.rc != -EBADMSG)
        rc = s.rc;
    for (uint64_t i = 0; lr && i < nrec; i++)
        json_decref(lr[i].md);
    free(lr);
    free(s.buf);
    vx_hnsw_free(g);
    return rc;
}

static int on_record(void *ctx, const vx_wal_rec *wr)
{
    vx_index *x = ctx;
    char e[200];
    e[0] = '\0';
    int rc = apply_record(x, wr->type, wr->payload, wr->len, wr->id, wr->ms, e, sizeof e);
    if (rc) {
        pl_errf(x->replay_err, sizeof x->replay_err, "log record %" PRIu64 ": %s", wr->id, e);
        return rc;
    }
    x->replayed++;
    return 0;
}

/* ================================================================ config */

void vx_index_opts_init(vx_index_opts *o)
{
    memset(o, 0, sizeof *o);
    o->fsync = true;
}

static bool name_ok(const char *n)
{
    size_t l = strnlen(n, VX_INDEX_NAME_MAX + 1);
    if (l == 0 || l > VX_INDEX_NAME_MAX || n[0] < 'a' || n[0] > 'z')
        return false;
    for (size_t i = 0; i < l; i++)
        if (!((n[i] >= 'a' && n[i] <= 'z') || (n[i] >= '0' && n[i] <= '9') || n[i] == '-'))
            return false;
    return true;
}

int vx_index_config_check(const vx_index_config *c, uint32_t max_dim, char *err, size_t errlen)
{
    if (!max_dim)
        max_dim = VX_INDEX_DIM_MAX_DEFAULT;
    if (!c) {
        pl_errf(err, errlen, "no config");
        return -EINVAL;
    }
    if (!name_ok(c->name)) {
        pl_errf(err, errlen, "index name must be 1..%d bytes of a-z, 0-9 and '-', starting with "
                            "a letter", VX_INDEX_NAME_MAX);
        return -EINVAL;
    }
    if (c->dimensions < 1 || c->dimensions > max_dim) {
        pl_errf(err, errlen, "dimensions must be 1..%" PRIu32 " (max_dimensions), got %" PRIu32,
               max_dim, c->dimensions);
        return -EINVAL;
    }
    if ((unsigned)c->metric > VX_DOT) {
        pl_errf(err, errlen, "metric must be cosine, euclidean or dot-product");
        return -EINVAL;
    }
    if (c->description && strlen(c->description) > VX_INDEX_DESCRIPTION_MAX) {
        pl_errf(err, errlen, "description is longer than %d bytes", VX_INDEX_DESCRIPTION_MAX);
        return -EINVAL;
    }
    if ((c->preset && strlen(c->preset) > PRESET_MAX) ||
        (c->embed_model && strlen(c->embed_model) > PRESET_MAX)) {
        pl_errf(err, errlen, "preset and embedding model names are at most %d bytes", PRESET_MAX);
        return -EINVAL;
    }
    vx_hnsw *g = NULL;
    if (vx_hnsw_create(c->dimensions, c->metric, &c->hnsw, &g) != VX_HNSW_OK) {
        pl_errf(err, errlen, "graph parameters out of range (M 2..128, ef and factors > 0, "
                            "fractions in (0, 1])");
        return -EINVAL;
    }
    vx_hnsw_free(g);
    return 0;
}

void vx_index_config_free(vx_index_config *c)
{
    if (!c)
        return;
    free(c->description);
    free(c->preset);
    free(c->embed_model);
    c->description = c->preset = c->embed_model = NULL;
}

static int config_copy(vx_index_config *dst, const vx_index_config *src)
{
    *dst = *src;
    dst->description = src->description ? strdup(src->description) : NULL;
    dst->preset = src->preset ? strdup(src->preset) : NULL;
    dst->embed_model = src->embed_model ? strdup(src->embed_model) : NULL;
    if ((src->description && !dst->description) || (src->preset && !dst->preset) ||
        (src->embed_model && !dst->embed_model)) {
        vx_index_config_free(dst);
        return -ENOMEM;
    }
    return 0;
}

static json_t *config_json(const vx_index_config *c)
{
    vx_hnsw_params p;
    vx_hnsw *g = NULL;
    if (vx_hnsw_create(c->dimensions, c->metric, &c->hnsw, &g) != VX_HNSW_OK)
        return NULL;
    vx_hnsw_get_params(g, &p); /* the resolved parameters, defaults filled */
    vx_hnsw_free(g);
    json_t *h = json_pack("{s:I,s:I,s:I,s:I,s:I,s:f,s:I,s:f,s:I}", "M", (json_int_t)p.M,
                          "ef_construction", (json_int_t)p.ef_construction, "ef_search",
                          (json_int_t)p.ef_search, "rerank_factor", (json_int_t)p.rerank_factor,
                          "filter_brute_per_k", (json_int_t)p.filter_brute_per_k,
                          "filter_brute_fraction", p.filter_brute_fraction, "filter_ef_max",
                          (json_int_t)p.filter_ef_max, "compact_fraction", p.compact_fraction,
                          "seed", (json_int_t)p.seed);
    json_t *j = json_pack("{s:i,s:s,s:I,s:s,s:I,s:I,s:o}", "format", CONFIG_FORMAT, "name",
                          c->name, "dimensions", (json_int_t)c->dimensions, "metric",
                          vx_metric_name(c->metric), "created_ms", (json_int_t)c->created_ms,
                          "modified_ms", (json_int_t)c->modified_ms, "hnsw", h);
    if (!j)
        return NULL;
    if (c->description)
        json_object_set_new(j, "description", json_string(c->description));
    if (c->preset)
        json_object_set_new(j, "preset", json_string(c->preset));
    if (c->embed_model)
        json_object_set_new(j, "embed_model", json_string(c->embed_model));
    return j;
}

static int get_uint(const json_t *o, const char *k, uint64_t max, uint64_t *out)
{
    const json_t *v = json_object_get(o, k);
    if (!json_is_integer(v) || json_integer_value(v) < 0 ||
        (uint64_t)json_integer_value(v) > max)
        return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static int opt_str(const json_t *o, const char *k, size_t max, char **out)
{
    const json_t *v = json_object_get(o, k);
    *out = NULL;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v) || json_string_length(v) > max ||
        strlen(json_string_value(v)) != json_string_length(v))
        return -1;
    *out = strdup(json_string_value(v));
    return *out ? 0 : -1;
}

/* Parses index.json; -EBADMSG with the reason in err. */
static int config_parse(const char *text, size_t len, vx_index_config *c, char *err,
                        size_t errlen)
{
    memset(c, 0, sizeof *c);
    json_error_t je;
    json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!j || !json_is_object(j)) {
        pl_errf(err, errlen, "index.json is not a JSON object: %s", j ? "" : je.text);
        json_decref(j);
        return -EBADMSG;
    }
    uint64_t fmt = 0, dim = 0, v;
    const json_t *name = json_object_get(j, "name");
    const json_t *metric = json_object_get(j, "metric");
    const json_t *h = json_object_get(j, "hnsw");
    int m = json_is_string(metric) ? vx_metric_parse(json_string_value(metric)) : -1;
    const char *bad = NULL;
    if (get_uint(j, "format", 1000, &fmt) || fmt != CONFIG_FORMAT)
        bad = "format";
    else if (!json_is_string(name) || json_string_length(name) > VX_INDEX_NAME_MAX ||
             !name_ok(json_string_value(name)))
        bad = "name";
    else if (get_uint(j, "dimensions", VX_HNSW_MAX_DIM, &dim) || dim == 0)
        bad = "dimensions";
    else if (m < 0)
        bad = "metric";
    else if (!json_is_object(h))
        bad = "hnsw";
    if (!bad) {
        snprintf(c->name, sizeof c->name, "%s", json_string_value(name));
        c->dimensions = (uint32_t)dim;
        c->metric = (vx_metric)m;
        const json_t *t = json_object_get(j, "created_ms");
        c->created_ms = json_is_integer(t) ? json_integer_value(t) : 0;
        t = json_object_get(j, "modified_ms");
        c->modified_ms = json_is_integer(t) ? json_integer_value(t) : 0;
        if (opt_str(j, "description", VX_INDEX_DESCRIPTION_MAX, &c->description))
            bad = "description";
        else if (opt_str(j, "preset", PRESET_MAX, &c->preset))
            bad = "preset";
        else if (opt_str(j, "embed_model", PRESET_MAX, &c->embed_model))
            bad = "embed_model";
    }
    if (!bad) {
        vx_hnsw_params *p = &c->hnsw;
        const json_t *bf = json_object_get(h, "filter_brute_fraction");
        const json_t *cf = json_object_get(h, "compact_fraction");
        const json_t *sd = json_object_get(h, "seed");
        if (get_uint(h, "M", 128, &v) || (p->M = (uint32_t)v, false) ||
            get_uint(h, "ef_construction", UINT32_MAX, &v) ||
            (p->ef_construction = (uint32_t)v, false) ||
            get_uint(h, "ef_search", UINT32_MAX, &v) || (p->ef_search = (uint32_t)v, false) ||
            get_uint(h, "rerank_factor", UINT32_MAX, &v) ||
            (p->rerank_factor = (uint32_t)v, false) ||
            get_uint(h, "filter_brute_per_k", UINT32_MAX, &v) ||
            (p->filter_brute_per_k = (uint32_t)v, false) ||
            get_uint(h, "filter_ef_max", UINT32_MAX, &v) ||
            (p->filter_ef_max = (uint32_t)v, false) || !json_is_number(bf) ||
            !json_is_number(cf) || !json_is_integer(sd))
            bad = "hnsw";
        else {
            p->filter_brute_fraction = json_number_value(bf);
            p->compact_fraction = json_number_value(cf);
            p->seed = (uint64_t)json_integer_value(sd);
            vx_hnsw *g = NULL;
            if (vx_hnsw_create(c->dimensions, c->metric, p, &g) != VX_HNSW_OK)
                bad = "hnsw";
            vx_hnsw_free(g);
        }
    }
    json_decref(j);
    if (bad) {
        pl_errf(err, errlen, "index.json: field '%s' is missing or invalid", bad);
        vx_index_config_free(c);
        return -EBADMSG;
    }
    return 0;
}

/* Writes dir/index.json durably: temp file, fsync, rename, directory fsync. */
static int config_write(const char *dir, const vx_index_config *c, bool do_fsync)
{
    json_t *j = config_json(c);
    char *text = j ? json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
    json_decref(j);
    if (!text)
        return -ENOMEM;
    char tmp[4096], path[4096];
    snprintf(tmp, sizeof tmp, "%s/index.json.tmp", dir);
    snprintf(path, sizeof path, "%s/index.json", dir);
    int rc = 0;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0) {
        free(text);
        return -errno;
    }
    size_t len = strlen(text), off = 0;
    while (off < len) {
        ssize_t w = write(fd, text + off, len - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            break;
        }
        off += (size_t)w;
    }
    if (!rc && write(fd, "\n", 1) != 1)
        rc = -EIO;
    if (!rc && do_fsync && fsync(fd) != 0)
        rc = -errno;
    close(fd);
    free(text);
    if (!rc && rename(tmp, path) != 0)
        rc = -errno;
    if (!rc && do_fsync)
        rc = fsync_dir(dir);
    if (rc)
        unlink(tmp);
    return rc;
}

/* ================================================================ lifecycle */

static void *apply_main(void *arg);

static void index_free(vx_index *x)
{
    if (!x)
        return;
    gen_free(&x->cur);
    rec_free_all(x);
    for (pend *p = x->qhead; p;) {
        pend *nx = p->next;
        free(p->payload);
        free(p);
        p = nx;
    }
    for (sbuf *b = x->pool; b;) {
        sbuf *nx = b->next;
        free(b->w);
        free(b);
        b = nx;
    }
    vx_index_config_free(&x->cfg);
    free(x->remove_dir);
    pthread_rwlock_destroy(&x->rw);
    pthread_mutex_destroy(&x->mu);
    pthread_mutex_destroy(&x->pool_mu);
    pthread_cond_destroy(&x->cv_work);
    pthread_cond_destroy(&x->cv_done);
    free(x->dir);
    free(x);
}

static vx_index *index_alloc(const char *dir, const vx_index_opts *o)
{
    vx_index *x = calloc(1, sizeof *x);
    if (!x)
        return NULL;
    x->dir = strdup(dir);
    if (o)
        x->opts = *o;
    else
        vx_index_opts_init(&x->opts);
    if (!x->opts.snapshot_every_bytes)
        x->opts.snapshot_every_bytes = 64u << 20;
    if (!x->opts.snapshot_every_mutations)
        x->opts.snapshot_every_mutations = 10000;
    if (!x->opts.write_timeout_ms)
        x->opts.write_timeout_ms = 30000;
    if (!x->opts.max_pending_bytes)
        x->opts.max_pending_bytes = VX_INDEX_MAX_PENDING_BYTES;
    atomic_init(&x->refs, 1);
    atomic_init(&x->compactions, 0);
    atomic_init(&x->snapshot_id, 0);
    x->rng = 0x9e3779b97f4a7c15ull;
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&x->rw, &ra);
    pthread_rwlockattr_destroy(&ra);
    pthread_mutex_init(&x->mu, NULL);
    pthread_mutex_init(&x->pool_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&x->cv_work, &ca);
    pthread_cond_init(&x->cv_done, &ca);
    pthread_condattr_destroy(&ca);
    if (!x->dir) {
        index_free(x);
        return NULL;
    }
    return x;
}

int vx_index_open(const char *dir, const vx_index_opts *o, vx_index **out, char *err,
                  size_t errlen)
{
    *out = NULL;
    uint64_t t0 = pl_time_mono_ns();
    char path[4096];
    snprintf(path, sizeof path, "%s/index.json", dir);
    char *text = NULL;
    size_t len = 0;
    int rc = pl_file_read_all(path, CONFIG_MAX_BYTES, &text, &len);
    if (rc) {
        pl_errf(err, errlen, "%s: %s", path, strerror(-rc));
        return rc == -ENOENT ? -ENOENT : -EIO;
    }
    vx_index *x = index_alloc(dir, o);
    if (!x) {
        free(text);
        return -ENOMEM;
    }
    rc = config_parse(text, len, &x->cfg, err, errlen);
    free(text);
    if (rc) {
        index_free(x);
        return rc;
    }
    rc = gen_init(&x->cur, &x->cfg);
    if (rc) {
        pl_errf(err, errlen, "cannot create the graph: %s", strerror(-rc));
        index_free(x);
        return rc;
    }
    char wdir[4096];
    snprintf(wdir, sizeof wdir, "%s/wal", dir);
    vx_wal_opts wo;
    vx_wal_opts_init(&wo, wdir);
    wo.fsync = x->opts.fsync;
    wo.max_record_bytes = VX_WAL_RECORD_HARD_MAX;
    wo.max_pending_bytes = VX_INDEX_MAX_PENDING_BYTES + VX_WAL_RECORD_HARD_MAX;
    vx_wal_replay cb = {on_snapshot, on_record, x};
    vx_wal_replay_stats st;
    char werr[256] = "";
    x->replaying = true;
    rc = vx_wal_open(&wo, &cb, &x->wal, &st, werr, sizeof werr);
    x->replaying = false;
    if (rc) {
        pl_errf(err, errlen, "%s: %s", dir, x->replay_err[0] ? x->replay_err : werr);
        index_free(x);
        return rc == -ENOMEM ? -ENOMEM : rc == -EBUSY ? -EBUSY : -EBADMSG;
    }
    atomic_store(&x->snapshot_id, st.snapshot_id);
    x->applied_id = x->state_id;
    x->applied_ms = x->state_ms;
    memcpy(x->ldefs, x->defs, sizeof x->defs);
    x->nldefs = x->ndefs;
    if (pthread_create(&x->th, NULL, apply_main, x) != 0) {
        vx_wal_close(x->wal);
        index_free(x);
        pl_errf(err, errlen, "cannot start the apply thread");
        return -ENOMEM;
    }
    x->th_started = true;
    x->open_ms = (double)(pl_time_mono_ns() - t0) / 1e6;
    *out = x;
    return 0;
}

int vx_index_create(const char *dir, const vx_index_config *c, const vx_index_opts *o,
                    vx_index **out, char *err, size_t errlen)
{
    *out = NULL;
    int rc = vx_index_config_check(c, VX_HNSW_MAX_DIM, err, errlen);
    if (rc)
        return rc;
    char parent[4096];
    snprintf(parent, sizeof parent, "%s", dir);
    char *slash = strrchr(parent, '/');
    if (slash && slash != parent) {
        *slash = '\0';
        rc = pl_file_mkdirs(parent);
        if (rc) {
            pl_errf(err, errlen, "mkdir %s: %s", parent, strerror(-rc));
            return -EIO;
        }
    }
    if (mkdir(dir, 0750) != 0) {
        rc = -errno;
        pl_errf(err, errlen, "mkdir %s: %s", dir, strerror(errno));
        return rc == -EEXIST ? -EEXIST : -EIO;
    }
    vx_index_config cc;
    rc = config_copy(&cc, c);
    if (!rc) {
        if (!cc.created_ms)
            cc.created_ms = pl_time_wall_ms();
        if (!cc.modified_ms)
            cc.modified_ms = cc.created_ms;
        rc = config_write(dir, &cc, !o || o->fsync);
        vx_index_config_free(&cc);
        if (rc)
            pl_errf(err, errlen, "writing %s/index.json: %s", dir, strerror(-rc));
    }
    if (!rc && (!o || o->fsync) && slash && slash != parent)
        fsync_dir(parent);
    if (!rc)
        rc = vx_index_open(dir, o, out, err, errlen);
    if (rc) {
        vx_index_remove_dir(dir);
        return rc == -ENOMEM ? rc : -EIO;
    }
    return 0;
}

void vx_index_ref(vx_index *x) { atomic_fetch_add(&x->refs, 1); }

void vx_index_unref(vx_index *x)
{
    if (!x || atomic_fetch_sub(&x->refs, 1) != 1)
        return;
    pthread_mutex_lock(&x->mu);
    x->stop = true;
    pthread_cond_broadcast(&x->cv_work);
    pthread_cond_broadcast(&x->cv_done);
    pthread_mutex_unlock(&x->mu);
    if (x->th_started)
        pthread_join(x->th, NULL);
    vx_wal_close(x->wal);
    char *rm = x->remove_dir;
    x->remove_dir = NULL;
    index_free(x);
    if (rm) {
        int rc = vx_index_remove_dir(rm);
        if (rc)
            PL_LOG_WARN("vx_index.remove_failed", "dir", rm, "error", strerror(-rc));
        free(rm);
    }
}

int vx_index_remove_on_close(vx_index *x, const char *dir)
{
    char *d = strdup(dir);
    if (!d)
        return -ENOMEM;
    pthread_mutex_lock(&x->mu);
    free(x->remove_dir);
    x->remove_dir = d;
    pthread_mutex_unlock(&x->mu);
    return 0;
}

const vx_index_config *vx_index_get_config(const vx_index *x) { return &x->cfg; }
const char *vx_index_dir(const vx_index *x) { return x->dir; }

/* ================================================================ apply thread */

static void fail_index(vx_index *x, const char *msg)
{
    pthread_mutex_lock(&x->mu);
    if (!x->failed) {
        x->failed = true;
        snprintf(x->fail_msg, sizeof x->fail_msg, "%s", msg);
    }
    pthread_cond_broadcast(&x->cv_done);
    pthread_mutex_unlock(&x->mu);
    PL_LOG_ERROR("vx_index.failed", "dir", x->dir, "reason", msg);
}

#define VX_SNAP_VECTORS 16384u

static void maybe_snapshot(vx_index *x)
{
    if (x->state_id == 0 || x->state_id <= atomic_load(&x->snapshot_id))
        return;
    /* Start-up replays the tail one graph insert at a time (about 0.4 ms a
     * vector at 384 dimensions), while a snapshot loads at about 7 us a
     * vector: so besides the byte and mutation thresholds, snapshot once
     * the tail holds VX_SNAP_VECTORS vectors or an eighth of the index,
     * whichever is more (bounding the replay to seconds without rewriting
     * a large index every few thousand vectors). */
    uint64_t live = vx_hnsw_live(x->cur.g);
    uint64_t vec_threshold = live / 8 > VX_SNAP_VECTORS ? live / 8 : VX_SNAP_VECTORS;
    if (x->since_snap_bytes < x->opts.snapshot_every_bytes &&
        x->since_snap_muts < x->opts.snapshot_every_mutations &&
        x->since_snap_vecs < vec_threshold)
        return;
    int rc = snapshot(x);
    if (rc && rc != -EBUSY) {
        char id[VX_WAL_ID_TEXT];
        vx_wal_id_text(x->state_id, id);
        PL_LOG_WARN("vx_index.snapshot_failed", "dir", x->dir, "upto", id, "error",
                    strerror(-rc));
        x->since_snap_muts = 0; /* retry after another interval, not every mutation */
        x->since_snap_bytes = 0;
        x->since_snap_vecs = 0;
    }
}

static void *apply_main(void *arg)
{
    vx_index *x = arg;
    maybe_snapshot(x); /* a long replayed tail */
    pthread_mutex_lock(&x->mu);
    for (;;) {
        while (!x->qhead && !x->stop)
            pthread_cond_wait(&x->cv_work, &x->mu);
        if (!x->qhead)
            break;
        pend *p = x->qhead;
        bool failed = x->failed;
        pthread_mutex_unlock(&x->mu);
        if (!failed) {
            char e[256] = "";
            int rc = vx_wal_wait(x->wal, p->id, -1);
            if (rc) {
                fail_index(x, "the log failed before a mutation was durable");
            } else {
                rc = apply_record(x, p->type, p->payload, p->len, p->id, p->ms, e, sizeof e);
                if (rc)
                    fail_index(x, e[0] ? e : "apply failed");
                else
                    maybe_snapshot(x);
            }
        }
        pthread_mutex_lock(&x->mu);
        x->qhead = p->next;
        if (!x->qhead)
            x->qtail = NULL;
        x->qbytes -= p->len;
        if (!x->failed) {
            x->applied_id = p->id;
            x->applied_ms = p->ms;
        }
        pthread_cond_broadcast(&x->cv_done);
        free(p->payload);
        free(p);
    }
    pthread_mutex_unlock(&x->mu);
    return NULL;
}

/* ================================================================ write path */

static void deadline_after(struct timespec *ts, int ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* Called under x->mu: with commit false before the append (may refuse),
 * with commit true once the append succeeded (records the effect). */
typedef int (*submit_check)(vx_index *x, const void *arg, bool commit, char *err, size_t errlen);

/* Logs one encoded mutation (taking ownership of payload), queues it for
 * the apply thread in id order and waits until it is durable. */
static int submit(vx_index *x, uint8_t type, uint8_t *payload, size_t len, submit_check check,
                  const void *arg, uint64_t *mutation_id, char *err, size_t errlen)
{
    pend *p = malloc(sizeof *p);
    if (!p) {
        free(payload);
        pl_errf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    struct timespec dl;
    deadline_after(&dl, x->opts.write_timeout_ms);
    int rc = 0;
    uint64_t id = 0;
    pthread_mutex_lock(&x->mu);
    for (;;) {
        if (x->failed) {
            pl_errf(err, errlen, "index failed: %s", x->fail_msg);
            rc = -EIO;
            break;
        }
        if (x->stop) {
            pl_errf(err, errlen, "index is closing");
            rc = -ESHUTDOWN;
            break;
        }
        if (x->qbytes && x->qbytes + len > x->opts.max_pending_bytes) {
            if (pthread_cond_timedwait(&x->cv_done, &x->mu, &dl) == ETIMEDOUT) {
                pl_errf(err, errlen,
                        "too many mutations waiting to be applied (over %" PRIu64
                        " bytes pending); retry later",
                        x->opts.max_pending_bytes);
                rc = -EAGAIN;
                break;
            }
            continue;
        }
        if (check && (rc = check(x, arg, false, err, errlen)) != 0)
            break;
        rc = vx_wal_append(x->wal, type, payload, len, &id);
        if (rc == 0 && check)
            check(x, arg, true, err, errlen);
        if (rc == -EAGAIN) { /* the log's own pending bound: let the committer catch up */
            pthread_mutex_unlock(&x->mu);
            struct timespec now, nap = {0, 1000000};
            nanosleep(&nap, NULL);
            clock_gettime(CLOCK_MONOTONIC, &now);
            pthread_mutex_lock(&x->mu);
            if (now.tv_sec > dl.tv_sec || (now.tv_sec == dl.tv_sec && now.tv_nsec >= dl.tv_nsec)) {
                pl_errf(err, errlen, "the log is backlogged; retry later");
                break;
            }
            continue;
        }
        if (rc == -E2BIG) {
            pl_errf(err, errlen, "the mutation encodes to %zu bytes, over the %u MiB record limit; "
                                "send fewer vectors per request", len, VX_WAL_RECORD_HARD_MAX >> 20);
            rc = -EINVAL;
            break;
        }
        if (rc) {
            pl_errf(err, errlen, "the log refused the mutation: %s", strerror(-rc));
            rc = rc == -ESHUTDOWN ? rc : -EIO;
            break;
        }
        break;
    }
    if (rc) {
        pthread_mutex_unlock(&x->mu);
        free(payload);
        free(p);
        return rc;
    }
    *p = (pend){NULL, id, pl_time_wall_ms(), type, payload, len};
    if (x->qtail)
        x->qtail->next = p;
    else
        x->qhead = p;
    x->qtail = p;
    x->qbytes += len;
    pthread_cond_signal(&x->cv_work);
    pthread_mutex_unlock(&x->mu);
    rc = vx_wal_wait(x->wal, id, -1);
    if (rc) {
        pl_errf(err, errlen, "the mutation could not be made durable: %s", strerror(-rc));
        return -EIO;
    }
    if (mutation_id)
        *mutation_id = id;
    return 0;
}

int vx_index_check_dimensions(const vx_index *x, size_t n, char *err, size_t errlen)
{
    if (n != x->cfg.dimensions) {
        pl_errf(err, errlen, "vector has %zu dimensions, the index has %" PRIu32 " (dimensions)",
               n, x->cfg.dimensions);
        return -EINVAL;
    }
    return 0;
}

static int check_values(const vx_index *x, const float *v, const char *what, char *err,
                        size_t errlen)
{
    if (!v) {
        pl_errf(err, errlen, "%s has no values", what);
        return -EINVAL;
    }
    for (uint32_t i = 0; i < x->cfg.dimensions; i++) {
        if (!isfinite(v[i])) {
            pl_errf(err, errlen, "%s: value %" PRIu32 " is not a finite number", what, i);
            return -EINVAL;
        }
    }
    return 0;
}

static int encode_vectors(vx_index *x, const vx_vector_in *v, size_t n, wbuf *b, char *err,
                          size_t errlen)
{
    if (!v || n == 0 || n > VX_INDEX_BATCH_MAX) {
        pl_errf(err, errlen, "a mutation carries 1..%d vectors (batch limit), got %zu",
               VX_INDEX_BATCH_MAX, n);
        return -EINVAL;
    }
    const uint32_t dim = x->cfg.dimensions;
    wb_u32(b, dim);
    wb_u32(b, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        size_t il = v[i].id ? strlen(v[i].id) : 0;
        if (il == 0 || il > VX_INDEX_ID_MAX) {
            pl_errf(err, errlen, "vector %zu: id must be 1..%d bytes (id limit), got %zu", i,
                   VX_INDEX_ID_MAX, il);
            return -EINVAL;
        }
        char what[96];
        snprintf(what, sizeof what, "vector '%s'", v[i].id);
        int rc = check_values(x, v[i].values, what, err, errlen);
        if (rc)
            return rc;
        size_t nl = v[i].ns ? strlen(v[i].ns) : 0;
        if (nl > VX_INDEX_NAMESPACE_MAX) {
            pl_errf(err, errlen, "vector '%s': namespace is longer than %d bytes (namespace "
                                "limit)", v[i].id, VX_INDEX_NAMESPACE_MAX);
            return -EINVAL;
        }
        char *md = NULL;
        size_t ml = 0;
        if (v[i].metadata && !json_is_null(v[i].metadata)) {
            if (!json_is_object(v[i].metadata)) {
                pl_errf(err, errlen, "vector '%s': metadata must be an object", v[i].id);
                return -EINVAL;
            }
            md = json_dumps(v[i].metadata, JSON_COMPACT);
            if (!md) {
                pl_errf(err, errlen, "vector '%s': metadata cannot be encoded", v[i].id);
                return -EINVAL;
            }
            ml = strlen(md);
            if (ml > VX_INDEX_METADATA_MAX) {
                pl_errf(err, errlen, "vector '%s': metadata is %zu bytes, over the %d-byte "
                                    "metadata limit", v[i].id, ml, VX_INDEX_METADATA_MAX);
                free(md);
                return -EINVAL;
            }
            if (ml == 2) { /* {}: no metadata */
                free(md);
                md = NULL;
                ml = 0;
            }
        }
        wb_u8(b, (uint8_t)il);
        wb_put(b, v[i].id, il);
        wb_u8(b, (uint8_t)nl);
        wb_put(b, v[i].ns, nl);
        wb_u32(b, (uint32_t)ml);
        wb_put(b, md, ml);
        free(md);
        wb_put(b, v[i].values, dim * sizeof(float));
    }
    if (b->oom) {
        pl_errf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    return 0;
}

static int write_vectors(vx_index *x, uint8_t type, const vx_vector_in *v, size_t n,
                         uint64_t *mutation_id, char *err, size_t errlen)
{
    wbuf b = {0};
    int rc = encode_vectors(x, v, n, &b, err, errlen);
    if (rc) {
        free(b.p);
        return rc;
    }
    return submit(x, type, b.p, b.n, NULL, NULL, mutation_id, err, errlen);
}

int vx_index_insert(vx_index *x, const vx_vector_in *v, size_t n, uint64_t *mutation_id,
                    char *err, size_t errlen)
{
    return write_vectors(x, VX_WAL_INSERT, v, n, mutation_id, err, errlen);
}

int vx_index_upsert(vx_index *x, const vx_vector_in *v, size_t n, uint64_t *mutation_id,
                    char *err, size_t errlen)
{
    return write_vectors(x, VX_WAL_UPSERT, v, n, mutation_id, err, errlen);
}

int vx_index_delete_ids(vx_index *x, const char *const *ids, size_t n, uint64_t *mutation_id,
                        char *err, size_t errlen)
{
    if (!ids || n == 0 || n > VX_INDEX_IDS_MAX) {
        pl_errf(err, errlen, "delete takes 1..%d ids (ids limit), got %zu", VX_INDEX_IDS_MAX, n);
        return -EINVAL;
    }
    wbuf b = {0};
    wb_u32(&b, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        size_t l = ids[i] ? strlen(ids[i]) : 0;
        if (l == 0 || l > VX_INDEX_ID_MAX) {
            free(b.p);
            pl_errf(err, errlen, "id %zu must be 1..%d bytes (id limit), got %zu", i,
                   VX_INDEX_ID_MAX, l);
            return -EINVAL;
        }
        wb_u8(&b, (uint8_t)l);
        wb_put(&b, ids[i], l);
    }
    if (b.oom) {
        free(b.p);
        pl_errf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    return submit(x, VX_WAL_DELETE, b.p, b.n, NULL, NULL, mutation_id, err, errlen);
}

typedef struct meta_arg {
    const char *property;
    vx_meta_type type;
    bool create;
} meta_arg;

/* Under x->mu: checks against applied + pending definitions; on commit
 * records the logged mutation in them. */
static int meta_check(vx_index *x, const void *arg, bool commit, char *err, size_t errlen)
{
    const meta_arg *a = arg;
    long i = def_find(x->ldefs, x->nldefs, a->property);
    if (!commit) {
        if (a->create && i >= 0) {
            pl_errf(err, errlen, "a metadata index on '%.64s' already exists", a->property);
            return -EEXIST;
        }
        if (a->create && x->nldefs >= VX_META_MAX_INDEXES) {
            pl_errf(err, errlen, "at most %d metadata indexes per index (metadata index limit)",
                   VX_META_MAX_INDEXES);
            return -EINVAL;
        }
        if (!a->create && i < 0) {
            pl_errf(err, errlen, "no metadata index on '%.64s'", a->property);
            return -ENOENT;
        }
        return 0;
    }
    /* commit: the checks above passed under the same hold of x->mu */
    if (a->create) {
        vx_meta_def *d = &x->ldefs[x->nldefs++];
        snprintf(d->property, sizeof d->property, "%s", a->property);
        d->type = a->type;
    } else {
        memmove(&x->ldefs[i], &x->ldefs[i + 1], (x->nldefs - (size_t)i - 1) * sizeof x->ldefs[0]);
        x->nldefs--;
    }
    return 0;
}

int vx_index_meta_create(vx_index *x, const char *property, vx_meta_type type,
                         uint64_t *mutation_id, char *err, size_t errlen)
{
    if (!property || (unsigned)type > VX_META_BOOLEAN) {
        pl_errf(err, errlen, "a metadata index needs a property and a type (string, number, "
                            "boolean)");
        return -EINVAL;
    }
    size_t l = strlen(property);
    if (l == 0 || l >= sizeof(((vx_meta_def *)0)->property)) {
        pl_errf(err, errlen, "metadata index property must be 1..%d characters",
               VX_FILTER_MAX_KEY);
        return -EINVAL;
    }
    /* The property rules are vx_meta's: try it on an empty set. */
    vx_meta *probe = vx_meta_new(0);
    if (!probe) {
        pl_errf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    int prc = vx_meta_add_index(probe, property, type, err, errlen);
    vx_meta_free(probe);
    if (prc)
        return -EINVAL;
    wbuf b = {0};
    wb_u8(&b, (uint8_t)type);
    wb_u16(&b, (uint16_t)l);
    wb_put(&b, property, l);
    if (b.oom) {
        free(b.p);
        return -ENOMEM;
    }
    meta_arg a = {property, type, true};
    return submit(x, VX_WAL_METADATA_INDEX_CREATE, b.p, b.n, meta_check, &a, mutation_id, err,
                  errlen);
}

int vx_index_meta_delete(vx_index *x, const char *property, uint64_t *mutation_id, char *err,
                         size_t errlen)
{
    size_t l = property ? strlen(property) : 0;
    if (l == 0 || l >= sizeof(((vx_meta_def *)0)->property)) {
        pl_errf(err, errlen, "no metadata index on '%.64s'", property ? property : "");
        return -ENOENT;
    }
    wbuf b = {0};
    wb_u16(&b, (uint16_t)l);
    wb_put(&b, property, l);
    if (b.oom) {
        free(b.p);
        return -ENOMEM;
    }
    meta_arg a = {property, VX_META_STRING, false};
    return submit(x, VX_WAL_METADATA_INDEX_DELETE, b.p, b.n, meta_check, &a, mutation_id, err,
                  errlen);
}

size_t vx_index_meta_list(vx_index *x, vx_meta_def defs[VX_META_MAX_INDEXES])
{
    pthread_rwlock_rdlock(&x->rw);
    size_t n = x->ndefs;
    memcpy(defs, x->defs, n * sizeof *defs);
    pthread_rwlock_unlock(&x->rw);
    return n;
}

int vx_index_wait_applied(vx_index *x, uint64_t id, int timeout_ms)
{
    struct timespec dl;
    deadline_after(&dl, timeout_ms < 0 ? 0 : timeout_ms);
    int rc = 0;
    pthread_mutex_lock(&x->mu);
    while (x->applied_id < id) {
        if (x->failed) {
            rc = -EIO;
            break;
        }
        if (x->stop) {
            rc = -ESHUTDOWN;
            break;
        }
        if (timeout_ms < 0) {
            pthread_cond_wait(&x->cv_done, &x->mu);
        } else if (pthread_cond_timedwait(&x->cv_done, &x->mu, &dl) == ETIMEDOUT) {
            rc = x->applied_id >= id ? 0 : -ETIMEDOUT;
            break;
        }
    }
    pthread_mutex_unlock(&x->mu);
    return rc;
}

/* ================================================================ reads */

static sbuf *scratch_get(vx_index *x, size_t nw)
{
    pthread_mutex_lock(&x->pool_mu);
    sbuf *b = x->pool;
    if (b)
        x->pool = b->next;
    pthread_mutex_unlock(&x->pool_mu);
    if (!b && !(b = calloc(1, sizeof *b)))
        return NULL;
    if (b->nw < nw) {
        uint64_t *w = realloc(b->w, nw * sizeof *w);
        if (!w) {
            free(b->w);
            free(b);
            return NULL;
        }
        b->w = w;
        b->nw = nw;
    }
    return b;
}

static void scratch_put(vx_index *x, sbuf *b)
{
    if (!b)
        return;
    pthread_mutex_lock(&x->pool_mu);
    b->next = x->pool;
    x->pool = b;
    pthread_mutex_unlock(&x->pool_mu);
}

/* The stored values of r, as the client sent them (caller holds rw). */
static void rec_values(vx_index *x, const rec *r, float *out)
{
    vx_hnsw_vector(x->cur.g, r->slot, out);
}

/* {"a": {"b": v}} for property "a.b" (indexed-only metadata). */
static void md_put_path(json_t *dst, const char *prop, json_t *v)
{
    char seg[VX_FILTER_MAX_KEY * 4 + 1];
    const char *s = prop;
    json_t *cur = dst;
    for (;;) {
        const char *dot = strchr(s, '.');
        size_t n = dot ? (size_t)(dot - s) : strlen(s);
        memcpy(seg, s, n);
        seg[n] = '\0';
        if (!dot) {
            json_object_set_new(cur, seg, json_deep_copy(v));
            return;
        }
        json_t *nx = json_object_get(cur, seg);
        if (!json_is_object(nx)) {
            nx = json_object();
            json_object_set_new(cur, seg, nx);
        }
        cur = nx;
        s = dot + 1;
    }
}

static json_t *md_indexed(vx_index *x, const json_t *md)
{
    json_t *o = json_object();
    for (size_t i = 0; o && md && i < x->ndefs; i++) {
        const json_t *v = md;
        const char *s = x->defs[i].property;
        char seg[VX_FILTER_MAX_KEY * 4 + 1];
        for (;;) {
            const char *dot = strchr(s, '.');
            size_t n = dot ? (size_t)(dot - s) : strlen(s);
            memcpy(seg, s, n);
            seg[n] = '\0';
            v = json_is_object(v) ? json_object_get(v, seg) : NULL;
            if (!dot || !v)
                break;
            s = dot + 1;
        }
        if (v)
            md_put_path(o, x->defs[i].property, (json_t *)v);
    }
    return o;
}

/* Fills m from r (caller holds rw). */
static int fill_match(vx_index *x, const rec *r, bool values, vx_return_meta meta, vx_match *m)
{
    m->id = strdup(rec_id(r));
    if (!m->id)
        return -ENOMEM;
    if (r->ns && !(m->ns = strdup(r->ns->name)))
        return -ENOMEM;
    if (values) {
        m->values = malloc(x->cfg.dimensions * sizeof(float));
        if (!m->values)
            return -ENOMEM;
        rec_values(x, r, m->values);
    }
    if (meta == VX_RETURN_META_ALL) {
        /* A copy: documents are shared with concurrent readers. */
        m->metadata = r->md ? json_deep_copy(r->md) : json_object();
        if (!m->metadata)
            return -ENOMEM;
    } else if (meta == VX_RETURN_META_INDEXED) {
        m->metadata = md_indexed(x, r->md);
        if (!m->metadata)
            return -ENOMEM;
    }
    return 0;
}

void vx_matches_free(vx_match *m, size_t n)
{
    if (!m)
        return;
    for (size_t i = 0; i < n; i++) {
        free(m[i].id);
        free(m[i].values);
        free(m[i].ns);
        json_decref(m[i].metadata);
    }
    free(m);
}

int vx_index_query(vx_index *x, const vx_query *q, vx_match **out, size_t *n, char *err,
                   size_t errlen)
{
    *out = NULL;
    *n = 0;
    const uint32_t dim = x->cfg.dimensions;
    uint32_t k = q->top_k;
    bool heavy = q->return_values || q->return_metadata == VX_RETURN_META_ALL;
    if (k < 1 || k > VX_INDEX_TOPK_MAX) {
        pl_errf(err, errlen, "topK must be 1..%d (topK limit), got %" PRIu32, VX_INDEX_TOPK_MAX, k);
        return -EINVAL;
    }
    if (heavy && k > VX_INDEX_TOPK_MAX_WITH_DATA) {
        pl_errf(err, errlen, "topK must be at most %d with returnValues or returnMetadata=all "
                            "(topK limit), got %" PRIu32, VX_INDEX_TOPK_MAX_WITH_DATA, k);
        return -EINVAL;
    }
    if (!q->by_id) {
        int rc = check_values(x, q->vector, "query vector", err, errlen);
        if (rc)
            return rc;
    }
    float *qv = malloc(dim * sizeof *qv);
    vx_match *res = calloc(k, sizeof *res);
    if (!qv || !res) {
        free(qv);
        free(res);
        pl_errf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    vx_hnsw_hit hits[VX_INDEX_TOPK_MAX];
    uint32_t nh = 0;
    int rc = 0;
    sbuf *sb = NULL;
    pthread_rwlock_rdlock(&x->rw);
    gen *g = &x->cur;
    if (q->by_id) {
        rec *r = pmap_get(&x->ids, q->by_id, strlen(q->by_id), rec_eq);
        if (!r) {
            pl_errf(err, errlen, "no vector with id '%.64s'", q->by_id);
            rc = -ENOENT;
            goto unlock;
        }
        rec_values(x, r, qv);
    } else {
        memcpy(qv, q->vector, dim * sizeof *qv);
    }
    const char *nsname = q->ns && q->ns[0] ? q->ns : NULL;
    vx_ns *ns = nsname ? pmap_get(&x->nss, nsname, strlen(nsname), ns_eq) : NULL;
    if (nsname && !ns)
        goto unlock; /* an empty namespace: no match */
    vx_hnsw_filter f = {g->visible, g->cap, g->nvisible};
    if (ns || q->filter) {
        size_t nw = g->cap / 64;
        sb = scratch_get(x, 2 * nw);
        if (!sb) {
            rc = -ENOMEM;
            goto unlock;
        }
        uint64_t *bits = sb->w, *tmp = sb->w + nw;
        size_t cnt = 0;
        unsigned flags = 0;
        if (q->filter) {
            if (vx_meta_eval(g->meta, q->filter, bits, nw, &cnt, &flags) != 0) {
                rc = -ENOMEM;
                goto unlock;
            }
        }
        if (ns) {
            memset(tmp, 0, nw * sizeof *tmp);
            cnt = 0;
            for (uint32_t i = 0; i < ns->n; i++) {
                uint32_t s = ns->slots[i];
                if (!q->filter || bget(bits, s)) {
                    bset(tmp, s);
                    cnt++;
                }
            }
            uint64_t *t = bits;
            bits = tmp;
            tmp = t;
        }
        if (q->filter && (flags & (VX_META_POSTFILTER | VX_META_PREFIX))) {
            /* Exact: check the remaining clauses on the candidates' documents
             * before the search, so the graph only walks to true matches. */
            for (size_t w = 0; w < nw; w++) {
                uint64_t word = bits[w];
                while (word) {
                    size_t s = w * 64 + (size_t)__builtin_ctzll(word);
                    word &= word - 1;
                    const rec *r = g->slot_rec[s];
                    if (!r || !vx_filter_match(q->filter, r->md)) {
                        bclr(bits, s);
                        cnt--;
                    }
                }
            }
        }
        f = (vx_hnsw_filter){bits, g->cap, (uint32_t)cnt};
    }
    int hr = vx_hnsw_search(g->g, qv, k, q->ef, &f, hits, &nh);
    if (hr != VX_HNSW_OK) {
        rc = hr == VX_HNSW_ENOMEM ? -ENOMEM : -EINVAL;
        goto unlock;
    }
    size_t m = 0;
    for (uint32_t i = 0; i < nh; i++) {
        const rec *r = hits[i].slot < g->cap ? g->slot_rec[hits[i].slot] : NULL;
        if (!r)
            continue;
        res[m].score = vx_score(x->cfg.metric, hits[i].distance);
        rc = fill_match(x, r, q->return_values, q->return_metadata, &res[m]);
        m++;
        if (rc)
            break;
    }
    *n = m;
unlock:
    pthread_rwlock_unlock(&x->rw);
    scratch_put(x, sb);
    free(qv);
    if (rc) {
        if (rc == -ENOMEM)
            pl_errf(err, errlen, "out of memory");
        vx_matches_free(res, k);
        *n = 0;
        return rc;
    }
    *out = res;
    return 0;
}

int vx_index_get(vx_index *x, const char *const *ids, size_t n, vx_match **out, size_t *nout,
                 char *err, size_t errlen)
{
    *out = NULL;
    *nout = 0;
    if (!ids || n > VX_INDEX_IDS_MAX) {
        pl_errf(err, errlen, "get takes at most %d ids (ids limit), got %zu", VX_INDEX_IDS_MAX, n);
        return -EINVAL;
    }
    vx_match *res = calloc(n ? n : 1, sizeof *res);
    if (!res) {
        pl_errf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    int rc = 0;
    size_t m = 0;
    pthread_rwlock_rdlock(&x->rw);
    for (size_t i = 0; i < n && !rc; i++) {
        size_t l = ids[i] ? strlen(ids[i]) : 0;
        const rec *r = l && l <= VX_INDEX_ID_MAX ? pmap_get(&x->ids, ids[i], l, rec_eq) : NULL;
        if (!r)
            continue;
        rc = fill_match(x, r, true, VX_RETURN_META_ALL, &res[m++]);
    }
    pthread_rwlock_unlock(&x->rw);
    if (rc) {
        vx_matches_free(res, n);
        pl_errf(err, errlen, "out of memory");
        return rc;
    }
    *out = res;
    *nout = m;
    return 0;
}

int vx_index_list(vx_index *x, const char *after, size_t count, vx_list_page *out, char *err,
                  size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (count == 0)
        count = 100;
    if (count > VX_INDEX_LIST_MAX) {
        pl_errf(err, errlen, "count must be 1..%d (list limit), got %zu", VX_INDEX_LIST_MAX,
               count);
        return -EINVAL;
    }
    out->ids = calloc(count, sizeof *out->ids);
    if (!out->ids) {
        pl_errf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    int rc = 0;
    pthread_rwlock_rdlock(&x->rw);
    const rec *r = x->head[0];
    if (after && after[0]) {
        size_t al = strlen(after);
        rec *upd[SKIP_MAX];
        skip_find(x, after, al, upd);
        r = upd[0] ? upd[0]->next[0] : x->head[0];
        /* r is the first id >= after: skip an exact match */
        if (r && bytes_cmp(rec_id(r), r->idlen, after, al) == 0)
            r = r->next[0];
    }
    while (r && out->count < count) {
        if (!(out->ids[out->count] = strdup(rec_id(r)))) {
            rc = -ENOMEM;
            break;
        }
        out->count++;
        r = r->next[0];
    }
    out->truncated = r != NULL;
    out->total = x->nrec;
    pthread_rwlock_unlock(&x->rw);
    if (rc) {
        vx_list_page_free(out);
        pl_errf(err, errlen, "out of memory");
    }
    return rc;
}

void vx_list_page_free(vx_list_page *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->count; i++)
        free(p->ids[i]);
    free(p->ids);
    memset(p, 0, sizeof *p);
}

/* ================================================================ info */

void vx_index_info_get(vx_index *x, vx_index_info *out)
{
    memset(out, 0, sizeof *out);
    vx_wal_info wi;
    vx_wal_info_get(x->wal, &wi);
    pthread_mutex_lock(&x->mu);
    out->processed_upto = x->applied_id;
    out->processed_upto_ms = x->applied_id ? x->applied_ms : 0;
    size_t qbytes = x->qbytes;
    pthread_mutex_unlock(&x->mu);
    pthread_rwlock_rdlock(&x->rw);
    const gen *g = &x->cur;
    out->dimensions = x->cfg.dimensions;
    out->vector_count = x->nrec;
    out->namespaces = x->nss.n;
    out->deleted_slots = vx_hnsw_deleted(g->g);
    size_t mem = sizeof *x + vx_hnsw_memory_bytes(g->g) + vx_meta_memory(g->meta);
    mem += (size_t)g->cap * sizeof(rec *) + g->cap / 8;
    mem += (x->ids.cap + x->nss.cap) * sizeof(void *) + x->rec_bytes + qbytes;
    for (size_t i = 0; i < x->nss.cap; i++) {
        const vx_ns *s = x->nss.e[i];
        if (s)
            mem += sizeof *s + strlen(s->name) + 1 + s->cap * sizeof(uint32_t);
    }
    pthread_rwlock_unlock(&x->rw);
    out->memory_bytes = mem;
    out->last_mutation = wi.last_id;
    out->disk_bytes = wi.bytes_on_disk;
    out->snapshot_id = wi.snapshot_id;
    out->open_ms = x->open_ms;
    out->replayed_records = x->replayed;
    out->compactions = atomic_load(&x->compactions);
}
