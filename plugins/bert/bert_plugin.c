/*
 * bert: the Outpost plugin serving text-embeddings from BERT-family
 * sentence-transformers models (bert_model.h, bert_tok.h).
 *
 * Model options (all optional; unknown ones are refused):
 *   threads           compute threads of this instance (default dev->threads)
 *   max_batch_tokens  tokens in one forward pass (default 4096, at least the
 *                     model's max_seq_length)
 *   max_queue         requests waiting to start before RESOURCE_EXHAUSTED
 *                     (default 256)
 *   max_texts         texts in one request (default 2048)
 *
 * Scheduling: submit() parses and validates the body and queues it (bounded).
 * One worker thread per model instance, owning an nn_pool of `threads`
 * threads (the worker is thread 0), takes requests off the queue, tokenizes
 * them, and fills each forward pass with texts in arrival order up to
 * max_batch_tokens: continuous batching, a request's texts may span several
 * passes and it completes when its last text is done. Cancellation is
 * checked before every pass; a cancelled request completes with CANCELLED
 * and its remaining texts are dropped.
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bert_model.h"
#include "bert_tok.h"
#include "outpost/plugin.h"

void openblas_set_num_threads(int num_threads); /* OpenBLAS's cblas.h; declared here
                                                   to keep <complex.h> out */

#define DEFAULT_MAX_BATCH_TOKENS 4096
#define DEFAULT_MAX_QUEUE 256
#define DEFAULT_MAX_TEXTS 2048

struct outpost_plugin_state {
    const outpost_host_api *host;
};

/* One request, from submit() to its completion. */
typedef struct breq {
    struct breq *next;
    outpost_request *req;
    json_t *body;               /* parsed input; texts point into it */
    const char **text;          /* (n) */
    size_t *text_len;           /* (n) */
    int n;
    int32_t *ids;               /* tokens of every text, back to back (worker) */
    int *offs;                  /* (n + 1) */
    int next_text;              /* first text not yet in a pass */
    int done;                   /* texts embedded */
    int truncated;              /* texts cut to max_seq */
    float *emb;                 /* (n, H) */
    bool cancelled;             /* cancel() arrived (under mu) */
    double t_submit;
} breq;

struct outpost_model {
    const outpost_host_api *host;
    outpost_host_model *hm;     /* NULL: no metrics */
    bool metrics;
    bert_model *bm;
    bert_tok *tok;
    bert_ctx *ctx;
    int threads, max_batch_tokens, max_queue, max_texts;
    char description[192];

    pthread_mutex_t mu;
    pthread_cond_t cv;
    breq *q_head, *q_tail;      /* waiting to start */
    int queued;
    breq *active;               /* tokenized, being computed (worker's, under mu) */
    int n_active;
    bool stop;
    pthread_t worker;

    /* one pass (worker only) */
    int32_t *batch_ids;         /* (max_batch_tokens) */
    int *batch_offs;            /* (max_batch_tokens + 1) */
    breq **batch_req;           /* (max_batch_tokens) text s of the pass: which request */
    int *batch_text;            /* ... and which of its texts */
    float *batch_out;           /* (max_batch_tokens, H) */
};

/* ======================================================================== */
/* Helpers                                                                   */
/* ======================================================================== */

static outpost_error *errorf(const outpost_host_api *h, outpost_error_code code, const char *fmt,
                             ...) __attribute__((format(printf, 3, 4)));

