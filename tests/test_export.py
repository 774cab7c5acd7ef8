"""SavedModel export: served descriptors equal JAX's, and the CLI's errors."""

import json
import os

import helpers
import jax
import numpy as np
import pytest
import tensorflow as tf

from sa_reid_jax.data import preprocessing
from sa_reid_jax.tools import export

IMAGE_SIZE = helpers.SAVED_SANET_IMAGE_SIZE


@pytest.fixture(scope='module')
def exported(saved_sanet, tmp_path_factory):
  path, _, _ = saved_sanet
  output = tmp_path_factory.mktemp('export') / 'saved_model'
  assert export.main([f'--checkpoint={path}', f'--output={output}']) == 0
  return output


def test_served_descriptors_equal_jax(saved_sanet, exported):
  _, model, variables = saved_sanet
  serve = tf.saved_model.load(str(exported)).signatures['serving_default']
  rng = np.random.default_rng(0)
  # At the model's size, shrunk (antialiased) and enlarged; two batch sizes.
  batches = [helpers.block_images(rng, shape)
             for shape in [(1, *IMAGE_SIZE, 3), (3, 128, 64, 3),
                           (2, 50, 20, 3)]]
  served = [serve(images=tf.constant(images)) for images in batches]
  # The reference: evaluation's preprocessing and the JAX model, one batch.
  pixels = np.stack([preprocessing.preprocess(tf.constant(image),
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
    # Two float32 programs compiled apart (see helpers.EXPORT_TOLERANCE).
    assert error <= helpers.EXPORT_TOLERANCE, (images.shape, error)
  # Different images have clearly different descriptors (nothing passes
  # vacuously): by more than 1e-2, a thousand times the bound.
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


def test_errors_are_one_line(saved_sanet, exported, tmp_path):
  path, _, _ = saved_sanet
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


def test_export_in_a_real_process_writes_one_error_line(saved_sanet,
                                                        tmp_path):
  # What a user's terminal shows: TensorFlow's start-up notices (which some
  # CPUs print whatever TF_CPP_MIN_LOG_LEVEL says) hidden, no traceback,
  # the error alone.
  path, _, _ = saved_sanet
  result = helpers.run_as_user(
      'sa_reid_jax.tools.export', f'--checkpoint={path}',
      f'--output={tmp_path / "saved_model"}', '--image_size=0,32')
  assert result.returncode == 1
  assert result.stderr.splitlines() == [
      "export: error: --image_size: expected two positive integers H,W, "
      "got '0,32'"], result.stderr
  assert not (tmp_path / 'saved_model').exists()


def test_overwrite_replaces_the_output(saved_sanet, tmp_path):
  path, _, _ = saved_sanet
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
