"""The tools' outputs checked before any work, and their bad input in one line.

eval.py, ``visualize cam/ranks`` and convert_weights.py refuse an output
they cannot write before loading a model or reading weights (the loaders
are replaced by ones that fail the test if reached); bad flags, truncated
files, other checkpoint formats, broken config files and misspelt dataset
names end in one line naming the flag, key or file. Cheap: no training.
"""

import os
import pathlib
import re
import shlex
import shutil
import sys
import tomllib

import helpers
import numpy as np
from PIL import Image
import pytest
import torch

from sa_reid_jax.convert import ConversionError, convert_checkpoint
from sa_reid_jax.convert import read_weights
from sa_reid_jax.datasets import synthetic
from sa_reid_jax.datasets import tables
from sa_reid_jax.evaluation import pictures
from sa_reid_jax.models import store
from sa_reid_jax.tools import cams
from sa_reid_jax.tools import visualize
from torch_reference import OfficialSANet
from torch_rga_reference import OfficialRGANet

CONFIG = os.path.join(helpers.REPO, 'configs', 'sa.py') + ':market1501'
VISUALIZE = 'sa_reid_jax.tools.visualize'


def one_error_line(result) -> str:
  """The error line of a failed run, checking it is the only one."""
  assert result.returncode != 0, result
  assert 'Traceback' not in result.stderr, result.stderr
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, result.stderr
  return lines[0]


@pytest.fixture
def no_work(monkeypatch):
  """Loading a model or reading weights fails the test: the output check
  must come first."""

  def reached(*args, **kwargs):
    raise AssertionError('work started before the output was checked')

  monkeypatch.setattr(store, 'load_model', reached)
  monkeypatch.setattr('sa_reid_jax.convert.convert.read_weights', reached)


@pytest.fixture
def read_only(tmp_path):
  """``make(path)``: `path` made read-only (restored afterwards); skips
  where that does not stop writes (root)."""
  made = []

  def make(path):
    os.chmod(path, 0o555)
    made.append(path)
    probe = pathlib.Path(path) / 'probe'
    try:
      probe.write_text('')
    except OSError:
      return path
    probe.unlink()
    pytest.skip('read-only directories are writable here (running as root)')

  yield make
  for path in made:
    os.chmod(path, 0o755)


@pytest.fixture
def a_file(tmp_path):
  """A regular file: no output can be written under it, even by root."""
  path = tmp_path / 'a_file'
  path.write_text('not a folder')
  return path


# --- 1. outputs checked before any work ---------------------------------------


def test_eval_refuses_an_unwritable_output_dir_first(saved_sanet, cli, a_file,
                                                     no_work):
  line = one_error_line(cli('eval.py', f'--config={CONFIG}',
                            f'--checkpoint={saved_sanet[0]}',
                            f'--output_dir={a_file}/metrics'))
  assert line == (f'eval.py: error: --output_dir: cannot write '
                  f'{a_file}/metrics/metrics.json: {a_file} is not a '
                  'directory')


def test_eval_refuses_a_read_only_model_directory_first(saved_sanet, cli,
                                                        tmp_path, read_only,
                                                        no_work):
  model = tmp_path / 'models' / 'sanet'
  shutil.copytree(saved_sanet[0], model)
  read_only(model)
  line = one_error_line(cli('eval.py', f'--config={CONFIG}',
                            f'--checkpoint={model}', '--report'))
  assert line == ('eval.py: error: --output_dir (default: the --checkpoint '
                  f'directory): cannot write {model}/metrics.json: '
                  f'directory {model} is not writable')


@pytest.mark.parametrize('command', ['cam', 'ranks'])
def test_visualize_refuses_an_unwritable_output_first(saved_sanet, cli,
                                                      a_file, no_work,
                                                      command):
  inputs = (['--images=missing'] if command == 'cam' else
            ['--dataset_folder=missing'])
  line = one_error_line(cli(VISUALIZE, command,
                            f'--checkpoint={saved_sanet[0]}', *inputs,
                            f'--output={a_file}/pictures/out.png'))
  assert line == (f'visualize {command}: error: --output: cannot write '
                  f'{a_file}/pictures/out.png: {a_file} is not a directory')


