/*
 * llm_chat: template families recognised by markers in the Jinja text, and
 * rendered in C the way the templates (and llama.cpp's
 * llm_chat_apply_template) render them. The one thing taken from the
 * template's text besides its family is ChatML's default system prompt,
 * read out of a Jinja string literal; nothing in the template is executed.
 */
#include "llm_chat.h"
#include "nn/nn_err.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/nn_unicode.h"

struct llm_chat {
    llm_chat_kind kind;
    char *default_system; /* ChatML: used when the first message is not
                             "system"; NULL when the template has none */
    size_t default_system_len;
    const char *eot;      /* Zephyr: what closes a turn */
};

static bool has(const char *t, size_t len, const char *needle)
{
    return memmem(t, len, needle, strlen(needle)) != NULL;
}

/* ========================================================================
 * Default system prompt (ChatML)
 * ======================================================================== */

/*
 * SmolLM2 and Qwen2 write their default system turn as one string literal
 * inside a Jinja expression:
 *     {{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, ...<|im_end|>\n' }}
 * This scans the template's {{ }} and {% %} blocks (text outside them is
 * output, not code; {# #} comments are skipped) for string literals,
 * unescapes each, and takes the first that holds a whole system turn. A
 * literal that stops after "system\n" (the system content comes from a
 * variable) is not a default prompt.
 */
static const char SYS_OPEN[] = "<|im_start|>system\n";
static const char TURN_END[] = "<|im_end|>";

/* Unescapes the Jinja (Python-like) string literal body s[0, len) into out
 * (at least len bytes); returns the length. */
static size_t unescape(const char *s, size_t len, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] != '\\' || i + 1 == len) {
            out[o++] = s[i];
            continue;
        }
        char c = s[++i];
        switch (c) {
        case 'n': out[o++] = '\n'; break;
        case 't': out[o++] = '\t'; break;
        case 'r': out[o++] = '\r'; break;
        case '\\': out[o++] = '\\'; break;
        case '\'': out[o++] = '\''; break;
        case '"': out[o++] = '"'; break;
        default: /* unknown escapes stay as written, as in Python */
            out[o++] = '\\';
            out[o++] = c;
            break;
        }
    }
    return o;
}

static int find_default_system(llm_chat *c, const char *t, size_t len)
{
    size_t i = 0;
    while (i + 1 < len) {
        if (t[i] != '{' || (t[i + 1] != '{' && t[i + 1] != '%' && t[i + 1] != '#')) {
            i++;
            continue;
        }
        char open = t[i + 1];
        char close = open == '{' ? '}' : open;
        i += 2;
        if (open == '#') { /* comment: skip to #} */
            while (i + 1 < len && !(t[i] == '#' && t[i + 1] == '}'))
                i++;
            i += 2;
            continue;
        }
        /* Inside a block: string literals until the closing delimiter. */
        while (i + 1 < len && !(t[i] == close && t[i + 1] == '}')) {
            if (t[i] != '\'' && t[i] != '"') {
                i++;
                continue;
            }
            char q = t[i++];
            size_t start = i;
            while (i < len && t[i] != q) {
                if (t[i] == '\\' && i + 1 < len)
                    i++;
                i++;
            }
            if (i >= len)
                return 0; /* unterminated: no default */
            size_t blen = i - start;
            i++;
            char *lit = malloc(blen + 1);
            if (!lit)
                return -1;
            size_t l = unescape(t + start, blen, lit);
            const char *so = memmem(lit, l, SYS_OPEN, sizeof SYS_OPEN - 1);
            if (so) {
                const char *body = so + sizeof SYS_OPEN - 1;
                size_t rest = l - (size_t)(body - lit);
                const char *end = memmem(body, rest, TURN_END, sizeof TURN_END - 1);
                if (end) {
                    size_t n = (size_t)(end - body);
                    memmove(lit, body, n);
                    lit[n] = '\0';
                    c->default_system = lit;
                    c->default_system_len = n;
                    return 0;
                }
            }
            free(lit);
        }
        i += 2;
    }
    return 0;
}

/* ========================================================================
 * Detect
 * ======================================================================== */

int llm_chat_detect(const char *tmpl, size_t len, llm_chat **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!tmpl)
        return nn_errf(err, errlen, "no chat template in the model (tokenizer.chat_template); set "
                                 "chat_template: none to serve raw prompts");
    llm_chat *c = calloc(1, sizeof *c);
    if (!c)
        return nn_errf(err, errlen, "out of memory");

    if (has(tmpl, len, "<|im_start|>")) {
        if (has(tmpl, len, "<|im_sep|>")) {
            /* Phi-4: ChatML markers with a different separator. */
            free(c);
            return nn_errf(err, errlen, "chat template uses '<|im_start|>' with '<|im_sep|>' (Phi-4 "
                                     "style), which is not supported; set chat_template: none to "
                                     "serve raw prompts");
        }
        c->kind = LLM_CHAT_CHATML;
        if (find_default_system(c, tmpl, len) != 0) {
            free(c);
            return nn_errf(err, errlen, "out of memory");
        }
    } else if (has(tmpl, len, "<|start_header_id|>") && has(tmpl, len, "<|end_header_id|>")) {
        c->kind = LLM_CHAT_LLAMA3;
    } else if (has(tmpl, len, "<|user|>") && has(tmpl, len, "<|assistant|>")) {
        if (has(tmpl, len, "<|end|>")) {
            /* Phi-3 closes turns with <|end|>: another family. */
            free(c);
            return nn_errf(err, errlen, "chat template uses '<|user|>' with '<|end|>' (Phi-3 style), "
                                     "which is not supported; set chat_template: none to serve raw "
                                     "prompts");
        }
        c->kind = LLM_CHAT_ZEPHYR;
        /* StableLM's Zephyr writes <|endoftext|>; TinyLlama's says eos_token,
         * which is </s> in its vocabulary. */
        c->eot = has(tmpl, len, "<|endoftext|>") ? "<|endoftext|>" : "</s>";
    } else {
        free(c);
        return nn_errf(err, errlen,
                    "chat template not recognised: looked for ChatML ('<|im_start|>'), Llama 3 "
                    "('<|start_header_id|>' and '<|end_header_id|>') and Zephyr ('<|user|>' and "
                    "'<|assistant|>'); set chat_template: none to serve raw prompts");
    }
    *out = c;
    return 0;
}

