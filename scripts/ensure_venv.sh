# Sourced by run_all.sh and run_tests.sh: make .venv from requirements.txt if it is
# missing or out of date, then put it first on PATH. Nothing outside .venv is touched.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MSCSEG_VENV:-$ROOT/.venv}"
STAMP="$VENV/.mscseg-requirements.sha256"
WANT="$(cat "$ROOT/requirements.txt" "$ROOT/setup.cfg" | sha256sum | cut -d' ' -f1)"

pick_python() {
    for candidate in "${PYTHON:-}" python3.11 python3.10 python3; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys; sys.exit(0 if sys.version_info[:2] in ((3, 10), (3, 11)) else 1)'; then
            echo "$candidate"; return 0
        fi
    done
    echo "mscseg needs Python 3.10 or 3.11 (TensorFlow 2.15's range); none found. Set PYTHON=/path/to/python3.11." >&2
    return 1
}

if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    PY="$(pick_python)"
    echo "[mscseg] setting up $VENV from requirements.txt (first run: a few minutes, about 5 GB) ..." >&2
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip setuptools wheel
    "$VENV/bin/python" -m pip install --quiet -r "$ROOT/requirements.txt"
    "$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e "$ROOT"
    echo "$WANT" > "$STAMP"
    echo "[mscseg] environment ready" >&2
fi
export PATH="$VENV/bin:$PATH"
export PYTHONNOUSERSITE=1
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
