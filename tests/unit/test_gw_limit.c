/*
 * Unit tests for gw_limit: fixed and sliding windows (boundaries, retry
 * values, the "never more than limit in any window" guarantee), identity,
 * all-or-none multi-rule acquires, reservations and settle, reclamation of
 * idle counters, exactness under real threads, and an uncontended timing
 * (printed, not asserted).
 *
 * Time is passed in: S(x) is x seconds in nanoseconds. Tests start at a
 * large origin so that window arithmetic near 0 is not what is tested.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gateway/gw_limit.h"

#define S(x) ((uint64_t)((x) * 1e9))
#define T0 S(1440000) /* a multiple of every window used below (LCM of 3600, 64, 2.5) */

static gw_limit_rule rule(const char *key, gw_limit_unit unit, double limit, double window_s,
                          bool sliding)
{
    gw_limit_rule r;
    memset(&r, 0, sizeof r);
    snprintf(r.key, sizeof r.key, "%s", key);
    r.unit = unit;
    r.limit = limit;
    r.window_s = window_s;
    r.sliding = sliding;
    return r;
}

static int acq1(gw_limiter *l, const gw_limit_rule *r, double amount, uint64_t now,
                double *retry)
{
    gw_limit_ticket t;
    size_t which = 99;
    double ra = -1;
    int rc = gw_limit_acquire(l, r, &amount, 1, now, &t, &ra, &which);
    if (rc == 1)
        cr_assert_eq(which, 0);
    if (retry)
        *retry = ra;
    return rc;
}

/* ---- fixed windows ------------------------------------------------------ */

Test(gw_limit, fixed_window_counts_and_retry_after)
{
    gw_limiter *l = gw_limiter_new(100);
    gw_limit_rule r = rule("acct/gw/user:alice", GW_LIMIT_REQUESTS, 3, 10, false);
    uint64_t now = T0 + S(12.5); /* window [T0+10, T0+20) */
    double retry = 0;
    for (int i = 0; i < 3; i++)
        cr_assert_eq(acq1(l, &r, 1, now, NULL), 0);
    cr_expect_eq(gw_limit_remaining(l, &r, now), 0);
    cr_assert_eq(acq1(l, &r, 1, now, &retry), 1);
    cr_expect_eq(retry, 8, "7.5 s to the window's end, rounded up: got %g", retry);
    cr_expect_eq(gw_limit_reset_s(l, &r, now), 8);
    cr_assert_eq(acq1(l, &r, 1, T0 + S(19.999), &retry), 1);
    cr_expect_eq(retry, 1, "a few ms left still answers at least 1 s");
    /* The next window starts empty. */
    cr_assert_eq(acq1(l, &r, 1, T0 + S(20), NULL), 0);
    cr_expect_eq(gw_limit_remaining(l, &r, T0 + S(20)), 2);
    gw_limiter_free(l);
}

Test(gw_limit, amount_over_limit_waits_a_window)
{
    gw_limiter *l = gw_limiter_new(100);
    gw_limit_rule r = rule("k", GW_LIMIT_TOKENS, 100, 2.5, false);
    double retry = 0;
    cr_assert_eq(acq1(l, &r, 101, T0, &retry), 1);
    cr_expect_eq(retry, 3, "ceil(window_s), got %g", retry);
    r.sliding = true;
    cr_assert_eq(acq1(l, &r, 1000, T0, &retry), 1);
    cr_expect_eq(retry, 3);
    /* Exactly the limit fits into an empty window. */
    cr_assert_eq(acq1(l, &r, 100, T0, NULL), 0);
    gw_limiter_free(l);
}

