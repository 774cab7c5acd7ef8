"""Tests of the up-front image check shared by every reader of a folder."""

import io
import os
from unittest import mock

import ml_collections
import numpy as np
from PIL import Image
import pytest

from sa_reid_jax.datasets import builders
from sa_reid_jax.datasets import image_check
from sa_reid_jax.datasets import market_layout
from sa_reid_jax.datasets import tables
from sa_reid_jax.evaluation import evaluate
from sa_reid_jax.tools import image_files
from sa_reid_jax.training import run as run_lib

_FOLDERS = {
    'bounding_box_train': ['0001_c1s1_000001_01.jpg', '0001_c2s1_000002_01.jpg',
                           '0002_c1s1_000003_01.jpg'],
    'query': ['0003_c1s1_000004_01.jpg', '0004_c2s1_000005_01.jpg'],
    'bounding_box_test': ['0003_c2s1_000006_01.jpg', '0004_c1s1_000007_01.jpg',
                          '0000_c3s1_000008_01.jpg'],
}


def _jpeg(seed: int) -> bytes:
  pixels = np.random.default_rng(seed).integers(0, 256, (32, 16, 3),
                                                dtype=np.uint8)
  encoded = io.BytesIO()
  Image.fromarray(pixels).save(encoded, format='JPEG', quality=90)
  return encoded.getvalue()


def _write(root) -> str:
  for i, (folder, names) in enumerate(_FOLDERS.items()):
    os.makedirs(root / folder, exist_ok=True)
    for j, name in enumerate(names):
      (root / folder / name).write_bytes(_jpeg(10 * i + j))
  return str(root)


def _truncate(path):
  """Keeps the first half of a valid JPEG, as an interrupted copy does."""
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])


def test_every_corrupt_image_is_listed_in_one_error(tmp_path):
  root = _write(tmp_path / 'data')
  truncated = tmp_path / 'data' / 'bounding_box_test' / _FOLDERS[
      'bounding_box_test'][1]
  empty = tmp_path / 'data' / 'query' / _FOLDERS['query'][0]
  _truncate(truncated)
  empty.write_bytes(b'')
  with pytest.raises(image_check.UnreadableImagesError) as error:
    tables.from_folders(root, builders.SPLITS)
  assert [path for path, _ in error.value.failures] == [str(empty),
                                                        str(truncated)]
  lines = str(error.value).splitlines()
  assert lines[0] == (f'2 unreadable images in {root}; remove or replace '
                      'them:')
  assert lines[1].startswith(f'  {empty}: ')
  assert lines[2].startswith(f'  {truncated}: ')
  assert lines[2].startswith(f'  {truncated}: not a decodable image (')
  # The train split alone is fine.
  assert len(tables.from_folder(root, 'train')) == 3


def test_training_and_evaluation_check_before_work(tmp_path):
  root = _write(tmp_path / 'data')
  _truncate(tmp_path / 'data' / 'bounding_box_test' /
            _FOLDERS['bounding_box_test'][0])
  _truncate(tmp_path / 'data' / 'query' / _FOLDERS['query'][1])
  dataset = ml_collections.ConfigDict({'folder': root, 'name': '',
                                       'data_dir': ''})
  # Training reads the evaluation splits too, so it stops before step 0.
  with pytest.raises(image_check.UnreadableImagesError) as error:
    run_lib._train_table(dataset)  # pylint: disable=protected-access
  assert len(error.value.failures) == 2
  # Evaluation names the query and the gallery file in one error.
  with pytest.raises(image_check.UnreadableImagesError) as error:
    evaluate.load_splits(dataset)
  assert len(error.value.failures) == 2


def test_system_files_are_skipped_and_counted(tmp_path):
  root = _write(tmp_path / 'data')
  train = tmp_path / 'data' / 'bounding_box_train'
  (train / '.DS_Store').write_bytes(b'\x00\x00\x00\x01Bud1')
  (train / 'Thumbs.db').write_bytes(b'\xd0\xcf\x11\xe0')
  # AppleDouble resource fork: an image name, but not an image.
  (train / ('._' + _FOLDERS['bounding_box_train'][0])).write_bytes(
      b'\x00\x05\x16\x07' + bytes(60))
  messages = []
  table = tables.from_folder(root, 'train', log=messages.append)
  assert list(table.filenames) == sorted(_FOLDERS['bounding_box_train'])
  assert messages == [market_layout.skipped_message(3, str(train))]
  assert messages[0].startswith('skipped 3 hidden or system files')
  # The project's own cache folder (search writes one into a gallery) is
  # neither data nor a file to report.
  (train / market_layout.CACHE_FOLDER).mkdir(exist_ok=True)
  (train / market_layout.CACHE_FOLDER / 'descriptors.npz').write_bytes(b'x')
  messages = []
  tables.from_folder(root, 'train', log=messages.append)
  assert messages == [market_layout.skipped_message(3, str(train))]
  # The tools' listing skips them the same way.
  messages = []
  listed = image_files.list_images(str(train), '--gallery',
                                   log=messages.append)
  assert [os.path.basename(p) for p in listed] == sorted(
      _FOLDERS['bounding_box_train'])
  assert messages == [market_layout.skipped_message(3, str(train))]



