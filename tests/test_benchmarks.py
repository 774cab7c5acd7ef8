"""Tests of the training, inference and model benchmarks.

The fast tier checks their logic in this process: the counts of
bench_models.py and the argument checks. The smoke tests (full tier) run
each script as a subprocess, as it is used, on the CPU, with a tiny network;
XLA's LLVM optimisation level 0 cuts the compile time of its train step
several times over, and the figures are not the point there.
"""

import importlib
import json
import os
import subprocess
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BENCHMARKS = os.path.join(_ROOT, 'benchmarks')
_TINY = ['--image_size=64,32', '--stage_sizes=1,1,1,1', '--base_width=4',
         '--batch_per_device=4', '--steps=2', '--warmup=1', '--num_classes=10',
         '--json']


@pytest.fixture(name='benchmarks')
def fixture_benchmarks(monkeypatch):
  """``benchmarks(name)``: a benchmark script imported as a module (as it
  runs, with benchmarks/ on the path)."""
  monkeypatch.syspath_prepend(_BENCHMARKS)
  return importlib.import_module


def _run(arguments: list[str]) -> tuple[str, dict]:
  """Runs a Python command line; its stdout and its last JSON line."""
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_backend_optimization_level=0',
             # PyTorch's OpenMP threads can spin for seconds per step on a
             # few shared cores.
             OMP_NUM_THREADS='1')
  completed = subprocess.run([sys.executable, *arguments], cwd=_ROOT,
                             env=env, capture_output=True, text=True,
                             timeout=300, check=False)
  assert completed.returncode == 0, completed.stdout + completed.stderr
  lines = completed.stdout.strip().splitlines()
  return completed.stdout, json.loads(lines[-1])


@pytest.mark.full
def test_bench_train_with_torch_comparison():
  stdout, figures = _run([os.path.join(_BENCHMARKS, 'bench_train.py'),
                          *_TINY, '--compare_torch',
                          '--torch_flags=--no_compile'])
  assert figures['images_per_s'] > 0 and figures['step_ms'] > 0
  assert figures['xla_flops_per_step_per_device'] > 0
  # XLA skips multiplications with convolution padding and the stem's input
  # gradient, and adds the elementwise work: the counts agree roughly.
  assert figures['xla_flops_per_image'] == pytest.approx(
      figures['analytic_flops_per_image'], rel=0.3)
  torch_figures = figures['torch']
  assert torch_figures['images_per_s'] > 0
  assert torch_figures['network'] == 'ScaledSANet'
  assert figures['jax_over_torch'] > 0
  assert 'images/s' in stdout and 'JAX / PyTorch' in stdout


@pytest.mark.full
def test_bench_infer():
  stdout, figures = _run([os.path.join(_BENCHMARKS, 'bench_infer.py'),
                          *_TINY, '--peak_tflops=1'])
  assert figures['images_per_s'] > 0
  assert figures['xla_flops_per_image'] > 0
  assert figures['mfu_analytic'] > 0
  assert 'images/s' in stdout


@pytest.mark.full
def test_jax_benchmarks_do_not_import_tensorflow():
  # The accelerator machine the benchmarks are for has no TensorFlow. (A
  # fresh process: this one has imported TensorFlow.)
  code = ('import sys; sys.path.insert(0, "benchmarks"); '
          'import bench_train, bench_infer, bench_train_torch; '
          'assert "tensorflow" not in sys.modules, sorted('
          'm for m in sys.modules if m.startswith("tensorflow"))')
  _run(['-c', code + '; print("{}")'])


@pytest.mark.full
def test_bench_image_check():
  stdout, figures = _run([os.path.join(_BENCHMARKS, 'bench_image_check.py'),
                          '--num_files=40', '--json'])
  assert figures['files'] == 40
  for case in ('cold', 'warm', 'one_changed'):
    assert figures[f'{case}_s'] > 0
  assert 'warm, one file changed' in stdout


@pytest.mark.full
def test_bench_models_runs_as_a_script():
  stdout, rows = _run([os.path.join(_BENCHMARKS, 'bench_models.py'),
                       '--networks=baseline', '--json'])
  assert [row['network'] for row in rows] == ['baseline']
  assert 'GFLOPs/image' in stdout


