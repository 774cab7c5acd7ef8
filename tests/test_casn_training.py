"""The CASN task trains: the Grad-CAM it computes inside the step, each
config's documented command for a few steps, and the same training on one
and on two devices."""

import functools
import os

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sa_reid_jax import losses
from sa_reid_jax import tasks
from sa_reid_jax.losses import attention_mining
from sa_reid_jax.models import gradcam
from sa_reid_jax.losses import siamese
from sa_reid_jax.models import registry
from sa_reid_jax.models import store
from sa_reid_jax.models.casn import CASNNet
from sa_reid_jax.tasks import casn as casn_task
from sa_reid_jax.training import checkpoints
from sa_reid_jax.training import experiment_config
from sa_reid_jax.training import trainer
from sa_reid_jax.training import validation
from sa_reid_jax.training.casn_defaults import casn_experiment_config


@pytest.fixture(scope='module')
def data(synthetic_dataset):
  return synthetic_dataset(**helpers.P_K_DATASET)


@pytest.fixture
def float64():
  """float64 compute for the test (``jax.enable_x64``): the properties the
  Grad-CAM tests check hold exactly in principle, so they are compared at
  float64 resolution."""
  with jax.enable_x64(True):
    yield


@functools.lru_cache(maxsize=None)
def _variables(variant):
  """`helpers.he_scaled_variables` of the tiny `variant` network (dropout
  has no variables): drawn once per variant, without a compiled init."""
  _, model = _tiny_network(variant, 0.0)
  return helpers.he_scaled_variables(model)


def _tiny_network(variant, dropout_rate):
  config = casn_experiment_config('market1501', variant)
  config.model.stage_sizes = (1, 1, 1, 1)
  config.model.base_width = 4
  config.model.num_stripes = 4
  config.model.dropout_rate = dropout_rate
  config.model.dtype = 'float64'
  # Neither C (128) nor the classes: a transposed siamese fc shows.
  config.model.siamese_dim = 24
  # 6x3 maps for both heads.
  config.model.last_stride = 1
  return config, registry.build(config.model, 5, image_size=(96, 48))


def _tiny(variant, dropout_rate=0.5):
  """(config, model, variables, batch of 6) of a tiny `variant` network in
  float64 compute (parameters and statistics float32); under `float64`."""
  config, model = _tiny_network(variant, dropout_rate)
  images = jnp.asarray(np.random.default_rng(0).standard_normal(
      (6, 96, 48, 3)), jnp.float64)
  batch = {'images': images, 'labels': jnp.asarray([0, 0, 1, 1, 4, 4]),
           'positions': jnp.arange(6)}
  return config, model, _variables(variant), batch


@pytest.mark.parametrize('variant', ['ide', 'pcb'])
def test_grad_cam_head_reproduces_the_train_mode_logits(variant, float64):
  # Without dropout the inference-form head with the batch's moments gives
  # the train-mode logits: the statistics were substituted everywhere.
  _, model, variables, batch = _tiny(variant, dropout_rate=0.0)

  @jax.jit
  def logits(variables, images):
    feature_map, state = model.apply(variables, images, True,
                                     method='feature_map',
                                     mutable=['batch_stats'])
    train_outputs, state = model.apply(
        {'params': variables['params'], 'batch_stats': state['batch_stats']},
        feature_map, True, method='head_outputs',
        mutable=['batch_stats', 'intermediates'])
    scores = casn_task.head_scores(model, variables['params'],
                                   state['batch_stats'],
                                   state.get('intermediates', {}))
    running = model.apply(variables, feature_map, False,
                          method='head_outputs')['global_logits']
    return scores(feature_map), train_outputs['global_logits'], running

  substituted, train_mode, running = (np.asarray(x) for x in logits(
      variables, batch['images']))
  assert train_mode.dtype == np.float64
  # float64 (unit roundoff 1.1e-16): the same normalisation with the same
  # moments, its sums possibly in another order, agrees to ~1e-15
  # relative (measured: equal); 1e-12 leaves room for other CPUs' kernels.
  assert helpers.relative_error(substituted, train_mode) <= 1e-12
  if variant == 'pcb':
    # ... which the running statistics would not (the drawn ones here;
    # measured 0.49 relative): the substitution is what makes them equal.
    assert helpers.relative_error(running, train_mode) > 1e-2


