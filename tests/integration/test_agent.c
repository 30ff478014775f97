/*
 * Integration tests: the real outpostd, started on a free loopback port with
 * the real test plugins (tests/plugins), spoken to over HTTP.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test_support.h"

#define BASE_CONFIG                                                                     \
    "server:\n"                                                                         \
    "  listen: 127.0.0.1:@PORT@\n"                                                      \
    "  workers: 2\n"                                                                    \
    "  max_body_bytes: 4096\n"                                                          \
    "  shutdown_grace_s: 10\n"                                                          \
    "log:\n"                                                                            \
    "  level: info\n"                                                                   \
    "data_dir: @DIR@/var\n"                                                             \
    "plugins:\n"                                                                        \
    "  dirs: [@PLUGINS@]\n"                                                             \
    "accounts:\n"                                                                       \
    "  - id: local\n"                                                                   \
    "models:\n"                                                                         \
    "  - id: \"@local/echo\"\n"                                                         \
    "    plugin: echo\n"                                                                \
    "    task: text-generation\n"                                                       \
    "    aliases: [\"@cf/meta/llama-3.1-8b-instruct\"]\n"                               \
    "  - id: \"@local/slow-echo\"\n"                                                    \
    "    plugin: echo\n"                                                                \
    "    task: text-generation\n"                                                       \
    "    options: {delay_ms: 100}\n"                                                    \
    "  - id: \"@local/missing-plugin\"\n"                                               \
    "    plugin: nosuchplugin\n"                                                        \
    "    task: text-generation\n"

static char *url(const ts_agent *a, const char *path)
{
    static char buf[4][512];
    static int i;
    i = (i + 1) % 4;
    snprintf(buf[i], sizeof buf[i], "%s%s", a->base_url, path);
    return buf[i];
}

static void assert_error_envelope(const ts_response *r, int code)
{
    cr_assert(strstr(r->body, "\"success\":false"), "no success:false in %s", r->body);
    char want[64];
    snprintf(want, sizeof want, "\"code\":%d", code);
    cr_assert(strstr(r->body, want), "expected %s in %s", want, r->body);
    cr_assert(strstr(r->body, "\"messages\":[]"), "%s", r->body);
    cr_assert(strstr(r->body, "\"result\":null"), "%s", r->body);
}

Test(agent, health_ready_and_errors)
{
    ts_agent a;
    ts_agent_start(&a, BASE_CONFIG);
    ts_response r;

    ts_http(&r, "GET", url(&a, "/healthz"), NULL, NULL);
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.body, "\"ok\""));
    ts_response_free(&r);

    /* One configured model names a plugin that does not exist: not ready,
     * and the reason is in the answer. */
    ts_http(&r, "GET", url(&a, "/readyz"), NULL, NULL);
    cr_assert_eq(r.status, 503, "readyz %ld %s", r.status, r.body);
    cr_assert(strstr(r.body, "@local/missing-plugin"), "%s", r.body);
    cr_assert(strstr(r.body, "nosuchplugin"), "%s", r.body);
    ts_response_free(&r);

    ts_http(&r, "GET", url(&a, "/no/such/route"), NULL, NULL);
    cr_assert_eq(r.status, 404);
    assert_error_envelope(&r, 7000);
    ts_response_free(&r);

    ts_http(&r, "POST", url(&a, "/ai/run/@local/nope"), "{\"prompt\":\"hi\"}", NULL);
    cr_assert_eq(r.status, 404);
    assert_error_envelope(&r, 5007);
    cr_assert(strstr(r.body, "@local/nope"), "%s", r.body);
    ts_response_free(&r);

    ts_http(&r, "POST", url(&a, "/ai/run/@local/missing-plugin"), "{\"prompt\":\"hi\"}", NULL);
    cr_assert_eq(r.status, 503);
    assert_error_envelope(&r, 5008);
    ts_response_free(&r);

    ts_http(&r, "POST", url(&a, "/ai/run/@local/echo"), "{\"prompt\": ", NULL);
    cr_assert_eq(r.status, 400);
    assert_error_envelope(&r, 5004);
    cr_assert(strstr(r.body, "not valid JSON"), "%s", r.body);
    ts_response_free(&r);

    ts_http(&r, "POST", url(&a, "/ai/run/@local/echo"), "[1,2]", NULL);
    cr_assert_eq(r.status, 400);
    assert_error_envelope(&r, 5004);
    ts_response_free(&r);

    /* Input the plugin rejects: its message reaches the client as a 400. */
    ts_http(&r, "POST", url(&a, "/ai/run/@local/echo"), "{\"prompt\": 42}", NULL);
    cr_assert_eq(r.status, 400, "%ld %s", r.status, r.body);
    assert_error_envelope(&r, 5004);
    ts_response_free(&r);

    ts_http(&r, "GET", url(&a, "/ai/run/@local/echo"), NULL, NULL);
    cr_assert_eq(r.status, 405);
    assert_error_envelope(&r, 7001);
    ts_response_free(&r);

    /* Body over server.max_body_bytes (4096). */
    char *big = malloc(10001);
    memset(big, 'x', 10000);
    big[10000] = '\0';
    memcpy(big, "{\"prompt\":\"", 11);
    big[9998] = '"';
    big[9999] = '}';
    ts_http(&r, "POST", url(&a, "/ai/run/@local/echo"), big, NULL);
    cr_assert_eq(r.status, 413);
    assert_error_envelope(&r, 413);
    ts_response_free(&r);
    free(big);

    /* Still healthy after all of it. */
    ts_http(&r, "GET", url(&a, "/healthz"), NULL, NULL);
    cr_assert_eq(r.status, 200);
    ts_response_free(&r);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

