"""Golden data for all-MiniLM-L6-v2: WordPiece ids and sentence embeddings.

    python gen_minilm.py tokens|embeddings

References: HF `tokenizers` with the model's tokenizer.json (its own
truncation to 128 and padding to 128 switched off), and sentence-transformers
on the model directory (Transformer -> mean Pooling -> Normalize, max_seq_length
256), CPU, 2 threads, one sentence per forward pass.
"""
import os
import sys

import numpy as np

from golden_common import MINILM, die, generator, minilm_model, round7, versions, write_json

SCRIPT = "gen_minilm.py"
MAX_SEQ = 256


def packages():
    return versions("sentence-transformers", "transformers", "tokenizers", "torch", "numpy",
                    "safetensors")


def raw_tokenizer():
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(MINILM / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def python_wordpiece():
    """An independent WordPiece (transformers' BertTokenizer BasicTokenizer + WordpieceTokenizer
    logic, re-implemented here from the published algorithm) for the cross-check."""
    import json
    import unicodedata
    vocab = json.load(open(MINILM / "tokenizer.json", encoding="utf-8"))["model"]["vocab"]

    def is_ws(c):
        return c in " \t\n\r" or unicodedata.category(c) == "Zs"

    def is_ctrl(c):
        return c not in "\t\n\r" and unicodedata.category(c).startswith("C")

    def is_punct(c):
        cp = ord(c)
        if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
            return True
        return unicodedata.category(c).startswith("P")

    def is_cjk(cp):
        return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
                or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
                or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)

    specials = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}

    def basic(text):
        out = []
        for c in text:
            cp = ord(c)
            if cp == 0 or cp == 0xFFFD or is_ctrl(c):
                continue
            out.append(" " if is_ws(c) else (f" {c} " if is_cjk(cp) else c))
        words = []
        for w in "".join(out).split():
            w = unicodedata.normalize("NFD", w.lower())
            w = "".join(c for c in w if unicodedata.category(c) != "Mn")
            cur = ""
            for c in w:
                if is_punct(c):
                    if cur:
                        words.append(cur)
                    words.append(c)
                    cur = ""
                else:
                    cur += c
            if cur:
                words.append(cur)
        return words

    def wordpiece(word):
        if len(word) > 100:
            return [100]
        ids, start = [], 0
        while start < len(word):
            end, cur = len(word), None
            while start < end:
                sub = word[start:end] if start == 0 else "##" + word[start:end]
                if sub in vocab:
                    cur = vocab[sub]
                    break
                end -= 1
            if cur is None:
                return [100]
            ids.append(cur)
            start = end
        return ids

    def encode(text):
        # added special tokens are matched on the raw text first (as HF tokenizers does)
        ids, rest = [], text
        while rest:
            hit = min(((rest.find(s), s) for s in specials if s in rest), default=None)
            chunk = rest if hit is None else rest[:hit[0]]
            for w in basic(chunk):
                ids += wordpiece(w)
            if hit is None:
                break
            ids.append(specials[hit[1]])
            rest = rest[hit[0] + len(hit[1]):]
        return [101] + ids + [102]

    return encode


# --------------------------------------------------------------------------- tokens

