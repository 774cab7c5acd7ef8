"""A config's ``dataset`` block turned into tables: the one place that reads
it, for training, evaluation and the tools.

A block names one source (``training/defaults.py`` documents its keys):

- ``list``: a CSV or TSV list file (`list_file`);
- else ``folder`` with ``layout`` ``'market1501'`` (Market-1501 file names,
  `market_layout`) or ``'person_folders'`` (`person_folders`);
- else ``name`` (and ``data_dir``) of a built TFDS dataset.

`read_splits` is a pure function of the block (and the files it names), so
several blocks can be read side by side.

Several datasets at once. A dataset spec is one string naming a source, as
``config.dataset.extra_train`` and ``config.eval.extra_targets`` list them
(comma-separated): a TFDS builder name (``market1501``, read from
``config.dataset.data_dir``), ``folder:DIR`` (Market-1501 layout),
``person_folders:DIR``, or a path ending in ``.csv`` or ``.tsv`` (a list
file). `block_from_spec` turns one into a dataset block whose errors name
the key and the spec; `union_train` joins the train tables of several
sources with their identities kept apart (deep-person-reid's
``combineall`` and fast-reid's ``DATASETS.NAMES`` offset the identities of
each source the same way).
"""

import csv
import difflib
import os
from typing import Callable, Sequence

import ml_collections
import numpy as np

from sa_reid_jax.datasets import builders
from sa_reid_jax.datasets import image_records
from sa_reid_jax.datasets import list_file
from sa_reid_jax.datasets import market_layout
from sa_reid_jax.datasets import person_folders
from sa_reid_jax.datasets import tables

MARKET_LAYOUT = 'market1501'
PERSON_FOLDERS = 'person_folders'
# config.dataset.layout's values: how a folder's images are named.
LAYOUTS = (MARKET_LAYOUT, PERSON_FOLDERS)
# How errors name a block's fields: the config's keys. A tool whose flags
# make the block names them instead (``'--dataset_{}'``).
CONFIG_KEYS = 'config.dataset.{}'
# The prefixes of a dataset spec (module docstring) -> the folder's layout.
SPEC_PREFIXES = {'folder:': MARKET_LAYOUT, 'person_folders:': PERSON_FOLDERS}
# How a spec names a list file: its extension (any case).
LIST_EXTENSIONS = ('.csv', '.tsv')
# The accepted forms, as the errors about a spec list them.
SPEC_FORMS = ('a TFDS dataset name (e.g. market1501), folder:DIR (Market-1501 '
              'layout), person_folders:DIR, or a list file ending in .csv or '
              '.tsv')
# Every split a block can name, in reading order.
SPLITS = ('train', 'query', 'gallery')


def _get(dataset: ml_collections.ConfigDict, key: str, default: str) -> str:
  # Blocks written before a key existed read as its default.
  return dataset.get(key, default)


def _keys(dataset: ml_collections.ConfigDict, keys: str) -> str:
  """How errors name a block's fields: `keys`, or for a spec's block
  (`block_from_spec`) its key and spec, whatever the field."""
  if _get(dataset, 'source', ''):
    return dataset.source.replace('{', '{{').replace('}', '}}')
  return keys


def describe(dataset: ml_collections.ConfigDict,
             keys: str = CONFIG_KEYS) -> str:
  """The key that names the block's source and its value, e.g.
  ``config.dataset.list: data/crops.csv``; for a block of `block_from_spec`
  its key and spec (``config.eval.extra_targets: folder:/data/duke``)."""
  if _get(dataset, 'source', ''):
    return dataset.source
  for field in ('list', 'folder', 'name'):
    if _get(dataset, field, '') or field == 'name':
      return f'{keys.format(field)}: {dataset[field]}'


