#!/usr/bin/env python3
"""Cloudflare's official Python SDK (cloudflare 5.9.0) against Outpost's
Vectorize v2 API, with only the base URL changed.

    cloudflare_vectorize.py AGENT_URL

The agent must have account "local" (tests/integration/test_vectorize.c
configures it). Runs the SDK's vectorize calls: indexes create (dimensions
and metric, and a preset), list, get, info, insert and upsert (NDJSON bodies
as bytes and as str, as the SDK sends them), query, get_by_ids,
delete_by_ids, list_vectors with its cursor, metadata_index create/list/
delete, delete; and errors as the SDK's exceptions. Prints one line per
check; exits 0 only if all passed.
"""
import datetime
import sys
import time

import cloudflare
from cloudflare import Cloudflare

ACCOUNT = "local"

SEED = [
    ("1", [32.4, 74.1, 3.2], "/products/sku/13913913"),
    ("2", [15.1, 19.2, 15.8], "/products/sku/10148191"),
    ("3", [0.16, 1.2, 3.8], "/products/sku/97913813"),
    ("4", [75.1, 67.1, 29.9], "/products/sku/418313"),
    ("5", [58.8, 6.7, 3.4], "/products/sku/55519183"),
]


def check(cond, what, got=None):
    if not cond:
        print(f"FAIL {what}: got {got!r}", flush=True)
        sys.exit(1)
    print(f"ok   {what}", flush=True)


def ndjson(rows):
    import json
    return "".join(json.dumps({"id": i, "values": v, "metadata": {"url": u}}) + "\n"
                   for i, v, u in rows)


def wait_applied(idx, name, mutation_id):
    """Mutations apply asynchronously: poll info until this one is applied."""
    want = int(mutation_id)
    for _ in range(400):
        info = idx.info(name, account_id=ACCOUNT)
        if info.processed_up_to_mutation and int(info.processed_up_to_mutation) >= want:
            return info
        time.sleep(0.025)
    check(False, f"mutation {mutation_id} applied", None)


