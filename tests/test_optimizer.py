"""The optimizer and the losses against PyTorch and hand computations.

The paper trains with `torch.optim.SGD` (two parameter groups, Nesterov
momentum, L2 weight decay) and `StepLR`; optax must take the same steps.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from torch.nn import functional as F

from sa_reid_jax import losses
from sa_reid_jax.training import experiment_config
from sa_reid_jax.training import optimizer

NUM_STEPS = 7
# max|jax - torch| <= PARAM_BOUND * max(1, max|torch|), float64 on both
# sides and PyTorch stepping at our learning rates (float32 values, which
# the schedules' own check compares with PyTorch's to RATE_BOUND): the same
# maths, so only float64 rounding remains, about 1e-16 a step on values of
# order 1; 1e-13 leaves margin, while a wrong rate, momentum, Nesterov term
# or weight decay is 1e-5 off or more.
PARAM_BOUND = 1e-13
# |jax - exact| <= LOSS_BOUND * max(1, exact): the cross-entropy computes in
# float32 (a log-softmax of 5 logits of scale 3, a mean over 6 rows),
# against PyTorch's float64 on the same logits: a few float32 roundings of
# losses of a few units (measured 1.4e-7).
LOSS_BOUND = 1e-6
# The schedule's rates are float32: within one or two roundings (6e-8
# each) of PyTorch's Python floats.
RATE_BOUND = 1e-6


def relative_error(actual, reference) -> float:
  reference = np.asarray(reference, np.float64)
  return float(np.max(np.abs(np.asarray(actual, np.float64) - reference)) /
               max(1.0, float(np.max(np.abs(reference)))))


def small_params(seed: int) -> dict:
  """A tree with SANet's top-level layout: a backbone and head modules
  (float64)."""
  rng = np.random.default_rng(seed)

  def normal(*shape):
    return 0.5 * rng.standard_normal(shape)

  return {
      'backbone': {'conv1': {'kernel': normal(4, 5)},
                   'bn1': {'scale': 1 + normal(5), 'bias': normal(5)}},
      'part_reduce': {'kernel': normal(5, 3)},
      'global_classifier': {'kernel': normal(3, 2), 'bias': normal(2)},
  }


def small_loss(p, x, y, tanh):
  """The same computation for JAX and torch leaves (`tanh` picks the library).

  Two nonlinear layers make the gradients change from step to step, so a
  wrong momentum buffer or learning rate shows up in the parameters.
  """
  backbone = p['backbone']
  h = tanh((x @ backbone['conv1']['kernel']) * backbone['bn1']['scale'] +
           backbone['bn1']['bias'])
  z = tanh(h @ p['part_reduce']['kernel'])
  out = z @ p['global_classifier']['kernel'] + p['global_classifier']['bias']
  return ((out - y) ** 2).mean()


def rates_at(config, steps_per_epoch: int, step: int) -> dict[str, float]:
  """Each group's scheduled rate at `step`, named as the train step reports
  it (``learning_rate_GROUP``)."""
  return {f'learning_rate_{name}': float(schedule(step))
          for name, schedule in optimizer.learning_rate_schedules(
              config, steps_per_epoch).items()}


def torch_step_at(torch_opt, rates):
  """`torch_opt.step()` with each group at our learning rate (`rates` as
  `rates_at` gives them); the groups' scheduled
  rates are restored after it."""
  scheduled = [group['lr'] for group in torch_opt.param_groups]
  for group in torch_opt.param_groups:
    group['lr'] = rates[f'learning_rate_{group["name"]}']
  torch_opt.step()
  for group, rate in zip(torch_opt.param_groups, scheduled):
    group['lr'] = rate


def optimizer_config(**overrides):
  """Market-1501's experiment config with `optimizer` fields overridden."""
  config = experiment_config('market1501')
  for name, value in overrides.items():
    setattr(config.optimizer, name, value)
  return config