@pytest.mark.parametrize('variant', ['ide', 'pcb'])
def test_step_maps_are_each_images_own_grad_cam(variant, float64):
  """The class maps: each image's own true-class Grad-CAM (against a
  per-image gradient). The siamese maps: the closed form of the Grad-CAM
  of the importance score s = sum_j max(f_j, 0), f = pooled @ W + b."""
  _, model, variables, batch = _tiny(variant)
  step = jax.jit(functools.partial(casn_task.forward, model,
                                   with_siamese_maps=True))
  outputs, new_stats = step(variables['params'], variables['batch_stats'],
                            batch, jax.random.PRNGKey(3))
  maps = np.asarray(outputs['attention_maps'])
  assert maps.dtype == np.float64
  siamese_maps = np.asarray(outputs['siamese_attention_maps'])
  assert siamese_maps.dtype == np.float64 and siamese_maps.shape == maps.shape

  @jax.jit
  def train_pass(variables, images, positions):
    feature_map, state = model.apply(variables, images, True,
                                     method='feature_map',
                                     mutable=['batch_stats'])
    _, state = model.apply(
        {'params': variables['params'], 'batch_stats': state['batch_stats']},
        feature_map, True, positions, method='head_outputs',
        rngs={'dropout': jax.random.PRNGKey(3)},
        mutable=['batch_stats', 'intermediates'])
    return feature_map, state

  feature_map, state = train_pass(variables, batch['images'],
                                  batch['positions'])
  scores = casn_task.head_scores(model, variables['params'],
                                 state['batch_stats'],
                                 state.get('intermediates', {}))
  # Image n alone: the gradient of its own class's score.
  own_class_gradient = jax.jit(jax.grad(lambda a, c: scores(a[None])[0, c]))
  flat_maps = 0
  for n, label in enumerate(np.asarray(batch['labels'])):
    grads = own_class_gradient(feature_map[n], label)
    cam = np.maximum(np.einsum('hwk,k->hw', np.asarray(feature_map[n]),
                               np.asarray(grads).mean(axis=(0, 1))), 0)
    if cam.max() == 0:
      # No position with positive evidence (every weighted sum <= 0, so
      # the ReLU gives exact zeros): a flat map, which
      # `gradcam.normalise_maps` sets to zero (PCB's image 2 here).
      flat_maps += 1
      expected = np.zeros_like(cam)
    else:
      expected = (cam - cam.min()) / (cam.max() - cam.min())
    # float64: the batch's gradient and one image's round differently
    # (~1e-16 relative), and the min-max normalisation divides that by the
    # map's range; measured 1.5e-15 on these [0, 1] maps.
    np.testing.assert_allclose(maps[n], expected, rtol=0, atol=1e-12)
  # The comparison is with real gradients for all the other images.
  assert flat_maps <= 1
  # The siamese maps (seed 004, section 2.2 and the author's reply), from
  # the same train-mode feature map A: the fc on the pooled map, then
  # channel weights w = (1/(h w)) W [f > 0] (the spatial mean of d s / d A),
  # ReLU(sum_k w_k A_k), min-max normalised per image; NumPy float64.
  fc = variables['params']['siamese_fc']
  kernel = np.asarray(fc['kernel'], np.float64)
  activations = np.asarray(feature_map)
  f = activations.mean(axis=(1, 2)) @ kernel + np.asarray(fc['bias'])
  # Components of both signs: the indicator selects.
  assert 0 < (f > 0).mean() < 1
  h, w = activations.shape[1:3]
  for n in range(len(f)):
    weights = kernel @ (f[n] > 0) / (h * w)
    cam = np.maximum(np.einsum('hwk,k->hw', activations[n], weights), 0)
    expected = (cam - cam.min()) / (cam.max() - cam.min())
    # As above: float64 rounding divided by the map's range.
    np.testing.assert_allclose(siamese_maps[n], expected, rtol=0, atol=1e-12)
  # Not the class maps under another name.
  assert np.abs(siamese_maps - maps).max() > 0.1
  # The step's statistics are the train-mode pass's, not a second pass's.
  jax.tree_util.tree_map(np.testing.assert_array_equal, new_stats,
                         state['batch_stats'])


