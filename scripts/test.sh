#!/usr/bin/env bash
# The one test command: installs what the tests need into .venv, then runs pytest.
# Arguments go to pytest, e.g. `bash scripts/test.sh tests/test_download.py -x`.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/venv.sh requirements-dev.txt

# The browser test drives Debian's chromium; install it when we can, else that test skips and says why.
if ! command -v chromium >/dev/null && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

exec .venv/bin/python -m pytest -q "$@"
