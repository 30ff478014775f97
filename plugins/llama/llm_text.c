/*
 * llm_text: generated text, UTF-8 repair and stop sequences. See llm_text.h.
 */
#include "llm_text.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char REPLACEMENT[3] = {(char)0xEF, (char)0xBF, (char)0xBD};

int llm_text_init(llm_text *t, const char *const *stops, int n_stop)
{
    memset(t, 0, sizeof *t);
    if (n_stop > LLM_MAX_STOP)
        n_stop = LLM_MAX_STOP;
    for (int i = 0; i < n_stop; i++) {
        size_t n = strlen(stops[i]);
        if (n == 0)
            continue;
        if (n > LLM_MAX_STOP_BYTES)
            n = LLM_MAX_STOP_BYTES;
        char *s = malloc(n + 1);
        if (!s) {
            llm_text_free(t);
            return -1;
        }
        memcpy(s, stops[i], n);
        s[n] = '\0';
        t->stop[t->n_stop] = s;
        t->stop_len[t->n_stop++] = n;
    }
    return 0;
}

void llm_text_free(llm_text *t)
{
    for (int i = 0; i < t->n_stop; i++)
        free(t->stop[i]);
    free(t->buf);
    memset(t, 0, sizeof *t);
}

static int reserve(llm_text *t, size_t extra)
{
    if (t->len + extra <= t->cap)
        return 0;
    size_t cap = t->cap ? t->cap : 256;
    while (cap < t->len + extra)
        cap *= 2;
    char *b = realloc(t->buf, cap);
    if (!b)
        return -1;
    t->buf = b;
    t->cap = cap;
    return 0;
}

/* Length of the UTF-8 sequence starting at s[0, n): > 0 valid length, 0 if
 * incomplete (could still become valid), -1 if invalid at its first byte. */
static int utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    int len;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF)
        len = 3;
    else if (c >= 0xF0 && c <= 0xF4)
        len = 4;
    else
        return -1;
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n)
            return 0; /* incomplete; the bytes so far were checked below */
        if ((s[i] & 0xC0) != 0x80)
            return -1;
        if (i == 1) {
            /* Second byte limits (overlongs, surrogates, > U+10FFFF). */
            if ((len == 3 && c == 0xE0 && s[1] < 0xA0) || (len == 3 && c == 0xED && s[1] > 0x9F) ||
                (len == 4 && c == 0xF0 && s[1] < 0x90) || (len == 4 && c == 0xF4 && s[1] > 0x8F))
                return -1;
        }
    }
    return len;
}

/* Checks buf[valid, len) and replaces each invalid byte with U+FFFD, up to
 * an incomplete tail. */
static int sanitize(llm_text *t)
{
    while (t->valid < t->len) {
        int r = utf8_seq((const unsigned char *)t->buf + t->valid, t->len - t->valid);
        if (r > 0) {
            t->valid += (size_t)r;
        } else if (r == 0) {
            return 0;
        } else {
            if (reserve(t, 2))
                return -1;
            memmove(t->buf + t->valid + 3, t->buf + t->valid + 1, t->len - t->valid - 1);
            memcpy(t->buf + t->valid, REPLACEMENT, 3);
            t->len += 2;
            t->valid += 3;
        }
    }
    return 0;
}

/* Searches for stop strings starting at or after t->searched in the valid
 * text; cuts the text at the first (earliest) match. */
static int find_stop(llm_text *t)
{
    size_t best = SIZE_MAX;
    for (int i = 0; i < t->n_stop; i++) {
        if (t->valid < t->searched + t->stop_len[i])
            continue;
        const char *hit = memmem(t->buf + t->searched, t->valid - t->searched, t->stop[i],
                                 t->stop_len[i]);
        if (hit && (size_t)(hit - t->buf) < best)
            best = (size_t)(hit - t->buf);
    }
    if (best == SIZE_MAX)
        return 0;
    t->len = t->valid = best;
    t->stopped = true;
    return 1;
}

/* The first offset of the valid text that might begin a stop string not yet
 * complete (the longest suffix equal to a prefix of a stop string). */
static size_t holdback_from(const llm_text *t)
{
    size_t from = t->valid;
    for (int i = 0; i < t->n_stop; i++) {
        size_t max = t->stop_len[i] - 1;
        if (max > t->valid)
            max = t->valid;
        for (size_t k = max; k > 0; k--) {
            if (t->valid - k < from && memcmp(t->buf + t->valid - k, t->stop[i], k) == 0) {
                from = t->valid - k;
                break;
            }
        }
    }
    return from;
}

int llm_text_append(llm_text *t, const char *piece, size_t n)
{
    if (t->stopped)
        return 1;
    if (n == 0)
        return 0;
    if (reserve(t, n))
        return -1;
    memcpy(t->buf + t->len, piece, n);
    t->len += n;
    if (sanitize(t))
        return -1;
    int r = find_stop(t);
    if (!r) {
        /* Next search: a stop may begin in the held-back part at the
         * earliest. */
        size_t from = holdback_from(t);
        t->searched = from > t->searched ? from : t->searched;
    }
    return r;
}

size_t llm_text_take(llm_text *t, const char **p)
{
    size_t end = t->stopped ? t->len : holdback_from(t);
    if (end > t->valid)
        end = t->valid;
    *p = t->buf + t->emitted;
    if (end <= t->emitted)
        return 0;
    size_t n = end - t->emitted;
    t->emitted = end;
    return n;
}

int llm_text_finish(llm_text *t)
{
    if (!t->stopped && t->valid < t->len) {
        /* An incomplete character at the end: replace it. */
        t->len = t->valid;
        if (reserve(t, 3))
            return -1;
        memcpy(t->buf + t->len, REPLACEMENT, 3);
        t->len += 3;
        t->valid = t->len;
    }
    /* Held-back text is released: nothing more will complete a stop. */
    t->stopped = true;
    return 0;
}
