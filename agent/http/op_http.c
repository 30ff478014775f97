#include "http/op_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "metrics/op_metrics.h"
#include "platform/pl_log.h"
#include "platform/pl_time.h"

struct op_http_server {
    struct MHD_Daemon *mhd;
    op_http_options opt;
    char *host;
    uint16_t port;
    _Atomic int in_flight;
    bool quiesced;
    op_metric *m_requests;  /* outpost_http_requests_total{route,status} */
    op_metric *m_duration;  /* outpost_http_request_duration_seconds{route} */
    op_metric_child *m_in_flight;
};

typedef struct hdr {
    char *name;
    char *value;
    struct hdr *next;
} hdr;

struct op_http_req {
    op_http_server *srv;
    struct MHD_Connection *con;
    pthread_mutex_t mu;
    _Atomic int refs;
    const char *method;     /* MHD-owned, lives as long as the connection's request */
    char *path;
    char *body;
    size_t body_len, body_cap;
    bool too_large;
    bool handled;           /* handler has been called */
    bool queued;            /* response handed to MHD */
    bool suspended;         /* connection suspended waiting for us */
    bool closed;            /* MHD finished with the request */
    struct MHD_Response *resp;
    int status;
    hdr *headers;           /* response headers to add */
    /* streaming */
    bool streaming;
    char *sbuf;
    size_t slen, soff, scap;
    bool s_ended;
    /* owner hooks */
    void *user;
    void (*on_close)(op_http_req *r, bool completed, void *user);
    const char *route;
    uint64_t start_ns;
    bool loopback;
    void *upgrade_ctx;      /* freed with the request */
};

static void upgrade_ctx_free(void *p);

/* ------------------------------------------------------------------------ */
/* request object                                                            */
/* ------------------------------------------------------------------------ */

static void req_free(op_http_req *r)
{
    while (r->headers) {
        hdr *h = r->headers;
        r->headers = h->next;
        free(h->name);
        free(h->value);
        free(h);
    }
    if (r->resp)
        MHD_destroy_response(r->resp);
    pthread_mutex_destroy(&r->mu);
    upgrade_ctx_free(r->upgrade_ctx);
    free(r->path);
    free(r->body);
    free(r->sbuf);
    free(r);
}

void op_http_req_ref(op_http_req *r) { atomic_fetch_add(&r->refs, 1); }

void op_http_req_unref(op_http_req *r)
{
    if (r && atomic_fetch_sub(&r->refs, 1) == 1)
        req_free(r);
}

static bool addr_is_loopback(const struct sockaddr *sa)
{
    if (!sa)
        return false;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
            return true;
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr))
            return in6->sin6_addr.s6_addr[12] == 127;
    }
    return false;
}

