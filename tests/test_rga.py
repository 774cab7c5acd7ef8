"""The RGA module and network: hand-checkable maths, sizes, contract, errors."""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
import torch

import sa_reid_jax
from sa_reid_jax.convert import ConversionError, convert_checkpoint
from sa_reid_jax.convert.rga_mapping import rga_source_for
from sa_reid_jax.models import registry
from sa_reid_jax.models.rga import RGA_VARIANTS, RGAModule, RGANet
from sa_reid_jax.models.rga import frozen_parameters, relation_matrix
from sa_reid_jax.models.rga import rga_variant
from sa_reid_jax.models.sanet import SANet
from torch_reference import OfficialSANet
from torch_rga_reference import OfficialRGANet

NARROW = dict(stage_sizes=(1, 1, 1, 1), base_width=16)
NARROW_SIZE = (128, 128)  # the smallest 2^k size where ratio 8 fits


def dot_product_error_bound(terms, unit_roundoff):
  """Higham's bound on the rounding of a dot product of n terms:
  gamma_n * sum |terms|, gamma_n = n u / (1 - n u). It holds on any CPU,
  with fused multiply-adds or without, in any summation order."""
  n = terms.shape[-1]
  return n * unit_roundoff / (1 - n * unit_roundoff) * np.abs(terms).sum(-1)


def test_relation_matrix_is_every_pairwise_dot_product():
  rng = np.random.default_rng(0)
  theta = rng.normal(size=(2, 3, 4)).astype(np.float32)
  phi = rng.normal(size=(2, 3, 4)).astype(np.float32)
  relations = np.asarray(relation_matrix(jnp.asarray(theta, jnp.bfloat16),
                                         jnp.asarray(phi)))
  assert relations.dtype == np.float32
  theta = np.asarray(jnp.asarray(theta, jnp.bfloat16), np.float64)
  with jax.enable_x64(True):
    exact_inputs = np.asarray(relation_matrix(jnp.asarray(theta),
                                              jnp.asarray(phi, np.float64)))
  assert exact_inputs.dtype == np.float64
  for b in range(2):
    for i in range(3):
      for j in range(3):
        # The products of bfloat16 and float32 values are exact in float64.
        terms = np.array([theta[b, i, k] * phi[b, j, k] for k in range(4)])
        expected = terms.sum()
        # Float32 (u = 2^-24) and float64 (u = 2^-53) dot products of 4
        # terms; any wrong pairing is off by the terms' size.
        assert abs(relations[b, i, j] - expected) <= dot_product_error_bound(
            terms, 2.0**-24)
        assert abs(exact_inputs[b, i, j] - expected) <= (
            dot_product_error_bound(terms, 2.0**-53) + 1e-300)


def _naive_bn(v, layer):
  return ((v - layer['stats']['mean']) / np.sqrt(layer['stats']['var'] + 1e-5)
          * layer['params']['scale'] + layer['params']['bias'])


def _naive_embed(vector, layer):
  """relu(BN(vector @ W)) for one node, BN with running statistics."""
  return np.maximum(_naive_bn(vector @ layer['params']['conv']['kernel'],
                              {'params': layer['params']['bn'],
                               'stats': layer['stats']['bn']}), 0)


def _naive_gates(nodes, params, stats, part):
  """The gate of every node, one node at a time, from the description."""
  layer = lambda name: {'params': params[f'{name}_{part}'],
                        'stats': stats[f'{name}_{part}']}
  count = len(nodes)
  theta = [_naive_embed(nodes[i], layer('theta')) for i in range(count)]
  phi = [_naive_embed(nodes[i], layer('phi')) for i in range(count)]
  relation = [[float(np.dot(theta[i], phi[j])) for j in range(count)]
              for i in range(count)]
  head = layer('W')
  gates = []
  for i in range(count):
    # Outgoing relations R[i, :] first, then incoming R[:, i].
    joint = np.array(relation[i] + [relation[j][i] for j in range(count)])
    related = _naive_embed(joint, layer('gg'))
    own = np.mean(_naive_embed(nodes[i], layer('gx')))
    hidden = _naive_embed(np.concatenate([[own], related]),
                          {'params': head['params']['reduce'],
                           'stats': head['stats']['reduce']})
    logit = _naive_bn(hidden @ head['params']['conv']['kernel'],
                      {'params': head['params']['bn'],
                       'stats': head['stats']['bn']})
    gates.append(1 / (1 + np.exp(-logit[0])))
  return np.array(gates)


