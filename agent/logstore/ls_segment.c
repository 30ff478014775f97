/*
 * Segment files: creation, full reads and writes, and the verifying scan
 * used by recovery and by space reclamation. The scan trusts nothing it
 * reads: every length is checked against the file size and the hard record
 * limit before any byte it names is touched.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "logstore/ls_internal.h"

#define SCAN_WINDOW (1u << 20)

void ls_seg_name(uint64_t no, char out[LS_SEG_NAME_LEN + 1])
{
    snprintf(out, LS_SEG_NAME_LEN + 1, "%016" PRIx64 ".seg", no);
}

bool ls_seg_name_parse(const char *name, uint64_t *no)
{
    if (strlen(name) != LS_SEG_NAME_LEN || strcmp(name + 16, ".seg") != 0)
        return false;
    uint64_t v = 0;
    for (int i = 0; i < 16; i++) {
        char c = name[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            return false;
        v = (v << 4) | (uint64_t)d;
    }
    *no = v;
    return true;
}

int ls_pread_full(int fd, void *buf, size_t len, uint64_t off)
{
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EIO; /* the file is shorter than we were told */
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

int ls_pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = pwrite(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

int ls_seg_create(int dirfd, const ls_seg_hdr *h, bool sync, int *fd_out)
{
    char name[LS_SEG_NAME_LEN + 1];
    ls_seg_name(h->no, name);
    int fd = openat(dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
    if (fd < 0)
        return -errno;
    uint8_t hdr[LS_SEG_HDR];
    ls_seg_hdr_encode(h, hdr);
    int rc = ls_pwrite_full(fd, hdr, sizeof hdr, 0);
    if (rc == 0 && sync) {
        if (fdatasync(fd) != 0 || fsync(dirfd) != 0)
            rc = -errno;
    }
    if (rc != 0) {
        close(fd);
        unlinkat(dirfd, name, 0);
        return rc;
    }
    *fd_out = fd;
    return 0;
}

/* A window over the file: [off, off + have) is in buf. */
typedef struct win {
    int fd;
    uint64_t size;
    uint8_t *buf;
    size_t cap;
    uint64_t off;
    size_t have;
    int err;
} win;

/* Bytes [pos, pos + n) of the file, or NULL if they are past its end (or a
 * read failed: w->err). */
static const uint8_t *win_get(win *w, uint64_t pos, size_t n)
{
    if (pos > w->size || n > w->size - pos)
        return NULL;
    if (pos >= w->off && pos + n <= w->off + w->have)
        return w->buf + (pos - w->off);
    size_t want = n > SCAN_WINDOW ? n : SCAN_WINDOW;
    if (want > w->size - pos)
        want = (size_t)(w->size - pos);
    if (want > w->cap) {
        uint8_t *b = realloc(w->buf, want);
        if (!b) {
            w->err = -ENOMEM;
            return NULL;
        }
        w->buf = b;
        w->cap = want;
    }
    int rc = ls_pread_full(w->fd, w->buf, want, pos);
    if (rc != 0) {
        w->err = rc;
        w->have = 0;
        return NULL;
    }
    w->off = pos;
    w->have = want;
    return w->buf;
}

static bool try_frame(win *w, uint64_t pos, uint32_t salt, uint64_t min_seq, ls_frame *f)
{
    const uint8_t *h = win_get(w, pos, LS_FRAME_HDR);
    if (!h || ls_get32(h) != LS_FRAME_MAGIC)
        return false;
    uint32_t len = ls_get32(h + 8);
    if (len > LS_RECORD_HARD_MAX - LS_FRAME_HDR)
        return false;
    const uint8_t *b = win_get(w, pos, (size_t)LS_FRAME_HDR + len);
    return b && ls_frame_check(b, (size_t)LS_FRAME_HDR + len, salt, min_seq, f) == LS_FRAME_OK;
}

int ls_seg_scan(int fd, uint64_t size, uint32_t salt, uint64_t min_seq, ls_scan_fn fn, void *ctx,
                ls_scan_res *res)
{
    win w = {.fd = fd, .size = size};
    memset(res, 0, sizeof *res);
    res->last_seq = min_seq;
    uint64_t pos = LS_SEG_HDR;
    res->end = pos;
    uint8_t magic[4];
    ls_put32(magic, LS_FRAME_MAGIC);
    int rc = 0;
    while (pos < size) {
        ls_frame f;
        if (try_frame(&w, pos, salt, res->last_seq, &f)) {
            rc = fn ? fn(ctx, &f, pos) : 0;
            if (rc != 0)
                break;
            res->last_seq = f.seq;
            res->frames++;
            pos += LS_FRAME_HDR + f.len;
            res->end = pos;
            continue;
        }
        if (w.err)
            break;
        /* Resync: the next offset holding a good frame. */
        uint64_t q = pos + 1;
        bool found = false;
        while (!found && !w.err && q < size && size - q >= LS_FRAME_HDR) {
            size_t n = size - q < SCAN_WINDOW ? (size_t)(size - q) : SCAN_WINDOW;
            const uint8_t *p = win_get(&w, q, n);
            if (!p)
                break;
            const uint8_t *m = memmem(p, n, magic, sizeof magic);
            if (!m) {
                q += n - 3;
                continue;
            }
            uint64_t cand = q + (uint64_t)(m - p);
            if (try_frame(&w, cand, salt, res->last_seq, &f))
                found = true;
            q = found ? cand : cand + 1;
        }
        if (w.err)
            break;
        if (!found) {
            res->bad_tail = true;
            break;
        }
        res->bad_regions++;
        pos = q;
    }
    free(w.buf);
    if (w.err)
        return w.err;
    return rc;
}
