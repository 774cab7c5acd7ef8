"""The on-device augmentation path against the tf.data one."""

import io

import helpers
import jax
import numpy as np
from PIL import Image
import pytest
from scipy import stats
import tensorflow as tf

from sa_reid_jax.data import augmentation
from sa_reid_jax.data import device_augment
from sa_reid_jax.data import pipeline
from sa_reid_jax.data import preprocessing
from sa_reid_jax.datasets import images as images_lib
from sa_reid_jax.datasets import tables

# Both paths compute the same float32 arithmetic with differently computed
# resize weights: they agree to ~2e-5. The bound is 1e-4, well below one
# grey level after normalisation (1 / (255 * 0.225) = 0.017).
TOLERANCE = 1e-4
IMAGE_SIZE = (384, 128)
ZEROS = augmentation.RandomErasing(probability=0.7, fill='zeros')
RANDOM = augmentation.RandomErasing(probability=0.7, fill='random')


# A small Market-layout folder (25 train images), shared with other modules.
SYNTHETIC = dict(num_ids=4, num_test_ids=1, num_cameras=3, seed=1)


@pytest.fixture(scope='module')
def table(synthetic_dataset):
  return tables.from_folder(synthetic_dataset(**SYNTHETIC), 'train')


_EPOCHS = {}


def _both_paths(table, **options):
  """(tf.data batches, staged batches) of one epoch; made once per module
  and options (tests must not change them)."""
  key = (id(table), repr(sorted(options.items())))
  if key not in _EPOCHS:
    arguments = dict(batch_size=6, seed=2, epoch=0, image_size=IMAGE_SIZE)
    arguments.update(options)
    _EPOCHS[key] = (helpers.one_epoch(table, **arguments),
                    helpers.one_epoch(table, augment_on_device=True,
                                      **arguments))
  return _EPOCHS[key]


@pytest.mark.parametrize('erasing', [ZEROS, None], ids=['erasing', 'none'])
def test_device_path_equals_tf_path(table, erasing):
  on_cpu, staged = _both_paths(table, erasing=erasing)
  assert len(on_cpu) == len(staged) == len(table) // 6 >= 3
  # Drawn for each place in the epoch, whole batches of 6.
  draws = augmentation.sample_epoch(
      len(table) // 6 * 6, seed=2, epoch=0, image_size=IMAGE_SIZE,
      flip_probability=0.5, erasing=erasing)
  augment = jax.jit(lambda batch: device_augment.augment_batch(
      batch, IMAGE_SIZE, 'zeros'))
  flips = erased = 0
  for expected, batch in zip(on_cpu, staged):
    assert batch['images'].dtype == np.uint8
    assert batch['images'].shape == (6, 128, 64, 3)
    for key in ('labels', 'person_ids', 'camera_ids', 'indices',
                'positions'):
      np.testing.assert_array_equal(batch[key], expected[key])
    positions = batch['positions']
    for key in ('flip', 'erase_box', 'noise_seed'):
      np.testing.assert_array_equal(batch[key], draws[key][positions])
    images = np.asarray(augment(batch))
    assert images.dtype == np.float32 and images.shape == (6, *IMAGE_SIZE, 3)
    np.testing.assert_allclose(images, expected['images'], rtol=0,
                               atol=TOLERANCE)
    flips += batch['flip'].sum()
    erased += (batch['erase_box'][:, 2] > 0).sum()
  assert 0 < flips < len(table)
  assert (erased > 0) == (erasing is not None)


