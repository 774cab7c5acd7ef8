"""Own data: list files (CSV/TSV), person folders, and unknown cameras.

The datasets are written by the tests (tiny PIL images); every fault of a
list file is checked to come back as one line naming the file and line.
"""

import json
import os
import re
import shutil

import numpy as np
from PIL import Image
import pytest

import helpers
from sa_reid_jax.datasets import image_check
from sa_reid_jax.datasets import image_records
from sa_reid_jax.datasets import market_layout
from sa_reid_jax.datasets import sources
from sa_reid_jax.evaluation import evaluate
from sa_reid_jax.evaluation import metrics
from sa_reid_jax.evaluation import pictures
from sa_reid_jax.evaluation import report
from sa_reid_jax.training import defaults
from sa_reid_jax.training import validation

UNKNOWN = image_records.UNKNOWN_CAMERA


def _image(path, seed=0, size=(16, 8)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), np.uint8)
  Image.fromarray(pixels).save(path)


def _block(**keys):
  """A config's dataset block, as `experiment_config` makes it."""
  block = defaults.experiment_config('market_layout_folder').dataset
  for key, value in keys.items():
    block[key] = str(value)
  return block


def _write_list(path, header, rows, delimiter=','):
  with open(path, 'w', encoding='utf-8') as f:
    f.write(delimiter.join(header) + '\n')
    for row in rows:
      f.write(delimiter.join(row) + '\n')
  return str(path)


# The people of the list-file tests: (path, person, split, camera).
ROWS = [
    ('imgs/alice_1.jpg', 'alice', 'train', 'cam1'),
    ('imgs/alice_2.jpg', 'alice', 'train', 'cam2'),
    ('imgs/bob_1.jpg', 'bob', 'train', 'cam1'),
    ('imgs/carol_q.jpg', 'carol', 'query', 'cam1'),
    ('imgs/carol_g.jpg', 'carol', 'gallery', 'cam2'),
    ('imgs/dave_g.jpg', 'dave', 'gallery', 'cam1'),
    ('imgs/noise.jpg', '0', 'gallery', 'cam2'),
]


@pytest.fixture
def own(tmp_path):
  """tmp_path with the images of `ROWS` written under ``data/``."""
  for i, (path, *_) in enumerate(ROWS):
    _image(tmp_path / 'data' / path, seed=i)
  return tmp_path


def _read(path, splits=('train', 'query', 'gallery'), log=None):
  lines = []
  read = sources.read_splits(_block(list=path), splits,
                             log=lines.append if log is None else log)
  return read, lines


# --- list files: what they read ---------------------------------------------


@pytest.mark.parametrize('extension, delimiter', [('.csv', ','),
                                                  ('.tsv', '\t')])
def test_csv_and_tsv_read_names_and_cameras(own, extension, delimiter):
  path = _write_list(own / 'data' / f'crops{extension}',
                     ('path', 'person_id', 'split', 'camera_id'), ROWS,
                     delimiter)
  read, lines = _read(path)
  # Names sorted: alice 1, bob 2, carol 3, dave 4; "0" stays a distractor.
  np.testing.assert_array_equal(read['train'].person_ids, [1, 1, 2])
  np.testing.assert_array_equal(read['train'].labels, [0, 0, 1])
  np.testing.assert_array_equal(read['query'].person_ids, [3])
  np.testing.assert_array_equal(read['gallery'].person_ids, [3, 4, 0])
  np.testing.assert_array_equal(read['gallery'].labels, [-1, -1, -1])
  # cam1 -> 0, cam2 -> 1, in every split.
  np.testing.assert_array_equal(read['train'].camera_ids, [0, 1, 0])
  np.testing.assert_array_equal(read['gallery'].camera_ids, [1, 0, 1])
  assert list(read['query'].filenames) == [os.path.join('imgs',
                                                        'carol_q.jpg')]
  assert read['query'].images[0] == str(own / 'data' / 'imgs' /
                                        'carol_q.jpg')
  assert lines[0] == (f'{path}: 4 person names, mapped to ids 1..4 in '
                      "sorted order (line 2: 'alice' is not an integer); "
                      'cameras 2 distinct')


