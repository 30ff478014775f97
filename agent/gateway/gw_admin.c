#include "gateway/gw_admin.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/op_api.h"
#include "platform/pl_log.h"
#include "platform/pl_time.h"

/* ------------------------------------------------------------------------ */
/* answers                                                                   */
/* ------------------------------------------------------------------------ */

static void respond_error(op_http_req *r, int status, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void respond_error(op_http_req *r, int status, int code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char *body = op_api_error_json(code, msg);
    if (!body) {
        op_http_respond(r, 500, "text/plain", "out of memory\n", 14);
        return;
    }
    op_http_respond(r, status, "application/json", body, strlen(body));
    free(body);
}

static void bad_input(op_http_req *r, const char *msg)
{
    respond_error(r, 400, OP_API_ERR_INVALID_INPUT, "%s", msg);
}

/* {"result": result, "result_info"?: info, "success": true, "errors": [],
 * "messages": []}; both references stolen. */
static void respond_ok(op_http_req *r, json_t *result, json_t *info)
{
    json_t *env = json_pack("{s:o, s:b, s:[], s:[]}", "result", result ? result : json_null(),
                            "success", 1, "errors", "messages");
    if (env && info)
        json_object_set_new(env, "result_info", info);
    else
        json_decref(info);
    char *body = env ? json_dumps(env, JSON_COMPACT) : NULL;
    json_decref(env);
    if (!body) {
        respond_error(r, 500, GW_ADMIN_ERR_STORE, "out of memory");
        return;
    }
    op_http_respond(r, 200, "application/json", body, strlen(body));
    free(body);
}

/* A log store error as an answer: backpressure and a closing or failed
 * store are 503 (try again later), a full disk 507. */
static void store_error(op_http_req *r, int rc, const char *what)
{
    if (rc == -ENOSPC || rc == -EDQUOT) {
        respond_error(r, 507, GW_ADMIN_ERR_STORE, "%s: %s", what, strerror(-rc));
        return;
    }
    if (rc == -EAGAIN || rc == -ETIMEDOUT)
        op_http_add_header(r, "Retry-After", "1");
    respond_error(r, 503, GW_ADMIN_ERR_STORE, "%s: the log store refused: %s", what,
                  strerror(-rc));
}

static void method_not_allowed(op_http_req *r, const char *allow)
{
    op_http_add_header(r, "Allow", allow);
    respond_error(r, 405, OP_API_ERR_METHOD, "method not allowed for this route (allowed: %s)",
                  allow);
}

static bool method_is(op_http_req *r, const char *m)
{
    return strcmp(op_http_req_method(r), m) == 0;
}

/* The body as a JSON object, or answers 400 and returns NULL. */
static json_t *body_object(op_http_req *r)
{
    size_t len = 0;
    const char *body = op_http_req_body(r, &len);
    json_error_t jerr;
    json_t *o = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!o) {
        respond_error(r, 400, OP_API_ERR_INVALID_INPUT, "body: not valid JSON: %s", jerr.text);
        return NULL;
    }
    if (!json_is_object(o)) {
        json_decref(o);
        bad_input(r, "body: must be a JSON object");
        return NULL;
    }
    return o;
}

/* ------------------------------------------------------------------------ */
/* query parameters                                                          */
/* ------------------------------------------------------------------------ */

/* Which parameters a route takes. */
enum {
    Q_FILTER = 1, /* record filters, time range included */
    Q_PAGE = 2,   /* per_page, page, cursor, direction, order_by */
    Q_ALL = 4,    /* all=true (delete) */
};

typedef struct log_query {
    unsigned allowed;
    ls_filter f;
    size_t per_page;
    long page;            /* 1-based */
    const char *cursor;   /* NULL: from the start */
    bool ascending;
    bool all;
    int n_filters;        /* filter parameters given (for delete) */
    char err[256];        /* first error, "" if none */
} log_query;

static bool parse_long(const char *s, long long lo, long long hi, long long *out)
{
    if (!s || !*s)
        return false;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

static bool parse_double(const char *s, double *out)
{
    if (!s || !*s)
        return false;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v))
        return false;
    *out = v;
    return true;
}

static int parse_bool(const char *s)
{
    if (strcmp(s, "true") == 0 || strcmp(s, "1") == 0)
        return 1;
    if (strcmp(s, "false") == 0 || strcmp(s, "0") == 0)
        return 0;
    return -1;
}

/* Reads exactly n digits at *p into *out. */
static bool digits(const char **p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9')
            return false;
        v = v * 10 + (c - '0');
    }
    *p += n;
    *out = v;
    return true;
}

/*
 * A point in time as Unix ms: digits alone are Unix milliseconds; else ISO
 * 8601 / RFC 3339: YYYY-MM-DD, optionally followed by T (or a space) and
 * HH:MM[:SS[.fraction]] and a zone (Z or +-HH[:MM]; none means UTC). A '+'
 * in a query string arrives as a space, so a space before the zone is read
 * as '+'.
 */