static outpost_error *errorf(const outpost_host_api *h, outpost_error_code code, const char *fmt,
                             ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return h->error_new(code, msg);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void metric(outpost_model *m, outpost_model_metric id, double v)
{
    if (m->metrics)
        m->host->model_metric(m->hm, id, v);
}

static void breq_free(breq *r)
{
    if (!r)
        return;
    json_decref(r->body);
    free(r->text);
    free(r->text_len);
    free(r->ids);
    free(r->offs);
    free(r->emb);
    free(r);
}

/* Parses and validates an embeddings body: {"text": "..." | ["...", ...]}.
 * On success *out holds the texts (pointing into its parsed body). */
static outpost_error *parse_input(const outpost_model *m, const char *body, size_t len, breq **out)
{
    const outpost_host_api *h = m->host;
    *out = NULL;
    json_error_t jerr;
    json_t *in = json_loadb(body, len, JSON_ALLOW_NUL, &jerr);
    if (!json_is_object(in)) {
        json_decref(in);
        return errorf(h, OUTPOST_ERR_INVALID_ARGUMENT, "input must be a JSON object");
    }
    json_t *text = json_object_get(in, "text");
    json_t *pooling = json_object_get(in, "pooling");
    const char *pool_name = m->bm->cfg.pooling == BERT_POOL_CLS ? "cls" : "mean";
    outpost_error *e = NULL;
    if (!text) {
        e = errorf(h, OUTPOST_ERR_INVALID_ARGUMENT, "'text' is required");
    } else if (!json_is_string(text) && (!json_is_array(text) || json_array_size(text) == 0)) {
        e = errorf(h, OUTPOST_ERR_INVALID_ARGUMENT,
                   "'text' must be a string or a non-empty array of strings");
    } else if (json_is_array(text) && json_array_size(text) > (size_t)m->max_texts) {
        e = errorf(h, OUTPOST_ERR_INVALID_ARGUMENT,
                   "'text' has %zu strings; at most %d are allowed per request",
                   json_array_size(text), m->max_texts);
    } else if (pooling && (!json_is_string(pooling) ||
                           strcmp(json_string_value(pooling), pool_name) != 0)) {
        e = errorf(h, OUTPOST_ERR_INVALID_ARGUMENT, "'pooling' must be \"%s\" for this model",
                   pool_name);
    }
    if (e) {
        json_decref(in);
        return e;
    }
    size_t n = json_is_string(text) ? 1 : json_array_size(text);
    breq *r = calloc(1, sizeof(*r));
    if (r) {
        r->text = calloc(n, sizeof(char *));
        r->text_len = calloc(n, sizeof(size_t));
    }
    if (!r || !r->text || !r->text_len) {
        breq_free(r);
        json_decref(in);
        return h->error_new(OUTPOST_ERR_INTERNAL, "out of memory");
    }
    r->body = in;
    r->n = (int)n;
    for (size_t i = 0; i < n; i++) {
        json_t *t = json_is_string(text) ? text : json_array_get(text, i);
        if (!json_is_string(t)) {
            breq_free(r);
            return errorf(h, OUTPOST_ERR_INVALID_ARGUMENT, "'text[%zu]' must be a string", i);
        }
        r->text[i] = json_string_value(t);
        r->text_len[i] = json_string_length(t);
    }
    *out = r;
    return NULL;
}

/* ======================================================================== */
/* Results                                                                   */
/* ======================================================================== */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
} sbuf;

static void sb_reserve(sbuf *b, size_t more)
{
    if (b->oom || b->len + more <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = true;
        return;
    }
    b->p = p;
    b->cap = cap;
}

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void sb_printf(sbuf *b, const char *fmt, ...)
{
    sb_reserve(b, 64);
    if (b->oom)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = true;
    } else if ((size_t)n >= b->cap - b->len) {
        sb_reserve(b, (size_t)n + 1);
        if (b->oom)
            return;
        va_start(ap, fmt);
        vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        b->len += (size_t)n;
    } else {
        b->len += (size_t)n;
    }
}

