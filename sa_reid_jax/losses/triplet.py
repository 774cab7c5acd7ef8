"""Batch-hard triplet loss (Hermans et al., 2017) over the global batch.

For every anchor a in the batch: the hardest positive is the farthest
example with a's identity (a itself included, as the official RGA code's
`TripletLoss` does), the hardest negative the nearest example with another
identity; the loss is max(0, d(a, p) - d(a, n) + margin), or with a soft
margin log(1 + exp(d(a, p) - d(a, n))), averaged over the anchors.
Distances are Euclidean, sqrt(max(||a - b||^2, 1e-12)) as in the official
code (the clamp keeps the gradient finite at zero distance), but summed from
the differences a - b rather than the official expansion ||a||^2 + ||b||^2 -
2 <a, b>. The expansion cancels: its rounding error scales with ||a||^2, not
with the distance, and its inner products run on the matrix units, which by
default round float32 further on GPUs (TF32) and TPUs (bfloat16 passes).
Where a = b (an anchor and itself; an image the P x K sampler drew twice
with the same augmentation) the expansion can leave a distance of rounding
noise whose gradient, (a - b) / d, points along that noise. From the
differences, identical rows are exactly at the clamp floor, where the
gradient is zero, on every backend.

Mining sees the whole global batch, not one device's share: a device's
anchors are compared with the embeddings of every device (gathered with
`lax.all_gather`). Each device's loss is the mean over its own anchors, so
the mean over devices is the global loss; the gradient flows back through
the gather to the devices that computed the embeddings, so the mean of the
devices' gradients is the gradient of the global loss and the result does
not depend on the device count.
"""

from typing import Optional

import jax
import jax.numpy as jnp

# Squared distances are clamped here before the square root (official
# `reid/loss/triplet.py`: dist.clamp(min=1e-12).sqrt()).
_MIN_SQUARED_DISTANCE = 1e-12


def pairwise_distances(a: jax.Array, b: jax.Array) -> jax.Array:
  """Euclidean distances between the rows of a (M, D) and b (N, D).

  Computed in float32 or wider, from the differences (see the module
  docstring; memory M x N x D).

  Returns:
    (M, N) sqrt(max(sum_k (a_ik - b_jk)^2, 1e-12)); exactly 1e-6 where
    a_i = b_j.
  """
  a = a.astype(jnp.promote_types(a.dtype, jnp.float32))
  b = b.astype(a.dtype)
  squared = jnp.sum(jnp.square(a[:, None, :] - b[None, :, :]), axis=-1)
  return jnp.sqrt(jnp.maximum(squared, _MIN_SQUARED_DISTANCE))


def batch_hard_triplet(embeddings: jax.Array, labels: jax.Array, *,
                       margin: float = 0.3, soft_margin: bool = False,
                       axis_name: Optional[str] = None
                       ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Batch-hard triplet loss of this device's anchors against the global batch.

  Args:
    embeddings: (B, D) this device's embeddings (any float dtype; distances
      are computed in float32 or wider).
    labels: (B,) int identities.
    margin: the margin (ignored with `soft_margin`); official RGA: 0.3.
    soft_margin: use log(1 + exp(d_ap - d_an)) instead of the hinge.
    axis_name: the mapped device axis to gather candidates over, or None
      (the batch is the whole batch).

  Returns:
    the loss (mean over this device's anchors, float32 scalar) and metrics:
    ``triplet_active`` (share of anchors with a non-zero hinge, or with
    d_ap > d_an for the soft margin), ``triplet_ap`` and ``triplet_an``
    (mean hardest-positive and hardest-negative distances).

  Raises:
    ValueError: for mismatched shapes.
  """
  if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
    raise ValueError(f'embeddings must be (B, D) and labels (B,), got '
                     f'{embeddings.shape} and {labels.shape}')
  candidates, candidate_labels = embeddings, labels
  if axis_name is not None:
    candidates = jax.lax.all_gather(embeddings, axis_name, tiled=True)
    candidate_labels = jax.lax.all_gather(labels, axis_name, tiled=True)
  distances = pairwise_distances(embeddings, candidates)
  same = labels[:, None] == candidate_labels[None, :]
  # Anchors without a negative (a batch of one identity) get an infinite
  # negative distance, hence no loss, rather than a mined non-negative.
  hardest_positive = jnp.max(jnp.where(same, distances, 0.0), axis=1)
  hardest_negative = jnp.min(jnp.where(same, jnp.inf, distances), axis=1)
  difference = hardest_positive - hardest_negative
  if soft_margin:
    per_anchor = jax.nn.softplus(difference)
    active = difference > 0
  else:
    per_anchor = jax.nn.relu(difference + margin)
    active = per_anchor > 0
  finite_negative = jnp.isfinite(hardest_negative)
  per_anchor = jnp.where(finite_negative, per_anchor, 0.0)
  metrics = {
      'triplet_active': jnp.mean(active & finite_negative),
      'triplet_ap': jnp.mean(hardest_positive),
      'triplet_an': jnp.mean(jnp.where(finite_negative, hardest_negative,
                                       0.0)),
  }
  return jnp.mean(per_anchor), metrics
