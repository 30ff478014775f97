/*
 * gw_upstream: the gateway's HTTP client for upstream providers, a thin layer
 * over libcurl's multi interface (docs/decisions/0003-http-client.md, section
 * "The upstream client"). It owns connections (kept alive, reused, HTTP/1.1
 * or HTTP/2 over TLS), timeouts, streaming of response bodies, cancellation
 * and back-off timers; it knows nothing of providers or of JSON.
 *
 * Model
 *   A gw_upstream runs `threads` event-loop threads, each with its own curl
 *   multi handle and connection cache. gw_upstream_start() copies the request,
 *   hands it to one loop (the least loaded) through a locked queue and wakes
 *   that loop; from then on everything about the call happens on that loop
 *   thread: connect (or reuse), send, response head, body pieces, completion.
 *   DNS answers and TLS sessions are shared by all loops.
 *
 * Call lifecycle (a gw_upstream_call)
 *   start -> [on_head once] -> [on_data 0..n times] -> on_done exactly once.
 *   on_done is the last callback, and it always comes once start returned 0:
 *   with GW_UP_OK when the whole body arrived, or with the reason it did not
 *   (error, timeout, cancel, a callback's -1, gw_upstream_free). on_head may
 *   be skipped (the call failed before a response head arrived). HTTP error
 *   statuses (4xx, 5xx) are responses, not errors: they arrive through
 *   on_head and on_data and end with GW_UP_OK.
 *
 * Ownership
 *   The request (URL, method, headers, body) is copied by gw_upstream_start;
 *   nothing of it is referenced after the call returns. A call is refcounted:
 *   start gives the caller one reference (drop it with gw_upstream_release, at
 *   any time, also from a callback of that call); the client keeps its own
 *   until on_done has returned, so callbacks always see a live call. Strings
 *   and arrays handed to callbacks (headers, content_type, data, message) are
 *   valid only during that callback: copy what must outlive it.
 *
 * Threading
 *   gw_upstream_start, gw_upstream_cancel, gw_upstream_release,
 *   gw_upstream_after and gw_upstream_stats_get may be called from any thread,
 *   callbacks included. All callbacks of one call run on one loop thread and
 *   never overlap; callbacks must not block (they hold up every call on that
 *   loop). gw_upstream_free must not be called from a callback (it joins the
 *   loop threads: it logs and aborts instead of deadlocking). gw_upstream_cancel on a call whose on_done has run is a
 *   no-op, so it is also safe after gw_upstream_free (which finishes every
 *   call); gw_upstream_release is always safe.
 *
 * Requests
 *   Methods are HTTP tokens; GET and HEAD send no body unless one is given.
 *   Header names and values are checked (a token; no CR, LF or other control
 *   characters in a value), and connection-level headers are the client's
 *   business: Content-Length, Transfer-Encoding, Connection, Keep-Alive,
 *   Proxy-Connection, TE, Upgrade and Expect given by the caller are dropped,
 *   so a forwarded client header can never corrupt the framing of a shared
 *   connection. A header with an empty value is sent empty. Without a
 *   Content-Type of the caller's, a body is sent with none. Redirects are not
 *   followed (a 3xx is a response). Bodies are passed on as received: no
 *   Accept-Encoding is added and nothing is decoded. Proxies come from the
 *   environment (http_proxy, https_proxy, no_proxy), as curl reads them.
 *
 * Errors
 *   gw_upstream_start returns -1 (and no callback comes) for a request that
 *   cannot be sent: not an http:// or https:// URL with a host, a bad method
 *   or header, or a client shutting down. Everything later arrives as on_done's
 *   gw_up_err and message. The message names the method and the upstream's
 *   scheme://host:port (never the path, query or userinfo, which may hold
 *   keys) and curl's reason; it never contains header values.
 *
 * Process requirements: SIGPIPE must be ignored (outpostd does: curl runs with
 * CURLOPT_NOSIGNAL, as threads require, and then leaves SIGPIPE to the
 * application). curl_global_init runs once, on the first gw_upstream_new; its
 * global state is never torn down.
 */
#ifndef GW_UPSTREAM_H
#define GW_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A response head larger than this (status line and headers, bytes as
 * received) or with more headers than GW_UP_MAX_HEADERS fails the call with
 * GW_UP_PROTOCOL. */
#define GW_UP_MAX_HEAD_BYTES (64u * 1024u)
#define GW_UP_MAX_HEADERS 256u

typedef struct gw_header {
    const char *name;
    const char *value;
} gw_header;

typedef struct gw_upstream_opts {
    int threads;               /* event-loop threads, each with its own curl multi handle (default 1) */
    /* Connection limits are split evenly over the loops (rounded up, at least
     * 1 each). A transfer over the limit waits for a free connection (its
     * timeout runs meanwhile); idle connections stay open for reuse up to
     * max_total_connections per client and are closed after 118 s idle. */
    int max_host_connections;  /* per host, kept alive and reused (default 64) */
    int max_total_connections; /* default 1024 */
    const char *ca_file;       /* extra CA bundle (tests use a self-signed CA); NULL = system store */
    size_t max_error_body;     /* not used by the client itself; ignore */
} gw_upstream_opts;

typedef struct gw_upstream gw_upstream;

/* Starts the loop threads. o may be NULL (all defaults); zero fields take
 * their defaults, negative ones are refused; threads is at most 64. ca_file
 * is copied and read when connections are made (a missing or bad file fails
 * those calls with GW_UP_TLS). With ca_file set, the system store stays in
 * use through its hashed directory (/etc/ssl/certs). Returns NULL and writes
 * why into err. */
