/*
 * vx_wal: round trips, group commit, torn tails at every length, byte flips
 * (refused or cut, never served, never a crash), snapshots (snapshot + tail
 * equals full replay, old segments removed, a damaged snapshot falls back or
 * is refused) and the open time of 100k records (printed, not asserted).
 */
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>

#include "test_vx_wal_util.h"

TestSuite(vx_wal, .timeout = 120);

static char *seg_path(const char *dir, int no)
{
    char *p = malloc(strlen(dir) + 40);
    sprintf(p, "%s/%016x.wal", dir, no);
    return p;
}

static void append_n(vx_wal *w, uint64_t from, uint64_t n)
{
    uint8_t buf[64];
    for (uint64_t i = from; i < from + n; i++) {
        size_t len = tw_payload(i, buf);
        uint64_t id = 0;
        cr_assert_eq(vx_wal_append(w, (uint8_t)(1 + i % 5), buf, len, &id), 0);
        cr_assert_eq(id, i);
    }
    cr_assert_eq(vx_wal_wait(w, from + n - 1, -1), 0);
}

/* c holds records from..from+n-1 exactly as append_n wrote them. */
static void check_range(const tw_col *c, size_t at, uint64_t from, uint64_t n)
{
    uint8_t buf[64];
    cr_assert_geq(c->n, at + n);
    for (uint64_t k = 0; k < n; k++) {
        const tw_rec *r = &c->r[at + k];
        uint64_t i = from + k;
        size_t len = tw_payload(i, buf);
        cr_assert_eq(r->id, i, "record %zu has id %llu, want %llu", (size_t)(at + k),
                     (unsigned long long)r->id, (unsigned long long)i);
        cr_assert_eq(r->type, 1 + i % 5);
        cr_assert_eq(r->len, len);
        cr_assert_eq(memcmp(r->payload, buf, len), 0);
        cr_assert_gt(r->ms, 0);
    }
}

Test(vx_wal, round_trip_and_info)
{
    char *dir = ts_tmpdir();
    tw_col c = {0};
    vx_wal *w = NULL;
    vx_wal_replay_stats st;
    cr_assert_eq(tw_open(dir, true, &c, &w, &st, NULL), 0);
    cr_assert_eq(c.n, 0);
    cr_assert_eq(st.last_id, 0);
    vx_wal_info in;
    vx_wal_info_get(w, &in);
    cr_assert_eq(in.durable_id, 0);
    cr_assert_eq(in.durable_ms, 0);

    append_n(w, 1, 500);
    /* An empty payload and a sync append. */
    uint64_t id = 0;
    cr_assert_eq(vx_wal_append_sync(w, 200, NULL, 0, &id), 0);
    cr_assert_eq(id, 501);
    vx_wal_info_get(w, &in);
    cr_assert_eq(in.last_id, 501);
    cr_assert_eq(in.durable_id, 501);
    cr_assert_gt(in.durable_ms, 1600000000000LL);
    cr_assert_gt(in.bytes_on_disk, 500 * 32);
    cr_assert_eq(in.segments, 1);
    cr_assert_geq(in.commits, 1);
    char txt[VX_WAL_ID_TEXT];
    vx_wal_id_text(501, txt);
    cr_assert_str_eq(txt, "501");
    vx_wal_id_text(UINT64_MAX, txt);
    cr_assert_str_eq(txt, "18446744073709551615");

    /* Bad arguments. */
    cr_assert_eq(vx_wal_append(w, 0, "x", 1, NULL), -EINVAL);
    cr_assert_eq(vx_wal_append(w, 1, NULL, 3, NULL), -EINVAL);
    cr_assert_eq(vx_wal_wait(w, 502, 0), -EINVAL);
    /* A second open of the same directory. */
    vx_wal *w2 = NULL;
    tw_col c2 = {0};
    cr_assert_eq(tw_open(dir, true, &c2, &w2, NULL, NULL), -EBUSY);
    vx_wal_close(w);

    tw_col_free(&c);
    cr_assert_eq(tw_open(dir, true, &c, &w, &st, NULL), 0);
    cr_assert_eq(c.n, 501);
    check_range(&c, 0, 1, 500);
    cr_assert_eq(c.r[500].id, 501);
    cr_assert_eq(c.r[500].type, 200);
    cr_assert_eq(c.r[500].len, 0);
    cr_assert_eq(st.records, 501);
    cr_assert_eq(st.last_id, 501);
    cr_assert_eq(st.truncated_bytes, 0);
    vx_wal_info in2;
    vx_wal_info_get(w, &in2);
    cr_assert_eq(in2.durable_id, 501);
    cr_assert_eq(in2.durable_ms, in.durable_ms, "processedUpToDatetime survives reopen");
    /* Ids continue after a reopen; the segment is reused. */
    cr_assert_eq(vx_wal_append_sync(w, 1, "z", 1, &id), 0);
    cr_assert_eq(id, 502);
    vx_wal_info_get(w, &in2);
    cr_assert_eq(in2.segments, 1);
    vx_wal_close(w);
    tw_col_free(&c);
    ts_tmpdir_remove(dir);
    free(dir);
}

