/*
 * ts_llm: tiny synthetic llama models for tests: a GGUF file with random
 * weights (seeded, of any matrix type nn_kern supports), the metadata a
 * llama loader reads, and a small byte-level BPE vocabulary (the 256 byte
 * tokens, a few merges, and the ChatML control tokens), optionally with a
 * chat template. Big enough to exercise every code path of the forward
 * pass (grouped-query attention, several layers, RoPE), small enough to
 * check against a naive reference in microseconds.
 *
 * The token ids: 0..255 are the bytes (in bytes_to_unicode order of the
 * GPT-2 byte-level BPE: id i is byte i), then the merges' results in order,
 * then <|endoftext|> (eos/bos), <|im_start|>, <|im_end|>.
 */
#ifndef TS_LLM_H
#define TS_LLM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ts_llm_spec {
    int n_embd;          /* multiple of 32 for quantized types */
    int n_layer;
    int n_head;
    int n_head_kv;
    int n_ff;            /* multiple of 32 for quantized types */
    int n_ctx;
    uint32_t wtype;      /* ggml type of the layer matrices */
    uint32_t etype;      /* ggml type of token_embd */
    bool tied;           /* no output.weight */
    uint32_t otype;      /* ggml type of output.weight when not tied */
    uint64_t seed;
    float scale;         /* weight magnitude (default 0.5 when 0) */
    const char *chat_template; /* NULL: none in the file */
    const char *pre;     /* tokenizer.ggml.pre (default "smollm") */
} ts_llm_spec;

/* A sensible default: 64 wide, 2 layers, 4 heads (2 KV), 128 FF, ctx 256, F32. */
ts_llm_spec ts_llm_default(void);

/* Number of tokens of the vocabulary ts_llm_write produces. */
int ts_llm_vocab_size(void);
/* Ids of the special tokens. */
int ts_llm_eos_id(void);
int ts_llm_im_start_id(void);
int ts_llm_im_end_id(void);

/* Writes the model to dir/name; returns the malloc'd path (asserts on
 * failure). */
char *ts_llm_write(const char *dir, const char *name, const ts_llm_spec *spec);

#endif
