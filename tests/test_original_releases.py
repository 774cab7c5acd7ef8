"""Tests of building MSMT17 and CUHK03 from their original releases."""

import io
import os

import h5py
import numpy as np
from PIL import Image
import pytest
import scipy.io

from sa_reid_jax.datasets import builders
from sa_reid_jax.datasets import market_layout
from sa_reid_jax.datasets import tables


def _pixels(seed: int, shape=(16, 8, 3)) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ----------------------------------------------------------------- MSMT17

# (list, person id, camera, image number): train ids 0..2, test ids 0..1
# (numbered separately, 0 a real person); val repeats train identities.
_MSMT17 = {
    'list_train.txt': [(0, 1, 1), (0, 3, 2), (2, 5, 3)],
    'list_val.txt': [(1, 2, 4), (2, 15, 5)],
    'list_query.txt': [(0, 4, 6), (1, 7, 7)],
    'list_gallery.txt': [(0, 9, 8), (1, 7, 9), (1, 12, 10)],
}


def _write_msmt17(root: str, release: str = 'MSMT17_V1') -> dict:
  """An MSMT17 release in its shipped form; returns {list: [base names]}."""
  names = {}
  for seed, (list_name, entries) in enumerate(_MSMT17.items()):
    role = 'test' if list_name in ('list_query.txt', 'list_gallery.txt') else (
        'train')
    if release == 'MSMT17_V2':  # its folder names, as torchreid reads them
      role = f'mask_{role}_v2'
    lines, names[list_name] = [], []
    for i, (person, camera, number) in enumerate(entries):
      relative = (f'{person:04d}/{person:04d}_{number:03d}_{camera:02d}_'
                  f'0303morning_{number:04d}_{i}.jpg')
      path = os.path.join(root, release, role, relative)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      Image.fromarray(_pixels(10 * seed + i)).save(path)
      lines.append(f'{relative} {person}')
      names[list_name].append(os.path.basename(relative))
    with open(os.path.join(root, release, list_name), 'w') as file:
      file.write('\n'.join(lines) + '\n')
  return names


@pytest.mark.parametrize('release', ['MSMT17_V1', 'MSMT17_V2'])
def test_msmt17_builds_from_the_original_release(tmp_path, release):
  manual = str(tmp_path / 'manual')
  names = _write_msmt17(manual, release)
  builder = builders.prepare('msmt17', manual, str(tmp_path / 'data'))
  train = tables.from_tfds(builder, 'train')
  # train = the train and val lists; labels in sorted person-id order.
  assert sorted(train.filenames) == sorted(
      names['list_train.txt'] + names['list_val.txt'])
  by_name = dict(zip(train.filenames, zip(train.person_ids, train.labels,
                                          train.camera_ids)))
  expected = {}
  for list_name in ('list_train.txt', 'list_val.txt'):
    for name, (person, camera, _) in zip(names[list_name], _MSMT17[list_name]):
      expected[name] = (person, person, camera - 1)  # ids 0..2 are labels
  assert by_name == expected
  for split, list_name in (('query', 'list_query.txt'),
                           ('gallery', 'list_gallery.txt')):
    table = tables.from_tfds(builder, split)
    order = np.argsort(names[list_name])
    entries = [_MSMT17[list_name][i] for i in order]
    assert list(table.filenames) == sorted(names[list_name])
    assert list(table.person_ids) == [person for person, _, _ in entries]
    assert list(table.camera_ids) == [camera - 1 for _, camera, _ in entries]
    assert (table.labels == builders.NO_LABEL).all()


def test_msmt17_list_line_naming_a_missing_image_is_named(tmp_path):
  manual = str(tmp_path / 'manual')
  _write_msmt17(manual)
  with open(os.path.join(manual, 'MSMT17_V1', 'list_query.txt'), 'a') as f:
    f.write('0005/0005_001_03_0303morning_0001_0.jpg 5\n')
  with pytest.raises(market_layout.LayoutError,
                     match=r'list_query.txt:3: .*0005_001_03.* is missing'):
    builders.prepare('msmt17', manual, str(tmp_path / 'data'))


# ----------------------------------------------------------------- CUHK03

# Persons per camera pair; each person has images in some of the 10 columns
# (0-4 first camera, 5-9 second); the other cells are empty.
_CUHK03_COLUMNS = [
    [(0, 1, 5, 6), (0, 5, 7), (1, 2, 6)],   # pair 1: persons 1-3
    [(0, 1, 5), (2, 3, 8, 9), (0, 6)],      # pair 2: persons 4-6
]
_TRAIN_PERSONS = (1, 3, 5)  # labels; the others are test identities


