/*
 * The Vectorize v2 REST API end to end: the real outpostd on a loopback
 * port, driven over HTTP under /client/v4/accounts/{account}/vectorize/v2.
 *
 * Covered: the seed's recommendation example (five 3-dimensional vectors,
 * cosine: the matches and scores the article shows, and the values as
 * inserted); every body shape of insert/upsert (NDJSON, {"vectors"}, a JSON
 * array, multipart/form-data, a JSON string of NDJSON) and
 * unparsable-behavior; insert keeps, upsert replaces; filters with every
 * operator, implicit AND and dotted keys, with and without metadata
 * indexes; namespaces; query by id; get_by_ids; delete_by_ids; list
 * pagination; metadata_index create/list/delete; every limit answered 400
 * with the limit named, and the 404/405/409 answers; account isolation and
 * tokens; text in through an index whose preset is a local embedder (the
 * echo test plugin, always; the seed's embeddings example with the bundled
 * all-MiniLM-L6-v2, skipped visibly without `make models`), and text
 * refused with 503 once the model is gone; kill -9 after acknowledged
 * upserts, then everything there after the restart; writers and readers at
 * once; damaged bodies; metrics; Cloudflare's Python SDK
 * (tests/sdk/cloudflare_vectorize.py, skipped visibly without the venv).
 *
 * Mutations apply asynchronously: every read after a write first polls info
 * until processedUpToMutation reaches the write's mutationId.
 */
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "platform/pl_hash.h"
#include "test_support.h"

#define PREFIX "/client/v4/accounts/local/vectorize/v2/indexes"

#define CONFIG_HEAD                                                                                \
    "server:\n  listen: 127.0.0.1:@PORT@\n  workers: 4\n"                                          \
    "plugins:\n  dirs: [@PLUGINS@]\naccounts:\n  - id: local\n  - id: other\n"                     \
    "models:\n"                                                                                    \
    "  - id: \"@local/emb\"\n    plugin: echo\n    task: text-embeddings\n"                        \
    "    aliases: [\"@cf/baai/bge-small-en-v1.5\"]\n    options: {dimensions: 16}\n"               \
    "  - id: \"@local/gen\"\n    plugin: echo\n    task: text-generation\n"

#define CONFIG CONFIG_HEAD "data_dir: @DIR@/var\n"

/* ------------------------------------------------------------------------ */
/* helpers                                                                   */
/* ------------------------------------------------------------------------ */

static size_t sink(char *p, size_t s, size_t n, void *ud)
{
    ts_response *r = ud;
    size_t k = s * n;
    char *nb = realloc(r->body, r->body_len + k + 1);
    cr_assert_not_null(nb);
    r->body = nb;
    memcpy(r->body + r->body_len, p, k);
    r->body_len += k;
    r->body[r->body_len] = '\0';
    return k;
}

/* A request with a body of len bytes and a Content-Type of our choosing
 * (ts_http always sends application/json). */
static void raw_http(ts_response *r, const char *method, const char *url, const char *ctype,
                     const char *body, size_t len)
{
    memset(r, 0, sizeof *r);
    CURL *c = curl_easy_init();
    cr_assert_not_null(c);
    struct curl_slist *hl = NULL;
    char h[256];
    snprintf(h, sizeof h, "Content-Type: %s", ctype);
    hl = curl_slist_append(hl, h);
    hl = curl_slist_append(hl, "Expect:");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)len);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 60000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    CURLcode rc = curl_easy_perform(c);
    cr_assert_eq(rc, CURLE_OK, "%s %s: %s", method, url, curl_easy_strerror(rc));
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    curl_slist_free_all(hl);
    curl_easy_cleanup(c);
    if (!r->body)
        r->body = calloc(1, 1);
}

static void call(const ts_agent *a, ts_response *r, const char *method, const char *path,
                 const char *body)
{
    char url[1024];
    snprintf(url, sizeof url, "%s%s", a->base_url, path);
    ts_http(r, method, url, body, NULL);
}

/* The envelope's result of a 200 answer (a new reference). */
static json_t *ok_result(ts_response *r, const char *what)
{
    cr_assert_eq(r->status, 200, "%s: status %ld: %s", what, r->status, r->body);
    json_t *env = json_loads(r->body, 0, NULL);
    cr_assert_not_null(env, "%s: not JSON: %s", what, r->body);
    cr_assert(json_is_true(json_object_get(env, "success")), "%s: %s", what, r->body);
    cr_assert_eq(json_array_size(json_object_get(env, "errors")), 0);
    json_t *res = json_incref(json_object_get(env, "result"));
    json_decref(env);
    ts_response_free(r);
    return res;
}

static json_t *ok(const ts_agent *a, const char *method, const char *path, const char *body)
{
    ts_response r;
    call(a, &r, method, path, body);
    char what[600];
    snprintf(what, sizeof what, "%s %s", method, path);
    return ok_result(&r, what);
}

/* An error answer: status, the envelope with success false, and a message
 * that contains want. */
static void expect_err_resp(ts_response *r, long status, const char *want, const char *what)
{
    cr_assert_eq(r->status, status, "%s: want %ld, got %ld: %s", what, status, r->status, r->body);
    json_t *env = json_loads(r->body, 0, NULL);
    cr_assert_not_null(env, "%s: not JSON: %s", what, r->body);
    cr_assert(json_is_false(json_object_get(env, "success")), "%s", r->body);
    cr_assert(json_is_null(json_object_get(env, "result")), "%s", r->body);
    const char *msg = json_string_value(
        json_object_get(json_array_get(json_object_get(env, "errors"), 0), "message"));
    cr_assert_not_null(msg, "%s", r->body);
    cr_assert(strstr(msg, want) != NULL, "%s: message '%s' does not name '%s'", what, msg, want);
    json_decref(env);
    ts_response_free(r);
}

static void expect_err(const ts_agent *a, const char *method, const char *path, const char *body,
                       long status, const char *want)
{
    ts_response r;
    call(a, &r, method, path, body);
    char what[600];
    snprintf(what, sizeof what, "%s %s", method, path);
    expect_err_resp(&r, status, want, what);
}

static void create_index(const ts_agent *a, const char *name, int dims, const char *metric)
{
    char body[256];
    snprintf(body, sizeof body,
             "{\"name\":\"%s\",\"description\":\"test\",\"config\":{\"dimensions\":%d,"
             "\"metric\":\"%s\"}}",
             name, dims, metric);
    json_t *res = ok(a, "POST", PREFIX, body);
    cr_assert_str_eq(json_string_value(json_object_get(res, "name")), name);
    json_decref(res);
}

static unsigned long long mutation_of(json_t *res)
{
    const char *m = json_string_value(json_object_get(res, "mutationId"));
    cr_assert_not_null(m, "no mutationId");
    char *end;
    unsigned long long v = strtoull(m, &end, 10);
    cr_assert(*end == '\0' && v > 0, "mutationId '%s'", m);
    return v;
}

/* POSTs a write body (ctype) to .../{name}/{op}; returns its mutation id. */
static unsigned long long write_vectors(const ts_agent *a, const char *name, const char *op,
                                        const char *ctype, const char *body)
{
    char url[512];
    snprintf(url, sizeof url, "%s" PREFIX "/%s/%s", a->base_url, name, op);
    ts_response r;
    raw_http(&r, "POST", url, ctype, body, strlen(body));
    json_t *res = ok_result(&r, url);
    unsigned long long m = mutation_of(res);
    json_decref(res);
    return m;
}

