"""Stopping a training run cleanly on SIGTERM or Ctrl-C (SIGINT).

The first signal only sets a flag: the run finishes its step, saves a
checkpoint and returns, so nothing is left half-written and the same
command resumes. A second Ctrl-C stops at once without saving (a checkpoint
being written then is left unfinished; the next start removes it and
resumes from the newest finished one): in a library call (a notebook, a
script of one's own) it raises KeyboardInterrupt, the process lives on; a
program that asks for it (``train.py``) ends there, with one line and no
traceback.
"""

import os
import signal
import threading
from typing import Callable, Optional

import jax
from jax.experimental import multihost_utils
import numpy as np

# Exit status of a process stopped by Ctrl-C (128 + SIGINT, as the shells
# report one), so that scripts running train.py stop too.
INTERRUPTED_EXIT_STATUS = 128 + signal.SIGINT
NAMES = {signal.SIGTERM: 'SIGTERM', signal.SIGINT: 'Ctrl-C (SIGINT)'}
_SECOND_INTERRUPT = (b'second Ctrl-C: stopped at once without saving; the '
                     b'newest finished checkpoint is kept\n')


class StopRequest:
  """``with StopRequest(...) as stop:`` catches SIGTERM and SIGINT.

  Signal handlers can only be installed from the main thread; elsewhere the
  context does nothing and the signals keep their handlers. Leaving the
  context, by return or exception, puts back the handlers it found.
  """

  def __init__(self, on_quit: Optional[Callable[[], None]] = None,
               quit_on_second_interrupt: bool = False):
    """
    Args:
      on_quit: with `quit_on_second_interrupt`, called before a second
        Ctrl-C ends the process (e.g. to remove the workdir's lock file,
        which no ``finally`` would).
      quit_on_second_interrupt: a second Ctrl-C ends the process at once
        (``os._exit(INTERRUPTED_EXIT_STATUS)``), for a program's own run;
        False (a library call) raises KeyboardInterrupt in the main thread
        instead, after putting back the handlers the context found.
    """
    self.signal: Optional[int] = None
    self.on_quit = on_quit
    self.quit_on_second_interrupt = quit_on_second_interrupt
    self._previous = {}

  def __enter__(self) -> 'StopRequest':
    if threading.current_thread() is threading.main_thread():
      for signum in NAMES:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc):
    self._restore()

  def _restore(self) -> None:
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
      if self.quit_on_second_interrupt and self.on_quit is not None:
        self.on_quit()
      # os.write: print() may be in use by the interrupted code.
      os.write(2, _SECOND_INTERRUPT)
      if self.quit_on_second_interrupt:
        os._exit(INTERRUPTED_EXIT_STATUS)  # pylint: disable=protected-access
      # Put back first: a further Ctrl-C while the run unwinds (closing its
      # files, releasing the workdir) is the caller's again.
      self._restore()
      raise KeyboardInterrupt
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