def twin_problem(seed: int, config, dtype=np.float64):
  """Inputs, targets, JAX and torch copies of the same parameters, and the
  two PyTorch parameter groups of `config` (backbone, heads), in `dtype`
  (float64: make the JAX arrays under jax.enable_x64)."""
  rng = np.random.default_rng(seed)
  inputs = rng.standard_normal((NUM_STEPS, 8, 4)).astype(dtype)
  targets = rng.standard_normal((NUM_STEPS, 8, 2)).astype(dtype)
  start = jax.tree_util.tree_map(lambda v: np.asarray(v, dtype),
                                 small_params(seed - 1))
  params = jax.tree_util.tree_map(jnp.asarray, start)
  flat = flax.traverse_util.flatten_dict(start)
  torch_flat = {path: torch.tensor(value, requires_grad=True)
                for path, value in flat.items()}
  lr = config.learning_rate
  groups = [
      {'params': [v for k, v in torch_flat.items() if k[0] == 'backbone'],
       'lr': lr * config.backbone_lr_multiplier, 'name': 'backbone'},
      {'params': [v for k, v in torch_flat.items() if k[0] != 'backbone'],
       'lr': lr, 'name': 'heads'},
  ]
  for group in groups:
    group['base'] = group['lr']
  return inputs, targets, params, torch_flat, groups



def step_both(tx, state, params, torch_params, torch_opt, x, y, torch_step):
  """One step of `tx` on the JAX parameters and one of `torch_opt` on the
  PyTorch ones (`torch_step()`, e.g. ``torch_opt.step``), on the same batch;
  returns the new (state, params)."""
  grads = jax.grad(small_loss)(params, x, y, jnp.tanh)
  updates, state = tx.update(grads, state, params)
  params = jax.tree_util.tree_map(lambda p, u: p + u, params, updates)
  torch_opt.zero_grad()
  small_loss(torch_params, torch.from_numpy(x), torch.from_numpy(y),
             torch.tanh).backward()
  torch_step()
  return state, params


def worst_param_error(params, torch_flat, dtype, bound, step) -> float:
  """The worst `relative_error` of the JAX parameters (all of `dtype`)
  against the PyTorch ones, each within `bound`."""
  ours = flax.traverse_util.flatten_dict(params)
  assert set(ours) == set(torch_flat)
  assert {v.dtype for v in ours.values()} == {jnp.dtype(dtype)}
  worst = 0.0
  for path, reference in torch_flat.items():
    error = relative_error(ours[path], reference.detach().numpy())
    worst = max(worst, error)
    assert error <= bound, (step, path, error)
  return worst

@pytest.mark.parametrize(
    'steps_per_epoch, decay_epochs, momentum, nesterov',
    [(2, 1, 0.9, True),   # decays after steps 2, 4, 6
     (1, 2, 0.9, True),   # decays after steps 2, 4, 6
     (3, 2, 0.9, True),   # decays after step 6: the last step uses it
     (2, 1, 0.9, False),  # plain momentum
     (2, 1, 0.0, False)])  # no momentum buffer at all
