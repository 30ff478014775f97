/*
 * bert_model: loading and the forward pass. See bert_model.h.
 *
 * Sections: config files, weights, scratch, forward pass.
 */
#include "bert_model.h"
#include "nn/nn_err.h"

#include <cblas.h> /* pulls in <complex.h>: no variable may be named I */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "nn/nn_kern.h"
#include "nn/nn_pool.h"
#include "st.h"

/* Sanity bounds on config.json values: far above any BERT, small enough that
 * sizes derived from them cannot overflow. */
#define MAX_HIDDEN 16384
#define MAX_LAYERS 256
#define MAX_INTERMEDIATE 65536
#define MAX_POSITIONS 65536
#define MAX_VOCAB (1 << 22)
#define MAX_SEQ 8192
#define MAX_CONFIG_BYTES (1u << 20)

/* ========================================================================
 * Config files
 * ======================================================================== */

/* Parses dir/name; *out NULL (and 0 returned) if the file is absent and
 * optional. */
static int load_json(const char *dir, const char *name, bool optional, json_t **out, char *err,
                     size_t errlen)
{
    *out = NULL;
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, name) >= sizeof path) {
        nn_errf(err, errlen, "model path too long");
        return -1;
    }
    struct stat stb;
    if (stat(path, &stb) != 0) {
        if (optional && errno == ENOENT)
            return 0;
        nn_errf(err, errlen, "cannot read %s: %s", name, strerror(errno));
        return -1;
    }
    if (!S_ISREG(stb.st_mode) || stb.st_size > MAX_CONFIG_BYTES) {
        nn_errf(err, errlen, "%s is not a regular file of at most %u bytes", name,
               MAX_CONFIG_BYTES);
        return -1;
    }
    json_error_t jerr;
    json_t *j = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!j) {
        nn_errf(err, errlen, "%s is not valid JSON: %s (line %d)", name, jerr.text, jerr.line);
        return -1;
    }
    *out = j;
    return 0;
}

static int get_int(json_t *o, const char *file, const char *key, long lo, long hi, int *out,
                   char *err, size_t errlen)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        nn_errf(err, errlen, "%s: '%s' must be an integer in [%ld, %ld]", file, key, lo, hi);
        return -1;
    }
    *out = (int)json_integer_value(v);
    return 0;
}

static int parse_config(const char *dir, bert_config *c, char *err, size_t errlen)
{
    json_t *j;
    if (load_json(dir, "config.json", false, &j, err, errlen) != 0)
        return -1;
    int rc = -1;
    const char *f = "config.json";
    const char *mt = json_string_value(json_object_get(j, "model_type"));
    const char *act = json_string_value(json_object_get(j, "hidden_act"));
    const char *pe = json_string_value(json_object_get(j, "position_embedding_type"));
    json_t *eps = json_object_get(j, "layer_norm_eps");
    if (!json_is_object(j)) {
        nn_errf(err, errlen, "%s is not a JSON object", f);
    } else if (!mt || strcmp(mt, "bert") != 0) {
        nn_errf(err, errlen, "%s: model_type '%s' is not supported (bert)", f, mt ? mt : "missing");
    } else if (!act || strcmp(act, "gelu") != 0) {
        nn_errf(err, errlen, "%s: hidden_act '%s' is not supported (gelu)", f, act ? act : "missing");
    } else if (pe && strcmp(pe, "absolute") != 0) {
        nn_errf(err, errlen, "%s: position_embedding_type '%s' is not supported (absolute)", f, pe);
    } else if (get_int(j, f, "hidden_size", 1, MAX_HIDDEN, &c->hidden, err, errlen) == 0 &&
               get_int(j, f, "num_hidden_layers", 1, MAX_LAYERS, &c->layers, err, errlen) == 0 &&
               get_int(j, f, "num_attention_heads", 1, MAX_HIDDEN, &c->heads, err, errlen) == 0 &&
               get_int(j, f, "intermediate_size", 1, MAX_INTERMEDIATE, &c->intermediate, err,
                       errlen) == 0 &&
               get_int(j, f, "max_position_embeddings", 1, MAX_POSITIONS, &c->max_pos, err,
                       errlen) == 0 &&
               get_int(j, f, "vocab_size", 1, MAX_VOCAB, &c->vocab, err, errlen) == 0 &&
               get_int(j, f, "type_vocab_size", 1, 1 << 16, &c->type_vocab, err, errlen) == 0) {
        double e = json_number_value(eps);
        if (!json_is_number(eps) || !(e > 0 && e < 1)) {
            nn_errf(err, errlen, "%s: 'layer_norm_eps' must be a number in (0, 1)", f);
        } else if (c->hidden % c->heads != 0) {
            nn_errf(err, errlen, "%s: hidden_size %d is not a multiple of num_attention_heads %d",
                   f, c->hidden, c->heads);
        } else {
            c->ln_eps = (float)e;
            rc = 0;
        }
    }
    json_decref(j);
    return rc;
}

