"""Tests of the accelerator benchmark (benchmarks/accelerator.sh, .py and
the modules it runs: accelerator_training, accelerator_inference, bench_step).

The fast tier checks the module's arithmetic and checks against
hand-computed values, in this process. The full tier runs the command as
documented, ``bash benchmarks/accelerator.sh OUT --tiny``, on the CPU, so
that every section of the accelerator run keeps working where no
accelerator is; its figures are those of a CPU and only their presence,
finiteness and the correctness checks are asserted.
"""

import gzip
import importlib
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SCRIPT = os.path.join(_ROOT, 'benchmarks', 'accelerator.sh')
# What comes back from the accelerator machine: files of at most a few MB.
_PROFILE_LIMIT_BYTES = 8 << 20


@pytest.fixture(name='benchmarks')
def fixture_benchmarks(monkeypatch):
  """``benchmarks(name)``: a module of benchmarks/ (benchmarks/ on the
  path, as when it runs)."""
  monkeypatch.syspath_prepend(os.path.join(_ROOT, 'benchmarks'))
  return importlib.import_module


@pytest.fixture(name='accelerator')
def fixture_accelerator(benchmarks):
  """benchmarks/accelerator.py, the driver."""
  return benchmarks('accelerator')


def test_step_figures_by_hand(benchmarks, capsys):
  # 64 images per device in 0.1 s on 2 devices: 640 images/s per device,
  # 1280 in all. XLA's 6.4e12 FLOPs per device step / 64 = 1e11 per image;
  # x 640 images/s = 6.4e13 FLOP/s, 6.4% of a 1e15 peak. The analytic
  # 1.2e11 per image: 7.68e13 FLOP/s, 7.68%. Unoptimised: 9.6e12 / 64.
  figures = benchmarks('bench_step').step_figures(
      0.1, 64, 2, 6.4e12, 1.2e11, 1e15, 'a test peak', lowered_flops=9.6e12)
  assert figures['images_per_s'] == pytest.approx(1280)
  assert figures['images_per_s_per_device'] == pytest.approx(640)
  assert figures['step_ms'] == pytest.approx(100)
  assert figures['xla_flops_per_image'] == pytest.approx(1e11)
  assert figures['xla_lowered_flops_per_image'] == pytest.approx(1.5e11)
  assert figures['achieved_flops_per_device_xla'] == pytest.approx(6.4e13)
  assert figures['mfu_xla'] == pytest.approx(0.064)
  assert figures['mfu_analytic'] == pytest.approx(0.0768)
  assert figures['null_reasons'] == {}
  assert 'MFU 6.4%' in capsys.readouterr().out


def test_unknown_peak_gives_null_mfu_with_its_reason(benchmarks,
                                                     accelerator):
  figures = benchmarks('bench_step').step_figures(
      0.5, 4, 1, None, 2e6, None, 'unknown peak for \'cpu\'')
  assert figures['images_per_s'] == pytest.approx(8)
  reasons = figures['null_reasons']
  for key in ('mfu_analytic', 'peak_flops_per_device'):
    assert figures[key] is None
    assert reasons[key] == 'unknown peak for \'cpu\''
  # No XLA count: its own reason, not the peak's (MFU: both).
  assert reasons['xla_flops_per_image'] == (
      'XLA\'s cost analysis gave no FLOP count on this backend')
  assert reasons['mfu_xla'] == (reasons['xla_flops_per_image'] +
                                '; unknown peak for \'cpu\'')
  assert 'unoptimised program' in reasons['xla_lowered_flops_per_image']
  assert accelerator.figure_problems(
      {'throughput': dict(status='ok', **figures)}, ('throughput',)) == []


def test_relative_error_by_hand(benchmarks):
  inference = benchmarks('accelerator_inference')
  # max|delta| = 2 at the second entry; max|expected| = 2.
  assert inference.relative_error([1.0, -4.0], [1.0, -2.0]) == 1.0
  assert inference.relative_error([0.0, 1e-3], [0.0, 0.0]) == 1e-3
  assert inference.relative_error(np.ones((2, 3)), np.ones((2, 3))) == 0.0
  with pytest.raises(ValueError, match='shapes differ'):
    inference.relative_error(np.ones(2), np.ones(3))


@pytest.mark.parametrize('float32, bfloat16, passed, fell, difference', [
    ([10.0, 9.0], [10.2, 9.5], True, True, 0.02),
    # 4% apart: beyond the 3% tolerance.
    ([10.0, 9.0], [10.4, 9.5], False, True, 0.04),
    # bfloat16 did not fall.
    ([10.0, 9.0], [10.0, 10.5], False, False, 0.0),
])
def test_loss_checks(benchmarks, float32, bfloat16, passed, fell,
                     difference):
  checks = benchmarks('accelerator_training').loss_checks(
      {'float32': float32, 'bfloat16': bfloat16}, tolerance=0.03)
  assert checks['passed'] is passed
  assert checks['fell'] == {'float32': True, 'bfloat16': fell}
  assert checks['first_loss_relative_difference'] == pytest.approx(
      difference)


def test_non_finite_losses_fail(benchmarks):
  checks = benchmarks('accelerator_training').loss_checks({'float32': [10.0, math.nan],
                                    'bfloat16': [10.0, 9.0]})
  assert not checks['finite'] and not checks['passed']
  assert checks['first_loss_relative_difference'] is None


