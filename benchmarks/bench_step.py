"""The timed data-parallel train step shared by the training benchmarks.

`measure_train_step` compiles a recipe's step (`step.make_parallel_train_step`:
the task's forward passes and loss terms, the backward pass, gradient
all-reduce, the recipe's optimizer) on one synthetic batch kept on every
device, warms it up, times it and counts its FLOPs and MFU
(`bench_flops`): the step's rate alone, without an input pipeline or host
transfers. bench_train.py and the accelerator run (accelerator.py) both
time their steps with it.
"""

import dataclasses
import math
import time
from typing import Any, Optional

import jax
import numpy as np

# pylint: disable=g-bad-import-order
from bench_flops import forward_macs, peak_flops, print_flops_and_mfu, si, xla_flops
# TensorFlow-free modules only: the benchmarks run where TensorFlow is not
# installed (trainer, data.pipeline and evaluation import it).
from sa_reid_jax import tasks
from sa_reid_jax.training import optimizer as optimizer_lib
from sa_reid_jax.training import step as step_lib


def synthetic_batch(num_images: int, image_size: tuple[int, int],
                    num_classes: int, seed: int = 0,
                    images_per_identity: int = 1) -> dict[str, np.ndarray]:
  """A train batch of ImageNet-normalised noise and labels: random ones, or
  runs of `images_per_identity` equal labels (a P x K batch) when > 1."""
  rng = np.random.default_rng(seed)
  if images_per_identity > 1:
    labels = (np.arange(num_images) // images_per_identity) % num_classes
  else:
    labels = rng.integers(0, num_classes, num_images)
  return {
      'images': rng.standard_normal((num_images, *image_size, 3),
                                    dtype=np.float32),
      'labels': labels.astype(np.int32),
      'positions': np.arange(num_images, dtype=np.int32),
  }


# What the loss reads, for the analytic count: the descriptor ('features')
# has no matmuls of its own.
LOSS_OUTPUTS = ('part_logits', 'global_logits', 'ds_logits', 'embeddings')


@dataclasses.dataclass
class TrainStep:
  """A compiled data-parallel train step, its state and synthetic batch.

  Attributes:
    compiled: the compiled step, ``(state, batch) -> (state, metrics)``.
    state: the current `step.TrainState`, replicated over the mesh.
    batch: the synthetic batch on the devices (reused by every step).
    initial: the first state, on the host (another dtype's run can start
      from it: parameters and optimizer state are float32 whatever the
      compute dtype).
    image_size: input (height, width).
    compile_s: seconds to lower and compile.
    step_flops: XLA's FLOPs of one device's step (of the compiled program,
      else of the lowered one), or None if the backend gives none.
    lowered_flops: XLA's FLOPs of the lowered (unoptimised) program, or None.
    analytic_macs: MACs of one image's forward pass (`forward_macs` of
      `LOSS_OUTPUTS`).
    losses: each loss `run` recorded, in order.
    loss: the loss of the last timed step (NaN before `time`).
  """
  compiled: Any
  state: Any
  batch: dict[str, jax.Array]
  initial: Any
  image_size: tuple[int, int]
  compile_s: float
  step_flops: Optional[float]
  lowered_flops: Optional[float]
  analytic_macs: int
  losses: list[float] = dataclasses.field(default_factory=list)
  loss: float = math.nan

  def run(self, count: int) -> list[float]:
    """`count` steps, each loss read back (and appended to `losses`)."""
    losses = []
    for _ in range(count):
      self.state, metrics = self.compiled(self.state, self.batch)
      losses.append(float(metrics['loss']))
    self.losses.extend(losses)
    return losses

  def time(self, warmup: int, steps: int) -> float:
    """Seconds per step: `steps` (>= 1) timed after `warmup` untimed.

    Raises:
      RuntimeError: when the last step's loss is not finite (the timing
        would be of a broken step).
    """
    metrics = None
    for _ in range(warmup):
      self.state, metrics = self.compiled(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))
    start = time.perf_counter()
    for _ in range(steps):
      self.state, metrics = self.compiled(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))
    seconds = (time.perf_counter() - start) / steps
    self.loss = float(metrics['loss'])
    if not math.isfinite(self.loss):
      raise RuntimeError(f'the loss is {self.loss}: the timing is of a '
                         'broken step')
    return seconds


