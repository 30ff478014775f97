/*
 * llm_sample: penalties, temperature, top-k, top-p, seeded draws. See
 * llm_sample.h.
 */
#include "llm_sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

/* Probability buckets for the top-p radix pass: the top 12 bits of a
 * non-negative float's bit pattern (exponent and 3 mantissa bits) order
 * floats like their values. */
#define N_BUCKETS 2048
#define BUCKET(bits) ((bits) >> 20)

typedef struct cand {
    float v;   /* logit, then probability */
    int32_t id;
} cand;

struct llm_sampler {
    llm_sampling p;
    int n_vocab;
    uint64_t rng[4];
    /* penalties */
    uint32_t *gen_count; /* (n_vocab) generated occurrences; NULL without freq/presence */
    uint8_t *seen;       /* (n_vocab) 1 if in the sequence; NULL without repetition */
    int32_t *seen_ids;   /* distinct ids of the sequence / of generated tokens */
    int32_t *gen_ids;
    int n_seen, n_gen_ids;
    /* scratch */
    cand *cands;          /* (n_vocab) */
    double bucket_mass[N_BUCKETS];
};

/* ------------------------------------------------------------------------ */
/* RNG: xoshiro256**, seeded with splitmix64.                                */
/* ------------------------------------------------------------------------ */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(uint64_t s[4])
{
    const uint64_t result = rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Uniform in [0, 1) with 53 random bits. */
static double rng_uniform(uint64_t s[4])
{
    return (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

/* ------------------------------------------------------------------------ */

bool llm_sampling_is_greedy(const llm_sampling *p)
{
    return (p->temperature <= 0.0f || p->top_k == 1) && p->repetition_penalty == 1.0f &&
           p->frequency_penalty == 0.0f && p->presence_penalty == 0.0f;
}

llm_sampler *llm_sampler_new(const llm_sampling *p, int n_vocab)
{
    if (n_vocab < 1 || !(p->top_p > 0.0f && p->top_p <= 1.0f) || p->top_k < 0 ||
        !(p->repetition_penalty > 0.0f) || !isfinite(p->temperature) ||
        !isfinite(p->frequency_penalty) || !isfinite(p->presence_penalty))
        return NULL;
    llm_sampler *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->p = *p;
    s->n_vocab = n_vocab;
    uint64_t seed = p->seed;
    if (!p->has_seed && getrandom(&seed, sizeof seed, 0) != (ssize_t)sizeof seed) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)(uintptr_t)s;
    }
    for (int i = 0; i < 4; i++)
        s->rng[i] = splitmix64(&seed);
    bool rep = p->repetition_penalty != 1.0f;
    bool freq = p->frequency_penalty != 0.0f || p->presence_penalty != 0.0f;
    bool ok = true;
    if (rep) {
        s->seen = calloc((size_t)n_vocab, 1);
        s->seen_ids = malloc((size_t)n_vocab * sizeof *s->seen_ids);
        ok = s->seen && s->seen_ids;
    }
    if (freq && ok) {
        s->gen_count = calloc((size_t)n_vocab, sizeof *s->gen_count);
        s->gen_ids = malloc((size_t)n_vocab * sizeof *s->gen_ids);
        ok = s->gen_count && s->gen_ids;
    }
    if (ok && !llm_sampling_is_greedy(p))
        ok = (s->cands = malloc((size_t)n_vocab * sizeof *s->cands)) != NULL;
    if (!ok) {
        llm_sampler_free(s);
        return NULL;
    }
    return s;
}

void llm_sampler_free(llm_sampler *s)
{
    if (!s)
        return;
    free(s->gen_count);
    free(s->seen);
    free(s->seen_ids);
    free(s->gen_ids);
    free(s->cands);
    free(s);
}

void llm_sampler_accept(llm_sampler *s, int32_t token, bool generated)
{
    if (token < 0 || token >= s->n_vocab)
        return;
    if (s->seen && !s->seen[token]) {
        s->seen[token] = 1;
        s->seen_ids[s->n_seen++] = token;
    }
    if (generated && s->gen_count) {
        if (s->gen_count[token]++ == 0)
            s->gen_ids[s->n_gen_ids++] = token;
    }
}

static void apply_penalties(llm_sampler *s, float *logits)
{
    if (s->seen) {
        const float rp = s->p.repetition_penalty;
        for (int i = 0; i < s->n_seen; i++) {
            float *l = &logits[s->seen_ids[i]];
            *l = *l > 0.0f ? *l / rp : *l * rp;
        }
    }
    if (s->gen_count) {
        for (int i = 0; i < s->n_gen_ids; i++) {
            int32_t id = s->gen_ids[i];
            logits[id] -= (float)s->gen_count[id] * s->p.frequency_penalty +
                          s->p.presence_penalty;
        }
    }
}

static int32_t argmax(const float *x, int n)
{
    int32_t best = 0;
    float bv = x[0];
    for (int i = 1; i < n; i++)
        if (x[i] > bv) {
            bv = x[i];
            best = i;
        }
    return best;
}

static int cmp_desc(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    if (x->v != y->v)
        return x->v > y->v ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Moves the k largest of c[0, n) to the front (unordered), quickselect
 * style with a median-of-three pivot. */
static void select_top(cand *c, int n, int k)
{
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        float a = c[lo].v, b = c[mid].v, d = c[hi].v;
        float pivot = a < b ? (b < d ? b : (a < d ? d : a)) : (a < d ? a : (b < d ? d : b));
        int i = lo, j = hi;
        while (i <= j) {
            while (c[i].v > pivot)
                i++;
            while (c[j].v < pivot)
                j--;
            if (i <= j) {
                cand t = c[i];
                c[i] = c[j];
                c[j] = t;
                i++;
                j--;
            }
        }
        if (k - 1 <= j)
            hi = j;
        else if (k - 1 >= i)
            lo = i;
        else
            break;
    }
}

/* Draws from c[0, n) with probabilities proportional to c[i].v (summing to
 * mass). */
static int32_t draw(llm_sampler *s, const cand *c, int n, double mass)
{
    double u = rng_uniform(s->rng) * mass, acc = 0.0;
    for (int i = 0; i < n; i++) {
        acc += c[i].v;
        if (u < acc)
            return c[i].id;
    }
    return c[n - 1].id; /* rounding left u at the very top */
}

/* c[0, n) hold logits: turns them into exp(l - max), returns their sum. */
static double exponentiate(cand *c, int n)
{
    float mx = c[0].v;
    for (int i = 1; i < n; i++)
        if (c[i].v > mx)
            mx = c[i].v;
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        c[i].v = expf(c[i].v - mx);
        sum += c[i].v;
    }
    return sum;
}

