"""Throughput of the train input pipeline, per CPU core, on synthetic data.

Generates a synthetic Market-layout dataset in a temporary folder (or reads
``--data``), then times the train pipeline (decode, resize to 384x128, flip,
normalise, random erasing, batch) in two fresh processes, because
TensorFlow's thread pools are fixed when it starts:

* one core: one TensorFlow thread, one parallel call; images/s here is the
  per-core rate.
* all cores: TensorFlow's defaults and tf.data autotuning; images/s divided by
  the number of cores, and images per CPU-second used by the process.

With ``--augment_on_device`` the pipeline only decodes (to uint8 at 128x64,
``train_batches(..., augment_on_device=True)``), and a third process times
``device_augment.augment_batch`` (resize, flip, normalise, erase) on JAX's
default backend, for reference.

Run::

  .venv/bin/python benchmarks/bench_input.py [--num_ids 100] [--source tfds] \
      [--augment_on_device]
"""

import argparse
import functools
import os
import subprocess
import sys
import tempfile
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)


def _parse_arguments(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data', default=None,
                      help='Market-layout folder (default: generate one)')
  parser.add_argument('--num_ids', type=int, default=100,
                      help='identities per split of the generated data')
  parser.add_argument('--batch_size', type=int, default=48)
  parser.add_argument('--image_size', type=int, nargs=2, default=(384, 128),
                      metavar=('HEIGHT', 'WIDTH'))
  parser.add_argument('--batches', type=int, default=30,
                      help='batches per timed window (after 3 warm-up ones)')
  parser.add_argument('--repeats', type=int, default=3,
                      help='timed windows; the fastest is reported, since '
                      'other work on the machine only slows a window down')
  parser.add_argument('--no_erasing', action='store_true',
                      help='disable random erasing')
  parser.add_argument('--source', choices=('folder', 'tfds'), default='folder',
                      help='read files directly or through the TFDS builder')
  parser.add_argument('--augment_on_device', action='store_true',
                      help='time the decode-only CPU side, then '
                      'device_augment.augment_batch on JAX\'s default backend')
  parser.add_argument('--worker', choices=('one_core', 'all_cores', 'augment'),
                      help=argparse.SUPPRESS)
  parser.add_argument('--data_dir', default=None, help=argparse.SUPPRESS)
  arguments = parser.parse_args(argv)
  if min(arguments.batches, arguments.batch_size, arguments.repeats) < 1:
    parser.error('--batches, --batch_size and --repeats must be at least 1')
  return arguments


def _best_rates(step, images_per_step, arguments):
  """The fastest window's (images per wall-second, per CPU-second)."""
  rates = []
  for _ in range(arguments.repeats):
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(arguments.batches):
      step()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    images = arguments.batches * images_per_step
    rates.append((images / wall, images / cpu))
  return max(rates)


