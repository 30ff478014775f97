/*
 * Unit tests for plugins/llama/llm_text: generated text, UTF-8 repair, stop
 * sequences and what may be streamed when.
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llm_text.h"

/* Feeds pieces, collects everything streamed, finishes; returns the final
 * text (malloc'd) and the streamed concatenation in *streamed. */
static char *run(const char *const *stops, int n_stops, const char *const *pieces, int n,
                 char **streamed, int *stopped_at)
{
    llm_text t;
    cr_assert_eq(llm_text_init(&t, stops, n_stops), 0);
    size_t cap = 1 << 16, len = 0;
    char *out = calloc(cap, 1);
    *stopped_at = -1;
    for (int i = 0; i < n; i++) {
        int r = llm_text_append(&t, pieces[i], strlen(pieces[i]));
        cr_assert(r >= 0);
        const char *p;
        size_t k = llm_text_take(&t, &p);
        memcpy(out + len, p, k);
        len += k;
        if (r == 1) {
            *stopped_at = i;
            break;
        }
    }
    cr_assert_eq(llm_text_finish(&t), 0);
    const char *p;
    size_t k = llm_text_take(&t, &p);
    memcpy(out + len, p, k);
    len += k;
    out[len] = '\0';
    char *final = malloc(t.len + 1);
    memcpy(final, t.buf ? t.buf : "", t.len);
    final[t.len] = '\0';
    llm_text_free(&t);
    *streamed = out;
    return final;
}

Test(llm_text, plain_pieces_stream_at_once)
{
    const char *pieces[] = {"Hello", ",", " world"};
    llm_text t;
    cr_assert_eq(llm_text_init(&t, NULL, 0), 0);
    const char *p;
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(llm_text_append(&t, pieces[i], strlen(pieces[i])), 0);
        size_t k = llm_text_take(&t, &p);
        cr_assert_eq(k, strlen(pieces[i]), "piece %d streamed %zu bytes", i, k);
        cr_assert_eq(memcmp(p, pieces[i], k), 0);
    }
    llm_text_free(&t);
}

Test(llm_text, utf8_split_across_pieces_is_held_then_whole)
{
    llm_text t;
    cr_assert_eq(llm_text_init(&t, NULL, 0), 0);
    const char *p;
    /* "é€" = C3 A9 E2 82 AC, cut inside both characters. */
    cr_assert_eq(llm_text_append(&t, "a\xc3", 2), 0);
    cr_assert_eq(llm_text_take(&t, &p), 1);
    cr_assert_eq(p[0], 'a');
    cr_assert_eq(llm_text_append(&t, "\xa9\xe2\x82", 3), 0);
    size_t k = llm_text_take(&t, &p);
    cr_assert_eq(k, 2);
    cr_assert_eq(memcmp(p, "\xc3\xa9", 2), 0);
    cr_assert_eq(llm_text_append(&t, "\xac", 1), 0);
    k = llm_text_take(&t, &p);
    cr_assert_eq(k, 3);
    cr_assert_eq(memcmp(p, "\xe2\x82\xac", 3), 0);
    llm_text_free(&t);
}

