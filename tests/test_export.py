"""SavedModel export: served descriptors equal JAX's, and the CLI's errors."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf

from sa_reid_jax.data import pipeline
from sa_reid_jax.models import store
from sa_reid_jax.models.sanet import SANet
from sa_reid_jax.tools import export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZE = (64, 32)
TOLERANCE = 1e-4


def random_variables(model, seed=0):
  """He-scaled random variables of `model`, near-identity BatchNorm.

  Cheaper than a compiled ``model.init`` (~10 s on 2 cores), and as
  sensitive to the input as a fresh network.
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'var':  # BatchNorm variances must be positive
      values = rng.uniform(0.5, 1.5, leaf.shape)
    elif name == 'scale':
      values = 1 + 0.1 * rng.standard_normal(leaf.shape)
    elif name in ('mean', 'bias'):
      values = 0.1 * rng.standard_normal(leaf.shape)
    else:
      fan_in = np.prod(leaf.shape[:-1])
      values = np.sqrt(2 / fan_in) * rng.standard_normal(leaf.shape)
    return values.astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill,
                                          store.abstract_variables(model))


def random_images(rng, shape):
  """uint8 images of coarse colour blocks plus noise (unlike pure noise,
  they give clearly different descriptors)."""
  batch, height, width, _ = shape
  blocks = rng.integers(0, 256, (batch, 8, 4, 3))
  rows = np.arange(height) * 8 // height
  columns = np.arange(width) * 4 // width
  images = blocks[:, rows][:, :, columns] + rng.integers(-20, 21, shape)
  return np.clip(images, 0, 255).astype(np.uint8)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
  model = SANet(num_classes=5, stage_sizes=(1, 1, 1, 1), base_width=4)
  variables = random_variables(model)
  path = tmp_path_factory.mktemp('export') / 'model'
  store.save_model(str(path), model, variables,
                   metadata={'image_size': list(IMAGE_SIZE)})
  return path, model, variables


@pytest.fixture(scope='module')
def exported(checkpoint):
  path, _, _ = checkpoint
  output = path.parent / 'saved_model'
  assert export.main([f'--checkpoint={path}', f'--output={output}']) == 0
  return output


def test_served_descriptors_equal_jax(checkpoint, exported):
  _, model, variables = checkpoint
  serve = tf.saved_model.load(str(exported)).signatures['serving_default']
  rng = np.random.default_rng(0)
  # At the model's size, shrunk (antialiased) and enlarged; two batch sizes.
  batches = [random_images(rng, shape)
             for shape in [(1, *IMAGE_SIZE, 3), (3, 128, 64, 3),
                           (2, 50, 20, 3)]]
  served = [serve(images=tf.constant(images)) for images in batches]
  # The reference: evaluation's preprocessing and the JAX model, one batch.
  pixels = np.stack([pipeline.preprocess(tf.constant(image),
                                               IMAGE_SIZE).numpy()
                     for images in batches for image in images])
  features = jax.jit(lambda x: model.apply(variables, x, train=False)[
      'features'])(pixels)
  expected = np.split(np.asarray(features).reshape(len(pixels), -1),
                      np.cumsum([len(b) for b in batches])[:-1])
  for images, outputs, reference in zip(batches, served, expected):
    descriptors = outputs['descriptors'].numpy()
    assert descriptors.dtype == np.float32
    assert descriptors.shape == reference.shape == (len(images), 6 * 128)
    np.testing.assert_array_equal(
        outputs['parts'].numpy().reshape(len(images), -1), descriptors)
    error = float(np.abs(descriptors - reference).max())
    assert error <= TOLERANCE, (images.shape, error)
  # Different images have different descriptors (nothing passes vacuously).
  assert np.abs(expected[1][0] - expected[1][1]).max() > 1e-2


def test_signature_and_metadata(exported):
  loaded = tf.saved_model.load(str(exported))
  serve = loaded.signatures['serving_default']
  (spec,) = serve.structured_input_signature[1].values()
  assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, None,
                                                              None, 3]
  assert serve.structured_outputs['descriptors'].shape.as_list() == [
      None, 6 * 128]
  # Weights are variables of the SavedModel, not graph constants.
  assert loaded.model_variables
  empty = serve(images=tf.zeros((0, 10, 10, 3), tf.uint8))
  assert empty['descriptors'].shape == (0, 6 * 128)
  with open(exported / export.METADATA_PATH) as f:
    info = json.load(f)
  assert info['image_size'] == list(IMAGE_SIZE)
  assert info['descriptor_dim'] == 6 * 128
  assert info['platforms'] == ['cpu', 'cuda']


def test_errors_are_one_line(checkpoint, exported, tmp_path):
  path, _, _ = checkpoint
  cases = [
      ([f'--checkpoint={tmp_path / "missing"}', f'--output={tmp_path / "o"}'],
       '--checkpoint'),
      ([f'--checkpoint={tmp_path}', f'--output={tmp_path / "o"}'],
       'empty; expected a model directory'),
      ([f'--checkpoint={path}', f'--output={exported}'], '--overwrite'),
      ([f'--checkpoint={path}', f'--output={path}', '--overwrite'],
       'would replace the checkpoint'),
      ([f'--checkpoint={path}', f'--output={tmp_path / "o"}',
        '--image_size=64'], '--image_size'),
      ([f'--checkpoint={path}', f'--output={tmp_path / "o"}',
        '--platforms=gpu'], '--platforms'),
      ([f'--output={tmp_path / "o"}'], '--checkpoint'),
  ]
  for argv, expected in cases:
    with pytest.raises(SystemExit) as exit_info:
      export.main(argv)
    message = exit_info.value.code
    assert isinstance(message, str), argv
    assert message.startswith('export: error: '), message
    assert expected in message and '\n' not in message.strip(), message
  assert not os.path.exists(tmp_path / 'o')


def test_cli_error_has_no_traceback(checkpoint, tmp_path):
  path, _, _ = checkpoint
  result = subprocess.run(
      [sys.executable, '-m', 'sa_reid_jax.tools.export', f'--checkpoint={path}',
       f'--output={path.parent / "saved_model"}', '--image_size=0,32'],
      capture_output=True, text=True, cwd=REPO, check=False)
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert 'Traceback' not in result.stderr
  assert lines[-1].startswith('export: error: --image_size'), result.stderr


def test_overwrite_replaces_the_output(checkpoint, tmp_path):
  path, _, _ = checkpoint
  output = tmp_path / 'saved_model'
  output.mkdir()
  (output / 'stale.txt').write_text('old export')
  assert export.main([f'--checkpoint={path}', f'--output={output}',
                      '--image_size=96x48', '--platforms=cpu',
                      '--overwrite']) == 0
  assert not (output / 'stale.txt').exists()
  assert os.listdir(tmp_path) == ['saved_model']  # no staging left behind
  with open(output / export.METADATA_PATH) as f:
    info = json.load(f)
  assert info['image_size'] == [96, 48] and info['platforms'] == ['cpu']
  serve = tf.saved_model.load(str(output)).signatures['serving_default']
  outputs = serve(images=tf.zeros((2, 96, 48, 3), tf.uint8))
  assert outputs['descriptors'].shape == (2, 6 * 128)
