#!/usr/bin/env bash
# The demo: trains the SA network on the built-in synthetic dataset on CPU
# and prints rank-1 and mAP before and after training. Creates .venv and
# installs the package first if needed. Optional argument: the run's
# directory (default workdirs/demo); running again resumes or re-reports.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
install_package
WORKDIR="${1:-workdirs/demo}"
DATA="$WORKDIR/synthetic_data"
export TF_CPP_MIN_LOG_LEVEL=2
SECONDS=0
if [ ! -d "$DATA/bounding_box_train" ]; then
  "$VENV_PYTHON" -m sa_reid_jax.datasets.synthetic --output "$DATA" \
      --difficulty hard
fi
"$VENV_PYTHON" train.py --config=configs/demo_synthetic.py \
    --workdir="$WORKDIR" --config.dataset.folder="$DATA"
echo "demo finished in $((SECONDS / 60)) min $((SECONDS % 60)) s (after set-up)"