def compile_train_step(config, batch_per_device: int, num_classes: int,
                       initial: Any = None) -> TrainStep:
  """Builds and compiles a recipe's step on one synthetic batch.

  Args:
    config: an experiment config (`experiment_config`, or a family's);
      its ``model.dtype`` is the compute dtype.
    batch_per_device: images per device per step.
    num_classes: identities of the classifiers.
    initial: the state to start from (host arrays), e.g. another run's
      ``initial``; None: a fresh state from ``config.seed``.

  Returns:
    the `TrainStep`, state and batch on every device of a ``data`` mesh.
  """
  model = step_lib.build_model(config, num_classes)
  image_size = tuple(config.image_size)
  mesh = step_lib.make_mesh()
  # The schedule's length does not change the step's cost.
  optimizer = optimizer_lib.make_optimizer(config.optimizer,
                                           steps_per_epoch=1000)
  if initial is None:
    initial = jax.device_get(step_lib.create_train_state(
        model, optimizer, config.seed, image_size))
  macs = forward_macs(model, {'params': initial.params,
                              'batch_stats': initial.batch_stats},
                      image_size, outputs=LOSS_OUTPUTS)
  state = step_lib.replicate(initial, mesh)
  task = tasks.build(config)
  batch = step_lib.shard_batch(
      synthetic_batch(batch_per_device * jax.local_device_count(), image_size,
                      num_classes, seed=jax.process_index(),
                      images_per_identity=(
                          config.data.images_per_identity
                          if config.data.sampler == 'identity' else 1)), mesh,
      step_lib.step_keys(task))
  train_step = step_lib.make_parallel_train_step(
      mesh, model=model, task=task, optimizer=optimizer)
  start = time.perf_counter()
  lowered = train_step.lower(state, batch)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  # The count before optimisation is a check on the compiled one (a
  # backend could leave out work it hands to library calls) and stands in
  # where the backend has no analysis of compiled programs.
  lowered_flops = xla_flops(lowered)
  return TrainStep(compiled=compiled, state=state, batch=batch,
                   initial=initial, image_size=image_size,
                   compile_s=compile_s,
                   step_flops=xla_flops(compiled) or lowered_flops,
                   lowered_flops=lowered_flops, analytic_macs=macs)


def step_figures(step_s: float, batch_per_device: int, device_count: int,
                 step_flops: Optional[float], analytic_flops_per_image: float,
                 peak: Optional[float], peak_source: str,
                 lowered_flops: Optional[float] = None) -> dict[str, Any]:
  """Rates, FLOPs and MFU of a train step; prints the FLOP lines.

  Args:
    step_s: seconds per step.
    batch_per_device: images per device per step.
    device_count: devices taking part.
    step_flops: XLA's FLOPs of one device's step, or None if unknown.
    analytic_flops_per_image: FLOPs per image from the network's shapes.
    peak: the device's peak FLOP/s, or None if unknown.
    peak_source: where `peak` comes from (why it is None).
    lowered_flops: XLA's FLOPs of one device's unoptimised program, or None.

  Returns:
    ``step_ms``, ``images_per_s`` (total) and ``images_per_s_per_device``,
    FLOPs per step and per image, achieved FLOP/s per device and MFU for
    both counts (`print_flops_and_mfu`); ``null_reasons`` says why a figure
    is None.
  """
  figures = dict(
      step_ms=1e3 * step_s,
      images_per_s=batch_per_device * device_count / step_s,
      images_per_s_per_device=batch_per_device / step_s,
      xla_flops_per_step_per_device=step_flops,
      xla_flops_per_image=step_flops / batch_per_device if step_flops else None,
      xla_lowered_flops_per_image=(lowered_flops / batch_per_device
                                   if lowered_flops else None),
      analytic_flops_per_image=analytic_flops_per_image,
      peak_flops_per_device=peak, peak_source=peak_source)
  print_flops_and_mfu(figures, figures['images_per_s_per_device'],
                      passes='forward MACs x2 x3')

  def reason(key):
    causes = []
    if key == 'xla_lowered_flops_per_image':
      causes.append('XLA\'s cost analysis of the unoptimised program gave no '
                    'FLOP count on this backend')
    elif step_flops is None and 'xla' in key:
      causes.append('XLA\'s cost analysis gave no FLOP count on this backend')
    if peak is None and (key.startswith('mfu') or key.startswith('peak')):
      causes.append(peak_source)
    return '; '.join(causes)

  figures['null_reasons'] = {key: reason(key)
                             for key, value in figures.items() if value is None}
  return figures


def measure_train_step(config, batch_per_device: int, num_classes: int, *,
                       warmup: int, steps: int,
                       peak_tflops: Optional[float] = None,
                       initial: Any = None, recorded_steps: int = 0
                       ) -> tuple[dict[str, Any], TrainStep]:
  """The timed train step: compile, warm-up, time, FLOPs and MFU.

  Args:
    config, batch_per_device, num_classes, initial: as `compile_train_step`.
    warmup: untimed steps after compilation (and the recorded ones).
    steps: timed steps (>= 1).
    peak_tflops: peak dense TFLOP/s per device; None: the table's bf16 peak
      of the device kind (`peak_flops`).
    recorded_steps: steps run first with each loss read back into the
      step's ``losses`` (a correctness check on the timed program).

  Returns:
    (figures, the step): ``compile_s``, ``warmup``, ``steps`` and
    `step_figures`'; the step keeps its state for more steps (a profile).

  Raises:
    RuntimeError: for a non-finite loss after the timed steps.
  """
  step = compile_train_step(config, batch_per_device, num_classes, initial)
  print(f'compile: {step.compile_s:.1f} s', flush=True)
  step.run(recorded_steps)
  step_s = step.time(warmup, steps)
  device_count = jax.device_count()
  print(f'train step: {1e3 * step_s:.2f} ms, '
        f'{batch_per_device * device_count / step_s:.1f} images/s '
        f'({batch_per_device / step_s:.1f} per device; {steps} steps timed '
        f'after {warmup} warm-up)')
  if step.step_flops:
    print(f'per step: XLA {si(step.step_flops, "FLOP")} per device')
  peak, peak_source = peak_flops(jax.devices()[0].device_kind, peak_tflops)
  figures = dict(compile_s=step.compile_s, warmup=warmup, steps=steps,
                 **step_figures(step_s, batch_per_device, device_count,
                                step.step_flops, 6.0 * step.analytic_macs,
                                peak, peak_source, step.lowered_flops))
  return figures, step
