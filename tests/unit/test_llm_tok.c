/*
 * Unit tests for the byte-level BPE tokenizer (plugins/llama/llm_tok.c,
 * compiled in here so the pre-tokenizers can be checked piece by piece).
 *
 *  - pre-tokenizers: every split of tricky strings against tables made with
 *    HF tokenizers' own regex engine (pre_tokenize_str with the exact GPT-2,
 *    Llama 3 and Qwen2 patterns, and Digits+GPT-2 for smollm);
 *  - a toy vocabulary built as a GGUF file in memory: merge order by rank,
 *    leftmost ties, a 100 KB one-letter word, special and user-defined
 *    tokens, ignore_merges, invalid UTF-8, decoding;
 *  - malicious vocabulary metadata, each refused with its reason, and
 *    random mutations of a valid file (placed against an unreadable page)
 *    that must never crash;
 *  - the shipped SmolLM2 model: golden ids from llama.cpp
 *    (tests/data/golden/smollm2_tokens.json), round trips of random UTF-8
 *    and random bytes, and throughput. Skipped, visibly, without the model.
 */
#include "../../plugins/llama/gguf.c"
#include "../../plugins/llama/llm_tok.c"

#include <criterion/criterion.h>

#include "ts_gguf.h"
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#ifndef OUTPOST_MODELS_DIR
#define OUTPOST_MODELS_DIR "models"
#endif
#ifndef OUTPOST_SOURCE_DIR
#define OUTPOST_SOURCE_DIR "."
#endif
#define SMOLLM2 OUTPOST_MODELS_DIR "/SmolLM2-135M-Instruct.Q4_1.gguf"
#define GOLDEN_TOKENS OUTPOST_SOURCE_DIR "/tests/data/golden/smollm2_tokens.json"

#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#else
#define SANITIZED 0
#endif

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* ========================================================================
 * Pre-tokenizers
 * ======================================================================== */

typedef struct pretok_case {
    const char *text;
    const char *pieces[48]; /* NULL-terminated */
} pretok_case;

/* Generated with HF tokenizers 0.23.3: pre_tokenizers.Split(Regex(P),
 * "isolated").pre_tokenize_str(text) for the pattern P of each family
 * (llm_tok.h), and Sequence([Digits(individual_digits=True), Split(GPT-2)])
 * for smollm. */
static const pretok_case pretok_gpt2[] = {
    {"Hello world", {"Hello", " world", NULL}},
    {"Hello, world!", {"Hello", ",", " world", "!", NULL}},
    {"  two spaces", {" ", " two", " spaces", NULL}},
    {"x   ", {"x", "   ", NULL}},
    {"a  b   c", {"a", " ", " b", "  ", " c", NULL}},
    {"\x09\x09indent\x0A    code", {"\x09", "\x09", "indent", "\x0A   ", " code", NULL}},
    {"line1\x0Aline2\x0D\x0Aline3\x0Dline4", {"line", "1", "\x0A", "line", "2", "\x0D", "\x0A", "line", "3", "\x0D", "line", "4", NULL}},
    {"   \x0A  \x0A\x09 \x0A", {"   \x0A  \x0A\x09 \x0A", NULL}},
    {"word \x0A next  \x0A\x0A after", {"word", " \x0A", " next", "  \x0A\x0A", " after", NULL}},
    {"I'm sure you're right, don't worry: they'll see we've won.", {"I", "'m", " sure", " you", "'re", " right", ",", " don", "'t", " worry", ":", " they", "'ll", " see", " we", "'ve", " won", ".", NULL}},
    {"I'M YOU'RE DON'T IT'S WE'LL", {"I", "'", "M", " YOU", "'", "RE", " DON", "'", "T", " IT", "'", "S", " WE", "'", "LL", NULL}},
    {"rock 'n' roll, the '90s, 's, 'S, o'clock", {"rock", " '", "n", "'", " roll", ",", " the", " '", "90", "s", ",", " '", "s", ",", " '", "S", ",", " o", "'", "clock", NULL}},
    {"'ll", {"'ll", NULL}},
    {"'", {"'", NULL}},
    {"''", {"''", NULL}},
    {" 's", {" '", "s", NULL}},
    {"12345", {"12345", NULL}},
    {"1234567 89", {"1234567", " 89", NULL}},
    {"3.14159 -2.5e-10", {"3", ".", "14159", " -", "2", ".", "5", "e", "-", "10", NULL}},
    {"abc123def 4th 21st 100%", {"abc", "123", "def", " 4", "th", " 21", "st", " 100", "%", NULL}},
    {" 42", {" 42", NULL}},
    {"x 1 2", {"x", " 1", " 2", NULL}},
    {"\xD9\xA3\xD9\xA4\xD9\xA5\xD9\xA6 \xC2\xB2\xC2\xBD \xE2\x85\xA7", {"\xD9\xA3\xD9\xA4\xD9\xA5\xD9\xA6", " \xC2\xB2\xC2\xBD", " \xE2\x85\xA7", NULL}},
    {"!!! ... ?!?! -- ***", {"!!!", " ...", " ?!?!", " --", " ***", NULL}},
    {"(a) [b] {c} <d>", {"(", "a", ")", " [", "b", "]", " {", "c", "}", " <", "d", ">", NULL}},
    {" (x", {" (", "x", NULL}},
    {"  (x", {" ", " (", "x", NULL}},
    {"a\xC2\xA0" "b c\xE2\x80\x8B" "d e\xE2\x80\x89" "f", {"a", "\xC2\xA0", "b", " c", "\xE2\x80\x8B", "d", " e", "\xE2\x80\x89", "f", NULL}},
    {"\xE3\x80\x80\xE3\x80\x80wide", {"\xE3\x80\x80", "\xE3\x80\x80", "wide", NULL}},
    {"x\xE2\x80\xA8y\xC2\x85z", {"x", "\xE2\x80\xA8", "y", "\xC2\x85", "z", NULL}},
    {"caf\xC3\xA9 na\xC3\xAFve", {"caf\xC3\xA9", " na\xC3\xAFve", NULL}},
    {"e\xCC\x81 a\xCC\x88", {"e", "\xCC\x81", " a", "\xCC\x88", NULL}},
    {"\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82, \xD0\xBC\xD0\xB8\xD1\x80!", {"\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82", ",", " \xD0\xBC\xD0\xB8\xD1\x80", "!", NULL}},
    {"\xE4\xBD\xA0\xE5\xA5\xBD\xEF\xBC\x8C\xE4\xB8\x96\xE7\x95\x8C\xE3\x80\x82", {"\xE4\xBD\xA0\xE5\xA5\xBD", "\xEF\xBC\x8C", "\xE4\xB8\x96\xE7\x95\x8C", "\xE3\x80\x82", NULL}},
    {"Hello \xF0\x9F\x91\x8B\xF0\x9F\x8C\x8D! Nice", {"Hello", " \xF0\x9F\x91\x8B\xF0\x9F\x8C\x8D!", " Nice", NULL}},
    {"\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7", {"\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7", NULL}},
    {"<|im_start|>user\x0Ahi<|im_end|>", {"<|", "im", "_", "start", "|>", "user", "\x0A", "hi", "<|", "im", "_", "end", "|>", NULL}},
    {"a\x0A\x0A" "b", {"a", "\x0A", "\x0A", "b", NULL}},
    {"a \x0A b", {"a", " \x0A", " b", NULL}},
    {".\x0A\x0A", {".", "\x0A\x0A", NULL}},
    {"x:\x0D\x0A\x0D\x0A", {"x", ":", "\x0D\x0A\x0D\x0A", NULL}},
    {"\x0A", {"\x0A", NULL}},
    {" ", {" ", NULL}},
    {"  ", {"  ", NULL}},
    {"", {NULL}},
    {"\xEF\xBB\xBFstart", {"\xEF\xBB\xBF", "start", NULL}},
    {"\x01\x1B[31mred\x7F", {"\x01\x1B[", "31", "mred", "\x7F", NULL}},
    {"_private __dunder__", {"_", "private", " __", "dunder", "__", NULL}},
    {"$5 + $10 = $15", {"$", "5", " +", " $", "10", " =", " $", "15", NULL}},
    {"foo.bar(baz)", {"foo", ".", "bar", "(", "baz", ")", NULL}},
    {"http://example.com/a?b=c&d=e#f", {"http", "://", "example", ".", "com", "/", "a", "?", "b", "=", "c", "&", "d", "=", "e", "#", "f", NULL}},
};

