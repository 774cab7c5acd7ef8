r"""The study: SA, no SA, RGA-SC, the BNNeck baseline, CASN over several seeds.

Trains, on the hard synthetic proxy (``python -m sa_reid_jax.datasets.synthetic
--difficulty hard``, one fixed dataset), each system's CPU demo recipe in
these variants:

  no_sa            Backbone+P+DS (SA paper, Table 2), the full SA model
                   without SA (``configs/demo_synthetic.py``: a one-block-
                   per-stage ResNet of width 16 at 128x64, from scratch)
  sa_sum           Backbone+P+DS+SA2 with the official code's 'sum' attention
  sa_softmax       the same with the paper's softmax attention
  sa1_sa2_sum      Backbone+P+DS+SA1+SA2 (Table 2's last row), 'sum'
  rga_sc           RGA-SC with the RGA recipe (``configs/demo_rga_synthetic.py``:
                   the same backbone size, P x K batches, label-smoothed
                   cross-entropy + batch-hard triplet, Adam, the crop)
  bnneck_baseline  that recipe's network without RGA modules: ResNet +
                   BNNeck, the "bag of tricks" baseline
  casn_pcb         CASN on the PCB baseline (``configs/demo_casn_synthetic.py``:
                   the same backbone size, P x K batches, Grad-CAM attention
                   mining, siamese verification and attention consistency)

each for several seeds (the seed changes the initialisation, the data order,
the augmentation and dropout; the data stay the same), and writes into the
study folder ``results.json`` (every run's metrics and the summary),
``results.md`` (mean ± standard deviation of rank-1, mAP and mINP per
variant, and the paired differences to ``no_sa`` for the same seed with a
95% Student-t interval) and ``results.png`` (the same with error bars).
Finished runs are skipped, unfinished ones resume from their checkpoint, so
the command can be interrupted and started again:

  python studies/sa_study.py --output=workdirs/study_systems --seeds=3 \
      --epochs=8 --parallel=2 \
      --variants=no_sa,sa_sum,rga_sc,bnneck_baseline,casn_pcb

``--parallel=N`` trains N runs at once in N single-threaded processes
(``--parallel=1``: one at a time, in this process, with every core).

The budget is the same for every variant: ``--epochs`` epochs of the SA
recipe's uniform sampler (every train image once per epoch), i.e. that many
steps of 32 images. The P x K recipes count an epoch as one pass over the
identities (fewer steps), so they train as many of their epochs as gives the
same number of steps, with their warm-up and decay epochs scaled by the same
factor. The SA runs drop the learning rate x0.1 after 2/3 of the budget (as
the demo: 20 of 30 epochs). 8 epochs by default (the demo trains 30) so that
the 15 SA runs fit in an hour on a 2-core machine.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

from sa_reid_jax import command_line
from sa_reid_jax.data import samplers
from sa_reid_jax.datasets import synthetic
from sa_reid_jax.datasets import tables
from sa_reid_jax.evaluation import seed_comparison
from sa_reid_jax.training import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, 'configs')
# Variant name -> (demo config, model variant, SA attention normalisation).
# Variants without SA leave the normalisation field unused (None for the
# RGA and CASN families, which have none).
VARIANTS = {
    'no_sa': ('demo_synthetic.py', 'full_no_sa', 'sum'),
    'sa_sum': ('demo_synthetic.py', 'full', 'sum'),
    'sa_softmax': ('demo_synthetic.py', 'full', 'softmax'),
    'sa1_sa2_sum': ('demo_synthetic.py', 'backbone_p_ds_sa1_sa2', 'sum'),
    'rga_sc': ('demo_rga_synthetic.py', 'rga_sc', None),
    'bnneck_baseline': ('demo_rga_synthetic.py', 'baseline', None),
    'casn_pcb': ('demo_casn_synthetic.py', 'pcb', None),
}
DEFAULT_VARIANTS = 'no_sa,sa_sum,rga_sc,bnneck_baseline,casn_pcb'
BASELINE = 'no_sa'
DATA_SEED = 0  # the one dataset every run trains and is evaluated on


def _demo_config(name: str):
  path = os.path.join(CONFIGS, name)
  spec = importlib.util.spec_from_file_location(name[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _scaled_epochs(config, factor: float) -> None:
  """Stretches a P x K recipe's epoch-denominated schedule by `factor`."""
  demo_epochs = config.num_epochs
  config.num_epochs = max(1, round(demo_epochs * factor))
  config.optimizer.warmup_epochs = round(config.optimizer.warmup_epochs *
                                         factor)
  milestones = sorted({round(m * factor)
                       for m in config.optimizer.decay_milestones})
  config.optimizer.decay_milestones = tuple(
      m for m in milestones if 0 < m < config.num_epochs)


