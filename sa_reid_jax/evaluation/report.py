"""A self-contained HTML report of an evaluation (``report.html``).

One file, no external resources (every picture is embedded as a base64 data
URI), readable offline in any browser:

- the run's settings and the metrics table (plain and re-ranked);
- the CMC curve (ranks 1 to ``max_rank``), the distribution of AP over the
  valid queries, and the distances of true and false matches;
- per-camera results (the valid queries grouped by their camera);
- the hardest queries (lowest AP) and a few random ones, each with its top-k
  gallery images bordered as ``pictures.ranks_picture`` does: green a true
  match, red another person, grey what the protocol ignores (junk, or the
  same person seen by the same camera).

Plots are drawn by matplotlib's Agg canvas (no display, no global pyplot
state). Numbers in the tables carry a ``data-key`` attribute naming their
entry of metrics.json (e.g. ``plain.mAP``) and show it in percent to two
decimals.
"""

import base64
import html
import io
import os
from typing import Any, Callable, Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import ml_collections
import numpy as np
from PIL import Image

from sa_reid_jax.datasets.market_layout import JUNK_PERSON_ID
from sa_reid_jax.evaluation.evaluate import Evaluation
from sa_reid_jax.evaluation import pictures
from sa_reid_jax.evaluation.metrics import RankResult
from sa_reid_jax.models import registry

REPORT_HTML = 'report.html'
SETTINGS = ('plain', 'reranked')
METRIC_COLUMNS = (('rank1', 'rank-1'), ('rank5', 'rank-5'),
                  ('rank10', 'rank-10'), ('mAP', 'mAP'), ('mINP', 'mINP'))
# Query rows of the distance matrix per histogram pass (bounds the memory of
# the masks to this many rows at a time).
HISTOGRAM_ROWS = 256
HISTOGRAM_BINS = 50
FIGURE_SIZE = (6.4, 3.6)  # inches, at FIGURE_DPI
FIGURE_DPI = 100
JPEG_QUALITY = 90
STYLE = """
body { font-family: sans-serif; margin: 1.5em; max-width: 1100px; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th { background: #eee; } td.name, th.name { text-align: left; }
figure { display: inline-block; margin: 0.3em; }
figcaption { font-size: 0.85em; color: #333; }
.legend span { padding: 0 0.4em; color: white; }
.warning { background: #fdd; border: 1px solid #c00; padding: 0.4em; }
"""


def _data_uri(image: Image.Image, image_format: str) -> str:
  buffer = io.BytesIO()
  image.save(buffer, format=image_format, quality=JPEG_QUALITY)
  mime = 'jpeg' if image_format == 'JPEG' else image_format.lower()
  encoded = base64.b64encode(buffer.getvalue()).decode('ascii')
  return f'data:image/{mime};base64,{encoded}'


