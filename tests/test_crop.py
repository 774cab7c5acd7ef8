"""The official RGA random crop: its draws and its window on the tf.data path.

(The on-device path is compared with this one in test_device_augment.py.)
"""

import io
import random

import helpers
import numpy as np
from PIL import Image
import pytest
from scipy import stats
import tensorflow as tf

from sa_reid_jax.data import augmentation
from sa_reid_jax.data import preprocessing
from sa_reid_jax.datasets import tables
from sa_reid_jax.models import inputs

MEAN = np.array(inputs.IMAGENET_MEAN, np.float32)
STD = np.array(inputs.IMAGENET_STD, np.float32)
ONE_GREY_LEVEL = 1.0 / (255 * STD.min())


def test_enlarged_sizes_are_the_official_ones():
  crop = augmentation.RandomCrop()
  assert crop.probability == 0.5 and crop.scale == 1.125
  # int(round(side * 1.125)) in the official code.
  assert crop.enlarged_size((256, 128)) == (288, 144)
  assert crop.enlarged_size((384, 128)) == (432, 144)
  assert crop.enlarged_size((20, 12)) == (22, 14)  # 22.5 -> 22, 13.5 -> 14
  with pytest.raises(ValueError, match='RandomCrop.scale'):
    augmentation.RandomCrop(scale=0.9)
  with pytest.raises(ValueError, match='RandomCrop.probability'):
    augmentation.RandomCrop(probability=1.5)


def _official_offsets(rng, count, ranges, probability=0.5):
  """Random2DTranslation's draws, transcribed: None when not cropped."""
  draws = []
  for _ in range(count):
    if rng.uniform(0, 1) > probability:
      draws.append(None)
      continue
    left = int(round(rng.uniform(0, ranges[1])))
    top = int(round(rng.uniform(0, ranges[0])))
    draws.append((top, left))
  return draws


def test_crop_draws_are_distributed_as_the_official_code():
  count, image_size = 40000, (256, 128)
  ranges = (32, 16)
  applied, offsets = augmentation.sample_crops(
      np.random.default_rng(0), count, image_size, augmentation.RandomCrop())
  assert applied.dtype == bool and offsets.dtype == np.int32
  assert offsets.shape == (count, 2)
  # p = 0.5 over 40000 draws: standard deviation 0.0025 (0.01: four).
  assert abs(applied.mean() - 0.5) < 0.01
  assert (offsets[~applied] == 0).all()
  official = [d for d in _official_offsets(random.Random(1), count, ranges)
              if d is not None]
  assert abs(len(official) / count - 0.5) < 0.01  # four deviations
  official = np.array(official)
  for axis, size in enumerate(ranges):
    ours = offsets[applied, axis]
    assert ours.min() == 0 and ours.max() == size
    # round(uniform(0, R)): each inner offset 1/R, the two ends 1/(2R).
    expected = np.full(size + 1, 1 / size)
    expected[[0, -1]] = 1 / (2 * size)
    for sample in (ours, official[:, axis]):
      observed = np.bincount(sample, minlength=size + 1)
      result = stats.chisquare(observed, expected * len(sample))
      # Fixed seeds; a wrong distribution gives p far below the 0.1% level.
      assert result.pvalue > 1e-3, (axis, result)


def _pil_window(pixels, enlarged, offset, size, flip):
  """torchvision's order: PIL resize to the enlarged size, crop, flip."""
  resized = Image.fromarray(pixels).resize((enlarged[1], enlarged[0]),
                                           Image.Resampling.BILINEAR)
  top, left = offset
  window = np.asarray(resized, np.float32)[top:top + size[0],
                                           left:left + size[1]]
  if flip:
    window = window[:, ::-1]
  return (window / 255 - MEAN) / STD


@pytest.mark.parametrize('source_shape', [(128, 64, 3), (400, 200, 3)])
def test_crop_window_matches_pil(source_shape):
  size = (96, 48)
  enlarged = augmentation.RandomCrop().enlarged_size(size)
  assert enlarged == (108, 54)
  pixels = np.random.default_rng(2).integers(0, 256, source_shape, np.uint8)
  for offset in ((0, 0), (12, 6), (5, 2)):
    for flip in (False, True):
      ours = preprocessing.preprocess(
          tf.constant(pixels), size, flip,
          (enlarged, tf.constant(True), tf.constant(offset, tf.int32)))
      reference = _pil_window(pixels, enlarged, offset, size, flip)
      difference = np.abs(ours.numpy() - reference)
      # PIL rounds its resized image to uint8 with fixed-point weights: one
      # grey level (1% over for float32 rounding of the normalisation).
      assert difference.max() <= 1.01 * ONE_GREY_LEVEL, (offset, flip)
  plain = preprocessing.preprocess(
      tf.constant(pixels), size, True,
      (enlarged, tf.constant(False), tf.constant((3, 3), tf.int32)))
  np.testing.assert_array_equal(
      plain.numpy(), preprocessing.preprocess(tf.constant(pixels), size,
                                              True).numpy())


def _table(count=12):
  rng = np.random.default_rng(3)
  buffers = []
  for _ in range(count):
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 12, 3), np.uint8)).save(
        buffer, format='JPEG', quality=95)
    buffers.append(buffer.getvalue())
  ids = np.arange(count, dtype=np.int32) // 2
  return tables.ExampleTable(
      images=np.array(buffers, dtype=object), images_are_paths=False,
      person_ids=ids + 1, labels=ids, camera_ids=ids % 2,
      filenames=np.array([f'{i}.jpg' for i in range(count)], dtype=object))


def _epoch(table, **options):
  return helpers.one_epoch(table, batch_size=4, seed=1, image_size=(16, 8),
                           **options)


def test_crop_off_leaves_the_images_and_other_draws_as_they_were():
  table = _table()
  without = _epoch(table)
  never = _epoch(table, crop=augmentation.RandomCrop(probability=0.0))
  for a, b in zip(without, never):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  staged = [_epoch(table, crop=crop, augment_on_device=True,
                   staging_size=(24, 12))
            for crop in (None, augmentation.RandomCrop(probability=0.5))]
  cropped = 0
  for a, b in zip(*staged):
    for key in ('flip', 'erase_box', 'noise_seed', 'images', 'indices'):
      np.testing.assert_array_equal(a[key], b[key])
    assert not a['crop'].any()
    cropped += b['crop'].sum()
  assert 0 < cropped < len(table)