static int parse_st_configs(const char *dir, bert_config *c, char *err, size_t errlen)
{
    json_t *j;
    /* Sequence length. */
    c->max_seq = c->max_pos < 512 ? c->max_pos : 512;
    if (load_json(dir, "sentence_bert_config.json", true, &j, err, errlen) != 0)
        return -1;
    if (j) {
        int rc = 0;
        if (json_object_get(j, "max_seq_length"))
            rc = get_int(j, "sentence_bert_config.json", "max_seq_length", 2,
                         c->max_pos < MAX_SEQ ? c->max_pos : MAX_SEQ, &c->max_seq, err, errlen);
        json_decref(j);
        if (rc != 0)
            return -1;
    }
    if (c->max_seq < 2) {
        nn_errf(err, errlen, "max_position_embeddings %d leaves no room for [CLS] and [SEP]",
               c->max_pos);
        return -1;
    }
    /* Pooling. */
    c->pooling = BERT_POOL_MEAN;
    if (load_json(dir, "1_Pooling/config.json", true, &j, err, errlen) != 0)
        return -1;
    if (j) {
        static const char *const keys[] = {"pooling_mode_cls_token", "pooling_mode_mean_tokens",
                                           "pooling_mode_max_tokens",
                                           "pooling_mode_mean_sqrt_len_tokens",
                                           "pooling_mode_weightedmean_tokens",
                                           "pooling_mode_lasttoken"};
        bool on[6] = {false};
        int n_on = 0;
        for (int k = 0; k < 6; k++) {
            on[k] = json_is_true(json_object_get(j, keys[k]));
            n_on += on[k];
        }
        json_t *dim = json_object_get(j, "word_embedding_dimension");
        int rc = 0;
        if (dim && (!json_is_integer(dim) || json_integer_value(dim) != c->hidden)) {
            nn_errf(err, errlen, "1_Pooling/config.json: word_embedding_dimension is not "
                   "hidden_size %d", c->hidden);
            rc = -1;
        } else if (n_on != 1 || !(on[0] || on[1])) {
            nn_errf(err, errlen, "1_Pooling/config.json: exactly one of mean or cls pooling "
                   "must be on (others are not supported)");
            rc = -1;
        }
        c->pooling = on[0] ? BERT_POOL_CLS : BERT_POOL_MEAN;
        json_decref(j);
        if (rc != 0)
            return -1;
    }
    /* Normalization: a Normalize module in modules.json. */
    c->normalize = false;
    if (load_json(dir, "modules.json", true, &j, err, errlen) != 0)
        return -1;
    if (j) {
        if (!json_is_array(j)) {
            json_decref(j);
            nn_errf(err, errlen, "modules.json is not an array");
            return -1;
        }
        size_t i;
        json_t *mod;
        json_array_foreach(j, i, mod) {
            const char *type = json_string_value(json_object_get(mod, "type"));
            if (type && strcmp(type, "sentence_transformers.models.Normalize") == 0)
                c->normalize = true;
        }
        json_decref(j);
    }
    return 0;
}