/* Completes r with its embeddings (all finite: bert_encode checked). */
static void complete_ok(outpost_model *m, breq *r)
{
    const int H = m->bm->cfg.hidden;
    int64_t tokens = r->offs[r->n];
    sbuf b = {0};
    sb_reserve(&b, (size_t)r->n * (size_t)H * 16 + 256);
    sb_printf(&b, "{\"shape\":[%d,%d],\"data\":[", r->n, H);
    for (int i = 0; i < r->n; i++) {
        const float *v = r->emb + (size_t)i * (size_t)H;
        sb_printf(&b, "%s[", i ? "," : "");
        for (int k = 0; k < H; k++)
            sb_printf(&b, "%s%.9g", k ? "," : "", (double)v[k]);
        sb_printf(&b, "]");
    }
    sb_printf(&b,
              "],\"pooling\":\"%s\",\"usage\":{\"prompt_tokens\":%lld,\"total_tokens\":%lld,"
              "\"truncated_inputs\":%d}}",
              m->bm->cfg.pooling == BERT_POOL_CLS ? "cls" : "mean", (long long)tokens,
              (long long)tokens, r->truncated);
    if (b.oom) {
        free(b.p);
        m->host->request_complete(r->req, NULL, 0,
                                  m->host->error_new(OUTPOST_ERR_INTERNAL, "out of memory"));
        return;
    }
    m->host->request_complete(r->req, b.p, b.len, NULL);
    free(b.p);
}

/* ======================================================================== */
/* Worker                                                                    */
/* ======================================================================== */

/* Tokenizes r's texts (worker thread, no lock held). */
static outpost_error *tokenize(outpost_model *m, breq *r)
{
    const int S = m->bm->cfg.max_seq;
    r->offs = malloc(((size_t)r->n + 1) * sizeof(int));
    r->emb = malloc((size_t)r->n * (size_t)m->bm->cfg.hidden * sizeof(float));
    if (!r->offs || !r->emb)
        return m->host->error_new(OUTPOST_ERR_INTERNAL, "out of memory");
    /* Count first, so a request of short texts takes little memory. */
    r->offs[0] = 0;
    for (int i = 0; i < r->n; i++) {
        int k = bert_tok_encode(m->tok, r->text[i], r->text_len[i], NULL, S, NULL);
        if (k < 0)
            return m->host->error_new(OUTPOST_ERR_INTERNAL, "out of memory");
        r->offs[i + 1] = r->offs[i] + k;
    }
    r->ids = malloc((size_t)r->offs[r->n] * sizeof(int32_t));
    if (!r->ids)
        return m->host->error_new(OUTPOST_ERR_INTERNAL, "out of memory");
    for (int i = 0; i < r->n; i++) {
        bool tr = false;
        bert_tok_encode(m->tok, r->text[i], r->text_len[i], r->ids + r->offs[i], S, &tr);
        r->truncated += tr;
    }
    metric(m, OUTPOST_METRIC_PROMPT_TOKENS, (double)r->offs[r->n]);
    return NULL;
}

/* Unlinks r from the active list (mu held). */
static void active_remove(outpost_model *m, breq *r)
{
    for (breq **p = &m->active; *p; p = &(*p)->next) {
        if (*p == r) {
            *p = r->next;
            m->n_active--;
            return;
        }
    }
}

static int pending_tokens(const outpost_model *m)
{
    long n = 0;
    for (const breq *r = m->active; r; r = r->next)
        n += r->offs[r->n] - r->offs[r->next_text];
    return n > INT32_MAX ? INT32_MAX : (int)n;
}

/* Moves queued requests to the active list until a pass is full. Returns with
 * mu held; false when stopping with nothing left. */
static bool refill(outpost_model *m)
{
    for (;;) {
        while (m->q_head && pending_tokens(m) < m->max_batch_tokens) {
            breq *r = m->q_head;
            m->q_head = r->next;
            if (!m->q_head)
                m->q_tail = NULL;
            m->queued--;
            r->next = NULL;
            metric(m, OUTPOST_METRIC_QUEUE_DEPTH, m->queued);
            metric(m, OUTPOST_METRIC_QUEUE_WAIT_SECONDS, now_s() - r->t_submit);
            pthread_mutex_unlock(&m->mu);
            outpost_error *e = tokenize(m, r);
            if (e) {
                m->host->request_complete(r->req, NULL, 0, e);
                breq_free(r);
                pthread_mutex_lock(&m->mu);
                continue;
            }
            pthread_mutex_lock(&m->mu);
            breq **tail = &m->active;
            while (*tail)
                tail = &(*tail)->next;
            *tail = r;
            m->n_active++;
        }
        if (m->active)
            return true;
        if (m->stop)
            return false;
        pthread_cond_wait(&m->cv, &m->mu);
    }
}

