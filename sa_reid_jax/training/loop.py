"""The step loop of a training run: batches to the devices, steps, saves.

Between steps it logs, checkpoints (every ``config.checkpoint.every_steps``,
at each epoch's end and on SIGTERM or Ctrl-C) and evaluates at the epochs
``config.eval.every_epochs`` asks for.
"""

import collections

import jax

from sa_reid_jax.data import pipeline
from sa_reid_jax.training import checkpoints
from sa_reid_jax.training import reporting
from sa_reid_jax.training import run as run_lib
from sa_reid_jax.training import signals
from sa_reid_jax.training import step as step_lib
from sa_reid_jax.training import validation


def _on_devices(batches, mesh, depth: int, keys: tuple[str, ...]):
  """Batches sent to the devices `depth` steps ahead of their use.

  Transfers are asynchronous: sending batch n + depth while step n runs
  hides the host-to-device copy behind the computation.
  """
  if depth < 1:
    raise ValueError(f'config.prefetch_batches must be >= 1, got {depth}')
  queue = collections.deque()
  for batch in batches:
    queue.append(step_lib.shard_batch(batch, mesh, keys))
    if len(queue) > depth:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def train(run: run_lib.Run, state: step_lib.TrainState, start: int,
          stop: signals.StopRequest) -> tuple[step_lib.TrainState, str]:
  """Steps from `start` to the run's stop step; returns (state, status)."""
  config = run.config
  aug = config.augmentation
  erasing = validation.random_erasing(aug)
  crop = validation.random_crop(aug)
  augment = None
  if aug.on_device:
    augment = {'image_size': tuple(config.image_size),
               'fill': erasing.fill if erasing else 'zeros',
               'crop_size': (crop.enlarged_size(tuple(config.image_size))
                             if crop else None)}
  train_step = step_lib.make_parallel_train_step(
      run.mesh, model=run.model, task=run.task, optimizer=run.optimizer,
      learning_rates=run.learning_rates, augment=augment,
      average_batch_stats=not config.model.sync_batch_norm)
  if start >= run.stop_step:
    return state, 'completed'
  batches = pipeline.train_batches(
      run.table, batch_size=run.process_batch, seed=config.seed,
      start_epoch=start // run.steps_per_epoch,
      start_step=start % run.steps_per_epoch, num_epochs=config.num_epochs,
      image_size=tuple(config.image_size),
      flip_probability=aug.flip_probability, erasing=erasing, crop=crop,
      sampler=run.sampler, process_index=jax.process_index(),
      process_count=jax.process_count(), augment_on_device=aug.on_device,
      staging_size=tuple(aug.staging_size))
  device_batches = _on_devices(batches, run.mesh, config.prefetch_batches,
                               step_lib.step_keys(run.task, augment))
  progress = reporting.Progress(start, run.stop_step, config.batch_size)
  averager = reporting.MetricAverager()
  pending = None  # (step, metrics) not yet read back from the devices

  def settle():
    nonlocal pending
    if pending is not None:
      step, metrics = pending
      metrics = jax.device_get(metrics)
      run.check_finite(step, metrics)
      averager.add(metrics)
      progress.update(step, float(metrics['loss']))
      pending = None

  # Closed even when a step fails: a tf.data iterator still open when the
  # interpreter exits prints TensorFlow warnings after our error line.
  try:
    step = start
    while step < run.stop_step:
      state, metrics = train_step(state, next(device_batches))
      step += 1
      # Reading the previous step's metrics now lets this one run meanwhile.
      settle()
      pending = (step, metrics)
      epoch_end = step % run.steps_per_epoch == 0
      log_now = step % config.log_every_steps == 0 or step == run.stop_step
      save_now = (step % config.checkpoint.every_steps == 0 or epoch_end or
                  step == run.stop_step)
      epoch = step // run.steps_per_epoch
      eval_now = (epoch_end and config.eval.every_epochs > 0 and
                  epoch % config.eval.every_epochs == 0 and
                  step < run.stop_step)
      stop_now = stop.is_set(step, config.checkpoint.sigterm_check_steps)
      if not (log_now or save_now or eval_now or stop_now):
        continue
      settle()
      if log_now:
        scalars = averager.pop()
        # Unknown at this process's first step (start-up is not speed).
        images_per_second = progress.images_per_second(step)
        if images_per_second is not None:
          scalars['images_per_second'] = images_per_second
        run.writer.write(step, scalars, 'train')
        progress.update(step, scalars['loss'], force=True)
      if save_now or stop_now:
        checkpoints.save(run.manager, state, run.data_position(step),
                         run.workdir)
      if stop_now:
        checkpoints.wait(run.manager, run.workdir, step)
        progress.close()
        print(f'{stop.name}: saved the checkpoint of step {step} in '
              f'{run.manager.directory}; run the same command to resume',
              flush=True)
        return state, 'terminated'
      if eval_now:
        progress.close()
        run.evaluate(state)
        progress.reset_interval(step)
    progress.close()
    return state, 'completed'
  finally:
    # The failure's traceback keeps this frame: drop its references here.
    device_batches.close()
    del batches
