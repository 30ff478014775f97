/*
 * Unit tests for plugins/llama/llm_sample: greedy, penalties, temperature,
 * top-k, top-p and seeded draws.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "llm_sample.h"

static llm_sampling base(void)
{
    return (llm_sampling){.temperature = 1.0f, .top_k = 0, .top_p = 1.0f,
                          .repetition_penalty = 1.0f, .has_seed = true, .seed = 42};
}

static uint64_t lcg(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return *s >> 33;
}

static void random_logits(float *l, int n, uint64_t seed, float scale)
{
    for (int i = 0; i < n; i++)
        l[i] = scale * ((float)(lcg(&seed) % 20001) / 10000.0f - 1.0f);
}

Test(llm_sample, greedy_takes_the_first_maximum)
{
    llm_sampling p = base();
    p.temperature = 0.0f;
    cr_assert(llm_sampling_is_greedy(&p));
    llm_sampler *s = llm_sampler_new(&p, 5);
    cr_assert_not_null(s);
    float l[5] = {0.5f, 2.0f, -1.0f, 2.0f, 1.9f};
    cr_assert_eq(llm_sampler_sample(s, l), 1);
    llm_sampler_free(s);
}

Test(llm_sample, top_k_one_is_greedy_at_any_temperature)
{
    enum { V = 5000 };
    float *l = malloc(V * sizeof *l), *c = malloc(V * sizeof *c);
    for (int it = 0; it < 50; it++) {
        random_logits(l, V, (uint64_t)it + 1, 5.0f);
        int best = 0;
        for (int i = 1; i < V; i++)
            if (l[i] > l[best])
                best = i;
        llm_sampling p = base();
        p.temperature = 2.0f;
        p.top_k = 1;
        p.seed = (uint64_t)it;
        llm_sampler *s = llm_sampler_new(&p, V);
        memcpy(c, l, V * sizeof *l);
        cr_assert_eq(llm_sampler_sample(s, c), best);
        llm_sampler_free(s);
    }
    free(l);
    free(c);
}

Test(llm_sample, same_seed_same_tokens_other_seed_other_tokens)
{
    enum { V = 1000 };
    float l[V], c[V];
    random_logits(l, V, 7, 1.0f);
    int a[64], b[64], d[64];
    int *out[3] = {a, b, d};
    uint64_t seeds[3] = {99, 99, 100};
    for (int k = 0; k < 3; k++) {
        llm_sampling p = base();
        p.seed = seeds[k];
        llm_sampler *s = llm_sampler_new(&p, V);
        for (int i = 0; i < 64; i++) {
            memcpy(c, l, sizeof l);
            out[k][i] = llm_sampler_sample(s, c);
        }
        llm_sampler_free(s);
    }
    cr_assert_eq(memcmp(a, b, sizeof a), 0, "same seed, different draws");
    cr_assert_neq(memcmp(a, d, sizeof a), 0, "different seeds, same 64 draws");
}

Test(llm_sample, draws_follow_the_distribution)
{
    /* Probabilities 0.1, 0.2, 0.3, 0.4 at temperature 1. */
    float base_l[4] = {logf(0.1f), logf(0.2f), logf(0.3f), logf(0.4f)};
    llm_sampling p = base();
    llm_sampler *s = llm_sampler_new(&p, 4);
    int counts[4] = {0};
    const int N = 40000;
    for (int i = 0; i < N; i++) {
        float l[4];
        memcpy(l, base_l, sizeof l);
        int t = llm_sampler_sample(s, l);
        cr_assert(t >= 0 && t < 4);
        counts[t]++;
    }
    for (int i = 0; i < 4; i++) {
        double f = (double)counts[i] / N, want = 0.1 * (i + 1);
        cr_assert(fabs(f - want) < 0.015, "token %d: frequency %.4f, probability %.2f", i, f, want);
    }
    llm_sampler_free(s);
}

Test(llm_sample, temperature_sharpens)
{
    float base_l[2] = {0.0f, 1.0f}; /* p(1) = 0.731 at T = 1 */
    llm_sampling p = base();
    p.temperature = 0.25f;          /* p(1) = 1/(1+e^-4) = 0.982 */
    llm_sampler *s = llm_sampler_new(&p, 2);
    int ones = 0;
    for (int i = 0; i < 20000; i++) {
        float l[2] = {base_l[0], base_l[1]};
        ones += llm_sampler_sample(s, l);
    }
    cr_assert(fabs(ones / 20000.0 - 0.982) < 0.01, "p(1) = %.4f", ones / 20000.0);
    llm_sampler_free(s);
}

static const double *g_pr;