def _cuhk03_images(boxes: str):
  """[(pair, person, column, label, pixels)] in MATLAB's filelist order."""
  images, label = [], 0
  for pair, persons in enumerate(_CUHK03_COLUMNS):
    for person, columns in enumerate(persons):
      label += 1
      for column in columns:
        seed = (boxes == 'detected') * 1000 + 100 * pair + 10 * person + column
        shape = (20 + column, 10, 3)  # sizes vary, as in the release
        images.append((pair, person, column, label, _pixels(seed, shape)))
  return images


def _write_cuhk03_release(root: str):
  """cuhk-03.mat (MATLAB v7.3 layout, via h5py) and both new-protocol
  configs (MATLAB v5, via scipy.io); returns the protocol per box type."""
  os.makedirs(os.path.join(root, 'cuhk03_release'))
  protocols = {}
  with h5py.File(os.path.join(root, 'cuhk03_release', 'cuhk-03.mat'),
                 'w') as mat:
    refs = mat.create_group('#refs#')
    for boxes in ('labeled', 'detected'):
      cells = {(p, q, c): pixels
               for p, q, c, _, pixels in _cuhk03_images(boxes)}
      pair_refs = []
      for pair, persons in enumerate(_CUHK03_COLUMNS):
        # MATLAB stores a (persons x 10) cell transposed: (10, persons).
        cell = np.empty((10, len(persons)), dtype=h5py.ref_dtype)
        for person in range(len(persons)):
          for column in range(10):
            name = f'{boxes}_{pair}_{person}_{column}'
            if (pair, person, column) in cells:
              # An (H, W, 3) image is stored as (3, W, H).
              data = refs.create_dataset(
                  name, data=cells[pair, person, column].T)
            else:  # MATLAB's empty matrix
              data = refs.create_dataset(name, data=np.zeros(2, np.uint64))
              data.attrs['MATLAB_empty'] = np.uint8(1)
            cell[column, person] = data.ref
        pair_refs.append(refs.create_dataset(f'{boxes}_{pair}',
                                             data=cell).ref)
      mat.create_dataset(boxes, data=np.array([pair_refs],
                                              dtype=h5py.ref_dtype))
      images = _cuhk03_images(boxes)
      filelist = np.empty((len(images), 1), dtype=object)
      labels, cameras, train, query, gallery = [], [], [], [], []
      queried = set()
      for index, (pair, person, column, label, _) in enumerate(images):
        camera = 1 if column < 5 else 2
        filelist[index, 0] = (f'{pair + 1}_{person + 1:03d}_{camera}_'
                              f'{column + 1:02d}.png')
        labels.append(label)
        cameras.append(camera)
        if label in _TRAIN_PERSONS:
          train.append(index + 1)
        elif (label, camera) not in queried:  # one query per camera
          queried.add((label, camera))
          query.append(index + 1)
        else:
          gallery.append(index + 1)
      column_vector = lambda v: np.array(v, np.float64).reshape(-1, 1)
      protocol = {'filelist': filelist, 'labels': column_vector(labels),
                  'camId': column_vector(cameras),
                  'train_idx': column_vector(train),
                  'query_idx': column_vector(query),
                  'gallery_idx': column_vector(gallery)}
      scipy.io.savemat(os.path.join(
          root, f'cuhk03_new_protocol_config_{boxes}.mat'), protocol)
      protocols[boxes] = (images, labels, cameras, train, query, gallery)
  return protocols


def _write_cuhk03_np(root: str, protocols):
  """The Market-layout copy, written independently from the same truth."""
  for boxes, (images, labels, cameras, *splits) in protocols.items():
    for folder, indices in zip(('bounding_box_train', 'query',
                                'bounding_box_test'), splits):
      os.makedirs(os.path.join(root, 'cuhk03-np', boxes, folder))
      for index in indices:
        name = f'{labels[index - 1]:04d}_c{cameras[index - 1]}_{index}.png'
        Image.fromarray(images[index - 1][4]).save(
            os.path.join(root, 'cuhk03-np', boxes, folder, name))


def _decoded(table):
  return [np.asarray(Image.open(io.BytesIO(data))) for data in table.images]


