/* vx_meta: metadata indexes and filter-to-bitmap evaluation (see vx_meta.h). */
#include "vector/vx_meta.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "platform/pl_err.h"

typedef struct num_ent {
    double v;
    uint32_t slot;
} num_ent;

typedef struct str_ent {
    const char *s; /* the slot's prefix copy (sval[slot]) */
    uint32_t len;
    uint32_t slot;
} str_ent;

/* sinfo: the prefix length (<= 64) in the low bits, and whether the value
 * was longer than the prefix (prefixes may hold NULs, so no strlen). */
#define SINFO_LEN 0x7fu
#define SINFO_TRUNC 0x80u

typedef struct mindex {
    char *prop;
    size_t nseg;
    char **seg;
    size_t *seglen;
    vx_meta_type type;
    uint64_t *has;     /* slot holds a value of this type */
    uint64_t *stale;   /* set before the index existed, not set again since */
    size_t nstale;
    size_t ntrunc;     /* indexed strings longer than the prefix */
    /* number */
    double *nval;
    num_ent *nsorted;
    /* string */
    char **sval;
    uint8_t *sinfo;    /* per slot: prefix length | SINFO_TRUNC */
    str_ent *ssorted;
    /* boolean */
    uint64_t *btrue, *bfalse;
    size_t n, cap;     /* entries in the sorted array */
} mindex;

struct vx_meta {
    pthread_rwlock_t lock;
    size_t nslots, nwords;
    uint64_t *live;
    size_t nlive;
    mindex *idx[VX_META_MAX_INDEXES];
    size_t nidx;
};

static inline bool bit_get(const uint64_t *b, size_t i) { return (b[i >> 6] >> (i & 63)) & 1; }
static inline void bit_set(uint64_t *b, size_t i) { b[i >> 6] |= 1ull << (i & 63); }
static inline void bit_clr(uint64_t *b, size_t i) { b[i >> 6] &= ~(1ull << (i & 63)); }

int vx_meta_type_parse(const char *name) {
    if (!name)
        return -1;
    if (strcmp(name, "string") == 0)
        return VX_META_STRING;
    if (strcmp(name, "number") == 0)
        return VX_META_NUMBER;
    if (strcmp(name, "boolean") == 0)
        return VX_META_BOOLEAN;
    return -1;
}

const char *vx_meta_type_name(vx_meta_type t) {
    switch (t) {
    case VX_META_STRING: return "string";
    case VX_META_NUMBER: return "number";
    case VX_META_BOOLEAN: return "boolean";
    }
    return "?";
}

vx_meta *vx_meta_new(size_t nslots) {
    if (nslots > UINT32_MAX)
        return NULL;
    vx_meta *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->nslots = nslots;
    m->nwords = (nslots + 63) / 64;
    m->live = calloc(m->nwords ? m->nwords : 1, sizeof *m->live);
    if (!m->live || pthread_rwlock_init(&m->lock, NULL) != 0) {
        free(m->live);
        free(m);
        return NULL;
    }
    return m;
}

static void mindex_free(mindex *x, size_t nslots) {
    if (!x)
        return;
    for (size_t i = 0; i < x->nseg; i++)
        free(x->seg[i]);
    free(x->seg);
    free(x->seglen);
    free(x->prop);
    free(x->has);
    free(x->stale);
    free(x->nval);
    free(x->nsorted);
    if (x->sval)
        for (size_t i = 0; i < nslots; i++)
            free(x->sval[i]);
    free(x->sval);
    free(x->sinfo);
    free(x->ssorted);
    free(x->btrue);
    free(x->bfalse);
    free(x);
}

void vx_meta_free(vx_meta *m) {
    if (!m)
        return;
    for (size_t i = 0; i < m->nidx; i++)
        mindex_free(m->idx[i], m->nslots);
    free(m->live);
    pthread_rwlock_destroy(&m->lock);
    free(m);
}

size_t vx_meta_nslots(const vx_meta *m) { return m->nslots; }

size_t vx_meta_nindexes(vx_meta *m) {
    pthread_rwlock_rdlock(&m->lock);
    size_t n = m->nidx;
    pthread_rwlock_unlock(&m->lock);
    return n;
}

static long find_index(const vx_meta *m, const char *prop) {
    for (size_t i = 0; i < m->nidx; i++)
        if (strcmp(m->idx[i]->prop, prop) == 0)
            return (long)i;
    return -1;
}