Test(vx_wal, limits)
{
    char *dir = ts_tmpdir();
    vx_wal_opts o;
    vx_wal_opts_init(&o, dir);
    o.max_record_bytes = 100;
    o.max_pending_bytes = 1000;
    tw_col c = {0};
    vx_wal *w = NULL;
    cr_assert_eq(tw_open(dir, false, &c, &w, NULL, &o), 0);
    uint8_t big[200] = {0};
    cr_assert_eq(vx_wal_append(w, 1, big, 101, NULL), -E2BIG);
    cr_assert_eq(vx_wal_append(w, 1, big, 100, NULL), 0);
    /* Backpressure: keep appending without waiting; some must be refused
     * while the committer is behind, unless it is always faster (then at
     * least every append succeeded and ids stay gapless). */
    uint64_t last = 1, id;
    for (int i = 0; i < 2000; i++) {
        int rc = vx_wal_append(w, 1, big, 100, &id);
        cr_assert(rc == 0 || rc == -EAGAIN, "rc %d", rc);
        if (rc == 0) {
            cr_assert_eq(id, last + 1);
            last = id;
        }
    }
    cr_assert_eq(vx_wal_wait(w, last, 10000), 0);
    vx_wal_info in;
    vx_wal_info_get(w, &in);
    cr_assert_eq(in.durable_id, last);
    cr_assert_eq(in.pending_bytes, 0);
    vx_wal_close(w);
    cr_assert_eq(tw_open(dir, false, &c, &w, NULL, &o), 0);
    cr_assert_eq(c.n, last);
    vx_wal_close(w);
    tw_col_free(&c);
    /* A record bigger than a later open's max_record_bytes still replays. */
    o.max_record_bytes = 300000;
    cr_assert_eq(tw_open(dir, false, &c, &w, NULL, &o), 0);
    uint8_t *huge = calloc(1, 250000);
    huge[249999] = 7;
    cr_assert_eq(vx_wal_append_sync(w, 3, huge, 250000, &id), 0);
    vx_wal_close(w);
    tw_col_free(&c);
    o.max_record_bytes = 100;
    cr_assert_eq(tw_open(dir, false, &c, &w, NULL, &o), 0);
    cr_assert_eq(c.n, last + 1);
    cr_assert_eq(c.r[last].len, 250000);
    cr_assert_eq(memcmp(c.r[last].payload, huge, 250000), 0);
    vx_wal_close(w);
    free(huge);
    tw_col_free(&c);
    ts_tmpdir_remove(dir);
    free(dir);
}

typedef struct gc_ctx {
    vx_wal *w;
    int t;
    uint64_t ids[300];
} gc_ctx;

static void *gc_thread(void *arg)
{
    gc_ctx *g = arg;
    char buf[32];
    for (int i = 0; i < 300; i++) {
        int len = snprintf(buf, sizeof buf, "t%d-%d", g->t, i);
        if (vx_wal_append_sync(g->w, 2, buf, (size_t)len, &g->ids[i]) != 0)
            g->ids[i] = 0;
    }
    return NULL;
}

