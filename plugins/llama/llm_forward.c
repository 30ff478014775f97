/*
 * llm_forward: the batched llama forward pass. See llm_forward.h.
 *
 * Stages of one layer (B = barrier), each split over the pool's threads:
 *   norm+quantize rows          B
 *   Q/K/V products by head, RoPE, K/V into the cache    B
 *   attention by (row, head)    B
 *   quantize attention rows     B
 *   output product by rows of W_o, + residual            B
 *   norm+quantize rows          B
 *   gate/up products by rows of W, SiLU(gate)*up         B
 *   quantize hidden rows        B
 *   down product by rows of W, + residual                B
 * Splitting a product by weight rows means each thread streams only its
 * share of the weights, which is what bounds decode speed.
 */
#include "llm_forward.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Weight rows per unit of work when a product is split across threads. */
#define ROW_ALIGN 16

struct llm_fwd {
    const llm_model *m;
    llm_kv *kv;
    nn_pool *pool;
    int max_rows, max_logits, max_ctx;
    int nth;

    /* scratch, (rows, width) row-major */
    float *x;      /* (max_rows, n_embd) residual stream */
    float *xn;     /* (max_rows, max(n_embd, q width, n_ff)) normed rows / attention out / hidden */
    float *q;      /* (max_rows, n_head*head_dim) */
    float *kv_tmp; /* (max_rows, 2*n_head_kv*head_dim) new keys then values */
    float *tmp;    /* (max_rows, n_embd) product outputs before the residual add */
    float *gate;   /* (max_rows, n_ff) */
    float *up;     /* (max_rows, n_ff) */
    float *rope;   /* (max_rows, rope_dim/2, 2) cos, sin */
    void *act;     /* (max(max_rows, max_logits), act row bytes) quantized activations */
    size_t act_stride;
    float *scores; /* (nth, max_ctx) attention scores per thread */

    /* the current step, read by the pool threads */
    const llm_row *rows;
    int n;
    const llm_kv_seq *const *seqs;
    float *logits;
    int *lrows; /* rows that want logits, in logits-row order */
    int n_lrows;
};

/* ======================================================================== */
/* Set-up                                                                    */
/* ======================================================================== */

static size_t max_act_row(const llm_model *m, int64_t width)
{
    /* The largest activation row any matrix type might want. */
    size_t a = nn_act_row_bytes(NN_Q8_0, width), b = nn_act_row_bytes(NN_F32, width);
    (void)m;
    return a > b ? a : b;
}

llm_fwd *llm_fwd_new(const llm_model *m, llm_kv *kv, nn_pool *pool, int max_rows,
                     int max_logits, int max_ctx)
{
    if (max_rows < 1 || max_logits < 1 || max_ctx < 1)
        return NULL;
    llm_fwd *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    const llm_hparams *hp = &m->hp;
    f->m = m;
    f->kv = kv;
    f->pool = pool;
    f->max_rows = max_rows;
    f->max_logits = max_logits;
    f->max_ctx = max_ctx;
    f->nth = nn_pool_size(pool);
    size_t R = (size_t)max_rows;
    size_t qw = (size_t)hp->n_head * (size_t)hp->head_dim;
    size_t kvw = (size_t)hp->n_head_kv * (size_t)hp->head_dim;
    size_t wide = (size_t)hp->n_embd;
    if (qw > wide)
        wide = qw;
    if ((size_t)hp->n_ff > wide)
        wide = (size_t)hp->n_ff;
    size_t act_rows = (size_t)(max_rows > max_logits ? max_rows : max_logits);
    f->act_stride = max_act_row(m, (int64_t)wide);
    f->x = aligned_alloc(64, ((R * (size_t)hp->n_embd * sizeof(float)) + 63) / 64 * 64);
    f->xn = aligned_alloc(64, ((act_rows * wide * sizeof(float)) + 63) / 64 * 64);
    f->q = aligned_alloc(64, ((R * qw * sizeof(float)) + 63) / 64 * 64);
    f->kv_tmp = aligned_alloc(64, ((R * 2 * kvw * sizeof(float)) + 63) / 64 * 64);
    f->tmp = aligned_alloc(64, ((R * (size_t)hp->n_embd * sizeof(float)) + 63) / 64 * 64);
    f->gate = aligned_alloc(64, ((R * (size_t)hp->n_ff * sizeof(float)) + 63) / 64 * 64);
    f->up = aligned_alloc(64, ((R * (size_t)hp->n_ff * sizeof(float)) + 63) / 64 * 64);
    f->rope = aligned_alloc(64, ((R * (size_t)hp->rope_dim * sizeof(float)) + 63) / 64 * 64);
    f->act = aligned_alloc(64, (act_rows * f->act_stride + 63) / 64 * 64);
    f->scores = aligned_alloc(64, (((size_t)f->nth * (size_t)max_ctx * sizeof(float)) + 63) / 64 * 64);
    f->lrows = malloc((size_t)max_logits * sizeof *f->lrows);
    if (!f->x || !f->xn || !f->q || !f->kv_tmp || !f->tmp || !f->gate || !f->up || !f->rope ||
        !f->act || !f->scores || !f->lrows) {
        llm_fwd_free(f);
        return NULL;
    }
    return f;
}

