/* Unit tests of the Lua policy host: decisions, sandbox, limits, threads,
 * the offline tester and every example policy in lua/examples. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy/op_policy.h"
#include "test_support.h"

static char *g_dir;

static void setup(void)
{
    pl_log_configure(PL_LOG_OFF, PL_LOG_FORMAT_KV);
    g_dir = ts_tmpdir();
}

static void teardown(void)
{
    op_policy_thread_cleanup();
    ts_tmpdir_remove(g_dir);
    free(g_dir);
}

TestSuite(policy, .init = setup, .fini = teardown);

/* Loads policies given as (name, source) pairs, NULL-terminated. */
static int load(op_policy_set **set, char *err, size_t errlen, uint64_t instructions,
                size_t memory, ...)
{
    char *files[8];
    size_t n = 0;
    va_list ap;
    va_start(ap, memory);
    for (;;) {
        const char *name = va_arg(ap, const char *);
        if (!name)
            break;
        files[n++] = ts_write_file(g_dir, name, va_arg(ap, const char *));
    }
    va_end(ap);
    op_config_policy cfg = {.lib_dir = OUTPOST_SOURCE_DIR "/lua",
                            .memory_bytes = memory,
                            .instructions = instructions,
                            .files = files,
                            .n_files = n};
    int rc = op_policy_set_load(&cfg, set, err, errlen);
    for (size_t i = 0; i < n; i++)
        free(files[i]);
    return rc;
}

static op_policy_set *load_ok(const char *src)
{
    op_policy_set *s = NULL;
    char err[512];
    int rc = load(&s, err, sizeof err, 100000, 4u << 20, "p.lua", src, NULL);
    cr_assert_eq(rc, 0, "load failed: %s", err);
    return s;
}

static op_route_request req_for(const char *model, const char *body)
{
    static const op_policy_header hdrs[] = {{"X-User", "alice"}, {"Content-Type", "json"}};
    op_route_request r = {.account = "local",
                          .model = model,
                          .task = "text-generation",
                          .method = "POST",
                          .path = "/ai/run/x",
                          .headers = hdrs,
                          .n_headers = 2,
                          .body_json = body,
                          .body_len = body ? strlen(body) : 0,
                          .tokens_estimate = 12};
    return r;
}

static op_policy_status run(op_policy_set *s, const char *model, const char *body,
                            op_route_decision *d)
{
    op_route_request r = req_for(model, body);
    return op_policy_route(s, &r, d);
}

Test(policy, continue_rewrite_reject)
{
    op_policy_set *s = load_ok("function route(req)\n"
                               "  if req.model == 'a' then return outpost.route('b') end\n"
                               "  if req.model == 'no' then return outpost.reject(429, 'slow down') end\n"
                               "  if req.model == 'deflt' then return {reject = {}} end\n"
                               "end\n");
    op_route_decision d;
    cr_assert_eq(run(s, "x", "{}", &d), OP_POLICY_OK);
    cr_assert_eq(d.action, OP_ROUTE_CONTINUE);
    cr_assert_str_eq(d.model, "x");
    cr_assert_eq(run(s, "a", "{}", &d), OP_POLICY_OK);
    cr_assert_str_eq(d.model, "b");
    cr_assert_eq(run(s, "no", "{}", &d), OP_POLICY_OK);
    cr_assert_eq(d.action, OP_ROUTE_REJECT);
    cr_assert_eq(d.status, 429);
    cr_assert_str_eq(d.message, "slow down");
    cr_assert_str_eq(d.policy, "p.lua");
    cr_assert_eq(run(s, "deflt", "{}", &d), OP_POLICY_OK);
    cr_assert_eq(d.status, 403);
    cr_assert_str_eq(d.message, "rejected by policy");
    op_policy_set_unref(s);
}

Test(policy, chain_sees_rewrite_and_stops_at_reject)
{
    op_policy_set *s = NULL;
    char err[512];
    cr_assert_eq(load(&s, err, sizeof err, 100000, 4u << 20, "one.lua",
                      "function route(req) if req.model == 'a' then return {model='b'} end end",
                      "none.lua", "x = 1 -- defines no route", "two.lua",
                      "function route(req) if req.model == 'b' then return outpost.reject(400, "
                      "'b seen') end end",
                      NULL),
                 0, "%s", err);
    cr_assert_eq(op_policy_set_count(s), 3);
    op_route_decision d;
    cr_assert_eq(run(s, "a", "{}", &d), OP_POLICY_OK);
    cr_assert_eq(d.action, OP_ROUTE_REJECT);
    cr_assert_str_eq(d.message, "b seen");
    cr_assert_str_eq(d.policy, "two.lua");
    op_policy_set_unref(s);
}

