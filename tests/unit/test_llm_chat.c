/*
 * Unit tests for chat templates (plugins/llama/llm_chat.c, compiled in here
 * with the tokenizer so the golden ids can be checked too).
 *
 * Templates of the families llm_chat.h lists (SmolLM2's from the model file,
 * Qwen2.5's, Llama 3's, TinyLlama's and StableLM's Zephyr) are detected and
 * rendered; the expected strings were rendered by jinja2 (trim_blocks,
 * lstrip_blocks, as transformers' apply_chat_template), without Llama 3's
 * bos_token, which the tokenizer adds. Other families and garbage are
 * refused with a reason; mutated templates never crash. The golden
 * conversations in tests/data/golden/smollm2_chat.json are rendered and
 * tokenized and compared when the file and the model are present.
 */
#include "../../plugins/llama/gguf.c"
#include "../../plugins/llama/llm_chat.c"
#include "../../plugins/llama/llm_tok.c"

#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef OUTPOST_MODELS_DIR
#define OUTPOST_MODELS_DIR "models"
#endif
#ifndef OUTPOST_SOURCE_DIR
#define OUTPOST_SOURCE_DIR "."
#endif
#define SMOLLM2 OUTPOST_MODELS_DIR "/SmolLM2-135M-Instruct.Q4_1.gguf"
#define GOLDEN_CHAT OUTPOST_SOURCE_DIR "/tests/data/golden/smollm2_chat.json"

#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#else
#define SANITIZED 0
#endif

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* ========================================================================
 * Templates
 * ======================================================================== */

