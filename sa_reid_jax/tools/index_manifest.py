"""The manifest of a gallery index: a base file and a journal of changes.

What `gallery_index` knows about every gallery file (its path relative to
the gallery folder, size in bytes, modification time in ns, and its row of
the descriptor file, or -1 and the reason it could not be read), kept so
that an update costs O(files changed) on disk:

* ``manifest.npz``, the base: every entry as arrays, the descriptor file's
  name, committed row count and descriptor shape (P, D), and its
  generation, which names its journal. Written whole (temporary file,
  fsync, `os.replace`) only when the index is built or compacted, or when
  the journal has grown past `FOLD_FRACTION` of the base or past
  `FOLD_RECORDS` records (then the journal is folded into a new base).
* ``journal-<generation>.bin``: records appended after the base, each
  the entries added or changed and the names removed by one step of an
  update, and the committed row count after it. A record is a header
  (`RECORD_MAGIC`, payload length in bytes, CRC-32 of the payload) and the
  payload (an ``.npz`` of arrays, as the base); it counts only when whole
  and its checksum matches. A torn or damaged record (a write cut short)
  ends the journal: it and anything after it are ignored, with a line
  saying so, and cut off by the next append. Rows are flushed before the
  record that names them.

Reading replays the journal onto the base in order; entries live in
numpy arrays (names in one list), so matching a million files is a few
vectorised passes, not per-file Python objects.
"""

import contextlib
import dataclasses
import io
import itertools
import os
import struct
import tempfile
import zipfile
import zlib
from typing import Callable, Optional, Sequence

import numpy as np

MANIFEST = 'manifest.npz'
JOURNAL_PREFIX = 'journal-'
# First bytes of every journal record (format 1).
RECORD_MAGIC = b'SAJ1'
# Record header: magic, payload length (bytes), CRC-32 (`zlib.crc32`) of
# the payload; little-endian.
_HEADER = struct.Struct('<4sQI')
# The journal is folded into a new base when its entries (added, changed or
# removed files) exceed this fraction of the base's: reading replays at most
# about this much beside the base, and each entry is rewritten O(1) times on
# average (a base write of N entries per FOLD_FRACTION x N changes).
FOLD_FRACTION = 0.25
# ... or when it holds more records than this (each costs a parse on read).
FOLD_RECORDS = 256
# Separates the names and reasons packed into one byte array (cannot occur
# in a path).
_SEPARATOR = '\0'


def _pack(strings: Sequence[str]) -> np.ndarray:
  return np.frombuffer(_SEPARATOR.join(strings).encode(), np.uint8)


def _unpack(array: np.ndarray, count: int) -> list[str]:
  if count == 0:
    return []
  strings = array.tobytes().decode().split(_SEPARATOR)
  if len(strings) != count:
    raise ValueError(f'{len(strings)} packed names for {count} entries')
  return strings


def fsync_folder(folder: str) -> None:
  """Makes a folder's new or renamed entries durable (where supported)."""
  with contextlib.suppress(OSError):
    descriptor = os.open(folder, os.O_RDONLY)
    try:
      os.fsync(descriptor)
    finally:
      os.close(descriptor)


