/*
 * bert_tok: WordPiece with BertNormalizer and BertPreTokenizer. See
 * bert_tok.h for the contract and the steps.
 *
 * Encoding streams: each code point of the raw text goes through the
 * normalizer (0..36 code points out), then the pre-tokenizer state machine,
 * which collects one word at a time in a bounded buffer and hands finished
 * words to WordPiece. Nothing is allocated per call, and reading stops as
 * soon as the output is known to be truncated.
 */
#include "bert_tok.h"
#include "nn/nn_err.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "nn/nn_unicode.h"

#define MAX_FILE (64u << 20)
#define MAX_WORD_CHARS 1024 /* largest max_input_chars_per_word accepted */
#define MAX_ADDED 4096

typedef struct added_tok {
    char *s;
    size_t len;
    int32_t id;
} added_tok;

struct bert_tok {
    char **tokens;              /* (n_ids) id -> NUL-terminated token, NULL if unused */
    uint32_t *lens;             /* (n_ids) */
    int32_t n_ids;
    int32_t *slots;             /* open addressing: id or -1; mask + 1 slots */
    size_t mask;
    size_t max_piece;           /* longest vocabulary entry, bytes */
    int32_t unk, cls, sep;
    char prefix[32];            /* continuing_subword_prefix */
    size_t prefix_len;
    int max_chars;              /* max_input_chars_per_word */
    bool clean_text, chinese, strip_accents, lowercase;
    added_tok *added;           /* longest first */
    size_t n_added;
    uint8_t added_first[32];    /* bitmap of the first bytes of added tokens */
};

/* ========================================================================
 * Vocabulary
 * ======================================================================== */

static uint64_t hash_bytes(const char *a, size_t na, const char *b, size_t nb)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < na; i++)
        h = (h ^ (uint8_t)a[i]) * 1099511628211ull;
    for (size_t i = 0; i < nb; i++)
        h = (h ^ (uint8_t)b[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

/* The id of the concatenation a + b, or -1. */
static int32_t lookup2(const bert_tok *t, const char *a, size_t na, const char *b, size_t nb)
{
    size_t n = na + nb;
    for (size_t i = hash_bytes(a, na, b, nb) & t->mask;; i = (i + 1) & t->mask) {
        int32_t id = t->slots[i];
        if (id < 0)
            return -1;
        const char *s = t->tokens[id];
        if (t->lens[id] == n && memcmp(s, a, na) == 0 && memcmp(s + na, b, nb) == 0)
            return id;
    }
}

int32_t bert_tok_id(const bert_tok *t, const char *token)
{
    return lookup2(t, "", 0, token, strlen(token));
}

const char *bert_tok_token(const bert_tok *t, int32_t id)
{
    return id >= 0 && id < t->n_ids ? t->tokens[id] : NULL;
}

int32_t bert_tok_vocab_size(const bert_tok *t) { return t->n_ids; }
int32_t bert_tok_cls(const bert_tok *t) { return t->cls; }
int32_t bert_tok_sep(const bert_tok *t) { return t->sep; }

void bert_tok_free(bert_tok *t)
{
    if (!t)
        return;
    for (int32_t i = 0; t->tokens && i < t->n_ids; i++)
        free(t->tokens[i]);
    free(t->tokens);
    free(t->lens);
    free(t->slots);
    for (size_t i = 0; i < t->n_added; i++)
        free(t->added[i].s);
    free(t->added);
    free(t);
}

static int load_vocab(bert_tok *t, json_t *vocab, char *err, size_t errlen)
{
    if (!json_is_object(vocab) || json_object_size(vocab) == 0) {
        nn_errf(err, errlen, "tokenizer model.vocab must be a non-empty object");
        return -1;
    }
    size_t n = json_object_size(vocab);
    if (n > BERT_TOK_MAX_VOCAB) {
        nn_errf(err, errlen, "vocabulary of %zu entries (at most %d)", n, BERT_TOK_MAX_VOCAB);
        return -1;
    }
    const char *k;
    json_t *v;
    json_int_t max_id = -1;
    json_object_foreach(vocab, k, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) >= (json_int_t)n) {
            nn_errf(err, errlen, "vocabulary entry '%.64s': id must be an integer in [0, %zu)", k, n);
            return -1;
        }
        size_t len = strlen(k);
        if (len == 0 || len > BERT_TOK_MAX_PIECE) {
            nn_errf(err, errlen, "vocabulary entry of %zu bytes (must be 1..%d)", len,
                   BERT_TOK_MAX_PIECE);
            return -1;
        }
        if (json_integer_value(v) > max_id)
            max_id = json_integer_value(v);
    }
    t->n_ids = (int32_t)max_id + 1;
    t->tokens = calloc((size_t)t->n_ids, sizeof(char *));
    t->lens = calloc((size_t)t->n_ids, sizeof(uint32_t));
    size_t cap = 16;
    while (cap < 2 * n)
        cap *= 2;
    t->slots = malloc(cap * sizeof(int32_t));
    if (!t->tokens || !t->lens || !t->slots) {
        nn_errf(err, errlen, "out of memory");
        return -1;
    }
    memset(t->slots, 0xff, cap * sizeof(int32_t));
    t->mask = cap - 1;
    json_object_foreach(vocab, k, v) {
        int32_t id = (int32_t)json_integer_value(v);
        if (t->tokens[id]) {
            nn_errf(err, errlen, "vocabulary id %d is used twice ('%.64s' and '%.64s')", id,
                   t->tokens[id], k);
            return -1;
        }
        size_t len = strlen(k);
        if (!(t->tokens[id] = strdup(k))) {
            nn_errf(err, errlen, "out of memory");
            return -1;
        }
        t->lens[id] = (uint32_t)len;
        if (len > t->max_piece)
            t->max_piece = len;
        size_t i = hash_bytes("", 0, k, len) & t->mask;
        while (t->slots[i] >= 0)
            i = (i + 1) & t->mask; /* keys are unique: jansson refuses duplicates */
        t->slots[i] = id;
    }
    return 0;
}

