/*
 * op_config: YAML -> typed config. See op_config.h and docs/config.md.
 *
 * Two passes. The first turns libyaml's event stream into a small tree of
 * nodes that keep their 1-based positions; it enforces the structural limits
 * (size, depth, one document, no anchors/aliases/tags) and flags duplicate
 * mapping keys. The second walks the tree against a table per section and
 * fills the op_config structs, collecting every error it meets (a provider's
 * api_key_env variable is read once its whole mapping is walked). Cross-entry
 * checks (duplicate ids, duplicate token hashes, gateway accounts) run last.
 * Errors are sorted by position before they are handed back, so they read in
 * file order.
 */
#include "config/op_config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <locale.h>
#include <math.h>
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
#define MAX_FIELDS 20 /* keys of the largest section */

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
    /* While a gateway provider is walked: its name, when it has a valid one,
     * for messages about its secrets (which name the provider, never the
     * value). NULL otherwise. */
    const char *provider;
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

/* Digits with '_' only between two of them, copied to *o without the '_'.
 * Returns how many digits there were, or -1 on a misplaced '_'. */
static int float_digits(const char **sp, const char *end, char **o, const char *oend)
{
    const char *s = *sp;
    int n = 0;
    while (s < end && (isdigit((unsigned char)*s) || *s == '_')) {
        if (*s == '_') {
            if (n == 0 || s + 1 >= end || !isdigit((unsigned char)s[1]))
                return -1;
        } else {
            if (*o >= oend)
                return -1;
            *(*o)++ = *s;
            n++;
        }
        s++;
    }
    *sp = s;
    return n;
}

/* A decimal number, YAML 1.2 core schema style: [-+]?(.D+|D+(.D*)?)([eE][-+]?D+)?
 * with '_' between digits as for integers. No .inf, .nan or hex: a price
 * or a limit is always a plain decimal. Converted in the C locale whatever
 * locale the process runs in. NUM_RANGE: not finite (1e999). */
static numres parse_float(const char *s, size_t len, double *out)
{
    char buf[80], *o = buf, *oend = buf + sizeof buf - 1;
    const char *end = s + len;
    if (len == 0 || len >= sizeof buf)
        return NUM_SYNTAX;
    if (*s == '+' || *s == '-')
        *o++ = *s++;
    int ni = float_digits(&s, end, &o, oend), nf = 0;
    if (ni < 0)
        return NUM_SYNTAX;
    if (s < end && *s == '.') {
        *o++ = *s++;
        if ((nf = float_digits(&s, end, &o, oend)) < 0)
            return NUM_SYNTAX;
    }
    if (ni + nf == 0)
        return NUM_SYNTAX;
    if (s < end && (*s == 'e' || *s == 'E')) {
        *o++ = *s++;
        if (s < end && (*s == '+' || *s == '-'))
            *o++ = *s++;
        int ne = float_digits(&s, end, &o, oend);
        if (ne <= 0)
            return NUM_SYNTAX;
    }
    if (s != end)
        return NUM_SYNTAX;
    *o = '\0';
    /* newlocale fails only without memory: the process locale then serves,
     * which is "C" unless something called setlocale. */
    locale_t cl = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
    char *stop = NULL;
    double v = cl != (locale_t)0 ? strtod_l(buf, &stop, cl) : strtod(buf, &stop);
    if (cl != (locale_t)0)
        freelocale(cl);
    if (*stop != '\0')
        return NUM_SYNTAX;
    if (!isfinite(v))
        return NUM_RANGE;
    *out = v == 0 ? 0.0 : v; /* -0 is 0 */
    return NUM_OK;
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

static void f_i64(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    int64_t x;
    if (get_int(c, v, f, path, &x))
        *MEMBER(obj, f, int64_t) = x;
}

/* true/false in YAML's three spellings each; quoted is read the same way,
 * as quoted numbers are. */
static void f_bool(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    static const char *const yes[] = {"true", "True", "TRUE"}, *const no[] = {"false", "False",
                                                                            "FALSE"};
    if (v->kind == N_SCALAR) {
        for (size_t i = 0; i < 3; i++) {
            if (strcmp(v->s, yes[i]) == 0 || strcmp(v->s, no[i]) == 0) {
                *MEMBER(obj, f, bool) = v->s[0] == 't' || v->s[0] == 'T';
                return;
            }
        }
    }
    type_error(c, v, "true or false", path);
}

/* A decimal number >= lo and, when hi > lo, <= hi (hi <= lo: no upper bound). */
static void f_double(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    double x = 0;
    numres r = v->kind == N_SCALAR ? parse_float(v->s, v->len, &x) : NUM_SYNTAX;
    if (r == NUM_SYNTAX) {
        type_error(c, v, "a number", path);
        return;
    }
    char tmp[80];
    if (f->hi > f->lo && (r == NUM_RANGE || x < (double)f->lo || x > (double)f->hi)) {
        diag_add(c, v->line, v->col, "%s must be between %lld and %lld, got %s", path,
                 (long long)f->lo, (long long)f->hi, show(tmp, sizeof tmp, v->s, v->len));
        return;
    }
    if (r == NUM_RANGE || x < (double)f->lo) {
        diag_add(c, v->line, v->col, "%s must be a finite number of at least %lld, got %s", path,
                 (long long)f->lo, show(tmp, sizeof tmp, v->s, v->len));
        return;
    }
    *MEMBER(obj, f, double) = x;
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

/* Checks one entry of a kv mapping before it is kept; false drops it (after
 * reporting why). key and val are scalars without NULs. */
typedef bool (*kv_check)(ctx *c, const node *key, const node *val, const char *key_path);

static void free_kv(op_config_kv *kv, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(kv[i].key);
        free(kv[i].value);
    }
    free(kv);
}

/* A mapping of scalar -> scalar into *out (replacing what was there), both
 * as written. secret: a value is never echoed, not even in a type error. */
static void get_kv(ctx *c, const node *v, const char *path, kv_check check, bool secret,
                   op_config_kv **out, size_t *out_n)
{
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
        if (secret && memchr(val->s, '\0', val->len)) {
            diag_add(c, val->line, val->col, "%s contains a NUL character (value not shown)", kp);
            continue;
        }
        const char *vs = scalar_text(c, val, kp);
        if (!vs || (check && !check(c, key, val, kp)))
            continue;
        kv[k].key = xstrdup(c, ks);
        kv[k].value = xstrdup(c, vs);
        k++;
    }
    free_kv(*out, *out_n);
    *out = kv;
    *out_n = k;
}

