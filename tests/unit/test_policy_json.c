/*
 * The policy host's JSON decoder (outpost.json_decode, req.body,
 * req.metadata) against jansson as the reference: the same documents decode
 * to the same values, the same documents are refused, request bodies are
 * read without going one byte past body_len (each prefix placed against an
 * unreadable page), and seeded mutations never crash it.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "platform/pl_log.h"
#include "policy/op_policy.h"
#include "test_support.h"

static char *g_dir;
static op_policy_set *g_set;

/* on_error decodes err.body and answers fail(400) with its re-encoding
 * (json_encode sorts keys), or fail(422) with the decoder's error. */
static const char policy_src[] =
    "function on_error(req, err)\n"
    "  local ok, v, e = pcall(outpost.json_decode, err.body)\n"
    "  if not ok then return outpost.fail(500, v) end\n"
    "  if v == nil then return outpost.fail(422, e) end\n"
    "  return outpost.fail(400, outpost.json_encode(v))\n"
    "end\n"
    "function route(req)\n"
    "  local n = 0\n"
    "  for _ in pairs(req.body) do n = n + 1 end\n"
    "  return outpost.route(tostring(n) .. ':' .. tostring(req.body.k))\n"
    "end\n";

static void setup(void)
{
    pl_log_configure(PL_LOG_OFF, PL_LOG_FORMAT_KV);
    g_dir = ts_tmpdir();
    char *f = ts_write_file(g_dir, "json.lua", policy_src);
    char *files[] = {f};
    op_config_policy cfg = {.memory_bytes = 8u << 20, .instructions = 1000000, .files = files,
                            .n_files = 1};
    char err[512];
    cr_assert_eq(op_policy_set_load(&cfg, &g_set, err, sizeof err), 0, "%s", err);
    free(f);
}

static void teardown(void)
{
    op_policy_set_unref(g_set);
    op_policy_thread_cleanup();
    ts_tmpdir_remove(g_dir);
    free(g_dir);
}

TestSuite(policy_json, .init = setup, .fini = teardown);

/* Decodes text with outpost.json_decode. Returns the fail status (400
 * decoded, 422 refused, 500 raised) and the message. */
static int decode(const char *text, size_t len, char *msg, size_t msglen)
{
    op_route_request r = {.model = "m", .tokens_estimate = -1, .attempt = 1};
    op_attempt_result res = {.status = 500, .error_kind = "http", .body = text, .body_len = len};
    op_next_decision d;
    cr_assert_eq(op_policy_on_error(g_set, &r, &res, &d), OP_POLICY_OK, "%s", d.message);
    cr_assert_eq(d.action, OP_NEXT_FAIL);
    snprintf(msg, msglen, "%s", d.message);
    return d.status;
}

/* jansson's canonical form of text, or NULL if it refuses it. */
static char *reference(const char *text)
{
    json_error_t e;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &e);
    if (!j)
        return NULL;
    char *s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY | JSON_SORT_KEYS);
    json_decref(j);
    return s;
}

Test(policy_json, decodes_like_jansson)
{
    /* ("[]" is left out: json_encode writes every empty table as {}.) */
    static const char *const docs[] = {
        "{}", "0", "-0", "1", "-12", "3.25", "1e3", "-2.5E-3", "1E+2", "true", "false",
        "\"\"", "\"plain\"", "{\"a\":1,\"b\":[true,false,\"x\"],\"c\":{\"d\":{}}}",
        "[1,[2,[3,[4]]]]", " \t\r\n{ \"k\" : \"v\" } \n",
        "\"esc \\\" \\\\ \\/ \\b \\f \\n \\r \\t\"",
        "\"\\u0041\\u00e9\\u20ac\\ud83d\\ude00\"", "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"",
        "{\"dup\":1,\"dup\":2}", "[9007199254740993]", "[0.1,1.7976931348623157e308]",
        "{\"nested\":[{\"a\":[{\"b\":\"c\"}]}]}",
    };
    for (size_t i = 0; i < sizeof docs / sizeof docs[0]; i++) {
        char msg[512];
        int st = decode(docs[i], strlen(docs[i]), msg, sizeof msg);
        char *want = reference(docs[i]);
        cr_assert_not_null(want, "jansson refuses %s", docs[i]);
        cr_assert_eq(st, 400, "%s: %s", docs[i], msg);
        cr_assert_str_eq(msg, want, "%s", docs[i]);
        free(want);
    }
}

