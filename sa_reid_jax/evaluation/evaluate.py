"""Evaluating a model on a dataset's query and gallery splits.

Kept out of the package's ``__init__`` because it reads images with
TensorFlow (tf.data), which accelerator-only code must not need to import.
"""

import dataclasses
import json
import os
from typing import Any, Optional, Sequence

import ml_collections
import numpy as np

from sa_reid_jax.data import pipeline
from sa_reid_jax.datasets import tables
from sa_reid_jax.evaluation.distances import pairwise_distances
from sa_reid_jax.evaluation.features import extract_features
from sa_reid_jax.evaluation.metrics import RankResult, evaluate_rank
from sa_reid_jax.evaluation.metrics import valid_queries
from sa_reid_jax.evaluation.rerank import re_rank

REPORTED_RANKS = (1, 5, 10)


def load_splits(dataset: ml_collections.ConfigDict,
                splits=('query', 'gallery')) -> list[tables.ExampleTable]:
  """The splits named by a config's ``dataset`` block.

  Args:
    dataset: ``folder`` (a Market-1501-layout folder, read directly, every
      image of the splits checked readable first) or, when it is empty,
      ``name`` and ``data_dir`` of a built TFDS dataset.
    splits: which splits.

  Returns:
    the splits' tables, in `splits` order.

  Raises:
    LayoutError: for a folder not in Market layout, or listing every
      unreadable image of the splits.
  """
  if dataset.folder:
    folder_tables = tables.from_folders(dataset.folder, splits)
    return [folder_tables[split] for split in splits]
  return [tables.from_tfds(dataset.name, split,
                           data_dir=dataset.data_dir or None)
          for split in splits]


def check_evaluation_splits(query: tables.ExampleTable,
                            gallery: tables.ExampleTable,
                            dataset: ml_collections.ConfigDict) -> None:
  """Refuses query and gallery splits the evaluation protocol cannot score.

  The Market-1501 protocol removes each query's same-camera gallery images
  of its person, and skips a query with no true match left; with none
  left, every evaluation would fail, after training or extraction.

  Args:
    query: the query split's table.
    gallery: the gallery split's table.
    dataset: the config's ``dataset`` block, named in the error.

  Raises:
    ValueError: naming config.dataset.folder and the folder (or
      config.dataset.name) when no query has a gallery match from another
      camera, with the cameras each split holds.
  """
  valid = valid_queries(query.person_ids, gallery.person_ids,
                                query.camera_ids, gallery.camera_ids)
  if valid.any():
    return
  source = (f'config.dataset.folder: {dataset.folder}' if dataset.folder
            else f'config.dataset.name: {dataset.name}')

  def cameras(table):
    # File names number cameras from 1 (c1); the tables from 0.
    return ', '.join(f'c{c + 1}' for c in np.unique(table.camera_ids))

  raise ValueError(
      f'{source}: no query has a gallery match from another camera, so the '
      'evaluation (which skips same-person same-camera gallery images, as '
      'the Market-1501 protocol does) could score none of its '
      f'{len(query)} queries; query cameras: {cameras(query)}, gallery '
      f'cameras: {cameras(gallery)}. Each query person needs gallery images '
      'from a camera other than the query\'s (the _c<camera> in the file '
      'names)')


def describe(model, variables, table: tables.ExampleTable,
             config: ml_collections.ConfigDict, flip: bool,
             description: str) -> np.ndarray:
  """Descriptors (N, P, D) of every image of `table`, in table order."""
  batches = pipeline.eval_dataset(
      table, batch_size=config.eval.batch_size,
      image_size=tuple(config.image_size))
  return extract_features(model, variables, batches.as_numpy_iterator(),
                          flip=flip, total=len(table),
                          description=description)


def summarize(result: RankResult) -> dict[str, float]:
  """Rank-1/5/10, mAP and mINP of a result as plain floats."""
  summary = {f'rank{k}': float(result.cmc[k - 1]) for k in REPORTED_RANKS
             if k <= len(result.cmc)}
  summary.update(mAP=float(result.mAP), mINP=float(result.mINP),
                 num_valid_queries=int(result.num_valid_queries))
  return summary


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """An evaluation's metrics and what they were computed from (for reports).

  Attributes:
    metrics: what `evaluate_model` returns (and metrics.json holds).
    query: the query split.
    gallery: the gallery split.
    distances: float32 (num_query, num_gallery) query-gallery distances.
    plain: the ranking metrics of `distances`, per query included.
    reranked: those of the re-ranked distances, or None without re-ranking.
  """
  metrics: dict[str, Any]
  query: tables.ExampleTable
  gallery: tables.ExampleTable
  distances: np.ndarray
  plain: RankResult
  reranked: Optional[RankResult]


