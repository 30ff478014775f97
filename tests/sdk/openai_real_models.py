#!/usr/bin/env python3
"""OpenAI's official Python SDK against outpostd serving the bundled models.

    openai_real_models.py AGENT_URL

The agent must serve "@local/smollm2-135m-instruct" (llama plugin) and
"@local/all-minilm-l6-v2" (bert plugin), as tests/integration/
test_openai_sdk.c configures it. Prints one line per check; exits 0 only if
all passed. Run by that test, in the venv scripts/pydeps.sh makes.
"""
import base64
import math
import struct
import sys

from openai import BadRequestError, OpenAI

LLM = "@local/smollm2-135m-instruct"
EMB = "@local/all-minilm-l6-v2"


def check(cond, what, got=None):
    if not cond:
        print(f"FAIL {what}: got {got!r}", flush=True)
        sys.exit(1)
    print(f"ok   {what}", flush=True)


def main():
    base = sys.argv[1].rstrip("/") + "/v1"
    client = OpenAI(base_url=base, api_key="unused-on-loopback", max_retries=0, timeout=120)

    r = client.chat.completions.create(
        model=LLM, messages=[{"role": "user", "content": "What is 2+2?"}],
        temperature=0, max_tokens=24)
    text = r.choices[0].message.content
    check("4" in text, "chat: a sensible answer", text)
    check(r.choices[0].finish_reason in ("stop", "length"), "chat: finish_reason",
          r.choices[0].finish_reason)
    check(r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 24,
          "chat: usage counts the model's tokens", r.usage)
    check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens,
          "chat: total_tokens", r.usage)

    pieces, finish, usage = [], None, None
    stream = client.chat.completions.create(
        model=LLM, messages=[{"role": "user", "content": "What is 2+2?"}],
        temperature=0, max_tokens=24, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                pieces.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    check("".join(pieces) == text, "chat stream: same text as the plain answer",
          ("".join(pieces), text))
    check(len(pieces) > 3, "chat stream: arrives in pieces", len(pieces))
    check(finish in ("stop", "length") and usage and usage.completion_tokens > 0,
          "chat stream: finish_reason and usage", (finish, usage))

    r = client.completions.create(model=LLM, prompt="The capital of France is",
                                  temperature=0, max_tokens=8)
    check("Paris" in r.choices[0].text, "completions: a raw continuation", r.choices[0].text)

    try:
        client.chat.completions.create(
            model=LLM, messages=[{"role": "user", "content": "hi"}], max_tokens=100000)
        check(False, "context overflow raises BadRequestError")
    except BadRequestError as e:
        check("8192" in str(e), "context overflow: BadRequestError naming the limit", str(e))

    texts = ["The cat sat on the mat.", "A kitten was sitting on the rug.",
             "Quarterly revenue grew by twelve percent."]
    e = client.embeddings.create(model=EMB, input=texts)
    vecs = [d.embedding for d in e.data]
    check(len(vecs) == 3 and all(len(v) == 384 for v in vecs), "embeddings: 3 x 384",
          [len(v) for v in vecs])
    norms = [math.sqrt(sum(x * x for x in v)) for v in vecs]
    check(all(abs(n - 1) < 1e-4 for n in norms), "embeddings: unit length", norms)

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b))
    check(cos(vecs[0], vecs[1]) > cos(vecs[0], vecs[2]) + 0.2,
          "embeddings: similar sentences score higher than unrelated ones",
          (cos(vecs[0], vecs[1]), cos(vecs[0], vecs[2])))
    check(e.usage.prompt_tokens > 0, "embeddings: usage", e.usage)
    # Asked for explicitly, base64 comes back as the string (the SDK decodes
    # it only when it chose base64 itself): little-endian float32s.
    b64 = client.embeddings.create(model=EMB, input=texts[0], encoding_format="base64")
    raw = base64.b64decode(b64.data[0].embedding)
    floats = struct.unpack("<%df" % (len(raw) // 4), raw)
    check(len(floats) == 384 and max(abs(x - y) for x, y in zip(floats, vecs[0])) < 1e-6,
          "embeddings: base64 decodes to the same floats", len(floats))
    print("openai_real_models: all checks passed", flush=True)


if __name__ == "__main__":
    main()