static void f_options(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    op_config_model *m = obj;
    get_kv(c, v, path, NULL, false, &m->options, &m->n_options);
}

/* ---- gateways ---------------------------------------------------------- */

static const char *const provider_kind_names[] = {"openai", "workers-ai", NULL};
static const char *const backoff_names[] = {"constant", "linear", "exponential", NULL};
static const char *const technique_names[] = {"fixed", "sliding", NULL};
_Static_assert(OP_PROVIDER_OPENAI == 0 && OP_PROVIDER_WORKERS_AI == 1,
               "provider_kind_names follows op_provider_kind");
_Static_assert(OP_BACKOFF_CONSTANT == 0 && OP_BACKOFF_LINEAR == 1 && OP_BACKOFF_EXPONENTIAL == 2,
               "backoff_names follows op_backoff");
/* Names that steps use for the agent's own models: a provider may not take them. */
static const char *const reserved_provider_names[] = {"local", "workers-ai", NULL};

#define LOWER_ID_RULE "1 to 64 characters of a-z 0-9 _ -"
#define MAX_API_KEY 4096

/* The parenthesis that closes a message about a provider's secrets:
 * " (provider 'NAME'; NOTE)", " (provider 'NAME')", " (NOTE)" or "". */
static const char *provider_note(ctx *c, char *buf, size_t sz, const char *note)
{
    if (c->provider && note)
        snprintf(buf, sz, " (provider '%s'; %s)", c->provider, note);
    else if (c->provider)
        snprintf(buf, sz, " (provider '%s')", c->provider);
    else if (note)
        snprintf(buf, sz, " (%s)", note);
    else
        buf[0] = '\0';
    return buf;
}

static void f_gw_account(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    char *s = get_ident(c, v, path, 64, ACCOUNT_ID_RULE, account_id_ok);
    if (s)
        set_str(&((op_config_gateway *)obj)->account, s);
}

static void f_gw_id(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    char *s = get_ident(c, v, path, 64, LOWER_ID_RULE, plugin_name_ok);
    if (s)
        set_str(&((op_config_gateway *)obj)->id, s);
}

static void f_backoff(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    int i = get_enum(c, v, path, backoff_names);
    if (i >= 0)
        ((op_config_gateway *)obj)->backoff = (op_backoff)i; /* names follow op_backoff */
}

static void f_technique(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    int i = get_enum(c, v, path, technique_names);
    if (i >= 0)
        ((op_config_gateway *)obj)->rate_limit_sliding = i == 1;
}

