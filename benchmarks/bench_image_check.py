"""Time of the up-front image check on a Market-1501-sized folder.

Writes a folder in Market-1501 layout with as many 128x64 JPEGs as
Market-1501 has (12,936 train, 3,368 query, 19,732 gallery: 36,036; or
``--num_files``), made from a few hundred rendered synthetic crops, each
file a distinct variant (its own pixel noise), unless ``--data`` names an
existing folder. Then times ``tables.from_folders`` on all three splits,
what training on ``--config.dataset.folder`` runs before its first step:

* cold: no verdict cache (every file decoded, in parallel);
* warm: the cache written by the cold run (the files only stat'ed);
* one changed: the warm case after one file was rewritten.

The files were just written or read, so they are in the OS page cache in
every case: "cold" is about the verdict cache, not the disk.

Run::

  .venv/bin/python benchmarks/bench_image_check.py [--num_files N] [--json]
"""

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

# Market-1501's split sizes (Zheng et al., ICCV 2015).
MARKET_SPLITS = {'bounding_box_train': 12936, 'query': 3368,
                 'bounding_box_test': 19732}
BASE_CROPS = 300  # rendered crops the files are variants of
NUM_CAMERAS = 6


def _parse_arguments(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data', default=None,
                      help='existing Market-layout folder (default: write one)')
  parser.add_argument('--write_to', default=None,
                      help='write the generated folder here and keep it '
                      '(default: a temporary folder, removed at the end)')
  parser.add_argument('--num_files', type=int,
                      default=sum(MARKET_SPLITS.values()),
                      help='files written over the three splits, in '
                      "Market-1501's proportions (default 36,036)")
  parser.add_argument('--json', action='store_true',
                      help='also print the figures as one JSON line')
  return parser.parse_args(argv)


def write_folder(root: str, num_files: int, seed: int = 0) -> int:
  """Writes `num_files` distinct 128x64 JPEGs in Market-1501 layout."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sa_reid_jax.datasets.synthetic import painting  # pylint: disable=g-import-not-at-top
  from sa_reid_jax.datasets.synthetic import people  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  cameras = [people.draw_camera(rng) for _ in range(NUM_CAMERAS)]
  num_crops = min(BASE_CROPS, num_files)
  persons = [people.draw_person(rng)
             for _ in range(max(1, num_crops // 2))]
  crops = [painting.render(persons[i % len(persons)],
                           cameras[i % NUM_CAMERAS], rng)
           for i in range(num_crops)]
  total = sum(MARKET_SPLITS.values())
  written = 0
  for folder, share in MARKET_SPLITS.items():
    os.makedirs(os.path.join(root, folder))
    count = max(1, round(num_files * share / total))
    for i in range(count):
      base = i % num_crops
      noise = rng.integers(-3, 4, crops[base].shape)
      pixels = np.clip(crops[base].astype(np.int64) + noise, 0, 255)
      person = 1 + (i // 8) % 1500
      name = (f'{person:04d}_c{1 + base % NUM_CAMERAS}s1_{i:06d}_01.jpg')
      encoded = io.BytesIO()
      Image.fromarray(pixels.astype(np.uint8)).save(encoded, format='JPEG',
                                                    quality=90)
      with open(os.path.join(root, folder, name), 'wb') as file:
        file.write(encoded.getvalue())
      written += 1
  return written


def _timed_check(root: str) -> tuple[float, float]:
  """(wall-clock seconds, CPU seconds of all the process's threads)."""
  from sa_reid_jax.datasets import tables  # pylint: disable=g-import-not-at-top
  wall, cpu = time.perf_counter(), time.process_time()
  tables.from_folders(root, ('train', 'query', 'gallery'),
                      log=lambda _: None)
  return time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None) -> dict:
  args = _parse_arguments(argv)
  # TensorFlow and the package are imported before any timing.
  from sa_reid_jax.datasets import image_check  # pylint: disable=g-import-not-at-top
  from sa_reid_jax.datasets.tensorflow_cpu import tf  # pylint: disable=g-import-not-at-top,unused-import
  temporary = None
  root = args.data
  if root is None:
    if args.write_to:
      root = args.write_to
    else:
      temporary = tempfile.mkdtemp(prefix='bench_image_check_')
      root = os.path.join(temporary, 'market_sized')
    start = time.perf_counter()
    count = write_folder(root, args.num_files)
    print(f'wrote {count:,} JPEGs of 128x64 in '
          f'{time.perf_counter() - start:.1f} s')
  try:
    for cache in image_check.cache_files(root):
      if os.path.exists(cache):
        os.remove(cache)
    num_files = sum(len(os.listdir(os.path.join(root, folder)))
                    for folder in MARKET_SPLITS)
    cold = _timed_check(root)
    warm = _timed_check(root)
    gallery = os.path.join(root, 'bounding_box_test')
    changed = os.path.join(gallery, sorted(os.listdir(gallery))[0])
    os.utime(changed, ns=(0, os.stat(changed).st_mtime_ns + 10**9))
    one_changed = _timed_check(root)
  finally:
    if temporary is not None:
      shutil.rmtree(temporary)
  figures = {'files': num_files, 'cpus': os.cpu_count()}
  for name, (wall, cpu) in (('cold', cold), ('warm', warm),
                            ('one_changed', one_changed)):
    figures.update({f'{name}_s': wall, f'{name}_cpu_s': cpu})
  print(f'image check of {num_files:,} files on {os.cpu_count()} CPUs '
        '(wall-clock seconds; CPU seconds of all threads):')
  for name, (wall, cpu) in (('cold (no verdict cache)', cold),
                            ('warm', warm),
                            ('warm, one file changed', one_changed)):
    print(f'  {name:<24} {wall:6.2f} s   CPU {cpu:6.2f} s')
  if args.json:
    print(json.dumps(figures))
  return figures


if __name__ == '__main__':
  main()
