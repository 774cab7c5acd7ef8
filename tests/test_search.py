"""Retrieval on plain folders: rankings, gallery index, picture and CLI."""

import json
import os
import pathlib
import shutil

import helpers
import jax
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from sa_reid_jax.data import preprocessing
from sa_reid_jax.datasets import image_check
from sa_reid_jax.datasets import images as images_lib
from sa_reid_jax.models import store
from sa_reid_jax.tools import drawing
from sa_reid_jax.tools import gallery_index
from sa_reid_jax.tools import index_manifest
from sa_reid_jax.tools import nearest
from sa_reid_jax.tools import search

IMAGE_SIZE = helpers.SAVED_SANET_IMAGE_SIZE


def save_other_model(root, saved_sanet):
  """A model directory with `saved_sanet`'s config and other weights."""
  _, model, variables = saved_sanet
  # Other weights, same config: the gallery index must not serve them.
  rng = np.random.default_rng(1)
  other = {**variables, 'params': jax.tree.map(
      lambda x: x + 0.05 * rng.standard_normal(x.shape).astype(x.dtype),
      variables['params'])}
  return store.save_model(str(root / 'model_b'), model, other,
                          metadata={'image_size': list(IMAGE_SIZE)})


@pytest.fixture(scope='module')
def env(tmp_path_factory, synthetic_dataset, saved_sanet):
  root = tmp_path_factory.mktemp('search')
  dataset = pathlib.Path(synthetic_dataset(num_ids=4, num_test_ids=2,
                                           seed=0))
  gallery = root / 'gallery'
  (gallery / 'sub').mkdir(parents=True)
  crops = sorted(p for p in (dataset / 'bounding_box_test').iterdir()
                 if p.suffix == '.jpg')[:8]
  for i, crop in enumerate(crops):
    # Some in a subfolder: the gallery is searched recursively.
    shutil.copy(crop, gallery / ('sub' if i % 3 == 0 else '') / crop.name)
  # Exactly the model's input size, so its thumbnail is its own pixels.
  pixels = np.random.default_rng(0).integers(0, 256, (*IMAGE_SIZE, 3),
                                             dtype=np.uint8)
  Image.fromarray(pixels).save(gallery / 'exact.png')
  (gallery / 'broken.jpg').write_bytes(b'not an image at all')
  queries = root / 'queries'
  queries.mkdir()
  shutil.copy(gallery / 'exact.png', queries / 'copy_of_exact.png')
  query_crop = sorted(p for p in (dataset / 'query').iterdir()
                      if p.suffix == '.jpg')[0]
  shutil.copy(query_crop, queries / query_crop.name)
  return {'root': root, 'gallery': gallery, 'queries': queries,
          'exact_pixels': pixels, 'model_a': str(saved_sanet[0]),
          'model_b': save_other_model(root, saved_sanet)}


def run_search(capsys, env, output, *extra, checkpoint=None):
  search.main([f'--checkpoint={checkpoint or env["model_a"]}',
               f'--gallery={env["gallery"]}', f'--query={env["queries"]}',
               f'--output={output}', '--topk=5', '--batch_size=4', *extra])
  with open(os.path.join(output, 'results.json')) as f:
    return capsys.readouterr().out, json.load(f)


def naive_rankings(checkpoint, gallery_files, query_files):
  """Rankings from model.apply and numpy alone."""
  model, variables = store.load_model(checkpoint)
  images = np.stack([
      preprocessing.preprocess(
          images_lib.decode_image(tf.io.read_file(p)), IMAGE_SIZE).numpy()
      for p in [*gallery_files, *query_files]])
  # One batch through one compiled function: compiling is the slow part.
  features = jax.jit(lambda v, x: model.apply(v, x, train=False)['features'])(
      variables, images)
  features = np.asarray(features).reshape(len(images), -1)
  gallery = features[:len(gallery_files)]
  rankings = {}
  for query, descriptor in zip(query_files, features[len(gallery_files):]):
    distances = np.sqrt(((gallery - descriptor) ** 2).sum(axis=1))
    order = np.argsort(distances)
    rankings[query] = [(gallery_files[i], distances[i]) for i in order]
  return rankings


