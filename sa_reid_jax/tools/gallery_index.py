"""The gallery index of `search`: descriptors on disk that grow by appending.

One folder per model and settings (``<key[:16]>/``, see `cache_key`) holds

* ``descriptors-<generation>.f32``: float32 rows of P x D values (a
  descriptor flattened), appended to, never rewritten in place; read back
  memory-mapped (`numpy.memmap`), so a gallery larger than memory is
  ranked from the page cache;
* ``norms-<generation>.f32``: each row's squared L2 norm (float32), appended
  with it, so ranking does not recompute it (`nearest.nearest`'s `norms`);
* ``manifest.npz`` and ``journal-<n>.bin`` (`index_manifest`): for every
  gallery file its path relative to the gallery folder, size and
  modification time (ns), and its row in the descriptor file or the reason
  it could not be read; and how many rows are committed. The base
  (``manifest.npz``) is written whole at build, compaction or when the
  journal has grown; an update appends a record of its changes to the
  journal, so adding or removing files costs O(files changed) on disk.

A file whose size and modification time are unchanged keeps its row; an
added or changed file is described and appended; a removed or changed
file's old row is left dead (no longer named by the manifest). When dead
rows are more than `COMPACT_DEAD_FRACTION` of the file, the live rows are
copied into a new generation of the file (the only rewrite) and the old
one deleted.

Crash safety: rows and norms are appended, flushed and fsync'ed before the
journal record naming them (each record checksummed; a torn last record is
ignored with a line saying so), and a new base replaces the old one
atomically (temporary file, fsync, `os.replace`) before the old journal is
deleted, so a crash leaves the index as of the last whole record. Rows past
the committed count (an append cut short) are cut off at the next append.
A manifest that cannot be read, names a missing or too short descriptor or
norm file, or a descriptor file or journal without a manifest, is logged
and rebuilt. One process updates an index at a time (an exclusive
`fcntl.flock` on ``lock``; a second waits, with a line saying so).

Where: ``FOLDER/.sa_reid_cache/`` (listing skips hidden folders), else,
for a gallery folder that cannot be written, the user's cache folder by
the rule `image_check` uses for its verdicts (`image_check.cache_files`):
``$XDG_CACHE_HOME`` or ``~/.cache``, then ``sa_reid_jax/gallery_index/``
and a hash of the gallery folder's absolute path.
"""

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import itertools
import os
from typing import Any, Callable, Optional, Sequence

import numpy as np

from sa_reid_jax.datasets import image_check
from sa_reid_jax.datasets import market_layout
from sa_reid_jax.tools import index_manifest

# The cache folder inside a gallery folder (list_images skips hidden ones).
CACHE_FOLDER = market_layout.CACHE_FOLDER
# Part of the index key: bump when decoding, preprocessing or the index
# layout changes (version 1 was one .npz of every descriptor, rewritten whole;
# version 2 a manifest rewritten whole at every update, without norms).
CACHE_VERSION = 3
# Folder of the indexes under the user's cache folder (read-only galleries).
USER_CACHE_NAME = 'gallery_index'
# Compaction (copying the live rows into a new file) runs when dead rows are
# more than this fraction of the descriptor file: at most 2x the live data
# on disk, and each row copied O(1) times on average over many updates.
COMPACT_DEAD_FRACTION = 0.5
LOCK = 'lock'
# Rows copied per step while compacting (bounded memory: rows x P x D x 4 B).
COPY_ROWS = 4096
# Files described per call of `describe` before their rows are appended:
# bounds the descriptors held in memory (SA's 6 x 2048 float32: 400 MB).
DESCRIBE_CHUNK = 8192
# Names of the files an index folder holds besides its lock and base
# manifest (`index_manifest.MANIFEST`).
_INDEX_FILES = ('descriptors-', 'norms-', index_manifest.JOURNAL_PREFIX)
Describe = Callable[[list[str]], tuple[dict[str, np.ndarray], dict[str, str]]]