Test(vx_wal, group_commit_from_threads)
{
    char *dir = ts_tmpdir();
    tw_col c = {0};
    vx_wal *w = NULL;
    cr_assert_eq(tw_open(dir, true, &c, &w, NULL, NULL), 0);
    enum { T = 6 };
    pthread_t th[T];
    gc_ctx *g = calloc(T, sizeof *g);
    for (int t = 0; t < T; t++) {
        g[t].w = w;
        g[t].t = t;
        pthread_create(&th[t], NULL, gc_thread, &g[t]);
    }
    for (int t = 0; t < T; t++)
        pthread_join(th[t], NULL);
    vx_wal_info in;
    vx_wal_info_get(w, &in);
    cr_assert_eq(in.durable_id, T * 300);
    cr_log_info("group commit: %d records in %llu commits", T * 300,
                (unsigned long long)in.commits);
    cr_assert_leq(in.commits, T * 300);
    vx_wal_close(w);
    cr_assert_eq(tw_open(dir, true, &c, &w, NULL, NULL), 0);
    cr_assert_eq(c.n, T * 300);
    /* Each acknowledged id holds what its thread wrote. */
    for (int t = 0; t < T; t++)
        for (int i = 0; i < 300; i++) {
            uint64_t id = g[t].ids[i];
            cr_assert_gt(id, 0);
            const tw_rec *r = &c.r[id - 1];
            cr_assert_eq(r->id, id);
            char buf[32];
            int len = snprintf(buf, sizeof buf, "t%d-%d", t, i);
            cr_assert_eq(r->len, (size_t)len);
            cr_assert_eq(memcmp(r->payload, buf, (size_t)len), 0);
        }
    vx_wal_close(w);
    free(g);
    tw_col_free(&c);
    ts_tmpdir_remove(dir);
    free(dir);
}

Test(vx_wal, every_truncation_of_the_last_segment)
{
    char *dir = ts_tmpdir();
    tw_col c = {0};
    vx_wal *w = NULL;
    cr_assert_eq(tw_open(dir, false, &c, &w, NULL, NULL), 0);
    append_n(w, 1, 20);
    vx_wal_close(w);
    char *seg = seg_path(dir, 1);
    size_t size;
    uint8_t *orig = tw_read_file(seg, &size);
    /* Frame ends, to know how many records a cut keeps. */
    size_t ends[21];
    ends[0] = 40;
    uint8_t buf[64];
    for (int i = 1; i <= 20; i++)
        ends[i] = ends[i - 1] + 32 + tw_payload((uint64_t)i, buf);
    cr_assert_eq(ends[20], size);
    for (size_t cut = 0; cut <= size; cut++) {
        tw_write_file(seg, orig, cut);
        tw_col_free(&c);
        vx_wal_replay_stats st;
        cr_assert_eq(tw_open(dir, false, &c, &w, &st, NULL), 0, "cut %zu", cut);
        size_t keep = 0;
        while (keep < 20 && ends[keep + 1] <= cut)
            keep++;
        cr_assert_eq(c.n, keep, "cut %zu: %zu records, want %zu", cut, c.n, keep);
        check_range(&c, 0, 1, keep);
        if (cut >= 40)
            cr_assert_eq(st.truncated_bytes, cut - ends[keep], "cut %zu", cut);
        /* The next id follows the survivors. */
        uint64_t id;
        cr_assert_eq(vx_wal_append_sync(w, 1, "n", 1, &id), 0);
        cr_assert_eq(id, keep + 1, "cut %zu", cut);
        vx_wal_close(w);
        /* Start the next cut from a clean directory state. */
        DIR *d = opendir(dir);
        struct dirent *e;
        while ((e = readdir(d)) != NULL)
            if (strstr(e->d_name, ".wal")) {
                char p[512];
                snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
                unlink(p);
            }
        closedir(d);
    }
    free(orig);
    free(seg);
    tw_col_free(&c);
    ts_tmpdir_remove(dir);
    free(dir);
}

/* Restores a set of segment files into dir (only those). */
static void restore(const char *dir, uint8_t **files, size_t *lens, int n)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strstr(e->d_name, ".wal")) {
            char p[512];
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
    closedir(d);
    for (int i = 0; i < n; i++) {
        char *p = seg_path(dir, i + 1);
        tw_write_file(p, files[i], lens[i]);
        free(p);
    }
}