def readable_gallery(env):
  return sorted(str(p) for p in env['gallery'].rglob('*.*')
                if p.name != 'broken.jpg' and '.sa_reid_cache' not in str(p))


def test_rankings_cache_and_picture(env, capsys):
  output = env['root'] / 'out'
  broken = str(env['gallery'] / 'broken.jpg')
  out, first = run_search(capsys, env, output)
  assert 'gallery index: none for this model' in out
  assert f'skipped {broken}: ' in out
  assert [f['file'] for f in first['failures']] == [broken]

  gallery_files = readable_gallery(env)
  query_files = sorted(str(p) for p in env['queries'].iterdir())
  truth = naive_rankings(env['model_a'], gallery_files, query_files)
  assert [q['query'] for q in first['queries']] == query_files
  for query in first['queries']:
    expected = truth[query['query']][:5]
    assert [m['file'] for m in query['matches']] == [f for f, _ in expected]
    # Squared: the official |a|^2 + |b|^2 - 2ab form in float32 rounds at
    # the scale of |a|^2 + |b|^2 = 12 (6 unit-norm parts each), where a
    # float32 ulp is ~1e-6 (measured: up to 3e-6); 1e-5 is ~10 ulp. Near 0
    # that is ~3e-3 in the distance itself.
    np.testing.assert_allclose(
        [m['distance'] ** 2 for m in query['matches']],
        [d ** 2 for _, d in expected], atol=1e-5)
    assert [m['rank'] for m in query['matches']] == [1, 2, 3, 4, 5]
  row = query_files.index(str(env['queries'] / 'copy_of_exact.png'))
  duplicate = first['queries'][row]['matches']
  assert duplicate[0]['file'] == str(env['gallery'] / 'exact.png')
  # The same pixels: distance 0 up to the square root of the rounding of
  # the square above, sqrt(1e-5) ~ 3e-3.
  assert duplicate[0]['distance'] < 5e-3
  # Not a degenerate network: other images are clearly farther.
  assert duplicate[1]['distance'] > 0.1

  # The picture: 2 rows of query + gap + 5 matches; the query thumbnail and
  # its rank-1 match (the same pixels) sit at known places.
  picture = np.asarray(Image.open(output / 'ranks.png').convert('RGB'))
  pad, gap, label = (drawing.GRID_PADDING, drawing.GRID_QUERY_GAP,
                     drawing.GRID_LABEL_HEIGHT)
  height, width = IMAGE_SIZE
  assert picture.shape == (pad + 2 * (height + label + pad),
                           pad + width + gap + 5 * (width + pad), 3)
  y = pad + row * (height + label + pad)
  match_x = pad + width + gap
  np.testing.assert_array_equal(
      picture[y:y + height, pad:pad + width], env['exact_pixels'])
  np.testing.assert_array_equal(
      picture[y:y + height, match_x:match_x + width], env['exact_pixels'])

  out, second = run_search(capsys, env, output)
  assert 'gallery index: used (' in out
  assert f'skipped {broken}: ' in out
  assert second['gallery_index']['reused'] == 10
  assert second['gallery_index']['described'] == 0
  assert ({**second, 'gallery_index': None} ==
          {**first, 'gallery_index': None})

  changed = env['gallery'] / 'exact.png'
  os.utime(changed, ns=(0, os.stat(changed).st_mtime_ns + 10**9))
  out, _ = run_search(capsys, env, output)
  assert 'describing 1 new or changed file\n' in out

  out, _ = run_search(capsys, env, output, checkpoint=env['model_b'])
  assert 'gallery index: none for this model' in out

  # Altered contents (new size), an added and a removed file.
  victim = sorted(env['gallery'].glob('0*.jpg'))[-1]
  Image.open(victim).resize((32, 64)).save(victim)
  Image.fromarray(env['exact_pixels'][:, ::-1]).save(
      env['gallery'] / 'added.png')
  removed = sorted((env['gallery'] / 'sub').iterdir())[0]
  os.remove(removed)
  out, third = run_search(capsys, env, output)
  assert 'describing 2 new or changed files' in out
  assert third['gallery_index']['removed'] == 1
  assert third['num_gallery'] == 9  # 8 crops + exact.png, one swapped
  truth = naive_rankings(env['model_a'], readable_gallery(env), query_files)
  for query in third['queries']:
    assert ([m['file'] for m in query['matches']] ==
            [f for f, _ in truth[query['query']][:5]])


