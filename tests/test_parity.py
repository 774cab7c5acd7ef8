"""Parity of the SA network with a PyTorch reference of the official code.

The reference (`torch_reference.OfficialSANet`) has random weights and
random BN running statistics. A narrow network of the official layout (one
block per stage, base width 8, 16 reduced features, 96x32 images) is
compared in float64 on both sides, where rounding is out of the way and any
difference is one of maths: inference outputs, and the loss, every gradient
and the BN running-stat updates of a train step. The full-size network
(tier ``full``, XLA optimisations on, as users run it) is saved in the
official checkpoint format, converted and compared in float32 and float64.
The command-line converter reads a full-size official checkpoint in both
tiers.
"""

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch.nn import functional as F

import helpers
import sa_reid_jax
from sa_reid_jax.convert import mapping
from sa_reid_jax.models import sanet_variant
from sa_reid_jax.models.resnet import ResNet50
from torch_reference import OfficialSANet, TorchResNet, randomize, to_nhwc

NUM_CLASSES = 40
# Full size, float32: max|delta| <= OUTPUT_BOUND * max|reference|. Float32
# keeps 7 digits; through 50 layers the two frameworks' different summation
# orders leave differences of about 1e-6 of the output's scale.
OUTPUT_BOUND = 1e-4
# Full size, float32 loss: a train-mode step amplifies rounding (see
# test_training_step_float32_is_as_accurate_as_pytorch).
TRAIN_BOUND = 1e-3
# Float64 on both sides, relative to each output's or leaf's scale: rounding
# (2e-16 per operation) through the train-mode BatchNorms reaches about
# 1e-14 of the narrow network's outputs and gradients and 1e-12 of the
# full-size network's; 1e-10 leaves two orders of margin and is far below
# what a float32 step anywhere (1e-7) or any error of maths would give.
FLOAT64_BOUND = 1e-10
# The official sizes, narrowed: layer4 of a 96x32 image is 6x2 (last stride
# 1), one row a stripe, as 24x8 is 4 rows a stripe at 384x128.
NARROW = dict(blocks=(1, 1, 1, 1), base_width=8, num_features=16)
NARROW_SIZE = (96, 32)
# What the official checkpoint holds and the network does not use.
OFFICIAL_UNUSED = (r'base\.fc\..*', r'fusion_conv\.weight',
                   r'.*\.num_batches_tracked')
source_for = functools.partial(mapping.source_for, num_parts=6,
                               backbone_prefix='base.')


def images_for(size, count, seed):
  return torch.randn(count, 3, *size,
                     generator=torch.Generator().manual_seed(seed))


def as_float64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def output_pairs(outputs, reference):
  """{name: (JAX output, PyTorch output)} of every output compared."""
  pairs = {name: (outputs[name], reference[name].detach().numpy())
           for name in ('features', 'part_logits', 'global_logits',
                        'ds_logits')}
  assert set(outputs['attention']) == {'layer1', 'layer2', 'layer3'}
  for stage, ref_map in zip(('layer1', 'layer2', 'layer3'),
                            reference['attention']):
    pairs[f'attention/{stage}'] = (outputs['attention'][stage],
                                   ref_map.detach().numpy())
  return pairs


def summed_cross_entropy(out, labels, cross_entropy):
  """The official loss: the plain sum of the 10 cross-entropies."""
  logits = [out['part_logits'][:, p] for p in range(6)]
  logits += [out['global_logits']]
  logits += [out['ds_logits'][:, s] for s in range(3)]
  return sum(cross_entropy(l, labels) for l in logits)


def jax_cross_entropy(logits, labels):
  log_probs = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], 1))


TRAIN_LABELS = np.array([3, 17])


def torch_train_step(torch_model, images, dtype):
  """Loss, gradients and updated BN statistics of one PyTorch train step
  (dropout off), as float64 arrays by PyTorch name."""
  torch_model = copy.deepcopy(torch_model).to(dtype).train()
  torch_model.drop.p = 0.0
  loss = summed_cross_entropy(torch_model(images.to(dtype)),
                              torch.from_numpy(TRAIN_LABELS), F.cross_entropy)
  loss.backward()
  grads = {n: p.grad.double().numpy()
           for n, p in torch_model.named_parameters() if p.grad is not None}
  stats = {n: b.double().numpy() for n, b in torch_model.named_buffers()
           if 'running_' in n}
  return loss.item(), grads, stats


