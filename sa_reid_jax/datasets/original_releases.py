"""The MSMT17 and CUHK03 releases read as their authors ship them.

Both datasets are also passed around converted to Market-1501 layout (see
`market_layout`); the readers here take the original downloads instead and
give the same per-split records, so the TFDS builders treat both forms alike.

MSMT17 (Wei et al., CVPR 2018), folder ``MSMT17_V1/`` or ``MSMT17_V2/``:

* ``train/`` and ``test/`` (V2 may name them ``mask_train_v2/`` and
  ``mask_test_v2/``, as torchreid's ``msmt17.py`` expects) holding one folder
  per person, e.g. ``train/0000/0000_000_01_0303morning_0015_0.jpg``;
* ``list_train.txt``, ``list_val.txt`` (images under ``train/``) and
  ``list_query.txt``, ``list_gallery.txt`` (under ``test/``): one image a
  line, ``<path relative to train/ or test/> <person id>``.
* The camera is the third ``_``-separated field of the file name, 1-based
  (``..._01_...`` is camera 1 of 15), as torchreid's ``msmt17.py`` reads it.
* Person ids are 0-based and numbered separately for training (0..1040) and
  testing (0..3059); id 0 is a real person, not a distractor.
* The train split is the train and val lists together (30,248 + 2,373 =
  32,621 images, the count the paper and the field report).

CUHK03 (Li et al., CVPR 2014) with the new protocol of Zhong et al.
(CVPR 2017), as the RGA authors' README sets it up:

* ``cuhk03_release/cuhk-03.mat``: MATLAB v7.3, i.e. HDF5, read with h5py.
  Datasets ``labeled`` and ``detected`` are 5x1 MATLAB cells (one per camera
  pair), stored transposed as HDF5 object references of shape (1, 5). Each
  reference leads to a (persons x 10) cell, stored as (10, persons): columns
  1-5 are the images of the pair's first camera, 6-10 of its second; an
  empty cell is a MATLAB empty array (an HDF5 dataset with fewer than 3
  dimensions or no elements). An image is an (H, W, 3) uint8 matrix stored
  as (3, W, H), so it is transposed back. (torchreid's ``cuhk03.py`` reads
  the file the same way.)
* ``cuhk03_new_protocol_config_labeled.mat`` and ``..._detected.mat``
  (MATLAB v5, read with scipy.io.loadmat), beside ``cuhk03_release/`` or
  inside it: ``filelist`` (a cell of names ``<pair>_<person:03d>_<camera>_
  <column:02d>.png``, all 1-based: ``1_001_1_01.png`` is pair 1, person 1 of
  that pair, camera 1, cell column 1), ``labels`` (person id per entry,
  1..1467), ``camId`` (camera 1 or 2 within the pair), and ``train_idx``,
  ``query_idx``, ``gallery_idx`` (1-based indices into ``filelist``): 767
  train and 700 test identities.
* The images are named as in the CUHK03-NP copy in Market layout
  (``<label:04d>_c<camId>_<1-based filelist index>.png``, e.g.
  ``0003_c1_21.png``) and encoded as lossless PNG, so both forms give the
  same splits, ids, cameras, file names and pixels.
"""

import dataclasses
import io
import os
import re
from typing import Callable, Optional

import numpy as np

from sa_reid_jax.datasets import market_layout

MSMT17_RELEASES = ('MSMT17_V2', 'MSMT17_V1')
# (list file, where its paths are relative to) per split; the train split is
# read from two lists.
MSMT17_LISTS = {
    'train': (('list_train.txt', 'train'), ('list_val.txt', 'train')),
    'query': (('list_query.txt', 'test'),),
    'gallery': (('list_gallery.txt', 'test'),),
}
# Image folder names by role: V1's, then V2's as torchreid's msmt17.py has them.
MSMT17_FOLDERS = {'train': ('train', 'mask_train_v2'),
                  'test': ('test', 'mask_test_v2')}

CUHK03_RELEASE = 'cuhk03_release'
CUHK03_MAT = 'cuhk-03.mat'
CUHK03_CONFIG = 'cuhk03_new_protocol_config_{}.mat'
CUHK03_SPLIT_INDICES = {'train': 'train_idx', 'query': 'query_idx',
                        'gallery': 'gallery_idx'}
_CUHK03_NAME = re.compile(r'^(\d)_(\d{3})_(\d)_(\d{2})\.png$')


@dataclasses.dataclass(frozen=True)
class MatImageRecord:
  """One image inside ``cuhk-03.mat``.

  Attributes:
    path: where it comes from, for messages (``cuhk-03.mat`` and the cell).
    person_id: the new protocol's label (1..1467).
    camera_id: 0-based camera within the pair (``camId`` minus one).
    filename: its CUHK03-NP name.
    pair, person, column: 0-based cell position: camera pair, person row of
      that pair's cell, column (0-4 first camera, 5-9 second).
  """
  path: str
  person_id: int
  camera_id: int
  filename: str
  pair: int
  person: int
  column: int


