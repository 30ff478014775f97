/*
 * vx_filter: every documented filter form parses (and compiles to the
 * expected clauses and key report), malformed ones are refused with exact
 * messages, the 2048-byte / 512-byte / $in limits sit exactly where stated,
 * matching follows truth tables per operator and type (missing keys, nested
 * keys, mixed types, booleans vs numbers), and seeded mutations of filters
 * never crash the parser or the matcher.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vector/vx_filter.h"

static vx_filter *parse(const char *text, char *err, size_t errlen) {
    return vx_filter_parse_text(text, strlen(text), err, errlen);
}

static void expect_error(const char *text, const char *message) {
    char err[256];
    vx_filter *f = parse(text, err, sizeof err);
    cr_assert_null(f, "accepted %s", text);
    cr_assert_str_eq(err, message, "for %s", text);
}

static bool match(const char *filter, const char *metadata) {
    char err[256];
    vx_filter *f = parse(filter, err, sizeof err);
    cr_assert_not_null(f, "%s: %s", filter, err);
    json_error_t je;
    json_t *md = metadata ? json_loads(metadata, 0, &je) : NULL;
    cr_assert(metadata == NULL || md != NULL, "bad metadata %s", metadata);
    bool r = vx_filter_match(f, md);
    json_decref(md);
    vx_filter_free(f);
    return r;
}

Test(vx_filter, documented_forms_parse) {
    static const char *const ok[] = {
        "{\"genre\": \"drama\"}",
        "{\"genre\": {\"$eq\": \"drama\"}}",
        "{\"genre\": {\"$ne\": \"drama\"}}",
        "{\"genre\": {\"$in\": [\"drama\", \"comedy\"]}}",
        "{\"genre\": {\"$nin\": [\"drama\", 3, true, null]}}",
        "{\"year\": {\"$lt\": 2000}}",
        "{\"year\": {\"$lte\": 2000.5}}",
        "{\"year\": {\"$gt\": -1}}",
        "{\"year\": {\"$gte\": 1e3}}",
        "{\"name\": {\"$gte\": \"a\", \"$lt\": \"b\"}}",
        "{\"year\": {\"$gte\": 1990, \"$lt\": 2000}, \"genre\": \"drama\"}",
        "{\"pandas.nice\": true}",
        "{\"a.b.c\": {\"$ne\": false}}",
        "{\"streaming\": null}",
        "{\"x\": 0, \"y\": -0.5, \"z\": \"\"}",
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        char err[256] = "";
        vx_filter *f = parse(ok[i], err, sizeof err);
        cr_assert_not_null(f, "%s refused: %s", ok[i], err);
        vx_filter_free(f);
    }
}

Test(vx_filter, clauses_and_key_report) {
    char err[256];
    vx_filter *f = parse("{\"year\": {\"$gte\": 1990, \"$lt\": 2000}, \"genre\": "
                         "{\"$in\": [\"a\", \"b\", \"c\"]}, \"p.q\": true, \"year\": 5}",
                         err, sizeof err);
    cr_assert_null(f, "duplicate top-level keys are invalid JSON for us");
    f = parse("{\"year\": {\"$gte\": 1990, \"$lt\": 2000}, \"genre\": "
              "{\"$in\": [\"a\", \"b\", \"c\"]}, \"p.q\": true}",
              err, sizeof err);
    cr_assert_not_null(f, "%s", err);
    cr_assert_eq(vx_filter_nkeys(f), 3);
    cr_assert_str_eq(vx_filter_key(f, 0), "year");
    cr_assert_eq(vx_filter_key_ops(f, 0), VX_OP_BIT(VX_OP_GTE) | VX_OP_BIT(VX_OP_LT));
    cr_assert_str_eq(vx_filter_key(f, 1), "genre");
    cr_assert_eq(vx_filter_key_ops(f, 1), VX_OP_BIT(VX_OP_IN));
    cr_assert_str_eq(vx_filter_key(f, 2), "p.q");
    cr_assert_eq(vx_filter_key_ops(f, 2), VX_OP_BIT(VX_OP_EQ));
    cr_assert_null(vx_filter_key(f, 3));
    cr_assert_eq(vx_filter_nclauses(f), 4);
    const vx_clause *c = vx_filter_clause(f, 0);
    cr_assert_eq(c->op, VX_OP_GTE);
    cr_assert_eq(c->nvalues, 1);
    cr_assert_eq(c->values[0].type, VX_V_NUMBER);
    cr_assert_eq(c->values[0].num, 1990.0);
    c = vx_filter_clause(f, 2);
    cr_assert_eq(c->op, VX_OP_IN);
    cr_assert_eq(c->nvalues, 3);
    cr_assert_eq(c->values[2].type, VX_V_STRING);
    cr_assert_str_eq(c->values[2].str, "c");
    cr_assert_eq(c->key_index, 1);
    c = vx_filter_clause(f, 3);
    cr_assert_eq(c->values[0].type, VX_V_BOOL);
    cr_assert(c->values[0].b);
    cr_assert_null(vx_filter_clause(f, 4));
    cr_assert_str_eq(vx_op_name(VX_OP_NIN), "$nin");
    vx_filter_free(f);
}

Test(vx_filter, malformed_filters_exact_messages) {
    expect_error("[]", "filter must be a JSON object");
    expect_error("\"x\"", "filter must be a JSON object");
    expect_error("{}", "filter must be a non-empty object");
    expect_error(" { } ", "filter must be a non-empty object");
    expect_error("{\"a\": ", "filter is not valid JSON: unexpected token near end of file");
    expect_error("{\"\": 1}", "filter key must not be empty");
    expect_error("{\"$a\": 1}", "filter key must not start with '$': '$a'");
    expect_error("{\"a\\\"b\": 1}", "filter key must not contain '\"': 'a\"b'");
    char err[256];
    json_t *nul = json_object();
    cr_assert_eq(json_object_setn_new(nul, "a\0b", 3, json_integer(1)), 0);
    cr_assert_null(vx_filter_parse(nul, err, sizeof err));
    cr_assert_str_eq(err, "filter key must not contain NUL: 'a'");
    json_decref(nul);
    expect_error("{\"a..b\": 1}", "filter key has an empty segment: 'a..b'");
    expect_error("{\".a\": 1}", "filter key has an empty segment: '.a'");
    expect_error("{\"a.\": 1}", "filter key has an empty segment: 'a.'");
    expect_error("{\"a\": {\"$foo\": 1}}", "unknown operator '$foo' for key 'a'");
    expect_error("{\"a\": {\"eq\": 1}}", "unknown operator 'eq' for key 'a'");
    expect_error("{\"a\": {}}", "operators for key 'a' must not be empty");
    expect_error("{\"a\": [1]}", "value for key 'a' must be a string, number, boolean, null "
                                 "or an object of operators, not an array");
    expect_error("{\"a\": {\"$in\": []}}", "operator '$in' for key 'a' needs a non-empty array");
    expect_error("{\"a\": {\"$nin\": 3}}", "operator '$nin' for key 'a' needs a non-empty array");
    expect_error("{\"a\": {\"$in\": [1, [2]]}}",
                 "operator '$in' for key 'a' needs a string, number, boolean or null, not an "
                 "array");
    expect_error("{\"a\": {\"$eq\": {\"b\": 1}}}",
                 "operator '$eq' for key 'a' needs a string, number, boolean or null, not an "
                 "object");
    expect_error("{\"a\": {\"$lt\": true}}", "operator '$lt' for key 'a' needs a number or a string");
    expect_error("{\"a\": {\"$gte\": null}}",
                 "operator '$gte' for key 'a' needs a number or a string");
    expect_error("{\"a\": {\"$gt\": [1]}}",
                 "operator '$gt' for key 'a' needs a string, number, boolean or null, not an "
                 "array");
    expect_error("{\"a\": 1, \"b\": {\"$lt\": 1, \"$in\": \"x\"}}",
                 "operator '$in' for key 'b' needs a non-empty array");
    /* err may be NULL or tiny: no overflow. */
    cr_assert_null(vx_filter_parse_text("{\"$a\":1}", 8, NULL, 0));
    char tiny[4];
    cr_assert_null(vx_filter_parse_text("{\"$a\":1}", 8, tiny, sizeof tiny));
    cr_assert_str_eq(tiny, "fil");
    cr_assert_null(vx_filter_parse(NULL, tiny, sizeof tiny));
}

