r"""Exports a model directory's feature extractor as a TensorFlow SavedModel.

  python -m sa_reid_jax.tools.export --checkpoint=DIR --output=DIR \
      [--image_size=H,W] [--platforms=cpu,cuda] [--overwrite]
  python -m sa_reid_jax.tools.export --format=onnx --checkpoint=DIR \
      --output=model.onnx [--image_size=H,W] [--overwrite]

``--format=onnx`` writes an ONNX file instead (see ``export_onnx``: uint8
images at the network's input size, any batch size).

The SavedModel's ``serving_default`` signature takes ``images``: uint8
(batch, height, width, 3), any batch size and any image size (one size per
call), and returns

  ``descriptors``: float32 (batch, P * D), the flattened part descriptors that
    retrieval compares by Euclidean distance;
  ``parts``: float32 (batch, P, D), each part L2-normalised.

Images are resized and normalised inside the SavedModel by the project's own
``preprocessing.preprocess`` (PIL-style bilinear resize, ImageNet
normalisation), so a served descriptor equals evaluation's. The network is
converted with ``jax.experimental.jax2tf`` (StableHLO, run by TensorFlow's
``XlaCallModule`` op) with a symbolic batch dimension, lowered for every
platform in ``--platforms`` (default CPU and CUDA GPUs); its weights are
``tf.Variable``\ s in the SavedModel's ``variables/`` checkpoint.
``assets.extra/sa_reid.json`` records the input size, descriptor shape,
platforms and the model's config.

Serve with ``tf.saved_model.load(DIR).signatures['serving_default'](
images=...)`` or TensorFlow Serving.
"""

import json
import os
import shutil
import sys
import tempfile
from typing import Any, Optional, Sequence

if __name__ == '__main__':
  # Run as a program: TensorFlow's INFO lines, printed as it loads, hidden.
  from sa_reid_jax import command_line  # pylint: disable=g-import-not-at-top
  command_line.quiet_tensorflow(sys.argv)

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
# Before jax2tf, which imports TensorFlow: the first import is the quiet one.
from sa_reid_jax.datasets.tensorflow_cpu import tf  # pylint: disable=g-import-not-at-top
from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top,g-bad-import-order

from sa_reid_jax import command_line  # pylint: disable=g-import-not-at-top
from sa_reid_jax.data import preprocessing  # pylint: disable=g-import-not-at-top
from sa_reid_jax.datasets import tensorflow_cpu  # pylint: disable=g-import-not-at-top
from sa_reid_jax.datasets.images import check_size  # pylint: disable=g-import-not-at-top
from sa_reid_jax.models import registry  # pylint: disable=g-import-not-at-top
from sa_reid_jax.models import store  # pylint: disable=g-import-not-at-top
from sa_reid_jax.tools import export_onnx  # pylint: disable=g-import-not-at-top
from sa_reid_jax.tools import outputs  # pylint: disable=g-import-not-at-top

PROGRAM = 'export'
# Those jax2tf can lower for; one SavedModel serves on each of these.
KNOWN_PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')
DEFAULT_PLATFORMS = ('cpu', 'cuda')
METADATA_PATH = os.path.join('assets.extra',
                             f'{store.EXPORT_METADATA_KEY}.json')
FORMAT_VERSION = 1


class ExportError(ValueError):
  """Bad export arguments, checkpoint or output directory."""


