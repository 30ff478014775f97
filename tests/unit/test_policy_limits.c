/*
 * Unit tests of the policy host's limits against work that the instruction
 * count alone does not see: finalizers, C functions that loop (string.rep,
 * table.move, pattern functions), big allocations, short coroutines, and the
 * JSON functions' error paths (run under ASan/LSan in CI, so a leak fails).
 *
 * Runaway tests carry a Criterion timeout so a regression fails instead of
 * hanging. Work is measured by a global counter that survives in the
 * thread's state between calls, never by time.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

TestSuite(policy_limits, .init = setup, .fini = teardown);

static int load_src(op_policy_set **set, const char *src, uint64_t instructions, char *err,
                    size_t errlen)
{
    char *file = ts_write_file(g_dir, "p.lua", src);
    char *files[1] = {file};
    op_config_policy cfg = {.lib_dir = OUTPOST_SOURCE_DIR "/lua",
                            .memory_bytes = 4u << 20,
                            .instructions = instructions,
                            .files = files,
                            .n_files = 1};
    int rc = op_policy_set_load(&cfg, set, err, errlen);
    free(file);
    return rc;
}

static op_policy_set *load_ok(const char *src, uint64_t instructions)
{
    op_policy_set *s = NULL;
    char err[512];
    cr_assert_eq(load_src(&s, src, instructions, err, sizeof err), 0, "load failed: %s", err);
    return s;
}

static op_policy_status run(op_policy_set *s, const char *model, op_route_decision *d)
{
    op_route_request r = {.account = "local", .model = model, .method = "POST",
                          .path = "/ai/run/x", .body_json = "{}", .body_len = 2,
                          .tokens_estimate = -1};
    return op_policy_route(s, &r, d);
}

/* Runs model "work" (expected to fail on its budget), then model "count",
 * which returns the global counter n as the model name. */
static long work_then_count(op_policy_set *s)
{
    op_route_decision d;
    cr_assert_eq(run(s, "work", &d), OP_POLICY_BUDGET, "%s", d.message);
    cr_assert(strstr(d.message, "exceeded its instruction budget"), "%s", d.message);
    cr_assert_eq(run(s, "count", &d), OP_POLICY_OK, "%s", d.message);
    return strtol(d.model, NULL, 10);
}

static const char *counting_policy(const char *work, char *buf, size_t n)
{
    snprintf(buf, n,
             "n = 0\n"
             "function route(req)\n"
             "  if req.model == 'count' then return outpost.route(tostring(n)) end\n"
             "  %s\n"
             "end\n",
             work);
    return buf;
}

Test(policy_limits, gc_metamethods_are_refused, .timeout = 30)
{
    /* An endless finalizer would otherwise run in lua_close, with no budget. */
    op_policy_set *s = NULL;
    char err[512];
    cr_assert_eq(load_src(&s, "setmetatable({}, {__gc = function() while true do end end})\n"
                              "function route(req) end\n",
                          100000, err, sizeof err),
                 -1);
    cr_assert(strstr(err, "p.lua:1: __gc metamethods are not available to policies"), "%s", err);

    s = load_ok("function route(req)\n"
                "  local t = setmetatable({}, {__index = function() return 'dflt' end})\n"
                "  if req.model == 'gc' then setmetatable({}, {__gc = print}) end\n"
                "  return outpost.route(t.anything)\n"
                "end\n",
                100000);
    op_route_decision d;
    cr_assert_eq(run(s, "x", &d), OP_POLICY_OK, "%s", d.message);
    cr_assert_str_eq(d.model, "dflt");
    cr_assert_eq(run(s, "gc", &d), OP_POLICY_ERROR);
    cr_assert(strstr(d.message, "p.lua:3: __gc metamethods are not available to policies"), "%s",
              d.message);
    op_policy_set_unref(s);
}

Test(policy_limits, string_rep_of_nothing_returns_at_once, .timeout = 30)
{
    op_policy_set *s = load_ok("function route(req)\n"
                               "  local e = string.rep('', 1 << 60) .. (''):rep(1 << 60, '')\n"
                               "  return outpost.route('[' .. e .. ('ab'):rep(3, ',') .. ']')\n"
                               "end\n",
                               100000);
    op_route_decision d;
    cr_assert_eq(run(s, "x", &d), OP_POLICY_OK, "%s", d.message);
    cr_assert_str_eq(d.model, "[ab,ab,ab]");
    op_policy_set_unref(s);
}

Test(policy_limits, table_move_is_charged_per_element, .timeout = 30)
{
    op_policy_set *s = load_ok("function route(req)\n"
                               "  local t = table.move({1, 2, 3}, 1, 3, 2)\n"
                               "  if req.model == 'huge' then table.move({}, 1, 1 << 50, 2) end\n"
                               "  return outpost.route(table.concat(t, ','))\n"
                               "end\n",
                               100000);
    op_route_decision d;
    cr_assert_eq(run(s, "x", &d), OP_POLICY_OK, "%s", d.message);
    cr_assert_str_eq(d.model, "1,1,2,3");
    cr_assert_eq(run(s, "huge", &d), OP_POLICY_BUDGET, "%s", d.message);
    op_policy_set_unref(s);
}

