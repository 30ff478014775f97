/*
 * The AI gateway end to end: the real outpostd in front of a test upstream
 * (an OpenAI-compatible server inside this test process, on op_http, whose
 * paths fail, flap or answer on purpose) and of its own tiny local model.
 *
 * Covered (issue 4's "done means"): a fallback chain answers from the second
 * step with cf-aig-step 1; retries follow the configured backoff; a second
 * identical call is a cache HIT, for a stream too; a rate limit admits
 * exactly its limit under concurrent load; logs survive kill -9 and can be
 * filtered and given feedback; a WebSocket client runs two streamed
 * requests at once and gets both, keyed by eventId; gateway authentication;
 * a Lua token limit that reserves max_tokens and settles on the real usage;
 * on_error and on_response policies deciding fail and fallback; identical
 * requests coalesced; clients hanging up mid-stream.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "http/op_http.h"
#include "platform/pl_hash.h"
#include "platform/pl_log.h"
#include "platform/pl_time.h"
#include "test_support.h"
#include "ts_llm.h"
#include "ts_ws.h"

/* ------------------------------------------------------------------------ */
/* the test upstream                                                         */
/* ------------------------------------------------------------------------ */

static _Atomic int g_ok_calls, g_fail_calls, g_flaky_calls;
static uint64_t g_flaky_at[16];

static const char OK_BODY[] =
    "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"m\","
    "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"Hello from "
    "upstream\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":7,"
    "\"completion_tokens\":3,\"total_tokens\":10}}";

typedef struct streamer {
    op_http_req *r;
    bool usage;
    int cut_after;     /* > 0: end the stream (cleanly, no [DONE]) after this many pieces */
    int variant;       /* 0: the answer; 1: a different one; 2: the answer in other pieces */
} streamer;

static _Atomic int g_cut_calls;

static void *stream_main(void *arg)
{
    streamer *s = arg;
    static const char *const pieces[] = {"Hello", " from", " upstream"};
    static const char *const others[] = {"Goodbye", " from", " elsewhere"};
    static const char *const rechunked[] = {"Hello fr", "om up", "stream"};
    op_http_stream_begin(s->r, 200, "text/event-stream");
    for (int i = 0; i < 3; i++) {
        if (s->cut_after > 0 && i == s->cut_after) {
            op_http_stream_end(s->r); /* cut: the stream stops without [DONE] */
            op_http_req_unref(s->r);
            free(s);
            return NULL;
        }
        char ev[256];
        int n = snprintf(ev, sizeof ev,
                         "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":"
                         "[{\"index\":0,\"delta\":{\"content\":\"%s\"}}]}\n\n",
                         s->variant == 1   ? others[i]
                         : s->variant == 2 ? rechunked[i]
                                           : pieces[i]);
        op_http_stream_write(s->r, ev, (size_t)n);
        usleep(20000);
    }
    if (s->usage) {
        const char *u = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],"
                        "\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\n";
        op_http_stream_write(s->r, u, strlen(u));
    }
    op_http_stream_write(s->r, "data: [DONE]\n\n", 14);
    op_http_stream_end(s->r);
    op_http_req_unref(s->r);
    free(s);
    return NULL;
}

static void answer_stream(op_http_req *r, json_t *j, int cut_after, int variant);

static void answer_ok(op_http_req *r)
{
    size_t len;
    const char *body = op_http_req_body(r, &len);
    json_t *j = json_loadb(body, len, 0, NULL);
    if (json_is_true(json_object_get(j, "stream"))) {
        answer_stream(r, j, 0, 0);
    } else {
        op_http_respond(r, 200, "application/json", OK_BODY, strlen(OK_BODY));
    }
    json_decref(j);
}

static void answer_stream(op_http_req *r, json_t *j, int cut_after, int variant)
{
    streamer *s = calloc(1, sizeof *s);
    s->r = r;
    s->usage =
        json_is_true(json_object_get(json_object_get(j, "stream_options"), "include_usage"));
    s->cut_after = cut_after;
    s->variant = variant;
    op_http_req_ref(r);
    pthread_t t;
    pthread_create(&t, NULL, stream_main, s);
    pthread_detach(t);
}

static void upstream_handler(op_http_req *r, void *user)
{
    (void)user;
    const char *p = op_http_req_path(r);
    if (strncmp(p, "/ok/", 4) == 0) {
        atomic_fetch_add(&g_ok_calls, 1);
        answer_ok(r);
    } else if (strncmp(p, "/cut/", 5) == 0 || strncmp(p, "/cutdiff/", 9) == 0) {
        /* The first call's stream stops after two pieces; later calls
         * stream the whole answer, cut into other pieces (cutdiff: a
         * different answer). */
        int n = atomic_fetch_add(&g_cut_calls, 1);
        size_t len;
        const char *body = op_http_req_body(r, &len);
        json_t *j = json_loadb(body, len, 0, NULL);
        answer_stream(r, j, n == 0 ? 2 : 0, n == 0 ? 0 : p[4] == 'd' ? 1 : 2);
        json_decref(j);
    } else if (strncmp(p, "/fail/", 6) == 0) {
        atomic_fetch_add(&g_fail_calls, 1);
        const char *b = "{\"error\":{\"message\":\"upstream down\"}}";
        op_http_respond(r, 500, "application/json", b, strlen(b));
    } else if (strncmp(p, "/flaky/", 7) == 0) {
        int n = atomic_fetch_add(&g_flaky_calls, 1);
        if (n < 16)
            g_flaky_at[n] = pl_time_mono_ns();
        if (n < 2) {
            const char *b = "{\"error\":{\"message\":\"try again\"}}";
            op_http_respond(r, 503, "application/json", b, strlen(b));
        } else {
            answer_ok(r);
        }
    } else {
        op_http_respond(r, 404, "text/plain", "no\n", 3);
    }
}