class FeatureExtractor(tf.Module):
  """The model's weights and its serving function, as a `tf.Module`."""

  def __init__(self, model, variables: Any, image_size: tuple[int, int],
               platforms: Sequence[str]):
    """Converts `model` for `image_size` inputs.

    Args:
      model: a network of any registered family (the output contract of
        `models.registry`).
      variables: its variables (params and batch_stats).
      image_size: network input (height, width).
      platforms: jax2tf lowering platforms (a subset of `KNOWN_PLATFORMS`).
    """
    super().__init__(name='sa_reid_feature_extractor')
    self.image_size = tuple(image_size)
    leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(
        variables)
    # Weights are variables, not constants folded into the StableHLO module:
    # they then live in variables/ (no 2 GiB GraphDef limit, one copy however
    # many platforms) and stay readable with tf.train tools.
    self.model_variables = [
        tf.Variable(np.asarray(leaf), trainable=False,
                    name=_variable_name(path))
        for path, leaf in leaves_with_paths]

    def features(leaves, images):
      return registry.embed(model, jax.tree.unflatten(treedef, leaves),
                            images).astype(np.float32)

    parts_shape = jax.eval_shape(
        features, [jax.ShapeDtypeStruct(v.shape, v.dtype.as_numpy_dtype)
                   for v in self.model_variables],
        jax.ShapeDtypeStruct((1, *self.image_size, 3), np.float32)).shape
    self.num_parts, self.part_dim = int(parts_shape[1]), int(parts_shape[2])
    # The batch is symbolic ('b' >= 1), so one module serves any batch size;
    # the weights and the resized image size are fixed.
    self._features_tf = jax2tf.convert(
        features, polymorphic_shapes=[None, '(b, ...)'], with_gradient=False,
        native_serialization_platforms=tuple(platforms))

  # autograph=False: the body is plain TF ops (and jax2tf's Python, which
  # AutoGraph cannot and need not rewrite).
  @tf.function(autograph=False, input_signature=[
      tf.TensorSpec([None, None, None, 3], tf.uint8, name='images')])
  def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
    """Descriptors of a batch of uint8 RGB images of one (any) size.

    Args:
      images: uint8 (batch, height, width, 3).

    Returns:
      dict with ``descriptors`` float32 (batch, P * D) and ``parts`` float32
      (batch, P, D).
    """
    size = self.image_size
    # preprocess is per image (its antialias choice depends on the image's
    # own size, and pfor cannot vectorise antialiased resizing).
    pixels = tf.map_fn(
        lambda image: preprocessing.preprocess(image, size), images,
        fn_output_signature=tf.TensorSpec((*size, 3), tf.float32))
    parts_shape = (self.num_parts, self.part_dim)
    # The converted module requires batch >= 1; an empty batch gets an empty
    # answer instead of a shape-assertion error.
    parts = tf.cond(
        tf.shape(images)[0] > 0,
        lambda: self._features_tf(self.model_variables, pixels),
        lambda: tf.zeros((0, *parts_shape), tf.float32))
    parts = tf.ensure_shape(parts, (None, *parts_shape))
    descriptors = tf.reshape(parts, (-1, self.num_parts * self.part_dim))
    return {'descriptors': descriptors, 'parts': parts}


def _variable_name(path) -> str:
  """'params/backbone/conv1/kernel' for a variables pytree path."""
  keys = [str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path]
  return '/'.join(keys).replace(':', '_')


def parse_platforms(text: str, flag: str = '--platforms') -> tuple[str, ...]:
  """Reads a comma-separated subset of `KNOWN_PLATFORMS`.

  Args:
    text: the flag's value, e.g. 'cpu,cuda'.
    flag: the flag's name, for the message.

  Returns:
    the platforms, in the given order without repeats.

  Raises:
    ExportError: naming `flag` for an empty list or an unknown platform.
  """
  platforms = tuple(dict.fromkeys(
      p.strip().lower() for p in text.split(',') if p.strip()))
  unknown = [p for p in platforms if p not in KNOWN_PLATFORMS]
  if not platforms or unknown:
    raise ExportError(f'{flag}: expected a comma-separated subset of '
                      f'{",".join(KNOWN_PLATFORMS)}, got {text!r}')
  return platforms


def _check_output(output: str, overwrite: bool,
                  protected: Optional[str] = None):
  """Raises ExportError when writing `output` is not allowed."""
  if not output:
    raise ExportError('--output: empty path')
  path = os.path.realpath(output)
  if protected is not None:
    kept = os.path.realpath(protected)
    if path == kept or kept.startswith(path + os.sep):
      raise ExportError(f'--output: {output} would replace the checkpoint '
                        f'{protected}; choose another directory')
  if os.path.lexists(output):
    if not overwrite:
      raise ExportError(f'--output: {output} already exists (pass '
                        '--overwrite to replace it)')
    if not os.path.isdir(output) or os.path.islink(output):
      raise ExportError(f'--output: {output} exists and is not a directory; '
                        'not replacing it')
  try:
    outputs.check_writable(output, '--output', directory=True)
  except outputs.OutputError as error:
    raise ExportError(str(error)) from None


