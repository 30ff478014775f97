/*
 * op_metrics: registry, lock-free updates and the Prometheus text exposition.
 * The contract (threading, ownership, errors, cardinality) is in op_metrics.h.
 *
 * Layout of the state, all of it reachable from g_head for the life of the
 * process (so leak checkers see nothing lost):
 *   - families: a singly linked list in registration order. Appends happen
 *     under g_lock and are published with a release store, so the renderer
 *     walks the list without any lock.
 *   - children of a family: a hash table (chains) for lookup, guarded by the
 *     family's rwlock (readers for hits, the writer for inserts and growth),
 *     plus a creation-order list published the same way as families, so a
 *     scrape never blocks label lookups on the request path.
 *   - numbers: doubles kept as their IEEE-754 bit patterns in _Atomic uint64_t
 *     and updated with compare-exchange loops; histogram buckets are
 *     non-cumulative _Atomic uint64_t counts (one increment per observation),
 *     made cumulative when rendered.
 */
#include "metrics/op_metrics.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "platform/pl_file.h"
#include "platform/pl_log.h"
#include "platform/pl_time.h"

const double OP_METRIC_DEFAULT_SECONDS_BUCKETS[] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1,    0.25,    0.5,    1,     2.5,    5,     10,   30,    60,
};
const size_t OP_METRIC_DEFAULT_SECONDS_BUCKETS_N =
    sizeof(OP_METRIC_DEFAULT_SECONDS_BUCKETS) / sizeof(OP_METRIC_DEFAULT_SECONDS_BUCKETS[0]);

/* Longest text fmt_double writes: "%.17g" of a double is at most 24 chars. */
#define NUM_BUF 40
#define INITIAL_TABLE 16

struct op_metric_child {
    op_metric *fam;
    char **values;                   /* fam->n_labels strings, valid UTF-8 */
    uint64_t hash;
    op_metric_child *hnext;          /* hash chain; under fam->lock */
    _Atomic(op_metric_child *) next; /* creation order; published with release */
    _Atomic uint64_t bits;           /* counter/gauge value, or histogram _sum (double bits) */
    _Atomic uint64_t *buckets;       /* histogram: n_bounds + 1 counts, the last is +Inf */
};

struct op_metric {
    char *name;
    char *help;
    op_metric_type type;
    size_t n_labels;
    char **labels;
    double *bounds;                  /* histogram upper bounds, finite, increasing */
    char **le_text;                  /* bounds formatted once for le="..." */
    size_t n_bounds;

    pthread_rwlock_t lock;           /* guards table, table_size, n_children, tail */
    op_metric_child **table;
    size_t table_size;               /* power of two */
    size_t n_children;               /* regular children, the overflow child excluded */
    bool overflow_logged;
    op_metric_child *tail;
    _Atomic(op_metric_child *) head;
    op_metric_child *solo;           /* the only child of a label-less family */

    _Atomic(op_metric *) next;       /* registration order */
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER; /* guards registration */
static _Atomic(op_metric *) g_head;
static op_metric *g_tail;

/* ------------------------------------------------------------------------ */
/* Small helpers                                                            */
/* ------------------------------------------------------------------------ */

static double bits_to_double(uint64_t b)
{
    double d;
    memcpy(&d, &b, sizeof d);
    return d;
}

static uint64_t double_to_bits(double d)
{
    uint64_t b;
    memcpy(&b, &d, sizeof b);
    return b;
}

static void atomic_add_double(_Atomic uint64_t *a, double v)
{
    uint64_t old = atomic_load_explicit(a, memory_order_relaxed);
    for (;;) {
        uint64_t upd = double_to_bits(bits_to_double(old) + v);
        if (atomic_compare_exchange_weak_explicit(a, &old, upd, memory_order_relaxed,
                                                  memory_order_relaxed))
            return;
    }
}

/* Prometheus spellings; integers without exponent while exact (|v| < 2^53),
 * else the shortest of %.15g/%.16g/%.17g that reads back as the same double
 * (the value %.17g would give, without its noise: 0.1, not 0.10000000000000001,
 * and le="0.00025" as every other client prints it). */
static void fmt_double(double v, char buf[NUM_BUF])
{
    if (isnan(v)) {
        strcpy(buf, "NaN");
    } else if (isinf(v)) {
        strcpy(buf, v > 0 ? "+Inf" : "-Inf");
    } else if (v == 0) {
        strcpy(buf, "0"); /* -0 too */
    } else if (fabs(v) < 9007199254740992.0 && v == trunc(v)) {
        snprintf(buf, NUM_BUF, "%.0f", v);
    } else {
        for (int prec = 15; prec <= 17; prec++) {
            snprintf(buf, NUM_BUF, "%.*g", prec, v);
            if (prec == 17 || strtod(buf, NULL) == v)
                break;
        }
    }
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p)
        memcpy(p, s, n);
    return p;
}

