/*
 * Unit tests for op_metrics: registration rules, values, the exact text
 * exposition, escaping, cardinality cap, concurrency, and promtool's verdict.
 *
 * The registry is process-global; every test uses metric names of its own
 * and looks for its own lines in the rendered text.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "metrics/op_metrics.h"
#include "platform/pl_log.h"

/* Refusals are logged as warnings by design; keep the test output readable. */
static void quiet_logs(void)
{
    pl_log_configure(PL_LOG_ERROR, PL_LOG_FORMAT_KV);
}

TestSuite(metrics, .init = quiet_logs);

static char *render(void)
{
    char *text = NULL;
    size_t len = 0;
    cr_assert_eq(op_metrics_render(&text, &len), 0);
    cr_assert_not_null(text);
    cr_assert_eq(strlen(text), len);
    return text;
}

/* The lines of one family: from its "# HELP" to the next family's. */
static char *family_block(const char *text, const char *name)
{
    char head[256];
    snprintf(head, sizeof head, "# HELP %s ", name);
    const char *start = strstr(text, head);
    cr_assert_not_null(start, "family %s not rendered in:\n%s", name, text);
    const char *end = strstr(start + 1, "# HELP ");
    size_t n = end ? (size_t)(end - start) : strlen(start);
    char *block = malloc(n + 1);
    memcpy(block, start, n);
    block[n] = '\0';
    return block;
}

static void expect_block(const char *name, const char *expected)
{
    char *text = render();
    char *block = family_block(text, name);
    cr_expect_str_eq(block, expected);
    free(block);
    free(text);
}

/* ------------------------------------------------------------------------ */

Test(metrics, rejects_bad_metric_names)
{
    cr_expect_null(op_metric_counter(NULL, "h", NULL));
    cr_expect_null(op_metric_counter("", "h", NULL));
    cr_expect_null(op_metric_counter("1abc_total", "h", NULL));
    cr_expect_null(op_metric_counter("bad-name_total", "h", NULL));
    cr_expect_null(op_metric_gauge("bad name", "h", NULL));
    cr_expect_null(op_metric_gauge("caf\xc3\xa9", "h", NULL));
    cr_expect_not_null(op_metric_gauge("ok:name_9", "h", NULL));
    cr_expect_not_null(op_metric_gauge("_ok", "h", NULL));
}

Test(metrics, rejects_bad_label_names)
{
    const char *const dunder[] = {"__reserved", NULL};
    const char *const digit[] = {"1a", NULL};
    const char *const colon[] = {"a:b", NULL};
    const char *const empty[] = {"", NULL};
    const char *const dup[] = {"a", "b", "a", NULL};
    const char *const le[] = {"route", "le", NULL};
    cr_expect_null(op_metric_counter("lbl_dunder_total", "h", dunder));
    cr_expect_null(op_metric_counter("lbl_digit_total", "h", digit));
    cr_expect_null(op_metric_counter("lbl_colon_total", "h", colon));
    cr_expect_null(op_metric_counter("lbl_empty_total", "h", empty));
    cr_expect_null(op_metric_counter("lbl_dup_total", "h", dup));
    cr_expect_null(op_metric_histogram("lbl_le_seconds", "h", le, NULL, 0));
    /* "le" is only reserved in histograms */
    cr_expect_not_null(op_metric_gauge("lbl_le_gauge", "h", le));

    const char *many[OP_METRIC_MAX_LABELS + 2];
    char names[OP_METRIC_MAX_LABELS + 1][16];
    for (int i = 0; i <= OP_METRIC_MAX_LABELS; i++) {
        snprintf(names[i], sizeof names[i], "l%d", i);
        many[i] = names[i];
    }
    many[OP_METRIC_MAX_LABELS + 1] = NULL;
    cr_expect_null(op_metric_gauge("lbl_too_many", "h", many));
    many[OP_METRIC_MAX_LABELS] = NULL;
    cr_expect_not_null(op_metric_gauge("lbl_just_enough", "h", many));
}

