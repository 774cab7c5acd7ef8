r"""The BNNeck baseline ("bag of tricks", Luo et al. 2019) on Market-1501.

ResNet-50 (last stride 1) + global pooling + BNNeck, i.e. the RGA network
with neither RGA part; label-smoothed cross-entropy + batch-hard triplet,
P x K batches of 16 x 4, Adam 3.5e-4 with a 10-epoch warm-up from factor
0.01 (the code's; the paper's text says 0.1) and x0.1 at epochs 40 and 70,
120 epochs, cosine distance on the feature after the BNNeck. No center loss
and the RGA random crop instead of the pad-and-crop (see `bot_config`).
reid-strong-baseline's table reports 94.1 / 85.7 rank-1 / mAP (%) for
"+BNNeck" without center loss, the setting this config reproduces (94.5 /
85.9 with center loss). Train from the ImageNet backbone:

  python train.py --config=configs/bot_market1501.py \
      --workdir=workdirs/bot_market1501 \
      --config.init_from=models/imagenet

  python eval.py --config=configs/bot_market1501.py --checkpoint=DIR

An epoch is about one pass over the 12,936 training images, as
reid-strong-baseline counts: 16 x 4 batches from every identity's images
cut into chunks of 4 (sampler 'identity_chunks'), sum_i floor(max(n_i, 4) /
4) // 16 steps, at most 202 (about 184 on Market-1501 by the reference
notes; the run prints the exact number); 120 epochs, about 22,000 steps.
"""

from sa_reid_jax.training.rga_defaults import bot_config


def get_config():
  return bot_config('market1501')
