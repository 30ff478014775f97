/*
 * llm_tok: the tokenizer of a llama-family GGUF model, built from its
 * metadata: byte-level BPE (tokenizer.ggml.model "gpt2") with the model's
 * pre-tokenizer (tokenizer.ggml.pre), merges by rank, and special/control
 * tokens recognised in text when asked.
 *
 * Pre-tokenizers (the regex splits done before BPE, as llama.cpp and HF
 * tokenizers define them; implemented by hand over nn_unicode, no regex
 * engine):
 *   "default", "gpt-2"          the GPT-2 pattern
 *   "smollm"                    digits split one by one, then GPT-2
 *   "llama3", "llama-bpe"       the Llama 3 pattern
 *   "qwen2"                     the Qwen2 pattern
 * Any other tokenizer.ggml.model or .pre is refused at load with a message
 * naming it and the supported ones; a missing .pre means "default", as in
 * llama.cpp. (SentencePiece "llama" vocabularies are not supported yet.)
 * Ids match llama.cpp's tokenizer (llama-vocab.cpp) exactly, quirks
 * included: the Llama 3 family ignores merges for pieces that are whole
 * tokens; the texts of control, user-defined and unknown tokens are cut out
 * longest first; bytes whose byte-level character is not in the vocabulary
 * are dropped (SmolLM2 lacks 21 of the 256, e.g. 0x04 and the lead bytes of
 * U+40000..U+BFFFF), so such text does not round-trip.
 *
 * Ownership: llm_vocab_load copies what it needs out of the GGUF file; the
 * file may be closed afterwards. Outputs of llm_tokenize are the caller's.
 *
 * Threading: a loaded vocab is immutable; every function may run on any
 * number of threads at once.
 *
 * Errors: load returns -1 with a reason ("tokenizer.ggml.merges[17]: 'x y z'
 * is not two tokens"); it checks every field it reads (types, counts equal
 * to the vocabulary size, merges of two known tokens making a known token,
 * special ids in range, no duplicate token texts). Tokenizing never fails
 * on input. Invalid UTF-8 is read as llama.cpp reads it: sequences are
 * decoded by their bit patterns only (an overlong C0 AF is '/', a surrogate
 * keeps its three bytes) and any other invalid byte becomes U+FFFD, one byte
 * at a time; so decoding the ids gives back valid text unchanged, and
 * invalid text with U+FFFD in place of the bad bytes.
 */
#ifndef LLM_TOK_H
#define LLM_TOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

typedef struct llm_vocab llm_vocab;

typedef enum llm_pre {
    LLM_PRE_GPT2 = 0,
    LLM_PRE_SMOLLM,
    LLM_PRE_LLAMA3,
    LLM_PRE_QWEN2,
} llm_pre;

int llm_vocab_load(const gguf_file *f, llm_vocab **out, char *err, size_t errlen);
void llm_vocab_free(llm_vocab *v); /* NULL is a no-op */

int32_t llm_vocab_size(const llm_vocab *v);
llm_pre llm_vocab_pre(const llm_vocab *v);
/* Special ids from the metadata; -1 when absent. */
int32_t llm_vocab_bos(const llm_vocab *v);
int32_t llm_vocab_eos(const llm_vocab *v);
/* tokenizer.ggml.add_bos_token; without it, true for the Llama 3 family
 * only (llama.cpp's default). */
bool llm_vocab_add_bos(const llm_vocab *v);
/* True for tokens that end generation: eos, eot and eom
 * (tokenizer.ggml.eot_token_id, .eom_token_id), and the tokens chat
 * templates close a turn with ("<|im_end|>", "<|eot_id|>",
 * "<|end_of_text|>", "<|endoftext|>", "<end_of_turn>"), when present; like
 * llama.cpp, a token with one of those texts counts as a control token even
 * if the file types it normal. (llama.cpp also ends on the FIM pad, repo
 * and separator tokens it finds by text, e.g. SmolLM2's "<reponame>"; this
 * does not.) */
bool llm_vocab_is_eog(const llm_vocab *v, int32_t id);
/* True for control/user-defined tokens (token_type 3 or 4). */
bool llm_vocab_is_control(const llm_vocab *v, int32_t id);
/* The id of a token's exact text, or -1. */
int32_t llm_vocab_find(const llm_vocab *v, const char *text, size_t len);

/*
 * Tokenizes text[0, len). With parse_special, the texts of control and
 * unknown tokens ("<|im_start|>") found in text become their ids (longest
 * token first, as llama.cpp's tokenizer_st_partition); without it they are
 * tokenized as plain text. User-defined tokens (type 4) become their ids
 * either way, as in llama.cpp and HF tokenizers. Never adds BOS: the caller
 * decides. Appends to *ids (realloc'd; *ids may be NULL with *n == 0 and
 * *cap == 0), updating *n and *cap. Returns 0, or -1 on out of memory.
 */
int llm_tokenize(const llm_vocab *v, const char *text, size_t len, bool parse_special,
                 int32_t **ids, size_t *n, size_t *cap);

/* Bytes of token id, byte-level decoded ("Ġ" is a space); control and
 * unknown tokens give their text only if render_special, else nothing;
 * user-defined tokens always give their text; unused/undefined types give
 * nothing (all as llama.cpp). Writes at most cap
 * bytes (not NUL-terminated) and returns the full length (so a return >
 * cap means truncated). An id out of range gives 0. */
size_t llm_token_to_piece(const llm_vocab *v, int32_t id, bool render_special, char *buf,
                          size_t cap);

#endif
