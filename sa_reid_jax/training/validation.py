"""Start-up checks of a training config: every block, before any work.

`check_config` runs first in `run.Run` (before the dataset is read, the
network built or the workdir created) and checks every block of an
experiment config (``training/defaults.py`` documents each key):
run length and logging, dataset, model, data, optimizer, loss,
augmentation, checkpoint, evaluation and report; `check_evaluation_config`
is its part that ``eval.py`` needs. The evaluation protocol's check of the
query and gallery splits (`evaluate.check_evaluation_splits`) runs as soon
as they are read, before training or extraction.

Every error is a ValueError whose message starts with the config key at
fault and says what is allowed (``config.optimizer.learning_rate must be
>= 0, got -0.1``), so that ``train.py`` prints it as one line. Allowed names
come from the modules that use them (`distances.METRICS`,
`sanet.DTYPES`, ...), never from a copy here.
"""

import math
from typing import Any, Iterable

import jax.numpy as jnp
import ml_collections
import numpy as np

from sa_reid_jax import losses
from sa_reid_jax import tasks as tasks_lib
from sa_reid_jax.data import augmentation
from sa_reid_jax.data import samplers
from sa_reid_jax.datasets import builders
from sa_reid_jax.datasets import sources
from sa_reid_jax.datasets.images import check_size
from sa_reid_jax.evaluation import distances
from sa_reid_jax.models import registry
from sa_reid_jax.models import sanet
from sa_reid_jax.models.rga import module as rga_module
from sa_reid_jax.models.rga import network as rga_network
from sa_reid_jax.training import defaults
from sa_reid_jax.training import optimizer as optimizer_lib

# ResNet-50's stages (layer1..4): converted weights and the RGA modules
# (rga_att1..4) expect four.
NUM_STAGES = 4
# The layer4 strides of the recipes: 1 (the re-id "last stride 1") or 2
# (the ImageNet network).
LAST_STRIDES = (1, 2)
# Integer keys of config.model that must be >= 1 where a family has them.
_POSITIVE_MODEL_KEYS = ('base_width', 'num_features', 'num_stripes',
                        'reduced_dim', 'siamese_dim', 'channel_ratio',
                        'spatial_ratio', 'down_ratio')


def _fail(key: str, allowed: str, value: Any):
  raise ValueError(f'config.{key} must be {allowed}, got {value!r}')


def _is_number(value: Any) -> bool:
  # bool is an int to Python, never a count or a rate here.
  return (isinstance(value, (int, float, np.integer, np.floating)) and
          not isinstance(value, bool))


def _integer(key: str, value: Any, minimum: int, note: str = '') -> None:
  """`value` is an integer >= `minimum`; `note` explains a special value."""
  if not (_is_number(value) and float(value).is_integer() and
          value >= minimum):
    _fail(key, f'an integer >= {minimum}{note}', value)


def _number(key: str, value: Any, low: float, high: float = math.inf, *,
            low_open: bool = False, high_open: bool = False) -> None:
  """`value` is a finite number in the interval from `low` to `high`."""
  ok = _is_number(value) and math.isfinite(value)
  if ok:
    ok = ((value > low if low_open else value >= low) and
          (value < high if high_open else value <= high))
  if math.isinf(high):
    allowed = f'{">" if low_open else ">="} {low:g}'
  else:
    allowed = (f'in {"(" if low_open else "["}{low:g}, {high:g}'
               f'{")" if high_open else "]"}')
  if not ok:
    _fail(key, allowed, value)


def _one_of(key: str, value: Any, choices: Iterable[Any]) -> None:
  choices = tuple(sorted(choices) if isinstance(choices, dict) else choices)
  if value not in choices:
    _fail(key, f'one of {choices}', value)


def _boolean(key: str, value: Any) -> None:
  if not isinstance(value, (bool, np.bool_)):
    _fail(key, 'True or False', value)


def _size(key: str, value: Any) -> None:
  check_size(value, f'config.{key}')