/* ========================================================================
 * Loading
 * ======================================================================== */

static bool json_flag(json_t *o, const char *key, bool dflt, bool *out)
{
    json_t *v = json_object_get(o, key);
    if (!v) {
        *out = dflt;
        return true;
    }
    if (!json_is_boolean(v))
        return false;
    *out = json_is_true(v);
    return true;
}

static int cmp_added(const void *a, const void *b)
{
    const added_tok *x = a, *y = b;
    return x->len < y->len ? 1 : x->len > y->len ? -1 : 0; /* longest first */
}

static int load_added(bert_tok *t, json_t *added, char *err, size_t errlen)
{
    if (!added || json_is_null(added))
        return 0;
    if (!json_is_array(added) || json_array_size(added) > MAX_ADDED) {
        nn_errf(err, errlen, "tokenizer added_tokens must be an array of at most %d", MAX_ADDED);
        return -1;
    }
    t->added = calloc(json_array_size(added) + 1, sizeof(added_tok));
    if (!t->added) {
        nn_errf(err, errlen, "out of memory");
        return -1;
    }
    size_t i;
    json_t *a;
    json_array_foreach(added, i, a) {
        json_t *content = json_object_get(a, "content"), *id = json_object_get(a, "id");
        if (!json_is_string(content) || !json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) >= t->n_ids) {
            nn_errf(err, errlen, "tokenizer added_tokens[%zu] needs a string 'content' and an id "
                   "in the vocabulary", i);
            return -1;
        }
        size_t len = json_string_length(content);
        if (len == 0)
            continue;
        added_tok *at = &t->added[t->n_added];
        if (!(at->s = strdup(json_string_value(content)))) {
            nn_errf(err, errlen, "out of memory");
            return -1;
        }
        at->len = strlen(at->s);
        at->id = (int32_t)json_integer_value(id);
        t->n_added++;
        uint8_t c = (uint8_t)at->s[0];
        t->added_first[c >> 3] |= (uint8_t)(1u << (c & 7));
    }
    qsort(t->added, t->n_added, sizeof(added_tok), cmp_added);
    return 0;
}

