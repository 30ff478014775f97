"""The vector benchmark's data (bench/vector_bench.sh), made once and cached.

  real   sentences from the HTML of two Debian documentation packages,
         python3.11-doc (the Python 3.11 manuals) and debian-reference-en
         (the Debian Reference), markup stripped, split into sentences,
         deduplicated, 5..60 words kept; shuffled with a fixed seed; the
         first 1,000 are the queries (held out: not in the base set), the
         rest (at least 100,000) the base. Embedded by the agent's own
         embedder: build/outpostd serving all-MiniLM-L6-v2 (bert plugin),
         POST /v1/embeddings, 384 dims, cosine.
  synth  clustered Gaussian vectors (numpy, fixed seed): cluster centres
         N(0, 1), members centre + N(0, sigma^2), euclidean.

Files under build/bench-data/ (git-ignored), all little-endian:
  <name>.base.f32 / <name>.query.f32   header "VXB1" u32 n u32 dim, then
                                       n * dim float32
  <name>.gt.i32                        "VXG1" u32 nq u32 k, then nq * k int32
                                       (exact top-k base rows per query)
  real.sentences.txt                   the sentences (queries first)
Ground truth is exact search in numpy (float64 accumulation is not needed:
ties at the 10th place are rare and every library is scored against the
same file). Run with Debian's python3 (numpy from python3-numpy):

  /usr/bin/python3 bench/vector_corpus.py --out build/bench-data real synth
"""
import argparse
import base64
import html.parser
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import free_port, log  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_ID = "@local/all-minilm-l6-v2"
SOURCES = [("/usr/share/doc/python3.11/html", "python3.11-doc"),
           ("/usr/share/doc/postgresql-doc-15/html", "postgresql-doc-15"),
           ("/usr/share/debian-reference", "debian-reference-en"),
           ("/usr/share/perl/5.36/pod", "perl-doc")]
SKIP_TAGS = {"pre", "script", "style", "head", "nav", "table"}


class TextOf(html.parser.HTMLParser):
    """Visible prose of an HTML page: text outside code blocks, tables and
    navigation; block ends become paragraph breaks."""
    BLOCK = {"p", "div", "li", "dd", "dt", "h1", "h2", "h3", "h4", "h5", "h6", "br", "section", "td", "th",
             "blockquote", "ul", "ol", "dl", "title"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.skip = 0
        self.parts = []

    def handle_starttag(self, tag, attrs):
        if tag in SKIP_TAGS:
            self.skip += 1
        cls = dict(attrs).get("class") or ""
        if tag == "div" and ("sphinxsidebar" in cls or "related" in cls or "footer" in cls):
            self.skip += 1
            self.parts.append(("div-skip", None))
        elif tag == "div":
            self.parts.append(("div", None))
        if tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_endtag(self, tag):
        if tag in SKIP_TAGS and self.skip:
            self.skip -= 1
        if tag == "div":
            # unwind to the matching div marker
            for i in range(len(self.parts) - 1, -1, -1):
                if isinstance(self.parts[i], tuple):
                    kind = self.parts[i][0]
                    del self.parts[i]
                    if kind == "div-skip" and self.skip:
                        self.skip -= 1
                    break
        if tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)

    def text(self):
        return "".join(p for p in self.parts if isinstance(p, str))


POD_CODE = re.compile(r"[A-Z]<+\s*([^<>]*?)\s*>+")


def pod_text(src):
    """Prose paragraphs of a POD file: no commands, no verbatim blocks,
    formatting codes (B<x>, C<x>, L<text|link>) reduced to their text."""
    out = []
    for para in re.split(r"\n\s*\n", src):
        if not para or para[0] in " \t=":
            continue
        for _ in range(3):
            para = POD_CODE.sub(lambda m: m.group(1).split("|")[0], para)
        out.append(para)
    return "\n\n".join(out)


SENT_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
WORD = re.compile(r"[A-Za-z]")


def sentences_of(text):
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        if not para:
            continue
        for s in SENT_END.split(para):
            s = s.strip()
            words = s.split()
            if not 5 <= len(words) <= 60:
                continue
            # prose, not listings: mostly alphabetic words, ends like a sentence
            alpha = sum(1 for w in words if WORD.search(w))
            if alpha < 0.7 * len(words) or s[-1] not in ".!?:":
                continue
            yield s