static op_http_server *upstream_start(void)
{
    pl_log_configure(PL_LOG_ERROR, PL_LOG_FORMAT_KV);
    op_http_options o = {.host = "127.0.0.1", .port = 0, .workers = 4,
                         .max_body_bytes = 1 << 20, .max_header_bytes = 16384,
                         .max_connections = 256, .idle_timeout_s = 30,
                         .handler = upstream_handler};
    char err[256];
    op_http_server *s = op_http_server_start(&o, err, sizeof err);
    cr_assert_not_null(s, "%s", err);
    return s;
}

/* ------------------------------------------------------------------------ */
/* the agent                                                                 */
/* ------------------------------------------------------------------------ */

static const char CHATML[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}";

typedef struct env {
    op_http_server *up;
    char *dir;      /* model and data */
    char *cfg;
    ts_agent a;
} env;

static void env_config(env *e)
{
    e->up = upstream_start();
    e->dir = ts_tmpdir();
    ts_llm_spec spec = ts_llm_default();
    spec.wtype = 3;
    spec.etype = 8;
    spec.n_ctx = 1024;
    spec.chat_template = CHATML;
    char *model = ts_llm_write(e->dir, "tiny.gguf", &spec);
    char hex[PL_SHA256_HEX_LEN + 1];
    pl_sha256_hex("s3cret", 6, hex);
    int up = op_http_server_port(e->up);
    size_t n = 8192;
    e->cfg = malloc(n);
    snprintf(e->cfg, n,
             "server:\n  listen: 127.0.0.1:@PORT@\n  workers: 4\n"
             "data_dir: %s/data\n"
             "plugins:\n  dirs: [" OUTPOST_PLUGIN_DIR "]\n"
             "accounts:\n  - id: local\n"
             "models:\n"
             "  - id: \"@local/tiny\"\n    plugin: llama\n    task: text-generation\n"
             "    path: %s\n    options: {threads: 1}\n"
             "gateway:\n  log_commit_interval_us: 1000\n"
             "gateways:\n"
             "  - account: local\n    id: default\n"
             "    providers:\n"
             "      - {name: ok, base_url: \"http://127.0.0.1:%d/ok\", api_key: k1}\n"
             "      - {name: down, base_url: \"http://127.0.0.1:%d/fail\"}\n"
             "      - {name: flaky, base_url: \"http://127.0.0.1:%d/flaky\"}\n"
             "      - {name: cut, base_url: \"http://127.0.0.1:%d/cut\"}\n"
             "      - {name: cutdiff, base_url: \"http://127.0.0.1:%d/cutdiff\"}\n"
             "  - account: local\n    id: limited\n"
             "    rate_limit: {limit: 10, window_s: 60}\n"
             "    providers:\n"
             "      - {name: ok, base_url: \"http://127.0.0.1:%d/ok\"}\n"
             "  - account: local\n    id: secure\n    authentication: true\n"
             "    tokens: [{name: app, sha256: \"%s\"}]\n"
             "    providers:\n"
             "      - {name: ok, base_url: \"http://127.0.0.1:%d/ok\"}\n",
             e->dir, model, up, up, up, up, up, up, hex, up);
    free(model);
}

static void env_start(env *e)
{
    env_config(e);
    ts_agent_start(&e->a, e->cfg);
}

static void env_stop(env *e)
{
    cr_assert_eq(ts_agent_stop(&e->a), 0);
    op_http_server_stop(e->up);
    ts_tmpdir_remove(e->dir);
    free(e->dir);
    free(e->cfg);
}

static char *url(env *e, const char *path)
{
    static char buf[2048];
    snprintf(buf, sizeof buf, "%s%s", e->a.base_url, path);
    return buf;
}

static const char CHAT[] = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
static const char CHAT_STREAM[] =
    "{\"model\":\"m\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";

static char *step(const char *provider, const char *query)
{
    char *s = malloc(strlen(query) + 256);
    sprintf(s, "{\"provider\":\"%s\",\"endpoint\":\"chat/completions\",\"query\":%s}", provider,
            query);
    return s;
}