/* SmolLM2-135M-Instruct's tokenizer.chat_template. */
static const char T_SMOLLM2[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n"
    "' + message['content'] + '<|im_end|>' + '\n"
    "'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n"
    "' }}{% endif %}";

/* Qwen2.5-Instruct's (tools branch and all). */
static const char T_QWEN25[] =
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n"
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n"
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n"
    "            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n"
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
    "";

/* Llama 3 Instruct's. */
static const char T_LLAMA3[] =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

/* TinyLlama-1.1B-Chat-v1.0's. */
static const char T_TINYLLAMA[] =
    "{% for message in messages %}\n"
    "{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n"
    "' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n"
    "' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n"
    "'  + message['content'] + eos_token }}\n"
    "{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n"
    "{% endif %}\n"
    "{% endfor %}";

/* Zephyr with <|endoftext|> written out (as llama.cpp's zephyr renders). */
static const char T_STABLELM[] =
    "{% for message in messages %}{% if message['role'] == 'user' %}{{'<|user|>\n' + "
    "message['content'] + '<|endoftext|>' + '\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|endoftext|>' + '\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}";

/* Plain ChatML: no default system prompt. */
static const char T_CHATML[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' "
    "}}{% endif %}";

/* A ChatML template whose default prompt is written with escapes, in double
 * quotes, after a comment and raw text that must not be taken for it. */
static const char T_ESCAPED[] =
    "{# '<|im_start|>system\\nNot me<|im_end|>' #}Raw 'text' here\n"
    "{% if messages[0]['role'] != 'system' %}{{- \"<|im_start|>system\\nSay \\\"hi\\\"\\tnow<|im_end|>\\n\" }}{% endif %}"
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}";

/* Unsupported families. */
static const char T_PHI3[] =
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + "
    "message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + "
    "message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' "
    "+ message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}";
static const char T_PHI4[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '<|im_sep|>' + "
    "message['content'] + '<|im_end|>'}}{% endfor %}";
static const char T_MISTRAL[] =
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + "
    "message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token}}{% endif %}{% endfor %}";
static const char T_GEMMA[] =
    "{% for message in messages %}{{ '<start_of_turn>' + message['role'] + '\\n' + "
    "message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}";

typedef struct chat_case {
    const char *tmpl;
    llm_chat_kind kind;
    const char *default_system; /* NULL: none */
} chat_case;

static const chat_case detect_cases[] = {
    {T_SMOLLM2, LLM_CHAT_CHATML, "You are a helpful AI assistant named SmolLM, trained by Hugging Face"},
    {T_QWEN25, LLM_CHAT_CHATML, "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."},
    {T_CHATML, LLM_CHAT_CHATML, NULL},
    {T_ESCAPED, LLM_CHAT_CHATML, "Say \"hi\"\tnow"},
    {T_LLAMA3, LLM_CHAT_LLAMA3, NULL},
    {T_TINYLLAMA, LLM_CHAT_ZEPHYR, NULL},
    {T_STABLELM, LLM_CHAT_ZEPHYR, NULL},
};

static llm_chat *detect_ok(const char *tmpl)
{
    llm_chat *c = NULL;
    char err[256] = "";
    cr_assert_eq(llm_chat_detect(tmpl, strlen(tmpl), &c, err, sizeof err), 0, "%s", err);
    cr_assert_not_null(c);
    return c;
}

Test(chat, detect_families)
{
    for (size_t i = 0; i < COUNT(detect_cases); i++) {
        llm_chat *c = detect_ok(detect_cases[i].tmpl);
        cr_expect_eq(llm_chat_get_kind(c), detect_cases[i].kind, "case %zu", i);
        const char *want = detect_cases[i].default_system;
        if (want) {
            cr_expect(c->default_system && c->default_system_len == strlen(want) &&
                          memcmp(c->default_system, want, strlen(want)) == 0,
                      "case %zu: default system \"%s\", want \"%s\"", i,
                      c->default_system ? c->default_system : "(none)", want);
        } else {
            cr_expect_null(c->default_system, "case %zu: default system \"%s\"", i, c->default_system);
        }
        llm_chat_free(c);
    }
}

typedef struct refuse_case {
    const char *tmpl;
    size_t len; /* 0: strlen */
    const char *want;
} refuse_case;

Test(chat, refuse_unknown_families)
{
    static const refuse_case cases[] = {
        {T_PHI3, 0, "'<|user|>' with '<|end|>' (Phi-3 style), which is not supported"},
        {T_PHI4, 0, "'<|im_start|>' with '<|im_sep|>' (Phi-4 style), which is not supported"},
        {T_MISTRAL, 0, "chat template not recognised: looked for ChatML ('<|im_start|>'), Llama 3"},
        {T_GEMMA, 0, "chat template not recognised"},
        {"", 0, "chat template not recognised"},
        {"\0\0\xFF<|im_st", 8, "chat template not recognised"},
        {"<|start_header_id|> only", 0, "chat template not recognised"},
    };
    for (size_t i = 0; i < COUNT(cases); i++) {
        llm_chat *c = (llm_chat *)1;
        char err[512] = "";
        size_t len = cases[i].len ? cases[i].len : strlen(cases[i].tmpl);
        cr_expect_eq(llm_chat_detect(cases[i].tmpl, len, &c, err, sizeof err), -1, "case %zu", i);
        cr_expect_null(c);
        cr_expect(strstr(err, cases[i].want) != NULL, "case %zu: \"%s\", want \"%s\"", i, err,
                  cases[i].want);
        cr_expect(strstr(err, "chat_template: none") != NULL, "case %zu: no hint in \"%s\"", i, err);
    }
    llm_chat *c = (llm_chat *)1;
    char err[256];
    cr_assert_eq(llm_chat_detect(NULL, 0, &c, err, sizeof err), -1);
    cr_assert_null(c);
    cr_assert(strstr(err, "no chat template") != NULL, "%s", err);
    /* A tiny err buffer is still NUL-terminated. */
    char tiny[8];
    cr_assert_eq(llm_chat_detect(T_MISTRAL, strlen(T_MISTRAL), &c, tiny, sizeof tiny), -1);
    cr_assert_lt(strlen(tiny), sizeof tiny);
}

Test(chat, none_and_names)
{
    llm_chat *c = llm_chat_none();
    cr_assert_not_null(c);
    cr_assert_eq(llm_chat_get_kind(c), LLM_CHAT_NONE);
    llm_chat_msg m = {"user", "hi", 2};
    char *out = (char *)1, err[256] = "";
    size_t len = 99;
    cr_assert_eq(llm_chat_render(c, &m, 1, &out, &len, err, sizeof err), -1);
    cr_assert_null(out);
    cr_assert(strstr(err, "raw prompt") != NULL, "%s", err);
    llm_chat_free(c);
    llm_chat_free(NULL);
    cr_assert_str_eq(llm_chat_kind_name(LLM_CHAT_NONE), "none");
    cr_assert_str_eq(llm_chat_kind_name(LLM_CHAT_CHATML), "chatml");
    cr_assert_str_eq(llm_chat_kind_name(LLM_CHAT_LLAMA3), "llama3");
    cr_assert_str_eq(llm_chat_kind_name(LLM_CHAT_ZEPHYR), "zephyr");
    cr_assert_str_eq(llm_chat_kind_name((llm_chat_kind)42), "?");
}

/* ========================================================================
 * Rendering
 * ======================================================================== */

#define MSG(r, s) {r, s, sizeof(s) - 1}

static void expect_render(const char *tmpl, const llm_chat_msg *msgs, size_t n, const char *want)
{
    llm_chat *c = detect_ok(tmpl);
    char *out = NULL, err[256] = "";
    size_t len = 0;
    cr_assert_eq(llm_chat_render(c, msgs, n, &out, &len, err, sizeof err), 0, "%s", err);
    cr_expect_eq(len, strlen(want), "rendered %zu bytes, want %zu:\n%s\nwant:\n%s", len,
                 strlen(want), out, want);
    cr_expect_str_eq(out, want);
    cr_expect_eq(out[len], '\0');
    free(out);
    llm_chat_free(c);
}

static const llm_chat_msg conv_user[] = {MSG("user", "Hello!")};
static const llm_chat_msg conv_sys[] = {MSG("system", "Be brief."), MSG("user", "Hi"),
                                        MSG("assistant", "Hello."), MSG("user", "Bye")};
static const llm_chat_msg conv_late_sys[] = {MSG("user", "Hi"), MSG("system", "Late.")};
static const llm_chat_msg conv_ws[] = {MSG("system", "  \n spaced \t"),
                                       MSG("user", "\xE3\x80\x80wide\xC2\xA0"),
                                       MSG("user", "\x1C" "fs\x1F")};

Test(render, chatml_default_system)
{
    /* The default system turn comes first unless the first message is one. */
    expect_render(T_SMOLLM2, conv_user, 1,
                  "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                  "Hugging Face<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n"
                  "<|im_start|>assistant\n");
    expect_render(T_SMOLLM2, conv_sys, 4,
                  "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                  "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
                  "<|im_start|>assistant\n");
    expect_render(T_SMOLLM2, conv_late_sys, 2,
                  "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                  "Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                  "<|im_start|>system\nLate.<|im_end|>\n<|im_start|>assistant\n");
    expect_render(T_QWEN25, conv_user, 1,
                  "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                  "assistant.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n"
                  "<|im_start|>assistant\n");
    expect_render(T_CHATML, conv_user, 1,
                  "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n");
    /* Content is not trimmed in ChatML. */
    expect_render(T_CHATML, conv_ws, 3,
                  "<|im_start|>system\n  \n spaced \t<|im_end|>\n"
                  "<|im_start|>user\n\xE3\x80\x80wide\xC2\xA0<|im_end|>\n"
                  "<|im_start|>user\n\x1C" "fs\x1F<|im_end|>\n<|im_start|>assistant\n");
}

Test(render, llama3_trims)
{
    expect_render(T_LLAMA3, conv_sys, 4,
                  "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                  "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
                  "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\n");
    /* Jinja's trim is Python's strip(): Unicode spaces and U+001C..U+001F. */
    expect_render(T_LLAMA3, conv_ws, 3,
                  "<|start_header_id|>system<|end_header_id|>\n\nspaced<|eot_id|>"
                  "<|start_header_id|>user<|end_header_id|>\n\nwide<|eot_id|>"
                  "<|start_header_id|>user<|end_header_id|>\n\nfs<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\n");
    static const llm_chat_msg blank[] = {MSG("user", " \n\t "), MSG("user", "a \xFF ")};
    expect_render(T_LLAMA3, blank, 2,
                  "<|start_header_id|>user<|end_header_id|>\n\n<|eot_id|>"
                  "<|start_header_id|>user<|end_header_id|>\n\na \xFF<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

Test(render, zephyr)
{
    expect_render(T_TINYLLAMA, conv_sys, 4,
                  "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello.</s>\n"
                  "<|user|>\nBye</s>\n<|assistant|>\n");
    expect_render(T_STABLELM, conv_user, 1,
                  "<|user|>\nHello!<|endoftext|>\n<|assistant|>\n");
}

Test(render, errors_and_edges)
{
    llm_chat *c = detect_ok(T_SMOLLM2);
    char *out = (char *)1, err[256] = "";
    size_t len = 5;
    cr_assert_eq(llm_chat_render(c, NULL, 0, &out, &len, err, sizeof err), -1);
    cr_assert_null(out);
    cr_assert_eq(len, 0);
    cr_assert(strstr(err, "no messages") != NULL, "%s", err);
    llm_chat_msg bad[] = {{NULL, "x", 1}};
    cr_assert_eq(llm_chat_render(c, bad, 1, &out, &len, err, sizeof err), -1);
    cr_assert(strstr(err, "message 0") != NULL, "%s", err);
    llm_chat_msg nocontent[] = {{"user", NULL, 3}};
    cr_assert_eq(llm_chat_render(c, nocontent, 1, &out, &len, err, sizeof err), -1);
    /* NULL content of length 0 is an empty message; embedded NULs are kept. */
    llm_chat_msg empty[] = {{"user", NULL, 0}, {"assistant", "a\0b", 3}};
    cr_assert_eq(llm_chat_render(c, empty, 2, &out, &len, err, sizeof err), 0, "%s", err);
    static const char want[] = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
                               "trained by Hugging Face<|im_end|>\n<|im_start|>user\n<|im_end|>\n"
                               "<|im_start|>assistant\na\0b<|im_end|>\n<|im_start|>assistant\n";
    cr_assert_eq(len, sizeof want - 1);
    cr_assert_eq(memcmp(out, want, len), 0);
    free(out);
    /* A long conversation. */
    size_t n = 2000;
    llm_chat_msg *many = calloc(n, sizeof *many);
    for (size_t i = 0; i < n; i++)
        many[i] = (llm_chat_msg){i % 2 ? "assistant" : "user", "0123456789", 10};
    cr_assert_eq(llm_chat_render(c, many, n, &out, &len, err, sizeof err), 0);
    cr_assert_eq(len, strlen(out));
    free(out);
    free(many);
    llm_chat_free(c);
}

/* Mutated templates (byte flips, cuts), each ending at an unreadable page:
 * detect and render may refuse, never crash or over-read. */
Test(chat, mutations_never_crash)
{
    static const char *const bases[] = {T_SMOLLM2, T_QWEN25, T_LLAMA3, T_TINYLLAMA, T_ESCAPED};
    size_t page = (size_t)sysconf(_SC_PAGESIZE), span = 4 * page;
    uint8_t *map = mmap(NULL, span + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(map, MAP_FAILED);
    cr_assert_eq(mprotect(map + span, page, PROT_NONE), 0);
    uint64_t rng = 0x9E3779B97F4A7C15ull;
    unsigned ok = 0, refused = 0, iters = SANITIZED ? 5000 : 50000;
    static const char pick[] = "{}%#'\"\\<|>\n ";
    for (unsigned it = 0; it < iters; it++) {
        const char *b = bases[it % COUNT(bases)];
        size_t len = strlen(b);
        cr_assert_leq(len, span);
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        size_t cut = (size_t)(rng % (len + 1)); /* keep a prefix */
        if (it % 3 == 0)
            cut = len;
        char *p = (char *)map + span - cut;
        memcpy(p, b, cut);
        for (unsigned k = 0; k < 1 + it % 5 && cut > 0; k++) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            p[rng % cut] = (rng >> 40) & 1 ? pick[(rng >> 20) % (sizeof pick - 1)] : (char)(rng >> 32);
        }
        llm_chat *c;
        char err[256];
        if (llm_chat_detect(p, cut, &c, err, sizeof err) != 0) {
            refused++;
            continue;
        }
        ok++;
        char *out;
        size_t ol;
        cr_assert_eq(llm_chat_render(c, conv_sys, 4, &out, &ol, err, sizeof err), 0);
        free(out);
        llm_chat_free(c);
    }
    cr_log_info("template mutations: %u detected, %u refused", ok, refused);
    cr_assert_gt(ok, 0);
    cr_assert_gt(refused, 0);
    munmap(map, span + page);
}

/* ========================================================================
 * Golden conversations (SmolLM2)
 * ======================================================================== */

Test(golden, smollm2_chat)
{
    if (access(SMOLLM2, R_OK) != 0)
        cr_skip_test("%s not present (make models fetches it)", SMOLLM2);
    json_error_t je;
    json_t *root = json_load_file(GOLDEN_CHAT, 0, &je);
    if (!root)
        cr_skip_test("%s not present yet (scripts/golden makes it)", GOLDEN_CHAT);

    char err[256];
    gguf_file *g;
    llm_vocab *v;
    cr_assert_eq(gguf_open(SMOLLM2, &g, err, sizeof err), 0, "%s", err);
    cr_assert_eq(llm_vocab_load(g, &v, err, sizeof err), 0, "%s", err);
    const char *tmpl;
    size_t tlen;
    cr_assert_eq(gguf_get_str(g, "tokenizer.chat_template", &tmpl, &tlen), GGUF_OK);
    /* The golden file was made from this very template. */
    json_t *jt = json_object_get(root, "chat_template");
    cr_assert(json_is_string(jt));
    cr_assert(json_string_length(jt) == tlen && memcmp(json_string_value(jt), tmpl, tlen) == 0);
    llm_chat *c;
    cr_assert_eq(llm_chat_detect(tmpl, tlen, &c, err, sizeof err), 0, "%s", err);
    cr_assert_eq(llm_chat_get_kind(c), LLM_CHAT_CHATML);

    json_t *cases = json_object_get(root, "cases");
    cr_assert(json_array_size(cases) > 0);
    size_t i;
    json_t *cs;
    json_array_foreach(cases, i, cs) {
        const char *name = json_string_value(json_object_get(cs, "name"));
        json_t *jm = json_object_get(cs, "messages");
        size_t n = json_array_size(jm);
        llm_chat_msg *msgs = calloc(n ? n : 1, sizeof *msgs);
        for (size_t k = 0; k < n; k++) {
            json_t *m = json_array_get(jm, k);
            json_t *content = json_object_get(m, "content");
            msgs[k].role = json_string_value(json_object_get(m, "role"));
            msgs[k].content = json_string_value(content);
            msgs[k].content_len = json_string_length(content);
        }
        char *out = NULL;
        size_t ol = 0;
        cr_assert_eq(llm_chat_render(c, msgs, n, &out, &ol, err, sizeof err), 0, "%s: %s", name, err);
        json_t *want = json_object_get(cs, "rendered");
        cr_expect(ol == json_string_length(want) && memcmp(out, json_string_value(want), ol) == 0,
                  "golden chat '%s': rendered\n%s\nwant\n%s", name, out, json_string_value(want));
        json_t *wids = json_object_get(cs, "ids");
        if (wids) {
            int32_t *ids = NULL;
            size_t nid = 0, cap = 0;
            cr_assert_eq(llm_tokenize(v, out, ol, true, &ids, &nid, &cap), 0);
            size_t wn = json_array_size(wids), k = 0;
            while (k < nid && k < wn && ids[k] == (int32_t)json_integer_value(json_array_get(wids, k)))
                k++;
            cr_expect(k == nid && nid == wn, "golden chat '%s': %zu ids, want %zu; first difference at [%zu]",
                      name, nid, wn, k);
            free(ids);
        }
        free(out);
        free(msgs);
    }
    cr_log_info("golden chat: %zu conversations", json_array_size(cases));
    llm_chat_free(c);
    llm_vocab_free(v);
    gguf_close(g);
    json_decref(root);
}