def cache_key(fingerprint: str, image_size: Sequence[int], flip: bool) -> str:
  """The key of a gallery index: model, input size, flip, code version.

  Args:
    fingerprint: `store.model_fingerprint` of the model.
    image_size: network input (height, width).
    flip: whether descriptors average in the mirrored image.

  Returns:
    a hex SHA-256 digest.
  """
  settings = {'version': CACHE_VERSION, 'model': fingerprint,
              'image_size': [int(v) for v in image_size], 'flip': bool(flip)}
  return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()
                        ).hexdigest()


def plural(count: int, noun: str) -> str:
  """`count` and `noun`, with an 's' unless `count` is 1 (``'3 files'``)."""
  return f'{count} {noun}' + ('' if count == 1 else 's')


def index_folders(folder: str, key: str) -> tuple[str, str]:
  """(the index folder inside gallery `folder`, its user-cache fallback).

  The fallback follows `image_check.cache_files`' rule for the same folder
  (same base and hash of the absolute path), under `USER_CACHE_NAME`.
  """
  _, verdicts = image_check.cache_files(folder)
  user_cache = os.path.dirname(os.path.dirname(verdicts))
  name = os.path.splitext(os.path.basename(verdicts))[0]
  return (os.path.join(os.path.abspath(folder), CACHE_FOLDER, key[:16]),
          os.path.join(user_cache, USER_CACHE_NAME, name, key[:16]))


@dataclasses.dataclass
class GalleryIndex:
  """The readable gallery files and their descriptors.

  Attributes:
    paths: readable gallery files, in the input order.
    rows: int64 (len(paths),): each file's row of `descriptors`.
    descriptors: float32 (num_rows, P * D), memory-mapped from the index
      (dead rows included) or in memory without one.
    part_shape: (P, D) of one descriptor.
    failures: {path: reason} of the unreadable gallery files.
    info: ``{'index', 'reused', 'described', 'removed'}``: the index folder
      (None without one) and counts of files reused, described and dropped.
    norms: float32 (num_rows,) squared L2 norm of each row of `descriptors`
      (memory-mapped, stored when the row was appended), or None: computed
      when needed.
  """
  paths: list[str]
  rows: np.ndarray
  descriptors: np.ndarray
  part_shape: tuple[int, int]
  failures: dict[str, str]
  info: dict[str, Any]
  norms: Optional[np.ndarray] = None

  def descriptor(self, position: int) -> np.ndarray:
    """The (P, D) descriptor of ``paths[position]``."""
    return np.asarray(self.descriptors[self.rows[position]]).reshape(
        self.part_shape)


def _norms_file(data_file: str) -> str:
  """The squared-norm file beside descriptor file `data_file`."""
  return data_file.replace('descriptors-', 'norms-', 1)


def _check_files(folder: str, manifest: index_manifest.Manifest) -> None:
  """Raises ValueError when the descriptor or norm file is too short."""
  row_bytes = 4 * int(np.prod(manifest.part_shape))
  for name, width in ((manifest.data_file, row_bytes),
                      (_norms_file(manifest.data_file), 4)):
    path = os.path.join(folder, name)
    size = os.path.getsize(path) if os.path.exists(path) else -1
    if manifest.num_rows and size < manifest.num_rows * width:
      raise ValueError(f'{name} holds {max(size, 0)} bytes, the manifest '
                       f'names {manifest.num_rows * width}')


def _append(folder: str, data_file: str, committed_rows: int,
            rows: np.ndarray) -> None:
  """Writes `rows` and their squared norms after the first `committed_rows`
  rows of `data_file` and its norm file, durably."""
  rows = np.ascontiguousarray(rows, np.float32)
  norms = np.einsum('ij,ij->i', rows, rows)
  for name, values in ((data_file, rows), (_norms_file(data_file), norms)):
    width = values.itemsize * (rows.shape[1] if values.ndim == 2 else 1)
    with open(os.path.join(folder, name), 'ab+') as f:
      f.truncate(committed_rows * width)  # drops an interrupted append
      f.seek(committed_rows * width)
      f.write(values.tobytes())
      f.flush()
      os.fsync(f.fileno())


def _memmap(path: str, num_rows: int, width: int) -> np.ndarray:
  if num_rows == 0:
    return np.zeros((0, width), np.float32)
  return np.memmap(path, np.float32, 'r', shape=(num_rows, width))


