/*
 * nn_pool: fixed compute threads with spin-then-futex hand-off and a spin
 * barrier (see nn_pool.h for the contract).
 *
 * Hand-off: the caller publishes fn/ctx, sets `pending` to the worker count
 * and bumps `gen`; workers watch `gen`. A worker that saw no new generation
 * for a while registers in `sleepers` and futex-waits on `gen`; the caller
 * makes the wake syscall only when someone registered. The registration and
 * the generation bump are both sequentially consistent read-modify-writes, so
 * either the caller sees the sleeper (and wakes it) or the sleeper sees the
 * new generation (and does not sleep): no lost wake-up, and no syscall while
 * runs follow each other closely. Completion is the mirror image: workers
 * count `pending` down and the caller, after doing its own share, spins and
 * then futex-waits on it. Spinning turns to yielding after at most a few
 * microseconds (see NN_SPIN_FAST_NS), so a pool with more threads than free
 * cores degrades gracefully instead of spinning against its own threads.
 *
 * The hot counters sit on separate cache lines so that spinning readers of
 * one do not slow down the writers of another.
 */
#include "nn_pool.h"

#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define NN_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define NN_PAUSE() __asm__ __volatile__("yield")
#else
#define NN_PAUSE() ((void)0)
#endif

/* Waiting, in three phases. First pause and re-check (a peer on its own
 * core answers within a microsecond or two). Then, up to NN_SPIN_NS: yield
 * the CPU between checks, because a peer that has not answered yet may be
 * waiting for a core (the machine may have fewer free cores than the pool
 * has threads, or the peer was preempted), possibly for ours: spinning then
 * only delays it. After that (the caller waiting for workers, a worker
 * waiting for the next run): sleep on a futex, so an idle model costs no
 * CPU. The runs of one forward pass follow each other within microseconds
 * and hand off without a syscall.
 *
 * The pause phase adapts per thread between NN_SPIN_MIN_NS and
 * NN_SPIN_FAST_NS: halved after a wait that had to yield, doubled after one
 * that did not. On dedicated cores waits end while pausing and it stays
 * long; with two threads sharing a core every wait ends yielding, and a
 * barrier costs about a context switch instead of a pause phase (measured
 * on 2 threads sharing 1 free core: 7.9 us per barrier with a fixed 5 us
 * phase). */
#define NN_SPIN_FAST_NS 5000
#define NN_SPIN_MIN_NS 250
#define NN_SPIN_NS 100000L
/* Pause rounds between two clock reads while spinning (a clock read is a
 * vDSO call, cheap but not free). */
#define NN_SPIN_CHECK 32

#define NN_CACHELINE 64

typedef struct nn_worker {
    nn_pool *pool;
    pthread_t thread;
    int ith;
} nn_worker;

struct nn_pool {
    /* Set by the caller before the generation bump that publishes them. */
    nn_task_fn fn;
    void *ctx;
    int n_threads;
    nn_worker *workers; /* n_threads - 1 of them; workers[i].ith == i + 1 */
    bool quit;          /* published by a generation bump, like fn */

    /* Run generation: bumped once per run (and once to quit). */
    alignas(NN_CACHELINE) _Atomic uint32_t gen;
    /* Workers sleeping (or about to) on gen. */
    alignas(NN_CACHELINE) _Atomic int sleepers;
    /* Workers that have not finished the current run. */
    alignas(NN_CACHELINE) _Atomic uint32_t pending;
    /* The caller sleeps (or is about to) on pending. */
    alignas(NN_CACHELINE) _Atomic int caller_sleeping;
    /* Barrier: arrivals in the current phase, and the phase number. */
    alignas(NN_CACHELINE) _Atomic int bar_count;
    alignas(NN_CACHELINE) _Atomic uint32_t bar_phase;
};

/* ------------------------------------------------------------------------ */