void llm_fwd_free(llm_fwd *f)
{
    if (!f)
        return;
    free(f->x);
    free(f->xn);
    free(f->q);
    free(f->kv_tmp);
    free(f->tmp);
    free(f->gate);
    free(f->up);
    free(f->rope);
    free(f->act);
    free(f->scores);
    free(f->lrows);
    free(f);
}

/* ======================================================================== */
/* Pieces                                                                    */
/* ======================================================================== */

/* RMSNorm as ggml computes it: the mean of squares summed in double, the
 * scale applied, then the weight multiplied in a second pass. */
static void rmsnorm(float *out, const float *x, const float *w, int n, float eps)
{
    double sum = 0.0;
    for (int i = 0; i < n; i++)
        sum += (double)(x[i] * x[i]);
    const float mean = (float)(sum / n);
    const float scale = 1.0f / sqrtf(mean + eps);
    for (int i = 0; i < n; i++)
        out[i] = (x[i] * scale) * w[i];
}

/* Rounds through f16, as ggml does to activations entering f16 products. */
static inline float f16_round(float v)
{
    return nn_f16_to_f32(nn_f32_to_f16(v));
}

/* cos/sin of every rotated pair for position pos, stepping the angle as
 * ggml's rope does (theta *= theta_scale per pair, in float). */
static void rope_table(const llm_model *m, int pos, float *cs)
{
    const llm_hparams *hp = &m->hp;
    const float theta_scale = powf(hp->rope_base, -2.0f / (float)hp->rope_dim);
    float theta = (float)pos;
    const float freq_scale = 1.0f / hp->rope_scale;
    for (int i = 0; i < hp->rope_dim / 2; i++) {
        float t = freq_scale * theta;
        if (m->rope_freqs)
            t /= m->rope_freqs[i];
        cs[2 * i] = cosf(t);
        cs[2 * i + 1] = sinf(t);
        theta *= theta_scale;
    }
}

/* Rotates adjacent pairs (x[2i], x[2i+1]) of the first rope_dim values of
 * one head: llama's "normal" RoPE (the GGUF converter permuted Q and K to
 * make it so). */
static void rope_apply(float *x, const float *cs, int rope_dim)
{
    for (int i = 0; i < rope_dim / 2; i++) {
        const float c = cs[2 * i], s = cs[2 * i + 1];
        const float x0 = x[2 * i], x1 = x[2 * i + 1];
        x[2 * i] = x0 * c - x1 * s;
        x[2 * i + 1] = x0 * s + x1 * c;
    }
}

/* True if W takes quantized activation rows (else plain f32 rows). */
static bool wants_q8(nn_type t)
{
    return t == NN_Q4_0 || t == NN_Q4_1 || t == NN_Q8_0;
}

/* The activation rows for W: the quantized copy in f->act if W's type needs
 * it (prepared by prepare_rows), else the f32 rows themselves. */
static const void *act_for(const llm_fwd *f, const nn_mat *W, const float *rows_f32)
{
    return wants_q8(W->type) ? f->act : (const void *)rows_f32;
}

/* Quantizes rows [i0, i1) of src (width k, ld k) into f->act for matrices
 * of type t, if t wants it. */
static void prepare_rows(llm_fwd *f, nn_type t, const float *src, int64_t k, long i0, long i1)
{
    if (!wants_q8(t) || i1 <= i0)
        return;
    size_t rb = nn_act_row_bytes(t, k);
    nn_act_prepare(t, src + i0 * k, k, (int)(i1 - i0), k, (char *)f->act + (size_t)i0 * rb, 0, 1);
}

/* y (ld ldy) columns [r0, r1) = W rows [r0, r1) · act, for n activation rows. */
static void matmul_rows(const llm_fwd *f, const nn_mat *W, const float *src_f32, int n, float *y,
                        int64_t ldy, long r0, long r1)
{
    if (r1 <= r0)
        return;
    nn_mat s = nn_mat_rows(W, r0, r1);
    nn_matmul(&s, act_for(f, W, src_f32), n, y + r0, ldy, 0, 1);
}

/* x += tmp over columns [r0, r1) of every row: the residual connection, for
 * the columns this thread's product wrote. */
