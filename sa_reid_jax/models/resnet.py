"""ResNet with torchvision's v1.5 topology, NHWC, in flax.linen.

Module names follow torchvision's state-dict names (``conv1``, ``bn1``,
``layer3_2/conv2``, ``layer4_0/downsample_conv`` ...) so that weight
conversion is a renaming plus a transposition.
"""

import contextlib
import contextvars
import functools
import re
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sa_reid_jax.models.normalization import BatchNorm

# torchvision initialises convolutions with He-normal over fan-out.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

STAGE_NAMES = ('layer1', 'layer2', 'layer3', 'layer4')


# True while an ONNX export traces the network (see `onnx_pooling`).
_ONNX_POOLING = contextvars.ContextVar('onnx_pooling', default=False)


def max_pool_3x3(x: jax.Array) -> jax.Array:
  """3x3 max pooling, stride 2, padding 1 (torchvision's stem), NHWC.

  Normally ``nn.max_pool``. Under `onnx_pooling` the same maximum is taken
  over the nine strided slices of the -inf-padded map (equal values): the
  ONNX converter replaces ``nn.max_pool`` by a version without explicit
  padding, and lowers the padded ``reduce_window`` to a MaxPool that ONNX
  Runtime rejects (a 4-D window).
  """
  if not _ONNX_POOLING.get():
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  height, width = x.shape[1], x.shape[2]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)),
                   constant_values=-jnp.inf)
  out_height, out_width = (height - 1) // 2 + 1, (width - 1) // 2 + 1
  pooled = None
  for i in range(3):
    for j in range(3):
      window = padded[:, i:i + 2 * out_height - 1:2,
                      j:j + 2 * out_width - 1:2, :]
      pooled = window if pooled is None else jnp.maximum(pooled, window)
  return pooled


@contextlib.contextmanager
def onnx_pooling():
  """Within it, `max_pool_3x3` uses the slice form ONNX export can run."""
  token = _ONNX_POOLING.set(True)
  try:
    yield
  finally:
    _ONNX_POOLING.reset(token)


