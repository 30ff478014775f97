/*
 * Unit tests for plugins/llama/llm_req: the text-generation input, parsed
 * and validated with messages that tell the client what to fix.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "llm_req.h"

static void ok(const char *body, llm_req_spec *s)
{
    char err[256] = "";
    cr_assert_eq(llm_req_parse(body, strlen(body), s, err, sizeof err), 0, "%s: %s", body, err);
}

static void bad(const char *body, const char *want)
{
    llm_req_spec s;
    char err[256] = "";
    cr_assert_eq(llm_req_parse(body, strlen(body), &s, err, sizeof err), -1, "accepted: %s", body);
    cr_assert(strstr(err, want), "%s: message '%s' lacks '%s'", body, err, want);
}

Test(llm_req, defaults_are_workers_ai_defaults)
{
    llm_req_spec s;
    ok("{\"prompt\":\"hi\"}", &s);
    cr_assert_str_eq(s.prompt, "hi");
    cr_assert_eq(s.max_tokens, 0);
    cr_assert_float_eq(s.sampling.temperature, 0.6f, 1e-6);
    cr_assert_float_eq(s.sampling.top_p, 1.0f, 1e-6);
    cr_assert_eq(s.sampling.top_k, 0);
    cr_assert_float_eq(s.sampling.repetition_penalty, 1.0f, 1e-6);
    cr_assert_not(s.sampling.has_seed);
    cr_assert_not(s.raw);
    cr_assert_not(s.stream);
    cr_assert_eq(s.n_stop, 0);
    llm_req_free(&s);
}

Test(llm_req, every_field)
{
    llm_req_spec s;
    ok("{\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},"
       "{\"role\":\"user\",\"content\":\"h\\u00e9llo\"}],\"max_tokens\":12,\"temperature\":0,"
       "\"top_p\":0.9,\"top_k\":40,\"seed\":7,\"repetition_penalty\":1.1,"
       "\"frequency_penalty\":-0.5,\"presence_penalty\":0.5,\"stop\":[\"\\n\\n\",\"END\"],"
       "\"stream\":true,\"ignore_eos\":true,\"user\":\"ignored\"}",
       &s);
    cr_assert_eq(s.n_msgs, 2);
    cr_assert_str_eq(s.msgs[0].role, "system");
    cr_assert_str_eq(s.msgs[1].content, "h\xc3\xa9llo");
    cr_assert_eq(s.msgs[1].content_len, 6);
    cr_assert_eq(s.max_tokens, 12);
    cr_assert_float_eq(s.sampling.temperature, 0.0f, 1e-9);
    cr_assert_float_eq(s.sampling.top_p, 0.9f, 1e-6);
    cr_assert_eq(s.sampling.top_k, 40);
    cr_assert(s.sampling.has_seed);
    cr_assert_eq(s.sampling.seed, 7);
    cr_assert_float_eq(s.sampling.repetition_penalty, 1.1f, 1e-6);
    cr_assert_float_eq(s.sampling.frequency_penalty, -0.5f, 1e-6);
    cr_assert_float_eq(s.sampling.presence_penalty, 0.5f, 1e-6);
    cr_assert_eq(s.n_stop, 2);
    cr_assert_str_eq(s.stop[0], "\n\n");
    cr_assert_str_eq(s.stop[1], "END");
    cr_assert(s.stream && s.ignore_eos);
    llm_req_free(&s);
}

Test(llm_req, edge_values)
{
    llm_req_spec s;
    ok("{\"prompt\":\"x\",\"top_p\":0,\"stop\":\"one\",\"max_tokens\":5.0,\"raw\":true}", &s);
    cr_assert_eq(s.sampling.top_k, 1, "top_p 0 means the most likely token only");
    cr_assert_eq(s.n_stop, 1);
    cr_assert_eq(s.max_tokens, 5, "an integral real is an integer");
    cr_assert(s.raw);
    llm_req_free(&s);
    ok("{\"prompt\":\"x\",\"top_p\":1.7,\"stop\":[\"\"]}", &s);
    cr_assert_float_eq(s.sampling.top_p, 1.0f, 1e-6);
    cr_assert_eq(s.n_stop, 0, "empty stop strings are dropped");
    llm_req_free(&s);
    ok("{\"prompt\":\"\",\"n\":1,\"tools\":[],\"logprobs\":false,\"temperature\":null}", &s);
    llm_req_free(&s);
}

Test(llm_req, bad_input_says_what_is_wrong)
{
    bad("[]", "JSON object");
    bad("{\"prompt\": ", "JSON object");
    bad("{}", "'prompt' or 'messages' is required");
    bad("{\"prompt\":\"a\",\"messages\":[{\"role\":\"user\",\"content\":\"b\"}]}", "not both");
    bad("{\"prompt\":42}", "'prompt' must be a string");
    bad("{\"messages\":[]}", "non-empty array");
    bad("{\"messages\":{}}", "non-empty array");
    bad("{\"messages\":[{\"content\":\"x\"}]}", "messages[0]");
    bad("{\"messages\":[{\"role\":\"user\",\"content\":[1]}]}", "messages[0].content");
    bad("{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"\",\"content\":\"b\"}]}",
        "messages[1]");
    bad("{\"prompt\":\"a\",\"max_tokens\":0}", "'max_tokens' must be an integer");
    bad("{\"prompt\":\"a\",\"max_tokens\":1.5}", "'max_tokens'");
    bad("{\"prompt\":\"a\",\"max_tokens\":\"10\"}", "'max_tokens'");
    bad("{\"prompt\":\"a\",\"temperature\":6}", "'temperature' must be a number from 0 to 5");
    bad("{\"prompt\":\"a\",\"temperature\":-0.1}", "'temperature'");
    bad("{\"prompt\":\"a\",\"top_p\":3}", "'top_p'");
    bad("{\"prompt\":\"a\",\"top_k\":-1}", "'top_k'");
    bad("{\"prompt\":\"a\",\"seed\":-5}", "'seed'");
    bad("{\"prompt\":\"a\",\"repetition_penalty\":0}", "'repetition_penalty'");
    bad("{\"prompt\":\"a\",\"repetition_penalty\":3}", "'repetition_penalty'");
    bad("{\"prompt\":\"a\",\"frequency_penalty\":2.5}", "'frequency_penalty'");
    bad("{\"prompt\":\"a\",\"presence_penalty\":\"x\"}", "'presence_penalty'");
    bad("{\"prompt\":\"a\",\"stop\":5}", "'stop' must be a string or an array");
    bad("{\"prompt\":\"a\",\"stop\":[\"a\",7]}", "'stop'");
    bad("{\"prompt\":\"a\",\"stop\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\",\"10\","
        "\"11\",\"12\",\"13\",\"14\",\"15\",\"16\",\"17\"]}",
        "at most 16");
    bad("{\"prompt\":\"a\",\"stream\":\"yes\"}", "'stream' must be true or false");
    bad("{\"prompt\":\"a\",\"tools\":[{\"type\":\"function\"}]}", "'tools' is not supported");
    bad("{\"prompt\":\"a\",\"response_format\":{\"type\":\"json_object\"}}", "'response_format'");
    bad("{\"prompt\":\"a\",\"n\":2}", "'n' must be 1");
    bad("{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"raw\":true}", "'raw'");
}

Test(llm_req, long_stop_string_is_refused)
{
    char body[1024];
    char stop[300];
    memset(stop, 'x', 299);
    stop[299] = '\0';
    snprintf(body, sizeof body, "{\"prompt\":\"a\",\"stop\":\"%s\"}", stop);
    bad(body, "at most 256");
}
