"""SGD as the paper trains: two parameter groups and a step-decay schedule.

`torch.optim.SGD(weight_decay=wd, momentum=m, nesterov=True)` does, per
parameter: g += wd * p; buf = m * buf + g; p -= lr * (g + m * buf). optax's
`add_decayed_weights` followed by `sgd(momentum=m, nesterov=True)` is the
same update (its trace starts at zero, PyTorch's at the first gradient,
which is the same value).
"""

from typing import Any

import flax
import jax
import ml_collections
import optax

BACKBONE = 'backbone'
HEADS = 'heads'


def parameter_groups(params: Any) -> Any:
  """Labels every parameter ``'backbone'`` or ``'heads'``.

  Args:
    params: the network's parameters (``SANet``: top-level ``backbone`` and
      the head modules).

  Returns:
    a tree like `params` of group names.
  """
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  labels = {path: BACKBONE if path[0] == 'backbone' else HEADS
            for path in flat}
  return flax.traverse_util.unflatten_dict(labels)


def learning_rate_schedules(config: ml_collections.ConfigDict,
                            steps_per_epoch: int) -> dict[str, optax.Schedule]:
  """Learning rate of each group as a function of the step.

  Args:
    config: the ``optimizer`` block of an experiment config.
    steps_per_epoch: optimizer steps per epoch (epochs become steps here).

  Returns:
    ``{'backbone': schedule, 'heads': schedule}``.
  """
  if config.decay_epochs < 1:
    raise ValueError(f'config.optimizer.decay_epochs must be >= 1, got '
                     f'{config.decay_epochs}')
  every = config.decay_epochs * steps_per_epoch

  def schedule(base: float) -> optax.Schedule:
    def rate(step):
      return base * config.decay_factor ** (step // every)
    return rate

  return {HEADS: schedule(config.learning_rate),
          BACKBONE: schedule(config.learning_rate *
                             config.backbone_lr_multiplier)}


def make_optimizer(config: ml_collections.ConfigDict,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD with PyTorch weight decay, two learning-rate groups and step decay.

  Args:
    config: the ``optimizer`` block of an experiment config.
    steps_per_epoch: optimizer steps per epoch.

  Returns:
    the optax transformation (apply it to the whole parameter tree).
  """
  schedules = learning_rate_schedules(config, steps_per_epoch)

  def group(schedule):
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(schedule, momentum=config.momentum or None,
                  nesterov=bool(config.nesterov)))

  return optax.multi_transform(
      {name: group(schedule) for name, schedule in schedules.items()},
      parameter_groups)


def current_learning_rates(config: ml_collections.ConfigDict,
                           steps_per_epoch: int, step: int) -> dict[str, float]:
  """Each group's learning rate at `step`, for logging."""
  return {f'learning_rate_{name}': float(jax.device_get(schedule(step)))
          for name, schedule in learning_rate_schedules(
              config, steps_per_epoch).items()}
