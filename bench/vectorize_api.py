#!/usr/bin/env python3
"""The Vectorize API of a real outpostd, end to end, on a data set of
bench/vector_bench.sh (build/bench-data/<name>.{base,query}.f32, gt.i32):

  1. ingest: upsert every base vector as NDJSON batches over HTTP; time to
     the last acknowledgement (durable) and until info says it was applied;
  2. memory and disk per index (outpost_vectorize_memory_bytes, RSS);
  3. queries over HTTP (topK 10, JSON) from Python threads with keep-alive
     connections on the same cores, so the figure is a lower bound of what
     the agent serves; recall@10 against the exact ground truth, QPS,
     p50/p99 latency;
  4. kill -9 right after the ingest, restart: the time until the index
     answers, the agent's own open time (snapshot + log tail), and that
     every vector is back.

    bench/vectorize_api.py [--data build/bench-data/real] [--n N] [--batch 1000]
                           [--clients 1,2,8] [--seconds 10] [--ef 0]

Standard library + numpy. The ids are the base rows' numbers, so recall is
read against the ground truth file directly.
"""
import argparse
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import free_port, loadavg, log  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDX = "/client/v4/accounts/local/vectorize/v2/indexes"


def read_f32(path):
    with open(path, "rb") as f:
        magic, n, dim = f.read(4), *struct.unpack("<II", f.read(8))
        if magic != b"VXB1":
            raise SystemExit(f"{path}: bad magic")
        return np.frombuffer(f.read(n * dim * 4), dtype="<f4").reshape(n, dim)


def read_gt(path):
    with open(path, "rb") as f:
        magic, n, k = f.read(4), *struct.unpack("<II", f.read(8))
        if magic != b"VXG1":
            raise SystemExit(f"{path}: bad magic")
        return np.frombuffer(f.read(n * k * 4), dtype="<i4").reshape(n, k)


class Agent:
    def __init__(self, workdir, port):
        self.workdir, self.port, self.proc = workdir, port, None
        self.config = os.path.join(workdir, "outpost.yaml")
        with open(self.config, "w") as f:
            f.write(f"server:\n  listen: 127.0.0.1:{port}\n  workers: 4\n"
                    f"  max_body_bytes: 64MiB\n"
                    f"accounts:\n  - id: local\ndata_dir: {workdir}/var\n")

    def start(self):
        self.log = open(os.path.join(self.workdir, "agent.log"), "ab")
        t0 = time.monotonic()
        self.proc = subprocess.Popen([os.path.join(ROOT, "build/outpostd"), "--config",
                                      self.config], stdout=self.log, stderr=self.log)
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                c.request("GET", "/healthz")
                if c.getresponse().status == 200:
                    return time.monotonic() - t0
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise SystemExit("outpostd exited; see " + self.log.name)
            time.sleep(0.01)

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0


def call(conn, method, path, body=None, ctype="application/json"):
    headers = {"Content-Type": ctype} if body is not None else {}
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        raise SystemExit(f"{method} {path}: {r.status} {data[:300]!r}")
    return json.loads(data)["result"]


def metric(conn, name, index):
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    m = re.search(r"^%s\{[^}]*index=\"%s\"[^}]*\} (\S+)$" % (name, index), text, re.M)
    return float(m.group(1)) if m else float("nan")


def ndjson(base, lo, hi):
    return "".join(
        '{"id":"%d","values":[%s]}\n' % (i, ",".join("%.7g" % v for v in base[i]))
        for i in range(lo, hi)).encode()


