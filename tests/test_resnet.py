"""ResNet topology and the PyTorch-semantics BatchNorm."""

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
  variables = model.init(jax.random.key(0), images)
  assert {l.dtype for l in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  assert model.apply(variables, images)['layer4'].dtype == jnp.bfloat16


def torch_batch_norm(x_nhwc, scale, bias, mean, var, train):
  bn = torch.nn.BatchNorm2d(x_nhwc.shape[-1])
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


@pytest.mark.parametrize('train', [True, False])
def test_batch_norm_matches_pytorch(train):
  rng = np.random.default_rng(0)
  x = (rng.normal(size=(3, 5, 4, 6)) * 2 + 1).astype(np.float32)
  scale = rng.uniform(0.5, 1.5, 6).astype(np.float32)
  bias = rng.normal(size=6).astype(np.float32)
  mean = rng.normal(size=6).astype(np.float32)
  var = rng.uniform(0.5, 2, 6).astype(np.float32)
  variables = {'params': {'scale': scale, 'bias': bias},
               'batch_stats': {'mean': mean, 'var': var}}
  y, updated = BatchNorm().apply(variables, jnp.asarray(x), train=train,
                                 mutable=['batch_stats'])
  y_ref, mean_ref, var_ref = torch_batch_norm(x, scale, bias, mean, var, train)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  # In train mode PyTorch folds in the *unbiased* batch variance.
  np.testing.assert_allclose(updated['batch_stats']['mean'], mean_ref,
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(updated['batch_stats']['var'], var_ref,
                             rtol=1e-6, atol=1e-6)


def test_synchronised_batch_norm_equals_one_big_batch():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(8, 3, 2, 4)).astype(np.float32) + 3)
  variables = BatchNorm().init(jax.random.key(0), x, train=False)
  y_full, stats_full = BatchNorm().apply(variables, x, train=True,
                                         mutable=['batch_stats'])

  def per_device(shard):
    return BatchNorm(axis_name='data').apply(variables, shard, train=True,
                                             mutable=['batch_stats'])

  y_split, stats_split = jax.vmap(per_device, axis_name='data')(
      x.reshape(4, 2, 3, 2, 4))
  np.testing.assert_allclose(y_split.reshape(x.shape), y_full, rtol=1e-5,
                             atol=1e-6)
  for name in ('mean', 'var'):
    for device in range(4):
      np.testing.assert_allclose(stats_split['batch_stats'][name][device],
                                 stats_full['batch_stats'][name], rtol=1e-5)