static const pretok_case pretok_smollm[] = {
    {"Hello world", {"Hello", " world", NULL}},
    {"Hello, world!", {"Hello", ",", " world", "!", NULL}},
    {"  two spaces", {" ", " two", " spaces", NULL}},
    {"x   ", {"x", "   ", NULL}},
    {"a  b   c", {"a", " ", " b", "  ", " c", NULL}},
    {"\x09\x09indent\x0A    code", {"\x09", "\x09", "indent", "\x0A   ", " code", NULL}},
    {"line1\x0Aline2\x0D\x0Aline3\x0Dline4", {"line", "1", "\x0A", "line", "2", "\x0D", "\x0A", "line", "3", "\x0D", "line", "4", NULL}},
    {"   \x0A  \x0A\x09 \x0A", {"   \x0A  \x0A\x09 \x0A", NULL}},
    {"word \x0A next  \x0A\x0A after", {"word", " \x0A", " next", "  \x0A\x0A", " after", NULL}},
    {"I'm sure you're right, don't worry: they'll see we've won.", {"I", "'m", " sure", " you", "'re", " right", ",", " don", "'t", " worry", ":", " they", "'ll", " see", " we", "'ve", " won", ".", NULL}},
    {"I'M YOU'RE DON'T IT'S WE'LL", {"I", "'", "M", " YOU", "'", "RE", " DON", "'", "T", " IT", "'", "S", " WE", "'", "LL", NULL}},
    {"rock 'n' roll, the '90s, 's, 'S, o'clock", {"rock", " '", "n", "'", " roll", ",", " the", " '", "9", "0", "s", ",", " '", "s", ",", " '", "S", ",", " o", "'", "clock", NULL}},
    {"'ll", {"'ll", NULL}},
    {"'", {"'", NULL}},
    {"''", {"''", NULL}},
    {" 's", {" '", "s", NULL}},
    {"12345", {"1", "2", "3", "4", "5", NULL}},
    {"1234567 89", {"1", "2", "3", "4", "5", "6", "7", " ", "8", "9", NULL}},
    {"3.14159 -2.5e-10", {"3", ".", "1", "4", "1", "5", "9", " -", "2", ".", "5", "e", "-", "1", "0", NULL}},
    {"abc123def 4th 21st 100%", {"abc", "1", "2", "3", "def", " ", "4", "th", " ", "2", "1", "st", " ", "1", "0", "0", "%", NULL}},
    {" 42", {" ", "4", "2", NULL}},
    {"x 1 2", {"x", " ", "1", " ", "2", NULL}},
    {"\xD9\xA3\xD9\xA4\xD9\xA5\xD9\xA6 \xC2\xB2\xC2\xBD \xE2\x85\xA7", {"\xD9\xA3", "\xD9\xA4", "\xD9\xA5", "\xD9\xA6", " ", "\xC2\xB2", "\xC2\xBD", " ", "\xE2\x85\xA7", NULL}},
    {"!!! ... ?!?! -- ***", {"!!!", " ...", " ?!?!", " --", " ***", NULL}},
    {"(a) [b] {c} <d>", {"(", "a", ")", " [", "b", "]", " {", "c", "}", " <", "d", ">", NULL}},
    {" (x", {" (", "x", NULL}},
    {"  (x", {" ", " (", "x", NULL}},
    {"a\xC2\xA0" "b c\xE2\x80\x8B" "d e\xE2\x80\x89" "f", {"a", "\xC2\xA0", "b", " c", "\xE2\x80\x8B", "d", " e", "\xE2\x80\x89", "f", NULL}},
    {"\xE3\x80\x80\xE3\x80\x80wide", {"\xE3\x80\x80", "\xE3\x80\x80", "wide", NULL}},
    {"x\xE2\x80\xA8y\xC2\x85z", {"x", "\xE2\x80\xA8", "y", "\xC2\x85", "z", NULL}},
    {"caf\xC3\xA9 na\xC3\xAFve", {"caf\xC3\xA9", " na\xC3\xAFve", NULL}},
    {"e\xCC\x81 a\xCC\x88", {"e", "\xCC\x81", " a", "\xCC\x88", NULL}},
    {"\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82, \xD0\xBC\xD0\xB8\xD1\x80!", {"\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82", ",", " \xD0\xBC\xD0\xB8\xD1\x80", "!", NULL}},
    {"\xE4\xBD\xA0\xE5\xA5\xBD\xEF\xBC\x8C\xE4\xB8\x96\xE7\x95\x8C\xE3\x80\x82", {"\xE4\xBD\xA0\xE5\xA5\xBD", "\xEF\xBC\x8C", "\xE4\xB8\x96\xE7\x95\x8C", "\xE3\x80\x82", NULL}},
    {"Hello \xF0\x9F\x91\x8B\xF0\x9F\x8C\x8D! Nice", {"Hello", " \xF0\x9F\x91\x8B\xF0\x9F\x8C\x8D!", " Nice", NULL}},
    {"\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7", {"\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7", NULL}},
    {"<|im_start|>user\x0Ahi<|im_end|>", {"<|", "im", "_", "start", "|>", "user", "\x0A", "hi", "<|", "im", "_", "end", "|>", NULL}},
    {"a\x0A\x0A" "b", {"a", "\x0A", "\x0A", "b", NULL}},
    {"a \x0A b", {"a", " \x0A", " b", NULL}},
    {".\x0A\x0A", {".", "\x0A\x0A", NULL}},
    {"x:\x0D\x0A\x0D\x0A", {"x", ":", "\x0D\x0A\x0D\x0A", NULL}},
    {"\x0A", {"\x0A", NULL}},
    {" ", {" ", NULL}},
    {"  ", {"  ", NULL}},
    {"", {NULL}},
    {"\xEF\xBB\xBFstart", {"\xEF\xBB\xBF", "start", NULL}},
    {"\x01\x1B[31mred\x7F", {"\x01\x1B[", "3", "1", "mred", "\x7F", NULL}},
    {"_private __dunder__", {"_", "private", " __", "dunder", "__", NULL}},
    {"$5 + $10 = $15", {"$", "5", " +", " $", "1", "0", " =", " $", "1", "5", NULL}},
    {"foo.bar(baz)", {"foo", ".", "bar", "(", "baz", ")", NULL}},
    {"http://example.com/a?b=c&d=e#f", {"http", "://", "example", ".", "com", "/", "a", "?", "b", "=", "c", "&", "d", "=", "e", "#", "f", NULL}},
};

static const pretok_case pretok_llama3[] = {
    {"Hello world", {"Hello", " world", NULL}},
    {"Hello, world!", {"Hello", ",", " world", "!", NULL}},
    {"  two spaces", {" ", " two", " spaces", NULL}},
    {"x   ", {"x", "   ", NULL}},
    {"a  b   c", {"a", " ", " b", "  ", " c", NULL}},
    {"\x09\x09indent\x0A    code", {"\x09", "\x09indent", "\x0A", "   ", " code", NULL}},
    {"line1\x0Aline2\x0D\x0Aline3\x0Dline4", {"line", "1", "\x0A", "line", "2", "\x0D\x0A", "line", "3", "\x0D", "line", "4", NULL}},
    {"   \x0A  \x0A\x09 \x0A", {"   \x0A  \x0A\x09 \x0A", NULL}},
    {"word \x0A next  \x0A\x0A after", {"word", " \x0A", " next", "  \x0A\x0A", " after", NULL}},
    {"I'm sure you're right, don't worry: they'll see we've won.", {"I", "'m", " sure", " you", "'re", " right", ",", " don", "'t", " worry", ":", " they", "'ll", " see", " we", "'ve", " won", ".", NULL}},
    {"I'M YOU'RE DON'T IT'S WE'LL", {"I", "'M", " YOU", "'RE", " DON", "'T", " IT", "'S", " WE", "'LL", NULL}},
    {"rock 'n' roll, the '90s, 's, 'S, o'clock", {"rock", " '", "n", "'", " roll", ",", " the", " '", "90", "s", ",", " '", "s", ",", " '", "S", ",", " o", "'clock", NULL}},
    {"'ll", {"'ll", NULL}},
    {"'", {"'", NULL}},
    {"''", {"''", NULL}},
    {" 's", {" '", "s", NULL}},
    {"12345", {"123", "45", NULL}},
    {"1234567 89", {"123", "456", "7", " ", "89", NULL}},
    {"3.14159 -2.5e-10", {"3", ".", "141", "59", " -", "2", ".", "5", "e", "-", "10", NULL}},
    {"abc123def 4th 21st 100%", {"abc", "123", "def", " ", "4", "th", " ", "21", "st", " ", "100", "%", NULL}},
    {" 42", {" ", "42", NULL}},
    {"x 1 2", {"x", " ", "1", " ", "2", NULL}},
    {"\xD9\xA3\xD9\xA4\xD9\xA5\xD9\xA6 \xC2\xB2\xC2\xBD \xE2\x85\xA7", {"\xD9\xA3\xD9\xA4\xD9\xA5", "\xD9\xA6", " ", "\xC2\xB2\xC2\xBD", " ", "\xE2\x85\xA7", NULL}},
    {"!!! ... ?!?! -- ***", {"!!!", " ...", " ?!?!", " --", " ***", NULL}},
    {"(a) [b] {c} <d>", {"(a", ")", " [", "b", "]", " {", "c", "}", " <", "d", ">", NULL}},
    {" (x", {" (", "x", NULL}},
    {"  (x", {" ", " (", "x", NULL}},
    {"a\xC2\xA0" "b c\xE2\x80\x8B" "d e\xE2\x80\x89" "f", {"a", "\xC2\xA0" "b", " c", "\xE2\x80\x8B" "d", " e", "\xE2\x80\x89" "f", NULL}},
    {"\xE3\x80\x80\xE3\x80\x80wide", {"\xE3\x80\x80", "\xE3\x80\x80wide", NULL}},
    {"x\xE2\x80\xA8y\xC2\x85z", {"x", "\xE2\x80\xA8y", "\xC2\x85z", NULL}},
    {"caf\xC3\xA9 na\xC3\xAFve", {"caf\xC3\xA9", " na\xC3\xAFve", NULL}},
    {"e\xCC\x81 a\xCC\x88", {"e", "\xCC\x81", " a", "\xCC\x88", NULL}},
    {"\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82, \xD0\xBC\xD0\xB8\xD1\x80!", {"\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82", ",", " \xD0\xBC\xD0\xB8\xD1\x80", "!", NULL}},
    {"\xE4\xBD\xA0\xE5\xA5\xBD\xEF\xBC\x8C\xE4\xB8\x96\xE7\x95\x8C\xE3\x80\x82", {"\xE4\xBD\xA0\xE5\xA5\xBD", "\xEF\xBC\x8C\xE4\xB8\x96\xE7\x95\x8C", "\xE3\x80\x82", NULL}},
    {"Hello \xF0\x9F\x91\x8B\xF0\x9F\x8C\x8D! Nice", {"Hello", " \xF0\x9F\x91\x8B\xF0\x9F\x8C\x8D!", " Nice", NULL}},
    {"\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7", {"\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7", NULL}},
    {"<|im_start|>user\x0Ahi<|im_end|>", {"<|", "im", "_start", "|>", "user", "\x0A", "hi", "<|", "im", "_end", "|>", NULL}},
    {"a\x0A\x0A" "b", {"a", "\x0A\x0A", "b", NULL}},
    {"a \x0A b", {"a", " \x0A", " b", NULL}},
    {".\x0A\x0A", {".\x0A\x0A", NULL}},
    {"x:\x0D\x0A\x0D\x0A", {"x", ":\x0D\x0A\x0D\x0A", NULL}},
    {"\x0A", {"\x0A", NULL}},
    {" ", {" ", NULL}},
    {"  ", {"  ", NULL}},
    {"", {NULL}},
    {"\xEF\xBB\xBFstart", {"\xEF\xBB\xBFstart", NULL}},
    {"\x01\x1B[31mred\x7F", {"\x01\x1B[", "31", "mred", "\x7F", NULL}},
    {"_private __dunder__", {"_private", " __", "dunder", "__", NULL}},
    {"$5 + $10 = $15", {"$", "5", " +", " $", "10", " =", " $", "15", NULL}},
    {"foo.bar(baz)", {"foo", ".bar", "(baz", ")", NULL}},
    {"http://example.com/a?b=c&d=e#f", {"http", "://", "example", ".com", "/a", "?b", "=c", "&d", "=e", "#f", NULL}},
};

