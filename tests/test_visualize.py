"""Class activation maps and the pictures: values and pixels, not only files."""

import dataclasses
import os
import pathlib
import shutil

import helpers
import jax
import numpy as np
from PIL import Image
import pytest

from sa_reid_jax.evaluation import pictures
from sa_reid_jax.models import registry
from sa_reid_jax.models import store
from sa_reid_jax.models.casn import casn_variant
from sa_reid_jax.models.rga import rga_variant
from sa_reid_jax.models.sanet import SANet
from sa_reid_jax.tools import cams
from sa_reid_jax.tools import image_files
from sa_reid_jax.tools import visualize

SIZE = (64, 32)
# A CAM's mean against the network's logit: the same float32 products
# summed in another order (per position then averaged, against pooled then
# projected), ~1e-7 relative per sum (measured: up to 6e-7 of the largest
# logit, 2e-6 of a logit near cancellation). rtol 1e-5 is ~100 float32 ulp;
# atol 1e-6 covers logits near 0; a missing BatchNorm, attention weighting
# or bias changes the logits by more than 1e-2.
CAM_RTOL, CAM_ATOL = 1e-5, 1e-6


def initialised(model, seed):
  """The model and random variables, with non-trivial BatchNorm statistics
  (so the heads' BN matters in the CAMs), without a compiled init."""
  return model, helpers.he_scaled_variables(model, seed)


def tiny(**kwargs):
  return initialised(SANet(num_classes=7, stage_sizes=(1, 1, 1, 1),
                           base_width=4, **kwargs), 1)


@pytest.mark.parametrize('ds_attention, backbone_attention',
                         [(True, False), (False, True)])
def test_ds_cams_average_to_the_heads_logits(ds_attention,
                                             backbone_attention):
  model, variables = tiny(ds_attention=ds_attention,
                          backbone_attention=backbone_attention)
  images = np.random.default_rng(2).normal(size=(3, *SIZE, 3)).astype(
      np.float32)
  result = cams.class_activation_maps(model, variables, images,
                                           classes=[0, 3, 6])
  params = variables['params']
  for i, stage in enumerate(('layer1', 'layer2', 'layer3'), start=1):
    bias = params[f'ds_classifier{i}']['bias'][np.array([0, 3, 6])]
    averaged = np.asarray(result['cams'][stage]).mean(axis=(1, 2)) + bias
    np.testing.assert_allclose(averaged, result['logits'][stage],
                               rtol=CAM_RTOL, atol=CAM_ATOL)
  assert set(result['attention']) == (
      {'layer1', 'layer2', 'layer3'} if ds_attention else {'layer4'})


def test_stage4_cam_is_the_global_head_at_each_position():
  model, variables = tiny(backbone_attention=True)
  images = np.random.default_rng(3).normal(size=(2, *SIZE, 3)).astype(
      np.float32)
  result = cams.class_activation_maps(model, variables, images)
  _, state = model.apply(variables, images, capture_intermediates=True)
  layer4 = np.asarray(state['intermediates']['backbone']['__call__'][0]
                      ['layer4'], np.float64)
  attention = np.asarray(result['attention']['layer4'], np.float64)
  params = jax.tree.map(lambda x: np.asarray(x, np.float64),
                        variables['params'])
  stats = jax.tree.map(lambda x: np.asarray(x, np.float64),
                       variables['batch_stats'])['part_bn']
  classes = np.asarray(result['classes'])
  logits = model.apply(variables, images)['global_logits']
  np.testing.assert_array_equal(classes, np.argmax(logits, axis=-1))
  # A loop over positions, written independently of the vectorised code.
  for b in range(2):
    h, w = layer4.shape[1:3]
    expected = np.zeros((h, w))
    for y in range(h):
      for x in range(w):
        feature = layer4[b, y, x] * attention[b, y, x]
        reduced = feature @ params['part_reduce']['kernel']
        # 1e-5: BatchNorm's epsilon.
        normed = ((reduced - stats['mean']) / np.sqrt(stats['var'] + 1e-5) *
                  params['part_bn']['scale'] + params['part_bn']['bias'])
        expected[y, x] = (np.maximum(normed, 0) @
                          params['global_classifier']['kernel'][:, classes[b]])
    # The float32 CAM against float64 arithmetic on the same float32 inputs:
    # the CAM's own rounding (measured: 4e-7 relative), as CAM_RTOL says.
    np.testing.assert_allclose(result['cams']['layer4'][b], expected,
                               rtol=CAM_RTOL, atol=CAM_ATOL)


