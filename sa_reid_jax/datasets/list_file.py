"""Datasets given as a list file: one image per row of a CSV or TSV file.

The first row is a header naming the columns (in any order, any case;
other columns are ignored):

- ``path``: the image file; a relative path is resolved against the list
  file's folder;
- ``person_id``: the identity, an integer (Market-1501's meanings: -1 junk,
  0 distractor) or a name (``alice``); see `image_records` for how names
  become ids;
- ``split``: ``train``, ``query`` or ``gallery``;
- ``camera_id`` (optional): a name or an integer >= 0. When the column is
  there it must be filled on every row; without it cameras are unknown
  (`image_records.UNKNOWN_CAMERA`), which training does not need and
  evaluation answers by removing no same-camera gallery images.

``.csv`` files are comma-separated and ``.tsv`` files tab-separated; another
extension is read with the delimiter its header holds more of (a line says
which). Quoting follows the csv module's default (Excel's) dialect; blank
lines are skipped; a UTF-8 byte order mark is dropped.

`read` checks every row before anything runs and raises one
`ListFileError` listing every fault found, each as ``FILE:LINE: what``: a
missing column, a row with another number of fields than the header, an
empty path, an unknown split, a bad person or camera id, an empty camera
cell, junk or distractors outside the gallery, a path listed twice (both
lines named), a missing file, a split without rows (a list with rows of
one evaluation split, ``query`` or ``gallery``, but not of the other: the
whole file's fault), and every image of the splits read that does not
decode. The images of the rows without another fault are decoded even
when other rows have faults (`image_check`, verdicts cached beside the
list file), so that one run names every fault.
"""

import csv
import io
import os
from typing import Callable, Sequence

from sa_reid_jax.datasets import image_check
from sa_reid_jax.datasets import image_records
from sa_reid_jax.datasets import market_layout

SPLITS = ('train', 'query', 'gallery')
REQUIRED_COLUMNS = ('path', 'person_id', 'split')
CAMERA_COLUMN = 'camera_id'
DELIMITERS = {'.csv': ',', '.tsv': '\t'}
DELIMITER_NAMES = {',': 'comma-separated', '\t': 'tab-separated'}


class ListFileError(market_layout.LayoutError):
  """A list file that cannot be read; the message names the file and line
  of every fault (one per line after the first when there are several)."""

  def __init__(self, path: str, faults: Sequence[tuple[int, str]],
               key: str = ''):
    """`faults`: [(line number, or 0 for the whole file; what)]; `key`: the
    config key to start the message with (``config.dataset.list``)."""
    self.path, self.faults = path, list(faults)
    lines = [f'{path}:{line}: {what}' if line else f'{path}: {what}'
             for line, what in self.faults]
    if len(lines) == 1:
      message = lines[0]
    else:
      message = '\n'.join([f'{path}: {len(lines)} faults:'] +
                          ['  ' + line for line in lines])
    super().__init__(f'{key}: {message}' if key else message)


def delimiter_of(path: str, header: str) -> tuple[str, str]:
  """(delimiter, how it was chosen) for a list file with header `header`."""
  extension = os.path.splitext(path)[1].lower()
  if extension in DELIMITERS:
    return DELIMITERS[extension], ''
  delimiter = '\t' if header.count('\t') >= header.count(',') else ','
  return delimiter, (f'{path}: no .csv or .tsv extension; read as '
                     f'{DELIMITER_NAMES[delimiter]} from its header')


def read_header(path: str) -> tuple[str, dict[str, int]]:
  """The delimiter and {column name: index} of a list file's header.

  Raises:
    ListFileError: for a missing or unreadable file, an empty one, or a
      header without a required column or with a name twice.
  """
  rows, delimiter, _ = _rows(path, header_only=True)
  return delimiter, _columns(path, rows[0])


