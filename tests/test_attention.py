"""The parameter-free spatial attention against hand-computed values."""

import math

import hypothesis
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sa_reid_jax.models.sanet.attention import apply_spatial_attention
from sa_reid_jax.models.sanet.attention import spatial_attention_map

# One image, a 1x2 map with 2 channels: position 0 holds (1, 3), position 1
# holds (0, 1). Channel sums 4 and 1, channel means 2 and 0.5.
X = np.array([[[[1.0, 3.0], [0.0, 1.0]]]], np.float32)  # (1, 1, 2, 2)


def test_softmax_normalization_by_hand():
  expected = np.array([math.exp(4), math.exp(1)]) / (math.exp(4) + math.exp(1))
  weights = spatial_attention_map(jnp.asarray(X), 'softmax')
  np.testing.assert_allclose(weights[0, 0], expected, rtol=1e-6)


def test_sum_normalization_by_hand():
  weights = spatial_attention_map(jnp.asarray(X), 'sum')
  np.testing.assert_allclose(weights[0, 0], [2.0 / 2.5, 0.5 / 2.5], rtol=1e-6)
  uniform = np.array([[[[1.0, 3.0], [2.0, 2.0]]]], np.float32)  # means 2, 2
  np.testing.assert_allclose(spatial_attention_map(jnp.asarray(uniform), 'sum'),
                             [[[0.5, 0.5]]], rtol=1e-6)


def test_apply_rescales_every_channel_of_a_position():
  attended, weights = apply_spatial_attention(jnp.asarray(X), 'sum')
  np.testing.assert_allclose(attended[0, 0], [[0.8, 2.4], [0.0, 0.2]],
                             rtol=1e-6)
  assert weights.shape == (1, 1, 2)


@pytest.mark.parametrize('normalization', ['softmax', 'sum'])
def test_all_zero_map_gives_uniform_weights_and_finite_gradients(
    normalization):
  x = jnp.zeros((2, 3, 4, 5))
  weights = spatial_attention_map(x, normalization)
  np.testing.assert_allclose(weights, np.full((2, 3, 4), 1 / 12), rtol=1e-6)
  grad = jax.grad(
      lambda x: jnp.sum(apply_spatial_attention(x, normalization)[0]**2 +
                        apply_spatial_attention(x, normalization)[0]))(x)
  assert np.all(np.isfinite(grad))


@pytest.mark.parametrize('normalization', ['softmax', 'sum'])
def test_float32_whatever_the_input_dtype(normalization):
  x = jax.random.uniform(jax.random.key(0), (2, 96, 32, 8)).astype(
      jnp.bfloat16)
  weights = jax.jit(spatial_attention_map, static_argnums=1)(x, normalization)
  assert weights.dtype == jnp.float32
  reference = spatial_attention_map(x.astype(jnp.float32), normalization)
  np.testing.assert_allclose(weights, reference, rtol=1e-6)
  attended, _ = apply_spatial_attention(x, normalization)
  assert attended.dtype == jnp.float32


def test_unknown_normalization_is_rejected():
  with pytest.raises(ValueError, match='softmax'):
    spatial_attention_map(jnp.ones((1, 2, 2, 1)), 'max')


@hypothesis.settings(max_examples=50, deadline=None)
@hypothesis.given(
    x=hnp.arrays(np.float32, st.tuples(st.integers(1, 2), st.integers(1, 5),
                                       st.integers(1, 5), st.integers(1, 4)),
                 elements=st.floats(0, 100, width=32)),
    normalization=st.sampled_from(['softmax', 'sum']))
def test_weights_are_a_distribution_over_positions(x, normalization):
  weights = np.asarray(spatial_attention_map(jnp.asarray(x), normalization))
  assert np.all(weights >= 0)
  np.testing.assert_allclose(weights.sum(axis=(1, 2)), 1.0, rtol=1e-5)
  if normalization == 'sum':
    # Proportional to the channel mean wherever the map is not all zero.
    means = x.mean(axis=-1, dtype=np.float64)
    for b in range(x.shape[0]):
      if means[b].sum() > 0:
        np.testing.assert_allclose(weights[b], means[b] / means[b].sum(),
                                   rtol=1e-4, atol=1e-7)
