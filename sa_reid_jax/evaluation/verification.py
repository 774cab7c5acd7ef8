"""Verification figures over query-gallery pairs: ROC, TPR at fixed FPR, AUC.

Re-identification as verification ("same person or not?"): a query-gallery
pair is declared the same person when its distance is <= a threshold. As
fast-reid reports it (``fastreid/evaluation/roc.py``: TPR at FPR 1e-4, 1e-3,
1e-2 over the query-gallery pairs), this module gives, for each requested
false-positive rate f, the distance threshold and the true-positive rate
there, the ROC curve and its area.

The pairs are those of the Market-1501 protocol (`metrics.evaluate_rank`):
junk gallery images (person id -1) are left out, and so are a query's
gallery images of its own person seen by its own camera (an unknown camera,
`UNKNOWN_CAMERA`, is never the same camera); a pair is positive
when the two person ids are equal and not a distractor's (person id 0);
distractors are negatives. Queries of junk id take no part; queries without
a true match contribute their negative pairs.

Distances are never copied whole: they are read twice in row blocks (an
array, or blocks computed on demand). The first pass keeps every positive
pair's distance (a few per query) and the smallest negative distances the
largest requested FPR needs; the second counts, for every distinct
positive distance, the negatives below and equal to it, which makes the
ROC curve and AUC exact without keeping the negatives.
"""

import dataclasses
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np

from sa_reid_jax.datasets.image_records import UNKNOWN_CAMERA
from sa_reid_jax.datasets.market_layout import DISTRACTOR_PERSON_ID
from sa_reid_jax.datasets.market_layout import JUNK_PERSON_ID

# Points of the ROC curve: spaced evenly in log FPR from 1 / (negative pairs)
# to 1, plus the requested FPRs.
DEFAULT_CURVE_POINTS = 200
# Distance-matrix entries processed at once (an array, or a larger block, is
# read in parts of this size): bounds the working memory (about 30 bytes per
# entry: masks, the negatives and their positions) whatever the gallery size.
DEFAULT_BLOCK_ENTRIES = 1 << 22

Blocks = Iterable[tuple[int, np.ndarray]]
Distances = Union[np.ndarray, Blocks, Callable[[], Blocks]]


@dataclasses.dataclass(frozen=True)
class VerificationResult:
  """Verification figures over the protocol's query-gallery pairs.

  Attributes:
    fpr: the requested false-positive rates, in the order given.
    tpr: per FPR, the true-positive rate at its threshold (a fraction), or
      None when not estimable (see `not_estimable`).
    threshold: per FPR, the largest pair distance whose FPR is <= f (a pair
      is "same person" when its distance is <= the threshold), or None.
    not_estimable: per FPR, None, or why it is not estimable: with fewer
      than 1/f negative pairs, FPR f allows no false positive at all.
    auc: area under the ROC curve: the probability that a positive pair is
      closer than a negative one, ties counting one half.
    num_positive_pairs: positive pairs (same person, other camera).
    num_negative_pairs: negative pairs (other person or distractor).
    curve_fpr: float64 (C,), ascending FPR bounds from 1/num_negative_pairs
      to 1, the requested estimable FPRs among them.
    curve_tpr: float64 (C,), the TPR at the largest threshold whose FPR is
      <= the bound (the ROC curve's upper envelope, exact at every bound).
  """
  fpr: tuple[float, ...]
  tpr: tuple[Optional[float], ...]
  threshold: tuple[Optional[float], ...]
  not_estimable: tuple[Optional[str], ...]
  auc: float
  num_positive_pairs: int
  num_negative_pairs: int
  curve_fpr: np.ndarray
  curve_tpr: np.ndarray


