"""Train-time augmentation on the accelerator, in JAX (no TensorFlow here).

The counterpart of ``pipeline.train_batches`` with
``augment_on_device=True``: that pipeline only decodes, emitting uint8 images
at a small staging size with each example's flip and erasing draws
(``data.augmentation.sample_epoch``); ``augment_batch`` then applies them
in the order the CPU path does: mirror, bilinear resize to the network input,
ImageNet normalisation, random erasing.

For a ``'zeros'`` fill the result equals the CPU path's up to float rounding
(resize weights are computed differently). A ``'random'`` fill (the default,
as ``RandomErasing``'s) draws its standard normal values, one per pixel and
channel, with ``jax.random`` from the same per-example ``noise_seed``: same
box and distribution, but not TensorFlow's values.
"""

import functools

import jax
import jax.numpy as jnp

from sa_reid_jax.datasets.images import check_size
from sa_reid_jax.models.inputs import IMAGENET_MEAN
from sa_reid_jax.models.inputs import IMAGENET_STD

ERASING_FILLS = ('zeros', 'random')
_KEYS = ('images', 'flip', 'erase_box', 'noise_seed')
_CROP_KEYS = ('crop', 'crop_offset')
# The staged batch entries `augment_batch` reads.
BATCH_KEYS = _KEYS + _CROP_KEYS


def batch_keys(crop: bool) -> tuple[str, ...]:
  """The entries `augment_batch` reads, with or without the random crop."""
  return BATCH_KEYS if crop else _KEYS


def _seed_keys(noise_seed: jax.Array) -> jax.Array:
  """Threefry keys from (B, 2) integer seeds, using each one's low 32 bits.

  Without x64, JAX already holds int64 seeds as their low 32 bits, so keys
  are the same with x64 on or off.
  """
  bits = jax.lax.convert_element_type(noise_seed, jnp.uint32)
  return jax.vmap(jax.random.wrap_key_data)(bits)


def normalize(pixels: jax.Array) -> jax.Array:
  """(pixels / 255 - mean) / std with ImageNet's mean and std.

  Args:
    pixels: float32 (..., 3) RGB values in [0, 255].

  Returns:
    float32, the same shape: as ``preprocessing.preprocess`` normalises.
  """
  scale = jnp.array([1 / (255 * s) for s in IMAGENET_STD], jnp.float32)
  shift = jnp.array([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)],
                    jnp.float32)
  return pixels * scale + shift


def _resize(pixels: jax.Array, size: tuple[int, int]) -> jax.Array:
  # antialias=True is plain half-pixel-centre bilinear in an enlarged
  # dimension and a widened triangle filter in a shrunk one: TensorFlow's and
  # PIL's rule.
  return jax.image.resize(pixels, (pixels.shape[0], *size, 3), 'bilinear',
                          antialias=True)


def _crop_windows(pixels, flip, crop, crop_offset, image_size, crop_size):
  """Resized images, or windows of enlarged ones where `crop` is set."""
  height, width = image_size
  enlarged = _resize(pixels, crop_size)
  # The images are mirrored already: cropping at `left`, then mirroring
  # (the official order), equals cropping here at the mirrored offset.
  left = jnp.where(flip, crop_size[1] - width - crop_offset[:, 1],
                   crop_offset[:, 1])
  windows = jax.vmap(lambda image, top, left: jax.lax.dynamic_slice(
      image, (top, left, 0), (height, width, 3)))(enlarged, crop_offset[:, 0],
                                                  left)
  return jnp.where(crop[:, None, None, None], windows,
                   _resize(pixels, image_size))


@functools.partial(jax.jit,
                   static_argnames=('image_size', 'fill', 'crop_size'))
