"""Loss terms by name, each with a weight in the config (`config.loss.terms`).

A term is switched on by a block in ``config.loss.terms`` with a non-zero
weight (defaults and their sources in `training/defaults.py`, the CASN
terms' in `training/casn_defaults.py`); with weight 0 it is not even
computed. A term reads the network's output dict (for the CASN terms, what
the ``casn`` task adds to it: Grad-CAM maps, the erased images' logits, pair
logits) and the batch, and returns a scalar and its metrics; terms that
compare examples with each other (triplet, verification, consistency)
receive the device axis and see the whole global batch.

Each term is one `Term` record in `TERMS` (its function, its settings and
output checks, the task it needs); `active_terms`, `check_settings`,
`check_outputs` and `total_loss` read only the records.
"""

import dataclasses
import math
from typing import Any, Callable, Optional

import jax
import ml_collections

from sa_reid_jax.data import samplers
from sa_reid_jax.losses import attention_mining
from sa_reid_jax.losses import classification
from sa_reid_jax.losses import siamese
from sa_reid_jax.losses import triplet
from sa_reid_jax.losses.classification import WEIGHTINGS
from sa_reid_jax.losses.classification import accuracy
from sa_reid_jax.losses.classification import combine_heads
from sa_reid_jax.losses.classification import cross_entropy_terms
from sa_reid_jax.losses.triplet import batch_hard_triplet

TermFn = Callable[[dict[str, Any], dict[str, jax.Array],
                   ml_collections.ConfigDict, Optional[str]],
                  tuple[jax.Array, dict[str, jax.Array]]]
_KEY = 'config.loss.terms.'


def _require(ok: bool, name: str, value: Any, allowed: str) -> None:
  """Refuses a setting, naming its key: ``config.loss.terms.<name>``."""
  if not ok:
    raise ValueError(f'{_KEY}{name} must be {allowed}, got {value!r}')


def _no_check(settings, config):
  del settings, config


def _no_output_check(settings, outputs):
  del settings, outputs


@dataclasses.dataclass(frozen=True)
class Term:
  """One loss term: how it is computed and what it needs (one record each).

  Attributes:
    fn: (outputs, batch, settings, axis_name) -> (value, metrics); settings
      is the term's block of ``config.loss.terms``.
    output: the network output it needs, and what the network lacks
      without it (for the error); None: no such requirement.
    check_settings: (settings, config) -> None; refuses out-of-range
      settings at start-up, naming the config key.
    check_outputs: (settings, outputs) -> None; refuses settings the
      network's outputs cannot feed, naming the config key.
    task: the task that computes its inputs (``config.task``); None: any.
    needs_pairs: needs positive (and negative) pairs in every batch.
  """
  fn: TermFn
  output: Optional[tuple[str, str]] = None
  check_settings: Callable[[ml_collections.ConfigDict,
                            ml_collections.ConfigDict], None] = _no_check
  check_outputs: Callable[[ml_collections.ConfigDict, dict[str, Any]],
                          None] = _no_output_check
  task: Optional[str] = None
  needs_pairs: bool = False


def _cross_entropy(outputs, batch, settings, axis_name):
  del axis_name  # a mean over an equal share of the batch per device
  terms = cross_entropy_terms(outputs, batch['labels'],
                              settings.label_smoothing)
  value = combine_heads(terms, settings.weighting, settings.part_weight)
  return value, dict(terms, accuracy=accuracy(outputs['global_logits'],
                                              batch['labels']))


def _check_cross_entropy(settings, config):
  del config
  _require(settings.weighting in WEIGHTINGS, 'cross_entropy.weighting',
           settings.weighting, f'one of {WEIGHTINGS}')
  _require(0 <= settings.label_smoothing < 1, 'cross_entropy.label_smoothing',
           settings.label_smoothing, 'in [0, 1)')


def _triplet(outputs, batch, settings, axis_name):
  return batch_hard_triplet(
      outputs['embeddings'][settings.embedding], batch['labels'],
      margin=settings.margin, soft_margin=settings.soft_margin,
      axis_name=axis_name)


def _check_triplet(settings, config):
  del config
  _require(settings.margin >= 0, 'triplet.margin', settings.margin, '>= 0')