Test(gw_limit, identity_is_key_unit_window_and_kind_not_limit)
{
    gw_limiter *l = gw_limiter_new(100);
    gw_limit_rule a = rule("k", GW_LIMIT_REQUESTS, 2, 60, false);
    cr_assert_eq(acq1(l, &a, 2, T0, NULL), 0);
    cr_assert_eq(acq1(l, &a, 1, T0, NULL), 1);

    gw_limit_rule other_unit = a;
    other_unit.unit = GW_LIMIT_TOKENS;
    cr_expect_eq(acq1(l, &other_unit, 2, T0, NULL), 0, "another unit is another counter");
    gw_limit_rule other_window = a;
    other_window.window_s = 3600;
    cr_expect_eq(acq1(l, &other_window, 2, T0, NULL), 0, "another window is another counter");
    gw_limit_rule sliding = a;
    sliding.sliding = true;
    cr_expect_eq(acq1(l, &sliding, 2, T0, NULL), 0, "sliding is another counter");
    gw_limit_rule other_key = a;
    other_key.key[0] = 'K';
    cr_expect_eq(acq1(l, &other_key, 2, T0, NULL), 0);

    gw_limit_rule raised = a;
    raised.limit = 5; /* a reload raising the limit keeps the count */
    cr_expect_eq(gw_limit_remaining(l, &raised, T0), 3);
    cr_expect_eq(acq1(l, &raised, 3, T0, NULL), 0);
    cr_expect_eq(acq1(l, &raised, 1, T0, NULL), 1);
    cr_expect_eq(gw_limiter_count(l), 5);
    gw_limiter_free(l);
}

Test(gw_limit, multi_rule_is_all_or_none)
{
    gw_limiter *l = gw_limiter_new(100);
    gw_limit_rule rs[3] = {
        rule("gw", GW_LIMIT_REQUESTS, 10, 60, false),
        rule("gw/user:bob", GW_LIMIT_REQUESTS, 2, 60, true),
        rule("gw/user:bob", GW_LIMIT_TOKENS, 1000, 60, false),
    };
    double amounts[3] = {1, 1, 300};
    gw_limit_ticket t;
    double retry = 0;
    size_t which = 99;
    cr_assert_eq(gw_limit_acquire(l, rs, amounts, 3, T0 + S(1), &t, &retry, &which), 0);
    cr_expect_eq(t.n, 3);
    cr_assert_eq(gw_limit_acquire(l, rs, amounts, 3, T0 + S(1), &t, &retry, &which), 0);
    /* bob's request rule is full now: nothing else may be charged either. */
    cr_assert_eq(gw_limit_acquire(l, rs, amounts, 3, T0 + S(1), &t, &retry, &which), 1);
    cr_expect_eq(which, 1);
    cr_expect_eq(gw_limit_remaining(l, &rs[0], T0 + S(1)), 8);
    cr_expect_eq(gw_limit_remaining(l, &rs[2], T0 + S(1)), 400);
    /* Tokens would be refused too: the longest wait wins. */
    amounts[2] = 500;
    cr_assert_eq(gw_limit_acquire(l, rs, amounts, 3, T0 + S(1), &t, &retry, &which), 1);
    /* The token window ends in 59 s; bob's requests, charged in the sliding
     * sub-bucket [T0+0.9375, T0+1.875), leave the window 65 sub-buckets
     * after it began: T0+61.875, 60.875 s away. */
    cr_expect_eq(which, 1);
    cr_expect_eq(retry, 61, "got %g", retry);
    gw_limiter_free(l);
}

Test(gw_limit, same_counter_twice_in_one_call_is_checked_on_the_sum)
{
    gw_limiter *l = gw_limiter_new(100);
    gw_limit_rule rs[2] = {rule("k", GW_LIMIT_REQUESTS, 3, 60, false),
                           rule("k", GW_LIMIT_REQUESTS, 3, 60, false)};
    double amounts[2] = {1, 1};
    gw_limit_ticket t;
    cr_assert_eq(gw_limit_acquire(l, rs, amounts, 2, T0, &t, NULL, NULL), 0);
    cr_assert_eq(gw_limit_acquire(l, rs, amounts, 2, T0, &t, NULL, NULL), 1);
    cr_expect_eq(gw_limit_remaining(l, &rs[0], T0), 1);
    cr_expect_eq(gw_limiter_count(l), 1);
    gw_limiter_free(l);
}

