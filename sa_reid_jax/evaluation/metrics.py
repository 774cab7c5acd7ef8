"""Market-1501 ranking metrics (CMC, mAP, mINP) from a distance matrix.

The protocol, per query: gallery images of the same person seen by the same
camera are removed, junk images (person id -1) are removed, distractors
(person id 0) stay as ordinary non-matching images, and a query with no true
match left is skipped. The gallery is ranked by ascending distance; equal
distances are ordered by gallery index (a stable sort).

Only the positions of the true matches in each ranking are needed. A true
match's position is one plus the number of remaining gallery images that come
before it, and every such image has a distance no larger than the query's
farthest true match. So instead of sorting whole rows, each chunk of queries
keeps just the images up to that threshold, packs (query, distance, gallery
index) into one int64 sort key per image and sorts those keys once. When most
images are kept (a model that ranks its true matches deep), sorting the rows
themselves is cheaper, and the true matches are located by binary search.
"""

import dataclasses

import numpy as np

# market_layout is plain Python (no TensorFlow), so importing it is cheap.
from sa_reid_jax.datasets.market_layout import JUNK_PERSON_ID
from sa_reid_jax.datasets.image_records import UNKNOWN_CAMERA

# Distance-matrix entries per chunk of queries: bounds the working memory
# (about 1 + 4 bytes per entry plus 8 bytes per kept image) and keeps it
# cache-friendly.
DEFAULT_CHUNK_ENTRIES = 1 << 22
# Above 1/DENSE_KEPT_RATIO of a chunk's entries kept (a weak model ranks its
# true matches deep), sorting whole rows is cheaper than packing keys.
DENSE_KEPT_RATIO = 4


