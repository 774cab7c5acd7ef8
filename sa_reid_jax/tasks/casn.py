"""The CASN task: Grad-CAM attention trained inside the step.

One step of CASN (Zheng et al., CVPR 2019; the reference notes, "CASN"):

1. the backbone's last feature map A and the head's outputs, in train mode
   (BatchNorm batch statistics, updating the running ones; dropout keyed per
   example);
2. Grad-CAM of each image's true class (`models.gradcam.grad_cam`) through
   the head in inference form, with this batch's BatchNorm statistics as
   constants and no dropout: the map explains the prediction of the network
   as it stands, and each image's map depends on that image alone (with
   train-mode statistics the gradient of one image's score would reach
   every image of the batch); ``attention_maps`` (B, h, w) in [0, 1], what
   attention mining erases, computed when attention mining or a
   ``consistency`` term with ``maps='class'`` reads it;
2b. if ``consistency`` is on with ``maps='siamese'`` (the default): the
   siamese module's maps M_i, ``siamese_attention_maps`` (B, h, w) in
   [0, 1]: the same Grad-CAM (`models.gradcam.score_grad_cam`, the same
   gradient mode and normalisation) of the importance score s_i =
   sum_k max(f_ik, 0) of the siamese feature f_i (``siamese_importance``;
   seed 004, section 2.2, eq. 5, and the author's reply: the components of
   f_i above zero are those with a positive influence on the same/different
   prediction; s_i is not a class score). That path is pooling and an fc,
   no BatchNorm and no dropout: each image's map depends on that image
   alone, and it is the same in training and inference;
3. if ``attention_mining`` is on: the images with their attended region
   erased go through the whole network a second time, in train mode (the
   statistics of the erased batch, as a second forward pass of the same
   network in PyTorch computes them), the running-statistics update of that
   pass discarded so that the running statistics describe real images;
4. if ``verification`` is on: the siamese head's logit for every pair of this
   device's f_i with the global batch's (`losses.siamese`);
5. the weighted terms of ``config.loss.terms`` (cross-entropy and the three
   above, ``consistency`` reading the maps its ``maps`` setting names,
   `losses.CONSISTENCY_MAPS`).
"""

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections

from sa_reid_jax import losses
from sa_reid_jax.losses import attention_mining
from sa_reid_jax.models import gradcam
from sa_reid_jax.tasks.task import Task


def _statistics_from_moments(batch_stats: Any, intermediates: Any) -> Any:
  """`batch_stats` with the mean and variance of every BatchNorm that
  sowed its batch moments replaced by those moments."""
  stats = flax.traverse_util.flatten_dict(flax.core.unfreeze(batch_stats))
  sown = flax.traverse_util.flatten_dict(flax.core.unfreeze(intermediates))
  for path, moments in sown.items():
    if path[-1] != 'batch_moments':
      continue
    (mean, var), = moments
    stats[path[:-1] + ('mean',)] = mean
    stats[path[:-1] + ('var',)] = var
  return flax.traverse_util.unflatten_dict(stats)


def head_scores(model: Any, params: Any, batch_stats: Any,
                intermediates: Any) -> Callable[[jax.Array], jax.Array]:
  """The head as Grad-CAM differentiates it: feature maps -> class scores.

  Inference form (no dropout) with the statistics of the train-mode pass
  that sowed `intermediates` in place of the running ones, so that each
  image's scores depend on that image alone. Without dropout these are the
  train-mode logits. With it they differ by the dropped units only: PCB's
  dropout acts on the pooled stripes before the reduction's BatchNorm, so
  the statistics are those of the dropped batch, while the map explains
  the undropped prediction (what the network predicts at test time).

  Args:
    model: a casn family network.
    params: its parameters.
    batch_stats: its BatchNorm statistics (after the train-mode pass).
    intermediates: what that pass sowed (``mutable=['intermediates']``).

  Returns:
    (B, h, w, K) feature maps -> (B, C) ``global_logits``.
  """
  stats = _statistics_from_moments(batch_stats, intermediates)

  def scores(maps):
    return model.apply({'params': params, 'batch_stats': stats}, maps, False,
                       method='head_outputs')['global_logits']

  return scores


def siamese_scores(model: Any, params: Any
                   ) -> Callable[[jax.Array], jax.Array]:
  """The siamese importance score as Grad-CAM differentiates it.

  Args:
    model: a casn family network.
    params: its parameters (the path has no BatchNorm: no statistics).

  Returns:
    (B, h, w, K) feature maps -> (B,) s_i = sum_k max(f_ik, 0)
    (``CASNNet.siamese_importance``), each image's from its own map.
  """

  def scores(maps):
    return model.apply({'params': params}, maps,
                       method='siamese_importance')

  return scores


