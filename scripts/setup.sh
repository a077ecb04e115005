#!/usr/bin/env bash
# Creates .venv (if missing) and installs deepcluster with the pinned versions that work on the project's
# reference machine (Python 3.11, x86_64). Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e . 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import deepcluster, torch, torchvision, faiss" || { echo "set-up failed" >&2; exit 1; }
# Headless Chromium renders a run's HTML report in the tests (Debian's package; needs root and apt).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; } >/dev/null 2>&1 \
      || echo "set-up: could not install chromium; the report screenshot test needs it (apt-get install chromium)" >&2
  else
    echo "set-up: chromium is missing; the report screenshot test needs it (sudo apt-get install chromium)" >&2
  fi
fi
