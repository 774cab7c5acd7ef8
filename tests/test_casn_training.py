"""The CASN task trains: the Grad-CAM it computes inside the step, each
config's documented command for a few steps, and the same training on one
and on two devices."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_configs
import test_rga_training
import test_train

from sa_reid_jax import losses
from sa_reid_jax import tasks
from sa_reid_jax.losses import gradcam
from sa_reid_jax.models import registry
from sa_reid_jax.models import store
from sa_reid_jax.models.casn import CASNNet
from sa_reid_jax.tasks import casn as casn_task
from sa_reid_jax.training import checkpoints
from sa_reid_jax.training.casn_defaults import casn_experiment_config

REPO = test_train.REPO
# The RGA tests' small network and data; PCB's six stripes need the 8 rows
# of a last-stride-1 map at 128x64.
SMALL = {k: v for k, v in test_rga_training.SMALL.items()
         if k != 'model.down_ratio'}
data = test_rga_training.data


def _tiny(variant, dropout_rate=0.5):
  config = casn_experiment_config('market1501', variant)
  config.model.stage_sizes = (1, 1, 1, 1)
  config.model.base_width = 4
  config.model.num_stripes = 4
  config.model.dropout_rate = dropout_rate
  # 6x3 maps for both heads.
  config.model.last_stride = 1
  model = registry.build(config.model, 5, image_size=(96, 48))
  images = jnp.asarray(np.random.default_rng(0).standard_normal(
      (6, 96, 48, 3)), jnp.float32)
  variables = model.init({'params': jax.random.PRNGKey(0),
                          'dropout': jax.random.PRNGKey(1)}, images)
  batch = {'images': images, 'labels': jnp.asarray([0, 0, 1, 1, 4, 4]),
           'positions': jnp.arange(6)}
  return config, model, variables, batch


@pytest.mark.parametrize('variant', ['ide', 'pcb'])
def test_grad_cam_head_reproduces_the_train_mode_logits(variant):
  # Without dropout the inference-form head with the batch's moments gives
  # the train-mode logits: the statistics were substituted everywhere.
  _, model, variables, batch = _tiny(variant, dropout_rate=0.0)
  feature_map, state = model.apply(variables, batch['images'], True,
                                   method='feature_map',
                                   mutable=['batch_stats'])
  train_outputs, state = model.apply(
      {'params': variables['params'], 'batch_stats': state['batch_stats']},
      feature_map, True, method='head_outputs',
      mutable=['batch_stats', 'intermediates'])
  scores = casn_task.head_scores(model, variables['params'],
                                 state['batch_stats'],
                                 state.get('intermediates', {}))
  np.testing.assert_allclose(np.asarray(scores(feature_map)),
                             np.asarray(train_outputs['global_logits']),
                             rtol=1e-5, atol=1e-5)
  if variant == 'pcb':
    # ... which the running statistics would not (they are still the
    # initial ones here): the substitution is what makes them equal.
    running = model.apply(variables, feature_map, False,
                          method='head_outputs')['global_logits']
    assert np.abs(np.asarray(running - train_outputs['global_logits'])
                  ).max() > 1e-2


@pytest.mark.parametrize('variant', ['ide', 'pcb'])
def test_step_maps_are_each_images_own_grad_cam(variant):
  _, model, variables, batch = _tiny(variant)
  outputs, new_stats = casn_task.forward(model, variables['params'],
                                         variables['batch_stats'], batch,
                                         jax.random.PRNGKey(3))
  maps = np.asarray(outputs['attention_maps'])
  feature_map, state = model.apply(variables, batch['images'], True,
                                   method='feature_map',
                                   mutable=['batch_stats'])
  _, state = model.apply(
      {'params': variables['params'], 'batch_stats': state['batch_stats']},
      feature_map, True, batch['positions'], method='head_outputs',
      rngs={'dropout': jax.random.PRNGKey(3)},
      mutable=['batch_stats', 'intermediates'])
  scores = casn_task.head_scores(model, variables['params'],
                                 state['batch_stats'],
                                 state.get('intermediates', {}))
  for n, label in enumerate(np.asarray(batch['labels'])):
    # Image n alone, every class's gradient, its own class kept.
    grads = [jax.grad(lambda a, c=c: scores(a[None])[0, c])(feature_map[n])
             for c in range(5)]
    cam = np.maximum(np.einsum('hwk,k->hw', np.asarray(feature_map[n]),
                               np.asarray(grads[label]).mean(axis=(0, 1))), 0)
    expected = (cam - cam.min()) / (cam.max() - cam.min())
    np.testing.assert_allclose(maps[n], expected, atol=2e-5)
  # The step's statistics are the train-mode pass's, not a second pass's.
  jax.tree_util.tree_map(np.testing.assert_array_equal, new_stats,
                         state['batch_stats'])


def test_the_step_keeps_the_first_pass_statistics_not_the_erased_ones():
  config, model, variables, batch = _tiny('pcb')
  rng = jax.random.PRNGKey(3)
  _, (_, step_stats) = tasks.build(config).loss_fn(
      model, variables['params'], variables['batch_stats'], batch, rng, None)
  _, first_pass = casn_task.forward(model, variables['params'],
                                    variables['batch_stats'], batch, rng)
  jax.tree_util.tree_map(np.testing.assert_array_equal, step_stats,
                         first_pass)
  # The erased images' pass would have given other statistics.
  erased = gradcam.erase_attended(batch['images'], gradcam.soft_mask(
      casn_task.forward(model, variables['params'], variables['batch_stats'],
                        batch, rng)[0]['attention_maps'], 10.0, 0.5))
  _, state = model.apply(variables, erased, True, batch['positions'],
                         rngs={'dropout': rng}, mutable=['batch_stats'])
  differences = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
      state['batch_stats'], first_pass))
  assert max(differences) > 1e-4


def test_terms_refuse_other_tasks_and_networks():
  config, model, variables, batch = _tiny('ide')
  shapes = jax.eval_shape(lambda: model.apply(variables, batch['images']))
  losses.check_outputs(config, shapes)
  config.task = 'identification'
  with pytest.raises(ValueError,
                     match='attention_mining needs config.task=casn'):
    losses.check_outputs(config, shapes)
  config.task = 'casn'
  config.casn.gradcam_gradient = 'weights'
  with pytest.raises(ValueError, match='config.casn.gradcam_gradient'):
    tasks.build(config)


def test_another_familys_config_is_one_clear_error():
  config = casn_experiment_config('market1501', 'pcb')
  config.model.family = 'sanet'  # the CASN block has no SA keys
  with pytest.raises(ValueError, match=(
      r"^config\.model\.family='sanet': config\.model has no key "
      r"'attention_normalization', which the sanet family reads")):
    registry.build(config.model, 10, image_size=(128, 64))
  # A value a network's constructor refuses names the config.model block,
  # whatever the family.
  config = casn_experiment_config('market1501', 'pcb')
  config.model.num_stripes = 0
  with pytest.raises(ValueError, match=r'^config\.model: num_stripes and '
                     'reduced_dim must be >= 1'):
    registry.build(config.model, 10, image_size=(384, 128))
  from sa_reid_jax.training import experiment_config  # pylint: disable=g-import-not-at-top
  sa_model = experiment_config('market1501', 'full').model
  sa_model.variant = 'sa3'
  with pytest.raises(ValueError, match=r"^config\.model: unknown SANet "
                     r"variant 'sa3'"):
    registry.build(sa_model, 10, image_size=(384, 128))
  from sa_reid_jax.training import experiment_config  # pylint: disable=g-import-not-at-top
  sa_config = experiment_config('market1501', 'full')
  sa_config.task = 'casn'  # an SA config has no config.casn block
  with pytest.raises(ValueError, match=r'^config\.task=casn needs the '
                     r'config\.casn block'):
    tasks.build(sa_config)


def test_a_map_too_small_for_attention_stops_the_run_at_start(data,
                                                              tmp_path):
  config = test_rga_training._documented_config(  # pylint: disable=protected-access
      'casn_ide_market1501.py', data, SMALL, max_steps=3)
  # IDE divides by 32: a 1x1 map, constant once normalised.
  config.image_size = (32, 16)
  with pytest.raises(ValueError, match=(
      r'^config\.image_size=\(32, 16\): the network\'s last feature map is '
      r'1x1; Grad-CAM attention .* needs at least 2x2: use larger images '
      r'or config\.model\.last_stride=1$')):
    test_train.trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  # 64x64 gives 2x2: accepted by the same check.
  config.image_size = (64, 64)
  model = registry.build(config.model, 5, image_size=(64, 64))
  tasks.build(config).check_network(model, (64, 64))
  # Without the map terms the check has nothing to refuse.
  config.loss.terms.attention_mining.weight = 0.0
  config.loss.terms.consistency.weight = 0.0
  tasks.build(config).check_network(model, (32, 16))


@pytest.mark.parametrize('name', ['casn_ide_market1501.py',
                                  'casn_pcb_market1501.py',
                                  'demo_casn_synthetic.py'])
def test_documented_command_trains(name, data, tmp_path):
  config = test_rga_training._documented_config(name, data, SMALL,  # pylint: disable=protected-access
                                                max_steps=3)
  workdir = str(tmp_path / 'run')
  result = test_train.trainer.train_and_evaluate(config, workdir)
  assert result['status'] == 'completed' and result['step'] == 3
  model, _ = store.load_model(os.path.join(workdir, 'model'))
  assert isinstance(model, CASNNet)
  logged = [line for line in open(os.path.join(workdir, 'metrics.jsonl'))
            if '"kind": "train"' in line]
  assert logged, 'no train metrics logged'
  for term in ('attention_mining', 'verification', 'consistency'):
    assert all(f'"{term}"' in line for line in logged), term
  if name == 'demo_casn_synthetic.py':
    # The gradient mode is part of what a checkpoint resumes with.
    config.max_steps = 4
    config.casn.gradcam_gradient = 'full'
    with pytest.raises(checkpoints.ResumeError, match=(
        "casn.gradcam_gradient was feature_map, is now full")):
      test_train.trainer.train_and_evaluate(config, workdir)


def test_dataset_configs_differ_only_in_the_dataset():
  base = test_configs._parse(['train.py', '--config=' + os.path.join(  # pylint: disable=protected-access
      REPO, 'configs', 'casn_pcb_market1501.py')])
  for name, dataset in (('casn_pcb_dukemtmc_reid', 'dukemtmc_reid'),
                        ('casn_pcb_cuhk03_labeled', 'cuhk03_np/labeled'),
                        ('casn_pcb_cuhk03_detected', 'cuhk03_np/detected')):
    config = test_configs._parse(['train.py', '--config=' + os.path.join(  # pylint: disable=protected-access
        REPO, 'configs', f'{name}.py')])
    assert config.dataset.name == dataset
    config.unlock()
    config.dataset.name = base.dataset.name
    assert config.to_dict() == base.to_dict(), name


def test_two_devices_train_as_one(data, tmp_path):
  """The CASN step on 1 vs 2 devices: pairs and maps over the global batch.

  In float64 compute for the reason `test_rga_training` gives (float32
  rounding of a scratch network's gradient exceeds the bound whatever the
  device count). Every term is on, and positive pairs cross the device
  boundary: P x K = 3 identities x 4 images, 6 rows per device, so the
  middle identity has 2 images on each device (with K dividing the rows
  per device only negative pairs would cross, and a per-device pairing of
  the consistency term would pass unnoticed).
  """
  overrides = {**SMALL, 'max_steps': 3, 'optimizer.learning_rate': 1e-4,
               'model.dtype': 'float64', 'batch_size': 12,
               'data.images_per_identity': 4}
  worst = test_rga_training.worst_device_difference(
      'demo_casn_synthetic.py', data, tmp_path, overrides)
  assert worst[0] <= 1e-5, worst