def _figure_uri(figure: Figure) -> str:
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
  are left out, distractors (person id 0) count as false matches.

  Args:
    distances: (num_query, num_gallery) distances.
    q_pids, g_pids, q_camids, g_camids: ids of the queries and the gallery.
    bins: number of equal-width bins over the finite distances' range.

  Returns:
    (edges (bins + 1,), true-match counts (bins,), false-match counts
    (bins,)), counts as int64.
  """
  finite = distances[np.isfinite(distances)]
  low, high = (float(finite.min()), float(finite.max())) if finite.size else (
      0.0, 1.0)
  edges = np.linspace(low, high if high > low else low + 1, bins + 1)
  true_counts = np.zeros(bins, np.int64)
  false_counts = np.zeros(bins, np.int64)
  g_pids, g_camids = np.asarray(g_pids), np.asarray(g_camids)
  kept_columns = g_pids != JUNK_PERSON_ID
  for start in range(0, len(distances), HISTOGRAM_ROWS):
    rows = slice(start, start + HISTOGRAM_ROWS)
    same = np.asarray(q_pids)[rows, None] == g_pids
    same_camera = np.asarray(q_camids)[rows, None] == g_camids
    block = distances[rows]
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


def per_camera(result: RankResult, q_camids: np.ndarray
               ) -> list[dict[str, Any]]:
  """Results of the valid queries grouped by the query's camera.

  Args:
    result: an `evaluate_rank` result (per-query arrays used).
    q_camids: (num_query,) camera of every query.

  Returns:
    one dict per camera seen among the queries, in camera order: ``camera``
    (0-based id), ``num_queries`` (all), ``num_valid_queries``, and over the
    valid ones ``rank1``, ``rank5``, ``mAP``, ``mINP`` (fractions, None
    without a valid query).
  """
  q_camids = np.asarray(q_camids)
  valid_cameras = q_camids[result.query_index]
  rows = []
  for camera in np.unique(q_camids):
    mask = valid_cameras == camera
    row = {'camera': int(camera),
           'num_queries': int(np.count_nonzero(q_camids == camera)),
           'num_valid_queries': int(np.count_nonzero(mask))}
    if mask.any():
      first = result.first_match_rank[mask]
      row.update(rank1=float(np.mean(first <= 1)),
                 rank5=float(np.mean(first <= 5)),
                 mAP=float(np.mean(result.average_precision[mask])),
                 mINP=float(np.mean(result.inverse_negative_penalty[mask])))
    else:
      row.update(rank1=None, rank5=None, mAP=None, mINP=None)
    rows.append(row)
  return rows


def example_queries(result: RankResult, num_hardest: int, num_random: int,
                    seed: int) -> tuple[list[int], list[int]]:
  """Query rows to show: the lowest-AP ones and random other valid ones.

  Args:
    result: an `evaluate_rank` result.
    num_hardest: queries of lowest AP (ties: lower query index first).
    num_random: further valid queries drawn uniformly without repeats.
    seed: of the draw.

  Returns:
    (hardest, random) query rows; the random ones ascending.
  """
  order = np.lexsort((result.query_index, result.average_precision))
  hardest = result.query_index[order[:num_hardest]]
  rest = result.query_index[order[num_hardest:]]
  count = min(num_random, len(rest))
  drawn = np.random.default_rng(seed).choice(rest, count, replace=False)
  return [int(q) for q in hardest], sorted(int(q) for q in drawn)


def _cell(value: Optional[float], key: Optional[str] = None) -> str:
  attribute = f' data-key="{html.escape(key)}"' if key else ''
  text = '-' if value is None else f'{100 * value:.2f}'
  return f'<td{attribute}>{text}</td>'


def _metrics_table(metrics: dict[str, Any]) -> str:
  header = ''.join(f'<th>{label} (%)</th>' for _, label in METRIC_COLUMNS)
  rows = []
  for setting in SETTINGS:
    if setting not in metrics:
      continue
    values = metrics[setting]
    cells = ''.join(_cell(values.get(key), f'{setting}.{key}')
                    for key, _ in METRIC_COLUMNS)
    count = values['num_valid_queries']
    rows.append(f'<tr><td class="name">{setting}</td>{cells}'
                f'<td data-key="{setting}.num_valid_queries">{count}</td></tr>')
  return (f'<table id="metrics"><tr><th class="name">ranking</th>{header}'
          f'<th>valid queries</th></tr>{"".join(rows)}</table>')


def _camera_table(rows: Sequence[dict[str, Any]]) -> str:
  keys = (('rank1', 'rank-1'), ('rank5', 'rank-5'), ('mAP', 'mAP'),
          ('mINP', 'mINP'))
  header = ''.join(f'<th>{label} (%)</th>' for _, label in keys)
  body = ''.join(
      f'<tr><td class="name">{row["camera"] + 1}</td>'
      f'<td>{row["num_queries"]}</td><td>{row["num_valid_queries"]}</td>'
      + ''.join(_cell(row[key], f'camera{row["camera"] + 1}.{key}')
                for key, _ in keys) + '</tr>' for row in rows)
  return (f'<table id="cameras"><tr><th class="name">query camera</th>'
          f'<th>queries</th><th>valid</th>{header}</tr>{body}</table>')


def _settings_table(settings: dict[str, Any]) -> str:
  body = ''.join(f'<tr><td class="name">{html.escape(str(key))}</td>'
                 f'<td class="name">{html.escape(str(value))}</td></tr>'
                 for key, value in settings.items())
  return f'<table id="settings">{body}</table>'


def _examples(evaluation: Evaluation, rows: Sequence[int], topk: int,
              thumbnail: tuple[int, int]) -> str:
  """One ranks picture per query, captioned with its AP and first match."""
  result = evaluation.plain
  position = {int(q): i for i, q in enumerate(result.query_index)}
  query, gallery = evaluation.query, evaluation.gallery
  figures = []
  for q in rows:
    distances = evaluation.distances[q]
    order = np.argsort(distances, kind='stable')[:topk]
    kinds = pictures.match_kinds(query.person_ids[q], query.camera_ids[q],
                                 gallery.person_ids, gallery.camera_ids)
    ranked = {'paths': [gallery.images[i] for i in order],
              'kinds': [str(kinds[i]) for i in order],
              'distances': [float(distances[i]) for i in order]}
    picture = pictures.ranks_picture([query.images[q]], [ranked], thumbnail)
    i = position[q]
    caption = (f'query {html.escape(str(query.filenames[q]))} (person '
               f'{query.person_ids[q]}, camera {query.camera_ids[q] + 1}): AP '
               f'{100 * result.average_precision[i]:.2f}%, first true match '
               f'at rank {result.first_match_rank[i]}')
    figures.append(f'<figure><img alt="ranked gallery of query {q}" '
                   f'src="{_data_uri(picture, "JPEG")}"><figcaption>{caption}'
                   '</figcaption></figure>')
  return '<br>'.join(figures)


def image_size_warning(settings: dict[str, Any]) -> Optional[str]:
  """A line saying that the evaluation ran at another image size than the
  model was trained at, from metrics.json's ``settings`` (see
  `evaluate.record_source`); None otherwise (or when unknown)."""
  if settings.get('image_size_matches_training') is not False:
    return None
  size = 'x'.join(str(v) for v in settings['image_size'])
  trained = 'x'.join(str(v) for v in settings['trained_image_size'])
  return (f'evaluated at image size {size}, not at {trained}, the size the '
          'model was trained at: these scores do not describe the model at '
          'its own size')


def remove_stale_report(directory: str, hint: str,
                        say: Callable[[str], None] = print) -> Optional[str]:
  """Removes an earlier evaluation's report.html from `directory`.

  For an evaluation that writes metrics.json there without a report: the
  old report would otherwise sit beside metrics.json it does not match.

  Args:
    directory: where metrics.json was just written.
    hint: how to get a new report (e.g. ``--report``), for the line.
    say: called with one line when a report was removed.

  Returns:
    the removed file's path, or None when there was none.
  """
  path = os.path.join(directory, REPORT_HTML)
  if not os.path.isfile(path):
    return None
  os.remove(path)
  say(f'removed {path}: an earlier evaluation\'s report, which the new '
      f'metrics.json does not match ({hint} writes a new one)')
  return path


def render_report(evaluation: Evaluation, settings: dict[str, Any], *,
                  num_hardest: int, num_random: int, topk: int,
                  thumbnail: tuple[int, int], seed: int,
                  title: str = 'Re-identification evaluation',
                  warnings: Sequence[str] = ()) -> str:
  """The report as one HTML document.

  Args:
    evaluation: a `run_evaluation` result.
    settings: run settings shown as a table (model, checkpoint, flip,
      metric, re-ranking parameters, ...), values as text.
    num_hardest: lowest-AP queries shown.
    num_random: random further queries shown.
    topk: gallery images shown per query.
    thumbnail: (height, width) of each image in the rank lists.
    seed: of the random queries.
    title: the page's title.
    warnings: lines shown above the settings, framed in red (e.g.
      `image_size_warning`), each with ``id="warning"``.

  Returns:
    the HTML text (UTF-8), images embedded as data URIs.
  """
  results = {'plain': evaluation.plain}
  if evaluation.reranked is not None:
    results['reranked'] = evaluation.reranked
  query, gallery = evaluation.query, evaluation.gallery
  histograms = match_distance_histograms(
      evaluation.distances, query.person_ids, gallery.person_ids,
      query.camera_ids, gallery.camera_ids)
  plots = [('cmc', cmc_figure(results)), ('ap', ap_figure(results)),
           ('distances', distance_figure(*histograms))]
  plot_html = ''.join(f'<figure><img id="{name}" alt="{name} plot" '
                      f'src="{_figure_uri(figure)}"></figure>'
                      for name, figure in plots)
  hardest, drawn = example_queries(evaluation.plain, num_hardest, num_random,
                                   seed)
  legend = ''.join(
      f'<span style="background: rgb{colour}">{kind}</span> '
      for kind, colour in (('query', pictures.BLUE),
                           ('true match', pictures.GREEN),
                           ('other person', pictures.RED),
                           ('ignored: junk or same camera', pictures.GREY)))
  warning_html = ''.join(
      f'<p class="warning" id="warning"><strong>Warning:</strong> '
      f'{html.escape(line)}</p>\n' for line in warnings)
  return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
{warning_html}<h2>Settings</h2>{_settings_table(settings)}
<h2>Metrics</h2>
<p>{len(query):,} queries, {len(gallery):,} gallery images; Market-1501
protocol (junk and same-person same-camera gallery images removed per query,
queries without a true match skipped).</p>
{_metrics_table(evaluation.metrics)}
<h2>Curves and distributions</h2>{plot_html}
<h2>Per query camera</h2>
<p>Valid queries grouped by their camera (plain ranking).</p>
{_camera_table(per_camera(evaluation.plain, query.camera_ids))}
<h2>Hardest queries</h2>
<p class="legend">The {len(hardest)} queries of lowest AP (plain ranking),
each followed by its top {topk} gallery images: {legend}</p>
{_examples(evaluation, hardest, topk, thumbnail)}
<h2>Random queries</h2>
<p>{len(drawn)} other valid queries drawn at random (seed {seed}).</p>
{_examples(evaluation, drawn, topk, thumbnail)}
</body></html>
"""