def _check_triplet_outputs(settings, outputs):
  embeddings = outputs.get('embeddings', {})
  if settings.embedding not in embeddings:
    raise ValueError(
        f'{_KEY}triplet.embedding={settings.embedding!r} is not an embedding'
        f' of this network (it has {sorted(embeddings) or "none"}); set '
        f'{_KEY}triplet.weight=0 or pick one of those')


def _attention_mining(outputs, batch, settings, axis_name):
  del axis_name  # a mean over an equal share of the batch
  return attention_mining.attention_mining_loss(outputs['erased_logits'],
                                       batch['labels'], settings.score), {}


def _check_attention_mining(settings, config):
  del config
  _require(math.isfinite(settings.alpha) and settings.alpha > 0,
           'attention_mining.alpha', settings.alpha, 'finite and > 0')
  _require(0 <= settings.beta <= 1, 'attention_mining.beta', settings.beta,
           'in [0, 1] (the maps are normalised to [0, 1])')
  _require(settings.score in attention_mining.MINING_SCORES, 'attention_mining.score',
           settings.score, f'one of {attention_mining.MINING_SCORES}')


def _verification(outputs, batch, settings, axis_name):
  del settings
  return siamese.verification_loss(outputs['pair_logits'], batch['labels'],
                                   axis_name)


# The maps the consistency term compares (config.loss.terms.consistency
# .maps) -> the output the 'casn' task puts them under: 'siamese', the
# Grad-CAM of the siamese importance score (the source; seed 004, section
# 2.2); 'class', the identity-class Grad-CAM maps attention mining erases.
# Why each exists: training/casn_defaults.py.
CONSISTENCY_MAPS = {'siamese': 'siamese_attention_maps',
                    'class': 'attention_maps'}


def consistency_maps(config: ml_collections.ConfigDict) -> str:
  """The output the consistency term reads (`CONSISTENCY_MAPS`).

  Raises:
    ValueError: naming config.loss.terms.consistency.maps, for a name
      (or a missing key) that is not one of `CONSISTENCY_MAPS`.
  """
  maps = config.loss.terms.consistency.get('maps')
  if maps not in tuple(CONSISTENCY_MAPS):
    raise ValueError('config.loss.terms.consistency.maps must be one of '
                     f'{tuple(CONSISTENCY_MAPS)}, got {maps!r}')
  return CONSISTENCY_MAPS[maps]


def _consistency(outputs, batch, settings, axis_name):
  return siamese.attention_consistency_loss(
      outputs[CONSISTENCY_MAPS[settings.maps]], batch['labels'],
      settings.threshold, axis_name)


def _check_consistency(settings, config):
  _require(0 <= settings.threshold <= 1, 'consistency.threshold',
           settings.threshold, 'in [0, 1] (the maps are normalised to [0, 1])')
  consistency_maps(config)
  casn = config.get('casn')
  if casn is not None and casn.gradcam_gradient == 'none':
    raise ValueError(
        'config.loss.terms.consistency: with config.casn.gradcam_gradient='
        "'none' no gradient reaches the maps, so this term could not "
        "train anything; set its weight to 0 or use 'feature_map'")


# The CASN terms read what the 'casn' task computes besides the network's
# outputs (Grad-CAM maps, the erased images' logits, the siamese head's
# pair logits), so they need that task and a network with a siamese head.
_SIAMESE_HEAD = ('verification', 'siamese head (a casn family network has)')

TERMS: dict[str, Term] = {
    'cross_entropy': Term(
        _cross_entropy, output=('global_logits', 'classifier (global_logits)'),
        check_settings=_check_cross_entropy),
    'triplet': Term(_triplet, check_settings=_check_triplet,
                    check_outputs=_check_triplet_outputs),
    'attention_mining': Term(_attention_mining, output=_SIAMESE_HEAD,
                             check_settings=_check_attention_mining,
                             task='casn'),
    'verification': Term(_verification, output=_SIAMESE_HEAD, task='casn',
                         needs_pairs=True),
    'consistency': Term(_consistency, output=_SIAMESE_HEAD,
                        check_settings=_check_consistency, task='casn',
                        needs_pairs=True),
}
# The terms the 'casn' task's inputs feed.
CASN_TERMS = tuple(name for name, term in TERMS.items() if term.task == 'casn')


