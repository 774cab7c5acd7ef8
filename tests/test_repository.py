"""The repository's own conventions: ignored outputs, one flag spelling, the
documentation's size and links."""

import glob
import os
import re
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _documentation():
  """The Markdown pages: README.md, docs/, studies/ and benchmarks/."""
  return ([os.path.join(REPO, 'README.md')] +
          sorted(glob.glob(os.path.join(REPO, 'docs', '*.md'))) +
          [os.path.join(REPO, 'studies', 'README.md'),
           os.path.join(REPO, 'benchmarks', 'README.md')])


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
  # The benchmark commands are documented in benchmarks/README.md (and any
  # other page of the documentation that runs one).
  commands = []
  for path in _documentation():
    with open(path) as f:
      commands += re.findall(r'benchmarks/\S+\.py[^\n]*', f.read())
  assert commands
  assert not [c for c in commands if re.search(r'--[a-z0-9]+-[a-z]', c)]


def test_readme_is_short():
  with open(os.path.join(REPO, 'README.md')) as f:
    lines = f.read().splitlines()
  assert len(lines) <= 200, f'README.md has {len(lines)} lines (at most 200)'


def test_documentation_links_point_at_files():
  link = re.compile(r'!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
  broken, count = [], 0
  for path in _documentation():
    assert os.path.isfile(path), f'{os.path.relpath(path, REPO)} is missing'
    with open(path) as f:
      text = f.read()
    # Links inside code blocks are not links.
    text = re.sub(r'^```.*?^```', '', text, flags=re.M | re.S)
    for target in link.findall(text):
      if re.match(r'[a-z][a-z0-9+.-]*:', target) or target.startswith('#'):
        continue  # a URL, or an anchor in the same page
      count += 1
      resolved = os.path.normpath(os.path.join(
          os.path.dirname(path), target.split('#', 1)[0]))
      inside = os.path.commonpath([REPO, resolved]) == REPO
      if not inside or not os.path.exists(resolved):
        broken.append(f'{os.path.relpath(path, REPO)}: {target}')
  assert count
  assert not broken, broken
