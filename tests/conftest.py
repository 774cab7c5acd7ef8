"""Shared test set-up: quiet TensorFlow, and a summary of parity errors."""

import os
from typing import Optional

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # pylint: disable=g-import-not-at-top

_PARITY_ERRORS: list[tuple[str, float, Optional[float]]] = []


@pytest.fixture
def record_parity():
  """Records (what, worst relative error, bound or None for a reference
  figure) for the end-of-run summary."""

  def record(what: str, error: float, bound: Optional[float]):
    _PARITY_ERRORS.append((what, error, bound))

  return record


def pytest_terminal_summary(terminalreporter):
  if not _PARITY_ERRORS:
    return
  terminalreporter.section('JAX vs PyTorch parity: worst relative errors')
  for what, error, bound in _PARITY_ERRORS:
    limit = 'reference' if bound is None else f'bound {bound:.1e}'
    terminalreporter.write_line(f'{error:.2e} ({limit})  {what}')
