"""The RGA network: ResNet-50 with RGA modules after every stage + BNNeck.

Official code ``reid/models/rga_model.py`` and ``rga_branches.py`` (see the
project's reference notes, "Relation-Aware Global Attention"):

* backbone: ResNet-50 v1.5, last stride 1 (16x8 final map at 256x128), with
  an RGA module ``rga_att1..4`` after layer1..layer4 inside the flow (layer2
  reads rga_att1's output). Module parameters live under the backbone, as
  the official ``backbone.rga_att1``.
* head ("BNNeck"): global average pooling -> ``feat_`` (2048) ->
  BatchNorm1d whose bias is frozen -> ``feat`` -> linear classifier without
  bias, N(0, 0.001). No dropout.

With both parts off this is exactly the plain ResNet-50 + BNNeck "bag of
tricks" baseline (Luo et al., CVPR 2019 workshops), the ``baseline`` variant.
"""

import functools
from typing import Any, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from sa_reid_jax.models.normalization import BatchNorm
from sa_reid_jax.models.resnet import STAGE_NAMES, ResNet
from sa_reid_jax.models.rga.module import OFFICIAL_RATIO, RGAModule
from sa_reid_jax.models.rga.module import check_bn_scale_init
from sa_reid_jax.models.sanet import l2_normalize
from sa_reid_jax.models.sanet.network import DTYPES, classifier_kernel_init

# The official input (height, width) (``--height 256 --width 128``).
OFFICIAL_IMAGE_SIZE = (256, 128)
# 'pre_bn': feat_, before the BNNeck's BatchNorm; 'post_bn': feat, after it.
# The official test reports both (cosine distance on each).
DESCRIPTORS = ('pre_bn', 'post_bn')
# Parameters the official code does not train: the BNNeck BatchNorm's bias
# (``feat_bn.bias.requires_grad_(False)``). Paths into ``params``; the
# optimizer masks them (a mask, not a stop-gradient, so no weight decay
# moves them either).
FROZEN_PARAMETERS = (('feat_bn', 'bias'),)


def frozen_parameters(params: Any) -> Any:
  """A tree like `params` with True at the `FROZEN_PARAMETERS` leaves."""
  return flax.traverse_util.path_aware_map(
      lambda path, _: tuple(path) in FROZEN_PARAMETERS, params)


def _rga_module(stage: int, **settings) -> RGAModule:
  """The official ``rga_att{stage + 1}``, built by the backbone (its parent)."""
  return RGAModule(name=f'rga_att{stage + 1}', **settings)