static void futex_wait(_Atomic uint32_t *addr, uint32_t expected)
{
    /* Returns at once (EAGAIN) if *addr no longer equals expected; spurious
     * wake-ups and EINTR are handled by the callers' loops. */
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t *addr)
{
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* This thread's pause phase (see NN_SPIN_FAST_NS). */
static _Thread_local int tl_pause_ns = NN_SPIN_FAST_NS;

/* One wait in its pause and yield phases. */
typedef struct spin {
    int64_t start; /* 0 before the first clock read; -start once yielding */
    unsigned i;
} spin;

/* Ends a wait: adapts the pause phase to how it went. */
static void spin_done(const spin *s)
{
    if (s->start < 0)
        tl_pause_ns = tl_pause_ns / 2 > NN_SPIN_MIN_NS ? tl_pause_ns / 2 : NN_SPIN_MIN_NS;
    else if (s->i >= NN_SPIN_CHECK) /* waited (not just found it done) */
        tl_pause_ns = tl_pause_ns * 2 < NN_SPIN_FAST_NS ? tl_pause_ns * 2 : NN_SPIN_FAST_NS;
}

/* One waiting step; false once max_ns have passed (max_ns < 0: never). */
static bool spin_step(spin *s, int64_t max_ns)
{
    if (s->start < 0) { /* yield phase */
        sched_yield();
        if (++s->i % 8 == 0 && max_ns >= 0 && now_ns() - (-s->start) >= max_ns)
            return false;
        return true;
    }
    NN_PAUSE();
    if (++s->i % NN_SPIN_CHECK == 0) {
        int64_t t = now_ns();
        if (s->start == 0)
            s->start = t;
        else if (t - s->start >= tl_pause_ns)
            s->start = -s->start; /* negative: yielding since -start */
    }
    return true;
}

/* Waits until *addr != val or NN_SPIN_NS elapse; returns the last value read. */
static uint32_t spin_while_equal(_Atomic uint32_t *addr, uint32_t val)
{
    spin s = {0, 0};
    for (;;) {
        uint32_t cur = atomic_load_explicit(addr, memory_order_acquire);
        if (cur != val) {
            spin_done(&s);
            return cur;
        }
        if (!spin_step(&s, NN_SPIN_NS))
            return cur; /* going to sleep: says nothing about the peers */
    }
}

/* ------------------------------------------------------------------------ */

static void *worker_main(void *arg)
{
    nn_worker *w = arg;
    nn_pool *p = w->pool;
    uint32_t seen = 0; /* the generation of the last run this worker did */

    for (;;) {
        uint32_t g = spin_while_equal(&p->gen, seen);
        while (g == seen) {
            atomic_fetch_add(&p->sleepers, 1); /* seq_cst: see the file comment */
            g = atomic_load(&p->gen);
            if (g == seen)
                futex_wait(&p->gen, seen);
            atomic_fetch_sub(&p->sleepers, 1);
            g = atomic_load_explicit(&p->gen, memory_order_acquire);
        }
        seen = g;
        if (p->quit)
            return NULL;
        p->fn(p->ctx, w->ith, p->n_threads);
        /* Last one out wakes the caller if it registered as sleeping; both
         * sides use seq_cst so one of them sees the other (file comment). */
        if (atomic_fetch_sub(&p->pending, 1) == 1 && atomic_load(&p->caller_sleeping))
            futex_wake_all(&p->pending);
    }
}

/* Bumps the generation (publishing fn/ctx/quit) and wakes sleepers. */
static void publish(nn_pool *p)
{
    atomic_fetch_add(&p->gen, 1); /* seq_cst */
    if (atomic_load(&p->sleepers) > 0)
        futex_wake_all(&p->gen);
}

static void stop_workers(nn_pool *p, int started)
{
    p->quit = true;
    publish(p);
    for (int i = 0; i < started; i++)
        pthread_join(p->workers[i].thread, NULL);
}

nn_pool *nn_pool_new(int n_threads, const char *name)
{
    if (n_threads < 1)
        return NULL;
    nn_pool *p = aligned_alloc(NN_CACHELINE, (sizeof *p + NN_CACHELINE - 1) / NN_CACHELINE *
                                                 NN_CACHELINE);
    if (!p)
        return NULL;
    memset(p, 0, sizeof *p);
    p->n_threads = n_threads;
    atomic_init(&p->gen, 0);
    atomic_init(&p->sleepers, 0);
    atomic_init(&p->pending, 0);
    atomic_init(&p->caller_sleeping, 0);
    atomic_init(&p->bar_count, 0);
    atomic_init(&p->bar_phase, 0);
    if (n_threads == 1)
        return p;

    p->workers = calloc((size_t)n_threads - 1, sizeof *p->workers);
    if (!p->workers) {
        free(p);
        return NULL;
    }
    for (int i = 0; i < n_threads - 1; i++) {
        nn_worker *w = &p->workers[i];
        w->pool = p;
        w->ith = i + 1;
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            stop_workers(p, i);
            free(p->workers);
            free(p);
            return NULL;
        }
        /* Thread names are limited to 15 characters: the prefix is cut. */
        char tname[32];
        snprintf(tname, sizeof tname, "%.8s-w%d", name && *name ? name : "nn", i + 1);
        tname[15] = '\0';
        pthread_setname_np(w->thread, tname);
    }
    return p;
}

void nn_pool_free(nn_pool *pool)
{
    if (!pool)
        return;
    if (pool->n_threads > 1)
        stop_workers(pool, pool->n_threads - 1);
    free(pool->workers);
    free(pool);
}

int nn_pool_size(const nn_pool *pool)
{
    return pool->n_threads;
}

void nn_pool_run(nn_pool *p, nn_task_fn fn, void *ctx)
{
    if (p->n_threads == 1) {
        fn(ctx, 0, 1);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store_explicit(&p->pending, (uint32_t)(p->n_threads - 1), memory_order_relaxed);
    publish(p);

    fn(ctx, 0, p->n_threads);

    for (;;) {
        uint32_t left = atomic_load_explicit(&p->pending, memory_order_acquire);
        if (left == 0)
            break;
        /* Spin a while on the count left (each arrival restarts the spin),
         * then sleep until the last worker wakes us. */
        if (spin_while_equal(&p->pending, left) != left)
            continue;
        atomic_store(&p->caller_sleeping, 1); /* seq_cst: pairs with the last worker */
        left = atomic_load(&p->pending);
        if (left != 0)
            futex_wait(&p->pending, left);
        atomic_store_explicit(&p->caller_sleeping, 0, memory_order_relaxed);
    }
}

void nn_pool_barrier(nn_pool *p)
{
    int nth = p->n_threads;
    if (nth == 1)
        return;
    uint32_t phase = atomic_load_explicit(&p->bar_phase, memory_order_relaxed);
    if (atomic_fetch_add_explicit(&p->bar_count, 1, memory_order_acq_rel) == nth - 1) {
        /* Last to arrive: reset for the next barrier, then open this one.
         * The release on the phase orders the reset (and every thread's work
         * before the barrier, gathered by the acq_rel count) before it. */
        atomic_store_explicit(&p->bar_count, 0, memory_order_relaxed);
        atomic_store_explicit(&p->bar_phase, phase + 1, memory_order_release);
        return;
    }
    spin s = {0, 0};
    while (atomic_load_explicit(&p->bar_phase, memory_order_acquire) == phase)
        spin_step(&s, -1);
    spin_done(&s);
}
