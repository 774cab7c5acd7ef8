"""Identity-classification losses: cross-entropy of every classifier head.

The SA network has several heads (parts, global, deep supervision); its two
ways of combining them are here. Label smoothing follows Szegedy et al.
(2016) as `torch.nn.CrossEntropyLoss(label_smoothing=eps)` computes it: the
target puts 1 - eps on the label and eps / C on every class (label
included). The RGA recipe uses eps = 0.1 (official `reid/loss/loss_set.py`).
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax

# How the SA network's head losses are combined (config key `weighting`).
WEIGHTINGS = ('sum', 'paper', 'parts')


def _mean_cross_entropy(logits: jax.Array, labels: jax.Array,
                        label_smoothing: float) -> jax.Array:
  logits = logits.astype(jnp.float32)
  if not label_smoothing:
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits, labels))
  targets = optax.smooth_labels(
      jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype),
      label_smoothing)
  return jnp.mean(optax.softmax_cross_entropy(logits, targets))


def cross_entropy_terms(outputs: dict[str, Any], labels: jax.Array,
                        label_smoothing: float = 0.0
                        ) -> dict[str, jax.Array]:
  """Mean softmax cross-entropy of every classifier head.

  Args:
    outputs: the network's outputs (``part_logits`` (B, P, C) if any,
      ``global_logits`` (B, C), ``ds_logits`` (B, 3, C) if any).
    labels: (B,) int train classes.
    label_smoothing: eps in [0, 1): weight moved from the label to the
      uniform distribution over the C classes.

  Returns:
    ``part{i}_ce`` (i = 1..P), ``global_ce`` and ``ds{i}_ce`` (i = 1..3),
    each a float32 scalar, for the heads the network has.

  Raises:
    ValueError: for label_smoothing outside [0, 1).
  """
  if not 0 <= label_smoothing < 1:
    raise ValueError(f'label_smoothing must be in [0, 1), got '
                     f'{label_smoothing}')

  def mean_ce(logits):
    return _mean_cross_entropy(logits, labels, label_smoothing)

  terms = {}
  if 'part_logits' in outputs:
    for i in range(outputs['part_logits'].shape[1]):
      terms[f'part{i + 1}_ce'] = mean_ce(outputs['part_logits'][:, i])
  terms['global_ce'] = mean_ce(outputs['global_logits'])
  if 'ds_logits' in outputs:
    for i in range(outputs['ds_logits'].shape[1]):
      terms[f'ds{i + 1}_ce'] = mean_ce(outputs['ds_logits'][:, i])
  return terms


def combine_heads(terms: dict[str, jax.Array], weighting: str,
                  part_weight: float) -> jax.Array:
  """One loss from the heads' cross-entropies.

  Args:
    terms: `cross_entropy_terms`' output.
    weighting: ``'sum'`` (every term with weight 1, the official SA code)
      or ``'paper'`` (``part_weight`` x mean of the part terms + (1 -
      ``part_weight``) x mean of the others, SA paper Sec. 3.3; the plain
      mean of the others for a network without parts) or ``'parts'`` (the
      sum of the part terms, PCB's loss (Sun et al., ECCV 2018, Sec. 3.1);
      ``global_ce`` for a network without parts).
    part_weight: see `weighting`.

  Returns:
    a float32 scalar.

  Raises:
    ValueError: for an unknown weighting.
  """
  if weighting not in WEIGHTINGS:
    raise ValueError(f'config.loss.terms.cross_entropy.weighting must be one '
                     f'of {WEIGHTINGS}, got {weighting!r}')
  if weighting == 'sum':
    return sum(terms.values())
  parts = [v for k, v in terms.items() if k.startswith('part')]
  if weighting == 'parts':
    return sum(parts) if parts else terms['global_ce']
  others = [v for k, v in terms.items() if not k.startswith('part')]
  others_mean = sum(others) / len(others)
  if not parts:
    return others_mean
  return (part_weight * sum(parts) / len(parts) +
          (1 - part_weight) * others_mean)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Share of rows whose highest logit is the label."""
  return jnp.mean(jnp.argmax(logits, axis=-1) == labels)