/* Completes and drops cancelled active requests (mu held on entry and exit). */
static void drop_cancelled(outpost_model *m)
{
    breq *r = m->active;
    while (r) {
        breq *next = r->next;
        if (r->cancelled || m->host->request_cancelled(r->req)) {
            active_remove(m, r);
            pthread_mutex_unlock(&m->mu);
            m->host->request_complete(r->req, NULL, 0,
                                      m->host->error_new(OUTPOST_ERR_CANCELLED,
                                                         "request cancelled"));
            breq_free(r);
            pthread_mutex_lock(&m->mu);
            next = m->active; /* the list may have changed meanwhile: rescan */
        }
        r = next;
    }
}

/* One forward pass over the next texts of the active requests. */
static void run_pass(outpost_model *m)
{
    const int H = m->bm->cfg.hidden;
    int ns = 0, nt = 0;
    m->batch_offs[0] = 0;
    pthread_mutex_lock(&m->mu);
    for (breq *r = m->active; r; r = r->next) {
        while (r->next_text < r->n) {
            int i = r->next_text, len = r->offs[i + 1] - r->offs[i];
            if (nt + len > m->max_batch_tokens)
                goto full;
            memcpy(m->batch_ids + nt, r->ids + r->offs[i], (size_t)len * sizeof(int32_t));
            nt += len;
            m->batch_req[ns] = r;
            m->batch_text[ns] = i;
            m->batch_offs[++ns] = nt;
            r->next_text++;
        }
    }
full:
    metric(m, OUTPOST_METRIC_RUNNING, m->n_active);
    pthread_mutex_unlock(&m->mu);
    if (ns == 0)
        return;
    metric(m, OUTPOST_METRIC_BATCH_SIZE, ns);
    int rc = bert_encode(m->ctx, m->batch_ids, m->batch_offs, ns, m->batch_out);
    for (int s = 0; s < ns; s++) {
        breq *r = m->batch_req[s];
        memcpy(r->emb + (size_t)m->batch_text[s] * (size_t)H, m->batch_out + (size_t)s * (size_t)H,
               (size_t)H * sizeof(float));
        r->done++;
    }
    /* Complete finished requests (every request of a failed pass), in batch
     * order; a request's texts sit side by side in the pass. */
    for (int s = 0; s < ns; s++) {
        breq *r = m->batch_req[s];
        if (s + 1 < ns && m->batch_req[s + 1] == r)
            continue; /* r's last text of this pass is further on */
        if (rc == 0 && r->done < r->n)
            continue; /* more texts in later passes */
        pthread_mutex_lock(&m->mu);
        active_remove(m, r);
        pthread_mutex_unlock(&m->mu);
        if (rc == 0) {
            complete_ok(m, r);
        } else {
            m->host->log(m->host, OUTPOST_LOG_ERROR, "bert.non_finite",
                         "the model produced non-finite values");
            m->host->request_complete(r->req, NULL, 0,
                                      m->host->error_new(OUTPOST_ERR_INTERNAL,
                                                         "the model produced non-finite values"));
        }
        breq_free(r);
    }
}

static void *worker_main(void *arg)
{
    outpost_model *m = arg;
    pthread_mutex_lock(&m->mu);
    while (refill(m)) {
        drop_cancelled(m);
        pthread_mutex_unlock(&m->mu);
        run_pass(m);
        pthread_mutex_lock(&m->mu);
        metric(m, OUTPOST_METRIC_RUNNING, m->n_active);
    }
    pthread_mutex_unlock(&m->mu);
    return NULL;
}

/* ======================================================================== */
/* Plugin entry points                                                       */
/* ======================================================================== */

static outpost_error *bert_init(const outpost_host_api *host, outpost_plugin_state **state)
{
    outpost_plugin_state *s = calloc(1, sizeof(*s));
    if (!s)
        return host->error_new(OUTPOST_ERR_INTERNAL, "out of memory");
    s->host = host;
    *state = s;
    return NULL;
}