def evaluate_verification(distances: Distances, q_pids, g_pids, q_camids,
                          g_camids, fprs: Sequence[float],
                          curve_points: int = DEFAULT_CURVE_POINTS,
                          block_entries: int = DEFAULT_BLOCK_ENTRIES
                          ) -> VerificationResult:
  """TPR at fixed FPR, the distance thresholds, the ROC curve and AUC.

  For an FPR f with N negative pairs, k is the largest count of false
  positives with k / N <= f. The threshold is the largest distance among
  the pairs at which at most k negatives have a distance <= it; every pair
  at exactly the threshold is accepted, ties included, so the FPR there is
  <= f and the next larger pair distance has an FPR > f. (When no pair
  distance qualifies, i.e. more than k negatives share the smallest
  distances, the threshold is the largest number below the (k + 1)-th
  smallest negative distance, in the distances' dtype.) The TPR is the share
  of positive pairs with a distance <= the threshold. When k is 0 (fewer than
  1/f negative pairs), TPR and threshold are None, with the reason.

  Args:
    distances: the plain query-gallery distances (not re-ranked: re-ranked
      values are not comparable across models), >= 0 and finite, float32 or
      float64: a (num_query, num_gallery) array; or the same rows as an
      iterable of (first row, (rows, num_gallery) block) covering every
      row once, which must be iterable twice (a list), or a zero-argument
      callable returning a fresh such iterable, or an object whose
      ``blocks()`` does (`distances.DistanceRows`).
    q_pids: (num_query,) integer person ids of the queries.
    g_pids: (num_gallery,) integer person ids of the gallery.
    q_camids: (num_query,) integer camera ids of the queries.
    g_camids: (num_gallery,) integer camera ids of the gallery.
    fprs: false-positive rates, each in (0, 1)
      (``config.eval.verification_fprs``).
    curve_points: points of the curve spaced in log FPR (the requested FPRs
      are added to them).
    block_entries: at most this many distances are processed at once
      (larger blocks and arrays are read in parts); bounds the working
      memory, about 30 bytes per entry.

  Returns:
    a `VerificationResult`.

  Raises:
    ValueError: naming the argument, for ids or blocks whose shapes disagree,
      negative, NaN or infinite distances, blocks that do not cover every
      row once, a one-shot iterator, FPRs outside (0, 1), a curve_points or
      block_entries < 1, or no positive or no negative pair.
  """
  ids = _check_ids(q_pids, g_pids, q_camids, g_camids)
  fprs = _check_fprs(fprs)
  for name, value in (('curve_points', curve_points),
                      ('block_entries', block_entries)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f'{name} must be an integer >= 1, got {value!r}')
  num_query, num_gallery = len(ids[0]), len(ids[1])
  passes = _block_passes(distances, num_query, num_gallery, block_entries)
  num_positive, num_negative = pair_counts(*ids)
  if num_positive == 0 or num_negative == 0:
    raise ValueError(
        f'q_pids/g_pids: {num_positive} positive and {num_negative} negative '
        'pairs; verification needs both (a positive pair is a query and a '
        'gallery image of the same person from another camera)')
  allowed = _allowed_false_positives(np.array(fprs), num_negative)
  # The smallest negatives needed: the (k + 1)-th of the largest k.
  num_kept = int(allowed.max()) + 1

  positives, smallest_negatives = _first_pass(passes(), ids, num_kept)
  values, multiplicity = np.unique(positives, return_counts=True)
  below, equal = _negatives_at(passes(), ids, values)
  at_or_below = below + equal  # negatives <= each distinct positive distance
  cumulative = np.concatenate([[0], np.cumsum(multiplicity)])

  def true_positives(k):
    """Positives accepted by the largest threshold with <= k negatives."""
    return cumulative[np.searchsorted(at_or_below, k, side='right')]

  tprs, thresholds, reasons = [], [], []
  for f, k in zip(fprs, allowed):
    if k == 0:
      tprs.append(None)
      thresholds.append(None)
      reasons.append(
          f'{num_negative} negative pairs, fewer than 1/FPR = {1 / f:g}: '
          f'FPR {f:g} allows no false positive')
      continue
    accepted = int(true_positives(k))
    tprs.append(accepted / num_positive)
    thresholds.append(_threshold(values, at_or_below, smallest_negatives, k))
    reasons.append(None)

  # ROC curve at FPR bounds evenly spaced in log FPR, plus the requested.
  levels = np.geomspace(1 / num_negative, 1, curve_points)
  estimable = [f for f, k in zip(fprs, allowed) if k > 0]
  levels = np.unique(np.concatenate([levels, estimable, [1.0]]))
  curve_tpr = true_positives(
      _allowed_false_positives(levels, num_negative)) / num_positive

  # Mann-Whitney: pairs (positive, negative) with the positive closer, ties
  # one half, summed exactly in integers (2 * P * N < 2**63 for MSMT17).
  twice_wins = int(np.sum(multiplicity * (2 * (num_negative - below) - equal)))
  auc = twice_wins / (2 * num_positive * num_negative)
  return VerificationResult(
      fpr=tuple(fprs), tpr=tuple(tprs), threshold=tuple(thresholds),
      not_estimable=tuple(reasons), auc=float(auc),
      num_positive_pairs=num_positive, num_negative_pairs=num_negative,
      curve_fpr=levels.astype(np.float64),
      curve_tpr=curve_tpr.astype(np.float64))


