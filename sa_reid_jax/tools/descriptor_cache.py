"""The gallery descriptor cache of `search`.

One ``<key>.npz`` file per model and settings (see `cache_key`) holds, for
every gallery file, its path relative to the cache folder, size and
modification time (ns), and its descriptor or the reason it could not be
read. An entry is reused while the file's size and modification time are
unchanged; changed or added files are described again, removed ones dropped.
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
import zipfile
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

from sa_reid_jax.datasets import market_layout

# The cache folder inside a gallery folder (list_images skips hidden ones).
CACHE_FOLDER = market_layout.CACHE_FOLDER
# Part of the cache key: bump when decoding or preprocessing changes, since
# descriptors cached by older code would no longer match fresh ones.
CACHE_VERSION = 1


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
  """The key of a gallery cache file: model, input size, flip, code version.

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


@dataclasses.dataclass
class Entry:
  """One gallery file: its stat signature and descriptor or failure."""
  size: int
  mtime_ns: int
  descriptor: Optional[np.ndarray] = None
  reason: Optional[str] = None


def plural(count: int, noun: str) -> str:
  """`count` and `noun`, with an 's' unless `count` is 1.

  Args:
    count: how many.
    noun: the singular noun.

  Returns:
    e.g. ``'1 file'``, ``'3 files'``.
  """
  return f'{count} {noun}' + ('' if count == 1 else 's')


def _signature(path: str) -> tuple[int, int]:
  stat = os.stat(path)
  return stat.st_size, stat.st_mtime_ns


def _load_cache(path: str, key: str, log: Callable[[str], None]
                ) -> dict[str, Entry]:
  """Entries of a cache file by absolute path; empty when absent or stale."""
  if not os.path.exists(path):
    return {}
  folder = os.path.dirname(path)
  try:
    with np.load(path, allow_pickle=False) as data:
      if str(data['key']) != key:
        return {}
      files, sizes, mtimes, reasons, descriptors = (
          data['files'], data['sizes'], data['mtimes'], data['reasons'],
          data['descriptors'])
    if len(descriptors) != sum(not r for r in reasons):
      raise ValueError('descriptor count does not match the file list')
  except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
    log(f'gallery cache: ignoring unreadable {path} ({e})')
    return {}
  entries = {}
  described = iter(descriptors)
  for name, size, mtime, reason in zip(files, sizes, mtimes, reasons):
    entry = Entry(int(size), int(mtime))
    if reason:
      entry.reason = str(reason)
    else:
      entry.descriptor = next(described)
    entries[os.path.normpath(os.path.join(folder, str(name)))] = entry
  return entries


def _write_cache(path: str, key: str, entries: dict[str, Entry],
                 log: Callable[[str], None]) -> bool:
  """Writes `entries` atomically (a crash never leaves a truncated file)."""
  folder = os.path.dirname(path)
  # Relative names keep the cache valid when the gallery folder is moved.
  names = sorted(entries)
  described = [entries[n].descriptor for n in names
               if entries[n].reason is None]
  arrays = {
      'key': np.array(key),
      'files': np.array([os.path.relpath(n, folder) for n in names], str),
      'sizes': np.array([entries[n].size for n in names], np.int64),
      'mtimes': np.array([entries[n].mtime_ns for n in names], np.int64),
      'reasons': np.array([entries[n].reason or '' for n in names], str),
      'descriptors': (np.stack(described) if described
                      else np.zeros((0, 0, 0), np.float32)),
  }
  temporary = None
  try:
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, suffix='.npz.tmp',
                                     delete=False) as f:
      temporary = f.name
      np.savez(f, **arrays)
    os.replace(temporary, path)
  except OSError as e:
    if temporary is not None:
      with contextlib.suppress(OSError):
        os.remove(temporary)
    log(f'gallery cache: cannot write {path} ({e}); continuing without it')
    return False
  return True


def gallery_entries(
    paths: Sequence[str], *, key: str, cache_dir: Optional[str],
    describe: Callable[[list[str]], tuple[dict[str, np.ndarray],
                                          dict[str, str]]],
    log: Callable[[str], None]) -> tuple[dict[str, Entry], dict[str, Any]]:
  """Gallery entries, from the cache where still valid, the rest described.

  Logs whether the cache was used, and rewrites it when anything was
  described or a cached file has gone. A file rewritten while it was being
  read is not cached.

  Args:
    paths: absolute gallery image files.
    key: `cache_key` of the model and settings.
    cache_dir: folder of the cache file; None disables the cache.
    describe: maps the files to describe to ({path: descriptor},
      {path: reason}) for the readable and unreadable ones.
    log: where messages go.

  Returns:
    ({path: `Entry`} in `paths` order, ``{'file', 'reused', 'described'}``:
    the cache file or None, and how many files were reused and described).
  """
  cache_path = (os.path.join(os.path.abspath(cache_dir), key[:16] + '.npz')
                if cache_dir else None)
  cached = _load_cache(cache_path, key, log) if cache_path else {}
  entries, stale, reused = {}, [], 0
  for path in paths:
    try:
      signature = _signature(path)
    except OSError as e:
      entries[path] = Entry(-1, -1, reason=f'cannot stat: {e.strerror}')
      continue
    entry = cached.get(path)
    if entry is not None and (entry.size, entry.mtime_ns) == signature:
      entries[path] = entry
      reused += 1
    else:
      entries[path] = Entry(*signature)
      stale.append(path)
  if cache_path is None:
    log('gallery cache: off')
  elif reused == len(paths):
    log(f'gallery cache: used ({plural(reused, "file")} unchanged, '
        f'{cache_path})')
  elif reused:
    log(f'gallery cache: used for {reused} of {len(paths)} files; describing '
        f'{plural(len(stale), "new or changed file")}')
  elif cached:
    log('gallery cache: no entry matches the current files; describing '
        f'{plural(len(stale), "file")}')
  else:
    log('gallery cache: none for this model and settings; describing '
        f'{plural(len(stale), "file")}')
  descriptors, failures = describe(stale)
  changed = set()
  for path in stale:
    entries[path].descriptor = descriptors.get(path)
    entries[path].reason = failures.get(path)
    try:
      # A file rewritten while it was read must not be cached as it was.
      if _signature(path) != (entries[path].size, entries[path].mtime_ns):
        changed.add(path)
    except OSError:
      changed.add(path)
  # Rewrite when anything was described or a cached file has gone.
  if cache_path and (stale or set(cached) - set(paths)):
    keep = {p: e for p, e in entries.items()
            if e.size >= 0 and p not in changed}
    if _write_cache(cache_path, key, keep, log):
      log(f'gallery cache: wrote {cache_path}')
  info = {'file': cache_path, 'reused': reused if cache_path else 0,
          'described': len(stale)}
  return entries, info
