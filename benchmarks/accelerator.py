"""One accelerator run: correctness, training and extraction rates, a profile.

Run through ``bash benchmarks/accelerator.sh OUT_DIR [--tiny]``, which
installs what is missing and keeps the log; this module is its Python
part::

  python benchmarks/accelerator.py --out_dir OUT_DIR [--tiny] [--budget_s 480]

Each section below records its figures, or its error, in
``OUT_DIR/figures.json`` (rewritten after every section, so a run stopped
early keeps what it measured) without stopping the others:

* ``environment``: device kind and count, versions, compute and state dtypes;
* ``torch_sa``: the PyTorch SA step (bench_train_torch.py: bfloat16 autocast,
  channels_last, `torch.compile`), run first, before JAX takes the
  accelerator's memory;
* ``sa``, ``rga_sc``, ``casn``: each family's train step at its recipe's
  input size, a few steps in float32 and in bfloat16 on one synthetic batch
  (finite, falling loss; the bfloat16 first-step loss within
  `accelerator_training.BF16_LOSS_TOLERANCE` of float32's), then the
  bfloat16 step's images/s, step time and MFU (FLOPs from XLA's cost
  analysis of the compiled step); ``sa`` adds the JAX / PyTorch ratio;
* ``profile``: a `jax.profiler` trace of a few SA steps and the compiled
  step's HLO text, gzip'd, under ``OUT_DIR/profile``;
* ``augmentation``: `device_augment.augment_batch` images/s at the SA
  step's batch, beside the step's rate;
* ``extraction``: bench_infer.py's descriptor rate (bfloat16, batch 256);
* ``converted_checkpoint``: an official-layout checkpoint of the PyTorch
  reference (seeded random weights) converted by `sa_reid_jax.convert`; the
  network's outputs on the default device equal to those on the CPU within
  `accelerator_inference.CONVERTED_TOLERANCE`.

``--tiny`` runs every section with the families' `TINY` networks and a
few steps, on a CPU in a few minutes: the suite runs it so that the
command keeps working. Nothing here imports TensorFlow.

This module is the driver (the sizes, the order, the budget, figures.json
and its checks); the sections are in accelerator_training.py and
accelerator_inference.py, the timed train step in bench_step.py.
"""

import argparse
import dataclasses
import functools
import importlib.metadata
import json
import math
import os
import platform
import sys
import time
import traceback
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# pylint: disable=g-import-not-at-top,wrong-import-position,g-bad-import-order
import bench_train  # Puts the repository root on sys.path.
import accelerator_inference as inference
import accelerator_training as training
import jax

# In the order they run, the most wanted first (a spent budget skips the
# last); PyTorch first, before JAX takes the accelerator's memory.
SECTIONS = ('torch_sa', 'environment', 'sa', 'profile', 'augmentation',
            'converted_checkpoint', 'rga_sc', 'casn', 'extraction')


@dataclasses.dataclass(frozen=True)
class Settings:
  """The sizes of a run; `FULL` for an accelerator, `TINY` for a CPU."""
  tiny: bool
  batch_per_device: int  # train-step and augmentation images per device
  extraction_batch_per_device: int  # feature-extraction images per device
  num_classes: int  # identities of the classifiers
  correctness_steps: int  # steps per dtype whose losses are checked
  warmup: int  # untimed steps after compilation
  steps: int  # timed steps (or extraction batches)
  profile_steps: int  # steps in the profiler trace
  profile_max_bytes: int  # a larger trace is kept gzip'd, or dropped
  torch_compile: bool  # torch.compile the PyTorch step (else eager)
  staging_size: tuple[int, int]  # uint8 images the augmentation reads
  converted_image_size: tuple[int, int]  # converted network's input
  converted_images: int  # images compared for the converted network


FULL = Settings(
    tiny=False, batch_per_device=64, extraction_batch_per_device=256,
    num_classes=bench_train.NUM_CLASSES, correctness_steps=5, warmup=3,
    steps=20, profile_steps=3, profile_max_bytes=8 << 20, torch_compile=True,
    # The pipeline's staging size (pipeline.train_batches' default).
    staging_size=(128, 64), converted_image_size=(384, 128),
    converted_images=4)
TINY = Settings(
    tiny=True, batch_per_device=4, extraction_batch_per_device=8,
    num_classes=10, correctness_steps=3, warmup=1, steps=2, profile_steps=1,
    profile_max_bytes=8 << 20,
    # torch.compile's C++ build takes minutes on a CPU.
    torch_compile=False, staging_size=(32, 16),
    # The official pooling needs 6 rows after layer4 (1/16 of the height).
    converted_image_size=(96, 32), converted_images=2)


