"""Image-level effects of the synthetic cameras: blur, resolution, light.

Every function takes and returns float32 RGB images (height, width, 3) in
0-255 (values outside are clipped only when the image is saved).
"""

import numpy as np
from PIL import Image


def box_blur(image: np.ndarray, passes: int) -> np.ndarray:
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


def motion_blur(image: np.ndarray, length: int) -> np.ndarray:
  """Averages each pixel with the next ``length - 1`` ones along the row
  (a horizontal walk or camera pan during the exposure), edges clamped."""
  if length < 2:
    return image
  padded = np.concatenate(
      [image, np.repeat(image[:, -1:], length - 1, axis=1)], axis=1)
  summed = np.cumsum(padded, axis=1, dtype=np.float32)
  summed = np.concatenate(
      [np.zeros_like(summed[:, :1]), summed], axis=1)
  width = image.shape[1]
  return (summed[:, length:length + width] - summed[:, :width]) / length


def low_resolution(image: np.ndarray, factor: float) -> np.ndarray:
  """Samples the image down by ``factor`` (area average) and back up
  (bilinear), as a far or cheap camera whose crops were upscaled."""
  if factor >= 0.999:
    return image
  height, width, _ = image.shape
  small = (max(int(round(width * factor)), 4),
           max(int(round(height * factor)), 8))
  pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
  pil = pil.resize(small, Image.BOX).resize((width, height), Image.BILINEAR)
  return np.asarray(pil, np.float32).copy()


def illumination(image: np.ndarray, rng: np.random.Generator,
                 strength: float) -> np.ndarray:
  """Multiplies by a linear light ramp in a random direction whose ends
  differ by up to ``strength`` (light from one side, shade on the other)."""
  if strength <= 0:
    return image
  height, width, _ = image.shape
  angle = rng.uniform(0, 2 * np.pi)
  rows = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None]
  cols = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :]
  ramp = np.cos(angle) * rows + np.sin(angle) * cols
  amount = rng.uniform(0, strength)
  return image * (1 + amount * ramp)[:, :, None]


def tone(image: np.ndarray, gamma: float) -> np.ndarray:
  """Applies a camera tone curve 255 * (x / 255) ** gamma."""
  if gamma == 1.0:
    return image
  return 255 * np.power(np.clip(image, 0, 255) / 255, gamma,
                        dtype=np.float32)


def composite_leaning(image: np.ndarray, layer: np.ndarray, lean: float,
                      foot_row: float) -> np.ndarray:
  """Puts the painted pixels of ``layer`` (NaN where nothing was painted)
  onto ``image``, shifting each row by ``lean`` pixels per row above
  ``foot_row`` (a person leaning or seen from a tilted camera)."""
  painted = ~np.isnan(layer[:, :, 0])
  rows = np.flatnonzero(painted.any(axis=1))
  if not rows.size:
    return image
  y0, y1 = rows[0], rows[-1] + 1
  width = image.shape[1]
  part, mask = layer[y0:y1], painted[y0:y1]
  shifts = np.round(lean * (foot_row - np.arange(y0, y1))).astype(int)
  if shifts.any():
    source = np.arange(width)[None, :] - shifts[:, None]
    inside = (source >= 0) & (source < width)
    source = np.clip(source, 0, width - 1)
    row_index = np.arange(y1 - y0)[:, None]
    part = part[row_index, source]
    mask = mask[row_index, source] & inside
  image[y0:y1][mask] = part[mask]
  return image
