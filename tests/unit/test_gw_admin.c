/* gw_admin end to end: an op_http server on a loopback port whose handler
 * calls gw_admin_handle with a test config, a real gw_registry and a real
 * ls_store in a temp dir; records are appended with ls_append + ls_wait and
 * read back through the HTTP API with libcurl (and, for the export that
 * must wait for a slow client, a raw socket that does not read). */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api/op_api.h"
#include "gateway/gw_admin.h"
#include "http/op_http.h"
#include "platform/pl_log.h"
#include "platform/pl_time.h"
#include "test_support.h"

#define ACCT "acme"
#define PREFIX "/client/v4/accounts/" ACCT "/ai-gateway"

/* ---- fixture ------------------------------------------------------------ */

static struct {
    char *dir;
    op_config cfg;
    op_config_account accounts[1];
    op_config_gateway gws[1];
    gw_registry *reg;
    ls_store *logs;
    bool no_store;          /* the handler passes logs = NULL */
    op_http_server *srv;
    char base[128];         /* http://127.0.0.1:PORT/client/v4/accounts/acme/ai-gateway */
    int64_t t0;             /* created_ms of record 0 */
} F;

static void handler(op_http_req *r, void *user)
{
    (void)user;
    const char *path = op_http_req_path(r);
    if (strncmp(path, PREFIX, sizeof PREFIX - 1) != 0) {
        op_http_respond(r, 404, "text/plain", "not here\n", 9);
        return;
    }
    gw_admin_handle(r, &F.cfg, ACCT, path + sizeof PREFIX - 1, F.reg, F.no_store ? NULL : F.logs);
}

static void open_registry(void)
{
    char err[256] = "";
    F.reg = gw_registry_open(F.dir, err, sizeof err);
    cr_assert_not_null(F.reg, "%s", err);
}

static void setup(void)
{
    pl_log_configure(PL_LOG_OFF, PL_LOG_FORMAT_KV);
    memset(&F, 0, sizeof F);
    F.dir = ts_tmpdir();
    F.accounts[0].id = ACCT;
    gw_gateway_defaults(&F.gws[0]);
    F.gws[0].account = ACCT;
    F.gws[0].id = "cfg-gw";
    F.cfg.accounts = F.accounts;
    F.cfg.n_accounts = 1;
    F.cfg.gateways = F.gws;
    F.cfg.n_gateways = 1;
    open_registry();
    char ldir[512], err[256] = "";
    snprintf(ldir, sizeof ldir, "%s/logs", F.dir);
    ls_opts o;
    ls_opts_init(&o, ldir);
    o.fsync = false; /* durability is the store's own tests' business */
    o.commit_interval_us = 500;
    cr_assert_eq(ls_open(&o, &F.logs, err, sizeof err), 0, "%s", err);
    op_http_options ho = {.host = "127.0.0.1", .port = 0, .workers = 2,
                          .max_body_bytes = 1 << 20, .max_header_bytes = 16384,
                          .max_connections = 64, .idle_timeout_s = 10, .handler = handler};
    F.srv = op_http_server_start(&ho, err, sizeof err);
    cr_assert_not_null(F.srv, "%s", err);
    snprintf(F.base, sizeof F.base, "http://127.0.0.1:%u" PREFIX, op_http_server_port(F.srv));
    F.t0 = 1700000000000;
}

static void teardown(void)
{
    gw_admin_stop();
    op_http_server_stop(F.srv);
    ls_close(F.logs);
    gw_registry_close(F.reg);
    ts_tmpdir_remove(F.dir);
    free(F.dir);
}

TestSuite(gw_admin, .init = setup, .fini = teardown, .timeout = 60);

/* ---- helpers -------------------------------------------------------------- */

typedef struct resp {
    long status;
    json_t *json; /* parsed body, or NULL */
    ts_response raw;
} resp;

static resp call(const char *method, const char *path_and_query, const char *body)
{
    char url[2048];
    snprintf(url, sizeof url, "%s%s", F.base, path_and_query);
    resp r = {0};
    ts_http(&r.raw, method, url, body, NULL);
    r.status = r.raw.status;
    r.json = json_loadb(r.raw.body, r.raw.body_len, 0, NULL);
    return r;
}

static void resp_free(resp *r)
{
    json_decref(r->json);
    ts_response_free(&r->raw);
}

static json_t *result(const resp *r) { return json_object_get(r->json, "result"); }

static long long info_int(const resp *r, const char *key)
{
    return json_integer_value(json_object_get(json_object_get(r->json, "result_info"), key));
}

/* Asserts an error answer: status, envelope, code, and a message that
 * contains `says`. */
static void expect_error(const char *method, const char *pq, const char *body, long status,
                         int code, const char *says)
{
    resp r = call(method, pq, body);
    cr_assert_eq(r.status, status, "%s %s: %ld %s", method, pq, r.status, r.raw.body);
    cr_assert_not_null(r.json, "%s", r.raw.body);
    cr_assert(json_is_false(json_object_get(r.json, "success")));
    cr_assert(json_is_null(json_object_get(r.json, "result")));
    json_t *e = json_array_get(json_object_get(r.json, "errors"), 0);
    cr_assert_eq(json_integer_value(json_object_get(e, "code")), code, "%s %s: %s", method, pq,
                 r.raw.body);
    const char *msg = json_string_value(json_object_get(e, "message"));
    cr_assert(msg && strstr(msg, says), "%s %s: '%s' lacks '%s'", method, pq, msg, says);
    resp_free(&r);
}

/* The test records: record i of n has these fields (so each filter's
 * expected count can be computed from i). */
static const char *rec_provider(int i) { return i % 3 == 0 ? "workers-ai" : "openai"; }
static const char *rec_model(int i) { return i % 2 ? "m-odd" : "m-even"; }
static int rec_status(int i) { return i % 5 == 4 ? 500 : 200; }
static bool rec_cached(int i) { return i % 4 == 1; }
static double rec_duration(int i) { return 10.0 * i; }
static const char *rec_user(int i) { return i % 2 ? "alice" : "bob"; }

/* Appends n records to gateway gw (created_ms t0 + i s) and waits until
 * they are durable. body_bytes > 0: request/response bodies of that size. */
