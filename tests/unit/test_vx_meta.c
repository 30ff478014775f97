/*
 * vx_meta: the allow-bitmap of a filter computed from metadata indexes
 * equals brute-force vx_filter_match over thousands of seeded random
 * documents and filters (with slots set, updated and cleared in between);
 * unanswerable clauses are flagged for post-filtering and leave a superset;
 * indexes created after data are stale until the slots are set again;
 * strings compare on their first 64 bytes; errors and limits; memory report;
 * concurrent readers beside a writer.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vector/vx_meta.h"

static vx_filter *pf(const char *text) {
    char err[256];
    vx_filter *f = vx_filter_parse_text(text, strlen(text), err, sizeof err);
    cr_assert_not_null(f, "%s: %s", text, err);
    return f;
}

static void set_doc(vx_meta *m, size_t slot, const char *doc) {
    json_t *j = doc ? json_loads(doc, 0, NULL) : NULL;
    cr_assert(doc == NULL || j != NULL, "bad doc %s", doc);
    cr_assert_eq(vx_meta_set(m, slot, j), 0);
    json_decref(j);
}

/* Evaluates and returns the bitmap of the first 64 slots. */
static uint64_t eval64(vx_meta *m, const char *filter, unsigned *flags) {
    vx_filter *f = filter ? pf(filter) : NULL;
    uint64_t bits[2] = {~0ull, ~0ull};
    size_t count = 99;
    cr_assert_eq(vx_meta_eval(m, f, bits, 2, &count, flags), 0);
    cr_assert_eq(bits[1], 0, "words past nslots are zeroed");
    cr_assert_eq(count, (size_t)__builtin_popcountll(bits[0]));
    vx_filter_free(f);
    return bits[0];
}

static void add(vx_meta *m, const char *prop, vx_meta_type t) {
    char err[256];
    cr_assert_eq(vx_meta_add_index(m, prop, t, err, sizeof err), 0, "%s: %s", prop, err);
}

Test(vx_meta, types_and_index_errors) {
    cr_assert_eq(vx_meta_type_parse("string"), VX_META_STRING);
    cr_assert_eq(vx_meta_type_parse("number"), VX_META_NUMBER);
    cr_assert_eq(vx_meta_type_parse("boolean"), VX_META_BOOLEAN);
    cr_assert_eq(vx_meta_type_parse("bool"), -1);
    cr_assert_eq(vx_meta_type_parse(NULL), -1);
    cr_assert_str_eq(vx_meta_type_name(VX_META_BOOLEAN), "boolean");

    vx_meta *m = vx_meta_new(10);
    cr_assert_not_null(m);
    char err[256];
    cr_assert_eq(vx_meta_add_index(m, "$a", VX_META_STRING, err, sizeof err), -1);
    cr_assert_str_eq(err, "filter key must not start with '$': '$a'");
    cr_assert_eq(vx_meta_add_index(m, "", VX_META_STRING, err, sizeof err), -1);
    cr_assert_str_eq(err, "filter key must not be empty");
    cr_assert_eq(vx_meta_add_index(m, "a..b", VX_META_STRING, err, sizeof err), -1);
    cr_assert_str_eq(err, "filter key has an empty segment: 'a..b'");
    add(m, "genre", VX_META_STRING);
    cr_assert_eq(vx_meta_add_index(m, "genre", VX_META_NUMBER, err, sizeof err), -1);
    cr_assert_str_eq(err, "metadata index on 'genre' already exists");
    for (int i = 1; i < VX_META_MAX_INDEXES; i++) {
        char name[16];
        snprintf(name, sizeof name, "p%d", i);
        add(m, name, (vx_meta_type)(i % 3));
    }
    cr_assert_eq(vx_meta_nindexes(m), VX_META_MAX_INDEXES);
    cr_assert_eq(vx_meta_add_index(m, "one_more", VX_META_NUMBER, err, sizeof err), -1);
    cr_assert_str_eq(err, "at most 10 metadata indexes");
    cr_assert_eq(vx_meta_drop_index(m, "nope", err, sizeof err), -1);
    cr_assert_str_eq(err, "no metadata index on 'nope'");
    cr_assert_eq(vx_meta_drop_index(m, "p3", err, sizeof err), 0);
    cr_assert_eq(vx_meta_nindexes(m), VX_META_MAX_INDEXES - 1);
    add(m, "one_more", VX_META_NUMBER);

    cr_assert_eq(vx_meta_set(m, 10, NULL), -1);
    cr_assert_eq(vx_meta_clear(m, 10), -1);
    vx_filter *f = NULL;
    uint64_t one[1];
    size_t count;
    unsigned flags;
    cr_assert_eq(vx_meta_eval(m, f, one, 0, &count, &flags), -1);
    cr_assert_eq(vx_meta_eval(m, f, one, 1, &count, &flags), 0);
    cr_assert_eq(count, 0);
    vx_filter_free(f);
    vx_meta_free(m);
}