/* Splits prop at '.' into x->seg (validated beforehand). */
static int split_prop(mindex *x, const char *prop) {
    size_t len = strlen(prop), nseg = 1;
    for (size_t i = 0; i < len; i++)
        nseg += prop[i] == '.';
    x->seg = calloc(nseg, sizeof *x->seg);
    x->seglen = calloc(nseg, sizeof *x->seglen);
    if (!x->seg || !x->seglen)
        return -1;
    const char *s = prop;
    for (size_t i = 0; i < nseg; i++) {
        const char *dot = strchr(s, '.');
        size_t n = dot ? (size_t)(dot - s) : strlen(s);
        x->seg[i] = strndup(s, n);
        if (!x->seg[i])
            return -1;
        x->seglen[i] = n;
        x->nseg = i + 1;
        s += n + 1;
    }
    return 0;
}

int vx_meta_add_index(vx_meta *m, const char *property, vx_meta_type type, char *err,
                      size_t errlen) {
    if (err && errlen)
        err[0] = '\0';
    if (!property || (unsigned)type > VX_META_BOOLEAN) {
        pl_errf(err, errlen, "metadata index needs a property name and a type");
        return -1;
    }
    /* A property name follows the rules of filter keys: validate it as one. */
    json_t *probe = json_object();
    if (!probe || json_object_set_new(probe, property, json_true()) != 0) {
        json_decref(probe);
        pl_errf(err, errlen, "metadata index property is not valid UTF-8");
        return -1;
    }
    vx_filter *pf = vx_filter_parse(probe, err, errlen);
    json_decref(probe);
    if (!pf)
        return -1;
    vx_filter_free(pf);

    mindex *x = calloc(1, sizeof *x);
    if (!x)
        goto oom;
    size_t words = m->nwords ? m->nwords : 1, slots = m->nslots ? m->nslots : 1;
    x->type = type;
    x->prop = strdup(property);
    x->has = calloc(words, sizeof *x->has);
    x->stale = calloc(words, sizeof *x->stale);
    if (!x->prop || !x->has || !x->stale || split_prop(x, property) < 0)
        goto oom;
    if (type == VX_META_NUMBER) {
        x->nval = calloc(slots, sizeof *x->nval);
        if (!x->nval)
            goto oom;
    } else if (type == VX_META_STRING) {
        x->sval = calloc(slots, sizeof *x->sval);
        x->sinfo = calloc(slots, 1);
        if (!x->sval || !x->sinfo)
            goto oom;
    } else {
        x->btrue = calloc(words, sizeof *x->btrue);
        x->bfalse = calloc(words, sizeof *x->bfalse);
        if (!x->btrue || !x->bfalse)
            goto oom;
    }

    pthread_rwlock_wrlock(&m->lock);
    if (find_index(m, property) >= 0) {
        pthread_rwlock_unlock(&m->lock);
        pl_errf(err, errlen, "metadata index on '%.64s' already exists", property);
        mindex_free(x, m->nslots);
        return -1;
    }
    if (m->nidx >= VX_META_MAX_INDEXES) {
        pthread_rwlock_unlock(&m->lock);
        pl_errf(err, errlen, "at most %d metadata indexes", VX_META_MAX_INDEXES);
        mindex_free(x, m->nslots);
        return -1;
    }
    memcpy(x->stale, m->live, m->nwords * sizeof *x->stale);
    x->nstale = m->nlive;
    m->idx[m->nidx++] = x;
    pthread_rwlock_unlock(&m->lock);
    return 0;
oom:
    mindex_free(x, m->nslots);
    pl_errf(err, errlen, "out of memory");
    return -1;
}

int vx_meta_drop_index(vx_meta *m, const char *property, char *err, size_t errlen) {
    if (err && errlen)
        err[0] = '\0';
    pthread_rwlock_wrlock(&m->lock);
    long i = property ? find_index(m, property) : -1;
    if (i < 0) {
        pthread_rwlock_unlock(&m->lock);
        pl_errf(err, errlen, "no metadata index on '%.64s'", property ? property : "");
        return -1;
    }
    mindex *x = m->idx[i];
    memmove(&m->idx[i], &m->idx[i + 1], (m->nidx - (size_t)i - 1) * sizeof m->idx[0]);
    m->nidx--;
    pthread_rwlock_unlock(&m->lock);
    mindex_free(x, m->nslots);
    return 0;
}

