"""Tests of descriptor extraction and of the JAX pairwise distances."""

import functools
import io

import hypothesis
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from sa_reid_jax.evaluation import extract_features
from sa_reid_jax.evaluation import pairwise_distances
from sa_reid_jax.evaluation import re_rank
from sa_reid_jax.models import SANet

IMAGE_SHAPE = (64, 32, 3)
# Float64 descriptors (unit-norm parts, ulp 2.2e-16 at 1) of the same images
# computed in another batch shape may differ only by the order of the
# convolutions' sums: ~1e-16 here, at most a few 1e-14 through these layers.
# Any interaction between batch rows would show at the descriptors' scale.
FLOAT64_ROUNDING = 1e-12


def numpy_distances(a, b, metric):
  a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
  b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
  if metric == 'euclidean':
    return np.sqrt(((a[:, None, :] - b[None, :, :])**2).sum(axis=-1))
  norms_a = np.linalg.norm(a, axis=1)[:, None]
  norms_b = np.linalg.norm(b, axis=1)[None, :]
  return 1 - (a @ b.T) / np.maximum(norms_a * norms_b, 1e-300)


@pytest.mark.parametrize('metric', ['euclidean', 'cosine'])
@pytest.mark.parametrize('shape_a, shape_b, block_size', [
    ((13, 20), (9, 20), 4),
    ((5, 3, 8), (11, 3, 8), 1024),
    ((1, 7), (1, 7), 1),
])
def test_pairwise_distances_match_numpy(metric, shape_a, shape_b, block_size):
  rng = np.random.default_rng(0)
  a = rng.standard_normal(shape_a).astype(np.float32)
  b = rng.standard_normal(shape_b).astype(np.float32)
  result = pairwise_distances(a, b, metric=metric, block_size=block_size)
  assert result.shape == (shape_a[0], shape_b[0])
  assert result.dtype == np.float32
  # float32 against float64: the Euclidean expansion |a|^2 + |b|^2 - 2 a.b
  # cancels ~|a|^2 = 20 (ulp 1.9e-6) down to distances of ~6, and cosine
  # sums 20 products of ulp ~1e-7; both stay within 1e-5.
  np.testing.assert_allclose(result, numpy_distances(a, b, metric),
                             rtol=1e-5, atol=1e-5)


def test_pairwise_distances_of_part_descriptors_flatten_the_parts():
  rng = np.random.default_rng(1)
  parts = rng.standard_normal((6, 4, 16)).astype(np.float32)
  parts /= np.linalg.norm(parts, axis=-1, keepdims=True)
  result = pairwise_distances(jnp.asarray(parts), parts)
  np.testing.assert_allclose(result, pairwise_distances(
      parts.reshape(6, -1), parts.reshape(6, -1)))
  # The distance to itself is zero up to float32 cancellation: |a|^2 = 4
  # (ulp 4.8e-7) cancels to a few ulps, whose square root is ~1e-3.
  assert np.abs(np.diag(result)).max() < 1e-2


def test_cosine_distance_of_a_zero_vector_is_one():
  a = np.zeros((1, 4), dtype=np.float32)
  b = np.eye(4, dtype=np.float32)
  np.testing.assert_allclose(pairwise_distances(a, b, metric='cosine'),
                             np.ones((1, 4)))


def _part_descriptors(count, seed):
  """(count, 6, 32) float32 descriptors, each part L2-normalised (as SANet)."""
  parts = np.random.default_rng(seed).standard_normal(
      (count, 6, 32)).astype(np.float32)
  return parts / np.linalg.norm(parts, axis=-1, keepdims=True)


@pytest.mark.parametrize('metric', ['euclidean', 'cosine'])
def test_distances_of_descriptors_to_themselves_are_not_negative(metric):
  descriptors = _part_descriptors(200, seed=2)
  flat = descriptors.reshape(200, -1)
  unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
  # Unclamped float32 arithmetic goes below zero on this data: without the
  # clamp the check below would fail.
  assert (1 - np.sum(unit * unit, axis=1)).min() < 0
  result = pairwise_distances(descriptors, descriptors, metric)
  assert result.min() >= 0
  # Zero up to float32 cancellation of |a|^2 = 6 (ulp 4.8e-7): Euclidean
  # takes its square root (~1e-3), cosine is within a few ulps of 1 (~1e-7).
  assert np.abs(np.diag(result)).max() < 1e-2


def test_cosine_distance_of_opposite_vectors_is_at_most_two():
  a = _part_descriptors(50, seed=3).reshape(50, -1)
  result = pairwise_distances(a, -a, 'cosine')
  assert result.max() <= 2
  # The distances are float32 by design (no float64 path): the dot product
  # of a 192-value unit vector with its negation is -1 to a few ulps, and 2
  # has an ulp of 2.4e-7 (seen: one ulp); 1e-6 is four ulps.
  np.testing.assert_allclose(np.diag(result), 2, atol=1e-6)


