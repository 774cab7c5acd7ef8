"""A self-contained HTML report of an evaluation (``report.html``).

One file, no external resources (every picture is embedded as a base64 data
URI), readable offline in any browser:

- the run's settings and the metrics table (plain and re-ranked);
- verification: TPR and distance threshold at fixed FPRs, AUC, and the ROC
  curve (from metrics.json's ``verification`` block, when present);
- the CMC curve (ranks 1 to ``max_rank``), the distribution of AP over the
  valid queries, and the distances of true and false matches;
- per-camera results (the valid queries grouped by their camera; one
  sentence, `NO_CAMERAS`, when no query has a known camera);
- the hardest queries (lowest AP) and a few random ones, each with its top-k
  gallery images bordered as ``pictures.ranks_picture`` does: green a true
  match, red another person, grey what the protocol ignores (junk, or the
  same person seen by the same camera).

Plots are drawn by matplotlib's Agg canvas (no display, no global pyplot
state). Numbers in the tables carry a ``data-key`` attribute naming their
entry of metrics.json (e.g. ``plain.mAP``) and show it in percent to two
decimals.
"""

import glob
import html
import os
import re
from typing import Any, Callable, Optional, Sequence

import ml_collections
import numpy as np

from sa_reid_jax.datasets import sources
from sa_reid_jax.datasets.image_records import UNKNOWN_CAMERA
from sa_reid_jax.evaluation.evaluate import Evaluation
from sa_reid_jax.evaluation import pictures
from sa_reid_jax.evaluation import report_figures
from sa_reid_jax.evaluation import verification
from sa_reid_jax.evaluation.metrics import RankResult
from sa_reid_jax.models import registry

REPORT_HTML = 'report.html'
# An evaluation target's report beside report.html: report_<name>.html, the
# name its dataset spec with every run of other characters than these made
# one '_', cut to its last TARGET_NAME_CHARS characters.
TARGET_REPORT = 'report_{}.html'
TARGET_NAME_CHARS = 80
_UNSAFE = re.compile(r'[^A-Za-z0-9.-]+')
SETTINGS = ('plain', 'reranked')
# The per-camera section when no query has a known camera.
NO_CAMERAS = 'cameras unknown: no per-camera results'
METRIC_COLUMNS = (('rank1', 'rank-1'), ('rank5', 'rank-5'),
                  ('rank10', 'rank-10'), ('mAP', 'mAP'), ('mINP', 'mINP'))
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


def _verification_table(summary: dict[str, Any]) -> str:
  """FPR / TPR / threshold rows, keyed ``verification.tpr.I`` and
  ``verification.threshold.I`` (I the FPR's index in metrics.json), and
  the AUC (``verification.auc``)."""
  rows = []
  for i, (f, tpr, threshold, reason) in enumerate(zip(
      summary['fpr'], summary['tpr'], summary['threshold'],
      summary['not_estimable'])):
    shown = ('-' if threshold is None else f'{threshold:.6g}')
    note = html.escape(reason or '')
    rows.append(f'<tr><td class="name">{verification.fpr_text(f)}</td>'
                f'{_cell(tpr, f"verification.tpr.{i}")}'
                f'<td data-key="verification.threshold.{i}">{shown}</td>'
                f'<td class="name">{note}</td></tr>')
  rows.append(f'<tr><td class="name">AUC (%)</td>'
              f'{_cell(summary["auc"], "verification.auc")}<td></td>'
              f'<td class="name">over {summary["num_positive_pairs"]:,} '
              f'positive and {summary["num_negative_pairs"]:,} negative '
              'pairs</td></tr>')
  return ('<table id="verification"><tr><th class="name">FPR</th>'
          '<th>TPR (%)</th><th>threshold (distance)</th>'
          f'<th class="name">note</th></tr>{"".join(rows)}</table>')


def per_camera(result: RankResult, q_camids: np.ndarray
               ) -> list[dict[str, Any]]:
  """Results of the valid queries grouped by the query's camera.

  Args:
    result: an `evaluate_rank` result (per-query arrays used).
    q_camids: (num_query,) camera of every query.

  Returns:
    one dict per known camera seen among the queries (queries of an
    unknown camera, `UNKNOWN_CAMERA`, are in no row), in camera order:
    ``camera`` (0-based id), ``num_queries`` (all), ``num_valid_queries``,
    and over the valid ones ``rank1``, ``rank5``, ``mAP``, ``mINP``
    (fractions, None without a valid query).
  """
  q_camids = np.asarray(q_camids)
  valid_cameras = q_camids[result.query_index]
  rows = []
  for camera in np.unique(q_camids[q_camids != UNKNOWN_CAMERA]):
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


