"""eval.py end to end: a small model on a small synthetic dataset.

The command lines run in this process (the ``cli`` fixture); real processes
check what a user's terminal shows (TensorFlow's start-up notices hidden).
"""

import json
import logging
import os
import pathlib
import re
import shutil

import helpers
import jax
import numpy as np
import pytest

import sa_reid_jax
from sa_reid_jax import command_line
from sa_reid_jax.models import sanet_variant
from sa_reid_jax.models import store

IMAGE_SIZE = (64, 32)
CONFIG = os.path.join(helpers.REPO, 'configs', 'sa.py') + ':market1501'


@pytest.fixture(scope='module')
def setup(tmp_path_factory, synthetic_dataset):
  """(root, data): a converted-style model (no recorded size) in
  ROOT/model, and a small synthetic dataset."""
  root = tmp_path_factory.mktemp('eval')
  data = pathlib.Path(synthetic_dataset(num_ids=6, num_cameras=3, seed=0))
  model = sanet_variant('full', num_classes=6, stage_sizes=(1, 1, 1, 1),
                        base_width=4)
  sa_reid_jax.save_model(str(root / 'model'), model,
                         helpers.he_scaled_variables(model))
  return root, data


def eval_arguments(*args, image_size=IMAGE_SIZE):
  size = [helpers.config_flag('image_size', image_size)] if image_size else []
  return [f'--config={CONFIG}', *size, '--config.eval.batch_size=5', *args]


def run_eval(cli, *args, image_size=IMAGE_SIZE):
  """``python eval.py`` with the market1501 config, in this process."""
  return cli('eval.py', *eval_arguments(*args, image_size=image_size))


def library_notices(stderr):
  """TensorFlow's start-up notices and libraries' INFO lines in `stderr`
  (XLA's own alarm about a slow compile on a busy machine aside)."""
  return [line for line in stderr.splitlines()
          if re.match(r'[IW]\d{4} |I0000 ', line) or 'oneDNN' in line
          or 'cpu_feature_guard' in line or 'absl::InitializeLog' in line]


def test_eval_prints_and_writes_metrics(setup, cli):
  root, data = setup
  result = run_eval(cli, f'--checkpoint={root / "model"}', '--rerank',
                    '--flip', '--report',
                    '--config.eval.report_thumbnail=(32, 16)',
                    f'--config.dataset.folder={data}',
                    f'--output_dir={root / "out"}')
  assert result.returncode == 0, result.stderr
  assert 'plain' in result.stdout and 'reranked' in result.stdout
  with open(root / 'out' / 'metrics.json') as f:
    metrics = json.load(f)
  for setting in ('plain', 'reranked'):
    values = metrics[setting]
    assert 0 < values['num_valid_queries']
    for key in ('rank1', 'rank5', 'rank10', 'mAP', 'mINP'):
      assert 0.0 <= values[key] <= 1.0
    assert values['rank1'] <= values['rank5'] <= values['rank10']
    assert f'mAP {100 * values["mAP"]:.2f}' in result.stdout
  assert metrics['settings']['flip'] is True
  num_query = len([n for n in os.listdir(data / 'query') if n.endswith('.jpg')])
  assert metrics['settings']['num_query'] == num_query
  # Verification over the plain distances, at config.eval.verification_fprs.
  verification = metrics['verification']
  assert verification['fpr'] == [1e-4, 1e-3, 1e-2]
  assert len(verification['tpr']) == len(verification['threshold']) == 3
  assert 0.0 <= verification['auc'] <= 1.0
  assert verification['curve']['tpr'][-1] == 1.0
  assert 'verification TPR' in result.stdout
  # The report beside metrics.json: its images decode, its numbers are these.
  parser, images = helpers.parse_report(root / 'out' / 'report.html')
  helpers.check_report_numbers(parser, metrics)
  assert len(images) > 3
  assert f'wrote {root / "out" / "report.html"}' in result.stdout


def test_metrics_next_to_the_model_keep_it_loadable(setup, cli):
  root, data = setup
  result = run_eval(cli, f'--checkpoint={root / "model"}',
                    f'--config.dataset.folder={data}')
  assert result.returncode == 0, result.stderr
  assert (root / 'model' / 'metrics.json').exists()
  model, variables = sa_reid_jax.load_model(str(root / 'model'))
  assert model.num_classes == 6
  assert np.isfinite(jax.tree.leaves(variables)[0]).all()


