r"""Trains a network (SA, RGA, CASN) as an experiment config describes.

  python train.py --config=configs/sa.py:market1501 --workdir=DIR \
      [--config.batch_size=64 ...]

Running the same command again resumes from DIR's newest checkpoint. On
several hosts, start it on each with --distributed (plus
--coordinator_address, --num_processes and --process_id where JAX cannot
find them out itself); every process reads its own share of each batch.
"""

import sys

from sa_reid_jax import command_line

# Before TensorFlow is imported (it prints INFO lines as it loads).
command_line.quiet_tensorflow(sys.argv)

# pylint: disable=g-import-not-at-top,g-bad-import-order
from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from sa_reid_jax.datasets import market_layout
from sa_reid_jax.models import store
from sa_reid_jax.training import checkpoints
from sa_reid_jax.training import signals
from sa_reid_jax.tools import outputs
from sa_reid_jax.training import trainer
from sa_reid_jax.training import workdir
# pylint: enable=g-import-not-at-top,g-bad-import-order

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file (configs/*.py).', lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory of the run: checkpoints, logs, the model.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Call jax.distributed.initialize() (multi-host).')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0 (with --distributed).')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Number of processes (with --distributed).')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'This process, 0-based (with --distributed).')
flags.mark_flags_as_required(['config', 'workdir'])


def _percent(metrics, key):
  return f'{100 * metrics["plain"][key]:.1f}%'


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  # Orbax and JAX log every checkpoint step at INFO; the run prints its own.
  command_line.set_library_verbosity(command_line.absl_verbosity())
  if _DISTRIBUTED.value:
    # Cross-process collectives between CPU devices need an implementation;
    # accelerators bring their own.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                               _PROCESS_ID.value)
  try:
    # Before any work: a workdir under a file, or in a
    # read-only place, would otherwise fail with the system's bare message.
    outputs.check_writable(_WORKDIR.value, '--workdir', directory=True)
    # The process is the run's: a second Ctrl-C ends it at once.
    result = trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                                        quit_on_second_interrupt=True)
  except (ValueError, market_layout.LayoutError, store.ModelStoreError,
          trainer.NonFiniteLossError, checkpoints.ResumeError,
          workdir.WorkdirBusyError, OSError) as e:
    sys.exit(f'train.py: error: {e}')
  if result.get('signal') == 'SIGINT':
    sys.exit(signals.INTERRUPTED_EXIT_STATUS)
  if result['status'] != 'completed':
    return
  if jax.process_index() == 0:
    for name, metrics in (('untrained', result['initial']),
                          ('trained', result['final'])):
      if metrics:
        print(f'{name:>9} network (step {metrics["step"]}): rank-1 '
              f'{_percent(metrics, "rank1")}  mAP {_percent(metrics, "mAP")}')
    print(f'TensorBoard logs: {result["tensorboard_dir"]}  (view with '
          f'`tensorboard --logdir {result["tensorboard_dir"]}`)')


def run(argv=None):
  """What ``python train.py ...`` does: `main` under absl, errors in one line.

  Args:
    argv: the command line, program name first (default ``sys.argv``).
  """
  with command_line.interrupt_exits('train.py'):
    app.run(main, argv=argv,
            flags_parser=command_line.config_flags_parser('train.py'))


if __name__ == '__main__':
  run()
