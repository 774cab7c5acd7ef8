"""Composes the synthetic crops: the harder scenes, and writing the files.

``render_hard`` draws one detection-style crop the way real pedestrian
crops go wrong: small bystanders in the scene, a passer-by partly in front
of or behind the person, objects covering part of them (railing, bench,
pole, car), a misplaced box (person cut off or lost in a loose crop), a
leaning pose, a light gradient, motion blur, a low-resolution camera with
its own tone curve, colour cast and noise. How much of each: the
``Difficulty`` (``settings``).
"""

import dataclasses

import numpy as np
from PIL import Image

from sa_reid_jax.datasets.synthetic import effects
from sa_reid_jax.datasets.synthetic import painting
from sa_reid_jax.datasets.synthetic import people
from sa_reid_jax.datasets.synthetic.people import VIEWS, Camera, Person
from sa_reid_jax.datasets.synthetic.settings import Difficulty


def _paint_figure(image: np.ndarray, person: Person, view: str,
                  rng: np.random.Generator, difficulty: Difficulty,
                  scale: float, centre: float, top: float) -> np.ndarray:
  """Paints one person (any size, position, lean) and returns the image."""
  height, width, _ = image.shape
  body_height = person.height * height * scale
  side = view == 'side'
  half_width = 0.24 * width * person.build * scale * (0.75 if side else 1.0)
  stride = (rng.uniform(0, difficulty.max_stride) * half_width *
            (3 if side else 1))
  if rng.random() >= difficulty.item_visibility:
    person = dataclasses.replace(person, bag=0)
  columns = (np.arange(width, dtype=np.float32) + 0.5 - centre) / (
      2.5 * half_width)
  shade = 1 - 0.3 * np.minimum(columns * columns, 1)
  layer = np.full_like(image, np.nan)
  mirrored = side and rng.random() < 0.5
  if mirrored:  # a side view faces right; mirrored, it faces left
    layer, centre, shade = layer[:, ::-1], width - centre, shade[::-1]
  painting.paint_person(
      painting.Canvas(layer, shade, person.texture), person, view,
      top, body_height, centre, half_width, stride)
  if mirrored:
    layer = layer[:, ::-1]
  lean = rng.uniform(-difficulty.max_lean, difficulty.max_lean)
  return effects.composite_leaning(image, layer, lean, top + body_height)


def _occlude(image: np.ndarray, rng: np.random.Generator):
  """Covers part of the crop with a railing or bench (bottom), a pole, a
  car (a large low shape) or a wall edge (one side)."""
  height, width, _ = image.shape
  colour = people.palette_colour(rng, np.concatenate(
      [people.SCENE_COLOURS, people.CLOTHING_COLOURS]), 15)
  kind = rng.integers(4)
  if kind == 0:  # railing or bench: bars across the lower part
    top = height - int(height * rng.uniform(0.15, 0.4))
    image[top:top + 3] = colour
    for bar in range(top, height, int(rng.integers(4, 9))):
      image[bar:bar + 2] = colour
  elif kind == 1:  # pole or sign post
    x0 = int(rng.integers(0, width - 4))
    image[:, x0:x0 + int(rng.integers(3, 10))] = colour
  elif kind == 2:  # car: a wide rounded shape over the lower half
    top = height - int(height * rng.uniform(0.3, 0.5))
    rows = np.arange(top, height)[:, None]
    cols = np.arange(width)[None, :]
    reach = width * rng.uniform(0.6, 1.2)
    inside = (cols - rng.uniform(0, width)) ** 2 < reach ** 2 * np.minimum(
        1, (rows - top + 2) / 8)
    image[top:][inside] = colour
  else:  # wall edge on one side
    cover = int(width * rng.uniform(0.2, 0.45))
    if rng.random() < 0.5:
      image[:, :cover] = colour
    else:
      image[:, width - cover:] = colour


