/*
 * gw_upstream: loops of curl multi handles. See gw_upstream.h for the
 * contract and docs/decisions/0003-http-client.md for the design.
 *
 * Reading guide
 *   - A call is one malloc'd block: the struct, then the request headers as a
 *     ready-made curl_slist, then URL, method, header lines and body. curl
 *     reads all of it in place (no copies inside curl but the URL).
 *   - A slot is a loop's reusable transfer: an easy handle plus the buffers
 *     for parsing a response head. Slots live on a free list per loop and are
 *     curl_easy_reset between calls, so a steady stream of requests allocates
 *     one block per call and nothing else of ours.
 *   - Each loop has a command queue (calls to start or cancel, timers to arm)
 *     under a mutex, a timer heap touched only by its thread, and a list of
 *     running calls. Callbacks never touch a multi handle: whatever they ask
 *     for (start, cancel, after) goes through the queue, so no curl function
 *     is ever re-entered.
 */
#include "gateway/gw_upstream.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdalign.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "platform/pl_err.h"
#include "platform/pl_log.h"
#include "platform/pl_time.h"

#define GW_MAX_THREADS 64
#define GW_DEFAULT_CONNECT_MS 10000
#define GW_IDLE_POLL_MS 5000
#define GW_NOT_IN_HEAP SIZE_MAX
#define GW_HEAD_BUF_INITIAL 4096u
#define GW_MAX_METHOD 32u

enum { CMD_START = 1u, CMD_CANCEL = 2u };

/* Why a callback told curl to stop (curl then reports CURLE_WRITE_ERROR). */
enum { FAIL_NONE = 0, FAIL_ABORT, FAIL_HEAD_BIG, FAIL_NOMEM };

typedef struct gw_loop gw_loop;

/* A heap entry: a user timer (gw_upstream_after, malloc'd) or a call's
 * first-byte deadline (embedded in the call; call != NULL). */
typedef struct gw_timer {
    uint64_t due_ns;
    uint64_t seq;            /* ties in due time run in the order set */
    size_t idx;              /* position in the heap, or GW_NOT_IN_HEAP */
    struct gw_timer *next;   /* the loop's incoming list (under its mutex) */
    void (*fn)(void *ctx, bool cancelled);
    void *ctx;
    gw_upstream_call *call;
} gw_timer;

typedef struct gw_slot {
    struct gw_slot *next_free;
    CURL *easy;
    char *hbuf;              /* "name\0value\0" per header of the head being read */
    size_t hlen, hcap;
    size_t head_bytes;       /* bytes of the current head as received */
    size_t hn;
    uint32_t hoff[GW_UP_MAX_HEADERS][2];    /* name, value offsets into hbuf */
    gw_header hv[GW_UP_MAX_HEADERS];        /* built for on_head */
    char errbuf[CURL_ERROR_SIZE];
} gw_slot;

struct gw_upstream_call {
    atomic_uint refs;
    atomic_bool done;        /* on_done has been decided (set before it runs) */
    atomic_bool cancel;      /* gw_upstream_cancel was called */
    gw_loop *loop;

    /* Under loop->mu. */
    gw_upstream_call *qnext;
    unsigned pending;        /* CMD_* waiting in the queue */
    bool queued;

    /* Loop thread only. A call taken off the queue may be queued again (a
     * cancel) while the loop works through what it took, so that batch has
     * its own link. */
    gw_upstream_call *rnext;
    unsigned taken;          /* CMD_* taken off the queue this round */
    gw_upstream_call *anext, *aprev;   /* running calls */
    gw_slot *slot;
    gw_timer fb;
    bool running, finished, head_sent, sent;
    bool heard;              /* a response line arrived */
    int fail;
    int status;

    /* The request, immutable after gw_upstream_start. */
    gw_response_cb cb;
    const char *method;
    const char *url;
    struct curl_slist *hdrs;
    const char *body;
    size_t body_len;
    bool has_body, is_head, is_post, is_get, https;
    int timeout_ms, connect_timeout_ms, first_byte_timeout_ms;
    uint64_t start_ns;
};

struct gw_loop {
    gw_upstream *u;
    int index;
    CURLM *multi;
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu;
    bool mu_ready;

    /* Under mu. */
    gw_upstream_call *q_head, *q_tail;
    gw_timer *t_in;
    bool sleeping;           /* in (or about to enter) curl_multi_poll */
    bool quit;               /* gw_upstream_free asked the loop to end */
    bool closed;             /* the loop takes no more work */

    atomic_uint_fast64_t load;   /* calls started here and not finished */

    /* Loop thread only. */
    gw_timer **heap;
    size_t heap_n, heap_cap;
    gw_slot *free_slots;
    gw_upstream_call *active;
    char msg[CURL_ERROR_SIZE + 512];   /* on_done's message (one on_done at a time) */
};

struct gw_upstream {
    gw_loop *loops;
    int n_loops;
    CURLSH *share;
    pthread_mutex_t share_mu[CURL_LOCK_DATA_LAST];
    char *ca_file;
    atomic_bool shutting_down;
    atomic_uint rr;
    atomic_uint_fast64_t seq;
    atomic_uint_fast64_t in_flight, started, conns, timers;
};

/* The loop this thread runs, so gw_upstream_after from a callback stays on
 * its loop. */
static _Thread_local gw_loop *tl_loop;

const char *gw_up_err_name(gw_up_err e)
{
    switch (e) {
    case GW_UP_OK: return "ok";
    case GW_UP_CONNECT: return "connect";
    case GW_UP_TIMEOUT: return "timeout";
    case GW_UP_TLS: return "tls";
    case GW_UP_PROTOCOL: return "protocol";
    case GW_UP_CANCELLED: return "cancelled";
    case GW_UP_ABORTED: return "aborted";
    case GW_UP_INTERNAL: return "internal";
    }
    return "unknown";
}

/* ---- refcount -------------------------------------------------------- */