Test(metrics, same_registration_returns_same_family)
{
    const char *const l[] = {"a", "b", NULL};
    op_metric *m1 = op_metric_counter("same_reg_total", "first help", l);
    op_metric *m2 = op_metric_counter("same_reg_total", "other help", l);
    cr_assert_not_null(m1);
    cr_expect_eq(m1, m2);
    const double b[] = {1, 2};
    op_metric *h1 = op_metric_histogram("same_reg_seconds", "h", NULL, b, 2);
    cr_expect_eq(op_metric_histogram("same_reg_seconds", "h", NULL, b, 2), h1);
    cr_expect_null(op_metric_histogram("same_reg_seconds", "h", NULL, NULL, 0),
                   "other buckets are a conflict");
}

Test(metrics, rejects_type_and_label_conflicts)
{
    const char *const ab[] = {"a", "b", NULL};
    const char *const ba[] = {"b", "a", NULL};
    const char *const a[] = {"a", NULL};
    cr_assert_not_null(op_metric_counter("conflict_total", "h", ab));
    cr_expect_null(op_metric_gauge("conflict_total", "h", ab));
    cr_expect_null(op_metric_histogram("conflict_total", "h", ab, NULL, 0));
    cr_expect_null(op_metric_counter("conflict_total", "h", ba));
    cr_expect_null(op_metric_counter("conflict_total", "h", a));
    cr_expect_null(op_metric_counter("conflict_total", "h", NULL));
}

Test(metrics, rejects_histogram_series_collisions)
{
    cr_assert_not_null(op_metric_histogram("coll_seconds", "h", NULL, NULL, 0));
    cr_expect_null(op_metric_gauge("coll_seconds_count", "h", NULL));
    cr_expect_null(op_metric_counter("coll_seconds_sum", "h", NULL));
    cr_expect_null(op_metric_gauge("coll_seconds_bucket", "h", NULL));
    cr_assert_not_null(op_metric_gauge("coll2_bytes_sum", "h", NULL));
    cr_expect_null(op_metric_histogram("coll2_bytes", "h", NULL, NULL, 0));
}

Test(metrics, rejects_bad_buckets)
{
    const double dec[] = {1, 0.5};
    const double eq[] = {1, 1};
    const double nan_b[] = {1, NAN};
    const double ninf[] = {-INFINITY, 1};
    const double pinf[] = {1, 2, INFINITY};
    cr_expect_null(op_metric_histogram("bkt_dec_seconds", "h", NULL, dec, 2));
    cr_expect_null(op_metric_histogram("bkt_eq_seconds", "h", NULL, eq, 2));
    cr_expect_null(op_metric_histogram("bkt_nan_seconds", "h", NULL, nan_b, 2));
    cr_expect_null(op_metric_histogram("bkt_ninf_seconds", "h", NULL, ninf, 2));
    /* a trailing +Inf is implied anyway, so it is accepted and not doubled */
    op_metric *h = op_metric_histogram("bkt_pinf_seconds", "h", NULL, pinf, 3);
    cr_assert_not_null(h);
    op_histogram_observe(op_metric_child_get(h, NULL), 7);
    expect_block("bkt_pinf_seconds", "# HELP bkt_pinf_seconds h\n"
                                     "# TYPE bkt_pinf_seconds histogram\n"
                                     "bkt_pinf_seconds_bucket{le=\"1\"} 0\n"
                                     "bkt_pinf_seconds_bucket{le=\"2\"} 0\n"
                                     "bkt_pinf_seconds_bucket{le=\"+Inf\"} 1\n"
                                     "bkt_pinf_seconds_sum 7\n"
                                     "bkt_pinf_seconds_count 1\n");
}

