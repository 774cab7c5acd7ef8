# Sourced by the scripts in this folder: makes sure .venv exists and was made
# by a Python >= 3.11, sets VENV_PYTHON to its interpreter and defines
# install_package.
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

# lock_file [test]: the lock in requirements/ for .venv's Python and this
# machine (scripts/lock.sh writes them), or nothing when there is none.
lock_file() {
  local python machine suffix="${1:+-$1}"
  python="$("$VENV_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  machine="$(uname -s | tr '[:upper:]' '[:lower:]')-$(uname -m)"
  local lock="requirements/py$python-$machine$suffix.txt"
  [ -f "$lock" ] && echo "$lock"
}

# install_package [--test]: installs the package (with its test extra for
# --test) into .venv in editable mode. Where requirements/ has a lock for this
# Python and machine, the dependencies come from it (exact versions,
# hash-checked), then the package itself; anything the package needs that the
# lock leaves out (torch in the 3.12 test lock) comes from pyproject.toml's
# ranges. Elsewhere everything comes from the ranges. Says which in one line;
# pip's output is shown only when it fails.
install_package() {
  local extra="" spec=. lock
  if [ "${1:-}" = --test ]; then extra=test; spec='.[test]'; fi
  lock="$(lock_file $extra)"
  local log=.venv/pip-install.log
  # Nothing to do when this spec was installed from the same lock and
  # pyproject.toml (a stamp of their contents).
  local stamp=".venv/installed-${extra:-package}.stamp" state
  state="$(cat pyproject.toml ${lock:+"$lock"} | sha256sum | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$state" ]; then
    echo "using .venv as installed from ${lock:-the ranges of pyproject.toml}"
    return
  fi
  rm -f "$stamp"
  local pip=("$VENV_PYTHON" -m pip install --disable-pip-version-check)
  if [ -n "$lock" ]; then
    if ! "${pip[@]}" --require-hashes -r "$lock" >"$log" 2>&1; then
      cat "$log" >&2
      echo "error: installing $lock failed (log above, also in $log)" >&2
      exit 1
    fi
    "$VENV_PYTHON" -m pip freeze --exclude-editable >.venv/locked.txt
  fi
  # With a complete lock every dependency is already there and pip adds only
  # the package itself.
  if ! "${pip[@]}" -e "$spec" >>"$log" 2>&1; then
    cat "$log" >&2
    echo "error: pip install -e $spec failed (log above, also in $log)" >&2
    exit 1
  fi
  echo "$state" >"$stamp"
  if [ -z "$lock" ]; then
    echo "installed $spec from pyproject.toml's ranges (no lock in requirements/ for this Python and machine)"
    return
  fi
  local unlocked
  # (grep finds nothing when the lock is complete: not an error.)
  unlocked="$("$VENV_PYTHON" -m pip freeze --exclude-editable \
              | { grep -vxF -f .venv/locked.txt || true; } \
              | sed 's/==.*//' | paste -sd' ' -)"
  if [ -n "$unlocked" ]; then
    echo "installed $spec from $lock (hash-checked); not in the lock, from pyproject.toml's ranges: $unlocked"
  else
    echo "installed $spec with the versions of $lock (hash-checked)"
  fi
}
