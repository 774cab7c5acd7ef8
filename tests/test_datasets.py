"""Tests of the TFDS builders and of ExampleTable loading."""

import os

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from sa_reid_jax.datasets import builders
from sa_reid_jax.datasets import market_layout
from sa_reid_jax.datasets import tables

# A tiny dataset: (split folder, file stem) per image; the same ids and
# cameras are written in each builder's own naming style.
_IMAGES = {
    'bounding_box_train': [(7, 1), (7, 2), (3, 1), (3, 3), (12, 2)],
    'query': [(5, 1), (9, 2)],
    'bounding_box_test': [(5, 2), (5, 3), (9, 1), (0, 1), (-1, 2)],
}
_TRAIN_LABELS = {3: 0, 7: 1, 12: 2}  # sorted person ids -> 0..K-1


def _name(style: str, person_id: int, camera: int, n: int) -> str:
  person = '-1' if person_id < 0 else f'{person_id:04d}'
  return {
      'market': f'{person}_c{camera}s1_{n:06d}_01.jpg',
      'duke': f'{person}_c{camera}_f{n:07d}.jpg',
      'cuhk03': f'{person}_c{camera}_{n}.png',
      'msmt17': f'{person}_c{camera}_{n:04d}.jpg',
  }[style]


def _write_dataset(root: str, style: str = 'market',
                   images=None) -> dict[str, list[str]]:
  """Writes tiny images in Market layout; returns the names per folder."""
  rng = np.random.default_rng(0)
  names = {}
  for n, (folder, entries) in enumerate((images or _IMAGES).items()):
    os.makedirs(os.path.join(root, folder), exist_ok=True)
    names[folder] = []
    for i, (person_id, camera) in enumerate(entries):
      name = _name(style, person_id, camera, 10 * n + i)
      pixels = rng.integers(0, 256, (16, 8, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(os.path.join(root, folder, name))
      names[folder].append(name)
  return names


_BUILDS = [
    # (dataset name, folder under manual_dir, naming style)
    ('market1501', 'Market-1501-v15.09.15', 'market'),
    ('dukemtmc_reid', 'DukeMTMC-reID', 'duke'),
    ('cuhk03_np/labeled', 'cuhk03-np/labeled', 'cuhk03'),
    ('cuhk03_np/detected', 'cuhk03-np/detected', 'cuhk03'),
    ('msmt17', 'MSMT17', 'msmt17'),
    ('market_layout_folder', '', 'market'),
]


def _as_numpy(builder, split):
  examples = list(tfds.as_numpy(builder.as_dataset(split=split)))
  return sorted(examples, key=lambda example: example['filename'])


@pytest.mark.parametrize('name, folder, style', _BUILDS)
def test_builds_from_the_real_layout(tmp_path, name, folder, style):
  manual_dir = str(tmp_path / 'manual')
  names = _write_dataset(os.path.join(manual_dir, folder), style)
  builder = builders.prepare(name, manual_dir, str(tmp_path / 'data'))

  splits = builder.info.splits
  assert splits['train'].num_examples == 5
  assert splits['query'].num_examples == 2
  assert splits['gallery'].num_examples == 5
  for split, folder_name in market_layout.SPLIT_FOLDERS.items():
    examples = _as_numpy(builder, split)
    expected = sorted(zip(names[folder_name], _IMAGES[folder_name]))
    assert [e['filename'].decode() for e in examples] == [
        filename for filename, _ in expected]
    for example, (_, (person_id, camera)) in zip(examples, expected):
      assert example['person_id'] == person_id
      assert example['camera_id'] == camera - 1
      assert example['image'].shape == (16, 8, 3)
      if split == 'train':
        assert example['label'] == _TRAIN_LABELS[person_id]
      else:
        assert example['label'] == builders.NO_LABEL
  assert builder.info.supervised_keys == ('image', 'label')
  if folder:
    assert folder in builder.info.description


def test_images_are_stored_unchanged(tmp_path):
  _write_dataset(str(tmp_path / 'manual'), 'cuhk03')
  builder = builders.prepare('market_layout_folder', str(tmp_path / 'manual'),
                             str(tmp_path / 'data'))
  table = tables.from_tfds(builder, 'train')
  for encoded, filename in zip(table.images, table.filenames):
    with open(tmp_path / 'manual' / 'bounding_box_train' / filename,
              'rb') as file:
      assert encoded == file.read()


def test_bad_file_name_stops_the_build_naming_it(tmp_path):
  _write_dataset(str(tmp_path / 'manual'))
  Image.new('RGB', (8, 16)).save(tmp_path / 'manual' / 'query' /
                                 'person5_cam1.jpg')
  with pytest.raises(market_layout.LayoutError, match='person5_cam1.jpg'):
    builders.prepare('market_layout_folder', str(tmp_path / 'manual'),
                     str(tmp_path / 'data'))


def test_undecodable_image_stops_the_build_naming_it(tmp_path):
  _write_dataset(str(tmp_path / 'manual'))
  broken = tmp_path / 'manual' / 'bounding_box_test' / '0005_c4s1_000099_01.jpg'
  broken.write_bytes(b'\xff\xd8 not really a jpeg')
  with pytest.raises(market_layout.LayoutError,
                     match='0005_c4s1_000099_01.jpg: not a decodable image'):
    builders.prepare('market_layout_folder', str(tmp_path / 'manual'),
                     str(tmp_path / 'data'))


def test_missing_split_folder_names_the_layout(tmp_path):
  _write_dataset(str(tmp_path / 'manual'))
  os.rename(tmp_path / 'manual' / 'bounding_box_test', tmp_path / 'gallery')
  with pytest.raises(market_layout.LayoutError,
                     match='bounding_box_test: missing.*query/'):
    builders.prepare('market_layout_folder', str(tmp_path / 'manual'),
                     str(tmp_path / 'data'))


def test_missing_dataset_folder_says_where_it_belongs(tmp_path):
  _write_dataset(str(tmp_path / 'manual' / 'Market-1501'))
  with pytest.raises(market_layout.LayoutError,
                     match='Market-1501-v15.09.15: missing'):
    builders.prepare('market1501', str(tmp_path / 'manual'),
                     str(tmp_path / 'data'))


def test_junk_in_train_stops_the_build(tmp_path):
  images = dict(_IMAGES)
  images['bounding_box_train'] = _IMAGES['bounding_box_train'] + [(-1, 1)]
  _write_dataset(str(tmp_path / 'manual'), images=images)
  with pytest.raises(market_layout.LayoutError, match='junk image'):
    builders.prepare('market_layout_folder', str(tmp_path / 'manual'),
                     str(tmp_path / 'data'))


def test_prepare_rejects_unknown_names(tmp_path):
  with pytest.raises(ValueError, match="unknown dataset 'market'"):
    builders.prepare('market', str(tmp_path), str(tmp_path))


def test_tfds_and_folder_tables_agree(tmp_path):
  root = str(tmp_path / 'manual')
  _write_dataset(root)
  builders.prepare('market_layout_folder', root, str(tmp_path / 'data'))
  for split in builders.SPLITS:
    from_folder = tables.from_folder(root, split)
    from_tfds = tables.from_tfds('market_layout_folder', split,
                                 data_dir=str(tmp_path / 'data'))
    assert from_folder.images_are_paths and not from_tfds.images_are_paths
    for field in ('person_ids', 'labels', 'camera_ids', 'filenames'):
      np.testing.assert_array_equal(getattr(from_folder, field),
                                    getattr(from_tfds, field))
    for path, encoded in zip(from_folder.images, from_tfds.images):
      with open(path, 'rb') as file:
        assert file.read() == encoded
  assert tables.from_folder(root, 'train').num_classes == 3


def test_from_tfds_requires_a_built_dataset(tmp_path):
  with pytest.raises(ValueError, match='market1501 is not built'):
    tables.from_tfds('market1501', 'train', data_dir=str(tmp_path))


def test_from_folder_reports_layout_errors(tmp_path):
  with pytest.raises(market_layout.LayoutError, match='bounding_box_train'):
    tables.from_folder(str(tmp_path), 'train')
