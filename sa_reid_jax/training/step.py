"""The train state and the generic data-parallel train step.

The step owns what every recipe shares (per-device parameters, gradients,
their average over devices, the optimizer, norms); a task
(`sa_reid_jax.tasks`) owns the forward pass and the loss. The step is
written per device, in the pmap style (each device sees its
share of the batch, gradients are averaged with ``lax.pmean``), and mapped
over a 1-D ``data`` mesh of every device of every process with
``jax.shard_map`` under ``jax.jit``.
"""

import functools
from typing import Any, Callable, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sa_reid_jax import tasks as tasks_lib
from sa_reid_jax.data import device_augment
from sa_reid_jax.models import registry

DATA_AXIS = 'data'
# The on-device augmentation's batch entries (`device_augment`) come on top
# of the task's when it runs in the step, before the task sees the images.


def build_model(config: ml_collections.ConfigDict, num_classes: int):
  """The network an experiment config describes (`models.registry.build`).

  BatchNorm is synchronised over the ``data`` axis when
  ``config.model.sync_batch_norm``.
  """
  return registry.build(
      config.model, num_classes, image_size=tuple(config.image_size),
      bn_axis_name=DATA_AXIS if config.model.sync_batch_norm else None)


def step_keys(task: tasks_lib.Task, augment: Optional[dict[str, Any]] = None
              ) -> tuple[str, ...]:
  """The batch entries the step sends to the devices (the others stay).

  Args:
    task: the training task (its ``batch_keys``).
    augment: `train_step`'s ``augment`` argument (None: augmented on the
      host).
  """
  keys = task.batch_keys
  if augment is not None:
    keys += device_augment.batch_keys(crop=augment.get('crop_size') is not None)
  return tuple(dict.fromkeys(keys))


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes; what a checkpoint holds.

  Attributes:
    step: number of steps taken (int32 scalar).
    params: network parameters.
    batch_stats: BatchNorm running statistics.
    opt_state: optimizer state.
    rng: the run's base PRNG key data (uint32 (2,)); each step folds in its
      step number, each example its position in the epoch.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array


def create_train_state(model, optimizer: optax.GradientTransformation,
                       seed: int, image_size: tuple[int, int]) -> TrainState:
  """A fresh state: initialised network, optimizer state, step 0.

  Args:
    model: the network, of any registered family (`models.registry`).
    optimizer: the optax transformation.
    seed: seeds initialisation; the train-time key is derived from it too.
    image_size: input (height, width).

  Returns:
    the state (on the default device; `replicate` places it on a mesh).
  """
  init_key, train_key = jax.random.split(jax.random.PRNGKey(seed))
  return _initializer(model, optimizer, tuple(image_size))(init_key,
                                                           train_key)


