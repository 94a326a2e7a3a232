#!/usr/bin/env bash
# Installs the app into .venv and runs it: `bash scripts/run.sh [app flags]`, e.g. --port 7861.
# With no real weights it runs the small model shipped in weights/; see README for the real ones.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/venv.sh requirements.txt

exec .venv/bin/python app.py "$@"
