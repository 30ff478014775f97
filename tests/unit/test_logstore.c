/*
 * Unit tests for the log store (agent/logstore): the byte formats (CRC32C,
 * ULIDs, metadata, record payloads), and the store itself: append/get/list
 * round trips with every filter checked against a brute-force answer,
 * cursor pagination under concurrent appends, feedback and deletes across
 * reopen, retention by count and by age (segments really unlinked, control
 * records carried forward), backpressure, export, errors and stats.
 * Crash and corruption tests: test_logstore_crash.c, test_logstore_corrupt.c.
 */
#include <inttypes.h>
#include <math.h>
#include <pthread.h>

#include "metrics/op_metrics.h"
#include "test_logstore_util.h"

static void quiet(void)
{
    pl_log_configure(PL_LOG_OFF, PL_LOG_FORMAT_KV);
}

TestSuite(logstore_codec, .init = quiet);
TestSuite(logstore, .init = quiet, .timeout = 60);

/* ======================================================================== */
/* Byte formats                                                             */
/* ======================================================================== */

Test(logstore_codec, crc32c_check_value_and_paths_agree)
{
    cr_assert_eq(ls_crc32c(0, "123456789", 9), 0xE3069283u);
    cr_assert_eq(ls_crc32c_sw(0, "123456789", 9), 0xE3069283u);
    /* Chained calls equal one call. */
    cr_assert_eq(ls_crc32c(ls_crc32c(0, "1234", 4), "56789", 5), 0xE3069283u);
    uint8_t buf[1100];
    srand(7);
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t)rand();
    for (size_t off = 0; off < 9; off++)
        for (size_t len = 0; len < 1000; len += 1 + len / 8)
            cr_assert_eq(ls_crc32c(0x1234, buf + off, len), ls_crc32c_sw(0x1234, buf + off, len),
                         "off %zu len %zu", off, len);
}

Test(logstore_codec, ulid_format_parse_order)
{
    char a[LS_ID_LEN + 1], b[LS_ID_LEN + 1];
    for (int i = 0; i < 1000; i++) {
        ls_key k = ls_ulid_new(1700000000000 + i), back;
        ls_ulid_format(k, a);
        cr_assert_eq(strlen(a), LS_ID_LEN);
        cr_assert_eq(ls_ulid_parse(a, LS_ID_LEN, &back), 0);
        cr_assert(back.hi == k.hi && back.lo == k.lo);
        cr_assert_eq(ls_key_ms(k), 1700000000000 + i);
        ls_key next = ls_ulid_new(1700000000000 + i + 1);
        ls_ulid_format(next, b);
        cr_assert_lt(strcmp(a, b), 0, "text order follows time");
        for (char *p = a; *p; p++) /* lower case parses the same */
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p - 'A' + 'a');
        cr_assert_eq(ls_ulid_parse(a, LS_ID_LEN, &back), 0);
        cr_assert(back.hi == k.hi && back.lo == k.lo);
    }
    ls_key k = {UINT64_MAX, UINT64_MAX}, back;
    ls_ulid_format(k, a);
    cr_assert_str_eq(a, "7ZZZZZZZZZZZZZZZZZZZZZZZZZ");
    cr_assert_eq(ls_ulid_parse(a, LS_ID_LEN, &back), 0);
    cr_assert(back.hi == UINT64_MAX && back.lo == UINT64_MAX);
    cr_assert_eq(ls_ulid_parse("8ZZZZZZZZZZZZZZZZZZZZZZZZZ", LS_ID_LEN, &back), -EINVAL);
    cr_assert_eq(ls_ulid_parse("01ARZ3NDEKTSV4RRFFQ69G5FAU", LS_ID_LEN, &back), -EINVAL); /* U */
    cr_assert_eq(ls_ulid_parse("01ARZ3NDEKTSV4RRFFQ69G5FAI", LS_ID_LEN, &back), -EINVAL); /* I */
    cr_assert_eq(ls_ulid_parse("01ARZ3NDEKTSV4RRFFQ69G5FA", 25, &back), -EINVAL);
    cr_assert_eq(ls_ulid_parse("01ARZ3NDEKTSV4RRFFQ69G5FA\0", 26, &back), -EINVAL);
    cr_assert_eq(ls_ulid_parse("01ARZ3NDEKTSV4RRFFQ69G5FAV", LS_ID_LEN, &back), 0);
}

static void unesc(const char *raw, size_t raw_len, size_t len, char *out)
{
    ls_json_unescape(raw, raw_len, out);
    out[len] = '\0';
}