static void append_records(const char *gw, int n, size_t body_bytes)
{
    char *big = NULL;
    if (body_bytes) {
        big = malloc(body_bytes + 1);
        memset(big, 'x', body_bytes);
        big[body_bytes] = '\0';
    }
    uint64_t last = 0;
    for (int i = 0; i < n; i++) {
        char meta[128], req[128], res[128];
        snprintf(meta, sizeof meta, "{\"user\":\"%s\",\"n\":%d}", rec_user(i), i);
        snprintf(req, sizeof req, "{\"prompt\":\"question %d\"}", i);
        snprintf(res, sizeof res, "{\"response\":\"answer %d\"}", i);
        ls_record rec = {0};
        rec.created_ms = F.t0 + (int64_t)i * 1000;
        rec.account = ACCT;
        rec.gateway = gw;
        rec.provider = rec_provider(i);
        rec.model = rec_model(i);
        rec.path = "/v1/chat/completions";
        rec.status = rec_status(i);
        rec.success = rec_status(i) == 200;
        rec.cached = rec_cached(i);
        rec.attempts = 1;
        rec.tokens_in = (uint64_t)i;
        rec.tokens_out = 2 * (uint64_t)i;
        rec.cost = 0.5 * i;
        rec.duration_ms = rec_duration(i);
        rec.metadata = meta;
        rec.request_content_type = "application/json";
        rec.response_content_type = "application/json";
        rec.request_body = big ? big : req;
        rec.request_body_len = big ? body_bytes : strlen(req);
        rec.response_body = big ? big : res;
        rec.response_body_len = big ? body_bytes : strlen(res);
        int rc;
        while ((rc = ls_append(F.logs, &rec, &last)) == -EAGAIN)
            usleep(1000);
        cr_assert_eq(rc, 0, "ls_append: %s", strerror(-rc));
    }
    cr_assert_eq(ls_wait(F.logs, last, 10000), 0);
    free(big);
}

static void create_gateway(const char *body)
{
    resp r = call("POST", "/gateways", body);
    cr_assert_eq(r.status, 200, "%s", r.raw.body);
    resp_free(&r);
}

/* Count of list results for a query (per_page=1000 so one page holds all). */
static long long list_total(const char *gw, const char *query)
{
    char pq[512];
    snprintf(pq, sizeof pq, "/gateways/%s/logs?per_page=1000%s%s", gw, query[0] ? "&" : "",
             query);
    resp r = call("GET", pq, NULL);
    cr_assert_eq(r.status, 200, "%s: %s", pq, r.raw.body);
    long long total = info_int(&r, "total_count");
    cr_assert_eq((long long)json_array_size(result(&r)), total, "%s", pq);
    cr_assert_eq(info_int(&r, "count"), total);
    resp_free(&r);
    return total;
}

/* ---- gateways --------------------------------------------------------------- */

Test(gw_admin, gateway_crud_and_persistence)
{
    resp r = call("GET", "/gateways", NULL);
    cr_assert_eq(r.status, 200);
    cr_assert(json_is_true(json_object_get(r.json, "success")));
    cr_assert_eq(json_array_size(result(&r)), 1, "the config gateway");
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(result(&r), 0), "source")),
                     "config");
    cr_assert_eq(info_int(&r, "total_count"), 1);
    resp_free(&r);

    r = call("POST", "/gateways",
             "{\"id\":\"my-gw\",\"cache_ttl\":120,\"collect_logs\":true,"
             "\"rate_limiting_interval\":30,\"rate_limiting_limit\":100,"
             "\"rate_limiting_technique\":\"sliding\",\"authentication\":true,"
             "\"log_management\":5000,\"max_attempts\":3,\"retry_delay_ms\":250,"
             "\"backoff\":\"linear\",\"log_payloads\":false}");
    cr_assert_eq(r.status, 200, "%s", r.raw.body);
    json_t *g = result(&r);
    cr_assert_str_eq(json_string_value(json_object_get(g, "id")), "my-gw");
    cr_assert_str_eq(json_string_value(json_object_get(g, "source")), "api");
    cr_assert_eq(json_integer_value(json_object_get(g, "cache_ttl")), 120);
    cr_assert_eq(json_integer_value(json_object_get(g, "rate_limiting_limit")), 100);
    cr_assert_str_eq(json_string_value(json_object_get(g, "rate_limiting_technique")), "sliding");
    cr_assert(json_is_true(json_object_get(g, "authentication")));
    cr_assert_eq(json_integer_value(json_object_get(g, "log_management")), 5000);
    cr_assert_eq(json_integer_value(json_object_get(g, "max_attempts")), 3);
    cr_assert_str_eq(json_string_value(json_object_get(g, "backoff")), "linear");
    cr_assert(json_is_false(json_object_get(g, "log_payloads")));
    const char *created = json_string_value(json_object_get(g, "created_at"));
    cr_assert(created && strlen(created) == 24 && created[23] == 'Z', "%s", created);
    char created_s[32];
    snprintf(created_s, sizeof created_s, "%s", created);
    resp_free(&r);

    /* Defaults for what the body leaves out. */
    r = call("POST", "/gateways", "{\"id\":\"plain\"}");
    cr_assert_eq(r.status, 200, "%s", r.raw.body);
    g = result(&r);
    cr_assert_eq(json_integer_value(json_object_get(g, "max_attempts")), 1);
    cr_assert_eq(json_integer_value(json_object_get(g, "retry_delay_ms")), 100);
    cr_assert_eq(json_integer_value(json_object_get(g, "log_management")), 10000000);
    cr_assert_eq(json_integer_value(json_object_get(g, "rate_limiting_interval")), 60);
    cr_assert(json_is_true(json_object_get(g, "collect_logs")));
    cr_assert(json_is_false(json_object_get(g, "authentication")));
    cr_assert_eq(json_array_size(json_object_get(g, "providers")), 0);
    resp_free(&r);

    r = call("GET", "/gateways/my-gw", NULL);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(json_integer_value(json_object_get(result(&r), "retry_delay_ms")), 250);
    resp_free(&r);

    /* List: config first, then API ones by id; pages. */
    r = call("GET", "/gateways", NULL);
    cr_assert_eq(json_array_size(result(&r)), 3);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(result(&r), 0), "id")),
                     "cfg-gw");
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(result(&r), 1), "id")),
                     "my-gw");
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(result(&r), 2), "id")),
                     "plain");
    resp_free(&r);
    r = call("GET", "/gateways?per_page=1&page=2", NULL);
    cr_assert_eq(json_array_size(result(&r)), 1);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(result(&r), 0), "id")),
                     "my-gw");
    cr_assert_eq(info_int(&r, "total_count"), 3);
    cr_assert_eq(info_int(&r, "page"), 2);
    cr_assert_eq(info_int(&r, "per_page"), 1);
    resp_free(&r);
    r = call("GET", "/gateways?search=pla", NULL);
    cr_assert_eq(json_array_size(result(&r)), 1);
    resp_free(&r);

    /* PUT replaces the settings: what it leaves out returns to defaults. */
    usleep(3000);
    r = call("PUT", "/gateways/my-gw", "{\"id\":\"my-gw\",\"max_attempts\":5}");
    cr_assert_eq(r.status, 200, "%s", r.raw.body);
    g = result(&r);
    cr_assert_eq(json_integer_value(json_object_get(g, "max_attempts")), 5);
    cr_assert_eq(json_integer_value(json_object_get(g, "retry_delay_ms")), 100);
    cr_assert_eq(json_integer_value(json_object_get(g, "cache_ttl")), 0);
    cr_assert_str_eq(json_string_value(json_object_get(g, "created_at")), created_s);
    cr_assert_str_neq(json_string_value(json_object_get(g, "modified_at")), created_s);
    resp_free(&r);

    /* A GET body can be PUT back as it is. */
    r = call("GET", "/gateways/my-gw", NULL);
    char *echo = json_dumps(result(&r), JSON_COMPACT);
    resp_free(&r);
    r = call("PUT", "/gateways/my-gw", echo);
    free(echo);
    cr_assert_eq(r.status, 200, "%s", r.raw.body);
    cr_assert_eq(json_integer_value(json_object_get(result(&r), "max_attempts")), 5);
    resp_free(&r);

    /* Survives a restart of the registry. */
    gw_registry_close(F.reg);
    open_registry();
    r = call("GET", "/gateways/my-gw", NULL);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(json_integer_value(json_object_get(result(&r), "max_attempts")), 5);
    cr_assert_str_eq(json_string_value(json_object_get(result(&r), "created_at")), created_s);
    resp_free(&r);

    r = call("DELETE", "/gateways/plain", NULL);
    cr_assert_eq(r.status, 200, "%s", r.raw.body);
    cr_assert_str_eq(json_string_value(json_object_get(result(&r), "id")), "plain");
    resp_free(&r);
    expect_error("GET", "/gateways/plain", NULL, 404, GW_ADMIN_ERR_NO_GATEWAY, "plain");
    gw_registry_close(F.reg);
    open_registry();
    expect_error("GET", "/gateways/plain", NULL, 404, GW_ADMIN_ERR_NO_GATEWAY, "plain");
    r = call("GET", "/gateways", NULL);
    cr_assert_eq(json_array_size(result(&r)), 2);
    resp_free(&r);
}

