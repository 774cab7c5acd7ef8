"""Converting PyTorch weights into a model directory (`models.store`)."""

import dataclasses
import math
import os
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp

from sa_reid_jax.convert.mapping import ConversionReport, fill_variables
from sa_reid_jax.convert.readers import ConversionError, read_weights
from sa_reid_jax.convert.rga_mapping import backbone_shape, official_parts
from sa_reid_jax.convert.rga_mapping import relation_widths, rga_source_for
from sa_reid_jax.models.rga.network import OFFICIAL_IMAGE_SIZE, RGANet
from sa_reid_jax.models.sanet import SANet
from sa_reid_jax.models.store import abstract_variables, save_model
from sa_reid_jax.tools import outputs

FORMATS = ('torchvision', 'sa_official', 'rga_official')
# Market-1501's number of training identities; the class count of fresh heads
# when converting an ImageNet backbone without --num_classes.
DEFAULT_NUM_CLASSES = 751

# Names present in the files but not used by the network.
_TORCHVISION_UNUSED = (r'fc\..*', r'.*\.num_batches_tracked')
_OFFICIAL_UNUSED = (r'base\.fc\..*', r'fusion_conv\.weight',
                    r'.*\.num_batches_tracked')
_RGA_UNUSED = (r'.*\.num_batches_tracked',)
# Each format's file, as a sentence names it, and names that only it holds
# (any one of each group): a file of another format is recognised by them.
_DESCRIPTIONS = {
    'torchvision': 'a torchvision ResNet state dict',
    'sa_official': 'a checkpoint of the official SA code',
    'rga_official': 'a checkpoint of the official RGA code',
}
_SIGNATURES = {
    'torchvision': (('conv1.weight',), ('layer1.0.conv1.weight',)),
    'sa_official': (('base.conv1.weight',), ('instance0.weight',)),
    'rga_official': (('backbone.conv1.weight',), ('cls.weight',)),
}
# The official network: 6 parts, DS heads with SA normalised by the sum of the
# channel mean (not a softmax).
_OFFICIAL_ARCHITECTURE = dict(num_parts=6, deep_supervision=True,
                              ds_attention=True, backbone_attention=False,
                              attention_normalization='sum')


@dataclasses.dataclass
class ConversionResult:
  """What `convert_checkpoint` wrote."""
  output: str
  model: Any  # SANet or RGANet
  report: ConversionReport
  num_values: int

  def summary(self) -> str:
    skipped = ', '.join(f'{pattern}: {count}'
                        for pattern, count in self.report.skipped.items())
    return (f'converted {len(self.report.converted)} tensors '
            f'({self.num_values:,} values); skipped '
            f'{sum(self.report.skipped.values())} known-unused keys'
            f'{f" ({skipped})" if skipped else ""}; num_classes='
            f'{self.model.num_classes}, {_architecture(self.model)}; wrote '
            f'{self.output}')


def _architecture(model: Any) -> str:
  """What the summary says about the converted network beyond its classes."""
  if isinstance(model, RGANet):
    parts = [p for p, on in (('spatial', model.spatial),
                             ('channel', model.channel)) if on]
    return (f'RGA parts: {"+".join(parts) or "none (BNNeck baseline)"}, '
            f'image_size={model.image_size[0]}x{model.image_size[1]}')
  return f'attention_normalization={model.attention_normalization}'


def detect_format(state: dict[str, Any]) -> Optional[str]:
  """The `FORMATS` entry whose layout `state`'s names follow, if any.

  Args:
    state: tensor name -> array, as `read_weights` returns it.

  Returns:
    ``'torchvision'``, ``'sa_official'`` or ``'rga_official'``, or None for
    names of none of them.
  """
  for name, groups in _SIGNATURES.items():
    if all(any(key in state for key in group) for group in groups):
      return name
  return None


def _check_format(state: dict[str, Any], path: str,
                  weights_format: str) -> None:
  """Refuses a file of another known format, naming the --format to use
  (converting it anyway would list every one of its hundreds of keys)."""
  found = detect_format(state)
  if found is not None and found != weights_format:
    raise ConversionError(
        f'{path} is {_DESCRIPTIONS[found]}, not {_DESCRIPTIONS[weights_format]}'
        f' (--format={weights_format}): use --format={found}')


