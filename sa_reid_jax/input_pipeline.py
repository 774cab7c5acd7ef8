"""tf.data input pipeline: decode, resize, augment, normalise, batch.

Reads an ``ExampleTable`` (``sa_reid_jax.datasets.tables``: from a
Market-layout folder or a built TFDS dataset) and yields numpy batches.

Preprocessing follows torchvision on PIL images, as the official code does:
bilinear resize of the uint8 image to ``image_size`` (PIL's bilinear filter
antialiases when shrinking, so the resize antialiases exactly when the image
is shrunk in height or width; enlarging, e.g. Market's 128x64 to 384x128, is
plain bilinear with half-pixel centres either way), scaling to [0, 1], random
horizontal flip, ImageNet normalisation, then random erasing (Zhong et al.).
Unlike PIL, the resized image is not rounded back to uint8: values differ from
torchvision's by at most one grey level (1 / (255 * 0.225) = 0.017 after
normalisation).

Randomness is a function of (seed, epoch): the epoch's order is a
permutation drawn from it, and each example's flip and erasing are drawn from
it for the example's row (``datasets.augmentation``). So (seed, epoch, step)
fixes a batch, and a run resumed at (epoch, step) sees what an uninterrupted
one would.

With ``augment_on_device=True`` the train pipeline stops after decoding: it
emits uint8 images at a small staging size plus each example's flip and
erasing draws, and ``sa_reid_jax.device_augment.augment_batch`` does the
resize, flip, normalisation and erasing on the accelerator.
"""

import functools
import os
from typing import Iterator

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from sa_reid_jax.datasets import augmentation  # pylint: disable=g-import-not-at-top
from sa_reid_jax.datasets import tables  # pylint: disable=g-import-not-at-top
from sa_reid_jax.datasets import tensorflow_cpu  # pylint: disable=g-import-not-at-top

# Defined beside the TensorFlow-free device augmentation, used by both paths.
from sa_reid_jax.device_augment import IMAGENET_MEAN  # pylint: disable=g-import-not-at-top
from sa_reid_jax.device_augment import IMAGENET_STD  # pylint: disable=g-import-not-at-top
from sa_reid_jax.device_augment import check_size  # pylint: disable=g-import-not-at-top


def decode_image(contents: tf.Tensor) -> tf.Tensor:
  """Decodes JPEG (with libjpeg's accurate DCT, as PIL) or PNG/BMP/GIF bytes.

  Args:
    contents: scalar string tensor, the file's bytes.

  Returns:
    uint8 tensor (height, width, 3).
  """
  image = tf.cond(
      tf.io.is_jpeg(contents),
      lambda: tf.io.decode_jpeg(contents, channels=3,
                                dct_method='INTEGER_ACCURATE'),
      lambda: tf.io.decode_image(contents, channels=3,
                                 expand_animations=False))
  image.set_shape([None, None, 3])
  return image


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
               flip: tf.Tensor | bool = False) -> tf.Tensor:
  """Mirrors (optionally), resizes and normalises one decoded image.

  Resizing is symmetric, so mirroring the small image first gives the same
  result as torchvision's order (resize, flip, normalise) on fewer pixels.

  Args:
    image: uint8 tensor (height, width, 3).
    image_size: output (height, width).
    flip: whether to mirror left-right (a bool or a scalar bool tensor).

  Returns:
    float32 tensor (*image_size, 3): (pixel / 255 - mean) / std.
  """
  pixels = tf.cast(image, tf.float32)
  pixels = tf.cond(tf.convert_to_tensor(flip),
                   lambda: tf.reverse(pixels, axis=[1]), lambda: pixels)
  scale, shift = _normalization_maps(tuple(image_size))
  return resize(pixels, image_size) * scale + shift


