"""One training run between its steps: checked config, data, model, evaluation.

`Run` holds what the step loop (`loop`) and `trainer.train_and_evaluate`
share: the train table and its sampler, the model and optimizer, the
checkpoint manager and metric writer, and the evaluations made so far.
"""

import json
import os
from typing import Any, Callable, Optional, Sequence

import flax
import jax
import ml_collections
import numpy as np

from sa_reid_jax import losses
from sa_reid_jax import tasks as tasks_lib
from sa_reid_jax.data import samplers
from sa_reid_jax.datasets import sources
from sa_reid_jax.datasets import tables
from sa_reid_jax.evaluation import evaluate
from sa_reid_jax.models import registry
from sa_reid_jax.models import resnet as resnet_lib
from sa_reid_jax.models import store
from sa_reid_jax.training import checkpoints
from sa_reid_jax.training import defaults
from sa_reid_jax.training import optimizer as optimizer_lib
from sa_reid_jax.training import reporting
from sa_reid_jax.training import step as step_lib
from sa_reid_jax.training import validation
from sa_reid_jax.training import workdir as workdir_lib

EVALUATIONS_JSON = 'evaluations.json'
# (`Run.evaluate` hides the module's name inside the class.)
_Evaluation = evaluate.Evaluation


class NonFiniteLossError(FloatingPointError):
  """The loss or the gradient became NaN or infinite."""


def _train_table(dataset: ml_collections.ConfigDict,
                 log: Callable[[str], None] = print,
                 evaluated: Optional[bool] = None) -> tables.ExampleTable:
  """The train table of a dataset block, its evaluation splits checked.

  The query and gallery splits are read too where the block has them (a
  train-only dataset has neither, `sources.has_evaluation_splits`), every
  image checked readable, and checked scorable, so that a fault in them
  stops the run now, not at its evaluation after training. The train split
  needs no cameras.

  Raises:
    LayoutError: starting with the block's key (config.dataset.list,
      config.dataset.folder, or config.dataset.extra_train and the spec),
      for a source that cannot be read (`sources.read_splits`), or listing
      its unreadable images.
    ValueError: for a TFDS dataset that is not built, or splits in which
      no query has a true match in the gallery (naming the source).
  """
  if evaluated is None:  # the caller may know it already (_read_sources)
    evaluated = sources.has_evaluation_splits(dataset, log)
  read = sources.read_splits(
      dataset, sources.SPLITS if evaluated else ('train',), log)
  if evaluated:
    evaluate.check_evaluation_splits(read['query'], read['gallery'], dataset,
                                     log)
  return read['train']


def _read_sources(config: ml_collections.ConfigDict,
                  log: Callable[[str], None] = print
                  ) -> tuple[tables.ExampleTable, bool,
                             list[ml_collections.ConfigDict]]:
  """The train table of the config's sources, every evaluation split checked.

  The train splits of config.dataset (`_train_table`) and of each spec of
  config.dataset.extra_train are joined with their identities kept apart
  (`sources.union_train`; one line per source when there are several).
  The query and gallery splits of every spec of config.eval.extra_targets
  are read and checked as config.dataset's are, so that a fault in any
  source or target stops the run before its first step.

  Returns:
    (the train table, whether config.dataset is evaluated, the blocks of
    config.eval.extra_targets).

  Raises:
    LayoutError: as `_train_table`, also for an extra train source without
      a train split and a target without its query or gallery split (each
      naming the key and the spec).
    ValueError: as `_train_table`, also for a bad spec.
  """
  dataset = config.dataset
  evaluates_main = sources.has_evaluation_splits(dataset, log)
  train = [(sources.spec_of(dataset),
            _train_table(dataset, log, evaluates_main))]
  for block in validation.extra_train_blocks(config):
    train.append((block.spec, sources.read_splits(block, ('train',),
                                                  log)['train']))
  targets = validation.extra_target_blocks(config)
  for block in targets:
    read = sources.read_splits(block, ('query', 'gallery'), log)
    evaluate.check_evaluation_splits(read['query'], read['gallery'], block,
                                     log)
  if len(train) > 1:
    for i, (spec, table) in enumerate(train, start=1):
      log(sources.train_source_line(i, len(train), spec, table))
  table = sources.union_train([t for _, t in train])
  if len(train) > 1:
    log(f'training on the union: {table.num_classes:,} identities, '
        f'{len(table):,} images')
  if not evaluates_main:
    where = f'{sources.describe(dataset)} has no query and gallery splits'
    if targets:
      log(f'{where}: no evaluation during training; the final evaluation '
          f'is on config.eval.extra_targets only ({len(targets)} '
          f'target{"s" if len(targets) > 1 else ""})')
    else:
      log(f'no evaluation: {where} and config.eval.extra_targets is empty; '
          'training runs without evaluation (metrics.json records it; the '
          'model directory is still written)')
  return table, evaluates_main, targets