def test_ids_do_not_depend_on_the_splits_read(own):
  path = _write_list(own / 'data' / 'crops.csv',
                     ('path', 'person_id', 'split'), [r[:3] for r in ROWS])
  query, gallery = evaluate.load_splits(_block(list=path))
  np.testing.assert_array_equal(query.person_ids, [3])
  np.testing.assert_array_equal(gallery.person_ids, [3, 4, 0])
  # No camera column: every camera unknown.
  assert (query.camera_ids == UNKNOWN).all()
  assert (gallery.camera_ids == UNKNOWN).all()


def test_integer_ids_keep_market_meanings_and_paths_are_relative(own):
  # The list in a subfolder; paths relative to it, "../" and absolute.
  os.makedirs(own / 'data' / 'lists')
  rows = [('../imgs/alice_1.jpg', '12', 'train'),
          ('../imgs/alice_2.jpg', '012', 'train'),
          (str(own / 'data' / 'imgs' / 'bob_1.jpg'), '3', 'train'),
          ('../imgs/carol_q.jpg', '5', 'query'),
          ('../imgs/carol_g.jpg', '5', 'gallery'),
          ('../imgs/dave_g.jpg', '-1', 'gallery')]
  path = _write_list(own / 'data' / 'lists' / 'crops.csv',
                     ('split', 'person_id', 'path', 'notes'),
                     [(s, p, f, 'x') for f, p, s in rows])
  read, lines = _read(path)
  np.testing.assert_array_equal(read['train'].person_ids, [12, 12, 3])
  np.testing.assert_array_equal(read['train'].labels, [1, 1, 0])
  np.testing.assert_array_equal(read['gallery'].person_ids, [5, -1])
  assert list(read['train'].images) == [
      str(own / 'data' / 'imgs' / name)
      for name in ('alice_1.jpg', 'alice_2.jpg', 'bob_1.jpg')]
  assert read['train'].filenames[0] == os.path.join('..', 'imgs',
                                                    'alice_1.jpg')
  assert lines[0] == (f'{path}: 4 person ids, read as integers; cameras '
                      'unknown')


def test_excel_files_count_their_lines_as_an_editor_does(own):
  # A byte order mark, CRLF line ends, a blank line and a quoted comma:
  # the bad split is on the file's line 5.
  text = ('\ufeffpath,person_id,split,notes\r\n'
          'imgs/alice_1.jpg,alice,train,"seen, twice"\r\n'
          '\r\n'
          'imgs/bob_1.jpg,bob,train,\r\n'
          'imgs/carol_q.jpg,carol,val,\r\n')
  path = own / 'data' / 'crops.csv'
  path.write_bytes(text.encode('utf-8'))
  with pytest.raises(market_layout.LayoutError) as error:
    _read(str(path), ('train',))  # no other split's absence to name
  assert str(error.value) == (f"config.dataset.list: {path}:5: unknown split "
                              "'val'; expected one of train, query, gallery")


def test_another_extension_is_sniffed_and_said(own):
  path = _write_list(own / 'data' / 'crops.txt',
                     ('path', 'person_id', 'split'), [r[:3] for r in ROWS],
                     '\t')
  _, lines = _read(path)
  assert lines[0] == (f'{path}: no .csv or .tsv extension; read as '
                      'tab-separated from its header')


# --- list files: every fault, one line naming the file and line --------------


def _fault(own, header, rows, name='crops.csv'):
  """The message of reading a list file of `rows` (as a config would)."""
  path = _write_list(own / 'data' / name, header, rows)
  with pytest.raises(market_layout.LayoutError) as error:
    _read(path)
  return path, str(error.value)


HEADER = ('path', 'person_id', 'split', 'camera_id')


@pytest.mark.parametrize('row, expected', [
    (('imgs/bob_1.jpg', 'bob', 'val', 'cam1'),
     "unknown split 'val'; expected one of train, query, gallery"),
    (('imgs/bob_1.jpg', '-2', 'train', 'cam1'),
     "bad person id '-2' (an integer >= -1: -1 junk, 0 distractor, or a "
     'name)'),
    (('imgs/bob_1.jpg', '', 'train', 'cam1'), 'empty person id'),
    (('imgs/bob_1.jpg', 'bob', 'train', '-1'),
     "bad camera id '-1' (a name or an integer >= 0; leave cameras out "
     'where they are unknown)'),
    (('imgs/bob_1.jpg', 'bob', 'train', ''),
     'no camera_id: the camera column must be filled on every row, or left '
     'out (cameras unknown)'),
    (('', 'bob', 'train', 'cam1'), 'empty path'),
    (('imgs/bob_1.jpg', 'bob', 'train'),
     '3 comma-separated fields where the header has 4'),
    (('imgs/bob_1.jpg', '-1', 'train', 'cam1'),
     'person id -1 (junk) in the train split; it may only appear in the '
     'gallery'),
])
def test_a_bad_row_is_one_line_naming_file_and_line(own, row, expected):
  rows = [r for r in ROWS if r[0] != 'imgs/bob_1.jpg']
  rows.insert(2, row)  # line 4: header, two rows, this one
  path, message = _fault(own, HEADER, rows)
  assert message == f'config.dataset.list: {path}:4: {expected}'


