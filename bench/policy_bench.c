/*
 * policy_bench: cost of the Lua route hook per request, as the HTTP workers
 * pay it (warm per-thread state, lazy body, realistic headers).
 *
 *   build/bench/policy_bench [POLICY.lua] [ITERATIONS]
 *
 * Prints ns per call for: no policy, the example pass-through policy, and the
 * given policy (default lua/examples/ab_split.lua, which requires a library
 * module and hashes a header). PRODUCT.md's target: under 2 us per request
 * for routing plus rate limiting.
 */
#include <stdio.h>
#include <stdlib.h>

#include "policy/op_policy.h"
#include "platform/pl_time.h"

static double bench(const char *path, long iters)
{
    char *files[1] = {(char *)path};
    op_config_policy cfg = {.lib_dir = OUTPOST_LUA_DIR, .memory_bytes = 8u << 20,
                            .instructions = 1000000, .files = files, .n_files = path ? 1 : 0};
    op_policy_set *set = NULL;
    char err[512];
    if (op_policy_set_load(&cfg, &set, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }
    static const op_policy_header hdrs[] = {
        {"Host", "127.0.0.1:8787"}, {"User-Agent", "OpenAI/Python 1.54.0"},
        {"Content-Type", "application/json"}, {"Accept", "application/json"},
        {"X-User", "user-1234"}, {"Authorization", "Bearer xyz"}};
    static const char body[] = "{\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}],"
                               "\"max_tokens\":64}";
    op_route_request rq = {.account = "local", .model = "@local/chat", .task = "text-generation",
                           .method = "POST", .path = "/ai/run/@local/chat", .headers = hdrs,
                           .n_headers = 6, .body_json = body, .body_len = sizeof body - 1,
                           .tokens_estimate = 2};
    op_route_decision d;
    for (int i = 0; i < 1000; i++) /* warm the thread's state */
        op_policy_route(set, &rq, &d);
    uint64_t t0 = pl_time_mono_ns();
    for (long i = 0; i < iters; i++)
        if (op_policy_route(set, &rq, &d) != OP_POLICY_OK) {
            fprintf(stderr, "policy failed: %s\n", d.message);
            exit(1);
        }
    uint64_t t1 = pl_time_mono_ns();
    op_policy_thread_cleanup();
    op_policy_set_unref(set);
    return (double)(t1 - t0) / (double)iters;
}

int main(int argc, char **argv)
{
    const char *policy = argc > 1 ? argv[1] : OUTPOST_LUA_DIR "/examples/ab_split.lua";
    long iters = argc > 2 ? atol(argv[2]) : 500000;
    printf("no policy:               %8.1f ns/call\n", bench(NULL, iters));
    printf("examples/route.lua:      %8.1f ns/call\n",
           bench(OUTPOST_LUA_DIR "/examples/route.lua", iters));
    printf("%-24s %8.1f ns/call\n", policy, bench(policy, iters));
    return 0;
}
