#!/usr/bin/env python3
"""Sentence embeddings per second: Outpost (all-MiniLM-L6-v2 through the bert
plugin, over HTTP) against sentence-transformers (in-process, torch on the
CPU) on the same sentences, cores and thread count, in one run.

Runs under the golden venv's Python (sentence-transformers, torch); normally
started by bench/embed_bench.sh. See bench/README.md.

For each batch size (--batches, default 1 and 32), each side runs for
--seconds, --reps times, interleaved (ST, Outpost, ST, Outpost, ...) so that
background load hits both alike; the table shows medians:

  st          SentenceTransformer.encode(batch, batch_size=B), tokenization
              included, torch.set_num_threads(T), this process pinned to --cpus
  v1          POST /v1/embeddings {"model", "input": [B texts],
              "encoding_format": "base64"} (what OpenAI's SDKs send), one
              client, one request at a time, keep-alive
  ai/run      POST /ai/run/@local/all-minilm-l6-v2 {"text": [B texts]} (JSON floats)
  v1 x C      --concurrency clients sending batch-B requests at once (the
              server may batch across requests); no in-process equivalent

outpostd is pinned to --cpus with taskset; the HTTP client is this Python
process, on the same cores (there are only 2): its CPU time is reported.
"""
import argparse
import base64
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time

from benchlib import free_port, loadavg, log, wait_quiet  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_ID = "@local/all-minilm-l6-v2"


def sentences(n=64):
    """Deterministic English sentences of 6 to 25 words."""
    subj = ["The old fisherman", "A young engineer", "My neighbour's cat", "The city council",
            "An autonomous drone", "The research team", "Our edge server", "A quiet librarian"]
    verb = ["quietly repaired", "carefully studied", "suddenly noticed", "proudly presented",
            "slowly rebuilt", "happily shared", "briefly discussed", "thoroughly tested"]
    obj = ["the broken wooden bridge", "a new theory of language", "the results of the experiment",
           "an unusual pattern in the network traffic", "the map", "a recipe for bread",
           "the latest quarterly report on regional energy consumption", "a song"]
    tail = ["", "before the storm arrived", "while everyone else was asleep at home",
            "in the small village near the river", "after a long and difficult week of meetings",
            "with great care", "despite the noise from the street outside the window", "today"]
    out = []
    for i in range(n):
        s = f"{subj[i % 8]} {verb[(i * 3) % 8]} {obj[(i * 5) % 8]}"
        t = tail[(i * 7) % 8]
        out.append((s + (" " + t if t else "")) + ".")
    return out


class Client:
    def __init__(self, port):
        self.port = port
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

    def post(self, path, body):
        data = json.dumps(body).encode()
        for attempt in (0, 1):
            try:
                self.c.request("POST", path, body=data, headers={"Content-Type": "application/json"})
                r = self.c.getresponse()
                raw = r.read()
                return r.status, raw
            except (OSError, http.client.HTTPException):
                self.c.close()
                self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
                if attempt:
                    raise
        return None, b""


def v1_call(client, texts):
    st, raw = client.post("/v1/embeddings", {"model": MODEL_ID, "input": texts,
                                              "encoding_format": "base64"})
    if st != 200:
        raise RuntimeError(f"/v1/embeddings: HTTP {st}: {raw[:300]!r}")
    data = json.loads(raw)["data"]
    if len(data) != len(texts) or len(base64.b64decode(data[0]["embedding"])) != 384 * 4:
        raise RuntimeError("/v1/embeddings: wrong shape")


def airun_call(client, texts):
    st, raw = client.post(f"/ai/run/{MODEL_ID}", {"text": texts})
    if st != 200:
        raise RuntimeError(f"/ai/run: HTTP {st}: {raw[:300]!r}")
    res = json.loads(raw)["result"]
    if res["shape"] != [len(texts), 384]:
        raise RuntimeError(f"/ai/run: shape {res['shape']}")


def timed_loop(fn, texts, batch, seconds):
    """Calls fn(batch of texts) for `seconds`; returns embeddings/s."""
    n = i = 0
    t0 = time.perf_counter()
    while True:
        b = [texts[(i + k) % len(texts)] for k in range(batch)]
        i += batch
        fn(b)
        n += batch
        el = time.perf_counter() - t0
        if el >= seconds:
            return n / el


