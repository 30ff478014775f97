/* gw_upstream against servers started inside the test: a raw-socket
 * HTTP/1.1 server thread (it counts connections, streams chunks slowly,
 * stalls, closes mid-body, sends odd heads), and for TLS a Python server
 * (tests/support/gw_upstream_tls_server.py) with a CA and certificate made
 * by the openssl CLI at test time. Timing assertions leave wide margins: the
 * tests check that something happens within a budget, not how fast. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gateway/gw_upstream.h"
#include "platform/pl_log.h"
#include "platform/pl_time.h"
#include "test_support.h"

static void suite_init(void)
{
    signal(SIGPIPE, SIG_IGN);   /* as outpostd does; curl runs with NOSIGNAL */
    pl_log_configure(PL_LOG_ERROR, PL_LOG_FORMAT_KV);
}

TestSuite(gw_upstream, .init = suite_init, .timeout = 30);

static uint64_t now_ms(void)
{
    return pl_time_mono_ns() / 1000000u;
}

/* ---- the raw-socket test server ---------------------------------------- */

#define SRV_BUF (256 * 1024)

typedef struct srv srv;
typedef struct srv_conn {
    pthread_t thread;
    struct srv_conn *next;
    srv *s;
    int fd;
} srv_conn;

struct srv {
    int lfd;
    int port;
    pthread_t acceptor;
    atomic_bool stop;
    atomic_int accepted;     /* connections */
    atomic_int requests;
    atomic_int active;       /* requests inside /sleep now */
    atomic_int max_active;
    atomic_uint_fast64_t last_chunk_ms;   /* when /chunks sent its last piece */
    pthread_mutex_t mu;
    srv_conn *conns;
    char last_head[8192];    /* the last request's head and body, under mu */
    char last_body[8192];
    size_t last_body_len;
};

static int send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int send_str(int fd, const char *s)
{
    return send_all(fd, s, strlen(s));
}

/* True when the peer has closed its end (reads as EOF). */
static bool peer_closed(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 0) <= 0)
        return false;
    char ch;
    ssize_t r = recv(fd, &ch, 1, MSG_PEEK | MSG_DONTWAIT);
    return r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

/* Sleeps ms in short naps; false as soon as the server stops or the client
 * goes away. */
static bool nap(srv *s, int fd, int ms)
{
    uint64_t end = now_ms() + (uint64_t)ms;
    while (now_ms() < end) {
        if (atomic_load(&s->stop) || peer_closed(fd))
            return false;
        usleep(5000);
    }
    return true;
}

static int wait_readable(srv *s, int fd)
{
    for (;;) {
        if (atomic_load(&s->stop))
            return 0;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, 20);
        if (r > 0)
            return 1;
        if (r < 0 && errno != EINTR)
            return -1;
    }
}

static int qint(const char *target, const char *key, int dflt)
{
    const char *q = strchr(target, '?');
    if (!q)
        return dflt;
    const char *p = strstr(q, key);
    return p ? atoi(p + strlen(key)) : dflt;
}

static bool path_is(const char *target, const char *path)
{
    size_t n = strlen(path);
    return strncmp(target, path, n) == 0 && (target[n] == '\0' || target[n] == '?');
}

static unsigned rnd(unsigned *st)
{
    *st = *st * 1103515245u + 12345u;
    return (*st >> 16) & 0x7fff;
}

/* A response made of plausible and broken pieces: odd status lines, lines
 * without colons, control bytes, folding, 1xx heads, bad chunk sizes, long
 * lines, random bytes; cut anywhere. */
static void fuzz_reply(int fd, unsigned seed)
{
    static const char *const status[] = {"HTTP/1.1 200 OK", "HTTP/1.1 103 Early", "HTTP/1.0 204 x",
                                         "HTTP/1.1 999 Odd", "HTTP/1.1 abc", "HTTP/1.1 20",
                                         "HTTP/2 200", "HTTP/1.1 100 Continue", "HTTP/1.1 2000 no"};
    static const char *const lines[] = {
        "Content-Type: text/plain", "X-A: b", "NoColonHere", ": empty name", "X-Fold: a",
        "  folded continuation", "\tfolded tab", "Transfer-Encoding: chunked",
        "Content-Length: 5", "Content-Length: -1", "Content-Length: 99999999999999999999",
        "X-Ctl: \x01\x02\x7f", "X-Long: ", "Content-Encoding: gzip", "Connection: close", ""};
    unsigned st = seed * 2654435761u + 1;
    size_t cap = 128 * 1024, n = 0;
    char *b = malloc(cap);
#define PUT(str, len)                                        \
    do {                                                     \
        size_t l_ = (len);                                   \
        if (n + l_ < cap) {                                  \
            memcpy(b + n, (str), l_);                        \
            n += l_;                                         \
        }                                                    \
    } while (0)
    int heads = 1 + (int)(rnd(&st) % 2);
    for (int hd = 0; hd < heads; hd++) {
        const char *sl = status[rnd(&st) % (sizeof status / sizeof status[0])];
        PUT(sl, strlen(sl));
        PUT("\r\n", 2);
        int k = (int)(rnd(&st) % 12);
        for (int i = 0; i < k; i++) {
            const char *l = lines[rnd(&st) % (sizeof lines / sizeof lines[0])];
            PUT(l, strlen(l));
            if (strcmp(l, "X-Long: ") == 0)
                for (int j = (int)(rnd(&st) % 70000); j > 0; j--)
                    PUT("v", 1);
            static const char *const eol[] = {"\r\n", "\r\n", "\r\n", "\r\n", "\n", "\n\0"};
            static const size_t eol_len[] = {2, 2, 2, 2, 1, 2};   /* the last: a NUL byte */
            unsigned e = rnd(&st) % 6;
            PUT(eol[e], eol_len[e]);
        }
        PUT("\r\n", 2);
    }
    int body = (int)(rnd(&st) % 4);
    static const char bad_chunks[] = "5\r\nhello\r\nzz\r\nbad\r\n0\r\n\r\n";
    if (body == 1)
        PUT(bad_chunks, sizeof bad_chunks - 1);
    for (int i = body == 2 ? (int)(rnd(&st) % 300) : 0; i > 0; i--) {
        char ch = (char)rnd(&st);
        PUT(&ch, 1);
    }
#undef PUT
    size_t cut = rnd(&st) % 4 == 0 ? rnd(&st) % (n + 1) : n;
    send_all(fd, b, cut);
    free(b);
}

