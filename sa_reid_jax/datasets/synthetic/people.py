"""Procedurally drawn pedestrians seen by procedurally drawn cameras.

This is the renderer behind ``generator.py``. A ``Person`` is a set of
appearance attributes (clothing colours and patterns, hair, bag, build), each
drawn from a small palette so that many identities share most of them. A
``Camera`` fixes a background, an illumination and colour cast, a blur, a
noise level and which viewpoints it tends to see. ``render`` draws one
detection-style crop of a person in a camera, with random scale, position,
pose, viewpoint (front, back, side, mirrored) and occasional occlusion
(``painting``; harder scenes: ``scenes``). The ``difficulty`` argument
(``settings``) widens every draw and adds attributes; with ``EASY`` the
draws are exactly the original ones.
"""

import dataclasses

import numpy as np

from sa_reid_jax.datasets.synthetic.settings import Difficulty, EASY

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

PATTERNS = ('plain', 'horizontal_stripes', 'vertical_stripes', 'checks',
            'diagonal_stripes', 'dots', 'two_tone')
LOWER_STYLES = ('trousers', 'shorts', 'skirt')
BAGS = ('none', 'backpack', 'shoulder_bag', 'hand_bag', 'suitcase')
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
  # Drawn only for harder difficulties (``EASY`` keeps these defaults):
  # a multiplicative fabric texture tile, a cap, and the head's size factor.
  texture: np.ndarray | None = None
  hat_colour: np.ndarray | None = None
  head_scale: float = 1.0


# Attributes re-drawn together when a near twin of an identity is made.
TWIN_ATTRIBUTES = (
    ('upper_colour',), ('pattern', 'pattern_colour', 'pattern_period'),
    ('texture',), ('long_sleeves',), ('chest_print',), ('lower_colour',),
    ('lower_style',), ('shoe_colour',), ('hair_colour', 'long_hair'),
    ('bag', 'bag_side', 'bag_colour'), ('height', 'build', 'leg_fraction',
                                        'head_scale'), ('hat_colour',))


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
  gamma: float = 1.0
  resolution: float = 1.0


def palette_colour(rng: np.random.Generator, palette: np.ndarray,
                    jitter: float) -> np.ndarray:
  colour = palette[rng.integers(len(palette))]
  return np.clip(colour + rng.normal(0, jitter, 3), 0, 255).astype(np.float32)


def draw_person(rng: np.random.Generator,
                difficulty: Difficulty = EASY) -> Person:
  """Draws the appearance attributes of one identity.

  Args:
    rng: source of randomness.
    difficulty: generator settings (attribute ranges, extra attributes).

  Returns:
    a ``Person``.
  """
  easy = difficulty.is_easy
  bag = int(rng.choice(len(BAGS), p=(
      (0.5, 0.25, 0.25, 0, 0) if not difficulty.carried_objects
      else (0.35, 0.2, 0.2, 0.15, 0.1))))
  pattern_probabilities = ((0.55, 0.2, 0.1, 0.15, 0, 0, 0)
                           if not difficulty.textures
                           else (0.3, 0.15, 0.1, 0.1, 0.1, 0.1, 0.15))
  person = Person(
      upper_colour=palette_colour(rng, CLOTHING_COLOURS, 6),
      pattern=int(rng.choice(len(PATTERNS), p=pattern_probabilities)),
      pattern_colour=palette_colour(rng, CLOTHING_COLOURS, 6),
      pattern_period=int(rng.integers(3, 7)),
      long_sleeves=bool(rng.random() < 0.6),
      chest_print=(palette_colour(rng, CLOTHING_COLOURS, 6)
                   if rng.random() < 0.25 else None),
      lower_colour=palette_colour(rng, LOWER_COLOURS, 6),
      lower_style=int(rng.choice(len(LOWER_STYLES), p=(0.7, 0.15, 0.15))),
      shoe_colour=palette_colour(rng, CLOTHING_COLOURS[:3], 4),
      hair_colour=palette_colour(rng, HAIR_COLOURS, 5),
      long_hair=bool(rng.random() < 0.35),
      skin_colour=palette_colour(rng, SKIN_COLOURS, 5),
      bag=bag,
      bag_side=int(rng.choice((-1, 1))),
      bag_colour=palette_colour(rng, BAG_COLOURS, 6),
      height=float(rng.uniform(*difficulty.height_range)),
      build=float(rng.uniform(*difficulty.build_range)),
      leg_fraction=float(rng.uniform(0.46, 0.54)))
  if easy:
    return person
  texture = None
  if difficulty.textures and rng.random() < 0.5:
    size = int(rng.integers(3, 7))
    texture = rng.uniform(0.75, 1.25, (size, size, 1)).astype(np.float32)
  return dataclasses.replace(
      person, texture=texture,
      hat_colour=(palette_colour(rng, CLOTHING_COLOURS, 6)
                  if rng.random() < 0.2 else None),
      head_scale=float(rng.uniform(0.85, 1.15)))