class Bottleneck(nn.Module):
  """torchvision's Bottleneck (v1.5: the stride sits on the 3x3 conv)."""
  width: int
  stride: int
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None
  expansion: int = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             param_dtype=jnp.float32,
                             kernel_init=conv_kernel_init)
    norm = functools.partial(BatchNorm, dtype=self.dtype,
                             axis_name=self.bn_axis_name)
    out_channels = self.width * self.expansion

    y = conv(self.width, (1, 1), name='conv1')(x)
    y = nn.relu(norm(name='bn1')(y, train))
    y = conv(self.width, (3, 3), strides=(self.stride, self.stride),
             padding=((1, 1), (1, 1)), name='conv2')(y)
    y = nn.relu(norm(name='bn2')(y, train))
    y = conv(out_channels, (1, 1), name='conv3')(y)
    y = norm(name='bn3')(y, train)

    if self.stride != 1 or x.shape[-1] != out_channels:
      x = conv(out_channels, (1, 1), strides=(self.stride, self.stride),
               name='downsample_conv')(x)
      x = norm(name='downsample_bn')(x, train)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet backbone returning the feature map of every stage.

  Attributes:
    stage_sizes: number of bottleneck blocks per stage ((3, 4, 6, 3) = 50).
    base_width: channels of the stem and of the first stage's 3x3 convs (64
      for the standard network; smaller values give cheap test models).
    last_stride: stride of the first block of the last stage (2 in the
      ImageNet network; 1 in re-id networks, doubling the final resolution).
    num_classes: if set, adds torchvision's GAP + ``fc`` classifier.
    dtype: compute dtype; parameters stay float32.
    bn_axis_name: mapped axis for synchronised BatchNorm, or None.
    stage_hook: optional factory of a module that transforms each stage's
      output inside the flow (the next stage reads what it returns), e.g.
      RGA's attention modules. Called as ``stage_hook(index)`` (index 0..3)
      from within this module, so the module it builds is a child of the
      backbone (as in the official RGA code, ``backbone.rga_att1``); it may
      return None to leave a stage alone. The module's ``__call__(x, train)``
      returns ``(x, extras)``; the extras are returned under
      ``stage_extras``. None (the default) adds nothing.
  """
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  base_width: int = 64
  last_stride: int = 2
  num_classes: Optional[int] = None
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None
  stage_hook: Optional[Callable[[int], Optional[nn.Module]]] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, Any]:
    """Runs the network.

    Args:
      x: images (B, H, W, 3), ImageNet-normalised.
      train: use batch statistics in BatchNorm (and update the running ones).

    Returns:
      dict with ``layer1`` .. ``layer4`` feature maps (B, h, w, c) in the
      compute dtype (after the stage hook, if any), ``logits`` (B,
      num_classes) in float32 when the classifier is present, and, with a
      `stage_hook`, ``stage_extras``: stage name -> the extras of the stages
      it transformed.
    """
    if len(self.stage_sizes) != len(STAGE_NAMES):
      raise ValueError(f'stage_sizes needs {len(STAGE_NAMES)} entries, got '
                       f'{self.stage_sizes}')
    x = x.astype(self.dtype)
    x = nn.Conv(self.base_width, (7, 7), strides=(2, 2),
                padding=((3, 3), (3, 3)), use_bias=False, dtype=self.dtype,
                param_dtype=jnp.float32, kernel_init=conv_kernel_init,
                name='conv1')(x)
    x = BatchNorm(dtype=self.dtype, axis_name=self.bn_axis_name,
                  name='bn1')(x, train)
    x = nn.relu(x)
    x = max_pool_3x3(x)

    outputs: dict[str, Any] = {}
    extras = {}
    for stage, (stage_name, num_blocks) in enumerate(
        zip(STAGE_NAMES, self.stage_sizes)):
      for block in range(num_blocks):
        if block > 0 or stage == 0:
          stride = 1
        elif stage == len(STAGE_NAMES) - 1:
          stride = self.last_stride
        else:
          stride = 2
        x = Bottleneck(self.base_width * 2**stage, stride, dtype=self.dtype,
                       bn_axis_name=self.bn_axis_name,
                       name=f'{stage_name}_{block}')(x, train)
      hook = self.stage_hook(stage) if self.stage_hook is not None else None
      if hook is not None:
        x, extras[stage_name] = hook(x, train)
      outputs[stage_name] = x
    if self.stage_hook is not None:
      outputs['stage_extras'] = extras

    if self.num_classes is not None:
      pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
      outputs['logits'] = nn.Dense(self.num_classes, dtype=jnp.float32,
                                   name='fc')(pooled)
    return outputs


def backbone_stages(model: nn.Module, variables: Any, images: jax.Array
                    ) -> tuple[dict[str, Any], dict[str, jax.Array]]:
  """A network's outputs and its ResNet's stage maps, in eval mode.

  Args:
    model: a network whose ResNet is the submodule named ``backbone``.
    variables: its variables.
    images: (B, H, W, 3) float32, preprocessed as for evaluation.

  Returns:
    (the network's outputs, {stage name: (B, h, w, C) map}).
  """
  outputs, state = model.apply(
      variables, images, train=False,
      capture_intermediates=lambda module, _: module.name == 'backbone')
  return outputs, state['intermediates']['backbone']['__call__'][0]


def is_resnet_group(name: str) -> bool:
  """Whether `name`, a top-level group of a `ResNet`'s parameters, is the
  ResNet's own (the stem ``conv1``/``bn1``, a block ``layerS_B``, the
  classifier ``fc``) rather than a module its `stage_hook` added (e.g. RGA's
  ``rga_att1``)."""
  return name in ('conv1', 'bn1', 'fc') or re.fullmatch(
      r'(%s)_\d+' % '|'.join(STAGE_NAMES), name) is not None

ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3))
