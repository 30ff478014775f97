/*
 * policy_bench: cost of the Lua policy hooks per request, as the HTTP
 * workers pay it (warm per-thread state, lazy req fields, realistic headers
 * and gateway fields).
 *
 *   build/bench/policy_bench [POLICY.lua] [ITERATIONS]
 *
 * Prints ns per request for:
 *   - no policy; the example pass-through route; POLICY.lua's route
 *     (default lua/examples/ab_split.lua: requires a library module and
 *     hashes a header);
 *   - route + limit, the pair PRODUCT.md's target is about (under 2 us per
 *     request): lua/policies/percentage_split.lua (sticky split by
 *     metadata.user) and lua/policies/token_budget.lua (a sliding token
 *     budget and a request rate per user), on gateway requests whose
 *     cf-aig-metadata names one of 1000 users in turn;
 *   - on_response with lua/policies/fallback_chain.lua on a small
 *     non-streamed 200 body, and on_error with retry_backoff.lua +
 *     fallback_chain.lua on a 503.
 *
 * The machine may be shared: each figure is the best of ROUNDS rounds of
 * ITERATIONS/ROUNDS calls (the least disturbed one), not the mean.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "platform/pl_log.h"
#include "platform/pl_time.h"
#include "policy/op_policy.h"

#define ROUNDS 10

static const op_policy_header hdrs[] = {
    {"Host", "127.0.0.1:8787"}, {"User-Agent", "OpenAI/Python 1.54.0"},
    {"Content-Type", "application/json"}, {"Accept", "application/json"},
    {"X-User", "user-1234"}, {"Authorization", "Bearer xyz"}};
static const char body[] = "{\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}],"
                           "\"max_tokens\":64}";
/* cf-aig-metadata of N_USERS users, one per request in turn. */
#define N_USERS 1000
static char metadata[N_USERS][64];
static const char resp_body[] = "{\"result\":{\"response\":\"Hello! How can I help?\"},"
                                "\"success\":true,\"errors\":[],\"messages\":[]}";
static const char err_body[] = "{\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}";

