"""Model families by name: build from a config, describe, rebuild, freeze.

Every family's network follows one output contract (`__call__(images,
train=False, example_ids=None) -> dict`):

* ``features`` (B, P, D) float32: the retrieval descriptor (P = 1 for a
  global-feature network, the part count for part networks);
* ``global_logits`` (B, C) float32 and other named logits;
* ``embeddings``: {name: (B, D)} vectors the metric losses read (may be
  empty);
* ``attention``: maps for the pictures, where the network has them.

Every tool reads the descriptor through `embed`, never the dict itself.

A model directory (`models.store`) records the family's name and the
network's constructor arguments, so `load_model` and every tool work for
every family.
"""

import dataclasses
from typing import Any, Callable, Mapping, Optional

import flax
import jax
import ml_collections

from sa_reid_jax.models import casn
from sa_reid_jax.models import rga
from sa_reid_jax.models import sanet

# Directories written before families existed hold an SANet.
DEFAULT_FAMILY = 'sanet'


@dataclasses.dataclass(frozen=True)
class Family:
  """How one family is built, described and trained.

  Attributes:
    name: the family's name (``config.model.family``).
    module_type: the network's Flax module class.
    build: (model config block, num_classes, image_size, bn_axis_name) ->
      network.
    describe: network -> JSON-serialisable constructor arguments.
    rebuild: (described arguments, source for errors) -> network.
    variants: the networks ``config.model.variant`` names (the family's
      own table, e.g. `rga.RGA_VARIANTS`: name -> constructor arguments).
    frozen: parameter paths (tuples of names, matched as suffixes) that the
      optimizer must leave untouched.
  """
  name: str
  module_type: type
  build: Callable[[ml_collections.ConfigDict, int, tuple[int, int],
                   Optional[str]], Any]
  describe: Callable[[Any], dict[str, Any]]
  rebuild: Callable[[dict[str, Any], str], Any]
  variants: Mapping[str, Any]
  frozen: tuple[tuple[str, ...], ...] = ()


def _build_sanet(m: ml_collections.ConfigDict, num_classes: int,
                 image_size: tuple[int, int], bn_axis_name: Optional[str]):
  del image_size  # any input size: the network has no size-bound layer
  return sanet.sanet_variant(
      m.variant, num_classes=num_classes,
      attention_normalization=m.attention_normalization,
      dropout_rate=m.dropout_rate, num_features=m.num_features,
      stage_sizes=tuple(m.stage_sizes), base_width=m.base_width,
      last_stride=m.last_stride, dtype=m.dtype, bn_axis_name=bn_axis_name)


def _build_rga(m: ml_collections.ConfigDict, num_classes: int,
               image_size: tuple[int, int], bn_axis_name: Optional[str]):
  return rga.rga_variant(
      m.variant, num_classes=num_classes, image_size=tuple(image_size),
      descriptor=m.descriptor, channel_ratio=m.channel_ratio,
      spatial_ratio=m.spatial_ratio, down_ratio=m.down_ratio,
      stage_sizes=tuple(m.stage_sizes),
      base_width=m.base_width, last_stride=m.last_stride, dtype=m.dtype,
      bn_axis_name=bn_axis_name,
      module_bn_scale_init=m.module_bn_scale_init)


def _build_casn(m: ml_collections.ConfigDict, num_classes: int,
                image_size: tuple[int, int], bn_axis_name: Optional[str]):
  # Any input size: no size-bound layer (PCB needs at least num_stripes
  # rows in the final map, checked when the network first runs).
  del image_size
  return casn.casn_variant(
      m.variant, num_classes=num_classes, num_stripes=m.num_stripes,
      reduced_dim=m.reduced_dim, dropout_rate=m.dropout_rate,
      siamese_dim=m.siamese_dim,
      stage_sizes=tuple(m.stage_sizes), base_width=m.base_width,
      last_stride=m.last_stride, dtype=m.dtype, bn_axis_name=bn_axis_name)


FAMILIES: dict[str, Family] = {
    'sanet': Family('sanet', sanet.SANet, _build_sanet, sanet.model_config,
                    sanet.model_from_config, sanet.VARIANTS),
    'rga': Family('rga', rga.RGANet, _build_rga, rga.model_config,
                  rga.model_from_config, rga.RGA_VARIANTS,
                  frozen=rga.FROZEN_PARAMETERS),
    'casn': Family('casn', casn.CASNNet, _build_casn, casn.model_config,
                   casn.model_from_config, casn.CASN_VARIANTS),
}


def family(name: str, key: str = 'config.model.family') -> Family:
  """The family called `name`; the error names `key` when it is unknown."""
  if name not in FAMILIES:
    raise ValueError(f'{key} must be one of {sorted(FAMILIES)}, got {name!r}')
  return FAMILIES[name]


def check_variant(config: ml_collections.ConfigDict) -> Family:
  """The family of a ``model`` block, checking that it builds the variant.

  The one check of ``config.model.variant`` against the family's own table
  (`Family.variants`): at start-up (`training.validation`), in the
  defaults, and in `build` when a network refuses its variant.

  Raises:
    ValueError: naming config.model.family or config.model.variant, for an
      unknown family or a variant that family does not build.
  """
  chosen = family(config.family)
  variants = sorted(chosen.variants)
  if config.variant not in variants:
    raise ValueError(f'config.model.variant must be one of {variants} for '
                     f'the {chosen.name} family, got {config.variant!r}')
  return chosen


