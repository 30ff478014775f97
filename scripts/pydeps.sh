#!/usr/bin/env bash
# Creates the Python environment the SDK tests run in (tests/sdk/): a venv
# under build-py/ (ignored by git, like every build-*/ folder) holding the
# packages of tests/sdk/requirements.txt, each pinned, installed with
# --no-deps so that nothing unpinned comes in, and checked with `pip check`.
#
#   scripts/pydeps.sh            # or: make pydeps
#   OUTPOST_PY_VENV=/elsewhere scripts/pydeps.sh
#
# Idempotent: a venv built from the same requirements file is kept. Needs
# python3 and python3-venv (scripts/deps.sh installs them) and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${OUTPOST_PY_VENV:-build-py/venv}
REQ=tests/sdk/requirements.txt
STAMP="$VENV/.requirements.sha256"
want=$(sha256sum "$REQ" | cut -d' ' -f1)

if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "pydeps: up to date in $VENV"
  exit 0
fi

command -v python3 >/dev/null || { echo "pydeps: python3 is needed (make deps)" >&2; exit 1; }
echo "pydeps: creating $VENV from $REQ"
rm -f "$STAMP"
python3 -m venv --clear "$VENV" || {
  echo "pydeps: 'python3 -m venv' failed (apt-get install python3-venv)" >&2; exit 1; }
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input \
  --no-deps --only-binary=:all: -r "$REQ"
"$VENV/bin/pip" check --disable-pip-version-check
"$VENV/bin/python" -c "import openai; print('pydeps: openai', openai.__version__, 'in $VENV')"
echo "$want" > "$STAMP"
