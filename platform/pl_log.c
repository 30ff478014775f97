#include "platform/pl_log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static _Atomic int g_level = PL_LOG_INFO;
static _Atomic int g_format = PL_LOG_FORMAT_KV;
static _Atomic int g_fd = -1;

static const char *const level_names[] = {"debug", "info", "warn", "error", "off"};

void pl_log_configure(pl_log_level level, pl_log_format format)
{
    atomic_store(&g_level, (int)level);
    atomic_store(&g_format, (int)format);
}

pl_log_level pl_log_get_level(void) { return (pl_log_level)atomic_load(&g_level); }

bool pl_log_enabled(pl_log_level level) { return (int)level >= atomic_load(&g_level); }

int pl_log_level_parse(const char *name)
{
    for (int i = 0; i < (int)(sizeof level_names / sizeof level_names[0]); i++)
        if (strcmp(name, level_names[i]) == 0)
            return i;
    return -1;
}

const char *pl_log_level_name(pl_log_level level)
{
    return (unsigned)level <= PL_LOG_OFF ? level_names[level] : "?";
}

void pl_log_set_fd(int fd) { atomic_store(&g_fd, fd); }

/* A bounded appender: once full, further output is dropped and the line is
 * marked truncated rather than overflowing. */
typedef struct line {
    char buf[PL_LOG_LINE_MAX];
    size_t len;
} line;

static void put(line *l, const char *s, size_t n)
{
    size_t room = sizeof l->buf - 1 - l->len; /* keep one byte for '\n' */
    if (n > room)
        n = room;
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static void puts_(line *l, const char *s) { put(l, s, strlen(s)); }

static bool kv_needs_quotes(const char *v)
{
    if (*v == '\0')
        return true;
    for (const unsigned char *p = (const unsigned char *)v; *p; p++)
        if (*p <= ' ' || *p == '"' || *p == '=' || *p == '\\' || *p >= 0x7f)
            return true;
    return false;
}

/* Escape for both formats: JSON string escaping is a superset of what logfmt
 * needs inside quotes. Bytes >= 0x80 pass through (UTF-8). */
static void put_escaped(line *l, const char *v)
{
    static const char hex[] = "0123456789abcdef";
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        char esc[7];
        switch (*p) {
        case '"': puts_(l, "\\\""); break;
        case '\\': puts_(l, "\\\\"); break;
        case '\n': puts_(l, "\\n"); break;
        case '\r': puts_(l, "\\r"); break;
        case '\t': puts_(l, "\\t"); break;
        default:
            if (*p < 0x20 || *p == 0x7f) {
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[*p >> 4];
                esc[5] = hex[*p & 15];
                put(l, esc, 6);
            } else {
                put(l, (const char *)p, 1);
            }
        }
    }
}

static void put_timestamp(line *l)
{
    struct timespec ts;
    struct tm tm;
    char buf[40];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, sizeof buf - n, ".%03ldZ", ts.tv_nsec / 1000000L);
    puts_(l, buf);
}

void pl_log_event(pl_log_level level, const char *event, ...)
{
    if (!pl_log_enabled(level) || level >= PL_LOG_OFF)
        return;
    bool json = atomic_load(&g_format) == PL_LOG_FORMAT_JSON;
    line l;
    l.len = 0;
    if (json) {
        puts_(&l, "{\"ts\":\"");
        put_timestamp(&l);
        puts_(&l, "\",\"level\":\"");
        puts_(&l, level_names[level]);
        puts_(&l, "\",\"event\":\"");
        put_escaped(&l, event);
        puts_(&l, "\"");
    } else {
        puts_(&l, "ts=");
        put_timestamp(&l);
        puts_(&l, " level=");
        puts_(&l, level_names[level]);
        puts_(&l, " event=");
        puts_(&l, event);
    }
    va_list ap;
    va_start(ap, event);
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (!k)
            break;
        const char *v = va_arg(ap, const char *);
        if (!v)
            v = "";
        if (json) {
            puts_(&l, ",\"");
            put_escaped(&l, k);
            puts_(&l, "\":\"");
            put_escaped(&l, v);
            puts_(&l, "\"");
        } else {
            puts_(&l, " ");
            puts_(&l, k);
            puts_(&l, "=");
            if (kv_needs_quotes(v)) {
                puts_(&l, "\"");
                put_escaped(&l, v);
                puts_(&l, "\"");
            } else {
                puts_(&l, v);
            }
        }
    }
    va_end(ap);
    if (json)
        puts_(&l, "}");
    l.buf[l.len++] = '\n';
    int fd = atomic_load(&g_fd);
    ssize_t w = write(fd >= 0 ? fd : STDERR_FILENO, l.buf, l.len);
    (void)w; /* nowhere left to report a failed log write */
}
