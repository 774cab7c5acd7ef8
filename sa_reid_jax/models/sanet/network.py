"""The SA network: ResNet-50 + deep supervision + part (PCB) heads.

Layout (see the project's reference notes for the official code):

* backbone: ResNet-50 v1.5 with last stride 1 (24x8 final map at 384x128).
* deep supervision (DS) on layer1..layer3: [SA] -> GAP -> reduce to 256
  (1x1 conv = Dense without bias) -> linear classifier. No BN, no dropout.
* part head on layer4: [SA] -> average-pool into `num_parts` horizontal
  stripes -> retrieval descriptor (each part L2-normalised) and, for
  training, dropout -> shared reduction to 256 -> BN -> ReLU -> one classifier
  per part (`PartHead`, also CASN's PCB head); the mean of the reduced parts
  feeds the global classifier.

With ``num_parts=1`` the part head is the paper's "Backbone" baseline: GAP,
a 1x1 conv to 256 and one classifier (``global_logits`` only).
"""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sa_reid_jax.models.normalization import BatchNorm
from sa_reid_jax.models.resnet import STAGE_NAMES, ResNet, conv_kernel_init
from sa_reid_jax.models.sanet.attention import NORMALIZATIONS
from sa_reid_jax.models.sanet.attention import apply_spatial_attention

# The official code initialises every classifier with N(0, 0.001), bias 0.
classifier_kernel_init = nn.initializers.normal(stddev=0.001)
# The official code leaves the DS reductions (local_conv_layer{1,2,3}) at
# PyTorch's default conv initialisation, kaiming_uniform with a = sqrt(5):
# gain^2 = 2 / (1 + 5) = 1/3, so U(-b, b) with b = sqrt(3 * (1/3) / fan_in)
# = 1 / sqrt(fan_in). The part reduction (local_conv) is Kaiming normal,
# fan-out, like the backbone's convolutions (conv_kernel_init).
torch_default_conv_init = nn.initializers.variance_scaling(
    1 / 3, 'fan_in', 'uniform')

DS_STAGES = STAGE_NAMES[:3]
# float64 exists to verify numerics against float64 references (needs
# jax_enable_x64); float32 and bfloat16 are the working dtypes.
DTYPES = ('float32', 'bfloat16', 'float64')