Test(agent, inference_and_catalog)
{
    ts_agent a;
    ts_agent_start(&a, BASE_CONFIG);
    ts_response r;

    ts_http(&r, "POST", url(&a, "/ai/run/@local/echo"),
            "{\"prompt\":\"hello edge world\"}", NULL);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    cr_assert(strstr(r.body, "\"success\":true"), "%s", r.body);
    cr_assert(strstr(r.body, "hello edge world"), "%s", r.body);
    cr_assert(strstr(r.body, "\"usage\""), "%s", r.body);
    ts_response_free(&r);

    /* Account-scoped path and an alias resolve to the same model. */
    ts_http(&r, "POST",
            url(&a, "/client/v4/accounts/local/ai/run/@cf/meta/llama-3.1-8b-instruct"),
            "{\"messages\":[{\"role\":\"user\",\"content\":\"via alias\"}]}", NULL);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    cr_assert(strstr(r.body, "via alias"), "%s", r.body);
    ts_response_free(&r);

    ts_http(&r, "POST", url(&a, "/client/v4/accounts/other/ai/run/@local/echo"),
            "{\"prompt\":\"x\"}", NULL);
    cr_assert_eq(r.status, 404);
    assert_error_envelope(&r, 10002);
    ts_response_free(&r);

    /* Streaming: SSE events in order, closed by [DONE]. */
    ts_http(&r, "POST", url(&a, "/ai/run/@local/echo"),
            "{\"prompt\":\"one two three\",\"stream\":true}", NULL);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    char *ct = ts_header(&r, "Content-Type");
    cr_assert_not_null(ct);
    cr_assert(strstr(ct, "text/event-stream"), "%s", ct);
    free(ct);
    const char *one = strstr(r.body, "data: {\"response\":\"one");
    const char *three = strstr(r.body, "three");
    const char *done = strstr(r.body, "data: [DONE]\n\n");
    cr_assert(one && three && done && one < three && three < done, "stream: %s", r.body);
    cr_assert(strstr(r.body, "\"usage\""), "final event has no usage: %s", r.body);
    ts_response_free(&r);

    ts_http(&r, "GET", url(&a, "/v1/models"), NULL, NULL);
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.body, "\"object\":\"list\""), "%s", r.body);
    cr_assert(strstr(r.body, "\"id\":\"@local/echo\""), "%s", r.body);
    cr_assert(strstr(r.body, "\"id\":\"@cf/meta/llama-3.1-8b-instruct\""), "%s", r.body);
    ts_response_free(&r);

    ts_http(&r, "GET", url(&a, "/client/v4/accounts/local/ai/models/search?search=slow"), NULL,
            NULL);
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.body, "\"success\":true"), "%s", r.body);
    cr_assert(strstr(r.body, "\"name\":\"@local/slow-echo\""), "%s", r.body);
    cr_assert_null(strstr(r.body, "\"name\":\"@local/echo\""), "%s", r.body);
    cr_assert(strstr(r.body, "\"total_count\":1"), "%s", r.body);
    cr_assert(strstr(r.body, "Text Generation"), "%s", r.body);
    ts_response_free(&r);

    cr_assert_eq(ts_agent_stop(&a), 0);
}