/* Polls info until processedUpToMutation >= id; returns the info. */
static json_t *wait_applied(const ts_agent *a, const char *name, unsigned long long id)
{
    char path[256];
    snprintf(path, sizeof path, PREFIX "/%s/info", name);
    for (int i = 0; i < 400; i++) {
        json_t *info = ok(a, "GET", path, NULL);
        const char *p = json_string_value(json_object_get(info, "processedUpToMutation"));
        if (p && strtoull(p, NULL, 10) >= id) {
            cr_assert(json_is_string(json_object_get(info, "processedUpToDatetime")));
            return info;
        }
        json_decref(info);
        struct timespec ts = {0, 25 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    cr_assert_fail("index %s never applied mutation %llu", name, id);
    return NULL;
}

static json_t *query(const ts_agent *a, const char *name, const char *body)
{
    char path[256];
    snprintf(path, sizeof path, PREFIX "/%s/query", name);
    return ok(a, "POST", path, body);
}

/* The ids of a query result, comma-separated in match order. */
static void match_ids(json_t *res, char *out, size_t cap)
{
    json_t *ms = json_object_get(res, "matches");
    cr_assert(json_is_array(ms));
    cr_assert_eq(json_integer_value(json_object_get(res, "count")),
                 (json_int_t)json_array_size(ms));
    out[0] = '\0';
    size_t i;
    json_t *m;
    json_array_foreach(ms, i, m)
    {
        size_t l = strlen(out);
        snprintf(out + l, cap - l, "%s%s", i ? "," : "",
                 json_string_value(json_object_get(m, "id")));
    }
}

/* The ids of a query result, sorted, comma-separated. */
static int cmp_str(const void *x, const void *y)
{
    return strcmp(*(const char *const *)x, *(const char *const *)y);
}

static void match_set(json_t *res, char *out, size_t cap)
{
    json_t *ms = json_object_get(res, "matches");
    size_t n = json_array_size(ms);
    const char *ids[128];
    cr_assert(n <= 128);
    for (size_t i = 0; i < n; i++)
        ids[i] = json_string_value(json_object_get(json_array_get(ms, i), "id"));
    qsort(ids, n, sizeof ids[0], cmp_str);
    out[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(out);
        snprintf(out + l, cap - l, "%s%s", i ? "," : "", ids[i]);
    }
}

/* ------------------------------------------------------------------------ */
/* the seed's recommendation example                                         */
/* ------------------------------------------------------------------------ */

static const char SEED_NDJSON[] =
    "{\"id\":\"1\",\"values\":[32.4,74.1,3.2],\"metadata\":{\"url\":\"/products/sku/13913913\"}}\n"
    "{\"id\":\"2\",\"values\":[15.1,19.2,15.8],\"metadata\":{\"url\":\"/products/sku/10148191\"}}\n"
    "{\"id\":\"3\",\"values\":[0.16,1.2,3.8],\"metadata\":{\"url\":\"/products/sku/97913813\"}}\n"
    "{\"id\":\"4\",\"values\":[75.1,67.1,29.9],\"metadata\":{\"url\":\"/products/sku/418313\"}}\n"
    "{\"id\":\"5\",\"values\":[58.8,6.7,3.4],\"metadata\":{\"url\":\"/products/sku/55519183\"}}\n";

Test(vectorize, seed_recommendation_example, .timeout = 60)
{
    ts_agent a;
    ts_agent_start(&a, CONFIG);
    create_index(&a, "tutorial-index", 3, "cosine");

    json_t *idx = ok(&a, "GET", PREFIX "/tutorial-index", NULL);
    json_t *cfg = json_object_get(idx, "config");
    cr_assert_eq(json_integer_value(json_object_get(cfg, "dimensions")), 3);
    cr_assert_str_eq(json_string_value(json_object_get(cfg, "metric")), "cosine");
    cr_assert_str_eq(json_string_value(json_object_get(idx, "description")), "test");
    const char *created = json_string_value(json_object_get(idx, "created_on"));
    cr_assert(created && strlen(created) == 24 && created[10] == 'T' && created[23] == 'Z',
              "created_on '%s' is not ISO 8601", created ? created : "(null)");
    cr_assert(json_is_string(json_object_get(idx, "modified_on")));
    json_decref(idx);

    unsigned long long m =
        write_vectors(&a, "tutorial-index", "insert", "application/x-ndjson", SEED_NDJSON);
    json_t *info = wait_applied(&a, "tutorial-index", m);
    cr_assert_eq(json_integer_value(json_object_get(info, "vectorCount")), 5);
    cr_assert_eq(json_integer_value(json_object_get(info, "dimensions")), 3);
    json_decref(info);

    json_t *res =
        query(&a, "tutorial-index", "{\"vector\":[54.8,5.5,3.1],\"topK\":3,\"returnValues\":true}");
    char ids[256];
    match_ids(res, ids, sizeof ids);
    cr_assert_str_eq(ids, "5,4,2");
    static const double scores[] = {0.999909, 0.789848, 0.611976};
    static const double values[3][3] = {{58.8, 6.7, 3.4}, {75.1, 67.1, 29.9}, {15.1, 19.2, 15.8}};
    json_t *ms = json_object_get(res, "matches");
    for (size_t i = 0; i < 3; i++) {
        json_t *mm = json_array_get(ms, i);
        double s = json_number_value(json_object_get(mm, "score"));
        cr_assert(fabs(s - scores[i]) < 2e-6, "match %zu: score %.7f, the seed shows %.6f", i, s,
                  scores[i]);
        json_t *v = json_object_get(mm, "values");
        cr_assert_eq(json_array_size(v), 3);
        for (size_t k = 0; k < 3; k++)
            cr_assert_eq((float)json_number_value(json_array_get(v, k)), (float)values[i][k],
                         "match %zu value %zu: %.9g", i, k,
                         json_number_value(json_array_get(v, k)));
        /* Values as inserted: 58.8, not 58.79999923706055. */
        cr_assert_null(json_object_get(mm, "metadata"));
        cr_assert_null(json_object_get(mm, "namespace"));
    }
    json_decref(res);
    ts_response r;
    call(&a, &r, "POST", PREFIX "/tutorial-index/query",
         "{\"vector\":[54.8,5.5,3.1],\"topK\":1,\"returnValues\":true}");
    cr_assert(strstr(r.body, "[58.8,6.7,3.4]") != NULL, "values not as inserted: %s", r.body);
    ts_response_free(&r);

    /* returnMetadata all (and its boolean form) returns the url. */
    res = query(&a, "tutorial-index",
                "{\"vector\":[54.8,5.5,3.1],\"topK\":1,\"returnMetadata\":\"all\"}");
    json_t *md = json_object_get(json_array_get(json_object_get(res, "matches"), 0), "metadata");
    cr_assert_str_eq(json_string_value(json_object_get(md, "url")), "/products/sku/55519183");
    cr_assert_null(json_object_get(json_array_get(json_object_get(res, "matches"), 0), "values"));
    json_decref(res);
    res = query(&a, "tutorial-index",
                "{\"vector\":[54.8,5.5,3.1],\"topK\":1,\"returnMetadata\":true}");
    md = json_object_get(json_array_get(json_object_get(res, "matches"), 0), "metadata");
    cr_assert_str_eq(json_string_value(json_object_get(md, "url")), "/products/sku/55519183");
    json_decref(res);
    /* topK defaults to 5. */
    res = query(&a, "tutorial-index", "{\"vector\":[1,1,1]}");
    cr_assert_eq(json_integer_value(json_object_get(res, "count")), 5);
    json_decref(res);
    /* Query by the id of a stored vector: itself first, score 1. */
    res = query(&a, "tutorial-index", "{\"vectorId\":\"5\",\"topK\":2}");
    match_ids(res, ids, sizeof ids);
    cr_assert_str_eq(ids, "5,4");
    cr_assert(fabs(json_number_value(json_object_get(
                       json_array_get(json_object_get(res, "matches"), 0), "score")) -
                   1.0) < 1e-5);
    json_decref(res);
    res = query(&a, "tutorial-index", "{\"id\":\"1\",\"topK\":1}");
    match_ids(res, ids, sizeof ids);
    cr_assert_str_eq(ids, "1");
    json_decref(res);
    expect_err(&a, "POST", PREFIX "/tutorial-index/query", "{\"vectorId\":\"nope\"}", 404, "nope");

    /* The list of indexes holds it. */
    json_t *list = ok(&a, "GET", PREFIX, NULL);
    cr_assert_eq(json_array_size(list), 1);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(list, 0), "name")),
                     "tutorial-index");
    json_decref(list);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

/* ------------------------------------------------------------------------ */
/* write bodies                                                              */
/* ------------------------------------------------------------------------ */

static long long vector_count(const ts_agent *a, const char *name, unsigned long long m)
{
    json_t *info = wait_applied(a, name, m);
    long long n = json_integer_value(json_object_get(info, "vectorCount"));
    json_decref(info);
    return n;
}

Test(vectorize, every_body_shape_and_unparsable_behavior, .timeout = 60)
{
    ts_agent a;
    ts_agent_start(&a, CONFIG);
    create_index(&a, "shapes", 2, "euclidean");
    unsigned long long m;
    m = write_vectors(
        &a, "shapes", "insert", "application/json",
        "{\"vectors\":[{\"id\":\"a\",\"values\":[1,2]},{\"id\":\"b\",\"values\":[3,4]}]}");
    cr_assert_eq(vector_count(&a, "shapes", m), 2);
    m = write_vectors(&a, "shapes", "insert", "application/json",
                      "[{\"id\":\"c\",\"values\":[5,6]}]");
    cr_assert_eq(vector_count(&a, "shapes", m), 3);
    /* One line of NDJSON is also one JSON object. */
    m = write_vectors(&a, "shapes", "insert", "application/x-ndjson",
                      "{\"id\":\"d\",\"values\":[7,8]}");
    cr_assert_eq(vector_count(&a, "shapes", m), 4);
    /* What Cloudflare's Python SDK sends for a str body: a JSON string. */
    m = write_vectors(&a, "shapes", "insert", "application/json",
                      "\"{\\\"id\\\":\\\"e\\\",\\\"values\\\":[9,10]}\\n"
                      "{\\\"id\\\":\\\"f\\\",\\\"values\\\":[11,12]}\\n\"");
    cr_assert_eq(vector_count(&a, "shapes", m), 6);
    /* Cloudflare's curl examples: --form vectors=@file.ndjson (CRLF). */
    m = write_vectors(&a, "shapes", "insert", "multipart/form-data; boundary=------XyZ",
                      "--------XyZ\r\n"
                      "Content-Disposition: form-data; name=\"vectors\"; filename=\"v.ndjson\"\r\n"
                      "Content-Type: application/octet-stream\r\n\r\n"
                      "{\"id\":\"g\",\"values\":[13,14]}\r\n"
                      "{\"id\":\"h\",\"values\":[15,16]}\r\n"
                      "\r\n--------XyZ--\r\n");
    cr_assert_eq(vector_count(&a, "shapes", m), 8);
    /* A quoted boundary, LF line ends, the vectors in the second part. */
    m = write_vectors(&a, "shapes", "upsert", "multipart/form-data; boundary=\"b1\"",
                      "--b1\nContent-Disposition: form-data; name=\"note\"\n\nhello\n"
                      "--b1\nContent-Disposition: form-data; name=\"vectors\"\n\n"
                      "{\"id\":\"i\",\"values\":[17,18]}\n--b1--\n");
    cr_assert_eq(vector_count(&a, "shapes", m), 9);

    /* unparsable-behavior: error (the default) names the line; discard
     * skips it. */
    const char *bad =
        "{\"id\":\"j\",\"values\":[1,1]}\nnot json\n{\"id\":\"k\",\"values\":[2,2]}\n";
    char url[256];
    snprintf(url, sizeof url, "%s" PREFIX "/shapes/insert", a.base_url);
    ts_response r;
    raw_http(&r, "POST", url, "application/x-ndjson", bad, strlen(bad));
    expect_err_resp(&r, 400, "line 2", "unparsable");
    snprintf(url, sizeof url, "%s" PREFIX "/shapes/insert?unparsable-behavior=error", a.base_url);
    raw_http(&r, "POST", url, "application/x-ndjson", bad, strlen(bad));
    expect_err_resp(&r, 400, "not valid JSON", "unparsable=error");
    snprintf(url, sizeof url, "%s" PREFIX "/shapes/insert?unparsable-behavior=maybe", a.base_url);
    raw_http(&r, "POST", url, "application/x-ndjson", bad, strlen(bad));
    expect_err_resp(&r, 400, "unparsable-behavior", "unparsable=maybe");
    snprintf(url, sizeof url, "%s" PREFIX "/shapes/insert?unparsable-behavior=discard", a.base_url);
    raw_http(&r, "POST", url, "application/x-ndjson", bad, strlen(bad));
    json_t *res = ok_result(&r, "discard");
    m = mutation_of(res);
    json_decref(res);
    cr_assert_eq(vector_count(&a, "shapes", m), 11);
    snprintf(url, sizeof url, "%s" PREFIX "/shapes/insert?unparsable-behavior=discard", a.base_url);
    raw_http(&r, "POST", url, "application/x-ndjson", "junk\n{{\n", 8);
    expect_err_resp(&r, 400, "2 unparsable lines were discarded", "all discarded");

    /* insert keeps an existing id; upsert replaces vector and metadata. */
    m = write_vectors(&a, "shapes", "insert", "application/x-ndjson",
                      "{\"id\":\"a\",\"values\":[100,100],\"metadata\":{\"v\":2}}");
    json_decref(wait_applied(&a, "shapes", m));
    json_t *got = ok(&a, "POST", PREFIX "/shapes/get_by_ids", "{\"ids\":[\"a\"]}");
    cr_assert_eq(json_array_size(got), 1);
    cr_assert_eq(
        json_number_value(json_array_get(json_object_get(json_array_get(got, 0), "values"), 0)),
        1.0);
    json_decref(got);
    m = write_vectors(&a, "shapes", "upsert", "application/x-ndjson",
                      "{\"id\":\"a\",\"values\":[100,100],\"metadata\":{\"v\":2,"
                      "\"pi\":3.141592653589793,\"tiny\":1e-300}}");
    cr_assert_eq(vector_count(&a, "shapes", m), 11);
    got = ok(&a, "POST", PREFIX "/shapes/get_by_ids", "{\"ids\":[\"a\"]}");
    json_t *v0 = json_array_get(got, 0);
    cr_assert_eq(json_number_value(json_array_get(json_object_get(v0, "values"), 0)), 100.0);
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(v0, "metadata"), "v")), 2);
    /* Metadata numbers are doubles and come back exactly. */
    cr_assert_eq(json_real_value(json_object_get(json_object_get(v0, "metadata"), "pi")),
                 3.141592653589793);
    cr_assert_eq(json_real_value(json_object_get(json_object_get(v0, "metadata"), "tiny")), 1e-300);
    json_decref(got);
    /* euclidean scores are distances: the closest first, 0 for itself. */
    res = query(&a, "shapes", "{\"vector\":[3,4],\"topK\":2}");
    char ids[128];
    match_ids(res, ids, sizeof ids);
    cr_assert_str_eq(ids, "b,k"); /* (3,4): b at 0, k (2,2) at 2.24, c (5,6) at 2.83 */
    cr_assert(fabs(json_number_value(json_object_get(
                  json_array_get(json_object_get(res, "matches"), 0), "score"))) < 1e-6);
    json_decref(res);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

