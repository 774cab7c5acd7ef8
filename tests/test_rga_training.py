"""The RGA and BNNeck-baseline recipes train: each config's documented
command runs a few steps, the trained network is a self-describing model
directory, and P x K batches with triplet mining over the global batch give
the same training on one and on two devices."""

import os
import shlex

import numpy as np
import pytest
import test_configs
import test_train

from sa_reid_jax.datasets import synthetic
from sa_reid_jax.models import store
from sa_reid_jax.models.rga import RGANet

REPO = test_train.REPO
# Small enough for a CPU test: 128x64 with the head reduction of the RGA
# demo (4) and width 8, at which every module has channels.
SMALL = {
    'init_from': 'scratch',
    'model.stage_sizes': (1, 1, 1, 1),
    'model.base_width': 8,
    'image_size': (128, 64),
    'model.down_ratio': 4,
    'batch_size': 8,
    'eval.every_epochs': 0,
    'eval.batch_size': 32,
    'eval.report': False,
    'log_every_steps': 2,
}


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('synthetic'))
  # Identities with 3 to 12 train images: K = 4 repeats some of them.
  synthetic.generate(root, num_ids=8, num_test_ids=4, seed=1)
  return root


def _documented_config(name, data, small=None, **overrides):
  path = os.path.join(REPO, 'configs', name)
  argv = test_configs._documented_commands(path, 'train.py')[0]  # pylint: disable=protected-access
  config = test_configs._parse(argv)  # pylint: disable=protected-access
  config.unlock()
  config.dataset.folder = data
  for key, value in {**(SMALL if small is None else small),
                     **overrides}.items():
    block = config
    *parents, leaf = key.split('.')
    for parent in parents:
      block = block[parent]
    block[leaf] = value
  return config


@pytest.mark.parametrize('name', ['rga_sc_market1501.py', 'bot_market1501.py',
                                  'demo_rga_synthetic.py'])
def test_documented_command_trains(name, data, tmp_path):
  config = _documented_config(name, data, max_steps=3)
  workdir = str(tmp_path / 'run')
  result = test_train.trainer.train_and_evaluate(config, workdir)
  assert result['status'] == 'completed' and result['step'] == 3
  model, variables = store.load_model(os.path.join(workdir, 'model'))
  assert isinstance(model, RGANet)
  assert model.image_size == (128, 64)
  # The BNNeck's BatchNorm bias is frozen: still its initial zeros.
  np.testing.assert_array_equal(variables['params']['feat_bn']['bias'], 0.0)
  lines = [line for line in open(os.path.join(workdir, 'metrics.jsonl'))
           if '"triplet"' in line]
  assert lines, 'the triplet term is not logged'


def test_two_devices_train_as_one(data, tmp_path):
  """P x K sampler + triplet over the global batch: 1 vs 2 devices.

  In float64 compute (parameters and statistics still stored in float32):
  this scratch network's float32 gradient is itself ~3% (per-leaf maximum)
  from its float64 gradient on the synthetic images, so in float32 any
  regrouping of the batch's sums -- which is all that the device count
  changes -- moves the result by more than the bound. Measured: float32
  1 vs 2 devices 4.8e-4 after 3 steps; float64 one step 8e-11 (gradients),
  3 steps through `train.py` 6e-8 (one float32 unit in the last place of
  the stored variables).
  """
  # SGD: its update is proportional to the gradient, so a gradient that
  # depends on the device count shows (Adam's normalised update would
  # turn rounding of near-zero gradients into lr-sized steps). A small
  # rate keeps the stored float32 rounding from growing over the 3 steps;
  # a device-dependent mining changes the gradient's triplet part by O(1)
  # (tests/test_losses.py), far above the bound.
  overrides = {**SMALL, 'max_steps': 3, 'optimizer.name': 'sgd',
               'optimizer.learning_rate': 1e-4, 'model.dtype': 'float64'}
  worst = worst_device_difference('demo_rga_synthetic.py', data, tmp_path,
                                  overrides)
  assert worst[0] <= 1e-5, worst


def worst_device_difference(config_name, data, tmp_path, overrides):
  """`train.py` with a config on 1 and on 2 devices, in float64 compute.

  Returns:
    (worst difference of a stored variable relative to max(1, its scale),
    its name): relative to the leaf's scale because, e.g., the RGA relation
    embeddings' BatchNorm running variances are in the hundreds.
  """
  runs = {}
  for devices in (1, 2):
    workdir = tmp_path / f'devices{devices}'
    command = [
        *test_train.train_command(data, workdir)[:2],
        '--config=' + os.path.join(REPO, 'configs', config_name),
        f'--workdir={workdir}', f'--config.dataset.folder={data}',
        *(test_train._flag(k, v) for k, v in overrides.items())]  # pylint: disable=protected-access
    result = test_train.subprocess.run(
        command, env=dict(test_train.environment(devices),
                          JAX_ENABLE_X64='1'), capture_output=True,
        text=True, timeout=900, cwd=REPO)
    assert result.returncode == 0, (shlex.join(command),
                                    result.stderr[-3000:])
    runs[devices] = test_train.trained_variables(workdir)
  one, two = runs[1], runs[2]
  assert one.keys() == two.keys()
  return max((float(np.max(np.abs(one[k] - two[k])) /
                    max(1.0, float(np.max(np.abs(one[k]))))), k) for k in one)
