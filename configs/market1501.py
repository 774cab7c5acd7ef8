r"""The full SA model on Market-1501 (paper Tables 1 and 3).

Train (ImageNet backbone from convert_weights.py --format=torchvision, see
the README), then it reports plain (Table 3) and re-ranked (Table 1) metrics:

  python train.py --config=configs/market1501.py \
      --workdir=workdirs/market1501 \
      --config.init_from=models/imagenet

The same network without spatial attention (Table 3, "-SA"):

  python train.py --config=configs/market1501.py:no_sa \
      --workdir=workdirs/market1501_no_sa \
      --config.init_from=models/imagenet

Evaluate a model directory (from training or convert_weights.py):

  python eval.py --config=configs/market1501.py --checkpoint=DIR [--flip]

or read the extracted folder directly instead of the built TFDS dataset with
--config.dataset.folder=/path/to/folder.
"""

from sa_reid_jax.training.defaults import table3_config


def get_config(arg=None):
  return table3_config('market1501', arg)
