"""Tests of the sparse k-reciprocal re-ranking against a dense transcription."""

from unittest import mock

import numpy as np
import pytest

from sa_reid_jax.evaluation import neighbours
from sa_reid_jax.evaluation import rerank
from sa_reid_jax.evaluation.metrics import evaluate_rank
from sa_reid_jax.evaluation.rerank import re_rank

# re_rank and the dense transcription both compute in float32 (values in
# [0, 1], ulp 1.2e-7 at 1) but sum V's rows and the shared weights in
# different orders: sums of up to ~100 terms differ by at most ~100 half-ulps
# (6e-6 at 1). They agree to 5e-7 on the cases below.
SUMMATION_ORDER = 1e-5

def dense_re_rank(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6,
                  lambda_value=0.3):
  """The re-ranking steps of the reference notes, one dense step at a time."""
  num_query = q_g_dist.shape[0]
  # 1. Joint squared distances in float32, each row over its own maximum.
  joint = np.block([[q_q_dist, q_g_dist],
                    [q_g_dist.T, g_g_dist]]).astype(np.float32)
  joint = joint * joint
  t = joint / joint.max(axis=1, keepdims=True)
  num_all = len(t)
  # 2. Full ranking of every row, ties by index.
  ranking = np.argsort(t, axis=1, kind='stable')

  def reciprocal_set(i, k):
    forward = ranking[i, :k + 1]
    return np.array([j for j in forward if i in ranking[j, :k + 1]],
                    dtype=np.int64)

  # 3. and 4. Expanded k-reciprocal sets and their Gaussian weights.
  v = np.zeros((num_all, num_all), dtype=np.float32)
  half_k = int(np.around(k1 / 2))
  for i in range(num_all):
    k_set = reciprocal_set(i, k1)
    expanded = list(k_set)
    for candidate in k_set:
      candidate_set = reciprocal_set(candidate, half_k)
      overlap = len(np.intersect1d(candidate_set, k_set))
      if overlap > 2 / 3 * len(candidate_set):
        expanded.extend(candidate_set)
    expanded = np.unique(np.array(expanded, dtype=np.int64))
    weights = np.exp(-t[i, expanded])
    v[i, expanded] = weights / weights.sum()
  # 5. Query expansion.
  if k2 != 1:
    v = np.stack([v[ranking[i, :k2]].mean(axis=0) for i in range(num_all)])
  # 6. Jaccard distance of every query to every row (min with 0 is 0, so
  # only the columns where V[i] > 0 contribute).
  jaccard = np.zeros((num_query, num_all), dtype=np.float32)
  for i in range(num_query):
    support = np.flatnonzero(v[i])
    shared = np.minimum(v[i, support][None, :], v[:, support]).sum(axis=1)
    jaccard[i] = 1 - shared / (2 - shared)
  # 7. Blend, query rows and gallery columns.
  final = jaccard * (1 - lambda_value) + t[:num_query] * lambda_value
  return final[:, num_query:]


def euclidean(a, b):
  return np.sqrt(((a[:, None, :] - b[None, :, :])**2).sum(axis=-1))


def clustered_distances(num_query, num_gallery, seed, num_ids=12, dim=8,
                        rounding=None, dtype=np.float64):
  """(qg, qq, gg) Euclidean distances of features around identity centres."""
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((num_ids, dim))
  ids = rng.integers(0, num_ids, num_query + num_gallery)
  features = centres[ids] + 0.5 * rng.standard_normal((len(ids), dim))
  query, gallery = features[:num_query], features[num_query:]
  distances = [euclidean(query, gallery), euclidean(query, query),
               euclidean(gallery, gallery)]
  if rounding is not None:
    # Coarse values: many ties in every step.
    distances = [np.round(d * rounding) / rounding for d in distances]
  return [d.astype(dtype) for d in distances]


SMALL_BLOCKS = dict(SET_BLOCK_ROWS=24, JACCARD_BLOCK_ENTRIES=2000,
                    OUTPUT_BLOCK_ENTRIES=900)


@pytest.mark.parametrize('k1, k2', [(20, 6), (20, 1), (5, 2), (7, 3), (1, 1),
                                    (3, 12)])