Test(vx_meta, set_update_clear) {
    vx_meta *m = vx_meta_new(40);
    add(m, "genre", VX_META_STRING);
    add(m, "year", VX_META_NUMBER);
    add(m, "hd", VX_META_BOOLEAN);
    add(m, "info.rating", VX_META_NUMBER);
    set_doc(m, 0, "{\"genre\": \"drama\", \"year\": 1999, \"hd\": true, \"info\": {\"rating\": 4}}");
    set_doc(m, 1, "{\"genre\": \"comedy\", \"year\": 2005, \"hd\": false}");
    set_doc(m, 2, "{\"genre\": \"drama\", \"year\": 2010, \"info\": {\"rating\": 2.5}}");
    set_doc(m, 3, NULL);
    set_doc(m, 39, "{\"genre\": \"zzz\", \"year\": -1}");
    unsigned fl;
    const uint64_t s39 = 1ull << 39;
    cr_assert_eq(eval64(m, NULL, &fl), 0xfull | s39);
    cr_assert_eq(fl, 0);
    cr_assert_eq(eval64(m, "{\"genre\": \"drama\"}", &fl), 0x5);
    cr_assert_eq(fl, 0);
    cr_assert_eq(eval64(m, "{\"genre\": {\"$ne\": \"drama\"}}", &fl), 0xa | s39);
    cr_assert_eq(eval64(m, "{\"genre\": {\"$in\": [\"comedy\", \"zzz\"]}}", &fl), 0x2 | s39);
    cr_assert_eq(eval64(m, "{\"genre\": {\"$nin\": [\"comedy\", \"zzz\"]}}", &fl), 0xd);
    cr_assert_eq(eval64(m, "{\"genre\": {\"$gte\": \"d\"}}", &fl), 0x5 | s39);
    cr_assert_eq(eval64(m, "{\"year\": {\"$gte\": 1999, \"$lt\": 2010}}", &fl), 0x3);
    cr_assert_eq(eval64(m, "{\"year\": {\"$lte\": 1999}}", &fl), 0x1 | s39);
    cr_assert_eq(eval64(m, "{\"year\": {\"$gt\": 2010}}", &fl), 0);
    cr_assert_eq(eval64(m, "{\"hd\": true}", &fl), 0x1);
    cr_assert_eq(eval64(m, "{\"hd\": {\"$ne\": true}}", &fl), 0xe | s39);
    cr_assert_eq(eval64(m, "{\"hd\": {\"$in\": [true, false]}}", &fl), 0x3);
    cr_assert_eq(eval64(m, "{\"info.rating\": {\"$gt\": 3}}", &fl), 0x1);
    cr_assert_eq(eval64(m, "{\"genre\": \"drama\", \"info.rating\": {\"$lt\": 3}}", &fl), 0x4);
    cr_assert_eq(fl, 0);

    /* update: slot 0 changes genre and loses year; slot 2 is cleared */
    set_doc(m, 0, "{\"genre\": \"comedy\", \"hd\": false}");
    cr_assert_eq(vx_meta_clear(m, 2), 0);
    cr_assert_eq(vx_meta_clear(m, 2), 0);
    cr_assert_eq(eval64(m, "{\"genre\": \"drama\"}", &fl), 0);
    cr_assert_eq(eval64(m, "{\"genre\": \"comedy\"}", &fl), 0x3);
    cr_assert_eq(eval64(m, "{\"year\": {\"$ne\": 2005}}", &fl), 0x9 | s39);
    cr_assert_eq(eval64(m, "{\"hd\": false}", &fl), 0x3);
    cr_assert_eq(eval64(m, NULL, &fl), 0xbull | s39);
    /* setting the same slot twice with the same value keeps one entry */
    set_doc(m, 1, "{\"genre\": \"comedy\", \"year\": 2005, \"hd\": false}");
    cr_assert_eq(eval64(m, "{\"year\": 2005}", &fl), 0x2);
    cr_assert_eq(eval64(m, "{\"year\": {\"$gt\": 0}}", &fl), 0x2);
    vx_meta_free(m);
}

