#!/usr/bin/env python3
"""Outpost vs llama.cpp on the same GGUF file, threads and cores, end to end
over HTTP (OpenAI /v1/completions, streamed), plus llama.cpp's own
llama-bench / llama-batched-bench and Outpost's in-process llm_perf.

Stdlib only. Normally started by bench/llm_bench.sh, which builds what is
missing; see bench/README.md. Run `bench/llm_bench.py --help` for options.

Metrics (each the median over --reps runs, the two servers interleaved run
by run so that background load hits both alike):

  pp      prompt processing, tokens/s: one request with a --pp-tokens prompt
          and max_tokens 1: prompt tokens / time to the first streamed token
  tg      single-stream decode, tokens/s: a 16-token prompt, --tg-tokens new
          tokens (ignore_eos): (n - 1) / (last token time - first token time)
  ttft    time to first token, ms: 16-token prompt, single stream
  agg     aggregate decode, tokens/s: --streams concurrent requests of
          --tg-tokens tokens each, started together: all tokens after each
          stream's first over the wall time from the first first-token to the
          last token (what llm_perf's agg counts)
  e2e     the same --streams requests: all generated tokens / wall time from
          the start to the last token (includes the prompts and queueing)
  ttft@8  median time to first token of those --streams requests started together
  ttft+7  time to first token of a new request sent while --streams - 1
          others are decoding (joining a busy batch)

Every prompt is --pp-tokens or 16 random words, each one token with its
leading space (checked against llama-server's /tokenize), drawn anew for
every request so that no prefix cache can help either side.
"""
import argparse
import http.client
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time

from benchlib import free_port, loadavg, log, wait_quiet  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPOST_MODEL_ID = "@local/smollm2-135m-instruct"

WORDS = """the of and to in is was for on that with as by at from his her an are were which this be
or has had not but its have one all their they been more also new can after who two first other
some time there into only when most over city year about may these many would between world
during people state later than then such used while through where made both part because under
film three since well known team four called them game before under school family could
however year own being life until each great same those music general last found second house
home work number river long early several best high will small name back water war book area
group government should away line order power left around example local end same little large
company without life place early high must public series play church south north east west
state point age name light data model server agent request token plugin policy batch stream
text red blue green black white good bad long short old young right left day night week month
open close start stop run read write send keep give take make find show tell ask call help turn
move live hold bring happen begin seem talk stand lose pay meet include continue set learn change
lead understand watch follow create speak allow add spend grow offer remember love consider appear
buy wait serve die build stay fall cut reach kill remain suggest raise pass sell require report
decide pull""".split()


# --------------------------------------------------------------------------- helpers

