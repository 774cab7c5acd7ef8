"""The RGA and BNNeck-baseline recipes train: each config's documented
command runs a few steps, the trained network is a self-describing model
directory, and P x K batches with triplet mining over the global batch give
the same training on one and on two devices."""

import os

import flax
import helpers
import jax
import numpy as np
import optax
import pytest

from sa_reid_jax.models import store
from sa_reid_jax.models.rga import RGANet
from sa_reid_jax.models.sanet import SANet
from sa_reid_jax.training import run as run_lib
from sa_reid_jax.training import step as step_lib
from sa_reid_jax.training import trainer


@pytest.fixture(scope='module')
def data(synthetic_dataset):
  return synthetic_dataset(**helpers.P_K_DATASET)


def _check_rga_run(workdir):
  """What every RGA recipe's run leaves: an RGA model directory, the
  BNNeck's frozen bias, the triplet term in the logged metrics."""
  model, variables = store.load_model(os.path.join(workdir, 'model'))
  assert isinstance(model, RGANet)
  # The BNNeck's BatchNorm bias is frozen: still its initial zeros.
  np.testing.assert_array_equal(variables['params']['feat_bn']['bias'], 0.0)
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    lines = [line for line in f if '"triplet"' in line]
  assert lines, 'the triplet term is not logged'
  return model


@pytest.mark.parametrize('name', [
    pytest.param('rga.py:market1501', marks=pytest.mark.full),
    pytest.param('rga.py:market1501,baseline', marks=pytest.mark.full),
    # The fast tier's RGA run: RGA-S and RGA-C modules trained end to end.
    'demo_rga_synthetic.py'])
def test_documented_command_trains(name, data, tmp_path):
  config = helpers.documented_config(name, data, helpers.SMALL_RGA,
                                     max_steps=3)
  workdir = str(tmp_path / 'run')
  result = trainer.train_and_evaluate(config, workdir)
  assert result['status'] == 'completed' and result['step'] == 3
  model = _check_rga_run(workdir)
  assert model.image_size == (128, 64)


@pytest.mark.full
@pytest.mark.parametrize('name', ['rga.py:market1501,baseline',
                                  'demo_rga_synthetic.py'])
def test_two_devices_train_as_one(name, data, tmp_path):
  """P x K sampler + triplet over the global batch: 1 vs 2 devices.

  (The fast tier checks the parts in process: the batch-hard triplet's and
  the cross-entropy's gradients on 1 and 2 devices, tests/test_losses.py,
  and synchronised BatchNorm, tests/test_resnet.py.)

  The BNNeck baseline's and the RGA demo's documented commands, smaller:
  64x32 images,
  whose 4x2 last map has RGA modules with channels at a head reduction of
  2. The device count changes only how the batch's sums are grouped. In
  float32 that regrouping alone moves the trained variables by 2e-7
  (baseline) to 2e-5 (RGA: a relation embedding's BatchNorm variance)
  relative, measured, so a float32 bound could only be set from
  measurement, network by network. In float64 compute the regrouping moves
  them by ~1e-16, and what is left is the float32 rounding of the
  variables (the parameters are float32, and the model directory stores
  the statistics in float32): measured 4e-9 (baseline) and 6e-8 (RGA).
  """
  # SGD: its update is proportional to the gradient, so a gradient that
  # depends on the device count shows (Adam's normalised update would
  # turn rounding of near-zero gradients into lr-sized steps). A small
  # rate keeps the stored float32 rounding from growing over the 3 steps;
  # a device-dependent mining changes the gradient's triplet part by O(1)
  # (tests/test_losses.py), far above the bound.
  small = {**helpers.SMALL_RGA, 'image_size': (64, 32),
           'model.down_ratio': 2, 'max_steps': 3, 'optimizer.name': 'sgd',
           'optimizer.learning_rate': 1e-4, 'model.dtype': 'float64'}
  runs = helpers.train_on_one_and_two_devices(name, data, tmp_path, small)
  for count, (result, _) in runs.items():
    # Really `count` devices: two one-device runs would agree too.
    assert result['devices'] == count, result
    assert result['status'] == 'completed' and result['step'] == 3
  with jax.enable_x64(True):  # the stored model computes in float64
    model = _check_rga_run(tmp_path / 'devices2')
  assert model.image_size == (64, 32)
  worst = helpers.worst_variable_difference(runs[1][1], runs[2][1])
  # The variables are stored in float32: one unit in the last place is
  # 6e-8 to 1.2e-7 relative, and a stored value may round to the
  # neighbouring float32 in one run and not the other, carried over 3
  # steps; 1e-6 allows ~10 such units. Mining each device's rows alone
  # differs by 2.5e-3 (baseline) and 3.7e-2 (RGA), unsynchronised
  # BatchNorm statistics by 0.14 (measured).
  assert worst[0] <= 1e-6, worst



def test_init_from_loads_the_resnet_and_leaves_the_rga_modules_fresh(
    tmp_path):
  """As the official code: a converted ResNet's weights and statistics go
  into conv1..layer4; the RGA modules and the heads stay as initialised."""
  source = SANet(num_classes=5, stage_sizes=(1, 1, 1, 1), base_width=8)
  given = helpers.he_scaled_variables(source, seed=7)
  init_from = tmp_path / 'imagenet'
  store.save_model(str(init_from), source, given)
  model = RGANet(num_classes=7, stage_sizes=(1, 1, 1, 1), base_width=8,
                 image_size=(64, 32), down_ratio=2)
  fresh = step_lib.create_train_state(model, optax.sgd(0.1), 0, (64, 32))
  state, summary = run_lib._with_pretrained_backbone(  # pylint: disable=protected-access
      fresh, str(init_from))
  flat = {c: flax.traverse_util.flatten_dict(
      jax.device_get(getattr(state, c)), sep='/')
          for c in ('params', 'batch_stats')}
  before = {c: flax.traverse_util.flatten_dict(
      jax.device_get(getattr(fresh, c)), sep='/')
            for c in ('params', 'batch_stats')}
  loaded = 0
  for collection, tree in flat.items():
    theirs = flax.traverse_util.flatten_dict(given[collection], sep='/')
    for key, value in tree.items():
      group = key.split('/')[1] if key.startswith('backbone/') else None
      if group is not None and not group.startswith('rga_att'):
        np.testing.assert_array_equal(value, theirs[key], err_msg=key)
        loaded += 1
      else:  # an RGA module or a head: as initialised
        np.testing.assert_array_equal(value, before[collection][key],
                                      err_msg=key)
  modules = {k.split('/')[1] for k in flat['params']
             if k.startswith('backbone/rga_att')}
  assert modules == {'rga_att1', 'rga_att2', 'rga_att3', 'rga_att4'}
  # 5 stem tensors (conv1 kernel; bn1 scale, bias, mean, var) and 20 in
  # each of the four one-block stages (3 convs and a downsample conv: 4
  # kernels; 4 BNs: scale, bias, mean, var).
  assert loaded == 5 + 4 * 20
  assert summary == (
      f'init_from {init_from}: loaded {loaded} ResNet tensors (parameters '
      'and BatchNorm statistics); fresh: backbone/rga_att1, '
      'backbone/rga_att2, backbone/rga_att3, backbone/rga_att4, cls, '
      'feat_bn')
