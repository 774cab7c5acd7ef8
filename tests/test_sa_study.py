"""Tests of the SA study script (studies/sa_study.py): statistics and a
one-seed, few-step run of the whole pipeline."""

import importlib.util
import json
import os

import numpy as np
import pytest

from sa_reid_jax.datasets import tables
from sa_reid_jax.evaluation import seed_comparison

# `pytest.approx` without a tolerance (1e-6 relative) compares float64
# arithmetic on a few decimal values, which agrees to ~1e-16 relative: a
# wrong formula or pairing is off by far more.
_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'studies',
                     'sa_study.py')
_SPEC = importlib.util.spec_from_file_location('sa_study', _PATH)
sa_study = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(sa_study)


def test_paired_difference_matches_hand_computed_t_interval():
  values = np.array([0.70, 0.74, 0.69, 0.75, 0.72])
  baseline = np.array([0.68, 0.70, 0.70, 0.71, 0.69])
  # differences 0.02, 0.04, -0.01, 0.04, 0.03: mean 0.024, squared
  # deviations sum to 0.00172, sample std sqrt(0.00172 / 4);
  # t(0.975, 4) = 2.7764451 (t table).
  result = seed_comparison.paired_difference(values, baseline)
  std = np.sqrt(0.00172 / 4)
  half = 2.7764451 * std / np.sqrt(5)
  assert result['n'] == 5
  # float64 sums of two-decimal values (not exact in binary): a few units
  # of float64 rounding, 1e-16 relative; 1e-12 leaves room.
  assert result['mean'] == pytest.approx(0.024, rel=1e-12)
  assert result['std'] == pytest.approx(std, rel=1e-12)
  # The t quantile above is the table's 8 digits: half a unit of its last
  # digit (5e-8) times std / sqrt(5) (0.0093) is 5e-10 on the bounds.
  assert result['low'] == pytest.approx(0.024 - half, abs=1e-9)
  assert result['high'] == pytest.approx(0.024 + half, abs=1e-9)


def test_one_seed_has_no_interval():
  result = seed_comparison.paired_difference([0.5], [0.4])
  assert result['mean'] == pytest.approx(0.1)
  assert np.isnan(result['low']) and np.isnan(result['std'])


def test_summary_pairs_runs_by_seed():
  runs = {'no_sa': {0: {'rank1': .5, 'mAP': .3, 'mINP': .1},
                    1: {'rank1': .6, 'mAP': .4, 'mINP': .2}},
          'sa_sum': {0: {'rank1': .7, 'mAP': .3, 'mINP': .1},
                     1: {'rank1': .6, 'mAP': .5, 'mINP': .3}}}
  summary = seed_comparison.summarise(runs, 'no_sa')
  assert summary['variants']['no_sa']['rank1']['mean'] == pytest.approx(.55)
  assert summary['variants']['sa_sum']['mAP']['std'] == pytest.approx(
      np.std([.3, .5], ddof=1))
  rank1 = summary['differences']['sa_sum']['rank1']
  assert rank1['mean'] == pytest.approx(0.1)  # (+0.2 + 0.0) / 2
  assert rank1['seeds'] == [0, 1]
  assert 'no_sa' not in summary['differences']


def test_markdown_rows_in_percent():
  runs = {'no_sa': {0: {'rank1': .5, 'mAP': .3, 'mINP': .1},
                    1: {'rank1': .6, 'mAP': .4, 'mINP': .2}},
          'sa_sum': {0: {'rank1': .7, 'mAP': .3, 'mINP': .1}}}
  table = seed_comparison.markdown(
      seed_comparison.summarise(runs, 'no_sa'),
      {'seeds': 2, 'epochs': 8, 'max_steps': 0}, 'no_sa')
  lines = table.splitlines()
  assert lines[0].startswith('Variants trained 2 seeds each, 8 epochs')
  # std of (0.5, 0.6) with ddof 1 = 0.0707 -> 7.1 points.
  assert '| no_sa | 2 | 55.0 ± 7.1 | 35.0 ± 7.1 | 15.0 ± 7.1 |' in lines
  # One seed: no spread, no interval; the pairing uses seed 0 only.
  assert '| sa_sum | 1 | 70.0 ± n/a | 30.0 ± n/a | 10.0 ± n/a |' in lines
  assert ('| sa_sum - no_sa | +20.0 [n/a, n/a] | +0.0 [n/a, n/a] | '
          '+0.0 [n/a, n/a] |') in lines