static const pretok_case pretok_qwen2[] = {
    {"Hello world", {"Hello", " world", NULL}},
    {"Hello, world!", {"Hello", ",", " world", "!", NULL}},
    {"  two spaces", {" ", " two", " spaces", NULL}},
    {"x   ", {"x", "   ", NULL}},
    {"a  b   c", {"a", " ", " b", "  ", " c", NULL}},
    {"\x09\x09indent\x0A    code", {"\x09", "\x09indent", "\x0A", "   ", " code", NULL}},
    {"line1\x0Aline2\x0D\x0Aline3\x0Dline4", {"line", "1", "\x0A", "line", "2", "\x0D\x0A", "line", "3", "\x0D", "line", "4", NULL}},
    {"   \x0A  \x0A\x09 \x0A", {"   \x0A  \x0A\x09 \x0A", NULL}},
    {"word \x0A next  \x0A\x0A after", {"word", " \x0A", " next", "  \x0A\x0A", " after", NULL}},
    {"I'm sure you're right, don't worry: they'll see we've won.", {"I", "'m", " sure", " you", "'re", " right", ",", " don", "'t", " worry", ":", " they", "'ll", " see", " we", "'ve", " won", ".", NULL}},
    {"I'M YOU'RE DON'T IT'S WE'LL", {"I", "'M", " YOU", "'RE", " DON", "'T", " IT", "'S", " WE", "'LL", NULL}},
    {"rock 'n' roll, the '90s, 's, 'S, o'clock", {"rock", " '", "n", "'", " roll", ",", " the", " '", "9", "0", "s", ",", " '", "s", ",", " '", "S", ",", " o", "'clock", NULL}},
    {"'ll", {"'ll", NULL}},
    {"'", {"'", NULL}},
    {"''", {"''", NULL}},
    {" 's", {" '", "s", NULL}},
    {"12345", {"1", "2", "3", "4", "5", NULL}},
    {"1234567 89", {"1", "2", "3", "4", "5", "6", "7", " ", "8", "9", NULL}},
    {"3.14159 -2.5e-10", {"3", ".", "1", "4", "1", "5", "9", " -", "2", ".", "5", "e", "-", "1", "0", NULL}},
    {"abc123def 4th 21st 100%", {"abc", "1", "2", "3", "def", " ", "4", "th", " ", "2", "1", "st", " ", "1", "0", "0", "%", NULL}},
    {" 42", {" ", "4", "2", NULL}},
    {"x 1 2", {"x", " ", "1", " ", "2", NULL}},
    {"\xD9\xA3\xD9\xA4\xD9\xA5\xD9\xA6 \xC2\xB2\xC2\xBD \xE2\x85\xA7", {"\xD9\xA3", "\xD9\xA4", "\xD9\xA5", "\xD9\xA6", " ", "\xC2\xB2", "\xC2\xBD", " ", "\xE2\x85\xA7", NULL}},
    {"!!! ... ?!?! -- ***", {"!!!", " ...", " ?!?!", " --", " ***", NULL}},
    {"(a) [b] {c} <d>", {"(a", ")", " [", "b", "]", " {", "c", "}", " <", "d", ">", NULL}},
    {" (x", {" (", "x", NULL}},
    {"  (x", {" ", " (", "x", NULL}},
    {"a\xC2\xA0" "b c\xE2\x80\x8B" "d e\xE2\x80\x89" "f", {"a", "\xC2\xA0" "b", " c", "\xE2\x80\x8B" "d", " e", "\xE2\x80\x89" "f", NULL}},
    {"\xE3\x80\x80\xE3\x80\x80wide", {"\xE3\x80\x80", "\xE3\x80\x80wide", NULL}},
    {"x\xE2\x80\xA8y\xC2\x85z", {"x", "\xE2\x80\xA8y", "\xC2\x85z", NULL}},
    {"caf\xC3\xA9 na\xC3\xAFve", {"caf\xC3\xA9", " na\xC3\xAFve", NULL}},
    {"e\xCC\x81 a\xCC\x88", {"e", "\xCC\x81", " a", "\xCC\x88", NULL}},
    {"\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82, \xD0\xBC\xD0\xB8\xD1\x80!", {"\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82", ",", " \xD0\xBC\xD0\xB8\xD1\x80", "!", NULL}},
    {"\xE4\xBD\xA0\xE5\xA5\xBD\xEF\xBC\x8C\xE4\xB8\x96\xE7\x95\x8C\xE3\x80\x82", {"\xE4\xBD\xA0\xE5\xA5\xBD", "\xEF\xBC\x8C\xE4\xB8\x96\xE7\x95\x8C", "\xE3\x80\x82", NULL}},
    {"Hello \xF0\x9F\x91\x8B\xF0\x9F\x8C\x8D! Nice", {"Hello", " \xF0\x9F\x91\x8B\xF0\x9F\x8C\x8D!", " Nice", NULL}},
    {"\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7", {"\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7", NULL}},
    {"<|im_start|>user\x0Ahi<|im_end|>", {"<|", "im", "_start", "|>", "user", "\x0A", "hi", "<|", "im", "_end", "|>", NULL}},
    {"a\x0A\x0A" "b", {"a", "\x0A\x0A", "b", NULL}},
    {"a \x0A b", {"a", " \x0A", " b", NULL}},
    {".\x0A\x0A", {".\x0A\x0A", NULL}},
    {"x:\x0D\x0A\x0D\x0A", {"x", ":\x0D\x0A\x0D\x0A", NULL}},
    {"\x0A", {"\x0A", NULL}},
    {" ", {" ", NULL}},
    {"  ", {"  ", NULL}},
    {"", {NULL}},
    {"\xEF\xBB\xBFstart", {"\xEF\xBB\xBFstart", NULL}},
    {"\x01\x1B[31mred\x7F", {"\x01\x1B[", "3", "1", "mred", "\x7F", NULL}},
    {"_private __dunder__", {"_private", " __", "dunder", "__", NULL}},
    {"$5 + $10 = $15", {"$", "5", " +", " $", "1", "0", " =", " $", "1", "5", NULL}},
    {"foo.bar(baz)", {"foo", ".bar", "(baz", ")", NULL}},
    {"http://example.com/a?b=c&d=e#f", {"http", "://", "example", ".com", "/a", "?b", "=c", "&d", "=e", "#f", NULL}},
};