Test(metrics, default_buckets)
{
    cr_assert_eq(OP_METRIC_DEFAULT_SECONDS_BUCKETS_N, 18);
    cr_expect_eq(OP_METRIC_DEFAULT_SECONDS_BUCKETS[0], 0.0001);
    cr_expect_eq(OP_METRIC_DEFAULT_SECONDS_BUCKETS[17], 60);
    op_metric *h = op_metric_histogram("dflt_seconds", "h", NULL, NULL, 0);
    cr_assert_not_null(h);
    char *text = render();
    cr_expect_not_null(strstr(text, "dflt_seconds_bucket{le=\"0.0001\"} 0\n"));
    cr_expect_not_null(strstr(text, "dflt_seconds_bucket{le=\"0.00025\"} 0\n"));
    cr_expect_not_null(strstr(text, "dflt_seconds_bucket{le=\"2.5\"} 0\n"));
    cr_expect_not_null(strstr(text, "dflt_seconds_bucket{le=\"60\"} 0\n"));
    cr_expect_not_null(strstr(text, "dflt_seconds_bucket{le=\"+Inf\"} 0\n"));
    free(text);
}

Test(metrics, child_lookup_errors_and_null_safety)
{
    const char *const l[] = {"a", "b", NULL};
    op_metric *m = op_metric_counter("lookup_total", "h", l);
    cr_assert_not_null(m);
    cr_expect_null(op_metric_child_get(m, NULL));
    const char *const short_vals[] = {"x", NULL};
    cr_expect_null(op_metric_child_get(m, short_vals));
    cr_expect_null(op_metric_child_get(NULL, short_vals));
    cr_expect_null(op_metric_with(NULL, "x"));

    const char *const vals[] = {"x", "y"};
    op_metric_child *c = op_metric_child_get(m, vals);
    cr_assert_not_null(c);
    cr_expect_eq(op_metric_with(m, "x", "y"), c);
    cr_expect_neq(op_metric_with(m, "y", "x"), c);
    /* separator safety: ("x","yz") and ("xy","z") are different children */
    cr_expect_neq(op_metric_with(m, "x", "yz"), op_metric_with(m, "xy", "z"));

    /* none of these may crash */
    op_counter_inc(NULL);
    op_counter_add(NULL, 1);
    op_gauge_set(NULL, 1);
    op_gauge_add(NULL, 1);
    op_histogram_observe(NULL, 1);
    cr_expect_eq(op_metric_value(NULL), 0.0);
}

Test(metrics, counter_and_gauge_values)
{
    op_metric_child *c = op_metric_child_get(op_metric_counter("val_total", "h", NULL), NULL);
    op_metric_child *g = op_metric_child_get(op_metric_gauge("val_gauge", "h", NULL), NULL);
    cr_assert_not_null(c);
    cr_assert_not_null(g);
    cr_expect_eq(op_metric_value(c), 0.0);
    op_counter_inc(c);
    op_counter_add(c, 2.5);
    op_counter_add(c, -10);  /* ignored: counters only go up */
    op_counter_add(c, NAN);  /* ignored */
    cr_expect_eq(op_metric_value(c), 3.5);
    op_gauge_set(c, 100);    /* wrong type: no-op */
    op_gauge_add(c, -1);
    cr_expect_eq(op_metric_value(c), 3.5);

    op_gauge_set(g, 10);
    op_gauge_add(g, -12.5);
    cr_expect_eq(op_metric_value(g), -2.5);
    op_counter_inc(g);       /* wrong type: no-op */
    op_histogram_observe(g, 1);
    cr_expect_eq(op_metric_value(g), -2.5);
}

