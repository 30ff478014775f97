/*
 * llm_tok: byte-level BPE as llama.cpp (src/llama-vocab.cpp, src/unicode.cpp)
 * implements it for tokenizer.ggml.model "gpt2". The reference is followed
 * step by step, because a model only works on the ids its own tokenizer
 * makes:
 *
 *   1. special partition: the texts of control, user-defined and unknown
 *      tokens are cut out of the text, longest token first, each at all its
 *      non-overlapping occurrences left to right (tokenizer_st_partition).
 *      Without parse_special only user-defined tokens are cut out, as HF
 *      tokenizers does with non-special added tokens.
 *   2. each remaining fragment is decoded to code points (leniently, as the
 *      reference does: see tok_decode) and split by the pre-tokenizer (the
 *      hand-written state machines mirror unicode_regex_split_custom_*).
 *   3. each piece is re-encoded to UTF-8, its bytes mapped to their
 *      byte-level tokens (GPT-2's bytes_to_unicode), and merged by rank:
 *      repeatedly the lowest-ranked adjacent pair, leftmost first.
 *
 * The merge loop is a binary heap over a linked list of symbols, O(n log n)
 * per piece, with stale heap entries skipped, so a 100 KB run of one letter
 * costs no more than its length suggests. Scratch buffers live for one
 * llm_tokenize call and only grow.
 *
 * Hash tables (token text -> id, (left, right) -> merge) are seeded per
 * vocab from getrandom(), so a crafted vocabulary cannot force collisions.
 */
#include "llm_tok.h"
#include "nn/nn_err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "nn/nn_unicode.h"

/* Sanity caps on what a model file may ask us to allocate (the hash tables
 * then stay under 32 MB and 256 MB). Real vocabularies have at most a few
 * hundred thousand tokens and merges. */
#define MAX_VOCAB (1 << 22)
#define MAX_MERGES (1 << 23)
#define MAX_TEXT_BYTES 0x40000000u /* all token texts together */

/* Token attributes (bit flags, as llama.cpp's llama_token_attr). */
enum {
    A_NORMAL = 1 << 0,
    A_UNKNOWN = 1 << 1,
    A_CONTROL = 1 << 2,
    A_USER = 1 << 3,
    A_UNUSED = 1 << 4,
    A_BYTE = 1 << 5,
    A_EOG = 1 << 6, /* ends generation (not an llama.cpp attr: its eog set) */
};

typedef struct merge_slot {
    uint64_t key;   /* (uint64_t)left << 32 | right; EMPTY_KEY when free */
    uint32_t rank;  /* index in tokenizer.ggml.merges */
    int32_t result; /* id of left + right */
} merge_slot;

#define EMPTY_KEY UINT64_MAX

struct llm_vocab {
    int32_t n;                /* tokens */
    llm_pre pre;
    bool ignore_merges;       /* a piece that is a whole token is not merged */
    bool add_bos;
    int32_t bos, eos, eot, eom;

    char *text;               /* every token's text, concatenated */
    uint32_t *text_off;       /* (n + 1): token i is text[text_off[i], text_off[i+1]) */
    char *piece;              /* byte-level decoded texts (what normal tokens print) */
    uint32_t *piece_off;      /* (n + 1) */
    uint8_t *attr;            /* (n) A_* flags */

    uint64_t seed;
    int32_t *by_text;         /* open addressing, -1 = free; (text_mask + 1) */
    size_t text_mask;
    merge_slot *merges;       /* open addressing; (merge_mask + 1) */
    size_t merge_mask;

    uint16_t byte_cp[256];    /* GPT-2 bytes_to_unicode */
    int32_t byte_tok[256];    /* token of each byte's byte-level character, -1 if none */
    int32_t byte_fb[256][2];  /* llama.cpp's fallback when it is missing: the
                                 tokens of that character's single UTF-8 bytes */

    int32_t *specials;        /* control/user/unknown ids, longest text first */
    size_t n_specials;
};

/* ========================================================================
 * Hashing
 * ======================================================================== */

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBull;
    x ^= x >> 31;
    return x;
}

static uint64_t hash_bytes(uint64_t seed, const char *s, size_t len)
{
    uint64_t h = mix64(seed ^ (len * 0x9E3779B97F4A7C15ull));
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        h = mix64(h ^ w) + 0x9E3779B97F4A7C15ull;
    }
    uint64_t w = 0;
    memcpy(&w, s + i, len - i);
    return mix64(h ^ w ^ ((uint64_t)(len - i) << 59));
}

static uint64_t new_seed(const void *salt)
{
    uint64_t s = 0;
    if (getrandom(&s, sizeof s, GRND_NONBLOCK) != (ssize_t)sizeof s) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        s = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)(uintptr_t)salt;
    }
    return mix64(s);
}

static size_t pow2_at_least(size_t n)
{
    size_t c = 16;
    while (c < n)
        c <<= 1;
    return c;
}

static inline const char *tok_text(const llm_vocab *v, int32_t id, size_t *len)
{
    *len = v->text_off[id + 1] - v->text_off[id];
    return v->text + v->text_off[id];
}

static int32_t find_text(const llm_vocab *v, const char *s, size_t len)
{
    size_t i = (size_t)hash_bytes(v->seed, s, len) & v->text_mask;
    for (;; i = (i + 1) & v->text_mask) {
        int32_t id = v->by_text[i];
        if (id < 0)
            return -1;
        size_t tl;
        const char *t = tok_text(v, id, &tl);
        if (tl == len && memcmp(t, s, len) == 0)
            return id;
    }
}

static inline size_t merge_home(const llm_vocab *v, uint64_t key)
{
    return (size_t)mix64(key ^ v->seed) & v->merge_mask;
}

static inline const merge_slot *find_merge(const llm_vocab *v, int32_t left, int32_t right)
{
    if (left < 0 || right < 0)
        return NULL;
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    for (size_t i = merge_home(v, key);; i = (i + 1) & v->merge_mask) {
        const merge_slot *m = &v->merges[i];
        if (m->key == key)
            return m;
        if (m->key == EMPTY_KEY)
            return NULL;
    }
}

