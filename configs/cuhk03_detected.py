r"""The full SA model on CUHK03-NP detected boxes (paper Tables 1 and 3).

Train (ImageNet backbone from convert_weights.py --format=torchvision, see
the README), then it reports plain (Table 3) and re-ranked (Table 1) metrics:

  python train.py --config=configs/cuhk03_detected.py \
      --workdir=workdirs/cuhk03_detected \
      --config.init_from=models/imagenet

The same network without spatial attention (Table 3, "-SA"):

  python train.py --config=configs/cuhk03_detected.py:no_sa \
      --workdir=workdirs/cuhk03_detected_no_sa \
      --config.init_from=models/imagenet

Evaluate a model directory (from training or convert_weights.py):

  python eval.py --config=configs/cuhk03_detected.py --checkpoint=DIR [--flip]

or read the extracted folder directly instead of the built TFDS dataset with
--config.dataset.folder=/path/to/folder.
"""

from sa_reid_jax.training.defaults import table3_config


def get_config(arg=None):
  return table3_config('cuhk03_np/detected', arg)