static bool parse_time(const char *s, int64_t *out)
{
    long long ms;
    size_t n = strlen(s);
    if (n > 0 && strspn(s, "0123456789") == n)
        return parse_long(s, 0, 253402300799999LL, &ms) ? (*out = ms, true) : false;
    const char *p = s;
    int Y, M, D, h = 0, m = 0, sec = 0, frac_ms = 0;
    if (!digits(&p, 4, &Y) || *p++ != '-' || !digits(&p, 2, &M) || *p++ != '-' ||
        !digits(&p, 2, &D))
        return false;
    long tz = 0;
    if (*p == 'T' || *p == 't' || (*p == ' ' && p[1] >= '0' && p[1] <= '9')) {
        p++;
        if (!digits(&p, 2, &h) || *p++ != ':' || !digits(&p, 2, &m))
            return false;
        if (*p == ':') {
            p++;
            if (!digits(&p, 2, &sec))
                return false;
            if (*p == '.' || *p == ',') {
                p++;
                int k = 0, scale = 100;
                while (*p >= '0' && *p <= '9') {
                    if (k < 3)
                        frac_ms += (*p - '0') * scale;
                    scale /= 10;
                    k++;
                    p++;
                }
                if (k == 0)
                    return false;
            }
        }
        if (*p == 'Z' || *p == 'z') {
            p++;
        } else if (*p == '+' || *p == '-' || *p == ' ') {
            int sign = *p == '-' ? -1 : 1, th, tm = 0;
            p++;
            if (!digits(&p, 2, &th))
                return false;
            if (*p == ':')
                p++;
            if (*p && !digits(&p, 2, &tm))
                return false;
            if (th > 23 || tm > 59)
                return false;
            tz = sign * (th * 3600L + tm * 60L);
        }
    }
    if (*p || M < 1 || M > 12 || D < 1 || D > 31 || h > 23 || m > 59 || sec > 60)
        return false;
    struct tm t = {.tm_year = Y - 1900, .tm_mon = M - 1, .tm_mday = D, .tm_hour = h,
                   .tm_min = m, .tm_sec = sec};
    time_t secs = timegm(&t);
    if (secs == (time_t)-1 && !(Y == 1969 && M == 12 && D == 31))
        return false;
    int64_t v = ((int64_t)secs - tz) * 1000 + frac_ms;
    if (v < 0)
        return false;
    *out = v;
    return true;
}

