"""Exact nearest gallery descriptors by blocks and partial selection.

The gallery (memory-mapped by `gallery_index`, or in memory) is read in
blocks of `BLOCK_ROWS` descriptors; each block's scores against a batch of
queries come from one float32 matrix product (numpy's BLAS, on the host,
where the memory-mapped gallery lives) and one pass adding |g|^2 (read
from the index's stored norms when given, else computed from the block). Only
scores that can still enter a query's top k are kept: below its k-th best
so far, or, before it has k, below the k-th smallest of a sample of the
block (a partial selection, `np.partition`); those few are sorted and
merged with the best so far. Nothing of size queries x gallery is held:
memory is one block and one (queries x block) score matrix.

Equal scores are ordered by the lower gallery position (the order of the
sorted gallery files), as a stable sort of the whole row would order them.
"""

from typing import Optional, Sequence

import numpy as np

# Gallery descriptors per block: 16,384 x 2,048 float32 is 128 MiB (SA's
# 12,288 values: 768 MiB), and with 1,000 queries a 64 MiB distance block.
BLOCK_ROWS = 16384
# Queries ranked together against each gallery block (one matrix product).
QUERY_BATCH = 1000
# A query's first threshold is its k-th smallest score among the first
# SAMPLE_COLUMNS x k of the block: a partial selection over a sample, which
# bounds how many of the block's scores are sorted (about SAMPLE_COLUMNS x k
# of the whole first block, then few: only scores below the k-th best).
SAMPLE_COLUMNS = 64


def _limits(scores, best_kth, k):
  """Per query, the largest score that can still enter its top k.

  A query with k finite scores kept so far takes only strictly smaller ones
  (a later block has higher positions, which lose ties); one without takes
  at most the k-th smallest score among the block's first
  `SAMPLE_COLUMNS` x k columns (an upper bound of the block's k-th
  smallest: a partial selection over a sample, not the whole block).
  """
  limits = np.nextafter(best_kth, np.float32(-np.inf))
  open_rows = ~np.isfinite(best_kth)
  if open_rows.any():
    sample = scores[open_rows, :SAMPLE_COLUMNS * k]
    if sample.shape[1] >= k:
      limits[open_rows] = np.partition(sample, k - 1, axis=1)[:, k - 1]
    else:
      limits[open_rows] = np.inf
  return limits


def _merge(best_scores, best_positions, scores, start, limits, k):
  """Each query's k smallest (score, position) of its kept ones and the
  block's scores up to its limit (`_limits`)."""
  count = len(best_scores)
  rows, columns = np.nonzero(scores <= limits[:, None])
  all_rows = np.concatenate([np.repeat(np.arange(count), k), rows])
  all_scores = np.concatenate([best_scores.ravel(), scores[rows, columns]])
  all_positions = np.concatenate([best_positions.ravel(), columns + start])
  order = np.lexsort((all_positions, all_scores, all_rows))
  sorted_rows = all_rows[order]
  first = np.searchsorted(sorted_rows, np.arange(count))
  keep = order[np.arange(len(order)) - first[sorted_rows] < k]
  return (all_scores[keep].reshape(count, k),
          all_positions[keep].reshape(count, k))


def _gallery_block(gallery, rows, start, stop):
  """float32 rows of `gallery` (descriptors or norms) at positions
  [start, stop)."""
  wanted = rows[start:stop]
  if len(wanted) and wanted[-1] - wanted[0] == len(wanted) - 1 and (
      np.all(np.diff(wanted) == 1)):
    block = gallery[wanted[0]:wanted[-1] + 1]  # a view of the file: no copy
  else:
    block = gallery[np.asarray(wanted)]
  return np.asarray(block, np.float32)


