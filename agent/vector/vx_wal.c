/*
 * vx_wal: write-ahead log and snapshots of a vector index (see vx_wal.h for
 * the model, the on-disk format and the recovery rules).
 */
#include "vector/vx_wal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "platform/pl_err.h"
#include "logstore/ls_internal.h"

#define SEG_MAGIC "OPVXWAL1"
#define SEG_HDR 40u
#define SNAP_MAGIC "OPVXSNAP"
#define SNAP_HDR 48u
#define FRAME_MAGIC 0x52585756u
#define FRAME_HDR 32u
#define VERSION 1u

typedef struct seg_ent {
    uint64_t no;
    uint64_t first_id;
    uint64_t size;
} seg_ent;

typedef struct snap_ent {
    uint64_t id;
    uint64_t size;
} snap_ent;

struct vx_wal {
    vx_wal_opts o;
    char *dir;
    int dirfd;
    int lockfd;

    pthread_mutex_t mu;
    pthread_cond_t cv_work;     /* committer: something pending or stop */
    pthread_cond_t cv_done;     /* waiters: durable_id moved or failed */
    uint8_t *pend;              /* frames, CRC not yet sealed */
    size_t pend_len, pend_cap;
    uint8_t *spare;             /* the other buffer (double buffering) */
    size_t spare_cap;
    size_t inflight;            /* bytes of the group being written */
    uint64_t next_id;
    uint64_t durable_id;
    int64_t durable_ms;
    uint64_t commits;
    bool failed, stop, snap_busy;

    /* Segments and snapshots (under mu; the active one is the last). */
    seg_ent *segs;
    size_t nsegs, segs_cap;
    snap_ent *snaps;            /* ascending by id */
    size_t nsnaps, snaps_cap;

    /* Committer-owned. */
    int seg_fd;
    uint32_t salt;
    pthread_t thr;
    bool thr_started;
};

struct vx_wal_snap {
    vx_wal *w;
    uint64_t upto;
    int64_t ms;
    int fd;
    uint64_t len;
    uint32_t crc;
    bool io_error;
    char tmp[48];
};

struct vx_wal_snap_reader {
    int fd;
    uint64_t off, size;
    uint32_t crc, want;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

void vx_wal_opts_init(vx_wal_opts *o, const char *dir)
{
    memset(o, 0, sizeof *o);
    o->dir = dir;
    o->fsync = true;
}

void vx_wal_id_text(uint64_t id, char out[VX_WAL_ID_TEXT])
{
    snprintf(out, VX_WAL_ID_TEXT, "%" PRIu64, id);
}

static int write_full(int fd, const void *buf, size_t len, off_t off)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t n = pwrite(fd, p, len, off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EIO;
        p += n;
        len -= (size_t)n;
        off += n;
    }
    return 0;
}

static int read_full(int fd, void *buf, size_t len, off_t off)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t n = pread(fd, p, len, off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EIO;
        p += n;
        len -= (size_t)n;
        off += n;
    }
    return 0;
}

static int sync_fd(const vx_wal *w, int fd)
{
    if (!w->o.fsync)
        return 0;
    return fdatasync(fd) == 0 ? 0 : -errno;
}

static int sync_dir(const vx_wal *w)
{
    if (!w->o.fsync)
        return 0;
    return fsync(w->dirfd) == 0 ? 0 : -errno;
}

static void seg_name(char out[32], uint64_t no)
{
    snprintf(out, 32, "%016" PRIx64 ".wal", no);
}

static void snap_name(char out[32], uint64_t id)
{
    snprintf(out, 32, "%016" PRIx64 ".snap", id);
}

/* Parses "<16 hex>suffix" exactly. */
static bool parse_name(const char *name, const char *suffix, uint64_t *v)
{
    size_t sl = strlen(suffix);
    if (strlen(name) != 16 + sl || strcmp(name + 16, suffix) != 0)
        return false;
    uint64_t x = 0;
    for (int i = 0; i < 16; i++) {
        char c = name[i];
        int d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else
            return false;
        x = x << 4 | (uint64_t)d;
    }
    *v = x;
    return true;
}

static int push_seg(vx_wal *w, seg_ent e)
{
    if (w->nsegs == w->segs_cap) {
        size_t cap = w->segs_cap ? w->segs_cap * 2 : 16;
        seg_ent *n = realloc(w->segs, cap * sizeof *n);
        if (!n)
            return -ENOMEM;
        w->segs = n;
        w->segs_cap = cap;
    }
    w->segs[w->nsegs++] = e;
    return 0;
}

static int push_snap(vx_wal *w, snap_ent e)
{
    if (w->nsnaps == w->snaps_cap) {
        size_t cap = w->snaps_cap ? w->snaps_cap * 2 : 8;
        snap_ent *n = realloc(w->snaps, cap * sizeof *n);
        if (!n)
            return -ENOMEM;
        w->snaps = n;
        w->snaps_cap = cap;
    }
    w->snaps[w->nsnaps++] = e;
    return 0;
}

