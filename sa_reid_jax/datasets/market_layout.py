"""The Market-1501 folder layout, shared by every re-id dataset here.

A dataset folder holds ``bounding_box_train/``, ``bounding_box_test/``
(gallery) and ``query/``, with image names like ``0002_c1s1_000451_03.jpg``:
person id 0002, camera 1 (1-based in the name). Person id ``-1`` marks junk
images and ``0000`` distractors; both only occur in the gallery.
"""

import dataclasses
import os
import re
from typing import Callable, Iterable

SPLIT_FOLDERS = {
    'train': 'bounding_box_train',
    'query': 'query',
    'gallery': 'bounding_box_test',
}
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
# Names operating systems leave in folders (lower case); never images.
WINDOWS_SYSTEM_FILES = ('thumbs.db', 'ehthumbs.db', 'desktop.ini')
JUNK_PERSON_ID = -1
DISTRACTOR_PERSON_ID = 0

# "<pid>_c<cam>" then anything: Market ("0002_c1s1_000451_03.jpg"), Duke
# ("0005_c2_f0046985.jpg"), CUHK03-NP ("0001_c1_1.png"), MSMT17 in Market
# layout ("0000_c1_0000.jpg").
_FILENAME = re.compile(r'^(-1|\d+)_c(\d+)')


class LayoutError(ValueError):
  """A dataset folder or file name does not follow the Market-1501 layout."""


@dataclasses.dataclass(frozen=True)
class ImageRecord:
  """One image of a Market-layout folder.

  Attributes:
    path: full path of the image file.
    person_id: id as written in the file name (-1 junk, 0 distractor).
    camera_id: 0-based camera index (the name's camera number minus one).
  """
  path: str
  person_id: int
  camera_id: int

  @property
  def filename(self) -> str:
    return os.path.basename(self.path)


def parse_filename(path: str) -> tuple[int, int]:
  """Reads (person_id, 0-based camera_id) from a Market-style file name.

  Args:
    path: file name or path; its base name looks like
      ``0002_c1s1_000451_03.jpg``.

  Returns:
    (person_id, camera_id).

  Raises:
    LayoutError: naming the file when it does not match ``<pid>_c<cam>...``
      or its camera number is 0.
  """
  match = _FILENAME.match(os.path.basename(path))
  if match is None:
    raise LayoutError(f'{path}: not a Market-1501 style image name '
                      '(expected "<person id>_c<camera>...", e.g. '
                      '"0002_c1s1_000451_03.jpg")')
  person_id, camera = int(match.group(1)), int(match.group(2))
  if camera < 1:
    raise LayoutError(f'{path}: camera numbers start at 1, got c{camera}')
  return person_id, camera - 1


# The project's own cache folder inside an image folder (image verdicts,
# search descriptors): neither data nor a file to report.
CACHE_FOLDER = '.sa_reid_cache'


def is_system_file(name: str) -> bool:
  """Whether a file name is a hidden or operating-system file, not data.

  Args:
    name: a base name.

  Returns:
    True for names starting with ``.`` (``.DS_Store``, AppleDouble
    ``._x.jpg``) and for ``Thumbs.db``, ``ehthumbs.db``, ``desktop.ini``.
  """
  return name.startswith('.') or name.lower() in WINDOWS_SYSTEM_FILES


def list_folder(folder: str, extensions: Iterable[str]
                ) -> tuple[list[str], int]:
  """The image files directly in a folder, and how many system files it has.

  Args:
    folder: an existing folder.
    extensions: lower-case image extensions with the dot, e.g. ``'.jpg'``.

  Returns:
    (sorted base names of the images, count of `is_system_file` names,
    which are left out whatever their extension). Other files without an
    image extension (e.g. a readme) and the project's ``CACHE_FOLDER`` are
    left out uncounted.
  """
  extensions = tuple(extensions)
  names, system = [], 0
  for name in sorted(os.listdir(folder)):
    if name == CACHE_FOLDER:
      continue
    if is_system_file(name):
      system += 1
    elif name.lower().endswith(extensions):
      names.append(name)
  return names, system


def skipped_message(count: int, where: str) -> str:
  """The line a reader prints for the system files it skipped."""
  return (f'skipped {count} hidden or system file{"" if count == 1 else "s"} '
          f'(e.g. .DS_Store, ._name.jpg, Thumbs.db) in {where}')


def split_folder(root: str, split: str) -> str:
  """Path of a split's folder, checked to exist.

  Args:
    root: dataset folder.
    split: ``'train'``, ``'query'`` or ``'gallery'``.

  Returns:
    the folder path.

  Raises:
    LayoutError: naming the missing folder and the expected layout.
  """
  if split not in SPLIT_FOLDERS:
    raise LayoutError(f'unknown split {split!r}; expected one of '
                      f'{sorted(SPLIT_FOLDERS)}')
  folder = os.path.join(root, SPLIT_FOLDERS[split])
  if not os.path.isdir(folder):
    layout = ', '.join(f'{name}/ ({s})' for s, name in SPLIT_FOLDERS.items())
    raise LayoutError(f'{folder}: missing; a dataset folder in Market-1501 '
                      f'layout holds {layout}')
  return folder


def scan_split(root: str, split: str,
               log: Callable[[str], None] = print) -> list[ImageRecord]:
  """Lists a split's images in file-name order with their ids and cameras.

  Args:
    root: dataset folder in Market-1501 layout.
    split: ``'train'``, ``'query'`` or ``'gallery'``.
    log: where the line about skipped system files goes.

  Returns:
    the records, sorted by file name. Hidden and system files
    (`is_system_file`: ``.DS_Store``, AppleDouble ``._name.jpg``,
    ``Thumbs.db``) are skipped and counted in a line to `log`; other files
    without an image extension are ignored.

  Raises:
    LayoutError: for a missing folder, an unparsable image name, or a split
      with no images.
  """
  folder = split_folder(root, split)
  names, system = list_folder(folder, IMAGE_EXTENSIONS)
  if system:
    log(skipped_message(system, folder))
  records = []
  for name in names:
    path = os.path.join(folder, name)
    person_id, camera_id = parse_filename(path)
    records.append(ImageRecord(path, person_id, camera_id))
  if not records:
    raise LayoutError(f'{folder}: no images ({", ".join(IMAGE_EXTENSIONS)})')
  return records


def train_labels(records: list[ImageRecord]) -> list[int]:
  """Contiguous class labels 0..K-1 for a train split, in sorted id order.

  Args:
    records: the train split's images.

  Returns:
    one label per record: the rank of its person id among the split's
    distinct ids, sorted ascending (so the smallest id gets label 0).

  Raises:
    LayoutError: naming the first junk (person id -1) image; junk belongs in
      the gallery, never in training.
  """
  for record in records:
    if record.person_id == JUNK_PERSON_ID:
      raise LayoutError(f'{record.path}: junk image (person id -1) in the '
                        'train split; junk may only appear in the gallery')
  label_of = {person_id: label for label, person_id in
              enumerate(sorted({record.person_id for record in records}))}
  return [label_of[record.person_id] for record in records]
