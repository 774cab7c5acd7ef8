"""`FeatureExtractor`: crops in, the evaluation pipeline's descriptors out,
on every local device, without TensorFlow."""

import shutil
import subprocess
import sys
import textwrap

import helpers
import jax
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from sa_reid_jax import FeatureExtractor
from sa_reid_jax.data import preprocessing
from sa_reid_jax.evaluation import features
from sa_reid_jax.models import store
from sa_reid_jax.tools import export

IMAGE_SIZE = helpers.SAVED_SANET_IMAGE_SIZE
# Crops smaller, larger and of the network's own size (64x32), and one
# shrunk along one axis while enlarged along the other.
SHAPES = [(40, 20), (64, 32), (150, 70), (30, 90), (128, 64)]
# The extractor's descriptors against the evaluation pipeline's, max
# absolute difference. Both resize the same float pixels bilinearly
# (Pillow here, TensorFlow there), which agree to float32 rounding of the
# filter weights: measured up to 8e-6 on the normalised pixels (the crop
# shrunk along one axis and enlarged along the other) and 1.5e-7 on these
# descriptors (magnitude ~0.43, a float32 ulp 3e-8). 1e-5 leaves room for
# other CPUs, while resizing without antialiasing moves them by 3e-2 and
# swapping the channels by 0.2 (measured).
TOLERANCE = 1e-5


def _crops():
  rng = np.random.default_rng(7)
  return [helpers.block_images(rng, (1, *shape, 3))[0] for shape in SHAPES]


def _pipeline_descriptors(model, variables, crops):
  """Evaluation's path: TensorFlow preprocessing, then `extract_features`
  on one device."""
  pixels = np.stack([preprocessing.preprocess(tf.constant(crop),
                                              IMAGE_SIZE).numpy()
                     for crop in crops])
  parts = features.extract_features(model, variables, [{'images': pixels}],
                                    progress=False)
  return parts.reshape(len(crops), -1)


def test_descriptors_equal_the_evaluation_pipeline(saved_sanet, tmp_path):
  path, model, variables = saved_sanet
  crops = _crops()
  files = []
  for index, crop in enumerate(crops):
    files.append(tmp_path / f'{index}.png')
    Image.fromarray(crop).save(files[-1])
  # Batches of 3 on the tests' two host devices: rounded up to 4, so the
  # five crops take a full and a padded batch, split over both devices.
  extractor = FeatureExtractor(path, batch_size=3)
  assert extractor.backend == 'jax' and extractor.image_size == IMAGE_SIZE
  expected = _pipeline_descriptors(model, variables, crops)
  assert extractor.descriptor_size == expected.shape[1] == 6 * 128
  from_arrays = extractor(crops)
  assert from_arrays.dtype == np.float32 and from_arrays.shape == (5, 768)
  assert np.abs(from_arrays - expected).max() <= TOLERANCE
  # Paths (PNG: decoded losslessly) give the same as the arrays, and each
  # part is L2-normalised.
  np.testing.assert_array_equal(extractor([str(f) for f in files]),
                                from_arrays)
  norms = np.linalg.norm(from_arrays.reshape(5, 6, 128), axis=-1)
  np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
  # Different crops, clearly different descriptors (nothing passes
  # vacuously).
  assert np.abs(from_arrays[0] - from_arrays[1]).max() > 1e-2
  assert extractor([]).shape == (0, 768)


def test_bad_crops_and_arguments_are_named(saved_sanet, tmp_path):
  path, _, _ = saved_sanet
  extractor = FeatureExtractor(path)
  crop = np.zeros((20, 10, 3), np.uint8)
  with pytest.raises(ValueError, match=r'^crops\[1\]: expected uint8 RGB '
                     r'\(H, W, 3\) or an image path, got float32 \(20, 10, 3\)'):
    extractor([crop, crop.astype(np.float32)])
  (tmp_path / 'broken.jpg').write_bytes(b'not an image')
  with pytest.raises(ValueError, match=r'^crops\[0\]: .*broken\.jpg: cannot '
                     'read the image'):
    extractor([str(tmp_path / 'broken.jpg')])
  with pytest.raises(ValueError, match=r"^backend must be one of \('jax', "
                     r"'onnx'\), got 'torch'"):
    FeatureExtractor(path, backend='torch')
  # One crop or one path rather than several, and what is not a list.
  for one in (crop, str(tmp_path / 'broken.jpg')):
    with pytest.raises(ValueError, match=r'^crops: expected several crops .*'
                       r'for one crop pass \[crop\]$'):
      extractor(one)
  with pytest.raises(ValueError, match=r'^crops: expected a list of crops, '
                     'got NoneType$'):
    extractor(None)
  # Any iterable, e.g. a generator of slices of a frame.
  assert extractor(c for c in [crop, crop]).shape == (2, 768)
  for size in ((0, 32), (64,), '64x32', 64, (64.0, 32)):
    with pytest.raises(ValueError, match=r'^image_size must be \(height, '
                       r'width\) in pixels'):
      FeatureExtractor(path, image_size=size)
  for batch_size in (0, 2.5, '8', None, True):
    with pytest.raises(ValueError, match=r'^batch_size must be an integer'):
      FeatureExtractor(path, batch_size=batch_size)
  with pytest.raises(ValueError, match=r"^onnx_model: given without "
                     r"backend='onnx'"):
    FeatureExtractor(path, onnx_model=str(tmp_path / 'broken.jpg'))
  with pytest.raises(ValueError, match=r'^onnx_model: .*broken\.jpg: cannot '
                     'load it'):
    FeatureExtractor(path, backend='onnx',
                     onnx_model=str(tmp_path / 'broken.jpg'))
  # Another size than the trained one runs, with a warning.
  with pytest.warns(UserWarning, match=r'^image_size 96x48 differs from the '
                    r'size the model was trained at, 64x32'):
    assert FeatureExtractor(path, image_size=(96, 48)).image_size == (96, 48)
  with pytest.raises(ValueError, match=r"^onnx_model: backend='onnx' needs "
                     'the .onnx file'):
    FeatureExtractor(path, backend='onnx')