@dataclasses.dataclass
class Manifest:
  """The committed state of an index folder, base and journal replayed.

  Entries are appended in order (base, then each record's); an entry is
  superseded when a later one has its name, or dropped by a removal.

  Attributes:
    data_file: the descriptor file's name (``descriptors-<g>.f32``).
    num_rows: committed rows of the descriptor file.
    part_shape: (P, D) of one descriptor ((0, 0) before the first).
    generation: the base's generation (names its journal).
    names: every entry's relative path, superseded ones included.
    sizes, mtimes, rows: int64 arrays, their first `len(names)` values the
      entries' size (bytes), mtime (ns) and row (-1: not described).
    live: bool array: the entry is current.
    position: {name: index of its current entry}.
    reasons: {name: why it could not be read}, for current entries with
      row -1.
    journal_entries, journal_records: added plus removed entries, and
      records, in the journal.
    journal_bytes: length of the journal's valid records.
  """
  data_file: str
  num_rows: int
  part_shape: tuple[int, int]
  generation: int = 0
  names: list[str] = dataclasses.field(default_factory=list)
  sizes: np.ndarray = dataclasses.field(
      default_factory=lambda: np.zeros(0, np.int64))
  mtimes: np.ndarray = dataclasses.field(
      default_factory=lambda: np.zeros(0, np.int64))
  rows: np.ndarray = dataclasses.field(
      default_factory=lambda: np.zeros(0, np.int64))
  live: np.ndarray = dataclasses.field(
      default_factory=lambda: np.zeros(0, bool))
  position: dict[str, int] = dataclasses.field(default_factory=dict)
  reasons: dict[str, str] = dataclasses.field(default_factory=dict)
  journal_entries: int = 0
  journal_records: int = 0
  journal_bytes: int = 0

  @property
  def journal_file(self) -> str:
    return f'{JOURNAL_PREFIX}{self.generation}.bin'

  def current(self) -> np.ndarray:
    """int64 indices of the current entries, in entry order."""
    return np.flatnonzero(self.live[:len(self.names)])

  def apply(self, names: Sequence[str], sizes, mtimes, rows,
            reasons: dict[str, str], removed: Sequence[str], num_rows: int,
            part_shape: Sequence[int]) -> None:
    """Applies one change (as a journal record holds it), in memory.

    Args:
      names: added or changed files (distinct).
      sizes, mtimes, rows: int64 arrays aligned with `names`.
      reasons: {name: reason} of those with row -1.
      removed: names dropped (unknown ones are ignored).
      num_rows: committed rows after the change.
      part_shape: (P, D) after the change.
    """
    for name in removed:
      index = self.position.pop(name, None)
      if index is not None:
        self.live[index] = False
        self.reasons.pop(name, None)
    start, count = len(self.names), len(names)
    if start + count > len(self.live):
      capacity = max(start + count, 2 * len(self.live))
      for field in ('sizes', 'mtimes', 'rows', 'live'):
        old = getattr(self, field)
        grown = np.zeros(capacity, old.dtype)
        grown[:start] = old[:start]
        setattr(self, field, grown)
    before = np.fromiter(map(self.position.get, names, itertools.repeat(-1)),
                         np.int64, count)
    self.live[before[before >= 0]] = False
    self.sizes[start:start + count] = sizes
    self.mtimes[start:start + count] = mtimes
    self.rows[start:start + count] = rows
    self.live[start:start + count] = True
    self.names.extend(names)
    self.position.update(zip(names, range(start, start + count)))
    for name in itertools.compress(names, before >= 0):
      self.reasons.pop(name, None)
    self.reasons.update(reasons)
    self.num_rows = int(num_rows)
    self.part_shape = tuple(int(v) for v in part_shape)


def _arrays(names, sizes, mtimes, rows, reasons, **extra) -> dict:
  failed = itertools.compress(names, np.asarray(rows) < 0)
  return {'files': _pack(names), 'sizes': np.asarray(sizes, np.int64),
          'mtimes': np.asarray(mtimes, np.int64),
          'rows': np.asarray(rows, np.int64),
          'reasons': _pack([reasons[n] for n in failed]), **extra}


def _entries(data) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray,
                            dict[str, str]]:
  """(names, sizes, mtimes, rows, reasons) of an .npz's arrays."""
  sizes, mtimes, rows = data['sizes'], data['mtimes'], data['rows']
  names = _unpack(data['files'], len(sizes))
  if not len(names) == len(mtimes) == len(rows):
    raise ValueError('the manifest\'s arrays disagree')
  failed = list(itertools.compress(names, rows < 0))
  reasons = dict(zip(failed, _unpack(data['reasons'], len(failed))))
  return names, sizes, mtimes, rows, reasons