def summarize_verification(result: VerificationResult) -> dict[str, Any]:
  """The metrics.json block: ``fpr``, ``tpr``, ``threshold`` (lists in the
  FPR order; null where not estimable), ``auc``, ``num_positive_pairs``,
  ``num_negative_pairs``, ``curve`` ({``fpr``, ``tpr``} lists), and
  ``not_estimable`` (per FPR, null or the reason)."""
  return {
      'fpr': [float(f) for f in result.fpr],
      'tpr': [None if t is None else float(t) for t in result.tpr],
      'threshold': [None if t is None else float(t)
                    for t in result.threshold],
      'auc': float(result.auc),
      'num_positive_pairs': int(result.num_positive_pairs),
      'num_negative_pairs': int(result.num_negative_pairs),
      'curve': {'fpr': [float(v) for v in result.curve_fpr],
                'tpr': [float(v) for v in result.curve_tpr]},
      'not_estimable': list(result.not_estimable),
  }


def fpr_text(fpr: float) -> str:
  """An FPR as the report and the printed line show it, e.g. ``1e-4``."""
  return np.format_float_scientific(fpr, trim='-', exp_digits=1)


def format_verification(summary: dict[str, Any]) -> str:
  """One line of a `summarize_verification` block, e.g. ``verification TPR
  12.30% at FPR 1e-4 (d <= 0.8134), ...  AUC 97.10%``."""
  parts = []
  for f, tpr, threshold in zip(summary['fpr'], summary['tpr'],
                               summary['threshold']):
    if tpr is None:
      parts.append(f'n/a at FPR {fpr_text(f)} (too few negative pairs)')
    else:
      parts.append(f'{100 * tpr:.2f}% at FPR {fpr_text(f)} '
                   f'(d <= {threshold:.4g})')
  return (f'verification TPR {", ".join(parts)}  AUC '
          f'{100 * summary["auc"]:.2f}%  ({summary["num_positive_pairs"]:,} '
          f'positive, {summary["num_negative_pairs"]:,} negative pairs)')


def pair_counts(q_pids, g_pids, q_camids, g_camids) -> tuple[int, int]:
  """(positive, negative) pair counts of the protocol, from the ids alone.

  Args:
    q_pids, g_pids, q_camids, g_camids: integer ids, as in
      `evaluate_verification`.

  Returns:
    (number of positive pairs, number of negative pairs).
  """
  q_pids, g_pids, q_camids, g_camids = (
      np.asarray(v).astype(np.int64) for v in (q_pids, g_pids, q_camids,
                                               g_camids))
  counted = q_pids != JUNK_PERSON_ID
  kept_gallery = np.count_nonzero(g_pids != JUNK_PERSON_ID)
  person = g_pids > DISTRACTOR_PERSON_ID  # neither junk nor distractor
  gallery_pids, per_pid = np.unique(g_pids[person], return_counts=True)
  # An unknown camera is never the same camera: such images are in no pair.
  known = person & (g_camids != UNKNOWN_CAMERA)
  pairs, per_pair = np.unique(
      np.stack([g_pids[known], g_camids[known]]), axis=1,
      return_counts=True)

  def lookup(keys, table, counts):
    """counts of each key in a sorted table, 0 where absent."""
    index = np.minimum(np.searchsorted(table, keys), len(table) - 1)
    return np.where(table[index] == keys, counts[index], 0) if len(
        table) else np.zeros(len(keys), np.int64)

  same_person = lookup(q_pids, gallery_pids, per_pid)
  pair_codes = pairs[0] * (1 << 32) + pairs[1]
  same_camera = lookup(q_pids * (1 << 32) + q_camids, pair_codes, per_pair)
  positive = np.sum((same_person - same_camera)[counted])
  negative = np.sum((kept_gallery - same_person)[counted])
  return int(positive), int(negative)


