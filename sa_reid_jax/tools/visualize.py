r"""Pictures of what the network looks at and what it retrieves.

  python -m sa_reid_jax.tools.visualize cam --checkpoint=DIR [--compare=DIR2] \
      --images=FILE_OR_FOLDER [--classes=3,7] --output=cam.png
  python -m sa_reid_jax.tools.visualize ranks --checkpoint=DIR \
      (--dataset_folder=FOLDER [--dataset_layout=person_folders] | \
       --dataset_list=FILE) [--queries=0,5,9 | --num_queries=8] \
      [--topk=10] --output=ranks.png

``cam``: per image, the image, the class activation map (CAM) of each
supervised stage overlaid on it, and the raw attention maps: for the SA
network the SA maps of the stages that have SA; for an RGA network the CAM
of layer 4 through the BNNeck (exact: the eval-mode head is linear) and the
RGA spatial gates of each stage that has them. For the SA network, stages
1-3 use their deep-supervision head: the head is linear after SA (pooling,
1x1 reduction, classifier), so the CAM at a position is the class
score of the feature there, and its mean over positions plus the bias is
the head's logit exactly. Stage 4 applies the global head (reduction, BN,
ReLU, classifier) at each position of the layer4 map (as CAM does for
non-linear heads). The class is the global head's prediction unless given.
With ``--compare``, a second row under each image shows the second network
(e.g. with and without SA, as the paper's figures); the first tile of each
row is then labelled with its model's name instead of the class.

``ranks``: per query of a dataset (a folder in Market-1501 layout or in
person folders, or a list file: docs/datasets.md), the query and its top-k
gallery images by the official distance, bordered green (same person, other
camera: a true match), red (another person), or grey (ignored by the
protocol: junk, or the same person seen by the same camera, marked "junk"
or "same cam").

Images are checked before any work (`datasets.image_check`): ``cam`` skips
an unreadable image by name and shows the next one; ``ranks`` stops with
one error listing every unreadable image of the query and gallery folders.
"""

import argparse
import os
import sys
from typing import Any, Optional, Sequence

if __name__ == '__main__':
  # Run as a program: TensorFlow's INFO lines, printed as it loads, hidden.
  from sa_reid_jax import command_line  # pylint: disable=g-import-not-at-top
  command_line.quiet_tensorflow(sys.argv)

import ml_collections
import numpy as np
from PIL import Image
from sa_reid_jax.datasets.tensorflow_cpu import tf

from sa_reid_jax import command_line
from sa_reid_jax.data import pipeline
from sa_reid_jax.data import preprocessing
from sa_reid_jax.datasets import image_check
from sa_reid_jax.datasets import images as images_lib
from sa_reid_jax.datasets import market_layout
from sa_reid_jax.datasets import sources
from sa_reid_jax.evaluation import extract_features, pairwise_distances
from sa_reid_jax.evaluation import pictures
from sa_reid_jax.models import store
from sa_reid_jax.tools import cams
from sa_reid_jax.tools import image_files
from sa_reid_jax.tools import outputs


def cam_picture(models: Sequence[tuple[str, Any, Any]],
                paths: Sequence[str], image_size: tuple[int, int],
                classes: Optional[Sequence[int]] = None) -> Image.Image:
  """The ``cam`` picture: one row per image and model.

  Args:
    models: (name, model, variables) of each network to show (families
      with maps, `models.registry.Family.maps`).
    paths: image files.
    image_size: network input (height, width).
    classes: class per image, or None for each network's prediction.

  Returns:
    the picture.
  """
  inputs = np.stack([_preprocessed(p, image_size) for p in paths])
  rows = []
  results = [cams.class_activation_maps(model, variables, inputs,
                                   classes) for _, model, variables in models]
  for index, path in enumerate(paths):
    image = pictures.display_pixels(path, image_size)
    for (name, _, _), result in zip(models, results):
      predicted = int(result['classes'][index])
      tiles = [image]
      labels = [name if len(models) > 1 else f'class {predicted}']
      # 'layer4' -> 'L4': a label has about 12 characters under a 64-pixel
      # tile ('Grad-CAM layer4' was cut to 'Grad-CAM lay').
      for stage, cam in result['cams'].items():
        tiles.append(pictures.note_if_flat(
            pictures.overlay(image, np.asarray(cam[index])),
            np.asarray(cam[index])))
        labels.append(f'{result.get("cam_name", "CAM")} '
                      f'{stage.replace("layer", "L")}')
      for stage, weights in result['attention'].items():
        tiles.append(pictures.note_if_flat(
            pictures.colorize(np.asarray(weights[index]), image_size),
            np.asarray(weights[index])))
        labels.append(f'{result["attention_name"]} '
                      f'{stage.replace("layer", "L")}')
      rows.append(pictures.tile_row(tiles, labels))
  return pictures.stack(rows)