def _rows(path: str, header_only: bool = False
          ) -> tuple[list[tuple[int, list[str]]], str, str]:
  """([(first line number, fields)], delimiter, delimiter note); the header
  is the first row."""
  try:
    with open(path, encoding='utf-8-sig', newline='') as f:
      text = f.read()
  except FileNotFoundError:
    raise ListFileError(path, [(0, 'missing')]) from None
  except IsADirectoryError:
    raise ListFileError(path, [(0, 'a folder, not a list file')]) from None
  except (OSError, UnicodeDecodeError) as e:
    raise ListFileError(path, [(0, f'cannot read ({e})')]) from None
  lines = text.splitlines()
  header = next((line for line in lines if line.strip()), None)
  if header is None:
    raise ListFileError(path, [(0, 'empty; expected a header row naming '
                                'the columns path, person_id, split and '
                                'optionally camera_id')])
  delimiter, note = delimiter_of(path, header)
  reader = csv.reader(io.StringIO(text), delimiter=delimiter)
  rows, line = [], 0
  try:
    for fields in reader:
      first, line = line + 1, reader.line_num
      if not any(field.strip() for field in fields):
        continue  # a blank line
      rows.append((first, [field.strip() for field in fields]))
      if header_only:
        break
  except csv.Error as e:
    raise ListFileError(path, [(reader.line_num, f'not readable as '
                                f'{DELIMITER_NAMES[delimiter]}: {e}')]
                        ) from None
  return rows, delimiter, note


def _columns(path: str, header: tuple[int, list[str]]) -> dict[str, int]:
  line, names = header
  names = [name.lower() for name in names]
  faults = []
  for name in sorted({n for n in names if n and names.count(n) > 1}):
    faults.append((line, f'column {name!r} named twice in the header'))
  for name in REQUIRED_COLUMNS:
    if name not in names:
      faults.append((line, f'missing column {name!r}; the header has '
                     f'{", ".join(repr(n) for n in names)} and needs '
                     f'{", ".join(REQUIRED_COLUMNS)} and optionally '
                     f'{CAMERA_COLUMN}'))
  if faults:
    raise ListFileError(path, faults)
  return {name: names.index(name) for name in (*REQUIRED_COLUMNS,
                                                CAMERA_COLUMN)
          if name in names}