def http_json(port, method, path, body=None, timeout=60):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        c.request(method, path, body=data, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        raw = r.read()
        try:
            return r.status, json.loads(raw) if raw else None
        except ValueError:
            return r.status, raw.decode("utf-8", "replace")
    finally:
        c.close()


def stream_completion(port, model, prompt, max_tokens, t0=None, timeout=600, on_first=None):
    """POSTs a streamed /v1/completions; returns timings (perf_counter seconds)."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    res = {"t_start": None, "t_first": None, "t_last": None, "chunks": 0, "usage": None,
           "text": "", "error": None}
    try:
        data = json.dumps(body).encode()
        res["t_start"] = time.perf_counter() if t0 is None else t0
        c.request("POST", "/v1/completions", body=data,
                  headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
        r = c.getresponse()
        if r.status != 200:
            res["error"] = f"HTTP {r.status}: {r.read()[:500].decode('utf-8', 'replace')}"
            return res
        while True:
            line = r.readline()
            if not line:
                break
            now = time.perf_counter()
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            try:
                ev = json.loads(payload)
            except ValueError:
                continue
            if "error" in ev:
                res["error"] = json.dumps(ev["error"])[:500]
                break
            if ev.get("usage"):
                res["usage"] = ev["usage"]
            for ch in ev.get("choices") or []:
                text = ch.get("text")
                if text:
                    res["chunks"] += 1
                    res["text"] += text
                    if res["t_first"] is None:
                        res["t_first"] = now
                        if on_first is not None:
                            on_first.set()
                    res["t_last"] = now
    except (OSError, http.client.HTTPException) as e:
        res["error"] = f"{type(e).__name__}: {e}"
    finally:
        c.close()
    return res


_warned = set()


def completion_tokens(res, asked):
    """Generated tokens from the stream's usage chunk, else the number of text chunks."""
    u = res.get("usage") or {}
    if u.get("completion_tokens") is not None:
        return u["completion_tokens"]
    if "usage" not in _warned:
        _warned.add("usage")
        log("llm_bench: a stream had no usage chunk: counting text chunks as tokens")
    return res["chunks"]


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# --------------------------------------------------------------------------- servers

class Server:
    def __init__(self, name, cmd, port, logfile, model_id, env=None):
        self.name, self.cmd, self.port, self.model_id = name, cmd, port, model_id
        self.logfile = logfile
        self.proc = subprocess.Popen(cmd, stdout=open(logfile, "wb"), stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)

    def log_tail(self, n=30):
        try:
            with open(self.logfile, "rb") as f:
                return b"".join(f.readlines()[-n:]).decode("utf-8", "replace")
        except OSError:
            return ""

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def pid_cpu_seconds(self):
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            return None


def wait_http(server, path, ok, timeout):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited (code {server.proc.returncode}):\n"
                               f"{server.log_tail()}")
        try:
            st, body = http_json(server.port, "GET", path, timeout=5)
            last = (st, body)
            if ok(st, body):
                return
            if isinstance(body, dict) and body.get("failed"):
                raise RuntimeError(f"{server.name}: {path} reports failed models: "
                                   f"{json.dumps(body['failed'])}")
        except OSError as e:
            last = str(e)
        time.sleep(0.3)
    raise RuntimeError(f"{server.name} not ready on {path} after {timeout}s (last: {last})\n"
                       f"{server.log_tail()}")


def start_llama_server(args, name, tmp):
    port = free_port()
    cmd = args.taskset + [args.llama_server, "-m", args.model, "-t", str(args.threads),
                          "-tb", str(args.threads), "-np", str(args.streams),
                          "-c", str(args.streams * args.slot_ctx), "--cont-batching",
                          "--host", "127.0.0.1", "--port", str(port), "--no-webui"]
    s = Server(name, cmd, port, os.path.join(tmp, f"{name}.log"), "smollm2")
    wait_http(s, "/health", lambda st, b: st == 200, 120)
    return s


OUTPOST_CONFIG = """# written by bench/llm_bench.py
server:
  listen: 127.0.0.1:{port}
  workers: {workers}
  request_timeout_s: 600
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
    plugin: llama
    task: text-generation
    path: {model}
    options:
      threads: {threads}
      max_batch: {streams}
      kv_cache_tokens: {kv}
      context_length: {ctx}
"""


def start_outpostd(args, tmp):
    port = free_port()
    cfg = os.path.join(tmp, "outpost.yaml")
    with open(cfg, "w") as f:
        f.write(OUTPOST_CONFIG.format(port=port, workers=args.outpost_workers, tmp=tmp,
                                      threads=args.threads, plugins=json.dumps(args.plugins_dir),
                                      model_id=OUTPOST_MODEL_ID, model=json.dumps(args.model),
                                      streams=args.streams, kv=args.streams * args.slot_ctx,
                                      ctx=args.slot_ctx))
    s = Server("outpostd", args.taskset + [args.outpostd, "--config", cfg], port,
               os.path.join(tmp, "outpostd.log"), OUTPOST_MODEL_ID)
    s.config = cfg
    try:
        wait_http(s, "/readyz", lambda st, b: st == 200, 180)
        st, body = http_json(port, "GET", "/v1/models")
        ids = [m.get("id") for m in (body or {}).get("data", [])] if isinstance(body, dict) else []
        if st != 200 or OUTPOST_MODEL_ID not in ids:
            raise RuntimeError(f"/v1/models answered {st}, models {ids}: {OUTPOST_MODEL_ID} "
                               f"is not served")
        r = stream_completion(port, OUTPOST_MODEL_ID, " hello", 2)
        if r["error"] or r["t_first"] is None:
            raise RuntimeError(f"a 2-token streamed /v1/completions failed: "
                               f"{r['error'] or 'no text streamed'}")
    except RuntimeError as e:
        tail = s.log_tail()
        s.stop()
        raise SystemExit(
            "llm_bench: outpostd cannot serve the model, so there is nothing to compare.\n"
            f"  model: {args.model} (plugin llama, {args.plugins_dir})\n"
            f"  config: {cfg}\n  reason: {e}\n"
            "  Is the llama plugin built (make) and does `build/outpostd --check-config` accept "
            "the config? Use --stand-in to test the harness with a second llama-server.\n"
            f"--- outpostd log ---\n{tail}")
    return s