/* Waits until the logs API lists at least n records matching query. */
static json_t *wait_logs(env *e, const char *gateway, const char *query, size_t n)
{
    char path[1024];
    snprintf(path, sizeof path, "/client/v4/accounts/local/ai-gateway/gateways/%s/logs?%s",
             gateway, query ? query : "");
    for (int i = 0; i < 200; i++) {
        ts_response r;
        ts_http(&r, "GET", url(e, path), NULL, NULL);
        cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
        json_t *j = json_loads(r.body, 0, NULL);
        ts_response_free(&r);
        json_t *res = json_object_get(j, "result");
        if (json_array_size(res) >= n) {
            json_incref(res);
            json_decref(j);
            return res;
        }
        json_decref(j);
        usleep(20000);
    }
    cr_assert_fail("fewer than %zu log records for %s", n, query ? query : "");
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* tests                                                                     */
/* ------------------------------------------------------------------------ */

Test(gateway, fallback_chain_answers_from_the_second_step)
{
    env e;
    env_start(&e);
    char *s0 = step("down", CHAT), *s1 = step("ok", CHAT);
    char body[2048];
    snprintf(body, sizeof body, "[%s,%s]", s0, s1);
    ts_response r;
    ts_http(&r, "POST", url(&e, "/v1/local/default"), body, NULL);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    cr_assert(strstr(r.body, "Hello from upstream"), "%s", r.body);
    char *st = ts_header(&r, "cf-aig-step");
    cr_assert_not_null(st);
    cr_assert_str_eq(st, "1");
    char *logid = ts_header(&r, "cf-aig-log-id");
    cr_assert(logid && strlen(logid) == 26, "log id %s", logid ? logid : "(none)");
    char *cs = ts_header(&r, "cf-aig-cache-status");
    cr_assert_str_eq(cs, "MISS");
    free(st);
    free(cs);
    ts_response_free(&r);
    cr_assert_eq(atomic_load(&g_fail_calls), 1);
    cr_assert_eq(atomic_load(&g_ok_calls), 1);

    /* The record: step 1, tokens and cost from the upstream's usage. */
    json_t *logs = wait_logs(&e, "default", "provider=ok", 1);
    json_t *rec = json_array_get(logs, 0);
    cr_assert_str_eq(json_string_value(json_object_get(rec, "id")), logid);
    cr_assert_eq(json_integer_value(json_object_get(rec, "step")), 1);
    cr_assert_eq(json_integer_value(json_object_get(rec, "tokens_in")), 7);
    cr_assert_eq(json_integer_value(json_object_get(rec, "tokens_out")), 3);
    cr_assert(json_is_true(json_object_get(rec, "success")));
    json_decref(logs);
    free(logid);

    /* Every step failing: the last step's own error comes back. */
    snprintf(body, sizeof body, "[%s,%s]", s0, s0);
    ts_http(&r, "POST", url(&e, "/v1/local/default"), body, NULL);
    cr_assert_eq(r.status, 500, "%ld %s", r.status, r.body);
    cr_assert(strstr(r.body, "upstream down"), "%s", r.body);
    ts_response_free(&r);
    free(s0);
    free(s1);
    env_stop(&e);
}

Test(gateway, retries_follow_the_backoff)
{
    env e;
    env_start(&e);
    char *s = step("flaky", CHAT);
    ts_response r;
    ts_http(&r, "POST", url(&e, "/v1/local/default"), s,
            (const char *const[]){"cf-aig-max-attempts: 3", "cf-aig-retry-delay: 150",
                                  "cf-aig-backoff: exponential", NULL});
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    ts_response_free(&r);
    cr_assert_eq(atomic_load(&g_flaky_calls), 3);
    double gap1 = (double)(g_flaky_at[1] - g_flaky_at[0]) / 1e6;
    double gap2 = (double)(g_flaky_at[2] - g_flaky_at[1]) / 1e6;
    /* exponential: 150 ms, then 300 ms (a generous upper bound for a busy
     * machine) */
    cr_assert(gap1 >= 150 && gap1 < 1500, "first retry after %.1f ms", gap1);
    cr_assert(gap2 >= 300 && gap2 < 3000, "second retry after %.1f ms", gap2);
    json_t *logs = wait_logs(&e, "default", "provider=flaky", 1);
    cr_assert_eq(json_integer_value(json_object_get(json_array_get(logs, 0), "attempts")), 3);
    json_decref(logs);

    /* Not enough attempts: the upstream's error comes back. */
    atomic_store(&g_flaky_calls, 0);
    ts_http(&r, "POST", url(&e, "/v1/local/default"), s,
            (const char *const[]){"cf-aig-max-attempts: 2", "cf-aig-retry-delay: 10",
                                  "cf-aig-backoff: constant", NULL});
    cr_assert_eq(r.status, 503, "%ld %s", r.status, r.body);
    ts_response_free(&r);
    cr_assert_eq(atomic_load(&g_flaky_calls), 2);
    free(s);
    env_stop(&e);
}

Test(gateway, second_identical_call_is_a_cache_hit_also_streamed)
{
    env e;
    env_start(&e);
    const char *const ttl[] = {"cf-aig-cache-ttl: 60", NULL};
    char *s = step("ok", CHAT);
    ts_response r1, r2;
    ts_http(&r1, "POST", url(&e, "/v1/local/default"), s, ttl);
    ts_http(&r2, "POST", url(&e, "/v1/local/default"), s, ttl);
    cr_assert_eq(r1.status, 200);
    cr_assert_eq(r2.status, 200);
    char *c1 = ts_header(&r1, "cf-aig-cache-status"), *c2 = ts_header(&r2, "cf-aig-cache-status");
    cr_assert_str_eq(c1, "MISS");
    cr_assert_str_eq(c2, "HIT");
    cr_assert_str_eq(r1.body, r2.body);
    cr_assert_eq(atomic_load(&g_ok_calls), 1);
    free(c1);
    free(c2);
    ts_response_free(&r1);
    ts_response_free(&r2);
    /* skip-cache goes to the upstream again. */
    ts_http(&r1, "POST", url(&e, "/v1/local/default"), s,
            (const char *const[]){"cf-aig-cache-ttl: 60", "cf-aig-skip-cache: true", NULL});
    cr_assert_eq(r1.status, 200);
    cr_assert_eq(atomic_load(&g_ok_calls), 2);
    ts_response_free(&r1);
    free(s);

    /* A stream: the HIT replays a valid stream, byte for byte. */
    s = step("ok", CHAT_STREAM);
    ts_http(&r1, "POST", url(&e, "/v1/local/default"), s, ttl);
    ts_http(&r2, "POST", url(&e, "/v1/local/default"), s, ttl);
    cr_assert_eq(r1.status, 200);
    cr_assert_eq(r2.status, 200);
    c2 = ts_header(&r2, "cf-aig-cache-status");
    cr_assert_str_eq(c2, "HIT");
    free(c2);
    cr_assert(strstr(r1.body, "data: [DONE]"), "%s", r1.body);
    cr_assert_str_eq(r1.body, r2.body);
    cr_assert_eq(atomic_load(&g_ok_calls), 3);
    ts_response_free(&r1);
    ts_response_free(&r2);
    /* The streamed request recorded its tokens (the gateway asked for the
     * usage chunk). */
    json_t *logs = wait_logs(&e, "default", "cached=false", 3);
    json_t *rec = NULL, *it;
    size_t k;
    json_array_foreach(logs, k, it) if (strcmp(json_string_value(json_object_get(
                                                   it, "response_content_type")),
                                               "text/event-stream") == 0) rec = it;
    cr_assert_not_null(rec, "no record of the stream");
    cr_assert_eq(json_integer_value(json_object_get(rec, "tokens_out")), 3);
    json_decref(logs);
    logs = wait_logs(&e, "default", "cached=true", 2);
    json_decref(logs);
    free(s);
    env_stop(&e);
}

typedef struct burst {
    env *e;
    const char *body;
    _Atomic int ok, limited, other;
    _Atomic int retry_after_missing;
} burst;

static void *burst_main(void *arg)
{
    burst *b = arg;
    for (int i = 0; i < 5; i++) {
        ts_response r;
        ts_http(&r, "POST", url(b->e, "/v1/local/limited"), b->body, NULL);
        if (r.status == 200) {
            atomic_fetch_add(&b->ok, 1);
        } else if (r.status == 429) {
            atomic_fetch_add(&b->limited, 1);
            char *ra = ts_header(&r, "Retry-After");
            if (!ra)
                atomic_fetch_add(&b->retry_after_missing, 1);
            free(ra);
        } else {
            atomic_fetch_add(&b->other, 1);
        }
        ts_response_free(&r);
    }
    return NULL;
}

Test(gateway, rate_limit_rejects_exactly_at_its_limit_under_concurrency)
{
    env e;
    env_start(&e);
    char *s = step("ok", CHAT);
    burst b = {.e = &e, .body = s};
    pthread_t t[8];
    for (int i = 0; i < 8; i++)
        pthread_create(&t[i], NULL, burst_main, &b);
    for (int i = 0; i < 8; i++)
        pthread_join(t[i], NULL);
    cr_assert_eq(atomic_load(&b.other), 0);
    cr_assert_eq(atomic_load(&b.ok), 10, "admitted %d", atomic_load(&b.ok));
    cr_assert_eq(atomic_load(&b.limited), 30);
    cr_assert_eq(atomic_load(&b.retry_after_missing), 0);
    free(s);
    env_stop(&e);
}

Test(gateway, logs_survive_kill_9_and_take_filters_and_feedback)
{
    env e;
    env_start(&e);
    char *s = step("ok", CHAT);
    char ids[20][27];
    for (int i = 0; i < 20; i++) {
        char meta[96];
        snprintf(meta, sizeof meta, "cf-aig-metadata: {\"user\":\"u%d\",\"n\":%d}", i % 2, i);
        ts_response r;
        ts_http(&r, "POST", url(&e, "/v1/local/default"), s,
                (const char *const[]){meta, NULL});
        cr_assert_eq(r.status, 200);
        char *id = ts_header(&r, "cf-aig-log-id");
        cr_assert_not_null(id);
        snprintf(ids[i], sizeof ids[i], "%s", id);
        free(id);
        ts_response_free(&r);
    }
    /* Acknowledged = listed. Then the agent dies without a chance to flush. */
    json_t *logs = wait_logs(&e, "default", "per_page=100", 20);
    json_decref(logs);
    ts_agent_signal(&e.a, SIGKILL);
    ts_agent_stop(&e.a);
    ts_agent_start(&e.a, e.cfg);

    logs = wait_logs(&e, "default", "per_page=100", 20);
    cr_assert_eq(json_array_size(logs), 20);
    for (int i = 0; i < 20; i++) {
        bool found = false;
        size_t k;
        json_t *rec;
        json_array_foreach(logs, k, rec) found |=
            strcmp(json_string_value(json_object_get(rec, "id")), ids[i]) == 0;
        cr_assert(found, "log %s lost", ids[i]);
    }
    json_decref(logs);

    /* Filter by metadata. */
    logs = wait_logs(&e, "default", "metadata.user=u1&per_page=100", 10);
    cr_assert_eq(json_array_size(logs), 10);
    json_decref(logs);

    /* Feedback, then filter by it. */
    char path[256];
    snprintf(path, sizeof path, "/client/v4/accounts/local/ai-gateway/gateways/default/logs/%s",
             ids[3]);
    ts_response r;
    ts_http(&r, "PATCH", url(&e, path), "{\"feedback\":1,\"score\":90}", NULL);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    ts_response_free(&r);
    ts_http(&r, "PATCH", url(&e, path), "{\"feedback\":7}", NULL);
    cr_assert_eq(r.status, 400, "%ld %s", r.status, r.body);
    ts_response_free(&r);
    logs = wait_logs(&e, "default", "feedback=1", 1);
    cr_assert_eq(json_array_size(logs), 1);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(logs, 0), "id")), ids[3]);
    json_decref(logs);
    /* One record with its bodies. */
    ts_http(&r, "GET", url(&e, path), NULL, NULL);
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.body, "Hello from upstream"), "%s", r.body);
    ts_response_free(&r);
    free(s);
    env_stop(&e);
}

