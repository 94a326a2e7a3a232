# Sourced by run.sh and test.sh: make sure .venv exists (Python 3.11) and holds the given requirements file.
PYTHON="${PYTHON:-python3.11}"
if [ ! -x .venv/bin/python ]; then
    if ! command -v "$PYTHON" >/dev/null; then
        echo "Python 3.11 is needed: install it (Debian/Ubuntu: apt-get install python3.11 python3.11-venv) or set PYTHON=/path/to/python3.11" >&2
        exit 1
    fi
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -qq --disable-pip-version-check -r "$1"
