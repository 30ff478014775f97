#!/usr/bin/env bash
# Makes the golden reference data in tests/data/golden/ (see its README.md)
# from pinned reference implementations:
#
#   llama.cpp        built by scripts/peers/llamacpp.sh from the llama-cpp-python
#                    sdist (GGML_NATIVE=ON), used through llama-cpp-python
#   transformers, tokenizers, jinja2, gguf, sentence-transformers, torch (CPU)
#
# in a venv at build-peers/golden-venv (gitignored).
#
#   scripts/golden/make_golden.sh                 # everything, in dependency order
#   scripts/golden/make_golden.sh smollm2_tokens smollm2_chat   # only those files
#   GOLDEN_DATE=2025-01-01 scripts/golden/make_golden.sh        # fixed generator.date
#
# Targets: smollm2_tokens smollm2_chat minilm_tokens minilm_embeddings smollm2_greedy,
# and venv (only make the venv: what bench/embed_bench.sh needs).
# Re-runnable and deterministic: a file whose content would not change (other
# than generator.date) is left untouched.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
VENV=$ROOT/build-peers/golden-venv
PY=$VENV/bin/python
LCP_VERSION=0.3.36

[ -f models/SmolLM2-135M-Instruct.Q4_1.gguf ] && [ -f models/all-MiniLM-L6-v2/model.safetensors ] \
  || scripts/fetch_models.sh

TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(smollm2_tokens smollm2_chat minilm_tokens minilm_embeddings smollm2_greedy)
need_llama=0
for t in "${TARGETS[@]}"; do case $t in smollm2_*) need_llama=1 ;; esac; done

# 1. the venv (the Python references; `venv` as the only target stops here)
stamp_want="$(sha256sum scripts/golden/requirements.txt | cut -d' ' -f1)"
if [ ! -x "$PY" ] || [ "$(cat "$VENV/.stamp" 2>/dev/null)" != "$stamp_want" ]; then
  [ -x "$PY" ] || python3 -m venv "$VENV"
  "$PY" -m pip install --quiet --upgrade pip
  # torch from PyPI (its CUDA wheels pull the nvidia-* runtime packages; the
  # CPU path is all that is used here)
  "$PY" -m pip install --quiet -r scripts/golden/requirements.txt
  echo "$stamp_want" > "$VENV/.stamp"
fi

# 2. llama.cpp (the libraries llama-cpp-python binds to, and the peer tools),
#    and llama-cpp-python's Python layer only (LLAMA_BUILD=OFF: no second
#    compile of llama.cpp), from the sdist that llamacpp.sh checked, bound to
#    that build: llama_cpp/lib -> build-peers/llama.cpp/bin
if [ $need_llama = 1 ]; then
  scripts/peers/llamacpp.sh
  LIBDIR=$ROOT/build-peers/llama.cpp/bin
  if [ "$("$PY" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))' 2>/dev/null)" != "$LCP_VERSION" ]; then
    CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" \
      "$PY" -m pip install --quiet --no-deps --force-reinstall \
      "build-peers/dl/llama_cpp_python-$LCP_VERSION.tar.gz"
  fi
  PKG=$("$PY" -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("llama_cpp").origin))')
  mkdir -p "$PKG/lib"
  for so in "$LIBDIR"/lib*.so*; do ln -sfn "$so" "$PKG/lib/$(basename "$so")"; done
fi

# 3. the files, in the order others wait for them
export PYTHONHASHSEED=0 OMP_NUM_THREADS=2 TOKENIZERS_PARALLELISM=false \
       HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
cd scripts/golden
for t in "${TARGETS[@]}"; do
  case $t in
    smollm2_tokens)    "$PY" gen_smollm2.py tokens ;;
    smollm2_chat)      "$PY" gen_smollm2.py chat ;;
    smollm2_greedy)    "$PY" gen_smollm2.py greedy ;;
    minilm_tokens)     "$PY" gen_minilm.py tokens ;;
    minilm_embeddings) "$PY" gen_minilm.py embeddings ;;
    venv)              ;;
    *) echo "make_golden: unknown target $t" >&2; exit 2 ;;
  esac
done
