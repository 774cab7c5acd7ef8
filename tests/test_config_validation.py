"""The start-up checks of a training config (`training.validation`).

Each bad value is refused before any work with one error naming its key
and what it allows; every shipped config passes; a dataset no evaluation
can score (one camera) and a resume at another image size are refused
before training.
"""

import os
import re
import shutil

import helpers
import numpy as np
import pytest

from sa_reid_jax.evaluation import metrics
from sa_reid_jax.training import checkpoints
from sa_reid_jax.training import trainer
from sa_reid_jax.training import validation

# The folder is not read by `check_config` (only the dataset's name is
# checked, when no folder is given).
UNREAD_FOLDER = '/nonexistent/market-layout-folder'

BAD_VALUES = [
    # Accepted silently before: gradient ascent, the whole schedule,
    # evaluations never made.
    ({'optimizer.learning_rate': -0.1},
     'config.optimizer.learning_rate must be >= 0, got -0.1'),
    ({'optimizer.learning_rate': float('nan')},
     'config.optimizer.learning_rate must be >= 0, got nan'),
    ({'max_steps': -3},
     'config.max_steps must be an integer >= 0 (0: the whole schedule), '
     'got -3'),
    ({'eval.every_epochs': -1},
     'config.eval.every_epochs must be an integer >= 0 (0: only at the '
     'end), got -1'),
    # Found only at the first evaluation, after training, before.
    ({'eval.metric': 'manhattan'},
     "config.eval.metric must be one of ('euclidean', 'cosine'), got "
     "'manhattan'"),
    ({'eval.batch_size': 0},
     'config.eval.batch_size must be an integer >= 1, got 0'),
    ({'eval.k1': -5}, 'config.eval.k1 must be an integer >= 1, got -5'),
    ({'eval.k2': 0}, 'config.eval.k2 must be an integer >= 1, got 0'),
    ({'eval.lambda_value': 7.0},
     'config.eval.lambda_value must be in [0, 1], got 7.0'),
    ({'eval.report_thumbnail': (0, 0)},
     'config.eval.report_thumbnail must be a positive (height, width), got '
     '(0, 0)'),
    ({'eval.max_rank': 0},
     'config.eval.max_rank must be an integer >= 1, got 0'),
    ({'eval.report_topk': 0},
     'config.eval.report_topk must be an integer >= 1, got 0'),
    ({'eval.report_hardest': -1},
     'config.eval.report_hardest must be an integer >= 0, got -1'),
    # Tracebacks from inside the network before.
    ({'model.dtype': 'float8'},
     "config.model.dtype must be one of ('float32', 'bfloat16', 'float64'), "
     "got 'float8'"),
    ({'model.base_width': -4},
     'config.model.base_width must be an integer >= 1, got -4'),
    ({'model.stage_sizes': (1, 1, 1)},
     'config.model.stage_sizes must be 4 integers >= 1 (blocks per ResNet '
     'stage), got (1, 1, 1)'),
    ({'model.last_stride': 3},
     'config.model.last_stride must be one of (1, 2), got 3'),
    ({'model.dropout_rate': 1.0},
     'config.model.dropout_rate must be in [0, 1), got 1.0'),
    ({'model.variant': 'sa3'}, 'config.model.variant must be one of ['),
    ({'model.family': 'mgn'}, 'config.model.family must be one of ['),
    # The other blocks.
    ({'seed': -1}, 'config.seed must be an integer >= 0, got -1'),
    ({'task': 'ranking'},
     "config.task must be one of ('casn', 'identification'), got 'ranking'"),
    ({'num_epochs': 0}, 'config.num_epochs must be an integer >= 1, got 0'),
    ({'log_every_steps': 0},
     'config.log_every_steps must be an integer >= 1, got 0'),
    ({'prefetch_batches': 0},
     'config.prefetch_batches must be an integer >= 1, got 0'),
    ({'batch_size': 0}, 'config.batch_size must be an integer >= 1, got 0'),
    ({'optimizer.name': 'rmsprop'}, 'config.optimizer.name must be one of'),
    ({'optimizer.weight_decay': -1e-4},
     'config.optimizer.weight_decay must be >= 0, got -0.0001'),
    ({'optimizer.backbone_lr_multiplier': -1.0},
     'config.optimizer.backbone_lr_multiplier must be >= 0, got -1.0'),
    ({'optimizer.decay_factor': 0.0},
     'config.optimizer.decay_factor must be in (0, 1], got 0.0'),
    ({'optimizer.momentum': 1.0},
     'config.optimizer.momentum must be in [0, 1), got 1.0'),
    ({'optimizer.adam_epsilon': 0.0},
     'config.optimizer.adam_epsilon must be > 0, got 0.0'),
    ({'augmentation.flip_probability': 1.5},
     'config.augmentation.flip_probability must be in [0, 1], got 1.5'),
    ({'augmentation.erasing_fill': 'noise'},
     'config.augmentation: RandomErasing.fill'),
    ({'checkpoint.keep': 0},
     'config.checkpoint.keep must be an integer >= 1, got 0'),
    ({'checkpoint.every_steps': 0},
     'config.checkpoint.every_steps must be an integer >= 1, got 0'),
    ({'loss.terms.cross_entropy.weighting': 'mean'},
     'config.loss.terms.cross_entropy.weighting must be one of'),
    ({'init_from': ''}, 'config.init_from is empty'),
    ({'dataset.folder': '', 'dataset.name': 'market1051'},
     "config.dataset.name: unknown dataset 'market1051'; did you mean "
     "'market1501'"),
]