def export_saved_model(model, variables: Any, output: str, *,
                       image_size: tuple[int, int],
                       platforms: Sequence[str] = DEFAULT_PLATFORMS,
                       overwrite: bool = False,
                       metadata: Optional[dict[str, Any]] = None
                       ) -> dict[str, Any]:
  """Writes `model`'s feature extractor as a SavedModel.

  The SavedModel is written beside `output` and moved into place at the end,
  so a failed export never leaves a half-written or half-replaced directory.

  Args:
    model: a network of any registered family (the output contract of
      `models.registry`).
    variables: its variables.
    output: the SavedModel directory to write.
    image_size: network input (height, width) that served images are
      resized to.
    platforms: jax2tf lowering platforms the SavedModel can run on.
    overwrite: replace an existing `output` directory.
    metadata: extra JSON-serialisable entries for ``sa_reid.json``.

  Returns:
    the ``sa_reid.json`` contents.

  Raises:
    ExportError: for a bad `image_size`, `platforms` or `output`.
  """
  try:
    image_size = check_size(image_size)
  except ValueError as error:
    raise ExportError(str(error)) from None
  platforms = parse_platforms(','.join(platforms), 'platforms')
  _check_output(output, overwrite)
  module = FeatureExtractor(model, variables, image_size, platforms)
  info = {
      'format_version': FORMAT_VERSION,
      'signature': 'serving_default',
      'inputs': {'images': {'dtype': 'uint8',
                            'shape': [None, None, None, 3]}},
      'outputs': {
          'descriptors': {'dtype': 'float32',
                          'shape': [None, module.num_parts * module.part_dim]},
          'parts': {'dtype': 'float32',
                    'shape': [None, module.num_parts, module.part_dim]}},
      'image_size': list(image_size),
      'num_parts': module.num_parts,
      'part_dim': module.part_dim,
      'descriptor_dim': module.num_parts * module.part_dim,
      'distance': 'euclidean on descriptors (each part L2-normalised)',
      'preprocessing': ('bilinear resize to image_size (antialiased when '
                        'shrinking), x / 255, ImageNet mean/std'),
      'platforms': list(platforms),
      'model_family': registry.describe(model)['family'],
      'model_config': registry.describe(model)['config'],
      'jax_version': jax.__version__,
      'tensorflow_version': tf.__version__,
      **(metadata or {}),
  }
  path = os.path.abspath(output)
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f'.{os.path.basename(path)}.', dir=parent)
  try:
    saved = os.path.join(staging, 'saved_model')
    tf.saved_model.save(module, saved,
                        signatures={'serving_default': module.serve})
    os.makedirs(os.path.join(saved, 'assets.extra'), exist_ok=True)
    with open(os.path.join(saved, METADATA_PATH), 'w') as f:
      json.dump(info, f, indent=2)
      f.write('\n')
    if os.path.isdir(path):
      shutil.rmtree(path)
    os.replace(saved, path)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return info


