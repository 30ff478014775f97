#include "platform/pl_time.h"

#include <stdio.h>
#include <time.h>

uint64_t pl_time_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int64_t pl_time_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

char *pl_time_format_rfc3339(int64_t wall_ms, char *buf, unsigned long size)
{
    time_t secs = (time_t)(wall_ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t n = strftime(buf, size, "%Y-%m-%dT%H:%M:%S", &tm);
    if (n > 0 && n < size)
        snprintf(buf + n, size - n, ".%03dZ", (int)(wall_ms % 1000));
    return buf;
}
