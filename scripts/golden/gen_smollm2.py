"""Golden data for SmolLM2-135M-Instruct (GGUF Q4_1): tokens, chat, greedy.

    python gen_smollm2.py tokens|chat|greedy

Run through scripts/golden/make_golden.sh (the venv and the llama.cpp build
it sets up). References:
  - llama.cpp (through llama-cpp-python, bound to build-peers/llama.cpp):
    tokenizer and greedy decoding;
  - HF transformers loading the tokenizer from the same GGUF: cross-check
    of the token ids and of the chat template rendering;
  - Jinja2 rendering the GGUF's tokenizer.chat_template as HF does.
"""
import base64
import contextlib
import os
import sys

import numpy as np

from golden_common import (GGUF, die, gguf_model, generator, llamacpp_commit,
                           round7, versions, write_json)

SCRIPT = "gen_smollm2.py"


def load_llama(**kw):
    from llama_cpp import Llama
    return Llama(str(GGUF), verbose=False, **kw)


def gguf_metadata():
    from gguf import GGUFReader
    r = GGUFReader(str(GGUF))
    return {k: f.contents() for k, f in r.fields.items()
            if k.startswith("tokenizer.") and k not in (
                "tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type")}


def hf_tokenizer():
    """transformers' tokenizer converted from the GGUF, or None (with the reason)."""
    try:
        with contextlib.redirect_stderr(open(os.devnull, "w")):
            from transformers import AutoTokenizer
            tok = AutoTokenizer.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name)
        return tok, None
    except Exception as e:  # noqa: BLE001 - report any failure of the cross-check
        return None, f"{type(e).__name__}: {e}"


def llama_packages():
    p = versions("llama-cpp-python", "numpy", "gguf", "transformers", "tokenizers", "jinja2")
    p["llama_cpp"] = llamacpp_commit()
    return p


# --------------------------------------------------------------------------- tokens

LONG_PROSE = (
    "Outpost turns an edge GPU server into a self-hosted AI platform: one agent per "
    "server, serving inference from model plugins, routed by Lua policies, observed "
    "through Prometheus. It keeps persistent, searchable request logs, hosts vector "
    "indexes, and joins a fleet. In 2024, 3 of 4 operators said they'd rather run "
    "models close to their users -- \"at the edge\" -- than pay $0.002/token upstream.")

