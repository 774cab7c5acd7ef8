"""The accelerator run's inference sections (accelerator.py).

* ``augmentation``: `device_augment.augment_batch` images/s at the SA
  step's batch, beside the step's rate;
* ``extraction``: bench_infer.py's descriptor rate (bfloat16);
* ``converted_checkpoint``: an official-layout checkpoint of the PyTorch
  reference (seeded random weights) converted by `sa_reid_jax.convert`; the
  network's outputs on the default device equal to those on the CPU within
  `CONVERTED_TOLERANCE`.

Each section is ``section(settings, context) -> figures``, as in
accelerator_training.py.
"""

import contextlib
import io
import json
import os
import sys
import tempfile
import time
from typing import Any, Callable

# pylint: disable=g-bad-import-order
import bench_infer
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from accelerator_training import family_config
from sa_reid_jax.data import device_augment
from sa_reid_jax.training import step as step_lib

_TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), 'tests')
# Converted network, default device vs CPU, float32 at 'highest' matmul
# precision (no TF32): max|delta| <= tolerance x max|CPU output|, the parity
# tests' bound for two float32 implementations of the same 50 layers
# (different summation orders leave about 1e-6 of the output's scale).
CONVERTED_TOLERANCE = 1e-4
# The network outputs compared for the converted checkpoint.
CONVERTED_OUTPUTS = ('features', 'part_logits', 'global_logits', 'ds_logits')


class _Tee(io.TextIOBase):
  """Writes to the real stdout and keeps a copy."""

  def __init__(self, stream):
    super().__init__()
    self.stream, self.copy = stream, io.StringIO()

  def write(self, text):
    self.stream.write(text)
    return self.copy.write(text)

  def flush(self):
    self.stream.flush()


def _last_json(run: Callable[[], None]) -> dict[str, Any]:
  """Runs a benchmark's ``main`` (printing as usual); its last JSON line."""
  tee = _Tee(sys.stdout)
  with contextlib.redirect_stdout(tee):
    run()
  lines = [line for line in tee.copy.getvalue().splitlines()
           if line.startswith('{')]
  if not lines:
    raise RuntimeError('the benchmark printed no JSON line')
  return json.loads(lines[-1])


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
  """max|actual - expected| / max|expected| (0 when both are all zero).

  Raises:
    ValueError: for different shapes.
  """
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected,
                                                                np.float64)
  if actual.shape != expected.shape:
    raise ValueError(f'shapes differ: {actual.shape} vs {expected.shape}')
  scale = np.max(np.abs(expected), initial=0.0)
  delta = np.max(np.abs(actual - expected), initial=0.0)
  return float(delta / scale) if scale else float(delta)