/* ========================================================================
 * Byte-level mapping (GPT-2 bytes_to_unicode)
 * ======================================================================== */

/* Printable bytes map to themselves; the other 68 (controls, space, DEL,
 * 0x80..0xA0, soft hyphen) to U+0100.. in byte order. */
static inline bool byte_is_self(unsigned b)
{
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

#define BYTE_CP_END (0x100 + 68) /* byte-level characters are below this */

static void byte_tables(uint16_t to_cp[256], int16_t to_byte[BYTE_CP_END])
{
    unsigned extra = 0;
    for (unsigned i = 0; i < BYTE_CP_END; i++)
        to_byte[i] = -1;
    for (unsigned b = 0; b < 256; b++) {
        to_cp[b] = (uint16_t)(byte_is_self(b) ? b : 0x100 + extra++);
        to_byte[to_cp[b]] = (int16_t)b;
    }
}

/* ========================================================================
 * UTF-8 as the reference reads it
 * ======================================================================== */

/*
 * llama.cpp's unicode_cpt_from_utf8 checks only the bit patterns: overlong
 * forms and surrogates decode to their values (C0 AF is '/'), and any other
 * error gives U+FFFD for one byte. Tokenizing the same way is what makes our
 * ids equal to the ones the model was run with. Values past U+10FFFF (F4 90..
 * and F5..F7 leads), where the reference throws, are U+FFFD for one byte.
 */
static size_t tok_decode(const unsigned char *s, size_t len, uint32_t *cp)
{
    unsigned char b = s[0];
    size_t more;
    uint32_t c;
    if (b < 0x80) {
        *cp = b;
        return 1;
    }
    if (b < 0xC0 || b >= 0xF8)
        goto bad;
    more = b < 0xE0 ? 1 : b < 0xF0 ? 2 : 3;
    if (len <= more)
        goto bad;
    c = b & (0x3Fu >> more);
    for (size_t i = 1; i <= more; i++) {
        if ((s[i] & 0xC0) != 0x80)
            goto bad;
        c = (c << 6) | (s[i] & 0x3Fu);
    }
    if (c > 0x10FFFF)
        goto bad;
    *cp = c;
    return more + 1;
bad:
    *cp = 0xFFFD;
    return 1;
}

/* UTF-8 of any value <= U+10FFFF, surrogates included (as the reference's
 * unicode_cpt_to_utf8), so a lone surrogate keeps its three bytes. */
static size_t tok_encode(uint32_t cp, unsigned char *out)
{
    if (cp < 0x80) {
        out[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xC0 | (cp >> 6));
        out[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xE0 | (cp >> 12));
        out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | (cp >> 18));
    out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* ========================================================================
 * Load
 * ======================================================================== */

/* A bounded, printable rendering of untrusted bytes for error messages:
 * controls, quote and backslash escaped, cut with "..." to fit cap. */
static const char *shown(char *buf, size_t cap, const char *s, size_t len)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        bool esc = c < 0x20 || c == 0x7F || c == '\'' || c == '\\';
        if (o + (esc ? 4 : 1) + 4 > cap) {
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        if (esc)
            o += (size_t)snprintf(buf + o, cap - o, "\\x%02X", c);
        else
            buf[o++] = (char)c;
    }
    buf[o] = '\0';
    return buf;
}

static const char *const SUPPORTED_PRE = "default, gpt-2, smollm, llama3, llama-bpe, qwen2";

static int parse_pre(const char *s, size_t len, llm_pre *pre, bool *ignore_merges)
{
#define IS(lit) (len == sizeof(lit) - 1 && memcmp(s, lit, len) == 0)
    *ignore_merges = false;
    if (IS("default") || IS("gpt-2"))
        *pre = LLM_PRE_GPT2;
    else if (IS("smollm"))
        *pre = LLM_PRE_SMOLLM;
    else if (IS("llama3") || IS("llama-bpe")) {
        *pre = LLM_PRE_LLAMA3;
        *ignore_merges = true; /* as llama.cpp and the HF tokenizer.json */
    } else if (IS("qwen2"))
        *pre = LLM_PRE_QWEN2;
    else
        return -1;
    return 0;
#undef IS
}

/* An optional token id key: absent (or -1) leaves *id at -1. */
static int load_id(const gguf_file *f, const char *key, int32_t n, int32_t *id, char *err,
                   size_t errlen)
{
    *id = -1;
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv)
        return 0;
    int64_t v;
    if (gguf_kv_i64(kv, &v) != GGUF_OK)
        return nn_errf(err, errlen, "%s: expected an integer, got %s", key, gguf_type_name(kv->type));
    if (v == -1)
        return 0;
    if (v < 0 || v >= n)
        return nn_errf(err, errlen, "%s: id %lld out of range (vocab size %d)", key, (long long)v, n);
    *id = (int32_t)v;
    return 0;
}

/* The string array under key, with its element type checked. */
static int load_str_arr(const gguf_file *f, const char *key, bool required, const gguf_arr **out,
                        char *err, size_t errlen)
{
    *out = NULL;
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv)
        return required ? nn_errf(err, errlen, "%s: missing", key) : 0;
    if (kv->type != GGUF_TYPE_ARRAY || kv->arr.type != GGUF_TYPE_STRING)
        return nn_errf(err, errlen, "%s: expected an array of strings, got %s%s%s", key,
                    gguf_type_name(kv->type), kv->type == GGUF_TYPE_ARRAY ? " of " : "",
                    kv->type == GGUF_TYPE_ARRAY ? gguf_type_name(kv->arr.type) : "");
    *out = &kv->arr;
    return 0;
}

