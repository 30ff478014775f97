/*
 * Plugin host: loading the test plugins of tests/plugins (real .so files
 * built next to the tests), refusals with exact reasons and metrics, model
 * loads, and the request lifecycle against the echo plugin's worker thread.
 * Needs the `test_plugins` target built (OUTPOST_TEST_PLUGIN_DIR).
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "metrics/op_metrics.h"
#include "platform/pl_log.h"
#include "plugins/op_plugins.h"

#ifndef OUTPOST_TEST_PLUGIN_DIR
#error "OUTPOST_TEST_PLUGIN_DIR must name the directory of the built test plugins"
#endif

/* ======================================================================== */
/* Helpers                                                                   */
/* ======================================================================== */

static op_plugin_set *load_set(void)
{
    const char *dirs[] = {OUTPOST_TEST_PLUGIN_DIR};
    op_plugin_set *set = NULL;
    cr_assert_eq(op_plugins_load(dirs, 1, &set), 0);
    cr_assert_not_null(set);
    cr_assert_not_null(op_plugins_find(set, "echo"), "echo.so did not load from %s",
                       OUTPOST_TEST_PLUGIN_DIR);
    return set;
}

/* A model config on the stack; options are "key=value" strings. */
typedef struct test_model_cfg {
    op_config_model cfg;
    op_config_kv kv[8];
    char buf[8][64];
} test_model_cfg;

static void model_cfg(test_model_cfg *t, const char *id, const char *plugin, const char *task,
                      const char *const *options)
{
    memset(t, 0, sizeof(*t));
    t->cfg.id = (char *)id;
    t->cfg.plugin = (char *)plugin;
    t->cfg.task = (char *)task;
    size_t n = 0;
    for (; options && options[n]; n++) {
        snprintf(t->buf[n], sizeof(t->buf[n]), "%s", options[n]);
        char *eq = strchr(t->buf[n], '=');
        cr_assert_not_null(eq);
        *eq = '\0';
        t->kv[n].key = t->buf[n];
        t->kv[n].value = eq + 1;
    }
    t->cfg.options = t->kv;
    t->cfg.n_options = n;
}

static op_model *load_model(op_plugin_set *set, const char *id, const char *task,
                            const char *const *options)
{
    test_model_cfg t;
    model_cfg(&t, id, "echo", task, options);
    op_model *m = NULL;
    char err[256] = "";
    cr_assert_eq(op_model_load(set, &t.cfg, 1, &m, err, sizeof(err)), 0, "%s", err);
    cr_assert_not_null(m);
    return m;
}

/* What one request saw through its callbacks. */
typedef struct ctx {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int completions;
    int code;
    char *result;
    char *message;
    char pieces[64][32];
    int n_pieces;
    int emit_fail_at;   /* on_emit returns -1 for this piece number (1-based); 0 never */
} ctx;

static void ctx_init(ctx *c)
{
    memset(c, 0, sizeof(*c));
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    c->code = -1;
}

static void ctx_fini(ctx *c)
{
    free(c->result);
    free(c->message);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
}

static int on_emit(void *p, const char *text, size_t len)
{
    ctx *c = p;
    pthread_mutex_lock(&c->mu);
    int n = ++c->n_pieces;
    if (n <= 64)
        snprintf(c->pieces[n - 1], sizeof(c->pieces[0]), "%.*s", (int)len, text);
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return c->emit_fail_at && n >= c->emit_fail_at ? -1 : 0;
}

static void on_complete(void *p, const char *result, size_t len, int code, const char *message)
{
    ctx *c = p;
    pthread_mutex_lock(&c->mu);
    c->completions++;
    if (c->completions == 1) {
        c->code = code;
        c->result = result ? strndup(result, len) : NULL;
        c->message = message ? strdup(message) : NULL;
    }
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

/* Waits (up to a minute, so a bug fails instead of hanging) until the
 * completion arrived or n pieces were emitted. */
static void ctx_wait(ctx *c, int pieces)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 60;
    pthread_mutex_lock(&c->mu);
    while (c->completions == 0 && (pieces == 0 || c->n_pieces < pieces)) {
        if (pthread_cond_timedwait(&c->cv, &c->mu, &until) != 0)
            break;
    }
    bool ok = c->completions > 0 || (pieces > 0 && c->n_pieces >= pieces);
    pthread_mutex_unlock(&c->mu);
    cr_assert(ok, "timed out waiting for the plugin");
}