def test_cache_key_covers_settings():
  key = gallery_index.cache_key('fingerprint', (64, 32), False)
  assert key == gallery_index.cache_key('fingerprint', [64, 32], False)
  assert len({key, gallery_index.cache_key('other', (64, 32), False),
              gallery_index.cache_key('fingerprint', (64, 31), False),
              gallery_index.cache_key('fingerprint', (64, 32), True)}) == 4


def test_query_in_gallery_is_excluded(env, capsys):
  query = str(env['gallery'] / 'exact.png')
  # Output inside the gallery: its ranks.png must not become a gallery image.
  output = env['gallery'] / 'results'
  for _ in range(2):
    search.main([f'--checkpoint={env["model_a"]}',
                 f'--gallery={env["gallery"]}', f'--query={query}',
                 f'--output={output}', '--topk=100'])
    with open(output / 'results.json') as f:
      results = json.load(f)
    (entry,) = results['queries']
    assert entry['excluded_self']
    files = [m['file'] for m in entry['matches']]
    assert query not in files
    assert len(files) == results['num_gallery'] - 1
  assert 'gallery index: used (' in capsys.readouterr().out
  assert str(output / 'ranks.png') not in files


def test_grid_rows_and_columns_are_capped():
  match = {'rank': 1, 'file': '/nonexistent.png', 'distance': 0.5}
  results = {'topk': 4, 'queries': [
      {'query': '/nonexistent.png', 'matches': [match] * 4}] * 5}
  picture = drawing.draw_grid(results, thumbnail=(20, 10), max_rows=2,
                             max_matches=3)
  assert picture.size == (
      drawing.GRID_PADDING + 10 + drawing.GRID_QUERY_GAP
      + 3 * (10 + drawing.GRID_PADDING),
      drawing.GRID_PADDING + 2 * (20 + drawing.GRID_LABEL_HEIGHT
                                 + drawing.GRID_PADDING))


def cli_error(capsys, *argv):
  with pytest.raises(SystemExit) as exit_info:
    search.main(list(argv))
  message = exit_info.value.code
  assert isinstance(message, str), message
  assert len(message.splitlines()) == 1 and 'Traceback' not in message
  return message


def test_cli_errors(env, capsys, tmp_path):
  model, gallery, queries = env['model_a'], env['gallery'], env['queries']
  assert '--gallery' in cli_error(capsys, f'--checkpoint={model}',
                                  f'--query={queries}')
  empty = tmp_path / 'empty'
  empty.mkdir()
  message = cli_error(capsys, f'--checkpoint={model}', f'--gallery={empty}',
                      f'--query={queries}')
  assert '--gallery' in message and str(empty) in message
  only_broken = tmp_path / 'only_broken'
  only_broken.mkdir()
  (only_broken / 'x.jpg').write_bytes(b'junk')
  message = cli_error(capsys, f'--checkpoint={model}',
                      f'--gallery={only_broken}', f'--query={queries}',
                      f'--output={tmp_path / "out"}')
  assert message.endswith('--gallery: none of the 1 gallery images could be '
                          'read')
  assert 'skipped' in capsys.readouterr().out
  message = cli_error(capsys, f'--checkpoint={model}', f'--gallery={gallery}',
                      f'--query={gallery / "broken.jpg"}',
                      f'--output={tmp_path / "out"}')
  assert message.endswith('--query: none of the 1 query images could be read')
  assert '--checkpoint' in cli_error(
      capsys, f'--checkpoint={tmp_path / "missing"}', f'--gallery={gallery}',
      f'--query={queries}')
  assert '--image_size' in cli_error(
      capsys, f'--checkpoint={model}', f'--gallery={gallery}',
      f'--query={queries}', '--image_size=64')