def export_checkpoint(checkpoint: str, output: str, *,
                      image_size: Optional[Sequence[int]] = None,
                      platforms: Sequence[str] = DEFAULT_PLATFORMS,
                      overwrite: bool = False,
                      output_format: str = 'saved_model') -> dict[str, Any]:
  """Exports a model directory (``convert_weights.py`` or training output).

  Args:
    checkpoint: the model directory.
    output: the SavedModel directory (or with ``output_format='onnx'`` the
      ``.onnx`` file) to write.
    image_size: network input (height, width); default: the size recorded
      by training, else 384x128.
    platforms: jax2tf lowering platforms.
    overwrite: replace an existing `output` directory.
    output_format: ``'saved_model'`` or ``'onnx'`` (`platforms` unused).

  Returns:
    the ``sa_reid.json`` contents (the ONNX model's ``sa_reid`` metadata).

  Raises:
    ExportError: naming the flag at fault.
  """
  if not checkpoint:
    raise ExportError('--checkpoint: empty path')
  # Checked before the (slow) restore, and against replacing the checkpoint.
  if output_format == 'onnx':
    try:
      export_onnx.check_output(output, overwrite)
    except export_onnx.OnnxExportError as error:
      raise ExportError(str(error)) from None
  else:
    _check_output(output, overwrite, protected=checkpoint)
  try:
    checkpoint = store.resolve_model_directory(checkpoint)
    size = store.input_size(checkpoint, image_size)
    model, variables = store.load_model(checkpoint)
  except (store.ModelStoreError, OSError) as error:
    raise ExportError(f'--checkpoint: {_one_line(error)}') from None
  except ValueError as error:
    raise ExportError(f'--checkpoint: {checkpoint}: {_one_line(error)}'
                      ) from None
  try:
    registry.check_input_size(model, size, '--image_size')
  except ValueError as error:
    raise ExportError(str(error)) from None
  # The fingerprint lets FeatureExtractor refuse an ONNX file exported from
  # another model than the model directory it is given.
  metadata = {'checkpoint': os.path.abspath(checkpoint),
              'model_fingerprint': store.model_fingerprint(model, variables)}
  if output_format == 'onnx':
    try:
      return export_onnx.export_onnx(model, variables, output, image_size=size,
                                     overwrite=overwrite, metadata=metadata)
    except export_onnx.OnnxExportError as error:
      raise ExportError(str(error)) from None
  return export_saved_model(
      model, variables, output, image_size=size, platforms=platforms,
      overwrite=overwrite, metadata=metadata)


def _one_line(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return lines[0] if lines else type(error).__name__


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Command-line entry point.

  Args:
    argv: the flags (default: sys.argv[1:]).

  Returns:
    0 on success; bad input exits with a one-line ``export: error: ...``.
  """
  parser = command_line.OneLineArgumentParser(
      prog=PROGRAM, description='Exports a model directory as a TensorFlow '
      'SavedModel (uint8 images in, retrieval descriptors out).')
  parser.add_argument('--format', default='saved_model',
                      choices=('saved_model', 'onnx'),
                      help='TensorFlow SavedModel (uint8 images of any size) '
                      'or ONNX (uint8 images at the network\'s size); '
                      'default: %(default)s')
  parser.add_argument('--checkpoint', required=True,
                      help='model directory (convert_weights.py or training)')
  parser.add_argument('--output', required=True,
                      help='SavedModel directory (or .onnx file) to write')
  parser.add_argument('--image_size', default=None, metavar='H,W',
                      type=command_line.image_size_argument,
                      help='network input size (default: recorded by '
                      'training, else 384,128)')
  parser.add_argument('--platforms', default=','.join(DEFAULT_PLATFORMS),
                      help='platforms the SavedModel runs on, a subset of '
                      f'{",".join(KNOWN_PLATFORMS)} (default: %(default)s)')
  parser.add_argument('--overwrite', action='store_true',
                      help='replace an existing --output directory')
  command_line.add_verbosity_argument(parser)
  args = parser.parse_args(argv)
  command_line.set_library_verbosity(args.verbosity)
  try:
    platforms = parse_platforms(args.platforms)
    # TensorFlow only resizes images here; JAX restores the weights.
    tensorflow_cpu.hide_accelerators_from_tensorflow()
    info = export_checkpoint(args.checkpoint, args.output,
                             image_size=args.image_size, platforms=platforms,
                             overwrite=args.overwrite,
                             output_format=args.format)
  except ExportError as error:
    sys.exit(f'{PROGRAM}: error: {error}')
  except (OSError, tf.errors.OpError) as error:
    # Only writing the output is left to fail this way.
    sys.exit(f'{PROGRAM}: error: --output: {args.output}: '
             f'{_one_line(getattr(error, "message", error))}')
  height, width = info['image_size']
  where = ('ONNX, images resized beforehand' if args.format == 'onnx' else
           f'platforms {",".join(info["platforms"])}')
  print(f'wrote {os.path.abspath(args.output)}: uint8 images -> '
        f'descriptors ({info["num_parts"]} x {info["part_dim"]} = '
        f'{info["descriptor_dim"]}) at {height}x{width}, {where}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
