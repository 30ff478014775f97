#!/usr/bin/env bash
# Vector search: Outpost's HNSW engine (agent/vector/vx_hnsw) against hnswlib
# and FAISS IndexHNSWFlat, same data, same cores, in one run. See
# bench/README.md ("Vector search").
#
#   bench/vector_bench.sh                    # every dataset, all usable cores
#   bench/vector_bench.sh --cpus 0,1 --datasets real --reps 3
#   bench/vector_bench.sh --data-only        # make the cached data and stop
#
# Data (bench/vector_corpus.py, cached under build/bench-data/, made once):
#   real   sentences of four Debian documentation packages embedded by the
#          agent's own embedder (build/outpostd, all-MiniLM-L6-v2, POST
#          /v1/embeddings), 384 dims, cosine, 1,000 held-out queries
#   synth  300,000 x 96 clustered Gaussian (10,000 clusters), euclidean
# Peers and the corpus packages come from Debian and are installed here
# when missing (apt-get, as root). Every process runs under taskset on the
# same CPU list; the thread counts are 1 and the number of CPUs in it.
set -euo pipefail
cd "$(dirname "$0")/.."

CPUS=""
DATASETS="real synth"
REPS=3
MIN_S=0.25
EF="10,16,24,32,48,64,96,128,192,256"
DATA_ONLY=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpus) CPUS="$2"; shift 2 ;;
    --datasets) DATASETS="$2"; shift 2 ;;
    --reps) REPS="$2"; shift 2 ;;
    --min-s) MIN_S="$2"; shift 2 ;;
    --ef) EF="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --data-only) DATA_ONLY=1; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "vector_bench: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$CPUS" ] || CPUS="$(taskset -pc $$ | sed 's/.*: //')"
NCPU=$(/usr/bin/python3 -c "import sys
n=0
for part in sys.argv[1].split(','):
    a,_,b=part.partition('-'); n+=int(b or a)-int(a)+1
print(n)" "$CPUS")
THREADS="1"
[ "$NCPU" -gt 1 ] && THREADS="1,$NCPU"
PY=/usr/bin/python3 # Debian's: python3-numpy, python3-hnswlib, python3-faiss live there

need=()
for p in python3-numpy python3-hnswlib python3-faiss python3.11-doc postgresql-doc-15 perl-doc debian-reference-en; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "vector_bench: installing ${need[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2
fi

[ -d models/all-MiniLM-L6-v2 ] || scripts/fetch_models.sh
[ -f build/CMakeCache.txt ] || cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >&2
cmake --build build -j"$(nproc)" --target vector_bench >&2
# the embedder is needed only while the real set is not cached
case " $DATASETS " in
  *" real "*) [ -f build/bench-data/real.base.f32 ] || cmake --build build -j"$(nproc)" --target outpostd bert >&2 ;;
esac

mkdir -p build/bench-data
for ds in $DATASETS; do
  # embedding uses every CPU of the list (it is made once and cached)
  "$PY" bench/vector_corpus.py "$ds" --cpus "$CPUS" --threads "$NCPU"
done
[ "$DATA_ONLY" = 1 ] && exit 0

[ -n "$OUT" ] || OUT="build/bench-data/results-$(date +%Y%m%d-%H%M%S).jsonl"
: > "$OUT"
echo "vector_bench: CPUs $CPUS, threads $THREADS, reps $REPS, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for ds in $DATASETS; do
  metric=cosine
  [ "$ds" = synth ] && metric=euclidean
  # Outpost: vx_hnsw has one writer, so its graph is built by one thread;
  # rerank_factor 1 makes ef the beam width, as in hnswlib and FAISS (the
  # agent's default, 4, floors the beam at 4k = 40: the same curve from ef 40)
  taskset -c "$CPUS" build/bench/vector_bench --data build/bench-data --name "$ds" --metric "$metric" \
    --ef "$EF" --threads "$THREADS" --reps "$REPS" --min-s "$MIN_S" --rerank-factor 1 >> "$OUT"
  # the peers build with every CPU of the list (their add is parallel)
  taskset -c "$CPUS" "$PY" bench/vector_peers.py run --name "$ds" --metric "$metric" \
    --ef "$EF" --threads "$THREADS" --reps "$REPS" --min-s "$MIN_S" --build-threads "$NCPU" >> "$OUT"
done
echo "vector_bench: done, load average $(cut -d' ' -f1-3 /proc/loadavg); results in $OUT" >&2
echo "CPUs $CPUS ($(lscpu | sed -n 's/^Model name: *//p')), load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
"$PY" bench/vector_peers.py report "$OUT"