def _check_ids(q_pids, g_pids, q_camids, g_camids):
  ids = []
  for name, values, reference in (('q_pids', q_pids, None),
                                  ('g_pids', g_pids, None),
                                  ('q_camids', q_camids, 'q_pids'),
                                  ('g_camids', g_camids, 'g_pids')):
    values = np.asarray(values)
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
      raise ValueError(f'{name} must be a 1-D array of integers, got shape '
                       f'{values.shape} of {values.dtype}')
    if reference is not None and len(values) != len(ids[len(ids) - 2]):
      raise ValueError(f'{name} must have the length of {reference} '
                       f'({len(ids[len(ids) - 2])}), got {len(values)}')
    ids.append(values.astype(np.int64))
  if not len(ids[0]) or not len(ids[1]):
    raise ValueError(f'q_pids and g_pids must not be empty, got '
                     f'{len(ids[0])} queries and {len(ids[1])} gallery images')
  return ids


def _check_fprs(fprs) -> list[float]:
  try:
    values = [float(f) for f in fprs]
  except (TypeError, ValueError):
    raise ValueError(f'fprs must be a list of numbers in (0, 1), got '
                     f'{fprs!r}') from None
  if not values or not all(0 < f < 1 for f in values):
    raise ValueError(f'fprs must be a non-empty list of numbers in (0, 1), '
                     f'got {fprs!r}')
  return values


def _allowed_false_positives(levels: np.ndarray, num_negative: int
                             ) -> np.ndarray:
  """int64: per level, the largest count k with k / num_negative <= level
  (the comparison in float64, as FPR <= f is checked)."""
  k = np.floor(levels * num_negative).astype(np.int64)
  k = np.where((k + 1) / num_negative <= levels, k + 1, k)
  k = np.where(k / num_negative > levels, k - 1, k)
  return np.clip(k, 0, num_negative)