def read(path: str, splits: Sequence[str] = SPLITS,
         log: Callable[[str], None] = print
         ) -> dict[str, list[image_records.ImageEntry]]:
  """The images of a list file's splits, every row and image checked.

  Person ids are decided over the whole file (every split), so any subset
  of `splits` gets the same ids; likewise the camera ids.

  Args:
    path: the CSV or TSV file (module docstring).
    splits: which of ``'train'``, ``'query'``, ``'gallery'`` to return and
      decode-check.
    log: where the lines on the delimiter and the person-id reading go.

  Returns:
    {split: its images in the list's row order}.

  Raises:
    ListFileError: listing every fault with its line (module docstring):
      the whole file's faults (line 0: no rows, a split of `splits` with no
      rows, rows of one evaluation split but not of the other) first, then
      the rows' faults, then the undecodable images.
  """
  rows, delimiter, note = _rows(path)
  if note:
    log(note)
  columns = _columns(path, rows[0])
  base = os.path.dirname(os.path.abspath(path))
  faults, first_line_of, kept = [], {}, []
  listed = set()  # the splits named by rows of the header's width
  for line, fields in rows[1:]:
    if len(fields) != len(rows[0][1]):
      faults.append((line, f'{len(fields)} {DELIMITER_NAMES[delimiter]} '
                     f'fields where the header has {len(rows[0][1])}'))
      continue
    value = {name: fields[index] for name, index in columns.items()}
    row_faults = []
    if not value['path']:
      row_faults.append('empty path')
    split = value['split'].lower()
    if split in SPLITS:
      listed.add(split)
    else:
      row_faults.append(f'unknown split {value["split"]!r}; expected one '
                        f'of {", ".join(SPLITS)}')
    reason = image_records.person_value_error(value['person_id'])
    if reason:
      row_faults.append(reason)
    if CAMERA_COLUMN in value:
      reason = image_records.camera_value_error(value[CAMERA_COLUMN])
      if reason == 'empty camera id':
        reason = ('no camera_id: the camera column must be filled on '
                  'every row, or left out (cameras unknown)')
      if reason:
        row_faults.append(reason)
    faults += [(line, what) for what in row_faults]
    if row_faults:
      continue
    image = os.path.normpath(os.path.join(base, value['path']))
    if image in first_line_of:
      faults.append((line, f'{value["path"]} listed twice (first on line '
                     f'{first_line_of[image]})'))
      continue
    first_line_of[image] = line
    kept.append((line, split, image, value))
  ids, as_integers = image_records.person_ids(
      v['person_id'] for *_, v in kept)
  cameras = (image_records.camera_ids(v[CAMERA_COLUMN] for *_, v in kept)
             if CAMERA_COLUMN in columns else {})
  entries = {split: [] for split in SPLITS}
  for line, split, image, value in kept:
    person_id = ids[value['person_id']]
    reason = image_records.split_error(split, person_id)
    if reason:
      faults.append((line, reason))
      continue
    if not os.path.isfile(image):
      faults.append((line, f'missing file {image}'))
      continue
    entries[split].append((line, image_records.ImageEntry(
        path=image, person_id=person_id,
        camera_id=cameras.get(value.get(CAMERA_COLUMN),
                              image_records.UNKNOWN_CAMERA),
        filename=os.path.relpath(image, base))))
  faults = _file_faults(rows, listed, splits) + faults
  if kept:
    log(f'{path}: {_reading(ids, as_integers, kept)}; cameras '
        f'{f"{len(cameras)} distinct" if cameras else "unknown"}')
  # The images of the rows without another fault, decoded whatever the
  # other rows hold: their faults go into the same error.
  lines = {entry.path: line for split in splits
           for line, entry in entries[split]}
  failures = image_check.check_files(list(lines), base, log)
  faults += [(lines[os.path.normpath(image)], f'unreadable image {image}: '
              f'{why}') for image, why in failures]
  if faults:
    raise ListFileError(path, faults)
  return {split: [entry for _, entry in entries[split]] for split in splits}


def _file_faults(rows: Sequence[tuple[int, list[str]]], listed: set[str],
                 splits: Sequence[str]) -> list[tuple[int, str]]:
  """The faults of the whole file (line 0): no rows at all, one evaluation
  split without the other (when `splits` holds one: a train source's
  other rows are not read), or a split of `splits` that no row names."""
  if len(rows) == 1:
    return [(0, 'no images listed')]
  faults = []
  evaluation = listed & {'query', 'gallery'}
  if len(evaluation) == 1 and {'query', 'gallery'} & set(splits):
    there = evaluation.pop()
    missing = 'gallery' if there == 'query' else 'query'
    faults.append((0, f'no {missing!r} rows, but its {there} split is '
                   'there: evaluation needs both (or neither, for a '
                   'dataset that only trains)'))
    listed = listed | {missing}  # named by the fault above
  return faults + [(0, f'no {split!r} rows') for split in splits
                   if split not in listed]


def _reading(ids: dict[str, int], as_integers: bool,
             kept: Sequence[tuple[int, str, str, dict[str, str]]]) -> str:
  """How the person ids were read, with the first value that is not an
  integer (`image_records.person_ids`)."""
  if as_integers:
    return f'{len(set(ids.values()))} person ids, read as integers'
  line, name = next((line, v['person_id']) for line, _, _, v in kept
                    if not image_records.is_integer(v['person_id']))
  names = sum(1 for i in set(ids.values()) if i > 0)
  return (f'{names} person names, mapped to ids 1..{names} in sorted '
          f'order (line {line}: {name!r} is not an integer)')