def _camera_section(rows: Sequence[dict[str, Any]]) -> str:
  """The per-camera section's text and table (`per_camera` rows), or one
  sentence when no query has a known camera."""
  if not rows:
    return f'<p id="cameras">{NO_CAMERAS}</p>'
  return ('<p>Valid queries grouped by their camera (plain ranking).</p>\n'
          + _camera_table(rows))


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
    camera = ('unknown' if query.camera_ids[q] == UNKNOWN_CAMERA else
              query.camera_ids[q] + 1)
    caption = (f'query {html.escape(str(query.filenames[q]))} (person '
               f'{query.person_ids[q]}, camera {camera}): AP '
               f'{100 * result.average_precision[i]:.2f}%, first true match '
               f'at rank {result.first_match_rank[i]}')
    figures.append(f'<figure><img alt="ranked gallery of query {q}" '
                   f'src="{report_figures.data_uri(picture, "JPEG")}"><figcaption>{caption}'
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
  for target in remove_target_reports(directory):
    say(f'removed {target}: an earlier evaluation target\'s report')
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
                  warnings: Sequence[str] = (),
                  links: Sequence[tuple[str, str, str]] = ()) -> str:
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
    links: (file, dataset spec, summary) of the other evaluation targets'
      reports, listed after the settings (`write_reports`).

  Returns:
    the HTML text (UTF-8), images embedded as data URIs.
  """
  results = {'plain': evaluation.plain}
  if evaluation.reranked is not None:
    results['reranked'] = evaluation.reranked
  query, gallery = evaluation.query, evaluation.gallery
  histograms = report_figures.match_distance_histograms(
      evaluation.distances, query.person_ids, gallery.person_ids,
      query.camera_ids, gallery.camera_ids)
  plots = [('cmc', report_figures.cmc_figure(results)),
           ('ap', report_figures.ap_figure(results)),
           ('distances', report_figures.distance_figure(*histograms))]
  same_camera_removal = evaluation.metrics.get('settings', {}).get(
      'same_camera_removal', sources.cameras_known(query, gallery))
  summary = evaluation.metrics.get('verification')
  verification_html = ''
  if summary is not None:
    plots.append(('roc', report_figures.roc_figure(summary)))
    positive = ('same person, other camera' if same_camera_removal else
                'same person, any camera (cameras unknown)')
    verification_html = f"""<h2>Verification</h2>
<p>Same person or not: a query-gallery pair of the protocol (positive:
{positive}; negative: another person or a distractor) is accepted
when its plain distance is at most the threshold, the largest distance whose
false-positive rate is at most the FPR. ROC curve below.</p>
{_verification_table(summary)}"""
  plot_html = ''.join(f'<figure><img id="{name}" alt="{name} plot" '
                      f'src="{report_figures.figure_uri(figure)}"></figure>'
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
  protocol = protocol_sentence(same_camera_removal)
  return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
{warning_html}<h2>Settings</h2>{_settings_table(settings)}
{_links_html(links)}<h2>Metrics</h2>
<p>{len(query):,} queries, {len(gallery):,} gallery images; {protocol}</p>
{_metrics_table(evaluation.metrics)}
{verification_html}
<h2>Curves and distributions</h2>{plot_html}
<h2>Per query camera</h2>
{_camera_section(per_camera(evaluation.plain, query.camera_ids))}
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
                 step: Optional[int] = None, *, dataset: str = '',
                 links: Sequence[tuple[str, str, str]] = ()) -> str:
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
    dataset: the evaluated dataset as shown (default
      ``sources.describe(config.dataset)``).
    links: the other targets' reports (`render_report`).

  Returns:
    `path`.
  """
  run = evaluation.metrics['settings']
  settings = {'checkpoint': checkpoint}
  if step is None:
    step = run.get('trained_steps')
  if step is not None:
    settings['trained steps'] = step
  settings['dataset'] = dataset or sources.describe(config.dataset)
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
  if 'same_camera_removal' in run:
    settings['same_camera_removal'] = run['same_camera_removal']
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
      warnings=[warning] if warning else [], links=links)
  with open(path, 'w', encoding='utf-8') as f:
    f.write(text)
  return path