static bool valid_metric_name(const char *s)
{
    if (!s || !*s)
        return false;
    for (const char *p = s; *p; p++) {
        char c = *p;
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
        if (!alpha && !(p != s && c >= '0' && c <= '9'))
            return false;
    }
    return true;
}

static bool valid_label_name(const char *s)
{
    if (!s || !*s || (s[0] == '_' && s[1] == '_'))
        return false;
    for (const char *p = s; *p; p++) {
        char c = *p;
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
        if (!alpha && !(p != s && c >= '0' && c <= '9'))
            return false;
    }
    return true;
}

/* Length of the well-formed UTF-8 sequence at s (RFC 3629: no overlongs, no
 * surrogates, nothing past U+10FFFF), or 0 if the bytes there are not one. */
static size_t utf8_seq_len(const unsigned char *s)
{
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        return 0;
    }
    if (s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return n;
}

static bool utf8_valid(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        size_t n = utf8_seq_len(p);
        if (n == 0)
            return false;
        p += n;
    }
    return true;
}

/* A copy of s with every byte that starts no well-formed sequence as '?'. */
static char *utf8_sanitized(const char *s)
{
    char *out = xstrdup(s);
    if (!out)
        return NULL;
    unsigned char *p = (unsigned char *)out;
    while (*p) {
        size_t n = utf8_seq_len(p);
        if (n == 0) {
            *p = '?';
            n = 1;
        }
        p += n;
    }
    return out;
}

/* ------------------------------------------------------------------------ */
/* Registration                                                             */
/* ------------------------------------------------------------------------ */

static op_metric *refuse(const char *name, const char *reason)
{
    PL_LOG_WARN("metrics.register_refused", "name", name ? name : "(null)", "reason", reason);
    return NULL;
}

static void free_strv(char **v, size_t n)
{
    if (!v)
        return;
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static char **dup_strv(const char *const *v, size_t n)
{
    char **out = calloc(n ? n : 1, sizeof *out);
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (!(out[i] = xstrdup(v[i]))) {
            free_strv(out, i);
            return NULL;
        }
    }
    return out;
}

static const char *const HISTOGRAM_SUFFIXES[] = {"_bucket", "_sum", "_count"};

/* True if name is hist + one of the series suffixes a histogram emits. */
static bool is_histogram_series(const char *hist, const char *name)
{
    size_t hn = strlen(hist);
    if (strncmp(hist, name, hn) != 0)
        return false;
    for (size_t i = 0; i < 3; i++)
        if (strcmp(name + hn, HISTOGRAM_SUFFIXES[i]) == 0)
            return true;
    return false;
}

static bool same_shape(const op_metric *f, op_metric_type type, const char *const *labels,
                       size_t n_labels, const double *bounds, size_t n_bounds)
{
    if (f->type != type || f->n_labels != n_labels)
        return false;
    for (size_t i = 0; i < n_labels; i++)
        if (strcmp(f->labels[i], labels[i]) != 0)
            return false;
    if (type == OP_METRIC_HISTOGRAM) {
        if (f->n_bounds != n_bounds)
            return false;
        for (size_t i = 0; i < n_bounds; i++)
            if (f->bounds[i] != bounds[i])
                return false;
    }
    return true;
}

static op_metric_child *child_new(op_metric *fam, char **values, uint64_t hash);

static void family_free(op_metric *f)
{
    if (!f)
        return;
    free(f->name);
    free(f->help);
    free_strv(f->labels, f->n_labels);
    free(f->bounds);
    free_strv(f->le_text, f->n_bounds);
    free(f->table);
    free(f);
}

