/*
 * ts_llm: tiny synthetic llama GGUF models. See ts_llm.h.
 */
#include "ts_llm.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/nn_kern.h"
#include "ts_gguf.h"

/* ggml type ids (gguf.h's gguf_ggml_type) and GGUF metadata type ids. */
enum { T_U32 = 4, T_I32 = 5, T_F32 = 6, T_BOOL = 7, T_STR = 8, T_ARR = 9 };

/* Metadata values with their type ids, over ts_gguf's writer. */
static void kv_u32(ts_wbuf *w, const char *k, uint32_t v)
{
    ts_w_key(w, k, T_U32);
    ts_w_u32(w, v);
}
static void kv_f32(ts_wbuf *w, const char *k, float v)
{
    ts_w_key(w, k, T_F32);
    ts_w_f32(w, v);
}
static void kv_str(ts_wbuf *w, const char *k, const char *v)
{
    ts_w_key(w, k, T_STR);
    ts_w_str(w, v);
}
static void kv_bool(ts_wbuf *w, const char *k, bool v)
{
    ts_w_key(w, k, T_BOOL);
    ts_w_u8(w, v);
}

/* ------------------------------------------------------------------------ */
/* Vocabulary                                                                */
/* ------------------------------------------------------------------------ */

/* Merges: pairs of token texts (byte-level, so ' ' is "Ġ"). */
static const char *const MERGES[][2] = {
    {"Ġ", "t"}, {"h", "e"}, {"Ġt", "he"}, {"i", "n"}, {"Ġ", "a"}, {"e", "r"},
    {"o", "n"}, {"Ġ", "s"}, {"e", "s"}, {"Ġ", "c"}, {"a", "t"}, {"Ġc", "at"},
};
#define N_MERGES (sizeof MERGES / sizeof MERGES[0])

int ts_llm_vocab_size(void) { return 256 + (int)N_MERGES + 3; }
int ts_llm_eos_id(void) { return 256 + (int)N_MERGES; }
int ts_llm_im_start_id(void) { return 256 + (int)N_MERGES + 1; }
int ts_llm_im_end_id(void) { return 256 + (int)N_MERGES + 2; }

/* GPT-2's bytes_to_unicode: byte b's code point. */
static uint32_t byte_cp(int b)
{
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))
        return (uint32_t)b;
    int n = 0;
    for (int x = 0; x < b; x++)
        if (!((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF)))
            n++;
    return 256u + (uint32_t)n;
}

static size_t utf8(uint32_t cp, char *o)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    o[0] = (char)(0xE0 | (cp >> 12));
    o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
}

static void vocab(ts_wbuf *w, const ts_llm_spec *s)
{
    int n = ts_llm_vocab_size();
    kv_str(w, "tokenizer.ggml.model", "gpt2");
    kv_str(w, "tokenizer.ggml.pre", s->pre ? s->pre : "smollm");
    ts_w_key(w, "tokenizer.ggml.tokens", T_ARR);
    ts_w_u32(w, T_STR);
    ts_w_u64(w, (uint64_t)n);
    for (int b = 0; b < 256; b++) {
        char t[4];
        ts_w_strn(w, t, utf8(byte_cp(b), t));
    }
    for (size_t i = 0; i < N_MERGES; i++) {
        char t[32];
        snprintf(t, sizeof t, "%s%s", MERGES[i][0], MERGES[i][1]);
        ts_w_str(w, t);
    }
    ts_w_str(w, "<|endoftext|>");
    ts_w_str(w, "<|im_start|>");
    ts_w_str(w, "<|im_end|>");
    ts_w_key(w, "tokenizer.ggml.token_type", T_ARR);
    ts_w_u32(w, T_I32);
    ts_w_u64(w, (uint64_t)n);
    for (int i = 0; i < n; i++)
        ts_w_u32(w, i >= ts_llm_eos_id() ? 3u : 1u);
    ts_w_key(w, "tokenizer.ggml.merges", T_ARR);
    ts_w_u32(w, T_STR);
    ts_w_u64(w, N_MERGES);
    for (size_t i = 0; i < N_MERGES; i++) {
        char t[32];
        snprintf(t, sizeof t, "%s %s", MERGES[i][0], MERGES[i][1]);
        ts_w_str(w, t);
    }
    kv_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)ts_llm_eos_id());
    kv_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)ts_llm_eos_id());
    kv_bool(w, "tokenizer.ggml.add_bos_token", false);
    if (s->chat_template)
        kv_str(w, "tokenizer.chat_template", s->chat_template);
}