static void q_fail(log_query *q, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void q_fail(log_query *q, const char *fmt, ...)
{
    if (q->err[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(q->err, sizeof q->err, fmt, ap);
    va_end(ap);
}

static void q_param(const char *name, const char *value, void *ctx)
{
    log_query *q = ctx;
    long long n;
    double d;
    int b;
    if (q->err[0])
        return;
    bool filter = true;
    if ((q->allowed & Q_FILTER) && strcmp(name, "provider") == 0) {
        q->f.provider = value;
    } else if ((q->allowed & Q_FILTER) && strcmp(name, "model") == 0) {
        q->f.model = value;
    } else if ((q->allowed & Q_FILTER) && strcmp(name, "status_code") == 0) {
        if (parse_long(value, 100, 999, &n))
            q->f.status = (int)n;
        else
            q_fail(q, "status_code: must be an HTTP status (100..999)");
    } else if ((q->allowed & Q_FILTER) &&
               (strcmp(name, "success") == 0 || strcmp(name, "cached") == 0)) {
        if ((b = parse_bool(value)) < 0)
            q_fail(q, "%s: must be true or false", name);
        else if (name[0] == 's')
            q->f.success = b;
        else
            q->f.cached = b;
    } else if ((q->allowed & Q_FILTER) && strcmp(name, "feedback") == 0) {
        if (parse_long(value, -1, 1, &n))
            q->f.feedback = (int)n;
        else
            q_fail(q, "feedback: must be -1, 0 or 1");
    } else if ((q->allowed & Q_FILTER) &&
               (strcmp(name, "min_duration") == 0 || strcmp(name, "max_duration") == 0)) {
        if (!parse_double(value, &d) || d < 0)
            q_fail(q, "%s: must be a number of milliseconds >= 0", name);
        else if (name[1] == 'i')
            q->f.min_duration_ms = d;
        else
            q->f.max_duration_ms = d;
    } else if ((q->allowed & Q_FILTER) &&
               (strcmp(name, "start_date") == 0 || strcmp(name, "end_date") == 0)) {
        int64_t ms;
        if (!parse_time(value, &ms))
            q_fail(q, "%s: must be an ISO 8601 time (2025-01-31T12:00:00Z) or Unix ms", name);
        else if (name[0] == 's')
            q->f.from_ms = ms > 0 ? ms : 1; /* 0 would mean "open" to the store */
        else
            q->f.to_ms = ms > 0 ? ms : 1;
    } else if ((q->allowed & Q_FILTER) && strncmp(name, "metadata.", 9) == 0) {
        if (name[9] == '\0')
            q_fail(q, "metadata.KEY: the key is missing");
        else if (q->f.n_meta >= LS_META_MAX)
            q_fail(q, "metadata: at most %d metadata filters", LS_META_MAX);
        else {
            q->f.meta[q->f.n_meta].key = name + 9;
            q->f.meta[q->f.n_meta].value = value;
            q->f.n_meta++;
        }
    } else {
        filter = false;
        if ((q->allowed & Q_PAGE) && strcmp(name, "per_page") == 0) {
            if (parse_long(value, 1, GW_LOGS_PER_PAGE_MAX, &n))
                q->per_page = (size_t)n;
            else
                q_fail(q, "per_page: must be an integer in 1..%d", GW_LOGS_PER_PAGE_MAX);
        } else if ((q->allowed & Q_PAGE) && strcmp(name, "page") == 0) {
            if (parse_long(value, 1, 1000000, &n))
                q->page = (long)n;
            else
                q_fail(q, "page: must be an integer >= 1");
        } else if ((q->allowed & Q_PAGE) && strcmp(name, "cursor") == 0) {
            q->cursor = value[0] ? value : NULL;
        } else if ((q->allowed & Q_PAGE) &&
                   (strcmp(name, "direction") == 0 || strcmp(name, "order_by_direction") == 0)) {
            if (strcmp(value, "asc") == 0)
                q->ascending = true;
            else if (strcmp(value, "desc") == 0)
                q->ascending = false;
            else
                q_fail(q, "%s: must be asc or desc", name);
        } else if ((q->allowed & Q_PAGE) && strcmp(name, "order_by") == 0) {
            if (strcmp(value, "created_at") != 0)
                q_fail(q, "order_by: only created_at is supported");
        } else if ((q->allowed & Q_ALL) && strcmp(name, "all") == 0) {
            if ((b = parse_bool(value)) < 0)
                q_fail(q, "all: must be true or false");
            else
                q->all = b == 1;
        } else {
            /* Unknown parameters are refused rather than ignored: a
             * misspelt filter must not widen a delete. */
            q_fail(q, "%s: unknown parameter for this route", name);
        }
    }
    if (filter)
        q->n_filters++;
}

/* Parses the query of r for a route that takes `allowed`; the filter is
 * scoped to account/gateway. Answers 400 and returns false on error. */
static bool parse_query(op_http_req *r, unsigned allowed, const char *account,
                        const char *gateway, log_query *q)
{
    memset(q, 0, sizeof *q);
    q->allowed = allowed;
    ls_filter_init(&q->f);
    q->f.account = account;
    q->f.gateway = gateway;
    q->per_page = GW_LOGS_PER_PAGE_DEFAULT;
    q->page = 1;
    op_http_req_queries(r, q_param, q);
    if (!q->err[0] && q->f.from_ms && q->f.to_ms && q->f.from_ms > q->f.to_ms)
        q_fail(q, "start_date: after end_date");
    if (!q->err[0] && q->f.min_duration_ms >= 0 && q->f.max_duration_ms >= 0 &&
        q->f.min_duration_ms > q->f.max_duration_ms)
        q_fail(q, "min_duration: larger than max_duration");
    if (!q->err[0] && q->cursor && q->page > 1)
        q_fail(q, "page: give either page or cursor");
    if (q->err[0]) {
        bad_input(r, q->err);
        return false;
    }
    return true;
}

/* ------------------------------------------------------------------------ */
/* gateways                                                                  */
/* ------------------------------------------------------------------------ */

static void answer_gateway(op_http_req *r, const gw_gateway_view *v)
{
    json_t *o = gw_gateway_to_json(v);
    if (!o) {
        respond_error(r, 500, GW_ADMIN_ERR_STORE, "out of memory");
        return;
    }
    respond_ok(r, o, NULL);
}

static void no_gateway(op_http_req *r, const char *id)
{
    respond_error(r, 404, GW_ADMIN_ERR_NO_GATEWAY, "no gateway '%s' in this account", id);
}

/* A registry writer's error as an answer. */
static void registry_error(op_http_req *r, int rc, const char *err)
{
    switch (rc) {
    case -EINVAL: bad_input(r, err); break;
    case -EEXIST: respond_error(r, 409, GW_ADMIN_ERR_EXISTS, "%s", err); break;
    case -EROFS: respond_error(r, 409, GW_ADMIN_ERR_READ_ONLY, "%s", err); break;
    case -EDQUOT: respond_error(r, 409, GW_ADMIN_ERR_TOO_MANY, "%s", err); break;
    case -ENOENT: respond_error(r, 404, GW_ADMIN_ERR_NO_GATEWAY, "%s", err); break;
    case -ENOSPC: respond_error(r, 507, GW_ADMIN_ERR_STORE, "%s", err); break;
    default: respond_error(r, 500, GW_ADMIN_ERR_STORE, "%s", err); break;
    }
}

typedef struct list_ctx {
    json_t *all;
    const char *search;
} list_ctx;

static void list_one(const gw_gateway_view *v, void *ctx)
{
    list_ctx *c = ctx;
    if (c->search && !strstr(v->cfg->id, c->search))
        return;
    json_t *o = gw_gateway_to_json(v);
    if (o)
        json_array_append_new(c->all, o);
}

typedef struct gw_list_query {
    long page, per_page;
    const char *search;
    char err[128];
} gw_list_query;

static void gw_list_param(const char *name, const char *value, void *ctx)
{
    gw_list_query *q = ctx;
    long long n;
    if (q->err[0])
        return;
    if (strcmp(name, "page") == 0) {
        if (parse_long(value, 1, 1000000, &n))
            q->page = (long)n;
        else
            snprintf(q->err, sizeof q->err, "page: must be an integer >= 1");
    } else if (strcmp(name, "per_page") == 0) {
        if (parse_long(value, 1, GW_API_GATEWAYS_PER_ACCOUNT_MAX, &n))
            q->per_page = (long)n;
        else
            snprintf(q->err, sizeof q->err, "per_page: must be an integer in 1..%d",
                     GW_API_GATEWAYS_PER_ACCOUNT_MAX);
    } else if (strcmp(name, "search") == 0) {
        q->search = value[0] ? value : NULL;
    } else if (strcmp(name, "order_by") == 0 || strcmp(name, "direction") == 0 ||
               strcmp(name, "order_by_direction") == 0) {
        snprintf(q->err, sizeof q->err, "%s: gateways are listed config first, then by id",
                 name);
    } else {
        snprintf(q->err, sizeof q->err, "%s: unknown parameter for this route", name);
    }
}

static void handle_gateway_list(op_http_req *r, const op_config *cfg, const char *account,
                                gw_registry *reg)
{
    gw_list_query q = {.page = 1, .per_page = 20};
    op_http_req_queries(r, gw_list_param, &q);
    if (q.err[0]) {
        bad_input(r, q.err);
        return;
    }
    list_ctx c = {.all = json_array(), .search = q.search};
    if (!c.all) {
        respond_error(r, 500, GW_ADMIN_ERR_STORE, "out of memory");
        return;
    }
    gw_registry_each(reg, cfg, account, list_one, &c);
    size_t total = json_array_size(c.all);
    json_t *page = json_array();
    size_t start = (size_t)(q.page - 1) * (size_t)q.per_page;
    for (size_t i = start; page && i < total && i < start + (size_t)q.per_page; i++)
        json_array_append(page, json_array_get(c.all, i));
    json_decref(c.all);
    json_t *info = json_pack("{s:I, s:I, s:I, s:I}", "count", (json_int_t)json_array_size(page),
                             "page", (json_int_t)q.page, "per_page", (json_int_t)q.per_page,
                             "total_count", (json_int_t)total);
    respond_ok(r, page, info);
}

/* Settings from a create/replace body: defaults, then the body's keys. */
static bool settings_from_body(op_http_req *r, json_t *body, op_config_gateway *g)
{
    gw_gateway_defaults(g);
    char err[256];
    if (gw_gateway_apply_json(g, body, err, sizeof err) != 0) {
        bad_input(r, err);
        return false;
    }
    return true;
}

static void set_retention(ls_store *logs, const gw_gateway_view *v)
{
    if (logs)
        ls_set_retention(logs, v->cfg->account, v->cfg->id, v->cfg->retention_max_logs,
                         v->cfg->retention_max_age_s);
}

static void handle_gateway_create(op_http_req *r, const op_config *cfg, const char *account,
                                  gw_registry *reg, ls_store *logs)
{
    json_t *body = body_object(r);
    if (!body)
        return;
    json_t *idj = json_object_get(body, "id");
    if (!json_is_string(idj)) {
        json_decref(body);
        bad_input(r, "id: required, a string matching [a-z0-9_-]{1,64}");
        return;
    }
    if (!gw_id_valid(json_string_value(idj))) {
        json_decref(body);
        bad_input(r, "id: must match [a-z0-9_-]{1,64}");
        return;
    }
    op_config_gateway g;
    if (!settings_from_body(r, body, &g)) {
        json_decref(body);
        return;
    }
    char err[512] = "";
    gw_gateway_view v;
    int rc = gw_registry_create(reg, cfg, account, json_string_value(idj), &g, &v, err,
                                sizeof err);
    json_decref(body);
    if (rc) {
        registry_error(r, rc, err);
        return;
    }
    set_retention(logs, &v);
    answer_gateway(r, &v);
    gw_gateway_view_release(&v);
}

static void handle_gateway_replace(op_http_req *r, const op_config *cfg, const char *account,
                                   const char *id, gw_registry *reg, ls_store *logs)
{
    /* Existence and origin first: a PUT to a config gateway is 409 whatever
     * its body says. */
    gw_gateway_view cur;
    if (!gw_registry_get(reg, cfg, account, id, &cur)) {
        no_gateway(r, id);
        return;
    }
    bool api = cur.from_api;
    gw_gateway_view_release(&cur);
    if (!api) {
        respond_error(r, 409, GW_ADMIN_ERR_READ_ONLY,
                      "gateway '%s' is defined in the config file; change it there and reload",
                      id);
        return;
    }
    json_t *body = body_object(r);
    if (!body)
        return;
    json_t *idj = json_object_get(body, "id");
    if (idj && !(json_is_string(idj) && strcmp(json_string_value(idj), id) == 0)) {
        json_decref(body);
        bad_input(r, "id: cannot be changed (create a new gateway instead)");
        return;
    }
    op_config_gateway g;
    if (!settings_from_body(r, body, &g)) {
        json_decref(body);
        return;
    }
    json_decref(body);
    char err[512] = "";
    gw_gateway_view v;
    int rc = gw_registry_replace(reg, cfg, account, id, &g, &v, err, sizeof err);
    if (rc) {
        registry_error(r, rc, err);
        return;
    }
    set_retention(logs, &v);
    answer_gateway(r, &v);
    gw_gateway_view_release(&v);
}

static void handle_gateway_delete(op_http_req *r, const op_config *cfg, const char *account,
                                  const char *id, gw_registry *reg, ls_store *logs)
{
    gw_gateway_view v;
    if (!gw_registry_get(reg, cfg, account, id, &v)) {
        no_gateway(r, id);
        return;
    }
    if (!v.from_api) {
        gw_gateway_view_release(&v);
        respond_error(r, 409, GW_ADMIN_ERR_READ_ONLY,
                      "gateway '%s' is defined in the config file; remove it there and reload",
                      id);
        return;
    }
    /* Its logs go first: a gateway created later with the same id must not
     * inherit them. If that fails the gateway stays, and the call can be
     * repeated. */
    if (logs) {
        ls_filter f;
        ls_filter_init(&f);
        f.account = account;
        f.gateway = id;
        int rc = ls_delete(logs, &f, NULL);
        if (rc) {
            gw_gateway_view_release(&v);
            store_error(r, rc, "deleting the gateway's logs");
            return;
        }
    }
    char err[512] = "";
    int rc = gw_registry_delete(reg, cfg, account, id, err, sizeof err);
    if (rc) {
        gw_gateway_view_release(&v);
        registry_error(r, rc, err);
        return;
    }
    if (logs)
        ls_set_retention(logs, account, id, 0, 0);
    answer_gateway(r, &v); /* the gateway as it was, as Cloudflare answers */
    gw_gateway_view_release(&v);
}

/* ------------------------------------------------------------------------ */
/* logs                                                                      */
/* ------------------------------------------------------------------------ */

static void handle_logs_list(op_http_req *r, const char *account, const char *gw, ls_store *logs)
{
    log_query q;
    if (!parse_query(r, Q_FILTER | Q_PAGE, account, gw, &q))
        return;
    char next[LS_CURSOR_LEN] = "";
    const char *cursor = q.cursor;
    /* Page numbers (Cloudflare's pagination) walk the cursor chain from the
     * start: cost grows with the offset; cursors are the cheap way on. */
    char skip[LS_CURSOR_LEN] = "";
    bool past_end = false;
    if (!cursor && q.page > 1) {
        size_t remaining = (size_t)(q.page - 1) * q.per_page;
        while (remaining > 0) {
            size_t want = remaining < LS_LIST_MAX ? remaining : LS_LIST_MAX;
            json_t *items = NULL;
            int rc = ls_list(logs, &q.f, skip, want, q.ascending, &items, next, NULL);
            if (rc) {
                store_error(r, rc, "listing logs");
                return;
            }
            size_t got = json_array_size(items);
            json_decref(items);
            remaining -= got < remaining ? got : remaining;
            memcpy(skip, next, sizeof skip);
            if (!next[0] || got == 0) {
                past_end = true;
                break;
            }
        }
        cursor = skip;
    }
    json_t *items = NULL;
    size_t total = 0;
    next[0] = '\0';
    int rc;
    if (past_end) {
        /* Beyond the last page: no items, but still the total. */
        json_t *none = NULL;
        char unused[LS_CURSOR_LEN];
        rc = ls_list(logs, &q.f, NULL, 1, q.ascending, &none, unused, &total);
        json_decref(none);
        items = rc == 0 ? json_array() : NULL;
    } else if (cursor && cursor[0]) {
        /* From a cursor the store counts only what follows it; the total of
         * the whole listing takes a count from the start. */
        rc = ls_list(logs, &q.f, cursor, q.per_page, q.ascending, &items, next, NULL);
        if (rc == 0) {
            json_t *none = NULL;
            char unused[LS_CURSOR_LEN];
            rc = ls_list(logs, &q.f, NULL, 1, q.ascending, &none, unused, &total);
            json_decref(none);
        }
    } else {
        rc = ls_list(logs, &q.f, NULL, q.per_page, q.ascending, &items, next, &total);
    }
    if (rc) {
        json_decref(items);
        if (rc == -EINVAL && q.cursor)
            bad_input(r, "cursor: not a cursor of this listing");
        else
            store_error(r, rc, "listing logs");
        return;
    }
    json_t *info = json_pack("{s:I, s:I, s:I}", "count", (json_int_t)json_array_size(items),
                             "per_page", (json_int_t)q.per_page, "total_count",
                             (json_int_t)total);
    if (info && !q.cursor)
        json_object_set_new(info, "page", json_integer(q.page));
    if (info && next[0])
        json_object_set_new(info, "cursor", json_string(next));
    respond_ok(r, items, info);
}

static bool log_lookup(op_http_req *r, ls_store *logs, const char *account, const char *gw,
                       const char *log_id, json_t **rec)
{
    int rc = ls_get(logs, account, gw, log_id, rec);
    if (rc == -ENOENT || rc == -EINVAL) {
        respond_error(r, 404, GW_ADMIN_ERR_NO_LOG, "no log '%s' in gateway '%s'", log_id, gw);
        return false;
    }
    if (rc) {
        store_error(r, rc, "reading the log");
        return false;
    }
    return true;
}

static void handle_log_get(op_http_req *r, const char *account, const char *gw,
                           const char *log_id, ls_store *logs)
{
    json_t *rec;
    if (log_lookup(r, logs, account, gw, log_id, &rec))
        respond_ok(r, rec, NULL);
}

/* Decodes standard base64 (padding optional) into a new buffer. */
static unsigned char *base64_decode(const char *s, size_t n, size_t *out_len)
{
    unsigned char *out = malloc(n / 4 * 3 + 3);
    if (!out)
        return NULL;
    uint32_t acc = 0;
    int bits = 0;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int v;
        if (c >= 'A' && c <= 'Z')
            v = c - 'A';
        else if (c >= 'a' && c <= 'z')
            v = c - 'a' + 26;
        else if (c >= '0' && c <= '9')
            v = c - '0' + 52;
        else if (c == '+')
            v = 62;
        else if (c == '/')
            v = 63;
        else if (c == '=')
            break;
        else {
            free(out);
            return NULL;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[k++] = (unsigned char)(acc >> bits);
        }
    }
    *out_len = k;
    return out;
}

/* Answers the raw request or response body of a record. */
static void handle_log_body(op_http_req *r, const char *account, const char *gw,
                            const char *log_id, bool request, ls_store *logs)
{
    json_t *rec;
    if (!log_lookup(r, logs, account, gw, log_id, &rec))
        return;
    const char *which = request ? "request" : "response";
    char key[40];
    snprintf(key, sizeof key, "%s_body", which);
    json_t *body = json_object_get(rec, key);
    snprintf(key, sizeof key, "%s_body_encoding", which);
    const char *enc = json_string_value(json_object_get(rec, key));
    snprintf(key, sizeof key, "%s_content_type", which);
    const char *ctype = json_string_value(json_object_get(rec, key));
    if (!ctype || !ctype[0])
        ctype = "application/octet-stream";
    /* The store keeps bodies that are not UTF-8 as base64 (with
     * *_body_encoding "base64"); the raw route gives back the bytes. */
    if (json_is_string(body) && enc && strcmp(enc, "base64") == 0) {
        size_t n = 0;
        unsigned char *raw =
            base64_decode(json_string_value(body), json_string_length(body), &n);
        if (!raw)
            respond_error(r, 500, GW_ADMIN_ERR_STORE, "the stored %s body is malformed", which);
        else
            op_http_respond(r, 200, ctype, (const char *)raw, n);
        free(raw);
    } else if (json_is_string(body)) {
        op_http_respond(r, 200, ctype, json_string_value(body), json_string_length(body));
    } else {
        respond_error(r, 404, GW_ADMIN_ERR_NO_LOG,
                      "log '%s' has no %s body (the gateway does not keep payloads)", log_id,
                      which);
    }
    json_decref(rec);
}

static void handle_log_patch(op_http_req *r, const char *account, const char *gw,
                             const char *log_id, ls_store *logs)
{
    json_t *body = body_object(r);
    if (!body)
        return;
    const char *key;
    json_t *v;
    json_t *fb = NULL, *sc = NULL;
    json_object_foreach(body, key, v)
    {
        if (strcmp(key, "feedback") == 0) {
            fb = v;
        } else if (strcmp(key, "score") == 0) {
            sc = v;
        } else {
            respond_error(r, 400, OP_API_ERR_INVALID_INPUT,
                          "%s: unknown field (feedback and score can be set)", key);
            json_decref(body); /* key lives in body */
            return;
        }
    }
    if (fb && !(json_is_integer(fb) && json_integer_value(fb) >= -1 &&
                json_integer_value(fb) <= 1)) {
        json_decref(body);
        bad_input(r, "feedback: must be -1, 0 or 1");
        return;
    }
    double score = 0;
    if (sc) {
        score = json_number_value(sc);
        if (!json_is_number(sc) || !(score >= 0 && score <= 100)) {
            json_decref(body);
            bad_input(r, "score: must be a number in 0..100");
            return;
        }
    }
    if (!fb && !sc) {
        json_decref(body);
        bad_input(r, "body: give feedback (-1, 0, 1) and/or score (0..100)");
        return;
    }
    int feedback = fb ? (int)json_integer_value(fb) : 0;
    json_decref(body);
    json_t *rec = NULL;
    if (!fb) {
        /* Score alone: keep the feedback the record has. */
        if (!log_lookup(r, logs, account, gw, log_id, &rec))
            return;
        feedback = (int)json_integer_value(json_object_get(rec, "feedback"));
        json_decref(rec);
        rec = NULL;
    }
    int rc = ls_feedback(logs, account, gw, log_id, feedback, sc ? &score : NULL);
    if (rc == -ENOENT || rc == -EINVAL) {
        respond_error(r, 404, GW_ADMIN_ERR_NO_LOG, "no log '%s' in gateway '%s'", log_id, gw);
        return;
    }
    if (rc) {
        store_error(r, rc, "saving feedback");
        return;
    }
    /* The record as it is now (bodies left out: they did not change). */
    if (!log_lookup(r, logs, account, gw, log_id, &rec))
        return;
    json_object_del(rec, "request_body");
    json_object_del(rec, "response_body");
    json_object_del(rec, "request_body_encoding");
    json_object_del(rec, "response_body_encoding");
    respond_ok(r, rec, NULL);
}

static void handle_logs_delete(op_http_req *r, const char *account, const char *gw,
                               ls_store *logs)
{
    log_query q;
    if (!parse_query(r, Q_FILTER | Q_ALL, account, gw, &q))
        return;
    if (q.n_filters == 0 && !q.all) {
        bad_input(r, "give at least one filter, or all=true to delete every log of the gateway");
        return;
    }
    uint64_t n = 0;
    int rc = ls_delete(logs, &q.f, &n);
    if (rc) {
        store_error(r, rc, "deleting logs");
        return;
    }
    respond_ok(r, json_pack("{s:I}", "deleted", (json_int_t)n), NULL);
}

/* Sums over every matching record, read in pages without bodies. */
static void handle_usage(op_http_req *r, const char *account, const char *gw, ls_store *logs)
{
    log_query q;
    if (!parse_query(r, Q_FILTER, account, gw, &q))
        return;
    uint64_t requests = 0, tokens_in = 0, tokens_out = 0, cached = 0, errors = 0;
    double cost = 0;
    char cursor[LS_CURSOR_LEN] = "", next[LS_CURSOR_LEN];
    for (;;) {
        json_t *items = NULL;
        int rc = ls_list(logs, &q.f, cursor, LS_LIST_MAX, true, &items, next, NULL);
        if (rc) {
            store_error(r, rc, "reading logs");
            return;
        }
        size_t i;
        json_t *it;
        json_array_foreach(items, i, it)
        {
            requests++;
            json_t *ti = json_object_get(it, "tokens_in");
            json_t *to = json_object_get(it, "tokens_out");
            if (json_is_integer(ti) && json_integer_value(ti) > 0)
                tokens_in += (uint64_t)json_integer_value(ti);
            if (json_is_integer(to) && json_integer_value(to) > 0)
                tokens_out += (uint64_t)json_integer_value(to);
            cost += json_number_value(json_object_get(it, "cost"));
            if (json_is_true(json_object_get(it, "cached")))
                cached++;
            if (!json_is_true(json_object_get(it, "success")))
                errors++;
        }
        size_t got = json_array_size(items);
        json_decref(items);
        if (!next[0] || got == 0)
            break;
        memcpy(cursor, next, sizeof cursor);
    }
    json_t *res = json_pack("{s:I, s:I, s:I, s:f, s:I, s:I}", "requests", (json_int_t)requests,
                            "tokens_in", (json_int_t)tokens_in, "tokens_out",
                            (json_int_t)tokens_out, "cost", cost, "cached", (json_int_t)cached,
                            "errors", (json_int_t)errors);
    char buf[40];
    if (res && q.f.from_ms)
        json_object_set_new(res, "start_date",
                            json_string(pl_time_format_rfc3339(q.f.from_ms, buf, sizeof buf)));
    if (res && q.f.to_ms)
        json_object_set_new(res, "end_date",
                            json_string(pl_time_format_rfc3339(q.f.to_ms, buf, sizeof buf)));
    respond_ok(r, res, NULL);
}

/* ------------------------------------------------------------------------ */
/* export                                                                    */
/* ------------------------------------------------------------------------ */

#define EXPORT_CHUNK (64u << 10)

static pthread_mutex_t g_exp_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_exp_cv = PTHREAD_COND_INITIALIZER;
static int g_exp_running;
static atomic_bool g_exp_stop;

/* An export in flight: its own copy of the filter (the request's query
 * strings live as long as the request, but the config does not). */
typedef struct export_job {
    op_http_req *r;
    ls_store *logs;
    ls_filter f;
    char *strings[2 + 2 * LS_META_MAX + 2];
    size_t n_strings;
    char *buf;
    size_t len;
    bool begun;
    bool gone;           /* client left, or stop asked */
    uint64_t lines;
} export_job;

static const char *job_keep(export_job *j, const char *s)
{
    if (!s)
        return NULL;
    char *c = strdup(s);
    if (c)
        j->strings[j->n_strings++] = c;
    return c;
}

static void job_free(export_job *j)
{
    for (size_t i = 0; i < j->n_strings; i++)
        free(j->strings[i]);
    free(j->buf);
    free(j);
}

/* Sends what is buffered, first waiting while the client has more than
 * GW_EXPORT_BUFFER_BYTES unread. Returns 0, or -1 once the export must end
 * (client gone, or gw_admin_stop). */
static int job_flush(export_job *j)
{
    if (j->gone)
        return -1;
    if (!j->begun) {
        if (op_http_stream_begin(j->r, 200, "application/x-ndjson") != 0) {
            j->gone = true;
            return -1;
        }
        j->begun = true;
    }
    if (j->len == 0)
        return 0;
    for (;;) {
        long pending = op_http_stream_pending(j->r);
        if (pending < 0 || atomic_load(&g_exp_stop)) {
            j->gone = true;
            return -1;
        }
        if ((size_t)pending <= GW_EXPORT_BUFFER_BYTES)
            break;
        struct timespec ts = {0, 1000000}; /* 1 ms: the client reads at network speed */
        nanosleep(&ts, NULL);
    }
    if (op_http_stream_write(j->r, j->buf, j->len) != 0) {
        j->gone = true;
        return -1;
    }
    j->len = 0;
    return 0;
}

static int export_line(const char *line, size_t len, void *ctx)
{
    export_job *j = ctx;
    if (atomic_load(&g_exp_stop))
        return 1;
    if (j->len + len > EXPORT_CHUNK && job_flush(j) != 0)
        return 1;
    if (len > EXPORT_CHUNK) {
        /* A record larger than the chunk goes out by itself. */
        char *saved = j->buf;
        j->buf = (char *)line;
        j->len = len;
        int rc = job_flush(j);
        j->buf = saved;
        j->len = 0;
        if (rc)
            return 1;
    } else {
        memcpy(j->buf + j->len, line, len);
        j->len += len;
    }
    j->lines++;
    return 0;
}

static void *export_main(void *arg)
{
    export_job *j = arg;
    int rc = ls_export(j->logs, &j->f, export_line, j);
    if (rc < 0 && !j->begun) {
        /* Nothing sent yet: a proper error answer is still possible. */
        store_error(j->r, rc, "exporting logs");
    } else if (rc > 0 && !j->begun) {
        respond_error(j->r, 503, GW_ADMIN_ERR_BUSY, "the agent is stopping");
    } else if (job_flush(j) == 0 && rc < 0) {
        /* The status line is gone: say it in the stream's last line, so a
         * reader can tell a cut export from a complete one. */
        char line[256];
        int n = snprintf(line, sizeof line,
                         "{\"error\":{\"code\":%d,\"message\":\"export stopped: %s\"}}\n",
                         GW_ADMIN_ERR_STORE, strerror(-rc));
        op_http_stream_write(j->r, line, (size_t)n);
    }
    /* Whatever happened, an open stream is ended: the request must be
     * finished before the HTTP server may stop. */
    if (j->begun)
        op_http_stream_end(j->r);
    PL_LOG_DEBUG("gateway.logs.export_done", "gateway", j->f.gateway);
    op_http_req_unref(j->r);
    job_free(j);
    pthread_mutex_lock(&g_exp_mu);
    g_exp_running--;
    pthread_cond_broadcast(&g_exp_cv);
    pthread_mutex_unlock(&g_exp_mu);
    return NULL;
}

static void handle_logs_export(op_http_req *r, const char *account, const char *gw,
                               ls_store *logs)
{
    log_query q;
    if (!parse_query(r, Q_FILTER, account, gw, &q))
        return;
    export_job *j = calloc(1, sizeof *j);
    if (!j || !(j->buf = malloc(EXPORT_CHUNK))) {
        free(j);
        respond_error(r, 500, GW_ADMIN_ERR_STORE, "out of memory");
        return;
    }
    j->r = r;
    j->logs = logs;
    j->f = q.f;
    j->f.account = job_keep(j, q.f.account);
    j->f.gateway = job_keep(j, q.f.gateway);
    j->f.provider = job_keep(j, q.f.provider);
    j->f.model = job_keep(j, q.f.model);
    bool oom = !j->f.account || !j->f.gateway || (q.f.provider && !j->f.provider) ||
               (q.f.model && !j->f.model);
    for (size_t i = 0; i < q.f.n_meta; i++) {
        j->f.meta[i].key = job_keep(j, q.f.meta[i].key);
        j->f.meta[i].value = job_keep(j, q.f.meta[i].value);
        oom = oom || !j->f.meta[i].key || !j->f.meta[i].value;
    }
    if (oom) {
        job_free(j);
        respond_error(r, 500, GW_ADMIN_ERR_STORE, "out of memory");
        return;
    }
    pthread_mutex_lock(&g_exp_mu);
    bool refuse = atomic_load(&g_exp_stop) || g_exp_running >= GW_EXPORTS_MAX;
    if (!refuse)
        g_exp_running++;
    pthread_mutex_unlock(&g_exp_mu);
    if (refuse) {
        job_free(j);
        op_http_add_header(r, "Retry-After", "5");
        respond_error(r, 503, GW_ADMIN_ERR_BUSY,
                      atomic_load(&g_exp_stop) ? "the agent is stopping"
                                               : "too many exports running (at most %d)",
                      GW_EXPORTS_MAX);
        return;
    }
    op_http_req_ref(r); /* dropped by the export thread */
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    int rc = pthread_create(&t, &attr, export_main, j);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        op_http_req_unref(r);
        job_free(j);
        pthread_mutex_lock(&g_exp_mu);
        g_exp_running--;
        pthread_cond_broadcast(&g_exp_cv);
        pthread_mutex_unlock(&g_exp_mu);
        op_http_add_header(r, "Retry-After", "5");
        respond_error(r, 503, GW_ADMIN_ERR_BUSY, "cannot start the export: %s", strerror(rc));
    }
}

void gw_admin_stop(void)
{
    atomic_store(&g_exp_stop, true);
    pthread_mutex_lock(&g_exp_mu);
    while (g_exp_running > 0)
        pthread_cond_wait(&g_exp_cv, &g_exp_mu);
    pthread_mutex_unlock(&g_exp_mu);
}

void gw_admin_start(void) { atomic_store(&g_exp_stop, false); }

int gw_admin_exports_in_flight(void)
{
    pthread_mutex_lock(&g_exp_mu);
    int n = g_exp_running;
    pthread_mutex_unlock(&g_exp_mu);
    return n;
}

/* ------------------------------------------------------------------------ */
/* retention                                                                 */
/* ------------------------------------------------------------------------ */

static void retention_one(const gw_gateway_view *v, void *ctx) { set_retention(ctx, v); }

void gw_admin_apply_retention(gw_registry *reg, const op_config *cfg, ls_store *logs)
{
    if (!logs || !cfg)
        return;
    for (size_t i = 0; i < cfg->n_accounts; i++)
        gw_registry_each(reg, cfg, cfg->accounts[i].id, retention_one, logs);
}

/* ------------------------------------------------------------------------ */
/* routing                                                                   */
/* ------------------------------------------------------------------------ */

#define MAX_SEGS 5
#define SEG_MAX 128

/* Splits "/a/b/c" into segments (no empty ones but a trailing slash's).
 * Returns the count, or -1 when there are too many or one is too long. */
static int split_path(const char *rest, char segs[MAX_SEGS][SEG_MAX])
{
    int n = 0;
    const char *p = rest;
    while (*p == '/')
        p++;
    while (*p) {
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (n == MAX_SEGS || len >= SEG_MAX || len == 0)
            return -1;
        memcpy(segs[n], p, len);
        segs[n][len] = '\0';
        n++;
        p += len;
        if (*p == '/')
            p++;
    }
    return n;
}

static bool need_store(op_http_req *r, ls_store *logs)
{
    if (logs)
        return true;
    op_http_add_header(r, "Retry-After", "5");
    respond_error(r, 503, GW_ADMIN_ERR_STORE, "the log store is not open on this node");
    return false;
}

void gw_admin_handle(op_http_req *r, const op_config *cfg, const char *account, const char *rest,
                     gw_registry *reg, ls_store *logs)
{
    char segs[MAX_SEGS][SEG_MAX];
    int n = split_path(rest ? rest : "", segs);
    if (n < 1 || strcmp(segs[0], "gateways") != 0) {
        op_http_req_set_route(r, "gw_unknown");
        respond_error(r, 404, OP_API_ERR_NO_ROUTE, "no route for that URI");
        return;
    }
    if (n == 1) {
        op_http_req_set_route(r, "gw_gateways");
        if (method_is(r, "GET"))
            handle_gateway_list(r, cfg, account, reg);
        else if (method_is(r, "POST"))
            handle_gateway_create(r, cfg, account, reg, logs);
        else
            method_not_allowed(r, "GET, POST");
        return;
    }
    const char *id = segs[1];
    /* Route and method first (404 no route / 405), then the gateway. */
    const char *allow = NULL;
    const char *route = NULL;
    enum { R_GW, R_LOGS, R_EXPORT, R_USAGE, R_LOG, R_BODY } kind;
    if (n == 2) {
        kind = R_GW, route = "gw_gateway", allow = "GET, PUT, DELETE";
    } else if (n == 3 && strcmp(segs[2], "logs") == 0) {
        kind = R_LOGS, route = "gw_logs", allow = "GET, DELETE";
    } else if (n == 3 && strcmp(segs[2], "usage") == 0) {
        kind = R_USAGE, route = "gw_usage", allow = "GET";
    } else if (n == 4 && strcmp(segs[2], "logs") == 0 && strcmp(segs[3], "export") == 0) {
        kind = R_EXPORT, route = "gw_logs_export", allow = "GET";
    } else if (n == 4 && strcmp(segs[2], "logs") == 0) {
        kind = R_LOG, route = "gw_log", allow = "GET, PATCH";
    } else if (n == 5 && strcmp(segs[2], "logs") == 0 &&
               (strcmp(segs[4], "request") == 0 || strcmp(segs[4], "response") == 0)) {
        kind = R_BODY, route = "gw_log_body", allow = "GET";
    } else {
        op_http_req_set_route(r, "gw_unknown");
        respond_error(r, 404, OP_API_ERR_NO_ROUTE, "no route for that URI");
        return;
    }
    op_http_req_set_route(r, route);
    const char *m = op_http_req_method(r);
    /* m must be one of allow's comma-separated methods. */
    bool ok = false;
    for (const char *a = allow; *a;) {
        size_t len = strcspn(a, ",");
        if (strlen(m) == len && strncmp(a, m, len) == 0)
            ok = true;
        a += len;
        while (*a == ',' || *a == ' ')
            a++;
    }
    if (!ok) {
        method_not_allowed(r, allow);
        return;
    }
    if (kind == R_GW && method_is(r, "PUT")) {
        handle_gateway_replace(r, cfg, account, id, reg, logs);
        return;
    }
    if (kind == R_GW && method_is(r, "DELETE")) {
        handle_gateway_delete(r, cfg, account, id, reg, logs);
        return;
    }
    gw_gateway_view v;
    if (!gw_registry_get(reg, cfg, account, id, &v)) {
        no_gateway(r, id);
        return;
    }
    if (kind == R_GW) {
        answer_gateway(r, &v);
        gw_gateway_view_release(&v);
        return;
    }
    gw_gateway_view_release(&v);
    if (!need_store(r, logs))
        return;
    switch (kind) {
    case R_LOGS:
        if (method_is(r, "GET"))
            handle_logs_list(r, account, id, logs);
        else
            handle_logs_delete(r, account, id, logs);
        break;
    case R_USAGE: handle_usage(r, account, id, logs); break;
    case R_EXPORT: handle_logs_export(r, account, id, logs); break;
    case R_LOG:
        if (method_is(r, "GET"))
            handle_log_get(r, account, id, segs[3], logs);
        else
            handle_log_patch(r, account, id, segs[3], logs);
        break;
    case R_BODY:
        handle_log_body(r, account, id, segs[3], strcmp(segs[4], "request") == 0, logs);
        break;
    default: break;
    }
}
