"""A network's constructor arguments as JSON, and back.

Model directories, exports and reports describe a network by the attributes
of its Flax module; these two functions are the one place that turns a
module into that description and a description back into a module.
"""

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp


def module_config(model: nn.Module) -> dict[str, Any]:
  """The constructor arguments of `model` as a JSON-serialisable dict.

  dtypes become their names and tuples become lists; ``parent`` and
  ``name`` are left out.
  """
  config = {}
  for field in dataclasses.fields(type(model)):
    if field.name in ('parent', 'name') or not field.init:
      continue
    value = getattr(model, field.name)
    if field.name == 'dtype':
      value = jnp.dtype(value).name
    elif isinstance(value, tuple):
      value = list(value)
    config[field.name] = value
  return config


def module_from_config(cls: type, config: dict[str, Any], source: str,
                       tuple_fields: tuple[str, ...] = (),
                       family: Optional[str] = None) -> nn.Module:
  """Builds a `cls` from `module_config`'s output.

  Args:
    cls: the Flax module class.
    config: constructor arguments; unknown keys are an error.
    source: where the config came from, for the error message.
    tuple_fields: attributes stored as lists that the module needs as
      tuples (hashable, as Flax attributes should be).
    family: if set, `config` may hold ``family``, which must equal it.

  Returns:
    the module.

  Raises:
    ValueError: naming `source`: another family, unknown keys, or a value
      the module's constructor refuses.
  """
  config = dict(config)
  if family is not None:
    found = config.pop('family', family)
    if found != family:
      raise ValueError(f'{source}: model family {found!r} is not {family!r}')
  known = {field.name for field in dataclasses.fields(cls)
           if field.init and field.name not in ('parent', 'name')}
  unknown = sorted(set(config) - known)
  if unknown:
    raise ValueError(f'{source}: unknown model config keys {unknown}; '
                     f'known keys are {sorted(known)}')
  kwargs = dict(config)
  for name in tuple_fields:
    if name in kwargs:
      kwargs[name] = tuple(kwargs[name])
  try:
    return cls(**kwargs)
  except ValueError as error:
    raise ValueError(f'{source}: {error}') from error