def _preprocessed(path: str, image_size: tuple[int, int]) -> np.ndarray:
  image = images_lib.decode_image(tf.io.read_file(path))
  return preprocessing.preprocess(image, image_size).numpy()


def rank_queries(model, variables, dataset: ml_collections.ConfigDict,
                 queries: Sequence[int], topk: int,
                 image_size: tuple[int, int], batch_size: int = 64
                 ) -> tuple[list[str], list[dict]]:
  """Top-k gallery images of chosen queries of a dataset.

  Args:
    model, variables: the network.
    dataset: a dataset block (`dataset_block`; `sources.read_splits`).
    queries: indices into the query split (file-name order).
    topk: gallery images per query.
    image_size: network input.
    batch_size: images per forward pass.

  Returns:
    (query paths, per query ``{'paths', 'kinds', 'distances'}``).

  Raises:
    LayoutError: naming the flag, for a dataset that cannot be read, or
      listing every unreadable image of its query and gallery splits.
  """
  both = sources.read_splits(dataset, ('query', 'gallery'), log=print,
                             keys=FLAG_KEYS)
  query, gallery = both['query'], both['gallery']
  bad = [q for q in queries if not 0 <= q < len(query)]
  if bad:
    source = sources.describe(dataset, FLAG_KEYS).split(': ', 1)[1]
    raise ValueError(f'--queries: {bad} out of range; {source} has '
                     f'{len(query)} queries')

  def describe(table, name):
    batches = pipeline.eval_dataset(table, batch_size=batch_size,
                                          image_size=image_size)
    return extract_features(model, variables, batches.as_numpy_iterator(),
                            total=len(table), description=name)

  query_features = describe(query, 'query')[np.asarray(queries)]
  distances = np.asarray(pairwise_distances(
      query_features, describe(gallery, 'gallery'), 'euclidean'))
  ranked = []
  for row, q in zip(distances, queries):
    order = np.argsort(row, kind='stable')[:topk]
    kinds = pictures.match_kinds(query.person_ids[q], query.camera_ids[q],
                                 gallery.person_ids, gallery.camera_ids)
    ranked.append({'paths': [str(gallery.images[i]) for i in order],
                   'kinds': [str(kinds[i]) for i in order],
                   'distances': [float(row[i]) for i in order]})
  return [str(query.images[q]) for q in queries], ranked


# How the errors of `sources.read_splits` name the ranks flags.
FLAG_KEYS = '--dataset_{}'


def dataset_block(args) -> ml_collections.ConfigDict:
  """The dataset block (a config's ``dataset``, `sources`) of the ranks
  flags ``--dataset_folder``, ``--dataset_layout``, ``--dataset_list``."""
  return ml_collections.ConfigDict({
      'name': '', 'data_dir': '', 'folder': args.dataset_folder or '',
      'layout': args.dataset_layout, 'list': args.dataset_list or ''})


def _ints(text: str) -> list[int]:
  try:
    return [int(v) for v in text.split(',') if v]
  except ValueError:
    raise argparse.ArgumentTypeError(
        f'expected comma-separated integers, got {text!r}') from None


def _parse_arguments(argv):
  parser = command_line.OneLineArgumentParser(
      prog='python -m sa_reid_jax.tools.visualize',
      description=__doc__.split('\n\n')[0])
  commands = parser.add_subparsers(dest='command', required=True)
  cam = commands.add_parser('cam', help='class activation and SA maps')
  cam.add_argument('--checkpoint', required=True, help='model directory')
  cam.add_argument('--compare', help='a second model directory')
  cam.add_argument('--images', required=True, help='image file or folder')
  cam.add_argument('--classes', type=_ints,
                   help='class per image (default: predicted)')
  cam.add_argument('--max_images', type=command_line.positive_int_argument,
                   default=8,
                   help='images of a folder shown (default 8)')
  ranks = commands.add_parser('ranks', help='ranked gallery per query')
  ranks.add_argument('--checkpoint', required=True, help='model directory')
  source = ranks.add_mutually_exclusive_group(required=True)
  source.add_argument('--dataset_folder',
                      help='dataset folder, laid out as --dataset_layout')
  source.add_argument('--dataset_list',
                      help='CSV or TSV list file (docs/datasets.md)')
  ranks.add_argument('--dataset_layout', choices=sources.LAYOUTS,
                     default=sources.MARKET_LAYOUT,
                     help='layout of --dataset_folder')
  ranks.add_argument('--queries', type=_ints, help='query indices')
  ranks.add_argument('--num_queries', type=command_line.positive_int_argument,
                     default=6,
                     help='without --queries: this many, evenly spread')
  ranks.add_argument('--topk', type=command_line.positive_int_argument,
                     default=10)
  for sub in (cam, ranks):
    sub.add_argument('--output', required=True, help='PNG file to write')
    sub.add_argument('--image_size', type=command_line.image_size_argument,
                     help='H,W (default: the model\'s)')
    command_line.add_verbosity_argument(sub)
  return parser.parse_args(argv)


