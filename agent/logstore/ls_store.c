/*
 * The log store: group commit, recovery, reads, retention and space
 * reclamation. Contract and durability rules: ls_store.h; design and
 * on-disk format: docs/decisions/0010-log-store.md.
 *
 * Locks, in the order they may nest:
 *   maint_lock  one maintenance pass at a time (ls_maintain)
 *   lk (rwlock) segments list, summaries, indexes, atoms, account+gateway
 *               table; write-held by the committer while it applies a
 *               durable group, read-held by readers while they walk an
 *               index (never across disk I/O or callbacks)
 *   pmu         the pending buffer, next_seq, closing (appenders, committer)
 *   wmu         durable_seq waiters
 * pmu and wmu are never held together with lk.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "logstore/ls_internal.h"
#include "metrics/op_metrics.h"
#include "platform/pl_file.h"
#include "platform/pl_log.h"
#include "platform/pl_time.h"

#define DEF_INTERVAL_US 2000u
#define DEF_MAX_RECORDS 4096u
#define DEF_MAX_PENDING (64u << 20)
#define DEF_SEGMENT (64u << 20)
#define MAX_SEGMENT (1u << 30)
#define MIN_SEGMENT 1024u
#define DEF_MAX_RECORD (16u << 20)
#define DEF_MAINT_MS 1000u
#define EXPORT_BATCH 256u
#define LIST_HEAD_READ 2048u
#define WRITE_SLICE (4u << 20)

/* ======================================================================== */
/* Types                                                                    */
/* ======================================================================== */

typedef struct ls_ag {
    uint32_t account, gateway; /* atoms */
    ls_tix ix;
    uint64_t live;
    uint64_t max_logs;         /* retention; 0 = none */
    int64_t max_age_s;
    bool has_range;            /* the latest range tombstone applied */
    ls_key range_cut;
    uint64_t range_max_seq, range_tseq;
} ls_ag;

typedef struct ls_seg {
    uint64_t no, first_seq, last_seq; /* last_seq < first_seq: no records */
    uint32_t salt;
    int fd;
    uint64_t size;
    uint64_t live;             /* live log records in it */
    uint64_t controls;         /* control records in it */
    atomic_int refs;           /* the list's + readers' */
} ls_seg;

struct ls_store {
    ls_opts o;
    char *dir;
    int dirfd;
    uint8_t store_id[16];

    pthread_rwlock_t lk;
    ls_seg **segs;             /* by no; the last one is active */
    size_t nseg, segcap;
    ls_atoms atoms;
    ls_ag **ags;
    uint32_t nag, agcap;
    uint32_t *agslot;          /* open addressing, 0 empty, else index + 1 */
    uint32_t nagslot;
    ls_sums sums;
    ls_tix all;
    uint64_t live;
    uint64_t applied_seq;
    uint64_t bytes;
    uint64_t unindexed;        /* durable records not indexed (ENOMEM, bad payload) */

    pthread_mutex_t pmu;
    pthread_cond_t pcond;      /* committer: work or closing */
    uint8_t *fill;
    size_t fill_len, fill_cap;
    uint32_t fill_n;
    uint64_t fill_first_ns;
    uint8_t *spare;
    size_t spare_cap;
    size_t flight_bytes;
    uint32_t flight_n;
    uint64_t next_seq;
    bool closing;
    ls_seg *active;            /* committer's; changes under lk (write) */

    pthread_mutex_t wmu;
    pthread_cond_t wcond;
    _Atomic uint64_t durable_seq;
    atomic_int failed;         /* 0 or a negative errno */

    pthread_mutex_t mmu;
    pthread_cond_t mcond;
    bool mstop;
    pthread_mutex_t maint_lock;

    pthread_t committer, maint;
    bool committer_started, maint_started;

    _Atomic uint64_t commits, appended, dropped, last_commit_ns;
    uint64_t corrupt, truncated;
    double g_records, g_bytes; /* what this store added to the gauges */
};

/* ======================================================================== */
/* Metrics                                                                  */
/* ======================================================================== */

static pthread_once_t g_metrics_once = PTHREAD_ONCE_INIT;
static op_metric_child *g_m_records, *g_m_bytes, *g_m_commit, *g_m_appended;
static op_metric_child *g_m_drop_bp, *g_m_drop_big, *g_m_drop_io;

static void metrics_init(void)
{
    static const char *const l_reason[] = {"reason", NULL};
    static const double buckets[] = {1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2,
                                     2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1, 2.5, 10};
    g_m_records = op_metric_with(op_metric_gauge("outpost_logstore_records",
                                                 "Live request-log records.", NULL));
    g_m_bytes = op_metric_with(op_metric_gauge("outpost_logstore_bytes",
                                               "Bytes of request-log segment files.", NULL));
    g_m_commit = op_metric_with(op_metric_histogram(
        "outpost_logstore_commit_seconds",
        "Time to write and fdatasync one group of request-log records.", NULL, buckets,
        sizeof buckets / sizeof buckets[0]));
    g_m_appended = op_metric_with(op_metric_counter(
        "outpost_logstore_appended_total", "Request-log records accepted for writing.", NULL));
    op_metric *drop = op_metric_counter("outpost_logstore_dropped_total",
                                        "Request-log records refused, by reason "
                                        "(backpressure, too_large, io_error).",
                                        l_reason);
    g_m_drop_bp = op_metric_with(drop, "backpressure");
    g_m_drop_big = op_metric_with(drop, "too_large");
    g_m_drop_io = op_metric_with(drop, "io_error");
}

static void gauges_add(ls_store *s, double records, double bytes)
{
    if (records != 0) {
        op_gauge_add(g_m_records, records);
        s->g_records += records;
    }
    if (bytes != 0) {
        op_gauge_add(g_m_bytes, bytes);
        s->g_bytes += bytes;
    }
}

static void count_drop(ls_store *s, op_metric_child *why)
{
    atomic_fetch_add(&s->dropped, 1);
    op_counter_inc(why);
}

/* ======================================================================== */
/* Small helpers                                                            */
/* ======================================================================== */

static void set_err(char *err, size_t errlen, const char *fmt, const char *a, int e)
{
    if (err && errlen > 0)
        snprintf(err, errlen, fmt, a, strerror(e < 0 ? -e : e));
}

static void deadline_ts(struct timespec *ts, uint64_t mono_ns)
{
    ts->tv_sec = (time_t)(mono_ns / 1000000000ull);
    ts->tv_nsec = (long)(mono_ns % 1000000000ull);
}

static int cond_init_mono(pthread_cond_t *c)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(c, &a);
    pthread_condattr_destroy(&a);
    return rc;
}

static ls_str cstr(const char *p)
{
    return (ls_str){p, (uint32_t)strlen(p)};
}

/* --- segments (lk held) ------------------------------------------------ */

static ls_seg *seg_find(const ls_store *s, uint64_t no)
{
    size_t lo = 0, hi = s->nseg;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->segs[mid]->no < no)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < s->nseg && s->segs[lo]->no == no ? s->segs[lo] : NULL;
}

/* The segment whose seq range holds seq, or NULL. */
static ls_seg *seg_for_seq(const ls_store *s, uint64_t seq)
{
    size_t lo = 0, hi = s->nseg;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->segs[mid]->first_seq <= seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return NULL;
    ls_seg *g = s->segs[lo - 1];
    return seq <= g->last_seq ? g : NULL;
}

static void seg_ref(ls_seg *g)
{
    atomic_fetch_add(&g->refs, 1);
}

static void seg_unref(ls_seg *g)
{
    if (g && atomic_fetch_sub(&g->refs, 1) == 1) {
        if (g->fd >= 0)
            close(g->fd);
        free(g);
    }
}

static int seg_push(ls_store *s, ls_seg *g)
{
    if (s->nseg == s->segcap) {
        size_t cap = s->segcap ? s->segcap * 2 : 16;
        ls_seg **v = realloc(s->segs, cap * sizeof *v);
        if (!v)
            return -ENOMEM;
        s->segs = v;
        s->segcap = cap;
    }
    s->segs[s->nseg++] = g;
    return 0;
}

/* --- account+gateway table (lk held) ----------------------------------- */

static uint32_t ag_hash(uint32_t a, uint32_t g)
{
    uint64_t k = ((uint64_t)a << 32 | g) * 0x9E3779B97F4A7C15ull;
    return (uint32_t)(k >> 32);
}

/* Index of the account+gateway with these atoms, or -1. */
static int64_t ag_lookup(const ls_store *s, uint32_t a, uint32_t g)
{
    if (s->nagslot == 0)
        return -1;
    uint32_t mask = s->nagslot - 1;
    for (uint32_t i = ag_hash(a, g) & mask;; i = (i + 1) & mask) {
        uint32_t v = s->agslot[i];
        if (v == 0)
            return -1;
        const ls_ag *x = s->ags[v - 1];
        if (x->account == a && x->gateway == g)
            return v - 1;
    }
}

static int ag_rehash(ls_store *s)
{
    uint32_t n = s->nagslot ? s->nagslot * 2 : 64;
    uint32_t *slot = calloc(n, sizeof *slot);
    if (!slot)
        return -ENOMEM;
    for (uint32_t k = 0; k < s->nag; k++) {
        uint32_t i = ag_hash(s->ags[k]->account, s->ags[k]->gateway) & (n - 1);
        while (slot[i])
            i = (i + 1) & (n - 1);
        slot[i] = k + 1;
    }
    free(s->agslot);
    s->agslot = slot;
    s->nagslot = n;
    return 0;
}

