/*
 * Unit tests for plugins/llama/llm_forward on tiny synthetic models
 * (tests/support/ts_llm): the batched, paged forward pass against a naive
 * float reference written here, and its invariances: decoding token by
 * token, prefilling in chunks, batching sequences together and changing the
 * thread count must not change the logits.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llm_forward.h"
#include "llm_kv.h"
#include "llm_model.h"
#include "nn/nn_pool.h"
#include "test_support.h"
#include "ts_llm.h"

/* ======================================================================== */
/* Reference: plain float math on dequantized weights, full-precision cache. */
/* ======================================================================== */

static float *deq(const nn_mat *W)
{
    float *out = malloc((size_t)W->rows * (size_t)W->cols * sizeof *out);
    for (int64_t r = 0; r < W->rows; r++)
        nn_dequantize_row(W->type, (const char *)W->data + r * W->row_bytes, out + r * W->cols,
                          W->cols);
    return out;
}

static void mv(const float *W, int rows, int cols, const float *x, float *y)
{
    for (int r = 0; r < rows; r++) {
        double s = 0;
        for (int c = 0; c < cols; c++)
            s += (double)W[(size_t)r * cols + c] * x[c];
        y[r] = (float)s;
    }
}

static void rms(float *o, const float *x, const float *w, int n, float eps)
{
    double s = 0;
    for (int i = 0; i < n; i++)
        s += (double)x[i] * x[i];
    float sc = 1.0f / sqrtf((float)(s / n) + eps);
    for (int i = 0; i < n; i++)
        o[i] = x[i] * sc * w[i];
}

static void rope(float *x, int pos, int rope_dim, float base)
{
    for (int i = 0; i < rope_dim / 2; i++) {
        double theta = pos * pow(base, -2.0 * i / rope_dim);
        double c = cos(theta), s = sin(theta);
        float a = x[2 * i], b = x[2 * i + 1];
        x[2 * i] = (float)(a * c - b * s);
        x[2 * i + 1] = (float)(a * s + b * c);
    }
}