static void bert_fini(outpost_plugin_state *state)
{
    free(state);
}

static outpost_error *parse_int(const outpost_host_api *h, const outpost_option *o, long min,
                                long max, int *out)
{
    char *end;
    errno = 0;
    const char *v = o->value ? o->value : "";
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < min || x > max)
        return errorf(h, OUTPOST_ERR_INVALID_ARGUMENT,
                      "option '%s' must be an integer in [%ld, %ld], got '%s'", o->key, min, max,
                      v);
    *out = (int)x;
    return NULL;
}

static outpost_error *parse_options(const outpost_host_api *h, const outpost_model_config *cfg,
                                    outpost_model *m)
{
    for (size_t i = 0; i < cfg->n_options; i++) {
        const outpost_option *o = &cfg->options[i];
        outpost_error *e;
        if (strcmp(o->key, "threads") == 0)
            e = parse_int(h, o, 1, 256, &m->threads);
        else if (strcmp(o->key, "max_batch_tokens") == 0)
            e = parse_int(h, o, 2, 1 << 20, &m->max_batch_tokens);
        else if (strcmp(o->key, "max_queue") == 0)
            e = parse_int(h, o, 1, 1 << 20, &m->max_queue);
        else if (strcmp(o->key, "max_texts") == 0)
            e = parse_int(h, o, 1, 1 << 20, &m->max_texts);
        else
            e = errorf(h, OUTPOST_ERR_INVALID_ARGUMENT,
                       "unknown option '%s' (bert supports threads, max_batch_tokens, max_queue, "
                       "max_texts)",
                       o->key);
        if (e)
            return e;
    }
    return NULL;
}

static void model_free(outpost_model *m)
{
    bert_ctx_free(m->ctx);
    bert_model_free(m->bm);
    bert_tok_free(m->tok);
    free(m->batch_ids);
    free(m->batch_offs);
    free(m->batch_req);
    free(m->batch_text);
    free(m->batch_out);
    free(m);
}

#define INFO_SET(info, field, value)                                                      \
    do {                                                                                  \
        if ((info)->struct_size >= offsetof(outpost_model_info, field) + sizeof((info)->field)) \
            (info)->field = (value);                                                      \
    } while (0)