static void f_provider_name(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    char *s = get_ident(c, v, path, 64, LOWER_ID_RULE, plugin_name_ok);
    if (!s)
        return;
    for (size_t i = 0; reserved_provider_names[i]; i++) {
        if (strcmp(s, reserved_provider_names[i]) == 0) {
            diag_add(c, v->line, v->col,
                     "%s '%s' is reserved for the agent's own models (local, workers-ai): "
                     "choose another name",
                     path, s);
            free(s);
            return;
        }
    }
    set_str(&((op_config_provider *)obj)->name, s);
}

static void f_provider_kind(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    int i = get_enum(c, v, path, provider_kind_names);
    if (i >= 0)
        ((op_config_provider *)obj)->kind = (op_provider_kind)i; /* names follow the enum */
}

/* "http(s)://HOST[:PORT][/PATH]": the agent appends API paths to it, so no
 * query, no fragment and no trailing '/' (one is stripped). Bytes outside
 * printable ASCII could not go into a request line. A URL with user:pass@
 * is refused without being shown: it holds a secret. */
static void f_base_url(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    const char *s = scalar_text(c, v, path);
    if (!s)
        return;
    char tmp[80], got[100];
    size_t n = strlen(s);
    const char *rest = strncmp(s, "https://", 8) == 0  ? s + 8
                       : strncmp(s, "http://", 7) == 0 ? s + 7
                                                       : NULL;
    const char *host_end = rest ? rest + strcspn(rest, "/") : NULL;
    if (rest && memchr(rest, '@', (size_t)(host_end - rest))) {
        diag_add(c, v->line, v->col,
                 "%s must not hold credentials (user:password@): use api_key or headers "
                 "(value not shown)",
                 path);
        return;
    }
    /* An '@' elsewhere may still be a mistyped credential: do not echo it. */
    if (memchr(s, '@', n))
        snprintf(got, sizeof got, "got a value with '@' (not shown)");
    else
        snprintf(got, sizeof got, "got '%s'", show(tmp, sizeof tmp, v->s, v->len));
    if (!rest) {
        diag_add(c, v->line, v->col, "%s must start with http:// or https://, %s", path, got);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch <= 0x20 || ch >= 0x7f) {
            diag_add(c, v->line, v->col, "%s must be printable ASCII without spaces, %s", path,
                     got);
            return;
        }
    }
    if (host_end == rest) {
        diag_add(c, v->line, v->col, "%s has no host, %s", path, got);
        return;
    }
    if (strpbrk(s, "?#")) {
        diag_add(c, v->line, v->col,
                 "%s must not have a query or fragment (API paths are appended to it), %s", path,
                 got);
        return;
    }
    if (s[n - 1] == '/')
        n--;
    if (s[n - 1] == '/') {
        diag_add(c, v->line, v->col, "%s must not end with '//', %s", path, got);
        return;
    }
    set_str(&((op_config_provider *)obj)->base_url, xstrndup(c, s, n));
}

/* A key goes into an Authorization header: visible ASCII only, so that no
 * value can split the header. The value is never shown. */
static bool api_key_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > MAX_API_KEY)
        return false;
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f)
            return false;
    return true;
}

static void f_api_key(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    char lb[96];
    if (v->kind != N_SCALAR) {
        diag_add(c, v->line, v->col, "expected a string for %s, got %s%s", path,
                 v->kind == N_MAP ? "a mapping" : "a sequence",
                 provider_note(c, lb, sizeof lb, NULL));
        return;
    }
    if (memchr(v->s, '\0', v->len) || !api_key_ok(v->s)) {
        diag_add(c, v->line, v->col,
                 "%s must be 1 to %d visible ASCII characters without spaces%s", path,
                 MAX_API_KEY, provider_note(c, lb, sizeof lb, "value not shown"));
        return;
    }
    set_str(&((op_config_provider *)obj)->api_key, xstrdup(c, v->s));
}

static bool env_name_ok(const char *s)
{
    if (!(isalpha((unsigned char)*s) || *s == '_'))
        return false;
    return id_chars(s, "_", false);
}

/* Only the variable's name here; it is read once the whole provider is
 * known (provider_finish), so its messages can name the provider. */
static void f_api_key_env(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    char *s = get_ident(c, v, path, 128,
                        "an environment variable name (A-Z a-z 0-9 _, not starting with a digit)",
                        env_name_ok);
    if (s)
        set_str(&((op_config_provider *)obj)->api_key_env, s);
}

/* RFC 9110 token characters. */
static bool header_name_ok(const char *s)
{
    return id_chars(s, "!#$%&'*+-.^_`|~", false);
}

/* Names the HTTP client owns: a configured one would break the framing or
 * the routing of the request. */
static const char *const owned_headers[] = {"host", "content-length", "transfer-encoding",
                                            "connection", NULL};

