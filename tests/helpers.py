"""Helpers shared by the test modules (no test module imports another).

Fixtures live in ``conftest.py``; this module holds plain functions and
constants: the tiny training config, commands and their environment, the
in-process runner of the command-line programs, report parsing.
"""

import base64
import dataclasses
import glob
import html.parser
import importlib
import importlib.util
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from typing import Any, Optional
from unittest import mock

from absl import flags
import flax
import jax
from ml_collections import config_flags
import numpy as np
from PIL import Image
import pytest

from sa_reid_jax.evaluation import report
from sa_reid_jax.models import store
from sa_reid_jax.training import casn_defaults
from sa_reid_jax.training import checkpoints
from sa_reid_jax.training import defaults
from sa_reid_jax.training import rga_defaults
from sa_reid_jax.training import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tests' small network and input: the SA config's `tiny` option
# (configs/sa.py:...,tiny; what the end-to-end tests check does not depend
# on size), and no report (tested once, in
# test_training_options_run_and_learn) and no re-ranking (its own tests).
TEST_SETTINGS = {'eval.report': False, 'eval.rerank': False}
TINY = {**defaults.TINY, **TEST_SETTINGS}


def set_keys(config, overrides: dict[str, Any]):
  """`config` with dotted keys (``'model.base_width'``) set; returns it."""
  return defaults.with_overrides(config, overrides)


def tiny_config(data: str, **overrides):
  """``configs/sa.py:market_layout_folder,tiny`` (the full SA network,
  small) on the Market-layout folder `data`, with `TEST_SETTINGS` and
  `overrides` (dotted keys) on top."""
  config = load_config_module(os.path.join(REPO, 'configs', 'sa.py')
                              ).get_config('market_layout_folder,tiny')
  config.dataset.folder = data
  return set_keys(config, {**TEST_SETTINGS, **overrides})


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


def _defined_by_script(names: set[str], script: str) -> set[str]:
  """Those of `names` (flags new since the script was loaded) that the
  script defined, not a library it imported for the first time (e.g.
  orbax's or TensorFlow's flags, which stay: their modules are not loaded
  again). absl records a flag defined at a script's top level under the
  script's module name, or under ``importlib._bootstrap`` when the script
  runs through importlib."""
  by_libraries = set()
  for module, defined in flags.FLAGS.flags_by_module_dict().items():
    if module in sys.modules and module not in (script,
                                                'importlib._bootstrap'):
      by_libraries.update(flag.name for flag in defined)
  return names - by_libraries


def _exit_status(error: SystemExit) -> int:
  code = error.code
  if code is None:
    return 0
  if isinstance(code, int):
    return code
  print(code, file=sys.stderr)  # what the interpreter does with a message
  return 1


def run_in_process(program: str, args: list[str], monkeypatch,
                   cwd: str = REPO) -> int:
  """Runs ``python PROGRAM ARGS`` (a script of the repository root, e.g.
  ``train.py``) or ``python -m PROGRAM ARGS`` (a module with ``main(argv)``)
  in this process, from `cwd` (default the repository root); returns its
  exit status.

  Use the ``cli`` fixture, which also captures the output.
  """
  monkeypatch.chdir(cwd)
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
        _SCRIPT_FLAGS.update(_defined_by_script(set(flags.FLAGS) - before,
                                                name))
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


# --- hypothesis: examples per property, by tier ------------------------------

# Set by conftest.py before the test modules are collected: True under --full.
full_tier = False
# The full tier tries this many times each property's fast-tier examples.
FULL_TIER_EXAMPLE_FACTOR = 4


def examples(fast_tier: int) -> int:
  """A property's hypothesis ``max_examples``: `fast_tier` in the fast tier,
  `FULL_TIER_EXAMPLE_FACTOR` times as many in the full tier."""
  return fast_tier * (FULL_TIER_EXAMPLE_FACTOR if full_tier else 1)


# --- comparisons with reference implementations ------------------------------


def relative_error(actual, reference) -> float:
  """max |actual - reference| / max |reference|, computed in float64."""
  reference = np.asarray(reference, np.float64)
  return float(np.max(np.abs(np.asarray(actual, np.float64) - reference)) /
               np.max(np.abs(reference)))


