/*
 * gw_usage: SSE event splitting and usage extraction. See gw_usage.h.
 */
#include "gateway/gw_usage.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

void gw_sse_init(gw_sse *s, size_t max_event)
{
    memset(s, 0, sizeof *s);
    s->max = max_event ? max_event : (1u << 20);
}

void gw_sse_free(gw_sse *s)
{
    free(s->line);
    free(s->ev);
    memset(s, 0, sizeof *s);
}

static bool grow(char **buf, size_t *cap, size_t need, size_t max)
{
    if (need > max)
        return false;
    if (need <= *cap)
        return true;
    size_t n = *cap ? *cap : 256;
    while (n < need)
        n *= 2;
    if (n > max)
        n = max;
    char *p = realloc(*buf, n);
    if (!p)
        return false;
    *buf = p;
    *cap = n;
    return true;
}

static void end_line(gw_sse *s, gw_sse_event_fn fn, void *ctx)
{
    if (s->line_len == 0 && !s->overflow) {
        /* A blank line ends the event. */
        if (s->has_data)
            fn(ctx, s->ev ? s->ev : "", s->ev_len);
        s->ev_len = 0;
        s->has_data = false;
        return;
    }
    if (s->overflow) {
        /* The line was too long: drop the whole event it belongs to. */
        if (s->line_len == 0) {
            s->overflow = false;
            s->ev_len = 0;
            s->has_data = false;
            s->dropped++;
        } else {
            s->line_len = 0;
        }
        return;
    }
    if (s->line_len >= 5 && memcmp(s->line, "data:", 5) == 0) {
        const char *v = s->line + 5;
        size_t n = s->line_len - 5;
        if (n && *v == ' ') {
            v++;
            n--;
        }
        size_t need = s->ev_len + n + (s->has_data ? 1 : 0);
        if (!grow(&s->ev, &s->ev_cap, need + 1, s->max + 1)) {
            s->overflow = true;
            s->line_len = 0;
            return;
        }
        if (s->has_data)
            s->ev[s->ev_len++] = '\n';
        memcpy(s->ev + s->ev_len, v, n);
        s->ev_len += n;
        s->ev[s->ev_len] = '\0';
        s->has_data = true;
    }
    s->line_len = 0;
}

void gw_sse_feed(gw_sse *s, const char *d, size_t n, gw_sse_event_fn fn, void *ctx)
{
    for (size_t i = 0; i < n; i++) {
        char c = d[i];
        if (c == '\n' && s->after_cr) {
            s->after_cr = false;
            continue;
        }
        s->after_cr = c == '\r';
        if (c == '\n' || c == '\r') {
            end_line(s, fn, ctx);
            continue;
        }
        if (s->overflow && s->line_len > 0)
            continue; /* dropping the rest of an oversized line */
        /* Find the run of ordinary bytes and copy it at once. */
        size_t j = i;
        while (j < n && d[j] != '\n' && d[j] != '\r')
            j++;
        size_t run = j - i;
        if (!grow(&s->line, &s->line_cap, s->line_len + run + 1, s->max + 1)) {
            s->overflow = true;
            s->line_len = 1; /* marks "inside a dropped line" */
        } else {
            memcpy(s->line + s->line_len, d + i, run);
            s->line_len += run;
        }
        i = j - 1;
    }
}

static int64_t int_field(json_t *o, const char *a, const char *b)
{
    json_t *v = json_object_get(o, a);
    if (!json_is_integer(v) && b)
        v = json_object_get(o, b);
    if (json_is_integer(v) && json_integer_value(v) >= 0)
        return (int64_t)json_integer_value(v);
    if (json_is_real(v) && json_real_value(v) >= 0)
        return (int64_t)json_real_value(v);
    return -1;
}

/* Reads a usage object; true if it had counts. */
static bool read_usage(gw_usage *u, json_t *usage)
{
    if (!json_is_object(usage))
        return false;
    int64_t in = int_field(usage, "prompt_tokens", "input_tokens");
    int64_t out = int_field(usage, "completion_tokens", "output_tokens");
    if (in < 0 && out < 0)
        return false;
    if (in >= 0)
        u->tokens_in = in;
    if (out >= 0)
        u->tokens_out = out;
    u->reported = true;
    return true;
}

static bool has_text(json_t *ev)
{
    json_t *r = json_object_get(ev, "response");
    if (json_is_string(r) && json_string_length(r) > 0)
        return true;
    json_t *choices = json_object_get(ev, "choices");
    size_t i;
    json_t *c;
    json_array_foreach(choices, i, c)
    {
        json_t *delta = json_object_get(c, "delta");
        json_t *content = json_object_get(delta ? delta : c, delta ? "content" : "text");
        if (json_is_string(content) && json_string_length(content) > 0)
            return true;
    }
    return false;
}

void gw_usage_scan_event(gw_usage *u, const char *data, size_t len)
{
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        u->done = true;
        return;
    }
    json_t *ev = json_loadb(data, len, 0, NULL);
    if (!json_is_object(ev)) {
        json_decref(ev);
        return;
    }
    if (has_text(ev))
        u->text_events++;
    read_usage(u, json_object_get(ev, "usage"));
    json_t *errs = json_object_get(ev, "errors");
    if (json_object_get(ev, "error") || (json_is_array(errs) && json_array_size(errs) > 0))
        u->error_event = true;
    json_decref(ev);
}

bool gw_usage_from_body(gw_usage *u, const char *body, size_t len)
{
    json_t *doc = json_loadb(body, len, 0, NULL);
    bool ok = false;
    if (json_is_object(doc)) {
        ok = read_usage(u, json_object_get(doc, "usage"));
        if (!ok)
            ok = read_usage(u, json_object_get(json_object_get(doc, "result"), "usage"));
    }
    json_decref(doc);
    return ok;
}
