"""Datasets given as one folder per person (``config.dataset.layout =
'person_folders'``).

A dataset folder holds ``train/`` and, for evaluation, ``query/`` and
``gallery/``; each holds one folder per person, whose name is the identity
(any name; see `image_records` for how names become person ids), with the
person's images (``.jpg``, ``.jpeg``, ``.png``) in it:

    FOLDER/train/alice/0001.jpg
    FOLDER/train/bob/frame_17.png
    FOLDER/query/carol/a.jpg
    FOLDER/gallery/carol/b.jpg

Cameras are optional. Where every person folder holds camera folders
instead of images, the camera folder's name is the image's camera (a name
or an integer >= 0), e.g. ``FOLDER/query/carol/cam1/a.jpg``; where every
person folder holds its images directly, cameras are unknown
(`image_records.UNKNOWN_CAMERA`). A dataset uses one of the two forms in
all of its splits.

`read` checks the layout before anything runs: hidden and system files are
skipped and counted (as `market_layout.list_folder` does), an image outside
a person folder, a person (or camera) folder without images and a mix of
the two forms are faults naming the folder, all of them listed in one
error; then every image of the splits read is decoded (`image_check`,
verdicts cached in the folder).
"""

import os
from typing import Callable, Sequence

from sa_reid_jax.datasets import image_check
from sa_reid_jax.datasets import image_records
from sa_reid_jax.datasets import market_layout

SPLIT_FOLDERS = {'train': 'train', 'query': 'query', 'gallery': 'gallery'}
LAYOUT_HELP = ('a person-folders dataset holds train/, query/ and gallery/ '
               '(query/ and gallery/ for evaluation), each with one folder '
               'per person: SPLIT/PERSON/IMAGE or SPLIT/PERSON/CAMERA/IMAGE')


def _subfolders(folder: str) -> tuple[list[str], list[str], int]:
  """(sorted visible subfolder names, visible image file names, count of
  hidden and system names) of a folder; the project's cache folder left
  out uncounted."""
  folders, files, system = [], [], 0
  for name in sorted(os.listdir(folder)):
    if name == market_layout.CACHE_FOLDER:
      continue
    if market_layout.is_system_file(name):
      system += 1
      continue
    if os.path.isdir(os.path.join(folder, name)):
      folders.append(name)
    elif name.lower().endswith(market_layout.IMAGE_EXTENSIONS):
      files.append(name)
  return folders, files, system


def split_folder(root: str, split: str) -> str:
  """Path of a split's folder, checked to exist.

  Raises:
    LayoutError: naming the missing folder and the layout.
  """
  folder = os.path.join(root, SPLIT_FOLDERS[split])
  if not os.path.isdir(folder):
    raise market_layout.LayoutError(_missing(folder))
  return folder


def _missing(folder: str) -> str:
  return f'{folder}: missing; {LAYOUT_HELP}'


