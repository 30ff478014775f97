/*
 * op_config: YAML -> typed config. See op_config.h and docs/config.md.
 *
 * Two passes. The first turns libyaml's event stream into a small tree of
 * nodes that keep their 1-based positions; it enforces the structural limits
 * (size, depth, one document, no anchors/aliases/tags) and flags duplicate
 * mapping keys. The second walks the tree against a table per section and
 * fills the op_config structs, collecting every error it meets. Cross-entry
 * checks (duplicate ids, duplicate token hashes) run last. Errors are sorted
 * by position before they are handed back, so they read in file order.
 */
#include "config/op_config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

#include "platform/pl_file.h"

/* More than this many diagnostics helps nobody and costs memory on hostile
 * input; the rest are dropped and one closing line says so. */
#define MAX_DIAGS 100
#define MIB ((size_t)1 << 20)
#define MAX_SIZE_BYTES ((uint64_t)1 << 40) /* 1 TiB: any size key */
#define PATH_BUF 256
#define MAX_FIELDS 16 /* keys of the largest section */

/* ======================================================================== */
/* Diagnostics                                                              */
/* ======================================================================== */

typedef struct diag {
    int line, col;
    size_t seq; /* insertion order: keeps the sort stable */
    char *msg;  /* without the "FILE:L:C: " prefix */
} diag;

typedef struct ctx {
    const char *name;     /* file name for messages */
    const char *base_dir; /* NULL: leave relative paths as written */
    diag *d;
    size_t nd, cap;
    size_t dropped;
    bool oom;
} ctx;

