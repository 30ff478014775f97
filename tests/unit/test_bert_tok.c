/*
 * Unit tests for the WordPiece tokenizer (plugins/bert/bert_tok.c).
 *
 * Expected ids come from the Hugging Face `tokenizers` library (the one
 * sentence-transformers uses) run on the shipped all-MiniLM-L6-v2
 * tokenizer.json: the table below was generated once and is checked in, so
 * the test needs no Python. A small synthetic tokenizer.json exercises the
 * WordPiece corner cases and the refusals without the model; the golden
 * file tests/data/golden/minilm_tokens.json is compared when present.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bert_tok.h"

#ifndef OUTPOST_MODELS_DIR
#define OUTPOST_MODELS_DIR "models"
#endif
#ifndef OUTPOST_SOURCE_DIR
#define OUTPOST_SOURCE_DIR "."
#endif
#define MINILM_TOK OUTPOST_MODELS_DIR "/all-MiniLM-L6-v2/tokenizer.json"
#define GOLDEN_TOKENS OUTPOST_SOURCE_DIR "/tests/data/golden/minilm_tokens.json"
#define GOLDEN_EMB OUTPOST_SOURCE_DIR "/tests/data/golden/minilm_embeddings.json"

typedef struct tok_case {
    const char *name;
    const char *text;
    size_t len;
    int32_t ids[64];
} tok_case;

static const tok_case minilm_cases[] = {
/* Generated with HF tokenizers 0.23.3 from models/all-MiniLM-L6-v2/tokenizer.json. */
    {"ascii", "Hello, world! The quick brown fox.", 34, {101, 7592, 1010, 2088, 999, 1996, 4248, 2829, 4419, 1012, 102}},
    {"empty", "", 0, {101, 102}},
    {"spaces_only", " \011\012\015 ", 5, {101, 102}},
    {"accents", "Caf\303\251 na\303\257ve r\303\251sum\303\251 \303\205ngstr\303\266m", 32, {101, 7668, 15743, 13746, 17076, 15687, 102}},
    {"special_casing", "\304\260stanbul \316\243\316\212\316\243\316\245\316\246\316\237\316\243 stra\303\237e \307\205", 35, {101, 9960, 1173, 18199, 29733, 29735, 29736, 29730, 29733, 2358, 27807, 100, 102}},
    {"cjk", "\345\214\227\344\272\254\346\254\242\350\277\216\344\275\240hello\344\270\226\347\225\214", 26, {101, 1781, 1755, 100, 100, 100, 7592, 1745, 100, 102}},
    {"kana_hangul", "\346\227\245\346\234\254\350\252\236\343\201\256\343\203\206\343\202\255\343\202\271\343\203\210 \355\225\234\352\265\255\354\226\264", 34, {101, 1864, 1876, 1950, 1671, 30239, 30227, 30233, 30240, 1469, 30006, 30021, 29991, 30014, 30020, 29999, 30008, 102}},
    {"controls", "tab\011new\012line\015\013vt\014ff\000nul\177del\302\205nel", 32, {101, 21628, 2047, 2240, 28879, 4246, 11231, 17920, 19666, 2884, 102}},
    {"replacement_and_format", "repl\357\277\275char zero\342\200\213width\357\273\277bom soft\302\255hyphen", 43, {101, 16360, 29358, 2906, 5717, 9148, 11927, 2232, 5092, 2213, 3730, 10536, 8458, 2368, 102}},
    {"unassigned_kept", "x\315\270y \364\217\277\277", 9, {101, 100, 100, 102}},
    {"private_use_dropped", "a\356\200\200b", 5, {101, 11113, 102}},
    {"word_99", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 99, {101, 13360, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 102}},
    {"word_100", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 100, {101, 13360, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 11057, 2050, 102}},
    {"word_101", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", 101, {101, 100, 102}},
    {"wordpiece", "unaffable supercalifragilisticexpialidocious", 44, {101, 14477, 20961, 3468, 3565, 9289, 10128, 29181, 24411, 4588, 10288, 19312, 21273, 10085, 6313, 102}},
    {"added_tokens", "[CLS] hello [SEP] world[MASK][cls]", 34, {101, 101, 7592, 102, 2088, 103, 1031, 18856, 2015, 1033, 102}},
    {"punctuation", "e.g. U.S.A. $100.50 50% a+b=c \342\200\234quotes\342\200\235 \342\200\224 \342\200\246 \302\277Qu\303\251\077 \302\241S\303\255!", 65, {101, 1041, 1012, 1043, 1012, 1057, 1012, 1055, 1012, 1037, 1012, 1002, 2531, 1012, 2753, 2753, 1003, 1037, 1009, 1038, 1027, 1039, 1523, 16614, 1524, 1517, 1529, 1094, 10861, 1029, 1067, 9033, 999, 102}},
    {"unicode_spaces", "a\302\240b\342\200\250c\343\200\200d\342\200\203e\341\232\200f", 20, {101, 1037, 1038, 1039, 1040, 1041, 1042, 102}},
    {"emoji", "emoji \360\237\230\200\360\237\245\260 \360\237\221\250\342\200\215\360\237\221\251\342\200\215\360\237\221\247 \360\237\207\257\360\237\207\265", 42, {101, 7861, 29147, 2072, 100, 100, 100, 102}},
    {"combining", "a\314\201e\314\200 z\315\205\314\200 a\314\200\314\200\314\200", 20, {101, 29347, 1062, 1037, 102}},
    {"fullwidth_ligature", "\357\254\201 ligature \357\274\241\357\274\242\357\274\243 \302\275 \302\262 \342\205\253", 32, {101, 1984, 8018, 11244, 100, 1092, 1082, 100, 102}},
    {"rtl", "\331\205\330\261\330\255\330\250\330\247 \330\250\330\247\331\204\330\271\330\247\331\204\331\205 \327\251\327\234\327\225\327\235", 34, {101, 1295, 17149, 29820, 29816, 25573, 1271, 25573, 23673, 29830, 25573, 23673, 22192, 1266, 29799, 29792, 29800, 102}},
    {"cyrillic_greek", "\320\237\321\200\320\270\320\262\320\265\321\202 \320\274\320\270\321\200 \316\225\316\273\316\273\316\267\316\275\316\271\316\272\316\254", 36, {101, 1194, 16856, 10325, 25529, 15290, 22919, 1191, 10325, 16856, 1159, 29727, 29727, 24824, 16177, 18199, 29726, 14608, 102}},
    {"contractions", "don't can't won't", 17, {101, 2123, 1005, 1056, 2064, 1005, 1056, 2180, 1005, 1056, 102}},
};

