/*
 * llm_model: a llama-architecture model read from a GGUF file: its
 * hyper-parameters and views of its weights. Weights are not copied: every
 * nn_mat points into the file's read-only mapping, so a model costs its file
 * size in page cache and little else, and several instances of one file
 * share the pages.
 *
 * Accepted (anything else is refused with a reason naming the key or
 * tensor): general.architecture "llama"; the llama.* keys context_length,
 * embedding_length, block_count, feed_forward_length, attention.head_count,
 * attention.head_count_kv, attention.layer_norm_rms_epsilon,
 * rope.freq_base, rope.dimension_count, attention.key_length (== value_length),
 * rope.scaling.type none|linear with rope.scaling.factor; tensors token_embd,
 * output_norm, output (absent: tied to token_embd), optional rope_freqs, and
 * per layer attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm,
 * ffn_gate, ffn_up, ffn_down, each with the shape the hyper-parameters imply.
 * Matrices may be F32, F16, BF16, Q4_0, Q4_1 or Q8_0 (nn_kern.h); norm
 * vectors are F32. Limits (refused above them) keep a hostile header from
 * asking for absurd scratch memory: see LLM_MAX_* below.
 *
 * Ownership: llm_model_load owns the gguf_file it opens; llm_model_from_gguf
 * takes ownership of f (also on failure). llm_model_free closes it.
 * Threading: immutable after load; read from any number of threads.
 * Errors: -1 with a reason in err ("tensor 'blk.3.attn_k.weight' has shape
 * [576, 128], expected [576, 192]").
 */
#ifndef LLM_MODEL_H
#define LLM_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "nn/nn_kern.h"

#define LLM_MAX_LAYERS 512
#define LLM_MAX_EMBD 65536
#define LLM_MAX_HEADS 1024
#define LLM_MAX_HEAD_DIM 512
#define LLM_MAX_FF (1 << 20)
#define LLM_MAX_VOCAB (1 << 22)
#define LLM_MAX_CTX (1 << 24)

typedef struct llm_hparams {
    int n_vocab;
    int n_ctx_train;  /* context length the model was trained for */
    int n_embd;       /* width of the residual stream */
    int n_layer;
    int n_head;       /* query heads */
    int n_head_kv;    /* key/value heads (grouped-query attention); divides n_head */
    int head_dim;     /* per head; n_head * head_dim is the Q width */
    int n_ff;         /* feed-forward hidden width */
    int rope_dim;     /* leading dims of each head rotated (even, <= head_dim) */
    float rope_base;  /* theta */
    float rope_scale; /* linear position scaling: positions are divided by it */
    float norm_eps;   /* RMSNorm epsilon */
} llm_hparams;

typedef struct llm_layer {
    const float *attn_norm; /* (n_embd) */
    nn_mat wq;              /* (n_head*head_dim, n_embd) */
    nn_mat wk;              /* (n_head_kv*head_dim, n_embd) */
    nn_mat wv;              /* (n_head_kv*head_dim, n_embd) */
    nn_mat wo;              /* (n_embd, n_head*head_dim) */
    const float *ffn_norm;  /* (n_embd) */
    nn_mat w_gate;          /* (n_ff, n_embd) */
    nn_mat w_up;            /* (n_ff, n_embd) */
    nn_mat w_down;          /* (n_embd, n_ff) */
} llm_layer;

typedef struct llm_model {
    gguf_file *gguf;        /* owned: the mapping every weight points into */
    llm_hparams hp;
    nn_mat tok_embd;        /* (n_vocab, n_embd), rows looked up by token id */
    const float *out_norm;  /* (n_embd) */
    nn_mat output;          /* (n_vocab, n_embd); the same view as tok_embd when tied */
    int tied_output;        /* 1 if output shares tok_embd */
    const float *rope_freqs;/* (rope_dim/2) frequency divisors, or NULL */
    llm_layer *layers;      /* (n_layer) */
    int64_t n_params;       /* elements over all tensors */
    void *repacked;         /* owned: the interleaved copies llm_model_repack made, or NULL */
    size_t repacked_bytes;
    char name[128];         /* general.name, or "" */
    char quant[16];         /* type of the attention/FFN matrices ("Q4_1", "mixed") */
} llm_model;

int llm_model_load(const char *path, llm_model **out, char *err, size_t errlen);

/* Rewrites every Q4_0/Q4_1/Q8_0 matrix into nn_kern's interleaved layout
 * (NN_LAYOUT_R16, nn_mat_repack), in one owned buffer of about the size of
 * those weights, so that products stream them faster; the file's pages of
 * those tensors are then given back (madvise), so resident memory stays
 * about the model's size. Results are unchanged. Matrices whose per-thread
 * shares would not start on 16-row boundaries (query/key/value with a head
 * size that is not a multiple of 16) keep the file layout. Returns 0, or -1
 * on out of memory (the model is unchanged then). Call once, before use. */
int llm_model_repack(llm_model *m, char *err, size_t errlen);
int llm_model_from_gguf(gguf_file *f, llm_model **out, char *err, size_t errlen);
void llm_model_free(llm_model *m); /* NULL is a no-op */

#endif