/* The [CLS]/[SEP] ids from the post-processor. */
static int load_post(bert_tok *t, json_t *post, char *err, size_t errlen)
{
    const char *type = json_string_value(json_object_get(post, "type"));
    if (type && strcmp(type, "TemplateProcessing") == 0) {
        json_t *single = json_object_get(post, "single");
        json_t *first = json_object_get(json_array_get(single, 0), "SpecialToken");
        json_t *seq = json_object_get(json_array_get(single, 1), "Sequence");
        json_t *last = json_object_get(json_array_get(single, 2), "SpecialToken");
        json_t *specials = json_object_get(post, "special_tokens");
        if (json_array_size(single) != 3 || !first || !seq || !last) {
            nn_errf(err, errlen, "tokenizer post_processor: only the single template "
                   "'<special> $A <special>' is supported");
            return -1;
        }
        const char *names[2] = {json_string_value(json_object_get(first, "id")),
                                json_string_value(json_object_get(last, "id"))};
        int32_t ids[2];
        for (int k = 0; k < 2; k++) {
            json_t *st = names[k] ? json_object_get(specials, names[k]) : NULL;
            json_t *arr = json_object_get(st, "ids");
            json_t *id = json_array_get(arr, 0);
            if (json_array_size(arr) != 1 || !json_is_integer(id) || json_integer_value(id) < 0 ||
                json_integer_value(id) >= t->n_ids) {
                nn_errf(err, errlen, "tokenizer post_processor: special token '%.64s' has no "
                       "single id in the vocabulary", names[k] ? names[k] : "?");
                return -1;
            }
            ids[k] = (int32_t)json_integer_value(id);
        }
        t->cls = ids[0];
        t->sep = ids[1];
        return 0;
    }
    if (type && strcmp(type, "BertProcessing") == 0) {
        json_t *cls = json_array_get(json_object_get(post, "cls"), 1);
        json_t *sep = json_array_get(json_object_get(post, "sep"), 1);
        if (!json_is_integer(cls) || !json_is_integer(sep) || json_integer_value(cls) < 0 ||
            json_integer_value(sep) < 0 || json_integer_value(cls) >= t->n_ids ||
            json_integer_value(sep) >= t->n_ids) {
            nn_errf(err, errlen, "tokenizer post_processor: bad cls/sep ids");
            return -1;
        }
        t->cls = (int32_t)json_integer_value(cls);
        t->sep = (int32_t)json_integer_value(sep);
        return 0;
    }
    if (!post || json_is_null(post)) {
        t->cls = bert_tok_id(t, "[CLS]");
        t->sep = bert_tok_id(t, "[SEP]");
        if (t->cls >= 0 && t->sep >= 0)
            return 0;
    }
    nn_errf(err, errlen, "tokenizer post_processor '%.32s' is not supported (TemplateProcessing "
           "or BertProcessing)", type ? type : "null");
    return -1;
}

static int load_root(bert_tok *t, json_t *root, char *err, size_t errlen)
{
    json_t *model = json_object_get(root, "model");
    const char *mtype = json_string_value(json_object_get(model, "type"));
    if (!mtype || strcmp(mtype, "WordPiece") != 0) {
        nn_errf(err, errlen, "tokenizer model type '%.32s' is not WordPiece",
               mtype ? mtype : "missing");
        return -1;
    }
    if (load_vocab(t, json_object_get(model, "vocab"), err, errlen) != 0)
        return -1;
    json_t *unk = json_object_get(model, "unk_token");
    if (!json_is_string(unk) || (t->unk = bert_tok_id(t, json_string_value(unk))) < 0) {
        nn_errf(err, errlen, "tokenizer unk_token is missing or not in the vocabulary");
        return -1;
    }
    json_t *prefix = json_object_get(model, "continuing_subword_prefix");
    const char *p = prefix ? json_string_value(prefix) : "##";
    if (!p || strlen(p) >= sizeof t->prefix) {
        nn_errf(err, errlen, "tokenizer continuing_subword_prefix must be a short string");
        return -1;
    }
    strcpy(t->prefix, p);
    t->prefix_len = strlen(p);
    json_t *mc = json_object_get(model, "max_input_chars_per_word");
    t->max_chars = 100;
    if (mc) {
        if (!json_is_integer(mc) || json_integer_value(mc) < 1 ||
            json_integer_value(mc) > MAX_WORD_CHARS) {
            nn_errf(err, errlen, "tokenizer max_input_chars_per_word must be in 1..%d",
                   MAX_WORD_CHARS);
            return -1;
        }
        t->max_chars = (int)json_integer_value(mc);
    }

    json_t *norm = json_object_get(root, "normalizer");
    const char *ntype = json_string_value(json_object_get(norm, "type"));
    if (!ntype || strcmp(ntype, "BertNormalizer") != 0) {
        nn_errf(err, errlen, "tokenizer normalizer '%.32s' is not supported (BertNormalizer)",
               ntype ? ntype : "null");
        return -1;
    }
    json_t *sa = json_object_get(norm, "strip_accents");
    if (!json_flag(norm, "clean_text", true, &t->clean_text) ||
        !json_flag(norm, "handle_chinese_chars", true, &t->chinese) ||
        !json_flag(norm, "lowercase", true, &t->lowercase) ||
        (sa && !json_is_null(sa) && !json_is_boolean(sa))) {
        nn_errf(err, errlen, "tokenizer normalizer flags must be booleans");
        return -1;
    }
    t->strip_accents = (!sa || json_is_null(sa)) ? t->lowercase : json_is_true(sa);

    json_t *pre = json_object_get(root, "pre_tokenizer");
    const char *ptype = json_string_value(json_object_get(pre, "type"));
    if (!ptype || strcmp(ptype, "BertPreTokenizer") != 0) {
        nn_errf(err, errlen, "tokenizer pre_tokenizer '%.32s' is not supported (BertPreTokenizer)",
               ptype ? ptype : "null");
        return -1;
    }
    if (load_added(t, json_object_get(root, "added_tokens"), err, errlen) != 0)
        return -1;
    return load_post(t, json_object_get(root, "post_processor"), err, errlen);
}