def test_search_in_a_real_process_writes_one_error_line(env, tmp_path):
  # What a user's terminal shows, run from their own directory (the
  # installed package, not the checkout's): the error alone, without
  # TensorFlow's start-up notices (which some CPUs print whatever TF_CPP_MIN_LOG_LEVEL
  # says) or a traceback.
  gallery = env['gallery']
  result = helpers.run_as_user(
      'sa_reid_jax.tools.search', f'--checkpoint={gallery}',
      f'--gallery={gallery}', f'--query={env["queries"]}',
      f'--output={tmp_path / "out"}', cwd=str(tmp_path))
  assert result.returncode == 1
  assert result.stderr.splitlines() == [
      'python -m sa_reid_jax.tools.search: error: --checkpoint: '
      f'{gallery}: not a model directory (no "model" and "variables" items) '
      'nor a training workdir; expected the output of convert_weights.py or '
      'a training WORKDIR/model'], result.stderr
  assert not (tmp_path / 'out').exists()


def test_max_distance_limits_the_matches(env, capsys, tmp_path):
  output = tmp_path / 'limited'
  # Below the distance of every other image (> 0.1 above) and above the
  # duplicate's rounding (< 5e-3 above).
  _, results = run_search(capsys, env, output, '--max_distance=0.05')
  assert results['max_distance'] == 0.05
  by_query = {os.path.basename(q['query']): q for q in results['queries']}
  duplicate = by_query.pop('copy_of_exact.png')
  assert [m['file'] for m in duplicate['matches']] == [
      str(env['gallery'] / 'exact.png')]
  assert not duplicate['no_match']
  (other,) = by_query.values()
  assert other['matches'] == [] and other['no_match']
  assert (output / 'ranks.png').is_file()

  # fpr:RATE reads the threshold a training workdir's metrics.json recorded
  # (trainer._finish's layout: the final evaluation under 'final').
  workdir = tmp_path / 'workdir'
  shutil.copytree(env['model_a'], workdir / 'model')
  verification = {'fpr': [1e-4, 1e-3, 1e-2], 'threshold': [None, 0.05, 0.9],
                  'tpr': [None, 0.5, 0.9]}
  settings = {'image_size': list(IMAGE_SIZE), 'flip': False,
              'metric': 'euclidean'}
  (workdir / 'metrics.json').write_text(json.dumps(
      {'step': 2, 'final': {'verification': verification,
                            'settings': settings}, 'initial': None}))
  search.main([f'--checkpoint={workdir / "model"}',
               f'--gallery={env["gallery"]}', f'--query={env["queries"]}',
               f'--output={output}', '--topk=5', '--max_distance=fpr:1e-3'])
  with open(output / 'results.json') as f:
    recorded = json.load(f)
  assert recorded['max_distance'] == 0.05
  assert recorded['queries'] == results['queries']
  capsys.readouterr()


def write_metrics(folder, verification=None, **settings):
  folder.mkdir(parents=True, exist_ok=True)
  metrics = {'settings': {'image_size': [64, 32], 'flip': False,
                          'metric': 'euclidean', **settings}}
  if verification is not None:
    metrics['verification'] = verification
  (folder / 'metrics.json').write_text(json.dumps(metrics))


@pytest.mark.parametrize('value, metrics, message', [
    ('-1', None, "expected a distance >= 0 or fpr:RATE (e.g. fpr:1e-3), "
     "got '-1'"),
    ('near', None, "got 'near'"),
    ('fpr:2', None, 'expected fpr:RATE with 0 < RATE < 1'),
    ('fpr:1e-3', None, 'nor its parent holds a metrics.json'),
    ('fpr:1e-3', {}, 'records no verification thresholds'),
    ('fpr:1e-5', {'verification': True}, 'not 1e-05'),
    ('fpr:1e-4', {'verification': True}, 'no threshold at FPR 0.0001'),
    ('fpr:1e-3', {'verification': True, 'image_size': [128, 64]},
     'image size [128, 64], this search [64, 32]'),
    ('fpr:1e-3', {'verification': True, 'flip': True},
     'flip True, this search False'),
    ('fpr:1e-3', {'verification': True, 'metric': 'cosine'},
     'metric cosine, this search euclidean'),
])
def test_max_distance_errors_name_the_flag(tmp_path, value, metrics, message):
  model_dir = tmp_path / 'model'
  model_dir.mkdir()
  if metrics is not None:
    settings = dict(metrics)
    verification = ({'fpr': [1e-4, 1e-3], 'threshold': [None, 0.7]}
                    if settings.pop('verification', False) else None)
    write_metrics(model_dir, verification, **settings)
  with pytest.raises(ValueError) as error:
    search.max_distance_threshold(value, str(model_dir), (64, 32), False)
  assert str(error.value).startswith('--max_distance: ')
  assert message in str(error.value)


