"""What guards a training workdir: one run at a time, no half-written saves.

A run holds ``WORKDIR/lock`` (an exclusive ``flock`` plus the holder's PID,
host and start time as JSON) from before it reads the workdir until it ends.
The kernel drops the lock when its process dies, however it dies, so a lock
file left by a killed run is taken over (with a line saying so) and a
second run on a live one is refused at once, never left waiting.
"""

import errno
import fcntl
import json
import os
import shutil
import socket
import time
from typing import Any, Callable, Optional

LOCK_FILE = 'lock'
# Orbax writes a checkpoint under a temporary name and renames it when done
# (orbax.checkpoint's atomicity module).
TMP_CHECKPOINT_MARKER = '.orbax-checkpoint-tmp'


class WorkdirBusyError(RuntimeError):
  """Another live process holds the workdir."""


class DiskFullError(OSError):
  """A checkpoint could not be written for lack of space (errno ENOSPC)."""

  def __init__(self, message: str):
    super().__init__(errno.ENOSPC, message)

  def __str__(self):
    return self.strerror


class WorkdirLock:
  """``with WorkdirLock(workdir):`` holds the workdir for this process.

  Raises (on entering) `WorkdirBusyError` naming the workdir and the process
  holding it.
  """

  def __init__(self, workdir: str, say: Callable[[str], None] = print):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_FILE)
    self._say = say
    self._fd: Optional[int] = None

  def __enter__(self) -> 'WorkdirLock':
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        holder = _describe(_read_holder(fd))
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES):
          raise
        raise WorkdirBusyError(
            f'{self.workdir} is in use by {holder} (lock file {self.path}); '
            'wait for that run to end, stop it, or use another --workdir'
        ) from None
      # A run that ended removed the file after we opened it: lock anew.
      if _same_file(fd, self.path):
        break
      os.close(fd)
    previous = _read_holder(fd)
    if previous:
      self._say(f'took over the lock of {_describe(previous)}, which is no '
                f'longer running ({self.path})')
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({'pid': os.getpid(),
                             'host': socket.gethostname(),
                             'started': time.strftime('%Y-%m-%d %H:%M:%S')
                             }).encode())
    os.fsync(fd)
    self._fd = fd
    return self

  def release(self) -> None:
    """Removes the lock file and drops the lock (idempotent)."""
    if self._fd is None:
      return
    try:
      os.unlink(self.path)
    except FileNotFoundError:
      pass
    os.close(self._fd)
    self._fd = None

  def __exit__(self, *exc):
    self.release()


def _read_holder(fd: int) -> dict[str, Any]:
  os.lseek(fd, 0, os.SEEK_SET)
  text = os.read(fd, 4096).decode(errors='replace')
  try:
    holder = json.loads(text)
  except ValueError:
    return {'pid': text.strip()} if text.strip() else {}
  return holder if isinstance(holder, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
  if not holder:
    return 'another process'
  where = f' on {holder["host"]}' if holder.get('host') else ''
  since = f', started {holder["started"]}' if holder.get('started') else ''
  return f'process {holder.get("pid", "?")}{where}{since}'


def _same_file(fd: int, path: str) -> bool:
  try:
    return os.fstat(fd).st_ino == os.stat(path).st_ino
  except FileNotFoundError:
    return False


def remove_unfinished_checkpoints(directory: str,
                                  say: Callable[[str], None] = print) -> None:
  """Deletes the temporary directories of interrupted checkpoint saves.

  Args:
    directory: ``WORKDIR/checkpoints`` (may not exist yet).
    say: called with one line per directory removed.
  """
  if not os.path.isdir(directory):
    return
  for name in sorted(os.listdir(directory)):
    if TMP_CHECKPOINT_MARKER in name:
      shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
      say(f'removed {name} from {directory}: an unfinished checkpoint of an '
          'interrupted run (the finished ones are kept)')


def is_disk_full(error: BaseException) -> bool:
  """Whether `error`, or an error it wraps, means "no space left on device".

  Orbax and TensorStore re-raise the write error as other types (or only
  keep its text), so the chain and the message are both searched.
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if getattr(error, 'errno', None) == errno.ENOSPC:
      return True
    if 'No space left on device' in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def directory_bytes(path: str) -> int:
  """Bytes in the files under `path` (0 if it does not exist)."""
  total = 0
  for root, _, files in os.walk(path):
    for name in files:
      try:
        total += os.path.getsize(os.path.join(root, name))
      except OSError:
        pass
  return total


def disk_full_message(workdir: str, step: int, last_good: Optional[int],
                      checkpoint_dir: str) -> str:
  """One line: where space ran out, about how much is needed, what is kept."""
  free = shutil.disk_usage(workdir).free if os.path.isdir(workdir) else None
  parts = [f'{workdir}: no space left on device while saving the checkpoint '
           f'of step {step}']
  if last_good is None:
    parts.append('no checkpoint was written before')
  else:
    needed = directory_bytes(os.path.join(checkpoint_dir, str(last_good)))
    parts.append(f'a checkpoint needs about {_megabytes(needed)}'
                 + (f', {_megabytes(free)} free' if free is not None else ''))
    parts.append(f'the last good checkpoint, step {last_good} in '
                 f'{checkpoint_dir}, is intact')
  parts.append('free some space and run the same command to resume, or use '
               'another --workdir')
  return '; '.join(parts)


def _megabytes(size: int) -> str:
  return f'{size / 1e6:.1f} MB'