static op_infer *submit(op_model *m, const char *body, int stream, ctx *c)
{
    op_infer_callbacks cb = {c, on_emit, on_complete};
    op_infer *r = NULL;
    char err[256] = "";
    int rc = op_infer_submit(m, NULL, NULL, body, strlen(body), stream, &cb, &r, err, sizeof(err));
    cr_assert_eq(rc, 0, "submit refused: %d %s", rc, err);
    cr_assert_not_null(r);
    return r;
}

/* Submits, waits, releases: the whole round trip. */
static void run(op_model *m, const char *body, int stream, ctx *c)
{
    ctx_init(c);
    op_infer *r = submit(m, body, stream, c);
    ctx_wait(c, 0);
    cr_assert_eq(op_infer_completed(r), 1);
    op_infer_release(r);
}

static double metric(const char *name, op_metric_type type, const char *l1, const char *v1,
                     const char *l2, const char *v2)
{
    const char *labels[3] = {l1, l2, NULL};
    op_metric *f = NULL;
    if (type == OP_METRIC_COUNTER)
        f = op_metric_counter(name, "", l1 ? labels : NULL);
    else
        f = op_metric_gauge(name, "", l1 ? labels : NULL);
    cr_assert_not_null(f, "metric %s not registered with these labels", name);
    const char *values[2] = {v1, v2};
    return op_metric_value(op_metric_child_get(f, l1 ? values : NULL));
}

static json_t *parse(const char *text)
{
    json_error_t e;
    cr_assert_not_null(text);
    json_t *j = json_loads(text, JSON_DECODE_ANY, &e);
    cr_assert_not_null(j, "not JSON: %s (%s)", text, e.text);
    return j;
}

static void teardown(op_model *m, op_plugin_set *set)
{
    op_model_unref(m);
    op_plugin_set_unref(set);
    op_plugins_drain();
}

/* ======================================================================== */
/* Loading                                                                   */
/* ======================================================================== */

static const op_plugin_refusal *refusal_of(op_plugin_set *set, const char *file)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", OUTPOST_TEST_PLUGIN_DIR, file);
    for (size_t i = 0; i < op_plugins_refused_count(set); i++) {
        const op_plugin_refusal *r = op_plugins_refusal(set, i);
        if (strcmp(r->path, path) == 0)
            return r;
    }
    cr_assert_fail("%s was not refused", file);
    return NULL;
}

static void expect_refused(op_plugin_set *set, const char *file, const char *reason,
                           const char *message_prefix)
{
    const op_plugin_refusal *r = refusal_of(set, file);
    cr_expect_str_eq(r->reason, reason, "%s", file);
    cr_expect_eq(strncmp(r->message, message_prefix, strlen(message_prefix)), 0,
                 "%s: message '%s' does not start with '%s'", file, r->message, message_prefix);
}

Test(plugins, loads_echo_and_refuses_each_broken_plugin_with_its_reason)
{
    op_plugin_set *set = load_set();
    cr_expect_eq(op_plugins_count(set), 1);
    op_plugin *echo = op_plugins_find(set, "echo");
    cr_expect_eq(op_plugins_at(set, 0), echo);
    cr_expect_null(op_plugins_at(set, 1));
    cr_expect_str_eq(op_plugin_name(echo), "echo");
    cr_expect_str_eq(op_plugin_version(echo), "1.0.0");
    cr_expect_str_eq(op_plugin_path(echo), OUTPOST_TEST_PLUGIN_DIR "/echo.so");
    cr_expect_eq(op_plugin_serves_task(echo, "text-generation"), 1);
    cr_expect_eq(op_plugin_serves_task(echo, "text-embeddings"), 1);
    cr_expect_eq(op_plugin_serves_task(echo, "text-classification"), 0);
    cr_expect_null(op_plugins_find(set, "broken"));

    cr_expect_eq(op_plugins_refused_count(set), 9);
    expect_refused(set, "bad_abi_major.so", "abi_major", "plugin ABI major 99, host supports 1");
    expect_refused(set, "bad_signature.so", "signature",
                   "build signature 'outpost-abi-1;ptr=4;long=4;size_t=4;int=4;order=1234' "
                   "differs from the host's '" OUTPOST_PLUGIN_BUILD_SIGNATURE "'");
    expect_refused(set, "bad_name.so", "invalid", "plugin name 'Bad Name' is not [a-z0-9_-]{1,64}");
    char small[128];
    snprintf(small, sizeof(small), "descriptor struct_size 16 is smaller than the ABI 1.0 size %zu",
             (size_t)OUTPOST_PLUGIN_SIZE_V1_0);
    expect_refused(set, "small_struct.so", "invalid", small);
    expect_refused(set, "no_entry.so", "no_entry",
                   "no symbol 'outpost_plugin_entry' (not an Outpost plugin)");
    expect_refused(set, "init_fails.so", "init",
                   "plugin 'broken' init failed: no accelerator found");
    expect_refused(set, "null_fields.so", "invalid", "required field 'model_unload' is NULL");
    expect_refused(set, "echo_dup.so", "duplicate",
                   "plugin name 'echo' is already loaded from " OUTPOST_TEST_PLUGIN_DIR "/echo.so");
    expect_refused(set, "not_elf.so", "dlopen", "dlopen failed: ");

    cr_expect_eq(metric("outpost_plugins_loaded_total", OP_METRIC_COUNTER, "plugin", "echo", NULL,
                        NULL), 1.0);
    const char *reasons[] = {"abi_major", "signature", "no_entry", "init", "duplicate", "dlopen"};
    for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++)
        cr_expect_eq(metric("outpost_plugins_refused_total", OP_METRIC_COUNTER, "reason",
                            reasons[i], NULL, NULL), 1.0, "%s", reasons[i]);
    cr_expect_eq(metric("outpost_plugins_refused_total", OP_METRIC_COUNTER, "reason", "invalid",
                        NULL, NULL), 3.0);
    op_plugin_set_unref(set);
}

