"""Evaluation and re-ranking at MSMT17 scale: time and memory, streaming vs dense.

Run from the repository root:

  .venv/bin/python benchmarks/bench_eval_scale.py            # MSMT17-sized
  .venv/bin/python benchmarks/bench_eval_scale.py --tiny     # a smoke run

Descriptors are synthetic but structured like a re-id model's: one centre per
identity, each image its identity's centre plus noise, L2-normalised per part
of 2,048 values (2,048-d: one part, a BNNeck/RGA/CASN descriptor; 12,288-d:
six parts, SA's). Ids and cameras follow MSMT17's test split (11,659 queries,
82,161 gallery images, 3,060 identities, 15 cameras).

Each measurement runs in a fresh subprocess that builds the descriptors,
resets its peak resident set size (writing 5 to /proc/self/clear_refs), runs
the evaluation and reads the peak (VmHWM). "extra" is that peak minus the
resident size with the descriptors built: the evaluation's own memory.

Methods:
- ``streaming``: today's `evaluate.run_evaluation` path: `DistanceRows`
  into `evaluate_rank`, and `re_rank_descriptors` (no N x N matrix).
- ``dense``: the dense path it replaced: the (Q, G) matrix of
  `pairwise_distances`, and for re-ranking also (Q, Q) and (G, G) into
  `re_rank`. Run only where its inputs fit in memory (`--dense_limit_gb`).
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPOSITORY)

# pylint: disable=g-import-not-at-top,wrong-import-position
import bench_memory
from sa_reid_jax.evaluation.distances import aligned_empty

# MSMT17's test split (Wei et al., CVPR 2018, Table 1 and the release).
MSMT17 = dict(num_query=11659, num_gallery=82161, num_ids=3060, num_cameras=15)
# A smoke run's sizes.
TINY = dict(num_query=120, num_gallery=600, num_ids=40, num_cameras=3)
PART_SIZE = 2048
# Noise around each identity's centre, per value, against unit-variance
# centres. In 2,048 dimensions distances concentrate, so the noise must be a
# few times the centres' spread before identities overlap: 3.5 gives a
# plain mAP of the order of a trained model's on MSMT17 (tens of percent);
# 3 gives ~94% and 4 ~38% on 1,200 x 8,000 images of 300 identities.
NOISE = 3.5


def descriptors(num_query, num_gallery, num_ids, num_cameras, size, seed=0,
                chunk=4096):
  """(query, gallery, ids): float32 descriptors built chunk by chunk."""
  rng = np.random.default_rng(seed)
  parts = max(1, size // PART_SIZE)
  part = size // parts
  centres = rng.standard_normal((num_ids, size)).astype(np.float32)

  def images(num):
    pids = rng.integers(0, num_ids, num)
    # Aligned, as `extract_features` returns them, so that the device shares
    # them on the CPU (`distances.device_descriptors`).
    out = aligned_empty((num, size), np.float32)
    for start in range(0, num, chunk):
      rows = slice(start, start + chunk)
      x = centres[pids[rows]] + NOISE * rng.standard_normal(
          (len(pids[rows]), size), dtype=np.float32)
      x = x.reshape(len(x), parts, part)
      x /= np.linalg.norm(x, axis=2, keepdims=True)
      out[rows] = x.reshape(len(x), size)
    return out, pids + 1, rng.integers(0, num_cameras, num)

  query, q_pids, q_cams = images(num_query)
  gallery, g_pids, g_cams = images(num_gallery)
  return query, gallery, (q_pids, g_pids, q_cams, g_cams)


def run_one(method, rerank, sizes, size):
  """Child process: one evaluation; returns its figures."""
  # pylint: disable=g-import-not-at-top
  from sa_reid_jax.evaluation.distances import DistanceRows
  from sa_reid_jax.evaluation.distances import pairwise_distances
  from sa_reid_jax.evaluation.metrics import evaluate_rank
  from sa_reid_jax.evaluation.rerank import re_rank
  from sa_reid_jax.evaluation.rerank import re_rank_descriptors
  # pylint: enable=g-import-not-at-top
  query, gallery, ids = descriptors(size=size, **sizes)
  before = bench_memory.reset_peak()
  start = time.perf_counter()
  if method == 'streaming':
    q_g = DistanceRows(query, gallery)
    plain = evaluate_rank(q_g, *ids)
    plain_seconds = time.perf_counter() - start
    reranked = (evaluate_rank(re_rank_descriptors(query, gallery,
                                                  q_g_dist=q_g), *ids)
                if rerank else None)
  else:
    q_g = pairwise_distances(query, gallery)
    plain = evaluate_rank(q_g, *ids)
    plain_seconds = time.perf_counter() - start
    reranked = (evaluate_rank(re_rank(q_g, pairwise_distances(query, query),
                                      pairwise_distances(gallery, gallery)),
                              *ids) if rerank else None)
  seconds = time.perf_counter() - start
  _, peak = bench_memory.memory_status()
  return dict(method=method, rerank=rerank, size=size, seconds=seconds,
              plain_seconds=plain_seconds, before=before, peak=peak,
              mAP=plain.mAP, rank1=float(plain.cmc[0]),
              reranked_mAP=None if reranked is None else reranked.mAP)


def measure(method, rerank, sizes, size):
  command = [sys.executable, os.path.abspath(__file__), '--child',
             json.dumps(dict(method=method, rerank=rerank, sizes=sizes,
                             size=size))]
  completed = subprocess.run(command, capture_output=True, text=True,
                             check=False)
  if completed.returncode:
    raise RuntimeError(f'{method} evaluation failed:\n{completed.stderr}')
  return json.loads(completed.stdout.strip().splitlines()[-1])


def dense_bytes(sizes, rerank):
  """float32 bytes of the dense path's distance matrices."""
  q, g = sizes['num_query'], sizes['num_gallery']
  return 4 * (q * g + ((q * q + g * g + q * g) if rerank else 0))


