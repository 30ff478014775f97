/*
 * bert_model: a BERT-family sentence encoder (sentence-transformers layout)
 * loaded from a model directory, and its forward pass.
 *
 * The directory holds:
 *   config.json                 model_type "bert", hidden_act "gelu", sizes
 *   model.safetensors           F32, F16 or BF16 weights (BertModel names,
 *                               optionally prefixed "bert.")
 *   sentence_bert_config.json   optional: max_seq_length (default: the
 *                               position table's size, at most 512)
 *   1_Pooling/config.json       optional: mean (default) or cls pooling
 *   modules.json                optional: a sentence_transformers.models.
 *                               Normalize module means L2-normalized output
 * Every weight's presence, dtype and shape is checked against config.json,
 * and every value must be finite; anything else is refused with a reason.
 *
 * Forward pass without padding: the texts of a batch are concatenated into
 * one [total_tokens x hidden] matrix, so every projection is one GEMM over
 * all tokens of all texts, and attention runs per text over its own tokens
 * only (no mask, no padded rows). One pass is one nn_pool_run with barriers
 * between the steps.
 *
 * Threading: a bert_model is immutable after load and may be shared. A
 * bert_ctx (scratch buffers and a thread pool) serves one caller at a time.
 */
#ifndef OUTPOST_BERT_MODEL_H
#define OUTPOST_BERT_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum bert_pooling { BERT_POOL_MEAN = 0, BERT_POOL_CLS = 1 } bert_pooling;

typedef struct bert_config {
    int hidden;                 /* hidden_size H */
    int layers;                 /* num_hidden_layers */
    int heads;                  /* num_attention_heads; H % heads == 0 */
    int intermediate;           /* intermediate_size I */
    int max_pos;                /* max_position_embeddings */
    int vocab;                  /* vocab_size */
    int type_vocab;             /* type_vocab_size (>= 1; type 0 is used) */
    float ln_eps;               /* layer_norm_eps */
    int max_seq;                /* tokens per text, [CLS] and [SEP] included */
    bert_pooling pooling;
    bool normalize;             /* L2-normalize the pooled vector */
} bert_config;

typedef struct bert_layer {
    const float *qkv_w;         /* (3H, H): query rows, key rows, value rows */
    const float *qkv_b;         /* (3H) */
    const float *o_w, *o_b;     /* (H, H), (H): attention output projection */
    const float *ln1_w, *ln1_b; /* (H): attention.output.LayerNorm */
    const float *ff1_w, *ff1_b; /* (I, H), (I): intermediate.dense */
    const float *ff2_w, *ff2_b; /* (H, I), (H): output.dense */
    const float *ln2_w, *ln2_b; /* (H): output.LayerNorm */
} bert_layer;

typedef struct bert_model {
    bert_config cfg;
    const float *word_emb;      /* (vocab, H) */
    const float *pos_emb;       /* (max_pos, H) */
    const float *type_emb;      /* (type_vocab, H); row 0 */
    const float *emb_ln_w, *emb_ln_b;
    bert_layer *layers;         /* (layers) */
    int64_t n_params;           /* floating-point values in the weights file */
    struct st_file *st;         /* the mapping the weights point into */
    void **owned;               /* buffers the weights point into otherwise */
    size_t n_owned;
} bert_model;

/* Loads dir (see above). */
int bert_model_load(const char *dir, bert_model **out, char *err, size_t errlen);
void bert_model_free(bert_model *m); /* NULL is a no-op */

/* How the big products are computed (bench and tests compare them). */
typedef enum bert_gemm { BERT_GEMM_BLAS = 0, BERT_GEMM_NN = 1 } bert_gemm;

typedef struct bert_ctx bert_ctx;

/* Scratch for passes of up to max_tokens tokens (>= cfg.max_seq) on a pool of
 * n_threads threads. NULL when memory or a thread cannot be had. */
bert_ctx *bert_ctx_new(const bert_model *m, int max_tokens, int n_threads, bert_gemm gemm);
void bert_ctx_free(bert_ctx *c); /* NULL is a no-op */
int bert_ctx_max_tokens(const bert_ctx *c);

/* Embeds n_seqs texts whose token ids are concatenated in ids, text s being
 * ids[offsets[s], offsets[s+1]) (each 1..cfg.max_seq ids; in all at most
 * max_tokens; every id < cfg.vocab: the caller's tokenizer guarantees it).
 * Writes n_seqs rows of cfg.hidden floats to out. Returns 0, or -1 if the
 * input breaks those limits or the output is not finite (nothing useful in
 * out then). */
int bert_encode(bert_ctx *c, const int32_t *ids, const int *offsets, int n_seqs, float *out);

#endif