TOKEN_CASES = [
    ("empty", ""),
    ("spaces-only", "   "),
    ("case", "Hello, World! HELLO hello HeLLo"),
    ("accents-french", "caf\u00e9 na\u00efve r\u00e9sum\u00e9 cr\u00e8me br\u00fbl\u00e9e"),
    ("accents-caps", "\u00c9COLE \u00c5NGSTR\u00d6M \u00c7A"),
    ("accents-combining", "e\u0301 a\u0308 n\u0303o"),
    ("german-eszett", "Stra\u00dfe gro\u00df \u1e9e"),
    ("turkish-dotted-i", "\u0130stanbul I\u0131 i\u0307"),
    ("greek", "\u039a\u03b1\u03bb\u03b7\u03bc\u03ad\u03c1\u03b1 \u03ba\u03cc\u03c3\u03bc\u03b5"),
    ("cyrillic", "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0401\u043b\u043a\u0430"),
    ("cjk-chinese", "\u4f60\u597d\u4e16\u754c"),
    ("cjk-chinese-punct", "\u4f60\u597d\uff0c\u4e16\u754c\u3002"),
    ("cjk-mixed-latin", "Hello\u4e16\u754c123abc\u6f22\u5b57"),
    ("cjk-extension-b", "\U00020000\U0002a6d6"),
    ("japanese-kana", "\u65e5\u672c\u8a9e \u30ab\u30bf\u30ab\u30ca \u3072\u3089\u304c\u306a"),
    ("korean-hangul", "\ud55c\uad6d\uc5b4 \ubb38\uc7a5"),
    ("thai-marks", "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e04\u0e23\u0e31\u0e1a"),
    ("hindi-marks", "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e"),
    ("arabic-hebrew", "\u0645\u0631\u062d\u0628\u0627 \u0634\u0644\u0648\u0645"),
    ("punct-ascii", "a.b,c;d:e!f?g(h)i[j]k{l}m\"n'o`p~q^r|s\\t/u"),
    ("punct-runs", "wait... what?!?! --- ***"),
    ("punct-unicode", "\u201cquoted\u201d \u2018single\u2019 \u2014dash\u2014 \u2026 \u00bfqu\u00e9? \u00a1s\u00ed!"),
    ("punct-symbols-not-p", "$100 50% 3+4=7 <html> \u2211\u221e\u2260 \u00a9\u00ae\u2122 \u20ac5"),
    ("contractions", "don't can't I'm l'amour o'clock"),
    ("abbrev-email-url", "U.S.A. e-mail me@example.com https://ex.com/a?b=c"),
    ("hashtags", "#hashtag @user_name snake_case"),
    ("numbers", "3.14159 1,000,000 2024-01-15 0x1F 007"),
    ("control-whitespace", "a\tb\nc\r\nd\x0be\x0cf"),
    ("control-chars", "a\x01b\x1bc\x7fd\x85e"),
    ("nul-char", "a\x00b"),
    ("fffd", "abc\ufffddef \ufffd"),
    ("zero-width-format", "a\u200bb c\u200dd e\ufeff f\u00adg"),
    ("ws-nbsp-em-ideographic", "a\u00a0b\u2003c\u3000d\u2028e\u2029f"),
    ("ws-leading-trailing", "   leading and trailing   "),
    ("ws-many-newlines", "\n\n\nx\n\n\n"),
    ("emoji", "I love \U0001f355 and \U0001f600!"),
    ("emoji-zwj-flags", "\U0001f468\u200d\U0001f469\u200d\U0001f467 \U0001f1eb\U0001f1f7 \u2764\ufe0f"),
    ("fullwidth", "\uff21\uff22\uff23 \uff41\uff42\uff43 \uff11\uff12\uff13"),
    ("long-word-100", "a" * 100),
    ("long-word-101", "a" * 101),
    ("long-word-mixed", "x " + "ab" * 60 + " y"),
    ("long-real-word", "pneumonoultramicroscopicsilicovolcanoconiosis supercalifragilisticexpialidocious"),
    ("subwords", "tokenization unbelievably outpost's embeddings"),
    ("special-token-text", "[CLS] a [SEP] b [MASK] c [PAD] [UNK]"),
    ("special-token-lowercase", "[cls] [mask] [Mask]"),
    ("special-token-glued", "x[MASK]y"),
    ("accented-uppercase-greek", "\u0386\u0388\u0389 \u03a3\u03c3\u03c2"),
]


