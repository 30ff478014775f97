/*
 * vx_api: the Vectorize v2 REST API. See vx_api.h and docs/vectorize.md.
 *
 * Every request runs synchronously on its HTTP worker: parse and bound the
 * body, take a reference on the index from the store, call it, answer. The
 * only waits are the WAL's durability (a mutation returns once its record is
 * on disk) and, for indexes that take text, the embedding model.
 */
#include "vector/vx_api.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "api/op_api.h"
#include "metrics/op_metrics.h"
#include "platform/pl_log.h"
#include "platform/pl_time.h"
#include "plugins/op_plugins.h"
#include "vector/vx_store.h"

/* The largest multipart boundary RFC 2046 allows. */
#define BOUNDARY_MAX 70
/* Parts of a multipart body looked at (the vectors are in the first). */
#define MULTIPART_PARTS_MAX 16
/* Answers keep jansson's 17 significant digits, so that metadata numbers
 * (doubles) come back exactly; vector values and scores (float32) are
 * written by hand in their shortest form (fput_float). */
#define JSON_FLAGS JSON_COMPACT
/* Bound of a query's "ef" (Outpost's extension): the beam, and with it the
 * work of one query, stays bounded whatever a client asks. */
#define VX_API_EF_MAX 4096

/* ------------------------------------------------------------------------ */
/* state and metrics                                                         */
/* ------------------------------------------------------------------------ */

static vx_store *g_store;
static op_config_vectorize g_opts;

static pthread_once_t g_metrics_once = PTHREAD_ONCE_INIT;
static op_metric *m_requests, *m_query_s, *m_mutations, *m_mut_vectors, *m_vectors, *m_memory,
    *m_disk, *m_pending, *m_open_s;

static void metrics_init(void)
{
    static const char *const req_l[] = {"op", "status", NULL};
    static const char *const op_l[] = {"op", NULL};
    static const char *const idx_l[] = {"account", "index", NULL};
    m_requests =
        op_metric_counter("outpost_vectorize_requests_total",
                          "Vectorize API requests answered, by operation and status.", req_l);
    /* An in-memory query takes tens of microseconds on small indexes:
     * buckets from 10 us, where the default ones start at 100 us. */
    static const double query_b[] = {0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
                                     0.001,   0.0025,   0.005,   0.01,   0.025,   0.05,
                                     0.1,     0.25,     0.5,     1,      2.5,     5};
    m_query_s = op_metric_histogram("outpost_vectorize_query_duration_seconds",
                                    "Vectorize queries: from the parsed request to the matches "
                                    "(embedding of a text query excluded).",
                                    NULL, query_b, sizeof query_b / sizeof query_b[0]);
    m_mutations =
        op_metric_counter("outpost_vectorize_mutations_total",
                          "Vectorize mutations acknowledged (durable), by operation.", op_l);
    m_mut_vectors = op_metric_counter("outpost_vectorize_mutation_vectors_total",
                                      "Vectors (or ids) carried by acknowledged mutations.", op_l);
    m_vectors = op_metric_gauge("outpost_vectorize_vectors",
                                "Vectors stored in an index, as applied.", idx_l);
    m_memory = op_metric_gauge("outpost_vectorize_memory_bytes",
                               "Memory held by an index (graph, ids, documents, metadata indexes).",
                               idx_l);
    m_disk = op_metric_gauge("outpost_vectorize_disk_bytes",
                             "Bytes of an index on disk (log and snapshots).", idx_l);
    m_pending = op_metric_gauge("outpost_vectorize_pending_mutations",
                                "Mutations acknowledged and not yet applied.", idx_l);
    m_open_s = op_metric_gauge("outpost_vectorize_open_seconds",
                               "Start-up time of an index: snapshot load plus log replay.", idx_l);
}

/* ------------------------------------------------------------------------ */
/* answers                                                                   */
/* ------------------------------------------------------------------------ */

/* One request: what every answer needs. */
typedef struct vreq {
    op_http_req *r;
    op_runtime *rt;
    const char *account;
    const char *op; /* metric label, a static string */
} vreq;

static void count_request(const vreq *q, int status)
{
    char st[16];
    snprintf(st, sizeof st, "%d", status);
    op_counter_inc(op_metric_with(m_requests, q->op, st));
}

static void reply_err(vreq *q, int status, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void reply_err(vreq *q, int status, int code, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    count_request(q, status);
    char *body = op_api_error_json(code, msg);
    if (!body) {
        op_http_respond(q->r, 500, "text/plain", "out of memory\n", 14);
        return;
    }
    /* Cloudflare's SDKs retry 409s by default; a conflict does not go away. */
    if (status == 409)
        op_http_add_header(q->r, "x-should-retry", "false");
    op_http_respond(q->r, status, "application/json", body, strlen(body));
    free(body);
}

static void bad_input(vreq *q, const char *msg)
{
    reply_err(q, 400, OP_API_ERR_INVALID_INPUT, "%s", msg);
}

/* {"result": result, "success": true, "errors": [], "messages": []};
 * result's reference is stolen (NULL: out of memory, answered 500). */
static void reply_ok(vreq *q, json_t *result)
{
    json_t *env = result ? json_pack("{s:o, s:b, s:[], s:[]}", "result", result, "success", 1,
                                     "errors", "messages")
                         : NULL;
    char *body = env ? json_dumps(env, JSON_FLAGS) : NULL;
    json_decref(env);
    if (!body) {
        reply_err(q, 500, VX_API_ERR_STORE, "out of memory");
        return;
    }
    count_request(q, 200);
    op_http_respond(q->r, 200, "application/json", body, strlen(body));
    free(body);
}

/* An index operation's error as an answer (vx_index.h's errno values). */
static void reply_vx(vreq *q, int rc, const char *err)
{
    const char *msg = err && *err ? err : strerror(-rc);
    switch (rc) {
    case -EINVAL: reply_err(q, 400, OP_API_ERR_INVALID_INPUT, "%s", msg); return;
    case -ENOENT: reply_err(q, 404, VX_API_ERR_NOT_FOUND, "%s", msg); return;
    case -EEXIST: reply_err(q, 409, VX_API_ERR_EXISTS, "%s", msg); return;
    case -EAGAIN:
    case -ETIMEDOUT:
        op_http_add_header(q->r, "Retry-After", "1");
        reply_err(q, 429, VX_API_ERR_BUSY, "too many mutations waiting to be applied: %s", msg);
        return;
    case -ENOSPC: reply_err(q, 507, VX_API_ERR_STORE, "%s", msg); return;
    case -ESHUTDOWN: reply_err(q, 503, VX_API_ERR_STORE, "the index is closing: %s", msg); return;
    default: reply_err(q, 503, VX_API_ERR_STORE, "the index failed: %s", msg); return;
    }
}

/* ------------------------------------------------------------------------ */
/* small formats                                                             */
/* ------------------------------------------------------------------------ */

/* Unix ms as ISO 8601 in UTC with milliseconds, or JSON null for 0. */
static json_t *iso8601(int64_t ms)
{
    if (ms <= 0)
        return json_null();
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    if (!gmtime_r(&s, &tm))
        return json_null();
    char buf[96];
    snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
    return json_string(buf);
}

static json_t *mutation_json(uint64_t id)
{
    char buf[24];
    snprintf(buf, sizeof buf, "%" PRIu64, id);
    return json_string(buf);
}

/* A float32 as the shortest decimal that reads back as the same float, so
 * that 58.8 stored comes back as 58.8, not as the 17 digits of its widening
 * to double (58.799999237060547). */
static void fput_float(FILE *f, float v)
{
    char buf[32];
    for (int p = 6; p <= 9; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, (double)v);
        if (strtof(buf, NULL) == v)
            break;
    }
    fputs(buf, f);
}

