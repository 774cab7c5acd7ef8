"""Finds every unreadable image of a folder before any work starts.

Every reader of image folders uses this module: the TFDS builders, training
and evaluation on ``--config.dataset.folder`` (`tables.from_folders`), and
the ``search`` and ``visualize`` tools. Images are decoded with the input
pipelines' own decoder (`images.decode_image`), in parallel with
tf.data, so a file passes here exactly when the pipeline can read it; a
failing file is decoded once more on its own to get the reason.

Verdicts are cached per file, keyed by its size and modification time (ns),
as the search's descriptor cache does: a warm check only stats the files.
The cache file (``image_verdicts.npz``) goes into ``FOLDER/.sa_reid_cache/``
(listing skips hidden folders); when that folder cannot be written (a
read-only dataset, a shared mount) it goes into the user's cache folder
(``$XDG_CACHE_HOME`` or ``~/.cache``, then ``sa_reid_jax/image_verdicts/``,
one file per dataset folder named by a hash of its absolute path), and
without either the check still runs, uncached. Its key includes the
TensorFlow version, whose decoder gives the verdicts.

Which files of a folder are images (hidden and system files are not) is
decided by `market_layout.list_folder`, before this check.

A file that fails to decode makes TensorFlow's C++ runtime write a WARNING
line to stderr (TensorFlow 2.21: ``W0000 00:00:... local_rendezvous.cc:412]
Local rendezvous is aborting with status: INVALID_ARGUMENT: Unknown image
file format...``), which TF_CPP_MIN_LOG_LEVEL=1, the entry points' level,
lets through. The reason is in this module's result already, so the
decodes hold back TensorFlow's INFO and WARNING lines (`_tensorflow_log_held`);
everything else written meanwhile is written after them, and nothing is
held with TF_CPP_MIN_LOG_LEVEL=0 (``--verbosity=0``).
"""

import contextlib
import hashlib
import os
import re
import sys
import tempfile
import zipfile
from typing import Callable, Optional, Sequence

import numpy as np

from sa_reid_jax.datasets import market_layout

CACHE_FOLDER = market_layout.CACHE_FOLDER
CACHE_FILE = 'image_verdicts.npz'
# Part of the cache key: bump when what counts as readable changes.
CHECK_VERSION = 1
# Files checked per tf.data batch (their decoded sizes come back together).
CHECK_BATCH = 1024
# Up to this many files to check (e.g. a few changed since the cache was
# written) are decoded one by one: building a tf.data pipeline costs more.
EAGER_BELOW = 32
# A C++ log line of TensorFlow below ERROR, in absl's format: severity (I, W),
# MMDD, time, thread id, FILE:LINE] (e.g. ``W0000 00:00:1796376725.374880
# 9302 local_rendezvous.cc:412] Local rendezvous is aborting ...``).
_TENSORFLOW_LOG_LINE = re.compile(rb'^[IW]\d{4} [\d:.]+\s+\d+ \S+:\d+\] ')


class UnreadableImagesError(market_layout.LayoutError):
  """Images that cannot be read or decoded; the message lists all of them.

  Attributes:
    failures: [(path, reason)] in input order.
  """

  def __init__(self, failures: Sequence[tuple[str, str]], what: str):
    self.failures = list(failures)
    count = len(self.failures)
    lines = [f'{count} unreadable image{"" if count == 1 else "s"} in '
             f'{what}; remove or replace {"it" if count == 1 else "them"}:']
    lines += [f'  {path}: {reason}' for path, reason in self.failures]
    super().__init__('\n'.join(lines))


@contextlib.contextmanager
def _tensorflow_log_held():
  """Holds back TensorFlow's C++ INFO and WARNING lines (module docstring).

  File descriptor 2 points at a temporary file while active; afterwards it
  points back at stderr, and what was written meanwhile is written there
  less the lines of `_TENSORFLOW_LOG_LINE`. Nothing is held with
  TF_CPP_MIN_LOG_LEVEL=0 or without a usable file descriptor 2.
  """
  saved, held = None, None
  if os.environ.get('TF_CPP_MIN_LOG_LEVEL') != '0':
    try:
      if sys.stderr is not None:
        sys.stderr.flush()
      held = tempfile.TemporaryFile()
      saved = os.dup(2)
      os.dup2(held.fileno(), 2)
    except (OSError, ValueError):
      if saved is not None:
        os.close(saved)
      saved = None
  try:
    yield
  finally:
    if saved is not None:
      if sys.stderr is not None:
        sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      held.seek(0)
      kept = [line for line in held.read().splitlines(keepends=True)
              if not _TENSORFLOW_LOG_LINE.match(line)]
      if kept:
        os.write(2, b''.join(kept))
    if held is not None:
      held.close()