TOKEN_CASES = [
    # name, text (str) or raw bytes
    ("empty", ""),
    ("ascii-hello", "Hello world"),
    ("ascii-hello-punct", "Hello, world!"),
    ("ascii-pangram", "The quick brown fox jumps over the lazy dog."),
    ("ascii-leading-space", " leading space"),
    ("ascii-trailing-space", "trailing space "),
    ("ascii-caps", "ALL CAPS TEXT and MiXeD cAsE"),
    ("ascii-long-prose", LONG_PROSE),
    ("ascii-repeated", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
    ("ascii-identifiers", "camelCaseIdentifier snake_case_name SCREAMING_CASE kebab-case"),
    ("code-python", "def f(x):\n    return x * 2\n"),
    ("code-c", "int main(void) {\n\tfor (int i = 0; i < n; ++i) {\n\t\tsum += a[i];\n\t}\n\treturn 0;\n}\n"),
    ("code-json", '{"model": "@local/smollm2", "max_tokens": 64, "stream": true}'),
    ("code-html", '<div class="a">x &amp; y</div>'),
    ("code-url", "https://example.com/path/to?q=1&r=two#frag"),
    ("code-shell", "ls -la | grep '^d' && echo $HOME 2>/dev/null"),
    ("num-digits", "12345"),
    ("num-long", "1234567890123456789"),
    ("num-float", "3.14159 -2.5e-10 +0.0"),
    ("num-grouped", "1,000,000 and 1 000 000"),
    ("num-date-time", "2024-01-15T08:30:00Z"),
    ("num-hex-version", "0x1F v1.2.3 #ff00aa"),
    ("num-mixed-words", "abc123def 4th 21st 100%"),
    ("ws-one-space", " "),
    ("ws-two-spaces", "  "),
    ("ws-many-spaces", "                    "),
    ("ws-newline", "\n"),
    ("ws-two-newlines", "\n\n"),
    ("ws-many-newlines", "\n\n\n\n\n"),
    ("ws-tab", "\t"),
    ("ws-between-words", "a  b   c    d     e"),
    ("ws-crlf", "line1\nline2\r\nline3\rline4"),
    ("ws-mixed", "   \n  \n\t \n"),
    ("ws-indented", "\t\tindented\n    four spaces"),
    ("ws-space-newline", "word \n next  \n\n after"),
    ("ws-trailing-run", "x   "),
    ("contractions", "I'm sure you're right, don't worry: they'll see we've won."),
    ("contractions-caps", "I'M SURE YOU'RE RIGHT, DON'T WORRY, IT'S FINE"),
    ("contractions-odd", "rock 'n' roll, the '90s, 's, 'S, 'll, o'clock"),
    ("punct-runs", "!!! ... ?!?! -- --- *** ==="),
    ("punct-brackets", "(a) [b] {c} <d> \"e\" 'f' `g`"),
    ("punct-symbols", "@user #tag $5 %d ^ & * _ + = | \\ / ~"),
    ("punct-dashes-quotes", "\u2014dash\u2014 \u2013 \u201cquoted\u201d \u2018single\u2019 \u2026"),
    ("latin-accents", "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c7a va? Tr\u00e8s bien."),
    ("latin-german", "Stra\u00dfe \u00c4rger \u00fcber Z\u00fcrich \u00d6l"),
    ("latin-misc", "\u00c5ngstr\u00f6m \u00f1and\u00fa \u0141\u00f3d\u017a \u0219i \u0165"),
    ("latin-combining", "e\u0301 a\u0308 n\u0303"),
    ("greek", "\u039a\u03b1\u03bb\u03b7\u03bc\u03ad\u03c1\u03b1 \u03ba\u03cc\u03c3\u03bc\u03b5"),
    ("cyrillic", "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u041a\u0430\u043a \u0434\u0435\u043b\u0430?"),
    ("cjk-chinese", "\u4f60\u597d\uff0c\u4e16\u754c\u3002\u6211\u559c\u6b22\u673a\u5668\u5b66\u4e60\u3002"),
    ("cjk-japanese", "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3067\u3059\u3002\u30ab\u30bf\u30ab\u30ca"),
    ("cjk-korean", "\ud55c\uad6d\uc5b4 \ubb38\uc7a5\uc785\ub2c8\ub2e4"),
    ("arabic", "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645"),
    ("hebrew-hindi-thai", "\u05e9\u05dc\u05d5\u05dd \u0928\u092e\u0938\u094d\u0924\u0947 \u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35"),
    ("fullwidth-math", "\uff21\uff22\uff23\uff11\uff12\uff13 \u2211\u222b\u221a\u221e \u2260 \u2264"),
    ("emoji-single", "\U0001f44b"),
    ("emoji-in-text", "Hello \U0001f44b\U0001f30d! Nice \U0001f600\U0001f603\U0001f604"),
    ("emoji-zwj-family", "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"),
    ("emoji-flag-heart", "\U0001f1eb\U0001f1f7 \u2764\ufe0f \U0001f44d\U0001f3fd"),
    ("unicode-nbsp-zwsp", "a\u00a0b c\u200bd e\u2009f"),
    ("unicode-bom-fffd", "\ufeffstart \ufffd end"),
    ("unicode-controls", "\x01\x1b[31mred\x1b[0m\x7f"),
    ("mixed-scripts", "Hello\u4e16\u754c123!caf\u00e9\U0001f600"),
    ("invalid-lone-continuation", b"abc\x80def"),
    ("invalid-ff-fe", b"\xff\xfe"),
    ("invalid-truncated-2byte", b"x\xc3"),
    ("invalid-surrogate", b"\xed\xa0\x80z"),
    ("invalid-truncated-emoji", b"hi \xf0\x9f\x98 there"),
    ("invalid-overlong", b"\xc0\xaf/"),
    ("special-im-start-user", "<|im_start|>user\nHello<|im_end|>\n"),
    ("special-assistant-prompt", "<|im_start|>assistant\n"),
    ("special-endoftext", "<|endoftext|>"),
    ("special-inline", "text<|im_end|>more<|im_start|>"),
    ("special-full-chat",
     "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
    ("special-partial", "<|im_start| and <|im_end and < |im_end| >"),
    ("special-adjacent", "<|im_end|><|im_end|><|endoftext|>"),
    ("special-other-controls", "<repo_name>outpost<file_sep><filename>main.c"),
    ("special-spaces-around", " <|im_start|> user "),
]


def gen_tokens():
    llm = load_llama(vocab_only=True)
    hf, hf_err = hf_tokenizer()
    cases, disagreements = [], []
    names = set()
    for name, text in TOKEN_CASES:
        assert name not in names, name
        names.add(name)
        raw = text if isinstance(text, bytes) else text.encode("utf-8")
        ids = llm.tokenize(raw, add_bos=False, special=False)
        ids_special = llm.tokenize(raw, add_bos=False, special=True)
        case = {"name": name}
        if isinstance(text, bytes):
            case["bytes_b64"] = base64.b64encode(raw).decode()
        else:
            case["text"] = text
        case["ids"] = ids
        case["ids_special"] = ids_special
        # llama.cpp must decode ids back to the same bytes (valid UTF-8 only)
        if not isinstance(text, bytes):
            back = llm.detokenize(ids, special=True)
            if back != raw:
                die(f"tokens: llama.cpp round trip failed for {name}: {back!r}")
        if hf is not None and not isinstance(text, bytes):
            hf_special = hf.encode(text, add_special_tokens=False)
            hf_plain = hf(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            for kind, mine, theirs in (("ids_special", ids_special, hf_special), ("ids", ids, hf_plain)):
                if list(mine) != list(theirs):
                    disagreements.append({"name": name, "field": kind, "llama_cpp": list(mine),
                                          "transformers": list(theirs)})
        cases.append(case)
    n_checked = sum(1 for _, t in TOKEN_CASES if not isinstance(t, bytes))
    meta = gguf_metadata()
    obj = {
        "generator": generator(SCRIPT, llama_packages()),
        "model": gguf_model(),
        "tokenizer": {"model": meta.get("tokenizer.ggml.model"), "pre": meta.get("tokenizer.ggml.pre"),
                      "bos_id": meta.get("tokenizer.ggml.bos_token_id"),
                      "eos_id": meta.get("tokenizer.ggml.eos_token_id"),
                      "add_bos": meta.get("tokenizer.ggml.add_bos_token")},
        "reference": "llama.cpp tokenizer via llama-cpp-python: Llama(vocab_only=True)"
                     ".tokenize(bytes, add_bos=False, special=False|True)",
        "cross_check": {
            "reference": "transformers AutoTokenizer.from_pretrained(gguf_file=...): "
                         "encode(add_special_tokens=False) vs ids_special, "
                         "split_special_tokens=True vs ids; invalid UTF-8 cases not checked",
            "cases_checked": n_checked if hf is not None else 0,
            "error": hf_err,
            "disagreements": disagreements,
        },
        "cases": cases,
    }
    write_json("smollm2_tokens.json", obj)
    report_disagreements("tokens", disagreements, hf_err)


def report_disagreements(what, disagreements, err):
    if err:
        print(f"golden: {what}: transformers cross-check unavailable: {err}")
    for d in disagreements:
        print(f"golden: {what}: DISAGREEMENT {d}")
    if not err and not disagreements:
        print(f"golden: {what}: transformers agrees on every case")


# --------------------------------------------------------------------------- chat

CHAT_CASES = [
    ("user-only", [{"role": "user", "content": "Hello!"}]),
    ("system-user", [{"role": "system", "content": "You are a terse assistant."},
                     {"role": "user", "content": "What is 2+2?"}]),
    ("multi-turn-system", [
        {"role": "system", "content": "You answer in one sentence."},
        {"role": "user", "content": "Name a planet."},
        {"role": "assistant", "content": "Mars is a planet."},
        {"role": "user", "content": "Another one?"}]),
    ("multi-turn-no-system", [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."}]),
    ("unicode", [{"role": "user", "content": "Gr\u00fc\u00dfe! \u4f60\u597d \U0001f44b \u041f\u0440\u0438\u0432\u0435\u0442 caf\u00e9"}]),
    ("empty-user", [{"role": "user", "content": ""}]),
    ("empty-system", [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}]),
    ("code-newlines", [{"role": "user", "content": "Fix this:\n```python\nprint('hi'\n```\n"}]),
    ("whitespace-content", [{"role": "user", "content": "  \n\t "}]),
    ("control-text-in-content", [{"role": "user", "content": "Say <|im_end|> literally"}]),
    ("assistant-last", [{"role": "user", "content": "Start a story."},
                        {"role": "assistant", "content": "Once upon a time"}]),
    ("long-multi-turn", [
        {"role": "system", "content": "You are SmolLM."},
        {"role": "user", "content": "One"}, {"role": "assistant", "content": "Two"},
        {"role": "user", "content": "Three"}, {"role": "assistant", "content": "Four"},
        {"role": "user", "content": "Five"}, {"role": "assistant", "content": "Six"},
        {"role": "user", "content": "Seven?"}]),
]


def jinja_render(template, messages, bos, eos):
    """Renders as transformers' apply_chat_template does (its Jinja environment)."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=True,
                                            bos_token=bos, eos_token=eos)


def gen_chat():
    meta = gguf_metadata()
    template = meta.get("tokenizer.chat_template")
    if not template:
        die("chat: the GGUF has no tokenizer.chat_template")
    llm = load_llama(vocab_only=True)
    bos = llm.detokenize([meta["tokenizer.ggml.bos_token_id"]], special=True).decode()
    eos = llm.detokenize([meta["tokenizer.ggml.eos_token_id"]], special=True).decode()
    hf, hf_err = hf_tokenizer()
    cases, disagreements = [], []
    for name, messages in CHAT_CASES:
        rendered = jinja_render(template, messages, bos, eos)
        ids = llm.tokenize(rendered.encode(), add_bos=False, special=True)
        if hf is not None:
            try:
                theirs = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except Exception as e:  # noqa: BLE001
                theirs = f"<error {type(e).__name__}: {e}>"
            if theirs != rendered:
                disagreements.append({"name": name, "jinja2": rendered, "transformers": theirs})
        cases.append({"name": name, "messages": messages, "rendered": rendered, "ids": ids})
    obj = {
        "generator": generator(SCRIPT, llama_packages()),
        "model": gguf_model(),
        "chat_template": template,
        "render": "jinja2 ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, "
                  "loopcontrols), messages, add_generation_prompt=True, bos_token, eos_token "
                  "(what transformers' apply_chat_template does); ids: the rendered text "
                  "tokenized by llama.cpp with parse_special=true, no BOS",
        "bos_token": bos,
        "eos_token": eos,
        "cross_check": {"reference": "transformers apply_chat_template(tokenize=False, "
                                     "add_generation_prompt=True) on the tokenizer loaded from the GGUF",
                        "error": hf_err, "disagreements": disagreements},
        "cases": cases,
    }
    write_json("smollm2_chat.json", obj)
    report_disagreements("chat", disagreements, hf_err)


# --------------------------------------------------------------------------- greedy

GREEDY_RAW = [
    ("raw-capital", "The capital of France is"),
    ("raw-story", "Once upon a time, in a small village,"),
    ("raw-code", "def fibonacci(n):\n"),
    ("raw-counting", "1, 2, 3, 4, 5,"),
    ("raw-recipe", "To make a cup of tea, first"),
    ("raw-science", "Water boils at"),
    ("raw-list", "Here are five tips for better sleep:\n1."),
    ("raw-history", "The Roman Empire was"),
    ("raw-json", '{"name": "Alice", "age": 30, "city":'),
    ("raw-email", "Dear team,\n\nI am writing to"),
    ("raw-math", "The derivative of x^2 is"),
    ("raw-shell", "#!/bin/bash\n# Print every file in the current directory\n"),
]
GREEDY_CHAT = [
    ("chat-capital", [{"role": "user", "content": "What is the capital of France?"}]),
    ("chat-haiku", [{"role": "user", "content": "Write a haiku about the sea."}]),
    ("chat-colors", [{"role": "system", "content": "You are a concise assistant."},
                     {"role": "user", "content": "List three primary colors."}]),
    ("chat-multi-turn", [{"role": "user", "content": "Hi, who are you?"},
                         {"role": "assistant", "content": "I am SmolLM, an AI assistant."},
                         {"role": "user", "content": "What can you do?"}]),
    ("chat-unicode", [{"role": "user", "content": "Translate 'good morning' into French and Spanish."}]),
    ("chat-math", [{"role": "user", "content": "What is 2+2?"}]),
    ("chat-sky", [{"role": "user", "content": "What color is the sky on a clear day?"}]),
    ("chat-ocean", [{"role": "user", "content": "Which ocean is the largest?"}]),
    ("chat-python", [{"role": "user", "content": "Write a Python function that reverses a string."}]),
    ("chat-explain", [{"role": "system", "content": "Answer in one sentence."},
                      {"role": "user", "content": "Why do leaves change color in autumn?"}]),
    ("chat-planets", [{"role": "user", "content": "Name the planets of the solar system in order."}]),
    ("chat-advice", [{"role": "user", "content": "Give me three tips for learning a new language."}]),
]
N_NEW = 64
SETTINGS = {
    "n_ctx": 2048, "n_threads": 2, "n_threads_batch": 2, "n_batch": 512, "n_ubatch": 512,
    "flash_attn": False, "type_k": "f16", "type_v": "f16", "add_bos": False,
    "temperature": 0.0, "top_k": 1, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0,
    "frequency_penalty": 0.0, "presence_penalty": 0.0, "max_new_tokens": N_NEW,
    "stop": "end-of-generation token (llama_vocab_is_eog), not included in completion_ids",
    "prompt": "evaluated in one batch from prompt_ids; then one token per decode",
    "top_logits": "per completion step, the 5 highest logits as [id, logit] (4 decimals)",
    "stable_prefix": "llama.cpp run twice more, with the prompt evaluated one token at a time "
                     "and in chunks of 7 tokens: the number of leading completion ids on which "
                     "all three runs agree",
}


TOP_LOGITS = 5


def greedy_ids(llm, llama_cpp, vocab, prompt_ids, chunk, tops=None):
    """Greedy continuation by argmax, the prompt evaluated in chunks of
    `chunk` tokens (0: all at once). Returns (ids, margins, finish); appends
    the TOP_LOGITS best [id, logit] pairs of every step to `tops` if given."""
    llm.reset()
    step = chunk or len(prompt_ids)
    for i in range(0, len(prompt_ids), step):
        llm.eval(prompt_ids[i:i + step])
    ids, margins, finish = [], [], "length"
    for _ in range(N_NEW):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1),
                                       shape=(llm.n_vocab(),)).astype(np.float32)
        top2 = np.argpartition(-logits, 2)[:2]
        tok = int(np.argmax(logits))
        second = float(logits[top2[0]] if int(top2[0]) != tok else logits[top2[1]])
        if tops is not None:
            best = np.argsort(-logits, kind="stable")[:TOP_LOGITS]
            tops.append([[int(b), round(float(logits[b]), 4)] for b in best])
        if llama_cpp.llama_vocab_is_eog(vocab, tok):
            finish = "stop"
            break
        ids.append(tok)
        margins.append(round7(float(logits[tok]) - second))
        llm.eval([tok])
    return ids, margins, finish


def common_prefix(*seqs):
    n = 0
    while all(n < len(s) for s in seqs) and len({s[n] for s in seqs}) == 1:
        n += 1
    return n


def gen_greedy():
    import llama_cpp
    meta = gguf_metadata()
    template = meta["tokenizer.chat_template"]
    llm = load_llama(n_ctx=SETTINGS["n_ctx"], n_threads=SETTINGS["n_threads"],
                     n_threads_batch=SETTINGS["n_threads_batch"], n_batch=SETTINGS["n_batch"],
                     n_ubatch=SETTINGS["n_ubatch"], flash_attn=False, seed=0)
    vocab = llm._model.vocab
    bos = llm.detokenize([meta["tokenizer.ggml.bos_token_id"]], special=True).decode()
    eos = llm.detokenize([meta["tokenizer.ggml.eos_token_id"]], special=True).decode()
    prompts = [(n, p, False) for n, p in GREEDY_RAW] + \
              [(n, jinja_render(template, m, bos, eos), True) for n, m in GREEDY_CHAT]
    cases = []
    for name, prompt, chat in prompts:
        prompt_ids = llm.tokenize(prompt.encode(), add_bos=False, special=chat)
        # 1) llama-cpp-python's own sampler chain: temperature 0 (greedy), top_k 1, no penalties
        llm.reset()
        sampled = []
        for tok in llm.generate(prompt_ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0,
                                repeat_penalty=1.0, frequency_penalty=0.0, presence_penalty=0.0,
                                reset=True):
            if llama_cpp.llama_vocab_is_eog(vocab, tok):
                break
            sampled.append(int(tok))
            if len(sampled) == N_NEW:
                break
        # 2) the same by hand from the logits, to record the top-1/top-2 margins
        tops = []
        ids, margins, finish = greedy_ids(llm, llama_cpp, vocab, prompt_ids, 0, tops)
        # 3) llama.cpp's own reproducibility: other prompt batchings
        one, _, _ = greedy_ids(llm, llama_cpp, vocab, prompt_ids, 1)
        seven, _, _ = greedy_ids(llm, llama_cpp, vocab, prompt_ids, 7)
        stable = common_prefix(ids, one, seven)
        if stable == len(ids) and len(one) == len(ids) == len(seven):
            stable = len(ids)
        if ids != sampled:
            die(f"greedy: {name}: sampler chain and argmax disagree:\n {sampled}\n {ids}")
        cases.append({
            "name": name,
            "prompt": prompt,
            "chat": chat,
            "add_bos": False,
            "parse_special": chat,
            "prompt_ids": prompt_ids,
            "completion_ids": ids,
            "completion_text": llm.detokenize(ids).decode("utf-8", errors="replace"),
            "finish_reason": finish,
            "top1_margins": margins,
            "stable_prefix": stable,
            "top_logits": tops[:len(ids)],
        })
        print(f"golden: greedy {name}: {len(prompt_ids)} prompt ids, {len(ids)} new ({finish}), "
              f"min margin {min(margins) if margins else 0:.4f}, llama.cpp self-consistent "
              f"for {stable}")
    obj = {
        "generator": generator(SCRIPT, llama_packages()),
        "model": gguf_model(),
        "settings": SETTINGS,
        "notes": "top1_margins[i] = logit(top1) - logit(top2) at step i. llama.cpp's own "
                 "logits move by up to about 0.6 when only the prompt's batching changes "
                 "(8-bit activation rounding amplifies float-order differences), so near-ties "
                 "are not determined by the model; stable_prefix says how far llama.cpp agrees "
                 "with itself. The tests require the first 32 ids equal for every case stable "
                 "that far.",
        "cases": cases,
    }
    write_json("smollm2_greedy.json", obj)


def main():
    what = sys.argv[1:] or ["tokens", "chat", "greedy"]
    for w in what:
        {"tokens": gen_tokens, "chat": gen_chat, "greedy": gen_greedy}[w]()


if __name__ == "__main__":
    main()
