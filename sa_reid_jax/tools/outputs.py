"""The output check every command runs before its work.

A command that extracts features, converts weights or draws a picture and
only then finds its output unwritable has wasted that work and ends in a
traceback; `check_writable` says so in one line before anything is loaded.
"""

import os

from PIL import Image


class OutputError(ValueError):
  """An output path that cannot be written; the message names the flag."""


def _nearest_existing(path: str) -> str:
  """`path` or its closest ancestor that exists."""
  path = os.path.abspath(path)
  while not os.path.lexists(path):
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return path


def _writable_directory(directory: str) -> bool:
  # os.access also answers EROFS for a read-only file system.
  return os.access(directory, os.W_OK | os.X_OK)


def check_writable(path: str, flag: str, *, directory: bool = False) -> None:
  """Refuses an output `path` that cannot be created or written.

  Args:
    path: the file (or with `directory`, the folder) the command will write;
      missing folders above it will be created.
    flag: the flag or key that names it, for the message (``--output``).
    directory: `path` is a folder the command writes files into (it must
      be a writable folder when it exists); otherwise a file (it must not
      be a folder, and be writable when it exists).

  Raises:
    OutputError: ``FLAG: cannot write PATH: REASON``.
  """
  if not path:
    raise OutputError(f'{flag}: empty path')

  def refuse(reason):
    raise OutputError(f'{flag}: cannot write {path}: {reason}')

  if os.path.lexists(path) and os.path.exists(path):
    if directory:
      if not os.path.isdir(path):
        refuse('it exists and is not a directory')
      if not _writable_directory(path):
        refuse('the directory is not writable')
      return
    if os.path.isdir(path):
      refuse('it is a directory')
    if not os.access(path, os.W_OK):
      refuse('the file is not writable')
    return
  existing = _nearest_existing(os.path.dirname(os.path.abspath(path)))
  if not os.path.isdir(existing):
    refuse(f'{existing} is not a directory')
  if not _writable_directory(existing):
    refuse(f'directory {existing} is not writable')


def check_image_file(path: str, flag: str) -> None:
  """Refuses a picture `path` whose extension names no image format.

  Pillow picks the format from the extension and otherwise fails only when
  the picture is saved, after the work.

  Args:
    path: the picture to write.
    flag: the flag that names it, for the message.

  Raises:
    OutputError: naming the flag and the extensions to use.
  """
  extension = os.path.splitext(path)[1].lower()
  if extension not in Image.registered_extensions():
    what = (f'extension {extension!r}' if extension else 'no extension')
    raise OutputError(f'{flag}: {path} has {what}; give an image file name '
                      f'such as {os.path.splitext(path)[0]}.png (.png, .jpg)')
