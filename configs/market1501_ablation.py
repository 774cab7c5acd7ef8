r"""The ablation study on Market-1501 (paper Table 2): one run per row.

60 epochs, no random erasing (as the paper's Table 2), no re-ranking; SA
rows use the official code's 'sum' normalisation, which produced the
published numbers (--config.model.attention_normalization=softmax gives the
paper text's softmax, nearly one-hot on hundreds of post-ReLU channels).
The config argument picks the row's network (sa_reid_jax.models.VARIANTS):

  python train.py --config=configs/market1501_ablation.py:backbone \
      --workdir=workdirs/ablation/backbone --config.init_from=models/imagenet
  python train.py --config=configs/market1501_ablation.py:backbone_sa1 \
      --workdir=workdirs/ablation/backbone_sa1 \
      --config.init_from=models/imagenet
  python train.py --config=configs/market1501_ablation.py:backbone_ds \
      --workdir=workdirs/ablation/backbone_ds \
      --config.init_from=models/imagenet
  python train.py --config=configs/market1501_ablation.py:backbone_ds_sa2 \
      --workdir=workdirs/ablation/backbone_ds_sa2 \
      --config.init_from=models/imagenet
  python train.py --config=configs/market1501_ablation.py:backbone_ds_sa1_sa2 \
      --workdir=workdirs/ablation/backbone_ds_sa1_sa2 \
      --config.init_from=models/imagenet
  python train.py --config=configs/market1501_ablation.py:backbone_p_ds \
      --workdir=workdirs/ablation/backbone_p_ds \
      --config.init_from=models/imagenet
  python train.py --config=configs/market1501_ablation.py:backbone_p_ds_sa2 \
      --workdir=workdirs/ablation/backbone_p_ds_sa2 \
      --config.init_from=models/imagenet
  python train.py \
      --config=configs/market1501_ablation.py:backbone_p_ds_sa1_sa2 \
      --workdir=workdirs/ablation/backbone_p_ds_sa1_sa2 \
      --config.init_from=models/imagenet

An epoch is one pass over the training images in batches of 48 drawn
uniformly (images // 48 steps); 60 epochs, every row alike:

  argument    identities  images  steps/epoch   steps
  backbone           751  12,936          269  16,140
"""

from sa_reid_jax.training.defaults import experiment_config

# The rows of Table 2, top to bottom.
ROWS = ('backbone', 'backbone_sa1', 'backbone_ds', 'backbone_ds_sa2',
        'backbone_ds_sa1_sa2', 'backbone_p_ds', 'backbone_p_ds_sa2',
        'backbone_p_ds_sa1_sa2')


def get_config(row=None):
  if row not in ROWS:
    raise ValueError(f'configs/market1501_ablation.py needs a row argument, '
                     f'one of {ROWS} (e.g. ...ablation.py:backbone_ds_sa2); '
                     f'got {row!r}')
  config = experiment_config('market1501', row)
  config.num_epochs = 60
  config.augmentation.erasing_probability = 0.0
  return config
