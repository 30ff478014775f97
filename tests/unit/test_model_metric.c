/*
 * Plugin ABI minor 1, host side: host->model_metric() feeding the per-model
 * Prometheus series (gauges replace, histograms observe, counters add; bad
 * ids and values dropped), the host_model handle a plugin gets at load,
 * count_tokens read only where a plugin's minor and struct_size have it,
 * and streamed pieces reaching the caller as whole UTF-8 characters. Uses
 * the echo test plugins (tests/plugins: echo.so and minor0/echo_v0.so).
 */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "metrics/op_metrics.h"
#include "plugins/op_plugins_internal.h"
#include "plugins/op_utf8.h"

static op_plugin_set *load_dir(const char *dir, const char *plugin)
{
    const char *dirs[] = {dir};
    op_plugin_set *set = NULL;
    cr_assert_eq(op_plugins_load(dirs, 1, &set), 0);
    cr_assert_not_null(op_plugins_find(set, plugin), "%s did not load from %s", plugin, dir);
    return set;
}

static op_model *load(op_plugin_set *set, const char *plugin, const char *id, const char *task,
                      const char *option)
{
    op_config_model cfg;
    memset(&cfg, 0, sizeof cfg);
    op_config_kv kv;
    char key[32], value[32];
    cfg.id = (char *)id;
    cfg.plugin = (char *)plugin;
    cfg.task = (char *)task;
    if (option) {
        sscanf(option, "%31[^=]=%31s", key, value);
        kv.key = key;
        kv.value = value;
        cfg.options = &kv;
        cfg.n_options = 1;
    }
    op_model *m = NULL;
    char err[256] = "";
    cr_assert_eq(op_model_load(set, &cfg, 1, &m, err, sizeof err), 0, "%s", err);
    return m;
}

/* A gauge or counter child (histograms are read from a scrape: their
 * buckets are the host's, which this test does not repeat). */
static op_metric_child *series(op_metric_type type, const char *name, const char *model)
{
    static const char *const labels[] = {"model", NULL};
    op_metric *f = type == OP_METRIC_GAUGE ? op_metric_gauge(name, "", labels)
                                           : op_metric_counter(name, "", labels);
    cr_assert_not_null(f, "%s not registered as this type", name);
    return op_metric_with(f, model);
}

static char *scrape(void)
{
    char *text;
    size_t len;
    cr_assert_eq(op_metrics_render(&text, &len), 0);
    return text;
}