static op_metric *family_new(const char *name, const char *help, op_metric_type type,
                             const char *const *labels, size_t n_labels, const double *bounds,
                             size_t n_bounds)
{
    op_metric *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->type = type;
    f->n_labels = n_labels;
    f->n_bounds = n_bounds;
    f->name = xstrdup(name);
    f->help = xstrdup(help ? help : "");
    f->labels = dup_strv(labels, n_labels);
    f->table = calloc(INITIAL_TABLE, sizeof *f->table);
    f->table_size = INITIAL_TABLE;
    bool ok = f->name && f->help && f->labels && f->table;
    if (ok && type == OP_METRIC_HISTOGRAM) {
        f->bounds = malloc(n_bounds * sizeof *f->bounds);
        f->le_text = calloc(n_bounds, sizeof *f->le_text);
        ok = f->bounds && f->le_text;
        for (size_t i = 0; ok && i < n_bounds; i++) {
            char buf[NUM_BUF];
            f->bounds[i] = bounds[i];
            fmt_double(bounds[i], buf);
            ok = (f->le_text[i] = xstrdup(buf)) != NULL;
        }
    }
    if (!ok || pthread_rwlock_init(&f->lock, NULL) != 0) {
        family_free(f);
        return NULL;
    }
    atomic_init(&f->head, NULL);
    atomic_init(&f->next, NULL);
    if (n_labels == 0) {
        char **none = calloc(1, sizeof *none);
        f->solo = none ? child_new(f, none, 0) : NULL;
        if (!f->solo) { /* child_new freed none */
            pthread_rwlock_destroy(&f->lock);
            family_free(f);
            return NULL;
        }
        f->tail = f->solo;
        atomic_store_explicit(&f->head, f->solo, memory_order_release);
    }
    return f;
}

/* Checks the label names; returns their count, or -1 with *why set. */
static long check_labels(const char *const *labels, op_metric_type type, const char **why)
{
    size_t n = 0;
    for (; labels && labels[n]; n++) {
        if (n >= OP_METRIC_MAX_LABELS) {
            *why = "too many label names";
            return -1;
        }
        if (!valid_label_name(labels[n])) {
            *why = "invalid label name";
            return -1;
        }
        if (type == OP_METRIC_HISTOGRAM && strcmp(labels[n], "le") == 0) {
            *why = "label name le is reserved for histogram buckets";
            return -1;
        }
        for (size_t j = 0; j < n; j++) {
            if (strcmp(labels[j], labels[n]) == 0) {
                *why = "duplicate label name";
                return -1;
            }
        }
    }
    return (long)n;
}

/* Resolves the bucket bounds: the default set for NULL/0, a trailing +Inf
 * dropped (it is implied); returns false if not finite and strictly increasing. */
static bool check_bounds(const double **bounds, size_t *n)
{
    if (!*bounds || *n == 0) {
        *bounds = OP_METRIC_DEFAULT_SECONDS_BUCKETS;
        *n = OP_METRIC_DEFAULT_SECONDS_BUCKETS_N;
    }
    if (isinf((*bounds)[*n - 1]) && (*bounds)[*n - 1] > 0)
        (*n)--;
    for (size_t i = 0; i < *n; i++) {
        if (!isfinite((*bounds)[i]))
            return false;
        if (i > 0 && !((*bounds)[i] > (*bounds)[i - 1]))
            return false;
    }
    return true;
}