def find_msmt17(manual_dir: str) -> Optional[str]:
  """The MSMT17 release folder under `manual_dir`, or None (V2 first)."""
  for release in MSMT17_RELEASES:
    folder = os.path.join(manual_dir, release)
    if os.path.isfile(os.path.join(folder, 'list_train.txt')):
      return folder
  return None


def _msmt17_folder(release: str, role: str) -> str:
  for name in MSMT17_FOLDERS[role]:
    folder = os.path.join(release, name)
    if os.path.isdir(folder):
      return folder
  raise market_layout.LayoutError(
      f'{release}: no {" or ".join(n + "/" for n in MSMT17_FOLDERS[role])} '
      'folder for the images of its lists')


def _msmt17_camera(list_file: str, line_number: int, path: str) -> int:
  fields = os.path.basename(path).split('_')
  if len(fields) < 3 or not fields[2].isdigit() or int(fields[2]) < 1:
    raise market_layout.LayoutError(
        f'{list_file}:{line_number}: {path}: the camera is not the third '
        'field of the name (expected e.g. 0000_000_01_0303morning_0015_0.jpg)')
  return int(fields[2]) - 1


def msmt17_records(release: str, split: str
                   ) -> list[market_layout.ImageRecord]:
  """A split of an MSMT17 release, from its list files.

  Args:
    release: the ``MSMT17_V1`` or ``MSMT17_V2`` folder.
    split: ``'train'`` (train and val lists), ``'query'`` or ``'gallery'``.

  Returns:
    the records in file-name order.

  Raises:
    LayoutError: naming the list file and line of a malformed line or of an
      image that is not there, or a missing list or image folder.
  """
  records = []
  for list_name, role in MSMT17_LISTS[split]:
    list_file = os.path.join(release, list_name)
    folder = _msmt17_folder(release, role)
    try:
      with open(list_file) as file:
        lines = file.read().splitlines()
    except OSError as e:
      raise market_layout.LayoutError(
          f'{list_file}: cannot read ({e.strerror})') from None
    for number, line in enumerate(lines, start=1):
      if not line.strip():
        continue
      fields = line.split()
      if len(fields) != 2 or not re.fullmatch(r'\d+', fields[1]):
        raise market_layout.LayoutError(
            f'{list_file}:{number}: expected "<image path> <person id>", got '
            f'{line!r}')
      path = os.path.join(folder, fields[0])
      if not os.path.isfile(path):
        raise market_layout.LayoutError(
            f'{list_file}:{number}: {path} is missing')
      records.append(market_layout.ImageRecord(
          path, int(fields[1]), _msmt17_camera(list_file, number, fields[0])))
  if not records:
    raise market_layout.LayoutError(
        f'{release}: the {split} lists name no image')
  return sorted(records, key=lambda record: record.filename)


def find_cuhk03(manual_dir: str, config: str
                ) -> Optional[tuple[str, str]]:
  """(cuhk-03.mat, new-protocol config) under `manual_dir`, or None.

  Args:
    manual_dir: the download folder.
    config: ``'labeled'`` or ``'detected'``.

  Returns:
    the two files when ``cuhk03_release/cuhk-03.mat`` exists and the config
    file sits beside ``cuhk03_release/`` or inside it; else None.
  """
  mat = os.path.join(manual_dir, CUHK03_RELEASE, CUHK03_MAT)
  if not os.path.isfile(mat):
    return None
  for folder in (manual_dir, os.path.join(manual_dir, CUHK03_RELEASE)):
    config_file = os.path.join(folder, CUHK03_CONFIG.format(config))
    if os.path.isfile(config_file):
      return mat, config_file
  return None


def _load_config(config_file: str) -> dict[str, np.ndarray]:
  """The new-protocol fields, flattened; errors name the file and field."""
  import scipy.io  # pylint: disable=g-import-not-at-top
  try:
    contents = scipy.io.loadmat(config_file)
  except (OSError, ValueError, NotImplementedError) as e:
    raise market_layout.LayoutError(
        f'{config_file}: not a readable MATLAB v5 file ({e})') from None
  fields = {}
  for key in ('filelist', 'labels', 'camId', *CUHK03_SPLIT_INDICES.values()):
    if key not in contents:
      raise market_layout.LayoutError(
          f'{config_file}: no field {key!r} (a new-protocol config holds '
          'filelist, labels, camId, train_idx, query_idx, gallery_idx)')
    fields[key] = np.asarray(contents[key]).reshape(-1)
  # filelist is a cell: each element an array holding one string.
  fields['filelist'] = np.array(
      [str(np.asarray(name).reshape(-1)[0]) for name in fields['filelist']],
      dtype=object)
  count = len(fields['filelist'])
  for key in ('labels', 'camId'):
    if len(fields[key]) != count:
      raise market_layout.LayoutError(
          f'{config_file}: {key} has {len(fields[key])} entries for '
          f'{count} in filelist')
  for key in CUHK03_SPLIT_INDICES.values():
    indices = fields[key].astype(np.int64)
    if len(indices) and (indices.min() < 1 or indices.max() > count):
      raise market_layout.LayoutError(
          f'{config_file}: {key} must hold 1-based indices into filelist '
          f'(1..{count}), got {indices.min()}..{indices.max()}')
    fields[key] = indices - 1
  return fields


