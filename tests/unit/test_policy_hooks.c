/*
 * Unit tests of the gateway's policy hooks called directly (limit,
 * on_error, on_response, and route's provider switch): decisions, chain
 * order, invalid returns as errors naming the file, budget and memory
 * failures of each hook with their metrics, the gateway fields of req
 * (req.metadata included), the err/resp tables, request ids, threads, and
 * the offline tester's new options.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics/op_metrics.h"
#include "platform/pl_log.h"
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

TestSuite(policy_hooks, .init = setup, .fini = teardown);

/* Loads (name, source) pairs, NULL-terminated, with the given limits. */
static op_policy_set *load_limits(uint64_t instructions, size_t memory, ...)
{
    char *files[8];
    size_t n = 0;
    va_list ap;
    va_start(ap, memory);
    for (;;) {
        const char *name = va_arg(ap, const char *);
        if (!name)
            break;
        cr_assert_lt(n, 8);
        files[n++] = ts_write_file(g_dir, name, va_arg(ap, const char *));
    }
    va_end(ap);
    op_config_policy cfg = {.lib_dir = OUTPOST_SOURCE_DIR "/lua", .memory_bytes = memory,
                            .instructions = instructions, .files = files, .n_files = n};
    op_policy_set *s = NULL;
    char err[512];
    int rc = op_policy_set_load(&cfg, &s, err, sizeof err);
    for (size_t i = 0; i < n; i++)
        free(files[i]);
    cr_assert_eq(rc, 0, "load failed: %s", err);
    return s;
}

#define LOAD1(src) load_limits(100000, 4u << 20, "p.lua", (src), NULL)

static op_route_request gw_req(const char *metadata)
{
    static const op_policy_header hdrs[] = {{"X-User", "alice"}};
    op_route_request r = {.account = "acct1",
                          .model = "gpt-4o-mini",
                          .method = "POST",
                          .path = "/v1/acct1/gw1",
                          .headers = hdrs,
                          .n_headers = 1,
                          .body_json = "{\"max_tokens\":64}",
                          .body_len = 17,
                          .tokens_estimate = 12,
                          .gateway = "gw1",
                          .provider = "openai",
                          .endpoint = "chat/completions",
                          .metadata_json = metadata,
                          .token_name = "ci",
                          .max_tokens = 64,
                          .step = 1,
                          .attempt = 2};
    return r;
}

static op_attempt_result http_error(int status)
{
    op_attempt_result res = {.status = status,
                             .error_kind = "http",
                             .message = "upstream said no",
                             .body = "{\"error\":\"x\"}",
                             .body_len = 13,
                             .content_type = "application/json",
                             .duration_ms = 12.5,
                             .max_attempts = 3};
    return res;
}

static op_policy_status on_error(op_policy_set *s, int status, op_next_decision *d)
{
    op_route_request r = gw_req(NULL);
    op_attempt_result res = http_error(status);
    return op_policy_on_error(s, &r, &res, d);
}

static op_policy_status on_response(op_policy_set *s, int status, op_next_decision *d)
{
    op_route_request r = gw_req(NULL);
    op_attempt_result res = {.status = status, .body = "{\"success\":true}", .body_len = 16,
                             .content_type = "application/json", .max_attempts = 1};
    return op_policy_on_response(s, &r, &res, d);
}

static double failures(const char *policy, const char *hook, const char *reason)
{
    static const char *const labels[] = {"policy", "hook", "reason", NULL};
    op_metric *fam = op_metric_counter("outpost_policy_failures_total",
                                       "Policy hook calls that failed, by reason "
                                       "(error, budget, memory).",
                                       labels);
    return op_metric_value(op_metric_with(fam, policy, hook, reason));
}

static double invocations(const char *policy, const char *hook)
{
    static const char *const labels[] = {"policy", "hook", NULL};
    op_metric *fam = op_metric_counter("outpost_policy_invocations_total",
                                       "Policy hook calls, by policy file and hook.", labels);
    return op_metric_value(op_metric_with(fam, policy, hook));
}

/* ---- on_error / on_response ---------------------------------------- */

Test(policy_hooks, on_error_decisions)
{
    op_policy_set *s = LOAD1("function on_error(req, err)\n"
                             "  if err.status == 500 then return {action = 'retry', delay_ms = 250} end\n"
                             "  if err.status == 501 then return outpost.retry() end\n"
                             "  if err.status == 502 then return {action = 'retry', delay_ms = 99.9} end\n"
                             "  if err.status == 503 then return outpost.fallback() end\n"
                             "  if err.status == 504 then return outpost.fail(418, 'teapot') end\n"
                             "  if err.status == 505 then return {action = 'fail'} end\n"
                             "end\n");
    op_next_decision d;
    cr_assert_eq(on_error(s, 500, &d), OP_POLICY_OK, "%s", d.message);
    cr_assert_eq(d.action, OP_NEXT_RETRY);
    cr_assert_eq(d.delay_ms, 250);
    cr_assert_str_eq(d.policy, "p.lua");
    cr_assert_eq(on_error(s, 501, &d), OP_POLICY_OK);
    cr_assert_eq(d.action, OP_NEXT_RETRY);
    cr_assert_eq(d.delay_ms, -1, "no delay_ms: the gateway's backoff");
    cr_assert_eq(on_error(s, 502, &d), OP_POLICY_OK);
    cr_assert_eq(d.delay_ms, 99);
    cr_assert_eq(on_error(s, 503, &d), OP_POLICY_OK);
    cr_assert_eq(d.action, OP_NEXT_FALLBACK);
    cr_assert_eq(on_error(s, 504, &d), OP_POLICY_OK);
    cr_assert_eq(d.action, OP_NEXT_FAIL);
    cr_assert_eq(d.status, 418);
    cr_assert_str_eq(d.message, "teapot");
    cr_assert_eq(on_error(s, 505, &d), OP_POLICY_OK);
    cr_assert_eq(d.status, 502);
    cr_assert_str_eq(d.message, "request failed by policy");
    cr_assert_eq(on_error(s, 599, &d), OP_POLICY_OK);
    cr_assert_eq(d.action, OP_NEXT_DEFAULT);
    cr_assert_str_eq(d.policy, "");
    cr_assert_str_eq(d.message, "");
    op_policy_set_unref(s);
}