Test(metrics, renders_exact_text)
{
    const char *const l[] = {"route", "code", NULL};
    op_metric *c = op_metric_counter("exact_requests_total", "Requests served.", l);
    op_metric *g = op_metric_gauge("exact_queue_depth", "Requests waiting.", NULL);
    const double b[] = {0.1, 1, 10};
    const char *const hl[] = {"model", NULL};
    op_metric *h = op_metric_histogram("exact_latency_seconds", "Latency.", hl, b, 3);
    op_metric *unused = op_metric_counter("exact_unused_total", "No child yet.", l);
    cr_assert(c && g && h && unused);

    op_counter_add(op_metric_with(c, "/v1/chat", "200"), 3);
    op_counter_inc(op_metric_with(c, "/v1/embed", "500"));
    op_gauge_set(op_metric_child_get(g, NULL), 7);
    op_metric_child *hc = op_metric_with(h, "tiny");
    op_histogram_observe(hc, 0.05);
    op_histogram_observe(hc, 0.5);
    op_histogram_observe(hc, 0.5);
    op_histogram_observe(hc, 20);

    expect_block("exact_requests_total",
                 "# HELP exact_requests_total Requests served.\n"
                 "# TYPE exact_requests_total counter\n"
                 "exact_requests_total{route=\"/v1/chat\",code=\"200\"} 3\n"
                 "exact_requests_total{route=\"/v1/embed\",code=\"500\"} 1\n");
    expect_block("exact_queue_depth", "# HELP exact_queue_depth Requests waiting.\n"
                                      "# TYPE exact_queue_depth gauge\n"
                                      "exact_queue_depth 7\n");
    expect_block("exact_latency_seconds",
                 "# HELP exact_latency_seconds Latency.\n"
                 "# TYPE exact_latency_seconds histogram\n"
                 "exact_latency_seconds_bucket{model=\"tiny\",le=\"0.1\"} 1\n"
                 "exact_latency_seconds_bucket{model=\"tiny\",le=\"1\"} 3\n"
                 "exact_latency_seconds_bucket{model=\"tiny\",le=\"10\"} 3\n"
                 "exact_latency_seconds_bucket{model=\"tiny\",le=\"+Inf\"} 4\n"
                 "exact_latency_seconds_sum{model=\"tiny\"} 21.05\n"
                 "exact_latency_seconds_count{model=\"tiny\"} 4\n");
    /* a labelled family with no child yet: HELP and TYPE only */
    expect_block("exact_unused_total", "# HELP exact_unused_total No child yet.\n"
                                       "# TYPE exact_unused_total counter\n");

    /* registration order is output order */
    char *text = render();
    char *p1 = strstr(text, "# HELP exact_requests_total");
    char *p2 = strstr(text, "# HELP exact_queue_depth");
    char *p3 = strstr(text, "# HELP exact_latency_seconds");
    char *p4 = strstr(text, "# HELP exact_unused_total");
    cr_expect(p1 && p2 && p3 && p4 && p1 < p2 && p2 < p3 && p3 < p4);
    free(text);
}

Test(metrics, number_formatting)
{
    struct {
        const char *name;
        double v;
        const char *text;
    } cases[] = {
        {"num_int", 42, "42"},
        {"num_neg", -2.5, "-2.5"},
        {"num_tenth", 0.1, "0.1"},
        {"num_third", 1.0 / 3.0, "0.3333333333333333"},
        {"num_big_int", 9007199254740991.0, "9007199254740991"},
        {"num_huge", 1e20, "1e+20"},
        {"num_tiny", 1e-9, "1e-09"},
        {"num_roundtrip", 0.1 + 0.2, "0.30000000000000004"},
        {"num_negzero", -0.0, "0"},
        {"num_pinf", INFINITY, "+Inf"},
        {"num_ninf", -INFINITY, "-Inf"},
        {"num_nan", NAN, "NaN"},
    };
    size_t n = sizeof cases / sizeof cases[0];
    for (size_t i = 0; i < n; i++)
        op_gauge_set(op_metric_child_get(op_metric_gauge(cases[i].name, "h", NULL), NULL),
                     cases[i].v);
    char *text = render();
    for (size_t i = 0; i < n; i++) {
        char line[128];
        snprintf(line, sizeof line, "\n%s %s\n", cases[i].name, cases[i].text);
        cr_expect_not_null(strstr(text, line), "missing %s", line + 1);
    }
    free(text);
}

Test(metrics, escapes_help_and_label_values)
{
    const char *const l[] = {"path", NULL};
    op_metric *g = op_metric_gauge("esc_gauge", "Back\\slash and\nnewline \"quotes\" kept.", l);
    cr_assert_not_null(g);
    op_gauge_set(op_metric_with(g, "a\"b\\c\nd"), 1);
    expect_block("esc_gauge", "# HELP esc_gauge Back\\\\slash and\\nnewline \"quotes\" kept.\n"
                              "# TYPE esc_gauge gauge\n"
                              "esc_gauge{path=\"a\\\"b\\\\c\\nd\"} 1\n");
}

