"""The HTML evaluation report: parsed back, its images decoded, its numbers
compared with metrics.json and with independent computations."""

import dataclasses
import json

import helpers
import numpy as np
from PIL import Image
import pytest

from sa_reid_jax.datasets import tables
from sa_reid_jax.evaluation import evaluate
from sa_reid_jax.evaluation import report
from sa_reid_jax.evaluation import report_figures
from sa_reid_jax.evaluation.metrics import evaluate_rank
from sa_reid_jax.evaluation import verification
from sa_reid_jax.models.sanet import SANet
from sa_reid_jax.training import defaults

NUM_HARDEST, NUM_RANDOM, TOPK = 3, 2, 4


def _write_jpegs(folder, names, rng):
  paths = []
  for name in names:
    path = folder / name
    Image.fromarray(rng.integers(0, 256, (16, 8, 3), dtype=np.uint8)).save(
        path)
    paths.append(str(path))
  return paths


def _table(paths, pids, cams):
  return tables.ExampleTable(
      images=np.array(paths, dtype=object), images_are_paths=True,
      person_ids=np.array(pids, np.int32),
      labels=np.full(len(paths), -1, np.int32),
      camera_ids=np.array(cams, np.int32),
      filenames=np.array([p.rsplit('/', 1)[-1] for p in paths], dtype=object))


@pytest.fixture(name='small')
def fixture_small(tmp_path):
  """An Evaluation of 12 queries against 30 gallery images (junk included),
  with distances that make some queries easy and some hard."""
  rng = np.random.default_rng(0)
  q_pids = np.repeat(np.arange(1, 7), 2)
  q_cams = np.tile([0, 1], 6)
  g_pids = np.concatenate([np.repeat(np.arange(1, 7), 4), [0, 0, 0, -1, -1,
                                                            -1]])
  g_cams = np.concatenate([np.tile([0, 1, 2, 2], 6), [0, 1, 2, 0, 1, 2]])
  distances = rng.uniform(0.5, 2.0, (12, 30)).astype(np.float32)
  same = q_pids[:, None] == g_pids[None]
  distances[same] -= np.linspace(0.0, 1.0, 12, dtype=np.float32)[:, None][
      np.nonzero(same)[0], 0]
  query = _table(_write_jpegs(tmp_path, [f'q{i}.jpg' for i in range(12)], rng),
                 q_pids, q_cams)
  gallery = _table(_write_jpegs(tmp_path, [f'g{i}.jpg' for i in range(30)],
                                rng), g_pids, g_cams)
  ids = (q_pids, g_pids, q_cams, g_cams)
  plain = evaluate_rank(distances, *ids)
  reranked = evaluate_rank(distances ** 2 + 0.1 * rng.random((12, 30)), *ids)
  metrics = {'plain': evaluate.summarize(plain),
             'reranked': evaluate.summarize(reranked),
             'settings': {'flip': False, 'metric': 'euclidean', 'k1': 20,
                          'k2': 6, 'lambda_value': 0.3}}
  return evaluate.Evaluation(metrics=metrics, query=query, gallery=gallery,
                             distances=distances, plain=plain,
                             reranked=reranked)


def _config():
  config = defaults.experiment_config('market_layout_folder', 'full')
  config.dataset.folder = '/data/somewhere'
  config.eval.report_hardest = NUM_HARDEST
  config.eval.report_random = NUM_RANDOM
  config.eval.report_topk = TOPK
  config.eval.report_thumbnail = (32, 16)
  return config


