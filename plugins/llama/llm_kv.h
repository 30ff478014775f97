/*
 * llm_kv: the paged key/value cache of one model instance.
 *
 * Positions are stored in blocks of LLM_KV_BLOCK; a sequence owns a list of
 * blocks (its block table), so sequences of any length share one pool with
 * no fragmentation and no copy when they grow, and a finished sequence gives
 * its blocks straight back. Keys and values are f16, as llama.cpp stores
 * them by default.
 *
 * Admission control: a sequence *reserves* the blocks it may need (prompt +
 * max new tokens, capped by the context) before it starts, and takes them
 * from its reservation as it grows, so a running sequence never finds the
 * cache full mid-generation; a request that cannot reserve waits in the
 * queue instead.
 *
 * Layout: per layer, per block, per KV head, LLM_KV_BLOCK rows of head_dim
 * f16 values (K and V in separate arrays), so one head's keys of one block
 * are contiguous for the attention loop. The arrays are anonymous mappings:
 * pages never touched cost no memory.
 *
 * Threading: the bookkeeping (reserve, grow, release) belongs to the one
 * scheduler thread. Reads and writes of K/V rows happen inside forward
 * passes on the pool threads, each to rows it alone writes.
 * Errors: llm_kv_new returns NULL (out of memory); reserve/grow return -1
 * when the pool cannot give what is asked (nothing changes then).
 */
#ifndef LLM_KV_H
#define LLM_KV_H

#include <stddef.h>
#include <stdint.h>

#define LLM_KV_BLOCK 32

typedef struct llm_kv {
    int n_layer, n_head_kv, head_dim;
    int n_blocks;        /* blocks in the pool */
    uint16_t *k, *v;     /* (n_layer, n_blocks, n_head_kv, LLM_KV_BLOCK, head_dim) f16 */
    size_t map_bytes;    /* of each of k and v */
    int *free_ids;       /* stack of free block ids */
    int n_free;
    int n_reserved;      /* blocks promised to sequences, not yet taken */
} llm_kv;

/* One sequence's blocks. Zero-initialize before first use. */
typedef struct llm_kv_seq {
    int *blocks;         /* block ids, position p lives in blocks[p / LLM_KV_BLOCK] */
    int n_blocks;        /* taken */
    int cap;             /* capacity of blocks[] */
    int reserved;        /* still to take from the pool's reservation */
} llm_kv_seq;

/* A cache of n_tokens positions (rounded up to whole blocks). */
llm_kv *llm_kv_new(int n_layer, int n_head_kv, int head_dim, int n_tokens);
void llm_kv_free(llm_kv *kv);

int llm_kv_capacity_tokens(const llm_kv *kv);
/* Positions in blocks taken or reserved. */
int llm_kv_used_tokens(const llm_kv *kv);
/* Blocks needed for n positions. */
int llm_kv_blocks_for(int n_tokens);

/* Reserves room for s to hold n_tokens positions in all (what it holds now
 * counts). Returns 0, or -1 if the pool cannot promise that much. */
int llm_kv_reserve(llm_kv *kv, llm_kv_seq *s, int n_tokens);
/* Takes blocks (from s's reservation first) so that s can hold n_tokens
 * positions. Returns 0 or -1 (pool exhausted, or out of memory). */
int llm_kv_grow(llm_kv *kv, llm_kv_seq *s, int n_tokens);
/* Returns every block of s and its reservation; s is empty afterwards. */
void llm_kv_release(llm_kv *kv, llm_kv_seq *s);

/* The K (or V) rows of one block for one layer and KV head:
 * LLM_KV_BLOCK * head_dim f16 values. */
static inline uint16_t *llm_kv_k(const llm_kv *kv, int layer, int block, int head)
{
    return kv->k + ((((size_t)layer * (size_t)kv->n_blocks + (size_t)block) *
                         (size_t)kv->n_head_kv + (size_t)head) *
                    LLM_KV_BLOCK * (size_t)kv->head_dim);
}

static inline uint16_t *llm_kv_v(const llm_kv *kv, int layer, int block, int head)
{
    return kv->v + ((((size_t)layer * (size_t)kv->n_blocks + (size_t)block) *
                         (size_t)kv->n_head_kv + (size_t)head) *
                    LLM_KV_BLOCK * (size_t)kv->head_dim);
}

#endif