/* List cursors are the hex of the last id of the page (ids are bytes). */
static void hex_encode(const char *s, char *out, size_t cap)
{
    static const char d[] = "0123456789abcdef";
    size_t n = strlen(s), k = 0;
    for (size_t i = 0; i < n && k + 2 < cap; i++) {
        out[k++] = d[(unsigned char)s[i] >> 4];
        out[k++] = d[(unsigned char)s[i] & 15];
    }
    out[k] = '\0';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decodes a cursor into out (cap bytes with the NUL); false if malformed. */
static bool hex_decode(const char *s, char *out, size_t cap)
{
    size_t n = strlen(s);
    if (n % 2 || n / 2 + 1 > cap)
        return false;
    for (size_t i = 0; i < n; i += 2) {
        int hi = hexval(s[i]), lo = hexval(s[i + 1]);
        if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
            return false;
        out[i / 2] = (char)(hi << 4 | lo);
    }
    out[n / 2] = '\0';
    return true;
}

/* A JSON number that is a whole number in [lo, hi] into *out. */
static bool json_whole(const json_t *v, long long lo, long long hi, long long *out)
{
    double d;
    if (json_is_integer(v))
        d = (double)json_integer_value(v);
    else if (json_is_real(v))
        d = json_real_value(v);
    else
        return false;
    if (!(d >= (double)lo && d <= (double)hi) || d != floor(d))
        return false;
    *out = (long long)d;
    return true;
}

/* The compact JSON size of v, without building the text. */
static size_t json_compact_size(const json_t *v)
{
    return json_dumpb(v, NULL, 0, JSON_COMPACT);
}

/* ------------------------------------------------------------------------ */
/* request bodies                                                            */
/* ------------------------------------------------------------------------ */

/* The body as a JSON object, or answers 400 and returns NULL. Duplicate
 * keys are refused (a filter with two "$eq" is a mistake, not a choice). */
static json_t *body_object(vreq *q)
{
    size_t len = 0;
    const char *body = op_http_req_body(q->r, &len);
    json_error_t jerr;
    json_t *o = json_loadb(body ? body : "", len, JSON_REJECT_DUPLICATES, &jerr);
    if (!o) {
        reply_err(q, 400, OP_API_ERR_INVALID_INPUT,
                  "request body is not valid JSON: %s (line %d, column %d)", jerr.text, jerr.line,
                  jerr.column);
        return NULL;
    }
    if (!json_is_object(o)) {
        json_decref(o);
        bad_input(q, "request body must be a JSON object");
        return NULL;
    }
    return o;
}

/* The vectors of one insert/upsert, parsed and bounded. Strings and
 * metadata point into docs, which the batch keeps alive. */
typedef struct vbatch {
    uint32_t dim;
    bool text_ok;      /* the index embeds "text" */
    vx_vector_in *v;   /* n of cap */
    const char **text; /* per vector: the text to embed, or NULL */
    float *values;     /* cap * dim; v[i].values set once parsing ends */
    size_t n, cap;
    size_t n_text;
    json_t **docs; /* one reference each */
    size_t ndocs, docs_cap;
    size_t discarded; /* unparsable lines skipped (unparsable-behavior=discard) */
} vbatch;

static void batch_free(vbatch *b)
{
    for (size_t i = 0; i < b->ndocs; i++)
        json_decref(b->docs[i]);
    free(b->docs);
    free(b->v);
    free(b->text);
    free(b->values);
}

static int batch_keep(vbatch *b, json_t *doc)
{
    if (b->ndocs == b->docs_cap) {
        size_t nc = b->docs_cap ? b->docs_cap * 2 : 16;
        json_t **nd = realloc(b->docs, nc * sizeof *nd);
        if (!nd)
            return -1;
        b->docs = nd;
        b->docs_cap = nc;
    }
    b->docs[b->ndocs++] = json_incref(doc);
    return 0;
}

static int batch_grow(vbatch *b)
{
    if (b->n < b->cap)
        return 0;
    size_t nc = b->cap ? b->cap * 2 : 16;
    if (nc > VX_INDEX_BATCH_MAX)
        nc = VX_INDEX_BATCH_MAX;
    vx_vector_in *nv = realloc(b->v, nc * sizeof *nv);
    if (!nv)
        return -1;
    b->v = nv;
    const char **nt = realloc(b->text, nc * sizeof *nt);
    if (!nt)
        return -1;
    b->text = nt;
    float *nf = realloc(b->values, nc * b->dim * sizeof *nf);
    if (!nf)
        return -1;
    b->values = nf;
    b->cap = nc;
    return 0;
}

/* Reads a JSON array of exactly dim numbers into out. where names it in
 * messages ("line 3: values", "vector"). */
static int read_values(const json_t *a, uint32_t dim, float *out, const char *where, char *err,
                       size_t errlen)
{
    if (!json_is_array(a)) {
        snprintf(err, errlen, "%s must be an array of %u numbers", where, dim);
        return -1;
    }
    size_t n = json_array_size(a);
    if (n != dim) {
        snprintf(err, errlen, "%s has %zu dimensions; the index has %u", where, n, dim);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        const json_t *e = json_array_get(a, i);
        if (!json_is_number(e)) {
            snprintf(err, errlen, "%s[%zu] must be a number", where, i);
            return -1;
        }
        float f = (float)json_number_value(e);
        if (!isfinite(f)) {
            snprintf(err, errlen, "%s[%zu] is outside the range of float32", where, i);
            return -1;
        }
        out[i] = f;
    }
    return 0;
}

/* Adds one vector object. where: "line 3", "vectors[2]". pre: its values
 * were already read into the batch's next slot (vx_api_load_line; o's
 * "values" is null then). 0 or -1 with err. */
static int batch_add(vbatch *b, json_t *o, const char *where, bool pre, char *err, size_t errlen)
{
    if (!json_is_object(o)) {
        snprintf(err, errlen, "%s: a vector must be a JSON object {\"id\", \"values\", ...}",
                 where);
        return -1;
    }
    if (b->n >= VX_INDEX_BATCH_MAX) {
        snprintf(err, errlen, "too many vectors: at most %d vectors per request",
                 VX_INDEX_BATCH_MAX);
        return -1;
    }
    const json_t *id = json_object_get(o, "id");
    if (!json_is_string(id)) {
        snprintf(err, errlen, "%s: 'id' must be a string (1 to %d bytes)", where, VX_INDEX_ID_MAX);
        return -1;
    }
    size_t idlen = json_string_length(id);
    if (idlen == 0 || idlen > VX_INDEX_ID_MAX || strlen(json_string_value(id)) != idlen) {
        snprintf(err, errlen, "%s: 'id' is %zu bytes; ids must be 1 to %d bytes (and hold no NUL)",
                 where, idlen, VX_INDEX_ID_MAX);
        return -1;
    }
    const json_t *ns = json_object_get(o, "namespace");
    if (ns && !json_is_null(ns)) {
        if (!json_is_string(ns)) {
            snprintf(err, errlen, "%s: 'namespace' must be a string", where);
            return -1;
        }
        size_t nl = json_string_length(ns);
        if (nl > VX_INDEX_NAMESPACE_MAX || strlen(json_string_value(ns)) != nl) {
            snprintf(err, errlen, "%s: 'namespace' is %zu bytes; the limit is %d bytes", where, nl,
                     VX_INDEX_NAMESPACE_MAX);
            return -1;
        }
    }
    const json_t *md = json_object_get(o, "metadata");
    if (md && !json_is_null(md)) {
        if (!json_is_object(md)) {
            snprintf(err, errlen, "%s: 'metadata' must be a JSON object", where);
            return -1;
        }
        size_t ml = json_compact_size(md);
        if (ml > VX_INDEX_METADATA_MAX) {
            snprintf(err, errlen,
                     "%s: 'metadata' is %zu bytes of JSON; the limit is %d bytes (10 KiB) per "
                     "vector",
                     where, ml, VX_INDEX_METADATA_MAX);
            return -1;
        }
    }
    const json_t *values = json_object_get(o, "values");
    const json_t *text = json_object_get(o, "text");
    if (batch_grow(b) != 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    size_t i = b->n;
    b->text[i] = NULL;
    if (pre) {
        /* read by the line scanner, into this slot */
    } else if (values && !json_is_null(values)) {
        char w[64];
        snprintf(w, sizeof w, "%s: values", where);
        if (read_values(values, b->dim, b->values + i * b->dim, w, err, errlen) != 0)
            return -1;
    } else if (text && b->text_ok) {
        if (!json_is_string(text) || json_string_length(text) == 0 ||
            strlen(json_string_value(text)) != json_string_length(text)) {
            snprintf(err, errlen, "%s: 'text' must be a non-empty string", where);
            return -1;
        }
        b->text[i] = json_string_value(text);
        b->n_text++;
    } else if (text) {
        snprintf(err, errlen,
                 "%s: this index takes 'values' (%u numbers): 'text' needs an index created with "
                 "the preset of a text-embeddings model this agent serves",
                 where, b->dim);
        return -1;
    } else {
        snprintf(err, errlen, "%s: 'values' is required (an array of %u numbers)%s", where, b->dim,
                 b->text_ok ? ", or 'text' to embed" : "");
        return -1;
    }
    if (batch_keep(b, o) != 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    b->v[i] = (vx_vector_in){
        .id = json_string_value(id),
        .values = NULL,
        .ns = json_is_string(ns) ? json_string_value(ns) : NULL,
        .metadata = json_is_object(md) ? md : NULL,
    };
    b->n++;
    return 0;
}

/* ---- NDJSON lines: a fast path for "values" -------------------------------
 *
 * Parsing a line with jansson makes one json_t per number: most of the cost
 * of a large insert. vx_api_load_line reads the top-level "values" array
 * itself, straight into floats, and hands jansson the rest of the line with
 * the array replaced by null. The array it reads is a well-formed JSON value,
 * so the line is valid JSON exactly when the rest is, and jansson still
 * judges everything else (duplicates, escapes, trailing bytes). Anything
 * unusual (an escaped key, a repeated "values", an element that is not a
 * number, a count other than dim, an integer beyond int64, a value outside
 * float32) leaves the line to jansson whole, which answers exactly as before.
 */

static bool is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static size_t skip_ws(const char *p, size_t i, size_t n)
{
    while (i < n && is_ws(p[i]))
        i++;
    return i;
}

/* p[*i] is '"': moves past the closing quote. false if unterminated. */
static bool skip_string(const char *p, size_t n, size_t *i, bool *escaped)
{
    size_t k = *i + 1;
    while (k < n && p[k] != '"') {
        if (p[k] == '\\') {
            *escaped = true;
            k++;
        }
        k++;
    }
    if (k >= n)
        return false;
    *i = k + 1;
    return true;
}

/* Moves past one JSON value without judging it (jansson does): strings,
 * nested containers by depth, scalars up to a delimiter. */
static bool skip_value(const char *p, size_t n, size_t *i)
{
    size_t k = *i;
    bool esc = false;
    if (k >= n)
        return false;
    if (p[k] == '"')
        return skip_string(p, n, i, &esc);
    if (p[k] == '{' || p[k] == '[') {
        size_t depth = 0;
        while (k < n) {
            char c = p[k];
            if (c == '"') {
                if (!skip_string(p, n, &k, &esc))
                    return false;
                continue;
            }
            if (c == '{' || c == '[')
                depth++;
            else if ((c == '}' || c == ']') && --depth == 0) {
                *i = k + 1;
                return true;
            }
            k++;
        }
        return false;
    }
    size_t s = k;
    while (k < n && !is_ws(p[k]) && p[k] != ',' && p[k] != '}' && p[k] != ']')
        k++;
    *i = k;
    return k > s;
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* One JSON number at p[*i] as jansson would read it, into *out; false when
 * it is not one, or is one that jansson refuses or might read otherwise
 * (integers beyond int64, overflow): the caller then leaves it to jansson. */
static bool scan_number(const char *p, size_t n, size_t *i, double *out)
{
    static const double pow10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                   1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                   1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    size_t s = *i, k = s;
    bool neg = k < n && p[k] == '-';
    if (neg)
        k++;
    if (k >= n || !is_digit(p[k]))
        return false;
    uint64_t m = 0;    /* significant digits (up to 19) */
    int nsig = 0;      /* digits in m, leading zeros not counted */
    bool more = false; /* significant digits beyond the 19 in m */
    int exp10 = 0;
    if (p[k] == '0') {
        k++;
    } else {
        while (k < n && is_digit(p[k])) {
            if (nsig < 19) {
                m = m * 10 + (uint64_t)(p[k] - '0');
                nsig++;
            } else {
                more = true;
                exp10++;
            }
            k++;
        }
    }
    bool real = false;
    if (k < n && p[k] == '.') {
        k++;
        if (k >= n || !is_digit(p[k]))
            return false;
        while (k < n && is_digit(p[k])) {
            if (nsig == 0 && p[k] == '0') {
                exp10--;
            } else if (nsig < 19) {
                m = m * 10 + (uint64_t)(p[k] - '0');
                nsig++;
                exp10--;
            } else {
                more = true;
            }
            k++;
        }
        real = true;
    }
    if (k < n && (p[k] == 'e' || p[k] == 'E')) {
        k++;
        bool eneg = k < n && p[k] == '-';
        if (k < n && (p[k] == '-' || p[k] == '+'))
            k++;
        if (k >= n || !is_digit(p[k]))
            return false;
        int e = 0;
        while (k < n && is_digit(p[k])) {
            if (e < 100000)
                e = e * 10 + (p[k] - '0');
            k++;
        }
        exp10 += eneg ? -e : e;
        real = true;
    }
    *i = k;
    if (!real) {
        /* jansson reads an integer as a long long (an error beyond it). */
        if (more || nsig > 19)
            return false;
        if (m > (uint64_t)INT64_MAX + (neg ? 1u : 0u))
            return false;
        long long v =
            neg ? (m == (uint64_t)INT64_MAX + 1u ? INT64_MIN : -(long long)m) : (long long)m;
        *out = (double)v;
        return true;
    }
    double d;
    if (!more && nsig <= 15 && exp10 >= -22 && exp10 <= 22) {
        /* Exact: m < 2^53 and 10^|exp10| is a double, so one rounding. */
        d = (double)m;
        d = exp10 >= 0 ? d * pow10[exp10] : d / pow10[-exp10];
    } else {
        char buf[64];
        if (k - s >= sizeof buf)
            return false;
        memcpy(buf, p + s, k - s);
        buf[k - s] = '\0';
        d = strtod(buf, NULL);
        if (!isfinite(d))
            return false;
        *out = d;
        return true;
    }
    *out = neg ? -d : d;
    return true;
}

/* Reads the array at p[*i] ('[') of exactly dim numbers into out. */
static bool scan_values(const char *p, size_t n, size_t *i, uint32_t dim, float *out)
{
    size_t k = *i + 1, count = 0;
    k = skip_ws(p, k, n);
    if (k < n && p[k] == ']') {
        if (dim != 0)
            return false;
        *i = k + 1;
        return true;
    }
    for (;;) {
        double d;
        if (count >= dim || !scan_number(p, n, &k, &d))
            return false;
        float f = (float)d;
        if (!isfinite(f))
            return false;
        out[count++] = f;
        k = skip_ws(p, k, n);
        if (k >= n)
            return false;
        if (p[k] == ']')
            break;
        if (p[k] != ',')
            return false;
        k = skip_ws(p, k + 1, n);
    }
    if (count != dim)
        return false;
    *i = k + 1;
    return true;
}

/* Finds the top-level "values" of the object text p[0..n) and reads it.
 * true with [*start, *end) its bytes; false: leave the line to jansson. */
static bool scan_line(const char *p, size_t n, uint32_t dim, float *out, size_t *start, size_t *end)
{
    size_t i = skip_ws(p, 0, n);
    bool found = false;
    if (i >= n || p[i] != '{')
        return false;
    i = skip_ws(p, i + 1, n);
    if (i < n && p[i] == '}')
        return false;
    for (;;) {
        if (i >= n || p[i] != '"')
            return false;
        size_t ks = i;
        bool esc = false;
        if (!skip_string(p, n, &i, &esc))
            return false;
        if (esc)
            return false; /* an escaped key might spell "values" */
        bool is_values = i - ks == 8 && memcmp(p + ks + 1, "values", 6) == 0;
        i = skip_ws(p, i, n);
        if (i >= n || p[i] != ':')
            return false;
        i = skip_ws(p, i + 1, n);
        if (is_values) {
            if (found || i >= n || p[i] != '[')
                return false;
            *start = i;
            if (!scan_values(p, n, &i, dim, out))
                return false;
            *end = i;
            found = true;
        } else if (!skip_value(p, n, &i)) {
            return false;
        }
        i = skip_ws(p, i, n);
        if (i >= n)
            return false;
        if (p[i] == '}')
            break;
        if (p[i] != ',')
            return false;
        i = skip_ws(p, i + 1, n);
    }
    return found;
}

json_t *vx_api_load_line(const char *line, size_t len, uint32_t dim, float *values,
                         bool *have_values, char **scratch, size_t *cap, json_error_t *jerr)
{
    size_t start, end;
    *have_values = false;
    if (dim > 0 && scan_line(line, len, dim, values, &start, &end)) {
        size_t need = len - (end - start) + 4;
        if (need > *cap) {
            char *nb = realloc(*scratch, need);
            if (nb) {
                *scratch = nb;
                *cap = need;
            }
        }
        if (need <= *cap) {
            memcpy(*scratch, line, start);
            memcpy(*scratch + start, "null", 4);
            memcpy(*scratch + start + 4, line + end, len - end);
            json_t *o = json_loadb(*scratch, need, JSON_REJECT_DUPLICATES, jerr);
            if (o) {
                *have_values = true;
                return o;
            }
            /* Invalid: parse the line as sent, for the error's position. */
        }
    }
    return json_loadb(line, len, JSON_REJECT_DUPLICATES, jerr);
}

static bool is_blank(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r' && p[i] != '\n')
            return false;
    return true;
}

/* NDJSON: one vector object a line; blank lines skipped. */
static int parse_ndjson(vbatch *b, const char *p, size_t len, bool discard, char *err,
                        size_t errlen)
{
    size_t line = 0;
    char *scratch = NULL; /* vx_api_load_line's, reused by every line */
    size_t cap = 0;
    int rc = 0;
    while (len > 0 && rc == 0) {
        const char *nl = memchr(p, '\n', len);
        size_t n = nl ? (size_t)(nl - p) : len;
        line++;
        if (!is_blank(p, n)) {
            json_error_t jerr;
            bool pre = false;
            json_t *o = NULL;
            if (b->n >= VX_INDEX_BATCH_MAX) {
                snprintf(err, errlen, "too many vectors: at most %d vectors per request",
                         VX_INDEX_BATCH_MAX);
                rc = -1;
                break;
            }
            if (batch_grow(b) != 0) {
                snprintf(err, errlen, "out of memory");
                rc = -1;
                break;
            }
            o = vx_api_load_line(p, n, b->dim, b->values + b->n * b->dim, &pre, &scratch, &cap,
                                 &jerr);
            if (!o || !json_is_object(o)) {
                json_decref(o);
                if (discard) {
                    b->discarded++;
                } else {
                    if (o)
                        snprintf(err, errlen, "line %zu: a vector must be a JSON object", line);
                    else
                        snprintf(err, errlen,
                                 "line %zu: not valid JSON: %s (column %d); send "
                                 "unparsable-behavior=discard to skip such lines",
                                 line, jerr.text, jerr.column);
                    rc = -1;
                }
            } else {
                char where[32];
                snprintf(where, sizeof where, "line %zu", line);
                rc = batch_add(b, o, where, pre, err, errlen);
                json_decref(o);
            }
        }
        if (!nl)
            break;
        len -= n + 1;
        p = nl + 1;
    }
    free(scratch);
    return rc;
}

static const char *memmem_s(const char *hay, size_t n, const char *needle, size_t m)
{
    return m <= n ? memmem(hay, n, needle, m) : NULL;
}

/* The NDJSON of a multipart/form-data body: the part named "vectors", else
 * the first part. 0 with out and outlen pointing into body, or -1 with err. */
static int multipart_part(const char *ctype, const char *body, size_t len, const char **out,
                          size_t *outlen, char *err, size_t errlen)
{
    const char *bp = strcasestr(ctype, "boundary=");
    if (!bp) {
        snprintf(err, errlen, "multipart/form-data without a boundary");
        return -1;
    }
    bp += 9;
    bool quoted = *bp == '"';
    if (quoted)
        bp++;
    size_t bl = strcspn(bp, quoted ? "\"" : "; \t");
    if (bl == 0 || bl > BOUNDARY_MAX) {
        snprintf(err, errlen, "multipart/form-data: the boundary must be 1 to %d characters",
                 BOUNDARY_MAX);
        return -1;
    }
    char delim[BOUNDARY_MAX + 3];
    delim[0] = '-';
    delim[1] = '-';
    memcpy(delim + 2, bp, bl);
    size_t dl = bl + 2;
    const char *first = NULL, *named = NULL;
    size_t first_len = 0, named_len = 0;
    const char *p = memmem_s(body, len, delim, dl);
    for (int parts = 0; p && parts < MULTIPART_PARTS_MAX && !named; parts++) {
        const char *end = body + len;
        p += dl;
        if (end - p >= 2 && p[0] == '-' && p[1] == '-')
            break; /* the closing delimiter */
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol)
            break;
        const char *hdr = eol + 1;
        /* Part headers end at an empty line (CRLF CRLF, or LF LF). */
        const char *hend = memmem_s(hdr, (size_t)(end - hdr), "\r\n\r\n", 4);
        size_t skip = 4;
        const char *hend_lf = memmem_s(hdr, (size_t)(end - hdr), "\n\n", 2);
        if (!hend || (hend_lf && hend_lf < hend)) {
            hend = hend_lf;
            skip = 2;
        }
        if (hdr + 1 < end && (hdr[0] == '\n' || (hdr[0] == '\r' && hdr[1] == '\n'))) {
            hend = hdr; /* no headers at all */
            skip = hdr[0] == '\n' ? 1 : 2;
        }
        if (!hend)
            break;
        const char *content = hend + skip;
        const char *next = memmem_s(content, (size_t)(end - content), delim, dl);
        if (!next)
            break;
        size_t clen = (size_t)(next - content);
        /* The CRLF before the delimiter belongs to it. */
        if (clen >= 1 && content[clen - 1] == '\n')
            clen--;
        if (clen >= 1 && content[clen - 1] == '\r')
            clen--;
        size_t hlen = (size_t)(hend - hdr);
        bool is_vectors = memmem_s(hdr, hlen, "name=\"vectors\"", 14) != NULL;
        if (!first) {
            first = content;
            first_len = clen;
        }
        if (is_vectors) {
            named = content;
            named_len = clen;
        }
        p = next;
    }
    if (named) {
        *out = named;
        *outlen = named_len;
        return 0;
    }
    if (first) {
        *out = first;
        *outlen = first_len;
        return 0;
    }
    snprintf(err, errlen, "multipart/form-data body holds no part with vectors");
    return -1;
}

/* Every accepted body shape: multipart (a part with NDJSON); a JSON object
 * {"vectors": [...]}; a JSON array of vectors; a JSON string holding NDJSON
 * (what Cloudflare's Python SDK sends for a str body); else NDJSON (one
 * line: one object, also when it is the whole body). */
static int parse_vectors(op_http_req *r, vbatch *b, bool discard, char *err, size_t errlen)
{
    size_t len = 0;
    const char *body = op_http_req_body(r, &len);
    if (!body)
        body = "";
    const char *ctype = op_http_req_header(r, "Content-Type");
    if (ctype && strncasecmp(ctype, "multipart/form-data", 19) == 0) {
        const char *part;
        size_t plen;
        if (multipart_part(ctype, body, len, &part, &plen, err, errlen) != 0)
            return -1;
        return parse_ndjson(b, part, plen, discard, err, errlen);
    }
    size_t off = 0;
    while (off < len &&
           (body[off] == ' ' || body[off] == '\t' || body[off] == '\r' || body[off] == '\n'))
        off++;
    char c = off < len ? body[off] : '\0';
    if (c == '[' || c == '"' || c == '{') {
        json_error_t jerr;
        json_t *all = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
        if (!all && c != '{') {
            snprintf(err, errlen, "request body is not valid JSON: %s (line %d, column %d)",
                     jerr.text, jerr.line, jerr.column);
            return -1;
        }
        if (all) {
            int rc = 0;
            json_t *list = json_is_array(all) ? all : json_object_get(all, "vectors");
            if (json_is_string(all)) {
                rc = parse_ndjson(b, json_string_value(all), json_string_length(all), discard, err,
                                  errlen);
            } else if (json_is_object(all) && !list) {
                rc = batch_add(b, all, "line 1", false, err, errlen);
            } else if (!json_is_array(list)) {
                snprintf(err, errlen, "'vectors' must be an array of vector objects");
                rc = -1;
            } else {
                size_t i;
                json_t *e;
                json_array_foreach(list, i, e)
                {
                    char where[32];
                    snprintf(where, sizeof where, "vectors[%zu]", i);
                    if ((rc = batch_add(b, e, where, false, err, errlen)) != 0)
                        break;
                }
            }
            json_decref(all);
            return rc;
        }
        /* An object that is not the whole body: NDJSON of several lines. */
    }
    return parse_ndjson(b, body + off, len - off, discard, err, errlen);
}

/* ------------------------------------------------------------------------ */
/* text in: the index's embedding model                                      */
/* ------------------------------------------------------------------------ */

/* One inference request waited for. Shared by the waiter and the plugin's
 * completion; the last of the two frees it (a waiter that gave up on a
 * stuck model leaves it to the completion). */
typedef struct embed_call {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    _Atomic int refs;
    bool done;
    int code;
    char *result;
    size_t len;
    char msg[512];
} embed_call;

static void embed_unref(embed_call *c)
{
    if (atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c->result);
    free(c);
}

static void embed_on_complete(void *ctx, const char *result_json, size_t len, int code,
                              const char *message)
{
    embed_call *c = ctx;
    pthread_mutex_lock(&c->mu);
    c->code = code;
    if (code == 0 && result_json) {
        c->result = malloc(len + 1);
        if (c->result) {
            memcpy(c->result, result_json, len);
            c->result[len] = '\0';
            c->len = len;
        } else {
            c->code = OUTPOST_ERR_INTERNAL;
            snprintf(c->msg, sizeof c->msg, "out of memory");
        }
    } else if (code != 0) {
        snprintf(c->msg, sizeof c->msg, "%s", message ? message : "inference failed");
    }
    c->done = true;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    embed_unref(c);
}

/* Waits for c->done until deadline (CLOCK_MONOTONIC ns). */
static bool embed_wait(embed_call *c, uint64_t deadline_ns)
{
    pthread_mutex_lock(&c->mu);
    while (!c->done) {
        uint64_t now = pl_time_mono_ns();
        if (now >= deadline_ns)
            break;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t wait = deadline_ns - now;
        if (wait > 100000000ull)
            wait = 100000000ull; /* wake to re-check the clock */
        ts.tv_sec += (time_t)(wait / 1000000000ull);
        ts.tv_nsec += (long)(wait % 1000000000ull);
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&c->cv, &c->mu, &ts);
    }
    bool done = c->done;
    pthread_mutex_unlock(&c->mu);
    return done;
}

/* An embedding failure: HTTP status and message. */
typedef struct embed_err {
    int status;
    char msg[768];
} embed_err;

/* The index's model, loaded and serving text embeddings; NULL with e set. */
static const op_runtime_model *embed_model(op_runtime *rt, const char *model_id, embed_err *e)
{
    const op_runtime_model *m = op_runtime_find_model(rt, model_id);
    if (!m) {
        e->status = 503;
        snprintf(e->msg, sizeof e->msg,
                 "the index embeds text with model '%s', which this agent does not serve now",
                 model_id);
        return NULL;
    }
    if (!m->model) {
        e->status = 503;
        snprintf(e->msg, sizeof e->msg, "the index's embedding model '%s' is not available: %s",
                 model_id, m->load_error ? m->load_error : "not loaded");
        return NULL;
    }
    if (strcmp(m->cfg->task, "text-embeddings") != 0) {
        e->status = 503;
        snprintf(e->msg, sizeof e->msg, "model '%s' serves %s, not text-embeddings", model_id,
                 m->cfg->task);
        return NULL;
    }
    return m;
}

/* Embeds texts[0..n) (n <= VX_API_EMBED_BATCH) into out (n * dim floats)
 * with one inference request. 0, or -1 with e. */
static int embed_chunk(op_runtime *rt, const op_runtime_model *m, const char *const *texts,
                       size_t n, uint32_t dim, float *out, embed_err *e)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++)
        if (json_array_append_new(arr, json_string(texts[i])) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    json_t *in = arr ? json_pack("{s:o}", "text", arr) : NULL;
    char *body = in ? json_dumps(in, JSON_COMPACT) : NULL;
    json_decref(in);
    if (!body) {
        e->status = 500;
        snprintf(e->msg, sizeof e->msg, "out of memory");
        return -1;
    }
    embed_call *c = calloc(1, sizeof *c);
    if (!c) {
        free(body);
        e->status = 500;
        snprintf(e->msg, sizeof e->msg, "out of memory");
        return -1;
    }
    pthread_mutex_init(&c->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cv, &ca);
    pthread_condattr_destroy(&ca);
    atomic_init(&c->refs, 2); /* the waiter, the completion */
    op_infer_callbacks cb = {.ctx = c, .on_emit = NULL, .on_complete = embed_on_complete};
    op_infer *inf = NULL;
    char err[512];
    int code = op_infer_submit(m->model, m->cfg->id, m->cfg->task, body, strlen(body), 0, &cb, &inf,
                               err, sizeof err);
    free(body);
    if (code != 0) {
        atomic_store(&c->refs, 1); /* no completion will come */
        embed_unref(c);
        e->status = op_http_status_for_error(code);
        snprintf(e->msg, sizeof e->msg, "embedding model '%s' refused the texts: %s", m->cfg->id,
                 err);
        return -1;
    }
    int timeout_s = rt->cfg->server.request_timeout_s > 0 ? rt->cfg->server.request_timeout_s : 300;
    bool done = embed_wait(c, pl_time_mono_ns() + (uint64_t)timeout_s * 1000000000ull);
    if (!done) {
        op_infer_cancel(inf);
        done = embed_wait(c, pl_time_mono_ns() + 5000000000ull);
    }
    op_infer_release(inf);
    if (!done) {
        embed_unref(c); /* the completion frees it when it comes */
        e->status = 504;
        snprintf(e->msg, sizeof e->msg,
                 "embedding with model '%s' exceeded server.request_timeout_s (%d s)", m->cfg->id,
                 timeout_s);
        return -1;
    }
    int rc = 0;
    if (c->code != 0) {
        e->status = c->code == OUTPOST_ERR_CANCELLED ? 504 : op_http_status_for_error(c->code);
        snprintf(e->msg, sizeof e->msg, "embedding model '%s' failed: %s", m->cfg->id, c->msg);
        rc = -1;
    } else {
        json_t *res = json_loadb(c->result ? c->result : "", c->len, 0, NULL);
        json_t *data = json_object_get(res, "data");
        if (!json_is_array(data) || json_array_size(data) != n) {
            e->status = 502;
            snprintf(e->msg, sizeof e->msg,
                     "embedding model '%s' answered without one vector per text", m->cfg->id);
            rc = -1;
        }
        for (size_t i = 0; rc == 0 && i < n; i++) {
            char w[64];
            snprintf(w, sizeof w, "the model's embedding %zu", i);
            if (read_values(json_array_get(data, i), dim, out + i * dim, w, e->msg,
                            sizeof e->msg) != 0) {
                e->status = 502;
                rc = -1;
            }
        }
        json_decref(res);
    }
    embed_unref(c);
    return rc;
}

/* Embeds texts[0..n) into out (n * dim floats), VX_API_EMBED_BATCH a
 * request. 0, or -1 with e. */
static int embed_texts(op_runtime *rt, const char *model_id, const char *const *texts, size_t n,
                       uint32_t dim, float *out, embed_err *e)
{
    const op_runtime_model *m = embed_model(rt, model_id, e);
    if (!m)
        return -1;
    for (size_t i = 0; i < n; i += VX_API_EMBED_BATCH) {
        size_t k = n - i < VX_API_EMBED_BATCH ? n - i : VX_API_EMBED_BATCH;
        if (embed_chunk(rt, m, texts + i, k, dim, out + i * dim, e) != 0)
            return -1;
    }
    return 0;
}

static void reply_embed_err(vreq *q, const embed_err *e)
{
    if (e->status == 429 || e->status == 503)
        op_http_add_header(q->r, "Retry-After", "1");
    reply_err(q, e->status >= 400 ? e->status : 500, VX_API_ERR_EMBED, "%s", e->msg);
}

/* ------------------------------------------------------------------------ */
/* presets                                                                   */
/* ------------------------------------------------------------------------ */

/* Cloudflare's presets: the embedding models Vectorize knows by name. */
static const struct {
    const char *name;
    uint32_t dimensions;
} cf_presets[] = {
    {"@cf/baai/bge-small-en-v1.5", 384},     {"@cf/baai/bge-base-en-v1.5", 768},
    {"@cf/baai/bge-large-en-v1.5", 1024},    {"openai/text-embedding-ada-002", 1536},
    {"cohere/embed-multilingual-v2.0", 768},
};

/* Resolves a preset into c (dimensions, metric, preset, embed_model). A
 * text-embeddings model the agent serves wins over Cloudflare's table, so
 * that a local model aliased "@cf/baai/bge-base-en-v1.5" makes an index
 * that takes its text. 0, or the HTTP status with msg. */
static int resolve_preset(op_runtime *rt, const char *preset, vx_index_config *c, char *msg,
                          size_t msglen)
{
    const op_runtime_model *m = op_runtime_find_model(rt, preset);
    if (m && strcmp(m->cfg->task, "text-embeddings") == 0) {
        if (!m->model) {
            snprintf(msg, msglen,
                     "preset '%s': the model is not loaded (%s), so its dimensions are unknown",
                     preset, m->load_error ? m->load_error : "not loaded");
            return 503;
        }
        long long dims = op_model_info(m->model)->dimensions;
        if (dims <= 0 || dims > UINT32_MAX) {
            snprintf(msg, msglen,
                     "preset '%s': the model does not report its dimensions; create the index "
                     "with config.dimensions and config.metric instead",
                     preset);
            return 400;
        }
        c->dimensions = (uint32_t)dims;
        c->metric = VX_COSINE;
        c->embed_model = strdup(m->cfg->id);
        c->preset = strdup(preset);
        if (c->embed_model && c->preset)
            return 0;
        snprintf(msg, msglen, "out of memory");
        return 500;
    }
    for (size_t i = 0; i < sizeof cf_presets / sizeof cf_presets[0]; i++) {
        if (strcmp(preset, cf_presets[i].name) == 0) {
            c->dimensions = cf_presets[i].dimensions;
            c->metric = VX_COSINE;
            c->preset = strdup(preset);
            if (c->preset)
                return 0;
            snprintf(msg, msglen, "out of memory");
            return 500;
        }
    }
    snprintf(msg, msglen,
             "unknown preset '%.200s': one of @cf/baai/bge-small-en-v1.5, "
             "@cf/baai/bge-base-en-v1.5, @cf/baai/bge-large-en-v1.5, "
             "openai/text-embedding-ada-002, cohere/embed-multilingual-v2.0, or a "
             "text-embeddings model this agent serves",
             preset);
    return 400;
}

/* ------------------------------------------------------------------------ */
/* indexes                                                                   */
/* ------------------------------------------------------------------------ */

static json_t *index_json(vx_index *x)
{
    const vx_index_config *c = vx_index_get_config(x);
    json_t *cfg = json_pack("{s:I, s:s}", "dimensions", (json_int_t)c->dimensions, "metric",
                            vx_metric_name(c->metric));
    if (cfg && c->preset)
        json_object_set_new(cfg, "preset", json_string(c->preset));
    if (cfg && c->embed_model)
        json_object_set_new(cfg, "embeddingModel", json_string(c->embed_model));
    if (!cfg)
        return NULL;
    return json_pack("{s:s, s:o, s:o, s:o, s:o}", "name", c->name, "description",
                     c->description ? json_string(c->description) : json_string(""), "config", cfg,
                     "created_on", iso8601(c->created_ms), "modified_on", iso8601(c->modified_ms));
}

static void handle_create(vreq *q)
{
    json_t *in = body_object(q);
    if (!in)
        return;
    char msg[768];
    vx_index_config c;
    memset(&c, 0, sizeof c);
    const json_t *name = json_object_get(in, "name");
    const json_t *desc = json_object_get(in, "description");
    const json_t *cfg = json_object_get(in, "config");
    const json_t *preset = json_object_get(cfg, "preset");
    const json_t *dims = json_object_get(cfg, "dimensions");
    const json_t *metric = json_object_get(cfg, "metric");
    int status = 400;
    if (!json_is_string(name) || json_string_length(name) == 0) {
        snprintf(msg, sizeof msg, "'name' is required: a string of 1 to %d characters",
                 VX_INDEX_NAME_MAX);
    } else if (json_string_length(name) > VX_INDEX_NAME_MAX) {
        snprintf(msg, sizeof msg, "'name' is %zu bytes; index names are at most %d",
                 json_string_length(name), VX_INDEX_NAME_MAX);
    } else if (desc && !json_is_null(desc) && !json_is_string(desc)) {
        snprintf(msg, sizeof msg, "'description' must be a string");
    } else if (json_is_string(desc) && json_string_length(desc) > VX_INDEX_DESCRIPTION_MAX) {
        snprintf(msg, sizeof msg, "'description' is %zu bytes; the limit is %d bytes",
                 json_string_length(desc), VX_INDEX_DESCRIPTION_MAX);
    } else if (!json_is_object(cfg)) {
        snprintf(msg, sizeof msg,
                 "'config' is required: {\"dimensions\": N, \"metric\": \"cosine\" | "
                 "\"euclidean\" | \"dot-product\"} or {\"preset\": \"...\"}");
    } else if (preset && !json_is_string(preset)) {
        snprintf(msg, sizeof msg, "'config.preset' must be a string");
    } else {
        status = 0;
    }
    if (status == 0 && json_is_string(preset)) {
        status = resolve_preset(q->rt, json_string_value(preset), &c, msg, sizeof msg);
        long long d;
        if (status == 0 && dims &&
            (!json_whole(dims, 1, UINT32_MAX, &d) || (uint32_t)d != c.dimensions)) {
            status = 400;
            snprintf(msg, sizeof msg,
                     "preset '%s' has %u dimensions; 'config.dimensions' disagrees (leave it out)",
                     c.preset, c.dimensions);
        }
        if (status == 0 && metric &&
            (!json_is_string(metric) ||
             vx_metric_parse(json_string_value(metric)) != (int)c.metric)) {
            status = 400;
            snprintf(msg, sizeof msg,
                     "preset '%s' uses the cosine metric; 'config.metric' disagrees (leave it out)",
                     c.preset);
        }
    } else if (status == 0) {
        long long d;
        int mt = json_is_string(metric) ? vx_metric_parse(json_string_value(metric)) : -1;
        uint32_t maxd = vx_store_max_dimensions(g_store);
        if (!json_whole(dims, 1, maxd, &d)) {
            status = 400;
            snprintf(msg, sizeof msg,
                     "'config.dimensions' must be a whole number from 1 to %u "
                     "(vectorize.max_dimensions)",
                     maxd);
        } else if (mt < 0) {
            status = 400;
            snprintf(msg, sizeof msg,
                     "'config.metric' must be \"cosine\", \"euclidean\" or \"dot-product\"");
        } else {
            c.dimensions = (uint32_t)d;
            c.metric = (vx_metric)mt;
        }
    }
    if (status != 0) {
        vx_index_config_free(&c);
        json_decref(in);
        reply_err(q, status, status == 400 ? OP_API_ERR_INVALID_INPUT : VX_API_ERR_EMBED, "%s",
                  msg);
        return;
    }
    snprintf(c.name, sizeof c.name, "%s", json_string_value(name));
    bool has_desc = json_is_string(desc);
    if (has_desc)
        c.description = strdup(json_string_value(desc));
    c.created_ms = c.modified_ms = pl_time_wall_ms();
    c.hnsw.M = (uint32_t)g_opts.hnsw_m;
    c.hnsw.ef_construction = (uint32_t)g_opts.hnsw_ef_construction;
    c.hnsw.ef_search = (uint32_t)g_opts.hnsw_ef_search;
    json_decref(in); /* name, desc and cfg die with it */
    if (has_desc && !c.description) {
        vx_index_config_free(&c);
        reply_err(q, 500, VX_API_ERR_STORE, "out of memory");
        return;
    }
    vx_index *x = NULL;
    char err[512] = "";
    int rc = vx_store_create(g_store, q->account, &c, &x, err, sizeof err);
    if (rc == -EEXIST)
        reply_err(q, 409, VX_API_ERR_EXISTS, "an index named '%s' already exists in this account",
                  c.name);
    else if (rc == -ENOSPC)
        reply_err(q, 409, VX_API_ERR_TOO_MANY,
                  "this account has reached its limit of indexes (vectorize.max_indexes): %s", err);
    else if (rc != 0)
        reply_vx(q, rc, err);
    else
        reply_ok(q, index_json(x));
    vx_index_config_free(&c);
    vx_index_unref(x);
}

static void handle_list_indexes(vreq *q)
{
    vx_index **xs = NULL;
    size_t n = 0;
    int rc = vx_store_list(g_store, q->account, &xs, &n);
    if (rc != 0) {
        reply_vx(q, rc, NULL);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        if (arr && json_array_append_new(arr, index_json(xs[i])) != 0) {
            json_decref(arr);
            arr = NULL;
        }
        vx_index_unref(xs[i]);
    }
    free(xs);
    reply_ok(q, arr);
}

static void zero_gauges(const char *account, const char *name)
{
    op_gauge_set(op_metric_with(m_vectors, account, name), 0);
    op_gauge_set(op_metric_with(m_memory, account, name), 0);
    op_gauge_set(op_metric_with(m_disk, account, name), 0);
    op_gauge_set(op_metric_with(m_pending, account, name), 0);
}

static void handle_delete_index(vreq *q, const char *name)
{
    char err[512] = "";
    int rc = vx_store_delete(g_store, q->account, name, err, sizeof err);
    if (rc == -ENOENT) {
        reply_err(q, 404, VX_API_ERR_NO_INDEX, "no index named '%s' in this account", name);
        return;
    }
    if (rc != 0) {
        reply_vx(q, rc, err);
        return;
    }
    zero_gauges(q->account, name);
    reply_ok(q, json_null());
}

static void handle_info(vreq *q, vx_index *x)
{
    vx_index_info in;
    vx_index_info_get(x, &in);
    reply_ok(q, json_pack("{s:I, s:I, s:o, s:o}", "dimensions", (json_int_t)in.dimensions,
                          "vectorCount", (json_int_t)in.vector_count, "processedUpToMutation",
                          mutation_json(in.processed_upto), "processedUpToDatetime",
                          iso8601(in.processed_upto_ms)));
}

/* ------------------------------------------------------------------------ */
/* vectors                                                                   */
/* ------------------------------------------------------------------------ */

static void reply_mutation(vreq *q, uint64_t id, const char *op, size_t n)
{
    op_counter_inc(op_metric_with(m_mutations, op));
    op_counter_add(op_metric_with(m_mut_vectors, op), (double)n);
    reply_ok(q, json_pack("{s:o}", "mutationId", mutation_json(id)));
}

static void handle_write(vreq *q, vx_index *x, bool upsert)
{
    const vx_index_config *c = vx_index_get_config(x);
    const char *ub = op_http_req_query(q->r, "unparsable-behavior");
    if (!ub)
        ub = op_http_req_query(q->r, "unparsable_behavior");
    bool discard = false;
    if (ub && strcmp(ub, "discard") == 0) {
        discard = true;
    } else if (ub && *ub && strcmp(ub, "error") != 0) {
        bad_input(q, "unparsable-behavior must be 'error' or 'discard'");
        return;
    }
    vbatch b;
    memset(&b, 0, sizeof b);
    b.dim = c->dimensions;
    b.text_ok = c->embed_model != NULL;
    char err[768] = "";
    if (parse_vectors(q->r, &b, discard, err, sizeof err) != 0) {
        batch_free(&b);
        bad_input(q, err);
        return;
    }
    if (b.n == 0) {
        if (b.discarded)
            snprintf(err, sizeof err,
                     "the body holds no vectors (%zu unparsable lines were discarded)",
                     b.discarded);
        else
            snprintf(err, sizeof err,
                     "the body holds no vectors: send NDJSON, one {\"id\", \"values\"} object a "
                     "line");
        batch_free(&b);
        bad_input(q, err);
        return;
    }
    for (size_t i = 0; i < b.n; i++)
        b.v[i].values = b.values + i * b.dim;
    if (b.n_text > 0) {
        /* Gather the texts, embed them, scatter the vectors back. */
        const char **texts = malloc(b.n_text * sizeof *texts);
        float *vecs = malloc(b.n_text * b.dim * sizeof *vecs);
        embed_err e = {.status = 500, .msg = "out of memory"};
        int rc = -1;
        if (texts && vecs) {
            size_t k = 0;
            for (size_t i = 0; i < b.n; i++)
                if (b.text[i])
                    texts[k++] = b.text[i];
            rc = embed_texts(q->rt, c->embed_model, texts, b.n_text, b.dim, vecs, &e);
            k = 0;
            for (size_t i = 0; rc == 0 && i < b.n; i++)
                if (b.text[i])
                    memcpy(b.values + i * b.dim, vecs + (k++) * b.dim, b.dim * sizeof *vecs);
        }
        free(texts);
        free(vecs);
        if (rc != 0) {
            batch_free(&b);
            reply_embed_err(q, &e);
            return;
        }
    }
    uint64_t mid = 0;
    int rc = upsert ? vx_index_upsert(x, b.v, b.n, &mid, err, sizeof err)
                    : vx_index_insert(x, b.v, b.n, &mid, err, sizeof err);
    size_t n = b.n;
    batch_free(&b);
    if (rc != 0) {
        reply_vx(q, rc, err);
        return;
    }
    reply_mutation(q, mid, upsert ? "upsert" : "insert", n);
}

/* "ids": a non-empty array of 1..VX_INDEX_IDS_MAX ids into ids (borrowed
 * from in). 0, or -1 with err. */
static int read_ids(const json_t *in, const char ***ids, size_t *n, char *err, size_t errlen)
{
    const json_t *a = json_object_get(in, "ids");
    if (!json_is_array(a) || json_array_size(a) == 0) {
        snprintf(err, errlen, "'ids' is required: a non-empty array of vector ids");
        return -1;
    }
    size_t k = json_array_size(a);
    if (k > VX_INDEX_IDS_MAX) {
        snprintf(err, errlen, "'ids' has %zu ids; at most %d ids per request", k, VX_INDEX_IDS_MAX);
        return -1;
    }
    const char **out = malloc(k * sizeof *out);
    if (!out) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < k; i++) {
        const json_t *e = json_array_get(a, i);
        size_t l = json_string_length(e);
        if (!json_is_string(e) || l == 0 || l > VX_INDEX_ID_MAX ||
            strlen(json_string_value(e)) != l) {
            snprintf(err, errlen, "'ids[%zu]' must be a string of 1 to %d bytes", i,
                     VX_INDEX_ID_MAX);
            free(out);
            return -1;
        }
        out[i] = json_string_value(e);
    }
    *ids = out;
    *n = k;
    return 0;
}

