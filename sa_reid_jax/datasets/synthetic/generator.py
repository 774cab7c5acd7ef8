"""Writes a synthetic re-id dataset in Market-1501 layout.

Identities are procedurally drawn pedestrians (``people``) seen by several
cameras that differ in background, illumination, colour cast, blur, noise
and the viewpoints they see. ``--difficulty`` picks the preset
(``settings``): ``hard`` (the default: textured clothing, carried objects,
occlusion by people and objects, clutter, misplaced boxes, low resolution,
motion blur, strong camera shifts, near-twin identities) or ``easy`` (the
original stick figures). The settings used are written to
``generator_settings.json`` in the dataset folder. Train and test
identities are disjoint.
Every test identity is seen by at least two cameras; its queries come from
some of those cameras and its gallery images from all of them, so each query
has true matches in another camera. The gallery also holds distractors
(person id 0000: people outside the test set, badly cropped) and junk
(person id -1: bare background or fragments).

Command line::

  python -m sa_reid_jax.datasets.synthetic --output /tmp/synthetic_reid \\
      --num_ids 100 --seed 0 --difficulty hard
"""

import argparse
import dataclasses
import json
import os

import numpy as np

from sa_reid_jax.datasets import market_layout
from sa_reid_jax.datasets.synthetic import people
from sa_reid_jax.datasets.synthetic import scenes
from sa_reid_jax.datasets.synthetic.settings import DIFFICULTIES

_MAX_PERSON_ID = 9999  # four digits in Market-1501 file names
SETTINGS_JSON = 'generator_settings.json'


@dataclasses.dataclass(frozen=True)
class SyntheticSummary:
  """What ``generate`` wrote.

  Attributes:
    root: the dataset folder.
    train_person_ids: sorted person ids of the train split.
    test_person_ids: sorted person ids of the query/gallery identities.
    num_train_images, num_query_images, num_gallery_images: image counts
      (the gallery count includes distractors and junk).
    num_distractor_images, num_junk_images: gallery images with person id
      0 and -1.
  """
  root: str
  train_person_ids: tuple[int, ...]
  test_person_ids: tuple[int, ...]
  num_train_images: int
  num_query_images: int
  num_gallery_images: int
  num_distractor_images: int
  num_junk_images: int


def _check_arguments(num_ids, num_test_ids, num_cameras, images_per_camera,
                     query_probability, num_distractors, num_junk, height,
                     width, jpeg_quality, difficulty):
  if difficulty not in DIFFICULTIES:
    raise ValueError(f'difficulty must be one of {sorted(DIFFICULTIES)}, got '
                     f'{difficulty!r}')
  if num_ids < 1 or num_test_ids < 1:
    raise ValueError('num_ids and num_test_ids must be at least 1, got '
                     f'{num_ids} and {num_test_ids}')
  if num_ids + num_test_ids > _MAX_PERSON_ID:
    raise ValueError(f'num_ids + num_test_ids must be at most {_MAX_PERSON_ID}'
                     f' (four-digit person ids), got {num_ids + num_test_ids}')
  if not 2 <= num_cameras <= 99:
    raise ValueError('num_cameras must be in [2, 99] (queries need a second '
                     f'camera), got {num_cameras}')
  low, high = images_per_camera
  if not 1 <= low <= high:
    raise ValueError('images_per_camera must be (min, max) with '
                     f'1 <= min <= max, got {images_per_camera}')
  if not 0 < query_probability <= 1:
    raise ValueError(f'query_probability must be in (0, 1], got '
                     f'{query_probability}')
  if num_distractors < 0 or num_junk < 0:
    raise ValueError('num_distractors and num_junk must be >= 0, got '
                     f'{num_distractors} and {num_junk}')
  if height < 32 or width < 16:
    raise ValueError(f'image size must be at least 32x16, got {height}x{width}')
  if not 1 <= jpeg_quality <= 100:
    raise ValueError(f'jpeg_quality must be in [1, 100], got {jpeg_quality}')


def _prepare_folders(root: str) -> dict[str, str]:
  folders = {}
  for split, name in market_layout.SPLIT_FOLDERS.items():
    folder = os.path.join(root, name)
    if os.path.isdir(folder) and os.listdir(folder):
      raise ValueError(f'{folder}: already holds files; choose an empty '
                       'output folder')
    os.makedirs(folder, exist_ok=True)
    folders[split] = folder
  return folders


