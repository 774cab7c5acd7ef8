"""The CASN network: an identity network (IDE or PCB) + a siamese head.

CASN (Zheng, Karanam, Wu and Radke, "Re-Identification with Consistent
Attentive Siamese Networks", CVPR 2019, arXiv 1811.07487) trains an
identity network in a siamese set-up: Grad-CAM maps of the true-class
score (computed by the training task, not here) are mined and made
consistent across the images of a person, and a verification head scores
pairs. No code was published; this module is the network only:

* backbone: ResNet-50 v1.5 (``backbone``, torchvision's layout, so an
  ImageNet ResNet-50 converted with ``convert_weights.py
  --format=torchvision`` initialises it through ``config.init_from``).
* identity head, one of the paper's two baselines:

  - ``'ide'``, IDE (Zheng et al., arXiv 1610.02984): last stride 2, global
    average pooling -> dropout -> linear classifier with bias.
  - ``'pcb'``, PCB (Sun et al., ECCV 2018, and the PCB author's code,
    syfafterzy/PCB_RPP, from which SA's official code derives): last stride
    1, the map cut into `num_stripes` horizontal stripes, each averaged to a
    C-d part (C = 2048 for ResNet-50); the descriptor is the parts, each
    L2-normalised; for the classifiers, dropout on the parts -> ONE 1x1
    reduction shared by all parts (C -> `reduced_dim`) + BatchNorm + ReLU
    -> a linear classifier with bias per part (`PartHead`, SANet's part
    head: the same code and parameter names).

* siamese module: the identification and siamese modules share the
  backbone and differ only in their fc layers (seed 004, section 2). Its fc
  ``siamese_fc`` (Dense with bias, C -> `siamese_dim`) maps the globally
  pooled map (B, C) to the siamese feature f_i (B, siamese_dim), the
  ``verification`` output; the verification layer ``siamese`` is the
  classic siamese one (one linear output with bias on the element-wise
  squared difference (f_1 - f_2)^2; the "square layer" of Zheng, Zheng and
  Yang, ACM TOMM 2017, arXiv 1611.05666, with one logit instead of a
  two-way softmax), a logit that the pair shows one identity.
* the siamese importance score (seed 004, section 2.2, eq. 5, and the
  author's reply quoted there: "by finding neurons in f_i which are larger
  than zero, we find features in f_i which have positive influence on BCE
  prediction"; "s1 is not I1's class ... we here call s1 the importance
  score"): s_i = sum_k max(f_ik, 0), one score per image
  (`siamese_importance`, (B,)), the score whose Grad-CAM gives the maps
  M_1, M_2 that the attention consistency compares. f_i is an affine map
  of the post-ReLU pooled feature, so its components have both signs (every
  component of the pooled map itself is >= 0, and "larger than zero" would
  select them all).

The network exposes its stages as methods (``feature_map``,
``head_outputs``, ``siamese_logits``, ``siamese_importance``) for
``model.apply(..., method=...)``: Grad-CAM differentiates the head's identity
score, or the siamese importance score, with respect to the feature map.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sa_reid_jax.models.resnet import ResNet, conv_kernel_init
from sa_reid_jax.models.sanet.network import DTYPES, classifier_kernel_init
from sa_reid_jax.models.sanet.network import PartHead
from sa_reid_jax.models.sanet.network import l2_normalize
from sa_reid_jax.models.sanet.network import per_example_dropout
from sa_reid_jax.models.sanet.network import stripe_pool

HEADS = ('ide', 'pcb')


class CASNNet(nn.Module):
  """CASN's identity network (IDE or PCB head) with its siamese head.

  Attributes:
    num_classes: number of training identities (classifier outputs).
    head: ``'ide'`` (global pooling, one classifier) or ``'pcb'`` (stripes,
      one shared reduction, a classifier each).
    last_stride: stride of layer4's first block: 2 for IDE (the ImageNet
      network), 1 for PCB (twice the rows to cut into stripes). No default:
      each head has its own (`CASN_VARIANTS`).
    num_stripes: PCB's horizontal stripes (6 in PCB); unused by IDE.
    reduced_dim: width of PCB's reduction shared by the stripes, the
      classifiers' input (256 in PCB); unused by IDE.
    dropout_rate: dropout in training on the classifiers' input (IDE) or
      on the pooled stripes before the shared reduction (PCB).
    siamese_dim: width of the siamese feature f_i (the siamese module's fc
      layer, C -> siamese_dim). Not published; 2048, ResNet-50's C, makes
      that fc square on the paper's backbone, so f_i is as wide as the
      pooled feature the siamese layer would otherwise compare
      (`training/casn_defaults.py`).
    stage_sizes, base_width: backbone shape (see `ResNet`).
    dtype: compute dtype of the backbone, float32 or bfloat16 (name or
      dtype); parameters, BatchNorm statistics, the heads, the logits and
      the features stay float32. (float64 is accepted for numerical
      verification under x64.)
    bn_axis_name: mapped axis for synchronised BatchNorm, or None.

  Raises:
    ValueError: on construction, for a bad head, dtype, num_classes,
      dropout_rate, siamese_dim, or PCB num_stripes / reduced_dim.
  """
  num_classes: int
  head: str
  last_stride: int
  num_stripes: int = 6
  reduced_dim: int = 256
  dropout_rate: float = 0.5
  siamese_dim: int = 2048
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  base_width: int = 64
  dtype: Any = 'float32'
  bn_axis_name: Optional[str] = None

  def __post_init__(self):
    # Checked on construction (and so by `casn_variant` and the registry,
    # from a config or a model directory), not when the network first runs.
    super().__post_init__()
    if jnp.dtype(self.dtype).name not in DTYPES:
      raise ValueError(f'dtype must be one of {DTYPES}, got {self.dtype!r}')
    if self.head not in HEADS:
      raise ValueError(f'head must be one of {HEADS}, got {self.head!r}')
    if self.num_classes < 1:
      raise ValueError(f'num_classes must be >= 1, got {self.num_classes}')
    if not 0 <= self.dropout_rate < 1:
      raise ValueError(f'dropout_rate must be in [0, 1), got '
                       f'{self.dropout_rate}')
    if self.siamese_dim < 1:
      raise ValueError(f'siamese_dim must be >= 1, got {self.siamese_dim}')
    if self.head == 'pcb' and (self.num_stripes < 1 or self.reduced_dim < 1):
      raise ValueError('num_stripes and reduced_dim must be >= 1, got '
                       f'{self.num_stripes} and {self.reduced_dim}')

  def setup(self):
    # setup rather than nn.compact: the stages are separate methods that
    # share these layers (Grad-CAM runs the head alone on a given map).
    wide = self._wide()
    self.backbone = ResNet(stage_sizes=self.stage_sizes,
                           base_width=self.base_width,
                           last_stride=self.last_stride,
                           dtype=jnp.dtype(self.dtype),
                           bn_axis_name=self.bn_axis_name)
    if self.head == 'ide':
      self.classifier = nn.Dense(self.num_classes, dtype=wide,
                                 param_dtype=jnp.float32,
                                 kernel_init=classifier_kernel_init)
    else:
      # SANet's part head (PCB's): parameters part_reduce, part_bn,
      # part_classifier_kernel and part_classifier_bias directly under
      # the network, as in SANet.
      self.part_head = PartHead(self.reduced_dim, self.num_classes,
                                dtype=wide, bn_axis_name=self.bn_axis_name)
      nn.share_scope(self, self.part_head)
    # The siamese module's own fc, f_i = pooled @ W + b. Kaiming normal
    # over fan-out and bias 0, as the IDE baseline's code initialises its
    # fc layers (layumi's Person_reID_baseline_pytorch, weights_init_kaiming)
    # and as the backbone's convolutions: f_i starts at the pooled
    # feature's scale with components of both signs (about half of them
    # > 0, a non-trivial importance score). Not N(0, 0.001) as the
    # classifiers: (f_1 - f_2)^2 would start ~1e-6 of the pooled scale.
    self.siamese_fc = nn.Dense(self.siamese_dim, dtype=wide,
                               param_dtype=jnp.float32,
                               kernel_init=conv_kernel_init)
    # N(0, 0.001) as the classifiers: every pair starts near logit 0
    # (probability 1/2), with no preference either way.
    self.siamese = nn.Dense(1, dtype=wide, param_dtype=jnp.float32,
                            kernel_init=classifier_kernel_init)

  def _wide(self) -> Any:
    # The heads run in float32 (float64 for a float64 network) whatever the
    # compute dtype: they are small, and features and logits are read at
    # full precision.
    return jnp.promote_types(jnp.float32, jnp.dtype(self.dtype))

  def feature_map(self, images: jax.Array, train: bool = False) -> jax.Array:
    """The backbone's last map, the one the heads (and Grad-CAM) read.

    Args:
      images: (B, H, W, 3) float32, ImageNet-normalised.
      train: batch statistics in BatchNorm (and update the running ones).

    Returns:
      (B, h, w, C) layer4's output in the compute dtype: h = H/32 (IDE) or
      H/16 (PCB), C = 32 * base_width (2048 for ResNet-50).

    Raises:
      ValueError: a bad attribute (see the class).
    """
    return self.backbone(images, train)['layer4']

  def head_outputs(self, feature_map: jax.Array, train: bool = False,
                   example_ids: Optional[jax.Array] = None
                   ) -> dict[str, Any]:
    """The identity head's outputs from a feature map.

    With ``train=False`` every example is computed on its own (BatchNorm
    uses its running statistics, no dropout): a row of any output depends
    only on the same row of `feature_map`, so the gradient of a sum over
    the batch of per-example scores gives each example its own gradient
    (Grad-CAM). With ``train=True`` BatchNorm uses the batch statistics.

    Args:
      feature_map: (B, h, w, C), `feature_map`'s output (any float dtype).
      train: batch statistics in BatchNorm, and dropout (rng
        ``'dropout'``).
      example_ids: optional (B,) integers naming the examples; each
        example's dropout mask is then drawn from the ``'dropout'`` rng
        folded with its id (`per_example_dropout`), so it does not depend
        on its batch neighbours nor on the device count.

    Returns:
      dict (the registry's contract) with
        ``features``: (B, P, C) float32, each part L2-normalised (the
          retrieval descriptor): IDE P = 1 (the pooled map); PCB
          P = num_stripes (the pooled stripes, PCB's descriptor; not the
          reduced ones);
        ``global_features``: (B, C) float32, the map's global average;
        ``global_logits``: (B, num_classes) float32: IDE's classifier; for
          PCB the SUM of the stripe classifiers' logits, one identity score
          per image (what Grad-CAM and attention mining read);
        ``part_logits``: (B, num_stripes, num_classes) float32, PCB only,
          each stripe's classifier on the shared reduction (PCB's training
          loss);
        ``embeddings``: ``'global'`` the pooled map (B, C) (metric losses);
        ``verification``: (B, siamese_dim) float32, f_i, the siamese
          module's fc of the pooled map (`siamese_features`; no dropout
          and no BatchNorm: the same in training and inference, each row
          from its own image), the vector `siamese_logits` compares;
        ``attention``: {} (CASN's maps are Grad-CAM maps, computed by the
          training task).

    Raises:
      ValueError: a bad attribute, or for PCB a map with fewer rows than
        `num_stripes`.
    """
    wide = self._wide()
    x = feature_map.astype(wide)
    pooled = jnp.mean(x, axis=(1, 2))
    outputs: dict[str, Any] = {
        'global_features': pooled,
        'embeddings': {'global': pooled},
        'verification': self.siamese_features(pooled),
        'attention': {},
    }
    if self.head == 'ide':
      outputs['features'] = l2_normalize(pooled)[:, None, :]
      dropped = self._dropout(pooled, train, example_ids)
      outputs['global_logits'] = self.classifier(dropped)
      return outputs

    if x.shape[1] < self.num_stripes:
      raise ValueError(
          f'PCB head: the feature map has {x.shape[1]} rows, fewer than '
          f'num_stripes {self.num_stripes}; use larger images '
          '(config.image_size) or fewer stripes (config.model.num_stripes)')
    stripes = stripe_pool(x, self.num_stripes)  # (B, P, C)
    outputs['features'] = l2_normalize(stripes)
    dropped = self._dropout(stripes, train, example_ids)
    _, part_logits = self.part_head(dropped, train)
    outputs['part_logits'] = part_logits
    outputs['global_logits'] = jnp.sum(part_logits, axis=1)
    return outputs

  def siamese_features(self, pooled: jax.Array) -> jax.Array:
    """The siamese module's fc: f_i = pooled @ W + b.

    Args:
      pooled: (B, C) the globally averaged feature map.

    Returns:
      (B, siamese_dim) f_i in float32 (float64 for a float64 network);
      each row from its own row of `pooled` (no dropout, no BatchNorm).
    """
    return self.siamese_fc(pooled.astype(self._wide()))

  def siamese_importance(self, feature_map: jax.Array) -> jax.Array:
    """The siamese importance score s_i = sum_k max(f_ik, 0) of each image.

    The components of f_i above zero are those with a positive influence on
    the same/different (BCE) prediction, and s_i collects them (seed 004,
    section 2.2, eq. 5, and the author's reply there); it is not a class
    score. Grad-CAM of s_i with respect to the feature map gives the siamese
    attention map M_i (`models.gradcam.score_grad_cam`). Example by
    example: global average pooling and the fc, no batch statistics and no
    dropout, so the gradient of the batch's summed scores is each image's
    own.

    Args:
      feature_map: (B, h, w, C), `feature_map`'s output (any float dtype).

    Returns:
      (B,) float32 (float64 for a float64 network).
    """
    pooled = jnp.mean(feature_map.astype(self._wide()), axis=(1, 2))
    return jnp.sum(nn.relu(self.siamese_features(pooled)), axis=-1)

  def siamese_logits(self, a: jax.Array, b: jax.Array) -> jax.Array:
    """Logit that two verification vectors show the same identity.

    w . (a - b)^2 + bias: symmetric in (a, b), and zero difference scores
    the bias.

    Args:
      a, b: (..., D) the ``verification`` vectors f_i of the two sides, any
        leading shape, e.g. (M, N, D) for every pair of two sets; the
        leading shapes may also broadcast ((M, 1, D) with (1, N, D)).

    Returns:
      (...,) float32 logits, the broadcast leading shape (apply a sigmoid
      for the probability).

    Raises:
      ValueError: different last axes, or leading shapes that do not
        broadcast.
    """
    if a.shape[-1:] != b.shape[-1:]:
      raise ValueError(f'siamese_logits: a {a.shape} and b {b.shape} must '
                       'have the same last axis (the vector width)')
    try:
      jnp.broadcast_shapes(a.shape, b.shape)
    except ValueError as error:
      raise ValueError(f'siamese_logits: the shapes of a {a.shape} and b '
                       f'{b.shape} do not broadcast') from error
    wide = self._wide()
    difference = jnp.square(a.astype(wide) - b.astype(wide))
    return self.siamese(difference)[..., 0]

  def __call__(self, images: jax.Array, train: bool = False,
               example_ids: Optional[jax.Array] = None) -> dict[str, Any]:
    """Runs the network: `head_outputs` of `feature_map` (see both)."""
    outputs = self.head_outputs(self.feature_map(images, train), train,
                                example_ids)
    if self.is_initializing():
      # Layers of a setup module get parameters when first called; `init`
      # runs only this method, so the siamese head is called once here.
      self.siamese_logits(outputs['verification'], outputs['verification'])
    return outputs

  def _dropout(self, x: jax.Array, train: bool,
               example_ids: Optional[jax.Array]) -> jax.Array:
    if not train or self.dropout_rate == 0:
      return x
    return per_example_dropout(x, self.dropout_rate, self.make_rng('dropout'),
                               example_ids)


# The paper's two identity baselines: IDE keeps the ImageNet network's last
# stride 2; PCB sets it to 1 for a map tall enough to cut into stripes.
CASN_VARIANTS: dict[str, dict[str, Any]] = {
    'ide': dict(head='ide', last_stride=2),
    'pcb': dict(head='pcb', last_stride=1),
}


def casn_variant(name: str, **kwargs) -> CASNNet:
  """Builds a `CASN_VARIANTS` network by name; kwargs set other attributes."""
  if name not in CASN_VARIANTS:
    raise ValueError(f'unknown CASN variant {name!r}; choose one of '
                     f'{sorted(CASN_VARIANTS)}')
  return CASNNet(**{**CASN_VARIANTS[name], **kwargs})
