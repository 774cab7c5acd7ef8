"""Helpers shared by the test modules (no test module imports another).

Fixtures live in ``conftest.py``; this module holds plain functions and
constants: the tiny training config, commands and their environment, the
in-process runner of the command-line programs, report parsing.
"""

import base64
import dataclasses
import html.parser
import importlib
import importlib.util
import io
import os
import subprocess
import sys
from typing import Any, Optional

from absl import flags
import flax
import jax
from PIL import Image
import pytest

from sa_reid_jax.evaluation import report
from sa_reid_jax.models import store
from sa_reid_jax.training import checkpoints
from sa_reid_jax.training import experiment_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A small network and input: what the end-to-end tests check does not
# depend on size.
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


def set_keys(config, overrides: dict[str, Any]):
  """`config` with dotted keys (``'model.base_width'``) set; returns it."""
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    block = config
    for parent in parents:
      block = block[parent]
    block[leaf] = value
  return config


def tiny_config(data: str, **overrides):
  """The full SA network's experiment config, made tiny (`TINY`), on the
  Market-layout folder `data`, with `overrides` (dotted keys) on top."""
  config = experiment_config('market_layout_folder', 'full')
  config.dataset.folder = data
  return set_keys(config, {**TINY, **overrides})


def config_flag(key: str, value: Any) -> str:
  """``--config.KEY=VALUE`` as a user types it (tuples as ``(a,b)``)."""
  if isinstance(value, tuple):
    value = '(' + ','.join(str(v) for v in value) + ')'
  return f'--config.{key}={value}'


def train_command(data: str, workdir, config: str = 'demo_synthetic.py',
                  **overrides) -> list[str]:
  """``python train.py`` with a config of ``configs/``, made tiny."""
  return [sys.executable, os.path.join(REPO, 'train.py'),
          '--config=' + os.path.join(REPO, 'configs', config),
          f'--workdir={workdir}', f'--config.dataset.folder={data}',
          *(config_flag(k, v) for k, v in {**TINY, **overrides}.items())]


def environment(devices: int = 1, **variables: str) -> dict[str, str]:
  """The environment of a test's subprocess: this run's (compilation cache,
  optimisation setting), on `devices` host CPU devices."""
  return dict(os.environ, JAX_PLATFORMS='cpu',
              XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
              **variables)


def run_train(data: str, workdir, devices: int = 1, **overrides):
  """`train_command` in a subprocess; fails the test if it fails."""
  result = subprocess.run(train_command(data, workdir, **overrides),
                          env=environment(devices), capture_output=True,
                          text=True, timeout=900, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def trained_variables(workdir) -> dict[str, Any]:
  """The trained network of a run's workdir, as {'params/...': array}."""
  _, variables = store.load_model(os.path.join(workdir, 'model'))
  return flax.traverse_util.flatten_dict(jax.device_get(variables), sep='/')


def finalized_steps(workdir) -> list[int]:
  """The steps of a workdir's finished checkpoints, ascending."""
  directory = os.path.join(workdir, checkpoints.CHECKPOINT_DIR)
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


# --- command-line programs, in this process ---------------------------------


@dataclasses.dataclass
class CliResult:
  """What a command-line run gave: its exit status and captured output."""
  returncode: int
  stdout: str
  stderr: str


# The absl flags the repository-root scripts defined when loaded here.
_SCRIPT_FLAGS: set[str] = set()


def _forget_script_flags() -> None:
  """Removes the absl flags of previously loaded scripts (and the
  ``--config.*`` overrides ml_collections defined for them), so that the
  next script defines its own."""
  values = flags.FLAGS
  values.unparse_flags()
  names = set(_SCRIPT_FLAGS)
  names.update(name for name in list(values)
               if name == 'config' or name.startswith('config.'))
  for name in names:
    if name in values:
      delattr(values, name)
  _SCRIPT_FLAGS.clear()


def _exit_status(error: SystemExit) -> int:
  code = error.code
  if code is None:
    return 0
  if isinstance(code, int):
    return code
  print(code, file=sys.stderr)  # what the interpreter does with a message
  return 1


def run_in_process(program: str, args: list[str], monkeypatch) -> int:
  """Runs ``python PROGRAM ARGS`` (a script of the repository root, e.g.
  ``train.py``) or ``python -m PROGRAM ARGS`` (a module with ``main(argv)``)
  in this process, from the repository root; returns its exit status.

  Use the ``cli`` fixture, which also captures the output.
  """
  monkeypatch.chdir(REPO)
  if program.endswith('.py'):
    path = os.path.join(REPO, program)
    argv = [path, *args]
    monkeypatch.setattr(sys, 'argv', argv)
    _forget_script_flags()
    name = '_cli_' + os.path.basename(program)[:-3]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    before = set(flags.FLAGS)
    try:
      try:
        spec.loader.exec_module(module)
      finally:
        _SCRIPT_FLAGS.update(set(flags.FLAGS) - before)
      module.run(argv)
    except SystemExit as e:
      return _exit_status(e)
    finally:
      _forget_script_flags()
    return 0
  monkeypatch.setattr(sys, 'argv', [program, *args])
  module = importlib.import_module(program)
  try:
    status = module.main(args)
  except SystemExit as e:
    return _exit_status(e)
  return int(status or 0)


# --- the HTML evaluation report ----------------------------------------------


class ReportParser(html.parser.HTMLParser):
  """Collects the images' sources and the tables' keyed numbers."""

  def __init__(self):
    super().__init__()
    self.images, self.cells, self.external = [], {}, []
    self._key: Optional[str] = None

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag == 'img':
      self.images.append(attrs['src'])
    if tag in ('link', 'script') or (tag == 'img' and not attrs['src']
                                     .startswith('data:')):
      self.external.append((tag, attrs))
    self._key = attrs.get('data-key') if tag == 'td' else None

  def handle_data(self, data):
    if self._key is not None:
      self.cells[self._key] = data
      self._key = None


def parse_report(path):
  """(parser, decoded PIL images) of a report file; every image must decode."""
  parser = ReportParser()
  with open(path, encoding='utf-8') as f:
    parser.feed(f.read())
  assert not parser.external, f'external resources: {parser.external}'
  decoded = []
  for source in parser.images:
    header, data = source.split(',', 1)
    assert header in ('data:image/png;base64', 'data:image/jpeg;base64')
    image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
    image.load()  # decodes the whole image, raising on corrupt data
    assert image.width > 0 and image.height > 0
    decoded.append(image)
  return parser, decoded


def check_report_numbers(parser, metrics):
  """Every metric of metrics.json is in the report, shown to 0.01%."""
  settings = [s for s in report.SETTINGS if s in metrics]
  assert settings
  for setting in settings:
    for key, _ in report.METRIC_COLUMNS:
      shown = float(parser.cells[f'{setting}.{key}'])
      # The report prints percentages with two decimals: half a unit of the
      # last printed digit.
      assert shown == pytest.approx(100 * metrics[setting][key], abs=0.005)
    assert int(parser.cells[f'{setting}.num_valid_queries']) == (
        metrics[setting]['num_valid_queries'])
  assert not [k for k in parser.cells if k.split('.')[0] in report.SETTINGS
              and k.split('.')[0] not in settings]
