"""Flag parsing shared by the command-line entry points."""

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
