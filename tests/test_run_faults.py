"""What users and machines do to training runs: Ctrl-C, two runs on one
workdir, a full disk, a changed config, leftovers of an interrupted save.

Behaviour that belongs to a process (signals, locks, exit lines) is tested
on real processes (``train.py`` runs in the full tier); the rest calls
`train_and_evaluate` here, on a copy of the tiny finished run the tests
share (``finished_run``, tests/conftest.py) where it needs one.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import orbax.checkpoint as ocp
import pytest

from helpers import REPO, environment, finalized_steps, tiny_config
from helpers import train_command
from sa_reid_jax.training import checkpoints
from sa_reid_jax.training import signals
from sa_reid_jax.training import trainer
from sa_reid_jax.training import workdir as workdir_lib


def _error_lines(stderr):
  """stderr without orbax's WARNING lines about slow saves (not errors)."""
  return [line for line in stderr.strip().splitlines()
          if 'Waiting for previous save' not in line]


@pytest.mark.full
def test_second_run_is_refused_and_ctrl_c_saves(data, tmp_path):
  workdir = tmp_path / 'run'
  # Long enough to be running still when the second run has started.
  command = train_command(data, workdir, num_epochs=100,
                          **{'checkpoint.every_steps': 5,
                             'checkpoint.keep': 2})
  first = subprocess.Popen(command, env=environment(), cwd=REPO, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  try:
    deadline = time.monotonic() + 600
    while not finalized_steps(workdir):
      assert first.poll() is None, first.communicate()[1][-3000:]
      assert time.monotonic() < deadline
      time.sleep(0.05)
    second = subprocess.run(command, env=environment(), cwd=REPO, text=True,
                            capture_output=True, timeout=300)
    assert first.poll() is None, 'the first run ended before the second'
    first.send_signal(signal.SIGINT)
    stdout, stderr = first.communicate(timeout=300)
  finally:
    if first.poll() is None:
      first.kill()
  # The second run: refused at once, one line naming the workdir and holder.
  assert second.returncode == 1
  assert _error_lines(second.stderr) == [
      f'train.py: error: {workdir} is in use by process {first.pid} on '
      f'{os.uname().nodename}, started '
      + second.stderr.split(', started ')[1].split(' (lock file')[0]
      + f' (lock file {workdir / "lock"}); wait for that run to end, stop '
      'it, or use another --workdir'], second.stderr
  # The first: saved its step, said so in one line, exited as interrupted.
  assert first.returncode == signals.INTERRUPTED_EXIT_STATUS, stderr[-3000:]
  assert 'Traceback' not in stderr
  saved = [line for line in stdout.splitlines()
           if line.startswith('Ctrl-C (SIGINT): saved the checkpoint of step')]
  assert len(saved) == 1, stdout[-3000:]
  step = int(saved[0].split('step ')[1].split(' ')[0])
  assert finalized_steps(workdir)[-1] == step
  leftovers = [name for name in os.listdir(workdir / 'checkpoints')
               if not name.isdigit()]
  assert not leftovers
  assert not (workdir / workdir_lib.LOCK_FILE).exists()
  state = ocp.StandardCheckpointer().restore(
      workdir / checkpoints.CHECKPOINT_DIR / str(step) / 'state')
  assert int(state['step']) == step


_TWO_CTRL_C = """
import os, signal, sys, time
from sa_reid_jax.training import signals
with signals.StopRequest(on_quit=lambda: print('released', flush=True),
                         quit_on_second_interrupt=True) as s:
  os.kill(os.getpid(), signal.SIGINT)
  time.sleep(0.5)
  print('first: stop requested' if s.signal == signal.SIGINT else 'no',
        flush=True)
  os.kill(os.getpid(), signal.SIGINT)
  time.sleep(5)
  print('still running', flush=True)
"""


def test_second_ctrl_c_quits_at_once():
  result = subprocess.run([sys.executable, '-c', _TWO_CTRL_C], cwd=REPO,
                          env=environment(), capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == signals.INTERRUPTED_EXIT_STATUS
  assert result.stdout.splitlines() == ['first: stop requested', 'released']
  assert result.stderr.strip().splitlines() == [
      'Ctrl-C: saving a checkpoint after the current step (or evaluation); '
      'press Ctrl-C again to quit at once',
      'second Ctrl-C: stopped at once without saving; the newest finished '
      'checkpoint is kept']


_HOLD_LOCK = """
import sys, time
from sa_reid_jax.training import workdir
with workdir.WorkdirLock(sys.argv[1]):
  print('held', flush=True)
  time.sleep(600)
"""


def test_live_lock_refused_dead_lock_taken_over(tmp_path):
  holder = subprocess.Popen([sys.executable, '-c', _HOLD_LOCK, str(tmp_path)],
                            cwd=REPO, env=environment(), text=True,
                            stdout=subprocess.PIPE)
  try:
    assert holder.stdout.readline() == 'held\n'
    with pytest.raises(workdir_lib.WorkdirBusyError,
                       match=f'{tmp_path} is in use by process {holder.pid} '):
      with workdir_lib.WorkdirLock(str(tmp_path)):
        pass
  finally:
    holder.kill()  # dies holding it: the lock file stays behind
    holder.wait()
  assert (tmp_path / workdir_lib.LOCK_FILE).exists()
  said = []
  with workdir_lib.WorkdirLock(str(tmp_path), say=said.append):
    assert said == [f'took over the lock of process {holder.pid} on '
                    f'{os.uname().nodename}, started '
                    + said[0].split(', started ')[1].split(', which')[0]
                    + ', which is no longer running '
                    f'({tmp_path / workdir_lib.LOCK_FILE})']
  assert not (tmp_path / workdir_lib.LOCK_FILE).exists()


def test_resume_with_another_model_is_refused_and_leftovers_removed(
    data, tmp_path, capsys, finished_run):
  # A run of 2 steps, then started again with another network and momentum.
  workdir = tmp_path / 'run'
  shutil.copytree(finished_run, workdir)
  leftover = workdir / 'checkpoints' / '9.orbax-checkpoint-tmp-1234'
  (leftover / 'state').mkdir(parents=True)
  capsys.readouterr()
  changed = tiny_config(data, max_steps=4,
                        **{'model.base_width': 8,
                           'optimizer.momentum': 0.5})
  with pytest.raises(checkpoints.ResumeError) as error:
    trainer.train_and_evaluate(changed, str(workdir))
  message = str(error.value)
  assert message.startswith(f'{workdir / "checkpoints" / "2"}: cannot '
                            'resume this run with the current config ('
                            'config.model.base_width was 4, is now 8, '
                            'config.optimizer.momentum was 0.9, is now 0.5)')
  assert '\n' not in message
  assert not leftover.exists()
  assert (f'removed {leftover.name} from {workdir / "checkpoints"}: an '
          'unfinished checkpoint') in capsys.readouterr().out


def test_unbuilt_dataset_names_the_folder_flag_and_writes_nothing(
    data, tmp_path, caplog):
  config = tiny_config(data)
  config.dataset.folder = ''
  config.dataset.name = 'market1501'
  config.dataset.data_dir = str(tmp_path / 'tfds')
  # A version folder without dataset_info.json (an interrupted build):
  # TFDS warns about it, which the error line already covers.
  (tmp_path / 'tfds' / 'market1501' / '1.0.0').mkdir(parents=True)
  workdir = tmp_path / 'run'
  with caplog.at_level('WARNING'):
    with pytest.raises(ValueError, match='market1501 is not built in .*'
                       r'--config\.dataset\.folder=DIR'):
      trainer.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()
  assert not [r for r in caplog.records if 'dataset_info' in r.getMessage()]


_ENOSPC_HINT = 'no space left on device while saving the checkpoint of step'


def _can_mount_tmpfs(tmp_path):
  target = tmp_path / 'probe'
  target.mkdir()
  probe = subprocess.run(
      ['unshare', '-rm', 'mount', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs',
       str(target)], capture_output=True, check=False)
  return probe.returncode == 0


@pytest.mark.full
def test_full_disk_is_one_line_and_keeps_the_last_checkpoint(
    data, tmp_path, finished_run):
  if shutil.which('unshare') is None or not _can_mount_tmpfs(tmp_path):
    reason = 'needs `unshare -rm` to mount a small tmpfs unprivileged'
    if os.environ.get('CI') == 'true':
      # CI's machine can: there, not testing a full disk is a failure.
      pytest.fail(f'CI=true: {reason}, which failed here')
    pytest.skip(reason)
  # One checkpoint's size, measured on a normal disk: the finished tiny
  # run's, whose network and optimizer are this run's.
  size = workdir_lib.directory_bytes(
      str(finished_run / checkpoints.CHECKPOINT_DIR / '2'))
  # Room for one checkpoint and the logs, not for two.
  room = int(1.6 * size) + 256 * 1024
  mount = tmp_path / 'small_disk'
  mount.mkdir()
  copy = tmp_path / 'copy'
  workdir = mount / 'run'
  train = ' '.join(f"'{arg}'" for arg in train_command(
      data, workdir, num_epochs=3,
      **{'checkpoint.every_steps': 2, 'checkpoint.keep': 3}))
  script = (f'mount -t tmpfs -o size={room} tmpfs {mount} && '
            f'{{ {train}; echo "exit status $?" >&2; }}; cp -r {workdir} '
            f'{copy}')
  result = subprocess.run(['unshare', '-rm', 'sh', '-c', script],
                          env=environment(), cwd=REPO, capture_output=True,
                          text=True, timeout=900)
  lines = _error_lines(result.stderr)
  assert lines[-1] == 'exit status 1', result.stderr[-3000:]
  # One line of ours; none of orbax's tracebacks and error records.
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  assert 'No space left' not in result.stderr, result.stderr[-3000:]
  errors = [line for line in lines if line.startswith('train.py: ')]
  assert errors == [lines[-2]], result.stderr[-3000:]
  assert errors[0].startswith(f'train.py: error: {workdir}: {_ENOSPC_HINT}')
  last_good = int(errors[0].split('the last good checkpoint, step ')[1]
                  .split(' ')[0])
  assert last_good >= 2
  assert 'a checkpoint needs about' in errors[0] and 'free' in errors[0]
  state = ocp.StandardCheckpointer().restore(
      copy / checkpoints.CHECKPOINT_DIR / str(last_good) / 'state')
  assert int(state['step']) == last_good


def test_full_disk_in_process_names_the_step_and_keeps_the_last_checkpoint(
    data, tmp_path, finished_run, monkeypatch):
  """The fast tier's full disk: orbax's save fails the way it reports
  TensorStore's failed write (another error type, the OS's text inside),
  leaving its temporary directory; the run stops with one DiskFullError
  naming the step and the last good checkpoint, which stays restorable.
  (The full tier fills a real small disk.)"""
  workdir = tmp_path / 'run'
  shutil.copytree(finished_run, workdir)

  def full_disk_save(manager, step, *args, **kwargs):
    del args, kwargs
    partial = os.path.join(str(manager.directory),
                           f'{step}{workdir_lib.TMP_CHECKPOINT_MARKER}-1')
    os.makedirs(partial)
    raise ValueError(f'Error writing "{partial}/state": OSError: [Errno 28] '
                     'No space left on device')

  monkeypatch.setattr(ocp.CheckpointManager, 'save', full_disk_save)
  config = tiny_config(data, max_steps=4,
                       **{'checkpoint.every_steps': 2, 'checkpoint.keep': 3})
  with pytest.raises(workdir_lib.DiskFullError) as raised:
    trainer.train_and_evaluate(config, str(workdir))
  message = str(raised.value)
  directory = workdir / checkpoints.CHECKPOINT_DIR
  assert message.startswith(f'{workdir}: {_ENOSPC_HINT} 4; ')
  assert (f'the last good checkpoint, step 2 in {directory}, is intact'
          in message)
  assert 'a checkpoint needs about' in message and ' free' in message
  assert '\n' not in message
  assert finalized_steps(workdir) == [2]
  state = ocp.StandardCheckpointer().restore(directory / '2' / 'state')
  assert int(state['step']) == 2
