"""tf.data input pipeline: decode, resize, augment, normalise, batch.

Reads an ``ExampleTable`` (``sa_reid_jax.datasets.tables``: from a
Market-layout folder or a built TFDS dataset) and yields numpy batches.

Preprocessing (``data.preprocessing``) follows torchvision on PIL
images, as the official code does: bilinear resize of the uint8 image to
``image_size`` (PIL's bilinear filter antialiases when shrinking, so the
resize antialiases exactly when the image is shrunk in height or width;
enlarging, e.g. Market's 128x64 to 384x128, is plain bilinear with half-pixel
centres either way), scaling to [0, 1], random horizontal flip, ImageNet
normalisation, then random erasing (Zhong et al.).
Unlike PIL, the resized image is not rounded back to uint8: values differ from
torchvision's by at most one grey level (1 / (255 * 0.225) = 0.017 after
normalisation).

Randomness is a function of (seed, epoch): a sampler
(``data.samplers``; uniform by default) draws the epoch's global batches
of table rows from it, and each example's crop, flip and erasing are drawn
from it for the example's position in the epoch (``data.augmentation``).
So (seed, epoch, step) fixes a batch, whatever the number of processes, and a
run resumed at (epoch, step) sees what an uninterrupted one would.

The optional random crop is the official RGA code's (``RandomCrop``): with
its probability the image is resized to 1.125x the input size and a window of
the input size is cut from it; it comes before the flip and the erasing, as
in the official transform list.

With ``augment_on_device=True`` the train pipeline stops after decoding: it
emits uint8 images at a small staging size plus each example's draws, and
``sa_reid_jax.data.device_augment.augment_batch`` does the resize (or enlarged
resize and crop), flip, normalisation and erasing on the accelerator, from
the staged image.
"""

from typing import Iterator

import numpy as np  # pylint: disable=g-import-not-at-top
from sa_reid_jax.datasets.tensorflow_cpu import tf  # pylint: disable=g-import-not-at-top

from sa_reid_jax.data import augmentation  # pylint: disable=g-import-not-at-top
from sa_reid_jax.data import samplers  # pylint: disable=g-import-not-at-top
from sa_reid_jax.datasets import tables  # pylint: disable=g-import-not-at-top
from sa_reid_jax.datasets import tensorflow_cpu  # pylint: disable=g-import-not-at-top

from sa_reid_jax.data import preprocessing  # pylint: disable=g-import-not-at-top
from sa_reid_jax.datasets import images as images_lib  # pylint: disable=g-import-not-at-top


