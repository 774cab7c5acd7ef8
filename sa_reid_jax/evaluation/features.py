"""Retrieval descriptors of a stream of image batches."""

import collections.abc
import functools
import sys
import time
from typing import Any, Iterable, Mapping, Optional, Sequence, TextIO

import jax
import jax.numpy as jnp
import numpy as np

from sa_reid_jax.evaluation.distances import aligned_empty
from sa_reid_jax.models import devices as devices_lib
from sa_reid_jax.models import registry
from sa_reid_jax.models.sanet import l2_normalize


def extract_features(model, variables, batches: Iterable[Mapping[str, Any]],
                     flip: bool = False, total: Optional[int] = None,
                     progress: bool = True, description: str = 'features',
                     log_interval_s: float = 10.0,
                     stream: Optional[TextIO] = None,
                     devices: Optional[Sequence[jax.Device]] = None
                     ) -> np.ndarray:
  """Runs the model over batches and keeps one descriptor per real image.

  The forward pass is one jit-compiled function (compiled once per batch
  shape, so a padded last batch costs no recompilation), split over every
  local device (`models.devices`, as `FeatureExtractor`): each batch is
  padded with masked rows to a multiple of the device count, its rows
  split over the devices, the variables replicated on each. Batch n + 1 is
  dispatched before batch n's descriptors are copied to the host.

  Args:
    model: a Flax module whose ``model.apply(variables, images, train=False)``
      returns a dict with ``'features'``: (B, P, D) float32, each part
      L2-normalised (e.g. `SANet`).
    variables: the model's variables (params and batch_stats).
    batches: iterable of dicts with ``'images'`` (B, H, W, 3) float32 and
      ``'mask'`` (B,) bool, False for padding rows (all True when absent).
    flip: test-time augmentation: average each image's descriptor with its
      horizontally mirrored image's, then L2-normalise each part again.
    total: number of real images, for the progress percentage (optional).
    progress: report images done and images/s: one self-updating line on a
      terminal, a plain line every `log_interval_s` seconds otherwise.
    description: label of the progress lines.
    log_interval_s: seconds between progress lines when not on a terminal.
    stream: where progress goes (default sys.stdout).
    devices: the devices to split batches over (default
      ``jax.local_devices()``).

  Returns:
    (num_real_images, P, D) float32 numpy array, in input order.

  Raises:
    ValueError: for a batch without images, with images that are not 4-D, a
      mask of the wrong shape or dtype, or when `batches` is empty.
  """
  reporter = _ProgressReporter(description, total, log_interval_s,
                               stream or sys.stdout) if progress else None
  parallel = devices_lib.data_parallel(devices)
  variables = jax.device_put(variables, parallel.replicated)
  kept = []
  pending = None
  for index, batch in enumerate(batches):
    images, mask = _check_batch(batch, index)
    size = parallel.padded_size(len(mask))
    if size != len(mask):
      images = np.concatenate([np.asarray(images), np.zeros(
          (size - len(mask), *images.shape[1:]), images.dtype)])
      mask = np.concatenate([mask, np.zeros(size - len(mask), bool)])
    descriptors = _descriptors(model, variables,
                               jax.device_put(images, parallel.batch),
                               flip=flip)
    if pending is not None:
      kept.append(_collect(*pending, reporter))
    pending = (descriptors, mask)
  if pending is None:
    raise ValueError('batches is empty: no images to describe')
  kept.append(_collect(*pending, reporter))
  if reporter is not None:
    reporter.finish()
  # 64-byte-aligned, so that the distance computations can share it with
  # the CPU device instead of copying it (`distances.device_descriptors`).
  out = aligned_empty((sum(len(k) for k in kept),) + kept[0].shape[1:],
                      kept[0].dtype)
  np.concatenate(kept, out=out)
  return out


@functools.partial(jax.jit, static_argnames=('model', 'flip'))
def _descriptors(model, variables, images, flip):
  """(B, P, D) descriptors of a batch, with optional flip averaging."""
  if not flip:
    return registry.embed(model, variables, images)
  # Width is axis 2 in NHWC; both views go through the network as one batch.
  both = jnp.concatenate([images, images[:, :, ::-1, :]], axis=0)
  plain, mirrored = jnp.split(registry.embed(model, variables, both), 2)
  return l2_normalize((plain + mirrored) / 2, axis=-1)


def _check_batch(batch, index):
  """(images as numpy or JAX, mask as numpy bool) of a validated batch."""
  if not isinstance(batch, collections.abc.Mapping) or 'images' not in batch:
    raise ValueError(f'batch {index}: expected a dict with "images" (B, H, W, '
                     f'3) and "mask" (B,), got {type(batch).__name__}')
  images = batch['images']
  if not isinstance(images, jax.Array):
    images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f'batch {index}: images must be (B, H, W, 3), got shape '
                     f'{images.shape}')
  if 'mask' not in batch:
    return images, np.ones(images.shape[0], dtype=bool)
  mask = np.asarray(batch['mask'])
  if mask.shape != (images.shape[0],) or mask.dtype != bool:
    raise ValueError(f'batch {index}: mask must be bool of shape '
                     f'({images.shape[0]},) like images {images.shape}, got '
                     f'{mask.dtype} {mask.shape}')
  return images, mask


def _collect(descriptors, mask, reporter):
  """Host copy of the real rows of a batch's descriptors."""
  rows = np.asarray(descriptors)[mask]
  if reporter is not None:
    reporter.add(len(rows))
  return rows


class _ProgressReporter:
  """Images done and images/s, on one line (terminal) or periodic lines."""

  def __init__(self, description, total, log_interval_s, stream):
    self._description = description
    self._total = total
    self._interval = log_interval_s
    self._stream = stream
    try:
      self._on_terminal = stream.isatty()
    except (AttributeError, ValueError):
      self._on_terminal = False
    self._start = time.perf_counter()
    self._last_report = self._start
    self._done = 0

  def add(self, count):
    self._done += count
    now = time.perf_counter()
    interval = 0.2 if self._on_terminal else self._interval
    if now - self._last_report >= interval:
      self._last_report = now
      self._write(self._line(now), final=False)

  def finish(self):
    self._write(self._line(time.perf_counter()) + ' done', final=True)

  def _line(self, now):
    rate = self._done / max(now - self._start, 1e-9)
    if self._total:
      fraction = min(self._done / self._total, 1.0)
      bar = '#' * int(20 * fraction)
      done = (f'[{bar:<20}] {self._done}/{self._total} images '
              f'({100 * fraction:.0f}%)')
    else:
      done = f'{self._done} images'
    return f'{self._description}: {done}, {rate:.1f} images/s'

  def _write(self, line, final):
    if self._on_terminal:
      self._stream.write('\r' + line + ('\n' if final else ''))
    else:
      self._stream.write(line + '\n')
    self._stream.flush()