static op_metric *register_family(op_metric_type type, const char *name, const char *help,
                                  const char *const *labels, const double *bounds,
                                  size_t n_bounds)
{
    if (!valid_metric_name(name))
        return refuse(name, "invalid metric name");
    const char *why = NULL;
    long nl = check_labels(labels, type, &why);
    if (nl < 0)
        return refuse(name, why);
    if (type == OP_METRIC_HISTOGRAM && !check_bounds(&bounds, &n_bounds))
        return refuse(name, "histogram buckets must be finite and strictly increasing");

    pthread_mutex_lock(&g_lock);
    op_metric *found = NULL;
    const char *clash = NULL;
    for (op_metric *f = atomic_load_explicit(&g_head, memory_order_relaxed); f;
         f = atomic_load_explicit(&f->next, memory_order_relaxed)) {
        if (strcmp(f->name, name) == 0) {
            found = f;
            if (!same_shape(f, type, labels, (size_t)nl, bounds, n_bounds))
                clash = "already registered with another type, labels or buckets";
            break;
        }
        if ((f->type == OP_METRIC_HISTOGRAM && is_histogram_series(f->name, name)) ||
            (type == OP_METRIC_HISTOGRAM && is_histogram_series(name, f->name))) {
            clash = "collides with a histogram's _bucket/_sum/_count series";
            break;
        }
    }
    if (clash) {
        pthread_mutex_unlock(&g_lock);
        return refuse(name, clash);
    }
    if (found) {
        pthread_mutex_unlock(&g_lock);
        return found;
    }
    op_metric *f = family_new(name, help, type, labels, (size_t)nl, bounds, n_bounds);
    if (f) {
        if (g_tail)
            atomic_store_explicit(&g_tail->next, f, memory_order_release);
        else
            atomic_store_explicit(&g_head, f, memory_order_release);
        g_tail = f;
    }
    pthread_mutex_unlock(&g_lock);
    return f ? f : refuse(name, "out of memory");
}

op_metric *op_metric_counter(const char *name, const char *help, const char *const *label_names)
{
    return register_family(OP_METRIC_COUNTER, name, help, label_names, NULL, 0);
}

op_metric *op_metric_gauge(const char *name, const char *help, const char *const *label_names)
{
    return register_family(OP_METRIC_GAUGE, name, help, label_names, NULL, 0);
}

op_metric *op_metric_histogram(const char *name, const char *help, const char *const *label_names,
                               const double *buckets, size_t n_buckets)
{
    return register_family(OP_METRIC_HISTOGRAM, name, help, label_names, buckets, n_buckets);
}

/* ------------------------------------------------------------------------ */
/* Children                                                                 */
/* ------------------------------------------------------------------------ */

/* FNV-1a over the values, each followed by 0xFF: a byte that valid UTF-8
 * never holds, so ("a","bc") and ("ab","c") hash apart. */
static uint64_t values_hash(const char *const *values, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        for (const unsigned char *p = (const unsigned char *)values[i]; *p; p++)
            h = (h ^ *p) * 0x100000001b3ull;
        h = (h ^ 0xFF) * 0x100000001b3ull;
    }
    return h;
}

/* Takes ownership of values (also on failure). */
static op_metric_child *child_new(op_metric *fam, char **values, uint64_t hash)
{
    op_metric_child *c = calloc(1, sizeof *c);
    if (!c) {
        free_strv(values, fam->n_labels);
        return NULL;
    }
    c->fam = fam;
    c->values = values;
    c->hash = hash;
    atomic_init(&c->next, NULL);
    atomic_init(&c->bits, double_to_bits(0.0));
    if (fam->type == OP_METRIC_HISTOGRAM) {
        c->buckets = malloc((fam->n_bounds + 1) * sizeof *c->buckets);
        if (!c->buckets) {
            free_strv(values, fam->n_labels);
            free(c);
            return NULL;
        }
        for (size_t i = 0; i <= fam->n_bounds; i++)
            atomic_init(&c->buckets[i], 0);
    }
    return c;
}

/* Caller holds fam->lock (read or write). */
static op_metric_child *table_find(const op_metric *fam, const char *const *values, uint64_t h)
{
    for (op_metric_child *c = fam->table[h & (fam->table_size - 1)]; c; c = c->hnext) {
        if (c->hash != h)
            continue;
        size_t i = 0;
        while (i < fam->n_labels && strcmp(c->values[i], values[i]) == 0)
            i++;
        if (i == fam->n_labels)
            return c;
    }
    return NULL;
}

/* Caller holds fam->lock for writing. Doubling keeps chains short; a failed
 * allocation just leaves them longer. */
static void table_grow(op_metric *fam)
{
    size_t size = fam->table_size * 2;
    op_metric_child **t = calloc(size, sizeof *t);
    if (!t)
        return;
    for (size_t i = 0; i < fam->table_size; i++) {
        op_metric_child *c = fam->table[i];
        while (c) {
            op_metric_child *next = c->hnext;
            c->hnext = t[c->hash & (size - 1)];
            t[c->hash & (size - 1)] = c;
            c = next;
        }
    }
    free(fam->table);
    fam->table = t;
    fam->table_size = size;
}