Test(vx_wal, byte_flips_are_refused_or_cut_never_served)
{
    char *dir = ts_tmpdir();
    vx_wal_opts o;
    vx_wal_opts_init(&o, dir);
    o.segment_max_bytes = 300; /* a few segments */
    tw_col c = {0};
    vx_wal *w = NULL;
    cr_assert_eq(tw_open(dir, false, &c, &w, NULL, &o), 0);
    for (uint64_t i = 1; i <= 16; i++)
        append_n(w, i, 1); /* one group each: segments roll */
    vx_wal_info in;
    vx_wal_info_get(w, &in);
    vx_wal_close(w);
    int nseg = (int)in.segments;
    cr_assert_geq(nseg, 3);
    uint8_t *files[16];
    size_t lens[16];
    for (int i = 0; i < nseg; i++) {
        char *p = seg_path(dir, i + 1);
        files[i] = tw_read_file(p, &lens[i]);
        free(p);
    }
    int refused = 0, cut = 0, torn = 0;
    for (int mode = 0; mode < 2; mode++) {
        o.truncate_corrupt = mode == 1;
        for (int s = 0; s < nseg; s++)
            for (size_t b = (size_t)mode; b < lens[s]; b += mode ? 3 : 1) {
                restore(dir, files, lens, nseg);
                char *p = seg_path(dir, s + 1);
                files[s][b] ^= 0x20;
                tw_write_file(p, files[s], lens[s]);
                files[s][b] ^= 0x20;
                free(p);
                tw_col_free(&c);
                vx_wal_replay_stats st;
                int rc = tw_open(dir, false, &c, &w, &st, &o);
                if (rc == 0) {
                    /* Whatever was served is an intact prefix. */
                    check_range(&c, 0, 1, c.n);
                    if (c.n < 16) {
                        cr_assert(st.truncated_bytes > 0 || st.corrupt_truncated_bytes > 0);
                        if (st.corrupt_truncated_bytes)
                            cut++;
                        else
                            torn++;
                    }
                    /* A closed segment's damage is never taken for a torn tail. */
                    if (s < nseg - 1)
                        cr_assert(mode == 1 && c.n < 16, "flip %d/%zu served all", s, b);
                    uint64_t id;
                    cr_assert_eq(vx_wal_append_sync(w, 1, "n", 1, &id), 0);
                    cr_assert_eq(id, c.n + 1);
                    vx_wal_close(w);
                } else {
                    cr_assert_eq(rc, -EBADMSG, "flip %d/%zu: rc %d", s, b, rc);
                    cr_assert_eq(mode, 0, "truncate_corrupt opens");
                    refused++;
                }
            }
    }
    cr_log_info("byte flips: %d refused, %d cut (truncate_corrupt), %d torn tails", refused, cut,
                torn);
    cr_assert_gt(refused, 0);
    cr_assert_gt(cut, 0);
    cr_assert_gt(torn, 0);
    for (int i = 0; i < nseg; i++)
        free(files[i]);
    tw_col_free(&c);
    ts_tmpdir_remove(dir);
    free(dir);
}

/* A tiny "index": keys 0..63 with a value each; records are upserts
 * (payload: key, value) and deletes (payload: key). The snapshot is the
 * array itself. */
typedef struct kv {
    int32_t v[64];
} kv;

static void kv_apply(kv *s, const vx_wal_rec *r)
{
    if (r->type == VX_WAL_UPSERT && r->len == 5)
        s->v[r->payload[0] % 64] = (int32_t)(r->payload[1] | r->payload[2] << 8);
    else if (r->type == VX_WAL_DELETE && r->len == 1)
        s->v[r->payload[0] % 64] = -1;
}

typedef struct kv_ctx {
    kv s;
    uint64_t snap;
    uint64_t records;
} kv_ctx;

static int kv_on_record(void *ctx, const vx_wal_rec *r)
{
    kv_ctx *k = ctx;
    kv_apply(&k->s, r);
    k->records++;
    return 0;
}

static int kv_on_snapshot(void *ctx, vx_wal_snap_reader *rd, uint64_t upto)
{
    kv_ctx *k = ctx;
    k->snap = upto;
    uint8_t b[sizeof k->s.v * 4 / 4];
    if (vx_wal_snap_size(rd) != sizeof b)
        return -EINVAL;
    ssize_t n = vx_wal_snap_read(rd, b, sizeof b);
    if (n != (ssize_t)sizeof b || vx_wal_snap_read(rd, b, 1) != 0)
        return -EIO;
    memcpy(k->s.v, b, sizeof b);
    return 0;
}

