"""Images per second of feature extraction (the retrieval descriptor).

Times ``registry.embed(model, variables, images)`` (the ``features`` output)
under `jax.jit` on every device (the batch split over a ``data`` mesh, the
variables replicated), with a synthetic batch created once and kept on the
devices: the network's inference rate, without decoding or transfers.

Run from the repository root::

  .venv/bin/python benchmarks/bench_infer.py [--batch_per_device 256] \
      [--dtype bfloat16] [--json]

FLOPs per image are XLA's (cost analysis of the compiled program) and the
analytic forward count (convolution and matmul MACs x2); MFU as in
bench_train.py. Small CPU runs take the same shape flags as bench_train.py.
"""

import argparse
import json
import sys
import time

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

# The benchmarks directory is on sys.path when this file runs as a script.
# pylint: disable=g-import-not-at-top,wrong-import-position
import bench_train  # Puts the repository root on sys.path.
from bench_flops import forward_macs, peak_flops, print_flops_and_mfu, xla_flops
from bench_step import synthetic_batch
from sa_reid_jax.models import registry
from sa_reid_jax.training import step as step_lib


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  bench_train.add_model_arguments(parser, batch=256)
  args = parser.parse_args(argv)
  bench_train.check_arguments(parser, args)

  figures = bench_train.device_summary()
  print(f'devices: {figures["device_count"]} x {figures["device_kind"]} '
        f'({figures["platform"]}); jax {figures["jax_version"]}')
  config = bench_train.experiment_config(args)
  # Inference normalises with the running statistics: no collectives.
  config.model.sync_batch_norm = False
  model = step_lib.build_model(config, args.num_classes)
  image_size = tuple(args.image_size)
  mesh = step_lib.make_mesh()
  global_images = args.batch_per_device * figures['device_count']
  print(f'network: {args.variant}, {image_size[0]}x{image_size[1]}, stages '
        f'{tuple(args.stage_sizes)}, width {args.base_width}, compute '
        f'{args.dtype}; batch {args.batch_per_device} per device, '
        f'{global_images} per call')

  variables = jax.jit(lambda: model.init(
      jax.random.PRNGKey(0), np.zeros((2, *image_size, 3), np.float32),
      train=False))()
  macs = forward_macs(model, variables, image_size, outputs=('features',))
  variables = step_lib.replicate(variables, mesh)
  local = synthetic_batch(
      args.batch_per_device * jax.local_device_count(), image_size,
      args.num_classes, seed=jax.process_index())['images']
  images = jax.make_array_from_process_local_data(
      NamedSharding(mesh, PartitionSpec(step_lib.DATA_AXIS)), local)

  extract = jax.jit(lambda v, x: registry.embed(model, v, x))
  start = time.perf_counter()
  lowered = extract.lower(variables, images)
  compiled = lowered.compile()
  figures['compile_s'] = time.perf_counter() - start
  lowered_flops = xla_flops(lowered)
  flops = xla_flops(compiled) or lowered_flops

  features = None
  for _ in range(args.warmup):
    features = compiled(variables, images)
  jax.block_until_ready(features)
  start = time.perf_counter()
  for _ in range(args.steps):
    features = compiled(variables, images)
  jax.block_until_ready(features)
  seconds = time.perf_counter() - start
  if not np.isfinite(np.asarray(features.addressable_data(0))).all():
    sys.exit('non-finite features: the timing is of a broken network')

  call_time = seconds / args.steps
  figures.update(
      batch_per_device=args.batch_per_device, dtype=args.dtype,
      image_size=list(image_size), stage_sizes=list(args.stage_sizes),
      base_width=args.base_width, steps=args.steps, warmup=args.warmup,
      batch_ms=1e3 * call_time, images_per_s=global_images / call_time,
      images_per_s_per_device=args.batch_per_device / call_time,
      xla_flops_per_batch_per_device=flops,
      xla_flops_per_image=flops / args.batch_per_device if flops else None,
      xla_lowered_flops_per_image=(lowered_flops / args.batch_per_device
                                   if lowered_flops else None),
      analytic_flops_per_image=2.0 * macs)
  peak, figures['peak_source'] = peak_flops(figures['device_kind'],
                                            args.peak_tflops)
  figures['peak_flops_per_device'] = peak
  print(f'compile: {figures["compile_s"]:.1f} s')
  print(f'features: {figures["batch_ms"]:.2f} ms per batch, '
        f'{figures["images_per_s"]:.1f} images/s '
        f'({figures["images_per_s_per_device"]:.1f} per device; '
        f'{args.steps} batches timed after {args.warmup} warm-up)')
  print_flops_and_mfu(figures, figures['images_per_s_per_device'],
                      passes='forward MACs x2')
  if args.json:
    print(json.dumps(figures))


if __name__ == '__main__':
  main()
