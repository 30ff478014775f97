/*
 * vx_api_load_line, the fast path of NDJSON insert/upsert lines, against
 * jansson: for generated lines (numbers of every JSON form, keys in any
 * order, "values" hidden in metadata and strings, escaped and repeated
 * keys, wrong counts, whitespace) and for damaged copies of them (byte
 * flips, truncations), the line is accepted exactly when jansson accepts
 * it, the object is jansson's, and the values read are, bit for bit, what
 * jansson's numbers give as float32. Under ASan this also checks that the
 * scanner never reads past the line (each line is copied to a buffer of
 * its own length).
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vector/vx_api.h"

static unsigned long long g_seed = 0x9e3779b97f4a7c15ull;

static unsigned rnd(unsigned n)
{
    g_seed = g_seed * 6364136223846793005ull + 1442695040888963407ull;
    return (unsigned)((g_seed >> 33) % n);
}

typedef struct sbuf {
    char *s;
    size_t len, cap;
} sbuf;

static void put(sbuf *b, const char *t)
{
    size_t n = strlen(t);
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->s = realloc(b->s, b->cap);
        cr_assert_not_null(b->s);
    }
    memcpy(b->s + b->len, t, n + 1);
    b->len += n;
}

static void ws(sbuf *b)
{
    static const char *const w[] = {"", "", "", " ", "\t", "  ", "\r"};
    put(b, w[rnd(7)]);
}

static void digits(sbuf *b, unsigned n, bool lead_nonzero)
{
    char d[2] = {0, 0};
    for (unsigned i = 0; i < n; i++) {
        d[0] = (char)('0' + (i == 0 && lead_nonzero ? 1 + rnd(9) : rnd(10)));
        put(b, d);
    }
}

/* A number in one of JSON's forms, or (rarely) something that is not one. */
static void number(sbuf *b)
{
    static const char *const odd[] = {"-0",
                                      "0",
                                      "-0.0",
                                      "0e0",
                                      "1e39",
                                      "-1e39",
                                      "1e400",
                                      "1e-400",
                                      "01",
                                      "-",
                                      "1.",
                                      ".5",
                                      "+1",
                                      "1e",
                                      "1e+",
                                      "0x10",
                                      "NaN",
                                      "1E5",
                                      "1e-5",
                                      "9223372036854775807",
                                      "9223372036854775808",
                                      "-9223372036854775808",
                                      "-9223372036854775809",
                                      "123456789012345678901",
                                      "3.4028235e38",
                                      "3.4028236e38",
                                      "1.17549435e-38",
                                      "1.4e-45",
                                      "0.1",
                                      "true",
                                      "null",
                                      "\"1\"",
                                      "[1]",
                                      "1.0000000000000000000000001",
                                      "2.2250738585072014e-308"};
    if (rnd(6) == 0) {
        put(b, odd[rnd(sizeof odd / sizeof odd[0])]);
        return;
    }
    if (rnd(2))
        put(b, "-");
    if (rnd(5) == 0)
        put(b, "0");
    else
        digits(b, 1 + rnd(rnd(4) == 0 ? 22 : 6), true);
    if (rnd(2)) {
        put(b, ".");
        digits(b, 1 + rnd(rnd(4) == 0 ? 25 : 8), false);
    }
    if (rnd(4) == 0) {
        put(b, rnd(2) ? "e" : "E");
        static const char *const sg[] = {"", "+", "-"};
        put(b, sg[rnd(3)]);
        digits(b, 1 + rnd(3), false);
    }
}

static void values(sbuf *b, unsigned dim)
{
    unsigned n = rnd(10) == 0 ? dim + rnd(3) - 1 : dim; /* sometimes one off */
    put(b, "[");
    ws(b);
    for (unsigned i = 0; i < n; i++) {
        if (i) {
            ws(b);
            put(b, ",");
            ws(b);
        }
        number(b);
    }
    ws(b);
    put(b, "]");
}

static void metadata(sbuf *b)
{
    static const char *const md[] = {
        "{}",
        "{\"values\":[1,2,3]}",
        "{\"a\":{\"values\":\"x\"},\"b\":[{\"c\":\"]}\\\"\"}]}",
        "{\"s\":\"\\\"values\\\":[9]\",\"n\":null,\"t\":true}",
        "{\"deep\":[[[[{\"x\":[\"[\",\"{\"]}]]]]}",
        "null",
        "[1,2]",
        "{\"u\":\"\\u00e9\\ud83d\\ude00\"}",
    };
    put(b, md[rnd(sizeof md / sizeof md[0])]);
}

/* One vector line: keys in random order, sometimes odd ones. */
static void line(sbuf *b, unsigned dim)
{
    const char *keys[6];
    unsigned nk = 0;
    keys[nk++] = "id";
    if (rnd(8))
        keys[nk++] = "values";
    if (rnd(2))
        keys[nk++] = "metadata";
    if (rnd(3) == 0)
        keys[nk++] = "namespace";
    if (rnd(12) == 0)
        keys[nk++] = "values"; /* repeated */
    if (rnd(12) == 0)
        keys[nk++] = "valu\\u0065s"; /* escaped */
    for (unsigned i = 0; i < nk; i++) {
        unsigned j = rnd(nk);
        const char *t = keys[i];
        keys[i] = keys[j];
        keys[j] = t;
    }
    ws(b);
    put(b, "{");
    for (unsigned i = 0; i < nk; i++) {
        ws(b);
        if (i)
            put(b, ",");
        ws(b);
        put(b, "\"");
        put(b, keys[i]);
        put(b, "\"");
        ws(b);
        put(b, ":");
        ws(b);
        if (strcmp(keys[i], "id") == 0)
            put(b, rnd(10) ? "\"v1\"" : "\"va\\\"lues\"");
        else if (strcmp(keys[i], "metadata") == 0)
            metadata(b);
        else if (strcmp(keys[i], "namespace") == 0)
            put(b, "\"ns\"");
        else if (rnd(20) == 0)
            put(b, rnd(2) ? "null" : "\"[1,2]\"");
        else
            values(b, dim);
    }
    ws(b);
    put(b, "}");
    if (rnd(30) == 0)
        put(b, rnd(2) ? "x" : "{}");
    ws(b);
}