Test(gw_admin, gateway_errors)
{
    create_gateway("{\"id\":\"dup\"}");
    expect_error("POST", "/gateways", "{\"id\":\"dup\"}", 409, GW_ADMIN_ERR_EXISTS,
                 "already exists");
    expect_error("POST", "/gateways", "{\"id\":\"cfg-gw\"}", 409, GW_ADMIN_ERR_EXISTS,
                 "config file");
    expect_error("POST", "/gateways", "{\"cache_ttl\":1}", 400, OP_API_ERR_INVALID_INPUT,
                 "id: required");
    expect_error("POST", "/gateways", "{\"id\":\"Bad Id\"}", 400, OP_API_ERR_INVALID_INPUT,
                 "id: must match");
    expect_error("POST", "/gateways", "{\"id\":7}", 400, OP_API_ERR_INVALID_INPUT, "id");
    expect_error("POST", "/gateways", "{\"id\":\"x\",\"max_attempts\":9}", 400,
                 OP_API_ERR_INVALID_INPUT, "max_attempts");
    expect_error("POST", "/gateways", "{\"id\":\"x\",\"colect_logs\":true}", 400,
                 OP_API_ERR_INVALID_INPUT, "colect_logs: unknown field");
    expect_error("POST", "/gateways", "{\"id\":\"x\",\"providers\":[{\"name\":\"a\"}]}", 400,
                 OP_API_ERR_INVALID_INPUT, "config file only");
    expect_error("POST", "/gateways", "{\"id\":", 400, OP_API_ERR_INVALID_INPUT,
                 "not valid JSON");
    expect_error("POST", "/gateways", "[1]", 400, OP_API_ERR_INVALID_INPUT, "JSON object");
    expect_error("POST", "/gateways", "{\"id\":\"a\",\"id\":\"b\"}", 400,
                 OP_API_ERR_INVALID_INPUT, "duplicate");
    expect_error("GET", "/gateways?per_page=0", NULL, 400, OP_API_ERR_INVALID_INPUT,
                 "per_page");
    expect_error("GET", "/gateways?bogus=1", NULL, 400, OP_API_ERR_INVALID_INPUT, "bogus");

    expect_error("GET", "/gateways/none", NULL, 404, GW_ADMIN_ERR_NO_GATEWAY, "none");
    expect_error("PUT", "/gateways/none", "{}", 404, GW_ADMIN_ERR_NO_GATEWAY, "none");
    expect_error("DELETE", "/gateways/none", NULL, 404, GW_ADMIN_ERR_NO_GATEWAY, "none");
    expect_error("PUT", "/gateways/cfg-gw", "{}", 409, GW_ADMIN_ERR_READ_ONLY,
                 "defined in the config file");
    expect_error("DELETE", "/gateways/cfg-gw", NULL, 409, GW_ADMIN_ERR_READ_ONLY,
                 "defined in the config file");
    expect_error("PUT", "/gateways/dup", "{\"id\":\"other\"}", 400, OP_API_ERR_INVALID_INPUT,
                 "id: cannot be changed");
    expect_error("PUT", "/gateways/dup", "{\"backoff\":\"fast\"}", 400, OP_API_ERR_INVALID_INPUT,
                 "backoff");

    /* Routes and methods. */
    expect_error("GET", "", NULL, 404, OP_API_ERR_NO_ROUTE, "no route");
    expect_error("GET", "/gatewayz", NULL, 404, OP_API_ERR_NO_ROUTE, "no route");
    expect_error("GET", "/gateways/dup/nothing", NULL, 404, OP_API_ERR_NO_ROUTE, "no route");
    expect_error("GET", "/gateways/dup/logs/a/b/c", NULL, 404, OP_API_ERR_NO_ROUTE, "no route");
    struct {
        const char *method, *path, *allow;
    } m405[] = {
        {"DELETE", "/gateways", "GET, POST"},
        {"PATCH", "/gateways/dup", "GET, PUT, DELETE"},
        {"POST", "/gateways/dup/logs", "GET, DELETE"},
        {"DELETE", "/gateways/dup/logs/export", "GET"},
        {"PUT", "/gateways/dup/logs/01HZZZZZZZZZZZZZZZZZZZZZZZ", "GET, PATCH"},
        {"DELETE", "/gateways/dup/logs/01HZZZZZZZZZZZZZZZZZZZZZZZ/request", "GET"},
        {"POST", "/gateways/dup/usage", "GET"},
    };
    for (size_t i = 0; i < sizeof m405 / sizeof m405[0]; i++) {
        resp r = call(m405[i].method, m405[i].path, NULL);
        cr_assert_eq(r.status, 405, "%s %s", m405[i].method, m405[i].path);
        char *allow = ts_header(&r.raw, "Allow");
        cr_assert_not_null(allow, "%s %s", m405[i].method, m405[i].path);
        cr_assert_str_eq(allow, m405[i].allow);
        free(allow);
        cr_assert_eq(json_integer_value(json_object_get(
                         json_array_get(json_object_get(r.json, "errors"), 0), "code")),
                     OP_API_ERR_METHOD);
        resp_free(&r);
    }
}