/* One match or stored vector as JSON text: id, score (queries), values,
 * metadata, namespace, as they were asked for. */
static void fput_match(FILE *f, const vx_match *m, bool with_score, uint32_t dim)
{
    json_t *id = json_string(m->id);
    fputs("{\"id\":", f);
    if (!id || json_dumpf(id, f, JSON_FLAGS | JSON_ENCODE_ANY) != 0)
        fputs("\"\"", f);
    json_decref(id);
    if (with_score) {
        fputs(",\"score\":", f);
        fput_float(f, isfinite(m->score) ? m->score : 0.0f);
    }
    if (m->values) {
        fputs(",\"values\":[", f);
        for (uint32_t i = 0; i < dim; i++) {
            if (i)
                fputc(',', f);
            fput_float(f, m->values[i]);
        }
        fputc(']', f);
    }
    if (m->metadata) {
        fputs(",\"metadata\":", f);
        if (json_dumpf(m->metadata, f, JSON_FLAGS | JSON_ENCODE_ANY) != 0)
            fputs("null", f);
    }
    if (m->ns) {
        json_t *ns = json_string(m->ns);
        fputs(",\"namespace\":", f);
        if (!ns || json_dumpf(ns, f, JSON_FLAGS | JSON_ENCODE_ANY) != 0)
            fputs("null", f);
        json_decref(ns);
    }
    fputc('}', f);
}

