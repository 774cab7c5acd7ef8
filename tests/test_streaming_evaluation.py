"""Evaluation and re-ranking from descriptors without dense N x N matrices.

The reference is the dense path (`pairwise_distances` matrices into
`re_rank` and `evaluate_rank`), itself tested against a dense transcription
of the reference notes in test_rerank.py. Small-integer descriptors make
every distance exact in float32 (integer squared sums below 2**24, a
correctly rounded square root) whatever the order of summation, so there the
two paths must agree bit for bit; they are also tie-heavy, which exercises
the ordering of equal distances by index.
"""

from unittest import mock

import numpy as np
import pytest

from sa_reid_jax.evaluation import descriptor_joint
from sa_reid_jax.evaluation import neighbours
from sa_reid_jax.evaluation.distances import DistanceRows
from sa_reid_jax.evaluation.distances import pairwise_distances
from sa_reid_jax.evaluation.metrics import evaluate_rank
from sa_reid_jax.evaluation.rerank import re_rank
from sa_reid_jax.evaluation.rerank import re_rank_descriptors


def integer_descriptors(rng, num, size, values=2):
  return rng.integers(-values, values + 1, size=(num, size)).astype(np.float32)


def dense_reference(query, gallery, metric='euclidean', **settings):
  d = lambda a, b: pairwise_distances(a, b, metric)
  return re_rank(d(query, gallery), d(query, query), d(gallery, gallery),
                 **settings)


@pytest.mark.parametrize('cache_bytes', [0, 1 << 30])
def test_distance_rows_equal_the_dense_matrix_however_read(cache_bytes):
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(50, 3, 8)), rng.normal(size=(70, 3, 8))
  dense = pairwise_distances(a, b)
  rows = DistanceRows(a, b, block_rows=16, host_cache_bytes=cache_bytes)
  assert rows.shape == (50, 70) and len(rows) == 50
  np.testing.assert_array_equal(np.asarray(rows), dense)
  np.testing.assert_array_equal(rows[3:40], dense[3:40])
  np.testing.assert_array_equal(rows[40:3], dense[40:3])
  np.testing.assert_array_equal(rows[7], dense[7])
  np.testing.assert_array_equal(rows[-1], dense[-1])
  np.testing.assert_array_equal(rows[[5, 1, 49]], dense[[5, 1, 49]])
  np.testing.assert_array_equal(rows[::7], dense[::7])
  np.testing.assert_array_equal(
      np.concatenate([block for _, block in rows.blocks(9)]), dense)
  with pytest.raises(IndexError, match='row 50 out of range'):
    rows[50]  # pylint: disable=pointless-statement


def test_distance_rows_are_never_built_whole_above_the_cache_limit():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(40, 6)), rng.normal(size=(30, 6))
  rows = DistanceRows(a, b, block_rows=8, host_cache_bytes=0)
  computed = []
  original = rows._compute  # pylint: disable=protected-access

  def spy(chosen):
    computed.append(len(chosen))
    return original(chosen)

  with mock.patch.object(rows, '_compute', spy):
    result = evaluate_rank(rows, np.arange(40) % 5, np.arange(30) % 5,
                           np.zeros(40, int), np.ones(30, int), chunk_size=4)
  assert max(computed) == 8  # one device block at a time
  assert sum(computed) == 40  # each row computed once, read in order
  dense = evaluate_rank(pairwise_distances(a, b), np.arange(40) % 5,
                        np.arange(30) % 5, np.zeros(40, int), np.ones(30, int))
  np.testing.assert_array_equal(result.average_precision,
                                dense.average_precision)
  np.testing.assert_array_equal(result.cmc, dense.cmc)


@pytest.mark.parametrize('k1, k2, lambda_value', [(20, 6, 0.3), (20, 1, 0.3),
                                                  (5, 2, 0.0), (3, 3, 1.0)])
@pytest.mark.parametrize('num_query, num_gallery, size, values', [
    (30, 120, 8, 2),   # tie-heavy: 5**8 points, many at equal distance
    (7, 9, 3, 1),      # fewer images than candidates: whole rows on device
    (40, 200, 16, 8),
])
def test_equals_the_dense_path_bit_for_bit_on_exact_distances(
    k1, k2, lambda_value, num_query, num_gallery, size, values):
  rng = np.random.default_rng(num_query + k1)
  query = integer_descriptors(rng, num_query, size, values)
  gallery = integer_descriptors(rng, num_gallery, size, values)
  settings = dict(k1=k1, k2=k2, lambda_value=lambda_value)
  expected = dense_reference(query, gallery, **settings)
  got = re_rank_descriptors(query, gallery, **settings)
  assert got.shape == expected.shape
  np.testing.assert_array_equal(np.asarray(got), expected)
  np.testing.assert_array_equal(got[3:5], expected[3:5])
  np.testing.assert_array_equal(got[2], expected[2])