def describe(figures):
  gb = 2.0**30
  text = (f'{figures["seconds"]:8.1f} s  peak {figures["peak"] / gb:6.2f} GB  '
          f'extra {(figures["peak"] - figures["before"]) / gb:6.2f} GB  '
          f'rank-1 {100 * figures["rank1"]:.1f}%  mAP '
          f'{100 * figures["mAP"]:.1f}%')
  if figures['reranked_mAP'] is not None:
    text += (f'  re-ranked mAP {100 * figures["reranked_mAP"]:.1f}% '
             f'(plain part {figures["plain_seconds"]:.1f} s)')
  return text


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--tiny', action='store_true',
                      help='small sizes, for a smoke run')
  parser.add_argument('--sizes', default='2048,12288',
                      help='descriptor sizes, comma-separated')
  parser.add_argument('--rerank_sizes', default='2048',
                      help='sizes also re-ranked (12,288-d re-ranking costs '
                      'six times the 2,048-d matrix products)')
  parser.add_argument('--dense_limit_gb', type=float, default=12.0,
                      help='run the dense path only where its matrices fit')
  parser.add_argument('--json', action='store_true',
                      help='end with one JSON line of every figure')
  parser.add_argument('--child', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(run_one(**json.loads(args.child))))
    return
  sizes = TINY if args.tiny else MSMT17
  print(f'{os.cpu_count()} CPU cores; {sizes["num_query"]} queries, '
        f'{sizes["num_gallery"]} gallery images, {sizes["num_ids"]} '
        'identities')
  try:
    dims = [int(v) for v in args.sizes.split(',')]
    rerank_dims = [int(v) for v in args.rerank_sizes.split(',') if v]
  except ValueError:
    parser.error(f'--sizes/--rerank_sizes: integers expected, got '
                 f'{args.sizes!r}/{args.rerank_sizes!r}')
  results = []
  for size in dims:
    for rerank in ((False, True) if size in rerank_dims else (False,)):
      for method in ('streaming', 'dense'):
        needed = dense_bytes(sizes, rerank) / 2.0**30
        label = f'{size:6d}-d {"re-ranked" if rerank else "plain":9s} {method:9s}'
        if method == 'dense' and needed > args.dense_limit_gb:
          print(f'{label} not run: its distance matrices alone need '
                f'{needed:.1f} GB (> --dense_limit_gb {args.dense_limit_gb})')
          continue
        figures = measure(method, rerank, sizes, size)
        results.append(figures)
        print(f'{label} {describe(figures)}', flush=True)
  if args.json:
    print(json.dumps(results))


if __name__ == '__main__':
  main()
