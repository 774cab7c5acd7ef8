"""The parameter-free spatial attention against hand-computed values."""

import math

import hypothesis
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from sa_reid_jax.models.sanet.attention import apply_spatial_attention
from sa_reid_jax.models.sanet.attention import spatial_attention_map

# One image, a 1x2 map with 2 channels: position 0 holds (1, 3), position 1
# holds (0, 1). Channel sums 4 and 1, channel means 2 and 0.5.
X = np.array([[[[1.0, 3.0], [0.0, 1.0]]]])  # (1, 1, 2, 2)
# The hand-computed values pass through at most an exp, a sum of two and a
# division: within a few roundings of the exact value, i.e. a few 6e-8 in
# float32 (1e-6 is 8 float32 ulps) and a few 1e-16 in float64.
RTOL = {'float32': 1e-6, 'float64': 1e-14}
dtypes = pytest.mark.parametrize('dtype', sorted(RTOL))


def attention_map(x, normalization, dtype):
  """`spatial_attention_map` of `x` in `dtype`, as a NumPy array."""
  with jax.enable_x64(dtype == 'float64'):
    weights = spatial_attention_map(jnp.asarray(x, dtype), normalization)
    assert weights.dtype == dtype
    return np.asarray(weights)


@dtypes
def test_softmax_normalization_by_hand(dtype):
  expected = np.array([math.exp(4), math.exp(1)]) / (math.exp(4) + math.exp(1))
  weights = attention_map(X, 'softmax', dtype)
  np.testing.assert_allclose(weights[0, 0], expected, rtol=RTOL[dtype])


@dtypes
def test_sum_normalization_by_hand(dtype):
  weights = attention_map(X, 'sum', dtype)
  np.testing.assert_allclose(weights[0, 0], [2.0 / 2.5, 0.5 / 2.5],
                             rtol=RTOL[dtype])
  uniform = np.array([[[[1.0, 3.0], [2.0, 2.0]]]])  # means 2, 2
  np.testing.assert_allclose(attention_map(uniform, 'sum', dtype),
                             [[[0.5, 0.5]]], rtol=RTOL[dtype])


@dtypes
def test_apply_rescales_every_channel_of_a_position(dtype):
  with jax.enable_x64(dtype == 'float64'):
    attended, weights = apply_spatial_attention(jnp.asarray(X, dtype), 'sum')
    attended = np.asarray(attended)
  assert attended.dtype == dtype
  np.testing.assert_allclose(attended[0, 0], [[0.8, 2.4], [0.0, 0.2]],
                             rtol=RTOL[dtype])
  assert weights.shape == (1, 1, 2)


@pytest.mark.parametrize('normalization', ['softmax', 'sum'])
def test_all_zero_map_gives_uniform_weights_and_finite_gradients(
    normalization):
  x = jnp.zeros((2, 3, 4, 5))
  weights = spatial_attention_map(x, normalization)
  # 1/12 in float32: one rounding (6e-8), or exp(0) / 12 (two).
  np.testing.assert_allclose(weights, np.full((2, 3, 4), 1 / 12),
                             rtol=RTOL['float32'])
  grad = jax.grad(
      lambda x: jnp.sum(apply_spatial_attention(x, normalization)[0]**2 +
                        apply_spatial_attention(x, normalization)[0]))(x)
  assert np.all(np.isfinite(grad))


@pytest.mark.parametrize('normalization', ['softmax', 'sum'])
def test_float32_whatever_the_input_dtype(normalization):
  """bfloat16 maps give float32 weights computed in float32: as close to
  the exact weights of the bfloat16 values as float32 allows (bfloat16
  arithmetic, 8 bits, would be 4e-3 off)."""
  x = jax.random.uniform(jax.random.key(0), (2, 96, 32, 8)).astype(
      jnp.bfloat16)
  weights = jax.jit(spatial_attention_map, static_argnums=1)(x, normalization)
  assert weights.dtype == jnp.float32
  exact = attention_map(np.asarray(x, np.float64), normalization, 'float64')
  # A mean of 8 channels, then a sum over 3072 positions (summed pairwise)
  # and a division, or a softmax: within about 2 float32 ulps (2.4e-7).
  np.testing.assert_allclose(weights, exact, rtol=RTOL['float32'])
  attended, _ = apply_spatial_attention(x, normalization)
  assert attended.dtype == jnp.float32


def test_unknown_normalization_is_rejected():
  with pytest.raises(ValueError, match='softmax'):
    spatial_attention_map(jnp.ones((1, 2, 2, 1)), 'max')


# One compiled program per map shape, not one per operation. Each example
# is likely a new shape: 20 in the fast tier, 80 in the full tier.
jitted_map = jax.jit(spatial_attention_map, static_argnums=1)


@hypothesis.settings(max_examples=helpers.examples(20), deadline=None)
@hypothesis.given(
    x=hnp.arrays(np.float32, st.tuples(st.integers(1, 2), st.integers(1, 5),
                                       st.integers(1, 5), st.integers(1, 4)),
                 elements=st.floats(0, 100, width=32)),
    normalization=st.sampled_from(['softmax', 'sum']))
def test_weights_are_a_distribution_over_positions(x, normalization):
  weights = np.asarray(jitted_map(jnp.asarray(x), normalization))
  assert np.all(weights >= 0)
  # Float32 sums of at most 25 weights: at most 25 roundings of 6e-8.
  np.testing.assert_allclose(weights.sum(axis=(1, 2)), 1.0, rtol=1e-5)
  if normalization == 'sum':
    # Proportional to the channel mean wherever the map is not all zero.
    # Float32 against exact maths: a mean of at most 4 channels, a sum of
    # at most 25 means and a division, at most ~30 roundings of 6e-8
    # (measured: 3e-7). Weights of near-zero (subnormal) means keep fewer
    # bits: they are compared in absolute terms.
    means = x.mean(axis=-1, dtype=np.float64)
    for b in range(x.shape[0]):
      if means[b].sum() > 0:
        np.testing.assert_allclose(weights[b], means[b] / means[b].sum(),
                                   rtol=1e-5, atol=1e-7)