/* Answers 200 with the matches: {"count": n, "matches": [...]} for a query,
 * the bare array for get_by_ids, in the envelope. */
static void reply_matches(vreq *q, const vx_match *ms, size_t n, bool query, uint32_t dim)
{
    char *body = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&body, &len);
    if (!f) {
        reply_err(q, 500, VX_API_ERR_STORE, "out of memory");
        return;
    }
    fputs("{\"result\":", f);
    if (query)
        fprintf(f, "{\"count\":%zu,\"matches\":", n);
    fputc('[', f);
    for (size_t i = 0; i < n; i++) {
        if (i)
            fputc(',', f);
        fput_match(f, &ms[i], query, dim);
    }
    fputc(']', f);
    if (query)
        fputc('}', f);
    fputs(",\"success\":true,\"errors\":[],\"messages\":[]}", f);
    bool bad = ferror(f) != 0;
    if (fclose(f) != 0 || bad || !body) {
        free(body);
        reply_err(q, 500, VX_API_ERR_STORE, "out of memory");
        return;
    }
    count_request(q, 200);
    op_http_respond(q->r, 200, "application/json", body, len);
    free(body);
}

/* The body of get_by_ids / delete_by_ids: {"ids": [...]}. Returns the
 * parsed body (its strings back *ids; the caller frees *ids, then drops the
 * body), or NULL once the request was answered with the error. */