static void call_ref(gw_upstream_call *c)
{
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

void gw_upstream_release(gw_upstream_call *c)
{
    if (c && atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
        free(c);
}

/* ---- timer heap (loop thread only) ----------------------------------- */

static bool timer_less(const gw_timer *a, const gw_timer *b)
{
    return a->due_ns < b->due_ns || (a->due_ns == b->due_ns && a->seq < b->seq);
}

static void heap_set(gw_loop *L, size_t i, gw_timer *t)
{
    L->heap[i] = t;
    t->idx = i;
}

static void heap_up(gw_loop *L, size_t i)
{
    gw_timer *t = L->heap[i];
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!timer_less(t, L->heap[p]))
            break;
        heap_set(L, i, L->heap[p]);
        i = p;
    }
    heap_set(L, i, t);
}

static void heap_down(gw_loop *L, size_t i)
{
    gw_timer *t = L->heap[i];
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        gw_timer *best = t;
        if (l < L->heap_n && timer_less(L->heap[l], best))
            m = l, best = L->heap[l];
        if (l + 1 < L->heap_n && timer_less(L->heap[l + 1], best))
            m = l + 1, best = L->heap[l + 1];
        if (m == i)
            break;
        heap_set(L, i, best);
        i = m;
    }
    heap_set(L, i, t);
}

static int heap_push(gw_loop *L, gw_timer *t)
{
    if (L->heap_n == L->heap_cap) {
        size_t cap = L->heap_cap ? L->heap_cap * 2 : 64;
        gw_timer **h = realloc(L->heap, cap * sizeof *h);
        if (!h)
            return -1;
        L->heap = h;
        L->heap_cap = cap;
    }
    heap_set(L, L->heap_n++, t);
    heap_up(L, L->heap_n - 1);
    return 0;
}

static void heap_remove(gw_loop *L, gw_timer *t)
{
    size_t i = t->idx;
    if (i == GW_NOT_IN_HEAP)
        return;
    t->idx = GW_NOT_IN_HEAP;
    gw_timer *last = L->heap[--L->heap_n];
    if (i == L->heap_n)
        return;
    heap_set(L, i, last);
    if (i > 0 && timer_less(last, L->heap[(i - 1) / 2]))
        heap_up(L, i);
    else
        heap_down(L, i);
}

static gw_timer *heap_pop(gw_loop *L)
{
    if (L->heap_n == 0)
        return NULL;
    gw_timer *t = L->heap[0];
    heap_remove(L, t);
    return t;
}

/* ---- queue (under loop->mu) ------------------------------------------ */

/* Puts c on L's queue with cmd; the queue holds a reference while c is on
 * it. Returns whether the loop must be woken. */
static bool enqueue_locked(gw_loop *L, gw_upstream_call *c, unsigned cmd)
{
    c->pending |= cmd;
    if (!c->queued) {
        c->queued = true;
        call_ref(c);
        c->qnext = NULL;
        if (L->q_tail)
            L->q_tail->qnext = c;
        else
            L->q_head = c;
        L->q_tail = c;
    }
    bool wake = L->sleeping;
    L->sleeping = false;   /* one wake-up is enough until the loop sleeps again */
    return wake;
}

static gw_loop *pick_loop(gw_upstream *u)
{
    if (u->n_loops == 1)
        return &u->loops[0];
    unsigned start = atomic_fetch_add_explicit(&u->rr, 1, memory_order_relaxed);
    gw_loop *best = NULL;
    uint_fast64_t best_load = 0;
    for (int i = 0; i < u->n_loops; i++) {
        gw_loop *L = &u->loops[(start + (unsigned)i) % (unsigned)u->n_loops];
        uint_fast64_t l = atomic_load_explicit(&L->load, memory_order_relaxed);
        if (!best || l < best_load) {
            best = L;
            best_load = l;
        }
    }
    return best;
}

/* ---- request checks -------------------------------------------------- */

static bool is_tchar(unsigned char ch)
{
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'))
        return true;
    return ch != 0 && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static bool is_token(const char *s, size_t max)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (n >= max || !is_tchar((unsigned char)s[n]))
            return false;
    return n > 0;
}

/* The scheme://authority span of url (userinfo left out), for messages. */
static void url_origin(const char *url, const char **scheme, int *scheme_len, const char **host,
                       int *host_len)
{
    const char *p = strstr(url, "://");
    *scheme = url;
    *scheme_len = p ? (int)(p - url) : 0;
    const char *a = p ? p + 3 : url;
    size_t alen = strcspn(a, "/?#");
    for (size_t i = alen; i > 0; i--) {
        if (a[i - 1] == '@') {
            alen -= i;
            a += i;
            break;
        }
    }
    *host = a;
    *host_len = (int)alen;
}

static int check_url(const char *url, bool *https, char *err, size_t errlen)
{
    size_t skip;
    if (strncasecmp(url, "http://", 7) == 0) {
        skip = 7;
        *https = false;
    } else if (strncasecmp(url, "https://", 8) == 0) {
        skip = 8;
        *https = true;
    } else {
        pl_errf(err, errlen, "upstream URL must start with http:// or https://");
        return -1;
    }
    for (const unsigned char *p = (const unsigned char *)url; *p; p++) {
        if (*p <= 0x20 || *p == 0x7f) {
            pl_errf(err, errlen, "upstream URL holds a space or control character");
            return -1;
        }
    }
    const char *sch, *host;
    int sl, hl;
    url_origin(url, &sch, &sl, &host, &hl);
    if (hl == 0 || host[0] == ':' || host < url + skip) {
        pl_errf(err, errlen, "upstream URL has no host");
        return -1;
    }
    return 0;
}

static bool value_ok(const char *v)
{
    for (const unsigned char *p = (const unsigned char *)v; *p; p++)
        if ((*p < 0x20 && *p != '\t') || *p == 0x7f)
            return false;
    return true;
}

/* Headers that describe the connection or the framing: set by curl only. */
static bool header_dropped(const char *name)
{
    static const char *const drop[] = {"content-length", "transfer-encoding", "connection",
                                       "keep-alive", "proxy-connection", "te", "upgrade", "expect"};
    for (size_t i = 0; i < sizeof drop / sizeof drop[0]; i++)
        if (strcasecmp(name, drop[i]) == 0)
            return true;
    return false;
}

