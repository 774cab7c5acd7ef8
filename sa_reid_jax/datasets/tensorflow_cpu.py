"""TensorFlow, imported quietly and kept off the accelerators.

The package uses TensorFlow only to read and decode data. Every module that
needs it takes ``tf`` from here (``from sa_reid_jax.datasets.tensorflow_cpu
import tf``), so that the first import, wherever it happens, is the quiet one.

The import leaves the process's environment alone: how much TensorFlow logs
afterwards (``TF_CPP_MIN_LOG_LEVEL``) is the program's choice, made by the
entry points before the import (`command_line.quiet_tensorflow`).
"""

import os
import subprocess
import sys
import uuid

# The holder of the captured output: a separate process, because the lines
# TensorFlow writes while its libraries load are written with the GIL held
# (C++ static initialisers inside dlopen), when no Python thread of this
# process could read them, and an abort or a crash there must not take them
# along. It keeps every line until the marker line tells it to drop them or
# to write them to its stderr (the real one); if the pipe closes without the
# marker (this process died), it writes them.
_HOLDER = """
import os, sys
marker = sys.argv[1].encode()
held = []
for line in sys.stdin.buffer:
  if line.startswith(marker):
    if line[len(marker):].strip() == b'drop':
      sys.exit(0)
    break
  held.append(line)
os.write(2, b''.join(held))
"""
# How long the import waits for the holder to finish.
_HOLDER_SECONDS = 10.0


class _StderrCapture:
  """Holds what is written to file descriptor 2 while active (see
  `_HOLDER`)."""

  def __init__(self):
    self._marker = f'sa-reid-jax-stderr-{uuid.uuid4().hex} '
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    try:
      self._holder = subprocess.Popen(
          [sys.executable, '-I', '-S', '-c', _HOLDER, self._marker],
          stdin=read_end, stdout=subprocess.DEVNULL)
    finally:
      os.close(read_end)
    self._stderr = os.dup(2)
    os.dup2(write_end, 2)
    os.close(write_end)

  def stop(self, release: bool) -> None:
    """Points file descriptor 2 back at stderr; the holder writes what it
    held there when `release` (else drops it)."""
    sys.stderr.flush()
    # Ends the holder even if something started during the import still
    # holds the pipe open.
    os.write(2, f'\n{self._marker}{"write" if release else "drop"}\n'
             .encode())
    os.dup2(self._stderr, 2)
    os.close(self._stderr)
    try:
      self._holder.wait(_HOLDER_SECONDS)
    except subprocess.TimeoutExpired:
      self._holder.kill()
      self._holder.wait()


def _import_quietly():
  """``import tensorflow``, with what it writes to stderr meanwhile held back.

  TensorFlow prints C++ log lines while it loads, before its logging honours
  TF_CPP_MIN_LOG_LEVEL (TensorFlow 2.21: "All log messages before
  absl::InitializeLog() ...", "oneDNN custom operations are on", and on some
  CPUs the cpu_feature_guard note), each once per shared library; which
  lines appear depends on the CPU. They go to file descriptor 2 directly, so
  the only way to hide them on every CPU is to point that descriptor
  elsewhere for the import. What was held back is shown if the import
  fails, or if the process dies during it (a fatal check, a crash); on
  success it is dropped, including any Python warning of the import.
  Nothing is hidden with TF_CPP_MIN_LOG_LEVEL=0 (``--verbosity=0``).

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
