/*
 * nn_unicode: lookups over the tables that scripts/gen_unicode.py generates
 * into nn_unicode_tables.c (layouts described there), and UTF-8 coding.
 */
#include "nn_unicode.h"

/* ========================================================================
 * Generated tables (nn_unicode_tables.c); declared here, their only reader.
 * ======================================================================== */

extern const uint8_t nn_uc_cat_top[0x110000 >> 9];
extern const uint16_t nn_uc_cat_mid[][32];
extern const uint8_t nn_uc_cat_leaf[][16];
extern const uint32_t nn_uc_space[][2];
extern const int32_t nn_uc_lower_runs[][4];
extern const uint32_t nn_uc_lowerm[][2 + 3];
extern const uint32_t nn_uc_nfd_key[];
extern const uint16_t nn_uc_nfd_off[];
extern const uint32_t nn_uc_nfd_pool[];
extern const size_t nn_uc_space_n, nn_uc_lower_runs_n, nn_uc_lowerm_n, nn_uc_nfd_n;

#define UC_MAX 0x10FFFFu

/* Hangul syllables decompose arithmetically (Unicode 3.12). */
#define H_SBASE 0xAC00u
#define H_LBASE 0x1100u
#define H_VBASE 0x1161u
#define H_TBASE 0x11A7u
#define H_VCOUNT 21u
#define H_TCOUNT 28u
#define H_NCOUNT (H_VCOUNT * H_TCOUNT)
#define H_SCOUNT 11172u

/* ========================================================================
 * Properties
 * ======================================================================== */

nn_uc_cat nn_uc_category(uint32_t cp)
{
    if (cp > UC_MAX)
        return NN_UC_Cn;
    uint16_t leaf = nn_uc_cat_mid[nn_uc_cat_top[cp >> 9]][(cp >> 4) & 31];
    return (nn_uc_cat)nn_uc_cat_leaf[leaf][cp & 15];
}

bool nn_uc_is_letter(uint32_t cp)
{
    nn_uc_cat c = nn_uc_category(cp);
    return c >= NN_UC_Lu && c <= NN_UC_Lo;
}

bool nn_uc_is_number(uint32_t cp)
{
    nn_uc_cat c = nn_uc_category(cp);
    return c >= NN_UC_Nd && c <= NN_UC_No;
}

bool nn_uc_is_mark(uint32_t cp)
{
    nn_uc_cat c = nn_uc_category(cp);
    return c >= NN_UC_Mn && c <= NN_UC_Me;
}

bool nn_uc_is_punct(uint32_t cp)
{
    nn_uc_cat c = nn_uc_category(cp);
    return c >= NN_UC_Pc && c <= NN_UC_Po;
}

bool nn_uc_is_symbol(uint32_t cp)
{
    nn_uc_cat c = nn_uc_category(cp);
    return c >= NN_UC_Sm && c <= NN_UC_So;
}

bool nn_uc_is_space(uint32_t cp)
{
    if (cp < 0x80)
        return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
    for (size_t i = 0; i < nn_uc_space_n; i++)
        if (cp >= nn_uc_space[i][0] && cp <= nn_uc_space[i][1])
            return true;
    return false;
}

/* ========================================================================
 * Mappings
 * ======================================================================== */

size_t nn_uc_lower(uint32_t cp, uint32_t out[3])
{
    if (cp < 0x80) {
        out[0] = (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
        return 1;
    }
    for (size_t i = 0; i < nn_uc_lowerm_n; i++) {
        if (nn_uc_lowerm[i][0] == cp) {
            size_t n = nn_uc_lowerm[i][1];
            for (size_t k = 0; k < n; k++)
                out[k] = nn_uc_lowerm[i][2 + k];
            return n;
        }
    }
    /* The last run that starts at or before cp. */
    size_t lo = 0, hi = nn_uc_lower_runs_n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if ((uint32_t)nn_uc_lower_runs[mid][0] <= cp)
            lo = mid + 1;
        else
            hi = mid;
    }
    out[0] = cp;
    if (lo > 0) {
        const int32_t *r = nn_uc_lower_runs[lo - 1];
        if (cp <= (uint32_t)r[1] && (cp - (uint32_t)r[0]) % (uint32_t)r[2] == 0)
            out[0] = (uint32_t)((int32_t)cp + r[3]);
    }
    return 1;
}