int bert_tok_load_mem(const char *json, size_t len, bert_tok **out, char *err, size_t errlen)
{
    *out = NULL;
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        nn_errf(err, errlen, "tokenizer.json is not valid JSON: %s (line %d)", jerr.text,
               jerr.line);
        return -1;
    }
    bert_tok *t = calloc(1, sizeof(*t));
    int rc = -1;
    if (!t)
        nn_errf(err, errlen, "out of memory");
    else if (!json_is_object(root))
        nn_errf(err, errlen, "tokenizer.json is not a JSON object");
    else
        rc = load_root(t, root, err, errlen);
    json_decref(root);
    if (rc != 0) {
        bert_tok_free(t);
        return -1;
    }
    *out = t;
    return 0;
}

int bert_tok_load(const char *path, bert_tok **out, char *err, size_t errlen)
{
    *out = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        nn_errf(err, errlen, "cannot open '%s': %s", path, strerror(errno));
        return -1;
    }
    struct stat stb;
    if (fstat(fileno(fp), &stb) != 0 || !S_ISREG(stb.st_mode) || stb.st_size > MAX_FILE) {
        nn_errf(err, errlen, "'%s' is not a regular file of at most %u bytes", path, MAX_FILE);
        fclose(fp);
        return -1;
    }
    size_t n = (size_t)stb.st_size;
    char *buf = malloc(n + 1);
    if (!buf || fread(buf, 1, n, fp) != n) {
        nn_errf(err, errlen, "cannot read '%s'", path);
        free(buf);
        fclose(fp);
        return -1;
    }
    fclose(fp);
    int rc = bert_tok_load_mem(buf, n, out, err, errlen);
    free(buf);
    return rc;
}

/* ========================================================================
 * Normalizer
 * ======================================================================== */

/* BERT's "Chinese character": the CJK ideograph blocks, as in the
 * `tokenizers` library's BertNormalizer. */