def forward(model: Any, params: Any, batch_stats: Any,
            batch: dict[str, jax.Array], rng: jax.Array, *,
            gradient: str = 'feature_map', with_maps: bool = True,
            with_siamese_maps: bool = False
            ) -> tuple[dict[str, Any], Any]:
  """Steps 1, 2 and 2b of the module docstring: the train-mode pass, maps.

  Args:
    model: a casn family network.
    params, batch_stats: its variables.
    batch: ``images`` (B, H, W, 3), ``labels`` (B,), ``positions`` (B,).
    rng: the dropout key.
    gradient: `gradcam.GRADIENT_MODES` (for both kinds of map).
    with_maps: compute the true-class Grad-CAM maps.
    with_siamese_maps: compute the siamese Grad-CAM maps.

  Returns:
    (outputs, new_batch_stats): the network's output dict, plus
    ``attention_maps`` (B, h, w) in [0, 1] when `with_maps` and
    ``siamese_attention_maps`` (B, h, w) in [0, 1] when
    `with_siamese_maps`.
  """
  feature_map, state = model.apply(
      {'params': params, 'batch_stats': batch_stats}, batch['images'], True,
      method='feature_map', mutable=['batch_stats'])
  outputs, state = model.apply(
      {'params': params, 'batch_stats': state['batch_stats']}, feature_map,
      True, batch['positions'], method='head_outputs', rngs={'dropout': rng},
      mutable=['batch_stats', 'intermediates'])
  outputs = dict(outputs)
  if with_maps:
    scores = head_scores(model, params, state['batch_stats'],
                         state.get('intermediates', {}))
    outputs['attention_maps'] = gradcam.grad_cam(
        scores, feature_map, batch['labels'], gradient)
  if with_siamese_maps:
    outputs['siamese_attention_maps'] = gradcam.score_grad_cam(
        siamese_scores(model, params), feature_map, gradient)
  return outputs, state['batch_stats']


def casn_task(config: ml_collections.ConfigDict) -> Task:
  """The CASN step computation (see the module docstring).

  Reads ``config.casn.gradcam_gradient`` (`gradcam.GRADIENT_MODES`) and the
  ``attention_mining`` (alpha, beta), ``verification`` and ``consistency``
  (threshold, maps) blocks of ``config.loss.terms``. Only the maps an
  active term reads are computed: the class maps for attention mining or
  ``consistency.maps='class'``, the siamese maps for
  ``consistency.maps='siamese'``.

  Raises:
    ValueError: for unknown or negative terms, a bad gradient mode, a bad
      ``consistency.maps`` (with the term on), or a config without the
      casn block; the task's ``check_network``: for a final map smaller
      than 2x2 when Grad-CAM maps are used.
  """
  active = losses.active_terms(config)
  if 'casn' not in config:
    raise ValueError('config.task=casn needs the config.casn block and the '
                     'CASN loss terms; start from a CASN config (configs/'
                     'casn_*.py, training/casn_defaults.py)')
  gradient = config.casn.gradcam_gradient
  if gradient not in gradcam.GRADIENT_MODES:
    raise ValueError(f'config.casn.gradcam_gradient must be one of '
                     f'{gradcam.GRADIENT_MODES}, got {gradient!r}')
  mining = config.loss.terms.attention_mining
  consistency_maps = (losses.consistency_maps(config)
                      if 'consistency' in active else None)
  class_maps = ('attention_mining' in active or
                consistency_maps == losses.CONSISTENCY_MAPS['class'])
  siamese_maps = consistency_maps == losses.CONSISTENCY_MAPS['siamese']
  needs_maps = class_maps or siamese_maps

  def loss_fn(model, params, batch_stats, batch, rng, axis_name):
    images = batch['images']
    outputs, new_batch_stats = forward(
        model, params, batch_stats, batch, rng, gradient=gradient,
        with_maps=class_maps, with_siamese_maps=siamese_maps)
    if 'attention_mining' in active:
      erased = attention_mining.erase_attended(images, attention_mining.soft_mask(
          outputs['attention_maps'], mining.alpha, mining.beta))
      erased_outputs, _ = model.apply(
          {'params': params, 'batch_stats': batch_stats}, erased, True,
          batch['positions'], rngs={'dropout': jax.random.fold_in(rng, 1)},
          mutable=['batch_stats'])
      outputs['erased_logits'] = erased_outputs['global_logits']
    if 'verification' in active:
      vectors = outputs['verification']
      others = vectors if axis_name is None else jax.lax.all_gather(
          vectors, axis_name, tiled=True)
      outputs['pair_logits'] = model.apply(
          {'params': params}, vectors[:, None], others[None],
          method='siamese_logits')
    loss, metrics = losses.total_loss(config, outputs, batch, axis_name)
    return loss, (metrics, new_batch_stats)

  def check_network(model, image_size):
    if not needs_maps:
      return
    images = jax.ShapeDtypeStruct((1, *image_size, 3), jnp.float32)
    shape = jax.eval_shape(lambda x: model.init_with_output(
        jax.random.key(0), x, method='feature_map')[0], images).shape
    # A 1-pixel-wide map is constant after normalisation: no attention to
    # mine, no box to crop, and no error from the terms themselves.
    if min(shape[1:3]) < 2:
      stride = ('' if getattr(model, 'last_stride', 1) == 1 else
                ' or config.model.last_stride=1')
      raise ValueError(
          f'config.image_size={tuple(image_size)}: the network\'s last '
          f'feature map is {shape[1]}x{shape[2]}; Grad-CAM attention (the '
          'attention_mining and consistency terms) needs at least 2x2: use '
          f'larger images{stride}')

  return Task('casn', ('images', 'labels', 'positions'), loss_fn,
              check_network)