def check_block(dataset: ml_collections.ConfigDict,
                keys: str = CONFIG_KEYS) -> None:
  """The block's own fields, before any image is read.

  Args:
    dataset: a config's ``dataset`` block.
    keys: how the errors name a field (`CONFIG_KEYS`).

  Raises:
    ValueError: naming the key at fault: both ``list`` and ``folder`` set,
      an unknown ``layout``, a ``layout`` other than the default with a
      ``list``, or a list file that is missing or whose header lacks a
      column.
  """
  keys = _keys(dataset, keys)
  layout = _get(dataset, 'layout', MARKET_LAYOUT)
  if layout not in LAYOUTS:
    raise ValueError(f'{keys.format("layout")} must be one of {LAYOUTS}, '
                     f'got {layout!r}')
  path = _get(dataset, 'list', '')
  if not path:
    return
  if dataset.folder:
    raise ValueError(
        f'{keys.format("list")} and {keys.format("folder")} are both set '
        f'({path!r}, {dataset.folder!r}); a dataset block reads one of them')
  if layout != MARKET_LAYOUT:
    raise ValueError(f'{keys.format("layout")} {layout!r} is for '
                     f'{keys.format("folder")}; a list file has no layout')
  try:
    list_file.read_header(path)
  except list_file.ListFileError as e:
    # A LayoutError, hence a ValueError.
    raise list_file.ListFileError(e.path, e.faults,
                                  key=keys.format('list')) from None


def read_splits(dataset: ml_collections.ConfigDict, splits: Sequence[str],
                log: Callable[[str], None] = print, keys: str = CONFIG_KEYS
                ) -> dict[str, tables.ExampleTable]:
  """The tables of a dataset block's splits, every image checked first.

  Args:
    dataset: a config's ``dataset`` block (module docstring).
    splits: which of ``'train'``, ``'query'``, ``'gallery'``.
    log: where the readers' lines go (skipped system files, id readings).
    keys: how the errors name a field (`CONFIG_KEYS`); a block of
      `block_from_spec` is named by its key and spec instead.

  Returns:
    {split: its table}; camera ids `image_records.UNKNOWN_CAMERA` where the
    source has no cameras.

  Raises:
    LayoutError: starting with the config key (``config.dataset.list:
      FILE:LINE: ...``, ``config.dataset.folder: ...``) for a source that
      cannot be read, every fault listed; a folder's undecodable images as
      ``image_check.UnreadableImagesError`` (which names the folder).
    ValueError: for a bad block (`check_block`), or a TFDS dataset that is
      not built (a spec's block: the message starts with its key and spec).
  """
  keys = _keys(dataset, keys)
  check_block(dataset, keys)
  path = _get(dataset, 'list', '')
  if path:
    try:
      read = list_file.read(path, splits, log)
    except list_file.ListFileError as e:
      raise list_file.ListFileError(e.path, e.faults,
                                    key=keys.format('list')) from None
    return {split: tables.from_records(split, read[split])
            for split in splits}
  if not dataset.folder:
    try:
      return {split: tables.from_tfds(dataset.name, split,
                                      data_dir=dataset.data_dir or None)
              for split in splits}
    except ValueError as e:
      if not _get(dataset, 'source', ''):
        raise
      raise ValueError(f'{dataset.source}: {e}') from None
  try:
    if _get(dataset, 'layout', MARKET_LAYOUT) == PERSON_FOLDERS:
      read = person_folders.read(dataset.folder, splits, log)
      return {split: tables.from_records(split, read[split])
              for split in splits}
    return tables.from_folders(dataset.folder, splits, log)
  except market_layout.LayoutError as e:
    # The layout error names the folder or file; this names the key. Its
    # subclasses (unreadable images, listed with their paths) are about
    # the files, not the key, and keep their type.
    if type(e) is not market_layout.LayoutError:
      raise
    raise market_layout.LayoutError(f'{keys.format("folder")}: {e}'
                                    ) from None


def cameras_known(*splits: tables.ExampleTable) -> bool:
  """Whether every image of the tables has a known camera, i.e. whether the
  evaluation removes same-person same-camera gallery images for every query
  (the Market-1501 protocol) rather than for none."""
  return all(bool(np.all(table.camera_ids != image_records.UNKNOWN_CAMERA))
             for table in splits)


# --- several datasets at once ------------------------------------------------


def spec_of(dataset: ml_collections.ConfigDict) -> str:
  """The dataset spec (module docstring) naming a block's source, e.g.
  ``person_folders:/data/crops``; a spec's block gives its spec back."""
  if _get(dataset, 'spec', ''):
    return dataset.spec
  if _get(dataset, 'list', ''):
    return dataset.list
  if dataset.folder:
    layout = _get(dataset, 'layout', MARKET_LAYOUT)
    prefix = next(p for p, l in SPEC_PREFIXES.items() if l == layout)
    return prefix + dataset.folder
  return dataset.name


