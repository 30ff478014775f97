/*
 * llm_model: hyper-parameters and weight views from GGUF. See llm_model.h.
 */
#include "llm_model.h"
#include "nn/nn_err.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* ======================================================================== */
/* Hyper-parameters                                                          */
/* ======================================================================== */

/* Reads "llama.<key>" as an int in [lo, hi]; absent keys take dflt, or fail
 * when dflt < 0 (required). */
static int hp_int(const gguf_file *f, const char *key, long dflt, long lo, long hi, int *out,
                  char *err, size_t errlen)
{
    char full[96];
    snprintf(full, sizeof full, "llama.%s", key);
    int64_t v;
    int rc = gguf_get_i64(f, full, &v);
    if (rc == GGUF_ENOENT) {
        if (dflt < 0)
            return nn_errf(err, errlen, "missing metadata key '%s'", full);
        v = dflt;
    } else if (rc != GGUF_OK) {
        return nn_errf(err, errlen, "metadata key '%s' is not an integer", full);
    }
    if (v < lo || v > hi)
        return nn_errf(err, errlen, "metadata key '%s' = %lld is outside [%ld, %ld]", full,
                     (long long)v, lo, hi);
    *out = (int)v;
    return 0;
}

static int hp_float(const gguf_file *f, const char *key, double dflt, double lo, double hi,
                    float *out, char *err, size_t errlen)
{
    char full[96];
    snprintf(full, sizeof full, "llama.%s", key);
    double v;
    int rc = gguf_get_f64(f, full, &v);
    if (rc == GGUF_ENOENT)
        v = dflt;
    else if (rc != GGUF_OK)
        return nn_errf(err, errlen, "metadata key '%s' is not a number", full);
    if (!(v >= lo && v <= hi)) /* also refuses NaN */
        return nn_errf(err, errlen, "metadata key '%s' = %g is outside [%g, %g]", full, v, lo, hi);
    *out = (float)v;
    return 0;
}

static int read_hparams(const gguf_file *f, llm_hparams *hp, char *err, size_t errlen)
{
    const char *arch;
    size_t alen;
    if (gguf_get_str(f, "general.architecture", &arch, &alen) != GGUF_OK)
        return nn_errf(err, errlen, "missing metadata key 'general.architecture'");
    if (alen != 5 || memcmp(arch, "llama", 5) != 0)
        return nn_errf(err, errlen, "architecture '%.*s' is not supported (supported: llama)",
                     (int)(alen > 64 ? 64 : alen), arch);

    if (hp_int(f, "context_length", -1, 1, LLM_MAX_CTX, &hp->n_ctx_train, err, errlen) ||
        hp_int(f, "embedding_length", -1, 1, LLM_MAX_EMBD, &hp->n_embd, err, errlen) ||
        hp_int(f, "block_count", -1, 1, LLM_MAX_LAYERS, &hp->n_layer, err, errlen) ||
        hp_int(f, "feed_forward_length", -1, 1, LLM_MAX_FF, &hp->n_ff, err, errlen) ||
        hp_int(f, "attention.head_count", -1, 1, LLM_MAX_HEADS, &hp->n_head, err, errlen) ||
        hp_int(f, "attention.head_count_kv", hp->n_head, 1, LLM_MAX_HEADS, &hp->n_head_kv, err,
               errlen))
        return -1;
    if (hp->n_head % hp->n_head_kv != 0)
        return nn_errf(err, errlen, "attention.head_count %d is not a multiple of head_count_kv %d",
                     hp->n_head, hp->n_head_kv);
    int dflt_hd = hp->n_embd % hp->n_head == 0 ? hp->n_embd / hp->n_head : -1;
    if (hp_int(f, "attention.key_length", dflt_hd, 2, LLM_MAX_HEAD_DIM, &hp->head_dim, err,
               errlen))
        return -1;
    int vlen;
    if (hp_int(f, "attention.value_length", hp->head_dim, 2, LLM_MAX_HEAD_DIM, &vlen, err,
               errlen))
        return -1;
    if (vlen != hp->head_dim)
        return nn_errf(err, errlen, "attention.value_length %d differs from key_length %d "
                     "(not supported)", vlen, hp->head_dim);
    if (hp->head_dim % 2)
        return nn_errf(err, errlen, "head size %d is odd", hp->head_dim);
    if (hp_int(f, "rope.dimension_count", hp->head_dim, 2, hp->head_dim, &hp->rope_dim, err,
               errlen))
        return -1;
    if (hp->rope_dim % 2)
        return nn_errf(err, errlen, "llama.rope.dimension_count %d is odd", hp->rope_dim);
    if (hp_float(f, "rope.freq_base", 10000.0, 1.0, 1e12, &hp->rope_base, err, errlen) ||
        hp_float(f, "attention.layer_norm_rms_epsilon", 1e-5, 0.0, 1.0, &hp->norm_eps, err,
                 errlen))
        return -1;

    hp->rope_scale = 1.0f;
    const char *st;
    size_t stlen;
    if (gguf_get_str(f, "llama.rope.scaling.type", &st, &stlen) == GGUF_OK) {
        if (stlen == 6 && memcmp(st, "linear", 6) == 0) {
            if (hp_float(f, "rope.scaling.factor", 1.0, 1e-3, 1e6, &hp->rope_scale, err, errlen))
                return -1;
        } else if (!(stlen == 4 && memcmp(st, "none", 4) == 0)) {
            return nn_errf(err, errlen,
                         "llama.rope.scaling.type '%.*s' is not supported (supported: none, linear)",
                         (int)(stlen > 32 ? 32 : stlen), st);
        }
    }
    hp->n_vocab = 0; /* from token_embd's shape */
    return 0;
}