/* ------------------------------------------------------------------------ */
/* Tensors                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct tensor {
    char name[64];
    uint32_t type;
    uint64_t cols, rows; /* rows == 0: a vector of cols */
    uint8_t *data;
    size_t nbytes;
} tensor;

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float rng_f(uint64_t *s) /* uniform in [-1, 1) */
{
    return (float)((double)(rng_next(s) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static void make(tensor *t, const char *name, uint32_t type, uint64_t cols, uint64_t rows,
                 uint64_t *rng, float scale, float offset)
{
    snprintf(t->name, sizeof t->name, "%s", name);
    t->type = type;
    t->cols = cols;
    t->rows = rows;
    uint64_t nr = rows ? rows : 1;
    size_t rb = nn_row_bytes((nn_type)type, (int64_t)cols);
    cr_assert(rb > 0, "type %u cols %llu", type, (unsigned long long)cols);
    t->nbytes = rb * nr;
    t->data = malloc(t->nbytes);
    float *row = malloc(cols * sizeof *row);
    cr_assert(t->data && row);
    for (uint64_t r = 0; r < nr; r++) {
        for (uint64_t c = 0; c < cols; c++)
            row[c] = offset + scale * rng_f(rng);
        nn_quantize_row((nn_type)type, row, t->data + r * rb, (int64_t)cols);
    }
    free(row);
}

ts_llm_spec ts_llm_default(void)
{
    return (ts_llm_spec){.n_embd = 64, .n_layer = 2, .n_head = 4, .n_head_kv = 2, .n_ff = 128,
                         .n_ctx = 256, .wtype = 0, .etype = 0, .tied = true, .seed = 1};
}

char *ts_llm_write(const char *dir, const char *name, const ts_llm_spec *s)
{
    const int E = s->n_embd, hd = s->n_embd / s->n_head, V = ts_llm_vocab_size();
    const float sc = s->scale > 0 ? s->scale : 0.5f;
    uint64_t rng = s->seed;
    size_t cap = 8 + (size_t)s->n_layer * 9;
    tensor *ts = calloc(cap, sizeof *ts);
    cr_assert_not_null(ts);
    size_t nt = 0;
    make(&ts[nt++], "token_embd.weight", s->etype, (uint64_t)E, (uint64_t)V, &rng, 1.0f, 0.0f);
    make(&ts[nt++], "output_norm.weight", 0, (uint64_t)E, 0, &rng, 0.2f, 1.0f);
    if (!s->tied)
        make(&ts[nt++], "output.weight", s->otype, (uint64_t)E, (uint64_t)V, &rng, sc, 0.0f);
    for (int l = 0; l < s->n_layer; l++) {
        char n[64];
        const float ws = sc / sqrtf((float)E);
#define T(suffix, type, cols, rows, scale, off)                                    \
    snprintf(n, sizeof n, "blk.%d." suffix ".weight", l);                         \
    make(&ts[nt++], n, type, (uint64_t)(cols), (uint64_t)(rows), &rng, scale, off)
        T("attn_norm", 0, E, 0, 0.2f, 1.0f);
        T("attn_q", s->wtype, E, s->n_head * hd, 4.0f * ws, 0.0f);
        T("attn_k", s->wtype, E, s->n_head_kv * hd, 4.0f * ws, 0.0f);
        T("attn_v", s->wtype, E, s->n_head_kv * hd, 4.0f * ws, 0.0f);
        T("attn_output", s->wtype, s->n_head * hd, E, 4.0f * ws, 0.0f);
        T("ffn_norm", 0, E, 0, 0.2f, 1.0f);
        T("ffn_gate", s->wtype, E, s->n_ff, 4.0f * ws, 0.0f);
        T("ffn_up", s->wtype, E, s->n_ff, 4.0f * ws, 0.0f);
        T("ffn_down", s->wtype, s->n_ff, E, 4.0f * sc / sqrtf((float)s->n_ff), 0.0f);
#undef T
    }

    ts_wbuf w = {0};
    /* Count the keys by writing them to a scratch buffer first. */
    ts_wbuf meta = {0};
    uint64_t n_kv = 0;
#define KV(call) (call, n_kv++)
    KV(kv_str(&meta, "general.architecture", "llama"));
    KV(kv_str(&meta, "general.name", "ts-llm tiny test model"));
    KV(kv_u32(&meta, "llama.context_length", (uint32_t)s->n_ctx));
    KV(kv_u32(&meta, "llama.embedding_length", (uint32_t)E));
    KV(kv_u32(&meta, "llama.block_count", (uint32_t)s->n_layer));
    KV(kv_u32(&meta, "llama.feed_forward_length", (uint32_t)s->n_ff));
    KV(kv_u32(&meta, "llama.attention.head_count", (uint32_t)s->n_head));
    KV(kv_u32(&meta, "llama.attention.head_count_kv", (uint32_t)s->n_head_kv));
    KV(kv_f32(&meta, "llama.rope.freq_base", 10000.0f));
    KV(kv_f32(&meta, "llama.attention.layer_norm_rms_epsilon", 1e-5f));
    KV(kv_u32(&meta, "llama.rope.dimension_count", (uint32_t)hd));
#undef KV
    vocab(&meta, s);
    n_kv += 8 + (s->chat_template ? 1 : 0); /* the vocabulary keys */

    ts_w_hdr(&w, 3, nt, n_kv);
    ts_w_bytes(&w, meta.p, meta.len);
    free(meta.p);
    uint64_t off = 0;
    for (size_t i = 0; i < nt; i++) {
        const uint64_t dims[2] = {ts[i].cols, ts[i].rows};
        ts_w_tinfo(&w, ts[i].name, ts[i].rows ? 2 : 1, dims, ts[i].type, off);
        off += (ts[i].nbytes + 31) / 32 * 32;
    }
    /* The data section and every tensor in it start on 32 bytes. */
    ts_w_pad(&w, 32);
    for (size_t i = 0; i < nt; i++) {
        ts_w_bytes(&w, ts[i].data, ts[i].nbytes);
        ts_w_pad(&w, 32);
        free(ts[i].data);
    }
    free(ts);

    size_t plen = strlen(dir) + strlen(name) + 2;
    char *path = malloc(plen);
    cr_assert_not_null(path);
    snprintf(path, plen, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "cannot write %s", path);
    cr_assert_eq(fwrite(w.p, 1, w.len, f), w.len);
    fclose(f);
    free(w.p);
    return path;
}
