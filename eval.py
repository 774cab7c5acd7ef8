r"""Evaluates a model directory on a dataset's query and gallery splits.

  python eval.py --config=configs/sa.py:market1501 --checkpoint=DIR \
      [--rerank] [--flip] [--report] [--output_dir=DIR]

Prints rank-1/5/10, mAP and mINP (and the re-ranked ones with --rerank) and
writes them to OUTPUT_DIR/metrics.json (default: the checkpoint directory),
with what they came from under "settings": the model directory
("checkpoint"), its "trained_steps" and "trained_image_size" (null where
not recorded), the "image_size" evaluated at and
"image_size_matches_training"; with --report also OUTPUT_DIR/report.html
(plots, per-camera results and example rank lists; see
sa_reid_jax/evaluation/report.py), which warns at its top when the image size
is not the trained one. Without --report, an earlier evaluation's
OUTPUT_DIR/report.html is removed (with a line saying so): it would not match
the new metrics.json. Those files are checked writable before the model is
loaded: an unwritable output (e.g. a read-only models folder as the default
OUTPUT_DIR) ends in one line naming --output_dir, before any extraction.

--config.eval.extra_targets=SPEC[,SPEC...] (dataset specs: a TFDS name,
folder:DIR, person_folders:DIR or a .csv/.tsv list file) also evaluates
those datasets: each is printed under its spec and written to metrics.json
under "targets" (with --report, to OUTPUT_DIR/report_<name>.html, linked
from report.html). A config.dataset without query and gallery splits (a
train-only dataset) is then skipped, metrics.json saying so under
"not_evaluated".
"""

import os
import sys

from sa_reid_jax import command_line

# Before TensorFlow is imported (it prints INFO lines as it loads).
command_line.quiet_tensorflow(sys.argv)

# pylint: disable=g-import-not-at-top,g-bad-import-order
from absl import app
from absl import flags
from ml_collections import config_flags

from sa_reid_jax.datasets import market_layout
from sa_reid_jax.datasets import sources
from sa_reid_jax.evaluation import evaluate
from sa_reid_jax.evaluation import report
from sa_reid_jax.models import registry
from sa_reid_jax.models import store
from sa_reid_jax.tools import outputs
from sa_reid_jax.training import validation
# pylint: enable=g-import-not-at-top,g-bad-import-order

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file with dataset, image_size and eval blocks.',
    lock_config=True)
_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', None, 'Model directory (convert_weights.py or training).')
_RERANK = flags.DEFINE_bool('rerank', None,
                            'Also report re-ranked metrics (default: config).')
_FLIP = flags.DEFINE_bool('flip', None,
                          'Flip test-time augmentation (default: config).')
_REPORT = flags.DEFINE_bool(
    'report', False, 'Also write report.html next to metrics.json.')
_OUTPUT_DIR = flags.DEFINE_string(
    'output_dir', None, 'Where metrics.json goes (default: --checkpoint).')
flags.mark_flags_as_required(['config', 'checkpoint'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  command_line.set_library_verbosity(command_line.absl_verbosity())
  config = _CONFIG.value
  # The --config.KEY overrides given, as absl parsed them (paths as keys).
  overrides = config_flags.get_override_values(flags.FLAGS[_CONFIG.name])
  try:
    # The config's values before any work, each error naming its key.
    validation.check_evaluation_config(config)
    targets = validation.extra_target_blocks(config)
    # A train-only config.dataset is evaluated through its targets only.
    evaluates_main = sources.has_evaluation_splits(config.dataset)
  except ValueError as e:  # LayoutError included
    sys.exit(f'eval.py: error: {e}')
  if not evaluates_main and not targets:
    sys.exit(f'eval.py: error: {sources.describe(config.dataset)} has no '
             'query and gallery splits to evaluate on; name datasets that '
             'have them with --config.eval.extra_targets=SPEC[,SPEC...]')
  try:
    checkpoint = store.resolve_model_directory(_CHECKPOINT.value)
  except store.ModelStoreError as e:
    sys.exit(f'eval.py: error: --checkpoint: {e}')
  output_dir = _OUTPUT_DIR.value or checkpoint
  flag = ('--output_dir' if _OUTPUT_DIR.value else
          '--output_dir (default: the --checkpoint directory)')
  written = [os.path.join(output_dir, 'metrics.json')]
  if _REPORT.value:
    written.append(os.path.join(output_dir, report.REPORT_HTML))
  try:
    # Before the model is loaded and the features extracted.
    for path in written:
      outputs.check_writable(path, flag)
  except outputs.OutputError as e:
    sys.exit(f'eval.py: error: {e}')
  try:
    # The size the network was trained at, unless asked for explicitly: at
    # another size it scores much lower without any error.
    explicit = 'image_size' in overrides
    config.image_size = store.input_size(
        checkpoint, config.image_size if explicit else None,
        flag='--config.image_size', default=config.image_size)
    model, variables = store.load_model(checkpoint)
    trained = store.load_model_info(checkpoint).get('metadata', {})
    # The network is the saved one; --config.model.* flags may only change
    # what evaluation reads from it (e.g. RGA's descriptor).
    given = sorted(path.removeprefix('model.') for path in overrides
                   if path.startswith('model.'))
    model = registry.with_overrides(
        model, {key: config.model[key] for key in given}, '--config.model.')
    registry.check_input_size(model, config.image_size, '--config.image_size')
    evaluation = None
    if evaluates_main:
      evaluation = evaluate.run_evaluation(model, variables, config,
                                           flip=_FLIP.value,
                                           rerank=_RERANK.value)
    target_evaluations = {
        block.spec: evaluate.run_evaluation(
            model, variables, config, flip=_FLIP.value, rerank=_RERANK.value,
            dataset=block) for block in targets}
  except (store.ModelStoreError, market_layout.LayoutError, ValueError) as e:
    sys.exit(f'eval.py: error: {e}')
  for result in [evaluation, *target_evaluations.values()]:
    if result is not None:
      evaluate.record_source(result.metrics, checkpoint,
                             trained.get('trained_steps'),
                             trained.get('image_size'))
  if evaluation is not None:
    print(evaluate.format_metrics(evaluation.metrics))
    metrics = evaluation.metrics
  else:
    metrics = {'not_evaluated': f'{sources.describe(config.dataset)} has no '
                                'query and gallery splits'}
  for spec, result in target_evaluations.items():
    print(evaluate.format_target(spec, result.metrics))
  if target_evaluations:
    metrics['targets'] = {spec: result.metrics
                          for spec, result in target_evaluations.items()}
  path, action = written[0], 'write'
  try:
    evaluate.write_metrics(metrics, path)
    print(f'wrote {path}')
    if _REPORT.value:
      path = written[1]
      for report_path in report.write_reports(evaluation, target_evaluations,
                                              output_dir, model, config,
                                              checkpoint):
        print(f'wrote {report_path}')
    else:
      path, action = os.path.join(output_dir, report.REPORT_HTML), 'remove'
      report.remove_stale_report(output_dir, '--report')
  except OSError as e:
    # What the check cannot foresee: a full disk, a folder changed since.
    sys.exit(f'eval.py: error: {flag}: cannot {action} {path}: '
             f'{e.strerror or e}')


def run(argv=None):
  """What ``python eval.py ...`` does: `main` under absl, errors in one line.

  Args:
    argv: the command line, program name first (default ``sys.argv``).
  """
  with command_line.interrupt_exits('eval.py'):
    app.run(main, argv=argv,
            flags_parser=command_line.config_flags_parser('eval.py'))


if __name__ == '__main__':
  run()