def test_match_kinds():
  kinds = pictures.match_kinds(5, 1, np.array([5, 5, -1, 7, 0]),
                               np.array([1, 2, 1, 1, 3]))
  assert list(kinds) == ['same cam', 'match', 'junk', 'wrong', 'wrong']


def test_colorize_runs_from_blue_to_red():
  heat = np.array([[0.0, 1.0]])
  colours = pictures.colorize(heat, (1, 2))
  assert colours.shape == (1, 2, 3)
  assert colours[0, 0, 2] > 100 and colours[0, 0, 0] == 0  # low: blue
  assert colours[0, 1, 0] > 100 and colours[0, 1, 2] == 0  # high: red


@pytest.fixture(scope='module')
def dataset(synthetic_dataset):
  return synthetic_dataset(num_ids=4, num_test_ids=4, seed=0)


CELL_W = SIZE[1] + 2 * pictures.BORDER


def _first_image(dataset):
  """The first query image's name (the folder also holds the image-check cache)."""
  return sorted(name for name in os.listdir(os.path.join(dataset, 'query'))
                if name.endswith('.jpg'))[0]


def _cell_left(index):
  """Left edge of a ranks tile: the query, a gap, then the gallery."""
  return index * (CELL_W + pictures.GAP) + (pictures.GAP if index else 0)


def test_ranks_picture_borders(dataset):
  query = os.path.join(dataset, 'query', _first_image(dataset))
  kinds = ['match', 'wrong', 'junk', 'same cam']
  ranked = [{'paths': [query] * 4, 'kinds': kinds,
             'distances': [0.1, 0.2, 0.3, 0.4]}] * 2
  picture = np.asarray(pictures.ranks_picture([query, query], ranked, SIZE))
  cell_h = SIZE[0] + 2 * pictures.BORDER
  row_h = cell_h + pictures.LABEL_HEIGHT + pictures.GAP
  assert picture.shape == (2 * row_h, 5 * (CELL_W + pictures.GAP) +
                           pictures.GAP, 3)
  expected = [pictures.BLUE, pictures.GREEN, pictures.RED, pictures.GREY,
              pictures.GREY]
  for row in range(2):
    for index, colour in enumerate(expected):
      top, left = row * row_h, _cell_left(index)
      assert tuple(picture[top + 1, left + 1]) == colour
      assert tuple(picture[top + cell_h - 2, left + 1]) == colour
  # Inside the border: the image itself, at the thumbnail size.
  inner = picture[pictures.BORDER:pictures.BORDER + SIZE[0],
                  _cell_left(1) + pictures.BORDER:
                  _cell_left(1) + pictures.BORDER + SIZE[1]]
  np.testing.assert_array_equal(
      inner, pictures.display_pixels(query, SIZE))


@pytest.fixture(scope='module')
def saved_models(tmp_path_factory):
  """Model directories of `tiny` networks, input size SIZE recorded: 'sa'
  and 'no_sa' (no SA before the deep-supervision heads)."""
  root = tmp_path_factory.mktemp('visualize_models')
  for name, kwargs in (('sa', {}), ('no_sa', {'ds_attention': False})):
    model, variables = tiny(**kwargs)
    store.save_model(str(root / name), model, variables,
                     metadata={'image_size': list(SIZE)})
  return root