def evaluate_model(model, variables, config: ml_collections.ConfigDict,
                   flip: Optional[bool] = None,
                   rerank: Optional[bool] = None) -> dict[str, Any]:
  """Market-1501-protocol metrics of a model on the configured dataset.

  The metrics of `run_evaluation` (same arguments and result layout).
  """
  return run_evaluation(model, variables, config, flip, rerank).metrics


def run_evaluation(model, variables, config: ml_collections.ConfigDict,
                   flip: Optional[bool] = None,
                   rerank: Optional[bool] = None) -> Evaluation:
  """Market-1501-protocol evaluation of a model on the configured dataset.

  Args:
    model: a network following the `SANet` output contract.
    variables: its variables.
    config: with ``dataset``, ``image_size`` and ``eval`` blocks (see
      ``configs/``).
    flip: flip test-time augmentation (default ``config.eval.flip``).
    rerank: also report k-reciprocal re-ranked metrics (default
      ``config.eval.rerank``).

  Returns:
    an `Evaluation` whose ``metrics`` are ``{'plain': {...}}`` and, with
    re-ranking, ``{'reranked': {...}}`` (each holding rank1/rank5/rank10,
    mAP, mINP and num_valid_queries) and ``{'settings': {...}}``.
  """
  flip = config.eval.flip if flip is None else flip
  rerank = config.eval.rerank if rerank is None else rerank
  query, gallery = load_splits(config.dataset)
  check_evaluation_splits(query, gallery, config.dataset)
  query_features = describe(model, variables, query, config, flip, 'query')
  gallery_features = describe(model, variables, gallery, config, flip,
                              'gallery')
  metric = config.eval.metric
  q_g = pairwise_distances(query_features, gallery_features, metric)
  ids = (query.person_ids, gallery.person_ids, query.camera_ids,
         gallery.camera_ids)
  plain = evaluate_rank(q_g, *ids, max_rank=config.eval.max_rank)
  metrics = {'plain': summarize(plain)}
  reranked_result = None
  if rerank:
    q_q = pairwise_distances(query_features, query_features, metric)
    g_g = pairwise_distances(gallery_features, gallery_features, metric)
    reranked = re_rank(q_g, q_q, g_g, k1=config.eval.k1, k2=config.eval.k2,
                       lambda_value=config.eval.lambda_value)
    reranked_result = evaluate_rank(reranked, *ids,
                                    max_rank=config.eval.max_rank)
    metrics['reranked'] = summarize(reranked_result)
  metrics['settings'] = {'flip': bool(flip), 'metric': metric,
                         'image_size': [int(v) for v in config.image_size],
                         'num_query': len(query), 'num_gallery': len(gallery)}
  if rerank:
    metrics['settings'].update(k1=config.eval.k1, k2=config.eval.k2,
                               lambda_value=config.eval.lambda_value)
  return Evaluation(metrics=metrics, query=query, gallery=gallery,
                    distances=np.asarray(q_g, np.float32), plain=plain,
                    reranked=reranked_result)


def record_source(metrics: dict[str, Any], checkpoint: str,
                  trained_steps: Optional[int],
                  trained_image_size: Optional[Sequence[int]]
                  ) -> dict[str, Any]:
  """Adds what an evaluation came from to its ``metrics['settings']``.

  Beside ``image_size`` (the size evaluated at), the settings get
  ``checkpoint`` (the model directory, absolute), ``trained_steps``,
  ``trained_image_size`` (None where the model directory does not record
  them, e.g. converted weights) and ``image_size_matches_training`` (False
  when evaluated at another size than the model was trained at, which scores
  lower; None when the trained size is unknown).

  Returns:
    `metrics` (changed in place).
  """
  settings = metrics.setdefault('settings', {})
  trained = ([int(v) for v in trained_image_size] if trained_image_size
             else None)
  settings.update(
      checkpoint=os.path.abspath(checkpoint),
      trained_steps=None if trained_steps is None else int(trained_steps),
      trained_image_size=trained,
      image_size_matches_training=(
          None if trained is None or 'image_size' not in settings else
          list(settings['image_size']) == trained))
  return metrics


def format_metrics(metrics: dict[str, Any]) -> str:
  """One line per setting: rank-1/5/10, mAP and mINP in percent."""
  lines = []
  for setting in ('plain', 'reranked'):
    if setting in metrics:
      m = metrics[setting]
      ranks = '  '.join(f'rank-{k} {100 * m[f"rank{k}"]:.2f}'
                        for k in REPORTED_RANKS if f'rank{k}' in m)
      lines.append(f'{setting:<9} {ranks}  mAP {100 * m["mAP"]:.2f}  '
                   f'mINP {100 * m["mINP"]:.2f}  '
                   f'({m["num_valid_queries"]} queries)')
  return '\n'.join(lines)


def write_metrics(metrics: dict[str, Any], path: str) -> None:
  """Writes `metrics` as JSON, creating the parent directory."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(metrics, f, indent=2)