static void diag_add(ctx *c, int line, int col, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void diag_add(ctx *c, int line, int col, const char *fmt, ...)
{
    if (c->nd >= MAX_DIAGS) {
        c->dropped++;
        return;
    }
    if (c->nd == c->cap) {
        size_t ncap = c->cap ? c->cap * 2 : 8;
        diag *nd = realloc(c->d, ncap * sizeof *nd);
        if (!nd) {
            c->oom = true;
            return;
        }
        c->d = nd;
        c->cap = ncap;
    }
    va_list ap;
    va_start(ap, fmt);
    char *msg = NULL;
    int r = vasprintf(&msg, fmt, ap);
    va_end(ap);
    if (r < 0) {
        c->oom = true;
        return;
    }
    c->d[c->nd] = (diag){.line = line, .col = col, .seq = c->nd, .msg = msg};
    c->nd++;
}

static int diag_cmp(const void *a, const void *b)
{
    const diag *x = a, *y = b;
    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    if (x->col != y->col)
        return x->col < y->col ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static void diags_free(ctx *c)
{
    for (size_t i = 0; i < c->nd; i++)
        free(c->d[i].msg);
    free(c->d);
    c->d = NULL;
    c->nd = c->cap = 0;
}

/* Moves the collected diagnostics, sorted and prefixed, into errs. */
static void diags_export(ctx *c, op_config_errors *errs)
{
    if (c->oom)
        diag_add(c, 0, 0, "out of memory");
    qsort(c->d, c->nd, sizeof *c->d, diag_cmp);
    size_t n = c->nd + (c->dropped ? 1 : 0);
    if (!errs || n == 0) {
        diags_free(c);
        return;
    }
    errs->items = calloc(n, sizeof *errs->items);
    if (!errs->items) {
        diags_free(c);
        return;
    }
    size_t k = 0;
    for (size_t i = 0; i < c->nd; i++) {
        char *m = NULL;
        if (asprintf(&m, "%s:%d:%d: %s", c->name, c->d[i].line, c->d[i].col, c->d[i].msg) >= 0)
            errs->items[k++].message = m;
    }
    if (c->dropped) {
        char *m = NULL;
        if (asprintf(&m, "%s:0:0: %zu more errors not shown", c->name, c->dropped) >= 0)
            errs->items[k++].message = m;
    }
    errs->n = k;
    diags_free(c);
}

/* Copies a value for a message: printable, at most ~60 bytes, never cut
 * inside a UTF-8 sequence (libyaml has already validated the encoding). */
static const char *show(char *buf, size_t sz, const char *s, size_t len)
{
    size_t o = 0, limit = sz - 8;
    for (size_t i = 0; i < len && o < limit; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x20 && ch != 0x7f) {
            buf[o++] = (char)ch;
        } else if (o + 4 < limit) {
            o += (size_t)snprintf(buf + o, sz - o, "\\x%02x", ch);
        } else {
            break;
        }
        if (o >= limit && i + 1 < len) {
            while (o > 0 && ((unsigned char)buf[o - 1] & 0xc0) == 0x80)
                o--;
            if (o > 0 && ((unsigned char)buf[o - 1] & 0xc0) == 0xc0)
                o--;
            memcpy(buf + o, "...", 4);
            return buf;
        }
    }
    buf[o] = '\0';
    return buf;
}

/* ======================================================================== */
/* The node tree                                                            */
/* ======================================================================== */

typedef enum nkind { N_SCALAR, N_SEQ, N_MAP } nkind;

typedef struct node {
    nkind kind;
    bool plain;  /* scalar written without quotes (only those can be null) */
    bool dup;    /* a mapping key seen earlier in the same mapping (first) */
    bool poison; /* stands in for a rejected alias: already reported */
    int line, col;
    char *s; /* scalar text, NUL-terminated; may contain NULs (len says) */
    size_t len;
    struct node **kids; /* sequence: items; mapping: key0, value0, key1, ... */
    size_t n, cap;
    const struct node *first; /* for a dup key: its first occurrence */
} node;

static void node_free(node *n)
{
    if (!n)
        return;
    for (size_t i = 0; i < n->n; i++)
        node_free(n->kids[i]);
    free(n->kids);
    free(n->s);
    free(n);
}

static bool is_null(const node *n)
{
    if (n->kind != N_SCALAR || !n->plain)
        return false;
    return n->len == 0 || strcmp(n->s, "~") == 0 || strcmp(n->s, "null") == 0 ||
           strcmp(n->s, "Null") == 0 || strcmp(n->s, "NULL") == 0;
}

static const char *describe(char *buf, size_t sz, const node *n)
{
    if (n->kind == N_MAP)
        return "a mapping";
    if (n->kind == N_SEQ)
        return "a sequence";
    if (is_null(n))
        return "null";
    char tmp[80];
    snprintf(buf, sz, "'%s'", show(tmp, sizeof tmp, n->s, n->len));
    return buf;
}

typedef struct builder {
    ctx *c;
    yaml_parser_t parser;
    node *root;
    node *stack[OP_CONFIG_MAX_DEPTH + 1];
    int depth;
    int docs;
    bool fatal; /* the tree is incomplete: skip the schema pass */
} builder;

static int ev_line(const yaml_event_t *e) { return (int)e->start_mark.line + 1; }
static int ev_col(const yaml_event_t *e) { return (int)e->start_mark.column + 1; }

static node *node_new(builder *b, nkind kind, const yaml_event_t *e)
{
    node *n = calloc(1, sizeof *n);
    if (!n) {
        b->c->oom = true;
        return NULL;
    }
    n->kind = kind;
    n->line = ev_line(e);
    n->col = ev_col(e);
    return n;
}

/* Hangs n under the open collection, or makes it the root. */
static bool node_attach(builder *b, node *n)
{
    if (b->depth == 0) {
        if (b->root) /* a second root can only come from a second document */
            node_free(n);
        else
            b->root = n;
        return true;
    }
    node *p = b->stack[b->depth - 1];
    if (p->n == p->cap) {
        size_t ncap = p->cap ? p->cap * 2 : 4;
        node **nk = realloc(p->kids, ncap * sizeof *nk);
        if (!nk) {
            node_free(n);
            b->c->oom = true;
            return false;
        }
        p->kids = nk;
        p->cap = ncap;
    }
    p->kids[p->n++] = n;
    return true;
}

typedef struct keyref {
    const node *k;
    size_t idx;
} keyref;

static int keyref_cmp(const void *a, const void *b)
{
    const keyref *x = a, *y = b;
    size_t n = x->k->len < y->k->len ? x->k->len : y->k->len;
    int r = memcmp(x->k->s, y->k->s, n);
    if (r)
        return r;
    if (x->k->len != y->k->len)
        return x->k->len < y->k->len ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* Flags every repeated scalar key of a finished mapping, in O(n log n) so a
 * large options mapping cannot turn this quadratic. The schema pass reports
 * them, where it knows the mapping's name. */
static void mark_duplicate_keys(builder *b, node *m)
{
    size_t nk = m->n / 2, cnt = 0;
    if (nk < 2)
        return;
    keyref *refs = malloc(nk * sizeof *refs);
    if (!refs) {
        b->c->oom = true;
        return;
    }
    for (size_t i = 0; i < nk; i++)
        if (m->kids[2 * i]->kind == N_SCALAR && !m->kids[2 * i]->poison)
            refs[cnt++] = (keyref){m->kids[2 * i], i};
    qsort(refs, cnt, sizeof *refs, keyref_cmp);
    /* sorted by text, then by place: each run's head is the first one */
    for (size_t i = 0; i < cnt;) {
        const node *first = refs[i].k;
        size_t j = i + 1;
        for (; j < cnt && refs[j].k->len == first->len &&
               memcmp(refs[j].k->s, first->s, first->len) == 0;
             j++) {
            node *k = (node *)refs[j].k;
            k->dup = true;
            k->first = first;
        }
        i = j;
    }
    free(refs);
}

static void reject_decorations(builder *b, const yaml_event_t *e, const yaml_char_t *anchor,
                               const yaml_char_t *tag, int implicit)
{
    char tmp[80];
    if (anchor)
        diag_add(b->c, ev_line(e), ev_col(e),
                 "anchors are not supported (&%s): write each value where it is used",
                 show(tmp, sizeof tmp, (const char *)anchor, strlen((const char *)anchor)));
    if (tag && !implicit) {
        /* libyaml hands back "!!str" expanded: show it as it was written. */
        static const char std[] = "tag:yaml.org,2002:";
        const char *t = (const char *)tag;
        bool is_std = strncmp(t, std, sizeof std - 1) == 0;
        if (is_std)
            t += sizeof std - 1;
        diag_add(b->c, ev_line(e), ev_col(e), "tags are not supported (%s%s)",
                 is_std ? "!!" : "", show(tmp, sizeof tmp, t, strlen(t)));
    }
}

/* Reader errors carry a byte offset, not a mark: count lines ourselves. */
static void offset_to_pos(const char *text, size_t len, size_t off, int *line, int *col)
{
    int l = 1, c = 1;
    for (size_t i = 0; i < off && i < len; i++) {
        if (text[i] == '\n') {
            l++;
            c = 1;
        } else if (((unsigned char)text[i] & 0xc0) != 0x80) {
            c++;
        }
    }
    *line = l;
    *col = c;
}

static void syntax_error(builder *b, const char *text, size_t len)
{
    const yaml_parser_t *p = &b->parser;
    int line, col;
    if (p->error == YAML_READER_ERROR) {
        offset_to_pos(text, len, p->problem_offset, &line, &col);
    } else {
        line = (int)p->problem_mark.line + 1;
        col = (int)p->problem_mark.column + 1;
    }
    const char *problem = p->problem ? p->problem : "unknown error";
    if (p->error == YAML_MEMORY_ERROR) {
        b->c->oom = true;
    } else if (p->context) {
        diag_add(b->c, line, col, "YAML syntax error: %s (%s at %d:%d)", problem, p->context,
                 (int)p->context_mark.line + 1, (int)p->context_mark.column + 1);
    } else {
        diag_add(b->c, line, col, "YAML syntax error: %s", problem);
    }
    b->fatal = true;
}

static void build_close(builder *b)
{
    node *n = b->stack[--b->depth];
    if (n->kind == N_MAP)
        mark_duplicate_keys(b, n);
}

static bool build_event(builder *b, yaml_event_t *e)
{
    node *n;
    switch (e->type) {
    case YAML_DOCUMENT_START_EVENT:
        if (++b->docs > 1) {
            diag_add(b->c, ev_line(e), ev_col(e),
                     "only one YAML document is allowed in a config file");
            return false; /* the first document is complete: keep it */
        }
        return true;
    case YAML_SCALAR_EVENT:
        reject_decorations(b, e, e->data.scalar.anchor, e->data.scalar.tag,
                           e->data.scalar.plain_implicit || e->data.scalar.quoted_implicit);
        if (!(n = node_new(b, N_SCALAR, e)))
            return false;
        n->len = e->data.scalar.length;
        n->s = malloc(n->len + 1);
        if (!n->s) {
            node_free(n);
            b->c->oom = true;
            return false;
        }
        memcpy(n->s, e->data.scalar.value, n->len);
        n->s[n->len] = '\0';
        n->plain = e->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
        return node_attach(b, n);
    case YAML_ALIAS_EVENT: {
        char tmp[80];
        const char *a = (const char *)e->data.alias.anchor;
        diag_add(b->c, ev_line(e), ev_col(e),
                 "aliases are not supported (*%s): write each value where it is used",
                 show(tmp, sizeof tmp, a, strlen(a)));
        if (!(n = node_new(b, N_SCALAR, e)))
            return false;
        n->poison = true;
        n->s = calloc(1, 1);
        if (!n->s) {
            node_free(n);
            b->c->oom = true;
            return false;
        }
        return node_attach(b, n);
    }
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT: {
        bool map = e->type == YAML_MAPPING_START_EVENT;
        if (b->depth >= OP_CONFIG_MAX_DEPTH) {
            diag_add(b->c, ev_line(e), ev_col(e), "nesting deeper than %d levels",
                     OP_CONFIG_MAX_DEPTH);
            b->fatal = true;
            return false;
        }
        if (map)
            reject_decorations(b, e, e->data.mapping_start.anchor, e->data.mapping_start.tag,
                               e->data.mapping_start.implicit);
        else
            reject_decorations(b, e, e->data.sequence_start.anchor,
                               e->data.sequence_start.tag, e->data.sequence_start.implicit);
        if (!(n = node_new(b, map ? N_MAP : N_SEQ, e)))
            return false;
        if (!node_attach(b, n))
            return false;
        b->stack[b->depth++] = n;
        return true;
    }
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT:
        if (b->depth > 0)
            build_close(b);
        return true;
    default:
        return true;
    }
}

/* Builds the tree; returns NULL (with diagnostics) when there is nothing the
 * schema pass could trust. */
static node *build_tree(ctx *c, const char *text, size_t len)
{
    builder b = {.c = c};
    if (!yaml_parser_initialize(&b.parser)) {
        c->oom = true;
        return NULL;
    }
    yaml_parser_set_input_string(&b.parser, (const unsigned char *)text, len);
    for (;;) {
        yaml_event_t e;
        if (!yaml_parser_parse(&b.parser, &e)) {
            syntax_error(&b, text, len);
            break;
        }
        bool more = build_event(&b, &e) && e.type != YAML_STREAM_END_EVENT;
        yaml_event_delete(&e);
        if (!more || c->oom)
            break;
    }
    yaml_parser_delete(&b.parser);
    if (b.fatal || c->oom) {
        node_free(b.root);
        return NULL;
    }
    /* An early stop (second document) may leave collections open: they are
     * complete as far as the first document goes. */
    return b.root;
}

/* ======================================================================== */
/* Scalars                                                                  */
/* ======================================================================== */

static char *xstrndup(ctx *c, const char *s, size_t n)
{
    char *r = malloc(n + 1);
    if (!r) {
        c->oom = true;
        return NULL;
    }
    memcpy(r, s, n);
    r[n] = '\0';
    return r;
}

static char *xstrdup(ctx *c, const char *s) { return xstrndup(c, s, strlen(s)); }

static void type_error(ctx *c, const node *v, const char *what, const char *path)
{
    char buf[96];
    diag_add(c, v->line, v->col, "expected %s for %s, got %s", what, path,
             describe(buf, sizeof buf, v));
}

/* The text of a scalar usable as a C string, or NULL after an error. */
static const char *scalar_text(ctx *c, const node *v, const char *path)
{
    if (v->kind != N_SCALAR) {
        type_error(c, v, "a string", path);
        return NULL;
    }
    if (memchr(v->s, '\0', v->len)) {
        diag_add(c, v->line, v->col, "%s contains a NUL character", path);
        return NULL;
    }
    return v->s;
}

typedef enum numres { NUM_OK, NUM_SYNTAX, NUM_RANGE } numres;

/* Decimal digits with optional '_' between them (YAML 1.1 style). */
static numres parse_digits(const char **sp, const char *end, uint64_t *out)
{
    const char *s = *sp;
    uint64_t v = 0;
    bool any = false, over = false;
    while (s < end && (isdigit((unsigned char)*s) || (*s == '_' && any))) {
        if (*s != '_') {
            unsigned d = (unsigned)(*s - '0');
            if (v > (UINT64_MAX - d) / 10)
                over = true;
            else
                v = v * 10 + d;
            any = true;
        }
        s++;
    }
    if (!any || s[-1] == '_')
        return NUM_SYNTAX;
    *sp = s;
    *out = v;
    return over ? NUM_RANGE : NUM_OK;
}

static numres parse_int(const char *s, size_t len, int64_t *out)
{
    const char *end = s + len;
    bool neg = false;
    if (s < end && (*s == '+' || *s == '-'))
        neg = *s++ == '-';
    uint64_t u;
    numres r = parse_digits(&s, end, &u);
    if (r == NUM_SYNTAX || s != end)
        return NUM_SYNTAX;
    if (r == NUM_RANGE || u > (uint64_t)INT64_MAX)
        return NUM_RANGE;
    *out = neg ? -(int64_t)u : (int64_t)u;
    return NUM_OK;
}

static const struct unit {
    const char *name;
    uint64_t mult;
} units[] = {
    {"", 1},
    {"b", 1},
    {"k", 1000ULL},
    {"kb", 1000ULL},
    {"m", 1000000ULL},
    {"mb", 1000000ULL},
    {"g", 1000000000ULL},
    {"gb", 1000000000ULL},
    {"t", 1000000000000ULL},
    {"tb", 1000000000000ULL},
    {"ki", 1ULL << 10},
    {"kib", 1ULL << 10},
    {"mi", 1ULL << 20},
    {"mib", 1ULL << 20},
    {"gi", 1ULL << 30},
    {"gib", 1ULL << 30},
    {"ti", 1ULL << 40},
    {"tib", 1ULL << 40},
};

/* "4096", "64KiB", "10 MiB", "1GB": an integer and an optional unit. */
static numres parse_size(const char *s, size_t len, uint64_t *out)
{
    const char *end = s + len;
    uint64_t n;
    numres r = parse_digits(&s, end, &n);
    if (r == NUM_SYNTAX)
        return r;
    while (s < end && *s == ' ')
        s++;
    char unit[4];
    size_t ul = (size_t)(end - s);
    if (ul >= sizeof unit)
        return NUM_SYNTAX;
    for (size_t i = 0; i < ul; i++)
        unit[i] = (char)tolower((unsigned char)s[i]);
    unit[ul] = '\0';
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(unit, units[i].name) == 0) {
            if (r == NUM_RANGE || (n && units[i].mult > UINT64_MAX / n))
                return NUM_RANGE;
            *out = n * units[i].mult;
            return NUM_OK;
        }
    }
    return NUM_SYNTAX;
}