Test(policy_limits, pattern_scans_are_charged, .timeout = 60)
{
    char src[512];
    /* 1 MiB subject: each find costs 65537 units of a 100000 budget. */
    op_policy_set *s = load_ok(
        counting_policy("local s = ('x'):rep(1 << 20) "
                        "while true do s:find('y') n = n + 1 end",
                        src, sizeof src),
        100000);
    long n = work_then_count(s);
    cr_assert_lt(n, 3, "%ld scans of 1 MiB ran on a 100000 budget", n);
    op_policy_set_unref(s);
}

Test(policy_limits, big_allocations_are_charged, .timeout = 60)
{
    char src[512];
    /* Each upper() of 1 MiB allocates 1 MiB: 16384 units. */
    op_policy_set *s = load_ok(
        counting_policy("local s = ('x'):rep(1 << 20) "
                        "while true do local u = s:upper() n = n + 1 end",
                        src, sizeof src),
        100000);
    long n = work_then_count(s);
    cr_assert_lt(n, 10, "%ld copies of 1 MiB ran on a 100000 budget", n);
    op_policy_set_unref(s);
}

Test(policy_limits, short_coroutines_do_not_run_for_free, .timeout = 60)
{
    /* Each coroutine runs ~800 instructions and ends before a 1000-step hook
     * would fire; without charging, ~10000 of them would fit in the budget. */
    static const char *const works[] = {
        "while true do coroutine.resume(coroutine.create(function() "
        "for i = 1, 200 do n = n + 1 end end)) end",
        "while true do coroutine.wrap(function() for i = 1, 200 do n = n + 1 end end)() end",
        /* A coroutine that catches the budget error still stops. */
        "while true do coroutine.resume(coroutine.create(function() "
        "pcall(function() while true do n = n + 1 end end) end)) end",
    };
    for (size_t i = 0; i < sizeof works / sizeof works[0]; i++) {
        char src[512];
        op_policy_set *s = load_ok(counting_policy(works[i], src, sizeof src), 100000);
        long n = work_then_count(s);
        cr_assert_lt(n, 100000, "work %zu: %ld loop iterations on a 100000 budget", i, n);
        op_policy_set_unref(s);
        op_policy_thread_cleanup();
    }
}

Test(policy_limits, coroutines_still_work)
{
    op_policy_set *s = load_ok(
        "function route(req)\n"
        "  local gen = coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i) end end)\n"
        "  local co = coroutine.create(function(a, b) local c = coroutine.yield(a + b) "
        "return c * 2 end)\n"
        "  local _, x = coroutine.resume(co, 1, 2)\n"
        "  local _, y = coroutine.resume(co, 10)\n"
        "  local ok, err = coroutine.resume(co)\n"
        "  local ok2, err2 = pcall(coroutine.wrap(function() error('boom') end))\n"
        "  return outpost.route(table.concat({gen(), gen(), gen(), x, y, tostring(ok), err, "
        "tostring(ok2), err2}, ' '))\n"
        "end\n",
        100000);
    op_route_decision d;
    cr_assert_eq(run(s, "x", &d), OP_POLICY_OK, "%s", d.message);
    cr_assert_str_eq(d.model, "1 2 3 3 20 false cannot resume dead coroutine false p.lua:7: boom");
    op_policy_set_unref(s);
}

Test(policy_limits, json_errors_leave_nothing_behind)
{
    op_policy_set *s = load_ok(
        "function route(req)\n"
        "  local cyc = {} cyc[1] = cyc\n"
        "  local bad = {{1, 2}, {print}}\n"
        "  local e1, e2, e3, e4\n"
        "  for i = 1, 50 do\n"
        "    e1 = select(2, pcall(outpost.json_encode, cyc))\n"
        "    e2 = select(2, pcall(outpost.json_encode, bad))\n"
        "    e3 = select(2, pcall(outpost.json_encode, {a = 0/0}))\n"
        "    e4 = select(2, pcall(outpost.json_encode, {[true] = 1}))\n"
        "  end\n"
        "  local deep = string.rep('[', 100) .. string.rep(']', 100)\n"
        "  local ok = pcall(outpost.json_decode, deep)\n"
        "  local v, derr = outpost.json_decode('{\"a\":')\n"
        "  assert(e1:find('nested deeper than 64'), e1)\n"
        "  assert(e2:find('cannot encode a function as JSON'), e2)\n"
        "  assert(e3:find('NaN'), e3)\n"
        "  assert(e4:find('object keys must be strings'), e4)\n"
        "  assert(not ok and v == nil and derr:find('invalid JSON'))\n"
        "  local t = outpost.json_decode('{\"b\":[1,2.5,null,true],\"a\":\"x\"}')\n"
        "  assert(t.b[3] == outpost.null)\n"
        "  return outpost.route(outpost.json_encode(t))\n"
        "end\n",
        1000000);
    op_route_decision d;
    cr_assert_eq(run(s, "x", &d), OP_POLICY_OK, "%s", d.message);
    cr_assert_str_eq(d.model, "{\"a\":\"x\",\"b\":[1,2.5,null,true]}");
    op_policy_set_unref(s);
}
