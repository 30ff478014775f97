/*
 * nn_pool: a fixed pool of compute threads for one model instance, built for
 * many short parallel sections (a forward pass runs hundreds per token).
 *
 * Model: nn_pool_run(pool, fn, ctx) calls fn(ctx, ith, nth) once on each of
 * the nth threads of the pool, the caller's thread being ith == 0, and
 * returns when all have returned. Inside fn, nn_pool_barrier(pool) makes all
 * nth threads wait for each other, so a whole forward pass can be one run
 * with barriers between its steps (no thread wake-up per matmul).
 *
 * Waiting: workers spin briefly on an atomic generation counter after each
 * run (sub-microsecond hand-off for back-to-back runs), then sleep on a futex,
 * so an idle model costs no CPU. The barrier spins (with a pause
 * instruction) and falls back to yielding.
 *
 * Threading: one nn_pool_run at a time per pool (the pool belongs to one
 * model's scheduler thread); fn must call nn_pool_barrier the same number of
 * times on every thread. nn_pool_free joins the workers.
 *
 * Errors: nn_pool_new returns NULL when a thread cannot be started (nothing
 * is left running).
 */
#ifndef NN_POOL_H
#define NN_POOL_H

typedef struct nn_pool nn_pool;
typedef void (*nn_task_fn)(void *ctx, int ith, int nth);

/* n_threads >= 1 is the total including the caller (n_threads - 1 workers
 * are started). name prefixes the worker thread names ("llm" -> "llm-w1"). */
nn_pool *nn_pool_new(int n_threads, const char *name);
void nn_pool_free(nn_pool *pool); /* NULL is a no-op */
int nn_pool_size(const nn_pool *pool);

void nn_pool_run(nn_pool *pool, nn_task_fn fn, void *ctx);
/* Only from inside fn, on every thread of the run. */
void nn_pool_barrier(nn_pool *pool);

/* The share [*lo, *hi) of n items for thread ith of nth: whole units of
 * align items (the very last unit may be short), shares differing by at most
 * one unit, earlier threads taking the larger ones. Shares are disjoint and
 * cover [0, n); a share may be empty. */
void nn_split(long n, int ith, int nth, long align, long *lo, long *hi);

#endif