@jax.enable_x64(True)
def test_matches_torch_sgd(steps_per_epoch, decay_epochs, momentum, nesterov,
                           record_parity):
  config = optimizer_config(decay_epochs=decay_epochs, momentum=momentum,
                            nesterov=nesterov).optimizer
  assert config.weight_decay == 5e-4
  assert config.backbone_lr_multiplier != 1  # the groups must differ
  inputs, targets, params, torch_flat, groups = twin_problem(1, config)
  tx = optimizer.make_optimizer(config, steps_per_epoch)
  state = tx.init(params)
  torch_params = flax.traverse_util.unflatten_dict(torch_flat)
  lr = config.learning_rate
  torch_opt = torch.optim.SGD(groups, lr=lr, momentum=momentum,
                              nesterov=nesterov,
                              weight_decay=config.weight_decay)
  scheduler = torch.optim.lr_scheduler.StepLR(
      torch_opt, step_size=decay_epochs, gamma=config.decay_factor)

  worst_param, worst_lr, seen_rates = 0.0, 0.0, set()
  for step in range(NUM_STEPS):
    rates = rates_at(config, steps_per_epoch, step)
    for group in torch_opt.param_groups:
      expected = group['lr']
      got = rates[f'learning_rate_{group["name"]}']
      worst_lr = max(worst_lr, abs(got - expected) / expected)
      assert got == pytest.approx(expected, rel=RATE_BOUND), (step,
                                                              group['name'])
    seen_rates.add(round(torch_opt.param_groups[1]['lr'], 12))
    state, params = step_both(
        tx, state, params, torch_params, torch_opt, inputs[step],
        targets[step], lambda: torch_step_at(torch_opt, rates))  # pylint: disable=cell-var-from-loop
    if (step + 1) % steps_per_epoch == 0:  # StepLR counts epochs
      scheduler.step()
    worst_param = max(worst_param, worst_param_error(
        params, torch_flat, np.float64, PARAM_BOUND, step))
  # The parameters have to move for the comparison to mean anything.
  moved = relative_error(params['backbone']['conv1']['kernel'],
                         small_params(0)['backbone']['conv1']['kernel'])
  assert moved > 1e-3
  # The schedule must have decayed within the steps compared.
  assert len(seen_rates) >= 2, seen_rates
  what = (f'SGD {NUM_STEPS} steps, spe={steps_per_epoch} '
          f'decay_epochs={decay_epochs} m={momentum} nesterov={nesterov}')
  record_parity(what + ': params (float64)', worst_param, PARAM_BOUND)
  record_parity(what + ': learning rates', worst_lr, RATE_BOUND)


# The float32 trajectory users train, against PyTorch's float32 SGD at its
# own StepLR rates: both round every operation at 6e-8 relative, the rates
# differ by RATE_BOUND, and 7 steps compound a few dozen such roundings on
# values of order 1 (measured 6e-8); a wrong rate, momentum or decay term
# is 1e-5 off or more.
FLOAT32_PARAM_BOUND = 1e-6


def test_float32_sgd_tracks_torch_at_its_own_rates(record_parity):
  config = optimizer_config(decay_epochs=1, momentum=0.9,
                            nesterov=True).optimizer
  steps_per_epoch = 2
  inputs, targets, params, torch_flat, groups = twin_problem(
      1, config, np.float32)
  tx = optimizer.make_optimizer(config, steps_per_epoch)
  state = tx.init(params)
  torch_params = flax.traverse_util.unflatten_dict(torch_flat)
  torch_opt = torch.optim.SGD(groups, lr=config.learning_rate, momentum=0.9,
                              nesterov=True,
                              weight_decay=config.weight_decay)
  scheduler = torch.optim.lr_scheduler.StepLR(
      torch_opt, step_size=1, gamma=config.decay_factor)
  worst = 0.0
  for step in range(NUM_STEPS):
    state, params = step_both(tx, state, params, torch_params, torch_opt,
                              inputs[step], targets[step], torch_opt.step)
    if (step + 1) % steps_per_epoch == 0:
      scheduler.step()
    worst = max(worst, worst_param_error(
        params, torch_flat, np.float32, FLOAT32_PARAM_BOUND, step))
  moved = relative_error(params['backbone']['conv1']['kernel'],
                         small_params(0)['backbone']['conv1']['kernel'])
  assert moved > 1e-3
  record_parity(f'SGD {NUM_STEPS} steps, float32 at PyTorch\'s own rates: '
                'params', worst, FLOAT32_PARAM_BOUND)


def test_parameter_groups():
  labels = optimizer.parameter_groups(small_params(0))
  flat = flax.traverse_util.flatten_dict(labels)
  assert set(flat) == set(flax.traverse_util.flatten_dict(small_params(0)))
  for path, label in flat.items():
    assert label == ('backbone' if path[0] == 'backbone' else 'heads'), path
  # Only the top-level key decides: a head's inner 'backbone' is a head.
  nested = optimizer.parameter_groups(
      {'heads_x': {'backbone': {'kernel': np.zeros(2)}}})
  assert nested == {'heads_x': {'backbone': {'kernel': 'heads'}}}