# --------------------------------------------------------------------------- prompts

class Prompts:
    def __init__(self, port, seed):
        """Keeps the words that are exactly one token with their leading space."""
        self.rng = random.Random(seed)
        words = sorted(set(WORDS))
        ok = []
        for w in words:
            st, body = http_json(port, "POST", "/tokenize", {"content": " " + w})
            if st == 200 and len(body.get("tokens", [])) == 1:
                ok.append(w)
        if len(ok) < 100:
            raise SystemExit(f"llm_bench: only {len(ok)} single-token words; cannot build prompts")
        self.words = ok
        self.port = port

    def make(self, n):
        return "".join(" " + self.rng.choice(self.words) for _ in range(n))

    def check(self, n):
        p = self.make(n)
        st, body = http_json(self.port, "POST", "/tokenize", {"content": p})
        got = len(body.get("tokens", []))
        if got != n:
            raise SystemExit(f"llm_bench: a {n}-word prompt is {got} tokens for llama.cpp")


# --------------------------------------------------------------------------- metrics

def run_pp(s, prompts, n):
    r = stream_completion(s.port, s.model_id, prompts.make(n), 1)
    if r["error"] or r["t_first"] is None:
        raise RuntimeError(f"{s.name} pp: {r['error'] or 'no token'}")
    u = r.get("usage") or {}
    if u.get("prompt_tokens") not in (None, n):
        raise RuntimeError(f"{s.name} pp: {u.get('prompt_tokens')} prompt tokens, expected {n}")
    return n / (r["t_first"] - r["t_start"])


def run_tg(s, prompts, n):
    r = stream_completion(s.port, s.model_id, prompts.make(16), n)
    if r["error"] or r["t_first"] is None:
        raise RuntimeError(f"{s.name} tg: {r['error'] or 'no token'}")
    got = completion_tokens(r, n)
    if got != n:
        raise RuntimeError(f"{s.name} tg: generated {got} tokens, asked {n} (ignore_eos)")
    ttft = r["t_first"] - r["t_start"]
    dt = r["t_last"] - r["t_first"]
    return (n - 1) / dt if dt > 0 else None, ttft * 1000.0


def run_concurrent(s, prompts, streams, n):
    barrier = threading.Barrier(streams + 1)
    results = [None] * streams
    bodies = [prompts.make(16) for _ in range(streams)]

    def worker(i):
        barrier.wait()
        results[i] = stream_completion(s.port, s.model_id, bodies[i], n)

    th = [threading.Thread(target=worker, args=(i,)) for i in range(streams)]
    for t in th:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in th:
        t.join()
    for r in results:
        if r["error"] or r["t_first"] is None:
            raise RuntimeError(f"{s.name} agg: {r['error'] or 'no token'}")
        got = completion_tokens(r, n)
        if got != n:
            raise RuntimeError(f"{s.name} agg: generated {got} tokens, asked {n}")
    first = min(r["t_first"] for r in results)
    last = max(r["t_last"] for r in results)
    agg = sum(n - 1 for _ in results) / (last - first)
    e2e = streams * n / (last - t0)
    ttfts = [(r["t_first"] - r["t_start"]) * 1000.0 for r in results]
    return agg, e2e, statistics.median(ttfts)


