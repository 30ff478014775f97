#!/usr/bin/env bash
# Outpost vs llama.cpp on the same GGUF, threads and cores: end to end over
# HTTP (llama-server vs outpostd, streamed /v1/completions), plus llama-bench,
# llama-batched-bench and build/bench/llm_perf. See bench/README.md.
#
#   bench/llm_bench.sh                       # defaults: all usable cores, 3 runs
#   bench/llm_bench.sh --cpus 0,1 --threads 2 --reps 5
#   bench/llm_bench.sh --stand-in            # a 2nd llama-server plays outpostd (harness test)
#   bench/llm_bench.sh --help
#
# Builds llama.cpp's tools first when missing (scripts/peers/llamacpp.sh) and
# outpostd when missing (make). Any other argument goes to bench/llm_bench.py.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f models/SmolLM2-135M-Instruct.Q4_1.gguf ] || scripts/fetch_models.sh
for t in llama-server llama-bench llama-batched-bench; do
  [ -x build-peers/llama.cpp/bin/$t ] || { scripts/peers/llamacpp.sh; break; }
done
case " $* " in
  *" --stand-in "*|*" -h "*|*" --help "*) ;;
  *) [ -x build/outpostd ] && [ -f build/plugins/llama.so ] || make build JOBS=2 ;;
esac
[ -f build-peers/llama.cpp/VERSION ] && echo "llama.cpp: $(cat build-peers/llama.cpp/VERSION)"
exec python3 bench/llm_bench.py "$@"
