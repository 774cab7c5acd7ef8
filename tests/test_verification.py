"""Verification figures (TPR at fixed FPR, thresholds, ROC, AUC) against a
naive pair-by-pair computation."""

import dataclasses

import numpy as np
import pytest

from sa_reid_jax.evaluation import verification
from sa_reid_jax.training import defaults
from sa_reid_jax.training import validation


def _ids(rng, num_query, num_gallery):
  """Ids with distractors (0) and junk (-1) in the gallery, one junk and
  one distractor query, and some unknown cameras (-1)."""
  q_pids = rng.integers(1, 6, num_query)
  q_pids[:2] = (-1, 0)
  g_pids = rng.integers(-1, 6, num_gallery)
  return (q_pids, g_pids, rng.integers(-1, 3, num_query),
          rng.integers(-1, 3, num_gallery))


def _naive_pairs(distances, q_pids, g_pids, q_camids, g_camids):
  """(positive, negative) distances, enumerated pair by pair."""
  positive, negative = [], []
  for i in range(len(q_pids)):
    if q_pids[i] == -1:
      continue
    for j in range(len(g_pids)):
      if g_pids[j] == -1:
        continue
      if q_pids[i] == g_pids[j] and g_pids[j] > 0:
        # An unknown camera (-1) is never the same camera.
        if q_camids[i] != g_camids[j] or q_camids[i] == -1:
          positive.append(distances[i, j])
      else:
        negative.append(distances[i, j])
  return np.array(positive), np.array(negative)


def _naive_at(positive, negative, f):
  """(threshold, tpr): the largest pair distance with FPR <= f, by trying
  every distinct pair distance; (None, None) when none qualifies."""
  best = None
  for t in np.unique(np.concatenate([positive, negative])):
    if np.count_nonzero(negative <= t) / len(negative) <= f:
      best = t
  if best is None:
    return None, 0.0
  return best, np.count_nonzero(positive <= best) / len(positive)


def _naive_auc(positive, negative):
  closer = np.count_nonzero(positive[:, None] < negative[None])
  tied = np.count_nonzero(positive[:, None] == negative[None])
  return (closer + 0.5 * tied) / (len(positive) * len(negative))


def _fpr(negative, t):
  return np.count_nonzero(negative <= t) / len(negative)


@pytest.mark.parametrize('integer_valued', [True, False])
def test_figures_equal_a_naive_pair_by_pair_computation(integer_valued):
  rng = np.random.default_rng(1 if integer_valued else 2)
  ids = _ids(rng, 24, 70)
  same = (ids[0][:, None] == ids[1][None]) & (ids[1][None] > 0)
  if integer_valued:  # many ties, also between positives and negatives
    distances = rng.integers(0, 40, (24, 70)).astype(np.float32)
    distances[same] = np.maximum(distances[same] - 15, 0)
    fprs = (0.05, 0.1, 0.3)
  else:
    distances = rng.uniform(0, 2, (24, 70)).astype(np.float32)
    distances[same] *= np.float32(0.6)  # positives closer, but overlapping
    fprs = (0.002, 0.01, 0.05, 0.3)
  result = verification.evaluate_verification(distances, *ids, fprs=fprs,
                                              curve_points=50)
  positive, negative = _naive_pairs(distances, *ids)
  assert result.num_positive_pairs == len(positive) > 0
  assert result.num_negative_pairs == len(negative) > 0
  assert verification.pair_counts(*ids) == (len(positive), len(negative))
  distinct = np.unique(np.concatenate([positive, negative]))
  for f, tpr, threshold, reason in zip(fprs, result.tpr, result.threshold,
                                       result.not_estimable):
    assert reason is None
    expected_threshold, expected_tpr = _naive_at(positive, negative, f)
    assert expected_threshold is not None  # the data leave a threshold
    assert threshold == expected_threshold
    assert tpr == expected_tpr  # both are (integer count) / (same count)
    assert _fpr(negative, threshold) <= f
    larger = distinct[distinct > threshold]
    assert _fpr(negative, larger[0]) > f
  if integer_valued:  # ties at thresholds occur, and are all accepted
    assert any(np.count_nonzero(negative == t) > 1 for t in result.threshold)
  # AUC: integer counts divided once; the sum order differs, so a few ulps.
  assert result.auc == pytest.approx(_naive_auc(positive, negative),
                                     rel=1e-12)
  # The curve: at every FPR bound, the best TPR of a threshold within it.
  for level, tpr in zip(result.curve_fpr, result.curve_tpr):
    allowed = [t for t in distinct if _fpr(negative, t) <= level]
    expected = (np.count_nonzero(positive <= max(allowed)) / len(positive)
                if allowed else 0.0)
    assert tpr == expected
  assert np.all(np.diff(result.curve_fpr) > 0)
  assert np.all(np.diff(result.curve_tpr) >= 0)
  assert result.curve_fpr[-1] == 1 and result.curve_tpr[-1] == 1
  assert result.curve_fpr[0] == pytest.approx(1 / len(negative), rel=1e-12)
  # The reported points lie on the curve, exactly.
  for f, tpr in zip(fprs, result.tpr):
    assert result.curve_tpr[list(result.curve_fpr).index(f)] == tpr


def _assert_equal(result, expected):
  for field in dataclasses.fields(result):
    np.testing.assert_array_equal(getattr(result, field.name),
                                  getattr(expected, field.name))