typedef struct recorder {
    char out[4096];
    size_t len;
    size_t n;
} recorder;

static recorder *rec_now;

static void record_piece(tok_ctx *t, size_t lo, size_t hi)
{
    recorder *r = rec_now;
    for (size_t i = lo; i < hi; i++) {
        unsigned char b[4];
        size_t k = tok_encode(t->cps[i], b);
        cr_assert_lt(r->len + k + 1, sizeof r->out);
        memcpy(r->out + r->len, b, k);
        r->len += k;
    }
    r->out[r->len++] = '\0'; /* pieces separated by NULs */
    r->n++;
}

static void check_pretok(llm_pre pre, const pretok_case *cases, size_t n)
{
    llm_vocab v = {.pre = pre};
    for (size_t c = 0; c < n; c++) {
        recorder r = {.len = 0};
        rec_now = &r;
        tok_ctx t = {.v = &v, .on_piece = record_piece};
        fragment(&t, cases[c].text, strlen(cases[c].text));
        cr_assert_not(t.oom);
        free(t.cps);
        free(t.cls);
        size_t want = 0, off = 0;
        for (; cases[c].pieces[want]; want++) {
            const char *p = cases[c].pieces[want];
            cr_expect(off < r.len && strcmp(r.out + off, p) == 0,
                      "pre %d, \"%s\": piece %zu is \"%s\", want \"%s\"", pre, cases[c].text, want,
                      off < r.len ? r.out + off : "(none)", p);
            if (off < r.len)
                off += strlen(r.out + off) + 1;
        }
        cr_expect_eq(r.n, want, "pre %d, \"%s\": %zu pieces, want %zu", pre, cases[c].text, r.n, want);
    }
}

Test(pretok, gpt2) { check_pretok(LLM_PRE_GPT2, pretok_gpt2, COUNT(pretok_gpt2)); }
Test(pretok, smollm) { check_pretok(LLM_PRE_SMOLLM, pretok_smollm, COUNT(pretok_smollm)); }
Test(pretok, llama3) { check_pretok(LLM_PRE_LLAMA3, pretok_llama3, COUNT(pretok_llama3)); }
Test(pretok, qwen2) { check_pretok(LLM_PRE_QWEN2, pretok_qwen2, COUNT(pretok_qwen2)); }

/* ========================================================================
 * GGUF writer (a vocabulary only: no tensors)
 * ======================================================================== */

/* A vocabulary under construction: its key/values as ts_gguf bytes, and how
 * many keys they hold (the header comes last, in w_finish). */
typedef struct kvbuf {
    ts_wbuf b;
    uint64_t n_kv;
} kvbuf;

static void w_key(kvbuf *w, const char *key, gguf_type t)
{
    ts_w_key(&w->b, key, (uint32_t)t);
    w->n_kv++;
}

static void kv_str(kvbuf *w, const char *key, const char *val)
{
    w_key(w, key, GGUF_TYPE_STRING);
    ts_w_str(&w->b, val);
}

static void kv_u32(kvbuf *w, const char *key, uint32_t v)
{
    w_key(w, key, GGUF_TYPE_UINT32);
    ts_w_u32(&w->b, v);
}

/* The file: header, then the key/values written so far. */
static ts_wbuf w_finish(const kvbuf *kvs)
{
    ts_wbuf f = {0};
    ts_w_hdr(&f, 3, 0, kvs->n_kv);
    ts_w_bytes(&f, kvs->b.p, kvs->b.len);
    return f;
}