static json_t *body_ids(vreq *q, const char ***ids, size_t *n)
{
    json_t *in = body_object(q);
    if (!in)
        return NULL;
    char err[512] = "";
    if (read_ids(in, ids, n, err, sizeof err) != 0) {
        json_decref(in);
        bad_input(q, err);
        return NULL;
    }
    return in;
}

static void handle_get_by_ids(vreq *q, vx_index *x)
{
    const char **ids = NULL;
    size_t n = 0;
    json_t *in = body_ids(q, &ids, &n);
    if (!in)
        return;
    char err[512] = "";
    vx_match *ms = NULL;
    size_t nm = 0;
    int rc = vx_index_get(x, ids, n, &ms, &nm, err, sizeof err);
    free(ids);
    json_decref(in);
    if (rc != 0) {
        reply_vx(q, rc, err);
        return;
    }
    reply_matches(q, ms, nm, false, vx_index_get_config(x)->dimensions);
    vx_matches_free(ms, nm);
}

static void handle_delete_by_ids(vreq *q, vx_index *x)
{
    const char **ids = NULL;
    size_t n = 0;
    json_t *in = body_ids(q, &ids, &n);
    if (!in)
        return;
    char err[512] = "";
    uint64_t mid = 0;
    int rc = vx_index_delete_ids(x, ids, n, &mid, err, sizeof err);
    free(ids);
    json_decref(in);
    if (rc != 0) {
        reply_vx(q, rc, err);
        return;
    }
    reply_mutation(q, mid, "delete", n);
}

