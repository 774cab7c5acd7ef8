r"""CPU demo: RGA-SC trained on the built-in synthetic dataset.

After generating the synthetic data as the SA demo does
(``python -m sa_reid_jax.datasets.synthetic --output
workdirs/demo/synthetic_data --difficulty hard``):

  python train.py --config=configs/demo_rga_synthetic.py \
      --workdir=workdirs/demo_rga \
      --config.dataset.folder=workdirs/demo/synthetic_data

The official RGA-SC recipe (P x K batches, label-smoothed cross-entropy +
batch-hard triplet, Adam with warm-up, the random crop, cosine distance) on
a narrow, shallow ResNet trained from scratch at the synthetic images' own
128x64, so that it trains in minutes on two CPU cores. At that size the
feature maps after layer3/layer4 have 8x4 positions, too few for the
official head reduction ((1 + 32 / 8) // 8 = 0 channels): the head reduces
by 4 instead (down_ratio), everything else is the official module.

Measured with this config on the hard synthetic data (870 steps, 42 min on
a 2-core machine shared with the test suite): train accuracy 78%, rank-1
1.4 / 10.8 / 16.7% and mAP 3.6 / 12.4 / 16.4% at steps 288 / 576 / 870
(untrained: ~1%, chance). RGA-SC trained from scratch at this size stays
far below the SA demo (60.8% rank-1 in as many steps): in 116-step runs
with this recipe the same network without RGA modules (variant
``baseline``) reached 40% train accuracy and 6.8% rank-1 against 12-14%
and ~0% for RGA-SC, with or without the triplet term, so the modules are
what learns slowly from random weights (the official network starts from
ImageNet weights). With P x K batches of 8 identities x 4 it did not learn
retrieval at all in 360 steps (rank-1 0.0%). The tests use this config for
the RGA recipe's mechanics (P x K batches, triplet over the global batch,
frozen BNNeck bias, device-count invariance).
"""

from sa_reid_jax.training.rga_defaults import rga_experiment_config


def get_config(arg=None):
  if arg:
    raise ValueError(f'configs/demo_rga_synthetic.py takes no argument, got {arg!r}')
  config = rga_experiment_config('market_layout_folder', 'rga_sc')
  # No ImageNet backbone fits this small network: train it from random
  # weights, explicitly (an empty init_from is refused).
  config.init_from = 'scratch'
  config.image_size = (128, 64)
  config.model.down_ratio = 4
  config.model.stage_sizes = (1, 1, 1, 1)
  config.model.base_width = 16
  # 16 identities x 2 images per step: the official P (16 identities a
  # batch) at the batch of 32 this machine trains. With 8 x 4 the network
  # learned ~4x slower (BNNeck baseline after 120 steps: 7.8% train
  # accuracy against 30% at 16 x 2 and 26% with uniform batches).
  config.batch_size = 32
  config.data.images_per_identity = 2
  # An epoch is one pass over the identities (100 in the demo data: 6
  # steps); 145 epochs = 870 steps, as many as the SA demo's 30 epochs, and
  # the official schedule (warm-up 20 of 600 epochs, decays from 80 on)
  # shrunk to this length.
  config.num_epochs = 145
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_epochs = 14
  config.optimizer.decay_milestones = (97, 121)
  config.checkpoint.every_steps = 200
  config.log_every_steps = 48
  config.eval.every_epochs = 48
  config.eval.at_start = True
  return config