@pytest.mark.parametrize('num_query, num_gallery, rounding, dtype', [
    (30, 120, None, np.float64),
    (40, 260, None, np.float32),
    (25, 90, 2, np.float64),
    (60, 15, None, np.float32),  # more queries than gallery images
])
def test_matches_dense_transcription(k1, k2, num_query, num_gallery, rounding,
                                     dtype):
  distances = clustered_distances(num_query, num_gallery, seed=k1 * 10 + k2,
                                  rounding=rounding, dtype=dtype)
  expected = dense_re_rank(*distances, k1=k1, k2=k2, lambda_value=0.3)
  result = re_rank(*distances, k1=k1, k2=k2, lambda_value=0.3)
  assert result.shape == (num_query, num_gallery)
  assert result.dtype == np.float32
  np.testing.assert_allclose(result, expected, atol=SUMMATION_ORDER, rtol=0)


@pytest.mark.parametrize('rounding', [None, 1])
def test_matches_dense_transcription_with_small_blocks(rounding):
  distances = clustered_distances(45, 140, seed=3, rounding=rounding)
  expected = dense_re_rank(*distances, k1=6, k2=3, lambda_value=0.5)
  with mock.patch.multiple(rerank, **SMALL_BLOCKS), mock.patch.object(
      neighbours, 'NEIGHBOUR_BLOCK_ROWS', 16):
    result = re_rank(*distances, k1=6, k2=3, lambda_value=0.5)
  np.testing.assert_allclose(result, expected, atol=SUMMATION_ORDER, rtol=0)


def test_tied_neighbours_are_ordered_by_index():
  # Integer distances from a few values: ties at the k-th neighbour in most
  # rows, including ties the sampled bound cannot rule out.
  rng = np.random.default_rng(7)
  num_query, num_gallery = 20, 300
  points = rng.integers(0, 3, (num_query + num_gallery, 2)).astype(np.float64)
  joint = euclidean(points, points)
  qg = joint[:num_query, num_query:]
  qq = joint[:num_query, :num_query]
  gg = joint[num_query:, num_query:]
  expected = dense_re_rank(qg, qq, gg, k1=20, k2=6)
  np.testing.assert_allclose(re_rank(qg, qq, gg), expected,
                             atol=SUMMATION_ORDER, rtol=0)


def test_distances_too_small_to_square_tie_at_zero():
  # Squares below float32's smallest subnormal round to 0, so T ties at 0
  # between distinct distances. Query 0's row: itself and query 1 (2e-23
  # away), then four gallery images 1e-23 away. By (T, index) query 1 comes
  # before those, although its distance is the largest of the six.
  positions = np.array([0, 2e-23] + [1e-23] * 4 + list(range(5, 30)))
  joint = np.abs(positions[:, None] - positions[None, :]).astype(np.float32)
  qg, qq, gg = joint[:2, 2:], joint[:2, :2], joint[2:, 2:]
  for k1, k2 in ((2, 1), (2, 3), (20, 6)):
    np.testing.assert_allclose(re_rank(qg, qq, gg, k1=k1, k2=k2),
                               dense_re_rank(qg, qq, gg, k1=k1, k2=k2),
                               atol=SUMMATION_ORDER, rtol=0)


def test_more_neighbours_than_images():
  distances = clustered_distances(4, 6, seed=1)
  expected = dense_re_rank(*distances, k1=20, k2=6)
  np.testing.assert_allclose(re_rank(*distances), expected,
                             atol=SUMMATION_ORDER, rtol=0)


def test_queries_far_from_the_gallery_share_no_neighbours():
  # Queries and gallery in separate clusters: every Jaccard distance is 1.
  rng = np.random.default_rng(4)
  query = rng.standard_normal((30, 4)) + 100
  gallery = rng.standard_normal((50, 4))
  distances = (euclidean(query, gallery), euclidean(query, query),
               euclidean(gallery, gallery))
  result = re_rank(*distances, lambda_value=0.25)
  joint_rows = np.concatenate(distances[1::-1], axis=1).astype(np.float32)**2
  t = joint_rows[:, 30:] / joint_rows.max(axis=1, keepdims=True)
  # The same float32 operations as the blend with Jaccard 1: bit-identical.
  np.testing.assert_array_equal(result, 0.75 + 0.25 * t)
  np.testing.assert_allclose(result, dense_re_rank(*distances,
                                                   lambda_value=0.25),
                             atol=SUMMATION_ORDER, rtol=0)


