"""Pictures of images in tiles: colour maps over images, bordered and
labelled rows, and the rank lists of queries (the evaluation report's
examples; the ``visualize`` tool's ``ranks`` and ``cam`` pictures).

Colours are RGB tuples; sizes are pixels; images are read with the
pipelines' decoder (`datasets.images.decode_image`) and resized as they are
(`data.preprocessing.resize`), so a tile shows what the network saw.
"""

from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sa_reid_jax.data import preprocessing
from sa_reid_jax.datasets import images
from sa_reid_jax.datasets.image_records import UNKNOWN_CAMERA
from sa_reid_jax.datasets.market_layout import JUNK_PERSON_ID
from sa_reid_jax.datasets.tensorflow_cpu import tf

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


def display_pixels(path: str | bytes, size: tuple[int, int]) -> np.ndarray:
  """An image as uint8 (height, width, 3) at `size`, for pictures.

  Args:
    path: an image file, or the encoded image itself (a TFDS table's bytes).
    size: (height, width).

  Raises:
    tf.errors.OpError: for a file that cannot be read or decoded.
  """
  encoded = path if isinstance(path, bytes) else tf.io.read_file(path)
  image = images.decode_image(encoded)
  resized = preprocessing.resize(tf.cast(image, tf.float32), size)
  return np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)


def match_kinds(query_pid: int, query_cam: int, gallery_pids: np.ndarray,
                gallery_cams: np.ndarray) -> np.ndarray:
  """Per gallery image, what it is to the query under the protocol.

  Args:
    query_pid, query_cam: the query's person and camera.
    gallery_pids, gallery_cams: (num_gallery,) the gallery's.

  Returns:
    object array (num_gallery,) of 'match' (the same person, another
    camera), 'wrong' (another person), 'junk' (person id -1) or 'same cam'
    (the same person, the same camera). A camera id `UNKNOWN_CAMERA` is
    never the same camera (as `metrics.valid_queries` rules): without
    cameras every image of the query's person is a 'match'.
  """
  gallery_pids = np.asarray(gallery_pids)
  gallery_cams = np.asarray(gallery_cams)
  kinds = np.where(gallery_pids == query_pid, 'match', 'wrong').astype(object)
  same_camera = (gallery_cams == query_cam) & (query_cam != UNKNOWN_CAMERA)
  kinds[(gallery_pids == query_pid) & same_camera] = 'same cam'
  kinds[gallery_pids == JUNK_PERSON_ID] = 'junk'
  return kinds


KIND_COLOURS = {'match': GREEN, 'wrong': RED, 'junk': GREY, 'same cam': GREY}


def ranks_picture(query_paths: Sequence[str | bytes], ranked: Sequence[dict],
                  image_size: tuple[int, int]) -> Image.Image:
  """Per query, itself then its ranked gallery, one row each.

  Args:
    query_paths: query image files (or their encoded bytes).
    ranked: per query, ``paths``, ``kinds`` (see `match_kinds`) and
      ``distances`` of its top-k gallery images in rank order.
    image_size: thumbnail (height, width).

  Returns:
    the picture: the query in a blue border, a gap, then the gallery images
    with borders coloured by `KIND_COLOURS` and "#rank" (plus the kind for
    ignored ones) below.
  """
  rows = []
  for query, result in zip(query_paths, ranked):
    tiles = [display_pixels(query, image_size)]
    labels, borders = ['query'], [BLUE]
    for rank, (path, kind, distance) in enumerate(
        zip(result['paths'], result['kinds'], result['distances']), start=1):
      tiles.append(display_pixels(path, image_size))
      ignored = kind in ('junk', 'same cam')
      labels.append(f'#{rank} {kind}' if ignored else
                    f'#{rank} {distance:.2f}')
      borders.append(KIND_COLOURS[kind])
    rows.append(tile_row(tiles, labels, borders, gap_after_first=True))
  return stack(rows)
