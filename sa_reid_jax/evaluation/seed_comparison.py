"""Comparing variants trained over several seeds: mean ± std per variant and
paired differences to a baseline with a Student-t interval.

Used by the studies (``studies/sa_study.py``). A seed fixes one run's
initialisation, data order and augmentation; pairing two variants' runs of
the same seed removes the part of the spread the seed explains, which is why
the differences, not the two means, carry the comparison.
"""

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np
from scipy import stats

# The metrics compared (fractions in [0, 1]) and how tables name them.
METRICS = ('rank1', 'mAP', 'mINP')
METRIC_NAMES = {'rank1': 'rank-1', 'mAP': 'mAP', 'mINP': 'mINP'}


def paired_difference(values: np.ndarray, baseline: np.ndarray,
                      confidence: float = 0.95) -> dict:
  """Mean of the per-seed differences ``values - baseline`` and its
  Student-t confidence interval (n - 1 degrees of freedom).

  Args:
    values, baseline: (n,) metrics of the same seeds.
    confidence: coverage of the interval.

  Returns:
    ``mean``, ``std`` (sample, ddof 1), ``low``, ``high``, ``n``; the
    spread and interval are NaN for n < 2.
  """
  differences = np.asarray(values, float) - np.asarray(baseline, float)
  n = len(differences)
  mean = float(differences.mean())
  if n < 2:
    return {'mean': mean, 'std': float('nan'), 'low': float('nan'),
            'high': float('nan'), 'n': n}
  std = float(differences.std(ddof=1))
  half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / np.sqrt(n)
  return {'mean': mean, 'std': std, 'low': mean - half, 'high': mean + half,
          'n': n}


def summarise(runs: dict[str, dict[int, dict]], baseline_name: str) -> dict:
  """Mean ± std per variant and metric, and paired differences to a baseline.

  Args:
    runs: variant -> seed -> {metric: value in [0, 1]} for every metric of
      `METRICS` (a variant's seeds may differ from another's).
    baseline_name: the variant every other one is paired with, seed by
      seed; only the seeds both have enter a difference.

  Returns:
    ``variants``: variant -> metric -> ``mean``, ``std`` (sample, NaN for
    one seed), ``n``; ``differences``: variant -> metric ->
    `paired_difference` plus the ``seeds`` paired.
  """
  summary = {'variants': {}, 'differences': {}}
  for variant, by_seed in runs.items():
    seeds = sorted(by_seed)
    summary['variants'][variant] = {
        metric: {'mean': float(np.mean([by_seed[s][metric] for s in seeds])),
                 'std': (float(np.std([by_seed[s][metric] for s in seeds],
                                      ddof=1)) if len(seeds) > 1
                         else float('nan')),
                 'n': len(seeds)}
        for metric in METRICS}
  baseline = runs.get(baseline_name, {})
  for variant, by_seed in runs.items():
    seeds = sorted(set(by_seed) & set(baseline))
    if variant == baseline_name or not seeds:
      continue
    summary['differences'][variant] = {
        metric: {**paired_difference([by_seed[s][metric] for s in seeds],
                                     [baseline[s][metric] for s in seeds]),
                 'seeds': seeds}
        for metric in METRICS}
  return summary


def _percent(value: float) -> str:
  return 'n/a' if np.isnan(value) else f'{100 * value:.1f}'


def markdown(summary: dict, settings: dict, baseline_name: str) -> str:
  """The study's two tables in Markdown (percent, one decimal).

  Args:
    summary: from `summarise`.
    settings: ``seeds`` (count) and ``epochs`` or, when non-zero,
      ``max_steps``: the training length the first line states.
    baseline_name: the paired baseline, named in the second table.
  """
  length = (f'{settings["max_steps"]} steps' if settings['max_steps']
            else f'{settings["epochs"]} epochs')
  lines = [f'Variants trained {settings["seeds"]} seeds each, {length} '
           '(mean ± sample std over seeds, %):',
           '', '| variant | runs | ' + ' | '.join(
               METRIC_NAMES[m] for m in METRICS) + ' |',
           '| --- | --- |' + ' --- |' * len(METRICS)]
  for variant, metrics in summary['variants'].items():
    cells = [f'{_percent(v["mean"])} ± {_percent(v["std"])}'
             for v in metrics.values()]
    lines.append(f'| {variant} | {metrics["rank1"]["n"]} | '
                 + ' | '.join(cells) + ' |')
  lines += ['', f'Paired differences to {baseline_name} (same seed), mean '
            '[95% t-interval], percentage points:', '',
            '| variant | ' + ' | '.join(METRIC_NAMES[m] for m in METRICS)
            + ' |', '| --- |' + ' --- |' * len(METRICS)]
  for variant, metrics in summary['differences'].items():
    cells = [f'{100 * d["mean"]:+.1f} [{_percent(d["low"])}, '
             f'{_percent(d["high"])}]' for d in metrics.values()]
    lines.append(f'| {variant} - {baseline_name} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def plot(summary: dict, runs: dict, path: str) -> None:
  """Per variant and metric: the mean with a ±1 std error bar, and each
  seed's value as a small dot beside it."""
  variants = list(summary['variants'])
  figure = Figure(figsize=(4 * len(METRICS), 3.6))
  FigureCanvasAgg(figure)  # files only: no display, no global pyplot state
  axes = figure.subplots(1, len(METRICS))
  positions = np.arange(len(variants))
  for axis, metric in zip(axes, METRICS):
    means = [100 * summary['variants'][v][metric]['mean'] for v in variants]
    stds = [100 * np.nan_to_num(summary['variants'][v][metric]['std'])
            for v in variants]
    axis.errorbar(positions, means, yerr=stds, fmt='o', color='#3182bd',
                  capsize=6, markersize=7, label='mean ± std')
    for position, variant in zip(positions, variants):
      values = [100 * r[metric] for r in runs[variant].values()]
      axis.plot(np.full(len(values), position + 0.15), values, '.',
                color='#636363', alpha=0.7,
                label='one seed' if position == 0 else None)
    # Long variant names overlap when level; slanted, anchored at the tick.
    axis.set_xticks(positions, variants, rotation=30, ha='right',
                    rotation_mode='anchor')
    axis.set_xlim(-0.5, len(variants) - 0.5)
    axis.set_title(f'{METRIC_NAMES[metric]} (%)')
    axis.grid(axis='y', alpha=0.3)
  axes[0].legend(fontsize=8, loc='best')
  figure.tight_layout()
  figure.savefig(path, dpi=110)