llm_chat *llm_chat_none(void)
{
    return calloc(1, sizeof(llm_chat)); /* kind LLM_CHAT_NONE */
}

void llm_chat_free(llm_chat *c)
{
    if (!c)
        return;
    free(c->default_system);
    free(c);
}

llm_chat_kind llm_chat_get_kind(const llm_chat *c) { return c ? c->kind : LLM_CHAT_NONE; }

const char *llm_chat_kind_name(llm_chat_kind k)
{
    switch (k) {
    case LLM_CHAT_NONE: return "none";
    case LLM_CHAT_CHATML: return "chatml";
    case LLM_CHAT_LLAMA3: return "llama3";
    case LLM_CHAT_ZEPHYR: return "zephyr";
    }
    return "?";
}

/* ========================================================================
 * Render
 * ======================================================================== */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
} sbuf;

static void put(sbuf *b, const char *s, size_t n)
{
    if (b->oom || n == 0)
        return;
    if (n > SIZE_MAX - b->len - 1) {
        b->oom = true;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap = cap > SIZE_MAX / 2 ? b->len + n + 1 : cap * 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void puts_(sbuf *b, const char *s) { put(b, s, strlen(s)); }

/* Jinja's trim (Python str.strip()): White_Space and U+001C..U+001F at both
 * ends. Returns the trimmed start and sets *n. */
static bool strip_cp(uint32_t cp) { return nn_uc_is_space(cp) || (cp >= 0x1C && cp <= 0x1F); }

static const char *trim(const char *s, size_t len, size_t *n)
{
    size_t a = 0, b = len;
    while (a < b) {
        uint32_t cp;
        size_t k = nn_utf8_decode(s + a, b - a, &cp);
        if (!strip_cp(cp) || (cp == 0xFFFD && k == 1))
            break;
        a += k;
    }
    while (b > a) {
        /* Step back to the start of the last code point (at most 4 bytes). */
        size_t p = b - 1;
        while (p > a && b - p < 4 && ((unsigned char)s[p] & 0xC0) == 0x80)
            p--;
        uint32_t cp;
        size_t k = nn_utf8_decode(s + p, b - p, &cp);
        if (p + k != b || !strip_cp(cp) || (cp == 0xFFFD && k == 1))
            break;
        b = p;
    }
    *n = b - a;
    return s + a;
}

static bool is_role(const char *role, const char *want) { return strcmp(role, want) == 0; }

int llm_chat_render(const llm_chat *c, const llm_chat_msg *msgs, size_t n, char **out,
                    size_t *out_len, char *err, size_t errlen)
{
    *out = NULL;
    *out_len = 0;
    if (!c || c->kind == LLM_CHAT_NONE)
        return nn_errf(err, errlen, "the model has no chat template (chat_template: none): send a "
                                 "raw prompt");
    if (n == 0)
        return nn_errf(err, errlen, "no messages");
    for (size_t i = 0; i < n; i++)
        if (!msgs[i].role || (!msgs[i].content && msgs[i].content_len > 0))
            return nn_errf(err, errlen, "message %zu: no role or content", i);

    sbuf b = {0};
    switch (c->kind) {
    case LLM_CHAT_CHATML:
        if (c->default_system && !is_role(msgs[0].role, "system")) {
            puts_(&b, SYS_OPEN);
            put(&b, c->default_system, c->default_system_len);
            puts_(&b, "<|im_end|>\n");
        }
        for (size_t i = 0; i < n; i++) {
            puts_(&b, "<|im_start|>");
            puts_(&b, msgs[i].role);
            puts_(&b, "\n");
            put(&b, msgs[i].content, msgs[i].content_len);
            puts_(&b, "<|im_end|>\n");
        }
        puts_(&b, "<|im_start|>assistant\n");
        break;
    case LLM_CHAT_LLAMA3:
        /* The template's leading bos_token is left to the tokenizer
         * (add_bos), as llama.cpp does. */
        for (size_t i = 0; i < n; i++) {
            size_t tl;
            const char *tc = trim(msgs[i].content ? msgs[i].content : "", msgs[i].content_len, &tl);
            puts_(&b, "<|start_header_id|>");
            puts_(&b, msgs[i].role);
            puts_(&b, "<|end_header_id|>\n\n");
            put(&b, tc, tl);
            puts_(&b, "<|eot_id|>");
        }
        puts_(&b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
    case LLM_CHAT_ZEPHYR:
        for (size_t i = 0; i < n; i++) {
            puts_(&b, "<|");
            puts_(&b, msgs[i].role);
            puts_(&b, "|>\n");
            put(&b, msgs[i].content, msgs[i].content_len);
            puts_(&b, c->eot);
            puts_(&b, "\n");
        }
        puts_(&b, "<|assistant|>\n");
        break;
    case LLM_CHAT_NONE:
        break;
    }
    if (b.oom) {
        free(b.p);
        return nn_errf(err, errlen, "out of memory");
    }
    *out = b.p;
    *out_len = b.len;
    return 0;
}