def concurrent_loop(port, texts, batch, seconds, conc):
    stop = time.perf_counter() + seconds
    counts = [0] * conc
    errors = []

    def worker(k):
        c = Client(port)
        i = k * batch
        try:
            while time.perf_counter() < stop:
                b = [texts[(i + j) % len(texts)] for j in range(batch)]
                i += batch * conc
                v1_call(c, b)
                counts[k] += batch
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    t0 = time.perf_counter()
    th = [threading.Thread(target=worker, args=(k,)) for k in range(conc)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    if errors:
        raise RuntimeError(f"concurrent /v1/embeddings: {errors[0]}")
    return sum(counts) / (time.perf_counter() - t0)


OUTPOST_CONFIG = """# written by bench/embed_bench.py
server:
  listen: 127.0.0.1:{port}
  workers: {workers}
log: {{level: warn}}
data_dir: {tmp}/var
devices:
  cpu:
    threads: {threads}
plugins:
  dirs: [{plugins}]
accounts:
  - id: local
models:
  - id: "{model_id}"
    plugin: bert
    task: text-embeddings
    path: {model}
    options:
      threads: {threads}
"""


def start_outpostd(args, tmp):
    port = free_port()
    cfg = os.path.join(tmp, "outpost.yaml")
    with open(cfg, "w") as f:
        f.write(OUTPOST_CONFIG.format(port=port, workers=args.outpost_workers, tmp=tmp,
                                      threads=args.threads, plugins=json.dumps(args.plugins_dir),
                                      model_id=MODEL_ID, model=json.dumps(args.model)))
    logf = os.path.join(tmp, "outpostd.log")
    proc = subprocess.Popen(args.taskset + [args.outpostd, "--config", cfg],
                            stdout=open(logf, "wb"), stderr=subprocess.STDOUT, start_new_session=True)

    def fail(reason):
        proc.terminate()
        tail = open(logf, "rb").read()[-3000:].decode("utf-8", "replace")
        raise SystemExit("embed_bench: outpostd cannot serve the model, so there is nothing to "
                         f"compare.\n  model: {args.model} (plugin bert, {args.plugins_dir})\n"
                         f"  config: {cfg}\n  reason: {reason}\n--- outpostd log ---\n{tail}")

    deadline = time.time() + 120
    while True:
        if proc.poll() is not None:
            fail(f"exited with code {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/readyz")
            r = c.getresponse()
            body = r.read()
            if r.status == 200:
                break
            failed = (json.loads(body) if body.startswith(b"{") else {}).get("failed")
            if failed:
                fail(f"/readyz reports failed models: {json.dumps(failed)}")
        except (OSError, ValueError, http.client.HTTPException):
            pass
        if time.time() > deadline:
            fail("not ready after 120 s")
        time.sleep(0.3)
    try:
        v1_call(Client(port), ["hello world"])
    except Exception as e:  # noqa: BLE001
        fail(str(e))
    return proc, port


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "models/all-MiniLM-L6-v2"))
    ap.add_argument("--threads", type=int, default=0, help="0: the number of --cpus")
    ap.add_argument("--cpus", default="", help="core list (default: this process's)")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--outpostd", default=os.path.join(ROOT, "build/outpostd"))
    ap.add_argument("--plugins-dir", default=os.path.join(ROOT, "build/plugins"))
    ap.add_argument("--outpost-workers", type=int, default=0)
    ap.add_argument("--bert-bench", default=os.path.join(ROOT, "build/bench/bert_bench"))
    ap.add_argument("--st-only", action="store_true", help="only sentence-transformers (baseline)")
    ap.add_argument("--wait-quiet", type=int, default=0, metavar="S",
                    help="before each run, wait up to S seconds for the CPUs to be idle (shared machines)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()

    if args.cpus:
        cpus = []
        for part in args.cpus.split(","):
            a, _, b = part.partition("-")
            cpus += range(int(a), int(b or a) + 1)
        os.sched_setaffinity(0, cpus)
    cpus = sorted(os.sched_getaffinity(0))
    args.cpus = ",".join(map(str, cpus))
    args.threads = args.threads or len(cpus)
    args.taskset = ["taskset", "-c", args.cpus] if shutil.which("taskset") else []
    args.model = os.path.abspath(args.model)
    batches = [int(x) for x in args.batches.split(",")]
    texts = sentences()

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import sentence_transformers
    from sentence_transformers import SentenceTransformer
    torch.set_num_threads(args.threads)
    st = SentenceTransformer(args.model, device="cpu")
    st_call = lambda b: st.encode(b, batch_size=len(b), convert_to_numpy=True)  # noqa: E731

    tmp = tempfile.mkdtemp(prefix="outpost-embed-bench-")
    load_start = loadavg()
    proc = None
    sides = ["st"]
    if not args.st_only:
        if not os.access(args.outpostd, os.X_OK):
            raise SystemExit(f"embed_bench: {args.outpostd} is missing: run make")
        proc, port = start_outpostd(args, tmp)
        client = Client(port)
        sides += ["v1", "ai/run", f"v1 x{args.concurrency}"]
    results = {s: {b: [] for b in batches} for s in sides}
    agree = None
    if proc:  # the two must compute the same thing: cosine of their embeddings
        import numpy as np
        sample = texts[:8]
        st_vecs = st.encode(sample, normalize_embeddings=True, convert_to_numpy=True)
        st_code, raw = client.post("/v1/embeddings", {"model": MODEL_ID, "input": sample,
                                                       "encoding_format": "base64"})
        ours = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
                for d in json.loads(raw)["data"]]
        agree = min(float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
                    for a, b in zip(st_vecs, ours))
    cpu_client = 0.0
    try:
        for b in batches:  # warm-up
            st_call(texts[:b])
            if proc:
                v1_call(client, texts[:b])
                airun_call(client, texts[:b])
        for rep in range(args.reps):
            for b in batches:
                log(f"embed_bench: run {rep + 1}/{args.reps}, batch {b}")
                wait_quiet(args.wait_quiet)
                results["st"][b].append(timed_loop(st_call, texts, b, args.seconds))
                if proc:
                    wait_quiet(args.wait_quiet)
                    c0 = time.process_time()
                    results["v1"][b].append(timed_loop(lambda x: v1_call(client, x), texts, b, args.seconds))
                    results["ai/run"][b].append(timed_loop(lambda x: airun_call(client, x), texts, b, args.seconds))
                    results[f"v1 x{args.concurrency}"][b].append(
                        concurrent_loop(port, texts, b, args.seconds, args.concurrency))
                    cpu_client += time.process_time() - c0
    finally:
        if proc:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    med = {s: {b: statistics.median(v) for b, v in d.items()} for s, d in results.items()}

    print()
    print(f"all-MiniLM-L6-v2, {len(texts)} sentences of 6-25 words; threads {args.threads}; cores "
          f"{args.cpus}; {args.seconds:g} s per run, median of {args.reps} runs; embeddings/s "
          f"(higher is better)")
    print(f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}")
    head = f"{'batch':>6} {'sentence-tf':>12}"
    for s in sides[1:]:
        head += f" {'outpost ' + s:>17} {'ratio':>7}"
    print(head)
    for b in batches:
        row = f"{b:>6} {med['st'][b]:>12.1f}"
        for s in sides[1:]:
            row += f" {med[s][b]:>17.1f} {med[s][b] / med['st'][b]:>6.2f}x"
        print(row)
    if proc:
        print(f"(ratio = outpost / sentence-transformers; the HTTP client in this process used "
              f"{cpu_client:.1f} CPU s on the same cores)")
    if agree is not None:
        print(f"lowest cosine between Outpost's and sentence-transformers' embeddings of 8 "
              f"sentences: {agree:.6f}")
    print(f"load average (1, 5, 15 min) at start {load_start}, at end {loadavg()}")
    if os.access(args.bert_bench, os.X_OK):
        cmd = args.taskset + [args.bert_bench, "--threads", str(args.threads)]
        wait_quiet(args.wait_quiet)
        log("embed_bench: " + " ".join(cmd))
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        print()
        print("Outpost's bert_bench (in-process, its own sentences):")
        print("  " + "\n  ".join((p.stdout or p.stderr).strip().splitlines()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "cpus": args.cpus, "median": med,
                       "runs": results}, f, indent=1)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