def jax_train_step(model, variables, images, dtype):
  """The same step in JAX: (loss, grads, updated batch_stats) as float64."""
  model = model.clone(dropout_rate=0.0, dtype=dtype)
  variables = jax.tree.map(lambda v: v.astype(dtype), variables)
  images = jnp.asarray(to_nhwc(images), dtype)

  def loss_fn(params):
    out, mutated = model.apply(
        {'params': params, 'batch_stats': variables['batch_stats']},
        images, train=True, mutable=['batch_stats'])
    loss = summed_cross_entropy(out, jnp.asarray(TRAIN_LABELS),
                                jax_cross_entropy)
    return loss, mutated

  (loss, mutated), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      variables['params'])
  return float(loss), as_float64({'params': grads}), as_float64(mutated)


def check_train_step(what, jax_step, torch_step, bound, record_parity):
  """Loss, every gradient and every BN running-stat update within `bound`."""
  loss, grads, stats = jax_step
  torch_loss, torch_grads, torch_stats = torch_step
  loss_error = abs(loss - torch_loss) / abs(torch_loss)
  record_parity(f'{what}: summed loss', loss_error, bound)
  assert loss_error <= bound
  error, where = helpers.worst_leaf_error(
      grads, helpers.torch_to_flax(torch_grads, grads, source_for))
  record_parity(f'{what}: gradients (worst {where})', error, bound)
  assert error <= bound, where
  error, where = helpers.worst_leaf_error(
      stats, helpers.torch_to_flax(torch_stats, stats, source_for))
  record_parity(f'{what}: BatchNorm running-stat updates', error, bound)
  assert error <= bound, where


# --- a narrow network, float64 on both sides ---------------------------------


@pytest.fixture(scope='module')
def narrow():
  """(PyTorch reference, images, JAX model, variables) of a narrow official
  network; the JAX variables are the reference's, mapped by the converter's
  names and layouts, in float64."""
  torch.manual_seed(0)
  reference = OfficialSANet(NUM_CLASSES, **NARROW)
  randomize(reference, images_for(NARROW_SIZE, 4, seed=1), seed=1)
  images = images_for(NARROW_SIZE, 2, seed=2)
  model = sanet_variant('full', num_classes=NUM_CLASSES,
                        attention_normalization='sum',
                        stage_sizes=NARROW['blocks'],
                        base_width=NARROW['base_width'],
                        num_features=NARROW['num_features'], dtype='float64')
  state = {k: v.double().numpy() for k, v in reference.state_dict().items()}
  with jax.enable_x64(True):
    template = jax.eval_shape(
        lambda x: model.init(jax.random.key(0), x, train=False),
        jax.ShapeDtypeStruct((1, *NARROW_SIZE, 3), jnp.float64))
  variables = helpers.torch_to_flax(state, template, source_for,
                                    skip_patterns=OFFICIAL_UNUSED)
  return reference, images, model, variables


def test_narrow_inference_float64(narrow, record_parity):
  torch_model, images, model, variables = narrow
  with torch.no_grad():
    reference = copy.deepcopy(torch_model).double().eval()(images.double())
  with jax.enable_x64(True):
    outputs = jax.jit(lambda v, x: model.apply(v, x, train=False))(
        variables, jnp.asarray(to_nhwc(images.double())))
    for name, (actual, expected) in output_pairs(outputs, reference).items():
      assert actual.dtype == jnp.float64, name
      assert actual.shape == expected.shape, name
      error = helpers.relative_error(actual, expected)
      record_parity(f'narrow float64 inference {name}', error,
                    FLOAT64_BOUND)
      assert error <= FLOAT64_BOUND, (name, error)


def test_narrow_training_step_float64(narrow, record_parity):
  """Loss, every gradient and the BN updates agree when rounding is
  removed."""
  torch_model, images, model, variables = narrow
  torch_step = torch_train_step(torch_model, images, torch.float64)
  with jax.enable_x64(True):
    jax_step = jax_train_step(model, variables, images, jnp.float64)
  check_train_step('narrow train float64', jax_step, torch_step,
                   FLOAT64_BOUND, record_parity)


# --- the command-line converter on a full-size official checkpoint ----------


def save_official(model, path):
  torch.save({'state_dict': model.state_dict(), 'epoch': 60,
              'best_top1': 0.9}, path)


