"""Train-time augmentation draws (crop, flip, random erasing), and erasing.

The random draws are made in numpy, for a whole epoch at once, seeded by
(seed, epoch) and indexed by the example's position in the epoch (step *
global batch + index in the global batch; ``data.samplers``): an example
gets the same augmentation whichever process or device it lands on, a
sampler that repeats a row within an epoch gives each copy its own draws,
and the tf.data graph (or ``device_augment``) only applies them (cheaper than
drawing there on CPU).
"""

import dataclasses

import numpy as np  # pylint: disable=g-import-not-at-top
from sa_reid_jax.datasets.tensorflow_cpu import tf  # pylint: disable=g-import-not-at-top

ERASING_FILLS = ('zeros', 'random')
# Distinguish the augmentation streams from the sampler's, which is seeded
# with (seed, epoch) alone. The crop has its own, so that switching it on
# leaves the flips and erasing boxes as they were.
_AUGMENTATION_STREAM = 1
_CROP_STREAM = 2


@dataclasses.dataclass(frozen=True)
class RandomCrop:
  """Resize to `scale` times the input size, then crop back to it at random.

  The official RGA code's ``Random2DTranslation``
  (``reid/utils/data/transforms.py``; REFERENCE.md, RGA, "Augmentation"):
  with probability `probability` the image is resized to
  (round(scale * height), round(scale * width)) and a window of the input
  size is cut from it at offsets round(uniform(0, range)) per axis (so the
  two extreme offsets are half as likely as the others, as there); otherwise
  it is resized to the input size.

  Attributes:
    probability: chance of the enlarged resize and crop (official 0.5).
    scale: enlargement before cropping, >= 1 (official 1.125).
  """
  probability: float = 0.5
  scale: float = 1.125

  def __post_init__(self):
    if not 0 <= self.probability <= 1:
      raise ValueError(f'RandomCrop.probability must be in [0, 1], got '
                       f'{self.probability}')
    if not self.scale >= 1:
      raise ValueError(f'RandomCrop.scale must be >= 1, got {self.scale}')

  def enlarged_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
    """(round(scale * height), round(scale * width)), Python's rounding."""
    return tuple(int(round(side * self.scale)) for side in image_size)


def sample_crops(rng: np.random.Generator, count: int,
                 image_size: tuple[int, int],
                 crop: RandomCrop) -> tuple[np.ndarray, np.ndarray]:
  """Draws whether and where to crop `count` images.

  Args:
    rng: the generator.
    count: number of images.
    image_size: network input (height, width).
    crop: the parameters.

  Returns:
    ``crop`` bool (count,) and ``crop_offset`` int32 (count, 2): (top, left)
    of the window in the enlarged image, 0 for an image not cropped.
  """
  applied = rng.random(count) < crop.probability
  ranges = np.subtract(crop.enlarged_size(image_size), image_size)
  # np.round rounds half to even, as Python's round in the official code.
  offsets = np.round(rng.uniform(0, ranges, (count, 2))).astype(np.int32)
  offsets[~applied] = 0
  return applied, offsets


@dataclasses.dataclass(frozen=True)
class RandomErasing:
  """Random erasing (Zhong et al. 2017), applied to the normalised image.

  The defaults are the official SA code's (its ``RandomErasing`` with
  ``random_fill=True``; the paper's Tables 1 and 3 train with it).

  Attributes:
    probability: chance of erasing a rectangle (default 0.5).
    area_range: its area as a fraction of the image (default 0.02-0.2).
    min_aspect: its height/width is drawn uniformly from
      [min_aspect, 1 / min_aspect] (default 0.3).
    fill: ``'random'`` (default: standard normal noise drawn per pixel and
      channel, after normalisation) or ``'zeros'`` (the ImageNet mean
      colour, i.e. 0 after normalisation).
    max_attempts: (area, aspect) draws tried until the rectangle fits in the
      image, height <= image height and width <= image width (default 100);
      the first that fits is used, none erases nothing.
  """
  probability: float = 0.5
  area_range: tuple[float, float] = (0.02, 0.2)
  min_aspect: float = 0.3
  fill: str = 'random'
  max_attempts: int = 100

  def __post_init__(self):
    low, high = self.area_range
    if not 0 <= self.probability <= 1:
      raise ValueError(f'RandomErasing.probability must be in [0, 1], got '
                       f'{self.probability}')
    if not 0 < low <= high < 1:
      raise ValueError('RandomErasing.area_range must satisfy 0 < low <= high'
                       f' < 1, got {self.area_range}')
    if not 0 < self.min_aspect <= 1:
      raise ValueError(f'RandomErasing.min_aspect must be in (0, 1], got '
                       f'{self.min_aspect}')
    if self.fill not in ERASING_FILLS:
      raise ValueError(f'RandomErasing.fill must be one of {ERASING_FILLS}, '
                       f'got {self.fill!r}')
    if self.max_attempts < 1:
      raise ValueError(f'RandomErasing.max_attempts must be >= 1, got '
                       f'{self.max_attempts}')


