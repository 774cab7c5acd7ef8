"""Procedurally drawn pedestrians seen by procedurally drawn cameras.

This is the renderer behind ``synthetic.py``. A ``Person`` is a set of
appearance attributes (clothing colours and patterns, hair, bag, build), each
drawn from a small palette so that many identities share most of them. A
``Camera`` fixes a background, an illumination and colour cast, a blur, a
noise level and which viewpoints it tends to see. ``render`` draws one
detection-style crop of a person in a camera, with random scale, position,
pose, viewpoint (front, back, side, mirrored) and occasional occlusion.

Everything is numpy; shapes are painted by slicing their bounding boxes, which
keeps one 128x64 image at about a millisecond.
"""

import dataclasses

import numpy as np
from PIL import Image

# RGB palettes, 0-255. Kept small on purpose: identities collide on most
# attributes, so telling them apart needs several cues at once.
CLOTHING_COLOURS = np.array([
    (28, 28, 32), (222, 222, 215), (125, 125, 128), (35, 45, 95),
    (165, 38, 40), (60, 100, 170), (58, 108, 68), (200, 180, 140),
    (98, 70, 50), (205, 175, 60)], np.float32)
LOWER_COLOURS = np.array([
    (28, 28, 32), (35, 45, 95), (110, 110, 115), (70, 92, 135),
    (195, 178, 140), (98, 70, 50)], np.float32)
HAIR_COLOURS = np.array([
    (20, 18, 18), (60, 40, 28), (110, 80, 50), (190, 170, 120)], np.float32)
SKIN_COLOURS = np.array([
    (235, 200, 170), (200, 150, 115), (130, 90, 65)], np.float32)
BAG_COLOURS = np.array([
    (25, 25, 25), (105, 65, 40), (150, 35, 45), (45, 70, 130)], np.float32)
SCENE_COLOURS = np.array([
    (150, 150, 145), (120, 130, 140), (170, 160, 140), (95, 100, 95),
    (140, 120, 110), (185, 185, 190), (80, 85, 100)], np.float32)

PATTERNS = ('plain', 'horizontal_stripes', 'vertical_stripes', 'checks')
LOWER_STYLES = ('trousers', 'shorts', 'skirt')
BAGS = ('none', 'backpack', 'shoulder_bag')
VIEWS = ('front', 'back', 'side')


@dataclasses.dataclass(frozen=True)
class Person:
  """Appearance of one identity; colours are RGB in 0-255."""
  upper_colour: np.ndarray
  pattern: int
  pattern_colour: np.ndarray
  pattern_period: int
  long_sleeves: bool
  chest_print: np.ndarray | None
  lower_colour: np.ndarray
  lower_style: int
  shoe_colour: np.ndarray
  hair_colour: np.ndarray
  long_hair: bool
  skin_colour: np.ndarray
  bag: int
  bag_side: int
  bag_colour: np.ndarray
  height: float
  build: float
  leg_fraction: float


@dataclasses.dataclass(frozen=True)
class Camera:
  """A camera's scene and imaging; ``background`` and ``noise`` are twice the
  image width (each image shows a random window of them)."""
  background: np.ndarray
  gain: float
  colour_cast: np.ndarray
  offset: float
  blur_passes: int
  noise: np.ndarray
  view_probabilities: np.ndarray
  scale_range: tuple[float, float]


def _palette_colour(rng: np.random.Generator, palette: np.ndarray,
                    jitter: float) -> np.ndarray:
  colour = palette[rng.integers(len(palette))]
  return np.clip(colour + rng.normal(0, jitter, 3), 0, 255).astype(np.float32)


