"""Pictures made of image tiles: colour maps, bordered and labelled rows,
and the retrieval grid (`visualize`, `search`, the evaluation report).

Colours are RGB tuples; sizes are pixels.
"""

from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from sa_reid_jax.datasets.tensorflow_cpu import tf

from sa_reid_jax.tools import image_files

# Tile borders (rank lists: query, true match, other person, ignored),
# their width, the gap between tiles and the label strip under each, and
# the weight of a colour map blended over its image.
GREEN = (0, 170, 0)
RED = (220, 0, 0)
GREY = (150, 150, 150)
BLUE = (0, 90, 220)
BORDER = 4
GAP = 6
LABEL_HEIGHT = 14
CAM_BLEND = 0.5
# The default font draws a space 2 pixels wide: "#2 0.03" read as "#20.03".
# Words of a tile's label are drawn this many pixels apart instead.
WORD_GAP = 5
# A map whose values differ by at most this fraction of its largest
# magnitude is flat: `colorize` draws it as one colour, so it is noted.
FLAT_TOLERANCE = 1e-6

# The picture is an overview: results.json holds every query and match.
MAX_GRID_ROWS = 20
MAX_GRID_MATCHES = 20
MAX_THUMBNAIL_HEIGHT = 128
# Grid geometry in pixels: padding around cells, the distance label under
# each thumbnail, and the extra gap separating a query from its matches.
GRID_PADDING = 4
GRID_LABEL_HEIGHT = 14
GRID_QUERY_GAP = 16
_BACKGROUND = (255, 255, 255)
_PLACEHOLDER = (200, 200, 200)
_TEXT = (0, 0, 0)


