/*
 * pl_log: structured logging, one line per event, to stderr.
 *
 * A line is either key=value ("logfmt") or one JSON object, chosen once at
 * start-up and changeable on reload:
 *
 *   ts=2026-11-23T14:00:00.123Z level=info event=http.listen addr=127.0.0.1:8787
 *
 * Threading: every function may be called from any thread. A line is built in
 * a stack buffer and written with one write(2), so lines from different
 * threads never interleave. Lines longer than PL_LOG_LINE_MAX are truncated.
 *
 * Usage: PL_LOG_INFO("plugin.refused", "path", path, "reason", why);
 * The variadic tail is pairs of (const char *key, const char *value) and is
 * closed by the macros with a NULL. Values are quoted and escaped as needed.
 */
#ifndef PL_LOG_H
#define PL_LOG_H

#include <stdbool.h>

#define PL_LOG_LINE_MAX 4096

typedef enum pl_log_level {
    PL_LOG_DEBUG = 0,
    PL_LOG_INFO = 1,
    PL_LOG_WARN = 2,
    PL_LOG_ERROR = 3,
    PL_LOG_OFF = 4,
} pl_log_level;

typedef enum pl_log_format {
    PL_LOG_FORMAT_KV = 0,
    PL_LOG_FORMAT_JSON = 1,
} pl_log_format;

/* Set the minimum level and format; cheap, atomic, safe at any time. */
void pl_log_configure(pl_log_level level, pl_log_format format);
pl_log_level pl_log_get_level(void);
bool pl_log_enabled(pl_log_level level);

/* Parse "debug" | "info" | "warn" | "error" | "off"; returns -1 if unknown. */
int pl_log_level_parse(const char *name);
const char *pl_log_level_name(pl_log_level level);

/* Redirect output (tests); fd -1 restores stderr. */
void pl_log_set_fd(int fd);

/* Emit one event. The tail is (key, value) string pairs ended by NULL. */
void pl_log_event(pl_log_level level, const char *event, ...)
    __attribute__((sentinel));

#define PL_LOG_DEBUG(ev, ...) pl_log_event(PL_LOG_DEBUG, ev, ##__VA_ARGS__, (const char *)0)
#define PL_LOG_INFO(ev, ...) pl_log_event(PL_LOG_INFO, ev, ##__VA_ARGS__, (const char *)0)
#define PL_LOG_WARN(ev, ...) pl_log_event(PL_LOG_WARN, ev, ##__VA_ARGS__, (const char *)0)
#define PL_LOG_ERROR(ev, ...) pl_log_event(PL_LOG_ERROR, ev, ##__VA_ARGS__, (const char *)0)

#endif