static int cmp_seg(const void *a, const void *b)
{
    const seg_ent *x = a, *y = b;
    return x->no < y->no ? -1 : x->no > y->no;
}

static int cmp_snap(const void *a, const void *b)
{
    const snap_ent *x = a, *y = b;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* ======================================================================== */
/* Frames and headers                                                       */
/* ======================================================================== */

static void seg_header(uint8_t h[SEG_HDR], uint64_t no, uint64_t first_id, uint32_t salt)
{
    memcpy(h, SEG_MAGIC, 8);
    ls_put32(h + 8, VERSION);
    ls_put32(h + 12, SEG_HDR);
    ls_put64(h + 16, no);
    ls_put64(h + 24, first_id);
    ls_put32(h + 32, salt);
    ls_put32(h + 36, ls_crc32c(0, h, 36));
}

static bool seg_header_ok(const uint8_t *h, uint64_t no, uint64_t *first_id, uint32_t *salt)
{
    if (memcmp(h, SEG_MAGIC, 8) != 0 || ls_get32(h + 8) != VERSION ||
        ls_get32(h + 12) != SEG_HDR || ls_get32(h + 36) != ls_crc32c(0, h, 36) ||
        ls_get64(h + 16) != no)
        return false;
    *first_id = ls_get64(h + 24);
    *salt = ls_get32(h + 32);
    return true;
}

/* Checks the frame at p (avail bytes readable). Returns its total length, or
 * 0 if it is not a valid frame with an id in [lo, hi]. */
static size_t frame_check(const uint8_t *p, size_t avail, uint32_t salt, size_t max_len,
                          uint64_t lo, uint64_t hi)
{
    if (avail < FRAME_HDR || ls_get32(p) != FRAME_MAGIC)
        return 0;
    uint32_t len = ls_get32(p + 8);
    if (len > max_len || (size_t)len > avail - FRAME_HDR)
        return 0;
    if (p[12] == 0 || p[13] != 0 || ls_get16(p + 14) != 0)
        return 0;
    uint64_t id = ls_get64(p + 16);
    if (id == 0 || id < lo || id > hi)
        return 0;
    if (ls_crc32c(salt, p + 8, FRAME_HDR - 8 + (size_t)len) != ls_get32(p + 4))
        return 0;
    return FRAME_HDR + (size_t)len;
}

/* ======================================================================== */
/* Recovery                                                                 */
/* ======================================================================== */

typedef struct rec_state {
    vx_wal *w;
    const vx_wal_replay *cb;
    vx_wal_replay_stats *st;
    uint64_t snap_id;       /* records <= this are not delivered */
    uint64_t expect;        /* next id the log must hold */
    int64_t last_ms;
    char *err;
    size_t errlen;
} rec_state;

static void quarantine_from(vx_wal *w, size_t from, vx_wal_replay_stats *st)
{
    for (size_t i = from; i < w->nsegs; i++) {
        char a[32], b[48];
        seg_name(a, w->segs[i].no);
        snprintf(b, sizeof b, "%s.corrupt", a);
        if (renameat(w->dirfd, a, w->dirfd, b) == 0)
            st->segments_quarantined++;
    }
    w->nsegs = from;
}

/* Damage in segment i at offset off that is not a torn tail: refuse, or
 * (truncate_corrupt) cut the log there. Returns 0 when cut, else -EBADMSG. */
static int corrupt_at(rec_state *rs, size_t i, uint64_t off, uint64_t size, const char *what)
{
    vx_wal *w = rs->w;
    char name[32];
    seg_name(name, w->segs[i].no);
    if (!w->o.truncate_corrupt) {
        pl_errf(rs->err, rs->errlen,
               "%s/%s: %s at offset %" PRIu64 " (expected id %" PRIu64
               "); refusing to open (truncate_corrupt cuts the log there)",
               w->dir, name, what, off, rs->expect);
        return -EBADMSG;
    }
    if (off < SEG_HDR) {
        /* The header itself: the whole segment goes. */
        quarantine_from(w, i, rs->st);
        rs->st->corrupt_truncated_bytes += size;
        return 0;
    }
    int fd = openat(w->dirfd, name, O_RDWR | O_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)off) != 0 || sync_fd(w, fd) != 0) {
        int e = -errno;
        if (fd >= 0)
            close(fd);
        pl_errf(rs->err, rs->errlen, "%s/%s: cannot truncate: %s", w->dir, name, strerror(-e));
        return e ? e : -EIO;
    }
    close(fd);
    rs->st->corrupt_truncated_bytes += size - off;
    w->segs[i].size = off;
    quarantine_from(w, i + 1, rs->st);
    return sync_dir(w);
}

