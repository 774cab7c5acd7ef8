"""Search at scale: the gallery index and exact ranking over synthetic crops.

Builds a gallery index (`sa_reid_jax.tools.gallery_index`, memory-mapped
float32 rows on disk under ``--workdir``) of ``--num_gallery`` synthetic
descriptors (default 1,000,000 x 2,048: 8.2 GB; clustered, each row
L2-normalised), then times:

* building it (the synthetic descriptors' generation timed apart);
* adding ``--num_added`` crops (appended rows and a journal record);
* removing as many (rows marked dead, a journal record);
* exact search (`sa_reid_jax.tools.nearest.nearest`, top ``--topk``) of
  ``--num_queries`` queries in one batch, per query, beside the bare matrix
  product of the same batch against the same memory-mapped gallery blocks
  (what BLAS needs at least), and their ratio (each the best of
  `REPEATS`, alternated);
* peak resident memory (``resource.getrusage``; it counts the pages of the
  memory-mapped gallery the process touched, which the OS can drop).

Files are fake (names and signatures only): the index is updated through
`gallery_index.update`, as `search` does after stat'ing real files (the
stat'ing itself, one `os.stat` a file, is not timed). The
first query's top-k is checked against a full stable sort of its row
(computed directly, |q - g|^2 in float32: equal up to rounding, so a near
tie could in principle differ).

Run::

  .venv/bin/python benchmarks/bench_search.py [--num_gallery N] \
      [--workdir DIR] [--tiny] [--json]
"""

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np

from sa_reid_jax.tools import gallery_index
from sa_reid_jax.tools import nearest
# pylint: enable=g-import-not-at-top,wrong-import-position

# Identities the synthetic descriptors cluster around, and the spread of a
# crop around its identity's centre (per value, before normalising).
NUM_CLUSTERS = 1000
CLUSTER_SPREAD = 0.5
TINY = {'num_gallery': 20000, 'num_queries': 1000}
# Timings of the search and of the bare product, alternated; the best kept.
REPEATS = 2


def _parse_arguments(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--num_gallery', type=int, default=1_000_000,
                      help='gallery crops indexed (default 1,000,000)')
  parser.add_argument('--dim', type=int, default=2048,
                      help='values per descriptor (default 2,048)')
  parser.add_argument('--num_added', type=int, default=1000,
                      help='crops added, then removed (default 1,000)')
  parser.add_argument('--num_queries', type=int, default=1000,
                      help='queries ranked in one batch (default 1,000)')
  parser.add_argument('--topk', type=int, default=10,
                      help='matches kept per query (default 10)')
  parser.add_argument('--workdir', default=None,
                      help='where the index is written and kept (default: '
                      'a temporary folder, removed at the end)')
  parser.add_argument('--tiny', action='store_true',
                      help='20,000 crops (the test suite runs this)')
  parser.add_argument('--json', action='store_true',
                      help='also print the figures as one JSON line')
  args = parser.parse_args(argv)
  if args.tiny:
    for name, value in TINY.items():
      setattr(args, name, value)
  if min(args.num_gallery, args.dim, args.num_added, args.num_queries,
         args.topk) < 1 or args.num_added >= args.num_gallery:
    parser.error('--num_gallery, --dim, --num_added, --num_queries and '
                 '--topk must be >= 1, and --num_added < --num_gallery')
  return args


class Synthetic:
  """Clustered unit descriptors, row i drawn from seed i (reproducible)."""

  def __init__(self, dim, seed=0):
    rng = np.random.default_rng(seed)
    self.centres = rng.standard_normal((NUM_CLUSTERS, dim)).astype(
        np.float32)
    self.dim = dim
    self.seconds = 0.0

  def rows(self, indices):
    start = time.perf_counter()
    indices = np.asarray(indices)
    rng = np.random.default_rng(int(indices[0]) if len(indices) else 0)
    rows = self.centres[indices % NUM_CLUSTERS] + CLUSTER_SPREAD * (
        rng.standard_normal((len(indices), self.dim), np.float32))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    self.seconds += time.perf_counter() - start
    return rows

  def describe(self, paths):
    """`gallery_index`'s describe: (1, dim) descriptors of fake files."""
    indices = [int(os.path.basename(p)[:-4]) for p in paths]
    return dict(zip(paths, self.rows(indices)[:, None, :])), {}


def _files(base, indices):
  """(paths, sizes, mtimes) of fake files ``base/<index>.jpg``."""
  indices = np.asarray(indices, np.int64)
  return ([os.path.join(base, f'{i:08d}.jpg') for i in indices],
          1000 + indices, indices)


def _timed(function):
  start = time.perf_counter()
  result = function()
  return result, time.perf_counter() - start


