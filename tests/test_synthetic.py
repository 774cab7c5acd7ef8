"""Tests of the synthetic Market-layout dataset generator."""

import dataclasses
import json
import os

import numpy as np
from PIL import Image
import pytest

from sa_reid_jax.datasets import market_layout
from sa_reid_jax.datasets import synthetic
from sa_reid_jax.datasets.synthetic import effects
from sa_reid_jax.datasets.synthetic import people
from sa_reid_jax.datasets.synthetic import settings

SPLITS = ('train', 'query', 'gallery')
# The layout tests' datasets, one per difficulty.
LAYOUT = dict(num_ids=10, num_test_ids=40, num_cameras=4, seed=0)


@pytest.fixture(scope='module')
def generated(tmp_path_factory):
  """``generated(**arguments) -> (summary, {split: records})``, made once per
  argument set. The generator's own summary is what these tests check
  against the files, so they make their datasets here rather than take the
  shared `synthetic_dataset` folders (which carry no summary)."""
  made = {}

  def make(**arguments):
    key = tuple(sorted(arguments.items()))
    if key not in made:
      root = str(tmp_path_factory.mktemp('synthetic'))
      summary = synthetic.generate(root, **arguments)
      made[key] = summary, {split: market_layout.scan_split(root, split)
                            for split in SPLITS}
    return made[key]

  return make


@pytest.fixture(scope='module', params=['easy', 'hard'])
def dataset(generated, request):
  return generated(**LAYOUT, difficulty=request.param)


@pytest.fixture(scope='module')
def easy_dataset(generated):
  return generated(**LAYOUT, difficulty='easy')


def _files(root):
  contents = {}
  for folder, _, names in os.walk(root):
    for name in names:
      path = os.path.join(folder, name)
      with open(path, 'rb') as file:
        contents[os.path.relpath(path, root)] = file.read()
  return contents


def test_same_seed_gives_identical_files(tmp_path):
  synthetic.generate(str(tmp_path / 'a'), num_ids=3, num_cameras=3, seed=7)
  synthetic.generate(str(tmp_path / 'b'), num_ids=3, num_cameras=3, seed=7)
  synthetic.generate(str(tmp_path / 'c'), num_ids=3, num_cameras=3, seed=8)
  first, second = _files(tmp_path / 'a'), _files(tmp_path / 'b')
  assert first and first == second
  assert _files(tmp_path / 'c') != first


def test_layout_round_trips_through_scan_split(dataset):
  summary, records = dataset
  assert len(records['train']) == summary.num_train_images
  assert len(records['query']) == summary.num_query_images
  assert len(records['gallery']) == summary.num_gallery_images
  assert ({r.person_id for r in records['train']} ==
          set(summary.train_person_ids))
  assert ({r.person_id for r in records['query']} ==
          set(summary.test_person_ids))
  gallery_ids = {r.person_id for r in records['gallery']}
  assert gallery_ids == set(summary.test_person_ids) | {0, -1}
  for split in SPLITS:
    for record in records[split]:
      assert 0 <= record.camera_id < 4
      name = record.filename
      assert name.endswith('.jpg')
      expected_prefix = ('-1' if record.person_id == -1
                         else f'{record.person_id:04d}')
      assert name.startswith(f'{expected_prefix}_c{record.camera_id + 1}s')


def test_train_and_test_identities_are_disjoint(dataset):
  summary, _ = dataset
  assert len(summary.train_person_ids) == 10
  assert len(summary.test_person_ids) == 40
  assert not set(summary.train_person_ids) & set(summary.test_person_ids)
  assert 0 not in summary.train_person_ids + summary.test_person_ids


def test_gallery_holds_junk_and_distractors(dataset):
  summary, records = dataset
  person_ids = [r.person_id for r in records['gallery']]
  assert person_ids.count(-1) == summary.num_junk_images == 10
  assert person_ids.count(0) == summary.num_distractor_images == 20


def test_every_identity_has_several_cameras_and_queries_match(dataset):
  _, records = dataset
  for split in ('train', 'gallery'):
    cameras = {}
    for r in records[split]:
      cameras.setdefault(r.person_id, set()).add(r.camera_id)
    assert all(len(c) >= 2 for pid, c in cameras.items() if pid > 0)
  gallery = {(r.person_id, r.camera_id) for r in records['gallery']}
  for query in records['query']:
    assert any(pid == query.person_id and cam != query.camera_id
               for pid, cam in gallery)