/* Index of the account+gateway, created if create; -1 if absent/ENOMEM. */
static int64_t ag_get(ls_store *s, ls_str account, ls_str gateway, bool create)
{
    int64_t a, g;
    if (create) {
        a = ls_atoms_intern(&s->atoms, account.p, account.n);
        g = ls_atoms_intern(&s->atoms, gateway.p, gateway.n);
    } else {
        a = ls_atoms_find(&s->atoms, account.p, account.n);
        g = ls_atoms_find(&s->atoms, gateway.p, gateway.n);
    }
    if (a < 0 || g < 0)
        return -1;
    int64_t idx = ag_lookup(s, (uint32_t)a, (uint32_t)g);
    if (idx >= 0 || !create)
        return idx;
    if ((s->nag + 1) * 2 > s->nagslot && ag_rehash(s) != 0)
        return -1;
    if (s->nag == s->agcap) {
        uint32_t cap = s->agcap ? s->agcap * 2 : 16;
        ls_ag **v = realloc(s->ags, cap * sizeof *v);
        if (!v)
            return -1;
        s->ags = v;
        s->agcap = cap;
    }
    ls_ag *x = calloc(1, sizeof *x);
    if (!x)
        return -1;
    x->account = (uint32_t)a;
    x->gateway = (uint32_t)g;
    s->ags[s->nag] = x;
    uint32_t mask = s->nagslot - 1;
    uint32_t i = ag_hash(x->account, x->gateway) & mask;
    while (s->agslot[i])
        i = (i + 1) & mask;
    s->agslot[i] = ++s->nag;
    return s->nag - 1;
}

/* ======================================================================== */
/* Applying durable records to memory (lk write-held; at open: no threads)  */
/* ======================================================================== */

static void kill_pos(ls_store *s, uint64_t pos, ls_sum *x)
{
    if (x->flags & LS_S_DEAD)
        return;
    x->flags |= LS_S_DEAD;
    ls_chunk *c = ls_sums_chunk(&s->sums, pos);
    if (c)
        c->n_dead++;
    if (x->ag < s->nag)
        s->ags[x->ag]->live--;
    s->live--;
    ls_seg *g = seg_find(s, x->seg_no);
    if (g)
        g->live--;
}

static void not_indexed(ls_store *s, const char *why, uint64_t seq)
{
    s->unindexed++;
    char sq[24];
    snprintf(sq, sizeof sq, "%" PRIu64, seq);
    PL_LOG_ERROR("logstore.not_indexed", "seq", sq, "reason", why);
}

static void apply_log(ls_store *s, ls_seg *g, uint64_t off, const ls_frame *f)
{
    ls_logview v;
    if (ls_log_decode(f->payload, f->len, true, &v) != 0) {
        not_indexed(s, "bad payload", f->seq);
        return;
    }
    int64_t agi = ag_get(s, v.account, v.gateway, true);
    int64_t prov = ls_atoms_intern(&s->atoms, v.provider.p, v.provider.n);
    int64_t model = ls_atoms_intern(&s->atoms, v.model.p, v.model.n);
    uint32_t pairs[2 * LS_META_MAX], np = 0;
    for (int i = 0; i < v.n_meta; i++) {
        int64_t k = ls_atoms_intern(&s->atoms, v.meta[i].key.p, v.meta[i].key.n);
        int64_t val = ls_atoms_intern(&s->atoms, v.meta[i].val.p, v.meta[i].val.n);
        if (k >= 0 && val >= 0) {
            pairs[2 * np] = (uint32_t)k;
            pairs[2 * np + 1] = (uint32_t)val;
            np++;
        }
    }
    uint64_t pos;
    ls_sum *x = agi >= 0 && prov >= 0 && model >= 0
                    ? ls_sums_add(&s->sums, f->seq, v.key, &pos)
                    : NULL;
    if (!x) {
        not_indexed(s, "out of memory", f->seq);
        return;
    }
    ls_ag *ag = s->ags[agi];
    x->duration_ms = v.duration_ms;
    x->score = v.score;
    x->seg_no = (uint32_t)g->no;
    x->off = (uint32_t)off;
    x->len = LS_FRAME_HDR + f->len;
    x->ag = (uint32_t)agi;
    x->provider = (uint32_t)prov;
    x->model = (uint32_t)model;
    x->status = v.status;
    x->feedback = v.feedback;
    x->flags = ((v.flags & LS_F_SUCCESS) ? LS_S_SUCCESS : 0) |
               ((v.flags & LS_F_CACHED) ? LS_S_CACHED : 0) |
               ((v.flags & LS_F_SCORE) ? LS_S_SCORE : 0);
    x->meta = ls_sums_meta(&s->sums, pos, pairs, np);
    if (ls_tix_insert(&s->all, &s->sums, pos) != 0 || ls_tix_insert(&ag->ix, &s->sums, pos) != 0) {
        /* Durable but not findable until the next open; an index may
         * already hold it, so it stays as a dead summary. */
        x->flags |= LS_S_DEAD;
        ls_sums_chunk(&s->sums, pos)->n_dead++;
        not_indexed(s, "out of memory", f->seq);
        return;
    }
    ag->live++;
    s->live++;
    g->live++;
}

static void apply_patch(ls_store *s, const ls_frame *f)
{
    ls_patch p;
    if (ls_patch_decode(f->payload, f->len, &p) != 0)
        return;
    int64_t pos = ls_sums_find_seq(&s->sums, p.target);
    ls_sum *x = pos >= 0 ? ls_sums_at(&s->sums, (uint64_t)pos) : NULL;
    if (!x || (x->flags & LS_S_DEAD) || ls_key_cmp(x->key, p.key) != 0)
        return;
    x->feedback = p.feedback;
    if (p.has_score) {
        x->score = p.score;
        x->flags |= LS_S_SCORE;
    }
}

static void apply_tomb(ls_store *s, const ls_frame *f)
{
    int n = ls_tomb_decode(f->payload, f->len);
    for (int i = 0; i < n; i++) {
        int64_t pos = ls_sums_find_seq(&s->sums, ls_get64(f->payload + 4 + 8 * (size_t)i));
        ls_sum *x = pos >= 0 ? ls_sums_at(&s->sums, (uint64_t)pos) : NULL;
        if (x)
            kill_pos(s, (uint64_t)pos, x);
    }
}

static void apply_range(ls_store *s, const ls_frame *f)
{
    ls_range r;
    if (ls_range_decode(f->payload, f->len, &r) != 0)
        return;
    int64_t agi = ag_get(s, r.account, r.gateway, true);
    if (agi < 0)
        return;
    ls_ag *ag = s->ags[agi];
    for (ls_tpos p = ls_tix_first(&ag->ix); !ls_tix_end(&ag->ix, p); p = ls_tix_next(&ag->ix, p)) {
        uint64_t pos = ls_tix_at(&ag->ix, p);
        ls_sum *x = ls_sums_at(&s->sums, pos);
        if (ls_key_cmp(x->key, r.cut) > 0)
            break;
        if (x->seq <= r.max_seq)
            kill_pos(s, pos, x);
    }
    if (!ag->has_range || ls_key_cmp(r.cut, ag->range_cut) >= 0) {
        ag->has_range = true;
        ag->range_cut = r.cut;
        ag->range_max_seq = r.max_seq;
        ag->range_tseq = f->seq;
    }
    ls_tix_purge_prefix(&ag->ix, &s->sums);
    ls_tix_purge_prefix(&s->all, &s->sums);
}

static void apply_frame(ls_store *s, ls_seg *g, uint64_t off, const ls_frame *f)
{
    switch (f->type) {
    case LS_REC_LOG:
        apply_log(s, g, off, f);
        return;
    case LS_REC_PATCH:
        apply_patch(s, f);
        break;
    case LS_REC_TOMB:
        apply_tomb(s, f);
        break;
    case LS_REC_RANGE:
        apply_range(s, f);
        break;
    default:
        /* A type from a newer version: skipped, still kept on disk. */
        break;
    }
    g->controls++;
}

/* ======================================================================== */
/* Recovery                                                                 */
/* ======================================================================== */

typedef struct scan_ctx {
    ls_store *s;
    ls_seg *g;
} scan_ctx;

