"""hnswlib and FAISS HNSW on bench/vector_corpus.py's data, measured the way
build/bench/vector_bench measures Outpost (one JSON object per line), and
the report that puts all three in one table (bench/vector_bench.sh).

  /usr/bin/python3 bench/vector_peers.py run --name real --metric cosine [--lib hnswlib,faiss]
  /usr/bin/python3 bench/vector_peers.py report results.jsonl

Peers (Debian packages python3-hnswlib and python3-faiss, Debian's
python3): M=16 and ef_construction=200 like Outpost; queries go through the
batch calls as they are meant to be used: hnswlib knn_query(Q, k,
num_threads=t), FAISS index.search(Q, k) with omp_set_num_threads(t), on the
whole query matrix. Each point runs the query set repeatedly until --min-s
seconds, --reps times; QPS is the median rep. Recall@10 is |returned top 10
intersect exact top 10| / 10 against the same ground-truth file. Memory: the
growth of this process's resident set across the build.

Cosine: hnswlib's "cosine" space (it normalizes); FAISS inner product on
rows normalized before add and search (normalizing the query matrix is
counted in the timed search).
"""
import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def recall(found, gt, k):
    hit = 0
    for i in range(len(gt)):
        hit += len(set(found[i][:k].tolist()) & set(gt[i][:k].tolist()))
    return hit / (len(gt) * k)


def measure(fn, nq, reps, min_s):
    """fn() runs the whole query set once; returns (median QPS, runs)."""
    runs = []
    for _ in range(reps):
        done, el = 0, 0.0
        while el < min_s:
            t0 = time.perf_counter()
            fn()
            el += time.perf_counter() - t0
            done += nq
        runs.append(done / el)
    return statistics.median(runs), runs


def emit(obj):
    print(json.dumps(obj), flush=True)


def run_hnswlib(args, base, queries, gt, threads):
    import hnswlib
    space = {"cosine": "cosine", "euclidean": "l2"}[args.metric]
    build_t = args.build_threads
    r0 = rss()
    idx = hnswlib.Index(space=space, dim=base.shape[1])
    idx.init_index(max_elements=len(base), M=args.M, ef_construction=args.efc, random_seed=100)
    t0 = time.perf_counter()
    idx.add_items(base, num_threads=build_t)
    secs = time.perf_counter() - t0
    emit({"lib": "hnswlib", "dataset": args.name, "kind": "build", "n": len(base), "dim": base.shape[1],
          "metric": args.metric, "threads": build_t, "seconds": round(secs, 3), "rss_delta": rss() - r0})
    for t in threads:
        for ef in args.ef:
            idx.set_ef(ef)
            labels, _ = idx.knn_query(queries, k=args.k, num_threads=t)
            rec = recall(labels, gt, args.k)
            qps, runs = measure(lambda: idx.knn_query(queries, k=args.k, num_threads=t), len(queries),
                                args.reps, args.min_s)
            emit({"lib": "hnswlib", "dataset": args.name, "kind": "search", "threads": t, "ef": ef, "k": args.k,
                  "recall": round(rec, 4), "qps": round(qps, 1), "qps_runs": [round(x, 1) for x in runs]})
            print(f"hnswlib {args.name}: threads {t} ef {ef} recall {rec:.4f} qps {qps:.0f}", file=sys.stderr)


def run_faiss(args, base, queries, gt, threads):
    import faiss
    import numpy as np
    cos = args.metric == "cosine"
    metric = faiss.METRIC_INNER_PRODUCT if cos else faiss.METRIC_L2
    if cos:
        base = base.copy()
        faiss.normalize_L2(base)
    build_t = args.build_threads
    faiss.omp_set_num_threads(build_t)
    r0 = rss()
    idx = faiss.IndexHNSWFlat(base.shape[1], args.M, metric)
    idx.hnsw.efConstruction = args.efc
    t0 = time.perf_counter()
    idx.add(base)
    secs = time.perf_counter() - t0
    emit({"lib": "faiss", "dataset": args.name, "kind": "build", "n": len(base), "dim": base.shape[1],
          "metric": args.metric, "threads": build_t, "seconds": round(secs, 3), "rss_delta": rss() - r0})

    def search():
        q = queries
        if cos:
            q = q.copy()
            faiss.normalize_L2(q)
        return idx.search(q, args.k)[1]

    for t in threads:
        faiss.omp_set_num_threads(t)
        for ef in args.ef:
            idx.hnsw.efSearch = ef
            rec = recall(np.asarray(search()), gt, args.k)
            qps, runs = measure(search, len(queries), args.reps, args.min_s)
            emit({"lib": "faiss", "dataset": args.name, "kind": "search", "threads": t, "ef": ef, "k": args.k,
                  "recall": round(rec, 4), "qps": round(qps, 1), "qps_runs": [round(x, 1) for x in runs]})
            print(f"faiss {args.name}: threads {t} ef {ef} recall {rec:.4f} qps {qps:.0f}", file=sys.stderr)


def cmd_run(args):
    import numpy as np  # noqa: F401  (Debian's python3-numpy)
    from vector_corpus import read_f32, read_gt
    base = read_f32(os.path.join(args.data, f"{args.name}.base.f32")).copy()
    queries = read_f32(os.path.join(args.data, f"{args.name}.query.f32")).copy()
    gt = read_gt(os.path.join(args.data, f"{args.name}.gt.i32"))
    threads = [int(x) for x in args.threads.split(",")]
    args.ef = [int(x) for x in args.ef.split(",")]
    for lib in args.lib.split(","):
        print(f"{lib} {args.name}: building {base.shape[0]} x {base.shape[1]} (M {args.M}, "
              f"ef_construction {args.efc}, {args.build_threads} threads)", file=sys.stderr)
        {"hnswlib": run_hnswlib, "faiss": run_faiss}[lib](args, base, queries, gt, threads)


