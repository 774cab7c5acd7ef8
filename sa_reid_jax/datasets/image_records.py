"""Identities and cameras of own data: the rules list files and person
folders share.

Plain Python (no TensorFlow): the evaluation metrics import
`UNKNOWN_CAMERA` from here.

Person ids. Market-1501 writes them as integers, -1 marking junk and 0
distractors (`market_layout`); own data often names people ("alice"). A
dataset's identities are therefore read in one of two ways, decided over
all of its identities (every split together, so that the query and the
gallery of one dataset always agree):

- every identity is written as an integer: the integers are the person ids,
  as in Market-1501 (-1 junk, 0 distractor; both only in the gallery);
- any identity is not an integer: every identity is a name. The distinct
  names other than ``-1`` and ``0`` (which keep their meanings) get the ids
  1..N in sorted (code point) order, so ``"007"`` and ``"7"`` are two
  people.

A value that looks like an integer below -1 is refused either way.

Cameras. Camera ids are names or integers >= 0; the distinct ones get the
0-based camera ids 0..C-1 in sorted order (numeric order when all are
integers), so cameras written 1..6 become 0..5 and reports, which number
cameras from 1, show them as written. Where a dataset has no cameras every
image gets `UNKNOWN_CAMERA`: the evaluation then removes no gallery image
for sharing the query's camera (`metrics.valid_queries`).
"""

import dataclasses
import re
from typing import Iterable, Optional

from sa_reid_jax.datasets import market_layout

# The camera id of an image whose camera is not known. Never "the same
# camera" as another image, unknown or not.
UNKNOWN_CAMERA = -1
# Person ids that only the gallery may hold (Market-1501's meanings).
GALLERY_ONLY_IDS = {market_layout.JUNK_PERSON_ID: 'junk',
                    market_layout.DISTRACTOR_PERSON_ID: 'distractor'}
GALLERY_ONLY_NAMES = {str(i): i for i in GALLERY_ONLY_IDS}

_INTEGER = re.compile(r'^[+-]?\d+$')


@dataclasses.dataclass(frozen=True)
class ImageEntry:
  """One image of a list file or person folder, as `tables.from_records`
  reads it (the fields of `market_layout.ImageRecord`).

  Attributes:
    path: the image file.
    person_id: int person id (see the module docstring).
    camera_id: 0-based camera id, or `UNKNOWN_CAMERA`.
    filename: a name unique in the dataset (the path relative to the list
      file's or the split's folder).
  """
  path: str
  person_id: int
  camera_id: int
  filename: str


def is_integer(text: str) -> bool:
  """Whether `text` is written as a (signed) decimal integer."""
  return bool(_INTEGER.match(text))


def person_value_error(text: str) -> Optional[str]:
  """Why `text` cannot be a person id, or None (any non-empty name, or an
  integer >= -1)."""
  if not text:
    return 'empty person id'
  if is_integer(text) and int(text) < market_layout.JUNK_PERSON_ID:
    return (f'bad person id {text!r} (an integer >= -1: -1 junk, 0 '
            'distractor, or a name)')
  return None


def camera_value_error(text: str) -> Optional[str]:
  """Why `text` cannot be a camera id, or None (any non-empty name, or an
  integer >= 0)."""
  if not text:
    return 'empty camera id'
  if is_integer(text) and int(text) < 0:
    return (f'bad camera id {text!r} (a name or an integer >= 0; leave '
            'cameras out where they are unknown)')
  return None


def person_ids(values: Iterable[str]) -> tuple[dict[str, int], bool]:
  """The person id of each identity of a dataset (module docstring).

  Args:
    values: every identity as written (valid: `person_value_error` None),
      repeats allowed.

  Returns:
    ({value: person id}, whether the values were read as integers rather
    than names).
  """
  distinct = sorted(set(values))
  if all(is_integer(v) for v in distinct):
    return {v: int(v) for v in distinct}, True
  names = [v for v in distinct if v not in GALLERY_ONLY_NAMES]
  mapping = {name: i + 1 for i, name in enumerate(names)}
  mapping.update({v: GALLERY_ONLY_NAMES[v] for v in distinct
                  if v in GALLERY_ONLY_NAMES})
  return mapping, False


def camera_ids(values: Iterable[str]) -> dict[str, int]:
  """The 0-based camera id of each camera of a dataset (module docstring).

  Args:
    values: every camera as written (valid: `camera_value_error` None).

  Returns:
    {value: 0..C-1}, in numeric order when every value is an integer (ties
    between ``"1"`` and ``"01"`` by the text), else in sorted order.
  """
  distinct = set(values)
  if all(is_integer(v) for v in distinct):
    ordered = sorted(distinct, key=lambda v: (int(v), v))
  else:
    ordered = sorted(distinct)
  return {value: i for i, value in enumerate(ordered)}


def split_error(split: str, person_id: int) -> Optional[str]:
  """Why an image of `person_id` may not be in `split`, or None: junk (-1)
  and distractors (0) only belong in the gallery (Market-1501's use)."""
  kind = GALLERY_ONLY_IDS.get(person_id)
  if kind is not None and split != 'gallery':
    return (f'person id {person_id} ({kind}) in the {split} split; it may '
            'only appear in the gallery')
  return None
