/*
 * op_utf8: pieces of a stream cut anywhere come out as valid UTF-8, with
 * characters whole; bytes that are not UTF-8 become U+FFFD per maximal
 * subpart; a stream that ends inside a character flushes it as U+FFFD.
 * Checked by cases, by cutting every test string at every byte, and by
 * random bytes cut at random places.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "plugins/op_utf8.h"

#define FFFD "\xef\xbf\xbd"

/* Feeds pieces (lengths in cuts, summing to len) through one tail, then the
 * final flush; returns the concatenated output (malloc'd) and checks that
 * every emitted piece is valid on its own. */
static char *feed_n(const char *s, size_t len, const size_t *cuts, size_t n_cuts,
                    size_t *out_len)
{
    op_utf8_tail tail = {0};
    char *all = malloc(OP_UTF8_STREAM_CAP(len) + 16);
    cr_assert_not_null(all);
    size_t used = 0, at = 0;
    for (size_t i = 0; i <= n_cuts; i++) {
        size_t n = i < n_cuts ? cuts[i] : len - at;
        char *out = malloc(OP_UTF8_STREAM_CAP(n));
        size_t w = op_utf8_stream(&tail, s + at, n, i == n_cuts, out);
        cr_assert(op_utf8_valid(out, w), "piece %zu not valid UTF-8", i);
        cr_assert_eq(out[w], '\0');
        memcpy(all + used, out, w);
        used += w;
        free(out);
        at += n;
    }
    cr_assert_eq(tail.n, 0, "tail left after the final piece");
    all[used] = '\0';
    *out_len = used;
    return all;
}

static char *feed(const char *s, size_t len, const size_t *cuts, size_t n_cuts)
{
    size_t n;
    return feed_n(s, len, cuts, n_cuts, &n);
}

static char *whole(const char *s, size_t len)
{
    return feed(s, len, NULL, 0);
}

Test(utf8_stream, valid_text_passes_unchanged_in_one_piece)
{
    const char *s = "plain ASCII, caf\xc3\xa9, \xe4\xb8\xad\xe6\x96\x87, \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf";
    char *out = whole(s, strlen(s));
    cr_assert_str_eq(out, s);
    free(out);
}

Test(utf8_stream, a_character_cut_between_pieces_waits_for_its_end)
{
    op_utf8_tail t = {0};
    char out[64];
    /* "😀" = F0 9F 98 80 over three pieces. */
    cr_assert_eq(op_utf8_stream(&t, "a\xf0\x9f", 3, false, out), 1);
    cr_assert_str_eq(out, "a");
    cr_assert_eq(t.n, 2);
    cr_assert_eq(op_utf8_stream(&t, "\x98", 1, false, out), 0, "still incomplete");
    cr_assert_eq(t.n, 3);
    cr_assert_eq(op_utf8_stream(&t, "\x80!", 2, false, out), 5);
    cr_assert_str_eq(out, "\xf0\x9f\x98\x80!");
    cr_assert_eq(t.n, 0);
}

Test(utf8_stream, every_cut_of_every_string_gives_the_string_back)
{
    const char *cases[] = {
        "h\xc3\xa9llo", "\xe2\x82\xac", "\xf0\x9f\x98\x80\xf0\x9f\x98\x81",
        "a\xd7\x90\xe0\xa4\x85\xf0\x90\x8d\x88z", "\xef\xbb\xbf" "bom",
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        size_t len = strlen(cases[c]);
        /* One cut at every position, and every pair of cuts. */
        for (size_t i = 0; i <= len; i++) {
            for (size_t j = i; j <= len; j++) {
                size_t cuts[2] = {i, j - i};
                char *out = feed(cases[c], len, cuts, 2);
                cr_assert_str_eq(out, cases[c], "case %zu cut at %zu,%zu", c, i, j);
                free(out);
            }
        }
        /* One byte at a time. */
        size_t *ones = calloc(len, sizeof *ones);
        for (size_t i = 0; i < len; i++)
            ones[i] = 1;
        char *out = feed(cases[c], len, ones, len);
        cr_assert_str_eq(out, cases[c]);
        free(out);
        free(ones);
    }
}