def test_visualize_refuses_a_read_only_folder_first(saved_sanet, cli,
                                                    tmp_path, read_only,
                                                    no_work):
  (tmp_path / 'shared').mkdir()
  folder = read_only(tmp_path / 'shared')
  line = one_error_line(cli(VISUALIZE, 'cam',
                            f'--checkpoint={saved_sanet[0]}',
                            '--images=missing', f'--output={folder}/cam.png'))
  assert line == (f'visualize cam: error: --output: cannot write '
                  f'{folder}/cam.png: directory {folder} is not writable')


def test_convert_refuses_an_unwritable_output_first(cli, tmp_path, a_file,
                                                    no_work):
  weights = tmp_path / 'w.npz'
  np.savez(weights, a=np.zeros(1))
  line = one_error_line(cli('convert_weights.py', '--format=torchvision',
                            f'--input={weights}',
                            f'--output={a_file}/models/imagenet'))
  assert line == ('convert_weights.py: error: --output: cannot write '
                  f'{a_file}/models/imagenet: {a_file} is not a directory')


def test_convert_refuses_a_read_only_models_folder_first(cli, tmp_path,
                                                         read_only, no_work):
  weights = tmp_path / 'w.npz'
  np.savez(weights, a=np.zeros(1))
  (tmp_path / 'models').mkdir()
  folder = read_only(tmp_path / 'models')
  line = one_error_line(cli('convert_weights.py', '--format=torchvision',
                            f'--input={weights}',
                            f'--output={folder}/imagenet'))
  assert line == ('convert_weights.py: error: --output: cannot write '
                  f'{folder}/imagenet: directory {folder} is not writable')


# --- 2. one line instead of tracebacks ----------------------------------------


@pytest.mark.parametrize('command, flag', [('ranks', '--num_queries'),
                                           ('cam', '--max_images')])
def test_counts_below_one_name_their_flag(cli, command, flag):
  inputs = (['--images=x'] if command == 'cam' else ['--dataset_folder=x'])
  line = one_error_line(cli(VISUALIZE, command, '--checkpoint=x', *inputs,
                            f'{flag}=0', '--output=out.png'))
  assert line == (f'python -m sa_reid_jax.tools.visualize {command}: error: '
                  f"{flag}: expected a positive integer, got '0'")


def test_ranks_output_without_an_extension_is_named(cli, saved_sanet,
                                                    no_work, tmp_path):
  line = one_error_line(cli(VISUALIZE, 'ranks',
                            f'--checkpoint={saved_sanet[0]}',
                            '--dataset_folder=x', '--output=best'))
  # The suggestion is the name given, with an extension.
  assert line == ('visualize ranks: error: --output: best has no '
                  'extension; give an image file name such as best.png '
                  '(.png, .jpg)')
  assert not (tmp_path / 'best').exists()


