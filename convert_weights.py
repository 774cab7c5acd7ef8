r"""Converts PyTorch weights into a model directory.

  python convert_weights.py --format=torchvision --input=resnet50.pth \
      --output=DIR [--num_classes=N]
  python convert_weights.py --format=sa_official \
      --input=checkpoint.pth.tar --output=DIR
  python convert_weights.py --format=rga_official \
      --input=checkpoint.pth.tar --output=DIR [--image_size=256,128]

Restore the result with `sa_reid_jax.load_model(DIR)`. The output is checked
writable, and the file's layout against --format, before anything is
converted; errors are one line.
"""

import argparse
import sys

from sa_reid_jax import command_line

# Before TensorFlow is imported (it prints INFO lines as it loads).
command_line.quiet_tensorflow(sys.argv)

# pylint: disable=g-import-not-at-top,g-bad-import-order
from absl import app
from absl import flags

from sa_reid_jax import convert
# pylint: enable=g-import-not-at-top,g-bad-import-order

_FORMAT = flags.DEFINE_enum(
    'format', None, convert.FORMATS,
    'torchvision: ImageNet ResNet-50 state dict (backbone initialisation); '
    'sa_official: trained checkpoint of the official SA code; '
    'rga_official: trained checkpoint of the official RGA code.')
_INPUT = flags.DEFINE_string(
    'input', None, 'Weight file: .pth/.pth.tar/.pt, .safetensors or .npz.')
_OUTPUT = flags.DEFINE_string('output', None, 'Model directory to write.')
_NUM_CLASSES = flags.DEFINE_integer(
    'num_classes', None,
    'Identities of the fresh heads (torchvision format; default '
    f'{convert.convert.DEFAULT_NUM_CLASSES}). Read from the file for '
    'sa_official.', lower_bound=1)
_IMAGE_SIZE = flags.DEFINE_string(
    'image_size', None,
    'H,W: input size an rga_official checkpoint was trained at (its RGA '
    'module widths depend on it); default the official 256,128. '
    'rga_official only.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the fresh heads.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False,
                               'Replace an existing output directory.')
flags.mark_flags_as_required(['format', 'input', 'output'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  command_line.set_library_verbosity(command_line.absl_verbosity())
  image_size = None
  if _IMAGE_SIZE.value is not None:
    try:
      image_size = command_line.image_size_argument(_IMAGE_SIZE.value)
    except argparse.ArgumentTypeError as error:
      sys.exit(f'convert_weights.py: error: --image_size: {error}')
  try:
    result = convert.convert_checkpoint(_FORMAT.value, _INPUT.value,
                                        _OUTPUT.value, _NUM_CLASSES.value,
                                        _SEED.value, _OVERWRITE.value,
                                        image_size)
  except convert.ConversionError as error:
    sys.exit(f'convert_weights.py: error: {error}')
  except OSError as error:
    # The output was checked writable first; what is left is e.g. a full
    # disk while the model directory is written.
    sys.exit(f'convert_weights.py: error: --output: cannot write '
             f'{_OUTPUT.value}: {error.strerror or error}')
  print(result.summary())


def run(argv=None):
  """What ``python convert_weights.py ...`` does: `main` under absl, errors in one line.

  Args:
    argv: the command line, program name first (default ``sys.argv``).
  """
  with command_line.interrupt_exits('convert_weights.py'):
    app.run(main, argv=argv)


if __name__ == '__main__':
  run()