static char *read_fd(int fd)
{
    off_t end = lseek(fd, 0, SEEK_END);
    cr_assert_geq(end, 0);
    char *buf = calloc(1, (size_t)end + 1);
    cr_assert_eq(pread(fd, buf, (size_t)end, 0), end);
    return buf;
}

static const char *line_with(const char *log, const char *a, const char *b)
{
    for (const char *line = log; line && *line;) {
        const char *nl = strchr(line, '\n');
        size_t n = nl ? (size_t)(nl - line) : strlen(line);
        char *copy = strndup(line, n);
        bool hit = strstr(copy, a) && strstr(copy, b);
        free(copy);
        if (hit)
            return line;
        line = nl ? nl + 1 : NULL;
    }
    return NULL;
}

Test(plugins, logs_one_line_per_refusal_and_plugin_logs_carry_its_name)
{
    char tmpl[] = "/tmp/test_plugins_log_XXXXXX";
    int fd = mkstemp(tmpl);
    cr_assert_geq(fd, 0);
    unlink(tmpl);
    pl_log_configure(PL_LOG_DEBUG, PL_LOG_FORMAT_KV);
    pl_log_set_fd(fd);
    op_plugin_set *set = load_set();
    op_plugin_set_unref(set);
    pl_log_set_fd(-1);
    char *log = read_fd(fd);
    close(fd);
    cr_expect_not_null(line_with(log, "event=plugin.refused", "bad_abi_major.so"), "%s", log);
    const char *l = line_with(log, "event=plugin.refused", "bad_abi_major.so");
    cr_expect(l && strstr(l, "reason=abi_major") && strstr(l, "plugin ABI major 99, host supports 1"));
    cr_expect(strstr(log, "level=error") != NULL);
    cr_expect_not_null(line_with(log, "event=plugin.loaded", "plugin=echo"));
    cr_expect_not_null(line_with(log, "event=echo.init", "plugin=echo"), "%s", log);
    free(log);
}

Test(plugins, missing_dir_is_logged_not_fatal)
{
    const char *dirs[] = {"/nonexistent/outpost-plugins", OUTPOST_TEST_PLUGIN_DIR};
    op_plugin_set *set = NULL;
    cr_assert_eq(op_plugins_load(dirs, 2, &set), 0);
    cr_expect_not_null(op_plugins_find(set, "echo"));
    op_plugin_set_unref(set);

    cr_assert_eq(op_plugins_load(NULL, 0, &set), 0);
    cr_expect_eq(op_plugins_count(set), 0);
    cr_expect_null(op_plugins_find(set, "echo"));
    op_plugin_set_unref(set);
}

/* ======================================================================== */
/* Models                                                                    */
/* ======================================================================== */

