"""The official RGA checkpoint's names for the Flax `RGANet` variables.

Official layout (``reid/models/rga_model.py``): ``backbone.<torchvision
ResNet-50 names>``, ``backbone.rga_att1..4.<part>.<index>.*`` where every
embedding is an ``nn.Sequential`` (0 conv, 1 BN, 2 ReLU) and ``W_*`` is
(0 conv, 1 BN, 2 ReLU, 3 conv, 4 BN), ``feat_bn.*`` (the BNNeck) and
``cls.weight`` (the classifier, no bias). The 1x1 convs are Dense layers in
Flax: (O, I, 1, 1) -> (I, O).
"""

import re
from typing import Any, Optional

import numpy as np

from sa_reid_jax.convert.mapping import CONV_AS_DENSE, LEAF_NAMES, LINEAR
from sa_reid_jax.convert.mapping import VECTOR, Source, source_for

BACKBONE_PREFIX = 'backbone.'
# Flax submodule path -> official nn.Sequential index, in an embedding
# (theta_*, phi_*, gx_*, gg_*) and in an attention head (W_*).
_EMBED_INDEX = {('conv',): '0', ('bn',): '1'}
_HEAD_INDEX = {('reduce', 'conv'): '0', ('reduce', 'bn'): '1',
               ('conv',): '3', ('bn',): '4'}


def rga_source_for(path: tuple[str, ...]) -> Optional[Source]:
  """The official checkpoint's source of the `RGANet` leaf at `path`.

  Args:
    path: (collection, module, ..., leaf), e.g. ('params', 'backbone',
      'rga_att1', 'W_spatial', 'reduce', 'conv', 'kernel').

  Returns:
    the source, or None for a leaf without an official counterpart.
  """
  collection, *modules, leaf = path
  leaf_name = LEAF_NAMES.get((collection, leaf))
  if leaf_name is None or not modules:
    return None
  if modules[:1] == ['backbone'] and len(modules) > 2 and re.fullmatch(
      r'rga_att\d', modules[1]):
    part, inner = modules[2], tuple(modules[3:])
    index = (_HEAD_INDEX if part.startswith('W_') else _EMBED_INDEX).get(inner)
    if index is None:
      return None
    name = f'{BACKBONE_PREFIX}{modules[1]}.{part}.{index}.{leaf_name}'
    return Source((name,), CONV_AS_DENSE if leaf == 'kernel' else VECTOR)
  if modules == ['feat_bn']:
    return Source((f'feat_bn.{leaf_name}',), VECTOR)
  if modules == ['cls'] and leaf == 'kernel':
    return Source(('cls.weight',), LINEAR)
  if modules[0] == 'backbone':
    return source_for(path, 0, BACKBONE_PREFIX)
  return None


def official_parts(state: dict[str, Any]) -> tuple[bool, bool]:
  """(spatial, channel): which RGA parts an official state dict holds."""
  names = ' '.join(state)
  return ('_spatial.' in names, '_channel.' in names)


def backbone_shape(state: dict[str, np.ndarray]
                   ) -> tuple[tuple[int, ...], int]:
  """(stage_sizes, base_width) of the file's ResNet: blocks per stage and the
  stem's width (ResNet-50: (3, 4, 6, 3), 64)."""
  blocks = [0, 0, 0, 0]
  for name in state:
    match = re.match(rf'{re.escape(BACKBONE_PREFIX)}layer([1-4])\.(\d+)\.',
                     name)
    if match:
      stage, block = int(match.group(1)) - 1, int(match.group(2))
      blocks[stage] = max(blocks[stage], block + 1)
  stem = state.get(f'{BACKBONE_PREFIX}conv1.weight')
  return tuple(blocks), int(stem.shape[0]) if stem is not None else 64


def relation_widths(state: dict[str, np.ndarray]) -> Optional[int]:
  """Positions N after layer1 that the file's first RGA module was built for.

  Read from ``gg_spatial`` (2N inputs) or ``theta_channel`` (N inputs) of
  ``rga_att1``; None when the file has neither (no RGA module).
  """
  spatial = state.get(f'{BACKBONE_PREFIX}rga_att1.gg_spatial.0.weight')
  if spatial is not None:
    return int(spatial.shape[1]) // 2
  channel = state.get(f'{BACKBONE_PREFIX}rga_att1.theta_channel.0.weight')
  if channel is not None:
    return int(channel.shape[1])
  return None