def test_max_distance_of_a_train_only_workdir_says_so(tmp_path):
  (tmp_path / 'model').mkdir()
  (tmp_path / 'metrics.json').write_text(json.dumps(
      {'step': 2, 'final': None, 'targets': {}, 'initial': None}))
  with pytest.raises(ValueError, match='--max_distance: .* was train-only'):
    search.max_distance_threshold('fpr:1e-3', str(tmp_path / 'model'),
                                  (64, 32), False)


def test_max_distance_values(tmp_path):
  assert search.max_distance_threshold(None, str(tmp_path), (64, 32),
                                       False) is None
  assert search.max_distance_threshold('0.5', str(tmp_path), (64, 32),
                                       False) == 0.5
  # The model directory's own metrics.json (eval.py) before its parent's.
  write_metrics(tmp_path, {'fpr': [1e-3], 'threshold': [0.9]})
  write_metrics(tmp_path / 'model', {'fpr': [1e-3], 'threshold': [0.7]})
  assert search.max_distance_threshold(
      'fpr:1e-3', str(tmp_path / 'model'), (64, 32), False) == 0.7


def test_nearest_matches_a_full_stable_sort_on_tie_heavy_data():
  rng = np.random.default_rng(1)
  # Small integers: every float32 product and sum is exact, and the sqrt
  # of distinct integers up to 36 stays distinct, so the float32 order is
  # the integer order and the ties are exact ties.
  gallery = rng.integers(0, 3, (300, 4)).astype(np.float32)
  queries = rng.integers(0, 3, (23, 4)).astype(np.float32)
  # Rows out of order (as after appends); position p's descriptor is
  # stored at row rows[p].
  rows = rng.permutation(300)
  stored = np.empty_like(gallery)
  stored[rows] = gallery
  exclude = [[0, 5], [], [299]]
  squared = ((queries[:, None].astype(np.int64) - gallery[None]) ** 2).sum(-1)
  squared = squared.astype(np.float64)
  for q, own in enumerate(exclude):
    squared[q, own] = np.inf
  expected = np.argsort(squared, axis=1, kind='stable')[:, :10]
  distances, positions = nearest.nearest(
      queries, stored, 10, rows=rows, exclude=exclude, block_rows=37,
      query_batch=7)
  np.testing.assert_array_equal(positions, expected)
  np.testing.assert_array_equal(
      distances, np.sqrt(np.take_along_axis(squared, expected, axis=1)))
  # Stored squared norms (exact for small integers) give the same ranking.
  with_norms = nearest.nearest(
      queries, stored, 10, rows=rows, norms=(stored ** 2).sum(1),
      exclude=exclude, block_rows=37, query_batch=7)
  np.testing.assert_array_equal(with_norms[1], expected)
  np.testing.assert_array_equal(with_norms[0], distances)
  with pytest.raises(ValueError, match=r'norms \(299,\) must be \(300,\)'):
    nearest.nearest(queries, stored, 10, norms=np.zeros(299, np.float32))
  # One value everywhere: the lowest positions, across blocks.
  same = np.ones((50, 4), np.float32)
  _, positions = nearest.nearest(same[:2], same, 20, block_rows=7,
                                 exclude=[[3]])
  np.testing.assert_array_equal(positions[0], [0, 1, 2, *range(4, 21)])
  np.testing.assert_array_equal(positions[1], np.arange(20))
  # A gallery smaller than k, one position excluded: inf and -1 fill in.
  distances, positions = nearest.nearest(queries[:1], gallery[:3], 5,
                                         exclude=[[1]])
  assert positions.shape == (1, 3) and positions[0, 2] == -1
  assert np.isinf(distances[0, 2]) and 1 not in positions[0, :2]