def test_the_step_keeps_the_first_pass_statistics_not_the_erased_ones(
    float64):
  config, model, variables, batch = _tiny('pcb')
  rng = jax.random.PRNGKey(3)
  loss_fn = jax.jit(functools.partial(tasks.build(config).loss_fn, model))
  _, (_, step_stats) = loss_fn(variables['params'], variables['batch_stats'],
                               batch, rng, None)
  outputs, first_pass = jax.jit(functools.partial(casn_task.forward, model))(
      variables['params'], variables['batch_stats'], batch, rng)
  jax.tree_util.tree_map(np.testing.assert_array_equal, step_stats,
                         first_pass)
  # The erased images' pass would have given other statistics.
  erased = attention_mining.erase_attended(batch['images'], attention_mining.soft_mask(
      outputs['attention_maps'], 10.0, 0.5))
  _, state = jax.jit(lambda v, x: model.apply(
      v, x, True, batch['positions'], rngs={'dropout': rng},
      mutable=['batch_stats']))(variables, erased)
  differences = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
      state['batch_stats'], first_pass))
  # Erasing a region changes the batch's moments (measured: 0.3 at most,
  # 0.03 the median leaf), far above any rounding of statistics of order 1.
  assert max(differences) > 1e-4


def _count_grad_cams(monkeypatch):
  """Counts the Grad-CAMs the task traces, by kind: 'class' (`grad_cam`)
  and 'score' (every `score_grad_cam`, the class ones included)."""
  calls = {'class': 0, 'score': 0}
  for kind, name in (('class', 'grad_cam'), ('score', 'score_grad_cam')):
    original = getattr(gradcam, name)

    def counted(*args, kind=kind, original=original, **kwargs):
      calls[kind] += 1
      return original(*args, **kwargs)

    monkeypatch.setattr(gradcam, name, counted)
  return calls


