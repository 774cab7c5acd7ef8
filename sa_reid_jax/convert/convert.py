"""Converting PyTorch weights into a model directory (`models.store`)."""

import dataclasses
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp

from sa_reid_jax.convert.mapping import ConversionReport, fill_variables
from sa_reid_jax.convert.readers import ConversionError, read_weights
from sa_reid_jax.models.sanet import SANet
from sa_reid_jax.models.store import abstract_variables, save_model

FORMATS = ('torchvision', 'sa_official')
# Market-1501's number of training identities; the class count of fresh heads
# when converting an ImageNet backbone without --num_classes.
DEFAULT_NUM_CLASSES = 751

# Names present in the files but not used by the network.
_TORCHVISION_UNUSED = (r'fc\..*', r'.*\.num_batches_tracked')
_OFFICIAL_UNUSED = (r'base\.fc\..*', r'fusion_conv\.weight',
                    r'.*\.num_batches_tracked')
# The official network: 6 parts, DS heads with SA normalised by the sum of the
# channel mean (not a softmax).
_OFFICIAL_ARCHITECTURE = dict(num_parts=6, deep_supervision=True,
                              ds_attention=True, backbone_attention=False,
                              attention_normalization='sum')


@dataclasses.dataclass
class ConversionResult:
  """What `convert_checkpoint` wrote."""
  output: str
  model: SANet
  report: ConversionReport
  num_values: int

  def summary(self) -> str:
    skipped = ', '.join(f'{pattern}: {count}'
                        for pattern, count in self.report.skipped.items())
    return (f'converted {len(self.report.converted)} tensors '
            f'({self.num_values:,} values); skipped '
            f'{sum(self.report.skipped.values())} known-unused keys'
            f'{f" ({skipped})" if skipped else ""}; num_classes='
            f'{self.model.num_classes}, attention_normalization='
            f'{self.model.attention_normalization}; wrote {self.output}')


def _official_num_classes(state: dict[str, Any], path: str) -> int:
  if 'instance0.weight' not in state:
    raise ConversionError(f'{path}: no "instance0.weight": not a checkpoint '
                          'of the official SA network (use '
                          '--format=torchvision for an ImageNet ResNet-50)')
  return int(state['instance0.weight'].shape[0])


def convert_checkpoint(weights_format: str, input_path: str, output_dir: str,
                       num_classes: Optional[int] = None, seed: int = 0,
                       overwrite: bool = False) -> ConversionResult:
  """Converts a PyTorch weight file into a model directory.

  Args:
    weights_format: ``'torchvision'`` (an ImageNet ResNet-50 state dict: the
      backbone is imported, the heads are freshly initialised) or
      ``'sa_official'`` (a trained checkpoint of the official code: every
      variable is imported, num_classes is read from the file and the
      official ``'sum'`` attention is recorded in the config).
    input_path: the weight file (see `readers.read_weights`).
    output_dir: the model directory to write.
    num_classes: identities of the heads; torchvision format only (default
      751). For sa_official it must agree with the file if given.
    seed: initialisation seed of the fresh heads (torchvision format).
    overwrite: replace an existing output directory.

  Returns:
    the result, whose `summary()` describes what was converted and skipped.

  Raises:
    ConversionError: unreadable input, or every missing key, unexpected key
      and shape mismatch in one message.
  """
  if weights_format not in FORMATS:
    raise ConversionError(f'--format must be one of {FORMATS}, got '
                          f'{weights_format!r}')
  if os.path.exists(output_dir) and not overwrite:
    raise ConversionError(f'{output_dir}: output already exists')
  state, file_metadata = read_weights(input_path)

  if weights_format == 'sa_official':
    file_classes = _official_num_classes(state, input_path)
    if num_classes is not None and num_classes != file_classes:
      raise ConversionError(f'--num_classes={num_classes} disagrees with '
                            f'{input_path}, whose classifiers have '
                            f'{file_classes} classes')
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
                          f'layout:\n{report.problems()}')

  metadata = {'format': weights_format,
              'source_file': os.path.basename(input_path), **file_metadata}
  if weights_format == 'torchvision':
    metadata['heads_initialised_with_seed'] = seed
  variables = jax.tree.map(jnp.asarray, variables)
  written = save_model(output_dir, model, variables, metadata, overwrite)
  num_values = sum(x.size for x in jax.tree.leaves(variables))
  return ConversionResult(written, model, report, num_values)
