"""CASN's losses against independent truth: loops, closed forms, PyTorch,
hand-computed values and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import helpers
from sa_reid_jax.losses import attention_mining
from sa_reid_jax.models import gradcam
from sa_reid_jax.losses import siamese


def _nonlinear_head(seed, channels=5, hidden=7, classes=4):
  """A per-example head: 1x1 conv, tanh, average pooling, linear.

  tanh rather than ReLU: a ReLU head's gradient is piecewise constant in the
  map, so its second-order ('full') gradient term would vanish.
  """
  rng = np.random.default_rng(seed)
  w1 = jnp.asarray(rng.standard_normal((channels, hidden)))
  w2 = jnp.asarray(rng.standard_normal((hidden, classes)))

  def head(maps):
    hidden_map = jnp.tanh(jnp.einsum('bhwk,kj->bhwj', maps, w1))
    return jnp.mean(hidden_map, axis=(1, 2)) @ w2

  return head


def test_grad_cam_equals_a_per_image_per_class_loop():
  # Float64 throughout: the same maths, vectorised or one image and class
  # at a time, agree to float64 rounding (1e-16 of maps of order 1).
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    maps = jnp.asarray(rng.standard_normal((3, 4, 3, 5)))
    labels = jnp.asarray([2, 0, 3])
    head = _nonlinear_head(1)
    result = np.asarray(gradcam.grad_cam(head, maps, labels))
    for n in range(3):
      # Every class's gradient for image n alone; keep its own class.
      per_class = [jax.grad(lambda a, c=c: head(a[None])[0, c])(maps[n])
                   for c in range(4)]
      grad = np.asarray(per_class[int(labels[n])])
      weights = grad.mean(axis=(0, 1))
      cam = np.maximum(np.einsum('hwk,k->hw', np.asarray(maps[n]), weights),
                       0)
      expected = (cam - cam.min()) / (cam.max() - cam.min())
      np.testing.assert_allclose(result[n], expected, atol=1e-12)


def test_grad_cam_of_a_linear_head_is_the_class_activation_map():
  # Pooling + linear classifier: d y_c / d A = W[:, c] / (h w) everywhere, so
  # Grad-CAM = ReLU(sum_k W_kc A_k) / (h w), min-max normalised (the CAM).
  rng = np.random.default_rng(2)
  maps = rng.standard_normal((2, 6, 4, 3)).astype(np.float32)
  kernel = rng.standard_normal((3, 5)).astype(np.float32)
  bias = rng.standard_normal(5).astype(np.float32)
  labels = np.asarray([4, 1])

  def head(a):
    return jnp.mean(a, axis=(1, 2)) @ kernel + bias

  result = np.asarray(gradcam.grad_cam(head, jnp.asarray(maps),
                                       jnp.asarray(labels)))
  for n in range(2):
    cam = np.maximum(maps[n] @ kernel[:, labels[n]], 0)
    expected = (cam - cam.min()) / (cam.max() - cam.min())
    # Float32 Grad-CAM against float32 NumPy: gradient weights W / (h w),
    # a 3-term weighted sum and a min-max normalisation by a range of about
    # 1; each side within a few float32 roundings (1e-7) of values in [0, 1].
    np.testing.assert_allclose(result[n], expected, atol=1e-5)
    assert result[n].min() == 0 and result[n].max() == pytest.approx(1)


def test_gradient_modes():
  rng = np.random.default_rng(3)
  maps = jnp.asarray(rng.standard_normal((2, 3, 3, 5)), jnp.float32)
  labels = jnp.asarray([1, 3])
  head = _nonlinear_head(4)
  probe = jnp.asarray(rng.standard_normal((2, 3, 3)), jnp.float32)

  def gradient(mode, head_fn=head):
    return np.asarray(jax.grad(lambda a: jnp.sum(
        probe * gradcam.grad_cam(head_fn, a, labels, mode)))(maps))

  assert not gradient('none').any()
  # 'feature_map': the weights are constants computed from the maps.
  weights = jax.lax.stop_gradient(jnp.mean(jax.grad(
      lambda a: jnp.sum(jnp.take_along_axis(head(a), labels[:, None], 1)))(
          maps), axis=(1, 2)))
  constant_weights = np.asarray(jax.grad(lambda a: jnp.sum(
      probe * gradcam.normalise_maps(jax.nn.relu(
          jnp.einsum('bhwk,bk->bhw', a, weights)))))(maps))
  # Float32 gradients of order 1 computed two ways: a few roundings (1e-7)
  # apart; the modes differ by more than 1e-3 (below).
  np.testing.assert_allclose(gradient('feature_map'), constant_weights,
                             atol=1e-5)
  # Through the weights too: a different gradient for a non-linear head...
  assert np.abs(gradient('full') - gradient('feature_map')).max() > 1e-3
  # ... and the same for a linear one (its weights do not depend on A).
  kernel = jnp.asarray(rng.standard_normal((5, 4)), jnp.float32)
  linear = lambda a: jnp.mean(a, axis=(1, 2)) @ kernel
  np.testing.assert_allclose(gradient('full', linear),
                             gradient('feature_map', linear), atol=1e-5)
  with pytest.raises(ValueError, match='config.casn.gradcam_gradient'):
    gradcam.grad_cam(head, maps, labels, 'weights')


def _siamese_importance_head(seed, channels=5, dim=6):
  """CASN's siamese path as the notes give it, from a (B, h, w, K) map:
  f = pooled @ W + b, importance s = sum_j max(f_j, 0); with W, b."""
  rng = np.random.default_rng(seed)
  kernel = rng.standard_normal((channels, dim))
  bias = 0.5 * rng.standard_normal(dim)

  def importance(maps):
    f = jnp.mean(maps, axis=(1, 2)) @ kernel + bias
    return jnp.sum(jax.nn.relu(f), axis=-1)

  return importance, kernel, bias


def test_siamese_grad_cam_is_the_closed_form():
  """The Grad-CAM of the siamese importance score (seed 004, section 2.2,
  and the author's reply) against its closed form: d s / d A_k = (1/(h w))
  sum_j W_kj [f_j > 0] at every position, so the channel weights are that,
  and the map ReLU(sum_k w_k A_k), min-max normalised per image. Float64:
  the same maths two ways, to float64 rounding (1e-16 of maps of order 1).
  """
  with jax.enable_x64(True):
    rng = np.random.default_rng(5)
    # Post-ReLU maps, as the backbone's.
    maps = np.maximum(rng.standard_normal((4, 4, 3, 5)), 0)
    importance, kernel, bias = _siamese_importance_head(6)
    results = {mode: np.asarray(gradcam.score_grad_cam(
        importance, jnp.asarray(maps), mode))
               for mode in gradcam.GRADIENT_MODES}
  assert results['feature_map'].dtype == np.float64
  f = maps.mean(axis=(1, 2)) @ kernel + bias
  # Both signs among the components of f, so the indicator [f_j > 0]
  # selects some of them (on the post-ReLU pooled map it would keep all).
  assert 0 < (f > 0).mean() < 1
  h, w = maps.shape[1:3]
  for n in range(4):
    weights = kernel @ (f[n] > 0) / (h * w)
    cam = np.maximum(np.einsum('hwk,k->hw', maps[n], weights), 0)
    assert cam.max() > cam.min()
    expected = (cam - cam.min()) / (cam.max() - cam.min())
    # The gradient modes differ in the gradients they pass on, never in
    # the maps.
    for mode, result in results.items():
      np.testing.assert_allclose(result[n], expected, rtol=0, atol=1e-12,
                                 err_msg=mode)


def test_class_grad_cam_is_the_score_grad_cam_of_the_true_class_logit():
  # One Grad-CAM for both kinds of map: the class map is the general one of
  # the true-class logit, values and gradients (the same program: equal).
  rng = np.random.default_rng(7)
  maps = jnp.asarray(rng.standard_normal((3, 3, 2, 5)), jnp.float32)
  labels = jnp.asarray([3, 0, 2])
  head = _nonlinear_head(8)
  probe = jnp.asarray(rng.standard_normal((3, 3, 2)), jnp.float32)
  true_class = lambda a: jnp.take_along_axis(head(a), labels[:, None], 1)[:, 0]
  for mode in gradcam.GRADIENT_MODES:
    by_class = lambda a, mode=mode: gradcam.grad_cam(head, a, labels, mode)
    by_score = lambda a, mode=mode: gradcam.score_grad_cam(true_class, a, mode)
    np.testing.assert_array_equal(by_class(maps), by_score(maps))
    np.testing.assert_array_equal(
        jax.grad(lambda a: jnp.sum(probe * by_class(a)))(maps),
        jax.grad(lambda a: jnp.sum(probe * by_score(a)))(maps))
  with pytest.raises(ValueError, match=r'score_fn must give one score per '
                     r'image, shape \(3,\), got \(3, 4\)'):
    gradcam.score_grad_cam(head, maps)
  with pytest.raises(ValueError, match='config.casn.gradcam_gradient'):
    gradcam.score_grad_cam(true_class, maps, 'weights')


def test_flat_map_is_zero_not_nan():
  maps = jnp.ones((1, 2, 2, 3))
  head = lambda a: jnp.mean(a, axis=(1, 2)) @ jnp.ones((3, 2))
  result = gradcam.grad_cam(head, maps, jnp.asarray([0]))
  assert np.array_equal(np.asarray(result), np.zeros((1, 2, 2)))


def test_soft_mask_hand_values():
  maps = np.asarray([[[0.5, 0.6], [0.0, 1.0]]])
  mask = np.asarray(attention_mining.soft_mask(jnp.asarray(maps, jnp.float32),
                                      alpha=10.0, beta=0.5))
  expected = 1 / (1 + np.exp(-10 * (maps - 0.5)))
  # A float32 sigmoid of alpha (x - beta), where x = 0.6 itself rounds to
  # float32: within a few float32 ulps (6e-8 each) of the exact value.
  np.testing.assert_allclose(mask, expected, rtol=1e-6)
  assert mask[0, 0, 0] == 0.5
  assert mask[0, 0, 1] == pytest.approx(0.7310586, abs=1e-6)
  # In float64, to float64 rounding.
  with jax.enable_x64(True):
    mask64 = np.asarray(attention_mining.soft_mask(jnp.asarray(maps), alpha=10.0,
                                          beta=0.5))
  assert mask64.dtype == np.float64
  np.testing.assert_allclose(mask64, expected, rtol=1e-14)


def test_erase_attended_hand_computed_and_as_pytorch():
  # A 1x2 mask [0, 1] on a 1x4 image: bilinear, half-pixel centres, the
  # four output columns sample the mask at -0.25, 0.25, 0.75, 1.25 (clamped
  # to the ends): mask 0, 0.25, 0.75, 1.
  images = jnp.full((1, 1, 4, 3), 2.0)
  erased = np.asarray(attention_mining.erase_attended(images,
                                             jnp.asarray([[[0.0, 1.0]]])))
  np.testing.assert_allclose(erased[0, 0, :, 0], [2.0, 1.5, 0.5, 0.0])
  rng = np.random.default_rng(5)
  mask = rng.random((2, 3, 2)).astype(np.float32)
  images = rng.standard_normal((2, 12, 8, 3)).astype(np.float32)
  result = np.asarray(attention_mining.erase_attended(jnp.asarray(images),
                                             jnp.asarray(mask)))
  resized = F.interpolate(torch.from_numpy(mask)[:, None], size=(12, 8),
                          mode='bilinear', align_corners=False)[:, 0].numpy()
  # Float32 bilinear weights (multiples of 1/8) and a product with images
  # of order 1-3, both sides: a few float32 roundings (1e-7 each) apart.
  np.testing.assert_allclose(result, images * (1 - resized)[..., None],
                             atol=1e-5)


def test_attention_mining_loss_is_the_true_class_score():
  logits = jnp.asarray([[0.0, np.log(3.0)], [np.log(4.0), 0.0]])
  labels = jnp.asarray([1, 1])
  loss = attention_mining.attention_mining_loss(logits, labels, 'probability')
  # Float32 logits and softmax: a few roundings (6e-8) of probabilities < 1.
  assert float(loss) == pytest.approx((3 / 4 + 1 / 5) / 2, abs=1e-6)
  # The notes' form (the default): the true-class logit itself; exact in
  # float64 (one addition and a halving).
  with jax.enable_x64(True):
    logit = attention_mining.attention_mining_loss(
        jnp.asarray(np.asarray(logits, np.float64)), labels)
    assert logit.dtype == jnp.float64
  assert float(logit) == (float(np.float32(np.log(3.0))) + 0.0) / 2
  with pytest.raises(ValueError, match="score must be one of"):
    attention_mining.attention_mining_loss(logits, labels, 'softmax')


def test_attended_box():
  attention = jnp.zeros((5, 4)).at[1, 2].set(0.7).at[3, 1].set(0.9)
  box = siamese.attended_box(attention, 0.5)
  assert np.asarray(box).tolist() == [1, 1, 3, 2]
  whole = siamese.attended_box(attention, 0.95)
  assert np.asarray(whole).tolist() == [0, 0, 4, 3]


@pytest.mark.parametrize('box, out_size', [
    ((0, 0, 3, 2), (4, 3)),   # the whole map, same size: the identity
    ((1, 1, 2, 2), (4, 3)),   # upsampling
    ((0, 1, 3, 1), (2, 5)),   # one column wide
    ((2, 0, 5, 2), (3, 2)),   # downsampling (no anti-aliasing, as PyTorch)
])
def test_crop_and_resize_is_pytorch_slice_then_interpolate(box, out_size):
  rng = np.random.default_rng(6)
  attention = rng.random((6, 3)).astype(np.float32)
  if box == (0, 0, 3, 2):
    attention = attention[:4]
  result = np.asarray(siamese.crop_and_resize(
      jnp.asarray(attention), jnp.asarray(box), out_size))
  top, left, bottom, right = box
  crop = torch.from_numpy(attention[top:bottom + 1, left:right + 1])
  expected = F.interpolate(crop[None, None], size=out_size, mode='bilinear',
                           align_corners=False)[0, 0].numpy()
  # Float32 interpolation of values in [0, 1], both sides: each result is
  # two products and a sum, a few roundings (6e-8 each) apart; a wrong
  # sample position is off by the map's variation (about 0.1).
  np.testing.assert_allclose(result, expected, atol=1e-6)


def _pytorch_consistency(maps, labels, threshold):
  """The consistency loss from slices and F.interpolate, pair by pair."""
  crops = []
  for attention in maps:
    inside = np.argwhere(attention >= threshold)
    if len(inside):
      (top, left), (bottom, right) = inside.min(0), inside.max(0)
    else:
      (top, left), (bottom, right) = (0, 0), np.asarray(attention.shape) - 1
    kept = np.where(attention >= threshold, attention, 0.0)
    crop = torch.from_numpy(kept[top:bottom + 1, left:right + 1])
    crops.append(F.interpolate(crop[None, None], size=attention.shape,
                               mode='bilinear', align_corners=False)[0, 0])
  distances = [torch.linalg.norm(crops[i] - crops[j]).item()
               for i in range(len(maps)) for j in range(len(maps))
               if i != j and labels[i] == labels[j]]
  return np.mean(distances) if distances else 0.0


def test_consistency_loss_matches_pytorch_crops():
  rng = np.random.default_rng(7)
  maps = rng.random((6, 6, 4))
  labels = np.asarray([0, 0, 1, 1, 1, 2])  # identity 2: no positive pair
  loss, metrics = siamese.attention_consistency_loss(
      jnp.asarray(maps, jnp.float32), jnp.asarray(labels), 0.6)
  # Float32 crops and norms of 24 values against PyTorch's float64: the
  # float32 rounding of the maps (6e-8) and a few roundings a distance.
  assert float(loss) == pytest.approx(
      _pytorch_consistency(maps, labels, 0.6), rel=1e-5)
  assert 0 < float(metrics['attended_area']) <= 1
  no_pairs, _ = siamese.attention_consistency_loss(
      jnp.asarray(maps, jnp.float32), jnp.arange(6), 0.6)
  assert float(no_pairs) == 0
  with pytest.raises(ValueError, match='consistency.threshold'):
    siamese.attention_consistency_loss(jnp.asarray(maps), jnp.asarray(labels),
                                       1.5)


def test_consistency_gradient_finite_differences():
  with jax.enable_x64(True):
    rng = np.random.default_rng(8)
    # Entries kept away from the threshold, so that small steps do not move
    # the boxes (the loss is piecewise smooth in the maps).
    maps = rng.choice([0.1, 0.2, 0.8, 0.9], size=(4, 5, 3)) + (
        rng.random((4, 5, 3)) * 0.05)
    labels = jnp.asarray([0, 0, 1, 1])
    loss = jax.jit(
        lambda m: siamese.attention_consistency_loss(m, labels, 0.5)[0])
    grad = np.asarray(jax.grad(loss)(jnp.asarray(maps)))
    step = 1e-6
    numeric = np.zeros_like(maps)
    for index in np.ndindex(maps.shape):
      plus, minus = maps.copy(), maps.copy()
      plus[index] += step
      minus[index] -= step
      numeric[index] = (float(loss(jnp.asarray(plus))) -
                        float(loss(jnp.asarray(minus)))) / (2 * step)
    # Central differences in float64: truncation ~step^2 = 1e-12, rounding
    # ~1e-16 / step = 1e-10 of a loss of order 1; 1e-7 leaves margin, and
    # the gradient is of order 1e-2 (checked below).
    np.testing.assert_allclose(grad, numeric, atol=1e-7)
    assert np.abs(grad).max() > 1e-3


def test_verification_loss_hand_computed():
  labels = jnp.asarray([0, 0, 1, 1])
  rng = np.random.default_rng(9)
  logits = rng.standard_normal((4, 4))
  loss, metrics = siamese.verification_loss(jnp.asarray(logits, jnp.float32),
                                            labels)
  positive = [(0, 1), (1, 0), (2, 3), (3, 2)]
  negative = [(i, j) for i in range(4) for j in range(4) if (i < 2) != (j < 2)]
  softplus = lambda z: np.log1p(np.exp(z))
  expected = (np.mean([softplus(-logits[p]) for p in positive]) +
              np.mean([softplus(logits[p]) for p in negative])) / 2
  # Float32 (the loss computes in float32, from float32 logits) against
  # float64: the logits' rounding (6e-8) and a few roundings a term.
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  # Balanced, as the loss: each kind's share of right answers, averaged.
  expected_accuracy = (np.mean([logits[p] > 0 for p in positive]) +
                       np.mean([logits[p] < 0 for p in negative])) / 2
  assert float(metrics['verification_accuracy']) == pytest.approx(
      expected_accuracy)


def _loss(weights, inputs, labels, axis_name):
  maps = gradcam.normalise_maps(jax.nn.relu(inputs @ weights)[..., 0])
  consistency, _ = siamese.attention_consistency_loss(maps, labels, 0.4,
                                                      axis_name)
  vectors = jnp.mean(inputs @ weights, axis=(1, 2))
  others = vectors if axis_name is None else jax.lax.all_gather(
      vectors, axis_name, tiled=True)
  pair_logits = jnp.sum(vectors[:, None] * others[None], axis=-1) - 0.5
  verification, _ = siamese.verification_loss(pair_logits, labels, axis_name)
  return consistency + verification


def test_pair_losses_are_device_count_invariant():
  """Pairs over the global batch: the data-parallel gradient on 2 devices
  is the one-device gradient."""
  assert len(jax.devices()) >= 2
  rng = np.random.default_rng(10)
  inputs = rng.standard_normal((8, 5, 3, 2)).astype(np.float32)
  # Each identity on both devices: pairs must cross the device boundary.
  labels = np.asarray([0, 1, 2, 3, 0, 1, 2, 3], np.int32)
  weights = rng.standard_normal((2, 3)).astype(np.float32)
  gradient = jax.jit(jax.grad(_loss), static_argnums=3)
  one_device = np.asarray(gradient(weights, inputs, labels, None))
  # Pairs within each half only would give another gradient.
  halves = sum(np.asarray(gradient(weights, inputs[s], labels[s], None))
               for s in (slice(0, 4), slice(4, 8))) / 2
  assert np.max(np.abs(halves - one_device)) > 1e-3
  two_devices = helpers.data_parallel_gradient(_loss, weights, inputs, labels,
                                               jax.devices()[:2])
  # Float32 (the verification loss computes in float32, so float64 would
  # not remove the rounding): the two runs add the same terms in another
  # order, a few float32 roundings (1e-7) of the gradient's scale; 1e-5
  # leaves margin and is far below the 1e-3 of per-device pairs.
  assert np.max(np.abs(two_devices - one_device)) <= 1e-5 * max(
      1.0, np.max(np.abs(one_device)))
