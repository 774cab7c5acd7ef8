"""A split held in memory as one row per image: what the input pipeline reads.

A config's dataset block becomes tables through `sources.read_splits`.
Two sources give the same table: a Market-layout folder (``from_folders``,
``from_folder``: file paths, read lazily by the pipeline after every image
was checked decodable) and a built TFDS dataset (``from_tfds``: the encoded
images themselves, checked when it was built). Rows are in file-name order
either way, so both sources yield identical batches. List files and
person folders (`list_file`, `person_folders`) become tables through
``from_records``.
"""

import dataclasses
import logging as std_logging
from typing import Callable, Sequence

import numpy as np  # pylint: disable=g-import-not-at-top
from sa_reid_jax.datasets.tensorflow_cpu import tf  # pylint: disable=g-import-not-at-top,unused-import
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

from sa_reid_jax.datasets import builders  # pylint: disable=g-import-not-at-top
from sa_reid_jax.datasets import image_check  # pylint: disable=g-import-not-at-top
from sa_reid_jax.datasets import market_layout  # pylint: disable=g-import-not-at-top
from sa_reid_jax.datasets import tensorflow_cpu  # pylint: disable=g-import-not-at-top


@dataclasses.dataclass(frozen=True)
class ExampleTable:
  """One split, one row per image, in file-name order.

  Attributes:
    images: object array; file paths when ``images_are_paths``, else the
      encoded image bytes.
    images_are_paths: which of the two ``images`` holds.
    person_ids: int32, as in the file names (-1 junk, 0 distractor).
    labels: int32 train classes 0..K-1 (sorted person-id order), or
      ``builders.NO_LABEL`` (-1) outside the train split.
    camera_ids: int32, 0-based; -1 where the source has no cameras
      (`image_records.UNKNOWN_CAMERA`: list files and person folders
      without them).
    filenames: object array of base names (list files and person folders:
      the path relative to the list file's or split's folder).
  """
  images: np.ndarray
  images_are_paths: bool
  person_ids: np.ndarray
  labels: np.ndarray
  camera_ids: np.ndarray
  filenames: np.ndarray

  def __len__(self) -> int:
    return len(self.filenames)

  @property
  def num_classes(self) -> int:
    """Number of train classes (0 when the table has no labels)."""
    return int(self.labels.max()) + 1 if len(self) else 0


def from_folders(root: str, splits: Sequence[str],
                 log: Callable[[str], None] = print
                 ) -> dict[str, ExampleTable]:
  """Lists splits of a Market-layout folder, every image checked readable.

  All images of all `splits` are decoded once (in parallel; verdicts cached
  per file by size and modification time, see `image_check`) before
  anything else happens, so a corrupt file stops a run at its start, with
  one error listing every such file, not minutes in with a decoder
  traceback. Hidden and system files (``.DS_Store``, ``._name.jpg``,
  ``Thumbs.db``) are skipped with a count logged.

  Args:
    root: dataset folder holding ``bounding_box_train/``, ``query/`` and
      ``bounding_box_test/``.
    splits: which of ``'train'``, ``'query'``, ``'gallery'`` to list.
    log: where messages go.

  Returns:
    {split: its table}; train labels as in the TFDS builders.

  Raises:
    LayoutError: naming the missing folder or the file at fault;
      ``image_check.UnreadableImagesError`` (a LayoutError) listing every
      image that cannot be read or decoded.
  """
  records = {split: market_layout.scan_split(root, split, log)
             for split in splits}
  image_check.require_readable(
      [record.path for split in splits for record in records[split]], root,
      log)
  return {split: from_records(split, records[split]) for split in splits}


def from_folder(root: str, split: str,
                log: Callable[[str], None] = print) -> ExampleTable:
  """`from_folders` for one split."""
  return from_folders(root, (split,), log)[split]