def test_figure_problems_name_each_fault(accelerator):
  sections = ('a', 'b', 'c', 'd', 'e')
  figures = {
      'a': dict(status='ok', x=1.0, y=None, null_reasons={'y': 'no peak'},
                nested=dict(z=[1.0, 2.0])),
      'b': dict(status='ok', x=math.inf, y=None),
      'c': dict(status='error', error='ValueError: broken'),
      'd': dict(status='ok', check=dict(passed=False)),
  }
  assert accelerator.figure_problems(figures, sections) == [
      'e: missing', 'b.x: inf', 'b.y: None without a reason',
      'c: error: ValueError: broken', 'd.check.passed: False']
  assert accelerator.figure_problems(figures, ('a',)) == []
  environment = {'environment': dict(status='ok', tensorflow_imported=True)}
  assert accelerator.figure_problems(environment, ('environment',)) == [
      'environment.tensorflow_imported: True (the accelerator machines have '
      'no TensorFlow)']


def test_staged_batch_draws_inside_the_image(benchmarks):
  staged_batch = benchmarks('accelerator_inference').staged_batch
  batch = staged_batch(200, (32, 16), (64, 32), 0.5, seed=3)
  assert batch['images'].dtype == np.uint8
  assert batch['images'].shape == (200, 32, 16, 3)
  top, left, height, width = batch['erase_box'].T
  erased = height > 0
  # About half erased (binomial(200, 0.5): 5 standard deviations, 35).
  assert 65 <= erased.sum() <= 135
  assert (top + height <= 64).all() and (left + width <= 32).all()
  assert (top >= 0).all() and (left >= 0).all()
  assert 0 < batch['flip'].sum() < 200
  none = staged_batch(10, (32, 16), (64, 32), 0.0)
  assert (none['erase_box'][:, 2] == 0).all()


def test_bad_arguments_are_named(accelerator, capsys, tmp_path):
  with pytest.raises(SystemExit) as exit_info:
    accelerator.main([f'--out_dir={tmp_path}', '--budget_s=0'])
  assert exit_info.value.code == 2
  assert '--budget_s must be > 0, got 0' in capsys.readouterr().err
  completed = subprocess.run(['bash', _SCRIPT], capture_output=True,
                             text=True, check=False, timeout=60)
  assert completed.returncode == 2
  assert 'usage: bash benchmarks/accelerator.sh OUT_DIR' in completed.stderr


def _numbers(value, path=''):
  """(path, number) of every number in nested dicts and lists."""
  if isinstance(value, dict):
    for key, item in value.items():
      yield from _numbers(item, f'{path}.{key}')
  elif isinstance(value, list):
    for index, item in enumerate(value):
      yield from _numbers(item, f'{path}[{index}]')
  elif isinstance(value, (int, float)) and not isinstance(value, bool):
    yield path, value


@pytest.mark.full
def test_tiny_run_of_the_command(accelerator, tmp_path):
  out = tmp_path / 'out'
  env = dict(os.environ, PYTHON=sys.executable,
             # As the other benchmark smoke tests: the figures are not the
             # point, and LLVM's level 0 compiles several times faster. Most
             # of the run is compiling six train steps: XLA's older CPU
             # fusion emitters compile them about 1.3-3x faster than the
             # default MLIR ones (what the run is for, that every section
             # completes, does not depend on the emitter).
             XLA_FLAGS=(os.environ.get('XLA_FLAGS', '') +
                        ' --xla_backend_optimization_level=0'
                        ' --xla_cpu_use_fusion_emitters=false'),
             # PyTorch's OpenMP threads can spin on a few shared cores.
             OMP_NUM_THREADS='1')
  completed = subprocess.run(['bash', _SCRIPT, str(out), '--tiny'],
                             cwd=_ROOT, env=env, capture_output=True,
                             text=True, timeout=600, check=False)
  assert completed.returncode == 0, completed.stdout + completed.stderr
  log = (out / 'log.txt').read_text()
  assert 'all sections ok' in log and '== converted_checkpoint' in log
  figures = json.loads((out / 'figures.json').read_text())

  for name in accelerator.SECTIONS:
    assert figures[name]['status'] == 'ok', (name, figures[name])
  for path, number in _numbers(figures):
    assert math.isfinite(number), path
  environment = figures['environment']
  assert environment['tiny'] and environment['device_kind'] == 'cpu'
  assert environment['tensorflow_imported'] is False

  for family in ('sa', 'rga_sc', 'casn'):
    correctness = figures[family]['correctness']
    for dtype in ('float32', 'bfloat16'):
      losses = correctness['losses'][dtype]
      assert len(losses) == 3 and all(map(math.isfinite, losses))
      assert losses[-1] < losses[0], (family, dtype, losses)
    assert correctness['first_loss_relative_difference'] <= 0.03
    assert correctness['passed']
    throughput = figures[family]['throughput']
    assert throughput['images_per_s'] > 0 and throughput['step_ms'] > 0
    assert throughput['xla_flops_per_step_per_device'] > 0
    assert throughput['parameter_dtypes'] == ['float32']
    assert throughput['batch_stats_dtypes'] == ['float32']
    # A CPU has no peak in the table: MFU null, with the reason.
    assert throughput['mfu_xla'] is None
    assert 'cpu' in throughput['null_reasons']['mfu_xla']
  assert figures['torch_sa']['images_per_s'] > 0
  assert figures['sa']['throughput']['jax_over_torch'] > 0
  assert figures['extraction']['images_per_s'] > 0
  assert figures['augmentation']['images_per_s'] > 0
  assert figures['augmentation']['share_of_sa_step'] > 0

  converted = figures['converted_checkpoint']
  assert converted['passed']
  assert max(converted['device_vs_cpu'].values()) <= 1e-4

  profile = figures['profile']
  trace = out / profile['trace']
  assert trace.is_file() and trace.stat().st_size < _PROFILE_LIMIT_BYTES
  with gzip.open(out / profile['hlo'], 'rt') as stream:
    assert stream.read().startswith('HloModule')
