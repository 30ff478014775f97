#!/usr/bin/env python3
"""Drives a running outpostd with OpenAI's official Python SDK.

    openai_client.py AGENT_URL        # e.g. http://127.0.0.1:8787

The agent must serve the echo test plugin as "@local/echo" (text generation,
alias "gpt-4o-mini") and "@local/emb" (embeddings, 4 dimensions), as
tests/integration/test_openai_sdk.c configures it. Every check runs against
both base URLs the SDK may be given: AGENT_URL/v1 and the account-scoped
AGENT_URL/client/v4/accounts/local/ai/v1. Prints one line per check; exits 0
only if all passed (1 on the first failure, with what differed).

Run by the Criterion test above, in the venv that scripts/pydeps.sh makes.
"""
import math
import sys

import openai
from openai import BadRequestError, NotFoundError, OpenAI


def check(cond, what, got=None):
    if not cond:
        print(f"FAIL {what}: got {got!r}", flush=True)
        sys.exit(1)
    print(f"ok   {what}", flush=True)


def run(base_url, tag):
    # Loopback needs no token; the SDK insists on one, which the agent would
    # check only if it were sent off loopback. max_retries=0: an error must
    # surface as the exception, not as a retry.
    client = OpenAI(base_url=base_url, api_key="unused-on-loopback", max_retries=0, timeout=30)

    r = client.chat.completions.create(
        model="@local/echo",
        messages=[{"role": "system", "content": "be brief"},
                  {"role": "user", "content": "hello sdk world"}],
        temperature=0.2, top_p=0.9, seed=7, stop=["never"],
    )
    check(r.object == "chat.completion", f"{tag} chat object", r.object)
    check(r.id.startswith("chatcmpl-"), f"{tag} chat id", r.id)
    check(r.model == "@local/echo", f"{tag} chat model", r.model)
    check(r.choices[0].message.role == "assistant", f"{tag} chat role", r.choices[0].message.role)
    check(r.choices[0].message.content == "hello sdk world", f"{tag} chat content",
          r.choices[0].message.content)
    check(r.choices[0].finish_reason == "stop", f"{tag} chat finish_reason",
          r.choices[0].finish_reason)
    check((r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (3, 3, 6),
          f"{tag} chat usage", r.usage)

    r = client.chat.completions.create(
        model="gpt-4o-mini", max_completion_tokens=1,
        messages=[{"role": "user", "content": [{"type": "text", "text": "alias works"}]}],
    )
    check(r.model == "gpt-4o-mini" and r.choices[0].message.content == "alias",
          f"{tag} chat via alias, content parts, max_completion_tokens", r.choices[0].message)
    check(r.choices[0].finish_reason == "length", f"{tag} chat finish_reason length",
          r.choices[0].finish_reason)

    pieces, finish, usage, roles, ids = [], None, None, [], set()
    stream = client.chat.completions.create(
        model="@local/echo", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "one two three four"}],
    )
    for chunk in stream:
        ids.add(chunk.id)
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.role:
                roles.append(c.delta.role)
            if c.delta.content:
                pieces.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    check("".join(pieces) == "one two three four", f"{tag} chat stream content", pieces)
    check(len(pieces) == 4, f"{tag} chat stream one chunk per piece", pieces)
    check(roles == ["assistant"], f"{tag} chat stream role once", roles)
    check(finish == "stop", f"{tag} chat stream finish_reason", finish)
    check(usage is not None and usage.completion_tokens == 4 and usage.total_tokens == 8,
          f"{tag} chat stream usage chunk", usage)
    check(len(ids) == 1, f"{tag} chat stream one id", ids)

    r = client.completions.create(model="@local/echo", prompt="the quick brown fox", max_tokens=2)
    check(r.object == "text_completion" and r.choices[0].text == "the quick",
          f"{tag} completion text", r.choices[0].text)
    check(r.choices[0].finish_reason == "length", f"{tag} completion finish_reason",
          r.choices[0].finish_reason)
    check(r.usage.total_tokens == 6, f"{tag} completion usage", r.usage)

    text = "".join(c.choices[0].text for c in
                   client.completions.create(model="@local/echo", prompt="a b c", stream=True)
                   if c.choices)
    check(text == "a b c", f"{tag} completion stream", text)

    # The SDK asks for base64 unless told otherwise and decodes it itself.
    e64 = client.embeddings.create(model="@local/emb", input=["a b", "c d e"])
    ef = client.embeddings.create(model="@local/emb", input=["a b", "c d e"],
                                  encoding_format="float", dimensions=4)
    check(len(e64.data) == 2 and [d.index for d in e64.data] == [0, 1],
          f"{tag} embeddings count and order", e64.data)
    for a, b in zip(e64.data, ef.data):
        check(len(a.embedding) == 4 and len(b.embedding) == 4, f"{tag} embedding width",
              len(a.embedding))
        check(all(abs(x - y) < 1e-6 for x, y in zip(a.embedding, b.embedding)),
              f"{tag} base64 equals float", (a.embedding, b.embedding))
        norm = math.sqrt(sum(x * x for x in b.embedding))
        check(abs(norm - 1) < 1e-5, f"{tag} embedding is a unit vector", norm)
    check(ef.usage.prompt_tokens == 5 and ef.usage.total_tokens == 5, f"{tag} embeddings usage",
          ef.usage)

    try:
        client.chat.completions.create(model="@local/echo", n=2,
                                       messages=[{"role": "user", "content": "x"}])
        check(False, f"{tag} n=2 raises")
    except BadRequestError as e:
        check(e.status_code == 400 and e.param == "n" and e.code == "unsupported_parameter"
              and e.type == "invalid_request_error", f"{tag} n=2 -> BadRequestError",
              (e.status_code, e.param, e.code, e.type))
    try:
        client.embeddings.create(model="@local/emb", input=[[1, 2, 3]])
        check(False, f"{tag} token arrays raise")
    except BadRequestError as e:
        check(e.param == "input", f"{tag} token arrays -> BadRequestError", e.param)
    try:
        client.chat.completions.create(model="no-such-model",
                                       messages=[{"role": "user", "content": "x"}])
        check(False, f"{tag} unknown model raises")
    except NotFoundError as e:
        check(e.status_code == 404 and e.code == "model_not_found",
              f"{tag} unknown model -> NotFoundError", (e.status_code, e.code))

    ids = [m.id for m in client.models.list()]
    check("@local/echo" in ids and "gpt-4o-mini" in ids and "@local/emb" in ids,
          f"{tag} models.list", ids)


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    root = sys.argv[1].rstrip("/")
    print(f"openai {openai.__version__}", flush=True)
    run(root + "/v1", "v1")
    run(root + "/client/v4/accounts/local/ai/v1", "scoped")
    print("openai_client: all checks passed", flush=True)


if __name__ == "__main__":
    main()
