"""SANet's output contract, variants, dtypes and the model directory."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
import torch

import sa_reid_jax
from sa_reid_jax.models import VARIANTS, SANet, registry
from sa_reid_jax.models import sanet_variant
from sa_reid_jax.models.sanet import stripe_pool

NUM_CLASSES = 7
# A small backbone: the contract does not depend on the network's size.
tiny = functools.partial(sanet_variant, num_classes=NUM_CLASSES,
                         stage_sizes=(1, 1, 1, 1), base_width=4)
IMAGES = jax.random.normal(jax.random.key(0), (2, 96, 32, 3))


@functools.lru_cache(maxsize=None)
def init(name):
  model = tiny(name)
  return model, model.init(jax.random.key(1), IMAGES)


@pytest.mark.parametrize('name', sorted(VARIANTS))
def test_outputs_of_every_variant(name):
  model, variables = init(name)
  out = model.apply(variables, IMAGES, train=False)
  parts = model.num_parts
  assert out['features'].shape == (2, parts, 16 * 4 * 2)
  # Float32: a norm of 128 squares and the division by it round to a few
  # 1e-7; 1e-5 tells unit vectors from any other scaling.
  np.testing.assert_allclose(jnp.linalg.norm(out['features'], axis=-1), 1.0,
                             rtol=1e-5)
  assert out['global_logits'].shape == (2, NUM_CLASSES)
  assert ('part_logits' in out) == (parts > 1)
  if parts > 1:
    assert out['part_logits'].shape == (2, parts, NUM_CLASSES)
  assert ('ds_logits' in out) == model.deep_supervision
  if model.deep_supervision:
    assert out['ds_logits'].shape == (2, 3, NUM_CLASSES)
  expected_maps = {'layer1': (24, 8), 'layer2': (12, 4), 'layer3': (6, 2)}
  stages = [s for s in expected_maps if model.ds_attention]
  if model.backbone_attention:
    stages.append('layer4')
    expected_maps['layer4'] = (6, 2)
  assert sorted(out['attention']) == sorted(stages)
  for stage in stages:
    assert out['attention'][stage].shape == (2, *expected_maps[stage])
    # Float32 sums of up to 192 weights: at most ~192 roundings of 6e-8 of
    # the total, about 1e-5 at worst, 1e-6 in practice.
    np.testing.assert_allclose(out['attention'][stage].sum(axis=(1, 2)), 1.0,
                               rtol=1e-5)


def test_table2_variants_differ_only_in_their_switches():
  assert VARIANTS['full'] == dict(num_parts=6, deep_supervision=True,
                                  ds_attention=True, backbone_attention=False)
  assert len({tuple(sorted(v.items())) for v in VARIANTS.values()}) == 8


def test_reductions_are_initialised_as_the_official_code():
  """DS reductions: PyTorch's default conv init; part reduction: He fan-out.

  PyTorch's default (kaiming_uniform, a = sqrt(5)) is U(-b, b) with
  b = 1 / sqrt(fan_in); the official code keeps it for local_conv_layer1-3
  and gives local_conv Kaiming normal with fan-out (std sqrt(2 / fan_out)).
  """
  params = init('full')[1]['params']
  torch.manual_seed(0)
  for i in (1, 2, 3):
    kernel = np.asarray(params[f'ds_reduce{i}']['kernel']).ravel()
    fan_in = params[f'ds_reduce{i}']['kernel'].shape[0]
    bound = 1 / np.sqrt(fan_in)
    # >= 4096 values: the largest comes within 2% of the bound for sure.
    assert 0.98 * bound < np.abs(kernel).max() <= bound
    # The standard deviation of >= 4096 draws is within 2% of its value
    # (standard error 1.1% for a uniform); 5% is over four standard errors.
    assert abs(kernel.std() / (bound / np.sqrt(3)) - 1) < 0.05
    # Kolmogorov-Smirnov tests: a right initialiser fails one in a thousand.
    uniform = stats.kstest(kernel, 'uniform', args=(-bound, 2 * bound))
    assert uniform.pvalue > 1e-3
    conv = torch.nn.Conv2d(fan_in, 256, 1, bias=False)  # PyTorch's own init
    reference = conv.weight.detach().numpy().ravel()
    assert stats.ks_2samp(kernel, reference).pvalue > 1e-3
  kernel = np.asarray(params['part_reduce']['kernel'])
  std = np.sqrt(2 / kernel.shape[1])
  # 128 x 256 normal draws: standard error of the standard deviation 0.4%.
  assert abs(kernel.std() / std - 1) < 0.02
  assert stats.kstest(kernel.ravel(), 'norm', args=(0, std)).pvalue > 1e-3


def test_backbone_attention_changes_the_descriptor():
  model, variables = init('backbone_p_ds_sa2')
  with_sa1 = model.clone(backbone_attention=True)
  plain = model.apply(variables, IMAGES)['features']
  attended = with_sa1.apply(variables, IMAGES)['features']
  # A change far above float32 rounding (1e-7 of these unit vectors).
  assert not np.allclose(plain, attended, atol=1e-4)


def test_train_mode_uses_dropout_and_batch_statistics():
  model, variables = init('full')
  with pytest.raises(Exception, match='dropout'):
    model.apply(variables, IMAGES, train=True, mutable=['batch_stats'])
  outs = [model.apply(variables, IMAGES, train=True, mutable=['batch_stats'],
                      rngs={'dropout': jax.random.key(seed)})
          for seed in (0, 1)]
  (out_a, stats), (out_b, _) = outs
  assert not np.allclose(out_a['global_logits'], out_b['global_logits'])
  # Running statistics moved towards the batch statistics.
  before = variables['batch_stats']['part_bn']['mean']
  assert not np.allclose(stats['batch_stats']['part_bn']['mean'], before)
  # Without dropout the descriptor does not depend on the rng.
  np.testing.assert_array_equal(out_a['features'], out_b['features'])


def test_bfloat16_compute_stays_close_to_float32():
  model, variables = init('full')
  reference = model.apply(variables, IMAGES)
  out = model.clone(dtype='bfloat16').apply(variables, IMAGES)
  for name in ('features', 'global_logits', 'part_logits', 'ds_logits'):
    assert out[name].dtype == jnp.float32, name
    # bfloat16 keeps 8 significant bits (relative rounding 4e-3) through
    # the backbone's stages: within a few percent of the outputs' scale.
    scale = np.abs(reference[name]).max()
    assert np.abs(out[name] - reference[name]).max() <= 0.05 * scale, name
  assert out['attention']['layer1'].dtype == jnp.float32


@pytest.mark.parametrize('height', [24, 16, 7, 6])
def test_stripe_pool_matches_torch_adaptive_pooling(height):
  """The same bins and means as PyTorch's: in float64 on both sides, the
  means of at most 15 values agree to float64 rounding (1e-16 of values of
  order 1; 1e-14 leaves two orders of margin)."""
  x = np.random.default_rng(0).normal(size=(2, height, 3, 5))
  reference = torch.nn.AdaptiveAvgPool2d((6, 1))(
      torch.from_numpy(x).permute(0, 3, 1, 2))[..., 0].permute(0, 2, 1)
  with jax.enable_x64(True):
    pooled = np.asarray(stripe_pool(jnp.asarray(x), 6))
  assert pooled.dtype == np.float64
  np.testing.assert_allclose(pooled, reference.numpy(), rtol=1e-14,
                             atol=1e-14)
  # The float32 pooling the network runs: means of at most 15 values of
  # order 1 round to a few 6e-8; 1e-6 is over ten times that.
  pooled32 = np.asarray(stripe_pool(jnp.asarray(x, jnp.float32), 6))
  assert pooled32.dtype == np.float32
  np.testing.assert_allclose(pooled32, reference.numpy(), rtol=1e-6,
                             atol=1e-6)


def test_config_round_trip_and_bad_keys():
  model = tiny('backbone_ds_sa2', dtype=jnp.bfloat16,
               attention_normalization='sum')
  config = registry.describe(model)['config']
  assert config['dtype'] == 'bfloat16'
  rebuilt = registry.rebuild({'family': 'sanet', 'config': config},
                            'model.json')
  assert registry.describe(rebuilt)['config'] == config
  with pytest.raises(ValueError, match=r"model.json: unknown model config "
                     r"keys \['num_stripes'\]"):
    registry.rebuild({'family': 'sanet',
                      'config': {**config, 'num_stripes': 6}}, 'model.json')


@pytest.mark.parametrize('field, value', [('dtype', 'float16'),
                                          ('attention_normalization', 'max'),
                                          ('num_parts', 0)])
def test_invalid_settings_are_named(field, value):
  model = tiny('full').clone(**{field: value})
  with pytest.raises(ValueError, match=field):
    model.init(jax.random.key(0), IMAGES)


def test_unknown_variant_is_named():
  with pytest.raises(ValueError, match="'sa3'"):
    sanet_variant('sa3', num_classes=3)


def test_save_and_load_model(tmp_path):
  model, variables = init('backbone_p_ds_sa1_sa2')
  sa_reid_jax.save_model(str(tmp_path / 'model'), model, variables,
                         {'note': 'test'})
  loaded, restored = sa_reid_jax.load_model(str(tmp_path / 'model'))
  assert loaded == model
  jax.tree.map(np.testing.assert_array_equal, restored, variables)
  with pytest.raises(ValueError, match='already exists'):
    sa_reid_jax.save_model(str(tmp_path / 'model'), model, variables)


def test_load_model_errors_name_the_directory(tmp_path):
  with pytest.raises(ValueError, match='nowhere: no such model directory'):
    sa_reid_jax.load_model(str(tmp_path / 'nowhere'))
  (tmp_path / 'empty').mkdir()
  # An empty directory and a foreign one each get a line saying what to pass.
  with pytest.raises(ValueError, match='empty: empty; expected a model '
                     'directory'):
    sa_reid_jax.load_model(str(tmp_path / 'empty'))
  (tmp_path / 'foreign').mkdir()
  (tmp_path / 'foreign' / 'notes.txt').write_text('not a model')
  with pytest.raises(ValueError, match='foreign: not a model directory'):
    sa_reid_jax.load_model(str(tmp_path / 'foreign'))