def cuhk03_records(mat: str, config_file: str, boxes: str
                   ) -> dict[str, list[MatImageRecord]]:
  """The new-protocol splits of CUHK03's original release.

  Args:
    mat: ``cuhk-03.mat``.
    config_file: the new-protocol config for `boxes`.
    boxes: ``'labeled'`` or ``'detected'``: the cell array images come from.

  Returns:
    {split: records in file-name order} for train, query and gallery.

  Raises:
    LayoutError: naming the file and field, or the filelist entry, at fault.
  """
  fields = _load_config(config_file)
  splits = {}
  for split, key in CUHK03_SPLIT_INDICES.items():
    records = []
    for index in fields[key]:
      name = fields['filelist'][index]
      match = _CUHK03_NAME.match(name)
      camera = int(fields['camId'][index])
      if match is None or camera not in (1, 2):
        raise market_layout.LayoutError(
            f'{config_file}: filelist entry {index + 1} ({name!r}, camId '
            f'{camera}) is not "<pair>_<person>_<camera>_<column>.png" with '
            'camId 1 or 2')
      pair, person, _, column = (int(v) - 1 for v in match.groups())
      label = int(fields['labels'][index])
      records.append(MatImageRecord(
          path=f'{mat} {boxes}{{{pair + 1}}}{{{person + 1}, {column + 1}}}',
          person_id=label, camera_id=camera - 1,
          filename=f'{label:04d}_c{camera}_{index + 1}.png',
          pair=pair, person=person, column=column))
    if not records:
      raise market_layout.LayoutError(f'{config_file}: {key} is empty')
    splits[split] = sorted(records, key=lambda record: record.filename)
  return splits


class Cuhk03Images:
  """Reads images out of ``cuhk-03.mat`` as PNG bytes.

  A context manager: ``with Cuhk03Images(mat, 'labeled') as read:`` opens
  the file and gives `read`.

  Args:
    mat: the ``cuhk-03.mat`` file.
    boxes: ``'labeled'`` or ``'detected'``.
  """

  def __init__(self, mat: str, boxes: str):
    self._path, self._boxes = mat, boxes
    self._file = None
    self._cells: dict[int, np.ndarray] = {}

  def __enter__(self) -> Callable[[MatImageRecord], bytes]:
    import h5py  # pylint: disable=g-import-not-at-top
    try:
      self._file = h5py.File(self._path, 'r')
      self._pairs = self._file[self._boxes][()].reshape(-1)
    except (OSError, KeyError) as e:
      raise market_layout.LayoutError(
          f'{self._path}: not a MATLAB v7.3 (HDF5) file with a '
          f'{self._boxes!r} cell array ({e})') from None
    return self.read

  def __exit__(self, *exc_info):
    if self._file is not None:
      self._file.close()
    self._cells.clear()

  def _cell(self, pair: int) -> np.ndarray:
    if pair not in self._cells:
      if pair >= len(self._pairs):
        raise market_layout.LayoutError(
            f'{self._path}: {self._boxes} has {len(self._pairs)} camera '
            f'pairs, no pair {pair + 1}')
      # Stored (10, persons): transposed to MATLAB's (persons, 10).
      self._cells[pair] = self._file[self._pairs[pair]][()].T
    return self._cells[pair]

  def read(self, record: MatImageRecord) -> bytes:
    """The record's image as PNG bytes.

    Raises:
      LayoutError: naming the cell when it is missing, empty or not an
        (H, W, 3) uint8 image.
    """
    from PIL import Image  # pylint: disable=g-import-not-at-top
    cell = self._cell(record.pair)
    if record.person >= cell.shape[0] or record.column >= cell.shape[1]:
      raise market_layout.LayoutError(
          f'{record.path}: outside the {cell.shape[0]}x{cell.shape[1]} cell '
          f'of pair {record.pair + 1}')
    image = self._file[cell[record.person, record.column]]
    if image.ndim != 3 or image.size == 0:
      raise market_layout.LayoutError(f'{record.path}: empty cell')
    pixels = np.ascontiguousarray(image[()].T)  # (3, W, H) -> (H, W, 3)
    if pixels.shape[2] != 3 or pixels.dtype != np.uint8:
      raise market_layout.LayoutError(
          f'{record.path}: not an RGB uint8 image (shape {pixels.shape}, '
          f'{pixels.dtype})')
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, format='PNG')
    return encoded.getvalue()


def file_reader(record: market_layout.ImageRecord) -> bytes:
  """The bytes of an image file record (Market layout, MSMT17 lists)."""
  with open(record.path, 'rb') as file:
    return file.read()

