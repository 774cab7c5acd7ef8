"""Where training metrics go: TensorBoard, a JSON-lines file, the console."""

import json
import os
import sys
import time
from typing import Any, Optional, TextIO

import numpy as np

METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'


class MetricWriter:
  """Scalars to TensorBoard (``workdir/tensorboard``) and ``metrics.jsonl``.

  Only process 0 writes; on the other processes every call does nothing.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self._enabled = enabled
    self.tensorboard_dir = os.path.join(os.path.abspath(workdir),
                                        TENSORBOARD_DIR)
    if not enabled:
      return
    # Imported here: TensorBoard's writer pulls in TensorFlow.
    from flax.metrics import tensorboard  # pylint: disable=g-import-not-at-top
    self._summary = tensorboard.SummaryWriter(self.tensorboard_dir)
    self._jsonl = open(os.path.join(workdir, METRICS_FILE), 'a')

  def write(self, step: int, scalars: dict[str, float], prefix: str) -> None:
    """Writes `scalars` at `step` under ``prefix/name``."""
    if not self._enabled:
      return
    for name, value in scalars.items():
      self._summary.scalar(f'{prefix}/{name}', float(value), step)
    self._summary.flush()
    record = {'step': int(step), 'kind': prefix,
              **{k: float(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()

  def close(self) -> None:
    if self._enabled:
      self._summary.close()
      self._jsonl.close()


# Metrics logged as their value at the logged step, not as a mean over the
# interval: a learning rate is a setting of the step, and a mean would mix
# the rates on both sides of a decay.
LAST_VALUE_PREFIXES = ('learning_rate_',)


class MetricAverager:
  """Running means of the step metrics between two log lines (the last
  value of those named by `LAST_VALUE_PREFIXES`)."""

  def __init__(self):
    self._sums: dict[str, float] = {}
    self._last: dict[str, float] = {}
    self._count = 0

  def add(self, metrics: dict[str, Any]) -> None:
    for key, value in metrics.items():
      if key.startswith(LAST_VALUE_PREFIXES):
        self._last[key] = float(value)
      else:
        self._sums[key] = self._sums.get(key, 0.0) + float(value)
    self._count += 1

  def pop(self) -> dict[str, float]:
    """The means since the last call (empty if nothing was added)."""
    means = {k: v / self._count for k, v in self._sums.items()}
    means.update(self._last)
    self._sums, self._last, self._count = {}, {}, 0
    return means


def _clock(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  return (f'{hours}:{rest // 60:02d}:{rest % 60:02d}' if hours
          else f'{rest // 60}:{rest % 60:02d}')


class Progress:
  """Step, loss, images/s and ETA: a bar on a terminal, plain lines else.

  On a terminal the line rewrites itself at most 5 times a second; otherwise
  a line is written each time `update` is told to (``force``).

  The rates (and so the ETA) count from the first step this process reports
  done (the first `update`, or `images_per_second`), not from the process's
  start: the start-up before it (restoring a checkpoint, compiling, the
  first step's own compilation) is not training speed, and would make the
  first lines of a run, or of a resumed run, far too slow. Until a second
  step is done the rate is unknown and shown as ``?``.
  """

  def __init__(self, first_step: int, total_steps: int, global_batch: int,
               stream: Optional[TextIO] = None):
    self._stream = stream or sys.stdout
    try:
      self._on_terminal = self._stream.isatty()
    except (AttributeError, ValueError):
      self._on_terminal = False
    self._first = first_step
    self._total = total_steps
    self._batch = global_batch
    self._last_draw = 0.0
    # (step, time) of the first step reported done; None before it.
    self._timed_from: Optional[tuple[int, float]] = None
    self._interval_start: Optional[tuple[int, float]] = None

  def _timing_starts(self, step: int, now: float) -> None:
    """Marks the end of start-up at the first step reported done."""
    if self._timed_from is None:
      self._timed_from = (step, now)
      self._interval_start = (step, now)

  def images_per_second(self, step: int) -> Optional[float]:
    """Throughput since the previous call (or the first step done), then
    resets; None when no step was done since (e.g. at the first step)."""
    now = time.perf_counter()
    self._timing_starts(step, now)
    first, since = self._interval_start
    self._interval_start = (step, now)
    if step <= first:
      return None
    return (step - first) * self._batch / max(now - since, 1e-9)

  def reset_interval(self, step: int) -> None:
    """Starts the next throughput interval now (e.g. after an evaluation)."""
    if self._timed_from is not None:
      self._interval_start = (step, time.perf_counter())

  def update(self, step: int, loss: float, force: bool = False) -> None:
    """Reports that `step` steps are done, with the latest loss."""
    now = time.perf_counter()
    self._timing_starts(step, now)
    if self._on_terminal and now - self._last_draw < 0.2 and not force:
      return
    if not self._on_terminal and not force:
      return
    self._last_draw = now
    timed_step, timed_since = self._timed_from
    done = step - timed_step
    rate = done / max(now - timed_since, 1e-9) if done > 0 else 0.0
    eta = (self._total - step) / rate if rate > 0 else float('inf')
    fraction = step / max(self._total, 1)
    speed = f'{self._batch * rate:.1f}' if done > 0 else '?'
    text = (f'step {step}/{self._total} ({100 * fraction:.0f}%)  loss '
            f'{loss:.4f}  {speed} images/s  '
            f'ETA {_clock(eta) if np.isfinite(eta) else "?"}')
    if self._on_terminal:
      bar = '#' * int(24 * fraction)
      self._stream.write(f'\r[{bar:<24}] {text}\x1b[K')
    else:
      self._stream.write(text + '\n')
    self._stream.flush()

  def close(self) -> None:
    if self._on_terminal:
      self._stream.write('\n')
      self._stream.flush()