Test(policy, request_fields_and_lazy_body)
{
    op_policy_set *s = load_ok(
        "function route(req)\n"
        "  local parts = {req.account, req.task, req.method, req.path, req.headers['x-user'],\n"
        "                 tostring(req.tokens_estimate), req.body.prompt, tostring(req.body.n),\n"
        "                 tostring(req.body.list[2]), tostring(req.body.z == outpost.null)}\n"
        "  return outpost.reject(400, table.concat(parts, '|'))\n"
        "end\n");
    op_route_decision d;
    cr_assert_eq(run(s, "m", "{\"prompt\":\"hi\",\"n\":3,\"list\":[1,2.5],\"z\":null}", &d),
                 OP_POLICY_OK);
    cr_assert_str_eq(d.message, "local|text-generation|POST|/ai/run/x|alice|12|hi|3|2.5|true");
    op_policy_set_unref(s);
}

Test(policy, kept_request_reads_the_call_running)
{
    /* A policy that stashes req must never reach a request that is gone:
     * req is one read-only table per state, and reads the fields of the
     * call running (the host keeps no pointer into a finished request). */
    op_policy_set *s = load_ok("function route(req)\n"
                               "  if old then return outpost.reject(400, tostring(rawequal(old, req)) "
                               ".. ' ' .. tostring(old.body.a) .. ' ' .. old.model) end\n"
                               "  old = req\n"
                               "end\n");
    op_route_decision d;
    cr_assert_eq(run(s, "m1", "{\"a\":1}", &d), OP_POLICY_OK);
    cr_assert_eq(d.action, OP_ROUTE_CONTINUE);
    cr_assert_eq(run(s, "m2", "{\"a\":2}", &d), OP_POLICY_OK);
    cr_assert_str_eq(d.message, "true 2 m2");
    op_policy_set_unref(s);
}

Test(policy, sandbox_denies_dangerous_functions)
{
    static const char *const probes[] = {
        "return io",          "return debug",         "return os.execute",
        "return os.getenv",   "return dofile",        "return loadfile",
        "return package",     "return string.dump",   "return ('x').dump",
        "return collectgarbage",
    };
    for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++) {
        char src[256];
        snprintf(src, sizeof src,
                 "function route(req) local v = (function() %s end)() "
                 "if v ~= nil then return outpost.reject(400, 'exposed') end end",
                 probes[i]);
        op_policy_set *s = load_ok(src);
        op_route_decision d;
        cr_assert_eq(run(s, "m", "{}", &d), OP_POLICY_OK, "%s", probes[i]);
        cr_assert_eq(d.action, OP_ROUTE_CONTINUE, "'%s' is reachable", probes[i]);
        op_policy_set_unref(s);
        op_policy_thread_cleanup();
    }
    op_policy_set *s = load_ok("function route(req)\n"
                               "  if req.model == 'req' then require('os') end\n"
                               "  if req.model == 'bin' then assert(load('\\27Lua')) end\n"
                               "  if req.model == 'time' then return outpost.route(type(os.time())) end\n"
                               "end\n");
    op_route_decision d;
    cr_assert_eq(run(s, "req", "{}", &d), OP_POLICY_ERROR);
    cr_assert(strstr(d.message, "not allowed"), "%s", d.message);
    cr_assert_eq(run(s, "bin", "{}", &d), OP_POLICY_ERROR);
    cr_assert(strstr(d.message, "binary"), "%s", d.message);
    cr_assert_eq(run(s, "time", "{}", &d), OP_POLICY_OK);
    cr_assert_str_eq(d.model, "number");
    op_policy_set_unref(s);
}

Test(policy, runaway_loop_hits_budget_even_inside_pcall)
{
    op_policy_set *s = load_ok(
        "function route(req)\n"
        "  if req.model == 'plain' then while true do end end\n"
        "  while true do pcall(function() while true do end end) end\n"
        "end\n");
    op_route_decision d;
    cr_assert_eq(run(s, "plain", "{}", &d), OP_POLICY_BUDGET);
    cr_assert(strstr(d.message, "policy 'p.lua' exceeded its instruction budget (100000)"), "%s",
              d.message);
    cr_assert_eq(run(s, "pcall", "{}", &d), OP_POLICY_BUDGET);
    op_policy_set_unref(s);
}

