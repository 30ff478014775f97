/*
 * vx_store: the catalog of vector indexes (see vx_store.h).
 *
 * The catalog is one array of (account, name, index) kept sorted by account
 * then name, under one mutex: lookups are binary searches, and list returns
 * an account's run in name order. Index work (open at start, queries,
 * writes) happens on references outside the mutex, except creation, which
 * holds it so that two creates of one name cannot race (creation is a
 * mkdir, one small file and a WAL open).
 *
 * Account directory names (refining the header's rule so that no two
 * accounts share a directory): a name of 1..64 bytes of [A-Za-z0-9_-] is
 * used as is unless it has the shape of an encoded name ('x' followed only
 * by lowercase hex digits); every other name (and those) becomes "x" + the
 * lowercase hex of its bytes. Names longer than VX_STORE_ACCOUNT_MAX bytes
 * are refused (the hex form must fit a file name).
 */
#include "vector/vx_store.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "platform/pl_err.h"
#include "platform/pl_file.h"
#include "platform/pl_log.h"
#include "platform/pl_time.h"

#define VX_STORE_ACCOUNT_MAX 120
#define TRASH ".trash"

typedef struct entry {
    char *account;
    char *name;
    vx_index *x;
} entry;

struct vx_store {
    pthread_mutex_t mu;
    char *root;
    uint32_t max_dim, max_indexes;
    vx_index_opts iopts;
    entry *e;
    size_t n, cap;
    char **failed;
    size_t nfailed;
    uint64_t trash_seq;
};

/* snprintf into a path buffer; false when it did not fit. */
static bool pjoin(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static bool pjoin(char *out, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, cap, fmt, ap);
    va_end(ap);
    return n >= 0 && (size_t)n < cap;
}

static bool plain_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '-';
}

