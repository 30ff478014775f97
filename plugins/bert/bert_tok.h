/*
 * bert_tok: the WordPiece tokenizer of BERT-family models, read from a
 * Hugging Face tokenizer.json, producing the ids that the `tokenizers`
 * library (and so sentence-transformers) produces for a single text:
 *
 *   1. added tokens ("[CLS]", "[SEP]", ... from added_tokens) are matched in
 *      the raw text first, longest match leftmost, and kept whole;
 *   2. BertNormalizer on the pieces between them: clean_text (drop NUL,
 *      U+FFFD and Cc/Cf/Co other than \t \n \r; White_Space to ' '),
 *      handle_chinese_chars (spaces around CJK ideographs), strip_accents
 *      (NFD, drop Mn; null means "as lowercase"), lowercase (full mapping);
 *   3. BertPreTokenizer: split on White_Space, isolate every punctuation
 *      character (ASCII 33-47, 58-64, 91-96, 123-126, or category P*);
 *   4. WordPiece: greedy longest match first, continuation pieces with the
 *      continuing_subword_prefix ("##"); a word longer than
 *      max_input_chars_per_word code points, or with no match somewhere,
 *      becomes unk_token;
 *   5. [CLS] ids [SEP] (the TemplateProcessing "single" template), truncated
 *      at the end of the text to max_len ids in all, as sentence-transformers
 *      does with truncation=True, max_length=max_seq_length.
 *
 * Refused at load, with a reason: a model that is not WordPiece, a
 * normalizer other than BertNormalizer, a pre_tokenizer other than
 * BertPreTokenizer, a missing unk/[CLS]/[SEP] token, duplicate or
 * out-of-range ids, vocabularies above BERT_TOK_MAX_VOCAB entries.
 * Unicode facts come from plugins/nn/nn_unicode.h (its Unicode version may
 * differ slightly from the Rust crates the `tokenizers` library uses: see
 * docs/decisions/0008-bert-embeddings.md).
 *
 * Threading: a bert_tok is immutable after load; bert_tok_encode() is
 * reentrant (no allocation past the output it is given and a small local
 * buffer per word).
 */
#ifndef OUTPOST_BERT_TOK_H
#define OUTPOST_BERT_TOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BERT_TOK_MAX_VOCAB (1 << 22)
#define BERT_TOK_MAX_PIECE 256 /* bytes of one vocabulary entry */

typedef struct bert_tok bert_tok;

/* Reads tokenizer.json at path (at most 64 MiB). */
int bert_tok_load(const char *path, bert_tok **out, char *err, size_t errlen);
/* The same from a JSON text in memory. */
int bert_tok_load_mem(const char *json, size_t len, bert_tok **out, char *err, size_t errlen);
void bert_tok_free(bert_tok *t); /* NULL is a no-op */

/* Tokenizes text[0, len) (any bytes: invalid UTF-8 reads as U+FFFD, which
 * clean_text drops) into ids: [CLS], the text's tokens, [SEP], at most
 * max_len ids in all (max_len >= 2). Returns the number of ids written and
 * sets *truncated when tokens were cut off. Stops reading the text once it
 * knows it must truncate, so a huge text costs no more than max_len tokens.
 * ids may be NULL to only count. */
int bert_tok_encode(const bert_tok *t, const char *text, size_t len, int32_t *ids, int max_len,
                    bool *truncated);

int32_t bert_tok_id(const bert_tok *t, const char *token); /* -1 if absent */
/* The token of id (NUL-terminated), NULL if out of range. */
const char *bert_tok_token(const bert_tok *t, int32_t id);
int32_t bert_tok_vocab_size(const bert_tok *t);   /* 1 + the largest id */
int32_t bert_tok_cls(const bert_tok *t);
int32_t bert_tok_sep(const bert_tok *t);

#endif
