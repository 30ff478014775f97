#include "gateway/gw_registry.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "platform/pl_err.h"
#include "platform/pl_file.h"
#include "platform/pl_log.h"
#include "platform/pl_time.h"

/* Version of the on-disk gateway file; a file with another is skipped. */
#define GW_FILE_FORMAT 1
/* A gateway file is a few hundred bytes; anything near this is not ours. */
#define GW_FILE_MAX_BYTES (64u << 10)
#define GW_ACCOUNT_MAX 64

/* ------------------------------------------------------------------------ */
/* entries                                                                   */
/* ------------------------------------------------------------------------ */

/* One API gateway: immutable once published; freed with its last reference
 * (the registry's, or a view's). */
typedef struct gw_entry {
    _Atomic int refs;
    op_config_gateway g; /* g.account, g.id owned; no tokens, no providers */
    int64_t created_ms, modified_ms;
} gw_entry;

struct gw_registry {
    char *dir;                /* DATA_DIR/gateways */
    pthread_rwlock_t lock;    /* guards v/n/cap (readers: get, each) */
    pthread_mutex_t wmu;      /* serializes writers, file I/O included */
    gw_entry **v;             /* sorted by (account, id) */
    size_t n, cap;
};

static void entry_unref(gw_entry *e)
{
    if (!e || atomic_fetch_sub(&e->refs, 1) != 1)
        return;
    free(e->g.account);
    free(e->g.id);
    free(e);
}

static gw_entry *entry_new(const char *account, const char *id, const op_config_gateway *settings,
                           int64_t created_ms, int64_t modified_ms)
{
    gw_entry *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->g = *settings;
    /* Settings are copied by value; none of their pointers are kept. */
    e->g.account = strdup(account);
    e->g.id = strdup(id);
    e->g.tokens = NULL;
    e->g.n_tokens = 0;
    e->g.providers = NULL;
    e->g.n_providers = 0;
    e->g.pos = (op_config_pos){0, 0};
    e->created_ms = created_ms;
    e->modified_ms = modified_ms;
    atomic_init(&e->refs, 1);
    if (!e->g.account || !e->g.id) {
        free(e->g.account);
        free(e->g.id);
        free(e);
        return NULL;
    }
    return e;
}

static int key_cmp(const char *account, const char *id, const gw_entry *e)
{
    int c = strcmp(account, e->g.account);
    return c ? c : strcmp(id, e->g.id);
}

/* Index of account/id, or of where it would go (*found false). Lock held. */
static size_t find_locked(const gw_registry *reg, const char *account, const char *id,
                          bool *found)
{
    size_t lo = 0, hi = reg->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = key_cmp(account, id, reg->v[mid]);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    *found = false;
    return lo;
}

