"""Saving and restoring a model: an orbax checkpoint of variables + config.

A model directory holds two orbax items: ``variables`` (params and
batch_stats, float32) and ``model`` (JSON: the network's ``family``, its
constructor arguments under ``config`` (`models.registry`) and free-form
provenance under ``metadata``, where ``image_size`` is the input size the
network was trained or converted at).
"""

import hashlib
import os
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from sa_reid_jax.models import registry

# The paper's input (height, width), for models that record no size
# (arXiv 1811.12150, Sec. 4.2).
DEFAULT_IMAGE_SIZE = (384, 128)



# What a training workdir holds (``sa_reid_jax.training``): its checkpoints
# and, once the run has finished, its trained network.
TRAINING_CHECKPOINTS = 'checkpoints'
TRAINING_MODEL = 'model'


class ModelStoreError(ValueError):
  """A model directory is missing, incomplete or inconsistent."""


# The metadata entry of an export (the ONNX model's metadata key; the
# SavedModel's assets.extra/<key>.json) holding its JSON description.
EXPORT_METADATA_KEY = 'sa_reid'


def model_fingerprint(model: Any, variables: Any) -> str:
  """A hash of everything in a model that determines its descriptors.

  Covers the module's configuration (its repr: class and attributes) and the
  name, shape, dtype and bytes of every variable, so it identifies the
  weights themselves, not the files they came from: a gallery index and an
  ONNX export record it, and are refused by another model.

  Args:
    model: a Flax module.
    variables: its variables.

  Returns:
    a hex SHA-256 digest.
  """
  digest = hashlib.sha256(repr(model).encode())
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(variables))[0]
  for path, leaf in leaves:
    array = np.ascontiguousarray(leaf)
    digest.update(f'{jax.tree_util.keystr(path)} {array.dtype.str} '
                  f'{array.shape}'.encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def _checkpointer() -> ocp.Checkpointer:
  return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def abstract_variables(model: Any) -> Any:
  """Shapes and dtypes of `model`'s variables, without allocating them.

  The input traced (never computed) is the model's own ``image_size`` when
  it has one (RGA: its relation convolutions depend on it), else
  `DEFAULT_IMAGE_SIZE` (SANet's variables do not depend on the size).
  """
  height, width = getattr(model, 'image_size', DEFAULT_IMAGE_SIZE)
  return jax.eval_shape(
      lambda images: model.init(jax.random.key(0), images, train=False),
      jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32))


def save_model(directory: str, model: Any, variables: Any,
               metadata: Optional[dict[str, Any]] = None,
               overwrite: bool = False) -> str:
  """Writes `model`'s config and `variables` as an orbax checkpoint.

  Args:
    directory: output directory; must not exist unless `overwrite`.
    model: the network whose family and config are recorded.
    variables: its variables (``params``, ``batch_stats``); an empty
      collection (a network without BatchNorm has no statistics) is not
      written, as the network's own `abstract_variables` has none.
    metadata: JSON-serialisable provenance (source file, epoch, ...).
    overwrite: replace an existing directory.

  Returns:
    the absolute path written.
  """
  path = os.path.abspath(directory)
  if os.path.exists(path) and not overwrite:
    raise ModelStoreError(f'{directory}: already exists (choose another '
                          'output directory or allow overwriting)')
  variables = {name: tree for name, tree in variables.items()
               if jax.tree.leaves(tree)}
  _checkpointer().save(
      path,
      ocp.args.Composite(
          variables=ocp.args.StandardSave(variables),
          model=ocp.args.JsonSave({**registry.describe(model),
                                   'metadata': metadata or {}})),
      force=overwrite)
  return path


def is_model_directory(directory: str) -> bool:
  """Whether `directory` holds the ``model`` and ``variables`` items."""
  return all(os.path.isdir(os.path.join(directory, item))
             for item in ('model', 'variables'))


def _not_a_model_directory(directory: str) -> str:
  """Why `directory` is not a model directory, and what to pass instead."""
  if not os.path.exists(directory):
    return f'{directory}: no such model directory'
  if not os.path.isdir(directory):
    return f'{directory}: is a file, not a model directory'
  if os.path.isdir(os.path.join(directory, TRAINING_CHECKPOINTS)):
    return (f'{directory}: a training workdir whose run has not finished '
            f'(no {TRAINING_MODEL}/ in it yet); run train.py with this '
            '--workdir to the end, or pass a model directory')
  if not os.listdir(directory):
    return (f'{directory}: empty; expected a model directory (written by '
            'convert_weights.py or by training as WORKDIR/model)')
  return (f'{directory}: not a model directory (no "model" and "variables" '
          'items) nor a training workdir; expected the output of '
          'convert_weights.py or a training WORKDIR/model')


