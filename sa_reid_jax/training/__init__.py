"""Training: the defaults, optimizer, generic data-parallel step, checkpoints, the run."""

from sa_reid_jax.training.defaults import experiment_config
