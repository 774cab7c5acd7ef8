"""Images per second and model FLOP utilisation of the training step.

Times the full data-parallel train step (`step.make_parallel_train_step`:
the task's forward passes and loss terms (SA: the ten cross-entropies), the
backward pass, gradient all-reduce, the recipe's optimizer) over
every device, on synthetic batches created once and kept on the devices, so
that the figure is the step's alone (no input pipeline, no host transfer).

Run from the repository root::

  .venv/bin/python benchmarks/bench_train.py [--batch_per_device 64] \
      [--dtype bfloat16] [--compare_torch] [--profile_dir /tmp/trace] [--json]

FLOPs are counted two ways:

* XLA: ``flops`` of the compiled step's cost analysis (one device's program,
  so per device), divided by the images each device trains on. It counts
  everything XLA executes: convolutions and matmuls of the forward and
  backward passes, BatchNorm, losses and the optimizer update.
* analytic: the multiply-accumulates of every convolution and matmul of one
  image's forward pass (read off the network's jaxpr), x2 FLOPs per MAC, x3
  for forward + backward (the backward pass computes two products of the
  forward's size: gradients of the inputs and of the weights).

MFU is achieved FLOP/s per device over the device's dense bf16 peak (a table
by device kind, or ``--peak_tflops``), given for both counts. The timed step
is bench_step.py's `measure_train_step`, the counts bench_flops.py's.

``--compare_torch`` first runs benchmarks/bench_train_torch.py (the official
network in PyTorch) with the same settings in a subprocess, before JAX takes
the accelerator's memory, and prints the ratio of the two rates.

Small CPU runs: ``--image_size=64,32 --stage_sizes=1,1,1,1 --base_width=8
--num_classes=10 --batch_per_device=4 --steps=2 --warmup=1``.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
from typing import Any

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax

# forward_macs is read from here by bench_models.py.
from bench_flops import forward_macs  # pylint: disable=unused-import
from bench_step import measure_train_step
# TensorFlow-free modules only: the benchmark runs where TensorFlow is not
# installed (trainer, data.pipeline and evaluation import it).
from sa_reid_jax.training import casn_defaults
from sa_reid_jax.training import defaults
from sa_reid_jax.training import rga_defaults

NUM_CLASSES = 751  # Market-1501's train identities.


def int_tuple(text: str) -> tuple[int, ...]:
  """'384,128' -> (384, 128)."""
  return tuple(int(v) for v in text.replace('x', ',').split(',') if v)


def add_model_arguments(parser: argparse.ArgumentParser, batch: int):
  """The flags every benchmark of the network shares."""
  parser.add_argument('--batch_per_device', type=int, default=batch)
  parser.add_argument('--image_size', type=int_tuple, default=(384, 128),
                      help='HEIGHT,WIDTH of the network input')
  parser.add_argument('--dtype', choices=('bfloat16', 'float32'),
                      default='bfloat16',
                      help='compute dtype (parameters and BatchNorm '
                      'statistics stay float32)')
  parser.add_argument('--variant', default='full',
                      help='network: a key of sa_reid_jax.models.VARIANTS '
                      '(SA) or of RGA_VARIANTS (rga_sc, rga_s, rga_c, '
                      'baseline: trained with the official RGA recipe\'s '
                      'losses and Adam; pass --image_size=256,128) or '
                      'casn_ide / casn_pcb (the CASN step: Grad-CAM, the '
                      'erased images\' second pass, the siamese terms; its '
                      'analytic count is of one forward + backward pass, so '
                      'read the XLA count)')
  parser.add_argument('--stage_sizes', type=int_tuple, default=(3, 4, 6, 3),
                      help='bottleneck blocks per ResNet stage')
  parser.add_argument('--base_width', type=int, default=64,
                      help='width of the stem and first stage')
  parser.add_argument('--num_classes', type=int, default=NUM_CLASSES)
  parser.add_argument('--steps', type=int, default=50, help='timed steps')
  parser.add_argument('--warmup', type=int, default=5,
                      help='untimed steps after compilation')
  parser.add_argument('--peak_tflops', type=float, default=None,
                      help='peak dense TFLOP/s per device for MFU (default: '
                      'the bf16 peak of a known device kind)')
  parser.add_argument('--json', action='store_true',
                      help='also print the figures as one JSON line')


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace):
  from sa_reid_jax.models.sanet import VARIANTS as SA_VARIANTS  # pylint: disable=g-import-not-at-top
  casn = tuple(f'casn_{v}' for v in casn_defaults.CASN_VARIANTS)
  known = (*SA_VARIANTS, *rga_defaults.RGA_VARIANTS, *casn)
  if args.variant not in known:
    parser.error(f'--variant: unknown {args.variant!r}; choose one of '
                 f'{sorted(known)}')
  if getattr(args, 'compare_torch', False) and (
      args.variant not in SA_VARIANTS):
    parser.error('--compare_torch: the PyTorch benchmark is of the SA '
                 f'network only, not {args.variant!r}')
  if len(args.image_size) != 2 or len(args.stage_sizes) != 4:
    parser.error('--image_size needs 2 numbers, --stage_sizes 4')
  if min(args.batch_per_device, args.steps, args.base_width) < 1 or (
      args.warmup < 0):
    parser.error('--batch_per_device, --steps and --base_width must be >= 1, '
                 '--warmup >= 0')


def experiment_config(args: argparse.Namespace):
  """The paper's config with the benchmark's network shape and dtype."""
  if args.variant in rga_defaults.RGA_VARIANTS:
    config = rga_defaults.rga_experiment_config('market1501', args.variant)
  elif args.variant.startswith('casn_'):
    config = casn_defaults.casn_experiment_config('market1501',
                                                  args.variant[len('casn_'):])
  else:
    config = defaults.experiment_config('market1501', args.variant)
  config.image_size = tuple(args.image_size)
  config.model.dtype = args.dtype
  config.model.stage_sizes = tuple(args.stage_sizes)
  config.model.base_width = args.base_width
  return config

def device_summary() -> dict[str, Any]:
  devices = jax.devices()
  return dict(device_kind=devices[0].device_kind,
              platform=devices[0].platform, device_count=len(devices),
              jax_version=jax.__version__)

def run_torch(args: argparse.Namespace) -> dict[str, Any]:
  """Runs bench_train_torch.py with these settings; its JSON figures."""
  command = [
      sys.executable, os.path.join(os.path.dirname(__file__),
                                   'bench_train_torch.py'),
      f'--batch_per_device={args.batch_per_device}',
      f'--image_size={",".join(map(str, args.image_size))}',
      f'--stage_sizes={",".join(map(str, args.stage_sizes))}',
      f'--base_width={args.base_width}', f'--num_classes={args.num_classes}',
      f'--dtype={args.dtype}', f'--steps={args.steps}',
      f'--warmup={args.warmup}', '--json', *shlex.split(args.torch_flags)]
  print('running', ' '.join(command[1:]), flush=True)
  completed = subprocess.run(command, check=False, capture_output=True,
                             text=True)
  if completed.returncode:
    sys.exit(f'bench_train_torch.py failed (exit status '
             f'{completed.returncode}):\n{completed.stdout}{completed.stderr}')
  lines = completed.stdout.strip().splitlines()
  for line in lines:
    if not line.startswith('{'):
      print(f'  torch| {line}')
  return json.loads([line for line in lines if line.startswith('{')][-1])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  add_model_arguments(parser, batch=64)
  parser.add_argument('--profile_dir', default=None,
                      help='write a jax.profiler trace of --profile_steps '
                      'steps (after the timed ones) here')
  parser.add_argument('--profile_steps', type=int, default=5)
  parser.add_argument('--compare_torch', action='store_true',
                      help='also run bench_train_torch.py with the same '
                      'settings and print the JAX / PyTorch ratio')
  parser.add_argument('--torch_flags', default='',
                      help='extra flags for bench_train_torch.py, e.g. '
                      '"--no_compile"')
  args = parser.parse_args(argv)
  check_arguments(parser, args)

  # PyTorch first: JAX reserves most of the accelerator's memory once it
  # starts, and the two must not share it.
  torch_figures = run_torch(args) if args.compare_torch else None

  figures = device_summary()
  print(f'devices: {figures["device_count"]} x {figures["device_kind"]} '
        f'({figures["platform"]}); jax {figures["jax_version"]}')
  config = experiment_config(args)
  image_size = tuple(args.image_size)
  print(f'network: {args.variant}, {image_size[0]}x{image_size[1]}, stages '
        f'{tuple(args.stage_sizes)}, width {args.base_width}, '
        f'{args.num_classes} classes, compute {args.dtype}; batch '
        f'{args.batch_per_device} per device, '
        f'{args.batch_per_device * figures["device_count"]} per step')
  try:
    measured, step = measure_train_step(
        config, args.batch_per_device, args.num_classes, warmup=args.warmup,
        steps=args.steps, peak_tflops=args.peak_tflops)
  except RuntimeError as error:
    sys.exit(str(error))
  figures.update(
      batch_per_device=args.batch_per_device, dtype=args.dtype,
      image_size=list(image_size), num_classes=args.num_classes,
      stage_sizes=list(args.stage_sizes), base_width=args.base_width,
      loss=step.loss, **measured)

  if torch_figures is not None:
    figures['torch'] = torch_figures
    ratio = figures['images_per_s_per_device'] / torch_figures['images_per_s']
    figures['jax_over_torch'] = ratio
    print(f'PyTorch ({torch_figures["device"]}, torch '
          f'{torch_figures["torch_version"]}, compiled: '
          f'{torch_figures["compiled"]}): '
          f'{torch_figures["images_per_s"]:.1f} images/s on one device; '
          f'JAX / PyTorch per device: {ratio:.2f}x')

  if args.profile_dir:
    with jax.profiler.trace(args.profile_dir):
      step.time(0, args.profile_steps)
    print(f'profile of {args.profile_steps} steps: {args.profile_dir}')
  if args.json:
    print(json.dumps(figures))


if __name__ == '__main__':
  main()
