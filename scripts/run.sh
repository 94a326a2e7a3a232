#!/usr/bin/env bash
# Installs the app into .venv and runs it: `bash scripts/run.sh [app flags]`, e.g. --port 7861.
# With no real weights it runs the small model shipped in weights/; see README for the real ones.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
if [ ! -x .venv/bin/python ]; then
    if ! command -v "$PYTHON" >/dev/null; then
        echo "Python 3.11 is needed: install it (Debian/Ubuntu: apt-get install python3.11 python3.11-venv) or set PYTHON=/path/to/python3.11" >&2
        exit 1
    fi
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -qq --disable-pip-version-check -r requirements.txt

exec .venv/bin/python app.py "$@"
