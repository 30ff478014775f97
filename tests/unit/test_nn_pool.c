/*
 * Unit tests for nn_pool (plugins/nn/nn_pool.c) and nn_split: every thread
 * index runs exactly once per run, barriers order the steps of a run, the
 * pool survives many short runs and long idle gaps (the futex path), and
 * frees cleanly whether idle, asleep or never used.
 */
#include "nn_pool.h"

#include <criterion/criterion.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define MAXT 8

typedef struct count_ctx {
    _Atomic int calls[MAXT];
    _Atomic int bad_nth;
    int nth;
} count_ctx;

static void count_fn(void *p, int ith, int nth)
{
    count_ctx *c = p;
    if (nth != c->nth || ith < 0 || ith >= nth)
        atomic_fetch_add(&c->bad_nth, 1);
    else
        atomic_fetch_add(&c->calls[ith], 1);
}

Test(nn_pool, every_thread_index_once_per_run)
{
    for (int n = 1; n <= 5; n++) {
        nn_pool *p = nn_pool_new(n, "test");
        cr_assert_not_null(p);
        cr_assert_eq(nn_pool_size(p), n);
        count_ctx c = {.nth = n};
        const int runs = 500;
        for (int r = 0; r < runs; r++)
            nn_pool_run(p, count_fn, &c);
        cr_assert_eq(atomic_load(&c.bad_nth), 0);
        for (int i = 0; i < n; i++)
            cr_assert_eq(atomic_load(&c.calls[i]), runs, "n=%d thread %d ran %d times", n, i,
                         atomic_load(&c.calls[i]));
        nn_pool_free(p);
    }
}

/* Each thread writes its slot in step s, then after a barrier checks that
 * every slot holds step s: a barrier that let anyone through early shows. */
typedef struct bar_ctx {
    nn_pool *pool;
    int steps;
    _Atomic int slot[MAXT];
    _Atomic int errors;
} bar_ctx;

static void barrier_fn(void *p, int ith, int nth)
{
    bar_ctx *c = p;
    for (int s = 1; s <= c->steps; s++) {
        atomic_store_explicit(&c->slot[ith], s, memory_order_relaxed);
        nn_pool_barrier(c->pool);
        for (int t = 0; t < nth; t++)
            if (atomic_load_explicit(&c->slot[t], memory_order_relaxed) != s)
                atomic_fetch_add(&c->errors, 1);
        nn_pool_barrier(c->pool);
    }
}

Test(nn_pool, barriers_order_steps)
{
    for (int n = 1; n <= 4; n++) {
        bar_ctx c = {.steps = 100};
        c.pool = nn_pool_new(n, "bar");
        cr_assert_not_null(c.pool);
        for (int r = 0; r < 20; r++)
            nn_pool_run(c.pool, barrier_fn, &c);
        cr_assert_eq(atomic_load(&c.errors), 0, "n=%d: %d early passes", n,
                     atomic_load(&c.errors));
        nn_pool_free(c.pool);
    }
}

/* Plain (non-atomic) writes by workers must be visible to the caller after
 * the run returns, and the caller's writes to workers in the next run. */
typedef struct vis_ctx {
    int round;
    int out[MAXT];
    int wrong;
} vis_ctx;

static void vis_fn(void *p, int ith, int nth)
{
    vis_ctx *c = p;
    (void)nth;
    c->out[ith] = c->round * 10 + ith;
}