def test_report_images_decode_and_numbers_equal_metrics_json(small, tmp_path):
  evaluate.write_metrics(small.metrics, str(tmp_path / 'metrics.json'))
  path = report.write_report(small, str(tmp_path / 'report.html'),
                             SANet(num_classes=6), _config(), 'runs/x', 7)
  parser, images = helpers.parse_report(path)
  # 3 plots, then one rank list per shown query.
  assert len(images) == 3 + NUM_HARDEST + NUM_RANDOM
  assert all(image.format == 'PNG' for image in images[:3])
  # A rank list: the query and TOPK gallery thumbnails of 32x16 plus borders.
  assert images[3].width > (TOPK + 1) * 16
  with open(tmp_path / 'metrics.json') as f:
    helpers.check_report_numbers(parser, json.load(f))
  # Per camera: the protocol run on that camera's queries alone.
  q_cams = small.query.camera_ids
  for camera in (0, 1):
    rows = q_cams == camera
    alone = evaluate_rank(small.distances[rows], small.query.person_ids[rows],
                          small.gallery.person_ids, q_cams[rows],
                          small.gallery.camera_ids)
    shown = parser.cells
    # Printed as percentages with two decimals: half a unit of the last
    # printed digit.
    assert float(shown[f'camera{camera + 1}.mAP']) == pytest.approx(
        100 * alone.mAP, abs=0.005)
    assert float(shown[f'camera{camera + 1}.rank1']) == pytest.approx(
        100 * alone.cmc[0], abs=0.005)
    assert float(shown[f'camera{camera + 1}.mINP']) == pytest.approx(
        100 * alone.mINP, abs=0.005)
  text = (tmp_path / 'report.html').read_text()
  assert 'k1=20, k2=6, lambda=0.3' in text and 'runs/x' in text


def test_report_without_reranking_has_only_plain(small, tmp_path):
  plain_only = evaluate.Evaluation(
      metrics={'plain': small.metrics['plain'],
               'settings': {'flip': True, 'metric': 'cosine'}},
      query=small.query, gallery=small.gallery, distances=small.distances,
      plain=small.plain, reranked=None)
  path = report.write_report(plain_only, str(tmp_path / 'report.html'),
                             SANet(num_classes=6), _config(), 'model')
  parser, _ = helpers.parse_report(path)
  helpers.check_report_numbers(parser, plain_only.metrics)
  assert 'not computed' in (tmp_path / 'report.html').read_text()


def test_hardest_queries_have_the_lowest_ap(small):
  hardest, drawn = report.example_queries(small.plain, 3, 4, seed=0)
  ap = dict(zip(small.plain.query_index, small.plain.average_precision))
  others = [ap[q] for q in ap if q not in hardest]
  assert max(ap[q] for q in hardest) <= min(others)
  assert len(drawn) == 4 and not set(drawn) & set(hardest)
  assert drawn == sorted(drawn)
  assert report.example_queries(small.plain, 3, 4, seed=0) == (hardest, drawn)


def test_distance_histograms_equal_a_pair_by_pair_count(small, monkeypatch):
  monkeypatch.setattr(report_figures, 'HISTOGRAM_ROWS', 5)  # several passes
  q, g = small.query, small.gallery
  edges, true_counts, false_counts = report_figures.match_distance_histograms(
      small.distances, q.person_ids, g.person_ids, q.camera_ids, g.camera_ids,
      bins=7)
  true_values, false_values = [], []
  for i in range(len(q)):
    for j in range(len(g)):
      if g.person_ids[j] == -1:
        continue
      if g.person_ids[j] != q.person_ids[i]:
        false_values.append(small.distances[i, j])
      elif g.camera_ids[j] != q.camera_ids[i]:
        true_values.append(small.distances[i, j])
  np.testing.assert_array_equal(true_counts,
                                np.histogram(true_values, edges)[0])
  np.testing.assert_array_equal(false_counts,
                                np.histogram(false_values, edges)[0])
  assert true_counts.sum() == len(true_values)
  assert false_counts.sum() == len(false_values)