def _initializer(model, optimizer: optax.GradientTransformation,
                 image_size: tuple[int, int]
                 ) -> Callable[[jax.Array, jax.Array], TrainState]:
  """The jitted initialisation, with the keys as arguments.

  The keys are inputs rather than constants of the program, so one compiled
  program (and one entry of a persistent compilation cache) serves every
  seed.
  """

  @jax.jit
  def init(init_key, train_key):
    images = jnp.zeros((2, *image_size, 3), jnp.float32)
    variables = model.init(init_key, images, train=False)
    params = variables['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get('batch_stats', {}),
                      opt_state=optimizer.init(params), rng=train_key)

  return init


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D ``data`` mesh over `devices`.

  Args:
    devices: the devices to train on (default: every device of every
      process). A subset is for one process only (e.g. one of a host's
      devices); each device appears once.

  Raises:
    ValueError: for an empty or repeated device list, or a subset of the
      devices in a multi-process run (each process feeds its own devices'
      share of the batch, so every process's devices must take part).
  """
  if devices is None:
    devices = jax.devices()
  devices = list(devices)
  if not devices or len(set(devices)) != len(devices):
    raise ValueError(f'devices must be distinct and at least one, got '
                     f'{devices}')
  if jax.process_count() > 1 and set(devices) != set(jax.devices()):
    raise ValueError(
        f'a run of {jax.process_count()} processes trains on all their '
        f'{jax.device_count()} devices, got {len(devices)}; a subset of the '
        'devices is for one-process runs')
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """`tree` as global arrays held whole by every device of `mesh`."""
  sharding = NamedSharding(mesh, PartitionSpec())
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding,
                                                       np.asarray(x)), tree)


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh,
                keys: tuple[str, ...]) -> dict[str, Any]:
  """This process's batch as slices of global arrays split over `mesh`.

  Args:
    batch: numpy arrays of this process's share (leading axis = examples).
    mesh: the ``data`` mesh.
    keys: the entries the step reads (`step_keys`).

  Returns:
    global arrays of those entries.

  Raises:
    ValueError: naming the entries the step needs that `batch` lacks.
  """
  missing = [key for key in keys if key not in batch]
  if missing:
    raise ValueError(f'the batch lacks {missing}, which the train step needs '
                   f'(it has {sorted(batch)})')
  sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
  out = {}
  for key in keys:
    value = np.asarray(batch[key])
    if value.dtype == np.int64:
      # Table rows and seeds fit in 32 bits as far as the step is
      # concerned (JAX without x64 would truncate them anyway).
      value = value.astype(np.int32)
    out[key] = jax.make_array_from_process_local_data(sharding, value)
  return out


def local_copy(tree: Any) -> Any:
  """This process's copy of replicated global arrays (for evaluation)."""
  return jax.tree.map(lambda x: x.addressable_data(0), tree)


def _per_device(tree: Any, axis_name: str) -> Any:
  """`tree` marked as varying over `axis_name` (jax.lax.pcast / pvary)."""
  if hasattr(jax.lax, 'pcast'):
    return jax.lax.pcast(tree, axis_name, to='varying')
  return jax.lax.pvary(tree, axis_name)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model,
               task: tasks_lib.Task, optimizer: optax.GradientTransformation,
               learning_rates: Optional[dict[str, optax.Schedule]] = None,
               augment: Optional[dict[str, Any]] = None,
               axis_name: Optional[str] = DATA_AXIS,
               average_batch_stats: bool = False
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on one device's share of the batch.

  Args:
    state: the train state (the same on every device).
    batch: the task's entries (``images``: float32 network input, or uint8
      staged images with the `device_augment` entries when `augment` is
      set; ``positions``, places in the epoch, key dropout).
    model: the network; its ``bn_axis_name`` decides whether BatchNorm
      statistics are synchronised over `axis_name`.
    task: the forward pass and loss (`sa_reid_jax.tasks`).
    optimizer: the optax transformation.
    learning_rates: the optimizer's schedules by parameter group
      (`optimizer.learning_rate_schedules`), whose rates at this step are
      reported; None reports none.
    augment: ``{'image_size': ..., 'fill': ..., 'crop_size': ...}`` to run
      ``device_augment.augment_batch`` on the staged images first.
    axis_name: the mapped device axis (None on a single device, unmapped).
    average_batch_stats: average the updated BatchNorm running statistics
      over `axis_name` (needed when each device normalises on its own, to
      keep one state).

  Returns:
    the new state and the step's metrics (the task's, e.g. each loss term,
    ``loss`` and ``accuracy``, averaged over devices), the global
    ``grad_norm`` and (updated) ``param_norm``, and each group's
    ``learning_rate_GROUP`` applied by this step.
  """
  if augment is not None:
    batch = dict(batch, images=device_augment.augment_batch(batch, **augment))
  step_key = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    return task.loss_fn(model, params, state.batch_stats, batch, step_key,
                        axis_name)

  params = state.params
  if axis_name is not None:
    # Differentiate per-device copies (pmap's model): under shard_map the
    # gradient of replicated parameters would otherwise be summed over the
    # devices implicitly, before the explicit average below.
    params = _per_device(params, axis_name)
  grads, (metrics, batch_stats) = jax.grad(loss_fn, has_aux=True)(params)
  if axis_name is not None:
    # Every device's loss is the mean over an equal share of the global
    # batch (losses that compare examples gather the whole global batch
    # and back-propagate through the gather), so the mean of the devices'
    # gradients is the gradient of the global loss.
    grads = jax.lax.pmean(grads, axis_name)
    metrics = jax.lax.pmean(metrics, axis_name)
    if average_batch_stats:
      batch_stats = jax.lax.pmean(batch_stats, axis_name)
  # The statistics keep the state's dtype (float32): a network computing in
  # float64 would otherwise hand back float64 statistics, and the next step
  # would be traced and compiled again for the new state.
  batch_stats = jax.tree.map(lambda new, old: new.astype(old.dtype),
                             batch_stats, state.batch_stats)
  metrics['grad_norm'] = optax.tree.norm(grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # A finite loss and gradient can still step to non-finite parameters.
  metrics['param_norm'] = optax.tree.norm(params)
  for name, schedule in (learning_rates or {}).items():
    metrics[f'learning_rate_{name}'] = jnp.asarray(schedule(state.step),
                                                   jnp.float32)
  new_state = state.replace(step=state.step + 1, params=params,
                            batch_stats=batch_stats, opt_state=opt_state)
  return new_state, metrics


def make_parallel_train_step(mesh: Mesh, **step_options
                             ) -> Callable[[TrainState, dict],
                                           tuple[TrainState, dict]]:
  """`train_step` mapped over the ``data`` axis of `mesh`, jit-compiled.

  Args:
    mesh: the ``data`` mesh; the state is replicated over it, the batch
      split along its leading axis.
    **step_options: `train_step`'s keyword arguments (model, task,
      optimizer, learning_rates, augment, average_batch_stats).

  Returns:
    ``step(state, batch) -> (state, metrics)``; the input state's buffers
    are donated.
  """
  per_device = functools.partial(train_step, axis_name=DATA_AXIS,
                                 **step_options)
  mapped = jax.shard_map(
      per_device, mesh=mesh,
      in_specs=(PartitionSpec(), PartitionSpec(DATA_AXIS)),
      out_specs=(PartitionSpec(), PartitionSpec()))
  return jax.jit(mapped, donate_argnums=0)