def write_report(evaluation: Evaluation, path: str, model,
                 config: ml_collections.ConfigDict, checkpoint: str,
                 step: Optional[int] = None) -> str:
  """Writes the report of `evaluation` with the config's report options.

  Args:
    evaluation: a `run_evaluation` result.
    path: the HTML file to write (its folder must exist).
    model: the evaluated network (its constructor arguments are shown).
    config: the config evaluated with (``dataset``, ``image_size``,
      ``seed`` and the ``eval.report_*`` fields).
    checkpoint: the model directory or training run shown as the source.
    step: trained steps, when known (default: ``trained_steps`` of the
      evaluation's settings, see `evaluate.record_source`).

  Returns:
    `path`.
  """
  run = evaluation.metrics['settings']
  settings = {'checkpoint': checkpoint}
  if step is None:
    step = run.get('trained_steps')
  if step is not None:
    settings['trained steps'] = step
  settings['dataset'] = config.dataset.folder or config.dataset.name
  settings['image size'] = 'x'.join(str(v) for v in config.image_size)
  if run.get('trained_image_size'):
    settings['trained image size'] = 'x'.join(
        str(v) for v in run['trained_image_size'])
  warning = image_size_warning(run)
  description = registry.describe(model)
  settings['model'] = ', '.join(
      [f'family={description["family"]}'] +
      [f'{key}={value}' for key, value in description['config'].items()])
  settings['flip'] = run['flip']
  settings['metric'] = run['metric']
  if evaluation.reranked is not None:
    settings['re-ranking'] = (f'k1={run["k1"]}, k2={run["k2"]}, '
                              f'lambda={run["lambda_value"]}')
  else:
    settings['re-ranking'] = 'not computed'
  text = render_report(
      evaluation, settings, num_hardest=config.eval.report_hardest,
      num_random=config.eval.report_random, topk=config.eval.report_topk,
      thumbnail=tuple(config.eval.report_thumbnail), seed=config.seed,
      title=f'Evaluation of {checkpoint}',
      warnings=[warning] if warning else [])
  with open(path, 'w', encoding='utf-8') as f:
    f.write(text)
  return path