# --- several evaluation targets ----------------------------------------------


def protocol_sentence(same_camera_removal: bool) -> str:
  """What the evaluation removed, for the report's metrics section (from
  metrics.json's ``settings.same_camera_removal``)."""
  if same_camera_removal:
    return ('Market-1501 protocol (junk and same-person same-camera gallery '
            'images removed per query, queries without a true match '
            'skipped).')
  return ('Market-1501 protocol without cameras: cameras are unknown, so no '
          'gallery image is removed for sharing the query\'s camera (every '
          'gallery image of its person is a true match); junk removed, '
          'queries without a true match skipped.')


def target_report_name(spec: str, taken: Sequence[str] = ()) -> str:
  """The file name of a target's report (`TARGET_REPORT`), e.g.
  ``report_folder_data_duke.html`` for ``folder:data/duke``; ``_2``,
  ``_3``, ... appended where the name is in `taken`."""
  name = _UNSAFE.sub('_', spec).strip('_')[-TARGET_NAME_CHARS:] or 'target'
  candidate, n = TARGET_REPORT.format(name), 1
  while candidate in taken:
    n += 1
    candidate = TARGET_REPORT.format(f'{name}_{n}')
  return candidate


def remove_target_reports(directory: str) -> list[str]:
  """Removes the targets' reports (`TARGET_REPORT`) an earlier evaluation
  left in `directory`; returns their paths."""
  paths = sorted(glob.glob(os.path.join(glob.escape(directory),
                                        TARGET_REPORT.format('*'))))
  for path in paths:
    os.remove(path)
  return paths


def _summary(metrics: dict[str, Any]) -> str:
  plain = metrics['plain']
  return (f'rank-1 {100 * plain["rank1"]:.2f}%, mAP {100 * plain["mAP"]:.2f}%'
          f' ({plain["num_valid_queries"]} queries)')


def _links_html(links: Sequence[tuple[str, str, str]]) -> str:
  if not links:
    return ''
  items = ''.join(f'<li><a href="{html.escape(path)}">{html.escape(spec)}'
                  f'</a>: {html.escape(summary)}</li>'
                  for path, spec, summary in links)
  return (f'<h2>Evaluation targets</h2><p>Each target '
          f'(config.eval.extra_targets) has its own report:</p>'
          f'<ul id="targets">{items}</ul>\n')


def render_index(title: str, note: str,
                 links: Sequence[tuple[str, str, str]]) -> str:
  """report.html of a run whose own dataset was not evaluated: `note`
  (why) and the targets' reports (`render_report`'s `links`)."""
  return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<p id="note">{html.escape(note)}</p>
{_links_html(links)}</body></html>
"""


def write_reports(main: Optional[Evaluation],
                  targets: dict[str, Evaluation], directory: str, model,
                  config: ml_collections.ConfigDict, checkpoint: str,
                  step: Optional[int] = None, *, dataset: str = ''
                  ) -> list[str]:
  """report.html and one report per evaluation target, linked from it.

  Earlier targets' reports in `directory` are removed first.

  Args:
    main: the evaluation of config.dataset, or None (a train-only dataset:
      report.html then only says so and links the targets' reports).
    targets: {dataset spec: its evaluation}.
    directory: where the reports go (it exists).
    model, config, checkpoint, step: as in `write_report`.
    dataset: config.dataset as shown (default `sources.describe`).

  Returns:
    the paths written, report.html first.
  """
  remove_target_reports(directory)
  dataset = dataset or sources.describe(config.dataset)
  links, written = [], []
  for spec, evaluation in targets.items():
    name = target_report_name(spec, [path for path, _, _ in links])
    written.append(write_report(
        evaluation, os.path.join(directory, name), model, config,
        checkpoint, step, dataset=evaluation.metrics['settings'].get(
            'dataset', spec)))
    links.append((name, spec, _summary(evaluation.metrics)))
  path = os.path.join(directory, REPORT_HTML)
  if main is not None:
    write_report(main, path, model, config, checkpoint, step,
                 dataset=dataset, links=links)
  else:
    text = render_index(
        f'Evaluation of {checkpoint}',
        f'{dataset} has no query and gallery splits (it only trains); the '
        'evaluation targets are reported below.', links)
    with open(path, 'w', encoding='utf-8') as f:
      f.write(text)
  return [path] + written
