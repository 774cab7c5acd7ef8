"""The accelerator run's training sections (accelerator.py).

* ``torch_sa``: the PyTorch SA step (bench_train_torch.py);
* ``sa``, ``rga_sc``, ``casn``: each family's train step, a few steps in
  float32 and in bfloat16 from one state on one synthetic batch (the
  correctness checks of `loss_checks`), then the bfloat16 step timed by
  `bench_step.measure_train_step`;
* ``profile``: a trace of a few steps of the SA section's compiled step and
  its HLO text.

Each section is ``section(settings, context) -> figures``: `settings` is the
run's `accelerator.Settings`, `context` what earlier sections left for
later ones (``torch_sa``'s figures, the SA step and its rate).
"""

import argparse
import gzip
import math
import os
import shutil
import tempfile
from typing import Any

# pylint: disable=g-bad-import-order
import bench_step
import bench_train
import jax

from sa_reid_jax.training import casn_defaults
from sa_reid_jax.training import defaults
from sa_reid_jax.training import rga_defaults

# bfloat16 keeps 8 significant bits: each rounding is off by up to 2^-8
# (0.4%) relative. Through the ~50 layers of the ResNet-50 backbone, with
# BatchNorm renormalising after each, independent roundings add up like a
# random walk, sqrt(50) x 2^-8 = 2.8% of an activation; the first step's
# loss (summed cross-entropies of small initial logits) moves less than the
# logits do. A wrong cast (float16 overflow, bfloat16 statistics) moves it
# far more.
BF16_LOSS_TOLERANCE = 0.03
# section name -> (family config maker, variant, TINY overrides).
FAMILIES = {
    'sa': (defaults.experiment_config, 'full', defaults.TINY),
    'rga_sc': (rga_defaults.rga_experiment_config, 'rga_sc',
               rga_defaults.TINY),
    'casn': (casn_defaults.casn_experiment_config, 'pcb', casn_defaults.TINY),
}


def loss_checks(losses: dict[str, list[float]],
                tolerance: float = BF16_LOSS_TOLERANCE) -> dict[str, Any]:
  """Whether the correctness steps' losses are sound.

  Args:
    losses: ``{'float32': [...], 'bfloat16': [...]}``, each step's loss on
      the same batch from the same initial state.
    tolerance: the largest relative difference of the first losses.

  Returns:
    ``finite``, ``fell`` (last < first, per dtype),
    ``first_loss_relative_difference``, the tolerance and ``passed``.
  """
  first32, first16 = losses['float32'][0], losses['bfloat16'][0]
  finite = all(math.isfinite(v) for values in losses.values() for v in values)
  fell = {dtype: values[-1] < values[0] for dtype, values in losses.items()}
  difference = abs(first16 - first32) / abs(first32) if finite else None
  return dict(finite=finite, fell=fell,
              first_loss_relative_difference=difference,
              bf16_loss_tolerance=tolerance,
              passed=bool(finite and all(fell.values())
                          and difference <= tolerance))


def family_config(name: str, dtype: str, tiny: bool):
  """The recipe's config of a family, its TINY network when `tiny`.

  Raises:
    KeyError: for a name not in `FAMILIES`.
  """
  make, variant, tiny_overrides = FAMILIES[name]
  config = make('market1501', variant)
  if tiny:
    defaults.with_overrides(config, tiny_overrides)
  config.model.dtype = dtype
  # The recipes' warm-up (RGA: 20 epochs from 1% of the rate) would leave
  # the few correctness steps with almost no step size; the rate's value
  # does not change the step's cost.
  config.optimizer.warmup_epochs = 0
  return config


def _dtypes(tree) -> list[str]:
  return sorted({str(x.dtype) for x in jax.tree.leaves(tree)})


