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
from sa_reid_jax.models.module_config import module_config
from sa_reid_jax.models.module_config import module_from_config

# Directories written before families existed hold an SANet.
DEFAULT_FAMILY = 'sanet'

# Keys of every ``config.model`` block that are not network attributes:
# which family and variant to build, and whether the trainer synchronises
# BatchNorm across devices (it passes the axis name as ``bn_axis_name``).
TRAINER_KEYS = ('family', 'variant', 'sync_batch_norm')


@dataclasses.dataclass(frozen=True)
class Family:
  """One model family: everything the pipeline needs to know of it.

  A family is its network module (which takes ``num_classes`` and
  ``bn_axis_name`` and, if its layers depend on the input size,
  ``image_size``) and this record; `build`, `describe`, `rebuild`, the
  trainer, evaluation, export and the pictures work from it alone.

  Attributes:
    name: the family's name (``config.model.family``).
    module_type: the network's Flax module class. Its dataclass fields are
      the ``config.model`` keys the family reads (besides `TRAINER_KEYS`).
    variants: ``config.model.variant`` name -> the module attributes that
      variant sets (the family's own table, e.g. `rga.RGA_VARIANTS`);
      ``config.model`` keys given explicitly override them.
    frozen: parameter paths (tuples of names, matched as suffixes) that the
      optimizer must leave untouched.
    maps: the pictures' maps, ``(model, variables, images, classes) ->
      {'cams', 'attention', 'attention_name', 'classes', 'logits'}`` (see
      `models.sanet.maps.sa_maps`), or None if ``visualize cam`` cannot
      draw the family.
  """
  name: str
  module_type: type
  variants: Mapping[str, Mapping[str, Any]]
  frozen: tuple[tuple[str, ...], ...] = ()
  maps: Optional[Callable[..., dict[str, Any]]] = None


FAMILIES: dict[str, Family] = {
    'sanet': Family('sanet', sanet.SANet, sanet.VARIANTS,
                    maps=sanet.sa_maps),
    'rga': Family('rga', rga.RGANet, rga.RGA_VARIANTS,
                  frozen=rga.FROZEN_PARAMETERS, maps=rga.rga_maps),
    'casn': Family('casn', casn.CASNNet, casn.CASN_VARIANTS,
                   maps=casn.casn_maps),
}


def _attributes(cls: type) -> set[str]:
  """The constructor arguments of a Flax module class."""
  return {field.name for field in dataclasses.fields(cls)
          if field.init and field.name not in ('parent', 'name')}


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


def check_block(config: ml_collections.ConfigDict) -> Family:
  """The family of a ``model`` block, checking its keys and variant.

  Raises:
    ValueError: naming the config key: an unknown family or variant, or a
      key the family's network does not have (e.g. another family's block
      with only ``family`` changed).
  """
  chosen = family(config.family)
  known = _attributes(chosen.module_type) - {'num_classes', 'bn_axis_name',
                                             'image_size'}
  unknown = sorted(set(config) - known - set(TRAINER_KEYS))
  if unknown:
    raise ValueError(
        f'config.model.{unknown[0]}: the {chosen.name} family\'s network has '
        f'no such attribute (config.model.family={chosen.name!r}; its keys: '
        f'{sorted(known)}); start from a config of that family rather than '
        'changing config.model.family')
  check_variant(config)
  return chosen


def build(config: ml_collections.ConfigDict, num_classes: int, *,
          image_size: tuple[int, int], bn_axis_name: Optional[str] = None):
  """The network a config's ``model`` block describes, for any family.

  The module of ``config.model.family`` gets the attributes of
  ``config.model.variant`` (`Family.variants`), then every other key of the
  block (`TRAINER_KEYS` aside; lists become tuples), ``num_classes``,
  ``bn_axis_name`` and, if the module has that attribute, ``image_size``.

  Args:
    config: the ``model`` block (``family``, ``variant`` and attributes of
      that family's network).
    num_classes: train identities.
    image_size: the input (height, width) (RGA's modules are built for it).
    bn_axis_name: mapped axis for synchronised BatchNorm, or None.

  Returns:
    the Flax module.

  Raises:
    ValueError: naming the config key: an unknown family or variant, a key
      the family's network does not have (e.g. another family's block with
      only ``family`` changed), or a value the network refuses.
  """
  chosen = check_block(config)
  given = {key: value for key, value in config.items()
           if key not in TRAINER_KEYS}
  arguments = {**chosen.variants[config.variant], **given,
               'num_classes': num_classes, 'bn_axis_name': bn_axis_name}
  if 'image_size' in _attributes(chosen.module_type):
    arguments['image_size'] = tuple(image_size)
  arguments = {key: tuple(value) if isinstance(value, list) else value
               for key, value in arguments.items()}
  try:
    return chosen.module_type(**arguments)
  except ValueError as e:
    if str(e).startswith('config.'):
      raise  # already names its key
    # The networks name their own attributes, which are config.model's keys.
    raise ValueError(f'config.model: {e}') from None


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
  return {'family': family_of(model).name, 'config': module_config(model)}


def rebuild(description: dict[str, Any], source: str) -> Any:
  """The network `describe` described (no ``family``: an SANet).

  Raises:
    ValueError: naming `source` for an unknown family or config keys.
  """
  name = description.get('family', DEFAULT_FAMILY)
  chosen = family(name, key=f'{source}: family')
  config = description['config']
  # Lists in the JSON are the module's tuple attributes (Flax attributes
  # must be hashable).
  tuples = tuple(key for key, value in config.items()
                 if isinstance(value, list))
  return module_from_config(chosen.module_type, config, source, tuples,
                            family=chosen.name)


def frozen_mask(model: Any, params: Any) -> Any:
  """A tree like `params`: True where the family freezes the parameter."""
  suffixes = family_of(model).frozen
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  mask = {path: any(path[-len(s):] == s for s in suffixes) for path in flat}
  return flax.traverse_util.unflatten_dict(mask)