/* First index of account's entries. Lock held. */
static size_t account_start_locked(const gw_registry *reg, const char *account)
{
    size_t lo = 0, hi = reg->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(reg->v[mid]->g.account, account) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Inserts e at i (write lock held; capacity reserved by the caller). */
static void insert_locked(gw_registry *reg, size_t i, gw_entry *e)
{
    memmove(reg->v + i + 1, reg->v + i, (reg->n - i) * sizeof *reg->v);
    reg->v[i] = e;
    reg->n++;
}

static int reserve(gw_registry *reg, size_t want)
{
    if (want <= reg->cap)
        return 0;
    size_t ncap = reg->cap ? reg->cap * 2 : 16;
    while (ncap < want)
        ncap *= 2;
    /* Readers only hold the read lock while they index v, so growing it
     * needs the write lock. */
    pthread_rwlock_wrlock(&reg->lock);
    gw_entry **nv = realloc(reg->v, ncap * sizeof *nv);
    if (nv) {
        reg->v = nv;
        reg->cap = ncap;
    }
    pthread_rwlock_unlock(&reg->lock);
    return nv ? 0 : -ENOMEM;
}

/* ------------------------------------------------------------------------ */
/* settings                                                                  */
/* ------------------------------------------------------------------------ */

void gw_gateway_defaults(op_config_gateway *g)
{
    memset(g, 0, sizeof *g);
    g->authentication = false;
    g->collect_logs = true;
    g->log_payloads = true;
    g->max_payload_bytes = 64u << 10;
    g->retention_max_logs = 10000000;
    g->retention_max_age_s = 0;
    g->cache_ttl_s = 0;
    g->request_timeout_ms = 0;
    g->max_attempts = 1;
    g->retry_delay_ms = 100;
    g->backoff = OP_BACKOFF_EXPONENTIAL;
    g->rate_limit = 0;
    g->rate_limit_window_s = 60;
    g->rate_limit_sliding = false;
    g->sync_logs = false;
}

bool gw_id_valid(const char *id)
{
    size_t n = 0;
    if (!id)
        return false;
    for (; id[n]; n++) {
        char c = id[n];
        if (n >= GW_ID_MAX || !((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
                                c == '-'))
            return false;
    }
    return n > 0;
}

/* Account ids as the config allows them, [A-Za-z0-9_-]{1,64}: checked here
 * too because they become file names. */
static bool account_valid(const char *a)
{
    size_t n = 0;
    if (!a)
        return false;
    for (; a[n]; n++) {
        char c = a[n];
        if (n >= GW_ACCOUNT_MAX ||
            !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return false;
    }
    return n > 0;
}

/* An integer-valued JSON number in [lo, hi] (reals with no fraction too:
 * some clients send 60.0). */
static int json_int_in(const json_t *v, const char *key, long long lo, long long hi,
                       long long *out, char *err, size_t errlen)
{
    if (json_is_integer(v)) {
        json_int_t i = json_integer_value(v);
        if (i < lo || i > hi) {
            pl_errf(err, errlen, "%s: must be an integer in %lld..%lld", key, lo, hi);
            return -EINVAL;
        }
        *out = i;
        return 0;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d == floor(d) && d >= (double)lo && d <= (double)hi) {
            *out = (long long)d;
            return 0;
        }
    }
    pl_errf(err, errlen, "%s: must be an integer in %lld..%lld", key, lo, hi);
    return -EINVAL;
}

static int json_bool_of(const json_t *v, const char *key, bool *out, char *err, size_t errlen)
{
    if (!json_is_boolean(v)) {
        pl_errf(err, errlen, "%s: must be true or false", key);
        return -EINVAL;
    }
    *out = json_is_true(v);
    return 0;
}

/* The gateway's boolean settings: the API key and the field it sets (null
 * restores the default). */
typedef struct bool_field_t {
    const char *key;
    size_t offset;
} bool_field_t;

static const bool_field_t *bool_field(const char *key)
{
    static const bool_field_t fields[] = {
        {"collect_logs", offsetof(op_config_gateway, collect_logs)},
        {"log_payloads", offsetof(op_config_gateway, log_payloads)},
        {"authentication", offsetof(op_config_gateway, authentication)},
        {"sync_logs", offsetof(op_config_gateway, sync_logs)},
    };
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (strcmp(key, fields[i].key) == 0)
            return &fields[i];
    return NULL;
}

int gw_gateway_apply_json(op_config_gateway *g, const json_t *obj, char *err, size_t errlen)
{
    if (!json_is_object(obj)) {
        pl_errf(err, errlen, "body: must be a JSON object");
        return -EINVAL;
    }
    op_config_gateway d;
    gw_gateway_defaults(&d);
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v)
    {
        bool null = json_is_null(v);
        long long i = 0;
        int rc = 0;
        const bool_field_t *bf;
        if (strcmp(key, "id") == 0 || strcmp(key, "created_at") == 0 ||
            strcmp(key, "modified_at") == 0 || strcmp(key, "source") == 0) {
            continue; /* read-only; shown by GET, so a GET-edit-PUT works */
        } else if (strcmp(key, "providers") == 0) {
            if (!null && !(json_is_array(v) && json_array_size(v) == 0)) {
                pl_errf(err, errlen,
                        "providers: providers are configured in the config file only");
                return -EINVAL;
            }
        } else if (strcmp(key, "cache_ttl") == 0) {
            if (null)
                g->cache_ttl_s = d.cache_ttl_s;
            else if ((rc = json_int_in(v, key, 0, GW_CACHE_TTL_S_MAX, &i, err, errlen)) == 0)
                g->cache_ttl_s = (int)i;
        } else if ((bf = bool_field(key)) != NULL) {
            bool *dst = (bool *)((char *)g + bf->offset);
            if (null)
                *dst = *(const bool *)((const char *)&d + bf->offset);
            else
                rc = json_bool_of(v, key, dst, err, errlen);
        } else if (strcmp(key, "rate_limiting_interval") == 0) {
            if (null)
                g->rate_limit_window_s = d.rate_limit_window_s;
            else if ((rc = json_int_in(v, key, 1, GW_RATE_WINDOW_S_MAX, &i, err, errlen)) == 0)
                g->rate_limit_window_s = (double)i;
        } else if (strcmp(key, "rate_limiting_limit") == 0) {
            if (null)
                g->rate_limit = d.rate_limit;
            else if ((rc = json_int_in(v, key, 0, 1000000000, &i, err, errlen)) == 0)
                g->rate_limit = (double)i;
        } else if (strcmp(key, "rate_limiting_technique") == 0) {
            if (null)
                g->rate_limit_sliding = d.rate_limit_sliding;
            else if (json_is_string(v) && strcmp(json_string_value(v), "fixed") == 0)
                g->rate_limit_sliding = false;
            else if (json_is_string(v) && strcmp(json_string_value(v), "sliding") == 0)
                g->rate_limit_sliding = true;
            else {
                pl_errf(err, errlen, "%s: must be \"fixed\" or \"sliding\"", key);
                rc = -EINVAL;
            }
        } else if (strcmp(key, "log_management") == 0) {
            /* Most logs kept; null or 0: no limit (Cloudflare's null). */
            if (null)
                g->retention_max_logs = 0;
            else if ((rc = json_int_in(v, key, 0, 10000000000LL, &i, err, errlen)) == 0)
                g->retention_max_logs = (uint64_t)i;
        } else if (strcmp(key, "log_management_strategy") == 0) {
            /* The store drops the oldest logs past the bound; stopping
             * inserts instead is not offered. */
            if (!null && !(json_is_string(v) &&
                           strcmp(json_string_value(v), "DELETE_OLDEST") == 0)) {
                pl_errf(err, errlen, "%s: only \"DELETE_OLDEST\" is supported", key);
                rc = -EINVAL;
            }
        } else if (strcmp(key, "log_max_age_s") == 0) {
            if (null)
                g->retention_max_age_s = d.retention_max_age_s;
            else if ((rc = json_int_in(v, key, 0, 100LL * 365 * 86400, &i, err, errlen)) == 0)
                g->retention_max_age_s = i;
        } else if (strcmp(key, "cache_invalidate_on_update") == 0) {
            /* Accepted for Cloudflare's clients (its create call sends it);
             * a gateway's cache keys do not depend on its settings here, so
             * there is nothing to invalidate. */
            bool b;
            if (!null)
                rc = json_bool_of(v, key, &b, err, errlen);
        } else if (strcmp(key, "logpush") == 0 || strcmp(key, "logpush_public_key") == 0) {
            if (!null && !json_is_false(v)) {
                pl_errf(err, errlen, "%s: Logpush is not supported (export logs with GET "
                        ".../logs/export)", key);
                rc = -EINVAL;
            }
        } else if (strcmp(key, "max_attempts") == 0) {
            if (null)
                g->max_attempts = d.max_attempts;
            else if ((rc = json_int_in(v, key, 1, GW_MAX_ATTEMPTS_MAX, &i, err, errlen)) == 0)
                g->max_attempts = (int)i;
        } else if (strcmp(key, "retry_delay_ms") == 0) {
            if (null)
                g->retry_delay_ms = d.retry_delay_ms;
            else if ((rc = json_int_in(v, key, 0, GW_RETRY_DELAY_MS_MAX, &i, err, errlen)) == 0)
                g->retry_delay_ms = (int)i;
        } else if (strcmp(key, "request_timeout_ms") == 0) {
            if (null)
                g->request_timeout_ms = d.request_timeout_ms;
            else if ((rc = json_int_in(v, key, 0, 3600000, &i, err, errlen)) == 0)
                g->request_timeout_ms = (int)i;
        } else if (strcmp(key, "max_payload_bytes") == 0) {
            if (null)
                g->max_payload_bytes = d.max_payload_bytes;
            else if ((rc = json_int_in(v, key, 0, GW_MAX_PAYLOAD_BYTES_MAX, &i, err, errlen)) ==
                     0)
                g->max_payload_bytes = (size_t)i;
        } else if (strcmp(key, "backoff") == 0) {
            const char *s = json_string_value(v);
            if (null)
                g->backoff = d.backoff;
            else if (s && strcmp(s, "constant") == 0)
                g->backoff = OP_BACKOFF_CONSTANT;
            else if (s && strcmp(s, "linear") == 0)
                g->backoff = OP_BACKOFF_LINEAR;
            else if (s && strcmp(s, "exponential") == 0)
                g->backoff = OP_BACKOFF_EXPONENTIAL;
            else {
                pl_errf(err, errlen, "%s: must be \"constant\", \"linear\" or \"exponential\"",
                        key);
                rc = -EINVAL;
            }
        } else {
            pl_errf(err, errlen, "%s: unknown field", key);
            return -EINVAL;
        }
        if (rc)
            return rc;
    }
    return 0;
}

static const char *backoff_name(op_backoff b)
{
    switch (b) {
    case OP_BACKOFF_CONSTANT: return "constant";
    case OP_BACKOFF_LINEAR: return "linear";
    default: return "exponential";
    }
}

/* Whole numbers as JSON integers (Cloudflare's clients expect ints). */
static json_t *json_number_of(double d)
{
    if (d == floor(d) && fabs(d) < 9e15)
        return json_integer((json_int_t)d);
    return json_real(d);
}

static json_t *json_time_or_null(int64_t ms)
{
    if (ms <= 0)
        return json_null();
    char buf[40];
    return json_string(pl_time_format_rfc3339(ms, buf, sizeof buf));
}

json_t *gw_gateway_to_json(const gw_gateway_view *v)
{
    const op_config_gateway *g = v->cfg;
    json_t *providers = json_array();
    for (size_t i = 0; providers && i < g->n_providers; i++) {
        const op_config_provider *p = &g->providers[i];
        json_array_append_new(providers,
                              json_pack("{s:s?, s:s, s:s?}", "name", p->name, "kind",
                                        p->kind == OP_PROVIDER_WORKERS_AI ? "workers-ai" : "openai",
                                        "base_url", p->base_url));
    }
    json_t *o = json_pack(
        "{s:s?, s:s, s:o, s:o, s:i, s:b, s:b, s:o, s:o, s:s, s:b, s:o, s:s, s:b,"
        " s:i, s:i, s:s, s:b, s:I, s:i, s:I, s:b, s:o*}",
        "id", g->id, "source", v->from_api ? "api" : "config", "created_at",
        json_time_or_null(v->created_ms), "modified_at", json_time_or_null(v->modified_ms),
        "cache_ttl", g->cache_ttl_s, "cache_invalidate_on_update", 0, "collect_logs",
        g->collect_logs, "rate_limiting_interval", json_number_of(g->rate_limit_window_s),
        "rate_limiting_limit", json_number_of(g->rate_limit), "rate_limiting_technique",
        g->rate_limit_sliding ? "sliding" : "fixed", "authentication", g->authentication,
        "log_management",
        g->retention_max_logs ? json_integer((json_int_t)g->retention_max_logs) : json_null(),
        "log_management_strategy", "DELETE_OLDEST", "logpush", 0, "max_attempts",
        g->max_attempts, "retry_delay_ms", g->retry_delay_ms, "backoff", backoff_name(g->backoff),
        "log_payloads", g->log_payloads, "max_payload_bytes", (json_int_t)g->max_payload_bytes,
        "request_timeout_ms", g->request_timeout_ms, "log_max_age_s",
        (json_int_t)g->retention_max_age_s, "sync_logs", g->sync_logs, "providers", providers);
    return o;
}

/* ------------------------------------------------------------------------ */
/* files                                                                     */
/* ------------------------------------------------------------------------ */

static int file_name(char *out, size_t cap, const char *account, const char *id, const char *ext)
{
    int n = snprintf(out, cap, "%s.%s.json%s", account, id, ext);
    return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) == 0 ? 0 : -errno;
    close(fd);
    return rc;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Writes e durably: temp file, fsync, rename over the old, fsync the dir. */
static int persist(const gw_registry *reg, const gw_entry *e, char *err, size_t errlen)
{
    gw_gateway_view v = {.cfg = &e->g, .from_api = true, .created_ms = e->created_ms,
                         .modified_ms = e->modified_ms};
    json_t *o = gw_gateway_to_json(&v);
    if (o) {
        json_object_set_new(o, "format", json_integer(GW_FILE_FORMAT));
        json_object_set_new(o, "account", json_string(e->g.account));
        json_object_set_new(o, "created_ms", json_integer(e->created_ms));
        json_object_set_new(o, "modified_ms", json_integer(e->modified_ms));
        /* Derived and read-only keys are not stored. */
        json_object_del(o, "created_at");
        json_object_del(o, "modified_at");
        json_object_del(o, "source");
        json_object_del(o, "providers");
    }
    char *text = o ? json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
    json_decref(o);
    if (!text) {
        pl_errf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    char name[256], tmp[256], path[PATH_MAX], tpath[PATH_MAX];
    int rc = file_name(name, sizeof name, e->g.account, e->g.id, "");
    if (rc == 0)
        rc = file_name(tmp, sizeof tmp, e->g.account, e->g.id, ".tmp");
    if (rc == 0 && ((size_t)snprintf(path, sizeof path, "%s/%s", reg->dir, name) >= sizeof path ||
                    (size_t)snprintf(tpath, sizeof tpath, "%s/%s", reg->dir, tmp) >= sizeof tpath))
        rc = -ENAMETOOLONG;
    if (rc) {
        free(text);
        pl_errf(err, errlen, "gateway file name too long");
        return rc;
    }
    const char *step = "open";
    int fd = open(tpath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0) {
        rc = -errno;
    } else {
        step = "write";
        rc = write_all(fd, text, strlen(text));
        if (rc == 0) {
            step = "write";
            rc = write_all(fd, "\n", 1);
        }
        if (rc == 0 && fsync(fd) != 0) {
            step = "fsync";
            rc = -errno;
        }
        if (close(fd) != 0 && rc == 0) {
            step = "close";
            rc = -errno;
        }
        if (rc == 0 && rename(tpath, path) != 0) {
            step = "rename";
            rc = -errno;
        }
        if (rc == 0 && (rc = fsync_dir(reg->dir)) != 0)
            step = "fsync dir";
        if (rc && strcmp(step, "rename") != 0 && strcmp(step, "fsync dir") != 0)
            unlink(tpath);
    }
    free(text);
    if (rc) {
        pl_errf(err, errlen, "cannot save gateway: %s %s: %s", step, tpath, strerror(-rc));
        PL_LOG_ERROR("gateway.registry.write_failed", "file", tpath, "step", step, "error",
                     strerror(-rc));
    }
    return rc;
}

static int unpersist(const gw_registry *reg, const char *account, const char *id, char *err,
                     size_t errlen)
{
    char name[256], path[PATH_MAX];
    if (file_name(name, sizeof name, account, id, "") != 0 ||
        (size_t)snprintf(path, sizeof path, "%s/%s", reg->dir, name) >= sizeof path) {
        pl_errf(err, errlen, "gateway file name too long");
        return -ENAMETOOLONG;
    }
    int rc = 0;
    if (unlink(path) != 0 && errno != ENOENT)
        rc = -errno;
    if (rc == 0)
        rc = fsync_dir(reg->dir);
    if (rc) {
        pl_errf(err, errlen, "cannot delete gateway file %s: %s", path, strerror(-rc));
        PL_LOG_ERROR("gateway.registry.delete_failed", "file", path, "error", strerror(-rc));
    }
    return rc;
}

static void skip(const char *name, const char *why)
{
    PL_LOG_WARN("gateway.registry.skip", "file", name, "reason", why);
}

static bool json_ms(const json_t *o, const char *key, int64_t *out)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return false;
    *out = json_integer_value(v);
    return true;
}

/* Loads one file into a new entry, or logs why not and returns NULL. */
static gw_entry *load_one(const gw_registry *reg, const char *name)
{
    char path[PATH_MAX];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", reg->dir, name) >= sizeof path) {
        skip(name, "path too long");
        return NULL;
    }
    char *text = NULL;
    size_t len = 0;
    int rc = pl_file_read_all(path, GW_FILE_MAX_BYTES, &text, &len);
    if (rc) {
        skip(name, rc == -EFBIG ? "file too large" : strerror(-rc));
        return NULL;
    }
    json_error_t jerr;
    json_t *o = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    char why[320];
    gw_entry *e = NULL;
    const char *account = NULL, *id = NULL;
    int64_t created = 0, modified = 0;
    json_t *fmt = NULL;
    if (!o) {
        snprintf(why, sizeof why, "not JSON: line %d: %s", jerr.line, jerr.text);
        goto out;
    }
    fmt = json_object_get(o, "format");
    account = json_string_value(json_object_get(o, "account"));
    id = json_string_value(json_object_get(o, "id"));
    if (!json_is_object(o)) {
        snprintf(why, sizeof why, "not a JSON object");
    } else if (!json_is_integer(fmt) || json_integer_value(fmt) != GW_FILE_FORMAT) {
        snprintf(why, sizeof why, "format: must be %d", GW_FILE_FORMAT);
    } else if (!account_valid(account)) {
        snprintf(why, sizeof why, "account: missing or malformed");
    } else if (!gw_id_valid(id)) {
        snprintf(why, sizeof why, "id: missing or malformed");
    } else if (!json_ms(o, "created_ms", &created) || !json_ms(o, "modified_ms", &modified)) {
        snprintf(why, sizeof why, "created_ms/modified_ms: missing or negative");
    } else {
        char want[256];
        if (file_name(want, sizeof want, account, id, "") != 0 || strcmp(want, name) != 0) {
            snprintf(why, sizeof why, "file name does not match account and id");
            goto out;
        }
        json_t *settings = json_deep_copy(o);
        if (!settings) {
            snprintf(why, sizeof why, "out of memory");
            goto out;
        }
        json_object_del(settings, "format");
        json_object_del(settings, "account");
        json_object_del(settings, "created_ms");
        json_object_del(settings, "modified_ms");
        op_config_gateway g;
        gw_gateway_defaults(&g);
        char aerr[256];
        rc = gw_gateway_apply_json(&g, settings, aerr, sizeof aerr);
        json_decref(settings);
        if (rc) {
            snprintf(why, sizeof why, "%s", aerr);
            goto out;
        }
        e = entry_new(account, id, &g, created, modified);
        if (!e)
            snprintf(why, sizeof why, "out of memory");
    }
out:
    if (!e)
        skip(name, why);
    json_decref(o);
    return e;
}