def worst_leaf_error(actual, expected, error_fn=relative_error):
  """(worst error, path) over the leaves of two trees of equal structure."""
  leaves = jax.tree_util.tree_leaves_with_path(expected)
  actual_leaves = jax.tree.leaves(actual)
  assert len(actual_leaves) == len(leaves)
  errors = [(error_fn(a, e), jax.tree_util.keystr(path))
            for (path, e), a in zip(leaves, actual_leaves)]
  return max(errors)


def torch_to_flax(state, template, source_fn, skip_patterns=()):
  """PyTorch-named arrays laid out as `template`'s tree, in their own dtype.

  `source_fn(path)` is the converter's `Source` of a Flax path (e.g.
  `mapping.source_for` with its arguments bound, or `rga_source_for`): the
  PyTorch names and layout. Unlike the converter, which stores float32,
  the arrays keep their dtype, so that float64 references stay float64.
  Every leaf must be found with the template's shape, and every name of
  `state` used, except names matching a regular expression of
  `skip_patterns`.
  """
  flat = flax.traverse_util.flatten_dict(template)
  tree, used = {}, set()
  for path, leaf in flat.items():
    source = source_fn(path)
    assert source is not None, f'no PyTorch name for {"/".join(path)}'
    arrays = [np.asarray(state[name]) for name in source.torch_names]
    used.update(source.torch_names)
    tree[path] = source.to_flax(arrays)
    assert tree[path].shape == tuple(leaf.shape), (path, tree[path].shape)
  unused = [name for name in set(state) - used
            if not any(re.fullmatch(p, name) for p in skip_patterns)]
  assert not unused, f'PyTorch names with no Flax leaf: {sorted(unused)}'
  return flax.traverse_util.unflatten_dict(tree)


# --- data-parallel computations on this process's devices --------------------


def data_parallel_gradient(loss, weights, inputs, labels, devices):
  """The data-parallel gradient of ``loss(weights, inputs, labels,
  axis_name)`` on `devices`, as the train step takes it: `inputs` and
  `labels` split along their first axis, every device's gradient of its
  share's loss, averaged over the devices (`pmean`)."""
  from jax.sharding import Mesh, PartitionSpec  # pylint: disable=g-import-not-at-top
  from sa_reid_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top
  mesh = Mesh(np.asarray(devices), ('data',))

  def per_device(w, x, y):
    w = step_lib._per_device(w, 'data')  # pylint: disable=protected-access
    return jax.lax.pmean(jax.grad(loss)(w, x, y, 'data'), 'data')

  mapped = jax.jit(jax.shard_map(
      per_device, mesh=mesh,
      in_specs=(PartitionSpec(), PartitionSpec('data'), PartitionSpec('data')),
      out_specs=PartitionSpec()))
  return np.asarray(mapped(weights, inputs, labels))


# --- random networks and images, without a compiled init ---------------------


def he_scaled_variables(model, seed: int = 0) -> Any:
  """He-scaled random variables of `model`, near-identity BatchNorm.

  Drawn in numpy on the shapes of `store.abstract_variables` (no compiled
  ``model.init``, ~10 s on 2 cores), and as sensitive to the input as a
  fresh network; the BatchNorm statistics are not the trivial (0, 1).
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'var':  # BatchNorm variances must be positive
      values = rng.uniform(0.5, 1.5, leaf.shape)
    elif name == 'scale':
      values = 1 + 0.1 * rng.standard_normal(leaf.shape)
    elif name in ('mean', 'bias'):
      values = 0.1 * rng.standard_normal(leaf.shape)
    else:
      fan_in = np.prod(leaf.shape[:-1])
      values = np.sqrt(2 / fan_in) * rng.standard_normal(leaf.shape)
    return values.astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill,
                                          store.abstract_variables(model))


def block_images(rng, shape) -> np.ndarray:
  """uint8 images of coarse colour blocks plus noise (unlike pure noise,
  they give clearly different descriptors)."""
  batch, height, width, _ = shape
  blocks = rng.integers(0, 256, (batch, 8, 4, 3))
  rows = np.arange(height) * 8 // height
  columns = np.arange(width) * 4 // width
  images = blocks[:, rows][:, :, columns] + rng.integers(-20, 21, shape)
  return np.clip(images, 0, 255).astype(np.uint8)


# --- exported networks (SavedModel, ONNX) ------------------------------------

# The input size recorded with the `saved_sanet` fixture's network.
SAVED_SANET_IMAGE_SIZE = (64, 32)
# Exported descriptors against the JAX model's, max absolute difference.
# Two float32 programs compiled apart (TensorFlow's XLA or ONNX Runtime
# against JAX's, with XLA's optimisations off here) sum the convolutions
# in different orders: the `saved_sanet` descriptors (magnitude ~0.5, where
# a float32 ulp is 6e-8) differ by 1e-7 to 2e-7 (2-3 ulp); 1e-5 (~170 ulp)
# leaves room for other CPUs' convolution kernels, while a wrong weight
# layout or preprocessing step differs by more than 1e-3.
EXPORT_TOLERANCE = 1e-5


# --- programs in a real process, as a user starts them -----------------------


def user_environment(**variables: str) -> dict[str, str]:
  """`environment` (one device) without TF_CPP_MIN_LOG_LEVEL, which this
  process sets when it imports TensorFlow quietly (`variables` may set it
  again): what a user's shell gives a program."""
  env = environment(**variables)
  if 'TF_CPP_MIN_LOG_LEVEL' not in variables:
    env.pop('TF_CPP_MIN_LOG_LEVEL', None)
  return env