def _check_output(output_dir: str, overwrite: bool) -> None:
  """Refuses an output that exists (without `overwrite`) or cannot be
  written, before the file is read."""
  if os.path.exists(output_dir) and not overwrite:
    raise ConversionError(f'--output: {output_dir} already exists; choose '
                          'another --output, or --overwrite to replace it')
  try:
    outputs.check_writable(output_dir, '--output', directory=True)
    # The directory is written beside itself and renamed into place.
    parent = os.path.dirname(os.path.abspath(output_dir))
    if os.path.isdir(parent) and not os.access(parent, os.W_OK | os.X_OK):
      raise outputs.OutputError(f'--output: cannot write {output_dir}: '
                                f'directory {parent} is not writable')
  except outputs.OutputError as error:
    raise ConversionError(str(error)) from None


def _official_num_classes(state: dict[str, Any], path: str,
                          classifier: str, network: str,
                          num_classes: Optional[int]) -> int:
  """The class count of an official checkpoint, read from `classifier`."""
  if classifier not in state:
    raise ConversionError(f'{path}: no "{classifier}": not a checkpoint of '
                          f'the official {network} network (use '
                          '--format=torchvision for an ImageNet ResNet-50)')
  file_classes = int(state[classifier].shape[0])
  if num_classes is not None and num_classes != file_classes:
    raise ConversionError(f'--num_classes={num_classes} disagrees with '
                          f'{path}, whose classifiers have {file_classes} '
                          'classes')
  return file_classes


def _size_text(height: float, width: float) -> str:
  return f'{height:g},{width:g}'


def _rga_model(state: dict[str, Any], path: str, num_classes: Optional[int],
               image_size: Sequence[int]) -> tuple[RGANet, Any]:
  """The RGANet an official RGA checkpoint describes, and its template.

  The parts present (spatial, channel) and the backbone's depth and width
  are read from the names; the class count from ``cls.weight``. The widths
  of the RGA modules depend on the input size, which the file does not
  record: a file built for another size than `image_size` is refused,
  naming the size it implies.
  """
  classes = _official_num_classes(state, path, 'cls.weight', 'RGA',
                                  num_classes)
  spatial, channel = official_parts(state)
  stage_sizes, base_width = backbone_shape(state)
  if 0 in stage_sizes:
    raise ConversionError(f'{path}: no backbone.layer1..4 blocks: not a '
                          'checkpoint of the official RGA network')
  height, width = (int(v) for v in image_size)
  model = RGANet(num_classes=classes, spatial=spatial, channel=channel,
                 image_size=(height, width), stage_sizes=stage_sizes,
                 base_width=base_width)
  try:
    template = abstract_variables(model)
  except ValueError as error:
    raise ConversionError(f'--image_size={_size_text(height, width)}: '
                          f'{error}') from error
  file_positions = relation_widths(state)
  if file_positions is None:
    return model, template
  module = template['params']['backbone']['rga_att1']
  model_positions = (module['gg_spatial']['conv']['kernel'].shape[0] // 2
                     if spatial else
                     module['theta_channel']['conv']['kernel'].shape[0])
  if file_positions != model_positions:
    # layer1's map is (H/4) x (W/4): H * W = 16 N. At the aspect ratio of
    # --image_size that gives one size, reported when it is whole.
    implied_width = math.sqrt(16 * file_positions * width / height)
    implied_height = implied_width * height / width
    implied = ''
    if implied_width.is_integer() and implied_height.is_integer():
      implied = (f', i.e. --image_size='
                 f'{_size_text(implied_height, implied_width)} at the same '
                 'aspect ratio')
    raise ConversionError(
        f'--image_size={_size_text(height, width)} does not match {path}: '
        f'its RGA modules were built for {file_positions} positions after '
        f'layer1 ((H/4) x (W/4)){implied}; this size gives {model_positions}')
  return model, template