def _compact(folder: str, key: str,
             manifest: index_manifest.Manifest) -> index_manifest.Manifest:
  """A new generation of the descriptor and norm files holding the rows of
  current entries only (in their old order), and a new base naming it."""
  width = int(np.prod(manifest.part_shape))
  old = _memmap(os.path.join(folder, manifest.data_file), manifest.num_rows,
                width)
  old_norms = _memmap(os.path.join(folder, _norms_file(manifest.data_file)),
                      manifest.num_rows, 1)
  old_rows = manifest.rows[manifest.current()]
  order = np.argsort(old_rows, kind='stable')
  order = order[old_rows[order] >= 0]
  new_rows = np.full(len(old_rows), -1, np.int64)
  new_rows[order] = np.arange(len(order))
  generation = int(manifest.data_file.split('-')[1].split('.')[0]) + 1
  data_file = f'descriptors-{generation}.f32'
  for name, source in ((data_file, old), (_norms_file(data_file), old_norms)):
    with open(os.path.join(folder, name), 'wb') as f:
      for start in range(0, len(order), COPY_ROWS):
        chunk = old_rows[order[start:start + COPY_ROWS]]
        f.write(np.ascontiguousarray(source[chunk]).tobytes())
      f.flush()
      os.fsync(f.fileno())
  return index_manifest.write_base(folder, key, manifest, data_file,
                                   new_rows)


@contextlib.contextmanager
def _locked(folder: str, log: Callable[[str], None]):
  with open(os.path.join(folder, LOCK), 'a') as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EAGAIN, errno.EACCES):
        raise
      log(f'gallery index: waiting for another process updating {folder}')
      fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def _writable_folder(gallery_folder: str, key: str,
                     log: Callable[[str], None]) -> Optional[str]:
  """The index folder to use: in the gallery, else the user cache."""
  in_folder, fallback = index_folders(gallery_folder, key)
  for folder in (in_folder, fallback):
    try:
      os.makedirs(folder, exist_ok=True)
      with open(os.path.join(folder, LOCK), 'a'):
        pass
    except OSError:
      continue
    if folder == fallback:
      log(f'gallery index: {os.path.dirname(in_folder)} is not writable; '
          f'index kept in {folder}')
    return folder
  log('gallery index: no writable folder; descriptors kept in memory only')
  return None


def open_index(paths: Sequence[str], *, key: str,
               gallery_folder: Optional[str], describe: Describe,
               log: Callable[[str], None]) -> GalleryIndex:
  """The gallery's descriptors: indexed ones reused, the rest described.

  Logs whether the index was used and how many files were reused and
  described; updates the index (see `update`). A file's size and
  modification time are taken before it is described, so a file rewritten
  while it was read is described again next time.

  Args:
    paths: absolute, normalised (`os.path.abspath`) gallery image files; a
      repeated one counts once.
    key: `cache_key` of the model and settings.
    gallery_folder: the folder the index belongs to (names in it are kept
      relative to it); None: no index, every file described in memory.
    describe: maps the files to describe to ({path: (P, D) float32
      descriptor}, {path: reason}) for the readable and unreadable ones.
    log: where messages go.

  Returns:
    a `GalleryIndex`, its failures including files that cannot be stat'ed.
  """
  paths = list(dict.fromkeys(paths))
  readable, sizes, mtimes, failures = [], [], [], {}
  for path in paths:
    try:
      stat = os.stat(path)
    except OSError as e:
      failures[path] = f'cannot stat: {e.strerror}'
      continue
    readable.append(path)
    sizes.append(stat.st_size)
    mtimes.append(stat.st_mtime_ns)
  folder = (_writable_folder(gallery_folder, key, log)
            if gallery_folder else None)
  if folder is None:
    if not gallery_folder:
      log('gallery index: off')
    index = _in_memory(readable, describe)
  else:
    with _locked(folder, log):
      index = update(folder, key, os.path.abspath(gallery_folder), readable,
                     np.array(sizes, np.int64), np.array(mtimes, np.int64),
                     describe, log)
  if failures:
    index.failures = {p: index.failures.get(p, failures.get(p)) for p in paths
                      if p in index.failures or p in failures}
  return index