Test(gateway, websocket_runs_two_streams_at_once_keyed_by_event_id)
{
    env e;
    env_start(&e);
    char status[256];
    int fd = ts_ws_connect(e.a.port, "/v1/local/default", NULL, status, sizeof status);
    cr_assert(fd >= 0, "upgrade refused: %s", status);
    const char *msg =
        "{\"type\":\"universal.create\",\"request\":{\"eventId\":\"%s\",\"provider\":\"%s\","
        "\"endpoint\":\"chat/completions\",\"query\":%s}}";
    char m1[1024], m2[1024];
    snprintf(m1, sizeof m1, msg, "A", "ok", CHAT_STREAM);
    snprintf(m2, sizeof m2, msg, "B", "ok", CHAT_STREAM);
    ts_ws_send_text(fd, m1);
    ts_ws_send_text(fd, m2);
    char text[2][256] = {"", ""};
    int created[2] = {0, 0}, done[2] = {0, 0};
    int interleaved = 0, last = -1;
    while (!(done[0] && done[1])) {
        char *p;
        int op = ts_ws_read(fd, &p, 10000);
        cr_assert_eq(op, 1, "no frame");
        json_t *j = json_loads(p, 0, NULL);
        cr_assert_not_null(j, "%s", p);
        const char *type = json_string_value(json_object_get(j, "type"));
        const char *ev =
            json_string_value(json_object_get(json_object_get(j, "metadata"), "eventId"));
        cr_assert(ev && (strcmp(ev, "A") == 0 || strcmp(ev, "B") == 0), "%s", p);
        int k = ev[0] - 'A';
        if (strcmp(type, "universal.created") == 0) {
            created[k]++;
            cr_assert_str_eq(json_string_value(json_object_get(
                                 json_object_get(j, "metadata"), "contentType")),
                             "text/event-stream");
        } else if (strcmp(type, "universal.stream") == 0) {
            cr_assert_eq(created[k], 1, "a chunk before universal.created");
            json_t *resp = json_object_get(j, "response");
            json_t *c = json_object_get(
                json_object_get(json_array_get(json_object_get(resp, "choices"), 0), "delta"),
                "content");
            if (json_is_string(c))
                strcat(text[k], json_string_value(c));
            if (last >= 0 && last != k)
                interleaved++;
            last = k;
        } else if (strcmp(type, "universal.done") == 0) {
            done[k]++;
            cr_assert(json_string_value(
                          json_object_get(json_object_get(j, "metadata"), "logId")),
                      "%s", p);
        } else {
            cr_assert_fail("unexpected message %s", p);
        }
        json_decref(j);
        free(p);
    }
    cr_assert_str_eq(text[0], "Hello from upstream");
    cr_assert_str_eq(text[1], "Hello from upstream");
    cr_assert(interleaved > 0, "the two streams were not in flight together");

    /* A bad message comes back as universal.created with success false. */
    ts_ws_send_text(fd, "{\"type\":\"universal.create\",\"request\":{\"eventId\":\"C\"}}");
    char *p;
    cr_assert_eq(ts_ws_read(fd, &p, 5000), 1);
    cr_assert(strstr(p, "\"success\":false") && strstr(p, "\"C\""), "%s", p);
    free(p);
    close(fd);
    env_stop(&e);
}

