"""The repository's own conventions: ignored outputs, one flag spelling."""

import glob
import os
import re
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('path', [
    'models/imagenet/variables/x', 'resnet50-19c8e357.pth',
    'checkpoint.pth.tar',
    'search_results/ranks.png', 'workdirs/demo/model/x',
    # bash scripts/test.sh: the tests' compilation cache.
    '.cache/jax-tests/x'])
def test_what_the_readme_commands_write_is_ignored(path):
  if shutil.which('git') is None or not os.path.exists(
      os.path.join(REPO, '.git')):
    pytest.skip('not a git checkout')
  result = subprocess.run(['git', 'check-ignore', '--no-index', '-q', path],
                          cwd=REPO, check=False)
  assert result.returncode == 0, f'{path} is not ignored by .gitignore'


def test_benchmark_flags_use_underscores():
  hyphenated = []
  for path in sorted(glob.glob(os.path.join(REPO, 'benchmarks', '*.py'))):
    with open(path) as f:
      flags = re.findall(r"""['"](--[a-z0-9]+(?:[-_][a-z0-9]+)*)['"]""",
                         f.read())
    hyphenated += [f'{os.path.basename(path)}: {flag}' for flag in flags
                   if '-' in flag[2:]]
  assert not hyphenated
  with open(os.path.join(REPO, 'README.md')) as f:
    readme = f.read()
  commands = re.findall(r'benchmarks/\S+\.py[^\n]*', readme)
  assert commands
  assert not [c for c in commands if re.search(r'--[a-z0-9]+-[a-z]', c)]