static bool is_eog_text(const char *s, size_t len)
{
    static const char *const names[] = {"<|im_end|>", "<|eot_id|>", "<|end_of_text|>",
                                        "<|endoftext|>", "<end_of_turn>"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strlen(names[i]) == len && memcmp(names[i], s, len) == 0)
            return true;
    return false;
}

static int cmp_special(const void *a, const void *b, void *vp)
{
    const llm_vocab *v = vp;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    size_t lx = v->text_off[x + 1] - v->text_off[x], ly = v->text_off[y + 1] - v->text_off[y];
    if (lx != ly)
        return lx > ly ? -1 : 1; /* longest first */
    return x < y ? -1 : x > y;   /* then by id, so the order is deterministic */
}

static int load_tokens(llm_vocab *v, const gguf_file *f, char *err, size_t errlen)
{
    const gguf_arr *toks;
    if (load_str_arr(f, "tokenizer.ggml.tokens", true, &toks, err, errlen) != 0)
        return -1;
    if (toks->count == 0 || toks->count > MAX_VOCAB)
        return nn_errf(err, errlen, "tokenizer.ggml.tokens: %llu tokens (want 1..%d)",
                    (unsigned long long)toks->count, MAX_VOCAB);
    v->n = (int32_t)toks->count;
    size_t n = (size_t)v->n;

    uint64_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += toks->strs[i].len;
    if (total > MAX_TEXT_BYTES)
        return nn_errf(err, errlen, "tokenizer.ggml.tokens: %llu bytes of text (max %u)",
                    (unsigned long long)total, MAX_TEXT_BYTES);

    v->text = malloc(total + 1);
    v->piece = malloc(total + 1);
    v->text_off = malloc((n + 1) * sizeof *v->text_off);
    v->piece_off = malloc((n + 1) * sizeof *v->piece_off);
    v->attr = calloc(n, 1);
    v->text_mask = pow2_at_least(2 * n) - 1;
    v->by_text = malloc((v->text_mask + 1) * sizeof *v->by_text);
    if (!v->text || !v->piece || !v->text_off || !v->piece_off || !v->attr || !v->by_text)
        return nn_errf(err, errlen, "tokenizer: out of memory for %zu tokens", n);
    memset(v->by_text, 0xFF, (v->text_mask + 1) * sizeof *v->by_text);

    uint32_t o = 0;
    for (size_t i = 0; i < n; i++) {
        v->text_off[i] = o;
        if (toks->strs[i].len)
            memcpy(v->text + o, toks->strs[i].ptr, toks->strs[i].len);
        o += (uint32_t)toks->strs[i].len;
    }
    v->text_off[n] = o;

    /* token_type: optional (all normal without it). */
    const gguf_kv *tt = gguf_find_kv(f, "tokenizer.ggml.token_type");
    if (tt) {
        if (tt->type != GGUF_TYPE_ARRAY || tt->arr.type != GGUF_TYPE_INT32)
            return nn_errf(err, errlen, "tokenizer.ggml.token_type: expected an array of int32, got %s%s%s",
                        gguf_type_name(tt->type), tt->type == GGUF_TYPE_ARRAY ? " of " : "",
                        tt->type == GGUF_TYPE_ARRAY ? gguf_type_name(tt->arr.type) : "");
        if (tt->arr.count != n)
            return nn_errf(err, errlen, "tokenizer.ggml.token_type: %llu entries for %zu tokens",
                        (unsigned long long)tt->arr.count, n);
    }
    for (size_t i = 0; i < n; i++) {
        int64_t t = 1;
        if (tt && gguf_arr_i64(&tt->arr, i, &t) != GGUF_OK)
            return nn_errf(err, errlen, "tokenizer.ggml.token_type[%zu]: unreadable", i);
        static const uint8_t attr_of[7] = {0, A_NORMAL, A_UNKNOWN, A_CONTROL, A_USER, A_UNUSED, A_BYTE};
        if (t < 0 || t > 6)
            return nn_errf(err, errlen, "tokenizer.ggml.token_type[%zu]: %lld is not a token type (0..6)",
                        i, (long long)t);
        v->attr[i] = attr_of[t];
    }

    /* Text -> id. Empty texts are not findable (llama.cpp renames them
     * "[EMPTY_<id>]"); duplicates are refused (llama.cpp asserts on them). */
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const char *s = tok_text(v, (int32_t)i, &len);
        if (len == 0)
            continue;
        size_t h = (size_t)hash_bytes(v->seed, s, len) & v->text_mask;
        for (;; h = (h + 1) & v->text_mask) {
            int32_t id = v->by_text[h];
            if (id < 0) {
                v->by_text[h] = (int32_t)i;
                break;
            }
            size_t l2;
            const char *s2 = tok_text(v, id, &l2);
            if (l2 == len && memcmp(s, s2, len) == 0) {
                char b[64];
                return nn_errf(err, errlen, "tokenizer.ggml.tokens[%zu]: '%s' repeats token %d", i,
                            shown(b, sizeof b, s, len), id);
            }
        }
    }
    return 0;
}

/* What token_to_piece prints for each token: normal and byte tokens are
 * byte-level decoded (characters outside the byte map, which a well-formed
 * vocab does not have, are kept as they are); the others keep their text. */
static void build_pieces(llm_vocab *v, const int16_t to_byte[BYTE_CP_END])
{
    uint32_t o = 0;
    for (int32_t i = 0; i < v->n; i++) {
        v->piece_off[i] = o;
        size_t len;
        const unsigned char *s = (const unsigned char *)tok_text(v, i, &len);
        if (!(v->attr[i] & (A_NORMAL | A_BYTE)) || (v->attr[i] & (A_CONTROL | A_UNKNOWN | A_USER))) {
            memcpy(v->piece + o, s, len);
            o += (uint32_t)len;
            continue;
        }
        for (size_t p = 0; p < len;) {
            uint32_t cp;
            size_t k = tok_decode(s + p, len - p, &cp);
            int b = cp < BYTE_CP_END ? to_byte[cp] : -1;
            if (b >= 0) {
                v->piece[o++] = (char)b;
            } else {
                memcpy(v->piece + o, s + p, k);
                o += (uint32_t)k;
            }
            p += k;
        }
    }
    v->piece_off[v->n] = o;
}

