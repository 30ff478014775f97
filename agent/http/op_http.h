/*
 * op_http: the agent's HTTP/1.1 server, a thin layer over GNU libmicrohttpd
 * (docs/decisions/0001-http-server.md). It owns listening, keep-alive,
 * limits, timeouts, suspended (asynchronous) requests and streamed responses;
 * it knows nothing of routes: every complete request goes to one handler.
 *
 * Request lifecycle
 *   1. MHD reads the headers and body (bodies over max_body_bytes are
 *      answered 413 as soon as Content-Length or the bytes read exceed it).
 *   2. The handler runs on an HTTP worker thread with the whole request. It
 *      either answers at once (op_http_respond) or *defers*: it returns
 *      without answering, having handed the request to other work that later
 *      calls op_http_respond() or op_http_stream_*() from any thread. While
 *      deferred, the connection is suspended and costs no worker.
 *   3. When the connection ends (answered, or the client went away), the
 *      on_close callback set with op_http_req_on_close() runs once.
 *
 * Ownership: an op_http_req belongs to the server. The handler and whoever
 * it defers to may use it until the request is answered *and* they drop the
 * reference they took with op_http_req_ref() (deferring code must take one).
 * Strings returned by accessors live as long as the request.
 *
 * Threading: the handler runs on one of `workers` threads. op_http_respond,
 * op_http_stream_* and op_http_req_ref/unref are thread-safe. A request is
 * answered at most once: later calls return -1.
 *
 * Errors: functions returning int give 0 or -1 (answered already / gone).
 */
#ifndef OP_HTTP_H
#define OP_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct op_http_server op_http_server;
typedef struct op_http_req op_http_req;

typedef void (*op_http_handler)(op_http_req *req, void *user);

typedef struct op_http_options {
    const char *host;          /* numeric IPv4/IPv6 address to bind */
    uint16_t port;             /* 0 = any free port (see op_http_server_port) */
    int workers;               /* worker threads, >= 1 */
    size_t max_body_bytes;
    size_t max_header_bytes;   /* per-connection memory for headers */
    int max_connections;
    int idle_timeout_s;        /* close idle keep-alive connections */
    op_http_handler handler;
    void *user;
    /* Answers a request whose body is over max_body_bytes (synchronously,
     * with op_http_respond; the body is not read). NULL: a 413 in the
     * Workers AI envelope. The API layer sets it to pick the error shape of
     * the route (OpenAI routes answer OpenAI's). */
    op_http_handler too_large;
} op_http_options;

/* Binds and starts the worker threads. Returns NULL and writes why into err. */
op_http_server *op_http_server_start(const op_http_options *opt, char *err, size_t errlen);
/* The bound port (useful with port 0). */
uint16_t op_http_server_port(const op_http_server *s);
/* Stops accepting new connections; existing ones go on. */
void op_http_server_quiesce(op_http_server *s);
/* Requests accepted and not yet finished. */
int op_http_server_in_flight(const op_http_server *s);
/* Stops the threads, closes every connection, frees the server. Deferred
 * requests must all have been answered before. */
void op_http_server_stop(op_http_server *s);

/* ---- request accessors (valid while the request lives) ---- */
const char *op_http_req_method(const op_http_req *r);
const char *op_http_req_path(const op_http_req *r);   /* decoded path, no query */
/* Header value by case-insensitive name, or NULL. */
const char *op_http_req_header(const op_http_req *r, const char *name);
/* Query argument by name, or NULL. */
const char *op_http_req_query(const op_http_req *r, const char *name);
/* Every query argument, in order: fn(name, value, ctx); value "" if absent. */
void op_http_req_queries(const op_http_req *r,
                         void (*fn)(const char *name, const char *value, void *ctx), void *ctx);
const char *op_http_req_body(const op_http_req *r, size_t *len); /* NUL-terminated */
/* Every header, for policies: calls fn(name, value, ctx) for each. */
void op_http_req_headers(const op_http_req *r,
                         void (*fn)(const char *name, const char *value, void *ctx), void *ctx);
/* True if the peer address is a loopback address. */
bool op_http_req_from_loopback(const op_http_req *r);
/* Monotonic ns when the request's headers were complete. */
uint64_t op_http_req_start_ns(const op_http_req *r);

/* Per-request slot for the handler's own state, and a close hook: on_close
 * runs once when the connection ends (answered or client gone), on an HTTP
 * thread; `completed` is false if the client went away early. */
void op_http_req_set_user(op_http_req *r, void *user);
void *op_http_req_user(const op_http_req *r);
void op_http_req_on_close(op_http_req *r, void (*on_close)(op_http_req *r, bool completed, void *user));

void op_http_req_ref(op_http_req *r);
void op_http_req_unref(op_http_req *r);

/* ---- answering ---- */
/* Adds a response header to the answer to come (before respond/stream_begin). */
void op_http_add_header(op_http_req *r, const char *name, const char *value);
/* A whole response; body copied. */
int op_http_respond(op_http_req *r, int status, const char *content_type, const char *body,
                    size_t len);
/* A streamed response of unknown length (chunked): begin once, write pieces
 * (copied), end once. Writes after the client left return -1. */
int op_http_stream_begin(op_http_req *r, int status, const char *content_type);
int op_http_stream_write(op_http_req *r, const char *data, size_t len);
int op_http_stream_end(op_http_req *r);
/* Bytes written to the stream and not yet handed to the connection, or -1
 * once the client has gone: a producer faster than its client (an export)
 * waits while this is high, so the stream buffer stays bounded. */
long op_http_stream_pending(op_http_req *r);

/* ---- protocol upgrade (WebSocket; see op_ws.h) ---- */
/* Called on an MHD thread once the 101 answer is sent: fd is the raw
 * connection, extra holds bytes the client sent after its request. The
 * callee owns the connection until it calls op_http_upgrade_close(handle). */
typedef void (*op_http_upgrade_fn)(void *cls, int fd, const char *extra, size_t extra_len,
                                   void *handle);
/* Answers 101 Switching Protocols (with headers added before) and hands the
 * connection to fn. */
int op_http_respond_upgrade(op_http_req *r, op_http_upgrade_fn fn, void *cls);
/* Closes an upgraded connection; exactly once per handle. */
void op_http_upgrade_close(void *handle);

/* The route label for metrics, set by the handler (a static string). */
void op_http_req_set_route(op_http_req *r, const char *route);

#endif
