"""How PyTorch state-dict names and layouts map onto the Flax variables.

Every Flax leaf gets a `Source`: the PyTorch name(s) it comes from and how the
array is laid out there. Backbone names are torchvision's (optionally under a
prefix, ``base.`` in the official checkpoint); head names are the official
code's (``local_conv``, ``feat_bn2d``, ``instance0..6``,
``local_conv_layer{1,2,3}``, ``instance_layer{1,2,3}``).
"""

import dataclasses
import re
from typing import Any, Callable, Optional

import flax
import numpy as np

# PyTorch layouts of a Flax leaf.
CONV = 'conv'            # OIHW -> HWIO
CONV_AS_DENSE = 'conv1x1_as_dense'  # (O, I, 1, 1) -> (I, O)
LINEAR = 'linear'        # (O, I) -> (I, O)
VECTOR = 'vector'        # unchanged
STACKED_LINEAR = 'stacked_linear'  # P x (O, I) -> (P, I, O)
STACKED_VECTOR = 'stacked_vector'  # P x (O,) -> (P, O)

_HEAD_MODULES = {
    'part_reduce': 'local_conv',
    'part_bn': 'feat_bn2d',
}
LEAF_NAMES = {
    ('params', 'kernel'): 'weight',
    ('params', 'scale'): 'weight',
    ('params', 'bias'): 'bias',
    ('batch_stats', 'mean'): 'running_mean',
    ('batch_stats', 'var'): 'running_var',
}


@dataclasses.dataclass(frozen=True)
class Source:
  """Where one Flax leaf comes from in a PyTorch state dict."""
  torch_names: tuple[str, ...]
  layout: str

  def torch_shapes(self, flax_shape: tuple[int, ...]) -> tuple[tuple[int, ...],
                                                               ...]:
    """The PyTorch shape(s) that yield a Flax leaf of `flax_shape`."""
    if self.layout == CONV:
      h, w, i, o = flax_shape
      return ((o, i, h, w),)
    if self.layout == CONV_AS_DENSE:
      return ((flax_shape[1], flax_shape[0], 1, 1),)
    if self.layout == LINEAR:
      return ((flax_shape[1], flax_shape[0]),)
    if self.layout == STACKED_LINEAR:
      return ((flax_shape[2], flax_shape[1]),) * flax_shape[0]
    if self.layout == STACKED_VECTOR:
      return (flax_shape[1:],) * flax_shape[0]
    return (flax_shape,)

  def to_flax(self, arrays: list[np.ndarray]) -> np.ndarray:
    """Converts the PyTorch array(s) to the Flax layout."""
    if self.layout == CONV:
      return arrays[0].transpose(2, 3, 1, 0)
    if self.layout == CONV_AS_DENSE:
      return arrays[0][:, :, 0, 0].T
    if self.layout == LINEAR:
      return arrays[0].T
    if self.layout == STACKED_LINEAR:
      return np.stack([a.T for a in arrays])
    if self.layout == STACKED_VECTOR:
      return np.stack(arrays)
    return arrays[0]


def _backbone_module_name(name: str) -> str:
  match = re.fullmatch(r'(layer\d)_(\d+)', name)
  if match:
    return f'{match.group(1)}.{match.group(2)}'
  return {'downsample_conv': 'downsample.0',
          'downsample_bn': 'downsample.1'}.get(name, name)


def source_for(path: tuple[str, ...], num_parts: int,
               backbone_prefix: str) -> Optional[Source]:
  """The PyTorch source of the Flax leaf at `path`.

  Args:
    path: (collection, module, ..., leaf), e.g. ('params', 'backbone',
      'layer1_0', 'conv1', 'kernel').
    num_parts: parts of the SANet (the global classifier is
      ``instance{num_parts}``).
    backbone_prefix: prefix of torchvision's names ('' or 'base.').

  Returns:
    the source, or None for a leaf that has no PyTorch counterpart.
  """
  collection, *modules, leaf = path
  if modules == [] and leaf.startswith('part_classifier_'):
    kind = leaf[len('part_classifier_'):]
    names = tuple(f'instance{p}.{"weight" if kind == "kernel" else "bias"}'
                  for p in range(num_parts))
    return Source(names, STACKED_LINEAR if kind == 'kernel' else
                  STACKED_VECTOR)
  leaf_name = LEAF_NAMES.get((collection, leaf))
  if leaf_name is None or not modules:
    return None
  head = modules[0]
  if head == 'backbone':
    torch_module = backbone_prefix + '.'.join(
        _backbone_module_name(m) for m in modules[1:])
    if leaf != 'kernel':
      layout = VECTOR
    elif modules[-1] == 'fc':
      layout = LINEAR
    else:
      layout = CONV
  elif (match := re.fullmatch(r'ds_(reduce|classifier)(\d)', head)):
    kind, stage = match.groups()
    if kind == 'reduce':
      torch_module, layout = f'local_conv_layer{stage}', CONV_AS_DENSE
    else:
      torch_module = f'instance_layer{stage}'
      layout = LINEAR if leaf == 'kernel' else VECTOR
  elif head == 'global_classifier':
    torch_module = f'instance{num_parts}'
    layout = LINEAR if leaf == 'kernel' else VECTOR
  elif head in _HEAD_MODULES:
    torch_module = _HEAD_MODULES[head]
    layout = CONV_AS_DENSE if leaf == 'kernel' else VECTOR
  else:
    return None
  return Source((f'{torch_module}.{leaf_name}',), layout)