/* ========================================================================
 * Weights
 * ======================================================================== */

static float *own(bert_model *m, size_t n_floats)
{
    void **grown = realloc(m->owned, (m->n_owned + 1) * sizeof(void *));
    if (!grown)
        return NULL;
    m->owned = grown;
    float *p = malloc(n_floats ? n_floats * sizeof(float) : 1);
    if (p)
        m->owned[m->n_owned++] = p;
    return p;
}

static bool all_finite(const float *p, size_t n)
{
    /* Exponent all ones (inf or NaN), summed without branches. */
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &p[i], 4);
        bad |= (uint32_t)((u & 0x7f800000u) == 0x7f800000u);
    }
    return !bad;
}

/* The tensor prefix+name with shape (d0[, d1]) as f32: in place when it is F32
 * and aligned, else converted into a buffer the model owns. */
static const float *weight(bert_model *m, const char *prefix, const char *name, int64_t d0,
                           int64_t d1, char *err, size_t errlen)
{
    char full[256];
    snprintf(full, sizeof full, "%s%s", prefix, name);
    const st_tensor *t = st_find(m->st, full);
    if (!t) {
        nn_errf(err, errlen, "model.safetensors: tensor '%s' is missing", full);
        return NULL;
    }
    int nd = d1 > 0 ? 2 : 1;
    if (t->n_dims != nd || t->shape[0] != d0 || (nd == 2 && t->shape[1] != d1)) {
        char have[96] = "", want[64];
        size_t o = 0;
        for (int i = 0; i < t->n_dims && o < sizeof have - 24; i++)
            o += (size_t)snprintf(have + o, sizeof have - o, "%s%lld", i ? ", " : "",
                                  (long long)t->shape[i]);
        if (nd == 2)
            snprintf(want, sizeof want, "%lld, %lld", (long long)d0, (long long)d1);
        else
            snprintf(want, sizeof want, "%lld", (long long)d0);
        nn_errf(err, errlen, "model.safetensors: tensor '%s' has shape [%s], config.json needs [%s]",
               full, have, want);
        return NULL;
    }
    size_t n = (size_t)t->n_elements;
    const float *p = NULL;
    if (t->dtype == ST_F32 && ((uintptr_t)t->data & 3u) == 0) {
        p = t->data;
    } else if (t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16) {
        float *q = own(m, n);
        if (!q) {
            nn_errf(err, errlen, "out of memory");
            return NULL;
        }
        const uint8_t *src = t->data;
        for (size_t i = 0; i < n; i++) {
            if (t->dtype == ST_F32) {
                memcpy(&q[i], src + 4 * i, 4);
            } else {
                uint16_t h;
                memcpy(&h, src + 2 * i, 2);
                q[i] = t->dtype == ST_F16 ? nn_f16_to_f32(h) : nn_bf16_to_f32(h);
            }
        }
        p = q;
    } else {
        nn_errf(err, errlen, "model.safetensors: tensor '%s' has dtype %s (F32, F16 or BF16 "
               "needed)", full, st_dtype_name(t->dtype));
        return NULL;
    }
    if (!all_finite(p, n)) {
        nn_errf(err, errlen, "model.safetensors: tensor '%s' holds non-finite values", full);
        return NULL;
    }
    return p;
}

