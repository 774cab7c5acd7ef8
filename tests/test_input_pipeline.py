"""Tests of the tf.data input pipeline."""

import io
import math
import random

import helpers
import numpy as np
from PIL import Image
import pytest
from scipy import stats
import tensorflow as tf

from sa_reid_jax.data import augmentation
from sa_reid_jax.data import pipeline
from sa_reid_jax.data import preprocessing
from sa_reid_jax.datasets import builders
from sa_reid_jax.datasets import images as images_lib
from sa_reid_jax.datasets import tables
from sa_reid_jax.datasets import tensorflow_cpu
from sa_reid_jax.models import inputs

MEAN = np.array(inputs.IMAGENET_MEAN, np.float32)
STD = np.array(inputs.IMAGENET_STD, np.float32)
# PIL rounds its resized image to uint8 (a mean error of 1/4 grey level on its
# own) and uses fixed-point weights; the pipeline keeps floats. One grey
# level, in normalised units, bounds the gap.
ONE_GREY_LEVEL = 1.0 / (255 * STD.min())
# Twice the tables' 16x8 images: the bilinear weights are 1/4 and 3/4, so a
# train image and its eval twin (mirrored or not, a box zeroed or not) come
# out of exactly representable float32 arithmetic: bit-identical.
SMALL_SIZE = (32, 16)


def _jpeg(pixels: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format='JPEG', quality=95)
  return buffer.getvalue()