static bool looks_encoded(const char *s)
{
    if (s[0] != 'x')
        return false;
    for (const char *p = s + 1; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return false;
    return true;
}

/* The directory name of an account into out (>= 2 * MAX + 2 bytes). */
static int account_dir(const char *account, char *out, size_t cap)
{
    size_t l = strlen(account);
    if (l > VX_STORE_ACCOUNT_MAX || cap < 2 * VX_STORE_ACCOUNT_MAX + 2)
        return -EINVAL;
    bool plain = l > 0 && l <= 64 && !looks_encoded(account);
    for (size_t i = 0; plain && i < l; i++)
        plain = plain_char(account[i]);
    if (plain) {
        memcpy(out, account, l + 1);
        return 0;
    }
    static const char hex[] = "0123456789abcdef";
    out[0] = 'x';
    for (size_t i = 0; i < l; i++) {
        out[1 + 2 * i] = hex[(unsigned char)account[i] >> 4];
        out[2 + 2 * i] = hex[(unsigned char)account[i] & 15];
    }
    out[1 + 2 * l] = '\0';
    return 0;
}

/* Inverse of account_dir; -1 for a name no account maps to. */
static int account_from_dir(const char *d, char *out, size_t cap)
{
    size_t l = strlen(d);
    if (!looks_encoded(d)) {
        if (l == 0 || l > 64 || l >= cap)
            return -1;
        for (size_t i = 0; i < l; i++)
            if (!plain_char(d[i]))
                return -1;
        memcpy(out, d, l + 1);
        return 0;
    }
    if ((l - 1) % 2 || (l - 1) / 2 >= cap)
        return -1;
    size_t n = (l - 1) / 2;
    for (size_t i = 0; i < n; i++) {
        unsigned v = 0;
        for (int k = 0; k < 2; k++) {
            char c = d[1 + 2 * i + (size_t)k];
            v = v * 16 + (unsigned)(c <= '9' ? c - '0' : c - 'a' + 10);
        }
        if (v == 0)
            return -1; /* account names are C strings */
        out[i] = (char)v;
    }
    out[n] = '\0';
    return 0;
}

static int entry_cmp(const char *a1, const char *n1, const char *a2, const char *n2)
{
    int c = strcmp(a1, a2);
    return c ? c : strcmp(n1, n2);
}

/* First position >= (account, name). */
static size_t find_pos(const vx_store *s, const char *account, const char *name)
{
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (entry_cmp(s->e[mid].account, s->e[mid].name, account, name) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static long find(const vx_store *s, const char *account, const char *name)
{
    size_t p = find_pos(s, account, name);
    if (p < s->n && strcmp(s->e[p].account, account) == 0 && strcmp(s->e[p].name, name) == 0)
        return (long)p;
    return -1;
}

static int insert(vx_store *s, const char *account, const char *name, vx_index *x)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        entry *e = realloc(s->e, cap * sizeof *e);
        if (!e)
            return -ENOMEM;
        s->e = e;
        s->cap = cap;
    }
    entry ne = {strdup(account), strdup(name), x};
    if (!ne.account || !ne.name) {
        free(ne.account);
        free(ne.name);
        return -ENOMEM;
    }
    size_t p = find_pos(s, account, name);
    memmove(&s->e[p + 1], &s->e[p], (s->n - p) * sizeof *s->e);
    s->e[p] = ne;
    s->n++;
    return 0;
}

static size_t count_account(const vx_store *s, const char *account)
{
    size_t p = find_pos(s, account, ""), c = 0;
    while (p + c < s->n && strcmp(s->e[p + c].account, account) == 0)
        c++;
    return c;
}

static void add_failed(vx_store *s, const char *account, const char *name, const char *why)
{
    char line[1024];
    snprintf(line, sizeof line, "%s/%s: %s", account, name, why);
    char **f = realloc(s->failed, (s->nfailed + 1) * sizeof *f);
    if (!f)
        return;
    s->failed = f;
    if ((s->failed[s->nfailed] = strdup(line)))
        s->nfailed++;
    PL_LOG_ERROR("vx_store.index_failed", "account", account, "index", name, "reason", why);
}

static bool index_name_ok(const char *n)
{
    vx_index_config c;
    memset(&c, 0, sizeof c);
    size_t l = strlen(n);
    if (l > VX_INDEX_NAME_MAX)
        return false;
    memcpy(c.name, n, l + 1);
    c.dimensions = 1;
    return vx_index_config_check(&c, 1, NULL, 0) == 0;
}

/* Opens every index of one account directory. */
static void open_account(vx_store *s, const char *dname)
{
    char account[VX_STORE_ACCOUNT_MAX + 1];
    if (account_from_dir(dname, account, sizeof account) != 0) {
        add_failed(s, dname, "*", "directory name is no account's");
        return;
    }
    char path[4096];
    DIR *d = pjoin(path, sizeof path, "%s/%s", s->root, dname) ? opendir(path) : NULL;
    if (!d) {
        add_failed(s, account, "*", strerror(errno));
        return;
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char ip[4096];
        struct stat st;
        if (!pjoin(ip, sizeof ip, "%s/%s", path, de->d_name) || stat(ip, &st) != 0 || !S_ISDIR(st.st_mode))
            continue;
        if (!index_name_ok(de->d_name)) {
            add_failed(s, account, de->d_name, "not a valid index name");
            continue;
        }
        vx_index *x = NULL;
        char err[512] = "";
        int rc = vx_index_open(ip, &s->iopts, &x, err, sizeof err);
        if (rc) {
            add_failed(s, account, de->d_name, err[0] ? err : strerror(-rc));
            continue;
        }
        if (insert(s, account, de->d_name, x) != 0) {
            vx_index_unref(x);
            add_failed(s, account, de->d_name, "out of memory");
            continue;
        }
        vx_index_info info;
        vx_index_info_get(x, &info);
        char ms[32], recs[32];
        snprintf(ms, sizeof ms, "%.1f", info.open_ms);
        snprintf(recs, sizeof recs, "%" PRIu64, info.replayed_records);
        PL_LOG_INFO("vx_store.index_opened", "account", account, "index", de->d_name, "open_ms",
                    ms, "replayed", recs);
    }
    closedir(d);
}

int vx_store_open(const vx_store_opts *o, vx_store **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!o || !o->root || !o->root[0]) {
        pl_errf(err, errlen, "vector store needs a root directory");
        return -EINVAL;
    }
    int rc = pl_file_mkdirs(o->root);
    if (rc) {
        pl_errf(err, errlen, "mkdir %s: %s", o->root, strerror(-rc));
        return -EIO;
    }
    vx_store *s = calloc(1, sizeof *s);
    if (!s || !(s->root = strdup(o->root))) {
        free(s);
        return -ENOMEM;
    }
    pthread_mutex_init(&s->mu, NULL);
    s->max_dim = o->max_dimensions ? o->max_dimensions : VX_INDEX_DIM_MAX_DEFAULT;
    s->max_indexes = o->max_indexes ? o->max_indexes : VX_STORE_MAX_INDEXES;
    s->iopts = o->index;
    s->trash_seq = (uint64_t)pl_time_wall_ms();
    char trash[4096];
    pjoin(trash, sizeof trash, "%s/" TRASH, s->root);
    vx_index_remove_dir(trash); /* deletions interrupted by a stop */
    DIR *d = opendir(s->root);
    if (!d) {
        pl_errf(err, errlen, "opendir %s: %s", s->root, strerror(errno));
        vx_store_close(s);
        return -EIO;
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char p[4096];
        struct stat st;
        if (pjoin(p, sizeof p, "%s/%s", s->root, de->d_name) && stat(p, &st) == 0 && S_ISDIR(st.st_mode))
            open_account(s, de->d_name);
    }
    closedir(d);
    *out = s;
    return 0;
}

void vx_store_close(vx_store *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++) {
        vx_index_unref(s->e[i].x);
        free(s->e[i].account);
        free(s->e[i].name);
    }
    free(s->e);
    for (size_t i = 0; i < s->nfailed; i++)
        free(s->failed[i]);
    free(s->failed);
    pthread_mutex_destroy(&s->mu);
    free(s->root);
    free(s);
}