def test_images_decode_at_market_size(dataset):
  _, records = dataset
  for split in SPLITS:
    for record in records[split][:20]:
      with Image.open(record.path) as image:
        assert image.format == 'JPEG'
        assert image.mode == 'RGB'
        assert image.size == (64, 128)  # PIL gives (width, height)


def _part_colours(paths):
  """Mean colour of four body bands, divided by the image mean (a crude
  colour constancy): a simple hand-made re-id feature."""
  images = np.stack([np.asarray(Image.open(p), np.float32) for p in paths])
  relative = images / (images.mean(axis=(1, 2), keepdims=True) + 1)
  bands = ((12, 30), (30, 64), (64, 100), (100, 122))
  return np.concatenate(
      [relative[:, a:b, 22:42].mean(axis=(1, 2)) for a, b in bands], axis=1)


def _retrieval_rank1(records):
  """Rank-1 of the hand-made part-colour feature, and chance rank-1."""
  query, gallery = records['query'], records['gallery']
  query_features = _part_colours([r.path for r in query])
  gallery_features = _part_colours([r.path for r in gallery])
  distances = ((query_features[:, None] - gallery_features[None]) ** 2).sum(-1)
  gallery_ids = np.array([r.person_id for r in gallery])
  gallery_cameras = np.array([r.camera_id for r in gallery])
  hits, chance = [], []
  for q, record in enumerate(query):
    keep = ~(((gallery_ids == record.person_id) &
              (gallery_cameras == record.camera_id)) | (gallery_ids == -1))
    ranked = gallery_ids[keep][np.argsort(distances[q][keep], kind='stable')]
    hits.append(ranked[0] == record.person_id)
    chance.append(np.mean(ranked == record.person_id))
  return np.mean(hits), np.mean(chance)


def test_retrieval_is_learnable_but_not_trivial(easy_dataset):
  # The hard preset: test_hard_is_harder_than_easy_for_a_hand_made_feature.
  _, records = easy_dataset
  rank1, chance_rank1 = _retrieval_rank1(records)
  assert rank1 > 5 * chance_rank1
  assert rank1 < 0.9  # not trivial (seen: 0.47)


@pytest.mark.parametrize('arguments, fault', [
    ({'num_ids': 0}, 'num_ids'),
    ({'num_cameras': 1}, 'num_cameras'),
    ({'images_per_camera': (3, 2)}, 'images_per_camera'),
    ({'query_probability': 0.0}, 'query_probability'),
    ({'num_junk': -1}, 'num_junk'),
    ({'jpeg_quality': 0}, 'jpeg_quality'),
    ({'num_ids': 5000, 'num_test_ids': 5000}, 'num_test_ids'),
])
def test_bad_arguments_name_the_culprit(tmp_path, arguments, fault):
  with pytest.raises(ValueError, match=fault):
    synthetic.generate(str(tmp_path), **arguments)


def test_refuses_a_folder_that_already_holds_images(tmp_path):
  synthetic.generate(str(tmp_path), num_ids=2, num_cameras=2)
  with pytest.raises(ValueError, match='bounding_box_train.*already holds'):
    synthetic.generate(str(tmp_path), num_ids=2, num_cameras=2)


def test_command_line(tmp_path, capsys):
  output = str(tmp_path / 'cli')
  assert synthetic.main(['--output', output, '--num_ids', '3',
                         '--num_cameras', '3']) == 0
  assert '3 train ids' in capsys.readouterr().out
  assert market_layout.scan_split(output, 'query')
  with pytest.raises(SystemExit) as exit_info:
    synthetic.main(['--output', str(tmp_path / 'bad'), '--num_cameras', '1'])
  assert exit_info.value.code == 2
  error = capsys.readouterr().err
  assert 'num_cameras must be in [2, 99]' in error
  assert 'Traceback' not in error