def resolve_model_directory(path: str,
                            say: Optional[Callable[[str], None]] = print
                            ) -> str:
  """The model directory meant by `path`, a model or a training workdir.

  Tools accept either: a training workdir (``train.py --workdir``) stands for
  its trained network, ``WORKDIR/model``.

  Args:
    path: what the user passed (``--checkpoint``, ``config.init_from``...).
    say: called with one line when a workdir is replaced by its model
      directory (None: silent).

  Returns:
    `path` itself, or ``path/model`` for a training workdir.

  Raises:
    ModelStoreError: one line saying why `path` is neither (missing, empty,
      foreign, or a workdir whose run has not finished) and what to pass.
  """
  if is_model_directory(path):
    return path
  trained = os.path.join(path, TRAINING_MODEL)
  if is_model_directory(trained):
    if say is not None:
      say(f'{path} is a training workdir: using its trained network, '
          f'{trained}')
    return trained
  raise ModelStoreError(_not_a_model_directory(path))


def load_model_info(directory: str) -> dict[str, Any]:
  """Reads the JSON item (``config`` and ``metadata``) of a model directory.

  Raises:
    ModelStoreError: `directory` is not a model directory (see
      `resolve_model_directory`), or its JSON item does not read.
  """
  path = os.path.abspath(directory)
  if not is_model_directory(path):
    raise ModelStoreError(_not_a_model_directory(directory))
  try:
    restored = _checkpointer().restore(
        path, ocp.args.Composite(model=ocp.args.JsonRestore()))
  except (OSError, ValueError, KeyError) as error:
    raise ModelStoreError(f'{directory}: cannot read the model config: '
                          f'{_first_line(error)}') from error
  return restored['model']


def _first_line(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return lines[0] if lines else type(error).__name__


def load_model(directory: str) -> tuple[Any, Any]:
  """Restores a model written by `save_model`.

  Args:
    directory: a model directory (e.g. written by ``convert_weights.py``).

  Returns:
    (model, variables): the network (its recorded family) and its float32
    variables, ready for ``model.apply(variables, images, train=False)``.
  """
  info = load_model_info(directory)
  source = os.path.join(directory, 'model')
  try:
    model = registry.rebuild(info, source=source)
  except (TypeError, ValueError) as error:
    raise ModelStoreError(_first_line(error)) from error
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
                          f'model config: {_first_line(error)}') from error
  return model, restored['variables']


def input_size(directory: str, explicit: Optional[Sequence[int]] = None, *,
               flag: str = '--image_size',
               default: Sequence[int] = DEFAULT_IMAGE_SIZE,
               say: Callable[[str], None] = print) -> tuple[int, int]:
  """The input size to run a model directory at, and a line saying which.

  The size the model was trained at (``image_size`` in the metadata written
  by training) wins over `default`; a size given explicitly wins over both,
  with a warning when it differs from the trained one (a network evaluated
  at another size than it was trained at scores much lower, silently).

  Args:
    directory: a model directory.
    explicit: a size the user asked for (None: not given).
    flag: the flag `explicit` came from, for the messages.
    default: used when neither is known (the paper's 384x128, or a
      config's ``image_size``).
    say: called with the chosen size's line (and the warning, if any).

  Returns:
    (height, width) in pixels.

  Raises:
    ModelStoreError: `directory` is not a model directory.
  """
  recorded = load_model_info(directory).get('metadata', {}).get('image_size')
  recorded = tuple(int(v) for v in recorded) if recorded else None
  if explicit:
    size = tuple(int(v) for v in explicit)
    source = flag
    if recorded and recorded != size:
      say(f'warning: {flag} {_size(size)} differs from the size the model '
          f'was trained at, {_size(recorded)}; using {_size(size)}')
  elif recorded:
    size, source = recorded, 'the size the model was trained at'
  else:
    size = tuple(int(v) for v in default)
    source = 'the model records no size'
  say(f'input size {_size(size)} ({source})')
  return size


def _size(size: Sequence[int]) -> str:
  return 'x'.join(str(v) for v in size)
