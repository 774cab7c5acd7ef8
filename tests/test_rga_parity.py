"""Parity of the RGA network with a PyTorch reference of the official code.

The reference has random weights and random BN running statistics, is saved
as an official checkpoint and converted by the converter. RGA-S, RGA-C and
an RGA-SC training step use a narrow ResNet (one block per stage, width 16)
at 192x96 in float64, where rounding is out of the way and any difference is
one of maths; the command-line converter reads a narrow checkpoint. The
full-size RGA-SC network is checked at the official 256x128 in float32 (tier
``full``, XLA optimisations on, as users run it).
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch.nn import functional as F

import sa_reid_jax
from sa_reid_jax.convert import convert_checkpoint
from sa_reid_jax.convert.rga_mapping import rga_source_for
from helpers import relative_error, torch_to_flax, worst_leaf_error
from torch_reference import to_nhwc
from torch_rga_reference import random_official_checkpoint

NUM_CLASSES = 12
# Full size, float32: within 1e-4 of the exact (float64) outputs' scale, or
# twice PyTorch's own float32 error (see test_full_rga_sc_inference_float32).
OUTPUT_BOUND = 1e-4
# Float64 on both sides, relative to each output's or leaf's scale. The RGA
# modules amplify rounding (their BatchNorms subtract means far larger than
# the spread around them, about tenfold a module), so float64's 2e-16
# reaches about 1e-13 in the outputs and 1e-10 in the gradients of the first
# module's head; 1e-8 leaves two orders of margin and is still far below
# what a float32 step anywhere (1e-7, amplified alike) or an error of maths
# would give.
FLOAT64_BOUND = 1e-8
NARROW = dict(blocks=(1, 1, 1, 1), base_width=16)
NARROW_SIZE = (192, 96)
# The official recipe's loss: label smoothing 0.1, triplet margin 0.3.
LABEL_SMOOTHING = 0.1
MARGIN = 0.3


def images_for(size, count, seed):
  return torch.randn(count, 3, *size,
                     generator=torch.Generator().manual_seed(seed))


def reference_outputs(torch_model, images):
  with torch.no_grad():
    out = torch_model.eval()(images)
  pairs = {'feat_': out['feat_'], 'feat': out['feat'], 'logits': out['logits']}
  pairs.update({f'attention/{k}': g for k, g in out['gates'].items()})
  return {k: v.double().numpy() for k, v in pairs.items()}


def jax_outputs(model, variables, images):
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables,
                                                            images)
  pairs = {'feat_': out['global_features'], 'feat': out['bn_features'],
           'logits': out['global_logits']}
  pairs.update({f'attention/{k}': g for k, g in out['attention'].items()})
  return {k: np.asarray(v, np.float64) for k, v in pairs.items()}


@pytest.fixture(scope='module')
def full_sc(tmp_path_factory):
  """Full ResNet-50 RGA-SC at 256x128, converted.

  Returns (state dict, images, model directory, converter summary,
  PyTorch float32 outputs, PyTorch float64 outputs).
  """
  directory = tmp_path_factory.mktemp('rga_sc')
  images = images_for((256, 128), 2, seed=2)
  # The statistics are drawn around the activations of the test images and
  # six others (see calibrate_in_eval_mode).
  calibration = torch.cat([images, images_for((256, 128), 6, seed=3)])
  checkpoint = directory / 'checkpoint.pth.tar'
  model = random_official_checkpoint(checkpoint, NUM_CLASSES, calibration)
  output = directory / 'converted'
  summary = convert_checkpoint('rga_official', str(checkpoint),
                               str(output)).summary()
  return (model.state_dict(), images, output, summary,
          reference_outputs(model, images),
          reference_outputs(model.double(), images.double()))


def check_official_layout(state, output, summary, image_size):
  """The converter's summary and model directory for an official RGA-SC."""
  skipped = [k for k in state if k.endswith('num_batches_tracked')]
  assert f'converted {len(state) - len(skipped)} tensors' in summary
  assert f'skipped {len(skipped)} known-unused keys' in summary
  assert (f'num_classes={NUM_CLASSES}, RGA parts: spatial+channel, '
          f'image_size={image_size[0]}x{image_size[1]}') in summary
  info = sa_reid_jax.models.store.load_model_info(str(output))
  assert info['family'] == 'rga'
  assert info['metadata']['image_size'] == list(image_size)
  assert info['metadata']['epoch'] == 600