class FakeGallery:
  """Gallery files with descriptors drawn from their contents."""

  def __init__(self, folder):
    self.folder = folder
    self.folder.mkdir(parents=True, exist_ok=True)
    self.calls = []
    self.messages = []

  def write(self, name, content):
    (self.folder / name).write_text(content)

  def truth(self, path):
    seed = int.from_bytes(pathlib.Path(path).read_bytes()[-4:], 'little')
    return np.random.default_rng(seed).standard_normal((2, 3)).astype(
        np.float32)

  def describe(self, paths):
    self.calls.append(list(paths))
    good = {p: self.truth(p) for p in paths if 'broken' not in p}
    return good, {p: 'not an image' for p in paths if 'broken' in p}

  def open(self, folder=None):
    self.calls.clear()
    paths = sorted(str(p) for p in self.folder.iterdir() if p.is_file())
    index = gallery_index.open_index(
        paths, key='k' * 64, gallery_folder=str(folder or self.folder),
        describe=self.describe, log=self.messages.append)
    for position, path in enumerate(index.paths):
      np.testing.assert_array_equal(index.descriptor(position),
                                    self.truth(path))
    assert index.paths == [p for p in paths if 'broken' not in p]
    return index


def data_files(index):
  return sorted(n for n in os.listdir(index.info['index'])
                if n.startswith('descriptors-'))


def test_index_appends_adds_marks_removals_and_compacts(tmp_path,
                                                        monkeypatch):
  gallery = FakeGallery(tmp_path / 'gallery')
  for i in range(6):
    gallery.write(f'a{i}.jpg', f'crop {i:4d}')
  gallery.write('broken.jpg', 'junk')
  monkeypatch.setattr(gallery_index, 'DESCRIBE_CHUNK', 4)
  index = gallery.open()
  # Described in chunks of 4, each appended before the next is described.
  assert [len(c) for c in gallery.calls] == [4, 3]
  assert index.failures == {str(gallery.folder / 'broken.jpg'):
                            'not an image'}
  (data,) = data_files(index)
  data = os.path.join(index.info['index'], data)
  first_bytes = pathlib.Path(data).read_bytes()
  assert len(first_bytes) == 6 * 6 * 4  # six rows of 2 x 3 float32

  index = gallery.open()
  assert gallery.calls == [] and index.info['reused'] == 7
  assert index.failures  # failures are indexed and reported again

  gallery.write('b0.jpg', 'crop  100')
  gallery.write('a1.jpg', 'crop  101')  # changed contents and size
  os.remove(gallery.folder / 'a2.jpg')
  index = gallery.open()
  assert gallery.calls == [[str(gallery.folder / 'a1.jpg'),
                            str(gallery.folder / 'b0.jpg')]]
  assert (index.info['reused'], index.info['described'],
          index.info['removed']) == (5, 2, 1)
  # Appended: the first rows' bytes are untouched, two rows added.
  grown = pathlib.Path(data).read_bytes()
  assert grown[:len(first_bytes)] == first_bytes
  assert len(grown) == 8 * 6 * 4

  for i in (0, 3, 4, 5):
    os.remove(gallery.folder / f'a{i}.jpg')
  index = gallery.open()
  # 6 of 8 rows dead (> COMPACT_DEAD_FRACTION): the live ones are copied.
  assert any('compacting' in m for m in gallery.messages)
  assert data_files(index) == ['descriptors-1.f32']
  assert index.descriptors.shape == (2, 6)
  assert gallery.calls == []
  index = gallery.open()
  assert gallery.calls == [] and len(index.paths) == 2