@pytest.mark.parametrize('boxes', ['labeled', 'detected'])
def test_cuhk03_from_the_mat_files_equals_the_market_layout_copy(tmp_path,
                                                                 boxes):
  release, copy = str(tmp_path / 'release'), str(tmp_path / 'copy')
  protocols = _write_cuhk03_release(release)
  _write_cuhk03_np(copy, protocols)
  name = f'cuhk03_np/{boxes}'
  from_mat = builders.prepare(name, release, str(tmp_path / 'data_mat'))
  from_copy = builders.prepare(name, copy, str(tmp_path / 'data_copy'))
  images, labels, _, train, query, gallery = protocols[boxes]
  for split, indices in (('train', train), ('query', query),
                         ('gallery', gallery)):
    a = tables.from_tfds(from_mat, split)
    b = tables.from_tfds(from_copy, split)
    for field in ('person_ids', 'labels', 'camera_ids', 'filenames'):
      np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    for x, y in zip(_decoded(a), _decoded(b)):
      np.testing.assert_array_equal(x, y)
    # Against the protocol itself: the ids, cameras and pixels of its rows.
    expected = sorted(
        (f'{labels[i - 1]:04d}_c{1 if images[i - 1][2] < 5 else 2}_{i}.png',
         i) for i in indices)
    assert list(a.filenames) == [filename for filename, _ in expected]
    assert list(a.person_ids) == [labels[i - 1] for _, i in expected]
    for pixels, (_, i) in zip(_decoded(a), expected):
      np.testing.assert_array_equal(pixels, images[i - 1][4])
  train_table = tables.from_tfds(from_mat, 'train')
  # Train persons 1, 3, 5 -> labels 0, 1, 2; two cameras seen.
  assert sorted(set(zip(train_table.person_ids, train_table.labels))) == [
      (1, 0), (3, 1), (5, 2)]
  assert set(train_table.camera_ids) == {0, 1}


def test_cuhk03_config_with_bad_indices_is_named(tmp_path):
  release = str(tmp_path / 'release')
  _write_cuhk03_release(release)
  config = os.path.join(release, 'cuhk03_new_protocol_config_labeled.mat')
  fields = scipy.io.loadmat(config)
  fields['query_idx'][0] = 0  # as if 0-based: not an index into filelist
  scipy.io.savemat(config, {k: v for k, v in fields.items()
                            if not k.startswith('__')})
  with pytest.raises(market_layout.LayoutError,
                     match='query_idx must hold 1-based indices'):
    builders.prepare('cuhk03_np/labeled', release, str(tmp_path / 'data'))


# ------------------------------------------------------ prepare / from_tfds

@pytest.mark.parametrize('name, expected', [
    ('msmt17', ('MSMT17_V2 nor MSMT17_V1 with list_train.txt',
                'MSMT17/ (Market layout)')),
    ('cuhk03_np/detected', ('cuhk03-np/detected/ (Market layout)',
                            'cuhk03_release/cuhk-03.mat with '
                            'cuhk03_new_protocol_config_detected.mat')),
])
def test_error_for_neither_layout_names_both(tmp_path, name, expected):
  (tmp_path / 'manual' / 'something_else').mkdir(parents=True)
  with pytest.raises(market_layout.LayoutError) as error:
    builders.prepare(name, str(tmp_path / 'manual'), str(tmp_path / 'data'))
  message = str(error.value).splitlines()[0]
  for part in expected:
    assert part in message


def test_prepare_with_a_missing_download_folder_is_one_line(tmp_path):
  missing = tmp_path / 'nowhere'
  with pytest.raises(market_layout.LayoutError) as error:
    builders.prepare('market1501', str(missing), str(tmp_path / 'data'))
  assert str(error.value) == (
      f'{missing}: the download folder (manual_dir) does not exist')


def test_prepare_with_an_empty_download_folder_says_what_goes_in(tmp_path):
  (tmp_path / 'manual').mkdir()
  with pytest.raises(market_layout.LayoutError) as error:
    builders.prepare('msmt17', str(tmp_path / 'manual'),
                     str(tmp_path / 'data'))
  lines = str(error.value).splitlines()
  assert lines[0] == (f'{tmp_path / "manual"}: the download folder '
                      '(manual_dir) is empty.')
  assert lines[1] == builders.Msmt17.MANUAL_DOWNLOAD_INSTRUCTIONS


@pytest.mark.parametrize('boxes', ['labeled', 'detected'])
def test_unbuilt_cuhk03_names_its_config(tmp_path, boxes):
  with pytest.raises(ValueError,
                     match=f'^cuhk03_np/{boxes} is not built in .*'
                     f"prepare\\('cuhk03_np/{boxes}'"):
    tables.from_tfds(f'cuhk03_np/{boxes}', 'train', data_dir=str(tmp_path))
