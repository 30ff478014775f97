/*
 * kill -9 durability of vx_index: a forked child upserts from several
 * threads (batches of 1 and 5 vectors, snapshots every 150 mutations so
 * they happen mid-run) and, after each upsert returned 0 (acknowledged =
 * durable), reports the mutation id and the vector ids on a pipe. The
 * parent SIGKILLs it at a random moment (ts_crash), reopens the index and
 * checks that every acknowledged vector is there with its exact values and
 * that processed_upto covers the last acknowledged mutation. Several rounds
 * on one directory, so recovery also runs over earlier torn tails and
 * snapshots.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "test_support.h"
#include "ts_crash.h"
#include "vector/vx_index.h"

TestSuite(vx_index_crash, .timeout = 180);

#define DIM 8
#define ID_LEN 24
#define LINE_LEN (20 + 1 + ID_LEN + 1) /* "<mutation id> <vector id padded>\n" */

/* The values of a vector are a function of its id. */
static void values_of(const char *id, float *v)
{
    uint64_t h = 1469598103934665603ull;
    for (const char *p = id; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    for (int i = 0; i < DIM; i++) {
        h ^= h << 13;
        h ^= h >> 7;
        h ^= h << 17;
        v[i] = (float)((double)(h >> 11) / 9007199254740992.0 - 0.5);
    }
}

static vx_index_opts crash_opts(void)
{
    vx_index_opts o;
    vx_index_opts_init(&o);
    o.snapshot_every_mutations = 150;
    return o;
}

typedef struct cctx {
    vx_index *x;
    int fd, thread, round;
} cctx;

static void *child_thread(void *arg)
{
    cctx *c = arg;
    int batch = c->thread % 2 ? 1 : 5;
    for (long i = 0;; i += batch) {
        char ids[5][ID_LEN + 1];
        float vals[5][DIM];
        vx_vector_in v[5];
        json_t *md = json_pack("{s:i}", "t", c->thread);
        for (int k = 0; k < batch; k++) {
            snprintf(ids[k], sizeof ids[k], "r%d-t%d-n%ld", c->round % 10, c->thread % 10,
                     (i + k) % 100000000000L);
            values_of(ids[k], vals[k]);
            v[k] = (vx_vector_in){ids[k], vals[k], k % 2 ? "ns" : NULL, md};
        }
        uint64_t mid = 0;
        char err[128];
        int rc = vx_index_upsert(c->x, v, (size_t)batch, &mid, err, sizeof err);
        json_decref(md);
        if (rc == -EAGAIN)
            continue;
        if (rc != 0)
            _exit(10);
        for (int k = 0; k < batch; k++) {
            char line[LINE_LEN + 1];
            memset(line, ' ', sizeof line);
            snprintf(line, 21, "%020llu", (unsigned long long)mid);
            line[20] = ' ';
            memcpy(line + 21, ids[k], strlen(ids[k]));
            line[LINE_LEN - 1] = '\n';
            if (write(c->fd, line, LINE_LEN) != LINE_LEN)
                _exit(12);
        }
    }
    return NULL;
}

static void child_main(const char *dir, int fd, int round)
{
    vx_index_opts o = crash_opts();
    vx_index *x = NULL;
    if (vx_index_open(dir, &o, &x, NULL, 0) != 0)
        _exit(2);
    enum { THREADS = 3 };
    pthread_t th[THREADS];
    cctx c[THREADS];
    for (int i = 0; i < THREADS; i++) {
        c[i] = (cctx){x, fd, i, round};
        pthread_create(&th[i], NULL, child_thread, &c[i]);
    }
    for (;;)
        pause();
}

Test(vx_index_crash, kill9_keeps_every_acknowledged_vector)
{
    char *root = ts_tmpdir();
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/idx", root);
    vx_index_config cfg;
    memset(&cfg, 0, sizeof cfg);
    snprintf(cfg.name, sizeof cfg.name, "crash");
    cfg.dimensions = DIM;
    cfg.metric = VX_COSINE;
    vx_index_opts o = crash_opts();
    vx_index *x = NULL;
    char err[256] = "";
    cr_assert_eq(vx_index_create(dir, &cfg, &o, &x, err, sizeof err), 0, "%s", err);
    vx_index_unref(x);

    ts_acked all;
    ts_acked_init(&all, LINE_LEN);
    srand((unsigned)time(NULL));
    for (int round = 0; round < 3; round++) {
        ts_crash_round(dir, round, child_main, &all);
        err[0] = '\0';
        int rc = vx_index_open(dir, &o, &x, err, sizeof err);
        cr_assert_eq(rc, 0, "round %d: reopen: %s", round, err);
        vx_index_info info;
        vx_index_info_get(x, &info);
        unsigned long long max_acked = 0;
        for (size_t i = 0; i < all.n; i++) {
            const char *line = ts_acked_line(&all, i);
            unsigned long long mid = strtoull(line, NULL, 10);
            if (mid > max_acked)
                max_acked = mid;
            char id[ID_LEN + 1];
            memcpy(id, line + 21, ID_LEN);
            id[ID_LEN] = '\0';
            for (int k = ID_LEN - 1; k >= 0 && id[k] == ' '; k--)
                id[k] = '\0';
            const char *ids[1] = {id};
            vx_match *m = NULL;
            size_t n = 0;
            cr_assert_eq(vx_index_get(x, ids, 1, &m, &n, err, sizeof err), 0);
            cr_assert_eq(n, 1, "round %d: acknowledged vector %s (mutation %llu) lost", round, id,
                         mid);
            float want[DIM];
            values_of(id, want);
            cr_assert_eq(memcmp(m[0].values, want, sizeof want), 0, "round %d: %s values", round,
                         id);
            vx_matches_free(m, n);
        }
        cr_assert_geq(info.processed_upto, max_acked, "round %d: processed_upto %llu < acked %llu",
                      round, (unsigned long long)info.processed_upto, max_acked);
        cr_assert_geq(info.vector_count, all.n);
        cr_log_info("round %d: %zu acknowledged vectors, %llu stored, snapshot %llu, %llu replayed, "
                    "open %.1f ms",
                    round, all.n, (unsigned long long)info.vector_count,
                    (unsigned long long)info.snapshot_id,
                    (unsigned long long)info.replayed_records, info.open_ms);
        vx_index_unref(x);
    }
    ts_acked_free(&all);
    ts_tmpdir_remove(root);
    free(root);
}