static bool has_suffix(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcmp(s + n - m, suf) == 0;
}

static int load_all(gw_registry *reg, char *err, size_t errlen)
{
    DIR *d = opendir(reg->dir);
    if (!d) {
        int e = errno;
        pl_errf(err, errlen, "%s: %s", reg->dir, strerror(e));
        return -e;
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *name = de->d_name;
        if (name[0] == '.')
            continue;
        if (has_suffix(name, ".json.tmp")) {
            /* A write that crashed before its rename: the old file (if
             * any) is still the gateway. */
            char path[PATH_MAX];
            if ((size_t)snprintf(path, sizeof path, "%s/%s", reg->dir, name) < sizeof path &&
                unlink(path) == 0)
                PL_LOG_INFO("gateway.registry.tmp_removed", "file", name);
            continue;
        }
        if (!has_suffix(name, ".json"))
            continue;
        gw_entry *e = load_one(reg, name);
        if (!e)
            continue;
        bool found;
        if (reserve(reg, reg->n + 1) != 0) {
            entry_unref(e);
            closedir(d);
            pl_errf(err, errlen, "out of memory");
            return -ENOMEM;
        }
        size_t i = find_locked(reg, e->g.account, e->g.id, &found);
        if (found) { /* cannot happen: names are unique; stay safe anyway */
            skip(name, "duplicate gateway");
            entry_unref(e);
            continue;
        }
        insert_locked(reg, i, e);
    }
    closedir(d);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* open / close                                                              */
/* ------------------------------------------------------------------------ */

gw_registry *gw_registry_open(const char *data_dir, char *err, size_t errlen)
{
    gw_registry *reg = calloc(1, sizeof *reg);
    if (!reg) {
        pl_errf(err, errlen, "out of memory");
        return NULL;
    }
    size_t n = strlen(data_dir) + sizeof "/gateways";
    reg->dir = malloc(n);
    if (!reg->dir) {
        free(reg);
        pl_errf(err, errlen, "out of memory");
        return NULL;
    }
    snprintf(reg->dir, n, "%s/gateways", data_dir);
    pthread_rwlock_init(&reg->lock, NULL);
    pthread_mutex_init(&reg->wmu, NULL);
    int rc = pl_file_mkdirs(reg->dir);
    if (rc) {
        pl_errf(err, errlen, "cannot create %s: %s", reg->dir, strerror(-rc));
        gw_registry_close(reg);
        return NULL;
    }
    if (load_all(reg, err, errlen) != 0) {
        gw_registry_close(reg);
        return NULL;
    }
    PL_LOG_INFO("gateway.registry.open", "dir", reg->dir);
    return reg;
}

void gw_registry_close(gw_registry *reg)
{
    if (!reg)
        return;
    for (size_t i = 0; i < reg->n; i++)
        entry_unref(reg->v[i]);
    free(reg->v);
    pthread_rwlock_destroy(&reg->lock);
    pthread_mutex_destroy(&reg->wmu);
    free(reg->dir);
    free(reg);
}

/* ------------------------------------------------------------------------ */
/* readers                                                                   */
/* ------------------------------------------------------------------------ */

static void view_of_entry(gw_entry *e, gw_gateway_view *out)
{
    out->cfg = &e->g;
    out->from_api = true;
    out->created_ms = e->created_ms;
    out->modified_ms = e->modified_ms;
    out->ref_ = e;
}

bool gw_registry_get(gw_registry *reg, const op_config *cfg, const char *account, const char *id,
                     gw_gateway_view *out)
{
    memset(out, 0, sizeof *out);
    if (!account || !id)
        return false;
    const op_config_gateway *cg = op_config_find_gateway(cfg, account, id);
    if (cg) {
        out->cfg = cg;
        return true;
    }
    if (!reg)
        return false;
    bool found;
    pthread_rwlock_rdlock(&reg->lock);
    size_t i = find_locked(reg, account, id, &found);
    if (found) {
        gw_entry *e = reg->v[i];
        atomic_fetch_add(&e->refs, 1);
        view_of_entry(e, out);
    }
    pthread_rwlock_unlock(&reg->lock);
    return found;
}

void gw_gateway_view_release(gw_gateway_view *v)
{
    if (!v)
        return;
    entry_unref(v->ref_);
    memset(v, 0, sizeof *v);
}

void gw_registry_each(gw_registry *reg, const op_config *cfg, const char *account,
                      void (*fn)(const gw_gateway_view *v, void *ctx), void *ctx)
{
    if (!account)
        return;
    for (size_t i = 0; cfg && i < cfg->n_gateways; i++) {
        const op_config_gateway *g = &cfg->gateways[i];
        if (g->account && g->id && strcmp(g->account, account) == 0) {
            gw_gateway_view v = {.cfg = g};
            fn(&v, ctx);
        }
    }
    if (!reg)
        return;
    pthread_rwlock_rdlock(&reg->lock);
    for (size_t i = account_start_locked(reg, account);
         i < reg->n && strcmp(reg->v[i]->g.account, account) == 0; i++) {
        gw_entry *e = reg->v[i];
        if (op_config_find_gateway(cfg, account, e->g.id))
            continue; /* shadowed by the config */
        gw_gateway_view v;
        view_of_entry(e, &v);
        fn(&v, ctx);
    }
    pthread_rwlock_unlock(&reg->lock);
}

size_t gw_registry_api_count(gw_registry *reg)
{
    pthread_rwlock_rdlock(&reg->lock);
    size_t n = reg->n;
    pthread_rwlock_unlock(&reg->lock);
    return n;
}

/* ------------------------------------------------------------------------ */
/* writers                                                                   */
/* ------------------------------------------------------------------------ */

static int check_names(const char *account, const char *id, char *err, size_t errlen)
{
    if (!account_valid(account)) {
        pl_errf(err, errlen, "account: must match [A-Za-z0-9_-]{1,64}");
        return -EINVAL;
    }
    if (!gw_id_valid(id)) {
        pl_errf(err, errlen, "id: must match [a-z0-9_-]{1,64}");
        return -EINVAL;
    }
    return 0;
}

static size_t account_count_locked(const gw_registry *reg, const char *account)
{
    size_t n = 0;
    for (size_t i = account_start_locked(reg, account);
         i < reg->n && strcmp(reg->v[i]->g.account, account) == 0; i++)
        n++;
    return n;
}

int gw_registry_create(gw_registry *reg, const op_config *cfg, const char *account,
                       const char *id, const op_config_gateway *settings, gw_gateway_view *out,
                       char *err, size_t errlen)
{
    if (out)
        memset(out, 0, sizeof *out);
    int rc = check_names(account, id, err, errlen);
    if (rc)
        return rc;
    if (op_config_find_gateway(cfg, account, id)) {
        pl_errf(err, errlen, "gateway '%s' already exists (defined in the config file)", id);
        return -EEXIST;
    }
    pthread_mutex_lock(&reg->wmu);
    bool found;
    /* Writers are serialized by wmu, so reading v without the rwlock here
     * is safe: only writers change it. */
    find_locked(reg, account, id, &found);
    if (found) {
        pl_errf(err, errlen, "gateway '%s' already exists", id);
        rc = -EEXIST;
    } else if (account_count_locked(reg, account) >= GW_API_GATEWAYS_PER_ACCOUNT_MAX) {
        pl_errf(err, errlen, "account has the most gateways allowed (%d)",
                GW_API_GATEWAYS_PER_ACCOUNT_MAX);
        rc = -EDQUOT;
    } else {
        int64_t now = pl_time_wall_ms();
        gw_entry *e = entry_new(account, id, settings, now, now);
        if (!e || reserve(reg, reg->n + 1) != 0) {
            entry_unref(e);
            pl_errf(err, errlen, "out of memory");
            rc = -ENOMEM;
        } else if ((rc = persist(reg, e, err, errlen)) != 0) {
            entry_unref(e);
        } else {
            pthread_rwlock_wrlock(&reg->lock);
            insert_locked(reg, find_locked(reg, account, id, &found), e);
            if (out) {
                atomic_fetch_add(&e->refs, 1);
                view_of_entry(e, out);
            }
            pthread_rwlock_unlock(&reg->lock);
            PL_LOG_INFO("gateway.created", "account", account, "gateway", id);
        }
    }
    pthread_mutex_unlock(&reg->wmu);
    return rc;
}

int gw_registry_replace(gw_registry *reg, const op_config *cfg, const char *account,
                        const char *id, const op_config_gateway *settings, gw_gateway_view *out,
                        char *err, size_t errlen)
{
    if (out)
        memset(out, 0, sizeof *out);
    if (op_config_find_gateway(cfg, account, id)) {
        pl_errf(err, errlen,
                "gateway '%s' is defined in the config file; change it there and reload", id);
        return -EROFS;
    }
    int rc = check_names(account, id, err, errlen);
    if (rc) {
        pl_errf(err, errlen, "no gateway '%s'", id ? id : "");
        return -ENOENT;
    }
    pthread_mutex_lock(&reg->wmu);
    bool found;
    size_t i = find_locked(reg, account, id, &found);
    if (!found) {
        pl_errf(err, errlen, "no gateway '%s'", id);
        rc = -ENOENT;
    } else {
        gw_entry *old = reg->v[i];
        int64_t now = pl_time_wall_ms();
        if (now < old->created_ms)
            now = old->created_ms; /* a wall clock stepped back */
        gw_entry *e = entry_new(account, id, settings, old->created_ms, now);
        if (!e) {
            pl_errf(err, errlen, "out of memory");
            rc = -ENOMEM;
        } else if ((rc = persist(reg, e, err, errlen)) != 0) {
            entry_unref(e);
        } else {
            pthread_rwlock_wrlock(&reg->lock);
            reg->v[i] = e;
            if (out) {
                atomic_fetch_add(&e->refs, 1);
                view_of_entry(e, out);
            }
            pthread_rwlock_unlock(&reg->lock);
            entry_unref(old); /* views still holding it keep it alive */
            PL_LOG_INFO("gateway.updated", "account", account, "gateway", id);
        }
    }
    pthread_mutex_unlock(&reg->wmu);
    return rc;
}

int gw_registry_delete(gw_registry *reg, const op_config *cfg, const char *account,
                       const char *id, char *err, size_t errlen)
{
    if (op_config_find_gateway(cfg, account, id)) {
        pl_errf(err, errlen,
                "gateway '%s' is defined in the config file; remove it there and reload", id);
        return -EROFS;
    }
    if (check_names(account, id, err, errlen) != 0) {
        pl_errf(err, errlen, "no gateway '%s'", id ? id : "");
        return -ENOENT;
    }
    pthread_mutex_lock(&reg->wmu);
    bool found;
    int rc = 0;
    size_t i = find_locked(reg, account, id, &found);
    if (!found) {
        pl_errf(err, errlen, "no gateway '%s'", id);
        rc = -ENOENT;
    } else if ((rc = unpersist(reg, account, id, err, errlen)) == 0) {
        pthread_rwlock_wrlock(&reg->lock);
        gw_entry *old = reg->v[i];
        memmove(reg->v + i, reg->v + i + 1, (reg->n - i - 1) * sizeof *reg->v);
        reg->n--;
        pthread_rwlock_unlock(&reg->lock);
        entry_unref(old);
        PL_LOG_INFO("gateway.deleted", "account", account, "gateway", id);
    }
    pthread_mutex_unlock(&reg->wmu);
    return rc;
}
