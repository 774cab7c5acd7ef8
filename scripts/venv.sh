# Sourced by the scripts in this folder: makes sure .venv exists and was made
# by a Python >= 3.11, and sets VENV_PYTHON to its interpreter.
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: $PYTHON must be Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
fi
VENV_PYTHON=.venv/bin/python

# install_package SPEC: pip-installs SPEC (e.g. -e '.[test]') into .venv,
# showing pip's output only when it fails.
install_package() {
  local log=.venv/pip-install.log
  if ! "$VENV_PYTHON" -m pip install --disable-pip-version-check "$@" >"$log" 2>&1; then
    cat "$log" >&2
    echo "error: pip install $* failed (log above, also in $log)" >&2
    exit 1
  fi
}
