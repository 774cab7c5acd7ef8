"""Image operations of the input pipelines, in TensorFlow, as PIL does them.

PIL-style bilinear resizing (antialiased only when shrinking), the official
RGA crop window, mirroring and ImageNet normalisation of one decoded image
(decoding: ``datasets.images.decode_image``; see ``pipeline`` for how the
pipelines use them).
"""

import functools

import numpy as np  # pylint: disable=g-import-not-at-top
from sa_reid_jax.datasets.tensorflow_cpu import tf  # pylint: disable=g-import-not-at-top

from sa_reid_jax.models.inputs import IMAGENET_MEAN  # pylint: disable=g-import-not-at-top
from sa_reid_jax.models.inputs import IMAGENET_STD  # pylint: disable=g-import-not-at-top


@functools.lru_cache(maxsize=8)
def _normalization_maps(image_size: tuple[int, int]):
  """Per-pixel scale and shift of the ImageNet normalisation, full size.

  Multiplying by arrays of the image's own shape is several times faster on
  CPU than broadcasting a 3-vector over the channel axis.
  """
  scale = np.array([1 / (255 * s) for s in IMAGENET_STD], np.float32)
  shift = np.array([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)],
                   np.float32)
  shape = (*image_size, 3)
  return (np.broadcast_to(scale, shape).copy(),
          np.broadcast_to(shift, shape).copy())


def resize(image: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
  """Bilinear resize as PIL does: antialiased only when shrinking.

  Args:
    image: float32 tensor (height, width, channels).
    image_size: output (height, width).

  Returns:
    float32 tensor (*image_size, channels).
  """
  shrinks = tf.reduce_any(tf.shape(image)[:2] > tf.constant(image_size))
  return tf.cond(
      shrinks,
      lambda: tf.image.resize(image, image_size, 'bilinear', antialias=True),
      lambda: tf.image.resize(image, image_size, 'bilinear'))


def preprocess(image: tf.Tensor, image_size: tuple[int, int],
               flip: tf.Tensor | bool = False,
               crop: tuple | None = None) -> tf.Tensor:
  """Resizes (or crops), mirrors (optionally) and normalises one image.

  Resizing is symmetric, so mirroring the small image first gives the same
  result as torchvision's order (resize or crop, flip, normalise) on fewer
  pixels; a crop window is mirrored with it.

  Args:
    image: uint8 tensor (height, width, 3).
    image_size: output (height, width).
    flip: whether to mirror left-right (a bool or a scalar bool tensor).
    crop: None, or (enlarged_size, applied, offset) as drawn by
      ``augmentation.sample_crops``: when the scalar bool tensor ``applied``
      holds, resize to ``enlarged_size`` (``RandomCrop.enlarged_size``) and
      cut the ``image_size`` window at int32 ``offset`` (top, left) of the
      unmirrored image.

  Returns:
    float32 tensor (*image_size, 3): (pixel / 255 - mean) / std.
  """
  pixels = tf.cast(image, tf.float32)
  flip = tf.convert_to_tensor(flip)
  pixels = tf.cond(flip, lambda: tf.reverse(pixels, axis=[1]), lambda: pixels)
  scale, shift = _normalization_maps(tuple(image_size))
  if crop is None:
    return resize(pixels, image_size) * scale + shift
  enlarged_size, applied, offset = crop
  height, width = image_size

  def cropped():
    # Cropping at `left` then mirroring (the official order) equals
    # cropping the mirrored image at the mirrored offset.
    left = tf.where(flip, enlarged_size[1] - width - offset[1], offset[1])
    window = resize(pixels, enlarged_size)[offset[0]:offset[0] + height,
                                           left:left + width]
    return tf.ensure_shape(window, [height, width, 3])

  return tf.cond(applied, cropped,
                 lambda: resize(pixels, image_size)) * scale + shift


def to_staging_size(image: tf.Tensor,
                    staging_size: tuple[int, int]) -> tf.Tensor:
  """Resizes a uint8 image to ``staging_size`` (rounded), unless already so."""
  same = tf.reduce_all(tf.shape(image)[:2] == tf.constant(staging_size))

  def resized():
    pixels = resize(tf.cast(image, tf.float32), staging_size)
    return tf.cast(tf.clip_by_value(tf.round(pixels), 0, 255), tf.uint8)

  image = tf.cond(same, lambda: image, resized)
  return tf.ensure_shape(image, [*staging_size, 3])