def colorize(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """A map scaled to [0, 1], resized bilinearly, in a blue-red colour scale.

  Args:
    heat: (h, w) values.
    size: output (height, width).

  Returns:
    uint8 (height, width, 3): blue (low) through cyan, yellow to red (high).
  """
  heat = np.asarray(heat, np.float32)
  span = heat.max() - heat.min()
  scaled = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
  resized = np.asarray(Image.fromarray(scaled).resize(
      (size[1], size[0]), Image.BILINEAR)).clip(0, 1)
  # Piecewise-linear ramps of a 'jet'-like scale.
  red = np.clip(1.5 - np.abs(4 * resized - 3), 0, 1)
  green = np.clip(1.5 - np.abs(4 * resized - 2), 0, 1)
  blue = np.clip(1.5 - np.abs(4 * resized - 1), 0, 1)
  return (np.stack([red, green, blue], -1) * 255).astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
  """`heat` coloured and blended over the uint8 `image`."""
  coloured = colorize(heat, image.shape[:2]).astype(np.float32)
  return (CAM_BLEND * coloured + (1 - CAM_BLEND) * image).astype(np.uint8)


def is_flat(heat: np.ndarray) -> bool:
  """Whether `heat` holds (up to `FLAT_TOLERANCE`) a single value."""
  heat = np.asarray(heat, np.float64)
  return bool(np.ptp(heat) <= FLAT_TOLERANCE * max(np.abs(heat).max(),
                                                     np.finfo(np.float32).tiny))


def note_if_flat(tile: np.ndarray, heat: np.ndarray) -> np.ndarray:
  """`tile` with "flat" and the map's value written on it if `heat` is flat.

  `colorize` scales a map to its own range, so a flat one would be a solid
  tile that says nothing of its value (e.g. SA weights all 1/(H*W)).

  Args:
    tile: uint8 (height, width, 3), the drawn map.
    heat: the map it was drawn from.

  Returns:
    `tile` unchanged, or a copy with the note on a white strip at its top.
  """
  if not is_flat(heat):
    return tile
  picture = Image.fromarray(np.asarray(tile, np.uint8))
  draw = ImageDraw.Draw(picture)
  font = ImageFont.load_default()
  value = float(np.asarray(heat, np.float64).flat[0])
  lines = ['flat', f'{value:.3g}']
  strip = len(lines) * LABEL_HEIGHT
  draw.rectangle([0, 0, picture.width - 1, min(strip, picture.height) - 1],
                 fill='white')
  for i, line in enumerate(lines):
    draw.text((1, 1 + i * LABEL_HEIGHT), line, fill='black', font=font)
  return np.asarray(picture)


def _draw_label(draw: ImageDraw.ImageDraw, position: tuple[int, int],
                label: str, width: int) -> None:
  """`label`'s words `WORD_GAP` apart, cut to fit `width` pixels."""
  font = ImageFont.load_default()
  x, y = position
  right = x + width
  for word in label.split():
    while word and x + draw.textlength(word, font=font) > right:
      word = word[:-1]
    if not word:
      break
    draw.text((x, y), word, fill='black', font=font)
    x += draw.textlength(word, font=font) + WORD_GAP


def tile_row(tiles: Sequence[np.ndarray], labels: Sequence[str],
             borders: Optional[Sequence[tuple]] = None,
             gap_after_first: bool = False) -> Image.Image:
  """Tiles side by side, each with an optional border and a label below."""
  height, width = tiles[0].shape[:2]
  cell_w, cell_h = width + 2 * BORDER, height + 2 * BORDER
  extra = GAP if gap_after_first else 0
  row = Image.new('RGB', (len(tiles) * (cell_w + GAP) + extra,
                          cell_h + LABEL_HEIGHT), 'white')
  draw = ImageDraw.Draw(row)
  for i, (tile, label) in enumerate(zip(tiles, labels)):
    left = i * (cell_w + GAP) + (extra if i > 0 else 0)
    if borders is not None and borders[i] is not None:
      draw.rectangle([left, 0, left + cell_w - 1, cell_h - 1],
                     fill=borders[i])
    row.paste(Image.fromarray(tile), (left + BORDER, BORDER))
    _draw_label(draw, (left + 1, cell_h + 1), label, cell_w - 1)
  return row


def stack(rows: Sequence[Image.Image]) -> Image.Image:
  """Rows one under the other, GAP apart, on white."""
  width = max(r.width for r in rows)
  picture = Image.new('RGB', (width, sum(r.height + GAP for r in rows)),
                      'white')
  top = 0
  for r in rows:
    picture.paste(r, (0, top))
    top += r.height + GAP
  return picture

def thumbnail_size(image_size: Sequence[int],
                   max_height: int = MAX_THUMBNAIL_HEIGHT) -> tuple[int, int]:
  """The model's input size, scaled down to at most `max_height` rows.

  Args:
    image_size: network input (height, width).
    max_height: the tallest thumbnail wanted.

  Returns:
    (height, width), keeping the input's aspect ratio.
  """
  height, width = (int(v) for v in image_size)
  if height <= max_height:
    return height, width
  return max_height, max(1, round(width * max_height / height))


def _thumbnail(path: str, size: tuple[int, int]) -> np.ndarray:
  try:
    return image_files.display_pixels(path, size)
  except (tf.errors.OpError, ValueError):
    # The file changed or vanished since the search: leave a grey cell.
    return np.full((*size, 3), _PLACEHOLDER, np.uint8)


def draw_grid(results: dict[str, Any], *, thumbnail: Sequence[int],
              max_rows: int = MAX_GRID_ROWS,
              max_matches: int = MAX_GRID_MATCHES) -> Image.Image:
  """A picture of the rankings in `search`'s results.

  One row per query (the first `max_rows`): the query at x = GRID_PADDING,
  then after GRID_QUERY_GAP min(``topk``, `max_matches`) match cells, each
  followed by GRID_PADDING; every row is thumbnail height +
  GRID_LABEL_HEIGHT + GRID_PADDING tall after a top GRID_PADDING. Labels
  under the thumbnails read ``query`` or the match's distance.

  Args:
    results: the dict returned by `search`.
    thumbnail: (height, width) of every image in the grid.
    max_rows: the most queries drawn.
    max_matches: the most matches drawn per query.

  Returns:
    an RGB image.

  Raises:
    ValueError: when `results` holds no query, or `max_rows` or
      `max_matches` is below 1.
  """
  if max_rows < 1 or max_matches < 1:
    raise ValueError('max_rows and max_matches must be at least 1, got '
                     f'{max_rows} and {max_matches}')
  rows = results['queries'][:max_rows]
  if not rows:
    raise ValueError('results hold no query to draw')
  columns = min(results['topk'], max_matches)
  height, width = (int(v) for v in thumbnail)
  row_height = height + GRID_LABEL_HEIGHT + GRID_PADDING
  first_match = GRID_PADDING + width + GRID_QUERY_GAP
  canvas = Image.new(
      'RGB', (first_match + columns * (width + GRID_PADDING),
              GRID_PADDING + len(rows) * row_height), _BACKGROUND)
  draw = ImageDraw.Draw(canvas)
  font = ImageFont.load_default()

  def cell(path, x, y, label):
    canvas.paste(Image.fromarray(_thumbnail(path, (height, width))), (x, y))
    text_x = x + (width - draw.textlength(label, font=font)) / 2
    draw.text((text_x, y + height + 1), label, fill=_TEXT, font=font)

  for row, query in enumerate(rows):
    y = GRID_PADDING + row * row_height
    cell(query['query'], GRID_PADDING, y, 'query')
    for column, match in enumerate(query['matches'][:columns]):
      cell(match['file'], first_match + column * (width + GRID_PADDING), y,
           f'{match["distance"]:.3f}')
  return canvas