def _short_name(checkpoint: str) -> str:
  """A model directory's name; its run's for training's ``WORKDIR/model``."""
  path = os.path.normpath(os.path.abspath(checkpoint))
  name = os.path.basename(path)
  return os.path.basename(os.path.dirname(path)) if name == 'model' else name


def _model_directory(path: str, flag: str) -> str:
  try:
    return store.resolve_model_directory(path)
  except store.ModelStoreError as e:
    raise ValueError(f'{flag}: {e}') from None


def _readable_images(images: str, count: int) -> list[str]:
  """The first `count` readable images of a file or folder; unreadable ones
  before them are skipped by name (`image_check`, verdicts cached in the
  folder)."""
  candidates = image_files.list_images(images, '--images')
  folder = images if os.path.isdir(images) else None
  paths = []
  # Checked a chunk at a time: a large folder is not decoded to show a few.
  for start in range(0, len(candidates), max(count, 1)):
    chunk = candidates[start:start + max(count, 1)]
    failures = dict(image_check.check_files(chunk, folder))
    for path in chunk:
      if path in failures:
        print(f'skipped {path}: {failures[path]}')
      elif len(paths) < count:
        paths.append(path)
    if len(paths) == count:
      break
  return paths


def _check_classes(classes: Optional[Sequence[int]], model: Any,
                   flag: str) -> None:
  """Refuses a --classes entry that is not one of the network's classes
  (its map would be drawn blank, labelled as if it were one)."""
  for value in classes or ():
    if not 0 <= value < model.num_classes:
      raise ValueError(f'--classes: class {value} is not a class of the '
                       f'{flag} network (0 to {model.num_classes - 1})')


def _run(args) -> Image.Image:
  args.checkpoint = _model_directory(args.checkpoint, '--checkpoint')
  image_size = store.input_size(args.checkpoint, args.image_size)
  model, variables = store.load_model(args.checkpoint)
  if args.command == 'cam':
    paths = _readable_images(args.images, args.max_images)
    if not paths:
      raise ValueError(f'--images: no readable image in {args.images}')
    if args.classes is not None and len(args.classes) != len(paths):
      raise ValueError(f'--classes: {len(args.classes)} classes for '
                       f'{len(paths)} images')
    cams.check_cam_model(model, '--checkpoint')
    _check_classes(args.classes, model, '--checkpoint')
    models = [(_short_name(args.checkpoint), model, variables)]
    if args.compare:
      args.compare = _model_directory(args.compare, '--compare')
      other, other_variables = store.load_model(args.compare)
      cams.check_cam_model(other, '--compare')
      _check_classes(args.classes, other, '--compare')
      models.append((_short_name(args.compare), other, other_variables))
    return cam_picture(models, paths, image_size, args.classes)
  queries = args.queries
  dataset = dataset_block(args)
  if queries is None:
    count = len(sources.read_splits(dataset, ('query',), log=lambda _: None,
                                    keys=FLAG_KEYS)['query'])
    queries = sorted(set(np.linspace(0, count - 1, min(args.num_queries,
                                                       count)).astype(int)))
  if not queries:
    raise ValueError('--queries: no query index given')
  query_paths, ranked = rank_queries(model, variables, dataset, queries,
                                     args.topk, image_size)
  return pictures.ranks_picture(query_paths, ranked, image_size)


def main(argv=None) -> int:
  """The command line; exits with one error line on bad input.

  Args:
    argv: the arguments, without the program name (default sys.argv[1:]).

  Returns:
    0 once the picture is written. Bad flags, an --output that is no image
    file name or cannot be written (checked before any model is loaded),
    and unreadable models or images exit with ``visualize COMMAND: error:
    ...``.
  """
  args = _parse_arguments(argv)
  command_line.set_library_verbosity(args.verbosity)
  program = f'visualize {args.command}'
  try:
    outputs.check_image_file(args.output, '--output')
    outputs.check_writable(args.output, '--output')
    picture = _run(args)
  except (ValueError, market_layout.LayoutError) as e:
    sys.exit(f'{program}: error: {e}')
  except tf.errors.OpError as e:
    # A file that broke after the check.
    sys.exit(f'{program}: error: cannot read an image: {e.message}')
  try:
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    picture.save(args.output)
  except OSError as e:
    # What the check cannot foresee: a full disk, a folder changed since.
    sys.exit(f'{program}: error: --output: cannot write {args.output}: '
             f'{e.strerror or e}')
  print(f'wrote {args.output} ({picture.width}x{picture.height})')
  return 0


if __name__ == '__main__':
  sys.exit(main())