/* ======================================================================== */
/* Paths                                                                    */
/* ======================================================================== */

/* base_dir + rel, applying rel's leading "./" and "../" to base. Only the
 * leading ones: base comes from realpath() in op_config_load, so popping its
 * components is exact, while a "dir/.." inside rel could cross a symlink. */
static char *resolve_path(ctx *c, const char *rel)
{
    const char *base = c->base_dir;
    if (rel[0] == '/' || !base || !*base || strcmp(base, ".") == 0)
        return xstrdup(c, rel);
    size_t blen = strlen(base), rlen = strlen(rel);
    char *out = malloc(blen + rlen + 8);
    if (!out) {
        c->oom = true;
        return NULL;
    }
    memcpy(out, base, blen + 1);
    while (blen > 1 && out[blen - 1] == '/')
        out[--blen] = '\0';
    for (;;) {
        if (rel[0] == '.' && (rel[1] == '/' || rel[1] == '\0')) {
            rel += 1;
        } else if (rel[0] == '.' && rel[1] == '.' && (rel[2] == '/' || rel[2] == '\0')) {
            char *slash = strrchr(out, '/');
            const char *last = slash ? slash + 1 : out;
            if (*last && strcmp(last, "..") != 0 && strcmp(last, ".") != 0) {
                if (slash == out)
                    out[1] = '\0'; /* "/x" -> "/" */
                else if (slash)
                    *slash = '\0';
                else
                    strcpy(out, ".");
            } else if (strcmp(out, ".") == 0) {
                strcpy(out, "..");
            } else if (strcmp(out, "/") != 0) { /* "/.." is "/" */
                strcat(out, "/..");
            }
            rel += 2;
        } else {
            break;
        }
        while (*rel == '/')
            rel++;
    }
    if (*rel) {
        size_t ol = strlen(out);
        if (strcmp(out, ".") == 0) {
            ol = 0;
        } else if (out[ol - 1] != '/') {
            out[ol++] = '/';
        }
        memcpy(out + ol, rel, strlen(rel) + 1);
    }
    return out;
}

/* ======================================================================== */
/* Schema walking                                                           */
/* ======================================================================== */

typedef struct field field;
typedef void (*field_fn)(ctx *c, const node *v, void *obj, const field *f, const char *path);

/* One key of a mapping. obj is the struct the section fills; off locates the
 * member (and off_n its count, for lists). */
struct field {
    const char *key;
    field_fn fn;
    bool required;
    size_t off;
    size_t off_n;
    int64_t lo, hi;
    const field *sub; /* sections: their own keys, ended by a NULL key */
};

#define MEMBER(obj, f, type) ((type *)((char *)(obj) + (f)->off))

static void join_path(char *out, const char *where, const char *key)
{
    if (*where)
        snprintf(out, PATH_BUF, "%s.%s", where, key);
    else
        snprintf(out, PATH_BUF, "%s", key);
}

static void in_where(char *out, size_t sz, const char *where)
{
    if (*where)
        snprintf(out, sz, "in %s", where);
    else
        snprintf(out, sz, "at top level");
}

