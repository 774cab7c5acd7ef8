"""Descriptors of arbitrary image files, for tools that work outside datasets.

Images are decoded and preprocessed exactly as evaluation does
(``datasets.images.decode_image`` and ``data.preprocessing.preprocess``); a
file that cannot be read or decoded is reported by name and left out, never
dropped silently (the tools check files first with `datasets.image_check`;
a file that breaks between the check and its description is caught here).
"""

import itertools
import os
from typing import Any, Callable, Sequence

import numpy as np
from sa_reid_jax.datasets.tensorflow_cpu import tf

from sa_reid_jax.data import preprocessing
from sa_reid_jax.datasets import image_check
from sa_reid_jax.datasets import images
from sa_reid_jax.datasets import market_layout
from sa_reid_jax.datasets import tensorflow_cpu
from sa_reid_jax.evaluation.features import extract_features

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')
# Image formats the decoder (TensorFlow's decode_image) does not read: a
# file of these is reported by `list_images`, never silently left out.
OTHER_IMAGE_EXTENSIONS = ('.webp', '.tif', '.tiff', '.heic', '.heif',
                          '.avif', '.jp2', '.ppm', '.pgm', '.pbm')
# Names shown in the line about them.
_SHOWN_NAMES = 3


def _formats(paths: Sequence[str]) -> str:
  return ', '.join(sorted({os.path.splitext(p)[1].lower() for p in paths}))


def unsupported_message(paths: Sequence[str], where: str) -> str:
  """The line `list_images` logs for image files of formats not read."""
  count = len(paths)
  shown = ', '.join(os.path.basename(p) for p in paths[:_SHOWN_NAMES])
  more = f' and {count - _SHOWN_NAMES} more' if count > _SHOWN_NAMES else ''
  return (f'skipped {count} image file{"" if count == 1 else "s"} in '
          f'{where} of formats this tool does not read '
          f'({_formats(paths)}): {shown}{more}; convert them to JPEG or '
          'PNG to include them')


def list_images(path: str, flag: str = 'path',
                log: Callable[[str], None] = print) -> list[str]:
  """`path` itself if it is a file, else the image files under the folder.

  Hidden folders (such as the caches in ``.sa_reid_cache``) are not entered;
  hidden and system files (``.DS_Store``, AppleDouble ``._name.jpg``,
  ``Thumbs.db``: `market_layout.is_system_file`) are skipped with a count
  logged, and image files of formats not read (`OTHER_IMAGE_EXTENSIONS`,
  e.g. ``.webp``, ``.tif``) with a count and their first names. Whether the
  images decode is `image_check`'s job.

  Args:
    path: an image file or a folder (searched recursively, sorted).
    flag: the flag or argument `path` came from, for error messages.
    log: where the lines about skipped files go.

  Returns:
    absolute paths.

  Raises:
    ValueError: naming `flag` and `path` when it does not exist or holds no
      image file.
  """
  if os.path.isfile(path):
    return [os.path.abspath(path)]
  if not os.path.isdir(path):
    raise ValueError(f'{flag}: {path} is neither an image file nor a folder')
  found, system, unsupported = [], 0, []
  for root, dirs, files in os.walk(path):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    names, skipped = market_layout.list_folder(root, IMAGE_EXTENSIONS)
    found.extend(os.path.join(root, name) for name in names)
    system += skipped
    unsupported.extend(
        os.path.join(root, name) for name in sorted(files)
        if name.lower().endswith(OTHER_IMAGE_EXTENSIONS) and
        not market_layout.is_system_file(name))
  if system:
    log(market_layout.skipped_message(system, path))
  if unsupported:
    log(unsupported_message(unsupported, path))
  if not found:
    raise ValueError(f'{flag}: {path} holds no image files '
                     f'({", ".join(IMAGE_EXTENSIONS)})' +
                     (f'; {len(unsupported)} files of formats not read '
                      f'({_formats(unsupported)})' if unsupported else ''))
  return sorted(os.path.abspath(p) for p in found)


def describe_files(model, variables: Any, paths: Sequence[str], *,
                   image_size: tuple[int, int], batch_size: int = 64,
                   flip: bool = False, progress: bool = True,
                   description: str = 'images'
                   ) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
  """Retrieval descriptors of image files.

  Args:
    model: a network of any registered family (the output contract of
      `models.registry`).
    variables: its variables.
    paths: image files.
    image_size: network input (height, width).
    batch_size: images per forward pass.
    flip: average with the mirrored image's descriptor.
    progress: print progress lines.
    description: label of the progress lines.

  Returns:
    (descriptors (N, P, D) float32 of the readable files, those files in
    input order, [(file, reason)] of the unreadable ones).
  """
  tensorflow_cpu.hide_accelerators_from_tensorflow()

  def load(index, path):
    image = images.decode_image(tf.io.read_file(path))
    return {'images': preprocessing.preprocess(image, image_size),
            'index': index}

  # Each file is decoded once; the ones that fail are dropped here and
  # named below (their reasons found by decoding just those again).
  dataset = tf.data.Dataset.from_tensor_slices(
      (np.arange(len(paths)), list(paths))).map(
          load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  dataset = dataset.ignore_errors().batch(batch_size).prefetch(
      tf.data.AUTOTUNE)
  described = []

  def batches():
    for batch in dataset.as_numpy_iterator():
      described.extend(batch['index'].tolist())
      yield batch

  stream = batches()
  first = next(stream, None)
  descriptors = np.zeros((0, 0, 0), np.float32)
  if first is not None:
    descriptors = extract_features(
        model, variables, itertools.chain([first], stream), flip=flip,
        total=len(paths), progress=progress, description=description)
  kept_indices = set(described)
  failures = [(p, image_check.decode_error(p) or 'could not be read')
              for i, p in enumerate(paths) if i not in kept_indices]
  return descriptors, [paths[i] for i in described], failures