/* ---- sorted arrays ---- */

static int num_cmp(double a, uint32_t as, double b, uint32_t bs) {
    if (a < b)
        return -1;
    if (a > b)
        return 1;
    return as < bs ? -1 : as > bs ? 1 : 0;
}

static int str_cmp(const char *a, size_t al, const char *b, size_t bl) {
    size_t n = al < bl ? al : bl;
    int c = n ? memcmp(a, b, n) : 0;
    if (c)
        return c;
    return al < bl ? -1 : al > bl ? 1 : 0;
}

/* First position whose (value, slot) >= (v, slot). */
static size_t num_pos(const mindex *x, double v, uint32_t slot) {
    size_t lo = 0, hi = x->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (num_cmp(x->nsorted[mid].v, x->nsorted[mid].slot, v, slot) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static size_t str_pos(const mindex *x, const char *s, size_t len, uint32_t slot) {
    size_t lo = 0, hi = x->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const str_ent *e = &x->ssorted[mid];
        int c = str_cmp(e->s, e->len, s, len);
        if (c == 0)
            c = e->slot < slot ? -1 : e->slot > slot ? 1 : 0;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int grow_sorted(mindex *x) {
    if (x->n < x->cap)
        return 0;
    size_t cap = x->cap ? x->cap * 2 : 64;
    size_t esz = x->type == VX_META_NUMBER ? sizeof(num_ent) : sizeof(str_ent);
    void *p = realloc(x->type == VX_META_NUMBER ? (void *)x->nsorted : (void *)x->ssorted,
                      cap * esz);
    if (!p)
        return -1;
    if (x->type == VX_META_NUMBER)
        x->nsorted = p;
    else
        x->ssorted = p;
    x->cap = cap;
    return 0;
}

/* Removes slot from x (when it holds a value there). */
static void mindex_remove(mindex *x, uint32_t slot) {
    if (bit_get(x->stale, slot)) {
        bit_clr(x->stale, slot);
        x->nstale--;
    }
    if (!bit_get(x->has, slot))
        return;
    bit_clr(x->has, slot);
    if (x->type == VX_META_NUMBER) {
        size_t p = num_pos(x, x->nval[slot], slot);
        memmove(&x->nsorted[p], &x->nsorted[p + 1], (x->n - p - 1) * sizeof *x->nsorted);
        x->n--;
    } else if (x->type == VX_META_STRING) {
        size_t p = str_pos(x, x->sval[slot], x->sinfo[slot] & SINFO_LEN, slot);
        memmove(&x->ssorted[p], &x->ssorted[p + 1], (x->n - p - 1) * sizeof *x->ssorted);
        x->n--;
        free(x->sval[slot]);
        x->sval[slot] = NULL;
        if (x->sinfo[slot] & SINFO_TRUNC)
            x->ntrunc--;
        x->sinfo[slot] = 0;
    } else {
        bit_clr(x->btrue, slot);
        bit_clr(x->bfalse, slot);
    }
}

/* The indexed length of a string: at most VX_META_STR_PREFIX bytes, cut back
 * to a UTF-8 character boundary (the longest well-formed prefix, as
 * Vectorize does; jansson strings are valid UTF-8). */
static size_t prefix_len(const char *s, size_t len) {
    if (len <= VX_META_STR_PREFIX)
        return len;
    size_t n = VX_META_STR_PREFIX;
    while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
        n--;
    return n;
}

static const json_t *lookup(const mindex *x, const json_t *md) {
    const json_t *cur = md;
    for (size_t i = 0; i < x->nseg; i++) {
        if (!json_is_object(cur))
            return NULL;
        cur = json_object_getn(cur, x->seg[i], x->seglen[i]);
    }
    return cur;
}

/* Adds slot's value of md to x. append: at the end of the sorted array,
 * leaving it unsorted (a backfill sorts once at the end); else at its
 * sorted place. */
static int mindex_add(mindex *x, uint32_t slot, const json_t *md, bool append) {
    const json_t *v = md ? lookup(x, md) : NULL;
    if (!v)
        return 0;
    if (x->type == VX_META_NUMBER) {
        if (!json_is_number(v))
            return 0;
        if (grow_sorted(x) < 0)
            return -1;
        double d = json_number_value(v);
        size_t p = append ? x->n : num_pos(x, d, slot);
        if (p < x->n)
            memmove(&x->nsorted[p + 1], &x->nsorted[p], (x->n - p) * sizeof *x->nsorted);
        x->nsorted[p] = (num_ent){d, slot};
        x->n++;
        x->nval[slot] = d;
    } else if (x->type == VX_META_STRING) {
        if (!json_is_string(v))
            return 0;
        size_t full = json_string_length(v);
        size_t len = prefix_len(json_string_value(v), full);
        bool trunc = len < full;
        char *s = malloc(len + 1);
        if (!s || grow_sorted(x) < 0) {
            free(s);
            return -1;
        }
        memcpy(s, json_string_value(v), len);
        s[len] = '\0';
        size_t p = append ? x->n : str_pos(x, s, len, slot);
        if (p < x->n)
            memmove(&x->ssorted[p + 1], &x->ssorted[p], (x->n - p) * sizeof *x->ssorted);
        x->ssorted[p] = (str_ent){s, (uint32_t)len, slot};
        x->n++;
        x->sval[slot] = s;
        x->sinfo[slot] = (uint8_t)(len | (trunc ? SINFO_TRUNC : 0));
        x->ntrunc += trunc;
    } else {
        if (!json_is_boolean(v))
            return 0;
        bit_set(json_is_true(v) ? x->btrue : x->bfalse, slot);
    }
    bit_set(x->has, slot);
    return 0;
}

static void clear_locked(vx_meta *m, uint32_t slot) {
    for (size_t i = 0; i < m->nidx; i++)
        mindex_remove(m->idx[i], slot);
    if (bit_get(m->live, slot)) {
        bit_clr(m->live, slot);
        m->nlive--;
    }
}

int vx_meta_set(vx_meta *m, size_t slot, const json_t *metadata) {
    if (slot >= m->nslots)
        return -1;
    pthread_rwlock_wrlock(&m->lock);
    clear_locked(m, (uint32_t)slot);
    const json_t *md = json_is_object(metadata) ? metadata : NULL;
    for (size_t i = 0; md && i < m->nidx; i++) {
        if (mindex_add(m->idx[i], (uint32_t)slot, md, false) < 0) {
            clear_locked(m, (uint32_t)slot);
            pthread_rwlock_unlock(&m->lock);
            return -1;
        }
    }
    bit_set(m->live, slot);
    m->nlive++;
    pthread_rwlock_unlock(&m->lock);
    return 0;
}

int vx_meta_clear(vx_meta *m, size_t slot) {
    if (slot >= m->nslots)
        return -1;
    pthread_rwlock_wrlock(&m->lock);
    clear_locked(m, (uint32_t)slot);
    pthread_rwlock_unlock(&m->lock);
    return 0;
}

/* ---- evaluation ---- */

static vx_vtype index_vtype(vx_meta_type t) {
    return t == VX_META_STRING ? VX_V_STRING : t == VX_META_NUMBER ? VX_V_NUMBER : VX_V_BOOL;
}

/* lower: the first entry with value >= v; upper: the first with value > v.
 * Equality is [lower, upper), $lt [0, lower), $gt [upper, n) and so on. */
static size_t num_lower(const mindex *x, double v) { return num_pos(x, v, 0); }
static size_t num_upper(const mindex *x, double v) {
    size_t lo = 0, hi = x->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (x->nsorted[mid].v <= v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}
static size_t str_lower(const mindex *x, const char *s, size_t len) { return str_pos(x, s, len, 0); }
static size_t str_upper(const mindex *x, const char *s, size_t len) {
    size_t lo = 0, hi = x->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (str_cmp(x->ssorted[mid].s, x->ssorted[mid].len, s, len) <= 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void set_range(const mindex *x, size_t lo, size_t hi, uint64_t *out) {
    if (x->type == VX_META_NUMBER)
        for (size_t i = lo; i < hi; i++)
            bit_set(out, x->nsorted[i].slot);
    else
        for (size_t i = lo; i < hi; i++)
            bit_set(out, x->ssorted[i].slot);
}

/* ORs into out the slots whose value satisfies `op v` (op is $eq or a
 * range); sets *prefix when a string operand was cut to the prefix. */
static void eval_one(const mindex *x, vx_op op, const vx_value *v, uint64_t *out, bool *prefix) {
    size_t lo, hi;
    if (x->type == VX_META_NUMBER) {
        lo = num_lower(x, v->num);
        hi = num_upper(x, v->num);
    } else {
        size_t len = prefix_len(v->str, v->len);
        if (len < v->len)
            *prefix = true;
        lo = str_lower(x, v->str, len);
        hi = str_upper(x, v->str, len);
    }
    switch (op) {
    case VX_OP_LT: set_range(x, 0, lo, out); break;
    case VX_OP_LTE: set_range(x, 0, hi, out); break;
    case VX_OP_GT: set_range(x, hi, x->n, out); break;
    case VX_OP_GTE: set_range(x, lo, x->n, out); break;
    default: set_range(x, lo, hi, out); break;
    }
}

int vx_meta_eval(vx_meta *m, const vx_filter *f, uint64_t *bits, size_t nwords, size_t *count,
                 unsigned *flags) {
    if (nwords < m->nwords || !bits)
        return -1;
    unsigned fl = 0;
    uint64_t *scratch = NULL;
    pthread_rwlock_rdlock(&m->lock);
    memcpy(bits, m->live, m->nwords * sizeof *bits);
    memset(bits + m->nwords, 0, (nwords - m->nwords) * sizeof *bits);
    size_t nc = f ? vx_filter_nclauses(f) : 0;
    for (size_t ci = 0; ci < nc; ci++) {
        const vx_clause *c = vx_filter_clause(f, ci);
        long xi = find_index(m, c->key);
        const mindex *x = xi >= 0 ? m->idx[xi] : NULL;
        bool answerable = x && x->nstale == 0;
        for (size_t k = 0; answerable && k < c->nvalues; k++)
            answerable = c->values[k].type == index_vtype(x->type);
        if (!answerable) {
            fl |= VX_META_POSTFILTER;
            continue;
        }
        if (x->type == VX_META_STRING && x->ntrunc > 0)
            fl |= VX_META_PREFIX;
        bool neg = c->op == VX_OP_NE || c->op == VX_OP_NIN;
        if (x->type == VX_META_BOOLEAN) {
            bool want_t = false, want_f = false;
            for (size_t k = 0; k < c->nvalues; k++) {
                want_t |= c->values[k].b;
                want_f |= !c->values[k].b;
            }
            for (size_t w = 0; w < m->nwords; w++) {
                uint64_t eq = (want_t ? x->btrue[w] : 0) | (want_f ? x->bfalse[w] : 0);
                bits[w] &= neg ? ~eq : eq;
            }
            continue;
        }
        if (!scratch) {
            scratch = malloc((m->nwords ? m->nwords : 1) * sizeof *scratch);
            if (!scratch) {
                pthread_rwlock_unlock(&m->lock);
                return -1;
            }
        }
        memset(scratch, 0, m->nwords * sizeof *scratch);
        bool prefix = false;
        for (size_t k = 0; k < c->nvalues; k++)
            eval_one(x, neg ? VX_OP_EQ : c->op, &c->values[k], scratch, &prefix);
        if (prefix)
            fl |= VX_META_PREFIX;
        for (size_t w = 0; w < m->nwords; w++)
            bits[w] &= neg ? ~scratch[w] : scratch[w];
    }
    pthread_rwlock_unlock(&m->lock);
    free(scratch);
    size_t n = 0;
    for (size_t w = 0; w < m->nwords; w++)
        n += (size_t)__builtin_popcountll(bits[w]);
    if (count)
        *count = n;
    if (flags)
        *flags = fl;
    return 0;
}

size_t vx_meta_memory(vx_meta *m) {
    pthread_rwlock_rdlock(&m->lock);
    size_t b = sizeof *m + m->nwords * sizeof(uint64_t);
    for (size_t i = 0; i < m->nidx; i++) {
        const mindex *x = m->idx[i];
        b += sizeof *x + strlen(x->prop) + 1 + x->nseg * (sizeof(char *) + sizeof(size_t));
        for (size_t s = 0; s < x->nseg; s++)
            b += x->seglen[s] + 1;
        b += 2 * m->nwords * sizeof(uint64_t);
        if (x->type == VX_META_NUMBER) {
            b += m->nslots * sizeof(double) + x->cap * sizeof(num_ent);
        } else if (x->type == VX_META_STRING) {
            b += m->nslots * (sizeof(char *) + 1) + x->cap * sizeof(str_ent);
            for (size_t e = 0; e < x->n; e++)
                b += x->ssorted[e].len + 1;
        } else {
            b += 2 * m->nwords * sizeof(uint64_t);
        }
    }
    pthread_rwlock_unlock(&m->lock);
    return b;
}

/* ---- growth and backfill (owned by vx_index) ---- */

/* realloc that zeroes the added tail; NULL leaves p as it was. */
static void *grow_zero(void *p, size_t old_bytes, size_t new_bytes) {
    void *q = realloc(p, new_bytes ? new_bytes : 1);
    if (q && new_bytes > old_bytes)
        memset((char *)q + old_bytes, 0, new_bytes - old_bytes);
    return q;
}

#define GROW_FIELD(ptr, oldn, newn)                                                            \
    do {                                                                                       \
        void *q_ = grow_zero((ptr), (oldn) * sizeof *(ptr), (newn) * sizeof *(ptr));           \
        if (!q_)                                                                               \
            goto oom;                                                                          \
        (ptr) = q_;                                                                            \
    } while (0)

int vx_meta_grow(vx_meta *m, size_t nslots) {
    if (nslots > UINT32_MAX)
        return -1;
    pthread_rwlock_wrlock(&m->lock);
    if (nslots <= m->nslots) {
        pthread_rwlock_unlock(&m->lock);
        return 0;
    }
    size_t ow = m->nwords ? m->nwords : 1, os = m->nslots ? m->nslots : 1;
    size_t nw = (nslots + 63) / 64;
    /* Each array grows on its own; a failure half way leaves some arrays
     * larger than nslots needs, which is harmless (sizes only ever grow and
     * nslots is raised only once all succeeded). */
    GROW_FIELD(m->live, ow, nw);
    for (size_t i = 0; i < m->nidx; i++) {
        mindex *x = m->idx[i];
        GROW_FIELD(x->has, ow, nw);
        GROW_FIELD(x->stale, ow, nw);
        if (x->type == VX_META_NUMBER) {
            GROW_FIELD(x->nval, os, nslots);
        } else if (x->type == VX_META_STRING) {
            GROW_FIELD(x->sval, os, nslots);
            GROW_FIELD(x->sinfo, os, nslots);
        } else {
            GROW_FIELD(x->btrue, ow, nw);
            GROW_FIELD(x->bfalse, ow, nw);
        }
    }
    m->nslots = nslots;
    m->nwords = nw;
    pthread_rwlock_unlock(&m->lock);
    return 0;
oom:
    pthread_rwlock_unlock(&m->lock);
    return -1;
}

static int num_ent_cmp(const void *a, const void *b) {
    const num_ent *x = a, *y = b;
    return num_cmp(x->v, x->slot, y->v, y->slot);
}

static int str_ent_cmp(const void *a, const void *b) {
    const str_ent *x = a, *y = b;
    int c = str_cmp(x->s, x->len, y->s, y->len);
    if (c)
        return c;
    return x->slot < y->slot ? -1 : x->slot > y->slot ? 1 : 0;
}

int vx_meta_backfill(vx_meta *m, const char *property,
                     const json_t *(*doc)(void *ctx, size_t slot), void *ctx, char *err,
                     size_t errlen) {
    if (err && errlen)
        err[0] = '\0';
    pthread_rwlock_wrlock(&m->lock);
    long xi = property ? find_index(m, property) : -1;
    if (xi < 0) {
        pthread_rwlock_unlock(&m->lock);
        pl_errf(err, errlen, "no metadata index on '%.64s'", property ? property : "");
        return -1;
    }
    mindex *x = m->idx[xi];
    int rc = 0;
    for (size_t w = 0; w < m->nwords && x->nstale > 0; w++) {
        while (x->stale[w]) {
            uint32_t slot = (uint32_t)(w * 64 + (size_t)__builtin_ctzll(x->stale[w]));
            if (mindex_add(x, slot, doc(ctx, slot), true) < 0) {
                rc = -1;
                break;
            }
            bit_clr(x->stale, slot);
            x->nstale--;
        }
        if (rc < 0)
            break;
    }
    /* Sorted again even after a failure: the entries added so far are
     * valid and every other operation relies on the order. */
    if (x->type == VX_META_NUMBER && x->n > 1)
        qsort(x->nsorted, x->n, sizeof *x->nsorted, num_ent_cmp);
    else if (x->type == VX_META_STRING && x->n > 1)
        qsort(x->ssorted, x->n, sizeof *x->ssorted, str_ent_cmp);
    pthread_rwlock_unlock(&m->lock);
    if (rc < 0)
        pl_errf(err, errlen, "out of memory");
    return rc;
}
