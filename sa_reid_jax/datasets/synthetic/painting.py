"""Paints the synthetic people onto camera images (the ``easy`` renderer).

Shapes are painted by slicing their bounding boxes, which keeps one 128x64
image at about a millisecond. ``render`` is the original generator's image;
``scenes`` composes the harder ones from the same pieces.
"""

import numpy as np

from sa_reid_jax.datasets.synthetic import effects
from sa_reid_jax.datasets.synthetic.people import (
    CLOTHING_COLOURS, SCENE_COLOURS, VIEWS, Camera, Person, palette_colour)


class Canvas:
  """Paints shapes onto an image, shaded darker towards the body's sides."""

  def __init__(self, image: np.ndarray, shade: np.ndarray,
               texture: np.ndarray | None = None):
    self.image = image
    self.shade = shade[:, None]  # one factor per column
    self.height, self.width = image.shape[:2]
    self.texture = texture  # multiplies patterned (clothing) trapezoids

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
      local_rows, local_cols = rows - y0, cols - x0
      stripe_rows = np.broadcast_to((local_rows // period) % 2 == 1,
                                    inside.shape)
      stripe_cols = np.broadcast_to((local_cols // period) % 2 == 1,
                                    inside.shape)
      if pattern <= 3:
        marked = {1: stripe_rows, 2: stripe_cols,
                  3: stripe_rows ^ stripe_cols}[pattern]
      elif pattern == 4:  # diagonal stripes
        marked = ((local_rows + local_cols) // period) % 2 == 1
      elif pattern == 5:  # dots
        marked = (local_rows % period < 2) & (local_cols % period < 2)
      else:  # two-tone: the lower part in the second colour
        marked = local_rows >= 0.55 * (y1 - y0)
      patch[np.broadcast_to(marked, inside.shape)] = pattern_colour
    if self.texture is not None and pattern_colour is not None:
      tile = self.texture
      patch *= tile[(np.arange(y1 - y0) % len(tile))[:, None],
                    (np.arange(x1 - x0) % len(tile))[None, :]]
    patch *= self.shade[x0:x1]
    self.image[y0:y1, x0:x1][inside] = patch[inside]


def paint_person(layer: Canvas, person: Person, view: str, top: float,
                 body_height: float, centre: float, half_width: float,
                 stride: float):
  """Paints a person facing the camera (front), away (back) or to the right."""
  side = view == 'side'
  head_ry = 0.07 * body_height * person.head_scale
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
  if person.hat_colour is not None:
    layer.ellipse(head_cy - 0.1 * head_ry, head_cx, 1.05 * head_ry,
                  1.15 * head_rx, person.hat_colour, upper_only=True)
    brim = head_rx * (1.9 if side else 1.4)
    layer.rect(head_cy - 0.2 * head_ry, head_cy + 0.05 * head_ry,
               head_cx - (0.4 * head_rx if side else brim), head_cx + brim,
               person.hat_colour)

  # Hand-held bag or suitcase, at the hand on the bag's side.
  if person.bag >= 3:
    hand_x = centre + (0.9 * stride if side else
                       bag_x * (half_width + arm_width / 2))
    if person.bag == 3:
      layer.rect(arm_end - 0.02 * body_height, arm_end + 0.1 * body_height,
                 hand_x - 0.45 * half_width, hand_x + 0.45 * half_width,
                 person.bag_colour)
    else:
      case_x = hand_x + (0.5 if side else bag_x * 0.35) * half_width
      layer.rect(arm_end, feet - 0.01 * body_height,
                 case_x - 0.5 * half_width, case_x + 0.5 * half_width,
                 person.bag_colour)
      layer.rect(arm_end - 0.06 * body_height, arm_end, case_x - 1,
                 case_x + 1, person.bag_colour * 0.6)


def occlude(image: np.ndarray, rng: np.random.Generator):
  """Covers the bottom (railing, bench) or one side (passer-by) of the image."""
  height, width, _ = image.shape
  colour = palette_colour(rng, np.concatenate([SCENE_COLOURS,
                                                CLOTHING_COLOURS]), 10)
  if rng.random() < 0.5:
    image[height - int(height * rng.uniform(0.15, 0.35)):] = colour
  else:
    cover = int(width * rng.uniform(0.2, 0.4))
    if rng.random() < 0.5:
      image[:, :cover] = colour
    else:
      image[:, width - cover:] = colour


def background_window(camera: Camera, rng: np.random.Generator
                      ) -> np.ndarray:
  """A copy of a random window of the camera's background, which is twice
  as wide as an image: uint8 (height, width, 3)."""
  width = camera.background.shape[1] // 2
  shift = int(rng.integers(0, width + 1))
  return camera.background[:, shift:shift + width].copy()


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
  image = background_window(camera, rng)
  height, width, _ = image.shape
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
    paint_person(Canvas(image, shade, person.texture), person, view, top,
                 body_height, centre, half_width, stride)
    if mirrored:
      image = image[:, ::-1]
  if rng.random() < occlusion_probability:
    occlude(image, rng)
  image = effects.box_blur(image, camera.blur_passes)
  gain = camera.gain * rng.uniform(0.9, 1.1)
  image *= gain * camera.colour_cast
  # Sensor noise: a random window of the camera's noise field, either sign.
  noise_shift = int(rng.integers(0, width + 1))
  image += rng.choice((-1, 1)) * camera.noise[:, noise_shift:noise_shift +
                                              width]
  image += camera.offset + 0.5  # +0.5: round to nearest on the uint8 cast
  return np.clip(image, 0, 255, out=image).astype(np.uint8)
