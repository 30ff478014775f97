#!/usr/bin/env python3
"""The peer of build/bench/bert_bench: sentence-transformers on the same sentences.

    build/bench/bert_bench --print-texts > /tmp/texts.txt
    python3 bench/bert_st_bench.py /tmp/texts.txt 2    # needs sentence-transformers, torch

Same loop as bert_bench: one warm-up call, then calls of 1 and 32 texts for 3 s,
tokenization included; prints embeddings/s and the best call."""
import os, sys, time, torch
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
from sentence_transformers import SentenceTransformer
m = SentenceTransformer((sys.argv[3] if len(sys.argv) > 3 else os.path.join(os.path.dirname(__file__), '..', 'models', 'all-MiniLM-L6-v2')), device='cpu')
texts = [l.rstrip('\n') for l in open(sys.argv[1])]
secs = 3.0
for batch in (1, 32):
    m.encode(texts[:batch], batch_size=batch)  # warm-up
    n = 0; i = 0; t0 = time.perf_counter(); best = 1e9
    while True:
        b = [texts[(i + k) % 64] for k in range(batch)]; i += batch
        t1 = time.perf_counter()
        m.encode(b, batch_size=batch, convert_to_numpy=True)
        best = min(best, time.perf_counter() - t1)
        n += batch
        el = time.perf_counter() - t0
        if el >= secs: break
    print("sentence-transformers %s, torch %s, %d threads  batch %3d: %8.1f embeddings/s  (best %.2f ms/call)" % (
        __import__('sentence_transformers').__version__, torch.__version__, torch.get_num_threads(), batch, n / el, best * 1e3))