def family_section(name: str, settings, context: dict[str, Any]
                   ) -> dict[str, Any]:
  """Correctness in float32 and bfloat16, then the bfloat16 step's rate.

  The bfloat16 correctness steps run on the program that is then timed
  (they are part of its warm-up). For ``sa``, leaves the step
  (``context['sa_step']``, for the profile) and its rate per device.
  """
  losses = {}
  config = family_config(name, 'float32', settings.tiny)
  step32 = bench_step.compile_train_step(config, settings.batch_per_device,
                                         settings.num_classes)
  losses['float32'] = step32.run(settings.correctness_steps)
  print(f'{name} float32: losses {[round(v, 4) for v in losses["float32"]]} '
        f'(compile {step32.compile_s:.1f} s)', flush=True)
  initial = step32.initial
  del step32  # Its device memory goes back before the next compilation.
  config = family_config(name, 'bfloat16', settings.tiny)
  # Both dtypes start from the same state.
  throughput, step = bench_step.measure_train_step(
      config, settings.batch_per_device, settings.num_classes,
      warmup=settings.warmup, steps=settings.steps, initial=initial,
      recorded_steps=settings.correctness_steps)
  losses['bfloat16'] = step.losses
  print(f'{name} bfloat16: losses {[round(v, 4) for v in step.losses]}',
        flush=True)
  figures = dict(correctness=dict(losses=losses, **loss_checks(losses)))
  figures['throughput'] = dict(
      image_size=list(step.image_size),
      stage_sizes=list(config.model.stage_sizes),
      base_width=config.model.base_width,
      batch_per_device=settings.batch_per_device, compute_dtype='bfloat16',
      parameter_dtypes=_dtypes(step.state.params),
      batch_stats_dtypes=_dtypes(step.state.batch_stats), **throughput)
  if name == 'sa':
    torch_figures = context.get('torch_sa')
    throughput = figures['throughput']
    throughput['jax_over_torch'] = (
        throughput['images_per_s_per_device'] / torch_figures['images_per_s']
        if torch_figures else None)
    if not torch_figures:
      throughput['null_reasons']['jax_over_torch'] = (
          'the torch_sa section has no figures')
    context['sa_step'] = step
    context['sa_images_per_s_per_device'] = throughput[
        'images_per_s_per_device']
  return figures


def torch_section(settings, context: dict[str, Any]) -> dict[str, Any]:
  """bench_train_torch.py at the SA section's shape (a subprocess)."""
  config = family_config('sa', 'bfloat16', settings.tiny)
  args = argparse.Namespace(
      batch_per_device=settings.batch_per_device,
      image_size=tuple(config.image_size),
      stage_sizes=tuple(config.model.stage_sizes),
      base_width=config.model.base_width, num_classes=settings.num_classes,
      dtype='bfloat16', steps=settings.steps,
      # torch.compile compiles during the first warm-up steps.
      warmup=max(settings.warmup, 3),
      torch_flags='' if settings.torch_compile else '--no_compile')
  figures = {}
  try:
    figures = bench_train.run_torch(args)
  except SystemExit as error:
    if not settings.torch_compile:
      raise RuntimeError(str(error)) from None
    # Eager figures are still a reference; the compile error is kept.
    figures['compile_error'] = str(error)[-2000:]
    args.torch_flags = '--no_compile'
    figures.update(bench_train.run_torch(args))
  context['torch_sa'] = figures
  return figures


def profile_section(settings, context: dict[str, Any], out_dir: str
                    ) -> dict[str, Any]:
  """A trace of a few SA steps and the SA step's HLO under out_dir/profile.

  Raises:
    RuntimeError: when the sa section left no step, or the profiler wrote
      no trace.
  """
  step = context.pop('sa_step', None)
  if step is None:
    raise RuntimeError('needs the SA step of the sa section, which failed')
  folder = os.path.join(out_dir, 'profile')
  os.makedirs(folder, exist_ok=True)
  figures = {'null_reasons': {}}
  hlo = os.path.join(folder, 'sa_step.hlo.txt.gz')
  with gzip.open(hlo, 'wt') as stream:
    stream.write(step.compiled.as_text())
  figures['hlo'] = os.path.relpath(hlo, out_dir)
  figures['hlo_bytes'] = os.path.getsize(hlo)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      step.time(0, settings.profile_steps)
    traces = [os.path.join(root, f) for root, _, files in os.walk(trace_dir)
              for f in files if f.endswith('.xplane.pb')]
    if not traces:
      raise RuntimeError('jax.profiler.trace wrote no .xplane.pb file')
    # The tool that fetches results keeps files at most two folders down.
    trace = os.path.join(folder, 'sa_step.xplane.pb')
    shutil.copyfile(traces[0], trace)
  if os.path.getsize(trace) > settings.profile_max_bytes:
    with open(trace, 'rb') as raw, gzip.open(trace + '.gz', 'wb') as packed:
      shutil.copyfileobj(raw, packed)
    os.remove(trace)
    trace += '.gz'
  figures['trace_steps'] = settings.profile_steps
  if os.path.getsize(trace) > settings.profile_max_bytes:
    figures['trace_dropped_bytes'] = os.path.getsize(trace)
    os.remove(trace)
    figures['trace'] = None
    figures['null_reasons']['trace'] = (
        f'larger than {settings.profile_max_bytes} bytes gzip\'d: see the HLO')
  else:
    figures['trace'] = os.path.relpath(trace, out_dir)
    figures['trace_bytes'] = os.path.getsize(trace)
  return figures
