/*
 * op_openai.c: see op_openai.h. Three parts: request checks and translation
 * (one table of known parameters per endpoint), responses and stream chunks,
 * and errors.
 */
#include "api/op_openai.h"

#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "platform/pl_time.h"

/* ======================================================================== */
/* Errors                                                                    */
/* ======================================================================== */

const char *op_openai_error_type(int status)
{
    switch (status) {
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 429: return "rate_limit_error";
    case 503: return "service_unavailable_error";
    case 504: return "timeout_error";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

json_t *op_openai_error_object(int status, const char *message, const char *param,
                               const char *code)
{
    return json_pack("{s:{s:s, s:s, s:o, s:o}}", "error", "message", message ? message : "",
                     "type", op_openai_error_type(status), "param",
                     param && *param ? json_string(param) : json_null(), "code",
                     code ? json_string(code) : json_null());
}

char *op_openai_error_json(int status, const char *message, const char *param,
                           const char *code)
{
    json_t *o = op_openai_error_object(status, message, param, code);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return s;
}

static bool fail(op_openai_error *e, const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Records a 400 for param; returns false so checks read `return fail(...)`. */
static bool fail(op_openai_error *e, const char *param, const char *code, const char *fmt, ...)
{
    e->status = 400;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    e->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return false;
}

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "a value";
}

static bool bad_type(op_openai_error *e, const char *param, const char *want, const json_t *v)
{
    return fail(e, param, "invalid_type", "Invalid type for '%s': expected %s, but got %s.",
                param, want, type_name(v));
}

static bool unsupported(op_openai_error *e, const char *param, const char *why)
{
    return fail(e, param, "unsupported_parameter", "Unsupported parameter: '%s' %s.", param, why);
}

/* ======================================================================== */
/* Request parameters                                                        */
/* ======================================================================== */

/* Where a parameter is accepted. */
enum { P_CHAT = 1, P_COMPL = 2, P_EMB = 4, P_GEN = P_CHAT | P_COMPL, P_ALL = 7 };

static const struct {
    const char *name;
    int where;
} KNOWN[] = {
    {"model", P_ALL},
    {"messages", P_CHAT},
    {"prompt", P_COMPL},
    {"input", P_EMB},
    {"encoding_format", P_EMB},
    {"dimensions", P_EMB},
    {"max_tokens", P_GEN},
    {"max_completion_tokens", P_CHAT},
    {"temperature", P_GEN},
    {"top_p", P_GEN},
    {"top_k", P_GEN},
    {"seed", P_GEN},
    {"frequency_penalty", P_GEN},
    {"presence_penalty", P_GEN},
    {"repetition_penalty", P_GEN},
    {"stop", P_GEN},
    {"stream", P_GEN},
    {"stream_options", P_GEN},
    {"n", P_GEN},
    {"ignore_eos", P_GEN},
    {"logprobs", P_GEN},
    {"top_logprobs", P_CHAT},
    {"logit_bias", P_GEN},
    {"response_format", P_CHAT},
    {"tools", P_CHAT},
    {"tool_choice", P_CHAT},
    {"parallel_tool_calls", P_CHAT},
    {"functions", P_CHAT},
    {"function_call", P_CHAT},
    {"modalities", P_CHAT},
    {"audio", P_CHAT},
    {"prediction", P_CHAT},
    {"reasoning_effort", P_CHAT},
    {"web_search_options", P_CHAT},
    {"echo", P_COMPL},
    {"suffix", P_COMPL},
    {"best_of", P_COMPL},
    /* Accepted and ignored: they change nothing in the answer. */
    {"user", P_ALL},
    {"metadata", P_CHAT},
    {"store", P_CHAT},
    {"service_tier", P_GEN},
};

static int where_of(op_openai_kind kind)
{
    return kind == OP_OPENAI_CHAT ? P_CHAT : kind == OP_OPENAI_COMPLETIONS ? P_COMPL : P_EMB;
}

/* The parameter's value, or NULL when absent or null (null means "not
 * given", as in OpenAI's API). */
static json_t *param(json_t *body, const char *name)
{
    json_t *v = json_object_get(body, name);
    return json_is_null(v) ? NULL : v;
}

static bool check_known(json_t *body, op_openai_kind kind, op_openai_error *e)
{
    const char *key;
    json_t *v;
    int where = where_of(kind);
    json_object_foreach(body, key, v)
    {
        bool ok = false;
        for (size_t i = 0; i < sizeof KNOWN / sizeof KNOWN[0] && !ok; i++)
            ok = strcmp(KNOWN[i].name, key) == 0 && (KNOWN[i].where & where);
        if (!ok)
            return fail(e, key, "unknown_parameter", "Unrecognized request argument supplied: %.64s",
                        key);
    }
    return true;
}

/* A number in [lo, hi] (integers accepted), copied to out under name. */
static bool copy_number(json_t *body, json_t *out, const char *name, double lo, double hi,
                        op_openai_error *e)
{
    json_t *v = param(body, name);
    if (!v)
        return true;
    if (!json_is_number(v))
        return bad_type(e, name, "a number", v);
    double d = json_number_value(v);
    if (!isfinite(d) || d < lo || d > hi)
        return fail(e, name, "invalid_value", "Invalid '%s': %g is not between %g and %g.", name,
                    d, lo, hi);
    json_object_set_new(out, name, json_real(d));
    return true;
}

/* An integer >= lo. */
static bool get_int(json_t *body, const char *name, long long lo, long long *out, bool *given,
                    op_openai_error *e)
{
    json_t *v = param(body, name);
    *given = v != NULL;
    if (!v)
        return true;
    if (!json_is_integer(v))
        return bad_type(e, name, "an integer", v);
    long long n = (long long)json_integer_value(v);
    if (n < lo)
        return fail(e, name, "invalid_value", "Invalid '%s': %lld is less than the minimum of %lld.",
                    name, n, lo);
    *out = n;
    return true;
}

static bool get_bool(json_t *body, const char *name, bool *out, op_openai_error *e)
{
    json_t *v = param(body, name);
    if (!v)
        return true;
    if (!json_is_boolean(v))
        return bad_type(e, name, "a boolean", v);
    *out = json_is_true(v);
    return true;
}

/* The model id: required, a non-empty string that fits. */
static bool take_model(json_t *body, op_openai_req *req, op_openai_error *e)
{
    json_t *v = param(body, "model");
    if (!v)
        return fail(e, "model", "missing_required_parameter",
                    "Missing required parameter: 'model'.");
    if (!json_is_string(v))
        return bad_type(e, "model", "a string", v);
    size_t n = json_string_length(v);
    if (n == 0 || n >= sizeof req->model || memchr(json_string_value(v), '\0', n))
        return fail(e, "model", "invalid_value",
                    "Invalid 'model': expected a model id of 1 to %zu bytes.",
                    sizeof req->model - 1);
    memcpy(req->model, json_string_value(v), n + 1);
    return true;
}

/* Parameters that would change the meaning of the answer and that Outpost
 * does not implement: refused, never ignored. A value equal to the default
 * (logprobs false, response_format text, no tools) is accepted. */
static bool check_refused(json_t *body, op_openai_kind kind, op_openai_error *e)
{
    json_t *v;
    if ((v = param(body, "logprobs"))) {
        if (kind == OP_OPENAI_CHAT && !json_is_boolean(v))
            return bad_type(e, "logprobs", "a boolean", v);
        if (json_is_true(v) || !json_is_boolean(v))
            return unsupported(e, "logprobs", "is not supported: Outpost returns no log probabilities");
    }
    if ((v = param(body, "top_logprobs")))
        return unsupported(e, "top_logprobs", "is not supported: Outpost returns no log probabilities");
    if ((v = param(body, "logit_bias"))) {
        if (!json_is_object(v))
            return bad_type(e, "logit_bias", "an object", v);
        if (json_object_size(v) > 0)
            return unsupported(e, "logit_bias", "is not supported");
    }
    if ((v = param(body, "response_format"))) {
        if (!json_is_object(v))
            return bad_type(e, "response_format", "an object", v);
        const char *t = json_string_value(json_object_get(v, "type"));
        if (!t || strcmp(t, "text") != 0)
            return unsupported(e, "response_format",
                               "is not supported: only {\"type\": \"text\"} (JSON modes and schemas are not)");
    }
    if ((v = param(body, "tools"))) {
        if (!json_is_array(v))
            return bad_type(e, "tools", "an array", v);
        if (json_array_size(v) > 0)
            return unsupported(e, "tools", "is not supported: Outpost serves no tool calls");
    }
    if ((v = param(body, "functions"))) {
        if (!json_is_array(v))
            return bad_type(e, "functions", "an array", v);
        if (json_array_size(v) > 0)
            return unsupported(e, "functions", "is not supported: Outpost serves no tool calls");
    }
    const char *choice[] = {"tool_choice", "function_call"};
    for (int i = 0; i < 2; i++)
        if ((v = param(body, choice[i])) &&
            !(json_is_string(v) && strcmp(json_string_value(v), "none") == 0))
            return unsupported(e, choice[i],
                               "is not supported: Outpost serves no tool calls (only \"none\")");
    if ((v = param(body, "parallel_tool_calls")) && !json_is_boolean(v))
        return bad_type(e, "parallel_tool_calls", "a boolean", v);
    if ((v = param(body, "modalities"))) {
        if (!json_is_array(v))
            return bad_type(e, "modalities", "an array", v);
        size_t i;
        json_t *m;
        json_array_foreach(v, i, m)
        {
            if (!json_is_string(m) || strcmp(json_string_value(m), "text") != 0)
                return unsupported(e, "modalities", "is not supported: only [\"text\"]");
        }
    }
    const char *never[] = {"audio", "prediction", "reasoning_effort", "web_search_options",
                           "suffix"};
    for (size_t i = 0; i < sizeof never / sizeof never[0]; i++)
        if (param(body, never[i]))
            return unsupported(e, never[i], "is not supported");
    if ((v = param(body, "echo"))) {
        if (!json_is_boolean(v))
            return bad_type(e, "echo", "a boolean", v);
        if (json_is_true(v))
            return unsupported(e, "echo", "is not supported: the prompt is not repeated");
    }
    if ((v = param(body, "best_of"))) {
        if (!json_is_integer(v))
            return bad_type(e, "best_of", "an integer", v);
        if (json_integer_value(v) != 1)
            return unsupported(e, "best_of", "must be 1: Outpost generates one completion per request");
    }
    if ((v = param(body, "n"))) {
        if (!json_is_integer(v))
            return bad_type(e, "n", "an integer", v);
        if (json_integer_value(v) != 1)
            return unsupported(e, "n", "must be 1: Outpost generates one choice per request");
    }
    if ((v = param(body, "user")) && !json_is_string(v))
        return bad_type(e, "user", "a string", v);
    if ((v = param(body, "metadata")) && !json_is_object(v))
        return bad_type(e, "metadata", "an object", v);
    if ((v = param(body, "store")) && !json_is_boolean(v))
        return bad_type(e, "store", "a boolean", v);
    if ((v = param(body, "service_tier")) && !json_is_string(v))
        return bad_type(e, "service_tier", "a string", v);
    return true;
}

/* Sampling and length parameters shared by chat and completions, copied
 * into the Workers AI input under Workers AI's names. */
static bool copy_sampling(json_t *body, json_t *out, op_openai_kind kind, op_openai_req *req,
                          op_openai_error *e)
{
    long long max_tokens = 0, mct = 0, top_k = 0;
    bool has_mt, has_mct, has_k;
    if (!get_int(body, "max_tokens", 1, &max_tokens, &has_mt, e) ||
        !get_int(body, "max_completion_tokens", 1, &mct, &has_mct, e))
        return false;
    if (has_mct) /* the newer name wins, as in OpenAI's API */
        max_tokens = mct;
    else if (!has_mt && kind == OP_OPENAI_COMPLETIONS)
        max_tokens = OP_OPENAI_COMPLETIONS_DEFAULT_MAX_TOKENS;
    if (max_tokens > 0)
        json_object_set_new(out, "max_tokens", json_integer(max_tokens));

    if (!copy_number(body, out, "temperature", 0, 2, e) || !copy_number(body, out, "top_p", 0, 1, e) ||
        !copy_number(body, out, "frequency_penalty", -2, 2, e) ||
        !copy_number(body, out, "presence_penalty", -2, 2, e))
        return false;
    json_t *rp = param(body, "repetition_penalty");
    if (rp) {
        if (!json_is_number(rp))
            return bad_type(e, "repetition_penalty", "a number", rp);
        double d = json_number_value(rp);
        if (!isfinite(d) || d <= 0 || d > 2)
            return fail(e, "repetition_penalty", "invalid_value",
                        "Invalid 'repetition_penalty': %g is not above 0 and at most 2 (1 is no "
                        "penalty).",
                        d);
        json_object_set_new(out, "repetition_penalty", json_real(d));
    }
    if (!get_int(body, "top_k", 0, &top_k, &has_k, e))
        return false;
    if (has_k)
        json_object_set_new(out, "top_k", json_integer(top_k));
    json_t *seed = param(body, "seed");
    if (seed) {
        if (!json_is_integer(seed))
            return bad_type(e, "seed", "an integer", seed);
        if (json_integer_value(seed) < 0)
            return fail(e, "seed", "invalid_value",
                        "Invalid 'seed': %lld is less than the minimum of 0.",
                        (long long)json_integer_value(seed));
        json_object_set_new(out, "seed", json_integer(json_integer_value(seed)));
    }

    json_t *stop = param(body, "stop");
    if (stop) {
        json_t *list = json_array();
        if (json_is_string(stop)) {
            json_array_append(list, stop);
        } else if (json_is_array(stop)) {
            if (json_array_size(stop) > OP_OPENAI_MAX_STOP) {
                json_decref(list);
                return fail(e, "stop", "invalid_value",
                            "Invalid 'stop': at most %d stop sequences, got %zu.",
                            OP_OPENAI_MAX_STOP, json_array_size(stop));
            }
            size_t i;
            json_t *s;
            json_array_foreach(stop, i, s)
            {
                if (!json_is_string(s)) {
                    json_decref(list);
                    char p[32];
                    snprintf(p, sizeof p, "stop[%zu]", i);
                    return bad_type(e, p, "a string", s);
                }
                json_array_append(list, s);
            }
        } else {
            json_decref(list);
            return bad_type(e, "stop", "a string or an array of strings", stop);
        }
        if (json_array_size(list) > 0)
            json_object_set_new(out, "stop", list);
        else
            json_decref(list);
    }

    bool ignore_eos = false;
    if (!get_bool(body, "ignore_eos", &ignore_eos, e))
        return false;
    if (ignore_eos)
        json_object_set_new(out, "ignore_eos", json_true());

    if (!get_bool(body, "stream", &req->stream, e))
        return false;
    json_t *so = param(body, "stream_options");
    if (so) {
        if (!json_is_object(so))
            return bad_type(e, "stream_options", "an object", so);
        if (!req->stream)
            return fail(e, "stream_options", "invalid_value",
                        "The 'stream_options' parameter is only allowed when 'stream' is enabled.");
        const char *key;
        json_t *v;
        json_object_foreach(so, key, v)
        {
            if (strcmp(key, "include_usage") != 0)
                return fail(e, "stream_options", "unknown_parameter",
                            "Unrecognized stream option: %.64s", key);
            if (!json_is_null(v) && !json_is_boolean(v))
                return bad_type(e, "stream_options.include_usage", "a boolean", v);
            req->include_usage = json_is_true(v);
        }
    }
    if (req->stream)
        json_object_set_new(out, "stream", json_true());
    return true;
}

/* A message's content: a string, or an array of text parts joined by a
 * newline; *text is a new reference. */
static bool message_content(json_t *content, size_t i, json_t **text, op_openai_error *e)
{
    char p[64];
    snprintf(p, sizeof p, "messages[%zu].content", i);
    if (json_is_string(content)) {
        *text = json_incref(content);
        return true;
    }
    if (!json_is_array(content))
        return bad_type(e, p, "a string or an array of content parts", content);
    if (json_array_size(content) == 0)
        return fail(e, p, "invalid_value", "Invalid '%s': expected at least one content part.", p);
    /* Sum the lengths first: one allocation for the joined text. */
    size_t total = 0, k;
    json_t *part;
    json_array_foreach(content, k, part)
    {
        char pp[96];
        snprintf(pp, sizeof pp, "%s[%zu]", p, k);
        if (!json_is_object(part))
            return bad_type(e, pp, "an object", part);
        json_t *type = json_object_get(part, "type");
        if (!json_is_string(type))
            return fail(e, pp, "missing_required_parameter",
                        "Missing required parameter: '%s.type'.", pp);
        if (strcmp(json_string_value(type), "text") != 0)
            return fail(e, pp, "unsupported_value",
                        "Invalid '%s.type': content parts of type '%.32s' are not supported "
                        "(only 'text').",
                        pp, json_string_value(type));
        json_t *t = json_object_get(part, "text");
        if (!json_is_string(t))
            return bad_type(e, pp, "a 'text' string", t ? t : json_null());
        total += json_string_length(t) + 1;
    }
    char *buf = malloc(total);
    if (!buf)
        return fail(e, p, NULL, "out of memory"); /* reported as 400: rare enough */
    size_t used = 0;
    json_array_foreach(content, k, part)
    {
        json_t *t = json_object_get(part, "text");
        if (k > 0)
            buf[used++] = '\n';
        memcpy(buf + used, json_string_value(t), json_string_length(t));
        used += json_string_length(t);
    }
    *text = json_stringn_nocheck(buf, used);
    free(buf);
    return *text != NULL || fail(e, p, NULL, "out of memory");
}

static bool translate_messages(json_t *body, json_t *out, op_openai_error *e)
{
    json_t *msgs = param(body, "messages");
    if (!msgs)
        return fail(e, "messages", "missing_required_parameter",
                    "Missing required parameter: 'messages'.");
    if (!json_is_array(msgs))
        return bad_type(e, "messages", "an array", msgs);
    if (json_array_size(msgs) == 0)
        return fail(e, "messages", "invalid_value",
                    "Invalid 'messages': expected an array with at least one message.");
    json_t *list = json_array();
    json_object_set_new(out, "messages", list);
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        char p[64];
        snprintf(p, sizeof p, "messages[%zu]", i);
        if (!json_is_object(m))
            return bad_type(e, p, "an object", m);
        json_t *role = json_object_get(m, "role");
        snprintf(p, sizeof p, "messages[%zu].role", i);
        if (!role)
            return fail(e, p, "missing_required_parameter", "Missing required parameter: '%s'.", p);
        if (!json_is_string(role))
            return bad_type(e, p, "a string", role);
        const char *r = json_string_value(role);
        /* developer is what OpenAI's newer models call the system role. */
        const char *as = strcmp(r, "developer") == 0 ? "system" : r;
        if (strcmp(as, "system") != 0 && strcmp(as, "user") != 0 && strcmp(as, "assistant") != 0) {
            if (strcmp(r, "tool") == 0 || strcmp(r, "function") == 0)
                return fail(e, p, "unsupported_value",
                            "Invalid '%s': '%s' messages are not supported (Outpost serves no tool "
                            "calls).",
                            p, r);
            return fail(e, p, "invalid_value",
                        "Invalid '%s': expected 'system', 'developer', 'user' or 'assistant', got "
                        "'%.32s'.",
                        p, r);
        }
        json_t *calls = param(m, "tool_calls");
        if ((calls && (!json_is_array(calls) || json_array_size(calls) > 0)) ||
            param(m, "function_call")) {
            snprintf(p, sizeof p, "messages[%zu].%s", i, calls ? "tool_calls" : "function_call");
            return unsupported(e, p, "is not supported: Outpost serves no tool calls");
        }
        if (param(m, "audio")) {
            snprintf(p, sizeof p, "messages[%zu].audio", i);
            return unsupported(e, p, "is not supported");
        }
        json_t *content = json_object_get(m, "content");
        json_t *text = NULL;
        if (!content || json_is_null(content)) {
            /* OpenAI allows an assistant turn without content (it had tool
             * calls); with none of those it is an empty turn. */
            if (strcmp(as, "assistant") != 0) {
                snprintf(p, sizeof p, "messages[%zu].content", i);
                return fail(e, p, "missing_required_parameter",
                            "Missing required parameter: '%s'.", p);
            }
            text = json_string("");
        } else if (!message_content(content, i, &text, e)) {
            return false;
        }
        json_array_append_new(list, json_pack("{s:s, s:o}", "role", as, "content", text));
    }
    return true;
}

static bool translate_prompt(json_t *body, json_t *out, op_openai_error *e)
{
    json_t *prompt = param(body, "prompt");
    if (!prompt)
        return fail(e, "prompt", "missing_required_parameter",
                    "Missing required parameter: 'prompt'.");
    if (json_is_array(prompt)) {
        json_t *first = json_array_get(prompt, 0);
        if (json_is_integer(first) || json_is_array(first))
            return fail(e, "prompt", "unsupported_value",
                        "Invalid 'prompt': token id arrays are not supported; send the text.");
        if (json_array_size(prompt) != 1)
            return fail(e, "prompt", "unsupported_value",
                        "Invalid 'prompt': exactly one prompt per request is supported, got %zu.",
                        json_array_size(prompt));
        if (!json_is_string(first))
            return bad_type(e, "prompt[0]", "a string", first);
        prompt = first;
    } else if (!json_is_string(prompt)) {
        return bad_type(e, "prompt", "a string or an array of one string", prompt);
    }
    json_object_set(out, "prompt", prompt);
    /* No chat template: the prompt is the model's input as it is. */
    json_object_set_new(out, "raw", json_true());
    return true;
}

static bool translate_embeddings(json_t *body, json_t *out, op_openai_req *req, op_openai_error *e)
{
    json_t *input = param(body, "input");
    if (!input)
        return fail(e, "input", "missing_required_parameter",
                    "Missing required parameter: 'input'.");
    json_t *texts = json_array();
    json_object_set_new(out, "text", texts);
    if (json_is_string(input)) {
        json_array_append(texts, input);
    } else if (json_is_array(input)) {
        size_t n = json_array_size(input);
        if (n == 0)
            return fail(e, "input", "invalid_value",
                        "Invalid 'input': expected a string or a non-empty array of strings.");
        json_t *first = json_array_get(input, 0);
        if (json_is_integer(first) || json_is_array(first))
            return fail(e, "input", "unsupported_value",
                        "Invalid 'input': token id arrays are not supported; send the text.");
        if (n > OP_OPENAI_MAX_INPUTS)
            return fail(e, "input", "invalid_value",
                        "Invalid 'input': at most %d texts per request, got %zu.",
                        OP_OPENAI_MAX_INPUTS, n);
        size_t i;
        json_t *t;
        json_array_foreach(input, i, t)
        {
            if (!json_is_string(t)) {
                char p[32];
                snprintf(p, sizeof p, "input[%zu]", i);
                return bad_type(e, p, "a string", t);
            }
            json_array_append(texts, t);
        }
    } else {
        return bad_type(e, "input", "a string or an array of strings", input);
    }
    json_t *fmt = param(body, "encoding_format");
    if (fmt) {
        if (!json_is_string(fmt))
            return bad_type(e, "encoding_format", "a string", fmt);
        const char *f = json_string_value(fmt);
        if (strcmp(f, "base64") == 0)
            req->base64 = true;
        else if (strcmp(f, "float") != 0)
            return fail(e, "encoding_format", "invalid_value",
                        "Invalid 'encoding_format': expected 'float' or 'base64', got '%.32s'.", f);
    }
    bool given;
    long long dims = 0;
    if (!get_int(body, "dimensions", 1, &dims, &given, e))
        return false;
    req->dimensions = given ? dims : 0;
    return true;
}

/* A request id: the prefix and 24 random hex digits. */
static void make_id(char *out, size_t cap, const char *prefix)
{
    unsigned char rnd[12];
    if (getrandom(rnd, sizeof rnd, GRND_NONBLOCK) != (ssize_t)sizeof rnd) {
        /* No entropy yet (early boot): unique enough for an id. */
        static _Atomic unsigned long long counter;
        unsigned long long t = pl_time_mono_ns() ^ ((unsigned long long)++counter << 40);
        for (size_t i = 0; i < sizeof rnd; i++)
            rnd[i] = (unsigned char)(t >> ((i % 8) * 8));
    }
    int n = snprintf(out, cap, "%s", prefix);
    for (size_t i = 0; i < sizeof rnd && n > 0 && (size_t)n + 2 < cap; i++)
        n += snprintf(out + n, cap - (size_t)n, "%02x", rnd[i]);
}

json_t *op_openai_translate(op_openai_kind kind, json_t *body, op_openai_req *req,
                            op_openai_error *err)
{
    memset(req, 0, sizeof *req);
    memset(err, 0, sizeof *err);
    req->kind = kind;
    if (!json_is_object(body)) {
        fail(err, NULL, "invalid_type", "The request body must be a JSON object.");
        return NULL;
    }
    json_t *out = json_object();
    bool ok = out && check_known(body, kind, err) && take_model(body, req, err) &&
              check_refused(body, kind, err);
    if (ok) {
        switch (kind) {
        case OP_OPENAI_CHAT:
            ok = translate_messages(body, out, err) && copy_sampling(body, out, kind, req, err);
            break;
        case OP_OPENAI_COMPLETIONS:
            ok = translate_prompt(body, out, err) && copy_sampling(body, out, kind, req, err);
            break;
        case OP_OPENAI_EMBEDDINGS: ok = translate_embeddings(body, out, req, err); break;
        }
    }
    if (!ok) {
        if (!out)
            fail(err, NULL, NULL, "out of memory");
        json_decref(out);
        return NULL;
    }
    make_id(req->id, sizeof req->id,
            kind == OP_OPENAI_CHAT ? "chatcmpl-" : kind == OP_OPENAI_COMPLETIONS ? "cmpl-" : "emb-");
    req->created = (long long)time(NULL);
    return out;
}

/* ======================================================================== */
/* Responses                                                                 */
/* ======================================================================== */

static bool fail_status(op_openai_error *e, int status, const char *param_name,
                        const char *code, const char *msg)
{
    e->status = status;
    snprintf(e->param, sizeof e->param, "%s", param_name ? param_name : "");
    e->code = code;
    snprintf(e->message, sizeof e->message, "%s", msg);
    return false;
}

static long long usage_field(json_t *usage, const char *name)
{
    json_t *v = json_object_get(usage, name);
    if (json_is_integer(v) && json_integer_value(v) >= 0)
        return (long long)json_integer_value(v);
    if (json_is_real(v) && json_real_value(v) >= 0 && json_real_value(v) < 9e18)
        return (long long)json_real_value(v);
    return 0;
}

/* OpenAI's usage object from the plugin's (missing counts read 0). */
static json_t *usage_of(json_t *result, bool completion)
{
    json_t *u = json_object_get(result, "usage");
    long long prompt = usage_field(u, "prompt_tokens");
    long long gen = completion ? usage_field(u, "completion_tokens") : 0;
    long long total = usage_field(u, "total_tokens");
    if (total < prompt + gen)
        total = prompt + gen;
    if (!completion)
        return json_pack("{s:I, s:I}", "prompt_tokens", (json_int_t)prompt, "total_tokens",
                         (json_int_t)total);
    return json_pack("{s:I, s:I, s:I}", "prompt_tokens", (json_int_t)prompt,
                     "completion_tokens", (json_int_t)gen, "total_tokens", (json_int_t)total);
}

/* The plugin's finish_reason (an Outpost extension of the Workers AI
 * result), "stop" when it gives none. */
static const char *finish_reason(json_t *result)
{
    const char *f = json_string_value(json_object_get(result, "finish_reason"));
    return f && *f ? f : "stop";
}

static json_t *envelope(const op_openai_req *req, const char *object)
{
    return json_pack("{s:s, s:s, s:I, s:s}", "id", req->id, "object", object, "created",
                     (json_int_t)req->created, "model", req->model);
}

size_t op_openai_base64(const unsigned char *in, size_t n, char *out)
{
    static const char A[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = A[v >> 18];
        out[o++] = A[(v >> 12) & 63];
        out[o++] = A[(v >> 6) & 63];
        out[o++] = A[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0);
        out[o++] = A[v >> 18];
        out[o++] = A[(v >> 12) & 63];
        out[o++] = i + 1 < n ? A[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

/* One embedding row: floats as they are, or base64 of little-endian
 * float32 (what OpenAI sends and its SDKs decode). */
static json_t *embedding_value(json_t *row, bool base64)
{
    size_t d = json_array_size(row);
    if (!base64)
        return json_incref(row);
    unsigned char *bytes = malloc(d * 4 + 1);
    char *text = malloc(4 * ((d * 4 + 2) / 3) + 1);
    json_t *out = NULL;
    if (bytes && text) {
        for (size_t k = 0; k < d; k++) {
            float f = (float)json_number_value(json_array_get(row, k));
            uint32_t u;
            memcpy(&u, &f, 4);
            for (int b = 0; b < 4; b++)
                bytes[k * 4 + (size_t)b] = (unsigned char)(u >> (8 * b));
        }
        size_t n = op_openai_base64(bytes, d * 4, text);
        out = json_stringn_nocheck(text, n);
    }
    free(bytes);
    free(text);
    return out;
}

static json_t *embeddings_response(const op_openai_req *req, json_t *result, op_openai_error *e)
{
    json_t *rows = json_object_get(result, "data");
    if (!json_is_array(rows)) {
        fail_status(e, 500, NULL, "bad_model_output", "the model returned no embeddings");
        return NULL;
    }
    json_t *data = json_array();
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row)
    {
        bool numbers = json_is_array(row) && json_array_size(row) > 0;
        for (size_t k = 0; numbers && k < json_array_size(row); k++)
            numbers = json_is_number(json_array_get(row, k));
        if (!numbers) {
            json_decref(data);
            fail_status(e, 500, NULL, "bad_model_output", "the model returned a malformed embedding");
            return NULL;
        }
        if (req->dimensions > 0 && (long long)json_array_size(row) != req->dimensions) {
            json_decref(data);
            char msg[160];
            snprintf(msg, sizeof msg,
                     "Invalid 'dimensions': the model's embeddings have %zu dimensions, not %lld.",
                     json_array_size(row), req->dimensions);
            fail_status(e, 400, "dimensions", "invalid_value", msg);
            return NULL;
        }
        json_t *value = embedding_value(row, req->base64);
        if (!value) {
            json_decref(data);
            fail_status(e, 500, NULL, NULL, "out of memory");
            return NULL;
        }
        json_array_append_new(data, json_pack("{s:s, s:I, s:o}", "object", "embedding", "index",
                                              (json_int_t)i, "embedding", value));
    }
    return json_pack("{s:s, s:o, s:s, s:o}", "object", "list", "data", data, "model", req->model,
                     "usage", usage_of(result, false));
}

json_t *op_openai_response(const op_openai_req *req, json_t *result, op_openai_error *e)
{
    memset(e, 0, sizeof *e);
    if (!json_is_object(result)) {
        fail_status(e, 500, NULL, "bad_model_output", "the model returned a result of the wrong shape");
        return NULL;
    }
    if (req->kind == OP_OPENAI_EMBEDDINGS)
        return embeddings_response(req, result, e);
    json_t *text = json_object_get(result, "response");
    if (!json_is_string(text)) {
        fail_status(e, 500, NULL, "bad_model_output", "the model returned no text");
        return NULL;
    }
    json_t *choice;
    json_t *out;
    if (req->kind == OP_OPENAI_CHAT) {
        out = envelope(req, "chat.completion");
        choice = json_pack("{s:i, s:{s:s, s:O}, s:s, s:n}", "index", 0, "message", "role",
                           "assistant", "content", text, "finish_reason", finish_reason(result),
                           "logprobs");
    } else {
        out = envelope(req, "text_completion");
        choice = json_pack("{s:i, s:O, s:s, s:n}", "index", 0, "text", text, "finish_reason",
                           finish_reason(result), "logprobs");
    }
    json_object_set_new(out, "choices", json_pack("[o]", choice));
    json_object_set_new(out, "usage", usage_of(result, true));
    return out;
}

/* ======================================================================== */
/* Stream chunks                                                             */
/* ======================================================================== */

/* A chunk with one choice; with include_usage every chunk but the last has
 * "usage": null, as OpenAI streams it. */
static json_t *chunk(const op_openai_req *req, json_t *choice)
{
    bool chat = req->kind == OP_OPENAI_CHAT;
    json_t *c = envelope(req, chat ? "chat.completion.chunk" : "text_completion");
    json_object_set_new(c, "choices", choice ? json_pack("[o]", choice) : json_array());
    if (req->include_usage)
        json_object_set_new(c, "usage", json_null());
    return c;
}

json_t *op_openai_chunk_first(const op_openai_req *req)
{
    if (req->kind != OP_OPENAI_CHAT)
        return NULL;
    return chunk(req, json_pack("{s:i, s:{s:s, s:s}, s:n, s:n}", "index", 0, "delta", "role",
                                "assistant", "content", "", "finish_reason", "logprobs"));
}

json_t *op_openai_chunk_piece(const op_openai_req *req, const char *text, size_t len)
{
    json_t *s = json_stringn(text, len);
    if (!s)
        s = json_string("\xef\xbf\xbd"); /* not UTF-8: the host sanitizes, so never */
    if (req->kind == OP_OPENAI_CHAT)
        return chunk(req, json_pack("{s:i, s:{s:o}, s:n, s:n}", "index", 0, "delta", "content", s,
                                    "finish_reason", "logprobs"));
    return chunk(req, json_pack("{s:i, s:o, s:n, s:n}", "index", 0, "text", s, "finish_reason",
                                "logprobs"));
}

json_t *op_openai_chunk_final(const op_openai_req *req, json_t *result)
{
    if (req->kind == OP_OPENAI_CHAT)
        return chunk(req, json_pack("{s:i, s:{}, s:s, s:n}", "index", 0, "delta", "finish_reason",
                                    finish_reason(result), "logprobs"));
    return chunk(req, json_pack("{s:i, s:s, s:s, s:n}", "index", 0, "text", "", "finish_reason",
                                finish_reason(result), "logprobs"));
}

json_t *op_openai_chunk_usage(const op_openai_req *req, json_t *result)
{
    if (!req->include_usage)
        return NULL;
    json_t *c = chunk(req, NULL);
    json_object_set_new(c, "usage", usage_of(result, true));
    return c;
}
