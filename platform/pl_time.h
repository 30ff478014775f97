/*
 * pl_time: clocks. Monotonic time for durations and deadlines, wall time for
 * timestamps shown to users. All functions are thread-safe and allocation-free.
 */
#ifndef PL_TIME_H
#define PL_TIME_H

#include <stdint.h>

/* Monotonic nanoseconds since an arbitrary origin (CLOCK_MONOTONIC). */
uint64_t pl_time_mono_ns(void);
/* Wall-clock milliseconds since the Unix epoch (CLOCK_REALTIME). */
int64_t pl_time_wall_ms(void);
/* Formats a wall time in ms as RFC 3339 UTC with milliseconds into buf
 * (at least 32 bytes); returns buf. */
char *pl_time_format_rfc3339(int64_t wall_ms, char *buf, unsigned long size);

#endif