gw_upstream *gw_upstream_new(const gw_upstream_opts *o, char *err, size_t errlen);
/* Cancels everything in flight (each gets on_done with GW_UP_CANCELLED), runs pending timers' cancel path
 * (see gw_upstream_after), joins the threads. Callbacks run during the call
 * (on the loop threads); gw_upstream_start and gw_upstream_after return -1
 * from the moment it begins. NULL is a no-op. */
void gw_upstream_free(gw_upstream *u);

typedef struct gw_upstream_req {
    const char *method;          /* "POST", "GET", ... */
    const char *url;             /* http:// or https:// */
    const gw_header *headers;    /* copied */
    size_t n_headers;
    const char *body;            /* copied; may be NULL */
    size_t body_len;
    int timeout_ms;              /* whole transfer; 0 = none */
    int connect_timeout_ms;      /* 0 = 10000 */
    int first_byte_timeout_ms;   /* time to response headers; 0 = none */
} gw_upstream_req;

/*
 * Why a call ended:
 *   CONNECT   no connection: refused, unreachable, name not resolved, or the
 *             connect timeout (the request was not sent).
 *   TIMEOUT   timeout_ms or first_byte_timeout_ms ran out (the request may
 *             have reached the upstream).
 *   TLS       handshake failed, or the certificate did not verify.
 *   PROTOCOL  the upstream broke HTTP: closed or reset mid-response (the
 *             bytes before were delivered), malformed or oversized head,
 *             HTTP/2 stream errors, empty reply.
 *   CANCELLED gw_upstream_cancel or gw_upstream_free.
 *   ABORTED   on_head or on_data returned -1.
 *   INTERNAL  the client's own failure (out of memory, curl refused an
 *             option or a URL that passed the checks of gw_upstream_start).
 */
typedef enum gw_up_err {
    GW_UP_OK = 0, GW_UP_CONNECT = 1, GW_UP_TIMEOUT = 2, GW_UP_TLS = 3, GW_UP_PROTOCOL = 4,
    GW_UP_CANCELLED = 5, GW_UP_ABORTED = 6 /* a callback returned -1 */, GW_UP_INTERNAL = 7,
} gw_up_err;
const char *gw_up_err_name(gw_up_err e);   /* "ok", "connect", "timeout", "tls", "protocol", ... */

typedef struct gw_response_cb {
    void *ctx;
    /* Status line and headers are complete (once, before any data). Return 0, or -1 to abort.
     * content_type is NULL when the response has none. Headers come in the
     * order received, names as sent (compare them case-insensitively), values
     * trimmed; 1xx interim responses and trailers are not reported. May be
     * NULL. */
    int (*on_head)(void *ctx, int status, const char *content_type, const gw_header *headers, size_t n);
    /* A piece of the body as it arrives (chunked/SSE pieces are passed on as soon as curl has them,
     * no buffering). Return 0, or -1 to abort. Chunked framing is removed;
     * pieces are not aligned to SSE events. May be NULL (body dropped). */
    int (*on_data)(void *ctx, const char *data, size_t len);
    /* Exactly once, last. err GW_UP_OK means the whole body arrived. message: a human-readable reason
     * (curl's error text plus context), never containing header values (they may hold credentials).
     * message is "ok" for GW_UP_OK. Required. */
    void (*on_done)(void *ctx, gw_up_err err, const char *message);
} gw_response_cb;

typedef struct gw_upstream_call gw_upstream_call;   /* refcounted */

/* Starts a request on one of the loop threads (round-robin or least-loaded). All callbacks run on that
 * loop thread and never overlap for one call; callbacks must not block. Returns 0 with *out (one
 * reference for the caller) or -1 with err (bad URL, shutting down); then no callback comes.
 * out may be NULL when the caller wants no reference (it can then not
 * cancel). Timeouts are counted from this call. */
int gw_upstream_start(gw_upstream *u, const gw_upstream_req *req, const gw_response_cb *cb,
                      gw_upstream_call **out, char *err, size_t errlen);
/* Stops the call: on_done(GW_UP_CANCELLED) follows unless on_done already ran. Thread-safe, idempotent.
 * Once it has returned, no on_head or on_data of the call begins any more
 * (one already running on the loop thread finishes). A transfer cut short
 * closes its connection; a call still queued never touches the network. */
void gw_upstream_cancel(gw_upstream_call *c);
/* Drops the caller's reference. NULL is a no-op. */
void gw_upstream_release(gw_upstream_call *c);

/* Runs fn(ctx, false) on a loop thread after delay_ms (used for retry back-off without blocking any
 * thread). If the client is freed first, fn(ctx, true) runs (cancelled) during gw_upstream_free.
 * Returns 0 or -1. The loop is the caller's own when called from a callback,
 * else the least loaded one. Timers of one loop run in order of their due
 * time, equal due times in the order they were set; fn is like any callback
 * (must not block). -1: delay_ms negative, fn NULL, out of memory, or the
 * client is shutting down (fn is then never called). */
int gw_upstream_after(gw_upstream *u, int delay_ms, void (*fn)(void *ctx, bool cancelled), void *ctx);

/* Requests in flight, connections opened so far (to verify reuse), timers pending. */
typedef struct gw_upstream_stats { uint64_t in_flight, started, connections_opened, timers; } gw_upstream_stats;
/* A snapshot of counters updated without a common lock: each is exact, the
 * set is not taken at one instant. in_flight counts calls from start until
 * their on_done is called; connections_opened counts connections made by
 * calls that have ended (it is up to date when their on_done runs). */
void gw_upstream_stats_get(gw_upstream *u, gw_upstream_stats *s);

#endif
