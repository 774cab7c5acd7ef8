"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) with sparse neighbour sets.

Same result as the widely used distance-matrix implementation (the steps are
spelled out in the project's reference notes), without its dense N x N
argsort and N x N weight matrix V, N = num_query + num_gallery:

1. T, the joint squared distance matrix with each row divided by its maximum,
   is never stored. Row blocks of the inputs give each row's maximum and its
   first k (k1 + 1 or k2) neighbours: a sample of the row bounds its
   (k + 1)-th smallest distance, and only the entries below that bound (a few
   hundred per row) are sorted (`neighbours.py`).
2. The k-reciprocal sets and their expansions come from the neighbour lists
   only, vectorised over rows.
3. V is sparse: (row pointer, column, value) arrays with tens of entries per
   row, built from the few distances the sets refer to.
4. Jaccard distances of the queries use an inverted index (for each column j
   the gallery rows k with V[k, j] > 0), so only pairs that share a column
   are visited.

`re_rank` takes the three distance matrices; its peak memory is the inputs,
the (Q, G) output and a few hundred MB of blocks. `re_rank_descriptors`
takes the descriptors instead: step 1 runs block by block on the device
(`descriptor_joint`), step 3 computes just the pair distances it needs, and
step 4 produces the output rows when they are read (`ReRankedRows`), so no
N x N or (Q, G) matrix is ever stored.
"""

from typing import NamedTuple

import numpy as np

from sa_reid_jax.evaluation import neighbours as neighbours_lib
from sa_reid_jax.evaluation import row_access

# Rows per block when testing reciprocity and expansions (their (rows, k1, k1/2,
# k1) membership tensor is the largest array there).
SET_BLOCK_ROWS = 1024
# Upper bound on (query, gallery, shared column) triples visited per block of
# the Jaccard step.
JACCARD_BLOCK_ENTRIES = 1 << 23
# Upper bound on output entries per block of the Jaccard step.
OUTPUT_BLOCK_ENTRIES = 1 << 22


class _SparseRows(NamedTuple):
  """Row-compressed sparse matrix: row i is columns[row_starts[i]:row_starts[i
  + 1]] (ascending) with the matching values."""
  row_starts: np.ndarray
  columns: np.ndarray
  values: np.ndarray

  def row_ids(self) -> np.ndarray:
    return np.repeat(np.arange(len(self.row_starts) - 1),
                     np.diff(self.row_starts))


def re_rank(q_g_dist, q_q_dist, g_g_dist, k1: int = 20, k2: int = 6,
            lambda_value: float = 0.3) -> np.ndarray:
  """k-reciprocal re-ranking of query-gallery distances.

  Follows the distance-matrix formulation step by step: squared distances,
  each row of the joint matrix divided by its maximum (T); neighbour lists
  sorted by T with ties ordered by index; k-reciprocal sets expanded with
  round(k1 / 2)-reciprocal sets that overlap them by more than 2/3; Gaussian
  weights V over each expanded set; query expansion over the first k2
  neighbours (unless k2 == 1); Jaccard distance between V rows; and finally
  (1 - lambda_value) * Jaccard + lambda_value * T on the query-gallery block.

  Inputs are read block by block in float32 and never copied whole, so
  float32 inputs cost no extra memory. The joint matrix is taken row-wise:
  a query row is [q_q_dist[i], q_g_dist[i]] and a gallery row is
  [q_g_dist[:, j], g_g_dist[j]].

  Args:
    q_g_dist: (Q, G) non-negative query-gallery distances.
    q_q_dist: (Q, Q) query-query distances.
    g_g_dist: (G, G) gallery-gallery distances.
    k1: neighbourhood size of the k-reciprocal sets.
    k2: neighbours averaged by the query expansion (1 turns it off).
    lambda_value: weight of the original distance, in [0, 1].

  Returns:
    (Q, G) float32 re-ranked distances, every entry >= 0.

  Raises:
    ValueError: for shapes that disagree, negative or NaN distances, a row of
      the joint matrix that is all zeros, or k1, k2, lambda_value out of range.
  """
  q_g_dist, q_q_dist, g_g_dist = _check_inputs(q_g_dist, q_q_dist, g_g_dist,
                                               k1, k2, lambda_value)
  num_query, num_gallery = q_g_dist.shape

  def neighbours(num_neighbours):
    return neighbours_lib.nearest_neighbours(
        q_g_dist, q_q_dist, g_g_dist, num_neighbours,
        on_negative=_raise_negative)

  def gather(rows, cols):
    return _gather_distances(q_g_dist, q_q_dist, g_g_dist, rows, cols)

  row_max_sq, weights = _weights(neighbours, gather, num_query + num_gallery,
                                 k1, k2)
  blend = _Blend(weights, num_query, num_gallery, row_max_sq, lambda_value)
  out = np.empty((num_query, num_gallery), dtype=np.float32)
  blend.fill(out, 0, q_g_dist)
  return out


def re_rank_descriptors(query, gallery, metric: str = 'euclidean',
                        k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                        q_g_dist=None) -> 'ReRankedRows':
  """`re_rank` of the descriptors' distances, without any N x N matrix.

  The joint matrix's row maxima, neighbours and pair distances come from
  the descriptors, block by block on the device
  (`descriptor_joint.DescriptorJoint`); the re-ranked rows are computed when
  read. Memory: the descriptors, the sparse sets (tens of entries per row)
  and the blocks read, so MSMT17 (11,659 queries, 82,161 gallery images)
  re-ranks in a few GB, where `re_rank` needs its g_g (25 GiB).

  Equal to ``re_rank(q_g, q_q, g_g)`` of the same distances. The distances
  here are computed per block and per pair, in another summation order than
  `pairwise_distances`'s matrices: where they are exact (Euclidean on
  small-integer descriptors) the result is bit-equal; otherwise entries can
  be a unit in the last place apart, the result differs by about as much,
  except where two neighbours are within that of a tie: they can then be
  ordered the other way, which changes their k-reciprocal sets and moves
  some re-ranked distances by up to ~0.1 (seen with cosine distances of
  tie-heavy small-integer descriptors; either order is as exact as the
  other, the dense path on matrices computed in other blocks does the
  same).

  Args:
    query: (Q, ...) query descriptors.
    gallery: (G, ...) gallery descriptors.
    metric: ``'euclidean'`` or ``'cosine'``.
    k1, k2, lambda_value: as `re_rank`.
    q_g_dist: the query-gallery distances when already at hand (an array or
      a `distances.DistanceRows` of the same descriptors); by default a
      `DistanceRows` of `query` and `gallery`.

  Returns:
    a `ReRankedRows`, (Q, G) re-ranked distances read by rows.

  Raises:
    ValueError: for an unknown metric, descriptors of different sizes or
      not finite, every descriptor identical, or k1, k2, lambda_value out of
      range.
  """
  # Imported here: it needs JAX, which the dense path does not.
  from sa_reid_jax.evaluation import descriptor_joint  # pylint: disable=g-import-not-at-top
  from sa_reid_jax.evaluation import distances  # pylint: disable=g-import-not-at-top
  _check_settings(k1, k2, lambda_value)
  joint = descriptor_joint.DescriptorJoint(query, gallery, metric)
  if q_g_dist is None:
    q_g_dist = distances.DistanceRows(query, gallery, metric)
  if tuple(q_g_dist.shape) != (joint.num_query, joint.num_gallery):
    raise ValueError(f'q_g_dist must have shape ({joint.num_query}, '
                     f'{joint.num_gallery}), got {tuple(q_g_dist.shape)}')
  row_max_sq, weights = _weights(joint.neighbours, joint.gather,
                                 joint.num_all, k1, k2)
  return ReRankedRows(_Blend(weights, joint.num_query, joint.num_gallery,
                             row_max_sq, lambda_value), q_g_dist)


class ReRankedRows(row_access.LazyRows):
  """(Q, G) re-ranked distances computed when read, by rows
  (`row_access.LazyRows`); `metrics.evaluate_rank` reads them chunk by
  chunk, and nothing is kept between reads.

  Attributes:
    shape: (Q, G).
    dtype: float32.
  """

  def __init__(self, blend: '_Blend', q_g_dist):
    self._blend = blend
    self._q_g_dist = q_g_dist
    self.shape = (blend.num_query, blend.num_gallery)

  def _slice(self, start: int, stop: int) -> np.ndarray:
    out = np.empty((stop - start, self.shape[1]), np.float32)
    self._blend.fill(out, start, self._q_g_dist)
    return out

  def _take(self, rows: np.ndarray) -> np.ndarray:
    out = np.empty((len(rows), self.shape[1]), np.float32)
    for n, row in enumerate(rows):
      out[n] = self._slice(int(row), int(row) + 1)[0]
    return out


def _weights(neighbours, gather, num_all, k1, k2):
  """Steps 1-3: the row maxima of T's squares and the sparse weights V.

  Args:
    neighbours: num_neighbours -> (row_max_sq, neighbour lists), as
      `neighbours.nearest_neighbours`.
    gather: (rows, cols) -> float32 joint-matrix entries.
    num_all: N = Q + G.
    k1, k2: as `re_rank`.
  """
  num_neighbours = min(max(k1 + 1, k2), num_all)
  row_max_sq, lists = neighbours(num_neighbours)
  rows, cols = _expanded_reciprocal_sets(lists, k1)
  weights = _set_weights(gather(rows, cols), row_max_sq, rows, cols)
  if k2 != 1:
    weights = _query_expansion(weights, lists[:, :min(k2, num_all)])
  return row_max_sq, weights


def _check_inputs(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value):
  """Validates the arguments; returns the three arrays (no copies)."""
  arrays = []
  for name, value in (('q_g_dist', q_g_dist), ('q_q_dist', q_q_dist),
                      ('g_g_dist', g_g_dist)):
    value = np.asarray(value)
    if value.ndim != 2:
      raise ValueError(f'{name} must be 2-D, got shape {value.shape}')
    if not (np.issubdtype(value.dtype, np.floating)
            or np.issubdtype(value.dtype, np.integer)):
      raise ValueError(f'{name} must hold real numbers, got {value.dtype}')
    arrays.append(value)
  q_g_dist, q_q_dist, g_g_dist = arrays
  num_query, num_gallery = q_g_dist.shape
  if num_query == 0 or num_gallery == 0:
    raise ValueError(f'q_g_dist is empty: shape {q_g_dist.shape}')
  if q_q_dist.shape != (num_query, num_query):
    raise ValueError(f'q_q_dist must have shape ({num_query}, {num_query}) to '
                     f'match q_g_dist {q_g_dist.shape}, got {q_q_dist.shape}')
  if g_g_dist.shape != (num_gallery, num_gallery):
    raise ValueError(f'g_g_dist must have shape ({num_gallery}, {num_gallery}) '
                     f'to match q_g_dist {q_g_dist.shape}, got '
                     f'{g_g_dist.shape}')
  _check_settings(k1, k2, lambda_value)
  return q_g_dist, q_q_dist, g_g_dist


def _check_settings(k1, k2, lambda_value):
  if k1 < 1:
    raise ValueError(f'k1 must be >= 1, got {k1}')
  if k2 < 1:
    raise ValueError(f'k2 must be >= 1, got {k2}')
  if not 0 <= lambda_value <= 1:
    raise ValueError(f'lambda_value must be in [0, 1], got {lambda_value}')


def _raise_negative(q_g_dist, q_q_dist, g_g_dist):
  """Raises the error for negative distances, naming each matrix at fault.

  Only reached on bad input, so the full scans of the matrices cost nothing
  in normal use.

  Raises:
    ValueError: e.g. ``distances must be non-negative: q_q_dist has 3
      negative entries, the most negative -0.5 at [2, 7]``.
  """
  faults = []
  for name, value in (('q_g_dist', q_g_dist), ('q_q_dist', q_q_dist),
                      ('g_g_dist', g_g_dist)):
    value = np.asarray(value)
    negative = int(np.count_nonzero(value < 0))
    if negative:
      where = np.unravel_index(int(np.argmin(value)), value.shape)
      faults.append(f'{name} has {negative} negative '
                    f'{"entry" if negative == 1 else "entries"}, the most '
                    f'negative {value[where]:.3g} at '
                    f'[{where[0]}, {where[1]}]')
  raise ValueError('distances must be non-negative: ' + '; '.join(faults))


def _reciprocal_mask(lists):
  """mask[i, a] = (i is in lists[lists[i, a]]), for (N, k) neighbour lists."""
  mask = np.empty(lists.shape, dtype=bool)
  for start in range(0, len(lists), SET_BLOCK_ROWS):
    block = lists[start:start + SET_BLOCK_ROWS]
    own = np.arange(start, start + len(block))[:, None, None]
    mask[start:start + len(block)] = (lists[block] == own).any(axis=-1)
  return mask


def _expanded_reciprocal_sets(neighbours, k1):
  """Members of every row's expanded k-reciprocal set E(i).

  Returns:
    (rows, cols): int64 pairs (i, j) with j in E(i), sorted by row then
    column, without repeats.
  """
  num_all = len(neighbours)
  forward = neighbours[:, :min(k1 + 1, num_all)]
  half = neighbours[:, :min(int(np.around(k1 / 2.)) + 1, num_all)]
  reciprocal = _reciprocal_mask(forward)
  half_reciprocal = _reciprocal_mask(half)
  half_sizes = half_reciprocal.sum(axis=1)
  keys = []
  for start in range(0, num_all, SET_BLOCK_ROWS):
    stop = min(start + SET_BLOCK_ROWS, num_all)
    block_forward = forward[start:stop]
    block_reciprocal = reciprocal[start:stop]
    # Every (i, c) with c in K(i): c's half-k reciprocal set, and how much of
    # it lies in K(i) (the forward list with non-members masked to -1).
    pair_rows, pair_slots = np.nonzero(block_reciprocal)
    candidates = block_forward[pair_rows, pair_slots]
    candidate_sets = half[candidates]
    candidate_masks = half_reciprocal[candidates]
    own_sets = np.where(block_reciprocal, block_forward, -1)[pair_rows]
    in_own_set = (candidate_sets[:, :, None] == own_sets[:, None, :]).any(
        axis=-1)
    overlap = np.count_nonzero(in_own_set & candidate_masks, axis=1)
    accepted = overlap > 2. / 3 * half_sizes[candidates]
    pair_rows = pair_rows.astype(np.int64) + start
    keys.append(pair_rows * num_all + candidates)
    added_masks = candidate_masks[accepted]
    member_rows = np.broadcast_to(pair_rows[accepted][:, None],
                                  added_masks.shape)[added_masks]
    keys.append(member_rows * num_all + candidate_sets[accepted][added_masks])
  keys = np.concatenate(keys)
  keys.sort()
  keys = keys[np.r_[True, keys[1:] != keys[:-1]]]
  return keys // num_all, keys % num_all


def _gather_distances(q_g_dist, q_q_dist, g_g_dist, rows, cols):
  """float32 entries (rows[n], cols[n]) of the joint distance matrix."""
  num_query = q_g_dist.shape[0]
  out = np.empty(len(rows), dtype=np.float32)
  query_row, query_col = rows < num_query, cols < num_query
  for where, source, r, c in (
      (query_row & query_col, q_q_dist, rows, cols),
      (query_row & ~query_col, q_g_dist, rows, cols - num_query),
      (~query_row & query_col, q_g_dist, cols, rows - num_query),
      (~query_row & ~query_col, g_g_dist, rows - num_query, cols - num_query)):
    out[where] = source[r[where], c[where]]
  return out


def _set_weights(distances, row_max_sq, rows, cols):
  """V: exp(-T) over each expanded set, normalised to sum to one per row.

  `distances` are the joint-matrix entries (rows[n], cols[n]).
  """
  weights = np.exp(-((distances * distances) / row_max_sq[rows]))
  num_all = len(row_max_sq)
  totals = np.bincount(rows, weights=weights, minlength=num_all)
  values = (weights / totals[rows]).astype(np.float32)
  row_starts = np.zeros(num_all + 1, dtype=np.int64)
  np.cumsum(np.bincount(rows, minlength=num_all), out=row_starts[1:])
  return _SparseRows(row_starts, cols, values)


def _query_expansion(weights, lists):
  """Rows of V replaced by the mean of the rows of their first neighbours."""
  num_all, num_lists = lists.shape
  row_sizes = np.diff(weights.row_starts)
  keys, values = [], []
  for start in range(0, num_all, SET_BLOCK_ROWS):
    stop = min(start + SET_BLOCK_ROWS, num_all)
    sources = lists[start:stop].ravel()
    counts = row_sizes[sources]
    entries = _expand_ranges(weights.row_starts[sources], counts)
    targets = np.repeat(np.arange(start, stop, dtype=np.int64), num_lists)
    block_keys = (np.repeat(targets, counts) * num_all
                  + weights.columns[entries])
    # A stable sort sums each column in neighbour order, like a dense mean.
    order = np.argsort(block_keys, kind='stable')
    block_keys = block_keys[order]
    firsts = np.flatnonzero(np.r_[True, block_keys[1:] != block_keys[:-1]])
    keys.append(block_keys[firsts])
    values.append(np.add.reduceat(weights.values[entries][order], firsts)
                  / np.float32(num_lists))
  keys = np.concatenate(keys)
  rows = keys // num_all
  row_starts = np.zeros(num_all + 1, dtype=np.int64)
  np.cumsum(np.bincount(rows, minlength=num_all), out=row_starts[1:])
  return _SparseRows(row_starts, keys % num_all, np.concatenate(values))


def _expand_ranges(starts, counts):
  """Concatenation of arange(s, s + c) over (s, c) pairs."""
  offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts,
                                                counts)
  return np.repeat(starts, counts) + offsets


class _Blend:
  """Step 4: (1 - lambda) * Jaccard(V[query], V[gallery]) + lambda * T.

  Most query-gallery pairs share no column of V: their Jaccard distance is 1.
  Each output block is filled with that value first, then the pairs that do
  share columns are overwritten.
  """

  def __init__(self, weights, num_query, num_gallery, row_max_sq,
               lambda_value):
    self.num_query, self.num_gallery = num_query, num_gallery
    num_all = num_query + num_gallery
    self._weights = weights
    self._row_max_sq = row_max_sq
    # Inverted index over the gallery rows of V: column j -> (row, value).
    row_ids = weights.row_ids()
    gallery = slice(weights.row_starts[num_query], None)
    gallery_cols = weights.columns[gallery]
    order = np.argsort(gallery_cols, kind='stable')
    self._index_rows = (row_ids[gallery] - num_query)[order]
    self._index_values = weights.values[gallery][order]
    self._index_sizes = np.bincount(gallery_cols, minlength=num_all)
    self._index_starts = np.cumsum(self._index_sizes) - self._index_sizes
    # Work per query row: the index entries its columns lead to.
    self._query_rows = row_ids[:weights.row_starts[num_query]]
    self._work = np.bincount(
        self._query_rows, minlength=num_query,
        weights=self._index_sizes[weights.columns[:len(self._query_rows)]])
    self._original_weight = np.float32(lambda_value)
    self._jaccard_weight = np.float32(1 - lambda_value)

  def fill(self, out, first_row, q_g_dist):
    """Writes query rows first_row.. (as many as `out` has) into `out`.

    `q_g_dist` is indexed by absolute query rows ([start:stop] slices).
    """
    max_rows = max(1, OUTPUT_BLOCK_ENTRIES // self.num_gallery)
    start, end = first_row, first_row + len(out)
    while start < end:
      stop = min(end, _block_end(self._work, start, JACCARD_BLOCK_ENTRIES,
                                 max_rows))
      self._fill_block(out[start - first_row:stop - first_row], start, stop,
                       np.asarray(q_g_dist[start:stop], dtype=np.float32))
      start = stop

  def _fill_block(self, block, start, stop, original_rows):
    weights, num_gallery = self._weights, self.num_gallery
    row_max_sq = self._row_max_sq
    # lambda * T + (1 - lambda) * Jaccard with Jaccard = 1, in the float32
    # operations of the dense formula.
    np.square(original_rows, out=block)
    block /= row_max_sq[start:stop, None]
    block *= self._original_weight
    block += np.float32(1) * self._jaccard_weight

    entries = slice(weights.row_starts[start], weights.row_starts[stop])
    cols = weights.columns[entries]
    counts = self._index_sizes[cols]
    if not counts.any():
      return
    visited = _expand_ranges(self._index_starts[cols], counts)
    block_rows = self._query_rows[entries] - start
    targets = (np.repeat(block_rows, counts) * num_gallery
               + self._index_rows[visited])
    minima = np.minimum(np.repeat(weights.values[entries], counts),
                        self._index_values[visited])
    # Sum per (query, gallery) pair in float32, in ascending column order.
    order = np.argsort(targets, kind='stable')
    targets = targets[order]
    firsts = np.flatnonzero(np.r_[True, targets[1:] != targets[:-1]])
    shared = np.add.reduceat(minima[order], firsts)
    # Each row of V sums to one, so at most one is shared; float32 sums of
    # a row can round a unit in the last place above it, which would make
    # the Jaccard distance (and the re-ranked distance of an image to its
    # own copy) slightly negative.
    np.minimum(shared, 1, out=shared)
    targets = targets[firsts]
    jaccard = 1 - shared / (2 - shared)
    rows, cols = np.divmod(targets, num_gallery)
    original = original_rows[rows, cols]
    original = (original * original) / row_max_sq[start + rows]
    block.reshape(-1)[targets] = (jaccard * self._jaccard_weight
                                  + original * self._original_weight)


def _block_end(work, start, budget, max_rows):
  """End of the block from `start` whose summed `work` stays within budget."""
  spent = np.cumsum(work[start:start + max_rows])
  return start + max(1, int(np.searchsorted(spent, budget, side='right')))