static op_policy_set *load(const char *const *paths, size_t n)
{
    op_config_policy cfg = {.lib_dir = OUTPOST_LUA_DIR, .memory_bytes = 8u << 20,
                            .instructions = 1000000, .files = (char **)paths, .n_files = n};
    op_policy_set *set = NULL;
    char err[512];
    if (op_policy_set_load(&cfg, &set, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }
    return set;
}

static op_route_request request(bool gateway)
{
    op_route_request rq = {.account = "local", .model = "@local/chat", .task = "text-generation",
                           .method = "POST", .path = "/ai/run/@local/chat", .headers = hdrs,
                           .n_headers = 6, .body_json = body, .body_len = sizeof body - 1,
                           .tokens_estimate = 2};
    if (gateway) {
        rq.model = "@cf/meta/llama-3.1-8b-instruct";
        rq.path = "/v1/acct/gw1";
        rq.gateway = "gw1";
        rq.provider = "workers-ai";
        rq.endpoint = "@cf/meta/llama-3.1-8b-instruct";
        rq.metadata_json = metadata[0];
        rq.token_name = "ci";
        rq.max_tokens = 64;
        rq.step = 0;
        rq.attempt = 1;
    }
    return rq;
}

static void check(op_policy_status st, const char *what, const char *msg)
{
    if (st != OP_POLICY_OK) {
        fprintf(stderr, "%s: policy failed: %s\n", what, msg);
        exit(1);
    }
}

typedef enum { B_ROUTE, B_ROUTE_LIMIT, B_ON_RESPONSE, B_ON_ERROR } bench_kind;

/* One request's worth of hook calls. */
static void one(op_policy_set *set, bench_kind k, op_route_request *rq)
{
    static unsigned long seq;
    seq++;
    if (rq->gateway) {
        rq->metadata_json = metadata[seq % N_USERS];
        rq->request_id = seq;
    }
    op_route_decision d;
    if (k == B_ROUTE || k == B_ROUTE_LIMIT) {
        check(op_policy_route(set, rq, &d), "route", d.message);
    }
    if (k == B_ROUTE_LIMIT) {
        op_limit_rule rules[OP_POLICY_MAX_LIMIT_RULES];
        size_t n;
        check(op_policy_limit(set, rq, rules, &n, &d), "limit", d.message);
        if (n != 2) {
            fprintf(stderr, "limit: expected 2 rules, got %zu\n", n);
            exit(1);
        }
    }
    if (k == B_ON_RESPONSE || k == B_ON_ERROR) {
        op_attempt_result res = {.status = 200, .body = resp_body,
                                 .body_len = sizeof resp_body - 1,
                                 .content_type = "application/json", .duration_ms = 120,
                                 .max_attempts = 3};
        if (k == B_ON_ERROR) {
            res.status = 503;
            res.error_kind = "http";
            res.body = err_body;
            res.body_len = sizeof err_body - 1;
        }
        op_next_decision nd;
        op_policy_status st = k == B_ON_ERROR ? op_policy_on_error(set, rq, &res, &nd)
                                              : op_policy_on_response(set, rq, &res, &nd);
        check(st, "on_response/on_error", nd.message);
    }
}

static double bench(const char *const *paths, size_t n, bench_kind k, bool gateway, long iters)
{
    op_policy_set *set = load(paths, n);
    op_route_request rq = request(gateway);
    for (int i = 0; i < 2000; i++) /* warm the thread's state */
        one(set, k, &rq);
    long per_round = iters / ROUNDS > 0 ? iters / ROUNDS : 1;
    double best = 1e30;
    for (int r = 0; r < ROUNDS; r++) {
        uint64_t t0 = pl_time_mono_ns();
        for (long i = 0; i < per_round; i++)
            one(set, k, &rq);
        double ns = (double)(pl_time_mono_ns() - t0) / (double)per_round;
        if (ns < best)
            best = ns;
    }
    op_policy_thread_cleanup();
    op_policy_set_unref(set);
    return best;
}

int main(int argc, char **argv)
{
    pl_log_configure(PL_LOG_WARN, PL_LOG_FORMAT_KV);
    for (int u = 0; u < N_USERS; u++)
        snprintf(metadata[u], sizeof metadata[u], "{\"user\":\"user-%d\",\"team\":\"search\"}", u);
    const char *policy = argc > 1 ? argv[1] : OUTPOST_LUA_DIR "/examples/ab_split.lua";
    long iters = argc > 2 ? atol(argv[2]) : 500000;
    const char *route_only[] = {OUTPOST_LUA_DIR "/examples/route.lua"};
    const char *given[] = {policy};
    const char *gw[] = {OUTPOST_LUA_DIR "/policies/percentage_split.lua",
                        OUTPOST_LUA_DIR "/policies/token_budget.lua"};
    const char *fb[] = {OUTPOST_LUA_DIR "/policies/fallback_chain.lua"};
    const char *rt[] = {OUTPOST_LUA_DIR "/policies/retry_backoff.lua",
                        OUTPOST_LUA_DIR "/policies/fallback_chain.lua"};
    printf("best of %d rounds, %ld calls in all, ns per request\n", ROUNDS, iters);
    printf("route, no policy:                          %8.1f\n",
           bench(NULL, 0, B_ROUTE, false, iters));
    printf("route, examples/route.lua:                 %8.1f\n",
           bench(route_only, 1, B_ROUTE, false, iters));
    printf("route, %-36s%8.1f\n", policy, bench(given, 1, B_ROUTE, false, iters));
    printf("route+limit, percentage_split+token_budget: %7.1f   (target < 2000)\n",
           bench(gw, 2, B_ROUTE_LIMIT, true, iters));
    printf("on_response, fallback_chain (200, 80 B):   %8.1f\n",
           bench(fb, 1, B_ON_RESPONSE, true, iters));
    printf("on_error, retry_backoff+fallback_chain:    %8.1f\n",
           bench(rt, 2, B_ON_ERROR, true, iters));
    return 0;
}