static op_http_req *req_new(op_http_server *s, struct MHD_Connection *con, const char *url,
                            const char *method)
{
    op_http_req *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->path = strdup(url);
    if (!r->path) {
        free(r);
        return NULL;
    }
    pthread_mutex_init(&r->mu, NULL);
    atomic_init(&r->refs, 1); /* released in on_completed */
    r->srv = s;
    r->con = con;
    r->method = method;
    r->route = "other";
    r->start_ns = pl_time_mono_ns();
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(con, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    r->loopback = ci && addr_is_loopback(ci->client_addr);
    return r;
}

/* ------------------------------------------------------------------------ */
/* accessors                                                                 */
/* ------------------------------------------------------------------------ */

const char *op_http_req_method(const op_http_req *r) { return r->method; }
const char *op_http_req_path(const op_http_req *r) { return r->path; }

const char *op_http_req_header(const op_http_req *r, const char *name)
{
    return MHD_lookup_connection_value(r->con, MHD_HEADER_KIND, name);
}

const char *op_http_req_query(const op_http_req *r, const char *name)
{
    return MHD_lookup_connection_value(r->con, MHD_GET_ARGUMENT_KIND, name);
}

typedef struct query_iter {
    void (*fn)(const char *, const char *, void *);
    void *ctx;
} query_iter;

static enum MHD_Result query_iter_cb(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value)
{
    query_iter *it = cls;
    (void)kind;
    it->fn(key, value ? value : "", it->ctx);
    return MHD_YES;
}

void op_http_req_queries(const op_http_req *r,
                         void (*fn)(const char *name, const char *value, void *ctx), void *ctx)
{
    query_iter it = {fn, ctx};
    MHD_get_connection_values(r->con, MHD_GET_ARGUMENT_KIND, query_iter_cb, &it);
}

const char *op_http_req_body(const op_http_req *r, size_t *len)
{
    if (len)
        *len = r->body_len;
    return r->body ? r->body : "";
}

typedef struct hdr_iter {
    void (*fn)(const char *, const char *, void *);
    void *ctx;
} hdr_iter;

static enum MHD_Result hdr_iter_cb(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value)
{
    hdr_iter *it = cls;
    it->fn(key, value ? value : "", it->ctx);
    return MHD_YES;
}

void op_http_req_headers(const op_http_req *r,
                         void (*fn)(const char *name, const char *value, void *ctx), void *ctx)
{
    hdr_iter it = {fn, ctx};
    MHD_get_connection_values(r->con, MHD_HEADER_KIND, hdr_iter_cb, &it);
}

bool op_http_req_from_loopback(const op_http_req *r) { return r->loopback; }
uint64_t op_http_req_start_ns(const op_http_req *r) { return r->start_ns; }
void op_http_req_set_user(op_http_req *r, void *user) { r->user = user; }
void *op_http_req_user(const op_http_req *r) { return r->user; }

void op_http_req_on_close(op_http_req *r, void (*on_close)(op_http_req *, bool, void *))
{
    r->on_close = on_close;
}

void op_http_req_set_route(op_http_req *r, const char *route) { r->route = route; }

/* ------------------------------------------------------------------------ */
/* answering                                                                 */
/* ------------------------------------------------------------------------ */

void op_http_add_header(op_http_req *r, const char *name, const char *value)
{
    hdr *h = calloc(1, sizeof *h);
    if (!h)
        return;
    h->name = strdup(name);
    h->value = strdup(value);
    if (!h->name || !h->value) {
        free(h->name);
        free(h->value);
        free(h);
        return;
    }
    pthread_mutex_lock(&r->mu);
    h->next = r->headers;
    r->headers = h;
    pthread_mutex_unlock(&r->mu);
}

static void apply_headers(op_http_req *r, struct MHD_Response *resp, const char *content_type)
{
    if (content_type)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    for (hdr *h = r->headers; h; h = h->next)
        MHD_add_response_header(resp, h->name, h->value);
}

/* Called with r->mu held once r->resp is set: if the connection sits
 * suspended waiting for the answer, wake it so MHD queues the response. */
static void wake_locked(op_http_req *r)
{
    if (r->suspended && !r->closed) {
        r->suspended = false;
        MHD_resume_connection(r->con);
    }
}

int op_http_respond(op_http_req *r, int status, const char *content_type, const char *body,
                    size_t len)
{
    pthread_mutex_lock(&r->mu);
    if (r->resp || r->closed) {
        pthread_mutex_unlock(&r->mu);
        return -1;
    }
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!resp) {
        pthread_mutex_unlock(&r->mu);
        return -1;
    }
    apply_headers(r, resp, content_type);
    r->resp = resp;
    r->status = status;
    wake_locked(r);
    pthread_mutex_unlock(&r->mu);
    return 0;
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    op_http_req *r = cls;
    (void)pos;
    pthread_mutex_lock(&r->mu);
    size_t avail = r->slen - r->soff;
    if (avail > 0) {
        size_t n = avail < max ? avail : max;
        memcpy(buf, r->sbuf + r->soff, n);
        r->soff += n;
        if (r->soff == r->slen)
            r->soff = r->slen = 0;
        pthread_mutex_unlock(&r->mu);
        return (ssize_t)n;
    }
    if (r->s_ended) {
        pthread_mutex_unlock(&r->mu);
        return MHD_CONTENT_READER_END_OF_STREAM;
    }
    /* Nothing to send yet: park the connection instead of spinning; the next
     * write or end resumes it. */
    r->suspended = true;
    MHD_suspend_connection(r->con);
    pthread_mutex_unlock(&r->mu);
    return 0;
}

