/*
 * llm_forward: the llama forward pass over a batch of token rows drawn from
 * any number of sequences: prompt chunks of some, one decode token of
 * others, all in the same matrix products (continuous batching with chunked
 * prefill). Attention reads each row's own sequence from the paged KV cache.
 *
 * One step is one nn_pool_run: every pool thread runs the whole pass, taking
 * its share of each stage and meeting the others at barriers between stages
 * (about nine per layer), so no thread is woken per matrix product.
 *
 * Numerics follow llama.cpp's CPU path on purpose, so greedy decoding gives
 * the same tokens as the reference: activations are quantized per 32-block
 * before quantized matmuls (nn_kern), RMSNorm is computed in double,
 * RoPE angles are stepped as ggml steps them, keys and values are cached
 * in f16, and queries and attention weights are rounded to f16 before their
 * products with the cache, as ggml's f16 matmuls do.
 *
 * Ownership: an llm_fwd borrows the model, the KV cache and the pool (all
 * must outlive it) and owns its scratch buffers, sized at creation for at
 * most max_rows rows, max_logits logit rows and max_ctx positions a sequence.
 * Threading: one llm_forward at a time per llm_fwd (the scheduler thread).
 * Errors: llm_fwd_new returns NULL on out of memory; llm_forward cannot fail
 * (its caller validated the batch: see llm_forward).
 */
#ifndef LLM_FORWARD_H
#define LLM_FORWARD_H

#include <stdint.h>

#include "llm_kv.h"
#include "llm_model.h"
#include "nn/nn_pool.h"

typedef struct llm_row {
    int32_t token;  /* 0 <= token < n_vocab */
    int32_t pos;    /* position in its sequence, < max_ctx */
    int32_t seq;    /* index into the seqs array of llm_forward */
    int32_t logits; /* row of the logits output to fill, or -1 for none */
} llm_row;

typedef struct llm_fwd llm_fwd;

llm_fwd *llm_fwd_new(const llm_model *m, llm_kv *kv, nn_pool *pool, int max_rows,
                     int max_logits, int max_ctx);
void llm_fwd_free(llm_fwd *f); /* NULL is a no-op */

/*
 * Runs the model on rows[0, n) (1 <= n <= max_rows). For each row, its
 * sequence's cache must already hold every position below the row's that
 * is not itself in this batch, and seqs[row.seq] must have blocks up to the
 * row's position (llm_kv_grow). Rows of one sequence may come in any order.
 * The keys and values of every row are written to the cache. Logit rows
 * (distinct values < max_logits) receive n_vocab floats each at
 * logits + row.logits * n_vocab.
 */
void llm_forward(llm_fwd *f, const llm_row *rows, int n, const llm_kv_seq *const *seqs,
                 float *logits);

#endif