def test_a_missing_column_names_the_header_line(own):
  path, message = _fault(own, ('path', 'person', 'split'),
                         [r[:3] for r in ROWS])
  assert message == (
      f"config.dataset.list: {path}:1: missing column 'person_id'; the "
      "header has 'path', 'person', 'split' and needs path, person_id, "
      'split and optionally camera_id')


def test_a_path_listed_twice_names_both_lines(own):
  rows = [r[:3] for r in ROWS] + [('./imgs//alice_1.jpg', 'alice', 'train')]
  path, message = _fault(own, HEADER[:3], rows)
  assert message == (f'config.dataset.list: {path}:9: ./imgs//alice_1.jpg '
                     'listed twice (first on line 2)')


def test_every_missing_file_is_listed_in_one_error(own):
  os.remove(own / 'data' / 'imgs' / 'bob_1.jpg')
  os.remove(own / 'data' / 'imgs' / 'dave_g.jpg')
  path, message = _fault(own, HEADER, ROWS)
  images = own / 'data' / 'imgs'
  assert message.splitlines() == [
      f'config.dataset.list: {path}: 2 faults:',
      f'  {path}:4: missing file {images / "bob_1.jpg"}',
      f'  {path}:7: missing file {images / "dave_g.jpg"}']


def test_every_undecodable_image_is_listed_with_its_line(own):
  (own / 'data' / 'imgs' / 'carol_g.jpg').write_bytes(b'not an image')
  path, message = _fault(own, HEADER, ROWS)
  assert re.fullmatch(
      re.escape(f'config.dataset.list: {path}:6: unreadable image '
                f'{own / "data" / "imgs" / "carol_g.jpg"}: ') +
      'not a decodable image .*', message), message


def test_train_py_on_an_undecodable_list_image_prints_only_its_lines(own):
  # A real process (TensorFlow's C++ log writes to file descriptor 2, which
  # only a real process shows): a file named .jpg that is no image makes
  # TensorFlow log a WARNING line as it fails to decode, which the image
  # check keeps off the terminal; the error line says it all.
  (own / 'data' / 'imgs' / 'carol_g.jpg').write_text('meeting notes')
  path = _write_list(own / 'data' / 'crops.csv', HEADER[:3],
                     [r[:3] for r in ROWS])
  result = helpers.run_as_user(
      'train.py', '--config=configs/demo_synthetic.py',
      f'--workdir={own / "run"}', f'--config.dataset.list={path}')
  assert result.returncode == 1, result.stderr
  assert helpers.lines_besides_slow_compile_alarms(result.stderr) == [
      f'train.py: error: config.dataset.list: {path}:6: unreadable image '
      f'{own / "data" / "imgs" / "carol_g.jpg"}: not a decodable image '
      '(Unknown image file format. One of JPEG, JPEG XL, PNG, GIF, BMP, '
      'WebP required.)'], result.stderr
  assert result.stdout.splitlines() == [
      f"{path}: 4 person names, mapped to ids 1..4 in sorted order (line 2: "
      "'alice' is not an integer); cameras unknown"], result.stdout


def test_a_split_without_rows_is_named(own):
  rows = [r[:3] for r in ROWS if r[2] != 'query']
  path, message = _fault(own, HEADER[:3], rows)
  assert message == (f"config.dataset.list: {path}: no 'query' rows, but "
                     'its gallery split is there: evaluation needs both (or '
                     'neither, for a dataset that only trains)')
  # Train rows only, read for evaluation: both splits named.
  rows = [r[:3] for r in ROWS if r[2] == 'train']
  path, message = _fault(own, HEADER[:3], rows)
  assert message.splitlines() == [
      f'config.dataset.list: {path}: 2 faults:',
      f"  {path}: no 'query' rows", f"  {path}: no 'gallery' rows"]