Test(policy_json, refuses_what_jansson_refuses_with_a_position)
{
    static const struct {
        const char *doc, *why;
    } bad[] = {
        {"", "unexpected end of input (line 1, column 1)"},
        {"{", "object key must be a string (line 1, column 2)"},
        {"{\"a\" 1}", "':' expected after an object key (line 1, column 6)"},
        {"{\"a\":1,}", "object key must be a string"},
        {"[1,]", "invalid number"},
        {"[1 2]", "',' or ']' expected"},
        {"{\"a\":1\n \"b\":2}", "',' or '}' expected (line 2, column 2)"},
        {"01", "trailing characters after the value"},
        {"1.", "invalid number"},
        {".5", "invalid number"},
        {"+1", "invalid number"},
        {"1e", "invalid number"},
        {"-", "invalid number"},
        {"tru", "invalid literal"},
        {"nul", "invalid literal"},
        {"\"abc", "unterminated string"},
        {"\"a\\x\"", "invalid escape in string"},
        {"\"\\u12\"", "invalid \\u escape"},
        {"\"\\ud83d\"", "lone high surrogate"},
        {"\"\\ude00\"", "lone low surrogate"},
        {"\"tab\there\"", "control character in string"},
        {"\"\xff\"", "invalid UTF-8 in string"},
        {"\"\xc0\xaf\"", "invalid UTF-8 in string"},        /* overlong */
        {"\"\xed\xa0\x80\"", "invalid UTF-8 in string"},    /* a surrogate */
        {"\"\xf4\x90\x80\x80\"", "invalid UTF-8 in string"}, /* past U+10FFFF */
        {"\"\xe2\x82\"", "invalid UTF-8 in string"},         /* cut short */
        {"[1] [2]", "trailing characters"},
        {"NaN", "invalid number"},
        {"[1e400]", "number out of range"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char msg[512];
        int st = decode(bad[i].doc, strlen(bad[i].doc), msg, sizeof msg);
        cr_assert_eq(st, 422, "%s was accepted: %s", bad[i].doc, msg);
        cr_assert(strstr(msg, "invalid JSON: "), "%s", msg);
        cr_assert(strstr(msg, bad[i].why), "%s: %s", bad[i].doc, msg);
        cr_assert_null(reference(bad[i].doc), "jansson accepts %s", bad[i].doc);
    }
}

Test(policy_json, nesting_past_64_raises)
{
    char deep[200];
    memset(deep, '[', 100);
    memset(deep + 100, ']', 100);
    char msg[512];
    cr_assert_eq(decode(deep, sizeof deep, msg, sizeof msg), 500, "%s", msg);
    cr_assert(strstr(msg, "JSON nested deeper than 64"), "%s", msg);
    cr_assert_eq(decode(deep + 36, 128, msg, sizeof msg), 400, "64 levels decode: %s", msg);
}

/* Runs route on a body of len bytes ending at an unreadable page. */
static void route_guarded(const char *body, size_t len, char *model, size_t cap)
{
    long page = sysconf(_SC_PAGESIZE);
    size_t span = ((len + (size_t)page - 1) / (size_t)page + 1) * (size_t)page;
    char *m = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(m, MAP_FAILED);
    char *guard = m + span - page;
    cr_assert_eq(mprotect(guard, (size_t)page, PROT_NONE), 0);
    memcpy(guard - len, body, len);
    op_route_request r = {.model = "m", .body_json = guard - len, .body_len = len,
                          .tokens_estimate = -1};
    op_route_decision d;
    cr_assert_eq(op_policy_route(g_set, &r, &d), OP_POLICY_OK, "%s", d.message);
    snprintf(model, cap, "%s", d.model);
    munmap(m, span);
}

Test(policy_json, body_is_read_within_body_len)
{
    static const char doc[] = "{\"k\":\"v\\u00e9\",\"n\":[1,2.5e3,true,null],\"o\":{\"x\":\"\xe2\x82\xac\"}}";
    size_t n = sizeof doc - 1;
    for (size_t len = 0; len <= n; len++) {
        char model[256];
        route_guarded(doc, len, model, sizeof model);
        /* Every proper prefix is invalid: req.body is then {}. */
        cr_assert_str_eq(model, len == n ? "3:v\xc3\xa9" : "0:nil", "prefix of %zu bytes", len);
    }
}

Test(policy_json, mutations_never_crash_and_agree_with_jansson, .timeout = 120)
{
    static const char seed_doc[] =
        "{\"user\":\"alice\",\"n\":[1,-2.5,3e2],\"ok\":true,\"z\":null,\"s\":\"a\\\"b\\u00e9\"}";
    unsigned rng = 12345;
    int agree = 0, total = 3000;
    for (int i = 0; i < total; i++) {
        char doc[128];
        size_t len = sizeof seed_doc - 1;
        memcpy(doc, seed_doc, len);
        int edits = 1 + (int)((rng = rng * 1103515245u + 12345u) >> 16) % 3;
        for (int e = 0; e < edits; e++) {
            rng = rng * 1103515245u + 12345u;
            size_t pos = (rng >> 8) % len;
            unsigned char b = (unsigned char)(rng >> 20);
            switch ((rng >> 4) % 3) {
            case 0: doc[pos] = (char)b; break;           /* overwrite */
            case 1: len = pos; break;                    /* truncate */
            default:                                     /* delete one byte */
                memmove(doc + pos, doc + pos + 1, len - pos - 1);
                len--;
                break;
            }
            if (len == 0)
                len = 1;
        }
        doc[len] = '\0';
        char msg[512];
        int st = decode(doc, len, msg, sizeof msg);
        cr_assert(st == 400 || st == 422 || st == 500, "status %d", st);
        /* Compare only NUL-free documents (jansson reads C strings here). */
        if (strlen(doc) != len)
            continue;
        char *want = reference(doc);
        if ((want != NULL) == (st == 400) && (!want || strcmp(want, msg) == 0))
            agree++;
        else
            cr_log_info("disagree on %s: ours %d %s, jansson %s", doc, st, msg,
                        want ? want : "refuses");
        free(want);
    }
    /* jansson refuses \u0000 and integers past 64 bits, which we decode;
     * otherwise the two agree. */
    cr_assert_geq(agree, total * 99 / 100, "agree on %d of %d", agree, total);
}
