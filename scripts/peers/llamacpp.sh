#!/usr/bin/env bash
# Builds llama.cpp's tools (llama-bench, llama-batched-bench, llama-server,
# llama-cli) and its shared libraries from the llama.cpp sources vendored in
# the llama-cpp-python sdist on PyPI, into build-peers/llama.cpp/ (gitignored).
# The same build is what scripts/golden/ loads through llama-cpp-python, so
# the golden data and the peer benchmarks run the identical llama.cpp.
#
#   scripts/peers/llamacpp.sh            # build (idempotent), print version
#   JOBS=2 scripts/peers/llamacpp.sh     # parallel build jobs (default 2)
#   LLAMACPP_CMAKE_ARGS="..."            # extra cmake flags (recorded in the stamp)
#
# Output: build-peers/llama.cpp/bin/{llama-bench,llama-batched-bench,
# llama-server,llama-cli,libllama.so,libggml*.so,...} and
# build-peers/llama.cpp/VERSION (one line: "llama-cpp-python <v> llama.cpp <commit>").
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

LCP_VERSION=0.3.36
LCP_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
JOBS=${JOBS:-2}
PEERS=$ROOT/build-peers
DL=$PEERS/dl
SRC=$PEERS/src/llama_cpp_python-$LCP_VERSION
OUT=$PEERS/llama.cpp
TARGETS=(llama llama-bench llama-batched-bench llama-server llama-cli)
CMAKE_FLAGS=(-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF
             -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DBUILD_SHARED_LIBS=ON
             ${LLAMACPP_CMAKE_ARGS:-})

mkdir -p "$DL" "$PEERS/src" "$OUT"

# 1. the sdist, pinned by hash
TARBALL=$DL/llama_cpp_python-$LCP_VERSION.tar.gz
have_tarball() { [ -f "$TARBALL" ] && [ "$(sha256sum "$TARBALL" | cut -d' ' -f1)" = "$LCP_SHA256" ]; }
if ! have_tarball; then
  PIP=${PIP:-$(command -v pip3 || command -v pip || true)}
  [ -n "$PIP" ] || { echo "llamacpp: pip is needed (apt-get install python3-pip)" >&2; exit 1; }
  req=$(mktemp); trap 'rm -f "$req"' EXIT
  echo "llama-cpp-python==$LCP_VERSION --hash=sha256:$LCP_SHA256" > "$req"
  "$PIP" download --quiet --no-deps --no-binary :all: --require-hashes -r "$req" --dest "$DL"
  have_tarball || { echo "llamacpp: checksum mismatch for $TARBALL" >&2; exit 1; }
fi

# 2. unpack (once)
if [ ! -f "$SRC/vendor/llama.cpp/CMakeLists.txt" ]; then
  rm -rf "$SRC.tmp" && mkdir -p "$SRC.tmp"
  tar -xzf "$TARBALL" -C "$SRC.tmp" --strip-components=1
  # the vendored submodule's .git file points nowhere: drop it so that
  # build-info does not ask git (or a parent repository) for a commit
  rm -f "$SRC.tmp/vendor/llama.cpp/.git"
  rm -rf "$SRC" && mv "$SRC.tmp" "$SRC"
fi
LLAMA_SRC=$SRC/vendor/llama.cpp

# the llama.cpp commit that this llama-cpp-python release vendors (its changelog says)
COMMIT=$(awk -v v="## [$LCP_VERSION]" '$0==v{f=1;next} f&&/^## \[/{exit}
  f&&match($0,/llama\.cpp@[0-9a-f]+/){print substr($0,RSTART+10,RLENGTH-10); exit}' "$SRC/CHANGELOG.md")
COMMIT=${COMMIT:-unknown}

# 3. configure + build (incremental; skipped when the stamp matches)
STAMP="llama-cpp-python $LCP_VERSION llama.cpp $COMMIT flags ${CMAKE_FLAGS[*]} cc $(cc -dumpfullversion 2>/dev/null || echo ?)"
all_built() { for t in llama-bench llama-batched-bench llama-server llama-cli libllama.so; do [ -e "$OUT/bin/$t" ] || return 1; done; }
if [ "$(cat "$OUT/.stamp" 2>/dev/null)" != "$STAMP" ] || ! all_built; then
  cmake -S "$LLAMA_SRC" -B "$OUT" "${CMAKE_FLAGS[@]}" \
        -DLLAMA_BUILD_COMMIT="$COMMIT" -DLLAMA_BUILD_NUMBER=0 > "$OUT/cmake-configure.log" \
    || { cat "$OUT/cmake-configure.log" >&2; exit 1; }
  cmake --build "$OUT" -j"$JOBS" --target "${TARGETS[@]}"
  all_built || { echo "llamacpp: build finished but tools are missing in $OUT/bin" >&2; exit 1; }
  echo "$STAMP" > "$OUT/.stamp"
fi
echo "llama-cpp-python $LCP_VERSION llama.cpp $COMMIT" > "$OUT/VERSION"

echo "llamacpp: $(cat "$OUT/VERSION") (GGML_NATIVE=ON) in ${OUT#$ROOT/}/bin"
"$OUT/bin/llama-cli" --version 2>&1 | grep -E '^(version|built with)' || true