static void stream_free(void *cls) { op_http_req_unref(cls); }

int op_http_stream_begin(op_http_req *r, int status, const char *content_type)
{
    pthread_mutex_lock(&r->mu);
    if (r->resp || r->closed) {
        pthread_mutex_unlock(&r->mu);
        return -1;
    }
    op_http_req_ref(r); /* held by the MHD response, dropped in stream_free */
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_reader, r, stream_free);
    if (!resp) {
        pthread_mutex_unlock(&r->mu);
        op_http_req_unref(r);
        return -1;
    }
    apply_headers(r, resp, content_type);
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    r->resp = resp;
    r->status = status;
    r->streaming = true;
    wake_locked(r);
    pthread_mutex_unlock(&r->mu);
    return 0;
}

int op_http_stream_write(op_http_req *r, const char *data, size_t len)
{
    pthread_mutex_lock(&r->mu);
    if (!r->streaming || r->closed || r->s_ended) {
        pthread_mutex_unlock(&r->mu);
        return -1;
    }
    if (r->slen + len > r->scap) {
        size_t ncap = r->scap ? r->scap : 4096;
        while (ncap < r->slen + len)
            ncap *= 2;
        char *nb = realloc(r->sbuf, ncap);
        if (!nb) {
            pthread_mutex_unlock(&r->mu);
            return -1;
        }
        r->sbuf = nb;
        r->scap = ncap;
    }
    memcpy(r->sbuf + r->slen, data, len);
    r->slen += len;
    wake_locked(r);
    pthread_mutex_unlock(&r->mu);
    return 0;
}

int op_http_stream_end(op_http_req *r)
{
    pthread_mutex_lock(&r->mu);
    if (!r->streaming || r->s_ended) {
        pthread_mutex_unlock(&r->mu);
        return -1;
    }
    r->s_ended = true;
    wake_locked(r);
    pthread_mutex_unlock(&r->mu);
    return 0;
}

long op_http_stream_pending(op_http_req *r)
{
    pthread_mutex_lock(&r->mu);
    long n = r->closed ? -1 : (long)(r->slen - r->soff);
    pthread_mutex_unlock(&r->mu);
    return n;
}

typedef struct upgrade_ctx {
    op_http_upgrade_fn fn;
    void *cls;
} upgrade_ctx;

static void on_upgrade(void *cls, struct MHD_Connection *con, void *req_cls, const char *extra,
                       size_t extra_len, MHD_socket sock, struct MHD_UpgradeResponseHandle *urh)
{
    upgrade_ctx *u = cls;
    (void)con;
    (void)req_cls;
    u->fn(u->cls, sock, extra, extra_len, urh);
}

static void upgrade_ctx_free(void *p) { free(p); }

int op_http_respond_upgrade(op_http_req *r, op_http_upgrade_fn fn, void *cls)
{
    upgrade_ctx *u = malloc(sizeof *u);
    if (!u)
        return -1;
    u->fn = fn;
    u->cls = cls;
    pthread_mutex_lock(&r->mu);
    if (r->resp || r->closed) {
        pthread_mutex_unlock(&r->mu);
        free(u);
        return -1;
    }
    struct MHD_Response *resp = MHD_create_response_for_upgrade(on_upgrade, u);
    if (!resp) {
        pthread_mutex_unlock(&r->mu);
        free(u);
        return -1;
    }
    apply_headers(r, resp, NULL);
    /* The context lives as long as the response; keep it with the request. */
    r->upgrade_ctx = u;
    r->resp = resp;
    r->status = MHD_HTTP_SWITCHING_PROTOCOLS;
    wake_locked(r);
    pthread_mutex_unlock(&r->mu);
    return 0;
}

void op_http_upgrade_close(void *handle)
{
    MHD_upgrade_action(handle, MHD_UPGRADE_ACTION_CLOSE);
}