def main():
    agent = sys.argv[1].rstrip("/")
    client = Cloudflare(api_token="unused-on-loopback", base_url=agent + "/client/v4",
                        max_retries=0, timeout=60)
    idx = client.vectorize.indexes

    created = idx.create(account_id=ACCOUNT, name="sdk-index", description="from the SDK",
                         config={"dimensions": 3, "metric": "cosine"})
    check(created.name == "sdk-index", "create: name", created.name)
    check(created.config.dimensions == 3 and created.config.metric == "cosine",
          "create: config", created.config)
    check(isinstance(created.created_on, datetime.datetime), "create: created_on is a datetime",
          created.created_on)
    check(created.description == "from the SDK", "create: description", created.description)

    preset = idx.create(account_id=ACCOUNT, name="sdk-preset",
                        config={"preset": "@cf/baai/bge-base-en-v1.5"})
    check(preset.config.dimensions == 768 and preset.config.metric == "cosine"
          and preset.config.preset == "@cf/baai/bge-base-en-v1.5", "create with a preset",
          preset.config)

    names = sorted(i.name for i in idx.list(account_id=ACCOUNT))
    check(names == ["sdk-index", "sdk-preset"], "list", names)
    got = idx.get("sdk-index", account_id=ACCOUNT)
    check(got.name == "sdk-index" and got.config.dimensions == 3, "get", got)

    ins = idx.insert("sdk-index", account_id=ACCOUNT, body=ndjson(SEED[:3]).encode())
    check(ins.mutation_id and ins.mutation_id.isdigit(), "insert: a mutationId", ins.mutation_id)
    # A str body: the SDK sends it as a JSON string, which the agent reads as NDJSON.
    ups = idx.upsert("sdk-index", account_id=ACCOUNT, body=ndjson(SEED[3:]))
    check(int(ups.mutation_id) > int(ins.mutation_id), "upsert: a later mutationId",
          ups.mutation_id)
    disc = idx.upsert("sdk-index", account_id=ACCOUNT, unparsable_behavior="discard",
                      body=b'not json\n{"id":"6","values":[0,0,1]}\n')
    info = wait_applied(idx, "sdk-index", disc.mutation_id)
    check(info.vector_count == 6 and info.dimensions == 3, "info: count and dimensions", info)
    check(isinstance(info.processed_up_to_datetime, datetime.datetime),
          "info: processedUpToDatetime", info.processed_up_to_datetime)

    q = idx.query("sdk-index", account_id=ACCOUNT, vector=[54.8, 5.5, 3.1], top_k=3,
                  return_values=True, return_metadata="all")
    ids = [m.id for m in q.matches]
    check(q.count == 3 and ids == ["5", "4", "2"], "query: the seed's matches", ids)
    scores = [round(m.score, 6) for m in q.matches]
    check(all(abs(a - b) < 2e-6 for a, b in zip(scores, [0.999909, 0.789848, 0.611976])),
          "query: the seed's scores", scores)
    check(q.matches[0].values == [58.8, 6.7, 3.4], "query: values as inserted",
          q.matches[0].values)
    check(q.matches[0].metadata == {"url": "/products/sku/55519183"}, "query: metadata",
          q.matches[0].metadata)

    q = idx.query("sdk-index", account_id=ACCOUNT, vector=[54.8, 5.5, 3.1], top_k=5,
                  filter={"url": {"$in": ["/products/sku/418313", "/products/sku/97913813"]}})
    check(sorted(m.id for m in q.matches) == ["3", "4"], "query: a filter",
          [m.id for m in q.matches])
    check(q.matches[0].values is None and q.matches[0].metadata is None,
          "query: no values or metadata unless asked", q.matches[0])

    vecs = idx.get_by_ids("sdk-index", account_id=ACCOUNT, ids=["5", "1", "missing"])
    check([v["id"] for v in vecs] == ["5", "1"], "get_by_ids", vecs)
    check(vecs[0]["values"] == [58.8, 6.7, 3.4], "get_by_ids: values", vecs[0])

    page = idx.list_vectors("sdk-index", account_id=ACCOUNT, count=4)
    check(page.count == 4 and page.is_truncated and page.total_count == 6
          and page.next_cursor, "list_vectors: first page", page)
    page2 = idx.list_vectors("sdk-index", account_id=ACCOUNT, count=4, cursor=page.next_cursor)
    all_ids = [v.id for v in page.vectors] + [v.id for v in page2.vectors]
    check(all_ids == ["1", "2", "3", "4", "5", "6"] and not page2.is_truncated
          and page2.next_cursor is None, "list_vectors: second page", all_ids)

    mc = idx.metadata_index.create("sdk-index", account_id=ACCOUNT, property_name="url",
                                   index_type="string")
    wait_applied(idx, "sdk-index", mc.mutation_id)
    ml = idx.metadata_index.list("sdk-index", account_id=ACCOUNT)
    got_mi = [(m.property_name, m.index_type) for m in ml.metadata_indexes]
    check(got_mi == [("url", "string")], "metadata_index list", got_mi)
    q = idx.query("sdk-index", account_id=ACCOUNT, vector=[1, 1, 1], top_k=10,
                  filter={"url": "/products/sku/418313"}, return_metadata="indexed")
    check([m.id for m in q.matches] == ["4"] and q.matches[0].metadata ==
          {"url": "/products/sku/418313"}, "query: filter on an indexed property", q.matches)
    md = idx.metadata_index.delete("sdk-index", account_id=ACCOUNT, property_name="url")
    wait_applied(idx, "sdk-index", md.mutation_id)
    ml = idx.metadata_index.list("sdk-index", account_id=ACCOUNT)
    check(ml.metadata_indexes == [], "metadata_index delete", ml.metadata_indexes)

    dl = idx.delete_by_ids("sdk-index", account_id=ACCOUNT, ids=["1", "6"])
    info = wait_applied(idx, "sdk-index", dl.mutation_id)
    check(info.vector_count == 4, "delete_by_ids", info.vector_count)

    try:
        idx.get("no-such-index", account_id=ACCOUNT)
        check(False, "unknown index raises")
    except cloudflare.NotFoundError as e:
        check(e.status_code == 404, "unknown index: NotFoundError", e.status_code)
    try:
        idx.query("sdk-index", account_id=ACCOUNT, vector=[1, 2, 3], top_k=101)
        check(False, "topK 101 raises")
    except cloudflare.BadRequestError as e:
        check("100" in str(e), "topK 101: BadRequestError naming the limit", str(e))
    try:
        idx.insert("sdk-index", account_id=ACCOUNT, body=b'{"id":"x","values":[1,2]}\n')
        check(False, "wrong dimensions raise")
    except cloudflare.BadRequestError as e:
        check("dimensions" in str(e), "wrong dimensions: BadRequestError", str(e))
    t0 = time.monotonic()
    try:
        idx.create(account_id=ACCOUNT, name="sdk-index",
                   config={"dimensions": 3, "metric": "cosine"})
        check(False, "duplicate index raises")
    except cloudflare.ConflictError as e:
        check(e.status_code == 409, "duplicate index: ConflictError", e.status_code)
    # A client with retries on does not retry a 409 (x-should-retry: false).
    retrying = Cloudflare(api_token="unused-on-loopback", base_url=agent + "/client/v4",
                          max_retries=2, timeout=60)
    t0 = time.monotonic()
    try:
        retrying.vectorize.indexes.create(account_id=ACCOUNT, name="sdk-index",
                                          config={"dimensions": 3, "metric": "cosine"})
    except cloudflare.ConflictError:
        pass
    check(time.monotonic() - t0 < 0.4, "409 is not retried", time.monotonic() - t0)

    idx.delete("sdk-preset", account_id=ACCOUNT)
    names = [i.name for i in idx.list(account_id=ACCOUNT)]
    check(names == ["sdk-index"], "delete", names)
    print("cloudflare_vectorize: all checks passed", flush=True)


if __name__ == "__main__":
    main()