def _build_sampler(config: ml_collections.ConfigDict,
                   table: tables.ExampleTable) -> samplers.Sampler:
  """The sampler of config.data over the train table's identities."""
  try:
    sampler = samplers.build(config.data.sampler, table.labels,
                             config.batch_size,
                             config.data.images_per_identity)
  except ValueError as e:
    raise ValueError(f'config.data.sampler {config.data.sampler!r} with '
                     f'config.batch_size {config.batch_size}: {e}') from e
  if (config.data.sampler in samplers.P_K_SAMPLERS and
      jax.process_index() == 0):
    counts = np.bincount(np.unique(table.labels, return_inverse=True)[1])
    short = int(np.sum(counts < config.data.images_per_identity))
    if short:
      # Allowed (the official sampler draws with replacement), but worth a
      # line: with K above every identity's count, every batch repeats.
      print(f'note: {short} of {len(counts)} train identities have fewer '
            f'than config.data.images_per_identity = '
            f'{config.data.images_per_identity} images (at most '
            f'{int(counts.max())}); their images are drawn with replacement')
  return sampler


def _with_pretrained_backbone(state: step_lib.TrainState, directory: str
                              ) -> tuple[step_lib.TrainState, str]:
  """`state` with the ResNet of a converted model directory loaded.

  The ResNet's own parameters and statistics (stem, blocks; see
  `resnet.is_resnet_group`) are loaded, in any family whose backbone holds
  them; modules a family adds inside the backbone (RGA's ``rga_att1..4``)
  and everything outside it stay fresh, as the official codes copy the
  ImageNet weights into conv1..layer4 only. The ImageNet classifier
  ``fc``, which a re-id network does not have, and modules another family
  added to the directory's backbone are not loaded.

  Returns:
    the state, and one line saying what was loaded and what stays fresh.

  Raises:
    ValueError: naming config.init_from, for an unreadable directory, or a
      ResNet that is not the configured one (a block or tensor missing on
      either side, or another shape), with the first differing key.
  """
  try:
    directory = store.resolve_model_directory(directory)
    _, variables = store.load_model(directory)
  except store.ModelStoreError as e:
    raise ValueError(f'config.init_from: {e}') from e
  replaced, loaded, fresh = {}, 0, set()
  for collection in ('params', 'batch_stats'):
    ours = flax.traverse_util.flatten_dict(
        dict(getattr(state, collection).get('backbone', {})), sep='/')
    theirs = flax.traverse_util.flatten_dict(
        dict(variables.get(collection, {}).get('backbone', {})), sep='/')
    # Only the ResNet's own tensors count: another family's modules (a
    # directory of a trained RGA network) and the ImageNet classifier are
    # not this network's.
    theirs = {k: v for k, v in theirs.items()
              if resnet_lib.is_resnet_group(k.split('/')[0]) and
              (k.split('/')[0] != 'fc' or k in ours)}
    resnet = {k for k in ours if resnet_lib.is_resnet_group(k.split('/')[0])}
    fresh.update(k.split('/')[0] for k in set(ours) - resnet)
    for key in sorted(resnet | set(theirs)):
      if key not in theirs or key not in ours:
        where = directory if key not in theirs else 'config.model'
        raise ValueError(
            f'config.init_from: backbone {collection} {key} is missing from '
            f'{where}: {directory} holds another ResNet than config.model '
            '(stage_sizes, base_width); convert weights of the same ResNet')
      if np.shape(theirs[key]) != np.shape(ours[key]):
        raise ValueError(
            f'config.init_from: backbone {collection} {key} is '
            f'{np.shape(theirs[key])} in {directory} but '
            f'{np.shape(ours[key])} in config.model (stage_sizes, '
            'base_width); convert weights of the same ResNet')
    merged = {k: (np.asarray(theirs[k]) if k in resnet else v)
              for k, v in ours.items()}
    loaded += len(resnet)
    replaced[collection] = {
        **getattr(state, collection),
        'backbone': flax.traverse_util.unflatten_dict(merged, sep='/')}
  outside = sorted(k for k in state.params if k != 'backbone')
  groups = [f'backbone/{name}' for name in sorted(fresh)] + outside
  summary = (f'init_from {directory}: loaded {loaded} ResNet tensors '
             '(parameters and BatchNorm statistics); fresh: ' +
             (', '.join(groups) if groups else 'nothing'))
  return state.replace(**replaced), summary


