#!/usr/bin/env python3
"""OpenAI's official Python SDK through Outpost's AI gateway.

    openai_gateway.py AGENT_URL

The agent must serve "@local/smollm2-135m-instruct" and define gateway
"default" in account "local", as tests/integration/test_openai_sdk.c
configures it. The SDK talks to the gateway's OpenAI-compatible endpoint
(/v1/local/default/compat, model "{provider}/{model}"), with only the base
URL changed; the gateway's headers and its log record are checked too.
Prints one line per check; exits 0 only if all passed.
"""
import json
import sys
import time
import urllib.request

from openai import OpenAI

MODEL = "workers-ai/@local/smollm2-135m-instruct"


def check(cond, what, got=None):
    if not cond:
        print(f"FAIL {what}: got {got!r}", flush=True)
        sys.exit(1)
    print(f"ok   {what}", flush=True)


def main():
    agent = sys.argv[1].rstrip("/")
    client = OpenAI(base_url=agent + "/v1/local/default/compat", api_key="unused",
                    max_retries=0, timeout=120)
    msgs = [{"role": "user", "content": "What is 2+2?"}]

    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=msgs, temperature=0, max_tokens=16,
        extra_headers={"cf-aig-cache-ttl": "60", "cf-aig-metadata": '{"suite":"sdk"}'})
    r = raw.parse()
    text = r.choices[0].message.content
    check("4" in text, "gateway chat: a sensible answer", text)
    check(raw.headers.get("cf-aig-step") == "0", "gateway chat: cf-aig-step",
          raw.headers.get("cf-aig-step"))
    check(raw.headers.get("cf-aig-cache-status") == "MISS", "gateway chat: first is a MISS",
          raw.headers.get("cf-aig-cache-status"))
    log_id = raw.headers.get("cf-aig-log-id")
    check(log_id and len(log_id) == 26, "gateway chat: a log id", log_id)

    raw2 = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=msgs, temperature=0, max_tokens=16,
        extra_headers={"cf-aig-cache-ttl": "60"})
    check(raw2.headers.get("cf-aig-cache-status") == "HIT", "gateway chat: second is a HIT",
          raw2.headers.get("cf-aig-cache-status"))
    check(raw2.parse().choices[0].message.content == text, "gateway chat: HIT has the same text")

    pieces, usage = [], None
    stream = client.chat.completions.create(model=MODEL, messages=msgs, temperature=0,
                                            max_tokens=16, stream=True)
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                pieces.append(c.delta.content)
    check("".join(pieces) == text, "gateway stream: same text", ("".join(pieces), text))
    check(usage is not None and usage.completion_tokens > 0,
          "gateway stream: usage chunk (the gateway asks for it)", usage)

    # The record of the first call, with its metadata and tokens.
    url = (agent + "/client/v4/accounts/local/ai-gateway/gateways/default/logs/" + log_id)
    rec = None
    for _ in range(100):
        try:
            with urllib.request.urlopen(url) as resp:
                rec = json.load(resp)["result"]
                break
        except urllib.error.HTTPError:
            time.sleep(0.05)
    check(rec is not None, "gateway log: the record is served")
    check(rec["metadata"] == {"suite": "sdk"}, "gateway log: metadata", rec["metadata"])
    check(rec["tokens_out"] > 0 and rec["cost"] > 0, "gateway log: tokens and cost",
          (rec["tokens_out"], rec["cost"]))
    print("openai_gateway: all checks passed", flush=True)


if __name__ == "__main__":
    main()