def test_device_crop_equals_tf_crop(table):
  crop = augmentation.RandomCrop(probability=0.5)
  on_cpu, staged = _both_paths(table, erasing=ZEROS, crop=crop)
  draws = augmentation.sample_epoch(
      len(table) // 6 * 6, seed=2, epoch=0, image_size=IMAGE_SIZE,
      flip_probability=0.5, erasing=ZEROS, crop=crop)
  crop_size = crop.enlarged_size(IMAGE_SIZE)
  assert crop_size == (432, 144)
  augment = jax.jit(lambda batch: device_augment.augment_batch(
      batch, IMAGE_SIZE, 'zeros', crop_size))
  kinds = set()
  for expected, batch in zip(on_cpu, staged):
    for key in ('crop', 'crop_offset', 'flip'):
      np.testing.assert_array_equal(batch[key],
                                    draws[key][batch['positions']])
    np.testing.assert_allclose(np.asarray(augment(batch)),
                               expected['images'], rtol=0, atol=TOLERANCE)
    kinds |= set(zip(batch['crop'].tolist(), batch['flip'].tolist()))
  # Cropped and plain, mirrored and not, all met.
  assert len(kinds) == 4
  with pytest.raises(ValueError, match=r"lacks \['crop', 'crop_offset'\]"):
    device_augment.augment_batch(
        {key: value for key, value in staged[0].items()
         if not key.startswith('crop')}, IMAGE_SIZE, 'zeros', crop_size)
  with pytest.raises(ValueError, match='crop_size .* at least image_size'):
    device_augment.augment_batch(staged[0], IMAGE_SIZE, 'zeros', (380, 144))


def test_random_fill_keeps_the_boxes_and_draws_normal_values(table):
  on_cpu, staged = _both_paths(table, erasing=RANDOM)
  inside = []
  for expected, batch in zip(on_cpu, staged):
    images = np.array(device_augment.augment_batch(batch, fill='random'))
    again = np.asarray(device_augment.augment_batch(batch, fill='random'))
    np.testing.assert_array_equal(images, again)
    for image, reference, box in zip(images, expected['images'],
                                     batch['erase_box']):
      top, left, height, width = box
      values = image[top:top + height, left:left + width].copy()
      inside.append(values.ravel())
      reference = reference.copy()
      image[top:top + height, left:left + width] = 0
      reference[top:top + height, left:left + width] = 0
      np.testing.assert_allclose(image, reference, rtol=0, atol=TOLERANCE)
  inside = np.concatenate(inside)
  assert inside.size > 10000
  # N(0, 1) values: at this size the mean's and the deviation's standard
  # errors are below 0.01, so 0.05 is over five of them.
  assert abs(inside.mean()) < 0.05 and abs(inside.std() - 1) < 0.05


def _fill_statistics(images, boxes):
  """The erased values of a batch: pooled, and as (pixel, channel) boxes."""
  pooled, channel_pairs, row_pairs = [], [], []
  for image, (top, left, height, width) in zip(images, boxes):
    values = image[top:top + height, left:left + width]
    pooled.append(values.ravel())
    channel_pairs.append(values[..., :2].reshape(-1, 2))
    row_pairs.append(np.stack([values[:-1].ravel(), values[1:].ravel()], 1))
  return (np.concatenate(pooled), np.concatenate(channel_pairs),
          np.concatenate(row_pairs))


def test_random_fill_has_the_same_distribution_on_both_paths(table):
  # The official fill: N(0, 1) per pixel and channel after normalisation.
  # TensorFlow and JAX draw different values from the same boxes.
  on_cpu, staged = _both_paths(table, erasing=RANDOM)
  tf_values, jax_values = [], []
  for expected, batch in zip(on_cpu, staged):
    boxes = batch['erase_box']
    tf_values.append(_fill_statistics(expected['images'], boxes))
    jax_values.append(_fill_statistics(
        np.asarray(device_augment.augment_batch(batch, IMAGE_SIZE)), boxes))
  pooled = []
  for path in (tf_values, jax_values):
    values, channels, rows = (np.concatenate(part) for part in zip(*path))
    assert values.size > 100000
    # Standard errors at this size are ~0.003, so 0.02 is over six of them;
    # a box filled with one value per pixel (shared by channels) or per row
    # would correlate fully.
    assert abs(values.mean()) < 0.02 and abs(values.std() - 1) < 0.02
    assert abs(np.corrcoef(channels.T)[0, 1]) < 0.02
    assert abs(np.corrcoef(rows.T)[0, 1]) < 0.02
    # Fixed seeds; a wrong distribution at this size gives p far below the
    # 0.1% level.
    assert stats.kstest(values, 'norm').pvalue > 1e-3
    pooled.append(values)
  assert not np.array_equal(*pooled)
  assert stats.ks_2samp(*pooled).pvalue > 1e-3


