"""Re-ranking's joint distance matrix computed from descriptors on the device.

k-reciprocal re-ranking reads three things of the joint matrix
[[q_q, q_g], [q_g^T, g_g]] (N = Q + G rows): each row's maximum and first
neighbours, the distances of a few dozen pairs per row, and the query rows
q_g. `DescriptorJoint` gives the first two from the descriptors, block by
block on the device, so that neither g_g (MSMT17: 82,161^2 float32 =
25 GiB) nor the joint matrix is ever stored; `rerank.re_rank_descriptors`
takes q_g rows from a `distances.DistanceRows`.

Every distance is `distances.pairwise_distances`'s formula in float32. The
neighbour order is exactly `neighbours.nearest_neighbours`'s (T = squared
distance / row maximum squared, ties by lower index) for the distances
computed here: the device keeps each row's candidates by `lax.top_k` of the
distances, the host orders them by T, and a row whose last neighbour ties in
T with the farthest candidate is redone in full.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sa_reid_jax.evaluation import distances as distances_lib

# Rows of the joint matrix per device block of the neighbour pass: their
# (rows, N) distances are the largest array on the device (MSMT17: 256 x
# 93,820 float32 = 92 MB).
NEIGHBOUR_BLOCK_ROWS = 256
# Float32 values per operand of a device block of pair distances
# (pairs x descriptor size), 256 MB.
PAIR_BLOCK_VALUES = 1 << 26


class DescriptorJoint:
  """Row maxima, neighbours and pair distances of the joint matrix.

  Args:
    query: (Q, ...) query descriptors (numpy or JAX), flattened per image.
    gallery: (G, ...) gallery descriptors of the same size.
    metric: ``'euclidean'`` or ``'cosine'`` (`distances.METRICS`).

  Raises:
    ValueError: for an unknown metric, descriptors that are not at least
      2-D, no descriptors on one side, or sizes that differ.
  """

  def __init__(self, query, gallery, metric: str = 'euclidean'):
    if metric not in distances_lib.METRICS:
      raise ValueError(f'metric must be one of {distances_lib.METRICS}, '
                       f'got {metric!r}')
    query = distances_lib._flat_descriptors(query, 'query')  # pylint: disable=protected-access
    gallery = distances_lib._flat_descriptors(gallery, 'gallery')  # pylint: disable=protected-access
    for name, x in (('query', query), ('gallery', gallery)):
      if not len(x):
        raise ValueError(f'{name} is empty: no descriptors to re-rank')
    if query.shape[1] != gallery.shape[1]:
      raise ValueError(f'query and gallery descriptors differ in size: '
                       f'{query.shape[1]} vs {gallery.shape[1]} values')
    self.metric = metric
    self.num_query, self.num_gallery = len(query), len(gallery)
    # Host views (rows are gathered there for the device blocks) and the
    # device copies, shared with the host where possible
    # (`distances.device_descriptors`); never concatenated, which would copy
    # every descriptor once more.
    self._host = (np.asarray(query), np.asarray(gallery))
    self._prepared = tuple(
        distances_lib._prepare_gallery(  # pylint: disable=protected-access
            distances_lib.device_descriptors(x), metric) for x in self._host)

  @property
  def num_all(self) -> int:
    return self.num_query + self.num_gallery

  def _row_blocks(self, rows: np.ndarray, block_rows: int):
    """Yields (chosen rows, padded device block of their descriptors) over
    ascending joint rows (queries first, then gallery)."""
    query, gallery = self._host
    for first in range(0, len(rows), block_rows):
      chosen = rows[first:first + block_rows]
      split = np.searchsorted(chosen, self.num_query)
      block = np.zeros((block_rows, query.shape[1]), np.float32)
      block[:split] = query[chosen[:split]]
      block[split:len(chosen)] = gallery[chosen[split:] - self.num_query]
      yield chosen, jnp.asarray(block)

  def neighbours(self, num_neighbours: int) -> tuple[np.ndarray, np.ndarray]:
    """Row maxima of the squared joint matrix and each row's first neighbours.

    Args:
      num_neighbours: neighbours kept per row, 1..N.

    Returns:
      (row_max_sq, neighbours) as `neighbours.nearest_neighbours` returns
      them: float32 (N,), int32 (N, num_neighbours).

    Raises:
      ValueError: for descriptors that are not finite, or a row of the joint
        matrix that is all zeros (every descriptor identical).
    """
    num_all = self.num_all
    column_bits = max(1, (num_all - 1).bit_length())
    # A margin beyond the neighbours kept, so that a tie in T at the last
    # neighbour (which needs the full row) is rare.
    num_candidates = min(num_all, 2 * num_neighbours + 16)
    block_rows = min(NEIGHBOUR_BLOCK_ROWS, num_all)
    row_max_sq = np.empty(num_all, np.float32)
    neighbours = np.empty((num_all, num_neighbours), np.int32)
    unsure = []
    pending = None
    for chosen, block in self._row_blocks(np.arange(num_all), block_rows):
      result = _candidates(
          *distances_lib._prepare_rows(block, self.metric),  # pylint: disable=protected-access
          *self._prepared[0], *self._prepared[1], metric=self.metric,
          num_candidates=num_candidates)
      if pending is not None:
        unsure.append(self._keep(*pending, row_max_sq, neighbours,
                                 column_bits))
      pending = (chosen, result)
    unsure.append(self._keep(*pending, row_max_sq, neighbours, column_bits))
    unsure = np.concatenate(unsure)
    for chosen, block in self._row_blocks(unsure, block_rows):
      rows = np.asarray(_joint_distances(
          *distances_lib._prepare_rows(block, self.metric),  # pylint: disable=protected-access
          *self._prepared[0], *self._prepared[1],
          metric=self.metric))[:len(chosen)]
      t = (rows * rows) / row_max_sq[chosen, None]
      neighbours[chosen] = np.argsort(t, axis=1,
                                      kind='stable')[:, :num_neighbours]
    return row_max_sq, neighbours

  def _keep(self, chosen, result, row_max_sq, neighbours, column_bits):
    """Stores a block's maxima and neighbours; returns rows to redo in full."""
    row_max, values, columns = (np.asarray(r)[:len(chosen)] for r in result)
    if not np.isfinite(row_max).all():
      raise ValueError('the descriptors must be finite (no NaN or inf): a '
                       'distance came out as NaN or inf')
    max_sq = row_max * row_max
    if not max_sq.all():
      row = int(chosen[np.flatnonzero(max_sq == 0)[0]])
      raise ValueError(f'row {row} of the joint distance matrix (queries, '
                       'then gallery) is all zeros: T = 0 / 0')
    row_max_sq[chosen] = max_sq
    codes = ((values * values) / max_sq[:, None]).view(np.int32)
    keys = (codes.astype(np.int64) << column_bits) | columns
    keys.sort(axis=1)
    num_neighbours = neighbours.shape[1]
    neighbours[chosen] = keys[:, :num_neighbours] & ((1 << column_bits) - 1)
    if values.shape[1] == self.num_all:
      return np.empty(0, np.int64)
    # Entries beyond the candidates are at least as far as the farthest
    # candidate (the last of top_k's ascending distances), so their T is at
    # least its T; only a tie with it can change the neighbours.
    last = keys[:, num_neighbours - 1] >> column_bits
    return chosen[last >= codes[:, -1]]

  def gather(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """float32 joint-matrix entries (rows[n], cols[n]), indices 0..N-1."""
    rows = np.asarray(rows, np.int64)
    cols = np.asarray(cols, np.int64)
    out = np.empty(len(rows), np.float32)
    size = max(1, PAIR_BLOCK_VALUES // int(self._host[0].shape[1]))
    size = min(size, max(1, len(rows)))
    for start in range(0, len(rows), size):
      r, c = rows[start:start + size], cols[start:start + size]
      padding = (0, size - len(r))
      result = _pair_distances(*self._prepared[0], *self._prepared[1],
                               jnp.asarray(np.pad(r, padding)),
                               jnp.asarray(np.pad(c, padding)),
                               metric=self.metric)
      out[start:start + len(r)] = np.asarray(result)[:len(r)]
    return out


def _joint_distances(block, block_norms, query, query_norms, gallery,
                     gallery_norms, metric):
  """(rows, Q + G) distances of a prepared block of rows
  (`distances._prepare_rows`) to every joint row."""
  return jnp.concatenate([
      distances_lib._distance_block(block, block_norms, query, query_norms,  # pylint: disable=protected-access
                                    metric=metric),
      distances_lib._distance_block(block, block_norms, gallery,  # pylint: disable=protected-access
                                    gallery_norms, metric=metric)], axis=1)


@functools.partial(jax.jit, static_argnames=('metric', 'num_candidates'))
def _candidates(block, block_norms, query, query_norms, gallery,
                gallery_norms, metric, num_candidates):
  """Row maxima, and the num_candidates smallest distances with their
  columns, ascending (lower column first on ties), of a block of rows."""
  block_distances = _joint_distances(block, block_norms, query, query_norms,
                                     gallery, gallery_norms, metric)
  negated, columns = jax.lax.top_k(-block_distances, num_candidates)
  return block_distances.max(axis=1), -negated, columns


@functools.partial(jax.jit, static_argnames='metric')
def _pair_distances(query, query_norms, gallery, gallery_norms, rows, cols,
                    metric):
  """Distances of the joint pairs (rows[n], cols[n]) of the prepared
  descriptors, by `distances._distance_block`'s formula."""
  num_query = query.shape[0]

  def take(index):
    in_query = index < num_query
    from_query = jnp.minimum(index, num_query - 1)
    from_gallery = jnp.maximum(index - num_query, 0)
    vectors = jnp.where(in_query[:, None], query[from_query],
                        gallery[from_gallery])
    norms = jnp.where(in_query, query_norms[from_query],
                      gallery_norms[from_gallery])
    return vectors, norms

  (a, a_norms), (b, b_norms) = take(rows), take(cols)
  products = jnp.sum(a * b, axis=1)
  if metric == 'cosine':
    return jnp.clip(1 - products, 0, 2)
  squared = a_norms + b_norms - 2 * products
  return jnp.sqrt(jnp.maximum(squared, 0))