def block_from_spec(spec: str, key: str, data_dir: str = ''
                    ) -> ml_collections.ConfigDict:
  """The dataset block a dataset spec names.

  Args:
    spec: a TFDS builder name (`builders.dataset_names`), ``folder:DIR``,
      ``person_folders:DIR`` or a path ending in ``.csv`` / ``.tsv``
      (module docstring); surrounding spaces are ignored.
    key: the config key that held it (``config.eval.extra_targets``), for
      the errors of this function and of reading the block.
    data_dir: where a TFDS dataset was built (``config.dataset.data_dir``;
      '' for TFDS's default).

  Returns:
    a block with the fields of ``config.dataset`` (``name``, ``data_dir``,
    ``folder``, ``layout``, ``list``) plus ``spec`` and ``source``
    (``'KEY: SPEC'``, which `describe` and the errors of `read_splits`
    use).

  Raises:
    ValueError: naming `key`, the spec and the accepted forms, for an empty
      spec, a prefix without a folder, or a name that is no TFDS dataset of
      this project's (with the close matches).
  """
  spec = spec.strip()
  block = ml_collections.ConfigDict({
      'name': '', 'data_dir': data_dir, 'folder': '',
      'layout': MARKET_LAYOUT, 'list': '', 'spec': spec,
      'source': f'{key}: {spec}'})
  for prefix, layout in SPEC_PREFIXES.items():
    if spec.startswith(prefix):
      folder = spec[len(prefix):].strip()
      if not folder:
        raise ValueError(f'{key}: {spec!r} names no folder; expected '
                         f'{SPEC_FORMS}')
      block.folder, block.layout = folder, layout
      return block
  if spec.lower().endswith(LIST_EXTENSIONS):
    block.list = spec
    return block
  if spec and spec in builders.dataset_names():
    block.name = spec
    return block
  if not spec:
    raise ValueError(f'{key}: an empty dataset spec; expected {SPEC_FORMS}, '
                     'comma-separated')
  close = difflib.get_close_matches(spec, builders.dataset_names(), n=3,
                                    cutoff=0.6)
  hint = (f' (did you mean {" or ".join(repr(c) for c in close)}?)' if close
          else '')
  raise ValueError(f'{key}: {spec!r} is not a dataset spec{hint}; expected '
                   f'{SPEC_FORMS}; the TFDS datasets: '
                   f'{", ".join(builders.dataset_names())}')


def blocks_from_specs(text: str, key: str, data_dir: str = ''
                      ) -> list[ml_collections.ConfigDict]:
  """The blocks of a comma-separated list of dataset specs.

  Args:
    text: specs separated by commas ('' or spaces: none); a folder or list
      file whose path holds a comma cannot be named this way.
    key: the config key that held them, for the errors.
    data_dir: as in `block_from_spec`.

  Returns:
    one block per spec, in order.

  Raises:
    ValueError: naming `key`: a bad spec (`block_from_spec`), an empty one
      between commas, or one given twice.
  """
  if not text.strip():
    return []
  specs = [spec.strip() for spec in text.split(',')]
  repeated = sorted({s for s in specs if s and specs.count(s) > 1})
  if repeated:
    raise ValueError(f'{key}: {repeated[0]!r} is given twice in {text!r}; '
                     'name each dataset once')
  return [block_from_spec(spec, key, data_dir) for spec in specs]


def _list_file_splits(path: str) -> set[str]:
  """The split values a list file's rows hold (lower case; what
  `list_file.read` checks, only read here)."""
  delimiter, columns = list_file.read_header(path)
  with open(path, encoding='utf-8-sig', newline='') as f:
    rows = [row for row in csv.reader(f, delimiter=delimiter)
            if any(field.strip() for field in row)]
  column = columns['split']
  return {row[column].strip().lower() for row in rows[1:]
          if len(row) > column}