/* {"k":"xxx...x"} of exactly `total` bytes. */
static char *sized_filter(size_t total) {
    char *s = malloc(total + 1);
    cr_assert_geq(total, 8);
    memcpy(s, "{\"k\":\"", 6);
    memset(s + 6, 'x', total - 8);
    memcpy(s + total - 2, "\"}", 3);
    cr_assert_eq(strlen(s), total);
    return s;
}

Test(vx_filter, byte_limit_2048) {
    char err[256];
    char *s = sized_filter(VX_FILTER_MAX_BYTES - 1);
    vx_filter *f = parse(s, err, sizeof err);
    cr_assert_not_null(f, "%s", err);
    vx_filter_free(f);
    json_t *j = json_loads(s, 0, NULL);
    f = vx_filter_parse(j, err, sizeof err);
    cr_assert_not_null(f, "%s", err);
    vx_filter_free(f);
    json_decref(j);
    free(s);

    s = sized_filter(VX_FILTER_MAX_BYTES);
    expect_error(s, "filter exceeds the limit of 2048 bytes of JSON");
    j = json_loads(s, 0, NULL);
    cr_assert_null(vx_filter_parse(j, err, sizeof err));
    cr_assert_str_eq(err, "filter exceeds the limit of 2048 bytes of JSON");
    json_decref(j);
    free(s);

    /* The limit is on the compact encoding: whitespace as sent is free. */
    s = sized_filter(VX_FILTER_MAX_BYTES - 1);
    size_t n = strlen(s);
    char *padded = malloc(n + 100);
    memset(padded, ' ', 60);
    memcpy(padded + 60, s, n + 1);
    f = vx_filter_parse_text(padded, strlen(padded), err, sizeof err);
    cr_assert_not_null(f, "%s", err);
    vx_filter_free(f);
    j = json_loads(padded, 0, NULL);
    f = vx_filter_parse(j, err, sizeof err);
    cr_assert_not_null(f, "%s", err);
    vx_filter_free(f);
    json_decref(j);
    free(padded);
    free(s);
}

