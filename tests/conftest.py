"""Shared test set-up: devices, compilation, tiers, fixtures and summaries.

Before JAX is imported anywhere in the run (here, and inherited by every
subprocess a test starts):

- two host CPU devices, so that 1-vs-2-device tests run in one process
  (`jax.devices()[:1]` is the one-device run);
- XLA's optimisations off (``JAX_DISABLE_MOST_OPTIMIZATIONS``, as flax's own
  tests do): most test programs run a few steps, and compiling them
  optimised costs more than running them unoptimised. Tests whose point is
  the optimised numerics (full-size parity) are marked ``optimized``;
- a persistent compilation cache per pytest worker, shared with the
  subprocesses its tests start (under ``SA_REID_JAX_TEST_CACHE``, default
  ``.cache/jax-tests`` in the repository), so that a program compiled once
  is loaded afterwards, in this run and the next.

Tiers: ``pytest`` runs the fast tier; ``pytest --full`` (what
``bash scripts/test.sh --full`` and CI run) adds the tests marked ``full``.
"""

import os
import sys
from typing import Optional

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEVICES_FLAG = '--xla_force_host_platform_device_count='
if _DEVICES_FLAG not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' +
                             _DEVICES_FLAG + '2').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ['JAX_DISABLE_MOST_OPTIMIZATIONS'] = '1'
# One cache per pytest worker (``gw0``, ``gw1``; ``main`` without xdist),
# shared with the subprocesses its tests start. JAX writes an entry in place
# (no temporary file and rename) and, without a size limit, without a lock:
# a worker reading an entry another is still writing fails to decode it and
# warns on stderr, which breaks the tests that check a program's stderr line
# by line. A size limit would add a file lock around every read and write,
# and the workers then wait on it for seconds each.
os.environ['JAX_COMPILATION_CACHE_DIR'] = os.path.join(
    os.environ.get('SA_REID_JAX_TEST_CACHE',
                   os.path.join(_REPO, '.cache', 'jax-tests')),
    os.environ.get('PYTEST_XDIST_WORKER', 'main'))
# Every program is cached, however small or quick to compile.
os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=g-import-not-at-top,g-bad-import-order,wrong-import-position
import jax
import pytest

from sa_reid_jax.datasets import synthetic
# The quiet import of TensorFlow, before any test module imports it.
from sa_reid_jax.datasets import tensorflow_cpu  # pylint: disable=unused-import
# pylint: enable=g-import-not-at-top,g-bad-import-order,wrong-import-position

# A fast-tier test whose body or set-up takes longer than this is reported
# at the end.
FAST_TIER_LIMIT_SECONDS = 15.0

def pytest_addoption(parser):
  parser.addoption('--full', action='store_true',
                   help='also run the tests marked full (the CI tier)')


def pytest_configure(config):
  # Exactly 2: the tests' "two devices" are all of them (jax.devices()),
  # and the batches they use divide by 2.
  if jax.device_count() != 2:
    raise pytest.UsageError(
        f'the tests need 2 JAX devices, found {jax.devices()}: leave '
        f'XLA_FLAGS without {_DEVICES_FLAG}N (the tests set 2) and '
        'JAX_PLATFORMS unset or "cpu"')
  config.addinivalue_line(
      'markers', 'full: slow tests (processes, full-size, every config), run '
      'with --full')
  config.addinivalue_line(
      'markers', 'optimized: compiled with XLA optimisations on (optimised '
      'numerics are the point)')


def pytest_collection_modifyitems(config, items):
  # The marker, not `item.keywords`: keywords also hold parametrize ids
  # (a case named "full" is not a full-tier test).
  full = [item for item in items if item.get_closest_marker('full')]
  for item in full:
    # Reaches the summary through the reports, also from parallel workers.
    item.user_properties.append(('tier', 'full'))
  if config.getoption('--full') or not full:
    return
  config.hook.pytest_deselected(items=full)
  items[:] = [item for item in items if not item.get_closest_marker('full')]


@pytest.fixture(autouse=True)
def _optimisations(request, monkeypatch):
  """XLA optimisations on for tests marked ``optimized`` (and their
  subprocesses), off otherwise."""
  if request.node.get_closest_marker('optimized') is None:
    yield
    return
  monkeypatch.setenv('JAX_DISABLE_MOST_OPTIMIZATIONS', '0')
  jax.config.update('jax_disable_most_optimizations', False)
  try:
    yield
  finally:
    jax.config.update('jax_disable_most_optimizations', True)


@pytest.fixture(scope='session')
def synthetic_dataset(tmp_path_factory):
  """``make(**arguments) -> folder``: a synthetic Market-layout dataset
  (`synthetic.generate`'s arguments), made once per session and argument set.

  Tests must not write into the folder it returns.
  """
  made = {}

  def make(**arguments):
    key = tuple(sorted(arguments.items()))
    if key not in made:
      root = str(tmp_path_factory.mktemp('synthetic'))
      synthetic.generate(root, **arguments)
      made[key] = root
    return made[key]

  return make


@pytest.fixture(scope='session')
def data(synthetic_dataset):
  """The small training set of the end-to-end tests: 8 train identities,
  4 test identities (seed 0)."""
  return synthetic_dataset(num_ids=8, num_test_ids=4, seed=0)


