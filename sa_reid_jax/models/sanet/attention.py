"""The parameter-free spatial attention (SA) layer.

Given a feature map x of shape (B, H, W, C), SA computes one weight per spatial
position from the activations of all channels at that position and rescales
every channel there by it. Two normalisations exist:

* ``softmax`` (the paper): a = softmax over the H*W positions of sum_c x.
* ``sum`` (the official code): m = mean_c x, a = m / sum_{H,W} m.

The weights always sum to one over H*W. They are computed in float32 whatever
the dtype of x, because bfloat16's 8-bit mantissa cannot resolve weights of
order 1 / (H * W) (1 / 3072 at layer1 for a 384x128 input).
"""

from typing import Literal

import jax
import jax.numpy as jnp

Normalization = Literal['softmax', 'sum']
NORMALIZATIONS = ('softmax', 'sum')


def spatial_attention_map(x: jax.Array,
                          normalization: Normalization = 'softmax') -> jax.Array:
  """Computes the spatial attention weights of a feature map.

  Args:
    x: feature map (B, H, W, C), any float dtype.
    normalization: ``'softmax'`` (paper) or ``'sum'`` (official code).

  Returns:
    float32 array (float64 for float64 input) (B, H, W) whose entries sum to one over (H, W). A map whose
    channel means sum to zero (e.g. all zeros) gets uniform weights under
    ``'sum'`` instead of NaN; its gradient stays finite.
  """
  if normalization not in NORMALIZATIONS:
    raise ValueError(f'attention normalization must be one of {NORMALIZATIONS},'
                     f' got {normalization!r}')
  batch, height, width, _ = x.shape
  x32 = x.astype(jnp.promote_types(jnp.float32, x.dtype))
  if normalization == 'softmax':
    scores = jnp.sum(x32, axis=-1).reshape(batch, height * width)
    weights = jax.nn.softmax(scores, axis=-1)
  else:
    channel_mean = jnp.mean(x32, axis=-1).reshape(batch, height * width)
    total = jnp.sum(channel_mean, axis=-1, keepdims=True)
    degenerate = total == 0
    # The inner `where` keeps the untaken branch free of 0/0, whose NaN would
    # otherwise leak into the gradient.
    safe_total = jnp.where(degenerate, 1.0, total)
    weights = jnp.where(degenerate, 1.0 / (height * width),
                        channel_mean / safe_total)
  return weights.reshape(batch, height, width)


def apply_spatial_attention(
    x: jax.Array,
    normalization: Normalization = 'softmax') -> tuple[jax.Array, jax.Array]:
  """Rescales a feature map by its spatial attention weights.

  Args:
    x: feature map (B, H, W, C).
    normalization: see `spatial_attention_map`.

  Returns:
    (attended, weights): the float32 map x * a (B, H, W, C) and the float32
    weights a (B, H, W). The product stays in float32 so that the pooling
    that follows sums the small weighted values without bfloat16 rounding.
  """
  weights = spatial_attention_map(x, normalization)
  return x.astype(weights.dtype) * weights[..., None], weights