Test(llm_text, invalid_bytes_become_replacement_characters)
{
    struct {
        const char *in, *want;
    } cases[] = {
        {"\xff", "\xef\xbf\xbd"},
        {"x\xc3(", "x\xef\xbf\xbd("},
        {"\xc0\x80", "\xef\xbf\xbd\xef\xbf\xbd"},                         /* overlong */
        {"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},         /* surrogate */
        {"\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* > U+10FFFF */
        {"\x80ok", "\xef\xbf\xbdok"},
        {"\xf0\x9f\x98\x80", "\xf0\x9f\x98\x80"},                         /* valid emoji */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *pieces[] = {cases[i].in};
        char *streamed;
        int at;
        char *final = run(NULL, 0, pieces, 1, &streamed, &at);
        cr_assert_str_eq(final, cases[i].want, "case %zu", i);
        cr_assert_str_eq(streamed, cases[i].want, "case %zu streamed", i);
        free(final);
        free(streamed);
    }
}

Test(llm_text, incomplete_character_at_the_end_is_replaced)
{
    const char *pieces[] = {"ok\xe2\x82"};
    char *streamed;
    int at;
    char *final = run(NULL, 0, pieces, 1, &streamed, &at);
    cr_assert_str_eq(final, "ok\xef\xbf\xbd");
    cr_assert_str_eq(streamed, "ok\xef\xbf\xbd");
    free(final);
    free(streamed);
}

Test(llm_text, stop_sequence_cuts_and_is_never_streamed)
{
    const char *stops[] = {"\nUser:"};
    const char *pieces[] = {"Hel", "lo", " wor", "ld\n", "Us", "er", ":", " more"};
    llm_text t;
    cr_assert_eq(llm_text_init(&t, stops, 1), 0);
    size_t got = 0;
    char streamed[128] = "";
    int stopped = -1;
    for (int i = 0; i < 8; i++) {
        int r = llm_text_append(&t, pieces[i], strlen(pieces[i]));
        const char *p;
        size_t k = llm_text_take(&t, &p);
        memcpy(streamed + got, p, k);
        got += k;
        streamed[got] = '\0';
        cr_assert_null(strchr(streamed, '\n'), "streamed part of the stop: '%s'", streamed);
        if (r == 1) {
            stopped = i;
            break;
        }
    }
    cr_assert_eq(stopped, 6);
    cr_assert_str_eq(streamed, "Hello world");
    cr_assert(t.stopped);
    cr_assert_eq(t.len, 11);
    llm_text_free(&t);
}

Test(llm_text, partial_stop_match_is_released_when_it_diverges)
{
    const char *stops[] = {"abc"};
    llm_text t;
    cr_assert_eq(llm_text_init(&t, stops, 1), 0);
    const char *p;
    cr_assert_eq(llm_text_append(&t, "xa", 2), 0);
    cr_assert_eq(llm_text_take(&t, &p), 1); /* "x"; "a" held */
    cr_assert_eq(llm_text_append(&t, "bd", 2), 0);
    size_t k = llm_text_take(&t, &p);
    cr_assert_eq(k, 3);
    cr_assert_eq(memcmp(p, "abd", 3), 0);
    /* Held back at the end, released by finish. */
    cr_assert_eq(llm_text_append(&t, "ab", 2), 0);
    cr_assert_eq(llm_text_take(&t, &p), 0);
    cr_assert_eq(llm_text_finish(&t), 0);
    k = llm_text_take(&t, &p);
    cr_assert_eq(k, 2);
    cr_assert_eq(memcmp(p, "ab", 2), 0);
    llm_text_free(&t);
}

Test(llm_text, earliest_of_several_stops_wins)
{
    const char *stops[] = {"END", "</s>", "stop"};
    const char *pieces[] = {"one two </s> three END"};
    char *streamed;
    int at;
    char *final = run(stops, 3, pieces, 1, &streamed, &at);
    cr_assert_str_eq(final, "one two ");
    cr_assert_str_eq(streamed, "one two ");
    cr_assert_eq(at, 0);
    free(final);
    free(streamed);
}

/* Property: for random texts cut into random pieces, what is streamed is
 * exactly the final text, which is the input cut at the first stop. */
Test(llm_text, random_pieces_stream_exactly_the_final_text)
{
    const char *alphabet[] = {"a", "b", "c", " ", "\n", "\xc3\xa9", "\xe2\x82\xac", "ab", "ca"};
    const char *stops[] = {"abc", "\n\n", "\xc3\xa9\xc3\xa9"};
    uint64_t seed = 12345;
    for (int iter = 0; iter < 2000; iter++) {
        char text[256] = "";
        size_t tl = 0;
        while (tl < 200) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            const char *s = alphabet[(seed >> 33) % 9];
            size_t sl = strlen(s);
            memcpy(text + tl, s, sl);
            tl += sl;
        }
        text[tl] = '\0';
        /* Expected: cut at the earliest stop. */
        size_t cut = tl;
        for (int k = 0; k < 3; k++) {
            char *h = strstr(text, stops[k]);
            if (h && (size_t)(h - text) < cut)
                cut = (size_t)(h - text);
        }
        /* Random byte cuts, possibly inside characters. */
        char *pieces[300];
        int n = 0;
        for (size_t i = 0; i < tl;) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            size_t len = 1 + (seed >> 40) % 5;
            if (i + len > tl)
                len = tl - i;
            pieces[n] = strndup(text + i, len);
            n++;
            i += len;
        }
        char *streamed;
        int at;
        char *final = run(stops, 3, (const char *const *)pieces, n, &streamed, &at);
        cr_assert_eq(strlen(final), cut, "iter %d: final %zu bytes, want %zu", iter,
                     strlen(final), cut);
        cr_assert_eq(memcmp(final, text, cut), 0, "iter %d", iter);
        cr_assert_str_eq(streamed, final, "iter %d", iter);
        free(final);
        free(streamed);
        for (int i = 0; i < n; i++)
            free(pieces[i]);
    }
}