/* ------------------------------------------------------------------------ */
/* filters, namespaces, metadata indexes                                     */
/* ------------------------------------------------------------------------ */

static const char FILTER_DATA[] =
    "{\"id\":\"m1\",\"values\":[1,0],\"metadata\":{\"genre\":\"drama\",\"year\":1994,"
    "\"rated\":true,\"info\":{\"lang\":\"en\"}}}\n"
    "{\"id\":\"m2\",\"values\":[0.9,0.1],\"metadata\":{\"genre\":\"comedy\",\"year\":2001,"
    "\"rated\":false,\"info\":{\"lang\":\"fr\"}}}\n"
    "{\"id\":\"m3\",\"values\":[0.8,0.2],\"metadata\":{\"genre\":\"drama\",\"year\":2010,"
    "\"rated\":true}}\n"
    "{\"id\":\"m4\",\"values\":[0.7,0.3],\"metadata\":{\"genre\":\"horror\",\"year\":1980}}\n"
    "{\"id\":\"m5\",\"values\":[0.6,0.4],\"metadata\":{\"year\":\"1999\"}}\n"
    "{\"id\":\"m6\",\"values\":[0.5,0.5]}\n";

static const struct {
    const char *filter;
    const char *ids; /* sorted */
} FILTER_CASES[] = {
    {"{\"genre\":\"drama\"}", "m1,m3"},
    {"{\"genre\":{\"$eq\":\"drama\"}}", "m1,m3"},
    {"{\"genre\":{\"$ne\":\"drama\"}}", "m2,m4,m5,m6"},
    {"{\"genre\":{\"$in\":[\"comedy\",\"horror\"]}}", "m2,m4"},
    {"{\"genre\":{\"$nin\":[\"comedy\",\"horror\"]}}", "m1,m3,m5,m6"},
    {"{\"year\":{\"$lt\":2001}}", "m1,m4"},
    {"{\"year\":{\"$lte\":2001}}", "m1,m2,m4"},
    {"{\"year\":{\"$gt\":2001}}", "m3"},
    {"{\"year\":{\"$gte\":2001}}", "m2,m3"},
    {"{\"year\":{\"$gte\":1990,\"$lt\":2005}}", "m1,m2"},
    {"{\"genre\":\"drama\",\"year\":{\"$gt\":2000}}", "m3"},
    {"{\"rated\":true}", "m1,m3"},
    {"{\"rated\":{\"$ne\":true}}", "m2,m4,m5,m6"},
    {"{\"info.lang\":\"fr\"}", "m2"},
    {"{\"year\":\"1999\"}", "m5"},
    {"{\"genre\":\"western\"}", ""},
};

static void check_filters(const ts_agent *a, const char *name, const char *when)
{
    for (size_t i = 0; i < sizeof FILTER_CASES / sizeof FILTER_CASES[0]; i++) {
        char body[512];
        snprintf(body, sizeof body, "{\"vector\":[1,0],\"topK\":100,\"filter\":%s}",
                 FILTER_CASES[i].filter);
        json_t *res = query(a, name, body);
        char ids[256];
        match_set(res, ids, sizeof ids);
        cr_assert_str_eq(ids, FILTER_CASES[i].ids, "%s: filter %s", when, FILTER_CASES[i].filter);
        json_decref(res);
    }
}

Test(vectorize, filters_with_every_operator_and_metadata_indexes, .timeout = 60)
{
    ts_agent a;
    ts_agent_start(&a, CONFIG);
    create_index(&a, "movies", 2, "cosine");
    unsigned long long m =
        write_vectors(&a, "movies", "upsert", "application/x-ndjson", FILTER_DATA);
    json_decref(wait_applied(&a, "movies", m));
    check_filters(&a, "movies", "without metadata indexes");

    /* Metadata indexes: create (backfilled from stored vectors), list, the
     * same answers, the indexed metadata only with returnMetadata indexed. */
    json_t *res = ok(&a, "POST", PREFIX "/movies/metadata_index/create",
                     "{\"propertyName\":\"genre\",\"indexType\":\"string\"}");
    mutation_of(res);
    json_decref(res);
    res = ok(&a, "POST", PREFIX "/movies/metadata_index/create",
             "{\"propertyName\":\"year\",\"indexType\":\"number\"}");
    json_decref(res);
    res = ok(&a, "POST", PREFIX "/movies/metadata_index/create",
             "{\"propertyName\":\"rated\",\"indexType\":\"boolean\"}");
    m = mutation_of(res);
    json_decref(res);
    json_decref(wait_applied(&a, "movies", m));
    json_t *list = ok(&a, "GET", PREFIX "/movies/metadata_index/list", NULL);
    json_t *mi = json_object_get(list, "metadataIndexes");
    cr_assert_eq(json_array_size(mi), 3);
    bool seen_genre = false;
    size_t i;
    json_t *e;
    json_array_foreach(mi, i, e)
    {
        if (strcmp(json_string_value(json_object_get(e, "propertyName")), "genre") == 0) {
            seen_genre = true;
            cr_assert_str_eq(json_string_value(json_object_get(e, "indexType")), "string");
        }
    }
    cr_assert(seen_genre);
    json_decref(list);
    check_filters(&a, "movies", "with metadata indexes");
    res = query(&a, "movies", "{\"vector\":[1,0],\"topK\":1,\"returnMetadata\":\"indexed\"}");
    json_t *md = json_object_get(json_array_get(json_object_get(res, "matches"), 0), "metadata");
    cr_assert_str_eq(json_string_value(json_object_get(md, "genre")), "drama");
    cr_assert_null(json_object_get(md, "info"), "not indexed, not returned");
    json_decref(res);

    /* Mistakes: duplicate, unknown type, deleting one that is not there. */
    expect_err(&a, "POST", PREFIX "/movies/metadata_index/create",
               "{\"propertyName\":\"genre\",\"indexType\":\"string\"}", 409, "genre");
    expect_err(&a, "POST", PREFIX "/movies/metadata_index/create",
               "{\"propertyName\":\"x\",\"indexType\":\"date\"}", 400, "indexType");
    expect_err(&a, "POST", PREFIX "/movies/metadata_index/create", "{\"indexType\":\"string\"}",
               400, "propertyName");
    res = ok(&a, "POST", PREFIX "/movies/metadata_index/delete", "{\"propertyName\":\"genre\"}");
    m = mutation_of(res);
    json_decref(res);
    json_decref(wait_applied(&a, "movies", m));
    list = ok(&a, "GET", PREFIX "/movies/metadata_index/list", NULL);
    cr_assert_eq(json_array_size(json_object_get(list, "metadataIndexes")), 2);
    json_decref(list);
    expect_err(&a, "POST", PREFIX "/movies/metadata_index/delete", "{\"propertyName\":\"genre\"}",
               404, "genre");
    check_filters(&a, "movies", "after a metadata index was deleted");

    /* Filter mistakes are 400s naming what is wrong. */
    expect_err(&a, "POST", PREFIX "/movies/query",
               "{\"vector\":[1,0],\"filter\":{\"year\":{\"$regex\":\"x\"}}}", 400, "$regex");
    expect_err(&a, "POST", PREFIX "/movies/query", "{\"vector\":[1,0],\"filter\":[1]}", 400,
               "filter");
    expect_err(&a, "POST", PREFIX "/movies/query",
               "{\"vector\":[1,0],\"filter\":{\"genre\":{\"$eq\":1,\"$eq\":2}}}", 400, "duplicate");
    cr_assert_eq(ts_agent_stop(&a), 0);
}

