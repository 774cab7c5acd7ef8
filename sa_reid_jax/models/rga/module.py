"""The Relation-Aware Global Attention (RGA) module, spatial and channel parts.

Zhang et al., "Relation-Aware Global Attention for Person
Re-identification", CVPR 2020; official code ``reid/models/models_utils/
rga_modules.py`` (the project's reference notes, section "Relation-Aware
Global Attention", describe it). Both parts are one construction over a set
of M nodes, each with an F-dimensional feature:

* spatial part (RGA-S): the nodes are the N = H*W positions, their features
  the C channels; the output rescales every position.
* channel part (RGA-C): the nodes are the C channels, their features the N
  values of the channel; the output rescales every channel.

For nodes X (B, M, F): theta, phi = embed(X) to F / r_f; relation matrix
R = theta phi^T (M x M); node i's relation feature [R[i, :], R[:, i]] (2M
values) is embedded to M / r_m ("gg"); its own feature is embedded to F / r_f
and averaged to 1 value ("gx"); the head maps the 1 + M / r_m values to one
logit per node (1x1 conv to (1 + M / r_m) // d, BN, ReLU, 1x1 conv to 1, BN);
its sigmoid is the node's gate. RGA-SC runs the spatial part, then the
channel part on its output.

Every "embed" is a 1x1 conv without bias -> BatchNorm -> ReLU; a 1x1 conv is
a Dense layer over the feature axis. Submodule names are the official
state-dict names (``theta_spatial``, ``gg_channel``, ``W_spatial`` ...), so
weight conversion is a renaming.
"""

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sa_reid_jax.models.normalization import BatchNorm
from sa_reid_jax.models.sanet.network import torch_default_conv_init

# The official ratios (RGA_Branch's s_ratio, c_ratio, d_ratio defaults).
OFFICIAL_RATIO = 8

# How the modules' BatchNorm scales start, by name. 'uniform' is U(0, 1),
# the BatchNorm2d weight default of torch 0.4.0, which the official RGA code
# ran on (its init code resets only the head's feat_bn to 1, so every
# module BN started so); 'ones' is the default of later PyTorch versions.
BN_SCALE_INITS = {
    'uniform': nn.initializers.uniform(scale=1.0),
    'ones': nn.initializers.ones,
}


def check_bn_scale_init(name: str) -> None:
  """Raises ValueError naming config.model.module_bn_scale_init unless
  `name` is one of `BN_SCALE_INITS`."""
  if name not in BN_SCALE_INITS:
    raise ValueError(f'config.model.module_bn_scale_init must be one of '
                     f'{sorted(BN_SCALE_INITS)}, got {name!r}')


class Embed(nn.Module):
  """1x1 conv without bias -> BatchNorm -> ReLU over the last axis.

  The official ``nn.Sequential(Conv2d, BatchNorm2d, ReLU)``: ``conv`` is its
  index 0, ``bn`` its index 1. Input (..., F_in), output (..., features) in
  `dtype`; the BatchNorm statistics run over every axis but the last.
  """
  features: int
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None
  bn_scale_init: str = 'ones'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = nn.Dense(self.features, use_bias=False, dtype=self.dtype,
                 param_dtype=jnp.float32, kernel_init=torch_default_conv_init,
                 name='conv')(x)
    return nn.relu(BatchNorm(dtype=self.dtype, axis_name=self.bn_axis_name,
                             scale_init=BN_SCALE_INITS[self.bn_scale_init],
                             name='bn')(y, train))


class AttentionHead(nn.Module):
  """The official ``W_spatial`` / ``W_channel``: one logit per node.

  ``reduce`` = (conv 0, BN 1, ReLU 2) to `hidden` channels, then ``conv``
  (index 3) to one channel and ``bn`` (index 4), no ReLU. Input (B, M, F),
  output (B, M, 1) in `dtype`.
  """
  hidden: int
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None
  bn_scale_init: str = 'ones'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = Embed(self.hidden, self.dtype, self.bn_axis_name, self.bn_scale_init,
              name='reduce')(x, train)
    y = nn.Dense(1, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=torch_default_conv_init, name='conv')(y)
    return BatchNorm(dtype=self.dtype, axis_name=self.bn_axis_name,
                     scale_init=BN_SCALE_INITS[self.bn_scale_init],
                     name='bn')(y, train)


def relation_matrix(theta: jax.Array, phi: jax.Array) -> jax.Array:
  """R[b, i, j] = <theta[b, i], phi[b, j]>, in float32 (or wider).

  Args:
    theta, phi: (B, M, K) node embeddings, any float dtype.

  Returns:
    (B, M, M) in float32 (float64 for float64 input). HIGHEST precision keeps
    the product in real float32 on accelerators whose default float32 matmul
    rounds its inputs (TF32, bfloat16 passes).
  """
  wide = jnp.promote_types(jnp.float32, theta.dtype)
  return jnp.einsum('bik,bjk->bij', theta.astype(wide), phi.astype(wide),
                    precision=jax.lax.Precision.HIGHEST)


