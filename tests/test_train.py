"""Training runs end to end: devices, faults, resuming, initialisation.

Runs that need their own device count or must be killed go through
``train.py`` in a subprocess; the others call `train_and_evaluate` here.
"""

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from tensorboard.backend.event_processing import event_accumulator
import test_report

from sa_reid_jax.datasets import market_layout
from sa_reid_jax.datasets import synthetic
from sa_reid_jax.models import store
from sa_reid_jax.models.sanet import SANet
from sa_reid_jax.training import checkpoints
from sa_reid_jax.training import reporting
from sa_reid_jax.training import trainer
from sa_reid_jax.training import experiment_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A small network and input: what these tests check does not depend on size.
TINY = {
    'init_from': 'scratch',
    'model.stage_sizes': (1, 1, 1, 1),
    'model.base_width': 4,
    'image_size': (64, 32),
    'batch_size': 8,
    'eval.every_epochs': 0,
    'eval.batch_size': 32,
    'log_every_steps': 5,
    'eval.report': False,  # tested once, in test_training_options_run_and_learn
}


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('synthetic'))
  synthetic.generate(root, num_ids=8, num_test_ids=4, seed=0)
  return root


def tiny_config(data, **overrides):
  config = experiment_config('market_layout_folder', 'full')
  config.dataset.folder = data
  for key, value in {**TINY, **overrides}.items():
    *parents, leaf = key.split('.')
    block = config
    for parent in parents:
      block = block[parent]
    block[leaf] = value
  return config


def _flag(key, value):
  if isinstance(value, tuple):
    value = '(' + ','.join(str(v) for v in value) + ')'
  return f'--config.{key}={value}'


def train_command(data, workdir, **overrides):
  return [sys.executable, os.path.join(REPO, 'train.py'),
          '--config=' + os.path.join(REPO, 'configs', 'demo_synthetic.py'),
          f'--workdir={workdir}', f'--config.dataset.folder={data}',
          *(_flag(k, v) for k, v in {**TINY, **overrides}.items())]


def environment(devices=1):
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  return env


def run_train(data, workdir, devices=1, **overrides):
  result = subprocess.run(train_command(data, workdir, **overrides),
                          env=environment(devices), capture_output=True,
                          text=True, timeout=600, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def trained_variables(workdir):
  _, variables = store.load_model(os.path.join(workdir, 'model'))
  return flax.traverse_util.flatten_dict(jax.device_get(variables), sep='/')


def test_two_devices_equal_one_device(data, tmp_path):
  one = tmp_path / 'one'
  two = tmp_path / 'two'
  for workdir, devices in ((one, 1), (two, 2)):
    # A small learning rate: a tiny network trained from scratch at the
    # demo's rate amplifies float32 rounding within a few steps.
    result = run_train(data, workdir, devices=devices, max_steps=3,
                       **{'optimizer.learning_rate': 0.01})
    assert 'step 3/' in result.stdout
  a, b = trained_variables(one), trained_variables(two)
  assert a.keys() == b.keys()
  worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
  assert worst <= 1e-5, worst


def _finalized_steps(workdir):
  directory = os.path.join(workdir, checkpoints.CHECKPOINT_DIR)
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def _interrupt(data, workdir, sig, after_step, **overrides):
  """Starts a run and sends it `sig` once checkpoint `after_step` exists."""
  process = subprocess.Popen(train_command(data, workdir, **overrides),
                             env=environment(), cwd=REPO, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  deadline = time.monotonic() + 600
  while not any(s >= after_step for s in _finalized_steps(workdir)):
    assert process.poll() is None, process.communicate()[1][-3000:]
    assert time.monotonic() < deadline
    time.sleep(0.02)
  still_running = process.poll() is None
  process.send_signal(sig)
  stdout, stderr = process.communicate(timeout=600)
  assert still_running, 'the run ended before it could be interrupted'
  return process.returncode, stdout, stderr


def test_sigterm_and_sigkill_then_resume_are_bit_identical(data, tmp_path):
  # Long enough that the interrupts land mid-run; checkpoints every 5 steps.
  options = dict(num_epochs=15, **{'checkpoint.every_steps': 5,
                                   'checkpoint.keep': 2})
  reference = tmp_path / 'reference'
  run_train(data, reference, **options)

  workdir = tmp_path / 'interrupted'
  code, stdout, stderr = _interrupt(data, workdir, signal.SIGTERM, 10,
                                    **options)
  assert code == 0, stderr[-3000:]
  assert 'SIGTERM: saved the checkpoint of step' in stdout
  saved = _finalized_steps(workdir)[-1]
  assert not os.path.exists(workdir / 'model')

  code, _, _ = _interrupt(data, workdir, signal.SIGKILL, saved + 10,
                          **options)
  assert code == -signal.SIGKILL
  result = run_train(data, workdir, **options)
  assert 'resuming from step' in result.stdout
  # SIGKILL left the lock file; the dead run's lock is taken over.
  assert 'took over the lock of process' in result.stdout

  a, b = trained_variables(reference), trained_variables(workdir)
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    data, tmp_path):
  config = tiny_config(data, **{'optimizer.learning_rate': 1e12,
                                'checkpoint.every_steps': 1})
  with pytest.raises(trainer.NonFiniteLossError,
                     match=r'non-finite training at step (\d+).*last good'):
    trainer.train_and_evaluate(config, str(tmp_path))
  steps = _finalized_steps(tmp_path)
  assert steps, 'no checkpoint before the failure'
  # The newest checkpoint restores and holds finite parameters.
  state = ocp.StandardCheckpointer().restore(
      tmp_path / checkpoints.CHECKPOINT_DIR / str(steps[-1]) / 'state')
  assert int(state['step']) == steps[-1]
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state['params']))