static void expect_load_error(op_plugin_set *set, const char *plugin, const char *task,
                              const char *const *options, const char *expected)
{
    test_model_cfg t;
    model_cfg(&t, "@local/x", plugin, task, options);
    op_model *m = (op_model *)&t; /* must be reset to NULL */
    char err[256] = "";
    cr_expect_eq(op_model_load(set, &t.cfg, 1, &m, err, sizeof(err)), -1);
    cr_expect_null(m);
    cr_expect_str_eq(err, expected);
}

Test(plugins, model_load_errors_name_the_model_and_the_cause)
{
    op_plugin_set *set = load_set();
    expect_load_error(set, "llama", "text-generation", NULL,
                      "model '@local/x': plugin 'llama' not found");
    expect_load_error(set, "echo", "text-classification", NULL,
                      "model '@local/x': plugin 'echo' does not serve task 'text-classification'");
    const char *unknown[] = {"temperature=1", NULL};
    expect_load_error(set, "echo", "text-generation", unknown,
                      "model '@local/x': unknown option 'temperature' (echo supports delay_ms, "
                      "max_queue, misbehave)");
    const char *bad[] = {"delay_ms=soon", NULL};
    expect_load_error(set, "echo", "text-generation", bad,
                      "model '@local/x': option 'delay_ms' must be an integer >= 0, got 'soon'");
    cr_expect_eq(metric("outpost_model_load_failures_total", OP_METRIC_COUNTER, "model",
                        "@local/x", NULL, NULL), 4.0);
    cr_expect_eq(metric("outpost_models_loaded", OP_METRIC_GAUGE, NULL, NULL, NULL, NULL), 0.0);
    op_plugin_set_unref(set);
}

Test(plugins, model_load_reports_info_and_unload_drops_the_gauge)
{
    op_plugin_set *set = load_set();
    op_model *gen = load_model(set, "@local/echo", "text-generation", NULL);
    test_model_cfg t;
    const char *opts[] = {"max_queue=7", NULL};
    model_cfg(&t, "@local/embed", "echo", "text-embeddings", opts);
    t.cfg.description = "operator's words";
    op_model *emb = NULL;
    char err[256];
    cr_assert_eq(op_model_load(set, &t.cfg, 0, &emb, err, sizeof(err)), 0, "%s", err);

    cr_expect_str_eq(op_model_id(gen), "@local/echo");
    cr_expect_str_eq(op_model_task(gen), "text-generation");
    cr_expect_str_eq(op_model_plugin_name(gen), "echo");
    cr_expect_str_eq(op_model_info(gen)->description, "Echo test generator (repeats the prompt)");
    cr_expect_eq(op_model_info(gen)->dimensions, 0);
    cr_expect_eq(op_model_info(gen)->context_window, 4096);
    cr_expect_str_eq(op_model_info(emb)->description, "operator's words");
    cr_expect_eq(op_model_info(emb)->dimensions, 4);
    cr_expect_eq(op_model_info(emb)->max_queue, 7);
    cr_expect_eq(metric("outpost_models_loaded", OP_METRIC_GAUGE, NULL, NULL, NULL, NULL), 2.0);

    /* The set outlives its unref while models hold it. */
    op_plugin_set_unref(set);
    op_model_unref(gen);
    cr_expect_eq(metric("outpost_models_loaded", OP_METRIC_GAUGE, NULL, NULL, NULL, NULL), 1.0);
    op_model_unref(emb);
    cr_expect_eq(metric("outpost_models_loaded", OP_METRIC_GAUGE, NULL, NULL, NULL, NULL), 0.0);
}

/* ======================================================================== */
/* Requests                                                                  */
/* ======================================================================== */