Test(metrics, invalid_utf8_label_values_are_sanitized)
{
    const char *const l[] = {"v", NULL};
    op_metric *g = op_metric_gauge("utf8_gauge", "h", l);
    op_metric_child *bad = op_metric_with(g, "a\xff" "b\xc3");
    cr_assert_not_null(bad);
    cr_expect_eq(op_metric_with(g, "a\xff" "b\xc3"), bad, "same bad input, same child");
    cr_expect_eq(op_metric_with(g, "a?b?"), bad, "keyed by the sanitized value");
    op_gauge_set(op_metric_with(g, "caf\xc3\xa9"), 2); /* valid UTF-8 kept as is */
    op_gauge_set(bad, 1);
    expect_block("utf8_gauge", "# HELP utf8_gauge h\n"
                               "# TYPE utf8_gauge gauge\n"
                               "utf8_gauge{v=\"a?b?\"} 1\n"
                               "utf8_gauge{v=\"caf\xc3\xa9\"} 2\n");
}

Test(metrics, histogram_bucket_boundaries)
{
    const double b[] = {1, 2, 5};
    op_metric_child *h =
        op_metric_child_get(op_metric_histogram("bound_seconds", "h", NULL, b, 3), NULL);
    cr_assert_not_null(h);
    op_histogram_observe(h, 1);           /* equal to a bound: in that bucket */
    op_histogram_observe(h, 2);
    op_histogram_observe(h, 2.000000001); /* just above: the next one */
    op_histogram_observe(h, 5);
    op_histogram_observe(h, -3);          /* below every bound: the first */
    op_histogram_observe(h, 5.5);         /* above every bound: +Inf only */
    op_histogram_observe(h, NAN);         /* ignored */
    cr_expect_eq(op_metric_value(h), 6.0);
    char *text = render();
    char *block = family_block(text, "bound_seconds");
    cr_expect_not_null(strstr(block, "bound_seconds_bucket{le=\"1\"} 2\n"), "%s", block);
    cr_expect_not_null(strstr(block, "bound_seconds_bucket{le=\"2\"} 3\n"), "%s", block);
    cr_expect_not_null(strstr(block, "bound_seconds_bucket{le=\"5\"} 5\n"), "%s", block);
    cr_expect_not_null(strstr(block, "bound_seconds_bucket{le=\"+Inf\"} 6\n"), "%s", block);
    cr_expect_not_null(strstr(block, "bound_seconds_count 6\n"), "%s", block);
    cr_expect_not_null(strstr(block, "bound_seconds_sum 12.500000001\n"), "%s", block);
    free(block);
    free(text);
}

Test(metrics, cardinality_is_capped_with_an_overflow_child)
{
    const char *const l[] = {"id", "kind", NULL};
    op_metric *m = op_metric_counter("cap_total", "h", l);
    cr_assert_not_null(m);
    char id[32];
    op_metric_child *first = NULL;
    for (int i = 0; i < OP_METRIC_MAX_CHILDREN; i++) {
        snprintf(id, sizeof id, "%d", i);
        op_metric_child *c = op_metric_with(m, id, "k");
        cr_assert_not_null(c);
        if (i == 0)
            first = c;
        op_counter_inc(c);
    }
    op_metric_child *over = op_metric_with(m, "new-1", "k");
    cr_assert_not_null(over);
    cr_expect_neq(over, first);
    cr_expect_eq(op_metric_with(m, "new-2", "other"), over, "every new set shares it");
    cr_expect_eq(op_metric_with(m, OP_METRIC_OVERFLOW_VALUE, OP_METRIC_OVERFLOW_VALUE), over);
    cr_expect_eq(op_metric_with(m, "0", "k"), first, "existing sets still resolve");
    op_counter_add(over, 5);
    char *text = render();
    cr_expect_not_null(strstr(text, "\ncap_total{id=\"__overflow__\",kind=\"__overflow__\"} 5\n"));
    cr_expect_not_null(strstr(text, "\ncap_total{id=\"9999\",kind=\"k\"} 1\n"));
    cr_expect_null(strstr(text, "new-1"));
    free(text);
}

