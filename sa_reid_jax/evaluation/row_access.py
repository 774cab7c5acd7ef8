"""Read-only float32 matrices whose rows are computed when they are read.

The query-gallery distances (`distances.DistanceRows`) and the re-ranked
distances (`rerank.ReRankedRows`) of a large evaluation are never held whole:
`metrics.evaluate_rank`, the verification figures and the report read them
by rows. Plain numpy (no JAX), so the dense re-ranking path stays JAX-free.
"""

import numpy as np


class LazyRows:
  """Row access shared by the lazy matrices.

  ``rows[i]``, ``rows[start:stop:step]``, ``rows[index_array]`` (integers or
  a boolean mask) return numpy rows; ``blocks()`` walks the matrix once;
  ``np.asarray(rows)`` builds it whole. Subclasses set ``shape`` and
  implement ``_slice(start, stop)`` (contiguous rows) and ``_take(rows)``
  (int64 row indices, any order); ``_whole()`` may be overridden.

  Attributes:
    shape: (rows, columns).
    dtype: float32.
  """

  dtype = np.dtype(np.float32)
  ndim = 2
  shape: tuple[int, int]
  # Rows per block of `blocks()` when the subclass has no better size.
  block_rows = 256

  def __len__(self) -> int:
    return self.shape[0]

  def _slice(self, start: int, stop: int) -> np.ndarray:
    raise NotImplementedError

  def _take(self, rows: np.ndarray) -> np.ndarray:
    raise NotImplementedError

  def _whole(self) -> np.ndarray:
    return self._slice(0, self.shape[0])

  def __getitem__(self, index):
    """Rows by int, slice, integer array or boolean mask.

    Raises:
      IndexError: for an int out of range.
    """
    if isinstance(index, slice):
      start, stop, step = index.indices(self.shape[0])
      if step != 1:
        return self._take(np.arange(start, stop, step))
      return self._slice(start, max(start, stop))
    if np.ndim(index) == 0:
      row = int(index)
      if not -self.shape[0] <= row < self.shape[0]:
        raise IndexError(f'row {row} out of range for {self.shape[0]} rows')
      row %= self.shape[0]
      return self._slice(row, row + 1)[0]
    return self._take(np.arange(self.shape[0])[np.asarray(index)])

  def blocks(self, block_rows: int | None = None):
    """Yields (first row, float32 (rows, columns) block) over every row."""
    block_rows = block_rows or self.block_rows
    for start in range(0, self.shape[0], block_rows):
      yield start, self._slice(start, min(start + block_rows, self.shape[0]))

  def __array__(self, dtype=None, copy=None):
    del copy  # a new array either way
    whole = self._whole()
    return whole if dtype is None else whole.astype(dtype)