Test(vectorize, namespaces, .timeout = 60)
{
    ts_agent a;
    ts_agent_start(&a, CONFIG);
    create_index(&a, "ns", 2, "dot-product");
    unsigned long long m =
        write_vectors(&a, "ns", "upsert", "application/x-ndjson",
                      "{\"id\":\"a1\",\"values\":[1,0],\"namespace\":\"alpha\"}\n"
                      "{\"id\":\"a2\",\"values\":[0.5,0],\"namespace\":\"alpha\"}\n"
                      "{\"id\":\"b1\",\"values\":[2,0],\"namespace\":\"beta\"}\n"
                      "{\"id\":\"n1\",\"values\":[3,0]}\n");
    json_decref(wait_applied(&a, "ns", m));
    char ids[128];
    json_t *res = query(&a, "ns", "{\"vector\":[1,0],\"topK\":10,\"namespace\":\"alpha\"}");
    match_ids(res, ids, sizeof ids);
    cr_assert_str_eq(ids, "a1,a2");
    cr_assert_str_eq(json_string_value(json_object_get(
                         json_array_get(json_object_get(res, "matches"), 0), "namespace")),
                     "alpha");
    /* dot-product: the score is the dot product. */
    cr_assert(fabs(json_number_value(json_object_get(
                       json_array_get(json_object_get(res, "matches"), 0), "score")) -
                   1.0) < 1e-6);
    json_decref(res);
    res = query(&a, "ns", "{\"vector\":[1,0],\"topK\":10}");
    match_ids(res, ids, sizeof ids);
    cr_assert_str_eq(ids, "n1,b1,a1,a2");
    json_decref(res);
    res = query(&a, "ns", "{\"vector\":[1,0],\"topK\":10,\"namespace\":\"gamma\"}");
    cr_assert_eq(json_integer_value(json_object_get(res, "count")), 0);
    json_decref(res);
    /* An upsert into another namespace moves the id. */
    m = write_vectors(&a, "ns", "upsert", "application/x-ndjson",
                      "{\"id\":\"a2\",\"values\":[0.5,0],\"namespace\":\"beta\"}");
    json_decref(wait_applied(&a, "ns", m));
    res = query(&a, "ns", "{\"vector\":[1,0],\"topK\":10,\"namespace\":\"beta\"}");
    match_ids(res, ids, sizeof ids);
    cr_assert_str_eq(ids, "b1,a2");
    json_decref(res);
    json_t *got = ok(&a, "POST", PREFIX "/ns/get_by_ids", "{\"ids\":[\"a2\",\"n1\"]}");
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(got, 0), "namespace")),
                     "beta");
    cr_assert_null(json_object_get(json_array_get(got, 1), "namespace"));
    json_decref(got);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

/* ------------------------------------------------------------------------ */
/* get, delete, list                                                         */
/* ------------------------------------------------------------------------ */

Test(vectorize, get_delete_and_list_pages, .timeout = 60)
{
    ts_agent a;
    ts_agent_start(&a, CONFIG);
    create_index(&a, "pages", 2, "cosine");
    char *nd = NULL;
    size_t ndlen = 0;
    FILE *f = open_memstream(&nd, &ndlen);
    for (int i = 0; i < 25; i++)
        fprintf(f, "{\"id\":\"v%02d\",\"values\":[%d,1],\"metadata\":{\"n\":%d}}\n", i, i + 1, i);
    fclose(f);
    unsigned long long m = write_vectors(&a, "pages", "insert", "application/x-ndjson", nd);
    free(nd);
    cr_assert_eq(vector_count(&a, "pages", m), 25);

    /* get_by_ids: in the order asked, missing ids skipped, values and
     * metadata always there. */
    json_t *got =
        ok(&a, "POST", PREFIX "/pages/get_by_ids", "{\"ids\":[\"v07\",\"missing\",\"v03\"]}");
    cr_assert_eq(json_array_size(got), 2);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(got, 0), "id")), "v07");
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(got, 1), "id")), "v03");
    cr_assert_eq(json_array_size(json_object_get(json_array_get(got, 0), "values")), 2);
    cr_assert_eq(json_integer_value(
                     json_object_get(json_object_get(json_array_get(got, 0), "metadata"), "n")),
                 7);
    json_decref(got);

    /* list: pages of 10 in id order, each id once, a cursor to follow. */
    char path[512], seen[400] = "";
    const char *cursor = NULL;
    char cur[256] = "";
    int pages = 0, total = 0;
    for (;;) {
        if (cursor)
            snprintf(path, sizeof path, PREFIX "/pages/list?count=10&cursor=%s", cursor);
        else
            snprintf(path, sizeof path, PREFIX "/pages/list?count=10");
        json_t *pg = ok(&a, "GET", path, NULL);
        pages++;
        cr_assert_eq(json_integer_value(json_object_get(pg, "totalCount")), 25);
        json_t *vs = json_object_get(pg, "vectors");
        cr_assert_eq(json_integer_value(json_object_get(pg, "count")),
                     (json_int_t)json_array_size(vs));
        size_t i;
        json_t *v;
        json_array_foreach(vs, i, v)
        {
            size_t l = strlen(seen);
            snprintf(seen + l, sizeof seen - l, "%s,", json_string_value(json_object_get(v, "id")));
            total++;
        }
        bool trunc = json_is_true(json_object_get(pg, "isTruncated"));
        const char *next = json_string_value(json_object_get(pg, "nextCursor"));
        if (!trunc) {
            cr_assert(json_is_null(json_object_get(pg, "nextCursor")));
            json_decref(pg);
            break;
        }
        cr_assert_not_null(next);
        snprintf(cur, sizeof cur, "%s", next);
        cursor = cur;
        json_decref(pg);
        cr_assert(pages < 10);
    }
    cr_assert_eq(pages, 3);
    cr_assert_eq(total, 25);
    cr_assert_str_eq(seen, "v00,v01,v02,v03,v04,v05,v06,v07,v08,v09,v10,v11,v12,v13,v14,v15,"
                           "v16,v17,v18,v19,v20,v21,v22,v23,v24,");
    json_t *pg = ok(&a, "GET", PREFIX "/pages/list", NULL); /* default count 100 */
    cr_assert_eq(json_integer_value(json_object_get(pg, "count")), 25);
    cr_assert(json_is_false(json_object_get(pg, "isTruncated")));
    json_decref(pg);
    expect_err(&a, "GET", PREFIX "/pages/list?count=0", NULL, 400, "1000");
    expect_err(&a, "GET", PREFIX "/pages/list?count=1001", NULL, 400, "1000");
    expect_err(&a, "GET", PREFIX "/pages/list?cursor=zz", NULL, 400, "cursor");

    /* delete_by_ids: gone once applied; unknown ids ignored. */
    json_t *res = ok(&a, "POST", PREFIX "/pages/delete_by_ids",
                     "{\"ids\":[\"v00\",\"v01\",\"v02\",\"v03\",\"v04\",\"nope\"]}");
    m = mutation_of(res);
    json_decref(res);
    cr_assert_eq(vector_count(&a, "pages", m), 20);
    got = ok(&a, "POST", PREFIX "/pages/get_by_ids", "{\"ids\":[\"v00\",\"v04\",\"v05\"]}");
    cr_assert_eq(json_array_size(got), 1);
    json_decref(got);
    res = query(&a, "pages", "{\"vector\":[1,1],\"topK\":100}");
    cr_assert_eq(json_integer_value(json_object_get(res, "count")), 20);
    json_decref(res);
    expect_err(&a, "POST", PREFIX "/pages/delete_by_ids", "{\"ids\":[]}", 400, "ids");

    /* Deleting the index: gone from get and list, 404 after. */
    json_t *d = ok(&a, "DELETE", PREFIX "/pages", NULL);
    json_decref(d);
    expect_err(&a, "GET", PREFIX "/pages", NULL, 404, "pages");
    expect_err(&a, "GET", PREFIX "/pages/info", NULL, 404, "pages");
    expect_err(&a, "DELETE", PREFIX "/pages", NULL, 404, "pages");
    json_t *list = ok(&a, "GET", PREFIX, NULL);
    cr_assert_eq(json_array_size(list), 0);
    json_decref(list);
    /* The name can be used again, for a new empty index. */
    create_index(&a, "pages", 4, "euclidean");
    json_t *info = ok(&a, "GET", PREFIX "/pages/info", NULL);
    cr_assert_eq(json_integer_value(json_object_get(info, "vectorCount")), 0);
    cr_assert_eq(json_integer_value(json_object_get(info, "dimensions")), 4);
    json_decref(info);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

/* ------------------------------------------------------------------------ */
/* limits and errors                                                         */
/* ------------------------------------------------------------------------ */

/* A body of n NDJSON vectors of dim values (malloc'd). */
static char *many_vectors(int n, int dim)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    for (int i = 0; i < n; i++) {
        fprintf(f, "{\"id\":\"%d\",\"values\":[", i);
        for (int k = 0; k < dim; k++)
            fprintf(f, "%s%d", k ? "," : "", (i * 31 + k * 17) % 97 + 1);
        fprintf(f, "]}\n");
    }
    fclose(f);
    return buf;
}

static void expect_write_err(const ts_agent *a, const char *name, const char *body,
                             const char *want)
{
    char url[256];
    snprintf(url, sizeof url, "%s" PREFIX "/%s/upsert", a->base_url, name);
    ts_response r;
    raw_http(&r, "POST", url, "application/x-ndjson", body, strlen(body));
    expect_err_resp(&r, 400, want, body);
}