class RGAModule(nn.Module):
  """RGA-S, RGA-C or RGA-SC on one feature map.

  The widths of the module's layers depend on the feature map's size (the
  spatial part's relation feature has 2N values), so a module's parameters
  fit one input size; N = H*W is read from the map's shape at trace time.

  Attributes:
    spatial: use the spatial part (official ``use_spatial``).
    channel: use the channel part (official ``use_channel``); after the
      spatial part when both are on.
    channel_ratio: C -> C / channel_ratio for the channel embeddings
      (official ``cha_ratio``, 8).
    spatial_ratio: N -> N / spatial_ratio for the position embeddings
      (official ``spa_ratio``, 8).
    down_ratio: the head's reduction (official ``down_ratio``, 8).
    dtype: compute dtype of the convolutions; relation matrices, their
      einsums and the sigmoid gates are float32 (see `__call__`).
    bn_axis_name: mapped axis for synchronised BatchNorm, or None.
    bn_scale_init: how the BatchNorm scales start (`BN_SCALE_INITS`).
  """
  spatial: bool = True
  channel: bool = True
  channel_ratio: int = OFFICIAL_RATIO
  spatial_ratio: int = OFFICIAL_RATIO
  down_ratio: int = OFFICIAL_RATIO
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None
  bn_scale_init: str = 'ones'

  @nn.compact
  def __call__(self, x: jax.Array,
               train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Applies the module.

    Args:
      x: feature map (B, H, W, C).
      train: batch statistics in BatchNorm (and update the running ones).

    Returns:
      (y, gates): y (B, H, W, C) in the compute dtype, x rescaled by the
      gates; gates ``'spatial'`` (B, H, W) and/or ``'channel'`` (B, C), in
      float32 (float64 under a float64 dtype), values in (0, 1).

    Raises:
      ValueError: a layer would have no channels (the map is too small for
        the ratios; the official input, 256x128, is not).
    """
    batch, height, width, channels = x.shape
    positions = height * width
    dtype = jnp.dtype(self.dtype)
    wide = jnp.promote_types(jnp.float32, dtype)
    x = x.astype(dtype)
    gates = {}
    if self.spatial:
      # Nodes = positions (B, N, C).
      gate = self._relation_gate(
          x.reshape(batch, positions, channels), 'spatial',
          feature_ratio=self.channel_ratio, node_ratio=self.spatial_ratio,
          train=train, where=(height, width, channels))
      gates['spatial'] = gate.reshape(batch, height, width)
      # The gate stays float32: a sigmoid saturates, and bfloat16's 8-bit
      # mantissa cannot tell gates in (0.996, 1) apart (nor give the
      # gradient s (1 - s) there); only the gated map returns to `dtype`.
      x = (x.astype(wide) * gates['spatial'][..., None]).astype(dtype)
    if self.channel:
      # Nodes = channels (B, C, N): the official code views the map as
      # (B, N, C, 1), so its 1x1 convs mix positions.
      nodes = x.reshape(batch, positions, channels).transpose(0, 2, 1)
      gates['channel'] = self._relation_gate(
          nodes, 'channel', feature_ratio=self.spatial_ratio,
          node_ratio=self.channel_ratio, train=train,
          where=(height, width, channels))
      x = (x.astype(wide) * gates['channel'][:, None, None, :]).astype(dtype)
    return x, gates

  def _relation_gate(self, nodes: jax.Array, part: str, feature_ratio: int,
                     node_ratio: int, train: bool,
                     where: tuple[int, int, int]) -> jax.Array:
    """The gate (B, M) of M nodes with F features each, `nodes` (B, M, F)."""
    _, num_nodes, num_features = nodes.shape
    dtype = jnp.dtype(self.dtype)
    wide = jnp.promote_types(jnp.float32, dtype)
    inter_features = num_features // feature_ratio
    inter_nodes = num_nodes // node_ratio
    hidden = (1 + inter_nodes) // self.down_ratio
    # The config.model key behind each ratio, for the error below.
    feature_key, node_key = (('channel_ratio', 'spatial_ratio')
                             if part == 'spatial' else
                             ('spatial_ratio', 'channel_ratio'))
    for what, key, width in (
        (f'{part} feature embedding ({num_features} // {feature_ratio})',
         feature_key, inter_features),
        (f'{part} relation embedding ({num_nodes} // {node_ratio})',
         node_key, inter_nodes),
        (f'{part} attention head ((1 + {inter_nodes}) // '
         f'{self.down_ratio})', 'down_ratio', hidden)):
      if width < 1:
        height, width_px, channels = where
        raise ValueError(
            f'config.model.{key}: RGA module on a {height}x{width_px}x'
            f'{channels} feature map: the {what} has no channels; the input '
            f'image is too small for {key}={getattr(self, key)} (lower it or '
            'enlarge config.image_size; the official 256x128 input fits '
            'ratio 8)')
    embed = functools.partial(Embed, dtype=dtype,
                              bn_axis_name=self.bn_axis_name,
                              bn_scale_init=self.bn_scale_init)

    theta = embed(inter_features, name=f'theta_{part}')(nodes, train)
    phi = embed(inter_features, name=f'phi_{part}')(nodes, train)
    # The relation matrix in float32: each entry is a dot product over
    # F / 8 terms (up to 256) and the relation embedding then sums 2M of
    # them (up to 4096); bfloat16 inputs would round every entry to 3
    # significant digits before that sum.
    relations = relation_matrix(theta, phi)  # (B, M, M)
    # Node i's relation feature: its outgoing then its incoming relations.
    joint = jnp.concatenate([relations, relations.transpose(0, 2, 1)], -1)
    related = embed(inter_nodes, name=f'gg_{part}')(joint.astype(dtype), train)
    own = embed(inter_features, name=f'gx_{part}')(nodes, train)
    own = jnp.mean(own.astype(wide), axis=-1, keepdims=True)
    head_input = jnp.concatenate([own.astype(dtype), related], axis=-1)
    logits = AttentionHead(hidden, dtype, self.bn_axis_name,
                           self.bn_scale_init,
                           name=f'W_{part}')(head_input, train)
    return jax.nn.sigmoid(logits[..., 0].astype(wide))
