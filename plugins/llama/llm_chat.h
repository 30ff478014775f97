/*
 * llm_chat: chat templates. GGUF models declare theirs in
 * tokenizer.chat_template as Jinja; Outpost does not run Jinja. It
 * recognises the template families the shipped and common llama-family
 * models use, by markers in the template text, and renders them in C:
 *
 *   LLM_CHAT_CHATML   "<|im_start|>role\n...<|im_end|>\n" (SmolLM2, Qwen2,
 *                     many fine-tunes); a default system prompt written in
 *                     the template (SmolLM2's "You are a helpful AI
 *                     assistant named SmolLM, ...") is extracted and used
 *                     when the first message is not a system message (the
 *                     templates' own test); content as given
 *   LLM_CHAT_LLAMA3   "<|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>",
 *                     content trimmed (Jinja's trim); the template's leading
 *                     bos_token is left to the tokenizer (add_bos), and
 *                     Llama 3.1's date lines are not written (as llama.cpp)
 *   LLM_CHAT_ZEPHYR   "<|role|>\n...</s>\n" (TinyLlama chat); the turn ends
 *                     with "<|endoftext|>" instead when the template writes
 *                     that, as StableLM's Zephyr does
 *
 * Every role is rendered as given (Qwen2.5's special handling of "tool"
 * messages and tool calls is not reproduced). ChatML with "<|im_sep|>"
 * (Phi-4) and "<|user|>" with "<|end|>" (Phi-3) are other families and are
 * refused.
 *
 * A template that matches none is refused at model load with a message
 * naming what was looked for; the model can still serve raw prompts if the
 * operator sets the plugin option chat_template: none.
 *
 * Ownership: the llm_chat returned by llm_chat_detect owns copies of what it
 * took from the template. Rendered text is malloc'd for the caller.
 * Threading: immutable after detect; render is reentrant.
 * Errors: -1 with a reason in err.
 */
#ifndef LLM_CHAT_H
#define LLM_CHAT_H

#include <stdbool.h>
#include <stddef.h>

typedef enum llm_chat_kind {
    LLM_CHAT_NONE = 0, /* raw prompts only */
    LLM_CHAT_CHATML,
    LLM_CHAT_LLAMA3,
    LLM_CHAT_ZEPHYR,
} llm_chat_kind;

typedef struct llm_chat llm_chat;

typedef struct llm_chat_msg {
    const char *role;    /* "system" | "user" | "assistant" | "tool" ... as given */
    const char *content; /* UTF-8 */
    size_t content_len;
} llm_chat_msg;

/* tmpl may be NULL (no template in the file): returns -1 unless the caller
 * then uses llm_chat_none(). */
int llm_chat_detect(const char *tmpl, size_t len, llm_chat **out, char *err, size_t errlen);
llm_chat *llm_chat_none(void);      /* a LLM_CHAT_NONE instance */
void llm_chat_free(llm_chat *c);    /* NULL is a no-op */
llm_chat_kind llm_chat_get_kind(const llm_chat *c);
const char *llm_chat_kind_name(llm_chat_kind k); /* "chatml" ... */

/* Renders msgs as the template would with add_generation_prompt=true.
 * Control token texts ("<|im_start|>") appear literally: tokenize the result
 * with parse_special. Returns 0 with *out and *out_len (malloc'd, NUL-
 * terminated), or -1 (LLM_CHAT_NONE, an empty list, or out of memory). */
int llm_chat_render(const llm_chat *c, const llm_chat_msg *msgs, size_t n, char **out,
                    size_t *out_len, char *err, size_t errlen);

#endif
