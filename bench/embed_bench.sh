#!/usr/bin/env bash
# Outpost's embeddings (bert plugin, /v1/embeddings and /ai/run) vs
# sentence-transformers in-process, same sentences, cores and threads.
# See bench/README.md.
#
#   bench/embed_bench.sh                     # all usable cores, batches 1 and 32
#   bench/embed_bench.sh --cpus 0,1 --threads 2 --seconds 5 --reps 3
#   bench/embed_bench.sh --st-only           # the sentence-transformers baseline alone
#
# sentence-transformers comes from the golden venv (build-peers/golden-venv,
# made by scripts/golden/make_golden.sh); outpostd is built when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=build-peers/golden-venv/bin/python
[ -d models/all-MiniLM-L6-v2 ] || scripts/fetch_models.sh
if ! [ -x "$PY" ] || ! "$PY" -c "import sentence_transformers, torch" 2>/dev/null; then
  echo "embed_bench: no sentence-transformers venv; making it with scripts/golden/make_golden.sh" >&2
  scripts/golden/make_golden.sh venv >&2
fi
case " $* " in
  *" --st-only "*|*" -h "*|*" --help "*) ;;
  *) [ -x build/outpostd ] && [ -f build/plugins/bert.so ] || make build JOBS=2 ;;
esac
exec "$PY" bench/embed_bench.py "$@"
