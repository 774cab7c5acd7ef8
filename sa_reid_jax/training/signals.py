"""Stopping a training run cleanly on SIGTERM or Ctrl-C (SIGINT).

The first signal only sets a flag: the run finishes its step, saves a
checkpoint and returns, so nothing is left half-written and the same
command resumes. A second Ctrl-C quits at once, with one line and no
traceback (a checkpoint being written then is left unfinished; the next
start removes it and resumes from the newest finished one).
"""

import os
import signal
import threading
from typing import Callable, Optional

import jax
from jax.experimental import multihost_utils
import numpy as np

from sa_reid_jax import command_line

# Exit status of a process stopped by Ctrl-C, so that scripts running
# train.py stop too.
INTERRUPTED_EXIT_STATUS = command_line.INTERRUPTED_EXIT_STATUS
NAMES = {signal.SIGTERM: 'SIGTERM', signal.SIGINT: 'Ctrl-C (SIGINT)'}


class StopRequest:
  """``with StopRequest(...) as stop:`` catches SIGTERM and SIGINT.

  Signal handlers can only be installed from the main thread; elsewhere the
  context does nothing and the signals keep their handlers.
  """

  def __init__(self, on_quit: Optional[Callable[[], None]] = None):
    """
    Args:
      on_quit: called before a second Ctrl-C ends the process (e.g. to
        remove the workdir's lock file).
    """
    self.signal: Optional[int] = None
    self.on_quit = on_quit
    self._previous = {}

  def __enter__(self) -> 'StopRequest':
    if threading.current_thread() is threading.main_thread():
      for signum in NAMES:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  @property
  def name(self) -> str:
    """The signal received, as the messages call it."""
    return NAMES.get(self.signal, 'a stop request')

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.signal == signal.SIGINT:
      if self.on_quit is not None:
        self.on_quit()
      # os.write: print() may be in use by the interrupted code.
      os.write(2, b'second Ctrl-C: stopped at once without saving; the '
               b'newest finished checkpoint is kept\n')
      os._exit(INTERRUPTED_EXIT_STATUS)  # pylint: disable=protected-access
    if self.signal is None:
      self.signal = signum
      if signum == signal.SIGINT:
        os.write(2, b'Ctrl-C: saving a checkpoint after the current step '
                 b'(or evaluation); press Ctrl-C again to quit at once\n')

  def is_set(self, step: int, every_steps: int) -> bool:
    """Whether to stop now; with several processes, asked every few steps.

    Args:
      step: the current step.
      every_steps: steps between the processes' exchanges of their flags.
    """
    if jax.process_count() == 1:
      return self.signal is not None
    if step % every_steps:
      return False
    flags = multihost_utils.process_allgather(
        np.asarray(self.signal is not None))
    return bool(np.any(flags))