/* Logits of every position of tokens[0, n): (n, V). */
static float *reference(const llm_model *m, const int *tokens, int n)
{
    const llm_hparams *hp = &m->hp;
    const int E = hp->n_embd, H = hp->n_head, HKV = hp->n_head_kv, hd = hp->head_dim,
              F = hp->n_ff, V = hp->n_vocab, QW = H * hd, KW = HKV * hd;
    float *emb = deq(&m->tok_embd), *out = deq(&m->output);
    float *x = calloc((size_t)n * E, sizeof *x), *xn = malloc(E * sizeof *xn);
    float *K = malloc((size_t)n * KW * sizeof *K), *Vc = malloc((size_t)n * KW * sizeof *Vc);
    float *q = malloc(QW * sizeof *q), *att = malloc(QW * sizeof *att);
    float *tmp = malloc((E > F ? E : F) * sizeof *tmp), *g = malloc(F * sizeof *g),
          *u = malloc(F * sizeof *u), *sc = malloc(n * sizeof *sc);
    float *logits = malloc((size_t)n * V * sizeof *logits);
    for (int t = 0; t < n; t++)
        memcpy(x + (size_t)t * E, emb + (size_t)tokens[t] * E, E * sizeof *x);
    for (int l = 0; l < hp->n_layer; l++) {
        const llm_layer *L = &m->layers[l];
        float *wq = deq(&L->wq), *wk = deq(&L->wk), *wv = deq(&L->wv), *wo = deq(&L->wo);
        float *wg = deq(&L->w_gate), *wu = deq(&L->w_up), *wd = deq(&L->w_down);
        for (int t = 0; t < n; t++) {
            float *xt = x + (size_t)t * E;
            rms(xn, xt, L->attn_norm, E, hp->norm_eps);
            mv(wq, QW, E, xn, q);
            mv(wk, KW, E, xn, K + (size_t)t * KW);
            mv(wv, KW, E, xn, Vc + (size_t)t * KW);
            for (int h = 0; h < H; h++)
                rope(q + h * hd, t, hp->rope_dim, hp->rope_base);
            for (int h = 0; h < HKV; h++)
                rope(K + (size_t)t * KW + h * hd, t, hp->rope_dim, hp->rope_base);
            for (int h = 0; h < H; h++) {
                int g2 = h / (H / HKV);
                double mx = -1e30, z = 0;
                for (int s = 0; s <= t; s++) {
                    double d = 0;
                    for (int i = 0; i < hd; i++)
                        d += (double)q[h * hd + i] * K[(size_t)s * KW + g2 * hd + i];
                    sc[s] = (float)(d / sqrt((double)hd));
                    mx = sc[s] > mx ? sc[s] : mx;
                }
                for (int s = 0; s <= t; s++)
                    z += sc[s] = (float)exp(sc[s] - mx);
                for (int i = 0; i < hd; i++) {
                    double a = 0;
                    for (int s = 0; s <= t; s++)
                        a += sc[s] / z * Vc[(size_t)s * KW + g2 * hd + i];
                    att[h * hd + i] = (float)a;
                }
            }
            mv(wo, E, QW, att, tmp);
            for (int i = 0; i < E; i++)
                xt[i] += tmp[i];
            rms(xn, xt, L->ffn_norm, E, hp->norm_eps);
            mv(wg, F, E, xn, g);
            mv(wu, F, E, xn, u);
            for (int i = 0; i < F; i++)
                g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
            mv(wd, E, F, g, tmp);
            for (int i = 0; i < E; i++)
                xt[i] += tmp[i];
        }
        free(wq), free(wk), free(wv), free(wo), free(wg), free(wu), free(wd);
    }
    for (int t = 0; t < n; t++) {
        rms(xn, x + (size_t)t * E, m->out_norm, E, hp->norm_eps);
        mv(out, V, E, xn, logits + (size_t)t * V);
    }
    free(emb), free(out), free(x), free(xn), free(K), free(Vc), free(q), free(att);
    free(tmp), free(g), free(u), free(sc);
    return logits;
}

/* ======================================================================== */
/* Harness                                                                   */
/* ======================================================================== */

typedef struct rig {
    char *dir;
    llm_model *m;
    llm_kv *kv;
    nn_pool *pool;
    llm_fwd *f;
} rig;

static void rig_open_ex(rig *r, const ts_llm_spec *spec, int threads, int max_rows, bool repack)
{
    r->dir = ts_tmpdir();
    char *path = ts_llm_write(r->dir, "m.gguf", spec);
    char err[256];
    cr_assert_eq(llm_model_load(path, &r->m, err, sizeof err), 0, "%s", err);
    if (repack)
        cr_assert_eq(llm_model_repack(r->m, err, sizeof err), 0, "%s", err);
    free(path);
    r->kv = llm_kv_new(r->m->hp.n_layer, r->m->hp.n_head_kv, r->m->hp.head_dim, 64 * LLM_KV_BLOCK);
    r->pool = nn_pool_new(threads, "t");
    r->f = llm_fwd_new(r->m, r->kv, r->pool, max_rows, max_rows, r->m->hp.n_ctx_train);
    cr_assert(r->kv && r->pool && r->f);
}

static void rig_open(rig *r, const ts_llm_spec *spec, int threads, int max_rows)
{
    rig_open_ex(r, spec, threads, max_rows, false);
}

static void rig_close(rig *r)
{
    llm_fwd_free(r->f);
    nn_pool_free(r->pool);
    llm_kv_free(r->kv);
    llm_model_free(r->m);
    ts_tmpdir_remove(r->dir);
    free(r->dir);
}

/* Runs tokens[0, n) of one fresh sequence in chunks of `chunk` rows,
 * asking logits for every row; returns (n, V). */