# Entries of each kind of problem that a conversion error lists.
MAX_LISTED = 5


@dataclasses.dataclass
class ConversionReport:
  """What a conversion used, skipped and found wrong."""
  converted: list[str] = dataclasses.field(default_factory=list)
  skipped: dict[str, int] = dataclasses.field(default_factory=dict)
  missing: list[str] = dataclasses.field(default_factory=list)
  unexpected: list[str] = dataclasses.field(default_factory=list)
  mismatched: list[str] = dataclasses.field(default_factory=list)

  @property
  def ok(self) -> bool:
    return not (self.missing or self.unexpected or self.mismatched)

  def problems(self, max_listed: int = MAX_LISTED) -> str:
    """All problems in one line (empty when `ok`): per kind its count and
    its first `max_listed` entries (a file of another network has hundreds)."""
    parts = []
    for title, items in (('missing keys', self.missing),
                         ('unexpected keys', self.unexpected),
                         ('shape mismatches', self.mismatched)):
      if items:
        listed = ', '.join(items[:max_listed])
        more = len(items) - max_listed
        parts.append(f'{len(items)} {title}: {listed}'
                     f'{f" and {more} more" if more > 0 else ""}')
    return '; '.join(parts)


def fill_variables(state: dict[str, np.ndarray], template: Any,
                   num_parts: int, backbone_prefix: str,
                   skip_patterns: tuple[str, ...],
                   only_backbone: bool = False,
                   source_fn: Optional[Callable[[tuple[str, ...]],
                                                Optional[Source]]] = None
                   ) -> tuple[Any, ConversionReport]:
  """Builds Flax variables from a PyTorch state dict.

  Args:
    state: PyTorch name -> array.
    template: variables (arrays or ShapeDtypeStructs) giving every leaf's
      shape; leaves not taken from `state` keep the template's value.
    num_parts: parts of the SANet.
    backbone_prefix: prefix of the backbone's names in `state`.
    skip_patterns: regular expressions of names known to be unused; they
      are skipped and counted by pattern.
    only_backbone: take only the backbone from `state` (heads keep the
      template's values).
    source_fn: the `Source` of a Flax path for another network family
      (default: `source_for` with `num_parts` and `backbone_prefix`, the SA
      network's names).

  Returns:
    (variables, report). The variables are valid only if ``report.ok``.
  """
  report = ConversionReport()
  used = set()
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(template))
  result = {}
  for path, leaf in flat.items():
    result[path] = leaf
    if only_backbone and path[1] != 'backbone':
      continue
    source = (source_fn(path) if source_fn is not None else
              source_for(path, num_parts, backbone_prefix))
    if source is None:
      if not only_backbone:
        report.missing.append(f'(no PyTorch name for {"/".join(path)})')
      continue
    present = [n for n in source.torch_names if n in state]
    report.missing.extend(n for n in source.torch_names if n not in state)
    used.update(present)
    if len(present) != len(source.torch_names):
      continue
    arrays = [state[n] for n in source.torch_names]
    expected = source.torch_shapes(tuple(leaf.shape))
    bad = [f'{n}: file has {tuple(a.shape)}, model needs {tuple(s)}'
           for n, a, s in zip(source.torch_names, arrays, expected)
           if tuple(a.shape) != tuple(s)]
    if bad:
      report.mismatched.extend(bad)
      continue
    result[path] = source.to_flax(arrays).astype(np.float32)
    report.converted.extend(source.torch_names)

  for name in sorted(set(state) - used):
    pattern = next((p for p in skip_patterns if re.fullmatch(p, name)), None)
    if pattern is not None:
      report.skipped[pattern] = report.skipped.get(pattern, 0) + 1
    else:
      report.unexpected.append(name)
  return flax.traverse_util.unflatten_dict(result), report