Test(gateway, local_model_through_the_universal_endpoint)
{
    env e;
    env_start(&e);
    const char *body = "{\"provider\":\"workers-ai\",\"endpoint\":\"@local/tiny\","
                       "\"query\":{\"prompt\":\"the cat\",\"max_tokens\":5}}";
    ts_response r;
    ts_http(&r, "POST", url(&e, "/v1/local/default"), body, NULL);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    cr_assert(strstr(r.body, "\"response\""), "%s", r.body);
    ts_response_free(&r);
    /* Streamed, through the provider path: usage is counted. */
    ts_http(&r, "POST", url(&e, "/v1/local/default/workers-ai/@local/tiny"),
            "{\"prompt\":\"the cat\",\"max_tokens\":4,\"stream\":true,\"ignore_eos\":true}", NULL);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    cr_assert(strstr(r.body, "data: [DONE]"), "%s", r.body);
    ts_response_free(&r);
    json_t *logs = wait_logs(&e, "default", "provider=workers-ai", 2);
    /* Both may carry the same millisecond: find the streamed one by path. */
    json_t *streamed = NULL;
    size_t k;
    json_t *rec;
    json_array_foreach(logs, k, rec) if (strstr(json_string_value(json_object_get(rec, "path")),
                                                "/workers-ai/")) streamed = rec;
    cr_assert_not_null(streamed);
    cr_assert_eq(json_integer_value(json_object_get(streamed, "tokens_out")), 4);
    json_decref(logs);
    /* An unknown provider in the only step is a 400. */
    ts_http(&r, "POST", url(&e, "/v1/local/default"),
            "{\"provider\":\"nope\",\"endpoint\":\"x\",\"query\":{}}", NULL);
    cr_assert_eq(r.status, 400, "%ld %s", r.status, r.body);
    ts_response_free(&r);
    /* An unknown gateway is a 404. */
    ts_http(&r, "POST", url(&e, "/v1/local/nope"), body, NULL);
    cr_assert_eq(r.status, 404, "%ld %s", r.status, r.body);
    ts_response_free(&r);
    env_stop(&e);
}