def test_converter_reads_an_official_checkpoint(cli, tmp_path):
  """The summary counts what was converted and skipped; the model directory
  records the official attention, the classes and the file's metadata."""
  torch.manual_seed(0)
  model = OfficialSANet(NUM_CLASSES)  # PyTorch's own initialisation
  checkpoint = tmp_path / 'checkpoint.pth.tar'
  save_official(model, checkpoint)
  output = tmp_path / 'converted'
  result = cli('convert_weights.py', '--format=sa_official',
               f'--input={checkpoint}', f'--output={output}')
  assert result.returncode == 0, result.stderr
  state = model.state_dict()
  skipped = [k for k in state if k.startswith('base.fc.') or
             k == 'fusion_conv.weight' or k.endswith('num_batches_tracked')]
  assert f'converted {len(state) - len(skipped)} tensors' in result.stdout
  assert f'skipped {len(skipped)} known-unused keys' in result.stdout
  assert f'num_classes={NUM_CLASSES}' in result.stdout
  info = sa_reid_jax.models.store.load_model_info(str(output))
  assert info['config']['attention_normalization'] == 'sum'
  assert info['config']['num_classes'] == NUM_CLASSES
  assert info['metadata']['epoch'] == 60
  assert info['metadata']['format'] == 'sa_official'


# --- the full-size network (tier full) ---------------------------------------


@pytest.fixture(scope='module')
def official(tmp_path_factory):
  """(torch model, images, checkpoint path, converted directory) of the
  full-size official network with random weights and statistics."""
  torch.manual_seed(0)
  directory = tmp_path_factory.mktemp('official')
  model = OfficialSANet(NUM_CLASSES)
  randomize(model, torch.randn(4, 3, 384, 128), seed=1)
  checkpoint = directory / 'checkpoint.pth.tar'
  save_official(model, checkpoint)
  output = directory / 'converted'
  sa_reid_jax.convert.convert_checkpoint('sa_official', str(checkpoint),
                                         str(output))
  images = images_for((384, 128), 2, seed=2)
  return model, images, checkpoint, output


@pytest.mark.full
@pytest.mark.optimized
def test_inference_outputs_match(official, record_parity):
  torch_model, images, _, output = official
  with torch.no_grad():
    reference = torch_model.eval()(images)
  model, variables = sa_reid_jax.load_model(str(output))
  outputs = jax.jit(lambda v, x: model.apply(v, x, train=False))(
      variables, to_nhwc(images))
  for name, (actual, expected) in output_pairs(outputs, reference).items():
    assert actual.shape == expected.shape, name
    error = helpers.relative_error(actual, expected)
    record_parity(f'inference {name}', error, OUTPUT_BOUND)
    assert error <= OUTPUT_BOUND, (name, error)


@pytest.fixture(scope='module')
def torch_float64_step(official):
  torch_model, images, _, _ = official
  return torch_train_step(torch_model, images, torch.float64)


@pytest.mark.full
@pytest.mark.optimized
def test_training_step_matches_in_float64(official, torch_float64_step,
                                          record_parity):
  """Loss, every gradient and the BN updates agree when rounding is removed.

  Float64 on both sides removes rounding, so what remains is any difference
  between the two networks' maths. (In float32 the gradients of this
  randomly initialised 50-layer network in train mode are only accurate to a
  few percent in either framework; see the float32 test below.)
  """
  _, images, _, output = official
  with jax.enable_x64(True):
    model, variables = sa_reid_jax.load_model(str(output))
    jax_step = jax_train_step(model, variables, images, jnp.float64)
  check_train_step('train float64', jax_step, torch_float64_step,
                   FLOAT64_BOUND, record_parity)


def norm_relative_error(actual, reference) -> float:
  return float(np.linalg.norm(actual - reference) / np.linalg.norm(reference))


