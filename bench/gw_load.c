/*
 * gw_load: an open-loop HTTP/1.1 load generator at a fixed request rate,
 * for bench/gateway_bench.sh (latency a proxy adds at, say, 10k requests/s).
 *
 *   build/bench/gw_load -r RATE -d SECONDS [-w WARMUP_S] [-c CONNECTIONS]
 *                       [-H 'Name: value']... [-b BODY | -B FILE]
 *                       [-m HEADER_TEXT] URL
 *
 * Request i is due at start + i / RATE, whatever happened to the ones before
 * (open loop). It is sent on an idle keep-alive connection as soon as it is
 * due; when all CONNECTIONS are busy it waits for one, and that wait counts
 * against the server: latency is measured from the due time, not from the
 * send, so a stall shows as the stall plus everything queued behind it
 * (no coordinated omission, as in wrk2). Requests due during the first
 * WARMUP_S seconds are sent but not counted.
 *
 * One thread, epoll, non-blocking sockets with TCP_NODELAY, no pipelining
 * (one request in flight per connection). Responses are read with their
 * Content-Length or chunked framing; a response the generator cannot frame,
 * a reset or a close is an error and the connection is opened again.
 *
 * Output: one line of key=value pairs on stdout, times in microseconds:
 *   sent ok non2xx errors unfinished achieved_rps p50_us p90_us p99_us
 *   p999_us max_us (from the due time) svc_p50_us svc_p99_us (from the
 *   send: the server's share) late_p99_us (send minus due: the generator or
 *   the connections falling behind) matched (responses whose header block
 *   contains -m's text, case-insensitive; e.g. "cf-aig-cache-status: HIT")
 *   sent_all (warm-up included). sent, ok, ... count only the measured part.
 * Exit status 0, or 1 when an error kept it from running, 2 on bad usage.
 * It does not fail on non-2xx answers or errors: the caller reads them.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 1024
#define MAX_HEADERS 16
#define INBUF 65536
#define DRAIN_NS 2000000000ULL /* wait this long for answers after the last send */

/* ---- time ---- */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* ---- one connection ---- */

enum rd_state { RD_HEAD, RD_BODY_LEN, RD_CHUNK_SIZE, RD_CHUNK_DATA, RD_CHUNK_CRLF, RD_TRAILER };

typedef struct conn {
    int fd;
    bool busy;
    uint64_t due, sent;     /* the request in flight: due time, send time (ns) */
    size_t out_off;         /* bytes of the request written so far */
    enum rd_state rd;
    int status;
    bool close_after, matched;
    uint64_t remaining;     /* body or chunk bytes still to come */
    size_t in_len;
    char in[INBUF];
} conn;

typedef struct run {
    struct sockaddr_storage addr;
    socklen_t addrlen;
    const char *req;        /* the whole request, headers and body */
    size_t req_len;
    const char *match;      /* -m text or NULL */
    int ep;
    conn *conns;
    int n_conns;
    int *idle;              /* stack of idle connection indices */
    int n_idle;
    uint64_t warm_end;      /* requests due before this are not counted */
    /* results of counted requests */
    uint64_t *lat, *svc, *late;
    size_t n_lat, cap;
    uint64_t sent, ok, non2xx, errors, matched;
    int n_dead;             /* connections that could not be opened again */
} run;

