"""Flag and argument parsing shared by the command-line entry points."""

import argparse
import sys
from typing import Callable

from absl import flags


def config_flags_parser(program: str) -> Callable[[list[str]], list[str]]:
  """An `absl.app.run` flags parser that turns bad config flags into one line.

  ``ml_collections`` reports a ``--config.key=value`` override of a missing
  key or with a value of the wrong type with a traceback; this parser exits
  with ``program: error: ...`` instead.

  Args:
    program: the script's name, for the message.

  Returns:
    the parser (argv in, remaining arguments out).
  """

  def parse(argv: list[str]) -> list[str]:
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      sys.exit(f'{program}: error: {e}')
    except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
      overrides = [a for a in argv[1:] if a.startswith('--config')]
      sys.exit(f'{program}: error: cannot apply {" ".join(overrides)}: '
               f'{type(e).__name__} {e} (a key the config does not have, or '
               'a value of the wrong type)')

  return parse


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