# ---------------------------------------------------------------- report

def qps_at(points, target):
    """QPS at recall `target` along one sweep: linear interpolation between
    the two neighbouring points that bracket it (sorted by recall); None if
    no point reaches it. Also returns the fastest point at or above it."""
    pts = sorted((p["recall"], p["qps"]) for p in points)
    fastest = max((q for r, q in pts if r >= target), default=None)
    if fastest is None:
        return None, None
    interp = None
    for (r0, q0), (r1, q1) in zip(pts, pts[1:]):
        if r0 <= target <= r1:
            interp = q0 if r1 == r0 else q0 + (q1 - q0) * (target - r0) / (r1 - r0)
            break
    if interp is None:  # the lowest point is already above the target
        interp = fastest
    return interp, fastest


def mib(b):
    return f"{b / 1048576:.0f}"


def cmd_report(args):
    rows = [json.loads(line) for line in open(args.results) if line.startswith("{")]
    libs = ["outpost", "hnswlib", "faiss"]
    datasets = []
    for r in rows:
        if r["dataset"] not in datasets:
            datasets.append(r["dataset"])
    out = []
    for ds in datasets:
        rs = [r for r in rows if r["dataset"] == ds]
        b = {r["lib"]: r for r in rs if r["kind"] == "build"}
        any_b = next(iter(b.values()))
        out.append(f"\n### {ds}: {any_b['n']} x {any_b['dim']}, {any_b['metric']}, k=10, M=16, ef_construction=200\n")
        out.append("| library | build s (threads) | index MiB | RSS growth MiB |")
        out.append("| --- | --- | --- | --- |")
        for lib in libs:
            if lib in b:
                x = b[lib]
                ib = mib(x["index_bytes"]) if "index_bytes" in x else "-"
                out.append(f"| {lib} | {x['seconds']:.1f} ({x['threads']}) | {ib} | {mib(x['rss_delta'])} |")
        threads = sorted({r["threads"] for r in rs if r["kind"] == "search"})
        efs = sorted({r["ef"] for r in rs if r["kind"] == "search"})
        head = "| ef | " + " | ".join(f"{lib} t{t} recall / QPS" for t in threads for lib in libs) + " |"
        out.append("")
        out.append(head)
        out.append("|" + " --- |" * (1 + len(threads) * len(libs)))
        for ef in efs:
            cells = []
            for t in threads:
                for lib in libs:
                    p = [r for r in rs if r["kind"] == "search" and r["lib"] == lib and r["threads"] == t
                         and r["ef"] == ef]
                    cells.append(f"{p[0]['recall']:.3f} / {p[0]['qps']:.0f}" if p else "-")
            out.append(f"| {ef} | " + " | ".join(cells) + " |")
        out.append("")
        out.append(f"QPS at recall@10 = {args.target} (interpolated along each sweep; fastest measured point "
                   f">= {args.target} in brackets), and Outpost's ratio:")
        out.append("")
        out.append("| threads | outpost | hnswlib | faiss | outpost / hnswlib | outpost / faiss |")
        out.append("| --- | --- | --- | --- | --- | --- |")
        for t in threads:
            v = {}
            for lib in libs:
                pts = [r for r in rs if r["kind"] == "search" and r["lib"] == lib and r["threads"] == t]
                v[lib] = qps_at(pts, args.target) if pts else (None, None)

            def cell(lib):
                i, f = v[lib]
                return "not reached" if i is None else f"{i:.0f} ({f:.0f})"

            def ratio(other):
                a, o = v["outpost"][0], v[other][0]
                return "-" if a is None or o is None else f"{a / o:.2f}x"
            out.append(f"| {t} | {cell('outpost')} | {cell('hnswlib')} | {cell('faiss')} | {ratio('hnswlib')} | "
                       f"{ratio('faiss')} |")
        if "outpost" in b:
            o = b["outpost"]
            parts = []
            for lib in ("hnswlib", "faiss"):
                if lib in b:
                    parts.append(f"build time outpost/{lib} {o['seconds'] / b[lib]['seconds']:.2f} "
                                 f"(threads {o['threads']} vs {b[lib]['threads']}), RSS growth "
                                 f"{o['rss_delta'] / max(1, b[lib]['rss_delta']):.2f}")
            out.append("")
            out.append("; ".join(parts))
    print("\n".join(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--data", default=os.path.join(ROOT, "build/bench-data"))
    r.add_argument("--name", default="real")
    r.add_argument("--metric", default="cosine", choices=["cosine", "euclidean"])
    r.add_argument("--lib", default="hnswlib,faiss")
    r.add_argument("--M", type=int, default=16)
    r.add_argument("--efc", type=int, default=200)
    r.add_argument("--k", type=int, default=10)
    r.add_argument("--ef", default="10,16,24,32,48,64,96,128,192,256")
    r.add_argument("--threads", default="1,2")
    r.add_argument("--build-threads", type=int, default=1)
    r.add_argument("--reps", type=int, default=3)
    r.add_argument("--min-s", type=float, default=0.25)
    p = sub.add_parser("report")
    p.add_argument("results")
    p.add_argument("--target", type=float, default=0.95)
    args = ap.parse_args()
    cmd_run(args) if args.cmd == "run" else cmd_report(args)


if __name__ == "__main__":
    main()