/* Scans segment i. Returns 0 (go on), 1 (log cut here: stop), or < 0. */
static int scan_segment(rec_state *rs, size_t i)
{
    vx_wal *w = rs->w;
    bool last = i + 1 == w->nsegs;
    char name[32];
    seg_name(name, w->segs[i].no);
    int fd = openat(w->dirfd, name, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        pl_errf(rs->err, rs->errlen, "%s/%s: %s", w->dir, name, strerror(errno));
        return -errno;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    uint64_t size = (uint64_t)sb.st_size;
    uint8_t *map = NULL;
    if (size > 0) {
        map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            int e = -errno;
            close(fd);
            pl_errf(rs->err, rs->errlen, "%s/%s: mmap: %s", w->dir, name, strerror(-e));
            return e;
        }
    }
    int rc = 0;
    uint64_t first_id;
    uint32_t salt;
    if (size < SEG_HDR || !seg_header_ok(map, w->segs[i].no, &first_id, &salt)) {
        if (last && size <= SEG_HDR) {
            /* Torn creation: nothing was ever acknowledged in it. */
            rs->st->truncated_bytes += size;
            unlinkat(w->dirfd, name, 0);
            w->nsegs--;
            rc = sync_dir(w);
            rc = rc ? rc : 1;
        } else {
            rc = corrupt_at(rs, i, 0, size, "bad segment header");
            rc = rc ? rc : 1;
        }
        goto out;
    }
    if (first_id != rs->expect) {
        if ((i == 0 && rs->expect == 0) ||
            (first_id > rs->expect && first_id <= rs->snap_id + 1)) {
            /* The start, or a gap wholly covered by the snapshot. */
            rs->expect = first_id;
        } else {
            rc = corrupt_at(rs, i, 0, size, "segment's first id does not follow the previous");
            rc = rc ? rc : 1;
            goto out;
        }
    }
    w->segs[i].first_id = first_id;
    w->salt = salt; /* the last segment's salt is the active one's */
    /* The hard limit, not this open's max_record_bytes: an earlier open may
     * have allowed bigger records. */
    size_t max = VX_WAL_RECORD_HARD_MAX;
    uint64_t off = SEG_HDR;
    while (off < size) {
        size_t n =
            frame_check(map + off, (size_t)(size - off), salt, max, rs->expect, rs->expect);
        if (n == 0) {
            /* Is there a valid frame further on? Its id can only be between
             * expect and expect + the frames that fit before it, which also
             * keeps hostile bytes from making this search expensive. */
            bool later = false;
            for (uint64_t q = off + 1; q + FRAME_HDR <= size && !later; q++)
                if (map[q] == (uint8_t)FRAME_MAGIC &&
                    frame_check(map + q, (size_t)(size - q), salt, max, rs->expect,
                                rs->expect + (q - off) / FRAME_HDR + 1))
                    later = true;
            if (last && !later) {
                if (ftruncate(fd, (off_t)off) != 0 || sync_fd(w, fd) != 0) {
                    rc = -errno;
                    pl_errf(rs->err, rs->errlen, "%s/%s: truncate: %s", w->dir, name,
                           strerror(errno));
                    goto out;
                }
                rs->st->truncated_bytes += size - off;
                size = off;
                break;
            }
            rc = corrupt_at(rs, i, off, size,
                            later ? "damaged record followed by valid ones"
                                  : "damaged record in a closed segment");
            if (rc == 0) {
                size = off;
                rc = 1;
            }
            goto out;
        }
        const uint8_t *p = map + off;
        uint64_t id = ls_get64(p + 16);
        rs->last_ms = (int64_t)ls_get64(p + 24);
        if (id > rs->snap_id) {
            rs->st->records++;
            rs->st->bytes += n - FRAME_HDR;
            if (rs->cb && rs->cb->on_record) {
                vx_wal_rec r = {id, rs->last_ms, p[12], p + FRAME_HDR, n - FRAME_HDR};
                int cr = rs->cb->on_record(rs->cb->ctx, &r);
                if (cr != 0) {
                    pl_errf(rs->err, rs->errlen, "on_record(%" PRIu64 ") returned %d", id, cr);
                    rc = cr < 0 ? cr : -ECANCELED;
                    goto out;
                }
            }
        }
        rs->expect = id + 1;
        off += n;
    }
    w->segs[i].size = size;
out:
    if (map)
        munmap(map, (size_t)sb.st_size);
    close(fd);
    return rc;
}