static void trim_span(const char **s, size_t *n)
{
    while (*n && (**s == ' ' || **s == '\t'))
        (*s)++, (*n)--;
    while (*n && ((*s)[*n - 1] == ' ' || (*s)[*n - 1] == '\t'))
        (*n)--;
}

/* ---- gw_upstream_start ----------------------------------------------- */

int gw_upstream_start(gw_upstream *u, const gw_upstream_req *req, const gw_response_cb *cb,
                      gw_upstream_call **out, char *err, size_t errlen)
{
    if (out)
        *out = NULL;
    if (!u || !req || !cb || !cb->on_done || !req->url || !req->method) {
        pl_errf(err, errlen, "gw_upstream_start: missing request, URL, method or on_done");
        return -1;
    }
    if (atomic_load_explicit(&u->shutting_down, memory_order_acquire)) {
        pl_errf(err, errlen, "upstream client is shutting down");
        return -1;
    }
    if (!is_token(req->method, GW_MAX_METHOD)) {
        pl_errf(err, errlen, "bad HTTP method");
        return -1;
    }
    bool https = false;
    if (check_url(req->url, &https, err, errlen) != 0)
        return -1;
    if ((!req->body && req->body_len) || (req->n_headers && !req->headers)) {
        pl_errf(err, errlen, "gw_upstream_start: body or headers missing for their length");
        return -1;
    }
    if (req->timeout_ms < 0 || req->connect_timeout_ms < 0 || req->first_byte_timeout_ms < 0) {
        pl_errf(err, errlen, "negative timeout");
        return -1;
    }

    bool is_head = strcmp(req->method, "HEAD") == 0;
    bool is_get = strcmp(req->method, "GET") == 0;
    bool is_post = strcmp(req->method, "POST") == 0;
    bool has_body = !is_head && (req->body != NULL || is_post || strcmp(req->method, "PUT") == 0 ||
                                 strcmp(req->method, "PATCH") == 0);
    bool has_ctype = false;
    size_t kept = 0, hbytes = 0;
    for (size_t i = 0; i < req->n_headers; i++) {
        const gw_header *h = &req->headers[i];
        if (!h->name || !is_token(h->name, 256)) {
            pl_errf(err, errlen, "bad request header name (header %zu)", i);
            return -1;
        }
        if (h->value && !value_ok(h->value)) {
            /* The value may be a credential: say which header, never what. */
            pl_errf(err, errlen, "request header %s holds a control character", h->name);
            return -1;
        }
        if (header_dropped(h->name))
            continue;
        if (strcasecmp(h->name, "content-type") == 0)
            has_ctype = true;
        kept++;
        hbytes += strlen(h->name) + (h->value ? strlen(h->value) : 0) + 3;
    }
    const char *const expect_off = "Expect:", *const ctype_off = "Content-Type:";
    size_t nodes = kept + (has_body ? 2 : 0);
    size_t url_len = strlen(req->url), method_len = strlen(req->method);

    size_t size = sizeof(gw_upstream_call) + nodes * sizeof(struct curl_slist) + url_len + 1 +
                  method_len + 1 + hbytes + req->body_len + 1;
    gw_upstream_call *c = malloc(size);
    if (!c) {
        pl_errf(err, errlen, "out of memory");
        return -1;
    }
    memset(c, 0, sizeof *c);
    /* The struct's size is a multiple of its alignment, which is at least a
     * pointer's: the slist array right behind it is aligned. */
    _Static_assert(sizeof(gw_upstream_call) % alignof(struct curl_slist) == 0, "slist alignment");
    struct curl_slist *node = (struct curl_slist *)(c + 1);
    char *p = (char *)(node + nodes);

    memcpy(p, req->url, url_len + 1);
    c->url = p;
    p += url_len + 1;
    memcpy(p, req->method, method_len + 1);
    c->method = p;
    p += method_len + 1;
    /* curl only reads a header list: one built in place spares an
     * allocation per header (curl_slist_append). */
    size_t k = 0;
    for (size_t i = 0; i < req->n_headers; i++) {
        const gw_header *h = &req->headers[i];
        if (header_dropped(h->name))
            continue;
        const char *v = h->value ? h->value : "";
        size_t vn = strlen(v), nn = strlen(h->name);
        trim_span(&v, &vn);
        node[k].data = p;
        memcpy(p, h->name, nn);
        p += nn;
        if (vn == 0) {
            *p++ = ';';   /* curl's spelling of "send this header empty" */
        } else {
            *p++ = ':';
            *p++ = ' ';
            memcpy(p, v, vn);
            p += vn;
        }
        *p++ = '\0';
        k++;
    }
    if (has_body) {
        node[k++].data = (char *)expect_off;   /* no 100-continue round trip */
        if (!has_ctype)
            node[k++].data = (char *)ctype_off;   /* not curl's form default */
    }
    for (size_t i = 0; i < k; i++)
        node[i].next = i + 1 < k ? &node[i + 1] : NULL;
    c->hdrs = k ? node : NULL;
    if (req->body_len)
        memcpy(p, req->body, req->body_len);
    p[req->body_len] = '\0';
    c->body = p;
    c->body_len = req->body_len;

    c->cb = *cb;
    c->has_body = has_body;
    c->is_head = is_head;
    c->is_get = is_get;
    c->is_post = is_post;
    c->https = https;
    c->timeout_ms = req->timeout_ms;
    c->connect_timeout_ms = req->connect_timeout_ms ? req->connect_timeout_ms : GW_DEFAULT_CONNECT_MS;
    c->first_byte_timeout_ms = req->first_byte_timeout_ms;
    c->start_ns = pl_time_mono_ns();
    c->fb.idx = GW_NOT_IN_HEAP;
    c->fb.call = c;
    atomic_init(&c->refs, out ? 1u : 0u);
    atomic_init(&c->done, false);
    atomic_init(&c->cancel, false);

    gw_loop *L = pick_loop(u);
    c->loop = L;
    /* Counted before the loop can see the call, so they never go below 0. */
    atomic_fetch_add_explicit(&L->load, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&u->in_flight, 1, memory_order_relaxed);
    pthread_mutex_lock(&L->mu);
    if (L->closed) {
        pthread_mutex_unlock(&L->mu);
        atomic_fetch_sub_explicit(&L->load, 1, memory_order_relaxed);
        atomic_fetch_sub_explicit(&u->in_flight, 1, memory_order_relaxed);
        free(c);
        pl_errf(err, errlen, "upstream client is shutting down");
        return -1;
    }
    if (out)
        *out = c;   /* before the loop may run the call and drop its references */
    bool wake = enqueue_locked(L, c, CMD_START);
    pthread_mutex_unlock(&L->mu);
    atomic_fetch_add_explicit(&u->started, 1, memory_order_relaxed);
    if (wake)
        curl_multi_wakeup(L->multi);
    return 0;
}

