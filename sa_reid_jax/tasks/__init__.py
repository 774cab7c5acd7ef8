"""Training tasks: what one step computes from a batch (`config.task`).

A task owns the forward pass and the loss; the generic step
(`training/step.py`) owns the rest (per-device parameters, gradients and
their average over devices, the optimizer, norms). A task is built from the
experiment config and gives:

* ``batch_keys``: the batch entries its loss reads (the step refuses a
  batch without one of them, rather than training on less);
* ``loss_fn(model, params, batch_stats, batch, rng, axis_name)
  -> (loss, (metrics, new_batch_stats))``.

The tasks: ``identification`` (one forward pass, the loss terms: SA, RGA,
the BNNeck baseline) and ``casn`` (`tasks.casn`: Grad-CAM and a second pass
on the erased images inside the step, the siamese terms).
"""

from typing import Callable

import ml_collections

from sa_reid_jax import losses
from sa_reid_jax.tasks import casn
from sa_reid_jax.tasks.task import LossFn, Task


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
    'casn': casn.casn_task,
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