def run_as_user(program: str, *args: str, timeout: float = 600,
                cwd: Optional[str] = None):
  """``python PROGRAM ARGS`` (a script of the repository root, e.g.
  ``eval.py``) or ``python -m PROGRAM ARGS`` (a module, as installed) in a
  real process from `cwd` (default: the repository root), in
  `user_environment`; its `subprocess.CompletedProcess` (text output),
  whatever its exit status.

  Only a real process shows what a user's terminal shows (e.g. what
  TensorFlow prints as it loads); the ``cli`` fixture runs the same
  command line in this process.
  """
  command = ([sys.executable, os.path.join(REPO, program)]
             if program.endswith('.py') else [sys.executable, '-m', program])
  return subprocess.run([*command, *args], capture_output=True, text=True,
                        cwd=cwd or REPO, env=user_environment(),
                        timeout=timeout, check=False)


def lines_besides_slow_compile_alarms(stderr: str) -> list[str]:
  """`stderr`'s non-empty lines, less XLA's alarm about a slow compile (its
  ``slow_operation_alarm`` line and the asterisk-framed message): a busy
  machine's, not the program's."""
  return [line for line in stderr.splitlines()
          if line.strip() and set(line.strip()) != {'*'} and
          'slow_operation_alarm' not in line and
          'Very slow compile' not in line]


# --- experiment configs, their documented commands, P x K training ----------

CONFIG_FILES = sorted(glob.glob(os.path.join(REPO, 'configs', '*.py')))
# The flags of train.py besides --config (eval.py's are added in
# `parse_command`).
TRAIN_FLAGS = ('workdir', 'distributed', 'coordinator_address',
               'num_processes', 'process_id')
# The RGA and CASN end-to-end tests' network, small enough for a CPU test:
# the configs' `tiny` option (rga_defaults.TINY: 128x64 with the head
# reduction of the RGA demo, 4, and width 8, at which every RGA module has
# channels; casn_defaults.TINY the same without down_ratio). No evaluation
# before training: what these tests check is the training.
SMALL_RGA = {**rga_defaults.TINY, **TEST_SETTINGS, 'eval.at_start': False}
# PCB's six stripes need the 8 rows of a last-stride-1 map at 128x64.
SMALL_CASN = {**casn_defaults.TINY, **TEST_SETTINGS, 'eval.at_start': False}
# `synthetic_dataset`'s arguments for the P x K tests: identities with 3 to
# 12 train images, so that K = 4 repeats some of them.
P_K_DATASET = {'num_ids': 8, 'num_test_ids': 4, 'seed': 1}


def one_epoch(table, *, epoch: int = 0, **arguments) -> list[dict]:
  """Epoch `epoch`'s train batches (`pipeline.train_batches`'s other
  arguments), as numpy dicts."""
  from sa_reid_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  return list(pipeline.train_batches(table, start_epoch=epoch,
                                     num_epochs=epoch + 1, **arguments))