def stripe_pool(x: jax.Array, num_parts: int) -> jax.Array:
  """Averages a feature map over `num_parts` horizontal stripes.

  Bins follow `torch.nn.AdaptiveAvgPool2d((num_parts, 1))`: stripe i covers
  rows floor(i*H/P) .. ceil((i+1)*H/P) - 1, so for H divisible by P this is
  the official fixed (H/P x W) average pooling.

  Args:
    x: (B, H, W, C).
    num_parts: number of stripes P.

  Returns:
    (B, P, C), same dtype as x.
  """
  height = x.shape[1]
  if height % num_parts == 0:
    b, h, w, c = x.shape
    return jnp.mean(x.reshape(b, num_parts, h // num_parts, w, c), axis=(2, 3))
  stripes = []
  for i in range(num_parts):
    start = (i * height) // num_parts
    stop = -((-(i + 1) * height) // num_parts)
    stripes.append(jnp.mean(x[:, start:stop], axis=(1, 2)))
  return jnp.stack(stripes, axis=1)


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """x / ||x|| along `axis` (x / eps for an all-zero vector, i.e. zeros)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(norm, eps)


def per_example_dropout(x: jax.Array, rate: float, rng: jax.Array,
                        example_ids: Optional[jax.Array] = None) -> jax.Array:
  """Inverted dropout whose mask for each example is keyed by its id.

  Each row's mask is drawn from `rng` folded with the row's example id, so
  an example keeps its mask whatever its neighbours in the batch and
  however the batch is split across devices (the step passes every device
  the same `rng`).

  Args:
    x: (B, ...) float; B rows, one per example.
    rate: probability of zeroing an element, in [0, 1).
    rng: the ``'dropout'`` PRNG key (e.g. ``module.make_rng('dropout')``).
    example_ids: (B,) integers naming the rows' examples; None draws one
      mask for the whole batch from `rng` (then a row's mask depends on
      its place in the batch).

  Returns:
    like `x`: kept elements scaled by 1 / (1 - rate), the others zero.
  """
  keep = 1.0 - rate
  if example_ids is None:
    masks = jax.random.bernoulli(rng, keep, x.shape)
  else:
    masks = jax.vmap(lambda i: jax.random.bernoulli(
        jax.random.fold_in(rng, i), keep, x.shape[1:]))(example_ids)
  return jnp.where(masks, x / keep, jnp.zeros_like(x))


class PartHead(nn.Module):
  """PCB's part classifiers, shared by `SANet` and CASN's PCB head.

  PCB (Sun et al., ECCV 2018; the PCB author's code, syfafterzy/PCB_RPP,
  from which SA's official code derives): the pooled parts (B, P, C), after
  the caller's dropout, go through ONE 1x1 conv shared by all parts (on a
  pooled part, a Dense without bias; Kaiming normal over fan-out like the
  backbone's convolutions) to `num_features`, a BatchNorm and a ReLU; then
  each part has its own linear classifier with bias (one batched matmul).

  The network calls ``nn.share_scope(self, head)``, so the parameters sit
  directly under it with the names of converted SA weights and of SA
  checkpoints: ``part_reduce/kernel`` (C, D), ``part_bn/{scale,bias}``
  (batch_stats ``part_bn/{mean,var}``), ``part_classifier_kernel``
  (P, D, num_classes) and ``part_classifier_bias`` (P, num_classes).

  Attributes:
    num_features: D, the width of the shared reduction (256 in PCB and SA).
    num_classes: number of training identities.
    part_classifiers: False leaves out the per-part classifiers (SA's
      one-part "Backbone" network classifies the reduced part itself).
    dtype: compute dtype of the reduction and the BatchNorm; the logits are
      float32 or wider.
    bn_axis_name: mapped axis for synchronised BatchNorm, or None.
  """
  num_features: int
  num_classes: int
  part_classifiers: bool = True
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, parts: jax.Array, train: bool
               ) -> tuple[jax.Array, Optional[jax.Array]]:
    """Reduces and classifies the parts.

    Args:
      parts: (B, P, C) the pooled parts (dropout, if any, already applied).
      train: batch statistics in BatchNorm (and update the running ones).

    Returns:
      (reduced, part_logits): reduced (B, P, D) in `dtype`, after the ReLU;
      part_logits (B, P, num_classes) in float32 or wider, None without
      part classifiers.
    """
    dtype = jnp.dtype(self.dtype)
    wide = jnp.promote_types(jnp.float32, dtype)
    reduced = nn.Dense(self.num_features, use_bias=False, dtype=dtype,
                       param_dtype=jnp.float32, kernel_init=conv_kernel_init,
                       name='part_reduce')(parts.astype(dtype))
    reduced = nn.relu(BatchNorm(dtype=dtype, axis_name=self.bn_axis_name,
                                name='part_bn')(reduced, train))
    if not self.part_classifiers:
      return reduced, None
    num_parts = parts.shape[1]
    kernel = self.param('part_classifier_kernel', classifier_kernel_init,
                        (num_parts, self.num_features, self.num_classes),
                        jnp.float32)
    bias = self.param('part_classifier_bias', nn.initializers.zeros,
                      (num_parts, self.num_classes), jnp.float32)
    # One independent classifier per part, as a single batched matmul.
    part_logits = jnp.einsum('bpf,pfc->bpc', reduced, kernel.astype(dtype))
    return reduced, part_logits.astype(wide) + bias


class SANet(nn.Module):
  """Parameter-free spatial attention network for person re-id.

  Attributes:
    num_classes: number of training identities.
    num_parts: horizontal stripes of the part head (6 = PCB; 1 = the plain
      "Backbone" baseline of the paper's Table 2).
    deep_supervision: add the DS heads on layer1..layer3.
    ds_attention: SA before the GAP of the DS heads ("SA2").
    backbone_attention: SA on layer4 before the part pooling ("SA1").
    attention_normalization: ``'softmax'`` (paper) or ``'sum'`` (official).
    num_features: width of the reduced head features.
    dropout_rate: dropout on the pooled part vectors in training.
    stage_sizes, base_width, last_stride: backbone shape (see `ResNet`).
    dtype: compute dtype, float32 or bfloat16 (name or dtype); parameters,
      BatchNorm statistics, attention, features and logits stay float32.
      (float64 is accepted for numerical verification under x64.)
    bn_axis_name: mapped axis for synchronised BatchNorm, or None.
  """
  num_classes: int
  num_parts: int = 6
  deep_supervision: bool = True
  ds_attention: bool = True
  backbone_attention: bool = False
  attention_normalization: str = 'softmax'
  num_features: int = 256
  dropout_rate: float = 0.5
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  base_width: int = 64
  last_stride: int = 1
  dtype: Any = 'float32'
  bn_axis_name: Optional[str] = None

  def _check_config(self):
    if jnp.dtype(self.dtype).name not in DTYPES:
      raise ValueError(f'dtype must be one of {DTYPES}, got {self.dtype!r}')
    if self.attention_normalization not in NORMALIZATIONS:
      raise ValueError('attention_normalization must be one of '
                       f'{NORMALIZATIONS}, got {self.attention_normalization!r}')
    if self.num_parts < 1 or self.num_classes < 1:
      raise ValueError('num_parts and num_classes must be >= 1, got '
                       f'{self.num_parts} and {self.num_classes}')

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False,
               example_ids: Optional[jax.Array] = None) -> dict[str, Any]:
    """Runs the network.

    Args:
      images: (B, H, W, 3) float32, ImageNet-normalised.
      train: batch statistics in BatchNorm and dropout (rng ``'dropout'``).
      example_ids: optional (B,) integers naming the examples; each example's
        dropout mask is then drawn from the ``'dropout'`` rng folded with its
        id, so it does not depend on how a batch is split across devices.

    Returns:
      dict with
        ``features``: (B, P, 2048) float32, each part L2-normalised (the
          retrieval descriptor);
        ``part_logits``: (B, P, num_classes), only when P > 1;
        ``global_logits``: (B, num_classes);
        ``ds_logits``: (B, 3, num_classes), only with deep supervision;
        ``attention``: dict stage name -> (B, h, w) SA weights of the stages
          that use SA (empty when none does).
    """
    self._check_config()
    dtype = jnp.dtype(self.dtype)
    # Pooling, descriptors and logits are accumulated in float32 or wider.
    wide = jnp.promote_types(jnp.float32, dtype)
    dense = functools.partial(nn.Dense, dtype=dtype, param_dtype=jnp.float32)
    classifier = functools.partial(dense, kernel_init=classifier_kernel_init,
                                   bias_init=nn.initializers.zeros)
    reducer = functools.partial(dense, self.num_features, use_bias=False)

    stages = ResNet(stage_sizes=self.stage_sizes, base_width=self.base_width,
                    last_stride=self.last_stride, dtype=dtype,
                    bn_axis_name=self.bn_axis_name,
                    name='backbone')(images, train)
    outputs: dict[str, Any] = {}
    attention: dict[str, jax.Array] = {}

    if self.deep_supervision:
      ds_logits = []
      for i, stage in enumerate(DS_STAGES, start=1):
        x = stages[stage]
        if self.ds_attention:
          x, attention[stage] = apply_spatial_attention(
              x, self.attention_normalization)
        pooled = jnp.mean(x.astype(wide), axis=(1, 2)).astype(dtype)
        reduced = reducer(kernel_init=torch_default_conv_init,
                          name=f'ds_reduce{i}')(pooled)
        ds_logits.append(
            classifier(self.num_classes, name=f'ds_classifier{i}')(reduced))
      outputs['ds_logits'] = jnp.stack(ds_logits, axis=1).astype(wide)

    x = stages['layer4']
    if self.backbone_attention:
      x, attention['layer4'] = apply_spatial_attention(
          x, self.attention_normalization)
    parts = stripe_pool(x.astype(wide), self.num_parts)  # (B, P, C)
    outputs['features'] = l2_normalize(parts)

    parts = self._dropout(parts, train, example_ids)
    part_head = PartHead(self.num_features, self.num_classes,
                         part_classifiers=self.num_parts > 1, dtype=dtype,
                         bn_axis_name=self.bn_axis_name)
    nn.share_scope(self, part_head)  # its parameters directly under SANet
    reduced, part_logits = part_head(parts, train)
    if part_logits is not None:
      outputs['part_logits'] = part_logits
    global_feature = jnp.mean(reduced.astype(wide), axis=1)
    outputs['global_logits'] = classifier(
        self.num_classes, name='global_classifier')(
            global_feature.astype(dtype)).astype(wide)
    outputs['attention'] = attention
    return outputs

  def _dropout(self, x: jax.Array, train: bool,
               example_ids: Optional[jax.Array]) -> jax.Array:
    if not train or self.dropout_rate == 0 or example_ids is None:
      # Flax's Dropout without ids: the draws of earlier runs, unchanged.
      return nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return per_example_dropout(x, self.dropout_rate, self.make_rng('dropout'),
                               example_ids)


# The paper's networks (Table 2 rows and the full model of Tables 1 and 3).
# "P" = part head with 6 stripes, "DS" = deep supervision, "SA1" = SA on the
# backbone, "SA2" = SA on the DS branches.
VARIANTS: dict[str, dict[str, Any]] = {
    'backbone': dict(num_parts=1, deep_supervision=False, ds_attention=False,
                     backbone_attention=False),
    'backbone_sa1': dict(num_parts=1, deep_supervision=False,
                         ds_attention=False, backbone_attention=True),
    'backbone_ds': dict(num_parts=1, deep_supervision=True, ds_attention=False,
                        backbone_attention=False),
    'backbone_ds_sa2': dict(num_parts=1, deep_supervision=True,
                            ds_attention=True, backbone_attention=False),
    'backbone_ds_sa1_sa2': dict(num_parts=1, deep_supervision=True,
                                ds_attention=True, backbone_attention=True),
    'backbone_p_ds': dict(num_parts=6, deep_supervision=True,
                          ds_attention=False, backbone_attention=False),
    'backbone_p_ds_sa2': dict(num_parts=6, deep_supervision=True,
                              ds_attention=True, backbone_attention=False),
    'backbone_p_ds_sa1_sa2': dict(num_parts=6, deep_supervision=True,
                                  ds_attention=True, backbone_attention=True),
}
# The full model of the paper (Tables 1 and 3) is Backbone+P+DS with SA2.
VARIANTS['full'] = VARIANTS['backbone_p_ds_sa2']
VARIANTS['full_no_sa'] = VARIANTS['backbone_p_ds']


def sanet_variant(name: str, **kwargs) -> SANet:
  """Builds one of the paper's networks by `VARIANTS` name.

  Args:
    name: a key of `VARIANTS`.
    **kwargs: other `SANet` attributes (num_classes, dtype, ...).

  Returns:
    the model.
  """
  if name not in VARIANTS:
    raise ValueError(f'unknown SANet variant {name!r}; choose one of '
                     f'{sorted(VARIANTS)}')
  return SANet(**{**VARIANTS[name], **kwargs})