static int load_weights(bert_model *m, char *err, size_t errlen)
{
    const bert_config *c = &m->cfg;
    const int64_t H = c->hidden, FF = c->intermediate;
    const char *pfx = st_find(m->st, "embeddings.word_embeddings.weight") ? ""
                      : st_find(m->st, "bert.embeddings.word_embeddings.weight") ? "bert."
                                                                                 : "";
#define W(var, name, d0, d1)                                                     \
    do {                                                                         \
        if (!((var) = weight(m, pfx, (name), (d0), (d1), err, errlen)))          \
            return -1;                                                           \
    } while (0)
    W(m->word_emb, "embeddings.word_embeddings.weight", c->vocab, H);
    W(m->pos_emb, "embeddings.position_embeddings.weight", c->max_pos, H);
    W(m->type_emb, "embeddings.token_type_embeddings.weight", c->type_vocab, H);
    W(m->emb_ln_w, "embeddings.LayerNorm.weight", H, 0);
    W(m->emb_ln_b, "embeddings.LayerNorm.bias", H, 0);
    m->layers = calloc((size_t)c->layers, sizeof(bert_layer));
    if (!m->layers) {
        nn_errf(err, errlen, "out of memory");
        return -1;
    }
    for (int l = 0; l < c->layers; l++) {
        bert_layer *L = &m->layers[l];
        char n[128];
#define LW(var, name, d0, d1)                                                    \
    do {                                                                         \
        snprintf(n, sizeof n, "encoder.layer.%d.%s", l, (name));                 \
        W(var, n, d0, d1);                                                       \
    } while (0)
        const float *q_w, *q_b, *k_w, *k_b, *v_w, *v_b;
        LW(q_w, "attention.self.query.weight", H, H);
        LW(q_b, "attention.self.query.bias", H, 0);
        LW(k_w, "attention.self.key.weight", H, H);
        LW(k_b, "attention.self.key.bias", H, 0);
        LW(v_w, "attention.self.value.weight", H, H);
        LW(v_b, "attention.self.value.bias", H, 0);
        LW(L->o_w, "attention.output.dense.weight", H, H);
        LW(L->o_b, "attention.output.dense.bias", H, 0);
        LW(L->ln1_w, "attention.output.LayerNorm.weight", H, 0);
        LW(L->ln1_b, "attention.output.LayerNorm.bias", H, 0);
        LW(L->ff1_w, "intermediate.dense.weight", FF, H);
        LW(L->ff1_b, "intermediate.dense.bias", FF, 0);
        LW(L->ff2_w, "output.dense.weight", H, FF);
        LW(L->ff2_b, "output.dense.bias", H, 0);
        LW(L->ln2_w, "output.LayerNorm.weight", H, 0);
        LW(L->ln2_b, "output.LayerNorm.bias", H, 0);
#undef LW
        /* Q, K and V as one (3H, H) matrix: one GEMM instead of three. */
        float *w = own(m, (size_t)(3 * H * H)), *b = own(m, (size_t)(3 * H));
        if (!w || !b) {
            nn_errf(err, errlen, "out of memory");
            return -1;
        }
        memcpy(w, q_w, (size_t)(H * H) * sizeof(float));
        memcpy(w + H * H, k_w, (size_t)(H * H) * sizeof(float));
        memcpy(w + 2 * H * H, v_w, (size_t)(H * H) * sizeof(float));
        memcpy(b, q_b, (size_t)H * sizeof(float));
        memcpy(b + H, k_b, (size_t)H * sizeof(float));
        memcpy(b + 2 * H, v_b, (size_t)H * sizeof(float));
        L->qkv_w = w;
        L->qkv_b = b;
    }
#undef W
    m->n_params = 0;
    for (size_t i = 0; i < st_tensor_count(m->st); i++) {
        const st_tensor *t = st_tensor_at(m->st, i);
        if (t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16 ||
            t->dtype == ST_F64)
            m->n_params += (int64_t)t->n_elements;
    }
    return 0;
}

void bert_model_free(bert_model *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n_owned; i++)
        free(m->owned[i]);
    free(m->owned);
    free(m->layers);
    st_close(m->st);
    free(m);
}