static int load_merges(llm_vocab *v, const gguf_file *f, char *err, size_t errlen)
{
    const gguf_arr *m;
    if (load_str_arr(f, "tokenizer.ggml.merges", true, &m, err, errlen) != 0)
        return -1;
    if (m->count > MAX_MERGES)
        return nn_errf(err, errlen, "tokenizer.ggml.merges: %llu merges (max %d)",
                    (unsigned long long)m->count, MAX_MERGES);
    v->merge_mask = pow2_at_least(2 * (size_t)m->count + 1) - 1;
    v->merges = malloc((v->merge_mask + 1) * sizeof *v->merges);
    if (!v->merges)
        return nn_errf(err, errlen, "tokenizer: out of memory for %llu merges",
                    (unsigned long long)m->count);
    for (size_t i = 0; i <= v->merge_mask; i++)
        v->merges[i].key = EMPTY_KEY;

    char *cat = NULL;
    size_t cat_cap = 0;
    int rc = 0;
    for (uint64_t i = 0; i < m->count && rc == 0; i++) {
        const char *s = m->strs[i].ptr;
        size_t len = m->strs[i].len;
        char b[96];
        /* Byte-level tokens never hold a space: exactly one separates the two. */
        const char *sp = len > 0 ? memchr(s, ' ', len) : NULL;
        if (!sp || sp == s || sp == s + len - 1 || memchr(sp + 1, ' ', (size_t)(s + len - sp - 1))) {
            rc = nn_errf(err, errlen, "tokenizer.ggml.merges[%llu]: '%s' is not two tokens",
                      (unsigned long long)i, shown(b, sizeof b, s, len));
            break;
        }
        size_t ll = (size_t)(sp - s), rl = len - ll - 1;
        int32_t l = find_text(v, s, ll), r = find_text(v, sp + 1, rl);
        if (l < 0 || r < 0) {
            char b2[64];
            rc = nn_errf(err, errlen, "tokenizer.ggml.merges[%llu]: '%s' is not in the vocabulary",
                      (unsigned long long)i,
                      l < 0 ? shown(b2, sizeof b2, s, ll) : shown(b2, sizeof b2, sp + 1, rl));
            break;
        }
        if (ll + rl > cat_cap) {
            cat_cap = 2 * (ll + rl);
            char *nc = realloc(cat, cat_cap);
            if (!nc) {
                rc = nn_errf(err, errlen, "tokenizer: out of memory");
                break;
            }
            cat = nc;
        }
        memcpy(cat, s, ll);
        memcpy(cat + ll, sp + 1, rl);
        int32_t res = find_text(v, cat, ll + rl);
        if (res < 0) {
            char b2[64];
            rc = nn_errf(err, errlen,
                      "tokenizer.ggml.merges[%llu]: '%s' makes '%s', which is not in the vocabulary",
                      (unsigned long long)i, shown(b, sizeof b, s, len),
                      shown(b2, sizeof b2, cat, ll + rl));
            break;
        }
        uint64_t key = (uint64_t)(uint32_t)l << 32 | (uint32_t)r;
        for (size_t h = merge_home(v, key);; h = (h + 1) & v->merge_mask) {
            merge_slot *ms = &v->merges[h];
            if (ms->key == key)
                break; /* a repeated pair keeps its first (lowest) rank, as llama.cpp */
            if (ms->key == EMPTY_KEY) {
                ms->key = key;
                ms->rank = (uint32_t)i;
                ms->result = res;
                break;
            }
        }
    }
    free(cat);
    return rc;
}