@pytest.mark.parametrize('layout', ['model', 'training_workdir'])
def test_init_from_loads_the_backbone(data, tmp_path, layout):
  config = tiny_config(data, max_steps=1, init_from=str(tmp_path / 'init'),
                       **{'optimizer.learning_rate': 0.0})
  source = SANet(num_classes=5, stage_sizes=(1, 1, 1, 1), base_width=4)
  variables = source.init(jax.random.PRNGKey(7),
                          np.zeros((1, 64, 32, 3), np.float32))
  # A training workdir stands for its trained network, WORKDIR/model.
  saved = tmp_path / 'init' / ('model' if layout == 'training_workdir'
                               else '')
  store.save_model(str(saved), source, variables)
  trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  trained = trained_variables(tmp_path / 'run')
  given = flax.traverse_util.flatten_dict(variables['params'], sep='/')
  for key, value in given.items():
    if key.startswith('backbone/'):
      # Learning rate 0: one step leaves the imported weights as they were.
      np.testing.assert_array_equal(trained['params/' + key], value)


@pytest.mark.parametrize('init_from, message', [
    ('missing', 'config.init_from: .*missing: no such model directory'),
    ('wide', 'config.init_from: the backbone params .* do not fit'),
])
def test_init_from_errors_name_the_key(data, tmp_path, init_from, message):
  wide = SANet(num_classes=5, stage_sizes=(1, 1, 1, 1), base_width=8)
  store.save_model(str(tmp_path / 'wide'), wide, wide.init(
      jax.random.PRNGKey(0), np.zeros((1, 64, 32, 3), np.float32)))
  config = tiny_config(data, max_steps=1,
                       init_from=str(tmp_path / init_from))
  with pytest.raises(ValueError, match=message):
    trainer.train_and_evaluate(config, str(tmp_path / 'run'))


@pytest.mark.parametrize('overrides', [
    {'model.dtype': 'bfloat16'},
    {'augmentation.on_device': True, 'augmentation.staging_size': (64, 32)},
    {'model.sync_batch_norm': False,
     'loss.terms.cross_entropy.weighting': 'paper'},
])
def test_training_options_run_and_learn(data, tmp_path, overrides):
  config = tiny_config(data, max_steps=6, **{'eval.report': True},
                       **overrides)
  result = trainer.train_and_evaluate(config, str(tmp_path))
  assert result['status'] == 'completed' and result['step'] == 6
  # The final evaluation's report, beside metrics.json and equal to it.
  with open(tmp_path / 'metrics.json') as f:
    final = json.load(f)['final']
  parser, _ = test_report.parse_report(tmp_path / 'report.html')
  test_report.check_report_numbers(parser, final)
  with open(tmp_path / 'metrics.jsonl') as f:
    lines = [line for line in f if '"train"' in line]
  assert len(lines) == 2
  assert np.isfinite(result['final']['plain']['mAP'])
  events = event_accumulator.EventAccumulator(result['tensorboard_dir'])
  events.Reload()
  tags = set(events.Tags()['tensors']) | set(events.Tags()['scalars'])
  expected = {'train/loss', 'train/global_ce', 'train/ds3_ce',
              'train/accuracy', 'train/grad_norm', 'train/images_per_second',
              'train/learning_rate_backbone', 'train/learning_rate_heads',
              'eval_plain/rank1', 'eval_plain/mAP'}
  expected |= {f'train/part{i}_ce' for i in range(1, 7)}
  assert expected <= tags, expected - tags