def test_consistency_reads_the_maps_its_setting_names(float64, monkeypatch):
  """consistency.maps='siamese' (the default, the source) compares the
  siamese Grad-CAM maps, 'class' the true-class ones: the step's
  consistency metric is `attention_consistency_loss` of those maps. And
  only the maps an active term reads are computed."""
  config, model, variables, batch = _tiny('pcb')
  assert config.loss.terms.consistency.maps == 'siamese'
  rng = jax.random.PRNGKey(5)
  args = (variables['params'], variables['batch_stats'], batch, rng, None)
  outputs, _ = jax.jit(functools.partial(
      casn_task.forward, model, with_siamese_maps=True))(*args[:4])
  threshold = config.loss.terms.consistency.threshold
  expected = {
      name: float(siamese.attention_consistency_loss(
          outputs[losses.CONSISTENCY_MAPS[name]], batch['labels'],
          threshold)[0]) for name in ('siamese', 'class')}
  # The two kinds of map give clearly different values (measured: 1.88
  # siamese, 2.16 class), so the comparison below tells which were read.
  assert abs(expected['siamese'] - expected['class']) > 1e-3, expected
  # Attention mining off: the class maps are then read by the
  # consistency term alone, when it is set to them.
  config.loss.terms.attention_mining.weight = 0.0
  calls = _count_grad_cams(monkeypatch)
  for name in ('siamese', 'class'):
    config.loss.terms.consistency.maps = name
    loss_fn = functools.partial(tasks.build(config).loss_fn, model)
    for kind in calls:
      calls[kind] = 0
    _, (metrics, _) = jax.jit(loss_fn)(*args)
    # Traced once: one Grad-CAM, of the kind the term reads.
    assert calls == {'class': int(name == 'class'), 'score': 1}, (name,
                                                                  calls)
    # The same maths on the same maps, compiled in another program: float64
    # rounding (~1e-16 of a distance of order 1).
    np.testing.assert_allclose(float(metrics['consistency']), expected[name],
                               rtol=1e-12, err_msg=name)
  # With attention mining on as well (the recipe), both kinds.
  config.loss.terms.attention_mining.weight = 1.0
  config.loss.terms.consistency.maps = 'siamese'
  for kind in calls:
    calls[kind] = 0
  jax.eval_shape(functools.partial(tasks.build(config).loss_fn, model),
                 *args)
  assert calls == {'class': 1, 'score': 2}, calls
  # Neither map term: no Grad-CAM at all.
  config.loss.terms.attention_mining.weight = 0.0
  config.loss.terms.consistency.weight = 0.0
  for kind in calls:
    calls[kind] = 0
  jax.eval_shape(functools.partial(tasks.build(config).loss_fn, model),
                 *args)
  assert calls == {'class': 0, 'score': 0}, calls


def test_a_bad_consistency_maps_name_is_refused_at_start(data, tmp_path):
  config = helpers.documented_config('demo_casn_synthetic.py', data,
                                     helpers.SMALL_CASN, max_steps=3)
  config.loss.terms.consistency.maps = 'identity'
  message = (r"^config\.loss\.terms\.consistency\.maps must be one of "
             r"\('siamese', 'class'\), got 'identity'$")
  with pytest.raises(ValueError, match=message):
    losses.check_settings(config)
  with pytest.raises(ValueError, match=message):
    tasks.build(config)
  with pytest.raises(ValueError, match=message):
    trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  # The run stopped at the config check, before writing anything.
  run_dir = tmp_path / 'run'
  assert not run_dir.exists() or not any(run_dir.iterdir())
  # With the term off, its settings are not read (as every term's).
  config.loss.terms.consistency.weight = 0.0
  losses.check_settings(config)
  tasks.build(config)
  # The siamese fc's width, config.model.siamese_dim, is checked with the
  # other model keys.
  config.model.siamese_dim = 0
  with pytest.raises(ValueError, match=r'^config\.model\.siamese_dim must be '
                     r'an integer >= 1, got 0$'):
    validation.check_config(config)


def test_terms_refuse_other_tasks_and_networks(float64):
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
      r"^config\.model\.num_stripes: the sanet family's network has no such "
      r"attribute \(config\.model\.family='sanet'.*start from a config of "
      r"that family")):
    registry.build(config.model, 10, image_size=(128, 64))
  # A value a network's constructor refuses names the config.model block,
  # whatever the family.
  config = casn_experiment_config('market1501', 'pcb')
  config.model.num_stripes = 0
  with pytest.raises(ValueError, match=r'^config\.model: num_stripes and '
                     'reduced_dim must be >= 1'):
    registry.build(config.model, 10, image_size=(384, 128))
  sa_model = experiment_config('market1501', 'full').model
  sa_model.variant = 'sa3'
  with pytest.raises(ValueError, match=r"^config\.model\.variant must be "
                     r"one of \[.*\] for the sanet family, got 'sa3'"):
    registry.build(sa_model, 10, image_size=(384, 128))
  sa_config = experiment_config('market1501', 'full')
  sa_config.task = 'casn'  # an SA config has no config.casn block
  with pytest.raises(ValueError, match=r'^config\.task=casn needs the '
                     r'config\.casn block'):
    tasks.build(sa_config)


