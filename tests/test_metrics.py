"""Tests of the Market-1501 ranking metrics against a plain per-query loop."""

from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st
import numpy as np
import pytest

import helpers
from sa_reid_jax.evaluation import metrics
from sa_reid_jax.evaluation.metrics import evaluate_rank

# Average precisions are float64 sums of m / p_m over a query's true matches
# (at most a few dozen terms here), summed in another order than the loop's:
# they differ by a few ulps of 1 (2.2e-16; seen: one).
FLOAT64_SUM_ORDER = 1e-13


def naive_evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50,
                   per_query=None):
  """The protocol written out query by query, straight from its definition.

  With a dict `per_query`, fills it with the valid queries' ``query_index``,
  ``first_match_rank``, ``average_precision`` and
  ``inverse_negative_penalty`` lists.

  Returns:
    (cmc, mAP, mINP, num_valid_queries); num_valid_queries 0 means no query
    had a true match (cmc, mAP and mINP are then None).
  """
  num_gallery = distmat.shape[1]
  cmc_length = min(max_rank, num_gallery)
  hits_at = np.zeros(cmc_length)
  average_precisions, inverse_penalties = [], []
  queries, firsts = [], []
  for q in range(distmat.shape[0]):
    removed = (g_pids == -1) | ((g_pids == q_pids[q])
                                & (g_camids == q_camids[q]))
    # A stable sort keeps equal distances in gallery order.
    ranked = np.argsort(distmat[q], kind='stable')
    ranked = ranked[~removed[ranked]]
    positions = np.flatnonzero(g_pids[ranked] == q_pids[q]) + 1
    if len(positions) == 0:
      continue
    num_matches = len(positions)
    average_precisions.append(
        sum(m / p for m, p in enumerate(positions, start=1)) / num_matches)
    inverse_penalties.append(num_matches / positions[-1])
    queries.append(q)
    firsts.append(positions[0])
    for k in range(cmc_length):
      if positions[0] <= k + 1:
        hits_at[k] += 1
  num_valid = len(average_precisions)
  if per_query is not None:
    per_query.update(query_index=queries, first_match_rank=firsts,
                     average_precision=average_precisions,
                     inverse_negative_penalty=inverse_penalties)
  if num_valid == 0:
    return None, None, None, 0
  return (hits_at / num_valid, float(np.mean(average_precisions)),
          float(np.mean(inverse_penalties)), num_valid)


def assert_matches_naive(distmat, q_pids, g_pids, q_camids, g_camids,
                         max_rank=50, **kwargs):
  per_query = {}
  cmc, m_ap, m_inp, num_valid = naive_evaluate(distmat, q_pids, g_pids,
                                               q_camids, g_camids, max_rank,
                                               per_query)
  if num_valid == 0:
    with pytest.raises(ValueError, match='no valid query'):
      evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank,
                    **kwargs)
    return
  result = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids,
                         max_rank, **kwargs)
  # Hit counts over the number of valid queries, and R / p_R: the same
  # correctly rounded float64 divisions as the loop's, so bit-identical.
  np.testing.assert_array_equal(result.cmc, cmc)
  assert result.mAP == pytest.approx(m_ap, rel=0, abs=FLOAT64_SUM_ORDER)
  assert result.mINP == m_inp
  assert result.num_valid_queries == num_valid
  np.testing.assert_array_equal(result.query_index, per_query['query_index'])
  np.testing.assert_array_equal(result.first_match_rank,
                                per_query['first_match_rank'])
  np.testing.assert_allclose(result.average_precision,
                             per_query['average_precision'], rtol=0,
                             atol=FLOAT64_SUM_ORDER)
  np.testing.assert_array_equal(result.inverse_negative_penalty,
                                per_query['inverse_negative_penalty'])


def one_query(distances, gallery_pids, gallery_cams, query_pid=1, query_cam=0,
              max_rank=50):
  return evaluate_rank(np.array([distances], dtype=np.float32), [query_pid],
                       np.array(gallery_pids), [query_cam],
                       np.array(gallery_cams), max_rank=max_rank)


def test_two_matches_at_ranks_one_and_three():
  result = one_query([0.1, 0.2, 0.3, 0.4], [1, 2, 1, 3], [1, 1, 1, 1])
  assert result.mAP == pytest.approx((1 / 1 + 2 / 3) / 2)
  assert result.mINP == pytest.approx(2 / 3)
  np.testing.assert_allclose(result.cmc, [1, 1, 1, 1])
  assert result.num_valid_queries == 1
  np.testing.assert_array_equal(result.query_index, [0])
  np.testing.assert_array_equal(result.first_match_rank, [1])
  np.testing.assert_allclose(result.average_precision, [(1 + 2 / 3) / 2])
  np.testing.assert_allclose(result.inverse_negative_penalty, [2 / 3])


