"""The installed libraries are the locked ones (requirements/, scripts/lock.sh).

Reads the lock of the running Python and machine, so a refreshed lock needs
no change here; skipped where no lock exists (installs from pyproject.toml's
ranges).
"""

import importlib.metadata
import os
import platform
import re
import sys

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIN = re.compile(r'^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)')
NOT_LOCKED = '# Not locked:'


def lock_path(test: bool) -> str:
  """requirements/py3.X-<system>-<machine>[-test].txt, as scripts/venv.sh."""
  machine = f'{platform.system().lower()}-{platform.machine()}'
  version = '%d.%d' % sys.version_info[:2]
  suffix = '-test' if test else ''
  return os.path.join(ROOT, 'requirements', f'py{version}-{machine}{suffix}.txt')


def read_lock(path: str) -> tuple[dict[str, str], set[str]]:
  """(canonical name -> pinned version, names the lock says it leaves out)."""
  pins, left_out = {}, set()
  with open(path) as f:
    for line in f:
      if line.startswith(NOT_LOCKED):
        left_out.update(canonicalize_name(n) for n in
                        line[len(NOT_LOCKED):].replace(',', ' ').split())
      match = PIN.match(line)
      if match:
        pins[canonicalize_name(match.group(1))] = match.group(2)
  return pins, left_out


@pytest.fixture(name='test_lock')
def fixture_test_lock():
  path = lock_path(test=True)
  if not os.path.exists(path):
    pytest.skip(f'no lock for this Python and machine '
                f'({os.path.relpath(path, ROOT)})')
  return read_lock(path)


def test_read_lock_parses_pins_and_left_out_names(tmp_path):
  path = tmp_path / 'lock.txt'
  path.write_text('# Lock for CPython 3.12\n# Not locked: torch, Foo_Bar\n'
                  'absl-py==2.5.1 \\\n    --hash=sha256:00\n'
                  'Jax==0.10.2 ; python_version >= "3.11" \\\n'
                  'torch==2.13.0+cpu \\\n')
  pins, left_out = read_lock(str(path))
  assert pins == {'absl-py': '2.5.1', 'jax': '0.10.2', 'torch': '2.13.0+cpu'}
  assert left_out == {'torch', 'foo-bar'}


def test_installed_versions_equal_the_lock(test_lock):
  pins, _ = test_lock
  wrong = {}
  for name, version in pins.items():
    try:
      installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      installed = 'not installed'
    if installed != version:
      wrong[name] = f'{installed} installed, {version} locked'
  assert not wrong, (f'installed libraries differ from '
                     f'{os.path.relpath(lock_path(True), ROOT)} (run '
                     f'bash scripts/test.sh in a new clone, or refresh the '
                     f'lock with scripts/lock.sh): {wrong}')


def _closure(names: list[tuple[str, set[str]]], skip: set[str]) -> set[str]:
  """Canonical names of the installed distributions `names` need."""
  environment = default_environment()
  seen, todo = set(), list(names)
  while todo:
    name, extras = todo.pop()
    key = canonicalize_name(name)
    if key in skip or (key, frozenset(extras)) in seen:
      continue
    seen.add((key, frozenset(extras)))
    for text in importlib.metadata.requires(name) or []:
      requirement = Requirement(text)
      marker = requirement.marker
      if marker is None or any(
          marker.evaluate({**environment, 'extra': e})
          for e in (extras or {''})):
        todo.append((requirement.name, set(requirement.extras)))
  return {key for key, _ in seen}


def test_lock_holds_every_dependency_of_the_package(test_lock):
  """A dependency added to pyproject.toml without refreshing the lock fails
  here (venv.sh would have installed it unhashed from the ranges)."""
  pins, left_out = test_lock
  needed = _closure([('sa-reid-jax', {'test'})], skip=left_out)
  missing = sorted(needed - set(pins) - {'sa-reid-jax'})
  assert not missing, (f'not in {os.path.relpath(lock_path(True), ROOT)}: '
                       f'{missing}; refresh it with scripts/lock.sh')


def test_package_lock_agrees_with_the_test_lock(test_lock):
  """The demo (package-only lock) runs the libraries the tests run."""
  path = lock_path(test=False)
  if not os.path.exists(path):
    pytest.skip(f'no package lock {os.path.relpath(path, ROOT)}')
  pins, _ = read_lock(path)
  test_pins, _ = test_lock
  differ = {name: (version, test_pins.get(name))
            for name, version in pins.items()
            if test_pins.get(name) != version}
  assert not differ, f'package lock vs test lock: {differ}'
  assert 'jax' in pins and 'torch' not in pins
