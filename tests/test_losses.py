"""Loss terms: batch-hard triplet against a naive loop, label smoothing
against PyTorch, the weighted sum of terms, and triplet mining over the
global batch giving the same gradient on 1 and 2 devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import example, given, settings, strategies as st
from torch.nn import functional as F

import helpers
from sa_reid_jax import losses
from sa_reid_jax.training import experiment_config


def naive_triplet(embeddings, labels, margin, soft_margin):
  """Per-anchor loops in float64, written from the definition."""
  e = np.asarray(embeddings, np.float64)
  values = []
  for a in range(len(e)):
    def dist(b):
      return np.sqrt(max(np.sum((e[a] - e[b]) ** 2), 1e-12))
    positives = [dist(b) for b in range(len(e)) if labels[b] == labels[a]]
    negatives = [dist(b) for b in range(len(e)) if labels[b] != labels[a]]
    if not negatives:
      values.append(0.0)
      continue
    difference = max(positives) - min(negatives)
    values.append(np.log1p(np.exp(difference)) if soft_margin
                  else max(0.0, difference + margin))
  return float(np.mean(values))


# One compiled program per batch size and margin kind, not one per
# operation.
jitted_triplet = jax.jit(losses.batch_hard_triplet,
                         static_argnames=('margin', 'soft_margin'))


@settings(max_examples=25, deadline=None)
# Identities of one example: the hardest positive is the anchor itself,
# whose distance must be 0, not float32 rounding of the expansion.
@example(seed=0, identities=2, per_identity=1, soft_margin=True)
@given(seed=st.integers(0, 2**31 - 1), identities=st.integers(1, 5),
       per_identity=st.integers(1, 4), soft_margin=st.booleans())
def test_triplet_matches_naive_loop(seed, identities, per_identity,
                                    soft_margin):
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(identities), per_identity)
  rng.shuffle(labels)
  embeddings = rng.standard_normal((len(labels), 6)).astype(np.float32)
  got, metrics = jitted_triplet(jnp.asarray(embeddings), jnp.asarray(labels),
                                margin=0.3, soft_margin=soft_margin)
  expected = naive_triplet(embeddings, labels, 0.3, soft_margin)
  # Float32 distances between 6-d unit-normal embeddings (about 3 apart)
  # are within a few 1e-7 of the float64 loop's; the loss is a mean of
  # such differences: 1e-5 relative (1e-6 absolute near 0) is ten times
  # that, far below any wrong mining (of the distances' size).
  assert float(got) == pytest.approx(expected, rel=1e-5, abs=1e-6)
  assert 0 <= float(metrics['triplet_active']) <= 1


def test_triplet_hand_computed():
  # On a line: identity 0 at 0 and 1, identity 1 at 3. Anchor 0: hardest
  # positive 1, hardest negative 3 -> max(0, 1 - 3 + 0.3) = 0; anchor at 1:
  # positive 1, negative 2 -> 0; anchor at 3 (alone): positive 0 (itself),
  # negative 2 -> 0. With margin 2.5: 0.5, 1.5, 0.5 -> mean 2.5 / 3.
  # Float32 distances of small integers through a square root: within a
  # few float32 ulps (1e-7) of the exact values.
  embeddings = jnp.asarray([[0.0], [1.0], [3.0]])
  labels = jnp.asarray([0, 0, 1])
  loss, _ = losses.batch_hard_triplet(embeddings, labels, margin=0.3)
  assert float(loss) == pytest.approx(0.0, abs=1e-6)
  loss, metrics = losses.batch_hard_triplet(embeddings, labels, margin=2.5)
  assert float(loss) == pytest.approx(2.5 / 3, rel=1e-5)
  assert float(metrics['triplet_active']) == 1.0
  # The anchor alone is its own hardest positive at the distance floor
  # (1e-6 rather than 0): (1 + 1 + 1e-6) / 3.
  assert float(metrics['triplet_ap']) == pytest.approx(2 / 3, rel=1e-4)


def test_triplet_gradient_finite_differences():
  rng = np.random.default_rng(3)
  embeddings = rng.standard_normal((8, 4))
  labels = jnp.asarray([0, 0, 1, 1, 2, 2, 3, 3])
  with jax.enable_x64():
    loss = lambda e: losses.batch_hard_triplet(e, labels, margin=1.0)[0]
    x = jnp.asarray(embeddings, jnp.float64)
    grad = np.asarray(jax.grad(loss)(x))
    assert np.any(grad != 0)
    # Central differences in float64: truncation ~step^2 = 1e-12, rounding
    # ~1e-16 / step = 1e-10 of the loss's scale; 1e-8 absolute and 1e-5
    # relative leave margin and catch any wrong gradient term.
    step = 1e-6
    for index in [(0, 0), (3, 2), (6, 1)]:
      bump = np.zeros_like(embeddings)
      bump[index] = step
      numeric = (float(loss(x + bump)) - float(loss(x - bump))) / (2 * step)
      assert grad[index] == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def test_one_identity_batch_has_no_loss_and_finite_gradient():
  embeddings = jnp.asarray(np.random.default_rng(0).standard_normal((4, 3)))
  labels = jnp.zeros(4, jnp.int32)
  fn = lambda e: losses.batch_hard_triplet(e, labels)[0]
  assert float(fn(embeddings)) == 0.0
  assert np.all(np.isfinite(np.asarray(jax.grad(fn)(embeddings))))


def test_drawn_twice_is_at_distance_floor_with_zero_gradient():
  # An identity with one image that the P x K sampler drew 4 times, with
  # the same augmentation: its copies are one point. Their distance is the
  # clamp floor exactly and the hardest positive carries no gradient,
  # whatever the precision of the backend's matrix products (the
  # expansion ||a||^2 + ||b||^2 - 2 <a, b> is exact here only where the
  # backend groups <a, a> as it groups ||a||^2).
  rng = np.random.default_rng(5)
  single = rng.standard_normal((1, 2048)).astype(np.float32) * 10
  others = rng.standard_normal((4, 2048)).astype(np.float32) * 10
  embeddings = jnp.asarray(np.concatenate([np.repeat(single, 4, 0), others]))
  labels = jnp.asarray([0, 0, 0, 0, 1, 1, 2, 2])
  distances = np.asarray(losses.triplet.pairwise_distances(embeddings,
                                                           embeddings))
  np.testing.assert_array_equal(distances[:4, :4], np.float32(1e-6))
  _, metrics = losses.batch_hard_triplet(embeddings, labels, margin=1e4)
  # Anchors 0-3: hardest positive 1e-6; 4-7: their pair's distance.
  expected_ap = np.mean([1e-6] * 4 + [distances[4, 5]] * 2 +
                        [distances[6, 7]] * 2)
  # A float32 mean of the same 8 float32 distances: at most 7 roundings of
  # 6e-8 (4.2e-7) of the sum.
  assert float(metrics['triplet_ap']) == pytest.approx(expected_ap, rel=1e-6)
  grad = jax.grad(lambda e: losses.batch_hard_triplet(
      e, labels, margin=1e4)[0])(embeddings)
  # With the margin every anchor is active; each copy's gradient comes
  # only from its hardest negative, the same for all four copies.
  grad = np.asarray(grad)
  np.testing.assert_array_equal(grad[1:4], np.repeat(grad[:1], 3, 0))


@pytest.mark.parametrize('epsilon', [0.0, 0.1])
def test_label_smoothing_matches_torch(epsilon):
  rng = np.random.default_rng(1)
  logits = rng.standard_normal((7, 5)).astype(np.float32)
  labels = rng.integers(0, 5, 7)
  terms = losses.cross_entropy_terms({'global_logits': jnp.asarray(logits)},
                                     jnp.asarray(labels), epsilon)
  expected = F.cross_entropy(torch.from_numpy(logits).double(),
                             torch.from_numpy(labels),
                             label_smoothing=epsilon).item()
  # The loss computes in float32: a log-softmax of 5 unit-normal logits and
  # a mean over 7 rows, against the exact (float64) value: a few float32
  # roundings (6e-8 each) of a loss of about 1.5.
  assert float(terms['global_ce']) == pytest.approx(expected, rel=1e-6)


def test_total_loss_weights_terms_and_skips_zero_weights():
  config = experiment_config('market1501')
  rng = np.random.default_rng(2)
  labels = jnp.asarray([0, 0, 1, 1])
  outputs = {'global_logits': jnp.asarray(rng.standard_normal((4, 3))),
             'embeddings': {'global': jnp.asarray(
                 rng.standard_normal((4, 5)))}}
  batch = {'labels': labels}
  loss, metrics = losses.total_loss(config, outputs, batch)
  assert 'triplet' not in metrics  # weight 0: not computed
  # One term of weight 1: exactly that term.
  assert float(loss) == float(metrics['global_ce'])
  config.loss.terms.cross_entropy.weight = 0.5
  config.loss.terms.triplet.weight = 2.0
  config.loss.terms.triplet.margin = 5.0
  loss, metrics = losses.total_loss(config, outputs, batch)
  triplet, _ = losses.batch_hard_triplet(outputs['embeddings']['global'],
                                         labels, margin=5.0)
  # The same float32 computation twice: the same float.
  assert float(metrics['triplet']) == float(triplet)
  # Float32 weights 0.5 and 2 scale exactly; the sum of the two terms
  # rounds once (6e-8).
  assert float(loss) == pytest.approx(
      0.5 * float(metrics['global_ce']) + 2.0 * float(triplet), rel=1e-6)


def test_config_errors_name_the_key():
  config = experiment_config('market1501')
  config.loss.terms.triplet.weight = 1.0
  with pytest.raises(ValueError, match=r"config.loss.terms.triplet.embedding="
                     r"'global' is not an embedding of this network"):
    losses.check_outputs(config, {'global_logits': None, 'embeddings': {}})
  config.loss.terms.triplet.weight = -1.0
  with pytest.raises(ValueError, match='config.loss.terms.triplet.weight'):
    losses.active_terms(config)
  config.loss.terms.triplet.weight = 0.0
  config.loss.terms.cross_entropy.weight = 0.0
  with pytest.raises(ValueError, match='every weight is 0'):
    losses.active_terms(config)
  config.loss.terms.center = {'weight': 1.0}
  with pytest.raises(ValueError, match=r"unknown term\(s\) \['center'\]"):
    losses.active_terms(config)


@pytest.mark.parametrize('key, value, message', [
    ('cross_entropy.label_smoothing', 1.5, 'in \\[0, 1\\), got 1.5'),
    ('cross_entropy.weighting', 'mean', 'one of'),
    ('triplet.margin', -0.3, '>= 0, got -0.3'),
    ('attention_mining.alpha', 0.0, 'finite and > 0, got 0.0'),
    ('attention_mining.alpha', float('inf'), 'finite and > 0, got inf'),
    ('attention_mining.weight', float('inf'), 'finite and >= 0, got inf'),
    ('consistency.weight', float('nan'), 'finite and >= 0, got nan'),
    ('attention_mining.beta', 1.5, 'in \\[0, 1\\]'),
    ('attention_mining.score', 'softmax', "one of \\('logit', "
     "'probability'\\), got 'softmax'"),
    ('consistency.threshold', -0.1, 'in \\[0, 1\\]'),
])
def test_settings_out_of_range_name_the_key(key, value, message):
  from sa_reid_jax.training.casn_defaults import casn_experiment_config  # pylint: disable=g-import-not-at-top
  config = casn_experiment_config('market1501')
  config.loss.terms.triplet.weight = 1.0
  losses.check_settings(config)
  term, name = key.split('.')
  config.loss.terms[term][name] = value
  with pytest.raises(ValueError, match=f'config.loss.terms.{key} must be '
                     f'{message}'):
    losses.check_settings(config)


@pytest.mark.parametrize('changes, message', [
    ({'data.images_per_identity': 1}, "verification needs positive pairs in "
     "every batch \\(and verification negative ones\\): config.data.sampler "
     "one of \\('identity', 'identity_chunks'\\) with "
     'config.data.images_per_identity >= 2 and '
     'config.batch_size >= 2 x images_per_identity \\(P x K, P >= 2\\), '
     "got sampler='identity_chunks', images_per_identity=1, batch_size=16"),
    # One identity per batch: no negative pairs.
    ({'data.images_per_identity': 16}, 'images_per_identity=16, '
     'batch_size=16'),
    ({'data.sampler': 'uniform'}, "got sampler='uniform'"),
    ({'data.sampler': 'uniform', 'loss.terms.verification.weight': 0.0},
     'config.loss.terms.consistency needs positive pairs'),
    ({'casn.gradcam_gradient': 'none'}, "consistency: with config.casn."
     "gradcam_gradient='none' no gradient reaches the maps"),
])
def test_siamese_terms_refuse_batches_without_positive_pairs(changes,
                                                             message):
  from sa_reid_jax.training.casn_defaults import casn_experiment_config  # pylint: disable=g-import-not-at-top
  config = casn_experiment_config('market1501')
  losses.check_settings(config)
  for key, value in changes.items():
    block, name = key.rsplit('.', 1)
    target = config
    for part in block.split('.'):
      target = target[part]
    target[name] = value
  with pytest.raises(ValueError, match=message):
    losses.check_settings(config)
  # Without the pair terms the same sampler is fine.
  config.loss.terms.consistency.weight = 0.0
  config.loss.terms.verification.weight = 0.0
  losses.check_settings(config)


def _loss(weights, inputs, labels, axis_name):
  loss, _ = losses.batch_hard_triplet(inputs @ weights, labels, margin=1.0,
                                      axis_name=axis_name)
  return loss


def test_global_batch_mining_is_device_count_invariant():
  """Triplets mined over the global batch: the data-parallel gradient on 2
  devices is the one-device gradient. Exact in principle, so checked in
  float64 (only the order of the sums differs: about 1e-16 of the
  gradient's scale; 1e-12 leaves margin, float32 would be 1e-7 off)."""
  assert len(jax.devices()) >= 2
  rng = np.random.default_rng(11)
  inputs = rng.standard_normal((8, 5))
  # Identities split across devices: mining must look at the other half.
  labels = np.asarray([0, 1, 2, 3, 0, 1, 2, 3], np.int32)
  weights = rng.standard_normal((5, 4))
  with jax.enable_x64(True):
    gradient = jax.jit(jax.grad(_loss), static_argnums=3)
    one_device = np.asarray(gradient(weights, inputs, labels, None))
    # A per-device mining (each half alone) gives another gradient: the
    # comparison below can tell the two apart.
    halves = sum(np.asarray(gradient(weights, inputs[s], labels[s], None))
                 for s in (slice(0, 4), slice(4, 8))) / 2
    two_devices = helpers.data_parallel_gradient(
        _loss, weights, inputs, labels, jax.devices()[:2])
  assert one_device.dtype == two_devices.dtype == np.float64
  assert np.max(np.abs(halves - one_device)) > 1e-3
  assert np.max(np.abs(two_devices - one_device)) <= 1e-12 * max(
      1.0, np.max(np.abs(one_device)))