def gen_tokens():
    tok = raw_tokenizer()
    ref = python_wordpiece()
    cases, disagreements = [], []
    names = set()
    for name, text in TOKEN_CASES:
        assert name not in names, name
        names.add(name)
        enc = tok.encode(text)
        ids = list(enc.ids)
        theirs = ref(text)
        if theirs != ids:
            disagreements.append({"name": name, "tokenizers": ids, "python_wordpiece": theirs})
        cases.append({"name": name, "text": text, "ids": ids, "tokens": list(enc.tokens)})
    obj = {
        "generator": generator(SCRIPT, packages()),
        "model": minilm_model(),
        "reference": "tokenizers.Tokenizer.from_file(tokenizer.json) with no_truncation() and "
                     "no_padding() (the file itself says truncate/pad to 128); encode(text) with "
                     "its post-processor ([CLS] ... [SEP]); added tokens ([CLS], [MASK], ...) "
                     "in the text are matched as specials",
        "cross_check": {"reference": "a Python re-implementation of BERT's BasicTokenizer + "
                                     "WordPiece (in gen_minilm.py)",
                        "disagreements": disagreements},
        "cases": cases,
    }
    write_json("minilm_tokens.json", obj)
    for d in disagreements:
        print(f"golden: minilm tokens: DISAGREEMENT {d}")
    if not disagreements:
        print("golden: minilm tokens: the Python WordPiece agrees on every case")


# --------------------------------------------------------------------------- embeddings

LONG_TEXT = " ".join([
    "Edge servers sit close to the users they serve, in points of presence, factories,",
    "hospitals and retail stores, where round trips to a distant cloud region cost",
    "latency and bandwidth that interactive applications cannot afford.",
    "An agent on each server loads small language models, embedding models and",
    "classifiers from plugins, batches requests from many clients, streams tokens",
    "back as they are produced, and records every request in a searchable log.",
    "Operators write routing policies in Lua, test them offline against recorded",
    "requests, and reload them without restarting anything; the agent exports",
    "Prometheus metrics for queue depth, batch sizes, tokens per second and errors.",
] * 3)

SENTENCES = [
    ("short-hello", "Hello"),
    ("short-question", "How do I reset my password?"),
    ("simple", "The cat sits on the mat."),
    ("simple-paraphrase", "A cat is sitting on a mat."),
    ("unrelated", "Quarterly revenue grew by twelve percent."),
    ("technical", "Outpost serves OpenAI-compatible embeddings from a C plugin on the CPU."),
    ("code", "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }"),
    ("numbers", "In 2024, 3.5 million units shipped at $19.99 each (+12% YoY)."),
    ("accents-fr", "Le caf\u00e9 est tr\u00e8s chaud, na\u00efvement servi \u00e0 l'\u00e9cole."),
    ("accents-de", "Die Stra\u00dfe in Z\u00fcrich ist \u00fcberf\u00fcllt."),
    ("accents-es", "\u00bfD\u00f3nde est\u00e1 la biblioteca? \u00a1Aqu\u00ed!"),
    ("cjk-zh", "\u6211\u559c\u6b22\u5728\u8fb9\u7f18\u670d\u52a1\u5668\u4e0a\u8fd0\u884c\u5c0f\u6a21\u578b\u3002"),
    ("cjk-ja", "\u6771\u4eac\u306f\u65e5\u672c\u306e\u9996\u90fd\u3067\u3059\u3002"),
    ("korean", "\uc548\ub155\ud558\uc138\uc694, \ub9cc\ub098\uc11c \ubc18\uac11\uc2b5\ub2c8\ub2e4."),
    ("cyrillic", "\u041c\u043e\u0441\u043a\u0432\u0430 \u2014 \u0441\u0442\u043e\u043b\u0438\u0446\u0430 \u0420\u043e\u0441\u0441\u0438\u0438."),
    ("greek", "\u0397 \u0391\u03b8\u03ae\u03bd\u03b1 \u03b5\u03af\u03bd\u03b1\u03b9 \u03b7 \u03c0\u03c1\u03c9\u03c4\u03b5\u03cd\u03bf\u03c5\u03c3\u03b1 \u03c4\u03b7\u03c2 \u0395\u03bb\u03bb\u03ac\u03b4\u03b1\u03c2."),
    ("arabic", "\u0627\u0644\u0642\u0627\u0647\u0631\u0629 \u0647\u064a \u0639\u0627\u0635\u0645\u0629 \u0645\u0635\u0631."),
    ("punct-heavy", "Wait... what?!?! (Really?) -- \"yes\" / 'no' ; [maybe] {ok} <fine> ***"),
    ("emoji", "I love pizza \U0001f355 and sunshine \u2600\ufe0f \U0001f600\U0001f44d"),
    ("emoji-only", "\U0001f355\U0001f355\U0001f355"),
    ("mixed-case", "HTTP/2 Server Push vs. WebSockets: WHICH Is Better?"),
    ("url-email", "Contact support@example.com or visit https://example.com/help?id=42."),
    ("whitespace", "  lots   of\tspaces\n\nand\r\nnewlines  "),
    ("single-char", "a"),
    ("empty", ""),
    ("repeated-word", "buffalo " * 8),
    ("medium", "Vector databases store embeddings and answer nearest-neighbour queries, "
               "which lets applications search documents by meaning rather than by keywords."),
    ("long-paragraph", LONG_TEXT[:900]),
    ("long-truncated", LONG_TEXT),
    ("long-unicode-truncated", ("Gr\u00fc\u00dfe aus M\u00fcnchen! \u4f60\u597d\u4e16\u754c. " * 40).strip()),
    ("special-token-text", "Predict the [MASK] token after [SEP]."),
    ("sentence-question", "What is the weather like today in Paris?"),
    ("sentence-answer", "It is sunny and warm in Paris today."),
]