@dataclasses.dataclass(frozen=True)
class RankResult:
  """Ranking metrics over the valid queries.

  Attributes:
    cmc: float64 (min(max_rank, num_gallery),); cmc[k - 1] is the share of
      valid queries with a true match among their first k results.
    mAP: mean average precision.
    mINP: mean inverse negative penalty, mean of R / (position of the last
      true match) with R the query's number of true matches.
    num_valid_queries: queries with at least one true match left.
    query_index: int64 (num_valid_queries,), ascending: the valid queries'
      rows of distmat. The per-query arrays below follow this order.
    average_precision: float64 (num_valid_queries,), each query's AP (mAP is
      their mean).
    first_match_rank: int64 (num_valid_queries,), 1-based position of each
      query's first true match (the query hits at rank k when it is <= k).
    inverse_negative_penalty: float64 (num_valid_queries,), each query's INP
      (mINP is their mean).
  """
  cmc: np.ndarray
  mAP: float  # pylint: disable=invalid-name
  mINP: float  # pylint: disable=invalid-name
  num_valid_queries: int
  query_index: np.ndarray
  average_precision: np.ndarray
  first_match_rank: np.ndarray
  inverse_negative_penalty: np.ndarray


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids,
                  max_rank: int = 50,
                  chunk_size: int | None = None) -> RankResult:
  """Computes CMC, mAP and mINP with the Market-1501 protocol.

  For each query, gallery images with the query's person id AND camera are
  removed, as are junk images (person id -1); distractors (person id 0) count
  as negatives. The remaining gallery is ranked by ascending distance with
  ties broken by gallery index (stable sort), and a query without a true
  match left is skipped. With the true matches at 1-based positions
  p_1 < ... < p_R: AP = (1/R) sum_m m / p_m, INP = R / p_R, and the query hits
  at rank k when p_1 <= k.

  Args:
    distmat: (num_query, num_gallery) real distances (numpy or JAX array,
      or rows computed when read: `distances.DistanceRows`,
      `rerank.ReRankedRows`, read one chunk of rows at a time and never
      whole); float32 takes the fastest path. NaN ranks after every number (as
      in np.argsort); NaN between a query and a true match is an error.
    q_pids: (num_query,) integer person ids of the queries.
    g_pids: (num_gallery,) integer person ids of the gallery.
    q_camids: (num_query,) integer camera ids of the queries.
    g_camids: (num_gallery,) integer camera ids of the gallery.
    max_rank: length of the CMC curve (capped at the gallery size).
    chunk_size: queries processed together; None picks a size that keeps the
      working memory around a hundred MB whatever the gallery size.

  Returns:
    a `RankResult`.

  Raises:
    ValueError: for shapes that disagree, non-real distances, a NaN distance
      to a true match, a non-positive max_rank or chunk_size, or when no
      query is valid.
  """
  if not hasattr(distmat, 'blocks'):  # rows computed when read stay lazy
    distmat = np.asarray(distmat)
  q_pids, g_pids, q_camids, g_camids = _check_inputs(
      distmat, q_pids, g_pids, q_camids, g_camids, max_rank, chunk_size)
  num_query, num_gallery = distmat.shape
  column_bits = max(1, (num_gallery - 1).bit_length())
  chunk_size = _chunk_rows(num_query, num_gallery, column_bits, chunk_size)
  # float16 widens exactly to float32; integers to float64 (exact below 2**53).
  work_dtype = np.float32 if distmat.dtype.itemsize <= 4 and (
      distmat.dtype.kind == 'f') else np.float64

  match_q, match_g, removed_q, removed_g = _same_person_pairs(
      q_pids, g_pids, q_camids, g_camids)
  not_junk = g_pids != JUNK_PERSON_ID

  query_rows, first_positions, average_precisions, inverse_penalties = (
      [], [], [], [])
  for start in range(0, num_query, chunk_size):
    stop = min(start + chunk_size, num_query)
    lo, hi = np.searchsorted(match_q, [start, stop])
    if lo == hi:
      continue
    rlo, rhi = np.searchsorted(removed_q, [start, stop])
    chunk = np.ascontiguousarray(distmat[start:stop], dtype=work_dtype)
    positions, rows = _true_match_positions(
        chunk, match_q[lo:hi] - start, match_g[lo:hi], not_junk,
        removed_q[rlo:rhi] - start, removed_g[rlo:rhi], column_bits)
    query, first, ap, inp = _per_query_scores(positions, rows)
    query_rows.append(query + start)
    first_positions.append(first)
    average_precisions.append(ap)
    inverse_penalties.append(inp)

  if not first_positions:
    raise ValueError(
        'no valid query: no query has a true match left in the gallery after '
        'removing junk (person id -1) and same-person same-camera images '
        '(check q_pids/g_pids and q_camids/g_camids)')
  first = np.concatenate(first_positions)
  num_valid = len(first)
  cmc_length = min(max_rank, num_gallery)
  hits = np.bincount(np.minimum(first, cmc_length + 1) - 1,
                     minlength=cmc_length + 1)[:cmc_length]
  cmc = np.cumsum(hits) / num_valid
  average_precision = np.concatenate(average_precisions)
  inverse_penalty = np.concatenate(inverse_penalties)
  return RankResult(
      cmc=cmc,
      mAP=float(np.mean(average_precision)),
      mINP=float(np.mean(inverse_penalty)),
      num_valid_queries=num_valid,
      query_index=np.concatenate(query_rows).astype(np.int64),
      average_precision=average_precision,
      first_match_rank=first.astype(np.int64),
      inverse_negative_penalty=inverse_penalty)


def valid_queries(q_pids, g_pids, q_camids, g_camids) -> np.ndarray:
  """Which queries the protocol evaluates: those with a true match left.

  A true match is a gallery image of the query's person (not junk) from
  another camera, where a camera id of `UNKNOWN_CAMERA` (-1) is never the
  same camera as any other (so without cameras no gallery image is removed
  for sharing one); `evaluate_rank` skips every other query, and fails when
  none is left. No distances are needed, so a split can be checked before
  any network runs.

  Args:
    q_pids, g_pids, q_camids, g_camids: as in `evaluate_rank`.

  Returns:
    bool (num_query,), True for a query with at least one true match.
  """
  ids = [np.asarray(values).astype(np.int64)
         for values in (q_pids, g_pids, q_camids, g_camids)]
  match_q = _same_person_pairs(*ids)[0]
  valid = np.zeros(len(ids[0]), bool)
  valid[match_q] = True
  return valid