/* Caller holds fam->lock for writing and has checked values are not there. */
static op_metric_child *table_insert(op_metric *fam, const char *const *values, uint64_t h)
{
    char **copy = dup_strv(values, fam->n_labels);
    op_metric_child *c = copy ? child_new(fam, copy, h) : NULL;
    if (!c)
        return NULL;
    if (fam->n_children >= fam->table_size)
        table_grow(fam);
    size_t slot = h & (fam->table_size - 1);
    c->hnext = fam->table[slot];
    fam->table[slot] = c;
    if (fam->tail)
        atomic_store_explicit(&fam->tail->next, c, memory_order_release);
    else
        atomic_store_explicit(&fam->head, c, memory_order_release);
    fam->tail = c;
    return c;
}

/* Caller holds fam->lock for writing; the family is at its cap. */
static op_metric_child *overflow_child(op_metric *fam)
{
    const char *vals[OP_METRIC_MAX_LABELS];
    for (size_t i = 0; i < fam->n_labels; i++)
        vals[i] = OP_METRIC_OVERFLOW_VALUE;
    uint64_t h = values_hash(vals, fam->n_labels);
    op_metric_child *c = table_find(fam, vals, h);
    if (c)
        return c;
    if (!fam->overflow_logged) {
        fam->overflow_logged = true;
        char cap[24];
        snprintf(cap, sizeof cap, "%d", OP_METRIC_MAX_CHILDREN);
        PL_LOG_WARN("metrics.cardinality_capped", "name", fam->name, "max_children", cap,
                    "overflow_value", OP_METRIC_OVERFLOW_VALUE);
    }
    return table_insert(fam, vals, h); /* not counted: the cap is on real sets */
}

static op_metric_child *lookup(op_metric *fam, const char *const *values)
{
    uint64_t h = values_hash(values, fam->n_labels);
    pthread_rwlock_rdlock(&fam->lock);
    op_metric_child *c = table_find(fam, values, h);
    pthread_rwlock_unlock(&fam->lock);
    if (c)
        return c;

    pthread_rwlock_wrlock(&fam->lock);
    c = table_find(fam, values, h); /* another thread may have won the race */
    if (!c) {
        if (fam->n_children >= OP_METRIC_MAX_CHILDREN) {
            c = overflow_child(fam);
        } else if ((c = table_insert(fam, values, h)) != NULL) {
            fam->n_children++;
        }
    }
    pthread_rwlock_unlock(&fam->lock);
    return c;
}

op_metric_child *op_metric_child_get(op_metric *fam, const char *const *values)
{
    if (!fam)
        return NULL;
    if (fam->n_labels == 0)
        return fam->solo;
    if (!values)
        return NULL;
    bool clean = true;
    for (size_t i = 0; i < fam->n_labels; i++) {
        if (!values[i])
            return NULL;
        clean = clean && utf8_valid(values[i]);
    }
    if (clean)
        return lookup(fam, values);

    /* Rare path: key on the sanitized values, so the same bad input always
     * lands on the same child and the scrape stays valid UTF-8. */
    char *fixed[OP_METRIC_MAX_LABELS] = {0};
    op_metric_child *c = NULL;
    size_t i = 0;
    for (; i < fam->n_labels; i++)
        if (!(fixed[i] = utf8_sanitized(values[i])))
            break;
    if (i == fam->n_labels)
        c = lookup(fam, (const char *const *)fixed);
    for (size_t j = 0; j < i; j++)
        free(fixed[j]);
    return c;
}

op_metric_child *op_metric_with(op_metric *fam, ...)
{
    if (!fam)
        return NULL;
    const char *values[OP_METRIC_MAX_LABELS];
    va_list ap;
    va_start(ap, fam);
    for (size_t i = 0; i < fam->n_labels; i++)
        values[i] = va_arg(ap, const char *);
    va_end(ap);
    return op_metric_child_get(fam, values);
}

/* ------------------------------------------------------------------------ */
/* Updates                                                                  */
/* ------------------------------------------------------------------------ */

