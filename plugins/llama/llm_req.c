/*
 * llm_req: text-generation input parsing and prompt assembly. See llm_req.h.
 */
#include "llm_req.h"
#include "nn/nn_err.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *dup_str(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

/* A JSON number (integers and reals alike), if present. 1 found, 0 absent,
 * -1 present but not a number. */
static int get_number(json_t *o, const char *key, double *out)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_number(v))
        return -1;
    *out = json_number_value(v);
    return 1;
}

/* An integer-valued number within [lo, hi]. */
static int get_int(json_t *o, const char *key, double lo, double hi, long long *out, char *err,
                   size_t errlen)
{
    double d;
    int r = get_number(o, key, &d);
    if (r == 0)
        return 0;
    if (r < 0 || d != floor(d) || d < lo || d > hi)
        return nn_errf(err, errlen, "'%s' must be an integer from %.0f to %.0f", key, lo, hi);
    *out = (long long)d;
    return 1;
}

static int get_real(json_t *o, const char *key, double lo, double hi, double *out, char *err,
                    size_t errlen)
{
    double d;
    int r = get_number(o, key, &d);
    if (r == 0)
        return 0;
    if (r < 0 || !(d >= lo && d <= hi))
        return nn_errf(err, errlen, "'%s' must be a number from %g to %g", key, lo, hi);
    *out = d;
    return 1;
}

static int get_bool(json_t *o, const char *key, bool *out, char *err, size_t errlen)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_boolean(v))
        return nn_errf(err, errlen, "'%s' must be true or false", key);
    *out = json_is_true(v);
    return 1;
}

static int parse_stop(json_t *o, llm_req_spec *s, char *err, size_t errlen)
{
    json_t *v = json_object_get(o, "stop");
    if (!v || json_is_null(v))
        return 0;
    json_t *one[1] = {v};
    json_t **items = one;
    size_t n = 1;
    if (json_is_array(v)) {
        n = json_array_size(v);
        if (n > LLM_MAX_STOP)
            return nn_errf(err, errlen, "'stop' has %zu entries; at most %d are allowed", n,
                         LLM_MAX_STOP);
        items = NULL;
    } else if (!json_is_string(v)) {
        return nn_errf(err, errlen, "'stop' must be a string or an array of strings");
    }
    for (size_t i = 0; i < n; i++) {
        json_t *e = items ? items[i] : json_array_get(v, i);
        if (!json_is_string(e))
            return nn_errf(err, errlen, "'stop' must be a string or an array of strings");
        size_t len = json_string_length(e);
        if (len == 0)
            continue; /* an empty stop string would match everywhere: ignore it */
        if (len > LLM_MAX_STOP_BYTES)
            return nn_errf(err, errlen, "a 'stop' string is %zu bytes; at most %d are allowed",
                         len, LLM_MAX_STOP_BYTES);
        if (!(s->stop[s->n_stop] = dup_str(json_string_value(e), len)))
            return nn_errf(err, errlen, "out of memory");
        s->n_stop++;
    }
    return 0;
}

static int parse_messages(json_t *msgs, llm_req_spec *s, char *err, size_t errlen)
{
    if (!json_is_array(msgs) || json_array_size(msgs) == 0)
        return nn_errf(err, errlen, "'messages' must be a non-empty array of {role, content}");
    size_t n = json_array_size(msgs);
    if (n > LLM_MAX_MESSAGES)
        return nn_errf(err, errlen, "'messages' has %zu entries; at most %d are allowed", n,
                     LLM_MAX_MESSAGES);
    s->msgs = calloc(n, sizeof *s->msgs);
    if (!s->msgs)
        return nn_errf(err, errlen, "out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(msgs, i);
        json_t *role = json_object_get(m, "role"), *content = json_object_get(m, "content");
        if (!json_is_object(m) || !json_is_string(role) || json_string_length(role) == 0)
            return nn_errf(err, errlen, "messages[%zu] must be an object with a string 'role'", i);
        if (!json_is_string(content))
            return nn_errf(err, errlen, "messages[%zu].content must be a string", i);
        llm_chat_msg *cm = &s->msgs[s->n_msgs++];
        cm->role = dup_str(json_string_value(role), json_string_length(role));
        cm->content = dup_str(json_string_value(content), json_string_length(content));
        cm->content_len = json_string_length(content);
        if (!cm->role || !cm->content)
            return nn_errf(err, errlen, "out of memory");
    }
    return 0;
}

