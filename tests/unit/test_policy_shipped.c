/*
 * The ready policies of lua/policies/, run on their fixtures
 * (tests/policies/<name>/) through the real `outpostctl policy test` binary
 * (OUTPOST_BINARY_DIR/outpostctl: build the outpostctl target first), with
 * the exact decision lines and exit codes asserted. A few properties that
 * need many requests (split proportions, stickiness) use the C API on the
 * same files.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "platform/pl_log.h"
#include "policy/op_policy.h"
#include "test_support.h"

#define CTL OUTPOST_BINARY_DIR "/outpostctl"
#define POL OUTPOST_SOURCE_DIR "/lua/policies/"
#define FIX OUTPOST_SOURCE_DIR "/tests/policies/"

static void setup(void) { pl_log_configure(PL_LOG_OFF, PL_LOG_FORMAT_KV); }
static void teardown(void) { op_policy_thread_cleanup(); }

TestSuite(policy_shipped, .init = setup, .fini = teardown);

/* Runs `outpostctl policy test ARGS` with stderr discarded (or kept, with
 * keep_err). Returns the exit status; *out gets the output (malloc'd). */
static int ctl(char **out, bool keep_err, const char *args)
{
    cr_assert(access(CTL, X_OK) == 0, "%s is missing: build the outpostctl target", CTL);
    char cmd[4096];
    /* In a subshell: ts_run adds 2>&1 after the whole command. */
    snprintf(cmd, sizeof cmd, "(%s policy test %s --lib %s/lua%s)", CTL, args, OUTPOST_SOURCE_DIR,
             keep_err ? "" : " 2>/dev/null");
    return ts_run(cmd, out);
}

/* Asserts exit status rc and exactly the output lines want. */
static void expect(const char *args, int rc, const char *want)
{
    char *out = NULL;
    int got = ctl(&out, false, args);
    cr_assert_eq(got, rc, "%s: exit %d, want %d; output:\n%s", args, got, rc, out);
    cr_assert_str_eq(out, want, "%s", args);
    free(out);
}

Test(policy_shipped, fallback_chain_on_error)
{
    expect(POL "fallback_chain.lua " FIX "fallback_chain/request.json --hook on_error --result " FIX
               "fallback_chain/errors.json",
           0,
           "{\"action\":\"fallback\",\"policy\":\"fallback_chain.lua\"}\n" /* 503 */
           "{\"action\":\"fallback\",\"policy\":\"fallback_chain.lua\"}\n" /* 500 */
           "{\"action\":\"fallback\",\"policy\":\"fallback_chain.lua\"}\n" /* 429 */
           "{\"action\":\"fallback\",\"policy\":\"fallback_chain.lua\"}\n" /* 408 */
           "{\"action\":\"fallback\",\"policy\":\"fallback_chain.lua\"}\n" /* timeout */
           "{\"action\":\"fallback\",\"policy\":\"fallback_chain.lua\"}\n" /* network */
           "{\"action\":\"fallback\",\"policy\":\"fallback_chain.lua\"}\n" /* tls */
           "{\"action\":\"fail\",\"status\":400,\"message\":\"max_tokens is too large\","
           "\"policy\":\"fallback_chain.lua\"}\n"
           "{\"action\":\"fail\",\"status\":401,\"message\":\"upstream workers-ai refused the "
           "request with status 401\",\"policy\":\"fallback_chain.lua\"}\n"
           "{\"action\":\"fail\",\"status\":404,\"message\":\"upstream workers-ai refused the "
           "request with status 404\",\"policy\":\"fallback_chain.lua\"}\n");
    /* Per request through cf-aig-metadata: opted out, or 4xx falls back too. */
    expect(POL "fallback_chain.lua " FIX "fallback_chain/request_opt_out.json --hook on_error "
               "--result " FIX "fallback_chain/error_400.json",
           0, "{\"action\":\"default\"}\n");
    expect(POL "fallback_chain.lua " FIX "fallback_chain/request_4xx_falls_back.json --hook "
               "on_error --result " FIX "fallback_chain/error_400.json",
           0, "{\"action\":\"fallback\",\"policy\":\"fallback_chain.lua\"}\n");
}

