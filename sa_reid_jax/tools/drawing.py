"""The picture of `search`'s rankings: a grid of thumbnails, one row per
query, each image read as `evaluation.pictures.display_pixels` reads it.

Sizes are pixels.
"""

from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from sa_reid_jax.datasets.tensorflow_cpu import tf

from sa_reid_jax.evaluation import pictures

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
    return pictures.display_pixels(path, size)
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
  under the thumbnails read ``query`` or the match's distance; a query
  marked ``no_match`` has ``no match`` written where its first match would
  be.

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
    if query.get('no_match'):
      # search's max_distance left no match: said where the first would be.
      draw.text((first_match, y + height // 2), 'no match', fill=_TEXT,
                font=font)
  return canvas
