r"""Retrieval on any folder of person crops: no person ids or cameras needed.

  python -m sa_reid_jax.tools.search --checkpoint=DIR --gallery=FOLDER \
      --query=IMAGE_OR_FOLDER [--topk=10] [--output=DIR] [--image_size=H,W] \
      [--flip] [--batch_size=64] [--max_distance=D | --max_distance=fpr:RATE]

Ranks the gallery images by the Euclidean distance between their part
descriptors and each query's (the paper's retrieval distance) and writes
OUTPUT/results.json (the top-k gallery files of every query, with distances
and ranks, and every file that could not be read) and OUTPUT/ranks.png (one
row per query, for the first `drawing.MAX_GRID_ROWS` queries: the query, a
gap, then its top-k matches, at most `drawing.MAX_GRID_MATCHES`, with their
distances underneath). With --max_distance, matches farther than the
limit are not listed and a query with none nearer gets "no match" (in
results.json and in its row of ranks.png); ``fpr:RATE`` takes the limit
from the threshold the model's evaluation recorded at that false-positive
rate (`max_distance_threshold`).

A query that is itself a gallery file (the same file after resolving the
absolute path and symlinks) is left out of its own results, so a query folder
may be the gallery folder; an identical copy elsewhere is still a match, at
a distance of about 0 (up to ~1e-3: `nearest.nearest` expands |a - b|^2
in float32).

Gallery descriptors are kept in an index in FOLDER/.sa_reid_cache/
(list_images skips hidden folders; the user's cache folder for a gallery
that cannot be written) and reused while the model and the files are
unchanged; an added file is appended, a removed one dropped without
rewriting the others (see `gallery_index`). Ranking is exact, by blocks of
the gallery and a partial selection of each query's top-k
(`nearest`). Before that, every gallery and query file is checked
decodable (`datasets.image_check`, its verdicts cached in the same folder):
unreadable files are skipped and listed, hidden and system files
(.DS_Store, ._name.jpg, Thumbs.db) skipped with a count, image files of
formats not read (.webp, .tif, ...) skipped with a count and their names.
"""

import argparse
import collections
import json
import os
import sys
from typing import Any, Callable, Optional, Sequence

if __name__ == '__main__':
  # Run as a program: TensorFlow's INFO lines, printed as it loads, hidden.
  from sa_reid_jax import command_line  # pylint: disable=g-import-not-at-top
  command_line.quiet_tensorflow(sys.argv)

import numpy as np  # pylint: disable=g-import-not-at-top

from sa_reid_jax import command_line  # pylint: disable=g-import-not-at-top
from sa_reid_jax.datasets import image_check  # pylint: disable=g-import-not-at-top
from sa_reid_jax.models import registry  # pylint: disable=g-import-not-at-top
from sa_reid_jax.models import store  # pylint: disable=g-import-not-at-top
from sa_reid_jax.tools import drawing  # pylint: disable=g-import-not-at-top
from sa_reid_jax.tools import gallery_index  # pylint: disable=g-import-not-at-top
from sa_reid_jax.tools import image_files  # pylint: disable=g-import-not-at-top
from sa_reid_jax.tools import nearest  # pylint: disable=g-import-not-at-top
from sa_reid_jax.tools import outputs  # pylint: disable=g-import-not-at-top

METRIC = 'euclidean'
# Where eval.py and train.py record an evaluation (with its thresholds).
METRICS_FILE = 'metrics.json'
# `--max_distance=fpr:RATE` reads the threshold at that false-positive rate.
FPR_PREFIX = 'fpr:'


class SearchError(ValueError):
  """No readable image on one side of the search.

  Attributes:
    role: ``'gallery'`` or ``'query'``, the side at fault.
  """

  def __init__(self, role: str, message: str):
    super().__init__(message)
    self.role = role


def _describe(model, variables, paths, *, role, image_size, flip, batch_size,
              progress):
  """{path: descriptor} and {path: reason} of `paths`."""
  if not paths:
    return {}, {}
  descriptors, kept, failures = image_files.describe_files(
      model, variables, paths, image_size=image_size, batch_size=batch_size,
      flip=flip, progress=progress, description=f'{role} images')
  return dict(zip(kept, descriptors)), dict(failures)