/* Keeps the smallest prefix-by-probability of c[0, n) reaching top_p of the
 * mass; returns its length and sets *kept_mass. c holds unnormalized
 * probabilities summing to mass. Exact: one histogram pass over the bucket
 * of each value, then a sort of only the bucket where the cut falls. */
static int cut_top_p(llm_sampler *s, cand *c, int n, double mass, double top_p,
                     double *kept_mass)
{
    const double target = top_p * mass;
    if (n <= 64) {
        qsort(c, (size_t)n, sizeof *c, cmp_desc);
        double acc = 0.0;
        for (int i = 0; i < n; i++) {
            acc += c[i].v;
            if (acc >= target) {
                *kept_mass = acc;
                return i + 1;
            }
        }
        *kept_mass = acc;
        return n;
    }
    memset(s->bucket_mass, 0, sizeof s->bucket_mass);
    for (int i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &c[i].v, sizeof bits);
        s->bucket_mass[BUCKET(bits)] += c[i].v;
    }
    double acc = 0.0;
    int cut = 0;
    for (int b = N_BUCKETS - 1; b >= 0; b--) {
        if (acc + s->bucket_mass[b] >= target) {
            cut = b;
            break;
        }
        acc += s->bucket_mass[b];
    }
    /* Partition: buckets above the cut first, then the cut bucket. */
    int hi_n = 0;
    for (int i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &c[i].v, sizeof bits);
        if ((int)BUCKET(bits) > cut) {
            cand t = c[hi_n];
            c[hi_n++] = c[i];
            c[i] = t;
        }
    }
    int mid_n = hi_n;
    for (int i = hi_n; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &c[i].v, sizeof bits);
        if ((int)BUCKET(bits) == cut) {
            cand t = c[mid_n];
            c[mid_n++] = c[i];
            c[i] = t;
        }
    }
    qsort(c + hi_n, (size_t)(mid_n - hi_n), sizeof *c, cmp_desc);
    for (int i = hi_n; i < mid_n; i++) {
        acc += c[i].v;
        if (acc >= target) {
            *kept_mass = acc;
            return i + 1;
        }
    }
    *kept_mass = acc; /* rounding: keep everything up to the cut bucket */
    return mid_n > 0 ? mid_n : n;
}

int32_t llm_sampler_sample(llm_sampler *s, float *logits)
{
    const int n = s->n_vocab;
    apply_penalties(s, logits);
    if (s->p.temperature <= 0.0f || s->p.top_k == 1 || !s->cands)
        return argmax(logits, n);

    const float inv_t = 1.0f / s->p.temperature;
    cand *c = s->cands;
    for (int i = 0; i < n; i++) {
        c[i].v = logits[i] * inv_t;
        c[i].id = i;
    }
    int m = n;
    if (s->p.top_k > 0 && s->p.top_k < n) {
        select_top(c, n, s->p.top_k);
        m = s->p.top_k;
    }
    double mass = exponentiate(c, m);
    if (!(mass > 0.0) || !isfinite(mass))
        return argmax(logits, n); /* all -inf or overflow: nothing to draw from */
    if (s->p.top_p < 1.0f) {
        double kept;
        m = cut_top_p(s, c, m, mass, s->p.top_p, &kept);
        mass = kept;
    }
    return draw(s, c, m, mass);
}
