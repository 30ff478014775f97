/* vx_filter: Vectorize metadata filter parser and matcher (see vx_filter.h). */
#include "vector/vx_filter.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "platform/pl_err.h"

typedef struct vx_key {
    char *path;     /* as written, NUL-terminated */
    size_t nseg;
    char **seg;     /* segments split at '.', each NUL-terminated */
    size_t *seglen;
    unsigned ops;
} vx_key;

struct vx_filter {
    vx_clause *clauses;
    size_t nclauses, capclauses;
    vx_key *keys;
    size_t nkeys, capkeys;
};

static const char *const op_names[VX_OP_COUNT_] = {
    "$eq", "$ne", "$in", "$nin", "$lt", "$lte", "$gt", "$gte",
};

const char *vx_op_name(vx_op op) {
    return (unsigned)op < VX_OP_COUNT_ ? op_names[op] : "?";
}

/* Keys in messages are shown up to 64 bytes so a message stays short even
 * for an oversized key. */
#define KEY_SHOWN 64

void vx_filter_free(vx_filter *f) {
    if (!f)
        return;
    for (size_t i = 0; i < f->nclauses; i++) {
        vx_value *v = (vx_value *)f->clauses[i].values;
        for (size_t j = 0; j < f->clauses[i].nvalues; j++)
            free((char *)v[j].str);
        free(v);
    }
    for (size_t i = 0; i < f->nkeys; i++) {
        for (size_t j = 0; j < f->keys[i].nseg; j++)
            free(f->keys[i].seg[j]);
        free(f->keys[i].seg);
        free(f->keys[i].seglen);
        free(f->keys[i].path);
    }
    free(f->clauses);
    free(f->keys);
    free(f);
}

/* Validates a key and returns its index in f->keys (adding it), or -1. */
static long add_key(vx_filter *f, const char *key, size_t klen, char *err, size_t errlen) {
    if (klen == 0) {
        pl_errf(err, errlen, "filter key must not be empty");
        return -1;
    }
    /* Vectorize counts characters: UTF-8 lead bytes (jansson keys are
     * valid UTF-8). */
    size_t chars = 0;
    for (size_t i = 0; i < klen; i++)
        chars += ((unsigned char)key[i] & 0xc0) != 0x80;
    if (chars > VX_FILTER_MAX_KEY) {
        pl_errf(err, errlen, "filter key exceeds %d characters: '%.*s...'", VX_FILTER_MAX_KEY,
                KEY_SHOWN, key);
        return -1;
    }
    if (memchr(key, '\0', klen)) {
        pl_errf(err, errlen, "filter key must not contain NUL: '%.*s'", KEY_SHOWN, key);
        return -1;
    }
    if (memchr(key, '"', klen)) {
        pl_errf(err, errlen, "filter key must not contain '\"': '%.*s'", KEY_SHOWN, key);
        return -1;
    }
    if (key[0] == '$') {
        pl_errf(err, errlen, "filter key must not start with '$': '%.*s'", KEY_SHOWN, key);
        return -1;
    }
    if (key[0] == '.' || key[klen - 1] == '.' || strstr(key, "..")) {
        pl_errf(err, errlen, "filter key has an empty segment: '%.*s'", KEY_SHOWN, key);
        return -1;
    }
    for (size_t i = 0; i < f->nkeys; i++)
        if (strcmp(f->keys[i].path, key) == 0)
            return (long)i;
    if (f->nkeys == f->capkeys) {
        size_t cap = f->capkeys ? f->capkeys * 2 : 8;
        vx_key *nk = realloc(f->keys, cap * sizeof *nk);
        if (!nk)
            goto oom;
        f->keys = nk;
        f->capkeys = cap;
    }
    vx_key *k = &f->keys[f->nkeys];
    memset(k, 0, sizeof *k);
    size_t nseg = 1;
    for (size_t i = 0; i < klen; i++)
        nseg += key[i] == '.';
    k->path = strndup(key, klen);
    k->seg = calloc(nseg, sizeof *k->seg);
    k->seglen = calloc(nseg, sizeof *k->seglen);
    f->nkeys++; /* owned by f from here on, freed with it on any failure */
    if (!k->path || !k->seg || !k->seglen)
        goto oom;
    const char *s = key;
    for (size_t i = 0; i < nseg; i++) {
        const char *dot = memchr(s, '.', klen - (size_t)(s - key));
        size_t n = dot ? (size_t)(dot - s) : klen - (size_t)(s - key);
        k->seg[i] = strndup(s, n);
        if (!k->seg[i])
            goto oom;
        k->seglen[i] = n;
        k->nseg = i + 1;
        s += n + 1;
    }
    return (long)(f->nkeys - 1);
oom:
    pl_errf(err, errlen, "out of memory");
    return -1;
}