static float *run_chunked(rig *r, const int *tokens, int n, int chunk)
{
    const int V = r->m->hp.n_vocab;
    float *all = malloc((size_t)n * V * sizeof *all);
    float *lg = malloc((size_t)chunk * V * sizeof *lg);
    llm_row *rows = malloc((size_t)chunk * sizeof *rows);
    llm_kv_seq s = {0};
    cr_assert_eq(llm_kv_reserve(r->kv, &s, n), 0);
    const llm_kv_seq *seqs[1] = {&s};
    for (int p0 = 0; p0 < n; p0 += chunk) {
        int c = n - p0 < chunk ? n - p0 : chunk;
        cr_assert_eq(llm_kv_grow(r->kv, &s, p0 + c), 0);
        for (int i = 0; i < c; i++)
            rows[i] = (llm_row){tokens[p0 + i], p0 + i, 0, i};
        llm_forward(r->f, rows, c, seqs, lg);
        memcpy(all + (size_t)p0 * V, lg, (size_t)c * V * sizeof *lg);
    }
    llm_kv_release(r->kv, &s);
    free(lg);
    free(rows);
    return all;
}

static double max_abs(const float *a, int n)
{
    double m = 0;
    for (int i = 0; i < n; i++)
        m = fabs(a[i]) > m ? fabs(a[i]) : m;
    return m;
}

static double max_diff(const float *a, const float *b, int n)
{
    double m = 0;
    for (int i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (isnan(d))
            return INFINITY;
        m = d > m ? d : m;
    }
    return m;
}

static int argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b])
            b = i;
    return b;
}

static void tokens_for(int *t, int n, uint64_t seed)
{
    for (int i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        t[i] = (int)((seed >> 33) % (uint64_t)ts_llm_vocab_size());
    }
}

/* ======================================================================== */
/* Tests                                                                     */
/* ======================================================================== */

/* F32 weights: the only differences from the reference are the f16 cache
 * and the f16 rounding of queries and attention weights (as ggml does). */
Test(llm_forward, matches_the_reference_with_f32_weights)
{
    ts_llm_spec spec = ts_llm_default();
    rig r;
    rig_open(&r, &spec, 2, 64);
    enum { N = 40 };
    int tok[N];
    tokens_for(tok, N, 3);
    const int V = r.m->hp.n_vocab;
    float *ours = run_chunked(&r, tok, N, N);
    float *ref = reference(r.m, tok, N);
    double scale = max_abs(ref, N * V), d = max_diff(ours, ref, N * V);
    cr_assert(scale > 0.5, "degenerate logits (max %.3g)", scale);
    cr_assert(d < 4e-3 * scale, "max |ours - ref| = %.4g (logits up to %.3g)", d, scale);
    for (int t = 0; t < N; t++)
        cr_assert_eq(argmax(ours + (size_t)t * V, V), argmax(ref + (size_t)t * V, V),
                     "position %d", t);
    free(ours);
    free(ref);
    rig_close(&r);
}

/* Quantized weights: activations are quantized to 8 bits per 32-block too,
 * so the tolerance is that of 8-bit activations. */
Test(llm_forward, matches_the_reference_with_quantized_weights)
{
    const uint32_t types[] = {2 /* Q4_0 */, 3 /* Q4_1 */, 8 /* Q8_0 */, 1 /* F16 */, 30 /* BF16 */};
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        ts_llm_spec spec = ts_llm_default();
        spec.wtype = types[k];
        spec.etype = types[k] == 30 ? 1 : 8;
        spec.tied = false;
        spec.otype = types[k];
        spec.seed = 10 + k;
        rig r;
        rig_open(&r, &spec, 2, 64);
        enum { N = 24 };
        int tok[N];
        tokens_for(tok, N, 5 + k);
        const int V = r.m->hp.n_vocab;
        float *ours = run_chunked(&r, tok, N, N);
        float *ref = reference(r.m, tok, N);
        double scale = max_abs(ref, N * V), d = max_diff(ours, ref, N * V);
        double tol = (types[k] == 1 || types[k] == 30) ? 4e-3 : 4e-2;
        cr_assert(d < tol * scale, "type %u: max |ours - ref| = %.4g (logits up to %.3g)",
                  types[k], d, scale);
        free(ours);
        free(ref);
        rig_close(&r);
    }
}