def test_decay_epochs_below_one_raises():
  config = optimizer_config(decay_epochs=0).optimizer
  with pytest.raises(ValueError, match='config.optimizer.decay_epochs'):
    optimizer.learning_rate_schedules(config, 10)
  with pytest.raises(ValueError, match='config.optimizer.decay_epochs'):
    optimizer.make_optimizer(config, 10)


def random_outputs(seed, batch=6, parts=6, classes=5, with_parts=True,
                   with_ds=True):
  rng = np.random.default_rng(seed)
  outputs = {'global_logits': rng.standard_normal((batch, classes))}
  if with_parts:
    outputs['part_logits'] = rng.standard_normal((batch, parts, classes))
  if with_ds:
    outputs['ds_logits'] = rng.standard_normal((batch, 3, classes))
  outputs = {k: (3 * v).astype(np.float32) for k, v in outputs.items()}
  labels = rng.integers(0, classes, batch)
  return outputs, labels


def torch_terms(outputs, labels):
  """Per-head mean cross-entropy, named as `cross_entropy_terms` names them."""
  target = torch.from_numpy(labels)
  terms = {}
  for i in range(outputs.get('part_logits', np.zeros((1, 0))).shape[1]):
    terms[f'part{i + 1}_ce'] = F.cross_entropy(
        torch.from_numpy(outputs['part_logits'][:, i]), target).item()
  terms['global_ce'] = F.cross_entropy(
      torch.from_numpy(outputs['global_logits']), target).item()
  for i in range(outputs.get('ds_logits', np.zeros((1, 0))).shape[1]):
    terms[f'ds{i + 1}_ce'] = F.cross_entropy(
        torch.from_numpy(outputs['ds_logits'][:, i]), target).item()
  return terms


@pytest.mark.parametrize('with_parts, with_ds',
                         [(True, True), (False, True), (True, False),
                          (False, False)])
def test_cross_entropy_terms_match_torch(with_parts, with_ds, record_parity):
  outputs, labels = random_outputs(2, with_parts=with_parts, with_ds=with_ds)
  ours = losses.cross_entropy_terms(
      {k: jnp.asarray(v) for k, v in outputs.items()}, jnp.asarray(labels))
  # The exact values: PyTorch in float64 on the same float32 logits.
  reference = torch_terms({k: v.astype(np.float64)
                           for k, v in outputs.items()}, labels)
  expected_names = ([f'part{i}_ce' for i in range(1, 7)] if with_parts else
                    []) + ['global_ce'] + (
                        ['ds1_ce', 'ds2_ce', 'ds3_ce'] if with_ds else [])
  assert list(ours) == expected_names
  assert set(reference) == set(expected_names)
  worst = 0.0
  for name, value in ours.items():
    assert value.shape == () and value.dtype == jnp.float32
    error = abs(float(value) - reference[name]) / max(1.0, reference[name])
    worst = max(worst, error)
    assert error <= LOSS_BOUND, (name, float(value), reference[name])
  record_parity(f'cross-entropy terms parts={with_parts} ds={with_ds}',
                worst, LOSS_BOUND)


def combined(terms, weighting, part_weight=0.8):
  """The loss of the config's cross-entropy term with these settings
  (use under jax.enable_x64 for float64 terms)."""
  config = experiment_config('market1501')
  settings = config.loss.terms.cross_entropy
  settings.weighting = weighting
  settings.part_weight = part_weight
  return losses.combine_heads(terms, settings.weighting, settings.part_weight)


# The weighted sums of the heads' terms are checked in float64 (the terms
# cast from the float32 cross-entropies): sums of at most 10 positive terms
# and a few products round to about 1e-16 of the total; 1e-14 leaves two
# orders of margin, and a wrong weight or count is off by 1e-2 or more.
COMBINE_BOUND = 1e-14