def test_damaged_index_is_rebuilt(tmp_path):
  gallery = FakeGallery(tmp_path / 'gallery')
  for i in range(3):
    gallery.write(f'a{i}.jpg', f'crop {i:4d}')
  index = gallery.open()
  folder = index.info['index']
  data = os.path.join(folder, 'descriptors-0.f32')
  # An append cut short (rows without a manifest naming them): ignored,
  # then overwritten by the next append.
  with open(data, 'ab') as f:
    f.write(b'\xff' * 10)
  index = gallery.open()
  assert gallery.calls == []
  gallery.write('b.jpg', 'crop   99')
  index = gallery.open()
  assert os.path.getsize(data) == 4 * 6 * 4

  damages = {
      'a short descriptor file': lambda: os.truncate(data, 20),
      'a short norm file': lambda: os.truncate(
          os.path.join(folder, 'norms-0.f32'), 4),
      'a missing manifest': lambda: os.remove(
          os.path.join(folder, index_manifest.MANIFEST)),
      'a damaged manifest': lambda: pathlib.Path(
          folder, index_manifest.MANIFEST).write_bytes(b'PK\x03\x04junk'),
  }
  for damage in damages.values():
    damage()
    gallery.messages.clear()
    index = gallery.open()
    assert [len(c) for c in gallery.calls] == [4]
    assert gallery.messages[0].startswith(
        f'gallery index: damaged index {folder} (')
    assert gallery.messages[0].endswith('; rebuilding it')


def test_read_only_gallery_is_indexed_in_the_user_cache(tmp_path,
                                                        monkeypatch):
  gallery = FakeGallery(tmp_path / 'gallery')
  for i in range(3):
    gallery.write(f'a{i}.jpg', f'crop {i:4d}')
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'user_cache'))
  # The gallery's cache folder cannot be created: a file is in the way (as
  # tests/test_image_check.py does; permissions do not stop root).
  (gallery.folder / gallery_index.CACHE_FOLDER).write_bytes(b'')
  index = gallery.open()
  folder = index.info['index']
  # The same place image_check keeps this folder's verdicts, beside them.
  verdicts = image_check.cache_files(str(gallery.folder))[1]
  assert folder.startswith(str(tmp_path / 'user_cache' / 'sa_reid_jax'))
  assert os.path.dirname(os.path.dirname(os.path.dirname(folder))) == (
      os.path.dirname(os.path.dirname(verdicts)))
  assert gallery.messages[0] == (
      f'gallery index: {gallery.folder / ".sa_reid_cache"} is not writable; '
      f'index kept in {folder}')
  index = gallery.open()
  assert gallery.calls == [] and index.info['index'] == folder


def manifest_state(folder, key='k' * 64):
  """{name: (size, mtime_ns, described, reason)} of an index's current
  entries, its journal replayed (rows differ between histories)."""
  manifest = index_manifest.read(str(folder), key, print)
  return {manifest.names[i]: (int(manifest.sizes[i]), int(manifest.mtimes[i]),
                              bool(manifest.rows[i] >= 0),
                              manifest.reasons.get(manifest.names[i], ''))
          for i in manifest.current()}