int llm_vocab_load(const gguf_file *f, llm_vocab **out, char *err, size_t errlen)
{
    *out = NULL;
    if (err && errlen)
        err[0] = '\0';
    const char *s;
    size_t len;
    int r = gguf_get_str(f, "tokenizer.ggml.model", &s, &len);
    if (r == GGUF_ENOENT)
        return nn_errf(err, errlen, "tokenizer.ggml.model: missing");
    if (r != GGUF_OK)
        return nn_errf(err, errlen, "tokenizer.ggml.model: not a string");
    if (len != 4 || memcmp(s, "gpt2", 4) != 0) {
        char b[64];
        return nn_errf(err, errlen,
                    "tokenizer.ggml.model '%s' is not supported (supported: gpt2, byte-level BPE)",
                    shown(b, sizeof b, s, len));
    }

    llm_vocab *v = calloc(1, sizeof *v);
    if (!v)
        return nn_errf(err, errlen, "tokenizer: out of memory");
    v->seed = new_seed(v);

    r = gguf_get_str(f, "tokenizer.ggml.pre", &s, &len);
    if (r == GGUF_ENOENT) {
        v->pre = LLM_PRE_GPT2; /* llama.cpp's "default", with a warning there */
    } else if (r != GGUF_OK) {
        nn_errf(err, errlen, "tokenizer.ggml.pre: not a string");
        goto bad;
    } else if (parse_pre(s, len, &v->pre, &v->ignore_merges) != 0) {
        char b[64];
        nn_errf(err, errlen, "tokenizer.ggml.pre '%s' is not supported (supported: %s)",
             shown(b, sizeof b, s, len), SUPPORTED_PRE);
        goto bad;
    }

    if (load_tokens(v, f, err, errlen) != 0)
        goto bad;
    if (load_id(f, "tokenizer.ggml.bos_token_id", v->n, &v->bos, err, errlen) != 0 ||
        load_id(f, "tokenizer.ggml.eos_token_id", v->n, &v->eos, err, errlen) != 0 ||
        load_id(f, "tokenizer.ggml.eot_token_id", v->n, &v->eot, err, errlen) != 0 ||
        load_id(f, "tokenizer.ggml.eom_token_id", v->n, &v->eom, err, errlen) != 0)
        goto bad;
    /* Without the key, llama.cpp adds BOS for Llama 3 vocabularies only. */
    v->add_bos = v->pre == LLM_PRE_LLAMA3;
    const gguf_kv *kv = gguf_find_kv(f, "tokenizer.ggml.add_bos_token");
    if (kv && gguf_kv_bool(kv, &v->add_bos) != GGUF_OK) {
        nn_errf(err, errlen, "tokenizer.ggml.add_bos_token: expected a bool, got %s",
             gguf_type_name(kv->type));
        goto bad;
    }

    /* End of generation: eos, eot, eom, and the turn-closing texts. Like
     * llama.cpp, a token with such a text is made a control token if the
     * file forgot to (so it is matched as special and not printed). */
    for (int32_t i = 0; i < v->n; i++) {
        size_t tl;
        const char *t = tok_text(v, i, &tl);
        if (is_eog_text(t, tl))
            v->attr[i] |= A_EOG | A_CONTROL;
    }
    if (v->eos >= 0)
        v->attr[v->eos] |= A_EOG;
    if (v->eot >= 0)
        v->attr[v->eot] |= A_EOG;
    if (v->eom >= 0)
        v->attr[v->eom] |= A_EOG;

    int16_t to_byte[BYTE_CP_END];
    byte_tables(v->byte_cp, to_byte);
    build_pieces(v, to_byte);

    for (unsigned b = 0; b < 256; b++) {
        unsigned char u[4];
        size_t k = tok_encode(v->byte_cp[b], u);
        v->byte_tok[b] = find_text(v, (const char *)u, k);
        v->byte_fb[b][0] = find_text(v, (const char *)u, 1);
        v->byte_fb[b][1] = k > 1 ? find_text(v, (const char *)u + 1, 1) : -1;
    }

    if (load_merges(v, f, err, errlen) != 0)
        goto bad;

    for (int32_t i = 0; i < v->n; i++)
        if ((v->attr[i] & (A_CONTROL | A_USER | A_UNKNOWN)) && v->text_off[i + 1] > v->text_off[i])
            v->n_specials++;
    v->specials = malloc((v->n_specials ? v->n_specials : 1) * sizeof *v->specials);
    if (!v->specials) {
        nn_errf(err, errlen, "tokenizer: out of memory");
        goto bad;
    }
    v->n_specials = 0;
    for (int32_t i = 0; i < v->n; i++)
        if ((v->attr[i] & (A_CONTROL | A_USER | A_UNKNOWN)) && v->text_off[i + 1] > v->text_off[i])
            v->specials[v->n_specials++] = i;
    qsort_r(v->specials, v->n_specials, sizeof *v->specials, cmp_special, v);

    *out = v;
    return 0;
bad:
    llm_vocab_free(v);
    return -1;
}

void llm_vocab_free(llm_vocab *v)
{
    if (!v)
        return;
    free(v->text);
    free(v->text_off);
    free(v->piece);
    free(v->piece_off);
    free(v->attr);
    free(v->by_text);
    free(v->merges);
    free(v->specials);
    free(v);
}

/* ========================================================================
 * Accessors
 * ======================================================================== */

int32_t llm_vocab_size(const llm_vocab *v) { return v->n; }
llm_pre llm_vocab_pre(const llm_vocab *v) { return v->pre; }
int32_t llm_vocab_bos(const llm_vocab *v) { return v->bos; }
int32_t llm_vocab_eos(const llm_vocab *v) { return v->eos; }
bool llm_vocab_add_bos(const llm_vocab *v) { return v->add_bos; }

bool llm_vocab_is_eog(const llm_vocab *v, int32_t id)
{
    return id >= 0 && id < v->n && (v->attr[id] & A_EOG);
}

bool llm_vocab_is_control(const llm_vocab *v, int32_t id)
{
    return id >= 0 && id < v->n && (v->attr[id] & (A_CONTROL | A_USER));
}

int32_t llm_vocab_find(const llm_vocab *v, const char *text, size_t len)
{
    if (len == 0)
        return -1;
    return find_text(v, text, len);
}

size_t llm_token_to_piece(const llm_vocab *v, int32_t id, bool render_special, char *buf, size_t cap)
{
    if (id < 0 || id >= v->n)
        return 0;
    uint8_t a = v->attr[id];
    if ((a & (A_CONTROL | A_UNKNOWN)) && !render_special)
        return 0;
    if (!(a & (A_CONTROL | A_UNKNOWN | A_USER | A_NORMAL | A_BYTE)))
        return 0; /* undefined/unused types print nothing, as in llama.cpp */
    size_t len = v->piece_off[id + 1] - v->piece_off[id];
    if (buf && cap)
        memcpy(buf, v->piece + v->piece_off[id], len < cap ? len : cap);
    return len;
}

/* ========================================================================
 * Tokenize: scratch and output
 * ======================================================================== */

/* Code point classes, as the reference's flags use them. */
enum { C_OTHER = 0, C_L, C_N, C_WS, C_NONE /* past the end of the fragment */ };

typedef struct sym {
    int32_t id;          /* token; -1 if its byte has no token; -2 merged away */
    size_t prev, next;   /* NONE at the ends */
} sym;

typedef struct pair_ent {
    uint32_t rank;
    int32_t lid, rid;    /* the ids the pair had when pushed: stale if changed */
    int32_t result;      /* their merge */
    size_t left, right;
} pair_ent;

#define NONE SIZE_MAX

typedef struct tok_ctx tok_ctx;

