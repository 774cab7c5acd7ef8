"""GAIN's attention mining, CASN's identification-attention loss.

CASN (Zheng et al., CVPR 2019; the project's reference notes, "CASN") trains
the Grad-CAM map of each image's true class (`models.gradcam.grad_cam`) with
GAIN's attention-mining loss (Li et al., CVPR 2018): the image with its
attended region erased should no longer be recognised, so the network must
attend to the whole person.

* `soft_mask`: S = sigmoid(alpha (M - beta)).
* `erase_attended`: I * (1 - S), S resized to the image bilinearly.
* `attention_mining_loss`: the erased image's true-class logit (the notes'
  form) or softmax probability, averaged over the batch.
"""

import jax
import jax.numpy as jnp


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