static bool header_check(ctx *c, const node *key, const node *val, const char *path)
{
    char lb[96];
    if (!*key->s || key->len > 128 || !header_name_ok(key->s)) {
        diag_add(c, key->line, key->col,
                 "%s: not an HTTP header name (1 to 128 of A-Z a-z 0-9 !#$%%&'*+-.^_`|~)", path);
        return false;
    }
    for (size_t i = 0; owned_headers[i]; i++) {
        if (strcasecmp(key->s, owned_headers[i]) == 0) {
            diag_add(c, key->line, key->col,
                     "%s: the agent sets this header itself; it cannot be configured", path);
            return false;
        }
    }
    for (size_t i = 0; i < val->len; i++) {
        unsigned char ch = (unsigned char)val->s[i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f) {
            diag_add(c, val->line, val->col, "%s must not contain control characters%s", path,
                     provider_note(c, lb, sizeof lb, "value not shown"));
            return false;
        }
    }
    return true;
}

static void f_price_model(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    char *s = get_ident(c, v, path, 128, MODEL_ID_RULE, model_id_ok);
    if (s)
        set_str(&((op_config_price *)obj)->model, s);
}

static void f_headers(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    op_config_provider *p = obj;
    get_kv(c, v, path, header_check, true, &p->headers, &p->n_headers);
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
static void f_gw_tokens(ctx *c, const node *v, void *obj, const field *f, const char *path);
static void f_providers(ctx *c, const node *v, void *obj, const field *f, const char *path);
static void f_gateways(ctx *c, const node *v, void *obj, const field *f, const char *path);
static void f_prices(ctx *c, const node *v, void *obj, const field *f, const char *path);
static void f_gateway_opts(ctx *c, const node *v, void *obj, const field *f, const char *path);

static const field provider_fields[] = {
    FC("name", f_provider_name, true),
    FC("kind", f_provider_kind, false),
    FC("base_url", f_base_url, true),
    FC("api_key", f_api_key, false),
    FC("api_key_env", f_api_key_env, false),
    FC("headers", f_headers, false),
    F("timeout_ms", f_int, false, op_config_provider, timeout_ms, 1, 3600000),
    F("connect_timeout_ms", f_int, false, op_config_provider, connect_timeout_ms, 1, 3600000),
    END,
};

/* max_age_s: 100 years, so that it still fits int64 nanoseconds. */
static const field retention_fields[] = {
    F("max_logs", f_u64, false, op_config_gateway, retention_max_logs, 0, 1000000000000LL),
    F("max_age_s", f_i64, false, op_config_gateway, retention_max_age_s, 0, 3153600000LL),
    END,
};

/* limit: hi 0 = no upper bound (see f_double). */
static const field rate_limit_fields[] = {
    F("limit", f_double, false, op_config_gateway, rate_limit, 0, 0),
    F("window_s", f_double, false, op_config_gateway, rate_limit_window_s, 1, 86400),
    FC("technique", f_technique, false),
    END,
};

/* retention and rate_limit fill members of op_config_gateway itself: off 0 */
static const field gateway_fields[] = {
    FC("account", f_gw_account, true),
    FC("id", f_gw_id, true),
    F("authentication", f_bool, false, op_config_gateway, authentication, 0, 0),
    FC("tokens", f_gw_tokens, false),
    F("collect_logs", f_bool, false, op_config_gateway, collect_logs, 0, 0),
    F("log_payloads", f_bool, false, op_config_gateway, log_payloads, 0, 0),
    F("max_payload_bytes", f_size, false, op_config_gateway, max_payload_bytes, 0, 16 * MIB),
    {.key = "retention", .fn = f_section, .sub = retention_fields},
    F("cache_ttl_s", f_int, false, op_config_gateway, cache_ttl_s, 0, 31536000),
    F("request_timeout_ms", f_int, false, op_config_gateway, request_timeout_ms, 0, 3600000),
    F("max_attempts", f_int, false, op_config_gateway, max_attempts, 1, 5),
    F("retry_delay_ms", f_int, false, op_config_gateway, retry_delay_ms, 0, 5000),
    FC("backoff", f_backoff, false),
    {.key = "rate_limit", .fn = f_section, .sub = rate_limit_fields},
    F("sync_logs", f_bool, false, op_config_gateway, sync_logs, 0, 0),
    FC("providers", f_providers, false),
    END,
};

static const field price_fields[] = {
    FC("model", f_price_model, true),
    F("input", f_double, false, op_config_price, input_per_mtok, 0, 0),
    F("output", f_double, false, op_config_price, output_per_mtok, 0, 0),
    END,
};

static const field gateway_opts_fields[] = {
    F("cache_bytes", f_size, false, op_config_gateway_opts, cache_bytes, 0, MAX_SIZE_BYTES),
    F("upstream_threads", f_int, false, op_config_gateway_opts, upstream_threads, 1, 16),
    F("log_commit_interval_us", f_int, false, op_config_gateway_opts, log_commit_interval_us,
      100, 1000000),
    F("log_fsync", f_bool, false, op_config_gateway_opts, log_fsync, 0, 0),
    F("log_segment_bytes", f_size, false, op_config_gateway_opts, log_segment_bytes, MIB,
      1024 * MIB),
    END,
};

/* hnsw fills members of op_config_vectorize itself: off 0 */
static const field vectorize_hnsw_fields[] = {
    F("m", f_int, false, op_config_vectorize, hnsw_m, 2, 128),
    F("ef_construction", f_int, false, op_config_vectorize, hnsw_ef_construction, 1, 10000),
    F("ef_search", f_int, false, op_config_vectorize, hnsw_ef_search, 1, 10000),
    END,
};

static const field vectorize_fields[] = {
    F("enabled", f_bool, false, op_config_vectorize, enabled, 0, 0),
    F("max_dimensions", f_int, false, op_config_vectorize, max_dimensions, 1, 65536),
    F("max_indexes", f_int, false, op_config_vectorize, max_indexes, 1, 100000),
    F("fsync", f_bool, false, op_config_vectorize, fsync, 0, 0),
    F("snapshot_every_bytes", f_size, false, op_config_vectorize, snapshot_every_bytes, MIB,
      MAX_SIZE_BYTES),
    F("snapshot_every_mutations", f_u64, false, op_config_vectorize, snapshot_every_mutations, 1,
      1000000000LL),
    F("write_timeout_ms", f_int, false, op_config_vectorize, write_timeout_ms, 1, 3600000),
    {.key = "hnsw", .fn = f_section, .sub = vectorize_hnsw_fields},
    END,
};

static void f_vectorize(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    op_config_vectorize *x = &((op_config *)obj)->vectorize;
    x->pos = (op_config_pos){v->line, v->col};
    walk_mapping(c, v, path, f->sub, x);
}

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
    {.key = "gateway", .fn = f_gateway_opts, .sub = gateway_opts_fields},
    FC("gateways", f_gateways, false),
    FC("prices", f_prices, false),
    {.key = "vectorize", .fn = f_vectorize, .sub = vectorize_fields},
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
TABLE_FITS(provider_fields);
TABLE_FITS(retention_fields);
TABLE_FITS(rate_limit_fields);
TABLE_FITS(gateway_fields);
TABLE_FITS(price_fields);
TABLE_FITS(gateway_opts_fields);
TABLE_FITS(vectorize_fields);
TABLE_FITS(vectorize_hnsw_fields);

static void f_server(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    op_config_server *s = &((op_config *)obj)->server;
    s->pos = (op_config_pos){v->line, v->col};
    walk_mapping(c, v, path, f->sub, s);
}

static void f_gateway_opts(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    op_config_gateway_opts *g = &((op_config *)obj)->gateway;
    if (v->kind == N_SEQ) { /* the likely slip: one 's' short of the list */
        diag_add(c, v->line, v->col,
                 "expected a mapping for %s, got a sequence (the list of gateways is "
                 "'gateways')",
                 path);
        return;
    }
    g->pos = (op_config_pos){v->line, v->col};
    walk_mapping(c, v, path, f->sub, g);
}

/* Walks a sequence of mappings into an array of elem_size structs; each
 * item gets its pos set, its defaults from init (if not NULL) and is then
 * filled by walk_mapping with fields. */
static void *walk_items(ctx *c, const node *v, const char *path, const field *fields,
                        size_t elem_size, size_t pos_off, void (*init)(void *), size_t *out_n)
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
        if (init)
            init(obj);
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
        free_kv(m[i].options, m[i].n_options);
    }
    free(m);
}