static outpost_error *bert_model_load_cb(outpost_plugin_state *state,
                                         const outpost_model_config *cfg,
                                         const outpost_device *dev, outpost_model **model,
                                         outpost_model_info *info)
{
    const outpost_host_api *h = state->host;
    if (dev->kind != OUTPOST_DEVICE_CPU)
        return h->error_new(OUTPOST_ERR_UNSUPPORTED, "bert runs on the CPU only");
    if (!cfg->path)
        return h->error_new(OUTPOST_ERR_INVALID_ARGUMENT,
                            "bert needs 'path': the model directory (config.json, "
                            "model.safetensors, tokenizer.json)");
    outpost_model *m = calloc(1, sizeof(*m));
    if (!m)
        return h->error_new(OUTPOST_ERR_INTERNAL, "out of memory");
    m->host = h;
    m->threads = dev->threads > 0 ? dev->threads : 1;
    m->max_batch_tokens = DEFAULT_MAX_BATCH_TOKENS;
    m->max_queue = DEFAULT_MAX_QUEUE;
    m->max_texts = DEFAULT_MAX_TEXTS;
    if (cfg->struct_size >= offsetof(outpost_model_config, host_model) + sizeof(void *) &&
        h->struct_size >= offsetof(outpost_host_api, model_metric) + sizeof(void *) &&
        h->model_metric && cfg->host_model) {
        m->hm = cfg->host_model;
        m->metrics = true;
    }
    outpost_error *e = parse_options(h, cfg, m);
    if (e) {
        free(m);
        return e;
    }
    char err[512], path[4096];
    if (bert_model_load(cfg->path, &m->bm, err, sizeof err) != 0) {
        model_free(m);
        return errorf(h, OUTPOST_ERR_INVALID_ARGUMENT, "%s: %s", cfg->path, err);
    }
    snprintf(path, sizeof path, "%s/tokenizer.json", cfg->path);
    if (bert_tok_load(path, &m->tok, err, sizeof err) != 0) {
        model_free(m);
        return errorf(h, OUTPOST_ERR_INVALID_ARGUMENT, "%s: %s", cfg->path, err);
    }
    const bert_config *bc = &m->bm->cfg;
    if (bert_tok_vocab_size(m->tok) > bc->vocab) {
        int32_t nv = bert_tok_vocab_size(m->tok);
        model_free(m);
        return errorf(h, OUTPOST_ERR_INVALID_ARGUMENT,
                      "%s: tokenizer has ids up to %d but config.json vocab_size is %d", cfg->path,
                      nv - 1, bc->vocab);
    }
    if (m->max_batch_tokens < bc->max_seq) {
        int mbt = m->max_batch_tokens;
        model_free(m);
        return errorf(h, OUTPOST_ERR_INVALID_ARGUMENT,
                      "option 'max_batch_tokens' (%d) must be at least the model's "
                      "max_seq_length (%d)",
                      mbt, bc->max_seq);
    }
    /* Each pool thread calls sgemm on its own share: OpenBLAS must not start
     * threads of its own inside those calls. */
    openblas_set_num_threads(1);
    size_t T = (size_t)m->max_batch_tokens;
    m->ctx = bert_ctx_new(m->bm, m->max_batch_tokens, m->threads, BERT_GEMM_BLAS);
    m->batch_ids = malloc(T * sizeof(int32_t));
    m->batch_offs = malloc((T + 1) * sizeof(int));
    m->batch_req = malloc(T * sizeof(breq *));
    m->batch_text = malloc(T * sizeof(int));
    m->batch_out = malloc(T * (size_t)bc->hidden * sizeof(float));
    if (!m->ctx || !m->batch_ids || !m->batch_offs || !m->batch_req || !m->batch_text ||
        !m->batch_out) {
        model_free(m);
        return h->error_new(OUTPOST_ERR_INTERNAL,
                            "out of memory (or no threads) for the model's scratch buffers");
    }
    pthread_mutex_init(&m->mu, NULL);
    pthread_cond_init(&m->cv, NULL);
    if (pthread_create(&m->worker, NULL, worker_main, m) != 0) {
        pthread_cond_destroy(&m->cv);
        pthread_mutex_destroy(&m->mu);
        model_free(m);
        return h->error_new(OUTPOST_ERR_UNAVAILABLE, "cannot start the bert worker thread");
    }
    snprintf(m->description, sizeof m->description,
             "Sentence embeddings: BERT, %d layers, %d dimensions, %s pooling%s, up to %d tokens",
             bc->layers, bc->hidden, bc->pooling == BERT_POOL_CLS ? "cls" : "mean",
             bc->normalize ? ", normalized" : "", bc->max_seq);
    INFO_SET(info, description, m->description);
    INFO_SET(info, context_window, bc->max_seq);
    INFO_SET(info, parameters, m->bm->n_params);
    INFO_SET(info, dimensions, bc->hidden);
    INFO_SET(info, max_batch, 0);
    INFO_SET(info, max_queue, m->max_queue);
    metric(m, OUTPOST_METRIC_QUEUE_DEPTH, 0);
    metric(m, OUTPOST_METRIC_RUNNING, 0);
    *model = m;
    return NULL;
}

static void bert_model_unload_cb(outpost_model *m)
{
    pthread_mutex_lock(&m->mu);
    m->stop = true;
    pthread_cond_broadcast(&m->cv);
    pthread_mutex_unlock(&m->mu);
    pthread_join(m->worker, NULL);
    /* The host unloads only once every request completed: both lists are
     * empty. Free anything left all the same. */
    while (m->q_head) {
        breq *r = m->q_head;
        m->q_head = r->next;
        breq_free(r);
    }
    while (m->active) {
        breq *r = m->active;
        m->active = r->next;
        breq_free(r);
    }
    pthread_cond_destroy(&m->cv);
    pthread_mutex_destroy(&m->mu);
    model_free(m);
}