Test(gateway, authenticated_gateway_needs_its_token)
{
    env e;
    env_start(&e);
    char *s = step("ok", CHAT);
    ts_response r;
    ts_http(&r, "POST", url(&e, "/v1/local/secure"), s, NULL);
    cr_assert_eq(r.status, 401, "%ld %s", r.status, r.body);
    ts_response_free(&r);
    ts_http(&r, "POST", url(&e, "/v1/local/secure"), s,
            (const char *const[]){"cf-aig-authorization: Bearer wrong", NULL});
    cr_assert_eq(r.status, 401);
    ts_response_free(&r);
    ts_http(&r, "POST", url(&e, "/v1/local/secure"), s,
            (const char *const[]){"cf-aig-authorization: Bearer s3cret", NULL});
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    ts_response_free(&r);
    /* A gateway without authentication ignores the header. */
    ts_http(&r, "POST", url(&e, "/v1/local/default"), s,
            (const char *const[]){"cf-aig-authorization: Bearer wrong", NULL});
    cr_assert_eq(r.status, 200);
    ts_response_free(&r);
    /* WebSocket: by header, or by subprotocol for browsers. */
    char status[256];
    int fd = ts_ws_connect(e.a.port, "/v1/local/secure", NULL, status, sizeof status);
    cr_assert(fd < 0 && strstr(status, "401"), "%s", status);
    fd = ts_ws_connect(e.a.port, "/v1/local/secure",
                       (const char *const[]){
                           "Sec-WebSocket-Protocol: cf-aig-authorization.s3cret", NULL},
                       status, sizeof status);
    cr_assert(fd >= 0, "%s", status);
    close(fd);
    free(s);
    env_stop(&e);
}

static const char POLICY[] =
    "function limit(req)\n"
    "  if req.metadata.user then\n"
    "    return {key = 'tokens:' .. req.metadata.user, unit = 'tokens', limit = 100,\n"
    "            window = 60}\n"
    "  end\n"
    "end\n"
    "function on_error(req, err)\n"
    "  if err.status == 500 then return {action = 'fail', status = 502,\n"
    "                                    message = 'policy says no'} end\n"
    "end\n"
    "function on_response(req, resp)\n"
    "  if resp.body and resp.body:find('upstream', 1, true) and req.metadata.block then\n"
    "    return {action = 'fallback'}\n"
    "  end\n"
    "end\n";

static void env_start_policy(env *e)
{
    env_config(e);
    size_t n = strlen(e->cfg) + 128;
    char *cfg = malloc(n);
    snprintf(cfg, n, "%spolicy:\n  files: [\"@DIR@/gw.lua\"]\n", e->cfg);
    free(e->cfg);
    e->cfg = cfg;
    const char *const files[] = {"gw.lua", POLICY, NULL};
    ts_agent_start_files(&e->a, e->cfg, files);
}