def _measure_augment(arguments):
  """Runs in a fresh process: times ``augment_batch`` on a staged batch."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from sa_reid_jax.data import device_augment  # pylint: disable=g-import-not-at-top
  size = arguments.batch_size
  rng = np.random.default_rng(0)
  height, width = arguments.image_size
  boxes = np.zeros((size, 4), np.int32)
  boxes[::2] = (height // 4, width // 4, height // 2, width // 2)
  batch = jax.device_put({
      'images': rng.integers(0, 256, (size, 128, 64, 3), np.uint8),
      'flip': np.arange(size) % 2 == 0, 'erase_box': boxes,
      'noise_seed': rng.integers(0, 2**62, (size, 2), np.int64)})
  # 'random' (RandomErasing's default, the official code's) adds a
  # full-size normal draw per image, costly on CPU; 'zeros' does not.
  for fill in ('zeros', 'random'):
    augment = functools.partial(
        lambda fill: device_augment.augment_batch(
            batch, tuple(arguments.image_size), fill).block_until_ready(),
        fill)
    for _ in range(3):
      augment()
    wall_rate, cpu_rate = _best_rates(augment, size, arguments)
    print(f'augment_batch on {jax.devices()[0].platform}: {wall_rate:7.0f} '
          f'img/s; {cpu_rate:.0f} img per CPU-second used (batch {size}, '
          f'128x64 -> {height}x{width}, {fill} fill on half the images)')


def _measure(arguments):
  """Runs in a fresh process: times one pipeline configuration."""
  from sa_reid_jax.datasets.tensorflow_cpu import tf  # pylint: disable=g-import-not-at-top
  one_core = arguments.worker == 'one_core'
  if one_core:
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
  from sa_reid_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from sa_reid_jax.data import augmentation  # pylint: disable=g-import-not-at-top
  from sa_reid_jax.datasets import tables  # pylint: disable=g-import-not-at-top

  if arguments.source == 'tfds':
    table = tables.from_tfds('market_layout_folder', 'train',
                             data_dir=arguments.data_dir)
  else:
    table = tables.from_folder(arguments.data, 'train')
  options = dict(
      batch_size=arguments.batch_size, seed=0,
      image_size=tuple(arguments.image_size),
      erasing=None if arguments.no_erasing else augmentation.RandomErasing(),
      augment_on_device=arguments.augment_on_device)
  if one_core:
    options.update(num_parallel_calls=1, prefetch=1)
  batches = pipeline.train_batches(table, **options)
  for _ in range(3):
    next(batches)
  wall_rate, cpu_rate = _best_rates(lambda: next(batches),
                                    arguments.batch_size, arguments)
  cores = os.cpu_count() or 1
  erasing = 'off' if arguments.no_erasing else 'on'
  work = ('decode only, augment_on_device' if arguments.augment_on_device
          else f'erasing {erasing}')
  if one_core:
    print(f'one core : {wall_rate:7.0f} img/s; {cpu_rate:.0f} img per '
          f'CPU-second used (source {arguments.source}, '
          f'{len(table)} train images, {work})')
  else:
    print(f'all cores: {wall_rate:7.0f} img/s on {cores} cores = '
          f'{wall_rate / cores:.0f} img/s per core; '
          f'{cpu_rate:.0f} img per CPU-second used')


def main(argv=None):
  arguments = _parse_arguments(argv)
  if arguments.worker == 'augment':
    _measure_augment(arguments)
    return
  if arguments.worker:
    _measure(arguments)
    return
  with tempfile.TemporaryDirectory() as scratch:
    data = arguments.data
    if data is None:
      from sa_reid_jax.datasets import synthetic  # pylint: disable=g-import-not-at-top
      data = os.path.join(scratch, 'synthetic')
      start = time.perf_counter()
      summary = synthetic.generate(data, num_ids=arguments.num_ids, seed=0)
      print(f'generated {summary.num_train_images} train images of '
            f'{arguments.num_ids} ids in {time.perf_counter() - start:.1f} s')
    data_dir = os.path.join(scratch, 'tfds')
    if arguments.source == 'tfds':
      from sa_reid_jax.datasets import builders  # pylint: disable=g-import-not-at-top
      builders.prepare('market_layout_folder', data, data_dir)
    worker_arguments = [
        '--data', data, '--data_dir', data_dir, '--source', arguments.source,
        '--batch_size', str(arguments.batch_size), '--batches',
        str(arguments.batches), '--repeats', str(arguments.repeats),
        '--image_size',
        *map(str, arguments.image_size)]
    if arguments.no_erasing:
      worker_arguments.append('--no_erasing')
    workers = ('one_core', 'all_cores')
    if arguments.augment_on_device:
      worker_arguments.append('--augment_on_device')
      workers += ('augment',)
    for worker in workers:
      status = subprocess.run([sys.executable, os.path.abspath(__file__),
                               *worker_arguments, '--worker', worker],
                              check=False).returncode
      if status:
        sys.exit(f'the {worker} measurement failed (exit status {status})')


if __name__ == '__main__':
  main()