/* ------------------------------------------------------------------------ */
/* Concurrency                                                              */
/* ------------------------------------------------------------------------ */

#define THREADS 4
#define PER_THREAD 100000

typedef struct worker {
    op_metric *fam;
    op_metric_child *shared;
    const char *label;
} worker;

static void *count_shared(void *arg)
{
    worker *w = arg;
    for (int i = 0; i < PER_THREAD; i++)
        op_counter_inc(w->shared);
    return NULL;
}

/* Looks its child up every time, so lookups race with the first insert. */
static void *count_distinct(void *arg)
{
    worker *w = arg;
    for (int i = 0; i < PER_THREAD; i++) {
        op_counter_inc(op_metric_with(w->fam, w->label));
        op_counter_inc(op_metric_with(w->fam, "all"));
    }
    return NULL;
}

static void *observe_shared(void *arg)
{
    worker *w = arg;
    for (int i = 0; i < PER_THREAD; i++)
        op_histogram_observe(w->shared, (double)(i % 4)); /* 0,1,2,3 */
    return NULL;
}

static void run_threads(void *(*fn)(void *), worker *w)
{
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, fn, &w[i]), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
}

Test(metrics, concurrent_increments_on_one_child)
{
    op_metric_child *c =
        op_metric_child_get(op_metric_counter("conc_shared_total", "h", NULL), NULL);
    cr_assert_not_null(c);
    worker w[THREADS];
    for (int i = 0; i < THREADS; i++)
        w[i] = (worker){.shared = c};
    run_threads(count_shared, w);
    cr_expect_eq(op_metric_value(c), (double)THREADS * PER_THREAD);
}

Test(metrics, concurrent_increments_on_distinct_children)
{
    const char *const l[] = {"worker", NULL};
    op_metric *m = op_metric_counter("conc_distinct_total", "h", l);
    cr_assert_not_null(m);
    static const char *names[THREADS] = {"w0", "w1", "w2", "w3"};
    worker w[THREADS];
    for (int i = 0; i < THREADS; i++)
        w[i] = (worker){.fam = m, .label = names[i]};
    run_threads(count_distinct, w);
    for (int i = 0; i < THREADS; i++)
        cr_expect_eq(op_metric_value(op_metric_with(m, names[i])), (double)PER_THREAD);
    cr_expect_eq(op_metric_value(op_metric_with(m, "all")), (double)THREADS * PER_THREAD);
}

typedef struct scrape_check {
    const char *name;
    int scrapes;
    int bad;
} scrape_check;

/* Parses this family's samples: buckets must never decrease and _count must
 * equal the +Inf bucket, even while observations land. */
static void check_histogram_scrape(scrape_check *sc)
{
    char *text = render();
    char prefix[128];
    snprintf(prefix, sizeof prefix, "\n%s_bucket{", sc->name);
    double last = -1, inf = -1, count = -2;
    for (char *p = strstr(text, prefix); p; p = strstr(p + 1, prefix)) {
        double v = strtod(strchr(p, '}') + 2, NULL);
        if (v < last)
            sc->bad++;
        last = v;
        if (strncmp(strchr(p, '{'), "{le=\"+Inf\"}", 11) == 0)
            inf = v;
    }
    snprintf(prefix, sizeof prefix, "\n%s_count ", sc->name);
    char *c = strstr(text, prefix);
    if (c)
        count = strtod(c + strlen(prefix), NULL);
    if (count != inf)
        sc->bad++;
    sc->scrapes++;
    free(text);
}