def test_config_sets_what_the_comparison_depends_on():
  config = sa_study.study_config('sa_softmax', 3, '/data', epochs=12)
  assert config.model.variant == 'full'
  assert config.model.attention_normalization == 'softmax'
  assert config.seed == 3
  assert config.augmentation.erasing_probability == 0.0
  assert config.optimizer.decay_epochs == 8
  assert sa_study.study_config('no_sa', 0, '/d', 30).model.variant == (
      'full_no_sa')


def test_pk_variants_get_the_same_budget_in_steps(synthetic_dataset):
  folder = synthetic_dataset(num_ids=20, seed=0)
  labels = tables.from_folder(folder, 'train', log=lambda _: None).labels
  uniform_steps = len(labels) // 32
  for variant, family, demo_file in (
      ('rga_sc', 'rga', 'demo_rga_synthetic.py'),
      ('bnneck_baseline', 'rga', 'demo_rga_synthetic.py'),
      ('casn_pcb', 'casn', 'demo_casn_synthetic.py')):
    config = sa_study.study_config(variant, 1, folder, epochs=6)
    assert config.model.family == family
    assert config.data.sampler == 'identity'
    # 20 identities / P per batch.
    pk_steps = 20 // (32 // config.data.images_per_identity)
    assert config.num_epochs == round(6 * uniform_steps / pk_steps)
    # The demo's schedule stretched by the factor that gives the budget.
    demo = sa_study._demo_config(demo_file)  # pylint: disable=protected-access
    factor = 6 * uniform_steps / (pk_steps * demo.num_epochs)
    assert config.optimizer.warmup_epochs == round(
        demo.optimizer.warmup_epochs * factor)
    assert config.optimizer.decay_milestones == tuple(
        m for m in sorted({round(m * factor)
                           for m in demo.optimizer.decay_milestones})
        if 0 < m < config.num_epochs)
  assert sa_study.study_config('rga_sc', 0, folder, 6).model.variant == (
      'rga_sc')
  assert sa_study.study_config('bnneck_baseline', 0, folder,
                               6).model.variant == 'baseline'


def test_bad_arguments_are_one_error_line(capsys):
  with pytest.raises(SystemExit):
    sa_study.main(['--output=x', '--variants=no_sa,sa_typo'])
  assert '--variants: unknown' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    sa_study.main(['--output=x', '--variants=sa_sum'])
  assert 'must include no_sa' in capsys.readouterr().err


@pytest.mark.full
def test_smoke_study_writes_results_and_resumes(tmp_path, capsys):
  output = str(tmp_path / 'study')
  # --parallel=2: the two runs train at once in worker processes.
  arguments = [f'--output={output}', '--variants=no_sa,sa_sum', '--seeds=1',
               '--max_steps=2', '--num_ids=6', '--parallel=2']
  assert sa_study.main(arguments) == 0
  with open(os.path.join(output, 'results.json')) as file:
    results = json.load(file)
  runs = results['runs']
  for variant in ('no_sa', 'sa_sum'):
    assert runs[variant]['0']['step'] == 2
    assert 0 <= runs[variant]['0']['rank1'] <= 1
  difference = results['summary']['differences']['sa_sum']['mAP']['mean']
  assert difference == pytest.approx(runs['sa_sum']['0']['mAP'] -
                                     runs['no_sa']['0']['mAP'])
  with open(os.path.join(output, 'results.md')) as file:
    assert '| sa_sum - no_sa |' in file.read()
  with open(os.path.join(output, 'results.png'), 'rb') as file:
    assert file.read(8) == b'\x89PNG\r\n\x1a\n'
  capsys.readouterr()
  assert sa_study.main(arguments) == 0  # everything finished: nothing to do
  assert '0 of 2 runs to train' in capsys.readouterr().out
