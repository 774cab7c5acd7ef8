r"""CPU demo: the SA network trained on the built-in synthetic dataset.

The whole demo (virtualenv, dataset, training, evaluation before and after):

  bash scripts/demo.sh

which runs, after generating the hard synthetic data
(``python -m sa_reid_jax.datasets.synthetic --output
workdirs/demo/synthetic_data --difficulty hard``, calibrated so that this
network lands between 55% and 85% rank-1; README, "Datasets"):

  python train.py --config=configs/demo_synthetic.py --workdir=workdirs/demo \
      --config.dataset.folder=workdirs/demo/synthetic_data

The network is the paper's full model (6 parts, deep supervision, SA on the
DS branches) on a narrow, shallow ResNet so that it trains in minutes on two
CPU cores, from scratch, at the synthetic images' own 128x64 size.
"""

from sa_reid_jax.training import experiment_config


def get_config(arg=None):
  if arg:
    raise ValueError(f'configs/demo_synthetic.py takes no argument, got {arg!r}')
  config = experiment_config('market_layout_folder', 'full')
  # No ImageNet backbone fits this small network: train it from random
  # weights, explicitly (an empty init_from is refused).
  config.init_from = 'scratch'
  config.image_size = (128, 64)
  config.model.stage_sizes = (1, 1, 1, 1)
  config.model.base_width = 16
  config.model.last_stride = 1
  # Trained from scratch: the backbone learns at the full rate.
  config.optimizer.backbone_lr_multiplier = 1.0
  config.optimizer.learning_rate = 0.05
  config.batch_size = 32
  config.num_epochs = 30
  config.optimizer.decay_epochs = 20
  config.checkpoint.every_steps = 200
  config.log_every_steps = 20
  config.eval.every_epochs = 10
  config.eval.at_start = True
  return config