def test_cli_draws_cams_and_ranks(dataset, saved_models, cli, tmp_path):
  models = saved_models
  run = lambda *args: cli('sa_reid_jax.tools.visualize', *args)
  result = run('cam', f'--checkpoint={models / "sa"}',
               f'--compare={models / "no_sa"}',
               f'--images={os.path.join(dataset, "query")}', '--max_images=2',
               f'--output={tmp_path / "cam.png"}')
  assert result.returncode == 0, result.stderr[-2000:]
  picture = Image.open(tmp_path / 'cam.png')
  # Row per image and model; columns: image, 4 CAMs, 3 SA maps (SA model).
  cell_h = SIZE[0] + 2 * pictures.BORDER
  assert picture.size == (8 * (CELL_W + pictures.GAP),
                          4 * (cell_h + pictures.LABEL_HEIGHT +
                               pictures.GAP))
  # An unreadable image is named and skipped; the readable one is drawn.
  mixed = tmp_path / 'mixed'
  mixed.mkdir()
  (mixed / 'a_broken.jpg').write_bytes(b'not an image')
  first = _first_image(dataset)
  (mixed / 'b.jpg').write_bytes(
      pathlib.Path(dataset, 'query', first).read_bytes())
  result = run('cam', f'--checkpoint={models / "sa"}', f'--images={mixed}',
               f'--output={tmp_path / "mixed.png"}')
  assert result.returncode == 0, result.stderr[-2000:]
  assert f'skipped {mixed / "a_broken.jpg"}: ' in result.stdout
  assert Image.open(tmp_path / 'mixed.png').size[1] == (
      cell_h + pictures.LABEL_HEIGHT + pictures.GAP)
  # A class the network does not have would be drawn as a blank map.
  result = run('cam', f'--checkpoint={models / "sa"}',
               f'--images={os.path.join(dataset, "query")}', '--max_images=2',
               '--classes=0,9999', f'--output={tmp_path / "bad_cam.png"}')
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert ('--classes: class 9999 is not a class of the --checkpoint network '
          '(0 to ') in result.stderr
  assert not (tmp_path / 'bad_cam.png').exists()
  result = run('ranks', f'--checkpoint={models / "sa"}',
               f'--dataset_folder={dataset}', '--queries=0,2', '--topk=3',
               f'--output={tmp_path / "ranks.png"}')
  assert result.returncode == 0, result.stderr[-2000:]
  assert Image.open(tmp_path / 'ranks.png').size[0] == (
      4 * (CELL_W + pictures.GAP) + pictures.GAP)
  result = run('ranks', f'--checkpoint={models / "sa"}',
               f'--dataset_folder={dataset}', '--queries=0,9999',
               f'--output={tmp_path / "bad.png"}')
  assert result.returncode == 1
  assert 'error: --queries: [9999] out of range' in result.stderr
  assert 'Traceback' not in result.stderr


def test_visualize_in_a_real_process_writes_one_error_line(saved_models,
                                                           tmp_path):
  # What a user's terminal shows: the error alone, without TensorFlow's
  # start-up notices (which some CPUs print whatever TF_CPP_MIN_LOG_LEVEL
  # says) or a traceback.
  result = helpers.run_as_user(
      'sa_reid_jax.tools.visualize', 'cam',
      f'--checkpoint={saved_models / "sa"}', f'--images={tmp_path}',
      f'--output={tmp_path / "cam.png"}')
  assert result.returncode == 1
  assert result.stderr.splitlines() == [
      f'visualize cam: error: --images: {tmp_path} holds no image files '
      f'({", ".join(image_files.IMAGE_EXTENSIONS)})'], result.stderr
  assert not (tmp_path / 'cam.png').exists()


@pytest.mark.full
def test_visualize_in_a_real_process_draws_and_prints_only_its_line(
    dataset, saved_models, tmp_path):
  # The one real-process drawing: our lines on stdout, nothing on stderr
  # (XLA's alarm about a slow compile on a busy machine aside).
  output = tmp_path / 'cam.png'
  result = helpers.run_as_user(
      'sa_reid_jax.tools.visualize', 'cam',
      f'--checkpoint={saved_models / "sa"}',
      f'--images={os.path.join(dataset, "query")}', '--max_images=1',
      f'--output={output}')
  assert result.returncode == 0, result.stderr[-2000:]
  picture = Image.open(output)
  assert result.stdout.splitlines() == [
      'input size 64x32 (the size the model was trained at)',
      f'wrote {output} ({picture.width}x{picture.height})']
  assert not helpers.lines_besides_slow_compile_alarms(result.stderr), (
      result.stderr)