Test(gw_limit, bad_arguments)
{
    gw_limiter *l = gw_limiter_new(100);
    cr_expect_null(gw_limiter_new(0));
    gw_limit_rule ok = rule("k", GW_LIMIT_REQUESTS, 1, 1, false);
    gw_limit_rule rs[GW_LIMIT_MAX_RULES + 1];
    double amounts[GW_LIMIT_MAX_RULES + 1];
    for (size_t i = 0; i < GW_LIMIT_MAX_RULES + 1; i++) {
        rs[i] = ok;
        amounts[i] = 0;
    }
    gw_limit_ticket t;
    cr_expect_eq(gw_limit_acquire(l, rs, amounts, GW_LIMIT_MAX_RULES + 1, T0, &t, NULL, NULL), -1);
    cr_expect_eq(gw_limit_acquire(NULL, rs, amounts, 1, T0, &t, NULL, NULL), -1);
    cr_expect_eq(gw_limit_acquire(l, NULL, amounts, 1, T0, &t, NULL, NULL), -1);
    cr_expect_eq(gw_limit_acquire(l, rs, amounts, 0, T0, &t, NULL, NULL), 0, "no rules: allowed");
    cr_expect_eq(t.n, 0);

    const char *cases[] = {"limit 0",          "window 0", "NaN amount",  "negative amount",
                           "unterminated key", "bad unit", "huge window", "inf limit"};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        gw_limit_rule r = ok;
        double a = 1;
        switch (i) {
        case 0: r.limit = 0; break;
        case 1: r.window_s = 0; break;
        case 2: a = NAN; break;
        case 3: a = -1; break;
        case 4: memset(r.key, 'x', sizeof r.key); break;
        case 5: r.unit = (gw_limit_unit)7; break;
        case 6: r.window_s = 1e12; break;
        case 7: r.limit = INFINITY; break;
        }
        cr_expect_eq(gw_limit_acquire(l, &r, &a, 1, T0, &t, NULL, NULL), -1, "%s", cases[i]);
        if (a == 1)
            cr_expect_eq(gw_limit_remaining(l, &r, T0), 0, "%s", cases[i]);
    }
    cr_expect_eq(gw_limiter_count(l), 0, "nothing was created by refused calls");
    gw_limiter_free(l);
}

/* ---- sliding windows ---------------------------------------------------- */

Test(gw_limit, sliding_window_at_bucket_boundaries)
{
    gw_limiter *l = gw_limiter_new(100);
    /* 64 s window: sub-buckets of exactly 1 s. */
    gw_limit_rule r = rule("s", GW_LIMIT_REQUESTS, 10, 64, true);
    double retry = 0;
    cr_assert_eq(acq1(l, &r, 10, T0 + S(0.5), NULL), 0); /* sub-bucket 0 */
    cr_assert_eq(acq1(l, &r, 1, T0 + S(64.9), &retry), 1, "sub-bucket 64: 0 still counts");
    cr_expect_eq(retry, 1, "frees at 65.0, 0.1 s away: got %g", retry);
    cr_expect_eq(gw_limit_remaining(l, &r, T0 + S(64.999999)), 0);
    /* Charged at 0.5, it counts until 65.0: at least a whole window. */
    cr_expect_eq(gw_limit_remaining(l, &r, T0 + S(65)), 10);
    cr_assert_eq(acq1(l, &r, 10, T0 + S(65), NULL), 0);

    /* Partial expiry: 4 at 70.2 (bucket 70), 6 at 80.7 (bucket 80). */
    gw_limit_rule q = rule("q", GW_LIMIT_TOKENS, 10, 64, true);
    cr_assert_eq(acq1(l, &q, 4, T0 + S(70.2), NULL), 0);
    cr_assert_eq(acq1(l, &q, 6, T0 + S(80.7), NULL), 0);
    cr_assert_eq(acq1(l, &q, 3, T0 + S(100), &retry), 1);
    cr_expect_eq(retry, 35, "bucket 70 leaves when bucket 135 starts: got %g", retry);
    cr_expect_eq(gw_limit_reset_s(l, &q, T0 + S(100)), 35);
    cr_expect_eq(gw_limit_remaining(l, &q, T0 + S(134.99)), 0);
    cr_expect_eq(gw_limit_remaining(l, &q, T0 + S(135)), 4);
    cr_assert_eq(acq1(l, &q, 7, T0 + S(135), &retry), 1, "6 still count until 145");
    cr_expect_eq(retry, 10);
    cr_assert_eq(acq1(l, &q, 4, T0 + S(135), NULL), 0);
    cr_expect_eq(gw_limit_remaining(l, &q, T0 + S(145)), 6);
    gw_limiter_free(l);
}

