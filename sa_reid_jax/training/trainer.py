"""`train_and_evaluate`: the training run of an experiment config."""

import contextlib
import os
import signal
from typing import Any, Optional, Sequence

import jax
import ml_collections

from sa_reid_jax.datasets import sources
from sa_reid_jax.evaluation import evaluate
from sa_reid_jax.evaluation import report
from sa_reid_jax.models import store
from sa_reid_jax.training import checkpoints
from sa_reid_jax.training import loop
from sa_reid_jax.training import run as run_lib
from sa_reid_jax.training import signals
from sa_reid_jax.training import step as step_lib
from sa_reid_jax.training import workdir as workdir_lib

MODEL_DIR = store.TRAINING_MODEL
METRICS_JSON = 'metrics.json'
# Raised by `train_and_evaluate` when the loss or the gradient stops being
# finite.
NonFiniteLossError = run_lib.NonFiniteLossError


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices: Optional[Sequence[jax.Device]] = None, *,
                       quit_on_second_interrupt: bool = False
                       ) -> dict[str, Any]:
  """Trains the configured network, resuming from `workdir` if it can.

  Checkpoints go to ``workdir/checkpoints`` (every
  ``config.checkpoint.every_steps`` steps and at each epoch's end), metrics to
  TensorBoard (``workdir/tensorboard``) and ``workdir/metrics.jsonl``, the
  evaluations to ``workdir/evaluations.json``; at the end, the trained
  network to ``workdir/model`` (readable by ``eval.py``), the final
  metrics (of config.dataset and of each config.eval.extra_targets spec) to
  ``workdir/metrics.json`` and, with ``config.eval.report``, the evaluation
  report to ``workdir/report.html`` (and one ``report_<name>.html`` per
  target, linked from it). SIGTERM or Ctrl-C saves a
  checkpoint and returns; running again resumes. The workdir is held
  (``workdir/lock``) for the run: a second run on it is refused.

  Called from the main thread, it handles SIGTERM and SIGINT for the run
  and puts back the handlers it found when it returns or raises; it leaves
  the environment and absl's flags alone.

  Args:
    config: an experiment config (``configs/``).
    workdir: the run's directory (created if needed).
    devices: the devices to train on (default: every device of every
      process); the global batch is split evenly over them. A resumed run
      may use another number of devices.
    quit_on_second_interrupt: a second Ctrl-C (after the first asked for a
      checkpoint) ends the process at once, exit status
      `signals.INTERRUPTED_EXIT_STATUS`, the workdir's lock removed: for a
      program whose whole process is the run (``train.py``). By default it
      raises KeyboardInterrupt instead (the process, e.g. a notebook's,
      lives on).

  Returns:
    ``status`` (``'completed'`` or ``'terminated'``, then with ``signal``,
    e.g. ``'SIGINT'``), ``step``, ``devices`` (how many
    trained), and the ``initial`` (step 0, if
    evaluated) and ``final`` evaluation metrics (None for a train-only
    config.dataset), ``targets`` ({spec: metrics}) and, where nothing was
    evaluated, ``not_evaluated`` (why).

  Raises:
    NonFiniteLossError: when the loss or gradient stops being finite.
    ValueError: for a config that cannot run (naming the key), among them
      an empty ``config.init_from`` (``'scratch'`` trains from random
      weights); raised before ``workdir`` is created or written.
    checkpoints.ResumeError: the workdir's checkpoint was written with
      another model, optimizer, dataset or batch size.
    workdir.WorkdirBusyError: another live process holds the workdir.
    workdir.DiskFullError: a checkpoint could not be written.
    KeyboardInterrupt: a second Ctrl-C, without `quit_on_second_interrupt`
      (the newest finished checkpoint is kept).
  """
  with signals.StopRequest(
      quit_on_second_interrupt=quit_on_second_interrupt
  ) as stop, contextlib.ExitStack() as held:
    is_chief = jax.process_index() == 0

    def hold():
      lock = held.enter_context(workdir_lib.WorkdirLock(workdir))
      stop.on_quit = lock.release

    # A workdir in use is refused at once; a new one is created only once
    # the config and the dataset are known to be usable, so that a failed
    # start leaves nothing behind.
    existed = os.path.isdir(workdir)
    if existed and is_chief:
      hold()
    run = run_lib.Run(config, workdir, devices)
    os.makedirs(workdir, exist_ok=True)
    if not existed and is_chief:
      hold()
    run.open()
    try:
      result = _resume_and_train(run, stop)
    finally:
      run.writer.close()
    run.manager.close()
  return result