def uniform_sampler(num_examples: int, batch_size: int,
                    process_count: int = 1) -> samplers.UniformSampler:
  """The default sampler: every row once per epoch, in a random order.

  Args:
    num_examples: rows in the train table.
    batch_size: per-process batch size.
    process_count: number of processes sharing the table.

  Raises:
    ValueError: when not even one global batch fits.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  if num_examples < batch_size * process_count:
    raise ValueError(f'batch_size {batch_size} is larger than one process\'s '
                     f'share of the {num_examples} train examples '
                     f'({process_count} processes)')
  return samplers.UniformSampler(num_examples, batch_size * process_count)


def _slices(table: tables.ExampleTable, rows: np.ndarray) -> dict:
  return {'image': table.images[rows], 'index': rows.astype(np.int64),
          'label': table.labels[rows], 'person_id': table.person_ids[rows],
          'camera_id': table.camera_ids[rows],
          'filename': table.filenames[rows]}


def _read(contents_or_path: tf.Tensor, images_are_paths: bool) -> tf.Tensor:
  if images_are_paths:
    return images_lib.decode_image(tf.io.read_file(contents_or_path))
  return images_lib.decode_image(contents_or_path)


_DRAW_SPECS = {'flip': tf.TensorSpec([None], tf.bool),
               'erase_box': tf.TensorSpec([None, 4], tf.int32),
               'noise_seed': tf.TensorSpec([None, 2], tf.int64),
               'crop': tf.TensorSpec([None], tf.bool),
               'crop_offset': tf.TensorSpec([None, 2], tf.int32)}


def _train_pipeline(table, plan, *, batch_size, image_size, erasing, crop,
                    num_parallel_calls, prefetch, staging_size=None):
  """Batches of the examples ``plan()`` yields, one dict of arrays per epoch.

  One pipeline (and one trace of its functions) serves all the epochs. With
  a ``staging_size``, examples are decoded only (see ``train_batches``'s
  ``augment_on_device``).
  """
  tensorflow_cpu.hide_accelerators_from_tensorflow()
  images = tf.constant(table.images)
  labels = tf.constant(table.labels)
  person_ids = tf.constant(table.person_ids)
  camera_ids = tf.constant(table.camera_ids)
  fill = erasing.fill if erasing is not None else 'zeros'

  def common(example):
    row = example['row']
    return {'labels': labels[row], 'person_ids': person_ids[row],
            'camera_ids': camera_ids[row], 'indices': row,
            'positions': tf.cast(example['position'], tf.int32)}

  def stage(example):
    image = preprocessing.to_staging_size(_read(images[example['row']],
                                   table.images_are_paths), staging_size)
    return {'images': image, **{key: example[key] for key in _DRAW_SPECS},
            **common(example)}

  def prepare(example):
    window = None
    if crop is not None:
      window = (crop.enlarged_size(image_size), example['crop'],
                example['crop_offset'])
    image = preprocessing.preprocess(
        _read(images[example['row']], table.images_are_paths),
        image_size, example['flip'], window)
    image = augmentation.erase(image, example['erase_box'], fill,
                               example['noise_seed'])
    return {'images': image, **common(example)}

  epochs = tf.data.Dataset.from_generator(plan, output_signature={
      'row': tf.TensorSpec([None], tf.int64),
      'position': tf.TensorSpec([None], tf.int64), **_DRAW_SPECS})
  examples = epochs.flat_map(tf.data.Dataset.from_tensor_slices)
  examples = examples.map(prepare if staging_size is None else stage,
                          num_parallel_calls=num_parallel_calls,
                          deterministic=True)
  return examples.batch(batch_size, drop_remainder=True).prefetch(prefetch)


def _sampler(table, sampler, batch_size, process_count):
  """`sampler`, or the uniform one, checked against the batch size."""
  if sampler is None:
    return uniform_sampler(len(table), batch_size, process_count)
  if sampler.global_batch_size != batch_size * process_count:
    raise ValueError(
        f'the sampler\'s global batch of {sampler.global_batch_size} is not '
        f'batch_size {batch_size} x {process_count} processes')
  return sampler


def _epoch_examples(sampler, *, epoch, start_step, process_index,
                    process_count, seed, **draw_options):
  """This process's rows of one epoch, with their positions and draws."""
  rows, positions = samplers.process_share(
      sampler, seed=seed, epoch=epoch, start_step=start_step,
      process_index=process_index, process_count=process_count)
  draws = augmentation.sample_epoch(
      sampler.steps_per_epoch * sampler.global_batch_size, seed=seed,
      epoch=epoch, **draw_options)
  examples = {key: values[positions] for key, values in draws.items()}
  examples.update(row=rows, position=positions)
  return examples


def _batch_stream(table, *, batch_size, seed, start_epoch, start_step,
                  num_epochs, image_size, flip_probability, erasing, crop,
                  sampler, process_index, process_count, num_parallel_calls,
                  prefetch, augment_on_device, staging_size):
  """The tf.data dataset of `train_batches`."""
  sampler = _sampler(table, sampler, batch_size, process_count)
  share = dict(process_index=process_index, process_count=process_count)
  draw_options = dict(seed=seed, image_size=tuple(image_size),
                      flip_probability=flip_probability, erasing=erasing,
                      crop=crop)
  # Checks the arguments now, not inside tf.data.
  samplers.process_share(sampler, seed=seed, epoch=start_epoch,
                         start_step=start_step, **share)
  if augment_on_device:
    staging_size = images_lib.check_size(staging_size, 'staging_size')

  def plan():
    epoch = start_epoch
    while num_epochs is None or epoch < num_epochs:
      first = start_step if epoch == start_epoch else 0
      yield _epoch_examples(sampler, epoch=epoch, start_step=first, **share,
                            **draw_options)
      epoch += 1

  return _train_pipeline(
      table, plan, batch_size=batch_size, image_size=tuple(image_size),
      erasing=erasing, crop=crop, num_parallel_calls=num_parallel_calls,
      prefetch=prefetch,
      staging_size=staging_size if augment_on_device else None)