def check_init_from(init_from: str) -> None:
  """Refuses an empty init_from: a forgotten backbone is never silent.

  Raises:
    ValueError: naming config.init_from and how to set it.
  """
  if not init_from:
    raise ValueError(
        'config.init_from is empty: pass --config.init_from=DIR with DIR '
        'written by `python convert_weights.py --format=torchvision '
        '--input=resnet50-19c8e357.pth --output=DIR` (torchvision\'s '
        'original ImageNet weights, the backbone the paper starts from), or '
        f'--config.init_from={defaults.SCRATCH} to train from random weights')


def random_erasing(config: ml_collections.ConfigDict
                   ) -> augmentation.RandomErasing | None:
  """config.augmentation's random erasing, or None when it is off.

  Raises:
    ValueError: for out-of-range erasing settings (unprefixed: see
      `check_config`).
  """
  if config.erasing_probability == 0:
    return None
  return augmentation.RandomErasing(
      probability=config.erasing_probability,
      area_range=tuple(config.erasing_area),
      min_aspect=config.erasing_min_aspect, fill=config.erasing_fill)


def random_crop(config: ml_collections.ConfigDict
                ) -> augmentation.RandomCrop | None:
  """config.augmentation's random crop, or None when it is off.

  Raises:
    ValueError: for a bad crop probability or scale, even when off.
  """
  # Built (and so checked) even when off: a bad crop_scale is an error.
  crop = augmentation.RandomCrop(probability=config.crop_probability,
                                 scale=config.crop_scale)
  return crop if crop.probability > 0 else None


def check_config(config: ml_collections.ConfigDict, device_count: int = 1,
                 process_count: int = 1) -> None:
  """Checks every block of an experiment config before anything runs.

  Args:
    config: an experiment config (``configs/``).
    device_count: devices the global batch is split over.
    process_count: processes that each read a share of the batch.

  Raises:
    ValueError: for the first key at fault, its message starting with the
      key (``config.eval.metric must be one of ('euclidean', 'cosine'),
      got 'manhattan'``): an empty init_from, a value out of its range or
      not among its choices, a batch size the devices, processes or
      sampler cannot split, an unknown dataset name, loss or
      augmentation settings that cannot train.
  """
  check_init_from(config.init_from)
  _check_run(config)
  _check_dataset(config.dataset)
  _check_model(config.model)
  _check_batches(config, device_count, process_count)
  _check_optimizer(config.optimizer)
  losses.check_settings(config)
  # The task's own checks (its name, the CASN block) cost nothing here.
  tasks_lib.build(config)
  _check_augmentation(config.augmentation)
  for key in ('every_steps', 'keep', 'sigterm_check_steps'):
    _integer(f'checkpoint.{key}', config.checkpoint[key], 1)
  _check_eval(config.eval)
  extra_train_blocks(config)
  extra_target_blocks(config)


def _check_run(config: ml_collections.ConfigDict) -> None:
  # The report's random queries draw with numpy, which refuses negatives.
  _integer('seed', config.seed, 0)
  _one_of('task', config.task, tasks_lib.TASKS)
  _integer('num_epochs', config.num_epochs, 1)
  _integer('max_steps', config.max_steps, 0, ' (0: the whole schedule)')
  _integer('log_every_steps', config.log_every_steps, 1)
  _integer('prefetch_batches', config.prefetch_batches, 1)
  # Checked now rather than where it is first used, inside a traced step
  # or a tf.data pipeline.
  _size('image_size', config.image_size)


def _check_dataset(dataset: ml_collections.ConfigDict) -> None:
  # Both list and folder set, an unknown layout, a list file without its
  # columns.
  sources.check_block(dataset)
  if dataset.folder or dataset.get('list', ''):
    return  # its images are checked when it is read, naming the key
  # TFDS answers an unknown name with every dataset it knows.
  if dataset.name not in builders.dataset_names():
    raise ValueError(builders.unknown_dataset(dataset.name))


