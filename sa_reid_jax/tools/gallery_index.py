"""The gallery index of `search`: descriptors on disk that grow by appending.

One folder per model and settings (``<key[:16]>/``, see `cache_key`) holds

* ``descriptors-<generation>.f32``: float32 rows of P x D values (a
  descriptor flattened), appended to, never rewritten in place; read back
  memory-mapped (`numpy.memmap`), so a gallery larger than memory is
  ranked from the page cache;
* ``manifest.npz``: for every gallery file its path relative to the
  gallery folder, size and modification time (ns), and its row in the
  descriptor file or the reason it could not be read; and how many rows of
  the descriptor file are committed.

A file whose size and modification time are unchanged keeps its row; an
added or changed file is described and appended; a removed or changed
file's old row is left dead (no longer named by the manifest). When dead
rows are more than `COMPACT_DEAD_FRACTION` of the file, the live rows are
copied into a new generation of the file (the only rewrite) and the old
one deleted.

Crash safety: rows are appended, flushed and fsync'ed before the manifest
that names them replaces the old one (temporary file, fsync, `os.replace`),
so a crash leaves either the old or the new index. Rows past the committed
count (an append cut short) are cut off at the next append. A manifest that
cannot be read, names a missing or too short descriptor file, or a
descriptor file without a manifest, is logged and rebuilt. One process
updates an index at a time (an exclusive `fcntl.flock` on ``lock``; a
second waits, with a line saying so).

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
import os
import tempfile
import zipfile
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

from sa_reid_jax.datasets import image_check
from sa_reid_jax.datasets import market_layout

# The cache folder inside a gallery folder (list_images skips hidden ones).
CACHE_FOLDER = market_layout.CACHE_FOLDER
# Part of the index key: bump when decoding, preprocessing or the index
# layout changes (version 1 was one .npz of every descriptor, rewritten whole).
CACHE_VERSION = 2
# Folder of the indexes under the user's cache folder (read-only galleries).
USER_CACHE_NAME = 'gallery_index'
# Compaction (copying the live rows into a new file) runs when dead rows are
# more than this fraction of the descriptor file: at most 2x the live data
# on disk, and each row copied O(1) times on average over many updates.
COMPACT_DEAD_FRACTION = 0.5
MANIFEST = 'manifest.npz'
LOCK = 'lock'
# Rows copied per step while compacting (bounded memory: rows x P x D x 4 B).
COPY_ROWS = 4096
# Files described per call of `describe` before their rows are appended:
# bounds the descriptors held in memory (SA's 6 x 2048 float32: 400 MB).
DESCRIBE_CHUNK = 8192
# Separates the names and reasons packed into one byte array in the manifest
# (cannot occur in a path).
_SEPARATOR = b'\0'
Describe = Callable[[list[str]], tuple[dict[str, np.ndarray], dict[str, str]]]


def model_fingerprint(model, variables: Any) -> str:
  """A hash of everything in a model that determines its descriptors.

  Covers the module's configuration (its repr: class and attributes) and the
  name, shape, dtype and bytes of every variable, so it identifies the
  weights themselves, not the files they came from.

  Args:
    model: a Flax module.
    variables: its variables.

  Returns:
    a hex SHA-256 digest.
  """
  digest = hashlib.sha256(repr(model).encode())
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(variables))[0]
  for path, leaf in leaves:
    array = np.ascontiguousarray(leaf)
    digest.update(f'{jax.tree_util.keystr(path)} {array.dtype.str} '
                  f'{array.shape}'.encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def cache_key(fingerprint: str, image_size: Sequence[int], flip: bool) -> str:
  """The key of a gallery index: model, input size, flip, code version.

  Args:
    fingerprint: `model_fingerprint` of the model.
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
  """
  paths: list[str]
  rows: np.ndarray
  descriptors: np.ndarray
  part_shape: tuple[int, int]
  failures: dict[str, str]
  info: dict[str, Any]

  def descriptor(self, position: int) -> np.ndarray:
    """The (P, D) descriptor of ``paths[position]``."""
    return np.asarray(self.descriptors[self.rows[position]]).reshape(
        self.part_shape)


@dataclasses.dataclass
class _Manifest:
  """The committed state of an index folder."""
  data_file: str
  num_rows: int
  part_shape: tuple[int, int]
  # {relative path: (size, mtime_ns, row or -1, reason or '')}
  entries: dict[str, tuple[int, int, int, str]]


def _pack(strings: Sequence[str]) -> np.ndarray:
  return np.frombuffer(_SEPARATOR.join(s.encode() for s in strings),
                       np.uint8)


def _unpack(array: np.ndarray, count: int) -> list[str]:
  if count == 0:
    return []
  strings = [s.decode() for s in array.tobytes().split(_SEPARATOR)]
  if len(strings) != count:
    raise ValueError(f'{len(strings)} packed names for {count} entries')
  return strings


def _read_manifest(folder: str, key: str) -> Optional[_Manifest]:
  """The folder's manifest; None when absent. Raises ValueError if damaged."""
  path = os.path.join(folder, MANIFEST)
  if not os.path.exists(path):
    if any(n.startswith('descriptors-') for n in os.listdir(folder)):
      raise ValueError('descriptor rows without a manifest (an interrupted '
                       'first write)')
    return None
  try:
    with np.load(path, allow_pickle=False) as data:
      if str(data['key']) != key:
        raise ValueError('its key is not this model\'s and settings\'')
      sizes, mtimes, rows = data['sizes'], data['mtimes'], data['rows']
      names = _unpack(data['files'], len(sizes))
      failed = rows < 0
      reasons = iter(_unpack(data['reasons'], int(failed.sum())))
      manifest = _Manifest(str(data['data_file']), int(data['num_rows']),
                           tuple(int(v) for v in data['part_shape']), {})
  except (OSError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as e:
    raise ValueError(f'unreadable manifest ({type(e).__name__}: {e})'
                     ) from None
  if not (len(names) == len(mtimes) == len(rows)) or (
      rows.max(initial=-1) >= manifest.num_rows):
    raise ValueError('the manifest\'s arrays disagree')
  data_path = os.path.join(folder, manifest.data_file)
  row_bytes = 4 * int(np.prod(manifest.part_shape))
  size = os.path.getsize(data_path) if os.path.exists(data_path) else -1
  if manifest.num_rows and size < manifest.num_rows * row_bytes:
    raise ValueError(f'{manifest.data_file} holds {max(size, 0)} bytes, '
                     f'the manifest names {manifest.num_rows * row_bytes}')
  for name, size, mtime, row, fail in zip(names, sizes, mtimes, rows, failed):
    manifest.entries[name] = (int(size), int(mtime), int(row),
                              next(reasons) if fail else '')
  return manifest


def _fsync_folder(folder: str) -> None:
  with contextlib.suppress(OSError):
    descriptor = os.open(folder, os.O_RDONLY)
    try:
      os.fsync(descriptor)
    finally:
      os.close(descriptor)


def _write_manifest(folder: str, key: str, manifest: _Manifest) -> None:
  """Replaces the manifest atomically (temporary file, fsync, rename)."""
  names = sorted(manifest.entries)
  values = [manifest.entries[n] for n in names]
  arrays = {
      'key': np.array(key), 'data_file': np.array(manifest.data_file),
      'num_rows': np.array(manifest.num_rows, np.int64),
      'part_shape': np.array(manifest.part_shape, np.int64),
      'files': _pack(names),
      'sizes': np.array([v[0] for v in values], np.int64),
      'mtimes': np.array([v[1] for v in values], np.int64),
      'rows': np.array([v[2] for v in values], np.int64),
      'reasons': _pack([v[3] for v in values if v[2] < 0]),
  }
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
  _fsync_folder(folder)


def _append(path: str, committed_rows: int, rows: np.ndarray) -> None:
  """Writes `rows` after the first `committed_rows` rows, durably."""
  row_bytes = rows.shape[1] * 4
  with open(path, 'ab+') as f:
    f.truncate(committed_rows * row_bytes)  # drops an interrupted append
    f.seek(committed_rows * row_bytes)
    f.write(np.ascontiguousarray(rows, np.float32).tobytes())
    f.flush()
    os.fsync(f.fileno())


def _memmap(path: str, num_rows: int, width: int) -> np.ndarray:
  if num_rows == 0:
    return np.zeros((0, width), np.float32)
  return np.memmap(path, np.float32, 'r', shape=(num_rows, width))


def _compact(folder: str, manifest: _Manifest) -> _Manifest:
  """A new generation of the descriptor file holding the live rows only."""
  width = int(np.prod(manifest.part_shape))
  old = _memmap(os.path.join(folder, manifest.data_file), manifest.num_rows,
                width)
  live = sorted((n, e) for n, e in manifest.entries.items() if e[2] >= 0)
  generation = int(manifest.data_file.split('-')[1].split('.')[0]) + 1
  data_file = f'descriptors-{generation}.f32'
  path = os.path.join(folder, data_file)
  with open(path, 'wb') as f:
    for start in range(0, len(live), COPY_ROWS):
      chunk = [e[2] for _, e in live[start:start + COPY_ROWS]]
      f.write(np.ascontiguousarray(old[chunk]).tobytes())
    f.flush()
    os.fsync(f.fileno())
  entries = dict(manifest.entries)
  for row, (name, entry) in enumerate(live):
    entries[name] = (entry[0], entry[1], row, entry[3])
  return _Manifest(data_file, len(live), manifest.part_shape, entries)


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
    paths: absolute gallery image files.
    key: `cache_key` of the model and settings.
    gallery_folder: the folder the index belongs to (names in it are kept
      relative to it); None: no index, every file described in memory.
    describe: maps the files to describe to ({path: (P, D) float32
      descriptor}, {path: reason}) for the readable and unreadable ones.
    log: where messages go.

  Returns:
    a `GalleryIndex`, its failures including files that cannot be stat'ed.
  """
  signatures, failures = {}, {}
  for path in paths:
    try:
      stat = os.stat(path)
      signatures[path] = (stat.st_size, stat.st_mtime_ns)
    except OSError as e:
      failures[path] = f'cannot stat: {e.strerror}'
  folder = (_writable_folder(gallery_folder, key, log)
            if gallery_folder else None)
  if folder is None:
    if not gallery_folder:
      log('gallery index: off')
    index = _in_memory(list(signatures), describe)
  else:
    with _locked(folder, log):
      index = update(folder, key, os.path.abspath(gallery_folder),
                     signatures, describe, log)
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


def update(folder: str, key: str, base: str,
           signatures: dict[str, tuple[int, int]], describe: Describe,
           log: Callable[[str], None],
           describe_chunk: Optional[int] = None) -> GalleryIndex:
  """Brings the index in `folder` up to date with the files of `signatures`.

  The caller holds the folder's lock (`open_index` does). Files whose
  (size, mtime_ns) match the manifest keep their row; the others are
  described `describe_chunk` at a time (bounding memory to one chunk of
  descriptors) and appended; entries of files absent from `signatures`
  are dropped (their rows dead). Compacts past `COMPACT_DEAD_FRACTION`.

  Args:
    folder: the index folder (exists, writable).
    key: `cache_key` of the model and settings.
    base: the gallery folder the manifest's names are relative to.
    signatures: {path: (size in bytes, mtime in ns)}, in gallery order.
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
  try:
    manifest = _read_manifest(folder, key)
  except ValueError as e:
    log(f'gallery index: damaged index {folder} ({e}); rebuilding it')
    manifest = None
    for name in os.listdir(folder):
      if name.startswith('descriptors-') or name == MANIFEST:
        os.remove(os.path.join(folder, name))
  if manifest is None:
    manifest = _Manifest('descriptors-0.f32', 0, (0, 0), {})
  for name in os.listdir(folder):
    # Left by a compaction cut short (before or after its manifest).
    if name.startswith('descriptors-') and name != manifest.data_file:
      os.remove(os.path.join(folder, name))
  known = manifest.entries
  names = {p: os.path.relpath(p, base) for p in signatures}
  entries, stale = {}, []
  for path, signature in signatures.items():
    entry = known.get(names[path])
    if entry is not None and entry[:2] == tuple(signature):
      entries[names[path]] = entry
    else:
      entries[names[path]] = (*signature, -1, 'not described')
      stale.append(path)
  reused = len(signatures) - len(stale)
  removed = len(set(known) - set(entries))
  if not stale:
    log(f'gallery index: used ({plural(reused, "file")} unchanged, '
        f'{folder})')
  elif reused:
    log(f'gallery index: used for {reused} of {len(signatures)} files; '
        f'describing {plural(len(stale), "new or changed file")}')
  elif known:
    log('gallery index: no entry matches the current files; describing '
        f'{plural(len(stale), "file")}')
  else:
    log('gallery index: none for this model and settings; describing '
        f'{plural(len(stale), "file")}')
  num_rows, part_shape = manifest.num_rows, manifest.part_shape
  describe_chunk = describe_chunk or DESCRIBE_CHUNK
  data_path = os.path.join(folder, manifest.data_file)
  for start in range(0, len(stale), describe_chunk):
    chunk = stale[start:start + describe_chunk]
    descriptors, failures = describe(chunk)
    described = [p for p in chunk if p in descriptors]
    for path in chunk:
      if path not in descriptors:
        entries[names[path]] = (*signatures[path], -1,
                                failures.get(path, 'could not be read'))
    if not described:
      continue
    rows = np.stack([np.asarray(descriptors[p], np.float32)
                     for p in described])
    if num_rows and rows.shape[1:] != part_shape:
      raise ValueError(f'gallery index {folder}: descriptors of shape '
                       f'{rows.shape[1:]}, the index holds {part_shape}')
    part_shape = tuple(int(v) for v in rows.shape[1:])
    _append(data_path, num_rows, rows.reshape(len(rows), -1))
    for row, path in enumerate(described, start=num_rows):
      entries[names[path]] = (*signatures[path], row, '')
    num_rows += len(described)
  new = _Manifest(manifest.data_file, num_rows, part_shape, entries)
  live = sum(e[2] >= 0 for e in entries.values())
  old_file = None
  if num_rows - live > COMPACT_DEAD_FRACTION * num_rows:
    old_file = new.data_file
    log(f'gallery index: compacting {folder} ({num_rows - live} of '
        f'{num_rows} rows no longer used)')
    new = _compact(folder, new)
  if stale or removed or old_file:
    _write_manifest(folder, key, new)
    log(f'gallery index: wrote {folder}')
  if old_file is not None:
    os.remove(os.path.join(folder, old_file))
  kept = [p for p in signatures if new.entries[names[p]][2] >= 0]
  rows = np.array([new.entries[names[p]][2] for p in kept], np.int64)
  failures = {p: new.entries[names[p]][3] for p in signatures
              if new.entries[names[p]][2] < 0}
  return GalleryIndex(
      kept, rows, _memmap(os.path.join(folder, new.data_file), new.num_rows,
                          int(np.prod(new.part_shape))),
      tuple(new.part_shape), failures,
      {'index': folder, 'reused': reused, 'described': len(stale),
       'removed': removed})