static int index_path(const vx_store *s, const char *account, const char *name, char *out,
                      size_t cap, char *err, size_t errlen)
{
    char ad[2 * VX_STORE_ACCOUNT_MAX + 2];
    if (!account || account_dir(account, ad, sizeof ad) != 0) {
        pl_errf(err, errlen, "account name longer than %d bytes", VX_STORE_ACCOUNT_MAX);
        return -EINVAL;
    }
    if (!pjoin(out, cap, "%s/%s/%s", s->root, ad, name)) {
        pl_errf(err, errlen, "path too long");
        return -EINVAL;
    }
    return 0;
}

int vx_store_create(vx_store *s, const char *account, const vx_index_config *c, vx_index **out,
                    char *err, size_t errlen)
{
    *out = NULL;
    int rc = vx_index_config_check(c, s->max_dim, err, errlen);
    if (rc)
        return rc;
    char path[4096];
    rc = index_path(s, account, c->name, path, sizeof path, err, errlen);
    if (rc)
        return rc;
    pthread_mutex_lock(&s->mu);
    if (find(s, account, c->name) >= 0) {
        pthread_mutex_unlock(&s->mu);
        pl_errf(err, errlen, "an index named '%s' already exists", c->name);
        return -EEXIST;
    }
    if (count_account(s, account) >= s->max_indexes) {
        pthread_mutex_unlock(&s->mu);
        pl_errf(err, errlen, "the account has %" PRIu32 " indexes, the maximum (max_indexes)",
               s->max_indexes);
        return -ENOSPC;
    }
    vx_index *x = NULL;
    rc = vx_index_create(path, c, &s->iopts, &x, err, errlen);
    if (rc == 0 && insert(s, account, c->name, x) != 0) {
        vx_index_remove_on_close(x, path);
        vx_index_unref(x);
        rc = -ENOMEM;
        pl_errf(err, errlen, "out of memory");
    }
    if (rc == 0)
        vx_index_ref(x);
    pthread_mutex_unlock(&s->mu);
    if (rc)
        return rc == -EEXIST ? rc : rc == -ENOMEM ? rc : rc == -EINVAL ? rc : -EIO;
    *out = x;
    return 0;
}

vx_index *vx_store_get(vx_store *s, const char *account, const char *name)
{
    if (!account || !name)
        return NULL;
    pthread_mutex_lock(&s->mu);
    long i = find(s, account, name);
    vx_index *x = i >= 0 ? s->e[i].x : NULL;
    if (x)
        vx_index_ref(x);
    pthread_mutex_unlock(&s->mu);
    return x;
}

int vx_store_list(vx_store *s, const char *account, vx_index ***out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (!account)
        return -EINVAL;
    pthread_mutex_lock(&s->mu);
    size_t p = find_pos(s, account, ""), c = count_account(s, account);
    vx_index **v = malloc((c ? c : 1) * sizeof *v);
    if (!v) {
        pthread_mutex_unlock(&s->mu);
        return -ENOMEM;
    }
    for (size_t i = 0; i < c; i++) {
        v[i] = s->e[p + i].x;
        vx_index_ref(v[i]);
    }
    pthread_mutex_unlock(&s->mu);
    *out = v;
    *n = c;
    return 0;
}

int vx_store_delete(vx_store *s, const char *account, const char *name, char *err, size_t errlen)
{
    char path[4096];
    if (!name || index_path(s, account, name, path, sizeof path, err, errlen) != 0)
        return -EINVAL;
    pthread_mutex_lock(&s->mu);
    long i = find(s, account, name);
    if (i < 0) {
        pthread_mutex_unlock(&s->mu);
        pl_errf(err, errlen, "no index named '%.64s'", name);
        return -ENOENT;
    }
    entry e = s->e[i];
    memmove(&s->e[i], &s->e[i + 1], (s->n - (size_t)i - 1) * sizeof *s->e);
    s->n--;
    char trash[4096], dst[4096];
    pjoin(trash, sizeof trash, "%s/" TRASH, s->root);
    pjoin(dst, sizeof dst, "%s/%" PRIu64 "-%s", trash, s->trash_seq++, name);
    int rc = 0;
    if (mkdir(trash, 0750) != 0 && errno != EEXIST)
        rc = -errno;
    if (!rc && rename(path, dst) != 0)
        rc = -errno;
    pthread_mutex_unlock(&s->mu);
    if (rc) {
        /* Out of the catalog either way; the directory stays where it was
         * and is removed in place once the index closes. */
        PL_LOG_WARN("vx_store.trash_failed", "dir", path, "error", strerror(-rc));
        pjoin(dst, sizeof dst, "%s", path);
    }
    vx_index_remove_on_close(e.x, dst);
    vx_index_unref(e.x);
    free(e.account);
    free(e.name);
    return 0;
}

size_t vx_store_failed_count(vx_store *s)
{
    pthread_mutex_lock(&s->mu);
    size_t n = s->nfailed;
    pthread_mutex_unlock(&s->mu);
    return n;
}

const char *vx_store_failed(vx_store *s, size_t i)
{
    pthread_mutex_lock(&s->mu);
    const char *f = i < s->nfailed ? s->failed[i] : NULL;
    pthread_mutex_unlock(&s->mu);
    return f;
}

uint32_t vx_store_max_dimensions(const vx_store *s) { return s->max_dim; }