def test_first_match_at_rank_two():
  result = one_query([0.1, 0.2, 0.3], [5, 1, 6], [1, 1, 1])
  assert result.mAP == pytest.approx(1 / 2)
  assert result.mINP == pytest.approx(1 / 2)
  np.testing.assert_allclose(result.cmc, [0, 1, 1])


def test_same_person_same_camera_is_removed():
  # The closest image is the query's person seen by the query's camera: it is
  # removed, and the true match moves up from position 3 to 2.
  result = one_query([0.05, 0.1, 0.2], [1, 7, 1], [0, 0, 2])
  assert result.mAP == pytest.approx(1 / 2)
  np.testing.assert_allclose(result.cmc, [0, 1, 1])


def test_other_person_same_camera_is_kept():
  result = one_query([0.05, 0.1], [7, 1], [0, 1])
  assert result.mAP == pytest.approx(1 / 2)


def test_junk_is_removed():
  result = one_query([0.05, 0.1, 0.2], [-1, 1, 3], [1, 1, 1])
  assert result.mAP == pytest.approx(1.0)
  # The CMC curve stops at the gallery size, junk included.
  assert len(result.cmc) == 3


def test_distractor_is_a_negative():
  result = one_query([0.05, 0.1], [0, 1], [1, 1])
  assert result.mAP == pytest.approx(1 / 2)
  np.testing.assert_allclose(result.cmc, [0, 1])


def test_ties_are_broken_by_gallery_index():
  # All distances equal: the match at gallery index 2 is ranked after index 1
  # (index 0 is junk and removed).
  result = one_query([0.5, 0.5, 0.5, 0.5], [-1, 4, 1, 1], [1, 1, 1, 1])
  assert result.mAP == pytest.approx((1 / 2 + 2 / 3) / 2)
  assert result.mINP == pytest.approx(2 / 3)


def test_queries_without_a_match_are_skipped():
  distmat = np.array([[0.1, 0.2, 0.3],
                      [0.3, 0.2, 0.1],
                      [0.1, 0.2, 0.3]], dtype=np.float32)
  # Query 1's only match shares its camera; query 2's person is absent.
  result = evaluate_rank(distmat, [1, 2, 9], [1, 2, 3], [0, 0, 0], [1, 0, 1])
  assert result.num_valid_queries == 1
  assert result.mAP == pytest.approx(1.0)
  np.testing.assert_allclose(result.cmc, [1, 1, 1])


def test_cmc_over_several_queries():
  distmat = np.array([[0.1, 0.2, 0.3, 0.4],
                      [0.4, 0.3, 0.2, 0.1]], dtype=np.float32)
  result = evaluate_rank(distmat, [1, 2], [1, 2, 3, 4], [0, 0], [1, 1, 1, 1],
                         max_rank=3)
  # Query 0 hits at rank 1, query 1 (person 2, column 1) at rank 3.
  np.testing.assert_allclose(result.cmc, [0.5, 0.5, 1.0])
  assert result.mAP == pytest.approx((1 + 1 / 3) / 2)


def test_result_is_frozen():
  result = one_query([0.1], [1], [1])
  with pytest.raises(AttributeError):
    result.mAP = 0.0


def test_accepts_jax_arrays():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  distmat = jnp.array([[0.1, 0.2, 0.3, 0.4]])
  result = evaluate_rank(distmat, jnp.array([1]), jnp.array([1, 2, 1, 3]),
                         jnp.array([0]), jnp.array([1, 1, 1, 1]))
  assert result.mAP == pytest.approx((1 + 2 / 3) / 2)


def test_no_valid_query_is_an_error():
  with pytest.raises(ValueError, match='no valid query'):
    one_query([0.1, 0.2], [1, 2], [0, 1])


@pytest.mark.parametrize('arguments, message', [
    (dict(q_pids=[1, 2, 3]), 'q_pids must have shape'),
    (dict(g_pids=[1, 2]), 'g_pids must have shape'),
    (dict(q_camids=[0]), 'q_camids must have shape'),
    (dict(g_camids=[0, 0, 0, 0]), 'g_camids must have shape'),
    (dict(distmat=np.zeros(3)), 'distmat must be 2-D'),
    (dict(distmat=np.zeros((0, 3)), q_pids=[], q_camids=[]), 'empty'),
    (dict(distmat=np.full((2, 3), np.nan)), 'NaN'),
    (dict(distmat=np.zeros((2, 3), dtype=complex)), 'real numbers'),
    (dict(q_pids=[1.0, 2.0]), 'q_pids must hold integers'),
    (dict(max_rank=0), 'max_rank'),
    (dict(chunk_size=0), 'chunk_size'),
])
def test_bad_input_is_a_clear_error(arguments, message):
  kwargs = dict(distmat=np.zeros((2, 3), dtype=np.float32), q_pids=[1, 2],
                g_pids=[1, 2, 3], q_camids=[0, 0], g_camids=[1, 1, 1])
  kwargs.update(arguments)
  with pytest.raises(ValueError, match=message):
    evaluate_rank(**kwargs)