def sample_erasing_boxes(rng: np.random.Generator, count: int,
                         image_size: tuple[int, int],
                         erasing: RandomErasing) -> np.ndarray:
  """Draws the rectangles to erase for ``count`` images.

  Per image, as the official SA code: erase with probability
  ``probability``; then up to ``max_attempts`` times draw an area fraction
  uniformly in ``area_range`` and an aspect uniformly in
  [min_aspect, 1/min_aspect], round height = sqrt(area * aspect) and
  width = sqrt(area / aspect) to whole pixels (half to even, as Python's
  ``round``), and keep the first with height <= image height and
  width <= image width; its corner is uniform over the positions where it
  fits. A box rounded to no pixels erases nothing.

  Args:
    rng: the generator.
    count: number of images.
    image_size: (height, width) of the images erased.
    erasing: the parameters.

  Returns:
    int32 array (count, 4) of (top, left, height, width); all four are 0
    for an image left alone.
  """
  height, width = image_size
  apply = rng.random(count) < erasing.probability
  shape = (count, erasing.max_attempts)
  area = height * width * rng.uniform(*erasing.area_range, size=shape)
  aspect = rng.uniform(erasing.min_aspect, 1 / erasing.min_aspect, size=shape)
  box_heights = np.round(np.sqrt(area * aspect)).astype(np.int64)
  box_widths = np.round(np.sqrt(area / aspect)).astype(np.int64)
  fits = (box_heights <= height) & (box_widths <= width)
  first = np.argmax(fits, axis=1)
  chosen = np.arange(count)
  box_height = box_heights[chosen, first]
  box_width = box_widths[chosen, first]
  # The official code stops at the first box that fits even when a side
  # rounds to 0 pixels; that erases nothing, recorded as no box.
  erased = apply & fits.any(axis=1) & (box_height > 0) & (box_width > 0)
  box_height = np.where(erased, box_height, 0)
  box_width = np.where(erased, box_width, 0)
  top = np.floor(rng.random(count) * (height - box_height + 1))
  left = np.floor(rng.random(count) * (width - box_width + 1))
  top[box_height == 0] = 0
  left[box_height == 0] = 0
  return np.stack([top, left, box_height, box_width], axis=1).astype(np.int32)


def sample_epoch(num_positions: int, *, seed: int, epoch: int,
                 image_size: tuple[int, int], flip_probability: float,
                 erasing: RandomErasing | None,
                 crop: RandomCrop | None = None) -> dict[str, np.ndarray]:
  """Every example's augmentation for one epoch, indexed by epoch position.

  Args:
    num_positions: examples in the epoch (steps per epoch x global batch).
    seed: the run's seed.
    epoch: the epoch.
    image_size: network input (height, width).
    flip_probability: chance of a horizontal flip.
    erasing: random erasing parameters, or None for none.
    crop: random crop parameters, or None for none.

  Returns:
    ``flip`` bool (N,), ``erase_box`` int32 (N, 4) as from
    ``sample_erasing_boxes`` (all zero without erasing), ``noise_seed``
    int64 (N, 2) for ``'random'`` fills, ``crop`` bool (N,) and
    ``crop_offset`` int32 (N, 2) as from ``sample_crops`` (False and zeros
    without crop).
  """
  if not 0 <= flip_probability <= 1:
    raise ValueError(f'flip_probability must be in [0, 1], got '
                     f'{flip_probability}')
  rng = np.random.default_rng([seed, epoch, _AUGMENTATION_STREAM])
  flip = rng.random(num_positions) < flip_probability
  if erasing is None:
    boxes = np.zeros((num_positions, 4), np.int32)
  else:
    boxes = sample_erasing_boxes(rng, num_positions, image_size, erasing)
  noise_seed = rng.integers(0, 2**62, size=(num_positions, 2),
                            dtype=np.int64)
  if crop is None:
    cropped = np.zeros(num_positions, bool)
    offsets = np.zeros((num_positions, 2), np.int32)
  else:
    cropped, offsets = sample_crops(
        np.random.default_rng([seed, epoch, _CROP_STREAM]), num_positions,
        image_size, crop)
  return {'flip': flip, 'erase_box': boxes, 'noise_seed': noise_seed,
          'crop': cropped, 'crop_offset': offsets}


def erase(image: tf.Tensor, box: tf.Tensor, fill: str = 'zeros',
          noise_seed: tf.Tensor | None = None) -> tf.Tensor:
  """Fills a rectangle of a normalised image.

  Args:
    image: float32 (height, width, channels) with a static shape.
    box: int32 (4,) as from ``sample_erasing_boxes``; height 0 keeps the image.
    fill: ``'random'`` (standard normal values, one per pixel and
      channel) or ``'zeros'``.
    noise_seed: int64 (2,), the stateless seed of a ``'random'`` fill.

  Returns:
    the image with the rectangle filled.
  """
  if fill not in ERASING_FILLS:
    raise ValueError(f'fill must be one of {ERASING_FILLS}, got {fill!r}')
  top, left, box_height, box_width = tf.unstack(box)
  channels = image.shape[-1]

  def fill_box():
    # Slicing and concatenation: on CPU, tf.where, tf.pad with computed
    # paddings and broadcasting are each several times slower than this.
    box_shape = tf.stack([box_height, box_width, channels])
    if fill == 'random':
      values = tf.random.stateless_normal(box_shape, noise_seed)
    else:
      values = tf.zeros(box_shape)
    band = image[top:top + box_height]
    band = tf.concat([band[:, :left], values, band[:, left + box_width:]], 1)
    erased = tf.concat([image[:top], band, image[top + box_height:]], 0)
    return tf.ensure_shape(erased, image.shape)

  return tf.cond(box_height > 0, fill_box, lambda: image)