Test(policy_shipped, fallback_chain_on_response)
{
    expect(POL "fallback_chain.lua " FIX "fallback_chain/request.json --hook on_response --result " FIX
               "fallback_chain/responses.json",
           0,
           "{\"action\":\"fallback\",\"policy\":\"fallback_chain.lua\"}\n" /* success:false */
           "{\"action\":\"default\"}\n"  /* success:true */
           "{\"action\":\"default\"}\n"  /* a stream: no body */
           "{\"action\":\"default\"}\n"  /* "success" only inside a string */
           "{\"action\":\"default\"}\n"); /* not JSON */
}

Test(policy_shipped, retry_backoff)
{
    /* No jitter (metadata retry_jitter=0): 200, 400, 800 ms, then fallback
     * once the step's 4 attempts are used. */
    expect(POL "retry_backoff.lua " FIX "retry_backoff/request.json --hook on_error --result " FIX
               "retry_backoff/attempts.json",
           0,
           "{\"action\":\"retry\",\"delay_ms\":200,\"policy\":\"retry_backoff.lua\"}\n"
           "{\"action\":\"retry\",\"delay_ms\":400,\"policy\":\"retry_backoff.lua\"}\n"
           "{\"action\":\"retry\",\"delay_ms\":800,\"policy\":\"retry_backoff.lua\"}\n"
           "{\"action\":\"fallback\",\"policy\":\"retry_backoff.lua\"}\n");
    /* Tuned through metadata: base 100, cap 250, 5 attempts. */
    expect(POL "retry_backoff.lua " FIX "retry_backoff/request_tuned.json --hook on_error --result " FIX
               "retry_backoff/tuned_attempts.json",
           0,
           "{\"action\":\"retry\",\"delay_ms\":100,\"policy\":\"retry_backoff.lua\"}\n"
           "{\"action\":\"retry\",\"delay_ms\":200,\"policy\":\"retry_backoff.lua\"}\n"
           "{\"action\":\"retry\",\"delay_ms\":250,\"policy\":\"retry_backoff.lua\"}\n"
           "{\"action\":\"fallback\",\"policy\":\"retry_backoff.lua\"}\n");
    /* Hints: Retry-After header, OpenAI's message, retry_after in the body,
     * a text body; a hint over 30 s falls back; a 400 is not its business. */
    expect(POL "retry_backoff.lua " FIX "retry_backoff/request.json --hook on_error --result " FIX
               "retry_backoff/hints.json",
           0,
           "{\"action\":\"retry\",\"delay_ms\":1500,\"policy\":\"retry_backoff.lua\"}\n"
           "{\"action\":\"retry\",\"delay_ms\":2500,\"policy\":\"retry_backoff.lua\"}\n"
           "{\"action\":\"retry\",\"delay_ms\":4000,\"policy\":\"retry_backoff.lua\"}\n"
           "{\"action\":\"retry\",\"delay_ms\":20,\"policy\":\"retry_backoff.lua\"}\n"
           "{\"action\":\"fallback\",\"policy\":\"retry_backoff.lua\"}\n"
           "{\"action\":\"default\"}\n");
    /* Listed before fallback_chain.lua, the 400 goes on to it. */
    char *out = NULL;
    cr_assert_eq(ctl(&out, false,
                     POL "retry_backoff.lua " POL "fallback_chain.lua " FIX
                         "retry_backoff/request.json --hook on_error --result " FIX
                         "retry_backoff/hints.json"),
                 0, "%s", out);
    cr_assert(strstr(out, "{\"action\":\"fail\",\"status\":400,\"message\":\"bad request\","
                          "\"policy\":\"fallback_chain.lua\"}\n"),
              "%s", out);
    free(out);
}

/* Parses the delay_ms of each retry line into d; returns how many. */
static int delays(const char *out, int *d, int max)
{
    int n = 0;
    for (const char *p = out; n < max && (p = strstr(p, "\"delay_ms\":")); p++)
        d[n++] = atoi(p + strlen("\"delay_ms\":"));
    return n;
}

Test(policy_shipped, retry_backoff_jitter_stays_in_range)
{
    /* Default jitter 0.5: attempt k waits 50..100% of 200 * 2^(k-1) ms. */
    for (int run = 0; run < 5; run++) {
        char *out = NULL;
        cr_assert_eq(ctl(&out, false,
                         POL "retry_backoff.lua " FIX "retry_backoff/request_jitter.json --hook "
                             "on_error --result " FIX "retry_backoff/attempts.json"),
                     0, "%s", out);
        int d[4];
        cr_assert_eq(delays(out, d, 4), 3, "%s", out);
        for (int k = 0; k < 3; k++) {
            int full = 200 << k;
            cr_assert(d[k] >= full / 2 && d[k] <= full, "attempt %d waits %d of %d", k + 1, d[k],
                      full);
        }
        cr_assert(strstr(out, "\"action\":\"fallback\""), "%s", out);
        free(out);
    }
}