static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 32 || lb > 32)
        return SIZE_MAX;
    size_t row[33];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diagv = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diagv + (a[i - 1] != b[j - 1]);
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diagv = up;
        }
    }
    return row[lb];
}

static void unknown_key(ctx *c, const node *k, const field *fields, const char *where)
{
    char tmp[80], w[PATH_BUF + 8];
    const char *best = NULL;
    size_t bestd = 3; /* suggest only close misspellings */
    for (const field *f = fields; f->key; f++) {
        size_t d = edit_distance(k->s, f->key);
        if (d < bestd) {
            bestd = d;
            best = f->key;
        }
    }
    in_where(w, sizeof w, where);
    if (best)
        diag_add(c, k->line, k->col, "unknown key '%s' %s (did you mean '%s'?)",
                 show(tmp, sizeof tmp, k->s, k->len), w, best);
    else
        diag_add(c, k->line, k->col, "unknown key '%s' %s", show(tmp, sizeof tmp, k->s, k->len),
                 w);
}

static void f_section(ctx *c, const node *v, void *obj, const field *f, const char *path);
static void f_server(ctx *c, const node *v, void *obj, const field *f, const char *path);

/* Dispatches each key of m to its field; reports unknown, missing and
 * repeated keys. A null m (a key with nothing after it) is an empty mapping. */
static void walk_mapping(ctx *c, const node *m, const char *where, const field *fields, void *obj)
{
    if (m->kind != N_MAP && !is_null(m)) {
        type_error(c, m, "a mapping", *where ? where : "the top level");
        return;
    }
    size_t nf = 0;
    while (fields[nf].key)
        nf++;
    bool seen[MAX_FIELDS + 1] = {0}; /* the tables are checked below */
    for (size_t i = 0; m->kind == N_MAP && i + 1 < m->n; i += 2) {
        const node *k = m->kids[i], *v = m->kids[i + 1];
        char w[PATH_BUF + 8], tmp[80];
        in_where(w, sizeof w, where);
        if (k->poison)
            continue;
        if (k->dup) {
            diag_add(c, k->line, k->col, "duplicate key '%s' %s (first at %d:%d)",
                     show(tmp, sizeof tmp, k->s, k->len), w, k->first->line, k->first->col);
            continue;
        }
        if (k->kind != N_SCALAR) {
            diag_add(c, k->line, k->col, "expected a string key %s, got %s", w,
                     k->kind == N_MAP ? "a mapping" : "a sequence");
            continue;
        }
        size_t fi = 0;
        while (fi < nf && strcmp(fields[fi].key, k->s) != 0)
            fi++;
        if (fi == nf || memchr(k->s, '\0', k->len)) {
            unknown_key(c, k, fields, where);
            continue;
        }
        const field *f = &fields[fi];
        seen[fi] = true;
        if (v->poison)
            continue;
        char path[PATH_BUF];
        join_path(path, where, f->key);
        bool takes_null = f->fn == f_section || f->fn == f_server;
        if (is_null(v) && !takes_null) {
            if (f->required)
                diag_add(c, v->line, v->col, "empty value for required key '%s' %s", f->key, w);
            continue;
        }
        f->fn(c, v, obj, f, path);
    }
    for (size_t fi = 0; fi < nf; fi++) {
        if (fields[fi].required && !seen[fi]) {
            char w[PATH_BUF + 8];
            in_where(w, sizeof w, where);
            diag_add(c, m->line, m->col, "missing required key '%s' %s", fields[fi].key, w);
        }
    }
}

static void f_section(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    walk_mapping(c, v, path, f->sub, (char *)obj + f->off);
}

static bool get_int(ctx *c, const node *v, const field *f, const char *path, int64_t *out)
{
    if (v->kind != N_SCALAR) {
        type_error(c, v, "an integer", path);
        return false;
    }
    int64_t x = 0;
    numres r = parse_int(v->s, v->len, &x);
    if (r == NUM_SYNTAX) {
        type_error(c, v, "an integer", path);
        return false;
    }
    if (r == NUM_RANGE || x < f->lo || x > f->hi) {
        char tmp[80];
        diag_add(c, v->line, v->col, "%s must be between %lld and %lld, got %s", path,
                 (long long)f->lo, (long long)f->hi, show(tmp, sizeof tmp, v->s, v->len));
        return false;
    }
    *out = x;
    return true;
}

static void f_int(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    int64_t x;
    if (get_int(c, v, f, path, &x))
        *MEMBER(obj, f, int) = (int)x;
}

static void f_u64(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    int64_t x;
    if (get_int(c, v, f, path, &x))
        *MEMBER(obj, f, uint64_t) = (uint64_t)x;
}

static void f_size(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    uint64_t x = 0;
    numres r = v->kind == N_SCALAR ? parse_size(v->s, v->len, &x) : NUM_SYNTAX;
    if (r == NUM_SYNTAX) {
        type_error(c, v, "a size (bytes, or a number with KiB, MiB, GiB, kB, MB, GB ...)", path);
        return;
    }
    if (r == NUM_RANGE || x < (uint64_t)f->lo || x > (uint64_t)f->hi) {
        char tmp[80];
        diag_add(c, v->line, v->col, "%s must be between %lld and %lld bytes, got %s", path,
                 (long long)f->lo, (long long)f->hi, show(tmp, sizeof tmp, v->s, v->len));
        return;
    }
    *MEMBER(obj, f, size_t) = (size_t)x;
}

static void set_str(char **slot, char *s)
{
    free(*slot);
    *slot = s;
}

static void f_str(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    const char *s = scalar_text(c, v, path);
    if (s)
        set_str(MEMBER(obj, f, char *), xstrdup(c, s));
}

static char *get_path(ctx *c, const node *v, const char *path)
{
    const char *s = scalar_text(c, v, path);
    if (!s)
        return NULL;
    if (!*s) {
        diag_add(c, v->line, v->col, "%s must not be empty", path);
        return NULL;
    }
    return resolve_path(c, s);
}

static void f_path(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    char *p = get_path(c, v, path);
    if (p)
        set_str(MEMBER(obj, f, char *), p);
}

/* True if v is a sequence; else reports that `what` was expected. */
static bool seq_items(ctx *c, const node *v, const char *path, const char *what)
{
    if (v->kind == N_SEQ)
        return true;
    type_error(c, v, what, path);
    return false;
}