def query_run(port, index, queries, gt, clients, seconds, ef):
    bodies = []
    for q in queries:
        d = {"vector": [float("%.7g" % v) for v in q], "topK": 10}
        if ef:
            d["ef"] = ef
        bodies.append(json.dumps(d).encode())
    lat, found, stop = [], [], time.monotonic() + seconds
    lock = threading.Lock()

    def worker(w):
        c = http.client.HTTPConnection("127.0.0.1", port)
        mine, hits, i = [], [], w
        while time.monotonic() < stop:
            qi = i % len(bodies)
            t0 = time.perf_counter()
            c.request("POST", f"{IDX}/{index}/query", body=bodies[qi],
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()
            data = r.read()
            mine.append(time.perf_counter() - t0)
            if r.status != 200:
                raise SystemExit(f"query: {r.status} {data[:200]!r}")
            ids = [int(m["id"]) for m in json.loads(data)["result"]["matches"]]
            hits.append(len(set(ids) & set(gt[qi][:10].tolist())) / 10.0)
            i += clients
        with lock:
            lat.extend(mine)
            found.extend(hits)

    t0 = time.monotonic()
    ts = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.monotonic() - t0
    lat.sort()
    return {"qps": len(lat) / wall, "p50_ms": 1e3 * lat[len(lat) // 2],
            "p99_ms": 1e3 * lat[int(len(lat) * 0.99)], "recall": statistics.mean(found),
            "n": len(lat)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(ROOT, "build/bench-data/real"))
    ap.add_argument("--n", type=int, default=0, help="first N base vectors (0 = all)")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--clients", default="1,2,8")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--ef", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()

    base, queries = read_f32(a.data + ".base.f32"), read_f32(a.data + ".query.f32")
    gt = read_gt(a.data + ".gt.i32")
    if a.n and a.n < len(base):
        raise SystemExit("--n below the base size: the ground truth is for the whole set")
    n, dim = base.shape
    log(f"data {a.data}: {n} x {dim}, {len(queries)} queries; load {loadavg()}")

    work = tempfile.mkdtemp(prefix="vxapi-bench-")
    agent = Agent(work, free_port())
    try:
        agent.start()
        c = http.client.HTTPConnection("127.0.0.1", agent.port)
        rss0 = agent.rss_kib()
        call(c, "POST", IDX, json.dumps({"name": "bench", "config": {
            "dimensions": dim, "metric": "cosine"}}).encode())

        # 1. ingest
        t0, sent, last = time.monotonic(), 0, "0"
        for lo in range(0, n, a.batch):
            body = ndjson(base, lo, min(n, lo + a.batch))
            sent += len(body)
            last = call(c, "POST", f"{IDX}/bench/upsert", body, "application/x-ndjson")["mutationId"]
        t_ack = time.monotonic() - t0
        while True:
            info = call(c, "GET", f"{IDX}/bench/info")
            if int(info["processedUpToMutation"]) >= int(last):
                break
            time.sleep(0.2)
        t_applied = time.monotonic() - t0
        mem = metric(c, "outpost_vectorize_memory_bytes", "bench")
        disk = metric(c, "outpost_vectorize_disk_bytes", "bench")
        rss = agent.rss_kib() - rss0
        print(f"ingest: {n} vectors ({sent / 1e6:.0f} MB NDJSON, batches of {a.batch}): "
              f"acknowledged (durable) in {t_ack:.1f} s = {n / t_ack:,.0f} vectors/s; "
              f"applied (graph built) in {t_applied:.1f} s = {n / t_applied:,.0f} vectors/s")
        print(f"memory: index {mem / 1e6:.1f} MB = {mem / n:.0f} B/vector "
              f"(RSS +{rss / 1024:.0f} MiB); disk {disk / 1e6:.1f} MB")
        assert info["vectorCount"] == n, info

        # 2. queries
        print(f"queries over HTTP, topK 10, {len(queries)} held-out queries, {a.seconds:.0f} s "
              f"each (Python clients on the same cores; load {loadavg()}):")
        for cl in [int(x) for x in a.clients.split(",")]:
            r = query_run(agent.port, "bench", queries, gt, cl, a.seconds, a.ef)
            print(f"  {cl} clients: {r['qps']:,.0f} queries/s, p50 {r['p50_ms']:.2f} ms, "
                  f"p99 {r['p99_ms']:.2f} ms, recall@10 {r['recall']:.4f} ({r['n']} queries)")

        # 3. kill -9 and restart
        agent.kill9()
        t_up = agent.start()
        c = http.client.HTTPConnection("127.0.0.1", agent.port)
        info = call(c, "GET", f"{IDX}/bench/info")
        open_s = metric(c, "outpost_vectorize_open_seconds", "bench")
        print(f"kill -9 and restart: serving after {t_up:.2f} s (index open {open_s:.2f} s: "
              f"snapshot + log tail); vectorCount {info['vectorCount']} of {n}, "
              f"processedUpToMutation {info['processedUpToMutation']} (last ack {last})")
        if info["vectorCount"] != n or int(info["processedUpToMutation"]) < int(last):
            raise SystemExit("FAIL: acknowledged vectors missing after kill -9")
    finally:
        agent.stop()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")


if __name__ == "__main__":
    main()