Test(llm_forward, token_by_token_and_chunks_equal_one_pass)
{
    ts_llm_spec spec = ts_llm_default();
    spec.wtype = 3; /* Q4_1, like the shipped model */
    spec.etype = 8;
    rig r;
    rig_open(&r, &spec, 2, 64);
    enum { N = 50 };
    int tok[N];
    tokens_for(tok, N, 9);
    const int V = r.m->hp.n_vocab;
    float *whole = run_chunked(&r, tok, N, N);
    const int chunks[] = {1, 3, 7, 32};
    for (size_t c = 0; c < sizeof chunks / sizeof chunks[0]; c++) {
        float *part = run_chunked(&r, tok, N, chunks[c]);
        double d = max_diff(whole, part, N * V);
        cr_assert(d <= 1e-4 * max_abs(whole, N * V), "chunk %d: max diff %.3g", chunks[c], d);
        free(part);
    }
    free(whole);
    rig_close(&r);
}

Test(llm_forward, thread_count_does_not_change_results)
{
    ts_llm_spec spec = ts_llm_default();
    spec.wtype = 3;
    spec.etype = 8;
    enum { N = 33 };
    int tok[N];
    tokens_for(tok, N, 21);
    float *first = NULL;
    int V = 0;
    for (int th = 1; th <= 3; th++) {
        rig r;
        rig_open(&r, &spec, th, 64);
        V = r.m->hp.n_vocab;
        float *l = run_chunked(&r, tok, N, 8);
        if (!first)
            first = l;
        else {
            cr_assert_eq(memcmp(first, l, (size_t)N * V * sizeof *l), 0,
                         "%d threads differ from 1 (max diff %.3g)", th,
                         max_diff(first, l, N * V));
            free(l);
        }
        rig_close(&r);
    }
    free(first);
}

/* Three sequences of different lengths decoded in one batch, with a prompt
 * chunk of a fourth in the same pass: each row's logits equal what the
 * sequence gives alone. */
Test(llm_forward, batched_sequences_equal_separate_ones)
{
    ts_llm_spec spec = ts_llm_default();
    spec.wtype = 3;
    spec.etype = 8;
    rig r;
    rig_open(&r, &spec, 2, 64);
    const int V = r.m->hp.n_vocab;
    enum { S = 4, L = 20 };
    int tok[S][L];
    float *alone[S];
    for (int s = 0; s < S; s++) {
        tokens_for(tok[s], L, 100 + s);
        alone[s] = run_chunked(&r, tok[s], L, L);
    }
    /* Sequences 0..2 have lengths 5, 9, 14 prefilled; then one step with a
     * decode row for each and the 12-token prompt of sequence 3. */
    const int pre[S] = {5, 9, 14, 0};
    llm_kv_seq kv[S];
    memset(kv, 0, sizeof kv);
    const llm_kv_seq *seqs[S];
    float *lg = malloc((size_t)64 * V * sizeof *lg);
    llm_row rows[64];
    for (int s = 0; s < S; s++) {
        seqs[s] = &kv[s];
        cr_assert_eq(llm_kv_reserve(r.kv, &kv[s], L), 0);
        if (!pre[s])
            continue;
        cr_assert_eq(llm_kv_grow(r.kv, &kv[s], pre[s]), 0);
        for (int i = 0; i < pre[s]; i++)
            rows[i] = (llm_row){tok[s][i], i, s, -1};
        llm_forward(r.f, rows, pre[s], seqs, lg);
    }
    int n = 0;
    for (int s = 0; s < 3; s++) {
        cr_assert_eq(llm_kv_grow(r.kv, &kv[s], pre[s] + 1), 0);
        rows[n] = (llm_row){tok[s][pre[s]], pre[s], s, n};
        n++;
    }
    cr_assert_eq(llm_kv_grow(r.kv, &kv[3], 12), 0);
    for (int i = 0; i < 12; i++, n++)
        rows[n] = (llm_row){tok[3][i], i, 3, n};
    llm_forward(r.f, rows, n, seqs, lg);
    for (int i = 0; i < n; i++) {
        int s = rows[i].seq, p = rows[i].pos;
        double d = max_diff(lg + (size_t)i * V, alone[s] + (size_t)p * V, V);
        cr_assert(d <= 1e-4 * max_abs(alone[s] + (size_t)p * V, V), "row %d (seq %d pos %d): %.3g",
                  i, s, p, d);
    }
    for (int s = 0; s < S; s++) {
        llm_kv_release(r.kv, &kv[s]);
        free(alone[s]);
    }
    free(lg);
    rig_close(&r);
}