def test_a_map_too_small_for_attention_stops_the_run_at_start(data,
                                                              tmp_path):
  config = helpers.documented_config('casn.py:market1501,ide', data,
                                     helpers.SMALL_CASN, max_steps=3)
  # IDE divides by 32: a 1x1 map, constant once normalised.
  config.image_size = (32, 16)
  with pytest.raises(ValueError, match=(
      r'^config\.image_size=\(32, 16\): the network\'s last feature map is '
      r'1x1; Grad-CAM attention .* needs at least 2x2: use larger images '
      r'or config\.model\.last_stride=1$')):
    trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  # 64x64 gives 2x2: accepted by the same check.
  config.image_size = (64, 64)
  model = registry.build(config.model, 5, image_size=(64, 64))
  tasks.build(config).check_network(model, (64, 64))
  # Without the map terms the check has nothing to refuse.
  config.loss.terms.attention_mining.weight = 0.0
  config.loss.terms.consistency.weight = 0.0
  tasks.build(config).check_network(model, (32, 16))


@pytest.mark.parametrize('name', [
    pytest.param('casn.py:market1501,ide', marks=pytest.mark.full),
    pytest.param('casn.py:market1501', marks=pytest.mark.full),
    'demo_casn_synthetic.py'])
def test_documented_command_trains(name, data, tmp_path):
  config = helpers.documented_config(name, data, helpers.SMALL_CASN,
                                     max_steps=3)
  workdir = str(tmp_path / 'run')
  result = trainer.train_and_evaluate(config, workdir)
  assert result['status'] == 'completed' and result['step'] == 3
  model, _ = store.load_model(os.path.join(workdir, 'model'))
  assert isinstance(model, CASNNet)
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    logged = [line for line in f if '"kind": "train"' in line]
  assert logged, 'no train metrics logged'
  for term in ('attention_mining', 'verification', 'consistency'):
    assert all(f'"{term}"' in line for line in logged), term
  if name == 'demo_casn_synthetic.py':
    # The gradient mode is part of what a checkpoint resumes with.
    config.max_steps = 4
    config.casn.gradcam_gradient = 'full'
    with pytest.raises(checkpoints.ResumeError, match=(
        "casn.gradcam_gradient was feature_map, is now full")):
      trainer.train_and_evaluate(config, workdir)


@pytest.mark.full
def test_two_devices_train_as_one(data, tmp_path):
  """The CASN step on 1 vs 2 devices: pairs and maps over the global batch.

  In float64 compute, for the reason `test_rga_training` gives: in float32
  the regrouping of the batch's sums moves the trained variables by a few
  units in the last place (measured 2.6e-7 relative), which only a bound
  set from measurement would allow. Every term is on, and
  positive pairs cross the device boundary: P x K = 3 identities x 4
  images, 6 rows per device, so the middle identity has 2 images on each
  device (with K dividing the rows per device only negative pairs would
  cross, and a per-device pairing of the consistency term would pass
  unnoticed).
  """
  small = {**helpers.SMALL_CASN, 'max_steps': 3,
           'optimizer.learning_rate': 1e-4, 'model.dtype': 'float64',
           'batch_size': 12, 'data.images_per_identity': 4}
  runs = helpers.train_on_one_and_two_devices('demo_casn_synthetic.py', data,
                                              tmp_path, small)
  for count, (result, _) in runs.items():
    # Really `count` devices: two one-device runs would agree too.
    assert result['devices'] == count, result
    assert result['status'] == 'completed' and result['step'] == 3
  worst = helpers.worst_variable_difference(runs[1][1], runs[2][1])
  # The stored float32 rounding, as in `test_rga_training` (measured
  # 5.9e-8, one unit in the last place of a BatchNorm variance): 1e-6
  # allows ~10 units, while pairing each device's maps alone (the
  # consistency term) differs by 9e-3 (measured).
  assert worst[0] <= 1e-6, worst