@pytest.mark.full
def test_onnx_backend_equals_jax_to_the_rounding_of_its_uint8_input(
    saved_sanet, tmp_path):
  path, _, _ = saved_sanet
  onnx_file = tmp_path / 'model.onnx'
  assert export.main(['--format=onnx', f'--checkpoint={path}',
                      f'--output={onnx_file}']) == 0
  onnx = FeatureExtractor(path, backend='onnx', onnx_model=str(onnx_file))
  assert onnx.backend == 'onnx'
  crops = _crops()
  got = onnx(crops)
  # The ONNX model takes uint8 images: the resized pixels are rounded, by
  # at most half a grey level: measured 1.7e-3 on these descriptors (a
  # uniform half-grey-level shift moves them by 3e-3). 1e-2 stays below
  # what a wrong resize (3e-2 without antialiasing) or channel order (0.2)
  # gives.
  assert np.abs(got - FeatureExtractor(path)(crops)).max() <= 1e-2
  with pytest.warns(UserWarning, match='differs from the size'), \
      pytest.raises(ValueError, match=r'^onnx_model: .* takes 64x32 images, '
                    r'not 128x64'):
    FeatureExtractor(path, backend='onnx', onnx_model=str(onnx_file),
                     image_size=(128, 64))
  # The same network with other weights: the file is not its export.
  _, model, variables = saved_sanet
  other = tmp_path / 'other_model'
  store.save_model(str(other), model,
                   jax.tree_util.tree_map(lambda x: x * 1.01, variables),
                   metadata={'image_size': list(IMAGE_SIZE)})
  with pytest.raises(ValueError, match=r'^onnx_model: .*model\.onnx was not '
                     r'exported from this model directory'):
    FeatureExtractor(str(other), backend='onnx', onnx_model=str(onnx_file))


@pytest.mark.full
def test_the_extractor_needs_no_tensorflow(saved_sanet):
  path, _, _ = saved_sanet
  script = textwrap.dedent(f"""
      import sys
      import numpy as np
      from sa_reid_jax import FeatureExtractor
      extractor = FeatureExtractor({str(path)!r})
      print(extractor([np.zeros((50, 20, 3), np.uint8)]).shape)
      assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'
  """)
  result = subprocess.run([sys.executable, '-c', script],
                          env=helpers.environment(), capture_output=True,
                          text=True, timeout=300, cwd=helpers.REPO)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == '(1, 768)'


def test_the_readme_example_runs_as_written(saved_sanet, tmp_path,
                                            monkeypatch):
  path, _, _ = saved_sanet
  with open(f'{helpers.REPO}/README.md', encoding='utf-8') as f:
    readme = f.read()
  (example,) = [block.split('```', 1)[0] for block in
                readme.split('```python\n')[1:]
                if 'FeatureExtractor' in block]
  # Stand-ins for what the example reads: the model directory it names
  # (a copy of the saved network) and a frame with room for its boxes.
  model_dir = tmp_path / 'workdirs' / 'market1501' / 'model'
  shutil.copytree(path, model_dir)
  frame = helpers.block_images(np.random.default_rng(3), (1, 200, 240, 3))
  Image.fromarray(frame[0]).save(tmp_path / 'frame.jpg')
  monkeypatch.chdir(tmp_path)
  namespace = {}
  exec(example, namespace)  # pylint: disable=exec-used
  descriptors = namespace['descriptors']
  assert descriptors.shape == (2, 768) and descriptors.dtype == np.float32
