"""Speed and memory of the evaluation code on synthetic Market-1501-sized data.

Run from the repository root:

  .venv/bin/python benchmarks/bench_eval.py

Prints, in one run:

1. `evaluate_rank` against the per-query loop of tests/test_metrics.py on a
   3,000 x 15,500 float32 distance matrix (clustered features, Market-like
   ids, cameras, junk and distractors), and on unstructured random distances
   (a model that has learnt nothing, the slow case for the evaluator). The
   loop is timed on a subset of the queries and scaled to all of them.
2. `re_rank` against the dense transcription of tests/test_rerank.py at a size
   where the dense one is quick enough, then `re_rank` alone at Market-1501
   scale (3,368 queries, 15,913 gallery images).

Memory: every re-ranking run is a fresh subprocess that builds its float32
inputs, resets its peak resident set size (writing 5 to
/proc/self/clear_refs), runs the call and reads the peak (VmHWM). "extra" is
that peak minus the resident size just before the call: the working memory
of the call including its output, but not the inputs. "peak" is the whole
process (Python, numpy, the inputs and the call).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPOSITORY)
sys.path.insert(0, os.path.join(REPOSITORY, 'tests'))

# pylint: disable=g-import-not-at-top,wrong-import-position
import bench_memory
from sa_reid_jax.evaluation.metrics import evaluate_rank
from sa_reid_jax.evaluation.rerank import re_rank
from test_metrics import naive_evaluate
from test_rerank import dense_re_rank

FEATURE_DIM = 128
NUM_CAMERAS = 6


def clustered_features(num_images, num_ids, noise, rng):
  """Features scattered around one random centre per identity."""
  centres = rng.standard_normal((num_ids, FEATURE_DIM)).astype(np.float32)
  ids = rng.integers(0, num_ids, num_images)
  noise = noise * rng.standard_normal((num_images, FEATURE_DIM))
  return (centres[ids] + noise).astype(np.float32), ids


def euclidean(a, b, block_rows=512):
  """float32 Euclidean distances, computed in row blocks of a."""
  out = np.empty((len(a), len(b)), dtype=np.float32)
  b_norms = np.einsum('ij,ij->i', b, b)
  for start in range(0, len(a), block_rows):
    block = a[start:start + block_rows]
    squared = np.einsum('ij,ij->i', block, block)[:, None] + b_norms - 2 * (
        block @ b.T)
    np.sqrt(np.maximum(squared, 0, out=squared), out=out[start:start + len(
        block)])
  return out


def market_like_ranking(num_query=3000, num_gallery=15500, noise=1.3, seed=0):
  """Distances and labels shaped like Market-1501's query/gallery split."""
  rng = np.random.default_rng(seed)
  num_ids = 750
  centres = rng.standard_normal((num_ids + 1, FEATURE_DIM)).astype(np.float32)
  q_pids = rng.integers(1, num_ids + 1, num_query)
  num_junk, num_distractors = num_gallery // 7, num_gallery // 5
  g_pids = np.concatenate([
      rng.integers(1, num_ids + 1, num_gallery - num_junk - num_distractors),
      np.zeros(num_distractors, dtype=np.int64),
      np.full(num_junk, -1, dtype=np.int64)])
  rng.shuffle(g_pids)

  def features(pids):
    # Junk and distractors get their own random centres.
    base = np.where(pids[:, None] > 0, centres[np.maximum(pids, 0)],
                    rng.standard_normal((len(pids), FEATURE_DIM)))
    return (base + noise * rng.standard_normal(base.shape)).astype(np.float32)

  distmat = euclidean(features(q_pids), features(g_pids))
  return (distmat, q_pids, g_pids, rng.integers(0, NUM_CAMERAS, num_query),
          rng.integers(0, NUM_CAMERAS, num_gallery))


