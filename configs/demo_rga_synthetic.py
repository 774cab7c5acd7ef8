r"""CPU demo: RGA-SC trained on the built-in synthetic dataset.

After generating the synthetic data as the SA demo does
(``python -m sa_reid_jax.datasets.synthetic --output
workdirs/demo/synthetic_data --difficulty hard``):

  python train.py --config=configs/demo_rga_synthetic.py \
      --workdir=workdirs/demo_rga \
      --config.dataset.folder=workdirs/demo/synthetic_data

The official RGA-SC recipe (P x K batches, label-smoothed cross-entropy +
batch-hard triplet, Adam with warm-up, the random crop, cosine distance) on
a narrow, shallow ResNet trained from scratch, so that it trains in minutes
on two CPU cores. The input is 192x96, the smallest size of the synthetic
images' 2:1 shape at which the RGA modules' widths after layer3/layer4
(positions / 8 / 8) are not zero.
"""

from sa_reid_jax.training.defaults import rga_experiment_config


def get_config():
  config = rga_experiment_config('market_layout_folder', 'rga_sc')
  # No ImageNet backbone fits this small network: train it from random
  # weights, explicitly (an empty init_from is refused).
  config.init_from = 'scratch'
  config.image_size = (192, 96)
  config.model.stage_sizes = (1, 1, 1, 1)
  config.model.base_width = 16
  # 8 identities x 4 images per step.
  config.batch_size = 32
  # An epoch is one pass over the identities (100 in the demo data: 12
  # steps); the official schedule shrunk to this length.
  config.num_epochs = 60
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_epochs = 5
  config.optimizer.decay_milestones = (40, 50)
  config.checkpoint.every_steps = 200
  config.log_every_steps = 24
  config.eval.every_epochs = 20
  config.eval.at_start = True
  return config