Test(nn_pool, results_visible_after_run)
{
    nn_pool *p = nn_pool_new(3, "vis");
    vis_ctx c = {0};
    for (int r = 1; r <= 2000; r++) {
        c.round = r;
        nn_pool_run(p, vis_fn, &c);
        for (int i = 0; i < 3; i++)
            if (c.out[i] != r * 10 + i)
                c.wrong++;
    }
    cr_assert_eq(c.wrong, 0);
    nn_pool_free(p);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

Test(nn_pool, wakes_after_idle_sleep)
{
    /* Gaps longer than the spin time put the workers on the futex; each run
     * after one must still wake them all. */
    nn_pool *p = nn_pool_new(3, "idle");
    count_ctx c = {.nth = 3};
    for (int r = 0; r < 5; r++) {
        sleep_ms(5);
        nn_pool_run(p, count_fn, &c);
    }
    for (int i = 0; i < 3; i++)
        cr_assert_eq(atomic_load(&c.calls[i]), 5);
    nn_pool_free(p);
}

/* A worker that takes long makes the caller wait past its spin, on the
 * futex: it must still be woken by the last worker. */
static void slow_worker_fn(void *p, int ith, int nth)
{
    count_ctx *c = p;
    if (ith == nth - 1)
        sleep_ms(3);
    count_fn(p, ith, nth);
    (void)c;
}

Test(nn_pool, caller_waits_for_slow_worker)
{
    nn_pool *p = nn_pool_new(2, "slow");
    count_ctx c = {.nth = 2};
    for (int r = 0; r < 10; r++)
        nn_pool_run(p, slow_worker_fn, &c);
    cr_assert_eq(atomic_load(&c.calls[0]), 10);
    cr_assert_eq(atomic_load(&c.calls[1]), 10);
    nn_pool_free(p);
}

Test(nn_pool, free_idle_unused_and_null)
{
    nn_pool_free(NULL);
    nn_pool *p = nn_pool_new(4, "unused");
    cr_assert_not_null(p);
    nn_pool_free(p); /* never ran */
    p = nn_pool_new(2, "asleep");
    count_ctx c = {.nth = 2};
    nn_pool_run(p, count_fn, &c);
    sleep_ms(5); /* workers are on the futex now */
    nn_pool_free(p);
    p = nn_pool_new(1, "single");
    c = (count_ctx){.nth = 1};
    nn_pool_run(p, count_fn, &c);
    nn_pool_barrier(p); /* a no-op with one thread, even outside a run */
    cr_assert_eq(atomic_load(&c.calls[0]), 1);
    nn_pool_free(p);
    cr_assert_null(nn_pool_new(0, "none"));
}

Test(nn_pool, long_name_is_cut)
{
    nn_pool *p = nn_pool_new(2, "a-very-long-pool-name-indeed");
    cr_assert_not_null(p);
    count_ctx c = {.nth = 2};
    nn_pool_run(p, count_fn, &c);
    cr_assert_eq(atomic_load(&c.calls[1]), 1);
    nn_pool_free(p);
}

/* ------------------------------------------------------------------------ */

Test(nn_split, shares_cover_and_balance)
{
    const long ns[] = {0, 1, 3, 4, 5, 16, 17, 100, 191, 192, 576, 1000, 49152};
    const long aligns[] = {1, 4, 16};
    for (size_t a = 0; a < sizeof aligns / sizeof *aligns; a++)
        for (size_t i = 0; i < sizeof ns / sizeof *ns; i++)
            for (int nth = 1; nth <= 7; nth++) {
                long n = ns[i], al = aligns[a], next = 0, maxs = 0, mins = n + 1;
                for (int t = 0; t < nth; t++) {
                    long lo, hi;
                    nn_split(n, t, nth, al, &lo, &hi);
                    cr_assert_eq(lo, next, "n=%ld nth=%d t=%d: gap", n, nth, t);
                    cr_assert(hi >= lo);
                    if (hi < n)
                        cr_assert_eq(hi % al, 0, "share ends off the alignment");
                    next = hi;
                    long units = (hi - lo + al - 1) / al;
                    maxs = units > maxs ? units : maxs;
                    mins = units < mins ? units : mins;
                }
                cr_assert_eq(next, n, "n=%ld nth=%d: not covered", n, nth);
                cr_assert(maxs - mins <= 1, "unbalanced: %ld vs %ld units", maxs, mins);
            }
}