static int recover_frame(void *ctx, const ls_frame *f, uint64_t off)
{
    scan_ctx *c = ctx;
    apply_frame(c->s, c->g, off, f);
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void quarantine(ls_store *s, const char *name, const char *why)
{
    char to[LS_SEG_NAME_LEN + 16];
    snprintf(to, sizeof to, "%s.corrupt", name);
    renameat(s->dirfd, name, s->dirfd, to);
    s->corrupt++;
    PL_LOG_ERROR("logstore.segment_quarantined", "dir", s->dir, "segment", name, "reason", why,
                 "renamed_to", to);
}

/* Scans every segment in order; fills segs, summaries, indexes. */
static int recover(ls_store *s, uint64_t *max_no, bool *have_id, char *err, size_t errlen)
{
    DIR *d = fdopendir(dup(s->dirfd));
    if (!d) {
        set_err(err, errlen, "logstore: cannot list %s: %s", s->dir, errno);
        return -errno;
    }
    uint64_t *nos = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    int rc = 0;
    while ((de = readdir(d)) != NULL) {
        uint64_t no;
        if (!ls_seg_name_parse(de->d_name, &no))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            uint64_t *v = realloc(nos, cap * sizeof *v);
            if (!v) {
                rc = -ENOMEM;
                break;
            }
            nos = v;
        }
        nos[n++] = no;
        if (no > *max_no)
            *max_no = no;
    }
    closedir(d);
    if (rc != 0) {
        free(nos);
        return rc;
    }
    if (n > 1)
        qsort(nos, n, sizeof *nos, cmp_u64);
    for (size_t i = 0; i < n && rc == 0; i++) {
        bool last = i + 1 == n;
        char name[LS_SEG_NAME_LEN + 1];
        ls_seg_name(nos[i], name);
        int fd = openat(s->dirfd, name, (last ? O_RDWR : O_RDONLY) | O_CLOEXEC);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) != 0) {
            rc = -errno;
            set_err(err, errlen, "logstore: cannot open segment %s: %s", name, errno);
            if (fd >= 0)
                close(fd);
            break;
        }
        uint64_t size = (uint64_t)st.st_size;
        uint8_t hb[LS_SEG_HDR];
        ls_seg_hdr h;
        const char *bad = NULL;
        if (size < LS_SEG_HDR || ls_pread_full(fd, hb, sizeof hb, 0) != 0 ||
            ls_seg_hdr_decode(hb, sizeof hb, &h) != 0)
            bad = "bad header";
        else if (h.first_seq == 0 || h.first_seq > (UINT64_C(1) << 62))
            bad = "bad first seq";
        else if (h.no != nos[i] || h.no > UINT32_MAX - 1)
            bad = "header names another segment";
        else if (*have_id && memcmp(h.store_id, s->store_id, 16) != 0)
            bad = "segment of another store";
        if (bad) {
            close(fd);
            if (last && size <= LS_SEG_HDR) {
                /* Crashed while creating it: nothing was ever in it. */
                unlinkat(s->dirfd, name, 0);
                PL_LOG_INFO("logstore.segment_removed", "segment", name, "reason",
                            "torn creation");
            } else {
                quarantine(s, name, bad);
            }
            continue;
        }
        if (!*have_id) {
            memcpy(s->store_id, h.store_id, 16);
            *have_id = true;
        }
        ls_seg *g = calloc(1, sizeof *g);
        if (!g || seg_push(s, g) != 0) {
            free(g);
            close(fd);
            rc = -ENOMEM;
            break;
        }
        g->no = h.no;
        g->first_seq = h.first_seq;
        g->last_seq = h.first_seq - 1;
        g->salt = h.salt;
        g->fd = fd;
        g->size = size;
        atomic_init(&g->refs, 1);
        if (h.first_seq - 1 > s->applied_seq)
            s->applied_seq = h.first_seq - 1;
        uint64_t min_seq = s->applied_seq;
        scan_ctx c = {s, g};
        ls_scan_res res;
        rc = ls_seg_scan(fd, size, h.salt, min_seq, recover_frame, &c, &res);
        if (rc != 0) {
            set_err(err, errlen, "logstore: cannot read segment %s: %s", name, rc);
            break;
        }
        s->corrupt += res.bad_regions;
        if (res.frames > 0)
            g->last_seq = res.last_seq;
        if (res.last_seq > s->applied_seq)
            s->applied_seq = res.last_seq;
        if (res.bad_tail) {
            char a[24], b[24];
            snprintf(a, sizeof a, "%" PRIu64, res.end);
            snprintf(b, sizeof b, "%" PRIu64, size - res.end);
            if (last) {
                /* A torn write: what was never acknowledged goes away. */
                if (ftruncate(fd, (off_t)res.end) != 0 || (s->o.fsync && fdatasync(fd) != 0)) {
                    rc = -errno;
                    set_err(err, errlen, "logstore: cannot truncate segment %s: %s", name, rc);
                    break;
                }
                s->truncated += size - res.end;
                g->size = res.end;
                PL_LOG_WARN("logstore.torn_tail_truncated", "segment", name, "at", a, "bytes", b);
            } else {
                s->corrupt++;
                PL_LOG_ERROR("logstore.corrupt_tail", "segment", name, "at", a, "bytes", b);
            }
        }
        if (res.bad_regions > 0) {
            char r[24];
            snprintf(r, sizeof r, "%" PRIu64, res.bad_regions);
            PL_LOG_ERROR("logstore.corrupt_records_skipped", "segment", name, "regions", r);
        }
        s->bytes += g->size;
    }
    free(nos);
    return rc;
}

/* ======================================================================== */
/* Group commit                                                             */
/* ======================================================================== */

static void fail_store(ls_store *s, int rc, const char *what)
{
    int expected = 0;
    if (atomic_compare_exchange_strong(&s->failed, &expected, rc < 0 ? rc : -EIO))
        PL_LOG_ERROR("logstore.failed", "dir", s->dir, "op", what, "error", strerror(-rc),
                     "effect", "appends refused until restart");
    pthread_mutex_lock(&s->wmu);
    pthread_cond_broadcast(&s->wcond);
    pthread_mutex_unlock(&s->wmu);
}

static void random_bytes(void *buf, size_t n)
{
    if (getrandom(buf, n, 0) != (ssize_t)n) {
        /* Not a secret; uniqueness is what matters. */
        uint64_t x = pl_time_mono_ns() ^ ((uint64_t)getpid() << 40) ^ (uint64_t)pl_time_wall_ms();
        uint8_t *p = buf;
        for (size_t i = 0; i < n; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            p[i] = (uint8_t)(x >> 56);
        }
    }
}

/* A new active segment numbered no, starting at first_seq. */
static int seg_start(ls_store *s, uint64_t no, uint64_t first_seq)
{
    ls_seg_hdr h = {.no = no, .first_seq = first_seq, .created_ms = pl_time_wall_ms()};
    memcpy(h.store_id, s->store_id, 16);
    random_bytes(&h.salt, sizeof h.salt);
    int fd;
    int rc = ls_seg_create(s->dirfd, &h, s->o.fsync, &fd);
    if (rc != 0)
        return rc;
    ls_seg *g = calloc(1, sizeof *g);
    if (!g) {
        close(fd);
        return -ENOMEM;
    }
    g->no = no;
    g->first_seq = first_seq;
    g->last_seq = first_seq - 1;
    g->salt = h.salt;
    g->fd = fd;
    g->size = LS_SEG_HDR;
    atomic_init(&g->refs, 1);
    pthread_rwlock_wrlock(&s->lk);
    rc = seg_push(s, g);
    if (rc == 0) {
        s->active = g;
        s->bytes += LS_SEG_HDR;
    }
    pthread_rwlock_unlock(&s->lk);
    if (rc != 0) {
        close(fd);
        free(g);
        return rc;
    }
    gauges_add(s, 0, LS_SEG_HDR);
    return 0;
}

static void commit_group(ls_store *s, uint8_t *buf, size_t len, uint32_t n)
{
    if (atomic_load(&s->failed))
        return;
    ls_seg *g = s->active;
    if (g->size > LS_SEG_HDR && g->size + len > s->o.segment_max_bytes) {
        int rc = seg_start(s, g->no + 1, ls_get64(buf + 16));
        if (rc != 0) {
            fail_store(s, rc, "create segment");
            return;
        }
        g = s->active;
    }
    for (size_t off = 0; off < len; off += LS_FRAME_HDR + ls_get32(buf + off + 8))
        ls_frame_seal(buf + off, g->salt);
    uint64_t t0 = pl_time_mono_ns();
    int rc = 0;
    /* A large group goes out in slices, each handed to writeback at once
     * (sync_file_range), so that the disk writes one slice while the next
     * is copied; fdatasync below is still what makes the group durable. */
    for (size_t off = 0; rc == 0 && off < len; off += WRITE_SLICE) {
        size_t part = len - off < WRITE_SLICE ? len - off : WRITE_SLICE;
        rc = ls_pwrite_full(g->fd, buf + off, part, g->size + off);
        if (rc == 0 && s->o.fsync && len > WRITE_SLICE)
            sync_file_range(g->fd, (off_t)(g->size + off), (off_t)part, SYNC_FILE_RANGE_WRITE);
    }
    uint64_t t1 = pl_time_mono_ns();
    if (rc == 0 && s->o.fsync && fdatasync(g->fd) != 0)
        rc = -errno;
    uint64_t t2 = pl_time_mono_ns();
    if (rc != 0) {
        /* Best effort: take the half-written group back out, so that the
         * file ends at a frame boundary (recovery would truncate it too). */
        if (ftruncate(g->fd, (off_t)g->size) != 0)
            PL_LOG_ERROR("logstore.truncate_failed", "dir", s->dir, "error", strerror(errno));
        fail_store(s, rc, s->o.fsync ? "write/fdatasync" : "write");
        return;
    }

    /* Every record of the group is durable: apply them, in slices so that
     * readers are not held off for a whole large group. */
    pthread_rwlock_wrlock(&s->lk);
    uint64_t live0 = s->live, last = 0;
    uint32_t in_slice = 0;
    for (size_t off = 0; off < len;) {
        ls_frame f = {.type = buf[off + 12], .seq = ls_get64(buf + off + 16),
                      .payload = buf + off + LS_FRAME_HDR, .len = ls_get32(buf + off + 8)};
        apply_frame(s, g, g->size + off, &f);
        off += LS_FRAME_HDR + f.len;
        last = f.seq;
        s->applied_seq = last; /* what retention may judge */
        if (++in_slice == 1024 && off < len) {
            pthread_rwlock_unlock(&s->lk);
            pthread_rwlock_wrlock(&s->lk);
            in_slice = 0;
        }
    }
    g->size += len;
    g->last_seq = last;
    s->bytes += len;
    double dlive = (double)s->live - (double)live0;
    pthread_rwlock_unlock(&s->lk);

    /* The group no longer counts as pending before anyone hears it is
     * durable: a waiter that then appends must find the room it freed. */
    pthread_mutex_lock(&s->pmu);
    s->flight_bytes = 0;
    s->flight_n = 0;
    pthread_mutex_unlock(&s->pmu);
    atomic_store(&s->durable_seq, last);
    pthread_mutex_lock(&s->wmu);
    pthread_cond_broadcast(&s->wcond);
    pthread_mutex_unlock(&s->wmu);

    atomic_fetch_add(&s->commits, 1);
    atomic_store(&s->last_commit_ns, t2 - t0);
    gauges_add(s, dlive, (double)len);
    op_histogram_observe(g_m_commit, (double)(t2 - t0) / 1e9);
    if (s->o.on_commit)
        s->o.on_commit(s->o.on_commit_ctx, last, n, len, t1 - t0, t2 - t1);
}