static void die(const char *what)
{
    fprintf(stderr, "gw_load: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int conn_open(run *r, int i)
{
    conn *c = &r->conns[i];
    int fd = socket(r->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&r->addr, r->addrlen) != 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.u32 = (uint32_t)i};
    if (epoll_ctl(r->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
        close(fd);
        return -1;
    }
    c->fd = fd;
    c->busy = false;
    c->in_len = 0;
    r->idle[r->n_idle++] = i;
    return 0;
}

/* The connection failed or closed: its request (if any) is an error; open a
 * new one in its place (not idle until it is connected). */
static void conn_reset(run *r, int i, bool count_error)
{
    conn *c = &r->conns[i];
    if (c->busy && count_error && c->due >= r->warm_end)
        r->errors++;
    if (!c->busy) {
        for (int k = 0; k < r->n_idle; k++)
            if (r->idle[k] == i) {
                r->idle[k] = r->idle[--r->n_idle];
                break;
            }
    }
    epoll_ctl(r->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->busy = false;
    if (conn_open(r, i) != 0) {
        fprintf(stderr, "gw_load: reconnect failed: %s\n", strerror(errno));
        r->n_dead++;
    }
}

static void want_write(run *r, int i, bool on)
{
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | (on ? EPOLLOUT : 0u),
                             .data.u32 = (uint32_t)i};
    epoll_ctl(r->ep, EPOLL_CTL_MOD, r->conns[i].fd, &ev);
}

/* Writes what is left of the request; 0 done or pending, -1 failed. */
static int conn_flush(run *r, int i)
{
    conn *c = &r->conns[i];
    while (c->out_off < r->req_len) {
        ssize_t n = send(c->fd, r->req + c->out_off, r->req_len - c->out_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                want_write(r, i, true);
                return 0;
            }
            return -1;
        }
        c->out_off += (size_t)n;
    }
    return 0;
}

static void send_request(run *r, uint64_t due, uint64_t t)
{
    int i = r->idle[--r->n_idle];
    conn *c = &r->conns[i];
    c->busy = true;
    c->due = due;
    c->sent = t;
    c->out_off = 0;
    c->rd = RD_HEAD;
    c->status = 0;
    c->close_after = false;
    c->matched = false;
    r->sent++;
    if (conn_flush(r, i) != 0)
        conn_reset(r, i, true);
}

static bool header_is(const char *line, size_t len, const char *name, const char **val)
{
    size_t nl = strlen(name);
    if (len <= nl || strncasecmp(line, name, nl) != 0 || line[nl] != ':')
        return false;
    const char *v = line + nl + 1;
    while (v < line + len && (*v == ' ' || *v == '\t'))
        v++;
    *val = v;
    return true;
}

static bool contains_ci(const char *h, size_t hl, const char *needle)
{
    size_t nl = strlen(needle);
    for (size_t k = 0; nl <= hl && k <= hl - nl; k++)
        if (strncasecmp(h + k, needle, nl) == 0)
            return true;
    return false;
}

/* Parses the status line and headers in c->in[0..end). -1: not HTTP we can
 * frame. */
static int parse_head(run *r, conn *c, size_t end)
{
    const char *p = c->in, *lim = c->in + end;
    if (end < 12 || strncmp(p, "HTTP/1.", 7) != 0 || !isdigit((unsigned char)p[9]))
        return -1;
    c->status = atoi(p + 9);
    bool have_len = false, chunked = false;
    uint64_t clen = 0;
    const char *line = memchr(p, '\n', (size_t)(lim - p));
    while (line && ++line < lim) {
        const char *eol = memchr(line, '\n', (size_t)(lim - line));
        if (!eol)
            break;
        size_t len = (size_t)(eol - line);
        if (len && line[len - 1] == '\r')
            len--;
        const char *v;
        if (header_is(line, len, "content-length", &v)) {
            char *e;
            errno = 0;
            unsigned long long x = strtoull(v, &e, 10);
            if (errno || e == v)
                return -1;
            clen = x;
            have_len = true;
        } else if (header_is(line, len, "transfer-encoding", &v)) {
            chunked = contains_ci(v, len - (size_t)(v - line), "chunked");
        } else if (header_is(line, len, "connection", &v)) {
            c->close_after = contains_ci(v, len - (size_t)(v - line), "close");
        }
        line = eol;
    }
    if (r->match && contains_ci(c->in, end, r->match))
        c->matched = true;
    if (chunked) {
        c->rd = RD_CHUNK_SIZE;
    } else if (have_len) {
        c->rd = RD_BODY_LEN;
        c->remaining = clen;
    } else {
        return -1; /* read-until-close bodies are not used by the servers measured */
    }
    return 0;
}

static void complete(run *r, int i, uint64_t t)
{
    conn *c = &r->conns[i];
    if (c->due >= r->warm_end) {
        if (c->status >= 200 && c->status < 300)
            r->ok++;
        else
            r->non2xx++;
        if (c->matched)
            r->matched++;
        if (r->n_lat < r->cap) {
            r->lat[r->n_lat] = t - c->due;
            r->svc[r->n_lat] = t - c->sent;
            r->late[r->n_lat] = c->sent - c->due;
            r->n_lat++;
        }
    }
    c->busy = false;
    if (c->close_after || c->in_len != 0) {
        /* Bytes after the response (nothing was pipelined) or a close: start
         * again on a fresh connection. */
        conn_reset(r, i, false);
        return;
    }
    r->idle[r->n_idle++] = i;
}

/* Consumes what arrived; returns -1 on a framing error. */
static int conn_parse(run *r, int i, uint64_t t)
{
    conn *c = &r->conns[i];
    for (;;) {
        if (!c->busy)
            return c->in_len ? -1 : 0;
        size_t used = 0;
        bool finished = false;
        switch (c->rd) {
        case RD_HEAD: {
            char *e = memmem(c->in, c->in_len, "\r\n\r\n", 4);
            if (!e)
                return c->in_len == INBUF ? -1 : 0;
            size_t end = (size_t)(e - c->in) + 4;
            if (parse_head(r, c, end) != 0)
                return -1;
            used = end;
            break;
        }
        case RD_BODY_LEN:
        case RD_CHUNK_DATA: {
            uint64_t take = c->remaining < c->in_len ? c->remaining : c->in_len;
            c->remaining -= take;
            used = (size_t)take;
            if (c->remaining == 0) {
                finished = c->rd == RD_BODY_LEN;
                c->rd = finished ? RD_HEAD : RD_CHUNK_CRLF;
            } else if (used == 0) {
                return 0;
            }
            break;
        }
        case RD_CHUNK_CRLF:
            if (c->in_len < 2)
                return 0;
            if (c->in[0] != '\r' || c->in[1] != '\n')
                return -1;
            used = 2;
            c->rd = RD_CHUNK_SIZE;
            break;
        case RD_CHUNK_SIZE:
        case RD_TRAILER: {
            char *e = memmem(c->in, c->in_len, "\r\n", 2);
            if (!e)
                return c->in_len == INBUF ? -1 : 0;
            used = (size_t)(e - c->in) + 2;
            if (c->rd == RD_TRAILER) {
                if (used == 2) { /* the empty line: done */
                    c->rd = RD_HEAD;
                    finished = true;
                }
                break;
            }
            char *end;
            errno = 0;
            unsigned long long sz = strtoull(c->in, &end, 16);
            if (errno || end == c->in)
                return -1;
            c->remaining = sz;
            c->rd = sz ? RD_CHUNK_DATA : RD_TRAILER;
            break;
        }
        }
        memmove(c->in, c->in + used, c->in_len - used);
        c->in_len -= used;
        if (finished) {
            complete(r, i, t);
            return 0;
        }
    }
}

static void on_readable(run *r, int i, uint64_t t)
{
    conn *c = &r->conns[i];
    for (;;) {
        ssize_t n = recv(c->fd, c->in + c->in_len, INBUF - c->in_len, 0);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            conn_reset(r, i, true);
            return;
        }
        c->in_len += (size_t)n;
        if (conn_parse(r, i, t) != 0) {
            conn_reset(r, i, true);
            return;
        }
        if (c->fd < 0 || !c->busy)
            return;
    }
}