void gw_upstream_cancel(gw_upstream_call *c)
{
    if (!c || atomic_load_explicit(&c->done, memory_order_acquire))
        return;
    if (atomic_exchange_explicit(&c->cancel, true, memory_order_acq_rel))
        return;
    gw_loop *L = c->loop;
    bool wake = false;
    pthread_mutex_lock(&L->mu);
    /* A closed loop is finishing every call itself. */
    if (!L->closed)
        wake = enqueue_locked(L, c, CMD_CANCEL);
    pthread_mutex_unlock(&L->mu);
    if (wake)
        curl_multi_wakeup(L->multi);
}

/* ---- loop: finishing a call ------------------------------------------ */

static void slot_put(gw_loop *L, gw_slot *s)
{
    /* Drops the options pointing into the finished call; keeps the handle's
     * caches (DNS, TLS session through the share). */
    curl_easy_reset(s->easy);
    s->hlen = s->hn = s->head_bytes = 0;
    s->next_free = L->free_slots;
    L->free_slots = s;
}

static gw_slot *slot_get(gw_loop *L)
{
    gw_slot *s = L->free_slots;
    if (s) {
        L->free_slots = s->next_free;
        return s;
    }
    s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->easy = curl_easy_init();
    if (!s->easy) {
        free(s);
        return NULL;
    }
    return s;
}

static void slot_destroy(gw_slot *s)
{
    curl_easy_cleanup(s->easy);
    free(s->hbuf);
    free(s);
}

static void active_link(gw_loop *L, gw_upstream_call *c)
{
    c->aprev = NULL;
    c->anext = L->active;
    if (L->active)
        L->active->aprev = c;
    L->active = c;
}

static void active_unlink(gw_loop *L, gw_upstream_call *c)
{
    if (c->aprev)
        c->aprev->anext = c->anext;
    else
        L->active = c->anext;
    if (c->anext)
        c->anext->aprev = c->aprev;
    c->anext = c->aprev = NULL;
}

/* Writes "METHOD scheme://host:port: reason" into L->msg; returns it. */
static const char *call_msg(gw_loop *L, const gw_upstream_call *c, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static const char *call_msg(gw_loop *L, const gw_upstream_call *c, const char *fmt, ...)
{
    const char *sch, *host;
    int sl, hl;
    url_origin(c->url, &sch, &sl, &host, &hl);
    int n = snprintf(L->msg, sizeof L->msg, "%s %.*s://%.*s: ", c->method, sl, sch, hl, host);
    if (n < 0 || (size_t)n >= sizeof L->msg)
        return L->msg;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(L->msg + n, sizeof L->msg - (size_t)n, fmt, ap);
    va_end(ap);
    return L->msg;
}

/* Ends c: takes it out of curl, runs on_done once, recycles its slot and
 * drops the loop's reference. */
static void finish(gw_loop *L, gw_upstream_call *c, gw_up_err e, const char *msg)
{
    if (c->finished)
        return;
    c->finished = true;
    heap_remove(L, &c->fb);
    gw_slot *s = c->slot;
    if (c->running) {
        long nc = 0;
        if (curl_easy_getinfo(s->easy, CURLINFO_NUM_CONNECTS, &nc) == CURLE_OK && nc > 0)
            atomic_fetch_add_explicit(&L->u->conns, (uint_fast64_t)nc, memory_order_relaxed);
        curl_multi_remove_handle(L->multi, s->easy);
        active_unlink(L, c);
        c->running = false;
    }
    atomic_store_explicit(&c->done, true, memory_order_release);
    /* Counted out first, so whoever on_done wakes sees the counts without it. */
    atomic_fetch_sub_explicit(&L->u->in_flight, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&L->load, 1, memory_order_relaxed);
    c->cb.on_done(c->cb.ctx, e, msg);
    if (s) {
        c->slot = NULL;
        slot_put(L, s);
    }
    gw_upstream_release(c);   /* the loop's reference */
}

/* ---- loop: curl callbacks -------------------------------------------- */

static int deliver_head(gw_upstream_call *c)
{
    gw_slot *s = c->slot;
    c->head_sent = true;
    heap_remove(c->loop, &c->fb);
    if (c->status <= 0) {
        long code = 0;
        curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &code);
        c->status = (int)code;
    }
    const char *ctype = NULL;
    for (size_t i = 0; i < s->hn; i++) {
        s->hv[i].name = s->hbuf + s->hoff[i][0];
        s->hv[i].value = s->hbuf + s->hoff[i][1];
        if (!ctype && strcasecmp(s->hv[i].name, "content-type") == 0)
            ctype = s->hv[i].value;
    }
    if (c->cb.on_head && c->cb.on_head(c->cb.ctx, c->status, ctype, s->hv, s->hn) != 0) {
        c->fail = FAIL_ABORT;
        return -1;
    }
    return 0;
}

/* Appends n bytes (and a NUL when term) to the slot's header buffer. */
static int hbuf_add(gw_slot *s, const char *p, size_t n, bool term)
{
    size_t need = s->hlen + n + (term ? 1 : 0);
    if (need > s->hcap) {
        size_t cap = s->hcap ? s->hcap : GW_HEAD_BUF_INITIAL;
        while (cap < need)
            cap *= 2;
        char *b = realloc(s->hbuf, cap);
        if (!b)
            return -1;
        s->hbuf = b;
        s->hcap = cap;
    }
    memcpy(s->hbuf + s->hlen, p, n);
    s->hlen += n;
    if (term)
        s->hbuf[s->hlen++] = '\0';
    return 0;
}

