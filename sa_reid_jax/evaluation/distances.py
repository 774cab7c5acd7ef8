"""Pairwise descriptor distances in JAX, computed in row blocks in float32."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

METRICS = ('euclidean', 'cosine')


def pairwise_distances(a, b, metric: str = 'euclidean',
                       block_size: int = 1024) -> np.ndarray:
  """Distances between every descriptor of `a` and every descriptor of `b`.

  Euclidean: sqrt(max(|a|^2 + |b|^2 - 2 a.b, 0)). Cosine: 1 - a.b / (|a| |b|)
  clipped to [0, 2], a zero vector counting as orthogonal to everything.
  Both are non-negative by definition, and both come out non-negative:
  float32 rounding makes the unclipped forms slightly negative for
  (near-)identical descriptors (about -5e-7 for cosine, and a negative
  square before the square root for Euclidean), which `re_rank` rightly
  refuses. Part descriptors
  (N, P, D) are flattened to (N, P * D) first, so the Euclidean distance of
  per-part L2-normalised features is the paper's retrieval distance.

  `b` stays on the device whole; `a` goes through in blocks of `block_size`
  rows (the last one padded, so a single compiled kernel serves every block),
  and each block is copied to the host while the next one is computed.

  Args:
    a: (N, ...) descriptors, numpy or JAX.
    b: (M, ...) descriptors with the same trailing size as a.
    metric: ``'euclidean'`` or ``'cosine'``.
    block_size: rows of `a` per device computation.

  Returns:
    (N, M) float32 numpy array, every entry >= 0 (cosine also <= 2).

  Raises:
    ValueError: for an unknown metric, a non-positive block_size, or
      descriptors that are not at least 2-D or whose sizes differ.
  """
  if metric not in METRICS:
    raise ValueError(f'metric must be one of {METRICS}, got {metric!r}')
  if block_size < 1:
    raise ValueError(f'block_size must be >= 1, got {block_size}')
  a = _flat_descriptors(a, 'a')
  b = _flat_descriptors(b, 'b')
  if a.shape[1] != b.shape[1]:
    raise ValueError(f'a and b descriptors differ in size: {a.shape[1]} vs '
                     f'{b.shape[1]} values')
  num_a = a.shape[0]
  out = np.empty((num_a, b.shape[0]), dtype=np.float32)
  if num_a == 0 or b.shape[0] == 0:
    return out
  b = _prepare_gallery(jnp.asarray(b, dtype=jnp.float32), metric)
  rows = min(block_size, num_a)
  pending = None
  for start in range(0, num_a, rows):
    block = jnp.asarray(a[start:start + rows], dtype=jnp.float32)
    if len(block) < rows:
      block = jnp.pad(block, ((0, rows - len(block)), (0, 0)))
    result = _distance_block(block, *b, metric=metric)
    if pending is not None:
      _store(out, *pending)
    pending = (start, result)
  _store(out, *pending)
  return out


def _flat_descriptors(x, name):
  """(N, ...) array -> (N, prod(...)), without copying numpy input."""
  if not hasattr(x, 'reshape'):
    x = np.asarray(x)
  shape = x.shape
  if len(shape) < 2:
    raise ValueError(f'{name} must be (N, D) or (N, P, D) descriptors, got '
                     f'shape {shape}')
  return x.reshape(shape[0], -1)


def _store(out, start, result):
  result = np.asarray(result)
  out[start:start + len(result)] = result[:len(out) - start]


@functools.partial(jax.jit, static_argnames='metric')
def _prepare_gallery(b, metric):
  """(b, |b|^2) for Euclidean; (b / |b|, unused) for cosine."""
  squared_norms = jnp.sum(b * b, axis=1)
  if metric == 'cosine':
    return b * jax.lax.rsqrt(jnp.maximum(squared_norms, 1e-24))[:, None], (
        squared_norms)
  return b, squared_norms


@functools.partial(jax.jit, static_argnames='metric')
def _distance_block(a, b, b_squared_norms, metric):
  """(rows, M) distances between a block of a and the prepared b."""
  a_squared_norms = jnp.sum(a * a, axis=1)
  if metric == 'cosine':
    a = a * jax.lax.rsqrt(jnp.maximum(a_squared_norms, 1e-24))[:, None]
  products = jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)
  if metric == 'cosine':
    # The similarity of unit vectors can round to just above 1 (or below -1).
    return jnp.clip(1 - products, 0, 2)
  squared = a_squared_norms[:, None] + b_squared_norms[None, :] - 2 * products
  return jnp.sqrt(jnp.maximum(squared, 0))
