r"""Retrieval on any folder of person crops: no person ids or cameras needed.

  python -m sa_reid_jax.tools.search --checkpoint=DIR --gallery=FOLDER \
      --query=IMAGE_OR_FOLDER [--topk=10] [--output=DIR] [--image_size=H,W] \
      [--flip] [--batch_size=64]

Ranks the gallery images by the Euclidean distance between their part
descriptors and each query's (the paper's retrieval distance) and writes
OUTPUT/results.json (the top-k gallery files of every query, with distances
and ranks, and every file that could not be read) and OUTPUT/ranks.png (one
row per query, for the first `drawing.MAX_GRID_ROWS` queries: the query, a
gap, then its top-k matches, at most `drawing.MAX_GRID_MATCHES`, with their
distances underneath).

A query that is itself a gallery file (the same file after resolving the
absolute path and symlinks) is left out of its own results, so a query folder
may be the gallery folder; an identical copy elsewhere is still a match, at
a distance of about 0 (up to ~1e-3: `evaluation.pairwise_distances` expands
|a - b|^2 in float32).

Gallery descriptors are cached in FOLDER/.sa_reid_cache/ (list_images skips
hidden folders) and reused while the model and the files are unchanged; see
`descriptor_cache`. Before that, every gallery and query file is checked
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
from sa_reid_jax import evaluation  # pylint: disable=g-import-not-at-top
from sa_reid_jax.datasets import image_check  # pylint: disable=g-import-not-at-top
from sa_reid_jax.models import registry  # pylint: disable=g-import-not-at-top
from sa_reid_jax.models import store  # pylint: disable=g-import-not-at-top
from sa_reid_jax.tools import descriptor_cache  # pylint: disable=g-import-not-at-top
from sa_reid_jax.tools import drawing  # pylint: disable=g-import-not-at-top
from sa_reid_jax.tools import image_files  # pylint: disable=g-import-not-at-top
from sa_reid_jax.tools import outputs  # pylint: disable=g-import-not-at-top

METRIC = 'euclidean'


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
           batch_size: int = 64, cache_dir: Optional[str] = None,
           check_folder: Optional[str] = None, progress: bool = True,
           log: Callable[[str], None] = print) -> dict[str, Any]:
  """Ranks gallery images for each query image by descriptor distance.

  A query that is itself one of the gallery files (same path after
  ``os.path.realpath``) is excluded from its own results. Every file is
  checked readable before any is described (`image_check.check_files`);
  unreadable files are skipped, logged (``skipped FILE: reason``) and listed
  under ``failures``.

  With `cache_dir`, gallery descriptors are kept in
  ``cache_dir/<key>.npz`` (see `descriptor_cache`). The key covers
  `descriptor_cache.model_fingerprint` (config and variable values),
  `image_size`, `flip` and `descriptor_cache.CACHE_VERSION`; only files whose
  size and modification time (ns) still match are reused: a changed or added
  file is described again, a removed one dropped. Failures are cached too and
  reported again.

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
    cache_dir: folder of the gallery descriptor cache; None disables it.
    check_folder: the folder whose image-check verdict cache covers the
      gallery (see `image_check`); None checks without a cache.
    progress: print progress lines while describing images.
    log: where messages go.

  Returns:
    a JSON-serialisable dict: ``metric``, ``topk``, ``image_size``,
    ``flip``, ``num_gallery`` (readable gallery images), ``gallery_cache``
    (``file``, ``reused``, ``described``), ``failures`` (``file``, ``role``,
    ``reason``) and ``queries``: per readable query, in input order,
    ``query``, ``excluded_self`` and ``matches`` (``rank`` from 1, ``file``,
    ``distance``), nearest first.

  Raises:
    SearchError: when no gallery or no query image is readable.
    ValueError: for a `topk` or `batch_size` below 1.
  """
  if topk < 1:
    raise ValueError(f'topk must be at least 1, got {topk}')
  if batch_size < 1:
    raise ValueError(f'batch_size must be at least 1, got {batch_size}')
  image_size = tuple(int(v) for v in image_size)
  gallery_paths = [os.path.abspath(p) for p in gallery_paths]
  query_paths = [os.path.abspath(p) for p in query_paths]
  key = descriptor_cache.cache_key(
      descriptor_cache.model_fingerprint(model, variables), image_size, flip)
  # Every gallery file is checked first (verdicts cached in the gallery
  # folder, see image_check); only the readable ones are described, and the
  # failures go into the descriptor cache like any other entry.
  unreadable = dict(image_check.check_files(gallery_paths, check_folder, log))

  def describe_gallery(paths):
    descriptors, failures = _describe(
        model, variables, [p for p in paths if p not in unreadable],
        role='gallery', image_size=image_size, flip=flip,
        batch_size=batch_size, progress=progress)
    failures.update((p, unreadable[p]) for p in paths if p in unreadable)
    return descriptors, failures

  entries, cache_info = descriptor_cache.gallery_entries(
      gallery_paths, key=key, cache_dir=cache_dir, describe=describe_gallery,
      log=log)
  failures = [{'file': p, 'role': 'gallery', 'reason': e.reason}
              for p, e in entries.items() if e.reason is not None]
  gallery = [p for p in gallery_paths if entries[p].reason is None]
  if not gallery:
    for failure in failures:
      log(f'skipped {failure["file"]}: {failure["reason"]}')
    raise SearchError('gallery', f'none of the {len(gallery_paths)} gallery '
                      'images could be read')
  gallery_descriptors = np.stack([entries[p].descriptor for p in gallery])

  # Queries from the gallery reuse its descriptors and skip themselves.
  same_file = collections.defaultdict(list)
  for index, path in enumerate(gallery):
    same_file[os.path.realpath(path)].append(index)
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
  queries, query_descriptors = [], []
  for path in query_paths:
    own = same_file.get(os.path.realpath(path))
    if own:
      queries.append(path)
      query_descriptors.append(gallery_descriptors[own[0]])
    elif path in fresh_descriptors:
      queries.append(path)
      query_descriptors.append(fresh_descriptors[path])
  if not queries:
    raise SearchError('query', f'none of the {len(query_paths)} query images '
                      'could be read')

  distances = evaluation.pairwise_distances(
      np.stack(query_descriptors), gallery_descriptors, METRIC)
  results = []
  for path, row in zip(queries, distances):
    own = same_file.get(os.path.realpath(path), [])
    ranked = row.copy()
    ranked[own] = np.inf
    # Stable sort: equal distances keep gallery (sorted path) order.
    order = np.argsort(ranked, kind='stable')[:min(topk, len(row) - len(own))]
    results.append({
        'query': path,
        'excluded_self': bool(own),
        'matches': [{'rank': rank, 'file': gallery[i],
                     'distance': float(row[i])}
                    for rank, i in enumerate(order, start=1)],
    })
  return {'metric': METRIC, 'topk': topk, 'image_size': list(image_size),
          'flip': bool(flip), 'num_gallery': len(gallery),
          'gallery_cache': cache_info, 'failures': failures,
          'queries': results}


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
  command_line.add_verbosity_argument(parser)
  return parser


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
  except ValueError as e:
    sys.exit(f'{program}: error: {e}')
  folder = (args.gallery if os.path.isdir(args.gallery)
            else os.path.dirname(os.path.abspath(args.gallery)))
  print(f'model {args.checkpoint}; '
        f'{descriptor_cache.plural(len(gallery), "gallery file")}, '
        f'{descriptor_cache.plural(len(queries), "query file")}')
  try:
    results = search(model, variables, gallery, queries, topk=args.topk,
                     image_size=image_size, flip=args.flip,
                     batch_size=args.batch_size,
                     cache_dir=os.path.join(folder,
                                            descriptor_cache.CACHE_FOLDER),
                     check_folder=folder)
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
