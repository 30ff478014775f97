/*
 * op_openai: the translation between OpenAI's request/response shapes and
 * the Workers AI input/result, as pure functions: what each request becomes,
 * what is refused and how (status, param, code), how plugin results of every
 * shape (usage or not, finish_reason or not, malformed) are answered, stream
 * chunks, base64 embeddings and the error object.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <string.h>

#include "api/op_openai.h"

static json_t *J(const char *text)
{
    json_error_t e;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &e);
    cr_assert_not_null(j, "bad test JSON (%s): %s", e.text, text);
    return j;
}

static char *dump(json_t *j)
{
    return json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
}

/* Translates body; expects success and that the result equals want. */
static void expect_translation(op_openai_kind kind, const char *body, const char *want,
                               op_openai_req *req)
{
    json_t *in = J(body);
    op_openai_error err;
    json_t *out = op_openai_translate(kind, in, req, &err);
    cr_assert_not_null(out, "%s refused: %d %s (%s)", body, err.status, err.message, err.param);
    json_t *w = J(want);
    char *got = dump(out), *ws = dump(w);
    cr_assert(json_equal(out, w), "%s\n became %s\n want   %s", body, got, ws);
    free(got);
    free(ws);
    json_decref(w);
    json_decref(out);
    json_decref(in);
}

static void expect_refusal(op_openai_kind kind, const char *body, const char *param,
                           const char *code, const char *message_part)
{
    json_t *in = J(body);
    op_openai_req req;
    op_openai_error err;
    json_t *out = op_openai_translate(kind, in, &req, &err);
    cr_assert_null(out, "%s was accepted", body);
    cr_assert_eq(err.status, 400, "%s", body);
    cr_assert_str_eq(err.param, param ? param : "", "%s: %s", body, err.message);
    if (code)
        cr_assert_str_eq(err.code, code, "%s: %s", body, err.message);
    else
        cr_assert_null(err.code, "%s", body);
    if (message_part)
        cr_assert(strstr(err.message, message_part), "'%s' not in '%s'", message_part,
                  err.message);
    json_decref(in);
}

Test(openai_translate, chat_fields_map_to_workers_ai_names)
{
    op_openai_req req;
    expect_translation(OP_OPENAI_CHAT,
                       "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
                       "\"temperature\":1,\"top_p\":0,\"max_tokens\":5,\"stop\":null,\"seed\":null,"
                       "\"n\":null,\"stream\":false,\"user\":null,\"parallel_tool_calls\":false}",
                       "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"temperature\":1.0,"
                       "\"top_p\":0.0,\"max_tokens\":5}",
                       &req);
    cr_assert_str_eq(req.model, "m");
    cr_assert_not(req.stream);
    cr_assert_eq(strncmp(req.id, "chatcmpl-", 9), 0);
    cr_assert_gt(req.created, 0);

    expect_translation(OP_OPENAI_CHAT,
                       "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":true},"
                       "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stop\":[]}",
                       "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream\":true}",
                       &req);
    cr_assert(req.stream && req.include_usage);
    expect_translation(OP_OPENAI_CHAT,
                       "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":null},"
                       "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
                       "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream\":true}",
                       &req);
    cr_assert_not(req.include_usage);
}

Test(openai_translate, completions_are_raw_with_openais_default_length)
{
    op_openai_req req;
    expect_translation(OP_OPENAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"p\"}",
                       "{\"prompt\":\"p\",\"raw\":true,\"max_tokens\":16}", &req);
    cr_assert_eq(strncmp(req.id, "cmpl-", 5), 0);
    expect_translation(OP_OPENAI_COMPLETIONS,
                       "{\"model\":\"m\",\"prompt\":[\"p\"],\"max_tokens\":300,\"ignore_eos\":true,"
                       "\"top_k\":0,\"repetition_penalty\":2}",
                       "{\"prompt\":\"p\",\"raw\":true,\"max_tokens\":300,\"ignore_eos\":true,"
                       "\"top_k\":0,\"repetition_penalty\":2.0}",
                       &req);
    /* max_completion_tokens is a chat parameter only. */
    expect_refusal(OP_OPENAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"p\",\"max_completion_tokens\":3}",
                   "max_completion_tokens", "unknown_parameter", NULL);
}