static uint64_t kv_mutate(vx_wal *w, kv *model, uint64_t i)
{
    uint8_t p[5];
    uint64_t id;
    p[0] = (uint8_t)(i * 37 % 64);
    if (i % 7 == 3) {
        cr_assert_eq(vx_wal_append(w, VX_WAL_DELETE, p, 1, &id), 0);
        model->v[p[0]] = -1;
    } else {
        p[1] = (uint8_t)i;
        p[2] = (uint8_t)(i >> 8);
        p[3] = p[4] = 0;
        cr_assert_eq(vx_wal_append(w, VX_WAL_UPSERT, p, 5, &id), 0);
        model->v[p[0]] = (int32_t)(i & 0xFFFF);
    }
    return id;
}

static void kv_snapshot(vx_wal *w, const kv *model, uint64_t upto)
{
    vx_wal_snap *s = NULL;
    cr_assert_eq(vx_wal_snapshot_begin(w, upto, &s), 0);
    cr_assert_eq(vx_wal_snapshot_write(s, model->v, 100), 0);
    cr_assert_eq(vx_wal_snapshot_write(s, (const uint8_t *)model->v + 100, sizeof model->v - 100),
                 0);
    cr_assert_eq(vx_wal_snapshot_commit(s), 0);
}

static int kv_open(const char *dir, const vx_wal_opts *base, kv_ctx *k, vx_wal **w,
                   vx_wal_replay_stats *st)
{
    vx_wal_opts o = *base;
    o.dir = dir;
    memset(k, 0, sizeof *k);
    memset(k->s.v, 0xFF, sizeof k->s.v);
    vx_wal_replay cb = {kv_on_snapshot, kv_on_record, k};
    char err[256];
    int rc = vx_wal_open(&o, &cb, w, st, err, sizeof err);
    if (rc)
        cr_log_info("open: %d %s", rc, err);
    return rc;
}

Test(vx_wal, snapshot_plus_tail_equals_full_replay_and_frees_segments)
{
    char *dir = ts_tmpdir();
    vx_wal_opts o;
    vx_wal_opts_init(&o, dir);
    o.fsync = false;
    o.segment_max_bytes = 2048;
    kv_ctx k;
    vx_wal *w = NULL;
    cr_assert_eq(kv_open(dir, &o, &k, &w, NULL), 0);
    kv model, at1, at2;
    memset(model.v, 0xFF, sizeof model.v);
    uint64_t id = 0;
    for (uint64_t i = 1; i <= 1000; i++) {
        id = kv_mutate(w, &model, i);
        if (i % 50 == 0)
            cr_assert_eq(vx_wal_wait(w, id, -1), 0);
    }
    vx_wal_info before;
    vx_wal_info_get(w, &before);
    cr_assert_gt(before.segments, 5);
    at1 = model;
    /* A snapshot of id 1000 while appends continue. */
    vx_wal_snap *s = NULL;
    cr_assert_eq(vx_wal_snapshot_begin(w, 1000, &s), 0);
    vx_wal_snap *s2 = NULL;
    cr_assert_eq(vx_wal_snapshot_begin(w, 1000, &s2), -EBUSY);
    for (uint64_t i = 1001; i <= 1200; i++)
        kv_mutate(w, &model, i);
    cr_assert_eq(vx_wal_snapshot_write(s, at1.v, sizeof at1.v), 0);
    cr_assert_eq(vx_wal_snapshot_commit(s), 0);
    vx_wal_info after;
    vx_wal_info_get(w, &after);
    cr_assert_eq(after.snapshot_id, 1000);
    cr_assert_lt(after.segments, before.segments, "segments <= 1000 are deleted");
    cr_assert_eq(tw_count(dir, ".wal"), (int)after.segments);
    cr_assert_eq(vx_wal_snapshot_begin(w, 1000, &s2), -EINVAL, "not newer");
    cr_assert_eq(vx_wal_snapshot_begin(w, 5000, &s2), -EINVAL, "never issued");

    /* Second snapshot; with keep 2 both stay, segments up to the older go. */
    for (uint64_t i = 1201; i <= 2000; i++)
        id = kv_mutate(w, &model, i);
    at2 = model;
    kv_snapshot(w, &at2, 2000);
    for (uint64_t i = 2001; i <= 2100; i++)
        id = kv_mutate(w, &model, i);
    cr_assert_eq(vx_wal_wait(w, id, -1), 0);
    vx_wal_info_get(w, &after);
    cr_assert_eq(after.snapshots, 2);
    cr_assert_eq(tw_count(dir, ".snap"), 2);
    vx_wal_close(w);

    /* Reopen: snapshot 2000 + 100 tail records = the model. */
    vx_wal_replay_stats st;
    cr_assert_eq(kv_open(dir, &o, &k, &w, &st), 0);
    cr_assert_eq(k.snap, 2000);
    cr_assert_eq(st.snapshot_id, 2000);
    cr_assert_eq(k.records, 100);
    cr_assert_eq(st.records, 100);
    cr_assert_eq(st.last_id, 2100);
    cr_assert_eq(memcmp(k.s.v, model.v, sizeof model.v), 0);
    vx_wal_close(w);

    /* Damage the newest snapshot: falls back to 1000 + the log after it. */
    char p[512];
    snprintf(p, sizeof p, "%s/%016x.snap", dir, 2000);
    size_t len;
    uint8_t *b = tw_read_file(p, &len);
    b[len - 3] ^= 1;
    tw_write_file(p, b, len);
    cr_assert_eq(kv_open(dir, &o, &k, &w, &st), 0);
    cr_assert_eq(k.snap, 1000);
    cr_assert_eq(st.snapshots_skipped, 1);
    cr_assert_eq(k.records, 1100);
    cr_assert_eq(memcmp(k.s.v, model.v, sizeof model.v), 0);
    /* A new snapshot replaces the damaged one. */
    for (uint64_t i = 2101; i <= 2200; i++)
        id = kv_mutate(w, &model, i);
    kv_snapshot(w, &model, id);
    vx_wal_close(w);
    cr_assert_eq(kv_open(dir, &o, &k, &w, &st), 0);
    cr_assert_eq(k.snap, 2200);
    cr_assert_eq(st.snapshots_skipped, 0);
    cr_assert_eq(memcmp(k.s.v, model.v, sizeof model.v), 0);
    vx_wal_close(w);
    free(b);
    ts_tmpdir_remove(dir);
    free(dir);
}