def _check_inputs(distmat, q_pids, g_pids, q_camids, g_camids, max_rank,
                  chunk_size):
  """Validates shapes and types; returns the four id arrays as int64."""
  if distmat.ndim != 2:
    raise ValueError('distmat must be 2-D (num_query, num_gallery), got shape '
                     f'{distmat.shape}')
  if not (np.issubdtype(distmat.dtype, np.floating)
          or np.issubdtype(distmat.dtype, np.integer)):
    raise ValueError(f'distmat must hold real numbers, got {distmat.dtype}')
  num_query, num_gallery = distmat.shape
  if num_query == 0 or num_gallery == 0:
    raise ValueError(f'distmat is empty: shape {distmat.shape}')
  ids = []
  for name, values, size, axis in (('q_pids', q_pids, num_query, 0),
                                   ('g_pids', g_pids, num_gallery, 1),
                                   ('q_camids', q_camids, num_query, 0),
                                   ('g_camids', g_camids, num_gallery, 1)):
    values = np.asarray(values)
    if values.shape != (size,):
      raise ValueError(f'{name} must have shape ({size},) to match axis {axis} '
                       f'of distmat {distmat.shape}, got {values.shape}')
    if not np.issubdtype(values.dtype, np.integer):
      raise ValueError(f'{name} must hold integers, got {values.dtype}')
    ids.append(values.astype(np.int64))
  if max_rank < 1:
    raise ValueError(f'max_rank must be >= 1, got {max_rank}')
  if chunk_size is not None and chunk_size < 1:
    raise ValueError(f'chunk_size must be >= 1 or None, got {chunk_size}')
  return ids