def nearest(queries: np.ndarray, gallery: np.ndarray, k: int, *,
            rows: Optional[np.ndarray] = None,
            norms: Optional[np.ndarray] = None,
            exclude: Sequence[Sequence[int]] = (),
            block_rows: int = BLOCK_ROWS,
            query_batch: int = QUERY_BATCH) -> tuple[np.ndarray, np.ndarray]:
  """Each query's k nearest gallery descriptors, exactly.

  Distances are Euclidean, sqrt(max(|q|^2 + |g|^2 - 2 q.g, 0)) in float32,
  as `evaluation.pairwise_distances` computes them; the ranking is by
  |g|^2 - 2 q.g (float32), ties by the lower position. Scores must not be
  NaN.

  Args:
    queries: float32 (Q, W) descriptors (flattened).
    gallery: float32 (R, W) rows (a `numpy.memmap` or an array).
    k: neighbours per query.
    rows: int64 (G,): gallery position -> row of `gallery` (default all
      rows, in order); positions are what is returned and what breaks ties.
    norms: float32 (R,) squared L2 norm of each row of `gallery`
      (`gallery_index.GalleryIndex.norms`); None computes them per block.
    exclude: per query, gallery positions never returned (the query's own
      file); shorter than Q means none for the rest.
    block_rows: gallery positions per block.
    query_batch: queries per matrix product.

  Returns:
    (float32 (Q, k') distances ascending, int64 (Q, k') gallery positions),
    k' = min(k, G); a query with fewer than k' positions left after
    `exclude` gets inf and -1 in its last columns.

  Raises:
    ValueError: for k, block_rows or query_batch below 1, or descriptors of
      different widths, or `norms` not of length R.
  """
  if min(k, block_rows, query_batch) < 1:
    raise ValueError(f'k, block_rows and query_batch must be >= 1, got {k}, '
                     f'{block_rows}, {query_batch}')
  queries = np.asarray(queries, np.float32)
  if queries.ndim != 2 or gallery.ndim != 2 or (
      queries.shape[1] != gallery.shape[1]):
    raise ValueError(f'queries {queries.shape} and gallery {gallery.shape} '
                     'must be (Q, W) and (R, W)')
  if norms is not None and np.shape(norms) != (len(gallery),):
    raise ValueError(f'norms {np.shape(norms)} must be ({len(gallery)},): one '
                     'per gallery row')
  rows = (np.arange(len(gallery), dtype=np.int64) if rows is None
          else np.asarray(rows, np.int64))
  size = len(rows)
  k = min(k, size)
  distances = np.full((len(queries), k), np.inf, np.float32)
  positions = np.full((len(queries), k), -1, np.int64)
  if k == 0:
    return distances, positions
  pairs = [(q, p) for q, own in enumerate(exclude) for p in own]
  excluded_queries, excluded_positions = (
      np.array(pairs, np.int64).reshape(-1, 2).T)
  for q_start in range(0, len(queries), query_batch):
    batch = queries[q_start:q_start + query_batch]
    # Ranked by |g|^2 - 2 q.g: the squared distance less the query's own
    # |q|^2 (the same for all its matches), one pass after the product.
    scaled = -2 * batch
    # Padding sorts after every real entry: inf score, largest position.
    best_scores = np.full((len(batch), k), np.inf, np.float32)
    best_positions = np.full((len(batch), k), np.iinfo(np.int64).max)
    for start in range(0, size, block_rows):
      block = _gallery_block(gallery, rows, start, start + block_rows)
      scores = scaled @ block.T
      scores += (np.einsum('ij,ij->i', block, block) if norms is None else
                 _gallery_block(norms, rows, start, start + block_rows)
                 )[None, :]
      inside = ((excluded_queries >= q_start) &
                (excluded_queries < q_start + len(batch)) &
                (excluded_positions >= start) &
                (excluded_positions < start + len(block)))
      scores[excluded_queries[inside] - q_start,
             excluded_positions[inside] - start] = np.inf
      limits = _limits(scores, best_scores[:, -1], k)
      best_scores, best_positions = _merge(best_scores, best_positions,
                                           scores, start, limits, k)
    query_norms = np.einsum('ij,ij->i', batch, batch)
    found = np.isfinite(best_scores)
    distances[q_start:q_start + len(batch)] = np.where(
        found, np.sqrt(np.maximum(query_norms[:, None] + best_scores, 0)),
        np.inf)
    positions[q_start:q_start + len(batch)] = np.where(found, best_positions,
                                                       -1)
  return distances, positions
