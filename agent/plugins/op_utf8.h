/*
 * op_utf8: turns a stream of text pieces, cut anywhere, into pieces of valid
 * UTF-8. A plugin streams what its tokenizer decodes, and one token may end
 * in the middle of a multi-byte character (byte-level BPE splits emoji and
 * CJK characters across tokens); the client must get the character whole,
 * not two U+FFFD.
 *
 * Per stream, an op_utf8_tail holds the start (1 to 3 bytes) of a sequence
 * cut at the end of a piece; the next piece is read as its continuation.
 * Bytes that can never be valid UTF-8 become U+FFFD, one per maximal subpart
 * (Unicode 15, section 3.9, "U+FFFD Substitution of Maximal Subparts"), so
 * the output is always valid.
 *
 * Threading: none; one tail per stream, used by one producer at a time.
 */
#ifndef OP_UTF8_H
#define OP_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct op_utf8_tail {
    unsigned char b[3]; /* the start of a sequence, waiting for its continuation */
    uint8_t n;          /* 0..3 */
} op_utf8_tail;

/* The buffer op_utf8_stream needs for a piece of len bytes: every byte may
 * turn into a 3-byte U+FFFD, tail included, plus a NUL. */
#define OP_UTF8_STREAM_CAP(len) (((size_t)(len) + 3) * 3 + 1)

/*
 * Writes into out (at least OP_UTF8_STREAM_CAP(len) bytes) the valid UTF-8
 * of tail + text: whole sequences as they are, invalid bytes as U+FFFD, and
 * keeps an incomplete sequence at the end in tail, unless final is true (the
 * stream ends: then it becomes U+FFFD too). text may be NULL when len is 0.
 * Returns the bytes written (out is also NUL-terminated); 0 when everything
 * was kept for later.
 */
size_t op_utf8_stream(op_utf8_tail *tail, const char *text, size_t len, bool final, char *out);

/* True if s[0..len) is valid UTF-8 (no surrogates, no overlongs, <= U+10FFFF). */
bool op_utf8_valid(const char *s, size_t len);

#endif
