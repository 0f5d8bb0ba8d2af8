#!/usr/bin/env bash
# Run the test suite in the project's own environment (made on first use).
# Extra arguments go to pytest, e.g. ./run_tests.sh -m "not slow" tests/test_data_readers.py
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure_venv.sh
exec python -m pytest "$@"