def study_config(variant: str, seed: int, data_folder: str, epochs: int,
                 max_steps: int = 0):
  """A demo config with every field the comparison depends on set here.

  Args:
    variant: a key of ``VARIANTS``.
    seed: the training seed.
    data_folder: the synthetic dataset (Market-1501 layout); read for the
      P x K variants, whose length in epochs depends on its identities.
    epochs: the budget, in epochs of the uniform sampler (see the module
      docstring); the SA runs drop the learning rate x0.1 after 2/3 of it
      (as the demo: 20 of 30 epochs).
    max_steps: stop after this many steps when > 0 (smoke runs).

  Returns:
    an ml_collections config for ``train_and_evaluate``.
  """
  config_file, model_variant, normalization = VARIANTS[variant]
  config = _demo_config(config_file)
  config.model.variant = model_variant
  if normalization is not None:
    config.model.attention_normalization = normalization
  config.seed = seed
  config.dataset.folder = data_folder
  config.image_size = (128, 64)
  config.model.stage_sizes = (1, 1, 1, 1)
  config.model.base_width = 16
  config.batch_size = 32
  config.max_steps = max_steps
  if config.data.sampler == 'uniform':
    config.num_epochs = epochs
    config.optimizer.learning_rate = 0.05
    config.optimizer.backbone_lr_multiplier = 1.0
    config.optimizer.decay_epochs = max(1, round(epochs * 2 / 3))
    # No random erasing, as the released main.py command (and Table 2).
    config.augmentation.erasing_probability = 0.0
  else:
    labels = tables.from_folder(data_folder, 'train', log=lambda _: None
                                ).labels
    steps = epochs * samplers.build('uniform', labels, config.batch_size,
                                    1).steps_per_epoch
    own = samplers.build(config.data.sampler, labels, config.batch_size,
                         config.data.images_per_identity).steps_per_epoch
    _scaled_epochs(config, steps / (own * config.num_epochs))
  config.augmentation.flip_probability = 0.5
  config.eval.every_epochs = 0
  config.eval.at_start = False
  config.eval.flip = False
  config.eval.rerank = False
  config.checkpoint.every_steps = 500
  config.checkpoint.keep = 1
  config.log_every_steps = 100
  return config


def run_dir(output: str, variant: str, seed: int) -> str:
  return os.path.join(output, 'runs', variant, f'seed{seed}')


def _read_final(directory: str) -> dict | None:
  path = os.path.join(directory, 'metrics.json')
  if not os.path.exists(path):
    return None
  with open(path) as file:
    final = json.load(file)['final']
  timing = os.path.join(directory, 'wall_seconds.json')
  wall = None
  if os.path.exists(timing):
    with open(timing) as file:
      wall = json.load(file)['seconds']
  return {**{m: final['plain'][m] for m in seed_comparison.METRICS}, 'step': final['step'],
          'wall_seconds': wall}


def train_one(output: str, variant: str, seed: int, epochs: int,
              max_steps: int) -> None:
  """Trains one run in this process (resuming it if it was interrupted)."""
  directory = run_dir(output, variant, seed)
  config = study_config(variant, seed, os.path.join(output, 'data'), epochs,
                        max_steps)
  start = time.time()
  result = trainer.train_and_evaluate(config, directory)
  if result['status'] != 'completed':
    raise RuntimeError(f'{directory}: training stopped ({result["status"]})')
  with open(os.path.join(directory, 'wall_seconds.json'), 'w') as file:
    json.dump({'seconds': time.time() - start}, file)


def _worker_command(args, variant, seed):
  return [sys.executable, os.path.abspath(__file__), '--worker',
          f'--output={args.output}', f'--variants={variant}',
          f'--epochs={args.epochs}', f'--max_steps={args.max_steps}',
          f'--seed_list={seed}']


def _single_thread_environment() -> dict[str, str]:
  """One compute thread for XLA and TensorFlow in a worker process."""
  environment = dict(os.environ)
  environment['XLA_FLAGS'] = (environment.get('XLA_FLAGS', '') +
                              ' --xla_cpu_multi_thread_eigen=false'
                              ' intra_op_parallelism_threads=1').strip()
  environment['TF_NUM_INTRAOP_THREADS'] = '1'
  environment['TF_NUM_INTEROP_THREADS'] = '1'
  environment['PYTHONUNBUFFERED'] = '1'  # progress reaches train.log live
  return environment