Test(vx_filter, key_and_in_limits) {
    char err[256];
    char key[VX_FILTER_MAX_KEY + 2];
    memset(key, 'k', sizeof key);
    key[VX_FILTER_MAX_KEY] = '\0';
    json_t *j = json_pack("{s:i}", key, 1);
    vx_filter *f = vx_filter_parse(j, err, sizeof err);
    cr_assert_not_null(f, "%s", err);
    vx_filter_free(f);
    json_decref(j);
    key[VX_FILTER_MAX_KEY] = 'k';
    key[VX_FILTER_MAX_KEY + 1] = '\0';
    j = json_pack("{s:i}", key, 1);
    cr_assert_null(vx_filter_parse(j, err, sizeof err));
    char want[256];
    snprintf(want, sizeof want, "filter key exceeds 512 characters: '%.64s...'", key);
    cr_assert_str_eq(err, want);
    json_decref(j);
    /* characters, not bytes: 512 two-byte characters are fine, 513 not */
    char wide[2 * VX_FILTER_MAX_KEY + 3];
    for (int i = 0; i < VX_FILTER_MAX_KEY + 1; i++)
        memcpy(wide + 2 * i, "\xc3\xa9", 2);
    wide[2 * VX_FILTER_MAX_KEY] = '\0';
    j = json_pack("{s:i}", wide, 1);
    cr_assert_not_null(j);
    f = vx_filter_parse(j, err, sizeof err);
    cr_assert_not_null(f, "%s", err);
    vx_filter_free(f);
    json_decref(j);
    wide[2 * VX_FILTER_MAX_KEY] = '\xc3';
    wide[2 * VX_FILTER_MAX_KEY + 2] = '\0';
    j = json_pack("{s:i}", wide, 1);
    cr_assert_null(vx_filter_parse(j, err, sizeof err));
    cr_assert(strncmp(err, "filter key exceeds 512 characters: '", 36) == 0, "%s", err);
    json_decref(j);

    for (int n = VX_FILTER_MAX_IN; n <= VX_FILTER_MAX_IN + 1; n++) {
        json_t *arr = json_array();
        for (int i = 0; i < n; i++)
            json_array_append_new(arr, json_integer(i));
        j = json_pack("{s:{s:o}}", "a", "$nin", arr);
        f = vx_filter_parse(j, err, sizeof err);
        if (n == VX_FILTER_MAX_IN) {
            cr_assert_not_null(f, "%s", err);
            cr_assert_eq(vx_filter_clause(f, 0)->nvalues, (size_t)n);
            vx_filter_free(f);
        } else {
            cr_assert_null(f);
            cr_assert_str_eq(err, "operator '$nin' for key 'a' accepts at most 256 values");
        }
        json_decref(j);
    }
}