Test(vx_wal, damaged_only_snapshot_is_refused)
{
    char *dir = ts_tmpdir();
    vx_wal_opts o;
    vx_wal_opts_init(&o, dir);
    o.fsync = false;
    o.segment_max_bytes = 1024;
    o.keep_snapshots = 1;
    kv_ctx k;
    vx_wal *w = NULL;
    cr_assert_eq(kv_open(dir, &o, &k, &w, NULL), 0);
    kv model;
    memset(model.v, 0xFF, sizeof model.v);
    uint64_t id = 0;
    for (uint64_t i = 1; i <= 300; i++)
        id = kv_mutate(w, &model, i);
    kv_snapshot(w, &model, id);
    for (uint64_t i = 301; i <= 400; i++)
        id = kv_mutate(w, &model, i);
    kv_snapshot(w, &model, id);
    cr_assert_eq(tw_count(dir, ".snap"), 1, "keep_snapshots 1");
    vx_wal_close(w);
    char p[512];
    snprintf(p, sizeof p, "%s/%016x.snap", dir, 400);
    size_t len;
    uint8_t *b = tw_read_file(p, &len);
    b[20] ^= 4; /* header */
    tw_write_file(p, b, len);
    vx_wal_replay_stats st;
    cr_assert_eq(kv_open(dir, &o, &k, &w, &st), -EBADMSG);
    cr_assert_eq(k.records, 0, "nothing replayed when the base is missing");
    /* Restored, it opens again (open never deletes a damaged snapshot). */
    b[20] ^= 4;
    tw_write_file(p, b, len);
    cr_assert_eq(kv_open(dir, &o, &k, &w, &st), 0);
    cr_assert_eq(memcmp(k.s.v, model.v, sizeof model.v), 0);
    vx_wal_close(w);
    free(b);
    ts_tmpdir_remove(dir);
    free(dir);
}