static int by_prob_desc(const void *a, const void *b)
{
    double x = g_pr[*(const int *)a], y = g_pr[*(const int *)b];
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Every drawn token must be in the nucleus computed by brute force: sort by
 * probability, keep the prefix whose mass reaches top_p. */
Test(llm_sample, top_p_draws_only_from_the_nucleus)
{
    enum { V = 20000 };
    float *l = malloc(V * sizeof *l), *c = malloc(V * sizeof *c);
    int *order = malloc(V * sizeof *order);
    char *in = malloc(V);
    const float top_ps[] = {0.05f, 0.3f, 0.9f, 0.999f};
    for (int it = 0; it < 12; it++) {
        random_logits(l, V, (uint64_t)it * 7 + 3, it % 2 ? 12.0f : 3.0f);
        float tp = top_ps[it % 4];
        /* brute force */
        double mx = l[0];
        for (int i = 1; i < V; i++)
            mx = l[i] > mx ? l[i] : mx;
        double *pr = malloc(V * sizeof *pr), z = 0;
        for (int i = 0; i < V; i++)
            z += pr[i] = exp(l[i] - mx);
        for (int i = 0; i < V; i++)
            order[i] = i;
        memset(in, 0, V);
        g_pr = pr;
        qsort(order, V, sizeof *order, by_prob_desc);
        double acc = 0;
        for (int i = 0; i < V; i++) {
            in[order[i]] = 1;
            acc += pr[order[i]] / z;
            if (acc >= tp)
                break;
        }
        llm_sampling p = base();
        p.top_p = tp;
        p.seed = (uint64_t)it;
        llm_sampler *s = llm_sampler_new(&p, V);
        for (int d = 0; d < 300; d++) {
            memcpy(c, l, V * sizeof *l);
            int t = llm_sampler_sample(s, c);
            cr_assert(in[t], "iter %d top_p %.3f: token %d (p=%.3g) is outside the nucleus", it,
                      tp, t, pr[t] / z);
        }
        llm_sampler_free(s);
        free(pr);
    }
    free(l);
    free(c);
    free(order);
    free(in);
}

Test(llm_sample, tiny_top_p_keeps_only_the_best_token)
{
    enum { V = 3000 };
    float l[V], c[V];
    random_logits(l, V, 5, 4.0f);
    int best = 0;
    for (int i = 1; i < V; i++)
        if (l[i] > l[best])
            best = i;
    llm_sampling p = base();
    p.top_p = 1e-6f;
    llm_sampler *s = llm_sampler_new(&p, V);
    for (int i = 0; i < 50; i++) {
        memcpy(c, l, sizeof l);
        cr_assert_eq(llm_sampler_sample(s, c), best);
    }
    llm_sampler_free(s);
}

Test(llm_sample, top_k_limits_the_candidates)
{
    enum { V = 1000 };
    float l[V], c[V];
    random_logits(l, V, 11, 0.5f); /* flat: without top_k anything could come */
    int idx[V];
    for (int i = 0; i < V; i++)
        idx[i] = i;
    for (int i = 0; i < 5; i++) /* indices of the 5 largest */
        for (int j = i + 1; j < V; j++)
            if (l[idx[j]] > l[idx[i]]) {
                int t = idx[i];
                idx[i] = idx[j];
                idx[j] = t;
            }
    llm_sampling p = base();
    p.top_k = 5;
    llm_sampler *s = llm_sampler_new(&p, V);
    int seen[5] = {0};
    for (int d = 0; d < 2000; d++) {
        memcpy(c, l, sizeof l);
        int t = llm_sampler_sample(s, c);
        int k = 0;
        while (k < 5 && idx[k] != t)
            k++;
        cr_assert(k < 5, "token %d is not among the top 5", t);
        seen[k] = 1;
    }
    for (int k = 0; k < 5; k++)
        cr_assert(seen[k], "top-5 token %d never drawn", k);
    llm_sampler_free(s);
}

Test(llm_sample, repetition_penalty_as_hf_defines_it)
{
    llm_sampling p = base();
    p.temperature = 0.0f;
    p.repetition_penalty = 2.0f;
    cr_assert_not(llm_sampling_is_greedy(&p));
    llm_sampler *s = llm_sampler_new(&p, 3);
    llm_sampler_accept(s, 0, false);
    llm_sampler_accept(s, 1, true);
    llm_sampler_accept(s, 1, true); /* counted once: a set, not a count */
    float l[3] = {2.0f, -2.0f, 1.5f};
    cr_assert_eq(llm_sampler_sample(s, l), 2);
    cr_assert_float_eq(l[0], 1.0f, 1e-6);
    cr_assert_float_eq(l[1], -4.0f, 1e-6);
    cr_assert_float_eq(l[2], 1.5f, 1e-6);
    llm_sampler_free(s);
}

Test(llm_sample, frequency_and_presence_penalties_as_openai_defines_them)
{
    llm_sampling p = base();
    p.temperature = 0.0f;
    p.frequency_penalty = 0.5f;
    p.presence_penalty = 0.25f;
    llm_sampler *s = llm_sampler_new(&p, 3);
    llm_sampler_accept(s, 2, false); /* prompt tokens do not count */
    llm_sampler_accept(s, 0, true);
    llm_sampler_accept(s, 0, true);
    llm_sampler_accept(s, 0, true);
    llm_sampler_accept(s, 1, true);
    float l[3] = {3.0f, 1.0f, 1.0f};
    int t = llm_sampler_sample(s, l);
    cr_assert_float_eq(l[0], 3.0f - 1.5f - 0.25f, 1e-6);
    cr_assert_float_eq(l[1], 1.0f - 0.5f - 0.25f, 1e-6);
    cr_assert_float_eq(l[2], 1.0f, 1e-6);
    cr_assert_eq(t, 0);
    llm_sampler_free(s);
}

Test(llm_sample, nan_and_infinite_logits_do_not_break_sampling)
{
    enum { V = 200 };
    float l[V];
    for (int i = 0; i < V; i++)
        l[i] = -INFINITY;
    l[17] = 3.0f;
    l[18] = NAN;
    llm_sampling p = base();
    p.top_p = 0.5f;
    llm_sampler *s = llm_sampler_new(&p, V);
    for (int i = 0; i < 20; i++) {
        float c[V];
        memcpy(c, l, sizeof l);
        int t = llm_sampler_sample(s, c);
        cr_assert(t >= 0 && t < V);
    }
    llm_sampler_free(s);
}

Test(llm_sample, invalid_parameters_are_refused)
{
    llm_sampling p = base();
    p.top_p = 0.0f;
    cr_assert_null(llm_sampler_new(&p, 10));
    p = base();
    p.repetition_penalty = 0.0f;
    cr_assert_null(llm_sampler_new(&p, 10));
    p = base();
    cr_assert_null(llm_sampler_new(&p, 0));
}