Test(gw_admin, gateway_write_failure_and_cap)
{
    /* A directory where the gateway's temp file must go: the write fails,
     * the API says so, and nothing is created. */
    char p[600];
    snprintf(p, sizeof p, "%s/gateways/" ACCT ".blocked.json.tmp", F.dir);
    cr_assert_eq(mkdir(p, 0750), 0);
    expect_error("POST", "/gateways", "{\"id\":\"blocked\"}", 500, GW_ADMIN_ERR_STORE,
                 "cannot save gateway");
    expect_error("GET", "/gateways/blocked", NULL, 404, GW_ADMIN_ERR_NO_GATEWAY, "blocked");

    /* The per-account cap. The gateways are written as files and loaded
     * (a thousand fsync'ed creations would make the test slow). */
    char gdir[600];
    snprintf(gdir, sizeof gdir, "%s/gateways", F.dir);
    for (int i = 0; i < GW_API_GATEWAYS_PER_ACCOUNT_MAX; i++) {
        char name[64], text[256];
        snprintf(name, sizeof name, ACCT ".g%04d.json", i);
        snprintf(text, sizeof text,
                 "{\"format\":1,\"account\":\"" ACCT "\",\"id\":\"g%04d\","
                 "\"created_ms\":1,\"modified_ms\":1}",
                 i);
        free(ts_write_file(gdir, name, text));
    }
    gw_registry_close(F.reg);
    open_registry();
    cr_assert_eq(gw_registry_api_count(F.reg), GW_API_GATEWAYS_PER_ACCOUNT_MAX);
    expect_error("POST", "/gateways", "{\"id\":\"one-more\"}", 409, GW_ADMIN_ERR_TOO_MANY,
                 "most gateways");
    resp r = call("GET", "/gateways?per_page=1000&page=2", NULL);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(info_int(&r, "total_count"), GW_API_GATEWAYS_PER_ACCOUNT_MAX + 1);
    cr_assert_eq(json_array_size(result(&r)), 1);
    resp_free(&r);
}

/* ---- logs ---------------------------------------------------------------- */

#define N 60

static int count_if(bool (*pred)(int i))
{
    int n = 0;
    for (int i = 0; i < N; i++)
        n += pred(i);
    return n;
}

static bool p_openai(int i) { return strcmp(rec_provider(i), "openai") == 0; }
static bool p_odd(int i) { return i % 2 == 1; }
static bool p_500(int i) { return rec_status(i) == 500; }
static bool p_cached(int i) { return rec_cached(i); }
static bool p_dur(int i) { return rec_duration(i) >= 100 && rec_duration(i) <= 200; }
static bool p_range(int i) { return i >= 10 && i <= 19; }
static bool p_alice_openai(int i) { return p_odd(i) && p_openai(i); }
static bool p_from_30(int i) { return i >= 30; }

