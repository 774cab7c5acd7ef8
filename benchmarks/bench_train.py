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
by device kind, or ``--peak_tflops``), given for both counts.

``--compare_torch`` first runs benchmarks/bench_train_torch.py (the official
network in PyTorch) with the same settings in a subprocess, before JAX takes
the accelerator's memory, and prints the ratio of the two rates.

Small CPU runs: ``--image_size=64,32 --stage_sizes=1,1,1,1 --base_width=8
--num_classes=10 --batch_per_device=4 --steps=2 --warmup=1``.
"""

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from typing import Any, Optional

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np

# TensorFlow-free modules only: the benchmark runs where TensorFlow is not
# installed (trainer, data.pipeline and evaluation import it).
from sa_reid_jax import tasks
from sa_reid_jax.training import casn_defaults
from sa_reid_jax.training import defaults
from sa_reid_jax.training import optimizer as optimizer_lib
from sa_reid_jax.training import rga_defaults
from sa_reid_jax.training import step as step_lib

# Dense (no sparsity) bf16 tensor-core peak per device, FLOP/s, from the
# vendor's data sheets. Checked in order against jax's device_kind.
_PEAK_BF16 = (
    (('H200',), 989.4e12),
    (('H100', 'PCIe'), 756e12),
    (('H100', 'HBM3'), 989.4e12),  # SXM5 reports 'NVIDIA H100 80GB HBM3'.
    (('H100', 'SXM'), 989.4e12),
    (('A100',), 312e12),
)
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


def peak_flops(device_kind: str, peak_tflops: Optional[float]
               ) -> tuple[Optional[float], str]:
  """(peak FLOP/s per device or None, where it comes from)."""
  if peak_tflops:
    return peak_tflops * 1e12, '--peak_tflops'
  for words, peak in _PEAK_BF16:
    if all(word in device_kind for word in words):
      return peak, f'dense bf16 peak of {device_kind}'
  return None, f'unknown peak for {device_kind!r}; pass --peak_tflops'


def xla_flops(stage) -> Optional[float]:
  """'flops' of a `Lowered`/`Compiled` cost analysis, or None if absent.

  Depending on the jax version the analysis is a dict or a list of dicts
  (one per program); the programs' counts are summed.
  """
  try:
    analysis = stage.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    # Some backends do not implement it; the benchmark still runs.
    return None
  if analysis is None:
    return None
  if isinstance(analysis, dict):
    analysis = [analysis]
  values = [a.get('flops') for a in analysis if a]
  values = [v for v in values if v is not None and v >= 0]
  return float(sum(values)) if values else None


def _subjaxprs(params: dict[str, Any]):
  """The jaxprs inside an equation's parameters (pjit, custom_jvp, ...)."""
  for value in params.values():
    for item in value if isinstance(value, (list, tuple)) else (value,):
      if hasattr(item, 'eqns'):
        yield item
      elif hasattr(getattr(item, 'jaxpr', None), 'eqns'):
        yield item.jaxpr