def environment_section(settings: Settings, context: dict[str, Any]
                        ) -> dict[str, Any]:
  """The devices, versions, dtypes and settings of the run."""
  del context
  versions = {}
  for package in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint',
                  'ml-collections', 'numpy', 'torch'):
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      versions[package] = 'not installed'
  devices = jax.devices()
  return dict(
      device_kind=devices[0].device_kind, platform=devices[0].platform,
      device_count=len(devices), python=platform.python_version(),
      versions=versions, tiny=settings.tiny,
      settings=dataclasses.asdict(settings),
      dtypes=dict(compute='bfloat16', parameters='float32',
                  batch_norm_statistics='float32',
                  correctness=['float32', 'bfloat16']),
      # Set again when every section has run.
      tensorflow_imported='tensorflow' in sys.modules)


def figure_problems(figures: dict[str, Any],
                    sections: tuple[str, ...] = SECTIONS) -> list[str]:
  """What is wrong with a run's figures; empty when all is well.

  A section is missing or not ``ok``; a number is not finite; a ``passed``
  is False; a None has no entry in its dictionary's ``null_reasons``;
  TensorFlow was imported.
  """
  problems = [f'{name}: missing' for name in sections if name not in figures]

  def visit(value, path, reasons):
    if isinstance(value, dict):
      for key, item in value.items():
        visit(item, f'{path}.{key}', value.get('null_reasons', {}))
    elif isinstance(value, (list, tuple)):
      for index, item in enumerate(value):
        visit(item, f'{path}[{index}]', {})
    elif value is None:
      if path.rsplit('.', 1)[-1] not in reasons:
        problems.append(f'{path}: None without a reason')
    elif isinstance(value, float) and not math.isfinite(value):
      problems.append(f'{path}: {value}')
    if path.endswith('.passed') and value is False:
      problems.append(f'{path}: False')

  for name in sections:
    section = figures.get(name)
    if section is None:
      continue
    if section.get('status') != 'ok':
      problems.append(f'{name}: {section.get("status")}: '
                      f'{section.get("error", section.get("reason"))}')
      continue
    visit(section, name, {})
  if figures.get('environment', {}).get('tensorflow_imported'):
    problems.append('environment.tensorflow_imported: True (the accelerator '
                    'machines have no TensorFlow)')
  return problems


def run_sections(out_dir: str, settings: Settings, budget_s: float
                 ) -> dict[str, Any]:
  """Every section in turn, figures.json rewritten after each."""
  start = time.perf_counter()
  figures, context = {}, {}
  runners = {
      'torch_sa': training.torch_section, 'environment': environment_section,
      'profile': lambda s, c: training.profile_section(s, c, out_dir),
      'augmentation': inference.augmentation_section,
      'extraction': inference.extraction_section,
      'converted_checkpoint': inference.converted_section,
      **{name: functools.partial(training.family_section, name)
         for name in training.FAMILIES},
  }
  for name in SECTIONS:
    elapsed = time.perf_counter() - start
    print(f'== {name} ({elapsed:.0f} s into the run)', flush=True)
    if elapsed > budget_s and name != 'environment':
      figures[name] = dict(status='skipped', reason=(
          f'the time budget of {budget_s:g} s was spent'))
      continue
    section_start = time.perf_counter()
    try:
      result = dict(status='ok', **runners[name](settings, context))
    except (Exception, SystemExit) as error:  # pylint: disable=broad-except
      # One section's failure must not stop the others.
      traceback.print_exc()
      result = dict(status='error',
                    error=f'{type(error).__name__}: {error}'[-4000:])
    result['seconds'] = time.perf_counter() - section_start
    figures[name] = result
    with open(os.path.join(out_dir, 'figures.json'), 'w') as stream:
      json.dump(figures, stream, indent=1, default=str)
  if figures['environment']['status'] == 'ok':
    # Everything the sections imported, lazily too.
    figures['environment']['tensorflow_imported'] = 'tensorflow' in sys.modules
  figures['total_seconds'] = time.perf_counter() - start
  figures['budget_s'] = budget_s
  with open(os.path.join(out_dir, 'figures.json'), 'w') as stream:
    json.dump(figures, stream, indent=1, default=str)
  return figures


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out_dir', required=True,
                      help='folder for figures.json and profile/')
  parser.add_argument('--tiny', action='store_true',
                      help='small networks and few steps (a CPU check)')
  parser.add_argument('--budget_s', type=float, default=480.0,
                      help='sections starting after this many seconds are '
                      'skipped (default 8 minutes)')
  args = parser.parse_args(argv)
  if args.budget_s <= 0:
    parser.error(f'--budget_s must be > 0, got {args.budget_s:g}')
  try:
    os.makedirs(args.out_dir, exist_ok=True)
  except OSError as error:
    parser.error(f'--out_dir: cannot create {args.out_dir}: {error}')
  figures = run_sections(args.out_dir, TINY if args.tiny else FULL,
                         args.budget_s)
  problems = figure_problems(figures)
  print(f'figures: {os.path.join(args.out_dir, "figures.json")}; '
        f'{figures["total_seconds"]:.0f} s; ' +
        ('all sections ok' if not problems else
         'problems:\n  ' + '\n  '.join(problems)), flush=True)
  return 1 if problems else 0


if __name__ == '__main__':
  sys.exit(main())