static size_t g_fast; /* lines the fast path read */

/* The check of one line (len bytes at text, copied to an exact buffer). */
static void check(const char *text, size_t len, unsigned dim)
{
    char *copy = malloc(len ? len : 1);
    cr_assert_not_null(copy);
    memcpy(copy, text, len);
    json_error_t e1, e2;
    json_t *ref = json_loadb(copy, len, JSON_REJECT_DUPLICATES, &e1);
    float *vals = malloc(dim * sizeof *vals); /* exactly dim: ASan sees a write past it */
    cr_assert_not_null(vals);
    bool have = false;
    char *scratch = NULL;
    size_t cap = 0;
    json_t *got = vx_api_load_line(copy, len, dim, vals, &have, &scratch, &cap, &e2);
    cr_assert_eq(ref == NULL, got == NULL, "accepted differently: %.*s (jansson: %s)", (int)len,
                 copy, ref ? "ok" : e1.text);
    if (ref) {
        if (have) {
            g_fast++;
            json_t *rv = json_object_get(ref, "values");
            cr_assert(json_is_array(rv) && json_array_size(rv) == dim, "%.*s", (int)len, copy);
            for (unsigned k = 0; k < dim; k++) {
                json_t *x = json_array_get(rv, k);
                cr_assert(json_is_number(x), "%.*s", (int)len, copy);
                float want = (float)json_number_value(x);
                cr_assert(memcmp(&want, &vals[k], sizeof want) == 0,
                          "value %u: %.9g, jansson %.9g in %.*s", k, (double)vals[k], (double)want,
                          (int)len, copy);
            }
            json_t *r2 = json_deep_copy(ref);
            json_object_set_new(r2, "values", json_null());
            cr_assert(json_equal(r2, got), "object differs: %.*s", (int)len, copy);
            json_decref(r2);
        } else {
            cr_assert(json_equal(ref, got), "object differs: %.*s", (int)len, copy);
        }
    } else {
        /* The error is jansson's own, on the line as sent. */
        cr_assert_str_eq(e1.text, e2.text);
        cr_assert_eq(e1.column, e2.column);
    }
    json_decref(ref);
    json_decref(got);
    free(scratch);
    free(copy);
    free(vals);
}

Test(vx_api_line, generated_lines_read_as_jansson_reads_them)
{
    sbuf b = {0};
    g_fast = 0;
    for (int i = 0; i < 20000; i++) {
        b.len = 0;
        put(&b, "");
        unsigned dim = 1 + rnd(rnd(4) == 0 ? 16 : 4);
        line(&b, dim);
        check(b.s, b.len, dim);
    }
    /* The fast path must be the common case, not a path never taken. */
    cr_assert_gt(g_fast, 5000, "fast path taken %zu times", g_fast);
    free(b.s);
}

Test(vx_api_line, damaged_lines_read_as_jansson_reads_them)
{
    sbuf b = {0};
    for (int i = 0; i < 20000; i++) {
        b.len = 0;
        put(&b, "");
        unsigned dim = 1 + rnd(4);
        line(&b, dim);
        size_t len = b.len;
        if (rnd(2) && len > 0) {
            len = rnd((unsigned)len);
        } else {
            for (int f = 0; f < 1 + (int)rnd(3) && len > 0; f++)
                b.s[rnd((unsigned)len)] = (char)rnd(256);
        }
        check(b.s, len, dim);
    }
    free(b.s);
}

Test(vx_api_line, the_seed_vectors)
{
    static const char *const lines[] = {
        "{\"id\":\"1\",\"values\":[32.4,74.1,3.2],\"metadata\":{\"url\":\"/products/sku/"
        "13913913\"}}",
        "{\"id\":\"5\",\"values\":[58.8,6.7,3.4],\"metadata\":{\"url\":\"/products/sku/"
        "55519183\"}}",
        "  {  \"values\" : [ 1 , -2.5e3 , 0.000001 ] , \"id\" : \"x\" }  ",
    };
    for (size_t i = 0; i < 3; i++)
        check(lines[i], strlen(lines[i]), 3);
    float v[3];
    bool have;
    char *scratch = NULL;
    size_t cap = 0;
    json_error_t e;
    json_t *o = vx_api_load_line(lines[1], strlen(lines[1]), 3, v, &have, &scratch, &cap, &e);
    cr_assert(have);
    cr_assert_eq(v[0], 58.8f);
    cr_assert_eq(v[1], 6.7f);
    cr_assert_eq(v[2], 3.4f);
    cr_assert_str_eq(json_string_value(json_object_get(o, "id")), "5");
    json_decref(o);
    free(scratch);
}
