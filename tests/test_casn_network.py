"""The CASN network: output contract, per-example head, siamese maths,
dropout keyed per example, configs, the model store and dtypes."""

import functools

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sa_reid_jax.models import registry
from sa_reid_jax.models import store
from sa_reid_jax.models.casn import CASN_VARIANTS, CASNNet, casn_variant
from sa_reid_jax.models.sanet import SANet, per_example_dropout

TINY = dict(stage_sizes=(1, 1, 1, 1), base_width=4, num_classes=5,
            num_stripes=4, reduced_dim=16, siamese_dim=24)
SIZE = (64, 32)  # PCB: a 4x2 final map (last stride 1), one row a stripe
WIDTH = 128  # layer4's channels: 32 * base_width
# The siamese feature's width: unlike C, the stripes' D and the classes, so
# that a transposed or misplaced fc shows.
SIAMESE_DIM = TINY['siamese_dim']
BATCH = 4


def tiny(variant, **kwargs):
  return casn_variant(variant, **{**TINY, **kwargs})


def random_variables(model, seed):
  """Random kernels, biases and BatchNorm parameters and statistics.

  Drawn with numpy from the variables' shapes (compiling `model.init` costs
  more than the tests' forward passes). Non-trivial BatchNorm statistics and
  biases, so that a misplaced one shows.
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x),
      jax.ShapeDtypeStruct((1, *SIZE, 3), jnp.float32))

  def draw(path, leaf):
    name = path[-1]
    if name == 'kernel':
      fan_in = int(np.prod(leaf.shape[:-1]))
      value = rng.normal(0, np.sqrt(2 / fan_in), leaf.shape)
    elif name in ('scale', 'var'):
      value = rng.uniform(0.5, 1.5, leaf.shape)
    else:  # bias, mean
      value = rng.normal(0, 0.1, leaf.shape)
    return value.astype(np.float32)

  return flax.traverse_util.path_aware_map(draw, shapes)


IMAGES = jax.random.normal(jax.random.key(3), (BATCH, *SIZE, 3))
IMAGES64 = np.asarray(IMAGES, np.float64)
# Properties exact in principle (a mean, a sum, a normalisation, batch rows
# that do not interact, a permuted batch, the same maths compiled twice) are
# checked in float64: its resolution is 2.2e-16, the values are of order
# 1-10 and pass through at most a few hundred operations, so the two sides
# agree to about 1e-15 of the values; 1e-13 leaves two orders of margin and
# is far below float32's 1e-7.
EXACT64 = dict(rtol=1e-13, atol=1e-13)


def in_float64(model, variables):
  """The network and its variables in float64 (use under jax.enable_x64)."""
  return (model.clone(dtype='float64'),
          jax.tree.map(lambda v: np.asarray(v, np.float64), variables))


def to_numpy(tree):
  """JAX arrays as NumPy arrays: float64 results leave jax.enable_x64 as
  they are (JAX operations outside it would compute in float32)."""
  return jax.tree.map(np.asarray, tree)


@pytest.fixture(scope='module', params=sorted(CASN_VARIANTS))
def network(request):
  """(variant, model, variables) of a tiny network of each variant."""
  model = tiny(request.param)
  return request.param, model, random_variables(model, seed=4)


@functools.partial(jax.jit, static_argnums=0)
def forward(model, variables, images):
  return model.apply(variables, images, train=False)


@functools.partial(jax.jit, static_argnums=0)
def feature_map(model, variables, images):
  return model.apply(variables, images, method=CASNNet.feature_map)


@functools.partial(jax.jit, static_argnums=0)
def head(model, variables, fmap):
  return model.apply(variables, fmap, method=CASNNet.head_outputs)


def test_outputs_follow_the_contract(network):
  variant, model, variables = network
  out = forward(model, variables, IMAGES)
  # PCB's descriptor is the pooled stripes (C wide), not the reduced ones.
  parts = 1 if variant == 'ide' else 4
  assert out['features'].shape == (BATCH, parts, WIDTH)
  assert out['global_features'].shape == (BATCH, WIDTH)
  assert out['global_logits'].shape == (BATCH, 5)
  assert out['verification'].shape == (BATCH, SIAMESE_DIM)
  for name in ('features', 'global_features', 'global_logits',
               'verification'):
    assert out[name].dtype == jnp.float32, name
    assert np.all(np.isfinite(out[name])), name
  assert set(out['embeddings']) == {'global'}
  np.testing.assert_array_equal(out['embeddings']['global'],
                                out['global_features'])
  # The verification vector's maths: `test_siamese_feature_and_importance
  # _by_hand`.
  assert out['attention'] == {}
  fmap = feature_map(model, variables, IMAGES)
  # IDE keeps the ImageNet network's last stride 2, PCB halves it.
  assert fmap.shape == ((BATCH, 2, 1, WIDTH) if variant == 'ide'
                        else (BATCH, 4, 2, WIDTH))
  if variant == 'ide':
    assert 'part_logits' not in out
  else:
    assert out['part_logits'].shape == (BATCH, 4, 5)
    assert out['part_logits'].dtype == jnp.float32
  # The float32 network users run: a unit-norm descriptor, the mean of the
  # map, to float32 precision (resolution 1.2e-7; a norm or mean of a few
  # dozen terms rounds by a few times that; 1e-5 relative leaves margin).
  fmap32 = np.asarray(fmap, np.float64)
  np.testing.assert_allclose(
      np.linalg.norm(np.asarray(out['features'], np.float64), axis=-1), 1,
      rtol=1e-5)
  np.testing.assert_allclose(out['global_features'],
                             fmap32.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
  # The descriptor's maths, exact in principle: in float64.
  with jax.enable_x64(True):
    model, variables = in_float64(model, variables)
    out = to_numpy(forward(model, variables, IMAGES64))
    fmap = np.asarray(feature_map(model, variables, IMAGES64))
  assert out['features'].dtype == jnp.float64
  np.testing.assert_allclose(np.linalg.norm(out['features'], axis=-1), 1,
                             **EXACT64)
  np.testing.assert_allclose(out['global_features'],
                             np.mean(fmap, axis=(1, 2)), **EXACT64)
  if variant == 'ide':
    np.testing.assert_allclose(out['features'][:, 0],
                               out['global_features'] / np.linalg.norm(
                                   out['global_features'], axis=-1,
                                   keepdims=True), **EXACT64)


def pcb_head_reference(fmap, variables, train, mask=None):
  """PCB's head as the reference notes give it (the PCB author's code), in
  NumPy float64, from a (B, 4, w, C) map: four rows, row i stripe i.

  Each stripe averaged to a C-d part; the descriptor the parts, each
  L2-normalised; dropout (`mask`, inverted: 0 or 1 / keep) on the parts;
  ONE 1x1 conv without bias (a (C, D) matrix) shared by every part; ONE
  BatchNorm over every part of every image (its batch moments in training,
  the biased variance, eps 1e-5; else the running ones); ReLU; then part
  p's own classifier W_p, b_p; the identity score the sum over the parts.
  """
  params = variables['params']
  parts = np.stack([fmap[:, i].mean(axis=1) for i in range(4)], axis=1)
  features = parts / np.linalg.norm(parts, axis=-1, keepdims=True)
  dropped = parts if mask is None else parts * mask
  reduced = dropped @ params['part_reduce']['kernel']  # (B, 4, D)
  if train:
    mean, var = reduced.mean(axis=(0, 1)), reduced.var(axis=(0, 1))
  else:
    running = variables['batch_stats']['part_bn']
    mean, var = running['mean'], running['var']
  bn = params['part_bn']
  reduced = np.maximum(
      (reduced - mean) / np.sqrt(var + 1e-5) * bn['scale'] + bn['bias'], 0)
  part_logits = np.stack(
      [reduced[:, p] @ params['part_classifier_kernel'][p] +
       params['part_classifier_bias'][p] for p in range(4)], axis=1)
  return dict(features=features, reduction_input=dropped,
              part_logits=part_logits, global_logits=part_logits.sum(axis=1),
              moments=(mean, var))


def pcb_head_with_reduction_input(model, variables, fmap, train, ids=None,
                                  rngs=None):
  """`head_outputs` (batch_stats updated in training) and the input its
  ``part_reduce`` layer received."""
  seen = {}

  def spy(next_fun, args, kwargs, context):
    if context.module.name == 'part_reduce':
      seen['input'] = args[0]
    return next_fun(*args, **kwargs)

  with flax.linen.intercept_methods(spy):
    outputs, state = model.apply(variables, fmap, train, ids, rngs=rngs,
                                 mutable=['batch_stats'],
                                 method=CASNNet.head_outputs)
  return outputs, state, seen['input']


def test_pcb_head_is_pcbs_one_shared_reduction():
  """PCB's head (the PCB author's code, reference notes "CASN"): ONE
  reduction and ONE BatchNorm shared by the stripes, the pooled stripes the
  descriptor; against a NumPy float64 transcription, in eval and in train
  mode (no dropout here: `test_pcb_dropout_acts_on_the_pooled_stripes`)."""
  model = tiny('pcb', dropout_rate=0.0)
  variables = random_variables(model, seed=5)
  params, stats = variables['params'], variables['batch_stats']
  # SANet's part head's names and shapes: one (C, D) reduction kernel, one
  # BatchNorm, the classifiers batched (P, D, K) and (P, K).
  heads = {name for name in params if name not in ('backbone', 'siamese')
           and not name.startswith('siamese_')}
  assert heads == {'part_reduce', 'part_bn', 'part_classifier_kernel',
                   'part_classifier_bias'}
  assert jax.tree.map(np.shape, {name: params[name] for name in heads}) == {
      'part_reduce': {'kernel': (WIDTH, 16)},
      'part_bn': {'scale': (16,), 'bias': (16,)},
      'part_classifier_kernel': (4, 16, 5),
      'part_classifier_bias': (4, 5)}
  assert set(stats) == {'backbone', 'part_bn'}
  assert jax.tree.map(np.shape, stats['part_bn']) == {'mean': (16,),
                                                      'var': (16,)}
  with jax.enable_x64(True):
    model, variables = in_float64(model, variables)
    fmap = np.asarray(feature_map(model, variables, IMAGES64))
    run = jax.jit(functools.partial(pcb_head_with_reduction_input, model),
                  static_argnums=2)
    results = {train: to_numpy(run(variables, fmap, train))
               for train in (False, True)}
  assert fmap.shape == (BATCH, 4, 2, WIDTH)
  for train, (out, state, reduction_input) in results.items():
    expected = pcb_head_reference(fmap, variables, train)
    assert out['features'].dtype == jnp.float64
    assert out['features'].shape == (BATCH, 4, WIDTH)
    for name in ('features', 'part_logits', 'global_logits'):
      np.testing.assert_allclose(out[name], expected[name], **EXACT64,
                                 err_msg=f'{name}, train={train}')
    np.testing.assert_allclose(reduction_input, expected['reduction_input'],
                               **EXACT64)
    np.testing.assert_allclose(out['global_logits'],
                               out['part_logits'].sum(axis=1), **EXACT64)
    if train:
      # The running statistics follow the one BatchNorm's moments over
      # all B * P = 16 reduced parts (PyTorch's rule: unbiased variance).
      mean, var = expected['moments']
      running = variables['batch_stats']['part_bn']
      np.testing.assert_allclose(
          state['batch_stats']['part_bn']['mean'],
          0.9 * running['mean'] + 0.1 * mean, **EXACT64)
      np.testing.assert_allclose(
          state['batch_stats']['part_bn']['var'],
          0.9 * running['var'] + 0.1 * var * 16 / 15, **EXACT64)
  # Batch moments are not the running ones: the two modes differ.
  assert not np.allclose(results[True][0]['part_logits'],
                         results[False][0]['part_logits'], atol=1e-3)


def test_pcb_dropout_acts_on_the_pooled_stripes():
  """In training, PCB's dropout zeroes (and scales) entries of the pooled
  2048-d stripes, per example (`per_example_dropout`), before the shared
  reduction; the descriptor is the stripes undropped. In float64."""
  model = tiny('pcb', dropout_rate=0.5)
  variables = random_variables(model, seed=6)
  ids = jnp.arange(BATCH) + 30
  rngs = {'dropout': jax.random.key(13)}
  with jax.enable_x64(True):
    model, variables = in_float64(model, variables)
    fmap = np.asarray(feature_map(model, variables, IMAGES64))
    out, _, reduction_input = to_numpy(jax.jit(
        functools.partial(pcb_head_with_reduction_input, model,
                          train=True, rngs=rngs))(variables, fmap, ids=ids))
    # The head's mask: the network's first 'dropout' key (its only use)
    # through `per_example_dropout`, applied to ones.
    key = model.apply(variables, rngs=rngs,
                      method=lambda m: m.make_rng('dropout'))
    mask = np.asarray(per_example_dropout(
        jnp.ones((BATCH, 4, WIDTH), jnp.float64), 0.5, key, ids))
  assert set(np.unique(mask).tolist()) == {0.0, 2.0}
  expected = pcb_head_reference(fmap, variables, True, mask)
  np.testing.assert_allclose(reduction_input, expected['reduction_input'],
                             **EXACT64)
  for name in ('features', 'part_logits', 'global_logits'):
    np.testing.assert_allclose(out[name], expected[name], **EXACT64,
                               err_msg=name)
  # The mask did act: without it the logits are others.
  undropped = pcb_head_reference(fmap, variables, True)
  assert not np.allclose(undropped['part_logits'], out['part_logits'],
                         atol=1e-3)


def test_call_is_head_outputs_of_feature_map(network):
  _, model, variables = network
  ids = jnp.arange(BATCH) + 7
  rngs = {'dropout': jax.random.key(8)}

  @jax.jit
  def both(variables, images):
    direct = model.apply(variables, images)
    staged = model.apply(variables, images, method=lambda m, x: m.head_outputs(
        m.feature_map(x)))
    # In training too: batch statistics and the same dropout draws.
    direct_train = model.apply(variables, images, train=True,
                               example_ids=ids, rngs=rngs,
                               mutable=['batch_stats'])
    staged_train = model.apply(
        variables, images, rngs=rngs, mutable=['batch_stats'],
        method=lambda m, x: m.head_outputs(m.feature_map(x, True), True, ids))
    return direct, staged, direct_train, staged_train

  direct, staged, direct_train, staged_train = both(variables, IMAGES)
  jax.tree.map(np.testing.assert_array_equal, direct, staged)
  jax.tree.map(np.testing.assert_array_equal, direct_train, staged_train)


def test_eval_head_treats_every_example_alone(network):
  """Batch rows do not interact in eval mode: each example's outputs, and
  the gradient of the batch's summed true-class logits (Grad-CAM's), are
  those of the example alone.

  Exact in principle, so checked in float64: a batch of 4 and a batch of 1
  differ only in how their matrix products are blocked, which changes the
  rounding (by 1e-6 of values near 10 in float32; 1e-15 in float64).
  """
  _, model, variables = network
  labels = jnp.array([0, 3, 1, 4])
  with jax.enable_x64(True):
    model, variables = in_float64(model, variables)
    fmap = feature_map(model, variables, IMAGES64)

    def score(fmap, labels):
      logits = model.apply(variables, fmap,
                           method=CASNNet.head_outputs)['global_logits']
      return jnp.sum(jnp.take_along_axis(logits, labels[:, None], axis=1))

    gradient = jax.jit(jax.grad(score))
    batch_outputs = head(model, variables, fmap)
    batch_gradient = gradient(fmap, labels)
    assert batch_gradient.dtype == jnp.float64
    for i in range(BATCH):
      alone = head(model, variables, fmap[i:i + 1])
      for name in ('features', 'global_features', 'global_logits',
                   'part_logits'):
        if name in alone:
          np.testing.assert_allclose(batch_outputs[name][i:i + 1],
                                     alone[name], **EXACT64, err_msg=name)
      np.testing.assert_allclose(batch_gradient[i:i + 1],
                                 gradient(fmap[i:i + 1], labels[i:i + 1]),
                                 **EXACT64)
  assert np.abs(batch_gradient).max() > 0


def test_siamese_logits_by_hand_symmetric_and_any_leading_shape(network):
  _, model, variables = network
  siamese = jax.jit(functools.partial(model.apply, variables,
                                      method=CASNNet.siamese_logits))
  kernel = np.asarray(variables['params']['siamese']['kernel'], np.float64)
  bias = float(variables['params']['siamese']['bias'][0])
  # It compares the siamese features f_i (SIAMESE_DIM wide), not the map.
  assert kernel.shape == (SIAMESE_DIM, 1) and bias != 0
  rng = np.random.default_rng(9)
  a = rng.normal(size=(3, 2, SIAMESE_DIM)).astype(np.float32)
  b = rng.normal(size=(3, 2, SIAMESE_DIM)).astype(np.float32)
  logits = siamese(a, b)
  assert logits.shape == (3, 2) and logits.dtype == jnp.float32
  expected = np.einsum('mnk,k->mn', (a.astype(np.float64) - b)**2,
                       kernel[:, 0]) + bias
  # Float32 sums of 24 products of both signs, against the exact value:
  # about sqrt(24) float32 roundings (6e-8 each) of terms as large as the
  # logits (|logit| > 0.1 here: no cancellation to zero).
  assert np.abs(expected).min() > 0.1
  np.testing.assert_allclose(logits, expected, rtol=1e-5)
  # Exact in float32 too: (a - b)^2 and (b - a)^2 are the same floats, and a
  # zero difference adds exact zeros to the bias.
  np.testing.assert_array_equal(siamese(b, a), logits)
  np.testing.assert_array_equal(siamese(a, a), np.full((3, 2), bias))
  with jax.enable_x64(True):
    model64, variables64 = in_float64(model, variables)
    siamese64 = jax.jit(functools.partial(model64.apply, variables64,
                                          method=CASNNet.siamese_logits))
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    logits64 = siamese64(a64, b64)
    assert logits64.dtype == jnp.float64
    for m in range(3):
      for n in range(2):
        by_hand = sum(kernel[k, 0] * (a64[m, n, k] - b64[m, n, k])**2
                      for k in range(SIAMESE_DIM)) + bias
        np.testing.assert_allclose(logits64[m, n], by_hand, **EXACT64)
    # Every pair of two sets, by broadcasting or spelt out: the same maths.
    pairs = siamese64(a64[:, :1], b64[None, :, 0])
    assert pairs.shape == (3, 3)
    np.testing.assert_allclose(
        pairs, siamese64(np.repeat(a64[:, :1], 3, axis=1),
                         np.repeat(b64[None, :, 0], 3, axis=0)), **EXACT64)
  with pytest.raises(ValueError, match='same last axis'):
    model.apply(variables, a, b[..., :-1], method=CASNNet.siamese_logits)


def test_siamese_feature_and_importance_by_hand(network):
  """The siamese module's own fc and its importance score (seed 004,
  section 2.2 and the author's reply), against NumPy float64: f = pooled
  @ W + b is the ``verification`` output, in training (dropout on, other
  ids) as in inference; s = sum_k max(f_k, 0); both example by example
  (a row alone gives the batch's row, and so does the gradient of the
  batch's summed scores, Grad-CAM's). Exact in principle: float64."""
  _, model, variables = network
  ids = jnp.arange(BATCH) + 30
  with jax.enable_x64(True):
    model, variables = in_float64(model, variables)
    fmap = np.asarray(feature_map(model, variables, IMAGES64))
    out = to_numpy(head(model, variables, fmap))
    train_out = to_numpy(jax.jit(lambda v, a: model.apply(
        v, a, True, ids, rngs={'dropout': jax.random.key(13)},
        mutable=['batch_stats'], method=CASNNet.head_outputs)[0])(
            variables, fmap))
    importance = jax.jit(functools.partial(
        model.apply, method=CASNNet.siamese_importance))
    scores = np.asarray(importance(variables, fmap))
    gradient = jax.jit(jax.grad(lambda a: jnp.sum(importance(variables, a))))
    batch_gradient = np.asarray(gradient(fmap))
    alone = [(np.asarray(importance(variables, fmap[i:i + 1])),
              np.asarray(gradient(fmap[i:i + 1]))) for i in range(BATCH)]
  fc = variables['params']['siamese_fc']
  assert fc['kernel'].shape == (WIDTH, SIAMESE_DIM)
  assert fc['bias'].shape == (SIAMESE_DIM,) and np.abs(fc['bias']).max() > 0
  f = fmap.mean(axis=(1, 2)) @ fc['kernel'] + fc['bias']
  assert out['verification'].dtype == jnp.float64
  np.testing.assert_allclose(out['verification'], f, **EXACT64)
  np.testing.assert_allclose(train_out['verification'], f, **EXACT64)
  # Unlike the pooled (post-ReLU) map, f has components of both signs:
  # "the neurons of f_i larger than zero" select some of them.
  assert (f > 0).any() and (f < 0).any() and (f > 0).mean() < 1
  assert scores.shape == (BATCH,) and scores.dtype == np.float64
  np.testing.assert_allclose(scores, np.maximum(f, 0).sum(axis=-1),
                             **EXACT64)
  # d s / d A_hwk = (1 / (h w)) sum_j W_kj [f_j > 0], the same everywhere.
  h, w = fmap.shape[1:3]
  expected_gradient = ((f > 0) @ fc['kernel'].T / (h * w))[:, None, None, :]
  np.testing.assert_allclose(
      batch_gradient, np.broadcast_to(expected_gradient, fmap.shape),
      **EXACT64)
  for i, (score, grad) in enumerate(alone):
    np.testing.assert_allclose(score, scores[i:i + 1], **EXACT64)
    np.testing.assert_allclose(grad, batch_gradient[i:i + 1], **EXACT64)


def test_dropout_mask_depends_on_the_example_id_only():
  x = jnp.ones((3, 2, 50))
  rng = jax.random.key(10)
  first = per_example_dropout(x, 0.5, rng, jnp.array([4, 5, 6]))
  again = per_example_dropout(x[1:], 0.5, rng, jnp.array([5, 6]))
  np.testing.assert_array_equal(first[1:], again)
  assert set(np.unique(first).tolist()) == {0.0, 2.0}
  assert not np.array_equal(first[1], first[2])


def test_train_mode_dropout_is_keyed_per_example(network):
  """The same example id gives the same training output wherever the
  example sits in the batch; other ids give other outputs. (Train-mode
  BatchNorm reads the whole batch: the neighbours are the same images,
  permuted, so the batch statistics are too.) Exact in principle, so
  checked in float64: a permuted batch sums its statistics in another
  order."""
  variant, model32, variables32 = network
  rngs = {'dropout': jax.random.key(11)}
  order = np.array([2, 0, 3, 1])
  ids = jnp.arange(BATCH) + 20
  with jax.enable_x64(True):
    model, variables = in_float64(model32, variables32)

    @jax.jit
    def train_outputs(images, ids):
      outputs, _ = model.apply(variables, images, train=True,
                               example_ids=ids, rngs=rngs,
                               mutable=['batch_stats'])
      return outputs

    out = to_numpy(train_outputs(IMAGES64, ids))
    permuted = to_numpy(train_outputs(IMAGES64[order], ids[order]))
    other = to_numpy(train_outputs(IMAGES64, ids + 100))
    if variant == 'ide':
      fmap = feature_map(model, variables, IMAGES64)
      fresh = np.asarray(jax.random.normal(jax.random.key(12), fmap.shape,
                                           jnp.float64))

      @jax.jit
      def train_head(fmap, ids):
        return model.apply(variables, fmap, True, ids, rngs=rngs,
                           method=CASNNet.head_outputs)['global_logits']

      mixed = jnp.concatenate([fresh[:2], fmap[1:2], fresh[2:]])
      mixed_logits = np.asarray(
          train_head(mixed, jnp.array([90, 91, 21, 92, 93]))[2])
      batch_logits = np.asarray(train_head(fmap, ids)[1])
  assert out['global_logits'].dtype == jnp.float64
  np.testing.assert_allclose(permuted['global_logits'],
                             out['global_logits'][order], **EXACT64)
  # Other dropout masks change the logits by about their own size.
  assert not np.allclose(other['global_logits'], out['global_logits'],
                         atol=1e-3)
  # Dropout acts on the classifiers' input only, never on the descriptor
  # (the same program on the same images: the same floats).
  np.testing.assert_array_equal(other['features'], out['features'])
  if variant == 'ide':
    # The IDE head has no BatchNorm: on a given map, a row's training
    # output does not depend on its neighbours at all.
    np.testing.assert_allclose(mixed_logits, batch_logits, **EXACT64)
  with pytest.raises(Exception, match='dropout'):
    model32.apply(variables32, IMAGES, train=True, mutable=['batch_stats'])


def test_backbone_is_laid_out_like_the_imagenet_conversion(network):
  """config.init_from replaces params/batch_stats['backbone'] by those of a
  torchvision conversion (written as an SANet's): the trees must agree."""
  variant, model, _ = network
  shape_of = lambda m: jax.eval_shape(
      lambda x: m.init(jax.random.key(0), x),
      jax.ShapeDtypeStruct((1, *SIZE, 3), jnp.float32))
  ours = shape_of(model)
  converted = shape_of(SANet(num_classes=3, num_parts=1,
                             stage_sizes=TINY['stage_sizes'],
                             base_width=TINY['base_width']))
  for collection in ('params', 'batch_stats'):
    assert (jax.tree.map(np.shape, ours[collection]['backbone']) ==
            jax.tree.map(np.shape, converted[collection]['backbone']))
  # PCB's head is SANet's part head, under SANet's names.
  heads = ({'classifier'} if variant == 'ide' else
           {'part_reduce', 'part_bn', 'part_classifier_kernel',
            'part_classifier_bias'})
  assert set(ours['params']) == {'backbone', 'siamese_fc', 'siamese'} | heads
  assert not any(jax.tree.leaves(registry.frozen_mask(model, ours['params'])))


def test_config_round_trip_and_registry():
  model = tiny('pcb', dtype='bfloat16', dropout_rate=0.3)
  config = registry.describe(model)['config']
  assert config['head'] == 'pcb' and config['last_stride'] == 1
  assert config['stage_sizes'] == [1, 1, 1, 1]
  assert config['siamese_dim'] == SIAMESE_DIM
  description = registry.describe(model)
  assert description == {'family': 'casn', 'config': config}
  rebuilt = registry.rebuild(description, 'model.json')
  assert isinstance(rebuilt, CASNNet) and rebuilt == model
  assert registry.describe(rebuilt) == description
  assert registry.family_of(model).name == 'casn'

  m = ml_collections.ConfigDict(dict(
      family='casn', variant='ide', num_stripes=6, reduced_dim=256,
      dropout_rate=0.5, siamese_dim=2048, stage_sizes=(3, 4, 6, 3),
      base_width=64, last_stride=2, dtype='float32'))
  built = registry.build(m, 751, image_size=(256, 128), bn_axis_name='data')
  assert built == CASNNet(num_classes=751, head='ide', last_stride=2,
                          bn_axis_name='data')
  m.variant = 'pcb'
  m.last_stride = 1
  m.siamese_dim = 300
  built = registry.build(m, 751, image_size=(384, 128))
  assert built.head == 'pcb' and built.siamese_dim == 300

  m.variant = 'mgn'
  with pytest.raises(ValueError, match=r"config.model.variant must be one of "
                     r"\['ide', 'pcb'\] for the casn family, got 'mgn'"):
    registry.build(m, 751, image_size=(256, 128))
  with pytest.raises(ValueError, match="model.json: head must be one of "
                     r"\('ide', 'pcb'\), got 'mgn'"):
    registry.rebuild({'family': 'casn', 'config': {**config, 'head': 'mgn'}},
                     'model.json')
  with pytest.raises(ValueError, match=r"model.json: unknown model config "
                     r"keys \['num_parts'\]"):
    registry.rebuild({'family': 'casn',
                      'config': {**config, 'num_parts': 6}}, 'model.json')
  with pytest.raises(ValueError, match="model.json: model family 'rga'"):
    registry.rebuild({'family': 'casn',
                      'config': {**config, 'family': 'rga'}}, 'model.json')
  with pytest.raises(ValueError, match="unknown CASN variant 'mgn'"):
    casn_variant('mgn', num_classes=3)


def test_bad_attributes_are_clear_errors():
  with pytest.raises(ValueError, match=r"head must be one of \('ide', 'pcb'\), "
                     "got 'IDE'"):
    CASNNet(num_classes=3, head='IDE', last_stride=2)
  with pytest.raises(ValueError, match='dtype must be one of'):
    tiny('ide', dtype='float16')
  with pytest.raises(ValueError, match='num_classes must be >= 1, got 0'):
    tiny('ide', num_classes=0)
  with pytest.raises(ValueError, match=r'dropout_rate must be in \[0, 1\)'):
    tiny('ide', dropout_rate=1.0)
  with pytest.raises(ValueError, match='siamese_dim must be >= 1, got 0'):
    tiny('ide', siamese_dim=0)
  with pytest.raises(ValueError, match='num_stripes and reduced_dim must be '
                     '>= 1, got 0 and 16'):
    tiny('pcb', num_stripes=0)
  # 64x32 images leave PCB 4 rows: 6 stripes do not fit.
  with pytest.raises(ValueError, match='PCB head: the feature map has 4 '
                     'rows, fewer than num_stripes 6'):
    jax.eval_shape(lambda x: tiny('pcb', num_stripes=6).init(
        jax.random.key(0), x), jax.ShapeDtypeStruct((1, *SIZE, 3),
                                                    jnp.float32))


def test_store_round_trip_gives_identical_outputs(network, tmp_path):
  _, model, variables = network
  directory = str(tmp_path / 'model')
  store.save_model(directory, model, variables,
                   metadata={'image_size': list(SIZE)})
  loaded, restored = store.load_model(directory)
  assert loaded == model
  jax.tree.map(np.testing.assert_array_equal, restored, variables)
  out = forward(model, variables, IMAGES)
  again = forward(loaded, restored, IMAGES)
  jax.tree.map(np.testing.assert_array_equal, again, out)
  # The descriptor `registry.embed` gives is the network's features output:
  # the same maths compiled on its own, so fused differently; in float64.
  with jax.enable_x64(True):
    loaded, restored = in_float64(loaded, restored)
    embedded = jax.jit(functools.partial(registry.embed, loaded))(restored,
                                                                  IMAGES64)
    features = forward(loaded, restored, IMAGES64)['features']
  assert embedded.dtype == jnp.float64
  np.testing.assert_allclose(embedded, features, **EXACT64)


def test_bfloat16_is_finite_and_close_to_float32(network):
  _, model, variables = network
  out = forward(model, variables, IMAGES)
  low = forward(model.clone(dtype='bfloat16'), variables, IMAGES)
  for name in ('features', 'global_features', 'global_logits',
               'verification'):
    assert low[name].dtype == jnp.float32, name
    assert np.all(np.isfinite(low[name])), name
  # bfloat16 keeps 8 significant bits (relative rounding 4e-3) through the
  # backbone's five stages: descriptors a few degrees apart at most, logits
  # within a few percent of their scale.
  cosine = np.sum(low['features'] * out['features'], axis=-1)
  assert np.all(cosine > 0.99), cosine
  scale = np.abs(out['global_logits']).max()
  assert np.abs(low['global_logits'] - out['global_logits']).max() <= (
      0.05 * scale)