def decode_error(path: str) -> Optional[str]:
  """Why `path` cannot be read or decoded as the pipeline does, or None.

  Args:
    path: an image file.

  Returns:
    None when it decodes to a non-empty image; else a one-line reason:
    ``cannot read (...)``, ``not a decodable image (...)`` with
    TensorFlow's message, or ``empty image (HxW)``.
  """
  from sa_reid_jax.datasets.tensorflow_cpu import tf  # pylint: disable=g-import-not-at-top
  from sa_reid_jax.datasets import images  # pylint: disable=g-import-not-at-top
  try:
    with _tensorflow_log_held():
      contents = tf.io.read_file(path)
  except tf.errors.OpError as e:
    return f'cannot read ({_first_line(e)})'
  try:
    with _tensorflow_log_held():
      image = images.decode_image(contents)
  except (tf.errors.OpError, ValueError) as e:
    return f'not a decodable image ({_first_line(e)})'
  if 0 in image.shape:
    return f'empty image ({image.shape[0]}x{image.shape[1]})'
  return None


def _first_line(error: Exception) -> str:
  """TensorFlow's message, first line, without its op decorations."""
  lines = str(getattr(error, 'message', error)).strip().splitlines()
  message = lines[0] if lines else ''
  return (re.sub(r'^\{\{.*?\}\}\s*|\s*\[Op:.*$', '', message)
          or type(error).__name__)


