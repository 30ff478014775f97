/*
 * pl_file: whole-file reads and directory helpers.
 *
 * Errors are negative errno values; the caller owns returned buffers and frees
 * them with free(). Thread-safe.
 */
#ifndef PL_FILE_H
#define PL_FILE_H

#include <stddef.h>

/* Reads at most max_bytes of path into a NUL-terminated heap buffer.
 * Returns 0, -EFBIG if larger than max_bytes, or another -errno. */
int pl_file_read_all(const char *path, size_t max_bytes, char **out, size_t *out_len);
/* mkdir -p with mode 0750; returns 0 or -errno. */
int pl_file_mkdirs(const char *path);

#endif