/* ======================================================================== */
/* Tensors                                                                   */
/* ======================================================================== */

static const gguf_tensor *find_tensor(const gguf_file *f, const char *name, bool required,
                                      char *err, size_t errlen)
{
    const gguf_tensor *t = gguf_find_tensor(f, name);
    if (!t && required)
        nn_errf(err, errlen, "missing tensor '%s'", name);
    return t;
}

/* A 1-D F32 vector of n elements. */
static int get_vector(const gguf_file *f, const char *name, int64_t n, bool required,
                      const float **out, int64_t *n_params, char *err, size_t errlen)
{
    *out = NULL;
    const gguf_tensor *t = find_tensor(f, name, required, err, errlen);
    if (!t)
        return required ? -1 : 0;
    if (t->type != GGUF_GGML_F32)
        return nn_errf(err, errlen, "tensor '%s' has type %s, expected F32", name,
                     gguf_ggml_type_name(t->type));
    if (t->n_elements != (uint64_t)n || (t->n_dims > 1 && t->dims[0] != (uint64_t)n))
        return nn_errf(err, errlen, "tensor '%s' has %llu elements, expected %lld", name,
                     (unsigned long long)t->n_elements, (long long)n);
    if ((uintptr_t)t->data % sizeof(float))
        return nn_errf(err, errlen, "tensor '%s' is not aligned for F32", name);
    *out = t->data;
    *n_params += n;
    return 0;
}

/* A matrix of `rows` rows of `cols` elements: GGUF dims [cols, rows]. */
static int get_matrix(const gguf_file *f, const char *name, int64_t rows, int64_t cols,
                      bool required, nn_mat *out, int64_t *n_params, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    const gguf_tensor *t = find_tensor(f, name, required, err, errlen);
    if (!t)
        return required ? -1 : 0;
    if (!nn_type_supported(t->type))
        return nn_errf(err, errlen, "tensor '%s' has type %s, which is not supported "
                     "(F32, F16, BF16, Q4_0, Q4_1, Q8_0)", name, gguf_ggml_type_name(t->type));
    if (t->n_dims != 2 || t->dims[0] != (uint64_t)cols || t->dims[1] != (uint64_t)rows)
        return nn_errf(err, errlen, "tensor '%s' has shape [%llu, %llu], expected [%lld, %lld]",
                     name, (unsigned long long)t->dims[0],
                     (unsigned long long)(t->n_dims > 1 ? t->dims[1] : 1), (long long)cols,
                     (long long)rows);
    size_t rb = nn_row_bytes((nn_type)t->type, cols);
    if (rb == 0 || t->nbytes / (uint64_t)rows != rb || t->nbytes % (uint64_t)rows)
        return nn_errf(err, errlen, "tensor '%s': %llu bytes do not hold %lld rows of %lld %s",
                     name, (unsigned long long)t->nbytes, (long long)rows, (long long)cols,
                     gguf_ggml_type_name(t->type));
    if (t->type == GGUF_GGML_F32 && (uintptr_t)t->data % sizeof(float))
        return nn_errf(err, errlen, "tensor '%s' is not aligned for F32", name);
    out->type = (nn_type)t->type;
    out->rows = rows;
    out->cols = cols;
    out->data = t->data;
    out->row_bytes = rb;
    *n_params += rows * cols;
    return 0;
}