static double scrape_value(const char *text, const char *line_start)
{
    size_t n = strlen(line_start);
    for (const char *p = strstr(text, line_start); p; p = strstr(p + 1, line_start))
        if ((p == text || p[-1] == '\n') && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    return NAN;
}

static void teardown(op_model *m, op_plugin_set *set)
{
    op_model_unref(m);
    op_plugin_set_unref(set);
    op_plugins_drain();
}

Test(model_metric, reports_land_in_the_models_series)
{
    op_plugin_set *set = load_dir(OUTPOST_TEST_PLUGIN_DIR, "echo");
    op_model *m = load(set, "echo", "@t/metric", "text-generation", NULL);
    outpost_host_model *hm = (outpost_host_model *)(void *)m;
    const outpost_host_api *h = &op_plugins_find(set, "echo")->host.api;
    cr_assert_not_null(h->model_metric);
    cr_assert_geq(h->struct_size, offsetof(outpost_host_api, model_metric) + sizeof(void *));

    /* echo reported its KV capacity from inside model_load(). */
    op_metric_child *cap = series(OP_METRIC_GAUGE, "outpost_llm_kv_cache_capacity_tokens", "@t/metric");
    cr_assert_eq(op_metric_value(cap), 4096);

    op_metric_child *q = series(OP_METRIC_GAUGE, "outpost_inference_queue_depth", "@t/metric");
    h->model_metric(hm, OUTPOST_METRIC_QUEUE_DEPTH, 5);
    h->model_metric(hm, OUTPOST_METRIC_QUEUE_DEPTH, 3); /* a gauge: replaced */
    cr_assert_eq(op_metric_value(q), 3);
    op_metric_child *gen = series(OP_METRIC_COUNTER, "outpost_llm_generated_tokens_total", "@t/metric");
    h->model_metric(hm, OUTPOST_METRIC_GENERATED_TOKENS, 2);
    h->model_metric(hm, OUTPOST_METRIC_GENERATED_TOKENS, 3); /* a counter: added */
    cr_assert_eq(op_metric_value(gen), 5);
    op_metric_child *pt = series(OP_METRIC_COUNTER, "outpost_inference_prompt_tokens_total", "@t/metric");
    h->model_metric(hm, OUTPOST_METRIC_PROMPT_TOKENS, 11);
    cr_assert_eq(op_metric_value(pt), 11);

    /* Dropped: NaN, infinities, negatives, unknown ids, a NULL handle. */
    h->model_metric(hm, OUTPOST_METRIC_QUEUE_DEPTH, NAN);
    h->model_metric(hm, OUTPOST_METRIC_QUEUE_DEPTH, INFINITY);
    h->model_metric(hm, OUTPOST_METRIC_QUEUE_DEPTH, -1);
    h->model_metric(hm, (outpost_model_metric)0, 1);
    h->model_metric(hm, (outpost_model_metric)99, 1);
    h->model_metric(hm, (outpost_model_metric)-4, 1);
    h->model_metric(NULL, OUTPOST_METRIC_QUEUE_DEPTH, 1);
    h->model_metric(hm, OUTPOST_METRIC_GENERATED_TOKENS, NAN);
    cr_assert_eq(op_metric_value(q), 3);
    cr_assert_eq(op_metric_value(gen), 5);

    /* Histograms: one observation per call, in the host's buckets. */
    h->model_metric(hm, OUTPOST_METRIC_BATCH_SIZE, 3);
    h->model_metric(hm, OUTPOST_METRIC_BATCH_SIZE, 300);
    h->model_metric(hm, OUTPOST_METRIC_ITL_SECONDS, 0.004);
    h->model_metric(hm, OUTPOST_METRIC_ITL_SECONDS, INFINITY);
    h->model_metric(hm, OUTPOST_METRIC_TTFT_SECONDS, 0.3);
    h->model_metric(hm, OUTPOST_METRIC_QUEUE_WAIT_SECONDS, 0.0002);
    char *text = scrape();
    cr_assert_eq(scrape_value(text, "outpost_inference_batch_size_bucket{model=\"@t/metric\",le=\"2\"}"), 0);
    cr_assert_eq(scrape_value(text, "outpost_inference_batch_size_bucket{model=\"@t/metric\",le=\"4\"}"), 1);
    cr_assert_eq(scrape_value(text, "outpost_inference_batch_size_bucket{model=\"@t/metric\",le=\"256\"}"), 1);
    cr_assert_eq(scrape_value(text, "outpost_inference_batch_size_bucket{model=\"@t/metric\",le=\"+Inf\"}"), 2);
    cr_assert_eq(scrape_value(text, "outpost_inference_batch_size_sum{model=\"@t/metric\"}"), 303);
    cr_assert_eq(scrape_value(text, "outpost_llm_inter_token_latency_seconds_bucket{model=\"@t/metric\",le=\"0.0025\"}"), 0);
    cr_assert_eq(scrape_value(text, "outpost_llm_inter_token_latency_seconds_bucket{model=\"@t/metric\",le=\"0.005\"}"), 1);
    cr_assert_eq(scrape_value(text, "outpost_llm_inter_token_latency_seconds_count{model=\"@t/metric\"}"), 1);
    cr_assert_eq(scrape_value(text, "outpost_llm_time_to_first_token_seconds_bucket{model=\"@t/metric\",le=\"0.25\"}"), 0);
    cr_assert_eq(scrape_value(text, "outpost_llm_time_to_first_token_seconds_bucket{model=\"@t/metric\",le=\"0.5\"}"), 1);
    cr_assert_eq(scrape_value(text, "outpost_inference_queue_wait_seconds_bucket{model=\"@t/metric\",le=\"0.00025\"}"), 1);
    free(text);
    teardown(m, set);
}

Test(model_metric, embedders_and_old_plugins_get_no_series_they_cannot_fill)
{
    op_plugin_set *set = load_dir(OUTPOST_TEST_PLUGIN_DIR, "echo");
    op_model *m = load(set, "echo", "@t/emb-metric", "text-embeddings", NULL);
    const outpost_host_api *h = &op_plugins_find(set, "echo")->host.api;
    h->model_metric((outpost_host_model *)(void *)m, OUTPOST_METRIC_TTFT_SECONDS, 1); /* dropped */
    h->model_metric((outpost_host_model *)(void *)m, OUTPOST_METRIC_BATCH_SIZE, 2);
    char *text = scrape();
    cr_assert_null(strstr(text, "outpost_llm_time_to_first_token_seconds_count{model=\"@t/emb-metric\"}"));
    cr_assert_null(strstr(text, "outpost_llm_kv_cache_capacity_tokens{model=\"@t/emb-metric\"}"));
    cr_assert_eq(scrape_value(text, "outpost_inference_batch_size_count{model=\"@t/emb-metric\"}"), 1);
    free(text);
    teardown(m, set);

    set = load_dir(OUTPOST_TEST_PLUGIN_DIR "/minor0", "echo_v0");
    m = load(set, "echo_v0", "@t/v0-metric", "text-generation", NULL);
    text = scrape();
    static const char *const families[] = {
        "outpost_inference_queue_depth", "outpost_inference_running",
        "outpost_llm_kv_cache_used_tokens", "outpost_llm_kv_cache_capacity_tokens",
        "outpost_inference_batch_size_count", "outpost_inference_queue_wait_seconds_count",
        "outpost_llm_time_to_first_token_seconds_count",
        "outpost_llm_inter_token_latency_seconds_count", "outpost_inference_prompt_tokens_total",
        "outpost_llm_generated_tokens_total"};
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++) {
        char line[160];
        snprintf(line, sizeof line, "%s{model=\"@t/v0-metric\"}", families[i]);
        cr_assert_null(strstr(text, line), "%s for a minor-0 plugin", line);
    }
    /* The host's own series are there, as for any model. */
    cr_assert(strstr(text, "outpost_inference_in_flight{model=\"@t/v0-metric\"}"));
    free(text);
    teardown(m, set);
}