def test_converter_reads_the_official_layout(cli, tmp_path):
  """The command line on a narrow official RGA-SC checkpoint."""
  images = images_for(NARROW_SIZE, 4, seed=30)
  checkpoint = tmp_path / 'checkpoint.pth.tar'
  model = random_official_checkpoint(checkpoint, NUM_CLASSES, images,
                                     **NARROW)
  output = tmp_path / 'converted'
  result = cli('convert_weights.py', '--format=rga_official',
               f'--input={checkpoint}', f'--output={output}',
               '--image_size={},{}'.format(*NARROW_SIZE))
  assert result.returncode == 0, result.stderr
  check_official_layout(model.state_dict(), output, result.stdout,
                        NARROW_SIZE)


@pytest.mark.full
def test_converter_reads_the_full_size_layout(full_sc):
  state, _, output, summary, _, _ = full_sc
  check_official_layout(state, output, summary, (256, 128))


@pytest.mark.full
@pytest.mark.optimized
def test_full_rga_sc_inference_float32(full_sc, record_parity):
  """Float32 outputs are as close to the exact ones as PyTorch's own.

  This random RGA network amplifies rounding about tenfold per stage
  (BatchNorms after the relation embeddings subtract means much larger than
  the spread around them), so PyTorch's float32 outputs themselves differ
  from the float64 ones by a few 1e-3 relative. Each output must be
  within OUTPUT_BOUND of the exact (float64 PyTorch) value, or no further
  from it than twice PyTorch's float32 error; the direct JAX-PyTorch
  difference is reported beside it.
  """
  _, images, output, _, reference, exact = full_sc
  model, variables = sa_reid_jax.load_model(str(output))
  actual = jax_outputs(model, variables, to_nhwc(images))
  assert set(actual) == set(reference)
  assert len(actual) == 3 + 8
  for name, expected in exact.items():
    assert actual[name].shape == expected.shape, name
    torch_error = relative_error(reference[name], expected)
    error = relative_error(actual[name], expected)
    bound = max(OUTPUT_BOUND, 2 * torch_error)
    record_parity(f'RGA-SC float32 {name}: JAX vs PyTorch float32',
                  relative_error(actual[name], reference[name]), None)
    record_parity(f'RGA-SC float32 {name}: JAX vs float64', error, bound)
    assert error <= bound, (name, error, torch_error)


@pytest.mark.full
def test_reference_gates_are_not_degenerate(full_sc):
  """A module whose gates sit at 0 or 1 would hide errors in its maths."""
  for name, gates in full_sc[4].items():
    if name.startswith('attention/'):
      assert 0.02 < np.median(gates) < 0.98, name
      assert np.std(gates) > 0.01, name


def narrow_checkpoint(directory, spatial, channel, seed):
  images = images_for(NARROW_SIZE, 4, seed)
  calibration = torch.cat([images, images_for(NARROW_SIZE, 4, seed + 1)])
  checkpoint = directory / 'checkpoint.pth.tar'
  model = random_official_checkpoint(checkpoint, NUM_CLASSES, calibration,
                                     spatial=spatial, channel=channel,
                                     seed=seed, **NARROW)
  output = directory / 'converted'
  convert_checkpoint('rga_official', str(checkpoint), str(output),
                     image_size=NARROW_SIZE)
  return model, images, output


def load_float64(output):
  model, variables = sa_reid_jax.load_model(str(output))
  return (model.clone(dtype=jnp.float64),
          jax.tree.map(lambda v: v.astype(jnp.float64), variables))


@pytest.mark.parametrize('spatial, channel', [(True, False), (False, True)],
                         ids=['rga_s', 'rga_c'])
def test_narrow_inference_float64(tmp_path, record_parity, spatial, channel):
  torch_model, images, output = narrow_checkpoint(tmp_path, spatial, channel,
                                                  seed=10 + 2 * channel)
  reference = reference_outputs(copy.deepcopy(torch_model).double(),
                                images.double())
  with jax.enable_x64(True):
    model, variables = load_float64(output)
    assert (model.spatial, model.channel) == (spatial, channel)
    assert model.stage_sizes == (1, 1, 1, 1) and model.base_width == 16
    actual = jax_outputs(model, variables, to_nhwc(images.double()))
  assert set(actual) == set(reference) and len(actual) == 3 + 4
  variant = 'RGA-S' if spatial else 'RGA-C'
  worst = max((relative_error(actual[k], v), k) for k, v in reference.items())
  record_parity(f'{variant} float64 inference (worst: {worst[1]})', worst[0],
                FLOAT64_BOUND)
  assert worst[0] <= FLOAT64_BOUND, worst