def has_evaluation_splits(dataset: ml_collections.ConfigDict,
                          keys: str = CONFIG_KEYS,
                          log: Callable[[str], None] = print) -> bool:
  """Whether a block's source holds query and gallery splits, or is a
  train-only dataset (training then evaluates on
  ``config.eval.extra_targets`` only).

  A TFDS dataset always holds them; a Market-layout folder when it has
  ``query/`` and ``bounding_box_test/``; a person-folders dataset when it
  has ``query/`` and ``gallery/``; a list file when rows of both splits are
  listed. A folder without its train folder counts as holding them, so
  that reading it names the folders missing. Only names are looked at
  (`read_splits` checks the rest), except for a list file with rows of one
  of the two splits only: it is read whole (`list_file.read`, `log` getting
  its lines), so that its error lists that fault with every other.

  Raises:
    LayoutError: naming the block's key, for a source holding one of the
      two splits without the other (a list file: a `list_file.ListFileError`
      listing every fault of the file); a list file's header faults
      (`check_block`).
  """
  keys = _keys(dataset, keys)
  check_block(dataset, keys)
  path = _get(dataset, 'list', '')
  if path:
    try:
      present = _list_file_splits(path) & {'query', 'gallery'}
      if len(present) == 1:
        # Raises, naming the split missing with the file's other faults.
        list_file.read(path, SPLITS, log)
    except list_file.ListFileError as e:
      raise list_file.ListFileError(e.path, e.faults,
                                    key=keys.format('list')) from None
    where = {split: f'no {split!r} rows in {path}'
             for split in ('query', 'gallery')}
  elif dataset.folder:
    folders = (person_folders.SPLIT_FOLDERS
               if _get(dataset, 'layout', MARKET_LAYOUT) == PERSON_FOLDERS
               else market_layout.SPLIT_FOLDERS)
    present = {split for split in ('query', 'gallery') if os.path.isdir(
        os.path.join(dataset.folder, folders[split]))}
    where = {split: f'no {os.path.join(dataset.folder, folders[split])}/'
             for split in ('query', 'gallery')}
    if not os.path.isdir(os.path.join(dataset.folder, folders['train'])):
      # No dataset (or a missing folder): read_splits names what is
      # missing, with the layout expected.
      return True
  else:
    return True
  if len(present) == 1:
    missing = ({'query', 'gallery'} - present).pop()
    raise market_layout.LayoutError(
        f'{keys.format("list" if path else "folder")}: {where[missing]}, '
        f'but its {present.pop()} split is there: evaluation needs both '
        '(or neither, for a dataset that only trains)')
  return bool(present)


def union_train(train: Sequence[tables.ExampleTable]
                ) -> tables.ExampleTable:
  """The train tables of several sources as one, their identities apart.

  Source i's labels are offset by the classes of sources 0..i-1, and its
  person ids by one more than the largest person id of those sources, so
  that person 1 of two sources are two identities (labels stay 0..K-1 in sorted
  person-id order over the union). Where some tables hold encoded images
  (TFDS) and others file paths, the files are read into memory so that the
  union holds encoded images throughout.

  Args:
    train: the sources' train tables (person ids >= 1, labels 0..K-1).

  Returns:
    the union, rows of source 0 first; its `num_classes` is the sum of the
    sources'.
  """
  if len(train) == 1:
    return train[0]
  paths = all(t.images_are_paths for t in train)
  images, person_ids, labels = [], [], []
  label_offset, person_offset = 0, 0
  for table in train:
    table_images = table.images
    if table.images_are_paths and not paths:
      table_images = np.array([_read_bytes(p) for p in table.images],
                              dtype=object)
    images.append(table_images)
    person_ids.append(table.person_ids + person_offset)
    labels.append(table.labels + label_offset)
    label_offset += table.num_classes
    if len(table):
      # Person ids are >= 0 in a train split: above every earlier one.
      person_offset = int(person_ids[-1].max()) + 1
  return tables.ExampleTable(
      images=np.concatenate(images).astype(object),
      images_are_paths=paths,
      person_ids=np.concatenate(person_ids).astype(np.int32),
      labels=np.concatenate(labels).astype(np.int32),
      camera_ids=np.concatenate([t.camera_ids for t in train]
                                ).astype(np.int32),
      filenames=np.concatenate([t.filenames for t in train]).astype(object))


def _read_bytes(path: str) -> bytes:
  with open(path, 'rb') as f:
    return f.read()


def train_source_line(index: int, count: int, spec: str,
                      table: tables.ExampleTable) -> str:
  """``train source 2 of 2: folder:/x — 751 identities, 12,936 images``."""
  return (f'train source {index} of {count}: {spec} \u2014 '
          f'{table.num_classes:,} identities, {len(table):,} images')
