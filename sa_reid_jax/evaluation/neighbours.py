"""Nearest neighbours in the joint distance matrix of k-reciprocal re-ranking.

The joint matrix [[q_q, q_g], [q_g^T, g_g]] (N = Q + G rows) is read in row
blocks and never stored; each row's maximum and its first neighbours under
T = squared distance / row maximum squared come from sorting only the entries
below a sampled bound (step 1 of `rerank`'s module docstring).
"""

import numpy as np

# Rows of the joint distance matrix per block when selecting neighbours.
NEIGHBOUR_BLOCK_ROWS = 256
# The neighbour search first bounds each row's (k + 1)-th smallest distance
# from this fraction of its entries.
BOUND_SAMPLE_FRACTION = 8


def _joint_row_blocks(q_g_dist, q_q_dist, g_g_dist):
  """Yields (first row, number of rows, pieces) over row blocks.

  A piece is (float32 array, its first column, transposed): side by side the
  pieces make rows first_row.. of [[qq, qg], [qg^T, gg]]. A transposed piece
  holds those rows as its columns (a column block of q_g_dist, read in place
  rather than copied into a transpose).
  """
  num_query, num_gallery = q_g_dist.shape
  as_float32 = lambda x: np.asarray(x, dtype=np.float32)
  for start in range(0, num_query, NEIGHBOUR_BLOCK_ROWS):
    stop = min(start + NEIGHBOUR_BLOCK_ROWS, num_query)
    yield start, stop - start, (
        (as_float32(q_q_dist[start:stop]), 0, False),
        (as_float32(q_g_dist[start:stop]), num_query, False))
  for start in range(0, num_gallery, NEIGHBOUR_BLOCK_ROWS):
    stop = min(start + NEIGHBOUR_BLOCK_ROWS, num_gallery)
    yield num_query + start, stop - start, (
        (as_float32(q_g_dist[:, start:stop]), 0, True),
        (as_float32(g_g_dist[start:stop]), num_query, False))


def nearest_neighbours(q_g_dist, q_q_dist, g_g_dist, num_neighbours,
                       on_negative):
  """Row maxima of the squared joint matrix and each row's first neighbours.

  Args:
    q_g_dist, q_q_dist, g_g_dist: the three blocks of the joint matrix, as
      `rerank.re_rank` takes them.
    num_neighbours: neighbours kept per row (at most Q + G).
    on_negative: called with the three blocks when an entry is negative; it
      raises the caller's error.

  Returns:
    (row_max_sq, neighbours): float32 (N,) maxima of the squared rows, and
    int32 (N, num_neighbours) column indices sorted by T = squared distance /
    row_max_sq, ties by index (exactly a stable argsort of T's rows, cut).
  """
  num_all = sum(q_g_dist.shape)
  # Sort keys pack (row in block, T's float32 bits without the sign, column)
  # into 8 + 31 + column_bits < 64 bits.
  column_bits = max(1, (num_all - 1).bit_length())
  row_shift = 31 + column_bits
  row_max_sq = np.empty(num_all, dtype=np.float32)
  neighbours = np.empty((num_all, num_neighbours), dtype=np.int32)
  blocks = _joint_row_blocks(q_g_dist, q_q_dist, g_g_dist)
  for first_row, num_rows, pieces in blocks:
    rows = slice(first_row, first_row + num_rows)
    row_max = np.max([piece.max(axis=0 if transposed else 1)
                      for piece, _, transposed in pieces], axis=0)
    if not np.isfinite(row_max).all():
      raise ValueError('the distance matrices must be finite (no NaN or inf)')
    max_sq = row_max * row_max
    if not max_sq.all():
      row = first_row + int(np.flatnonzero(max_sq == 0)[0])
      raise ValueError(f'row {row} of the joint distance matrix (queries, '
                       'then gallery) is all zeros: T = 0 / 0')
    row_max_sq[rows] = max_sq

    bound = _candidate_bound(pieces, num_neighbours)
    block_rows, cols, values = [], [], []
    for piece, first_col, transposed in pieces:
      if bound is None:
        flat = np.arange(piece.size)
      else:
        flat = np.flatnonzero(
            piece <= (bound[None, :] if transposed else bound[:, None]))
      major, minor = np.divmod(flat, piece.shape[1])
      piece_rows, piece_cols = (minor, major) if transposed else (major, minor)
      block_rows.append(piece_rows)
      cols.append(piece_cols + first_col)
      values.append(piece[major, minor])
    block_rows = np.concatenate(block_rows)
    values = np.concatenate(values)
    # Every row's minimum is a candidate, so this sees any negative entry.
    if values.min() < 0:
      on_negative(q_g_dist, q_q_dist, g_g_dist)
    # T >= 0, so its float32 bits order like its values.
    keys = block_rows << row_shift
    keys |= _t_codes(values, max_sq[block_rows]).astype(np.int64) << (
        column_bits)
    keys |= np.concatenate(cols)
    keys.sort()
    counts = np.bincount(block_rows, minlength=num_rows)
    firsts = np.cumsum(counts) - counts
    chosen = keys[firsts[:, None] + np.arange(num_neighbours)]
    neighbours[rows] = chosen & ((1 << column_bits) - 1)
    if bound is None:
      continue
    # An entry above the bound has T >= T(bound); it could tie with the last
    # neighbour (and have a smaller index) only when that neighbour's T is
    # T(bound) itself. Such rows are redone in full.
    last_codes = (chosen[:, -1] >> column_bits) & 0x7FFFFFFF
    unsure = last_codes >= _t_codes(bound, max_sq)
    for row in np.flatnonzero(unsure):
      full_row = np.concatenate([piece[:, row] if transposed else piece[row]
                                 for piece, _, transposed in pieces])
      t_row = (full_row * full_row) / max_sq[row]
      neighbours[first_row + row] = np.argsort(
          t_row, kind='stable')[:num_neighbours]
  return row_max_sq, neighbours


def _candidate_bound(pieces, num_neighbours):
  """Per row, a distance with more than num_neighbours entries at or below it.

  It is the (num_neighbours + 1)-th smallest entry of a sample (the first
  entries of the widest piece), so the entries at or below it, the candidate
  neighbours, are typically a few times num_neighbours * (width / sample).

  Returns:
    (rows,) float32 bounds, or None when the rows are too short to sample (then
    every entry is a candidate).
  """
  widths = [piece.shape[0 if transposed else 1]
            for piece, _, transposed in pieces]
  widest, _, transposed = pieces[int(np.argmax(widths))]
  width = max(widths)
  if width <= num_neighbours:
    return None
  sample_width = min(width, max(width // BOUND_SAMPLE_FRACTION,
                                16 * (num_neighbours + 1)))
  if transposed:
    return np.partition(widest[:sample_width], num_neighbours,
                        axis=0)[num_neighbours]
  return np.partition(widest[:, :sample_width], num_neighbours,
                      axis=1)[:, num_neighbours]


def _t_codes(distances, max_sq):
  """float32 bits, as int32, of T = distance**2 / max_sq, element-wise."""
  return ((distances * distances) / max_sq).view(np.int32)
