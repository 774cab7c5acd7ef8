"""TensorFlow, imported quietly and kept off the accelerators.

The package uses TensorFlow only to read and decode data. Every module that
needs it takes ``tf`` from here (``from sa_reid_jax.datasets.tensorflow_cpu
import tf``), so that the first import, wherever it happens, is the quiet one.
"""

import os
import re
import sys
import threading

# TensorFlow's C++ logs below WARNING stay hidden after the import too (e.g.
# tf.data's notes), unless a user asked for them (``--verbosity=0`` sets 0).
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# A line that announces the process is about to die: an absl/glog FATAL line
# ("F1203 12:00:00.000000  123 file.cc:45] ...") or a C++ runtime abort.
_FATAL_LINE = re.compile(rb'^(F\d{4} |terminate called|Fatal Python error)')
# How long the import waits for the last of the captured output to be read.
_DRAIN_SECONDS = 5.0


class _StderrCapture:
  """Holds what is written to file descriptor 2 while active.

  The lines are kept back, and written to the real stderr only when the
  capture `release`s them, or at once (with everything before them) when a
  line announces a fatal error: the process may then abort before Python
  can show anything, and the reason must not die with it.
  """

  def __init__(self):
    self._lines = []
    self._released = False
    self._lock = threading.Lock()
    sys.stderr.flush()
    self._stderr = os.dup(2)
    read_end, write_end = os.pipe()
    self._reader = threading.Thread(target=self._read, args=(read_end,),
                                    daemon=True)
    self._reader.start()
    os.dup2(write_end, 2)
    os.close(write_end)

  def _read(self, read_end: int) -> None:
    with os.fdopen(read_end, 'rb') as pipe:
      for line in pipe:
        with self._lock:
          if self._released:
            os.write(self._stderr, line)
          else:
            self._lines.append(line)
            if _FATAL_LINE.match(line):
              self._release_locked()

  def _release_locked(self) -> None:
    self._released = True
    os.write(self._stderr, b''.join(self._lines))
    self._lines.clear()

  def stop(self, release: bool) -> None:
    """Points file descriptor 2 back at stderr; writes what was held back
    there when `release` (else drops it)."""
    os.dup2(self._stderr, 2)  # closes this process's last write end
    self._reader.join(_DRAIN_SECONDS)
    with self._lock:
      if release:
        self._release_locked()
      self._lines.clear()
      self._released = True  # anything still arriving goes straight out
    # The duplicate stays open while the reader may still write to it.
    if not self._reader.is_alive():
      os.close(self._stderr)


def _import_quietly():
  """``import tensorflow``, with what it writes to stderr meanwhile held back.

  TensorFlow prints C++ log lines while it loads, before its logging honours
  TF_CPP_MIN_LOG_LEVEL (TensorFlow 2.21: "All log messages before
  absl::InitializeLog() ...", "oneDNN custom operations are on", and on some
  CPUs the cpu_feature_guard note), each once per shared library; which
  lines appear depends on the CPU. They go to file descriptor 2 directly, so
  the only way to hide them on every CPU is to point that descriptor
  elsewhere for the import. What was held back is shown if the import
  fails, and at once if a fatal line appears (the process may abort);
  nothing is hidden with TF_CPP_MIN_LOG_LEVEL=0 (``--verbosity=0``).

  Returns:
    the ``tensorflow`` module.
  """
  if ('tensorflow' in sys.modules or
      os.environ.get('TF_CPP_MIN_LOG_LEVEL') == '0'):
    import tensorflow  # pylint: disable=g-import-not-at-top
    return tensorflow
  try:
    capture = _StderrCapture()
  except (OSError, ValueError, AttributeError):  # no usable stderr to guard
    import tensorflow  # pylint: disable=g-import-not-at-top
    return tensorflow
  failed = True
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top
    failed = False
  finally:
    capture.stop(release=failed)
  return tensorflow


tf = _import_quietly()


def hide_accelerators_from_tensorflow():
  """Hides GPUs and TPUs from TensorFlow, so it never takes their memory.

  JAX owns the accelerators; TensorFlow only reads and decodes data. Called
  by the dataset builders and the input pipeline before their first op.

  Raises:
    RuntimeError: when TensorFlow already initialised a GPU or TPU (call this
      before running any TensorFlow op).
  """
  for kind in ('GPU', 'TPU'):
    if not tf.config.list_physical_devices(kind):
      continue
    try:
      tf.config.set_visible_devices([], kind)
    except RuntimeError as error:
      if tf.config.get_visible_devices(kind):
        raise RuntimeError(
            f'TensorFlow already uses a {kind}; call '
            'hide_accelerators_from_tensorflow() before any TensorFlow op'
        ) from error
