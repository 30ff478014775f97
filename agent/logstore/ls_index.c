/*
 * The log store's in-memory structures: interned strings, record summaries
 * in seq-ordered chunks, and time-ordered indexes. None of them locks: the
 * store holds its rwlock (write for changes, read for lookups).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "logstore/ls_internal.h"
#include "platform/pl_hash.h"

/* ======================================================================== */
/* Interned strings                                                         */
/* ======================================================================== */

void ls_atoms_free(ls_atoms *a)
{
    for (uint32_t i = 0; i < a->n; i++)
        free(a->str[i]);
    free(a->str);
    free(a->len);
    free(a->slot);
    memset(a, 0, sizeof *a);
}

static uint32_t atom_slot(const ls_atoms *a, const char *s, size_t n, bool *found)
{
    uint32_t mask = a->nslot - 1;
    uint32_t i = (uint32_t)pl_fnv1a64(s, n) & mask;
    for (;;) {
        uint32_t v = a->slot[i];
        if (v == 0) {
            *found = false;
            return i;
        }
        if (a->len[v - 1] == n && memcmp(a->str[v - 1], s, n) == 0) {
            *found = true;
            return i;
        }
        i = (i + 1) & mask;
    }
}

int64_t ls_atoms_find(const ls_atoms *a, const char *s, size_t n)
{
    if (a->nslot == 0)
        return -1;
    bool found;
    uint32_t i = atom_slot(a, s, n, &found);
    return found ? (int64_t)a->slot[i] - 1 : -1;
}

static int atoms_grow(ls_atoms *a)
{
    uint32_t nslot = a->nslot ? a->nslot * 2 : 256;
    uint32_t *slot = calloc(nslot, sizeof *slot);
    if (!slot)
        return -ENOMEM;
    for (uint32_t k = 0; k < a->n; k++) {
        uint32_t i = (uint32_t)pl_fnv1a64(a->str[k], a->len[k]) & (nslot - 1);
        while (slot[i])
            i = (i + 1) & (nslot - 1);
        slot[i] = k + 1;
    }
    free(a->slot);
    a->slot = slot;
    a->nslot = nslot;
    return 0;
}

int64_t ls_atoms_intern(ls_atoms *a, const char *s, size_t n)
{
    if ((a->n + 1) * 2 > a->nslot && atoms_grow(a) != 0)
        return -ENOMEM;
    bool found;
    uint32_t i = atom_slot(a, s, n, &found);
    if (found)
        return a->slot[i] - 1;
    if (a->n == a->cap) {
        uint32_t cap = a->cap ? a->cap * 2 : 256;
        char **str = realloc(a->str, cap * sizeof *str);
        if (!str)
            return -ENOMEM;
        a->str = str;
        uint32_t *len = realloc(a->len, cap * sizeof *len);
        if (!len)
            return -ENOMEM;
        a->len = len;
        a->cap = cap;
    }
    char *copy = malloc(n + 1);
    if (!copy)
        return -ENOMEM;
    memcpy(copy, s, n);
    copy[n] = '\0';
    a->str[a->n] = copy;
    a->len[a->n] = (uint32_t)n;
    a->slot[i] = ++a->n;
    return a->n - 1;
}

/* ======================================================================== */
/* Summaries                                                                */
/* ======================================================================== */

void ls_sums_free(ls_sums *ss)
{
    for (size_t i = 0; i < ss->n; i++)
        if (ss->v[i].c) {
            free(ss->v[i].c->meta);
            free(ss->v[i].c);
        }
    free(ss->v);
    memset(ss, 0, sizeof *ss);
}

ls_sum *ls_sums_add(ls_sums *ss, uint64_t seq, ls_key key, uint64_t *pos)
{
    if (ss->next % LS_CHUNK == 0) {
        if (ss->n == 0)
            ss->base = ss->next / LS_CHUNK;
        if (ss->n == ss->cap) {
            size_t cap = ss->cap ? ss->cap * 2 : 16;
            ls_cref *v = realloc(ss->v, cap * sizeof *v);
            if (!v)
                return NULL;
            ss->v = v;
            ss->cap = cap;
        }
        ls_chunk *c = malloc(sizeof *c);
        if (!c)
            return NULL;
        c->n = c->n_dead = 0;
        c->kmin = c->kmax = key;
        c->meta = NULL;
        c->meta_n = c->meta_cap = 0;
        ss->v[ss->n++] = (ls_cref){c, seq, seq};
    }
    ls_cref *r = &ss->v[ss->n - 1];
    ls_chunk *c = r->c;
    if (!c) /* the tail chunk is never freed; defensive */
        return NULL;
    ls_sum *s = &c->s[c->n++];
    memset(s, 0, sizeof *s);
    s->key = key;
    s->seq = seq;
    if (c->n == 1)
        r->first_seq = seq;
    r->last_seq = seq;
    if (ls_key_cmp(key, c->kmin) < 0)
        c->kmin = key;
    if (ls_key_cmp(key, c->kmax) > 0)
        c->kmax = key;
    *pos = ss->next++;
    return s;
}

