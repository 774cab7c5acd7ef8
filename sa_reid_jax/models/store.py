"""Saving and restoring a model: an orbax checkpoint of variables + config.

A model directory holds two orbax items: ``variables`` (params and
batch_stats, float32) and ``model`` (JSON: the `SANet` constructor arguments
under ``config`` and free-form provenance under ``metadata``).
"""

import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from sa_reid_jax.models.sanet import SANet, model_config, model_from_config

# Variable shapes do not depend on the image size; this one is only traced
# (never computed) to build the restore target.
_SHAPE_PROBE_IMAGES = jax.ShapeDtypeStruct((1, 384, 128, 3), jnp.float32)


class ModelStoreError(ValueError):
  """A model directory is missing, incomplete or inconsistent."""


def _checkpointer() -> ocp.Checkpointer:
  return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def abstract_variables(model: SANet) -> Any:
  """Shapes and dtypes of `model`'s variables, without allocating them."""
  return jax.eval_shape(
      lambda images: model.init(jax.random.key(0), images, train=False),
      _SHAPE_PROBE_IMAGES)


def save_model(directory: str, model: SANet, variables: Any,
               metadata: Optional[dict[str, Any]] = None,
               overwrite: bool = False) -> str:
  """Writes `model`'s config and `variables` as an orbax checkpoint.

  Args:
    directory: output directory; must not exist unless `overwrite`.
    model: the network whose config is recorded.
    variables: its variables (``params``, ``batch_stats``).
    metadata: JSON-serialisable provenance (source file, epoch, ...).
    overwrite: replace an existing directory.

  Returns:
    the absolute path written.
  """
  path = os.path.abspath(directory)
  if os.path.exists(path) and not overwrite:
    raise ModelStoreError(f'{directory}: already exists (choose another '
                          'output directory or allow overwriting)')
  _checkpointer().save(
      path,
      ocp.args.Composite(
          variables=ocp.args.StandardSave(variables),
          model=ocp.args.JsonSave({'config': model_config(model),
                                   'metadata': metadata or {}})),
      force=overwrite)
  return path


def load_model_info(directory: str) -> dict[str, Any]:
  """Reads the JSON item (``config`` and ``metadata``) of a model directory."""
  path = os.path.abspath(directory)
  if not os.path.isdir(path):
    raise ModelStoreError(f'{directory}: no such model directory')
  if not os.path.isdir(os.path.join(path, 'model')):
    raise ModelStoreError(f'{directory}: not a model directory (no "model" '
                          'item; expected the output of convert_weights.py '
                          'or of training)')
  restored = _checkpointer().restore(
      path, ocp.args.Composite(model=ocp.args.JsonRestore()))
  return restored['model']


def load_model(directory: str) -> tuple[SANet, Any]:
  """Restores a model written by `save_model`.

  Args:
    directory: a model directory (e.g. written by ``convert_weights.py``).

  Returns:
    (model, variables): the `SANet` and its float32 variables, ready for
    ``model.apply(variables, images, train=False)``.
  """
  info = load_model_info(directory)
  model = model_from_config(info['config'],
                            source=os.path.join(directory, 'model'))
  # Onto this process's first device, whatever devices wrote the file.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
      abstract_variables(model))
  try:
    restored = _checkpointer().restore(
        os.path.abspath(directory),
        ocp.args.Composite(variables=ocp.args.StandardRestore(target)))
  except (ValueError, KeyError) as error:
    raise ModelStoreError(f'{directory}: variables do not match the recorded '
                          f'model config: {error}') from error
  return model, restored['variables']
