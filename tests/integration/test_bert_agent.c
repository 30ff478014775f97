/*
 * Integration tests for the bert plugin: the real outpostd with the real
 * build/plugins/bert.so and the shipped all-MiniLM-L6-v2, spoken to over
 * HTTP. Skipped, visibly, when models/ lacks the model (make models).
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test_support.h"

#ifndef OUTPOST_MODELS_DIR
#define OUTPOST_MODELS_DIR "models"
#endif
#ifndef OUTPOST_PLUGIN_DIR
#define OUTPOST_PLUGIN_DIR "build/plugins"
#endif
#define MINILM_DIR OUTPOST_MODELS_DIR "/all-MiniLM-L6-v2"
#define RUN_PATH "/ai/run/@local/all-minilm-l6-v2"

#define CONFIG                                                                          \
    "server:\n"                                                                         \
    "  listen: 127.0.0.1:@PORT@\n"                                                      \
    "  workers: 4\n"                                                                    \
    "  max_body_bytes: 1MiB\n"                                                          \
    "log:\n"                                                                            \
    "  level: info\n"                                                                   \
    "data_dir: @DIR@/var\n"                                                             \
    "plugins:\n"                                                                        \
    "  dirs: [" OUTPOST_PLUGIN_DIR "]\n"                                                \
    "accounts:\n"                                                                       \
    "  - id: local\n"                                                                   \
    "models:\n"                                                                         \
    "  - id: \"@local/all-minilm-l6-v2\"\n"                                             \
    "    plugin: bert\n"                                                                \
    "    task: text-embeddings\n"                                                       \
    "    path: " MINILM_DIR "\n"                                                        \
    "    options: {threads: 2, max_batch_tokens: 2048}\n"

static void start(ts_agent *a)
{
    if (access(MINILM_DIR "/model.safetensors", R_OK) != 0)
        cr_skip_test("%s not present (make models fetches it)", MINILM_DIR);
    if (access(OUTPOST_PLUGIN_DIR "/bert.so", R_OK) != 0)
        cr_skip_test("%s/bert.so not built", OUTPOST_PLUGIN_DIR);
    ts_agent_start(a, CONFIG);
}

static char *url(const ts_agent *a, const char *path)
{
    static __thread char buf[512];
    snprintf(buf, sizeof buf, "%s%s", a->base_url, path);
    return buf;
}

/* POSTs body, expects 200, returns the parsed "result". */
static json_t *embed_ok(const ts_agent *a, const char *body)
{
    ts_response r;
    ts_http(&r, "POST", url(a, RUN_PATH), body, NULL);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    json_error_t jerr;
    json_t *root = json_loads(r.body, 0, &jerr);
    cr_assert_not_null(root, "%s", jerr.text);
    json_t *result = json_incref(json_object_get(root, "result"));
    cr_assert(json_is_true(json_object_get(root, "success")));
    json_decref(root);
    ts_response_free(&r);
    return result;
}

static double dot(json_t *a, json_t *b)
{
    double s = 0;
    for (size_t i = 0; i < json_array_size(a); i++)
        s += json_number_value(json_array_get(a, i)) * json_number_value(json_array_get(b, i));
    return s;
}

static void expect_400(const ts_agent *a, const char *body, const char *message)
{
    ts_response r;
    ts_http(&r, "POST", url(a, RUN_PATH), body, NULL);
    cr_assert_eq(r.status, 400, "%s -> %ld %s", body, r.status, r.body);
    cr_assert(strstr(r.body, "\"success\":false"), "%s", r.body);
    cr_assert(strstr(r.body, "\"code\":5004"), "%s", r.body);
    cr_assert(strstr(r.body, message), "%s lacks %s", r.body, message);
    ts_response_free(&r);
}