def matmul_macs(jaxpr, needed=None) -> int:
  """Multiply-accumulates of the convolutions and dot products of a jaxpr.

  Only equations that the jaxpr's outputs depend on are counted, as XLA
  drops the others (e.g. the classifier heads when only the features are
  returned).

  Args:
    jaxpr: a `Jaxpr`; a nested jaxpr (jit, custom derivatives) is counted
      whole when its equation is needed, as executed without control flow.
    needed: the outputs that count (default: all of them).

  Returns:
    the MAC count.
  """
  live = {v for v in (jaxpr.outvars if needed is None else needed)
          if isinstance(v, jax.extend.core.Var)}
  total = 0
  for eqn in reversed(jaxpr.eqns):
    if not (eqn.effects or any(v in live for v in eqn.outvars)):
      continue
    live.update(v for v in eqn.invars if isinstance(v, jax.extend.core.Var))
    name = eqn.primitive.name
    if name == 'conv_general_dilated':
      kernel = eqn.invars[1].aval
      spec = eqn.params['dimension_numbers'].rhs_spec
      # Each output element sums over the kernel window and the input
      # channels of its group (rhs_spec: out channels, in channels, window).
      per_output = math.prod(kernel.shape[d] for d in spec[1:])
      total += math.prod(eqn.outvars[0].aval.shape) * per_output
    elif name == 'dot_general':
      (contracting, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval
      total += math.prod(eqn.outvars[0].aval.shape) * math.prod(
          lhs.shape[d] for d in contracting)
    for sub in _subjaxprs(eqn.params):
      total += matmul_macs(sub)
  return total


def forward_macs(model, variables, image_size: tuple[int, int],
                 outputs: tuple[str, ...]) -> int:
  """MACs of one image's forward pass (shapes only, no compute).

  Args:
    model: the network.
    variables: its variables (arrays or shape/dtype structs).
    image_size: input (height, width).
    outputs: the network outputs whose computation counts.

  Returns:
    the MAC count, in evaluation mode: the same convolutions and matmuls
    as training, without the BatchNorm collectives that need a mapped axis.
  """
  model = model.clone(bn_axis_name=None)
  image = jax.ShapeDtypeStruct((1, *image_size, 3), jnp.float32)

  def apply(variables, image):
    results = model.apply(variables, image, train=False)
    return [results[key] for key in outputs if key in results]

  return matmul_macs(jax.make_jaxpr(apply)(variables, image).jaxpr)


def synthetic_batch(num_images: int, image_size: tuple[int, int],
                    num_classes: int, seed: int = 0,
                    images_per_identity: int = 1) -> dict[str, np.ndarray]:
  """A train batch of ImageNet-normalised noise and labels: random ones, or
  runs of `images_per_identity` equal labels (a P x K batch) when > 1."""
  rng = np.random.default_rng(seed)
  if images_per_identity > 1:
    labels = (np.arange(num_images) // images_per_identity) % num_classes
  else:
    labels = rng.integers(0, num_classes, num_images)
  return {
      'images': rng.standard_normal((num_images, *image_size, 3),
                                    dtype=np.float32),
      'labels': labels.astype(np.int32),
      'positions': np.arange(num_images, dtype=np.int32),
  }


def device_summary() -> dict[str, Any]:
  devices = jax.devices()
  return dict(device_kind=devices[0].device_kind,
              platform=devices[0].platform, device_count=len(devices),
              jax_version=jax.__version__)


def si(value: float, unit: str) -> str:
  """12.3e9 -> '12.3 G<unit>' (the prefix that suits the value)."""
  for prefix, scale in (('P', 1e15), ('T', 1e12), ('G', 1e9), ('M', 1e6),
                        ('k', 1e3)):
    if abs(value) >= scale:
      return f'{value / scale:.4g} {prefix}{unit}'
  return f'{value:.4g} {unit}'


def print_flops_and_mfu(figures: dict[str, Any], per_image_rate: float,
                        passes: str):
  """Prints FLOPs per image, achieved FLOP/s and MFU; adds them to figures.

  Args:
    figures: must hold ``xla_flops_per_image`` (None if unknown),
      ``analytic_flops_per_image``, ``peak_flops_per_device`` and
      ``peak_source``; may hold ``xla_lowered_flops_per_image``.
    per_image_rate: images per second per device.
    passes: how the analytic count was formed, for the printout.
  """
  xla = figures['xla_flops_per_image']
  analytic = figures['analytic_flops_per_image']
  xla_text = si(xla, 'FLOP') if xla else 'n/a'
  lowered = figures.get('xla_lowered_flops_per_image')
  lowered_text = si(lowered, 'FLOP') if lowered else 'n/a'
  print(f'per image: XLA {xla_text} (cost analysis of the compiled program '
        f'/ images per device; {lowered_text} before optimisation); '
        f'analytic {si(analytic, "FLOP")} ({passes})')
  peak = figures['peak_flops_per_device']
  for key, count in (('xla', xla), ('analytic', analytic)):
    achieved = count * per_image_rate if count else None
    figures[f'achieved_flops_per_device_{key}'] = achieved
    figures[f'mfu_{key}'] = achieved / peak if achieved and peak else None
  parts = []
  for key in ('xla', 'analytic'):
    achieved, mfu = (figures[f'achieved_flops_per_device_{key}'],
                     figures[f'mfu_{key}'])
    if achieved is None:
      parts.append(f'{key} n/a')
    else:
      parts.append(f'{key} {si(achieved, "FLOP/s")}, MFU ' + (
          f'{100 * mfu:.1f}%' if mfu is not None else 'n/a'))
  print(f'per device: {"; ".join(parts)}  [{figures["peak_source"]}'
        + (f', {si(peak, "FLOP/s")}]' if peak else ']'))


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
  model = step_lib.build_model(config, args.num_classes)
  image_size = tuple(args.image_size)
  mesh = step_lib.make_mesh()
  local_images = args.batch_per_device * jax.local_device_count()
  global_images = args.batch_per_device * figures['device_count']
  print(f'network: {args.variant}, {image_size[0]}x{image_size[1]}, stages '
        f'{tuple(args.stage_sizes)}, width {args.base_width}, '
        f'{args.num_classes} classes, compute {args.dtype}; batch '
        f'{args.batch_per_device} per device, {global_images} per step')

  optimizer = optimizer_lib.make_optimizer(config.optimizer,
                                           steps_per_epoch=1000)
  state = step_lib.create_train_state(model, optimizer, config.seed,
                                      image_size)
  # What the loss reads; the descriptor ('features') has no matmuls.
  macs = forward_macs(model, {'params': state.params,
                              'batch_stats': state.batch_stats}, image_size,
                      outputs=('part_logits', 'global_logits', 'ds_logits',
                               'embeddings'))
  state = step_lib.replicate(state, mesh)
  task = tasks.build(config)
  batch = step_lib.shard_batch(
      synthetic_batch(local_images, image_size, args.num_classes,
                      seed=jax.process_index(),
                      images_per_identity=(
                          config.data.images_per_identity
                          if config.data.sampler == 'identity' else 1)), mesh,
      step_lib.step_keys(task))
  train_step = step_lib.make_parallel_train_step(
      mesh, model=model, task=task, optimizer=optimizer)

  start = time.perf_counter()
  lowered = train_step.lower(state, batch)
  compiled = lowered.compile()
  figures['compile_s'] = time.perf_counter() - start
  # The count before optimisation is a check on the compiled one (a
  # backend could leave out work it hands to library calls) and stands in
  # where the backend has no analysis of compiled programs.
  lowered_flops = xla_flops(lowered)
  step_flops = xla_flops(compiled) or lowered_flops

  metrics = None
  for _ in range(args.warmup):
    state, metrics = compiled(state, batch)
  jax.block_until_ready((state, metrics))
  start = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready((state, metrics))
  seconds = time.perf_counter() - start
  loss = float(metrics['loss'])
  if not math.isfinite(loss):
    sys.exit(f'the loss is {loss}: the timing is of a broken step')

  step_time = seconds / args.steps
  figures.update(
      batch_per_device=args.batch_per_device, dtype=args.dtype,
      image_size=list(image_size), num_classes=args.num_classes,
      stage_sizes=list(args.stage_sizes), base_width=args.base_width,
      steps=args.steps, warmup=args.warmup, step_ms=1e3 * step_time,
      images_per_s=global_images / step_time,
      images_per_s_per_device=args.batch_per_device / step_time,
      xla_flops_per_step_per_device=step_flops,
      xla_flops_per_image=(step_flops / args.batch_per_device
                           if step_flops else None),
      xla_lowered_flops_per_image=(lowered_flops / args.batch_per_device
                                   if lowered_flops else None),
      analytic_flops_per_image=6.0 * macs, loss=loss)
  peak, figures['peak_source'] = peak_flops(figures['device_kind'],
                                            args.peak_tflops)
  figures['peak_flops_per_device'] = peak
  print(f'compile: {figures["compile_s"]:.1f} s')
  print(f'train step: {figures["step_ms"]:.2f} ms, '
        f'{figures["images_per_s"]:.1f} images/s '
        f'({figures["images_per_s_per_device"]:.1f} per device; '
        f'{args.steps} steps timed after {args.warmup} warm-up)')
  if step_flops:
    print(f'per step: XLA {si(step_flops, "FLOP")} per device')
  print_flops_and_mfu(figures, figures['images_per_s_per_device'],
                      passes='forward MACs x2 x3')

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
    jax.profiler.start_trace(args.profile_dir)
    for _ in range(args.profile_steps):
      state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    jax.profiler.stop_trace()
    print(f'profile of {args.profile_steps} steps: {args.profile_dir}')
  if args.json:
    print(json.dumps(figures))


if __name__ == '__main__':
  main()