def test_lambda_one_gives_the_normalised_squared_distance():
  qg, qq, gg = clustered_distances(10, 30, seed=2)
  joint_rows = np.concatenate([qq, qg], axis=1).astype(np.float32)**2
  expected = joint_rows[:, 10:] / joint_rows.max(axis=1, keepdims=True)
  # T itself, from the same float32 operations: bit-identical.
  np.testing.assert_array_equal(re_rank(qg, qq, gg, lambda_value=1.0),
                                expected)


def test_an_image_in_query_and_gallery_is_nearest_to_its_copy():
  # Each query is a copy of a gallery image. Its re-ranked distance to the
  # copy is (1 - lambda) x the Jaccard distance of two equal rows of V: zero
  # up to float32 rounding of the rows' sums (SUMMATION_ORDER), and never
  # below zero (a sum rounded above one used to make it about -1.7e-7).
  for seed in range(3):
    features = np.random.default_rng(seed).standard_normal((120, 8))
    query = features[:30]
    result = re_rank(euclidean(query, features), euclidean(query, query),
                     euclidean(features, features))
    assert result.min() >= 0
    assert np.diag(result[:, :30]).max() <= SUMMATION_ORDER
    np.testing.assert_array_equal(result.argmin(axis=1), np.arange(30))


def test_re_ranking_raises_map_on_clustered_features():
  # 30 identities with 8 images each (one query, seven gallery images): the
  # known effect of re-ranking, a higher mAP than the raw distances give.
  rng = np.random.default_rng(5)
  ids = np.repeat(np.arange(30), 8)
  features = rng.standard_normal((30, 16))[ids] + 0.8 * rng.standard_normal(
      (len(ids), 16))
  query = np.arange(0, len(ids), 8)
  gallery = np.setdiff1d(np.arange(len(ids)), query)
  qf, gf = features[query], features[gallery]
  qg = euclidean(qf, gf)
  reranked = re_rank(qg, euclidean(qf, qf), euclidean(gf, gf))

  def mean_ap(distances):
    return evaluate_rank(distances, ids[query], ids[gallery],
                         np.zeros(len(query), int),
                         np.ones(len(gallery), int)).mAP

  assert mean_ap(reranked) > mean_ap(qg) + 0.05


@pytest.mark.parametrize('change, message', [
    (lambda d: (d[0], d[1][:-1, :-1], d[2]), 'q_q_dist must have shape'),
    (lambda d: (d[0], d[1], d[2][:, :-1]), 'g_g_dist must have shape'),
    (lambda d: (d[0][0], d[1], d[2]), 'q_g_dist must be 2-D'),
    (lambda d: (-d[0], d[1], d[2]), 'non-negative'),
    (lambda d: (d[0], np.full_like(d[1], np.nan), d[2]), 'finite'),
    (lambda d: (d[0], d[1], d[2] + np.inf), 'finite'),
    (lambda d: (np.zeros_like(d[0]), np.zeros_like(d[1]), d[2]),
     'row 0 of the joint distance matrix'),
    (lambda d: (d[0].astype(complex), d[1], d[2]), 'real numbers'),
    (lambda d: (d[0][:0], d[1][:0, :0], d[2]), 'q_g_dist is empty'),
])
def test_bad_distances_are_a_clear_error(change, message):
  distances = clustered_distances(5, 20, seed=0)
  with pytest.raises(ValueError, match=message):
    re_rank(*change(distances))


@pytest.mark.parametrize('matrix', [0, 1, 2])
def test_negative_distances_name_the_matrix_and_the_worst_value(matrix):
  distances = [np.array(d) for d in clustered_distances(5, 20, seed=0)]
  distances[matrix][1, 3] = -0.25
  distances[matrix][2, 4] = -1e-3
  name = ('q_g_dist', 'q_q_dist', 'g_g_dist')[matrix]
  with pytest.raises(ValueError) as error:
    re_rank(*distances)
  assert str(error.value) == (
      f'distances must be non-negative: {name} has 2 negative entries, the '
      'most negative -0.25 at [1, 3]')


@pytest.mark.parametrize('kwargs, message', [
    (dict(k1=0), 'k1'), (dict(k2=0), 'k2'), (dict(lambda_value=1.5), 'lambda'),
    (dict(lambda_value=-0.1), 'lambda')])
def test_bad_parameters_are_a_clear_error(kwargs, message):
  with pytest.raises(ValueError, match=message):
    re_rank(*clustered_distances(5, 20, seed=0), **kwargs)