# Each example's new shapes compile the distance kernels (about 0.2 s an
# example on a small CPU; no deadline, as a compilation is slow by nature).
@hypothesis.settings(max_examples=helpers.examples(15), deadline=None)
@hypothesis.given(
    hnp.arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 5)),
               elements=st.floats(-1e3, 1e3, width=32)),
    st.sampled_from(['euclidean', 'cosine']))
def test_distances_are_never_negative(descriptors, metric):
  # Repeated rows and their multiples are where rounding bites.
  both = np.concatenate([descriptors, descriptors, 3 * descriptors])
  result = pairwise_distances(both, both, metric)
  assert np.isfinite(result).all()
  assert result.min() >= 0
  if metric == 'cosine':
    assert result.max() <= 2


def test_cosine_distances_can_be_re_ranked():
  # A query that is also a gallery image: its cosine distance to itself
  # rounded below zero before the clamp, and re_rank refused it.
  gallery = _part_descriptors(40, seed=4)
  query = gallery[:8].copy()
  distances = [pairwise_distances(a, b, 'cosine') for a, b in
               ((query, gallery), (query, query), (gallery, gallery))]
  reranked = re_rank(*distances, k1=5, k2=3)
  assert reranked.shape == (8, 40)
  assert reranked.min() >= 0
  # Each query is nearest to its own copy in the gallery.
  np.testing.assert_array_equal(reranked.argmin(axis=1), np.arange(8))


@pytest.mark.parametrize('arguments, message', [
    (dict(metric='manhattan'), 'metric'),
    (dict(block_size=0), 'block_size'),
    (dict(a=np.zeros(5)), 'a must be'),
    (dict(b=np.zeros((3, 6))), 'differ in size'),
])
def test_pairwise_distances_bad_input(arguments, message):
  kwargs = dict(a=np.zeros((2, 5)), b=np.zeros((3, 5)))
  kwargs.update(arguments)
  with pytest.raises(ValueError, match=message):
    pairwise_distances(**kwargs)


@pytest.fixture(scope='module')
def tiny_model():
  """A small SANet and random variables of the right shapes.

  The variables are drawn directly instead of by `model.init`, whose
  initialisers take tens of seconds to compile on a small CPU.
  """
  model = SANet(num_classes=5, stage_sizes=(1, 1, 1, 1), base_width=8)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1,) + IMAGE_SHAPE))
  rng = np.random.default_rng(0)

  def draw(path, shape):
    name = jax.tree_util.keystr(path)
    if name.endswith("['var']"):
      return rng.uniform(0.5, 1.5, shape.shape).astype(np.float32)
    if name.endswith("['scale']"):
      return rng.uniform(0.8, 1.2, shape.shape).astype(np.float32)
    fan_in = int(np.prod(shape.shape[:-1])) if len(shape.shape) > 1 else 1
    return (rng.standard_normal(shape.shape)
            * np.sqrt(1 / fan_in)).astype(np.float32)

  variables = jax.tree_util.tree_map_with_path(draw, shapes)
  return model, variables


@pytest.fixture
def float64_model(tiny_model):
  """The tiny SANet computing in float64 (x64 on during the test), for the
  properties that hold exactly: batch rows do not interact, a mask only
  drops rows, the flip average is the mean of two passes."""
  model, variables = tiny_model
  with jax.enable_x64():
    yield model.clone(dtype='float64'), jax.tree.map(
        lambda value: np.asarray(value, np.float64), variables)


def images64(count, seed=0):
  return images(count, seed).astype(np.float64)


def images(count, seed=0):
  rng = np.random.default_rng(seed)
  return rng.standard_normal((count,) + IMAGE_SHAPE).astype(np.float32)


def padded_batches(all_images, batch_size):
  """Fixed-size batches; the last one padded with zeros and masked."""
  for start in range(0, len(all_images), batch_size):
    chunk = all_images[start:start + batch_size]
    mask = np.zeros(batch_size, dtype=bool)
    mask[:len(chunk)] = True
    padded = np.zeros((batch_size,) + IMAGE_SHAPE, dtype=all_images.dtype)
    padded[:len(chunk)] = chunk
    yield {'images': padded, 'mask': mask}


def test_padded_batches_give_the_one_batch_descriptors(float64_model):
  model, variables = float64_model
  seven = images64(7)
  apply = jax.jit(functools.partial(model.apply, train=False))
  expected = np.asarray(apply(variables, seven)['features'])
  result = extract_features(model, variables, padded_batches(seven, 3),
                            progress=False)
  # 6 parts of layer4's 256 channels (base width 8, times 8, times 4).
  assert result.shape == expected.shape == (7, 6, 256)
  assert result.dtype == np.float64
  np.testing.assert_allclose(result, expected, rtol=0,
                             atol=FLOAT64_ROUNDING)
  np.testing.assert_allclose(np.linalg.norm(result, axis=-1), 1, rtol=0,
                             atol=FLOAT64_ROUNDING)