typedef struct row {
    const char *filter;
    const char *metadata; /* NULL: no metadata */
    bool want;
} row;

Test(vx_filter, truth_tables) {
    static const row rows[] = {
        /* $eq per type, bare and explicit */
        {"{\"a\": \"x\"}", "{\"a\": \"x\"}", true},
        {"{\"a\": \"x\"}", "{\"a\": \"xy\"}", false},
        {"{\"a\": \"x\"}", "{\"a\": \"X\"}", false},
        {"{\"a\": {\"$eq\": \"\"}}", "{\"a\": \"\"}", true},
        {"{\"a\": 1}", "{\"a\": 1}", true},
        {"{\"a\": 1}", "{\"a\": 1.0}", true},
        {"{\"a\": 1.5}", "{\"a\": 1.5}", true},
        {"{\"a\": 0}", "{\"a\": -0.0}", true},
        {"{\"a\": 1}", "{\"a\": 2}", false},
        {"{\"a\": true}", "{\"a\": true}", true},
        {"{\"a\": true}", "{\"a\": false}", false},
        {"{\"a\": null}", "{\"a\": null}", true},
        {"{\"a\": null}", "{}", false},
        {"{\"a\": null}", "{\"a\": 0}", false},
        /* types never coerce */
        {"{\"a\": true}", "{\"a\": 1}", false},
        {"{\"a\": 1}", "{\"a\": true}", false},
        {"{\"a\": false}", "{\"a\": 0}", false},
        {"{\"a\": \"1\"}", "{\"a\": 1}", false},
        {"{\"a\": 1}", "{\"a\": \"1\"}", false},
        {"{\"a\": 1}", "{\"a\": [1]}", false},
        {"{\"a\": 1}", "{\"a\": {\"b\": 1}}", false},
        /* missing key / no metadata */
        {"{\"a\": 1}", "{}", false},
        {"{\"a\": 1}", NULL, false},
        /* $ne: negation of $eq, missing and other types match */
        {"{\"a\": {\"$ne\": \"x\"}}", "{\"a\": \"x\"}", false},
        {"{\"a\": {\"$ne\": \"x\"}}", "{\"a\": \"y\"}", true},
        {"{\"a\": {\"$ne\": \"x\"}}", "{}", true},
        {"{\"a\": {\"$ne\": \"x\"}}", NULL, true},
        {"{\"a\": {\"$ne\": 1}}", "{\"a\": true}", true},
        {"{\"a\": {\"$ne\": true}}", "{\"a\": false}", true},
        {"{\"a\": {\"$ne\": true}}", "{\"a\": true}", false},
        {"{\"a\": {\"$ne\": null}}", "{\"a\": null}", false},
        {"{\"a\": {\"$ne\": null}}", "{}", true},
        {"{\"a\": {\"$ne\": 1}}", "{\"a\": [1]}", true},
        /* $in / $nin */
        {"{\"a\": {\"$in\": [\"x\", \"y\"]}}", "{\"a\": \"y\"}", true},
        {"{\"a\": {\"$in\": [\"x\", \"y\"]}}", "{\"a\": \"z\"}", false},
        {"{\"a\": {\"$in\": [\"x\", 1, true]}}", "{\"a\": 1}", true},
        {"{\"a\": {\"$in\": [\"x\", 1, true]}}", "{\"a\": true}", true},
        {"{\"a\": {\"$in\": [\"x\", 1]}}", "{\"a\": true}", false},
        {"{\"a\": {\"$in\": [null]}}", "{\"a\": null}", true},
        {"{\"a\": {\"$in\": [1]}}", "{}", false},
        {"{\"a\": {\"$nin\": [\"x\", \"y\"]}}", "{\"a\": \"y\"}", false},
        {"{\"a\": {\"$nin\": [\"x\", \"y\"]}}", "{\"a\": \"z\"}", true},
        {"{\"a\": {\"$nin\": [\"x\"]}}", "{}", true},
        {"{\"a\": {\"$nin\": [1]}}", "{\"a\": \"1\"}", true},
        /* ranges on numbers */
        {"{\"a\": {\"$lt\": 5}}", "{\"a\": 4.9}", true},
        {"{\"a\": {\"$lt\": 5}}", "{\"a\": 5}", false},
        {"{\"a\": {\"$lte\": 5}}", "{\"a\": 5}", true},
        {"{\"a\": {\"$lte\": 5}}", "{\"a\": 6}", false},
        {"{\"a\": {\"$gt\": 5}}", "{\"a\": 5}", false},
        {"{\"a\": {\"$gt\": 5}}", "{\"a\": 5.1}", true},
        {"{\"a\": {\"$gte\": 5}}", "{\"a\": 5}", true},
        {"{\"a\": {\"$gte\": -5}}", "{\"a\": -6}", false},
        {"{\"a\": {\"$lt\": 5}}", "{}", false},
        {"{\"a\": {\"$lt\": 5}}", "{\"a\": \"4\"}", false},
        {"{\"a\": {\"$lt\": 5}}", "{\"a\": true}", false},
        {"{\"a\": {\"$gt\": 0}}", "{\"a\": null}", false},
        /* ranges on strings: bytewise */
        {"{\"a\": {\"$lt\": \"b\"}}", "{\"a\": \"a\"}", true},
        {"{\"a\": {\"$lt\": \"b\"}}", "{\"a\": \"b\"}", false},
        {"{\"a\": {\"$lt\": \"b\"}}", "{\"a\": \"B\"}", true},
        {"{\"a\": {\"$lt\": \"ab\"}}", "{\"a\": \"a\"}", true},
        {"{\"a\": {\"$gte\": \"ab\"}}", "{\"a\": \"ab\"}", true},
        {"{\"a\": {\"$gt\": \"ab\"}}", "{\"a\": \"abc\"}", true},
        {"{\"a\": {\"$gt\": \"z\"}}", "{\"a\": \"\\u00e9\"}", true},
        {"{\"a\": {\"$lte\": \"b\"}}", "{\"a\": 1}", false},
        /* several operators on one key, several keys: AND */
        {"{\"a\": {\"$gte\": 1, \"$lt\": 3}}", "{\"a\": 1}", true},
        {"{\"a\": {\"$gte\": 1, \"$lt\": 3}}", "{\"a\": 3}", false},
        {"{\"a\": {\"$gt\": 3, \"$lt\": 1}}", "{\"a\": 2}", false},
        {"{\"a\": {\"$ne\": 2, \"$in\": [1, 2]}}", "{\"a\": 1}", true},
        {"{\"a\": {\"$ne\": 2, \"$in\": [1, 2]}}", "{\"a\": 2}", false},
        {"{\"a\": 1, \"b\": \"x\"}", "{\"a\": 1, \"b\": \"x\"}", true},
        {"{\"a\": 1, \"b\": \"x\"}", "{\"a\": 1, \"b\": \"y\"}", false},
        {"{\"a\": 1, \"b\": \"x\"}", "{\"a\": 1}", false},
        /* nested keys */
        {"{\"a.b\": 1}", "{\"a\": {\"b\": 1}}", true},
        {"{\"a.b\": 1}", "{\"a\": {\"b\": 2}}", false},
        {"{\"a.b\": 1}", "{\"a.b\": 1}", false},
        {"{\"a.b\": 1}", "{\"a\": 1}", false},
        {"{\"a.b\": 1}", "{\"a\": [{\"b\": 1}]}", false},
        {"{\"a.b.c\": {\"$gt\": \"m\"}}", "{\"a\": {\"b\": {\"c\": \"n\"}}}", true},
        {"{\"a.b\": {\"$ne\": 1}}", "{\"a\": 5}", true},
        {"{\"a.b\": {\"$ne\": 1}}", "{\"a\": {\"b\": 1}}", false},
        {"{\"a\": {\"$ne\": 1}}", "{\"a\": {\"b\": 1}}", true},
    };
    /* no filter (NULL) matches everything */
    json_t *md = json_pack("{s:i}", "a", 1);
    cr_assert(vx_filter_match(NULL, md));
    cr_assert(vx_filter_match(NULL, NULL));
    json_decref(md);
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        bool got = match(rows[i].filter, rows[i].metadata);
        cr_expect_eq(got, rows[i].want, "row %zu: %s on %s: got %d", i, rows[i].filter,
                     rows[i].metadata ? rows[i].metadata : "(none)", got);
    }
}