class RGANet(nn.Module):
  """Relation-Aware Global Attention network (RGA-S, RGA-C, RGA-SC).

  Attributes:
    num_classes: number of training identities (rows of the classifier).
    spatial: RGA spatial parts (RGA-S; with `channel`, RGA-SC).
    channel: RGA channel parts (RGA-C).
    image_size: (height, width) of the input the modules are built for; the
      widths of their layers depend on it, so other sizes are refused.
    descriptor: ``'pre_bn'`` (feat_, the official default) or ``'post_bn'``
      (feat): which one is the retrieval descriptor ``features``.
    channel_ratio, spatial_ratio, down_ratio: see `RGAModule` (official 8).
    stage_sizes, base_width, last_stride: backbone shape (see `ResNet`).
    dtype: compute dtype of the backbone and the modules' convolutions,
      float32 or bfloat16 (name or dtype); parameters, BatchNorm
      statistics, relation matrices, gates, the head and the logits stay
      float32. (float64 is accepted for numerical verification under x64.)
    bn_axis_name: mapped axis for synchronised BatchNorm, or None.
    module_bn_scale_init: how the RGA modules' BatchNorm scales start
      (`module.BN_SCALE_INITS`: 'ones', or 'uniform', U(0, 1) as in the
      official code's torch 0.4.0); the ResNet's and feat_bn's start at 1.
  """
  num_classes: int
  spatial: bool = True
  channel: bool = True
  image_size: Sequence[int] = OFFICIAL_IMAGE_SIZE
  descriptor: str = 'pre_bn'
  channel_ratio: int = OFFICIAL_RATIO
  spatial_ratio: int = OFFICIAL_RATIO
  down_ratio: int = OFFICIAL_RATIO
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  base_width: int = 64
  last_stride: int = 1
  dtype: Any = 'float32'
  bn_axis_name: Optional[str] = None
  module_bn_scale_init: str = 'ones'

  def _check_config(self, images: jax.Array):
    check_bn_scale_init(self.module_bn_scale_init)
    if jnp.dtype(self.dtype).name not in DTYPES:
      raise ValueError(f'dtype must be one of {DTYPES}, got {self.dtype!r}')
    if self.descriptor not in DESCRIPTORS:
      raise ValueError(f'descriptor must be one of {DESCRIPTORS}, got '
                       f'{self.descriptor!r}')
    if self.num_classes < 1:
      raise ValueError(f'num_classes must be >= 1, got {self.num_classes}')
    if tuple(images.shape[1:3]) != tuple(self.image_size):
      raise ValueError(
          f'images are {images.shape[1]}x{images.shape[2]} but this RGA '
          f'network is built for image_size {self.image_size[0]}x'
          f'{self.image_size[1]} (its module widths depend on the size)')

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False,
               example_ids: Optional[jax.Array] = None) -> dict[str, Any]:
    """Runs the network.

    Args:
      images: (B, H, W, 3) float32, ImageNet-normalised, (H, W) =
        `image_size`.
      train: batch statistics in BatchNorm (and update the running ones).
      example_ids: accepted for the common signature; unused (no dropout).

    Returns:
      dict with
        ``features``: (B, 1, D) float32, the chosen descriptor (feat_ or
          feat) L2-normalised, so that Euclidean distances rank like the
          official cosine distance;
        ``global_features``: (B, D) float32, feat_ (pooled, before the BN);
        ``bn_features``: (B, D) float32, feat (after the BN);
        ``global_logits``: (B, num_classes) float32;
        ``embeddings``: what a metric loss reads: ``'global'`` feat_ (the
          official triplet input), ``'bn'`` feat;
        ``attention``: ``'spatial1'..'spatial4'`` (B, h, w) and
          ``'channel1'..'channel4'`` (B, C) float32 gates of the parts
          present (empty for the baseline).

    Raises:
      ValueError: a bad attribute, or images of another size than
        `image_size`.
    """
    del example_ids  # No dropout: nothing is drawn per example.
    self._check_config(images)
    dtype = jnp.dtype(self.dtype)
    wide = jnp.promote_types(jnp.float32, dtype)
    hook = None
    if self.spatial or self.channel:
      # A plain function, not a method: Flax makes a module built inside a
      # method of this network its child, and the modules belong under the
      # backbone, which calls the hook.
      hook = functools.partial(
          _rga_module, spatial=self.spatial, channel=self.channel,
          channel_ratio=self.channel_ratio, spatial_ratio=self.spatial_ratio,
          down_ratio=self.down_ratio, dtype=dtype,
          bn_axis_name=self.bn_axis_name,
          bn_scale_init=self.module_bn_scale_init)
    stages = ResNet(stage_sizes=self.stage_sizes, base_width=self.base_width,
                    last_stride=self.last_stride, dtype=dtype,
                    bn_axis_name=self.bn_axis_name, stage_hook=hook,
                    name='backbone')(images, train)
    attention = {}
    for index, stage in enumerate(STAGE_NAMES, start=1):
      for part, gate in stages.get('stage_extras', {}).get(stage, {}).items():
        attention[f'{part}{index}'] = gate
    # The head is float32 whatever the compute dtype: it is one small
    # matmul, and the descriptor and logits are read at full precision.
    pooled = jnp.mean(stages['layer4'].astype(wide), axis=(1, 2))
    normalised = BatchNorm(dtype=wide, axis_name=self.bn_axis_name,
                           name='feat_bn')(pooled, train)
    logits = nn.Dense(self.num_classes, use_bias=False, dtype=wide,
                      param_dtype=jnp.float32,
                      kernel_init=classifier_kernel_init,
                      name='cls')(normalised)
    descriptor = pooled if self.descriptor == 'pre_bn' else normalised
    return {
        'features': l2_normalize(descriptor)[:, None, :],
        'global_features': pooled,
        'bn_features': normalised,
        'global_logits': logits,
        'embeddings': {'global': pooled, 'bn': normalised},
        'attention': attention,
    }


# The networks of the paper (RGA-S, RGA-C, RGA-SC) and the BNNeck baseline,
# which is RGANet with both parts off.
RGA_VARIANTS: dict[str, dict[str, Any]] = {
    'rga_s': dict(spatial=True, channel=False),
    'rga_c': dict(spatial=False, channel=True),
    'rga_sc': dict(spatial=True, channel=True),
    'baseline': dict(spatial=False, channel=False),
}


def rga_variant(name: str, **kwargs) -> RGANet:
  """Builds an `RGA_VARIANTS` network by name; kwargs set other attributes."""
  if name not in RGA_VARIANTS:
    raise ValueError(f'unknown RGA variant {name!r}; choose one of '
                     f'{sorted(RGA_VARIANTS)}')
  return RGANet(**{**RGA_VARIANTS[name], **kwargs})