@pytest.mark.parametrize('arguments', [
    # The layout tests' datasets (hard/easy rank-1 0.29 / 0.47 = 0.63).
    pytest.param(LAYOUT, id='layout'),
    # 60 test identities, a tighter estimate (0.16 / 0.34 = 0.48).
    pytest.param(dict(num_ids=2, num_test_ids=60, num_cameras=4, seed=1),
                 id='60_test_ids', marks=pytest.mark.full),
])
def test_hard_is_harder_than_easy_for_a_hand_made_feature(generated,
                                                          arguments):
  rank1 = {}
  for difficulty in ('easy', 'hard'):
    _, records = generated(**arguments, difficulty=difficulty)
    rank1[difficulty], chance = _retrieval_rank1(records)
    assert rank1[difficulty] > 2 * chance  # still learnable
  assert rank1['hard'] < 0.75 * rank1['easy']


def test_settings_are_recorded_next_to_the_data(tmp_path, capsys):
  output = str(tmp_path / 'cli')
  assert synthetic.main(['--output', output, '--num_ids', '3',
                         '--num_cameras', '2', '--difficulty', 'easy']) == 0
  assert '(easy)' in capsys.readouterr().out
  with open(os.path.join(output, synthetic.SETTINGS_JSON)) as file:
    recorded = json.load(file)
  assert recorded['arguments']['difficulty'] == 'easy'
  assert recorded['arguments']['num_ids'] == 3
  # JSON has no tuples: compare through a JSON round trip.
  assert recorded['difficulty_settings'] == json.loads(json.dumps(
      dataclasses.asdict(settings.EASY)))
  with pytest.raises(ValueError, match='difficulty must be one of'):
    synthetic.generate(str(tmp_path / 'bad'), difficulty='medium')


def test_near_twins_differ_in_few_attribute_groups():
  rng = np.random.default_rng(0)
  difficulty = dataclasses.replace(settings.HARD, twin_probability=1.0)
  base = people.draw_person(rng, difficulty)
  for _ in range(20):
    twin = people.draw_identity(rng, [base], difficulty)
    changed = [group for group in people.TWIN_ATTRIBUTES
               if any(not np.array_equal(getattr(twin, name),
                                         getattr(base, name))
                      for name in group)]
    assert 1 <= len(changed) <= difficulty.twin_changes


def test_motion_blur_is_a_clamped_running_mean():
  image = np.random.default_rng(0).uniform(0, 255, (5, 9, 3)).astype(
      np.float32)
  length = 4
  expected = np.empty_like(image)
  for x in range(9):
    columns = [min(x + k, 8) for k in range(length)]
    expected[:, x] = image[:, columns].mean(axis=1)
  # float32 running sums reach 12 x 255 (ulp 2.4e-4, 6e-5 after dividing
  # by the length), within 1e-5 of values above 6 (the smallest here is 15).
  np.testing.assert_allclose(
      effects.motion_blur(image, length), expected, rtol=1e-5)
  # Whole grey levels: the running sums, their differences and the division
  # by 4 are exact in float32, so the mean is bit-identical.
  grey_levels = np.round(image)
  expected = np.empty_like(grey_levels)
  for x in range(9):
    columns = [min(x + k, 8) for k in range(length)]
    expected[:, x] = grey_levels[:, columns].sum(axis=1) / length
  np.testing.assert_array_equal(
      effects.motion_blur(grey_levels, length), expected)
  assert effects.motion_blur(image, 1) is image


def test_low_resolution_keeps_size_and_flat_images():
  flat = np.full((128, 64, 3), 100.0, np.float32)
  np.testing.assert_allclose(effects.low_resolution(flat, 0.4), flat)
  rng = np.random.default_rng(0)
  noisy = rng.uniform(0, 255, (128, 64, 3)).astype(np.float32)
  blurred = effects.low_resolution(noisy, 0.4)
  assert blurred.shape == noisy.shape
  assert blurred.std() < 0.6 * noisy.std()  # detail is lost


def test_leaning_composite_shifts_rows_by_their_height_above_the_feet():
  image = np.zeros((10, 8, 3), np.float32)
  layer = np.full_like(image, np.nan)
  layer[2:10, 3] = 255  # a vertical line standing on row 9
  result = effects.composite_leaning(image, layer, 0.25, 9.0)
  for row in range(2, 10):
    shift = int(np.round(0.25 * (9 - row)))
    assert np.flatnonzero(result[row, :, 0]).tolist() == [3 + shift]
  assert not result[:2].any()