def corpus():
    seen = set()
    out = []
    per = {}
    for root, pkg in SOURCES:
        if not os.path.isdir(root):
            raise SystemExit(f"vector_corpus: {root} missing: apt-get install {pkg}")
        n0 = len(out)
        for dirpath, dirs, files in sorted(os.walk(root)):
            dirs.sort()
            if "_sources" in dirpath:
                continue
            for fn in sorted(files):
                with open(os.path.join(dirpath, fn), encoding="utf-8", errors="replace") as f:
                    if fn.endswith(".pod"):
                        text = pod_text(f.read())
                    elif fn.endswith(".html") and (pkg != "debian-reference-en" or ".en." in fn):
                        p = TextOf()
                        p.feed(f.read())
                        text = p.text()
                    else:
                        continue
                for s in sentences_of(text):
                    key = s.lower()
                    if key not in seen:
                        seen.add(key)
                        out.append(s)
        per[pkg] = len(out) - n0
    return out, per


def write_f32(path, a):
    a = np.ascontiguousarray(a, dtype="<f4")
    with open(path + ".tmp", "wb") as f:
        f.write(b"VXB1" + np.array(a.shape, dtype="<u4").tobytes())
        f.write(a.tobytes())
    os.replace(path + ".tmp", path)


def read_f32(path):
    with open(path, "rb") as f:
        if f.read(4) != b"VXB1":
            raise ValueError(f"{path}: bad magic")
        n, d = np.frombuffer(f.read(8), dtype="<u4")
        a = np.frombuffer(f.read(), dtype="<f4")
    if a.size != int(n) * int(d):
        raise ValueError(f"{path}: truncated")
    return a.reshape(int(n), int(d))


def write_gt(path, gt):
    gt = np.ascontiguousarray(gt, dtype="<i4")
    with open(path + ".tmp", "wb") as f:
        f.write(b"VXG1" + np.array(gt.shape, dtype="<u4").tobytes())
        f.write(gt.tobytes())
    os.replace(path + ".tmp", path)


def read_gt(path):
    with open(path, "rb") as f:
        if f.read(4) != b"VXG1":
            raise ValueError(f"{path}: bad magic")
        n, k = np.frombuffer(f.read(8), dtype="<u4")
        a = np.frombuffer(f.read(), dtype="<i4")
    return a.reshape(int(n), int(k))


def ground_truth(base, queries, metric, k=10):
    """Exact top-k by brute force, in blocks (float32 BLAS, then the
    candidates re-scored in float64 so near-ties order exactly)."""
    gt = np.empty((len(queries), k), dtype=np.int64)
    b64 = base.astype(np.float64)
    bn = (base.astype(np.float64) ** 2).sum(1) if metric == "euclidean" else None
    for i in range(0, len(queries), 100):
        q = queries[i:i + 100]
        s = q @ base.T  # float32
        if metric == "euclidean":
            d = bn[None, :].astype(np.float32) - 2 * s
        else:
            d = -s
        cand = np.argpartition(d, 4 * k, axis=1)[:, :4 * k]
        for r in range(len(q)):
            c = cand[r]
            q64 = q[r].astype(np.float64)
            if metric == "euclidean":
                e = ((b64[c] - q64) ** 2).sum(1)
            else:
                e = -(b64[c] @ q64)
            o = np.lexsort((c, e))[:k]
            gt[i + r] = c[o]
    return gt


# ---------------------------------------------------------------- embedding