def steps_per_epoch(num_examples: int, batch_size: int,
                    process_count: int = 1) -> int:
  """Train steps per epoch, equal on every process.

  Args:
    num_examples: rows in the train table.
    batch_size: per-process batch size.
    process_count: number of processes sharing the table.

  Returns:
    num_examples // (batch_size * process_count): whole global batches.

  Raises:
    ValueError: when not even one batch fits.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  steps = num_examples // (batch_size * process_count)
  if steps < 1:
    raise ValueError(f'batch_size {batch_size} is larger than one process\'s '
                     f'share of the {num_examples} train examples '
                     f'({process_count} processes)')
  return steps


def _slices(table: tables.ExampleTable, rows: np.ndarray) -> dict:
  return {'image': table.images[rows], 'index': rows.astype(np.int64),
          'label': table.labels[rows], 'person_id': table.person_ids[rows],
          'camera_id': table.camera_ids[rows],
          'filename': table.filenames[rows]}


def _read(contents_or_path: tf.Tensor, images_are_paths: bool) -> tf.Tensor:
  if images_are_paths:
    return decode_image(tf.io.read_file(contents_or_path))
  return decode_image(contents_or_path)


def epoch_order(num_examples: int, *, batch_size: int, seed: int, epoch: int,
                start_step: int = 0, process_index: int = 0,
                process_count: int = 1) -> np.ndarray:
  """The table rows one process trains on in one epoch, in order.

  All rows are permuted by a generator seeded with (seed, epoch) and cut into
  global batches of ``batch_size * process_count``; process p takes the p-th
  slice of ``batch_size`` rows of each. The global batches therefore do not
  depend on the process count: one process with batch 2B sees exactly what
  two processes with batch B see together, and every row goes to at most one
  process (the rows after the last whole global batch are left out).

  Args:
    num_examples: rows in the train table.
    batch_size: per-process batch size.
    seed: the run's seed.
    epoch: the epoch.
    start_step: drop the batches before this step (resuming).
    process_index: this process.
    process_count: number of processes.

  Returns:
    int64 rows, ``(steps_per_epoch - start_step) * batch_size`` of them.

  Raises:
    ValueError: for a process index out of range, a batch larger than a
      process's share, or a start_step beyond the epoch.
  """
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} must be in '
                     f'[0, process_count={process_count})')
  steps = steps_per_epoch(num_examples, batch_size, process_count)
  if not 0 <= start_step <= steps:
    raise ValueError(f'start_step {start_step} must be in [0, {steps}]')
  rows = np.random.default_rng([seed, epoch]).permutation(num_examples)
  rows = rows[:steps * batch_size * process_count].astype(np.int64)
  per_step = rows.reshape(steps, process_count, batch_size)
  return per_step[start_step:, process_index].reshape(-1)


def _to_staging_size(image: tf.Tensor,
                     staging_size: tuple[int, int]) -> tf.Tensor:
  """Resizes a uint8 image to ``staging_size`` (rounded), unless already so."""
  same = tf.reduce_all(tf.shape(image)[:2] == tf.constant(staging_size))

  def resized():
    pixels = resize(tf.cast(image, tf.float32), staging_size)
    return tf.cast(tf.clip_by_value(tf.round(pixels), 0, 255), tf.uint8)

  image = tf.cond(same, lambda: image, resized)
  return tf.ensure_shape(image, [*staging_size, 3])


def _train_pipeline(table, plan, *, batch_size, image_size, erasing,
                    num_parallel_calls, prefetch, staging_size=None):
  """Batches of the examples ``plan()`` yields, one dict of arrays per epoch.

  One pipeline (and one trace of its functions) serves all the epochs. With
  a ``staging_size``, examples are decoded only (see ``train_dataset``'s
  ``augment_on_device``).
  """
  tensorflow_cpu.hide_accelerators_from_tensorflow()
  images = tf.constant(table.images)
  labels = tf.constant(table.labels)
  person_ids = tf.constant(table.person_ids)
  camera_ids = tf.constant(table.camera_ids)
  fill = erasing.fill if erasing is not None else 'zeros'

  def stage(example):
    row = example['row']
    image = _to_staging_size(_read(images[row], table.images_are_paths),
                             staging_size)
    return {'images': image, 'flip': example['flip'],
            'erase_box': example['erase_box'],
            'noise_seed': example['noise_seed'], 'labels': labels[row],
            'person_ids': person_ids[row], 'camera_ids': camera_ids[row],
            'indices': row}

  def prepare(example):
    row = example['row']
    image = preprocess(_read(images[row], table.images_are_paths),
                       image_size, example['flip'])
    image = augmentation.erase(image, example['erase_box'], fill,
                               example['noise_seed'])
    return {'images': image, 'labels': labels[row],
            'person_ids': person_ids[row], 'camera_ids': camera_ids[row],
            'indices': row}

  epochs = tf.data.Dataset.from_generator(plan, output_signature={
      'row': tf.TensorSpec([None], tf.int64),
      'flip': tf.TensorSpec([None], tf.bool),
      'erase_box': tf.TensorSpec([None, 4], tf.int32),
      'noise_seed': tf.TensorSpec([None, 2], tf.int64)})
  examples = epochs.flat_map(tf.data.Dataset.from_tensor_slices)
  examples = examples.map(prepare if staging_size is None else stage,
                          num_parallel_calls=num_parallel_calls,
                          deterministic=True)
  return examples.batch(batch_size, drop_remainder=True).prefetch(prefetch)


def _epoch_examples(table, order, *, seed, epoch, image_size,
                    flip_probability, erasing):
  draws = augmentation.sample_epoch(
      len(table), seed=seed, epoch=epoch, image_size=tuple(image_size),
      flip_probability=flip_probability, erasing=erasing)
  examples = {key: values[order] for key, values in draws.items()}
  examples['row'] = order
  return examples


def train_dataset(table: tables.ExampleTable, *, batch_size: int, seed: int,
                  epoch: int, start_step: int = 0,
                  image_size: tuple[int, int] = (384, 128),
                  flip_probability: float = 0.5,
                  erasing: augmentation.RandomErasing | None = (
                      augmentation.RandomErasing()),
                  process_index: int = 0, process_count: int = 1,
                  num_parallel_calls: int = tf.data.AUTOTUNE,
                  prefetch: int = tf.data.AUTOTUNE,
                  augment_on_device: bool = False,
                  staging_size: tuple[int, int] = (128, 64)
                  ) -> tf.data.Dataset:
  """One epoch of shuffled, augmented train batches for this process.

  The rows and their order are ``epoch_order``'s; each example's flip and
  erasing are drawn for its row from (seed, epoch)
  (``augmentation.sample_epoch``).

  Args:
    table: the train split.
    batch_size: per-process batch size.
    seed: the run's seed.
    epoch: the epoch (0-based); changes the order and the augmentation.
    start_step: first step of the epoch to produce (resuming a run).
    image_size: network input (height, width), default (384, 128).
    flip_probability: chance of a horizontal flip (default 0.5; 0 disables).
    erasing: random erasing parameters, None to disable.
    process_index: this process (e.g. ``jax.process_index()``).
    process_count: number of processes (e.g. ``jax.process_count()``).
    num_parallel_calls: parallel decode/augment calls (default autotuned).
    prefetch: batches prepared ahead (default autotuned).
    augment_on_device: only decode here; leave resize, flip, normalisation
      and erasing to ``device_augment.augment_batch`` (default False).
    staging_size: (height, width) of the decoded images emitted with
      ``augment_on_device`` (default (128, 64), Market-1501's own size);
      other sizes are resized to it as ``resize`` does and rounded to uint8
      (then resized again on device: not bit-equal to the CPU path).

  Returns:
    a dataset of dicts: ``images`` float32 (B, H, W, 3), ``labels``,
    ``person_ids``, ``camera_ids`` int32 (B,), ``indices`` int64 (B,) (rows
    of the table). With ``augment_on_device``, ``images`` are uint8
    (B, *staging_size, 3) and the draws to apply come along: ``flip`` bool
    (B,), ``erase_box`` int32 (B, 4) (top, left, height, width at
    ``image_size``; height 0 for none), ``noise_seed`` int64 (B, 2) (seed of
    a ``'random'`` fill).
  """
  order = epoch_order(len(table), batch_size=batch_size, seed=seed,
                      epoch=epoch, start_step=start_step,
                      process_index=process_index, process_count=process_count)
  examples = _epoch_examples(table, order, seed=seed, epoch=epoch,
                             image_size=image_size,
                             flip_probability=flip_probability,
                             erasing=erasing)
  return _train_pipeline(
      table, lambda: iter([examples]), batch_size=batch_size,
      image_size=image_size, erasing=erasing,
      num_parallel_calls=num_parallel_calls, prefetch=prefetch,
      staging_size=(check_size(staging_size, 'staging_size')
                    if augment_on_device else None))


def train_batches(table: tables.ExampleTable, *, batch_size: int, seed: int,
                  start_epoch: int = 0, start_step: int = 0,
                  num_epochs: int | None = None,
                  image_size: tuple[int, int] = (384, 128),
                  flip_probability: float = 0.5,
                  erasing: augmentation.RandomErasing | None = (
                      augmentation.RandomErasing()),
                  process_index: int = 0, process_count: int = 1,
                  num_parallel_calls: int = tf.data.AUTOTUNE,
                  prefetch: int = tf.data.AUTOTUNE,
                  augment_on_device: bool = False,
                  staging_size: tuple[int, int] = (128, 64),
                  ) -> Iterator[dict[str, np.ndarray]]:
  """Numpy train batches across epochs, from (start_epoch, start_step).

  Yields exactly the batches of ``train_dataset`` for each epoch in turn,
  from one pipeline, so epoch boundaries cost no restart.

  Args:
    table: the train split.
    batch_size: per-process batch size.
    seed: the run's seed.
    start_epoch: epoch to start in.
    start_step: step within ``start_epoch`` to start at.
    num_epochs: stop before this epoch; None runs forever.
    image_size, flip_probability, erasing, process_index, process_count,
      num_parallel_calls, prefetch, augment_on_device, staging_size: as for
      ``train_dataset``.

  Returns:
    an iterator of dicts of numpy arrays (see ``train_dataset``).
  """
  order_options = dict(batch_size=batch_size, seed=seed,
                       process_index=process_index,
                       process_count=process_count)
  epoch_order(len(table), epoch=start_epoch, start_step=start_step,
              **order_options)  # checks the arguments now, not in tf.data
  if augment_on_device:
    staging_size = check_size(staging_size, 'staging_size')

  def plan():
    epoch = start_epoch
    while num_epochs is None or epoch < num_epochs:
      first = start_step if epoch == start_epoch else 0
      order = epoch_order(len(table), epoch=epoch, start_step=first,
                          **order_options)
      yield _epoch_examples(table, order, seed=seed, epoch=epoch,
                            image_size=image_size,
                            flip_probability=flip_probability,
                            erasing=erasing)
      epoch += 1

  dataset = _train_pipeline(
      table, plan, batch_size=batch_size, image_size=image_size,
      erasing=erasing, num_parallel_calls=num_parallel_calls,
      prefetch=prefetch,
      staging_size=staging_size if augment_on_device else None)
  return dataset.as_numpy_iterator()


def eval_steps(num_examples: int, batch_size: int,
               process_count: int = 1) -> int:
  """Eval batches per process: enough for every row, equal on all processes.

  Args:
    num_examples: rows in the table.
    batch_size: per-process batch size.
    process_count: number of processes.

  Returns:
    ceil(ceil(num_examples / process_count) / batch_size).
  """
  per_process = -(-num_examples // process_count)
  return -(-per_process // batch_size)


def eval_dataset(table: tables.ExampleTable, *, batch_size: int,
                 image_size: tuple[int, int] = (384, 128),
                 process_index: int = 0, process_count: int = 1,
                 num_parallel_calls: int = tf.data.AUTOTUNE,
                 prefetch: int = tf.data.AUTOTUNE) -> tf.data.Dataset:
  """Query or gallery batches in file order, padded so every image counts once.

  Row i goes to process i % count. Every process yields ``eval_steps``
  batches; padding rows repeat a real image and have ``mask`` False.

  Args:
    table: the query or gallery split.
    batch_size: per-process batch size.
    image_size: network input (height, width), default (384, 128).
    process_index: this process.
    process_count: number of processes.
    num_parallel_calls: parallel decode calls (default autotuned).
    prefetch: batches prepared ahead (default autotuned).

  Returns:
    a dataset of dicts: ``images`` float32 (B, H, W, 3), ``mask`` bool (B,),
    ``person_ids``, ``camera_ids``, ``labels`` int32, ``indices`` int64 (rows
    of the table), ``filenames`` bytes.
  """
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} must be in '
                     f'[0, process_count={process_count})')
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  tensorflow_cpu.hide_accelerators_from_tensorflow()
  rows = np.arange(len(table))[process_index::process_count]
  padded_size = eval_steps(len(table), batch_size, process_count) * batch_size
  mask = np.arange(padded_size) < len(rows)
  filler = rows[:1] if len(rows) else np.zeros(1, np.int64)
  rows = np.concatenate([rows, np.repeat(filler, padded_size - len(rows))])

  def prepare(example):
    image = preprocess(_read(example['image'], table.images_are_paths),
                       image_size)
    return {'images': image, 'mask': example['mask'],
            'labels': example['label'], 'person_ids': example['person_id'],
            'camera_ids': example['camera_id'], 'indices': example['index'],
            'filenames': example['filename']}

  slices = _slices(table, rows)
  slices['mask'] = mask
  dataset = tf.data.Dataset.from_tensor_slices(slices)
  dataset = dataset.map(prepare, num_parallel_calls=num_parallel_calls,
                        deterministic=True)
  return dataset.batch(batch_size).prefetch(prefetch)
