/*
 * kill -9 durability of the log store: a child appends from several
 * threads and, after each ls_wait returns, writes the acknowledged id (and
 * the body it carried) to a pipe; the parent SIGKILLs it at a random
 * moment, reopens the store and checks that every acknowledged record is
 * there, intact. Several rounds on the same directory, so recovery also
 * runs over the torn tails of earlier rounds.
 */
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>

#include "test_logstore_util.h"

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

typedef struct acked {
    char (*lines)[LINE_LEN + 1];
    size_t n, cap;
} acked;

static void read_lines(int fd, acked *a, char *partial, size_t *plen, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, timeout_ms) <= 0)
        return;
    char buf[8192];
    ssize_t n = read(fd, buf, sizeof buf);
    for (ssize_t i = 0; i < n; i++) {
        partial[(*plen)++] = buf[i];
        if (*plen == LINE_LEN) {
            cr_assert_eq(partial[LINE_LEN - 1], '\n');
            if (a->n == a->cap) {
                a->cap = a->cap ? a->cap * 2 : 4096;
                a->lines = realloc(a->lines, a->cap * sizeof *a->lines);
            }
            memcpy(a->lines[a->n], partial, LINE_LEN);
            a->lines[a->n][LINE_LEN] = '\0';
            a->n++;
            *plen = 0;
        }
    }
}

Test(logstore_crash, kill9_keeps_every_acknowledged_record)
{
    char *dir = ts_tmpdir();
    acked all = {0};
    srand((unsigned)time(NULL));
    for (int round = 0; round < 4; round++) {
        int fds[2];
        cr_assert_eq(pipe(fds), 0);
        pid_t pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
            close(fds[0]);
            child_main(dir, fds[1], round);
        }
        close(fds[1]);
        char partial[LINE_LEN];
        size_t plen = 0;
        size_t before = all.n;
        /* Wait for the first acknowledgement, then kill at a random moment. */
        uint64_t t0 = pl_time_mono_ns();
        while (all.n == before && pl_time_mono_ns() - t0 < 20000000000ull)
            read_lines(fds[0], &all, partial, &plen, 100);
        cr_assert_gt(all.n, before, "child acknowledged nothing");
        uint64_t kill_at = pl_time_mono_ns() + (uint64_t)(50 + rand() % 400) * 1000000u;
        while (pl_time_mono_ns() < kill_at)
            read_lines(fds[0], &all, partial, &plen, 5);
        kill(pid, SIGKILL);
        int status;
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
                  "child died by itself: status %d", status);
        for (;;) { /* what it wrote before dying */
            size_t n0 = all.n, p0 = plen;
            read_lines(fds[0], &all, partial, &plen, 50);
            if (all.n == n0 && plen == p0)
                break;
        }
        close(fds[0]);

        ls_store *s = tl_open(dir);
        ls_stats st;
        ls_stats_get(s, &st);
        cr_assert_geq(st.records_live, all.n, "round %d", round);
        cr_assert_eq(st.corrupt_skipped, 0, "a kill tears only the tail");
        for (size_t i = 0; i < all.n; i++) {
            char id[LS_ID_LEN + 1];
            memcpy(id, all.lines[i], LS_ID_LEN);
            id[LS_ID_LEN] = '\0';
            json_t *j = NULL;
            int rc = ls_get(s, "acct", NULL, id, &j);
            cr_assert_eq(rc, 0, "round %d: acknowledged %s lost (%d)", round, id, rc);
            const char *body = json_string_value(json_object_get(j, "request_body"));
            cr_assert_not_null(body);
            cr_assert_eq(strncmp(body, all.lines[i] + LS_ID_LEN + 1, TAG_LEN), 0,
                         "round %d: %s body %s", round, id, body);
            json_decref(j);
        }
        ls_close(s);
        cr_log_info("round %d: %zu acknowledged in total, %" PRIu64 " records, %" PRIu64
                    " bytes truncated",
                    round, all.n, st.records_live, st.truncated_bytes);
    }
    free(all.lines);
    ts_tmpdir_remove(dir);
    free(dir);
}