def run(args, workdir):
  """The figures, as a dict."""
  base = os.path.join(workdir, 'gallery')
  folder = os.path.join(workdir, 'index')
  os.makedirs(folder, exist_ok=True)
  key = 'b' * 64
  synthetic = Synthetic(args.dim)
  messages = []

  def update(files):
    return gallery_index.update(folder, key, base, *files,
                                synthetic.describe, messages.append)

  files = _files(base, range(args.num_gallery))
  _, build_s = _timed(lambda: update(files))
  generation_s = synthetic.seconds
  files = _files(base, range(args.num_gallery + args.num_added))
  synthetic.seconds = 0.0
  _, add_s = _timed(lambda: update(files))
  add_generation_s = synthetic.seconds
  files = _files(base, range(args.num_added,
                             args.num_gallery + args.num_added))
  index, remove_s = _timed(lambda: update(files))

  queries = synthetic.rows(np.arange(args.num_queries) * 7919 + 13)

  def exact_search():
    return nearest.nearest(queries, index.descriptors, args.topk,
                           rows=index.rows, norms=index.norms)

  def bare_product():
    for start in range(0, len(index.rows), nearest.BLOCK_ROWS):
      stop = min(start + nearest.BLOCK_ROWS, len(index.rows))
      block = index.descriptors[index.rows[start]:index.rows[stop - 1] + 1]
      _ = queries @ np.asarray(block).T

  # Alternated, best of REPEATS each: the machine may be shared.
  search_times, product_times = [], []
  for _ in range(REPEATS):
    _, seconds = _timed(bare_product)
    product_times.append(seconds)
    (distances, positions), seconds = _timed(exact_search)
    search_times.append(seconds)
  search_s, product_s = min(search_times), min(product_times)
  peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  # The first query against a full stable sort of its whole row.
  row = np.concatenate([
      np.sqrt(np.maximum(((index.descriptors[index.rows[s:s + 65536]]
                           - queries[0]) ** 2).sum(axis=1), 0))
      for s in range(0, len(index.rows), 65536)])
  checked = bool((np.argsort(row, kind='stable')[:args.topk]
                  == positions[0]).all())
  data = os.path.join(folder, sorted(
      n for n in os.listdir(folder) if n.startswith('descriptors-'))[0])
  return {
      'num_gallery': args.num_gallery, 'dim': args.dim,
      'index_gib': os.path.getsize(data) / 2**30,
      'build_s': build_s, 'build_generation_s': generation_s,
      'num_added': args.num_added, 'add_s': add_s,
      'add_generation_s': add_generation_s, 'remove_s': remove_s,
      'num_queries': args.num_queries, 'topk': args.topk,
      'search_s': search_s,
      'search_ms_per_query': 1000 * search_s / args.num_queries,
      'product_s': product_s,
      'product_ms_per_query': 1000 * product_s / args.num_queries,
      'search_over_product': search_s / product_s,
      'top1_median_distance': float(np.median(distances[:, 0])),
      'first_query_matches_full_sort': checked, 'peak_rss_gib': peak_gib,
  }


def main(argv=None):
  args = _parse_arguments(argv)
  workdir = args.workdir or tempfile.mkdtemp(prefix='bench_search_')
  try:
    figures = run(args, workdir)
  finally:
    if args.workdir is None:
      shutil.rmtree(workdir, ignore_errors=True)
  f = figures
  print(f'gallery index of {f["num_gallery"]:,} x {f["dim"]:,} float32 '
        f'({f["index_gib"]:.2f} GiB on disk)')
  print(f'  build: {f["build_s"]:.2f} s (of which generating the synthetic '
        f'descriptors {f["build_generation_s"]:.2f} s)')
  print(f'  add {f["num_added"]:,} crops: {f["add_s"]:.3f} s (generating '
        f'them {f["add_generation_s"]:.3f} s)')
  print(f'  remove {f["num_added"]:,} crops: {f["remove_s"]:.3f} s')
  print(f'exact top-{f["topk"]} of {f["num_queries"]:,} queries in one '
        f'batch: {f["search_s"]:.2f} s ({f["search_ms_per_query"]:.2f} ms '
        'per query)')
  print(f'  bare matrix product of the same batch: {f["product_s"]:.2f} s '
        f'({f["product_ms_per_query"]:.2f} ms per query); search / product '
        f'= {f["search_over_product"]:.2f}')
  print(f'  first query equals a full stable sort: '
        f'{f["first_query_matches_full_sort"]}')
  print(f'peak resident memory: {f["peak_rss_gib"]:.2f} GiB (including '
        'memory-mapped gallery pages)')
  if args.json:
    print(json.dumps(figures))


if __name__ == '__main__':
  main()
