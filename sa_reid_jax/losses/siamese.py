"""CASN's siamese module: pair verification and attention consistency.

Pairs are taken over the whole global batch, as batch-hard triplet mining
(`losses/triplet.py`): a device pairs its own rows with the rows of every
device (gathered with `lax.all_gather`), every ordered pair (i, j), i != j,
once. Each device's loss is its pairs' share of the global mean scaled by
the device count, so the mean over devices (what the step averages) is the
global loss and the gradient flows back through the gather: the result does
not depend on the number of devices.

* `verification_loss`: binary cross-entropy of the siamese head's
  same/different logit, positive and negative pairs weighted equally (a P x
  K batch of 16 x 4 has 3 positives per 60 negatives for each image).
* `attention_consistency_loss` (CASN Sec. 3.2): for every positive pair,
  the Grad-CAM maps thresholded at t (the entries below t set to 0), each
  cropped to the bounding box of its entries >= t and resized to a common
  size, then the L2 distance between the two crops. The box is a discrete
  choice (no gradient); the crop and resize are linear in the map, so the
  gradient reaches the maps inside the boxes.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

# Squared L2 distances are clamped here before the square root, so that
# identical crops (a pair of identical images) have a zero, not NaN,
# gradient (the same floor as the triplet loss).
_MIN_SQUARED_DISTANCE = 1e-12


def global_pairs(labels: jax.Array, axis_name: Optional[str]
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """This device's rows against the global batch: which pairs are which.

  Args:
    labels: (B,) int identities of this device's rows.
    axis_name: the mapped device axis, or None (one device).

  Returns:
    (positive, negative, num_devices): (B, N) bool masks over (own row i,
    global row j), N = B x devices — positive: same identity and j is not i
    itself; negative: another identity — and the device count (int).
  """
  batch = labels.shape[0]
  all_labels, first, num_devices = labels, 0, 1
  if axis_name is not None:
    all_labels = jax.lax.all_gather(labels, axis_name, tiled=True)
    first = jax.lax.axis_index(axis_name) * batch
    num_devices = all_labels.shape[0] // batch
  own = (first + jnp.arange(batch))[:, None] == jnp.arange(
      all_labels.shape[0])[None, :]
  same = labels[:, None] == all_labels[None, :]
  return same & ~own, ~same, num_devices


def _gather(x: jax.Array, axis_name: Optional[str]) -> jax.Array:
  if axis_name is None:
    return x
  return jax.lax.all_gather(x, axis_name, tiled=True)


def _global_count(mask: jax.Array, axis_name: Optional[str]) -> jax.Array:
  count = jnp.sum(mask)
  return count if axis_name is None else jax.lax.psum(count, axis_name)


def _share_of_mean(values: jax.Array, mask: jax.Array, num_devices: int,
                   axis_name: Optional[str]) -> jax.Array:
  """This device's share of the global mean of `values` over `mask`, x the
  device count (0 when the global batch has no such pair)."""
  total = _global_count(mask, axis_name)
  local = jnp.sum(jnp.where(mask, values, 0.0))
  return num_devices * local / jnp.maximum(total, 1)


def verification_loss(pair_logits: jax.Array, labels: jax.Array,
                      axis_name: Optional[str] = None
                      ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Balanced binary cross-entropy of the siamese head over all pairs.

  Args:
    pair_logits: (B, N) float same-identity logits of this device's rows
      against the global batch (N = B x devices, in device order).
    labels: (B,) int identities of this device's rows.
    axis_name: the mapped device axis, or None.

  Returns:
    the loss (float32 scalar; its mean over devices is (mean BCE of the
    positive pairs + mean BCE of the negative pairs) / 2 of the global
    batch) and metrics ``verification_accuracy``: the balanced accuracy,
    (share of positive pairs with a logit > 0 + share of negative pairs
    with a logit < 0) / 2 over the global batch (as the loss, so that the
    many negative pairs of a P x K batch do not hide the positives; a head
    that cannot tell scores 0.5), its mean over devices the global value.
  """
  positive, negative, num_devices = global_pairs(labels, axis_name)
  logits = pair_logits.astype(jnp.float32)
  # -log sigmoid(z) for a positive pair, -log(1 - sigmoid(z)) for a negative.
  positive_loss = _share_of_mean(jax.nn.softplus(-logits), positive,
                                 num_devices, axis_name)
  negative_loss = _share_of_mean(jax.nn.softplus(logits), negative,
                                 num_devices, axis_name)
  accuracy = (_share_of_mean((logits > 0).astype(jnp.float32), positive,
                              num_devices, axis_name) +
              _share_of_mean((logits < 0).astype(jnp.float32), negative,
                             num_devices, axis_name)) / 2
  return (positive_loss + negative_loss) / 2, {
      'verification_accuracy': accuracy}