def _check_model(model: ml_collections.ConfigDict) -> None:
  # Names config.model.family, config.model.variant or a key the family's
  # network does not have.
  registry.check_block(model)
  _boolean('model.sync_batch_norm', model.sync_batch_norm)
  # The keys below are checked where a family has them (every family here
  # has the ResNet's; a new family need not).
  if 'dtype' in model:
    try:
      dtype = jnp.dtype(model.dtype).name
    except (TypeError, ValueError):
      dtype = None  # not a dtype name at all ('float8')
    if dtype not in sanet.DTYPES:
      _fail('model.dtype', f'one of {sanet.DTYPES}', model.dtype)
  if 'stage_sizes' in model:
    stages = tuple(model.stage_sizes)
    if len(stages) != NUM_STAGES or not all(
        _is_number(n) and float(n).is_integer() and n >= 1 for n in stages):
      _fail('model.stage_sizes', f'{NUM_STAGES} integers >= 1 (blocks per '
            'ResNet stage)', stages)
  if 'last_stride' in model:
    _one_of('model.last_stride', model.last_stride, LAST_STRIDES)
  for key in _POSITIVE_MODEL_KEYS:
    if key in model:
      _integer(f'model.{key}', model[key], 1)
  if 'dropout_rate' in model:
    _number('model.dropout_rate', model.dropout_rate, 0, 1, high_open=True)
  if 'attention_normalization' in model:
    _one_of('model.attention_normalization', model.attention_normalization,
            sanet.NORMALIZATIONS)
  if 'descriptor' in model:
    _one_of('model.descriptor', model.descriptor, rga_network.DESCRIPTORS)
  if 'module_bn_scale_init' in model:
    rga_module.check_bn_scale_init(model.module_bn_scale_init)


def _check_batches(config: ml_collections.ConfigDict, device_count: int,
                   process_count: int) -> None:
  _integer('batch_size', config.batch_size, 1)
  if config.batch_size % device_count:
    raise ValueError(f'config.batch_size {config.batch_size} must be a '
                     f'multiple of the number of devices ({device_count})')
  if config.batch_size % process_count:
    raise ValueError(f'config.batch_size {config.batch_size} must be a '
                     f'multiple of the number of processes ({process_count})')
  _one_of('data.sampler', config.data.sampler, samplers.SAMPLERS)
  if config.data.sampler in samplers.P_K_SAMPLERS:
    per_identity = config.data.images_per_identity
    if per_identity < 1 or config.batch_size % per_identity:
      raise ValueError(
          f'config.batch_size {config.batch_size} must be a multiple of '
          f'config.data.images_per_identity {per_identity} (>= 1): a batch '
          'holds batch_size / images_per_identity identities')


def _check_optimizer(optimizer: ml_collections.ConfigDict) -> None:
  # The schedule's own checks: name, decay epochs or milestones, warm-up.
  optimizer_lib.learning_rate_schedules(optimizer, steps_per_epoch=1)
  # A negative rate is gradient ascent, and trains without an error; 0
  # keeps the weights (a check that a step changes nothing else).
  _number('optimizer.learning_rate', optimizer.learning_rate, 0)
  # 0 leaves the backbone at its initial (e.g. ImageNet) weights.
  _number('optimizer.backbone_lr_multiplier',
          optimizer.backbone_lr_multiplier, 0)
  _number('optimizer.weight_decay', optimizer.weight_decay, 0)
  _number('optimizer.decay_factor', optimizer.decay_factor, 0, 1,
          low_open=True)
  _number('optimizer.momentum', optimizer.momentum, 0, 1, high_open=True)
  _boolean('optimizer.nesterov', optimizer.nesterov)
  for key in ('adam_b1', 'adam_b2'):
    _number(f'optimizer.{key}', optimizer[key], 0, 1, high_open=True)
  _number('optimizer.adam_epsilon', optimizer.adam_epsilon, 0, low_open=True)