Test(openai_translate, embeddings_always_send_a_list_of_texts)
{
    op_openai_req req;
    expect_translation(OP_OPENAI_EMBEDDINGS, "{\"model\":\"m\",\"input\":\"one\"}",
                       "{\"text\":[\"one\"]}", &req);
    cr_assert_not(req.base64);
    cr_assert_eq(req.dimensions, 0);
    expect_translation(OP_OPENAI_EMBEDDINGS,
                       "{\"model\":\"m\",\"input\":[\"a\",\"\"],\"encoding_format\":\"base64\","
                       "\"dimensions\":384}",
                       "{\"text\":[\"a\",\"\"]}", &req);
    cr_assert(req.base64);
    cr_assert_eq(req.dimensions, 384);
}

Test(openai_translate, refusals_name_the_parameter)
{
    expect_refusal(OP_OPENAI_CHAT, "[]", NULL, "invalid_type", "JSON object");
    expect_refusal(OP_OPENAI_CHAT, "{\"messages\":[]}", "model", "missing_required_parameter",
                   "'model'");
    expect_refusal(OP_OPENAI_CHAT, "{\"model\":\"\",\"messages\":[]}", "model", "invalid_value",
                   NULL);
    expect_refusal(OP_OPENAI_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                                   "\"temperature\":2.5}",
                   "temperature", "invalid_value", "2.5");
    expect_refusal(OP_OPENAI_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                                   "\"seed\":-1}",
                   "seed", "invalid_value", NULL);
    expect_refusal(OP_OPENAI_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                                   "\"presence_penalty\":-3}",
                   "presence_penalty", "invalid_value", NULL);
    expect_refusal(OP_OPENAI_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                                   "\"n\":2}",
                   "n", "unsupported_parameter", "'n' must be 1");
    expect_refusal(OP_OPENAI_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                                   "\"n\":\"2\"}",
                   "n", "invalid_type", NULL);
    expect_refusal(OP_OPENAI_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                                   "\"modalities\":[\"text\",\"audio\"]}",
                   "modalities", "unsupported_parameter", NULL);
    expect_refusal(OP_OPENAI_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                                   "\"audio\":{}}",
                   "audio", "unsupported_parameter", NULL);
    expect_refusal(OP_OPENAI_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                                   "\"functions\":[{\"name\":\"f\"}]}",
                   "functions", "unsupported_parameter", NULL);
    expect_refusal(OP_OPENAI_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                                   "\"stream\":true,\"stream_options\":{\"include_usage\":true,\"x\":1}}",
                   "stream_options", "unknown_parameter", NULL);
    expect_refusal(OP_OPENAI_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\"}]}",
                   "messages[0].content", "missing_required_parameter", NULL);
    expect_refusal(OP_OPENAI_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[]}]}",
                   "messages[0].content", "invalid_value", NULL);
    expect_refusal(OP_OPENAI_CHAT,
                   "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[\"text\"]}]}",
                   "messages[0].content[0]", "invalid_type", NULL);
    expect_refusal(OP_OPENAI_CHAT,
                   "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"input_audio\"}]}]}",
                   "messages[0].content[0]", "unsupported_value", "input_audio");
    expect_refusal(OP_OPENAI_CHAT, "{\"model\":\"m\",\"messages\":[1]}", "messages[0]",
                   "invalid_type", NULL);
    expect_refusal(OP_OPENAI_EMBEDDINGS, "{\"model\":\"m\",\"input\":7}", "input", "invalid_type",
                   NULL);
    expect_refusal(OP_OPENAI_EMBEDDINGS, "{\"model\":\"m\",\"input\":\"x\",\"dimensions\":\"4\"}",
                   "dimensions", "invalid_type", NULL);
    expect_refusal(OP_OPENAI_EMBEDDINGS, "{\"model\":\"m\",\"input\":\"x\",\"temperature\":1}",
                   "temperature", "unknown_parameter", NULL);
}

Test(openai_translate, too_many_inputs_and_a_model_id_too_long)
{
    json_t *in = json_pack("{s:s, s:[]}", "model", "m", "input");
    for (int i = 0; i <= OP_OPENAI_MAX_INPUTS; i++)
        json_array_append_new(json_object_get(in, "input"), json_string("t"));
    op_openai_req req;
    op_openai_error err;
    cr_assert_null(op_openai_translate(OP_OPENAI_EMBEDDINGS, in, &req, &err));
    cr_assert_str_eq(err.param, "input");
    json_decref(in);

    char id[OP_OPENAI_MODEL_MAX + 1];
    memset(id, 'm', sizeof id - 1);
    id[sizeof id - 1] = '\0';
    in = json_pack("{s:s, s:s}", "model", id, "input", "x");
    cr_assert_null(op_openai_translate(OP_OPENAI_EMBEDDINGS, in, &req, &err));
    cr_assert_str_eq(err.param, "model");
    json_decref(in);
}