static void handle_query(vreq *q, vx_index *x)
{
    const vx_index_config *c = vx_index_get_config(x);
    json_t *in = body_object(q);
    if (!in)
        return;
    char err[768] = "";
    vx_query qq;
    memset(&qq, 0, sizeof qq);
    qq.top_k = VX_INDEX_TOPK_DEFAULT;
    float *vec = NULL;
    vx_filter *filter = NULL;
    const json_t *jv = json_object_get(in, "vector");
    const json_t *jid = json_object_get(in, "vectorId");
    if (!jid)
        jid = json_object_get(in, "id");
    const json_t *jtext = json_object_get(in, "text");
    const json_t *jk = json_object_get(in, "topK");
    const json_t *jrv = json_object_get(in, "returnValues");
    const json_t *jrm = json_object_get(in, "returnMetadata");
    const json_t *jns = json_object_get(in, "namespace");
    const json_t *jf = json_object_get(in, "filter");
    const json_t *jef = json_object_get(in, "ef"); /* Outpost's: the search beam width */
    long long ef = 0;
    int given =
        (jv && !json_is_null(jv)) + (jid && !json_is_null(jid)) + (jtext && !json_is_null(jtext));
    long long k = VX_INDEX_TOPK_DEFAULT;

    if (given != 1) {
        snprintf(err, sizeof err,
                 "send exactly one of 'vector' (an array of %u numbers), 'vectorId' (the id of "
                 "a stored vector)%s",
                 c->dimensions, c->embed_model ? " or 'text' (embedded by the index's model)" : "");
    } else if (jk && !json_is_null(jk) && !json_whole(jk, 1, VX_INDEX_TOPK_MAX, &k)) {
        snprintf(err, sizeof err, "'topK' must be a whole number from 1 to %d", VX_INDEX_TOPK_MAX);
    } else if (jrv && !json_is_null(jrv) && !json_is_boolean(jrv)) {
        snprintf(err, sizeof err, "'returnValues' must be true or false");
    } else if (jns && !json_is_null(jns) &&
               (!json_is_string(jns) || json_string_length(jns) > VX_INDEX_NAMESPACE_MAX)) {
        snprintf(err, sizeof err, "'namespace' must be a string of at most %d bytes",
                 VX_INDEX_NAMESPACE_MAX);
    } else if (jf && !json_is_null(jf) && !json_is_object(jf)) {
        snprintf(err, sizeof err, "'filter' must be a JSON object");
    } else if (jef && !json_is_null(jef) && !json_whole(jef, 1, VX_API_EF_MAX, &ef)) {
        snprintf(err, sizeof err, "'ef' must be a whole number from 1 to %d", VX_API_EF_MAX);
    }
    qq.ef = (uint32_t)ef;
    qq.return_values = json_is_true(jrv);
    if (!err[0]) {
        if (!jrm || json_is_null(jrm) || json_is_false(jrm))
            qq.return_metadata = VX_RETURN_META_NONE;
        else if (json_is_true(jrm))
            qq.return_metadata = VX_RETURN_META_ALL;
        else if (json_is_string(jrm) && strcmp(json_string_value(jrm), "none") == 0)
            qq.return_metadata = VX_RETURN_META_NONE;
        else if (json_is_string(jrm) && strcmp(json_string_value(jrm), "indexed") == 0)
            qq.return_metadata = VX_RETURN_META_INDEXED;
        else if (json_is_string(jrm) && strcmp(json_string_value(jrm), "all") == 0)
            qq.return_metadata = VX_RETURN_META_ALL;
        else
            snprintf(err, sizeof err,
                     "'returnMetadata' must be \"none\", \"indexed\" or \"all\" (or true / "
                     "false)");
    }
    bool heavy = qq.return_values || qq.return_metadata == VX_RETURN_META_ALL;
    if (!err[0] && heavy && k > VX_INDEX_TOPK_MAX_WITH_DATA)
        snprintf(err, sizeof err,
                 "'topK' is %lld; it is at most %d when returnValues is true or returnMetadata "
                 "is \"all\" (at most %d otherwise)",
                 k, VX_INDEX_TOPK_MAX_WITH_DATA, VX_INDEX_TOPK_MAX);
    if (!err[0] && jf && json_is_object(jf)) {
        char ferr[512];
        filter = vx_filter_parse(jf, ferr, sizeof ferr);
        if (!filter)
            snprintf(err, sizeof err, "'filter': %s", ferr);
    }
    if (!err[0] && jid && !json_is_null(jid)) {
        size_t l = json_string_length(jid);
        if (!json_is_string(jid) || l == 0 || l > VX_INDEX_ID_MAX)
            snprintf(err, sizeof err, "'vectorId' must be a string of 1 to %d bytes",
                     VX_INDEX_ID_MAX);
        else
            qq.by_id = json_string_value(jid);
    }
    if (!err[0] && ((jv && !json_is_null(jv)) || (jtext && !json_is_null(jtext)))) {
        vec = malloc(c->dimensions * sizeof *vec);
        if (!vec)
            snprintf(err, sizeof err, "out of memory");
        else if (jv && !json_is_null(jv))
            read_values(jv, c->dimensions, vec, "vector", err, sizeof err);
        else if (!c->embed_model)
            snprintf(err, sizeof err,
                     "'text' needs an index created with the preset of a text-embeddings model "
                     "this agent serves; send 'vector' (%u numbers)",
                     c->dimensions);
        else if (!json_is_string(jtext) || json_string_length(jtext) == 0 ||
                 strlen(json_string_value(jtext)) != json_string_length(jtext))
            snprintf(err, sizeof err, "'text' must be a non-empty string");
    }
    if (err[0]) {
        free(vec);
        vx_filter_free(filter);
        json_decref(in);
        bad_input(q, err);
        return;
    }
    if (jtext && !json_is_null(jtext)) {
        embed_err e;
        const char *t = json_string_value(jtext);
        if (embed_texts(q->rt, c->embed_model, &t, 1, c->dimensions, vec, &e) != 0) {
            free(vec);
            vx_filter_free(filter);
            json_decref(in);
            reply_embed_err(q, &e);
            return;
        }
    }
    qq.vector = vec;
    qq.top_k = (uint32_t)k;
    qq.ns = json_is_string(jns) ? json_string_value(jns) : NULL;
    qq.filter = filter;
    vx_match *ms = NULL;
    size_t nm = 0;
    uint64_t t0 = pl_time_mono_ns();
    int rc = vx_index_query(x, &qq, &ms, &nm, err, sizeof err);
    op_histogram_observe(op_metric_child_get(m_query_s, NULL),
                         (double)(pl_time_mono_ns() - t0) / 1e9);
    free(vec);
    vx_filter_free(filter);
    if (rc == -ENOENT && qq.by_id) {
        reply_err(q, 404, VX_API_ERR_NOT_FOUND, "no vector with id '%s' in this index", qq.by_id);
        json_decref(in);
        return;
    }
    json_decref(in);
    if (rc != 0) {
        reply_vx(q, rc, err);
        return;
    }
    reply_matches(q, ms, nm, true, c->dimensions);
    vx_matches_free(ms, nm);
}