Test(llm_forward, malformed_models_are_refused_with_a_reason)
{
    char *dir = ts_tmpdir();
    char err[256];
    llm_model *m;
    /* Wrong architecture, wrong head layout: patch the metadata by writing
     * a file whose n_ff is not a multiple of the block for a quantized type. */
    ts_llm_spec spec = ts_llm_default();
    spec.wtype = 3;
    spec.n_ff = 100; /* not a multiple of 32 */
    /* ts_llm cannot even quantize that; use F32 but claim more heads than
     * fit instead. */
    spec.wtype = 0;
    spec.n_ff = 100;
    spec.n_head = 5; /* 64 / 5 is not an integer head size */
    char *path = ts_llm_write(dir, "bad.gguf", &spec);
    cr_assert_eq(llm_model_load(path, &m, err, sizeof err), -1);
    cr_assert(strstr(err, "shape") || strstr(err, "head") || strstr(err, "key_length"), "%s", err);
    free(path);
    /* A file that is not GGUF. */
    char *junk = ts_write_file(dir, "junk.gguf", "definitely not a model file");
    cr_assert_eq(llm_model_load(junk, &m, err, sizeof err), -1);
    cr_assert(strlen(err) > 0);
    free(junk);
    ts_tmpdir_remove(dir);
    free(dir);
}

/* The interleaved weight layout gives the same products up to float
 * summation order (nn_kern checks that bound per product). Downstream, an
 * 8-bit activation rounding may flip on such a difference, so over a whole
 * random network the logits agree to the tolerance of quantized activations,
 * and the predicted tokens agree almost everywhere. */
Test(llm_forward, repacked_weights_give_the_same_logits)
{
    const uint32_t types[] = {2 /* Q4_0 */, 3 /* Q4_1 */, 8 /* Q8_0 */};
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        for (int tied = 0; tied < 2; tied++) {
            ts_llm_spec spec = ts_llm_default();
            spec.wtype = types[k];
            spec.etype = types[k];
            spec.tied = tied;
            spec.otype = 8;
            spec.seed = 40 + k;
            enum { N = 37 };
            int tok[N];
            tokens_for(tok, N, 77 + k);
            rig a, b;
            rig_open_ex(&a, &spec, 2, 64, false);
            rig_open_ex(&b, &spec, 2, 64, true);
            cr_assert_not_null(b.m->repacked);
            cr_assert_eq(b.m->layers[0].wq.layout, NN_LAYOUT_R16);
            cr_assert_eq(b.m->output.layout, NN_LAYOUT_R16);
            const int V = a.m->hp.n_vocab;
            float *la = run_chunked(&a, tok, N, 5), *lb = run_chunked(&b, tok, N, 5);
            double d = max_diff(la, lb, N * V);
            cr_assert(d <= 4e-2 * max_abs(la, N * V), "type %u tied %d: max diff %.3g", types[k],
                      tied, d);
            int agree = 0;
            for (int t = 0; t < N; t++)
                agree += argmax(la + (size_t)t * V, V) == argmax(lb + (size_t)t * V, V);
            cr_assert(agree >= N - 2, "type %u tied %d: %d of %d predictions agree", types[k],
                      tied, agree, N);
            free(la);
            free(lb);
            rig_close(&a);
            rig_close(&b);
        }
    }
}