/* GPT-2's bytes_to_unicode, written out independently of llm_tok.c. */
static size_t byte_char(unsigned b, char out[4])
{
    unsigned cp;
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE) {
        cp = b;
    } else {
        unsigned k = 0;
        for (unsigned x = 0; x < b; x++)
            if (!((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE))
                k++;
        cp = 256 + k;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

/* ========================================================================
 * The toy vocabulary
 * ======================================================================== */

/* ids 0..255: the byte-level character of byte id (so byte b is token b);
 * then these: */
static const struct {
    const char *text;
    int type;
} toy_extra[] = {
    {"<|endoftext|>", 3}, /* 256 */
    {"<|im_start|>", 3},  /* 257 */
    {"<|im_end|>", 3},    /* 258 */
    {"<tool>", 4},        /* 259 user-defined */
    {"ab", 1},            /* 260 */
    {"bc", 1},            /* 261 */
    {"abc", 1},           /* 262 */
    {"aa", 1},            /* 263 */
    {"aaaa", 1},          /* 264 */
    {"\xC4\xA0" "a", 1},  /* 265 " a" */
    {"<|im", 3},          /* 266 */
    {"xyz", 1},           /* 267: no merges lead here */
    {"<unk>", 2},         /* 268 unknown */
    {"unused", 5},        /* 269 */
};
#define TOY_N (256 + (int)COUNT(toy_extra))

static const char *const toy_merges[] = {"a b", "b c", "ab c", "a a", "aa aa", "\xC4\xA0 a", NULL};

/* How a key is written: K_OK (the zero value) is the valid default. */
typedef enum { K_OK = 0, K_OMIT, K_ALT1, K_ALT2, K_ALT3, K_ALT4 } kmode;

typedef struct toy_opts {
    const char *model;         /* NULL: "gpt2" */
    bool no_model;
    const char *pre;           /* NULL: "smollm" */
    bool no_pre;
    kmode tokens;              /* OK; ALT1 array of u32; ALT2 a string; ALT3 empty; ALT4 a duplicate */
    kmode types;               /* OK; OMIT; ALT1 u8 array; ALT2 one short; ALT3 value 7; ALT4 -1 */
    kmode merges;              /* OK; OMIT; ALT1 int32 array */
    const char *const *merge_list; /* NULL: toy_merges */
    const char *extra_merge;   /* appended */
    kmode bos;                 /* OK (u32 257); OMIT; ALT1 = TOY_N; ALT2 string; ALT3 int32 -1; ALT4 int32 -7 */
    int add_bos;               /* 0 absent; 1 bool true; 2 a uint8 */
    const char *drop_byte;     /* this byte's token text is replaced by "drop" */
} toy_opts;

static ts_wbuf toy_file(const toy_opts *o)
{
    kvbuf w = {0};
    w_key(&w, "general.architecture", GGUF_TYPE_STRING);
    ts_w_str(&w.b, "llama");
    if (!o->no_model)
        kv_str(&w, "tokenizer.ggml.model", o->model ? o->model : "gpt2");
    if (!o->no_pre)
        kv_str(&w, "tokenizer.ggml.pre", o->pre ? o->pre : "smollm");

    int n = TOY_N;
    switch (o->tokens) {
    case K_OMIT:
        break;
    case K_ALT1:
        w_key(&w, "tokenizer.ggml.tokens", GGUF_TYPE_ARRAY);
        ts_w_u32(&w.b, GGUF_TYPE_UINT32);
        ts_w_u64(&w.b, 2);
        ts_w_u32(&w.b, 1);
        ts_w_u32(&w.b, 2);
        break;
    case K_ALT2:
        kv_str(&w, "tokenizer.ggml.tokens", "abc");
        break;
    case K_ALT3:
        w_key(&w, "tokenizer.ggml.tokens", GGUF_TYPE_ARRAY);
        ts_w_u32(&w.b, GGUF_TYPE_STRING);
        ts_w_u64(&w.b, 0);
        break;
    default:
        w_key(&w, "tokenizer.ggml.tokens", GGUF_TYPE_ARRAY);
        ts_w_u32(&w.b, GGUF_TYPE_STRING);
        ts_w_u64(&w.b, (uint64_t)n);
        for (unsigned b = 0; b < 256; b++) {
            char c[4];
            size_t k = byte_char(b, c);
            if (o->drop_byte && (unsigned char)o->drop_byte[0] == b)
                ts_w_str(&w.b, "drop");
            else
                ts_w_strn(&w.b, c, k);
        }
        for (size_t i = 0; i < COUNT(toy_extra); i++)
            ts_w_str(&w.b, o->tokens == K_ALT4 && i == 5 ? "ab" : toy_extra[i].text);
        break;
    }

    if (o->types != K_OMIT) {
        w_key(&w, "tokenizer.ggml.token_type", GGUF_TYPE_ARRAY);
        ts_w_u32(&w.b, o->types == K_ALT1 ? GGUF_TYPE_UINT8 : GGUF_TYPE_INT32);
        int cnt = o->types == K_ALT2 ? n - 1 : n;
        ts_w_u64(&w.b, (uint64_t)cnt);
        for (int i = 0; i < cnt; i++) {
            int32_t t = i < 256 ? 1 : toy_extra[i - 256].type;
            if (o->types == K_ALT3 && i == 100)
                t = 7;
            if (o->types == K_ALT4 && i == 100)
                t = -1;
            if (o->types == K_ALT1)
                ts_w_u8(&w.b, (uint8_t)t);
            else
                ts_w_u32(&w.b, (uint32_t)t);
        }
    }

    if (o->merges == K_ALT1) {
        w_key(&w, "tokenizer.ggml.merges", GGUF_TYPE_ARRAY);
        ts_w_u32(&w.b, GGUF_TYPE_INT32);
        ts_w_u64(&w.b, 1);
        ts_w_u32(&w.b, 5);
    } else if (o->merges != K_OMIT) {
        const char *const *ml = o->merge_list ? o->merge_list : toy_merges;
        size_t cnt = 0;
        while (ml[cnt])
            cnt++;
        w_key(&w, "tokenizer.ggml.merges", GGUF_TYPE_ARRAY);
        ts_w_u32(&w.b, GGUF_TYPE_STRING);
        ts_w_u64(&w.b, cnt + (o->extra_merge ? 1 : 0));
        for (size_t i = 0; i < cnt; i++)
            ts_w_str(&w.b, ml[i]);
        if (o->extra_merge)
            ts_w_str(&w.b, o->extra_merge);
    }

    switch (o->bos) {
    case K_OK: kv_u32(&w, "tokenizer.ggml.bos_token_id", 257); break;
    case K_ALT1: kv_u32(&w, "tokenizer.ggml.bos_token_id", (uint32_t)TOY_N); break;
    case K_ALT2: kv_str(&w, "tokenizer.ggml.bos_token_id", "1"); break;
    case K_ALT3:
        w_key(&w, "tokenizer.ggml.bos_token_id", GGUF_TYPE_INT32);
        ts_w_u32(&w.b, (uint32_t)-1);
        break;
    case K_ALT4:
        w_key(&w, "tokenizer.ggml.bos_token_id", GGUF_TYPE_INT32);
        ts_w_u32(&w.b, (uint32_t)-7);
        break;
    default: break;
    }
    kv_u32(&w, "tokenizer.ggml.eos_token_id", 258);
    if (o->add_bos == 1) {
        w_key(&w, "tokenizer.ggml.add_bos_token", GGUF_TYPE_BOOL);
        ts_w_u8(&w.b, 1);
    } else if (o->add_bos == 2) {
        w_key(&w, "tokenizer.ggml.add_bos_token", GGUF_TYPE_UINT8);
        ts_w_u8(&w.b, 1);
    }
    ts_wbuf f = w_finish(&w);
    free(w.b.p);
    return f;
}

static toy_opts toy_defaults(void)
{
    return (toy_opts){0};
}

typedef struct toy {
    ts_wbuf file;
    gguf_file *g;
    llm_vocab *v;
} toy;

static toy toy_load(const toy_opts *o)
{
    toy t = {.file = toy_file(o)};
    char err[256];
    cr_assert_eq(gguf_open_mem(t.file.p, t.file.len, &t.g, err, sizeof err), 0, "%s", err);
    cr_assert_eq(llm_vocab_load(t.g, &t.v, err, sizeof err), 0, "%s", err);
    return t;
}

static void toy_free(toy *t)
{
    llm_vocab_free(t->v);
    gguf_close(t->g);
    free(t->file.p);
}

/* Tokenizes s and compares with the -1-terminated want. */
static void expect_ids(const llm_vocab *v, const char *s, size_t len, bool special,
                       const int32_t *want)
{
    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    cr_assert_eq(llm_tokenize(v, s, len, special, &ids, &n, &cap), 0);
    size_t wn = 0;
    while (want[wn] >= 0)
        wn++;
    char got[512] = "";
    for (size_t i = 0, o = 0; i < n && o + 12 < sizeof got; i++)
        o += (size_t)snprintf(got + o, sizeof got - o, "%d ", ids[i]);
    cr_expect_eq(n, wn, "\"%.*s\" (special %d): %zu ids [%s], want %zu", (int)len, s, special, n,
                 got, wn);
    for (size_t i = 0; i < n && i < wn; i++)
        cr_expect_eq(ids[i], want[i], "\"%.*s\" (special %d): [%zu] = %d, want %d [%s]", (int)len,
                     s, special, i, ids[i], want[i], got);
    free(ids);
}

#define IDS(...) ((const int32_t[]){__VA_ARGS__, -1})
#define EXPECT(v, s, special, ...) expect_ids(v, s, sizeof(s) - 1, special, IDS(__VA_ARGS__))

Test(toy, load_and_accessors)
{
    toy_opts o = toy_defaults();
    o.add_bos = 1;
    toy t = toy_load(&o);
    cr_assert_eq(llm_vocab_size(t.v), TOY_N);
    cr_assert_eq(llm_vocab_pre(t.v), LLM_PRE_SMOLLM);
    cr_assert_eq(llm_vocab_bos(t.v), 257);
    cr_assert_eq(llm_vocab_eos(t.v), 258);
    cr_assert(llm_vocab_add_bos(t.v));
    cr_assert_eq(llm_vocab_find(t.v, "ab", 2), 260);
    cr_assert_eq(llm_vocab_find(t.v, "<|im_end|>", 10), 258);
    cr_assert_eq(llm_vocab_find(t.v, "zz", 2), -1);
    cr_assert_eq(llm_vocab_find(t.v, "", 0), -1);
    cr_assert(llm_vocab_is_eog(t.v, 258));  /* eos */
    cr_assert(llm_vocab_is_eog(t.v, 256));  /* <|endoftext|> by its text */
    cr_assert_not(llm_vocab_is_eog(t.v, 257));
    cr_assert_not(llm_vocab_is_eog(t.v, -1));
    cr_assert_not(llm_vocab_is_eog(t.v, TOY_N));
    cr_assert(llm_vocab_is_control(t.v, 257));
    cr_assert(llm_vocab_is_control(t.v, 259)); /* user-defined */
    cr_assert_not(llm_vocab_is_control(t.v, 'a'));
    cr_assert_not(llm_vocab_is_control(t.v, TOY_N));
    toy_free(&t);

    o = toy_defaults();
    o.bos = K_OMIT;
    o.no_pre = true; /* llama.cpp's "default" */
    t = toy_load(&o);
    cr_assert_eq(llm_vocab_bos(t.v), -1);
    cr_assert_not(llm_vocab_add_bos(t.v));
    cr_assert_eq(llm_vocab_pre(t.v), LLM_PRE_GPT2);
    toy_free(&t);

    o = toy_defaults();
    o.bos = K_ALT3; /* int32 -1 means none */
    t = toy_load(&o);
    cr_assert_eq(llm_vocab_bos(t.v), -1);
    toy_free(&t);
}

Test(toy, merges_by_rank)
{
    toy_opts o = toy_defaults();
    toy t = toy_load(&o);
    EXPECT(t.v, "abc", false, 262);       /* a b (0), then ab c (2) */
    EXPECT(t.v, "ab", false, 260);
    EXPECT(t.v, "bc", false, 261);
    EXPECT(t.v, "cab", false, 'c', 260);
    EXPECT(t.v, "aaa", false, 263, 'a'); /* equal ranks: leftmost first */
    EXPECT(t.v, "aaaaa", false, 264, 'a');
    EXPECT(t.v, "aaaaaaa", false, 264, 263, 'a');
    EXPECT(t.v, " a", false, 265);
    EXPECT(t.v, "  a", false, ' ', 265);
    EXPECT(t.v, "xyz", false, 'x', 'y', 'z'); /* no merges reach xyz */
    EXPECT(t.v, "\n", false, '\n');
    toy_free(&t);

    /* "b c" ranked before "a b": abc becomes a + bc, and nothing joins them. */
    static const char *const swapped[] = {"b c", "a b", "ab c", NULL};
    o.merge_list = swapped;
    t = toy_load(&o);
    EXPECT(t.v, "abc", false, 'a', 261);
    EXPECT(t.v, "abab", false, 260, 260);
    toy_free(&t);
}

Test(toy, long_word_is_not_quadratic)
{
    toy_opts o = toy_defaults();
    toy t = toy_load(&o);
    size_t len = 100000;
    char *s = malloc(len);
    memset(s, 'a', len);
    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    cr_assert_eq(llm_tokenize(t.v, s, len, false, &ids, &n, &cap), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double sec = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    cr_assert_eq(n, len / 4);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(ids[i], 264);
    cr_log_info("100 KB one-letter word: %.1f ms", sec * 1e3);
    cr_assert_lt(sec, SANITIZED ? 10.0 : 1.0);
    free(ids);
    free(s);
    toy_free(&t);
}

Test(toy, special_and_user_defined_tokens)
{
    toy_opts o = toy_defaults();
    toy t = toy_load(&o);
    EXPECT(t.v, "x<|im_start|>y", true, 'x', 257, 'y');
    EXPECT(t.v, "<|im_start|>", false, '<', '|', 'i', 'm', '_', 's', 't', 'a', 'r', 't', '|', '>');
    EXPECT(t.v, "<|im_end|><|im_end|>", true, 258, 258);
    EXPECT(t.v, "<|im_start|><|im", true, 257, 266); /* longest first */
    EXPECT(t.v, "<|im_start", true, 266, '_', 's', 't', 'a', 'r', 't');
    EXPECT(t.v, "<unk>", true, 268);                /* unknown: only with parse_special */
    EXPECT(t.v, "<unk>", false, '<', 'u', 'n', 'k', '>');
    /* User-defined tokens are cut out even without parse_special. */
    EXPECT(t.v, "a<tool>b", false, 'a', 259, 'b');
    EXPECT(t.v, "a<tool>b", true, 'a', 259, 'b');
    /* Fragments are pre-tokenized apart: the space before a special token
     * stays alone instead of joining " a". */
    EXPECT(t.v, " <|im_end|>a", true, ' ', 258, 'a');
    toy_free(&t);
}

Test(toy, empty_text_gives_nothing)
{
    toy_opts o = toy_defaults();
    toy t = toy_load(&o);
    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    cr_assert_eq(llm_tokenize(t.v, "", 0, true, &ids, &n, &cap), 0);
    cr_assert_eq(n, 0);
    /* Appends to what is there. */
    cr_assert_eq(llm_tokenize(t.v, "ab", 2, true, &ids, &n, &cap), 0);
    cr_assert_eq(llm_tokenize(t.v, "bc", 2, true, &ids, &n, &cap), 0);
    cr_assert_eq(n, 2);
    cr_assert_eq(ids[0], 260);
    cr_assert_eq(ids[1], 261);
    free(ids);
    toy_free(&t);
}

Test(toy, ignore_merges_llama3)
{
    toy_opts o = toy_defaults();
    o.pre = "llama-bpe";
    toy t = toy_load(&o);
    cr_assert_eq(llm_vocab_pre(t.v), LLM_PRE_LLAMA3);
    cr_assert(llm_vocab_add_bos(t.v)); /* llama.cpp's default for Llama 3 */
    EXPECT(t.v, "xyz", false, 267); /* a whole token, whatever the merges say */
    EXPECT(t.v, "abc", false, 262);
    toy_free(&t);
    o.pre = "qwen2";
    t = toy_load(&o);
    cr_assert_eq(llm_vocab_pre(t.v), LLM_PRE_QWEN2);
    EXPECT(t.v, "xyz", false, 'x', 'y', 'z');
    toy_free(&t);
}

Test(toy, invalid_utf8_as_the_reference)
{
    toy_opts o = toy_defaults();
    toy t = toy_load(&o);
    /* Invalid bytes are U+FFFD (EF BF BD), one byte at a time. */
    EXPECT(t.v, "\xFF", false, 0xEF, 0xBF, 0xBD);
    EXPECT(t.v, "a\x80", false, 'a', 0xEF, 0xBF, 0xBD);
    EXPECT(t.v, "\xE2\x82", false, 0xEF, 0xBF, 0xBD, 0xEF, 0xBF, 0xBD);
    /* Past U+10FFFF (where llama.cpp throws): U+FFFD per byte. */
    EXPECT(t.v, "\xF4\x90\x80\x80", false, 0xEF, 0xBF, 0xBD, 0xEF, 0xBF, 0xBD, 0xEF, 0xBF, 0xBD,
           0xEF, 0xBF, 0xBD);
    /* llama.cpp decodes overlong forms and surrogates by their bit patterns. */
    EXPECT(t.v, "\xC0\xAF", false, '/');
    EXPECT(t.v, "\xED\xA0\x80", false, 0xED, 0xA0, 0x80);
    toy_free(&t);
}

Test(toy, missing_byte_token)
{
    toy_opts o = toy_defaults();
    o.drop_byte = "q";
    toy t = toy_load(&o);
    /* As llama.cpp: a byte without a token is dropped, nothing crashes. */
    EXPECT(t.v, "aqa", false, 'a', 'a');
    toy_free(&t);
}

Test(toy, token_to_piece)
{
    toy_opts o = toy_defaults();
    toy t = toy_load(&o);
    char buf[64];
    cr_assert_eq(llm_token_to_piece(t.v, ' ', false, buf, sizeof buf), 1);
    cr_assert_eq(buf[0], ' ');
    for (unsigned b = 0; b < 256; b++) {
        cr_assert_eq(llm_token_to_piece(t.v, (int32_t)b, false, buf, sizeof buf), 1);
        cr_assert_eq((unsigned char)buf[0], b);
    }
    cr_assert_eq(llm_token_to_piece(t.v, 265, false, buf, sizeof buf), 2);
    cr_assert_eq(memcmp(buf, " a", 2), 0);
    cr_assert_eq(llm_token_to_piece(t.v, 256, false, buf, sizeof buf), 0);
    cr_assert_eq(llm_token_to_piece(t.v, 256, true, buf, sizeof buf), 13);
    cr_assert_eq(memcmp(buf, "<|endoftext|>", 13), 0);
    cr_assert_eq(llm_token_to_piece(t.v, 259, false, buf, sizeof buf), 6); /* user-defined */
    cr_assert_eq(memcmp(buf, "<tool>", 6), 0);
    cr_assert_eq(llm_token_to_piece(t.v, 268, false, buf, sizeof buf), 0); /* unknown */
    cr_assert_eq(llm_token_to_piece(t.v, 269, true, buf, sizeof buf), 0);  /* unused */
    /* Truncation: the full length comes back, cap bytes are written. */
    memset(buf, '#', sizeof buf);
    cr_assert_eq(llm_token_to_piece(t.v, 256, true, buf, 4), 13);
    cr_assert_eq(memcmp(buf, "<|en#", 5), 0);
    cr_assert_eq(llm_token_to_piece(t.v, 256, true, NULL, 0), 13);
    cr_assert_eq(llm_token_to_piece(t.v, -1, true, buf, sizeof buf), 0);
    cr_assert_eq(llm_token_to_piece(t.v, TOY_N, true, buf, sizeof buf), 0);
    cr_assert_eq(llm_token_to_piece(t.v, INT32_MAX, true, buf, sizeof buf), 0);
    toy_free(&t);
}

/* ========================================================================
 * Refusals
 * ======================================================================== */

typedef struct bad_case {
    const char *name;
    toy_opts o;
    const char *want; /* substring of the reason */
} bad_case;

#define OPTS(...) {__VA_ARGS__}

static const char *const merge_needs_result[] = {"x y", NULL};

static const bad_case bad_cases[] = {
    {"no model", OPTS(.no_model = true), "tokenizer.ggml.model: missing"},
    {"spm model", OPTS(.model = "llama"), "tokenizer.ggml.model 'llama' is not supported"},
    {"bert model", OPTS(.model = "bert"), "'bert' is not supported"},
    {"unknown pre", OPTS(.pre = "deepseek-llm"), "tokenizer.ggml.pre 'deepseek-llm' is not supported (supported: default, gpt-2, smollm, llama3, llama-bpe, qwen2)"},
    {"hostile pre", OPTS(.pre = "a'b\\c\n"), "tokenizer.ggml.pre 'a\\x27b\\x5Cc\\x0A' is not supported"},
    {"no tokens", OPTS(.tokens = K_OMIT), "tokenizer.ggml.tokens: missing"},
    {"tokens u32", OPTS(.tokens = K_ALT1, .types = K_OMIT, .bos = K_OMIT), "tokenizer.ggml.tokens: expected an array of strings, got array of uint32"},
    {"tokens scalar", OPTS(.tokens = K_ALT2, .types = K_OMIT, .bos = K_OMIT), "tokenizer.ggml.tokens: expected an array of strings, got string"},
    {"tokens empty", OPTS(.tokens = K_ALT3, .types = K_OMIT, .bos = K_OMIT), "tokenizer.ggml.tokens: 0 tokens"},
    {"duplicate token", OPTS(.tokens = K_ALT4), "tokenizer.ggml.tokens[261]: 'ab' repeats token 260"},
    {"types u8", OPTS(.types = K_ALT1), "tokenizer.ggml.token_type: expected an array of int32, got array of uint8"},
    {"types short", OPTS(.types = K_ALT2), "tokenizer.ggml.token_type: 269 entries for 270 tokens"},
    {"type 7", OPTS(.types = K_ALT3), "tokenizer.ggml.token_type[100]: 7 is not a token type"},
    {"type -1", OPTS(.types = K_ALT4), "tokenizer.ggml.token_type[100]: -1 is not a token type"},
    {"no merges", OPTS(.merges = K_OMIT), "tokenizer.ggml.merges: missing"},
    {"merges int", OPTS(.merges = K_ALT1), "tokenizer.ggml.merges: expected an array of strings, got array of int32"},
    {"merge one part", OPTS(.extra_merge = "abc"), "tokenizer.ggml.merges[6]: 'abc' is not two tokens"},
    {"merge three parts", OPTS(.extra_merge = "a b c"), "tokenizer.ggml.merges[6]: 'a b c' is not two tokens"},
    {"merge leading space", OPTS(.extra_merge = " ab"), "is not two tokens"},
    {"merge trailing space", OPTS(.extra_merge = "ab "), "is not two tokens"},
    {"merge empty", OPTS(.extra_merge = ""), "tokenizer.ggml.merges[6]: '' is not two tokens"},
    {"merge double space", OPTS(.extra_merge = "a  b"), "is not two tokens"},
    {"merge unknown part", OPTS(.extra_merge = "a qq"), "tokenizer.ggml.merges[6]: 'qq' is not in the vocabulary"},
    {"merge unknown result", OPTS(.merge_list = merge_needs_result), "tokenizer.ggml.merges[0]: 'x y' makes 'xy', which is not in the vocabulary"},
    {"bos out of range", OPTS(.bos = K_ALT1), "tokenizer.ggml.bos_token_id: id 270 out of range (vocab size 270)"},
    {"bos string", OPTS(.bos = K_ALT2), "tokenizer.ggml.bos_token_id: expected an integer, got string"},
    {"bos negative", OPTS(.bos = K_ALT4), "tokenizer.ggml.bos_token_id: id -7 out of range"},
    {"add_bos u8", OPTS(.add_bos = 2), "tokenizer.ggml.add_bos_token: expected a bool, got uint8"},
};

Test(refuse, malicious_metadata)
{
    for (size_t i = 0; i < COUNT(bad_cases); i++) {
        ts_wbuf f = toy_file(&bad_cases[i].o);
        gguf_file *g;
        char err[256] = "";
        cr_assert_eq(gguf_open_mem(f.p, f.len, &g, err, sizeof err), 0, "%s: %s", bad_cases[i].name, err);
        llm_vocab *v = (llm_vocab *)1;
        strcpy(err, "(untouched)");
        cr_expect_eq(llm_vocab_load(g, &v, err, sizeof err), -1, "%s: loaded", bad_cases[i].name);
        cr_expect_null(v, "%s", bad_cases[i].name);
        cr_expect(strstr(err, bad_cases[i].want) != NULL, "%s: reason \"%s\", want \"%s\"",
                  bad_cases[i].name, err, bad_cases[i].want);
        gguf_close(g);
        free(f.p);
    }
}

/* Untrusted names in reasons are escaped and cut short. */
Test(refuse, long_reason_is_bounded)
{
    char pre[600];
    memset(pre, 'z', sizeof pre - 1);
    pre[sizeof pre - 1] = '\0';
    toy_opts o = toy_defaults();
    o.pre = pre;
    ts_wbuf f = toy_file(&o);
    gguf_file *g;
    char err[128];
    cr_assert_eq(gguf_open_mem(f.p, f.len, &g, err, sizeof err), 0);
    llm_vocab *v;
    cr_assert_eq(llm_vocab_load(g, &v, err, sizeof err), -1);
    cr_assert_lt(strlen(err), sizeof err);
    cr_assert(strstr(err, "...") != NULL, "%s", err);
    gguf_close(g);
    free(f.p);
}

/* Random byte mutations of a valid vocabulary file, each parsed from a copy
 * that ends at a PROT_NONE page: the loader may refuse, never crash; what it
 * accepts must tokenize and decode. */
Test(refuse, mutations_never_crash)
{
    toy_opts o = toy_defaults();
    ts_wbuf f = toy_file(&o);
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t span = (f.len + page - 1) / page * page;
    uint8_t *map = mmap(NULL, span + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(map, MAP_FAILED);
    cr_assert_eq(mprotect(map + span, page, PROT_NONE), 0);
    uint8_t *buf = map + span - f.len;
    uint64_t rng = 0x2545F4914F6CDD1Dull;
    unsigned accepted = 0, refused = 0, iters = SANITIZED ? 3000 : 20000;
    for (unsigned it = 0; it < iters; it++) {
        memcpy(buf, f.p, f.len);
        unsigned flips = 1 + it % 4;
        for (unsigned k = 0; k < flips; k++) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            size_t at = (size_t)(rng % f.len);
            buf[at] = (uint8_t)(rng >> 32);
        }
        gguf_file *g;
        char err[256];
        if (gguf_open_mem(buf, f.len, &g, err, sizeof err) != 0) {
            refused++;
            continue;
        }
        llm_vocab *v;
        if (llm_vocab_load(g, &v, err, sizeof err) != 0) {
            cr_assert_neq(err[0], '\0');
            refused++;
        } else {
            accepted++;
            int32_t *ids = NULL;
            size_t n = 0, cap = 0;
            static const char text[] = "ab c<|im_start|>aaaa 123 \xFF\xC3 caf\xC3\xA9 <tool>";
            cr_assert_eq(llm_tokenize(v, text, sizeof text - 1, true, &ids, &n, &cap), 0);
            char piece[64];
            for (size_t i = 0; i < n; i++) {
                cr_assert(ids[i] >= 0 && ids[i] < llm_vocab_size(v));
                llm_token_to_piece(v, ids[i], true, piece, sizeof piece);
            }
            free(ids);
            llm_vocab_free(v);
        }
        gguf_close(g);
    }
    cr_log_info("mutations: %u accepted, %u refused", accepted, refused);
    cr_assert_gt(accepted, 0);
    cr_assert_gt(refused, 0);
    munmap(map, span + page);
    free(f.p);
}

/* ========================================================================
 * The shipped model
 * ======================================================================== */

typedef struct model {
    gguf_file *g;
    llm_vocab *v;
} model;

static bool model_open(model *m)
{
    if (access(SMOLLM2, R_OK) != 0)
        return false;
    char err[256];
    cr_assert_eq(gguf_open(SMOLLM2, &m->g, err, sizeof err), 0, "%s", err);
    cr_assert_eq(llm_vocab_load(m->g, &m->v, err, sizeof err), 0, "%s", err);
    return true;
}

static void model_close(model *m)
{
    llm_vocab_free(m->v);
    gguf_close(m->g);
}

#define NEED_MODEL(m)                                                                          \
    do {                                                                                       \
        if (!model_open(m))                                                                    \
            cr_skip_test("%s not present (make models fetches it)", SMOLLM2);                  \
    } while (0)

Test(smollm2, metadata)
{
    model m;
    NEED_MODEL(&m);
    cr_assert_eq(llm_vocab_size(m.v), 49152);
    cr_assert_eq(llm_vocab_pre(m.v), LLM_PRE_SMOLLM);
    cr_assert_eq(llm_vocab_bos(m.v), 1);
    cr_assert_eq(llm_vocab_eos(m.v), 2);
    cr_assert_not(llm_vocab_add_bos(m.v));
    cr_assert_eq(llm_vocab_find(m.v, "<|im_start|>", 12), 1);
    cr_assert(llm_vocab_is_eog(m.v, 2));  /* <|im_end|>, eos */
    cr_assert(llm_vocab_is_eog(m.v, 0));  /* <|endoftext|> */
    cr_assert_not(llm_vocab_is_eog(m.v, 1));
    cr_assert(llm_vocab_is_control(m.v, 1));
    cr_assert_not(llm_vocab_is_control(m.v, 100));
    /* Known ids, from llama.cpp. */
    EXPECT(m.v, "Hello world", false, 19556, 905);
    EXPECT(m.v, "<|im_start|>user\n", true, 1, 4093, 198);
    model_close(&m);
}

static size_t b64_decode(const char *s, unsigned char *out)
{
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (; *s && *s != '='; s++) {
        const char *tbl = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        const char *p = strchr(tbl, *s);
        cr_assert_not_null(p);
        acc = (acc << 6) | (uint32_t)(p - tbl);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    return o;
}

static void check_golden_ids(const llm_vocab *v, const char *name, const char *text, size_t len,
                             bool special, json_t *want)
{
    cr_assert(json_is_array(want), "%s: no ids", name);
    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    cr_assert_eq(llm_tokenize(v, text, len, special, &ids, &n, &cap), 0);
    size_t wn = json_array_size(want), i = 0;
    while (i < n && i < wn && ids[i] == (int32_t)json_integer_value(json_array_get(want, i)))
        i++;
    cr_expect(i == n && n == wn, "golden '%s' (special %d): %zu ids, want %zu; first difference at [%zu]: %d, want %d",
              name, special, n, wn, i, i < n ? ids[i] : -1,
              i < wn ? (int)json_integer_value(json_array_get(want, i)) : -1);
    free(ids);
}

Test(smollm2, golden_tokens)
{
    model m;
    NEED_MODEL(&m);
    json_error_t je;
    json_t *root = json_load_file(GOLDEN_TOKENS, 0, &je);
    if (!root) {
        model_close(&m);
        cr_skip_test("%s not present yet (scripts/golden makes it)", GOLDEN_TOKENS);
    }
    json_t *tk = json_object_get(root, "tokenizer");
    cr_assert_str_eq(json_string_value(json_object_get(tk, "pre")), "smollm");
    json_t *cases = json_object_get(root, "cases");
    cr_assert(json_array_size(cases) > 0);
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        const char *name = json_string_value(json_object_get(c, "name"));
        json_t *text = json_object_get(c, "text");
        unsigned char *buf;
        size_t len;
        if (text) {
            len = json_string_length(text);
            buf = malloc(len + 1);
            memcpy(buf, json_string_value(text), len);
        } else {
            const char *b64 = json_string_value(json_object_get(c, "bytes_b64"));
            cr_assert_not_null(b64, "case %zu: neither text nor bytes_b64", i);
            buf = malloc(strlen(b64) + 1);
            len = b64_decode(b64, buf);
        }
        check_golden_ids(m.v, name, (const char *)buf, len, false, json_object_get(c, "ids"));
        check_golden_ids(m.v, name, (const char *)buf, len, true, json_object_get(c, "ids_special"));
        free(buf);
    }
    cr_log_info("golden: %zu cases", json_array_size(cases));
    json_decref(root);
    model_close(&m);
}

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Random valid UTF-8: mostly ASCII (letters, digits, spaces, punctuation,
 * newlines), then Latin, Greek, CJK, emoji, marks, unusual spaces, and the
 * texts of control tokens. */
static size_t random_text(uint64_t *rng, char *out, size_t max)
{
    size_t o = 0;
    while (o + 16 < max) {
        uint64_t r = rng_next(rng);
        uint32_t cp;
        switch (r % 12) {
        case 0: case 1: case 2: case 3: cp = 'a' + (uint32_t)(r >> 8) % 26; break;
        case 4: cp = " \n\t\r'0123456789"[(r >> 8) % 15]; break;
        case 5: cp = 0x21 + (uint32_t)(r >> 8) % 94; break;
        case 6: cp = 0xA0 + (uint32_t)(r >> 8) % 0x200; break;
        case 7: cp = 0x370 + (uint32_t)(r >> 8) % 0x500; break;
        case 8: cp = 0x4E00 + (uint32_t)(r >> 8) % 0x1000; break;
        case 9: cp = 0x1F300 + (uint32_t)(r >> 8) % 0x300; break;
        case 10: cp = (uint32_t)(r >> 8) % 0x40000; break; /* planes 0-3 */
        default: {
            static const char *const specials[] = {"<|im_start|>", "<|im_end|>", "<|endoftext|>",
                                                   "<file_sep>", "<|im_", "  ", "\r\n"};
            const char *s = specials[(r >> 8) % COUNT(specials)];
            size_t l = strlen(s);
            memcpy(out + o, s, l);
            o += l;
            continue;
        }
        }
        if (cp >= 0xD800 && cp <= 0xDFFF)
            cp = 'x';
        o += nn_utf8_encode(cp, out + o);
    }
    return o;
}

/* Bytes whose byte-level character is not in the vocabulary cannot be
 * tokenized: llama.cpp drops them, and so do we. SmolLM2 lacks 21 (the
 * controls 04 06 13 14 16 1D, the never-valid C0 C1 F5..FF, and F1 F2, the
 * lead bytes of U+40000..U+BFFFF). This is s without them. */
static size_t drop_untokenizable(const llm_vocab *v, const char *s, size_t len, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char c[4];
        size_t k = byte_char((unsigned char)s[i], c);
        if (llm_vocab_find(v, c, k) >= 0)
            out[o++] = s[i];
    }
    return o;
}

static size_t detokenize(const llm_vocab *v, const int32_t *ids, size_t n, bool special,
                         char *out, size_t max)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        size_t k = llm_token_to_piece(v, ids[i], special, out + o, max - o);
        cr_assert_leq(k, max - o);
        o += k;
    }
    return o;
}