Test(vectorize, every_limit_is_a_400_that_names_it, .timeout = 60)
{
    ts_agent a;
    ts_agent_start(&a, CONFIG);
    create_index(&a, "lim", 3, "cosine");
    char buf[16384];

    /* Index creation. */
    expect_err(&a, "POST", PREFIX,
               "{\"name\":\"big\",\"config\":{\"dimensions\":1537,\"metric\":\"cosine\"}}", 400,
               "1536");
    expect_err(&a, "POST", PREFIX,
               "{\"name\":\"zero\",\"config\":{\"dimensions\":0,\"metric\":\"cosine\"}}", 400,
               "dimensions");
    expect_err(&a, "POST", PREFIX,
               "{\"name\":\"m\",\"config\":{\"dimensions\":3,\"metric\":\"manhattan\"}}", 400,
               "metric");
    expect_err(&a, "POST", PREFIX, "{\"name\":\"m\"}", 400, "config");
    expect_err(&a, "POST", PREFIX, "{\"config\":{\"dimensions\":3,\"metric\":\"cosine\"}}", 400,
               "name");
    memset(buf, 'a', 65);
    buf[65] = '\0';
    char body[20000];
    snprintf(body, sizeof body,
             "{\"name\":\"%s\",\"config\":{\"dimensions\":3,\"metric\":\"cosine\"}}", buf);
    expect_err(&a, "POST", PREFIX, body, 400, "64");
    expect_err(&a, "POST", PREFIX,
               "{\"name\":\"Bad_Name!\",\"config\":{\"dimensions\":3,\"metric\":\"cosine\"}}", 400,
               "name");
    memset(buf, 'd', 1025);
    buf[1025] = '\0';
    snprintf(body, sizeof body,
             "{\"name\":\"desc\",\"description\":\"%s\",\"config\":{\"dimensions\":3,\"metric\":"
             "\"cosine\"}}",
             buf);
    expect_err(&a, "POST", PREFIX, body, 400, "1024");
    expect_err(&a, "POST", PREFIX,
               "{\"name\":\"lim\",\"config\":{\"dimensions\":3,\"metric\":\"cosine\"}}", 409,
               "lim");
    expect_err(&a, "POST", PREFIX, "{\"name\":", 400, "not valid JSON");
    expect_err(&a, "POST", PREFIX, "[1]", 400, "JSON object");

    /* Vectors. */
    memset(buf, 'i', 65);
    buf[65] = '\0';
    snprintf(body, sizeof body, "{\"id\":\"%s\",\"values\":[1,2,3]}", buf);
    expect_write_err(&a, "lim", body, "64 bytes");
    expect_write_err(&a, "lim", "{\"id\":\"\",\"values\":[1,2,3]}", "64 bytes");
    expect_write_err(&a, "lim", "{\"id\":7,\"values\":[1,2,3]}", "'id'");
    expect_write_err(&a, "lim", "{\"id\":\"x\",\"values\":[1,2]}",
                     "has 2 dimensions; the index has 3");
    expect_write_err(&a, "lim", "{\"id\":\"x\",\"values\":[1,2,3,4]}", "the index has 3");
    expect_write_err(&a, "lim", "{\"id\":\"x\",\"values\":[1,\"2\",3]}", "values[1]");
    expect_write_err(&a, "lim", "{\"id\":\"x\",\"values\":[1,1e39,3]}", "float32");
    expect_write_err(&a, "lim", "{\"id\":\"x\"}", "'values' is required");
    expect_write_err(&a, "lim", "{\"id\":\"x\",\"text\":\"hello\"}", "'text'");
    expect_write_err(&a, "lim", "{\"id\":\"x\",\"values\":[1,2,3],\"metadata\":[1]}", "metadata");
    memset(buf, 'n', 65);
    buf[65] = '\0';
    snprintf(body, sizeof body, "{\"id\":\"x\",\"values\":[1,2,3],\"namespace\":\"%s\"}", buf);
    expect_write_err(&a, "lim", body, "64 bytes");
    memset(buf, 'm', 10300);
    buf[10300] = '\0';
    snprintf(body, sizeof body, "{\"id\":\"x\",\"values\":[1,2,3],\"metadata\":{\"k\":\"%s\"}}",
             buf);
    expect_write_err(&a, "lim", body, "10240 bytes (10 KiB)");
    expect_write_err(&a, "lim", "", "no vectors");
    expect_write_err(
        &a, "lim", "{\"id\":\"a\",\"values\":[1,2,3]}\n{\"id\":\"b\",\"values\":[1,2]}", "line 2");
    char *too_many = many_vectors(5001, 3);
    expect_write_err(&a, "lim", too_many, "5000 vectors per request");
    free(too_many);
    char *just_enough = many_vectors(5000, 3);
    unsigned long long m = write_vectors(&a, "lim", "upsert", "application/x-ndjson", just_enough);
    free(just_enough);
    cr_assert_eq(vector_count(&a, "lim", m), 5000);

    /* Queries. */
    expect_err(&a, "POST", PREFIX "/lim/query", "{\"vector\":[1,2,3],\"topK\":101}", 400, "100");
    expect_err(&a, "POST", PREFIX "/lim/query", "{\"vector\":[1,2,3],\"topK\":0}", 400, "topK");
    expect_err(&a, "POST", PREFIX "/lim/query", "{\"vector\":[1,2,3],\"topK\":2.5}", 400, "topK");
    expect_err(&a, "POST", PREFIX "/lim/query",
               "{\"vector\":[1,2,3],\"topK\":21,\"returnValues\":true}", 400, "at most 20");
    expect_err(&a, "POST", PREFIX "/lim/query",
               "{\"vector\":[1,2,3],\"topK\":21,\"returnMetadata\":\"all\"}", 400, "at most 20");
    json_t *res =
        query(&a, "lim", "{\"vector\":[1,2,3],\"topK\":100,\"returnMetadata\":\"indexed\"}");
    cr_assert_eq(json_integer_value(json_object_get(res, "count")), 100);
    json_decref(res);
    res = query(&a, "lim", "{\"vector\":[1,2,3],\"topK\":20,\"returnValues\":true}");
    cr_assert_eq(json_integer_value(json_object_get(res, "count")), 20);
    json_decref(res);
    expect_err(&a, "POST", PREFIX "/lim/query", "{\"vector\":[1,2]}", 400, "the index has 3");
    expect_err(&a, "POST", PREFIX "/lim/query", "{\"topK\":3}", 400, "exactly one of");
    expect_err(&a, "POST", PREFIX "/lim/query", "{\"vector\":[1,2,3],\"vectorId\":\"1\"}", 400,
               "exactly one of");
    expect_err(&a, "POST", PREFIX "/lim/query", "{\"vector\":[1,2,3],\"returnMetadata\":\"some\"}",
               400, "returnMetadata");
    expect_err(&a, "POST", PREFIX "/lim/query", "{\"text\":\"hello\"}", 400, "'text'");
    expect_err(&a, "POST", PREFIX "/lim/query", "{\"vector\":[1,2,3],\"namespace\":5}", 400,
               "namespace");
    /* A filter whose compact JSON is 2048 bytes or more. */
    memset(buf, 'f', 2100);
    buf[2100] = '\0';
    snprintf(body, sizeof body, "{\"vector\":[1,2,3],\"filter\":{\"k\":\"%s\"}}", buf);
    expect_err(&a, "POST", PREFIX "/lim/query", body, 400, "2048");
    expect_err(&a, "POST", PREFIX "/lim/query", "{\"vector\":[1,2,3]", 400, "not valid JSON");

    /* ids per get_by_ids / delete_by_ids. */
    FILE *f = fmemopen(body, sizeof body, "w");
    fprintf(f, "{\"ids\":[");
    for (int i = 0; i < 1001; i++)
        fprintf(f, "%s\"%d\"", i ? "," : "", i);
    fprintf(f, "]}");
    fputc('\0', f);
    fclose(f);
    expect_err(&a, "POST", PREFIX "/lim/get_by_ids", body, 400, "1000 ids");
    expect_err(&a, "POST", PREFIX "/lim/delete_by_ids", body, 400, "1000 ids");
    expect_err(&a, "POST", PREFIX "/lim/get_by_ids", "{\"ids\":[1]}", 400, "ids[0]");

    /* Unknown index, route, method. */
    expect_err(&a, "POST", PREFIX "/nope/query", "{\"vector\":[1,2,3]}", 404, "nope");
    expect_err(&a, "GET", PREFIX "/nope", NULL, 404, "nope");
    expect_err(&a, "GET", PREFIX "/lim/bogus", NULL, 404, "no route");
    expect_err(&a, "GET", "/client/v4/accounts/local/vectorize/v2/other", NULL, 404, "no route");
    expect_err(&a, "GET", PREFIX "/lim/query", NULL, 405, "POST");
    expect_err(&a, "PUT", PREFIX, "{}", 405, "GET, POST");
    expect_err(&a, "POST", PREFIX "/lim/info", "{}", 405, "GET");

    /* The index still answers after all that. */
    res = query(&a, "lim", "{\"vector\":[1,1,1],\"topK\":1}");
    cr_assert_eq(json_integer_value(json_object_get(res, "count")), 1);
    json_decref(res);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

/* Hostile bodies: truncations and byte flips of valid ones never take the
 * agent down, and each is answered (200 or 4xx). */
Test(vectorize, damaged_bodies_are_answered, .timeout = 120)
{
    ts_agent a;
    ts_agent_start(&a, CONFIG);
    create_index(&a, "fuzz", 3, "cosine");
    static const char *const bodies[] = {
        SEED_NDJSON,
        "{\"vectors\":[{\"id\":\"a\",\"values\":[1,2,3],\"namespace\":\"n\",\"metadata\":{\"k\":[1,"
        "{\"x\":null}]}}]}",
        "--b\r\nContent-Disposition: form-data; "
        "name=\"vectors\"\r\n\r\n{\"id\":\"q\",\"values\":[1,2,3]}\r\n--b--\r\n",
    };
    static const char *const ctypes[] = {"application/x-ndjson", "application/json",
                                         "multipart/form-data; boundary=b"};
    unsigned seed = 12345;
    char url[256];
    snprintf(url, sizeof url, "%s" PREFIX "/fuzz/upsert", a.base_url);
    for (size_t b = 0; b < 3; b++) {
        size_t len = strlen(bodies[b]);
        char *copy = malloc(len + 1);
        for (size_t cut = 0; cut < len; cut += 7) {
            ts_response r;
            raw_http(&r, "POST", url, ctypes[b], bodies[b], cut);
            cr_assert(r.status == 200 || r.status == 400, "cut %zu: %ld %s", cut, r.status, r.body);
            ts_response_free(&r);
        }
        for (int k = 0; k < 60; k++) {
            memcpy(copy, bodies[b], len + 1);
            for (int f = 0; f < 3; f++) {
                seed = seed * 1103515245u + 12345u;
                copy[(seed >> 8) % len] = (char)(seed >> 20);
            }
            ts_response r;
            raw_http(&r, "POST", url, ctypes[b], copy, len);
            cr_assert(r.status == 200 || r.status == 400, "flip: %ld %s", r.status, r.body);
            ts_response_free(&r);
        }
        free(copy);
    }
    static const char *const queries[] = {
        "{\"vector\":[1,2,3],\"topK\":3,\"filter\":{\"a.b\":{\"$in\":[1,\"x\",true,null]}},"
        "\"returnMetadata\":\"all\",\"namespace\":\"n\"}",
        "{\"vectorId\":\"1\",\"topK\":5,\"returnValues\":true}",
    };
    snprintf(url, sizeof url, "%s" PREFIX "/fuzz/query", a.base_url);
    for (size_t q = 0; q < 2; q++) {
        size_t len = strlen(queries[q]);
        char *copy = malloc(len + 1);
        for (int k = 0; k < 150; k++) {
            memcpy(copy, queries[q], len + 1);
            seed = seed * 1103515245u + 12345u;
            size_t cut = k < 50 ? (seed >> 4) % len : len;
            for (int f = 0; k >= 50 && f < 2; f++) {
                seed = seed * 1103515245u + 12345u;
                copy[(seed >> 8) % len] = (char)(seed >> 20);
            }
            ts_response r;
            raw_http(&r, "POST", url, "application/json", copy, cut);
            cr_assert(r.status == 200 || r.status == 400 || r.status == 404, "%ld %s", r.status,
                      r.body);
            ts_response_free(&r);
        }
        free(copy);
    }
    json_t *info = ok(&a, "GET", PREFIX "/fuzz/info", NULL);
    json_decref(info);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

/* ------------------------------------------------------------------------ */
/* accounts and tokens                                                       */
/* ------------------------------------------------------------------------ */

Test(vectorize, accounts_are_separate_and_tokens_checked, .timeout = 60)
{
    char h1[PL_SHA256_HEX_LEN + 1], h2[PL_SHA256_HEX_LEN + 1];
    pl_sha256_hex("tok-a", 5, h1);
    pl_sha256_hex("tok-b", 5, h2);
    char cfg[1024];
    snprintf(cfg, sizeof cfg,
             "server:\n  listen: 127.0.0.1:@PORT@\n  workers: 2\ndata_dir: @DIR@/var\n"
             "accounts:\n  - id: a\n    tokens: [{name: t, sha256: \"%s\"}]\n"
             "  - id: b\n    tokens: [{name: t, sha256: \"%s\"}]\n",
             h1, h2);
    ts_agent a;
    ts_agent_start(&a, cfg);
    char url[256];
    const char *ha[] = {"Authorization: Bearer tok-a", NULL};
    const char *hb[] = {"Authorization: Bearer tok-b", NULL};
    const char *bad[] = {"Authorization: Bearer nope", NULL};
    ts_response r;
    snprintf(url, sizeof url, "%s/client/v4/accounts/a/vectorize/v2/indexes", a.base_url);
    ts_http(&r, "POST", url,
            "{\"name\":\"same\",\"config\":{\"dimensions\":2,\"metric\":\"cosine\"}}", ha);
    cr_assert_eq(r.status, 200, "%s", r.body);
    ts_response_free(&r);
    ts_http(&r, "GET", url, NULL, bad);
    cr_assert_eq(r.status, 401, "%s", r.body);
    ts_response_free(&r);
    ts_http(&r, "GET", url, NULL, hb); /* b's token on a's path */
    cr_assert_eq(r.status, 403, "%s", r.body);
    ts_response_free(&r);
    /* The same name in account b is another index. */
    snprintf(url, sizeof url, "%s/client/v4/accounts/b/vectorize/v2/indexes", a.base_url);
    ts_http(&r, "GET", url, NULL, hb);
    json_t *list = ok_result(&r, "list b");
    cr_assert_eq(json_array_size(list), 0);
    json_decref(list);
    ts_http(&r, "POST", url,
            "{\"name\":\"same\",\"config\":{\"dimensions\":5,\"metric\":\"euclidean\"}}", hb);
    cr_assert_eq(r.status, 200, "%s", r.body);
    ts_response_free(&r);
    snprintf(url, sizeof url, "%s/client/v4/accounts/a/vectorize/v2/indexes/same", a.base_url);
    ts_http(&r, "GET", url, NULL, ha);
    json_t *idx = ok_result(&r, "get a");
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(idx, "config"), "dimensions")),
                 2);
    json_decref(idx);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