def run_all(args, pending: list[tuple[str, int]]) -> None:
  """Trains the pending runs, ``args.parallel`` at a time."""
  if args.parallel == 1:
    for variant, seed in pending:
      print(f'training {variant} seed {seed}', flush=True)
      train_one(args.output, variant, seed, args.epochs, args.max_steps)
    return
  queue, running = list(pending), []
  while queue or running:
    while queue and len(running) < args.parallel:
      variant, seed = queue.pop(0)
      directory = run_dir(args.output, variant, seed)
      os.makedirs(directory, exist_ok=True)
      log = open(os.path.join(directory, 'train.log'), 'a')
      process = subprocess.Popen(
          _worker_command(args, variant, seed), stdout=log,
          stderr=subprocess.STDOUT, env=_single_thread_environment())
      log.close()
      running.append((process, variant, seed))
      print(f'training {variant} seed {seed} (log: {directory}/train.log)',
            flush=True)
    time.sleep(1)
    for process, variant, seed in [r for r in running
                                   if r[0].poll() is not None]:
      running.remove((process, variant, seed))
      if process.returncode:
        for other, _, _ in running:  # SIGTERM: they save and stop
          other.terminate()
          other.wait()
        raise RuntimeError(
            f'{variant} seed {seed} failed with status {process.returncode};'
            f' see {run_dir(args.output, variant, seed)}/train.log')


def _prepare_data(output: str, num_ids: int) -> str:
  folder = os.path.join(output, 'data')
  if not os.path.exists(os.path.join(folder, synthetic.SETTINGS_JSON)):
    synthetic.generate(folder, num_ids=num_ids, seed=DATA_SEED,
                       difficulty='hard')
  return folder


def _parse(argv):
  parser = argparse.ArgumentParser(
      prog='studies/sa_study.py',
      description='Train SA, no-SA, RGA-SC, BNNeck-baseline and CASN '
      'variants over several seeds on the hard synthetic data and report '
      'mean ± std and paired differences.')
  parser.add_argument('--output', required=True, help='study folder')
  parser.add_argument('--variants', default=DEFAULT_VARIANTS,
                      help=f'comma-separated, from {sorted(VARIANTS)} '
                      f'(default {DEFAULT_VARIANTS})')
  positive = command_line.positive_int_argument
  parser.add_argument('--seeds', type=positive, default=5,
                      help='seeds 0..N-1 per variant (default 5)')
  parser.add_argument('--seed_list', help=argparse.SUPPRESS)
  parser.add_argument('--epochs', type=positive, default=8,
                      help='training length per run (default 8)')
  parser.add_argument('--max_steps', type=int, default=0,
                      help='stop each run after this many steps (smoke runs)')
  parser.add_argument('--num_ids', type=positive, default=100,
                      help='train (and test) identities of the data')
  parser.add_argument('--parallel', type=positive, default=1,
                      help='runs trained at once, single-threaded each')
  parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  variants = args.variants.split(',')
  unknown = [v for v in variants if v not in VARIANTS]
  if unknown:
    parser.error(f'--variants: unknown {unknown}; choose from '
                 f'{sorted(VARIANTS)}')
  if BASELINE not in variants and not args.worker:
    parser.error(f'--variants must include {BASELINE} (the paired baseline)')
  args.variant_list = variants
  args.seed_numbers = ([int(s) for s in args.seed_list.split(',')]
                       if args.seed_list else list(range(args.seeds)))
  return args


def main(argv=None) -> int:
  args = _parse(argv)
  if args.worker:
    for variant in args.variant_list:
      for seed in args.seed_numbers:
        train_one(args.output, variant, seed, args.epochs, args.max_steps)
    return 0
  start = time.time()
  _prepare_data(args.output, args.num_ids)
  pending = [(v, s) for s in args.seed_numbers for v in args.variant_list
             if _read_final(run_dir(args.output, v, s)) is None]
  print(f'{len(pending)} of {len(args.variant_list) * len(args.seed_numbers)}'
        ' runs to train', flush=True)
  try:
    run_all(args, pending)
  except RuntimeError as error:
    sys.exit(f'sa_study.py: error: {error}')
  runs = {v: {s: _read_final(run_dir(args.output, v, s))
              for s in args.seed_numbers} for v in args.variant_list}
  summary = seed_comparison.summarise(runs, BASELINE)
  settings = {'seeds': len(args.seed_numbers), 'epochs': args.epochs,
              'max_steps': args.max_steps, 'num_ids': args.num_ids,
              'parallel': args.parallel, 'data_seed': DATA_SEED,
              'variants': {v: VARIANTS[v] for v in args.variant_list},
              'trained_epochs': {
                  v: study_config(v, 0, os.path.join(args.output, 'data'),
                                  args.epochs).num_epochs
                  for v in args.variant_list}}
  with open(os.path.join(args.output, 'results.json'), 'w') as file:
    json.dump({'settings': settings, 'runs': runs, 'summary': summary,
               'wall_seconds_this_invocation': time.time() - start}, file,
              indent=2)
  table = seed_comparison.markdown(summary, settings, BASELINE)
  with open(os.path.join(args.output, 'results.md'), 'w') as file:
    file.write(table)
  seed_comparison.plot(summary, runs,
                       os.path.join(args.output, 'results.png'))
  print(table)
  print(f'wrote {args.output}/results.json, results.md, results.png '
        f'({time.time() - start:.0f} s)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