def draw_person(rng: np.random.Generator) -> Person:
  """Draws the appearance attributes of one identity.

  Args:
    rng: source of randomness.

  Returns:
    a ``Person``.
  """
  bag = int(rng.choice(len(BAGS), p=(0.5, 0.25, 0.25)))
  return Person(
      upper_colour=_palette_colour(rng, CLOTHING_COLOURS, 6),
      pattern=int(rng.choice(len(PATTERNS), p=(0.55, 0.2, 0.1, 0.15))),
      pattern_colour=_palette_colour(rng, CLOTHING_COLOURS, 6),
      pattern_period=int(rng.integers(3, 7)),
      long_sleeves=bool(rng.random() < 0.6),
      chest_print=(_palette_colour(rng, CLOTHING_COLOURS, 6)
                   if rng.random() < 0.25 else None),
      lower_colour=_palette_colour(rng, LOWER_COLOURS, 6),
      lower_style=int(rng.choice(len(LOWER_STYLES), p=(0.7, 0.15, 0.15))),
      shoe_colour=_palette_colour(rng, CLOTHING_COLOURS[:3], 4),
      hair_colour=_palette_colour(rng, HAIR_COLOURS, 5),
      long_hair=bool(rng.random() < 0.35),
      skin_colour=_palette_colour(rng, SKIN_COLOURS, 5),
      bag=bag,
      bag_side=int(rng.choice((-1, 1))),
      bag_colour=_palette_colour(rng, BAG_COLOURS, 6),
      height=float(rng.uniform(0.82, 0.95)),
      build=float(rng.uniform(0.85, 1.15)),
      leg_fraction=float(rng.uniform(0.46, 0.54)))


