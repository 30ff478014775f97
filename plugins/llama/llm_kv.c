/*
 * llm_kv: paged KV cache. See llm_kv.h.
 */
#include "llm_kv.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

int llm_kv_blocks_for(int n_tokens)
{
    return n_tokens <= 0 ? 0 : (n_tokens + LLM_KV_BLOCK - 1) / LLM_KV_BLOCK;
}

static void *map_zero(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

llm_kv *llm_kv_new(int n_layer, int n_head_kv, int head_dim, int n_tokens)
{
    if (n_layer < 1 || n_head_kv < 1 || head_dim < 1 || n_tokens < 1)
        return NULL;
    llm_kv *kv = calloc(1, sizeof *kv);
    if (!kv)
        return NULL;
    kv->n_layer = n_layer;
    kv->n_head_kv = n_head_kv;
    kv->head_dim = head_dim;
    kv->n_blocks = llm_kv_blocks_for(n_tokens);
    size_t elems;
    if (__builtin_mul_overflow((size_t)n_layer * (size_t)n_head_kv * (size_t)head_dim,
                               (size_t)kv->n_blocks * LLM_KV_BLOCK, &elems) ||
        __builtin_mul_overflow(elems, sizeof(uint16_t), &kv->map_bytes)) {
        free(kv);
        return NULL;
    }
    kv->k = map_zero(kv->map_bytes);
    kv->v = kv->k ? map_zero(kv->map_bytes) : NULL;
    kv->free_ids = malloc((size_t)kv->n_blocks * sizeof *kv->free_ids);
    if (!kv->k || !kv->v || !kv->free_ids) {
        llm_kv_free(kv);
        return NULL;
    }
    /* Hand out low ids first: a lightly used cache touches few pages. */
    for (int i = 0; i < kv->n_blocks; i++)
        kv->free_ids[i] = kv->n_blocks - 1 - i;
    kv->n_free = kv->n_blocks;
    return kv;
}

void llm_kv_free(llm_kv *kv)
{
    if (!kv)
        return;
    if (kv->k)
        munmap(kv->k, kv->map_bytes);
    if (kv->v)
        munmap(kv->v, kv->map_bytes);
    free(kv->free_ids);
    free(kv);
}

int llm_kv_capacity_tokens(const llm_kv *kv)
{
    return kv->n_blocks * LLM_KV_BLOCK;
}

int llm_kv_used_tokens(const llm_kv *kv)
{
    return (kv->n_blocks - kv->n_free + kv->n_reserved) * LLM_KV_BLOCK;
}

int llm_kv_reserve(llm_kv *kv, llm_kv_seq *s, int n_tokens)
{
    int want = llm_kv_blocks_for(n_tokens) - s->n_blocks - s->reserved;
    if (want <= 0)
        return 0;
    if (kv->n_free - kv->n_reserved < want)
        return -1;
    kv->n_reserved += want;
    s->reserved += want;
    return 0;
}

int llm_kv_grow(llm_kv *kv, llm_kv_seq *s, int n_tokens)
{
    int need = llm_kv_blocks_for(n_tokens);
    if (need <= s->n_blocks)
        return 0;
    int more = need - s->n_blocks;
    int from_res = more < s->reserved ? more : s->reserved;
    /* Unreserved blocks may only come from what nobody was promised. */
    if (kv->n_free - kv->n_reserved < more - from_res)
        return -1;
    if (need > s->cap) {
        int cap = s->cap ? s->cap : 8;
        while (cap < need)
            cap *= 2;
        int *b = realloc(s->blocks, (size_t)cap * sizeof *b);
        if (!b)
            return -1;
        s->blocks = b;
        s->cap = cap;
    }
    for (int i = 0; i < more; i++)
        s->blocks[s->n_blocks++] = kv->free_ids[--kv->n_free];
    s->reserved -= from_res;
    kv->n_reserved -= from_res;
    return 0;
}

void llm_kv_release(llm_kv *kv, llm_kv_seq *s)
{
    for (int i = s->n_blocks - 1; i >= 0; i--)
        kv->free_ids[kv->n_free++] = s->blocks[i];
    kv->n_reserved -= s->reserved;
    free(s->blocks);
    memset(s, 0, sizeof *s);
}