static int value_from_json(const json_t *j, vx_value *out) {
    memset(out, 0, sizeof *out);
    switch (json_typeof(j)) {
    case JSON_NULL:
        out->type = VX_V_NULL;
        return 0;
    case JSON_TRUE:
    case JSON_FALSE:
        out->type = VX_V_BOOL;
        out->b = json_is_true(j);
        return 0;
    case JSON_INTEGER:
    case JSON_REAL:
        out->type = VX_V_NUMBER;
        out->num = json_number_value(j);
        return 0;
    case JSON_STRING: {
        out->type = VX_V_STRING;
        out->len = json_string_length(j);
        char *s = malloc(out->len + 1);
        if (!s)
            return -2;
        memcpy(s, json_string_value(j), out->len);
        s[out->len] = '\0';
        out->str = s;
        return 0;
    }
    default:
        return -1;
    }
}

static const char *type_word(const json_t *j) {
    switch (json_typeof(j)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER:
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

static int add_clause(vx_filter *f, long ki, vx_op op, const json_t *operand, char *err,
                      size_t errlen) {
    const char *key = f->keys[ki].path;
    size_t n = 1;
    if (op == VX_OP_IN || op == VX_OP_NIN) {
        if (!json_is_array(operand) || json_array_size(operand) == 0) {
            pl_errf(err, errlen, "operator '%s' for key '%.*s' needs a non-empty array",
                    op_names[op], KEY_SHOWN, key);
            return -1;
        }
        n = json_array_size(operand);
        if (n > VX_FILTER_MAX_IN) {
            pl_errf(err, errlen, "operator '%s' for key '%.*s' accepts at most %d values",
                    op_names[op], KEY_SHOWN, key, VX_FILTER_MAX_IN);
            return -1;
        }
    }
    if (f->nclauses == f->capclauses) {
        size_t cap = f->capclauses ? f->capclauses * 2 : 8;
        vx_clause *nc = realloc(f->clauses, cap * sizeof *nc);
        if (!nc)
            goto oom;
        f->clauses = nc;
        f->capclauses = cap;
    }
    vx_value *vals = calloc(n, sizeof *vals);
    if (!vals)
        goto oom;
    vx_clause *c = &f->clauses[f->nclauses++];
    c->key = key;
    c->key_index = (size_t)ki;
    c->op = op;
    c->values = vals;
    c->nvalues = 0;
    for (size_t i = 0; i < n; i++) {
        const json_t *j = (op == VX_OP_IN || op == VX_OP_NIN) ? json_array_get(operand, i)
                                                               : operand;
        int rc = value_from_json(j, &vals[i]);
        if (rc == -2)
            goto oom;
        if (rc < 0) {
            pl_errf(err, errlen,
                    "operator '%s' for key '%.*s' needs a string, number, boolean or null, "
                    "not %s",
                    op_names[op], KEY_SHOWN, key, type_word(j));
            return -1;
        }
        c->nvalues = i + 1;
        if (op >= VX_OP_LT && vals[i].type != VX_V_NUMBER && vals[i].type != VX_V_STRING) {
            pl_errf(err, errlen, "operator '%s' for key '%.*s' needs a number or a string",
                    op_names[op], KEY_SHOWN, key);
            return -1;
        }
    }
    f->keys[ki].ops |= VX_OP_BIT(op);
    return 0;
oom:
    pl_errf(err, errlen, "out of memory");
    return -1;
}

vx_filter *vx_filter_parse(const json_t *filter, char *err, size_t errlen) {
    if (err && errlen)
        err[0] = '\0';
    if (!json_is_object(filter)) {
        pl_errf(err, errlen, "filter must be a JSON object");
        return NULL;
    }
    if (json_object_size(filter) == 0) {
        pl_errf(err, errlen, "filter must be a non-empty object");
        return NULL;
    }
    size_t bytes = json_dumpb(filter, NULL, 0, JSON_COMPACT | JSON_ENCODE_ANY);
    if (bytes >= VX_FILTER_MAX_BYTES) {
        pl_errf(err, errlen, "filter exceeds the limit of %d bytes of JSON", VX_FILTER_MAX_BYTES);
        return NULL;
    }
    vx_filter *f = calloc(1, sizeof *f);
    if (!f) {
        pl_errf(err, errlen, "out of memory");
        return NULL;
    }
    const char *key;
    size_t klen;
    json_t *val;
    json_object_keylen_foreach((json_t *)filter, key, klen, val) {
        long ki = add_key(f, key, klen, err, errlen);
        if (ki < 0)
            goto fail;
        if (!json_is_object(val)) {
            if (json_is_array(val)) {
                pl_errf(err, errlen, "value for key '%.*s' must be a string, number, boolean, "
                        "null or an object of operators, not an array", KEY_SHOWN, key);
                goto fail;
            }
            if (add_clause(f, ki, VX_OP_EQ, val, err, errlen) < 0)
                goto fail;
            continue;
        }
        if (json_object_size(val) == 0) {
            pl_errf(err, errlen, "operators for key '%.*s' must not be empty", KEY_SHOWN, key);
            goto fail;
        }
        const char *opk;
        size_t oplen;
        json_t *operand;
        json_object_keylen_foreach(val, opk, oplen, operand) {
            int op = -1;
            for (int i = 0; i < VX_OP_COUNT_; i++)
                if (strlen(op_names[i]) == oplen && memcmp(op_names[i], opk, oplen) == 0)
                    op = i;
            if (op < 0) {
                pl_errf(err, errlen, "unknown operator '%.*s' for key '%.*s'",
                        (int)(oplen > KEY_SHOWN ? KEY_SHOWN : oplen), opk, KEY_SHOWN, key);
                goto fail;
            }
            if (add_clause(f, ki, (vx_op)op, operand, err, errlen) < 0)
                goto fail;
        }
    }
    return f;
fail:
    vx_filter_free(f);
    return NULL;
}

vx_filter *vx_filter_parse_text(const char *text, size_t len, char *err, size_t errlen) {
    if (err && errlen)
        err[0] = '\0';
    json_error_t je;
    json_t *j = json_loadb(text ? text : "", text ? len : 0, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (!j) {
        pl_errf(err, errlen, "filter is not valid JSON: %s", je.text);
        return NULL;
    }
    vx_filter *f = vx_filter_parse(j, err, errlen);
    json_decref(j);
    return f;
}

int vx_value_cmp(const vx_value *a, const vx_value *b) {
    switch (a->type) {
    case VX_V_NULL:
        return 0;
    case VX_V_BOOL:
        return (int)a->b - (int)b->b;
    case VX_V_NUMBER:
        return a->num < b->num ? -1 : a->num > b->num ? 1 : 0;
    case VX_V_STRING: {
        size_t n = a->len < b->len ? a->len : b->len;
        int c = memcmp(a->str, b->str, n);
        if (c)
            return c;
        return a->len < b->len ? -1 : a->len > b->len ? 1 : 0;
    }
    }
    return 0;
}

/* The metadata value as a vx_value (borrowing the string); false when it is
 * an array or an object (never equal to an operand). */
static bool json_as_value(const json_t *j, vx_value *v) {
    memset(v, 0, sizeof *v);
    switch (json_typeof(j)) {
    case JSON_NULL: v->type = VX_V_NULL; return true;
    case JSON_TRUE: v->type = VX_V_BOOL; v->b = true; return true;
    case JSON_FALSE: v->type = VX_V_BOOL; v->b = false; return true;
    case JSON_INTEGER:
    case JSON_REAL: v->type = VX_V_NUMBER; v->num = json_number_value(j); return true;
    case JSON_STRING:
        v->type = VX_V_STRING;
        v->str = json_string_value(j);
        v->len = json_string_length(j);
        return true;
    default: return false;
    }
}

static const json_t *lookup(const vx_key *k, const json_t *md) {
    const json_t *cur = md;
    for (size_t i = 0; i < k->nseg; i++) {
        if (!json_is_object(cur))
            return NULL;
        cur = json_object_getn(cur, k->seg[i], k->seglen[i]);
    }
    return cur;
}

static bool any_equal(const vx_clause *c, const vx_value *mv) {
    for (size_t i = 0; i < c->nvalues; i++)
        if (c->values[i].type == mv->type && vx_value_cmp(mv, &c->values[i]) == 0)
            return true;
    return false;
}

bool vx_filter_match(const vx_filter *f, const json_t *metadata) {
    if (!f)
        return true;
    for (size_t i = 0; i < f->nclauses; i++) {
        const vx_clause *c = &f->clauses[i];
        const json_t *j = lookup(&f->keys[c->key_index], metadata);
        vx_value mv;
        bool have = j && json_as_value(j, &mv);
        bool ok;
        switch (c->op) {
        case VX_OP_EQ:
        case VX_OP_IN:
            ok = have && any_equal(c, &mv);
            break;
        case VX_OP_NE:
        case VX_OP_NIN:
            ok = !(have && any_equal(c, &mv));
            break;
        default: {
            if (!have || mv.type != c->values[0].type) {
                ok = false;
                break;
            }
            int cmp = vx_value_cmp(&mv, &c->values[0]);
            ok = c->op == VX_OP_LT    ? cmp < 0
                 : c->op == VX_OP_LTE ? cmp <= 0
                 : c->op == VX_OP_GT  ? cmp > 0
                                      : cmp >= 0;
            break;
        }
        }
        if (!ok)
            return false;
    }
    return true;
}

size_t vx_filter_nkeys(const vx_filter *f) { return f->nkeys; }

const char *vx_filter_key(const vx_filter *f, size_t i) {
    return i < f->nkeys ? f->keys[i].path : NULL;
}

unsigned vx_filter_key_ops(const vx_filter *f, size_t i) {
    return i < f->nkeys ? f->keys[i].ops : 0;
}

size_t vx_filter_nclauses(const vx_filter *f) { return f->nclauses; }

const vx_clause *vx_filter_clause(const vx_filter *f, size_t i) {
    return i < f->nclauses ? &f->clauses[i] : NULL;
}