static void handle_list_vectors(vreq *q, vx_index *x)
{
    const char *cs = op_http_req_query(q->r, "count");
    const char *cursor = op_http_req_query(q->r, "cursor");
    long count = 100;
    if (cs && *cs) {
        char *end;
        errno = 0;
        count = strtol(cs, &end, 10);
        if (errno || *end || count < 1 || count > VX_INDEX_LIST_MAX) {
            reply_err(q, 400, OP_API_ERR_INVALID_INPUT,
                      "'count' must be a whole number from 1 to %d", VX_INDEX_LIST_MAX);
            return;
        }
    }
    char after[VX_INDEX_ID_MAX + 1] = "";
    if (cursor && *cursor && !hex_decode(cursor, after, sizeof after)) {
        bad_input(q, "'cursor' is not a cursor this API gave out (use nextCursor as is)");
        return;
    }
    vx_list_page pg;
    memset(&pg, 0, sizeof pg);
    char err[512] = "";
    int rc = vx_index_list(x, after, (size_t)count, &pg, err, sizeof err);
    if (rc != 0) {
        reply_vx(q, rc, err);
        return;
    }
    json_t *vs = json_array();
    for (size_t i = 0; vs && i < pg.count; i++)
        if (json_array_append_new(vs, json_pack("{s:s}", "id", pg.ids[i])) != 0) {
            json_decref(vs);
            vs = NULL;
        }
    json_t *next = json_null();
    if (pg.truncated && pg.count > 0) {
        char hex[2 * VX_INDEX_ID_MAX + 1];
        hex_encode(pg.ids[pg.count - 1], hex, sizeof hex);
        json_decref(next);
        next = json_string(hex);
    }
    json_t *res = vs ? json_pack("{s:I, s:b, s:I, s:o, s:o, s:n}", "count", (json_int_t)pg.count,
                                 "isTruncated", pg.truncated, "totalCount", (json_int_t)pg.total,
                                 "vectors", vs, "nextCursor", next, "cursorExpirationTimestamp")
                     : NULL;
    if (!vs)
        json_decref(next);
    vx_list_page_free(&pg);
    reply_ok(q, res);
}

/* ------------------------------------------------------------------------ */
/* metadata indexes                                                          */
/* ------------------------------------------------------------------------ */

static const char *property_of(vreq *q, json_t *in)
{
    const json_t *p = json_object_get(in, "propertyName");
    if (!json_is_string(p) || json_string_length(p) == 0 ||
        strlen(json_string_value(p)) != json_string_length(p)) {
        bad_input(q, "'propertyName' is required: the metadata property to index");
        return NULL;
    }
    return json_string_value(p);
}

static void handle_meta_create(vreq *q, vx_index *x)
{
    json_t *in = body_object(q);
    if (!in)
        return;
    const char *prop = property_of(q, in);
    if (!prop) {
        json_decref(in);
        return;
    }
    const json_t *t = json_object_get(in, "indexType");
    int type = json_is_string(t) ? vx_meta_type_parse(json_string_value(t)) : -1;
    if (type < 0) {
        json_decref(in);
        bad_input(q, "'indexType' must be \"string\", \"number\" or \"boolean\"");
        return;
    }
    uint64_t mid = 0;
    char err[512] = "";
    int rc = vx_index_meta_create(x, prop, (vx_meta_type)type, &mid, err, sizeof err);
    if (rc == -EEXIST)
        reply_err(q, 409, VX_API_ERR_EXISTS, "a metadata index on '%s' already exists", prop);
    else if (rc != 0)
        reply_vx(q, rc, err);
    else
        reply_mutation(q, mid, "metadata_index", 1);
    json_decref(in);
}