def active_terms(config: ml_collections.ConfigDict) -> list[str]:
  """Names of the terms of ``config.loss.terms`` with a non-zero weight.

  Raises:
    ValueError: for an unknown term name, a negative weight, or no term.
  """
  terms = config.loss.terms
  unknown = sorted(set(terms) - set(TERMS))
  if unknown:
    raise ValueError(f'config.loss.terms: unknown term(s) {unknown}; the '
                     f'terms are {sorted(TERMS)}')
  for name in terms:
    weight = terms[name].weight
    if not (math.isfinite(weight) and weight >= 0):
      raise ValueError(f'config.loss.terms.{name}.weight must be finite and '
                       f'>= 0, got {weight}')
  active = [name for name in terms if terms[name].weight]
  if not active:
    raise ValueError('config.loss.terms: every weight is 0; nothing to train')
  return active


def check_settings(config: ml_collections.ConfigDict) -> None:
  """Refuses out-of-range settings of the active terms (at start-up, not in
  the first traced step).

  Raises:
    ValueError: naming the config key.
  """
  active = active_terms(config)
  for name, term in TERMS.items():
    if name in active:
      term.check_settings(config.loss.terms[name], config)
  pairs = [name for name, term in TERMS.items()
           if term.needs_pairs and name in active]
  if pairs:
    # Without same-identity pairs in a batch these terms lose their
    # positive half (verification learns only "different") or vanish
    # (consistency), silently: refuse such a sampler.
    data = config.data
    if (data.sampler not in samplers.P_K_SAMPLERS or
        data.images_per_identity < 2 or
        config.batch_size < 2 * data.images_per_identity):
      raise ValueError(
          f'config.loss.terms.{pairs[0]} needs positive pairs in every batch '
          '(and verification negative ones): config.data.sampler one of '
          f'{samplers.P_K_SAMPLERS}'
          ' with config.data.images_per_identity >= 2 and config.batch_size'
          ' >= 2 x images_per_identity (P x K, P >= 2), got sampler='
          f'{data.sampler!r}, images_per_identity={data.images_per_identity},'
          f' batch_size={config.batch_size}')


def check_outputs(config: ml_collections.ConfigDict,
                  outputs: dict[str, Any]) -> None:
  """Refuses terms the network's outputs cannot feed (checked at start-up).

  Args:
    config: the experiment config.
    outputs: the network's output dict (e.g. from `jax.eval_shape`).

  Raises:
    ValueError: naming the config key, e.g. a triplet term on an embedding
      the network does not return.
  """
  for name in active_terms(config):
    term = TERMS[name]
    if term.task is not None and config.task != term.task:
      raise ValueError(f'config.loss.terms.{name} needs config.task='
                       f'{term.task} (the task that computes its inputs), '
                       f'got config.task={config.task!r}')
    if term.output is not None and term.output[0] not in outputs:
      raise ValueError(f'config.loss.terms.{name}: the network has no '
                       f'{term.output[1]}')
    term.check_outputs(config.loss.terms[name], outputs)


def total_loss(config: ml_collections.ConfigDict, outputs: dict[str, Any],
               batch: dict[str, jax.Array], axis_name: Optional[str] = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The weighted sum of the active terms, and every term's metrics.

  Args:
    config: the experiment config (its ``loss.terms``).
    outputs: the network's output dict.
    batch: this device's share (``labels`` (B,) int).
    axis_name: the mapped device axis, or None.

  Returns:
    the loss (float32 scalar) and metrics: each term's value under its name,
    the term's own metrics, and ``loss``.
  """
  loss = 0.0
  metrics = {}
  for name in active_terms(config):
    settings = config.loss.terms[name]
    value, term_metrics = TERMS[name].fn(outputs, batch, settings,
                                         axis_name)
    loss = loss + settings.weight * value
    metrics.update(term_metrics)
    metrics[name] = value
  metrics['loss'] = loss
  return loss, metrics