static void free_strv(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* A list of paths (or, with resolve false, plain strings); pos, if not NULL,
 * receives each item's position. */
static void get_str_list(ctx *c, const node *v, const char *path, bool resolve, char ***out,
                         size_t *out_n, op_config_pos **pos)
{
    if (!seq_items(c, v, path, "a sequence of strings"))
        return;
    char **items = calloc(v->n ? v->n : 1, sizeof *items);
    op_config_pos *ps = pos ? calloc(v->n ? v->n : 1, sizeof *ps) : NULL;
    if (!items || (pos && !ps)) {
        free(items);
        free(ps);
        c->oom = true;
        return;
    }
    size_t k = 0;
    for (size_t i = 0; i < v->n; i++) {
        const node *it = v->kids[i];
        char ip[PATH_BUF];
        snprintf(ip, sizeof ip, "%s[%zu]", path, i);
        if (it->poison)
            continue;
        if (it->kind != N_SCALAR || is_null(it)) {
            type_error(c, it, "a string", ip);
            continue;
        }
        char *s = NULL;
        if (resolve) {
            s = get_path(c, it, ip);
        } else {
            const char *t = scalar_text(c, it, ip);
            s = t ? xstrdup(c, t) : NULL;
        }
        if (!s)
            continue;
        if (ps)
            ps[k] = (op_config_pos){it->line, it->col};
        items[k++] = s;
    }
    free_strv(*out, *out_n);
    *out = items;
    *out_n = k;
    if (pos) {
        free(*pos);
        *pos = ps;
    }
}

static void f_path_list(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    get_str_list(c, v, path, true, MEMBER(obj, f, char **),
                 (size_t *)((char *)obj + f->off_n), NULL);
}

static void f_policy_files(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    op_config_policy *p = obj;
    get_str_list(c, v, path, true, &p->files, &p->n_files, &p->file_pos);
}

/* An enum given as a NULL-terminated list of names; returns the index. */
static int get_enum(ctx *c, const node *v, const char *path, const char *const *names)
{
    const char *s = scalar_text(c, v, path);
    if (!s)
        return -1;
    for (int i = 0; names[i]; i++)
        if (strcmp(s, names[i]) == 0)
            return i;
    char list[256] = "", tmp[80];
    for (int i = 0; names[i]; i++) {
        size_t l = strlen(list);
        snprintf(list + l, sizeof list - l, "%s%s", i ? ", " : "", names[i]);
    }
    diag_add(c, v->line, v->col, "unknown value '%s' for %s (expected one of: %s)",
             show(tmp, sizeof tmp, v->s, v->len), path, list);
    return -1;
}

static const char *const level_names[] = {"debug", "info", "warn", "error", "off", NULL};
static const char *const format_names[] = {"kv", "json", NULL};
/* The OUTPOST_TASK_* names of outpost/plugin.h (Workers AI's task names). */
static const char *const task_names[] = {"text-generation", "text-embeddings",
                                         "text-classification", NULL};

static void f_level(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    /* level_names follows pl_log_level's order: debug = 0 ... off = 4. */
    int i = get_enum(c, v, path, level_names);
    if (i >= 0)
        ((op_config_log *)obj)->level = (pl_log_level)i;
}

static void f_format(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    int i = get_enum(c, v, path, format_names);
    if (i >= 0)
        ((op_config_log *)obj)->format = i ? PL_LOG_FORMAT_JSON : PL_LOG_FORMAT_KV;
}

static void f_task(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    int i = get_enum(c, v, path, task_names);
    if (i >= 0)
        set_str(&((op_config_model *)obj)->task, xstrdup(c, task_names[i]));
}

/* "HOST:PORT", "[v6]:PORT". The host is checked for shape only; whether it
 * names an address of this machine is for the listener to find out. */
static void f_listen(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    op_config_server *s = obj;
    const char *t = scalar_text(c, v, path);
    if (!t)
        return;
    const char *host = t, *host_end, *colon;
    if (t[0] == '[') {
        host = t + 1;
        host_end = strchr(host, ']');
        colon = host_end ? host_end + 1 : NULL;
        if (colon && *colon != ':')
            colon = NULL;
    } else {
        colon = strrchr(t, ':');
        host_end = colon;
        if (colon && memchr(t, ':', (size_t)(colon - t)))
            colon = NULL; /* bare IPv6: needs brackets to tell the port apart */
    }
    bool ok = colon && host_end > host;
    for (const char *p = host; ok && p < host_end; p++)
        if (isspace((unsigned char)*p) || *p == '[' || *p == ']' || *p == '/')
            ok = false;
    int64_t port = -1;
    numres r = ok ? parse_int(colon + 1, strlen(colon + 1), &port) : NUM_SYNTAX;
    if (ok && (colon[1] == '+' || colon[1] == '-'))
        r = NUM_SYNTAX;
    if (!ok || r == NUM_SYNTAX) {
        char tmp[80];
        diag_add(c, v->line, v->col,
                 "expected HOST:PORT for %s (IPv6 as [::1]:8787), got '%s'", path,
                 show(tmp, sizeof tmp, v->s, v->len));
        return;
    }
    if (r == NUM_RANGE || port > 65535) {
        diag_add(c, v->line, v->col, "port of %s must be between 0 and 65535, got %s", path,
                 colon + 1);
        return;
    }
    set_str(&s->listen_host, xstrndup(c, host, (size_t)(host_end - host)));
    s->listen_port = (uint16_t)port;
}

static bool id_chars(const char *s, const char *extra_ok, bool any_printable)
{
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (any_printable ? !(ch > 0x20 && ch < 0x7f) : !(isalnum(ch) || strchr(extra_ok, ch)))
            return false;
    }
    return true;
}

/* The id-like strings: returns a copy or NULL after an error. */
static char *get_ident(ctx *c, const node *v, const char *path, size_t max, const char *rule,
                       bool (*ok)(const char *))
{
    const char *s = scalar_text(c, v, path);
    if (!s)
        return NULL;
    if (!*s || strlen(s) > max || !ok(s)) {
        char tmp[80];
        diag_add(c, v->line, v->col, "%s must be %s, got '%s'", path, rule,
                 show(tmp, sizeof tmp, v->s, v->len));
        return NULL;
    }
    return xstrdup(c, s);
}

static bool account_id_ok(const char *s) { return id_chars(s, "_-", false); }
static bool model_id_ok(const char *s) { return id_chars(s, "", true); }
static bool plugin_name_ok(const char *s)
{
    for (; *s; s++)
        if (!(islower((unsigned char)*s) || isdigit((unsigned char)*s) || *s == '_' || *s == '-'))
            return false;
    return true;
}
static bool label_ok(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return false;
    return true;
}

#define ACCOUNT_ID_RULE "1 to 64 characters of A-Z a-z 0-9 _ -"
#define MODEL_ID_RULE "1 to 128 printable ASCII characters without spaces"

static void f_account_id(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    char *s = get_ident(c, v, path, 64, ACCOUNT_ID_RULE, account_id_ok);
    if (s)
        set_str(&((op_config_account *)obj)->id, s);
}

static void f_model_id(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    char *s = get_ident(c, v, path, 128, MODEL_ID_RULE, model_id_ok);
    if (s)
        set_str(&((op_config_model *)obj)->id, s);
}

static void f_plugin_name(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    char *s = get_ident(c, v, path, 64, "1 to 64 characters of a-z 0-9 _ -", plugin_name_ok);
    if (s)
        set_str(&((op_config_model *)obj)->plugin, s);
}

static void f_token_name(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    char *s = get_ident(c, v, path, 128, "1 to 128 characters without control characters",
                        label_ok);
    if (s)
        set_str(&((op_config_token *)obj)->name, s);
}

/* The value is never echoed: an operator may have pasted the token itself. */
static void f_sha256(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    op_config_token *t = obj;
    if (v->kind != N_SCALAR || v->len != PL_SHA256_HEX_LEN || !pl_sha256_from_hex(v->s, t->sha256)) {
        diag_add(c, v->line, v->col,
                 "expected 64 hex digits for %s (the token's SHA-256, from: outpostctl "
                 "hash-token TOKEN; value not shown)",
                 path);
        memset(t->sha256, 0, sizeof t->sha256);
    }
}

static void f_aliases(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    op_config_model *m = obj;
    if (!seq_items(c, v, path, "a sequence of model ids"))
        return;
    char **items = calloc(v->n ? v->n : 1, sizeof *items);
    if (!items) {
        c->oom = true;
        return;
    }
    size_t k = 0;
    for (size_t i = 0; i < v->n; i++) {
        char ip[PATH_BUF];
        snprintf(ip, sizeof ip, "%s[%zu]", path, i);
        if (v->kids[i]->poison)
            continue;
        char *s = get_ident(c, v->kids[i], ip, 128, MODEL_ID_RULE, model_id_ok);
        if (s)
            items[k++] = s;
    }
    free_strv(m->aliases, m->n_aliases);
    m->aliases = items;
    m->n_aliases = k;
}