Test(vx_meta, unanswerable_clauses_ask_for_postfilter) {
    vx_meta *m = vx_meta_new(8);
    add(m, "s", VX_META_STRING);
    set_doc(m, 0, "{\"s\": \"x\", \"u\": 1}");
    set_doc(m, 1, "{\"s\": 5, \"u\": 2}");
    set_doc(m, 2, "{\"s\": null}");
    unsigned fl;
    /* unindexed key: superset (the indexed clause still narrows) */
    cr_assert_eq(eval64(m, "{\"u\": 1}", &fl), 0x7);
    cr_assert_eq(fl, VX_META_POSTFILTER);
    cr_assert_eq(eval64(m, "{\"u\": 1, \"s\": \"x\"}", &fl), 0x1);
    cr_assert_eq(fl, VX_META_POSTFILTER);
    /* operand of another type than the index, or null */
    cr_assert_eq(eval64(m, "{\"s\": 5}", &fl), 0x7);
    cr_assert_eq(fl, VX_META_POSTFILTER);
    cr_assert_eq(eval64(m, "{\"s\": {\"$in\": [\"x\", 5]}}", &fl), 0x7);
    cr_assert_eq(fl, VX_META_POSTFILTER);
    cr_assert_eq(eval64(m, "{\"s\": null}", &fl), 0x7);
    cr_assert_eq(fl, VX_META_POSTFILTER);
    /* $ne on the index's type is exact: a number 5 and a null are not "x" */
    cr_assert_eq(eval64(m, "{\"s\": {\"$ne\": \"x\"}}", &fl), 0x6);
    cr_assert_eq(fl, 0);
    vx_meta_free(m);
}

Test(vx_meta, index_created_after_data_is_stale_until_set_again) {
    vx_meta *m = vx_meta_new(8);
    set_doc(m, 0, "{\"n\": 1}");
    set_doc(m, 1, "{\"n\": 2}");
    add(m, "n", VX_META_NUMBER);
    unsigned fl;
    cr_assert_eq(eval64(m, "{\"n\": 1}", &fl), 0x3);
    cr_assert_eq(fl, VX_META_POSTFILTER);
    set_doc(m, 2, "{\"n\": 1}");
    set_doc(m, 0, "{\"n\": 1}");
    cr_assert_eq(eval64(m, "{\"n\": 1}", &fl), 0x7);
    cr_assert_eq(fl, VX_META_POSTFILTER);
    cr_assert_eq(vx_meta_clear(m, 1), 0);
    cr_assert_eq(eval64(m, "{\"n\": 1}", &fl), 0x5);
    cr_assert_eq(fl, 0);
    vx_meta_free(m);
}