int llm_req_parse(const char *body, size_t len, llm_req_spec *s, char *err, size_t errlen)
{
    memset(s, 0, sizeof *s);
    s->sampling = (llm_sampling){
        .temperature = 0.6f,
        .top_k = 0,
        .top_p = 1.0f,
        .repetition_penalty = 1.0f,
    };
    json_error_t jerr;
    json_t *o = json_loadb(body, len, 0, &jerr);
    if (!o || !json_is_object(o)) {
        json_decref(o);
        return nn_errf(err, errlen, "the input must be a JSON object");
    }
    static const char *const refused[] = {"tools", "functions", "tool_choice", "response_format",
                                          "lora", "image", "logprobs", "top_logprobs"};
    int rc = -1;
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        json_t *v = json_object_get(o, refused[i]);
        if (v && !json_is_null(v) && !(json_is_false(v)) &&
            !(json_is_array(v) && json_array_size(v) == 0)) {
            nn_errf(err, errlen, "'%s' is not supported by this model", refused[i]);
            goto out;
        }
    }
    long long n_choices = 1;
    if (get_int(o, "n", 1, 1, &n_choices, err, errlen) < 0) {
        nn_errf(err, errlen, "'n' must be 1: this model returns one choice");
        goto out;
    }

    json_t *prompt = json_object_get(o, "prompt"), *msgs = json_object_get(o, "messages");
    if (prompt && json_is_null(prompt))
        prompt = NULL;
    if (msgs && json_is_null(msgs))
        msgs = NULL;
    if (!prompt == !msgs) {
        nn_errf(err, errlen, prompt ? "give either 'prompt' or 'messages', not both"
                                  : "'prompt' or 'messages' is required");
        goto out;
    }
    if (prompt) {
        if (!json_is_string(prompt)) {
            nn_errf(err, errlen, "'prompt' must be a string");
            goto out;
        }
        s->prompt_len = json_string_length(prompt);
        if (!(s->prompt = dup_str(json_string_value(prompt), s->prompt_len))) {
            nn_errf(err, errlen, "out of memory");
            goto out;
        }
    } else if (parse_messages(msgs, s, err, errlen)) {
        goto out;
    }

    long long iv;
    double dv;
    int r;
    if ((r = get_int(o, "max_tokens", 1, 1e9, &iv, err, errlen)) < 0)
        goto out;
    if (r)
        s->max_tokens = (int)iv;
    if ((r = get_real(o, "temperature", 0, 5, &dv, err, errlen)) < 0)
        goto out;
    if (r)
        s->sampling.temperature = (float)dv;
    if ((r = get_real(o, "top_p", 0, 2, &dv, err, errlen)) < 0)
        goto out;
    if (r) {
        if (dv <= 0.0)
            s->sampling.top_k = 1; /* nothing but the most likely token */
        else
            s->sampling.top_p = dv >= 1.0 ? 1.0f : (float)dv;
    }
    if ((r = get_int(o, "top_k", 0, 1e9, &iv, err, errlen)) < 0)
        goto out;
    if (r && s->sampling.top_k != 1)
        s->sampling.top_k = iv > 1000000000 ? 1000000000 : (int)iv;
    if ((r = get_int(o, "seed", 0, 9007199254740991.0, &iv, err, errlen)) < 0)
        goto out;
    if (r) {
        s->sampling.has_seed = true;
        s->sampling.seed = (uint64_t)iv;
    }
    if ((r = get_real(o, "repetition_penalty", 0, 2, &dv, err, errlen)) < 0)
        goto out;
    if (r) {
        if (dv <= 0.0) {
            nn_errf(err, errlen, "'repetition_penalty' must be a number above 0 and at most 2");
            goto out;
        }
        s->sampling.repetition_penalty = (float)dv;
    }
    if ((r = get_real(o, "frequency_penalty", -2, 2, &dv, err, errlen)) < 0)
        goto out;
    if (r)
        s->sampling.frequency_penalty = (float)dv;
    if ((r = get_real(o, "presence_penalty", -2, 2, &dv, err, errlen)) < 0)
        goto out;
    if (r)
        s->sampling.presence_penalty = (float)dv;
    if (get_bool(o, "raw", &s->raw, err, errlen) < 0 ||
        get_bool(o, "stream", &s->stream, err, errlen) < 0 ||
        get_bool(o, "ignore_eos", &s->ignore_eos, err, errlen) < 0 ||
        parse_stop(o, s, err, errlen) < 0)
        goto out;
    if (s->raw && s->msgs) {
        nn_errf(err, errlen, "'raw' applies to 'prompt', not to 'messages'");
        goto out;
    }
    rc = 0;
out:
    json_decref(o);
    if (rc)
        llm_req_free(s);
    return rc;
}

void llm_req_free(llm_req_spec *s)
{
    free(s->prompt);
    for (size_t i = 0; i < s->n_msgs; i++) {
        free((char *)s->msgs[i].role);
        free((char *)s->msgs[i].content);
    }
    free(s->msgs);
    for (int i = 0; i < s->n_stop; i++)
        free(s->stop[i]);
    memset(s, 0, sizeof *s);
}

int llm_req_prompt_ids(const llm_req_spec *s, const llm_vocab *v, const llm_chat *chat,
                       int32_t **ids, int *n, char *err, size_t errlen)
{
    *ids = NULL;
    *n = 0;
    char *text = NULL;
    size_t text_len = 0;
    const char *src;
    if (s->prompt && s->raw) {
        src = s->prompt;
        text_len = s->prompt_len;
    } else {
        if (!chat || llm_chat_get_kind(chat) == LLM_CHAT_NONE)
            return nn_errf(err, errlen, "this model has no chat template: send a 'prompt' with "
                         "\"raw\": true");
        llm_chat_msg one = {.role = "user", .content = s->prompt, .content_len = s->prompt_len};
        const llm_chat_msg *msgs = s->prompt ? &one : s->msgs;
        size_t nm = s->prompt ? 1 : s->n_msgs;
        char cerr[256];
        if (llm_chat_render(chat, msgs, nm, &text, &text_len, cerr, sizeof cerr) != 0)
            return nn_errf(err, errlen, "cannot apply the chat template: %s", cerr);
        src = text;
    }
    size_t count = 0, cap = 0;
    int32_t *out = NULL;
    int rc = 0;
    if (llm_vocab_add_bos(v) && llm_vocab_bos(v) >= 0) {
        out = malloc(16 * sizeof *out);
        if (!out) {
            rc = nn_errf(err, errlen, "out of memory");
            goto done;
        }
        cap = 16;
        out[count++] = llm_vocab_bos(v);
    }
    if (llm_tokenize(v, src, text_len, true, &out, &count, &cap) != 0) {
        rc = nn_errf(err, errlen, "out of memory");
        goto done;
    }
    if (count > (size_t)1 << 30) {
        rc = nn_errf(err, errlen, "the prompt is too long");
        goto done;
    }
    *ids = out;
    *n = (int)count;
    out = NULL;
done:
    free(out);
    free(text);
    return rc;
}