Test(bert_agent, embeddings_shape_norm_and_similarity, .timeout = 120)
{
    ts_agent a;
    start(&a);
    json_t *res = embed_ok(&a, "{\"text\": [\"A man is playing a guitar.\", "
                               "\"Someone plays an acoustic guitar.\", "
                               "\"The stock market fell sharply today.\"]}");
    json_t *shape = json_object_get(res, "shape");
    cr_assert_eq(json_integer_value(json_array_get(shape, 0)), 3);
    cr_assert_eq(json_integer_value(json_array_get(shape, 1)), 384);
    cr_assert_str_eq(json_string_value(json_object_get(res, "pooling")), "mean");
    json_t *data = json_object_get(res, "data");
    cr_assert_eq(json_array_size(data), 3);
    for (size_t i = 0; i < 3; i++) {
        json_t *v = json_array_get(data, i);
        cr_assert_eq(json_array_size(v), 384);
        cr_assert(fabs(dot(v, v) - 1) < 1e-4, "row %zu not normalized: %f", i, dot(v, v));
    }
    double similar = dot(json_array_get(data, 0), json_array_get(data, 1));
    double unrelated = dot(json_array_get(data, 0), json_array_get(data, 2));
    cr_assert_gt(similar, unrelated + 0.3, "similar %.3f, unrelated %.3f", similar, unrelated);
    json_t *usage = json_object_get(res, "usage");
    cr_assert_gt(json_integer_value(json_object_get(usage, "prompt_tokens")), 20);
    cr_assert_eq(json_integer_value(json_object_get(usage, "total_tokens")),
                 json_integer_value(json_object_get(usage, "prompt_tokens")));
    cr_assert_eq(json_integer_value(json_object_get(usage, "truncated_inputs")), 0);
    json_decref(res);

    /* One string; and a long text, truncated at 256 tokens and reported. */
    res = embed_ok(&a, "{\"text\": \"hello world\"}");
    cr_assert_eq(json_integer_value(json_array_get(json_object_get(res, "shape"), 0)), 1);
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(res, "usage"), "prompt_tokens")),
                 4);
    json_decref(res);
    size_t n = 600 * 5 + 64;
    char *big = malloc(n);
    strcpy(big, "{\"text\": [\"");
    for (int i = 0; i < 600; i++)
        strcat(big, "word ");
    strcat(big, "\", \"short\"]}");
    res = embed_ok(&a, big);
    json_t *usage2 = json_object_get(res, "usage");
    cr_assert_eq(json_integer_value(json_object_get(usage2, "truncated_inputs")), 1);
    cr_assert_eq(json_integer_value(json_object_get(usage2, "prompt_tokens")), 256 + 3);
    json_decref(res);
    free(big);

    /* Catalog. */
    ts_response r;
    ts_http(&r, "GET", url(&a, "/v1/models"), NULL, NULL);
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.body, "@local/all-minilm-l6-v2"), "%s", r.body);
    ts_response_free(&r);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

Test(bert_agent, bad_input_is_a_400_with_a_reason, .timeout = 120)
{
    ts_agent a;
    start(&a);
    expect_400(&a, "{}", "'text' is required");
    expect_400(&a, "{\"text\": []}", "'text' must be a string or a non-empty array of strings");
    expect_400(&a, "{\"text\": 42}", "'text' must be a string or a non-empty array of strings");
    expect_400(&a, "{\"text\": [\"ok\", 7]}", "'text[1]' must be a string");
    expect_400(&a, "{\"text\": \"x\", \"pooling\": \"cls\"}", "'pooling' must be");
    /* Still serving. */
    json_decref(embed_ok(&a, "{\"text\": [\"still fine\"]}"));
    cr_assert_eq(ts_agent_stop(&a), 0);
}

typedef struct client {
    const ts_agent *a;
    int id;
    double first[4];            /* first value of each of its texts' embeddings */
    int ok;
} client;

static const char *const words[] = {"river", "mountain", "keyboard", "violin", "harbour",
                                    "satellite", "bakery", "glacier"};

static void client_body(int id, int k, char *buf, size_t len)
{
    snprintf(buf, len, "{\"text\": [\"the %s near the %s\", \"a %s and a %s\"]}", words[id % 8],
             words[(id + k) % 8], words[(id * 3 + k) % 8], words[(k + 5) % 8]);
}

static void *client_main(void *arg)
{
    client *c = arg;
    for (int k = 0; k < 4; k++) {
        char body[256];
        client_body(c->id, k, body, sizeof body);
        ts_response r;
        ts_http(&r, "POST", url(c->a, RUN_PATH), body, NULL);
        if (r.status == 200) {
            json_t *root = json_loads(r.body, 0, NULL);
            json_t *data = json_object_get(json_object_get(root, "result"), "data");
            if (json_array_size(data) == 2) {
                c->first[k] = json_number_value(json_array_get(json_array_get(data, 1), 0));
                c->ok++;
            }
            json_decref(root);
        }
        ts_response_free(&r);
    }
    return NULL;
}

Test(bert_agent, concurrent_clients_get_their_own_results, .timeout = 180)
{
    ts_agent a;
    start(&a);
    enum { N = 8 };
    client cl[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        cl[i] = (client){.a = &a, .id = i};
        pthread_create(&th[i], NULL, client_main, &cl[i]);
    }
    for (int i = 0; i < N; i++)
        pthread_join(th[i], NULL);
    /* Each answer equals the same request made alone (batching invariance
     * across requests), to float noise. */
    for (int i = 0; i < N; i++) {
        cr_assert_eq(cl[i].ok, 4, "client %d: %d of 4 answers", i, cl[i].ok);
        for (int k = 0; k < 4; k++) {
            char body[256];
            client_body(i, k, body, sizeof body);
            json_t *res = embed_ok(&a, body);
            double alone = json_number_value(
                json_array_get(json_array_get(json_object_get(res, "data"), 1), 0));
            cr_assert(fabs(alone - cl[i].first[k]) < 1e-5, "client %d request %d: %f vs %f", i,
                      k, cl[i].first[k], alone);
            json_decref(res);
        }
    }
    ts_response r;
    ts_http(&r, "GET", url(&a, "/metrics"), NULL, NULL);
    cr_assert(strstr(r.body, "model=\"@local/all-minilm-l6-v2\""), "no per-model series");
    ts_response_free(&r);
    cr_assert_eq(ts_agent_stop(&a), 0);
}