Test(gw_limit, sliding_never_more_than_limit_in_any_window)
{
    gw_limiter *l = gw_limiter_new(100);
    const double window = 10, limit = 20;
    gw_limit_rule r = rule("guarantee", GW_LIMIT_REQUESTS, limit, window, true);
    enum { N = 20000 };
    uint64_t *admitted = malloc(N * sizeof *admitted);
    size_t n_adm = 0;
    uint64_t now = T0 + 12345;
    unsigned seed = 7;
    for (int i = 0; i < N; i++) {
        now += (uint64_t)(rand_r(&seed) % 400000000u); /* 0..0.4 s apart */
        if (acq1(l, &r, 1, now, NULL) == 0)
            admitted[n_adm++] = now;
    }
    cr_assert_gt(n_adm, N / 10);
    /* Any half-open interval (t - window, t] holds at most `limit`. */
    size_t lo = 0;
    for (size_t hi = 0; hi < n_adm; hi++) {
        while (admitted[hi] - admitted[lo] >= S(window))
            lo++;
        cr_assert_leq(hi - lo + 1, (size_t)limit, "%zu admitted within %g s", hi - lo + 1, window);
    }
    /* And it is not much stricter: about limit per window on average
     * (each unit counts at most one sub-bucket longer than the window). */
    double per_window = (double)n_adm / ((double)(now - T0) / S(window));
    cr_expect_gt(per_window, limit * 0.9, "%g admitted per window", per_window);
    free(admitted);
    gw_limiter_free(l);
}

Test(gw_limit, window_not_divisible_by_64)
{
    gw_limiter *l = gw_limiter_new(100);
    gw_limit_rule r = rule("odd", GW_LIMIT_REQUESTS, 1, 1.000000001, true);
    cr_assert_eq(acq1(l, &r, 1, T0, NULL), 0);
    cr_expect_eq(acq1(l, &r, 1, T0 + S(1.000000001) - 1, NULL), 1, "inside the window");
    /* Sub-buckets of ceil(1000000001 / 64) ns: free within 1/64 s more. */
    cr_expect_eq(acq1(l, &r, 1, T0 + S(1.000000001) + S(1.0 / 64) + 100, NULL), 0);
    gw_limiter_free(l);
}

Test(gw_limit, time_never_goes_back_for_a_counter)
{
    gw_limiter *l = gw_limiter_new(100);
    gw_limit_rule r = rule("clock", GW_LIMIT_REQUESTS, 1, 1, false);
    cr_assert_eq(acq1(l, &r, 1, T0 + S(1.2), NULL), 0);
    /* A thread that read the clock earlier (still in the last window) is
     * counted in the counter's current window, not a past one. */
    double retry = 0;
    cr_assert_eq(acq1(l, &r, 1, T0 + S(0.9), &retry), 1);
    cr_expect_eq(retry, 2, "2.0 - 0.9 = 1.1 s, rounded up");
    gw_limiter_free(l);
}

/* ---- reservations -------------------------------------------------------- */