static void f_options(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    op_config_model *m = obj;
    if (v->kind != N_MAP) {
        type_error(c, v, "a mapping", path);
        return;
    }
    op_config_kv *kv = calloc(v->n / 2 ? v->n / 2 : 1, sizeof *kv);
    if (!kv) {
        c->oom = true;
        return;
    }
    size_t k = 0;
    for (size_t i = 0; i + 1 < v->n; i += 2) {
        const node *key = v->kids[i], *val = v->kids[i + 1];
        char kp[PATH_BUF], tmp[80];
        if (key->dup) {
            diag_add(c, key->line, key->col, "duplicate key '%s' in %s (first at %d:%d)",
                     show(tmp, sizeof tmp, key->s, key->len), path, key->first->line,
                     key->first->col);
            continue;
        }
        if (key->poison || val->poison)
            continue;
        const char *ks = scalar_text(c, key, path);
        if (!ks)
            continue;
        snprintf(kp, sizeof kp, "%s.%s", path, show(tmp, sizeof tmp, key->s, key->len));
        if (val->kind != N_SCALAR) {
            type_error(c, val, "a scalar", kp);
            continue;
        }
        const char *vs = scalar_text(c, val, kp);
        if (!vs)
            continue;
        kv[k].key = xstrdup(c, ks);
        kv[k].value = xstrdup(c, vs);
        k++;
    }
    for (size_t i = 0; i < m->n_options; i++) {
        free(m->options[i].key);
        free(m->options[i].value);
    }
    free(m->options);
    m->options = kv;
    m->n_options = k;
}

/* ---- sections ---------------------------------------------------------- */

#define F(k, fn_, req, type, member, lo_, hi_)                                                  \
    {.key = k, .fn = fn_, .required = req, .off = offsetof(type, member), .lo = lo_, .hi = hi_}
#define FL(k, fn_, type, member, count)                                                         \
    {.key = k, .fn = fn_, .off = offsetof(type, member), .off_n = offsetof(type, count)}
#define FC(k, fn_, req) {.key = k, .fn = fn_, .required = req}
#define FS(k, req, type, member, sub_)                                                          \
    {.key = k, .fn = f_section, .required = req, .off = offsetof(type, member), .sub = sub_}
#define END {.key = NULL}

static const field server_fields[] = {
    FC("listen", f_listen, true),
    F("workers", f_int, false, op_config_server, workers, 0, 1024),
    F("max_body_bytes", f_size, false, op_config_server, max_body_bytes, 1, MAX_SIZE_BYTES),
    F("max_header_bytes", f_size, false, op_config_server, max_header_bytes, 1,
      MAX_SIZE_BYTES),
    F("max_connections", f_int, false, op_config_server, max_connections, 1, 1000000),
    F("idle_timeout_s", f_int, false, op_config_server, idle_timeout_s, 1, 86400),
    F("request_timeout_s", f_int, false, op_config_server, request_timeout_s, 1, 86400),
    F("shutdown_grace_s", f_int, false, op_config_server, shutdown_grace_s, 0, 86400),
    END,
};

static const field log_fields[] = {
    FC("level", f_level, false),
    FC("format", f_format, false),
    END,
};

static const field cpu_fields[] = {
    F("threads", f_int, false, op_config, cpu_threads, 0, 1024),
    END,
};

static const field devices_fields[] = {
    {.key = "cpu", .fn = f_section, .off = 0, .sub = cpu_fields},
    END,
};

static const field plugins_fields[] = {
    FL("dirs", f_path_list, op_config, plugin_dirs, n_plugin_dirs),
    END,
};

/* instructions: lua_sethook counts in an int, hence the INT_MAX cap. */
static const field policy_fields[] = {
    F("lib_dir", f_path, false, op_config_policy, lib_dir, 0, 0),
    F("memory_bytes", f_size, false, op_config_policy, memory_bytes, 1, MAX_SIZE_BYTES),
    F("instructions", f_u64, false, op_config_policy, instructions, 1, INT_MAX),
    FC("files", f_policy_files, false),
    END,
};

static const field token_fields[] = {
    FC("name", f_token_name, true),
    FC("sha256", f_sha256, true),
    END,
};

static void f_tokens(ctx *c, const node *v, void *obj, const field *f, const char *path);

static const field account_fields[] = {
    FC("id", f_account_id, true),
    F("name", f_str, false, op_config_account, name, 0, 0),
    FC("tokens", f_tokens, false),
    END,
};

static const field model_fields[] = {
    FC("id", f_model_id, true),
    FC("plugin", f_plugin_name, true),
    FC("task", f_task, true),
    F("path", f_path, false, op_config_model, path, 0, 0),
    F("description", f_str, false, op_config_model, description, 0, 0),
    FC("aliases", f_aliases, false),
    FC("options", f_options, false),
    END,
};

static void f_accounts(ctx *c, const node *v, void *obj, const field *f, const char *path);
static void f_models(ctx *c, const node *v, void *obj, const field *f, const char *path);

static const field top_fields[] = {
    {.key = "server", .fn = f_server, .required = true, .sub = server_fields},
    FS("log", false, op_config, log, log_fields),
    F("data_dir", f_path, false, op_config, data_dir, 0, 0),
    /* devices and plugins fill members of op_config itself: off 0 */
    {.key = "devices", .fn = f_section, .sub = devices_fields},
    {.key = "plugins", .fn = f_section, .sub = plugins_fields},
    FC("accounts", f_accounts, false),
    FC("models", f_models, false),
    FS("policy", false, op_config, policy, policy_fields),
    END,
};

#define TABLE_FITS(t) _Static_assert(sizeof t / sizeof t[0] <= MAX_FIELDS + 1, #t " too long")
TABLE_FITS(server_fields);
TABLE_FITS(log_fields);
TABLE_FITS(policy_fields);
TABLE_FITS(account_fields);
TABLE_FITS(token_fields);
TABLE_FITS(model_fields);
TABLE_FITS(top_fields);

static void f_server(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    op_config_server *s = &((op_config *)obj)->server;
    s->pos = (op_config_pos){v->line, v->col};
    walk_mapping(c, v, path, f->sub, s);
}

/* Walks a sequence of mappings into an array of elem_size structs; each
 * item gets its pos set and is filled by walk_mapping with fields. */
static void *walk_items(ctx *c, const node *v, const char *path, const field *fields,
                        size_t elem_size, size_t pos_off, size_t *out_n)
{
    *out_n = 0;
    if (!seq_items(c, v, path, "a sequence of mappings"))
        return NULL;
    char *arr = calloc(v->n ? v->n : 1, elem_size);
    if (!arr) {
        c->oom = true;
        return NULL;
    }
    for (size_t i = 0; i < v->n; i++) {
        const node *it = v->kids[i];
        char ip[PATH_BUF];
        snprintf(ip, sizeof ip, "%s[%zu]", path, i);
        void *obj = arr + i * elem_size;
        *(op_config_pos *)((char *)obj + pos_off) = (op_config_pos){it->line, it->col};
        if (it->poison)
            continue;
        if (it->kind != N_MAP) {
            type_error(c, it, "a mapping", ip);
            continue;
        }
        walk_mapping(c, it, ip, fields, obj);
    }
    *out_n = v->n;
    return arr;
}