@pytest.mark.parametrize('bad, message', [
    ('checkpoint', 'no such model directory'),
    ('folder', 'query: missing; a dataset folder in Market-1501 layout'),
])
def test_bad_paths_give_one_clear_error(setup, cli, tmp_path, bad, message):
  root, data = setup
  checkpoint = tmp_path / 'none' if bad == 'checkpoint' else root / 'model'
  folder = tmp_path if bad == 'folder' else data
  result = run_eval(cli, f'--checkpoint={checkpoint}',
                    f'--config.dataset.folder={folder}')
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  assert message in result.stderr


@pytest.fixture(scope='module')
def workdir(setup):
  """A training workdir's layout around a model trained at IMAGE_SIZE."""
  root, _ = setup
  model, variables = sa_reid_jax.load_model(str(root / 'model'))
  path = root / 'workdir'
  (path / 'checkpoints').mkdir(parents=True)
  sa_reid_jax.save_model(str(path / 'model'), model, variables,
                         metadata={'image_size': list(IMAGE_SIZE),
                                   'trained_steps': TRAINED_STEPS})
  return path


# The steps `workdir`'s model records.
TRAINED_STEPS = 7


def test_workdir_and_trained_size_are_used_and_output_is_ours(setup, workdir,
                                                              cli, caplog):
  _, data = setup
  # sa.py:market1501 says 384x128; the model records 64x32.
  caplog.clear()
  implicit = run_eval(cli, f'--checkpoint={workdir}',
                      f'--config.dataset.folder={data}',
                      f'--output_dir={workdir / "implicit"}',
                      image_size=None)
  assert implicit.returncode == 0, implicit.stderr
  assert (f'{workdir} is a training workdir: using its trained network, '
          f'{workdir / "model"}') in implicit.stdout
  assert 'input size 64x32 (the size the model was trained at)' in (
      implicit.stdout)
  # Only our lines: no library INFO lines (in this process they are the
  # log records below WARNING; TensorFlow's start-up notices: see the real
  # process below).
  assert not library_notices(implicit.stderr), implicit.stderr
  assert not [r for r in caplog.records if r.levelno < logging.WARNING], [
      r.getMessage() for r in caplog.records]
  caplog.clear()
  try:
    explicit = run_eval(cli, f'--checkpoint={workdir / "model"}',
                        f'--config.dataset.folder={data}',
                        f'--output_dir={workdir / "explicit"}',
                        '--verbosity=0')
  finally:  # the libraries' logging as the other tests expect it
    command_line.set_library_verbosity(command_line.WARNING_VERBOSITY)
  assert explicit.returncode == 0, explicit.stderr
  assert 'input size 64x32 (--config.image_size)' in explicit.stdout
  # --verbosity=0 lets orbax's INFO lines through.
  assert [r for r in caplog.records if r.levelno == logging.INFO and
          'checkpoint' in r.getMessage().lower() and
          f'{os.sep}orbax{os.sep}' in r.pathname]
  metrics = []
  for name in ('implicit', 'explicit'):
    with open(workdir / name / 'metrics.json') as f:
      metrics.append(json.load(f))
  assert metrics[0]['settings']['image_size'] == list(IMAGE_SIZE)
  assert metrics[0] == metrics[1]


def test_metrics_name_their_source_and_a_stale_report_goes(setup, workdir,
                                                           cli, tmp_path):
  _, data = setup
  output = tmp_path / 'out'
  output.mkdir()
  # An earlier evaluation's report, which the new metrics would not match.
  (output / 'report.html').write_text('<html>an older evaluation</html>')
  result = run_eval(cli, f'--checkpoint={workdir}',
                    f'--config.dataset.folder={data}',
                    f'--output_dir={output}', image_size=None)
  assert result.returncode == 0, result.stderr
  with open(output / 'metrics.json') as f:
    settings = json.load(f)['settings']
  # What was evaluated: the model directory (the workdir's), its steps and
  # the size it ran at, the trained one.
  assert settings['checkpoint'] == str(workdir / 'model')
  assert settings['trained_steps'] == TRAINED_STEPS
  assert settings['image_size'] == settings['trained_image_size'] == list(
      IMAGE_SIZE)
  assert settings['image_size_matches_training'] is True
  assert not (output / 'report.html').exists()
  assert (f'removed {output / "report.html"}: an earlier evaluation\'s '
          'report, which the new metrics.json does not match (--report '
          'writes a new one)') in result.stdout.splitlines()