Test(policy_hooks, on_response_accepts_and_on_error_does_not)
{
    op_policy_set *s = LOAD1("function on_response(req, resp)\n"
                             "  if resp.status == 200 then return outpost.accept() end\n"
                             "  if resp.status == 201 then return outpost.fallback() end\n"
                             "end\n"
                             "function on_error(req, err) return {action = 'accept'} end\n");
    op_next_decision d;
    cr_assert_eq(on_response(s, 200, &d), OP_POLICY_OK, "%s", d.message);
    cr_assert_eq(d.action, OP_NEXT_ACCEPT);
    cr_assert_str_eq(d.policy, "p.lua");
    cr_assert_eq(on_response(s, 201, &d), OP_POLICY_OK);
    cr_assert_eq(d.action, OP_NEXT_FALLBACK);
    cr_assert_eq(on_response(s, 204, &d), OP_POLICY_OK);
    cr_assert_eq(d.action, OP_NEXT_DEFAULT);
    cr_assert_eq(on_error(s, 500, &d), OP_POLICY_ERROR);
    cr_assert(strstr(d.message, "policy 'p.lua' failed: on_error(): 'action' must be \"retry\", "
                                "\"fallback\" or \"fail\""),
              "%s", d.message);
    cr_assert_eq(d.action, OP_NEXT_DEFAULT);
    op_policy_set_unref(s);
}

Test(policy_hooks, chain_runs_in_file_order_and_first_decision_wins)
{
    op_policy_set *s = load_limits(
        100000, 4u << 20, "a.lua",
        "calls = 0\n"
        "function on_error(req, err) calls = calls + 1\n"
        "  if err.status == 503 then return outpost.fallback() end end\n"
        "function on_response(req, resp) if resp.status == 299 then return {action='x'} end end\n",
        "none.lua", "x = 1 -- defines no hook",
        "b.lua",
        "function on_error(req, err)\n"
        "  if err.status == 503 then error('b.lua must not run after a decision') end\n"
        "  return outpost.retry(10)\n"
        "end\n",
        NULL);
    op_next_decision d;
    cr_assert_eq(on_error(s, 503, &d), OP_POLICY_OK, "%s", d.message);
    cr_assert_eq(d.action, OP_NEXT_FALLBACK);
    cr_assert_str_eq(d.policy, "a.lua");
    cr_assert_eq(on_error(s, 500, &d), OP_POLICY_OK, "%s", d.message);
    cr_assert_eq(d.action, OP_NEXT_RETRY);
    cr_assert_eq(d.delay_ms, 10);
    cr_assert_str_eq(d.policy, "b.lua");
    /* b.lua has no on_response: a.lua alone decides. */
    cr_assert_eq(on_response(s, 200, &d), OP_POLICY_OK);
    cr_assert_eq(d.action, OP_NEXT_DEFAULT);
    cr_assert_eq(on_response(s, 299, &d), OP_POLICY_ERROR);
    cr_assert_str_eq(d.policy, "a.lua");
    cr_assert(op_policy_set_has_hook(s, OP_HOOK_ON_ERROR));
    cr_assert(op_policy_set_has_hook(s, OP_HOOK_ON_RESPONSE));
    cr_assert_not(op_policy_set_has_hook(s, OP_HOOK_LIMIT));
    cr_assert_not(op_policy_set_has_hook(s, OP_HOOK_ROUTE));
    op_policy_set_unref(s);
}