Test(metrics, concurrent_histogram_observations_and_scrapes)
{
    const double b[] = {0.5, 1.5, 2.5};
    op_metric_child *h = op_metric_child_get(
        op_metric_histogram("conc_hist_seconds", "h", NULL, b, 3), NULL);
    cr_assert_not_null(h);
    worker w[THREADS];
    for (int i = 0; i < THREADS; i++)
        w[i] = (worker){.shared = h};
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, observe_shared, &w[i]), 0);
    scrape_check sc = {.name = "conc_hist_seconds"};
    for (int i = 0; i < 50; i++)
        check_histogram_scrape(&sc);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    check_histogram_scrape(&sc);
    cr_expect_eq(sc.bad, 0, "%d of %d scrapes inconsistent", sc.bad, sc.scrapes);

    cr_expect_eq(op_metric_value(h), (double)THREADS * PER_THREAD);
    /* each thread observes 0,1,2,3 equally often: sum = 1.5 per observation */
    expect_block("conc_hist_seconds", "# HELP conc_hist_seconds h\n"
                                      "# TYPE conc_hist_seconds histogram\n"
                                      "conc_hist_seconds_bucket{le=\"0.5\"} 100000\n"
                                      "conc_hist_seconds_bucket{le=\"1.5\"} 200000\n"
                                      "conc_hist_seconds_bucket{le=\"2.5\"} 300000\n"
                                      "conc_hist_seconds_bucket{le=\"+Inf\"} 400000\n"
                                      "conc_hist_seconds_sum 600000\n"
                                      "conc_hist_seconds_count 400000\n");
}

/* ------------------------------------------------------------------------ */
/* Process identity and promtool                                            */
/* ------------------------------------------------------------------------ */

Test(metrics, build_info_and_start_time)
{
    op_metrics_register_build_info("1.2.3", "abc123");
    op_metrics_register_build_info("1.2.3", "abc123"); /* idempotent */
    char *text = render();
    char *info = family_block(text, "outpost_build_info");
    cr_expect_not_null(strstr(info, "# TYPE outpost_build_info gauge\n"));
    cr_expect_not_null(strstr(info, "outpost_build_info{version=\"1.2.3\",revision=\"abc123\","
                                    "compiler=\""),
                       "%s", info);
    cr_expect_not_null(strstr(info, "\"} 1\n"), "%s", info);
    cr_expect_null(strstr(strchr(info, '}') + 1, "outpost_build_info{"), "one series only");

    char *start = family_block(text, "outpost_process_start_time_seconds");
    char *line = strstr(start, "\noutpost_process_start_time_seconds ");
    cr_assert_not_null(line, "%s", start);
    double t = strtod(line + strlen("\noutpost_process_start_time_seconds "), NULL);
    double now = (double)time(NULL);
    cr_expect(t > 1.6e9 && t <= now + 1, "start time %f, now %f", t, now);
    free(start);
    free(info);
    free(text);
}

Test(metrics, promtool_accepts_the_exposition)
{
    if (access("/usr/bin/promtool", X_OK) != 0)
        cr_skip_test("promtool not installed at /usr/bin/promtool: exposition not linted");

    const char *const l[] = {"route", "code", NULL};
    const char *const hl[] = {"model", NULL};
    op_counter_add(op_metric_with(op_metric_counter("outpost_lint_requests_total",
                                                    "Requests \"served\",\nby route.", l),
                                  "/v1/chat", "200"),
                   3);
    op_gauge_set(op_metric_child_get(op_metric_gauge("outpost_lint_queue_depth",
                                                     "Requests waiting.", NULL),
                                     NULL),
                 -2.5);
    op_metric *h = op_metric_histogram("outpost_lint_latency_seconds", "Latency \\ time.", hl,
                                       NULL, 0);
    op_histogram_observe(op_metric_with(h, "a\"b\\c\nd"), 0.003);
    op_histogram_observe(op_metric_with(h, "tiny"), 100);
    op_metric_counter("outpost_lint_empty_total", "Never incremented.", l);
    op_metrics_register_build_info("0.1.0", "deadbeef");

    char *text = render();
    char path[] = "/tmp/test_metrics_XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    size_t len = strlen(text);
    cr_assert_eq(write(fd, text, len), (ssize_t)len);
    close(fd);

    char cmd[256];
    snprintf(cmd, sizeof cmd, "/usr/bin/promtool check metrics < %s 2>&1", path);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    char out[4096] = "";
    size_t got = fread(out, 1, sizeof out - 1, p);
    out[got] = '\0';
    int status = pclose(p);
    unlink(path);
    cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "promtool failed (status %d):\n%s\non:\n%s", status, out, text);
    free(text);
}