def gen_embeddings():
    import torch
    from sentence_transformers import SentenceTransformer
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = SentenceTransformer(str(MINILM), device="cpu")
    if model.max_seq_length != MAX_SEQ:
        die(f"embeddings: max_seq_length is {model.max_seq_length}, expected {MAX_SEQ}")
    hf_tok = model.tokenizer
    raw = raw_tokenizer()
    texts = [t for _, t in SENTENCES]
    # one sentence per forward pass: the cleanest reference (no padding in the batch)
    single = [model.encode([t], normalize_embeddings=True, convert_to_numpy=True, batch_size=1)[0]
              for t in texts]
    # the same as one padded batch: only a sanity check, recorded as a max deviation
    batched = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, batch_size=32)
    batch_cos = min(float(np.dot(a, b)) for a, b in zip(single, batched))
    cases, disagreements = [], []
    n_trunc = 0
    for (name, text), emb in zip(SENTENCES, single):
        ids = hf_tok(text, truncation=True, max_length=MAX_SEQ)["input_ids"]
        full = raw.encode(text).ids
        truncated = len(full) > MAX_SEQ
        n_trunc += truncated
        expect = full if not truncated else full[:MAX_SEQ - 1] + [102]
        if list(ids) != list(expect):
            disagreements.append({"name": name, "transformers": list(ids), "tokenizers": expect})
        norm = float(np.linalg.norm(emb))
        if abs(norm - 1.0) > 1e-4:
            die(f"embeddings: {name} not normalized ({norm})")
        cases.append({"name": name, "text": text, "ids": list(ids), "n_tokens_untruncated": len(full),
                      "truncated": truncated, "embedding": [round7(x) for x in emb]})
    if n_trunc == 0:
        die("embeddings: no case exceeds max_seq_length")
    obj = {
        "generator": generator(SCRIPT, packages()),
        "model": minilm_model(),
        "max_seq_length": MAX_SEQ,
        "pooling": "mean over attention mask, then L2 normalize",
        "reference": "SentenceTransformer(models/all-MiniLM-L6-v2, device='cpu').encode([text], "
                     "normalize_embeddings=True), torch.set_num_threads(2), one sentence per "
                     "call; ids: model.tokenizer(text, truncation=True, max_length=256)",
        "cross_check": {
            "ids": "tokenizers.Tokenizer(tokenizer.json) untruncated, cut to 255 + [SEP]",
            "id_disagreements": disagreements,
            "min_cosine_single_vs_batch32": round7(batch_cos),
        },
        "cases": cases,
    }
    write_json("minilm_embeddings.json", obj)
    print(f"golden: minilm embeddings: {len(cases)} cases, {n_trunc} truncated, "
          f"min cos(single, batched) = {batch_cos:.7f}")
    for d in disagreements:
        print(f"golden: minilm embeddings: ID DISAGREEMENT {d['name']}")


def main():
    what = sys.argv[1:] or ["tokens", "embeddings"]
    for w in what:
        {"tokens": gen_tokens, "embeddings": gen_embeddings}[w]()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