@pytest.mark.parametrize('part', ['spatial', 'channel'])
def test_module_matches_a_node_by_node_computation(part):
  """A 2x3x8 map (6 positions, 8 channels), ratios 2: the gates and the
  gated map equal a loop over nodes written from the description.

  In float64 on both sides: a few hundred operations on values of order
  1-10 round to about 1e-15; 1e-12 leaves three orders of margin, while
  any error of maths (a transposed relation, a misplaced statistic) is of
  the gates' own size.
  """
  module = RGAModule(spatial=part == 'spatial', channel=part == 'channel',
                     channel_ratio=2, spatial_ratio=2, down_ratio=2,
                     dtype=jnp.float64)
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(0), (1, 2, 3, 8), jnp.float64)
    variables = jax.tree.map(
        lambda v: v.astype(jnp.float64),
        jax.jit(functools.partial(module.init, train=False))(
            jax.random.key(1), x))
    # Random running statistics, so that a misplaced one shows.
    leaves, tree = jax.tree.flatten(variables['batch_stats'])
    keys = jax.random.split(jax.random.key(2), len(leaves))
    variables = {'params': variables['params'], 'batch_stats': tree.unflatten(
        [jax.random.uniform(k, l.shape, jnp.float64, minval=0.5, maxval=1.5)
         for k, l in zip(keys, leaves)])}
    y, gates = jax.tree.map(np.asarray, jax.jit(functools.partial(
        module.apply, train=False))(variables, x))
    variables = jax.tree.map(np.asarray, variables)
  assert set(gates) == {part}
  assert gates[part].dtype == np.float64 and y.dtype == np.float64

  maps = np.asarray(x[0]).reshape(6, 8)  # (positions, channels)
  nodes = maps if part == 'spatial' else maps.T
  expected = _naive_gates(nodes, variables['params'],
                          variables['batch_stats'], part)
  actual = gates[part][0].reshape(-1)
  np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12)
  scale = expected[:, None] if part == 'spatial' else expected[None, :]
  np.testing.assert_allclose(y[0].reshape(6, 8), maps * scale, rtol=1e-12,
                             atol=1e-12)


def added_parameters(name):
  shapes = jax.eval_shape(
      lambda x: rga_variant(name, num_classes=751).init(jax.random.key(0), x),
      jax.ShapeDtypeStruct((1, 256, 128, 3), jnp.float32))
  return sum(x.size for x in jax.tree.leaves(shapes['params']))


def test_parameter_counts_match_the_reference_notes():
  baseline = added_parameters('baseline')
  # torchvision's ResNet-50 without fc, the BNNeck's BN and classifier.
  assert baseline == 23_508_032 + 2 * 2048 + 2048 * 751
  added = {name: added_parameters(name) - baseline
           for name in ('rga_s', 'rga_c', 'rga_sc')}
  # "RGA-SC adds about 6.3 M parameters to ResNet-50 (S 3.2 M, C 3.1 M)".
  assert round(added['rga_sc'] / 1e6, 1) == 6.3
  assert round(added['rga_s'] / 1e6, 1) == 3.2
  assert round(added['rga_c'] / 1e6, 1) == 3.1
  assert added['rga_sc'] == added['rga_s'] + added['rga_c']


def test_module_names_are_the_official_names_and_all_convert():
  shapes = jax.eval_shape(
      lambda x: rga_variant('rga_sc', num_classes=5, image_size=NARROW_SIZE,
                            **NARROW).init(jax.random.key(0), x),
      jax.ShapeDtypeStruct((1, *NARROW_SIZE, 3), jnp.float32))
  module = shapes['params']['backbone']['rga_att3']
  assert set(module) == {f'{n}_{p}' for n in ('gx', 'gg', 'W', 'theta', 'phi')
                         for p in ('spatial', 'channel')}
  assert set(shapes['params']) == {'backbone', 'feat_bn', 'cls'}
  flat = flax.traverse_util.flatten_dict(shapes)
  names = {rga_source_for(path).torch_names[0] for path in flat}
  assert 'backbone.rga_att3.W_channel.3.weight' in names
  assert 'backbone.rga_att1.gg_spatial.1.running_var' in names
  assert 'backbone.layer4.0.downsample.1.weight' in names
  assert len(names) == len(flat)
  # The official network has exactly these names (buffers counted).
  torch_names = {k for k in OfficialRGANet(5, height=128, width=128,
                                           blocks=(1, 1, 1, 1),
                                           base_width=16).state_dict()
                 if not k.endswith('num_batches_tracked')}
  assert names == torch_names