Test(vx_meta, strings_index_their_first_64_bytes) {
    vx_meta *m = vx_meta_new(8);
    add(m, "s", VX_META_STRING);
    char a[100], b[100], doc[160], filt[160];
    memset(a, 'p', 70);
    a[70] = '\0';
    memcpy(b, a, 71);
    b[68] = 'q'; /* differs after byte 64 */
    snprintf(doc, sizeof doc, "{\"s\": \"%s\"}", a);
    set_doc(m, 0, doc);
    snprintf(doc, sizeof doc, "{\"s\": \"%s\"}", b);
    set_doc(m, 1, doc);
    set_doc(m, 2, "{\"s\": \"short\"}");
    unsigned fl;
    snprintf(filt, sizeof filt, "{\"s\": \"%s\"}", a);
    cr_assert_eq(eval64(m, filt, &fl), 0x3, "equal to the index: same 64-byte prefix");
    cr_assert_eq(fl, VX_META_PREFIX);
    vx_filter *f = pf(filt);
    json_t *jb = json_pack("{s:s}", "s", b);
    cr_assert_not(vx_filter_match(f, jb), "whole strings differ");
    json_decref(jb);
    vx_filter_free(f);
    cr_assert_eq(eval64(m, "{\"s\": \"short\"}", &fl), 0x4);
    cr_assert_eq(fl, VX_META_PREFIX, "the index holds truncated values");
    cr_assert_eq(vx_meta_clear(m, 0), 0);
    cr_assert_eq(vx_meta_clear(m, 1), 0);
    cr_assert_eq(eval64(m, "{\"s\": \"short\"}", &fl), 0x4);
    cr_assert_eq(fl, 0);
    /* cut on a UTF-8 boundary: 63 bytes + a 2-byte character keep 63 bytes,
     * so a value differing inside that character is still equal */
    memset(a, 'p', 63);
    memcpy(a + 63, "\xc3\xa9zz", 5);
    memcpy(b, a, 69);
    b[64] = '\xa8'; /* e-grave: same lead byte, another character */
    jb = json_pack("{s:s}", "s", a);
    cr_assert_eq(vx_meta_set(m, 3, jb), 0);
    json_decref(jb);
    jb = json_pack("{s:s}", "s", b);
    cr_assert_not_null(jb);
    cr_assert_eq(vx_meta_set(m, 4, jb), 0);
    json_decref(jb);
    memset(b, 'p', 63);
    b[63] = '\0';
    jb = json_pack("{s:s}", "s", b); /* exactly the 63-byte prefix */
    cr_assert_eq(vx_meta_set(m, 5, jb), 0);
    json_decref(jb);
    snprintf(filt, sizeof filt, "{\"s\": \"%s\"}", a);
    cr_assert_eq(eval64(m, filt, &fl), 0x38, "equal on the 63-byte prefix");
    cr_assert_eq(fl, VX_META_PREFIX);
    snprintf(filt, sizeof filt, "{\"s\": {\"$gte\": \"%s\"}}", b);
    cr_assert_eq(eval64(m, filt, &fl), 0x3c, "\"short\" sorts after \"ppp\"");
    snprintf(filt, sizeof filt, "{\"s\": {\"$gt\": \"%s\"}}", b);
    cr_assert_eq(eval64(m, filt, &fl), 0x4);
    vx_meta_free(m);
}

Test(vx_meta, memory_report) {
    vx_meta *m = vx_meta_new(1000);
    size_t empty = vx_meta_memory(m);
    cr_assert_gt(empty, 1000 / 8);
    add(m, "s", VX_META_STRING);
    size_t with_index = vx_meta_memory(m);
    cr_assert_gt(with_index, empty + 1000 * sizeof(char *));
    char doc[128];
    for (int i = 0; i < 1000; i++) {
        snprintf(doc, sizeof doc, "{\"s\": \"value-%040d\"}", i);
        set_doc(m, (size_t)i, doc);
    }
    size_t full = vx_meta_memory(m);
    cr_assert_gt(full, with_index + 1000 * 46);
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(vx_meta_clear(m, (size_t)i), 0);
    size_t cleared = vx_meta_memory(m);
    cr_assert_lt(cleared, full - 1000 * 46, "string copies are freed");
    vx_meta_free(m);
}

/* ---- property-based: index evaluation == brute force ---- */

static uint64_t rng;
static uint64_t rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static const char *const strs[] = {"", "a", "b", "ab", "ba", "c", "\xc3\xa9", "drama"};
static const double nums[] = {-2, -1, -0.5, 0, 0.5, 1, 2, 3};
#define NSTR (sizeof strs / sizeof strs[0])
#define NNUM (sizeof nums / sizeof nums[0])

/* A random value: mostly of the wanted kind (0 string, 1 number, 2 bool),
 * sometimes another one or null. */
static json_t *rand_value(int kind) {
    unsigned r = (unsigned)(rnd() % 10);
    if (r == 9)
        return json_null();
    if (r >= 7)
        kind = (int)(rnd() % 3);
    switch (kind) {
    case 0: return json_string(strs[rnd() % NSTR]);
    case 1: return rnd() % 2 ? json_real(nums[rnd() % NNUM]) : json_integer((int)(rnd() % 4));
    default: return json_boolean(rnd() % 2);
    }
}