/* "HTTP/1.1 200 OK" -> 200; 0 if there are no three digits after the version. */
static int parse_status(const char *line, size_t n)
{
    size_t i = 5;
    while (i < n && line[i] != ' ')
        i++;
    while (i < n && line[i] == ' ')
        i++;
    if (i + 3 > n)
        return 0;
    int v = 0;
    for (size_t j = i; j < i + 3; j++) {
        if (line[j] < '0' || line[j] > '9')
            return 0;
        v = v * 10 + (line[j] - '0');
    }
    if (i + 3 < n && line[i + 3] >= '0' && line[i + 3] <= '9')
        return 0;
    return v;
}

static size_t on_header_line(char *buf, size_t size, size_t nitems, void *ud)
{
    gw_upstream_call *c = ud;
    gw_slot *s = c->slot;
    size_t len = size * nitems;
    if (atomic_load_explicit(&c->cancel, memory_order_relaxed))
        return 0;
    c->heard = true;
    if (c->head_sent)
        return len;   /* trailers */
    if (len >= 5 && memcmp(buf, "HTTP/", 5) == 0) {
        /* A new head (after a 1xx): start over. */
        s->hlen = s->hn = 0;
        s->head_bytes = len;
        c->status = parse_status(buf, len);
        return len;
    }
    s->head_bytes += len;
    if (s->head_bytes > GW_UP_MAX_HEAD_BYTES) {
        c->fail = FAIL_HEAD_BIG;
        return 0;
    }
    size_t n = len;
    while (n && (buf[n - 1] == '\r' || buf[n - 1] == '\n'))
        n--;
    if (n == 0) {
        if (c->status >= 100 && c->status < 200) {
            s->hlen = s->hn = 0;
            c->status = 0;
            return len;
        }
        return deliver_head(c) == 0 ? len : 0;
    }
    if (buf[0] == ' ' || buf[0] == '\t') {
        /* Obsolete line folding: continues the previous value, which is the
         * last string in the buffer. */
        const char *v = buf;
        size_t vn = n;
        trim_span(&v, &vn);
        if (s->hn == 0 || vn == 0)
            return len;
        s->hlen--;   /* reopen the value: drop its NUL */
        if (hbuf_add(s, " ", 1, false) != 0 || hbuf_add(s, v, vn, true) != 0) {
            c->fail = FAIL_NOMEM;
            return 0;
        }
        return len;
    }
    const char *colon = memchr(buf, ':', n);
    if (!colon || colon == buf)
        return len;   /* not a header line: nothing to report */
    const char *name = buf, *v = colon + 1;
    size_t nn = (size_t)(colon - buf), vn = n - nn - 1;
    trim_span(&name, &nn);
    trim_span(&v, &vn);
    if (nn == 0)
        return len;
    if (s->hn == GW_UP_MAX_HEADERS) {
        c->fail = FAIL_HEAD_BIG;
        return 0;
    }
    uint32_t no = (uint32_t)s->hlen;
    if (hbuf_add(s, name, nn, true) != 0) {
        c->fail = FAIL_NOMEM;
        return 0;
    }
    uint32_t vo = (uint32_t)s->hlen;
    if (hbuf_add(s, v, vn, true) != 0) {
        c->fail = FAIL_NOMEM;
        return 0;
    }
    s->hoff[s->hn][0] = no;
    s->hoff[s->hn][1] = vo;
    s->hn++;
    return len;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *ud)
{
    gw_upstream_call *c = ud;
    size_t len = size * nmemb;
    if (atomic_load_explicit(&c->cancel, memory_order_relaxed))
        return CURL_WRITEFUNC_ERROR;
    if (!c->head_sent && deliver_head(c) != 0)
        return CURL_WRITEFUNC_ERROR;
    if (len == 0)
        return 0;
    if (c->cb.on_data && c->cb.on_data(c->cb.ctx, data, len) != 0) {
        c->fail = FAIL_ABORT;
        return CURL_WRITEFUNC_ERROR;
    }
    return len;
}

/* The connection is ready and the request is about to go out. */
static int on_prereq(void *ud, char *primary_ip, char *local_ip, int primary_port, int local_port)
{
    gw_upstream_call *c = ud;
    c->sent = true;
    return CURL_PREREQFUNC_OK;
}

/* ---- loop: starting and completing ----------------------------------- */

static int setup_easy(gw_loop *L, gw_upstream_call *c, CURL *e)
{
    gw_upstream *u = L->u;
    CURLcode r = CURLE_OK;
#define SET(opt, val)                                        \
    do {                                                     \
        CURLcode r_ = curl_easy_setopt(e, opt, val);         \
        if (r_ != CURLE_OK && r == CURLE_OK)                 \
            r = r_;                                          \
    } while (0)
    SET(CURLOPT_URL, c->url);
    SET(CURLOPT_PRIVATE, (void *)c);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    SET(CURLOPT_TCP_NODELAY, 1L);
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
    /* The budget runs from gw_upstream_start; curl counts from now. */
    long waited = (long)((pl_time_mono_ns() - c->start_ns) / 1000000u);
    long total = c->timeout_ms, connect = c->connect_timeout_ms;
    if (total)
        total = total > waited ? total - waited : 1;
    connect = connect > waited ? connect - waited : 1;
    SET(CURLOPT_CONNECTTIMEOUT_MS, connect);
    SET(CURLOPT_TIMEOUT_MS, total);
    SET(CURLOPT_HTTPHEADER, c->hdrs);
    SET(CURLOPT_HEADERFUNCTION, on_header_line);
    SET(CURLOPT_HEADERDATA, (void *)c);
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_WRITEDATA, (void *)c);
    SET(CURLOPT_PREREQFUNCTION, on_prereq);
    SET(CURLOPT_PREREQDATA, (void *)c);
    SET(CURLOPT_ERRORBUFFER, c->slot->errbuf);
    SET(CURLOPT_SHARE, u->share);
    SET(CURLOPT_SSL_VERIFYPEER, 1L);
    SET(CURLOPT_SSL_VERIFYHOST, 2L);
    if (u->ca_file)
        SET(CURLOPT_CAINFO, u->ca_file);
    if (c->https)
        SET(CURLOPT_PIPEWAIT, 1L);   /* prefer a stream on an HTTP/2 connection being made */
    if (c->is_head) {
        SET(CURLOPT_NOBODY, 1L);
    } else if (c->has_body) {
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)c->body_len);
        SET(CURLOPT_POSTFIELDS, c->body);
        if (!c->is_post)
            SET(CURLOPT_CUSTOMREQUEST, c->method);
    } else if (!c->is_get) {
        SET(CURLOPT_CUSTOMREQUEST, c->method);
    }
