"""Training: defaults, optimizer, the generic step, checkpoints, the run."""

from sa_reid_jax.training.defaults import experiment_config