static op_openai_req chat_req(op_openai_kind kind)
{
    op_openai_req r;
    memset(&r, 0, sizeof r);
    r.kind = kind;
    snprintf(r.model, sizeof r.model, "alias/x");
    snprintf(r.id, sizeof r.id, "chatcmpl-1");
    r.created = 1700000000;
    return r;
}

Test(openai_translate, responses_default_what_the_plugin_leaves_out)
{
    op_openai_req req = chat_req(OP_OPENAI_CHAT);
    op_openai_error err;
    json_t *res = J("{\"response\":\"hi\"}");
    json_t *out = op_openai_response(&req, res, &err);
    json_t *want = J("{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"created\":1700000000,"
                     "\"model\":\"alias/x\",\"choices\":[{\"index\":0,\"message\":{\"role\":"
                     "\"assistant\",\"content\":\"hi\"},\"finish_reason\":\"stop\",\"logprobs\":null}],"
                     "\"usage\":{\"prompt_tokens\":0,\"completion_tokens\":0,\"total_tokens\":0}}");
    char *g = dump(out);
    cr_assert(json_equal(out, want), "%s", g);
    free(g);
    json_decref(out);
    json_decref(want);
    json_decref(res);

    /* total_tokens is at least the sum; finish_reason passes through. */
    res = J("{\"response\":\"\",\"finish_reason\":\"length\",\"usage\":{\"prompt_tokens\":4,"
            "\"completion_tokens\":3}}");
    req.kind = OP_OPENAI_COMPLETIONS;
    out = op_openai_response(&req, res, &err);
    cr_assert_str_eq(json_string_value(json_object_get(out, "object")), "text_completion");
    json_t *c0 = json_array_get(json_object_get(out, "choices"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(c0, "finish_reason")), "length");
    cr_assert_str_eq(json_string_value(json_object_get(c0, "text")), "");
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(out, "usage"), "total_tokens")), 7);
    json_decref(out);
    json_decref(res);
}

Test(openai_translate, malformed_plugin_results_are_server_errors)
{
    op_openai_req chat = chat_req(OP_OPENAI_CHAT), emb = chat_req(OP_OPENAI_EMBEDDINGS);
    const char *bad_chat[] = {"[]", "{\"response\":3}", "{}", "\"text\""};
    const char *bad_emb[] = {"{}", "{\"data\":[[1,\"x\"]]}", "{\"data\":[[]]}", "{\"data\":[3]}"};
    for (size_t i = 0; i < 4; i++) {
        op_openai_error err;
        json_t *r = J(bad_chat[i]);
        cr_assert_null(op_openai_response(&chat, r, &err), "%s", bad_chat[i]);
        cr_assert_eq(err.status, 500);
        json_decref(r);
        r = J(bad_emb[i]);
        cr_assert_null(op_openai_response(&emb, r, &err), "%s", bad_emb[i]);
        cr_assert_eq(err.status, 500);
        json_decref(r);
    }
}

Test(openai_translate, embeddings_in_base64_are_little_endian_float32)
{
    op_openai_req req = chat_req(OP_OPENAI_EMBEDDINGS);
    req.base64 = true;
    op_openai_error err;
    json_t *res = J("{\"shape\":[1,2],\"data\":[[1.0,-2]],\"pooling\":\"mean\","
                    "\"usage\":{\"prompt_tokens\":2,\"total_tokens\":2}}");
    json_t *out = op_openai_response(&req, res, &err);
    cr_assert_not_null(out, "%s", err.message);
    /* 1.0f = 00 00 80 3F, -2.0f = 00 00 00 C0 (little-endian). */
    json_t *want = J("{\"object\":\"list\",\"model\":\"alias/x\",\"data\":[{\"object\":\"embedding\","
                     "\"index\":0,\"embedding\":\"AACAPwAAAMA=\"}],"
                     "\"usage\":{\"prompt_tokens\":2,\"total_tokens\":2}}");
    char *g = dump(out);
    cr_assert(json_equal(out, want), "%s", g);
    free(g);
    json_decref(out);
    json_decref(want);

    /* Asked dimensions are checked against what came back. */
    req.base64 = false;
    req.dimensions = 3;
    cr_assert_null(op_openai_response(&req, res, &err));
    cr_assert_eq(err.status, 400);
    cr_assert_str_eq(err.param, "dimensions");
    req.dimensions = 2;
    out = op_openai_response(&req, res, &err);
    cr_assert_not_null(out);
    json_decref(out);
    json_decref(res);
}