def run_join(s, prompts, streams, n):
    """TTFT of a 16-token request sent while streams-1 others are decoding.

    Returns (ms, valid): valid when every background stream was still
    decoding when the probe's first token came."""
    bg_n = max(2 * n, 64)
    events = [threading.Event() for _ in range(streams - 1)]
    results = [None] * (streams - 1)
    bodies = [prompts.make(16) for _ in range(streams - 1)]

    def worker(i):
        results[i] = stream_completion(s.port, s.model_id, bodies[i], bg_n, on_first=events[i])
        events[i].set()

    th = [threading.Thread(target=worker, args=(i,)) for i in range(streams - 1)]
    for t in th:
        t.start()
    for e in events:
        e.wait(300)
    time.sleep(0.2)  # well inside the decode phase of every background stream
    r = stream_completion(s.port, s.model_id, prompts.make(16), 1)
    for t in th:
        t.join()
    if r["error"] or r["t_first"] is None:
        raise RuntimeError(f"{s.name} ttft+{streams - 1}: {r['error'] or 'no token'}")
    for x in results:
        if x["error"]:
            raise RuntimeError(f"{s.name} ttft+{streams - 1} background: {x['error']}")
    valid = all(x["t_last"] is not None and x["t_last"] > r["t_first"] for x in results)
    return (r["t_first"] - r["t_start"]) * 1000.0, valid


# --------------------------------------------------------------------------- peers' own tools

def run_llama_bench(args):
    cmd = args.taskset + [args.llama_bench, "-m", args.model, "-t", str(args.threads),
                          "-p", str(args.pp_tokens), "-n", str(args.tg_tokens), "-o", "json"]
    log("llm_bench: " + " ".join(cmd))
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        return {"error": p.stderr[-1000:]}
    out = {}
    for row in json.loads(p.stdout):
        key = f"pp{row['n_prompt']}" if row.get("n_prompt") else f"tg{row['n_gen']}"
        out[key] = {"avg_ts": row["avg_ts"], "stddev_ts": row["stddev_ts"]}
        out["build"] = f"{row.get('build_commit')} ({row.get('build_number')})"
        out["flash_attn"] = row.get("flash_attn")
        out["type_k"] = row.get("type_k")
    return out


def run_batched_bench(args):
    cmd = args.taskset + [args.llama_batched_bench, "-m", args.model, "-t", str(args.threads),
                          "-tb", str(args.threads), "-c", str(args.streams * args.slot_ctx),
                          "-npp", "16", "-ntg", str(args.tg_tokens),
                          "-npl", f"1,{args.streams}", "--output-format", "jsonl"]
    log("llm_bench: " + " ".join(cmd))
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        return {"error": p.stderr[-1000:]}
    rows = []
    for line in (p.stdout + "\n" + p.stderr).splitlines():
        line = line.strip()
        if line.startswith("{") and "speed_tg" in line:
            rows.append(json.loads(line))
    return {"rows": rows}