static void free_tokens(op_config_token *t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(t[i].name);
    free(t);
}

static void free_accounts(op_config_account *a, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(a[i].id);
        free(a[i].name);
        free_tokens(a[i].tokens, a[i].n_tokens);
    }
    free(a);
}

static void free_models(op_config_model *m, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(m[i].id);
        free(m[i].plugin);
        free(m[i].task);
        free(m[i].path);
        free(m[i].description);
        free_strv(m[i].aliases, m[i].n_aliases);
        for (size_t j = 0; j < m[i].n_options; j++) {
            free(m[i].options[j].key);
            free(m[i].options[j].value);
        }
        free(m[i].options);
    }
    free(m);
}

static void f_tokens(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    op_config_account *a = obj;
    size_t n;
    op_config_token *t = walk_items(c, v, path, token_fields, sizeof *t,
                                    offsetof(op_config_token, pos), &n);
    if (!t)
        return;
    free_tokens(a->tokens, a->n_tokens);
    a->tokens = t;
    a->n_tokens = n;
}

static void f_accounts(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    op_config *cfg = obj;
    size_t n;
    op_config_account *a = walk_items(c, v, path, account_fields, sizeof *a,
                                      offsetof(op_config_account, pos), &n);
    if (!a)
        return;
    free_accounts(cfg->accounts, cfg->n_accounts);
    cfg->accounts = a;
    cfg->n_accounts = n;
    for (size_t i = 0; i < n; i++)
        if (a[i].id && !a[i].name)
            a[i].name = xstrdup(c, a[i].id);
}

static void f_models(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    op_config *cfg = obj;
    size_t n;
    op_config_model *m = walk_items(c, v, path, model_fields, sizeof *m,
                                    offsetof(op_config_model, pos), &n);
    if (!m)
        return;
    free_models(cfg->models, cfg->n_models);
    cfg->models = m;
    cfg->n_models = n;
}

/* ======================================================================== */
/* Cross-entry checks                                                       */
/* ======================================================================== */

typedef struct entry {
    const void *key;
    size_t len;
    op_config_pos pos;
    size_t seq;
} entry;

static int entry_cmp(const void *a, const void *b)
{
    const entry *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int r = memcmp(x->key, y->key, n);
    if (r)
        return r;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    /* equal keys: the one earlier in the file is "first" */
    if (x->pos.line != y->pos.line)
        return x->pos.line < y->pos.line ? -1 : 1;
    if (x->pos.column != y->pos.column)
        return x->pos.column < y->pos.column ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Reports every entry whose key an earlier one (in file order) already has.
 * what: e.g. "account id"; show_key false for secrets-adjacent keys. */
static void report_dups(ctx *c, entry *e, size_t n, const char *what, bool show_key)
{
    qsort(e, n, sizeof *e, entry_cmp);
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && e[j].len == e[i].len && memcmp(e[j].key, e[i].key, e[i].len) == 0) {
            char tmp[80];
            if (show_key)
                diag_add(c, e[j].pos.line, e[j].pos.column, "duplicate %s '%s' (first at %d:%d)",
                         what, show(tmp, sizeof tmp, e[j].key, e[j].len), e[i].pos.line,
                         e[i].pos.column);
            else
                diag_add(c, e[j].pos.line, e[j].pos.column, "duplicate %s (first at %d:%d)",
                         what, e[i].pos.line, e[i].pos.column);
            j++;
        }
        i = j;
    }
}

static void push_entry(entry *e, size_t *n, const void *key, size_t len, op_config_pos pos)
{
    e[*n] = (entry){key, len, pos, *n};
    (*n)++;
}

/* The positions of ids and aliases are not kept in the structs; find them in
 * the tree (models[i].id, models[i].aliases[j]). */
static const node *map_get(const node *m, const char *key)
{
    if (!m || m->kind != N_MAP)
        return NULL;
    for (size_t i = 0; i + 1 < m->n; i += 2)
        if (!m->kids[i]->dup && m->kids[i]->kind == N_SCALAR && strcmp(m->kids[i]->s, key) == 0)
            return m->kids[i + 1];
    return NULL;
}

static op_config_pos pos_of(const node *n) { return (op_config_pos){n->line, n->col}; }

static void check_unique(ctx *c, const op_config *cfg, const node *root)
{
    size_t cap = cfg->n_accounts + cfg->n_models + 1;
    for (size_t i = 0; i < cfg->n_models; i++)
        cap += cfg->models[i].n_aliases;
    for (size_t i = 0; i < cfg->n_accounts; i++)
        cap += cfg->accounts[i].n_tokens;
    entry *e = malloc(cap * sizeof *e);
    if (!e) {
        c->oom = true;
        return;
    }
    size_t n = 0;
    const node *accs = map_get(root, "accounts"), *models = map_get(root, "models");

    for (size_t i = 0; i < cfg->n_accounts; i++) {
        const node *idn = accs && i < accs->n ? map_get(accs->kids[i], "id") : NULL;
        if (cfg->accounts[i].id && idn)
            push_entry(e, &n, cfg->accounts[i].id, strlen(cfg->accounts[i].id), pos_of(idn));
    }
    report_dups(c, e, n, "account id", true);

    n = 0;
    for (size_t i = 0; i < cfg->n_models; i++) {
        const op_config_model *m = &cfg->models[i];
        const node *mn = models && i < models->n ? models->kids[i] : NULL;
        const node *idn = map_get(mn, "id"), *al = map_get(mn, "aliases");
        if (m->id && idn)
            push_entry(e, &n, m->id, strlen(m->id), pos_of(idn));
        /* aliases keeps only the valid ones: match them back by text. */
        for (size_t j = 0, k = 0; al && al->kind == N_SEQ && j < al->n && k < m->n_aliases; j++)
            if (al->kids[j]->kind == N_SCALAR && strcmp(al->kids[j]->s, m->aliases[k]) == 0) {
                push_entry(e, &n, m->aliases[k], strlen(m->aliases[k]), pos_of(al->kids[j]));
                k++;
            }
    }
    report_dups(c, e, n, "model id or alias", true);

    /* A hash in two places would make a token's account ambiguous. */
    n = 0;
    for (size_t i = 0; i < cfg->n_accounts; i++)
        for (size_t j = 0; j < cfg->accounts[i].n_tokens; j++) {
            const op_config_token *t = &cfg->accounts[i].tokens[j];
            static const uint8_t zero[PL_SHA256_LEN];
            if (memcmp(t->sha256, zero, sizeof zero) != 0)
                push_entry(e, &n, t->sha256, PL_SHA256_LEN, t->pos);
        }
    report_dups(c, e, n, "token sha256", false);

    for (size_t i = 0; i < cfg->n_accounts; i++) {
        n = 0;
        for (size_t j = 0; j < cfg->accounts[i].n_tokens; j++) {
            const op_config_token *t = &cfg->accounts[i].tokens[j];
            if (t->name)
                push_entry(e, &n, t->name, strlen(t->name), t->pos);
        }
        report_dups(c, e, n, "token name", true);
    }
    free(e);
}

/* ======================================================================== */
/* Public API                                                               */
/* ======================================================================== */

