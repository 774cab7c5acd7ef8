r"""The full SA model on CUHK03-NP labeled boxes (paper Tables 1 and 3).

SA normalised as the official code ('sum'), which produced the published
numbers; the paper text's softmax, nearly one-hot over hundreds of post-ReLU
channels, is --config.model.attention_normalization=softmax. Random erasing
as the official code, which the paper used for these tables. Train from the
ImageNet backbone (convert_weights.py --format=torchvision, see the README);
it reports plain (Table 3) and re-ranked (Table 1) metrics:

  python train.py --config=configs/cuhk03_labeled.py \
      --workdir=workdirs/cuhk03_labeled \
      --config.init_from=models/imagenet

The network without SA (Table 3, "-SA"); the released main.py's recipe, i.e.
without random erasing (switched off after the paper), with and without SA:

  python train.py --config=configs/cuhk03_labeled.py:no_sa \
      --workdir=workdirs/cuhk03_labeled_no_sa \
      --config.init_from=models/imagenet
  python train.py --config=configs/cuhk03_labeled.py:released \
      --workdir=workdirs/cuhk03_labeled_released \
      --config.init_from=models/imagenet
  python train.py --config=configs/cuhk03_labeled.py:released,no_sa \
      --workdir=workdirs/cuhk03_labeled_released_no_sa \
      --config.init_from=models/imagenet

An epoch is one pass over the 7,368 training images in batches of 48
drawn uniformly: 7,368 // 48 = 153 steps; 100 epochs, 15,300 steps
(every command above).

Evaluate a model directory (from training or convert_weights.py), or read
the extracted folder instead of the TFDS dataset with
--config.dataset.folder=/path/to/folder:

  python eval.py --config=configs/cuhk03_labeled.py --checkpoint=DIR [--flip]
"""

from sa_reid_jax.training.defaults import table3_config


def get_config(arg=None):
  return table3_config('cuhk03_np/labeled', arg)