def test_another_image_size_is_said_by_report_and_metrics(setup, workdir,
                                                          cli, tmp_path):
  _, data = setup
  result = run_eval(cli, f'--checkpoint={workdir / "model"}', '--report',
                    '--config.eval.report_thumbnail=(32, 16)',
                    f'--config.dataset.folder={data}',
                    f'--output_dir={tmp_path}', image_size=(96, 64))
  assert result.returncode == 0, result.stderr
  assert ('warning: --config.image_size 96x64 differs from the size the '
          'model was trained at, 64x32; using 96x64') in result.stdout
  with open(tmp_path / 'metrics.json') as f:
    settings = json.load(f)['settings']
  assert settings['image_size'] == [96, 64]
  assert settings['trained_image_size'] == list(IMAGE_SIZE)
  assert settings['image_size_matches_training'] is False
  text = (tmp_path / 'report.html').read_text(encoding='utf-8')
  assert ('<p class="warning" id="warning"><strong>Warning:</strong> '
          'evaluated at image size 96x64, not at 64x32, the size the model '
          'was trained at: these scores do not describe the model at its own '
          'size</p>'
          ) in text
  assert f'<td class="name">{TRAINED_STEPS}</td>' in text


@pytest.mark.full
def test_eval_py_in_a_real_process_prints_only_its_own_lines(setup, workdir):
  # The one real-process run of a whole evaluation: a user's terminal shows
  # our lines on stdout and nothing from TensorFlow or the libraries.
  _, data = setup
  result = helpers.run_as_user(
      'eval.py', *eval_arguments(f'--checkpoint={workdir}',
                                 f'--config.dataset.folder={data}',
                                 f'--output_dir={workdir / "process"}',
                                 image_size=None))
  assert result.returncode == 0, result.stderr
  assert 'input size 64x32 (the size the model was trained at)' in (
      result.stdout)
  assert f'wrote {workdir / "process" / "metrics.json"}' in result.stdout
  assert not helpers.lines_besides_slow_compile_alarms(result.stderr), (
      result.stderr)


@pytest.mark.parametrize('kind, message', [
    ('missing', 'no such model directory'),
    ('empty', 'empty; expected a model directory (written by '
     'convert_weights.py or by training as WORKDIR/model)'),
    ('foreign', 'not a model directory (no "model" and "variables" items) '
     'nor a training workdir; expected the output of convert_weights.py or '
     'a training WORKDIR/model'),
    ('unfinished', 'a training workdir whose run has not finished (no '
     'model/ in it yet); run train.py with this --workdir to the end, or '
     'pass a model directory'),
])
def test_wrong_directories_are_named(tmp_path, kind, message):
  path = tmp_path / 'given'
  if kind != 'missing':
    path.mkdir()
  if kind == 'foreign':
    (path / 'notes.txt').write_text('not a model')
  if kind == 'unfinished':
    (path / 'checkpoints').mkdir()
  with pytest.raises(store.ModelStoreError) as error:
    store.resolve_model_directory(str(path))
  assert str(error.value) == f'{path}: {message}'
  # Every reader says the same, not an orbax error about missing files.
  with pytest.raises(store.ModelStoreError) as error:
    store.load_model_info(str(path))
  assert str(error.value) == f'{path}: {message}'


def test_resolver_says_which_directory_it_uses(workdir):
  said = []
  assert store.resolve_model_directory(str(workdir), say=said.append) == str(
      workdir / 'model')
  assert said == [f'{workdir} is a training workdir: using its trained '
                  f'network, {workdir / "model"}']
  assert store.resolve_model_directory(str(workdir / 'model'),
                                       say=said.append) == str(
                                           workdir / 'model')
  assert len(said) == 1


def test_input_size_prefers_the_trained_size_and_warns(setup, workdir):
  root, _ = setup
  said = []
  trained = str(workdir / 'model')
  assert store.input_size(trained, None, say=said.append) == IMAGE_SIZE
  assert store.input_size(trained, (32, 16), flag='--config.image_size',
                          say=said.append) == (32, 16)
  # A converted model records no size: the default (a config's) is used.
  assert store.input_size(str(root / 'model'), None, default=(48, 24),
                          say=said.append) == (48, 24)
  assert said == [
      'input size 64x32 (the size the model was trained at)',
      'warning: --config.image_size 32x16 differs from the size the model '
      'was trained at, 64x32; using 32x16',
      'input size 32x16 (--config.image_size)',
      'input size 48x24 (the model records no size)']