static void handle_meta_delete(vreq *q, vx_index *x)
{
    json_t *in = body_object(q);
    if (!in)
        return;
    const char *prop = property_of(q, in);
    if (!prop) {
        json_decref(in);
        return;
    }
    uint64_t mid = 0;
    char err[512] = "";
    int rc = vx_index_meta_delete(x, prop, &mid, err, sizeof err);
    if (rc == -ENOENT)
        reply_err(q, 404, VX_API_ERR_NOT_FOUND, "no metadata index on '%s'", prop);
    else if (rc != 0)
        reply_vx(q, rc, err);
    else
        reply_mutation(q, mid, "metadata_index", 1);
    json_decref(in);
}

static void handle_meta_list(vreq *q, vx_index *x)
{
    vx_meta_def defs[VX_META_MAX_INDEXES];
    size_t n = vx_index_meta_list(x, defs);
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n && i < VX_META_MAX_INDEXES; i++)
        if (json_array_append_new(arr, json_pack("{s:s, s:s}", "propertyName", defs[i].property,
                                                 "indexType", vx_meta_type_name(defs[i].type))) !=
            0) {
            json_decref(arr);
            arr = NULL;
        }
    reply_ok(q, arr ? json_pack("{s:o}", "metadataIndexes", arr) : NULL);
}

/* ------------------------------------------------------------------------ */
/* routing                                                                   */
/* ------------------------------------------------------------------------ */

typedef enum {
    H_INFO,
    H_INSERT,
    H_UPSERT,
    H_QUERY,
    H_GET_IDS,
    H_DEL_IDS,
    H_LIST,
    H_META_CREATE,
    H_META_LIST,
    H_META_DELETE
} handler_id;

static const struct {
    const char *path; /* after /indexes/{name} */
    const char *method;
    const char *op; /* metric label */
    handler_id h;
} index_routes[] = {
    {"/info", "GET", "info", H_INFO},
    {"/insert", "POST", "insert", H_INSERT},
    {"/upsert", "POST", "upsert", H_UPSERT},
    {"/query", "POST", "query", H_QUERY},
    {"/get_by_ids", "POST", "get_by_ids", H_GET_IDS},
    {"/delete_by_ids", "POST", "delete_by_ids", H_DEL_IDS},
    {"/list", "GET", "list_vectors", H_LIST},
    {"/metadata_index/create", "POST", "metadata_index_create", H_META_CREATE},
    {"/metadata_index/list", "GET", "metadata_index_list", H_META_LIST},
    {"/metadata_index/delete", "POST", "metadata_index_delete", H_META_DELETE},
};

static bool method_is(vreq *q, const char *m)
{
    return strcmp(op_http_req_method(q->r), m) == 0;
}

static void method_not_allowed(vreq *q, const char *allow)
{
    op_http_add_header(q->r, "Allow", allow);
    reply_err(q, 405, OP_API_ERR_METHOD, "method not allowed for this route (allowed: %s)", allow);
}

static void no_route(vreq *q)
{
    reply_err(q, 404, OP_API_ERR_NO_ROUTE, "no route for that URI");
}

/* Looks the index up; answers 404 and returns NULL when there is none. */
static vx_index *find_index(vreq *q, const char *name)
{
    vx_index *x = vx_store_get(g_store, q->account, name);
    if (!x)
        reply_err(q, 404, VX_API_ERR_NO_INDEX, "no index named '%s' in this account", name);
    return x;
}

static void run_index_route(vreq *q, vx_index *x, handler_id h)
{
    switch (h) {
    case H_INFO: handle_info(q, x); break;
    case H_INSERT: handle_write(q, x, false); break;
    case H_UPSERT: handle_write(q, x, true); break;
    case H_QUERY: handle_query(q, x); break;
    case H_GET_IDS: handle_get_by_ids(q, x); break;
    case H_DEL_IDS: handle_delete_by_ids(q, x); break;
    case H_LIST: handle_list_vectors(q, x); break;
    case H_META_CREATE: handle_meta_create(q, x); break;
    case H_META_LIST: handle_meta_list(q, x); break;
    case H_META_DELETE: handle_meta_delete(q, x); break;
    }
}

void vx_api_handle(op_http_req *r, op_runtime *rt, const char *account, const char *rest)
{
    pthread_once(&g_metrics_once, metrics_init);
    vreq q = {.r = r, .rt = rt, .account = account, .op = "unknown"};
    if (!g_store) {
        reply_err(&q, 404, VX_API_ERR_DISABLED,
                  "Vectorize is disabled on this agent (vectorize.enabled: false)");
        return;
    }
    if (strncmp(rest, "/indexes", 8) != 0 || (rest[8] != '\0' && rest[8] != '/')) {
        no_route(&q);
        return;
    }
    const char *p = rest + 8;
    if (*p == '/')
        p++;
    if (*p == '\0') { /* the collection */
        if (method_is(&q, "GET")) {
            q.op = "list";
            handle_list_indexes(&q);
        } else if (method_is(&q, "POST")) {
            q.op = "create";
            handle_create(&q);
        } else {
            method_not_allowed(&q, "GET, POST");
        }
        return;
    }
    const char *slash = strchr(p, '/');
    size_t nl = slash ? (size_t)(slash - p) : strlen(p);
    const char *tail = slash ? slash : "";
    char name[VX_INDEX_NAME_MAX + 1];
    if (nl > VX_INDEX_NAME_MAX) {
        reply_err(&q, 404, VX_API_ERR_NO_INDEX, "no such index: index names are at most %d bytes",
                  VX_INDEX_NAME_MAX);
        return;
    }
    memcpy(name, p, nl);
    name[nl] = '\0';
    if (*tail == '\0' || strcmp(tail, "/") == 0) {
        if (method_is(&q, "GET")) {
            q.op = "get";
            vx_index *x = find_index(&q, name);
            if (x)
                reply_ok(&q, index_json(x));
            vx_index_unref(x);
        } else if (method_is(&q, "DELETE")) {
            q.op = "delete";
            handle_delete_index(&q, name);
        } else {
            method_not_allowed(&q, "GET, DELETE");
        }
        return;
    }
    for (size_t i = 0; i < sizeof index_routes / sizeof index_routes[0]; i++) {
        if (strcmp(tail, index_routes[i].path) != 0)
            continue;
        q.op = index_routes[i].op;
        if (!method_is(&q, index_routes[i].method)) {
            method_not_allowed(&q, index_routes[i].method);
            return;
        }
        vx_index *x = find_index(&q, name);
        if (x)
            run_index_route(&q, x, index_routes[i].h);
        vx_index_unref(x);
        return;
    }
    no_route(&q);
}

/* ------------------------------------------------------------------------ */
/* lifetime and gauges                                                       */
/* ------------------------------------------------------------------------ */

int vx_api_start(const op_config *cfg, char *err, size_t errlen)
{
    pthread_once(&g_metrics_once, metrics_init);
    g_opts = cfg->vectorize;
    if (!cfg->vectorize.enabled) {
        PL_LOG_INFO("vectorize.disabled");
        return 0;
    }
    char root[4096];
    if ((size_t)snprintf(root, sizeof root, "%s/vectorize", cfg->data_dir) >= sizeof root) {
        snprintf(err, errlen, "data_dir is too long");
        return -1;
    }
    vx_store_opts o;
    memset(&o, 0, sizeof o);
    o.root = root;
    o.max_dimensions = (uint32_t)cfg->vectorize.max_dimensions;
    o.max_indexes = (uint32_t)cfg->vectorize.max_indexes;
    vx_index_opts_init(&o.index);
    o.index.fsync = cfg->vectorize.fsync;
    o.index.snapshot_every_bytes = cfg->vectorize.snapshot_every_bytes;
    o.index.snapshot_every_mutations = cfg->vectorize.snapshot_every_mutations;
    o.index.write_timeout_ms = cfg->vectorize.write_timeout_ms;
    uint64_t t0 = pl_time_mono_ns();
    char e[512] = "";
    int rc = vx_store_open(&o, &g_store, e, sizeof e);
    if (rc != 0) {
        snprintf(err, errlen, "cannot open the vector store at %s: %s", root,
                 e[0] ? e : strerror(-rc));
        g_store = NULL;
        return -1;
    }
    for (size_t i = 0; i < vx_store_failed_count(g_store); i++)
        PL_LOG_ERROR("vectorize.index_failed", "index", vx_store_failed(g_store, i));
    char ms[32];
    snprintf(ms, sizeof ms, "%.1f", (double)(pl_time_mono_ns() - t0) / 1e6);
    PL_LOG_INFO("vectorize.open", "root", root, "duration_ms", ms);
    vx_api_refresh_metrics();
    return 0;
}

void vx_api_stop(void)
{
    vx_store_close(g_store);
    g_store = NULL;
}

void vx_api_refresh_metrics(void)
{
    pthread_once(&g_metrics_once, metrics_init);
    if (!g_store)
        return;
    op_runtime *rt = op_runtime_acquire();
    if (!rt)
        return;
    for (size_t a = 0; a < rt->cfg->n_accounts; a++) {
        const char *acct = rt->cfg->accounts[a].id;
        vx_index **xs = NULL;
        size_t n = 0;
        if (vx_store_list(g_store, acct, &xs, &n) != 0)
            continue;
        for (size_t i = 0; i < n; i++) {
            vx_index_info in;
            vx_index_info_get(xs[i], &in);
            const char *name = vx_index_get_config(xs[i])->name;
            op_gauge_set(op_metric_with(m_vectors, acct, name), (double)in.vector_count);
            op_gauge_set(op_metric_with(m_memory, acct, name), (double)in.memory_bytes);
            op_gauge_set(op_metric_with(m_disk, acct, name), (double)in.disk_bytes);
            op_gauge_set(op_metric_with(m_pending, acct, name),
                         in.last_mutation > in.processed_upto
                             ? (double)(in.last_mutation - in.processed_upto)
                             : 0);
            op_gauge_set(op_metric_with(m_open_s, acct, name), in.open_ms / 1000.0);
            vx_index_unref(xs[i]);
        }
        free(xs);
    }
    op_runtime_release(rt);
}