def _decoded_sizes(paths: Sequence[str]) -> np.ndarray:
  """Pixels per decoded image, -1 where decoding failed (in parallel)."""
  from sa_reid_jax.datasets.tensorflow_cpu import tf  # pylint: disable=g-import-not-at-top
  from sa_reid_jax.datasets import images  # pylint: disable=g-import-not-at-top
  from sa_reid_jax.datasets import tensorflow_cpu  # pylint: disable=g-import-not-at-top
  tensorflow_cpu.hide_accelerators_from_tensorflow()

  def decode(index, path):
    image = images.decode_image(tf.io.read_file(path))
    # Returning the size keeps the decode from being optimised away.
    return index, tf.reduce_prod(tf.shape(image))

  sizes = np.full(len(paths), -1, np.int64)
  dataset = tf.data.Dataset.from_tensor_slices(
      (np.arange(len(paths)), list(paths))).map(
          decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
  with _tensorflow_log_held():
    for indices, pixels in dataset.ignore_errors().batch(
        CHECK_BATCH).as_numpy_iterator():
      sizes[indices] = pixels
  return sizes


def _signature(path: str) -> tuple[int, int]:
  stat = os.stat(path)
  return stat.st_size, stat.st_mtime_ns


def _cache_key() -> str:
  from sa_reid_jax.datasets.tensorflow_cpu import tf  # pylint: disable=g-import-not-at-top
  return f'v{CHECK_VERSION} tensorflow {tf.__version__}'


def _user_cache_file(folder: str) -> str:
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(
      os.path.expanduser('~'), '.cache')
  name = hashlib.sha256(os.path.abspath(folder).encode()).hexdigest()[:16]
  return os.path.join(base, 'sa_reid_jax', 'image_verdicts', name + '.npz')


def cache_files(folder: str) -> tuple[str, str]:
  """(the cache file inside `folder`, its fallback in the user's cache)."""
  return (os.path.join(os.path.abspath(folder), CACHE_FOLDER, CACHE_FILE),
          _user_cache_file(folder))


def _load(folder: str) -> dict[str, tuple[int, int, str]]:
  """{absolute path: (size, mtime_ns, reason or '')} from the first cache
  file of `cache_files` that holds this check's key."""
  for cache in cache_files(folder):
    if not os.path.exists(cache):
      continue
    try:
      with np.load(cache, allow_pickle=False) as data:
        if str(data['key']) != _cache_key():
          continue
        base = os.path.abspath(folder)
        return {os.path.normpath(os.path.join(base, str(name))):
                (int(size), int(mtime), str(reason))
                for name, size, mtime, reason in zip(
                    data['files'], data['sizes'], data['mtimes'],
                    data['reasons'])}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
      continue  # a damaged cache is rebuilt
  return {}


def _save(folder: str, verdicts: dict[str, tuple[int, int, str]],
          log: Callable[[str], None]) -> None:
  """Writes the verdicts atomically, into the folder or else the user cache."""
  base = os.path.abspath(folder)
  names = sorted(verdicts)
  arrays = {
      'key': np.array(_cache_key()),
      'files': np.array([os.path.relpath(n, base) for n in names], str),
      'sizes': np.array([verdicts[n][0] for n in names], np.int64),
      'mtimes': np.array([verdicts[n][1] for n in names], np.int64),
      'reasons': np.array([verdicts[n][2] for n in names], str),
  }
  in_folder, fallback = cache_files(folder)
  for cache in (in_folder, fallback):
    temporary = None
    try:
      os.makedirs(os.path.dirname(cache), exist_ok=True)
      with tempfile.NamedTemporaryFile(dir=os.path.dirname(cache),
                                       suffix='.tmp', delete=False) as f:
        temporary = f.name
        np.savez(f, **arrays)
      os.replace(temporary, cache)
    except OSError:
      if temporary is not None:
        with contextlib.suppress(OSError):
          os.remove(temporary)
      continue
    if cache == fallback:
      log(f'image check: {os.path.dirname(in_folder)} is not writable; '
          f'verdicts cached in {cache}')
    return
  log('image check: no writable cache folder; verdicts not cached')


def check_files(paths: Sequence[str], cache_folder: Optional[str] = None,
                log: Callable[[str], None] = print
                ) -> list[tuple[str, str]]:
  """Decodes every image not already known good; returns the failures.

  Args:
    paths: image files.
    cache_folder: the folder whose verdict cache to use (see the module
      docstring); None checks without a cache.
    log: where messages go.

  Returns:
    [(path, reason)] of the files that cannot be read or decoded, in
    `paths` order; empty when all are readable.
  """
  paths = [os.path.abspath(p) for p in paths]
  cached = _load(cache_folder) if cache_folder else {}
  verdicts, stale = {}, []
  for path in paths:
    try:
      size, mtime = _signature(path)
    except OSError as e:
      verdicts[path] = (-1, -1, f'cannot read ({e.strerror})')
      continue
    known = cached.get(path)
    if known is not None and known[:2] == (size, mtime):
      verdicts[path] = known
    else:
      verdicts[path] = (size, mtime, '')
      stale.append(path)
  if len(stale) > EAGER_BELOW:
    sizes = _decoded_sizes(stale)
    failed = [path for path, pixels in zip(stale, sizes) if pixels <= 0]
  else:
    failed = stale  # each decoded by decode_error below
  for path in failed:
    size, mtime, _ = verdicts[path]
    verdicts[path] = (size, mtime, decode_error(path) or '')
  if cache_folder and stale:
    keep = {p: v for p, v in verdicts.items() if v[0] >= 0}
    # Verdicts of files outside this check (another split) are kept while
    # the files exist.
    keep.update({p: v for p, v in cached.items() if p not in verdicts
                 and os.path.exists(p)})
    _save(cache_folder, keep, log)
  return [(p, verdicts[p][2]) for p in paths if verdicts[p][2]]


def require_readable(paths: Sequence[str], cache_folder: Optional[str],
                     log: Callable[[str], None] = print) -> None:
  """`check_files`, raising when any file fails.

  Raises:
    UnreadableImagesError: listing every unreadable file with its reason.
  """
  failures = check_files(paths, cache_folder, log)
  if failures:
    raise UnreadableImagesError(failures, cache_folder or 'the input')


def common_folder(paths: Sequence[str]) -> Optional[str]:
  """The deepest folder holding all of `paths` (None for no paths)."""
  if not paths:
    return None
  return os.path.commonpath([os.path.dirname(os.path.abspath(p))
                             for p in paths])