def test_blocks_in_any_order_equal_the_dense_array():
  rng = np.random.default_rng(3)
  ids = _ids(rng, 30, 50)
  distances = rng.integers(0, 20, (30, 50)).astype(np.float32)
  fprs = (0.001, 0.01, 0.1)
  dense = verification.evaluate_verification(distances, *ids, fprs=fprs)
  blocks = [(s, distances[s:e]) for s, e in ((17, 30), (0, 1), (1, 17))]
  for source in (blocks, lambda: iter(blocks)):
    _assert_equal(verification.evaluate_verification(source, *ids,
                                                     fprs=fprs), dense)
  # A small block size: many blocks, and the kept negatives merged often.
  small = verification.evaluate_verification(distances, *ids, fprs=fprs,
                                             block_entries=60)
  _assert_equal(small, dense)


def test_fewer_negatives_than_one_over_fpr_is_not_estimable():
  q_pids, g_pids = np.array([1, 2]), np.array([1, 2, 3, 3, 0])
  q_cams, g_cams = np.array([0, 0]), np.array([1, 1, 0, 1, 0])
  distances = np.array([[0.1, 0.5, 0.7, 0.2, 0.9],
                        [0.6, 0.3, 0.8, 0.4, 0.35]], np.float32)
  # 2 positives and 8 negatives: FPR 0.1 allows none, 0.125 allows one.
  result = verification.evaluate_verification(
      distances, q_pids, g_pids, q_cams, g_cams, fprs=(0.1, 0.125, 0.25))
  assert (result.num_positive_pairs, result.num_negative_pairs) == (2, 8)
  assert result.tpr[0] is None and result.threshold[0] is None
  assert 'fewer than 1/FPR = 10' in result.not_estimable[0]
  # One false positive allowed: the smallest negative is 0.2, the next 0.35,
  # so thresholds up to 0.3 (the second positive) accept both positives.
  assert result.tpr[1:] == (1.0, 1.0)
  assert result.threshold[1] == pytest.approx(0.3)  # float32 0.3 read back
  assert result.not_estimable[1:] == (None, None)
  # Positive 0.1 and 0.3 against the 8 negatives: 0.1 beats 8, 0.3 beats 7.
  assert result.auc == 15 / 16
  summary = verification.summarize_verification(result)
  assert summary['tpr'][0] is None and summary['not_estimable'][0]
  assert summary['fpr'] == [0.1, 0.125, 0.25]


def test_threshold_below_tied_smallest_negatives():
  # Three negatives tied at the smallest distance with one allowed: no pair
  # distance qualifies, so the threshold sits just below them.
  q_pids, g_pids = np.array([1]), np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
  distances = np.array([[0.5, 0.25, 0.25, 0.25, 1, 1, 1, 1, 1, 1]],
                       np.float32)
  result = verification.evaluate_verification(
      distances, q_pids, g_pids, np.array([0]), np.ones(10, np.int64),
      fprs=(0.15,))
  assert result.tpr == (0.0,)
  assert result.threshold[0] == np.nextafter(np.float32(0.25),
                                             np.float32(0))


@pytest.mark.parametrize('change, message', [
    (dict(distances=np.zeros((4, 5), np.float32)),
     'distances must have shape (num_query, num_gallery) = (4, 6)'),
    (dict(q_camids=np.zeros(3, np.int64)),
     'q_camids must have the length of q_pids (4)'),
    (dict(g_pids=np.zeros(6)), 'g_pids must be a 1-D array of integers'),
    (dict(negative=True), 'distances must be finite and >= 0, got -1.0 at '
     '(query 2, gallery 3)'),
    (dict(nan=True), 'distances must be finite and >= 0, got nan'),
    (dict(fprs=(0.01, 1.0)), 'fprs must be a non-empty list of numbers in'),
    (dict(fprs=(0.0,)), 'fprs must be a non-empty list of numbers in'),
    (dict(fprs=()), 'fprs must be a non-empty list of numbers in'),
    (dict(fprs='x'), 'fprs must be a list of numbers in (0, 1)'),
    (dict(curve_points=0), 'curve_points must be an integer >= 1'),
    (dict(generator=True), 'distances: a one-shot iterator of blocks'),
    (dict(gap=True), 'distances: the blocks must cover every query row once,'
     ' row 3 is covered 0 times'),
    (dict(q_pids=np.ones(4, np.int64), g_pids=np.ones(6, np.int64)),
     '24 positive and 0 negative pairs'),
])
def test_bad_input_is_one_error_naming_the_argument(change, message):
  arguments = dict(
      distances=np.ones((4, 6), np.float32), q_pids=np.array([1, 2, 3, 4]),
      g_pids=np.array([1, 2, 3, 4, 5, 6]), q_camids=np.zeros(4, np.int64),
      g_camids=np.ones(6, np.int64), fprs=(0.1,))
  if change.pop('negative', False):
    arguments['distances'][2, 3] = -1
  if change.pop('nan', False):
    arguments['distances'][1, 1] = np.nan
  if change.pop('generator', False):
    arguments['distances'] = ((s, np.ones((1, 6), np.float32))
                              for s in range(4))
  if change.pop('gap', False):
    arguments['distances'] = [(0, np.ones((3, 6), np.float32))]
  arguments.update(change)
  with pytest.raises(ValueError) as error:
    verification.evaluate_verification(**arguments)
  assert message in str(error.value)


@pytest.mark.parametrize('value', [(0.01, 1.0), (0.0,), (), ('x',), (-1e-3,)])
def test_config_fprs_out_of_range_name_the_key(value):
  config = defaults.experiment_config('market_layout_folder', 'full')
  validation.check_evaluation_config(config)  # the default passes
  config.eval.verification_fprs = value
  with pytest.raises(ValueError, match=r'config\.eval\.verification_fprs'):
    validation.check_evaluation_config(config)