static int load_layer(const gguf_file *f, const llm_hparams *hp, int il, llm_layer *L,
                      int64_t *np, char *err, size_t errlen)
{
    char name[GGUF_MAX_NAME + 1];
    const int64_t E = hp->n_embd, Q = (int64_t)hp->n_head * hp->head_dim,
                  KV = (int64_t)hp->n_head_kv * hp->head_dim, F = hp->n_ff;
#define NAME(s) (snprintf(name, sizeof name, "blk.%d." s ".weight", il), name)
    if (get_vector(f, NAME("attn_norm"), E, true, &L->attn_norm, np, err, errlen) ||
        get_matrix(f, NAME("attn_q"), Q, E, true, &L->wq, np, err, errlen) ||
        get_matrix(f, NAME("attn_k"), KV, E, true, &L->wk, np, err, errlen) ||
        get_matrix(f, NAME("attn_v"), KV, E, true, &L->wv, np, err, errlen) ||
        get_matrix(f, NAME("attn_output"), E, Q, true, &L->wo, np, err, errlen) ||
        get_vector(f, NAME("ffn_norm"), E, true, &L->ffn_norm, np, err, errlen) ||
        get_matrix(f, NAME("ffn_gate"), F, E, true, &L->w_gate, np, err, errlen) ||
        get_matrix(f, NAME("ffn_up"), F, E, true, &L->w_up, np, err, errlen) ||
        get_matrix(f, NAME("ffn_down"), E, F, true, &L->w_down, np, err, errlen))
        return -1;
#undef NAME
    /* Biases (Qwen-style) and other extras would change the math silently
     * if ignored: refuse them. */
    static const char *const extras[] = {"attn_q.bias", "attn_k.bias", "attn_v.bias",
                                         "attn_output.bias", "ffn_gate_inp.weight"};
    for (size_t i = 0; i < sizeof extras / sizeof extras[0]; i++) {
        snprintf(name, sizeof name, "blk.%d.%s", il, extras[i]);
        if (gguf_find_tensor(f, name))
            return nn_errf(err, errlen, "tensor '%s' is not supported by the llama architecture "
                         "implementation", name);
    }
    return 0;
}

static void describe_quant(llm_model *m)
{
    nn_type t = m->layers[0].wq.type;
    for (int il = 0; il < m->hp.n_layer; il++) {
        const llm_layer *L = &m->layers[il];
        const nn_mat *mats[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t i = 0; i < sizeof mats / sizeof mats[0]; i++)
            if (mats[i]->type != t) {
                snprintf(m->quant, sizeof m->quant, "mixed");
                return;
            }
    }
    snprintf(m->quant, sizeof m->quant, "%s", nn_type_name(t));
}

int llm_model_from_gguf(gguf_file *f, llm_model **out, char *err, size_t errlen)
{
    *out = NULL;
    llm_model *m = calloc(1, sizeof *m);
    if (!m) {
        gguf_close(f);
        return nn_errf(err, errlen, "out of memory");
    }
    m->gguf = f;
    llm_hparams *hp = &m->hp;
    if (read_hparams(f, hp, err, errlen))
        goto fail;

    /* The vocabulary size is token_embd's row count. */
    const gguf_tensor *te = find_tensor(f, "token_embd.weight", true, err, errlen);
    if (!te)
        goto fail;
    if (te->n_dims != 2 || te->dims[0] != (uint64_t)hp->n_embd || te->dims[1] < 1 ||
        te->dims[1] > LLM_MAX_VOCAB) {
        nn_errf(err, errlen, "tensor 'token_embd.weight' has shape [%llu, %llu], expected [%d, "
              "n_vocab <= %d]", (unsigned long long)te->dims[0],
              (unsigned long long)(te->n_dims > 1 ? te->dims[1] : 1), hp->n_embd, LLM_MAX_VOCAB);
        goto fail;
    }
    hp->n_vocab = (int)te->dims[1];
    int64_t np = 0;
    if (get_matrix(f, "token_embd.weight", hp->n_vocab, hp->n_embd, true, &m->tok_embd, &np, err,
                   errlen) ||
        get_vector(f, "output_norm.weight", hp->n_embd, true, &m->out_norm, &np, err, errlen) ||
        get_matrix(f, "output.weight", hp->n_vocab, hp->n_embd, false, &m->output, &np, err,
                   errlen) ||
        get_vector(f, "rope_freqs.weight", hp->rope_dim / 2, false, &m->rope_freqs, &np, err,
                   errlen))
        goto fail;
    if (!m->output.data) {
        m->output = m->tok_embd;
        m->tied_output = 1;
    }
    if (m->rope_freqs)
        for (int i = 0; i < hp->rope_dim / 2; i++)
            if (!(m->rope_freqs[i] > 0.0f && isfinite(m->rope_freqs[i]))) {
                nn_errf(err, errlen, "tensor 'rope_freqs.weight'[%d] is not a positive number", i);
                goto fail;
            }

    m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (!m->layers) {
        nn_errf(err, errlen, "out of memory");
        goto fail;
    }
    for (int il = 0; il < hp->n_layer; il++)
        if (load_layer(f, hp, il, &m->layers[il], &np, err, errlen))
            goto fail;
    m->n_params = np;
    describe_quant(m);

    const char *name;
    size_t nlen;
    if (gguf_get_str(f, "general.name", &name, &nlen) == GGUF_OK) {
        if (nlen >= sizeof m->name)
            nlen = sizeof m->name - 1;
        memcpy(m->name, name, nlen);
        m->name[nlen] = '\0';
        /* The name reaches logs and the catalog: keep it printable. */
        for (size_t i = 0; i < nlen; i++)
            if ((unsigned char)m->name[i] < 0x20 || m->name[i] == 0x7f)
                m->name[i] = '?';
    }
    *out = m;
    return 0;
fail:
    llm_model_free(m);
    return -1;
}

