/*
 * llm_sample: choosing the next token from logits, per request.
 *
 * Pipeline, in the order HF transformers and vLLM apply it:
 *   1. penalties: repetition_penalty over every token of the sequence so far
 *      (prompt and generated; a positive logit is divided by it, a negative
 *      one multiplied), then frequency_penalty * count + presence_penalty
 *      over generated tokens (OpenAI's definition);
 *   2. greedy (temperature <= 0, or top_k == 1): the first index of the
 *      maximum, exactly llama.cpp's greedy choice;
 *   3. otherwise logits / temperature, top_k, top_p (the smallest set of most
 *      likely tokens whose probability reaches top_p; computed exactly with
 *      one radix pass over the vocabulary rather than a full sort), then a
 *      draw from the renormalized distribution with the request's RNG
 *      (xoshiro256**, seeded from `seed`, or from the OS when none is given).
 * The same seed on the same logits gives the same token.
 *
 * Ownership: a sampler belongs to one request; it owns its counters and
 * scratch (sized by the vocabulary, allocated once at creation, so sampling
 * itself never allocates).
 * Threading: one thread at a time per sampler.
 * Errors: llm_sampler_new returns NULL on out of memory or invalid
 * parameters (the request parser validates ranges first).
 */
#ifndef LLM_SAMPLE_H
#define LLM_SAMPLE_H

#include <stdbool.h>
#include <stdint.h>

typedef struct llm_sampling {
    float temperature;        /* <= 0: greedy */
    int top_k;                /* 0: off */
    float top_p;              /* in (0, 1]; 1: off */
    float repetition_penalty; /* > 0; 1: off */
    float frequency_penalty;  /* 0: off; may be negative */
    float presence_penalty;   /* 0: off; may be negative */
    bool has_seed;
    uint64_t seed;
} llm_sampling;

typedef struct llm_sampler llm_sampler;

llm_sampler *llm_sampler_new(const llm_sampling *p, int n_vocab);
void llm_sampler_free(llm_sampler *s); /* NULL is a no-op */

/* Records a token of the sequence (prompt tokens with generated = false),
 * for the penalties. Ids outside [0, n_vocab) are ignored. */
void llm_sampler_accept(llm_sampler *s, int32_t token, bool generated);

/* Picks the next token from logits (n_vocab values, modified in place). */
int32_t llm_sampler_sample(llm_sampler *s, float *logits);

/* True when sampling reduces to argmax with no penalties (the fast path). */
bool llm_sampling_is_greedy(const llm_sampling *p);

#endif