static const char *rules(const char *user, const char *pad)
{
    static char buf[512];
    snprintf(buf, sizeof buf,
             "{\"rules\":[{\"key\":\"tokens:%s\",\"unit\":\"tokens\",\"limit\":100000,"
             "\"window\":86400,\"sliding\":true},{\"key\":\"requests:%s\",\"unit\":\"requests\","
             "\"limit\":60,\"window\":60,\"sliding\":false}]}\n%s",
             user, user, pad);
    return buf;
}

Test(policy_shipped, token_budget)
{
    expect(POL "token_budget.lua " FIX "token_budget/request_user.json --hook limit", 0,
           rules("alice", ""));
    expect(POL "token_budget.lua " FIX "token_budget/request_token.json --hook limit", 0,
           rules("ci-bot", ""));
    expect(POL "token_budget.lua " FIX "token_budget/request_number_user.json --hook limit", 0,
           rules("4217", ""));
    expect(POL "token_budget.lua " FIX "token_budget/request_anonymous.json --hook limit", 0,
           rules("anonymous", ""));
    /* A 150-byte user is hashed into a key that fits. */
    char *out = NULL;
    cr_assert_eq(ctl(&out, false,
                     POL "token_budget.lua " FIX "token_budget/request_long_user.json --hook limit"),
                 0, "%s", out);
    cr_assert(strstr(out, "\"key\":\"tokens:#"), "%s", out);
    cr_assert_null(strstr(out, "uuuu"), "%s", out);
    free(out);
}

Test(policy_shipped, failing_limit_policies_exit_1)
{
    char *out = NULL;
    cr_assert_eq(ctl(&out, true,
                     FIX "token_budget/runaway_limit.lua " FIX
                         "token_budget/request_user.json --hook limit --instructions 100000"),
                 1, "%s", out);
    cr_assert(strstr(out, "policy failed (budget): policy 'runaway_limit.lua' exceeded its "
                          "instruction budget (100000)"),
              "%s", out);
    free(out);
    cr_assert_eq(ctl(&out, true,
                     FIX "token_budget/bad_rule.lua " FIX
                         "token_budget/request_user.json --hook limit"),
                 1, "%s", out);
    cr_assert(strstr(out, "policy failed (error): policy 'bad_rule.lua' failed: limit(): rule 1: "
                          "'limit' must be a number > 0"),
              "%s", out);
    free(out);
    /* The budget policy itself, with too little memory to load. */
    cr_assert_eq(ctl(&out, true,
                     POL "token_budget.lua " FIX "token_budget/request_user.json --hook limit "
                         "--memory 20000"),
                 1, "%s", out);
    cr_assert(strstr(out, "policy load failed"), "%s", out);
    free(out);
}

Test(policy_shipped, usage_errors_exit_2)
{
    char *out = NULL;
    cr_assert_eq(ctl(&out, true,
                     POL "retry_backoff.lua " FIX "retry_backoff/request.json --hook on_error"),
                 2, "%s", out);
    cr_assert(strstr(out, "--hook on_error needs --result RESULT.json"), "%s", out);
    free(out);
    cr_assert_eq(ctl(&out, true, POL "token_budget.lua " FIX "token_budget/request_user.json "
                                     "--hook limit --result " FIX "retry_backoff/hints.json"),
                 2, "%s", out);
    free(out);
    cr_assert_eq(ctl(&out, true, POL "token_budget.lua " FIX "token_budget/request_user.json "
                                     "--hook ratelimit"),
                 2, "%s", out);
    cr_assert(strstr(out, "unknown hook 'ratelimit'"), "%s", out);
    free(out);
    /* A result file that is not JSON. */
    cr_assert_eq(ctl(&out, true, POL "fallback_chain.lua " FIX "fallback_chain/request.json "
                                     "--hook on_error --result " POL "fallback_chain.lua"),
                 2, "%s", out);
    free(out);
}