def test_truncated_npz_is_one_line(cli, tmp_path):
  weights = tmp_path / 'resnet.npz'
  np.savez(weights, **{f'w{i}': np.ones(1000, np.float32) for i in range(4)})
  data = weights.read_bytes()
  weights.write_bytes(data[:len(data) // 2])  # an interrupted download
  with pytest.raises(ConversionError,
                     match='resnet.npz: not a readable .npz file'):
    read_weights(str(weights))
  line = one_error_line(cli('convert_weights.py', '--format=torchvision',
                            f'--input={weights}',
                            f'--output={tmp_path / "out"}'))
  assert line.startswith(f'convert_weights.py: error: {weights}: not a '
                         'readable .npz file (truncated or damaged?): ')
  assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('program', ['train.py', 'eval.py'])
def test_config_file_with_a_syntax_error_is_one_line(cli, tmp_path, program):
  broken = tmp_path / 'broken.py'
  broken.write_text('def get_config(:\n  pass\n')
  other = ([f'--workdir={tmp_path / "run"}'] if program == 'train.py' else
           ['--checkpoint=x'])
  line = one_error_line(cli(program, f'--config={broken}', *other))
  assert line == (f'{program}: error: --config: {broken}, line 1: '
                  'invalid syntax')
  assert not (tmp_path / 'run').exists()


def test_safetensors_without_the_package_names_the_extra(cli, tmp_path,
                                                        monkeypatch):
  weights = tmp_path / 'resnet.safetensors'
  weights.write_bytes(b'{}')
  # As if the package were not installed: `import safetensors` fails.
  monkeypatch.setitem(sys.modules, 'safetensors', None)
  monkeypatch.setitem(sys.modules, 'safetensors.numpy', None)
  line = one_error_line(cli('convert_weights.py', '--format=torchvision',
                            f'--input={weights}',
                            f'--output={tmp_path / "out"}'))
  assert line == (f'convert_weights.py: error: {weights}: reading '
                  '.safetensors files needs the safetensors package '
                  '(safetensors is missing); install it with `pip install '
                  "'sa-reid-jax[convert]'`")


def test_the_convert_extra_installs_safetensors():
  with open(os.path.join(helpers.REPO, 'pyproject.toml'), 'rb') as f:
    extras = tomllib.load(f)['project']['optional-dependencies']
  assert any(re.match(r'safetensors\b', requirement)
             for requirement in extras['convert']), extras['convert']


# --- 3. checkpoints of the other formats ----------------------------------------


@pytest.fixture(scope='module')
def official_files(tmp_path_factory):
  """{format: an official checkpoint file of it} (tiny networks)."""
  root = tmp_path_factory.mktemp('official')
  torch.manual_seed(0)
  files = {'sa_official': root / 'sa.pth.tar',
           'rga_official': root / 'rga.pth.tar'}
  torch.save({'state_dict': OfficialSANet(num_classes=9).state_dict()},
             files['sa_official'])
  torch.save({'state_dict': OfficialRGANet(num_classes=9).state_dict()},
             files['rga_official'])
  return files


@pytest.mark.parametrize('found', ['sa_official', 'rga_official'])
def test_an_official_checkpoint_given_as_torchvision_names_its_format(
    cli, official_files, tmp_path, found):
  path = official_files[found]
  code = 'SA' if found == 'sa_official' else 'RGA'
  line = one_error_line(cli('convert_weights.py', '--format=torchvision',
                            f'--input={path}',
                            f'--output={tmp_path / "out"}'))
  assert line == (f'convert_weights.py: error: {path} is a checkpoint of '
                  f'the official {code} code, not a torchvision ResNet state '
                  f'dict (--format=torchvision): use --format={found}')
  other = 'rga_official' if found == 'sa_official' else 'sa_official'
  with pytest.raises(ConversionError, match=f'use --format={found}$'):
    convert_checkpoint(other, str(path), str(tmp_path / 'out'))


def test_a_file_of_no_known_layout_lists_a_few_keys_and_counts(cli,
                                                               tmp_path):
  weights = tmp_path / 'other.npz'
  np.savez(weights, **{f'encoder.block{i}.weight': np.zeros(2)
                       for i in range(50)})
  line = one_error_line(cli('convert_weights.py', '--format=torchvision',
                            f'--input={weights}',
                            f'--output={tmp_path / "out"}'))
  assert line.startswith(f'convert_weights.py: error: {weights} does not '
                         'match the torchvision layout: ')
  assert re.search(r' \d+ missing keys: [^;]* and \d+ more; '
                   r'50 unexpected keys: encoder\.block0\.weight, '
                   r'[^;]* and 45 more$', line), line
  assert len(line) < 1000


# --- 4. the pictures ------------------------------------------------------------


def test_rank_and_distance_are_drawn_apart():
  tile = np.full((64, 32, 3), 255, np.uint8)
  row = np.asarray(pictures.tile_row([tile], ['#2 0.03']).convert('L'))
  strip = row[64 + 2 * pictures.BORDER:]
  inked = np.flatnonzero((strip < 128).any(axis=0))
  blank_runs = np.diff(inked) - 1
  # Glyphs of one word are at most 2 pixels apart; the words are further.
  assert (blank_runs >= 4).sum() == 1, blank_runs
  # Both words drawn in full: '#2' then '0.03' (4 glyph groups after it).
  gap = np.argmax(blank_runs >= 4)
  assert len(inked) - gap > 4


def test_a_flat_map_is_noted_on_its_tile(monkeypatch, tmp_path):
  path = tmp_path / 'person.png'
  Image.fromarray(np.random.default_rng(0).integers(
      0, 255, (64, 32, 3), np.uint8)).save(path)
  flat = np.full((1, 8, 4), 1 / 32, np.float32)
  varied = np.arange(32, dtype=np.float32).reshape(1, 8, 4)
  monkeypatch.setattr(cams, 'class_activation_maps',
                      lambda *args: {'classes': [0], 'cams': {},
                                     'attention': {'layer1': flat,
                                                   'layer2': varied},
                                     'attention_name': 'SA'})
  picture = np.asarray(visualize.cam_picture(
      [('m', None, None)], [str(path)], (64, 32)))
  cell = 32 + 2 * pictures.BORDER + pictures.GAP

  def tile(index):
    left = index * cell + pictures.BORDER
    return picture[pictures.BORDER:pictures.BORDER + 64, left:left + 32]

  flat_tile, varied_tile = tile(1), tile(2)
  np.testing.assert_array_equal(
      varied_tile, pictures.colorize(varied[0], (64, 32)))
  # Without the note: one colour (colorize's zero) over the whole tile.
  assert len(np.unique(flat_tile.reshape(-1, 3), axis=0)) > 2
  assert (flat_tile == 255).all(axis=-1).any()
  assert (flat_tile < 64).all(axis=-1).any()  # the note's text
  assert not pictures.is_flat(varied) and pictures.is_flat(flat)


# --- 5. a misspelt dataset name ----------------------------------------------------


def test_misspelt_dataset_name_is_one_line_with_close_matches(saved_sanet,
                                                             cli, tmp_path):
  expected = ("config.dataset.name: unknown dataset 'market1510'; did you "
              "mean 'market1501'? (this project's datasets: cuhk03_np, "
              'cuhk03_np/detected, cuhk03_np/labeled, dukemtmc_reid, '
              'market1501, market_layout_folder, msmt17; a folder in '
              'Market-1501 layout is read with config.dataset.folder)')
  with pytest.raises(ValueError) as error:
    tables.from_tfds('market1510', 'query')
  assert str(error.value) == expected
  line = one_error_line(cli('eval.py', f'--config={CONFIG}',
                            f'--checkpoint={saved_sanet[0]}',
                            '--config.dataset.name=market1510',
                            f'--output_dir={tmp_path}'))
  assert line == f'eval.py: error: {expected}'


# --- 6. the documented search command (docs/evaluation.md) ------------------------


@pytest.mark.full
def test_readme_search_query_is_a_file_the_demo_writes(tmp_path):
  with open(os.path.join(helpers.REPO, 'docs', 'evaluation.md')) as f:
    text = f.read().replace('\\\n', ' ')
  command = next(shlex.split(line) for line in text.splitlines()
                 if 'sa_reid_jax.tools.search' in line and
                 line.startswith('.venv/bin/python'))
  query = next(a.split('=', 1)[1] for a in command
               if a.startswith('--query='))
  prefix = 'workdirs/demo/synthetic_data/'
  assert query.startswith(prefix)
  # What scripts/demo.sh generates: the hard preset, the defaults otherwise.
  synthetic.generate(str(tmp_path), difficulty='hard')
  assert (tmp_path / query[len(prefix):]).is_file(), query