static void *committer_main(void *arg)
{
    ls_store *s = arg;
    uint64_t interval = (uint64_t)s->o.commit_interval_us * 1000u;
    pthread_mutex_lock(&s->pmu);
    for (;;) {
        while (s->fill_n == 0 && !s->closing)
            pthread_cond_wait(&s->pcond, &s->pmu);
        if (s->fill_n == 0)
            break; /* closing, nothing left */
        uint64_t deadline = s->fill_first_ns + interval;
        while (!s->closing && s->fill_n < s->o.commit_max_records) {
            if (pl_time_mono_ns() >= deadline)
                break;
            struct timespec ts;
            deadline_ts(&ts, deadline);
            pthread_cond_timedwait(&s->pcond, &s->pmu, &ts);
        }
        uint8_t *batch = s->fill;
        size_t len = s->fill_len, cap = s->fill_cap;
        uint32_t n = s->fill_n;
        s->fill = s->spare;
        s->fill_cap = s->spare_cap;
        s->spare = NULL;
        s->spare_cap = 0;
        s->fill_len = 0;
        s->fill_n = 0;
        s->flight_bytes = len;
        s->flight_n = n;
        pthread_mutex_unlock(&s->pmu);

        commit_group(s, batch, len, n);
        op_counter_add(g_m_appended, n);

        pthread_mutex_lock(&s->pmu);
        s->flight_bytes = 0;
        s->flight_n = 0;
        if (cap > (4u << 20) && len < cap / 8) {
            /* After a burst: give the memory back, it grows again on demand. */
            free(batch);
            batch = NULL;
            cap = 0;
        }
        s->spare = batch;
        s->spare_cap = cap;
    }
    pthread_mutex_unlock(&s->pmu);
    return NULL;
}

/* Queues one frame: header + payload written by enc(dst, arg). slack lets
 * control records (deletes, feedback, retention) past a full buffer of logs
 * so that overload cannot block them. */
typedef void (*enc_fn)(uint8_t *dst, const void *arg);

static int enqueue(ls_store *s, uint8_t type, size_t plen, enc_fn enc, const void *arg,
                   size_t slack, uint64_t *seq_out)
{
    size_t total = LS_FRAME_HDR + plen;
    pthread_mutex_lock(&s->pmu);
    if (s->closing) {
        pthread_mutex_unlock(&s->pmu);
        return -ESHUTDOWN;
    }
    if (atomic_load(&s->failed)) {
        pthread_mutex_unlock(&s->pmu);
        return -EIO;
    }
    if (s->fill_len + s->flight_bytes + total > s->o.max_pending_bytes + slack) {
        pthread_mutex_unlock(&s->pmu);
        return -EAGAIN;
    }
    if (s->fill_len + total > s->fill_cap) {
        size_t cap = s->fill_cap ? s->fill_cap * 2 : (64u << 10);
        while (cap < s->fill_len + total)
            cap *= 2;
        uint8_t *b = realloc(s->fill, cap);
        if (!b) {
            pthread_mutex_unlock(&s->pmu);
            return -ENOMEM;
        }
        s->fill = b;
        s->fill_cap = cap;
    }
    uint64_t seq = s->next_seq++;
    uint8_t *d = s->fill + s->fill_len;
    ls_frame_header(d, type, seq, (uint32_t)plen);
    enc(d + LS_FRAME_HDR, arg);
    s->fill_len += total;
    if (++s->fill_n == 1)
        s->fill_first_ns = pl_time_mono_ns();
    if (s->fill_n == 1 || s->fill_n >= s->o.commit_max_records)
        pthread_cond_signal(&s->pcond);
    pthread_mutex_unlock(&s->pmu);
    if (seq_out)
        *seq_out = seq;
    return 0;
}

typedef struct log_arg {
    const ls_record *rec;
    const ls_log_prep *prep;
} log_arg;

static void enc_log(uint8_t *dst, const void *arg)
{
    const log_arg *a = arg;
    ls_log_encode(dst, a->rec, a->prep);
}

int ls_append(ls_store *s, ls_record *rec, uint64_t *seq)
{
    if (!s || !rec)
        return -EINVAL;
    ls_log_prep p;
    int rc = ls_log_prepare(rec, rec->created_ms || rec->id[0] ? 0 : pl_time_wall_ms(), &p);
    if (rc == -E2BIG || (rc == 0 && LS_FRAME_HDR + p.payload_len > s->o.max_record_bytes)) {
        count_drop(s, g_m_drop_big);
        return -E2BIG;
    }
    if (rc != 0)
        return rc;
    log_arg a = {rec, &p};
    rc = enqueue(s, LS_REC_LOG, p.payload_len, enc_log, &a, 0, seq);
    if (rc == 0)
        atomic_fetch_add(&s->appended, 1);
    else if (rc == -EAGAIN)
        count_drop(s, g_m_drop_bp);
    else if (rc == -EIO)
        count_drop(s, g_m_drop_io);
    return rc;
}

int ls_wait(ls_store *s, uint64_t seq, int timeout_ms)
{
    if (!s)
        return -EINVAL;
    if (atomic_load(&s->durable_seq) >= seq && seq > 0)
        return 0;
    pthread_mutex_lock(&s->pmu);
    bool issued = seq > 0 && seq < s->next_seq;
    pthread_mutex_unlock(&s->pmu);
    if (!issued)
        return -EINVAL;
    uint64_t deadline = pl_time_mono_ns() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000000u;
    int rc = 0;
    pthread_mutex_lock(&s->wmu);
    while (atomic_load(&s->durable_seq) < seq) {
        if (atomic_load(&s->failed)) {
            rc = -EIO;
            break;
        }
        if (timeout_ms == 0) {
            rc = -ETIMEDOUT;
            break;
        }
        if (timeout_ms < 0) {
            pthread_cond_wait(&s->wcond, &s->wmu);
            continue;
        }
        struct timespec ts;
        deadline_ts(&ts, deadline);
        if (pthread_cond_timedwait(&s->wcond, &s->wmu, &ts) == ETIMEDOUT &&
            atomic_load(&s->durable_seq) < seq) {
            rc = atomic_load(&s->failed) ? -EIO : -ETIMEDOUT;
            break;
        }
    }
    pthread_mutex_unlock(&s->wmu);
    return rc;
}

/* Appends a control record and retries while the buffer is full, waiting
 * for what this caller queued before (*last) to drain. */
static int enqueue_ctl(ls_store *s, uint8_t type, size_t plen, enc_fn enc, const void *arg,
                       uint64_t *last)
{
    for (int tries = 0;; tries++) {
        int rc = enqueue(s, type, plen, enc, arg, s->o.max_pending_bytes / 4, last);
        if (rc != -EAGAIN || tries >= 1000)
            return rc;
        if (*last && (rc = ls_wait(s, *last, -1)) != 0)
            return rc;
        if (!*last) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
    }
}

/* ======================================================================== */
/* Filters and reading records back                                         */
/* ======================================================================== */

void ls_filter_init(ls_filter *f)
{
    memset(f, 0, sizeof *f);
    f->success = -1;
    f->cached = -1;
    f->feedback = -2;
    f->min_duration_ms = -1;
    f->max_duration_ms = -1;
}

/* A filter resolved against the atoms (lk held). */
typedef struct fprep {
    bool none;            /* can match nothing */
    const ls_tix *ix;
    int64_t account, gateway; /* atoms, -1 any (only checked on the global index) */
    int64_t provider, model;
    int status, success, cached, feedback;
    double dmin, dmax;
    uint32_t n_meta, mk[LS_META_MAX], mv[LS_META_MAX];
    ls_key lo, hi;        /* inclusive key range */
} fprep;

static int64_t atom_or_none(const ls_store *s, const char *v, bool *none)
{
    if (!v)
        return -1;
    int64_t a = ls_atoms_find(&s->atoms, v, strlen(v));
    if (a < 0)
        *none = true;
    return a;
}

static int filter_check(const ls_filter *f)
{
    if (!f)
        return 0;
    if (f->n_meta > LS_META_MAX || f->success < -1 || f->success > 1 || f->cached < -1 ||
        f->cached > 1 || f->feedback < -2 || f->feedback > 1 || isnan(f->min_duration_ms) ||
        isnan(f->max_duration_ms))
        return -EINVAL;
    for (size_t i = 0; i < f->n_meta; i++)
        if (!f->meta[i].key || !f->meta[i].value)
            return -EINVAL;
    return 0;
}

static void filter_prep(const ls_store *s, const ls_filter *f, fprep *p)
{
    ls_filter any;
    if (!f) {
        ls_filter_init(&any);
        f = &any;
    }
    memset(p, 0, sizeof *p);
    p->ix = &s->all;
    p->account = atom_or_none(s, f->account, &p->none);
    p->gateway = atom_or_none(s, f->gateway, &p->none);
    if (!p->none && p->account >= 0 && p->gateway >= 0) {
        int64_t agi = ag_lookup(s, (uint32_t)p->account, (uint32_t)p->gateway);
        if (agi < 0)
            p->none = true;
        else
            p->ix = &s->ags[agi]->ix;
        p->account = p->gateway = -1;
    }
    p->provider = atom_or_none(s, f->provider, &p->none);
    p->model = atom_or_none(s, f->model, &p->none);
    p->status = f->status;
    p->success = f->success;
    p->cached = f->cached;
    p->feedback = f->feedback;
    p->dmin = f->min_duration_ms;
    p->dmax = f->max_duration_ms;
    p->n_meta = (uint32_t)f->n_meta;
    for (size_t i = 0; i < f->n_meta; i++) {
        p->mk[i] = (uint32_t)atom_or_none(s, f->meta[i].key, &p->none);
        p->mv[i] = (uint32_t)atom_or_none(s, f->meta[i].value, &p->none);
    }
    p->lo = (ls_key){0, 0};
    p->hi = (ls_key){UINT64_MAX, UINT64_MAX};
    if (f->from_ms > 0) {
        if (f->from_ms > LS_MS_MAX)
            p->none = true;
        else
            p->lo.hi = (uint64_t)f->from_ms << 16;
    }
    if (f->to_ms > 0 && f->to_ms <= LS_MS_MAX)
        p->hi = (ls_key){((uint64_t)f->to_ms << 16) | 0xFFFF, UINT64_MAX};
    if (ls_key_cmp(p->lo, p->hi) > 0)
        p->none = true;
}

