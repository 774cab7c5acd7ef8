"""eval.py end to end: a small model on a small synthetic dataset."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sa_reid_jax
import test_report
from sa_reid_jax.datasets import synthetic
from sa_reid_jax.models import sanet_variant

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZE = (64, 32)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp('eval')
  data = root / 'data'
  synthetic.generate(str(data), num_ids=6, num_cameras=3, seed=0)
  model = sanet_variant('full', num_classes=6, stage_sizes=(1, 1, 1, 1),
                        base_width=4)
  variables = jax.jit(model.init)(jax.random.key(0),
                                  jnp.zeros((1, *IMAGE_SIZE, 3)))
  sa_reid_jax.save_model(str(root / 'model'), model, variables)
  return root, data


def run_eval(*args):
  return subprocess.run(
      [sys.executable, os.path.join(REPO, 'eval.py'),
       f'--config={os.path.join(REPO, "configs", "market1501.py")}',
       f'--config.image_size={IMAGE_SIZE}', '--config.eval.batch_size=5',
       *args], capture_output=True, text=True, cwd=REPO, check=False)


def test_eval_prints_and_writes_metrics(setup):
  root, data = setup
  result = run_eval(f'--checkpoint={root / "model"}', '--rerank', '--flip',
                    '--report', '--config.eval.report_thumbnail=(32, 16)',
                    f'--config.dataset.folder={data}',
                    f'--output_dir={root / "out"}')
  assert result.returncode == 0, result.stderr
  assert 'plain' in result.stdout and 'reranked' in result.stdout
  with open(root / 'out' / 'metrics.json') as f:
    metrics = json.load(f)
  for setting in ('plain', 'reranked'):
    values = metrics[setting]
    assert 0 < values['num_valid_queries']
    for key in ('rank1', 'rank5', 'rank10', 'mAP', 'mINP'):
      assert 0.0 <= values[key] <= 1.0
    assert values['rank1'] <= values['rank5'] <= values['rank10']
    assert f'mAP {100 * values["mAP"]:.2f}' in result.stdout
  assert metrics['settings']['flip'] is True
  num_query = len(os.listdir(data / 'query'))
  assert metrics['settings']['num_query'] == num_query
  # The report beside metrics.json: its images decode, its numbers are these.
  parser, images = test_report.parse_report(root / 'out' / 'report.html')
  test_report.check_report_numbers(parser, metrics)
  assert len(images) > 3
  assert f'wrote {root / "out" / "report.html"}' in result.stdout


def test_metrics_next_to_the_model_keep_it_loadable(setup):
  root, data = setup
  result = run_eval(f'--checkpoint={root / "model"}',
                    f'--config.dataset.folder={data}')
  assert result.returncode == 0, result.stderr
  assert (root / 'model' / 'metrics.json').exists()
  model, variables = sa_reid_jax.load_model(str(root / 'model'))
  assert model.num_classes == 6
  assert np.isfinite(jax.tree.leaves(variables)[0]).all()


@pytest.mark.parametrize('bad, message', [
    ('checkpoint', 'no such model directory'),
    ('folder', 'query: missing; a dataset folder in Market-1501 layout'),
])
def test_bad_paths_give_one_clear_error(setup, tmp_path, bad, message):
  root, data = setup
  checkpoint = tmp_path / 'none' if bad == 'checkpoint' else root / 'model'
  folder = tmp_path if bad == 'folder' else data
  result = run_eval(f'--checkpoint={checkpoint}',
                    f'--config.dataset.folder={folder}')
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  assert message in result.stderr