int64_t ls_sums_find_seq(const ls_sums *ss, uint64_t seq)
{
    size_t lo = 0, hi = ss->n; /* last cref with first_seq <= seq */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ss->v[mid].first_seq <= seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return -1;
    const ls_cref *r = &ss->v[lo - 1];
    if (!r->c || seq > r->last_seq)
        return -1;
    uint32_t a = 0, b = r->c->n;
    while (a < b) {
        uint32_t mid = a + (b - a) / 2;
        if (r->c->s[mid].seq < seq)
            a = mid + 1;
        else
            b = mid;
    }
    if (a >= r->c->n || r->c->s[a].seq != seq)
        return -1;
    return (int64_t)((ss->base + lo - 1) * LS_CHUNK + a);
}

uint32_t ls_sums_meta(ls_sums *ss, uint64_t pos, const uint32_t *pairs, uint32_t n)
{
    ls_chunk *c = ls_sums_chunk(ss, pos);
    if (!c || n == 0)
        return 0;
    uint32_t need = 1 + 2 * n;
    if (c->meta_n + need > c->meta_cap) {
        uint32_t cap = c->meta_cap ? c->meta_cap * 2 : 4096;
        while (cap < c->meta_n + need)
            cap *= 2;
        uint32_t *m = realloc(c->meta, cap * sizeof *m);
        if (!m)
            return 0;
        c->meta = m;
        c->meta_cap = cap;
    }
    uint32_t off = c->meta_n;
    c->meta[off] = n;
    memcpy(&c->meta[off + 1], pairs, 2 * n * sizeof *pairs);
    c->meta_n += need;
    return off + 1;
}

/* ======================================================================== */
/* Time-ordered index                                                       */
/* ======================================================================== */

void ls_tix_free(ls_tix *t)
{
    for (uint32_t i = 0; i < t->nb; i++)
        free(t->b[i]);
    free(t->b);
    memset(t, 0, sizeof *t);
}

/* Compares the entry at pos with (k, seq). */
static int cmp_entry(const ls_sums *ss, uint64_t pos, ls_key k, uint64_t seq)
{
    const ls_sum *s = ls_sums_at(ss, pos);
    int c = ls_key_cmp(s->key, k);
    if (c != 0)
        return c;
    return s->seq < seq ? -1 : s->seq > seq;
}

static ls_key key_of(const ls_sums *ss, uint64_t pos)
{
    return ls_sums_at(ss, pos)->key;
}

static int blk_insert_at(ls_tix *t, uint32_t bi, ls_blk *b)
{
    if (t->nb == t->cap) {
        uint32_t cap = t->cap ? t->cap * 2 : 8;
        ls_blk **v = realloc(t->b, cap * sizeof *v);
        if (!v)
            return -ENOMEM;
        t->b = v;
        t->cap = cap;
    }
    memmove(&t->b[bi + 1], &t->b[bi], (t->nb - bi) * sizeof *t->b);
    t->b[bi] = b;
    t->nb++;
    return 0;
}

static void blk_remove_at(ls_tix *t, uint32_t bi)
{
    free(t->b[bi]);
    memmove(&t->b[bi], &t->b[bi + 1], (t->nb - bi - 1) * sizeof *t->b);
    t->nb--;
}