static bool matches(const ls_store *s, const fprep *p, uint64_t pos, const ls_sum *x)
{
    if (x->flags & LS_S_DEAD)
        return false;
    if (p->account >= 0 || p->gateway >= 0) {
        const ls_ag *ag = s->ags[x->ag];
        if ((p->account >= 0 && ag->account != p->account) ||
            (p->gateway >= 0 && ag->gateway != p->gateway))
            return false;
    }
    if ((p->provider >= 0 && x->provider != p->provider) ||
        (p->model >= 0 && x->model != p->model) || (p->status && x->status != p->status))
        return false;
    if (p->success >= 0 && !(x->flags & LS_S_SUCCESS) != !p->success)
        return false;
    if (p->cached >= 0 && !(x->flags & LS_S_CACHED) != !p->cached)
        return false;
    if (p->feedback > -2 && x->feedback != p->feedback)
        return false;
    if ((p->dmin >= 0 && !(x->duration_ms >= p->dmin)) ||
        (p->dmax >= 0 && !(x->duration_ms <= p->dmax)))
        return false;
    if (p->n_meta) {
        uint32_t n;
        const uint32_t *kv = ls_sums_meta_get(&s->sums, pos, x, &n);
        for (uint32_t i = 0; i < p->n_meta; i++) {
            bool hit = false;
            for (uint32_t j = 0; j < n && !hit; j++)
                hit = kv[2 * j] == p->mk[i] && kv[2 * j + 1] == p->mv[i];
            if (!hit)
                return false;
        }
    }
    return true;
}

/* A record found under the lock, to be read after it is released. */
typedef struct found {
    ls_sum sum;
    ls_seg *seg; /* one reference */
} found;

static void found_take(ls_store *s, const ls_sum *x, found *out)
{
    out->sum = *x;
    out->seg = seg_find(s, x->seg_no);
    if (out->seg)
        seg_ref(out->seg);
}

/* Reads a record's frame back and checks it against its summary. head_only:
 * only the head (no bodies), verified by its own CRC. buf and cap are a
 * reusable buffer. Fills v (pointing into *buf). */
static int read_record(const found *fd, bool head_only, uint8_t **buf, size_t *cap,
                       ls_logview *v)
{
    if (!fd->seg)
        return -EIO;
    size_t len = fd->sum.len;
    size_t want = head_only && len > LS_FRAME_HDR + LIST_HEAD_READ ? LS_FRAME_HDR + LIST_HEAD_READ
                                                                   : len;
    for (int round = 0; round < 2; round++) {
        if (want > *cap) {
            uint8_t *b = realloc(*buf, want);
            if (!b)
                return -ENOMEM;
            *buf = b;
            *cap = want;
        }
        int rc = ls_pread_full(fd->seg->fd, *buf, want, fd->sum.off);
        if (rc != 0)
            return rc;
        const uint8_t *b = *buf;
        if (ls_get32(b) != LS_FRAME_MAGIC || ls_get32(b + 8) != len - LS_FRAME_HDR ||
            b[12] != LS_REC_LOG || ls_get64(b + 16) != fd->sum.seq)
            return -EIO;
        if (!head_only) {
            ls_frame f;
            if (ls_frame_check(b, len, fd->seg->salt, fd->sum.seq - 1, &f) != LS_FRAME_OK ||
                ls_log_decode(f.payload, f.len, false, v) != 0)
                return -EIO;
            break;
        }
        size_t need = ls_log_head_need(b + LS_FRAME_HDR, want - LS_FRAME_HDR);
        if (need == 0 || LS_FRAME_HDR + need > len)
            return -EIO;
        if (LS_FRAME_HDR + need > want) {
            want = LS_FRAME_HDR + need;
            continue;
        }
        if (ls_log_decode(b + LS_FRAME_HDR, need, true, v) != 0)
            return -EIO;
        break;
    }
    if (ls_key_cmp(v->key, fd->sum.key) != 0)
        return -EIO;
    return 0;
}

static void log_bad_read(const found *fd, int rc)
{
    char id[LS_ID_LEN + 1], seg[24];
    ls_ulid_format(fd->sum.key, id);
    snprintf(seg, sizeof seg, "%" PRIu32, fd->sum.seg_no);
    PL_LOG_ERROR("logstore.read_failed", "id", id, "segment", seg, "error", strerror(-rc));
}

static json_t *record_json(const found *fd, bool bodies, uint8_t **buf, size_t *cap, int *rc)
{
    ls_logview v;
    *rc = read_record(fd, !bodies, buf, cap, &v);
    if (*rc != 0) {
        log_bad_read(fd, *rc);
        return NULL;
    }
    json_t *j = ls_log_json(&v, fd->sum.feedback, fd->sum.flags & LS_S_SCORE, fd->sum.score);
    if (!j)
        *rc = -ENOMEM;
    return j;
}

/* Finds a live record by id (lk held). */
static bool find_id(ls_store *s, const char *account, const char *gateway, ls_key k, found *out)
{
    ls_filter f;
    ls_filter_init(&f);
    f.account = account;
    f.gateway = gateway;
    fprep p;
    filter_prep(s, &f, &p);
    if (p.none)
        return false;
    for (ls_tpos t = ls_tix_seek(p.ix, &s->sums, k, false); !ls_tix_end(p.ix, t);
         t = ls_tix_next(p.ix, t)) {
        uint64_t pos = ls_tix_at(p.ix, t);
        const ls_sum *x = ls_sums_at(&s->sums, pos);
        if (ls_key_cmp(x->key, k) != 0)
            break;
        if (matches(s, &p, pos, x)) {
            found_take(s, x, out);
            return true;
        }
    }
    return false;
}

static int parse_id(const char *id, ls_key *k)
{
    return id ? ls_ulid_parse(id, strnlen(id, LS_ID_LEN + 1), k) : -EINVAL;
}

int ls_get(ls_store *s, const char *account, const char *gateway, const char *id, json_t **out)
{
    ls_key k;
    if (!s || !out || parse_id(id, &k) != 0)
        return -EINVAL;
    *out = NULL;
    found fd;
    pthread_rwlock_rdlock(&s->lk);
    bool ok = find_id(s, account, gateway, k, &fd);
    pthread_rwlock_unlock(&s->lk);
    if (!ok)
        return -ENOENT;
    uint8_t *buf = NULL;
    size_t cap = 0;
    int rc;
    *out = record_json(&fd, true, &buf, &cap, &rc);
    free(buf);
    seg_unref(fd.seg);
    return rc;
}

static int tpos_cmp(ls_tpos a, ls_tpos b)
{
    if (a.b != b.b)
        return a.b < b.b ? -1 : 1;
    return a.i < b.i ? -1 : a.i > b.i;
}

int ls_list(ls_store *s, const ls_filter *f, const char *cursor, size_t limit, bool ascending,
            json_t **items, char next_cursor[LS_CURSOR_LEN], size_t *total_matching)
{
    if (!s || !items || !next_cursor || filter_check(f) != 0)
        return -EINVAL;
    *items = NULL;
    next_cursor[0] = '\0';
    if (total_matching)
        *total_matching = 0;
    ls_key ck = {0, 0};
    bool has_cursor = cursor && cursor[0];
    if (has_cursor && parse_id(cursor, &ck) != 0)
        return -EINVAL;
    if (limit == 0)
        limit = 50;
    if (limit > LS_LIST_MAX)
        limit = LS_LIST_MAX;
    found *got = malloc(limit * sizeof *got);
    json_t *arr = json_array();
    if (!got || !arr) {
        free(got);
        json_decref(arr);
        return -ENOMEM;
    }
    size_t n = 0, matched = 0;
    bool more = false;

    pthread_rwlock_rdlock(&s->lk);
    fprep p;
    filter_prep(s, f, &p);
    const ls_tix *ix = p.ix;
    if (!p.none && !ascending) {
        ls_tpos t = ls_tix_seek(ix, &s->sums, p.hi, true);
        if (has_cursor) {
            ls_tpos c = ls_tix_seek(ix, &s->sums, ck, false);
            if (tpos_cmp(c, t) < 0)
                t = c;
        }
        while (ls_tix_prev(ix, &t)) {
            uint64_t pos = ls_tix_at(ix, t);
            const ls_sum *x = ls_sums_at(&s->sums, pos);
            if (ls_key_cmp(x->key, p.lo) < 0)
                break;
            if (!matches(s, &p, pos, x))
                continue;
            matched++;
            if (n < limit) {
                found_take(s, x, &got[n++]);
            } else {
                more = true;
                if (!total_matching)
                    break;
            }
        }
    } else if (!p.none) {
        ls_tpos t = ls_tix_seek(ix, &s->sums, p.lo, false);
        if (has_cursor) {
            ls_tpos c = ls_tix_seek(ix, &s->sums, ck, true);
            if (tpos_cmp(c, t) > 0)
                t = c;
        }
        for (; !ls_tix_end(ix, t); t = ls_tix_next(ix, t)) {
            uint64_t pos = ls_tix_at(ix, t);
            const ls_sum *x = ls_sums_at(&s->sums, pos);
            if (ls_key_cmp(x->key, p.hi) > 0)
                break;
            if (!matches(s, &p, pos, x))
                continue;
            matched++;
            if (n < limit) {
                found_take(s, x, &got[n++]);
            } else {
                more = true;
                if (!total_matching)
                    break;
            }
        }
    }
    pthread_rwlock_unlock(&s->lk);

    uint8_t *buf = NULL;
    size_t cap = 0;
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        int r;
        json_t *j = rc == 0 ? record_json(&got[i], false, &buf, &cap, &r) : NULL;
        if (j)
            json_array_append_new(arr, j);
        else if (rc == 0 && r == -ENOMEM)
            rc = -ENOMEM;
        /* A record failing its check is left out (and logged): never served. */
        seg_unref(got[i].seg);
    }
    if (rc == 0 && more && n > 0)
        ls_ulid_format(got[n - 1].sum.key, next_cursor);
    free(buf);
    free(got);
    if (rc != 0) {
        json_decref(arr);
        next_cursor[0] = '\0';
        return rc;
    }
    if (total_matching)
        *total_matching = matched;
    *items = arr;
    return 0;
}

