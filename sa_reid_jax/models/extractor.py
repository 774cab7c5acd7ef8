"""Descriptors of person crops from a model directory: for trackers and apps.

``FeatureExtractor(model_dir)(crops)`` takes RGB crops of any size (numpy
uint8 arrays or image paths) and returns one L2-normalised descriptor per
crop, as evaluation computes them, without TensorFlow: crops are resized
with Pillow's bilinear filter (antialiased when shrinking, which the input
pipelines reproduce in TensorFlow: `data.preprocessing.resize`) on float
pixels, normalised (`models.inputs`) and run through the network jitted
over every local device; or, when asked, through the model's ONNX export
on ONNX Runtime.
"""

import json
import numbers
import os
from typing import Any, Iterable, Optional, Sequence, Union
import warnings

import jax
import numpy as np
from PIL import Image

from sa_reid_jax.models import devices as devices_lib
from sa_reid_jax.models import inputs
from sa_reid_jax.models import registry
from sa_reid_jax.models import store

BACKENDS = ('jax', 'onnx')
Crop = Union[np.ndarray, str, os.PathLike]


def _pixels(crop: Crop, index: int) -> np.ndarray:
  """A crop as uint8 (H, W, 3); the error names its position."""
  if isinstance(crop, (str, os.PathLike)):
    try:
      with Image.open(crop) as image:
        return np.asarray(image.convert('RGB'))
    except (OSError, ValueError) as error:
      raise ValueError(f'crops[{index}]: {crop}: cannot read the image '
                       f'({error})') from None
  array = np.asarray(crop)
  if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or (
      min(array.shape[:2]) < 1):
    raise ValueError(f'crops[{index}]: expected uint8 RGB (H, W, 3) or an '
                     f'image path, got {array.dtype} {array.shape}')
  return array


def resize(pixels: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
  """Pillow's bilinear resize of each channel, on float pixels.

  Args:
    pixels: uint8 or float (H, W, 3).
    image_size: output (height, width).

  Returns:
    float32 (*image_size, 3), not rounded (as the input pipelines).
  """
  height, width = image_size
  channels = [np.asarray(Image.fromarray(
      np.ascontiguousarray(pixels[..., c], np.float32), mode='F').resize(
          (width, height), Image.Resampling.BILINEAR)) for c in range(3)]
  return np.stack(channels, axis=-1)


def _check_size(size: Any) -> tuple[int, int]:
  """`size` as (height, width) positive ints; the error names it."""
  try:
    height, width = size
    valid = all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                and v >= 1 for v in (height, width))
  except (TypeError, ValueError):
    valid = False
  if isinstance(size, str) or not valid:
    raise ValueError(f'image_size must be (height, width) in pixels, two '
                     f'integers >= 1, got {size!r}')
  return int(height), int(width)