int bert_model_load(const char *dir, bert_model **out, char *err, size_t errlen)
{
    *out = NULL;
    bert_model *m = calloc(1, sizeof(*m));
    if (!m) {
        nn_errf(err, errlen, "out of memory");
        return -1;
    }
    if (parse_config(dir, &m->cfg, err, errlen) != 0 ||
        parse_st_configs(dir, &m->cfg, err, errlen) != 0)
        goto fail;
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/model.safetensors", dir) >= sizeof path) {
        nn_errf(err, errlen, "model path too long");
        goto fail;
    }
    char sterr[384];
    if (st_open(path, &m->st, sterr, sizeof sterr) != 0) {
        nn_errf(err, errlen, "model.safetensors: %s", sterr);
        goto fail;
    }
    if (load_weights(m, err, errlen) != 0)
        goto fail;
    *out = m;
    return 0;
fail:
    bert_model_free(m);
    return -1;
}

/* ========================================================================
 * Scratch
 * ======================================================================== */

struct bert_ctx {
    const bert_model *m;
    bert_gemm gemm;
    int max_tokens;
    nn_pool *pool;
    float *x;                   /* (T, H) hidden states */
    float *qkv;                 /* (T, 3H) */
    float *att;                 /* (T, H) attention output, heads side by side */
    float *tmp;                 /* (T, H) */
    float *ff;                  /* (T, I) */
    float *scores;              /* (nth, max_seq * max_seq) one block per thread */
    int *pos;                   /* (T) position of each token in its text */
    /* the pass in progress */
    const int32_t *ids;
    const int *offsets;
    int n_seqs;
    int T;
    float *out;
};

int bert_ctx_max_tokens(const bert_ctx *c)
{
    return c->max_tokens;
}

void bert_ctx_free(bert_ctx *c)
{
    if (!c)
        return;
    nn_pool_free(c->pool);
    free(c->x);
    free(c->qkv);
    free(c->att);
    free(c->tmp);
    free(c->ff);
    free(c->scores);
    free(c->pos);
    free(c);
}

static float *falloc(size_t n)
{
    return aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
}

bert_ctx *bert_ctx_new(const bert_model *m, int max_tokens, int n_threads, bert_gemm gemm)
{
    const bert_config *cf = &m->cfg;
    if (max_tokens < cf->max_seq || n_threads < 1)
        return NULL;
    bert_ctx *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->m = m;
    c->gemm = gemm;
    c->max_tokens = max_tokens;
    size_t T = (size_t)max_tokens, H = (size_t)cf->hidden, FF = (size_t)cf->intermediate;
    size_t S = (size_t)cf->max_seq;
    c->x = falloc(T * H);
    c->qkv = falloc(T * 3 * H);
    c->att = falloc(T * H);
    c->tmp = falloc(T * H);
    c->ff = falloc(T * FF);
    c->scores = falloc((size_t)n_threads * S * S);
    c->pos = malloc(T * sizeof(int));
    c->pool = nn_pool_new(n_threads, "bert");
    if (!c->x || !c->qkv || !c->att || !c->tmp || !c->ff || !c->scores || !c->pos || !c->pool) {
        bert_ctx_free(c);
        return NULL;
    }
    return c;
}

/* ========================================================================
 * Forward pass
 * ======================================================================== */

/* Y (T, N) = X (T, K) W^T + b for thread ith's share of the N output
 * columns (W is (N, K), PyTorch's Linear layout); GELU on them if asked. */
static void linear(const bert_ctx *c, const float *X, int T, int K, const float *W,
                   const float *b, int N, float *Y, bool gelu, int ith, int nth)
{
    long lo, hi;
    nn_split(N, ith, nth, 16, &lo, &hi);
    if (lo >= hi)
        return;
    int n = (int)(hi - lo);
    if (c->gemm == BERT_GEMM_BLAS) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, n, K, 1.0f, X, K,
                    W + (size_t)lo * (size_t)K, K, 0.0f, Y + lo, N);
    } else {
        /* X rows are contiguous f32: exactly nn_act_prepare's layout for F32. */
        nn_mat mat = {.type = NN_F32, .rows = n, .cols = K, .data = W + (size_t)lo * (size_t)K,
                      .row_bytes = (size_t)K * sizeof(float)};
        nn_matmul(&mat, X, T, Y + lo, N, 0, 1);
    }
    for (int r = 0; r < T; r++) {
        float *y = Y + (size_t)r * (size_t)N + lo;
        nn_add(y, b + lo, n);
        if (gelu)
            nn_gelu(y, n);
    }
}

