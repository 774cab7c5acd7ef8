"""TensorFlow, imported quietly and kept off the accelerators.

The package uses TensorFlow only to read and decode data. Every module that
needs it takes ``tf`` from here (``from sa_reid_jax.datasets.tensorflow_cpu
import tf``), so that the first import, wherever it happens, is the quiet one.
"""

import os
import sys
import tempfile

# TensorFlow's C++ logs below WARNING stay hidden after the import too (e.g.
# tf.data's notes), unless a user asked for them (``--verbosity=0`` sets 0).
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def _import_quietly():
  """``import tensorflow``, with what it writes to stderr meanwhile dropped.

  TensorFlow prints C++ log lines while it loads, before its logging honours
  TF_CPP_MIN_LOG_LEVEL (TensorFlow 2.21: "All log messages before
  absl::InitializeLog() ...", "oneDNN custom operations are on", and on some
  CPUs the cpu_feature_guard note), each once per shared library; which
  lines appear depends on the CPU. They go to file descriptor 2 directly, so
  the only way to hide them on every CPU is to point that descriptor
  elsewhere for the import. What was written is shown if the import fails,
  and nothing is hidden with TF_CPP_MIN_LOG_LEVEL=0 (``--verbosity=0``).

  Returns:
    the ``tensorflow`` module.
  """
  if ('tensorflow' in sys.modules or
      os.environ.get('TF_CPP_MIN_LOG_LEVEL') == '0'):
    import tensorflow  # pylint: disable=g-import-not-at-top
    return tensorflow
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError, AttributeError):  # no usable stderr to guard
    import tensorflow  # pylint: disable=g-import-not-at-top
    return tensorflow
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      import tensorflow  # pylint: disable=g-import-not-at-top
    except BaseException:
      os.dup2(saved, 2)
      captured.seek(0)
      sys.stderr.write(captured.read().decode(errors='replace'))
      sys.stderr.flush()
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)
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