def staged_batch(count: int, staging_size: tuple[int, int],
                 image_size: tuple[int, int], erasing_probability: float,
                 seed: int = 0) -> dict[str, np.ndarray]:
  """What `train_batches(augment_on_device=True)` emits, drawn at random:
  uint8 images, flips, erasing boxes inside `image_size` (with
  `erasing_probability`; height 0 for none) and noise seeds."""
  rng = np.random.default_rng(seed)
  height, width = image_size
  box_height = rng.integers(1, height // 2 + 1, count)
  box_width = rng.integers(1, width // 2 + 1, count)
  erased = rng.random(count) < erasing_probability
  boxes = np.stack([rng.integers(0, height - box_height + 1),
                    rng.integers(0, width - box_width + 1),
                    np.where(erased, box_height, 0), box_width], axis=1)
  return dict(
      images=rng.integers(0, 256, (count, *staging_size, 3), np.uint8),
      flip=rng.random(count) < 0.5, erase_box=boxes.astype(np.int32),
      noise_seed=rng.integers(0, 2**31, (count, 2)).astype(np.int32))


def augmentation_section(settings, context: dict[str, Any]
                         ) -> dict[str, Any]:
  """`augment_batch` over every device, at the SA step's batch and size."""
  config = family_config('sa', 'bfloat16', settings.tiny)
  mesh = step_lib.make_mesh()
  sharding = NamedSharding(mesh, PartitionSpec(step_lib.DATA_AXIS))
  image_size = tuple(config.image_size)
  local = staged_batch(settings.batch_per_device * jax.local_device_count(),
                       settings.staging_size, image_size,
                       config.augmentation.erasing_probability)
  batch = {key: jax.make_array_from_process_local_data(sharding, value)
           for key, value in local.items()}
  augment = jax.jit(lambda batch: device_augment.augment_batch(
      batch, image_size, config.augmentation.erasing_fill))
  images = augment(batch)
  for _ in range(settings.warmup):
    images = augment(batch)
  jax.block_until_ready(images)
  start = time.perf_counter()
  for _ in range(settings.steps):
    images = augment(batch)
  jax.block_until_ready(images)
  batch_s = (time.perf_counter() - start) / settings.steps
  if not np.isfinite(np.asarray(images.addressable_data(0))).all():
    raise RuntimeError('non-finite augmented images')
  per_device = settings.batch_per_device / batch_s
  step_rate = context.get('sa_images_per_s_per_device')
  figures = dict(staging_size=list(settings.staging_size),
                 image_size=list(image_size),
                 fill=config.augmentation.erasing_fill,
                 batch_per_device=settings.batch_per_device,
                 batch_ms=1e3 * batch_s,
                 images_per_s=per_device * jax.device_count(),
                 images_per_s_per_device=per_device,
                 sa_step_images_per_s_per_device=step_rate,
                 # Time added to a step by augmenting its batch, relative.
                 share_of_sa_step=step_rate / per_device if step_rate else None,
                 null_reasons={})
  if step_rate is None:
    for key in ('sa_step_images_per_s_per_device', 'share_of_sa_step'):
      figures['null_reasons'][key] = 'the sa section has no rate'
  print(f'augmentation: {per_device:.1f} images/s per device', flush=True)
  return figures


def extraction_section(settings, context: dict[str, Any]
                       ) -> dict[str, Any]:
  """bench_infer.py's figures for the SA network, bfloat16."""
  del context
  config = family_config('sa', 'bfloat16', settings.tiny)
  argv = [f'--batch_per_device={settings.extraction_batch_per_device}',
          '--dtype=bfloat16', '--variant=full',
          f'--image_size={",".join(map(str, config.image_size))}',
          f'--stage_sizes={",".join(map(str, config.model.stage_sizes))}',
          f'--base_width={config.model.base_width}',
          f'--num_classes={settings.num_classes}', f'--steps={settings.steps}',
          f'--warmup={settings.warmup}', '--json']
  figures = _last_json(lambda: bench_infer.main(argv))
  figures['null_reasons'] = {
      key: figures['peak_source'] for key, value in figures.items()
      if value is None}
  return figures


def converted_section(settings, context: dict[str, Any]
                      ) -> dict[str, Any]:
  """An official checkpoint, converted; default device vs CPU outputs."""
  del context
  sys.path.insert(0, _TESTS)
  import torch
  import sa_reid_jax
  from sa_reid_jax import convert
  from torch_reference import OfficialSANet, randomize, to_nhwc
  torch.manual_seed(0)
  size = settings.converted_image_size
  reference = randomize(OfficialSANet(settings.num_classes),
                        torch.randn(4, 3, *size), seed=1)
  images = torch.randn(settings.converted_images, 3, *size,
                       generator=torch.Generator().manual_seed(2))
  with tempfile.TemporaryDirectory() as folder:
    checkpoint = os.path.join(folder, 'checkpoint.pth.tar')
    torch.save({'state_dict': reference.state_dict(), 'epoch': 0,
                'best_top1': 0.0}, checkpoint)
    result = convert.convert_checkpoint('sa_official', checkpoint,
                                        os.path.join(folder, 'converted'))
    model, variables = sa_reid_jax.load_model(result.output)
  variables = jax.device_get(variables)
  apply = jax.jit(lambda v, x: {k: model.apply(v, x, train=False)[k]
                                for k in CONVERTED_OUTPUTS})
  outputs = {}
  for name, device in (('device', jax.devices()[0]),
                       ('cpu', jax.devices('cpu')[0])):
    with jax.default_matmul_precision('highest'):
      outputs[name] = jax.device_get(apply(
          jax.device_put(variables, device),
          jax.device_put(to_nhwc(images), device)))
  with torch.no_grad():
    torch_outputs = reference.eval()(images)
  errors = {k: relative_error(outputs['device'][k], outputs['cpu'][k])
            for k in CONVERTED_OUTPUTS}
  torch_errors = {k: relative_error(outputs['cpu'][k],
                                    torch_outputs[k].numpy())
                  for k in CONVERTED_OUTPUTS}
  worst = max(errors.values())
  print(f'converted checkpoint: device vs CPU {worst:.2e} (bound '
        f'{CONVERTED_TOLERANCE:g}); CPU vs PyTorch '
        f'{max(torch_errors.values()):.2e}', flush=True)
  return dict(image_size=list(size), images=settings.converted_images,
              num_classes=settings.num_classes,
              device=str(jax.devices()[0]), summary=result.summary(),
              device_vs_cpu=errors, cpu_vs_torch=torch_errors,
              tolerance=CONVERTED_TOLERANCE,
              passed=worst <= CONVERTED_TOLERANCE)
