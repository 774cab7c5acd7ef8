r"""RGA-SC on Market-1501 (Relation-Aware Global Attention, Zhang et al. 2020).

The official recipe (scripts/run_rgasc_cuhk03.sh of the official code, the
reference notes' RGA section): ResNet-50 with last stride 1 at 256x128, the
RGA-SC modules after every stage, a BNNeck; P x K batches of 16 identities
x 4 images, label-smoothed cross-entropy + batch-hard triplet (margin 0.3);
Adam 8e-4 with a 20-epoch warm-up, halved at epochs 80, 120, ..., 360, 600
epochs; cosine distance on the pooled feature. Train from the ImageNet
backbone (convert_weights.py --format=torchvision, see the README):

  python train.py --config=configs/rga_sc_market1501.py \
      --workdir=workdirs/rga_sc_market1501 \
      --config.init_from=models/imagenet

RGA-S or RGA-C alone (the paper's ablation):

  python train.py --config=configs/rga_sc_market1501.py:rga_s \
      --workdir=workdirs/rga_s_market1501 \
      --config.init_from=models/imagenet
  python train.py --config=configs/rga_sc_market1501.py:rga_c \
      --workdir=workdirs/rga_c_market1501 \
      --config.init_from=models/imagenet

An epoch is one pass over the 751 training identities, as the official
sampler counts: 751 // 16 = 46 batches of 16 x 4; 600 epochs,
27,600 steps (every command above).

Evaluate a model directory (from training, or an official checkpoint
converted with convert_weights.py --format=rga_official); the descriptor
after the BNNeck instead of before it is --config.model.descriptor=post_bn:

  python eval.py --config=configs/rga_sc_market1501.py --checkpoint=DIR

Published (rank-1 / mAP, %): 96.1 / 88.4.
"""

from sa_reid_jax.training.rga_defaults import rga_table_config


def get_config(arg=None):
  return rga_table_config('market1501', arg)
