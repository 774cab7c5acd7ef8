"""Training runs end to end: devices, faults, resuming, initialisation.

Runs call `train_and_evaluate` in this process, on `jax.devices()` (two host
CPU devices, tests/conftest.py) or on the first of them; the command lines
run in this process too (the ``cli`` fixture). ``train.py`` runs in a
subprocess where the process is the point: signals, and one command as a
user types it, whose whole output is checked.
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

import helpers
from sa_reid_jax.datasets import market_layout
from sa_reid_jax.models import store
from sa_reid_jax.models.sanet import SANet
from sa_reid_jax.training import checkpoints
from sa_reid_jax.training import optimizer as optimizer_lib
from sa_reid_jax.training import reporting
from sa_reid_jax.training import step as step_lib
from sa_reid_jax.training import trainer


def test_two_devices_train_as_one(data, tmp_path):
  """The same 3 steps on 1 and on 2 devices, in float64 compute (the fast
  tier's 1-vs-2-device run; the RGA and CASN ones are in the full tier).

  The device count changes only how the batch's sums (gradients, BatchNorm
  statistics) are grouped. In float32 that regrouping alone moves the
  trained variables by a few units in the last place (measured 3e-7
  relative), so a float32 bound could only be set from measurement; in
  float64 compute the regrouping moves them by ~1e-16, and what is left is
  the float32 rounding of the stored variables (parameters and statistics
  stay float32), below.
  """
  # A small rate: a tiny network trained from scratch at the demo's rate
  # 0.05 amplifies a one-unit difference of a stored variable ~50x a step
  # from the third step on; at 0.01 the 3 steps stay in the rounding regime.
  # The backbone learns at the full rate, as in the demo, so that a
  # device-dependent backbone gradient shows as much as a head's.
  overrides = {'max_steps': 3, 'optimizer.learning_rate': 0.01,
               'optimizer.backbone_lr_multiplier': 1.0,
               'model.dtype': 'float64'}
  runs = {}
  with jax.enable_x64(True):
    for count in (1, 2):
      workdir = tmp_path / f'devices{count}'
      result = trainer.train_and_evaluate(
          helpers.tiny_config(data, **overrides), str(workdir),
          devices=jax.devices()[:count])
      # Really `count` devices: two one-device runs would agree too.
      assert result['devices'] == count, result
      assert result['status'] == 'completed' and result['step'] == 3
      runs[count] = helpers.trained_variables(workdir)
  one, two = runs[1], runs[2]
  assert one.keys() == two.keys()
  assert any(k.startswith('batch_stats/') for k in one)
  assert {v.dtype for v in one.values()} == {np.dtype(np.float32)}
  # Relative to max(1, the leaf's scale): BatchNorm running variances
  # exceed 1.
  worst = max((float(np.max(np.abs(one[k] - two[k])) /
                     max(1.0, float(np.max(np.abs(one[k]))))), k)
              for k in one)
  # A stored float32 value may round to the neighbouring float32 in one run
  # and not in the other (one unit in the last place: 1.2e-7 relative at
  # scale 1), and later steps carry that on: a few units after 3 steps
  # (measured 6e-8, one unit). A device-dependent gradient or unsynchronised
  # BatchNorm statistics differ by 1e-4 and more.
  assert worst[0] <= 1e-6, worst


def _interrupt(data, workdir, sig, after_step, **overrides):
  """Starts a run and sends it `sig` once checkpoint `after_step` exists."""
  process = subprocess.Popen(
      helpers.train_command(data, workdir, **overrides),
      env=helpers.environment(), cwd=helpers.REPO, text=True,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  deadline = time.monotonic() + 600
  while not any(s >= after_step for s in helpers.finalized_steps(workdir)):
    assert process.poll() is None, process.communicate()[1][-3000:]
    assert time.monotonic() < deadline
    time.sleep(0.02)
  still_running = process.poll() is None
  process.send_signal(sig)
  stdout, stderr = process.communicate(timeout=600)
  assert still_running, 'the run ended before it could be interrupted'
  return process.returncode, stdout, stderr


@pytest.mark.full
def test_sigterm_and_sigkill_then_resume_are_bit_identical(data, tmp_path):
  # Long enough that the interrupts land mid-run (10 steps an epoch);
  # checkpoints every 5 steps.
  options = dict(num_epochs=6, **{'checkpoint.every_steps': 5,
                                  'checkpoint.keep': 2})
  reference = tmp_path / 'reference'
  helpers.run_train(data, reference, **options)

  workdir = tmp_path / 'interrupted'
  code, stdout, stderr = _interrupt(data, workdir, signal.SIGTERM, 10,
                                    **options)
  assert code == 0, stderr[-3000:]
  assert 'SIGTERM: saved the checkpoint of step' in stdout
  saved = helpers.finalized_steps(workdir)[-1]
  assert not os.path.exists(workdir / 'model')

  code, _, _ = _interrupt(data, workdir, signal.SIGKILL, saved + 10,
                          **options)
  assert code == -signal.SIGKILL
  result = helpers.run_train(data, workdir, **options)
  assert 'resuming from step' in result.stdout
  # SIGKILL left the lock file; the dead run's lock is taken over.
  assert 'took over the lock of process' in result.stdout

  a, b = (helpers.trained_variables(reference),
          helpers.trained_variables(workdir))
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    data, tmp_path):
  config = helpers.tiny_config(data, **{'optimizer.learning_rate': 1e12,
                                        'checkpoint.every_steps': 1})
  with pytest.raises(trainer.NonFiniteLossError,
                     match=r'non-finite training at step (\d+).*last good'):
    trainer.train_and_evaluate(config, str(tmp_path))
  steps = helpers.finalized_steps(tmp_path)
  assert steps, 'no checkpoint before the failure'
  # The newest checkpoint restores and holds finite parameters.
  state = ocp.StandardCheckpointer().restore(
      tmp_path / checkpoints.CHECKPOINT_DIR / str(steps[-1]) / 'state')
  assert int(state['step']) == steps[-1]
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state['params']))


@pytest.mark.parametrize('layout', ['model', 'training_workdir'])
def test_init_from_loads_the_backbone(data, tmp_path, finished_run, layout,
                                      capsys):
  if layout == 'model':
    # Another seed and class count than the run's own network.
    source = SANet(num_classes=5, stage_sizes=(1, 1, 1, 1), base_width=4)
    variables = helpers.he_scaled_variables(source, seed=7)
    init_from = tmp_path / 'init'
    store.save_model(str(init_from), source, variables)
    given = flax.traverse_util.flatten_dict(variables['params'], sep='/')
  else:
    # A training workdir stands for its trained network, WORKDIR/model
    # (trained 2 steps from the seed this run starts from: not its init).
    init_from = finished_run
    given = {key[len('params/'):]: value for key, value in
             helpers.trained_variables(finished_run).items()
             if key.startswith('params/')}
  config = helpers.tiny_config(data, max_steps=1, init_from=str(init_from),
                               **{'optimizer.learning_rate': 0.0})
  capsys.readouterr()
  trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  # One line says what was loaded (the SA network has no module of its own
  # inside the backbone: only its heads stay fresh).
  lines = [line for line in capsys.readouterr().out.splitlines()
           if line.startswith('init_from ')]
  assert len(lines) == 1 and lines[0].startswith(
      f'init_from {init_from if layout == "model" else init_from / "model"}'
      ': loaded 85 ResNet tensors (parameters and BatchNorm statistics); '
      'fresh: '), lines
  assert 'backbone/' not in lines[0]
  trained = helpers.trained_variables(tmp_path / 'run')
  backbone = [key for key in given if key.startswith('backbone/')]
  assert backbone
  for key in backbone:
    # Learning rate 0: one step leaves the imported weights as they were.
    np.testing.assert_array_equal(trained['params/' + key], given[key])


# conftest.py's FINISHED_RUN_STEPS: the steps of the `finished_run` fixture.
FINISHED_RUN_STEPS = 2


def test_final_metrics_name_their_source_as_eval_py_does(finished_run, data,
                                                        tmp_path, capsys):
  # The end-of-run evaluation records what eval.py records: the model
  # directory, its steps and the size evaluated at (the trained one).
  with open(finished_run / 'metrics.json') as f:
    settings = json.load(f)['final']['settings']
  assert settings['checkpoint'] == str(finished_run / 'model')
  assert settings['trained_steps'] == FINISHED_RUN_STEPS
  assert settings['image_size'] == settings['trained_image_size'] == list(
      helpers.TINY['image_size'])
  assert settings['image_size_matches_training'] is True
  # Re-reporting the finished run without a report: an earlier report.html
  # in the workdir is removed, not left beside the new metrics.json.
  workdir = tmp_path / 'run'
  shutil.copytree(finished_run, workdir)
  (workdir / 'report.html').write_text('<html>an older evaluation</html>')
  capsys.readouterr()
  trainer.train_and_evaluate(
      helpers.tiny_config(data, max_steps=FINISHED_RUN_STEPS), str(workdir))
  assert not (workdir / 'report.html').exists()
  assert (f'removed {workdir / "report.html"}: an earlier evaluation\'s '
          'report, which the new metrics.json does not match '
          '(config.eval.report=True writes a new one)') in (
              capsys.readouterr().out.splitlines())


@pytest.mark.parametrize('init_from, message', [
    ('missing', 'config.init_from: .*missing: no such model directory'),
    ('wide', r'config.init_from: backbone params bn1/bias is \(8,\) in '
             r'.*wide but \(4,\) in config.model \(stage_sizes, base_width\)'),
    ('deep', r'config.init_from: backbone params layer3_1/bn1/bias is '
             r'missing from config.model: .*deep holds another ResNet'),
    ('shallow', r'config.init_from: backbone params layer3_1/bn1/bias is '
                r'missing from .*shallow: .*holds another ResNet'),
])
def test_init_from_errors_name_the_key(data, tmp_path, init_from, message):
  sizes = {'wide': ((1, 1, 1, 1), 8), 'deep': ((1, 1, 2, 1), 4),
           'shallow': ((1, 1, 1, 1), 4)}
  if init_from in sizes:
    stage_sizes, width = sizes[init_from]
    other = SANet(num_classes=5, stage_sizes=stage_sizes, base_width=width)
    store.save_model(str(tmp_path / init_from), other,
                     helpers.he_scaled_variables(other))
  overrides = {}
  if init_from == 'shallow':  # the run's network is the deeper one
    overrides['model.stage_sizes'] = (1, 1, 2, 1)
  config = helpers.tiny_config(data, max_steps=1,
                               init_from=str(tmp_path / init_from),
                               **overrides)
  with pytest.raises(ValueError, match=message):
    trainer.train_and_evaluate(config, str(tmp_path / 'run'))


@pytest.fixture(scope='module')
def one_batch(synthetic_dataset):
  """A train split of 16 images (8 identities, each seen once by each of 2
  cameras): with a batch of 16 and no random augmentation, every step
  trains on the same images."""
  return synthetic_dataset(num_ids=8, num_test_ids=4, num_cameras=2,
                           images_per_camera=(1, 1), seed=0)


@pytest.mark.parametrize('overrides', [
    # bfloat16 compute is slow on CPUs; the on-device augmentation also
    # trains in the fast tier (the identity-sampler resume test).
    pytest.param({'model.dtype': 'bfloat16'}, marks=pytest.mark.full),
    pytest.param({'augmentation.on_device': True,
                  'augmentation.staging_size': (64, 32)},
                 marks=pytest.mark.full),
    {'model.sync_batch_norm': False,
     'loss.terms.cross_entropy.weighting': 'paper'},
])
def test_training_options_run_and_learn(one_batch, tmp_path, overrides):
  # One batch, the same every step (no flips, no erasing): the loss of a
  # network that learns falls from step to step, whatever the noise of
  # drawing batches would do. Dropout stays on.
  config = helpers.tiny_config(
      one_batch, max_steps=12, batch_size=16, log_every_steps=4,
      **{'eval.report': True, 'augmentation.flip_probability': 0.0,
         'augmentation.erasing_probability': 0.0}, **overrides)
  result = trainer.train_and_evaluate(config, str(tmp_path))
  assert result['status'] == 'completed' and result['step'] == 12
  # The final evaluation's report, beside metrics.json and equal to it.
  with open(tmp_path / 'metrics.json') as f:
    final = json.load(f)['final']
  parser, _ = helpers.parse_report(tmp_path / 'report.html')
  helpers.check_report_numbers(parser, final)
  with open(tmp_path / 'metrics.jsonl') as f:
    train = [json.loads(line) for line in f if '"train"' in line]
  assert [record['step'] for record in train] == [4, 8, 12]
  # The rates the logged step applied, as the step reports them: one batch
  # is one step per epoch. Equal to float32 rounding (the schedules run in
  # float32 in the step and here alike).
  schedules = optimizer_lib.learning_rate_schedules(config.optimizer, 1)
  for record in train:
    for name, schedule in schedules.items():
      assert record[f'learning_rate_{name}'] == pytest.approx(
          float(schedule(record['step'] - 1)), rel=1e-6), (record, name)
  # Learned: the mean loss of steps 9-12 is below that of steps 1-4.
  # Measured: 0.63 (on-device augmentation), 0.53 (bfloat16), 0.83 ('paper'
  # weighting, a mean of the heads' losses where the others sum them, so a
  # slower fall); a network that does not learn stays at 1 (its first loss,
  # 10 ln 8 or ln 8, is that of uniform predictions).
  first, last = train[0]['loss'], train[-1]['loss']
  assert last <= 0.9 * first, [record['loss'] for record in train]
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
    trainer.train_and_evaluate(helpers.tiny_config(data, **overrides),
                               str(tmp_path))
  assert not os.path.exists(tmp_path / 'checkpoints')


def test_resuming_with_another_batch_size_is_refused(data, tmp_path,
                                                     finished_run):
  workdir = tmp_path / 'run'
  shutil.copytree(finished_run, workdir)
  with pytest.raises(checkpoints.ResumeError,
                     match='global_batch_size was 8, is now 4'):
    trainer.train_and_evaluate(
        helpers.tiny_config(data, max_steps=4, batch_size=4), str(workdir))


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
  config = helpers.tiny_config(data, max_steps=6, **options)
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
  a, b = (helpers.trained_variables(reference),
          helpers.trained_variables(resumed))
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  # The sampler is part of the data signature.
  with pytest.raises(checkpoints.ResumeError, match=re.escape(
      "sampler was {'name': 'identity', 'images_per_identity': 2}, is now "
      "{'name': 'uniform'}")):
    trainer.train_and_evaluate(
        helpers.tiny_config(data, max_steps=8, **{**options, 'data.sampler':
                                                  'uniform'}), str(resumed))


def _train_args(data, workdir):
  """`helpers.train_command`'s arguments, without the interpreter and
  script."""
  return helpers.train_command(data, workdir)[2:]


def test_cli_names_an_unwritable_workdir_in_one_line(data, tmp_path, cli):
  (tmp_path / 'afile').write_text('not a folder')
  workdir = tmp_path / 'afile' / 'run'
  result = cli('train.py', *_train_args(data, workdir))
  assert result.returncode == 1
  assert result.stderr.splitlines() == [
      f'train.py: error: --workdir: cannot write {workdir}: '
      f'{tmp_path / "afile"} is not a directory'], result.stderr


def test_cli_reports_bad_config_keys_in_one_line(data, tmp_path, cli):
  result = cli('train.py', *_train_args(data, tmp_path),
               '--config.optimizer.lr=0.1')
  assert result.returncode == 1
  assert len(result.stderr.splitlines()) == 1, result.stderr
  assert 'Traceback' not in result.stderr
  # Only the override at fault is named, not the command's other ones.
  assert ("train.py: error: cannot apply --config.optimizer.lr=0.1: no key "
          "'lr'") in result.stderr
  assert '--config.dataset.folder' not in result.stderr
  # A valid key with the same last name, and a misspelt middle key: only
  # the override the config file does not have is named.
  result = cli('train.py', *_train_args(data, tmp_path),
               '--config.eval.rerank=false', '--config.rerank=false')
  assert result.returncode == 1
  assert len(result.stderr.splitlines()) == 1, result.stderr
  assert ('train.py: error: cannot apply --config.rerank=false: no key '
          "'rerank'") in result.stderr, result.stderr


@pytest.mark.parametrize('config, override, expected', [
    ('market1501_ablation.py', None,
     'train.py: error: flag --config=CONFIG: ValueError: '
     'configs/market1501_ablation.py needs a row argument, one of ('),
    ('sa.py:market1502', None,
     'train.py: error: flag --config=CONFIG: ValueError: config argument: '
     'expected configs/sa.py:DATASET[,OPTION...] with DATASET one of ['),
    ('sa.py:market1501', '--config.batchsize=64',
     "train.py: error: cannot apply --config.batchsize=64: no key "
     "'batchsize' Did you mean \"batch_size\" instead of \"batchsize\"? "
     '(a key the config does not have, or a value of the wrong type)'),
    ('missing.py', None, 'train.py: error: --config: Failed loading config '
     'file'),
])
def test_cli_config_errors_are_one_clean_line(tmp_path, cli, config, override,
                                               expected):
  path = os.path.join(helpers.REPO, 'configs', config)
  result = cli('train.py', f'--config={path}',
               f'--workdir={tmp_path / "run"}',
               *([override] if override else []))
  assert result.returncode == 1
  lines = result.stderr.splitlines()
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith(expected.replace('CONFIG', path)), lines[0]
  assert '\\' not in lines[0] and 'Traceback' not in lines[0]
  assert not (tmp_path / 'run').exists()


def test_a_missing_dataset_folder_names_the_key(tmp_path):
  missing = str(tmp_path / 'nothing')
  with pytest.raises(market_layout.LayoutError, match=(
      '^config\\.dataset\\.folder: ' + re.escape(
          os.path.join(missing, 'bounding_box_train')) + ': missing')):
    trainer.train_and_evaluate(helpers.tiny_config(missing),
                               str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')


def test_a_forgotten_backbone_stops_before_anything_is_written(data,
                                                               tmp_path):
  workdir = tmp_path / 'run'
  with pytest.raises(ValueError, match=(
      r'^config\.init_from is empty: pass --config\.init_from=DIR .*'
      r'convert_weights\.py --format=torchvision .*'
      r'--config\.init_from=scratch to train from random weights$')):
    trainer.train_and_evaluate(helpers.tiny_config(data, init_from=''),
                               str(workdir))
  assert not os.path.exists(workdir)


def test_train_py_refuses_a_paper_config_without_backbone_in_one_line(
    tmp_path):
  """``python train.py`` as a new user's first command: the paper's config,
  no --config.init_from. In a real process, so that everything it writes is
  seen: TensorFlow's import writes log lines on some CPUs, which must not
  reach the user (the process's whole stderr is our one line)."""
  workdir = tmp_path / 'market1501'
  command = [sys.executable, os.path.join(helpers.REPO, 'train.py'),
             '--config=' + os.path.join(helpers.REPO, 'configs',
                                        'sa.py') + ':market1501',
             f'--workdir={workdir}']
  result = subprocess.run(command, env=helpers.user_environment(),
                          capture_output=True, text=True, timeout=300,
                          cwd=helpers.REPO)
  assert result.returncode == 1
  lines = result.stderr.splitlines()
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith('train.py: error: config.init_from is empty')
  assert 'convert_weights.py --format=torchvision' in lines[0]
  assert result.stdout == ''
  assert not os.path.exists(workdir)


def test_logged_metrics_are_means_and_rates_the_last_value():
  averager = reporting.MetricAverager()
  for loss, rate in ((3.0, 0.1), (1.0, 0.1), (2.0, 0.01)):
    averager.add({'loss': loss, 'learning_rate_heads': rate})
  # A decay inside the interval: the logged rate is the last step's.
  assert averager.pop() == {'loss': 2.0, 'learning_rate_heads': 0.01}
  assert averager.pop() == {}


def test_progress_lines_off_a_terminal(monkeypatch):
  clock = iter([0.0, 10.0, 20.0])
  monkeypatch.setattr(reporting.time, 'perf_counter', lambda: next(clock))
  stream = io.StringIO()
  progress = reporting.Progress(first_step=100, total_steps=300,
                                global_batch=8, stream=stream)
  progress.update(100, 1.5)  # not forced: nothing off a terminal (the
  # first step done: the rates count from here)
  assert stream.getvalue() == ''
  progress.update(150, 1.5, force=True)  # 50 steps in 10 s
  assert stream.getvalue() == ('step 150/300 (50%)  loss 1.5000  40.0 '
                               'images/s  ETA 0:30\n')
  # 100 steps of 8 images in 20 s: whole numbers, so exactly 40.0.
  assert progress.images_per_second(200) == 100 * 8 / 20


@pytest.mark.parametrize('first_step', [0, 1000], ids=['fresh', 'resumed'])
def test_progress_rates_leave_out_the_start_up(monkeypatch, first_step):
  # A clock the test moves: 600 s of start-up (restoring, compiling) before
  # this process's first step is done, then 2 s per step of 8 images.
  now = [0.0]
  monkeypatch.setattr(reporting.time, 'perf_counter', lambda: now[0])
  stream = io.StringIO()
  total = first_step + 101
  progress = reporting.Progress(first_step=first_step, total_steps=total,
                                global_batch=8, stream=stream)
  now[0] = 600.0
  # The first step done: its line cannot know the speed yet.
  progress.update(first_step + 1, 2.0, force=True)
  assert stream.getvalue().endswith('  ? images/s  ETA ?\n')
  assert progress.images_per_second(first_step + 1) is None
  now[0] += 2.0 * 10
  progress.update(first_step + 11, 2.0, force=True)  # 10 steps in 20 s
  # 4 images/s, and 90 steps left at 2 s each (with the start-up counted:
  # 0.1 images/s, ETA 1:24:33).
  assert stream.getvalue().splitlines()[-1].endswith(
      '  4.0 images/s  ETA 3:00')
  assert progress.images_per_second(first_step + 11) == 4.0


def test_mesh_device_lists_are_checked(monkeypatch):
  first, second = jax.devices()[:2]
  assert step_lib.make_mesh([second]).devices.tolist() == [second]
  with pytest.raises(ValueError, match='distinct and at least one'):
    step_lib.make_mesh([])
  with pytest.raises(ValueError, match='distinct and at least one'):
    step_lib.make_mesh([first, first])
  # In a run of several processes, every process's devices take part.
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  assert step_lib.make_mesh().size == 2
  with pytest.raises(ValueError, match='a run of 2 processes trains on all '
                     'their 2 devices, got 1'):
    step_lib.make_mesh([first])