struct tok_ctx {
    const llm_vocab *v;
    /* what the pre-tokenizer does with each piece cps[lo, hi): merge it
     * (bpe_cps); the unit tests record the split instead */
    void (*on_piece)(tok_ctx *t, size_t lo, size_t hi);
    int32_t **ids;
    size_t *n, *cap;
    /* one fragment, decoded */
    uint32_t *cps;
    uint8_t *cls;
    size_t cps_cap;
    /* one piece */
    unsigned char *bytes;
    size_t bytes_cap;
    sym *syms;
    size_t syms_cap;
    pair_ent *heap;
    size_t heap_n, heap_cap;
    char *enc;           /* byte-level text of a piece (ignore_merges lookups) */
    size_t enc_cap;
    bool oom;
};

/* Grows the array whose pointer is at pp (any T **) to hold need elements
 * of elem bytes, doubling; false (array unchanged) when out of memory. The
 * pointer is read and written with memcpy, not through a void **, so the
 * caller's T * is never accessed as another type. */
static bool grow(void *pp, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return true;
    size_t c = *cap ? *cap : 64;
    while (c < need) {
        if (c > SIZE_MAX / 2 / elem)
            return false;
        c *= 2;
    }
    void *p;
    memcpy(&p, pp, sizeof p);
    void *np = realloc(p, c * elem);
    if (!np)
        return false;
    memcpy(pp, &np, sizeof np);
    *cap = c;
    return true;
}

static void emit(tok_ctx *t, int32_t id)
{
    if (t->oom)
        return;
    if (*t->n >= *t->cap && !grow(t->ids, t->cap, *t->n + 1, sizeof **t->ids)) {
        t->oom = true;
        return;
    }
    (*t->ids)[(*t->n)++] = id;
}

/* ========================================================================
 * BPE merge of one piece
 * ======================================================================== */

static inline bool ent_less(const pair_ent *a, const pair_ent *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static void heap_push(tok_ctx *t, size_t left, size_t right)
{
    const sym *s = t->syms;
    const merge_slot *m = find_merge(t->v, s[left].id, s[right].id);
    if (!m)
        return;
    if (!grow(&t->heap, &t->heap_cap, t->heap_n + 1, sizeof *t->heap)) {
        t->oom = true;
        return;
    }
    pair_ent e = {m->rank, s[left].id, s[right].id, m->result, left, right};
    size_t i = t->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!ent_less(&e, &t->heap[p]))
            break;
        t->heap[i] = t->heap[p];
        i = p;
    }
    t->heap[i] = e;
}

static pair_ent heap_pop(tok_ctx *t)
{
    pair_ent top = t->heap[0], last = t->heap[--t->heap_n];
    size_t i = 0, n = t->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && ent_less(&t->heap[c + 1], &t->heap[c]))
            c++;
        if (!ent_less(&t->heap[c], &last))
            break;
        t->heap[i] = t->heap[c];
        i = c;
    }
    if (n > 0)
        t->heap[i] = last;
    return top;
}

static void emit_symbol(tok_ctx *t, const sym *s, unsigned char byte)
{
    if (s->id >= 0) {
        emit(t, s->id);
        return;
    }
    /* The byte's character is not a token: llama.cpp then looks up each
     * byte of its UTF-8 as a token of its own and emits those it finds. */
    for (int k = 0; k < 2; k++)
        if (t->v->byte_fb[byte][k] >= 0)
            emit(t, t->v->byte_fb[byte][k]);
}

/* Merges bytes[0, n) (n >= 1) and appends the resulting ids. */
static void bpe_piece(tok_ctx *t, size_t n)
{
    const llm_vocab *v = t->v;
    if (n == 1) {
        sym s = {v->byte_tok[t->bytes[0]], NONE, NONE};
        emit_symbol(t, &s, t->bytes[0]);
        return;
    }
    if (v->ignore_merges) {
        /* The piece's byte-level text, looked up whole. */
        if (!grow(&t->enc, &t->enc_cap, 2 * n, 1)) {
            t->oom = true;
            return;
        }
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            k += tok_encode(v->byte_cp[t->bytes[i]], (unsigned char *)t->enc + k);
        int32_t id = find_text(v, t->enc, k);
        if (id >= 0) {
            emit(t, id);
            return;
        }
    }
    if (!grow(&t->syms, &t->syms_cap, n, sizeof *t->syms)) {
        t->oom = true;
        return;
    }
    sym *s = t->syms;
    for (size_t i = 0; i < n; i++) {
        s[i].id = v->byte_tok[t->bytes[i]];
        s[i].prev = i == 0 ? NONE : i - 1;
        s[i].next = i + 1 == n ? NONE : i + 1;
    }
    t->heap_n = 0;
    for (size_t i = 0; i + 1 < n; i++)
        heap_push(t, i, i + 1);
    while (t->heap_n > 0 && !t->oom) {
        pair_ent e = heap_pop(t);
        sym *l = &s[e.left], *r = &s[e.right];
        if (l->id != e.lid || r->id != e.rid || l->next != e.right)
            continue; /* one side has merged since: stale */
        l->id = e.result;
        r->id = -2;
        l->next = r->next;
        if (r->next != NONE)
            s[r->next].prev = e.left;
        if (l->prev != NONE)
            heap_push(t, l->prev, e.left);
        if (l->next != NONE)
            heap_push(t, e.left, l->next);
    }
    for (size_t i = 0; i != NONE; i = s[i].next)
        emit_symbol(t, &s[i], t->bytes[i]);
}

/* Re-encodes cps[lo, hi) and merges it. */
static void bpe_cps(tok_ctx *t, size_t lo, size_t hi)
{
    if (!grow(&t->bytes, &t->bytes_cap, 4 * (hi - lo), 1)) {
        t->oom = true;
        return;
    }
    size_t n = 0;
    for (size_t i = lo; i < hi; i++)
        n += tok_encode(t->cps[i], t->bytes + n);
    bpe_piece(t, n);
}

/* ========================================================================
 * Pre-tokenizers, over cps[lo, hi) of one fragment
 * ======================================================================== */

static inline void piece(tok_ctx *t, size_t lo, size_t hi)
{
    if (hi > lo && !t->oom)
        t->on_piece(t, lo, hi);
}