def float64_terms(seed, **with_heads):
  """The cross-entropy terms of random outputs, as float64 scalars (use
  under jax.enable_x64)."""
  outputs, labels = random_outputs(seed, **with_heads)
  terms = losses.cross_entropy_terms(outputs, jnp.asarray(labels))
  return {k: jnp.asarray(v, jnp.float64) for k, v in terms.items()}


@jax.enable_x64(True)
def test_total_loss_sum():
  terms = float64_terms(3)
  assert len(terms) == 10
  expected = float(np.sum([float(v) for v in terms.values()]))
  total = combined(terms, 'sum')
  assert total.dtype == jnp.float64
  assert float(total) == pytest.approx(expected, rel=COMBINE_BOUND)


@pytest.mark.parametrize('part_weight', [0.8, 0.3])
@jax.enable_x64(True)
def test_total_loss_paper(part_weight):
  terms = float64_terms(4)
  values = {k: float(v) for k, v in terms.items()}
  parts = [values[f'part{i}_ce'] for i in range(1, 7)]
  others = [values['global_ce'], values['ds1_ce'], values['ds2_ce'],
            values['ds3_ce']]
  expected = (part_weight * sum(parts) / 6 +
              (1 - part_weight) * sum(others) / 4)
  got = float(combined(terms, 'paper', part_weight))
  assert got == pytest.approx(expected, rel=COMBINE_BOUND)


@jax.enable_x64(True)
def test_total_loss_paper_without_parts():
  terms = float64_terms(5, with_parts=False)
  values = [float(v) for v in terms.values()]
  assert len(values) == 4
  # part_weight must not shrink the loss when there are no part terms.
  got = float(combined(terms, 'paper', 0.8))
  assert got == pytest.approx(sum(values) / 4, rel=COMBINE_BOUND)


def test_total_loss_unknown_weighting_raises():
  outputs, labels = random_outputs(6)
  terms = losses.cross_entropy_terms(outputs, jnp.asarray(labels))
  with pytest.raises(ValueError,
                     match='config.loss.terms.cross_entropy.weighting'):
    combined(terms, 'mean')


def test_accuracy_matches_hand_count():
  rng = np.random.default_rng(7)
  logits = rng.standard_normal((50, 9)).astype(np.float32)
  labels = rng.integers(0, 9, 50)
  # Plant known hits so the count is neither 0 nor everything.
  labels[:10] = np.argmax(logits[:10], axis=-1)
  hits = 0
  for row, label in zip(logits, labels):
    hits += all(row[label] > row[j] for j in range(len(row)) if j != label)
  assert 10 <= hits < 50
  got = float(losses.accuracy(jnp.asarray(logits), jnp.asarray(labels)))
  # hits / 50 as a float32: one rounding, under 6e-8 of a value below 1.
  assert got == pytest.approx(hits / 50, abs=1e-7)


def official_rga_rate(epoch):
  """RGA's `reid/utils/lr_scheduler.py` as REFERENCE.md describes it."""
  if epoch < 20:
    return 8e-6 + (8e-4 - 8e-6) * epoch / 20
  return 8e-4 * 0.5 ** sum(1 for m in range(80, 361, 40) if m <= epoch)


def test_rga_schedule_matches_official_formula():
  config = optimizer_config(
      name='adam', learning_rate=8e-4, backbone_lr_multiplier=1.0,
      warmup_epochs=20, warmup_start_factor=0.01,
      decay_milestones=tuple(range(80, 361, 40)), decay_factor=0.5).optimizer
  steps_per_epoch = 3
  for epoch in (0, 1, 10, 19, 20, 79, 80, 119, 120, 200, 359, 360, 599):
    for offset in (0, steps_per_epoch - 1):  # constant within an epoch
      rates = rates_at(
          config, steps_per_epoch, epoch * steps_per_epoch + offset)
      for rate in rates.values():
        assert rate == pytest.approx(official_rga_rate(epoch),
                                     rel=RATE_BOUND), (epoch, offset)