def search(model, variables: Any, gallery_paths: Sequence[str],
           query_paths: Sequence[str], *, topk: int = 10,
           image_size: Sequence[int], flip: bool = False,
           batch_size: int = 64, index_folder: Optional[str] = None,
           check_folder: Optional[str] = None,
           max_distance: Optional[float] = None, progress: bool = True,
           log: Callable[[str], None] = print) -> dict[str, Any]:
  """Ranks gallery images for each query image by descriptor distance.

  A query that is itself one of the gallery files (same path after
  ``os.path.realpath``) is excluded from its own results. Every file is
  checked readable before any is described (`image_check.check_files`);
  unreadable files are skipped, logged (``skipped FILE: reason``) and listed
  under ``failures``.

  With `index_folder`, gallery descriptors are kept in the gallery index
  of that folder (`gallery_index`: ``FOLDER/.sa_reid_cache/<key>/``, or the
  user's cache folder when FOLDER cannot be written). The key covers
  `store.model_fingerprint` (config and variable values),
  `image_size`, `flip` and `gallery_index.CACHE_VERSION`; only files whose
  size and modification time (ns) still match are reused: a changed or
  added file is described and appended, a removed one dropped. Failures
  are indexed too and reported again.

  Ranking is exact (`nearest.nearest`: blocks of the gallery, partial
  selection of each query's `topk`); equal distances keep gallery (sorted
  path) order.

  Args:
    model: a network of any registered family (the output contract of
      `models.registry`).
    variables: its variables.
    gallery_paths: gallery image files.
    query_paths: query image files.
    topk: gallery matches kept per query.
    image_size: network input (height, width).
    flip: average each descriptor with the mirrored image's.
    batch_size: images per forward pass.
    index_folder: the gallery folder whose index to use and update; None
      describes the gallery in memory, without an index.
    check_folder: the folder whose image-check verdict cache covers the
      gallery (see `image_check`); None checks without a cache.
    max_distance: matches farther than this (Euclidean distance between
      descriptors) are not listed; a query without any nearer gets
      ``no_match``. None lists the `topk` whatever their distance.
    progress: print progress lines while describing images.
    log: where messages go.

  Returns:
    a JSON-serialisable dict: ``metric``, ``topk``, ``image_size``,
    ``flip``, ``max_distance``, ``num_gallery`` (readable gallery images),
    ``gallery_index`` (``index``: its folder or None, ``reused``,
    ``described``, ``removed``), ``failures`` (``file``, ``role``,
    ``reason``) and ``queries``: per readable query, in input order,
    ``query``, ``excluded_self``, ``no_match`` (True when `max_distance`
    left no match) and ``matches`` (``rank`` from 1, ``file``,
    ``distance``), nearest first.

  Raises:
    SearchError: when no gallery or no query image is readable.
    ValueError: for a `topk` or `batch_size` below 1 or a negative
      `max_distance`.
  """
  if topk < 1:
    raise ValueError(f'topk must be at least 1, got {topk}')
  if batch_size < 1:
    raise ValueError(f'batch_size must be at least 1, got {batch_size}')
  if max_distance is not None and not max_distance >= 0:
    raise ValueError(f'max_distance must be >= 0, got {max_distance}')
  image_size = tuple(int(v) for v in image_size)
  gallery_paths = [os.path.abspath(p) for p in gallery_paths]
  query_paths = [os.path.abspath(p) for p in query_paths]
  key = gallery_index.cache_key(
      store.model_fingerprint(model, variables), image_size, flip)
  # Every gallery file is checked first (verdicts cached in the gallery
  # folder, see image_check); only the readable ones are described, and the
  # failures go into the index like any other entry.
  unreadable = dict(image_check.check_files(gallery_paths, check_folder, log))

  def describe_gallery(paths):
    descriptors, failures = _describe(
        model, variables, [p for p in paths if p not in unreadable],
        role='gallery', image_size=image_size, flip=flip,
        batch_size=batch_size, progress=progress)
    failures.update((p, unreadable[p]) for p in paths if p in unreadable)
    return descriptors, failures

  index = gallery_index.open_index(
      gallery_paths, key=key, gallery_folder=index_folder,
      describe=describe_gallery, log=log)
  failures = [{'file': p, 'role': 'gallery', 'reason': r}
              for p, r in index.failures.items()]
  gallery = index.paths
  if not gallery:
    for failure in failures:
      log(f'skipped {failure["file"]}: {failure["reason"]}')
    raise SearchError('gallery', f'none of the {len(gallery_paths)} gallery '
                      'images could be read')

  # Queries from the gallery reuse its descriptors and skip themselves.
  same_file = collections.defaultdict(list)
  for position, path in enumerate(gallery):
    same_file[os.path.realpath(path)].append(position)
  failed_gallery = {os.path.realpath(f['file']): f['reason']
                    for f in failures}
  fresh = [p for p in query_paths if os.path.realpath(p) not in same_file
           and os.path.realpath(p) not in failed_gallery]
  query_failures = dict(image_check.check_files(fresh, None, log))
  fresh_descriptors, described_failures = _describe(
      model, variables, [p for p in fresh if p not in query_failures],
      role='query', image_size=image_size, flip=flip, batch_size=batch_size,
      progress=progress)
  query_failures.update(described_failures)
  for path in query_paths:
    reason = query_failures.get(path,
                                failed_gallery.get(os.path.realpath(path)))
    if reason is not None:
      failures.append({'file': path, 'role': 'query', 'reason': reason})
  # A file failing as gallery and as query image is reported once.
  for path, reason in dict((f['file'], f['reason']) for f in failures).items():
    log(f'skipped {path}: {reason}')
  queries, query_descriptors, own_positions = [], [], []
  for path in query_paths:
    own = same_file.get(os.path.realpath(path), [])
    if own:
      query_descriptors.append(index.descriptor(own[0]))
    elif path in fresh_descriptors:
      query_descriptors.append(fresh_descriptors[path])
    else:
      continue
    queries.append(path)
    own_positions.append(own)
  if not queries:
    raise SearchError('query', f'none of the {len(query_paths)} query images '
                      'could be read')

  flat = np.stack(query_descriptors).reshape(len(queries), -1)
  distances, positions = nearest.nearest(
      flat, index.descriptors, topk, rows=index.rows, norms=index.norms,
      exclude=own_positions)
  results = []
  for path, own, row, found in zip(queries, own_positions, distances,
                                   positions):
    kept = found >= 0
    if max_distance is not None:
      kept &= row <= max_distance
    results.append({
        'query': path,
        'excluded_self': bool(own),
        'no_match': max_distance is not None and not kept.any(),
        'matches': [{'rank': rank, 'file': gallery[i],
                     'distance': float(d)}
                    for rank, (i, d) in enumerate(
                        zip(found[kept], row[kept]), start=1)],
    })
  return {'metric': METRIC, 'topk': topk, 'image_size': list(image_size),
          'flip': bool(flip), 'max_distance': max_distance,
          'num_gallery': len(gallery), 'gallery_index': index.info,
          'failures': failures, 'queries': results}