/* ------------------------------------------------------------------------ */
/* text in                                                                   */
/* ------------------------------------------------------------------------ */

Test(vectorize, preset_of_a_local_embedder_takes_text, .timeout = 60)
{
    ts_agent a;
    ts_agent_start(&a, CONFIG);
    json_t *res =
        ok(&a, "POST", PREFIX, "{\"name\":\"texts\",\"config\":{\"preset\":\"@local/emb\"}}");
    json_t *cfg = json_object_get(res, "config");
    cr_assert_eq(json_integer_value(json_object_get(cfg, "dimensions")), 16);
    cr_assert_str_eq(json_string_value(json_object_get(cfg, "metric")), "cosine");
    cr_assert_str_eq(json_string_value(json_object_get(cfg, "preset")), "@local/emb");
    json_decref(res);
    unsigned long long m = write_vectors(
        &a, "texts", "upsert", "application/x-ndjson",
        "{\"id\":\"1\",\"text\":\"This is a story about an orange cloud\"}\n"
        "{\"id\":\"2\",\"text\":\"This is a story about a llama\",\"metadata\":{\"k\":1}}\n"
        "{\"id\":\"3\",\"text\":\"This is a story about a hugging emoji\"}\n"
        "{\"id\":\"4\",\"values\":[1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]}\n");
    cr_assert_eq(vector_count(&a, "texts", m), 4);
    /* The echo embedder maps a text to a fixed vector: the same text finds
     * its own vector with score 1. */
    res = query(&a, "texts",
                "{\"text\":\"This is a story about a llama\",\"topK\":1,"
                "\"returnMetadata\":\"all\"}");
    char ids[64];
    match_ids(res, ids, sizeof ids);
    cr_assert_str_eq(ids, "2");
    json_t *m0 = json_array_get(json_object_get(res, "matches"), 0);
    cr_assert(fabs(json_number_value(json_object_get(m0, "score")) - 1.0) < 1e-5);
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(m0, "metadata"), "k")), 1);
    json_decref(res);
    /* The stored vector is the model's embedding of the text. */
    json_t *emb = ok(&a, "POST", "/client/v4/accounts/local/ai/run/@local/emb",
                     "{\"text\":[\"This is a story about an orange cloud\"]}");
    json_t *row = json_array_get(json_object_get(emb, "data"), 0);
    json_t *got = ok(&a, "POST", PREFIX "/texts/get_by_ids", "{\"ids\":[\"1\"]}");
    json_t *vals = json_object_get(json_array_get(got, 0), "values");
    cr_assert_eq(json_array_size(vals), 16);
    for (size_t k = 0; k < 16; k++)
        cr_assert(fabs(json_number_value(json_array_get(vals, k)) -
                       json_number_value(json_array_get(row, k))) < 1e-5,
                  "value %zu", k);
    json_decref(got);
    json_decref(emb);

    /* A Cloudflare preset aliased to the local model takes text too. */
    res = ok(&a, "POST", PREFIX,
             "{\"name\":\"aliased\",\"config\":{\"preset\":\"@cf/baai/bge-small-en-v1.5\"}}");
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(res, "config"), "dimensions")),
                 16);
    json_decref(res);
    m = write_vectors(&a, "aliased", "insert", "application/json",
                      "{\"vectors\":[{\"id\":\"x\",\"text\":\"hello\"}]}");
    cr_assert_eq(vector_count(&a, "aliased", m), 1);
    /* Cloudflare's other presets: their dimensions, no text. */
    res = ok(&a, "POST", PREFIX,
             "{\"name\":\"bge-base\",\"config\":{\"preset\":\"@cf/baai/bge-base-en-v1.5\"}}");
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(res, "config"), "dimensions")),
                 768);
    json_decref(res);
    res = ok(&a, "POST", PREFIX,
             "{\"name\":\"ada\",\"config\":{\"preset\":\"openai/text-embedding-ada-002\"}}");
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(res, "config"), "dimensions")),
                 1536);
    json_decref(res);
    expect_write_err(&a, "bge-base", "{\"id\":\"x\",\"text\":\"hello\"}", "'text'");
    expect_err(&a, "POST", PREFIX, "{\"name\":\"u\",\"config\":{\"preset\":\"@cf/none\"}}", 400,
               "unknown preset");
    expect_err(&a, "POST", PREFIX, "{\"name\":\"g\",\"config\":{\"preset\":\"@local/gen\"}}", 400,
               "unknown preset");
    expect_err(&a, "POST", PREFIX,
               "{\"name\":\"d\",\"config\":{\"preset\":\"@local/emb\",\"dimensions\":8}}", 400,
               "16 dimensions");
    expect_write_err(&a, "texts", "{\"id\":\"x\",\"text\":\"\"}", "non-empty");
    cr_assert_eq(ts_agent_stop(&a), 0);
}

#define MINILM OUTPOST_MODELS_DIR "/all-MiniLM-L6-v2"
#define MINILM_CONFIG                                                                              \
    "server:\n  listen: 127.0.0.1:@PORT@\n  workers: 4\ndata_dir: @DIR@/var\n"                     \
    "plugins:\n  dirs: [" OUTPOST_PLUGIN_DIR "]\naccounts:\n  - id: local\n"                       \
    "models:\n  - id: \"@local/all-minilm-l6-v2\"\n    plugin: bert\n"                             \
    "    task: text-embeddings\n    path: " MINILM "\n"

static const char *const STORIES[] = {"This is a story about an orange cloud",
                                      "This is a story about a llama",
                                      "This is a story about a hugging emoji"};

/* The seed's Workers AI + Vectorize example through the REST API: embed
 * with /ai/run, upsert the vectors, embed the query, top match id 1; then
 * the same in one call each through a preset index that takes text. */