def run_llm_perf(args):
    if not (args.llm_perf and os.access(args.llm_perf, os.X_OK)):
        return None
    cmd = args.taskset + [args.llm_perf, "-m", args.model, "-t", str(args.threads),
                          "-p", str(args.pp_tokens), "-n", str(args.tg_tokens),
                          "-np", str(args.streams), "-r", str(args.reps), "--json"]
    log("llm_bench: " + " ".join(cmd))
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        return {"error": (p.stderr or p.stdout)[-1000:]}
    for line in reversed(p.stdout.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    try:
        return json.loads(p.stdout)
    except ValueError:
        return {"raw": p.stdout[-2000:]}


# --------------------------------------------------------------------------- main

METRICS = [
    # key, label, unit, higher is better
    ("pp", "prompt processing ({pp} tokens)", "tok/s", True),
    ("tg", "decode, single stream ({tg} tokens)", "tok/s", True),
    ("agg", "decode, {np} streams, aggregate", "tok/s", True),
    ("e2e", "{np} streams end to end (prompts + decode)", "tok/s", True),
    ("ttft", "time to first token, 16-token prompt", "ms", False),
    ("ttft8", "time to first token, {np} started together (median)", "ms", False),
    ("ttft_join", "time to first token, joining {np1} decoding streams", "ms", False),
]


def measure(s, args, prompts):
    out = {}
    out["pp"] = run_pp(s, prompts, args.pp_tokens)
    out["tg"], out["ttft"] = run_tg(s, prompts, args.tg_tokens)
    out["agg"], out["e2e"], out["ttft8"] = run_concurrent(s, prompts, args.streams, args.tg_tokens)
    out["ttft_join"], valid = run_join(s, prompts, args.streams, args.tg_tokens)
    if not valid:
        log(f"llm_bench: {s.name}: background streams ended before the joining request's first "
            f"token; its ttft is not under load")
    return out


def fmt(v, unit):
    if v is None:
        return "-"
    return f"{v:,.1f}" if unit == "tok/s" or v >= 100 else f"{v:.2f}"


def print_table(names, med, args, runs):
    fill = {"pp": args.pp_tokens, "tg": args.tg_tokens, "np": args.streams, "np1": args.streams - 1}
    a, b = names  # b = outpost side, a = llama.cpp
    w = max(len(m[1].format(**fill)) for m in METRICS) + 2
    print()
    print(f"HTTP /v1/completions, streamed; model {os.path.basename(args.model)}; threads "
          f"{args.threads}; cores {args.cpus}; median of {args.reps} runs")
    print(f"{'metric':<{w}} {'unit':>6} {a:>14} {b:>14} {b + '/' + a:>18}")
    print("-" * (w + 6 + 14 + 14 + 18 + 4))
    for key, label, unit, higher in METRICS:
        va, vb = med[a].get(key), med[b].get(key)
        ratio = (vb / va) if va and vb else None
        better = "higher is better" if higher else "lower is better"
        rs = f"{ratio:.2f}x" if ratio is not None else "-"
        print(f"{label.format(**fill):<{w}} {unit:>6} {fmt(va, unit):>14} {fmt(vb, unit):>14} "
              f"{rs:>7} ({better})")
    print()
    print("per run (" + ", ".join(f"{k}" for k, *_ in METRICS) + "):")
    for name in names:
        for i, r in enumerate(runs[name]):
            print(f"  {name} #{i + 1}: " + ", ".join(fmt(r.get(k), u) for k, _, u, _h in METRICS))


def print_peer_tools(lb, bb, lp, args):
    print()
    print(f"llama.cpp's own tools (in-process, same file, -t {args.threads}, cores {args.cpus}):")
    if lb is not None:
        if "error" in lb:
            print(f"  llama-bench failed: {lb['error']}")
        else:
            for k in (f"pp{args.pp_tokens}", f"tg{args.tg_tokens}"):
                if k in lb:
                    print(f"  llama-bench {k:>6}: {lb[k]['avg_ts']:10.1f} tok/s "
                          f"(± {lb[k]['stddev_ts']:.1f})")
            print(f"  llama-bench build {lb.get('build')}, flash_attn {lb.get('flash_attn')}, "
                  f"KV {lb.get('type_k')}")
    if bb is not None:
        if "error" in bb:
            print(f"  llama-batched-bench failed: {bb['error']}")
        for r in bb.get("rows", []):
            print(f"  llama-batched-bench pp {r['pp']} tg {r['tg']} x{r['pl']:>2}: "
                  f"S_PP {r['speed_pp']:8.1f} tok/s, S_TG {r['speed_tg']:8.1f} tok/s, "
                  f"S {r['speed']:8.1f} tok/s")
    if lp is not None:
        print()
        if "error" in lp or "raw" in lp:
            print(f"Outpost's llm_perf failed: {lp}")
        else:
            print("in-process, Outpost's llm_perf against llama.cpp's tools (median of "
                  f"{args.reps}; llm_perf's own definitions, see its header):")
            rows = []
            if lb and "error" not in lb:
                k = f"pp{args.pp_tokens}"
                rows.append((f"prompt processing ({args.pp_tokens})", lp.get("pp_tok_s"),
                             lb.get(k, {}).get("avg_ts"), "llama-bench " + k))
                k = f"tg{args.tg_tokens}"
                rows.append((f"decode, single stream ({args.tg_tokens})", lp.get("tg_tok_s"),
                             lb.get(k, {}).get("avg_ts"), "llama-bench " + k))
            if bb and bb.get("rows"):
                r8 = [r for r in bb["rows"] if r["pl"] == args.streams]
                if r8:
                    rows.append((f"decode, {args.streams} streams, aggregate", lp.get("agg_tok_s"),
                                 r8[0]["speed_tg"], f"batched-bench S_TG x{args.streams}"))
            print(f"  {'metric':<34} {'llm_perf':>10} {'llama.cpp':>10} {'ratio':>7}  llama.cpp figure")
            for label, ours, theirs, what in rows:
                ratio = f"{ours / theirs:.2f}x" if ours and theirs else "-"
                print(f"  {label:<34} {fmt(ours, 'tok/s'):>10} {fmt(theirs, 'tok/s'):>10} "
                      f"{ratio:>7}  {what}")
            print(f"  llm_perf ttft (16-token prompt): {lp.get('ttft_ms')} ms")
            print("  raw: " + json.dumps(lp))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", type=int, default=0, help="0: the number of --cpus")
    ap.add_argument("--cpus", default="", help="core list for taskset (default: this process's)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--pp-tokens", type=int, default=512)
    ap.add_argument("--tg-tokens", type=int, default=128)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--slot-ctx", type=int, default=1024, help="context per stream (llama-server -c is streams x this)")
    ap.add_argument("--llamacpp-bin", default=os.path.join(ROOT, "build-peers/llama.cpp/bin"))
    ap.add_argument("--outpostd", default=os.path.join(ROOT, "build/outpostd"))
    ap.add_argument("--plugins-dir", default=os.path.join(ROOT, "build/plugins"))
    ap.add_argument("--outpost-workers", type=int, default=0)
    ap.add_argument("--llm-perf", default=os.path.join(ROOT, "build/bench/llm_perf"))
    ap.add_argument("--stand-in", action="store_true",
                    help="a second llama-server stands in for outpostd (tests the harness)")
    ap.add_argument("--no-peer-tools", action="store_true", help="skip llama-bench, llama-batched-bench, llm_perf")
    ap.add_argument("--wait-quiet", type=int, default=0, metavar="S",
                    help="before each run, wait up to S seconds for the CPUs to be idle (shared machines)")
    ap.add_argument("--json", help="also write all results to this file")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    args.model = os.path.abspath(args.model)
    if not os.path.isfile(args.model):
        raise SystemExit(f"llm_bench: no model file {args.model} (make models)")
    cpus = sorted(os.sched_getaffinity(0)) if not args.cpus else None
    args.cpus = args.cpus or ",".join(map(str, cpus))
    ncpu = len(cpus) if cpus else len(_parse_cpus(args.cpus))
    args.threads = args.threads or ncpu
    args.taskset = ["taskset", "-c", args.cpus] if shutil.which("taskset") else []
    for tool in ("llama_server", "llama_bench", "llama_batched_bench"):
        path = os.path.join(args.llamacpp_bin, tool.replace("_", "-"))
        if not os.access(path, os.X_OK):
            raise SystemExit(f"llm_bench: {path} is missing: run scripts/peers/llamacpp.sh")
        setattr(args, tool, path)
    if not args.stand_in and not os.access(args.outpostd, os.X_OK):
        raise SystemExit(f"llm_bench: {args.outpostd} is missing: run make")

    args.versions = versions(args)
    tmp = tempfile.mkdtemp(prefix="outpost-llm-bench-")
    load_start = loadavg()
    servers = []
    try:
        log(f"llm_bench: starting llama-server (-t {args.threads} -np {args.streams}) on cores {args.cpus}")
        ref = start_llama_server(args, "llama.cpp", tmp)
        servers.append(ref)
        if args.stand_in:
            log("llm_bench: starting a second llama-server standing in for outpostd")
            other = start_llama_server(args, "stand-in", tmp)
        else:
            log("llm_bench: starting outpostd with the llama plugin")
            other = start_outpostd(args, tmp)
        servers.append(other)
        prompts = Prompts(ref.port, args.seed)
        prompts.check(args.pp_tokens)
        names = [ref.name, other.name]
        # warm up both (page in the model, first-request costs), and check that
        # they continue one prompt alike (greedy; a near-tie may part them late)
        same_prompt = prompts.make(16)
        texts = []
        for s in (ref, other):
            r = stream_completion(s.port, s.model_id, same_prompt, 64)
            if r["error"]:
                raise SystemExit(f"llm_bench: {s.name}: {r['error']}")
            texts.append(r["text"])
        same = next((i for i, (x, y) in enumerate(zip(*texts)) if x != y),
                    None if len(texts[0]) == len(texts[1]) else min(map(len, texts)))
        agree = ("identical" if same is None else
                 f"DIFFERENT from character {same}: {texts[0][same:same + 40]!r} vs "
                 f"{texts[1][same:same + 40]!r}")
        log(f"llm_bench: 64-token greedy continuation of one prompt: {agree}")
        runs = {n: [] for n in names}
        cpu = {n: 0.0 for n in names}
        for i in range(args.reps):
            order = [ref, other] if i % 2 == 0 else [other, ref]
            for s in order:
                wait_quiet(args.wait_quiet)
                c0 = s.pid_cpu_seconds()
                log(f"llm_bench: run {i + 1}/{args.reps}: {s.name}")
                runs[s.name].append(measure(s, args, prompts))
                c1 = s.pid_cpu_seconds()
                if c0 is not None and c1 is not None:
                    cpu[s.name] += c1 - c0
        med = {n: {k: median([r.get(k) for r in runs[n]]) for k, *_ in METRICS} for n in names}
    finally:
        for s in servers:
            s.stop()
    lb = bb = lp = None
    if not args.no_peer_tools:
        wait_quiet(args.wait_quiet)
        lb = run_llama_bench(args)
        wait_quiet(args.wait_quiet)
        bb = run_batched_bench(args)
        wait_quiet(args.wait_quiet)
        lp = run_llm_perf(args)
    print_table(names, med, args, runs)
    print(f"{names[0]} and {names[1]} on one 64-token greedy continuation: {agree}")
    print(f"versions: {args.versions}")
    print(f"load average (1, 5, 15 min) at start {load_start}, at end {loadavg()}: a busy "
          f"machine makes both sides slower and noisier; compare ratios")
    print(f"server CPU seconds over all runs: " + ", ".join(f"{n} {cpu[n]:.1f}" for n in names))
    print_peer_tools(lb, bb, lp, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items()}, "median": med, "runs": runs,
                       "llama_bench": lb, "batched_bench": bb, "llm_perf": lp}, f, indent=1)
    shutil.rmtree(tmp, ignore_errors=True)


def versions(args):
    out = []
    try:
        with open(os.path.join(args.llamacpp_bin, "..", "VERSION")) as f:
            out.append(f.read().strip())
    except OSError:
        pass
    if not args.stand_in:
        try:
            v = subprocess.run([args.outpostd, "--version"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
            out.append(v.splitlines()[0] if v else "outpostd ?")
        except (OSError, subprocess.SubprocessError):
            pass
        try:
            g = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
            if g:
                out.append(f"tree {g}")
        except (OSError, subprocess.SubprocessError):
            pass
    return "; ".join(out) or "?"


def _parse_cpus(s):
    out = []
    for part in s.split(","):
        if "-" in part:
            a, b = part.split("-")
            out += range(int(a), int(b) + 1)
        elif part:
            out.append(int(part))
    return out


if __name__ == "__main__":
    main()