def _parser() -> argparse.ArgumentParser:
  parser = command_line.OneLineArgumentParser(
      prog='python -m sa_reid_jax.tools.search',
      description='Ranks a folder of person crops for query images.')
  parser.add_argument('--checkpoint', required=True,
                      help='model directory (convert_weights.py or training)')
  parser.add_argument('--gallery', required=True,
                      help='folder of gallery images (searched recursively)')
  parser.add_argument('--query', required=True,
                      help='a query image or a folder of them')
  parser.add_argument('--topk', type=command_line.positive_int_argument,
                      default=10,
                      help='matches kept per query (default 10)')
  parser.add_argument('--output', default='search_results',
                      help='where results.json and ranks.png go (default '
                      'search_results)')
  parser.add_argument('--image_size', type=command_line.image_size_argument,
                      default=None,
                      help='network input H,W (default: the size recorded '
                      'with the model)')
  parser.add_argument('--flip', action='store_true',
                      help='average descriptors with the mirrored images')
  parser.add_argument('--batch_size', type=command_line.positive_int_argument,
                      default=64,
                      help='images per forward pass (default 64)')
  parser.add_argument('--max_distance', default=None,
                      help='a query whose nearest gallery image is farther '
                      'than this descriptor distance gets "no match", and '
                      'farther matches are not listed; fpr:RATE (e.g. '
                      'fpr:1e-3) takes the distance threshold at that '
                      'false-positive rate from the metrics.json of the '
                      "model's evaluation (default: no limit)")
  command_line.add_verbosity_argument(parser)
  return parser