#undef SET
    c->slot->errbuf[0] = '\0';
    return r == CURLE_OK ? 0 : -1;
}

static void begin(gw_loop *L, gw_upstream_call *c)
{
    if (atomic_load_explicit(&c->cancel, memory_order_acquire)) {
        finish(L, c, GW_UP_CANCELLED, "cancelled before it was sent");
        return;
    }
    c->slot = slot_get(L);
    if (!c->slot) {
        finish(L, c, GW_UP_INTERNAL, call_msg(L, c, "out of memory for a transfer"));
        return;
    }
    if (setup_easy(L, c, c->slot->easy) != 0) {
        finish(L, c, GW_UP_INTERNAL, call_msg(L, c, "curl refused an option"));
        return;
    }
    CURLMcode mc = curl_multi_add_handle(L->multi, c->slot->easy);
    if (mc != CURLM_OK) {
        finish(L, c, GW_UP_INTERNAL, call_msg(L, c, "%s", curl_multi_strerror(mc)));
        return;
    }
    c->running = true;
    active_link(L, c);
    if (c->first_byte_timeout_ms > 0) {
        c->fb.due_ns = c->start_ns + (uint64_t)c->first_byte_timeout_ms * 1000000u;
        c->fb.seq = atomic_fetch_add_explicit(&L->u->seq, 1, memory_order_relaxed);
        if (heap_push(L, &c->fb) != 0)
            finish(L, c, GW_UP_INTERNAL, call_msg(L, c, "out of memory for a timer"));
    }
}

static gw_up_err map_curl(CURLcode rc, bool sent, bool heard)
{
    switch (rc) {
    case CURLE_OK:
        return GW_UP_OK;
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_PROXY:
        return GW_UP_CONNECT;
    case CURLE_OPERATION_TIMEDOUT:
        return sent ? GW_UP_TIMEOUT : GW_UP_CONNECT;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CLIENTCERT:
    case CURLE_USE_SSL_FAILED:
        return GW_UP_TLS;
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
        /* Reset before the request went out: it never reached the upstream. */
        return sent ? GW_UP_PROTOCOL : GW_UP_CONNECT;
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_HTTP3:
    case CURLE_PARTIAL_FILE:
    case CURLE_GOT_NOTHING:
    case CURLE_BAD_CONTENT_ENCODING:
    case CURLE_FILESIZE_EXCEEDED:
    case CURLE_TOO_MANY_REDIRECTS:
    case CURLE_RANGE_ERROR:
        return GW_UP_PROTOCOL;
    case CURLE_ABORTED_BY_CALLBACK:
        return GW_UP_ABORTED;
    default:
        /* curl refuses some malformed heads with odd codes (a header line
         * starting with a NUL byte gives CURLE_BAD_FUNCTION_ARGUMENT): once
         * the upstream has answered, its answer is the likelier culprit. */
        return heard ? GW_UP_PROTOCOL : GW_UP_INTERNAL;
    }
}

static void complete(gw_loop *L, gw_upstream_call *c, CURLcode rc)
{
    if (atomic_load_explicit(&c->cancel, memory_order_acquire)) {
        finish(L, c, GW_UP_CANCELLED, "cancelled");
        return;
    }
    if (rc == CURLE_OK && !c->head_sent && c->fail == FAIL_NONE)
        deliver_head(c);   /* a head curl never showed us (defensive) */
    switch (c->fail) {
    case FAIL_ABORT:
        finish(L, c, GW_UP_ABORTED, call_msg(L, c, "aborted by the response callback"));
        return;
    case FAIL_HEAD_BIG:
        finish(L, c, GW_UP_PROTOCOL,
               call_msg(L, c, "response head over %u bytes or %u headers", GW_UP_MAX_HEAD_BYTES,
                        GW_UP_MAX_HEADERS));
        return;
    case FAIL_NOMEM:
        finish(L, c, GW_UP_INTERNAL, call_msg(L, c, "out of memory for the response head"));
        return;
    default:
        break;
    }
    if (rc == CURLE_OK) {
        finish(L, c, GW_UP_OK, "ok");
        return;
    }
    gw_up_err e = map_curl(rc, c->sent, c->heard);
    const char *why = c->slot->errbuf[0] ? c->slot->errbuf : curl_easy_strerror(rc);
    const char *ctx = "";
    if (e == GW_UP_CONNECT && rc == CURLE_OPERATION_TIMEDOUT)
        ctx = " (while connecting)";
    else if (c->heard && !c->head_sent)
        ctx = " (in the response head)";
    finish(L, c, e, call_msg(L, c, "%s%s", why, ctx));
}

static void drain_messages(gw_loop *L)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(L->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        CURLcode rc = m->data.result;   /* m is gone once the handle is removed */
        void *priv = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
        if (priv)
            complete(L, priv, rc);
    }
}

static void fire_timer(gw_loop *L, gw_timer *t, bool cancelled)
{
    if (t->call) {
        gw_upstream_call *c = t->call;
        if (!c->finished && !c->head_sent)
            finish(L, c, GW_UP_TIMEOUT,
                   call_msg(L, c, "no response head within %d ms", c->first_byte_timeout_ms));
        return;
    }
    t->fn(t->ctx, cancelled);
    atomic_fetch_sub_explicit(&L->u->timers, 1, memory_order_relaxed);
    free(t);
}