def test_rows_tied_with_the_farthest_candidate_are_redone_in_full():
  # Every gallery image is one of two points: each row's candidates (2k + 16
  # of 100) end inside a run of equal distances, so every row is redone,
  # and the lower indices of the tie must win.
  rng = np.random.default_rng(2)
  points = np.array([[0, 0], [3, 4]], np.float32)
  gallery = points[rng.integers(0, 2, 90)]
  query = points[rng.integers(0, 2, 10)] + np.array([1, 0], np.float32)
  joint = descriptor_joint.DescriptorJoint(query, gallery)
  redone = []
  original = np.argsort

  def counting_argsort(values, *args, **kwargs):
    if np.ndim(values) == 2:
      redone.append(len(values))
    return original(values, *args, **kwargs)

  with mock.patch.object(descriptor_joint.np, 'argsort', counting_argsort):
    row_max_sq, lists = joint.neighbours(5)
  assert sum(redone) > 0
  d = lambda a, b: pairwise_distances(a, b)
  expected_max, expected = neighbours.nearest_neighbours(
      d(query, gallery), d(query, query), d(gallery, gallery), 5,
      on_negative=None)
  np.testing.assert_array_equal(lists, expected)
  np.testing.assert_array_equal(row_max_sq, expected_max)


@pytest.mark.parametrize('metric', ['euclidean', 'cosine'])
def test_float_descriptors_agree_with_the_dense_path_to_rounding(metric):
  rng = np.random.default_rng(3)
  centres = rng.normal(size=(12, 32))
  query = (centres[rng.integers(0, 12, 60)]
           + 0.5 * rng.normal(size=(60, 32))).astype(np.float32)
  gallery = (centres[rng.integers(0, 12, 240)]
             + 0.5 * rng.normal(size=(240, 32))).astype(np.float32)
  expected = dense_reference(query, gallery, metric)
  got = np.asarray(re_rank_descriptors(query, gallery, metric))
  # Pair distances are summed in another order than the matrix product's
  # (a unit in the last place, ~1e-7 of values <= ~2); re-ranked values in
  # [0, 1] move by as much, unless a near tie swaps two neighbours, which
  # changes a few entries of V by up to its weights (~1e-2).
  difference = np.abs(got - expected)
  assert np.mean(difference) < 1e-6
  assert np.quantile(difference, 0.999) < 1e-5
  assert difference.max() < 0.05


def test_evaluation_of_re_ranked_rows_reads_them_by_chunks():
  rng = np.random.default_rng(4)
  query = integer_descriptors(rng, 25, 6)
  gallery = integer_descriptors(rng, 80, 6)
  q_pids, g_pids = rng.integers(1, 6, 25), rng.integers(1, 6, 80)
  q_cams, g_cams = rng.integers(0, 2, 25), rng.integers(0, 2, 80)
  ids = (q_pids, g_pids, q_cams, g_cams)
  lazy = re_rank_descriptors(query, gallery, k1=6, k2=3)
  expected = evaluate_rank(dense_reference(query, gallery, k1=6, k2=3), *ids)
  got = evaluate_rank(lazy, *ids, chunk_size=7)
  np.testing.assert_array_equal(got.average_precision,
                                expected.average_precision)
  np.testing.assert_array_equal(got.first_match_rank,
                                expected.first_match_rank)
  assert got.mAP == expected.mAP and got.mINP == expected.mINP


@pytest.mark.parametrize('change, message', [
    (lambda q, g: (q[:, :3], g), 'differ in size'),
    (lambda q, g: (np.full_like(q, np.nan), g), 'must be finite'),
    (lambda q, g: (np.zeros_like(q), np.zeros_like(g)), 'all zeros'),
    (lambda q, g: (q[:0], g), 'query is empty'),
])
def test_bad_descriptors_are_a_clear_error(change, message):
  rng = np.random.default_rng(5)
  query, gallery = change(integer_descriptors(rng, 5, 4),
                          integer_descriptors(rng, 9, 4))
  with pytest.raises(ValueError, match=message):
    re_rank_descriptors(query, gallery)


def test_bad_settings_are_a_clear_error():
  rng = np.random.default_rng(6)
  query, gallery = integer_descriptors(rng, 5, 4), integer_descriptors(rng, 9, 4)
  with pytest.raises(ValueError, match='k1 must be >= 1'):
    re_rank_descriptors(query, gallery, k1=0)
  with pytest.raises(ValueError, match='metric must be one of'):
    re_rank_descriptors(query, gallery, metric='manhattan')
  with pytest.raises(ValueError, match=r'q_g_dist must have shape \(5, 9\)'):
    re_rank_descriptors(query, gallery, q_g_dist=np.zeros((5, 8)))


@pytest.mark.full
def test_market_sized_re_ranking_equals_the_dense_path():
  # Market-1501's test split: 3,368 queries, 15,913 gallery images, 751
  # identities (2,048-d descriptors in the paper; 32 small-integer values
  # here so that distances are exact and tie often).
  rng = np.random.default_rng(7)
  num_ids = 751
  centres = rng.integers(-3, 4, size=(num_ids, 32))
  q_pids = rng.integers(0, num_ids, 3368)
  g_pids = rng.integers(0, num_ids, 15913)

  def noisy(pids):
    flips = rng.integers(-1, 2, size=(len(pids), 32)) * (
        rng.random((len(pids), 32)) < 0.3)
    return (centres[pids] + flips).astype(np.float32)

  query, gallery = noisy(q_pids), noisy(g_pids)
  ids = (q_pids, g_pids, rng.integers(0, 6, 3368), rng.integers(0, 6, 15913))
  expected = dense_reference(query, gallery)
  got = re_rank_descriptors(query, gallery)
  np.testing.assert_array_equal(np.asarray(got), expected)
  expected_result = evaluate_rank(expected, *ids)
  got_result = evaluate_rank(got, *ids)
  assert got_result.mAP == expected_result.mAP
  np.testing.assert_array_equal(got_result.cmc, expected_result.cmc)