def _check_config(config: ml_collections.ConfigDict, device_count: int,
                  process_count: int) -> None:
  """Every block of the config, before the data is read (`validation`).

  Raises:
    ValueError: naming the key at fault and what it allows.
  """
  validation.check_config(config, device_count, process_count)


def _output_shapes(model, image_size) -> dict[str, Any]:
  """The shapes of `model`'s outputs (traced, never computed)."""
  images = jax.ShapeDtypeStruct((1, *image_size, 3), np.float32)
  return jax.eval_shape(
      lambda x: model.init_with_output(jax.random.key(0), x, train=False)[0],
      images)


class Run:
  """The state of one training run, between its steps."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               devices: Optional[Sequence[jax.Device]] = None):
    self.config = config
    self.workdir = workdir
    self.is_chief = jax.process_index() == 0
    self.mesh = step_lib.make_mesh(devices)
    _check_config(config, self.mesh.size, jax.process_count())
    self.table, self.evaluates_main, self.targets = _read_sources(config)
    self.process_batch = config.batch_size // jax.process_count()
    self.sampler = _build_sampler(config, self.table)
    self.steps_per_epoch = self.sampler.steps_per_epoch
    self.total_steps = config.num_epochs * self.steps_per_epoch
    self.stop_step = (min(config.max_steps, self.total_steps)
                      if config.max_steps > 0 else self.total_steps)
    self.task = tasks_lib.build(config)
    self.model = step_lib.build_model(config, self.table.num_classes)
    self.eval_model = self.model.clone(bn_axis_name=None)
    losses.check_outputs(config, _output_shapes(self.eval_model,
                                                config.image_size))
    if self.task.check_network is not None:
      self.task.check_network(self.eval_model, tuple(config.image_size))
    self.optimizer = optimizer_lib.make_optimizer(
        config.optimizer, self.steps_per_epoch,
        frozen=lambda params: registry.frozen_mask(self.model, params))
    # The same schedules, for the step to report the rates it applies.
    self.learning_rates = optimizer_lib.learning_rate_schedules(
        config.optimizer, self.steps_per_epoch)

  def open(self) -> None:
    """Starts writing to the workdir (created, and held, by now)."""
    if self.is_chief:
      workdir_lib.remove_unfinished_checkpoints(
          os.path.join(self.workdir, checkpoints.CHECKPOINT_DIR))
    self.manager = checkpoints.make_manager(self.workdir,
                                            self.config.checkpoint.keep)
    self.writer = reporting.MetricWriter(self.workdir, enabled=self.is_chief)
    self.evaluations = self._read_evaluations()
    self.last_evaluation = None

  def data_position(self, step: int) -> dict[str, Any]:
    """The checkpoint's JSON item: data position and what it depends on."""
    return {'epoch': step // self.steps_per_epoch,
            'step_in_epoch': step % self.steps_per_epoch,
            **self.data_signature(), **self.config_signature()}

  def data_signature(self) -> dict[str, Any]:
    return {'steps_per_epoch': self.steps_per_epoch,
            'global_batch_size': int(self.config.batch_size),
            'seed': int(self.config.seed),
            'sampler': self.sampler.signature()}

  def config_signature(self) -> dict[str, Any]:
    """What the state's structure and its updates depend on."""
    signature = {'task': self.config.task,
                 'model': self.config.model.to_dict(),
                 'loss': self.config.loss.to_dict(),
                 'optimizer': self.config.optimizer.to_dict(),
                 'num_classes': int(self.table.num_classes),
                 # The network trains at this size (RGA's layers are built
                 # for it), and the saved model records it.
                 'image_size': [int(v) for v in self.config.image_size]}
    if 'casn' in self.config:
      # How the loss's gradient passes through the Grad-CAM maps.
      signature['casn'] = self.config.casn.to_dict()
    return signature

  def initial_state(self) -> step_lib.TrainState:
    """The newest checkpoint's state, or a fresh (maybe pretrained) one."""
    def fresh():
      return step_lib.create_train_state(self.model, self.optimizer,
                                         self.config.seed,
                                         tuple(self.config.image_size))

    replicated = jax.sharding.NamedSharding(self.mesh,
                                            jax.sharding.PartitionSpec())
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        jax.eval_shape(fresh))
    # Checkpoints from before samplers were recorded used the uniform one.
    restored = checkpoints.restore_latest(
        self.manager, abstract, self.data_signature(),
        self.config_signature(),
        recorded_later={'sampler': samplers.UniformSampler.SIGNATURE})
    if restored is not None:
      state, position = restored
      print(f'resuming from step {int(state.step)} (epoch '
            f'{position["epoch"]}, step {position["step_in_epoch"]} in it)',
            flush=True)
      return state
    state = fresh()
    if self.config.init_from != defaults.SCRATCH:
      state, summary = _with_pretrained_backbone(state,
                                                 self.config.init_from)
      if self.is_chief:
        print(summary, flush=True)
    return step_lib.replicate(state, self.mesh)

  def _read_evaluations(self) -> list[dict[str, Any]]:
    path = os.path.join(self.workdir, EVALUATIONS_JSON)
    if not os.path.exists(path):
      return []
    with open(path) as f:
      return json.load(f)

  def evaluate(self, state: step_lib.TrainState
               ) -> Optional[dict[str, Any]]:
    """Evaluates the current network on config.dataset; logs and records
    the metrics (None, doing nothing, for a train-only dataset)."""
    if not self.evaluates_main:
      return None
    step = int(jax.device_get(state.step))
    variables = step_lib.local_copy({'params': state.params,
                                     'batch_stats': state.batch_stats})
    evaluation = evaluate.run_evaluation(self.eval_model, variables,
                                         self.config)
    # Kept for the final evaluation's report.
    self.last_evaluation = (step, evaluation)
    metrics = evaluation.metrics
    metrics['step'] = step
    metrics['epoch'] = step / self.steps_per_epoch
    print(f'evaluation at step {step}:\n{evaluate.format_metrics(metrics)}',
          flush=True)
    for setting in ('plain', 'reranked'):
      if setting in metrics:
        self.writer.write(step, metrics[setting], f'eval_{setting}')
    self.evaluations = [e for e in self.evaluations if e['step'] != step]
    self.evaluations.append(metrics)
    if self.is_chief:
      evaluate.write_metrics(self.evaluations,
                             os.path.join(self.workdir, EVALUATIONS_JSON))
    return metrics

  def evaluate_targets(self, state: step_lib.TrainState
                       ) -> dict[str, '_Evaluation']:
    """Evaluates the current network on each of config.eval.extra_targets
    (the final evaluation's); prints each target's metrics under its spec.

    Returns:
      {spec: its evaluation}, in the config's order.
    """
    step = int(jax.device_get(state.step))
    variables = step_lib.local_copy({'params': state.params,
                                     'batch_stats': state.batch_stats})
    evaluations = {}
    for block in self.targets:
      evaluation = evaluate.run_evaluation(self.eval_model, variables,
                                           self.config, dataset=block)
      evaluation.metrics['step'] = step
      evaluation.metrics['epoch'] = step / self.steps_per_epoch
      print(f'evaluation of {block.spec} at step {step}:\n'
            f'{evaluate.format_metrics(evaluation.metrics)}', flush=True)
      evaluations[block.spec] = evaluation
    return evaluations

  def check_finite(self, step: int, metrics: dict[str, Any]) -> None:
    if all(np.isfinite(metrics[key])
           for key in ('loss', 'grad_norm', 'param_norm')):
      return
    self.manager.wait_until_finished()
    last = self.manager.latest_step()
    kept = ('no checkpoint was written yet' if last is None else
            f'the last good checkpoint is step {last} in '
            f'{self.manager.directory}')
    raise NonFiniteLossError(
        f'non-finite training at step {step}: loss {metrics["loss"]}, '
        f'gradient norm {metrics["grad_norm"]}, parameter norm '
        f'{metrics["param_norm"]}; {kept}; lower '
        'config.optimizer.learning_rate or check the data')