def _recorded_metrics(model_dir: str) -> Optional[str]:
  """The metrics.json of the model's evaluation: eval.py writes it into
  the model directory, train.py into the training workdir (its parent)."""
  for folder in (model_dir, os.path.dirname(os.path.abspath(model_dir))):
    path = os.path.join(folder, METRICS_FILE)
    if os.path.isfile(path):
      return path
  return None


def max_distance_threshold(value: Optional[str], model_dir: str,
                           image_size: Sequence[int],
                           flip: bool) -> Optional[float]:
  """The distance limit `--max_distance` asks for.

  Args:
    value: the flag: None, a distance >= 0, or ``fpr:RATE``: the threshold
      the model's evaluation recorded at false-positive rate RATE
      (``metrics['verification']``: a query-gallery pair is the same person
      when its distance is <= the threshold; see
      `evaluation.verification`), from the first metrics.json found in
      `model_dir` or its parent.
    model_dir: the model directory searched with.
    image_size: the search's network input (height, width).
    flip: the search's flip setting.

  Returns:
    the distance, or None for no limit.

  Raises:
    ValueError: naming --max_distance, for a value that is neither, no
      metrics.json, one without verification figures, an FPR not evaluated
      or not estimable there, or an evaluation at another image size, flip
      setting or metric than this search.
  """
  if value is None:
    return None
  flag = '--max_distance'
  if not value.startswith(FPR_PREFIX):
    try:
      distance = float(value)
    except ValueError:
      distance = -1.0
    if not 0 <= distance < float('inf'):
      raise ValueError(f'{flag}: expected a distance >= 0 or {FPR_PREFIX}RATE '
                       f'(e.g. {FPR_PREFIX}1e-3), got {value!r}')
    return distance
  try:
    rate = float(value[len(FPR_PREFIX):])
  except ValueError:
    rate = -1.0
  if not 0 < rate < 1:
    raise ValueError(f'{flag}: expected {FPR_PREFIX}RATE with 0 < RATE < 1, '
                     f'got {value!r}')
  path = _recorded_metrics(model_dir)
  if path is None:
    raise ValueError(f'{flag}: {value} needs the model\'s evaluation, but '
                     f'neither {model_dir} nor its parent holds a '
                     f'{METRICS_FILE} (run eval.py on this model first, or '
                     'give a distance)')
  try:
    with open(path) as f:
      metrics = json.load(f)
    if 'final' in metrics:
      # A training workdir's: the final evaluation of the main dataset
      # (null for a train-only one).
      if metrics['final'] is None:
        raise ValueError(
            f'{flag}: {path} records no evaluation of the main dataset (it '
            'was train-only): run eval.py on this model with a dataset that '
            'has query and gallery splits, or give a distance')
      metrics = metrics['final']
    verification = metrics.get('verification')
    settings = metrics.get('settings', {})
  except (OSError, ValueError, AttributeError, TypeError) as e:
    if str(e).startswith(flag):
      raise
    raise ValueError(f'{flag}: cannot read {path} ({e})') from None
  if not isinstance(verification, dict) or not {'fpr', 'threshold'} <= set(
      verification):
    raise ValueError(f'{flag}: {path} records no verification thresholds '
                     '(written before evaluations recorded them: evaluate '
                     'the model again with eval.py, or give a distance)')
  evaluated = [float(f) for f in verification['fpr']]
  matching = [i for i, f in enumerate(evaluated)
              if abs(f - rate) <= 1e-9 * rate]
  if not matching:
    raise ValueError(f'{flag}: {path} has thresholds at FPR '
                     f'{", ".join(f"{f:g}" for f in evaluated)}, not {rate:g} '
                     '(config.eval.verification_fprs sets them)')
  threshold = verification['threshold'][matching[0]]
  if threshold is None:
    raise ValueError(f'{flag}: {path} holds no threshold at FPR {rate:g} '
                     '(too few negative pairs in that evaluation)')
  differences = []
  if list(settings.get('image_size', image_size)) != list(image_size):
    differences.append(f'image size {settings["image_size"]}, this search '
                       f'{list(image_size)}')
  if bool(settings.get('flip', flip)) != bool(flip):
    differences.append(f'flip {bool(settings["flip"])}, this search '
                       f'{bool(flip)}')
  if settings.get('metric', METRIC) != METRIC:
    differences.append(f'metric {settings["metric"]}, this search {METRIC}')
  if differences:
    raise ValueError(f'{flag}: the threshold in {path} was evaluated with '
                     f'{"; ".join(differences)}: its distances are not this '
                     'search\'s (search with its --image_size and --flip, '
                     f'evaluate with config.eval.metric={METRIC!r} (search\'s '
                     'only metric), or give a distance)')
  return float(threshold)