static json_t *rand_doc(void) {
    json_t *d = json_object();
    if (rnd() % 5)
        json_object_set_new(d, "s", rand_value(0));
    if (rnd() % 5)
        json_object_set_new(d, "n", rand_value(1));
    if (rnd() % 5)
        json_object_set_new(d, "b", rand_value(2));
    unsigned o = (unsigned)(rnd() % 4);
    if (o == 1)
        json_object_set_new(d, "o", json_pack("{s:o}", "x", rand_value(1)));
    else if (o == 2)
        json_object_set_new(d, "o", json_integer(5));
    if (rnd() % 2)
        json_object_set_new(d, "u", rand_value(0));
    if (rnd() % 4 == 0)
        json_object_set_new(d, "s2", json_pack("[i]", 1));
    return d;
}

static const char *const fkeys[] = {"s", "n", "b", "o.x", "u", "s2"};
static const int fkinds[] = {0, 1, 2, 1, 0, 0};

static json_t *rand_filter(void) {
    json_t *f = json_object();
    int nk = 1 + (int)(rnd() % 3);
    for (int k = 0; k < nk; k++) {
        int ki = (int)(rnd() % 6);
        json_t *ops = json_object();
        int nops = 1 + (int)(rnd() % 2);
        for (int o = 0; o < nops; o++) {
            vx_op op = (vx_op)(rnd() % VX_OP_COUNT_);
            json_t *v;
            if (op == VX_OP_IN || op == VX_OP_NIN) {
                v = json_array();
                int n = 1 + (int)(rnd() % 3);
                for (int i = 0; i < n; i++)
                    json_array_append_new(v, rand_value(fkinds[ki]));
            } else if (op >= VX_OP_LT) {
                int kind = fkinds[ki] == 2 || rnd() % 5 == 0 ? (int)(rnd() % 2) : fkinds[ki];
                v = kind == 0 ? json_string(strs[rnd() % NSTR]) : json_real(nums[rnd() % NNUM]);
            } else {
                v = rand_value(fkinds[ki]);
            }
            json_object_set_new(ops, vx_op_name(op), v);
        }
        json_object_set_new(f, fkeys[ki], ops);
    }
    return f;
}

#define NSLOTS 3000

/* Checks one filter's bitmap against brute force over docs[0..nslots). */
static bool check_one(vx_meta *m, json_t **docs, size_t nslots, const vx_filter *f,
                      const char *what) {
    uint64_t bits[(NSLOTS + 63) / 64];
    size_t count;
    unsigned fl;
    cr_assert_eq(vx_meta_eval(m, f, bits, sizeof bits / sizeof bits[0], &count, &fl), 0);
    cr_assert_eq(fl & VX_META_PREFIX, 0);
    size_t got_count = 0;
    for (size_t s = 0; s < nslots; s++) {
        bool bit = (bits[s / 64] >> (s % 64)) & 1;
        got_count += bit;
        bool want = docs[s] && vx_filter_match(f, docs[s]);
        if (fl & VX_META_POSTFILTER) {
            cr_assert(!want || bit, "superset misses slot %zu; filter %s", s, what);
            cr_assert(!bit || docs[s] != NULL, "cleared slot %zu allowed; filter %s", s, what);
        } else if (bit != want) {
            char *ds = docs[s] ? json_dumps(docs[s], JSON_COMPACT) : NULL;
            cr_assert_fail("slot %zu: index %d, match %d; filter %s doc %s", s, bit, want, what,
                           ds ? ds : "(cleared)");
        }
    }
    cr_assert_eq(count, got_count);
    return (fl & VX_META_POSTFILTER) != 0;
}

static void check_filters(vx_meta *m, json_t **docs, int nfilters, size_t *exact,
                          size_t *post) {
    for (int it = 0; it < nfilters; it++) {
        json_t *jf = rand_filter();
        char err[256];
        vx_filter *f = vx_filter_parse(jf, err, sizeof err);
        cr_assert_not_null(f, "%s", err);
        char *fs = json_dumps(jf, JSON_COMPACT);
        if (check_one(m, docs, NSLOTS, f, fs))
            (*post)++;
        else
            (*exact)++;
        free(fs);
        vx_filter_free(f);
        json_decref(jf);
    }
}

