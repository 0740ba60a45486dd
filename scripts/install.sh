#!/usr/bin/env bash
# Create .venv and install the pinned stack (requirements.lock) plus this package.
# Idempotent: a stamp records the lock file's hash, so a second run returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
stamp="$VENV/.vlmswap-lock-sha256"
want=$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "install: $VENV is up to date"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
echo "install: pinned stack into $VENV (torch + torchvision run on the CPU here; about 2 minutes)"
# DeepSpeed builds no CUDA/C++ ops at install: its CPU ops are JIT-built on first use, and
# our CPU path avoids needing them (src/vlmswap/train/engine.py's docstring says how).
DS_BUILD_OPS=0 "$VENV/bin/pip" install --quiet --disable-pip-version-check -r requirements.lock
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
echo "$want" > "$stamp"
echo "install: done"