void op_counter_add(op_metric_child *c, double v)
{
    if (!c || c->fam->type != OP_METRIC_COUNTER || !(v >= 0))
        return;
    atomic_add_double(&c->bits, v);
}

void op_counter_inc(op_metric_child *c)
{
    op_counter_add(c, 1.0);
}

void op_gauge_set(op_metric_child *c, double v)
{
    if (!c || c->fam->type != OP_METRIC_GAUGE)
        return;
    atomic_store_explicit(&c->bits, double_to_bits(v), memory_order_relaxed);
}

void op_gauge_add(op_metric_child *c, double v)
{
    if (!c || c->fam->type != OP_METRIC_GAUGE)
        return;
    atomic_add_double(&c->bits, v);
}

void op_histogram_observe(op_metric_child *c, double v)
{
    if (!c || c->fam->type != OP_METRIC_HISTOGRAM || isnan(v))
        return;
    const double *b = c->fam->bounds;
    size_t lo = 0, hi = c->fam->n_bounds; /* first bound >= v, or n for +Inf */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (b[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    atomic_fetch_add_explicit(&c->buckets[lo], 1, memory_order_relaxed);
    atomic_add_double(&c->bits, v);
}

double op_metric_value(const op_metric_child *c)
{
    if (!c)
        return 0.0;
    if (c->fam->type == OP_METRIC_HISTOGRAM) {
        uint64_t n = 0;
        for (size_t i = 0; i <= c->fam->n_bounds; i++)
            n += atomic_load_explicit(&c->buckets[i], memory_order_relaxed);
        return (double)n;
    }
    return bits_to_double(atomic_load_explicit(&c->bits, memory_order_relaxed));
}

/* ------------------------------------------------------------------------ */
/* Exposition                                                               */
/* ------------------------------------------------------------------------ */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
} sbuf;

static void sb_putn(sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (b->len + n + 1 > cap)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_puts(sbuf *b, const char *s)
{
    sb_putn(b, s, strlen(s));
}

static void sb_num(sbuf *b, double v)
{
    char buf[NUM_BUF];
    fmt_double(v, buf);
    sb_puts(b, buf);
}

/* HELP text escapes backslash and newline; label values also the quote. */
static void sb_escaped(sbuf *b, const char *s, bool quote)
{
    const char *run = s;
    for (; *s; s++) {
        const char *rep = *s == '\\' ? "\\\\" : *s == '\n' ? "\\n"
                        : (quote && *s == '"') ? "\\\"" : NULL;
        if (!rep)
            continue;
        sb_putn(b, run, (size_t)(s - run));
        sb_puts(b, rep);
        run = s + 1;
    }
    sb_puts(b, run);
}

/* {l1="v1",...,le="x"}; nothing at all when there is no label to print. */
static void sb_labels(sbuf *b, const op_metric_child *c, const char *le)
{
    const op_metric *f = c->fam;
    if (f->n_labels == 0 && !le)
        return;
    sb_puts(b, "{");
    for (size_t i = 0; i < f->n_labels; i++) {
        if (i)
            sb_puts(b, ",");
        sb_puts(b, f->labels[i]);
        sb_puts(b, "=\"");
        sb_escaped(b, c->values[i], true);
        sb_puts(b, "\"");
    }
    if (le) {
        sb_puts(b, f->n_labels ? ",le=\"" : "le=\"");
        sb_puts(b, le);
        sb_puts(b, "\"");
    }
    sb_puts(b, "}");
}

static void sb_sample(sbuf *b, const op_metric_child *c, const char *suffix, const char *le,
                      double v)
{
    sb_puts(b, c->fam->name);
    sb_puts(b, suffix);
    sb_labels(b, c, le);
    sb_puts(b, " ");
    sb_num(b, v);
    sb_puts(b, "\n");
}

/* Buckets are read one by one while others observe, so they may be a moment
 * apart; summing what was read keeps the buckets cumulative and makes _count
 * equal the +Inf bucket, whatever happened meanwhile. */
static void render_histogram_child(sbuf *b, const op_metric_child *c)
{
    const op_metric *f = c->fam;
    uint64_t cum = 0;
    for (size_t i = 0; i < f->n_bounds; i++) {
        cum += atomic_load_explicit(&c->buckets[i], memory_order_relaxed);
        sb_sample(b, c, "_bucket", f->le_text[i], (double)cum);
    }
    cum += atomic_load_explicit(&c->buckets[f->n_bounds], memory_order_relaxed);
    sb_sample(b, c, "_bucket", "+Inf", (double)cum);
    sb_sample(b, c, "_sum", NULL,
              bits_to_double(atomic_load_explicit(&c->bits, memory_order_relaxed)));
    sb_sample(b, c, "_count", NULL, (double)cum);
}

static const char *type_name(op_metric_type t)
{
    return t == OP_METRIC_COUNTER ? "counter" : t == OP_METRIC_GAUGE ? "gauge" : "histogram";
}

static void render_family(sbuf *b, const op_metric *f)
{
    sb_puts(b, "# HELP ");
    sb_puts(b, f->name);
    sb_puts(b, " ");
    sb_escaped(b, f->help, false);
    sb_puts(b, "\n# TYPE ");
    sb_puts(b, f->name);
    sb_puts(b, " ");
    sb_puts(b, type_name(f->type));
    sb_puts(b, "\n");
    for (const op_metric_child *c = atomic_load_explicit(&f->head, memory_order_acquire); c;
         c = atomic_load_explicit(&c->next, memory_order_acquire)) {
        if (f->type == OP_METRIC_HISTOGRAM)
            render_histogram_child(b, c);
        else
            sb_sample(b, c, "", NULL,
                      bits_to_double(atomic_load_explicit(&c->bits, memory_order_relaxed)));
    }
}

int op_metrics_render(char **out, size_t *out_len)
{
    sbuf b = {0};
    sb_puts(&b, ""); /* an empty registry still yields a valid empty string */
    for (const op_metric *f = atomic_load_explicit(&g_head, memory_order_acquire); f;
         f = atomic_load_explicit(&f->next, memory_order_acquire))
        render_family(&b, f);
    if (b.oom) {
        free(b.p);
        return -ENOMEM;
    }
    *out = b.p;
    if (out_len)
        *out_len = b.len;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Process identity                                                         */
/* ------------------------------------------------------------------------ */

static const char *compiler_id(void)
{
#if defined(__clang__)
    return "clang " __clang_version__;
#elif defined(__GNUC__)
    return "gcc " __VERSION__;
#else
    return "unknown";
#endif
}

/* When the process started, from the kernel (boot time + start ticks) as
 * Prometheus' own process collector does; now, if /proc cannot tell. */
static double process_start_seconds(void)
{
    double now = (double)pl_time_wall_ms() / 1000.0;
    char *stat = NULL, *self = NULL;
    double result = now;
    if (pl_file_read_all("/proc/stat", 1 << 22, &stat, NULL) != 0 ||
        pl_file_read_all("/proc/self/stat", 1 << 16, &self, NULL) != 0)
        goto done;
    const char *bt = strstr(stat, "\nbtime ");
    const char *p = strrchr(self, ')'); /* comm may hold spaces and parens */
    long ticks = sysconf(_SC_CLK_TCK);
    if (!bt || !p || ticks <= 0)
        goto done;
    unsigned long long btime = strtoull(bt + 7, NULL, 10);
    p++; /* the space before field 3 (state); starttime is field 22 */
    for (int field = 3; field < 22 && p; field++)
        p = strchr(p + 1, ' ');
    if (!p)
        goto done;
    unsigned long long start = strtoull(p + 1, NULL, 10);
    if (btime > 0)
        result = (double)btime + (double)start / (double)ticks;
done:
    free(stat);
    free(self);
    return result;
}

void op_metrics_register_build_info(const char *version, const char *revision)
{
    static const char *const labels[] = {"version", "revision", "compiler", NULL};
    op_metric *info = op_metric_gauge(
        "outpost_build_info",
        "A metric with a constant 1 value labeled by the version, revision and compiler "
        "outpostd was built from.",
        labels);
    op_gauge_set(op_metric_with(info, version ? version : "unknown",
                                revision ? revision : "unknown", compiler_id()),
                 1);
    op_metric *start = op_metric_gauge("outpost_process_start_time_seconds",
                                       "Start time of the process since the Unix epoch, in seconds.",
                                       NULL);
    op_gauge_set(op_metric_child_get(start, NULL), process_start_seconds());
}