Test(plugins, generation_echoes_the_prompt_with_usage)
{
    op_plugin_set *set = load_set();
    op_model *m = load_model(set, "@local/echo", "text-generation", NULL);
    ctx c;
    run(m, "{\"prompt\": \"hello  brave new\\nworld\"}", 0, &c);
    cr_assert_eq(c.code, 0, "%s", c.message);
    cr_expect_null(c.message);
    cr_expect_eq(c.n_pieces, 0, "a non-stream request emitted pieces");
    json_t *j = parse(c.result);
    cr_expect_str_eq(json_string_value(json_object_get(j, "response")), "hello brave new world");
    json_t *u = json_object_get(j, "usage");
    cr_expect_eq(json_integer_value(json_object_get(u, "prompt_tokens")), 4);
    cr_expect_eq(json_integer_value(json_object_get(u, "completion_tokens")), 4);
    cr_expect_eq(json_integer_value(json_object_get(u, "total_tokens")), 8);
    json_decref(j);
    ctx_fini(&c);

    run(m, "{\"prompt\": \"one two three four\", \"max_tokens\": 2}", 0, &c);
    j = parse(c.result);
    cr_expect_str_eq(json_string_value(json_object_get(j, "response")), "one two");
    cr_expect_eq(json_integer_value(json_object_get(json_object_get(j, "usage"),
                                                    "completion_tokens")), 2);
    json_decref(j);
    ctx_fini(&c);

    run(m,
        "{\"messages\": [{\"role\": \"system\", \"content\": \"be brief\"},"
        " {\"role\": \"user\", \"content\": \"what is up\"}]}",
        0, &c);
    j = parse(c.result);
    cr_expect_str_eq(json_string_value(json_object_get(j, "response")), "what is up");
    json_decref(j);
    ctx_fini(&c);

    cr_expect_eq(metric("outpost_inference_requests_total", OP_METRIC_COUNTER, "model",
                        "@local/echo", "code", "ok"), 3.0);
    cr_expect_eq(metric("outpost_inference_in_flight", OP_METRIC_GAUGE, "model", "@local/echo",
                        NULL, NULL), 0.0);
    teardown(m, set);
}

Test(plugins, streaming_emits_pieces_in_order)
{
    op_plugin_set *set = load_set();
    op_model *m = load_model(set, "@local/echo", "text-generation", NULL);
    ctx c;
    run(m, "{\"prompt\": \"alpha beta gamma delta\"}", 1, &c);
    cr_assert_eq(c.code, 0, "%s", c.message);
    cr_assert_eq(c.n_pieces, 4);
    cr_expect_str_eq(c.pieces[0], "alpha");
    cr_expect_str_eq(c.pieces[1], " beta");
    cr_expect_str_eq(c.pieces[2], " gamma");
    cr_expect_str_eq(c.pieces[3], " delta");
    json_t *j = parse(c.result);
    cr_expect_str_eq(json_string_value(json_object_get(j, "response")), "alpha beta gamma delta");
    cr_expect_eq(json_integer_value(json_object_get(json_object_get(j, "usage"), "total_tokens")),
                 8);
    json_decref(j);
    ctx_fini(&c);
    teardown(m, set);
}