def render_hard(person: Person | None, camera: Camera,
                rng: np.random.Generator, difficulty: Difficulty,
                scale: float | None = None,
                fragment: bool = False) -> np.ndarray:
  """Renders one crop of a harder scene; arguments as ``render``.

  Args:
    person: who to draw; None draws only the scene (a junk detection).
    camera: the camera; its background fixes the image size.
    rng: per-image randomness.
    difficulty: how strong each effect is.
    scale: person size relative to a normal detection; None draws it from
      the camera's scale range widened by ``difficulty.scale_spread``.
    fragment: shift the person far off centre (a badly placed box).

  Returns:
    uint8 image (height, width, 3).
  """
  image = painting.background_window(camera, rng)
  height, width, _ = image.shape
  if rng.random() < difficulty.bystander_probability:
    for _ in range(int(rng.integers(1, 4))):
      far = rng.uniform(0.25, 0.5)
      image = _paint_figure(
          image, people.draw_person(rng, difficulty),
          VIEWS[rng.integers(len(VIEWS))], rng, difficulty, far,
          rng.uniform(0, width), rng.uniform(0.05, 0.35) * height)
  passerby = rng.random() < difficulty.passerby_probability
  in_front = rng.random() < 0.6

  def add_passerby(image):
    side = rng.choice((-1, 1))
    return _paint_figure(
        image, people.draw_person(rng, difficulty),
        VIEWS[rng.integers(len(VIEWS))], rng, difficulty,
        rng.uniform(0.9, 1.2) if in_front else rng.uniform(0.7, 0.95),
        width / 2 + side * rng.uniform(0.45, 0.85) * width,
        rng.uniform(0.0, 0.1) * height)

  if passerby and not in_front:
    image = add_passerby(image)
  if person is not None:
    view = VIEWS[rng.choice(len(VIEWS), p=camera.view_probabilities)]
    if scale is None:
      low, high = camera.scale_range
      scale = rng.uniform(low - difficulty.scale_spread,
                          high + difficulty.scale_spread)
    body_height = person.height * height * scale
    top = (height - body_height) / 2 + rng.normal(
        0, 2.0 + difficulty.top_jitter * height)
    centre = width / 2 + rng.normal(0, 2.0 + difficulty.centre_jitter * width)
    if fragment:
      centre += rng.choice((-1, 1)) * rng.uniform(0.3, 0.5) * width
      top += rng.uniform(-0.3, 0.3) * height
    image = _paint_figure(image, person, view, rng, difficulty, scale, centre,
                          top)
  if passerby and in_front:
    image = add_passerby(image)
  if rng.random() < difficulty.occlusion_probability:
    _occlude(image, rng)
  image = effects.illumination(image, rng,
                               difficulty.illumination_gradient)
  image = effects.box_blur(image, camera.blur_passes)
  if rng.random() < difficulty.motion_blur_probability:
    image = effects.motion_blur(
        image, int(rng.integers(2, difficulty.motion_blur_length + 1)))
  image = effects.low_resolution(image, camera.resolution)
  image = image * (camera.gain * rng.uniform(0.9, 1.1) * camera.colour_cast)
  image = effects.tone(image, camera.gamma)
  noise_shift = int(rng.integers(0, width + 1))
  image += rng.choice((-1, 1)) * camera.noise[:, noise_shift:noise_shift +
                                              width]
  image += camera.offset + 0.5  # +0.5: round to nearest on the uint8 cast
  return np.clip(image, 0, 255, out=image).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class ImageJob:
  """One image to render and save.

  Attributes:
    path: where to write the JPEG.
    person: who to draw (None: bare scene).
    camera: index into the camera list.
    seed: seeds this image's own random generator (view, pose, noise...).
    scale: see ``render``.
    fragment: see ``render``.
  """
  path: str
  person: Person | None
  camera: int
  seed: tuple[int, ...]
  scale: float | None = None
  fragment: bool = False


def render_and_save(jobs: list[ImageJob], cameras: list[Camera],
                    jpeg_quality: int, difficulty: Difficulty) -> int:
  """Renders jobs and writes them as JPEG files.

  Every image depends only on its job (its own seed), not on the order in
  which jobs are rendered.

  Args:
    jobs: the images.
    cameras: the cameras that ``ImageJob.camera`` indexes.
    jpeg_quality: JPEG quality, 1-100.
    difficulty: ``EASY`` renders with ``painting.render`` (the
      original images), anything else with ``render_hard``.

  Returns:
    the number of files written.
  """
  for job in jobs:
    rng = np.random.default_rng(job.seed)
    camera = cameras[job.camera]
    if difficulty.is_easy:
      image = painting.render(
          job.person, camera, rng, scale=job.scale,
          occlusion_probability=difficulty.occlusion_probability,
          fragment=job.fragment)
    else:
      image = render_hard(job.person, camera, rng, difficulty,
                          scale=job.scale, fragment=job.fragment)
    with open(job.path, 'wb') as file:
      Image.fromarray(image).save(file, format='JPEG', quality=jpeg_quality)
  return len(jobs)