def median_time(function, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = function()
    times.append(time.perf_counter() - start)
  return float(np.median(times)), result


def benchmark_evaluator(naive_queries):
  """Prints evaluate_rank's time against the naive loop's."""
  print('== evaluate_rank, 3,000 queries x 15,500 gallery, float32 ==')
  case = market_like_ranking()
  distmat, q_pids, g_pids, q_camids, g_camids = case
  rng = np.random.default_rng(1)
  unstructured = rng.random(distmat.shape, dtype=np.float32)
  for name, matrix in (('clustered features', distmat),
                       ('random distances (worst case)', unstructured)):
    fast, result = median_time(
        lambda m=matrix: evaluate_rank(m, q_pids, g_pids, q_camids, g_camids),
        repeats=5)
    subset = slice(0, naive_queries)
    naive_subset, naive_result = median_time(
        lambda m=matrix: naive_evaluate(m[subset], q_pids[subset], g_pids,
                                        q_camids[subset], g_camids), repeats=1)
    naive = naive_subset * len(q_pids) / naive_queries
    on_subset = evaluate_rank(matrix[subset], q_pids[subset], g_pids,
                              q_camids[subset], g_camids)
    agree = abs(on_subset.mAP - naive_result[1]) < 1e-6
    print(f'{name}: mAP {result.mAP:.3f}, mINP {result.mINP:.3f}, '
          f'rank-1 {result.cmc[0]:.3f}')
    print(f'  evaluate_rank (median of 5): {fast:.3f} s')
    print(f'  naive loop: {naive:.2f} s (timed on {naive_queries} queries, '
          f'{naive_subset:.2f} s, scaled x{len(q_pids) / naive_queries:.1f}); '
          f'same mAP on those queries: {agree}')
    print(f'  speed-up: {naive / fast:.0f}x')


def rerank_inputs(num_query, num_gallery, seed=0):
  """float32 (qg, qq, gg) distances of clustered features (Market-like:
  about 13 images per identity)."""
  rng = np.random.default_rng(seed)
  num_ids = max(1, (num_query + num_gallery) // 13)
  features, _ = clustered_features(num_query + num_gallery, num_ids, 0.7, rng)
  query, gallery = features[:num_query], features[num_query:]
  return euclidean(query, gallery), euclidean(query, query), euclidean(
      gallery, gallery)


def measure_in_this_process(method, num_query, num_gallery, output):
  """Child process: one re-ranking run; prints its figures as JSON."""
  inputs = rerank_inputs(num_query, num_gallery)
  function = re_rank if method == 'sparse' else dense_re_rank
  before = bench_memory.reset_peak()
  start = time.perf_counter()
  result = function(*inputs)
  seconds = time.perf_counter() - start
  _, peak = bench_memory.memory_status()
  if output:
    np.save(output, result)
  print(json.dumps(dict(seconds=seconds, before=before, peak=peak)))


def measure(method, num_query, num_gallery, output=None):
  command = [sys.executable, os.path.abspath(__file__), '--measure', method,
             '--queries', str(num_query), '--gallery', str(num_gallery)]
  if output:
    command += ['--output', output]
  completed = subprocess.run(command, check=True, capture_output=True,
                             text=True)
  return json.loads(completed.stdout.strip().splitlines()[-1])


def describe(figures):
  gb = 2.0**30
  return (f'{figures["seconds"]:.2f} s, peak {figures["peak"] / gb:.2f} GB, '
          f'extra {(figures["peak"] - figures["before"]) / gb:.2f} GB')


def benchmark_rerank(compare_query, compare_gallery):
  """Prints re_rank's time and memory, against the dense transcription."""
  print(f'== re_rank (k1=20, k2=6, lambda=0.3) vs dense transcription, '
        f'{compare_query} queries + {compare_gallery} gallery ==')
  with tempfile.TemporaryDirectory() as folder:
    outputs = [os.path.join(folder, f'{name}.npy')
               for name in ('sparse', 'dense')]
    sparse = measure('sparse', compare_query, compare_gallery, outputs[0])
    dense = measure('dense', compare_query, compare_gallery, outputs[1])
    difference = np.abs(np.load(outputs[0]) - np.load(outputs[1])).max()
  print(f'  re_rank:             {describe(sparse)}')
  print(f'  dense transcription: {describe(dense)}')
  extra_ratio = (dense['peak'] - dense['before']) / max(
      sparse['peak'] - sparse['before'], 1)
  print(f'  speed-up {dense["seconds"] / sparse["seconds"]:.1f}x, extra '
        f'memory ratio {extra_ratio:.1f}x, largest difference '
        f'{difference:.1e}')
  print('== re_rank at Market-1501 scale, 3368 queries + 15913 gallery ==')
  full = measure('sparse', 3368, 15913)
  print(f'  re_rank: {describe(full)} (inputs alone: '
        f'{4 * (3368 + 15913)**2 / 2.0**30:.2f} GB of float32)')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--naive_queries', type=int, default=300,
                      help='queries the naive loop is timed on')
  parser.add_argument('--compare_queries', type=int, default=1000)
  parser.add_argument('--compare_gallery', type=int, default=5000)
  parser.add_argument('--measure', choices=('sparse', 'dense'),
                      help=argparse.SUPPRESS)
  parser.add_argument('--queries', type=int, help=argparse.SUPPRESS)
  parser.add_argument('--gallery', type=int, help=argparse.SUPPRESS)
  parser.add_argument('--output', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.measure:
    measure_in_this_process(args.measure, args.queries, args.gallery,
                            args.output)
    return
  print(f'{os.cpu_count()} CPU cores; numpy {np.__version__}')
  benchmark_evaluator(args.naive_queries)
  benchmark_rerank(args.compare_queries, args.compare_gallery)


if __name__ == '__main__':
  main()
