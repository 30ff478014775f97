#!/usr/bin/env bash
# Installs the Debian packages Outpost builds, tests and runs with.
# Idempotent: does nothing (not even apt-get update) when all are present.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config git ca-certificates curl
  libyaml-dev liblua5.4-dev lua5.4 libjansson-dev
  libmicrohttpd-dev libwslay-dev libcurl4-openssl-dev libssl-dev
  libcriterion-dev dpdk-dev libdpdk-dev libopenblas-dev
  python3 python3-pip python3-venv prometheus wrk
  libsqlite3-dev
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# prometheus is wanted only for promtool; don't let its service start here.
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