/* Seeded xorshift so runs are reproducible. */
static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

Test(vx_filter, fuzz_mutated_filters) {
    static const char *const seeds[] = {
        "{\"genre\": {\"$in\": [\"drama\", \"comedy\"]}, \"year\": {\"$gte\": 1990}}",
        "{\"a.b.c\": {\"$ne\": false}, \"x\": null}",
        "{\"n\": {\"$lt\": 5, \"$gt\": -1.5e3}, \"s\": {\"$nin\": [\"\", \"\\u00e9\"]}}",
        "{\"k\": \"v\"}",
    };
    static const char alphabet[] = "{}[]\":,.$ \\0123456789aeltnigq-+eE\x80\xff";
    json_t *docs[3];
    docs[0] = json_loads("{\"genre\": \"drama\", \"year\": 1999, \"a\": {\"b\": {\"c\": true}}}",
                         0, NULL);
    docs[1] = json_loads("{\"n\": 3, \"s\": \"x\", \"k\": \"v\", \"x\": null}", 0, NULL);
    docs[2] = json_object();
    char buf[4096];
    size_t accepted = 0, refused = 0;
    for (int it = 0; it < 20000; it++) {
        const char *seed = seeds[rnd() % 4];
        size_t len = strlen(seed);
        memcpy(buf, seed, len);
        int muts = 1 + (int)(rnd() % 4);
        for (int m = 0; m < muts; m++) {
            size_t pos = len ? rnd() % len : 0;
            switch (rnd() % 4) {
            case 0:
                buf[pos] = alphabet[rnd() % (sizeof alphabet - 1)];
                break;
            case 1:
                if (len + 1 < sizeof buf) {
                    memmove(buf + pos + 1, buf + pos, len - pos);
                    buf[pos] = alphabet[rnd() % (sizeof alphabet - 1)];
                    len++;
                }
                break;
            case 2:
                if (len > 0) {
                    memmove(buf + pos, buf + pos + 1, len - pos - 1);
                    len--;
                }
                break;
            default: { /* duplicate a chunk of the text at pos */
                char tmp[16];
                size_t n = rnd() % sizeof tmp, src = len ? rnd() % len : 0;
                if (src + n > len)
                    n = len - src;
                if (len + n < sizeof buf) {
                    memcpy(tmp, buf + src, n);
                    memmove(buf + pos + n, buf + pos, len - pos);
                    memcpy(buf + pos, tmp, n);
                    len += n;
                }
                break;
            }
            }
        }
        char err[128];
        vx_filter *f = vx_filter_parse_text(buf, len, err, sizeof err);
        if (f) {
            accepted++;
            for (int d = 0; d < 3; d++)
                (void)vx_filter_match(f, docs[d]);
            for (size_t k = 0; k < vx_filter_nkeys(f); k++)
                cr_assert_neq(vx_filter_key_ops(f, k), 0u);
            vx_filter_free(f);
        } else {
            refused++;
            cr_assert_neq(err[0], '\0');
        }
    }
    cr_assert_gt(accepted, 100);
    cr_assert_gt(refused, 100);
    for (int d = 0; d < 3; d++)
        json_decref(docs[d]);
}