Test(model_metric, count_tokens_only_where_the_plugin_has_it)
{
    op_plugin_set *set = load_dir(OUTPOST_TEST_PLUGIN_DIR, "echo");
    op_model *gen = load(set, "echo", "@t/count", "text-generation", NULL);
    op_model *emb = load(set, "echo", "@t/count-emb", "text-embeddings", NULL);
    long long n = -7;
    const char *b1 = "{\"prompt\":\"one two three\"}";
    cr_assert_eq(op_model_count_tokens(gen, b1, strlen(b1), &n), 0);
    cr_assert_eq(n, 3);
    const char *b2 = "{\"text\":[\"a b\",\"c\"]}";
    cr_assert_eq(op_model_count_tokens(emb, b2, strlen(b2), &n), 0);
    cr_assert_eq(n, 3);
    /* Input the plugin cannot count: -1, n untouched. */
    n = -7;
    const char *bad[] = {"{\"prompt\":5}", "not json", "{\"messages\":[]}"};
    for (int i = 0; i < 3; i++)
        cr_assert_eq(op_model_count_tokens(gen, bad[i], strlen(bad[i]), &n), -1, "%s", bad[i]);
    cr_assert_eq(n, -7);
    cr_assert_eq(op_model_count_tokens(NULL, b1, strlen(b1), &n), -1);
    op_model_unref(emb);
    teardown(gen, set);

    /* Minor 0: whatever lies past its struct_size is not read. */
    set = load_dir(OUTPOST_TEST_PLUGIN_DIR "/minor0", "echo_v0");
    op_model *old = load(set, "echo_v0", "@t/count-v0", "text-generation", NULL);
    cr_assert_null(op_plugins_find(set, "echo_v0")->count_tokens);
    cr_assert_eq(op_model_count_tokens(old, b1, strlen(b1), &n), -1);
    cr_assert_eq(n, -7);
    teardown(old, set);
}

/* What a streamed request delivered through on_emit. */
typedef struct seen {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char text[512];
    size_t len;
    int pieces;
    bool all_valid;
    int code;
    bool done;
} seen;

static int on_emit(void *p, const char *text, size_t len)
{
    seen *s = p;
    pthread_mutex_lock(&s->mu);
    if (!op_utf8_valid(text, len))
        s->all_valid = false;
    if (s->len + len < sizeof s->text) {
        memcpy(s->text + s->len, text, len);
        s->len += len;
    }
    s->pieces++;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

static void on_complete(void *p, const char *result, size_t len, int code, const char *message)
{
    (void)result, (void)len, (void)message;
    seen *s = p;
    pthread_mutex_lock(&s->mu);
    s->code = code;
    s->done = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void stream_through(op_model *m, const char *prompt, seen *s)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->all_valid = true;
    s->code = -1;
    char body[256];
    snprintf(body, sizeof body, "{\"prompt\":\"%s\"}", prompt);
    op_infer_callbacks cb = {s, on_emit, on_complete};
    op_infer *r = NULL;
    char err[128];
    cr_assert_eq(op_infer_submit(m, NULL, NULL, body, strlen(body), 1, &cb, &r, err, sizeof err), 0,
                 "%s", err);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 30;
    pthread_mutex_lock(&s->mu);
    while (!s->done && pthread_cond_timedwait(&s->cv, &s->mu, &until) == 0)
        ;
    pthread_mutex_unlock(&s->mu);
    cr_assert(s->done, "no completion");
    op_infer_release(r);
    s->text[s->len] = '\0';
}

Test(model_metric, pieces_cut_inside_characters_reach_the_caller_whole)
{
    op_plugin_set *set = load_dir(OUTPOST_TEST_PLUGIN_DIR, "echo");
    op_model *m = load(set, "echo", "@t/split", "text-generation", "split_utf8=1");
    seen s;
    /* Every byte is its own emit: 2 + 3 + 4-byte characters. */
    const char *text = "\xc3\xa9t\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80";
    stream_through(m, text, &s);
    cr_assert_eq(s.code, 0);
    cr_assert(s.all_valid, "a piece was not valid UTF-8");
    cr_assert_str_eq(s.text, text);
    /* Not one piece per byte: held bytes went out with their character. */
    cr_assert_lt(s.pieces, (int)strlen(text));
    op_model_unref(m);

    m = load(set, "echo", "@t/cut", "text-generation", "cut_utf8_end=1");
    stream_through(m, "ab", &s);
    cr_assert_eq(s.code, 0);
    cr_assert(s.all_valid);
    cr_assert_str_eq(s.text, "ab\xef\xbf\xbd", "the lone lead byte is flushed as U+FFFD");
    teardown(m, set);
}