static void run_due_timers(gw_loop *L)
{
    if (L->heap_n == 0)
        return;
    uint64_t now = pl_time_mono_ns();
    while (L->heap_n > 0 && L->heap[0]->due_ns <= now)
        fire_timer(L, heap_pop(L), false);
}

static void take_timers(gw_loop *L, gw_timer *t)
{
    while (t) {
        gw_timer *next = t->next;
        t->next = NULL;
        if (heap_push(L, t) != 0) {
            /* Out of memory: better early than never. */
            fire_timer(L, t, false);
        }
        t = next;
    }
}

/* Runs the commands taken off the queue (with the queue's references). */
static void run_commands(gw_loop *L, gw_upstream_call *q, bool closing)
{
    while (q) {
        gw_upstream_call *c = q;
        q = c->rnext;
        c->rnext = NULL;
        if (c->taken & CMD_START) {
            call_ref(c);   /* the loop's reference, until finish */
            if (closing)
                finish(L, c, GW_UP_CANCELLED, "cancelled: upstream client shutting down");
            else
                begin(L, c);
        }
        if ((c->taken & CMD_CANCEL) && !c->finished)
            finish(L, c, GW_UP_CANCELLED, "cancelled");
        c->taken = 0;
        gw_upstream_release(c);   /* the queue's reference */
    }
}

static int next_timeout_ms(gw_loop *L)
{
    if (L->heap_n == 0)
        return GW_IDLE_POLL_MS;
    uint64_t now = pl_time_mono_ns(), due = L->heap[0]->due_ns;
    if (due <= now)
        return 0;
    uint64_t ms = (due - now + 999999u) / 1000000u;
    return ms > GW_IDLE_POLL_MS ? GW_IDLE_POLL_MS : (int)ms;
}

static void close_loop(gw_loop *L, gw_upstream_call *q, gw_timer *tin)
{
    run_commands(L, q, true);
    while (L->active)
        finish(L, L->active, GW_UP_CANCELLED, "cancelled: upstream client shutting down");
    take_timers(L, tin);
    gw_timer *t;
    while ((t = heap_pop(L)))
        fire_timer(L, t, true);
}

static void *loop_main(void *arg)
{
    gw_loop *L = arg;
    tl_loop = L;
    char name[16];
    snprintf(name, sizeof name, "gw-up-%d", L->index);
    pthread_setname_np(pthread_self(), name);
    for (;;) {
        pthread_mutex_lock(&L->mu);
        L->sleeping = false;
        gw_upstream_call *q = L->q_head;
        L->q_head = L->q_tail = NULL;
        for (gw_upstream_call *c = q; c; c = c->qnext) {
            c->rnext = c->qnext;
            c->taken = c->pending;
            c->pending = 0;
            c->queued = false;
        }
        gw_timer *tin = L->t_in;
        L->t_in = NULL;
        bool quit = L->quit;
        if (quit)
            L->closed = true;
        pthread_mutex_unlock(&L->mu);
        if (quit) {
            close_loop(L, q, tin);
            break;
        }
        take_timers(L, tin);
        run_commands(L, q, false);
        run_due_timers(L);
        int running = 0;
        curl_multi_perform(L->multi, &running);
        drain_messages(L);

        int timeout = next_timeout_ms(L);
        pthread_mutex_lock(&L->mu);
        bool work = L->q_head || L->t_in || L->quit;
        L->sleeping = !work;
        pthread_mutex_unlock(&L->mu);
        if (!work && timeout > 0)
            curl_multi_poll(L->multi, NULL, 0, timeout, NULL);
    }
    tl_loop = NULL;
    return NULL;
}

/* ---- timers ----------------------------------------------------------- */

int gw_upstream_after(gw_upstream *u, int delay_ms, void (*fn)(void *ctx, bool cancelled), void *ctx)
{
    if (!u || !fn || delay_ms < 0 || atomic_load_explicit(&u->shutting_down, memory_order_acquire))
        return -1;
    gw_timer *t = calloc(1, sizeof *t);
    if (!t)
        return -1;
    t->due_ns = pl_time_mono_ns() + (uint64_t)delay_ms * 1000000u;
    t->seq = atomic_fetch_add_explicit(&u->seq, 1, memory_order_relaxed);
    t->idx = GW_NOT_IN_HEAP;
    t->fn = fn;
    t->ctx = ctx;
    gw_loop *L = tl_loop && tl_loop->u == u ? tl_loop : pick_loop(u);
    atomic_fetch_add_explicit(&u->timers, 1, memory_order_relaxed);
    pthread_mutex_lock(&L->mu);
    if (L->closed) {
        pthread_mutex_unlock(&L->mu);
        atomic_fetch_sub_explicit(&u->timers, 1, memory_order_relaxed);
        free(t);
        return -1;
    }
    t->next = L->t_in;
    L->t_in = t;
    bool wake = L->sleeping;
    L->sleeping = false;
    pthread_mutex_unlock(&L->mu);
    if (wake)
        curl_multi_wakeup(L->multi);
    return 0;
}

void gw_upstream_stats_get(gw_upstream *u, gw_upstream_stats *s)
{
    s->in_flight = atomic_load_explicit(&u->in_flight, memory_order_relaxed);
    s->started = atomic_load_explicit(&u->started, memory_order_relaxed);
    s->connections_opened = atomic_load_explicit(&u->conns, memory_order_relaxed);
    s->timers = atomic_load_explicit(&u->timers, memory_order_relaxed);
}

/* ---- life cycle ------------------------------------------------------- */

static CURLcode g_curl_init = CURLE_FAILED_INIT;
static pthread_once_t g_curl_once = PTHREAD_ONCE_INIT;