Test(smollm2, round_trip_random_utf8)
{
    model m;
    NEED_MODEL(&m);
    uint64_t rng = 42;
    char text[600], want[600], back[4096];
    int32_t *ids = NULL;
    size_t cap = 0, exact = 0, iters = SANITIZED ? 300 : 3000;
    for (size_t it = 0; it < iters; it++) {
        size_t len = random_text(&rng, text, 16 + rng_next(&rng) % (sizeof text - 16));
        size_t wl = drop_untokenizable(m.v, text, len, want);
        exact += wl == len;
        for (int special = 0; special < 2; special++) {
            size_t n = 0;
            cr_assert_eq(llm_tokenize(m.v, text, len, special, &ids, &n, &cap), 0);
            size_t bl = detokenize(m.v, ids, n, special, back, sizeof back);
            cr_assert(bl == wl && memcmp(back, want, wl) == 0,
                      "round trip (special %d) of %zu bytes gave %zu, want %zu", special, len, bl, wl);
        }
    }
    /* Most texts have no untokenizable byte: those came back unchanged. */
    cr_log_info("round trip: %zu of %zu random texts exact", exact, iters);
    cr_assert_gt(exact, iters / 2);
    free(ids);
    model_close(&m);
}

/* What llama.cpp makes of arbitrary bytes: its lenient decoding (bit
 * patterns only; overlong and surrogate forms kept as values), U+FFFD for
 * one byte otherwise, re-encoded. Written here independently. */
