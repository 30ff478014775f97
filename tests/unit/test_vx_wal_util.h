/*
 * Helpers shared by the vx_wal tests: a replay collector (every record and
 * the snapshot blob, copied) and small file utilities.
 */
#ifndef TEST_VX_WAL_UTIL_H
#define TEST_VX_WAL_UTIL_H

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_support.h"
#include "vector/vx_wal.h"

typedef struct tw_rec {
    uint64_t id;
    int64_t ms;
    uint8_t type;
    uint8_t *payload;
    size_t len;
} tw_rec;

typedef struct tw_col {
    tw_rec *r;
    size_t n, cap;
    uint8_t *snap;
    size_t snap_len;
    uint64_t snap_id;
    int snaps_loaded;
} tw_col;

static inline int tw_on_record(void *ctx, const vx_wal_rec *rec)
{
    tw_col *c = ctx;
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 256;
        c->r = realloc(c->r, c->cap * sizeof *c->r);
    }
    tw_rec *r = &c->r[c->n++];
    r->id = rec->id;
    r->ms = rec->ms;
    r->type = rec->type;
    r->len = rec->len;
    r->payload = malloc(rec->len ? rec->len : 1);
    if (rec->len)
        memcpy(r->payload, rec->payload, rec->len);
    return 0;
}

static inline int tw_on_snapshot(void *ctx, vx_wal_snap_reader *rd, uint64_t upto)
{
    tw_col *c = ctx;
    c->snaps_loaded++;
    c->snap_id = upto;
    c->snap_len = (size_t)vx_wal_snap_size(rd);
    free(c->snap);
    c->snap = malloc(c->snap_len ? c->snap_len : 1);
    size_t got = 0;
    for (;;) {
        size_t want = c->snap_len - got > 7 ? 7 : c->snap_len - got; /* small reads */
        ssize_t n = vx_wal_snap_read(rd, c->snap + got, want);
        if (n < 0)
            return (int)n;
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return got == c->snap_len ? 0 : -EIO;
}

static inline void tw_col_free(tw_col *c)
{
    for (size_t i = 0; i < c->n; i++)
        free(c->r[i].payload);
    free(c->r);
    free(c->snap);
    memset(c, 0, sizeof *c);
}

static inline vx_wal_replay tw_replay(tw_col *c)
{
    return (vx_wal_replay){tw_on_snapshot, tw_on_record, c};
}

/* Opens dir (fsync as given) and collects the replay into c; returns rc. */
static inline int tw_open(const char *dir, bool fsync, tw_col *c, vx_wal **w,
                          vx_wal_replay_stats *st, const vx_wal_opts *base)
{
    vx_wal_opts o;
    if (base)
        o = *base;
    else
        vx_wal_opts_init(&o, dir);
    o.dir = dir;
    o.fsync = fsync;
    vx_wal_replay cb = tw_replay(c);
    char err[256];
    return vx_wal_open(&o, &cb, w, st, err, sizeof err);
}

/* Deterministic payload of record i: "p<i>-" then filler, length 5..60. */
static inline size_t tw_payload(uint64_t i, uint8_t *buf)
{
    size_t len = 5 + (size_t)(i * 7919 % 56);
    int h = snprintf((char *)buf, 64, "p%llu-", (unsigned long long)i);
    for (size_t k = (size_t)h; k < len; k++)
        buf[k] = (uint8_t)('a' + (i + k) % 26);
    return len < (size_t)h ? (size_t)h : len;
}

static inline uint8_t *tw_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)n + 1);
    cr_assert_eq(fread(b, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return b;
}

static inline void tw_write_file(const char *path, const uint8_t *b, size_t len)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "%s", path);
    cr_assert_eq(fwrite(b, 1, len, f), len);
    fclose(f);
}

/* Number of files in dir whose name ends with suffix. */
static inline int tw_count(const char *dir, const char *suffix)
{
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    int n = 0;
    struct dirent *e;
    size_t sl = strlen(suffix);
    while ((e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        if (l > sl && strcmp(e->d_name + l - sl, suffix) == 0)
            n++;
    }
    closedir(d);
    return n;
}

#endif