/* Answers one request; returns whether the connection stays open. */
static bool route(srv *s, int fd, const char *method, const char *target, const char *head,
                  size_t head_len, const char *body, size_t body_len)
{
    char h[512];
    if (path_is(target, "/echo") && strcmp(method, "HEAD") == 0)
        return send_str(fd, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                            "Content-Length: 1234\r\n\r\n") == 0;
    if (path_is(target, "/echo")) {
        snprintf(h, sizeof h,
                 "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nX-Reply: yes\r\n"
                 "X-Multi: a\r\nX-Multi: b\r\nContent-Length: %zu\r\n\r\n",
                 head_len + body_len);
        return send_str(fd, h) == 0 && send_all(fd, head, head_len) == 0 &&
               send_all(fd, body, body_len) == 0;
    }
    if (path_is(target, "/status/503"))
        return send_str(fd, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                            "Content-Length: 4\r\n\r\ndown") == 0;
    if (path_is(target, "/chunks")) {
        int n = qint(target, "n=", 3), ms = qint(target, "ms=", 100);
        if (send_str(fd, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         "Transfer-Encoding: chunked\r\n\r\n") != 0)
            return false;
        for (int i = 0; i < n; i++) {
            if (i > 0 && !nap(s, fd, ms))
                return false;
            char ev[32], chunk[64];
            int en = snprintf(ev, sizeof ev, "data: %d\n\n", i);
            snprintf(chunk, sizeof chunk, "%x\r\n%s\r\n", en, ev);
            if (send_str(fd, chunk) != 0)
                return false;
        }
        atomic_store(&s->last_chunk_ms, now_ms());
        return send_str(fd, "0\r\n\r\n") == 0;
    }
    if (path_is(target, "/stall")) {
        nap(s, fd, 60000);
        return false;
    }
    if (path_is(target, "/slowhead") || path_is(target, "/sleep")) {
        int now = atomic_fetch_add(&s->active, 1) + 1;
        int m = atomic_load(&s->max_active);
        while (now > m && !atomic_compare_exchange_weak(&s->max_active, &m, now)) {
        }
        bool ok = nap(s, fd, qint(target, "ms=", 100));
        atomic_fetch_sub(&s->active, 1);
        return ok && send_str(fd, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") == 0;
    }
    if (path_is(target, "/closemid")) {
        send_str(fd, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789");
        return false;
    }
    if (path_is(target, "/big")) {
        size_t n = (size_t)qint(target, "n=", 1000);
        snprintf(h, sizeof h, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", n);
        if (send_str(fd, h) != 0)
            return false;
        char block[4096];
        for (size_t off = 0; off < n;) {
            size_t k = n - off < sizeof block ? n - off : sizeof block;
            for (size_t i = 0; i < k; i++)
                block[i] = (char)((off + i) % 251);
            if (send_all(fd, block, k) != 0)
                return false;
            off += k;
        }
        return true;
    }
    if (path_is(target, "/then-close")) {
        /* Keep-alive as far as the client can tell, then an idle close. */
        send_str(fd, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        nap(s, fd, 50);
        return false;
    }
    if (path_is(target, "/fuzz")) {
        fuzz_reply(fd, (unsigned)qint(target, "seed=", 1));
        return false;
    }
    if (path_is(target, "/interim"))
        return send_str(fd, "HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"
                            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Final: 1\r\n\r\nok") == 0;
    if (path_is(target, "/fold"))
        return send_str(fd, "HTTP/1.1 200 OK\r\nX-Fold: a\r\n   b\r\nContent-Length: 0\r\n\r\n") == 0;
    if (path_is(target, "/manyheaders")) {
        if (send_str(fd, "HTTP/1.1 200 OK\r\n") != 0)
            return false;
        for (int i = 0; i < qint(target, "n=", 300); i++) {
            snprintf(h, sizeof h, "X-H%d: %d\r\n", i, i);
            if (send_str(fd, h) != 0)
                return false;
        }
        return send_str(fd, "Content-Length: 0\r\n\r\n") == 0;
    }
    return send_str(fd, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n") == 0;
}

static size_t content_length(const char *head, size_t n)
{
    for (size_t i = 0; i + 16 < n; i++)
        if ((i == 0 || head[i - 1] == '\n') && strncasecmp(head + i, "Content-Length:", 15) == 0)
            return (size_t)strtoul(head + i + 15, NULL, 10);
    return 0;
}

static void *conn_main(void *arg)
{
    srv_conn *sc = arg;
    srv *s = sc->s;
    int fd = sc->fd;
    char *buf = malloc(SRV_BUF);
    size_t len = 0;
    for (;;) {
        char *end;
        while (!(end = memmem(buf, len, "\r\n\r\n", 4))) {
            if (len == SRV_BUF || wait_readable(s, fd) <= 0)
                goto out;
            ssize_t n = recv(fd, buf + len, SRV_BUF - len, 0);
            if (n <= 0)
                goto out;
            len += (size_t)n;
        }
        size_t head_len = (size_t)(end - buf) + 4;
        size_t clen = content_length(buf, head_len);
        if (head_len + clen > SRV_BUF)
            goto out;
        while (len < head_len + clen) {
            if (wait_readable(s, fd) <= 0)
                goto out;
            ssize_t n = recv(fd, buf + len, SRV_BUF - len, 0);
            if (n <= 0)
                goto out;
            len += (size_t)n;
        }
        char method[16] = "", target[1024] = "";
        const char *sp1 = memchr(buf, ' ', head_len);
        const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', head_len - (size_t)(sp1 + 1 - buf)) : NULL;
        if (!sp2 || (size_t)(sp1 - buf) >= sizeof method || (size_t)(sp2 - sp1 - 1) >= sizeof target)
            goto out;
        memcpy(method, buf, (size_t)(sp1 - buf));
        memcpy(target, sp1 + 1, (size_t)(sp2 - sp1 - 1));
        pthread_mutex_lock(&s->mu);
        snprintf(s->last_head, sizeof s->last_head, "%.*s", (int)head_len, buf);
        s->last_body_len = clen < sizeof s->last_body ? clen : sizeof s->last_body;
        memcpy(s->last_body, buf + head_len, s->last_body_len);
        pthread_mutex_unlock(&s->mu);
        atomic_fetch_add(&s->requests, 1);
        bool keep = route(s, fd, method, target, buf, head_len, buf + head_len, clen);
        memmove(buf, buf + head_len + clen, len - head_len - clen);
        len -= head_len + clen;
        if (!keep)
            break;
    }
out:
    close(fd);
    free(buf);
    return NULL;
}

static void *accept_main(void *arg)
{
    srv *s = arg;
    while (!atomic_load(&s->stop)) {
        struct pollfd p = {.fd = s->lfd, .events = POLLIN};
        if (poll(&p, 1, 20) <= 0)
            continue;
        int fd = accept(s->lfd, NULL, NULL);
        if (fd < 0)
            continue;
        atomic_fetch_add(&s->accepted, 1);
        int one = 1;   /* replies go out in several writes: no Nagle delay between them */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        srv_conn *sc = calloc(1, sizeof *sc);
        sc->s = s;
        sc->fd = fd;
        pthread_mutex_lock(&s->mu);
        sc->next = s->conns;
        s->conns = sc;
        pthread_mutex_unlock(&s->mu);
        pthread_create(&sc->thread, NULL, conn_main, sc);
    }
    return NULL;
}

static srv *srv_start(void)
{
    srv *s = calloc(1, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(s->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(s->lfd, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(listen(s->lfd, 512), 0);
    socklen_t al = sizeof a;
    getsockname(s->lfd, (struct sockaddr *)&a, &al);
    s->port = ntohs(a.sin_port);
    pthread_create(&s->acceptor, NULL, accept_main, s);
    return s;
}

static void srv_stop(srv *s)
{
    atomic_store(&s->stop, true);
    pthread_join(s->acceptor, NULL);
    srv_conn *sc = s->conns;
    while (sc) {
        srv_conn *next = sc->next;
        pthread_join(sc->thread, NULL);
        free(sc);
        sc = next;
    }
    close(s->lfd);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static char *url(const srv *s, const char *path)
{
    static _Thread_local char buf[8][256];
    static _Thread_local int i;
    char *b = buf[i++ % 8];
    snprintf(b, sizeof buf[0], "http://127.0.0.1:%d%s", s->port, path);
    return b;
}

/* ---- a recording response callback -------------------------------------- */

typedef struct rec {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n_head, n_data, n_done;
    int status;
    bool ctype_null;
    char ctype[128];
    char heads[16384];       /* "name: value\n" per header */
    char *body;
    size_t len, cap;
    gw_up_err err;
    char msg[1024];
    uint64_t t0, t_head, t_first_data, t_done;
    uint64_t t_data[64];
    pthread_t done_thread;
    /* behaviour */
    bool abort_head;
    int abort_data_at;       /* return -1 from the k-th on_data (1-based); 0 never */
    int cancel_data_at;      /* cancel the call from the k-th on_data */
    gw_upstream_call *self;
    bool cancel_returned;
    int data_after_cancel;
    /* what callbacks of gw_upstream_free saw */
    gw_upstream *u_in_done;
    int start_rc_in_done, after_rc_in_done;
} rec;

static void rec_init(rec *r)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    r->err = (gw_up_err)-1;
    r->t0 = now_ms();
}

static void rec_fini(rec *r)
{
    free(r->body);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
}

static int cb_head(void *ctx, int status, const char *ctype, const gw_header *h, size_t n)
{
    rec *r = ctx;
    pthread_mutex_lock(&r->mu);
    r->n_head++;
    r->t_head = now_ms();
    r->status = status;
    r->ctype_null = ctype == NULL;
    snprintf(r->ctype, sizeof r->ctype, "%s", ctype ? ctype : "");
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        int w = snprintf(r->heads + off, sizeof r->heads - off, "%s: %s\n", h[i].name, h[i].value);
        if (w < 0 || (size_t)w >= sizeof r->heads - off)
            break;
        off += (size_t)w;
    }
    bool abort = r->abort_head;
    pthread_mutex_unlock(&r->mu);
    return abort ? -1 : 0;
}

static int cb_data(void *ctx, const char *data, size_t len)
{
    rec *r = ctx;
    pthread_mutex_lock(&r->mu);
    if (r->cancel_returned)
        r->data_after_cancel++;
    if (r->n_data < 64)
        r->t_data[r->n_data] = now_ms();
    if (r->n_data++ == 0)
        r->t_first_data = now_ms();
    if (r->len + len + 1 > r->cap) {
        r->cap = (r->len + len + 1) * 2;
        r->body = realloc(r->body, r->cap);
    }
    memcpy(r->body + r->len, data, len);
    r->len += len;
    r->body[r->len] = '\0';
    int k = r->n_data;
    bool abort = r->abort_data_at == k;
    gw_upstream_call *cancel = r->cancel_data_at == k ? r->self : NULL;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    if (cancel)
        gw_upstream_cancel(cancel);
    return abort ? -1 : 0;
}

static void never_called(void *ctx, bool cancelled)
{
    cr_assert_fail("a timer refused by gw_upstream_after ran");
}

static void cb_done(void *ctx, gw_up_err err, const char *message)
{
    rec *r = ctx;
    int start_rc = 0, after_rc = 0;
    if (r->u_in_done) {
        /* During gw_upstream_free: new work must be refused. */
        gw_response_cb cb = {.ctx = r, .on_done = cb_done};
        gw_upstream_req q = {.method = "GET", .url = "http://127.0.0.1:1/"};
        char e[128];
        start_rc = gw_upstream_start(r->u_in_done, &q, &cb, NULL, e, sizeof e);
        after_rc = gw_upstream_after(r->u_in_done, 0, never_called, NULL);
    }
    pthread_mutex_lock(&r->mu);
    r->n_done++;
    r->err = err;
    r->t_done = now_ms();
    r->done_thread = pthread_self();
    r->start_rc_in_done = start_rc;
    r->after_rc_in_done = after_rc;
    snprintf(r->msg, sizeof r->msg, "%s", message ? message : "(null)");
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static const gw_response_cb *rec_cb(rec *r)
{
    static _Thread_local gw_response_cb cb[16];
    static _Thread_local int i;
    gw_response_cb *c = &cb[i++ % 16];
    *c = (gw_response_cb){.ctx = r, .on_head = cb_head, .on_data = cb_data, .on_done = cb_done};
    return c;
}

/* Waits until on_done ran (asserting it did within ms). */
static void rec_wait(rec *r, int ms)
{
    uint64_t end = now_ms() + (uint64_t)ms;
    pthread_mutex_lock(&r->mu);
    while (r->n_done == 0 && now_ms() < end) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 10 * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&r->cv, &r->mu, &ts);
    }
    int n = r->n_done;
    pthread_mutex_unlock(&r->mu);
    cr_assert_eq(n, 1, "on_done did not come within %d ms", ms);
}

static void rec_wait_data(rec *r, int n_data, int ms)
{
    uint64_t end = now_ms() + (uint64_t)ms;
    pthread_mutex_lock(&r->mu);
    while (r->n_data < n_data && r->n_done == 0 && now_ms() < end) {
        pthread_mutex_unlock(&r->mu);
        usleep(2000);
        pthread_mutex_lock(&r->mu);
    }
    int got = r->n_data;
    pthread_mutex_unlock(&r->mu);
    cr_assert_geq(got, n_data, "only %d body pieces within %d ms", got, ms);
}

static gw_upstream *client(int threads, int max_host, const char *ca)
{
    gw_upstream_opts o = {.threads = threads, .max_host_connections = max_host, .ca_file = ca};
    char err[256] = "";
    gw_upstream *u = gw_upstream_new(&o, err, sizeof err);
    cr_assert_not_null(u, "gw_upstream_new: %s", err);
    return u;
}

static gw_upstream_call *start(gw_upstream *u, const gw_upstream_req *q, rec *r)
{
    gw_upstream_call *c = NULL;
    char err[256] = "";
    int rc = gw_upstream_start(u, q, rec_cb(r), &c, err, sizeof err);
    cr_assert_eq(rc, 0, "gw_upstream_start: %s", err);
    cr_assert_not_null(c);
    return c;
}

/* GET url to completion; returns the call's error. */
static gw_up_err get(gw_upstream *u, const char *u_rl, rec *r)
{
    gw_upstream_req q = {.method = "GET", .url = u_rl, .timeout_ms = 10000};
    gw_upstream_release(start(u, &q, r));
    rec_wait(r, 15000);
    return r->err;
}

static bool has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)); p++)
        if ((p == text || p[-1] == '\n') && (p[n] == '\n' || p[n] == '\r'))
            return true;
    return false;
}

/* ---- round trips ------------------------------------------------------- */

Test(gw_upstream, post_round_trip_with_headers_and_body)
{
    srv *s = srv_start();
    gw_upstream *u = client(1, 0, NULL);
    static const char body[] = "{\"prompt\":\"hi\"}\0binary tail";
    const size_t blen = sizeof body - 1;
    gw_header h[] = {
        {"X-Test", "42"},
        {"Content-Type", "application/json"},
        {"Authorization", "Bearer sk-test"},
        {"X-Empty", ""},
        {"X-Padded", "  spaced value \t"},
        {"Connection", "close"},          /* dropped: the client owns the connection */
        {"Content-Length", "3"},          /* dropped: would corrupt the framing */
        {"Transfer-Encoding", "chunked"}, /* dropped */
        {"Expect", "100-continue"},       /* dropped */
    };
    rec r;
    rec_init(&r);
    gw_upstream_req q = {.method = "POST", .url = url(s, "/echo"), .headers = h,
                         .n_headers = sizeof h / sizeof h[0], .body = body, .body_len = blen,
                         .timeout_ms = 5000};
    gw_upstream_call *c = start(u, &q, &r);
    rec_wait(&r, 10000);
    cr_assert_eq(r.err, GW_UP_OK, "%s: %s", gw_up_err_name(r.err), r.msg);
    cr_assert_str_eq(r.msg, "ok");
    cr_assert_eq(r.n_head, 1);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(r.ctype, "text/plain; charset=utf-8");
    cr_assert(has_line(r.heads, "X-Reply: yes"), "%s", r.heads);
    cr_assert(has_line(r.heads, "X-Multi: a") && has_line(r.heads, "X-Multi: b"), "%s", r.heads);

    /* What the server got: the request head, then the body. */
    char *sent = r.body;
    cr_assert(strncmp(sent, "POST /echo HTTP/1.1\r\n", 21) == 0, "%s", sent);
    char *hend = strstr(sent, "\r\n\r\n");
    cr_assert_not_null(hend);
    *hend = '\0';
    cr_assert(strstr(sent, "\r\nX-Test: 42\r\n"), "%s", sent);
    cr_assert(strstr(sent, "\r\nContent-Type: application/json\r\n"), "%s", sent);
    cr_assert(strstr(sent, "\r\nAuthorization: Bearer sk-test\r\n"), "%s", sent);
    cr_assert(strstr(sent, "\r\nX-Empty:"), "%s", sent);
    cr_assert(strstr(sent, "\r\nX-Padded: spaced value\r\n"), "%s", sent);
    char cl[64];
    snprintf(cl, sizeof cl, "\r\nContent-Length: %zu", blen);
    cr_assert(strstr(sent, cl), "%s", sent);
    cr_assert_null(strcasestr(sent, "Expect:"), "%s", sent);
    cr_assert_null(strcasestr(sent, "chunked"), "%s", sent);
    cr_assert_null(strcasestr(sent, "Connection: close"), "%s", sent);
    cr_assert_null(strcasestr(sent, "Content-Length: 3\r"), "%s", sent);
    size_t head_len = (size_t)(hend - sent) + 4;
    cr_assert_eq(r.len - head_len, blen);
    cr_assert_eq(memcmp(r.body + head_len, body, blen), 0);
    gw_upstream_release(c);

    /* A GET sends no body, no Content-Type, no Content-Length. */
    rec g;
    rec_init(&g);
    cr_assert_eq(get(u, url(s, "/echo?q=1"), &g), GW_UP_OK, "%s", g.msg);
    cr_assert(strncmp(g.body, "GET /echo?q=1 HTTP/1.1\r\n", 24) == 0, "%s", g.body);
    cr_assert_null(strcasestr(g.body, "Content-Type:"), "%s", g.body);
    cr_assert_null(strcasestr(g.body, "Content-Length:"), "%s", g.body);
    rec_fini(&g);

    /* A POST without a Content-Type of the caller's goes without one (not
     * curl's form default); PUT is sent as PUT. */
    rec p;
    rec_init(&p);
    gw_upstream_req q2 = {.method = "PUT", .url = url(s, "/echo"), .body = "x", .body_len = 1};
    gw_upstream_release(start(u, &q2, &p));
    rec_wait(&p, 10000);
    cr_assert_eq(p.err, GW_UP_OK, "%s", p.msg);
    cr_assert(strncmp(p.body, "PUT /echo HTTP/1.1\r\n", 20) == 0, "%s", p.body);
    cr_assert_null(strcasestr(p.body, "Content-Type:"), "%s", p.body);
    cr_assert(strstr(p.body, "\r\n\r\nx"), "%s", p.body);
    rec_fini(&p);

    gw_upstream_stats st;
    gw_upstream_stats_get(u, &st);
    cr_assert_eq(st.started, 3);
    cr_assert_eq(st.in_flight, 0);
    gw_upstream_free(u);
    srv_stop(s);
    rec_fini(&r);
}

Test(gw_upstream, error_status_is_a_response)
{
    srv *s = srv_start();
    gw_upstream *u = client(1, 0, NULL);
    rec r;
    rec_init(&r);
    cr_assert_eq(get(u, url(s, "/status/503"), &r), GW_UP_OK, "%s", r.msg);
    cr_assert_eq(r.status, 503);
    cr_assert_str_eq(r.body, "down");
    rec_fini(&r);

    rec n;
    rec_init(&n);
    cr_assert_eq(get(u, url(s, "/nowhere"), &n), GW_UP_OK, "%s", n.msg);
    cr_assert_eq(n.status, 404);
    cr_assert(n.ctype_null, "no Content-Type: NULL, got '%s'", n.ctype);
    cr_assert_eq(n.n_data, 0);
    rec_fini(&n);

    /* HEAD: a head and no body, and the connection stays usable. */
    rec hd;
    rec_init(&hd);
    gw_upstream_req q = {.method = "HEAD", .url = url(s, "/echo")};
    gw_upstream_release(start(u, &q, &hd));
    rec_wait(&hd, 10000);
    cr_assert_eq(hd.err, GW_UP_OK, "%s", hd.msg);
    cr_assert_eq(hd.status, 200);
    cr_assert(has_line(hd.heads, "Content-Length: 1234"), "%s", hd.heads);
    cr_assert_eq(hd.n_data, 0);
    rec_fini(&hd);
    rec after;
    rec_init(&after);
    cr_assert_eq(get(u, url(s, "/echo"), &after), GW_UP_OK, "%s", after.msg);
    rec_fini(&after);
    cr_assert_eq(atomic_load(&s->accepted), 1, "one connection for all four");
    gw_upstream_free(u);
    srv_stop(s);
}

Test(gw_upstream, odd_heads_interim_folded_and_too_many)
{
    srv *s = srv_start();
    gw_upstream *u = client(1, 0, NULL);
    rec r;
    rec_init(&r);
    cr_assert_eq(get(u, url(s, "/interim"), &r), GW_UP_OK, "%s", r.msg);
    cr_assert_eq(r.n_head, 1, "a 103 is not a head of its own");
    cr_assert_eq(r.status, 200);
    cr_assert(has_line(r.heads, "X-Final: 1"), "%s", r.heads);
    cr_assert_null(strstr(r.heads, "Link"), "%s", r.heads);
    cr_assert_str_eq(r.body, "ok");
    rec_fini(&r);

    rec f;
    rec_init(&f);
    cr_assert_eq(get(u, url(s, "/fold"), &f), GW_UP_OK, "%s", f.msg);
    cr_assert(has_line(f.heads, "X-Fold: a b"), "%s", f.heads);
    rec_fini(&f);

    rec m;
    rec_init(&m);
    cr_assert_eq(get(u, url(s, "/manyheaders?n=300"), &m), GW_UP_PROTOCOL, "%s", m.msg);
    cr_assert_eq(m.n_head, 0);
    cr_assert(strstr(m.msg, "response head over"), "%s", m.msg);
    rec_fini(&m);

    rec ok;
    rec_init(&ok);
    cr_assert_eq(get(u, url(s, "/manyheaders?n=200"), &ok), GW_UP_OK, "%s", ok.msg);
    cr_assert(has_line(ok.heads, "X-H199: 199"));
    rec_fini(&ok);
    gw_upstream_free(u);
    srv_stop(s);
}

Test(gw_upstream, idle_close_by_the_server_is_survived)
{
    srv *s = srv_start();
    gw_upstream *u = client(1, 0, NULL);
    rec a;
    rec_init(&a);
    cr_assert_eq(get(u, url(s, "/then-close"), &a), GW_UP_OK, "%s", a.msg);
    rec_fini(&a);
    usleep(200000);   /* the server has closed the kept connection */
    rec b;
    rec_init(&b);
    cr_assert_eq(get(u, url(s, "/echo"), &b), GW_UP_OK, "%s: %s", gw_up_err_name(b.err), b.msg);
    rec_fini(&b);
    cr_assert_eq(atomic_load(&s->accepted), 2);
    gw_upstream_free(u);
    srv_stop(s);
}

/* Broken responses end in exactly one on_done each, never a crash (ASan
 * build), and leave the client working. */
Test(gw_upstream, garbled_responses)
{
    srv *s = srv_start();
    gw_upstream *u = client(1, 0, NULL);
    int by_err[8] = {0};
    for (int seed = 1; seed <= 300; seed++) {
        rec r;
        rec_init(&r);
        char path[64];
        snprintf(path, sizeof path, "/fuzz?seed=%d", seed);
        gw_upstream_req q = {.method = "GET", .url = url(s, path), .timeout_ms = 5000};
        gw_upstream_release(start(u, &q, &r));
        rec_wait(&r, 10000);
        cr_assert(r.err >= GW_UP_OK && r.err <= GW_UP_INTERNAL);
        cr_assert(r.err == GW_UP_OK || r.err == GW_UP_PROTOCOL, "seed %d: %s: %s", seed,
                  gw_up_err_name(r.err), r.msg);
        cr_assert_leq(r.n_head, 1);
        by_err[r.err]++;
        rec_fini(&r);
    }
    cr_assert_gt(by_err[GW_UP_PROTOCOL], 0);
    cr_assert_gt(by_err[GW_UP_OK], 0);
    rec ok;
    rec_init(&ok);
    cr_assert_eq(get(u, url(s, "/echo"), &ok), GW_UP_OK, "%s", ok.msg);
    rec_fini(&ok);
    gw_upstream_free(u);
    srv_stop(s);
}

Test(gw_upstream, big_body_in_pieces)
{
    srv *s = srv_start();
    gw_upstream *u = client(1, 0, NULL);
    rec r;
    rec_init(&r);
    cr_assert_eq(get(u, url(s, "/big?n=3000000"), &r), GW_UP_OK, "%s", r.msg);
    cr_assert_eq(r.len, 3000000);
    cr_assert_gt(r.n_data, 1);
    for (size_t i = 0; i < r.len; i++)
        if (r.body[i] != (char)(i % 251))
            cr_assert_fail("byte %zu differs", i);
    rec_fini(&r);
    gw_upstream_free(u);
    srv_stop(s);
}

/* ---- streaming, reuse, concurrency -------------------------------------- */

Test(gw_upstream, chunks_arrive_while_the_server_is_still_sending)
{
    srv *s = srv_start();
    gw_upstream *u = client(1, 0, NULL);
    rec r;
    rec_init(&r);
    const int n = 5, gap = 150;
    char path[64];
    snprintf(path, sizeof path, "/chunks?n=%d&ms=%d", n, gap);
    cr_assert_eq(get(u, url(s, path), &r), GW_UP_OK, "%s", r.msg);
    cr_assert_str_eq(r.body, "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\n");
    cr_assert_str_eq(r.ctype, "text/event-stream");
    /* Pieces are passed on as they come: one per chunk, unless a stalled
     * loop (a loaded machine) finds two in the socket at once. */
    cr_assert_geq(r.n_data, n - 1, "%d pieces for %d chunks: buffered?", r.n_data, n);
    uint64_t last = atomic_load(&s->last_chunk_ms);
    /* The first event came long before the server sent its last one. */
    cr_assert_lt(r.t_first_data + (uint64_t)(gap * (n - 2)), last,
                 "first data at %llu, server finished at %llu",
                 (unsigned long long)r.t_first_data, (unsigned long long)last);
    cr_assert_geq(r.t_data[r.n_data - 1] - r.t_first_data, (uint64_t)(gap * (n - 2)),
                  "the pieces came together, not as sent");
    cr_assert_leq(r.t_head, r.t_first_data);
    rec_fini(&r);
    gw_upstream_free(u);
    srv_stop(s);
}

Test(gw_upstream, sequential_requests_reuse_one_connection)
{
    srv *s = srv_start();
    gw_upstream *u = client(1, 0, NULL);
    for (int i = 0; i < 20; i++) {
        rec r;
        rec_init(&r);
        gw_upstream_req q = {.method = i % 2 ? "GET" : "POST", .url = url(s, "/echo"),
                             .body = i % 2 ? NULL : "{}", .body_len = i % 2 ? 0 : 2};
        gw_upstream_release(start(u, &q, &r));
        rec_wait(&r, 10000);
        cr_assert_eq(r.err, GW_UP_OK, "request %d: %s", i, r.msg);
        rec_fini(&r);
    }
    gw_upstream_stats st;
    gw_upstream_stats_get(u, &st);
    cr_assert_eq(atomic_load(&s->accepted), 1, "server saw %d connections", atomic_load(&s->accepted));
    cr_assert_eq(st.connections_opened, 1);
    cr_assert_eq(st.started, 20);
    cr_assert_eq(st.in_flight, 0);
    cr_assert_eq(atomic_load(&s->requests), 20);
    gw_upstream_free(u);
    srv_stop(s);
}

Test(gw_upstream, hundred_in_flight_on_one_thread)
{
    srv *s = srv_start();
    gw_upstream *u = client(1, 128, NULL);
    enum { N = 100 };
    rec *r = calloc(N, sizeof *r);
    uint64_t t0 = now_ms();
    for (int i = 0; i < N; i++) {
        rec_init(&r[i]);
        gw_upstream_req q = {.method = "GET", .url = url(s, "/sleep?ms=800"), .timeout_ms = 20000};
        gw_upstream_release(start(u, &q, &r[i]));
    }
    gw_upstream_stats st;
    gw_upstream_stats_get(u, &st);
    cr_assert_eq(st.in_flight, N);
    pthread_t loop_thread = 0;
    for (int i = 0; i < N; i++) {
        rec_wait(&r[i], 20000);
        cr_assert_eq(r[i].err, GW_UP_OK, "request %d: %s", i, r[i].msg);
        cr_assert_str_eq(r[i].body, "ok");
        if (i == 0)
            loop_thread = r[i].done_thread;
        cr_assert(pthread_equal(loop_thread, r[i].done_thread), "all on the one loop thread");
        rec_fini(&r[i]);
    }
    uint64_t took = now_ms() - t0;
    cr_assert_eq(atomic_load(&s->max_active), N, "the server saw %d at once",
                 atomic_load(&s->max_active));
    cr_assert_lt(took, 8000, "100 x 800 ms took %llu ms: not concurrent", (unsigned long long)took);
    cr_assert_eq(atomic_load(&s->accepted), N);
    gw_upstream_stats_get(u, &st);
    cr_assert_eq(st.in_flight, 0);
    cr_assert_eq(st.connections_opened, N);
    free(r);
    gw_upstream_free(u);
    srv_stop(s);
}

Test(gw_upstream, several_loops_share_the_work)
{
    srv *s = srv_start();
    gw_upstream *u = client(4, 0, NULL);
    enum { N = 200 };
    rec *r = calloc(N, sizeof *r);
    for (int i = 0; i < N; i++) {
        rec_init(&r[i]);
        gw_upstream_req q = {.method = "GET", .url = url(s, "/sleep?ms=50"), .timeout_ms = 20000};
        gw_upstream_release(start(u, &q, &r[i]));
    }
    pthread_t seen[4];
    int n_seen = 0;
    for (int i = 0; i < N; i++) {
        rec_wait(&r[i], 20000);
        cr_assert_eq(r[i].err, GW_UP_OK, "request %d: %s", i, r[i].msg);
        bool known = false;
        for (int k = 0; k < n_seen; k++)
            known = known || pthread_equal(seen[k], r[i].done_thread);
        if (!known) {
            cr_assert_lt(n_seen, 4, "more loop threads than configured");
            seen[n_seen++] = r[i].done_thread;
        }
        rec_fini(&r[i]);
    }
    cr_assert_eq(n_seen, 4, "calls spread over %d of 4 loops", n_seen);
    gw_upstream_stats st;
    gw_upstream_stats_get(u, &st);
    cr_assert_eq(st.started, N);
    cr_assert_eq(st.in_flight, 0);
    free(r);
    gw_upstream_free(u);
    srv_stop(s);
}

/* ---- failures ----------------------------------------------------------- */

Test(gw_upstream, connect_refused_and_no_secrets_in_the_message)
{
    gw_upstream *u = client(1, 0, NULL);
    int port = ts_free_port();
    char target[256];
    snprintf(target, sizeof target, "http://user:pw-SECRET@127.0.0.1:%d/v1/chat?key=KEY-SECRET", port);
    gw_header h[] = {{"Authorization", "Bearer sk-SECRET"}};
    rec r;
    rec_init(&r);
    gw_upstream_req q = {.method = "POST", .url = target, .headers = h, .n_headers = 1,
                         .body = "{}", .body_len = 2};
    gw_upstream_release(start(u, &q, &r));
    rec_wait(&r, 10000);
    cr_assert_eq(r.err, GW_UP_CONNECT, "%s: %s", gw_up_err_name(r.err), r.msg);
    cr_assert_eq(r.n_head, 0);
    cr_assert_lt(r.t_done - r.t0, 5000);
    char origin[64];
    snprintf(origin, sizeof origin, "POST http://127.0.0.1:%d: ", port);
    cr_assert(strncmp(r.msg, origin, strlen(origin)) == 0, "%s", r.msg);
    cr_assert_null(strstr(r.msg, "SECRET"), "%s", r.msg);
    cr_assert_null(strstr(r.msg, "/v1/chat"), "%s", r.msg);
    cr_assert_gt(strlen(r.msg), strlen(origin), "curl's reason follows: %s", r.msg);
    rec_fini(&r);
    gw_upstream_free(u);
}

/* A listener that never accepts, its queue filled: new SYNs are dropped, so
 * a connect hangs until the connect timeout. */
Test(gw_upstream, connect_timeout_is_a_connect_error)
{
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(lfd, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(listen(lfd, 0), 0);
    socklen_t al = sizeof a;
    getsockname(lfd, (struct sockaddr *)&a, &al);
    int fill[4];
    for (int i = 0; i < 4; i++) {
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        connect(fill[i], (struct sockaddr *)&a, sizeof a);
    }
    usleep(50000);
    char target[64];
    snprintf(target, sizeof target, "http://127.0.0.1:%d/", ntohs(a.sin_port));
    gw_upstream *u = client(1, 0, NULL);
    rec r;
    rec_init(&r);
    gw_upstream_req q = {.method = "POST", .url = target, .body = "{}", .body_len = 2,
                         .connect_timeout_ms = 300, .timeout_ms = 5000};
    gw_upstream_release(start(u, &q, &r));
    rec_wait(&r, 10000);
    cr_assert_eq(r.err, GW_UP_CONNECT, "%s: %s", gw_up_err_name(r.err), r.msg);
    uint64_t took = r.t_done - r.t0;
    cr_assert(took >= 290 && took < 3000, "gave up after %llu ms", (unsigned long long)took);
    cr_assert(strstr(r.msg, "(while connecting)"), "%s", r.msg);
    rec_fini(&r);
    gw_upstream_free(u);
    for (int i = 0; i < 4; i++)
        close(fill[i]);
    close(lfd);
}

Test(gw_upstream, stalled_server_times_out_within_budget)
{
    srv *s = srv_start();
    gw_upstream *u = client(1, 0, NULL);
    rec r;
    rec_init(&r);
    gw_upstream_req q = {.method = "GET", .url = url(s, "/stall"), .timeout_ms = 300};
    gw_upstream_release(start(u, &q, &r));
    rec_wait(&r, 10000);
    cr_assert_eq(r.err, GW_UP_TIMEOUT, "%s: %s", gw_up_err_name(r.err), r.msg);
    uint64_t took = r.t_done - r.t0;
    cr_assert(took >= 290 && took < 2000, "timed out after %llu ms", (unsigned long long)took);
    cr_assert_eq(r.n_head, 0);
    cr_assert(strcasestr(r.msg, "timed out"), "%s", r.msg);
    rec_fini(&r);
    gw_upstream_free(u);
    srv_stop(s);
}

Test(gw_upstream, first_byte_timeout)
{
    srv *s = srv_start();
    gw_upstream *u = client(1, 0, NULL);
    rec r;
    rec_init(&r);
    gw_upstream_req q = {.method = "GET", .url = url(s, "/slowhead?ms=5000"), .timeout_ms = 10000,
                         .first_byte_timeout_ms = 200};
    gw_upstream_release(start(u, &q, &r));
    rec_wait(&r, 10000);
    cr_assert_eq(r.err, GW_UP_TIMEOUT, "%s: %s", gw_up_err_name(r.err), r.msg);
    uint64_t took = r.t_done - r.t0;
    cr_assert(took >= 195 && took < 2000, "gave up after %llu ms", (unsigned long long)took);
    cr_assert(strstr(r.msg, "no response head within 200 ms"), "%s", r.msg);
    cr_assert_eq(r.n_head, 0);
    rec_fini(&r);

    /* The head comes at once; a body slower than the first-byte budget is fine. */
    rec b;
    rec_init(&b);
    gw_upstream_req q2 = {.method = "GET", .url = url(s, "/chunks?n=3&ms=300"),
                          .first_byte_timeout_ms = 200};
    gw_upstream_release(start(u, &q2, &b));
    rec_wait(&b, 10000);
    cr_assert_eq(b.err, GW_UP_OK, "%s: %s", gw_up_err_name(b.err), b.msg);
    cr_assert_eq(b.n_data, 3);
    rec_fini(&b);
    gw_upstream_stats st;
    gw_upstream_stats_get(u, &st);
    cr_assert_eq(st.in_flight, 0);
    gw_upstream_free(u);
    srv_stop(s);
}

Test(gw_upstream, close_mid_body_after_the_bytes_before)
{
    srv *s = srv_start();
    gw_upstream *u = client(1, 0, NULL);
    rec r;
    rec_init(&r);
    cr_assert_eq(get(u, url(s, "/closemid"), &r), GW_UP_PROTOCOL, "%s: %s", gw_up_err_name(r.err),
                 r.msg);
    cr_assert_eq(r.n_head, 1);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(r.len, 10);
    cr_assert_str_eq(r.body, "0123456789");
    cr_assert_leq(r.t_first_data, r.t_done);
    rec_fini(&r);

    /* The client goes on: a new connection for the next call. */
    rec n;
    rec_init(&n);
    cr_assert_eq(get(u, url(s, "/echo"), &n), GW_UP_OK, "%s", n.msg);
    rec_fini(&n);
    gw_upstream_free(u);
    srv_stop(s);
}

Test(gw_upstream, bad_requests_are_refused_without_callbacks)
{
    gw_upstream *u = client(1, 0, NULL);
    rec r;
    rec_init(&r);
    const char *bad_urls[] = {"ftp://127.0.0.1/", "http://", "http:///path", "http://a b/",
                              "http://h/\r\nX: y", "127.0.0.1:80/", "https://user@/x", ""};
    char err[256];
    for (size_t i = 0; i < sizeof bad_urls / sizeof bad_urls[0]; i++) {
        gw_upstream_req q = {.method = "GET", .url = bad_urls[i]};
        gw_upstream_call *c = (gw_upstream_call *)1;
        err[0] = '\0';
        cr_assert_eq(gw_upstream_start(u, &q, rec_cb(&r), &c, err, sizeof err), -1, "%s", bad_urls[i]);
        cr_assert_null(c);
        cr_assert_neq(err[0], '\0');
    }
    gw_header crlf[] = {{"X-Key", "a\r\nX-Injected: 1"}};
    gw_header badname[] = {{"X Key", "v"}};
    gw_header colon[] = {{"X-Key:", "v"}};
    const gw_upstream_req bad[] = {
        {.method = "GE T", .url = "http://127.0.0.1/"},
        {.method = "", .url = "http://127.0.0.1/"},
        {.method = "GET", .url = "http://127.0.0.1/", .headers = crlf, .n_headers = 1},
        {.method = "GET", .url = "http://127.0.0.1/", .headers = badname, .n_headers = 1},
        {.method = "GET", .url = "http://127.0.0.1/", .headers = colon, .n_headers = 1},
        {.method = "POST", .url = "http://127.0.0.1/", .body = NULL, .body_len = 5},
        {.method = "GET", .url = "http://127.0.0.1/", .timeout_ms = -1},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        cr_assert_eq(gw_upstream_start(u, &bad[i], rec_cb(&r), NULL, err, sizeof err), -1,
                     "request %zu", i);
        cr_assert_neq(err[0], '\0');
        cr_assert_null(strstr(err, "Injected"), "a header value in the error: %s", err);
    }
    gw_response_cb no_done = {.ctx = &r, .on_head = cb_head};
    gw_upstream_req ok = {.method = "GET", .url = "http://127.0.0.1/"};
    cr_assert_eq(gw_upstream_start(u, &ok, &no_done, NULL, err, sizeof err), -1);

    gw_upstream_opts neg = {.threads = -1};
    cr_assert_null(gw_upstream_new(&neg, err, sizeof err));
    cr_assert_neq(err[0], '\0');

    usleep(50000);
    gw_upstream_stats st;
    gw_upstream_stats_get(u, &st);
    cr_assert_eq(st.started, 0);
    cr_assert_eq(st.in_flight, 0);
    cr_assert_eq(r.n_done + r.n_head + r.n_data, 0, "no callback for a refused request");
    gw_upstream_free(u);
    rec_fini(&r);
    cr_assert_str_eq(gw_up_err_name(GW_UP_CONNECT), "connect");
    cr_assert_str_eq(gw_up_err_name(GW_UP_CANCELLED), "cancelled");
    cr_assert_str_eq(gw_up_err_name((gw_up_err)99), "unknown");
}

/* ---- cancel and abort ---------------------------------------------------- */

/* Holds a loop thread inside a timer callback until released. */
typedef struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool entered, open;
} gate;

static void gate_hold(void *ctx, bool cancelled)
{
    gate *g = ctx;
    pthread_mutex_lock(&g->mu);
    g->entered = true;
    pthread_cond_broadcast(&g->cv);
    while (!g->open && !cancelled)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

Test(gw_upstream, cancel_while_queued_never_touches_the_network)
{
    srv *s = srv_start();
    gw_upstream *u = client(1, 0, NULL);
    gate g = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    cr_assert_eq(gw_upstream_after(u, 0, gate_hold, &g), 0);
    pthread_mutex_lock(&g.mu);
    while (!g.entered)
        pthread_cond_wait(&g.cv, &g.mu);
    pthread_mutex_unlock(&g.mu);

    /* The loop is busy: this call is still in its queue. */
    rec r;
    rec_init(&r);
    gw_upstream_req q = {.method = "GET", .url = url(s, "/echo")};
    gw_upstream_call *c = start(u, &q, &r);
    gw_upstream_cancel(c);
    gw_upstream_cancel(c);   /* idempotent */

    pthread_mutex_lock(&g.mu);
    g.open = true;
    pthread_cond_broadcast(&g.cv);
    pthread_mutex_unlock(&g.mu);
    rec_wait(&r, 5000);
    cr_assert_eq(r.err, GW_UP_CANCELLED, "%s: %s", gw_up_err_name(r.err), r.msg);
    cr_assert_eq(r.n_head + r.n_data, 0);
    gw_upstream_cancel(c);   /* after on_done: nothing */
    usleep(100000);
    cr_assert_eq(r.n_done, 1);
    cr_assert_eq(atomic_load(&s->accepted), 0, "a cancelled queued call connected");
    gw_upstream_release(c);
    gw_upstream_stats st;
    gw_upstream_stats_get(u, &st);
    cr_assert_eq(st.in_flight, 0);
    gw_upstream_free(u);
    srv_stop(s);
    rec_fini(&r);
}

Test(gw_upstream, cancel_during_a_stream)
{
    srv *s = srv_start();
    gw_upstream *u = client(1, 0, NULL);
    rec r;
    rec_init(&r);
    gw_upstream_req q = {.method = "GET", .url = url(s, "/chunks?n=20&ms=100")};
    gw_upstream_call *c = start(u, &q, &r);
    rec_wait_data(&r, 2, 5000);
    gw_upstream_cancel(c);
    pthread_mutex_lock(&r.mu);
    r.cancel_returned = true;
    pthread_mutex_unlock(&r.mu);
    rec_wait(&r, 5000);
    cr_assert_eq(r.err, GW_UP_CANCELLED, "%s: %s", gw_up_err_name(r.err), r.msg);
    cr_assert_lt(r.n_data, 20);
    cr_assert_eq(r.data_after_cancel, 0, "on_data ran after cancel returned");
    gw_upstream_cancel(c);
    usleep(150000);
    cr_assert_eq(r.n_done, 1, "exactly one on_done");
    gw_upstream_release(c);
    rec_fini(&r);

    /* The loop carries on. */
    rec n;
    rec_init(&n);
    cr_assert_eq(get(u, url(s, "/echo"), &n), GW_UP_OK, "%s", n.msg);
    rec_fini(&n);
    gw_upstream_free(u);
    srv_stop(s);
}

Test(gw_upstream, cancel_from_its_own_callback)
{
    srv *s = srv_start();
    gw_upstream *u = client(1, 0, NULL);
    rec r;
    rec_init(&r);
    pthread_mutex_lock(&r.mu);   /* r.self is set before the first on_data can read it */
    gw_upstream_req q = {.method = "GET", .url = url(s, "/chunks?n=10&ms=100")};
    r.self = start(u, &q, &r);
    r.cancel_data_at = 2;
    pthread_mutex_unlock(&r.mu);
    rec_wait(&r, 5000);
    cr_assert_eq(r.err, GW_UP_CANCELLED, "%s: %s", gw_up_err_name(r.err), r.msg);
    cr_assert_eq(r.n_data, 2, "no data after a cancel on the loop thread");
    gw_upstream_release(r.self);
    rec_fini(&r);
    gw_upstream_free(u);
    srv_stop(s);
}

Test(gw_upstream, callback_abort)
{
    srv *s = srv_start();
    gw_upstream *u = client(1, 0, NULL);
    rec h;
    rec_init(&h);
    h.abort_head = true;
    cr_assert_eq(get(u, url(s, "/chunks?n=3&ms=50"), &h), GW_UP_ABORTED, "%s", h.msg);
    cr_assert_eq(h.n_head, 1);
    cr_assert_eq(h.n_data, 0);
    cr_assert(strstr(h.msg, "aborted"), "%s", h.msg);
    rec_fini(&h);

    rec d;
    rec_init(&d);
    d.abort_data_at = 1;
    cr_assert_eq(get(u, url(s, "/chunks?n=3&ms=50"), &d), GW_UP_ABORTED, "%s", d.msg);
    cr_assert_eq(d.n_data, 1);
    rec_fini(&d);

    rec n;
    rec_init(&n);
    cr_assert_eq(get(u, url(s, "/echo"), &n), GW_UP_OK, "%s", n.msg);
    rec_fini(&n);
    gw_upstream_free(u);
    srv_stop(s);
}

/* ---- timers and shutdown -------------------------------------------------- */

typedef struct tick {
    pthread_mutex_t *mu;
    char *order;             /* appended names */
    char name;
    int delay_ms;
    uint64_t set_ms, fired_ms;
    bool cancelled, fired;
    pthread_t thread;
    gw_upstream *chain_u;    /* set another timer from the callback */
    struct tick *chain;
} tick;

static void on_tick(void *ctx, bool cancelled)
{
    tick *t = ctx;
    pthread_mutex_lock(t->mu);
    size_t n = strlen(t->order);
    t->order[n] = t->name;
    t->order[n + 1] = '\0';
    t->fired = true;
    t->cancelled = cancelled;
    t->fired_ms = now_ms();
    t->thread = pthread_self();
    pthread_mutex_unlock(t->mu);
    if (t->chain_u && !cancelled) {
        t->chain->set_ms = now_ms();
        cr_assert_eq(gw_upstream_after(t->chain_u, t->chain->delay_ms, on_tick, t->chain), 0);
    }
}

Test(gw_upstream, timers_fire_in_order_and_are_cancelled_on_free)
{
    gw_upstream *u = client(1, 0, NULL);
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    char order[32] = "";
    tick t[] = {
        {.name = 'A', .delay_ms = 400}, {.name = 'B', .delay_ms = 100},
        {.name = 'C', .delay_ms = 300}, {.name = 'D', .delay_ms = 100},
        {.name = 'E', .delay_ms = 0},   {.name = 'H', .delay_ms = 50},   /* chained from B */
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        t[i].mu = &mu;
        t[i].order = order;
    }
    t[1].chain_u = u;
    t[1].chain = &t[5];
    for (int i = 0; i < 5; i++) {
        t[i].set_ms = now_ms();
        cr_assert_eq(gw_upstream_after(u, t[i].delay_ms, on_tick, &t[i]), 0);
    }
    gw_upstream_stats st;
    gw_upstream_stats_get(u, &st);
    cr_assert_geq(st.timers, 4);
    uint64_t end = now_ms() + 5000;
    for (;;) {
        pthread_mutex_lock(&mu);
        bool all = strlen(order) == 6;
        pthread_mutex_unlock(&mu);
        if (all || now_ms() > end)
            break;
        usleep(5000);
    }
    cr_assert_str_eq(order, "EBDHCA");
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        cr_assert(t[i].fired && !t[i].cancelled, "timer %c", t[i].name);
        cr_assert_geq(t[i].fired_ms - t[i].set_ms, (uint64_t)t[i].delay_ms, "timer %c early",
                      t[i].name);
        cr_assert_lt(t[i].fired_ms - t[i].set_ms, (uint64_t)t[i].delay_ms + 1500, "timer %c late",
                     t[i].name);
    }
    cr_assert(pthread_equal(t[1].thread, t[5].thread), "a chained timer stays on its loop");
    gw_upstream_stats_get(u, &st);
    cr_assert_eq(st.timers, 0);

    order[0] = '\0';
    tick late[] = {{.name = 'F', .delay_ms = 60000, .mu = &mu, .order = order},
                   {.name = 'G', .delay_ms = 30000, .mu = &mu, .order = order}};
    cr_assert_eq(gw_upstream_after(u, late[0].delay_ms, on_tick, &late[0]), 0);
    cr_assert_eq(gw_upstream_after(u, late[1].delay_ms, on_tick, &late[1]), 0);
    cr_assert_eq(gw_upstream_after(u, -1, on_tick, &late[0]), -1);
    cr_assert_eq(gw_upstream_after(u, 1, NULL, NULL), -1);
    gw_upstream_stats_get(u, &st);
    cr_assert_eq(st.timers, 2);
    uint64_t t0 = now_ms();
    gw_upstream_free(u);
    cr_assert_lt(now_ms() - t0, 2000);
    cr_assert_str_eq(order, "GF", "cancelled in due order");
    cr_assert(late[0].cancelled && late[1].cancelled);
}

Test(gw_upstream, free_with_requests_in_flight)
{
    srv *s = srv_start();
    gw_upstream *u = client(2, 0, NULL);
    enum { N = 6 };
    rec r[N];
    for (int i = 0; i < N; i++) {
        rec_init(&r[i]);
        r[i].u_in_done = u;
        gw_upstream_req q = {.method = "POST", .url = url(s, "/stall"), .body = "{}", .body_len = 2};
        gw_upstream_call *c = start(u, &q, &r[i]);
        if (i % 2)
            gw_upstream_release(c);   /* the rest are released after free */
        else
            r[i].self = c;
    }
    uint64_t end = now_ms() + 5000;
    while (atomic_load(&s->requests) < N && now_ms() < end)
        usleep(2000);
    cr_assert_eq(atomic_load(&s->requests), N);
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    char order[8] = "";
    tick pending = {.name = 'T', .delay_ms = 60000, .mu = &mu, .order = order};
    cr_assert_eq(gw_upstream_after(u, pending.delay_ms, on_tick, &pending), 0);

    uint64_t t0 = now_ms();
    gw_upstream_free(u);
    cr_assert_lt(now_ms() - t0, 2000, "free waited for the stalled upstream");
    for (int i = 0; i < N; i++) {
        cr_assert_eq(r[i].n_done, 1, "call %d: %d on_done", i, r[i].n_done);
        cr_assert_eq(r[i].err, GW_UP_CANCELLED, "call %d: %s", i, r[i].msg);
        cr_assert_eq(r[i].start_rc_in_done, -1, "start during free must be refused");
        cr_assert_eq(r[i].after_rc_in_done, -1, "after during free must be refused");
        gw_upstream_cancel(r[i].self);   /* finished: a no-op, also after free */
        gw_upstream_release(r[i].self);
        rec_fini(&r[i]);
    }
    cr_assert(pending.fired && pending.cancelled);
    srv_stop(s);
}

/* ---- TLS ------------------------------------------------------------------ */

typedef struct tls_srv {
    pid_t pid;
    int port;
    char *dir;
    char ca[512];
} tls_srv;

/* Makes a CA and a server certificate for 127.0.0.1 and starts the Python
 * server; false (the caller skips) if openssl or python3 is missing. */
static bool tls_start(tls_srv *t)
{
    if (ts_run("command -v openssl >/dev/null && command -v python3 >/dev/null && "
               "python3 -c 'import ssl, http.server'",
               NULL) != 0)
        return false;
    t->dir = ts_tmpdir();
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "cd '%s' && "
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-keyout ca.key -out ca.pem -days 2 -subj /CN=gw-upstream-test-ca "
             "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign && "
             "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-keyout srv.key -out srv.csr -subj /CN=127.0.0.1 && "
             "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nextendedKeyUsage=serverAuth\\n' "
             "> ext.cnf && "
             "openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
             "-out srv.pem -days 2 -extfile ext.cnf",
             t->dir);
    char *out = NULL;
    int rc = ts_run(cmd, &out);
    cr_assert_eq(rc, 0, "openssl: %s", out ? out : "");
    free(out);
    snprintf(t->ca, sizeof t->ca, "%s/ca.pem", t->dir);

    int pfd[2];
    cr_assert_eq(pipe(pfd), 0);
    char cert[512], key[512];
    snprintf(cert, sizeof cert, "%s/srv.pem", t->dir);
    snprintf(key, sizeof key, "%s/srv.key", t->dir);
    t->pid = fork();
    cr_assert_geq(t->pid, 0);
    if (t->pid == 0) {
        dup2(pfd[1], 1);
        close(pfd[0]);
        close(pfd[1]);
        execlp("python3", "python3", OUTPOST_SOURCE_DIR "/tests/support/gw_upstream_tls_server.py",
               cert, key, (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    char line[32] = "";
    size_t n = 0;
    uint64_t end = now_ms() + 10000;
    while (n + 1 < sizeof line && now_ms() < end) {
        struct pollfd p = {.fd = pfd[0], .events = POLLIN};
        if (poll(&p, 1, 100) <= 0)
            continue;
        ssize_t k = read(pfd[0], line + n, 1);
        if (k <= 0 || line[n] == '\n')
            break;
        n++;
    }
    line[n] = '\0';
    close(pfd[0]);
    t->port = atoi(line);
    cr_assert_gt(t->port, 0, "the TLS server did not report a port ('%s')", line);
    return true;
}

static void tls_stop(tls_srv *t)
{
    kill(t->pid, SIGTERM);
    waitpid(t->pid, NULL, 0);
    ts_tmpdir_remove(t->dir);
    free(t->dir);
}

Test(gw_upstream, tls_with_the_test_ca_and_without)
{
    tls_srv t;
    if (!tls_start(&t))
        cr_skip_test("openssl or python3 (with ssl) is missing: TLS not tested");
    char target[128];
    snprintf(target, sizeof target, "https://127.0.0.1:%d/hello", t.port);

    gw_upstream *u = client(1, 0, t.ca);
    for (int i = 0; i < 2; i++) {
        rec r;
        rec_init(&r);
        cr_assert_eq(get(u, target, &r), GW_UP_OK, "%s: %s", gw_up_err_name(r.err), r.msg);
        cr_assert_eq(r.status, 200);
        cr_assert_str_eq(r.body, "hello over tls\n");
        rec_fini(&r);
    }
    gw_upstream_stats st;
    gw_upstream_stats_get(u, &st);
    cr_assert_eq(st.connections_opened, 1, "TLS connection reused");
    gw_upstream_free(u);

    /* The system store does not know the test CA: verification fails. */
    gw_upstream *sys = client(1, 0, NULL);
    rec r;
    rec_init(&r);
    cr_assert_eq(get(sys, target, &r), GW_UP_TLS, "%s: %s", gw_up_err_name(r.err), r.msg);
    cr_assert_eq(r.n_head, 0);
    cr_assert_gt(strlen(r.msg), 0);
    rec_fini(&r);
    gw_upstream_free(sys);

    /* A CA file that is not there fails the same way, not the whole client. */
    gw_upstream *missing = client(1, 0, "/nonexistent/ca.pem");
    rec m;
    rec_init(&m);
    cr_assert_eq(get(missing, target, &m), GW_UP_TLS, "%s: %s", gw_up_err_name(m.err), m.msg);
    rec_fini(&m);
    gw_upstream_free(missing);
    tls_stop(&t);
}