static long chat_with(env *e, const char *user, int max_tokens, const char *extra_meta)
{
    char body[512], meta[160];
    snprintf(body, sizeof body,
             "{\"provider\":\"ok\",\"endpoint\":\"chat/completions\",\"query\":"
             "{\"model\":\"m\",\"max_tokens\":%d,\"messages\":[{\"role\":\"user\","
             "\"content\":\"hi\"}]}}",
             max_tokens);
    snprintf(meta, sizeof meta, "cf-aig-metadata: {\"user\":\"%s\"%s}", user,
             extra_meta ? extra_meta : "");
    ts_response r;
    ts_http(&r, "POST", url(e, "/v1/local/default"), body, (const char *const[]){meta, NULL});
    long st = r.status;
    if (st == 429) {
        char *ra = ts_header(&r, "Retry-After");
        cr_assert_not_null(ra, "429 without Retry-After");
        free(ra);
    }
    ts_response_free(&r);
    return st;
}

Test(gateway, token_limit_reserves_max_tokens_and_settles_on_usage)
{
    env e;
    env_start_policy(&e);
    /* Each answer uses 10 tokens (the upstream's usage); the budget is 100
     * a minute. A request reserves its prompt estimate (1) + max_tokens. */
    cr_assert_eq(chat_with(&e, "ann", 60, NULL), 200); /* 61 reserved, 10 kept */
    cr_assert_eq(chat_with(&e, "ann", 60, NULL), 200); /* 10 + 61 <= 100: only if settled */
    cr_assert_eq(chat_with(&e, "ann", 90, NULL), 429); /* 20 + 91 > 100 */
    cr_assert_eq(chat_with(&e, "ann", 70, NULL), 200); /* 20 + 71 <= 100 */
    cr_assert_eq(chat_with(&e, "bob", 90, NULL), 200); /* another user's budget */
    env_stop(&e);
}

Test(gateway, on_error_and_on_response_policies_decide)
{
    env e;
    env_start_policy(&e);
    /* on_error: the 500 of the first step fails the request (no fallback). */
    char *s0 = step("down", CHAT), *s1 = step("ok", CHAT);
    char body[2048];
    snprintf(body, sizeof body, "[%s,%s]", s0, s1);
    ts_response r;
    ts_http(&r, "POST", url(&e, "/v1/local/default"), body, NULL);
    cr_assert_eq(r.status, 502, "%ld %s", r.status, r.body);
    cr_assert(strstr(r.body, "policy says no"), "%s", r.body);
    ts_response_free(&r);
    cr_assert_eq(atomic_load(&g_ok_calls), 0);
    /* on_response: a body the policy refuses falls back to the next step
     * (here the local model). */
    char local[512];
    snprintf(local, sizeof local, "[%s,{\"provider\":\"workers-ai\",\"endpoint\":"
                                  "\"@local/tiny\",\"query\":{\"prompt\":\"x\","
                                  "\"max_tokens\":2}}]",
             s1);
    ts_http(&r, "POST", url(&e, "/v1/local/default"), local,
            (const char *const[]){"cf-aig-metadata: {\"block\":true}", NULL});
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    char *st = ts_header(&r, "cf-aig-step");
    cr_assert_str_eq(st, "1");
    free(st);
    cr_assert(strstr(r.body, "\"response\""), "%s", r.body);
    ts_response_free(&r);
    free(s0);
    free(s1);
    env_stop(&e);
}

typedef struct same {
    env *e;
    const char *body;
    ts_response r;
} same;

static void *same_main(void *arg)
{
    same *x = arg;
    ts_http(&x->r, "POST", url(x->e, "/v1/local/default"), x->body,
            (const char *const[]){"cf-aig-cache-ttl: 60", NULL});
    return NULL;
}

Test(gateway, identical_requests_in_flight_are_coalesced_into_one_upstream_call)
{
    env e;
    env_start(&e);
    /* The upstream's stream takes about 60 ms: four identical requests
     * sent together share the first one's call. */
    char *s = step("ok", CHAT_STREAM);
    same x[4];
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        x[i].e = &e;
        x[i].body = s;
        pthread_create(&t[i], NULL, same_main, &x[i]);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    int hits = 0;
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(x[i].r.status, 200, "%ld %s", x[i].r.status, x[i].r.body);
        cr_assert_str_eq(x[i].r.body, x[0].r.body);
        cr_assert(strstr(x[i].r.body, "data: [DONE]"), "%s", x[i].r.body);
        char *c = ts_header(&x[i].r, "cf-aig-cache-status");
        hits += c && strcmp(c, "HIT") == 0;
        free(c);
    }
    for (int i = 0; i < 4; i++)
        ts_response_free(&x[i].r);
    cr_assert_eq(atomic_load(&g_ok_calls), 1, "upstream called %d times",
                 atomic_load(&g_ok_calls));
    cr_assert_eq(hits, 3);
    free(s);
    env_stop(&e);
}

/* Sends a streamed gateway request on a raw socket, reads until the stream
 * has begun, and hangs up. */