static void set_defaults(ctx *c, op_config *cfg)
{
    cfg->server.max_body_bytes = 10 * MIB;
    cfg->server.max_header_bytes = 32 * 1024;
    cfg->server.max_connections = 1024;
    cfg->server.idle_timeout_s = 60;
    cfg->server.request_timeout_s = 300;
    cfg->server.shutdown_grace_s = 30;
    cfg->log.level = PL_LOG_INFO;
    cfg->log.format = PL_LOG_FORMAT_KV;
    cfg->data_dir = resolve_path(c, "./var");
    cfg->policy.memory_bytes = 8 * MIB;
    cfg->policy.instructions = 1000000;
}

void op_config_free(op_config *cfg)
{
    if (!cfg)
        return;
    free(cfg->path);
    free(cfg->base_dir);
    free(cfg->server.listen_host);
    free(cfg->data_dir);
    free_strv(cfg->plugin_dirs, cfg->n_plugin_dirs);
    free_accounts(cfg->accounts, cfg->n_accounts);
    free_models(cfg->models, cfg->n_models);
    free(cfg->policy.lib_dir);
    free_strv(cfg->policy.files, cfg->policy.n_files);
    free(cfg->policy.file_pos);
    free(cfg);
}

void op_config_errors_free(op_config_errors *errs)
{
    if (!errs)
        return;
    for (size_t i = 0; i < errs->n; i++)
        free(errs->items[i].message);
    free(errs->items);
    errs->items = NULL;
    errs->n = 0;
}

static int finish(ctx *c, op_config *cfg, op_config **out, op_config_errors *errs)
{
    if (c->nd || c->oom || c->dropped) {
        op_config_free(cfg);
        diags_export(c, errs);
        return -1;
    }
    diags_free(c);
    *out = cfg;
    return 0;
}

int op_config_parse(const char *name, const char *base_dir, const char *text, size_t len,
                    op_config **out, op_config_errors *errs)
{
    ctx c = {.name = name ? name : "<config>", .base_dir = base_dir};
    if (out)
        *out = NULL;
    if (errs)
        *errs = (op_config_errors){0};
    if (!out || (!text && len)) {
        diag_add(&c, 0, 0, "invalid arguments");
        return finish(&c, NULL, out, errs);
    }
    if (len > OP_CONFIG_MAX_BYTES) {
        diag_add(&c, 0, 0, "file is larger than %u bytes (1 MiB): refused", OP_CONFIG_MAX_BYTES);
        return finish(&c, NULL, out, errs);
    }
    op_config *cfg = calloc(1, sizeof *cfg);
    if (!cfg) {
        c.oom = true;
        return finish(&c, NULL, out, errs);
    }
    cfg->path = xstrdup(&c, c.name);
    cfg->base_dir = xstrdup(&c, base_dir ? base_dir : ".");
    set_defaults(&c, cfg);

    node *root = build_tree(&c, text ? text : "", len);
    if (root && !root->poison) {
        if (is_null(root)) {
            diag_add(&c, root->line, root->col,
                     "the configuration is empty: expected a mapping with at least 'server'");
        } else if (root->kind != N_MAP) {
            char buf[96];
            diag_add(&c, root->line, root->col, "expected a mapping at top level, got %s",
                     describe(buf, sizeof buf, root));
        } else {
            walk_mapping(&c, root, "", top_fields, cfg);
            check_unique(&c, cfg, root);
        }
    } else if (!root && c.nd == 0 && !c.oom) {
        diag_add(&c, 1, 1, "the configuration is empty: expected a mapping with at least 'server'");
    }
    node_free(root);
    return finish(&c, cfg, out, errs);
}

/* The config's directory, absolute when it can be, so that paths still work
 * after the daemon changes directory. */
static char *config_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    if (!dir)
        return NULL;
    char *abs = realpath(dir, NULL);
    if (abs) {
        free(dir);
        return abs;
    }
    return dir;
}

int op_config_load(const char *path, op_config **out, op_config_errors *errs)
{
    if (out)
        *out = NULL;
    if (errs)
        *errs = (op_config_errors){0};
    ctx c = {.name = path ? path : "<config>"};
    if (!path || !out) {
        diag_add(&c, 0, 0, "invalid arguments");
        return finish(&c, NULL, out, errs);
    }
    char *text = NULL;
    size_t len = 0;
    int rc = pl_file_read_all(path, OP_CONFIG_MAX_BYTES, &text, &len);
    if (rc == -EFBIG) {
        diag_add(&c, 0, 0, "file is larger than %u bytes (1 MiB): refused", OP_CONFIG_MAX_BYTES);
        return finish(&c, NULL, out, errs);
    }
    if (rc != 0) {
        diag_add(&c, 0, 0, "%s", strerror(-rc));
        return finish(&c, NULL, out, errs);
    }
    char *dir = config_dir(path);
    if (!dir) {
        free(text);
        c.oom = true;
        return finish(&c, NULL, out, errs);
    }
    rc = op_config_parse(path, dir, text, len, out, errs);
    free(dir);
    free(text);
    return rc;
}

const op_config_account *op_config_find_account(const op_config *cfg, const char *id)
{
    if (!cfg || !id)
        return NULL;
    for (size_t i = 0; i < cfg->n_accounts; i++)
        if (cfg->accounts[i].id && strcmp(cfg->accounts[i].id, id) == 0)
            return &cfg->accounts[i];
    return NULL;
}

const op_config_gateway *op_config_find_gateway(const op_config *cfg, const char *account,
                                                const char *id)
{
    if (!cfg || !account || !id)
        return NULL;
    for (size_t i = 0; i < cfg->n_gateways; i++) {
        const op_config_gateway *g = &cfg->gateways[i];
        if (g->account && g->id && strcmp(g->account, account) == 0 && strcmp(g->id, id) == 0)
            return g;
    }
    return NULL;
}

const op_config_model *op_config_find_model(const op_config *cfg, const char *id_or_alias)
{
    if (!cfg || !id_or_alias)
        return NULL;
    for (size_t i = 0; i < cfg->n_models; i++) {
        const op_config_model *m = &cfg->models[i];
        if (m->id && strcmp(m->id, id_or_alias) == 0)
            return m;
        for (size_t j = 0; j < m->n_aliases; j++)
            if (strcmp(m->aliases[j], id_or_alias) == 0)
                return m;
    }
    return NULL;
}

static bool str_eq(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static bool strv_eq(char *const *a, size_t na, char *const *b, size_t nb)
{
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++)
        if (!str_eq(a[i], b[i]))
            return false;
    return true;
}

const char *op_config_restart_required(const op_config *old, const op_config *new_cfg)
{
    const op_config_server *a = &old->server, *b = &new_cfg->server;
    if (!str_eq(a->listen_host, b->listen_host) || a->listen_port != b->listen_port)
        return "server.listen";
    if (a->workers != b->workers)
        return "server.workers";
    if (a->max_body_bytes != b->max_body_bytes)
        return "server.max_body_bytes";
    if (a->max_header_bytes != b->max_header_bytes)
        return "server.max_header_bytes";
    if (a->max_connections != b->max_connections)
        return "server.max_connections";
    if (a->idle_timeout_s != b->idle_timeout_s)
        return "server.idle_timeout_s";
    if (a->request_timeout_s != b->request_timeout_s)
        return "server.request_timeout_s";
    if (a->shutdown_grace_s != b->shutdown_grace_s)
        return "server.shutdown_grace_s";
    if (!str_eq(old->data_dir, new_cfg->data_dir))
        return "data_dir";
    if (old->cpu_threads != new_cfg->cpu_threads)
        return "devices.cpu.threads";
    if (!strv_eq(old->plugin_dirs, old->n_plugin_dirs, new_cfg->plugin_dirs,
                 new_cfg->n_plugin_dirs))
        return "plugins.dirs";
    return NULL;
}