static void curl_init_once(void)
{
    g_curl_init = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static void share_lock(CURL *h, curl_lock_data data, curl_lock_access access, void *ud)
{
    gw_upstream *u = ud;
    if ((int)data >= 0 && data < CURL_LOCK_DATA_LAST)
        pthread_mutex_lock(&u->share_mu[data]);
}

static void share_unlock(CURL *h, curl_lock_data data, void *ud)
{
    gw_upstream *u = ud;
    if ((int)data >= 0 && data < CURL_LOCK_DATA_LAST)
        pthread_mutex_unlock(&u->share_mu[data]);
}

static long split_limit(int total, int n)
{
    long v = ((long)total + n - 1) / n;
    return v < 1 ? 1 : v;
}

static int loop_init(gw_upstream *u, gw_loop *L, int index, const gw_upstream_opts *o, char *err,
                     size_t errlen)
{
    L->u = u;
    L->index = index;
    atomic_init(&L->load, 0);
    if (pthread_mutex_init(&L->mu, NULL) != 0) {
        pl_errf(err, errlen, "mutex init failed");
        return -1;
    }
    L->mu_ready = true;
    L->multi = curl_multi_init();
    if (!L->multi) {
        pl_errf(err, errlen, "curl_multi_init failed");
        return -1;
    }
    long per_host = split_limit(o->max_host_connections, u->n_loops);
    long total = split_limit(o->max_total_connections, u->n_loops);
    if (curl_multi_setopt(L->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX) != CURLM_OK ||
        curl_multi_setopt(L->multi, CURLMOPT_MAX_HOST_CONNECTIONS, per_host) != CURLM_OK ||
        curl_multi_setopt(L->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, total) != CURLM_OK ||
        curl_multi_setopt(L->multi, CURLMOPT_MAXCONNECTS, total) != CURLM_OK) {
        pl_errf(err, errlen, "curl refused a connection limit");
        return -1;
    }
    return 0;
}

gw_upstream *gw_upstream_new(const gw_upstream_opts *o, char *err, size_t errlen)
{
    gw_upstream_opts d = {0};
    if (o)
        d = *o;
    if (d.threads < 0 || d.max_host_connections < 0 || d.max_total_connections < 0) {
        pl_errf(err, errlen, "upstream options: negative threads or connection limit");
        return NULL;
    }
    if (d.threads == 0)
        d.threads = 1;
    if (d.max_host_connections == 0)
        d.max_host_connections = 64;
    if (d.max_total_connections == 0)
        d.max_total_connections = 1024;
    if (d.threads > GW_MAX_THREADS) {
        pl_errf(err, errlen, "upstream options: threads %d over %d", d.threads, GW_MAX_THREADS);
        return NULL;
    }
    pthread_once(&g_curl_once, curl_init_once);
    if (g_curl_init != CURLE_OK) {
        pl_errf(err, errlen, "curl_global_init: %s", curl_easy_strerror(g_curl_init));
        return NULL;
    }
    gw_upstream *u = calloc(1, sizeof *u);
    if (!u) {
        pl_errf(err, errlen, "out of memory");
        return NULL;
    }
    for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_init(&u->share_mu[i], NULL);
    u->n_loops = d.threads;
    u->loops = calloc((size_t)d.threads, sizeof *u->loops);
    if (!u->loops || (d.ca_file && !(u->ca_file = strdup(d.ca_file)))) {
        pl_errf(err, errlen, "out of memory");
        goto fail;
    }
    u->share = curl_share_init();
    if (!u->share || curl_share_setopt(u->share, CURLSHOPT_LOCKFUNC, share_lock) != CURLSHE_OK ||
        curl_share_setopt(u->share, CURLSHOPT_UNLOCKFUNC, share_unlock) != CURLSHE_OK ||
        curl_share_setopt(u->share, CURLSHOPT_USERDATA, (void *)u) != CURLSHE_OK ||
        curl_share_setopt(u->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS) != CURLSHE_OK ||
        curl_share_setopt(u->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION) != CURLSHE_OK) {
        pl_errf(err, errlen, "curl share handle setup failed");
        goto fail;
    }
    for (int i = 0; i < u->n_loops; i++)
        if (loop_init(u, &u->loops[i], i, &d, err, errlen) != 0)
            goto fail;
    for (int i = 0; i < u->n_loops; i++) {
        if (pthread_create(&u->loops[i].thread, NULL, loop_main, &u->loops[i]) != 0) {
            pl_errf(err, errlen, "cannot start upstream loop thread");
            goto fail;
        }
        u->loops[i].thread_started = true;
    }
    return u;
fail:
    gw_upstream_free(u);
    return NULL;
}

void gw_upstream_free(gw_upstream *u)
{
    if (!u)
        return;
    if (tl_loop && tl_loop->u == u) {
        /* It would join the thread it runs on. */
        PL_LOG_ERROR("upstream.free_from_callback", "error",
                     "gw_upstream_free called from a gw_upstream callback");
        abort();
    }
    atomic_store_explicit(&u->shutting_down, true, memory_order_release);
    for (int i = 0; u->loops && i < u->n_loops; i++) {
        gw_loop *L = &u->loops[i];
        if (!L->thread_started)
            continue;
        pthread_mutex_lock(&L->mu);
        L->quit = true;
        pthread_mutex_unlock(&L->mu);
        curl_multi_wakeup(L->multi);
    }
    for (int i = 0; u->loops && i < u->n_loops; i++)
        if (u->loops[i].thread_started)
            pthread_join(u->loops[i].thread, NULL);
    for (int i = 0; u->loops && i < u->n_loops; i++) {
        gw_loop *L = &u->loops[i];
        /* Idle connections close with the multi handle. */
        if (L->multi)
            curl_multi_cleanup(L->multi);
        while (L->free_slots) {
            gw_slot *s = L->free_slots;
            L->free_slots = s->next_free;
            slot_destroy(s);
        }
        free(L->heap);
        if (L->mu_ready)
            pthread_mutex_destroy(&L->mu);
    }
    if (u->share) {
        CURLSHcode sc = curl_share_cleanup(u->share);
        if (sc != CURLSHE_OK)
            PL_LOG_WARN("upstream.share_cleanup", "error", curl_share_strerror(sc));
    }
    for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_destroy(&u->share_mu[i]);
    free(u->loops);
    free(u->ca_file);
    free(u);
}