def draw_camera(rng: np.random.Generator, height: int = 128,
                width: int = 64) -> Camera:
  """Draws a camera: its scene background and imaging characteristics.

  Args:
    rng: source of randomness.
    height: image height in pixels (default 128, Market-1501).
    width: image width in pixels (default 64).

  Returns:
    a ``Camera``.
  """
  wall = _palette_colour(rng, SCENE_COLOURS, 12)
  floor = _palette_colour(rng, SCENE_COLOURS, 12)
  horizon = int(height * rng.uniform(0.55, 0.8))
  background = np.empty((height, 2 * width, 3), np.float32)
  background[:horizon] = wall
  background[horizon:] = floor
  for _ in range(rng.integers(1, 4)):  # pillars, doors, windows
    x0 = int(rng.integers(0, 2 * width - 8))
    x1 = x0 + int(rng.integers(4, 20))
    y1 = int(rng.integers(horizon // 2, horizon + 1))
    background[:y1, x0:x1] = _palette_colour(rng, SCENE_COLOURS, 20)
  tile = int(rng.integers(6, 16))
  rows = np.arange(height)[:, None, None]
  background[horizon:] *= 1 - 0.08 * ((rows[horizon:] // tile) % 2)
  background += rng.normal(0, rng.uniform(2, 10), background.shape)
  view_probabilities = rng.dirichlet(np.full(len(VIEWS), 0.8))
  scale_low = float(rng.uniform(0.8, 0.95))
  return Camera(
      background=background,
      gain=float(rng.uniform(0.7, 1.25)),
      colour_cast=rng.uniform(0.85, 1.15, 3).astype(np.float32),
      offset=float(rng.uniform(-15, 15)),
      blur_passes=int(rng.integers(0, 3)),
      noise=(rng.uniform(1, 6) * rng.standard_normal(
          background.shape, dtype=np.float32)),
      view_probabilities=view_probabilities,
      scale_range=(scale_low, min(1.08, scale_low + 0.2)))


class _Canvas:
  """Paints shapes onto an image, shaded darker towards the body's sides."""

  def __init__(self, image: np.ndarray, shade: np.ndarray):
    self.image = image
    self.shade = shade[:, None]  # one factor per column
    self.height, self.width = image.shape[:2]

  def _box(self, y0, y1, x0, x1):
    return (max(int(round(y0)), 0), min(int(round(y1)), self.height),
            max(int(round(x0)), 0), min(int(round(x1)), self.width))

  def rect(self, y0, y1, x0, x1, colour):
    y0, y1, x0, x1 = self._box(y0, y1, x0, x1)
    if y0 < y1 and x0 < x1:
      self.image[y0:y1, x0:x1] = colour * self.shade[x0:x1]

  def ellipse(self, cy, cx, ry, rx, colour, upper_only=False):
    y0, y1, x0, x1 = self._box(cy - ry, cy + (0 if upper_only else ry),
                               cx - rx, cx + rx + 1)
    if y0 >= y1 or x0 >= x1:
      return
    ys = (np.arange(y0, y1)[:, None] + 0.5 - cy) / ry
    xs = (np.arange(x0, x1)[None, :] + 0.5 - cx) / rx
    inside = ys * ys + xs * xs <= 1
    patch = np.broadcast_to(colour * self.shade[x0:x1], (y1 - y0, x1 - x0, 3))
    self.image[y0:y1, x0:x1][inside] = patch[inside]

  def trapezoid(self, y0, y1, cx, half_top, half_bottom, colour,
                pattern=0, pattern_colour=None, period=4):
    """Rows y0..y1 centred on cx, half width going from top to bottom."""
    y0, y1, x0, x1 = self._box(y0, y1, cx - max(half_top, half_bottom),
                               cx + max(half_top, half_bottom) + 1)
    if y0 >= y1 or x0 >= x1:
      return
    rows = np.arange(y0, y1)[:, None]
    cols = np.arange(x0, x1)[None, :]
    half = half_top + (half_bottom - half_top) * (rows - y0) / max(y1 - y0, 1)
    inside = np.abs(cols + 0.5 - cx) <= half
    patch = np.broadcast_to(colour, (y1 - y0, x1 - x0, 3)).copy()
    if pattern:
      stripe_rows = np.broadcast_to(((rows - y0) // period) % 2 == 1,
                                    inside.shape)
      stripe_cols = np.broadcast_to(((cols - x0) // period) % 2 == 1,
                                    inside.shape)
      marked = {1: stripe_rows, 2: stripe_cols,
                3: stripe_rows ^ stripe_cols}[pattern]
      patch[marked] = pattern_colour
    patch *= self.shade[x0:x1]
    self.image[y0:y1, x0:x1][inside] = patch[inside]


def _box_blur(image: np.ndarray, passes: int) -> np.ndarray:
  """Applies the [1, 2, 1] / 4 kernel along rows and columns, edges clamped."""
  for _ in range(passes):
    rows = 2 * image
    rows[1:] += image[:-1]
    rows[0] += image[0]
    rows[:-1] += image[1:]
    rows[-1] += image[-1]
    image = 2 * rows
    image[:, 1:] += rows[:, :-1]
    image[:, 0] += rows[:, 0]
    image[:, :-1] += rows[:, 1:]
    image[:, -1] += rows[:, -1]
    image *= 1 / 16
  return image


def _paint_person(layer: _Canvas, person: Person, view: str, top: float,
                  body_height: float, centre: float, half_width: float,
                  stride: float):
  """Paints a person facing the camera (front), away (back) or to the right."""
  side = view == 'side'
  head_ry = 0.07 * body_height
  head_rx = 0.6 * head_ry
  neck = top + 2 * head_ry
  shoulder = neck + 0.02 * body_height
  hip = top + (1 - person.leg_fraction) * body_height
  feet = top + body_height
  leg_width = half_width * (0.55 if side else 0.5)
  # The person's right side is on the image left when seen from the front.
  bag_x = -person.bag_side if view == 'front' else person.bag_side
  bag_behind = side and person.bag_side < 0

  if person.bag == 1 and side:
    layer.rect(shoulder, hip - 0.05 * body_height, centre - 1.9 * half_width,
               centre - 0.8 * half_width, person.bag_colour)
  if person.bag == 2 and bag_behind:
    layer.rect(hip - 0.1 * body_height, hip + 0.08 * body_height,
               centre - 1.5 * half_width, centre - 0.3 * half_width,
               person.bag_colour * 0.8)

  # Legs, then what covers them: trousers, shorts or a skirt.
  knee = hip + 0.45 * (feet - hip)
  for leg in (-1, 1):
    offset = leg * (stride if side else 0.45 * half_width + 0.3 * stride)
    leg_x = centre + offset
    layer.rect(hip, feet, leg_x - leg_width / 2, leg_x + leg_width / 2,
               person.skin_colour)
    cover_end = {0: feet, 1: knee, 2: hip}[person.lower_style]
    layer.rect(hip, cover_end, leg_x - leg_width / 2, leg_x + leg_width / 2,
               person.lower_colour)
    layer.rect(feet - 0.035 * body_height, feet, leg_x - leg_width / 2,
               leg_x + leg_width / 2 + (0.35 * leg_width if side else 0),
               person.shoe_colour)
  if person.lower_style == 2:
    layer.trapezoid(hip - 0.02 * body_height, knee + 0.05 * body_height,
                    centre, half_width * 0.85, half_width * 1.25,
                    person.lower_colour)

  layer.trapezoid(shoulder, hip + 0.02 * body_height, centre, half_width,
                  half_width * 0.85, person.upper_colour, person.pattern,
                  person.pattern_colour, person.pattern_period)
  if person.chest_print is not None and view == 'front':
    layer.rect(shoulder + 0.06 * body_height, shoulder + 0.13 * body_height,
               centre - 0.35 * half_width, centre + 0.35 * half_width,
               person.chest_print)
  if person.bag == 1 and view == 'back':
    layer.rect(shoulder + 0.03 * body_height, hip - 0.04 * body_height,
               centre - 0.75 * half_width, centre + 0.75 * half_width,
               person.bag_colour)
  if person.bag == 1 and view == 'front':
    for strap in (-1, 1):
      strap_x = centre + strap * 0.55 * half_width
      layer.rect(shoulder, hip - 0.12 * body_height, strap_x - 1, strap_x + 1,
                 person.bag_colour)

  # Arms swing with the stride; sleeves short or long.
  arm_width = half_width * 0.32
  arm_end = hip + 0.04 * body_height
  elbow = shoulder + 0.45 * (arm_end - shoulder)
  arms = (0,) if side else (-1, 1)
  for arm in arms:
    arm_x = centre + arm * (half_width + arm_width / 2) + (
        0.6 * stride if side else 0)
    sleeve_end = arm_end if person.long_sleeves else elbow
    layer.rect(shoulder, arm_end, arm_x - arm_width / 2, arm_x + arm_width / 2,
               person.skin_colour)
    layer.rect(shoulder, sleeve_end, arm_x - arm_width / 2,
               arm_x + arm_width / 2, person.upper_colour)

  if person.bag == 2 and not bag_behind:
    bag_centre = centre + (0.2 if side else bag_x * 1.15) * half_width
    layer.rect(hip - 0.1 * body_height, hip + 0.08 * body_height,
               bag_centre - 0.55 * half_width, bag_centre + 0.55 * half_width,
               person.bag_colour)
    if not side:
      layer.trapezoid(shoulder, hip - 0.1 * body_height, centre, 1.2, 1.2,
                      person.bag_colour)

  # Head and hair; from behind the hair covers the whole head.
  head_cy = top + head_ry
  head_cx = centre + (0.25 * head_rx if side else 0)
  if person.long_hair and view != 'front':
    layer.rect(head_cy, shoulder + 0.08 * body_height, head_cx - head_rx,
               head_cx + head_rx, person.hair_colour)
  layer.ellipse(head_cy, head_cx, head_ry, head_rx, person.skin_colour)
  if view == 'back':
    layer.ellipse(head_cy, head_cx, head_ry, head_rx, person.hair_colour)
  else:
    layer.ellipse(head_cy + 0.2 * head_ry, head_cx - (0.3 * head_rx if side
                                                      else 0),
                  1.15 * head_ry, 1.05 * head_rx, person.hair_colour,
                  upper_only=True)
  if person.long_hair and view == 'front':
    for lock in (-1, 1):
      layer.rect(head_cy, shoulder + 0.05 * body_height,
                 head_cx + lock * head_rx - 1.5, head_cx + lock * head_rx + 1.5,
                 person.hair_colour)


def _occlude(image: np.ndarray, rng: np.random.Generator):
  """Covers the bottom (railing, bench) or one side (passer-by) of the image."""
  height, width, _ = image.shape
  colour = _palette_colour(rng, np.concatenate([SCENE_COLOURS,
                                                CLOTHING_COLOURS]), 10)
  if rng.random() < 0.5:
    image[height - int(height * rng.uniform(0.15, 0.35)):] = colour
  else:
    cover = int(width * rng.uniform(0.2, 0.4))
    if rng.random() < 0.5:
      image[:, :cover] = colour
    else:
      image[:, width - cover:] = colour


def render(person: Person | None, camera: Camera, rng: np.random.Generator,
           scale: float | None = None, occlusion_probability: float = 0.15,
           fragment: bool = False) -> np.ndarray:
  """Renders one crop of a person (or of the bare scene) in a camera.

  Args:
    person: who to draw; None draws only the background (a junk detection).
    camera: the camera; its background fixes the image size.
    rng: per-image randomness (view, pose, jitter, occlusion, noise).
    scale: person size relative to a normal detection; None draws it from
      the camera's scale range. Values well above 1 give a crop that cuts the
      person (a bad detection, as for distractors).
    occlusion_probability: chance of covering part of the image.
    fragment: shift the person far off centre (a badly placed box).

  Returns:
    uint8 image (height, width, 3).
  """
  height, double_width, _ = camera.background.shape
  width = double_width // 2
  shift = int(rng.integers(0, width + 1))
  image = camera.background[:, shift:shift + width].copy()
  if person is not None:
    view = VIEWS[rng.choice(len(VIEWS), p=camera.view_probabilities)]
    if scale is None:
      scale = rng.uniform(*camera.scale_range)
    body_height = person.height * height * scale
    top = (height - body_height) / 2 + rng.normal(0, 2.0)
    centre = width / 2 + rng.normal(0, 2.0)
    if fragment:
      centre += rng.choice((-1, 1)) * rng.uniform(0.3, 0.5) * width
      top += rng.uniform(-0.3, 0.3) * height
    half_width = 0.24 * width * person.build * scale * (
        0.75 if view == 'side' else 1.0)
    stride = rng.uniform(0, 0.22) * half_width * (3 if view == 'side' else 1)
    columns = (np.arange(width, dtype=np.float32) + 0.5 - centre) / (
        2.5 * half_width)
    shade = 1 - 0.3 * np.minimum(columns * columns, 1)
    # A side view faces right; mirroring the scene before and after painting
    # turns the person to the left while the background stays as it was.
    mirrored = view == 'side' and rng.random() < 0.5
    if mirrored:
      image, centre, shade = image[:, ::-1], width - centre, shade[::-1]
    _paint_person(_Canvas(image, shade), person, view, top, body_height,
                  centre, half_width, stride)
    if mirrored:
      image = image[:, ::-1]
  if rng.random() < occlusion_probability:
    _occlude(image, rng)
  image = _box_blur(image, camera.blur_passes)
  gain = camera.gain * rng.uniform(0.9, 1.1)
  image *= gain * camera.colour_cast
  # Sensor noise: a random window of the camera's noise field, either sign.
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
                    jpeg_quality: int) -> int:
  """Renders jobs and writes them as JPEG files.

  Every image depends only on its job (its own seed), not on the order in
  which jobs are rendered.

  Args:
    jobs: the images.
    cameras: the cameras that ``ImageJob.camera`` indexes.
    jpeg_quality: JPEG quality, 1-100.

  Returns:
    the number of files written.
  """
  for job in jobs:
    rng = np.random.default_rng(job.seed)
    image = render(job.person, cameras[job.camera], rng, scale=job.scale,
                   fragment=job.fragment)
    with open(job.path, 'wb') as file:
      Image.fromarray(image).save(file, format='JPEG', quality=jpeg_quality)
  return len(jobs)