static outpost_error *bert_submit(outpost_model *m, outpost_request *const *reqs, size_t n)
{
    const outpost_host_api *h = m->host;
    breq **items = calloc(n ? n : 1, sizeof(*items));
    outpost_error **errs = calloc(n ? n : 1, sizeof(*errs));
    if (!items || !errs) {
        free(items);
        free(errs);
        return h->error_new(OUTPOST_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    double t = now_s();
    size_t n_ok = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const char *body = h->request_body(reqs[i], &len);
        errs[i] = parse_input(m, body, len, &items[i]);
        if (items[i]) {
            items[i]->req = reqs[i];
            items[i]->t_submit = t;
            n_ok++;
        }
    }
    pthread_mutex_lock(&m->mu);
    outpost_error *refuse = NULL;
    if (m->stop)
        refuse = h->error_new(OUTPOST_ERR_UNAVAILABLE, "the model is shutting down");
    else if (m->queued + (long)n_ok > m->max_queue)
        refuse = errorf(h, OUTPOST_ERR_RESOURCE_EXHAUSTED,
                        "the embeddings queue is full (%d requests waiting)", m->queued);
    if (!refuse) {
        for (size_t i = 0; i < n; i++) {
            if (!items[i])
                continue;
            if (m->q_tail)
                m->q_tail->next = items[i];
            else
                m->q_head = items[i];
            m->q_tail = items[i];
        }
        m->queued += (int)n_ok;
        metric(m, OUTPOST_METRIC_QUEUE_DEPTH, m->queued);
        pthread_cond_broadcast(&m->cv);
    }
    pthread_mutex_unlock(&m->mu);
    for (size_t i = 0; i < n; i++) {
        if (refuse) {
            breq_free(items[i]);
            h->error_free(errs[i]);
        } else if (errs[i]) {
            h->request_complete(reqs[i], NULL, 0, errs[i]);
        }
    }
    free(items);
    free(errs);
    return refuse;
}

static void bert_cancel(outpost_model *m, outpost_request *req)
{
    /* Compares addresses only: req may have completed concurrently. */
    pthread_mutex_lock(&m->mu);
    for (breq *r = m->q_head; r; r = r->next) {
        if (r->req == req)
            r->cancelled = true;
    }
    for (breq *r = m->active; r; r = r->next) {
        if (r->req == req)
            r->cancelled = true;
    }
    pthread_mutex_unlock(&m->mu);
}

static int bert_count_tokens(outpost_model *m, const char *body, size_t len, int64_t *tokens)
{
    breq *r;
    outpost_error *e = parse_input(m, body, len, &r);
    if (e) {
        m->host->error_free(e);
        return -1;
    }
    int64_t total = 0;
    for (int i = 0; i < r->n; i++) {
        int k = bert_tok_encode(m->tok, r->text[i], r->text_len[i], NULL, m->bm->cfg.max_seq, NULL);
        if (k < 0) {
            breq_free(r);
            return -1;
        }
        total += k;
    }
    breq_free(r);
    *tokens = total;
    return 0;
}

static const char *const bert_tasks[] = {OUTPOST_TASK_TEXT_EMBEDDINGS, NULL};

static const outpost_plugin bert_plugin = {
    .abi_major = OUTPOST_PLUGIN_ABI_MAJOR,
    .abi_minor = OUTPOST_PLUGIN_ABI_MINOR,
    .struct_size = sizeof(outpost_plugin),
    .build_signature = OUTPOST_PLUGIN_BUILD_SIGNATURE,
    .name = "bert",
    .version = "1.0.0",
    .tasks = bert_tasks,
    .init = bert_init,
    .fini = bert_fini,
    .model_load = bert_model_load_cb,
    .model_unload = bert_model_unload_cb,
    .submit = bert_submit,
    .cancel = bert_cancel,
    .count_tokens = bert_count_tokens,
};

OUTPOST_PLUGIN_DEFINE(bert_plugin)