Test(plugins, invalid_input_completes_with_invalid_argument_and_a_clear_message)
{
    op_plugin_set *set = load_set();
    op_model *gen = load_model(set, "@local/echo", "text-generation", NULL);
    op_model *emb = load_model(set, "@local/embed", "text-embeddings", NULL);
    const struct {
        op_model *m;
        const char *body;
        const char *message;
    } cases[] = {
        {gen, "{}", "either 'prompt' or 'messages' is required"},
        {gen, "{\"prompt\": 5}", "'prompt' must be a string"},
        {gen, "{\"messages\": {}}", "'messages' must be a non-empty array"},
        {gen, "{\"messages\": [{\"role\": \"user\", \"content\": 1}]}",
         "'messages[0].content' must be a string"},
        {gen, "{\"messages\": [{\"role\": \"system\", \"content\": \"x\"}]}",
         "'messages' has no message with role 'user'"},
        {gen, "{\"prompt\": \"x\", \"max_tokens\": 0}", "'max_tokens' must be a positive integer"},
        {gen, "{\"prompt\": \"x\", \"max_tokens\": \"10\"}",
         "'max_tokens' must be a positive integer"},
        {gen, "[1, 2]", "input must be a JSON object"},
        {gen, "{\"prompt\": ", "input must be a JSON object"},
        {emb, "{}", "'text' is required"},
        {emb, "{\"text\": 5}", "'text' must be a string or a non-empty array of strings"},
        {emb, "{\"text\": []}", "'text' must be a string or a non-empty array of strings"},
        {emb, "{\"text\": [\"a\", 2]}", "'text[1]' must be a string"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ctx c;
        run(cases[i].m, cases[i].body, 0, &c);
        cr_expect_eq(c.code, OUTPOST_ERR_INVALID_ARGUMENT, "%s", cases[i].body);
        cr_expect_null(c.result);
        cr_expect_str_eq(c.message, cases[i].message, "%s", cases[i].body);
        cr_expect_eq(c.completions, 1);
        ctx_fini(&c);
    }
    cr_expect_eq(metric("outpost_inference_requests_total", OP_METRIC_COUNTER, "model",
                        "@local/echo", "code", "invalid_argument"), 9.0);
    op_model_unref(emb);
    teardown(gen, set);
}

Test(plugins, embeddings_are_deterministic_with_the_workers_ai_shape)
{
    op_plugin_set *set = load_set();
    op_model *m = load_model(set, "@local/embed", "text-embeddings", NULL);
    ctx a, b;
    run(m, "{\"text\": \"hello world\"}", 0, &a);
    run(m, "{\"text\": [\"hello world\", \"goodbye\"]}", 0, &b);
    cr_assert_eq(a.code, 0, "%s", a.message);
    cr_assert_eq(b.code, 0, "%s", b.message);
    json_t *ja = parse(a.result), *jb = parse(b.result);
    cr_expect_eq(json_integer_value(json_array_get(json_object_get(ja, "shape"), 0)), 1);
    cr_expect_eq(json_integer_value(json_array_get(json_object_get(ja, "shape"), 1)), 4);
    cr_expect_eq(json_integer_value(json_array_get(json_object_get(jb, "shape"), 0)), 2);
    cr_expect_str_eq(json_string_value(json_object_get(ja, "pooling")), "mean");
    json_t *da = json_object_get(ja, "data"), *db = json_object_get(jb, "data");
    cr_assert_eq(json_array_size(da), 1);
    cr_assert_eq(json_array_size(db), 2);
    cr_expect(json_equal(json_array_get(da, 0), json_array_get(db, 0)), "same text, same vector");
    cr_expect(!json_equal(json_array_get(db, 0), json_array_get(db, 1)));
    double norm = 0;
    for (size_t i = 0; i < 4; i++) {
        double v = json_real_value(json_array_get(json_array_get(da, 0), i));
        norm += v * v;
    }
    cr_expect_float_eq(norm, 1.0, 1e-9);
    json_decref(ja);
    json_decref(jb);
    ctx_fini(&a);
    ctx_fini(&b);
    teardown(m, set);
}

static const char *long_prompt(void)
{
    return "{\"prompt\": \"w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 w13 w14 w15 w16 w17 w18 w19 "
           "w20 w21 w22 w23 w24 w25 w26 w27 w28 w29 w30 w31 w32 w33 w34 w35 w36 w37 w38 w39 "
           "w40\"}";
}

Test(plugins, cancel_mid_stream_completes_with_cancelled)
{
    op_plugin_set *set = load_set();
    const char *opts[] = {"delay_ms=20", NULL};
    op_model *m = load_model(set, "@local/echo", "text-generation", opts);
    ctx c;
    ctx_init(&c);
    op_infer *r = submit(m, long_prompt(), 1, &c);
    ctx_wait(&c, 2);
    op_infer_cancel(r);
    op_infer_cancel(r); /* idempotent */
    ctx_wait(&c, 0);
    cr_expect_eq(c.code, OUTPOST_ERR_CANCELLED);
    cr_expect_str_eq(c.message, "request cancelled");
    cr_expect_lt(c.n_pieces, 40);
    cr_expect_str_eq(c.pieces[0], "w1");
    op_infer_cancel(r); /* after completion: safe, no second callback */
    op_infer_release(r);
    cr_expect_eq(c.completions, 1);
    cr_expect_eq(op_http_status_for_error(c.code), 499);
    ctx_fini(&c);
    cr_expect_eq(metric("outpost_inference_requests_total", OP_METRIC_COUNTER, "model",
                        "@local/echo", "code", "cancelled"), 1.0);
    teardown(m, set);
}

Test(plugins, client_gone_during_emit_stops_the_request)
{
    op_plugin_set *set = load_set();
    op_model *m = load_model(set, "@local/echo", "text-generation", NULL);
    ctx c;
    ctx_init(&c);
    c.emit_fail_at = 3;
    op_infer *r = submit(m, long_prompt(), 1, &c);
    ctx_wait(&c, 0);
    cr_expect_eq(c.code, OUTPOST_ERR_CANCELLED);
    cr_expect_eq(c.n_pieces, 3);
    op_infer_release(r);
    ctx_fini(&c);
    teardown(m, set);
}

Test(plugins, cancel_of_a_queued_request_reaches_the_plugin)
{
    op_plugin_set *set = load_set();
    const char *opts[] = {"delay_ms=20", NULL};
    op_model *m = load_model(set, "@local/echo", "text-generation", opts);
    ctx a, b;
    ctx_init(&a);
    ctx_init(&b);
    op_infer *ra = submit(m, long_prompt(), 1, &a);
    op_infer *rb = submit(m, long_prompt(), 1, &b);
    op_infer_cancel(rb);
    op_infer_cancel(ra);
    ctx_wait(&a, 0);
    ctx_wait(&b, 0);
    cr_expect_eq(b.code, OUTPOST_ERR_CANCELLED);
    cr_expect_eq(b.n_pieces, 0);
    cr_expect_eq(a.code, OUTPOST_ERR_CANCELLED);
    op_infer_release(ra);
    op_infer_release(rb);
    ctx_fini(&a);
    ctx_fini(&b);
    teardown(m, set);
}

Test(plugins, release_before_completion_still_completes_once)
{
    op_plugin_set *set = load_set();
    const char *opts[] = {"delay_ms=5", NULL};
    op_model *m = load_model(set, "@local/echo", "text-generation", opts);
    ctx c;
    ctx_init(&c);
    op_infer *r = submit(m, "{\"prompt\": \"a b c d\"}", 1, &c);
    op_infer_release(r);
    ctx_wait(&c, 0);
    cr_expect_eq(c.code, 0);
    cr_expect_eq(c.n_pieces, 4);
    ctx_fini(&c);
    teardown(m, set);
}

Test(plugins, unload_with_a_request_in_flight_waits_for_it)
{
    op_plugin_set *set = load_set();
    const char *opts[] = {"delay_ms=30", NULL};
    op_model *m = load_model(set, "@local/echo", "text-generation", opts);
    ctx c;
    ctx_init(&c);
    op_infer *r = submit(m, "{\"prompt\": \"a b c d e\"}", 1, &c);
    /* Drop every owner ref: only the request keeps model and set alive. The
     * last ref then drops on the plugin's worker, inside request_complete(),
     * where model_unload (which joins that worker) must not run. */
    op_model_unref(m);
    op_plugin_set_unref(set);
    ctx_wait(&c, 0);
    cr_expect_eq(c.code, 0, "%s", c.message);
    json_t *j = parse(c.result);
    cr_expect_str_eq(json_string_value(json_object_get(j, "response")), "a b c d e");
    json_decref(j);
    op_infer_release(r);
    op_plugins_drain();
    cr_expect_eq(metric("outpost_models_loaded", OP_METRIC_GAUGE, NULL, NULL, NULL, NULL), 0.0);
    ctx_fini(&c);
}

Test(plugins, full_queue_refuses_with_resource_exhausted_and_no_callback)
{
    op_plugin_set *set = load_set();
    const char *opts[] = {"delay_ms=50", "max_queue=1", NULL};
    op_model *m = load_model(set, "@local/echo", "text-generation", opts);
    enum { N = 5 };
    ctx c[N];
    op_infer *r[N];
    int refused = 0;
    for (int i = 0; i < N; i++) {
        ctx_init(&c[i]);
        op_infer_callbacks cb = {&c[i], on_emit, on_complete};
        char err[128] = "";
        const char *body = long_prompt();
        int rc = op_infer_submit(m, NULL, NULL, body, strlen(body), 1, &cb, &r[i], err,
                                 sizeof(err));
        if (rc) {
            cr_expect_eq(rc, OUTPOST_ERR_RESOURCE_EXHAUSTED);
            cr_expect_str_eq(err, "echo queue is full (1 requests)");
            cr_expect_null(r[i]);
            refused++;
        }
    }
    /* One running plus one queued at most. */
    cr_expect_geq(refused, N - 2);
    for (int i = 0; i < N; i++) {
        if (r[i]) {
            op_infer_cancel(r[i]);
            ctx_wait(&c[i], 0);
            op_infer_release(r[i]);
        }
        cr_expect_eq(c[i].completions, r[i] ? 1 : 0);
        ctx_fini(&c[i]);
    }
    cr_expect_eq(metric("outpost_inference_requests_total", OP_METRIC_COUNTER, "model",
                        "@local/echo", "code", "resource_exhausted"), (double)refused);
    cr_expect_eq(op_http_status_for_error(OUTPOST_ERR_RESOURCE_EXHAUSTED), 429);
    teardown(m, set);
}

/* ======================================================================== */
/* A plugin that breaks the rules                                            */
/* ======================================================================== */

static void misbehaving(const char *mode, int expect_code, const char *expect_message)
{
    op_plugin_set *set = load_set();
    char opt[64];
    snprintf(opt, sizeof(opt), "misbehave=%s", mode);
    const char *opts[] = {opt, NULL};
    op_model *m = load_model(set, "@local/bad", "text-generation", opts);
    ctx c;
    run(m, "{\"prompt\": \"x\"}", 1, &c);
    cr_expect_eq(c.completions, 1, "%s", mode);
    cr_expect_eq(c.code, expect_code, "%s", mode);
    if (expect_message)
        cr_expect_str_eq(c.message, expect_message);
    else
        cr_expect_str_eq(c.result, "{\"response\":\"x\"}");
    cr_expect_eq(c.n_pieces, 0, "%s", mode);
    ctx_fini(&c);
    teardown(m, set);
}

Test(plugins, second_complete_is_ignored)
{
    misbehaving("double_complete", 0, NULL);
}

Test(plugins, emit_after_complete_is_ignored)
{
    misbehaving("emit_after_complete", 0, NULL);
}

Test(plugins, invalid_result_json_becomes_internal)
{
    misbehaving("bad_json", OUTPOST_ERR_INTERNAL, "the model returned an invalid result");
}

Test(plugins, complete_without_result_or_error_becomes_internal)
{
    misbehaving("no_result", OUTPOST_ERR_INTERNAL, "the model returned an invalid result");
}

/* ======================================================================== */
/* Concurrency                                                               */
/* ======================================================================== */

enum { THREADS = 4, PER_THREAD = 100 };

typedef struct worker_arg {
    op_model *m;
    int id;
    int failures;
} worker_arg;

static void *submitter(void *p)
{
    worker_arg *w = p;
    ctx *c = calloc(PER_THREAD, sizeof(ctx));
    op_infer **r = calloc(PER_THREAD, sizeof(op_infer *));
    char body[128], want[64];
    for (int i = 0; i < PER_THREAD; i++) {
        ctx_init(&c[i]);
        snprintf(body, sizeof(body), "{\"prompt\": \"t%d r%d\"}", w->id, i);
        op_infer_callbacks cb = {&c[i], on_emit, on_complete};
        char err[128];
        if (op_infer_submit(w->m, NULL, NULL, body, strlen(body), i % 2, &cb, &r[i], err,
                            sizeof(err)) != 0)
            w->failures++;
    }
    for (int i = 0; i < PER_THREAD; i++) {
        if (!r[i])
            continue;
        ctx_wait(&c[i], 0);
        snprintf(want, sizeof(want), "\"response\":\"t%d r%d\"", w->id, i);
        if (c[i].completions != 1 || c[i].code != 0 || !c[i].result ||
            !strstr(c[i].result, want) || c[i].n_pieces != (i % 2 ? 2 : 0))
            w->failures++;
        op_infer_release(r[i]);
        ctx_fini(&c[i]);
    }
    free(c);
    free(r);
    return NULL;
}

Test(plugins, concurrent_submitters_each_request_completes_exactly_once)
{
    op_plugin_set *set = load_set();
    const char *opts[] = {"max_queue=1000", NULL};
    op_model *m = load_model(set, "@local/echo", "text-generation", opts);
    pthread_t t[THREADS];
    worker_arg w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (worker_arg){m, i, 0};
        cr_assert_eq(pthread_create(&t[i], NULL, submitter, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        cr_expect_eq(w[i].failures, 0, "thread %d", i);
    }
    cr_expect_eq(metric("outpost_inference_requests_total", OP_METRIC_COUNTER, "model",
                        "@local/echo", "code", "ok"), (double)(THREADS * PER_THREAD));
    cr_expect_eq(metric("outpost_inference_in_flight", OP_METRIC_GAUGE, "model", "@local/echo",
                        NULL, NULL), 0.0);
    teardown(m, set);
}

/* ======================================================================== */
/* Error codes                                                               */
/* ======================================================================== */

Test(plugins, error_codes_map_to_http_statuses_and_names)
{
    const int status[] = {200, 500, 400, 404, 400, 429, 503, 499, 504};
    const char *names[] = {"ok", "internal", "invalid_argument", "not_found", "unsupported",
                           "resource_exhausted", "unavailable", "cancelled", "deadline_exceeded"};
    for (int c = 0; c <= 8; c++) {
        cr_expect_eq(op_http_status_for_error(c), status[c], "code %d", c);
        cr_expect_str_eq(op_error_code_name(c), names[c]);
    }
    cr_expect_eq(op_http_status_for_error(42), 500);
    cr_expect_eq(op_http_status_for_error(-1), 500);
    cr_expect_str_eq(op_error_code_name(42), "internal");
}
