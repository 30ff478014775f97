/*
 * upstream_bench: the latency gw_upstream adds to a request, against a plain
 * libcurl loop to the same local keep-alive server.
 *
 *   build/bench/upstream_bench [REQUESTS] [RATE_PER_S] [SECONDS]
 *
 * The server is in-process: one thread per connection, a fixed 11-byte JSON
 * answer written with one send. Three measurements, each after a warm-up:
 *   direct   curl_easy_perform in a loop on one easy handle (the peer: the
 *            least a curl client can do per request);
 *   gw seq   gw_upstream_start, then wait for on_done on a condition
 *            variable (a hand-off to the loop thread and back, as the gateway
 *            pays it), one request at a time;
 *   paced    requests due at RATE_PER_S on a fixed schedule (open loop,
 *            default 10000/s) for SECONDS, latency counted from the due time
 *            (a late start counts against the client): "direct paced" runs
 *            each request with curl_easy_perform in the scheduling thread,
 *            "gw paced" starts it with gw_upstream_start and goes on.
 * Each request is a POST with a 300-byte JSON body and 4 headers. Prints
 * p50/p90/p99/max, the added latency (gw minus direct) and the process CPU
 * time per request (server included), which is steadier than latency on a
 * shared machine. PRODUCT.md's target: the gateway adds under 0.3 ms p99 at
 * 10k requests/s.
 */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "gateway/gw_upstream.h"
#include "platform/pl_time.h"

/* ---- server ---- */

static atomic_bool g_stop;
static int g_port;

static void *conn_main(void *arg)
{
    int fd = (int)(intptr_t)arg;
    static const char reply[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                "Content-Length: 11\r\n\r\n{\"ok\":true}";
    char buf[65536];
    size_t len = 0;
    while (!atomic_load(&g_stop)) {
        ssize_t n = recv(fd, buf + len, sizeof buf - len, 0);
        if (n <= 0)
            break;
        len += (size_t)n;
        for (;;) {
            char *end = memmem(buf, len, "\r\n\r\n", 4);
            if (!end)
                break;
            size_t head = (size_t)(end - buf) + 4, clen = 0;
            char *cl = memmem(buf, head, "Content-Length:", 15);
            if (cl)
                clen = strtoul(cl + 15, NULL, 10);
            if (len < head + clen)
                break;
            if (send(fd, reply, sizeof reply - 1, MSG_NOSIGNAL) < 0)
                goto out;
            memmove(buf, buf + head + clen, len - head - clen);
            len -= head + clen;
        }
        if (len == sizeof buf)
            break;
    }
out:
    close(fd);
    return NULL;
}

static void *accept_main(void *arg)
{
    int lfd = (int)(intptr_t)arg;
    while (!atomic_load(&g_stop)) {
        struct pollfd p = {.fd = lfd, .events = POLLIN};
        if (poll(&p, 1, 50) <= 0)
            continue;
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0)
            continue;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        pthread_t t;
        pthread_create(&t, NULL, conn_main, (void *)(intptr_t)fd);
        pthread_detach(t);
    }
    return NULL;
}

static pthread_t server_start(void)
{
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 1024) != 0) {
        perror("server");
        exit(1);
    }
    socklen_t al = sizeof a;
    getsockname(lfd, (struct sockaddr *)&a, &al);
    g_port = ntohs(a.sin_port);
    pthread_t t;
    pthread_create(&t, NULL, accept_main, (void *)(intptr_t)lfd);
    return t;
}

/* ---- the request ---- */

static char g_url[64];
static char g_body[301];
static const gw_header g_headers[] = {{"Content-Type", "application/json"},
                                      {"Authorization", "Bearer sk-bench-0000000000000000"},
                                      {"Accept", "application/json"},
                                      {"User-Agent", "outpost-bench"}};

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

typedef struct pct {
    double p50, p90, p99, max;
} pct;