static bert_tok *load_minilm(void)
{
    if (access(MINILM_TOK, R_OK) != 0)
        cr_skip_test("%s not present (make models fetches it)", MINILM_TOK);
    bert_tok *t = NULL;
    char err[256] = "";
    cr_assert_eq(bert_tok_load(MINILM_TOK, &t, err, sizeof err), 0, "%s", err);
    return t;
}

static int n_ids(const tok_case *c)
{
    int n = 0;
    while (n < 64 && c->ids[n] != 0)
        n++;
    return n;
}

Test(bert_tok, minilm_matches_hf_tokenizers)
{
    bert_tok *t = load_minilm();
    cr_assert_eq(bert_tok_vocab_size(t), 30522);
    cr_assert_eq(bert_tok_cls(t), 101);
    cr_assert_eq(bert_tok_sep(t), 102);
    cr_assert_eq(bert_tok_id(t, "[UNK]"), 100);
    cr_assert_str_eq(bert_tok_token(t, 7592), "hello");
    cr_assert_null(bert_tok_token(t, 30522));
    for (size_t k = 0; k < sizeof minilm_cases / sizeof minilm_cases[0]; k++) {
        const tok_case *c = &minilm_cases[k];
        int32_t ids[600];
        bool tr = true;
        int n = bert_tok_encode(t, c->text, c->len, ids, 512, &tr);
        int want = n_ids(c);
        cr_assert_eq(n, want, "case %s: %d ids, want %d", c->name, n, want);
        cr_assert_not(tr, "case %s: truncated", c->name);
        for (int i = 0; i < n; i++)
            cr_assert_eq(ids[i], c->ids[i], "case %s: id %d is %d, want %d", c->name, i, ids[i],
                         c->ids[i]);
        cr_assert_eq(bert_tok_encode(t, c->text, c->len, NULL, 512, NULL), n, "counting only");
    }
    bert_tok_free(t);
}