def smoothed_cross_entropy(log_probs, labels):
  """Label-smoothed cross-entropy from (B, K) log-probabilities: per example
  -(1 - eps) log p_label - eps mean_k log p_k, averaged over the batch."""
  picked = sum(log_probs[i, int(labels[i])] for i in range(len(labels)))
  return -((1 - LABEL_SMOOTHING) * picked / len(labels) +
           LABEL_SMOOTHING * log_probs.mean())


def naive_batch_hard_triplet(features, labels, xp):
  """Mean over anchors of relu(hardest positive - hardest negative + margin)
  with Euclidean distances, as loops over pairs (never a self-pair, whose
  distance 0 has no square-root gradient). `xp`: torch or jax.numpy."""
  losses = []
  for i in range(len(labels)):
    distances = {j: xp.sqrt(((features[i] - features[j])**2).sum())
                 for j in range(len(labels)) if j != i}
    positive = xp.stack([d for j, d in distances.items()
                         if labels[j] == labels[i]]).max()
    negative = xp.stack([d for j, d in distances.items()
                         if labels[j] != labels[i]]).min()
    losses.append(positive - negative + MARGIN)
  return sum(xp.maximum(l, 0 * l) for l in losses) / len(losses)


TRAIN_LABELS = np.array([3, 3, 7, 7])


def test_narrow_rga_sc_training_step_float64(tmp_path, record_parity):
  """CE (label smoothing) + batch-hard triplet on feat_: loss, every
  gradient and the BN running-stat updates agree in float64."""
  torch_model, images, output = narrow_checkpoint(tmp_path, True, True,
                                                  seed=20)
  torch_model = copy.deepcopy(torch_model).double().train()
  # The BNNeck bias is frozen in the official code; its gradient is still
  # defined, and compared here like every other.
  torch_model.feat_bn.bias.requires_grad_(True)
  out = torch_model(images.double())
  torch_loss = (
      smoothed_cross_entropy(F.log_softmax(out['logits'], -1), TRAIN_LABELS) +
      naive_batch_hard_triplet(out['feat_'], TRAIN_LABELS, torch))
  torch_loss.backward()
  torch_grads = {n: p.grad.numpy() for n, p in torch_model.named_parameters()}
  torch_stats = {n: b.numpy() for n, b in torch_model.named_buffers()
                 if 'running_' in n}

  with jax.enable_x64(True):
    model, variables = load_float64(output)
    x = to_nhwc(images.double())

    def loss_fn(params):
      out, mutated = model.apply(
          {'params': params, 'batch_stats': variables['batch_stats']}, x,
          train=True, mutable=['batch_stats'])
      loss = (smoothed_cross_entropy(jax.nn.log_softmax(out['global_logits']),
                                     TRAIN_LABELS) +
              naive_batch_hard_triplet(out['embeddings']['global'],
                                       TRAIN_LABELS, jnp))
      return loss, mutated

    (loss, stats), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        variables['params'])
    as_float64 = lambda tree: jax.tree.map(
        lambda a: np.asarray(a, np.float64), tree)
    grads, stats = as_float64({'params': grads}), as_float64(stats)

  loss_error = abs(float(loss) - torch_loss.item()) / abs(torch_loss.item())
  record_parity('RGA-SC train float64: CE + triplet loss', loss_error,
                FLOAT64_BOUND)
  assert loss_error <= FLOAT64_BOUND
  for what, actual, expected in (('gradients', grads, torch_grads),
                                 ('BatchNorm running-stat updates', stats,
                                  torch_stats)):
    error, where = worst_leaf_error(
        actual, torch_to_flax(expected, actual, rga_source_for))
    record_parity(f'RGA-SC train float64: {what} (worst {where})', error,
                  FLOAT64_BOUND)
    assert error <= FLOAT64_BOUND, where