def _in_memory(paths: Sequence[str], describe: Describe) -> GalleryIndex:
  descriptors, failures = describe(list(paths))
  kept = [p for p in paths if p in descriptors]
  stacked = np.stack([descriptors[p] for p in kept]) if kept else np.zeros(
      (0, 0, 0), np.float32)
  return GalleryIndex(
      kept, np.arange(len(kept), dtype=np.int64),
      stacked.reshape(len(kept), -1).astype(np.float32),
      tuple(stacked.shape[1:]),
      {p: failures.get(p, 'could not be read') for p in paths
       if p not in descriptors},
      {'index': None, 'reused': 0, 'described': len(paths), 'removed': 0})


def _relative(paths: Sequence[str], base: str) -> list[str]:
  """`os.path.relpath(p, base)` of each path; a prefix cut for those inside
  `base` (the same for normalised paths, and ~50x faster)."""
  prefix = os.path.join(base, '')
  cut = len(prefix)
  return [p[cut:] if p.startswith(prefix) else os.path.relpath(p, base)
          for p in paths]


def _open_manifest(folder: str, key: str,
                   log: Callable[[str], None]) -> index_manifest.Manifest:
  """The folder's manifest; a new, empty one when absent or damaged."""
  try:
    manifest = index_manifest.read(folder, key, log)
    if manifest is not None:
      _check_files(folder, manifest)
  except ValueError as e:
    log(f'gallery index: damaged index {folder} ({e}); rebuilding it')
    manifest = None
    for name in os.listdir(folder):
      if name.startswith(_INDEX_FILES) or name == index_manifest.MANIFEST:
        os.remove(os.path.join(folder, name))
  if manifest is None:
    # An empty base (generation 0) first: the records of the first build go
    # to its journal, so a build cut short keeps the chunks it described.
    manifest = index_manifest.write_base(folder, key, index_manifest.Manifest(
        'descriptors-0.f32', 0, (0, 0), generation=-1))
  keep = {manifest.data_file, _norms_file(manifest.data_file),
          manifest.journal_file}
  for name in os.listdir(folder):
    # Left by a compaction or a fold cut short (before or after its base).
    if name.startswith(_INDEX_FILES) and name not in keep:
      os.remove(os.path.join(folder, name))
  return manifest