def train_batches(table: tables.ExampleTable, *, batch_size: int, seed: int,
                  start_epoch: int = 0, start_step: int = 0,
                  num_epochs: int | None = None,
                  image_size: tuple[int, int] = (384, 128),
                  flip_probability: float = 0.5,
                  erasing: augmentation.RandomErasing | None = (
                      augmentation.RandomErasing()),
                  crop: augmentation.RandomCrop | None = None,
                  sampler: samplers.Sampler | None = None,
                  process_index: int = 0, process_count: int = 1,
                  num_parallel_calls: int = tf.data.AUTOTUNE,
                  prefetch: int = tf.data.AUTOTUNE,
                  augment_on_device: bool = False,
                  staging_size: tuple[int, int] = (128, 64),
                  ) -> Iterator[dict[str, np.ndarray]]:
  """Numpy train batches across epochs, from (start_epoch, start_step).

  One pipeline for every epoch, so epoch boundaries cost no restart. The
  rows and their order are the sampler's, this process's slice of each
  global batch (``samplers.process_share``); each example's crop, flip and
  erasing are drawn for its position in its epoch from (seed, epoch)
  (``augmentation.sample_epoch``), so an epoch's batches do not depend on
  where the stream started.

  Args:
    table: the train split.
    batch_size: per-process batch size.
    seed: the run's seed.
    start_epoch: epoch to start in (0-based); the epoch changes the order
      and the augmentation.
    start_step: step within ``start_epoch`` to start at (resuming a run).
    num_epochs: stop before this epoch; None runs forever.
    image_size: network input (height, width), default (384, 128).
    flip_probability: chance of a horizontal flip (default 0.5; 0 disables).
    erasing: random erasing parameters, None to disable.
    crop: random crop (enlarged resize and crop) parameters, None (default)
      to disable.
    sampler: the epoch's global batches (``data.samplers``); its global
      batch must be ``batch_size * process_count``. None (default): every
      row once per epoch in a random order (`uniform_sampler`).
    process_index: this process (e.g. ``jax.process_index()``).
    process_count: number of processes (e.g. ``jax.process_count()``).
    num_parallel_calls: parallel decode/augment calls (default autotuned).
    prefetch: batches prepared ahead (default autotuned).
    augment_on_device: only decode here; leave resize (or crop), flip,
      normalisation and erasing to ``device_augment.augment_batch``
      (default False).
    staging_size: (height, width) of the decoded images emitted with
      ``augment_on_device`` (default (128, 64), Market-1501's own size);
      other sizes are resized to it as ``resize`` does and rounded to uint8
      (then resized again on device: not bit-equal to the CPU path).

  Returns:
    an iterator of dicts of numpy arrays: ``images`` float32 (B, H, W, 3),
    ``labels``, ``person_ids``, ``camera_ids`` int32 (B,), ``indices``
    int64 (B,) (rows of the table), ``positions`` int32 (B,) (places in the
    epoch, unique within it, which key the augmentation and dropout). With
    ``augment_on_device``, ``images`` are uint8 (B, *staging_size, 3) and
    the draws to apply come along: ``flip`` bool (B,), ``erase_box`` int32
    (B, 4) (top, left, height, width at ``image_size``; height 0 for none),
    ``noise_seed`` int64 (B, 2) (seed of a ``'random'`` fill), ``crop``
    bool (B,) and ``crop_offset`` int32 (B, 2) (top, left in the enlarged
    image).

  Raises:
    ValueError: for a bad sampler, process share or staging size, at once
      (not inside tf.data).
  """
  return _batch_stream(
      table, batch_size=batch_size, seed=seed, start_epoch=start_epoch,
      start_step=start_step, num_epochs=num_epochs, image_size=image_size,
      flip_probability=flip_probability, erasing=erasing, crop=crop,
      sampler=sampler, process_index=process_index,
      process_count=process_count, num_parallel_calls=num_parallel_calls,
      prefetch=prefetch, augment_on_device=augment_on_device,
      staging_size=staging_size).as_numpy_iterator()


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
    image = preprocessing.preprocess(
        _read(example['image'], table.images_are_paths), image_size)
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