/* Walks every match of f oldest first, EXPORT_BATCH at a time under the
 * lock, calling visit on each batch outside it. */
typedef int (*batch_fn)(ls_store *s, found *got, size_t n, void *ctx);

static int walk_matches(ls_store *s, const ls_filter *f, batch_fn visit, void *ctx)
{
    found got[EXPORT_BATCH];
    ls_key last_key = {0, 0};
    uint64_t last_seq = 0;
    bool started = false;
    for (;;) {
        size_t n = 0;
        pthread_rwlock_rdlock(&s->lk);
        fprep p;
        filter_prep(s, f, &p);
        if (!p.none) {
            const ls_tix *ix = p.ix;
            ls_tpos t = ls_tix_seek(ix, &s->sums, started ? last_key : p.lo, false);
            for (; !ls_tix_end(ix, t) && n < EXPORT_BATCH; t = ls_tix_next(ix, t)) {
                uint64_t pos = ls_tix_at(ix, t);
                const ls_sum *x = ls_sums_at(&s->sums, pos);
                int c = ls_key_cmp(x->key, last_key);
                if (started && (c < 0 || (c == 0 && x->seq <= last_seq)))
                    continue;
                if (ls_key_cmp(x->key, p.hi) > 0)
                    break;
                if (matches(s, &p, pos, x))
                    found_take(s, x, &got[n++]);
            }
        }
        pthread_rwlock_unlock(&s->lk);
        if (n == 0)
            return 0;
        last_key = got[n - 1].sum.key;
        last_seq = got[n - 1].sum.seq;
        started = true;
        int rc = visit(s, got, n, ctx);
        for (size_t i = 0; i < n; i++)
            seg_unref(got[i].seg);
        if (rc != 0)
            return rc;
        if (n < EXPORT_BATCH)
            return 0;
    }
}

typedef struct export_ctx {
    int (*fn)(const char *line, size_t len, void *ctx);
    void *ctx;
    uint8_t *buf;
    size_t cap;
    char *line;
    size_t line_cap;
} export_ctx;

static int export_batch(ls_store *s, found *got, size_t n, void *arg)
{
    (void)s;
    export_ctx *e = arg;
    for (size_t i = 0; i < n; i++) {
        int rc;
        json_t *j = record_json(&got[i], true, &e->buf, &e->cap, &rc);
        if (!j) {
            if (rc == -ENOMEM)
                return rc;
            continue;
        }
        size_t need = json_dumpb(j, NULL, 0, JSON_COMPACT);
        if (need + 1 > e->line_cap) {
            char *l = realloc(e->line, need + 1);
            if (!l) {
                json_decref(j);
                return -ENOMEM;
            }
            e->line = l;
            e->line_cap = need + 1;
        }
        size_t len = json_dumpb(j, e->line, need, JSON_COMPACT);
        json_decref(j);
        if (len != need)
            return -ENOMEM;
        e->line[len] = '\n';
        rc = e->fn(e->line, len + 1, e->ctx);
        if (rc != 0)
            return rc;
    }
    return 0;
}

int ls_export(ls_store *s, const ls_filter *f, int (*fn)(const char *line, size_t len, void *ctx),
              void *ctx)
{
    if (!s || !fn || filter_check(f) != 0)
        return -EINVAL;
    export_ctx e = {.fn = fn, .ctx = ctx};
    int rc = walk_matches(s, f, export_batch, &e);
    free(e.buf);
    free(e.line);
    return rc;
}

/* ======================================================================== */
/* Feedback and deletes                                                     */
/* ======================================================================== */

static void enc_patch(uint8_t *dst, const void *arg)
{
    ls_patch_encode(dst, arg);
}

int ls_feedback(ls_store *s, const char *account, const char *gateway, const char *id,
                int feedback, const double *score)
{
    ls_key k;
    if (!s || parse_id(id, &k) != 0 || feedback < -1 || feedback > 1 ||
        (score && !isfinite(*score)))
        return -EINVAL;
    found fd;
    pthread_rwlock_rdlock(&s->lk);
    bool ok = find_id(s, account, gateway, k, &fd);
    pthread_rwlock_unlock(&s->lk);
    if (!ok)
        return -ENOENT;
    seg_unref(fd.seg);
    ls_patch p = {.target = fd.sum.seq, .key = k, .feedback = (int8_t)feedback,
                  .has_score = score != NULL, .score = score ? *score : 0};
    uint64_t seq = 0;
    int rc = enqueue_ctl(s, LS_REC_PATCH, LS_PATCH_LEN, enc_patch, &p, &seq);
    return rc != 0 ? rc : ls_wait(s, seq, -1);
}

typedef struct seqvec {
    uint64_t *v;
    size_t n, cap;
} seqvec;

static int seqvec_push(seqvec *sv, uint64_t x)
{
    if (sv->n == sv->cap) {
        size_t cap = sv->cap ? sv->cap * 2 : 1024;
        uint64_t *v = realloc(sv->v, cap * sizeof *v);
        if (!v)
            return -ENOMEM;
        sv->v = v;
        sv->cap = cap;
    }
    sv->v[sv->n++] = x;
    return 0;
}

typedef struct tomb_arg {
    const uint64_t *seqs;
    uint32_t n;
} tomb_arg;

static void enc_tomb(uint8_t *dst, const void *arg)
{
    const tomb_arg *t = arg;
    ls_tomb_encode(dst, t->seqs, t->n);
}

/* Writes tombstones for seqs and waits until they are durable. */
static int write_tombs(ls_store *s, const uint64_t *seqs, size_t n)
{
    uint64_t last = 0;
    for (size_t i = 0; i < n; i += LS_TOMB_MAX) {
        tomb_arg t = {seqs + i, (uint32_t)(n - i < LS_TOMB_MAX ? n - i : LS_TOMB_MAX)};
        int rc = enqueue_ctl(s, LS_REC_TOMB, ls_tomb_len(t.n), enc_tomb, &t, &last);
        if (rc != 0)
            return rc;
    }
    return last ? ls_wait(s, last, -1) : 0;
}

static int collect_seqs(ls_store *s, found *got, size_t n, void *ctx)
{
    (void)s;
    seqvec *sv = ctx;
    for (size_t i = 0; i < n; i++)
        if (seqvec_push(sv, got[i].sum.seq) != 0)
            return -ENOMEM;
    return 0;
}

int ls_delete(ls_store *s, const ls_filter *f, uint64_t *n_deleted)
{
    if (n_deleted)
        *n_deleted = 0;
    if (!s || filter_check(f) != 0)
        return -EINVAL;
    seqvec sv = {0};
    int rc = walk_matches(s, f, collect_seqs, &sv);
    if (rc == 0)
        rc = write_tombs(s, sv.v, sv.n);
    if (rc == 0 && n_deleted)
        *n_deleted = sv.n;
    free(sv.v);
    return rc;
}

/* ======================================================================== */
/* Retention and reclamation                                                */
/* ======================================================================== */

void ls_set_retention(ls_store *s, const char *account, const char *gateway, uint64_t max_logs,
                      int64_t max_age_s)
{
    if (!s || !account || !gateway)
        return;
    pthread_rwlock_wrlock(&s->lk);
    int64_t agi = ag_get(s, cstr(account), cstr(gateway), true);
    if (agi >= 0) {
        s->ags[agi]->max_logs = max_logs;
        s->ags[agi]->max_age_s = max_age_s > 0 ? max_age_s : 0;
    }
    pthread_rwlock_unlock(&s->lk);
    pthread_mutex_lock(&s->mmu);
    pthread_cond_signal(&s->mcond);
    pthread_mutex_unlock(&s->mmu);
}

static void enc_range(uint8_t *dst, const void *arg)
{
    ls_range_encode(dst, arg);
}

typedef struct rangevec {
    ls_range *v;
    size_t n, cap;
} rangevec;

static int rangevec_push(rangevec *rv, const ls_range *r)
{
    if (rv->n == rv->cap) {
        size_t cap = rv->cap ? rv->cap * 2 : 16;
        ls_range *v = realloc(rv->v, cap * sizeof *v);
        if (!v)
            return -ENOMEM;
        rv->v = v;
        rv->cap = cap;
    }
    rv->v[rv->n++] = *r;
    return 0;
}

/* Writes range tombstones and waits until they are durable. Their strings
 * point to atoms, which live as long as the store. */
static int write_ranges(ls_store *s, const rangevec *rv)
{
    uint64_t last = 0;
    for (size_t i = 0; i < rv->n; i++) {
        int rc = enqueue_ctl(s, LS_REC_RANGE, ls_range_len(&rv->v[i]), enc_range, &rv->v[i],
                             &last);
        if (rc != 0)
            return rc;
    }
    return last ? ls_wait(s, last, -1) : 0;
}

static ls_str atom_str(const ls_store *s, uint32_t a)
{
    return (ls_str){s->atoms.str[a], s->atoms.len[a]};
}