Test(gw_admin, logs_list_filters)
{
    create_gateway("{\"id\":\"g\"}");
    create_gateway("{\"id\":\"other\"}");
    append_records("g", N, 0);
    append_records("other", 5, 0);

    cr_assert_eq(list_total("g", ""), N);
    cr_assert_eq(list_total("other", ""), 5, "gateways do not see each other's logs");
    cr_assert_eq(list_total("cfg-gw", ""), 0);
    cr_assert_eq(list_total("g", "provider=openai"), count_if(p_openai));
    cr_assert_eq(list_total("g", "model=m-odd"), count_if(p_odd));
    cr_assert_eq(list_total("g", "status_code=500"), count_if(p_500));
    cr_assert_eq(list_total("g", "success=false"), count_if(p_500));
    cr_assert_eq(list_total("g", "success=true"), N - count_if(p_500));
    cr_assert_eq(list_total("g", "cached=true"), count_if(p_cached));
    cr_assert_eq(list_total("g", "cached=0"), N - count_if(p_cached));
    cr_assert_eq(list_total("g", "feedback=0"), N);
    cr_assert_eq(list_total("g", "feedback=1"), 0);
    cr_assert_eq(list_total("g", "min_duration=100&max_duration=200"), count_if(p_dur));
    cr_assert_eq(list_total("g", "metadata.user=alice"), count_if(p_odd));
    cr_assert_eq(list_total("g", "metadata.user=alice&provider=openai"),
                 count_if(p_alice_openai));
    cr_assert_eq(list_total("g", "metadata.n=7"), 1, "numbers match as written");
    cr_assert_eq(list_total("g", "metadata.user=carol"), 0);
    /* Time range: ISO 8601 and Unix ms; t0 = 2023-11-14T22:13:20Z. */
    cr_assert_eq(list_total("g", "start_date=2023-11-14T22:13:30Z&end_date=2023-11-14T22:13:39Z"),
                 count_if(p_range));
    cr_assert_eq(list_total("g", "start_date=1700000010000&end_date=1700000019000"),
                 count_if(p_range));
    cr_assert_eq(list_total("g", "start_date=2023-11-14T23:13:30%2B01:00&end_date=2023-11-14T"
                                 "23:13:39.000%2B01:00"),
                 count_if(p_range), "offsets");
    cr_assert_eq(list_total("g", "start_date=2023-11-14T22:13:50Z"), count_if(p_from_30));
    cr_assert_eq(list_total("g", "start_date=2023-11-14"), N, "a date alone is its midnight");

    /* Shape of an item: no bodies in lists. */
    resp r = call("GET", "/gateways/g/logs?per_page=2", NULL);
    cr_assert_eq(r.status, 200);
    json_t *first = json_array_get(result(&r), 0);
    cr_assert_str_eq(json_string_value(json_object_get(first, "model")), rec_model(N - 1));
    cr_assert_null(json_object_get(first, "request_body"));
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(first, "metadata"), "user")),
                     rec_user(N - 1));
    cr_assert_eq(info_int(&r, "per_page"), 2);
    cr_assert_eq(info_int(&r, "page"), 1);
    cr_assert_not_null(json_object_get(json_object_get(r.json, "result_info"), "cursor"));
    resp_free(&r);

    /* Direction: newest first by default, oldest first on asc. */
    r = call("GET", "/gateways/g/logs?per_page=1&order_by_direction=asc", NULL);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(result(&r), 0), "created_at")),
                     "2023-11-14T22:13:20.000Z");
    resp_free(&r);
    r = call("GET", "/gateways/g/logs?per_page=1&direction=desc&order_by=created_at", NULL);
    cr_assert_eq(json_integer_value(json_object_get(json_array_get(result(&r), 0), "tokens_in")),
                 N - 1);
    resp_free(&r);

    /* Bad parameters name themselves. */
    static const char *const bad[][2] = {
        {"per_page=0", "per_page"},        {"per_page=1001", "per_page"},
        {"per_page=x", "per_page"},        {"page=0", "page"},
        {"status_code=abc", "status_code"}, {"success=maybe", "success"},
        {"cached=2", "cached"},            {"feedback=2", "feedback"},
        {"min_duration=-1", "min_duration"}, {"max_duration=ten", "max_duration"},
        {"start_date=yesterday", "start_date"}, {"end_date=2024-13-01", "end_date"},
        {"start_date=2024-01-02&end_date=2024-01-01", "start_date"},
        {"direction=up", "direction"},     {"order_by=model", "order_by"},
        {"cursor=not-a-cursor", "cursor"}, {"colour=red", "colour"},
        {"metadata.=x", "metadata"},       {"all=true", "all"},
        {"metadata.a=1&metadata.b=1&metadata.c=1&metadata.d=1&metadata.e=1&metadata.f=1",
         "metadata"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char pq[512];
        snprintf(pq, sizeof pq, "/gateways/g/logs?%s", bad[i][0]);
        expect_error("GET", pq, NULL, 400, OP_API_ERR_INVALID_INPUT, bad[i][1]);
    }
    expect_error("GET", "/gateways/nope/logs", NULL, 404, GW_ADMIN_ERR_NO_GATEWAY, "nope");
}

Test(gw_admin, logs_pagination_by_cursor_and_page)
{
    create_gateway("{\"id\":\"g\"}");
    append_records("g", N, 0);
    for (int asc = 0; asc < 2; asc++) {
        char seen[N][32];
        int n = 0;
        char cursor[128] = "";
        int pages = 0;
        for (;;) {
            char pq[512];
            snprintf(pq, sizeof pq, "/gateways/g/logs?per_page=7%s%s%s",
                     asc ? "&direction=asc" : "", cursor[0] ? "&cursor=" : "", cursor);
            resp r = call("GET", pq, NULL);
            cr_assert_eq(r.status, 200, "%s", r.raw.body);
            cr_assert_eq(info_int(&r, "total_count"), N);
            size_t i;
            json_t *it;
            json_array_foreach(result(&r), i, it)
            {
                cr_assert_lt(n, N, "more records than exist");
                const char *id = json_string_value(json_object_get(it, "id"));
                for (int k = 0; k < n; k++)
                    cr_assert_str_neq(seen[k], id, "duplicate %s", id);
                if (n > 0)
                    cr_assert(asc ? strcmp(seen[n - 1], id) < 0 : strcmp(seen[n - 1], id) > 0,
                              "order");
                snprintf(seen[n++], sizeof seen[0], "%s", id);
            }
            pages++;
            const char *next = json_string_value(
                json_object_get(json_object_get(r.json, "result_info"), "cursor"));
            if (!next) {
                resp_free(&r);
                break;
            }
            snprintf(cursor, sizeof cursor, "%s", next);
            resp_free(&r);
        }
        cr_assert_eq(n, N);
        cr_assert_eq(pages, (N + 6) / 7);
    }

    /* page=K is the K-th cursor page. */
    resp a = call("GET", "/gateways/g/logs?per_page=7", NULL);
    const char *c1 =
        json_string_value(json_object_get(json_object_get(a.json, "result_info"), "cursor"));
    char pq[256];
    snprintf(pq, sizeof pq, "/gateways/g/logs?per_page=7&cursor=%s", c1);
    resp b = call("GET", pq, NULL);
    resp p2 = call("GET", "/gateways/g/logs?per_page=7&page=2", NULL);
    cr_assert_eq(p2.status, 200, "%s", p2.raw.body);
    cr_assert(json_equal(result(&b), result(&p2)));
    cr_assert_eq(info_int(&p2, "page"), 2);
    resp_free(&a);
    resp_free(&b);
    resp_free(&p2);
    resp last = call("GET", "/gateways/g/logs?per_page=7&page=9", NULL);
    cr_assert_eq(json_array_size(result(&last)), N - 8 * 7);
    cr_assert_null(json_object_get(json_object_get(last.json, "result_info"), "cursor"));
    resp_free(&last);
    resp past = call("GET", "/gateways/g/logs?per_page=7&page=50", NULL);
    cr_assert_eq(past.status, 200);
    cr_assert_eq(json_array_size(result(&past)), 0);
    cr_assert_eq(info_int(&past, "total_count"), N);
    resp_free(&past);
    expect_error("GET", "/gateways/g/logs?page=2&cursor=abc", NULL, 400,
                 OP_API_ERR_INVALID_INPUT, "page");
}