def build(config: ml_collections.ConfigDict, num_classes: int, *,
          image_size: tuple[int, int], bn_axis_name: Optional[str] = None):
  """The network a config's ``model`` block describes.

  Args:
    config: the ``model`` block (``family`` and that family's keys).
    num_classes: train identities.
    image_size: the input (height, width) (RGA's modules are built for it).
    bn_axis_name: mapped axis for synchronised BatchNorm, or None.

  Returns:
    the Flax module.

  Raises:
    ValueError: for an unknown family or variant, or a ``model`` block
      without a key the family reads (e.g. another family's block with only
      ``family`` changed), naming the config key.
  """
  chosen = family(config.family)
  try:
    return chosen.build(config, num_classes, tuple(image_size), bn_axis_name)
  except ValueError as e:
    # Each network refuses a variant it does not build; say so by the key
    # (checked only now, so that another family's block with only
    # ``family`` changed is reported as such, below).
    check_variant(config)
    if str(e).startswith('config.'):
      raise  # already names its key
    # The networks name their own attributes, which are config.model's keys.
    raise ValueError(f'config.model: {e}') from None
  except AttributeError as e:
    # ConfigDict names the missing field alone, quoted twice.
    missing = str(e).strip('"\'')
    raise ValueError(
        f'config.model.family={config.family!r}: config.model has no key '
        f'{missing!r}, which the {config.family} family reads; start from a '
        'config of that family rather than changing config.model.family'
    ) from None


def embed(model: Any, variables: Any, images: jax.Array) -> jax.Array:
  """The retrieval descriptors of a batch: the network's ``features``.

  Args:
    model: a network of any registered family.
    variables: its variables (``params``, ``batch_stats``).
    images: (B, H, W, 3) float, ImageNet-normalised.

  Returns:
    (B, P, D), each of the P parts L2-normalised: P = 1 for a
    global-feature network, the part count for part networks; float32
    (float64 for a float64 network), whatever the compute dtype.
  """
  return model.apply(variables, images, train=False)['features']


def check_input_size(model: Any, image_size, flag: str) -> None:
  """Refuses an input size a network built for one size cannot take.

  Raises:
    ValueError: naming `flag`, for an RGA network (its module widths depend
      on the size) and another size than the one it was built for.
  """
  built = getattr(model, 'image_size', None)
  size = tuple(int(v) for v in image_size)
  if built is not None and tuple(built) != size:
    raise ValueError(
        f'{flag}: {size[0]}x{size[1]}, but this {family_of(model).name} '
        f'network is built for {built[0]}x{built[1]} (its layer widths '
        'depend on the size); leave the flag out to use that size')


# Network attributes that change what evaluation computes without changing
# the trained weights: the descriptor read (RGA: before or after the
# BNNeck) and the compute dtype.
EVALUATION_OVERRIDES = ('descriptor', 'dtype')


def with_overrides(model: Any, overrides: dict[str, Any],
                   prefix: str = '--config.model.') -> Any:
  """A loaded network with some attributes changed for evaluation.

  Args:
    model: a network of a registered family.
    overrides: attribute name -> value (e.g. from ``--config.model.*``
      flags given on the command line).
    prefix: how the names are spelled in errors.

  Returns:
    the network with those attributes (a clone; `model` if none).

  Raises:
    ValueError: naming the flag, for an attribute not in
      `EVALUATION_OVERRIDES` (the saved network's shape is fixed) or one
      this family does not have.
  """
  for key in overrides:
    if key not in EVALUATION_OVERRIDES:
      raise ValueError(
          f'{prefix}{key}: the network is read from the model directory; '
          f'only {", ".join(EVALUATION_OVERRIDES)} can be changed for '
          'evaluation')
    if not hasattr(model, key):
      raise ValueError(f'{prefix}{key}: a {family_of(model).name} network '
                       f'has no {key}')
  return model.clone(**overrides) if overrides else model


def family_of(model: Any) -> Family:
  """The family `model` belongs to.

  Raises:
    TypeError: for a module of no registered family.
  """
  for candidate in FAMILIES.values():
    if isinstance(model, candidate.module_type):
      return candidate
  raise TypeError(f'{type(model).__name__} is not a network of a registered '
                  f'family ({sorted(FAMILIES)})')


def describe(model: Any) -> dict[str, Any]:
  """``{'family': name, 'config': constructor arguments}`` (JSON-ready)."""
  owner = family_of(model)
  return {'family': owner.name, 'config': owner.describe(model)}


def rebuild(description: dict[str, Any], source: str) -> Any:
  """The network `describe` described (no ``family``: an SANet).

  Raises:
    ValueError: naming `source` for an unknown family or config keys.
  """
  name = description.get('family', DEFAULT_FAMILY)
  return family(name, key=f'{source}: family').rebuild(
      description['config'], source)


def frozen_mask(model: Any, params: Any) -> Any:
  """A tree like `params`: True where the family freezes the parameter."""
  suffixes = family_of(model).frozen
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  mask = {path: any(path[-len(s):] == s for s in suffixes) for path in flat}
  return flax.traverse_util.unflatten_dict(mask)