static size_t reference_normalize(const unsigned char *s, size_t len, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        unsigned char b = s[i];
        size_t need = b < 0x80 ? 0 : (b & 0xE0) == 0xC0 ? 1 : (b & 0xF0) == 0xE0 ? 2
                    : (b & 0xF8) == 0xF0 ? 3 : 99;
        uint32_t cp = 0xFFFD;
        size_t used = 1;
        if (need == 0) {
            cp = b;
        } else if (need != 99 && i + need < len) {
            uint32_t v = b & (0x7Fu >> (need + 1));
            size_t k = 1;
            for (; k <= need && (s[i + k] & 0xC0) == 0x80; k++)
                v = (v << 6) | (s[i + k] & 0x3F);
            if (k > need && v <= 0x10FFFF) {
                cp = v;
                used = need + 1;
            }
        }
        i += used;
        /* Encode by value (surrogates too), not via nn_utf8_encode. */
        if (cp < 0x80) {
            out[o++] = (char)cp;
        } else if (cp < 0x800) {
            out[o++] = (char)(0xC0 | (cp >> 6));
            out[o++] = (char)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out[o++] = (char)(0xE0 | (cp >> 12));
            out[o++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            out[o++] = (char)(0x80 | (cp & 0x3F));
        } else {
            out[o++] = (char)(0xF0 | (cp >> 18));
            out[o++] = (char)(0x80 | ((cp >> 12) & 0x3F));
            out[o++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            out[o++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    return o;
}

Test(smollm2, round_trip_random_bytes)
{
    model m;
    NEED_MODEL(&m);
    uint64_t rng = 7;
    unsigned char text[300];
    char norm[1200], want[1200], back[4096];
    int32_t *ids = NULL;
    size_t cap = 0;
    for (int it = 0; it < (SANITIZED ? 300 : 3000); it++) {
        size_t len = 1 + rng_next(&rng) % sizeof text;
        for (size_t i = 0; i < len; i++) {
            uint64_t r = rng_next(&rng);
            /* Bias towards UTF-8 shapes so multi-byte forms appear. */
            text[i] = (r & 3) == 0 ? (unsigned char)(0x80 | ((r >> 8) & 0x3F))
                      : (r & 3) == 1 ? (unsigned char)(0xC0 | ((r >> 8) & 0x3F))
                                     : (unsigned char)(r >> 8);
        }
        size_t wl = drop_untokenizable(m.v, norm, reference_normalize(text, len, norm), want);
        size_t n = 0;
        cr_assert_eq(llm_tokenize(m.v, (const char *)text, len, false, &ids, &n, &cap), 0);
        size_t bl = detokenize(m.v, ids, n, false, back, sizeof back);
        cr_assert(bl == wl && memcmp(back, want, wl) == 0, "random bytes (%zu): %zu back, want %zu",
                  len, bl, wl);
    }
    free(ids);
    model_close(&m);
}

static const char *const english[] = {
    "The quick brown fox jumps over the lazy dog. ",
    "Outpost turns an edge GPU server into a self-hosted AI platform, one agent per server. ",
    "It's not that we couldn't have done it; we'd simply rather run models close to users. ",
    "In 2024, 3 of 4 operators said they wanted lower latency and predictable costs.\n",
    "Tokenizers split text into pieces, then merge bytes by rank until no pair is left.\n\n",
    "    def handler(request):\n        return {\"status\": 200, \"body\": request.text}\n",
};

Test(smollm2, throughput_one_megabyte)
{
    model m;
    NEED_MODEL(&m);
    size_t target = 1 << 20, len = 0;
    char *text = malloc(target + 256);
    uint64_t rng = 99;
    while (len < target) {
        const char *s = english[rng_next(&rng) % COUNT(english)];
        size_t l = strlen(s);
        memcpy(text + len, s, l);
        len += l;
    }
    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    cr_assert_eq(llm_tokenize(m.v, text, len, false, &ids, &n, &cap), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double sec = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    cr_log_info("tokenized %zu bytes into %zu tokens in %.1f ms (%.1f MB/s)", len, n, sec * 1e3,
                (double)len / sec / 1e6);
    cr_assert_lt(sec, SANITIZED ? 20.0 : 1.0);
    free(ids);
    free(text);
    model_close(&m);
}