def load_config_module(path: str):
  """The module of an experiment config file (``configs/NAME.py``)."""
  spec = importlib.util.spec_from_file_location(
      os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def documented_commands(path: str, script: str) -> list[list[str]]:
  """The ``python SCRIPT ...`` commands of a config's docstring, as argv."""
  text = load_config_module(path).__doc__.replace('\\\n', ' ')
  return [shlex.split(line.strip())[1:]
          for line in text.splitlines()
          if line.strip().startswith(f'python {script}')]


def parse_command(argv: list[str]):
  """Parses argv as train.py or eval.py would; returns the config."""
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file('config', None, '',
                                           flag_values=values,
                                           lock_config=True)
  for name in TRAIN_FLAGS + ('checkpoint', 'rerank', 'flip', 'output_dir'):
    flags.DEFINE_string(name, None, '', flag_values=values)
  argv = [argv[0]] + [a if not a.startswith('--flip') else '--flip=1'
                      for a in argv[1:] if not a.startswith('[')]
  cwd = os.getcwd()
  os.chdir(REPO)  # the documented commands run from the repository root
  try:
    # config_flags finds the --config.* overrides in sys.argv.
    with mock.patch.object(sys, 'argv', argv):
      values(argv)
  finally:
    os.chdir(cwd)
  return holder.value


def documented_config(name: str, data: str, small: dict[str, Any],
                      **overrides):
  """The config of a ``python train.py`` command of a config's docstring,
  on the Market-layout folder `data`, with `small` and `overrides` (dotted
  keys) on top.

  Args:
    name: ``FILE`` (``configs/FILE``'s first documented command) or
      ``FILE:ARG`` (the documented command with ``--config=configs/FILE:ARG``,
      e.g. ``'rga.py:market1501,baseline'``).
  """
  file, _, arg = name.partition(':')
  commands = documented_commands(os.path.join(REPO, 'configs', file),
                                 'train.py')
  if arg:
    flag = f'--config=configs/{name}'
    commands = [argv for argv in commands if flag in argv]
    assert commands, f'no documented command has {flag}'
  config = parse_command(commands[0])
  config.unlock()
  config.dataset.folder = data
  return set_keys(config, {**small, **overrides})


def train_on_one_and_two_devices(name: str, data: str, root,
                                 small: dict[str, Any]):
  """`documented_config` (``configs/NAME``, `small` on top) trained in this
  process on one device and on two (``root/devices1``, ``root/devices2``),
  in float64 compute: under ``jax.enable_x64``, as ``JAX_ENABLE_X64=1``
  runs a command, with ``model.dtype='float64'`` in `small`.

  Returns:
    {devices asked: (the trainer's result, `trained_variables`)}.
  """
  runs = {}
  for count in (1, 2):
    workdir = os.path.join(str(root), f'devices{count}')
    with jax.enable_x64(True):
      result = trainer.train_and_evaluate(
          documented_config(name, data, small), workdir,
          devices=jax.devices()[:count])
      runs[count] = (result, trained_variables(workdir))
  return runs


def worst_variable_difference(one: dict[str, Any], two: dict[str, Any]):
  """(worst difference of a stored variable relative to max(1, its scale),
  its name), over two `trained_variables` of one network: relative to the
  leaf's scale because, e.g., the RGA relation embeddings' BatchNorm running
  variances are in the hundreds."""
  assert one.keys() == two.keys()
  return max((float(np.max(np.abs(one[k] - two[k])) /
                    max(1.0, float(np.max(np.abs(one[k]))))), k) for k in one)


def one_camera_copy(folder: str, target) -> str:
  """A copy of a Market-layout folder with every image renamed to camera 1."""
  shutil.copytree(folder, target)
  for split in ('bounding_box_train', 'query', 'bounding_box_test'):
    directory = os.path.join(target, split)
    for name in os.listdir(directory):
      renamed = re.sub(r'^(-?\d+)_c\d+', r'\1_c1', name)
      os.rename(os.path.join(directory, name),
                os.path.join(directory, renamed))
  return str(target)


def documented_dataset_commands(section: str) -> list[list[str]]:
  """The ``.venv/bin/python`` lines of a docs/datasets.md section (marked
  ``<!-- commands: SECTION -->`` before its code block), each as its argv
  after the interpreter, in order."""
  with open(os.path.join(REPO, 'docs', 'datasets.md')) as f:
    text = f.read().replace('\\\n', ' ')
  text = text.split(f'<!-- commands: {section} -->', 1)[1]
  text = text.split('```', 2)[1]
  return [shlex.split(line)[1:] for line in text.splitlines()
          if line.startswith('.venv/bin/python ')]


def documented_stand_ins() -> list[str]:
  """Flags appended to a documented train.py command in the tests: the
  tests' small network (`TINY`) and 2 steps."""
  return [config_flag(key, value)
          for key, value in {**TINY, 'max_steps': 2}.items()]