Test(agent, metrics_pass_promtool)
{
    ts_agent a;
    ts_agent_start(&a, BASE_CONFIG);
    ts_response r;
    ts_http(&r, "POST", url(&a, "/ai/run/@local/echo"), "{\"prompt\":\"count me\"}", NULL);
    ts_response_free(&r);
    ts_http(&r, "GET", url(&a, "/metrics"), NULL, NULL);
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.body, "outpost_http_requests_total{route=\"ai_run\",status=\"200\"} 1"),
              "%s", r.body);
    cr_assert(strstr(r.body, "outpost_build_info{"), "%s", r.body);
    cr_assert(strstr(r.body, "outpost_plugins_loaded_total{plugin=\"echo\"} 1"), "%s", r.body);
    cr_assert(strstr(r.body, "outpost_plugins_refused_total{reason=\"abi_major\"} 1"), "%s",
              r.body);
    cr_assert(strstr(r.body, "outpost_http_request_duration_seconds_bucket"), "%s", r.body);
    int checked = ts_promtool_check(&a, r.body);
    ts_response_free(&r);
    cr_assert_eq(ts_agent_stop(&a), 0);
    if (checked != 0)
        cr_skip_test("promtool not installed (Debian package prometheus)");
}

Test(agent, broken_plugins_are_refused_and_logged)
{
    ts_agent a;
    ts_agent_start(&a, BASE_CONFIG);
    char *log = ts_agent_log(&a);
    cr_assert(strstr(log, "bad_abi_major"), "no line for the wrong-ABI plugin:\n%s", log);
    cr_assert(strstr(log, "no_entry"), "%s", log);
    cr_assert(strstr(log, "init_fails"), "%s", log);
    free(log);
    ts_response r;
    ts_http(&r, "GET", url(&a, "/healthz"), NULL, NULL);
    cr_assert_eq(r.status, 200);
    ts_response_free(&r);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

Test(agent, tokens_required_off_loopback)
{
    /* Token "s3cret" hashed with SHA-256. */
    const char *cfg =
        "server:\n  listen: 0.0.0.0:@PORT@\n  workers: 1\n"
        "data_dir: @DIR@/var\nplugins:\n  dirs: [@PLUGINS@]\n"
        "accounts:\n  - id: acme\n    tokens:\n      - name: ci\n        sha256: "
        "\"1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0\"\n"
        "  - id: other\n"
        "models:\n  - id: \"@local/echo\"\n    plugin: echo\n    task: text-generation\n";
    ts_agent a;
    ts_agent_start(&a, cfg);
    ts_response r;
    const char *good[] = {"Authorization: Bearer s3cret", NULL};
    const char *bad[] = {"Authorization: Bearer wrong", NULL};

    ts_http(&r, "GET", url(&a, "/metrics"), NULL, NULL);
    cr_assert_eq(r.status, 200);
    ts_response_free(&r);

    /* Probes need no token, but see no details without one. */
    ts_http(&r, "GET", url(&a, "/readyz"), NULL, NULL);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    cr_assert_str_eq(r.body, "{\"ready\":true}");
    ts_response_free(&r);
    ts_http(&r, "GET", url(&a, "/readyz"), NULL, good);
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.body, "\"failed\":[]"), "%s", r.body);
    ts_response_free(&r);

    ts_http(&r, "POST", url(&a, "/ai/run/@local/echo"), "{\"prompt\":\"x\"}", NULL);
    cr_assert_eq(r.status, 401);
    assert_error_envelope(&r, 10000);
    ts_response_free(&r);

    ts_http(&r, "GET", url(&a, "/v1/models"), NULL, bad);
    cr_assert_eq(r.status, 401);
    ts_response_free(&r);

    ts_http(&r, "POST", url(&a, "/client/v4/accounts/acme/ai/run/@local/echo"),
            "{\"prompt\":\"authorized\"}", good);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    cr_assert(strstr(r.body, "authorized"));
    ts_response_free(&r);

    /* A valid token for another account's path. */
    ts_http(&r, "POST", url(&a, "/client/v4/accounts/other/ai/run/@local/echo"),
            "{\"prompt\":\"x\"}", good);
    cr_assert_eq(r.status, 403);
    assert_error_envelope(&r, 10001);
    ts_response_free(&r);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