static void free_providers(op_config_provider *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(p[i].name);
        free(p[i].base_url);
        if (p[i].api_key) /* a secret: not left behind in freed memory */
            explicit_bzero(p[i].api_key, strlen(p[i].api_key));
        free(p[i].api_key);
        free(p[i].api_key_env);
        free_kv(p[i].headers, p[i].n_headers);
    }
    free(p);
}

static void free_gateways(op_config_gateway *g, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(g[i].account);
        free(g[i].id);
        free_tokens(g[i].tokens, g[i].n_tokens);
        free_providers(g[i].providers, g[i].n_providers);
    }
    free(g);
}

static void free_prices(op_config_price *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(p[i].model);
    free(p);
}

/* Account and gateway tokens: the same shape, the same checks. */
static void get_tokens(ctx *c, const node *v, const char *path, op_config_token **out,
                       size_t *out_n)
{
    size_t n;
    op_config_token *t = walk_items(c, v, path, token_fields, sizeof *t,
                                    offsetof(op_config_token, pos), NULL, &n);
    if (!t)
        return;
    free_tokens(*out, *out_n);
    *out = t;
    *out_n = n;
}

static void f_tokens(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    op_config_account *a = obj;
    get_tokens(c, v, path, &a->tokens, &a->n_tokens);
}