def test_frozen_parameters_are_the_bnneck_bias():
  params = {'feat_bn': {'bias': 0, 'scale': 0}, 'cls': {'kernel': 0},
            'backbone': {'bn1': {'bias': 0}}}
  assert frozen_parameters(params) == {
      'feat_bn': {'bias': True, 'scale': False}, 'cls': {'kernel': False},
      'backbone': {'bn1': {'bias': False}}}


def random_variables(model, seed):
  """He-normal kernels, BN scale 1 and bias 0, running statistics (0, 1).

  Drawn with numpy from the variables' shapes: compiling `model.init` (the
  random initialisers of every layer) takes XLA far longer on CPU than the
  forward pass itself.
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x),
      jax.ShapeDtypeStruct((1, *model.image_size, 3), jnp.float32))

  def draw(path, leaf):
    name = path[-1]
    if name == 'kernel':
      fan_in = int(np.prod(leaf.shape[:-1]))
      return rng.normal(0, np.sqrt(2 / fan_in), leaf.shape).astype(np.float32)
    fill = 1.0 if name in ('scale', 'var') else 0.0
    return np.full(leaf.shape, fill, np.float32)

  return flax.traverse_util.path_aware_map(draw, shapes)


@pytest.fixture(scope='module')
def narrow_outputs():
  """A narrow RGA-SC's outputs: float32, with the post-BN descriptor, and
  in bfloat16, from one compiled function (the three share the weights)."""
  model = rga_variant('rga_sc', num_classes=7, image_size=NARROW_SIZE,
                      **NARROW)
  images = jax.random.normal(jax.random.key(3), (2, *NARROW_SIZE, 3))
  variables = random_variables(model, seed=4)

  @jax.jit
  def run(v, x):
    return (model.apply(v, x),
            model.clone(descriptor='post_bn').apply(v, x),
            model.clone(dtype='bfloat16').apply(v, x))

  return run(variables, images)


def test_outputs_follow_the_contract(narrow_outputs):
  out, post_bn, _ = narrow_outputs
  assert out['features'].shape == (2, 1, 512)
  assert out['global_logits'].shape == (2, 7)
  for name in ('global_features', 'bn_features'):
    assert out[name].shape == (2, 512) and out[name].dtype == jnp.float32
  assert set(out['attention']) == {f'{p}{i}' for p in ('spatial', 'channel')
                                   for i in range(1, 5)}
  assert out['attention']['spatial2'].shape == (2, 16, 16)
  assert out['attention']['channel4'].shape == (2, 512)
  np.testing.assert_array_equal(out['embeddings']['global'],
                                out['global_features'])
  np.testing.assert_array_equal(out['embeddings']['bn'], out['bn_features'])
  for descriptor, outputs, source in (('pre_bn', out, 'global_features'),
                                      ('post_bn', post_bn, 'bn_features')):
    # Float32: a norm of 512 squares and the division by it round to a few
    # 1e-7; 1e-5 tells the normalised descriptor from any other.
    norm = np.linalg.norm(outputs[source], axis=-1, keepdims=True)
    np.testing.assert_allclose(outputs['features'][:, 0],
                               outputs[source] / norm, rtol=1e-5,
                               err_msg=descriptor)


def test_bfloat16_is_finite_and_close_to_float32(narrow_outputs):
  out, _, low = narrow_outputs
  for name in ('features', 'global_features', 'bn_features', 'global_logits'):
    assert low[name].dtype == jnp.float32, name
    assert np.all(np.isfinite(low[name])), name
  for name, gate in low['attention'].items():
    assert gate.dtype == jnp.float32
    # bfloat16 keeps 3 significant digits: a loose bound on the gates.
    np.testing.assert_allclose(gate, out['attention'][name], atol=0.05,
                               err_msg=name)
  # bfloat16's rounding (4e-3) through five stages: descriptors a few
  # degrees apart at most.
  cosine = np.sum(low['features'] * out['features'], axis=-1)
  assert np.all(cosine > 0.99), cosine


def test_wrong_sizes_are_one_clear_error():
  probe = lambda model, size: jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x),
      jax.ShapeDtypeStruct((1, *size, 3), jnp.float32))
  with pytest.raises(ValueError, match='images are 128x64 but this RGA '
                     'network is built for image_size 256x128'):
    probe(RGANet(num_classes=3), (128, 64))
  with pytest.raises(ValueError, match=r'^config\.model\.down_ratio: RGA '
                     r'module on a 8x4x512 feature map: the spatial attention '
                     r'head \(\(1 \+ 4\) // 8\) has no channels; the input '
                     'image is too small for down_ratio=8'):
    probe(RGANet(num_classes=3, image_size=(64, 32)), (64, 32))


def test_config_round_trip_and_family_dispatch():
  model = rga_variant('rga_s', num_classes=9, image_size=(384, 128),
                      dtype='bfloat16', **NARROW)
  config = registry.describe(model)['config']
  assert config['image_size'] == [384, 128]
  description = registry.describe(model)
  assert description == {'family': 'rga', 'config': config}
  rebuilt = registry.rebuild(description, 'model.json')
  assert isinstance(rebuilt, RGANet) and rebuilt == model
  assert registry.describe(rebuilt) == description
  # A directory written before families were recorded holds an SANet.
  assert isinstance(registry.rebuild({'config': {'num_classes': 3}},
                                     'model.json'), SANet)
  with pytest.raises(ValueError, match=r"model.json: unknown model config "
                     r"keys \['num_parts'\]"):
    registry.rebuild({'family': 'rga',
                      'config': {**config, 'num_parts': 6}}, 'model.json')
  with pytest.raises(ValueError, match="model.json: model family 'casn'"):
    registry.rebuild({'family': 'rga',
                      'config': {**config, 'family': 'casn'}}, 'model.json')
  assert set(RGA_VARIANTS) == {'rga_s', 'rga_c', 'rga_sc', 'baseline'}
  with pytest.raises(ValueError, match="unknown RGA variant 'rga_x'"):
    rga_variant('rga_x', num_classes=3)


def test_embed_is_the_features_output_of_every_family():
  images = jax.random.normal(jax.random.key(5), (2, *NARROW_SIZE, 3))
  sanet = SANet(num_classes=3, stage_sizes=(1, 1, 1, 1), base_width=4)
  rga = rga_variant('rga_sc', num_classes=3, image_size=NARROW_SIZE,
                    **NARROW)
  for model, variables, shape in (
      (sanet, sanet.init(jax.random.key(1), images), (2, 6, 128)),
      (rga, random_variables(rga, seed=6), (2, 1, 512))):
    embedded = jax.jit(functools.partial(registry.embed, model))(
        variables, images)
    outputs = jax.jit(functools.partial(model.apply, train=False))(
        variables, images)
    assert embedded.shape == shape
    assert embedded.dtype == jnp.float32
    np.testing.assert_array_equal(embedded, outputs['features'])


def narrow_state(spatial, channel, size=(256, 128)):
  torch.manual_seed(0)
  return OfficialRGANet(6, spatial, channel, *size, blocks=(1, 1, 1, 1),
                        base_width=16).state_dict()


def test_baseline_checkpoint_converts_to_rga_with_both_parts_off(tmp_path):
  state = narrow_state(False, False)
  path = tmp_path / 'bot.pth.tar'
  torch.save({'state_dict': state, 'epoch': 1, 'best_top1': 0.5}, path)
  result = convert_checkpoint('rga_official', str(path), str(tmp_path / 'out'))
  assert 'RGA parts: none (BNNeck baseline)' in result.summary()
  model, variables = sa_reid_jax.load_model(str(tmp_path / 'out'))
  assert (model.spatial, model.channel) == (False, False)
  np.testing.assert_array_equal(variables['params']['cls']['kernel'],
                                state['cls.weight'].numpy().T)
  np.testing.assert_array_equal(variables['batch_stats']['feat_bn']['var'],
                                state['feat_bn.running_var'].numpy())


def test_wrong_format_files_are_refused(tmp_path):
  sa_file = tmp_path / 'sa.pth.tar'
  torch.save({'state_dict': OfficialSANet(num_classes=4).state_dict()},
             sa_file)
  with pytest.raises(ConversionError) as error:
    convert_checkpoint('rga_official', str(sa_file), str(tmp_path / 'out'))
  # Recognised as the other official format, which the message names.
  assert str(error.value) == (
      f'{sa_file} is a checkpoint of the official SA code, not a checkpoint '
      'of the official RGA code (--format=rga_official): use '
      '--format=sa_official')
  rga_file = tmp_path / 'rga.pth.tar'
  torch.save(narrow_state(True, False), rga_file)
  with pytest.raises(ConversionError, match='--image_size applies to '
                     '--format=rga_official only'):
    convert_checkpoint('sa_official', str(rga_file), str(tmp_path / 'out'),
                       image_size=(256, 128))
  assert not (tmp_path / 'out').exists()


def test_size_mismatch_is_one_line_naming_the_flag_and_the_size(cli,
                                                                tmp_path):
  path = tmp_path / 'rga.pth.tar'
  torch.save({'state_dict': narrow_state(True, True)}, path)
  result = cli('convert_weights.py', '--format=rga_official', f'--input={path}',
               '--image_size=192,96', f'--output={tmp_path / "out"}')
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  line = (f'convert_weights.py: error: --image_size=192,96 does not match '
          f'{path}: its RGA modules were built for 2048 positions after '
          'layer1 ((H/4) x (W/4)), i.e. --image_size=256,128 at the same '
          'aspect ratio; this size gives 1152')
  assert line in result.stderr.splitlines()
  assert not (tmp_path / 'out').exists()


def test_evaluation_overrides_and_the_input_size_check():
  model = rga_variant('rga_sc', num_classes=7, image_size=NARROW_SIZE,
                      **NARROW)
  post = registry.with_overrides(model, {'descriptor': 'post_bn'})
  assert post.descriptor == 'post_bn' and model.descriptor == 'pre_bn'
  assert registry.with_overrides(model, {}) is model
  with pytest.raises(ValueError, match=r'--config.model.base_width: the '
                     r'network is read from the model directory; only '
                     r'descriptor, dtype'):
    registry.with_overrides(model, {'base_width': 8})
  with pytest.raises(ValueError, match='--config.model.descriptor: a sanet '
                     'network has no descriptor'):
    registry.with_overrides(SANet(num_classes=3), {'descriptor': 'post_bn'})
  registry.check_input_size(model, NARROW_SIZE, '--image_size')
  registry.check_input_size(SANet(num_classes=3), (64, 32), '--image_size')
  with pytest.raises(ValueError, match=r'--image_size: 256x128, but this rga '
                     r'network is built for 128x128'):
    registry.check_input_size(model, (256, 128), '--image_size')


def _bn_scales(params, inside):
  """The BatchNorm scales (BatchNorm modules are named 'bn' in the RGA
  modules, 'bn1'.. 'downsample_bn' and 'feat_bn' elsewhere) of the
  top-level groups `inside` selects, concatenated."""
  flat = flax.traverse_util.flatten_dict(jax.device_get(params))
  return np.concatenate([
      np.ravel(value) for path, value in sorted(flat.items())
      if path[-1] == 'scale' and inside(path)] or [np.zeros(0)])


def test_module_batch_norm_scales_start_as_the_official_codes():
  """'uniform': U(0, 1), torch 0.4.0's BatchNorm2d weight default, which
  the official RGA code ran on; 'ones': later PyTorch's. The backbone's
  and the BNNeck's scales start at 1 either way (the official init code
  resets feat_bn; the backbone comes from ImageNet)."""
  model = RGANet(num_classes=5, image_size=(64, 32), stage_sizes=(1, 1, 1, 1),
                 base_width=8, channel_ratio=2, spatial_ratio=2,
                 down_ratio=2, module_bn_scale_init='uniform')
  images = jnp.zeros((1, 64, 32, 3))
  init = jax.jit(model.init)
  params = init(jax.random.key(0), images)['params']
  in_module = lambda path: path[1].startswith('rga_att')
  scales = _bn_scales(params, in_module)
  # 4 modules x 2 parts x 5 BatchNorms, tens to hundreds of values.
  assert scales.size > 200
  assert 0 <= scales.min() and scales.max() < 1
  # A right initialiser fails this one time in a thousand.
  assert stats.kstest(scales, 'uniform').pvalue > 1e-3
  others = _bn_scales(params, lambda path: not in_module(path))
  assert others.size and np.all(others == 1)
  # 'ones', on one module alone (a network init compiles for seconds).
  module = RGAModule(channel_ratio=2, spatial_ratio=2, down_ratio=2,
                     bn_scale_init='ones')
  ones = jax.jit(functools.partial(module.init, train=False))(
      jax.random.key(0), jnp.zeros((1, 8, 4, 16)))['params']
  assert np.all(_bn_scales({'m': ones}, lambda path: True) == 1)
  with pytest.raises(ValueError, match=r"config.model.module_bn_scale_init "
                     r"must be one of \['ones', 'uniform'\], got 'normal'"):
    model.clone(module_bn_scale_init='normal').init(jax.random.key(0),
                                                     images)
  rebuilt = registry.rebuild(registry.describe(model), 'model.json')
  assert rebuilt.module_bn_scale_init == 'uniform'