class _Planner:
  """Lists the images to write, with Market-style names.

  Names look like ``0002_c1s1_000451_03.jpg``: person, camera, sequence,
  frame and box index. Frames increase per camera, so names are unique.
  """

  def __init__(self, folders: dict[str, str], rng: np.random.Generator,
               seed: int):
    self.folders = folders
    self.rng = rng
    self.seed = seed
    self.frames = {}
    self.jobs = []
    self.counts = {split: 0 for split in folders}

  def add(self, split: str, person_id: int, camera: int,
          person: people.Person | None, scale: float | None = None,
          fragment: bool = False):
    frame = self.frames.get(camera, 0) + int(self.rng.integers(1, 60))
    self.frames[camera] = frame
    sequence = 1 + frame // 20000
    box = int(self.rng.integers(1, 9))
    person_name = '-1' if person_id < 0 else f'{person_id:04d}'
    name = f'{person_name}_c{camera + 1}s{sequence}_{frame:06d}_{box:02d}.jpg'
    self.jobs.append(scenes.ImageJob(
        path=os.path.join(self.folders[split], name), person=person,
        camera=camera, seed=(self.seed, len(self.jobs)), scale=scale,
        fragment=fragment))
    self.counts[split] += 1


def generate(output_dir: str, *, num_ids: int = 100,
             num_test_ids: int | None = None, num_cameras: int = 6,
             images_per_camera: tuple[int, int] = (1, 4),
             query_probability: float = 0.5,
             num_distractors: int | None = None, num_junk: int | None = None,
             height: int = 128, width: int = 64, jpeg_quality: int = 90,
             seed: int = 0, difficulty: str = 'hard') -> SyntheticSummary:
  """Writes a synthetic dataset in Market-1501 layout; same seed, same files.

  Args:
    output_dir: dataset folder to create (its split folders must be empty or
      absent).
    num_ids: identities in the train split (default 100).
    num_test_ids: identities in query/gallery; None means ``num_ids``.
    num_cameras: cameras (default 6); each identity is seen by 2 to all.
    images_per_camera: (min, max) images of an identity in each camera that
      sees it, per split (default (1, 4): about 10 per identity).
    query_probability: chance that a camera seeing a test identity also
      contributes one query of it (at least one query per identity).
    num_distractors: person-0000 gallery images; None means num_test_ids // 2.
    num_junk: person -1 gallery images; None means num_test_ids // 4.
    height: image height (default 128, as Market-1501).
    width: image width (default 64).
    jpeg_quality: JPEG quality of the written files (default 90).
    seed: the seed everything is drawn from.
    difficulty: a preset of ``settings.DIFFICULTIES``: ``'hard'``
      (default; calibrated for the demo network) or ``'easy'`` (the
      original generator, same files as before the presets existed).

  Returns:
    a ``SyntheticSummary`` of what was written.

  Raises:
    ValueError: naming the argument at fault, or an output folder that
      already holds files.
  """
  num_test_ids = num_ids if num_test_ids is None else num_test_ids
  num_distractors = (num_test_ids // 2 if num_distractors is None
                     else num_distractors)
  num_junk = num_test_ids // 4 if num_junk is None else num_junk
  _check_arguments(num_ids, num_test_ids, num_cameras, images_per_camera,
                   query_probability, num_distractors, num_junk, height, width,
                   jpeg_quality, difficulty)
  settings = DIFFICULTIES[difficulty]
  folders = _prepare_folders(output_dir)
  rng = np.random.default_rng(seed)
  person_ids = 1 + rng.permutation(num_ids + num_test_ids)
  train_ids = np.sort(person_ids[:num_ids])
  test_ids = np.sort(person_ids[num_ids:])
  cameras = [people.draw_camera(rng, height, width, settings)
             for _ in range(num_cameras)]
  planner = _Planner(folders, rng, seed)
  low, high = images_per_camera

  def seen_by():
    count = int(rng.integers(2, num_cameras + 1))
    return np.sort(rng.choice(num_cameras, size=count, replace=False))

  # Near twins are drawn within a split: train and test people stay apart.
  train_people, test_people = [], []
  for person_id in train_ids:
    person = people.draw_identity(rng, train_people, settings)
    train_people.append(person)
    for camera in seen_by():
      for _ in range(rng.integers(low, high + 1)):
        planner.add('train', int(person_id), int(camera), person)

  for person_id in test_ids:
    person = people.draw_identity(rng, test_people, settings)
    test_people.append(person)
    seen = seen_by()
    asks = rng.random(len(seen)) < query_probability
    if not asks.any():
      asks[rng.integers(len(seen))] = True
    for camera, ask in zip(seen, asks):
      if ask:
        planner.add('query', int(person_id), int(camera), person)
      for _ in range(rng.integers(low, high + 1)):
        planner.add('gallery', int(person_id), int(camera), person)

  for _ in range(num_distractors):
    camera = int(rng.integers(num_cameras))
    bad_crop = rng.random() < 0.5
    planner.add('gallery', market_layout.DISTRACTOR_PERSON_ID, camera,
                people.draw_person(rng, settings),
                scale=float(rng.uniform(1.3, 1.8)) if bad_crop else None,
                fragment=not bad_crop)

  for _ in range(num_junk):
    camera = int(rng.integers(num_cameras))
    person = (people.draw_person(rng, settings)
              if rng.random() < 0.5 else None)
    planner.add('gallery', market_layout.JUNK_PERSON_ID, camera, person,
                scale=float(rng.uniform(0.4, 0.6)), fragment=True)

  scenes.render_and_save(planner.jobs, cameras, jpeg_quality, settings)
  with open(os.path.join(output_dir, SETTINGS_JSON), 'w') as file:
    json.dump({'arguments': {
        'num_ids': num_ids, 'num_test_ids': num_test_ids,
        'num_cameras': num_cameras,
        'images_per_camera': list(images_per_camera),
        'query_probability': query_probability,
        'num_distractors': num_distractors, 'num_junk': num_junk,
        'height': height, 'width': width, 'jpeg_quality': jpeg_quality,
        'seed': seed, 'difficulty': difficulty},
               'difficulty_settings': dataclasses.asdict(settings)},
              file, indent=2)

  return SyntheticSummary(
      root=output_dir,
      train_person_ids=tuple(int(i) for i in train_ids),
      test_person_ids=tuple(int(i) for i in test_ids),
      num_train_images=planner.counts['train'],
      num_query_images=planner.counts['query'],
      num_gallery_images=planner.counts['gallery'],
      num_distractor_images=num_distractors,
      num_junk_images=num_junk)


