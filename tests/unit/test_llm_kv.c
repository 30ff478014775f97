/*
 * Unit tests for plugins/llama/llm_kv: the paged KV cache's bookkeeping.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "llm_kv.h"

Test(llm_kv, reserve_grow_release_account_every_block)
{
    llm_kv *kv = llm_kv_new(2, 2, 8, 10 * LLM_KV_BLOCK);
    cr_assert_not_null(kv);
    cr_assert_eq(llm_kv_capacity_tokens(kv), 10 * LLM_KV_BLOCK);
    llm_kv_seq a = {0}, b = {0};
    cr_assert_eq(llm_kv_reserve(kv, &a, 4 * LLM_KV_BLOCK), 0);
    cr_assert_eq(llm_kv_used_tokens(kv), 4 * LLM_KV_BLOCK);
    cr_assert_eq(llm_kv_reserve(kv, &b, 6 * LLM_KV_BLOCK + 1), -1, "over capacity promised");
    cr_assert_eq(llm_kv_reserve(kv, &b, 6 * LLM_KV_BLOCK), 0);
    /* Everything is promised: growing past a reservation fails. */
    cr_assert_eq(llm_kv_grow(kv, &a, 5 * LLM_KV_BLOCK), -1);
    cr_assert_eq(llm_kv_grow(kv, &a, 1), 0);
    cr_assert_eq(a.n_blocks, 1);
    cr_assert_eq(llm_kv_grow(kv, &a, 4 * LLM_KV_BLOCK), 0);
    cr_assert_eq(a.n_blocks, 4);
    cr_assert_eq(a.reserved, 0);
    cr_assert_eq(llm_kv_grow(kv, &b, 6 * LLM_KV_BLOCK), 0);
    /* Blocks are distinct. */
    char used[10] = {0};
    for (int i = 0; i < a.n_blocks; i++)
        used[a.blocks[i]]++;
    for (int i = 0; i < b.n_blocks; i++)
        used[b.blocks[i]]++;
    for (int i = 0; i < 10; i++)
        cr_assert_eq(used[i], 1, "block %d used %d times", i, used[i]);
    llm_kv_release(kv, &a);
    cr_assert_eq(llm_kv_used_tokens(kv), 6 * LLM_KV_BLOCK);
    cr_assert_eq(a.n_blocks, 0);
    cr_assert_null(a.blocks);
    /* A released reservation that was never taken returns too. */
    llm_kv_seq c = {0};
    cr_assert_eq(llm_kv_reserve(kv, &c, 3 * LLM_KV_BLOCK), 0);
    llm_kv_release(kv, &c);
    llm_kv_release(kv, &b);
    cr_assert_eq(llm_kv_used_tokens(kv), 0);
    cr_assert_eq(kv->n_free, 10);
    cr_assert_eq(kv->n_reserved, 0);
    llm_kv_free(kv);
}

Test(llm_kv, rows_of_blocks_do_not_overlap)
{
    llm_kv *kv = llm_kv_new(3, 2, 16, 4 * LLM_KV_BLOCK);
    cr_assert_not_null(kv);
    /* Write a distinct value into every (layer, block, head) row set and
     * read them all back. */
    for (int l = 0; l < 3; l++)
        for (int b = 0; b < 4; b++)
            for (int h = 0; h < 2; h++) {
                uint16_t *k = llm_kv_k(kv, l, b, h), *v = llm_kv_v(kv, l, b, h);
                for (int i = 0; i < LLM_KV_BLOCK * 16; i++) {
                    k[i] = (uint16_t)(l * 100 + b * 10 + h);
                    v[i] = (uint16_t)(1000 + l * 100 + b * 10 + h);
                }
            }
    for (int l = 0; l < 3; l++)
        for (int b = 0; b < 4; b++)
            for (int h = 0; h < 2; h++) {
                const uint16_t *k = llm_kv_k(kv, l, b, h), *v = llm_kv_v(kv, l, b, h);
                for (int i = 0; i < LLM_KV_BLOCK * 16; i++) {
                    cr_assert_eq(k[i], l * 100 + b * 10 + h);
                    cr_assert_eq(v[i], 1000 + l * 100 + b * 10 + h);
                }
            }
    llm_kv_free(kv);
}

Test(llm_kv, silly_sizes_are_refused)
{
    cr_assert_null(llm_kv_new(0, 1, 1, 10));
    cr_assert_null(llm_kv_new(1, 1, 1, 0));
    cr_assert_null(llm_kv_new(1 << 20, 1 << 10, 1 << 10, 1 << 24), "an overflowing size");
}