def _check_augmentation(aug: ml_collections.ConfigDict) -> None:
  _number('augmentation.flip_probability', aug.flip_probability, 0, 1)
  try:
    random_erasing(aug)
    random_crop(aug)
  except ValueError as e:
    # The augmentation classes name their own fields (RandomErasing.fill).
    raise ValueError(f'config.augmentation: {e}') from e
  _boolean('augmentation.on_device', aug.on_device)
  _size('augmentation.staging_size', aug.staging_size)


def check_evaluation_config(config: ml_collections.ConfigDict) -> None:
  """The checks of `check_config` that an evaluation of a saved model needs
  (``eval.py``): dataset, image size, model and evaluation blocks, before
  the model is loaded or any feature extracted.

  Raises:
    ValueError: for the first key at fault, as `check_config`.
  """
  _check_dataset(config.dataset)
  _size('image_size', config.image_size)
  _check_model(config.model)
  _check_eval(config.eval)
  extra_target_blocks(config)


def _spec_blocks(config: ml_collections.ConfigDict, block: str, key: str
                 ) -> list[ml_collections.ConfigDict]:
  specs = config[block].get(key, '')
  if not isinstance(specs, str):
    _fail(f'{block}.{key}', 'a string of comma-separated dataset specs',
          specs)
  blocks = sources.blocks_from_specs(specs, f'config.{block}.{key}',
                                     config.dataset.data_dir)
  for dataset in blocks:
    # A list file's header, before any image is read.
    sources.check_block(dataset)
  return blocks


def extra_train_blocks(config: ml_collections.ConfigDict
                       ) -> list[ml_collections.ConfigDict]:
  """The dataset blocks of ``config.dataset.extra_train`` (one per spec,
  `sources.block_from_spec`; TFDS names read from
  ``config.dataset.data_dir``).

  Raises:
    ValueError: naming config.dataset.extra_train and the spec at fault (a
      bad spec, or a list file that is missing or lacks a column).
  """
  return _spec_blocks(config, 'dataset', 'extra_train')


def extra_target_blocks(config: ml_collections.ConfigDict
                        ) -> list[ml_collections.ConfigDict]:
  """The dataset blocks of ``config.eval.extra_targets``, as
  `extra_train_blocks` (errors naming config.eval.extra_targets)."""
  return _spec_blocks(config, 'eval', 'extra_targets')


def _check_eval(evaluation: ml_collections.ConfigDict) -> None:
  # Each of these would otherwise stop the run at its first evaluation,
  # after training, with a message naming an argument rather than the key.
  _integer('eval.every_epochs', evaluation.every_epochs, 0,
           ' (0: only at the end)')
  for key in ('at_start', 'flip', 'rerank', 'report'):
    _boolean(f'eval.{key}', evaluation[key])
  _integer('eval.batch_size', evaluation.batch_size, 1)
  _one_of('eval.metric', evaluation.metric, distances.METRICS)
  _integer('eval.max_rank', evaluation.max_rank, 1)
  # Re-ranking's ranges (rerank.re_rank), checked with re-ranking off too:
  # eval.py can switch it on for a trained run.
  _integer('eval.k1', evaluation.k1, 1)
  _integer('eval.k2', evaluation.k2, 1)
  _number('eval.lambda_value', evaluation.lambda_value, 0, 1)
  _integer('eval.report_hardest', evaluation.report_hardest, 0)
  _integer('eval.report_random', evaluation.report_random, 0)
  _integer('eval.report_topk', evaluation.report_topk, 1)
  _size('eval.report_thumbnail', evaluation.report_thumbnail)
  fprs = evaluation.verification_fprs
  if not isinstance(fprs, (tuple, list)) or not fprs:
    _fail('eval.verification_fprs', 'a non-empty list of FPRs in (0, 1)',
          fprs)
  for i, fpr in enumerate(fprs):
    _number(f'eval.verification_fprs[{i}]', fpr, 0, 1, low_open=True,
            high_open=True)