/* Decides, per account+gateway with retention, the cut (lk held). */
static int retention_plan(ls_store *s, int64_t now_ms, rangevec *rv)
{
    for (uint32_t i = 0; i < s->nag; i++) {
        ls_ag *ag = s->ags[i];
        if (!ag->max_logs && !ag->max_age_s)
            continue;
        bool have = false;
        ls_key cut = {0, 0};
        int64_t t = now_ms - ag->max_age_s * 1000;
        if (ag->max_age_s && t > 0) {
            cut = (ls_key){((uint64_t)(t > LS_MS_MAX ? LS_MS_MAX : t) << 16) - 1, UINT64_MAX};
            have = true;
        }
        if (ag->max_logs && ag->live > ag->max_logs) {
            uint64_t kill = ag->live - ag->max_logs, seen = 0;
            for (ls_tpos p = ls_tix_first(&ag->ix); !ls_tix_end(&ag->ix, p);
                 p = ls_tix_next(&ag->ix, p)) {
                const ls_sum *x = ls_sums_at(&s->sums, ls_tix_at(&ag->ix, p));
                if ((x->flags & LS_S_DEAD) || ++seen < kill)
                    continue;
                if (!have || ls_key_cmp(x->key, cut) > 0)
                    cut = x->key;
                have = true;
                break;
            }
        }
        if (!have)
            continue;
        if (ag->has_range && ls_key_cmp(ag->range_cut, cut) > 0)
            cut = ag->range_cut;
        /* Worth a record only if it kills something now. */
        bool kills = false;
        for (ls_tpos p = ls_tix_first(&ag->ix); !ls_tix_end(&ag->ix, p);
             p = ls_tix_next(&ag->ix, p)) {
            const ls_sum *x = ls_sums_at(&s->sums, ls_tix_at(&ag->ix, p));
            if (ls_key_cmp(x->key, cut) > 0)
                break;
            if (!(x->flags & LS_S_DEAD)) {
                kills = true;
                break;
            }
        }
        if (!kills)
            continue;
        ls_range r = {atom_str(s, ag->account), atom_str(s, ag->gateway), cut, s->applied_seq};
        if (rangevec_push(rv, &r) != 0)
            return -ENOMEM;
    }
    return 0;
}

/* Control records of a segment about to be unlinked, as read back. */
typedef struct ctl_scan {
    seqvec patches, tombs;
    rangevec ranges;
    seqvec range_seqs;
    uint8_t *range_bytes; /* copies of the ranges' strings */
    size_t rb_len, rb_cap;
    int err;
} ctl_scan;

static int ctl_collect(void *arg, const ls_frame *f, uint64_t off)
{
    (void)off;
    ctl_scan *c = arg;
    if (f->type == LS_REC_PATCH) {
        ls_patch p;
        if (ls_patch_decode(f->payload, f->len, &p) == 0 && seqvec_push(&c->patches, p.target))
            return c->err = -ENOMEM;
    } else if (f->type == LS_REC_TOMB) {
        int n = ls_tomb_decode(f->payload, f->len);
        for (int i = 0; i < n; i++)
            if (seqvec_push(&c->tombs, ls_get64(f->payload + 4 + 8 * (size_t)i)) != 0)
                return c->err = -ENOMEM;
    } else if (f->type == LS_REC_RANGE) {
        ls_range r;
        if (ls_range_decode(f->payload, f->len, &r) != 0)
            return 0;
        /* Keep the strings as offsets into range_bytes (it may move). */
        size_t need = (size_t)r.account.n + r.gateway.n;
        if (c->rb_len + need > c->rb_cap) {
            size_t cap = c->rb_cap ? c->rb_cap * 2 : 4096;
            while (cap < c->rb_len + need)
                cap *= 2;
            uint8_t *b = realloc(c->range_bytes, cap);
            if (!b)
                return c->err = -ENOMEM;
            c->range_bytes = b;
            c->rb_cap = cap;
        }
        memcpy(c->range_bytes + c->rb_len, r.account.p, r.account.n);
        r.account.p = (const char *)(uintptr_t)c->rb_len;
        c->rb_len += r.account.n;
        memcpy(c->range_bytes + c->rb_len, r.gateway.p, r.gateway.n);
        r.gateway.p = (const char *)(uintptr_t)c->rb_len;
        c->rb_len += r.gateway.n;
        if (rangevec_push(&c->ranges, &r) != 0 || seqvec_push(&c->range_seqs, f->seq) != 0)
            return c->err = -ENOMEM;
    }
    return 0;
}

static void ctl_scan_free(ctl_scan *c)
{
    free(c->patches.v);
    free(c->tombs.v);
    free(c->ranges.v);
    free(c->range_seqs.v);
    free(c->range_bytes);
}

/*
 * Before segment g goes, its control records that still decide something
 * are written again (durably) at the end of the log:
 *   - a tombstone entry whose target lies in an older segment still there;
 *   - a patch whose target is alive in an older segment (with the current
 *     feedback and score);
 *   - the latest range tombstone of an account+gateway, if an older segment
 *     is still there.
 * Returns 0, or an error (the segment is then kept): also when g has a bad
 * region, since what it held can no longer be known.
 */
static int carry_forward(ls_store *s, ls_seg *g)
{
    ctl_scan c = {0};
    ls_scan_res res;
    int rc = ls_seg_scan(g->fd, g->size, g->salt, g->first_seq - 1, ctl_collect, &c, &res);
    if (rc == 0 && (res.bad_regions || res.bad_tail))
        rc = -EIO;
    if (rc != 0) {
        ctl_scan_free(&c);
        return rc;
    }
    seqvec tombs = {0};
    ls_patch *patches = NULL;
    size_t npatch = 0;
    rangevec ranges = {0};
    if (c.patches.n > 1)
        qsort(c.patches.v, c.patches.n, sizeof(uint64_t), cmp_u64);
    if (c.patches.n)
        patches = malloc(c.patches.n * sizeof *patches);
    if (c.patches.n && !patches)
        rc = -ENOMEM;

    pthread_rwlock_rdlock(&s->lk);
    bool older = s->nseg > 0 && s->segs[0]->no < g->no;
    for (size_t i = 0; rc == 0 && i < c.tombs.n; i++) {
        ls_seg *t = seg_for_seq(s, c.tombs.v[i]);
        if (t && t != g)
            rc = seqvec_push(&tombs, c.tombs.v[i]);
    }
    for (size_t i = 0; rc == 0 && i < c.patches.n; i++) {
        if (i > 0 && c.patches.v[i] == c.patches.v[i - 1])
            continue;
        int64_t pos = ls_sums_find_seq(&s->sums, c.patches.v[i]);
        const ls_sum *x = pos >= 0 ? ls_sums_at(&s->sums, (uint64_t)pos) : NULL;
        if (!x || (x->flags & LS_S_DEAD) || x->seg_no == g->no)
            continue;
        patches[npatch++] = (ls_patch){.target = x->seq, .key = x->key, .feedback = x->feedback,
                                       .has_score = (x->flags & LS_S_SCORE) != 0,
                                       .score = x->score};
    }
    for (size_t i = 0; rc == 0 && older && i < c.ranges.n; i++) {
        ls_range r = c.ranges.v[i];
        r.account.p = (const char *)c.range_bytes + (uintptr_t)r.account.p;
        r.gateway.p = (const char *)c.range_bytes + (uintptr_t)r.gateway.p;
        int64_t agi = ag_get(s, r.account, r.gateway, false);
        if (agi < 0 || !s->ags[agi]->has_range || s->ags[agi]->range_tseq != c.range_seqs.v[i])
            continue;
        ls_ag *ag = s->ags[agi];
        r.account = atom_str(s, ag->account);
        r.gateway = atom_str(s, ag->gateway);
        rc = rangevec_push(&ranges, &r);
    }
    pthread_rwlock_unlock(&s->lk);

    uint64_t last = 0;
    for (size_t i = 0; rc == 0 && i < npatch; i++)
        rc = enqueue_ctl(s, LS_REC_PATCH, LS_PATCH_LEN, enc_patch, &patches[i], &last);
    if (rc == 0 && last)
        rc = ls_wait(s, last, -1);
    if (rc == 0)
        rc = write_tombs(s, tombs.v, tombs.n);
    if (rc == 0)
        rc = write_ranges(s, &ranges);
    free(patches);
    free(tombs.v);
    free(ranges.v);
    ctl_scan_free(&c);
    return rc;
}

/* Unlinks every closed segment without live records. */
static int reclaim_segments(ls_store *s)
{
    int first_err = 0;
    for (;;) {
        ls_seg *g = NULL;
        pthread_rwlock_rdlock(&s->lk);
        for (size_t i = 0; i + 1 < s->nseg; i++)
            if (s->segs[i]->live == 0) {
                g = s->segs[i];
                seg_ref(g);
                break;
            }
        pthread_rwlock_unlock(&s->lk);
        if (!g)
            return first_err;
        int rc = g->controls ? carry_forward(s, g) : 0;
        if (rc != 0) {
            char name[LS_SEG_NAME_LEN + 1];
            ls_seg_name(g->no, name);
            PL_LOG_WARN("logstore.segment_kept", "segment", name, "error", strerror(-rc));
            seg_unref(g);
            /* Not retried in this pass: later segments still get theirs. */
            if (!first_err)
                first_err = rc;
            return first_err;
        }
        char name[LS_SEG_NAME_LEN + 1];
        ls_seg_name(g->no, name);
        pthread_rwlock_wrlock(&s->lk);
        for (size_t i = 0; i < s->nseg; i++)
            if (s->segs[i] == g) {
                memmove(&s->segs[i], &s->segs[i + 1], (s->nseg - i - 1) * sizeof *s->segs);
                s->nseg--;
                break;
            }
        s->bytes -= g->size;
        unlinkat(s->dirfd, name, 0);
        pthread_rwlock_unlock(&s->lk);
        gauges_add(s, 0, -(double)g->size);
        seg_unref(g); /* the list's */
        seg_unref(g); /* ours */
    }
}

/* Frees summary chunks whose records are all dead, after dropping their
 * entries from every index. */
static void free_dead_chunks(ls_store *s)
{
    pthread_rwlock_wrlock(&s->lk);
    ls_sums *ss = &s->sums;
    for (size_t i = 0; i < ss->n; i++) {
        ls_chunk *c = ss->v[i].c;
        if (!c || c->n != LS_CHUNK || c->n_dead != c->n)
            continue;
        ls_tix_purge_range(&s->all, ss, c->kmin, c->kmax);
        for (uint32_t a = 0; a < s->nag; a++)
            ls_tix_purge_range(&s->ags[a]->ix, ss, c->kmin, c->kmax);
        free(c->meta);
        free(c);
        ss->v[i].c = NULL;
    }
    size_t k = 0;
    while (k + 1 < ss->n && !ss->v[k].c)
        k++;
    if (k > 0) {
        memmove(ss->v, ss->v + k, (ss->n - k) * sizeof *ss->v);
        ss->n -= k;
        ss->base += k;
    }
    pthread_rwlock_unlock(&s->lk);
}