def _parse_arguments(argv):
  parser = argparse.ArgumentParser(
      prog='python -m sa_reid_jax.datasets.synthetic',
      description='Write a synthetic person re-id dataset in Market-1501 '
      'layout (bounding_box_train/, query/, bounding_box_test/).')
  parser.add_argument('--output', required=True, help='dataset folder')
  parser.add_argument('--num_ids', type=int, default=100,
                      help='train identities (default 100)')
  parser.add_argument('--num_test_ids', type=int, default=None,
                      help='query/gallery identities (default: --num_ids)')
  parser.add_argument('--num_cameras', type=int, default=6)
  parser.add_argument('--min_images_per_camera', type=int, default=1)
  parser.add_argument('--max_images_per_camera', type=int, default=4)
  parser.add_argument('--query_probability', type=float, default=0.5)
  parser.add_argument('--num_distractors', type=int, default=None,
                      help='default: half the test identities')
  parser.add_argument('--num_junk', type=int, default=None,
                      help='default: a quarter of the test identities')
  parser.add_argument('--height', type=int, default=128)
  parser.add_argument('--width', type=int, default=64)
  parser.add_argument('--jpeg_quality', type=int, default=90)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--difficulty', choices=sorted(DIFFICULTIES),
                      default='hard',
                      help='generator preset (default hard; easy: the '
                      'original, simpler people)')
  return parser, parser.parse_args(argv)


def main(argv=None) -> int:
  """Command-line entry point; returns the exit status."""
  parser, args = _parse_arguments(argv)
  try:
    summary = generate(
        args.output, num_ids=args.num_ids, num_test_ids=args.num_test_ids,
        num_cameras=args.num_cameras,
        images_per_camera=(args.min_images_per_camera,
                           args.max_images_per_camera),
        query_probability=args.query_probability,
        num_distractors=args.num_distractors, num_junk=args.num_junk,
        height=args.height, width=args.width, jpeg_quality=args.jpeg_quality,
        seed=args.seed, difficulty=args.difficulty)
  except (ValueError, OSError) as error:
    parser.error(str(error))
  print(f'{summary.root} ({args.difficulty}): '
        f'{len(summary.train_person_ids)} train ids '
        f'({summary.num_train_images} images), '
        f'{len(summary.test_person_ids)} test ids '
        f'({summary.num_query_images} query, {summary.num_gallery_images} '
        f'gallery images incl. {summary.num_distractor_images} distractors '
        f'and {summary.num_junk_images} junk)')
  return 0
