/*
 * kill -9 durability of vx_wal: a forked child appends from several threads
 * (some waiting for every record, some for batches; small segments so they
 * roll; a snapshot now and then) and, after each wait returns 0, writes the
 * acknowledged ids and their payload tags to a pipe. The parent SIGKILLs it
 * at a random moment, reopens and checks: every acknowledged id is there,
 * in order (ids gapless from the snapshot on), with the payload it carried.
 * Several rounds on one directory, so recovery also runs over earlier torn
 * tails.
 */
#include <pthread.h>
#include <signal.h>
#include <time.h>

#include "test_vx_wal_util.h"
#include "ts_crash.h"

TestSuite(vx_wal_crash, .timeout = 120);

/* Pipe line: "<20-digit id> <tag 24>\n" = 46 bytes, atomic under PIPE_BUF. */
#define TAG_LEN 24
#define LINE_LEN (20 + 1 + TAG_LEN + 1)

typedef struct child_ctx {
    vx_wal *w;
    int fd, thread, round;
} child_ctx;

static pthread_mutex_t g_snap_mu = PTHREAD_MUTEX_INITIALIZER;

static void *child_thread(void *arg)
{
    child_ctx *c = arg;
    int batch = c->thread % 2 ? 1 : 5;
    for (long i = 0;; i += batch) {
        char lines[5][LINE_LEN + 1];
        uint64_t id = 0;
        int n = 0;
        for (int k = 0; k < batch; k++) {
            char tag[64];
            memset(tag, '.', sizeof tag);
            int hl = snprintf(tag, sizeof tag, "r%d-t%d-n%ld", c->round % 10, c->thread % 10,
                              (i + k) % 100000000000L);
            tag[hl] = '.';
            tag[TAG_LEN] = '\0';
            int rc = vx_wal_append(c->w, (uint8_t)(1 + c->thread), tag, TAG_LEN, &id);
            if (rc == -EAGAIN) {
                struct timespec ts = {0, 200000};
                nanosleep(&ts, NULL);
                continue;
            }
            if (rc != 0)
                _exit(10);
            snprintf(lines[n++], LINE_LEN + 1, "%020llu %.24s\n", (unsigned long long)id, tag);
        }
        if (n == 0)
            continue;
        if (vx_wal_wait(c->w, id, -1) != 0)
            _exit(11);
        for (int k = 0; k < n; k++)
            if (write(c->fd, lines[k], LINE_LEN) != LINE_LEN)
                _exit(12);
        /* Thread 0 snapshots now and then (an empty blob: the test checks
         * the log, and that a snapshot's id never hides an acked record). */
        if (c->thread == 0 && i % 500 == 0 && i > 0) {
            pthread_mutex_lock(&g_snap_mu);
            vx_wal_snap *s = NULL;
            if (vx_wal_snapshot_begin(c->w, id, &s) == 0) {
                char blob[16];
                snprintf(blob, sizeof blob, "upto %llu", (unsigned long long)id);
                if (vx_wal_snapshot_write(s, blob, sizeof blob) != 0)
                    _exit(13);
                if (vx_wal_snapshot_commit(s) != 0)
                    _exit(14);
            }
            pthread_mutex_unlock(&g_snap_mu);
        }
    }
    return NULL;
}

static void child_main(const char *dir, int fd, int round)
{
    vx_wal_opts o;
    vx_wal_opts_init(&o, dir);
    o.segment_max_bytes = 64 << 10;
    vx_wal *w = NULL;
    if (vx_wal_open(&o, NULL, &w, NULL, NULL, 0) != 0)
        _exit(2);
    enum { THREADS = 4 };
    pthread_t th[THREADS];
    child_ctx c[THREADS];
    for (int i = 0; i < THREADS; i++) {
        c[i] = (child_ctx){w, fd, i, round};
        pthread_create(&th[i], NULL, child_thread, &c[i]);
    }
    for (;;)
        pause();
}

Test(vx_wal_crash, kill9_keeps_every_acknowledged_mutation)
{
    char *dir = ts_tmpdir();
    ts_acked all;
    ts_acked_init(&all, LINE_LEN);
    srand((unsigned)time(NULL));
    for (int round = 0; round < 4; round++) {
        ts_crash_round(dir, round, child_main, &all);

        tw_col c = {0};
        vx_wal *w = NULL;
        vx_wal_replay_stats st;
        cr_assert_eq(tw_open(dir, true, &c, &w, &st, NULL), 0, "round %d", round);
        cr_assert_eq(st.corrupt_truncated_bytes, 0);
        /* Replayed ids are gapless from the snapshot on. */
        for (size_t i = 0; i < c.n; i++)
            cr_assert_eq(c.r[i].id, st.snapshot_id + 1 + i, "round %d: gap at %zu", round, i);
        cr_assert_eq(st.last_id, st.snapshot_id + c.n);
        if (c.snaps_loaded)
            cr_assert_eq(strncmp((char *)c.snap, "upto ", 5), 0);
        /* Every acknowledged id of any round is there (in the snapshot's
         * range or replayed with its exact payload). */
        for (size_t i = 0; i < all.n; i++) {
            unsigned long long id = strtoull(ts_acked_line(&all, i), NULL, 10);
            cr_assert_leq(id, st.last_id, "round %d: acknowledged %llu lost", round, id);
            if (id <= st.snapshot_id)
                continue;
            const tw_rec *r = &c.r[id - st.snapshot_id - 1];
            cr_assert_eq(r->len, TAG_LEN);
            cr_assert_eq(memcmp(r->payload, ts_acked_line(&all, i) + 21, TAG_LEN), 0,
                         "round %d: id %llu payload differs", round, id);
        }
        cr_log_info("round %d: %zu acknowledged so far, snapshot %llu, %llu replayed, %llu "
                    "bytes torn, open %.1f ms",
                    round, all.n, (unsigned long long)st.snapshot_id,
                    (unsigned long long)st.records, (unsigned long long)st.truncated_bytes, st.ms);
        vx_wal_close(w);
        tw_col_free(&c);
    }
    ts_acked_free(&all);
    ts_tmpdir_remove(dir);
    free(dir);
}