def test_image_files_of_formats_not_read_are_listed_not_dropped(tmp_path):
  folder = tmp_path / 'crops'
  (folder / 'more').mkdir(parents=True)
  Image.new('RGB', (8, 16)).save(folder / 'a.jpg')
  for name in ('b.webp', 'more/c.TIF', 'more/d.tiff', 'e.heic'):
    (folder / name).write_bytes(b'not read')
  (folder / 'notes.txt').write_text('not an image')  # not reported
  messages = []
  listed = image_files.list_images(str(folder), '--gallery',
                                   log=messages.append)
  assert listed == [str(folder / 'a.jpg')]
  assert messages == [
      f'skipped 4 image files in {folder} of formats this tool does not read '
      '(.heic, .tif, .tiff, .webp): b.webp, e.heic, c.TIF and 1 more; '
      'convert them to JPEG or PNG to include them']
  (folder / 'a.jpg').unlink()
  with pytest.raises(ValueError, match=r'--gallery: .* holds no image files '
                     r'\(.jpg, .jpeg, .png, .bmp, .gif\); 4 files of formats '
                     r'not read \(.heic, .tif, .tiff, .webp\)$'):
    image_files.list_images(str(folder), '--gallery', log=messages.append)

def test_verdicts_are_cached_by_size_and_modification_time(tmp_path):
  root = _write(tmp_path / 'data')
  gallery = tmp_path / 'data' / 'bounding_box_test'
  paths = sorted(str(gallery / name) for name in _FOLDERS['bounding_box_test'])
  assert image_check.check_files(paths, root) == []
  assert os.path.isfile(image_check.cache_files(root)[0])
  # Warm: nothing is decoded again.
  with mock.patch.object(image_check, '_decoded_sizes',
                         side_effect=AssertionError('decoded again')):
    assert image_check.check_files(paths, root) == []
  # A file rewritten (new size and time) is decoded again and reported,
  # and its failure is cached too.
  _truncate(gallery / _FOLDERS['bounding_box_test'][2])
  failures = image_check.check_files(paths, root)
  assert [p for p, _ in failures] == [str(gallery /
                                          _FOLDERS['bounding_box_test'][2])]
  with mock.patch.object(image_check, '_decoded_sizes',
                         side_effect=AssertionError('decoded again')):
    assert image_check.check_files(paths, root) == failures


def test_read_only_folder_caches_in_the_user_cache(tmp_path, monkeypatch):
  root = _write(tmp_path / 'data')
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'user_cache'))
  # The folder's cache directory cannot be created: a file is in the way.
  (tmp_path / 'data' / image_check.CACHE_FOLDER).write_bytes(b'')
  paths = [str(tmp_path / 'data' / 'query' / n) for n in _FOLDERS['query']]
  messages = []
  assert image_check.check_files(paths, root, messages.append) == []
  fallback = image_check.cache_files(root)[1]
  assert fallback.startswith(str(tmp_path / 'user_cache'))
  assert os.path.isfile(fallback)
  assert messages == [f'image check: {tmp_path / "data" / ".sa_reid_cache"} '
                      f'is not writable; verdicts cached in {fallback}']
  with mock.patch.object(image_check, '_decoded_sizes',
                         side_effect=AssertionError('decoded again')):
    assert image_check.check_files(paths, root, messages.append) == []


def test_decode_error_reasons(tmp_path):
  good = tmp_path / 'good.jpg'
  good.write_bytes(_jpeg(0))
  not_image = tmp_path / 'page.jpg'
  not_image.write_bytes(b'<html>404</html>')
  assert image_check.decode_error(str(good)) is None
  assert image_check.decode_error(str(not_image)).startswith(
      'not a decodable image (')
  assert image_check.decode_error(str(tmp_path / 'gone.jpg')).startswith(
      'cannot read (')
  failures = image_check.check_files(
      [str(good), str(not_image), str(tmp_path / 'gone.jpg')])
  assert [os.path.basename(p) for p, _ in failures] == ['page.jpg',
                                                        'gone.jpg']
  assert failures[1][1] == 'cannot read (No such file or directory)'