def test_bench_models_counts_parameters_and_flops(benchmarks, capsys):
  # Shapes only (no compilation): cheap in this process.
  benchmarks('bench_models').main(['--networks=rga_sc,baseline', '--json'])
  stdout = capsys.readouterr().out
  rows = json.loads(stdout.strip().splitlines()[-1])
  by_name = {row['network']: row for row in rows}
  # ResNet-50 + BNNeck + a 751-way classifier is 23.5 M + 2 x 2048 +
  # 2048 x 751 (a count: exact).
  assert by_name['baseline']['parameters'] == (
      23_508_032 + 2 * 2048 + 2048 * 751)
  # RGA-SC adds about 6.3 M parameters to the baseline (reference notes,
  # counted from the official code, to the one decimal given there: 1%).
  added = by_name['rga_sc']['parameters'] - by_name['baseline']['parameters']
  assert added == pytest.approx(6.3e6, rel=0.01)
  # ResNet-50 at 224x224 is 4.1 G multiply-accumulates, of which layer4
  # ~0.8 G; at 256x128 (0.65x the pixels) with last stride 1 (layer4 on 4x
  # the positions): ~3.3 x 0.65 + 0.8 x 0.65 x 4 = 4.2 G MACs, 8.4 GFLOPs.
  assert 7.5e9 < by_name['baseline']['flops_per_image'] < 9.5e9
  assert by_name['rga_sc']['flops_per_image'] > by_name['baseline'][
      'flops_per_image']
  assert 'GFLOPs/image' in stdout


def test_bench_models_names_an_unknown_network(benchmarks, capsys):
  with pytest.raises(SystemExit) as exit_info:
    benchmarks('bench_models').main(['--networks=vgg'])
  assert exit_info.value.code == 2
  assert "--networks: unknown ['vgg']" in capsys.readouterr().err


@pytest.mark.parametrize('script', ['bench_train', 'bench_infer'])
@pytest.mark.parametrize('arguments, message', [
    (['--variant=vgg'], "--variant: unknown 'vgg'"),
    (['--image_size=64'], '--image_size needs 2 numbers'),
    (['--stage_sizes=1,1,1'], '--stage_sizes 4'),
    (['--steps=0'], '--steps and --base_width must be >= 1'),
    (['--warmup=-1'], '--warmup >= 0'),
])
def test_bad_benchmark_arguments_are_named(benchmarks, capsys, script,
                                           arguments, message):
  # Checked before anything is built or compiled.
  with pytest.raises(SystemExit) as exit_info:
    benchmarks(script).main(arguments)
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


def test_torch_comparison_is_of_the_sa_network_only(benchmarks, capsys):
  with pytest.raises(SystemExit) as exit_info:
    benchmarks('bench_train').main(['--variant=rga_sc', '--compare_torch'])
  assert exit_info.value.code == 2
  assert ('--compare_torch: the PyTorch benchmark is of the SA network '
          "only, not 'rga_sc'") in capsys.readouterr().err


@pytest.mark.full
def test_bench_eval_scale_tiny():
  # Both paths on the same descriptors must give the same figures.
  stdout, rows = _run([os.path.join(_BENCHMARKS, 'bench_eval_scale.py'),
                       '--tiny', '--sizes=2048', '--json'])
  by_method = {(row['method'], row['rerank']): row for row in rows}
  assert set(by_method) == {('streaming', False), ('dense', False),
                            ('streaming', True), ('dense', True)}
  for rerank in (False, True):
    streaming, dense = by_method['streaming', rerank], by_method['dense',
                                                                 rerank]
    assert streaming['mAP'] == dense['mAP']
    assert streaming['peak'] > 0 and streaming['seconds'] > 0
  # Re-ranked from exact distances vs per-pair float32 distances: equal up
  # to rounding (see tests/test_streaming_evaluation.py).
  assert abs(by_method['streaming', True]['reranked_mAP']
             - by_method['dense', True]['reranked_mAP']) < 1e-3
  assert 're-ranked' in stdout


@pytest.mark.full
def test_bench_search_tiny():
  stdout, figures = _run([os.path.join(_BENCHMARKS, 'bench_search.py'),
                          '--tiny', '--json'])
  assert figures['num_gallery'] == 20000 and figures['num_queries'] == 1000
  assert figures['first_query_matches_full_sort']
  for name in ('build_s', 'add_s', 'remove_s', 'search_s', 'product_s',
               'peak_rss_gib'):
    assert figures[name] > 0, name
  # 20,000 x 2,048 float32 rows, appended; the 1,000 removed rows are dead
  # (below the compaction fraction), so still on disk.
  assert figures['index_gib'] == pytest.approx(21000 * 2048 * 4 / 2**30)
  assert 'search / product' in stdout