/* ------------------------------------------------------------------------ */
/* MHD callbacks                                                             */
/* ------------------------------------------------------------------------ */

static const char ERR_413[] = "{\"success\":false,\"errors\":[{\"code\":413,\"message\":"
                              "\"request body exceeds server.max_body_bytes\"}],"
                              "\"messages\":[],\"result\":null}";

static void answer_too_large(op_http_server *s, op_http_req *r)
{
    op_http_req_set_route(r, "body_limit");
    if (s->opt.too_large)
        s->opt.too_large(r, s->opt.user);
    /* A handler that did not answer still gets the 413 (later calls are
     * refused once one answer is queued). */
    op_http_respond(r, 413, "application/json", ERR_413, sizeof ERR_413 - 1);
}

static enum MHD_Result queue_locked(op_http_req *r)
{
    r->queued = true;
    return MHD_queue_response(r->con, (unsigned)r->status, r->resp);
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *con, const char *url,
                                 const char *method, const char *version,
                                 const char *upload_data, size_t *upload_size, void **con_cls)
{
    op_http_server *s = cls;
    op_http_req *r = *con_cls;
    (void)version;

    if (!r) {
        r = req_new(s, con, url, method);
        if (!r)
            return MHD_NO;
        *con_cls = r;
        atomic_fetch_add(&s->in_flight, 1);
        op_gauge_add(s->m_in_flight, 1);
        const char *cl = MHD_lookup_connection_value(con, MHD_HEADER_KIND, "Content-Length");
        if (cl) {
            char *end;
            errno = 0;
            unsigned long long n = strtoull(cl, &end, 10);
            if (errno || *end || n > s->opt.max_body_bytes) {
                /* Answer before reading the body; MHD closes the connection. */
                r->too_large = true;
                answer_too_large(s, r);
                pthread_mutex_lock(&r->mu);
                enum MHD_Result res = queue_locked(r);
                pthread_mutex_unlock(&r->mu);
                return res;
            }
        }
        return MHD_YES;
    }

    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (r->queued || r->too_large)
            return MHD_YES; /* discard: already answered or over the limit */
        if (r->body_len + n > s->opt.max_body_bytes) {
            r->too_large = true; /* chunked body over the limit: answer at the end */
            free(r->body);
            r->body = NULL;
            r->body_len = r->body_cap = 0;
            return MHD_YES;
        }
        if (r->body_len + n + 1 > r->body_cap) {
            size_t ncap = r->body_cap ? r->body_cap : 1024;
            while (ncap < r->body_len + n + 1)
                ncap *= 2;
            char *nb = realloc(r->body, ncap);
            if (!nb)
                return MHD_NO;
            r->body = nb;
            r->body_cap = ncap;
        }
        memcpy(r->body + r->body_len, upload_data, n);
        r->body_len += n;
        r->body[r->body_len] = '\0';
        return MHD_YES;
    }

    pthread_mutex_lock(&r->mu);
    if (r->queued) {
        /* Resumed after a stream park: MHD drives the reader, nothing to do. */
        pthread_mutex_unlock(&r->mu);
        return MHD_YES;
    }
    if (!r->handled) {
        r->handled = true;
        pthread_mutex_unlock(&r->mu);
        if (r->too_large) {
            answer_too_large(s, r);
        } else {
            s->opt.handler(r, s->opt.user);
        }
        pthread_mutex_lock(&r->mu);
    }
    enum MHD_Result res = MHD_YES;
    if (r->resp) {
        res = queue_locked(r);
    } else {
        /* Deferred: park the connection until respond/stream_begin wakes it. */
        r->suspended = true;
        MHD_suspend_connection(con);
    }
    pthread_mutex_unlock(&r->mu);
    return res;
}