Test(openai_translate, base64_matches_rfc4648_vectors)
{
    static const char *in[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *want[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    for (size_t i = 0; i < 7; i++) {
        char out[16];
        size_t n = op_openai_base64((const unsigned char *)in[i], strlen(in[i]), out);
        cr_assert_str_eq(out, want[i]);
        cr_assert_eq(n, strlen(want[i]));
    }
}

Test(openai_translate, stream_chunks)
{
    op_openai_req req = chat_req(OP_OPENAI_CHAT);
    json_t *c = op_openai_chunk_first(&req);
    json_t *want = J("{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,"
                     "\"model\":\"alias/x\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
                     "\"content\":\"\"},\"finish_reason\":null,\"logprobs\":null}]}");
    cr_assert(json_equal(c, want));
    json_decref(c);
    json_decref(want);

    c = op_openai_chunk_piece(&req, "h\xc3\xa9", 3);
    cr_assert_str_eq(json_string_value(json_object_get(
                         json_object_get(json_array_get(json_object_get(c, "choices"), 0), "delta"),
                         "content")),
                     "h\xc3\xa9");
    cr_assert_null(json_object_get(c, "usage"));
    json_decref(c);

    json_t *res = J("{\"response\":\"x\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,"
                    "\"total_tokens\":2}}");
    cr_assert_null(op_openai_chunk_usage(&req, res), "usage chunk without include_usage");
    req.include_usage = true;
    c = op_openai_chunk_final(&req, res);
    want = J("{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,"
             "\"model\":\"alias/x\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\","
             "\"logprobs\":null}],\"usage\":null}");
    char *g = dump(c);
    cr_assert(json_equal(c, want), "%s", g);
    free(g);
    json_decref(c);
    json_decref(want);
    c = op_openai_chunk_usage(&req, res);
    want = J("{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,"
             "\"model\":\"alias/x\",\"choices\":[],\"usage\":{\"prompt_tokens\":1,"
             "\"completion_tokens\":1,\"total_tokens\":2}}");
    cr_assert(json_equal(c, want));
    json_decref(c);
    json_decref(want);

    req.kind = OP_OPENAI_COMPLETIONS;
    cr_assert_null(op_openai_chunk_first(&req), "completions streams have no role chunk");
    c = op_openai_chunk_final(&req, res);
    json_t *c0 = json_array_get(json_object_get(c, "choices"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(c0, "text")), "");
    cr_assert_str_eq(json_string_value(json_object_get(c, "object")), "text_completion");
    json_decref(c);
    json_decref(res);
}

Test(openai_translate, error_objects_and_types)
{
    char *s = op_openai_error_json(400, "bad \"x\"", "temperature", "invalid_value");
    json_t *j = J(s);
    json_t *want = J("{\"error\":{\"message\":\"bad \\\"x\\\"\",\"type\":\"invalid_request_error\","
                     "\"param\":\"temperature\",\"code\":\"invalid_value\"}}");
    cr_assert(json_equal(j, want), "%s", s);
    free(s);
    json_decref(j);
    json_decref(want);
    s = op_openai_error_json(500, NULL, "", NULL);
    cr_assert_str_eq(s, "{\"error\":{\"message\":\"\",\"type\":\"server_error\",\"param\":null,"
                        "\"code\":null}}");
    free(s);
    cr_assert_str_eq(op_openai_error_type(401), "authentication_error");
    cr_assert_str_eq(op_openai_error_type(403), "permission_error");
    cr_assert_str_eq(op_openai_error_type(404), "not_found_error");
    cr_assert_str_eq(op_openai_error_type(413), "invalid_request_error");
    cr_assert_str_eq(op_openai_error_type(429), "rate_limit_error");
    cr_assert_str_eq(op_openai_error_type(503), "service_unavailable_error");
    cr_assert_str_eq(op_openai_error_type(504), "timeout_error");
    cr_assert_str_eq(op_openai_error_type(502), "server_error");
}
