/*
 * gw_usage: what a response cost, read from the response itself, streamed
 * or not, so that every gateway log record carries tokens and cost.
 *
 * Streams are text/event-stream: gw_sse splits the bytes as they pass
 * through into events and hands each event's data to a callback, without
 * holding the stream back (the gateway forwards the bytes first and scans
 * them after). gw_usage_scan_event() then keeps the last `usage` object seen
 * (OpenAI's include_usage chunk, Workers AI's final event) and counts the
 * events that carried text, the fallback estimate of output tokens for a
 * provider that reports no usage in its stream.
 *
 * Shapes understood: OpenAI {"usage": {"prompt_tokens", "completion_tokens"}}
 * (and "input_tokens"/"output_tokens"), Workers AI {"result": {"usage":
 * {...}}} for whole responses and {"usage": {...}} in stream events.
 *
 * Ownership: gw_sse owns its buffer (gw_sse_free). Threading: none; one
 * scanner per response. Errors: malformed events are skipped; an event
 * larger than the scanner's bound is dropped (counted), never buffered
 * without limit.
 */
#ifndef GW_USAGE_H
#define GW_USAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct gw_usage {
    int64_t tokens_in;
    int64_t tokens_out;
    bool reported;        /* a usage object was found */
    int64_t text_events;  /* stream events that carried generated text */
    bool done;            /* the stream's [DONE] was seen */
    bool error_event;     /* an event carried an error object */
} gw_usage;

typedef void (*gw_sse_event_fn)(void *ctx, const char *data, size_t len);

typedef struct gw_sse {
    char *line;       /* the current line */
    size_t line_len, line_cap;
    char *ev;         /* the current event's data lines, joined */
    size_t ev_len, ev_cap;
    bool has_data;    /* the current event had a data line */
    bool after_cr;    /* the last byte was '\r' (a '\n' next is part of the same end) */
    bool overflow;    /* the current line or event went past max: dropped */
    size_t max;       /* largest line and event kept */
    uint64_t dropped; /* events dropped for size */
} gw_sse;

void gw_sse_init(gw_sse *s, size_t max_event);
/* Feeds n bytes; fn runs once per complete event that had data lines (the
 * lines joined with '\n', as the SSE spec says). */
void gw_sse_feed(gw_sse *s, const char *d, size_t n, gw_sse_event_fn fn, void *ctx);
void gw_sse_free(gw_sse *s);

/* Updates u from one stream event's data (JSON, or "[DONE]"). */
void gw_usage_scan_event(gw_usage *u, const char *data, size_t len);
/* Reads usage from a whole JSON response body. Returns true if found. */
bool gw_usage_from_body(gw_usage *u, const char *body, size_t len);

#endif