static void on_completed(void *cls, struct MHD_Connection *con, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    op_http_server *s = cls;
    op_http_req *r = *con_cls;
    (void)con;
    if (!r)
        return;
    *con_cls = NULL;
    pthread_mutex_lock(&r->mu);
    r->closed = true;
    int status = r->queued ? r->status : 499; /* 499: client closed before an answer */
    /* Drop our hold on the response now: a stream response holds a reference
     * to r, so keeping it until r is freed would be a cycle. */
    struct MHD_Response *resp = r->resp;
    r->resp = NULL;
    pthread_mutex_unlock(&r->mu);
    if (resp)
        MHD_destroy_response(resp);
    bool ok = toe == MHD_REQUEST_TERMINATED_COMPLETED_OK;
    if (r->on_close)
        r->on_close(r, ok, r->user);
    char st[8];
    snprintf(st, sizeof st, "%d", status);
    op_counter_inc(op_metric_with(s->m_requests, r->route, st));
    op_histogram_observe(op_metric_with(s->m_duration, r->route),
                         (double)(pl_time_mono_ns() - r->start_ns) / 1e9);
    op_gauge_add(s->m_in_flight, -1);
    atomic_fetch_sub(&s->in_flight, 1);
    op_http_req_unref(r);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512];
    (void)cls;
    vsnprintf(msg, sizeof msg, fmt, ap);
    msg[strcspn(msg, "\n")] = '\0';
    PL_LOG_DEBUG("http.mhd", "message", msg);
}

/* ------------------------------------------------------------------------ */
/* server                                                                    */
/* ------------------------------------------------------------------------ */

op_http_server *op_http_server_start(const op_http_options *opt, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    bool v6 = strchr(opt->host, ':') != NULL;
    if (v6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(opt->port);
        if (inet_pton(AF_INET6, opt->host, &in6->sin6_addr) != 1) {
            snprintf(err, errlen, "listen address '%s' is not a numeric IPv6 address", opt->host);
            return NULL;
        }
    } else {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        in->sin_family = AF_INET;
        in->sin_port = htons(opt->port);
        if (inet_pton(AF_INET, opt->host, &in->sin_addr) != 1) {
            snprintf(err, errlen, "listen address '%s' is not a numeric IPv4 address", opt->host);
            return NULL;
        }
    }
    op_http_server *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->opt = *opt;
    s->host = strdup(opt->host);
    s->opt.host = s->host;
    static const char *const route_status[] = {"route", "status", NULL};
    static const char *const route_only[] = {"route", NULL};
    s->m_requests = op_metric_counter("outpost_http_requests_total",
                                      "HTTP requests answered, by route and status.", route_status);
    s->m_duration = op_metric_histogram("outpost_http_request_duration_seconds",
                                        "HTTP request duration from headers read to close.",
                                        route_only, NULL, 0);
    s->m_in_flight = op_metric_with(
        op_metric_gauge("outpost_http_requests_in_flight", "HTTP requests being served.", NULL));

    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_ALLOW_UPGRADE | MHD_USE_ERROR_LOG | MHD_USE_TURBO;
    if (v6)
        flags |= MHD_USE_IPv6;
    s->mhd = MHD_start_daemon(
        flags, opt->port, NULL, NULL, on_access, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)(opt->workers > 0 ? opt->workers : 1),
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)opt->max_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)opt->idle_timeout_s,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)opt->max_header_bytes,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, s,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u, MHD_OPTION_END);
    if (!s->mhd) {
        snprintf(err, errlen, "cannot listen on %s:%u: %s", opt->host, opt->port,
                 errno ? strerror(errno) : "libmicrohttpd refused the options");
        free(s->host);
        free(s);
        return NULL;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : opt->port;
    return s;
}

uint16_t op_http_server_port(const op_http_server *s) { return s->port; }

int op_http_server_in_flight(const op_http_server *s) { return atomic_load(&s->in_flight); }

void op_http_server_quiesce(op_http_server *s)
{
    if (s->quiesced)
        return;
    s->quiesced = true;
    MHD_socket fd = MHD_quiesce_daemon(s->mhd);
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
}

void op_http_server_stop(op_http_server *s)
{
    if (!s)
        return;
    MHD_stop_daemon(s->mhd);
    free(s->host);
    free(s);
}