Test(utf8_stream, invalid_bytes_become_one_replacement_per_maximal_subpart)
{
    static const struct {
        const char *in;
        size_t len;
        const char *want;
    } cases[] = {
        {"\xff", 1, FFFD},
        {"a\x80" "b", 3, "a" FFFD "b"},                 /* lone continuation */
        {"\xc0\xaf", 2, FFFD FFFD},                     /* overlong: C0 never starts */
        {"\xe0\x80\xaf", 3, FFFD FFFD FFFD},            /* overlong 3-byte: E0 needs A0..BF */
        {"\xed\xa0\x80", 3, FFFD FFFD FFFD},            /* surrogate D800 */
        {"\xf4\x90\x80\x80", 4, FFFD FFFD FFFD FFFD},   /* past U+10FFFF */
        {"\xf5\x80", 2, FFFD FFFD},
        {"\xe2\x82" "A", 3, FFFD "A"},                  /* cut short, then ASCII */
        {"\xf0\x9f\x98" "\xc3\xa9", 5, FFFD "\xc3\xa9"},/* cut short, then a character */
        {"\xe2\x82", 2, FFFD},                          /* the stream ends inside */
        {"\x00" "x", 2, "\x00" "x"},                    /* NUL is valid UTF-8 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        op_utf8_tail t = {0};
        char out[64];
        size_t n = op_utf8_stream(&t, cases[i].in, cases[i].len, true, out);
        size_t wl = strlen(cases[i].want) + (cases[i].want[0] == '\0' ? 2 : 0);
        cr_assert_eq(n, wl, "case %zu: %zu bytes, want %zu", i, n, wl);
        cr_assert_eq(memcmp(out, cases[i].want, wl), 0, "case %zu", i);
        cr_assert(op_utf8_valid(out, n));
    }
}

Test(utf8_stream, a_held_start_that_the_next_piece_does_not_continue_is_replaced)
{
    op_utf8_tail t = {0};
    char out[64];
    cr_assert_eq(op_utf8_stream(&t, "x\xe2\x82", 3, false, out), 1);
    size_t n = op_utf8_stream(&t, "y", 1, false, out);
    cr_assert_eq(n, 4);
    cr_assert_eq(memcmp(out, FFFD "y", 4), 0);
    /* And the final flush of a held start. */
    cr_assert_eq(op_utf8_stream(&t, "\xc3", 1, false, out), 0);
    n = op_utf8_stream(&t, NULL, 0, true, out);
    cr_assert_eq(n, 3);
    cr_assert_eq(memcmp(out, FFFD, 3), 0);
    cr_assert_eq(t.n, 0);
}

/* Random bytes, cut at random places, give the same output as in one piece,
 * and always valid UTF-8. */
Test(utf8_stream, cutting_never_changes_the_output)
{
    unsigned seed = 12345;
    for (int round = 0; round < 2000; round++) {
        unsigned char buf[64];
        size_t len = (size_t)(rand_r(&seed) % 64);
        for (size_t i = 0; i < len; i++) {
            /* Mostly the bytes that make UTF-8 interesting. */
            static const unsigned char pick[] = {'a',  0x80, 0x9f, 0xa0, 0xbf, 0xc2, 0xc3, 0xdf,
                                                 0xe0, 0xe2, 0xed, 0xef, 0xf0, 0xf4, 0xf5, 0xff};
            buf[i] = (unsigned char)(rand_r(&seed) % 3 ? pick[rand_r(&seed) % 16]
                                                       : (unsigned)rand_r(&seed) % 256);
        }
        size_t one_len, cut_len;
        char *one = feed_n((const char *)buf, len, NULL, 0, &one_len);
        size_t cuts[8], n_cuts = 0, at = 0;
        while (n_cuts < 8 && at < len) {
            size_t c = (size_t)(rand_r(&seed) % (len - at + 1));
            cuts[n_cuts++] = c;
            at += c;
        }
        char *cut = feed_n((const char *)buf, len, cuts, n_cuts, &cut_len);
        cr_assert_eq(cut_len, one_len, "round %d", round);
        cr_assert_eq(memcmp(cut, one, one_len), 0, "round %d", round);
        cr_assert(op_utf8_valid(one, one_len));
        free(one);
        free(cut);
    }
}

Test(utf8_stream, valid_checks_the_unicode_table)
{
    cr_assert(op_utf8_valid("", 0));
    cr_assert(op_utf8_valid("\xf4\x8f\xbf\xbf", 4));
    cr_assert_not(op_utf8_valid("\xf4\x90\x80\x80", 4));
    cr_assert_not(op_utf8_valid("\xed\xbf\xbf", 3));
    cr_assert(op_utf8_valid("\xee\x80\x80", 3));
    cr_assert_not(op_utf8_valid("\xc3", 1));
    cr_assert_not(op_utf8_valid("\xc1\xbf", 2));
}
