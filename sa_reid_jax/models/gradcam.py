"""Grad-CAM inside the training step: CASN's attention maps.

CASN (Zheng et al., CVPR 2019; the project's reference notes, "CASN") takes
the Grad-CAM map of each image's true class (Selvaraju et al., ICCV 2017)
as the network's attention and trains it with GAIN's attention-mining loss
(Li et al., CVPR 2018): the image with its attended region erased should no
longer be recognised, so the network must attend to the whole person. Its
siamese module has its own attention: the Grad-CAM of the siamese
importance score s_n = sum_k max(f_nk, 0) of the siamese feature f_n (seed
004, section 2.2, eq. 5, and the author's reply; `models.casn.CASNNet
.siamese_importance`), the maps M_1, M_2 that the attention consistency
compares (`losses.siamese`).

* `score_grad_cam`: the one Grad-CAM for both: for image n and a per-image
  score y_n (a function of the last feature map A_n alone), the gradient
  G = d y_n / d A_n with respect to A_n (h, w, K); channel weights w_k =
  spatial mean of G_k; the map ReLU(sum_k w_k A_k), min-max normalised to
  [0, 1] per image. (B, h, w, K) -> (B, h, w).
* `grad_cam`: the class map, y_n = the logit of image n's class c_n.
  (For the siamese map the score is s_n: the task passes
  ``siamese_importance`` to `score_grad_cam`.)

What the maps are used for, erasing the attended region and the
attention-mining loss, is in `losses.attention_mining`.
"""

from typing import Callable

import jax
import jax.numpy as jnp

# How gradients of the training loss treat the Grad-CAM maps, the class and
# the siamese ones alike (config key ``casn.gradcam_gradient``):
#   'feature_map'  through the feature map A, the channel weights w held
#                  constant (the default: the CASN notes do not say which;
#                  see training/casn_defaults.py for why this one);
#   'full'         through the weights too (second-order: the gradient of a
#                  gradient, also through the BatchNorm batch statistics
#                  the head was differentiated with; for the siamese map,
#                  through the siamese fc's kernel);
#   'none'         the map is a constant (only the erased image's second
#                  pass is trained).
GRADIENT_MODES = ('feature_map', 'full', 'none')
# Below this range (max - min) a map counts as flat and is set to zero
# instead of amplifying rounding noise to [0, 1].
_FLAT_MAP_RANGE = 1e-12


def score_grad_cam(score_fn: Callable[[jax.Array], jax.Array],
                   feature_map: jax.Array,
                   gradient: str = 'feature_map') -> jax.Array:
  """Grad-CAM maps of one score per image, normalised to [0, 1].

  The class map (`grad_cam`: the true-class logit) and CASN's siamese map
  (the importance score s_n of ``CASNNet.siamese_importance``) are this
  with different scores. The gradient of the summed scores gives each
  image's own gradient only when `score_fn` treats the images
  independently (no train-mode BatchNorm in it: use the batch's statistics
  as constants; no dropout).

  Args:
    score_fn: (B, h, w, K) feature maps -> (B,) scores y_n, example by
      example.
    feature_map: (B, h, w, K) the last feature map A (any float dtype).
    gradient: one of `GRADIENT_MODES` (how the returned maps pass gradients
      on).

  Returns:
    (B, h, w) float32 (float64 for float64 maps): ReLU(sum_k w_k A_k) with
    w_k = mean over (h, w) of d y_n / d A_k, then (M - min M) / (max M -
    min M) per image (all zeros for a flat map).

  Raises:
    ValueError: for an unknown `gradient`, a feature map that is not
      (B, h, w, K), or scores that are not (B,).
  """
  if gradient not in GRADIENT_MODES:
    raise ValueError(f'config.casn.gradcam_gradient must be one of '
                     f'{GRADIENT_MODES}, got {gradient!r}')
  if feature_map.ndim != 4:
    raise ValueError(f'feature_map must be (B, h, w, K), got '
                     f'{feature_map.shape}')
  wide = jnp.promote_types(feature_map.dtype, jnp.float32)
  activations = feature_map.astype(wide)

  def summed_scores(maps):
    scores = score_fn(maps)
    if scores.shape != maps.shape[:1]:
      raise ValueError(f'score_fn must give one score per image, shape '
                       f'{maps.shape[:1]}, got {scores.shape}')
    return jnp.sum(scores)

  if gradient == 'full':
    grads = jax.grad(summed_scores)(activations)
  else:
    # The weights are constants in both other modes: no second-order pass.
    grads = jax.grad(summed_scores)(jax.lax.stop_gradient(activations))
    grads = jax.lax.stop_gradient(grads)
  weights = jnp.mean(grads, axis=(1, 2))
  if gradient == 'none':
    activations = jax.lax.stop_gradient(activations)
  maps = jax.nn.relu(jnp.einsum('bhwk,bk->bhw', activations, weights))
  return normalise_maps(maps)


def grad_cam(score_fn: Callable[[jax.Array], jax.Array],
             feature_map: jax.Array, labels: jax.Array,
             gradient: str = 'feature_map') -> jax.Array:
  """Grad-CAM maps of every image's own class, normalised to [0, 1].

  `score_grad_cam` with the score y_n = the logit of image n's class c_n.
  The gradient of the summed true-class scores gives each image's own
  gradient only when `score_fn` treats the images independently (no
  train-mode BatchNorm in it: use the batch's statistics as constants).

  Args:
    score_fn: (B, h, w, K) feature maps -> (B, C) class scores (logits),
      example by example.
    feature_map: (B, h, w, K) the last feature map A (any float dtype).
    labels: (B,) int true classes c.
    gradient: one of `GRADIENT_MODES` (how the returned maps pass gradients
      on).

  Returns:
    (B, h, w) float32 (float64 for float64 maps): ReLU(sum_k w_k A_k) with
    w_k = mean over (h, w) of d y^c / d A_k, then (M - min M) / (max M -
    min M) per image (all zeros for a flat map).

  Raises:
    ValueError: for an unknown `gradient` or mismatched shapes.
  """
  if gradient not in GRADIENT_MODES:
    raise ValueError(f'config.casn.gradcam_gradient must be one of '
                     f'{GRADIENT_MODES}, got {gradient!r}')
  if feature_map.ndim != 4 or labels.shape != feature_map.shape[:1]:
    raise ValueError(f'feature_map must be (B, h, w, K) and labels (B,), got '
                     f'{feature_map.shape} and {labels.shape}')

  def true_class_scores(maps):
    scores = score_fn(maps)
    return jnp.take_along_axis(scores, labels[:, None], axis=1)[:, 0]

  return score_grad_cam(true_class_scores, feature_map, gradient)


def normalise_maps(maps: jax.Array) -> jax.Array:
  """(M - min M) / (max M - min M) per map of (B, h, w); flat maps -> 0."""
  low = jnp.min(maps, axis=(1, 2), keepdims=True)
  span = jnp.max(maps, axis=(1, 2), keepdims=True) - low
  flat = span <= _FLAT_MAP_RANGE
  return jnp.where(flat, 0.0, (maps - low) / jnp.where(flat, 1.0, span))