def test_float32_padded_batches_match_to_float32_precision(tiny_model):
  """The float32 network users run: the same descriptors, padded or not, to
  float32 precision. Entries of unit-norm parts (|x| <= 1, resolution 6e-8)
  through convolutions whose sums another batch shape orders differently:
  about 1e-7 apart; 1e-5 leaves margin, while rows leaking into each other
  move descriptors by their own scale."""
  model, variables = tiny_model
  seven = images(7)
  expected = np.asarray(jax.jit(functools.partial(
      model.apply, train=False))(variables, seven)['features'])
  result = extract_features(model, variables, padded_batches(seven, 3),
                            progress=False)
  assert result.dtype == np.float32
  np.testing.assert_allclose(result, expected, rtol=0, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(result, axis=-1), 1, rtol=0,
                             atol=1e-5)

def test_masked_rows_anywhere_are_dropped(float64_model):
  model, variables = float64_model
  batch = images64(3, seed=1)
  mask = np.array([True, False, True])
  result = extract_features(model, variables,
                            [{'images': batch, 'mask': mask}], progress=False)
  expected = extract_features(model, variables, [{'images': batch}],
                              progress=False)[mask]
  assert len(result) == 2
  np.testing.assert_allclose(result, expected, rtol=0, atol=FLOAT64_ROUNDING)


def test_flip_averages_the_mirrored_descriptor(float64_model):
  model, variables = float64_model
  batch = images64(3, seed=2)

  def features(x):
    return extract_features(model, variables, [{'images': x}],
                            progress=False)

  mean = (features(batch) + features(batch[:, :, ::-1, :])) / 2
  expected = mean / np.linalg.norm(mean, axis=-1, keepdims=True)
  result = extract_features(model, variables, [{'images': batch}], flip=True,
                            progress=False)
  np.testing.assert_allclose(result, expected, rtol=0, atol=FLOAT64_ROUNDING)
  # Mirroring changes the descriptor (by ~1e-2 here), so this checks the
  # flip is applied.
  assert np.abs(result - features(batch)).max() > 1e-3


def test_progress_lines_when_not_on_a_terminal(tiny_model):
  model, variables = tiny_model
  stream = io.StringIO()
  result = extract_features(model, variables, padded_batches(images(5), 3),
                            total=5, description='gallery',
                            log_interval_s=0.0, stream=stream)
  # The working dtype: float32 descriptors.
  assert result.shape == (5, 6, 256) and result.dtype == np.float32
  lines = stream.getvalue().splitlines()
  assert len(lines) == 3  # one per batch, then the final line
  assert lines[0].startswith('gallery: ') and '3/5 images' in lines[0]
  assert '5/5 images (100%)' in lines[-1] and 'images/s' in lines[-1]
  assert lines[-1].endswith('done')


@pytest.mark.parametrize('batches, message', [
    ([], 'empty'),
    ([np.zeros((2,) + IMAGE_SHAPE)], 'expected a dict'),
    ([{'images': np.zeros(IMAGE_SHAPE)}], 'images must be'),
    ([{'images': np.zeros((2,) + IMAGE_SHAPE), 'mask': np.ones(3, bool)}],
     'mask must be'),
    ([{'images': np.zeros((2,) + IMAGE_SHAPE), 'mask': np.ones(2)}],
     'mask must be bool'),
])
def test_bad_batches_are_a_clear_error(tiny_model, batches, message):
  model, variables = tiny_model
  with pytest.raises(ValueError, match=message):
    extract_features(model, variables, batches, progress=False)


def test_batches_are_split_over_every_local_device(tiny_model, monkeypatch):
  """Each batch's rows go to both of the suite's host devices (an odd batch
  padded with masked rows), and the descriptors equal one device's: float32
  convolutions over half the batch may sum in another order, ~1e-7 on
  unit-norm parts (as above); 1e-5 leaves margin, a misplaced row would
  move a descriptor by its own scale."""
  from sa_reid_jax.evaluation import features  # pylint: disable=g-import-not-at-top
  model, variables = tiny_model
  seen = []
  original = features._descriptors  # pylint: disable=protected-access

  def spy(model, variables, images, flip):
    seen.append((images.shape[0], images.sharding.device_set))
    return original(model, variables, images, flip=flip)

  monkeypatch.setattr(features, '_descriptors', spy)
  five = images(5, seed=3)
  both = extract_features(model, variables, padded_batches(five, 3),
                          progress=False)
  assert seen == [(4, set(jax.local_devices()))] * 2
  assert len(jax.local_devices()) == 2
  seen.clear()
  one = extract_features(model, variables, padded_batches(five, 3),
                         progress=False, devices=jax.local_devices()[:1])
  assert seen == [(3, {jax.local_devices()[0]})] * 2
  assert both.shape == one.shape == (5, 6, 256)
  np.testing.assert_allclose(both, one, rtol=0, atol=1e-5)


def test_two_devices_give_one_devices_descriptors_in_float64(float64_model):
  # Exact up to the order of float64 sums (see FLOAT64_ROUNDING).
  model, variables = float64_model
  seven = images64(7, seed=4)
  both = extract_features(model, variables, padded_batches(seven, 3),
                          flip=True, progress=False)
  one = extract_features(model, variables, padded_batches(seven, 3),
                         flip=True, progress=False,
                         devices=jax.local_devices()[:1])
  np.testing.assert_allclose(both, one, rtol=0, atol=FLOAT64_ROUNDING)
