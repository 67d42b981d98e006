#!/usr/bin/env bash
# setup.sh — install what the engine needs from Debian 12's packages (as
# root, only what is missing) and build it into build/.
#   bash scripts/setup.sh            # packages + build
#   ENGINE_BUILD_TYPE=Debug bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(gcc make cmake pkg-config lua5.4 liblua5.4-dev libopenblas-openmp-dev
          libjansson-dev libpcre2-dev lua-filesystem lua-busted lua-dkjson)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE="${ENGINE_BUILD_TYPE:-Release}" >/dev/null
cmake --build build -j "$(nproc)"
echo "setup: built build/engine and build/engine.so"
