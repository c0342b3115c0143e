#!/usr/bin/env bash
# Install what examples/web and examples/node need: Debian's chromium (for the browser test) and the
# npm packages pinned by each folder's package-lock.json; and Debian's kotlin compiler, which runs the
# Android app's history policy (History.kt) in tests/test_apps.py. Idempotent: a second run installs nothing and
# needs no network (npm is skipped while node_modules matches the lockfile).
#
#   bash examples/setup-js.sh            # both folders + chromium
#   SKIP_CHROMIUM=1 bash examples/setup-js.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

apt_missing=()
[[ -z "${SKIP_CHROMIUM:-}" ]] && ! command -v chromium >/dev/null 2>&1 && apt_missing+=(chromium)
command -v kotlinc >/dev/null 2>&1 || apt_missing+=(kotlin)
if (( ${#apt_missing[@]} )); then
    sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
fi

command -v node >/dev/null || { echo "setup-js: node (>= 20) is required: apt-get install nodejs npm" >&2; exit 1; }

# onnxruntime-node's install script would download GPU binaries; skip keeps the CPU build it ships.
export ONNXRUNTIME_NODE_INSTALL=skip
# node-llama-cpp ships prebuilt llama.cpp binaries in npm packages; never download or build one.
export NODE_LLAMA_CPP_SKIP_DOWNLOAD=true

for dir in "$here/web" "$here/node"; do
    stamp="$dir/node_modules/.smolship-lock.sha256"
    want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        continue  # already installed from this lockfile
    fi
    # `npm ci` refuses node-llama-cpp's lockfile: npm leaves the optional prebuilt packages of other platforms
    # (win-x64, mac-arm64-metal, ...) out of it, then reports them "missing". `npm install --no-save`
    # installs the lockfile's exact versions and writes nothing back.
    (cd "$dir" && npm install --no-save --no-audit --no-fund --loglevel=error)
    echo "$want" > "$stamp"
done
echo "setup-js: chromium $(command -v chromium >/dev/null && chromium --version 2>/dev/null | awk '{print $2}' || echo skipped), node $(node --version), examples/web + examples/node installed"
