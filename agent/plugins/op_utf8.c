/*
 * op_utf8.c: see op_utf8.h. The decoder follows the well-formed byte
 * sequence table of Unicode (Table 3-7): the second byte's range depends on
 * the first (E0 A0..BF, ED 80..9F, F0 90..BF, F4 80..8F), which is what
 * refuses overlongs, surrogates and code points past U+10FFFF.
 */
#include "plugins/op_utf8.h"

#include <string.h>

/* How many bytes the sequence led by c has in all (1..4), or 0 if c can
 * never start one (a continuation byte, C0, C1, F5..FF). */
static int seq_len(unsigned char c)
{
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        return 2;
    if (c >= 0xE0 && c <= 0xEF)
        return 3;
    if (c >= 0xF0 && c <= 0xF4)
        return 4;
    return 0;
}

/* Whether c may follow lead as byte number k (1-based) of its sequence. */
static bool cont_ok(unsigned char lead, int k, unsigned char c)
{
    if (k == 1) {
        switch (lead) {
        case 0xE0: return c >= 0xA0 && c <= 0xBF;
        case 0xED: return c >= 0x80 && c <= 0x9F;
        case 0xF0: return c >= 0x90 && c <= 0xBF;
        case 0xF4: return c >= 0x80 && c <= 0x8F;
        default: break;
        }
    }
    return c >= 0x80 && c <= 0xBF;
}

static const char REPLACEMENT[3] = {(char)0xEF, (char)0xBF, (char)0xBD};

size_t op_utf8_stream(op_utf8_tail *tail, const char *text, size_t len, bool final, char *out)
{
    /* The input is tail->b[0..tn) followed by text[0..len): read it through
     * at() instead of copying text behind the tail. */
    unsigned char held[3];
    size_t tn = tail->n;
    memcpy(held, tail->b, tn);
    tail->n = 0;
    size_t total = tn + len, i = 0, o = 0;
#define AT(k) ((k) < tn ? held[(k)] : (unsigned char)text[(k) - tn])
    while (i < total) {
        unsigned char c = AT(i);
        if (c < 0x80) {
            out[o++] = (char)c;
            i++;
            continue;
        }
        int need = seq_len(c);
        if (need == 0) {
            memcpy(out + o, REPLACEMENT, 3);
            o += 3;
            i++;
            continue;
        }
        int k = 1;
        while (k < need && i + (size_t)k < total && cont_ok(c, k, AT(i + (size_t)k)))
            k++;
        if (k == need) {
            for (int j = 0; j < need; j++)
                out[o++] = (char)AT(i + (size_t)j);
            i += (size_t)need;
        } else if (i + (size_t)k == total && !final) {
            /* Cut at the end of the piece: wait for the rest. */
            for (int j = 0; j < k; j++)
                tail->b[j] = AT(i + (size_t)j);
            tail->n = (uint8_t)k;
            i = total;
        } else {
            /* A maximal subpart that cannot be completed: one U+FFFD, and
             * the byte that broke it is read again as a start. */
            memcpy(out + o, REPLACEMENT, 3);
            o += 3;
            i += (size_t)k;
        }
    }
#undef AT
    out[o] = '\0';
    return o;
}

bool op_utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        unsigned char c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        int need = seq_len(c);
        if (need == 0 || i + (size_t)need > len)
            return false;
        for (int k = 1; k < need; k++)
            if (!cont_ok(c, k, p[i + (size_t)k]))
                return false;
        i += (size_t)need;
    }
    return true;
}
