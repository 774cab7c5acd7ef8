"""Training tasks: what one step computes from a batch (`config.task`).

A task owns the forward pass and the loss; the generic step
(`training/step.py`) owns the rest (per-device parameters, gradients and
their average over devices, the optimizer, norms). A task is built from the
experiment config and gives:

* ``batch_keys``: the batch entries its loss reads (the step refuses a
  batch without one of them, rather than training on less);
* ``loss_fn(model, params, batch_stats, batch, rng, axis_name)
  -> (loss, (metrics, new_batch_stats))``.
"""

import dataclasses
from typing import Any, Callable, Optional

import jax
import ml_collections

from sa_reid_jax import losses

LossFn = Callable[[Any, Any, Any, dict[str, jax.Array], jax.Array,
                   Optional[str]], tuple[jax.Array, tuple[dict, Any]]]


@dataclasses.dataclass(frozen=True)
class Task:
  """A training recipe's step computation (see the module docstring)."""
  name: str
  batch_keys: tuple[str, ...]
  loss_fn: LossFn


def identification(config: ml_collections.ConfigDict) -> Task:
  """Identity classification plus metric terms (SA, RGA, the baseline).

  One forward pass in train mode (dropout keyed per example by its place
  in the epoch, ``batch['positions']``; BatchNorm statistics updated), then
  the weighted terms of ``config.loss.terms`` (`sa_reid_jax.losses`).
  """
  losses.active_terms(config)  # unknown names or weights fail here, early

  def loss_fn(model, params, batch_stats, batch, rng, axis_name):
    outputs, updates = model.apply(
        {'params': params, 'batch_stats': batch_stats}, batch['images'],
        train=True, example_ids=batch['positions'], rngs={'dropout': rng},
        mutable=['batch_stats'])
    loss, metrics = losses.total_loss(config, outputs, batch, axis_name)
    return loss, (metrics, updates['batch_stats'])

  return Task('identification', ('images', 'labels', 'positions'), loss_fn)


TASKS: dict[str, Callable[[ml_collections.ConfigDict], Task]] = {
    'identification': identification,
}


def build(config: ml_collections.ConfigDict) -> Task:
  """The task ``config.task`` names.

  Raises:
    ValueError: naming ``config.task`` when it is unknown.
  """
  if config.task not in TASKS:
    raise ValueError(f'config.task must be one of {sorted(TASKS)}, got '
                     f'{config.task!r}')
  return TASKS[config.task](config)
