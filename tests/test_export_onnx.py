"""ONNX export: ONNX Runtime's descriptors equal JAX's, any batch size."""

import helpers
import numpy as np
import onnx
import onnxruntime
import pytest

from sa_reid_jax.data import preprocessing
from sa_reid_jax.models import resnet
from sa_reid_jax.tools import export
from sa_reid_jax.tools import export_onnx

IMAGE_SIZE = helpers.SAVED_SANET_IMAGE_SIZE


@pytest.fixture(scope='module', name='exported')
def fixture_exported(saved_sanet, tmp_path_factory):
  path, _, _ = saved_sanet
  output = tmp_path_factory.mktemp('export_onnx') / 'model.onnx'
  assert export.main(['--format=onnx', f'--checkpoint={path}',
                      f'--output={output}']) == 0
  return output


def jax_descriptors(model, variables, images):
  """Descriptors by the evaluation path: TF preprocessing, then JAX."""
  pixels = np.stack([preprocessing.preprocess(image, IMAGE_SIZE).numpy()
                     for image in images])
  return np.asarray(model.apply(variables, pixels, train=False)['features'])


@pytest.mark.parametrize('batch', [1, 3])
def test_onnxruntime_descriptors_equal_jax(saved_sanet, exported, batch):
  _, model, variables = saved_sanet
  session = onnxruntime.InferenceSession(str(exported),
                                         providers=['CPUExecutionProvider'])
  images = helpers.block_images(np.random.default_rng(batch),
                                (batch, *IMAGE_SIZE, 3))
  descriptors, parts = session.run(None, {'images': images})
  expected = jax_descriptors(model, variables, images)
  assert parts.shape == expected.shape and parts.dtype == np.float32
  # Two float32 programs compiled apart (see helpers.EXPORT_TOLERANCE).
  assert np.abs(parts - expected).max() <= helpers.EXPORT_TOLERANCE
  np.testing.assert_array_equal(descriptors,
                                parts.reshape(batch, -1))
  # Different images give clearly different descriptors (a constant output
  # would pass the comparison above only if JAX's were constant too).
  if batch > 1:
    # By more than 1e-2, a thousand times the bound.
    assert np.abs(expected[0] - expected[1]).max() > 1e-2


def test_graph_signature_and_metadata(saved_sanet, exported):
  _, model, _ = saved_sanet
  proto = onnx.load(str(exported))
  (images,) = proto.graph.input
  assert images.name == 'images'
  assert images.type.tensor_type.elem_type == onnx.TensorProto.UINT8
  dims = images.type.tensor_type.shape.dim
  assert dims[0].dim_param and not dims[0].dim_value  # symbolic batch
  assert [d.dim_value for d in dims[1:]] == [*IMAGE_SIZE, 3]
  assert [o.name for o in proto.graph.output] == ['descriptors', 'parts']
  info = export_onnx.read_metadata(str(exported))
  assert info['image_size'] == list(IMAGE_SIZE)
  assert info['num_parts'] == model.num_parts
  assert info['descriptor_dim'] == info['num_parts'] * info['part_dim']


def test_onnx_errors_are_one_line(saved_sanet, exported, tmp_path):
  path, _, _ = saved_sanet
  for output, message in ((exported, 'already exists'),
                          (tmp_path, 'is a directory')):
    with pytest.raises(SystemExit) as error:
      export.main(['--format=onnx', f'--checkpoint={path}',
                   f'--output={output}'])
    text = str(error.value)
    assert text.startswith('export: error: --output') and message in text
    assert '\n' not in text


@pytest.mark.parametrize('shape', [(2, 7, 5, 3), (1, 8, 6, 2), (1, 1, 1, 1)])
def test_onnx_pooling_equals_max_pool(shape):
  x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
  expected = np.asarray(resnet.max_pool_3x3(x))
  with resnet.onnx_pooling():
    pooled = np.asarray(resnet.max_pool_3x3(x))
  np.testing.assert_array_equal(pooled, expected)
  # Independent truth: the padded 3x3 windows at stride 2, by loops.
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  for i in range(expected.shape[1]):
    for j in range(expected.shape[2]):
      np.testing.assert_array_equal(
          expected[:, i, j], padded[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max(
              axis=(1, 2)))