static void f_gw_tokens(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    op_config_gateway *g = obj;
    get_tokens(c, v, path, &g->tokens, &g->n_tokens);
}

static void f_accounts(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    op_config *cfg = obj;
    size_t n;
    op_config_account *a = walk_items(c, v, path, account_fields, sizeof *a,
                                      offsetof(op_config_account, pos), NULL, &n);
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
                                    offsetof(op_config_model, pos), NULL, &n);
    if (!m)
        return;
    free_models(cfg->models, cfg->n_models);
    cfg->models = m;
    cfg->n_models = n;
}

static const node *map_get(const node *m, const char *key);

static void provider_init(void *obj)
{
    op_config_provider *p = obj;
    p->kind = OP_PROVIDER_OPENAI;
    p->timeout_ms = 120000;
    p->connect_timeout_ms = 10000;
}

/* What needs the whole provider: api_key vs api_key_env vs an Authorization
 * header, and reading the variable (at load, so a reload reads it again). */
static void provider_finish(ctx *c, const node *it, const char *ip, op_config_provider *p)
{
    char lb[96];
    const node *kn = map_get(it, "api_key"), *en = map_get(it, "api_key_env");
    if (kn && en && !is_null(kn) && !is_null(en)) {
        bool env_later = en->line > kn->line || (en->line == kn->line && en->col > kn->col);
        const node *at = env_later ? en : kn;
        diag_add(c, at->line, at->col, "%s: set api_key or api_key_env, not both%s", ip,
                 provider_note(c, lb, sizeof lb, NULL));
        return;
    }
    if (p->api_key_env && en) {
        const char *val = getenv(p->api_key_env);
        if (!val) {
            diag_add(c, en->line, en->col,
                     "environment variable %s named by %s.api_key_env is not set%s",
                     p->api_key_env, ip, provider_note(c, lb, sizeof lb, NULL));
        } else if (!api_key_ok(val)) {
            diag_add(c, en->line, en->col,
                     "environment variable %s named by %s.api_key_env must hold 1 to %d visible "
                     "ASCII characters without spaces%s",
                     p->api_key_env, ip, MAX_API_KEY,
                     provider_note(c, lb, sizeof lb, "value not shown"));
        } else {
            set_str(&p->api_key, xstrdup(c, val));
        }
    }
    const node *hn = map_get(it, "headers");
    for (size_t i = 0; p->api_key && hn && hn->kind == N_MAP && i + 1 < hn->n; i += 2) {
        const node *k = hn->kids[i];
        if (k->kind == N_SCALAR && !k->dup && strcasecmp(k->s, "authorization") == 0) {
            diag_add(c, k->line, k->col,
                     "%s: an Authorization header and an api key both set Authorization: "
                     "keep one%s",
                     ip, provider_note(c, lb, sizeof lb, NULL));
            break;
        }
    }
}

/* As walk_items, with the provider's name kept in c->provider while its
 * keys are walked, for the messages about its secrets. */
static void f_providers(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    op_config_gateway *g = obj;
    if (!seq_items(c, v, path, "a sequence of mappings"))
        return;
    op_config_provider *arr = calloc(v->n ? v->n : 1, sizeof *arr);
    if (!arr) {
        c->oom = true;
        return;
    }
    for (size_t i = 0; i < v->n; i++) {
        const node *it = v->kids[i];
        op_config_provider *p = &arr[i];
        char ip[PATH_BUF];
        snprintf(ip, sizeof ip, "%s[%zu]", path, i);
        p->pos = (op_config_pos){it->line, it->col};
        provider_init(p);
        if (it->poison)
            continue;
        if (it->kind != N_MAP) {
            type_error(c, it, "a mapping", ip);
            continue;
        }
        const node *nn = map_get(it, "name");
        bool named = nn && nn->kind == N_SCALAR && nn->len > 0 && nn->len <= 64 &&
                     !memchr(nn->s, '\0', nn->len) && plugin_name_ok(nn->s);
        c->provider = named ? nn->s : NULL;
        walk_mapping(c, it, ip, provider_fields, p);
        provider_finish(c, it, ip, p);
        c->provider = NULL;
    }
    free_providers(g->providers, g->n_providers);
    g->providers = arr;
    g->n_providers = v->n;
}

