"""Evaluating a model on a dataset's query and gallery splits.

Kept out of the package's ``__init__`` because it reads images with
TensorFlow (tf.data), which accelerator-only code must not need to import.
"""

import dataclasses
import json
import os
from typing import Any, Callable, Optional, Sequence

import ml_collections
import numpy as np

from sa_reid_jax.data import pipeline
from sa_reid_jax.datasets import sources
from sa_reid_jax.datasets import tables
from sa_reid_jax.evaluation.distances import DistanceRows
from sa_reid_jax.evaluation.features import extract_features
from sa_reid_jax.evaluation.metrics import RankResult, evaluate_rank
from sa_reid_jax.evaluation.metrics import valid_queries
from sa_reid_jax.evaluation.rerank import re_rank_descriptors
from sa_reid_jax.evaluation import verification

REPORTED_RANKS = (1, 5, 10)


def load_splits(dataset: ml_collections.ConfigDict,
                splits=('query', 'gallery')) -> list[tables.ExampleTable]:
  """The splits named by a config's ``dataset`` block.

  Args:
    dataset: a ``list`` file, a ``folder`` in its ``layout``, or ``name``
      and ``data_dir`` of a built TFDS dataset (`sources.read_splits`);
      every image of the splits checked readable first.
    splits: which splits.

  Returns:
    the splits' tables, in `splits` order.

  Raises:
    LayoutError: starting with the config key, for a source that cannot
      be read (every fault listed), or listing every unreadable image of a
      folder's splits.
    ValueError: for a bad block or a TFDS dataset that is not built.
  """
  read = sources.read_splits(dataset, splits)
  return [read[split] for split in splits]


