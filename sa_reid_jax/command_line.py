"""Flag and argument parsing shared by the command-line entry points."""

import argparse
import contextlib
import logging as std_logging
import os
import sys
from typing import Callable, Optional, Sequence

from absl import flags
from absl import logging

from sa_reid_jax.training import signals

# absl's --verbosity levels: -1 WARNING (the default here), 0 INFO, 1 DEBUG.
WARNING_VERBOSITY = -1
# Loggers that set their own level (so the root's does not reach them).
LIBRARY_LOGGERS = ('absl', 'jax', 'orbax', 'tensorflow', 'etils')
# The shells' exit status of a process stopped by Ctrl-C.
INTERRUPTED_EXIT_STATUS = signals.INTERRUPTED_EXIT_STATUS


def config_flags_parser(program: str) -> Callable[[list[str]], list[str]]:
  """An `absl.app.run` flags parser that turns bad config flags into one line.

  ``ml_collections`` reports a ``--config.key=value`` override of a missing
  key or with a value of the wrong type, and a config file that does not
  compile, with a traceback; this parser exits with ``program: error: ...``
  instead.

  Args:
    program: the script's name, for the message.

  Returns:
    the parser (argv in, remaining arguments out).
  """

  def parse(argv: list[str]) -> list[str]:
    try:
      remaining = flags.FLAGS(argv)
    except SyntaxError as e:
      # Raised by the config file's import, past ml_collections' handling.
      sys.exit(f'{program}: error: --config: {e.filename}, line {e.lineno}: '
               f'{e.msg}')
    except flags.Error as e:
      sys.exit(f'{program}: error: {one_line(e)}')
    except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
      overrides = [a for a in argv[1:] if a.startswith('--config.')]
      message = one_line(e)
      overrides = _overrides_at_fault(argv, overrides, message)
      sys.exit(f'{program}: error: cannot apply {" ".join(overrides)}: '
               f'{message} (a key the config does not have, or a value '
               'of the wrong type)')
    config = flags.FLAGS['config'].value if 'config' in flags.FLAGS else None
    error = _load_error(config)
    if error is not None:
      sys.exit(f'{program}: error: --config: {one_line(error)}')
    return remaining

  return parse


def _load_error(config) -> Optional[BaseException]:
  """Why a config file did not load, or None for a config that did.

  ml_collections keeps a config file that cannot be read as a stand-in
  that raises OSError, from the load's error, on any attribute read: the
  error would otherwise surface far from the flag, at the config's first
  use. Checked by that behaviour (reading an attribute no config has).
  """
  try:
    getattr(config, '_sa_reid_jax_load_check', None)
  except OSError as error:
    return error.__cause__ or error
  return None


def _overrides_at_fault(argv: list[str], overrides: list[str],
                        message: str) -> list[str]:
  """The ``--config.`` overrides an error is about, for its message.

  Those whose key the config file does not have; else (a value of the
  wrong type) those whose last key the message quotes; else all of them.
  """
  def key(override):
    return override[len('--config.'):].split('=', 1)[0].split('.')

  files = [a.split('=', 1)[1] for a in argv[1:] if a.startswith('--config=')]
  try:
    config = flags.FLAGS['config'].parser.parse(files[-1])
  except Exception:  # pylint: disable=broad-except
    config = None  # the error will say what is wrong with the file
  if config is not None:

    def missing(override):
      block = config
      for part in key(override):
        if not hasattr(block, 'keys') or part not in block:
          return True
        block = block[part]
      return False

    unknown = [a for a in overrides if missing(a)]
    if unknown:
      return unknown
  quoted = [a for a in overrides if f"'{key(a)[-1]}'" in message]
  return quoted or overrides


def one_line(error: BaseException) -> str:
  """An error's message on one line, without a traceback or escapes.

  ml_collections reports an error raised by a config file with the whole
  traceback in the flag error's message (only its last line says what is
  wrong), and a missing key as an AttributeError around a KeyError whose
  text is quoted and holds a newline (the "Did you mean" hint).
  """
  while (isinstance(error, (AttributeError, KeyError)) and error.args and
         isinstance(error.args[0], BaseException)):
    error = error.args[0]
  if (isinstance(error, KeyError) and len(error.args) == 1 and
      isinstance(error.args[0], str)):
    text = f'no key {error.args[0]}'
  else:
    text = str(error)
  if 'Traceback (most recent call last)' in text:
    lines = [line for line in text.splitlines() if line.strip()]
    # absl's "flag --NAME=VALUE: message"; a value may hold a colon
    # (configs/sa.py:market1501), not a colon and a space.
    flag = text.split(': ', 1)[0] if text.startswith('flag --') else ''
    text = (f'{flag}: ' if flag else '') + lines[-1]
  return ' '.join(text.split())


