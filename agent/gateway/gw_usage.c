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

bool gw_usage_from_body(gw_usage *u, const char *body, size_t len);

/* True if data has "errors" with at least one entry. */
static bool nonempty_errors(const char *data, size_t len)
{
    const char *end = data + len;
    const char *p = memmem(data, len, "\"errors\"", 8);
    if (!p)
        return false;
    p += 8;
    while (p < end && (*p == ' ' || *p == ':'))
        p++;
    if (p >= end || *p != '[')
        return false;
    p++;
    while (p < end && *p == ' ')
        p++;
    return p < end && *p != ']';
}

/* True if data has "key":"<at least one character>" (a text field that is
 * not empty). */
static bool nonempty_field(const char *data, size_t len, const char *key)
{
    size_t kl = strlen(key);
    const char *end = data + len;
    for (const char *p = data; (p = memmem(p, (size_t)(end - p), key, kl)); p += kl) {
        const char *v = p + kl;
        while (v < end && (*v == ' ' || *v == ':'))
            v++;
        if (v + 1 < end && *v == '"' && v[1] != '"')
            return true;
    }
    return false;
}

/* Stream events are scanned, not parsed: this runs once per generated
 * token. Only an event that carries a usage object is parsed (that part
 * only, by gw_usage_from_body). */
void gw_usage_scan_event(gw_usage *u, const char *data, size_t len)
{
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        u->done = true;
        return;
    }
    if (nonempty_field(data, len, "\"response\"") || nonempty_field(data, len, "\"content\"") ||
        nonempty_field(data, len, "\"text\""))
        u->text_events++;
    if (memmem(data, len, "\"error\"", 7) || nonempty_errors(data, len))
        u->error_event = true;
    if (memmem(data, len, "\"usage\"", 7))
        gw_usage_from_body(u, data, len);
}

/* The end of the JSON object that starts at p[0] == '{' (one past its '}'),
 * or NULL if it does not end within the buffer. Strings are skipped with
 * their escapes, so braces inside them do not count. */
static const char *object_end(const char *p, const char *end)
{
    int depth = 0;
    while (p < end) {
        char c = *p++;
        if (c == '"') {
            while (p < end && *p != '"')
                p += *p == '\\' ? 2 : 1;
            if (p >= end)
                return NULL;
            p++;
        } else if (c == '{') {
            depth++;
        } else if (c == '}' && --depth == 0) {
            return p;
        }
    }
    return NULL;
}

/* Finds the last "usage": {...} member in body without parsing the whole
 * answer (which can be large: a long completion, or embeddings), and reads
 * it. A "usage" inside a string value cannot match: quotes inside JSON
 * strings are escaped. */
bool gw_usage_from_body(gw_usage *u, const char *body, size_t len)
{
    const char *end = body + len;
    const char *hit = NULL;
    for (const char *p = body; (p = memmem(p, (size_t)(end - p), "\"usage\"", 7)); p += 7)
        if (p == body || p[-1] != '\\')
            hit = p;
    if (!hit)
        return false;
    const char *p = hit + 7;
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    if (p >= end || *p != ':')
        return false;
    p++;
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    if (p >= end || *p != '{')
        return false;
    const char *e = object_end(p, end);
    if (!e)
        return false;
    json_t *usage = json_loadb(p, (size_t)(e - p), 0, NULL);
    bool ok = read_usage(u, usage);
    json_decref(usage);
    return ok;
}