def main(argv: Optional[Sequence[str]] = None) -> None:
  """The command line; exits with one error line on bad input.

  Args:
    argv: the arguments, without the program name (default sys.argv[1:]).
  """
  parser = _parser()
  args = parser.parse_args(argv)
  command_line.set_library_verbosity(args.verbosity)
  program = parser.prog
  try:
    # Before any image is checked or described.
    outputs.check_writable(args.output, '--output', directory=True)
    # A ranks.png from an earlier run with --output inside the gallery is
    # not a gallery image.
    grid_file = os.path.realpath(os.path.join(args.output, 'ranks.png'))
    gallery = [p for p in image_files.list_images(args.gallery, '--gallery')
               if os.path.realpath(p) != grid_file]
    if not gallery:
      raise ValueError(f'--gallery: {args.gallery} holds no image but the '
                       'ranks.png of --output')
    queries = image_files.list_images(args.query, '--query')
  except ValueError as e:
    sys.exit(f'{program}: error: {e}')
  try:
    args.checkpoint = store.resolve_model_directory(args.checkpoint)
    image_size = store.input_size(args.checkpoint, args.image_size)
    model, variables = store.load_model(args.checkpoint)
  except store.ModelStoreError as e:
    sys.exit(f'{program}: error: --checkpoint: {e}')
  except Exception as e:  # pylint: disable=broad-except
    # Orbax and TensorStore report broken checkpoints with many error types.
    sys.exit(f'{program}: error: --checkpoint: cannot load '
             f'{args.checkpoint}: {type(e).__name__}: {e}')
  try:
    registry.check_input_size(model, image_size, '--image_size')
    max_distance = max_distance_threshold(args.max_distance, args.checkpoint,
                                          image_size, args.flip)
  except ValueError as e:
    sys.exit(f'{program}: error: {e}')
  folder = (args.gallery if os.path.isdir(args.gallery)
            else os.path.dirname(os.path.abspath(args.gallery)))
  print(f'model {args.checkpoint}; '
        f'{gallery_index.plural(len(gallery), "gallery file")}, '
        f'{gallery_index.plural(len(queries), "query file")}')
  try:
    results = search(model, variables, gallery, queries, topk=args.topk,
                     image_size=image_size, flip=args.flip,
                     batch_size=args.batch_size,
                     index_folder=folder, check_folder=folder,
                     max_distance=max_distance)
  except SearchError as e:
    sys.exit(f'{program}: error: --{e.role}: {e}')
  num_queries = len(results['queries'])
  drawn = min(num_queries, drawing.MAX_GRID_ROWS)
  columns = min(args.topk, drawing.MAX_GRID_MATCHES)
  results = {'checkpoint': os.path.abspath(args.checkpoint),
             'gallery': os.path.abspath(args.gallery),
             'query': os.path.abspath(args.query),
             'grid': {'file': 'ranks.png', 'queries_drawn': drawn,
                      'matches_drawn': columns},
             **results}
  try:
    os.makedirs(args.output, exist_ok=True)
    results_path = os.path.join(args.output, 'results.json')
    with open(results_path, 'w') as f:
      json.dump(results, f, indent=2)
    grid_path = os.path.join(args.output, 'ranks.png')
    drawing.draw_grid(
        results, thumbnail=drawing.thumbnail_size(image_size)).save(grid_path)
  except OSError as e:
    sys.exit(f'{program}: error: --output: cannot write {args.output}: {e}')
  print(f'wrote {results_path}')
  notes = []
  if drawn < num_queries:
    notes.append(f'first {drawn} of {num_queries} queries')
  if columns < args.topk:
    notes.append(f'top {columns} of {args.topk} matches')
  print(f'wrote {grid_path}' + (f' ({", ".join(notes)})' if notes else ''))


if __name__ == '__main__':
  main()