int ls_tix_insert(ls_tix *t, const ls_sums *ss, uint64_t pos)
{
    const ls_sum *s = ls_sums_at(ss, pos);
    ls_key k = s->key;
    uint64_t seq = s->seq;
    if (t->nb == 0 ||
        cmp_entry(ss, t->b[t->nb - 1]->pos[t->b[t->nb - 1]->n - 1], k, seq) < 0) {
        ls_blk *last = t->nb ? t->b[t->nb - 1] : NULL;
        if (!last || last->n == LS_BLK) {
            last = malloc(sizeof *last);
            if (!last)
                return -ENOMEM;
            last->n = 0;
            if (blk_insert_at(t, t->nb, last) != 0) {
                free(last);
                return -ENOMEM;
            }
        }
        last->pos[last->n++] = pos;
        t->n++;
        return 0;
    }
    /* The last block whose first entry is <= (k, seq), or block 0. */
    uint32_t lo = 0, hi = t->nb;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (cmp_entry(ss, t->b[mid]->pos[0], k, seq) <= 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    uint32_t bi = lo ? lo - 1 : 0;
    ls_blk *b = t->b[bi];
    uint32_t a = 0, e = b->n; /* first entry > (k, seq) */
    while (a < e) {
        uint32_t mid = a + (e - a) / 2;
        if (cmp_entry(ss, b->pos[mid], k, seq) <= 0)
            a = mid + 1;
        else
            e = mid;
    }
    if (b->n == LS_BLK) {
        ls_blk *nb = malloc(sizeof *nb);
        if (!nb)
            return -ENOMEM;
        uint32_t half = LS_BLK / 2;
        nb->n = LS_BLK - half;
        memcpy(nb->pos, &b->pos[half], nb->n * sizeof nb->pos[0]);
        if (blk_insert_at(t, bi + 1, nb) != 0) {
            free(nb);
            return -ENOMEM;
        }
        b->n = half;
        if (a > half) {
            b = nb;
            a -= half;
        }
    }
    memmove(&b->pos[a + 1], &b->pos[a], (b->n - a) * sizeof b->pos[0]);
    b->pos[a] = pos;
    b->n++;
    t->n++;
    return 0;
}

/* k is below the entry (lower: entry >= k; upper: entry > k). */
static bool past(const ls_sums *ss, uint64_t pos, ls_key k, bool upper)
{
    int c = ls_key_cmp(key_of(ss, pos), k);
    return upper ? c > 0 : c >= 0;
}

ls_tpos ls_tix_seek(const ls_tix *t, const ls_sums *ss, ls_key k, bool upper)
{
    uint32_t lo = 0, hi = t->nb; /* first block whose last entry is past k */
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (past(ss, t->b[mid]->pos[t->b[mid]->n - 1], k, upper))
            hi = mid;
        else
            lo = mid + 1;
    }
    if (lo == t->nb)
        return (ls_tpos){t->nb, 0};
    const ls_blk *b = t->b[lo];
    uint32_t a = 0, e = b->n;
    while (a < e) {
        uint32_t mid = a + (e - a) / 2;
        if (past(ss, b->pos[mid], k, upper))
            e = mid;
        else
            a = mid + 1;
    }
    return (ls_tpos){lo, a};
}

static bool dead(const ls_sums *ss, uint64_t pos)
{
    const ls_sum *s = ls_sums_at(ss, pos);
    return !s || (s->flags & LS_S_DEAD);
}

void ls_tix_purge_prefix(ls_tix *t, const ls_sums *ss)
{
    uint32_t whole = 0;
    while (whole < t->nb) {
        const ls_blk *b = t->b[whole];
        uint32_t d = 0;
        while (d < b->n && dead(ss, b->pos[d]))
            d++;
        if (d < b->n) {
            if (d > 0) {
                ls_blk *w = t->b[whole];
                memmove(w->pos, &w->pos[d], (w->n - d) * sizeof w->pos[0]);
                w->n -= d;
                t->n -= d;
            }
            break;
        }
        t->n -= b->n;
        whole++;
    }
    if (whole == 0)
        return;
    for (uint32_t i = 0; i < whole; i++)
        free(t->b[i]);
    memmove(t->b, &t->b[whole], (t->nb - whole) * sizeof *t->b);
    t->nb -= whole;
}

void ls_tix_purge_range(ls_tix *t, const ls_sums *ss, ls_key lo, ls_key hi)
{
    ls_tpos p = ls_tix_seek(t, ss, lo, false);
    uint32_t bi = p.b;
    while (bi < t->nb) {
        ls_blk *b = t->b[bi];
        if (ls_key_cmp(key_of(ss, b->pos[0]), hi) > 0)
            break;
        uint32_t w = 0;
        for (uint32_t r = 0; r < b->n; r++)
            if (!dead(ss, b->pos[r]))
                b->pos[w++] = b->pos[r];
        t->n -= b->n - w;
        b->n = w;
        if (w == 0)
            blk_remove_at(t, bi);
        else
            bi++;
    }
}