def test_train_batches_stage_the_same_batches(table):
  options = dict(batch_size=6, seed=2, image_size=IMAGE_SIZE, erasing=ZEROS,
                 augment_on_device=True)
  # Epochs 0 and 1 streamed from one pipeline; epoch 1 started on its own.
  streamed = list(pipeline.train_batches(
      table, start_epoch=0, num_epochs=2, **options))
  one_epoch = helpers.one_epoch(table, epoch=1, **options)
  assert len(streamed) == 2 * len(one_epoch)
  for a, b in zip(streamed[len(one_epoch):], one_epoch):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def _jpeg_table(shape, count=4):
  rng = np.random.default_rng(3)
  buffers = []
  for _ in range(count):
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, np.uint8)).save(
        buffer, format='JPEG', quality=95)
    buffers.append(buffer.getvalue())
  ids = np.arange(count, dtype=np.int32)
  return tables.ExampleTable(
      images=np.array(buffers, dtype=object), images_are_paths=False,
      person_ids=ids + 1, labels=ids, camera_ids=ids % 2,
      filenames=np.array([f'{i}.jpg' for i in ids], dtype=object))


def test_other_sizes_are_staged_by_a_rounded_resize():
  table = _jpeg_table((40, 30, 3))
  staged = helpers.one_epoch(table, batch_size=4, seed=0,
                             augment_on_device=True, staging_size=(20, 10))[0]
  assert staged['images'].dtype == np.uint8
  assert staged['images'].shape == (4, 20, 10, 3)
  for row, image in zip(staged['indices'], staged['images']):
    decoded = images_lib.decode_image(tf.constant(table.images[row]))
    resized = preprocessing.resize(tf.cast(decoded, tf.float32), (20, 10))
    np.testing.assert_array_equal(
        image, np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8))


@pytest.mark.parametrize('shape', [(128, 64, 3), (150, 140, 3),
                                   (500, 200, 3)])
def test_resize_follows_the_tf_rule_when_enlarging_or_shrinking(shape):
  pixels = np.random.default_rng(4).integers(0, 256, shape, np.uint8)
  batch = {'images': np.stack([pixels, pixels]),
           'flip': np.array([False, True]),
           'erase_box': np.zeros((2, 4), np.int32),
           'noise_seed': np.zeros((2, 2), np.int64)}
  images = np.asarray(device_augment.augment_batch(batch, IMAGE_SIZE))
  for image, flip in zip(images, batch['flip']):
    expected = preprocessing.preprocess(tf.constant(pixels), IMAGE_SIZE,
                                        bool(flip)).numpy()
    np.testing.assert_allclose(image, expected, rtol=0, atol=TOLERANCE)


def test_bad_arguments_are_named():
  batch = {'images': np.zeros((2, 8, 4, 3), np.uint8),
           'flip': np.zeros(2, bool), 'erase_box': np.zeros((2, 4), np.int32),
           'noise_seed': np.zeros((2, 2), np.int64)}
  with pytest.raises(ValueError, match='fill must be one of'):
    device_augment.augment_batch(batch, fill='mean')
  with pytest.raises(ValueError, match='image_size must be'):
    device_augment.augment_batch(batch, image_size=(0, 16))
  with pytest.raises(ValueError, match='image_size must be'):
    device_augment.augment_batch(batch, image_size=(16, 8, 3))
  with pytest.raises(ValueError, match=r"lacks \['flip'\]"):
    device_augment.augment_batch({k: v for k, v in batch.items()
                                  if k != 'flip'})
  with pytest.raises(ValueError, match=r'batch\["images"\] must be uint8'):
    device_augment.augment_batch({**batch, 'images': np.zeros((2, 8, 4, 3))})
  with pytest.raises(ValueError, match=r'batch\["erase_box"\] must have'):
    device_augment.augment_batch({**batch, 'erase_box': np.zeros((2, 3))})
  table = _jpeg_table((8, 4, 3))
  with pytest.raises(ValueError, match='staging_size must be'):
    pipeline.train_batches(table, batch_size=2, seed=0,
                           augment_on_device=True, staging_size=(0, 64))
  with pytest.raises(ValueError, match='staging_size must be'):
    pipeline.train_batches(table, batch_size=2, seed=0,
                                 augment_on_device=True, staging_size=(128,))