def test_eval_py_in_a_real_process_names_a_wrong_directory(setup, tmp_path):
  # A real process: what a user's terminal shows is the error alone, without
  # TensorFlow's start-up notices (which some CPUs print whatever
  # TF_CPP_MIN_LOG_LEVEL says).
  _, data = setup
  result = helpers.run_as_user('eval.py', *eval_arguments(
      f'--checkpoint={tmp_path}', f'--config.dataset.folder={data}'))
  assert result.returncode == 1
  assert result.stderr.splitlines() == [
      f'eval.py: error: --checkpoint: {tmp_path}: empty; expected a model '
      'directory (written by convert_weights.py or by training as '
      'WORKDIR/model)'], result.stderr
  assert not result.stdout


def test_cosine_distances_re_rank(setup, cli):
  # Cosine distances of an image to itself rounded below zero, and
  # re-ranking refused them.
  root, data = setup
  result = run_eval(cli, f'--checkpoint={root / "model"}', '--rerank',
                    '--config.eval.metric=cosine',
                    f'--config.dataset.folder={data}',
                    f'--output_dir={root / "cosine"}')
  assert result.returncode == 0, result.stderr
  with open(root / 'cosine' / 'metrics.json') as f:
    metrics = json.load(f)
  assert metrics['settings']['metric'] == 'cosine'
  assert 0 < metrics['reranked']['mAP'] <= 1


@pytest.mark.parametrize('flag, message', [
    ('--config.eval.metric=manhattan', "config.eval.metric must be one of "),
    ('--config.eval.k1=-5', 'config.eval.k1 must be an integer >= 1, got -5'),
    ('--config.model.dtype=float8', 'config.model.dtype must be one of '),
    ('--config.eval.report_thumbnail=(0,0)', 'config.eval.report_thumbnail'),
    ('--config.image_size=(0,64)', 'config.image_size'),
    ('--config.eval.verification_fprs=(0.01,1.5)',
     'config.eval.verification_fprs[1] must be in (0, 1), got 1.5'),
])
def test_bad_config_values_are_refused_before_any_work(setup, cli, tmp_path,
                                                       flag, message):
  root, data = setup
  result = cli('eval.py', *eval_arguments(
      f'--checkpoint={root / "model"}', f'--config.dataset.folder={data}',
      f'--output_dir={tmp_path}', '--report', flag, image_size=None))
  assert result.returncode == 1
  assert result.stderr.startswith(f'eval.py: error: {message}'), result.stderr
  assert len(result.stderr.splitlines()) == 1, result.stderr
  # Refused before extraction: no progress line, nothing written.
  assert 'images' not in result.stdout
  assert not os.listdir(tmp_path)


def test_a_one_camera_dataset_is_refused_before_extraction(setup, cli,
                                                           tmp_path):
  root, data = setup
  folder = helpers.one_camera_copy(data, tmp_path / 'one_camera')
  output = tmp_path / 'out'
  output.mkdir()
  result = run_eval(cli, f'--checkpoint={root / "model"}',
                    f'--config.dataset.folder={folder}',
                    f'--output_dir={output}')
  assert result.returncode == 1
  assert result.stderr.startswith(
      f'eval.py: error: config.dataset.folder: {folder}: no query has a '
      'gallery match from another camera'), result.stderr
  assert len(result.stderr.splitlines()) == 1, result.stderr
  assert 'images' not in result.stdout
  assert not os.listdir(output)


def test_corrupt_image_is_named_before_any_work(setup, cli, tmp_path):
  root, data = setup
  copy = tmp_path / 'data'
  shutil.copytree(data, copy)
  victim = sorted((copy / 'bounding_box_test').iterdir())[3]
  contents = victim.read_bytes()
  victim.write_bytes(contents[:len(contents) // 2])  # an interrupted copy
  # A macOS AppleDouble file: skipped and counted, not an error.
  (copy / 'query' / f'._{victim.name}').write_bytes(b'\x00\x05\x16\x07')
  result = run_eval(cli, f'--checkpoint={root / "model"}',
                    f'--config.dataset.folder={copy}')
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  lines = result.stderr.splitlines()
  # TensorFlow's C++ decoder logs its own complaint first (a known leak).
  first = lines.index(f'eval.py: error: 1 unreadable image in {copy}; '
                      'remove or replace it:')
  assert lines[first + 1].startswith(f'  {victim}: not a decodable image (')
  assert 'skipped 1 hidden or system file' in result.stdout
