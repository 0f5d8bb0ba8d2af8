#!/usr/bin/env bash
# Reproduce both studies end to end. With no arguments: the built-in synthetic
# dataset at small settings. `./run_all.sh --config configs/paper.yaml` for the paper's.
set -euo pipefail
export MSCSEG_CALLER_CWD="$PWD"
cd "$(dirname "$0")"
source scripts/ensure_venv.sh
exec python -m mscseg.run "$@"