class FeatureExtractor:
  """Retrieval descriptors of crops, from a model directory.

  Attributes:
    backend: ``'jax'`` or ``'onnx'``, the one that computes.
    model_dir: the model directory read (a workdir resolved to its model).
    image_size: the network input (height, width) crops are resized to.
    descriptor_size: values per descriptor (P x D: parts x width).
  """

  def __init__(self, model_dir: str, *, batch_size: int = 32,
               image_size: Optional[Sequence[int]] = None,
               backend: str = 'jax', onnx_model: Optional[str] = None):
    """
    Args:
      model_dir: a model directory or a training workdir (its ``model``).
      batch_size: crops per forward pass (rounded up to a multiple of the
        local device count; a last, short batch is padded).
      image_size: (height, width) to run at; default the size the directory
        records (where training or conversion recorded one), else 384x128.
      backend: ``'jax'`` (the network jitted over every local device) or
        ``'onnx'`` (`onnx_model` on ONNX Runtime's CPU provider).
      onnx_model: the ``.onnx`` file `tools.export_onnx` wrote for this
        model (needed for ``backend='onnx'``; it takes uint8 images, so the
        resized pixels are rounded first).

    Raises:
      ValueError: naming the argument: an unknown backend, a bad batch
        size or image size, a missing or unreadable ONNX file, an ONNX
        model of another input size or exported from another model
        (its recorded `store.model_fingerprint`), an ONNX file without the
        ONNX backend; `store.ModelStoreError` for a bad model directory.

    Warns:
      UserWarning: for an `image_size` other than the one the model was
        trained at (a network run at another size scores much lower).
    """
    if backend not in BACKENDS:
      raise ValueError(f'backend must be one of {BACKENDS}, got {backend!r}')
    if onnx_model is not None and backend != 'onnx':
      raise ValueError("onnx_model: given without backend='onnx', which "
                       'is the backend that reads it')
    if (isinstance(batch_size, bool) or
        not isinstance(batch_size, numbers.Integral) or batch_size < 1):
      raise ValueError(f'batch_size must be an integer >= 1, got '
                       f'{batch_size!r}')
    if image_size is not None:
      image_size = _check_size(image_size)
    directory = store.resolve_model_directory(model_dir, say=None)
    lines = []
    self.image_size = store.input_size(directory, image_size,
                                       flag='image_size', say=lines.append)
    for line in lines:  # which size, and a warning for a size not trained at
      if line.startswith('warning: '):
        warnings.warn(line[len('warning: '):], stacklevel=2)
    self.backend = backend
    parallel = devices_lib.data_parallel()
    self._batch = parallel.padded_size(batch_size)
    self.model_dir = directory
    model, variables = store.load_model(directory)
    registry.check_input_size(model, self.image_size, 'image_size')
    if backend == 'onnx':
      self._fingerprint = store.model_fingerprint(model, variables)
      self._session = self._onnx_session(onnx_model)
    else:
      self._images_sharding = parallel.batch
      self._variables = jax.device_put(variables, parallel.replicated)
      self._embed = jax.jit(lambda v, x: registry.embed(model, v, x))
    self.descriptor_size = int(self._run(np.zeros(
        (1, *self.image_size, 3), np.uint8)).shape[1])

  def _onnx_session(self, path: Optional[str]) -> Any:
    if not path or not os.path.isfile(path):
      raise ValueError(f"onnx_model: backend='onnx' needs the .onnx file "
                       f'exported for this model, got {path!r}')
    import onnxruntime  # pylint: disable=g-import-not-at-top
    try:
      session = onnxruntime.InferenceSession(
          path, providers=['CPUExecutionProvider'])
    except Exception as error:  # pylint: disable=broad-except
      # ONNX Runtime raises its own classes for unreadable files.
      raise ValueError(f'onnx_model: {path}: cannot load it: '
                       f'{str(error).splitlines()[0]}') from None
    recorded = json.loads(session.get_modelmeta().custom_metadata_map.get(
        store.EXPORT_METADATA_KEY, '{}'))
    if recorded.get('model_fingerprint') != self._fingerprint:
      origin = recorded.get('checkpoint', 'an unrecorded model')
      raise ValueError(
          f'onnx_model: {path} was not exported from this model directory '
          f'({self.model_dir}) but from {origin} (or by an older export '
          'without a fingerprint): export this model with python -m '
          'sa_reid_jax.tools.export --format=onnx')
    shape = session.get_inputs()[0].shape
    if tuple(shape[1:3]) != tuple(self.image_size):
      raise ValueError(f'onnx_model: {path} takes {shape[1]}x{shape[2]} '
                       f'images, not {self.image_size[0]}x'
                       f'{self.image_size[1]}')
    return session

  def _run(self, pixels: np.ndarray) -> np.ndarray:
    """(B, P x D) descriptors of resized float (or uint8) pixels."""
    if self.backend == 'onnx':
      rounded = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
      return self._session.run(['descriptors'], {'images': rounded})[0]
    count = len(pixels)
    padded = np.zeros((self._batch, *pixels.shape[1:]), np.float32)
    padded[:count] = inputs.normalize(pixels.astype(np.float32))
    images = jax.device_put(padded, self._images_sharding)
    parts = np.asarray(self._embed(self._variables, images))[:count]
    return parts.reshape(count, -1)

  def __call__(self, crops: Union[Iterable[Crop], np.ndarray]
               ) -> np.ndarray:
    """Descriptors of `crops`.

    Args:
      crops: a list (or any iterable) of uint8 RGB arrays (H, W, 3) of any
        size, or image file paths, or a mix; or one uint8 (N, H, W, 3)
        array. One crop is ``[crop]``.

    Returns:
      float32 (len(crops), descriptor_size): the network's ``features``,
      each of its P parts L2-normalised, flattened (as the SavedModel and
      ONNX exports' ``descriptors``); Euclidean or cosine distances between
      them rank as evaluation's do.

    Raises:
      ValueError: naming the crop (its index) that is not an RGB uint8
        array or a readable image, or `crops` when it is one crop or path
        rather than several.
    """
    if isinstance(crops, (str, bytes, os.PathLike)) or (
        isinstance(crops, np.ndarray) and crops.ndim != 4):
      raise ValueError('crops: expected several crops (a list, or a '
                       '(N, H, W, 3) array); for one crop pass [crop]')
    try:
      crops = list(crops)
    except TypeError:
      raise ValueError(f'crops: expected a list of crops, got '
                       f'{type(crops).__name__}') from None
    rows = []
    for start in range(0, len(crops), self._batch):
      chunk = crops[start:start + self._batch]
      pixels = np.stack([resize(_pixels(crop, start + i), self.image_size)
                         for i, crop in enumerate(chunk)])
      rows.append(self._run(pixels))
    if not rows:
      return np.zeros((0, self.descriptor_size), np.float32)
    return np.concatenate(rows).astype(np.float32)
