/*
 * Integration tests of the OpenAI-compatible endpoints (/v1/chat/completions,
 * /v1/completions, /v1/embeddings, unscoped and account-scoped) against the
 * real outpostd and the echo test plugin: response and stream shapes, the
 * translation to the Workers AI input (seen through echo's reflect mode),
 * errors in OpenAI's shape with exact statuses, the policy hook's token
 * estimate, UTF-8 pieces cut by the plugin, the per-model metrics a plugin
 * reports, and a plugin built against ABI minor 0.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "test_support.h"

#define CONFIG_HEAD                                                                    \
    "server:\n"                                                                        \
    "  listen: 127.0.0.1:@PORT@\n"                                                     \
    "  workers: 2\n"                                                                   \
    "  max_body_bytes: 65536\n"                                                        \
    "data_dir: @DIR@/var\n"                                                            \
    "plugins:\n"                                                                       \
    "  dirs: [@PLUGINS@]\n"                                                            \
    "accounts:\n"                                                                      \
    "  - id: local\n"

#define MODELS                                                                         \
    "models:\n"                                                                        \
    "  - id: \"@local/echo\"\n"                                                        \
    "    plugin: echo\n"                                                               \
    "    task: text-generation\n"                                                      \
    "    aliases: [\"gpt-4o-mini\"]\n"                                                 \
    "  - id: \"@local/reflect\"\n"                                                     \
    "    plugin: echo\n"                                                               \
    "    task: text-generation\n"                                                      \
    "    options: {reflect: 1}\n"                                                      \
    "  - id: \"@local/emb\"\n"                                                         \
    "    plugin: echo\n"                                                               \
    "    task: text-embeddings\n"                                                      \
    "    aliases: [\"text-embedding-3-small\"]\n"                                      \
    "  - id: \"@local/emb-nodim\"\n"                                                   \
    "    plugin: echo\n"                                                               \
    "    task: text-embeddings\n"                                                      \
    "    options: {hide_dimensions: 1}\n"                                              \
    "  - id: \"@local/split\"\n"                                                       \
    "    plugin: echo\n"                                                               \
    "    task: text-generation\n"                                                      \
    "    options: {split_utf8: 1}\n"                                                   \
    "  - id: \"@local/cut\"\n"                                                         \
    "    plugin: echo\n"                                                               \
    "    task: text-generation\n"                                                      \
    "    options: {cut_utf8_end: 1}\n"

#define CONFIG CONFIG_HEAD MODELS

/* ======================================================================== */
/* Helpers                                                                   */
/* ======================================================================== */

static char *url(const ts_agent *a, const char *path)
{
    static char buf[4][512];
    static int i;
    i = (i + 1) % 4;
    snprintf(buf[i], sizeof buf[i], "%s%s", a->base_url, path);
    return buf[i];
}

static json_t *jparse(const char *text)
{
    json_error_t e;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &e);
    cr_assert_not_null(j, "not JSON (%s): %s", e.text, text);
    return j;
}

/* POSTs body to path and parses the answer; the caller frees both. */
static json_t *post(const ts_agent *a, const char *path, const char *body, ts_response *r)
{
    ts_http(r, "POST", url(a, path), body, NULL);
    return jparse(r->body);
}

static const char *sget(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    cr_assert(json_is_string(v), "'%s' is not a string in %s", key, json_dumps(o, 0));
    return json_string_value(v);
}

static long long iget(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    cr_assert(json_is_integer(v), "'%s' is not an integer in %s", key, json_dumps(o, 0));
    return (long long)json_integer_value(v);
}

/* The OpenAI error shape, exactly: {"error": {message, type, param, code}}
 * and nothing else (no Workers AI envelope). param/code NULL mean null. */
static void assert_openai_error(const ts_response *r, long status, const char *type,
                                const char *param, const char *code)
{
    cr_assert_eq(r->status, status, "status %ld, want %ld: %s", r->status, status, r->body);
    char *ct = ts_header(r, "Content-Type");
    cr_assert(ct && strstr(ct, "application/json"), "content type %s", ct ? ct : "(none)");
    free(ct);
    json_t *j = jparse(r->body);
    cr_assert_eq(json_object_size(j), 1, "extra keys: %s", r->body);
    json_t *e = json_object_get(j, "error");
    cr_assert(json_is_object(e), "%s", r->body);
    cr_assert_eq(json_object_size(e), 4, "%s", r->body);
    cr_assert(json_is_string(json_object_get(e, "message")), "%s", r->body);
    cr_assert(json_string_length(json_object_get(e, "message")) > 0, "%s", r->body);
    cr_assert_str_eq(sget(e, "type"), type, "%s", r->body);
    json_t *p = json_object_get(e, "param"), *c = json_object_get(e, "code");
    if (param)
        cr_assert(json_is_string(p) && strcmp(json_string_value(p), param) == 0,
                  "param, want %s: %s", param, r->body);
    else
        cr_assert(json_is_null(p), "param, want null: %s", r->body);
    if (code)
        cr_assert(json_is_string(c) && strcmp(json_string_value(c), code) == 0,
                  "code, want %s: %s", code, r->body);
    else
        cr_assert(json_is_null(c), "code, want null: %s", r->body);
    json_decref(j);
}

static void expect_error(const ts_agent *a, const char *path, const char *body, long status,
                         const char *param, const char *code)
{
    ts_response r;
    ts_http(&r, "POST", url(a, path), body, NULL);
    assert_openai_error(&r, status, status == 404 ? "not_found_error" : "invalid_request_error",
                        param, code);
    ts_response_free(&r);
}

/* Splits a text/event-stream body into its events: an array of the JSON
 * data of each, and asserts the stream ends with exactly one [DONE]. */
static json_t *sse_events(const ts_response *r)
{
    char *ct = ts_header(r, "Content-Type");
    cr_assert(ct && strstr(ct, "text/event-stream"), "content type %s: %s", ct ? ct : "(none)",
              r->body);
    free(ct);
    json_t *events = json_array();
    const char *p = r->body;
    bool done = false;
    while (*p) {
        cr_assert(!done, "events after [DONE]: %s", r->body);
        cr_assert_eq(strncmp(p, "data: ", 6), 0, "not an SSE data line at: %s", p);
        const char *end = strstr(p, "\n\n");
        cr_assert_not_null(end, "unterminated event: %s", p);
        size_t n = (size_t)(end - p - 6);
        if (n == 6 && strncmp(p + 6, "[DONE]", 6) == 0) {
            done = true;
        } else {
            json_error_t e;
            /* jansson refuses invalid UTF-8: every event must be valid. */
            json_t *j = json_loadb(p + 6, n, 0, &e);
            cr_assert_not_null(j, "event is not JSON (%s): %.*s", e.text, (int)n, p + 6);
            json_array_append_new(events, j);
        }
        p = end + 2;
    }
    cr_assert(done, "no data: [DONE] at the end: %s", r->body);
    return events;
}

/* The reflect model answers with the Workers AI input it was given. */
static json_t *reflected(const ts_agent *a, const char *path, const char *body)
{
    ts_response r;
    json_t *j = post(a, path, body, &r);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    json_t *choice = json_array_get(json_object_get(j, "choices"), 0);
    const char *text = json_object_get(choice, "message")
                           ? sget(json_object_get(choice, "message"), "content")
                           : sget(choice, "text");
    json_t *in = jparse(text);
    json_decref(j);
    ts_response_free(&r);
    return in;
}

/* The value of a metric line "name{labels} value" in a scrape, or NAN. */
static double scrape_value(const char *scrape, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = strstr(scrape, series); p; p = strstr(p + 1, series))
        if ((p == scrape || p[-1] == '\n') && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    return NAN;
}

/* ======================================================================== */
/* Chat completions                                                          */
/* ======================================================================== */