static void add_residual(llm_fwd *f, int n, int E, long r0, long r1)
{
    for (long i = 0; i < n && r1 > r0; i++)
        nn_add(f->x + i * E + r0, f->tmp + i * E + r0, r1 - r0);
}

/* ======================================================================== */
/* Attention                                                                 */
/* ======================================================================== */

/* One query head of one row against its sequence's cache positions
 * [0, pos]. q is (head_dim) already rotated and rounded; out (head_dim). */
static void attend(const llm_fwd *f, int layer, int kvh, const llm_kv_seq *s, int pos,
                   const float *q, float *out, float *scores)
{
    const llm_kv *kv = f->kv;
    const int hd = kv->head_dim;
    const int n = pos + 1;
    const float scale = 1.0f / sqrtf((float)hd);
    for (int b = 0, t0 = 0; t0 < n; b++, t0 += LLM_KV_BLOCK) {
        const uint16_t *K = llm_kv_k(kv, layer, s->blocks[b], kvh);
        int nt = n - t0 < LLM_KV_BLOCK ? n - t0 : LLM_KV_BLOCK;
        for (int t = 0; t < nt; t++)
            scores[t0 + t] = nn_dot_f16_f32(K + (size_t)t * hd, q, hd) * scale;
    }
    nn_softmax(scores, n);
    memset(out, 0, (size_t)hd * sizeof *out);
    for (int b = 0, t0 = 0; t0 < n; b++, t0 += LLM_KV_BLOCK) {
        const uint16_t *V = llm_kv_v(kv, layer, s->blocks[b], kvh);
        int nt = n - t0 < LLM_KV_BLOCK ? n - t0 : LLM_KV_BLOCK;
        for (int t = 0; t < nt; t++)
            nn_axpy_f16(out, f16_round(scores[t0 + t]), V + (size_t)t * hd, hd);
    }
}

/* ======================================================================== */
/* The pass                                                                  */
/* ======================================================================== */

