/*
 * ts_crash: see ts_crash.h.
 */
#include "ts_crash.h"

#include <criterion/criterion.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

void ts_acked_init(ts_acked *a, size_t line_len)
{
    memset(a, 0, sizeof *a);
    a->line_len = line_len;
    a->partial = malloc(line_len);
    cr_assert_not_null(a->partial);
}

void ts_acked_free(ts_acked *a)
{
    free(a->lines);
    free(a->partial);
    memset(a, 0, sizeof *a);
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Reads what is there (waiting up to timeout_ms); returns bytes read. */
static ssize_t read_lines(int fd, ts_acked *a, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, timeout_ms) <= 0)
        return 0;
    char buf[8192];
    ssize_t n = read(fd, buf, sizeof buf);
    for (ssize_t i = 0; i < n; i++) {
        a->partial[a->plen++] = buf[i];
        if (a->plen == a->line_len) {
            cr_assert_eq(a->partial[a->line_len - 1], '\n', "a torn report line");
            if (a->n == a->cap) {
                a->cap = a->cap ? a->cap * 2 : 4096;
                a->lines = realloc(a->lines, a->cap * (a->line_len + 1));
                cr_assert_not_null(a->lines);
            }
            char *dst = a->lines + a->n * (a->line_len + 1);
            memcpy(dst, a->partial, a->line_len);
            dst[a->line_len] = '\0';
            a->n++;
            a->plen = 0;
        }
    }
    return n;
}

void ts_crash_round(const char *dir, int round, void (*child)(const char *dir, int fd, int round),
                    ts_acked *a)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        close(fds[0]);
        child(dir, fds[1], round);
        _exit(3); /* child must not return */
    }
    close(fds[1]);
    size_t before = a->n;
    uint64_t t0 = mono_ms();
    while (a->n == before && mono_ms() - t0 < 20000)
        read_lines(fds[0], a, 100);
    cr_assert_gt(a->n, before, "round %d: the child acknowledged nothing", round);
    uint64_t kill_at = mono_ms() + 50 + (uint64_t)(rand() % 400);
    while (mono_ms() < kill_at)
        read_lines(fds[0], a, 5);
    kill(pid, SIGKILL);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
              "round %d: the child died by itself: status %d", round, status);
    while (read_lines(fds[0], a, 50) > 0) /* what it wrote before dying */
        ;
    close(fds[0]);
}