static pct percentiles(uint64_t *ns, size_t n)
{
    qsort(ns, n, sizeof *ns, cmp_u64);
    pct p = {ns[n / 2] / 1e3, ns[n * 9 / 10] / 1e3, ns[n * 99 / 100] / 1e3, ns[n - 1] / 1e3};
    return p;
}

static void print_row(const char *name, pct p, size_t n)
{
    printf("%-10s %8zu %9.1f %9.1f %9.1f %9.1f\n", name, n, p.p50, p.p90, p.p99, p.max);
}

static size_t sink(char *p, size_t s, size_t n, void *u)
{
    return s * n;
}

static uint64_t cpu_ns(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000u +
           (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000u;
}

static struct curl_slist *g_direct_headers;

/* The loop thread's CPU clock, learned from a timer callback running on it. */
static clockid_t g_loop_clock;
static atomic_bool g_loop_clock_set;

static void learn_loop_clock(void *ctx, bool cancelled)
{
    if (pthread_getcpuclockid(pthread_self(), &g_loop_clock) == 0)
        atomic_store(&g_loop_clock_set, true);
}

static uint64_t loop_cpu_ns(void)
{
    struct timespec ts = {0};
    if (atomic_load(&g_loop_clock_set))
        clock_gettime(g_loop_clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static CURL *direct_easy(void)
{
    CURL *e = curl_easy_init();
    struct curl_slist *h = NULL;
    char line[256];
    for (size_t i = 0; i < sizeof g_headers / sizeof g_headers[0]; i++) {
        snprintf(line, sizeof line, "%s: %s", g_headers[i].name, g_headers[i].value);
        h = curl_slist_append(h, line);
    }
    h = curl_slist_append(h, "Expect:");
    curl_easy_setopt(e, CURLOPT_URL, g_url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, g_body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)strlen(g_body));
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    g_direct_headers = h;
    return e;
}

static void direct_free(CURL *e)
{
    curl_slist_free_all(g_direct_headers);
    curl_easy_cleanup(e);
}

static void direct(uint64_t *ns, size_t n)
{
    CURL *e = direct_easy();
    for (size_t i = 0; i < n + n / 10; i++) {
        uint64_t t0 = pl_time_mono_ns();
        CURLcode rc = curl_easy_perform(e);
        uint64_t t1 = pl_time_mono_ns();
        if (rc != CURLE_OK) {
            fprintf(stderr, "direct: %s\n", curl_easy_strerror(rc));
            exit(1);
        }
        if (i >= n / 10)   /* the first tenth warms up */
            ns[i - n / 10] = t1 - t0;
    }
    direct_free(e);
}

static void sleep_until(uint64_t due)
{
    if (pl_time_mono_ns() < due) {
        struct timespec ts = {(time_t)(due / 1000000000u), (long)(due % 1000000000u)};
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
    }
}

static void direct_paced(double rate, double seconds, uint64_t *ns)
{
    size_t n = (size_t)(rate * seconds);
    CURL *e = direct_easy();
    curl_easy_perform(e);   /* connect */
    uint64_t t0 = pl_time_mono_ns() + 1000000, step = (uint64_t)(1e9 / rate);
    for (size_t i = 0; i < n; i++) {
        uint64_t due = t0 + i * step;
        sleep_until(due);
        if (curl_easy_perform(e) != CURLE_OK) {
            fprintf(stderr, "direct paced failed\n");
            exit(1);
        }
        ns[i] = pl_time_mono_ns() - due;
    }
    direct_free(e);
}

/* One request in flight through gw_upstream. */
typedef struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    gw_up_err err;
    int status;
    uint64_t t_start, t_done;
    uint64_t *slot;          /* paced: where the latency goes */
    atomic_size_t *n_done;
} waiter;

static int w_head(void *ctx, int status, const char *ct, const gw_header *h, size_t n)
{
    ((waiter *)ctx)->status = status;
    return 0;
}

static void w_done_seq(void *ctx, gw_up_err err, const char *msg)
{
    waiter *w = ctx;
    pthread_mutex_lock(&w->mu);
    w->err = err;
    w->t_done = pl_time_mono_ns();
    w->done = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    if (err != GW_UP_OK)
        fprintf(stderr, "gw: %s\n", msg);
}

static gw_upstream_req bench_req(void)
{
    gw_upstream_req q = {.method = "POST", .url = g_url, .headers = g_headers,
                         .n_headers = sizeof g_headers / sizeof g_headers[0], .body = g_body,
                         .body_len = strlen(g_body), .timeout_ms = 10000};
    return q;
}

static void gw_seq(gw_upstream *u, uint64_t *ns, size_t n)
{
    waiter w = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    gw_response_cb cb = {.ctx = &w, .on_head = w_head, .on_done = w_done_seq};
    gw_upstream_req q = bench_req();
    char err[256];
    for (size_t i = 0; i < n + n / 10; i++) {
        w.done = false;
        uint64_t t0 = pl_time_mono_ns();
        if (gw_upstream_start(u, &q, &cb, NULL, err, sizeof err) != 0) {
            fprintf(stderr, "gw: %s\n", err);
            exit(1);
        }
        pthread_mutex_lock(&w.mu);
        while (!w.done)
            pthread_cond_wait(&w.cv, &w.mu);
        pthread_mutex_unlock(&w.mu);
        uint64_t t1 = pl_time_mono_ns();
        if (w.err != GW_UP_OK || w.status != 200)
            exit(1);
        if (i >= n / 10)
            ns[i - n / 10] = t1 - t0;
    }
}

typedef struct paced_req {
    uint64_t due, started;
    uint64_t *slot, *from_start;
    atomic_size_t *n_done;
    int status;
} paced_req;

static int p_head(void *ctx, int status, const char *ct, const gw_header *h, size_t n)
{
    ((paced_req *)ctx)->status = status;
    return 0;
}

static void p_done(void *ctx, gw_up_err err, const char *msg)
{
    paced_req *p = ctx;
    uint64_t now = pl_time_mono_ns();
    *p->slot = err == GW_UP_OK && p->status == 200 ? now - p->due : UINT64_MAX;
    *p->from_start = now - p->started;
    atomic_fetch_add(p->n_done, 1);
}

static size_t gw_paced(gw_upstream *u, double rate, double seconds, uint64_t *ns, uint64_t *ns_start,
                       size_t *failed)
{
    size_t n = (size_t)(rate * seconds);
    paced_req *reqs = calloc(n, sizeof *reqs);
    atomic_size_t n_done = 0;
    gw_upstream_req q = bench_req();
    char err[256];
    uint64_t t0 = pl_time_mono_ns() + 1000000, step = (uint64_t)(1e9 / rate);
    for (size_t i = 0; i < n; i++) {
        reqs[i].due = t0 + i * step;
        reqs[i].slot = &ns[i];
        reqs[i].from_start = &ns_start[i];
        reqs[i].n_done = &n_done;
        sleep_until(reqs[i].due);
        gw_response_cb cb = {.ctx = &reqs[i], .on_head = p_head, .on_done = p_done};
        reqs[i].started = pl_time_mono_ns();
        if (gw_upstream_start(u, &q, &cb, NULL, err, sizeof err) != 0) {
            fprintf(stderr, "gw: %s\n", err);
            exit(1);
        }
    }
    while (atomic_load(&n_done) < n)
        usleep(1000);
    double took = (pl_time_mono_ns() - t0) / 1e9;
    printf("gw paced: %zu requests in %.2f s (%.0f/s achieved)\n", n, took, n / took);
    size_t ok = 0;
    *failed = 0;
    for (size_t i = 0; i < n; i++) {
        if (ns[i] == UINT64_MAX)
            (*failed)++;
        else
            ns[ok++] = ns[i];
    }
    free(reqs);
    return ok;
}

int main(int argc, char **argv)
{
    size_t n = argc > 1 ? (size_t)atol(argv[1]) : 20000;
    double rate = argc > 2 ? atof(argv[2]) : 10000;
    double seconds = argc > 3 ? atof(argv[3]) : 2;
    if (n < 100 || rate <= 0 || seconds <= 0) {
        fprintf(stderr, "usage: upstream_bench [REQUESTS>=100] [RATE_PER_S] [SECONDS]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_TIMERSLACK, 1UL);   /* the schedule, not the kernel's 50 us slack */
    curl_global_init(CURL_GLOBAL_DEFAULT);
    pthread_t srv = server_start();
    snprintf(g_url, sizeof g_url, "http://127.0.0.1:%d/v1/chat/completions", g_port);
    memset(g_body, 'x', sizeof g_body - 1);
    memcpy(g_body, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"", 51);
    memcpy(g_body + sizeof g_body - 5, "\"}]}", 4);

    double load[3] = {0};
    if (getloadavg(load, 3) < 0)
        load[0] = -1;
    printf("upstream_bench: %zu sequential requests each way, then %.0f/s for %.1f s "
           "(load average %.2f)\n", n, rate, seconds, load[0]);
    printf("%-10s %8s %9s %9s %9s %9s   (microseconds; ..start: gw paced counted from the\n"
           "%58s start call, not the due time)\n", "", "n", "p50", "p90", "p99", "max", "");

    uint64_t *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
    uint64_t c0 = cpu_ns();
    direct(a, n);
    double cpu_direct = (double)(cpu_ns() - c0) / (double)(n + n / 10) / 1e3;
    pct pd = percentiles(a, n);
    print_row("direct", pd, n);

    char err[256];
    gw_upstream_opts o = {.threads = 1};
    gw_upstream *u = gw_upstream_new(&o, err, sizeof err);
    if (!u) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    gw_upstream_after(u, 0, learn_loop_clock, NULL);
    while (!atomic_load(&g_loop_clock_set))
        usleep(1000);
    c0 = cpu_ns();
    uint64_t l0 = loop_cpu_ns();
    gw_seq(u, b, n);
    double cpu_loop = (double)(loop_cpu_ns() - l0) / (double)(n + n / 10) / 1e3;
    double cpu_gw = (double)(cpu_ns() - c0) / (double)(n + n / 10) / 1e3;
    pct pg = percentiles(b, n);
    print_row("gw seq", pg, n);

    size_t pn = (size_t)(rate * seconds), failed = 0;
    uint64_t *c = malloc(pn * sizeof *c), *d = malloc(pn * sizeof *d), *e = malloc(pn * sizeof *e);
    direct_paced(rate, seconds, d);
    pct pdp = percentiles(d, pn);
    print_row("dir paced", pdp, pn);
    size_t ok = gw_paced(u, rate, seconds, c, e, &failed);
    pct pgp = {0};
    if (ok) {
        pgp = percentiles(c, ok);
        print_row("gw paced", pgp, ok);
        print_row(" ..start", percentiles(e, pn), pn);
    }
    if (failed)
        printf("gw paced: %zu failed\n", failed);
    printf("added by gw_upstream: seq p50 %+.1f us, p99 %+.1f us; paced p50 %+.1f us, p99 %+.1f us\n",
           pg.p50 - pd.p50, pg.p99 - pd.p99, pgp.p50 - pdp.p50, pgp.p99 - pdp.p99);
    printf("process CPU per request (server included): direct %.1f us, gw %.1f us; "
           "gw_upstream's loop thread alone: %.1f us\n", cpu_direct, cpu_gw, cpu_loop);
    gw_upstream_stats st;
    gw_upstream_stats_get(u, &st);
    printf("connections opened by gw_upstream: %llu for %llu requests\n",
           (unsigned long long)st.connections_opened, (unsigned long long)st.started);
    gw_upstream_free(u);
    atomic_store(&g_stop, true);
    pthread_join(srv, NULL);
    free(a);
    free(b);
    free(c);
    free(d);
    free(e);
    return failed ? 1 : 0;
}