size_t nn_uc_nfd(uint32_t cp, uint32_t out[NN_UC_MAX_DECOMP])
{
    if (cp >= H_SBASE && cp < H_SBASE + H_SCOUNT) {
        uint32_t s = cp - H_SBASE;
        out[0] = H_LBASE + s / H_NCOUNT;
        out[1] = H_VBASE + (s % H_NCOUNT) / H_TCOUNT;
        if (s % H_TCOUNT == 0)
            return 2;
        out[2] = H_TBASE + s % H_TCOUNT;
        return 3;
    }
    /* Nothing below U+00C0 decomposes; keys hold cp in their low 21 bits. */
    if (cp >= 0xC0 && cp <= UC_MAX) {
        size_t lo = 0, hi = nn_uc_nfd_n;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            uint32_t k = nn_uc_nfd_key[mid] & 0x1FFFFFu;
            if (k == cp) {
                size_t n = nn_uc_nfd_key[mid] >> 21;
                const uint32_t *p = nn_uc_nfd_pool + nn_uc_nfd_off[mid];
                for (size_t i = 0; i < n && i < NN_UC_MAX_DECOMP; i++)
                    out[i] = p[i];
                return n < NN_UC_MAX_DECOMP ? n : NN_UC_MAX_DECOMP;
            }
            if (k < cp)
                lo = mid + 1;
            else
                hi = mid;
        }
    }
    out[0] = cp;
    return 1;
}

/* ========================================================================
 * UTF-8
 * ======================================================================== */

/* The well-formed sequences (Unicode Table 3-7): for a lead byte, how many
 * bytes follow and the range the first of them must be in (the later ones
 * are always 80..BF). Excludes overlongs (C0, C1, E0 80..9F, F0 80..8F),
 * surrogates (ED A0..BF) and values past U+10FFFF (F4 90.., F5..FF). */
static size_t utf8_expect(unsigned char b, unsigned char *lo, unsigned char *hi)
{
    *lo = 0x80;
    *hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF)
        return 1;
    if (b >= 0xE0 && b <= 0xEF) {
        if (b == 0xE0)
            *lo = 0xA0;
        else if (b == 0xED)
            *hi = 0x9F;
        return 2;
    }
    if (b >= 0xF0 && b <= 0xF4) {
        if (b == 0xF0)
            *lo = 0x90;
        else if (b == 0xF4)
            *hi = 0x8F;
        return 3;
    }
    return 0; /* ASCII, continuation, C0, C1, F5..FF */
}

size_t nn_utf8_decode(const char *s, size_t len, uint32_t *cp)
{
    const unsigned char *u = (const unsigned char *)s;
    if (len == 0) {
        *cp = 0xFFFD;
        return 0;
    }
    unsigned char b = u[0];
    if (b < 0x80) {
        *cp = b;
        return 1;
    }
    unsigned char lo, hi;
    size_t more = utf8_expect(b, &lo, &hi);
    if (more == 0 || len < more + 1 || u[1] < lo || u[1] > hi) {
        *cp = 0xFFFD;
        return 1;
    }
    uint32_t c = b & (0x3Fu >> more);
    c = (c << 6) | (u[1] & 0x3Fu);
    for (size_t i = 2; i <= more; i++) {
        if ((u[i] & 0xC0) != 0x80) {
            *cp = 0xFFFD;
            return 1;
        }
        c = (c << 6) | (u[i] & 0x3Fu);
    }
    *cp = c;
    return more + 1;
}

size_t nn_utf8_encode(uint32_t cp, char out[4])
{
    if (cp >= 0xD800 && (cp <= 0xDFFF || cp > UC_MAX))
        cp = 0xFFFD;
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

size_t nn_utf8_complete_prefix(const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    /* Only the last 3 bytes can belong to an unfinished sequence: find its
     * lead byte, then check the bytes after it could still become a valid
     * sequence. Bytes that can never become valid are sent as they are (they
     * decode to U+FFFD either way). */
    for (size_t back = 1; back <= 3 && back <= len; back++) {
        size_t p = len - back;
        unsigned char b = u[p];
        if ((b & 0xC0) == 0x80)
            continue; /* a continuation byte: look further back */
        unsigned char lo, hi;
        size_t more = utf8_expect(b, &lo, &hi);
        if (more < back)
            return len; /* ASCII, invalid lead, or a sequence already whole */
        if (back >= 2 && (u[p + 1] < lo || u[p + 1] > hi))
            return len; /* will never be valid */
        return p;
    }
    return len;
}