def from_records(split: str, records) -> ExampleTable:
  """The table of a split's checked image records, in their order.

  Args:
    split: ``'train'`` gets labels 0..K-1 (`market_layout.train_labels`),
      the other splits ``builders.NO_LABEL``.
    records: objects with ``path``, ``person_id``, ``camera_id`` (0-based,
      or -1 where unknown: `image_records.UNKNOWN_CAMERA`) and ``filename``
      (`market_layout.ImageRecord`, `image_records.ImageEntry`).

  Returns:
    the table, its images the files' paths.

  Raises:
    LayoutError: naming the first junk (person id -1) image of a train
      split.
  """
  if split == 'train':
    labels = market_layout.train_labels(records)
  else:
    labels = [builders.NO_LABEL] * len(records)
  return ExampleTable(
      images=np.array([record.path for record in records], dtype=object),
      images_are_paths=True,
      person_ids=np.array([r.person_id for r in records], np.int32),
      labels=np.array(labels, np.int32),
      camera_ids=np.array([r.camera_id for r in records], np.int32),
      filenames=np.array([r.filename for r in records], dtype=object))


def from_tfds(dataset: str | tfds.core.DatasetBuilder, split: str,
              data_dir: str | None = None,
              read_batch_size: int = 1024) -> ExampleTable:
  """Loads a split of a built re-id TFDS dataset into memory.

  The encoded images are kept as they are (a few hundred MB for the largest
  train split here, MSMT17), so the pipeline can shuffle by index.

  Args:
    dataset: a builder, or a name such as ``'market1501'`` or
      ``'cuhk03_np/labeled'`` (see ``builders.BUILDERS``).
    split: ``'train'``, ``'query'`` or ``'gallery'``.
    data_dir: where the dataset was built (a name only); None for TFDS's
      default.
    read_batch_size: examples read per step while loading.

  Returns:
    the split's table, sorted by file name.

  Raises:
    ValueError: when the dataset has not been built, the split is unknown,
      or the name is none of this project's datasets (one line naming
      ``config.dataset.name`` and the close matches).
  """
  tensorflow_cpu.hide_accelerators_from_tensorflow()
  # TFDS warns (through absl) that an unbuilt dataset's folder has no
  # dataset_info.json; the error below says so, with what to do.
  absl_logger = std_logging.getLogger('absl')
  level = absl_logger.level
  absl_logger.setLevel(std_logging.ERROR)
  try:
    try:
      builder = (tfds.builder(dataset, data_dir=data_dir)
                 if isinstance(dataset, str) else dataset)
    except ValueError:  # TFDS's DatasetNotFoundError and unknown configs
      if dataset not in builders.dataset_names():
        raise ValueError(builders.unknown_dataset(dataset)) from None
      raise
    prepared = builder.is_prepared()
  finally:
    absl_logger.setLevel(level)
  if split not in builders.SPLITS:
    raise ValueError(f'unknown split {split!r}; expected one of '
                     f'{list(builders.SPLITS)}')
  if not prepared:
    name = builder.name
    if builder.builder_config is not None:
      name += '/' + builder.builder_config.name  # e.g. cuhk03_np/labeled
    raise ValueError(
        f'{name} is not built in {builder.data_dir}; build it first with '
        f"sa_reid_jax.datasets.builders.prepare('{name}', manual_dir, "
        'data_dir), or read a folder in Market-1501 layout directly with '
        '--config.dataset.folder=DIR')
  examples = builder.as_dataset(
      split=split, shuffle_files=False,
      decoders={'image': tfds.decode.SkipDecoding()})
  columns = {key: [] for key in
             ('image', 'person_id', 'label', 'camera_id', 'filename')}
  for batch in tfds.as_numpy(examples.batch(read_batch_size)):
    for key, values in columns.items():
      values.append(batch[key])
  merged = {key: np.concatenate(values) for key, values in columns.items()}
  filenames = np.array([name.decode() for name in merged['filename']],
                       dtype=object)
  order = np.argsort(filenames, kind='stable')
  return ExampleTable(
      images=merged['image'][order].astype(object),
      images_are_paths=False,
      person_ids=merged['person_id'][order].astype(np.int32),
      labels=merged['label'][order].astype(np.int32),
      camera_ids=merged['camera_id'][order].astype(np.int32),
      filenames=filenames[order])