@pytest.mark.parametrize('overrides, message', [
    ({'loss.terms.cross_entropy.weighting': 'mean'},
     'config.loss.terms.cross_entropy.weighting must be one of'),
    ({'augmentation.erasing_fill': 'noise'},
     'config.augmentation: RandomErasing.fill'),
    ({'image_size': (0, 32)}, 'config.image_size must be a positive'),
    ({'checkpoint.every_steps': 0}, 'config.checkpoint.every_steps'),
    ({'data.sampler': 'pk'}, 'config.data.sampler must be one of'),
    ({'data.sampler': 'identity', 'batch_size': 6},
     'config.batch_size 6 must be a multiple of '
     'config.data.images_per_identity 4'),
    ({'data.sampler': 'identity', 'batch_size': 40},
     "config.data.sampler 'identity' with config.batch_size 40: .* needs at "
     'least 10 train identities; the table has 8'),
    ({'augmentation.crop_scale': 0.5}, 'config.augmentation: RandomCrop.scale'),
])
def test_bad_config_values_are_named_before_training(data, tmp_path,
                                                     overrides, message):
  with pytest.raises(ValueError, match=message):
    trainer.train_and_evaluate(tiny_config(data, **overrides), str(tmp_path))
  assert not os.path.exists(tmp_path / 'checkpoints')


def test_resuming_with_another_batch_size_is_refused(data, tmp_path):
  trainer.train_and_evaluate(tiny_config(data, max_steps=2), str(tmp_path))
  with pytest.raises(checkpoints.ResumeError,
                     match='global_batch_size was 8, is now 4'):
    trainer.train_and_evaluate(tiny_config(data, max_steps=4, batch_size=4),
                               str(tmp_path))


def test_identity_sampler_trains_and_resumes_bit_identically(data, tmp_path,
                                                             capsys):
  # P x K = 2 x 2 over 8 identities: 4 steps an epoch. The on-device path
  # with the official crop: draws and dropout keyed by epoch position. The
  # one-part network (with dropout): the test is about the data, not heads.
  options = {'model.variant': 'backbone',
             'data.sampler': 'identity', 'data.images_per_identity': 2,
             'batch_size': 4, 'augmentation.crop_probability': 0.5,
             'augmentation.on_device': True,
             'augmentation.staging_size': (64, 32),
             'checkpoint.every_steps': 3}
  config = tiny_config(data, max_steps=6, **options)
  reference = tmp_path / 'reference'
  result = trainer.train_and_evaluate(config, str(reference))
  assert result['status'] == 'completed' and result['step'] == 6
  # A run killed after its mid-epoch checkpoint of step 3: the reference's
  # workdir without what came later.
  resumed = tmp_path / 'resumed'
  shutil.copytree(reference / checkpoints.CHECKPOINT_DIR / '3',
                  resumed / checkpoints.CHECKPOINT_DIR / '3')
  capsys.readouterr()
  trainer.train_and_evaluate(config, str(resumed))
  assert 'resuming from step 3 (epoch 0, step 3 in it)' in (
      capsys.readouterr().out)
  a, b = trained_variables(reference), trained_variables(resumed)
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  # The sampler is part of the data signature.
  with pytest.raises(checkpoints.ResumeError, match=re.escape(
      "sampler was {'name': 'identity', 'images_per_identity': 2}, is now "
      "{'name': 'uniform'}")):
    trainer.train_and_evaluate(
        tiny_config(data, max_steps=8, **{**options, 'data.sampler':
                                          'uniform'}), str(resumed))