def update(folder: str, key: str, base: str, paths: Sequence[str],
           sizes: np.ndarray, mtimes: np.ndarray, describe: Describe,
           log: Callable[[str], None],
           describe_chunk: Optional[int] = None) -> GalleryIndex:
  """Brings the index in `folder` up to date with the files `paths`.

  The caller holds the folder's lock (`open_index` does). Files whose
  (size, mtime_ns) match the manifest keep their row; the others are
  described `describe_chunk` at a time (bounding memory to one chunk of
  descriptors), appended, and recorded in the journal (one record per
  chunk, the first also naming the files no longer in `paths`, whose rows
  become dead). Compacts past `COMPACT_DEAD_FRACTION`; folds the journal
  into a new base past `index_manifest.FOLD_FRACTION`. Matching the files
  against the manifest is vectorised; the rest costs O(files changed).

  Args:
    folder: the index folder (exists, writable).
    key: `cache_key` of the model and settings.
    base: the gallery folder the manifest's names are relative to
      (absolute, normalised).
    paths: the gallery files (distinct; absolute, normalised), in order.
    sizes: int64 (len(paths),) sizes in bytes.
    mtimes: int64 (len(paths),) modification times in ns.
    describe: as in `open_index`.
    log: where messages go.
    describe_chunk: files described (and appended) per call of `describe`
      (default `DESCRIBE_CHUNK`).

  Returns:
    a `GalleryIndex` over the memory-mapped descriptor file.

  Raises:
    ValueError: naming the index folder when `describe` returns
      descriptors of another shape than the index holds.
  """
  manifest = _open_manifest(folder, key, log)
  names = _relative(paths, base)
  sizes, mtimes = np.asarray(sizes, np.int64), np.asarray(mtimes, np.int64)
  position = np.fromiter(
      map(manifest.position.get, names, itertools.repeat(-1)), np.int64,
      len(names))
  known = position >= 0
  same = known.copy()
  same[known] = ((manifest.sizes[position[known]] == sizes[known])
                 & (manifest.mtimes[position[known]] == mtimes[known]))
  stale = np.flatnonzero(~same)
  matched = np.zeros(len(manifest.names), bool)
  matched[position[known]] = True
  removed = [manifest.names[i] for i in np.flatnonzero(
      manifest.live[:len(manifest.names)] & ~matched)]
  reused, num_removed = len(paths) - len(stale), len(removed)
  if not len(stale):
    log(f'gallery index: used ({plural(reused, "file")} unchanged, '
        f'{folder})')
  elif reused:
    log(f'gallery index: used for {reused} of {len(paths)} files; '
        f'describing {plural(len(stale), "new or changed file")}')
  elif manifest.position:
    log('gallery index: no entry matches the current files; describing '
        f'{plural(len(stale), "file")}')
  else:
    log('gallery index: none for this model and settings; describing '
        f'{plural(len(stale), "file")}')
  describe_chunk = describe_chunk or DESCRIBE_CHUNK
  for start in range(0, len(stale), describe_chunk):
    chunk = stale[start:start + describe_chunk]
    chunk_paths = [paths[i] for i in chunk]
    descriptors, failures = describe(chunk_paths)
    good = np.array([p in descriptors for p in chunk_paths], bool)
    rows = np.full(len(chunk), -1, np.int64)
    num_rows, part_shape = manifest.num_rows, manifest.part_shape
    if good.any():
      stacked = np.stack([np.asarray(descriptors[p], np.float32)
                          for p in itertools.compress(chunk_paths, good)])
      if num_rows and stacked.shape[1:] != part_shape:
        raise ValueError(f'gallery index {folder}: descriptors of shape '
                         f'{stacked.shape[1:]}, the index holds {part_shape}')
      part_shape = tuple(int(v) for v in stacked.shape[1:])
      _append(folder, manifest.data_file, num_rows,
              stacked.reshape(len(stacked), -1))
      rows[good] = np.arange(num_rows, num_rows + len(stacked))
      num_rows += len(stacked)
    reasons = {names[i]: failures.get(paths[i], 'could not be read')
               for i in chunk[~good]}
    index_manifest.append_record(
        folder, manifest, [names[i] for i in chunk], sizes[chunk],
        mtimes[chunk], rows, reasons, removed, num_rows, part_shape)
    removed = []
  if removed:
    index_manifest.append_record(
        folder, manifest, [], np.zeros(0, np.int64), np.zeros(0, np.int64),
        np.zeros(0, np.int64), {}, removed, manifest.num_rows,
        manifest.part_shape)
  live_rows = int((manifest.rows[manifest.current()] >= 0).sum())
  if manifest.num_rows - live_rows > COMPACT_DEAD_FRACTION * manifest.num_rows:
    log(f'gallery index: compacting {folder} ({manifest.num_rows - live_rows}'
        f' of {manifest.num_rows} rows no longer used)')
    old_files = (manifest.data_file, _norms_file(manifest.data_file))
    manifest = _compact(folder, key, manifest)
    for name in old_files:
      os.remove(os.path.join(folder, name))
  elif index_manifest.needs_fold(manifest):
    manifest = index_manifest.write_base(folder, key, manifest)
  if len(stale) or num_removed:
    log(f'gallery index: wrote {folder}')
  rows = manifest.rows[np.fromiter(map(manifest.position.get, names),
                                   np.int64, len(names))]
  good = rows >= 0
  width = int(np.prod(manifest.part_shape))
  return GalleryIndex(
      list(itertools.compress(paths, good)), rows[good],
      _memmap(os.path.join(folder, manifest.data_file), manifest.num_rows,
              width),
      tuple(manifest.part_shape),
      {paths[i]: manifest.reasons[names[i]] for i in np.flatnonzero(~good)},
      {'index': folder, 'reused': reused, 'described': len(stale),
       'removed': num_removed},
      _memmap(os.path.join(folder, _norms_file(manifest.data_file)),
              manifest.num_rows, 1)[:, 0])