def test_report_shows_the_roc_curve_and_the_verification_table(small,
                                                                 tmp_path):
  q, g = small.query, small.gallery
  # 12 queries x 27 kept gallery images: 1e-2 is the smallest estimable FPR.
  # The fixture's distances go below 0, which verification refuses.
  summary = verification.summarize_verification(
      verification.evaluate_verification(
          small.distances - small.distances.min(), q.person_ids, g.person_ids, q.camera_ids,
          g.camera_ids, fprs=(1e-3, 1e-2, 1e-1)))
  assert summary['tpr'][0] is None and summary['tpr'][1] is not None
  metrics = dict(small.metrics, verification=summary)
  evaluate.write_metrics(metrics, str(tmp_path / 'metrics.json'))
  with_roc = evaluate.Evaluation(
      metrics=metrics, query=q, gallery=g, distances=small.distances,
      plain=small.plain, reranked=small.reranked)
  path = report.write_report(with_roc, str(tmp_path / 'report.html'),
                             SANet(num_classes=6), _config(), 'runs/x', 7)
  parser, images = helpers.parse_report(path)
  # CMC, AP, distances, ROC, then the rank lists.
  assert len(images) == 4 + NUM_HARDEST + NUM_RANDOM
  assert images[3].format == 'PNG'
  text = (tmp_path / 'report.html').read_text()
  assert 'id="roc"' in text and 'id="verification"' in text
  with open(tmp_path / 'metrics.json') as f:
    written = json.load(f)['verification']
  helpers.check_report_numbers(parser, metrics)
  for i, (tpr, threshold) in enumerate(zip(written['tpr'],
                                           written['threshold'])):
    shown_tpr = parser.cells[f'verification.tpr.{i}']
    shown_threshold = parser.cells[f'verification.threshold.{i}']
    if tpr is None:
      assert shown_tpr == shown_threshold == '-'
      continue
    # Two decimals of a percentage; six significant digits of a distance.
    assert float(shown_tpr) == pytest.approx(100 * tpr, abs=0.005)
    assert float(shown_threshold) == pytest.approx(threshold, rel=5e-6)
  assert float(parser.cells['verification.auc']) == pytest.approx(
      100 * written['auc'], abs=0.005)
  assert 'fewer than 1/FPR = 1000' in text
  # And the printed line of eval.py and training.
  line = evaluate.format_metrics(metrics).splitlines()[-1]
  assert line.startswith('verification TPR n/a at FPR 1e-3')
  assert f'{100 * written["tpr"][1]:.2f}% at FPR 1e-2 (d <= ' in line


def _verification_paragraph(text):
  start = text.index('<h2>Verification</h2>')
  return ' '.join(text[start:text.index('</p>', start)].split())


def test_unknown_cameras_change_the_verification_text_and_camera_section(
    small):
  q, g = small.query, small.gallery
  unknown = [dataclasses.replace(t, camera_ids=np.full(
      len(t), report.UNKNOWN_CAMERA, np.int32)) for t in (q, g)]
  ids = (q.person_ids, g.person_ids, unknown[0].camera_ids,
         unknown[1].camera_ids)
  plain = evaluate_rank(small.distances, *ids)
  summary = verification.summarize_verification(
      verification.evaluate_verification(
          small.distances - small.distances.min(), *ids, fprs=(1e-1,)))
  texts = {}
  for removal, (query, gallery, result) in (
      (True, (q, g, small.plain)), (False, (*unknown, plain))):
    metrics = dict(small.metrics, plain=evaluate.summarize(result),
                   verification=summary,
                   settings={**small.metrics['settings'],
                             'same_camera_removal': removal})
    texts[removal] = report.render_report(
        evaluate.Evaluation(metrics=metrics, query=query, gallery=gallery,
                            distances=small.distances, plain=result,
                            reranked=None),
        {}, num_hardest=1, num_random=0, topk=2, thumbnail=(32, 16), seed=0)
  # The protocol's positives: other-camera pairs only where cameras are
  # known and removed; every same-person pair where they are not.
  assert '(positive: same person, other camera;' in _verification_paragraph(
      texts[True])
  assert ('(positive: same person, any camera (cameras unknown);' in
          _verification_paragraph(texts[False]))
  assert report.protocol_sentence(False) in texts[False]
  # Per query camera: the table with known cameras (2 of them), one
  # sentence without.
  assert texts[True].count('<tr><td class="name">') >= 2
  assert '<table id="cameras">' in texts[True]
  assert report.NO_CAMERAS not in texts[True]
  section = texts[False][texts[False].index('<h2>Per query camera</h2>'):
                         texts[False].index('<h2>Hardest queries</h2>')]
  assert ' '.join(section.split()) == (
      f'<h2>Per query camera</h2> <p id="cameras">{report.NO_CAMERAS}</p>')
