"""Images as the package reads them: the one decoder and the check of an
image size (the ImageNet statistics inputs are normalised with are the
networks': `models.inputs`).

`decode_image` is shared by everything that reads an image (the input
pipelines, the image check of `image_check`, the tools and the evaluation
report's pictures), so that a file the check passes is one the pipelines
read. TensorFlow is imported when an image is first decoded, not with this
module: the JAX-only paths (device augmentation, the ONNX export) read
`check_size` from here on machines without TensorFlow.
"""

import numpy as np

def check_size(size, name: str = 'image_size') -> tuple[int, int]:
  """`size` as a (height, width) tuple of positive ints.

  Raises:
    ValueError: naming the argument `name` when it is not one.
  """
  size = tuple(size)
  if (len(size) != 2 or
      not all(isinstance(side, (int, np.integer)) and side >= 1
              for side in size)):
    raise ValueError(f'{name} must be a positive (height, width), got {size}')
  return tuple(int(side) for side in size)


def decode_image(contents):
  """Decodes JPEG (with libjpeg's accurate DCT, as PIL) or PNG/BMP/GIF bytes.

  Args:
    contents: scalar string ``tf.Tensor`` (or bytes), the file's bytes.

  Returns:
    uint8 ``tf.Tensor`` (height, width, 3).

  Raises:
    tf.errors.InvalidArgumentError: (eagerly) for bytes that are no image
      of these formats.
  """
  # Here rather than at the top: see the module's docstring.
  from sa_reid_jax.datasets.tensorflow_cpu import tf  # pylint: disable=g-import-not-at-top
  image = tf.cond(
      tf.io.is_jpeg(contents),
      lambda: tf.io.decode_jpeg(contents, channels=3,
                                dct_method='INTEGER_ACCURATE'),
      lambda: tf.io.decode_image(contents, channels=3,
                                 expand_animations=False))
  image.set_shape([None, None, 3])
  return image