def test_row_image_and_split_faults_come_in_one_error(own):
  # Line 3 has an unknown split, line 6 a missing file, line 5 (carol's
  # query, a valid row) an undecodable image, and no row is a gallery
  # row: every fault in one error, whether training checks the splits
  # first (has_evaluation_splits) or the splits are read.
  images = own / 'data' / 'imgs'
  (images / 'carol_q.jpg').write_bytes(b'not an image')
  rows = [('imgs/alice_1.jpg', 'alice', 'train'),
          ('imgs/alice_2.jpg', 'alice', 'tran'),
          ('imgs/bob_1.jpg', 'bob', 'train'),
          ('imgs/carol_q.jpg', 'carol', 'query'),
          ('imgs/gone.jpg', 'dave', 'train')]
  path = _write_list(own / 'data' / 'crops.csv', HEADER[:3], rows)
  expected = [
      f'config.dataset.list: {path}: 4 faults:',
      f"  {path}: no 'gallery' rows, but its query split is there: "
      'evaluation needs both (or neither, for a dataset that only trains)',
      f"  {path}:3: unknown split 'tran'; expected one of train, query, "
      'gallery',
      f'  {path}:6: missing file {images / "gone.jpg"}',
      f'  {path}:5: unreadable image {images / "carol_q.jpg"}: not a '
      'decodable image (']
  with pytest.raises(market_layout.LayoutError) as error:
    sources.has_evaluation_splits(_block(list=path), log=lambda _: None)
  with pytest.raises(market_layout.LayoutError) as read_error:
    _read(path)
  for message in (str(error.value), str(read_error.value)):
    lines = message.splitlines()
    assert lines[:-1] == expected[:-1], message
    assert lines[-1].startswith(expected[-1]), message


def test_block_faults_are_named_before_any_image_is_read(own, tmp_path):
  path = _write_list(own / 'data' / 'crops.csv', ('path', 'split'), [])
  with pytest.raises(ValueError, match=re.escape(
      f"config.dataset.list: {path}:1: missing column 'person_id'")):
    validation.check_evaluation_config(_config(list=path))
  with pytest.raises(ValueError, match=re.escape(
      f'config.dataset.list: {tmp_path / "none.csv"}: missing')):
    validation.check_evaluation_config(_config(list=tmp_path / 'none.csv'))
  with pytest.raises(ValueError, match=re.escape(
      'config.dataset.list and config.dataset.folder are both set')):
    validation.check_evaluation_config(_config(list=path, folder=tmp_path))
  with pytest.raises(ValueError, match=re.escape(
      "config.dataset.layout must be one of ('market1501', "
      "'person_folders'), got 'people'")):
    validation.check_evaluation_config(_config(folder=tmp_path,
                                               layout='people'))


def _config(**dataset):
  config = defaults.experiment_config('market_layout_folder')
  config.init_from = defaults.SCRATCH
  for key, value in dataset.items():
    config.dataset[key] = str(value)
  return config


# --- person folders -----------------------------------------------------------


def _person_folders(root, splits, cameras=False):
  """Writes {split: {person: count}} as person folders (each image in its
  own camera folder ``c<i>`` when `cameras`)."""
  for split, people in splits.items():
    for person, count in people.items():
      for i in range(count):
        parts = [f'c{i % 2 + 1}'] if cameras else []
        _image(os.path.join(root, split, person, *parts, f'{i}.jpg'), seed=i)
  return str(root)


def _folders(root, splits=('train', 'query', 'gallery')):
  return sources.read_splits(_block(folder=root, layout='person_folders'),
                             splits, log=lambda _: None)


def test_person_folders_for_training_only(tmp_path):
  root = _person_folders(tmp_path / 'd', {'train': {'zoe': 2, 'amy': 3}})
  (tmp_path / 'd' / 'train' / '.DS_Store').write_bytes(b'\x00')
  (tmp_path / 'd' / 'train' / 'amy' / 'Thumbs.db').write_bytes(b'\x00')
  lines = []
  train = sources.read_splits(_block(folder=root, layout='person_folders'),
                              ('train',), log=lines.append)['train']
  np.testing.assert_array_equal(train.person_ids, [1, 1, 1, 2, 2])
  np.testing.assert_array_equal(train.labels, [0, 0, 0, 1, 1])
  assert (train.camera_ids == UNKNOWN).all()
  assert train.filenames[3] == os.path.join('zoe', '0.jpg')
  assert lines[:2] == [
      market_layout.skipped_message(2, root),
      f'{root}: 2 person folders (names mapped to ids 1..2), cameras '
      'unknown']
  # Training evaluates: without query/ and gallery/ the block names both.
  with pytest.raises(market_layout.LayoutError) as error:
    _folders(root)
  lines = str(error.value).splitlines()
  assert lines[0] == f'config.dataset.folder: {root}: 2 faults:'
  for line, split in zip(lines[1:], ('query', 'gallery')):
    assert line.startswith(f'  {os.path.join(root, split)}: missing; a '
                           'person-folders dataset holds train/'), line