static void gateway_init(void *obj)
{
    op_config_gateway *g = obj;
    g->collect_logs = true;
    g->log_payloads = true;
    g->max_payload_bytes = 64 * 1024;
    g->retention_max_logs = 10000000;
    g->max_attempts = 1;
    g->retry_delay_ms = 100;
    g->backoff = OP_BACKOFF_EXPONENTIAL;
    g->rate_limit_window_s = 60;
}

static void f_gateways(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    op_config *cfg = obj;
    size_t n;
    op_config_gateway *g = walk_items(c, v, path, gateway_fields, sizeof *g,
                                      offsetof(op_config_gateway, pos), gateway_init, &n);
    if (!g)
        return;
    free_gateways(cfg->gateways, cfg->n_gateways);
    cfg->gateways = g;
    cfg->n_gateways = n;
}

static void f_prices(ctx *c, const node *v, void *obj, const field *f, const char *path)
{
    (void)f;
    op_config *cfg = obj;
    size_t n;
    op_config_price *p = walk_items(c, v, path, price_fields, sizeof *p,
                                    offsetof(op_config_price, pos), NULL, &n);
    if (!p)
        return;
    free_prices(cfg->prices, cfg->n_prices);
    cfg->prices = p;
    cfg->n_prices = n;
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

/* gateways[i] and the node it came from (the arrays keep one entry per
 * item, valid or not, so indices match). */
static const node *seq_kid(const node *seq, size_t i)
{
    return seq && seq->kind == N_SEQ && i < seq->n ? seq->kids[i] : NULL;
}

static void check_gateway_account(ctx *c, const op_config *cfg, const op_config_gateway *g,
                                  const node *an, size_t i)
{
    if (!g->account || !an || op_config_find_account(cfg, g->account))
        return;
    const char *best = NULL;
    size_t bestd = 3;
    for (size_t j = 0; j < cfg->n_accounts; j++) {
        size_t d = cfg->accounts[j].id ? edit_distance(g->account, cfg->accounts[j].id) : SIZE_MAX;
        if (d < bestd) {
            bestd = d;
            best = cfg->accounts[j].id;
        }
    }
    if (best)
        diag_add(c, an->line, an->col,
                 "unknown account '%s' for gateways[%zu].account (did you mean '%s'?)",
                 g->account, i, best);
    else
        diag_add(c, an->line, an->col,
                 "unknown account '%s' for gateways[%zu].account: list it under accounts",
                 g->account, i);
}

/* Gateway ids are unique per account; the key is "account/id", neither of
 * which may hold a '/'. */
static void check_gateway_ids(ctx *c, const op_config *cfg, const node *gws, entry *e)
{
    size_t total = 1, n = 0, o = 0;
    for (size_t i = 0; i < cfg->n_gateways; i++)
        if (cfg->gateways[i].account && cfg->gateways[i].id)
            total += strlen(cfg->gateways[i].account) + strlen(cfg->gateways[i].id) + 1;
    char *keys = malloc(total);
    if (!keys) {
        c->oom = true;
        return;
    }
    for (size_t i = 0; i < cfg->n_gateways; i++) {
        const op_config_gateway *g = &cfg->gateways[i];
        const node *idn = map_get(seq_kid(gws, i), "id");
        if (!g->account || !g->id || !idn)
            continue;
        int len = sprintf(keys + o, "%s/%s", g->account, g->id);
        push_entry(e, &n, keys + o, (size_t)len, pos_of(idn));
        o += (size_t)len;
    }
    qsort(e, n, sizeof *e, entry_cmp);
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && e[j].len == e[i].len && memcmp(e[j].key, e[i].key, e[i].len) == 0) {
            const char *k = e[j].key, *slash = memchr(k, '/', e[j].len);
            diag_add(c, e[j].pos.line, e[j].pos.column,
                     "duplicate gateway id '%.*s' in account '%.*s' (first at %d:%d)",
                     (int)(e[j].len - (size_t)(slash - k) - 1), slash + 1, (int)(slash - k), k,
                     e[i].pos.line, e[i].pos.column);
            j++;
        }
        i = j;
    }
    free(keys);
}