def _resume_and_train(run: run_lib.Run,
                      stop: signals.StopRequest) -> dict[str, Any]:
  """Training from the newest checkpoint on, then the end of the run."""
  state = run.initial_state()
  start = int(jax.device_get(state.step))
  if run.is_chief:
    devices = run.mesh.devices.flat
    print(f'training on {run.mesh.size} {devices[0].platform} device'
          f'{"s" if run.mesh.size > 1 else ""} ({jax.process_count()} '
          f'process{"es" if jax.process_count() > 1 else ""}), global '
          f'batch {run.config.batch_size}, {run.steps_per_epoch} steps per '
          'epoch', flush=True)
  if start == 0 and run.config.eval.at_start:
    run.evaluate(state)
  state, status = loop.train(run, state, start, stop)
  checkpoints.wait(run.manager, run.workdir, int(jax.device_get(state.step)))
  step = int(jax.device_get(state.step))
  result = {'status': status, 'step': step, 'devices': run.mesh.size,
            'tensorboard_dir': run.writer.tensorboard_dir}
  if status == 'completed':
    result.update(_finish(run, state, step))
  elif stop.signal is not None:
    result['signal'] = signal.Signals(stop.signal).name
  return result


def _finish(run: run_lib.Run, state: step_lib.TrainState,
            step: int) -> dict[str, Any]:
  """Final evaluations, the trained model and metrics.json of a whole run.

  metrics.json holds ``final`` (config.dataset's metrics; None for a
  train-only dataset), ``initial``, ``targets`` ({spec: the same block as
  ``final``} for config.eval.extra_targets) and, where nothing was
  evaluated, ``not_evaluated`` saying why.
  """
  model_dir = os.path.join(run.workdir, MODEL_DIR)
  final = None
  if run.evaluates_main:
    # The report needs this process's evaluation of the final step (a
    # rerun of a complete run has only the recorded metrics).
    needs_report = run.config.eval.report and (
        run.last_evaluation is None or run.last_evaluation[0] != step)
    if (not run.evaluations or run.evaluations[-1]['step'] != step or
        needs_report):
      run.evaluate(state)
    # What the final metrics came from, as eval.py records it (the report
    # of the final evaluation shares this dict).
    final = evaluate.record_source(run.evaluations[-1], model_dir, step,
                                   run.config.image_size)
  targets = run.evaluate_targets(state) if run.targets else {}
  for evaluation in targets.values():
    evaluate.record_source(evaluation.metrics, model_dir, step,
                           run.config.image_size)
  # Host copies: the model directory must not depend on this run's devices.
  variables = jax.device_get(step_lib.local_copy(
      {'params': state.params, 'batch_stats': state.batch_stats}))
  metadata = {'trained_steps': step,
              'dataset': sources.describe(run.config.dataset),
              'image_size': list(run.config.image_size)}
  extra = run.config.dataset.get('extra_train', '')
  if extra:
    metadata['extra_train'] = [s.strip() for s in extra.split(',')]
  store.save_model(model_dir, run.eval_model, variables, metadata=metadata,
                   overwrite=True)
  initial = [e for e in run.evaluations if e['step'] == 0]
  summary = {'final': final, 'initial': initial[0] if initial else None,
             'targets': {spec: evaluation.metrics
                         for spec, evaluation in targets.items()}}
  if final is None and not targets:
    summary['not_evaluated'] = (
        f'{sources.describe(run.config.dataset)} has no query and gallery '
        'splits and config.eval.extra_targets is empty: no evaluation target')
  if run.is_chief:
    evaluate.write_metrics({'step': step, **summary},
                           os.path.join(run.workdir, METRICS_JSON))
    if run.config.eval.report and (final is not None or targets):
      main = run.last_evaluation[1] if final is not None else None
      report.write_reports(main, targets, run.workdir, run.eval_model,
                           run.config, run.workdir, step,
                           dataset=sources.describe(run.config.dataset))
    else:
      report.remove_stale_report(run.workdir, 'config.eval.report=True')
  return summary