def test_person_folders_with_evaluation_splits_and_cameras(tmp_path):
  root = _person_folders(tmp_path / 'd', {
      'train': {'1': 2, '2': 2}, 'query': {'7': 1, '8': 1},
      'gallery': {'7': 2, '8': 2, '0': 1, '-1': 1}}, cameras=True)
  read = _folders(root)
  np.testing.assert_array_equal(read['gallery'].person_ids,
                                [-1, 0, 7, 7, 8, 8])
  np.testing.assert_array_equal(read['gallery'].camera_ids,
                                [0, 0, 0, 1, 0, 1])
  assert read['gallery'].filenames[2] == os.path.join('7', 'c1', '0.jpg')
  # Known cameras: the query (c1) matches its person's c2 image only.
  valid = metrics.valid_queries(read['query'].person_ids,
                                read['gallery'].person_ids,
                                read['query'].camera_ids,
                                read['gallery'].camera_ids)
  assert valid.all()


@pytest.mark.parametrize('make, expected', [
    (lambda d: os.makedirs(d / 'train' / 'bob'), '{d}/train/bob: no images '
     '(.jpg, .jpeg, .png)'),
    (lambda d: _image(str(d / 'train' / 'loose.jpg')),
     '{d}/train: 1 image outside a person folder (e.g. loose.jpg); a '
     'person-folders dataset holds'),
    (lambda d: _image(str(d / 'train' / 'bob' / 'c1' / '0.jpg')),
     '{d}/train/7: holds images directly, but other person folders hold '
     'camera folders (e.g. {d}/train/bob)'),
    (lambda d: (shutil.rmtree(d / 'train' / 'amy'),
                _image(str(d / 'train' / '007' / '0.jpg'))),
     '{d}/train: person folders 007 and 7 are both person id 7; merge them'),
    (lambda d: _image(str(d / 'train' / '-3' / '0.jpg')),
     "{d}/train/-3: bad person id '-3'"),
])
def test_person_folder_faults_name_the_folder(tmp_path, make, expected):
  d = tmp_path / 'd'
  _person_folders(d, {'train': {'amy': 1, '7': 1}})
  make(d)
  with pytest.raises(market_layout.LayoutError) as error:
    _folders(str(d), ('train',))
  message = str(error.value)
  # One fault: the first line; several (a mix names each folder holding
  # images directly): after a count line, one per line.
  lines = [message.splitlines()[0].removeprefix('config.dataset.folder: ')]
  if lines[0] != f'{d}: {len(message.splitlines()) - 1} faults:':
    assert len(message.splitlines()) == 1, message
  else:
    lines = [line.strip() for line in message.splitlines()[1:]]
  assert message.startswith('config.dataset.folder: '), message
  assert any(line.startswith(expected.format(d=d)) for line in lines), message


def test_every_person_folder_fault_comes_in_one_error(tmp_path):
  d = tmp_path / 'd'
  # Integer names throughout, so that 7 and 007 are one person id.
  _person_folders(d, {'train': {'5': 1, '7': 1, '007': 1},
                      'query': {'7': 1}, 'gallery': {'7': 1}})
  _image(str(d / 'train' / 'loose.jpg'))
  _image(str(d / 'train' / 'stray.png'))
  os.makedirs(d / 'gallery' / '9')
  with pytest.raises(market_layout.LayoutError) as error:
    _folders(str(d))
  help_text = ('a person-folders dataset holds train/, query/ and gallery/ '
               '(query/ and gallery/ for evaluation), each with one folder '
               'per person: SPLIT/PERSON/IMAGE or SPLIT/PERSON/CAMERA/IMAGE')
  assert str(error.value).splitlines() == [
      f'config.dataset.folder: {d}: 3 faults:',
      f'  {d / "train"}: 2 images outside a person folder (e.g. loose.jpg); '
      + help_text,
      f'  {d / "train"}: person folders 007 and 7 are both person id 7; '
      'merge them',
      f'  {d / "gallery" / "9"}: no images (.jpg, .jpeg, .png)']