def read(root: str, splits: Sequence[str],
         log: Callable[[str], None] = print
         ) -> dict[str, list[image_records.ImageEntry]]:
  """The images of a person-folders dataset's splits, every image checked.

  Person and camera ids are decided over every split folder present, so
  any subset of `splits` gets the same ids.

  Args:
    root: the dataset folder (module docstring).
    splits: which of ``'train'``, ``'query'``, ``'gallery'`` to return and
      check.
    log: where the lines on skipped system files and the ids go.

  Returns:
    {split: its images, ordered by person folder, camera folder and file
    name}; each image's ``filename`` is its path in the split folder
    (``alice/0001.jpg``).

  Raises:
    LayoutError: for a missing dataset folder; else one error listing
      every layout fault of every split, each naming its folder (after a
      ``ROOT: N faults:`` line when there are several): a missing split
      folder, a person name that is a negative integer below -1, junk (-1)
      or distractor (0) folders outside the gallery, images outside person
      folders, empty person or camera folders, a mix of person folders
      with and without camera folders, a bad camera folder name, two
      folders that are one integer person id (``7``, ``007``);
      ``image_check.UnreadableImagesError`` listing every image that cannot
      be decoded.
  """
  if not os.path.isdir(root):
    raise market_layout.LayoutError(_missing(root))
  # Every layout fault of every split, raised together at the end.
  faults = [_missing(os.path.join(root, SPLIT_FOLDERS[split]))
            for split in splits
            if not os.path.isdir(os.path.join(root, SPLIT_FOLDERS[split]))]
  present = [s for s in SPLIT_FOLDERS
             if os.path.isdir(os.path.join(root, SPLIT_FOLDERS[s]))]
  # Names only, of every split present: ids that do not depend on `splits`.
  people, system = {}, {}
  for split in present:
    folder = os.path.join(root, SPLIT_FOLDERS[split])
    names, loose, system[split] = _subfolders(folder)
    if loose:
      faults.append(
          f'{folder}: {len(loose)} image{"s" if len(loose) > 1 else ""} '
          f'outside a person folder (e.g. {loose[0]}); {LAYOUT_HELP}')
    people[split] = {}
    for name in names:
      reason = image_records.person_value_error(name)
      if reason:
        faults.append(f'{os.path.join(folder, name)}: {reason}')
      else:
        people[split][name] = _subfolders(os.path.join(folder, name))
    if any(sub for sub, _, _ in people[split].values()):
      # Camera folders: the person folders' own system files count too.
      system[split] += sum(n for _, _, n in people[split].values())
  with_cameras = {(split, name) for split, folders in people.items()
                  for name, (sub, _, _) in folders.items() if sub}
  if with_cameras:
    for split, folders in people.items():
      for name in list(folders):
        sub, files, count = folders[name]
        where = os.path.join(root, SPLIT_FOLDERS[split], name)
        if not files and not sub:
          faults.append(f'{where}: no images and no camera folders')
        elif files:
          faults.append(
              f'{where}: holds images directly, but other person folders '
              'hold camera folders (e.g. ' +
              os.path.join(root, *min(with_cameras)) + '); put '
              "every person's images either directly in its folder (cameras "
              'unknown) or in camera folders')
        bad = [camera for camera in sub
               if image_records.camera_value_error(camera)]
        faults += [f'{where}/{camera}: '
                   f'{image_records.camera_value_error(camera)}'
                   for camera in bad]
        folders[name] = ([c for c in sub if c not in bad], files, count)
  ids, as_integers = image_records.person_ids(
      name for folders in people.values() for name in folders)
  for split, folders in people.items():
    # Integer names written two ways ("7", "007") are one person id.
    first = {}
    for name in folders:
      other = first.setdefault(ids[name], name)
      if other != name:
        faults.append(f'{os.path.join(root, SPLIT_FOLDERS[split])}: person '
                      f'folders {other} and {name} are both person id '
                      f'{ids[name]}; merge them')
  cameras = image_records.camera_ids(
      camera for folders in people.values()
      for sub, _, _ in folders.values() for camera in sub)
  entries, empty = {}, []
  skipped = sum(system.get(split, 0) for split in splits)
  for split in splits:
    entries[split] = []
    if split not in people:
      continue  # missing: named above
    folder = os.path.join(root, SPLIT_FOLDERS[split])
    for name in people[split]:
      reason = image_records.split_error(split, ids[name])
      if reason:
        faults.append(f'{os.path.join(folder, name)}: {reason}')
      leaves = ([(os.path.join(name, c), cameras[c])
                 for c in people[split][name][0]] if with_cameras else
                [(name, image_records.UNKNOWN_CAMERA)])
      for leaf, camera in leaves:
        files, count = market_layout.list_folder(
            os.path.join(folder, leaf), market_layout.IMAGE_EXTENSIONS)
        skipped += count
        if not files:
          empty.append(os.path.join(folder, leaf))
        entries[split] += [image_records.ImageEntry(
            path=os.path.join(folder, leaf, f), person_id=ids[name],
            camera_id=camera, filename=os.path.join(leaf, f))
                           for f in files]
    if not people[split]:
      empty.append(folder)
  extensions = ', '.join(market_layout.IMAGE_EXTENSIONS)
  faults += [f'{folder}: no images ({extensions})' for folder in empty]
  if len(faults) == 1:
    raise market_layout.LayoutError(faults[0])
  if faults:
    raise market_layout.LayoutError('\n'.join(
        [f'{root}: {len(faults)} faults:'] + ['  ' + f for f in faults]))
  if skipped:
    log(market_layout.skipped_message(skipped, root))
  named = sum(1 for i in set(ids.values()) if i > 0)
  log(f'{root}: {len(ids)} person folders ('
      f'{"integer ids" if as_integers else f"names mapped to ids 1..{named}"}'
      f'), cameras '
      f'{f"{len(cameras)} distinct" if with_cameras else "unknown"}')
  image_check.require_readable(
      [entry.path for split in splits for entry in entries[split]], root, log)
  return entries