Test(vectorize, seed_embeddings_example_with_minilm, .timeout = 120)
{
    if (access(MINILM "/model.safetensors", R_OK) != 0)
        cr_skip_test("the bundled all-MiniLM-L6-v2 is absent: run `make models`");
    ts_agent a;
    ts_agent_start(&a, MINILM_CONFIG);
    json_t *emb = ok(&a, "POST", "/client/v4/accounts/local/ai/run/@local/all-minilm-l6-v2",
                     "{\"text\":[\"This is a story about an orange cloud\",\"This is a story "
                     "about a llama\",\"This is a story about a hugging emoji\"]}");
    json_t *data = json_object_get(emb, "data");
    cr_assert_eq(json_array_size(data), 3);
    size_t dim = json_array_size(json_array_get(data, 0));
    cr_assert_eq(dim, 384);
    create_index(&a, "embeddings-index", (int)dim, "cosine");
    json_t *vectors = json_array();
    for (size_t i = 0; i < 3; i++) {
        char id[8];
        snprintf(id, sizeof id, "%zu", i + 1);
        json_array_append_new(vectors,
                              json_pack("{s:s, s:O}", "id", id, "values", json_array_get(data, i)));
    }
    json_t *wrapped = json_pack("{s:o}", "vectors", vectors);
    char *body = json_dumps(wrapped, JSON_COMPACT);
    json_decref(wrapped);
    unsigned long long m =
        write_vectors(&a, "embeddings-index", "upsert", "application/json", body);
    free(body);
    json_decref(emb);
    cr_assert_eq(vector_count(&a, "embeddings-index", m), 3);
    emb = ok(&a, "POST", "/client/v4/accounts/local/ai/run/@local/all-minilm-l6-v2",
             "{\"text\":[\"orange cloud\"]}");
    json_t *q = json_pack("{s:O, s:i}", "vector", json_array_get(json_object_get(emb, "data"), 0),
                          "topK", 1);
    body = json_dumps(q, JSON_COMPACT);
    json_decref(q);
    json_decref(emb);
    json_t *res = query(&a, "embeddings-index", body);
    free(body);
    char ids[64];
    match_ids(res, ids, sizeof ids);
    cr_assert_str_eq(ids, "1");
    double score = json_number_value(
        json_object_get(json_array_get(json_object_get(res, "matches"), 0), "score"));
    cr_assert(score > 0.5 && score <= 1.0001, "score %f", score);
    json_decref(res);

    /* One call each: the preset index embeds the stories and the query. */
    res = ok(&a, "POST", PREFIX,
             "{\"name\":\"stories\",\"config\":{\"preset\":\"@local/all-minilm-l6-v2\"}}");
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(res, "config"), "dimensions")),
                 384);
    json_decref(res);
    char nd[512];
    snprintf(nd, sizeof nd,
             "{\"id\":\"1\",\"text\":\"%s\"}\n{\"id\":\"2\",\"text\":\"%s\"}\n"
             "{\"id\":\"3\",\"text\":\"%s\"}\n",
             STORIES[0], STORIES[1], STORIES[2]);
    m = write_vectors(&a, "stories", "upsert", "application/x-ndjson", nd);
    cr_assert_eq(vector_count(&a, "stories", m), 3);
    res = query(&a, "stories", "{\"text\":\"orange cloud\",\"topK\":3}");
    match_ids(res, ids, sizeof ids);
    cr_assert(strncmp(ids, "1,", 2) == 0, "top match %s", ids);
    double s2 = json_number_value(
        json_object_get(json_array_get(json_object_get(res, "matches"), 0), "score"));
    cr_assert(fabs(s2 - score) < 1e-3, "same score both ways: %f vs %f", s2, score);
    json_decref(res);
    res = query(&a, "stories", "{\"text\":\"a camelid\",\"topK\":1}");
    match_ids(res, ids, sizeof ids);
    cr_assert_str_eq(ids, "2");
    json_decref(res);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

/* ------------------------------------------------------------------------ */
/* kill -9                                                                   */
/* ------------------------------------------------------------------------ */

Test(vectorize, acknowledged_upserts_survive_kill_9, .timeout = 120)
{
    char *data = ts_tmpdir();
    char cfg[2048];
    snprintf(cfg, sizeof cfg, "%sdata_dir: %s/var\n", CONFIG_HEAD, data);
    ts_agent a;
    ts_agent_start(&a, cfg);
    create_index(&a, "durable", 8, "cosine");
    json_t *res = ok(&a, "POST", PREFIX "/durable/metadata_index/create",
                     "{\"propertyName\":\"batch\",\"indexType\":\"number\"}");
    json_decref(res);
    enum { BATCHES = 30, PER = 40 };
    unsigned long long last = 0;
    for (int b = 0; b < BATCHES; b++) {
        char *buf = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&buf, &len);
        for (int i = 0; i < PER; i++) {
            int n = b * PER + i;
            fprintf(f, "{\"id\":\"k%04d\",\"values\":[", n);
            for (int k = 0; k < 8; k++)
                fprintf(f, "%s%d", k ? "," : "", (n * 7 + k * 13) % 17 + 1);
            fprintf(f, "],\"metadata\":{\"batch\":%d}}\n", b);
        }
        fclose(f);
        unsigned long long m = write_vectors(&a, "durable", "upsert", "application/x-ndjson", buf);
        free(buf);
        cr_assert_gt(m, last, "mutation ids grow");
        last = m;
    }
    /* Deletes acknowledged before the kill stay deleted. */
    res = ok(&a, "POST", PREFIX "/durable/delete_by_ids", "{\"ids\":[\"k0000\",\"k0001\"]}");
    last = mutation_of(res);
    json_decref(res);
    /* No waiting for the apply: kill at once. */
    kill(a.pid, SIGKILL);
    int st;
    waitpid(a.pid, &st, 0);
    cr_assert(WIFSIGNALED(st));
    a.pid = 0;
    ts_agent_stop(&a);

    ts_agent_start(&a, cfg);
    json_t *info = wait_applied(&a, "durable", last);
    cr_assert_eq(json_integer_value(json_object_get(info, "vectorCount")), BATCHES * PER - 2);
    json_decref(info);
    /* Every id is there (but the two deleted), with its metadata. */
    for (int start = 0; start < BATCHES * PER; start += 600) {
        char *buf = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&buf, &len);
        fprintf(f, "{\"ids\":[");
        for (int n = start; n < start + 600 && n < BATCHES * PER; n++)
            fprintf(f, "%s\"k%04d\"", n > start ? "," : "", n);
        fprintf(f, "]}");
        fclose(f);
        json_t *got = ok(&a, "POST", PREFIX "/durable/get_by_ids", buf);
        free(buf);
        size_t want = start == 0 ? 598 : 600;
        cr_assert_eq(json_array_size(got), want);
        json_t *first = json_array_get(got, 0);
        int n0 = atoi(json_string_value(json_object_get(first, "id")) + 1);
        cr_assert_eq(
            json_integer_value(json_object_get(json_object_get(first, "metadata"), "batch")),
            n0 / PER);
        json_decref(got);
    }
    /* The metadata index came back too, and filters with it. */
    json_t *list = ok(&a, "GET", PREFIX "/durable/metadata_index/list", NULL);
    cr_assert_eq(json_array_size(json_object_get(list, "metadataIndexes")), 1);
    json_decref(list);
    res = query(&a, "durable",
                "{\"vector\":[1,1,1,1,1,1,1,1],\"topK\":100,"
                "\"filter\":{\"batch\":{\"$eq\":7}}}");
    cr_assert_eq(json_integer_value(json_object_get(res, "count")), PER);
    json_decref(res);
    /* Writes go on after the restart with larger mutation ids. */
    unsigned long long m = write_vectors(&a, "durable", "upsert", "application/x-ndjson",
                                         "{\"id\":\"after\",\"values\":[1,2,3,4,5,6,7,8]}");
    cr_assert_gt(m, last);
    cr_assert_eq(vector_count(&a, "durable", m), BATCHES * PER - 1);
    cr_assert_eq(ts_agent_stop(&a), 0);
    ts_tmpdir_remove(data);
    free(data);
}

/* ------------------------------------------------------------------------ */
/* metrics                                                                   */
/* ------------------------------------------------------------------------ */

static double metric_value(const char *text, const char *series)
{
    const char *p = strstr(text, series);
    cr_assert_not_null(p, "no series %s in:\n%s", series, text);
    return strtod(p + strlen(series), NULL);
}

