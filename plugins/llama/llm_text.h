/*
 * llm_text: assembles a request's generated text from token pieces, and
 * decides how much of it may be streamed.
 *
 * - UTF-8: pieces are bytes (a token may carry half a character). The text
 *   is kept valid as it grows: a byte sequence that can never become valid
 *   is replaced by U+FFFD at once; an incomplete character at the end is
 *   held back until the next piece completes it (or finish() replaces it).
 * - Stop sequences: after each piece the new text is searched for every
 *   stop string; on a match the text is cut before it. Text that could
 *   still turn out to be the start of a stop string is held back, so a
 *   client never receives part of a stop sequence.
 *
 * Ownership: the assembler copies the stop strings and owns its buffer.
 * Threading: one thread. Errors: -1 on out of memory only.
 */
#ifndef LLM_TEXT_H
#define LLM_TEXT_H

#include <stdbool.h>
#include <stddef.h>

#define LLM_MAX_STOP 16         /* stop strings per request */
#define LLM_MAX_STOP_BYTES 256  /* bytes per stop string */

typedef struct llm_text {
    char *buf;
    size_t len, cap;
    size_t valid;    /* buf[0, valid) is checked UTF-8; the rest is an incomplete tail */
    size_t emitted;  /* buf[0, emitted) was handed out by llm_text_take */
    size_t searched; /* stop strings cannot start before this offset */
    char *stop[LLM_MAX_STOP];
    size_t stop_len[LLM_MAX_STOP];
    int n_stop;
    bool stopped;    /* a stop string matched; the text ends before it */
} llm_text;

/* stops: n_stop non-empty strings (at most LLM_MAX_STOP, each at most
 * LLM_MAX_STOP_BYTES; the caller validated them). Returns 0 or -1. */
int llm_text_init(llm_text *t, const char *const *stops, int n_stop);
void llm_text_free(llm_text *t);

/* Appends a piece. Returns 1 if a stop string now matched (t->stopped; the
 * text was cut before it and later appends are ignored), 0 if not, -1 on
 * out of memory. */
int llm_text_append(llm_text *t, const char *piece, size_t n);

/* The text that may be streamed now and has not been yet: sets *p and
 * returns its length, and counts it as emitted. */
size_t llm_text_take(llm_text *t, const char **p);

/* Ends the text: an incomplete character at the end becomes U+FFFD and
 * held-back text is released. Call llm_text_take afterwards for the last
 * piece. Returns 0 or -1. */
int llm_text_finish(llm_text *t);

#endif