def draw_identity(rng: np.random.Generator, earlier: list[Person],
                  difficulty: Difficulty = EASY) -> Person:
  """Draws an identity; with ``difficulty.twin_probability`` it is a near
  twin of one of ``earlier``: a copy with ``difficulty.twin_changes``
  attribute groups (``TWIN_ATTRIBUTES``) re-drawn to a different value, so
  twins share most attributes but can still be told apart.

  With no twins (``EASY``) this is exactly ``draw_person``.
  """
  if not (difficulty.twin_probability > 0 and earlier and
          rng.random() < difficulty.twin_probability):
    return draw_person(rng, difficulty)
  base = earlier[int(rng.integers(len(earlier)))]
  fresh = draw_person(rng, difficulty)
  differing = [group for group in TWIN_ATTRIBUTES
               if any(not np.array_equal(getattr(fresh, name),
                                         getattr(base, name))
                      for name in group)]
  count = min(difficulty.twin_changes, len(differing))
  chosen = rng.choice(len(differing), size=count, replace=False)
  changes = {name: getattr(fresh, name)
             for index in chosen for name in differing[index]}
  return dataclasses.replace(base, **changes)


def draw_camera(rng: np.random.Generator, height: int = 128,
                width: int = 64, difficulty: Difficulty = EASY) -> Camera:
  """Draws a camera: its scene background and imaging characteristics.

  Args:
    rng: source of randomness.
    height: image height in pixels (default 128, Market-1501).
    width: image width in pixels (default 64).
    difficulty: generator settings (colour and light ranges, clutter,
      resolution, tone curve).

  Returns:
    a ``Camera``.
  """
  wall = palette_colour(rng, SCENE_COLOURS, 12)
  floor = palette_colour(rng, SCENE_COLOURS, 12)
  horizon = int(height * rng.uniform(0.55, 0.8))
  background = np.empty((height, 2 * width, 3), np.float32)
  background[:horizon] = wall
  background[horizon:] = floor
  for _ in range(rng.integers(1, 4)):  # pillars, doors, windows
    x0 = int(rng.integers(0, 2 * width - 8))
    x1 = x0 + int(rng.integers(4, 20))
    y1 = int(rng.integers(horizon // 2, horizon + 1))
    background[:y1, x0:x1] = palette_colour(rng, SCENE_COLOURS, 20)
  tile = int(rng.integers(6, 16))
  rows = np.arange(height)[:, None, None]
  background[horizon:] *= 1 - 0.08 * ((rows[horizon:] // tile) % 2)
  background += rng.normal(0, rng.uniform(2, 10), background.shape)
  view_probabilities = rng.dirichlet(np.full(len(VIEWS), 0.8))
  scale_low = float(rng.uniform(0.8, 0.95))
  camera = Camera(
      background=background,
      gain=float(rng.uniform(*difficulty.gain_range)),
      colour_cast=rng.uniform(*difficulty.cast_range, 3).astype(np.float32),
      offset=float(rng.uniform(-15, 15)),
      blur_passes=int(rng.integers(0, 3)),
      noise=(rng.uniform(1, 6) * rng.standard_normal(
          background.shape, dtype=np.float32)),
      view_probabilities=view_probabilities,
      scale_range=(scale_low, min(1.08, scale_low + 0.2)))
  if difficulty.is_easy:
    return camera
  _add_clutter(background, rng, horizon, int(rng.integers(
      difficulty.clutter_range[0], difficulty.clutter_range[1] + 1)))
  return dataclasses.replace(
      camera, gamma=float(rng.uniform(*difficulty.gamma_range)),
      resolution=float(rng.uniform(*difficulty.resolution_range)))


def _add_clutter(background: np.ndarray, rng: np.random.Generator,
                 horizon: int, count: int):
  """Paints signs, posters, windows and plants onto a scene, some textured."""
  height, width, _ = background.shape
  palette = np.concatenate([SCENE_COLOURS, CLOTHING_COLOURS])
  for _ in range(count):
    box_height = int(rng.integers(4, max(height // 3, 5)))
    box_width = int(rng.integers(3, 24))
    y0 = int(rng.integers(0, max(horizon + height // 8 - box_height, 1)))
    x0 = int(rng.integers(0, width - 2))
    colour = palette_colour(rng, palette, 25)
    patch = background[y0:y0 + box_height, x0:x0 + box_width]
    if rng.random() < 0.4:  # a striped or gridded surface
      period = int(rng.integers(2, 6))
      rows = np.arange(patch.shape[0])[:, None] // period % 2
      cols = np.arange(patch.shape[1])[None, :] // period % 2
      marks = rows if rng.random() < 0.5 else rows ^ cols
      patch[:] = np.where(marks[:, :, None] == 1, colour, 0.7 * colour)
    else:
      patch[:] = colour