def test_person_folders_list_every_undecodable_image(tmp_path):
  root = _person_folders(tmp_path / 'd', {'train': {'amy': 2, 'bob': 1}})
  for name in ('amy/1.jpg', 'bob/0.jpg'):
    (tmp_path / 'd' / 'train' / name).write_bytes(b'broken')
  with pytest.raises(image_check.UnreadableImagesError) as error:
    _folders(root, ('train',))
  assert [os.path.relpath(p, root) for p, _ in error.value.failures] == [
      os.path.join('train', 'amy', '1.jpg'),
      os.path.join('train', 'bob', '0.jpg')]


# --- unknown cameras in the evaluation ----------------------------------------

# Two queries, four gallery images. Query 0 (person 1): its true matches
# are gallery 0 (0.5) and 2 (0.9), after gallery 1 (0.1) and 3 (0.3).
# Query 1 (person 2): its match, gallery 1 (0.4), comes second.
DISTANCES = np.array([[0.5, 0.1, 0.9, 0.3],
                      [0.2, 0.4, 0.6, 0.8]], np.float64)
Q_PIDS, G_PIDS = np.array([1, 2]), np.array([1, 2, 1, 3])


def test_unknown_cameras_remove_nothing_hand_computed():
  unknown = metrics.evaluate_rank(DISTANCES, Q_PIDS, G_PIDS, [UNKNOWN] * 2,
                                  [UNKNOWN] * 4, max_rank=4)
  # Query 0: matches at positions 3 and 4: AP = (1/3 + 2/4) / 2 = 5/12,
  # first match 3. Query 1: match at position 2: AP = 1/2.
  np.testing.assert_array_equal(unknown.first_match_rank, [3, 2])
  assert unknown.cmc[0] == 0.0 and unknown.cmc[2] == 1.0
  # Float64 sums of three terms: exact to a few ulps.
  assert unknown.mAP == pytest.approx((5 / 12 + 1 / 2) / 2, rel=1e-12)
  # The same data with cameras: query 0 (camera 0) loses gallery 0
  # (person 1, camera 0): its one match left, gallery 2, comes third; query
  # 1 (camera 1) loses its only match (gallery 1, camera 1) and is skipped.
  known = metrics.evaluate_rank(DISTANCES, Q_PIDS, G_PIDS, [0, 1],
                                [0, 1, 1, 0], max_rank=4)
  assert known.num_valid_queries == 1
  assert known.mAP == pytest.approx(1 / 3, rel=1e-12)
  # An unknown camera is never the query's camera, whichever side.
  np.testing.assert_array_equal(
      metrics.valid_queries([2], [2], [UNKNOWN], [UNKNOWN]), [True])
  np.testing.assert_array_equal(
      metrics.valid_queries([2, 2], [2], [0, UNKNOWN], [0]), [False, True])


def test_report_per_camera_skips_unknown_cameras():
  result = metrics.evaluate_rank(DISTANCES, Q_PIDS, G_PIDS, [UNKNOWN, 0],
                                 [UNKNOWN] * 4, max_rank=4)
  rows = report.per_camera(result, np.array([UNKNOWN, 0]))
  assert [(r['camera'], r['num_queries'], r['rank1']) for r in rows] == [
      (0, 1, 0.0)]


def test_evaluation_splits_without_cameras_say_their_rule(own):
  path = _write_list(own / 'data' / 'crops.csv', HEADER[:3],
                     [r[:3] for r in ROWS])
  block = _block(list=path)
  query, gallery = evaluate.load_splits(block)
  lines = []
  evaluate.check_evaluation_splits(query, gallery, block, log=lines.append)
  assert lines == ['cameras unknown: no same-camera removal (every gallery '
                   "image of a query's person is a true match; junk still "
                   'removed)']
  assert not sources.cameras_known(query, gallery)
  # A query person absent from the gallery: nothing to score.
  rows = [r[:3] for r in ROWS if r[1] != 'carol'] + [
      ('imgs/carol_q.jpg', 'erin', 'query')]
  path = _write_list(own / 'data' / 'crops.csv', HEADER[:3], rows)
  query, gallery = evaluate.load_splits(block)
  with pytest.raises(ValueError, match=re.escape(
      f'config.dataset.list: {path}: no query has a gallery image of its '
      'person (cameras unknown, so none is removed)')):
    evaluate.check_evaluation_splits(query, gallery, block, log=print)


