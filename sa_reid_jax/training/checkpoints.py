"""Train checkpoints in a workdir (orbax), and resuming from the newest.

A checkpoint holds the whole `TrainState` (parameters, BatchNorm statistics,
optimizer state, step, PRNG key) and, as JSON, the data position (epoch and
step within it) with what it depends on (steps per epoch, global batch,
seed): a run resumed with another batch size or dataset is refused rather
than silently reading other data.
"""

import contextlib
import json
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from sa_reid_jax.models import store
from sa_reid_jax.training import workdir as workdir_lib

CHECKPOINT_DIR = store.TRAINING_CHECKPOINTS


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
         data_position: dict[str, Any], workdir: str) -> None:
  """Starts saving `state` and `data_position` at the state's step.

  Raises:
    workdir.DiskFullError: this save, or the one before it (which finishes
      in the background), ran out of space.
  """
  step = int(jax.device_get(state.step))
  with _disk_full_reported(manager, workdir, step):
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_position)), force=True)


def wait(manager: ocp.CheckpointManager, workdir: str, step: int) -> None:
  """Waits for the checkpoint being written (of `step`) to be finished.

  Raises:
    workdir.DiskFullError: it ran out of space.
  """
  with _disk_full_reported(manager, workdir, step):
    manager.wait_until_finished()


@contextlib.contextmanager
def _disk_full_reported(manager: ocp.CheckpointManager, workdir: str,
                        step: int):
  """Turns orbax's errors for a full disk into one `DiskFullError` line."""
  try:
    yield
  except Exception as error:  # pylint: disable=broad-except
    # Orbax and TensorStore wrap the write error in several types.
    if not workdir_lib.is_disk_full(error):
      raise
    directory = str(manager.directory)
    names = os.listdir(directory)
    # Saves finish in the background: the one that failed may be an
    # earlier step than `step`, left under its temporary name.
    unfinished = [int(name.split('.')[0]) for name in names
                  if workdir_lib.TMP_CHECKPOINT_MARKER in name and
                  name.split('.')[0].isdigit()]
    failed = min(unfinished) if unfinished else step
    finished = [int(name) for name in names
                if name.isdigit() and int(name) < failed]
    raise workdir_lib.DiskFullError(
        workdir_lib.disk_full_message(
            workdir, failed, max(finished) if finished else None,
            directory)) from None


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   expected_data: dict[str, int],
                   expected_config: Optional[dict[str, Any]] = None,
                   recorded_later: Optional[dict[str, Any]] = None
                   ) -> Optional[tuple[Any, dict[str, Any]]]:
  """The newest checkpoint's state and data position, or None if none.

  The checkpoint's JSON item is read and compared first, so a checkpoint of
  another network or optimizer is refused with the keys that differ rather
  than failing inside orbax.

  Args:
    manager: from `make_manager`.
    abstract_state: the state's structure, shapes, dtypes and shardings
      (``jax.eval_shape`` output with ``sharding`` set).
    expected_data: the current run's ``steps_per_epoch``,
      ``global_batch_size``, ``seed`` and ``sampler``; the checkpoint's must
      agree.
    expected_config: the current run's ``model`` and ``optimizer`` config
      blocks (dicts), ``num_classes`` and ``image_size``, saved with each
      checkpoint (in its data item) by `save` callers; the checkpoint's
      must agree. Checkpoints written before an entry was recorded skip
      that entry.
    recorded_later: entries of `expected_data` that older checkpoints lack,
      with the value such a checkpoint stands for (e.g. the sampler: older
      runs all used the uniform one).

  Returns:
    (state, data position) or None.

  Raises:
    ResumeError: naming the checkpoint and the entries that differ, or why
      its state does not restore.
  """
  step = manager.latest_step()
  if step is None:
    return None
  path = os.path.join(str(manager.directory), str(step))
  data = {**(recorded_later or {}), **manager.restore(
      step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))['data']}
  differing = {key: (data.get(key), value)
               for key, value in expected_data.items()
               if data.get(key) != value}
  for key, value in (expected_config or {}).items():
    if key in data:
      differing.update(_differences(data[key], _json_like(value), key))
  if differing:
    details = ', '.join(f'{key} was {old}, is now {new}'
                        for key, (old, new) in differing.items())
    raise ResumeError(f'{path}: cannot resume this run with the current '
                      f'config ({details}); use a new --workdir, or the '
                      'config it was started with')
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))
  except (ValueError, KeyError, TypeError) as error:
    lines = str(error).strip().splitlines()
    raise ResumeError(f'{path}: the saved train state does not fit the '
                      f'current config ({lines[0] if lines else error}); '
                      'use a new --workdir') from None
  return restored['state'], data


def _json_like(value: Any) -> Any:
  """`value` as it reads back from JSON (tuples become lists)."""
  return json.loads(json.dumps(value))


def _differences(old: Any, new: Any, prefix: str) -> dict[str, tuple]:
  """{dotted key: (old, new)} of the leaves where two JSON trees differ."""
  if isinstance(old, dict) and isinstance(new, dict):
    found = {}
    for key in sorted(set(old) | set(new)):
      found.update(_differences(old.get(key), new.get(key),
                                f'{prefix}.{key}'))
    return found
  return {} if old == new else {f'config.{prefix}'
                                if prefix != 'num_classes'
                                else 'number of identities': (old, new)}