Test(bert_tok, truncation_keeps_the_start_and_the_sep)
{
    bert_tok *t = load_minilm();
    const tok_case *c = &minilm_cases[0]; /* 11 ids */
    for (int max = 2; max <= 12; max++) {
        int32_t ids[16];
        bool tr = false;
        int n = bert_tok_encode(t, c->text, c->len, ids, max, &tr);
        int want = max < 11 ? max : 11;
        cr_assert_eq(n, want, "max %d", max);
        cr_assert_eq(tr, max < 11, "max %d", max);
        cr_assert_eq(ids[0], 101);
        cr_assert_eq(ids[n - 1], 102);
        for (int i = 1; i < n - 1; i++)
            cr_assert_eq(ids[i], c->ids[i]);
    }
    /* A huge text costs max_len tokens, not its length. */
    size_t big = 32u << 20;
    char *s = malloc(big);
    for (size_t i = 0; i < big; i++)
        s[i] = (i % 6 == 5) ? ' ' : "hello"[i % 6];
    int32_t ids[256];
    bool tr = false;
    cr_assert_eq(bert_tok_encode(t, s, big, ids, 256, &tr), 256);
    cr_assert(tr);
    cr_assert_eq(ids[1], 7592);
    cr_assert_eq(ids[254], 7592);
    cr_assert_eq(ids[255], 102);
    free(s);
    bert_tok_free(t);
}