Test(logstore_codec, metadata_parse)
{
    ls_meta_tok t[LS_META_MAX];
    const char *ok = " {\"user\" : \"u1\", \"n\":-1.5e3 ,\"t\":true,\"f\":false,\"z\":0} ";
    cr_assert_eq(ls_meta_parse(ok, strlen(ok), t), 5);
    char buf[64];
    unesc(t[0].key, t[0].key_raw, t[0].key_len, buf);
    cr_assert_str_eq(buf, "user");
    cr_assert_eq(t[0].type, LS_META_STRING);
    unesc(t[0].val, t[0].val_raw, t[0].val_len, buf);
    cr_assert_str_eq(buf, "u1");
    cr_assert_eq(t[1].type, LS_META_NUMBER);
    cr_assert_eq(t[1].val_len, 6);
    cr_assert_eq(memcmp(t[1].val, "-1.5e3", 6), 0);
    cr_assert_eq(t[2].type, LS_META_BOOL);
    cr_assert_eq(t[3].val_len, 5);
    cr_assert_eq(ls_meta_parse("", 0, t), 0);
    cr_assert_eq(ls_meta_parse(" {} ", 4, t), 0);

    const char *esc = "{\"k\\\"\\\\\":\"a\\u00e9\\ud83d\\ude00\\n/\\/\"}";
    cr_assert_eq(ls_meta_parse(esc, strlen(esc), t), 1);
    unesc(t[0].key, t[0].key_raw, t[0].key_len, buf);
    cr_assert_str_eq(buf, "k\"\\");
    unesc(t[0].val, t[0].val_raw, t[0].val_len, buf);
    cr_assert_str_eq(buf, "a\xC3\xA9\xF0\x9F\x98\x80\n//");

    static const char *const bad[] = {
        "{\"a\":{}}", "{\"a\":[1]}", "{\"a\":null}", "{\"a\":1,}", "{\"a\" 1}", "{a:1}",
        "{\"a\":01}", "{\"a\":1.}", "{\"a\":.5}", "{\"a\":-}", "{\"a\":1e}", "{\"a\":tru}",
        "{\"a\":\"\\ud800\"}", "{\"a\":\"\\udc00\"}", "{\"a\":\"\\u0000\"}", "{\"a\":\"\\x\"}",
        "{\"a\":\"\xff\"}", "{\"a\":\"\x01\"}", "{\"a\":\"x}", "[1]", "{\"a\":1} x", "{",
        "{\"1\":1,\"2\":2,\"3\":3,\"4\":4,\"5\":5,\"6\":6}", "{\"a\":\"\\u12\"}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_eq(ls_meta_parse(bad[i], strlen(bad[i]), t), -EINVAL, "accepted %s", bad[i]);
}

Test(logstore_codec, log_payload_roundtrip_truncation_and_flips)
{
    tl_rec t;
    tl_make(&t, 5, 1700000000123);
    ls_log_prep p;
    cr_assert_eq(ls_log_prepare(&t.r, 0, &p), 0);
    cr_assert_eq(strlen(t.r.id), LS_ID_LEN);
    uint8_t *buf = malloc(p.payload_len);
    ls_log_encode(buf, &t.r, &p);
    ls_logview v;
    cr_assert_eq(ls_log_decode(buf, p.payload_len, false, &v), 0);
    cr_assert_eq(v.created_ms, 1700000000123);
    cr_assert_eq(ls_key_ms(v.key), 1700000000123);
    cr_assert_eq(v.status, 200);
    cr_assert_eq(v.n_meta, 3);
    cr_assert_eq(v.model.n, strlen(TL_MODELS[1]));
    cr_assert_eq(memcmp(v.model.p, TL_MODELS[1], v.model.n), 0);
    cr_assert_eq(v.req_body.n, strlen(t.req));
    cr_assert_eq(memcmp(v.resp_body.p, t.resp, v.resp_body.n), 0);
    cr_assert_eq(v.tokens_in, 15);
    cr_assert_float_eq(v.cost, 0.0005, 1e-12);

    size_t head = ls_log_head_need(buf, p.payload_len);
    cr_assert_gt(head, LS_LOG_FIXED);
    /* Every truncation: a full decode fails, a head decode works once the
     * head is there. Copies sit at the end of their allocation, so ASan
     * catches any over-read. */
    for (size_t len = 0; len < p.payload_len; len++) {
        uint8_t *c = malloc(len ? len : 1);
        memcpy(c, buf, len);
        cr_assert_neq(ls_log_decode(c, len, false, &v), 0, "len %zu", len);
        cr_assert_eq(ls_log_decode(c, len, true, &v) == 0, len >= head, "len %zu", len);
        free(c);
    }
    /* Any byte flipped in the head fails the head CRC. */
    for (size_t i = 0; i < head; i++) {
        buf[i] ^= 0x20;
        cr_assert_neq(ls_log_decode(buf, p.payload_len, true, &v), 0, "flip at %zu", i);
        buf[i] ^= 0x20;
    }
    free(buf);

    /* Frames: every byte flip is caught by the frame CRC or the checks. */
    size_t flen = LS_FRAME_HDR + 40;
    uint8_t *fr = calloc(1, flen);
    ls_frame_header(fr, LS_REC_TOMB, 77, 40);
    ls_frame_seal(fr, 0xABCD);
    ls_frame f;
    cr_assert_eq(ls_frame_check(fr, flen, 0xABCD, 76, &f), LS_FRAME_OK);
    cr_assert_eq(f.seq, 77);
    cr_assert_eq(ls_frame_check(fr, flen, 0xABCE, 76, &f), LS_FRAME_BAD, "salt matters");
    cr_assert_eq(ls_frame_check(fr, flen, 0xABCD, 77, &f), LS_FRAME_BAD, "seq must grow");
    cr_assert_eq(ls_frame_check(fr, flen - 1, 0xABCD, 76, &f), LS_FRAME_BAD);
    for (size_t i = 0; i < flen; i++)
        for (int bit = 0; bit < 8; bit++) {
            fr[i] ^= (uint8_t)(1 << bit);
            cr_assert_eq(ls_frame_check(fr, flen, 0xABCD, 76, &f), LS_FRAME_BAD, "%zu/%d", i, bit);
            fr[i] ^= (uint8_t)(1 << bit);
        }
    free(fr);
}

Test(logstore_codec, prepare_rejects_bad_records)
{
    tl_rec t;
    ls_log_prep p;
    tl_make(&t, 1, 0);
    strcpy(t.r.id, "not-a-ulid");
    cr_assert_eq(ls_log_prepare(&t.r, 1000, &p), -EINVAL);
    tl_make(&t, 1, 0);
    t.r.metadata = "{\"a\":[1]}";
    cr_assert_eq(ls_log_prepare(&t.r, 1000, &p), -EINVAL);
    tl_make(&t, 1, 0);
    t.r.status = 1000;
    cr_assert_eq(ls_log_prepare(&t.r, 1000, &p), -EINVAL);
    tl_make(&t, 1, 0);
    t.r.feedback = 2;
    cr_assert_eq(ls_log_prepare(&t.r, 1000, &p), -EINVAL);
    tl_make(&t, 1, 0);
    t.r.cost = NAN;
    cr_assert_eq(ls_log_prepare(&t.r, 1000, &p), -EINVAL);
    tl_make(&t, 1, -5);
    cr_assert_eq(ls_log_prepare(&t.r, 1000, &p), -EINVAL);
    /* A given id fixes created_ms; a disagreeing created_ms is refused. */
    tl_make(&t, 1, 0);
    ls_ulid_format(ls_ulid_new(123456), t.r.id);
    cr_assert_eq(ls_log_prepare(&t.r, 999, &p), 0);
    cr_assert_eq(t.r.created_ms, 123456);
    t.r.created_ms = 123457;
    cr_assert_eq(ls_log_prepare(&t.r, 999, &p), -EINVAL);
    char *big = malloc(70000);
    memset(big, 'a', 69999);
    big[69999] = '\0';
    tl_make(&t, 1, 0);
    t.r.path = big;
    cr_assert_eq(ls_log_prepare(&t.r, 1000, &p), -E2BIG);
    free(big);
}

/* ======================================================================== */
/* Store: round trips and filters                                           */
/* ======================================================================== */

#define N_RT 240
static const int64_t T0 = 1760000000000; /* 2025-10-09 */

typedef struct expect {
    tl_rec t[N_RT];
    int feedback[N_RT];
    bool deleted[N_RT];
} expect;

static bool want(const expect *e, int i, const ls_filter *f)
{
    const ls_record *r = &e->t[i].r;
    if (e->deleted[i])
        return false;
    if ((f->account && strcmp(f->account, r->account)) ||
        (f->gateway && strcmp(f->gateway, r->gateway)) ||
        (f->provider && strcmp(f->provider, r->provider)) ||
        (f->model && strcmp(f->model, r->model)) || (f->status && f->status != r->status) ||
        (f->success >= 0 && f->success != r->success) ||
        (f->cached >= 0 && f->cached != r->cached) ||
        (f->feedback > -2 && f->feedback != e->feedback[i]) ||
        (f->from_ms > 0 && r->created_ms < f->from_ms) ||
        (f->to_ms > 0 && r->created_ms > f->to_ms) ||
        (f->min_duration_ms >= 0 && r->duration_ms < f->min_duration_ms) ||
        (f->max_duration_ms >= 0 && r->duration_ms > f->max_duration_ms))
        return false;
    for (size_t m = 0; m < f->n_meta; m++) {
        char kv[64];
        snprintf(kv, sizeof kv, "\"%s\":%s%s%s", f->meta[m].key,
                 strcmp(f->meta[m].key, "user") == 0 ? "\"" : "", f->meta[m].value,
                 strcmp(f->meta[m].key, "user") == 0 ? "\"" : "");
        if (!strstr(e->t[i].meta, kv))
            return false;
    }
    return true;
}

static int find_idx(const expect *e, const char *id)
{
    for (int i = 0; i < N_RT; i++)
        if (strcmp(e->t[i].r.id, id) == 0)
            return i;
    return -1;
}

/* Lists f page by page in both orders and compares with the brute force. */
static void check_filter(ls_store *s, const expect *e, const ls_filter *f, const char *what)
{
    int n_want = 0;
    for (int i = 0; i < N_RT; i++)
        n_want += want(e, i, f);
    for (int asc = 0; asc < 2; asc++) {
        char(*ids)[LS_ID_LEN + 1];
        size_t n = tl_list_all(s, f, 13, asc, &ids);
        cr_assert_eq((int)n, n_want, "%s (asc=%d): %zu listed, %d expected", what, asc, n, n_want);
        for (size_t k = 0; k < n; k++) {
            int i = find_idx(e, ids[k]);
            cr_assert_geq(i, 0, "%s: unknown id %s", what, ids[k]);
            cr_assert(want(e, i, f), "%s: %s should not match", what, ids[k]);
            if (k > 0) /* strictly ordered, hence no duplicates */
                cr_assert(asc ? strcmp(ids[k - 1], ids[k]) < 0 : strcmp(ids[k - 1], ids[k]) > 0,
                          "%s: order", what);
        }
        free(ids);
    }
    json_t *items;
    char next[LS_CURSOR_LEN];
    size_t total = 0;
    cr_assert_eq(ls_list(s, f, NULL, 5, false, &items, next, &total), 0);
    cr_assert_eq((int)total, n_want, "%s: total_matching", what);
    cr_assert_eq(json_array_size(items), (size_t)(n_want < 5 ? n_want : 5));
    cr_assert_eq(next[0] != '\0', n_want > 5, "%s: next_cursor", what);
    json_decref(items);
}

static void check_all_filters(ls_store *s, const expect *e)
{
    ls_filter f;
    ls_filter_init(&f);
    check_filter(s, e, &f, "everything");
    f.account = "acct";
    check_filter(s, e, &f, "account");
    f.gateway = "gw1";
    check_filter(s, e, &f, "account+gateway");
    f.account = NULL;
    check_filter(s, e, &f, "gateway only");
    f.account = "nobody";
    check_filter(s, e, &f, "unknown account");
    ls_filter_init(&f);
    f.provider = "openai";
    check_filter(s, e, &f, "provider");
    f.provider = "none-such";
    check_filter(s, e, &f, "unknown provider");
    ls_filter_init(&f);
    f.model = TL_MODELS[2];
    check_filter(s, e, &f, "model");
    ls_filter_init(&f);
    f.status = 429;
    check_filter(s, e, &f, "status");
    ls_filter_init(&f);
    f.success = 0;
    check_filter(s, e, &f, "success=0");
    f.success = 1;
    check_filter(s, e, &f, "success=1");
    ls_filter_init(&f);
    f.cached = 1;
    check_filter(s, e, &f, "cached=1");
    f.cached = 0;
    check_filter(s, e, &f, "cached=0");
    ls_filter_init(&f);
    for (int fb = -1; fb <= 1; fb++) {
        f.feedback = fb;
        check_filter(s, e, &f, "feedback");
    }
    ls_filter_init(&f);
    f.min_duration_ms = 20;
    check_filter(s, e, &f, "min duration");
    f.max_duration_ms = 49;
    check_filter(s, e, &f, "duration range");
    f.min_duration_ms = -1;
    check_filter(s, e, &f, "max duration");
    ls_filter_init(&f);
    f.from_ms = T0 + 1000 * 50;
    check_filter(s, e, &f, "from");
    f.to_ms = T0 + 1000 * 120;
    check_filter(s, e, &f, "from..to");
    f.from_ms = 0;
    check_filter(s, e, &f, "to");
    ls_filter_init(&f);
    f.n_meta = 1;
    f.meta[0].key = "user";
    f.meta[0].value = "u1";
    check_filter(s, e, &f, "meta string");
    f.meta[1].key = "n";
    f.meta[1].value = "2";
    f.n_meta = 2;
    check_filter(s, e, &f, "meta string+number");
    f.meta[0].key = "flag";
    f.meta[0].value = "true";
    check_filter(s, e, &f, "meta bool+number");
    f.meta[0].value = "maybe";
    check_filter(s, e, &f, "meta unknown value");
    ls_filter_init(&f);
    f.account = "acct";
    f.gateway = "gw2";
    f.provider = "workers-ai";
    f.success = 1;
    f.cached = 0;
    f.min_duration_ms = 10;
    f.from_ms = T0 + 1000 * 10;
    check_filter(s, e, &f, "combined");
}

Test(logstore, roundtrip_every_filter_and_reopen)
{
    char *dir = ts_tmpdir();
    ls_store *s = tl_open(dir);
    static expect e;
    memset(&e, 0, sizeof e);
    for (int i = 0; i < N_RT; i++) {
        /* Out of order in time by a few seconds: the index must sort. */
        tl_make(&e.t[i], i, T0 + 1000 * i + ((i % 7) == 3 ? -4500 : 0));
        uint64_t seq;
        cr_assert_eq(ls_append(s, &e.t[i].r, &seq), 0);
        cr_assert_eq(strlen(e.t[i].r.id), LS_ID_LEN);
        if (i % 50 == 49)
            cr_assert_eq(ls_wait(s, seq, 10000), 0);
    }
    ls_stats st;
    ls_stats_get(s, &st);
    cr_assert_eq(ls_wait(s, st.appended, 10000), 0);
    for (int i = 0; i < N_RT; i += 3) {
        e.feedback[i] = i % 2 ? 1 : -1;
        double score = i * 0.5;
        cr_assert_eq(ls_feedback(s, "acct", NULL, e.t[i].r.id, e.feedback[i], &score), 0);
    }
    check_all_filters(s, &e);

    /* get: every field back. */
    for (int i = 0; i < N_RT; i += 17) {
        json_t *j = NULL;
        cr_assert_eq(ls_get(s, "acct", e.t[i].gateway, e.t[i].r.id, &j), 0);
        const ls_record *r = &e.t[i].r;
        cr_assert_str_eq(json_string_value(json_object_get(j, "id")), r->id);
        cr_assert_str_eq(json_string_value(json_object_get(j, "model")), r->model);
        cr_assert_str_eq(json_string_value(json_object_get(j, "provider")), r->provider);
        cr_assert_str_eq(json_string_value(json_object_get(j, "gateway")), r->gateway);
        cr_assert_eq(json_integer_value(json_object_get(j, "status_code")), r->status);
        cr_assert_eq(json_is_true(json_object_get(j, "success")), r->success);
        cr_assert_eq(json_is_true(json_object_get(j, "cached")), r->cached);
        cr_assert_eq(json_integer_value(json_object_get(j, "tokens_out")), (json_int_t)r->tokens_out);
        cr_assert_eq(json_integer_value(json_object_get(j, "attempts")), r->attempts);
        cr_assert_float_eq(json_real_value(json_object_get(j, "cost")), r->cost, 1e-12);
        cr_assert_float_eq(json_real_value(json_object_get(j, "duration")), r->duration_ms, 1e-9);
        cr_assert_str_eq(json_string_value(json_object_get(j, "request_body")), e.t[i].req);
        cr_assert_str_eq(json_string_value(json_object_get(j, "response_body")), e.t[i].resp);
        cr_assert_str_eq(json_string_value(json_object_get(j, "event_id")), e.t[i].event);
        cr_assert_eq(json_integer_value(json_object_get(j, "feedback")), e.feedback[i]);
        json_t *md = json_object_get(j, "metadata");
        cr_assert_eq(json_integer_value(json_object_get(md, "n")), i % 3);
        cr_assert_eq(json_is_true(json_object_get(md, "flag")), i % 2 == 1);
        json_decref(j);
        /* Scoped: the wrong gateway does not see it. */
        cr_assert_eq(ls_get(s, "acct", "gw-other", r->id, &j), -ENOENT);
        cr_assert_eq(ls_get(s, "other", NULL, r->id, &j), -ENOENT);
        cr_assert_eq(ls_get(s, NULL, NULL, r->id, &j), 0);
        json_decref(j);
    }
    ls_close(s);

    /* Everything again from disk. */
    s = tl_open(dir);
    ls_stats_get(s, &st);
    cr_assert_eq(st.records_live, N_RT);
    cr_assert_eq(st.corrupt_skipped, 0);
    check_all_filters(s, &e);
    ls_close(s);
    ts_tmpdir_remove(dir);
    free(dir);
}

Test(logstore, json_shape_bodies_and_metadata_types)
{
    char *dir = ts_tmpdir();
    ls_store *s = tl_open(dir);
    ls_record r = {0};
    r.created_ms = 1795082400123; /* 2026-11-19T10:00:00.123Z */
    r.account = "a";
    r.gateway = "g";
    r.provider = "workers-ai";
    r.model = "bad\xff-model";
    r.status = 200;
    r.success = true;
    r.metadata = "{\"s\":\"x\\\"y\",\"i\":42,\"r\":1.5,\"b\":false}";
    static const uint8_t bin[] = {0x00, 0xff, 0x10, 0x80};
    r.request_body = bin;
    r.request_body_len = sizeof bin;
    r.response_body = NULL;
    r.request_size = 100000;
    tl_put(s, &r);
    json_t *j = NULL;
    cr_assert_eq(ls_get(s, "a", "g", r.id, &j), 0);
    static const char *const keys[] = {
        "id", "created_at", "account", "gateway", "provider", "model", "path", "status_code",
        "success", "cached", "step", "attempts", "tokens_in", "tokens_out", "cost", "duration",
        "ttfb", "metadata", "event_id", "request_content_type", "response_content_type",
        "request_size", "response_size", "feedback", "score", "request_body", "response_body"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        cr_assert_not_null(json_object_get(j, keys[i]), "missing %s", keys[i]);
    cr_assert_str_eq(json_string_value(json_object_get(j, "created_at")),
                     "2026-11-19T10:00:00.123Z");
    cr_assert_str_eq(json_string_value(json_object_get(j, "model")), "bad\xEF\xBF\xBD-model");
    cr_assert_str_eq(json_string_value(json_object_get(j, "request_body")), "AP8QgA==");
    cr_assert_str_eq(json_string_value(json_object_get(j, "request_body_encoding")), "base64");
    cr_assert(json_is_null(json_object_get(j, "response_body")));
    cr_assert_null(json_object_get(j, "response_body_encoding"));
    cr_assert(json_is_null(json_object_get(j, "score")));
    cr_assert_eq(json_integer_value(json_object_get(j, "request_size")), 100000);
    cr_assert_eq(json_integer_value(json_object_get(j, "response_size")), 0);
    json_t *md = json_object_get(j, "metadata");
    cr_assert_str_eq(json_string_value(json_object_get(md, "s")), "x\"y");
    cr_assert(json_is_integer(json_object_get(md, "i")));
    cr_assert_eq(json_integer_value(json_object_get(md, "i")), 42);
    cr_assert(json_is_real(json_object_get(md, "r")));
    cr_assert(json_is_false(json_object_get(md, "b")));
    json_decref(j);

    /* Lists carry no bodies; the score shows once set. */
    double score = 0.25;
    cr_assert_eq(ls_feedback(s, "a", "g", r.id, 1, &score), 0);
    json_t *items;
    char next[LS_CURSOR_LEN];
    cr_assert_eq(ls_list(s, NULL, NULL, 10, false, &items, next, NULL), 0);
    cr_assert_eq(json_array_size(items), 1);
    json_t *it = json_array_get(items, 0);
    cr_assert_null(json_object_get(it, "request_body"));
    cr_assert_float_eq(json_real_value(json_object_get(it, "score")), 0.25, 1e-12);
    cr_assert_eq(json_integer_value(json_object_get(it, "feedback")), 1);
    cr_assert_str_eq(next, "");
    json_decref(items);

    /* The meta filter compares text forms. */
    ls_filter f;
    ls_filter_init(&f);
    f.n_meta = 1;
    f.meta[0].key = "s";
    f.meta[0].value = "x\"y";
    size_t total;
    cr_assert_eq(ls_list(s, &f, NULL, 10, false, &items, next, &total), 0);
    cr_assert_eq(total, 1);
    json_decref(items);
    f.meta[0].key = "r";
    f.meta[0].value = "1.5";
    cr_assert_eq(ls_list(s, &f, NULL, 10, false, &items, next, &total), 0);
    cr_assert_eq(total, 1);
    json_decref(items);
    ls_close(s);
    ts_tmpdir_remove(dir);
    free(dir);
}

/* ======================================================================== */
/* Pagination while appending                                               */
/* ======================================================================== */

typedef struct writer {
    ls_store *s;
    atomic_bool stop;
    int written;
} writer;

static void *writer_main(void *arg)
{
    writer *w = arg;
    for (int i = 0; !atomic_load(&w->stop) && i < 20000; i++) {
        tl_rec t;
        tl_make(&t, 1000 + i, 0); /* now: newer than every pre-existing record */
        t.r.gateway = "gw0";
        uint64_t seq;
        if (ls_append(w->s, &t.r, &seq) == 0)
            w->written++;
        if (i % 64 == 0)
            ls_wait(w->s, seq, 10000);
    }
    return NULL;
}

Test(logstore, pagination_stable_while_appending)
{
    char *dir = ts_tmpdir();
    ls_store *s = tl_open(dir);
    int64_t now = pl_time_wall_ms();
    enum { PRE = 600 };
    static char pre[PRE][LS_ID_LEN + 1];
    for (int i = 0; i < PRE; i++) {
        tl_rec t;
        tl_make(&t, i, now - 100000 + i * 10);
        t.r.gateway = "gw0";
        tl_put(s, &t.r);
        strcpy(pre[i], t.r.id);
    }
    writer w = {.s = s};
    pthread_t th;
    pthread_create(&th, NULL, writer_main, &w);
    ls_filter f;
    ls_filter_init(&f);
    f.account = "acct";
    f.gateway = "gw0";
    for (int asc = 0; asc < 2; asc++) {
        char(*ids)[LS_ID_LEN + 1];
        size_t n = tl_list_all(s, &f, 7, asc, &ids);
        /* Newest first never reaches the newer records; oldest first may. */
        if (!asc)
            cr_assert_eq(n, PRE);
        cr_assert_geq(n, PRE);
        for (size_t k = 1; k < n; k++)
            cr_assert(asc ? strcmp(ids[k - 1], ids[k]) < 0 : strcmp(ids[k - 1], ids[k]) > 0,
                      "duplicate or disorder at %zu", k);
        for (int i = 0; i < PRE; i++) {
            const char *want_id = pre[asc ? i : PRE - 1 - i];
            cr_assert_str_eq(ids[i], want_id, "gap at %d", i);
        }
        free(ids);
    }
    atomic_store(&w.stop, true);
    pthread_join(th, NULL);
    cr_assert_gt(w.written, 0);
    ls_close(s);
    ts_tmpdir_remove(dir);
    free(dir);
}

/* ======================================================================== */
/* Feedback, deletes, reopen                                                */
/* ======================================================================== */

Test(logstore, feedback_and_delete_persist_across_reopen)
{
    char *dir = ts_tmpdir();
    ls_store *s = tl_open(dir);
    static tl_rec t[60];
    for (int i = 0; i < 60; i++) {
        tl_make(&t[i], i, T0 + i);
        tl_put(s, &t[i].r);
    }
    double sc = 0.75;
    cr_assert_eq(ls_feedback(s, "acct", "gw0", t[0].r.id, -1, &sc), 0);
    cr_assert_eq(ls_feedback(s, "acct", "gw1", t[1].r.id, 1, NULL), 0);
    cr_assert_eq(ls_feedback(s, "acct", "gw1", t[0].r.id, 1, NULL), -ENOENT);
    cr_assert_eq(ls_feedback(s, "acct", "gw0", t[0].r.id, 3, NULL), -EINVAL);
    cr_assert_eq(ls_feedback(s, "acct", "gw0", "zz", 1, NULL), -EINVAL);
    ls_filter f;
    ls_filter_init(&f);
    f.account = "acct";
    f.gateway = "gw2";
    f.status = 500;
    uint64_t n = 0;
    cr_assert_eq(ls_delete(s, &f, &n), 0);
    int want_del = 0;
    for (int i = 0; i < 60; i++)
        want_del += i % 3 == 2 && TL_STATUS[i % 4] == 500;
    cr_assert_eq((int)n, want_del);
    cr_assert_gt(n, 0);
    for (int round = 0; round < 2; round++) {
        json_t *j;
        cr_assert_eq(ls_get(s, "acct", "gw0", t[0].r.id, &j), 0);
        cr_assert_eq(json_integer_value(json_object_get(j, "feedback")), -1);
        cr_assert_float_eq(json_real_value(json_object_get(j, "score")), 0.75, 1e-12);
        json_decref(j);
        cr_assert_eq(ls_get(s, "acct", "gw1", t[1].r.id, &j), 0);
        cr_assert_eq(json_integer_value(json_object_get(j, "feedback")), 1);
        cr_assert(json_is_null(json_object_get(j, "score")));
        json_decref(j);
        for (int i = 0; i < 60; i++) {
            bool del = i % 3 == 2 && TL_STATUS[i % 4] == 500;
            int rc = ls_get(s, NULL, NULL, t[i].r.id, &j);
            cr_assert_eq(rc, del ? -ENOENT : 0, "record %d round %d", i, round);
            if (rc == 0)
                json_decref(j);
        }
        cr_assert_eq(ls_delete(s, &f, &n), 0);
        cr_assert_eq(n, 0, "already deleted");
        ls_stats st;
        ls_stats_get(s, &st);
        cr_assert_eq(st.records_live, 60 - (uint64_t)want_del);
        ls_close(s);
        s = tl_open(dir);
    }
    ls_close(s);
    ts_tmpdir_remove(dir);
    free(dir);
}

/* ======================================================================== */
/* Retention and reclamation                                                */
/* ======================================================================== */

static ls_store *small_segments(const char *dir)
{
    ls_opts o;
    ls_opts_init(&o, dir);
    o.commit_interval_us = 100;
    o.segment_max_bytes = 4096;
    o.maintenance_interval_ms = 3600000; /* tests call ls_maintain */
    return tl_open_opts(&o);
}

static size_t count_matching(ls_store *s, const char *gw)
{
    ls_filter f;
    ls_filter_init(&f);
    f.account = "acct";
    f.gateway = gw;
    json_t *items;
    char next[LS_CURSOR_LEN];
    size_t total = 0;
    cr_assert_eq(ls_list(s, &f, NULL, 1, false, &items, next, &total), 0);
    json_decref(items);
    return total;
}

Test(logstore, retention_by_count_unlinks_segments)
{
    char *dir = ts_tmpdir();
    ls_store *s = small_segments(dir);
    static tl_rec t[300];
    for (int i = 0; i < 300; i++) {
        tl_make(&t[i], i, T0 + i);
        t[i].r.gateway = "gw0";
        tl_put(s, &t[i].r); /* one record per group: many small segments */
    }
    int segs_before = tl_count_files(dir, ".seg");
    cr_assert_gt(segs_before, 20);
    ls_set_retention(s, "acct", "gw0", 25, 0);
    cr_assert_eq(ls_maintain(s), 0);
    cr_assert_eq(count_matching(s, "gw0"), 25);
    for (int i = 0; i < 300; i++) {
        json_t *j;
        int rc = ls_get(s, "acct", "gw0", t[i].r.id, &j);
        cr_assert_eq(rc, i >= 275 ? 0 : -ENOENT, "record %d", i);
        if (rc == 0)
            json_decref(j);
    }
    int segs_after = tl_count_files(dir, ".seg");
    cr_assert_lt(segs_after, 12, "segments %d -> %d", segs_before, segs_after);
    ls_stats st;
    ls_stats_get(s, &st);
    cr_assert_eq(st.segments, (uint32_t)segs_after);
    cr_assert_eq(st.records_live, 25);
    ls_close(s);

    /* After reopen (retention not set again): still the same 25. */
    s = small_segments(dir);
    cr_assert_eq(count_matching(s, "gw0"), 25);
    /* More records and another pass; then reclaim again and reopen. */
    ls_set_retention(s, "acct", "gw0", 25, 0);
    for (int i = 0; i < 100; i++) {
        tl_rec x;
        tl_make(&x, i, T0 + 1000 + i);
        x.r.gateway = "gw0";
        tl_put(s, &x.r);
    }
    cr_assert_eq(ls_maintain(s), 0);
    cr_assert_eq(ls_maintain(s), 0);
    cr_assert_eq(count_matching(s, "gw0"), 25);
    ls_close(s);
    s = small_segments(dir);
    cr_assert_eq(count_matching(s, "gw0"), 25);
    cr_assert_lt(tl_count_files(dir, ".seg"), 14);
    ls_close(s);
    ts_tmpdir_remove(dir);
    free(dir);
}

Test(logstore, retention_by_age)
{
    char *dir = ts_tmpdir();
    ls_store *s = small_segments(dir);
    int64_t now = pl_time_wall_ms();
    for (int i = 0; i < 120; i++) {
        tl_rec t;
        tl_make(&t, i, now - 7200 * 1000 + i); /* two hours old */
        t.r.gateway = "gw0";
        tl_put(s, &t.r);
    }
    for (int i = 0; i < 10; i++) {
        tl_rec t;
        tl_make(&t, i, now - 60 * 1000 + i);
        t.r.gateway = "gw0";
        tl_put(s, &t.r);
    }
    int before = tl_count_files(dir, ".seg");
    ls_set_retention(s, "acct", "gw0", 0, 3600);
    cr_assert_eq(ls_maintain(s), 0);
    cr_assert_eq(count_matching(s, "gw0"), 10);
    int after = tl_count_files(dir, ".seg");
    cr_assert_lt(after, before / 2, "segments %d -> %d", before, after);
    ls_close(s);
    s = small_segments(dir);
    cr_assert_eq(count_matching(s, "gw0"), 10);
    ls_close(s);
    ts_tmpdir_remove(dir);
    free(dir);
}

/* A delete and a feedback patch written into a segment that is later
 * reclaimed must still hold after reopen: they are carried forward. */
Test(logstore, reclaimed_segment_carries_controls_forward)
{
    char *dir = ts_tmpdir();
    ls_store *s = small_segments(dir);
    static tl_rec keep[40];
    for (int i = 0; i < 40; i++) {
        tl_make(&keep[i], i, T0 + i);
        keep[i].r.gateway = "keep";
        tl_put(s, &keep[i].r);
    }
    /* Into the active segment: a tombstone for keep[5] and a patch of keep[6]. */
    ls_filter f;
    ls_filter_init(&f);
    f.gateway = "keep";
    f.from_ms = T0 + 5;
    f.to_ms = T0 + 5;
    uint64_t n;
    cr_assert_eq(ls_delete(s, &f, &n), 0);
    cr_assert_eq(n, 1);
    cr_assert_eq(ls_feedback(s, NULL, "keep", keep[6].r.id, -1, NULL), 0);
    /* Then short-lived records, so that this segment closes and dies. */
    for (int i = 0; i < 60; i++) {
        tl_rec x;
        tl_make(&x, i, T0 + 100 + i);
        x.r.gateway = "tmp";
        tl_put(s, &x.r);
    }
    ls_filter_init(&f);
    f.gateway = "tmp";
    cr_assert_eq(ls_delete(s, &f, &n), 0);
    cr_assert_eq(n, 60);
    int before = tl_count_files(dir, ".seg");
    cr_assert_eq(ls_maintain(s), 0);
    int after = tl_count_files(dir, ".seg");
    cr_assert_lt(after, before, "the tmp segments went: %d -> %d", before, after);
    for (int round = 0; round < 3; round++) {
        json_t *j;
        cr_assert_eq(ls_get(s, NULL, NULL, keep[5].r.id, &j), -ENOENT, "round %d", round);
        cr_assert_eq(ls_get(s, NULL, NULL, keep[6].r.id, &j), 0);
        cr_assert_eq(json_integer_value(json_object_get(j, "feedback")), -1, "round %d", round);
        json_decref(j);
        cr_assert_eq(count_matching(s, "keep"), 39);
        cr_assert_eq(count_matching(s, "tmp"), 0);
        ls_close(s);
        s = small_segments(dir);
        cr_assert_eq(ls_maintain(s), 0);
    }
    ls_close(s);
    ts_tmpdir_remove(dir);
    free(dir);
}

/* ======================================================================== */
/* Backpressure, errors, export, stats                                      */
/* ======================================================================== */

Test(logstore, backpressure_returns_eagain)
{
    char *dir = ts_tmpdir();
    ls_opts o;
    ls_opts_init(&o, dir);
    o.commit_interval_us = 2000000; /* nothing leaves the buffer for 2 s */
    o.commit_max_records = 100000;
    o.max_pending_bytes = 16384;
    ls_store *s = tl_open_opts(&o);
    int ok = 0, rc = 0;
    uint64_t last = 0;
    for (int i = 0; i < 1000; i++) {
        tl_rec t;
        tl_make(&t, i, 0);
        rc = ls_append(s, &t.r, &last);
        if (rc != 0)
            break;
        ok++;
    }
    cr_assert_eq(rc, -EAGAIN);
    cr_assert_gt(ok, 5);
    cr_assert_lt(ok, 16384 / 200);
    ls_stats st;
    ls_stats_get(s, &st);
    cr_assert_eq(st.dropped, 1);
    cr_assert_eq(st.pending_records, (uint64_t)ok);
    cr_assert_leq(st.pending_bytes, 16384);
    cr_assert_eq(ls_wait(s, last, 0), -ETIMEDOUT);
    cr_assert_eq(ls_wait(s, last, 10000), 0);
    tl_rec t;
    tl_make(&t, 1, 0);
    cr_assert_eq(ls_append(s, &t.r, &last), 0, "room again once durable");
    ls_close(s); /* flushes the pending record */
    s = tl_open(dir);
    ls_stats_get(s, &st);
    cr_assert_eq(st.records_live, (uint64_t)ok + 1);
    ls_close(s);
    ts_tmpdir_remove(dir);
    free(dir);
}

Test(logstore, errors)
{
    char *dir = ts_tmpdir();
    ls_opts o;
    ls_opts_init(&o, dir);
    o.max_record_bytes = 1024;
    ls_store *s = tl_open_opts(&o);
    tl_rec t;
    tl_make(&t, 1, 0);
    char big[2000];
    memset(big, 'x', sizeof big);
    t.r.response_body = big;
    t.r.response_body_len = sizeof big;
    uint64_t seq;
    cr_assert_eq(ls_append(s, &t.r, &seq), -E2BIG);
    tl_make(&t, 1, 0);
    t.r.metadata = "{\"a\":{}}";
    cr_assert_eq(ls_append(s, &t.r, &seq), -EINVAL);
    tl_make(&t, 1, 0);
    tl_put(s, &t.r);
    json_t *j = NULL, *items = NULL;
    char next[LS_CURSOR_LEN];
    cr_assert_eq(ls_get(s, NULL, NULL, "short", &j), -EINVAL);
    cr_assert_eq(ls_get(s, NULL, NULL, "01ARZ3NDEKTSV4RRFFQ69G5FAV", &j), -ENOENT);
    cr_assert_eq(ls_list(s, NULL, "bad-cursor", 10, false, &items, next, NULL), -EINVAL);
    ls_filter f;
    ls_filter_init(&f);
    f.n_meta = 6;
    cr_assert_eq(ls_list(s, &f, NULL, 10, false, &items, next, NULL), -EINVAL);
    ls_filter_init(&f);
    f.n_meta = 1;
    f.meta[0].key = "k";
    cr_assert_eq(ls_list(s, &f, NULL, 10, false, &items, next, NULL), -EINVAL);
    cr_assert_eq(ls_wait(s, 0, 0), -EINVAL);
    cr_assert_eq(ls_wait(s, 1000000, 0), -EINVAL, "never issued");
    ls_stats st;
    ls_stats_get(s, &st);
    cr_assert_eq(st.dropped, 1);
    cr_assert_eq(st.appended, 1);
    ls_close(s);

    ls_opts_init(&o, "/proc/no/such/dir");
    ls_store *bad = NULL;
    char err[256];
    cr_assert_lt(ls_open(&o, &bad, err, sizeof err), 0);
    cr_assert_null(bad);
    cr_assert_neq(err[0], '\0');
    ts_tmpdir_remove(dir);
    free(dir);
}

typedef struct lines {
    int n, stop_at;
    char last_id[LS_ID_LEN + 1];
    bool ordered, bodies;
} lines;

static int on_line(const char *line, size_t len, void *ctx)
{
    lines *l = ctx;
    cr_assert_eq(line[len - 1], '\n');
    cr_assert_null(memchr(line, '\n', len - 1));
    json_error_t e;
    json_t *j = json_loadb(line, len, 0, &e);
    cr_assert_not_null(j, "%s", e.text);
    const char *id = json_string_value(json_object_get(j, "id"));
    if (l->n > 0 && strcmp(l->last_id, id) >= 0)
        l->ordered = false;
    strcpy(l->last_id, id);
    if (!json_is_string(json_object_get(j, "request_body")))
        l->bodies = false;
    json_decref(j);
    return ++l->n == l->stop_at ? 42 : 0;
}

Test(logstore, export_ndjson_oldest_first)
{
    char *dir = ts_tmpdir();
    ls_store *s = tl_open(dir);
    for (int i = 0; i < 700; i++) { /* more than one internal batch */
        tl_rec t;
        tl_make(&t, i, T0 + (i * 37) % 700);
        uint64_t seq;
        cr_assert_eq(ls_append(s, &t.r, &seq), 0);
        if (i == 699)
            cr_assert_eq(ls_wait(s, seq, 10000), 0);
    }
    lines l = {.ordered = true, .bodies = true};
    cr_assert_eq(ls_export(s, NULL, on_line, &l), 0);
    cr_assert_eq(l.n, 700);
    cr_assert(l.ordered);
    cr_assert(l.bodies);
    ls_filter f;
    ls_filter_init(&f);
    f.gateway = "gw1";
    lines l2 = {.ordered = true, .bodies = true};
    cr_assert_eq(ls_export(s, &f, on_line, &l2), 0);
    cr_assert_eq(l2.n, 700 / 3 + (700 % 3 > 1));
    lines l3 = {.stop_at = 300, .ordered = true, .bodies = true};
    cr_assert_eq(ls_export(s, NULL, on_line, &l3), 42);
    cr_assert_eq(l3.n, 300);
    ls_close(s);
    ts_tmpdir_remove(dir);
    free(dir);
}

static int commits_seen;
static uint64_t last_seen;
static void on_commit(void *ctx, uint64_t last_seq, uint32_t records, uint64_t bytes,
                      uint64_t write_ns, uint64_t sync_ns)
{
    (void)ctx;
    cr_assert_gt(last_seq, last_seen);
    last_seen = last_seq;
    (void)write_ns;
    (void)sync_ns;
    cr_assert_gt(records, 0);
    cr_assert_gt(bytes, records * LS_FRAME_HDR);
    commits_seen++;
}

Test(logstore, stats_and_metrics)
{
    char *dir = ts_tmpdir();
    ls_opts o;
    ls_opts_init(&o, dir);
    o.on_commit = on_commit;
    ls_store *s = tl_open_opts(&o);
    for (int i = 0; i < 50; i++) {
        tl_rec t;
        tl_make(&t, i, 0);
        tl_put(s, &t.r);
    }
    ls_stats st;
    ls_stats_get(s, &st);
    cr_assert_eq(st.records_live, 50);
    cr_assert_eq(st.appended, 50);
    cr_assert_eq(st.durable_seq, 50);
    cr_assert_eq(st.segments, 1);
    cr_assert_eq(st.pending_records, 0);
    cr_assert_geq(st.commits, 1);
    cr_assert_eq((int)st.commits, commits_seen);
    cr_assert_eq(last_seen, 50);
    cr_assert_gt(st.last_commit_ns, 0);
    cr_assert_gt(st.bytes_on_disk, 50 * 200);
    char segs[4][512];
    cr_assert_eq(tl_segments(dir, segs, 4), 1);
    cr_assert_eq((long)st.bytes_on_disk, tl_file_size(segs[0]));
    cr_assert(!st.failed);
    char *text = NULL;
    size_t len;
    cr_assert_eq(op_metrics_render(&text, &len), 0);
    cr_assert_not_null(strstr(text, "outpost_logstore_records 50"), "%s", text);
    cr_assert_not_null(strstr(text, "outpost_logstore_commit_seconds_count"));
    cr_assert_not_null(strstr(text, "outpost_logstore_appended_total 50"));
    cr_assert_not_null(strstr(text, "outpost_logstore_bytes "));
    free(text);
    ls_close(s);
    cr_assert_eq(op_metrics_render(&text, &len), 0);
    cr_assert_not_null(strstr(text, "outpost_logstore_records 0"), "gauges drop at close");
    free(text);
    ts_tmpdir_remove(dir);
    free(dir);
}

/* Past LS_CHUNK records, retention frees whole chunks of summaries: the
 * indexes drop their entries first, lookups of freed records say ENOENT,
 * and the store keeps working (appends, lists, feedback, reopen). */
Test(logstore, retention_frees_summary_chunks)
{
    char *dir = ts_tmpdir();
    ls_opts o;
    ls_opts_init(&o, dir);
    o.fsync = false;
    o.maintenance_interval_ms = 3600000;
    o.segment_max_bytes = 1 << 20;
    ls_store *s = tl_open_opts(&o);
    enum { N = 2 * LS_CHUNK + 3000 };
    static char first_ids[8][LS_ID_LEN + 1];
    uint64_t seq = 0;
    for (int i = 0; i < N; i++) {
        ls_record r = {0};
        r.created_ms = T0 + i;
        r.account = "acct";
        r.gateway = i % 2 ? "gw0" : "gw1";
        r.provider = "p";
        r.model = "m";
        r.status = 200;
        int rc;
        while ((rc = ls_append(s, &r, &seq)) == -EAGAIN)
            ls_wait(s, seq, 1000);
        cr_assert_eq(rc, 0);
        if (i < 8)
            strcpy(first_ids[i], r.id);
    }
    cr_assert_eq(ls_wait(s, seq, 30000), 0);
    ls_stats st;
    ls_stats_get(s, &st);
    uint64_t mem_before = st.memory_bytes;
    cr_assert_gt(mem_before, 3 * sizeof(ls_chunk));
    ls_set_retention(s, "acct", "gw0", 100, 0);
    ls_set_retention(s, "acct", "gw1", 100, 0);
    cr_assert_eq(ls_maintain(s), 0);
    ls_stats_get(s, &st);
    cr_assert_eq(st.records_live, 200);
    cr_assert_lt(st.memory_bytes, mem_before - 2 * sizeof(ls_chunk), "%" PRIu64 " -> %" PRIu64,
                 mem_before, st.memory_bytes);
    json_t *j = NULL;
    for (int i = 0; i < 8; i++)
        cr_assert_eq(ls_get(s, NULL, NULL, first_ids[i], &j), -ENOENT);
    cr_assert_eq(ls_feedback(s, NULL, NULL, first_ids[0], 1, NULL), -ENOENT);
    cr_assert_eq(count_matching(s, "gw0"), 100);
    char(*ids)[LS_ID_LEN + 1];
    ls_filter f;
    ls_filter_init(&f);
    size_t n = tl_list_all(s, &f, 64, true, &ids);
    cr_assert_eq(n, 200);
    cr_assert_eq(ls_feedback(s, NULL, NULL, ids[0], -1, NULL), 0);
    cr_assert_eq(ls_get(s, NULL, NULL, ids[199], &j), 0);
    json_decref(j);
    free(ids);
    tl_rec t;
    tl_make(&t, 0, 0);
    t.r.gateway = "gw0";
    tl_put(s, &t.r);
    cr_assert_eq(ls_maintain(s), 0);
    cr_assert_eq(count_matching(s, "gw0"), 100);
    ls_close(s);
    s = tl_open_opts(&o);
    cr_assert_eq(count_matching(s, "gw0"), 100);
    cr_assert_eq(count_matching(s, "gw1"), 100);
    cr_assert_eq(ls_get(s, NULL, NULL, t.r.id, &j), 0);
    json_decref(j);
    ls_close(s);
    ts_tmpdir_remove(dir);
    free(dir);
}

/* Everything at once on small segments: appenders, readers, deletes,
 * feedback, retention and reclamation passes. Then what is live before a
 * close must be exactly what is live after the reopen. */
typedef struct storm {
    ls_store *s;
    atomic_bool stop;
    atomic_int errors;
    int id;
} storm;

static void *storm_append(void *arg)
{
    storm *st = arg;
    for (int i = 0; !atomic_load(&st->stop); i++) {
        tl_rec t;
        tl_make(&t, i * 3 + st->id, 0);
        uint64_t seq;
        int rc = ls_append(st->s, &t.r, &seq);
        if (rc != 0 && rc != -EAGAIN)
            atomic_fetch_add(&st->errors, 1);
        if (i % 16 == 0 && rc == 0 && ls_wait(st->s, seq, 10000) != 0)
            atomic_fetch_add(&st->errors, 1);
    }
    return NULL;
}

static int count_line(const char *line, size_t len, void *ctx)
{
    (void)line;
    (void)len;
    (*(int *)ctx)++;
    return 0;
}

static void *storm_read(void *arg)
{
    storm *st = arg;
    while (!atomic_load(&st->stop)) {
        ls_filter f;
        ls_filter_init(&f);
        f.gateway = "gw1";
        json_t *items = NULL;
        char next[LS_CURSOR_LEN];
        if (ls_list(st->s, &f, NULL, 20, false, &items, next, NULL) != 0) {
            atomic_fetch_add(&st->errors, 1);
            continue;
        }
        size_t i;
        json_t *it;
        json_array_foreach(items, i, it) {
            json_t *j = NULL;
            int rc = ls_get(st->s, NULL, NULL, json_string_value(json_object_get(it, "id")), &j);
            if (rc != 0 && rc != -ENOENT) /* deleted meanwhile is fine */
                atomic_fetch_add(&st->errors, 1);
            json_decref(j);
            if (i == 0)
                ls_feedback(st->s, NULL, NULL, json_string_value(json_object_get(it, "id")), 1,
                            NULL);
        }
        json_decref(items);
        int n = 0;
        f.gateway = "gw2";
        if (ls_export(st->s, &f, count_line, &n) != 0)
            atomic_fetch_add(&st->errors, 1);
    }
    return NULL;
}

static void *storm_delete(void *arg)
{
    storm *st = arg;
    while (!atomic_load(&st->stop)) {
        ls_filter f;
        ls_filter_init(&f);
        f.gateway = "gw2";
        f.status = 500;
        uint64_t n;
        if (ls_delete(st->s, &f, &n) != 0)
            atomic_fetch_add(&st->errors, 1);
        if (ls_maintain(st->s) != 0)
            atomic_fetch_add(&st->errors, 1);
        struct timespec ts = {0, 20000000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

Test(logstore, storm_then_reopen_is_consistent)
{
    char *dir = ts_tmpdir();
    ls_opts o;
    ls_opts_init(&o, dir);
    o.commit_interval_us = 300;
    o.segment_max_bytes = 16384;
    o.maintenance_interval_ms = 50;
    ls_store *s = tl_open_opts(&o);
    ls_set_retention(s, "acct", "gw0", 300, 0);
    ls_set_retention(s, "acct", "gw1", 0, 1); /* older than 1 s */
    storm st[6];
    pthread_t th[6];
    void *(*fns[6])(void *) = {storm_append, storm_append, storm_append,
                               storm_read,   storm_read,   storm_delete};
    for (int i = 0; i < 6; i++) {
        st[i] = (storm){.s = s, .id = i};
        pthread_create(&th[i], NULL, fns[i], &st[i]);
    }
    struct timespec ts = {1, 500000000};
    nanosleep(&ts, NULL);
    for (int i = 0; i < 6; i++)
        atomic_store(&st[i].stop, true);
    int errors = 0;
    for (int i = 0; i < 6; i++) {
        pthread_join(th[i], NULL);
        errors += atomic_load(&st[i].errors);
    }
    cr_assert_eq(errors, 0);
    /* Quiesce: nothing pending, no more kills by age (count retention is
     * settled by one more pass). */
    ls_set_retention(s, "acct", "gw1", 0, 0);
    for (int i = 0; i < 1000; i++) {
        ls_stats p;
        ls_stats_get(s, &p);
        if (p.pending_records == 0)
            break;
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    }
    cr_assert_eq(ls_maintain(s), 0);
    ls_filter f;
    ls_filter_init(&f);
    char(*before)[LS_ID_LEN + 1];
    size_t nb = tl_list_all(s, &f, 500, true, &before);
    cr_assert_gt(nb, 0);
    cr_assert_eq(count_matching(s, "gw0"), 300);
    ls_stats stb;
    ls_stats_get(s, &stb);
    cr_assert_eq(stb.records_live, nb);
    ls_close(s);

    o.maintenance_interval_ms = 3600000; /* no retention pass before the check */
    s = tl_open_opts(&o);
    char(*after)[LS_ID_LEN + 1];
    size_t na = tl_list_all(s, &f, 500, true, &after);
    cr_assert_eq(na, nb, "live before close %zu, after reopen %zu", nb, na);
    for (size_t i = 0; i < na; i++)
        cr_assert_str_eq(before[i], after[i]);
    ls_filter_init(&f);
    f.gateway = "gw2";
    f.status = 500;
    json_t *items;
    char next[LS_CURSOR_LEN];
    size_t total;
    cr_assert_eq(ls_list(s, &f, NULL, 1, false, &items, next, &total), 0);
    json_decref(items);
    ls_stats sta;
    ls_stats_get(s, &sta);
    cr_assert_eq(sta.corrupt_skipped, 0);
    cr_log_info("storm: %zu live, %" PRIu32 " segments, gw2/500 left %zu", na, sta.segments,
                total);
    free(before);
    free(after);
    ls_close(s);
    ts_tmpdir_remove(dir);
    free(dir);
}