int ls_maintain(ls_store *s)
{
    if (!s)
        return -EINVAL;
    pthread_mutex_lock(&s->maint_lock);
    rangevec rv = {0};
    pthread_rwlock_rdlock(&s->lk);
    int rc = retention_plan(s, pl_time_wall_ms(), &rv);
    pthread_rwlock_unlock(&s->lk);
    if (rc == 0)
        rc = write_ranges(s, &rv);
    free(rv.v);
    int rc2 = reclaim_segments(s);
    if (rc == 0)
        rc = rc2;
    free_dead_chunks(s);
    pthread_mutex_unlock(&s->maint_lock);
    return rc;
}

static void *maint_main(void *arg)
{
    ls_store *s = arg;
    pthread_mutex_lock(&s->mmu);
    while (!s->mstop) {
        struct timespec ts;
        deadline_ts(&ts, pl_time_mono_ns() + (uint64_t)s->o.maintenance_interval_ms * 1000000u);
        pthread_cond_timedwait(&s->mcond, &s->mmu, &ts);
        if (s->mstop)
            break;
        pthread_mutex_unlock(&s->mmu);
        if (!atomic_load(&s->failed))
            ls_maintain(s);
        pthread_mutex_lock(&s->mmu);
    }
    pthread_mutex_unlock(&s->mmu);
    return NULL;
}

/* ======================================================================== */
/* Lifecycle                                                                */
/* ======================================================================== */

void ls_opts_init(ls_opts *o, const char *dir)
{
    memset(o, 0, sizeof *o);
    o->dir = dir;
    o->fsync = true;
}

static void store_free(ls_store *s)
{
    for (size_t i = 0; i < s->nseg; i++)
        seg_unref(s->segs[i]);
    free(s->segs);
    for (uint32_t i = 0; i < s->nag; i++) {
        ls_tix_free(&s->ags[i]->ix);
        free(s->ags[i]);
    }
    free(s->ags);
    free(s->agslot);
    ls_tix_free(&s->all);
    ls_sums_free(&s->sums);
    ls_atoms_free(&s->atoms);
    free(s->fill);
    free(s->spare);
    if (s->dirfd >= 0)
        close(s->dirfd);
    pthread_rwlock_destroy(&s->lk);
    pthread_mutex_destroy(&s->pmu);
    pthread_cond_destroy(&s->pcond);
    pthread_mutex_destroy(&s->wmu);
    pthread_cond_destroy(&s->wcond);
    pthread_mutex_destroy(&s->mmu);
    pthread_cond_destroy(&s->mcond);
    pthread_mutex_destroy(&s->maint_lock);
    free(s->dir);
    free(s);
}

static void stop_threads(ls_store *s)
{
    if (s->maint_started) {
        pthread_mutex_lock(&s->mmu);
        s->mstop = true;
        pthread_cond_signal(&s->mcond);
        pthread_mutex_unlock(&s->mmu);
        pthread_join(s->maint, NULL);
        s->maint_started = false;
    }
    if (s->committer_started) {
        pthread_mutex_lock(&s->pmu);
        s->closing = true;
        pthread_cond_signal(&s->pcond);
        pthread_mutex_unlock(&s->pmu);
        pthread_join(s->committer, NULL);
        s->committer_started = false;
    }
}

int ls_open(const ls_opts *o, ls_store **out, char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    if (!o || !o->dir || !o->dir[0] || !out) {
        set_err(err, errlen, "logstore: %s%s", "no directory given", 0);
        return -EINVAL;
    }
    *out = NULL;
    pthread_once(&g_metrics_once, metrics_init);
    ls_store *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->o = *o;
    s->dirfd = -1;
    if (!s->o.commit_interval_us)
        s->o.commit_interval_us = DEF_INTERVAL_US;
    if (!s->o.commit_max_records)
        s->o.commit_max_records = DEF_MAX_RECORDS;
    if (!s->o.max_pending_bytes)
        s->o.max_pending_bytes = DEF_MAX_PENDING;
    if (!s->o.segment_max_bytes)
        s->o.segment_max_bytes = DEF_SEGMENT;
    if (s->o.segment_max_bytes > MAX_SEGMENT)
        s->o.segment_max_bytes = MAX_SEGMENT;
    if (s->o.segment_max_bytes < MIN_SEGMENT)
        s->o.segment_max_bytes = MIN_SEGMENT;
    if (!s->o.max_record_bytes)
        s->o.max_record_bytes = DEF_MAX_RECORD;
    if (s->o.max_record_bytes > LS_RECORD_HARD_MAX)
        s->o.max_record_bytes = LS_RECORD_HARD_MAX;
    if (s->o.max_record_bytes > s->o.max_pending_bytes)
        s->o.max_record_bytes = s->o.max_pending_bytes;
    if (!s->o.maintenance_interval_ms)
        s->o.maintenance_interval_ms = DEF_MAINT_MS;
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    /* Readers must not starve the committer (visibility waits on it). */
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&s->lk, &ra);
    pthread_rwlockattr_destroy(&ra);
    pthread_mutex_init(&s->pmu, NULL);
    cond_init_mono(&s->pcond);
    pthread_mutex_init(&s->wmu, NULL);
    cond_init_mono(&s->wcond);
    pthread_mutex_init(&s->mmu, NULL);
    cond_init_mono(&s->mcond);
    pthread_mutex_init(&s->maint_lock, NULL);
    atomic_init(&s->durable_seq, 0);
    atomic_init(&s->failed, 0);

    s->dir = strdup(o->dir);
    int rc = s->dir ? pl_file_mkdirs(o->dir) : -ENOMEM;
    if (rc != 0) {
        set_err(err, errlen, "logstore: cannot create %s: %s", o->dir, rc);
        store_free(s);
        return rc;
    }
    s->dirfd = open(o->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->dirfd < 0) {
        rc = -errno;
        set_err(err, errlen, "logstore: cannot open %s: %s", o->dir, rc);
        store_free(s);
        return rc;
    }
    uint64_t max_no = 0;
    bool have_id = false;
    uint64_t t0 = pl_time_mono_ns();
    rc = recover(s, &max_no, &have_id, err, errlen);
    if (rc == 0) {
        if (!have_id)
            random_bytes(s->store_id, sizeof s->store_id);
        s->next_seq = s->applied_seq + 1;
        atomic_store(&s->durable_seq, s->applied_seq);
        gauges_add(s, (double)s->live, (double)s->bytes);
        rc = seg_start(s, max_no + 1, s->next_seq);
        if (rc != 0)
            set_err(err, errlen, "logstore: cannot create a segment in %s: %s", s->dir, rc);
    }
    if (rc == 0 && pthread_create(&s->committer, NULL, committer_main, s) != 0)
        rc = -EAGAIN;
    s->committer_started = rc == 0;
    if (rc == 0 && pthread_create(&s->maint, NULL, maint_main, s) != 0)
        rc = -EAGAIN;
    s->maint_started = rc == 0;
    if (rc != 0) {
        if (err && errlen && !err[0])
            set_err(err, errlen, "logstore: cannot open %s: %s", s->dir, rc);
        stop_threads(s);
        gauges_add(s, -s->g_records, -s->g_bytes);
        store_free(s);
        return rc;
    }
    char recs[24], segs[24], ms[24], bad[24], cut[24];
    snprintf(recs, sizeof recs, "%" PRIu64, s->live);
    snprintf(segs, sizeof segs, "%zu", s->nseg);
    snprintf(ms, sizeof ms, "%.1f", (double)(pl_time_mono_ns() - t0) / 1e6);
    snprintf(bad, sizeof bad, "%" PRIu64, s->corrupt);
    snprintf(cut, sizeof cut, "%" PRIu64, s->truncated);
    PL_LOG_INFO("logstore.opened", "dir", s->dir, "records", recs, "segments", segs,
                "corrupt_skipped", bad, "truncated_bytes", cut, "ms", ms);
    *out = s;
    return 0;
}

void ls_close(ls_store *s)
{
    if (!s)
        return;
    stop_threads(s);
    gauges_add(s, -s->g_records, -s->g_bytes);
    store_free(s);
}

void ls_stats_get(ls_store *s, ls_stats *st)
{
    memset(st, 0, sizeof *st);
    if (!s)
        return;
    pthread_rwlock_rdlock(&s->lk);
    st->records_live = s->live;
    st->bytes_on_disk = s->bytes;
    st->segments = (uint32_t)s->nseg;
    uint64_t mem = s->sums.cap * sizeof(ls_cref) + (uint64_t)s->all.nb * sizeof(ls_blk);
    for (size_t i = 0; i < s->sums.n; i++)
        if (s->sums.v[i].c)
            mem += sizeof(ls_chunk) + (uint64_t)s->sums.v[i].c->meta_cap * sizeof(uint32_t);
    for (uint32_t i = 0; i < s->nag; i++)
        mem += sizeof(ls_ag) + (uint64_t)s->ags[i]->ix.nb * sizeof(ls_blk);
    st->memory_bytes = mem;
    pthread_rwlock_unlock(&s->lk);
    pthread_mutex_lock(&s->pmu);
    st->pending_records = (uint64_t)s->fill_n + s->flight_n;
    st->pending_bytes = (uint64_t)s->fill_len + s->flight_bytes;
    pthread_mutex_unlock(&s->pmu);
    st->commits = atomic_load(&s->commits);
    st->appended = atomic_load(&s->appended);
    st->dropped = atomic_load(&s->dropped);
    st->corrupt_skipped = s->corrupt;
    st->truncated_bytes = s->truncated;
    st->durable_seq = atomic_load(&s->durable_seq);
    st->last_commit_ns = atomic_load(&s->last_commit_ns);
    st->failed = atomic_load(&s->failed) != 0;
}