Test(policy_shipped, percentage_split_route)
{
    expect(POL "percentage_split.lua " FIX "percentage_split/request_alice.json", 0,
           "{\"action\":\"continue\",\"model\":\"gpt-4o-mini\",\"provider\":\"openai\"}\n");
    expect(POL "percentage_split.lua " FIX "percentage_split/request_bob.json", 0,
           "{\"action\":\"continue\",\"model\":\"@cf/meta/llama-3.1-8b-instruct\","
           "\"provider\":\"workers-ai\"}\n");
    /* No metadata user: the token name is the user (bob's arm). */
    expect(POL "percentage_split.lua " FIX "percentage_split/request_token_only.json", 0,
           "{\"action\":\"continue\",\"model\":\"@cf/meta/llama-3.1-8b-instruct\","
           "\"provider\":\"workers-ai\"}\n");
    /* metadata ab_arm forces an arm. */
    expect(POL "percentage_split.lua " FIX "percentage_split/request_forced.json", 0,
           "{\"action\":\"continue\",\"model\":\"gpt-4o-mini\",\"provider\":\"openai\"}\n");
    /* Other models, and requests outside a gateway, pass unchanged. */
    expect(POL "percentage_split.lua " FIX "percentage_split/request_other_model.json", 0,
           "{\"action\":\"continue\",\"model\":\"@cf/mistral/mistral-7b-instruct-v0.1\","
           "\"provider\":\"workers-ai\"}\n");
    expect(POL "percentage_split.lua " FIX "percentage_split/request_no_gateway.json", 0,
           "{\"action\":\"continue\",\"model\":\"@cf/meta/llama-3.1-8b-instruct\"}\n");
}

static op_policy_set *load_file(const char *path)
{
    char *files[] = {(char *)path};
    op_config_policy cfg = {.lib_dir = OUTPOST_SOURCE_DIR "/lua", .memory_bytes = 8u << 20,
                            .instructions = 1000000, .files = files, .n_files = 1};
    op_policy_set *s = NULL;
    char err[512];
    cr_assert_eq(op_policy_set_load(&cfg, &s, err, sizeof err), 0, "%s", err);
    return s;
}

Test(policy_shipped, percentage_split_proportion_and_stickiness)
{
    op_policy_set *s = load_file(POL "percentage_split.lua");
    int canary = 0;
    for (int u = 0; u < 4000; u++) {
        char md[64];
        snprintf(md, sizeof md, "{\"user\":\"user-%d\"}", u);
        op_route_request r = {.model = "@cf/meta/llama-3.1-8b-instruct", .gateway = "gw1",
                              .provider = "workers-ai", .metadata_json = md, .attempt = 1};
        op_route_decision a, b;
        cr_assert_eq(op_policy_route(s, &r, &a), OP_POLICY_OK, "%s", a.message);
        cr_assert_eq(op_policy_route(s, &r, &b), OP_POLICY_OK, "%s", b.message);
        cr_assert_str_eq(a.provider, b.provider, "user-%d changed arms", u);
        cr_assert_str_eq(a.model, b.model);
        canary += strcmp(a.provider, "openai") == 0;
    }
    cr_assert(canary > 300 && canary < 500, "10%% arm got %d of 4000 users", canary);
    op_policy_set_unref(s);
}

Test(policy_shipped, every_policy_loads_with_the_default_limits)
{
    static const char *const files[] = {"fallback_chain.lua", "retry_backoff.lua",
                                        "token_budget.lua", "percentage_split.lua"};
    static const op_policy_hook defines[][2] = {
        {OP_HOOK_ON_ERROR, OP_HOOK_ON_RESPONSE}, {OP_HOOK_ON_ERROR, OP_HOOK_ON_ERROR},
        {OP_HOOK_LIMIT, OP_HOOK_LIMIT}, {OP_HOOK_ROUTE, OP_HOOK_ROUTE}};
    for (size_t i = 0; i < 4; i++) {
        char path[512];
        snprintf(path, sizeof path, POL "%s", files[i]);
        op_policy_set *s = load_file(path);
        for (int h = 0; h < OP_HOOK_COUNT; h++) {
            bool want = h == (int)defines[i][0] || h == (int)defines[i][1];
            cr_assert_eq(op_policy_set_has_hook(s, (op_policy_hook)h), want, "%s %s", files[i],
                         op_policy_hook_name((op_policy_hook)h));
        }
        op_policy_set_unref(s);
    }
}
