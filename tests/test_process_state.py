"""Library calls leave the process as they found it: signal handlers, the
environment, absl's flags and logging levels.

A notebook calls `train_and_evaluate` several times in one process: a
Ctrl-C that stops one run must not end the process or leave the run's
handlers behind for the next cell. (Ending the process at a second Ctrl-C
is train.py's choice: tests/test_run_faults.py.)
"""

import logging as std_logging
import os
import signal

from absl import flags
from absl import logging
import pytest

import helpers
from sa_reid_jax.training import loop
from sa_reid_jax.training import signals
from sa_reid_jax.training import trainer
from sa_reid_jax.training import workdir as workdir_lib


def _process_state() -> dict:
  """What a library call must leave as it was.

  absl's flags by the values and presence of those defined now: a library
  a run imports for the first time may define flags of its own.
  """
  values = flags.FLAGS
  return {
      'handlers': {signum: signal.getsignal(signum)
                   for signum in (signal.SIGINT, signal.SIGTERM)},
      'environment': dict(os.environ),
      'flags_parsed': values.is_parsed(),
      'flags': {name: (values[name].value, values[name].present)
                for name in values},
      'absl_verbosity': logging.get_verbosity(),
      'logger_levels': {name: std_logging.getLogger(name).level
                        for name in ('', 'absl', 'jax', 'orbax',
                                     'tensorflow')},
  }


def _same_state(before: dict, after: dict) -> None:
  for key in before:
    if key == 'flags':
      changed = {name: (value, after[key].get(name))
                 for name, value in before[key].items()
                 if after[key].get(name) != value}
      assert not changed, f'absl flags changed: {changed}'
    elif key == 'environment':
      changed = sorted(name for name in before[key].keys() | after[key].keys()
                       if before[key].get(name) != after[key].get(name))
      assert not changed, f'environment variables changed: {changed}'
    else:
      assert after[key] == before[key], key


def _counting_steps(monkeypatch, interrupt_after: int = 0) -> list[int]:
  """Counts the train steps the loop runs (the list's length); with
  `interrupt_after`, a Ctrl-C (SIGINT to this process) once that many
  have run, from inside the step as a user's would come."""
  ran = []
  make = loop.step_lib.make_parallel_train_step

  def make_counting(*args, **kwargs):
    train_step = make(*args, **kwargs)

    def counted(state, batch):
      result = train_step(state, batch)
      ran.append(1)
      if len(ran) == interrupt_after:
        signal.raise_signal(signal.SIGINT)
      return result

    return counted

  monkeypatch.setattr(loop.step_lib, 'make_parallel_train_step',
                      make_counting)
  return ran


# Two trainings and an evaluation, about 20 s from a cold compilation cache:
# full tier (the fast tier checks the handlers in the two tests below).
@pytest.mark.full
def test_interrupted_run_then_resume_leave_the_process_alone(
    data, tmp_path, monkeypatch, capfd):
  config = helpers.tiny_config(data, max_steps=2)
  workdir = tmp_path / 'run'
  before = _process_state()

  with monkeypatch.context() as patch:
    ran = _counting_steps(patch, interrupt_after=1)
    result = trainer.train_and_evaluate(config, str(workdir))
  # The Ctrl-C finished its step, saved it and returned: no exception, the
  # process (and this test) carries on.
  assert (result['status'], result.get('signal'), result['step']) == (
      'terminated', 'SIGINT', 1), result
  assert len(ran) == 1
  assert helpers.finalized_steps(workdir) == [1]
  assert not (workdir / workdir_lib.LOCK_FILE).exists()
  out, err = capfd.readouterr()
  assert 'Ctrl-C: saving a checkpoint after the current step' in err
  assert (f'Ctrl-C (SIGINT): saved the checkpoint of step 1 in '
          f'{workdir / "checkpoints"}') in out
  _same_state(before, _process_state())

  with monkeypatch.context() as patch:
    ran = _counting_steps(patch)
    result = trainer.train_and_evaluate(config, str(workdir))
  # Resumed at step 1: one step left to run.
  assert (result['status'], result['step']) == ('completed', 2), result
  assert len(ran) == 1
  assert 'resuming from step 1' in capfd.readouterr().out
  assert (workdir / trainer.METRICS_JSON).exists()
  _same_state(before, _process_state())


def test_a_second_ctrl_c_raises_in_a_library_call(capfd):
  before = _process_state()
  with pytest.raises(KeyboardInterrupt):
    with signals.StopRequest() as stop:
      signal.raise_signal(signal.SIGINT)
      assert stop.signal == signal.SIGINT
      # Handled by the request while it is active...
      assert signal.getsignal(signal.SIGINT) != before['handlers'][
          signal.SIGINT]
      signal.raise_signal(signal.SIGINT)
  # ... and put back by the second Ctrl-C, before the run unwinds.
  _same_state(before, _process_state())
  assert capfd.readouterr().err.splitlines() == [
      'Ctrl-C: saving a checkpoint after the current step (or evaluation); '
      'press Ctrl-C again to quit at once',
      'second Ctrl-C: stopped at once without saving; the newest finished '
      'checkpoint is kept']


def test_a_stop_request_puts_the_handlers_back_on_an_error():
  before = _process_state()
  with pytest.raises(RuntimeError, match='the run failed'):
    with signals.StopRequest():
      raise RuntimeError('the run failed')
  _same_state(before, _process_state())