/* ---- results ---- */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest rank, in microseconds. */
static double pct_us(const uint64_t *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    size_t k = (size_t)(p * (double)n + 0.999999);
    if (k < 1)
        k = 1;
    if (k > n)
        k = n;
    return (double)v[k - 1] / 1000.0;
}

/* ---- setup ---- */

static void usage(void)
{
    fprintf(stderr,
            "usage: gw_load -r RATE -d SECONDS [-w WARMUP_S] [-c CONNECTIONS]\n"
            "               [-H 'Name: value']... [-b BODY | -B FILE] [-m TEXT] URL\n");
    exit(2);
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        die(path);
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 4096;
            if (cap > (64u << 20)) {
                fprintf(stderr, "gw_load: %s: body over 64 MiB\n", path);
                exit(2);
            }
            buf = realloc(buf, cap);
            if (!buf)
                die("realloc");
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
    }
    fclose(f);
    *len = n;
    return buf;
}

int main(int argc, char **argv)
{
    double rate = 0, seconds = 0, warm = 1;
    int n_conns = 16;
    const char *headers[MAX_HEADERS];
    int n_headers = 0;
    const char *body = "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\","
                       "\"content\":\"Say hello.\"}],\"max_tokens\":16}";
    size_t body_len = strlen(body);
    char *body_file = NULL; /* -B's buffer, ours to free */
    const char *match = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "r:d:w:c:H:b:B:m:")) != -1) {
        switch (opt) {
        case 'r': rate = atof(optarg); break;
        case 'd': seconds = atof(optarg); break;
        case 'w': warm = atof(optarg); break;
        case 'c': n_conns = atoi(optarg); break;
        case 'H':
            if (n_headers == MAX_HEADERS || strpbrk(optarg, "\r\n"))
                usage();
            headers[n_headers++] = optarg;
            break;
        case 'b': body = optarg; body_len = strlen(body); break;
        case 'B':
            free(body_file);
            body = body_file = read_file(optarg, &body_len);
            break;
        case 'm': match = optarg; break;
        default: usage();
        }
    }
    if (optind != argc - 1 || !(rate > 0 && rate <= 10e6) || !(seconds > 0 && seconds <= 3600) ||
        !(warm >= 0 && warm <= 600) || n_conns < 1 || n_conns > MAX_CONNS)
        usage();

    /* http://HOST:PORT/PATH */
    const char *url = argv[optind];
    if (strncmp(url, "http://", 7) != 0)
        usage();
    const char *hp = url + 7, *slash = strchr(hp, '/');
    const char *path = slash ? slash : "/";
    size_t hpl = slash ? (size_t)(slash - hp) : strlen(hp);
    char host[256], port[16] = "80";
    if (hpl == 0 || hpl >= sizeof host)
        usage();
    memcpy(host, hp, hpl);
    host[hpl] = 0;
    char *colon = strrchr(host, ':');
    if (colon) {
        snprintf(port, sizeof port, "%s", colon + 1);
        *colon = 0;
    }

    run r = {0};
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai;
    int gai = getaddrinfo(host, port, &hints, &ai);
    if (gai != 0) {
        fprintf(stderr, "gw_load: %s: %s\n", host, gai_strerror(gai));
        return 1;
    }
    memcpy(&r.addr, ai->ai_addr, ai->ai_addrlen);
    r.addrlen = ai->ai_addrlen;
    freeaddrinfo(ai);

    /* The request, built once. */
    size_t cap = 1024 + body_len + strlen(path) + strlen(host);
    for (int k = 0; k < n_headers; k++)
        cap += strlen(headers[k]) + 2;
    char *req = malloc(cap);
    if (!req)
        die("malloc");
    int len = snprintf(req, cap,
                       "POST %s HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: application/json\r\n"
                       "Content-Length: %zu\r\n",
                       path, host, port, body_len);
    for (int k = 0; k < n_headers; k++)
        len += snprintf(req + len, cap - (size_t)len, "%s\r\n", headers[k]);
    len += snprintf(req + len, cap - (size_t)len, "\r\n");
    memcpy(req + len, body, body_len);
    r.req = req;
    r.req_len = (size_t)len + body_len;
    r.match = match;

    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_TIMERSLACK, 1UL); /* wake on the schedule, not 50 us later */
    r.ep = epoll_create1(EPOLL_CLOEXEC);
    if (r.ep < 0)
        die("epoll_create1");
    r.n_conns = n_conns;
    r.conns = calloc((size_t)n_conns, sizeof *r.conns);
    r.idle = calloc((size_t)n_conns, sizeof *r.idle);
    if (!r.conns || !r.idle)
        die("calloc");
    for (int i = 0; i < n_conns; i++)
        if (conn_open(&r, i) != 0)
            die("connect");

    uint64_t total = (uint64_t)(rate * (warm + seconds));
    r.cap = (size_t)(rate * seconds) + 16;
    r.lat = malloc(r.cap * sizeof *r.lat);
    r.svc = malloc(r.cap * sizeof *r.svc);
    r.late = malloc(r.cap * sizeof *r.late);
    if (!r.lat || !r.svc || !r.late)
        die("malloc");
    double interval = 1e9 / rate;
    uint64_t t0 = now_ns() + 1000000; /* 1 ms to settle */
    r.warm_end = t0 + (uint64_t)(warm * 1e9);
    uint64_t next = 0, measured_sent = 0;
    uint64_t last_due = t0 + (uint64_t)((double)(total ? total - 1 : 0) * interval);
    struct epoll_event evs[64];

    for (;;) {
        uint64_t t = now_ns();
        while (next < total && r.n_idle > 0) {
            uint64_t due = t0 + (uint64_t)((double)next * interval);
            if (due > t)
                break;
            if (due >= r.warm_end)
                measured_sent++;
            send_request(&r, due, t);
            next++;
        }
        int busy = r.n_conns - r.n_idle - r.n_dead;
        if (next >= total && busy == 0)
            break;
        if (t > last_due + DRAIN_NS)
            break;
        uint64_t wait_ns = 10000000; /* re-check the drain deadline now and then */
        if (next < total && r.n_idle > 0) {
            uint64_t due = t0 + (uint64_t)((double)next * interval);
            wait_ns = due > t ? due - t : 0;
        }
        struct timespec ts = {.tv_sec = (time_t)(wait_ns / 1000000000ULL),
                              .tv_nsec = (long)(wait_ns % 1000000000ULL)};
        int n = epoll_pwait2(r.ep, evs, 64, &ts, NULL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_pwait2");
        }
        uint64_t tr = n > 0 ? now_ns() : 0;
        for (int k = 0; k < n; k++) {
            int i = (int)evs[k].data.u32;
            conn *c = &r.conns[i];
            if (c->fd < 0)
                continue;
            if (evs[k].events & EPOLLOUT) {
                if (c->busy && conn_flush(&r, i) != 0) {
                    conn_reset(&r, i, true);
                    continue;
                }
                if (c->out_off == r.req_len)
                    want_write(&r, i, false);
            }
            if (evs[k].events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP))
                on_readable(&r, i, tr);
        }
    }

    uint64_t unfinished = 0;
    for (int i = 0; i < r.n_conns; i++)
        if (r.conns[i].busy && r.conns[i].due >= r.warm_end)
            unfinished++;
    unfinished += total - next; /* never sent: every connection stayed busy */
    double achieved = (double)r.n_lat / seconds;
    qsort(r.lat, r.n_lat, sizeof *r.lat, cmp_u64);
    qsort(r.svc, r.n_lat, sizeof *r.svc, cmp_u64);
    qsort(r.late, r.n_lat, sizeof *r.late, cmp_u64);
    printf("rate=%.0f seconds=%g conns=%d sent=%llu ok=%llu non2xx=%llu errors=%llu "
           "unfinished=%llu achieved_rps=%.1f p50_us=%.1f p90_us=%.1f p99_us=%.1f "
           "p999_us=%.1f max_us=%.1f svc_p50_us=%.1f svc_p99_us=%.1f late_p99_us=%.1f "
           "matched=%llu sent_all=%llu\n",
           rate, seconds, n_conns, (unsigned long long)measured_sent, (unsigned long long)r.ok,
           (unsigned long long)r.non2xx, (unsigned long long)r.errors,
           (unsigned long long)unfinished, achieved, pct_us(r.lat, r.n_lat, 0.50),
           pct_us(r.lat, r.n_lat, 0.90), pct_us(r.lat, r.n_lat, 0.99),
           pct_us(r.lat, r.n_lat, 0.999), pct_us(r.lat, r.n_lat, 1.0),
           pct_us(r.svc, r.n_lat, 0.50), pct_us(r.svc, r.n_lat, 0.99),
           pct_us(r.late, r.n_lat, 0.99), (unsigned long long)r.matched,
           (unsigned long long)next);
    for (int i = 0; i < r.n_conns; i++)
        if (r.conns[i].fd >= 0)
            close(r.conns[i].fd);
    close(r.ep);
    free(r.lat);
    free(r.svc);
    free(r.late);
    free(r.conns);
    free(r.idle);
    free(req);
    free(body_file);
    return 0;
}