/* Softmax(Q K^T / sqrt(d)) V for one head of one text of L tokens starting at
 * token o. */
static void attend(const bert_ctx *c, int o, int L, int h, float *S)
{
    const bert_config *cf = &c->m->cfg;
    const int H = cf->hidden, d = H / cf->heads, ld = 3 * H;
    const float scale = 1.0f / sqrtf((float)d);
    const float *Q = c->qkv + (size_t)o * (size_t)ld + (size_t)h * (size_t)d;
    const float *K = Q + H, *V = Q + 2 * H;
    float *out = c->att + (size_t)o * (size_t)H + (size_t)h * (size_t)d;
    if (c->gemm == BERT_GEMM_BLAS) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, L, L, d, scale, Q, ld, K, ld, 0.0f,
                    S, L);
        for (int i = 0; i < L; i++)
            nn_softmax(S + (size_t)i * (size_t)L, L);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, L, d, L, 1.0f, S, L, V, ld, 0.0f,
                    out, H);
        return;
    }
    for (int i = 0; i < L; i++) {
        float *s = S + (size_t)i * (size_t)L;
        const float *q = Q + (size_t)i * (size_t)ld;
        for (int j = 0; j < L; j++)
            s[j] = nn_dot_f32(q, K + (size_t)j * (size_t)ld, d) * scale;
        nn_softmax(s, L);
        float *y = out + (size_t)i * (size_t)H;
        memset(y, 0, (size_t)d * sizeof(float));
        for (int j = 0; j < L; j++)
            nn_axpy_f32(y, s[j], V + (size_t)j * (size_t)ld, d);
    }
}

/* Thread ith's (text, head) units, balanced by their cost (~L^2): a unit
 * belongs to the thread whose share of the total cost holds its middle. */
static void attention(const bert_ctx *c, float *S, int ith, int nth)
{
    const int heads = c->m->cfg.heads;
    double total = 0;
    for (int s = 0; s < c->n_seqs; s++) {
        double L = c->offsets[s + 1] - c->offsets[s];
        total += (L * L + 8 * L) * heads;
    }
    const double lo = total * ith / nth, hi = total * (ith + 1) / nth;
    double at = 0;
    for (int s = 0; s < c->n_seqs && at < hi; s++) {
        int o = c->offsets[s], L = c->offsets[s + 1] - o;
        double cost = (double)L * L + 8.0 * L;
        for (int h = 0; h < heads; h++, at += cost) {
            double mid = at + cost / 2;
            if (mid >= lo && (mid < hi || ith == nth - 1))
                attend(c, o, L, h, S);
        }
    }
}

static void add_layernorm(float *x, const float *r, const float *w, const float *b, int T, int H,
                          float eps, int ith, int nth)
{
    long lo, hi;
    nn_split(T, ith, nth, 1, &lo, &hi);
    for (long t = lo; t < hi; t++) {
        float *row = x + (size_t)t * (size_t)H;
        nn_add(row, r + (size_t)t * (size_t)H, H);
        nn_layernorm(row, row, w, b, H, eps);
    }
}

