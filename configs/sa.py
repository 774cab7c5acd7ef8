r"""The SA network (Parameter-Free Spatial Attention, arXiv 1811.12150) on
one dataset: the full model of the paper's Tables 1 and 3.

The argument is DATASET[,OPTION...], the options in any order, each once:

  DATASET   market1501, dukemtmc_reid, cuhk03_labeled, cuhk03_detected
            (CUHK03-NP's two box sets), msmt17 or market_layout_folder
            (sa_reid_jax/training/defaults.py, DATASETS)
  no_sa     the same network without SA (Table 3, "-SA")
  released  the released main.py's recipe: without random erasing
            (switched off after the paper), everything else the same
  tiny      a one-block ResNet of width 4 at 64x32 in batches of 8, from
            random weights, evaluated at the end only: checks a command in
            seconds on a CPU (defaults.py, TINY)

SA normalised as the official code ('sum'), which produced the published
numbers; the paper text's softmax, nearly one-hot over hundreds of post-ReLU
channels, is --config.model.attention_normalization=softmax. Random erasing
as the official code, which the paper used for these tables. Train from the
ImageNet backbone (convert_weights.py --format=torchvision, see the README);
a run reports plain (Table 3) and re-ranked (Table 1) metrics:

  python train.py --config=configs/sa.py:market1501 \
      --workdir=workdirs/sa_market1501 \
      --config.init_from=models/imagenet
  python train.py --config=configs/sa.py:dukemtmc_reid \
      --workdir=workdirs/sa_dukemtmc_reid \
      --config.init_from=models/imagenet
  python train.py --config=configs/sa.py:cuhk03_labeled \
      --workdir=workdirs/sa_cuhk03_labeled \
      --config.init_from=models/imagenet
  python train.py --config=configs/sa.py:cuhk03_detected \
      --workdir=workdirs/sa_cuhk03_detected \
      --config.init_from=models/imagenet

Without SA, and the released recipe with and without SA (on any dataset):

  python train.py --config=configs/sa.py:market1501,no_sa \
      --workdir=workdirs/sa_market1501_no_sa \
      --config.init_from=models/imagenet
  python train.py --config=configs/sa.py:market1501,released \
      --workdir=workdirs/sa_market1501_released \
      --config.init_from=models/imagenet
  python train.py --config=configs/sa.py:market1501,released,no_sa \
      --workdir=workdirs/sa_market1501_released_no_sa \
      --config.init_from=models/imagenet

An epoch is one pass over the training images in batches of 48 drawn
uniformly (images // 48 steps); 100 epochs, with every option but tiny:

  argument          identities  images  steps/epoch   steps
  market1501               751  12,936          269  26,900
  dukemtmc_reid            702  16,522          344  34,400
  cuhk03_labeled           767   7,368          153  15,300
  cuhk03_detected          767   7,365          153  15,300

Evaluate a model directory (from training or convert_weights.py), or read
the extracted folder instead of the TFDS dataset with
--config.dataset.folder=/path/to/folder:

  python eval.py --config=configs/sa.py:market1501 --checkpoint=DIR [--flip]

The paper's figures and ours: docs/models.md.
"""

from sa_reid_jax.training.defaults import sa_config


def get_config(arg=None):
  return sa_config(arg)