def convert_checkpoint(weights_format: str, input_path: str, output_dir: str,
                       num_classes: Optional[int] = None, seed: int = 0,
                       overwrite: bool = False,
                       image_size: Optional[Sequence[int]] = None
                       ) -> ConversionResult:
  """Converts a PyTorch weight file into a model directory.

  Args:
    weights_format: ``'torchvision'`` (an ImageNet ResNet-50 state dict: the
      backbone is imported, the heads are freshly initialised) or
      ``'sa_official'`` (a trained checkpoint of the official code: every
      variable is imported, num_classes is read from the file and the
      official ``'sum'`` attention is recorded in the config) or
      ``'rga_official'`` (a trained checkpoint of the official RGA code,
      ``{'state_dict', 'epoch', 'best_top1'}``: every variable is imported;
      num_classes is read from ``cls.weight``, the RGA parts from the names
      present; a file without RGA modules is the BNNeck baseline).
    input_path: the weight file (see `readers.read_weights`).
    output_dir: the model directory to write.
    num_classes: identities of the heads; torchvision format only (default
      751). For sa_official it must agree with the file if given.
    seed: initialisation seed of the fresh heads (torchvision format).
    overwrite: replace an existing output directory.
    image_size: (height, width) the RGA checkpoint was trained at (its
      module widths depend on it); rga_official only, default the official
      256x128. Recorded in the model directory's metadata.

  Returns:
    the result, whose `summary()` describes what was converted and skipped.

  Raises:
    ConversionError: an `output_dir` that exists (without `overwrite`) or
      cannot be written (checked before the file is read); unreadable input;
      a file of another of `FORMATS` (naming the one to use); else the
      missing keys, unexpected keys and shape mismatches in one line (the
      first few of each, with their counts); for rga_official, an image
      size the file's modules were not built for.
  """
  if weights_format not in FORMATS:
    raise ConversionError(f'--format must be one of {FORMATS}, got '
                          f'{weights_format!r}')
  if image_size is not None and weights_format != 'rga_official':
    raise ConversionError('--image_size applies to --format=rga_official '
                          'only (the other networks fit any input size)')
  _check_output(output_dir, overwrite)
  state, file_metadata = read_weights(input_path)
  _check_format(state, input_path, weights_format)

  if weights_format == 'rga_official':
    image_size = tuple(image_size or OFFICIAL_IMAGE_SIZE)
    model, template = _rga_model(state, input_path, num_classes, image_size)
    variables, report = fill_variables(state, template, 0, '', _RGA_UNUSED,
                                       source_fn=rga_source_for)
  elif weights_format == 'sa_official':
    file_classes = _official_num_classes(state, input_path,
                                         'instance0.weight', 'SA', num_classes)
    model = SANet(num_classes=file_classes, **_OFFICIAL_ARCHITECTURE)
    template = abstract_variables(model)
    variables, report = fill_variables(state, template, model.num_parts,
                                       'base.', _OFFICIAL_UNUSED)
  else:
    model = SANet(num_classes=num_classes or DEFAULT_NUM_CLASSES)
    template = jax.jit(
        lambda key: model.init(key, jnp.zeros((1, 128, 64, 3)),
                               train=False))(jax.random.key(seed))
    variables, report = fill_variables(state, template, model.num_parts, '',
                                       _TORCHVISION_UNUSED, only_backbone=True)
  if not report.ok:
    raise ConversionError(f'{input_path} does not match the {weights_format} '
                          f'layout: {report.problems()}')

  metadata = {'format': weights_format,
              'source_file': os.path.basename(input_path), **file_metadata}
  if weights_format == 'torchvision':
    metadata['heads_initialised_with_seed'] = seed
  if weights_format == 'rga_official':
    metadata['image_size'] = list(image_size)
  variables = jax.tree.map(jnp.asarray, variables)
  written = save_model(output_dir, model, variables, metadata, overwrite)
  num_values = sum(x.size for x in jax.tree.leaves(variables))
  return ConversionResult(written, model, report, num_values)
