"""Grad-CAM inside the training step, and CASN's identification attention.

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
* `soft_mask`: S = sigmoid(alpha (M - beta)).
* `erase_attended`: I * (1 - S), S resized to the image bilinearly.
* `attention_mining_loss`: the erased image's true-class logit (the notes'
  form) or softmax probability, averaged over the batch.
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


def soft_mask(maps: jax.Array, alpha: float, beta: float) -> jax.Array:
  """GAIN's soft threshold S = sigmoid(alpha (M - beta)), element-wise.

  Args:
    maps: (B, h, w) normalised attention maps M in [0, 1].
    alpha: sharpness (GAIN's omega); large values approach a hard mask.
    beta: threshold (GAIN's sigma).

  Returns:
    (B, h, w) in (0, 1), the dtype of `maps`.
  """
  return jax.nn.sigmoid(alpha * (maps - beta))


def erase_attended(images: jax.Array, mask: jax.Array) -> jax.Array:
  """The images with their attended region erased: I * (1 - S).

  The mask is resized to the image bilinearly (half-pixel centres, as
  ``torch.nn.functional.interpolate(..., mode='bilinear',
  align_corners=False)`` for upsampling). The images are ImageNet-normalised,
  so an erased pixel becomes the dataset's mean colour (0), not black.

  Args:
    images: (B, H, W, 3) float.
    mask: (B, h, w) S in [0, 1].

  Returns:
    (B, H, W, 3) in the images' dtype.
  """
  height, width = images.shape[1:3]
  resized = jax.image.resize(mask.astype(jnp.float32),
                             (mask.shape[0], height, width), 'linear')
  return (images * (1.0 - resized)[..., None]).astype(images.dtype)


# What the attention-mining loss minimises on the erased image, by name.
# 'logit': its true-class score itself, as the CASN notes write the loss
# (seed 004, section 2.1) after GAIN. 'probability': its true-class softmax
# probability, bounded in [0, 1]; a logit can fall without bound by raising
# the other classes' logits, which trains the classifier rather than the
# attention, and the probability only falls when the erased image loses
# its identity evidence.
MINING_SCORES = ('logit', 'probability')


def attention_mining_loss(erased_logits: jax.Array, labels: jax.Array,
                          score: str = 'logit') -> jax.Array:
  """Mean true-class score of the erased images (`MINING_SCORES`).

  Args:
    erased_logits: (B, C) logits of `erase_attended` images.
    labels: (B,) int true classes.
    score: ``'logit'`` (the notes' form) or ``'probability'`` (softmax).

  Returns:
    float32 scalar (a mean over this device's equal share of the batch).

  Raises:
    ValueError: for another `score`.
  """
  if score not in MINING_SCORES:
    raise ValueError(f'score must be one of {MINING_SCORES}, got {score!r}')
  logits = erased_logits.astype(jnp.promote_types(jnp.float32,
                                                  erased_logits.dtype))
  values = logits if score == 'logit' else jax.nn.softmax(logits, axis=-1)
  return jnp.mean(jnp.take_along_axis(values, labels[:, None], axis=1))