Test(gw_limit, settle_returns_unused_reservation)
{
    gw_limiter *l = gw_limiter_new(100);
    gw_limit_rule r = rule("tok", GW_LIMIT_TOKENS, 1000, 60, false);
    double a = 100;
    gw_limit_ticket t;
    cr_assert_eq(gw_limit_acquire(l, &r, &a, 1, T0 + S(1), &t, NULL, NULL), 0);
    cr_expect_eq(gw_limit_remaining(l, &r, T0 + S(1)), 900);
    double actual = 30;
    gw_limit_settle(l, &t, &actual, T0 + S(2));
    cr_expect_eq(gw_limit_remaining(l, &r, T0 + S(2)), 970, "70 available again");
    gw_limit_settle(l, &t, &actual, T0 + S(2));
    actual = 0;
    gw_limit_settle(l, &t, &actual, T0 + S(2));
    cr_expect_eq(gw_limit_remaining(l, &r, T0 + S(2)), 970, "a ticket settles once");

    /* More than reserved is charged too (the stream really used it). */
    cr_assert_eq(gw_limit_acquire(l, &r, &a, 1, T0 + S(3), &t, NULL, NULL), 0);
    actual = 250;
    gw_limit_settle(l, &t, &actual, T0 + S(3));
    cr_expect_eq(gw_limit_remaining(l, &r, T0 + S(3)), 720);

    /* actual == reserved and actual == NULL change nothing. */
    cr_assert_eq(gw_limit_acquire(l, &r, &a, 1, T0 + S(3), &t, NULL, NULL), 0);
    gw_limit_settle(l, &t, &a, T0 + S(3));
    cr_assert_eq(gw_limit_acquire(l, &r, &a, 1, T0 + S(3), &t, NULL, NULL), 0);
    gw_limit_settle(l, &t, NULL, T0 + S(3));
    cr_expect_eq(gw_limit_remaining(l, &r, T0 + S(3)), 520);
    gw_limiter_free(l);
}

Test(gw_limit, settle_after_the_window_passed_changes_nothing_current)
{
    gw_limiter *l = gw_limiter_new(100);
    gw_limit_rule r = rule("tok", GW_LIMIT_TOKENS, 1000, 60, false);
    double a = 100, actual = 30;
    gw_limit_ticket t, t2;
    cr_assert_eq(gw_limit_acquire(l, &r, &a, 1, T0 + S(59), &t, NULL, NULL), 0);
    cr_assert_eq(gw_limit_acquire(l, &r, &a, 1, T0 + S(61), &t2, NULL, NULL), 0);
    gw_limit_settle(l, &t, &actual, T0 + S(62));
    cr_expect_eq(gw_limit_remaining(l, &r, T0 + S(62)), 900,
                 "the refund belongs to the window that passed");
    gw_limit_settle(l, &t2, &actual, T0 + S(62));
    cr_expect_eq(gw_limit_remaining(l, &r, T0 + S(62)), 970);

    /* Sliding: the settle lands in the sub-bucket charged while it counts. */
    gw_limit_rule s = rule("stok", GW_LIMIT_TOKENS, 1000, 64, true);
    cr_assert_eq(gw_limit_acquire(l, &s, &a, 1, T0 + S(10.5), &t, NULL, NULL), 0);
    cr_assert_eq(gw_limit_acquire(l, &s, &a, 1, T0 + S(20.5), &t2, NULL, NULL), 0);
    gw_limit_settle(l, &t2, &actual, T0 + S(70));
    cr_expect_eq(gw_limit_remaining(l, &s, T0 + S(70)), 870);
    gw_limit_settle(l, &t, &actual, T0 + S(75)); /* sub-bucket 10 left at 75 */
    cr_expect_eq(gw_limit_remaining(l, &s, T0 + S(75)), 970);
    cr_expect_eq(gw_limit_remaining(l, &s, T0 + S(85)), 1000);
    gw_limiter_free(l);
}

Test(gw_limit, settle_after_the_counter_was_reclaimed)
{
    gw_limiter *l = gw_limiter_new(100);
    gw_limit_rule r = rule("gone", GW_LIMIT_TOKENS, 1000, 1, false);
    double a = 100, actual = 0;
    gw_limit_ticket t;
    cr_assert_eq(gw_limit_acquire(l, &r, &a, 1, T0, &t, NULL, NULL), 0);
    cr_assert_eq(gw_limiter_sweep(l, T0 + S(5)), 1);
    cr_assert_eq(gw_limit_acquire(l, &r, &a, 1, T0 + S(5), NULL, NULL, NULL), 0);
    gw_limit_settle(l, &t, &actual, T0 + S(5)); /* the new incarnation is not touched */
    cr_expect_eq(gw_limit_remaining(l, &r, T0 + S(5)), 900);
    gw_limiter_free(l);
}