def test_journal_replay_equals_a_fresh_build(tmp_path, monkeypatch):
  # Never folded here: every change after the build stays in the journal.
  monkeypatch.setattr(index_manifest, 'FOLD_FRACTION', 1e9)
  gallery = FakeGallery(tmp_path / 'gallery')
  for i in range(6):
    gallery.write(f'a{i}.jpg', f'crop {i:4d}')
  gallery.write('broken.jpg', 'junk')
  folder = gallery.open().info['index']
  base = pathlib.Path(folder, index_manifest.MANIFEST).read_bytes()
  # Added, changed, removed, removed and added back, a failure removed.
  gallery.write('b0.jpg', 'crop  100')
  gallery.open()
  gallery.write('a1.jpg', 'crop  101')
  os.remove(gallery.folder / 'a2.jpg')
  gallery.open()
  os.remove(gallery.folder / 'a3.jpg')
  os.remove(gallery.folder / 'broken.jpg')
  gallery.open()
  gallery.write('a3.jpg', 'crop  103')
  index = gallery.open()
  assert gallery.calls == [[str(gallery.folder / 'a3.jpg')]]
  # O(changes) on disk: the base is still the empty one the build began
  # with; the build and each update since are records of its journal.
  assert pathlib.Path(folder, index_manifest.MANIFEST).read_bytes() == base
  assert index_manifest.read(folder, 'k' * 64, print).journal_records == 5
  journaled = manifest_state(folder)
  # Independent truth: the files on disk now.
  expected = {}
  for path in sorted(gallery.folder.iterdir()):
    if path.is_file():
      stat = os.stat(path)
      expected[path.name] = (stat.st_size, stat.st_mtime_ns, True, '')
  assert journaled == expected
  # A fresh build of the same files, folded into its base (an index kept
  # for another folder, its names relative to that one: compared by file
  # name), agrees.
  monkeypatch.setattr(index_manifest, 'FOLD_FRACTION', 0.0)
  FakeGallery(tmp_path / 'gallery').open(folder=tmp_path / 'fresh')
  assert not any(n.startswith(index_manifest.JOURNAL_PREFIX) for n in
                 os.listdir(index_manifest_folder(tmp_path / 'fresh')))
  assert {os.path.basename(n): v for n, v in manifest_state(
      index_manifest_folder(tmp_path / 'fresh')).items()} == (
          journaled)
  # Folding the journal into a new base keeps the state; the journal goes.
  manifest = index_manifest.read(folder, 'k' * 64, print)
  index_manifest.write_base(folder, 'k' * 64, manifest)
  assert manifest_state(folder) == journaled
  assert [n for n in os.listdir(folder)
          if n.startswith(index_manifest.JOURNAL_PREFIX)] == []
  assert gallery.open().info['described'] == 0 and gallery.calls == []
  # The stored squared norms are the rows' (float32 sums of 6 products of
  # standard normals: a few ulp apart at most, 1e-5 relative is ~100 ulp).
  np.testing.assert_allclose(
      index.norms, (np.asarray(index.descriptors, np.float64) ** 2).sum(1),
      rtol=1e-5)


def index_manifest_folder(gallery_folder):
  """The single index folder of a gallery folder (FakeGallery's key)."""
  (folder,) = (gallery_folder / gallery_index.CACHE_FOLDER).iterdir()
  return folder


@pytest.mark.parametrize('damage', ['cut short', 'checksum'])
def test_torn_journal_record_is_ignored(tmp_path, monkeypatch, damage):
  gallery = FakeGallery(tmp_path / 'gallery')
  for i in range(4):
    gallery.write(f'a{i}.jpg', f'crop {i:4d}')
  folder = gallery.open().info['index']  # the build: folded into the base
  monkeypatch.setattr(index_manifest, 'FOLD_FRACTION', 1e9)
  gallery.write('b0.jpg', 'crop  100')
  gallery.open()
  os.remove(gallery.folder / 'a0.jpg')
  gallery.open()
  (journal,) = [n for n in os.listdir(folder)
                if n.startswith(index_manifest.JOURNAL_PREFIX)]
  journal = pathlib.Path(folder, journal)
  data = journal.read_bytes()
  header = index_manifest._HEADER  # pylint: disable=protected-access
  (_, length, _) = header.unpack(data[:header.size])
  offset = header.size + length  # the second (last) record's start
  assert offset < len(data) - 5  # the damage is inside the last record
  if damage == 'cut short':
    journal.write_bytes(data[:-5])
  else:
    journal.write_bytes(data[:-5] + bytes(b ^ 1 for b in data[-5:]))
  gallery.messages.clear()
  index = gallery.open()  # checks every descriptor against the truth
  assert gallery.messages[0].startswith(
      f'gallery index: ignoring a torn journal record at byte {offset} of '
      f'{journal} (')
  # The removal it recorded is done again (nothing to describe), and the
  # torn bytes are cut off before the new record: the next read is clean.
  assert gallery.calls == [] and index.info['removed'] == 1
  assert str(gallery.folder / 'a0.jpg') not in index.paths
  gallery.messages.clear()
  index = gallery.open()
  assert gallery.calls == [] and not any('ignoring a torn' in m
                                         for m in gallery.messages)
  assert index.info['removed'] == 0 and len(index.paths) == 4