static void forward_task(void *ctx, int ith, int nth)
{
    llm_fwd *f = ctx;
    const llm_model *m = f->m;
    const llm_hparams *hp = &m->hp;
    const int n = f->n, E = hp->n_embd, hd = hp->head_dim, H = hp->n_head, HKV = hp->n_head_kv;
    const int QW = H * hd, KVW = HKV * hd, F = hp->n_ff, half = hp->rope_dim / 2;
    const int group = H / HKV;
    llm_kv *kv = f->kv;
    float *scores = f->scores + (size_t)ith * (size_t)f->max_ctx;
    long i0, i1; /* this thread's rows of the batch */
    nn_split(n, ith, nth, 1, &i0, &i1);

    /* Embeddings and the RoPE table of each row. */
    for (long i = i0; i < i1; i++) {
        const llm_row *r = &f->rows[i];
        nn_mat_row_f32(&m->tok_embd, r->token, f->x + i * E);
        rope_table(m, r->pos, f->rope + i * hp->rope_dim);
    }

    for (int il = 0; il < hp->n_layer; il++) {
        const llm_layer *L = &m->layers[il];

        /* --- attention block --- */
        for (long i = i0; i < i1; i++)
            rmsnorm(f->xn + i * E, f->x + i * E, L->attn_norm, E, hp->norm_eps);
        /* One quantized copy serves every quantized type (nn_block_q8a). */
        if (wants_q8(L->wq.type) || wants_q8(L->wk.type) || wants_q8(L->wv.type))
            prepare_rows(f, NN_Q8_0, f->xn, E, i0, i1);
        nn_pool_barrier(f->pool);

        /* Q, K and V by head: units [0, H) are Q heads, then K heads, then V. */
        long u0, u1;
        nn_split(H + 2 * HKV, ith, nth, 1, &u0, &u1);
        for (long u = u0; u < u1;) {
            const nn_mat *W;
            float *dst;
            long base, ld, lim;
            if (u < H) {
                W = &L->wq, dst = f->q, base = 0, ld = QW, lim = H;
            } else if (u < H + HKV) {
                W = &L->wk, dst = f->kv_tmp, base = H, ld = 2 * KVW, lim = H + HKV;
            } else {
                W = &L->wv, dst = f->kv_tmp + KVW, base = H + HKV, ld = 2 * KVW, lim = H + 2 * HKV;
            }
            long end = u1 < lim ? u1 : lim;
            long r0 = (u - base) * hd, r1 = (end - base) * hd;
            matmul_rows(f, W, f->xn, n, dst, ld, r0, r1);
            for (long i = 0; i < n; i++) {
                const llm_row *row = &f->rows[i];
                const float *cs = f->rope + i * hp->rope_dim;
                for (long h = u - base; h < end - base; h++) {
                    float *vec = dst + i * ld + h * hd;
                    if (W != &L->wv)
                        rope_apply(vec, cs, 2 * half);
                    if (W == &L->wq) {
                        for (int d = 0; d < hd; d++)
                            vec[d] = f16_round(vec[d]);
                        continue;
                    }
                    const llm_kv_seq *s = f->seqs[row->seq];
                    int blk = s->blocks[row->pos / LLM_KV_BLOCK];
                    uint16_t *cache = W == &L->wk ? llm_kv_k(kv, il, blk, (int)h)
                                                  : llm_kv_v(kv, il, blk, (int)h);
                    nn_f32_to_f16_row(vec, cache + (size_t)(row->pos % LLM_KV_BLOCK) * hd, hd);
                }
            }
            u = end;
        }
        nn_pool_barrier(f->pool);

        /* Attention, one (row, query head) per item; the output reuses xn. */
        long a0, a1;
        nn_split((long)n * H, ith, nth, 1, &a0, &a1);
        for (long it = a0; it < a1; it++) {
            long i = it / H;
            int h = (int)(it % H);
            const llm_row *row = &f->rows[i];
            attend(f, il, h / group, f->seqs[row->seq], row->pos, f->q + i * QW + h * hd,
                   f->xn + i * QW + h * hd, scores);
        }
        nn_pool_barrier(f->pool);
        prepare_rows(f, L->wo.type, f->xn, QW, i0, i1);
        nn_pool_barrier(f->pool);

        long r0, r1;
        nn_split(E, ith, nth, ROW_ALIGN, &r0, &r1);
        matmul_rows(f, &L->wo, f->xn, n, f->tmp, E, r0, r1);
        add_residual(f, n, E, r0, r1);
        nn_pool_barrier(f->pool);

        /* --- feed-forward block --- */
        for (long i = i0; i < i1; i++)
            rmsnorm(f->xn + i * E, f->x + i * E, L->ffn_norm, E, hp->norm_eps);
        if (wants_q8(L->w_gate.type) || wants_q8(L->w_up.type))
            prepare_rows(f, NN_Q8_0, f->xn, E, i0, i1);
        nn_pool_barrier(f->pool);

        nn_split(F, ith, nth, ROW_ALIGN, &r0, &r1);
        matmul_rows(f, &L->w_gate, f->xn, n, f->gate, F, r0, r1);
        matmul_rows(f, &L->w_up, f->xn, n, f->up, F, r0, r1);
        for (long i = 0; i < n && r1 > r0; i++)
            nn_silu_mul(f->gate + i * F + r0, f->up + i * F + r0, r1 - r0);
        nn_pool_barrier(f->pool);
        prepare_rows(f, L->w_down.type, f->gate, F, i0, i1);
        nn_pool_barrier(f->pool);

        nn_split(E, ith, nth, ROW_ALIGN, &r0, &r1);
        matmul_rows(f, &L->w_down, f->gate, n, f->tmp, E, r0, r1);
        add_residual(f, n, E, r0, r1);
        nn_pool_barrier(f->pool);
    }

    /* Logits for the rows that want them. */
    if (f->n_lrows == 0)
        return;
    long l0, l1;
    nn_split(f->n_lrows, ith, nth, 1, &l0, &l1);
    for (long j = l0; j < l1; j++)
        rmsnorm(f->xn + j * E, f->x + (size_t)f->lrows[j] * E, m->out_norm, E, hp->norm_eps);
    prepare_rows(f, m->output.type, f->xn, E, l0, l1);
    nn_pool_barrier(f->pool);
    long v0, v1;
    nn_split(hp->n_vocab, ith, nth, ROW_ALIGN, &v0, &v1);
    matmul_rows(f, &m->output, f->xn, f->n_lrows, f->logits, hp->n_vocab, v0, v1);
}

void llm_forward(llm_fwd *f, const llm_row *rows, int n, const llm_kv_seq *const *seqs,
                 float *logits)
{
    f->rows = rows;
    f->n = n;
    f->seqs = seqs;
    f->logits = logits;
    /* Logit rows in their output order, so the product writes logits rows
     * contiguously (row j of the product is logits row j). */
    f->n_lrows = 0;
    for (int i = 0; i < n; i++)
        if (rows[i].logits >= 0 && rows[i].logits < f->max_logits)
            f->n_lrows = rows[i].logits + 1 > f->n_lrows ? rows[i].logits + 1 : f->n_lrows;
    for (int j = 0; j < f->n_lrows; j++)
        f->lrows[j] = -1;
    for (int i = 0; i < n; i++)
        if (rows[i].logits >= 0 && rows[i].logits < f->max_logits)
            f->lrows[rows[i].logits] = i;
    for (int j = 0; j < f->n_lrows; j++)
        if (f->lrows[j] < 0)
            f->lrows[j] = 0; /* a gap: computed, never read */
    nn_pool_run(f->pool, forward_task, f);
}
