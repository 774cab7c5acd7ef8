"""Keeps TensorFlow (used here only for data) off the accelerators."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tensorflow as tf  # pylint: disable=g-import-not-at-top


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