static void start_and_hang_up(env *e, const char *body)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)e->a.port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    char req[2048];
    int n = snprintf(req, sizeof req,
                     "POST /v1/local/default HTTP/1.1\r\nHost: x\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                     strlen(body), body);
    cr_assert_eq(send(fd, req, (size_t)n, 0), n);
    char buf[4096];
    size_t got = 0;
    while (got < sizeof buf - 1) {
        ssize_t k = recv(fd, buf + got, sizeof buf - 1 - got, 0);
        cr_assert(k > 0, "the stream did not start");
        got += (size_t)k;
        buf[got] = '\0';
        if (strstr(buf, "data: "))
            break;
    }
    cr_assert(strstr(buf, " 200 "), "%s", buf);
    close(fd);
}

Test(gateway, a_client_that_hangs_up_mid_stream_is_logged_and_frees_its_calls)
{
    env e;
    env_start(&e);
    /* An upstream stream (about 60 ms long) and a local model's (4000
     * tokens: it would run for seconds) are both left mid-way. */
    char *s = step("ok", CHAT_STREAM);
    start_and_hang_up(&e, s);
    start_and_hang_up(&e, "{\"provider\":\"workers-ai\",\"endpoint\":\"@local/tiny\","
                          "\"query\":{\"prompt\":\"the cat\",\"max_tokens\":900,"
                          "\"ignore_eos\":true,\"stream\":true}}");
    /* Both requests are logged as not successful... */
    json_t *logs = wait_logs(&e, "default", "success=false", 2);
    json_decref(logs);
    /* ...and the agent goes on serving, the model included. */
    ts_response r;
    ts_http(&r, "POST", url(&e, "/v1/local/default"),
            "{\"provider\":\"workers-ai\",\"endpoint\":\"@local/tiny\","
            "\"query\":{\"prompt\":\"x\",\"max_tokens\":2}}",
            NULL);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    ts_response_free(&r);
    ts_http(&r, "POST", url(&e, "/v1/local/default"), s, NULL);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    ts_response_free(&r);
    free(s);
    env_stop(&e);
}

/* The text of a chat stream's content deltas, concatenated. */
static void stream_text(const char *body, char *out, size_t outlen)
{
    out[0] = '\0';
    for (const char *p = body; (p = strstr(p, "data: {")); p += 6) {
        const char *end = strstr(p, "\n\n");
        json_t *j = json_loadb(p + 6, end ? (size_t)(end - p - 6) : strlen(p + 6), 0, NULL);
        json_t *c = json_object_get(
            json_object_get(json_array_get(json_object_get(j, "choices"), 0), "delta"), "content");
        if (json_is_string(c) && strlen(out) + json_string_length(c) < outlen)
            strcat(out, json_string_value(c));
        json_decref(j);
    }
}

Test(gateway, a_stream_cut_mid_way_is_resumed_when_the_retry_reproduces_it)
{
    env e;
    env_start(&e);
    char *s = step("cut", CHAT_STREAM);
    ts_response r;
    ts_http(&r, "POST", url(&e, "/v1/local/default"), s,
            (const char *const[]){"cf-aig-max-attempts: 2", "cf-aig-retry-delay: 10", NULL});
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    char text[256];
    stream_text(r.body, text, sizeof text);
    /* The client saw the answer once, whole, and the stream's end. */
    cr_assert_str_eq(text, "Hello from upstream", "%s", r.body);
    cr_assert(strstr(r.body, "data: [DONE]"), "%s", r.body);
    ts_response_free(&r);
    cr_assert_eq(atomic_load(&g_cut_calls), 2);
    json_t *logs = wait_logs(&e, "default", "provider=cut", 1);
    json_t *rec = json_array_get(logs, 0);
    cr_assert(json_is_true(json_object_get(rec, "success")), "%s", json_dumps(rec, 0));
    cr_assert_eq(json_integer_value(json_object_get(rec, "attempts")), 2);
    json_decref(logs);
    free(s);
    env_stop(&e);
}

Test(gateway, a_cut_stream_whose_retry_differs_ends_where_it_was_cut)
{
    env e;
    env_start(&e);
    char *s = step("cutdiff", CHAT_STREAM);
    ts_response r;
    ts_http(&r, "POST", url(&e, "/v1/local/default"), s,
            (const char *const[]){"cf-aig-max-attempts: 2", "cf-aig-retry-delay: 10", NULL});
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    char text[256];
    stream_text(r.body, text, sizeof text);
    cr_assert_str_eq(text, "Hello from", "%s", r.body); /* nothing spliced on */
    cr_assert_null(strstr(r.body, "data: [DONE]"), "%s", r.body);
    ts_response_free(&r);
    json_t *logs = wait_logs(&e, "default", "provider=cutdiff", 1);
    cr_assert(json_is_false(json_object_get(json_array_get(logs, 0), "success")));
    json_decref(logs);
    /* Without attempts left, a cut stream is not retried at all. */
    atomic_store(&g_cut_calls, 0);
    ts_http(&r, "POST", url(&e, "/v1/local/default"), s, NULL);
    stream_text(r.body, text, sizeof text);
    cr_assert_str_eq(text, "Hello from", "%s", r.body);
    cr_assert_eq(atomic_load(&g_cut_calls), 1);
    ts_response_free(&r);
    free(s);
    env_stop(&e);
}