static void setup_indexes(vx_meta *m) {
    add(m, "s", VX_META_STRING);
    add(m, "n", VX_META_NUMBER);
    add(m, "b", VX_META_BOOLEAN);
    add(m, "o.x", VX_META_NUMBER);
    add(m, "s2", VX_META_STRING);
}

Test(vx_meta, index_equals_brute_force, .timeout = 60) {
    rng = 0x2545f4914f6cdd1dull;
    vx_meta *m = vx_meta_new(NSLOTS);
    setup_indexes(m);
    static json_t *docs[NSLOTS];
    for (size_t s = 0; s < NSLOTS; s++) {
        if (rnd() % 10 == 0)
            continue; /* never set */
        docs[s] = rand_doc();
        cr_assert_eq(vx_meta_set(m, s, docs[s]), 0);
    }
    size_t exact = 0, post = 0;
    for (int round = 0; round < 4; round++) {
        check_filters(m, docs, 150, &exact, &post);
        /* churn: update, clear and set a fifth of the slots */
        for (int i = 0; i < NSLOTS / 5; i++) {
            size_t s = rnd() % NSLOTS;
            json_decref(docs[s]);
            docs[s] = NULL;
            if (rnd() % 3 == 0) {
                cr_assert_eq(vx_meta_clear(m, s), 0);
            } else {
                docs[s] = rand_doc();
                cr_assert_eq(vx_meta_set(m, s, docs[s]), 0);
            }
        }
    }
    cr_assert_gt(exact, 100, "most filters are answered by the indexes");
    cr_assert_gt(post, 50, "unindexed keys and mismatched operands occur");
    for (size_t s = 0; s < NSLOTS; s++)
        json_decref(docs[s]);
    vx_meta_free(m);
}

/* Mutated filter texts: whatever parses is evaluated exactly (or as a
 * flagged superset) by the indexes; nothing crashes. */
Test(vx_meta, fuzzed_filters_stay_exact, .timeout = 60) {
    rng = 0x6a09e667f3bcc909ull;
    enum { N = 256 };
    vx_meta *m = vx_meta_new(N);
    setup_indexes(m);
    json_t *docs[N] = {0};
    for (size_t s = 0; s < N; s++) {
        docs[s] = rand_doc();
        cr_assert_eq(vx_meta_set(m, s, docs[s]), 0);
    }
    static const char alphabet[] = "{}[]\":,.$ 0123456789abnostxeltgiq-";
    size_t parsed = 0;
    for (int it = 0; it < 3000; it++) {
        json_t *jf = rand_filter();
        char buf[2048];
        size_t len = json_dumpb(jf, buf, sizeof buf - 1, JSON_COMPACT);
        json_decref(jf);
        cr_assert_lt(len, sizeof buf - 1);
        for (int k = 0, n = (int)(rnd() % 3); k < n && len > 0; k++)
            buf[rnd() % len] = alphabet[rnd() % (sizeof alphabet - 1)];
        buf[len] = '\0';
        char err[256];
        vx_filter *f = vx_filter_parse_text(buf, len, err, sizeof err);
        if (!f)
            continue;
        parsed++;
        check_one(m, docs, N, f, buf);
        vx_filter_free(f);
    }
    cr_assert_gt(parsed, 1000, "parsed %zu", parsed);
    for (size_t s = 0; s < N; s++)
        json_decref(docs[s]);
    vx_meta_free(m);
}

/* ---- concurrent readers beside one writer ---- */

typedef struct reader_arg {
    vx_meta *m;
    vx_filter *f;
    int bad;
} reader_arg;

static void *reader(void *p) {
    reader_arg *a = p;
    uint64_t bits[(256 + 63) / 64];
    for (int i = 0; i < 2000; i++) {
        size_t count;
        unsigned fl;
        if (vx_meta_eval(a->m, a->f, bits, 4, &count, &fl) != 0 || fl != 0)
            a->bad++;
        /* Every set slot holds {"n": slot % 7}; n == 3 means slot % 7 == 3. */
        for (size_t s = 0; s < 256; s++)
            if (((bits[s / 64] >> (s % 64)) & 1) && s % 7 != 3)
                a->bad++;
    }
    return NULL;
}