def check_evaluation_splits(query: tables.ExampleTable,
                            gallery: tables.ExampleTable,
                            dataset: ml_collections.ConfigDict,
                            log: Callable[[str], None] = print) -> None:
  """Refuses query and gallery splits the evaluation protocol cannot score.

  The Market-1501 protocol removes each query's same-camera gallery images
  of its person, and skips a query with no true match left; with none
  left, every evaluation would fail, after training or extraction. Where
  cameras are unknown (`image_records.UNKNOWN_CAMERA`: a list file without
  a camera column, person folders without camera folders) nothing is
  removed for sharing a camera, and a line to `log` says so.

  Args:
    query: the query split's table.
    gallery: the gallery split's table.
    dataset: the config's ``dataset`` block, named in the error.
    log: where the line on unknown cameras goes.

  Raises:
    ValueError: naming the source's config key and value
      (`sources.describe`) when no query has a true match in the gallery,
      with the cameras each split holds where they are known.
  """
  known = sources.cameras_known(query, gallery)
  if not known:
    # A target (sources.block_from_spec) is named: several are read.
    named = f'{dataset.source}: ' if dataset.get('source', '') else ''
    log(f'{named}cameras unknown: no same-camera removal (every gallery '
        "image of a query's person is a true match; junk still removed)")
  valid = valid_queries(query.person_ids, gallery.person_ids,
                        query.camera_ids, gallery.camera_ids)
  if valid.any():
    return
  source = sources.describe(dataset)
  if not known:
    raise ValueError(
        f'{source}: no query has a gallery image of its person (cameras '
        f'unknown, so none is removed), so the evaluation could score none '
        f'of its {len(query)} queries. Each query person needs gallery '
        'images of the same person id')

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
      'names, the camera_id of a list file, the camera folders of person '
      'folders)')


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
    distances: float32 (num_query, num_gallery) query-gallery distances, as
      a `DistanceRows` (read by rows; ``np.asarray`` builds it whole).
    plain: the ranking metrics of `distances`, per query included.
    reranked: those of the re-ranked distances, or None without re-ranking.
  """
  metrics: dict[str, Any]
  query: tables.ExampleTable
  gallery: tables.ExampleTable
  distances: DistanceRows
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
                   rerank: Optional[bool] = None,
                   dataset: Optional[ml_collections.ConfigDict] = None
                   ) -> Evaluation:
  """Market-1501-protocol evaluation of a model on the configured dataset.

  Args:
    model: a network following the `SANet` output contract.
    variables: its variables.
    config: with ``dataset``, ``image_size`` and ``eval`` blocks (see
      ``configs/``).
    flip: flip test-time augmentation (default ``config.eval.flip``).
    rerank: also report k-reciprocal re-ranked metrics (default
      ``config.eval.rerank``).
    dataset: the dataset block evaluated on (default ``config.dataset``;
      an evaluation target's, `validation.extra_target_blocks`).

  Returns:
    an `Evaluation` whose ``metrics`` are ``{'plain': {...}}`` and, with
    re-ranking, ``{'reranked': {...}}`` (each holding rank1/rank5/rank10,
    mAP, mINP and num_valid_queries), ``{'verification': {...}}`` (TPR and
    distance threshold at each ``config.eval.verification_fprs``, AUC and
    the ROC curve of the plain distances:
    `verification.summarize_verification`) and ``{'settings': {...}}``.
  """
  flip = config.eval.flip if flip is None else flip
  rerank = config.eval.rerank if rerank is None else rerank
  dataset = config.dataset if dataset is None else dataset
  query, gallery = load_splits(dataset)
  check_evaluation_splits(query, gallery, dataset)
  query_features = describe(model, variables, query, config, flip, 'query')
  gallery_features = describe(model, variables, gallery, config, flip,
                              'gallery')
  metric = config.eval.metric
  # Rows computed on the device as they are read: MSMT17's (Q, G) matrix
  # (3.6 GiB) is kept on the host only below distances.HOST_CACHE_BYTES.
  q_g = DistanceRows(query_features, gallery_features, metric)
  ids = (query.person_ids, gallery.person_ids, query.camera_ids,
         gallery.camera_ids)
  plain = evaluate_rank(q_g, *ids, max_rank=config.eval.max_rank)
  metrics = {'plain': summarize(plain)}
  # On the plain distances: re-ranked values are no thresholdable distance.
  metrics['verification'] = verification.summarize_verification(
      verification.evaluate_verification(
          q_g, *ids, fprs=config.eval.verification_fprs))
  reranked_result = None
  if rerank:
    # No g_g (MSMT17: 25 GiB): neighbours and the few pair distances
    # re-ranking needs come from the descriptors, block by block.
    reranked = re_rank_descriptors(
        query_features, gallery_features, metric, q_g_dist=q_g,
        k1=config.eval.k1, k2=config.eval.k2,
        lambda_value=config.eval.lambda_value)
    reranked_result = evaluate_rank(reranked, *ids,
                                    max_rank=config.eval.max_rank)
    metrics['reranked'] = summarize(reranked_result)
  metrics['settings'] = {'flip': bool(flip), 'metric': metric,
                         'image_size': [int(v) for v in config.image_size],
                         'num_query': len(query), 'num_gallery': len(gallery)}
  metrics['settings']['same_camera_removal'] = sources.cameras_known(
      query, gallery)
  metrics['settings']['dataset'] = sources.spec_of(dataset)
  if rerank:
    metrics['settings'].update(k1=config.eval.k1, k2=config.eval.k2,
                               lambda_value=config.eval.lambda_value)
  return Evaluation(metrics=metrics, query=query, gallery=gallery,
                    distances=q_g, plain=plain,
                    reranked=reranked_result)


def format_target(spec: str, metrics: dict[str, Any]) -> str:
  """`format_metrics` of an evaluation target, under a line naming it."""
  return f'target {spec}:\n{format_metrics(metrics)}'


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
  """One line per setting: rank-1/5/10, mAP and mINP in percent; then
  the verification TPRs at fixed FPR, with their distance thresholds."""
  lines = []
  for setting in ('plain', 'reranked'):
    if setting in metrics:
      m = metrics[setting]
      ranks = '  '.join(f'rank-{k} {100 * m[f"rank{k}"]:.2f}'
                        for k in REPORTED_RANKS if f'rank{k}' in m)
      lines.append(f'{setting:<9} {ranks}  mAP {100 * m["mAP"]:.2f}  '
                   f'mINP {100 * m["mINP"]:.2f}  '
                   f'({m["num_valid_queries"]} queries)')
  if 'verification' in metrics:
    lines.append(verification.format_verification(metrics['verification']))
  return '\n'.join(lines)


def write_metrics(metrics: dict[str, Any], path: str) -> None:
  """Writes `metrics` as JSON, creating the parent directory."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(metrics, f, indent=2)