Test(openai, chat_completion_has_openai_shape_and_usage)
{
    ts_agent a;
    ts_agent_start(&a, CONFIG);
    ts_response r;
    json_t *j = post(&a, "/v1/chat/completions",
                     "{\"model\":\"@local/echo\",\"messages\":[{\"role\":\"system\",\"content\":"
                     "\"be brief\"},{\"role\":\"user\",\"content\":\"hello edge world\"}]}",
                     &r);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    char *ct = ts_header(&r, "Content-Type");
    cr_assert(ct && strstr(ct, "application/json"));
    free(ct);
    cr_assert_eq(strncmp(sget(j, "id"), "chatcmpl-", 9), 0, "%s", r.body);
    cr_assert_eq(strlen(sget(j, "id")), 9 + 24, "%s", r.body);
    cr_assert_str_eq(sget(j, "object"), "chat.completion");
    long long created = iget(j, "created");
    cr_assert(llabs(created - (long long)time(NULL)) < 60, "created %lld", created);
    cr_assert_str_eq(sget(j, "model"), "@local/echo");
    json_t *choices = json_object_get(j, "choices");
    cr_assert_eq(json_array_size(choices), 1);
    json_t *c0 = json_array_get(choices, 0);
    cr_assert_eq(iget(c0, "index"), 0);
    cr_assert_str_eq(sget(json_object_get(c0, "message"), "role"), "assistant");
    cr_assert_str_eq(sget(json_object_get(c0, "message"), "content"), "hello edge world");
    cr_assert_str_eq(sget(c0, "finish_reason"), "stop");
    cr_assert(json_is_null(json_object_get(c0, "logprobs")), "%s", r.body);
    json_t *u = json_object_get(j, "usage");
    cr_assert_eq(iget(u, "prompt_tokens"), 3);
    cr_assert_eq(iget(u, "completion_tokens"), 3);
    cr_assert_eq(iget(u, "total_tokens"), 6);
    json_decref(j);
    ts_response_free(&r);

    /* max_tokens cuts the answer: finish_reason "length"; the newer
     * max_completion_tokens wins over max_tokens. */
    j = post(&a, "/v1/chat/completions",
             "{\"model\":\"@local/echo\",\"max_tokens\":1,\"max_completion_tokens\":2,"
             "\"messages\":[{\"role\":\"user\",\"content\":\"one two three\"}]}",
             &r);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    c0 = json_array_get(json_object_get(j, "choices"), 0);
    cr_assert_str_eq(sget(json_object_get(c0, "message"), "content"), "one two");
    cr_assert_str_eq(sget(c0, "finish_reason"), "length");
    cr_assert_eq(iget(json_object_get(j, "usage"), "completion_tokens"), 2);
    json_decref(j);
    ts_response_free(&r);

    /* Two requests, two ids. */
    json_t *j1 = post(&a, "/v1/chat/completions",
                      "{\"model\":\"@local/echo\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
                      &r);
    ts_response_free(&r);
    json_t *j2 = post(&a, "/v1/chat/completions",
                      "{\"model\":\"@local/echo\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
                      &r);
    ts_response_free(&r);
    cr_assert_str_neq(sget(j1, "id"), sget(j2, "id"));
    json_decref(j1);
    json_decref(j2);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

Test(openai, chat_translates_to_the_workers_ai_input)
{
    ts_agent a;
    ts_agent_start(&a, CONFIG);
    json_t *in = reflected(
        &a, "/v1/chat/completions",
        "{\"model\":\"@local/reflect\",\"messages\":["
        "{\"role\":\"developer\",\"content\":\"rules\"},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"part one\"},"
        "{\"type\":\"text\",\"text\":\"part two\"}]},"
        "{\"role\":\"assistant\",\"content\":null},"
        "{\"role\":\"user\",\"content\":\"again\",\"name\":\"bob\"}],"
        "\"max_tokens\":7,\"temperature\":0.5,\"top_p\":0.9,\"top_k\":40,\"seed\":42,"
        "\"frequency_penalty\":0.25,\"presence_penalty\":-0.5,\"repetition_penalty\":1.1,"
        "\"stop\":\"END\",\"ignore_eos\":true,\"n\":1,\"user\":\"u1\",\"metadata\":{\"k\":\"v\"},"
        "\"logprobs\":false,\"response_format\":{\"type\":\"text\"},\"tools\":[],"
        "\"tool_choice\":\"none\",\"store\":false}");
    json_t *want = jparse(
        "{\"messages\":[{\"role\":\"system\",\"content\":\"rules\"},"
        "{\"role\":\"user\",\"content\":\"part one\\npart two\"},"
        "{\"role\":\"assistant\",\"content\":\"\"},{\"role\":\"user\",\"content\":\"again\"}],"
        "\"max_tokens\":7,\"temperature\":0.5,\"top_p\":0.9,\"top_k\":40,\"seed\":42,"
        "\"frequency_penalty\":0.25,\"presence_penalty\":-0.5,\"repetition_penalty\":1.1,"
        "\"stop\":[\"END\"],\"ignore_eos\":true}");
    char *got_s = json_dumps(in, JSON_SORT_KEYS | JSON_COMPACT);
    char *want_s = json_dumps(want, JSON_SORT_KEYS | JSON_COMPACT);
    cr_assert(json_equal(in, want), "translated to\n%s\nwant\n%s", got_s, want_s);
    free(got_s);
    free(want_s);
    json_decref(in);
    json_decref(want);

    /* Stop as a list; stream is passed on; stream_options is not. */
    ts_response r;
    ts_http(&r, "POST", url(&a, "/v1/chat/completions"),
            "{\"model\":\"@local/reflect\",\"stream\":true,\"stream_options\":{\"include_usage\":"
            "false},\"stop\":[\"a\",\"b\"],\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
            NULL);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    json_t *ev = sse_events(&r);
    json_t *piece = json_array_get(ev, 1);
    in = jparse(sget(json_object_get(json_array_get(json_object_get(piece, "choices"), 0), "delta"),
                     "content"));
    cr_assert(json_is_true(json_object_get(in, "stream")), "%s", r.body);
    cr_assert_null(json_object_get(in, "stream_options"));
    cr_assert_eq(json_array_size(json_object_get(in, "stop")), 2);
    json_decref(in);
    json_decref(ev);
    ts_response_free(&r);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

Test(openai, chat_stream_chunks_in_order_with_optional_usage)
{
    ts_agent a;
    ts_agent_start(&a, CONFIG);
    ts_response r;
    ts_http(&r, "POST", url(&a, "/v1/chat/completions"),
            "{\"model\":\"@local/echo\",\"stream\":true,"
            "\"messages\":[{\"role\":\"user\",\"content\":\"one two three\"}]}",
            NULL);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    json_t *ev = sse_events(&r);
    /* role chunk, three pieces, the final chunk; no usage chunk. */
    cr_assert_eq(json_array_size(ev), 5, "%s", r.body);
    const char *id = NULL;
    char content[256] = "";
    size_t i;
    json_t *e;
    json_array_foreach(ev, i, e)
    {
        cr_assert_str_eq(sget(e, "object"), "chat.completion.chunk");
        cr_assert_str_eq(sget(e, "model"), "@local/echo");
        cr_assert(iget(e, "created") > 0);
        cr_assert_null(json_object_get(e, "usage"), "usage without include_usage: %s", r.body);
        if (!id)
            id = sget(e, "id");
        cr_assert_str_eq(sget(e, "id"), id, "one id per stream");
        json_t *c = json_array_get(json_object_get(e, "choices"), 0);
        cr_assert_eq(iget(c, "index"), 0);
        json_t *delta = json_object_get(c, "delta");
        cr_assert(json_is_object(delta));
        if (i == 0) {
            cr_assert_str_eq(sget(delta, "role"), "assistant");
            cr_assert_str_eq(sget(delta, "content"), "");
            cr_assert(json_is_null(json_object_get(c, "finish_reason")));
        } else if (i < 4) {
            cr_assert_null(json_object_get(delta, "role"));
            strcat(content, sget(delta, "content"));
            cr_assert(json_is_null(json_object_get(c, "finish_reason")));
        } else {
            cr_assert_eq(json_object_size(delta), 0, "final delta not empty: %s", r.body);
            cr_assert_str_eq(sget(c, "finish_reason"), "stop");
        }
    }
    cr_assert_str_eq(content, "one two three");
    cr_assert_eq(strncmp(id, "chatcmpl-", 9), 0);
    json_decref(ev);
    ts_response_free(&r);

    /* include_usage: every chunk has usage null, then one usage chunk with
     * no choices, then [DONE]. */
    ts_http(&r, "POST", url(&a, "/v1/chat/completions"),
            "{\"model\":\"@local/echo\",\"stream\":true,\"max_tokens\":2,"
            "\"stream_options\":{\"include_usage\":true},"
            "\"messages\":[{\"role\":\"user\",\"content\":\"one two three\"}]}",
            NULL);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    ev = sse_events(&r);
    size_t n = json_array_size(ev);
    cr_assert_eq(n, 5, "%s", r.body); /* role, 2 pieces, final, usage */
    json_array_foreach(ev, i, e)
    {
        if (i + 1 < n) {
            cr_assert(json_is_null(json_object_get(e, "usage")), "chunk %zu: %s", i, r.body);
            cr_assert_eq(json_array_size(json_object_get(e, "choices")), 1);
        }
    }
    json_t *fin = json_array_get(json_object_get(json_array_get(ev, n - 2), "choices"), 0);
    cr_assert_str_eq(sget(fin, "finish_reason"), "length");
    json_t *last = json_array_get(ev, n - 1);
    cr_assert_eq(json_array_size(json_object_get(last, "choices")), 0, "%s", r.body);
    json_t *u = json_object_get(last, "usage");
    cr_assert_eq(iget(u, "prompt_tokens"), 3);
    cr_assert_eq(iget(u, "completion_tokens"), 2);
    cr_assert_eq(iget(u, "total_tokens"), 5);
    json_decref(ev);
    ts_response_free(&r);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

/* ======================================================================== */
/* Completions                                                               */
/* ======================================================================== */

Test(openai, completions_are_raw_prompts_with_text_choices)
{
    ts_agent a;
    ts_agent_start(&a, CONFIG);
    /* Workers AI input: the prompt, raw (no chat template), OpenAI's default
     * max_tokens of 16. */
    json_t *in = reflected(&a, "/v1/completions",
                           "{\"model\":\"@local/reflect\",\"prompt\":\"Once upon\",\"seed\":3}");
    json_t *want = jparse("{\"prompt\":\"Once upon\",\"raw\":true,\"max_tokens\":16,\"seed\":3}");
    cr_assert(json_equal(in, want), "%s", json_dumps(in, JSON_SORT_KEYS));
    json_decref(in);
    json_decref(want);
    in = reflected(&a, "/v1/completions",
                   "{\"model\":\"@local/reflect\",\"prompt\":[\"only one\"],\"max_tokens\":99,"
                   "\"echo\":false,\"best_of\":1}");
    cr_assert_str_eq(sget(in, "prompt"), "only one");
    cr_assert_eq(iget(in, "max_tokens"), 99);
    json_decref(in);

    ts_response r;
    json_t *j = post(&a, "/v1/completions",
                     "{\"model\":\"@local/echo\",\"prompt\":\"the quick brown fox\",\"max_tokens\":3}",
                     &r);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    cr_assert_eq(strncmp(sget(j, "id"), "cmpl-", 5), 0, "%s", r.body);
    cr_assert_str_eq(sget(j, "object"), "text_completion");
    cr_assert_str_eq(sget(j, "model"), "@local/echo");
    json_t *c0 = json_array_get(json_object_get(j, "choices"), 0);
    cr_assert_str_eq(sget(c0, "text"), "the quick brown");
    cr_assert_str_eq(sget(c0, "finish_reason"), "length");
    cr_assert_eq(iget(c0, "index"), 0);
    cr_assert(json_is_null(json_object_get(c0, "logprobs")));
    cr_assert_eq(iget(json_object_get(j, "usage"), "total_tokens"), 7);
    json_decref(j);
    ts_response_free(&r);

    ts_http(&r, "POST", url(&a, "/v1/completions"),
            "{\"model\":\"@local/echo\",\"prompt\":\"a b\",\"stream\":true,"
            "\"stream_options\":{\"include_usage\":true}}",
            NULL);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    json_t *ev = sse_events(&r);
    /* No role chunk for completions: two pieces, final, usage. */
    cr_assert_eq(json_array_size(ev), 4, "%s", r.body);
    char text[64] = "";
    for (size_t i = 0; i < 3; i++) {
        json_t *e = json_array_get(ev, i);
        cr_assert_str_eq(sget(e, "object"), "text_completion");
        json_t *c = json_array_get(json_object_get(e, "choices"), 0);
        strcat(text, sget(c, "text"));
        if (i < 2)
            cr_assert(json_is_null(json_object_get(c, "finish_reason")));
        else
            cr_assert_str_eq(sget(c, "finish_reason"), "stop");
    }
    cr_assert_str_eq(text, "a b");
    cr_assert_eq(iget(json_object_get(json_array_get(ev, 3), "usage"), "completion_tokens"), 2);
    json_decref(ev);
    ts_response_free(&r);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

/* ======================================================================== */
/* Embeddings                                                                */
/* ======================================================================== */

static double b64val(char c)
{
    const char *A = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const char *p = strchr(A, c);
    cr_assert(p && c, "not base64: %c", c);
    return (double)(p - A);
}

/* Decodes base64 of little-endian float32 values. */
static size_t decode_floats(const char *s, float *out, size_t max)
{
    unsigned char bytes[4096];
    size_t n = 0, len = strlen(s);
    cr_assert_eq(len % 4, 0, "base64 length %zu", len);
    for (size_t i = 0; i < len; i += 4) {
        uint32_t v = 0;
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            v <<= 6;
            if (s[i + (size_t)k] == '=')
                pad++;
            else
                v |= (uint32_t)b64val(s[i + (size_t)k]);
        }
        for (int k = 0; k < 3 - pad; k++)
            bytes[n++] = (unsigned char)(v >> (16 - 8 * k));
    }
    cr_assert_eq(n % 4, 0);
    for (size_t i = 0; i < n / 4 && i < max; i++) {
        uint32_t u = (uint32_t)bytes[4 * i] | (uint32_t)bytes[4 * i + 1] << 8 |
                     (uint32_t)bytes[4 * i + 2] << 16 | (uint32_t)bytes[4 * i + 3] << 24;
        memcpy(&out[i], &u, 4);
    }
    return n / 4;
}

/* The most significant digits of any number with a fraction in text. */
static int max_significant_digits(const char *text)
{
    int most = 0;
    for (const char *p = text; *p; p++) {
        if (*p != '.' || p == text || p[-1] < '0' || p[-1] > '9')
            continue;
        const char *q = p;
        while (q > text && q[-1] >= '0' && q[-1] <= '9')
            q--;
        int n = 0;
        bool lead = true;
        for (; *q && ((*q >= '0' && *q <= '9') || *q == '.'); q++) {
            if (*q == '.' || (lead && *q == '0'))
                continue;
            lead = false;
            n++;
        }
        most = n > most ? n : most;
    }
    return most;
}

Test(openai, embeddings_as_floats_and_base64)
{
    ts_agent a;
    ts_agent_start(&a, CONFIG);
    ts_response r;
    json_t *j = post(&a, "/v1/embeddings",
                     "{\"model\":\"text-embedding-3-small\",\"input\":[\"first text here\",\"second\"],"
                     "\"encoding_format\":\"float\",\"dimensions\":4,\"user\":\"u\"}",
                     &r);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    cr_assert_str_eq(sget(j, "object"), "list");
    cr_assert_str_eq(sget(j, "model"), "text-embedding-3-small");
    json_t *data = json_object_get(j, "data");
    cr_assert_eq(json_array_size(data), 2);
    for (size_t i = 0; i < 2; i++) {
        json_t *d = json_array_get(data, i);
        cr_assert_str_eq(sget(d, "object"), "embedding");
        cr_assert_eq(iget(d, "index"), (long long)i);
        cr_assert_eq(json_array_size(json_object_get(d, "embedding")), 4);
    }
    json_t *u = json_object_get(j, "usage");
    cr_assert_eq(iget(u, "prompt_tokens"), 4);
    cr_assert_eq(iget(u, "total_tokens"), 4);
    cr_assert_eq(json_object_size(u), 2, "%s", r.body);

    /* The same vectors as /ai/run gives for the same texts, printed with
     * the 9 significant digits a float32 needs. */
    ts_response w;
    json_t *wj = post(&a, "/ai/run/@local/emb", "{\"text\":[\"first text here\",\"second\"]}", &w);
    cr_assert_eq(w.status, 200, "%s", w.body);
    json_t *rows = json_object_get(json_object_get(wj, "result"), "data");
    for (size_t i = 0; i < 2; i++) {
        json_t *want_row = json_array_get(rows, i);
        json_t *got_row = json_object_get(json_array_get(data, i), "embedding");
        cr_assert_eq(json_array_size(got_row), json_array_size(want_row));
        for (size_t k = 0; k < json_array_size(want_row); k++) {
            double g = json_number_value(json_array_get(got_row, k));
            double x = json_number_value(json_array_get(want_row, k));
            cr_assert(fabs(g - x) < 1e-8, "row %zu value %zu: %.17g vs %.17g", i, k, g, x);
        }
    }
    cr_assert_leq(max_significant_digits(r.body), 9, "more digits than a float32 has: %s", r.body);
    /* The Workers AI result carries the usage too. */
    cr_assert_eq(iget(json_object_get(json_object_get(wj, "result"), "usage"), "prompt_tokens"), 4);
    ts_response_free(&w);

    /* base64: little-endian float32, the same values rounded to float. */
    ts_response b;
    json_t *bj = post(&a, "/v1/embeddings",
                      "{\"model\":\"@local/emb\",\"input\":\"first text here\","
                      "\"encoding_format\":\"base64\"}",
                      &b);
    cr_assert_eq(b.status, 200, "%ld %s", b.status, b.body);
    const char *enc = sget(json_array_get(json_object_get(bj, "data"), 0), "embedding");
    float f[8];
    cr_assert_eq(decode_floats(enc, f, 8), 4, "%s", enc);
    json_t *row0 = json_array_get(rows, 0);
    for (size_t k = 0; k < 4; k++)
        cr_assert_eq(f[k], (float)json_number_value(json_array_get(row0, k)), "value %zu", k);
    json_decref(bj);
    ts_response_free(&b);
    json_decref(wj);
    json_decref(j);
    ts_response_free(&r);

    /* A model that does not say its width: dimensions is checked against
     * what it returned. */
    j = post(&a, "/v1/embeddings", "{\"model\":\"@local/emb-nodim\",\"input\":\"x\",\"dimensions\":4}",
             &r);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    json_decref(j);
    ts_response_free(&r);
    expect_error(&a, "/v1/embeddings",
                 "{\"model\":\"@local/emb-nodim\",\"input\":\"x\",\"dimensions\":8}", 400,
                 "dimensions", "invalid_value");
    cr_assert_eq(ts_agent_stop(&a), 0);
}

/* ======================================================================== */
/* Errors                                                                    */
/* ======================================================================== */

Test(openai, bad_requests_get_openai_errors_with_exact_statuses)
{
    ts_agent a;
    ts_agent_start(&a, CONFIG);
    const char *chat = "/v1/chat/completions";
#define MSG "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]"
    static const struct {
        const char *path;
        const char *body;
        const char *param;
        const char *code;
    } cases[] = {
        {"/v1/chat/completions", "{\"model\": ", NULL, NULL},
        {"/v1/chat/completions", "[1,2]", NULL, NULL},
        {"/v1/chat/completions", "{" MSG "}", "model", "missing_required_parameter"},
        {"/v1/chat/completions", "{\"model\":7," MSG "}", "model", "invalid_type"},
        {"/v1/chat/completions", "{\"model\":\"@local/echo\"}", "messages",
         "missing_required_parameter"},
        {"/v1/chat/completions", "{\"model\":\"@local/echo\",\"messages\":[]}", "messages",
         "invalid_value"},
        {"/v1/chat/completions", "{\"model\":\"@local/echo\",\"messages\":\"hi\"}", "messages",
         "invalid_type"},
        {"/v1/chat/completions", "{\"model\":\"@local/echo\",\"messages\":[{\"content\":\"x\"}]}",
         "messages[0].role", "missing_required_parameter"},
        {"/v1/chat/completions",
         "{\"model\":\"@local/echo\",\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}",
         "messages[0].role", "invalid_value"},
        {"/v1/chat/completions",
         "{\"model\":\"@local/echo\",\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}",
         "messages[0].role", "unsupported_value"},
        {"/v1/chat/completions",
         "{\"model\":\"@local/echo\",\"messages\":[{\"role\":\"user\",\"content\":42}]}",
         "messages[0].content", "invalid_type"},
        {"/v1/chat/completions",
         "{\"model\":\"@local/echo\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
         "\"image_url\",\"image_url\":{\"url\":\"http://x/y.png\"}}]}]}",
         "messages[0].content[0]", "unsupported_value"},
        {"/v1/chat/completions",
         "{\"model\":\"@local/echo\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
         "\"text\"}]}]}",
         "messages[0].content[0]", "invalid_type"},
        {"/v1/chat/completions",
         "{\"model\":\"@local/echo\",\"messages\":[{\"role\":\"assistant\",\"content\":\"x\","
         "\"tool_calls\":[{\"id\":\"1\"}]}]}",
         "messages[0].tool_calls", "unsupported_parameter"},
        {"/v1/chat/completions", "{\"model\":\"@local/echo\",\"temperature\":\"hot\"," MSG "}",
         "temperature", "invalid_type"},
        {"/v1/chat/completions", "{\"model\":\"@local/echo\",\"temperature\":3," MSG "}",
         "temperature", "invalid_value"},
        {"/v1/chat/completions", "{\"model\":\"@local/echo\",\"top_p\":1.5," MSG "}", "top_p",
         "invalid_value"},
        {"/v1/chat/completions", "{\"model\":\"@local/echo\",\"max_tokens\":0," MSG "}",
         "max_tokens", "invalid_value"},
        {"/v1/chat/completions", "{\"model\":\"@local/echo\",\"max_tokens\":1.5," MSG "}",
         "max_tokens", "invalid_type"},
        {"/v1/chat/completions", "{\"model\":\"@local/echo\",\"top_k\":-1," MSG "}", "top_k",
         "invalid_value"},
        {"/v1/chat/completions", "{\"model\":\"@local/echo\",\"seed\":\"x\"," MSG "}", "seed",
         "invalid_type"},
        {"/v1/chat/completions", "{\"model\":\"@local/echo\",\"repetition_penalty\":0," MSG "}",
         "repetition_penalty", "invalid_value"},
        {"/v1/chat/completions", "{\"model\":\"@local/echo\",\"stream\":\"yes\"," MSG "}",
         "stream", "invalid_type"},
        {"/v1/chat/completions", "{\"model\":\"@local/echo\",\"n\":2," MSG "}", "n",
         "unsupported_parameter"},
        {"/v1/chat/completions", "{\"model\":\"@local/echo\",\"tools\":[{\"type\":\"function\"}],"
         MSG "}", "tools", "unsupported_parameter"},
        {"/v1/chat/completions", "{\"model\":\"@local/echo\",\"tool_choice\":\"auto\"," MSG "}",
         "tool_choice", "unsupported_parameter"},
        {"/v1/chat/completions",
         "{\"model\":\"@local/echo\",\"response_format\":{\"type\":\"json_object\"}," MSG "}",
         "response_format", "unsupported_parameter"},
        {"/v1/chat/completions", "{\"model\":\"@local/echo\",\"logprobs\":true," MSG "}",
         "logprobs", "unsupported_parameter"},
        {"/v1/chat/completions", "{\"model\":\"@local/echo\",\"top_logprobs\":2," MSG "}",
         "top_logprobs", "unsupported_parameter"},
        {"/v1/chat/completions", "{\"model\":\"@local/echo\",\"logit_bias\":{\"1\":5}," MSG "}",
         "logit_bias", "unsupported_parameter"},
        {"/v1/chat/completions",
         "{\"model\":\"@local/echo\",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]," MSG "}", "stop",
         "invalid_value"},
        {"/v1/chat/completions", "{\"model\":\"@local/echo\",\"stop\":[\"a\",1]," MSG "}",
         "stop[1]", "invalid_type"},
        {"/v1/chat/completions",
         "{\"model\":\"@local/echo\",\"stream_options\":{\"include_usage\":true}," MSG "}",
         "stream_options", "invalid_value"},
        {"/v1/chat/completions", "{\"model\":\"@local/echo\",\"frobnicate\":1," MSG "}",
         "frobnicate", "unknown_parameter"},
        {"/v1/chat/completions", "{\"model\":\"@local/echo\",\"prompt\":\"x\"," MSG "}", "prompt",
         "unknown_parameter"},
        {"/v1/completions", "{\"model\":\"@local/echo\"}", "prompt", "missing_required_parameter"},
        {"/v1/completions", "{\"model\":\"@local/echo\",\"prompt\":[1,2,3]}", "prompt",
         "unsupported_value"},
        {"/v1/completions", "{\"model\":\"@local/echo\",\"prompt\":[\"a\",\"b\"]}", "prompt",
         "unsupported_value"},
        {"/v1/completions", "{\"model\":\"@local/echo\",\"prompt\":{}}", "prompt", "invalid_type"},
        {"/v1/completions", "{\"model\":\"@local/echo\",\"prompt\":\"x\",\"echo\":true}", "echo",
         "unsupported_parameter"},
        {"/v1/completions", "{\"model\":\"@local/echo\",\"prompt\":\"x\",\"suffix\":\"y\"}",
         "suffix", "unsupported_parameter"},
        {"/v1/completions", "{\"model\":\"@local/echo\",\"prompt\":\"x\",\"best_of\":3}",
         "best_of", "unsupported_parameter"},
        {"/v1/completions", "{\"model\":\"@local/echo\",\"prompt\":\"x\",\"logprobs\":2}",
         "logprobs", "unsupported_parameter"},
        {"/v1/completions", "{\"model\":\"@local/echo\",\"prompt\":\"x\",\"n\":3}", "n",
         "unsupported_parameter"},
        {"/v1/embeddings", "{\"model\":\"@local/emb\"}", "input", "missing_required_parameter"},
        {"/v1/embeddings", "{\"model\":\"@local/emb\",\"input\":[1,2,3]}", "input",
         "unsupported_value"},
        {"/v1/embeddings", "{\"model\":\"@local/emb\",\"input\":[[1,2],[3]]}", "input",
         "unsupported_value"},
        {"/v1/embeddings", "{\"model\":\"@local/emb\",\"input\":[]}", "input", "invalid_value"},
        {"/v1/embeddings", "{\"model\":\"@local/emb\",\"input\":[\"a\",null]}", "input[1]",
         "invalid_type"},
        {"/v1/embeddings", "{\"model\":\"@local/emb\",\"input\":\"a\",\"encoding_format\":\"int8\"}",
         "encoding_format", "invalid_value"},
        {"/v1/embeddings", "{\"model\":\"@local/emb\",\"input\":\"a\",\"dimensions\":8}",
         "dimensions", "invalid_value"},
        {"/v1/embeddings", "{\"model\":\"@local/emb\",\"input\":\"a\",\"dimensions\":0}",
         "dimensions", "invalid_value"},
        {"/v1/embeddings", "{\"model\":\"@local/emb\",\"input\":\"a\",\"stream\":true}", "stream",
         "unknown_parameter"},
        /* The model serves another task. */
        {"/v1/embeddings", "{\"model\":\"@local/echo\",\"input\":\"a\"}", "model",
         "model_not_supported"},
        {"/v1/chat/completions", "{\"model\":\"@local/emb\"," MSG "}", "model",
         "model_not_supported"},
        {"/v1/completions", "{\"model\":\"text-embedding-3-small\",\"prompt\":\"x\"}", "model",
         "model_not_supported"},
        /* The plugin refuses: its message, in OpenAI's shape. */
        {"/v1/chat/completions",
         "{\"model\":\"@local/echo\",\"messages\":[{\"role\":\"system\",\"content\":\"x\"}]}", NULL,
         NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ts_response r;
        ts_http(&r, "POST", url(&a, cases[i].path), cases[i].body, NULL);
        cr_expect_eq(r.status, 400, "case %zu %s: %ld %s", i, cases[i].body, r.status, r.body);
        if (r.status == 400)
            assert_openai_error(&r, 400, "invalid_request_error", cases[i].param, cases[i].code);
        ts_response_free(&r);
    }
#undef MSG

    /* Messages say what to fix. */
    ts_response r;
    ts_http(&r, "POST", url(&a, chat),
            "{\"model\":\"@local/echo\",\"n\":2,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
            NULL);
    cr_assert(strstr(r.body, "'n' must be 1"), "%s", r.body);
    ts_response_free(&r);
    ts_http(&r, "POST", url(&a, chat), "{\"model\":\"@local/echo\",\"frobnicate\":1}", NULL);
    cr_assert(strstr(r.body, "Unrecognized request argument supplied: frobnicate"), "%s", r.body);
    ts_response_free(&r);
    ts_http(&r, "POST", url(&a, chat),
            "{\"model\":\"@local/echo\",\"messages\":[{\"role\":\"system\",\"content\":\"x\"}]}",
            NULL);
    cr_assert(strstr(r.body, "no message with role 'user'"), "plugin message lost: %s", r.body);
    ts_response_free(&r);

    /* Unknown model: 404, param model, code model_not_found. */
    expect_error(&a, chat,
                 "{\"model\":\"gpt-5\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 404,
                 "model", "model_not_found");
    /* Wrong method and unknown /v1 routes answer in OpenAI's shape too. */
    ts_http(&r, "GET", url(&a, chat), NULL, NULL);
    assert_openai_error(&r, 405, "invalid_request_error", NULL, "method_not_allowed");
    char *allow = ts_header(&r, "Allow");
    cr_assert(allow && strcmp(allow, "POST") == 0);
    free(allow);
    ts_response_free(&r);
    ts_http(&r, "POST", url(&a, "/v1/images/generations"), "{}", NULL);
    assert_openai_error(&r, 404, "not_found_error", NULL, "unknown_url");
    ts_response_free(&r);
    /* /ai/run keeps the Workers AI envelope. */
    ts_http(&r, "POST", url(&a, "/ai/run/@local/nope"), "{\"prompt\":\"x\"}", NULL);
    cr_assert_eq(r.status, 404);
    cr_assert(strstr(r.body, "\"success\":false") && strstr(r.body, "\"code\":5007"), "%s",
              r.body);
    ts_response_free(&r);

    /* Still serving after all of it. */
    ts_http(&r, "GET", url(&a, "/healthz"), NULL, NULL);
    cr_assert_eq(r.status, 200);
    ts_response_free(&r);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

Test(openai, auth_errors_on_openai_routes_have_openai_shape)
{
    /* Token "s3cret" hashed with SHA-256. */
    const char *cfg =
        "server:\n  listen: 0.0.0.0:@PORT@\n  workers: 1\n"
        "data_dir: @DIR@/var\nplugins:\n  dirs: [@PLUGINS@]\n"
        "accounts:\n  - id: acme\n    tokens:\n      - name: ci\n        sha256: "
        "\"1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0\"\n"
        "  - id: other\n"
        "models:\n  - id: \"@local/echo\"\n    plugin: echo\n    task: text-generation\n";
    ts_agent a;
    ts_agent_start(&a, cfg);
    const char *body = "{\"model\":\"@local/echo\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    const char *good[] = {"Authorization: Bearer s3cret", NULL};
    const char *bad[] = {"Authorization: Bearer wrong", NULL};
    ts_response r;
    ts_http(&r, "POST", url(&a, "/v1/chat/completions"), body, NULL);
    assert_openai_error(&r, 401, "authentication_error", NULL, "invalid_api_key");
    ts_response_free(&r);
    ts_http(&r, "POST", url(&a, "/v1/chat/completions"), body, bad);
    assert_openai_error(&r, 401, "authentication_error", NULL, "invalid_api_key");
    ts_response_free(&r);
    ts_http(&r, "POST", url(&a, "/client/v4/accounts/other/ai/v1/chat/completions"), body, good);
    assert_openai_error(&r, 403, "permission_error", NULL, "forbidden");
    ts_response_free(&r);
    ts_http(&r, "POST", url(&a, "/client/v4/accounts/acme/ai/v1/chat/completions"), body, good);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    ts_response_free(&r);
    ts_http(&r, "POST", url(&a, "/v1/chat/completions"), body, good);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    ts_response_free(&r);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

Test(openai, loopback_without_tokens_accepts_the_sdks_placeholder_key)
{
    /* OpenAI's SDKs always send a key. On loopback with no token configured
     * anywhere there is nothing to check it against: served as token-less. */
    ts_agent a;
    ts_agent_start(&a, CONFIG);
    const char *body = "{\"model\":\"@local/echo\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    const char *placeholder[] = {"Authorization: Bearer sk-anything", NULL};
    ts_response r;
    ts_http(&r, "POST", url(&a, "/v1/chat/completions"), body, placeholder);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    ts_response_free(&r);
    cr_assert_eq(ts_agent_stop(&a), 0);

    /* Once a token is configured, a token that is sent must be valid, on
     * loopback too. */
    const char *cfg =
        "server:\n  listen: 127.0.0.1:@PORT@\n  workers: 1\n"
        "data_dir: @DIR@/var\nplugins:\n  dirs: [@PLUGINS@]\n"
        "accounts:\n  - id: acme\n    tokens:\n      - name: ci\n        sha256: "
        "\"1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0\"\n"
        "models:\n  - id: \"@local/echo\"\n    plugin: echo\n    task: text-generation\n";
    ts_agent_start(&a, cfg);
    ts_http(&r, "POST", url(&a, "/v1/chat/completions"), body, placeholder);
    assert_openai_error(&r, 401, "authentication_error", NULL, "invalid_api_key");
    ts_response_free(&r);
    ts_http(&r, "POST", url(&a, "/v1/chat/completions"), body, NULL);
    cr_assert_eq(r.status, 200, "token-less on loopback: %ld %s", r.status, r.body);
    ts_response_free(&r);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

/* ======================================================================== */
/* Paths, aliases, catalog                                                   */
/* ======================================================================== */

Test(openai, account_scoped_paths_and_aliases)
{
    ts_agent a;
    ts_agent_start(&a, CONFIG);
    ts_response r;
    json_t *j = post(&a, "/client/v4/accounts/local/ai/v1/chat/completions",
                     "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":"
                     "\"via alias\"}]}",
                     &r);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    /* The model as the client named it. */
    cr_assert_str_eq(sget(j, "model"), "gpt-4o-mini");
    cr_assert_str_eq(sget(json_object_get(json_array_get(json_object_get(j, "choices"), 0),
                                          "message"),
                          "content"),
                     "via alias");
    json_decref(j);
    ts_response_free(&r);

    j = post(&a, "/client/v4/accounts/local/ai/v1/completions",
             "{\"model\":\"@local/echo\",\"prompt\":\"scoped\"}", &r);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    json_decref(j);
    ts_response_free(&r);
    j = post(&a, "/client/v4/accounts/local/ai/v1/embeddings",
             "{\"model\":\"@local/emb\",\"input\":\"scoped\"}", &r);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    json_decref(j);
    ts_response_free(&r);

    ts_http(&r, "POST", url(&a, "/client/v4/accounts/nobody/ai/v1/embeddings"),
            "{\"model\":\"@local/emb\",\"input\":\"x\"}", NULL);
    assert_openai_error(&r, 404, "not_found_error", NULL, "account_not_found");
    ts_response_free(&r);

    ts_http(&r, "GET", url(&a, "/client/v4/accounts/local/ai/v1/models"), NULL, NULL);
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.body, "\"id\":\"gpt-4o-mini\""), "%s", r.body);
    ts_response_free(&r);

    /* The catalog speaks Workers AI's property names per task. */
    ts_http(&r, "GET", url(&a, "/client/v4/accounts/local/ai/models/search?search=@local/emb"), NULL,
            NULL);
    j = jparse(r.body);
    json_t *res = json_object_get(j, "result");
    cr_assert_eq(json_array_size(res), 2, "%s", r.body);
    json_t *emb = json_array_get(res, 0);
    cr_assert_str_eq(sget(emb, "name"), "@local/emb");
    json_t *want = jparse("[{\"property_id\":\"max_input_tokens\",\"value\":\"4096\"},"
                          "{\"property_id\":\"output_dimensions\",\"value\":\"4\"}]");
    cr_assert(json_equal(json_object_get(emb, "properties"), want), "%s", r.body);
    json_decref(want);
    json_decref(j);
    ts_response_free(&r);
    ts_http(&r, "GET", url(&a, "/client/v4/accounts/local/ai/models/search?search=@local/echo"),
            NULL, NULL);
    j = jparse(r.body);
    want = jparse("[{\"property_id\":\"context_window\",\"value\":\"4096\"}]");
    cr_assert(json_equal(json_object_get(json_array_get(json_object_get(j, "result"), 0),
                                         "properties"),
                         want),
              "%s", r.body);
    json_decref(want);
    json_decref(j);
    ts_response_free(&r);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

/* ======================================================================== */
/* Streaming UTF-8                                                           */
/* ======================================================================== */

/* The text of a stream: Workers AI events' response, or OpenAI chunks'
 * delta content / text, concatenated. */
static char *stream_text(json_t *events)
{
    size_t cap = 4096, used = 0;
    char *out = calloc(1, cap);
    size_t i;
    json_t *e;
    json_array_foreach(events, i, e)
    {
        const char *s = NULL;
        json_t *c = json_array_get(json_object_get(e, "choices"), 0);
        if (json_is_string(json_object_get(e, "response")))
            s = json_string_value(json_object_get(e, "response"));
        else if (c && json_object_get(c, "delta"))
            s = json_string_value(json_object_get(json_object_get(c, "delta"), "content"));
        else if (c)
            s = json_string_value(json_object_get(c, "text"));
        if (s) {
            size_t n = strlen(s);
            cr_assert(used + n < cap);
            memcpy(out + used, s, n + 1);
            used += n;
        }
    }
    return out;
}

Test(openai, utf8_cut_by_the_plugin_reaches_the_client_whole)
{
    ts_agent a;
    ts_agent_start(&a, CONFIG);
    /* split_utf8 emits one byte at a time: é, ö, 中 and 😀 are each cut. */
    const char *text = "h\xc3\xa9llo w\xc3\xb6rld \xe4\xb8\xad \xf0\x9f\x98\x80!";
    char body[256];
    snprintf(body, sizeof body, "{\"prompt\":\"%s\",\"stream\":true}", text);
    ts_response r;
    ts_http(&r, "POST", url(&a, "/ai/run/@local/split"), body, NULL);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    json_t *ev = sse_events(&r);
    char *got = stream_text(ev);
    cr_assert_str_eq(got, text);
    cr_assert_null(strstr(r.body, "\\ufffd"), "replacement character in %s", r.body);
    cr_assert_null(strstr(r.body, "\xef\xbf\xbd"), "replacement character in %s", r.body);
    /* The final Workers AI event carries the usage. */
    json_t *last = json_array_get(ev, json_array_size(ev) - 1);
    cr_assert_str_eq(sget(last, "response"), "");
    cr_assert_eq(iget(json_object_get(last, "usage"), "completion_tokens"), 4);
    free(got);
    json_decref(ev);
    ts_response_free(&r);

    snprintf(body, sizeof body,
             "{\"model\":\"@local/split\",\"stream\":true,\"messages\":[{\"role\":\"user\","
             "\"content\":\"%s\"}]}",
             text);
    ts_http(&r, "POST", url(&a, "/v1/chat/completions"), body, NULL);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    ev = sse_events(&r);
    got = stream_text(ev);
    cr_assert_str_eq(got, text);
    free(got);
    json_decref(ev);
    ts_response_free(&r);

    /* A stream that ends inside a character: the lone lead byte becomes one
     * U+FFFD, sent before the end; every event is still valid JSON. */
    ts_http(&r, "POST", url(&a, "/ai/run/@local/cut"), "{\"prompt\":\"abc\",\"stream\":true}",
            NULL);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    ev = sse_events(&r);
    got = stream_text(ev);
    cr_assert_str_eq(got, "abc\xef\xbf\xbd");
    free(got);
    json_decref(ev);
    ts_response_free(&r);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

/* ======================================================================== */
/* Deadlines and mid-stream errors                                           */
/* ======================================================================== */

Test(openai, deadline_answers_504_or_an_error_event_in_openai_shape)
{
    const char *cfg =
        "server:\n  listen: 127.0.0.1:@PORT@\n  workers: 2\n  request_timeout_s: 1\n"
        "data_dir: @DIR@/var\nplugins:\n  dirs: [@PLUGINS@]\naccounts:\n  - id: local\n"
        "models:\n  - id: \"@local/slow\"\n    plugin: echo\n    task: text-generation\n"
        "    options: {delay_ms: 200}\n";
    ts_agent a;
    ts_agent_start(&a, cfg);
    const char *words = "a b c d e f g h i j k l m n o p q r s t";
    char body[256];
    snprintf(body, sizeof body,
             "{\"model\":\"@local/slow\",\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}]}",
             words);
    ts_response r;
    ts_http(&r, "POST", url(&a, "/v1/chat/completions"), body, NULL);
    assert_openai_error(&r, 504, "timeout_error", NULL, "timeout");
    cr_assert(strstr(r.body, "request_timeout_s"), "%s", r.body);
    ts_response_free(&r);

    /* Streamed: the stream had started, so the error is an event. */
    snprintf(body, sizeof body,
             "{\"model\":\"@local/slow\",\"stream\":true,\"messages\":[{\"role\":\"user\","
             "\"content\":\"%s\"}]}",
             words);
    ts_http(&r, "POST", url(&a, "/v1/chat/completions"), body, NULL);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    json_t *ev = sse_events(&r);
    json_t *last = json_array_get(ev, json_array_size(ev) - 1);
    json_t *err = json_object_get(last, "error");
    cr_assert(json_is_object(err), "no error event last: %s", r.body);
    cr_assert_str_eq(sget(err, "type"), "timeout_error");
    cr_assert_str_eq(sget(err, "code"), "timeout");
    cr_assert(strstr(sget(err, "message"), "request_timeout_s"), "%s", r.body);
    cr_assert_gt(json_array_size(ev), 2, "some pieces came first: %s", r.body);
    json_decref(ev);
    ts_response_free(&r);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

/* ======================================================================== */
/* Policies: the token estimate and the translated body                     */
/* ======================================================================== */

Test(openai, route_hook_gets_the_models_token_count)
{
    const char *files[] = {
        "p.lua",
        "function route(req)\n"
        "  if req.headers['x-estimate'] then\n"
        "    return outpost.reject(418, 'estimate=' .. req.tokens_estimate .. ' task=' ..\n"
        "                          tostring(req.task))\n"
        "  end\n"
        "  if req.body.max_tokens == 7 then return outpost.reject(422, 'seven') end\n"
        "end\n",
        NULL};
    const char *cfg = CONFIG_HEAD
        "models:\n"
        "  - id: \"@local/echo\"\n    plugin: echo\n    task: text-generation\n"
        "  - id: \"@local/emb\"\n    plugin: echo\n    task: text-embeddings\n"
        "  - id: \"@local/v0\"\n    plugin: echo_v0\n    task: text-generation\n"
        "policy:\n  lib_dir: @SRC@/lua\n  files: [@DIR@/p.lua]\n";
    /* The minor-0 plugin lives in its own folder. */
    char *cfg2 = NULL;
    const char *from = "dirs: [@PLUGINS@]";
    const char *at = strstr(cfg, from);
    cr_assert_not_null(at);
    cr_assert(asprintf(&cfg2, "%.*sdirs: [@PLUGINS@, @PLUGINS@/minor0]%s", (int)(at - cfg), cfg,
                       at + strlen(from)) > 0);
    ts_agent a;
    ts_agent_start_files(&a, cfg2, files);
    free(cfg2);
    const char *probe[] = {"X-Estimate: 1", NULL};
    static const struct {
        const char *path;
        const char *body;
        const char *want;
    } cases[] = {
        /* 8 words in 15 bytes: the plugin counts 8, bytes/4 would say 4. */
        {"/v1/chat/completions",
         "{\"model\":\"@local/echo\",\"messages\":[{\"role\":\"user\",\"content\":\"a b c d e f g h\"}]}",
         "estimate=8 task=text-generation"},
        {"/ai/run/@local/echo", "{\"prompt\":\"a b c d e f g h\"}", "estimate=8 task=text-generation"},
        {"/v1/completions", "{\"model\":\"@local/echo\",\"prompt\":\"a b c d e f g h\"}",
         "estimate=8 task=text-generation"},
        {"/v1/embeddings", "{\"model\":\"@local/emb\",\"input\":[\"a b c\",\"d e f g h\"]}",
         "estimate=8 task=text-embeddings"},
        /* No count_tokens (minor 0, whatever lies past its descriptor), or
         * no model: the byte estimate. */
        {"/ai/run/@local/v0", "{\"prompt\":\"a b c d e f g h\"}", "estimate=4 task=text-generation"},
        {"/ai/run/@local/nope", "{\"prompt\":\"a b c d e f g h\"}", "estimate=4 task=nil"},
        /* Input the plugin cannot count (no user message): estimated. */
        {"/ai/run/@local/echo", "{\"messages\":[{\"role\":\"system\",\"content\":\"a b c d e f g h\"}]}",
         "estimate=4 task=text-generation"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ts_response r;
        ts_http(&r, "POST", url(&a, cases[i].path), cases[i].body, probe);
        cr_expect_eq(r.status, 418, "%s: %ld %s", cases[i].path, r.status, r.body);
        cr_expect(strstr(r.body, cases[i].want), "%s %s: want '%s' in %s", cases[i].path,
                  cases[i].body, cases[i].want, r.body);
        ts_response_free(&r);
    }
    /* The policy sees the Workers AI input: max_completion_tokens arrives
     * as max_tokens. Its reject on an OpenAI route has OpenAI's shape. */
    ts_response r;
    ts_http(&r, "POST", url(&a, "/v1/chat/completions"),
            "{\"model\":\"@local/echo\",\"max_completion_tokens\":7,"
            "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
            NULL);
    assert_openai_error(&r, 422, "invalid_request_error", NULL, "policy_rejected");
    cr_assert(strstr(r.body, "seven"), "%s", r.body);
    ts_response_free(&r);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

/* ======================================================================== */
/* Plugin metrics                                                            */
/* ======================================================================== */

Test(openai, plugin_metrics_are_exported_per_model_and_pass_promtool)
{
    ts_agent a;
    ts_agent_start(&a, CONFIG);
    ts_response r;
    /* 3 requests to @local/echo: prompts of 3, 2 and 4 words; 3 + 2 + 2
     * generated (max_tokens 2 on the last). */
    const char *bodies[] = {
        "{\"model\":\"@local/echo\",\"messages\":[{\"role\":\"user\",\"content\":\"one two three\"}]}",
        "{\"model\":\"@local/echo\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"a b\"}]}",
        "{\"model\":\"@local/echo\",\"max_tokens\":2,\"prompt\":\"w x y z\"}",
    };
    const char *paths[] = {"/v1/chat/completions", "/v1/chat/completions", "/v1/completions"};
    for (int i = 0; i < 3; i++) {
        ts_http(&r, "POST", url(&a, paths[i]), bodies[i], NULL);
        cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
        ts_response_free(&r);
    }
    ts_http(&r, "POST", url(&a, "/v1/embeddings"),
            "{\"model\":\"@local/emb\",\"input\":[\"a b\",\"c d e\"]}", NULL);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    ts_response_free(&r);

    static const struct {
        const char *series;
        double value;
    } want[] = {
        {"outpost_inference_prompt_tokens_total{model=\"@local/echo\"}", 9},
        {"outpost_llm_generated_tokens_total{model=\"@local/echo\"}", 7},
        {"outpost_llm_kv_cache_capacity_tokens{model=\"@local/echo\"}", 4096},
        {"outpost_llm_kv_cache_used_tokens{model=\"@local/echo\"}", 0},
        {"outpost_inference_queue_depth{model=\"@local/echo\"}", 0},
        {"outpost_inference_running{model=\"@local/echo\"}", 0},
        {"outpost_inference_batch_size_bucket{model=\"@local/echo\",le=\"1\"}", 7},
        {"outpost_inference_batch_size_count{model=\"@local/echo\"}", 7},
        {"outpost_inference_queue_wait_seconds_count{model=\"@local/echo\"}", 3},
        {"outpost_llm_time_to_first_token_seconds_count{model=\"@local/echo\"}", 3},
        {"outpost_llm_inter_token_latency_seconds_count{model=\"@local/echo\"}", 4},
        {"outpost_inference_prompt_tokens_total{model=\"@local/emb\"}", 5},
        {"outpost_inference_batch_size_bucket{model=\"@local/emb\",le=\"1\"}", 0},
        {"outpost_inference_batch_size_bucket{model=\"@local/emb\",le=\"2\"}", 1},
        {"outpost_http_requests_total{route=\"openai_chat\",status=\"200\"}", 2},
        {"outpost_http_requests_total{route=\"openai_completions\",status=\"200\"}", 1},
        {"outpost_http_requests_total{route=\"openai_embeddings\",status=\"200\"}", 1},
    };
    /* The plugin's worker reports "running 0" just after it completed the
     * last request: scrape until it has, for at most five seconds. */
    const char *m = NULL;
    for (int tries = 0; tries < 50; tries++) {
        if (tries > 0) {
            ts_response_free(&r);
            struct timespec ts = {0, 100 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        ts_http(&r, "GET", url(&a, "/metrics"), NULL, NULL);
        cr_assert_eq(r.status, 200);
        m = r.body;
        bool all = true;
        for (size_t i = 0; i < sizeof want / sizeof want[0] && all; i++)
            all = scrape_value(m, want[i].series) == want[i].value;
        if (all)
            break;
    }
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        double v = scrape_value(m, want[i].series);
        cr_expect_eq(v, want[i].value, "%s = %g, want %g", want[i].series, v, want[i].value);
    }
    /* The ITL histogram has millisecond buckets up to 2 s; TTFT to 60 s. */
    cr_expect(strstr(m, "outpost_llm_inter_token_latency_seconds_bucket{model=\"@local/echo\",le=\"0.001\"}"),
              "%s", m);
    cr_expect(strstr(m, "outpost_llm_inter_token_latency_seconds_bucket{model=\"@local/echo\",le=\"2\"}"));
    cr_expect(strstr(m, "outpost_llm_time_to_first_token_seconds_bucket{model=\"@local/echo\",le=\"60\"}"));
    cr_expect(strstr(m, "outpost_inference_batch_size_bucket{model=\"@local/echo\",le=\"256\"}"));
    /* An embedder has no LLM series. */
    cr_expect_null(strstr(m, "outpost_llm_kv_cache_capacity_tokens{model=\"@local/emb\"}"));
    cr_expect(strstr(m, "# TYPE outpost_inference_queue_wait_seconds histogram"));
    cr_expect(strstr(m, "# TYPE outpost_llm_kv_cache_used_tokens gauge"));
    cr_expect(strstr(m, "# TYPE outpost_llm_generated_tokens_total counter"));

    int checked = ts_promtool_check(&a, r.body);
    ts_response_free(&r);
    cr_assert_eq(ts_agent_stop(&a), 0);
    if (checked != 0)
        cr_skip_test("promtool not installed (Debian package prometheus)");
}

/* ======================================================================== */
/* ABI minor 0                                                               */
/* ======================================================================== */

Test(openai, minor_0_plugin_loads_and_serves)
{
    const char *cfg =
        "server:\n  listen: 127.0.0.1:@PORT@\n  workers: 2\n"
        "data_dir: @DIR@/var\nplugins:\n  dirs: [@PLUGINS@/minor0]\naccounts:\n  - id: local\n"
        "models:\n  - id: \"@local/old\"\n    plugin: echo_v0\n    task: text-generation\n"
        "  - id: \"@local/old-emb\"\n    plugin: echo_v0\n    task: text-embeddings\n";
    ts_agent a;
    ts_agent_start(&a, cfg);
    ts_response r;
    ts_http(&r, "GET", url(&a, "/readyz"), NULL, NULL);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    ts_response_free(&r);
    char *log = ts_agent_log(&a);
    cr_assert(strstr(log, "event=plugin.loaded plugin=echo_v0") && strstr(log, "abi=1.0"), "%s",
              log);
    free(log);

    json_t *j = post(&a, "/ai/run/@local/old", "{\"prompt\":\"still here\"}", &r);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    cr_assert_str_eq(sget(json_object_get(j, "result"), "response"), "still here");
    json_decref(j);
    ts_response_free(&r);
    ts_http(&r, "POST", url(&a, "/v1/chat/completions"),
            "{\"model\":\"@local/old\",\"stream\":true,\"messages\":[{\"role\":\"user\","
            "\"content\":\"old plugin\"}]}",
            NULL);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    json_t *ev = sse_events(&r);
    char *text = stream_text(ev);
    cr_assert_str_eq(text, "old plugin");
    free(text);
    json_decref(ev);
    ts_response_free(&r);
    j = post(&a, "/v1/embeddings", "{\"model\":\"@local/old-emb\",\"input\":\"x\"}", &r);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    json_decref(j);
    ts_response_free(&r);

    /* It cannot report model metrics, so it has no such series. */
    ts_http(&r, "GET", url(&a, "/metrics"), NULL, NULL);
    cr_assert_null(strstr(r.body, "outpost_inference_queue_depth{model=\"@local/old\"}"), "%s",
                   r.body);
    cr_assert(strstr(r.body, "outpost_inference_requests_total{model=\"@local/old\",code=\"ok\"} 2"),
              "%s", r.body);
    ts_response_free(&r);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

/* A body over server.max_body_bytes is refused before it is read, in the
 * error shape of its route: OpenAI's here, the Workers AI envelope on
 * /ai/run (test_agent.c checks that one). */
Test(openai, oversized_body_is_a_413_in_openai_shape)
{
    ts_agent a;
    ts_agent_start(&a, CONFIG);
    size_t n = 70000;
    char *big = malloc(n + 1);
    memset(big, 'x', n);
    const char *head = "{\"model\":\"@local/echo\",\"prompt\":\"";
    memcpy(big, head, strlen(head));
    big[n - 2] = '"';
    big[n - 1] = '}';
    big[n] = '\0';
    ts_response r;
    ts_http(&r, "POST", url(&a, "/v1/completions"), big,
            (const char *const[]){"Content-Type: application/json", NULL});
    cr_assert_eq(r.status, 413, "%ld %s", r.status, r.body);
    cr_assert(strstr(r.body, "\"error\":{") && strstr(r.body, "invalid_request_error") &&
                  strstr(r.body, "max_body_bytes"),
              "%s", r.body);
    ts_response_free(&r);
    ts_http(&r, "POST", url(&a, "/ai/run/@local/echo"), big, NULL);
    cr_assert_eq(r.status, 413, "%ld %s", r.status, r.body);
    cr_assert(strstr(r.body, "\"success\":false") && strstr(r.body, "\"code\":413"), "%s", r.body);
    ts_response_free(&r);
    free(big);
    cr_assert_eq(ts_agent_stop(&a), 0);
}