/* Verifies snapshot file `id` whole. Returns 0 with its fd open, or -1. */
static int snap_verify(vx_wal *w, uint64_t id, int *fd_out, uint64_t *blob_len, int64_t *ms)
{
    char name[32];
    snap_name(name, id);
    int fd = openat(w->dirfd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct stat sb;
    uint8_t h[SNAP_HDR];
    if (fstat(fd, &sb) != 0 || (uint64_t)sb.st_size < SNAP_HDR ||
        read_full(fd, h, SNAP_HDR, 0) != 0 || memcmp(h, SNAP_MAGIC, 8) != 0 ||
        ls_get32(h + 8) != VERSION || ls_get32(h + 12) != SNAP_HDR ||
        ls_get32(h + 44) != ls_crc32c(0, h, 44) || ls_get64(h + 16) != id ||
        ls_get64(h + 32) != (uint64_t)sb.st_size - SNAP_HDR) {
        close(fd);
        return -1;
    }
    uint64_t len = ls_get64(h + 32);
    uint32_t crc = 0;
    uint8_t buf[1 << 16];
    for (uint64_t off = 0; off < len;) {
        size_t n = len - off < sizeof buf ? (size_t)(len - off) : sizeof buf;
        if (read_full(fd, buf, n, (off_t)(SNAP_HDR + off)) != 0) {
            close(fd);
            return -1;
        }
        crc = ls_crc32c(crc, buf, n);
        off += n;
    }
    if (crc != ls_get32(h + 40)) {
        close(fd);
        return -1;
    }
    *fd_out = fd;
    *blob_len = len;
    *ms = (int64_t)ls_get64(h + 24);
    return 0;
}

ssize_t vx_wal_snap_read(vx_wal_snap_reader *r, void *buf, size_t cap)
{
    if (!r || (!buf && cap))
        return -EINVAL;
    uint64_t left = r->size - r->off;
    size_t n = cap < left ? cap : (size_t)left;
    if (n == 0)
        return 0;
    int rc = read_full(r->fd, buf, n, (off_t)(SNAP_HDR + r->off));
    if (rc)
        return rc;
    r->crc = ls_crc32c(r->crc, buf, n);
    r->off += n;
    if (r->off == r->size && r->crc != r->want)
        return -EBADMSG;
    return (ssize_t)n;
}

uint64_t vx_wal_snap_size(const vx_wal_snap_reader *r)
{
    return r ? r->size : 0;
}

/* Lists the directory: segments, snapshots; removes unfinished temp files. */
static int list_dir(vx_wal *w)
{
    int fd = dup(w->dirfd);
    if (fd < 0)
        return -errno;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return -errno;
    }
    rewinddir(d);
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d)) != NULL) {
        uint64_t v;
        size_t l = strlen(e->d_name);
        if (parse_name(e->d_name, ".wal", &v))
            rc = push_seg(w, (seg_ent){v, 0, 0});
        else if (parse_name(e->d_name, ".snap", &v))
            rc = push_snap(w, (snap_ent){v, 0});
        else if (l > 4 && strcmp(e->d_name + l - 4, ".tmp") == 0)
            unlinkat(w->dirfd, e->d_name, 0);
    }
    closedir(d);
    if (rc)
        return rc;
    if (w->nsegs > 1)
        qsort(w->segs, w->nsegs, sizeof *w->segs, cmp_seg);
    if (w->nsnaps > 1)
        qsort(w->snaps, w->nsnaps, sizeof *w->snaps, cmp_snap);
    return 0;
}

