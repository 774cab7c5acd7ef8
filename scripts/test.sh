#!/usr/bin/env bash
# Runs the test suite from a fresh clone: creates .venv if it is missing,
# installs the package with its test extras (locked versions where
# requirements/ has a lock for this Python), then runs pytest on
# TEST_WORKERS (default 2) parallel workers.
#
#   bash scripts/test.sh           the fast tier (every behaviour once)
#   bash scripts/test.sh --full    everything (CI): adds the tests marked full
#
# Other arguments go to pytest, e.g. `bash scripts/test.sh -k parity`.
# The run ends with its slowest tests, and names any fast-tier test whose
# body took over 15 s (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
install_package --test
exec "$VENV_PYTHON" -m pytest -n "${TEST_WORKERS:-2}" --dist=worksteal \
    --durations=15 "$@"
