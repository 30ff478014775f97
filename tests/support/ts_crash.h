/*
 * ts_crash: the kill -9 harness of the durability tests. A forked child
 * writes to a store from several threads and, after each write it was told
 * is durable, reports it as one fixed-length line on a pipe; the parent
 * kills it at a random moment and keeps every line it got, so the test can
 * reopen the store and check that each acknowledged write is there.
 * Test code only: asserts on failures.
 */
#ifndef TS_CRASH_H
#define TS_CRASH_H

#include <stddef.h>

/* Acknowledged lines, each line_len bytes ending in '\n'. */
typedef struct ts_acked {
    size_t line_len;
    char *lines;      /* n lines of line_len + 1 bytes (NUL-terminated) */
    size_t n, cap;
    char *partial;    /* a line being received */
    size_t plen;
} ts_acked;

void ts_acked_init(ts_acked *a, size_t line_len);
void ts_acked_free(ts_acked *a);
static inline const char *ts_acked_line(const ts_acked *a, size_t i)
{
    return a->lines + i * (a->line_len + 1);
}

/* One round: forks child(dir, fd, round), which writes and reports on fd and
 * must never return; waits (up to 20 s) for its first line, lets it run
 * 50-450 ms more, SIGKILLs it (asserting it did not die by itself), and
 * collects every complete line it wrote. */
void ts_crash_round(const char *dir, int round, void (*child)(const char *dir, int fd, int round),
                    ts_acked *a);

#endif