class OneLineArgumentParser(argparse.ArgumentParser):
  """An argparse parser that reports bad arguments in one line (no usage)."""

  def error(self, message):
    # argparse says "argument --flag: ..."; the flag alone names it.
    sys.exit(f'{self.prog}: error: {message.removeprefix("argument ")}')


def image_size_argument(text: str) -> tuple[int, int]:
  """An argparse type for ``H,W`` (or ``HxW``): two positive integers."""
  try:
    size = tuple(int(v) for v in text.replace('x', ',').split(','))
  except ValueError:
    size = ()
  if len(size) != 2 or min(size) < 1:
    raise argparse.ArgumentTypeError(
        f'expected two positive integers H,W, got {text!r}')
  return size


def positive_int_argument(text: str) -> int:
  """An argparse type for an integer >= 1."""
  try:
    number = int(text)
  except ValueError:
    number = 0
  if number < 1:
    raise argparse.ArgumentTypeError(
        f'expected a positive integer, got {text!r}')
  return number


def verbosity_in(argv: Sequence[str]) -> int:
  """The ``--verbosity``/``-v`` value among `argv`, read before absl does.

  Entry points need it before importing TensorFlow, which prints its C++
  INFO lines (e.g. "oneDNN custom operations are on") at import time.
  """
  for index, arg in enumerate(argv):
    for name in ('--verbosity', '-v'):
      value = None
      if arg.startswith(name + '='):
        value = arg[len(name) + 1:]
      elif arg == name and index + 1 < len(argv):
        value = argv[index + 1]
      if value is not None:
        try:
          return int(value)
        except ValueError:
          return WARNING_VERBOSITY
  return WARNING_VERBOSITY


def quiet_tensorflow(argv: Sequence[str]) -> None:
  """Hides TensorFlow's C++ INFO lines unless ``--verbosity`` >= 0.

  Must run before TensorFlow is imported; an explicit TF_CPP_MIN_LOG_LEVEL
  in the environment wins.
  """
  level = '0' if verbosity_in(argv) >= 0 else '1'
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', level)


def absl_verbosity() -> int:
  """absl's parsed ``--verbosity`` flag when given on the command line, else
  `WARNING_VERBOSITY` (``absl.app.run`` turns an unset flag into 0, INFO,
  which shows every checkpoint step orbax takes).

  For the scripts run by ``absl.app.run``, after it parsed the flags.
  """
  if flags.FLAGS['verbosity'].present:
    return flags.FLAGS.verbosity
  return WARNING_VERBOSITY


def set_library_verbosity(verbosity: int) -> None:
  """Python logging (absl, JAX, orbax, TensorFlow) at absl's `verbosity`.

  Args:
    verbosity: -1 WARNING (only problems), 0 INFO, 1 DEBUG (e.g.
      `absl_verbosity`, or an argparse tool's ``--verbosity``).
  """
  logging.set_verbosity(verbosity)
  level = (std_logging.WARNING if verbosity < 0 else
           std_logging.INFO if verbosity == 0 else std_logging.DEBUG)
  std_logging.getLogger().setLevel(level)
  for name in LIBRARY_LOGGERS:
    std_logging.getLogger(name).setLevel(level)
  absl_logger = std_logging.getLogger('absl')
  if verbosity < 0:
    absl_logger.addFilter(_not_from_orbax)
  else:
    absl_logger.removeFilter(_not_from_orbax)
  # A failed orbax save leaves one asyncio future per array whose error
  # nobody retrieves (the same error orbax raises to us): asyncio logs each
  # with a traceback at exit. Shown from --verbosity=0 on.
  std_logging.getLogger('asyncio').setLevel(
      std_logging.CRITICAL if verbosity < 0 else level)


def _not_from_orbax(record: std_logging.LogRecord) -> bool:
  """Drops orbax's records (logged through absl's logger).

  Orbax logs a failed background save as several ERROR tracebacks and then
  raises it where the caller waits; the commands turn that error into one
  line themselves (e.g. a full disk), and orbax's WARNINGs are about its
  own pacing. ``--verbosity=0`` shows them all.
  """
  return f'{os.sep}orbax{os.sep}' not in record.pathname


def add_verbosity_argument(parser: argparse.ArgumentParser) -> None:
  """``--verbosity`` for an argparse tool, as absl's flag means it."""
  parser.add_argument('--verbosity', '-v', type=int,
                      default=WARNING_VERBOSITY,
                      help='library logging: -1 warnings (default), 0 info, '
                      '1 debug')


@contextlib.contextmanager
def interrupt_exits(program: str):
  """Ctrl-C outside a run's own handling ends `program` with one line.

  Args:
    program: the script's name, for the message.
  """
  try:
    yield
  except KeyboardInterrupt:
    print(f'{program}: interrupted', file=sys.stderr)
    sys.exit(INTERRUPTED_EXIT_STATUS)