static bool is_cjk(uint32_t c)
{
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
           (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
           (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

static bool is_ws(uint32_t c)
{
    return c == '\t' || c == '\n' || c == '\r' || nn_uc_is_space(c);
}

/* clean_text's "control": Cc, Cf, Co and Cs, but \t \n \r. Unassigned code
 * points (Cn) are kept, as the `tokenizers` library keeps them (checked
 * against it: U+0378, U+10FFFF come out as [UNK]). */
static bool is_control(uint32_t c)
{
    if (c == '\t' || c == '\n' || c == '\r')
        return false;
    switch (nn_uc_category(c)) {
    case NN_UC_Cc: case NN_UC_Cf: case NN_UC_Co: case NN_UC_Cs:
        return true;
    default:
        return false;
    }
}

static bool is_punct(uint32_t c)
{
    return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
           (c >= 123 && c <= 126) || nn_uc_is_punct(c);
}

#define NORM_MAX 40 /* 3 (CJK spacing) x 4 (NFD) x 3 (lowercase) */

/* One raw code point through the normalizer; returns the count written. */
static size_t normalize_cp(const bert_tok *t, uint32_t cp, uint32_t out[NORM_MAX])
{
    if (t->clean_text) {
        if (cp == 0 || cp == 0xFFFD || is_control(cp))
            return 0;
        if (is_ws(cp))
            cp = ' ';
    }
    uint32_t a[3] = {cp, 0, 0};
    size_t na = 1;
    if (t->chinese && is_cjk(cp)) {
        a[0] = ' ', a[1] = cp, a[2] = ' ';
        na = 3;
    }
    size_t n = 0;
    for (size_t i = 0; i < na; i++) {
        uint32_t d[NN_UC_MAX_DECOMP];
        size_t nd = 1;
        d[0] = a[i];
        if (t->strip_accents)
            nd = nn_uc_nfd(a[i], d);
        for (size_t j = 0; j < nd; j++) {
            if (t->strip_accents && nn_uc_category(d[j]) == NN_UC_Mn)
                continue;
            if (t->lowercase) {
                uint32_t l[3];
                size_t nl = nn_uc_lower(d[j], l);
                for (size_t k = 0; k < nl; k++)
                    out[n++] = l[k];
            } else {
                out[n++] = d[j];
            }
        }
    }
    return n;
}

/* ========================================================================
 * Encoding
 * ======================================================================== */

typedef struct enc {
    const bert_tok *t;
    int32_t *ids;               /* may be NULL (count only) */
    int cap;                    /* content tokens that fit: max_len - 2 */
    int n;                      /* content tokens so far */
    bool full;                  /* one more token than fits was seen */
    char word[MAX_WORD_CHARS * 4 + 8];
    size_t wlen;
    int wchars;                 /* code points in word (may exceed what is kept) */
} enc;

static void emit(enc *e, int32_t id)
{
    if (e->full)
        return;
    if (e->n == e->cap) {
        e->full = true;
        return;
    }
    if (e->ids)
        e->ids[1 + e->n] = id;
    e->n++;
}

/* WordPiece on the collected word; then clears it. */
static void flush_word(enc *e)
{
    const bert_tok *t = e->t;
    if (e->wchars == 0)
        return;
    size_t n = e->wlen;
    const char *w = e->word;
    int wchars = e->wchars;
    e->wlen = 0;
    e->wchars = 0;
    if (wchars > t->max_chars) {
        emit(e, t->unk);
        return;
    }
    int32_t pieces[MAX_WORD_CHARS];
    int np = 0;
    size_t start = 0;
    while (start < n) {
        const char *pre = start > 0 ? t->prefix : "";
        size_t plen = start > 0 ? t->prefix_len : 0;
        /* No vocabulary entry is longer than max_piece bytes. */
        size_t end = n;
        if (end - start + plen > t->max_piece) {
            end = start + (t->max_piece > plen ? t->max_piece - plen : 0);
            while (end > start && (w[end] & 0xC0) == 0x80)
                end--; /* back to a code point boundary */
        }
        int32_t found = -1;
        while (end > start) {
            found = lookup2(t, pre, plen, w + start, end - start);
            if (found >= 0)
                break;
            end--;
            while (end > start && (w[end] & 0xC0) == 0x80)
                end--;
        }
        if (found < 0) {
            emit(e, t->unk);
            return;
        }
        pieces[np++] = found;
        start = end;
    }
    for (int i = 0; i < np; i++)
        emit(e, pieces[i]);
}

static void push_cp(enc *e, uint32_t c)
{
    if (is_ws(c)) {
        flush_word(e);
        return;
    }
    if (is_punct(c)) {
        flush_word(e);
        e->wlen = nn_utf8_encode(c, e->word);
        e->wchars = 1;
        flush_word(e);
        return;
    }
    /* Beyond max_chars the word is [UNK] whatever follows: count, keep nothing. */
    if (e->wchars < e->t->max_chars + 1)
        e->wlen += nn_utf8_encode(c, e->word + e->wlen);
    e->wchars++;
}

/* The added token starting at s[0, len), or NULL. */
static const added_tok *match_added(const bert_tok *t, const char *s, size_t len)
{
    uint8_t c = (uint8_t)s[0];
    if (!(t->added_first[c >> 3] & (1u << (c & 7))))
        return NULL;
    for (size_t i = 0; i < t->n_added; i++) {
        const added_tok *a = &t->added[i];
        if (a->len <= len && memcmp(a->s, s, a->len) == 0)
            return a;
    }
    return NULL;
}

int bert_tok_encode(const bert_tok *t, const char *text, size_t len, int32_t *ids, int max_len,
                    bool *truncated)
{
    if (max_len < 2)
        max_len = 2;
    enc *e = malloc(sizeof(enc));
    if (!e)
        return -1;
    e->t = t;
    e->ids = ids;
    e->cap = max_len - 2;
    e->n = 0;
    e->full = false;
    e->wlen = 0;
    e->wchars = 0;
    size_t pos = 0;
    while (pos < len && !e->full) {
        const added_tok *a = t->n_added ? match_added(t, text + pos, len - pos) : NULL;
        if (a) {
            flush_word(e);
            emit(e, a->id);
            pos += a->len;
            continue;
        }
        uint32_t cp;
        pos += nn_utf8_decode(text + pos, len - pos, &cp);
        uint32_t norm[NORM_MAX];
        size_t nn = normalize_cp(t, cp, norm);
        for (size_t i = 0; i < nn; i++)
            push_cp(e, norm[i]);
    }
    flush_word(e);
    if (ids) {
        ids[0] = t->cls;
        ids[1 + e->n] = t->sep;
    }
    int n = e->n + 2;
    if (truncated)
        *truncated = e->full;
    free(e);
    return n;
}
