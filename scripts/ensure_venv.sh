# Sourced by run_all.sh and run_tests.sh: pick the stack from the interpreter, make its virtual
# environment from the stack's lock file if missing or out of date, then put it first on PATH.
#
#   Python 3.10 / 3.11 -> the paper's stack   requirements/paper.txt    .venv/
#   Python 3.12 / 3.13 -> the current stack   requirements/current.txt  .venv-current/
#
# PYTHON=python3.12 (a name or a path) chooses the interpreter; without it the first of
# python3.11, python3.10, python3.12, python3.13, python3 that works. A name that is only a
# pyenv shim of an inactive version is found under `pyenv root`. MSCSEG_VENV=DIR puts the
# environment in DIR; MSCSEG_VENV_CACHE=DIR in DIR/<stack>-py<X.Y>-<hash of the lock file>, so
# that clones share one environment per lock file (CI does this). Nothing else is touched.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

mscseg_python_ok() {
    "$1" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 13) else 1)' >/dev/null 2>&1
}

mscseg_resolve_python() {
    local name="$1" found
    if mscseg_python_ok "$name"; then echo "$name"; return 0; fi
    case "$name" in */*) return 1 ;; esac
    command -v pyenv >/dev/null 2>&1 || return 1
    for found in $(ls -d "$(pyenv root)"/versions/*/bin/"$name" 2>/dev/null | sort -rV); do
        if mscseg_python_ok "$found"; then echo "$found"; return 0; fi
    done
    return 1
}

mscseg_pick_python() {
    local candidate
    if [ -n "${PYTHON:-}" ]; then
        mscseg_resolve_python "$PYTHON" && return 0
        echo "[mscseg] PYTHON=$PYTHON is not a Python 3.10 to 3.13 that runs here (3.10/3.11: the paper's stack; 3.12/3.13: the current one)." >&2
        return 1
    fi
    for candidate in python3.11 python3.10 python3.12 python3.13 python3; do
        mscseg_resolve_python "$candidate" && return 0
    done
    echo "[mscseg] mscseg needs Python 3.10 or 3.11 (the paper's TensorFlow 2.15) or 3.12/3.13 (the current TensorFlow); none found. Set PYTHON=/path/to/python3.11." >&2
    return 1
}

PY="$(mscseg_pick_python)"
PY_VERSION="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
case "$PY_VERSION" in
    3.10 | 3.11) MSCSEG_STACK=paper; DEFAULT_VENV="$ROOT/.venv" ;;
    *) MSCSEG_STACK=current; DEFAULT_VENV="$ROOT/.venv-current" ;;
esac
LOCK="$ROOT/requirements/$MSCSEG_STACK.txt"
NO_DEPS="$ROOT/requirements/$MSCSEG_STACK-no-deps.txt"
[ -f "$NO_DEPS" ] || NO_DEPS=/dev/null
LOCK_HASH="$(cat "$LOCK" "$NO_DEPS" | sha256sum | cut -c1-16)"
if [ -n "${MSCSEG_VENV:-}" ]; then
    VENV="$MSCSEG_VENV"
elif [ -n "${MSCSEG_VENV_CACHE:-}" ]; then
    VENV="$MSCSEG_VENV_CACHE/$MSCSEG_STACK-py$PY_VERSION-$LOCK_HASH"
else
    VENV="$DEFAULT_VENV"
fi
STAMP="$VENV/.mscseg-requirements.sha256"
WANT="$(cat "$LOCK" "$NO_DEPS" "$ROOT/setup.cfg" | sha256sum | cut -d' ' -f1) $PY_VERSION"

if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "[mscseg] setting up $VENV: Python $PY_VERSION, $MSCSEG_STACK stack from requirements/$MSCSEG_STACK.txt (first run: a few minutes, 5 to 8 GB) ..." >&2
    started=$SECONDS
    if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c "import sys; sys.exit(0 if '%d.%d' % sys.version_info[:2] == '$PY_VERSION' else 1)" 2>/dev/null; then
        if [ ! -f "$VENV/pyvenv.cfg" ]; then
            echo "[mscseg] $VENV is not a virtual environment; choose another MSCSEG_VENV" >&2
            return 1 2>/dev/null || exit 1
        fi
        echo "[mscseg] $VENV has another Python; remaking it with Python $PY_VERSION" >&2
        "$PY" -m venv --clear "$VENV"
    fi
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip setuptools wheel
    "$VENV/bin/python" -m pip install --quiet -r "$LOCK"
    [ "$NO_DEPS" = /dev/null ] || "$VENV/bin/python" -m pip install --quiet --no-deps -r "$NO_DEPS"
    "$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e "$ROOT"
    echo "$WANT" > "$STAMP"
    echo "[mscseg] environment ready in $((SECONDS - started)) s ($(du -sh "$VENV" 2>/dev/null | cut -f1))" >&2
fi
export MSCSEG_STACK
export PATH="$VENV/bin:$PATH"
export PYTHONNOUSERSITE=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