Test(policy, memory_bomb_fails_and_state_recovers)
{
    op_policy_set *s = NULL;
    char err[512];
    cr_assert_eq(load(&s, err, sizeof err, 1000000, 1u << 20, "m.lua",
                      "function route(req)\n"
                      "  if req.model == 'bomb' then local t = {} for i = 1, 1e7 do "
                      "t[i] = ('x'):rep(1000) .. i end end\n"
                      "  if req.model == 'pbomb' then pcall(function() local s = ('x'):rep(1 << 22) "
                      "end) while true do end end\n"
                      "  return outpost.route('ok')\n"
                      "end\n",
                      NULL),
                 0, "%s", err);
    op_route_decision d;
    cr_assert_eq(run(s, "bomb", "{}", &d), OP_POLICY_MEMORY);
    cr_assert(strstr(d.message, "exceeded its memory limit (1048576 bytes)"), "%s", d.message);
    cr_assert_eq(run(s, "fine", "{}", &d), OP_POLICY_OK);
    cr_assert_str_eq(d.model, "ok");
    cr_assert_eq(run(s, "pbomb", "{}", &d), OP_POLICY_MEMORY, "%s", d.message);
    cr_assert_eq(run(s, "fine", "{}", &d), OP_POLICY_OK);
    op_policy_set_unref(s);
}

Test(policy, runtime_error_names_file_and_line)
{
    op_policy_set *s = load_ok("function route(req)\n  local x = nil\n  return x.y\nend\n");
    op_route_decision d;
    cr_assert_eq(run(s, "m", "{}", &d), OP_POLICY_ERROR);
    cr_assert(strstr(d.message, "policy 'p.lua' failed: p.lua:3:"), "%s", d.message);
    cr_assert_str_eq(d.policy, "p.lua");
    cr_assert_str_eq(d.model, "m");
    op_policy_set_unref(s);
}

Test(policy, bad_return_values_are_errors)
{
    op_policy_set *s = load_ok("function route(req)\n"
                               "  if req.model == 's' then return 'model' end\n"
                               "  if req.model == 'st' then return outpost.reject(200, 'x') end\n"
                               "  if req.model == 'm' then return {model = 42} end\n"
                               "end\n");
    op_route_decision d;
    cr_assert_eq(run(s, "s", "{}", &d), OP_POLICY_ERROR);
    cr_assert(strstr(d.message, "must return nil or a table, got string"), "%s", d.message);
    cr_assert_eq(run(s, "st", "{}", &d), OP_POLICY_ERROR);
    cr_assert(strstr(d.message, "400 to 599"), "%s", d.message);
    cr_assert_eq(run(s, "m", "{}", &d), OP_POLICY_ERROR);
    cr_assert(strstr(d.message, "'model' must be a non-empty string"), "%s", d.message);
    op_policy_set_unref(s);
}

Test(policy, load_errors_have_file_and_line)
{
    op_policy_set *s = NULL;
    char err[512];
    cr_assert_eq(load(&s, err, sizeof err, 100000, 4u << 20, "syn.lua",
                      "function route(req)\n  if then\nend\n", NULL),
                 -1);
    cr_assert(strstr(err, "syn.lua:2:"), "%s", err);
    cr_assert_null(s);
    cr_assert_eq(load(&s, err, sizeof err, 100000, 4u << 20, "top.lua", "while true do end\n",
                      NULL),
                 -1);
    cr_assert(strstr(err, "instruction budget"), "%s", err);
    op_config_policy cfg = {.memory_bytes = 1 << 20, .instructions = 1000};
    char *missing[] = {"/nonexistent/x.lua"};
    cfg.files = missing;
    cfg.n_files = 1;
    cr_assert_eq(op_policy_set_load(&cfg, &s, err, sizeof err), -1);
    cr_assert(strstr(err, "/nonexistent/x.lua:0: cannot read policy"), "%s", err);
}

static void *thread_main(void *arg)
{
    op_policy_set *s = arg;
    long ok = 0;
    for (int i = 0; i < 2000; i++) {
        op_route_decision d;
        char model[32];
        snprintf(model, sizeof model, "m%d", i % 7);
        if (run(s, model, "{}", &d) == OP_POLICY_OK && d.model[0] == 'r' &&
            strcmp(d.model + 1, model) == 0)
            ok++;
    }
    op_policy_thread_cleanup();
    return (void *)ok;
}

Test(policy, threads_each_get_their_own_state)
{
    op_policy_set *s = load_ok("count = 0\n"
                               "function route(req) count = count + 1\n"
                               "  return outpost.route('r' .. req.model) end\n");
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, thread_main, s);
    for (int i = 0; i < 4; i++) {
        void *res;
        pthread_join(t[i], &res);
        cr_assert_eq((long)res, 2000);
    }
    op_policy_set_unref(s);
}

Test(policy, library_split_is_stable)
{
    op_policy_set *s = load_ok(
        "local split = require('outpost.split')\n"
        "function route(req)\n"
        "  local a = 0\n"
        "  for i = 1, 1000 do if split.pick('u' .. i, {{'a', 90}, {'b', 10}}) == 'a' then a = a + 1 end end\n"
        "  local same = split.pick('x', {{'a', 50}, {'b', 50}}) == split.pick('x', {{'a', 50}, {'b', 50}})\n"
        "  return outpost.reject(400, a .. ' ' .. tostring(same))\n"
        "end\n");
    op_route_decision d;
    cr_assert_eq(run(s, "m", "{}", &d), OP_POLICY_OK, "%s", d.message);
    int a = atoi(d.message);
    cr_assert(a > 850 && a < 950, "90%% arm got %d of 1000", a);
    cr_assert(strstr(d.message, "true"));
    op_policy_set_unref(s);
}