def test_cli_reports_bad_config_keys_in_one_line(data, tmp_path):
  command = train_command(data, tmp_path) + ['--config.optimizer.lr=0.1']
  result = subprocess.run(command, env=environment(), capture_output=True,
                          text=True, timeout=300, cwd=REPO)
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr
  # Only the override at fault is named, not the command's other ones.
  assert ("train.py: error: cannot apply --config.optimizer.lr=0.1: no key "
          "'lr'") in result.stderr
  assert '--config.dataset.folder' not in result.stderr
  # A valid key with the same last name, and a misspelt middle key: only
  # the override the config file does not have is named.
  command = train_command(data, tmp_path) + [
      '--config.eval.rerank=false', '--config.rerank=false']
  result = subprocess.run(command, env=environment(), capture_output=True,
                          text=True, timeout=300, cwd=REPO)
  assert ('train.py: error: cannot apply --config.rerank=false: no key '
          "'rerank'") in result.stderr, result.stderr


@pytest.mark.parametrize('config, override, expected', [
    ('market1501_ablation.py', None,
     'train.py: error: flag --config=CONFIG: ValueError: '
     'configs/market1501_ablation.py needs a row argument, one of ('),
    ('market1501.py', '--config.batchsize=64',
     "train.py: error: cannot apply --config.batchsize=64: no key "
     "'batchsize' Did you mean \"batch_size\" instead of \"batchsize\"? "
     '(a key the config does not have, or a value of the wrong type)'),
    ('missing.py', None, 'train.py: error: --config: Failed loading config '
     'file'),
])
def test_cli_config_errors_are_one_clean_line(tmp_path, config, override,
                                               expected):
  path = os.path.join(REPO, 'configs', config)
  command = [sys.executable, os.path.join(REPO, 'train.py'),
             f'--config={path}', f'--workdir={tmp_path / "run"}',
             *([override] if override else [])]
  result = subprocess.run(command, env=environment(), capture_output=True,
                          text=True, timeout=300, cwd=REPO)
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith(expected.replace('CONFIG', path)), lines[0]
  assert '\\' not in lines[0] and 'Traceback' not in lines[0]
  assert not (tmp_path / 'run').exists()


def test_a_missing_dataset_folder_names_the_key(tmp_path):
  missing = str(tmp_path / 'nothing')
  with pytest.raises(market_layout.LayoutError, match=(
      '^config\\.dataset\\.folder: ' + re.escape(
          os.path.join(missing, 'bounding_box_train')) + ': missing')):
    trainer.train_and_evaluate(tiny_config(missing), str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')


def test_a_forgotten_backbone_stops_before_anything_is_written(data,
                                                               tmp_path):
  workdir = tmp_path / 'run'
  with pytest.raises(ValueError, match=(
      r'^config\.init_from is empty: pass --config\.init_from=DIR .*'
      r'convert_weights\.py --format=torchvision .*'
      r'--config\.init_from=scratch to train from random weights$')):
    trainer.train_and_evaluate(tiny_config(data, init_from=''), str(workdir))
  assert not os.path.exists(workdir)


def test_cli_refuses_a_paper_config_without_backbone_in_one_line(tmp_path):
  # A new user's first command: the paper's config, no --config.init_from.
  workdir = tmp_path / 'market1501'
  command = [sys.executable, os.path.join(REPO, 'train.py'),
             '--config=' + os.path.join(REPO, 'configs', 'market1501.py'),
             f'--workdir={workdir}']
  result = subprocess.run(command, env=environment(), capture_output=True,
                          text=True, timeout=300, cwd=REPO)
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  lines = [line for line in result.stderr.splitlines() if 'init_from' in line]
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith('train.py: error: config.init_from is empty')
  assert 'convert_weights.py --format=torchvision' in lines[0]
  assert not os.path.exists(workdir)


def test_progress_lines_off_a_terminal(monkeypatch):
  clock = iter([0.0, 10.0, 10.0, 20.0])
  monkeypatch.setattr(reporting.time, 'perf_counter', lambda: next(clock))
  stream = io.StringIO()
  progress = reporting.Progress(first_step=100, total_steps=300,
                                global_batch=8, stream=stream)
  progress.update(150, 1.5)  # not forced: nothing off a terminal
  assert stream.getvalue() == ''
  progress.update(150, 1.5, force=True)  # 50 steps in 10 s
  assert stream.getvalue() == ('step 150/300 (50%)  loss 1.5000  40.0 '
                               'images/s  ETA 0:30\n')
  assert progress.images_per_second(200) == pytest.approx(100 * 8 / 20)