/* ---- memory ---------------------------------------------------------------- */

Test(gw_limit, idle_counters_are_reclaimed)
{
    gw_limiter *l = gw_limiter_new(2000);
    char key[64];
    /* Days of distinct keys, squeezed: 300 "seconds", 500 new keys each,
     * 1 s fixed and 2 s sliding windows. The table never fills. */
    size_t peak = 0;
    for (int sec = 0; sec < 300; sec++) {
        for (int i = 0; i < 500; i++) {
            snprintf(key, sizeof key, "user:%d:%d", sec, i);
            gw_limit_rule r = rule(key, GW_LIMIT_REQUESTS, 5, (i & 1) ? 2 : 1, i & 1);
            uint64_t now = T0 + S(sec) + (uint64_t)i * 1000000;
            cr_assert_eq(acq1(l, &r, 1, now, NULL), 0, "sec %d key %d", sec, i);
        }
        size_t n = gw_limiter_count(l);
        if (n > peak)
            peak = n;
    }
    cr_expect_leq(peak, 2000);
    cr_expect_gt(gw_limiter_count(l), 500);
    size_t slots_busy = gw_limiter_index_slots(l);
    /* A sweep reclaims everything once all windows passed, and the index
     * shrinks back. */
    cr_expect_gt(gw_limiter_sweep(l, T0 + S(400)), 500);
    cr_expect_eq(gw_limiter_count(l), 0);
    size_t slots_idle = gw_limiter_index_slots(l);
    cr_expect_lt(slots_idle, slots_busy, "index %zu -> %zu slots", slots_busy, slots_idle);
    cr_expect_eq(slots_idle, GW_LIMIT_SHARDS * 16, "back to the initial 16 slots a shard");
    gw_limiter_free(l);
}

Test(gw_limit, idle_counters_are_reclaimed_lazily)
{
    gw_limiter *l = gw_limiter_new(100000); /* never full: only the lazy path runs */
    char key[64];
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof key, "old:%d", i);
        gw_limit_rule r = rule(key, GW_LIMIT_REQUESTS, 5, 1, i & 1);
        cr_assert_eq(acq1(l, &r, 1, T0, NULL), 0);
    }
    cr_assert_eq(gw_limiter_count(l), 5000);
    /* Later traffic on other keys, with no sweep call, examines every shard
     * a few slots at a time and reclaims what is idle. */
    for (int i = 0; i < 20000; i++) {
        snprintf(key, sizeof key, "later:%d", i % 1000);
        gw_limit_rule r = rule(key, GW_LIMIT_REQUESTS, 1e9, 1, false);
        cr_assert_eq(acq1(l, &r, 1, T0 + S(10), NULL), 0);
    }
    size_t after = gw_limiter_count(l);
    cr_expect_leq(after, 1100, "5000 idle + 1000 new counters: %zu still live", after);
    gw_limiter_free(l);
}

Test(gw_limit, full_table_refuses_then_recovers)
{
    gw_limiter *l = gw_limiter_new(100);
    char key[32];
    for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof key, "k%d", i);
        gw_limit_rule r = rule(key, GW_LIMIT_REQUESTS, 10, 1, false);
        cr_assert_eq(acq1(l, &r, 1, T0 + S(0.5), NULL), 0);
    }
    gw_limit_rule extra = rule("extra", GW_LIMIT_REQUESTS, 10, 1, false);
    cr_expect_eq(acq1(l, &extra, 1, T0 + S(0.6), NULL), -1, "table full: 503");
    gw_limit_rule k0 = rule("k0", GW_LIMIT_REQUESTS, 10, 1, false);
    cr_expect_eq(acq1(l, &k0, 1, T0 + S(0.6), NULL), 0, "existing keys still work");
    /* Once their window passed, the first acquire reclaims them. */
    cr_expect_eq(acq1(l, &extra, 1, T0 + S(1.1), NULL), 0);
    cr_expect_eq(gw_limiter_count(l), 1);
    gw_limiter_free(l);
}

/* ---- threads ---------------------------------------------------------------- */

#define THREADS 8

