"""The report's plots (matplotlib's Agg canvas: no display, no global pyplot
state) and the embedding of pictures as data URIs.

Each figure function takes what `report` has at hand (rank results,
metrics.json's blocks, distance rows) and returns a matplotlib `Figure`;
`figure_uri` and `data_uri` turn figures and PIL images into the base64 data
URIs the one-file report embeds.
"""

import base64
import io
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np
from PIL import Image

from sa_reid_jax.datasets.image_records import UNKNOWN_CAMERA
from sa_reid_jax.datasets.market_layout import JUNK_PERSON_ID
from sa_reid_jax.evaluation.metrics import RankResult

# Query rows of the distance matrix per histogram pass (bounds the memory of
# the masks to this many rows at a time).
HISTOGRAM_ROWS = 256
HISTOGRAM_BINS = 50
FIGURE_SIZE = (6.4, 3.6)  # inches, at FIGURE_DPI
FIGURE_DPI = 100
JPEG_QUALITY = 90


def data_uri(image: Image.Image, image_format: str) -> str:
  buffer = io.BytesIO()
  image.save(buffer, format=image_format, quality=JPEG_QUALITY)
  mime = 'jpeg' if image_format == 'JPEG' else image_format.lower()
  encoded = base64.b64encode(buffer.getvalue()).decode('ascii')
  return f'data:image/{mime};base64,{encoded}'


def figure_uri(figure: Figure) -> str:
  buffer = io.BytesIO()
  FigureCanvasAgg(figure).print_png(buffer)
  encoded = base64.b64encode(buffer.getvalue()).decode('ascii')
  return f'data:image/png;base64,{encoded}'


def _new_figure(title: str, xlabel: str, ylabel: str):
  figure = Figure(figsize=FIGURE_SIZE, dpi=FIGURE_DPI, layout='constrained')
  axes = figure.add_subplot()
  axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
  axes.grid(alpha=0.3)
  return figure, axes


def cmc_figure(results: dict[str, RankResult]) -> Figure:
  """CMC curves (percent of valid queries hit within rank k) per setting."""
  figure, axes = _new_figure('CMC', 'rank', 'matching rate (%)')
  for setting, result in results.items():
    ranks = np.arange(1, len(result.cmc) + 1)
    axes.plot(ranks, 100 * result.cmc, marker='.', label=setting)
  axes.set_xlim(1, max(len(r.cmc) for r in results.values()))
  axes.legend(loc='lower right')
  return figure


def ap_figure(results: dict[str, RankResult]) -> Figure:
  """Histogram of the per-query AP of each setting."""
  figure, axes = _new_figure('AP over queries', 'average precision (%)',
                             'queries')
  bins = np.linspace(0, 100, 21)
  for setting, result in results.items():
    axes.hist(100 * result.average_precision, bins=bins, alpha=0.6,
              label=f'{setting} (mAP {100 * result.mAP:.2f})')
  axes.legend(loc='upper left')
  return figure


def match_distance_histograms(distances: np.ndarray, q_pids, g_pids,
                              q_camids, g_camids,
                              bins: int = HISTOGRAM_BINS
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Histograms of the distances of true and of false matches.

  As in the protocol: junk gallery images and same-person same-camera pairs
  are left out, distractors (person id 0) count as false matches; a camera
  id `UNKNOWN_CAMERA` is never the same camera (`metrics.valid_queries`), so
  without cameras every same-person pair is a true match.

  Args:
    distances: (num_query, num_gallery) distances: an array, or rows
      computed when read (`distances.DistanceRows`).
    q_pids, g_pids, q_camids, g_camids: ids of the queries and the gallery.
    bins: number of equal-width bins over the finite distances' range.

  Returns:
    (edges (bins + 1,), true-match counts (bins,), false-match counts
    (bins,)), counts as int64.
  """
  # Two passes over row blocks (the range, then the counts), so that rows
  # computed when read (`DistanceRows`) are never held whole.
  low, high = np.inf, -np.inf
  for start in range(0, len(distances), HISTOGRAM_ROWS):
    block = np.asarray(distances[start:start + HISTOGRAM_ROWS])
    finite = block[np.isfinite(block)]
    if finite.size:
      low, high = min(low, float(finite.min())), max(high, float(finite.max()))
  if low > high:
    low, high = 0.0, 1.0
  edges = np.linspace(low, high if high > low else low + 1, bins + 1)
  true_counts = np.zeros(bins, np.int64)
  false_counts = np.zeros(bins, np.int64)
  g_pids, g_camids = np.asarray(g_pids), np.asarray(g_camids)
  kept_columns = g_pids != JUNK_PERSON_ID
  for start in range(0, len(distances), HISTOGRAM_ROWS):
    rows = slice(start, start + HISTOGRAM_ROWS)
    same = np.asarray(q_pids)[rows, None] == g_pids
    q_cams = np.asarray(q_camids)[rows, None]
    same_camera = (q_cams == g_camids) & (q_cams != UNKNOWN_CAMERA)
    block = np.asarray(distances[rows])
    true_mask = same & ~same_camera & kept_columns
    false_mask = ~same & kept_columns
    true_counts += np.histogram(block[true_mask], edges)[0]
    false_counts += np.histogram(block[false_mask], edges)[0]
  return edges, true_counts, false_counts


def distance_figure(edges, true_counts, false_counts) -> Figure:
  """The two histograms of `match_distance_histograms`, each normalised."""
  figure, axes = _new_figure('distances of true and false matches',
                             'distance', 'share of pairs (%)')
  for counts, label, colour in ((true_counts, 'true matches', 'tab:green'),
                                (false_counts, 'false matches', 'tab:red')):
    total = max(int(counts.sum()), 1)
    axes.stairs(100 * counts / total, edges, fill=True, alpha=0.5,
                color=colour, label=f'{label} ({int(counts.sum()):,} pairs)')
  axes.legend(loc='upper right')
  return figure


def roc_figure(summary: dict[str, Any]) -> Figure:
  """The ROC curve of a metrics.json ``verification`` block (TPR against
  FPR, log-scale FPR), its reported FPRs marked."""
  figure, axes = _new_figure(
      f'ROC (query-gallery pairs, AUC {100 * summary["auc"]:.2f}%)',
      'false-positive rate', 'true-positive rate (%)')
  curve = summary['curve']
  axes.plot(curve['fpr'], 100 * np.asarray(curve['tpr']),
            drawstyle='steps-post', label='plain distances')
  for f, tpr, threshold in zip(summary['fpr'], summary['tpr'],
                               summary['threshold']):
    if tpr is not None:
      axes.plot(f, 100 * tpr, 'o', color='tab:red')
      axes.annotate(f'{100 * tpr:.1f}% (d <= {threshold:.3g})',
                    (f, 100 * tpr), textcoords='offset points',
                    xytext=(4, -12), fontsize=8)
  axes.set_xscale('log')
  axes.set_xlim(curve['fpr'][0], 1)
  axes.set_ylim(0, 100)
  axes.legend(loc='lower right')
  return figure