def _augment(images, flip, erase_box, noise_seed, crop, crop_offset, *,
             image_size, fill, crop_size):
  height, width = image_size
  pixels = images.astype(jnp.float32)
  # Mirror before resizing, as the CPU path: bilinear resizing commutes with
  # mirroring, and mirroring the small image moves fewer pixels.
  pixels = jnp.where(flip[:, None, None, None], pixels[:, :, ::-1], pixels)
  if crop_size is None:
    pixels = _resize(pixels, image_size)
  else:
    pixels = _crop_windows(pixels, flip, crop, crop_offset, image_size,
                           crop_size)
  pixels = normalize(pixels)
  top, left, box_height, box_width = (erase_box[:, i, None] for i in range(4))
  rows = jnp.arange(height)[None, :]
  columns = jnp.arange(width)[None, :]
  inside = (((rows >= top) & (rows < top + box_height))[:, :, None] &
            ((columns >= left) & (columns < left + box_width))[:, None, :])
  if fill == 'random':
    values = jax.vmap(lambda key: jax.random.normal(
        key, (height, width, 3), jnp.float32))(_seed_keys(noise_seed))
  else:
    values = jnp.zeros((), jnp.float32)
  return jnp.where(inside[..., None], values, pixels)


def augment_batch(batch: dict, image_size: tuple[int, int] = (384, 128),
                  fill: str = 'random',
                  crop_size: tuple[int, int] | None = None) -> jax.Array:
  """Resizes (or crops), mirrors, normalises and erases staged images.

  Usable under ``jax.jit`` (``image_size``, ``fill`` and ``crop_size`` are
  static).

  Args:
    batch: a batch of ``train_batches(..., augment_on_device=True)``:
      ``images`` uint8 (B, h, w, 3), ``flip`` bool (B,), ``erase_box`` int
      (B, 4) of (top, left, height, width) at ``image_size`` (height 0 for
      none), ``noise_seed`` int (B, 2), and with `crop_size` ``crop`` bool
      (B,) and ``crop_offset`` int (B, 2) of (top, left) in the enlarged
      image; other keys are ignored.
    image_size: output (height, width); must be the ``image_size`` the
      pipeline drew the erasing boxes for (default (384, 128)).
    fill: the erasing fill, as the pipeline's ``RandomErasing.fill``:
      ``'random'`` (default, the official code's: standard normal noise per
      pixel and channel) or ``'zeros'``.
    crop_size: None (default: no crop, ``crop`` entries ignored) or the
      enlarged (height, width) of the pipeline's ``RandomCrop``
      (``RandomCrop.enlarged_size(image_size)``): examples with ``crop`` set
      are resized to it and cut to ``image_size`` at ``crop_offset``.

  Returns:
    float32 (B, *image_size, 3): ((resized pixel / 255) - mean) / std, the
    boxes filled.

  Raises:
    ValueError: naming the argument or batch entry at fault.
  """
  image_size = check_size(image_size)
  if fill not in ERASING_FILLS:
    raise ValueError(f'fill must be one of {ERASING_FILLS}, got {fill!r}')
  if crop_size is not None:
    crop_size = check_size(crop_size, 'crop_size')
    if crop_size[0] < image_size[0] or crop_size[1] < image_size[1]:
      raise ValueError(f'crop_size {crop_size} must be at least image_size '
                       f'{image_size}')
  keys = _KEYS if crop_size is None else BATCH_KEYS
  missing = [key for key in keys if key not in batch]
  if missing:
    raise ValueError(f'batch lacks {missing}; make it with '
                     'train_batches(..., augment_on_device=True)')
  images, flip, erase_box, noise_seed = (batch[key] for key in _KEYS)
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != jnp.uint8:
    raise ValueError(f'batch["images"] must be uint8 (B, h, w, 3), got '
                     f'{images.dtype} {tuple(images.shape)}')
  size = images.shape[0]
  expected = {'flip': (size,), 'erase_box': (size, 4),
              'noise_seed': (size, 2), 'crop': (size,),
              'crop_offset': (size, 2)}
  for key in keys[1:]:
    if tuple(batch[key].shape) != expected[key]:
      raise ValueError(f'batch["{key}"] must have shape {expected[key]}, got '
                       f'{tuple(batch[key].shape)}')
  crop, crop_offset = (batch[key] if crop_size else None
                       for key in _CROP_KEYS)
  return _augment(images, flip, erase_box, noise_seed, crop, crop_offset,
                  image_size=image_size, fill=fill, crop_size=crop_size)