typedef struct hammer {
    gw_limiter *l;
    int id;
    int attempts;
    const gw_limit_rule *rules; /* shared rules; a per-thread one appended when per_thread */
    size_t n_rules;
    const double *amounts;
    bool per_thread;
    double per_thread_limit;
    _Atomic uint64_t *clock;    /* NULL: a fixed now */
    uint64_t step_ns;
    pthread_barrier_t *start;
    /* out */
    int admitted;
    int errors;                 /* acquire answered neither 0 nor 1 */
    uint64_t *slots;            /* ticket slot of rule 0 for each admission */
} hammer;

static gw_limit_rule per_thread_rule(int id, double limit)
{
    char key[32];
    snprintf(key, sizeof key, "thread:%d", id);
    return rule(key, GW_LIMIT_REQUESTS, limit, 60, false);
}

static void *hammer_main(void *arg)
{
    hammer *h = arg;
    gw_limit_rule rs[GW_LIMIT_MAX_RULES];
    double am[GW_LIMIT_MAX_RULES];
    memcpy(rs, h->rules, h->n_rules * sizeof rs[0]);
    memcpy(am, h->amounts, h->n_rules * sizeof am[0]);
    size_t n = h->n_rules;
    if (h->per_thread) {
        rs[n] = per_thread_rule(h->id, h->per_thread_limit);
        am[n++] = 1;
    }
    pthread_barrier_wait(h->start);
    for (int i = 0; i < h->attempts; i++) {
        uint64_t now = h->clock ? atomic_fetch_add(h->clock, h->step_ns) : T0 + S(1);
        gw_limit_ticket t;
        int rc = gw_limit_acquire(h->l, rs, am, n, now, &t, NULL, NULL);
        if (rc != 0 && rc != 1)
            h->errors++;
        if (rc == 0) {
            if (h->slots)
                h->slots[h->admitted] = t.res[0].slot;
            h->admitted++;
        }
    }
    return NULL;
}

static int run_hammer(gw_limiter *l, const gw_limit_rule *rules, const double *amounts, size_t n,
                      int attempts, bool per_thread, double per_thread_limit, hammer *hs)
{
    pthread_t th[THREADS];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, THREADS);
    int total = 0;
    for (int i = 0; i < THREADS; i++) {
        hs[i] = (hammer){.l = l, .id = i, .attempts = attempts, .rules = rules, .n_rules = n,
                         .amounts = amounts, .per_thread = per_thread,
                         .per_thread_limit = per_thread_limit, .start = &start};
        pthread_create(&th[i], NULL, hammer_main, &hs[i]);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        cr_expect_eq(hs[i].errors, 0);
        total += hs[i].admitted;
    }
    pthread_barrier_destroy(&start);
    return total;
}

Test(gw_limit, threads_exact_requests_fixed_and_sliding)
{
    for (int sliding = 0; sliding < 2; sliding++) {
        gw_limiter *l = gw_limiter_new(1000);
        gw_limit_rule r = rule("hot", GW_LIMIT_REQUESTS, 5000, 60, sliding);
        double one = 1;
        hammer hs[THREADS];
        int total = run_hammer(l, &r, &one, 1, 2000, false, 0, hs);
        cr_expect_eq(total, 5000, "%s: %d admitted of 16000 attempts, limit 5000",
                     sliding ? "sliding" : "fixed", total);
        cr_expect_eq(gw_limit_remaining(l, &r, T0 + S(1)), 0);
        gw_limiter_free(l);
    }
}

Test(gw_limit, threads_exact_tokens)
{
    gw_limiter *l = gw_limiter_new(1000);
    gw_limit_rule r = rule("tokens", GW_LIMIT_TOKENS, 7000, 60, true);
    double seven = 7;
    hammer hs[THREADS];
    int total = run_hammer(l, &r, &seven, 1, 500, false, 0, hs);
    cr_expect_eq(total, 1000, "%d admitted of 7-token requests under 7000", total);
    gw_limiter_free(l);
}

