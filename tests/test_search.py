"""Retrieval on plain folders: rankings, gallery cache, picture and CLI."""

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
from sa_reid_jax.datasets import images as images_lib
from sa_reid_jax.models import store
from sa_reid_jax.tools import descriptor_cache
from sa_reid_jax.tools import drawing
from sa_reid_jax.tools import search

IMAGE_SIZE = helpers.SAVED_SANET_IMAGE_SIZE


def save_other_model(root, saved_sanet):
  """A model directory with `saved_sanet`'s config and other weights."""
  _, model, variables = saved_sanet
  # Other weights, same config: the gallery cache must not serve them.
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
  assert 'gallery cache: none for this model' in out
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
  assert 'gallery cache: used (' in out
  assert f'skipped {broken}: ' in out
  assert second['gallery_cache']['reused'] == 10
  assert second['gallery_cache']['described'] == 0
  assert ({**second, 'gallery_cache': None} ==
          {**first, 'gallery_cache': None})

  changed = env['gallery'] / 'exact.png'
  os.utime(changed, ns=(0, os.stat(changed).st_mtime_ns + 10**9))
  out, _ = run_search(capsys, env, output)
  assert 'describing 1 new or changed file\n' in out

  out, _ = run_search(capsys, env, output, checkpoint=env['model_b'])
  assert 'gallery cache: none for this model' in out

  # Altered contents (new size), an added and a removed file.
  victim = sorted(env['gallery'].glob('0*.jpg'))[-1]
  Image.open(victim).resize((32, 64)).save(victim)
  Image.fromarray(env['exact_pixels'][:, ::-1]).save(
      env['gallery'] / 'added.png')
  removed = sorted((env['gallery'] / 'sub').iterdir())[0]
  os.remove(removed)
  out, third = run_search(capsys, env, output)
  assert 'describing 2 new or changed files' in out
  assert third['num_gallery'] == 9  # 8 crops + exact.png, one swapped
  truth = naive_rankings(env['model_a'], readable_gallery(env), query_files)
  for query in third['queries']:
    assert ([m['file'] for m in query['matches']] ==
            [f for f, _ in truth[query['query']][:5]])


def test_cache_key_covers_settings():
  key = descriptor_cache.cache_key('fingerprint', (64, 32), False)
  assert key == descriptor_cache.cache_key('fingerprint', [64, 32], False)
  assert len({key, descriptor_cache.cache_key('other', (64, 32), False),
              descriptor_cache.cache_key('fingerprint', (64, 31), False),
              descriptor_cache.cache_key('fingerprint', (64, 32), True)}) == 4


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
  assert 'gallery cache: used (' in capsys.readouterr().out
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