def _block_passes(distances, num_query, num_gallery, block_entries
                  ) -> Callable[[], Iterable[tuple[int, np.ndarray]]]:
  """A function returning a fresh iterable of checked (start, block)."""
  if callable(distances):
    source = distances
  elif callable(getattr(distances, 'blocks', None)):
    source = distances.blocks
  elif isinstance(distances, np.ndarray) or hasattr(distances, '__array__'):
    dense = np.asarray(distances)
    if dense.shape != (num_query, num_gallery):
      raise ValueError(
          f'distances must have shape (num_query, num_gallery) = '
          f'({num_query}, {num_gallery}) from q_pids and g_pids, got '
          f'{dense.shape}')
    source = lambda: [(0, dense)]  # read in parts of block_entries
  elif iter(distances) is distances:
    raise ValueError(
        'distances: a one-shot iterator of blocks cannot be read twice; pass '
        'a list of (first row, block) or a function returning a fresh '
        'iterator of them')
  else:
    source = lambda: distances

  def checked():
    covered = np.zeros(num_query, np.int64)
    for item in source():
      try:
        start, block = item
        start, block = int(start), np.asarray(block)
      except (TypeError, ValueError):
        raise ValueError('distances: blocks must be (first row, 2-D array) '
                         f'pairs, got {type(item).__name__}') from None
      if (block.ndim != 2 or block.shape[1] != num_gallery
          or not 0 <= start <= num_query - len(block)):
        raise ValueError(
            f'distances: a block at row {start} of shape {block.shape} does '
            f'not fit (num_query, num_gallery) = ({num_query}, '
            f'{num_gallery})')
      if not np.issubdtype(block.dtype, np.floating):
        raise ValueError(f'distances must be floating point, got '
                         f'{block.dtype} at row {start}')
      covered[start:start + len(block)] += 1
      # Large blocks are read in parts, bounding the working memory.
      step = max(1, block_entries // num_gallery)
      for first in range(0, len(block), step):
        part = block[first:first + step]
        bad = ~(np.isfinite(part) & (part >= 0))
        if bad.any():
          row, column = np.argwhere(bad)[0]
          raise ValueError(
              f'distances must be finite and >= 0, got {part[row, column]} '
              f'at (query {start + first + row}, gallery {column})')
        yield start + first, part
    if not (covered == 1).all():
      row = int(np.flatnonzero(covered != 1)[0])
      raise ValueError(f'distances: the blocks must cover every query row '
                       f'once, row {row} is covered {covered[row]} times')

  return checked


def _pair_masks(start, rows, ids):
  """bool (rows, G) positive and negative pair masks of a row block."""
  q_pids, g_pids, q_camids, g_camids = ids
  q_pid = q_pids[start:start + rows, None]
  same = q_pid == g_pids
  counted = (q_pid != JUNK_PERSON_ID) & (g_pids != JUNK_PERSON_ID)
  person = g_pids > DISTRACTOR_PERSON_ID
  q_camid = q_camids[start:start + rows, None]
  same_camera = (q_camid == g_camids) & (q_camid != UNKNOWN_CAMERA)
  positive = same & person & ~same_camera
  negative = counted & ~(same & person)
  return positive, negative


def _first_pass(blocks, ids, num_kept):
  """Every positive distance and the num_kept smallest negative ones."""
  positives, kept, kept_size = [], [], 0
  bound = np.inf  # the num_kept-th smallest negative so far
  for start, block in blocks:
    positive, negative = _pair_masks(start, len(block), ids)
    positives.append(block[positive])
    # A value equal to the bound leaves the num_kept smallest values as
    # they are, so only smaller ones are kept.
    candidates = block[negative]
    candidates = candidates[candidates < bound]
    kept.append(candidates)
    kept_size += len(candidates)
    if kept_size >= 2 * num_kept:
      merged = np.partition(np.concatenate(kept), num_kept - 1)[:num_kept]
      kept, kept_size, bound = [merged], num_kept, merged.max()
  smallest = np.sort(np.concatenate(kept))[:num_kept]
  return np.concatenate(positives), smallest


def _negatives_at(blocks, ids, values):
  """int64 (M,) each: negatives below and equal to each sorted distinct
  positive distance in `values`."""
  num_values = len(values)
  equal = np.zeros(num_values, np.int64)
  starts = np.zeros(num_values + 1, np.int64)
  for start, block in blocks:
    negatives = block[_pair_masks(start, len(block), ids)[1]]
    # First positive value >= the negative; when equal to it, the negative
    # is below every later one.
    index = np.searchsorted(values, negatives, side='left')
    hit = values[np.minimum(index, num_values - 1)] == negatives
    hit &= index < num_values
    equal += np.bincount(index[hit], minlength=num_values)[:num_values]
    starts += np.bincount(index + hit, minlength=num_values + 1)
  below = np.cumsum(starts)[:num_values]
  return below, equal


def _threshold(values, at_or_below, smallest_negatives, k) -> float:
  """The largest pair distance with at most k negatives <= it (see
  `evaluate_verification`)."""
  limit = smallest_negatives[k]  # the (k + 1)-th smallest negative
  candidates = []
  accepted = np.searchsorted(at_or_below, k, side='right')
  if accepted:
    candidates.append(values[accepted - 1])
  below_limit = np.searchsorted(smallest_negatives, limit, side='left')
  if below_limit:
    candidates.append(smallest_negatives[below_limit - 1])
  if candidates:
    return float(max(candidates))
  return float(np.nextafter(limit, limit.dtype.type(-np.inf)))
