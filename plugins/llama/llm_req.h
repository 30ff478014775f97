/*
 * llm_req: the text-generation input a request carries (Workers AI's shape,
 * which the host also translates OpenAI bodies into), parsed and validated,
 * and turned into prompt token ids.
 *
 * Fields (anything else is ignored, except those that would change the
 * meaning of the answer and are not supported, which are refused):
 *   prompt (string) | messages ([{role, content}]): exactly one
 *   raw (bool, false): with prompt, no chat template is applied
 *   max_tokens (int >= 1), temperature [0, 5], top_p [0, 2] (>= 1 is off,
 *   0 is greedy), top_k (int >= 0, 0 is off), seed (int >= 0),
 *   repetition_penalty (0, 2], frequency_penalty and presence_penalty
 *   [-2, 2], stop (string or array of at most LLM_MAX_STOP strings),
 *   stream (bool), ignore_eos (bool; an extension llama.cpp and vLLM share)
 *   refused: tools, functions, tool_choice, response_format, lora, image,
 *   n other than 1, logprobs, top_logprobs
 * Defaults are Workers AI's: max_tokens 256 (or the model option),
 * temperature 0.6, top_p 1, top_k off, no penalties.
 *
 * Ownership: a parsed llm_req_spec owns its strings (llm_req_free).
 * Threading: reentrant. Errors: -1 with a message for the API client
 * ("'temperature' must be a number from 0 to 5").
 */
#ifndef LLM_REQ_H
#define LLM_REQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "llm_chat.h"
#include "llm_sample.h"
#include "llm_text.h"
#include "llm_tok.h"

#define LLM_MAX_MESSAGES 4096

typedef struct llm_req_spec {
    char *prompt;          /* NULL when messages are given */
    size_t prompt_len;
    llm_chat_msg *msgs;    /* role/content strings owned by the spec */
    size_t n_msgs;
    bool raw;
    int max_tokens;        /* 0: not given (the caller's default applies) */
    llm_sampling sampling;
    char *stop[LLM_MAX_STOP];
    int n_stop;
    bool stream;
    bool ignore_eos;
} llm_req_spec;

int llm_req_parse(const char *body, size_t len, llm_req_spec *out, char *err, size_t errlen);
void llm_req_free(llm_req_spec *s);

/* The prompt as token ids: the chat template applied (unless raw), control
 * token texts parsed as the reference tokenizer parses them, BOS added if
 * the vocabulary asks for it. *ids is malloc'd. Returns 0, or -1 with a
 * message (a raw prompt with an unsupported template, out of memory). */
int llm_req_prompt_ids(const llm_req_spec *s, const llm_vocab *v, const llm_chat *chat,
                       int32_t **ids, int *n, char *err, size_t errlen);

#endif