static void check_gateways(ctx *c, const op_config *cfg, const node *root)
{
    const node *gws = map_get(root, "gateways"), *prs = map_get(root, "prices");
    size_t cap = cfg->n_gateways + cfg->n_prices + 1;
    for (size_t i = 0; i < cfg->n_gateways; i++)
        cap += cfg->gateways[i].n_tokens + cfg->gateways[i].n_providers;
    entry *e = malloc(cap * sizeof *e);
    if (!e) {
        c->oom = true;
        return;
    }
    for (size_t i = 0; i < cfg->n_gateways; i++)
        check_gateway_account(c, cfg, &cfg->gateways[i], map_get(seq_kid(gws, i), "account"),
                              i);
    check_gateway_ids(c, cfg, gws, e);

    static const uint8_t zero[PL_SHA256_LEN];
    for (size_t i = 0; i < cfg->n_gateways; i++) {
        const op_config_gateway *g = &cfg->gateways[i];
        size_t n = 0;
        for (size_t j = 0; j < g->n_tokens; j++)
            if (g->tokens[j].name)
                push_entry(e, &n, g->tokens[j].name, strlen(g->tokens[j].name), g->tokens[j].pos);
        report_dups(c, e, n, "token name", true);
        n = 0;
        for (size_t j = 0; j < g->n_tokens; j++)
            if (memcmp(g->tokens[j].sha256, zero, sizeof zero) != 0)
                push_entry(e, &n, g->tokens[j].sha256, PL_SHA256_LEN, g->tokens[j].pos);
        report_dups(c, e, n, "token sha256", false);

        const node *pn = map_get(seq_kid(gws, i), "providers");
        n = 0;
        for (size_t j = 0; j < g->n_providers; j++) {
            const node *nn = map_get(seq_kid(pn, j), "name");
            if (g->providers[j].name && nn)
                push_entry(e, &n, g->providers[j].name, strlen(g->providers[j].name),
                           pos_of(nn));
        }
        report_dups(c, e, n, "provider name", true);
    }

    size_t n = 0;
    for (size_t i = 0; i < cfg->n_prices; i++) {
        const node *mn = map_get(seq_kid(prs, i), "model");
        if (cfg->prices[i].model && mn)
            push_entry(e, &n, cfg->prices[i].model, strlen(cfg->prices[i].model), pos_of(mn));
    }
    report_dups(c, e, n, "price for model", true);
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
    cfg->gateway.cache_bytes = 256 * MIB;
    cfg->gateway.upstream_threads = 1;
    cfg->gateway.log_commit_interval_us = 2000;
    cfg->gateway.log_fsync = true;
    cfg->gateway.log_segment_bytes = 64 * MIB;
    cfg->vectorize.enabled = true;
    cfg->vectorize.max_dimensions = 1536;
    cfg->vectorize.max_indexes = 100;
    cfg->vectorize.fsync = true;
    cfg->vectorize.snapshot_every_bytes = 64 * MIB;
    cfg->vectorize.snapshot_every_mutations = 10000;
    cfg->vectorize.write_timeout_ms = 30000;
    cfg->vectorize.hnsw_m = 16;
    cfg->vectorize.hnsw_ef_construction = 200;
    cfg->vectorize.hnsw_ef_search = 64;
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
    free_gateways(cfg->gateways, cfg->n_gateways);
    free_prices(cfg->prices, cfg->n_prices);
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
            check_gateways(&c, cfg, root);
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
    const op_config_gateway_opts *ga = &old->gateway, *gb = &new_cfg->gateway;
    if (ga->cache_bytes != gb->cache_bytes)
        return "gateway.cache_bytes";
    if (ga->upstream_threads != gb->upstream_threads)
        return "gateway.upstream_threads";
    if (ga->log_commit_interval_us != gb->log_commit_interval_us)
        return "gateway.log_commit_interval_us";
    if (ga->log_fsync != gb->log_fsync)
        return "gateway.log_fsync";
    if (ga->log_segment_bytes != gb->log_segment_bytes)
        return "gateway.log_segment_bytes";
    const op_config_vectorize *va = &old->vectorize, *vb = &new_cfg->vectorize;
    if (va->enabled != vb->enabled)
        return "vectorize.enabled";
    if (va->max_dimensions != vb->max_dimensions)
        return "vectorize.max_dimensions";
    if (va->max_indexes != vb->max_indexes)
        return "vectorize.max_indexes";
    if (va->fsync != vb->fsync)
        return "vectorize.fsync";
    if (va->snapshot_every_bytes != vb->snapshot_every_bytes)
        return "vectorize.snapshot_every_bytes";
    if (va->snapshot_every_mutations != vb->snapshot_every_mutations)
        return "vectorize.snapshot_every_mutations";
    if (va->write_timeout_ms != vb->write_timeout_ms)
        return "vectorize.write_timeout_ms";
    if (va->hnsw_m != vb->hnsw_m || va->hnsw_ef_construction != vb->hnsw_ef_construction ||
        va->hnsw_ef_search != vb->hnsw_ef_search)
        return "vectorize.hnsw";
    return NULL;
}