Test(vx_meta, concurrent_readers_and_writer) {
    vx_meta *m = vx_meta_new(256);
    add(m, "n", VX_META_NUMBER);
    reader_arg args[2];
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        args[i] = (reader_arg){m, pf("{\"n\": 3}"), 0};
        cr_assert_eq(pthread_create(&th[i], NULL, reader, &args[i]), 0);
    }
    for (int round = 0; round < 20; round++)
        for (size_t s = 0; s < 256; s++) {
            json_t *d = json_pack("{s:i}", "n", (int)(s % 7));
            if ((s + (size_t)round) % 3 == 0)
                cr_assert_eq(vx_meta_clear(m, s), 0);
            else
                cr_assert_eq(vx_meta_set(m, s, d), 0);
            json_decref(d);
        }
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        cr_assert_eq(args[i].bad, 0);
        vx_filter_free(args[i].f);
    }
    vx_meta_free(m);
}

/* vx_meta_grow keeps what is set; vx_meta_backfill makes an index created
 * after the data exact (no POSTFILTER) with the same answers as a fresh
 * index set slot by slot. */
static const json_t *doc_at(void *ctx, size_t slot) {
    json_t **docs = ctx;
    return slot < 200 ? docs[slot] : NULL;
}

Test(vx_meta, grow_and_backfill) {
    vx_meta *m = vx_meta_new(10);
    json_t *docs[200];
    for (size_t i = 0; i < 200; i++) {
        char tag[16];
        snprintf(tag, sizeof tag, "t%zu", i % 5);
        docs[i] = i % 17 == 0 ? NULL
                              : json_pack("{s:I,s:s,s:b}", "n", (json_int_t)(i % 10), "s", tag,
                                          "b", (int)(i & 1));
    }
    add(m, "n", VX_META_NUMBER);
    for (size_t i = 0; i < 10; i++)
        cr_assert_eq(vx_meta_set(m, i, docs[i]), 0);
    cr_assert_eq(vx_meta_set(m, 10, docs[10]), -1, "slot past nslots");
    cr_assert_eq(vx_meta_grow(m, 200), 0);
    cr_assert_eq(vx_meta_nslots(m), 200);
    cr_assert_eq(vx_meta_grow(m, 50), 0, "shrinking is a no-op");
    cr_assert_eq(vx_meta_nslots(m), 200);
    for (size_t i = 10; i < 200; i++)
        cr_assert_eq(vx_meta_set(m, i, docs[i]), 0);
    add(m, "s", VX_META_STRING);
    add(m, "b", VX_META_BOOLEAN);
    unsigned flags = 0;
    uint64_t bits[4];
    size_t count;
    vx_filter *f = pf("{\"s\": \"t3\", \"b\": true, \"n\": {\"$gte\": 3}}");
    cr_assert_eq(vx_meta_eval(m, f, bits, 4, &count, &flags), 0);
    cr_assert(flags & VX_META_POSTFILTER, "stale before the backfill");
    char err[128];
    cr_assert_eq(vx_meta_backfill(m, "s", doc_at, docs, err, sizeof err), 0);
    cr_assert_eq(vx_meta_backfill(m, "b", doc_at, docs, err, sizeof err), 0);
    cr_assert_eq(vx_meta_backfill(m, "none", doc_at, docs, err, sizeof err), -1);
    cr_assert_eq(vx_meta_eval(m, f, bits, 4, &count, &flags), 0);
    cr_assert_eq(flags, 0, "exact after the backfill");
    size_t want = 0;
    for (size_t i = 0; i < 200; i++) {
        bool match = vx_filter_match(f, docs[i]);
        want += match;
        cr_assert_eq((bits[i / 64] >> (i % 64)) & 1, (uint64_t)match, "slot %zu", i);
    }
    cr_assert_eq(count, want);
    cr_assert_gt(want, 0);
    /* later updates keep the backfilled index consistent */
    cr_assert_eq(vx_meta_clear(m, 13), 0);
    cr_assert_eq(vx_meta_set(m, 18, docs[13]), 0);
    cr_assert_eq(vx_meta_eval(m, f, bits, 4, &count, &flags), 0);
    cr_assert_eq((bits[0] >> 13) & 1, 0);
    cr_assert_eq((bits[0] >> 18) & 1, (uint64_t)vx_filter_match(f, docs[13]));
    vx_filter_free(f);
    for (size_t i = 0; i < 200; i++)
        json_decref(docs[i]);
    vx_meta_free(m);
}
