/*
 * nn_err: the error-message convention of the model plugins' internals:
 * functions that can fail take (char *err, size_t errlen) and write one
 * printf-formatted line there for the operator or the API client.
 */
#ifndef NN_ERR_H
#define NN_ERR_H

#include <stddef.h>

/* Writes the message into err[0, errlen) (nothing when err is NULL or
 * errlen 0; truncated to fit, always NUL-terminated) and returns -1, so that
 * `return nn_errf(err, errlen, "...", ...);` reports and fails in one line. */
int nn_errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