/* Ports of unicode_regex_split_custom_gpt2/llama3/qwen2: positions past the
 * fragment read as C_NONE, which no class test matches, so a run at the end
 * of a fragment (or of a smollm digit split) ends there. */
#define CLS(p) ((p) < hi ? t->cls[p] : C_NONE)
#define CPT(p) ((p) < hi ? t->cps[p] : 0xFFFFFFFFu)

static void split_gpt2(tok_ctx *t, size_t lo, size_t hi)
{
    size_t pos = lo;
    while (pos < hi) {
        uint32_t cpt = t->cps[pos];
        /* 's|'t|'re|'ve|'m|'ll|'d */
        if (cpt == '\'' && pos + 1 < hi) {
            uint32_t n1 = t->cps[pos + 1];
            if (n1 == 's' || n1 == 't' || n1 == 'm' || n1 == 'd') {
                piece(t, pos, pos + 2);
                pos += 2;
                continue;
            }
            if (pos + 2 < hi) {
                uint32_t n2 = t->cps[pos + 2];
                if ((n1 == 'r' && n2 == 'e') || (n1 == 'v' && n2 == 'e') || (n1 == 'l' && n2 == 'l')) {
                    piece(t, pos, pos + 3);
                    pos += 3;
                    continue;
                }
            }
        }
        size_t start = pos;
        int c2 = cpt == ' ' ? CLS(pos + 1) : t->cls[pos];
        /* ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+' */
        if (c2 == C_L || c2 == C_N || c2 == C_OTHER) {
            pos += cpt == ' ';
            while (CLS(pos) == c2)
                pos++;
            piece(t, start, pos);
            continue;
        }
        size_t nws = 0;
        while (CLS(pos + nws) == C_WS)
            nws++;
        if (nws > 1 && pos + nws < hi) /* \s+(?!\S): leave the last one */
            pos += nws - 1;
        else if (nws > 0) /* \s+ */
            pos += nws;
        else
            pos++;
        piece(t, start, pos);
    }
}

static void split_llama3(tok_ctx *t, size_t lo, size_t hi, size_t max_digits)
{
    size_t pos = lo;
    while (pos < hi) {
        uint32_t cpt = t->cps[pos];
        int c = t->cls[pos];
        /* (?i:'s|'t|'re|'ve|'m|'ll|'d), ASCII case only as in llama.cpp */
        if (cpt == '\'' && pos + 1 < hi) {
            uint32_t n1 = t->cps[pos + 1];
            if (n1 >= 'A' && n1 <= 'Z')
                n1 += 32;
            if (n1 == 's' || n1 == 't' || n1 == 'm' || n1 == 'd') {
                piece(t, pos, pos + 2);
                pos += 2;
                continue;
            }
            if (pos + 2 < hi) {
                uint32_t n2 = t->cps[pos + 2];
                if (n2 >= 'A' && n2 <= 'Z')
                    n2 += 32;
                if ((n1 == 'r' && n2 == 'e') || (n1 == 'v' && n2 == 'e') || (n1 == 'l' && n2 == 'l')) {
                    piece(t, pos, pos + 3);
                    pos += 3;
                    continue;
                }
            }
        }
        size_t start = pos;
        /* [^\r\n\p{L}\p{N}]?\p{L}+ */
        if (!(cpt == '\r' || cpt == '\n' || c == C_N) && (c == C_L || CLS(pos + 1) == C_L)) {
            pos++;
            while (CLS(pos) == C_L)
                pos++;
            piece(t, start, pos);
            continue;
        }
        /* \p{N}{1,3} (Llama 3) or \p{N} (Qwen2) */
        if (c == C_N) {
            while (CLS(pos) == C_N) {
                size_t k = 0;
                size_t s0 = pos;
                while (k < max_digits && CLS(pos) == C_N) {
                    pos++;
                    k++;
                }
                piece(t, s0, pos);
            }
            continue;
        }
        /* ' ?[^\s\p{L}\p{N}]+[\r\n]*' */
        int c2 = cpt == ' ' ? CLS(pos + 1) : c;
        if (c2 == C_OTHER) {
            pos += cpt == ' ';
            while (CLS(pos) == C_OTHER)
                pos++;
            while (CPT(pos) == '\r' || CPT(pos) == '\n')
                pos++;
            piece(t, start, pos);
            continue;
        }
        size_t nws = 0, last_rn = 0;
        while (CLS(pos + nws) == C_WS) {
            uint32_t w = t->cps[pos + nws];
            if (w == '\r' || w == '\n')
                last_rn = pos + nws + 1;
            nws++;
        }
        if (last_rn > 0) /* \s*[\r\n]+ */
            pos = last_rn;
        else if (nws > 1 && pos + nws < hi) /* \s+(?!\S) */
            pos += nws - 1;
        else if (nws > 0) /* \s+ */
            pos += nws;
        else
            pos++;
        piece(t, start, pos);
    }
}

#undef CLS
#undef CPT

/* "smollm": every \p{N} is a piece of its own (HF Digits, individual_digits),
 * and GPT-2 splits what lies between. */
static void split_smollm(tok_ctx *t, size_t lo, size_t hi)
{
    size_t pos = lo;
    while (pos < hi) {
        if (t->cls[pos] == C_N) {
            piece(t, pos, pos + 1);
            pos++;
            continue;
        }
        size_t s0 = pos;
        while (pos < hi && t->cls[pos] != C_N)
            pos++;
        split_gpt2(t, s0, pos);
    }
}

