"""Train checkpoints in a workdir (orbax), and resuming from the newest.

A checkpoint holds the whole `TrainState` (parameters, BatchNorm statistics,
optimizer state, step, PRNG key) and, as JSON, the data position (epoch and
step within it) with what it depends on (steps per epoch, global batch,
seed): a run resumed with another batch size or dataset is refused rather
than silently reading other data.
"""

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

CHECKPOINT_DIR = 'checkpoints'


class ResumeError(ValueError):
  """The workdir's checkpoint does not fit the current config."""


def make_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """The orbax manager of ``workdir/checkpoints`` (keeps the `keep` newest).

  Saving is asynchronous: training goes on while a checkpoint is written;
  an interrupted write leaves a temporary directory that is never restored.
  """
  if keep < 1:
    raise ValueError(f'config.checkpoint.keep must be >= 1, got {keep}')
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         cleanup_tmp_directories=True)
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR),
      item_names=('state', 'data'), options=options)


def save(manager: ocp.CheckpointManager, state: Any,
         data_position: dict[str, int]) -> None:
  """Starts saving `state` and `data_position` at the state's step."""
  step = int(jax.device_get(state.step))
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=ocp.args.JsonSave(data_position)), force=True)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   expected_data: dict[str, int]
                   ) -> Optional[tuple[Any, dict[str, int]]]:
  """The newest checkpoint's state and data position, or None if none.

  Args:
    manager: from `make_manager`.
    abstract_state: the state's structure, shapes, dtypes and shardings
      (``jax.eval_shape`` output with ``sharding`` set).
    expected_data: the current run's ``steps_per_epoch``,
      ``global_batch_size`` and ``seed``; the checkpoint's must agree.

  Returns:
    (state, data position) or None.

  Raises:
    ResumeError: naming the checkpoint and the entries that differ.
  """
  step = manager.latest_step()
  if step is None:
    return None
  path = os.path.join(str(manager.directory), str(step))
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=ocp.args.JsonRestore()))
  data = dict(restored['data'])
  differing = {key: (data.get(key), value)
               for key, value in expected_data.items()
               if data.get(key) != value}
  if differing:
    details = ', '.join(f'{key} was {old}, is now {new}'
                        for key, (old, new) in differing.items())
    raise ResumeError(f'{path}: cannot resume this run with the current '
                      f'config ({details}); use a new --workdir')
  return restored['state'], data
