"""ONNX export of a model's feature extractor (``export --format=onnx``).

The ONNX model takes ``images``: uint8 (batch, height, width, 3) RGB at the
network's input size, any batch size (a symbolic ``batch`` dimension), and
returns

  ``descriptors``: float32 (batch, P * D), the flattened part descriptors
    that retrieval compares by Euclidean distance;
  ``parts``: float32 (batch, P, D), each part L2-normalised.

The ImageNet normalisation is inside the model, as in the SavedModel. Unlike
the SavedModel the ONNX model does not resize: the project resizes like PIL
(bilinear with an antialiasing triangle filter when shrinking), which ONNX's
``Resize`` does not reproduce exactly across runtimes, so images must come at
the recorded size (``image_size`` in the model's metadata); the descriptors
then equal evaluation's. The network is converted from JAX by jax2onnx
(https://github.com/enpasos/jax2onnx), which walks the jaxpr, so any Flax
network of this project (its output dict holding ``features``) exports the
same way. The weights are initializers inside the ``.onnx`` file; the
``sa_reid`` metadata entry holds the JSON that the SavedModel keeps in
``assets.extra/sa_reid.json``.

Run with ONNX Runtime::

  session = onnxruntime.InferenceSession('model.onnx')
  descriptors, parts = session.run(None, {'images': uint8_batch})
"""

import importlib.metadata
import json
import logging
import os
import tempfile
from typing import Any, Optional

import jax
from jax import export as jax_export
import numpy as np

from sa_reid_jax.data.device_augment import normalize
from sa_reid_jax.datasets.images import check_size
from sa_reid_jax.models import registry
from sa_reid_jax.models import resnet
from sa_reid_jax.models import store
from sa_reid_jax.tools import outputs

# ONNX operator set the model is written for (ONNX Runtime >= 1.16 runs it).
OPSET = 21
METADATA_KEY = store.EXPORT_METADATA_KEY
FORMAT_VERSION = 1


class OnnxExportError(ValueError):
  """Bad ONNX export arguments or output path."""


def check_output(output: str, overwrite: bool) -> None:
  """Raises OnnxExportError when writing the file `output` is not allowed."""
  if not output:
    raise OnnxExportError('--output: empty path')
  if os.path.isdir(output):
    raise OnnxExportError(f'--output: {output} is a directory; give the '
                          '.onnx file to write')
  if os.path.lexists(output) and not overwrite:
    raise OnnxExportError(f'--output: {output} already exists (pass '
                          '--overwrite to replace it)')
  try:
    outputs.check_writable(output, '--output')
  except outputs.OutputError as error:
    raise OnnxExportError(str(error)) from None


def export_onnx(model, variables: Any, output: str, *,
                image_size: tuple[int, int], overwrite: bool = False,
                metadata: Optional[dict[str, Any]] = None) -> dict[str, Any]:
  """Writes `model`'s feature extractor as an ONNX file.

  Written beside `output` and moved into place at the end, so a failed export
  leaves no half-written file.

  Args:
    model: a network of any registered family (the output contract of
      `models.registry`).
    variables: its variables (params and batch_stats).
    output: the ``.onnx`` file to write.
    image_size: network input (height, width) the model takes.
    overwrite: replace an existing `output` file.
    metadata: extra JSON-serialisable entries for the ``sa_reid`` metadata.

  Returns:
    the ``sa_reid`` metadata (also stored in the model).

  Raises:
    OnnxExportError: for a bad `image_size` or `output`.
  """
  # Imported here: the converter is the optional 'onnx' extra.
  try:
    import jax2onnx  # pylint: disable=g-import-not-at-top
    import onnx  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise OnnxExportError(
        f'--format=onnx needs the onnx extra ({error.name} is missing): '
        "pip install -e '.[onnx]'") from None
  try:
    height, width = check_size(image_size)
  except ValueError as error:
    raise OnnxExportError(str(error)) from None
  check_output(output, overwrite)
  variables = jax.tree.map(np.asarray, variables)

  def features(images):
    pixels = normalize(images.astype(np.float32))
    parts = registry.embed(model, variables, pixels)
    parts = parts.astype(np.float32)
    return parts.reshape(parts.shape[0], -1), parts

  shape = jax_export.symbolic_shape(f'batch, {height}, {width}, 3')
  spec = jax.ShapeDtypeStruct(shape, np.uint8)
  _, parts_shape = jax.eval_shape(
      features, jax.ShapeDtypeStruct((1, height, width, 3), np.uint8))
  num_parts, part_dim = int(parts_shape.shape[1]), int(parts_shape.shape[2])
  info = {
      'format_version': FORMAT_VERSION,
      'inputs': {'images': {'dtype': 'uint8',
                            'shape': ['batch', height, width, 3]}},
      'outputs': {
          'descriptors': {'dtype': 'float32',
                          'shape': ['batch', num_parts * part_dim]},
          'parts': {'dtype': 'float32',
                    'shape': ['batch', num_parts, part_dim]}},
      'image_size': [height, width],
      'num_parts': num_parts,
      'part_dim': part_dim,
      'descriptor_dim': num_parts * part_dim,
      'distance': 'euclidean on descriptors (each part L2-normalised)',
      'preprocessing': ('none inside but x / 255 and ImageNet mean/std: '
                        'resize to image_size beforehand (bilinear, '
                        'antialiased when shrinking, as PIL)'),
      'model_family': registry.describe(model)['family'],
      'model_config': registry.describe(model)['config'],
      'jax_version': jax.__version__,
      'jax2onnx_version': importlib.metadata.version('jax2onnx'),
      **(metadata or {}),
  }
  # onnx_ir warns once per value whose static shape it cannot record (the
  # RGA relation reshapes); the model is checked below and by ONNX Runtime
  # in the tests, so these lines say nothing the user can act on.
  ir_logger = logging.getLogger('onnx_ir')
  level = ir_logger.level
  ir_logger.setLevel(logging.ERROR)
  try:
    with resnet.onnx_pooling():
      proto = jax2onnx.to_onnx(features, [spec], model_name='sa_reid_features',
                               opset=OPSET, input_names=['images'],
                               output_names=['descriptors', 'parts'])
  finally:
    ir_logger.setLevel(level)
  entry = proto.metadata_props.add()
  entry.key, entry.value = METADATA_KEY, json.dumps(info)
  onnx.checker.check_model(proto)
  path = os.path.abspath(output)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  descriptor, staging = tempfile.mkstemp(
      prefix=f'.{os.path.basename(path)}.', dir=os.path.dirname(path))
  os.close(descriptor)
  try:
    onnx.save_model(proto, staging)
    os.replace(staging, path)
  finally:
    if os.path.exists(staging):
      os.remove(staging)
  return info


def read_metadata(path: str) -> dict[str, Any]:
  """The ``sa_reid`` metadata of an exported ONNX file.

  Raises:
    OnnxExportError: when the file has none.
  """
  import onnx  # pylint: disable=g-import-not-at-top
  proto = onnx.load(path, load_external_data=False)
  for entry in proto.metadata_props:
    if entry.key == METADATA_KEY:
      return json.loads(entry.value)
  raise OnnxExportError(f'{path}: no {METADATA_KEY} metadata; not exported '
                        'by sa_reid_jax.tools.export')