Test(policy, library_split_new_picks_what_pick_picks)
{
    op_policy_set *s = load_ok(
        "local split = require('outpost.split')\n"
        "local arms = {{'a', 70}, {'b', 20.5}, {'c', 9.5}, {'d', 0}}\n"
        "local pick = split.new(arms)\n"
        "function route(req)\n"
        "  local same, d = 0, 0\n"
        "  for i = 1, 500 do local k = 'k' .. i\n"
        "    local v = pick(k)\n"
        "    if v == split.pick(k, arms) then same = same + 1 end\n"
        "    if v == 'd' then d = d + 1 end\n"
        "  end\n"
        "  local ok = pcall(split.new, {{'x', 0}})\n"
        "  return outpost.reject(400, same .. ' ' .. d .. ' ' .. tostring(ok))\n"
        "end\n");
    op_route_decision d;
    cr_assert_eq(run(s, "m", "{}", &d), OP_POLICY_OK, "%s", d.message);
    cr_assert_str_eq(d.message, "500 0 false");
    op_policy_set_unref(s);
}

/* ---- the offline tester and the shipped examples ---- */

static int cli(const char *policy, const char *request, char **out_text)
{
    char pol[512], rq[512];
    snprintf(pol, sizeof pol, "%s/lua/examples/%s", OUTPOST_SOURCE_DIR, policy);
    snprintf(rq, sizeof rq, "%s/tests/data/policy/%s", OUTPOST_SOURCE_DIR, request);
    char *argv[] = {pol, rq, "--lib", OUTPOST_SOURCE_DIR "/lua", NULL};
    char *buf = NULL, *ebuf = NULL;
    size_t len = 0, elen = 0;
    FILE *out = open_memstream(&buf, &len), *err = open_memstream(&ebuf, &elen);
    int rc = op_policy_cli(4, argv, out, err);
    fclose(out);
    fclose(err);
    free(ebuf);
    *out_text = buf;
    return rc;
}

Test(policy, examples_through_the_cli)
{
    char *out;
    cr_assert_eq(cli("route.lua", "route_request.json", &out), 0);
    cr_assert(strstr(out, "{\"action\":\"continue\",\"model\":\"@local/smollm2-135m-instruct\"}"),
              "%s", out);
    free(out);
    cr_assert_eq(cli("ab_split.lua", "ab_request.json", &out), 0);
    cr_assert(strstr(out, "\"model\":\"@local/model-"), "%s", out);
    free(out);
    cr_assert_eq(cli("reject_large.lua", "large_request.json", &out), 0);
    cr_assert(strstr(out, "\"status\":413"), "%s", out);
    free(out);
    cr_assert_eq(cli("reject_large.lua", "many_tokens_request.json", &out), 0);
    cr_assert(strstr(out, "max_tokens may be at most 1024"), "%s", out);
    free(out);
    cr_assert_eq(cli("reject_large.lua", "route_request.json", &out), 0);
    cr_assert(strstr(out, "continue"), "%s", out);
    free(out);
    cr_assert_eq(cli("by_header.lua", "premium_request.json", &out), 0);
    cr_assert(strstr(out, "@local/chat-large"), "%s", out);
    free(out);
    cr_assert_eq(cli("by_header.lua", "reserved_request.json", &out), 0);
    cr_assert(strstr(out, "\"status\":403"), "%s", out);
    free(out);
}

Test(policy, cli_exit_codes)
{
    char *buf = NULL, *ebuf = NULL;
    size_t len = 0, elen = 0;
    FILE *out = open_memstream(&buf, &len), *err = open_memstream(&ebuf, &elen);
    char *one[] = {"only.lua", NULL};
    cr_assert_eq(op_policy_cli(1, one, out, err), 2);
    char *bad_req = ts_write_file(g_dir, "r.json", "{\"body\":{}}");
    char *pol = ts_write_file(g_dir, "p.lua", "function route(req) error('boom') end");
    char *args[] = {pol, bad_req, NULL};
    cr_assert_eq(op_policy_cli(2, args, out, err), 2);
    char *good_req = ts_write_file(g_dir, "g.json", "{\"model\":\"m\"}");
    char *args2[] = {pol, good_req, NULL};
    cr_assert_eq(op_policy_cli(2, args2, out, err), 1);
    fclose(out);
    fclose(err);
    cr_assert(strstr(ebuf, "boom"), "%s", ebuf);
    free(buf);
    free(ebuf);
    free(bad_req);
    free(pol);
    free(good_req);
}