@pytest.mark.parametrize('overrides, message', BAD_VALUES,
                         ids=[next(iter(o)) for o, _ in BAD_VALUES])
def test_a_bad_value_names_its_key_and_what_it_allows(overrides, message):
  config = helpers.tiny_config(UNREAD_FOLDER, **overrides)
  with pytest.raises(ValueError) as error:
    validation.check_config(config)
  assert str(error.value).startswith(message), str(error.value)
  assert '\n' not in str(error.value)


def test_the_batch_must_split_over_devices_and_processes():
  config = helpers.tiny_config(UNREAD_FOLDER, batch_size=6)
  validation.check_config(config, device_count=2, process_count=2)
  with pytest.raises(ValueError, match=r'^config\.batch_size 6 must be a '
                     r'multiple of the number of devices \(4\)'):
    validation.check_config(config, device_count=4)
  with pytest.raises(ValueError, match=r'^config\.batch_size 6 must be a '
                     r'multiple of the number of processes \(4\)'):
    validation.check_config(config, process_count=4)


@pytest.mark.parametrize('path', helpers.CONFIG_FILES, ids=os.path.basename)
def test_every_documented_config_passes(path):
  for argv in helpers.documented_commands(path, 'train.py'):
    validation.check_config(helpers.parse_command(argv))


def test_the_tiny_config_and_its_special_values_pass():
  # 0 is "no limit", "only at the end", "none" or "no update" here.
  validation.check_config(helpers.tiny_config(
      UNREAD_FOLDER, max_steps=0, **{'eval.every_epochs': 0,
                                     'eval.report_hardest': 0,
                                     'eval.report_random': 0,
                                     'optimizer.learning_rate': 0.0,
                                     'optimizer.backbone_lr_multiplier': 0.0,
                                     'optimizer.momentum': 0.0,
                                     'model.dtype': 'bfloat16'}))


@pytest.mark.parametrize('override, message', [
    ('--config.optimizer.learning_rate=-0.1',
     'config.optimizer.learning_rate must be >= 0, got -0.1'),
    ('--config.model.dtype=float8', 'config.model.dtype must be one of'),
])
def test_train_py_refuses_in_one_line_before_the_workdir(data, tmp_path, cli,
                                                          override, message):
  workdir = tmp_path / 'run'
  command = helpers.train_command(data, workdir)
  result = cli('train.py', *command[2:], override)
  assert result.returncode == 1
  lines = result.stderr.splitlines()
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith(f'train.py: error: {message}'), lines[0]
  assert 'Traceback' not in result.stderr
  assert not workdir.exists()


def test_valid_queries_follow_the_protocol():
  # Query 0: its person's gallery image is from another camera (valid);
  # 1: only from its own camera; 2: junk; 3: a person not in the gallery.
  valid = metrics.valid_queries(
      q_pids=[5, 6, -1, 9], g_pids=[5, 6, -1, 0],
      q_camids=[0, 1, 0, 0], g_camids=[1, 1, 1, 1])
  np.testing.assert_array_equal(valid, [True, False, False, False])


def test_a_one_camera_dataset_is_refused_before_training(data, tmp_path):
  folder = helpers.one_camera_copy(data, tmp_path / 'one_camera')
  workdir = tmp_path / 'run'
  with pytest.raises(ValueError) as error:
    trainer.train_and_evaluate(helpers.tiny_config(folder), str(workdir))
  message = str(error.value)
  assert message.startswith(
      f'config.dataset.folder: {folder}: no query has a gallery match from '
      'another camera'), message
  assert 'query cameras: c1, gallery cameras: c1' in message
  assert '\n' not in message
  assert not workdir.exists()


def test_resuming_at_another_image_size_is_refused(data, tmp_path,
                                                   finished_run):
  workdir = tmp_path / 'run'
  shutil.copytree(finished_run, workdir)
  with pytest.raises(checkpoints.ResumeError, match=re.escape(
      'config.image_size was [64, 32], is now [32, 16]')):
    trainer.train_and_evaluate(
        helpers.tiny_config(data, max_steps=4, image_size=(32, 16)),
        str(workdir))