/* The id of the i-th record (oldest first). */
static void record_id(int i, char out[32])
{
    char pq[128];
    snprintf(pq, sizeof pq, "/gateways/g/logs?per_page=1&direction=asc&page=%d", i + 1);
    resp r = call("GET", pq, NULL);
    cr_assert_eq(r.status, 200);
    snprintf(out, 32, "%s", json_string_value(json_object_get(json_array_get(result(&r), 0), "id")));
    resp_free(&r);
}

Test(gw_admin, log_get_bodies_and_feedback)
{
    create_gateway("{\"id\":\"g\"}");
    append_records("g", 10, 0);
    char id[32], pq[256];
    record_id(3, id);

    snprintf(pq, sizeof pq, "/gateways/g/logs/%s", id);
    resp r = call("GET", pq, NULL);
    cr_assert_eq(r.status, 200, "%s", r.raw.body);
    json_t *rec = result(&r);
    cr_assert_str_eq(json_string_value(json_object_get(rec, "id")), id);
    cr_assert_str_eq(json_string_value(json_object_get(rec, "request_body")),
                     "{\"prompt\":\"question 3\"}");
    cr_assert_eq(json_integer_value(json_object_get(rec, "tokens_out")), 6);
    resp_free(&r);

    snprintf(pq, sizeof pq, "/gateways/g/logs/%s/request", id);
    r = call("GET", pq, NULL);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(r.raw.body, "{\"prompt\":\"question 3\"}");
    char *ct = ts_header(&r.raw, "Content-Type");
    cr_assert_str_eq(ct, "application/json");
    free(ct);
    resp_free(&r);
    snprintf(pq, sizeof pq, "/gateways/g/logs/%s/response", id);
    r = call("GET", pq, NULL);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(r.raw.body, "{\"response\":\"answer 3\"}");
    resp_free(&r);

    /* A record in another gateway is not found through this one. */
    create_gateway("{\"id\":\"h\"}");
    snprintf(pq, sizeof pq, "/gateways/h/logs/%s", id);
    expect_error("GET", pq, NULL, 404, GW_ADMIN_ERR_NO_LOG, id);
    expect_error("GET", "/gateways/g/logs/01HZZZZZZZZZZZZZZZZZZZZZZZ", NULL, 404,
                 GW_ADMIN_ERR_NO_LOG, "01HZZZZZZZZZZZZZZZZZZZZZZZ");
    expect_error("GET", "/gateways/g/logs/not-an-id", NULL, 404, GW_ADMIN_ERR_NO_LOG,
                 "not-an-id");
    expect_error("GET", "/gateways/g/logs/not-an-id/request", NULL, 404, GW_ADMIN_ERR_NO_LOG,
                 "not-an-id");

    /* Feedback. */
    snprintf(pq, sizeof pq, "/gateways/g/logs/%s", id);
    r = call("PATCH", pq, "{\"feedback\":1}");
    cr_assert_eq(r.status, 200, "%s", r.raw.body);
    cr_assert_eq(json_integer_value(json_object_get(result(&r), "feedback")), 1);
    cr_assert_null(json_object_get(result(&r), "request_body"));
    resp_free(&r);
    r = call("GET", pq, NULL);
    cr_assert_eq(json_integer_value(json_object_get(result(&r), "feedback")), 1);
    cr_assert(json_is_null(json_object_get(result(&r), "score")));
    resp_free(&r);
    cr_assert_eq(list_total("g", "feedback=1"), 1);
    cr_assert_eq(list_total("g", "feedback=0"), 9);
    r = call("PATCH", pq, "{\"score\":87.5}");
    cr_assert_eq(r.status, 200, "%s", r.raw.body);
    cr_assert_eq(json_integer_value(json_object_get(result(&r), "feedback")), 1,
                 "score alone keeps the feedback");
    cr_assert_float_eq(json_number_value(json_object_get(result(&r), "score")), 87.5, 1e-9);
    resp_free(&r);
    r = call("PATCH", pq, "{\"feedback\":-1,\"score\":0}");
    cr_assert_eq(r.status, 200, "%s", r.raw.body);
    resp_free(&r);
    cr_assert_eq(list_total("g", "feedback=-1"), 1);
    cr_assert_eq(list_total("g", "feedback=1"), 0);

    static const char *const bad[][2] = {
        {"{\"feedback\":2}", "feedback"},     {"{\"feedback\":\"1\"}", "feedback"},
        {"{\"feedback\":1.0}", "feedback"},   {"{\"score\":101}", "score"},
        {"{\"score\":-1}", "score"},          {"{\"score\":\"a\"}", "score"},
        {"{\"feedback\":1,\"note\":\"x\"}", "note"}, {"{}", "feedback"},
        {"[1]", "object"},                    {"nope", "JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_error("PATCH", pq, bad[i][0], 400, OP_API_ERR_INVALID_INPUT, bad[i][1]);
    expect_error("PATCH", "/gateways/g/logs/01HZZZZZZZZZZZZZZZZZZZZZZZ", "{\"feedback\":1}", 404,
                 GW_ADMIN_ERR_NO_LOG, "01HZZZZZZZZZZZZZZZZZZZZZZZ");
    expect_error("PATCH", "/gateways/g/logs/xyz", "{\"feedback\":1}", 404, GW_ADMIN_ERR_NO_LOG,
                 "xyz");
}

Test(gw_admin, binary_and_missing_bodies)
{
    create_gateway("{\"id\":\"g\"}");
    static const unsigned char bin[] = {0x00, 0xff, 0xfe, 0x80, 'a', 0x00, 0x01};
    ls_record rec = {0};
    rec.account = ACCT;
    rec.gateway = "g";
    rec.status = 200;
    rec.success = true;
    rec.request_content_type = "application/octet-stream";
    rec.response_content_type = "image/png";
    rec.request_body = NULL; /* not kept */
    rec.response_body = bin;
    rec.response_body_len = sizeof bin;
    uint64_t seq;
    cr_assert_eq(ls_append(F.logs, &rec, &seq), 0);
    cr_assert_eq(ls_wait(F.logs, seq, 10000), 0);
    char pq[256];
    snprintf(pq, sizeof pq, "/gateways/g/logs/%s/response", rec.id);
    resp r = call("GET", pq, NULL);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(r.raw.body_len, sizeof bin);
    cr_assert_eq(memcmp(r.raw.body, bin, sizeof bin), 0, "bytes come back as stored");
    char *ct = ts_header(&r.raw, "Content-Type");
    cr_assert_str_eq(ct, "image/png");
    free(ct);
    resp_free(&r);
    snprintf(pq, sizeof pq, "/gateways/g/logs/%s/request", rec.id);
    expect_error("GET", pq, NULL, 404, GW_ADMIN_ERR_NO_LOG, "no request body");
}

Test(gw_admin, delete_logs_by_filter)
{
    create_gateway("{\"id\":\"g\"}");
    create_gateway("{\"id\":\"keep\"}");
    append_records("g", N, 0);
    append_records("keep", 4, 0);
    expect_error("DELETE", "/gateways/g/logs", NULL, 400, OP_API_ERR_INVALID_INPUT,
                 "all=true");
    expect_error("DELETE", "/gateways/g/logs?all=false", NULL, 400, OP_API_ERR_INVALID_INPUT,
                 "all=true");
    expect_error("DELETE", "/gateways/g/logs?per_page=5", NULL, 400, OP_API_ERR_INVALID_INPUT,
                 "per_page");
    expect_error("DELETE", "/gateways/g/logs?sucess=false", NULL, 400,
                 OP_API_ERR_INVALID_INPUT, "sucess");
    cr_assert_eq(list_total("g", ""), N, "refused deletes delete nothing");

    resp r = call("DELETE", "/gateways/g/logs?model=m-odd&success=true", NULL);
    cr_assert_eq(r.status, 200, "%s", r.raw.body);
    int odd_ok = 0;
    for (int i = 0; i < N; i++)
        odd_ok += i % 2 == 1 && rec_status(i) == 200;
    cr_assert_eq(json_integer_value(json_object_get(result(&r), "deleted")), odd_ok);
    resp_free(&r);
    cr_assert_eq(list_total("g", ""), N - odd_ok);
    cr_assert_eq(list_total("g", "model=m-odd&success=true"), 0);
    cr_assert_eq(list_total("g", "model=m-odd"), count_if(p_odd) - odd_ok);

    r = call("DELETE", "/gateways/g/logs?all=true", NULL);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(json_integer_value(json_object_get(result(&r), "deleted")), N - odd_ok);
    resp_free(&r);
    cr_assert_eq(list_total("g", ""), 0);
    cr_assert_eq(list_total("keep", ""), 4, "other gateways keep their logs");

    /* Deleting a gateway deletes its logs: a new one with its id starts
     * empty. */
    r = call("DELETE", "/gateways/keep", NULL);
    cr_assert_eq(r.status, 200);
    resp_free(&r);
    create_gateway("{\"id\":\"keep\"}");
    cr_assert_eq(list_total("keep", ""), 0);
}

/* Splits an NDJSON body into parsed lines; returns the count. */
static int ndjson_lines(const ts_response *raw, json_t **lines, int max)
{
    int n = 0;
    const char *p = raw->body, *end = raw->body + raw->body_len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        cr_assert_not_null(nl, "every line ends with a newline");
        json_error_t je;
        json_t *o = json_loadb(p, (size_t)(nl - p), 0, &je);
        cr_assert_not_null(o, "line %d: %s", n, je.text);
        if (n < max)
            lines[n] = o;
        else
            json_decref(o);
        n++;
        p = nl + 1;
    }
    return n;
}

Test(gw_admin, export_ndjson)
{
    create_gateway("{\"id\":\"g\"}");
    append_records("g", N, 0);
    resp r = call("GET", "/gateways/g/logs/export", NULL);
    cr_assert_eq(r.status, 200);
    char *ct = ts_header(&r.raw, "Content-Type");
    cr_assert_str_eq(ct, "application/x-ndjson");
    free(ct);
    json_t *lines[N];
    cr_assert_eq(ndjson_lines(&r.raw, lines, N), N);
    for (int i = 0; i < N; i++) {
        char want[64];
        snprintf(want, sizeof want, "{\"prompt\":\"question %d\"}", i);
        cr_assert_str_eq(json_string_value(json_object_get(lines[i], "request_body")), want,
                         "oldest first, with bodies");
        json_decref(lines[i]);
    }
    resp_free(&r);

    r = call("GET", "/gateways/g/logs/export?provider=workers-ai&cached=false", NULL);
    cr_assert_eq(r.status, 200);
    int want = 0;
    for (int i = 0; i < N; i++)
        want += strcmp(rec_provider(i), "workers-ai") == 0 && !rec_cached(i);
    json_t *sub[N];
    int got = ndjson_lines(&r.raw, sub, N);
    cr_assert_eq(got, want);
    for (int i = 0; i < got; i++) {
        cr_assert_str_eq(json_string_value(json_object_get(sub[i], "provider")), "workers-ai");
        json_decref(sub[i]);
    }
    resp_free(&r);

    r = call("GET", "/gateways/g/logs/export?metadata.user=nobody", NULL);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(r.raw.body_len, 0, "no match: an empty stream");
    resp_free(&r);
    expect_error("GET", "/gateways/g/logs/export?per_page=3", NULL, 400,
                 OP_API_ERR_INVALID_INPUT, "per_page");
    expect_error("GET", "/gateways/none/logs/export", NULL, 404, GW_ADMIN_ERR_NO_GATEWAY,
                 "none");
}

Test(gw_admin, export_larger_than_the_buffer)
{
    create_gateway("{\"id\":\"g\"}");
    append_records("g", 600, 4096); /* ~5 MB of NDJSON: many chunks */
    resp r = call("GET", "/gateways/g/logs/export", NULL);
    cr_assert_eq(r.status, 200);
    cr_assert_gt(r.raw.body_len, 600 * 8192);
    int lines = 0;
    for (size_t i = 0; i < r.raw.body_len; i++)
        lines += r.raw.body[i] == '\n';
    cr_assert_eq(lines, 600);
    resp_free(&r);
    /* The thread finishes just after the last byte leaves. */
    for (int i = 0; i < 200 && gw_admin_exports_in_flight() > 0; i++)
        usleep(5000);
    cr_assert_eq(gw_admin_exports_in_flight(), 0);
}

static int dial(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(op_http_server_port(F.srv)),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

Test(gw_admin, export_waits_for_a_slow_client_and_stops)
{
    create_gateway("{\"id\":\"g\"}");
    /* 40 lines of 2 MiB: far more than every buffer on the way, and quick
     * to produce when nothing holds the export back. */
    append_records("g", 40, 1 << 20);
    int fd = dial();
    char req[256];
    int n = snprintf(req, sizeof req,
                     "GET " PREFIX "/gateways/g/logs/export HTTP/1.1\r\nHost: x\r\n\r\n");
    cr_assert_eq(send(fd, req, (size_t)n, 0), n);
    /* The client reads nothing: the export must park, not buffer it all. */
    for (int i = 0; i < 100 && gw_admin_exports_in_flight() == 0; i++)
        usleep(10000);
    cr_assert_eq(gw_admin_exports_in_flight(), 1);
    for (int i = 0; i < 150; i++) {
        usleep(10000);
        cr_assert_eq(gw_admin_exports_in_flight(), 1, "still waiting for the client");
    }
    /* Shutdown ends it. */
    uint64_t t = pl_time_mono_ns();
    gw_admin_stop();
    cr_assert_lt(pl_time_mono_ns() - t, 2000000000ull);
    cr_assert_eq(gw_admin_exports_in_flight(), 0);
    expect_error("GET", "/gateways/g/logs/export", NULL, 503, GW_ADMIN_ERR_BUSY, "stopping");
    gw_admin_start();
    close(fd);
    resp r = call("GET", "/gateways/g/logs/export?metadata.n=5", NULL);
    cr_assert_eq(r.status, 200, "exports run again after gw_admin_start");
    resp_free(&r);
}

Test(gw_admin, client_leaving_ends_the_export)
{
    create_gateway("{\"id\":\"g\"}");
    append_records("g", 40, 1 << 20);
    int fd = dial();
    char req[256];
    int n = snprintf(req, sizeof req,
                     "GET " PREFIX "/gateways/g/logs/export HTTP/1.1\r\nHost: x\r\n\r\n");
    cr_assert_eq(send(fd, req, (size_t)n, 0), n);
    for (int i = 0; i < 100 && gw_admin_exports_in_flight() == 0; i++)
        usleep(10000);
    cr_assert_eq(gw_admin_exports_in_flight(), 1);
    close(fd);
    for (int i = 0; i < 500 && gw_admin_exports_in_flight() > 0; i++)
        usleep(10000);
    cr_assert_eq(gw_admin_exports_in_flight(), 0, "the export noticed the client left");
}

Test(gw_admin, usage_sums)
{
    create_gateway("{\"id\":\"g\"}");
    append_records("g", N, 0);
    resp r = call("GET", "/gateways/g/usage", NULL);
    cr_assert_eq(r.status, 200, "%s", r.raw.body);
    json_t *u = result(&r);
    long long tin = 0, cached = 0, errors = 0;
    double cost = 0;
    for (int i = 0; i < N; i++) {
        tin += i;
        cost += 0.5 * i;
        cached += rec_cached(i);
        errors += rec_status(i) != 200;
    }
    cr_assert_eq(json_integer_value(json_object_get(u, "requests")), N);
    cr_assert_eq(json_integer_value(json_object_get(u, "tokens_in")), tin);
    cr_assert_eq(json_integer_value(json_object_get(u, "tokens_out")), 2 * tin);
    cr_assert_float_eq(json_number_value(json_object_get(u, "cost")), cost, 1e-6);
    cr_assert_eq(json_integer_value(json_object_get(u, "cached")), cached);
    cr_assert_eq(json_integer_value(json_object_get(u, "errors")), errors);
    resp_free(&r);

    r = call("GET", "/gateways/g/usage?start_date=1700000010000&end_date=2023-11-14T22:13:39Z",
             NULL);
    cr_assert_eq(r.status, 200, "%s", r.raw.body);
    u = result(&r);
    cr_assert_eq(json_integer_value(json_object_get(u, "requests")), 10);
    cr_assert_eq(json_integer_value(json_object_get(u, "tokens_in")), 145); /* 10+...+19 */
    cr_assert_str_eq(json_string_value(json_object_get(u, "start_date")),
                     "2023-11-14T22:13:30.000Z");
    resp_free(&r);
    r = call("GET", "/gateways/cfg-gw/usage", NULL);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(json_integer_value(json_object_get(result(&r), "requests")), 0);
    resp_free(&r);
    expect_error("GET", "/gateways/g/usage?start_date=soon", NULL, 400,
                 OP_API_ERR_INVALID_INPUT, "start_date");
    expect_error("GET", "/gateways/none/usage", NULL, 404, GW_ADMIN_ERR_NO_GATEWAY, "none");
}

Test(gw_admin, store_unavailable)
{
    F.no_store = true;
    create_gateway("{\"id\":\"g\"}"); /* gateways work without a store */
    expect_error("GET", "/gateways/g/logs", NULL, 503, GW_ADMIN_ERR_STORE, "log store");
    expect_error("GET", "/gateways/g/usage", NULL, 503, GW_ADMIN_ERR_STORE, "log store");
    expect_error("GET", "/gateways/g/logs/export", NULL, 503, GW_ADMIN_ERR_STORE, "log store");
    expect_error("GET", "/gateways/none/logs", NULL, 404, GW_ADMIN_ERR_NO_GATEWAY, "none");
}

Test(gw_admin, retention_follows_gateway_settings)
{
    create_gateway("{\"id\":\"g\",\"log_management\":10}");
    append_records("g", 25, 0);
    cr_assert_eq(ls_maintain(F.logs), 0);
    cr_assert_eq(list_total("g", ""), 10, "the newest 10 stay");
    resp r = call("PUT", "/gateways/g", "{\"log_management\":5}");
    cr_assert_eq(r.status, 200);
    resp_free(&r);
    cr_assert_eq(ls_maintain(F.logs), 0);
    cr_assert_eq(list_total("g", ""), 5);
    /* gw_admin_apply_retention covers config gateways (and reloaded ones). */
    F.gws[0].retention_max_logs = 3;
    append_records("cfg-gw", 8, 0);
    gw_admin_apply_retention(F.reg, &F.cfg, F.logs);
    cr_assert_eq(ls_maintain(F.logs), 0);
    cr_assert_eq(list_total("cfg-gw", ""), 3);
}