/* Every matrix of the model, with whether its thread shares start on
 * 16-row boundaries (the condition for the interleaved layout). */
typedef struct mat_ref {
    nn_mat *m;
    bool aligned;
} mat_ref;

static size_t model_mats(llm_model *m, mat_ref *out, size_t cap)
{
    size_t n = 0;
    bool heads16 = m->hp.head_dim % 16 == 0;
#define ADD(mat, al)                                                               \
    do {                                                                           \
        if (n < cap)                                                               \
            out[n] = (mat_ref){(mat), (al)};                                       \
        n++;                                                                       \
    } while (0)
    ADD(&m->tok_embd, true);
    if (!m->tied_output)
        ADD(&m->output, true);
    for (int il = 0; il < m->hp.n_layer; il++) {
        llm_layer *L = &m->layers[il];
        ADD(&L->wq, heads16);
        ADD(&L->wk, heads16);
        ADD(&L->wv, heads16);
        ADD(&L->wo, true);
        ADD(&L->w_gate, true);
        ADD(&L->w_up, true);
        ADD(&L->w_down, true);
    }
#undef ADD
    return n;
}

/* Drops our mapping's pages of [p, p + len) (whole pages inside it only):
 * the data is no longer read through the mapping. */
static void give_back(const void *p, size_t len)
{
    long pg = sysconf(_SC_PAGESIZE);
    if (pg <= 0)
        return;
    uintptr_t a = ((uintptr_t)p + (uintptr_t)pg - 1) & ~((uintptr_t)pg - 1);
    uintptr_t b = ((uintptr_t)p + len) & ~((uintptr_t)pg - 1);
    if (b > a)
        madvise((void *)a, b - a, MADV_DONTNEED);
}

int llm_model_repack(llm_model *m, char *err, size_t errlen)
{
    if (m->repacked)
        return 0;
    size_t n = model_mats(m, NULL, 0);
    mat_ref *mats = calloc(n, sizeof *mats);
    if (!mats)
        return nn_errf(err, errlen, "out of memory");
    model_mats(m, mats, n);
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        if (mats[i].aligned)
            total += (nn_mat_repack_bytes(mats[i].m) + 63) / 64 * 64;
    if (total == 0) {
        free(mats);
        return 0;
    }
    char *buf = aligned_alloc(64, total);
    if (!buf) {
        free(mats);
        return nn_errf(err, errlen, "out of memory for %zu bytes of repacked weights", total);
    }
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        size_t b = mats[i].aligned ? nn_mat_repack_bytes(mats[i].m) : 0;
        if (!b)
            continue;
        nn_mat old = *mats[i].m;
        nn_mat packed = nn_mat_repack(&old, buf + off);
        *mats[i].m = packed;
        if (mats[i].m == &m->tok_embd && m->tied_output)
            m->output = packed;
        give_back(old.data, (size_t)old.rows * old.row_bytes);
        off += (b + 63) / 64 * 64;
    }
    free(mats);
    m->repacked = buf;
    m->repacked_bytes = total;
    return 0;
}

int llm_model_load(const char *path, llm_model **out, char *err, size_t errlen)
{
    *out = NULL;
    gguf_file *f;
    if (gguf_open(path, &f, err, errlen) != 0)
        return -1;
    return llm_model_from_gguf(f, out, err, errlen);
}

void llm_model_free(llm_model *m)
{
    if (!m)
        return;
    free(m->layers);
    free(m->repacked);
    gguf_close(m->gguf);
    free(m);
}