# --- the documented commands, end to end --------------------------------------


def _run_documented(section, root, cli):
  """Runs a section's train.py then eval.py lines from `root` (holding the
  repository's configs/ and the data); returns eval.py's result."""
  os.symlink(os.path.join(helpers.REPO, 'configs'), root / 'configs')
  (train, train_args), (evaluation, eval_args) = [
      (argv[0], argv[1:])
      for argv in helpers.documented_dataset_commands(section)]
  assert (train, evaluation) == ('train.py', 'eval.py')
  result = cli('train.py', *train_args, *helpers.documented_stand_ins(),
               cwd=str(root))
  assert result.returncode == 0, result.stderr[-3000:]
  result = cli('eval.py', *eval_args, cwd=str(root))
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _metrics_of(root, eval_args):
  checkpoint = next(a.split('=', 1)[1] for a in eval_args
                    if a.startswith('--checkpoint='))
  with open(root / checkpoint / 'metrics.json') as f:
    return json.load(f)


def _own_crops(root):
  """The people of the documented commands: 4 train, 3 test identities,
  3 images each (a query and two gallery images per test identity)."""
  rows = []
  for i, person in enumerate(('ann', 'ben', 'cas', 'dia', 'eve', 'fay',
                              'gus')):
    for n in range(3):
      split = ('train' if i < 4 else ('query' if n == 0 else 'gallery'))
      rows.append((f'{split}/{person}/{n}.jpg', person, split))
      _image(root / 'my_crops' / split / person / f'{n}.jpg', seed=7 * i + n)
  return rows


@pytest.mark.full
def test_documented_list_file_commands_train_and_evaluate(tmp_path, cli):
  rows = _own_crops(tmp_path)
  _write_list(tmp_path / 'my_crops' / 'crops.csv',
              ('path', 'person_id', 'split'), rows)
  result = _run_documented('list file', tmp_path, cli)
  assert 'cameras unknown: no same-camera removal' in result.stdout
  eval_args = helpers.documented_dataset_commands('list file')[1]
  settings = _metrics_of(tmp_path, eval_args)['settings']
  assert settings['same_camera_removal'] is False
  assert settings['num_query'] == 3 and settings['num_gallery'] == 6


@pytest.mark.full
def test_documented_person_folder_commands_train_and_evaluate(tmp_path, cli):
  _own_crops(tmp_path)
  result = _run_documented('person folders', tmp_path, cli)
  assert 'cameras unknown: no same-camera removal' in result.stdout
  metrics_json = _metrics_of(
      tmp_path, helpers.documented_dataset_commands('person folders')[1])
  assert metrics_json['settings']['same_camera_removal'] is False
  # Every query has its two gallery images: all 3 queries are scored.
  assert metrics_json['plain']['num_valid_queries'] == 3


# --- the tools ---------------------------------------------------------------


def test_visualize_ranks_reads_a_list_file(own, saved_sanet, cli, tmp_path):
  path = _write_list(own / 'data' / 'crops.csv', HEADER, ROWS)
  output = tmp_path / 'ranks.png'
  result = cli('sa_reid_jax.tools.visualize', 'ranks',
               f'--checkpoint={saved_sanet[0]}', f'--dataset_list={path}',
               '--topk=2', f'--output={output}')
  assert result.returncode == 0, result.stderr[-2000:]
  # One query: itself and its top 2, bordered tiles of the model's input
  # width, with gaps between and around them.
  cell = helpers.SAVED_SANET_IMAGE_SIZE[1] + 2 * pictures.BORDER
  assert Image.open(output).size[0] == 3 * (cell + pictures.GAP) + (
      pictures.GAP)
  os.remove(own / 'data' / 'imgs' / 'dave_g.jpg')
  result = cli('sa_reid_jax.tools.visualize', 'ranks',
               f'--checkpoint={saved_sanet[0]}', f'--dataset_list={path}',
               f'--output={output}')
  assert result.returncode == 1
  assert result.stderr.strip() == (
      f'visualize ranks: error: --dataset_list: {path}:7: missing file '
      f'{own / "data" / "imgs" / "dave_g.jpg"}')