static uint8_t class_of(uint32_t cp)
{
    static const uint8_t ascii[128] = {
        ['\t'] = C_WS, ['\n'] = C_WS, ['\v'] = C_WS, ['\f'] = C_WS, ['\r'] = C_WS, [' '] = C_WS,
        ['0'] = C_N, ['1'] = C_N, ['2'] = C_N, ['3'] = C_N, ['4'] = C_N,
        ['5'] = C_N, ['6'] = C_N, ['7'] = C_N, ['8'] = C_N, ['9'] = C_N,
        ['A'] = C_L, ['B'] = C_L, ['C'] = C_L, ['D'] = C_L, ['E'] = C_L, ['F'] = C_L, ['G'] = C_L,
        ['H'] = C_L, ['I'] = C_L, ['J'] = C_L, ['K'] = C_L, ['L'] = C_L, ['M'] = C_L, ['N'] = C_L,
        ['O'] = C_L, ['P'] = C_L, ['Q'] = C_L, ['R'] = C_L, ['S'] = C_L, ['T'] = C_L, ['U'] = C_L,
        ['V'] = C_L, ['W'] = C_L, ['X'] = C_L, ['Y'] = C_L, ['Z'] = C_L,
        ['a'] = C_L, ['b'] = C_L, ['c'] = C_L, ['d'] = C_L, ['e'] = C_L, ['f'] = C_L, ['g'] = C_L,
        ['h'] = C_L, ['i'] = C_L, ['j'] = C_L, ['k'] = C_L, ['l'] = C_L, ['m'] = C_L, ['n'] = C_L,
        ['o'] = C_L, ['p'] = C_L, ['q'] = C_L, ['r'] = C_L, ['s'] = C_L, ['t'] = C_L, ['u'] = C_L,
        ['v'] = C_L, ['w'] = C_L, ['x'] = C_L, ['y'] = C_L, ['z'] = C_L,
    };
    if (cp < 128)
        return ascii[cp];
    nn_uc_cat c = nn_uc_category(cp);
    if (c >= NN_UC_Lu && c <= NN_UC_Lo)
        return C_L;
    if (c >= NN_UC_Nd && c <= NN_UC_No)
        return C_N;
    /* White_Space outside ASCII is Zs, Zl, Zp, or U+0085 (Cc). */
    if ((c >= NN_UC_Zs && c <= NN_UC_Zp) || c == NN_UC_Cc)
        return nn_uc_is_space(cp) ? C_WS : C_OTHER;
    return C_OTHER;
}

static void fragment(tok_ctx *t, const char *text, size_t len)
{
    if (len == 0 || t->oom)
        return;
    if (!grow(&t->cps, &t->cps_cap, len, sizeof *t->cps)) {
        t->oom = true;
        return;
    }
    /* cls shares cps_cap; grow it alongside. */
    uint8_t *nc = realloc(t->cls, t->cps_cap);
    if (!nc) {
        t->oom = true;
        return;
    }
    t->cls = nc;
    size_t n = 0;
    const unsigned char *u = (const unsigned char *)text;
    for (size_t p = 0; p < len;) {
        uint32_t cp;
        p += tok_decode(u + p, len - p, &cp);
        t->cps[n] = cp;
        t->cls[n] = class_of(cp);
        n++;
    }
    switch (t->v->pre) {
    case LLM_PRE_SMOLLM:
        split_smollm(t, 0, n);
        break;
    case LLM_PRE_LLAMA3:
        split_llama3(t, 0, n, 3);
        break;
    case LLM_PRE_QWEN2:
        split_llama3(t, 0, n, 1);
        break;
    case LLM_PRE_GPT2:
    default:
        split_gpt2(t, 0, n);
        break;
    }
}

/* ========================================================================
 * Special partition and entry point
 * ======================================================================== */

typedef struct frag {
    size_t off, len;
    int32_t id; /* a special token, or -1 for raw text */
} frag;

int llm_tokenize(const llm_vocab *v, const char *text, size_t len, bool parse_special,
                 int32_t **ids, size_t *n, size_t *cap)
{
    tok_ctx t = {.v = v, .on_piece = bpe_cps, .ids = ids, .n = n, .cap = cap};
    frag *fr = NULL, *nf = NULL;
    size_t n_fr = 0, fr_cap = 0, nf_cap = 0;
    int rc = -1;
    if (len == 0)
        return 0;
    if (!grow(&fr, &fr_cap, 1, sizeof *fr))
        goto out;
    fr[n_fr++] = (frag){0, len, -1};

    for (size_t si = 0; si < v->n_specials; si++) {
        int32_t sid = v->specials[si];
        if (!parse_special && (v->attr[sid] & (A_CONTROL | A_UNKNOWN)))
            continue; /* user-defined tokens are always cut out */
        size_t sl;
        const char *st = tok_text(v, sid, &sl);
        size_t nn = 0;
        for (size_t i = 0; i < n_fr; i++) {
            frag f = fr[i];
            /* At most 2 new fragments per match and 1 for the rest. */
            while (f.id < 0 && f.len >= sl) {
                const char *m = memmem(text + f.off, f.len, st, sl);
                if (!m)
                    break;
                size_t at = (size_t)(m - text);
                if (!grow(&nf, &nf_cap, nn + 2, sizeof *nf))
                    goto out;
                if (at > f.off)
                    nf[nn++] = (frag){f.off, at - f.off, -1};
                nf[nn++] = (frag){at, sl, sid};
                f.len -= at + sl - f.off;
                f.off = at + sl;
            }
            if (f.len > 0 || f.id >= 0) {
                if (!grow(&nf, &nf_cap, nn + 1, sizeof *nf))
                    goto out;
                nf[nn++] = f;
            }
        }
        frag *tmp = fr;
        size_t tcap = fr_cap;
        fr = nf;
        fr_cap = nf_cap;
        n_fr = nn;
        nf = tmp;
        nf_cap = tcap;
    }

    for (size_t i = 0; i < n_fr && !t.oom; i++) {
        if (fr[i].id >= 0)
            emit(&t, fr[i].id);
        else
            fragment(&t, text + fr[i].off, fr[i].len);
    }
    rc = t.oom ? -1 : 0;
out:
    free(fr);
    free(nf);
    free(t.cps);
    free(t.cls);
    free(t.bytes);
    free(t.syms);
    free(t.heap);
    free(t.enc);
    return rc;
}