@pytest.mark.full
@pytest.mark.optimized
def test_training_step_float32_is_as_accurate_as_pytorch(
    official, torch_float64_step, record_parity):
  """Float32: the loss agrees to 1e-3; gradients are as accurate as PyTorch's.

  A float32 train step of this network amplifies rounding: batch statistics
  of one layer shift the next layer's ReLU decisions, so float32 gradients
  differ from the exact (float64) ones by about a percent, in PyTorch as
  much as here. The meaningful float32 check is therefore that our gradients
  are no further from the exact ones than PyTorch's own float32 gradients
  (within a factor 2: the two frameworks' rounding differs in detail).
  """
  torch_model, images, _, output = official
  torch_loss, torch_grads, torch_stats = torch_train_step(
      torch_model, images, torch.float32)
  model, variables = sa_reid_jax.load_model(str(output))
  loss, grads, stats = jax_train_step(model, variables, images, jnp.float32)
  loss_error = abs(loss - torch_loss) / abs(torch_loss)
  record_parity('train float32: summed loss', loss_error, TRAIN_BOUND)
  assert loss_error <= TRAIN_BOUND

  _, exact_grads, exact_stats = torch_float64_step
  exact = helpers.torch_to_flax(exact_grads, grads, source_for)
  torch_error, _ = helpers.worst_leaf_error(
      helpers.torch_to_flax(torch_grads, grads, source_for), exact,
      norm_relative_error)
  jax_error, where = helpers.worst_leaf_error(grads, exact,
                                              norm_relative_error)
  record_parity('train float32: PyTorch gradient error vs float64',
                torch_error, None)
  record_parity(f'train float32: JAX gradient error vs float64 ({where})',
                jax_error, 2 * torch_error)
  assert jax_error <= 2 * torch_error

  exact = helpers.torch_to_flax(exact_stats, stats, source_for)
  torch_error, _ = helpers.worst_leaf_error(
      helpers.torch_to_flax(torch_stats, stats, source_for), exact)
  jax_error, where = helpers.worst_leaf_error(stats, exact)
  record_parity('train float32: JAX BN running-stat error vs float64',
                jax_error, 2 * torch_error)
  assert jax_error <= 2 * torch_error, where


def test_other_file_formats_convert_identically(tmp_path):
  """A legacy (non-zip) torch file, an npz and a safetensors file of the
  same official checkpoint convert to the same variables, bit for bit."""
  torch.manual_seed(0)
  # Full size (the converter reads the official layout only), with
  # PyTorch's own initialisation: the file formats are the point.
  torch_model = OfficialSANet(NUM_CLASSES)
  checkpoint = tmp_path / 'checkpoint.pth.tar'
  save_official(torch_model, checkpoint)
  output = tmp_path / 'converted'
  sa_reid_jax.convert.convert_checkpoint('sa_official', str(checkpoint),
                                         str(output))
  _, expected = sa_reid_jax.load_model(str(output))
  state = torch_model.state_dict()
  legacy = tmp_path / 'legacy.pth.tar'
  torch.save({'state_dict': state, 'epoch': 60}, legacy,
             _use_new_zipfile_serialization=False)
  npz = tmp_path / 'weights.npz'
  np.savez(npz, **{k: v.numpy() for k, v in state.items()})
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  safetensors = tmp_path / 'weights.safetensors'
  save_file({k: v.contiguous() for k, v in state.items()}, str(safetensors))

  for source in (legacy, npz, safetensors):
    converted = tmp_path / f'from_{source.name}'
    sa_reid_jax.convert.convert_checkpoint('sa_official', str(source),
                                           str(converted))
    _, actual = sa_reid_jax.load_model(str(converted))
    jax.tree.map(np.testing.assert_array_equal, actual, expected)


@pytest.mark.full
@pytest.mark.optimized
def test_torchvision_backbone_matches(cli, tmp_path, record_parity):
  torch.manual_seed(3)
  resnet = TorchResNet(last_stride=1)
  randomize(resnet, torch.randn(4, 3, 384, 128), seed=4)
  weights = tmp_path / 'resnet50.pth'
  torch.save(resnet.state_dict(), weights)
  output = tmp_path / 'converted'
  result = cli('convert_weights.py', '--format=torchvision',
               f'--input={weights}', f'--output={output}', '--num_classes=10')
  assert result.returncode == 0, result.stderr
  state = resnet.state_dict()
  unused = [k for k in state if k.startswith('fc.') or
            k.endswith('num_batches_tracked')]
  assert f'converted {len(state) - len(unused)} tensors' in result.stdout
  assert f'skipped {len(unused)} known-unused keys' in result.stdout

  images = images_for((384, 128), 2, seed=5)
  with torch.no_grad():
    reference = resnet.eval().stages(images)[-1].mean(dim=(2, 3)).numpy()
  model, variables = sa_reid_jax.load_model(str(output))
  assert model.num_classes == 10
  backbone = ResNet50(last_stride=1)
  stages = jax.jit(lambda v, x: backbone.apply(v, x, train=False))(
      {'params': variables['params']['backbone'],
       'batch_stats': variables['batch_stats']['backbone']}, to_nhwc(images))
  pooled = jnp.mean(stages['layer4'], axis=(1, 2))
  error = helpers.relative_error(pooled, reference)
  record_parity('torchvision import: pooled layer4 features', error,
                OUTPUT_BOUND)
  assert error <= OUTPUT_BOUND