#define POLICY_CONFIG(files)                                                           \
    "server:\n  listen: 127.0.0.1:@PORT@\n  workers: 2\n"                              \
    "data_dir: @DIR@/var\nplugins:\n  dirs: [@PLUGINS@]\n"                             \
    "accounts:\n  - id: local\n"                                                       \
    "models:\n  - id: \"@local/echo\"\n    plugin: echo\n    task: text-generation\n"  \
    "  - id: \"@local/other\"\n    plugin: echo\n    task: text-generation\n"          \
    "policy:\n  lib_dir: @SRC@/lua\n  instructions: 100000\n  memory_bytes: 2MiB\n"    \
    "  files: [" files "]\n"

Test(agent, policies_route_reject_and_fail_safely)
{
    /* Start with a pass-through policy, then replace it and reload. */
    const char *files[] = {"p.lua", "function route(req) return nil end\n", NULL};
    ts_agent a;
    ts_agent_start_files(&a, POLICY_CONFIG("@DIR@/p.lua"), files);
    char *p = ts_write_file(
        a.dir, "p.lua",
        "function route(req)\n"
        "  if req.model == 'loop' then while true do end end\n"
        "  if req.model == 'bomb' then local s = ('x'):rep(1 << 20) local t = {} for i = 1, 100 do t[i] = s .. i end end\n"
        "  if req.model == 'oops' then local x = nil; return x.y end\n"
        "  if req.model == 'blocked' then return outpost.reject(451, 'not here') end\n"
        "  if req.model == 'alias' then return outpost.route('@local/other') end\n"
        "end\n");
    free(p);
    ts_agent_signal(&a, SIGHUP);
    ts_response r;
    for (int i = 0; i < 50; i++) { /* wait for the reload to land */
        ts_http(&r, "POST", url(&a, "/ai/run/blocked"), "{\"prompt\":\"x\"}", NULL);
        long st = r.status;
        ts_response_free(&r);
        if (st == 451)
            break;
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    ts_http(&r, "POST", url(&a, "/ai/run/blocked"), "{\"prompt\":\"x\"}", NULL);
    cr_assert_eq(r.status, 451, "%ld %s", r.status, r.body);
    assert_error_envelope(&r, 3051);
    cr_assert(strstr(r.body, "not here"), "%s", r.body);
    ts_response_free(&r);

    ts_http(&r, "POST", url(&a, "/ai/run/alias"), "{\"prompt\":\"rerouted\"}", NULL);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    cr_assert(strstr(r.body, "rerouted"), "%s", r.body);
    ts_response_free(&r);

    const char *bad[] = {"loop", "bomb", "oops"};
    for (int i = 0; i < 3; i++) {
        char path[64];
        snprintf(path, sizeof path, "/ai/run/%s", bad[i]);
        ts_http(&r, "POST", url(&a, path), "{\"prompt\":\"x\"}", NULL);
        cr_assert_eq(r.status, 500, "%s: %ld %s", bad[i], r.status, r.body);
        assert_error_envelope(&r, 3050);
        cr_assert(strstr(r.body, "p.lua"), "%s: message does not name the policy: %s", bad[i],
                  r.body);
        ts_response_free(&r);
    }
    /* The agent is healthy and the policy still serves the next request. */
    ts_http(&r, "POST", url(&a, "/ai/run/@local/echo"), "{\"prompt\":\"still fine\"}", NULL);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    ts_response_free(&r);
    ts_http(&r, "GET", url(&a, "/metrics"), NULL, NULL);
    cr_assert(strstr(r.body, "outpost_policy_failures_total{"), "%s", r.body);
    cr_assert(strstr(r.body, "reason=\"budget\""), "%s", r.body);
    cr_assert(strstr(r.body, "reason=\"memory\""), "%s", r.body);
    ts_response_free(&r);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

Test(agent, bad_reload_keeps_running_config)
{
    ts_agent a;
    ts_agent_start(&a, BASE_CONFIG);
    char *p = ts_write_file(a.dir, "outpost.yaml", "server:\n  listen: [oops\n");
    free(p);
    ts_agent_signal(&a, SIGHUP);
    struct timespec ts = {0, 300 * 1000 * 1000};
    nanosleep(&ts, NULL);
    ts_response r;
    ts_http(&r, "POST", url(&a, "/ai/run/@local/echo"), "{\"prompt\":\"kept\"}", NULL);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    ts_response_free(&r);
    char *log = ts_agent_log(&a);
    cr_assert(strstr(log, "reload.failed"), "%s", log);
    cr_assert(strstr(log, "outpost.yaml:3:1:"), "no file:line:column in:\n%s", log);
    free(log);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

/* A streamed request in flight survives SIGHUP and is finished by SIGTERM's
 * graceful shutdown; the agent exits 0. */
static void *slow_stream(void *arg)
{
    ts_agent *a = arg;
    ts_response *r = malloc(sizeof *r);
    ts_http(r, "POST", url(a, "/ai/run/@local/slow-echo"),
            "{\"prompt\":\"a b c d e f g h\",\"stream\":true}", NULL);
    return r;
}

Test(agent, reload_and_graceful_shutdown_keep_in_flight)
{
    ts_agent a;
    ts_agent_start(&a, BASE_CONFIG);
    pthread_t t;
    pthread_create(&t, NULL, slow_stream, &a);
    struct timespec ts = {0, 250 * 1000 * 1000};
    nanosleep(&ts, NULL);
    ts_agent_signal(&a, SIGHUP);
    nanosleep(&ts, NULL);
    ts_agent_signal(&a, SIGTERM);
    void *res;
    pthread_join(t, &res);
    ts_response *r = res;
    cr_assert_eq(r->status, 200);
    cr_assert(strstr(r->body, "{\"response\":\" h\"}") && strstr(r->body, "data: [DONE]"),
              "stream cut short: %s", r->body);
    ts_response_free(r);
    free(r);
    int status;
    cr_assert_eq(waitpid(a.pid, &status, 0), a.pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
    char *log = ts_agent_log(&a);
    cr_assert(strstr(log, "reload.done"), "%s", log);
    cr_assert(strstr(log, "shutdown.done"), "%s", log);
    free(log);
    a.pid = 0;
    ts_agent_stop(&a);
}

Test(agent, check_config_reports_file_line_column)
{
    char *dir = ts_tmpdir();
    char *bad = ts_write_file(dir, "bad.yaml",
                              "server:\n  listen: 127.0.0.1:8787\n  workerz: 2\n");
    char cmd[600];
    snprintf(cmd, sizeof cmd, "%s/outpostd --check-config '%s'", OUTPOST_BINARY_DIR, bad);
    char *out = NULL;
    int rc = ts_run(cmd, &out);
    cr_assert_eq(rc, 2, "rc %d: %s", rc, out);
    char want[600];
    snprintf(want, sizeof want, "%s:3:3:", bad);
    cr_assert(strstr(out, want), "expected '%s' in: %s", want, out);
    cr_assert(strstr(out, "workerz"), "%s", out);
    free(out);

    snprintf(cmd, sizeof cmd, "%s/outpostd --check-config %s/examples/outpost.yaml",
             OUTPOST_BINARY_DIR, OUTPOST_SOURCE_DIR);
    rc = ts_run(cmd, &out);
    cr_assert_eq(rc, 0, "example config: %s", out);
    free(out);
    free(bad);
    ts_tmpdir_remove(dir);
    free(dir);
}

Test(agent, outpostctl_policy_test)
{
    char *dir = ts_tmpdir();
    char *pol = ts_write_file(dir, "p.lua",
                              "function route(req)\n"
                              "  if req.body.max_tokens and req.body.max_tokens > 100 then\n"
                              "    return outpost.reject(400, 'max_tokens too large') end\n"
                              "  return outpost.route('@local/b')\nend\n");
    char *ok = ts_write_file(dir, "ok.json", "{\"model\":\"@local/a\",\"body\":{\"prompt\":\"x\"}}");
    char *big = ts_write_file(dir, "big.json",
                              "{\"model\":\"@local/a\",\"body\":{\"max_tokens\":500}}");
    char *loop = ts_write_file(dir, "loop.lua", "function route(req) while true do end end\n");
    char cmd[1024];
    char *out = NULL;
    snprintf(cmd, sizeof cmd, "%s/outpostctl policy test '%s' '%s'", OUTPOST_BINARY_DIR, pol, ok);
    cr_assert_eq(ts_run(cmd, &out), 0, "%s", out);
    cr_assert(strstr(out, "\"model\":\"@local/b\""), "%s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s/outpostctl policy test '%s' '%s'", OUTPOST_BINARY_DIR, pol, big);
    cr_assert_eq(ts_run(cmd, &out), 0, "%s", out);
    cr_assert(strstr(out, "reject"), "%s", out);
    cr_assert(strstr(out, "max_tokens too large"), "%s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s/outpostctl policy test '%s' '%s'", OUTPOST_BINARY_DIR, loop, ok);
    cr_assert_eq(ts_run(cmd, &out), 1, "%s", out);
    cr_assert(strstr(out, "budget"), "%s", out);
    free(out);
    free(pol);
    free(ok);
    free(big);
    free(loop);
    ts_tmpdir_remove(dir);
    free(dir);
}

Test(agent, deadline_cancels_with_504)
{
    const char *cfg =
        "server:\n  listen: 127.0.0.1:@PORT@\n  workers: 2\n  request_timeout_s: 1\n"
        "data_dir: @DIR@/var\nplugins:\n  dirs: [@PLUGINS@]\naccounts:\n  - id: local\n"
        "models:\n  - id: \"@local/slow\"\n    plugin: echo\n    task: text-generation\n"
        "    options: {delay_ms: 200}\n";
    ts_agent a;
    ts_agent_start(&a, cfg);
    ts_response r;
    /* 20 words at 200 ms each would take 4 s; the deadline is 1 s. */
    ts_http(&r, "POST", url(&a, "/ai/run/@local/slow"),
            "{\"prompt\":\"a b c d e f g h i j k l m n o p q r s t\"}", NULL);
    cr_assert_eq(r.status, 504, "%ld %s", r.status, r.body);
    assert_error_envelope(&r, 3046);
    cr_assert(strstr(r.body, "request_timeout_s"), "%s", r.body);
    ts_response_free(&r);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

Test(agent, client_disconnect_cancels_inference)
{
    ts_agent a;
    ts_agent_start(&a, BASE_CONFIG);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)a.port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    const char *body = "{\"prompt\":\"a b c d e f g h i j k l m n o p q r s t\",\"stream\":true}";
    char req[512];
    int n = snprintf(req, sizeof req,
                     "POST /ai/run/@local/slow-echo HTTP/1.1\r\nHost: x\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                     strlen(body), body);
    cr_assert_eq(send(fd, req, (size_t)n, 0), n);
    char buf[512];
    cr_assert(recv(fd, buf, sizeof buf, 0) > 0); /* the stream has started */
    close(fd);
    /* The plugin sees the cancel at its next word (100 ms). */
    ts_response r;
    bool cancelled = false;
    for (int i = 0; i < 50 && !cancelled; i++) {
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
        ts_http(&r, "GET", url(&a, "/metrics"), NULL, NULL);
        cancelled = strstr(r.body, "outpost_inference_requests_total{model=\"@local/slow-echo\","
                                   "code=\"cancelled\"} 1") != NULL;
        if (!cancelled && i == 49)
            cr_assert_fail("no cancelled request in metrics:\n%s", r.body);
        ts_response_free(&r);
    }
    cr_assert_eq(ts_agent_stop(&a), 0);
}

/* With no grace period, SIGTERM cancels the inference in flight: the stream
 * ends with an error event and [DONE], and the agent still exits 0. */
Test(agent, shutdown_past_grace_cancels_in_flight)
{
    const char *cfg =
        "server:\n  listen: 127.0.0.1:@PORT@\n  workers: 2\n  shutdown_grace_s: 0\n"
        "data_dir: @DIR@/var\nplugins:\n  dirs: [@PLUGINS@]\naccounts:\n  - id: local\n"
        "models:\n  - id: \"@local/slow-echo\"\n    plugin: echo\n    task: text-generation\n"
        "    options: {delay_ms: 200}\n";
    ts_agent a;
    ts_agent_start(&a, cfg);
    pthread_t t;
    pthread_create(&t, NULL, slow_stream, &a);
    struct timespec ts = {0, 500 * 1000 * 1000};
    nanosleep(&ts, NULL);
    ts_agent_signal(&a, SIGTERM);
    void *res;
    pthread_join(t, &res);
    ts_response *r = res;
    cr_assert_eq(r->status, 200);
    cr_assert(strstr(r->body, "\"errors\""), "no error event: %s", r->body);
    cr_assert(strstr(r->body, "data: [DONE]"), "%s", r->body);
    cr_assert_null(strstr(r->body, "\" h\""), "stream was not cut: %s", r->body);
    ts_response_free(r);
    free(r);
    int status;
    cr_assert_eq(waitpid(a.pid, &status, 0), a.pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
    char *log = ts_agent_log(&a);
    cr_assert(strstr(log, "shutdown.cancel"), "%s", log);
    free(log);
    a.pid = 0;
    ts_agent_stop(&a);
}