static void forward(void *arg, int ith, int nth)
{
    bert_ctx *c = arg;
    const bert_model *m = c->m;
    const bert_config *cf = &m->cfg;
    const int H = cf->hidden, FF = cf->intermediate, T = c->T;
    float *S = c->scores + (size_t)ith * (size_t)cf->max_seq * (size_t)cf->max_seq;
    long lo, hi;

    /* Embeddings: word + position + token type 0, LayerNorm. */
    nn_split(T, ith, nth, 1, &lo, &hi);
    for (long t = lo; t < hi; t++) {
        float *x = c->x + (size_t)t * (size_t)H;
        const float *we = m->word_emb + (size_t)c->ids[t] * (size_t)H;
        const float *pe = m->pos_emb + (size_t)c->pos[t] * (size_t)H;
        for (int i = 0; i < H; i++)
            x[i] = we[i] + pe[i] + m->type_emb[i];
        nn_layernorm(x, x, m->emb_ln_w, m->emb_ln_b, H, cf->ln_eps);
    }
    nn_pool_barrier(c->pool);

    for (int l = 0; l < cf->layers; l++) {
        const bert_layer *L = &m->layers[l];
        linear(c, c->x, T, H, L->qkv_w, L->qkv_b, 3 * H, c->qkv, false, ith, nth);
        nn_pool_barrier(c->pool);
        attention(c, S, ith, nth);
        nn_pool_barrier(c->pool);
        linear(c, c->att, T, H, L->o_w, L->o_b, H, c->tmp, false, ith, nth);
        nn_pool_barrier(c->pool);
        add_layernorm(c->x, c->tmp, L->ln1_w, L->ln1_b, T, H, cf->ln_eps, ith, nth);
        nn_pool_barrier(c->pool);
        linear(c, c->x, T, H, L->ff1_w, L->ff1_b, FF, c->ff, true, ith, nth);
        nn_pool_barrier(c->pool);
        linear(c, c->ff, T, FF, L->ff2_w, L->ff2_b, H, c->tmp, false, ith, nth);
        nn_pool_barrier(c->pool);
        add_layernorm(c->x, c->tmp, L->ln2_w, L->ln2_b, T, H, cf->ln_eps, ith, nth);
        nn_pool_barrier(c->pool);
    }

    /* Pooling (and normalization), one text per thread share. */
    nn_split(c->n_seqs, ith, nth, 1, &lo, &hi);
    for (long s = lo; s < hi; s++) {
        int o = c->offsets[s], n = c->offsets[s + 1] - o;
        float *y = c->out + (size_t)s * (size_t)H;
        if (cf->pooling == BERT_POOL_CLS) {
            memcpy(y, c->x + (size_t)o * (size_t)H, (size_t)H * sizeof(float));
        } else {
            memset(y, 0, (size_t)H * sizeof(float));
            for (int t = 0; t < n; t++)
                nn_add(y, c->x + (size_t)(o + t) * (size_t)H, H);
            nn_scale(y, 1.0f / (float)n, H);
        }
        if (cf->normalize) {
            float norm = sqrtf(nn_dot_f32(y, y, H));
            nn_scale(y, 1.0f / (norm > 1e-12f ? norm : 1e-12f), H);
        }
    }
}

int bert_encode(bert_ctx *c, const int32_t *ids, const int *offsets, int n_seqs, float *out)
{
    const bert_config *cf = &c->m->cfg;
    if (n_seqs < 1 || offsets[0] != 0)
        return -1;
    for (int s = 0; s < n_seqs; s++) {
        int n = offsets[s + 1] - offsets[s];
        if (n < 1 || n > cf->max_seq || offsets[s + 1] > c->max_tokens)
            return -1;
        for (int j = 0; j < n; j++) {
            int32_t id = ids[offsets[s] + j];
            if (id < 0 || id >= cf->vocab)
                return -1;
            c->pos[offsets[s] + j] = j;
        }
    }
    c->ids = ids;
    c->offsets = offsets;
    c->n_seqs = n_seqs;
    c->T = offsets[n_seqs];
    c->out = out;
    nn_pool_run(c->pool, forward, c);
    return all_finite(out, (size_t)n_seqs * (size_t)cf->hidden) ? 0 : -1;
}