Test(vx_wal, snapshot_abort_and_tmp_cleanup)
{
    char *dir = ts_tmpdir();
    tw_col c = {0};
    vx_wal *w = NULL;
    cr_assert_eq(tw_open(dir, false, &c, &w, NULL, NULL), 0);
    append_n(w, 1, 10);
    vx_wal_snap *s = NULL;
    cr_assert_eq(vx_wal_snapshot_begin(w, 5, &s), 0);
    cr_assert_eq(vx_wal_snapshot_write(s, "abc", 3), 0);
    cr_assert_eq(tw_count(dir, ".tmp"), 1);
    vx_wal_snapshot_abort(s);
    cr_assert_eq(tw_count(dir, ".tmp"), 0);
    vx_wal_snapshot_abort(NULL);
    vx_wal_close(w);
    tw_col_free(&c);
    /* A crash in the middle of a snapshot leaves a temp file: open removes it. */
    char p[512];
    snprintf(p, sizeof p, "%s/%016x.snap.tmp", dir, 7);
    tw_write_file(p, (const uint8_t *)"junk", 4);
    cr_assert_eq(tw_open(dir, false, &c, &w, NULL, NULL), 0);
    cr_assert_eq(c.n, 10);
    cr_assert_eq(c.snaps_loaded, 0);
    cr_assert_eq(tw_count(dir, ".tmp"), 0);
    vx_wal_close(w);
    tw_col_free(&c);
    ts_tmpdir_remove(dir);
    free(dir);
}

Test(vx_wal, open_time_of_100k_records)
{
    char *dir = ts_tmpdir();
    tw_col c = {0};
    vx_wal *w = NULL;
    cr_assert_eq(tw_open(dir, true, &c, &w, NULL, NULL), 0);
    uint8_t buf[64];
    uint64_t id = 0;
    for (uint64_t i = 1; i <= 100000; i++) {
        size_t len = tw_payload(i, buf);
        int rc;
        while ((rc = vx_wal_append(w, (uint8_t)(1 + i % 5), buf, len, &id)) == -EAGAIN)
            vx_wal_wait(w, id, 10);
        cr_assert_eq(rc, 0);
    }
    cr_assert_eq(vx_wal_wait(w, id, -1), 0);
    vx_wal_info in;
    vx_wal_info_get(w, &in);
    vx_wal_close(w);
    vx_wal_replay_stats st;
    cr_assert_eq(tw_open(dir, true, &c, &w, &st, NULL), 0);
    cr_assert_eq(st.records, 100000);
    check_range(&c, 99990, 99991, 10);
    cr_log_info("open: %llu records, %llu payload bytes, %llu on disk, %.1f ms "
                "(%llu commits to write them)",
                (unsigned long long)st.records, (unsigned long long)st.bytes,
                (unsigned long long)in.bytes_on_disk, st.ms, (unsigned long long)in.commits);
    fprintf(stderr, "vx_wal open of 100k records: %.1f ms\n", st.ms);
    vx_wal_close(w);
    tw_col_free(&c);
    ts_tmpdir_remove(dir);
    free(dir);
}

typedef struct commit_log {
    uint64_t seg[4096], off[4096], len[4096], last[4096];
    int n;
} commit_log;

static void on_commit(void *ctx, uint64_t seg, uint64_t off, uint64_t len, uint64_t last)
{
    commit_log *l = ctx;
    if (l->n < 4096) {
        l->seg[l->n] = seg;
        l->off[l->n] = off;
        l->len[l->n] = len;
        l->last[l->n] = last;
        l->n++;
    }
}

Test(vx_wal, on_commit_ranges_tile_the_segments)
{
    char *dir = ts_tmpdir();
    vx_wal_opts o;
    vx_wal_opts_init(&o, dir);
    o.fsync = false;
    o.segment_max_bytes = 1500;
    commit_log *l = calloc(1, sizeof *l);
    o.on_commit = on_commit;
    o.on_commit_ctx = l;
    tw_col c = {0};
    vx_wal *w = NULL;
    cr_assert_eq(tw_open(dir, false, &c, &w, NULL, &o), 0);
    for (uint64_t i = 1; i <= 300; i += 10)
        append_n(w, i, 10);
    vx_wal_close(w);
    cr_assert_gt(l->n, 0);
    /* Per segment: ranges start after the header, follow each other, and end
     * at the file's size; last ids grow to the last one appended. */
    uint64_t expect_off = 40, seg = l->seg[0];
    for (int i = 0; i < l->n; i++) {
        if (l->seg[i] != seg) {
            char *p = seg_path(dir, (int)seg);
            struct stat sb;
            cr_assert_eq(stat(p, &sb), 0);
            cr_assert_eq((uint64_t)sb.st_size, expect_off);
            free(p);
            cr_assert_eq(l->seg[i], seg + 1);
            seg = l->seg[i];
            expect_off = 40;
        }
        cr_assert_eq(l->off[i], expect_off, "commit %d", i);
        expect_off += l->len[i];
        if (i)
            cr_assert_gt(l->last[i], l->last[i - 1]);
    }
    cr_assert_eq(l->last[l->n - 1], 300);
    cr_assert_gt(seg, 1, "segments rolled");
    free(l);
    tw_col_free(&c);
    ts_tmpdir_remove(dir);
    free(dir);
}