def test_ranks_lists_unreadable_images_before_any_work(dataset, saved_models,
                                                       tmp_path):
  copy = tmp_path / 'data'
  shutil.copytree(dataset, copy)
  victim = sorted((copy / 'bounding_box_test').iterdir())[0]
  contents = victim.read_bytes()
  victim.write_bytes(contents[:len(contents) // 2])
  with pytest.raises(SystemExit) as error:
    visualize.main(['ranks', f'--checkpoint={saved_models / "sa"}',
                    f'--dataset_folder={copy}', '--queries=0',
                    f'--output={tmp_path / "ranks.png"}'])
  lines = str(error.value).splitlines()
  assert lines[0] == (f'visualize ranks: error: 1 unreadable image in {copy}; '
                      'remove or replace it:')
  assert lines[1].startswith(f'  {victim}: not a decodable image (')
  assert not (tmp_path / 'ranks.png').exists()


# The smallest input at which every RGA module of a width-8 network with
# head reduction 4 has channels.
RGA_SIZE = (128, 64)


def tiny_rga(variant):
  return initialised(
      rga_variant(variant, num_classes=7, image_size=RGA_SIZE,
                  stage_sizes=(1, 1, 1, 1), base_width=8, down_ratio=4), 4)


@pytest.mark.parametrize('variant, gates', [
    ('rga_sc', {'layer1', 'layer2', 'layer3', 'layer4'}),
    ('rga_c', set()), ('baseline', set())])
def test_rga_cam_averages_to_the_bnneck_logit(variant, gates):
  model, variables = tiny_rga(variant)
  images = np.random.default_rng(5).normal(size=(3, *RGA_SIZE, 3)).astype(
      np.float32)
  result = cams.class_activation_maps(model, variables, images,
                                      classes=[1, 4, 6])
  # Eval-mode BN is affine and the classifier has no bias: the mean of
  # the per-position scores is the logit.
  np.testing.assert_allclose(
      np.asarray(result['cams']['layer4']).mean(axis=(1, 2)),
      result['logits']['layer4'], rtol=CAM_RTOL, atol=CAM_ATOL)
  assert set(result['attention']) == gates
  for stage in gates:
    gate = np.asarray(result['attention'][stage])
    assert gate.shape[0] == 3 and np.all((gate > 0) & (gate < 1))


# The fast tier draws an RGA row in test_casn_grad_cam_beside_rga.
@pytest.mark.full
def test_cam_picture_of_an_rga_network(dataset):
  model, variables = tiny_rga('rga_sc')
  path = os.path.join(dataset, 'query', _first_image(dataset))
  picture = visualize.cam_picture([('rga', model, variables)], [path],
                                  RGA_SIZE)
  # Columns: the image, the layer-4 CAM, four spatial gates.
  cell_w, cell_h = (size + 2 * pictures.BORDER for size in RGA_SIZE[::-1])
  assert picture.size == (6 * (cell_w + pictures.GAP),
                          cell_h + pictures.LABEL_HEIGHT + pictures.GAP)


def test_casn_grad_cam_beside_rga(dataset):
  # Near-identity BatchNorm statistics (means around 0): statistics shifted
  # far up put every stripe's reduced feature below zero, where the head's
  # ReLU passes no gradient (a flat, all-zero Grad-CAM).
  casn_model, casn_variables = initialised(
      casn_variant('pcb', num_classes=7, stage_sizes=(1, 1, 1, 1),
                   base_width=8), 6)
  images = np.random.default_rng(6).normal(size=(2, *RGA_SIZE, 3)).astype(
      np.float32)
  result = cams.class_activation_maps(casn_model, casn_variables, images)
  outputs = casn_model.apply(casn_variables, images)
  # The predicted class's Grad-CAM through the eval-mode head.
  np.testing.assert_array_equal(
      result['classes'], np.argmax(outputs['global_logits'], axis=-1))
  # The same head on the same feature map, as two programs (the feature
  # map, then the head; or the whole network): float32 rounding of another
  # fusion at most (measured: equal), so 1e-5 (~100 ulp).
  np.testing.assert_allclose(
      result['logits']['layer4'],
      np.max(np.asarray(outputs['global_logits']), axis=-1), rtol=1e-5)
  maps = np.asarray(result['cams']['layer4'])
  assert maps.shape == (2, 8, 4) and maps.min() == 0 and maps.max() == 1
  rga_model, rga_variables = tiny_rga('rga_sc')
  path = os.path.join(dataset, 'query', _first_image(dataset))
  picture = visualize.cam_picture(
      [('rga', rga_model, rga_variables),
       ('casn', casn_model, casn_variables)], [path], RGA_SIZE)
  # Two rows for the one image: RGA's 6 columns, CASN's image + Grad-CAM.
  cell_w, cell_h = (size + 2 * pictures.BORDER for size in RGA_SIZE[::-1])
  assert picture.size == (6 * (cell_w + pictures.GAP),
                          2 * (cell_h + pictures.LABEL_HEIGHT + pictures.GAP))


def test_cam_refuses_families_without_maps(monkeypatch):
  cams.check_cam_model(SANet(num_classes=3), '--checkpoint')
  cams.check_cam_model(rga_variant('rga_sc', num_classes=3), '--checkpoint')
  monkeypatch.setitem(registry.FAMILIES, 'rga', dataclasses.replace(
      registry.FAMILIES['rga'], maps=None))
  with pytest.raises(ValueError, match=r"--compare: `cam` draws .*"
                     r"\['casn', 'sanet'\] networks; this is a 'rga' network"):
    cams.check_cam_model(rga_variant('rga_sc', num_classes=3), '--compare')
