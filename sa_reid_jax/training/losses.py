"""Identity-classification losses of the SA network's heads."""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

WEIGHTINGS = ('sum', 'paper')


def cross_entropy_terms(outputs: dict[str, Any],
                        labels: jax.Array) -> dict[str, jax.Array]:
  """Mean softmax cross-entropy of every classifier head.

  Args:
    outputs: the network's outputs (``part_logits`` (B, P, C) if any,
      ``global_logits`` (B, C), ``ds_logits`` (B, 3, C) if any).
    labels: (B,) int train classes.

  Returns:
    ``part{i}_ce`` (i = 1..P), ``global_ce`` and ``ds{i}_ce`` (i = 1..3),
    each a float32 scalar, for the heads the network has.
  """

  def mean_ce(logits):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), labels))

  terms = {}
  if 'part_logits' in outputs:
    for i in range(outputs['part_logits'].shape[1]):
      terms[f'part{i + 1}_ce'] = mean_ce(outputs['part_logits'][:, i])
  terms['global_ce'] = mean_ce(outputs['global_logits'])
  if 'ds_logits' in outputs:
    for i in range(outputs['ds_logits'].shape[1]):
      terms[f'ds{i + 1}_ce'] = mean_ce(outputs['ds_logits'][:, i])
  return terms


def total_loss(terms: dict[str, jax.Array],
               config: ml_collections.ConfigDict) -> jax.Array:
  """The optimised loss from the heads' cross-entropies.

  Args:
    terms: `cross_entropy_terms`' output.
    config: the ``loss`` block: ``weighting`` ``'sum'`` (every term with
      weight 1, the official code) or ``'paper'`` (``part_weight`` x mean of
      the part terms + (1 - ``part_weight``) x mean of the others; the plain
      mean of the others for a network without parts), and ``part_weight``.

  Returns:
    a float32 scalar.
  """
  if config.weighting not in WEIGHTINGS:
    raise ValueError(f'config.loss.weighting must be one of {WEIGHTINGS}, '
                     f'got {config.weighting!r}')
  if config.weighting == 'sum':
    return sum(terms.values())
  parts = [v for k, v in terms.items() if k.startswith('part')]
  others = [v for k, v in terms.items() if not k.startswith('part')]
  others_mean = sum(others) / len(others)
  if not parts:
    return others_mean
  return (config.part_weight * sum(parts) / len(parts) +
          (1 - config.part_weight) * others_mean)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Share of rows whose highest logit is the label."""
  return jnp.mean(jnp.argmax(logits, axis=-1) == labels)