def attended_box(attention_map: jax.Array, threshold: float) -> jax.Array:
  """Bounding box of the entries >= threshold of one (h, w) map.

  Returns:
    int32 (4,) (top, left, bottom, right), inclusive cell indices; the whole
    map when no entry reaches the threshold. No gradient.
  """
  attention_map = jax.lax.stop_gradient(attention_map)
  inside = attention_map >= threshold
  rows, cols = jnp.any(inside, axis=1), jnp.any(inside, axis=0)

  def span(present):
    indices = jnp.arange(present.shape[0])
    first = jnp.min(jnp.where(present, indices, present.shape[0]))
    last = jnp.max(jnp.where(present, indices, -1))
    empty = ~jnp.any(present)
    return (jnp.where(empty, 0, first),
            jnp.where(empty, present.shape[0] - 1, last))

  top, bottom = span(rows)
  left, right = span(cols)
  return jnp.stack([top, left, bottom, right]).astype(jnp.int32)


def _interpolation_matrix(start: jax.Array, stop: jax.Array, size: int,
                          out_size: int) -> jax.Array:
  """(out_size, size) bilinear weights resampling cells start..stop.

  As ``torch.nn.functional.interpolate(x[start:stop + 1], out_size,
  mode='linear', align_corners=False)``: output cell o samples the crop at
  (o + 0.5) * crop / out_size - 0.5, clamped to the crop's first and last
  cells.
  """
  length = (stop - start + 1).astype(jnp.float32)
  source = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * (
      length / out_size) - 0.5
  source = jnp.maximum(source, 0.0)
  lower = jnp.floor(source)
  frac = source - lower
  lower_index = start + lower.astype(jnp.int32)
  upper_index = jnp.minimum(lower_index + 1, stop)
  cells = jnp.arange(size)
  return ((cells[None, :] == lower_index[:, None]) * (1 - frac)[:, None] +
          (cells[None, :] == upper_index[:, None]) * frac[:, None])


def crop_and_resize(attention_map: jax.Array, box: jax.Array,
                    out_size: tuple[int, int]) -> jax.Array:
  """One (h, w) map's box, bilinearly resized to `out_size`.

  Linear in the map (differentiable with respect to it; the box is a
  constant). Equals PyTorch's ``F.interpolate(map[top:bottom + 1,
  left:right + 1][None, None], out_size, mode='bilinear',
  align_corners=False)``.

  Args:
    attention_map: (h, w) float.
    box: int (4,) (top, left, bottom, right), inclusive.
    out_size: (height, width) of the result.

  Returns:
    (height, width) in the map's dtype (at least float32).
  """
  height, width = attention_map.shape
  rows = _interpolation_matrix(box[0], box[2], height, out_size[0])
  cols = _interpolation_matrix(box[1], box[3], width, out_size[1])
  wide = jnp.promote_types(attention_map.dtype, jnp.float32)
  return rows.astype(wide) @ attention_map.astype(wide) @ cols.astype(wide).T


def consistency_crops(maps: jax.Array, threshold: float) -> jax.Array:
  """Every map thresholded, cropped to its attended box, resized to (h, w).

  Args:
    maps: (B, h, w) normalised Grad-CAM maps.
    threshold: t; entries below it are set to 0 and the box holds the
      entries >= t.

  Returns:
    (B, h, w) crops (the common size is the maps' own size).
  """
  size = maps.shape[1:]

  def one(attention_map):
    box = attended_box(attention_map, threshold)
    kept = jnp.where(attention_map >= threshold, attention_map, 0.0)
    return crop_and_resize(kept, box, size)

  return jax.vmap(one)(maps)


def attention_consistency_loss(maps: jax.Array, labels: jax.Array,
                               threshold: float,
                               axis_name: Optional[str] = None
                               ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean L2 distance between the attended crops of every positive pair.

  Args:
    maps: (B, h, w) this device's normalised Grad-CAM maps.
    labels: (B,) int identities.
    threshold: t in [0, 1].
    axis_name: the mapped device axis, or None.

  Returns:
    the loss (float32 scalar; its mean over devices is the mean over the
    global batch's ordered positive pairs of ||crop_i - crop_j||_2, 0 when
    there is none) and metrics ``attended_area`` (mean share of the map
    inside the attended box).

  Raises:
    ValueError: for a threshold outside [0, 1] or mismatched shapes.
  """
  if not 0 <= threshold <= 1:
    raise ValueError(f'config.loss.terms.consistency.threshold must be in '
                     f'[0, 1], got {threshold}')
  if maps.ndim != 3 or labels.shape != maps.shape[:1]:
    raise ValueError(f'maps must be (B, h, w) and labels (B,), got '
                     f'{maps.shape} and {labels.shape}')
  crops = consistency_crops(maps, threshold)
  positive, _, num_devices = global_pairs(labels, axis_name)
  others = _gather(crops, axis_name)
  squared = jnp.sum(jnp.square(crops[:, None] - others[None, :]),
                    axis=(2, 3))
  distances = jnp.sqrt(jnp.maximum(squared, _MIN_SQUARED_DISTANCE))
  boxes = jax.vmap(lambda m: attended_box(m, threshold))(maps)
  area = ((boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
          ) / np.prod(maps.shape[1:])
  return (_share_of_mean(distances, positive, num_devices, axis_name),
          {'attended_area': jnp.mean(area)})