/* The first id of the log as it stands on disk (0 = no readable header). */
static uint64_t log_first_id(vx_wal *w)
{
    if (w->nsegs == 0)
        return 0;
    char name[32];
    seg_name(name, w->segs[0].no);
    int fd = openat(w->dirfd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    uint8_t h[SEG_HDR];
    uint64_t first = 0;
    uint32_t salt;
    if (read_full(fd, h, SEG_HDR, 0) != 0 || !seg_header_ok(h, w->segs[0].no, &first, &salt))
        first = 0;
    close(fd);
    return first;
}

static int new_segment(vx_wal *w, uint64_t first_id)
{
    uint64_t no = w->nsegs ? w->segs[w->nsegs - 1].no + 1 : 1;
    uint32_t salt;
    if (getrandom(&salt, sizeof salt, 0) != (ssize_t)sizeof salt)
        salt = (uint32_t)now_ms() ^ (uint32_t)getpid();
    char name[32];
    seg_name(name, no);
    int fd = openat(w->dirfd, name, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    uint8_t h[SEG_HDR];
    seg_header(h, no, first_id, salt);
    int rc = write_full(fd, h, SEG_HDR, 0);
    if (!rc)
        rc = sync_fd(w, fd);
    if (!rc)
        rc = sync_dir(w);
    if (!rc) {
        pthread_mutex_lock(&w->mu);
        rc = push_seg(w, (seg_ent){no, first_id, SEG_HDR});
        pthread_mutex_unlock(&w->mu);
    }
    if (rc) {
        close(fd);
        unlinkat(w->dirfd, name, 0);
        return rc;
    }
    if (w->seg_fd >= 0)
        close(w->seg_fd);
    w->seg_fd = fd;
    w->salt = salt;
    return 0;
}

/* ======================================================================== */
/* Committer                                                                */
/* ======================================================================== */

static void *committer(void *arg)
{
    vx_wal *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (w->pend_len == 0 && !w->stop)
            pthread_cond_wait(&w->cv_work, &w->mu);
        if (w->pend_len == 0)
            break;
        uint8_t *g = w->pend;
        size_t glen = w->pend_len;
        size_t gcap = w->pend_cap;
        w->pend = w->spare;
        w->pend_cap = w->spare_cap;
        w->pend_len = 0;
        w->spare = NULL;
        w->spare_cap = 0;
        w->inflight = glen;
        bool failed = w->failed;
        seg_ent *act = &w->segs[w->nsegs - 1];
        bool roll = act->size > SEG_HDR && act->size + glen > w->o.segment_max_bytes;
        pthread_mutex_unlock(&w->mu);

        uint64_t first = ls_get64(g + 16), last = 0;
        int64_t last_ms = 0;
        int rc = failed ? -EIO : 0;
        if (!rc && roll)
            rc = new_segment(w, first);
        /* Seal: CRC with the active segment's salt. */
        for (size_t off = 0; !rc && off < glen;) {
            uint32_t len = ls_get32(g + off + 8);
            ls_put32(g + off + 4, ls_crc32c(w->salt, g + off + 8, FRAME_HDR - 8 + len));
            last = ls_get64(g + off + 16);
            last_ms = (int64_t)ls_get64(g + off + 24);
            off += FRAME_HDR + len;
        }
        pthread_mutex_lock(&w->mu);
        uint64_t at = w->segs[w->nsegs - 1].size;
        uint64_t seg_no = w->segs[w->nsegs - 1].no;
        pthread_mutex_unlock(&w->mu);
        if (!rc)
            rc = write_full(w->seg_fd, g, glen, (off_t)at);
        if (!rc)
            rc = sync_fd(w, w->seg_fd);
        if (rc && !failed) {
            /* Fail closed; cut what may be half there (best effort). */
            if (ftruncate(w->seg_fd, (off_t)at) != 0) {
                /* nothing more can be done: open will truncate the tail */
            }
        }
        pthread_mutex_lock(&w->mu);
        w->inflight = 0;
        if (rc) {
            w->failed = true;
        } else {
            w->segs[w->nsegs - 1].size = at + glen;
            w->durable_id = last;
            w->durable_ms = last_ms;
            w->commits++;
        }
        /* Keep the bigger buffer as the spare. */
        if (w->spare == NULL) {
            w->spare = g;
            w->spare_cap = gcap;
        } else {
            free(g);
        }
        pthread_cond_broadcast(&w->cv_done);
        if (!rc && w->o.on_commit) {
            pthread_mutex_unlock(&w->mu);
            w->o.on_commit(w->o.on_commit_ctx, seg_no, at, glen, last);
            pthread_mutex_lock(&w->mu);
        }
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* ======================================================================== */
/* Open / close                                                             */
/* ======================================================================== */

static void wal_free(vx_wal *w)
{
    if (w->seg_fd >= 0)
        close(w->seg_fd);
    if (w->lockfd >= 0)
        close(w->lockfd);
    if (w->dirfd >= 0)
        close(w->dirfd);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv_work);
    pthread_cond_destroy(&w->cv_done);
    free(w->pend);
    free(w->spare);
    free(w->segs);
    free(w->snaps);
    free(w->dir);
    free(w);
}

int vx_wal_open(const vx_wal_opts *o, const vx_wal_replay *cb, vx_wal **out,
                vx_wal_replay_stats *stats, char *err, size_t errlen)
{
    double t0 = mono_ms();
    vx_wal_replay_stats dummy;
    vx_wal_replay_stats *st = stats ? stats : &dummy;
    memset(st, 0, sizeof *st);
    pl_errf(err, errlen, "%s", "");
    if (!o || !o->dir || !*o->dir || !out) {
        pl_errf(err, errlen, "no directory");
        return -EINVAL;
    }
    *out = NULL;
    vx_wal *w = calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    w->o = *o;
    w->dirfd = w->lockfd = w->seg_fd = -1;
    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv_work, &ca);
    pthread_cond_init(&w->cv_done, &ca);
    pthread_condattr_destroy(&ca);
    if (!w->o.segment_max_bytes)
        w->o.segment_max_bytes = 64u << 20;
    if (!w->o.max_record_bytes || w->o.max_record_bytes > VX_WAL_RECORD_HARD_MAX)
        w->o.max_record_bytes = w->o.max_record_bytes ? VX_WAL_RECORD_HARD_MAX : 16u << 20;
    if (!w->o.max_pending_bytes)
        w->o.max_pending_bytes = 64u << 20;
    if (!w->o.keep_snapshots)
        w->o.keep_snapshots = 2;
    w->dir = strdup(o->dir);
    int rc = 0;
    if (!w->dir) {
        rc = -ENOMEM;
        goto fail;
    }
    if (mkdir(o->dir, 0755) != 0 && errno != EEXIST) {
        rc = -errno;
        pl_errf(err, errlen, "mkdir %s: %s", o->dir, strerror(errno));
        goto fail;
    }
    w->dirfd = open(o->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (w->dirfd < 0) {
        rc = -errno;
        pl_errf(err, errlen, "open %s: %s", o->dir, strerror(errno));
        goto fail;
    }
    w->lockfd = openat(w->dirfd, "LOCK", O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (w->lockfd < 0 || flock(w->lockfd, LOCK_EX | LOCK_NB) != 0) {
        rc = errno == EWOULDBLOCK ? -EBUSY : -errno;
        pl_errf(err, errlen, "%s: %s", o->dir,
               rc == -EBUSY ? "open in another WAL" : strerror(errno));
        goto fail;
    }
    rc = list_dir(w);
    if (rc) {
        pl_errf(err, errlen, "listing %s: %s", o->dir, strerror(-rc));
        goto fail;
    }

    /* 1. The newest usable snapshot. */
    rec_state rs = {.w = w, .cb = cb, .st = st, .err = err, .errlen = errlen};
    uint64_t log_first = log_first_id(w);
    int64_t snap_ms = 0;
    for (size_t k = w->nsnaps; k-- > 0;) {
        uint64_t id = w->snaps[k].id;
        int fd;
        uint64_t blen;
        int64_t ms;
        if (log_first > id + 1 || snap_verify(w, id, &fd, &blen, &ms) != 0) {
            st->snapshots_skipped++;
            continue;
        }
        w->snaps[k].size = SNAP_HDR + blen;
        st->snapshot_id = id;
        st->snapshot_bytes = blen;
        rs.snap_id = id;
        snap_ms = ms;
        int cr = 0;
        if (cb && cb->on_snapshot) {
            uint8_t h[SNAP_HDR];
            vx_wal_snap_reader r = {.fd = fd, .size = blen};
            if (read_full(fd, h, SNAP_HDR, 0) != 0) {
                cr = -EIO;
            } else {
                r.want = ls_get32(h + 40);
                cr = cb->on_snapshot(cb->ctx, &r, id);
            }
        }
        close(fd);
        if (cr != 0) {
            pl_errf(err, errlen, "on_snapshot(%" PRIu64 ") returned %d", id, cr);
            rc = cr < 0 ? cr : -ECANCELED;
            goto fail;
        }
        break;
    }
    /* Snapshots newer than the one loaded (damaged) stay on disk but are not
     * current; drop them from the list so retention never counts them. */
    {
        size_t keep = 0;
        for (size_t k = 0; k < w->nsnaps; k++) {
            if (w->snaps[k].id > rs.snap_id)
                continue;
            if (!w->snaps[k].size) {
                char name[32];
                struct stat sb;
                snap_name(name, w->snaps[k].id);
                if (fstatat(w->dirfd, name, &sb, 0) == 0)
                    w->snaps[k].size = (uint64_t)sb.st_size;
            }
            w->snaps[keep++] = w->snaps[k];
        }
        w->nsnaps = keep;
    }
    if (rs.snap_id == 0 && log_first > 1) {
        rc = -EBADMSG;
        pl_errf(err, errlen,
               "%s: the log starts at id %" PRIu64 " and no valid snapshot covers what is before",
               o->dir, log_first);
        goto fail;
    }

    /* 2-4. The log. */
    rs.expect = log_first;
    for (size_t i = 0; i < w->nsegs;) {
        size_t before = w->nsegs;
        int r = scan_segment(&rs, i);
        if (r < 0) {
            rc = r;
            goto fail;
        }
        if (r == 1 || w->nsegs < before)
            break;
        i++;
    }
    uint64_t last_log = rs.expect ? rs.expect - 1 : 0;
    uint64_t last = last_log > rs.snap_id ? last_log : rs.snap_id;
    w->next_id = last + 1;
    w->durable_id = last;
    w->durable_ms = last_log > rs.snap_id ? rs.last_ms : snap_ms;
    st->last_id = last;

    /* The active segment: the last one if it continues at next_id, else new. */
    if (w->nsegs && rs.expect == w->next_id) {
        char name[32];
        seg_name(name, w->segs[w->nsegs - 1].no);
        w->seg_fd = openat(w->dirfd, name, O_RDWR | O_CLOEXEC);
        if (w->seg_fd < 0) {
            rc = -errno;
            pl_errf(err, errlen, "%s/%s: %s", o->dir, name, strerror(errno));
            goto fail;
        }
    } else {
        rc = new_segment(w, w->next_id);
        if (rc) {
            pl_errf(err, errlen, "%s: new segment: %s", o->dir, strerror(-rc));
            goto fail;
        }
    }
    rc = pthread_create(&w->thr, NULL, committer, w);
    if (rc) {
        rc = -rc;
        goto fail;
    }
    w->thr_started = true;
    st->ms = mono_ms() - t0;
    *out = w;
    return 0;
fail:
    wal_free(w);
    return rc;
}

void vx_wal_close(vx_wal *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->mu);
    w->stop = true;
    pthread_cond_broadcast(&w->cv_work);
    pthread_mutex_unlock(&w->mu);
    if (w->thr_started)
        pthread_join(w->thr, NULL);
    wal_free(w);
}

/* ======================================================================== */
/* Appending                                                                */
/* ======================================================================== */

int vx_wal_append(vx_wal *w, uint8_t type, const void *payload, size_t len, uint64_t *id)
{
    if (!w || type == 0 || (!payload && len))
        return -EINVAL;
    if (len > w->o.max_record_bytes)
        return -E2BIG;
    size_t need = FRAME_HDR + len;
    int64_t ms = now_ms();
    pthread_mutex_lock(&w->mu);
    int rc = 0;
    if (w->stop)
        rc = -ESHUTDOWN;
    else if (w->failed)
        rc = -EIO;
    else if (w->pend_len + w->inflight > 0 &&
             w->pend_len + w->inflight + need > w->o.max_pending_bytes)
        rc = -EAGAIN;
    else if (w->pend_len + need > w->pend_cap) {
        size_t cap = w->pend_cap ? w->pend_cap : 64 << 10;
        while (cap < w->pend_len + need)
            cap *= 2;
        uint8_t *n = realloc(w->pend, cap);
        if (!n)
            rc = -ENOMEM;
        else {
            w->pend = n;
            w->pend_cap = cap;
        }
    }
    if (rc) {
        pthread_mutex_unlock(&w->mu);
        return rc;
    }
    uint8_t *p = w->pend + w->pend_len;
    uint64_t my = w->next_id++;
    ls_put32(p, FRAME_MAGIC);
    ls_put32(p + 4, 0);
    ls_put32(p + 8, (uint32_t)len);
    p[12] = type;
    p[13] = 0;
    ls_put16(p + 14, 0);
    ls_put64(p + 16, my);
    ls_put64(p + 24, (uint64_t)ms);
    if (len)
        memcpy(p + FRAME_HDR, payload, len);
    bool wake = w->pend_len == 0;
    w->pend_len += need;
    if (wake)
        pthread_cond_signal(&w->cv_work);
    pthread_mutex_unlock(&w->mu);
    if (id)
        *id = my;
    return 0;
}

int vx_wal_wait(vx_wal *w, uint64_t id, int timeout_ms)
{
    if (!w)
        return -EINVAL;
    struct timespec dl;
    if (timeout_ms > 0) {
        clock_gettime(CLOCK_MONOTONIC, &dl);
        dl.tv_sec += timeout_ms / 1000;
        dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (dl.tv_nsec >= 1000000000L) {
            dl.tv_sec++;
            dl.tv_nsec -= 1000000000L;
        }
    }
    pthread_mutex_lock(&w->mu);
    int rc = 0;
    if (id >= w->next_id)
        rc = -EINVAL;
    while (!rc && w->durable_id < id) {
        if (w->failed) {
            rc = -EIO;
        } else if (timeout_ms == 0) {
            rc = -ETIMEDOUT;
        } else if (timeout_ms < 0) {
            pthread_cond_wait(&w->cv_done, &w->mu);
        } else if (pthread_cond_timedwait(&w->cv_done, &w->mu, &dl) == ETIMEDOUT &&
                   w->durable_id < id) {
            rc = w->failed ? -EIO : -ETIMEDOUT;
        }
    }
    pthread_mutex_unlock(&w->mu);
    return rc;
}

int vx_wal_append_sync(vx_wal *w, uint8_t type, const void *payload, size_t len, uint64_t *id)
{
    uint64_t my = 0;
    int rc = vx_wal_append(w, type, payload, len, &my);
    if (rc)
        return rc;
    if (id)
        *id = my;
    return vx_wal_wait(w, my, -1);
}

/* ======================================================================== */
/* Snapshots                                                                */
/* ======================================================================== */

int vx_wal_snapshot_begin(vx_wal *w, uint64_t upto_id, vx_wal_snap **out)
{
    if (!w || !out)
        return -EINVAL;
    *out = NULL;
    pthread_mutex_lock(&w->mu);
    int rc = 0;
    if (w->stop)
        rc = -ESHUTDOWN;
    else if (w->failed)
        rc = -EIO;
    else if (w->snap_busy)
        rc = -EBUSY;
    else if (upto_id == 0 || upto_id >= w->next_id ||
             (w->nsnaps && upto_id <= w->snaps[w->nsnaps - 1].id))
        rc = -EINVAL;
    if (!rc)
        w->snap_busy = true;
    pthread_mutex_unlock(&w->mu);
    if (rc)
        return rc;
    vx_wal_snap *s = calloc(1, sizeof *s);
    if (!s) {
        rc = -ENOMEM;
        goto fail;
    }
    s->w = w;
    s->upto = upto_id;
    s->ms = now_ms();
    snprintf(s->tmp, sizeof s->tmp, "%016" PRIx64 ".snap.tmp", upto_id);
    s->fd = openat(w->dirfd, s->tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (s->fd < 0) {
        rc = -errno;
        free(s);
        goto fail;
    }
    *out = s;
    return 0;
fail:
    pthread_mutex_lock(&w->mu);
    w->snap_busy = false;
    pthread_mutex_unlock(&w->mu);
    return rc;
}

int vx_wal_snapshot_write(vx_wal_snap *s, const void *buf, size_t len)
{
    if (!s || (!buf && len))
        return -EINVAL;
    if (s->io_error)
        return -EIO;
    if (write_full(s->fd, buf, len, (off_t)(SNAP_HDR + s->len)) != 0) {
        s->io_error = true;
        return -EIO;
    }
    s->crc = ls_crc32c(s->crc, buf, len);
    s->len += len;
    return 0;
}

void vx_wal_snapshot_abort(vx_wal_snap *s)
{
    if (!s)
        return;
    vx_wal *w = s->w;
    close(s->fd);
    unlinkat(w->dirfd, s->tmp, 0);
    pthread_mutex_lock(&w->mu);
    w->snap_busy = false;
    pthread_mutex_unlock(&w->mu);
    free(s);
}

int vx_wal_snapshot_commit(vx_wal_snap *s)
{
    if (!s)
        return -EINVAL;
    vx_wal *w = s->w;
    if (s->io_error) {
        vx_wal_snapshot_abort(s);
        return -EIO;
    }
    int rc = vx_wal_wait(w, s->upto, -1);
    if (rc) {
        vx_wal_snapshot_abort(s);
        return rc;
    }
    uint8_t h[SNAP_HDR];
    memcpy(h, SNAP_MAGIC, 8);
    ls_put32(h + 8, VERSION);
    ls_put32(h + 12, SNAP_HDR);
    ls_put64(h + 16, s->upto);
    ls_put64(h + 24, (uint64_t)s->ms);
    ls_put64(h + 32, s->len);
    ls_put32(h + 40, s->crc);
    ls_put32(h + 44, ls_crc32c(0, h, 44));
    char name[32];
    snap_name(name, s->upto);
    rc = write_full(s->fd, h, SNAP_HDR, 0);
    if (!rc)
        rc = sync_fd(w, s->fd);
    if (!rc && renameat(w->dirfd, s->tmp, w->dirfd, name) != 0)
        rc = -errno;
    if (!rc)
        rc = sync_dir(w);
    if (rc) {
        vx_wal_snapshot_abort(s);
        return rc < 0 ? rc : -EIO;
    }
    close(s->fd);

    /* Retention: snapshots beyond keep, then segments wholly below the
     * oldest kept snapshot (never the active one). */
    char (*gone)[32] = NULL;
    size_t ngone = 0;
    pthread_mutex_lock(&w->mu);
    rc = push_snap(w, (snap_ent){s->upto, SNAP_HDR + s->len});
    size_t drop_snaps = w->nsnaps > w->o.keep_snapshots ? w->nsnaps - w->o.keep_snapshots : 0;
    gone = malloc((drop_snaps + w->nsegs + 1) * sizeof *gone);
    if (gone) {
        for (size_t k = 0; k < drop_snaps; k++)
            snap_name(gone[ngone++], w->snaps[k].id);
        memmove(w->snaps, w->snaps + drop_snaps, (w->nsnaps - drop_snaps) * sizeof *w->snaps);
        w->nsnaps -= drop_snaps;
        uint64_t floor = w->nsnaps ? w->snaps[0].id : 0;
        size_t cut = 0;
        while (cut + 1 < w->nsegs && w->segs[cut + 1].first_id <= floor + 1)
            cut++;
        for (size_t k = 0; k < cut; k++)
            seg_name(gone[ngone++], w->segs[k].no);
        memmove(w->segs, w->segs + cut, (w->nsegs - cut) * sizeof *w->segs);
        w->nsegs -= cut;
    }
    w->snap_busy = false;
    pthread_mutex_unlock(&w->mu);
    for (size_t k = 0; k < ngone; k++)
        unlinkat(w->dirfd, gone[k], 0);
    if (ngone)
        sync_dir(w);
    free(gone);
    free(s);
    return rc;
}

/* ======================================================================== */
/* Observation                                                              */
/* ======================================================================== */

void vx_wal_info_get(vx_wal *w, vx_wal_info *info)
{
    memset(info, 0, sizeof *info);
    if (!w)
        return;
    pthread_mutex_lock(&w->mu);
    info->last_id = w->next_id - 1;
    info->durable_id = w->durable_id;
    info->durable_ms = w->durable_ms;
    info->snapshot_id = w->nsnaps ? w->snaps[w->nsnaps - 1].id : 0;
    for (size_t i = 0; i < w->nsegs; i++)
        info->bytes_on_disk += w->segs[i].size;
    for (size_t i = 0; i < w->nsnaps; i++)
        info->bytes_on_disk += w->snaps[i].size;
    info->segments = (uint32_t)w->nsegs;
    info->snapshots = (uint32_t)w->nsnaps;
    info->commits = w->commits;
    info->pending_bytes = w->pend_len + w->inflight;
    info->failed = w->failed;
    pthread_mutex_unlock(&w->mu);
}
