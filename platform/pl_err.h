/*
 * pl_err: the one way modules write an error message into a caller's
 * buffer (char *err, size_t errlen), as most module APIs here report
 * errors: a formatted, NUL-terminated, truncated message.
 *
 * Thread-safe (writes only the caller's buffer); err NULL or errlen 0 is a
 * no-op, so callers that do not want the message pass NULL, 0.
 */
#ifndef PL_ERR_H
#define PL_ERR_H

#include <stddef.h>

void pl_errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