@pytest.fixture
def cli(capfd, monkeypatch):
  """``cli(program, *args) -> CliResult``: a command run in this process.

  `program` is a script of the repository root (``'train.py'``) or a module
  run with ``python -m`` (``'sa_reid_jax.tools.search'``); stdout and stderr
  are captured at the file-descriptor level, as a terminal would show them.
  It runs from the repository root, or from the keyword argument ``cwd``.
  """
  import helpers  # pylint: disable=g-import-not-at-top

  def run(program, *args, cwd=helpers.REPO):
    capfd.readouterr()
    code = helpers.run_in_process(program, list(args), monkeypatch, cwd)
    out, err = capfd.readouterr()
    return helpers.CliResult(code, out, err)

  return run


@pytest.fixture
def record_parity(request):
  """Records (what, worst relative error, bound or None for a reference
  figure) for the end-of-run summary (carried by the test's report, so that
  parallel workers' figures reach it)."""

  def record(what: str, error: float, bound: Optional[float]):
    request.node.user_properties.append(
        ('parity', (what, float(error), bound)))

  return record


def pytest_terminal_summary(terminalreporter):
  reports = [report for kind in terminalreporter.stats.values()
             for report in kind if hasattr(report, 'when')]
  parity = [value for report in reports if report.when == 'call'
            for name, value in getattr(report, 'user_properties', ())
            if name == 'parity']
  if parity:
    terminalreporter.section('JAX vs PyTorch parity: worst relative errors')
    for what, error, bound in parity:
      limit = 'reference' if bound is None else f'bound {bound:.1e}'
      terminalreporter.write_line(f'{error:.2e} ({limit})  {what}')
  slow = []
  for report in reports:
    # A setup counts too: a session fixture's (e.g. a training run) is
    # paid once per worker, but paid in the fast tier all the same.
    if (report.when in ('setup', 'call') and
        # (Parallel workers send the pairs as lists.)
        ['tier', 'full'] not in [list(p) for p in report.user_properties] and
        report.duration > FAST_TIER_LIMIT_SECONDS):
      slow.append((report.duration, report.nodeid +
                   (' (setup)' if report.when == 'setup' else '')))
  if slow:
    terminalreporter.section(
        f'fast-tier tests over {FAST_TIER_LIMIT_SECONDS:.0f} s: mark them '
        'full, or make them cheaper')
    for duration, nodeid in sorted(slow, reverse=True):
      terminalreporter.write_line(f'{duration:6.1f} s  {nodeid}')


# --- hypothesis: more examples per property in the full tier ----------------


def pytest_sessionstart(session):
  """Tells `helpers.examples` the tier before the test modules, whose
  hypothesis settings it sizes, are imported."""
  import helpers  # pylint: disable=g-import-not-at-top
  helpers.full_tier = session.config.getoption('--full')


# --- a finished tiny training run --------------------------------------------

# `finished_run`'s config: helpers.tiny_config(data, max_steps=...).
FINISHED_RUN_STEPS = 2


@pytest.fixture(scope='session')
def finished_run(data, tmp_path_factory):
  """The workdir of a finished tiny training run (a `pathlib.Path`).

  ``helpers.tiny_config(data, max_steps=FINISHED_RUN_STEPS)`` (2 steps of
  a global batch of 8, the SA network made tiny, from scratch) trained
  once per test run (per worker) by `train_and_evaluate` on the default
  devices (the two host CPU devices, asserted): it holds the checkpoint of step 2
  (its only one), ``model/``, ``metrics.json`` (the final evaluation) and
  ``metrics.jsonl``.

  Tests must not write into it: to resume or change the run, copy it
  (``shutil.copytree``); reading it (e.g. as ``config.init_from``) is fine.
  """
  # pylint: disable=g-import-not-at-top
  import helpers
  from sa_reid_jax.training import trainer
  # pylint: enable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp('finished_run') / 'run'
  result = trainer.train_and_evaluate(
      helpers.tiny_config(data, max_steps=FINISHED_RUN_STEPS), str(workdir))
  # Really the two devices (the fast tier's whole run on more than one).
  assert result['devices'] == 2, result
  return workdir


# --- a saved tiny SA network --------------------------------------------------


@pytest.fixture(scope='session')
def saved_sanet(tmp_path_factory):
  """(model directory, model, variables): a tiny SANet (5 classes, one block
  per stage, base width 4) with `helpers.he_scaled_variables`, saved with
  ``image_size`` `helpers.SAVED_SANET_IMAGE_SIZE` in its metadata.

  Tests must not write into the directory; exports go elsewhere.
  """
  # pylint: disable=g-import-not-at-top
  import helpers
  from sa_reid_jax.models import store
  from sa_reid_jax.models.sanet import SANet
  # pylint: enable=g-import-not-at-top
  model = SANet(num_classes=5, stage_sizes=(1, 1, 1, 1), base_width=4)
  variables = helpers.he_scaled_variables(model)
  path = tmp_path_factory.mktemp('saved_sanet') / 'model'
  size = list(helpers.SAVED_SANET_IMAGE_SIZE)
  store.save_model(str(path), model, variables, metadata={'image_size': size})
  return path, model, variables