static int failing_record(void *ctx, const vx_wal_rec *r)
{
    (void)ctx;
    return r->id == 5 ? -ENOSPC : 0;
}

Test(vx_wal, callback_error_fails_open)
{
    char *dir = ts_tmpdir();
    tw_col c = {0};
    vx_wal *w = NULL;
    cr_assert_eq(tw_open(dir, false, &c, &w, NULL, NULL), 0);
    append_n(w, 1, 10);
    vx_wal_close(w);
    vx_wal_opts o;
    vx_wal_opts_init(&o, dir);
    vx_wal_replay cb = {NULL, failing_record, NULL};
    char err[128];
    cr_assert_eq(vx_wal_open(&o, &cb, &w, NULL, err, sizeof err), -ENOSPC);
    cr_assert(strstr(err, "on_record") != NULL, "%s", err);
    /* The directory is not locked after a failed open, and nothing was lost. */
    cr_assert_eq(tw_open(dir, false, &c, &w, NULL, NULL), 0);
    cr_assert_eq(c.n, 10);
    vx_wal_close(w);
    tw_col_free(&c);
    ts_tmpdir_remove(dir);
    free(dir);
}

/* A real write failure without mocks: a file-size limit makes pwrite fail
 * with EFBIG past 8 KiB. The WAL must fail closed (-EIO for the failing
 * group's waiter and every later append), and a reopen (without the limit)
 * must hold exactly the acknowledged records. */
Test(vx_wal, write_failure_fails_closed)
{
    char *dir = ts_tmpdir();
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {8192, 8192};
        if (setrlimit(RLIMIT_FSIZE, &rl) != 0)
            _exit(2);
        vx_wal_opts o;
        vx_wal_opts_init(&o, dir);
        vx_wal *w = NULL;
        if (vx_wal_open(&o, NULL, &w, NULL, NULL, 0) != 0)
            _exit(3);
        uint8_t buf[100];
        memset(buf, 'x', sizeof buf);
        uint64_t acked = 0, id = 0;
        int rc;
        while ((rc = vx_wal_append_sync(w, 1, buf, sizeof buf, &id)) == 0)
            acked = id;
        if (rc != -EIO)
            _exit(4);
        vx_wal_info in;
        vx_wal_info_get(w, &in);
        if (!in.failed || in.durable_id != acked)
            _exit(5);
        if (vx_wal_append(w, 1, buf, 1, NULL) != -EIO || vx_wal_wait(w, id, 0) != -EIO)
            _exit(6);
        vx_wal_snap *s = NULL;
        if (vx_wal_snapshot_begin(w, acked, &s) != -EIO)
            _exit(7);
        vx_wal_close(w);
        if (write(fds[1], &acked, sizeof acked) != sizeof acked)
            _exit(8);
        _exit(0);
    }
    close(fds[1]);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
    uint64_t acked = 0;
    cr_assert_eq(read(fds[0], &acked, sizeof acked), (ssize_t)sizeof acked);
    close(fds[0]);
    cr_assert_gt(acked, 10);
    tw_col c = {0};
    vx_wal *w = NULL;
    vx_wal_replay_stats st;
    cr_assert_eq(tw_open(dir, false, &c, &w, &st, NULL), 0);
    cr_assert_eq(c.n, acked);
    cr_assert_eq(st.last_id, acked);
    for (size_t i = 0; i < c.n; i++)
        cr_assert(c.r[i].len == 100 && c.r[i].payload[99] == 'x');
    uint64_t id;
    cr_assert_eq(vx_wal_append_sync(w, 1, "y", 1, &id), 0);
    cr_assert_eq(id, acked + 1);
    vx_wal_close(w);
    tw_col_free(&c);
    ts_tmpdir_remove(dir);
    free(dir);
}