@pytest.mark.parametrize('name', ['adam', 'adamw'])
@jax.enable_x64(True)
def test_adam_matches_torch(name, record_parity):
  config = optimizer_config(name=name, learning_rate=0.01,
                            warmup_epochs=2, warmup_start_factor=0.1,
                            decay_milestones=(3,), decay_factor=0.5,
                            weight_decay=0.05).optimizer
  steps_per_epoch = 2
  inputs, targets, params, torch_flat, groups = twin_problem(2, config)
  tx = optimizer.make_optimizer(config, steps_per_epoch)
  state = tx.init(params)
  torch_params = flax.traverse_util.unflatten_dict(torch_flat)
  lr = config.learning_rate
  torch_class = torch.optim.Adam if name == 'adam' else torch.optim.AdamW
  torch_opt = torch_class(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8,
                          weight_decay=config.weight_decay)

  def torch_factor(epoch):  # written from the docstring's rule
    if epoch < 2:
      return 0.1 + 0.9 * epoch / 2
    return 0.5 ** (epoch >= 3)

  worst = 0.0
  for step in range(NUM_STEPS):
    rates = rates_at(config, steps_per_epoch, step)
    for group in torch_opt.param_groups:
      group['lr'] = group['base'] * torch_factor(step // steps_per_epoch)
      assert rates[f'learning_rate_{group["name"]}'] == pytest.approx(
          group['lr'], rel=RATE_BOUND), (step, group['name'])
    state, params = step_both(
        tx, state, params, torch_params, torch_opt, inputs[step],
        targets[step], lambda: torch_step_at(torch_opt, rates))  # pylint: disable=cell-var-from-loop
    worst = max(worst, worst_param_error(params, torch_flat, np.float64,
                                         PARAM_BOUND, step))
  moved = relative_error(params['backbone']['conv1']['kernel'],
                         small_params(1)['backbone']['conv1']['kernel'])
  assert moved > 1e-3
  record_parity(f'{name} {NUM_STEPS} steps with warm-up and decay: params '
                '(float64)', worst, PARAM_BOUND)


@pytest.mark.parametrize('name', ['sgd', 'adam', 'adamw'])
def test_frozen_parameters_never_move(name):
  config = optimizer_config(name=name, weight_decay=0.1).optimizer
  params = jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float32),
                                  small_params(2))
  frozen = lambda p: jax.tree_util.tree_map_with_path(
      lambda path, _: path[-1].key == 'bias' and path[0].key == 'backbone', p)
  tx = optimizer.make_optimizer(config, 4, frozen=frozen)
  state = tx.init(params)
  # Compiled: one program each rather than one per operation.
  grad_fn = jax.jit(jax.grad(lambda p, x, y: small_loss(p, x, y, jnp.tanh)))
  update = jax.jit(tx.update)
  rng = np.random.default_rng(5)
  start = params
  for _ in range(3):
    grads = grad_fn(params, rng.standard_normal((8, 4)).astype(np.float32),
                    rng.standard_normal((8, 2)).astype(np.float32))
    assert float(jnp.max(jnp.abs(grads['backbone']['bn1']['bias']))) > 0
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(params['backbone']['bn1']['bias'],
                                start['backbone']['bn1']['bias'])
  assert float(jnp.max(jnp.abs(params['backbone']['bn1']['scale'] -
                               start['backbone']['bn1']['scale']))) > 0


@pytest.mark.parametrize('overrides, key', [
    ({'name': 'rmsprop'}, 'config.optimizer.name'),
    ({'decay_milestones': (40, 20)}, 'config.optimizer.decay_milestones'),
    ({'warmup_start_factor': 2.0}, 'warmup_start_factor'),
])
def test_optimizer_config_errors_name_the_key(overrides, key):
  config = optimizer_config(**overrides).optimizer
  with pytest.raises(ValueError, match=key):
    optimizer.make_optimizer(config, 10)