Test(vectorize, metrics, .timeout = 60)
{
    ts_agent a;
    ts_agent_start(&a, CONFIG);
    create_index(&a, "metered", 3, "cosine");
    unsigned long long m =
        write_vectors(&a, "metered", "insert", "application/x-ndjson", SEED_NDJSON);
    json_decref(wait_applied(&a, "metered", m));
    json_decref(query(&a, "metered", "{\"vector\":[1,2,3]}"));
    expect_err(&a, "POST", PREFIX "/metered/query", "{\"vector\":[1]}", 400, "dimensions");
    ts_response r;
    call(&a, &r, "GET", "/metrics", NULL);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(
        metric_value(r.body, "outpost_vectorize_requests_total{op=\"query\",status=\"200\"} "), 1);
    cr_assert_eq(
        metric_value(r.body, "outpost_vectorize_requests_total{op=\"query\",status=\"400\"} "), 1);
    cr_assert_eq(
        metric_value(r.body, "outpost_vectorize_requests_total{op=\"create\",status=\"200\"} "), 1);
    cr_assert_eq(metric_value(r.body, "outpost_vectorize_mutations_total{op=\"insert\"} "), 1);
    cr_assert_eq(metric_value(r.body, "outpost_vectorize_mutation_vectors_total{op=\"insert\"} "),
                 5);
    cr_assert_eq(
        metric_value(r.body, "outpost_vectorize_vectors{account=\"local\",index=\"metered\"} "), 5);
    cr_assert_gt(
        metric_value(r.body,
                     "outpost_vectorize_memory_bytes{account=\"local\",index=\"metered\"} "),
        0);
    cr_assert_gt(
        metric_value(r.body, "outpost_vectorize_disk_bytes{account=\"local\",index=\"metered\"} "),
        0);
    cr_assert_eq(
        metric_value(r.body,
                     "outpost_vectorize_pending_mutations{account=\"local\",index=\"metered\"} "),
        0);
    cr_assert_eq(metric_value(r.body, "outpost_vectorize_query_duration_seconds_count "), 1);
    cr_assert(strstr(r.body, "outpost_http_requests_total{route=\"vectorize\"") != NULL);
    if (ts_promtool_check(&a, r.body) != 0)
        cr_log_warn(
            "promtool is not installed (Debian package prometheus): exposition not checked");
    ts_response_free(&r);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

Test(vectorize, disabled_by_config, .timeout = 60)
{
    ts_agent a;
    ts_agent_start(&a, CONFIG "vectorize:\n  enabled: false\n");
    expect_err(&a, "GET", PREFIX, NULL, 404, "vectorize.enabled");
    cr_assert_eq(ts_agent_stop(&a), 0);
}

/* ------------------------------------------------------------------------ */
/* Cloudflare's Python SDK                                                   */
/* ------------------------------------------------------------------------ */

/* tests/sdk/cloudflare_vectorize.py with the venv of scripts/pydeps.sh
 * (OUTPOST_PY_VENV names another); skipped, saying so, without it. */
Test(vectorize, cloudflare_python_sdk, .timeout = 180)
{
    const char *venv = getenv("OUTPOST_PY_VENV");
    if (!venv || !*venv)
        venv = "build-py/venv";
    char python[1024];
    if (venv[0] == '/')
        snprintf(python, sizeof python, "%s/bin/python", venv);
    else
        snprintf(python, sizeof python, "%s/%s/bin/python", OUTPOST_SOURCE_DIR, venv);
    if (access(python, X_OK) != 0)
        cr_skip_test("no Python SDK venv at %s: run scripts/pydeps.sh (make pydeps) first", python);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "'%s' -c 'import cloudflare' 2>/dev/null", python);
    if (ts_run(cmd, NULL) != 0)
        cr_skip_test("the venv at %s has no cloudflare package: run make pydeps", python);
    ts_agent a;
    ts_agent_start(&a, CONFIG);
    /* Loopback only: no proxy from the environment may take the requests. */
    snprintf(cmd, sizeof cmd,
             "env -u http_proxy -u https_proxy -u all_proxy -u HTTP_PROXY -u HTTPS_PROXY "
             "-u ALL_PROXY NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost "
             "'%s' '%s/tests/sdk/cloudflare_vectorize.py' '%s'",
             python, OUTPOST_SOURCE_DIR, a.base_url);
    char *out = NULL;
    int rc = ts_run(cmd, &out);
    cr_expect_eq(rc, 0, "cloudflare_vectorize.py failed (rc %d):\n%s", rc, out);
    cr_expect(strstr(out, "cloudflare_vectorize: all checks passed") != NULL, "%s", out);
    free(out);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

/* An index that takes text keeps its model's name: after a reload that
 * drops the model, text is refused with 503 (values still work); a preset
 * naming a model that failed to load cannot size an index. */
Test(vectorize, text_in_without_its_model, .timeout = 60)
{
    ts_agent a;
    ts_agent_start(&a, CONFIG_HEAD "  - id: \"@local/broken\"\n    plugin: nosuchplugin\n"
                                   "    task: text-embeddings\ndata_dir: @DIR@/var\n");
    expect_err(&a, "POST", PREFIX, "{\"name\":\"b\",\"config\":{\"preset\":\"@local/broken\"}}",
               503, "not loaded");
    json_decref(ok(&a, "POST", PREFIX, "{\"name\":\"t\",\"config\":{\"preset\":\"@local/emb\"}}"));
    unsigned long long m = write_vectors(&a, "t", "upsert", "application/x-ndjson",
                                         "{\"id\":\"1\",\"text\":\"before the reload\"}");
    cr_assert_eq(vector_count(&a, "t", m), 1);
    char cfg[1024];
    snprintf(cfg, sizeof cfg,
             "server:\n  listen: 127.0.0.1:%d\n  workers: 4\nplugins:\n  dirs: [%s]\n"
             "accounts:\n  - id: local\ndata_dir: %s/var\n",
             a.port, OUTPOST_TEST_PLUGIN_DIR, a.dir);
    free(ts_write_file(a.dir, "outpost.yaml", cfg));
    ts_agent_signal(&a, SIGHUP);
    bool reloaded = false;
    for (int i = 0; i < 200 && !reloaded; i++) {
        char *log = ts_agent_log(&a);
        reloaded = strstr(log, "reload.done") != NULL;
        free(log);
        struct timespec ts = {0, 25 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    cr_assert(reloaded, "no reload.done in the agent's log");
    char url[256];
    snprintf(url, sizeof url, "%s" PREFIX "/t/upsert", a.base_url);
    ts_response r;
    const char *body = "{\"id\":\"2\",\"text\":\"after the reload\"}";
    raw_http(&r, "POST", url, "application/x-ndjson", body, strlen(body));
    expect_err_resp(&r, 503, "@local/emb", "text without the model");
    expect_err(&a, "POST", PREFIX "/t/query", "{\"text\":\"x\"}", 503, "@local/emb");
    /* Vectors with values, and queries by vector, go on. */
    char vals[256] = "{\"id\":\"3\",\"values\":[1";
    for (int k = 1; k < 16; k++)
        strcat(vals, ",0");
    strcat(vals, "]}");
    m = write_vectors(&a, "t", "upsert", "application/x-ndjson", vals);
    cr_assert_eq(vector_count(&a, "t", m), 2);
    json_t *res = query(&a, "t", "{\"vectorId\":\"3\",\"topK\":1}");
    char ids[32];
    match_ids(res, ids, sizeof ids);
    cr_assert_str_eq(ids, "3");
    json_decref(res);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

/* Writers and readers at once: every write acknowledged with its own
 * mutation id, every query answered, the count right at the end. */
typedef struct par_ctx {
    const ts_agent *a;
    int thread;
    _Atomic int *failures;
    unsigned long long max_mutation;
    unsigned long long ids[16];
} par_ctx;

/* One POST without criterion asserts (they belong to the main thread):
 * the status, or -1 when the request failed; body in *out (malloc'd). */
static long post_quiet(const char *url, const char *body, char **out)
{
    CURL *c = curl_easy_init();
    if (!c)
        return -1;
    ts_response r;
    memset(&r, 0, sizeof r);
    struct curl_slist *hl = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 60000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    long status = -1;
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(hl);
    curl_easy_cleanup(c);
    *out = r.body;
    return status;
}

static void *par_writer(void *arg)
{
    par_ctx *p = arg;
    char url[256], body[4096];
    snprintf(url, sizeof url, "%s" PREFIX "/par/upsert", p->a->base_url);
    for (int b = 0; b < 16; b++) {
        size_t len = 0;
        for (int i = 0; i < 10; i++)
            len += (size_t)snprintf(body + len, sizeof body - len,
                                    "{\"id\":\"t%d-%d-%d\",\"values\":[%d,%d,1]}\n", p->thread, b,
                                    i, p->thread + 1, b * 10 + i + 1);
        char *out = NULL;
        long st = post_quiet(url, body, &out);
        json_t *env = out ? json_loads(out, 0, NULL) : NULL;
        const char *mid =
            json_string_value(json_object_get(json_object_get(env, "result"), "mutationId"));
        if (st != 200 || !mid)
            atomic_fetch_add(p->failures, 1);
        else
            p->ids[b] = strtoull(mid, NULL, 10);
        if (mid && p->ids[b] > p->max_mutation)
            p->max_mutation = p->ids[b];
        json_decref(env);
        free(out);
    }
    return NULL;
}

static void *par_reader(void *arg)
{
    par_ctx *p = arg;
    char url[256];
    snprintf(url, sizeof url, "%s" PREFIX "/par/query", p->a->base_url);
    for (int i = 0; i < 40; i++) {
        char *out = NULL;
        long st = post_quiet(url,
                             "{\"vector\":[1,2,1],\"topK\":10,\"returnMetadata\":\"all\","
                             "\"returnValues\":true}",
                             &out);
        if (st != 200 || !out || !strstr(out, "\"success\":true"))
            atomic_fetch_add(p->failures, 1);
        free(out);
    }
    return NULL;
}

Test(vectorize, writers_and_readers_at_once, .timeout = 60)
{
    ts_agent a;
    ts_agent_start(&a, CONFIG);
    create_index(&a, "par", 3, "euclidean");
    _Atomic int failures = 0;
    enum { WRITERS = 4, READERS = 2 };
    par_ctx ctx[WRITERS + READERS];
    pthread_t th[WRITERS + READERS];
    for (int i = 0; i < WRITERS + READERS; i++) {
        ctx[i] = (par_ctx){.a = &a, .thread = i, .failures = &failures};
        pthread_create(&th[i], NULL, i < WRITERS ? par_writer : par_reader, &ctx[i]);
    }
    unsigned long long last = 0;
    for (int i = 0; i < WRITERS + READERS; i++) {
        pthread_join(th[i], NULL);
        if (ctx[i].max_mutation > last)
            last = ctx[i].max_mutation;
    }
    cr_assert_eq(atomic_load(&failures), 0);
    /* Each acknowledgement has its own mutation id. */
    unsigned long long all[WRITERS * 16];
    for (int i = 0; i < WRITERS; i++)
        memcpy(all + i * 16, ctx[i].ids, sizeof ctx[i].ids);
    for (int i = 0; i < WRITERS * 16; i++)
        for (int k = i + 1; k < WRITERS * 16; k++)
            cr_assert_neq(all[i], all[k], "mutation id %llu given twice", all[i]);
    cr_assert_eq(vector_count(&a, "par", last), WRITERS * 16 * 10);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

/* A body over server.max_body_bytes is refused before it is read, in the
 * envelope; the limit is named. */
Test(vectorize, body_over_the_server_limit_is_413, .timeout = 60)
{
    ts_agent a;
    ts_agent_start(&a, "server:\n  listen: 127.0.0.1:@PORT@\n  max_body_bytes: 64KiB\n"
                       "data_dir: @DIR@/var\naccounts:\n  - id: local\n");
    create_index(&a, "small", 3, "cosine");
    char *body = many_vectors(3000, 3); /* about 90 KB */
    cr_assert_gt(strlen(body), 65536);
    char url[256];
    snprintf(url, sizeof url, "%s" PREFIX "/small/upsert", a.base_url);
    ts_response r;
    raw_http(&r, "POST", url, "application/x-ndjson", body, strlen(body));
    expect_err_resp(&r, 413, "server.max_body_bytes", "a body over the limit");
    free(body);
    body = many_vectors(1000, 3);
    unsigned long long m = write_vectors(&a, "small", "upsert", "application/x-ndjson", body);
    free(body);
    cr_assert_eq(vector_count(&a, "small", m), 1000);
    cr_assert_eq(ts_agent_stop(&a), 0);
}
