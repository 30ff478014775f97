/*
 * kill -9 durability of the log store: a child appends from several
 * threads and, after each ls_wait returns, writes the acknowledged id (and
 * the body it carried) to a pipe; the parent SIGKILLs it at a random
 * moment, reopens the store and checks that every acknowledged record is
 * there, intact. Several rounds on the same directory, so recovery also
 * runs over the torn tails of earlier rounds.
 */
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>

#include "test_logstore_util.h"
#include "ts_crash.h"

static void quiet(void)
{
    pl_log_configure(PL_LOG_OFF, PL_LOG_FORMAT_KV);
}

TestSuite(logstore_crash, .init = quiet, .timeout = 120);

/* One pipe line: "<26-char id> <body tag, padded>\n", well under PIPE_BUF,
 * so lines from several threads never interleave. */
#define TAG_LEN 40
#define LINE_LEN (LS_ID_LEN + 1 + TAG_LEN + 1)

typedef struct child_ctx {
    ls_store *s;
    int fd;
    int thread;
    int round;
} child_ctx;

static void *child_thread(void *arg)
{
    child_ctx *c = arg;
    /* Odd threads wait for every record; even ones append a few, then wait
     * for the last (bigger groups, and acks for records in flight). */
    int batch = c->thread % 2 ? 1 : 6;
    for (long i = 0;; i += batch) {
        char lines[6][LINE_LEN + 1];
        uint64_t seq = 0;
        int n = 0;
        for (int k = 0; k < batch; k++) {
            tl_rec t;
            tl_make(&t, (int)((i + k) % 1000), 0);
            char tag[TAG_LEN + 1];
            memset(tag, '.', TAG_LEN);
            tag[TAG_LEN] = '\0';
            char head[TAG_LEN];
            int hl = snprintf(head, sizeof head, "r%d-t%d-n%ld-", c->round % 10, c->thread % 10,
                              (i + k) % 100000000);
            memcpy(tag, head, (size_t)hl < sizeof head ? (size_t)hl : sizeof head - 1);
            t.r.request_body = tag;
            t.r.request_body_len = TAG_LEN;
            int rc = ls_append(c->s, &t.r, &seq);
            if (rc == -EAGAIN) {
                struct timespec ts = {0, 200000};
                nanosleep(&ts, NULL);
                continue;
            }
            if (rc != 0)
                _exit(10);
            snprintf(lines[n++], LINE_LEN + 1, "%s %s\n", t.r.id, tag);
        }
        if (n == 0)
            continue;
        if (ls_wait(c->s, seq, -1) != 0)
            _exit(11);
        for (int k = 0; k < n; k++)
            if (write(c->fd, lines[k], LINE_LEN) != LINE_LEN)
                _exit(12);
    }
    return NULL;
}

static void child_main(const char *dir, int fd, int round)
{
    ls_opts o;
    ls_opts_init(&o, dir);
    o.commit_interval_us = 500;
    o.segment_max_bytes = 256 << 10; /* a few segment rolls per round */
    ls_store *s = NULL;
    if (ls_open(&o, &s, NULL, 0) != 0)
        _exit(2);
    enum { THREADS = 4 };
    pthread_t th[THREADS];
    child_ctx c[THREADS];
    for (int i = 0; i < THREADS; i++) {
        c[i] = (child_ctx){s, fd, i, round};
        pthread_create(&th[i], NULL, child_thread, &c[i]);
    }
    for (;;)
        pause();
}

Test(logstore_crash, kill9_keeps_every_acknowledged_record)
{
    char *dir = ts_tmpdir();
    ts_acked all;
    ts_acked_init(&all, LINE_LEN);
    srand((unsigned)time(NULL));
    for (int round = 0; round < 4; round++) {
        ts_crash_round(dir, round, child_main, &all);

        ls_store *s = tl_open(dir);
        ls_stats st;
        ls_stats_get(s, &st);
        cr_assert_geq(st.records_live, all.n, "round %d", round);
        cr_assert_eq(st.corrupt_skipped, 0, "a kill tears only the tail");
        for (size_t i = 0; i < all.n; i++) {
            char id[LS_ID_LEN + 1];
            memcpy(id, ts_acked_line(&all, i), LS_ID_LEN);
            id[LS_ID_LEN] = '\0';
            json_t *j = NULL;
            int rc = ls_get(s, "acct", NULL, id, &j);
            cr_assert_eq(rc, 0, "round %d: acknowledged %s lost (%d)", round, id, rc);
            const char *body = json_string_value(json_object_get(j, "request_body"));
            cr_assert_not_null(body);
            cr_assert_eq(strncmp(body, ts_acked_line(&all, i) + LS_ID_LEN + 1, TAG_LEN), 0,
                         "round %d: %s body %s", round, id, body);
            json_decref(j);
        }
        ls_close(s);
        cr_log_info("round %d: %zu acknowledged in total, %" PRIu64 " records, %" PRIu64
                    " bytes truncated",
                    round, all.n, st.records_live, st.truncated_bytes);
    }
    ts_acked_free(&all);
    ts_tmpdir_remove(dir);
    free(dir);
}
