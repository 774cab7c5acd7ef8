#!/usr/bin/env bash
# Runs the test suite from a fresh clone: creates .venv if it is missing,
# installs the package with its test extras (locked versions where
# requirements/ has a lock for this Python), then runs pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k parity`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
install_package --test
exec "$VENV_PYTHON" -m pytest "$@"
