#!/usr/bin/env bash
# The accelerator benchmark in one command (benchmarks/accelerator.py):
#
#   bash benchmarks/accelerator.sh OUT_DIR [--tiny] [--budget_s SECONDS]
#
# Writes OUT_DIR/log.txt (everything printed), OUT_DIR/figures.json and
# OUT_DIR/profile/. Needs a Python with JAX, flax, optax, orbax and PyTorch
# (PYTHON, default python3); the repository goes on PYTHONPATH, so the
# package need not be installed. A missing pure-Python dependency
# (ml-collections on a machine that only has the frameworks) is installed
# into a temporary folder at the version and hashes of this Python's lock in
# requirements/, from the index or, offline, from the wheels in
# SA_REID_WHEELS (a folder). Exit status: 0 when every section passed,
# 1 when one failed (figures.json says which), 2 for bad arguments.
set -euo pipefail

if [[ $# -lt 1 || "$1" == -* ]]; then
  echo "usage: bash benchmarks/accelerator.sh OUT_DIR [--tiny] [--budget_s S]" >&2
  exit 2
fi
out_dir="$1"
shift
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
mkdir -p "$out_dir"
log="$out_dir/log.txt"
: >"$log"

# Distribution -> module of each dependency on the benchmark's path.
declare -A modules=(
  [jax]=jax [flax]=flax [optax]=optax [orbax-checkpoint]=orbax.checkpoint
  [ml-collections]=ml_collections [absl-py]=absl [numpy]=numpy [torch]=torch
)
missing=()
for dist in "${!modules[@]}"; do
  if ! "$python" -c "import ${modules[$dist]}" 2>/dev/null; then
    missing+=("$dist")
  fi
done
if ((${#missing[@]})); then
  version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  lock="$repo/requirements/py$version-linux-x86_64.txt"
  if [[ ! -f "$lock" ]]; then
    echo "missing ${missing[*]} and no lock for Python $version ($lock)" | tee -a "$log" >&2
    exit 1
  fi
  site="$(mktemp -d)"
  trap 'rm -rf "$site"' EXIT
  requirements="$site/requirements.txt"
  : >"$requirements"
  for dist in "${missing[@]}"; do
    # The pinned line and its hash lines (until the next unindented line).
    awk -v name="$dist" '
      /^[^ #]/ { keep = (tolower($1) ~ "^" name "==") }
      keep' "$lock" >>"$requirements"
    if ! grep -qi "^$dist==" "$requirements"; then
      echo "missing $dist, which $lock does not pin" | tee -a "$log" >&2
      exit 1
    fi
  done
  source_flags=()
  if [[ -n "${SA_REID_WHEELS:-}" ]]; then
    source_flags=(--no-index --find-links "$SA_REID_WHEELS")
  fi
  echo "installing ${missing[*]} from $lock into $site/packages" | tee -a "$log"
  "$python" -m pip install --quiet --no-deps --target "$site/packages" \
    --require-hashes "${source_flags[@]}" -r "$requirements" 2>&1 | tee -a "$log"
  export PYTHONPATH="$site/packages${PYTHONPATH:+:$PYTHONPATH}"
fi

export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
set +e
"$python" "$repo/benchmarks/accelerator.py" --out_dir "$out_dir" "$@" 2>&1 | tee -a "$log"
status=${PIPESTATUS[0]}
exit "$status"