def read(folder: str, key: str,
         log: Callable[[str], None]) -> Optional[Manifest]:
  """The folder's manifest, its journal replayed; None when absent.

  A torn or damaged journal record ends the journal (logged).

  Raises:
    ValueError: for a damaged index (base unreadable or of another key,
      descriptor rows or a journal without a base, rows named past the
      committed count).
  """
  path = os.path.join(folder, MANIFEST)
  if not os.path.exists(path):
    if any(n.startswith(('descriptors-', JOURNAL_PREFIX))
           for n in os.listdir(folder)):
      raise ValueError('descriptor rows or a journal without a manifest (an '
                       'interrupted first write)')
    return None
  try:
    with np.load(path, allow_pickle=False) as data:
      if str(data['key']) != key:
        raise ValueError('its key is not this model\'s and settings\'')
      names, sizes, mtimes, rows, reasons = _entries(data)
      manifest = Manifest(str(data['data_file']), int(data['num_rows']),
                          tuple(int(v) for v in data['part_shape']),
                          int(data['generation']))
  except (OSError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as e:
    raise ValueError(f'unreadable manifest ({type(e).__name__}: {e})'
                     ) from None
  manifest.apply(names, sizes, mtimes, rows, reasons, (), manifest.num_rows,
                 manifest.part_shape)
  _replay(folder, manifest, log)
  if manifest.rows[:len(manifest.names)].max(
      initial=-1) >= manifest.num_rows:
    raise ValueError('the manifest names rows past the committed count')
  return manifest


def _replay(folder: str, manifest: Manifest,
            log: Callable[[str], None]) -> None:
  path = os.path.join(folder, manifest.journal_file)
  if not os.path.exists(path):
    return
  with open(path, 'rb') as f:
    journal = f.read()
  offset = 0
  while offset < len(journal):
    header = journal[offset:offset + _HEADER.size]
    problem = None
    if len(header) < _HEADER.size:
      problem = 'a header cut short'
    else:
      magic, length, checksum = _HEADER.unpack(header)
      payload = journal[offset + _HEADER.size:
                        offset + _HEADER.size + length]
      if magic != RECORD_MAGIC:
        problem = 'no record marker'
      elif len(payload) < length:
        problem = f'{len(payload)} of its {length} bytes'
      elif zlib.crc32(payload) != checksum:
        problem = 'a checksum mismatch'
    if problem is not None:
      log(f'gallery index: ignoring a torn journal record at byte {offset} '
          f'of {path} ({problem}; the files it named are described again)')
      break
    try:
      with np.load(io.BytesIO(payload), allow_pickle=False) as data:
        entries = _entries(data)
        removed = _unpack(data['removed'], int(data['num_removed']))
        num_rows, part_shape = int(data['num_rows']), data['part_shape']
    except (OSError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as e:
      raise ValueError(f'unreadable journal record at byte {offset} of '
                       f'{path} ({type(e).__name__}: {e})') from None
    manifest.apply(*entries, removed, num_rows, part_shape)
    manifest.journal_entries += len(entries[0]) + len(removed)
    manifest.journal_records += 1
    offset += _HEADER.size + length
  manifest.journal_bytes = offset


def append_record(folder: str, manifest: Manifest, names: Sequence[str],
                  sizes, mtimes, rows, reasons: dict[str, str],
                  removed: Sequence[str], num_rows: int,
                  part_shape: Sequence[int]) -> None:
  """Appends one record to the journal, durably, and applies it.

  The rows it names must already be flushed. Bytes past the journal's valid
  records (a torn record) are cut off first. Arguments as `Manifest.apply`.
  """
  buffer = io.BytesIO()
  np.savez(buffer, **_arrays(
      names, sizes, mtimes, rows, reasons, removed=_pack(removed),
      num_removed=np.array(len(removed), np.int64),
      num_rows=np.array(num_rows, np.int64),
      part_shape=np.array(part_shape, np.int64)))
  payload = buffer.getvalue()
  path = os.path.join(folder, manifest.journal_file)
  new_file = not os.path.exists(path)
  with open(path, 'ab+') as f:
    f.truncate(manifest.journal_bytes)
    f.seek(manifest.journal_bytes)
    f.write(_HEADER.pack(RECORD_MAGIC, len(payload), zlib.crc32(payload)))
    f.write(payload)
    f.flush()
    os.fsync(f.fileno())
  if new_file:
    fsync_folder(folder)
  manifest.apply(names, sizes, mtimes, rows, reasons, removed, num_rows,
                 part_shape)
  manifest.journal_entries += len(names) + len(removed)
  manifest.journal_records += 1
  manifest.journal_bytes += _HEADER.size + len(payload)


def needs_fold(manifest: Manifest) -> bool:
  """Whether the journal has grown past `FOLD_FRACTION` or `FOLD_RECORDS`."""
  return (manifest.journal_records > FOLD_RECORDS or manifest.journal_entries
          > FOLD_FRACTION * len(manifest.position))


def write_base(folder: str, key: str, manifest: Manifest,
               data_file: Optional[str] = None,
               rows: Optional[np.ndarray] = None) -> Manifest:
  """Writes the current entries as a new base of the next generation.

  The base replaces the old one atomically (temporary file, fsync,
  `os.replace`); then the old journal is deleted (one left by a crash in
  between names another generation, and `gallery_index` deletes it).

  Args:
    folder: the index folder.
    key: the index's key (stored, checked on reading).
    manifest: the state to write.
    data_file: the descriptor file it names (default the manifest's).
    rows: int64 (number of current entries,): their rows in `data_file`,
      in entry order (default their current rows); with `data_file`, after
      compaction.

  Returns:
    the new manifest (journal empty).
  """
  current = manifest.current()
  names = [manifest.names[i] for i in current]
  rows = manifest.rows[current] if rows is None else np.asarray(rows,
                                                                np.int64)
  num_rows = manifest.num_rows if data_file is None else int(
      (rows >= 0).sum())
  new = Manifest(data_file or manifest.data_file, num_rows,
                 manifest.part_shape, manifest.generation + 1)
  new.apply(names, manifest.sizes[current], manifest.mtimes[current], rows,
            manifest.reasons, (), num_rows, manifest.part_shape)
  arrays = _arrays(names, new.sizes[:len(names)], new.mtimes[:len(names)],
                   rows, new.reasons, key=np.array(key),
                   data_file=np.array(new.data_file),
                   num_rows=np.array(num_rows, np.int64),
                   part_shape=np.array(new.part_shape, np.int64),
                   generation=np.array(new.generation, np.int64))
  with tempfile.NamedTemporaryFile(dir=folder, suffix='.tmp',
                                   delete=False) as f:
    try:
      np.savez(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    except BaseException:
      os.remove(f.name)
      raise
  os.replace(f.name, os.path.join(folder, MANIFEST))
  fsync_folder(folder)
  with contextlib.suppress(FileNotFoundError):
    os.remove(os.path.join(folder, manifest.journal_file))
  return new