Test(policy_hooks, invalid_next_decisions_are_errors_naming_the_file)
{
    static const struct {
        const char *ret, *msg;
    } cases[] = {
        {"'fallback'", "on_error() must return nil or a table {action=...}, got string"},
        {"{}", "on_error(): 'action' must be"},
        {"{action = 'retry', delay_ms = -1}", "'delay_ms' must be a number from 0 to 600000"},
        {"{action = 'retry', delay_ms = 600001}", "'delay_ms' must be a number from 0 to 600000"},
        {"{action = 'retry', delay_ms = 0/0}", "'delay_ms' must be a number"},
        {"{action = 'retry', delay_ms = '10'}", "'delay_ms' must be a number"},
        {"{action = 'fail', status = 302}", "fail status must be an integer from 400 to 599"},
        {"{action = 'fail', status = 500.5}", "fail status must be an integer from 400 to 599"},
        {"{action = 'fail', message = 42}", "fail message must be a string"},
        {"setmetatable({}, {__index = function() error('no') end})", "'action' must be"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char src[256];
        snprintf(src, sizeof src, "function on_error(req, err) return %s end", cases[i].ret);
        op_policy_set *s = load_limits(100000, 4u << 20, "bad.lua", src, NULL);
        op_next_decision d;
        cr_assert_eq(on_error(s, 500, &d), OP_POLICY_ERROR, "%s", cases[i].ret);
        cr_assert(strstr(d.message, "policy 'bad.lua' failed: "), "%s", d.message);
        cr_assert(strstr(d.message, cases[i].msg), "%s: %s", cases[i].ret, d.message);
        cr_assert_str_eq(d.policy, "bad.lua");
        cr_assert_eq(d.action, OP_NEXT_DEFAULT);
        op_policy_set_unref(s);
        op_policy_thread_cleanup();
    }
}

Test(policy_hooks, err_and_resp_tables)
{
    op_policy_set *s = LOAD1(
        "function on_error(req, err)\n"
        "  local keys = {}\n"
        "  for k in pairs(err) do keys[#keys + 1] = k end\n"
        "  table.sort(keys)\n"
        "  return outpost.fail(599, table.concat({err.status, err.kind, err.message, err.body,\n"
        "    err.body_len, err.content_type, tostring(err.retry_after_ms), err.attempt,\n"
        "    err.max_attempts, err.step, err.duration_ms, tostring(err.nothing)}, '|') ..\n"
        "    ' ' .. table.concat(keys, ','))\n"
        "end\n"
        "function on_response(req, resp)\n"
        "  return outpost.fail(599, table.concat({resp.status, tostring(resp.kind),\n"
        "    tostring(resp.body), resp.body_len, resp.retry_after_ms}, '|'))\n"
        "end\n");
    op_route_request r = gw_req(NULL);
    op_attempt_result res = http_error(503);
    op_next_decision d;
    cr_assert_eq(op_policy_on_error(s, &r, &res, &d), OP_POLICY_OK, "%s", d.message);
    cr_assert_str_eq(d.message,
                     "503|http|upstream said no|{\"error\":\"x\"}|13|application/json|nil|2|3|1|"
                     "12.5|nil attempt,body,body_len,content_type,duration_ms,kind,max_attempts,"
                     "message,status,step");
    /* A stream: no body; a Retry-After header. */
    op_attempt_result stream = {.status = 200, .content_type = "text/event-stream",
                                .retry_after_ms = 1500, .max_attempts = 1};
    cr_assert_eq(op_policy_on_response(s, &r, &stream, &d), OP_POLICY_OK, "%s", d.message);
    cr_assert_str_eq(d.message, "200|nil|nil|0|1500");
    op_policy_set_unref(s);
}

Test(policy_hooks, no_hook_or_no_set_is_default_without_lua)
{
    op_next_decision d;
    op_route_request r = gw_req(NULL);
    op_attempt_result res = http_error(500);
    cr_assert_eq(op_policy_on_error(NULL, &r, &res, &d), OP_POLICY_OK);
    cr_assert_eq(d.action, OP_NEXT_DEFAULT);
    cr_assert_eq(d.delay_ms, -1);
    op_policy_set *s = LOAD1("function route(req) end");
    double before = invocations("p.lua", "on_error");
    cr_assert_eq(op_policy_on_error(s, &r, &res, &d), OP_POLICY_OK);
    cr_assert_eq(op_policy_on_response(s, &r, &res, &d), OP_POLICY_OK);
    cr_assert_eq(d.action, OP_NEXT_DEFAULT);
    op_limit_rule rules[OP_POLICY_MAX_LIMIT_RULES];
    size_t n = 99;
    op_route_decision f;
    cr_assert_eq(op_policy_limit(s, &r, rules, &n, &f), OP_POLICY_OK);
    cr_assert_eq(n, 0);
    cr_assert_str_eq(f.message, "");
    cr_assert_eq(invocations("p.lua", "on_error"), before);
    op_policy_set_unref(s);
}

/* ---- limit ----------------------------------------------------------- */

static op_policy_status limit(op_policy_set *s, const char *metadata, op_limit_rule *rules,
                              size_t *n, op_route_decision *f)
{
    op_route_request r = gw_req(metadata);
    return op_policy_limit(s, &r, rules, n, f);
}

Test(policy_hooks, limit_rules_single_list_and_defaults)
{
    op_policy_set *s = LOAD1(
        "function limit(req)\n"
        "  local u = req.metadata.user\n"
        "  if u == 'one' then return {key = 'user:one', limit = 5} end\n"
        "  if u == 'none' then return nil end\n"
        "  if u == 'empty' then return {} end\n"
        "  return {{key = 'tok:' .. u, unit = 'tokens', limit = 1e5, window = 86400, sliding = true},\n"
        "          {key = 'cost:' .. u, unit = 'cost', limit = 2.5, window = 3600, technique = 'sliding'},\n"
        "          {key = 'req:' .. u, unit = 'requests', limit = 10, technique = 'fixed'}}\n"
        "end\n");
    op_limit_rule r[OP_POLICY_MAX_LIMIT_RULES];
    size_t n;
    op_route_decision f;
    cr_assert_eq(limit(s, "{\"user\":\"one\"}", r, &n, &f), OP_POLICY_OK, "%s", f.message);
    cr_assert_eq(n, 1);
    cr_assert_str_eq(r[0].key, "user:one");
    cr_assert_eq(r[0].unit, OP_LIMIT_REQUESTS);
    cr_assert_float_eq(r[0].limit, 5, 1e-9);
    cr_assert_float_eq(r[0].window_s, 60, 1e-9);
    cr_assert_not(r[0].sliding);
    cr_assert_eq(limit(s, "{\"user\":\"none\"}", r, &n, &f), OP_POLICY_OK);
    cr_assert_eq(n, 0);
    cr_assert_eq(limit(s, "{\"user\":\"empty\"}", r, &n, &f), OP_POLICY_OK);
    cr_assert_eq(n, 0);
    cr_assert_eq(limit(s, "{\"user\":\"bo\"}", r, &n, &f), OP_POLICY_OK, "%s", f.message);
    cr_assert_eq(n, 3);
    cr_assert_str_eq(r[0].key, "tok:bo");
    cr_assert_eq(r[0].unit, OP_LIMIT_TOKENS);
    cr_assert_float_eq(r[0].limit, 1e5, 1e-9);
    cr_assert_float_eq(r[0].window_s, 86400, 1e-9);
    cr_assert(r[0].sliding);
    cr_assert_eq(r[1].unit, OP_LIMIT_COST);
    cr_assert_float_eq(r[1].limit, 2.5, 1e-9);
    cr_assert(r[1].sliding);
    cr_assert_eq(r[2].unit, OP_LIMIT_REQUESTS);
    cr_assert_not(r[2].sliding);
    cr_assert_str_eq(f.message, "");
    cr_assert_str_eq(f.model, "gpt-4o-mini");
    cr_assert_str_eq(f.provider, "openai");
    cr_assert_str_eq(op_limit_unit_name(OP_LIMIT_TOKENS), "tokens");
    op_policy_set_unref(s);
}

Test(policy_hooks, limit_rules_concatenate_in_file_order_up_to_the_cap)
{
    op_policy_set *s = load_limits(
        100000, 4u << 20, "first.lua",
        "function limit(req) local t = {}\n"
        "  for i = 1, (req.metadata.n or 3) do t[i] = {key = 'a' .. i, limit = i} end\n"
        "  return t end\n",
        "second.lua", "function limit(req) return {{key = 'b1', limit = 1}, {key = 'b2', limit = 2}} end\n",
        NULL);
    op_limit_rule r[OP_POLICY_MAX_LIMIT_RULES];
    size_t n;
    op_route_decision f;
    cr_assert_eq(limit(s, NULL, r, &n, &f), OP_POLICY_OK, "%s", f.message);
    cr_assert_eq(n, 5);
    static const char *const keys[] = {"a1", "a2", "a3", "b1", "b2"};
    for (size_t i = 0; i < 5; i++)
        cr_assert_str_eq(r[i].key, keys[i]);
    cr_assert_eq(limit(s, "{\"n\":6}", r, &n, &f), OP_POLICY_OK, "%s", f.message);
    cr_assert_eq(n, 8);
    /* 7 + 2 rules: second.lua goes past the cap. */
    cr_assert_eq(limit(s, "{\"n\":7}", r, &n, &f), OP_POLICY_ERROR);
    cr_assert_eq(n, 0);
    cr_assert_str_eq(f.policy, "second.lua");
    cr_assert(strstr(f.message, "policy 'second.lua' failed: limit(): more than 8 rules in all"),
              "%s", f.message);
    cr_assert_eq(limit(s, "{\"n\":9}", r, &n, &f), OP_POLICY_ERROR);
    cr_assert_str_eq(f.policy, "first.lua");
    op_policy_set_unref(s);
}

Test(policy_hooks, invalid_rules_are_errors_naming_the_file)
{
    static const struct {
        const char *ret, *msg;
    } cases[] = {
        {"'user:x'", "limit() must return nil, a rule or a list of rules, got string"},
        {"{limit = 5}", "limit(): a rule needs a 'key'"},
        {"{key = '', limit = 5}", "rule 1: 'key' must be a non-empty string shorter than 160"},
        {"{key = string.rep('k', 160), limit = 5}", "'key' must be a non-empty string"},
        {"{key = 42, limit = 5}", "'key' must be a non-empty string"},
        {"{key = 'k'}", "rule 1: 'limit' must be a number > 0"},
        {"{key = 'k', limit = 0}", "'limit' must be a number > 0"},
        {"{key = 'k', limit = -3}", "'limit' must be a number > 0"},
        {"{key = 'k', limit = math.huge}", "'limit' must be a number > 0"},
        {"{key = 'k', limit = 0/0}", "'limit' must be a number > 0"},
        {"{key = 'k', limit = 1, unit = 'bytes'}", "'unit' must be \"requests\", \"tokens\" or"},
        {"{key = 'k', limit = 1, window = 0}", "'window' must be a number of seconds > 0"},
        {"{key = 'k', limit = 1, window = '60'}", "'window' must be a number of seconds > 0"},
        {"{key = 'k', limit = 1, sliding = 'yes'}", "'sliding' must be a boolean"},
        {"{key = 'k', limit = 1, technique = 'leaky'}", "'technique' must be \"sliding\" or"},
        {"{{key = 'k', limit = 1}, 'x'}", "rule 2 must be a table, got string"},
        {"{{key = 'k', limit = 1}, {key = 'j', limit = -1}}", "rule 2: 'limit' must be"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char src[256];
        snprintf(src, sizeof src, "function limit(req) return %s end", cases[i].ret);
        op_policy_set *s = load_limits(100000, 4u << 20, "rules.lua", src, NULL);
        op_limit_rule r[OP_POLICY_MAX_LIMIT_RULES];
        size_t n = 77;
        op_route_decision f;
        cr_assert_eq(limit(s, NULL, r, &n, &f), OP_POLICY_ERROR, "%s", cases[i].ret);
        cr_assert_eq(n, 0);
        cr_assert(strstr(f.message, "policy 'rules.lua' failed: "), "%s", f.message);
        cr_assert(strstr(f.message, cases[i].msg), "%s: %s", cases[i].ret, f.message);
        cr_assert_str_eq(f.policy, "rules.lua");
        op_policy_set_unref(s);
        op_policy_thread_cleanup();
    }
}

/* ---- budget and memory, for every hook --------------------------------- */

static op_policy_status call_hook(op_policy_set *s, op_policy_hook h, const char *metadata,
                                  char *msg, size_t msglen)
{
    op_route_request r = gw_req(metadata);
    op_attempt_result res = http_error(500);
    op_route_decision d;
    op_next_decision nd;
    op_limit_rule rules[OP_POLICY_MAX_LIMIT_RULES];
    size_t n;
    op_policy_status st;
    switch (h) {
    case OP_HOOK_ROUTE: st = op_policy_route(s, &r, &d); break;
    case OP_HOOK_LIMIT: st = op_policy_limit(s, &r, rules, &n, &d); break;
    case OP_HOOK_ON_ERROR: st = op_policy_on_error(s, &r, &res, &nd); break;
    default: st = op_policy_on_response(s, &r, &res, &nd); break;
    }
    snprintf(msg, msglen, "%s", h <= OP_HOOK_LIMIT ? d.message : nd.message);
    return st;
}

Test(policy_hooks, budget_and_memory_failures_for_each_hook, .timeout = 60)
{
    for (int h = 0; h < OP_HOOK_COUNT; h++) {
        const char *name = op_policy_hook_name((op_policy_hook)h);
        char src[512], file[32];
        snprintf(file, sizeof file, "f_%s.lua", name);
        snprintf(src, sizeof src,
                 "function %s(req)\n"
                 "  local m = req.metadata.mode\n"
                 "  if m == 'loop' then while true do end end\n"
                 "  if m == 'ploop' then while true do pcall(function() while true do end end) end end\n"
                 "  if m == 'bomb' then local t = {} for i = 1, 1e7 do t[i] = ('x'):rep(1000) .. i end end\n"
                 "  if m == 'boom' then error('boom') end\n"
                 "end\n",
                 name);
        op_policy_set *s = load_limits(100000, 1u << 20, file, src, NULL);
        char msg[512], want[160];
        double budget0 = failures(file, name, "budget"), mem0 = failures(file, name, "memory"),
               err0 = failures(file, name, "error"), inv0 = invocations(file, name);
        cr_assert_eq(call_hook(s, (op_policy_hook)h, "{\"mode\":\"loop\"}", msg, sizeof msg),
                     OP_POLICY_BUDGET, "%s", name);
        snprintf(want, sizeof want, "policy '%s' exceeded its instruction budget (100000)", file);
        cr_assert_str_eq(msg, want);
        cr_assert_eq(call_hook(s, (op_policy_hook)h, "{\"mode\":\"ploop\"}", msg, sizeof msg),
                     OP_POLICY_BUDGET, "%s: %s", name, msg);
        cr_assert_eq(call_hook(s, (op_policy_hook)h, "{\"mode\":\"bomb\"}", msg, sizeof msg),
                     OP_POLICY_MEMORY, "%s: %s", name, msg);
        snprintf(want, sizeof want, "policy '%s' exceeded its memory limit (1048576 bytes)", file);
        cr_assert_str_eq(msg, want);
        cr_assert_eq(call_hook(s, (op_policy_hook)h, "{\"mode\":\"boom\"}", msg, sizeof msg),
                     OP_POLICY_ERROR, "%s", name);
        cr_assert(strstr(msg, ":6: boom"), "%s", msg);
        /* The state recovers (rebuilt after the memory failure). */
        cr_assert_eq(call_hook(s, (op_policy_hook)h, "{\"mode\":\"fine\"}", msg, sizeof msg),
                     OP_POLICY_OK, "%s: %s", name, msg);
        cr_assert_eq(failures(file, name, "budget"), budget0 + 2, "%s", name);
        cr_assert_eq(failures(file, name, "memory"), mem0 + 1, "%s", name);
        cr_assert_eq(failures(file, name, "error"), err0 + 1, "%s", name);
        cr_assert_eq(invocations(file, name), inv0 + 5, "%s", name);
        op_policy_set_unref(s);
        op_policy_thread_cleanup();
    }
}

/* ---- req: the gateway fields, metadata, read-only ---------------------- */

Test(policy_hooks, gateway_fields_on_req)
{
    op_policy_set *s = LOAD1(
        "function route(req)\n"
        "  return outpost.reject(400, table.concat({tostring(req.gateway), tostring(req.provider),\n"
        "    tostring(req.endpoint), tostring(req.token_name), tostring(req.max_tokens),\n"
        "    tostring(req.step), tostring(req.attempt), req.account, req.model,\n"
        "    tostring(req.tokens_estimate), tostring(req.headers['x-user']),\n"
        "    tostring(req.body.max_tokens),\n"
        "    tostring(req.metadata.user)}, '|'))\n"
        "end\n");
    op_route_request r = gw_req("{\"user\":\"alice\"}");
    op_route_decision d;
    cr_assert_eq(op_policy_route(s, &r, &d), OP_POLICY_OK, "%s", d.message);
    cr_assert_str_eq(d.message,
                     "gw1|openai|chat/completions|ci|64|1|2|acct1|gpt-4o-mini|12|alice|64|alice");
    /* A request from before the gateway: every new field is nil. */
    op_route_request old = {.account = "local", .model = "m", .method = "POST", .path = "/ai/run",
                            .tokens_estimate = -1};
    cr_assert_eq(op_policy_route(s, &old, &d), OP_POLICY_OK, "%s", d.message);
    cr_assert_str_eq(d.message, "nil|nil|nil|nil|nil|nil|nil|local|m|-1|nil|nil|nil");
    op_policy_set_unref(s);
}

Test(policy_hooks, metadata_is_parsed_lazily_into_a_table)
{
    op_policy_set *s = LOAD1(
        "function route(req)\n"
        "  local m = req.metadata\n"
        "  local keys = {}\n"
        "  for k in pairs(m) do keys[#keys + 1] = k end\n"
        "  table.sort(keys)\n"
        "  return outpost.reject(400, table.concat({type(m), table.concat(keys, ','),\n"
        "    tostring(m.user), tostring(m.n), math.type(m.n) or '-', tostring(m.f),\n"
        "    tostring(m.ok), tostring(m.z == outpost.null), tostring(m.nested and m.nested.a[2]),\n"
        "    tostring(m.uni)}, '|'))\n"
        "end\n");
    static const struct {
        const char *md, *want;
    } cases[] = {
        {"{\"user\":\"alice\",\"n\":42,\"f\":1.5,\"ok\":true,\"z\":null,\"nested\":{\"a\":[1,\"two\"]},"
         "\"uni\":\"caf\\u00e9 \\ud83d\\ude00\"}",
         "table|f,n,nested,ok,uni,user,z|alice|42|integer|1.5|true|true|two|caf\xc3\xa9 \xf0\x9f\x98\x80"},
        {NULL, "table||nil|nil|-|nil|nil|false|nil|nil"},
        {"", "table||nil|nil|-|nil|nil|false|nil|nil"},
        {"[1,2]", "table||nil|nil|-|nil|nil|false|nil|nil"},          /* not an object */
        {"{\"user\":", "table||nil|nil|-|nil|nil|false|nil|nil"},     /* truncated */
        {"{\"user\":\"a\"} x", "table||nil|nil|-|nil|nil|false|nil|nil"}, /* trailing data */
        {"{\"user\":\"\xff\"}", "table||nil|nil|-|nil|nil|false|nil|nil"}, /* invalid UTF-8 */
        {"  {\"n\": -7e2}  ", "table|n|nil|-700.0|float|nil|nil|false|nil|nil"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        op_route_request r = gw_req(cases[i].md);
        op_route_decision d;
        cr_assert_eq(op_policy_route(s, &r, &d), OP_POLICY_OK, "%s", d.message);
        cr_assert_str_eq(d.message, cases[i].want, "metadata %s", cases[i].md);
    }
    op_policy_set_unref(s);
}

Test(policy_hooks, req_is_read_only_and_rawset_does_not_leak)
{
    op_policy_set *s = LOAD1(
        "function route(req)\n"
        "  if req.metadata.op == 'write' then req.model = 'x' end\n"
        "  if req.metadata.op == 'raw' then rawset(req, 'model', 'sneaky') end\n"
        "  if req.metadata.op == 'meta' then setmetatable(req, {}) end\n"
        "  req.metadata.mine = 1 -- the tables are the policy's to change\n"
        "  return outpost.route(req.model)\n"
        "end\n");
    op_route_request r = gw_req("{\"op\":\"write\"}");
    op_route_decision d;
    cr_assert_eq(op_policy_route(s, &r, &d), OP_POLICY_ERROR);
    cr_assert(strstr(d.message, "req is read-only"), "%s", d.message);
    r = gw_req("{\"op\":\"meta\"}");
    cr_assert_eq(op_policy_route(s, &r, &d), OP_POLICY_ERROR);
    cr_assert(strstr(d.message, "protected metatable"), "%s", d.message);
    r = gw_req("{\"op\":\"raw\"}");
    cr_assert_eq(op_policy_route(s, &r, &d), OP_POLICY_OK, "%s", d.message);
    cr_assert_str_eq(d.model, "sneaky");
    r = gw_req("{}");
    cr_assert_eq(op_policy_route(s, &r, &d), OP_POLICY_OK, "%s", d.message);
    cr_assert_str_eq(d.model, "gpt-4o-mini", "a rawset must not reach the next call");
    op_policy_set_unref(s);
}

Test(policy_hooks, route_switches_provider_and_the_chain_sees_it)
{
    op_policy_set *s = load_limits(
        100000, 4u << 20, "one.lua",
        "function route(req)\n"
        "  if req.metadata.bad == 'empty' then return {provider = ''} end\n"
        "  if req.metadata.bad == 'long' then return {provider = string.rep('p', 64)} end\n"
        "  if req.metadata.bad == 'num' then return {provider = 7, model = 'ok'} end\n"
        "  return {provider = 'workers-ai', model = '@cf/meta/llama-3.1-8b-instruct'}\n"
        "end\n",
        "two.lua",
        "function route(req)\n"
        "  if req.provider == 'workers-ai' then return {model = req.model .. '-seen'} end\n"
        "end\n",
        NULL);
    op_route_request r = gw_req(NULL);
    op_route_decision d;
    cr_assert_eq(op_policy_route(s, &r, &d), OP_POLICY_OK, "%s", d.message);
    cr_assert_str_eq(d.provider, "workers-ai");
    cr_assert_str_eq(d.model, "@cf/meta/llama-3.1-8b-instruct-seen");
    static const char *const bad[] = {"{\"bad\":\"empty\"}", "{\"bad\":\"long\"}",
                                      "{\"bad\":\"num\"}"};
    for (size_t i = 0; i < 3; i++) {
        r = gw_req(bad[i]);
        cr_assert_eq(op_policy_route(s, &r, &d), OP_POLICY_ERROR, "%s", bad[i]);
        cr_assert(strstr(d.message, "policy 'one.lua' failed: route(): 'provider' must be a "
                                    "non-empty string shorter than 64 bytes"),
                  "%s", d.message);
        /* Unchanged by the failing policy. */
        cr_assert_str_eq(d.provider, "openai");
        cr_assert_str_eq(d.model, "gpt-4o-mini");
    }
    /* Without a provider in the request, the decision's is empty. */
    op_route_request plain = {.model = "m", .tokens_estimate = -1};
    op_policy_set *keep = LOAD1("function route(req) return {model = tostring(req.provider)} end");
    cr_assert_eq(op_policy_route(keep, &plain, &d), OP_POLICY_OK, "%s", d.message);
    cr_assert_str_eq(d.provider, "");
    cr_assert_str_eq(d.model, "nil");
    op_policy_set_unref(keep);
    op_policy_set_unref(s);
}

Test(policy_hooks, tables_are_converted_once_per_request_id)
{
    op_policy_set *s = LOAD1(
        "function route(req) md = req.metadata; body = req.body end\n"
        "function limit(req)\n"
        "  return {key = tostring(rawequal(md, req.metadata)) .. ',' ..\n"
        "    tostring(rawequal(body, req.body)), limit = 1}\n"
        "end\n");
    static const char md[] = "{\"user\":\"alice\"}";
    static const char md2[] = "{\"user\":\"alice\"}";
    op_route_request r = gw_req(md);
    op_route_decision d;
    op_limit_rule rules[OP_POLICY_MAX_LIMIT_RULES];
    size_t n;
    r.request_id = 7;
    cr_assert_eq(op_policy_route(s, &r, &d), OP_POLICY_OK, "%s", d.message);
    cr_assert_eq(op_policy_limit(s, &r, rules, &n, &d), OP_POLICY_OK, "%s", d.message);
    cr_assert_str_eq(rules[0].key, "true,true");
    /* Another request id: converted again. */
    cr_assert_eq(op_policy_route(s, &r, &d), OP_POLICY_OK);
    r.request_id = 8;
    cr_assert_eq(op_policy_limit(s, &r, rules, &n, &d), OP_POLICY_OK);
    cr_assert_str_eq(rules[0].key, "false,false");
    /* Same id, other metadata text: that one is converted again. */
    r.request_id = 9;
    cr_assert_eq(op_policy_route(s, &r, &d), OP_POLICY_OK);
    r.metadata_json = md2;
    cr_assert_eq(op_policy_limit(s, &r, rules, &n, &d), OP_POLICY_OK);
    cr_assert_str_eq(rules[0].key, "false,true");
    /* No id: once per hook call. */
    r.request_id = 0;
    cr_assert_eq(op_policy_route(s, &r, &d), OP_POLICY_OK);
    cr_assert_eq(op_policy_limit(s, &r, rules, &n, &d), OP_POLICY_OK);
    cr_assert_str_eq(rules[0].key, "false,false");
    op_policy_set_unref(s);
}

/* ---- threads ------------------------------------------------------------ */

typedef struct worker {
    op_policy_set *set;
    int id;
    long ok;
} worker;

static void *worker_main(void *arg)
{
    worker *w = arg;
    for (int i = 0; i < 1500; i++) {
        char md[64], want[64];
        snprintf(md, sizeof md, "{\"user\":\"t%d-u%d\"}", w->id, i % 50);
        op_route_request r = gw_req(md);
        r.request_id = (uint64_t)w->id << 32 | (uint64_t)i;
        r.attempt = 1 + i % 3;
        op_route_decision d;
        op_limit_rule rules[OP_POLICY_MAX_LIMIT_RULES];
        size_t n;
        op_next_decision nd;
        op_attempt_result res = http_error(i % 2 ? 503 : 400);
        if (op_policy_route(w->set, &r, &d) != OP_POLICY_OK ||
            strcmp(d.provider, i % 50 < 25 ? "a" : "b") != 0)
            continue;
        if (op_policy_limit(w->set, &r, rules, &n, &d) != OP_POLICY_OK || n != 1)
            continue;
        snprintf(want, sizeof want, "user:t%d-u%d", w->id, i % 50);
        if (strcmp(rules[0].key, want) != 0)
            continue;
        if (op_policy_on_error(w->set, &r, &res, &nd) != OP_POLICY_OK ||
            nd.action != (i % 2 ? OP_NEXT_RETRY : OP_NEXT_FAIL) ||
            (i % 2 && nd.delay_ms != 100 * r.attempt))
            continue;
        if (op_policy_on_response(w->set, &r, &res, &nd) != OP_POLICY_OK ||
            nd.action != OP_NEXT_ACCEPT)
            continue;
        w->ok++;
    }
    op_policy_thread_cleanup();
    return NULL;
}

Test(policy_hooks, every_hook_on_several_threads, .timeout = 60)
{
    op_policy_set *s = LOAD1(
        "function route(req)\n"
        "  local n = tonumber(req.metadata.user:match('u(%d+)$'))\n"
        "  return {provider = n < 25 and 'a' or 'b'}\n"
        "end\n"
        "function limit(req) return {key = 'user:' .. req.metadata.user, limit = 10} end\n"
        "function on_error(req, err)\n"
        "  if err.status == 503 then return outpost.retry(100 * err.attempt) end\n"
        "  return outpost.fail(err.status)\n"
        "end\n"
        "function on_response(req, resp) return outpost.accept() end\n");
    worker w[4];
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (worker){.set = s, .id = i};
        cr_assert_eq(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        cr_assert_eq(w[i].ok, 1500, "thread %d: %ld of 1500 requests decided right", i, w[i].ok);
    }
    op_policy_set_unref(s);
}

/* ---- names and the offline tester ---------------------------------------- */

Test(policy_hooks, names)
{
    static const char *const names[] = {"route", "limit", "on_error", "on_response"};
    for (int h = 0; h < OP_HOOK_COUNT; h++) {
        cr_assert_str_eq(op_policy_hook_name((op_policy_hook)h), names[h]);
        cr_assert_eq(op_policy_hook_parse(names[h]), h);
    }
    cr_assert_str_eq(op_policy_hook_name(OP_HOOK_COUNT), "?");
    cr_assert_eq(op_policy_hook_parse("ratelimit"), -1);
    cr_assert_eq(op_policy_hook_parse(NULL), -1);
    cr_assert_str_eq(op_next_action_name(OP_NEXT_FALLBACK), "fallback");
    cr_assert_str_eq(op_next_action_name((op_next_action)9), "?");
    cr_assert_str_eq(op_limit_unit_name(OP_LIMIT_COST), "cost");
}

static int cli(char **out_text, char **err_text, int argc, char **argv)
{
    char *buf = NULL, *ebuf = NULL;
    size_t len = 0, elen = 0;
    FILE *out = open_memstream(&buf, &len), *err = open_memstream(&ebuf, &elen);
    int rc = op_policy_cli(argc, argv, out, err);
    fclose(out);
    fclose(err);
    *out_text = buf;
    *err_text = ebuf;
    return rc;
}

Test(policy_hooks, cli_hooks_and_input_errors)
{
    char *pol = ts_write_file(g_dir, "p.lua",
                              "function limit(req) return {key = req.gateway .. ':' .. "
                              "req.metadata.user .. ':' .. req.step .. ':' .. req.attempt, "
                              "limit = req.max_tokens, window = 0.5} end\n"
                              "function on_error(req, err) if err.attempt < 3 then return "
                              "outpost.retry(err.attempt * 10) end return outpost.fail(503, "
                              "err.kind) end\n");
    char *rq = ts_write_file(g_dir, "r.json",
                             "{\"gateway\":\"g\",\"metadata\":{\"user\":\"u\"},\"step\":2,"
                             "\"attempt\":1,\"body\":{\"max_tokens\":300}}");
    char *res = ts_write_file(g_dir, "res.json",
                              "[{\"status\":500},{\"status\":500,\"attempt\":2},"
                              "{\"kind\":\"timeout\",\"attempt\":3}]");
    char *bad_res = ts_write_file(g_dir, "bad.json", "[{\"status\":\"500\"}]");
    char *bad_rq = ts_write_file(g_dir, "badrq.json", "{\"gateway\":42}");
    char *out, *err;
    char *a1[] = {pol, rq, "--hook", "limit"};
    cr_assert_eq(cli(&out, &err, 4, a1), 0, "%s", err);
    cr_assert_str_eq(out, "{\"rules\":[{\"key\":\"g:u:2:1\",\"unit\":\"requests\",\"limit\":300,"
                          "\"window\":0.5,\"sliding\":false}]}\n");
    free(out);
    free(err);
    char *a2[] = {pol, rq, "--hook", "on_error", "--result", res};
    cr_assert_eq(cli(&out, &err, 6, a2), 0, "%s", err);
    cr_assert_str_eq(out, "{\"action\":\"retry\",\"delay_ms\":10,\"policy\":\"p.lua\"}\n"
                          "{\"action\":\"retry\",\"delay_ms\":20,\"policy\":\"p.lua\"}\n"
                          "{\"action\":\"fail\",\"status\":503,\"message\":\"timeout\","
                          "\"policy\":\"p.lua\"}\n");
    free(out);
    free(err);
    char *a3[] = {pol, rq, "--hook", "on_error", "--result", bad_res};
    cr_assert_eq(cli(&out, &err, 6, a3), 2);
    cr_assert(strstr(err, "'status' must be an integer"), "%s", err);
    free(out);
    free(err);
    char *a4[] = {pol, bad_rq, "--hook", "limit"};
    cr_assert_eq(cli(&out, &err, 4, a4), 2);
    cr_assert(strstr(err, "'gateway' must be a string"), "%s", err);
    free(out);
    free(err);
    /* route still needs a model; the old usage keeps working. */
    char *a5[] = {pol, rq};
    cr_assert_eq(cli(&out, &err, 2, a5), 2);
    cr_assert(strstr(err, "string 'model'"), "%s", err);
    free(out);
    free(err);
    char *a6[] = {pol, rq, "--hook"};
    cr_assert_eq(cli(&out, &err, 3, a6), 2);
    free(out);
    free(err);
    free(pol);
    free(rq);
    free(res);
    free(bad_res);
    free(bad_rq);
}