def _chunk_rows(num_query, num_gallery, column_bits, chunk_size):
  """Query rows per chunk; bounded so that the packed sort keys fit in int64."""
  if chunk_size is None:
    chunk_size = max(1, DEFAULT_CHUNK_ENTRIES // num_gallery)
  # Sort keys pack (row, value code, column) into 63 bits. Float32 codes take
  # 32 bits; other dtypes use the rank among the chunk's kept entries, which
  # needs at most row_bits + column_bits. Both fit when
  # row_bits + column_bits <= 31.
  max_rows = 1 << max(0, 31 - column_bits)
  return int(min(chunk_size, max_rows, num_query))


def _same_person_pairs(q_pids, g_pids, q_camids, g_camids):
  """(query, gallery) pairs sharing a person id, sorted by query then gallery.

  Returns:
    (match_q, match_g, removed_q, removed_g): the true matches (other camera)
    and the same-camera pairs the protocol removes; a pair with an
    `UNKNOWN_CAMERA` on either side is never the same camera. Pairs of junk
    ids are in neither: junk gallery columns are removed for every query.
  """
  order = np.argsort(g_pids, kind='stable')
  sorted_pids = g_pids[order]
  lo = np.searchsorted(sorted_pids, q_pids, side='left')
  counts = np.searchsorted(sorted_pids, q_pids, side='right') - lo
  counts[q_pids == JUNK_PERSON_ID] = 0
  pair_q = np.repeat(np.arange(len(q_pids)), counts)
  offsets = np.arange(len(pair_q)) - np.repeat(np.cumsum(counts) - counts,
                                              counts)
  pair_g = order[np.repeat(lo, counts) + offsets]
  same_camera = ((g_camids[pair_g] == q_camids[pair_q]) &
                 (q_camids[pair_q] != UNKNOWN_CAMERA))
  return (pair_q[~same_camera], pair_g[~same_camera],
          pair_q[same_camera], pair_g[same_camera])


def _true_match_positions(chunk, match_rows, match_cols, not_junk,
                          removed_rows, removed_cols, column_bits):
  """1-based positions of the true matches in each query's ranking.

  Args:
    chunk: (C, G) float32 or float64 distances of C queries, C-contiguous.
    match_rows, match_cols: the true matches, sorted by row (at least one).
    not_junk: (G,) bool, False for the junk columns removed for every query.
    removed_rows, removed_cols: same-person same-camera entries to remove.
    column_bits: bits needed for a gallery index.

  Returns:
    (positions, rows): the positions, grouped by row in ascending row order
    and ascending within a row, and the row of each.
  """
  num_rows, num_gallery = chunk.shape
  match_values = chunk[match_rows, match_cols]
  if np.isnan(match_values).any():
    raise ValueError('distmat is NaN between a query and a true match')
  # Only entries up to the farthest true match of their row can precede a
  # true match. Rows without a true match get NaN, which keeps nothing. NaN
  # entries are never kept: they rank after every number, as in np.argsort.
  group_starts = np.flatnonzero(np.r_[True, match_rows[1:] != match_rows[:-1]])
  threshold = np.full(num_rows, np.nan, dtype=chunk.dtype)
  threshold[match_rows[group_starts]] = np.maximum.reduceat(match_values,
                                                            group_starts)
  kept = chunk <= threshold[:, None]
  kept &= not_junk
  kept[removed_rows, removed_cols] = False
  flat = np.flatnonzero(kept)
  if len(flat) * DENSE_KEPT_RATIO > kept.size:
    return _positions_from_sorted_rows(chunk, kept, match_rows, match_cols,
                                       match_values)
  del kept

  # One int64 key per kept entry: (row, value code, column), so that sorted
  # keys list each row's ranking in turn.
  rows = flat // num_gallery
  values = chunk.reshape(-1)[flat]
  if chunk.dtype == np.float32:
    value_codes = _float32_codes(values)
    match_codes = _float32_codes(match_values)
    value_bits = 32
  else:
    distinct, value_codes = np.unique(values, return_inverse=True)
    match_codes = np.searchsorted(distinct, match_values)
    value_bits = max(1, (len(distinct) - 1).bit_length())
  row_shift = value_bits + column_bits
  keys = rows << row_shift
  keys |= value_codes << column_bits
  keys |= flat - rows * num_gallery
  keys.sort()
  match_keys = np.sort((match_rows.astype(np.int64) << row_shift)
                       | (match_codes << column_bits) | match_cols)
  match_rows = match_keys >> row_shift
  row_starts = np.searchsorted(keys, match_rows << row_shift)
  return np.searchsorted(keys, match_keys) - row_starts + 1, match_rows


def _float32_codes(values):
  """int64 codes of float32 values that sort like the values.

  The IEEE bits, flipped for negative numbers, read as unsigned; adding +0.0
  first turns -0.0 (equal to +0.0) into +0.0.
  """
  bits = (values + np.float32(0)).view(np.int32)
  bits ^= (bits >> 31) & np.int32(0x7FFFFFFF)
  bits ^= np.int32(-0x80000000)
  return bits.view(np.uint32).astype(np.int64)


def _positions_from_sorted_rows(chunk, kept, match_rows, match_cols,
                                match_values):
  """`_true_match_positions` by sorting whole rows, for when most are kept."""
  ranked = np.where(kept, chunk, np.inf)
  ranked.sort(axis=1)
  preceding = np.empty(len(match_rows), dtype=np.int64)
  bounds = np.searchsorted(match_rows, np.arange(chunk.shape[0] + 1))
  for row in np.flatnonzero(np.diff(bounds)):
    lo, hi = bounds[row], bounds[row + 1]
    values = match_values[lo:hi]
    smaller = np.searchsorted(ranked[row], values, side='left')
    equal = np.searchsorted(ranked[row], values, side='right') - smaller
    preceding[lo:hi] = smaller
    # Another entry with the same distance (or an infinite distance, which
    # the removed entries share): count the kept entries before it exactly.
    for i in np.flatnonzero(equal > 1):
      value, col = values[i], match_cols[lo + i]
      preceding[lo + i] = (
          np.count_nonzero(kept[row] & (chunk[row] < value))
          + np.count_nonzero(kept[row, :col] & (chunk[row, :col] == value)))
  positions = preceding + 1
  order = np.lexsort((positions, match_rows))
  return positions[order], match_rows[order]


def _per_query_scores(positions, rows):
  """Row, first position, AP and INP of each query from its positions."""
  group_starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
  group_sizes = np.diff(np.r_[group_starts, len(rows)])
  ordinals = np.arange(1, len(rows) + 1) - np.repeat(group_starts, group_sizes)
  precision_sums = np.add.reduceat(ordinals / positions, group_starts)
  last = positions[group_starts + group_sizes - 1]
  return (rows[group_starts], positions[group_starts],
          precision_sums / group_sizes, group_sizes / last)