@st.composite
def ranking_problems(draw):
  num_query = draw(st.integers(1, 6))
  num_gallery = draw(st.integers(1, 25))
  # Few distinct values make ties common; the dtype picks the code path
  # (float32 bit keys, or ranks for the others).
  dtype = draw(st.sampled_from([np.float32, np.float64, np.int32]))
  values = draw(st.sampled_from([[0, 1, 2], [-2.5, -1.5, -0.0, 0.0, 0.25, 3],
                                 list(np.linspace(0, 1, 50))]))
  if dtype == np.int32:
    values = [int(v) for v in values]
  distmat = np.array(draw(st.lists(st.sampled_from(values),
                                   min_size=num_query * num_gallery,
                                   max_size=num_query * num_gallery)),
                     dtype=dtype).reshape(num_query, num_gallery)
  pids = st.integers(-1, 3)
  cams = st.integers(0, 2)
  q_pids = np.array(draw(st.lists(st.sampled_from([-1, 1, 2, 3]),
                                  min_size=num_query,
                                  max_size=num_query)))
  g_pids = np.array(draw(st.lists(pids, min_size=num_gallery,
                                  max_size=num_gallery)))
  q_camids = np.array(draw(st.lists(cams, min_size=num_query,
                                    max_size=num_query)))
  g_camids = np.array(draw(st.lists(cams, min_size=num_gallery,
                                    max_size=num_gallery)))
  max_rank = draw(st.integers(1, 30))
  chunk_size = draw(st.one_of(st.none(), st.integers(1, 4)))
  return (distmat, q_pids, g_pids, q_camids, g_camids, max_rank, chunk_size)


# DENSE_KEPT_RATIO 1e9 always takes the packed-key path, 1 always sorts rows.
@pytest.mark.parametrize('dense_kept_ratio', [metrics.DENSE_KEPT_RATIO, 10**9,
                                              1])
# Pure numpy, a few milliseconds an example (no deadline: the first
# example pays for imports).
@settings(max_examples=helpers.examples(60), deadline=None)
@given(problem=ranking_problems())
def test_matches_naive_loop(dense_kept_ratio, problem):
  distmat, q_pids, g_pids, q_camids, g_camids, max_rank, chunk_size = problem
  with mock.patch.object(metrics, 'DENSE_KEPT_RATIO', dense_kept_ratio):
    assert_matches_naive(distmat, q_pids, g_pids, q_camids, g_camids,
                         max_rank, chunk_size=chunk_size)


@pytest.mark.parametrize('dense_kept_ratio', [10**9, 1])
def test_matches_naive_loop_on_a_larger_problem(dense_kept_ratio):
  rng = np.random.default_rng(0)
  num_query, num_gallery = 60, 700
  distmat = rng.random((num_query, num_gallery), dtype=np.float32)
  distmat[:, ::7] = 0.5  # a column of equal distances every 7 images
  q_pids = rng.integers(1, 30, num_query)
  g_pids = rng.integers(-1, 30, num_gallery)
  q_camids = rng.integers(0, 6, num_query)
  g_camids = rng.integers(0, 6, num_gallery)
  with mock.patch.object(metrics, 'DENSE_KEPT_RATIO', dense_kept_ratio):
    assert_matches_naive(distmat, q_pids, g_pids, q_camids, g_camids,
                         chunk_size=7)


@pytest.mark.parametrize('dense_kept_ratio', [10**9, 1])
def test_negative_distances_rank_by_value(dense_kept_ratio):
  # Similarities turned into distances can be negative: -3 ranks first.
  with mock.patch.object(metrics, 'DENSE_KEPT_RATIO', dense_kept_ratio):
    result = one_query([-1.0, -2.0, -3.0, 0.5], [1, 2, 3, 1], [1, 1, 1, 1])
  assert result.mAP == pytest.approx((1 / 3 + 2 / 4) / 2)


@pytest.mark.parametrize('dense_kept_ratio', [10**9, 1])
def test_nan_distances_rank_last(dense_kept_ratio):
  distmat = np.array([[np.nan, 0.3, 0.1, np.nan, 0.2]], dtype=np.float32)
  with mock.patch.object(metrics, 'DENSE_KEPT_RATIO', dense_kept_ratio):
    result = evaluate_rank(distmat, [1], [2, 1, 3, 4, 1], [0], [1] * 5)
  assert result.mAP == pytest.approx((1 / 2 + 2 / 3) / 2)
  assert result.mAP == pytest.approx(naive_evaluate(
      distmat, np.array([1]), np.array([2, 1, 3, 4, 1]), np.array([0]),
      np.ones(5, int))[1])


def test_infinite_distances_rank_last():
  result = one_query([np.inf, 0.3, np.inf], [1, 2, 1], [1, 1, 1])
  assert result.mAP == pytest.approx((1 / 2 + 2 / 3) / 2)