Test(bert_tok, invalid_utf8_never_overreads)
{
    bert_tok *t = load_minilm();
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    uint8_t *map = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(map, MAP_FAILED);
    cr_assert_eq(mprotect(map + pg, pg, PROT_NONE), 0);
    static const char *const tails[] = {"\xe4", "\xe4\xb8", "\xf0\x9f\x98", "[CL", "[SEP", "a\xc3",
                                        "\xff", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80"};
    for (size_t k = 0; k < sizeof tails / sizeof tails[0]; k++) {
        size_t n = strlen(tails[k]);
        char *p = (char *)map + pg - n;
        memcpy(p, tails[k], n);
        int32_t ids[16];
        int got = bert_tok_encode(t, p, n, ids, 16, NULL);
        cr_assert_geq(got, 2, "tail %zu", k);
    }
    /* Invalid bytes read as U+FFFD, which clean_text drops. */
    int32_t ids[16], ref[16];
    int n = bert_tok_encode(t, "a\xff" "b", 3, ids, 16, NULL);
    cr_assert_eq(n, bert_tok_encode(t, "ab", 2, ref, 16, NULL));
    cr_assert_eq(memcmp(ids, ref, (size_t)n * sizeof(int32_t)), 0);
    munmap(map, 2 * pg);
    bert_tok_free(t);
}

/* ======================================================================== */
/* A synthetic tokenizer                                                     */
/* ======================================================================== */

static const char *TINY =
    "{\"added_tokens\":[{\"id\":0,\"content\":\"[PAD]\"},{\"id\":1,\"content\":\"[UNK]\"},"
    "{\"id\":2,\"content\":\"[CLS]\"},{\"id\":3,\"content\":\"[SEP]\"},"
    "{\"id\":4,\"content\":\"[SEP]x\"}],"
    "\"normalizer\":{\"type\":\"BertNormalizer\",\"clean_text\":true,\"handle_chinese_chars\":true,"
    "\"strip_accents\":null,\"lowercase\":true},"
    "\"pre_tokenizer\":{\"type\":\"BertPreTokenizer\"},"
    "\"post_processor\":{\"type\":\"BertProcessing\",\"sep\":[\"[SEP]\",3],\"cls\":[\"[CLS]\",2]},"
    "\"model\":{\"type\":\"WordPiece\",\"unk_token\":\"[UNK]\",\"continuing_subword_prefix\":\"##\","
    "\"max_input_chars_per_word\":5,\"vocab\":{\"[PAD]\":0,\"[UNK]\":1,\"[CLS]\":2,\"[SEP]\":3,"
    "\"[SEP]x\":4,\"un\":5,\"##aff\":6,\"##able\":7,\"a\":8,\"##a\":9,\",\":10,\"e\":11,\"\xe4\xb8\xad\":12}}}";

static bert_tok *tiny(void)
{
    bert_tok *t = NULL;
    char err[256] = "";
    cr_assert_eq(bert_tok_load_mem(TINY, strlen(TINY), &t, err, sizeof err), 0, "%s", err);
    return t;
}

static void expect_ids(const bert_tok *t, const char *text, int max, const int32_t *want, int n)
{
    int32_t ids[64];
    int got = bert_tok_encode(t, text, strlen(text), ids, max, NULL);
    cr_assert_eq(got, n, "'%s': %d ids, want %d", text, got, n);
    for (int i = 0; i < n; i++)
        cr_assert_eq(ids[i], want[i], "'%s': id %d is %d, want %d", text, i, ids[i], want[i]);
}

Test(bert_tok, wordpiece_corner_cases)
{
    bert_tok *t = tiny();
    expect_ids(t, "unaffable", 64, (int32_t[]){2, 1, 3}, 3);          /* 9 chars > 5: [UNK] */
    expect_ids(t, "UNAFF", 64, (int32_t[]){2, 5, 6, 3}, 4);            /* lowercased, greedy */
    expect_ids(t, "unaf", 64, (int32_t[]){2, 1, 3}, 3);               /* "##af" missing: whole word */
    expect_ids(t, "aaaaa", 64, (int32_t[]){2, 8, 9, 9, 9, 9, 3}, 7);  /* exactly max chars */
    expect_ids(t, "aaaaaa", 64, (int32_t[]){2, 1, 3}, 3);
    expect_ids(t, "a,a", 64, (int32_t[]){2, 8, 10, 8, 3}, 5);         /* punctuation splits */
    expect_ids(t, "\xc3\xa9", 64, (int32_t[]){2, 11, 3}, 3);           /* e-acute: stripped */
    expect_ids(t, "a\xe4\xb8\xad" "a", 64, (int32_t[]){2, 8, 12, 8, 3}, 5); /* CJK isolated */
    expect_ids(t, "[SEP]x[SEP]", 64, (int32_t[]){2, 4, 3, 3}, 4);     /* longest added first */
    expect_ids(t, "a [CLS]a", 64, (int32_t[]){2, 8, 2, 8, 3}, 5);
    expect_ids(t, "a a a a", 4, (int32_t[]){2, 8, 8, 3}, 4);          /* truncated */
    cr_assert_eq(bert_tok_id(t, "##able"), 7);
    cr_assert_eq(bert_tok_id(t, "able"), -1);
    bert_tok_free(t);
}

static void expect_load_refused(const char *from, const char *to, const char *reason)
{
    /* TINY with the first occurrence of `from` replaced by `to`. */
    const char *at = strstr(TINY, from);
    cr_assert_not_null(at, "'%s' not in TINY", from);
    size_t n = strlen(TINY) - strlen(from) + strlen(to);
    char *json = malloc(n + 1);
    size_t pre = (size_t)(at - TINY);
    memcpy(json, TINY, pre);
    memcpy(json + pre, to, strlen(to));
    strcpy(json + pre + strlen(to), at + strlen(from));
    bert_tok *t = (bert_tok *)0x1;
    char err[256] = "";
    cr_assert_eq(bert_tok_load_mem(json, n, &t, err, sizeof err), -1, "accepted: %s", reason);
    cr_assert_null(t);
    cr_assert_not_null(strstr(err, reason), "error '%s' lacks '%s'", err, reason);
    free(json);
}

Test(bert_tok, refuses_unsupported_or_broken_tokenizers)
{
    expect_load_refused("\"WordPiece\"", "\"BPE\"", "is not WordPiece");
    expect_load_refused("\"BertNormalizer\"", "\"NFC\"", "normalizer 'NFC' is not supported");
    expect_load_refused("\"BertPreTokenizer\"", "\"Whitespace\"", "pre_tokenizer 'Whitespace'");
    expect_load_refused("\"unk_token\":\"[UNK]\"", "\"unk_token\":\"[NOPE]\"", "unk_token");
    expect_load_refused("\"un\":5", "\"un\":3", "used twice");
    expect_load_refused("\"un\":5", "\"un\":500", "id must be an integer");
    expect_load_refused("\"un\":5", "\"un\":-5", "id must be an integer");
    expect_load_refused("\"un\":5", "\"un\":\"5\"", "id must be an integer");
    expect_load_refused("\"max_input_chars_per_word\":5", "\"max_input_chars_per_word\":0",
                        "max_input_chars_per_word");
    expect_load_refused("\"lowercase\":true", "\"lowercase\":1", "must be booleans");
    expect_load_refused("\"sep\":[\"[SEP]\",3]", "\"sep\":[\"[SEP]\",99]", "bad cls/sep");
    expect_load_refused("\"type\":\"BertProcessing\"", "\"type\":\"RobertaProcessing\"",
                        "post_processor 'RobertaProcessing'");
    expect_load_refused("{\"id\":4,", "{\"id\":44,", "added_tokens[4]");
    expect_load_refused("\"un\":5", "\"un\":5,\"un\":6", "not valid JSON");
    expect_load_refused("{\"added_tokens\"", "[{\"added_tokens\"", "not valid JSON");
    bert_tok *t;
    char err[256];
    cr_assert_eq(bert_tok_load("/nonexistent/tokenizer.json", &t, err, sizeof err), -1);
    cr_assert_not_null(strstr(err, "cannot open"), "%s", err);
    cr_assert_eq(bert_tok_load_mem("[]", 2, &t, err, sizeof err), -1);
    cr_assert_not_null(strstr(err, "not a JSON object"), "%s", err);
    bert_tok_free(NULL);
}

/* ======================================================================== */
/* Golden data (tests/data/golden/README.md)                                 */
/* ======================================================================== */

static void check_golden(const char *path, bool truncate)
{
    if (access(path, R_OK) != 0)
        cr_skip_test("%s not present yet (scripts/golden makes it)", path);
    bert_tok *t = load_minilm();
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_ALLOW_NUL, &jerr);
    cr_assert_not_null(root, "%s: %s", path, jerr.text);
    json_t *cases = json_object_get(root, "cases");
    cr_assert(json_is_array(cases) && json_array_size(cases) > 0);
    int max = truncate ? (int)json_integer_value(json_object_get(root, "max_seq_length")) : 1 << 20;
    if (max <= 0)
        max = 256;
    int32_t *ids = malloc(sizeof(int32_t) * (1 << 20));
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        json_t *text = json_object_get(c, "text"), *want = json_object_get(c, "ids");
        if (!json_is_string(text))
            continue; /* bytes cases are for the byte-level tokenizers */
        bool tr = false;
        int n = bert_tok_encode(t, json_string_value(text), json_string_length(text), ids, max, &tr);
        cr_assert_eq((size_t)n, json_array_size(want), "case %zu: %d ids, want %zu", i, n,
                     json_array_size(want));
        for (int k = 0; k < n; k++)
            cr_assert_eq(ids[k], json_integer_value(json_array_get(want, (size_t)k)),
                         "case %zu: id %d differs", i, k);
        json_t *wtr = json_object_get(c, "truncated");
        if (wtr)
            cr_assert_eq(tr, json_is_true(wtr), "case %zu: truncated flag", i);
    }
    free(ids);
    json_decref(root);
    bert_tok_free(t);
}

Test(bert_tok, golden_minilm_tokens)
{
    check_golden(GOLDEN_TOKENS, false);
}

Test(bert_tok, golden_minilm_embedding_ids)
{
    check_golden(GOLDEN_EMB, true);
}
