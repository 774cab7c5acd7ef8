"""ResNet topology and the PyTorch-semantics BatchNorm."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from sa_reid_jax.models import BatchNorm, ResNet, ResNet50


def count_params(model, shape):
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
  return sum(leaf.size for leaf in jax.tree.leaves(variables['params']))


def test_resnet50_has_torchvisions_parameter_count():
  assert count_params(ResNet50(num_classes=1000), (1, 224, 224, 3)) == 25_557_032


@pytest.mark.parametrize('last_stride, layer4_hw', [(1, (24, 8)),
                                                    (2, (12, 4))])
def test_feature_map_shapes(last_stride, layer4_hw):
  model = ResNet50(last_stride=last_stride)
  images = jnp.zeros((2, 384, 128, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images))
  outputs = jax.eval_shape(lambda v: model.apply(v, images), variables)
  assert outputs['layer1'].shape == (2, 96, 32, 256)
  assert outputs['layer2'].shape == (2, 48, 16, 512)
  assert outputs['layer3'].shape == (2, 24, 8, 1024)
  assert outputs['layer4'].shape == (2, *layer4_hw, 2048)
  assert 'logits' not in outputs


def test_bfloat16_compute_keeps_float32_params():
  model = ResNet(stage_sizes=(1, 1, 1, 1), base_width=8, dtype=jnp.bfloat16)
  images = jnp.ones((1, 64, 32, 3))
  # Compiled: one program each rather than one per operation.
  variables = jax.jit(model.init)(jax.random.key(0), images)
  assert {l.dtype for l in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  assert jax.jit(model.apply)(variables, images)['layer4'].dtype == jnp.bfloat16


def torch_batch_norm(x_nhwc, scale, bias, mean, var, train):
  bn = torch.nn.BatchNorm2d(x_nhwc.shape[-1], dtype=torch.float64)
  with torch.no_grad():
    bn.weight.copy_(torch.from_numpy(scale))
    bn.bias.copy_(torch.from_numpy(bias))
    bn.running_mean.copy_(torch.from_numpy(mean))
    bn.running_var.copy_(torch.from_numpy(var))
  bn.train(train)
  with torch.no_grad():
    y = bn(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2))
  return (y.permute(0, 2, 3, 1).numpy(), bn.running_mean.numpy(),
          bn.running_var.numpy())


# Float64 BatchNorms on values of order 1-10: each output is a handful of
# operations and statistics over 60 values, so the two computations agree to
# about 1e-15; 1e-12 leaves three orders of margin, while a wrong statistic
# (the biased variance is off by 1/59) or epsilon shows at 1e-3 or more.
FLOAT64_TOLERANCE = dict(rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('train', [True, False])
def test_batch_norm_matches_pytorch(train):
  """Float64 on both sides: the maths agree to float64 rounding."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 5, 4, 6)) * 2 + 1
  scale = rng.uniform(0.5, 1.5, 6)
  bias = rng.normal(size=6)
  mean = rng.normal(size=6)
  var = rng.uniform(0.5, 2, 6)
  variables = {'params': {'scale': scale, 'bias': bias},
               'batch_stats': {'mean': mean, 'var': var}}
  with jax.enable_x64(True):
    y, updated = jax.jit(functools.partial(
        BatchNorm(dtype=jnp.float64).apply, train=train,
        mutable=['batch_stats']))(variables, jnp.asarray(x))
  assert y.dtype == np.float64
  y_ref, mean_ref, var_ref = torch_batch_norm(x, scale, bias, mean, var, train)
  np.testing.assert_allclose(y, y_ref, **FLOAT64_TOLERANCE)
  # In train mode PyTorch folds in the *unbiased* batch variance.
  np.testing.assert_allclose(updated['batch_stats']['mean'], mean_ref,
                             **FLOAT64_TOLERANCE)
  np.testing.assert_allclose(updated['batch_stats']['var'], var_ref,
                             **FLOAT64_TOLERANCE)
  # The float32 BatchNorm the networks run, against the same float64
  # reference: outputs of order 1-10 at float32 resolution (1.2e-7
  # relative) after a mean and variance over 60 values; 1e-5 is ~10x that.
  variables32 = jax.tree.map(lambda v: np.asarray(v, np.float32), variables)
  y32, updated32 = jax.jit(functools.partial(
      BatchNorm().apply, train=train, mutable=['batch_stats']))(
          variables32, jnp.asarray(x, jnp.float32))
  assert y32.dtype == np.float32
  np.testing.assert_allclose(y32, y_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(updated32['batch_stats']['var'], var_ref,
                             rtol=1e-5, atol=1e-5)


def test_synchronised_batch_norm_equals_one_big_batch():
  """Exact in principle (the shards' mean statistics are the batch's): in
  float64 only the order of the sums differs."""
  rng = np.random.default_rng(1)
  with jax.enable_x64(True):
    x = jnp.asarray(rng.normal(size=(8, 3, 2, 4)) + 3)
    batch_norm = BatchNorm(dtype=jnp.float64)
    # Random statistics and affine parameters, so that a misplaced one shows.
    variables = {'params': {'scale': rng.uniform(0.5, 1.5, 4),
                            'bias': rng.normal(size=4)},
                 'batch_stats': {'mean': rng.normal(size=4),
                                 'var': rng.uniform(0.5, 2, 4)}}

    @jax.jit
    def both(variables, x):
      full = batch_norm.apply(variables, x, train=True,
                              mutable=['batch_stats'])

      def per_device(shard):
        return batch_norm.clone(axis_name='data').apply(
            variables, shard, train=True, mutable=['batch_stats'])

      return full, jax.vmap(per_device, axis_name='data')(
          x.reshape(4, 2, 3, 2, 4))

    (y_full, stats_full), (y_split, stats_split) = both(variables, x)
  assert y_full.dtype == np.float64
  np.testing.assert_allclose(y_split.reshape(x.shape), y_full,
                             **FLOAT64_TOLERANCE)
  for name in ('mean', 'var'):
    for device in range(4):
      np.testing.assert_allclose(stats_split['batch_stats'][name][device],
                                 stats_full['batch_stats'][name],
                                 **FLOAT64_TOLERANCE)
