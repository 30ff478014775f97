/*
 * gw_usage: SSE events are split the same whatever the pieces the bytes
 * arrive in (CR, LF and CRLF line ends, multi-line data, oversized events
 * dropped), and usage is read from whole answers and stream events of the
 * OpenAI and Workers AI shapes, never from text that only mentions it.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/gw_usage.h"

typedef struct events {
    char items[32][256];
    int n;
} events;

static void collect(void *ctx, const char *data, size_t len)
{
    events *ev = ctx;
    cr_assert(ev->n < 32 && len < 256);
    memcpy(ev->items[ev->n], data, len);
    ev->items[ev->n][len] = '\0';
    ev->n++;
}

static const char STREAM[] =
    "data: {\"a\":1}\n\n"
    ": a comment line\n"
    "event: message\r\n"
    "data: line one\r\n"
    "data: line two\r\n\r\n"
    "data:no-space\r\r"
    "id: 7\n\n" /* an event without data: nothing */
    "data: [DONE]\n\n";

static void check_events(const events *ev)
{
    cr_assert_eq(ev->n, 4);
    cr_assert_str_eq(ev->items[0], "{\"a\":1}");
    cr_assert_str_eq(ev->items[1], "line one\nline two");
    cr_assert_str_eq(ev->items[2], "no-space");
    cr_assert_str_eq(ev->items[3], "[DONE]");
}

Test(gw_usage, sse_events_do_not_depend_on_piece_boundaries)
{
    size_t n = strlen(STREAM);
    /* whole */
    events ev = {.n = 0};
    gw_sse s;
    gw_sse_init(&s, 1024);
    gw_sse_feed(&s, STREAM, n, collect, &ev);
    check_events(&ev);
    gw_sse_free(&s);
    /* byte by byte, and every split point in two pieces */
    ev.n = 0;
    gw_sse_init(&s, 1024);
    for (size_t i = 0; i < n; i++)
        gw_sse_feed(&s, STREAM + i, 1, collect, &ev);
    check_events(&ev);
    gw_sse_free(&s);
    for (size_t cut = 0; cut <= n; cut++) {
        ev.n = 0;
        gw_sse_init(&s, 1024);
        gw_sse_feed(&s, STREAM, cut, collect, &ev);
        gw_sse_feed(&s, STREAM + cut, n - cut, collect, &ev);
        check_events(&ev);
        gw_sse_free(&s);
    }
}

Test(gw_usage, oversized_events_are_dropped_and_the_next_one_is_whole)
{
    char big[600];
    memset(big, 'x', sizeof big);
    events ev = {.n = 0};
    gw_sse s;
    gw_sse_init(&s, 100);
    gw_sse_feed(&s, "data: ", 6, collect, &ev);
    gw_sse_feed(&s, big, sizeof big, collect, &ev);
    gw_sse_feed(&s, "\ndata: more\n\ndata: ok\n\n", 23, collect, &ev);
    cr_assert_eq(ev.n, 1);
    cr_assert_str_eq(ev.items[0], "ok");
    cr_assert_eq(s.dropped, 1);
    gw_sse_free(&s);
}

Test(gw_usage, usage_from_whole_answers)
{
    gw_usage u = {0};
    const char *oai = "{\"id\":\"x\",\"choices\":[{\"message\":{\"content\":\"the \\\"usage\\\": "
                      "{\\\"prompt_tokens\\\": 99}\"}}],\"usage\":{\"prompt_tokens\":7,"
                      "\"completion_tokens\":3,\"total_tokens\":10}}";
    cr_assert(gw_usage_from_body(&u, oai, strlen(oai)));
    cr_assert_eq(u.tokens_in, 7);
    cr_assert_eq(u.tokens_out, 3);
    gw_usage w = {0};
    const char *wai = "{\"result\":{\"response\":\"hi\",\"usage\":{\"prompt_tokens\":12,"
                      "\"completion_tokens\":5}},\"success\":true}";
    cr_assert(gw_usage_from_body(&w, wai, strlen(wai)));
    cr_assert_eq(w.tokens_in, 12);
    cr_assert_eq(w.tokens_out, 5);
    gw_usage a = {0};
    const char *anth = "{\"usage\" : {\"input_tokens\":4,\"output_tokens\":2}}";
    cr_assert(gw_usage_from_body(&a, anth, strlen(anth)));
    cr_assert_eq(a.tokens_in, 4);
    cr_assert_eq(a.tokens_out, 2);
    /* Only a mention inside a string: no usage. */
    gw_usage none = {0};
    const char *txt = "{\"response\":\"\\\"usage\\\":{\\\"prompt_tokens\\\":5}\"}";
    cr_assert_not(gw_usage_from_body(&none, txt, strlen(txt)));
    cr_assert_not(none.reported);
    /* Truncated or malformed: no usage, no crash. */
    const char *cut = "{\"usage\":{\"prompt_tokens\":7,";
    cr_assert_not(gw_usage_from_body(&none, cut, strlen(cut)));
    cr_assert_not(gw_usage_from_body(&none, "\"usage\"", 7));
}

Test(gw_usage, stream_events_count_text_usage_and_errors)
{
    gw_usage u = {0};
    const char *ev[] = {
        "{\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}",
        "{\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}",
        "{\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}",
        "{\"response\":\"!\"}",
        "{\"response\":\"\",\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":3}}",
        "[DONE]",
    };
    for (size_t i = 0; i < sizeof ev / sizeof ev[0]; i++)
        gw_usage_scan_event(&u, ev[i], strlen(ev[i]));
    cr_assert_eq(u.text_events, 3);
    cr_assert(u.reported);
    cr_assert_eq(u.tokens_in, 8);
    cr_assert_eq(u.tokens_out, 3);
    cr_assert(u.done);
    cr_assert_not(u.error_event);
    gw_usage e = {0};
    const char *err = "{\"errors\":[{\"code\":3003,\"message\":\"boom\"}]}";
    gw_usage_scan_event(&e, err, strlen(err));
    cr_assert(e.error_event);
    gw_usage ok = {0};
    const char *noerr = "{\"response\":\"x\",\"errors\":[]}";
    gw_usage_scan_event(&ok, noerr, strlen(noerr));
    cr_assert_not(ok.error_event);
}
