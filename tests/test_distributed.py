"""A two-process run on loopback trains exactly as a one-process run.

``train.py --distributed`` in two subprocesses, one CPU device each, joined
by ``jax.distributed`` (gloo CPU collectives) on a free local port and
sharing one workdir, as hosts of a multi-host run share a file system; the
same config in one subprocess with one device is the reference.
"""

import os
import socket
import subprocess
import sys
import time

import flax
import jax
import numpy as np
import pytest

from sa_reid_jax.datasets import synthetic
from sa_reid_jax.models import store
from sa_reid_jax.training import checkpoints
from sa_reid_jax.training import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300
STEPS = 3
# A small network, input and run: what is checked does not depend on size.
# The global batch is 8 in both runs (4 per process in the 2-process one).
# Training from scratch at the demo's rate 0.05 is chaotic: a 1e-7 relative
# change of the initial parameters grows ~50x a step from the third on (0.2
# after 6 steps), and so would float32 rounding of the batch split in two.
# At 0.01 the 3 steps stay in the rounding regime (below 1e-6).
OVERRIDES = {
    'optimizer.learning_rate': 0.01,
    'model.stage_sizes': '(1,1,1,1)',
    'model.base_width': 4,
    'image_size': '(64,32)',
    'batch_size': 8,
    'max_steps': STEPS,
    'eval.every_epochs': 0,
    'eval.at_start': False,
    'eval.batch_size': 32,
    'checkpoint.every_steps': 2,
}
# Printed by train.py on process 0 only, once the run is complete.
SUMMARY = f'trained network (step {STEPS})'
# Printed by gloo in each process once it is connected to the other.
GLOO_CONNECTED = 'is connected to 1 peer ranks'
NAMES = ('process 0 of 2', 'process 1 of 2', '1-process reference')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  # 83 train images: 10 global batches of 8.
  root = str(tmp_path_factory.mktemp('synthetic'))
  synthetic.generate(root, num_ids=8, num_test_ids=4, seed=0)
  return root


def _command(data, workdir, *extra):
  return [sys.executable, os.path.join(REPO, 'train.py'),
          '--config=' + os.path.join(REPO, 'configs', 'demo_synthetic.py'),
          f'--workdir={workdir}', f'--config.dataset.folder={data}',
          *(f'--config.{k}={v}' for k, v in OVERRIDES.items()), *extra]


def _environment():
  # One CPU device per process; the mesh then has one device per process.
  return dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
              XLA_FLAGS='--xla_force_host_platform_device_count=1')


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _run_together(commands, log_dir):
  """Runs `commands` at once; returns [(returncode, stdout, stderr)].

  A process that fails leaves the others blocked in collectives: they are
  killed once one has failed, as all are at the timeout.
  """
  processes, logs = [], []
  for i, command in enumerate(commands):
    out = open(os.path.join(log_dir, f'stdout{i}.txt'), 'w+')
    err = open(os.path.join(log_dir, f'stderr{i}.txt'), 'w+')
    logs.append((out, err))
    processes.append(subprocess.Popen(command, env=_environment(), cwd=REPO,
                                      stdout=out, stderr=err, text=True))
  deadline = time.monotonic() + TIMEOUT_S
  try:
    while any(p.poll() is None for p in processes):
      failed = any(p.poll() not in (None, 0) for p in processes)
      if failed or time.monotonic() > deadline:
        # Grace for the others to report the failure themselves.
        time.sleep(0 if time.monotonic() > deadline else 5)
        for p in processes:
          if p.poll() is None:
            p.kill()
      time.sleep(0.2)
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
      p.wait()
  results = []
  for p, (out, err) in zip(processes, logs):
    out.seek(0)
    err.seek(0)
    results.append((p.returncode, out.read(), err.read()))
    out.close()
    err.close()
  return results


def _report(results, names=NAMES):
  """The runs' exit codes and output tails, for assertion messages."""
  return '\n'.join(
      f'--- {name}: exit code {code}\nstdout tail:\n{stdout[-1500:]}\n'
      f'stderr tail:\n{stderr[-3000:]}'
      for name, (code, stdout, stderr) in zip(names, results))


def _variables(workdir):
  _, variables = store.load_model(os.path.join(workdir, trainer.MODEL_DIR))
  return flax.traverse_util.flatten_dict(jax.device_get(variables), sep='/')


def _checkpoint_steps(workdir):
  directory = os.path.join(workdir, checkpoints.CHECKPOINT_DIR)
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def test_two_processes_train_as_one(data, tmp_path):
  one = tmp_path / 'one'
  two = tmp_path / 'two'  # the same path for both processes
  start = time.monotonic()
  port = _free_port()
  # All three at once: the pair waits on each other often enough that the
  # reference fits in between on two cores.
  results = _run_together(
      [_command(data, two, '--distributed',
                f'--coordinator_address=localhost:{port}',
                '--num_processes=2', f'--process_id={i}') for i in range(2)] +
      [_command(data, one)], tmp_path)
  print(f'\n1- and 2-process runs: {time.monotonic() - start:.0f} s')
  assert all(code == 0 for code, _, _ in results), _report(results)
  *results, reference = results

  # Really two processes: gloo joined them, and only the one with
  # jax.process_index() 0 printed the summary (a lone process would too).
  (_, stdout0, _), (_, stdout1, _) = results
  assert GLOO_CONNECTED in stdout0 and GLOO_CONNECTED in stdout1, (
      _report(results))
  assert SUMMARY in stdout0 and SUMMARY not in stdout1, _report(results)
  assert SUMMARY in reference[1], _report([reference], NAMES[2:])

  # The shared workdir holds one run's results, as the reference's does.
  for workdir in (one, two):
    for name in (trainer.MODEL_DIR, trainer.METRICS_JSON):
      assert os.path.exists(workdir / name), f'{workdir / name} missing'
    assert _checkpoint_steps(workdir) == [2, STEPS]
    info = store.load_model_info(str(workdir / trainer.MODEL_DIR))
    assert info['metadata']['trained_steps'] == STEPS

  a, b = _variables(one), _variables(two)
  assert a.keys() == b.keys()
  assert any(k.startswith('batch_stats/') for k in a)
  worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
  print(f'max |2 processes - 1 process| over params and batch_stats: '
        f'{worst:.3g}')
  assert worst <= 1e-5, worst