def _table(num_rows: int = 30, seed: int = 0) -> tables.ExampleTable:
  """An in-memory table of tiny random JPEGs with ids and cameras."""
  rng = np.random.default_rng(seed)
  person_ids = np.repeat(np.arange(1, num_rows // 3 + 2), 3)[:num_rows]
  return tables.ExampleTable(
      images=np.array([_jpeg(rng.integers(0, 256, (16, 8, 3), np.uint8))
                       for _ in range(num_rows)], dtype=object),
      images_are_paths=False,
      person_ids=person_ids.astype(np.int32),
      labels=(person_ids - 1).astype(np.int32),
      camera_ids=(np.arange(num_rows) % 3).astype(np.int32),
      filenames=np.array([f'{i:04d}.jpg' for i in range(num_rows)],
                         dtype=object))


def _batches(dataset):
  return list(dataset.as_numpy_iterator())


def _pil_reference(pixels: np.ndarray, size: tuple[int, int],
                   flip: bool = False) -> np.ndarray:
  """torchvision's path: PIL bilinear resize, flip, /255, normalise."""
  resized = Image.fromarray(pixels).resize((size[1], size[0]),
                                           Image.Resampling.BILINEAR)
  array = np.asarray(resized, np.float32)
  if flip:
    array = array[:, ::-1]
  return (array / 255 - MEAN) / STD


@pytest.mark.parametrize('source_shape, size', [
    ((128, 64, 3), (384, 128)),   # Market-1501: enlarged 3x and 2x
    ((150, 140, 3), (384, 128)),  # taller but wider: shrinks in width
    ((500, 200, 3), (384, 128)),  # shrinks both ways (antialiased)
])
def test_preprocess_matches_pil_bilinear_and_normalisation(source_shape, size):
  rng = np.random.default_rng(1)
  pixels = rng.integers(0, 256, source_shape, np.uint8)
  for flip in (False, True):
    ours = preprocessing.preprocess(tf.constant(pixels), size, flip).numpy()
    reference = _pil_reference(pixels, size, flip)
    assert ours.shape == (*size, 3) and ours.dtype == np.float32
    difference = np.abs(ours - reference)
    # PIL's uint8 rounding and fixed-point weights: within one grey level
    # (1% over for float32 rounding of the normalisation), a third of one on
    # average (rounding alone: a quarter).
    assert difference.max() <= 1.01 * ONE_GREY_LEVEL
    assert difference.mean() <= 0.35 * ONE_GREY_LEVEL


def test_decoding_matches_pil():
  pixels = np.random.default_rng(2).integers(0, 256, (128, 64, 3), np.uint8)
  encoded = _jpeg(pixels)
  ours = images_lib.decode_image(tf.constant(encoded)).numpy()
  np.testing.assert_array_equal(ours, np.asarray(Image.open(io.BytesIO(
      encoded)).convert('RGB')))
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format='PNG')
  np.testing.assert_array_equal(
      images_lib.decode_image(tf.constant(buffer.getvalue())).numpy(),
      pixels)


def _official_erasing_boxes(rng, count, image_size, probability=0.5,
                            area_range=(0.02, 0.2), min_aspect=0.3):
  """A transcription of the official code's RandomErasing, image by image.

  Returns (top, left, height, width) rows, zeros when nothing is erased.
  """
  height, width = image_size
  boxes = np.zeros((count, 4), np.int64)
  for i in range(count):
    if rng.uniform(0, 1) > probability:
      continue
    for _ in range(100):
      target_area = rng.uniform(*area_range) * height * width
      aspect = rng.uniform(min_aspect, 1 / min_aspect)
      box_height = int(round(math.sqrt(target_area * aspect)))
      box_width = int(round(math.sqrt(target_area / aspect)))
      if box_width <= width and box_height <= height:
        top = rng.randint(0, height - box_height)
        left = rng.randint(0, width - box_width)
        if box_height and box_width:
          boxes[i] = top, left, box_height, box_width
        break
  return boxes


def test_erasing_defaults_are_the_official_code():
  erasing = augmentation.RandomErasing()
  assert erasing.probability == 0.5 and erasing.area_range == (0.02, 0.2)
  assert erasing.min_aspect == 0.3 and erasing.fill == 'random'
  assert erasing.max_attempts == 100


def test_erasing_boxes_follow_the_official_code():
  height, width = 384, 128
  boxes = augmentation.sample_erasing_boxes(
      np.random.default_rng(0), 20000, (height, width),
      augmentation.RandomErasing())
  assert boxes.dtype == np.int32 and boxes.shape == (20000, 4)
  top, left, box_height, box_width = boxes.T
  erased = box_height > 0
  # 20000 draws at p = 0.5: standard deviation 0.0035 (0.015: over four).
  assert abs(erased.mean() - 0.5) < 0.015
  assert (box_width[~erased] == 0).all() and (box_width[erased] > 0).all()
  top, left = top[erased], left[erased]
  box_height, box_width = box_height[erased], box_width[erased]
  assert (top >= 0).all() and (left >= 0).all()
  assert (box_height <= height).all() and (box_width <= width).all()
  assert (top + box_height <= height).all()
  assert (left + box_width <= width).all()
  # Sides are rounded to whole pixels: allow half a pixel on each.
  area_high = (box_height + 0.5) * (box_width + 0.5) / (height * width)
  area_low = (box_height - 0.5) * (box_width - 0.5) / (height * width)
  assert (area_high >= 0.02).all() and (area_low <= 0.2).all()
  area = box_height * box_width / (height * width)
  # Areas uniform on [0.02, 0.2] (before retries and rounding): the 5% and
  # 95% quantiles are near 0.029 and 0.191.
  assert np.quantile(area, 0.05) < 0.03 and np.quantile(area, 0.95) > 0.18
  aspect_low = (box_height - 0.5) / (box_width + 0.5)
  aspect_high = (box_height + 0.5) / (box_width - 0.5)
  assert (aspect_high >= 0.3).all() and (aspect_low <= 1 / 0.3).all()
  # Wide boxes are often too wide for 128 pixels (retried), but both ends
  # of the aspect range are reached.
  aspect = box_height / box_width
  assert aspect.min() < 0.35 and aspect.max() > 3.2
  # Corners are spread over the whole range where the box fits.
  assert top.min() == 0 and (top + box_height).max() == height


@pytest.mark.parametrize('image_size', [(384, 128), (10, 40)])
def test_erasing_boxes_are_distributed_as_the_official_code(image_size):
  # At 10x40 many draws do not fit (retried) and a box may be exactly as
  # tall as the image (accepted: h <= H).
  ours = augmentation.sample_erasing_boxes(
      np.random.default_rng(1), 20000, image_size,
      augmentation.RandomErasing())
  official = _official_erasing_boxes(random.Random(2), 20000, image_size)
  if image_size == (10, 40):
    assert (ours[:, 2] == 10).sum() > 100 and (official[:, 2] == 10).any()
  for boxes in (ours, official):
    # 20000 draws at p = 0.5: standard deviation 0.0035.
    assert abs((boxes[:, 2] > 0).mean() - 0.5) < 0.015
  height, width = image_size
  ours, official = ours[ours[:, 2] > 0], official[official[:, 2] > 0]

  def statistics(boxes):
    top, left, box_height, box_width = boxes.T.astype(float)
    return {'area': box_height * box_width, 'aspect': box_height / box_width,
            'height': box_height,
            'top': top / np.maximum(height - box_height, 1),
            'left': left / np.maximum(width - box_width, 1)}

  for name, values in statistics(ours).items():
    # Same distribution: a two-sample Kolmogorov-Smirnov test at the 0.1%
    # level (fixed seeds, so deterministic).
    result = stats.ks_2samp(values, statistics(official)[name])
    assert result.pvalue > 1e-3, (name, result)


def test_erasing_can_be_switched_off():
  never = augmentation.sample_erasing_boxes(
      np.random.default_rng(0), 100, (384, 128),
      augmentation.RandomErasing(probability=0.0))
  assert (never == 0).all()


def test_erase_fills_exactly_the_box():
  image = tf.ones((12, 6, 3))
  box = np.array([3, 1, 4, 2], np.int32)
  expected = np.ones((12, 6, 3), np.float32)
  expected[3:7, 1:3] = 0
  np.testing.assert_array_equal(
      augmentation.erase(image, tf.constant(box)).numpy(), expected)
  untouched = augmentation.erase(image, tf.zeros(4, tf.int32)).numpy()
  np.testing.assert_array_equal(untouched, np.ones((12, 6, 3)))
  seed = tf.constant([5, 6], tf.int64)
  big = tf.constant([10, 20, 200, 100], tf.int32)
  noisy = augmentation.erase(tf.ones((384, 128, 3)), big, 'random', seed)
  noisy = noisy.numpy()
  values = noisy[10:210, 20:120].copy()
  # 60000 N(0, 1) values: standard errors 0.004 (mean) and 0.003 (std);
  # 0.02 is five of them.
  assert abs(values.mean()) < 0.02 and abs(values.std() - 1) < 0.02
  noisy[10:210, 20:120] = 1
  assert (noisy == 1).all()
  again = augmentation.erase(tf.ones((384, 128, 3)), big, 'random', seed)
  np.testing.assert_array_equal(again.numpy()[10:210, 20:120], values)


def test_train_images_are_erased_where_drawn():
  table = _table()
  erasing = augmentation.RandomErasing(probability=1.0, fill='zeros')
  batches = _train(table, erasing=erasing, flip_probability=0.0)
  # Drawn for each place in the epoch: 7 batches of 4.
  draws = augmentation.sample_epoch(
      28, seed=3, epoch=0, image_size=SMALL_SIZE,
      flip_probability=0.0, erasing=erasing)
  plain = _batches(pipeline.eval_dataset(
      table, batch_size=30, image_size=SMALL_SIZE))[0]['images']
  for step, batch in enumerate(batches):
    np.testing.assert_array_equal(batch['positions'],
                                  np.arange(4 * step, 4 * step + 4))
    for row, position, image in zip(batch['indices'], batch['positions'],
                                    batch['images']):
      top, left, height, width = draws['erase_box'][position]
      assert height > 0
      expected = plain[row].copy()
      expected[top:top + height, left:left + width] = 0
      np.testing.assert_array_equal(image, expected)  # see SMALL_SIZE


@pytest.mark.parametrize('field, value', [
    ('probability', 1.5), ('area_range', (0.5, 0.2)), ('min_aspect', 0.0),
    ('fill', 'mean'), ('max_attempts', 0)])
def test_random_erasing_rejects_bad_parameters(field, value):
  with pytest.raises(ValueError, match=f'RandomErasing.{field}'):
    augmentation.RandomErasing(**{field: value})


def _train(table, **options):
  arguments = dict(batch_size=4, seed=3, epoch=0, image_size=SMALL_SIZE)
  arguments.update(options)
  return helpers.one_epoch(table, **arguments)


def test_train_batches_have_the_documented_format():
  table = _table()
  batches = _train(table)
  assert len(batches) == pipeline.uniform_sampler(30, 4).steps_per_epoch == 7
  batch = batches[0]
  assert batch['images'].shape == (4, *SMALL_SIZE, 3)
  assert batch['images'].dtype == np.float32
  for key in ('labels', 'person_ids', 'camera_ids'):
    assert batch[key].dtype == np.int32
    np.testing.assert_array_equal(
        batch[key], getattr(table, key)[batch['indices']])
  seen = np.concatenate([b['indices'] for b in batches])
  assert len(set(seen)) == len(seen) == 28


def test_train_is_deterministic_in_seed_and_epoch():
  table = _table()
  first, again = _train(table), _train(table)
  for a, b in zip(first, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  order = lambda batches: np.concatenate([b['indices'] for b in batches])
  assert not np.array_equal(order(first), order(_train(table, epoch=1)))
  assert not np.array_equal(order(first), order(_train(table, seed=4)))


def _images_by_row(batches):
  return {int(row): image for batch in batches
          for row, image in zip(batch['indices'], batch['images'])}


def test_flips_mirror_about_half_the_images():
  table = _table()
  flipped_rows = []
  plain = _batches(pipeline.eval_dataset(
      table, batch_size=30, image_size=SMALL_SIZE))[0]['images']
  # Bit-identical to the eval image or to its mirror image (SMALL_SIZE).
  for row, image in _images_by_row(_train(table, erasing=None)).items():
    if not np.array_equal(image, plain[row]):
      np.testing.assert_array_equal(image, plain[row][:, ::-1])
      flipped_rows.append(row)
  assert 0 < len(flipped_rows) < 28
  for batch in _train(table, flip_probability=0.0, erasing=None):
    np.testing.assert_array_equal(batch['images'], plain[batch['indices']])


def test_augmentation_depends_on_epoch_not_on_process():
  table = _table()
  whole = _images_by_row(_train(table))
  halves = {}
  for index in range(2):
    halves.update(_images_by_row(_train(table, batch_size=2,
                                        process_index=index,
                                        process_count=2)))
  shared = set(halves) & set(whole)
  assert len(shared) >= 20
  for row in shared:
    np.testing.assert_array_equal(halves[row], whole[row])
  next_epoch = _images_by_row(_train(table, epoch=1))
  changed = [row for row in whole if row in next_epoch and
             not np.array_equal(whole[row], next_epoch[row])]
  assert len(changed) > len(whole) // 4


def test_resuming_at_a_step_gives_the_remaining_batches():
  table = _table()
  full = _train(table)
  resumed = _train(table, start_step=3)
  assert len(resumed) == len(full) - 3
  for a, b in zip(full[3:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  stream = pipeline.train_batches(
      table, batch_size=4, seed=3, start_epoch=1, start_step=5, num_epochs=3,
      image_size=SMALL_SIZE)
  expected = (_train(table, epoch=1)[5:] + _train(table, epoch=2))
  streamed = list(stream)
  assert len(streamed) == len(expected) == 9
  for a, b in zip(expected, streamed):
    np.testing.assert_array_equal(a['indices'], b['indices'])
    np.testing.assert_array_equal(a['images'], b['images'])
  with pytest.raises(ValueError, match='start_step 8'):
    _train(table, start_step=8)


@pytest.mark.parametrize('num_rows, process_count', [(30, 3), (31, 4)])
def test_sharding_gives_each_example_to_one_process(num_rows, process_count):
  table = _table(num_rows)
  shares = []
  steps = pipeline.uniform_sampler(num_rows, 1, process_count).steps_per_epoch
  for index in range(process_count):
    batches = _train(table, batch_size=1, process_index=index,
                     process_count=process_count)
    assert len(batches) == steps == num_rows // process_count
    shares.append([int(b['indices'][0]) for b in batches])
  everything = sorted(sum(shares, []))
  assert len(everything) == len(set(everything))
  if num_rows % process_count == 0:
    assert everything == list(range(num_rows))
  # Together the processes see the one-process run's global batches.
  whole = _train(table, batch_size=process_count)
  for step, batch in enumerate(whole):
    together = [share[step] for share in shares]
    np.testing.assert_array_equal(batch['indices'], together)


def test_bad_process_or_batch_arguments():
  table = _table()
  with pytest.raises(ValueError, match='process_index 3'):
    _train(table, process_index=3, process_count=3)
  with pytest.raises(ValueError, match='batch_size 16 is larger'):
    _train(table, batch_size=16, process_count=2)


def test_eval_pads_the_last_batch_with_a_mask():
  table = _table(23)
  batches = _batches(pipeline.eval_dataset(
      table, batch_size=8, image_size=SMALL_SIZE))
  assert len(batches) == pipeline.eval_steps(23, 8) == 3
  mask = np.concatenate([b['mask'] for b in batches])
  assert mask.dtype == bool and mask.sum() == 23 and not mask[23:].any()
  indices = np.concatenate([b['indices'] for b in batches])[mask]
  np.testing.assert_array_equal(indices, np.arange(23))
  filenames = np.concatenate([b['filenames'] for b in batches])[mask]
  assert [f.decode() for f in filenames] == list(table.filenames)
  assert batches[-1]['images'].shape == (8, *SMALL_SIZE, 3)


def test_eval_sharding_counts_every_image_once():
  table = _table(23)
  seen = []
  for index in range(3):
    batches = _batches(pipeline.eval_dataset(
        table, batch_size=4, image_size=SMALL_SIZE, process_index=index,
        process_count=3))
    assert len(batches) == pipeline.eval_steps(23, 4, 3) == 2
    for batch in batches:
      seen.extend(batch['indices'][batch['mask']])
  assert sorted(seen) == list(range(23))


def test_folder_and_tfds_sources_give_identical_batches(data, tmp_path):
  # `data`: the end-to-end tests' Market-layout folder.
  builders.prepare('market_layout_folder', data, str(tmp_path / 'tfds'))
  compared = {}
  for split, make in (('train', _train), ('query', None)):
    from_folder = tables.from_folder(data, split)
    from_tfds = tables.from_tfds('market_layout_folder', split,
                                 data_dir=str(tmp_path / 'tfds'))
    if make is not None:
      pairs = zip(make(from_folder, image_size=(64, 32)),
                  make(from_tfds, image_size=(64, 32)))
    else:
      pairs = zip(*(_batches(pipeline.eval_dataset(
          t, batch_size=3, image_size=(64, 32)))
                    for t in (from_folder, from_tfds)))
    for a, b in pairs:
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])
      rows = a['mask'].sum() if 'mask' in a else len(a['indices'])
      compared[split] = compared.get(split, 0) + rows
  # Every image: the train epoch's whole batches of 4, every query.
  train, query = (len(tables.from_folder(data, split))
                  for split in ('train', 'query'))
  assert compared == {'train': train // 4 * 4, 'query': query} and query


def test_tensorflow_sees_no_accelerator():
  tensorflow_cpu.hide_accelerators_from_tensorflow()
  assert not tf.config.get_visible_devices('GPU')
  assert not tf.config.get_visible_devices('TPU')