Test(gw_limit, threads_exact_with_several_rules_per_call)
{
    gw_limiter *l = gw_limiter_new(1000);
    gw_limit_rule rs[2] = {rule("global", GW_LIMIT_REQUESTS, 3000, 60, false),
                           rule("global", GW_LIMIT_TOKENS, 1e9, 60, true)};
    double amounts[2] = {1, 3};
    hammer hs[THREADS];
    /* 8 threads x 2000 attempts, each thread also limited to 500: the
     * global limit (3000) binds before the per-thread ones (4000). */
    int total = run_hammer(l, rs, amounts, 2, 2000, true, 500, hs);
    cr_expect_eq(total, 3000, "%d admitted", total);
    cr_expect_eq(gw_limit_remaining(l, &rs[1], T0 + S(1)), 1e9 - 3 * 3000,
                 "tokens charged exactly for the admitted requests");
    for (int i = 0; i < THREADS; i++) {
        gw_limit_rule pt = per_thread_rule(i, 500);
        cr_expect_leq(hs[i].admitted, 500);
        /* All or none: a request the global rule refused charged nothing. */
        cr_expect_eq(gw_limit_remaining(l, &pt, T0 + S(1)), 500 - hs[i].admitted,
                     "thread %d: %d admitted, counter says %g", i, hs[i].admitted,
                     500 - gw_limit_remaining(l, &pt, T0 + S(1)));
    }
    gw_limiter_free(l);
}

Test(gw_limit, threads_exact_per_window_while_time_moves)
{
    gw_limiter *l = gw_limiter_new(1000);
    const double limit = 300;
    gw_limit_rule r = rule("moving", GW_LIMIT_REQUESTS, limit, 1, false);
    double one = 1;
    _Atomic uint64_t clock = T0;
    hammer hs[THREADS];
    pthread_t th[THREADS];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, THREADS);
    const int attempts = 3000;
    for (int i = 0; i < THREADS; i++) {
        /* 24,000 attempts over 24 windows: about 3x the limit in each. */
        hs[i] = (hammer){.l = l, .id = i, .attempts = attempts, .rules = &r, .n_rules = 1,
                         .amounts = &one, .clock = &clock, .step_ns = S(0.001), .start = &start,
                         .slots = malloc(attempts * sizeof(uint64_t))};
        pthread_create(&th[i], NULL, hammer_main, &hs[i]);
    }
    int per_window[32] = {0};
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        cr_expect_eq(hs[i].errors, 0);
        for (int j = 0; j < hs[i].admitted; j++) {
            uint64_t w = hs[i].slots[j] - T0 / S(1);
            cr_assert_lt(w, 32);
            per_window[w]++;
        }
        free(hs[i].slots);
    }
    pthread_barrier_destroy(&start);
    for (int w = 0; w < 24; w++)
        cr_expect_eq(per_window[w], (int)limit, "window %d admitted %d", w, per_window[w]);
    gw_limiter_free(l);
}

/* ---- timing ------------------------------------------------------------------ */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

Test(gw_limit, uncontended_acquire_settle_timing)
{
    gw_limiter *l = gw_limiter_new(1000);
    gw_limit_rule rs[2] = {rule("local/default/user:alice", GW_LIMIT_REQUESTS, 1e12, 60, false),
                           rule("local/default/user:alice", GW_LIMIT_TOKENS, 1e12, 60, true)};
    double amounts[2] = {1, 300}, actual[2] = {1, 120};
    const int iters = 200000;
    for (size_t n = 1; n <= 2; n++) {
        double t0 = now_s();
        for (int i = 0; i < iters; i++) {
            gw_limit_ticket t;
            uint64_t now = T0 + (uint64_t)i * 1000;
            cr_assert_eq(gw_limit_acquire(l, rs, amounts, n, now, &t, NULL, NULL), 0);
            gw_limit_settle(l, &t, actual, now);
        }
        double ns = (now_s() - t0) / iters * 1e9;
        printf("gw_limit: acquire+settle, %zu rule(s), uncontended: %.0f ns\n", n, ns);
        cr_log_info("gw_limit: acquire+settle, %zu rule(s), uncontended: %.0f ns", n, ns);
    }
    gw_limiter_free(l);
}
