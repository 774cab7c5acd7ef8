"""The optimizers of the recipes: SGD (SA), Adam/AdamW with warm-up (RGA).

`torch.optim.SGD(weight_decay=wd, momentum=m, nesterov=True)` does, per
parameter: g += wd * p; buf = m * buf + g; p -= lr * (g + m * buf). optax's
`add_decayed_weights` followed by `sgd(momentum=m, nesterov=True)` is the
same update (its trace starts at zero, PyTorch's at the first gradient,
which is the same value). `torch.optim.Adam(weight_decay=wd)` also adds
wd * p to the gradient before the moments (L2, the official RGA recipe);
AdamW decays the weights directly (Loshchilov and Hutter), as
`optax.adamw`.

Learning rates change once per epoch, as the official schedulers do
(`StepLR` for SA, RGA's `reid/utils/lr_scheduler.py`): during
``warmup_epochs`` a linear ramp from ``warmup_start_factor`` x the rate to
the rate, then the rate times ``decay_factor`` ** (number of decays so far),
decays at every epoch of ``decay_milestones``, or every ``decay_epochs``
epochs when no milestones are given.
"""

from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

BACKBONE = 'backbone'
HEADS = 'heads'
# Parameters a network freezes (e.g. the BNNeck's BatchNorm bias): no
# update at all, not even weight decay.
FROZEN = 'frozen'
OPTIMIZERS = ('sgd', 'adam', 'adamw')


def parameter_groups(params: Any, frozen: Optional[Any] = None) -> Any:
  """Labels every parameter ``'backbone'``, ``'heads'`` or ``'frozen'``.

  Args:
    params: the network's parameters (top-level ``backbone`` and the head
      modules).
    frozen: optional tree like `params` of bools (True = frozen), e.g.
      `models.registry.frozen_mask`.

  Returns:
    a tree like `params` of group names.
  """
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  frozen_flat = (flax.traverse_util.flatten_dict(flax.core.unfreeze(frozen))
                 if frozen is not None else {})
  labels = {path: (FROZEN if frozen_flat.get(path) else
                   BACKBONE if path[0] == 'backbone' else HEADS)
            for path in flat}
  return flax.traverse_util.unflatten_dict(labels)


def _check(config: ml_collections.ConfigDict) -> None:
  if config.name not in OPTIMIZERS:
    raise ValueError(f'config.optimizer.name must be one of {OPTIMIZERS}, '
                     f'got {config.name!r}')
  milestones = tuple(config.decay_milestones)
  if not milestones and config.decay_epochs < 1:
    raise ValueError(f'config.optimizer.decay_epochs must be >= 1, got '
                     f'{config.decay_epochs}')
  if any(b <= a for a, b in zip(milestones, milestones[1:])) or any(
      m < 1 for m in milestones):
    raise ValueError(f'config.optimizer.decay_milestones must be increasing '
                     f'epochs >= 1, got {milestones}')
  if config.warmup_epochs < 0 or not 0 <= config.warmup_start_factor <= 1:
    raise ValueError(
        f'config.optimizer.warmup_epochs must be >= 0 and warmup_start_factor '
        f'in [0, 1], got {config.warmup_epochs} and '
        f'{config.warmup_start_factor}')


def epoch_factor(config: ml_collections.ConfigDict, epoch: jax.Array
                 ) -> jax.Array:
  """The learning-rate multiplier in `epoch` (0-based), float32."""
  epoch = jnp.asarray(epoch)
  milestones = tuple(config.decay_milestones)
  if milestones:
    decays = jnp.sum(epoch >= jnp.asarray(milestones))
  else:
    decays = epoch // config.decay_epochs
  factor = jnp.asarray(config.decay_factor, jnp.float32) ** decays
  if config.warmup_epochs:
    start = config.warmup_start_factor
    ramp = start + (1 - start) * epoch / config.warmup_epochs
    factor = jnp.where(epoch < config.warmup_epochs, ramp, factor)
  return factor


def learning_rate_schedules(config: ml_collections.ConfigDict,
                            steps_per_epoch: int) -> dict[str, optax.Schedule]:
  """Learning rate of each group as a function of the step.

  Args:
    config: the ``optimizer`` block of an experiment config.
    steps_per_epoch: optimizer steps per epoch (epochs become steps here).

  Returns:
    ``{'backbone': schedule, 'heads': schedule}``.

  Raises:
    ValueError: naming the ``config.optimizer`` key at fault.
  """
  _check(config)

  def schedule(base: float) -> optax.Schedule:
    def rate(step):
      return base * epoch_factor(config, step // steps_per_epoch)
    return rate

  return {HEADS: schedule(config.learning_rate),
          BACKBONE: schedule(config.learning_rate *
                             config.backbone_lr_multiplier)}


def _group(config: ml_collections.ConfigDict, schedule: optax.Schedule
           ) -> optax.GradientTransformation:
  if config.name == 'sgd':
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(schedule, momentum=config.momentum or None,
                  nesterov=bool(config.nesterov)))
  if config.name == 'adam':
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.adam(schedule, b1=config.adam_b1, b2=config.adam_b2,
                   eps=config.adam_epsilon))
  return optax.adamw(schedule, b1=config.adam_b1, b2=config.adam_b2,
                     eps=config.adam_epsilon,
                     weight_decay=config.weight_decay)


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int,
                   frozen: Optional[Callable[[Any], Any]] = None
                   ) -> optax.GradientTransformation:
  """The configured optimizer with two learning-rate groups and frozen ones.

  Args:
    config: the ``optimizer`` block of an experiment config.
    steps_per_epoch: optimizer steps per epoch.
    frozen: optional function of the parameters giving a bool tree like
      them (True = never updated), e.g. `models.registry.frozen_mask`.

  Returns:
    the optax transformation (apply it to the whole parameter tree).
  """
  schedules = learning_rate_schedules(config, steps_per_epoch)
  transforms = {name: _group(config, schedule)
                for name, schedule in schedules.items()}
  transforms[FROZEN] = optax.set_to_zero()
  return optax.multi_transform(
      transforms, lambda params: parameter_groups(
          params, frozen(params) if frozen is not None else None))
