"""Pairwise descriptor distances in JAX, computed in row blocks in float32."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sa_reid_jax.evaluation import row_access

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
  b = _prepare_gallery(device_descriptors(b), metric)
  rows = min(block_size, num_a)
  pending = None
  for start in range(0, num_a, rows):
    block = jnp.asarray(a[start:start + rows], dtype=jnp.float32)
    if len(block) < rows:
      block = jnp.pad(block, ((0, rows - len(block)), (0, 0)))
    result = _distance_block(*_prepare_rows(block, metric), *b, metric=metric)
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
  if len(shape) >= 2 and shape[0] == 0:
    return x.reshape(0, int(np.prod(shape[1:])))
  if len(shape) < 2:
    raise ValueError(f'{name} must be (N, D) or (N, P, D) descriptors, got '
                     f'shape {shape}')
  return x.reshape(shape[0], -1)


def _store(out, start, result):
  result = np.asarray(result)
  out[start:start + len(result)] = result[:len(out) - start]


def _prepare_gallery(b, metric):
  """(b, |b|^2) for Euclidean; (b / |b|, unused) for cosine.

  Euclidean keeps `b` itself (no device copy: a jitted function's outputs
  are new buffers, and b can be most of the memory).
  """
  squared_norms = _squared_norms(b)
  if metric == 'cosine':
    return _unit_rows(b, squared_norms), squared_norms
  return b, squared_norms


@jax.jit
def _squared_norms(b):
  return jnp.sum(b * b, axis=1)


@jax.jit
def _unit_rows(b, squared_norms):
  return b * jax.lax.rsqrt(jnp.maximum(squared_norms, 1e-24))[:, None]


def device_descriptors(x) -> jax.Array:
  """float32 (N, D) descriptors on the default device, shared where possible.

  On the CPU, `jax.device_put` shares (does not copy) a C-contiguous
  float32 numpy array whose data is 64-byte aligned; any other input is
  copied once into such an array first. Evaluating MSMT17 at 12,288-d, the
  gallery's descriptors are 4 GB: a second copy would double them.
  """
  if isinstance(x, jax.Array):
    return x.astype(jnp.float32)
  x = np.asarray(x)
  if not (x.dtype == np.float32 and x.flags.c_contiguous
          and x.ctypes.data % 64 == 0):
    x = aligned_copy(x)
  return jax.device_put(x)


def aligned_empty(shape, dtype=np.float32) -> np.ndarray:
  """An uninitialised C-contiguous numpy array with 64-byte-aligned data."""
  dtype = np.dtype(dtype)
  size = int(np.prod(shape)) * dtype.itemsize
  buffer = np.empty(size + 64, np.uint8)
  offset = -buffer.ctypes.data % 64
  return buffer[offset:offset + size].view(dtype).reshape(shape)


def aligned_copy(x) -> np.ndarray:
  """`x` as a 64-byte-aligned C-contiguous float32 numpy array (a copy)."""
  x = np.asarray(x)
  out = aligned_empty(x.shape, np.float32)
  out[...] = x
  return out


def _prepare_rows(a, metric):
  """(a, |a|^2) of a block of rows (a / |a| for cosine), for `_distance_block`.

  Computed apart from the distance kernel: computed inside it, XLA on the
  CPU copies the whole gallery operand for every block (measured: +1 GB
  per block against a 20,000 x 12,288 gallery).
  """
  squared_norms = _squared_norms(a)
  if metric == 'cosine':
    return _unit_rows(a, squared_norms), squared_norms
  return a, squared_norms


@functools.partial(jax.jit, static_argnames='metric')
def _distance_block(a, a_squared_norms, b, b_squared_norms, metric):
  """(rows, M) distances between prepared rows of a (`_prepare_rows`) and
  the prepared b (`_prepare_gallery`)."""
  products = jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)
  if metric == 'cosine':
    # The similarity of unit vectors can round to just above 1 (or below -1).
    return jnp.clip(1 - products, 0, 2)
  squared = a_squared_norms[:, None] + b_squared_norms[None, :] - 2 * products
  return jnp.sqrt(jnp.maximum(squared, 0))


# Below this many bytes, `DistanceRows` keeps the whole matrix on the host
# after its first pass, so later passes (metrics, verification, report) read
# it instead of recomputing it (Market-1501: 3,368 x 15,913 float32 =
# 214 MB); above it every pass recomputes its blocks on the device (MSMT17:
# 11,659 x 82,161 = 3.6 GiB, which a 24 GB host should not hold twice).
HOST_CACHE_BYTES = 1 << 30
# Entries per device block of `DistanceRows` (64 MB of float32): with the
# kernel's intermediates and the host copy a block costs a few times this.
BLOCK_ENTRIES = 1 << 24


class DistanceRows(row_access.LazyRows):
  """The (A, B) distance matrix of two descriptor sets, row blocks on demand.

  Read like a read-only float32 array by rows (`row_access.LazyRows`): the
  rows are computed on the device by `pairwise_distances`'s kernel, so the
  same entries come out whichever way they are read. The matrix is kept whole on the host only when it is at most
  `host_cache_bytes` (then computed once, on first access); otherwise only
  the last block computed is kept, and sequential slices (as `evaluate_rank`
  reads them) cost one device block per `block_rows` rows.

  Attributes:
    shape: (A, B).
    dtype: float32.
    metric: ``'euclidean'`` or ``'cosine'``.
  """

  def __init__(self, a, b, metric: str = 'euclidean',
               block_rows: int | None = None,
               host_cache_bytes: int = HOST_CACHE_BYTES):
    """Args: `pairwise_distances`'s (a, b, metric); rows per device block
    (default: 1024, fewer for galleries over `BLOCK_ENTRIES` / 1024); the
    host cache limit in bytes.

    Raises:
      ValueError: as `pairwise_distances` does.
    """
    if metric not in METRICS:
      raise ValueError(f'metric must be one of {METRICS}, got {metric!r}')
    if block_rows is not None and block_rows < 1:
      raise ValueError(f'block_rows must be >= 1, got {block_rows}')
    self._a = _flat_descriptors(a, 'a')
    b = _flat_descriptors(b, 'b')
    if self._a.shape[1] != b.shape[1]:
      raise ValueError(f'a and b descriptors differ in size: '
                       f'{self._a.shape[1]} vs {b.shape[1]} values')
    self.metric = metric
    self.shape = (self._a.shape[0], b.shape[0])
    self._b = _prepare_gallery(device_descriptors(b), metric)
    if block_rows is None:
      block_rows = min(1024, max(1, BLOCK_ENTRIES // max(1, self.shape[1])))
    self._block_rows = max(1, min(block_rows, self.shape[0]))
    self.block_rows = self._block_rows
    self._keep_whole = (4 * self.shape[0] * self.shape[1] <= host_cache_bytes)
    self._kept = None
    self._last = (0, np.empty((0, self.shape[1]), np.float32))

  def _compute(self, rows: np.ndarray) -> np.ndarray:
    """The given rows, one padded device block at a time."""
    out = np.empty((len(rows), self.shape[1]), np.float32)
    for first in range(0, len(rows), self._block_rows):
      chosen = rows[first:first + self._block_rows]
      contiguous = len(chosen) and chosen[-1] - chosen[0] == len(chosen) - 1
      block = jnp.asarray(
          self._a[chosen[0]:chosen[-1] + 1] if contiguous else self._a[chosen],
          dtype=jnp.float32)
      if len(chosen) < self._block_rows:
        # One compiled kernel for every block, the last one padded.
        block = jnp.pad(block, ((0, self._block_rows - len(chosen)), (0, 0)))
      result = _distance_block(*_prepare_rows(block, self.metric), *self._b,
                               metric=self.metric)
      out[first:first + len(chosen)] = np.asarray(result)[:len(chosen)]
    return out

  def _whole_matrix(self) -> np.ndarray:
    if self._kept is None:
      self._kept = self._compute(np.arange(self.shape[0]))
    return self._kept

  def _slice(self, start: int, stop: int) -> np.ndarray:
    if self._keep_whole:
      return self._whole_matrix()[start:stop]
    first, cached = self._last
    if first <= start and stop <= first + len(cached):
      return cached[start - first:stop - first]
    end = max(stop, min(start + self._block_rows, self.shape[0]))
    self._last = (start, self._compute(np.arange(start, end)))
    return self._last[1][:stop - start]

  def _take(self, rows: np.ndarray) -> np.ndarray:
    if self._keep_whole:
      return self._whole_matrix()[rows]
    return self._compute(rows)

  def _whole(self) -> np.ndarray:
    if self._keep_whole:
      return self._whole_matrix()
    return self._compute(np.arange(self.shape[0]))