OUTPOST_CONFIG = """# written by bench/vector_corpus.py
server:
  listen: 127.0.0.1:{port}
  workers: 1
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
        f.write(OUTPOST_CONFIG.format(port=port, tmp=tmp, threads=args.threads,
                                      plugins=json.dumps(args.plugins_dir), model_id=MODEL_ID,
                                      model=json.dumps(args.model)))
    logf = os.path.join(tmp, "outpostd.log")
    proc = subprocess.Popen(args.taskset + [args.outpostd, "--config", cfg], stdout=open(logf, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while True:
        if proc.poll() is not None or time.time() > deadline:
            proc.terminate()
            tail = open(logf, "rb").read()[-3000:].decode("utf-8", "replace")
            raise SystemExit(f"vector_corpus: outpostd did not become ready\n{tail}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/readyz")
            r = c.getresponse()
            r.read()
            if r.status == 200:
                return proc, port
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.3)


def embed_all(args, texts):
    with tempfile.TemporaryDirectory(prefix="vxcorpus-") as tmp:
        proc, port = start_outpostd(args, tmp)
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
            out = np.empty((len(texts), 384), dtype=np.float32)
            t0 = last = time.time()
            for i in range(0, len(texts), args.batch):
                chunk = texts[i:i + args.batch]
                body = json.dumps({"model": MODEL_ID, "input": chunk, "encoding_format": "base64"})
                c.request("POST", "/v1/embeddings", body=body, headers={"Content-Type": "application/json"})
                r = c.getresponse()
                raw = r.read()
                if r.status != 200:
                    raise SystemExit(f"vector_corpus: /v1/embeddings HTTP {r.status}: {raw[:300]!r}")
                data = json.loads(raw)["data"]
                if len(data) != len(chunk):
                    raise SystemExit("vector_corpus: /v1/embeddings returned the wrong count")
                for d in data:
                    v = np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
                    if v.size != 384:
                        raise SystemExit("vector_corpus: embedding is not 384-dimensional")
                    out[i + d["index"]] = v
                now = time.time()
                done = min(i + args.batch, len(texts))
                if now - last >= 10 or done == len(texts):
                    rate = done / (now - t0)
                    log(f"embedding: {done}/{len(texts)} sentences, {rate:.0f}/s, "
                        f"eta {(len(texts) - done) / rate:.0f} s")
                    last = now
            return out
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def make_real(args):
    base_p = os.path.join(args.out, "real.base.f32")
    query_p = os.path.join(args.out, "real.query.f32")
    gt_p = os.path.join(args.out, "real.gt.i32")
    if not all(os.path.exists(p) for p in (base_p, query_p)):
        texts, per = corpus()
        rng = np.random.default_rng(20261123)
        order = rng.permutation(len(texts))
        texts = [texts[i] for i in order]
        if args.real_max and len(texts) > args.real_max + args.queries:
            texts = texts[:args.real_max + args.queries]
        log(f"corpus: {len(texts)} distinct sentences ({', '.join(f'{k}: {v}' for k, v in per.items())} "
            f"before the cap); {args.queries} held out as queries")
        if len(texts) - args.queries < 100000:
            log(f"warning: only {len(texts) - args.queries} base sentences (< 100,000)")
        with open(os.path.join(args.out, "real.sentences.txt"), "w") as f:
            for t in texts:
                f.write(t + "\n")
        emb = embed_all(args, texts)
        write_f32(query_p, emb[:args.queries])
        write_f32(base_p, emb[args.queries:])
    if not os.path.exists(gt_p):
        t0 = time.time()
        write_gt(gt_p, ground_truth(read_f32(base_p), read_f32(query_p), "cosine"))
        log(f"real: ground truth in {time.time() - t0:.1f} s")


def make_synth(args):
    base_p = os.path.join(args.out, "synth.base.f32")
    query_p = os.path.join(args.out, "synth.query.f32")
    gt_p = os.path.join(args.out, "synth.gt.i32")
    if not all(os.path.exists(p) for p in (base_p, query_p)):
        rng = np.random.default_rng(5)
        n, d, nc = args.synth_n, args.synth_dim, args.synth_clusters
        centres = rng.standard_normal((nc, d), dtype=np.float32)
        def draw(m):
            lab = rng.integers(0, nc, m)
            return centres[lab] + args.synth_sigma * rng.standard_normal((m, d), dtype=np.float32)
        write_f32(base_p, draw(n))
        write_f32(query_p, draw(args.queries))
        log(f"synth: {n} x {d} clustered Gaussian ({nc} clusters, sigma {args.synth_sigma})")
    if not os.path.exists(gt_p):
        t0 = time.time()
        write_gt(gt_p, ground_truth(read_f32(base_p), read_f32(query_p), "euclidean"))
        log(f"synth: ground truth in {time.time() - t0:.1f} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="*", default=["real", "synth"])
    ap.add_argument("--out", default=os.path.join(ROOT, "build/bench-data"))
    ap.add_argument("--outpostd", default=os.path.join(ROOT, "build/outpostd"))
    ap.add_argument("--plugins-dir", default=os.path.join(ROOT, "build/plugins"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models/all-MiniLM-L6-v2"))
    ap.add_argument("--cpus", default="", help="taskset CPU list for outpostd (default: none)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--real-max", type=int, default=0, help="cap on base sentences (0: all)")
    ap.add_argument("--synth-n", type=int, default=300000)
    ap.add_argument("--synth-dim", type=int, default=96)
    ap.add_argument("--synth-clusters", type=int, default=10000)
    ap.add_argument("--synth-sigma", type=float, default=1.0)
    ap.add_argument("--count-only", action="store_true", help="print the corpus size and exit")
    args = ap.parse_args()
    args.taskset = ["taskset", "-c", args.cpus] if args.cpus else []
    os.makedirs(args.out, exist_ok=True)
    if args.count_only:
        texts, per = corpus()
        print(len(texts), per)
        return
    if "real" in args.what:
        make_real(args)
    if "synth" in args.what:
        make_synth(args)


if __name__ == "__main__":
    main()
