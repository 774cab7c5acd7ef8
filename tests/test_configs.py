"""Every experiment config loads, and the commands in its docstring work."""

import os
import re

import helpers
import numpy as np
import pytest

from sa_reid_jax.data import samplers
from sa_reid_jax.datasets import builders
from sa_reid_jax.models.casn import CASN_VARIANTS
from sa_reid_jax.models.rga import RGA_VARIANTS
from sa_reid_jax.models.sanet import VARIANTS
from sa_reid_jax.training import casn_defaults
from sa_reid_jax.training import defaults
from sa_reid_jax.training import rga_defaults
from sa_reid_jax.training import validation

REPO = helpers.REPO
CONFIG_FILES = helpers.CONFIG_FILES


def _config(name: str, arg: str = ''):
  """``--config=configs/NAME[:ARG]`` as train.py parses it."""
  path = os.path.join(REPO, 'configs', name)
  return helpers.parse_command(['train.py', f'--config={path}' +
                                (f':{arg}' if arg else '')])


def test_configs_are_one_per_family_plus_the_ablation_and_demos():
  assert {os.path.basename(p) for p in CONFIG_FILES} == {
      'sa.py', 'rga.py', 'casn.py', 'market1501_ablation.py',
      'demo_synthetic.py', 'demo_rga_synthetic.py', 'demo_casn_synthetic.py'}


# Each family config, its network options, and what it builds without one.
FAMILY_CONFIGS = {'sa.py': ('sanet', 'full'), 'rga.py': ('rga', 'rga_sc'),
                  'casn.py': ('casn', 'pcb')}


@pytest.mark.parametrize('name', sorted(FAMILY_CONFIGS))
def test_family_configs_differ_by_dataset_only_in_the_dataset(name):
  family, variant = FAMILY_CONFIGS[name]
  default = _config(name)
  assert (default.model.family, default.model.variant) == (family, variant)
  assert default.dataset.name == 'market1501'
  for dataset, builder in defaults.DATASETS.items():
    config = _config(name, dataset)
    assert config.dataset.name == builder
    config.dataset.name = 'market1501'
    assert config.to_dict() == default.to_dict(), dataset
  assert set(builders.dataset_names()) >= set(defaults.DATASETS.values())


@pytest.mark.parametrize('name, arg, expected', [
    ('sa.py', 'market1502', "DATASET one of ['cuhk03_detected'"),
    ('sa.py', 'market1502', "got 'market1502': unknown dataset 'market1502'"),
    # The dataset comes first.
    ('sa.py', 'no_sa', "unknown dataset 'no_sa'"),
    ('sa.py', 'market1501,no_sa,no_sa', "'no_sa' given twice"),
    ('sa.py', 'market1501,rga_s', "OPTIONs from ['no_sa', 'released', "
     "'tiny']"),
    ('sa.py', 'market1501,rga_s', "unknown option 'rga_s'"),
    ('rga.py', 'market1501,rga_s,rga_c', "at most one of ['rga_s', 'rga_c', "
     "'baseline']"),
    ('rga.py', 'market1501,rga_s,rga_c', 'rga_s and rga_c exclude each other'),
    ('casn.py', 'market1501,ide,pcb', 'ide and pcb exclude each other'),
    ('casn.py', 'market1501;ide', "unknown dataset 'market1501;ide'"),
])
def test_a_bad_config_argument_names_the_file_and_the_choices(name, arg,
                                                               expected):
  module = helpers.load_config_module(os.path.join(REPO, 'configs', name))
  with pytest.raises(ValueError, match=(
      rf'^config argument: expected configs/{name}:DATASET\[,OPTION\.\.\.\]'
      rf'.*{re.escape(expected)}')):
    module.get_config(arg)


@pytest.mark.parametrize('name', ['demo_synthetic.py', 'demo_rga_synthetic.py',
                                  'demo_casn_synthetic.py'])
def test_a_demo_config_refuses_an_argument(name):
  module = helpers.load_config_module(os.path.join(REPO, 'configs', name))
  with pytest.raises(ValueError, match=rf"^configs/{name} takes no argument, "
                     r"got 'tiny'$"):
    module.get_config('tiny')


@pytest.mark.parametrize('name, small', [
    ('sa.py', defaults.TINY), ('rga.py', rga_defaults.TINY),
    ('casn.py', casn_defaults.TINY)])
def test_the_tiny_option_changes_only_its_keys(name, small):
  for arg in ('market1501', 'dukemtmc_reid,' + {
      'sa.py': 'no_sa', 'rga.py': 'baseline', 'casn.py': 'ide'}[name]):
    full = _config(name, arg)
    tiny = _config(name, arg + ',tiny')
    for key, value in small.items():
      *parents, leaf = key.split('.')
      block = tiny
      for parent in parents:
        block = block[parent]
      assert block[leaf] == value, key
    helpers.set_keys(full, small)
    assert tiny.to_dict() == full.to_dict()
    # It still passes the start-up checks, as any documented command.
    validation.check_config(tiny)


@pytest.mark.parametrize('path', CONFIG_FILES, ids=os.path.basename)
def test_every_documented_train_command_parses(path):
  commands = helpers.documented_commands(path, 'train.py')
  assert commands, f'{path}: the docstring holds no train.py command'
  for argv in commands:
    config = helpers.parse_command(argv)
    assert config.model.variant in {'sanet': VARIANTS,
                                    'rga': RGA_VARIANTS,
                                    'casn': CASN_VARIANTS}[config.model.family]
    assert config.num_epochs >= 1 and config.batch_size >= 1
    # An empty init_from is refused: each documented command runs.
    assert config.init_from


# The datasets of the SA paper's Tables 1 and 3.
TABLE3_DATASETS = ('market1501', 'dukemtmc_reid', 'cuhk03_labeled',
                   'cuhk03_detected')


def _assert_official_erasing(config):
  """The official code's random erasing (p 0.5, area 0.02-0.2, N(0, 1))."""
  erasing = config.augmentation
  assert erasing.erasing_probability == 0.5
  assert tuple(erasing.erasing_area) == (0.02, 0.2)
  assert erasing.erasing_min_aspect == 0.3
  assert erasing.erasing_fill == 'random'


def test_table3_configs_with_and_without_sa():
  for dataset in TABLE3_DATASETS:
    full = _config('sa.py', dataset)
    no_sa = _config('sa.py', f'{dataset},no_sa')
    assert VARIANTS[full.model.variant]['ds_attention']
    assert not VARIANTS[no_sa.model.variant]['ds_attention']
    assert not VARIANTS[no_sa.model.variant]['backbone_attention']
    assert full.num_epochs == 100 and full.batch_size == 48
    assert full.eval.rerank
    for config in (full, no_sa):
      _assert_official_erasing(config)


def test_released_preset_is_the_default_without_erasing():
  for dataset in TABLE3_DATASETS:
    full = _config('sa.py', dataset)
    for arg, variant in (('released', 'full'), ('released,no_sa', 'full_no_sa'),
                         ('no_sa,released', 'full_no_sa')):
      released = _config('sa.py', f'{dataset},{arg}')
      assert released.model.variant == variant
      assert released.augmentation.erasing_probability == 0
      # Everything else is the default recipe.
      released.augmentation.erasing_probability = 0.5
      released.model.variant = 'full'
      assert released.to_dict() == full.to_dict()


def test_every_table_config_uses_the_official_sum_attention():
  """The published numbers came from the official code's 'sum' SA."""
  configs = []
  for dataset in TABLE3_DATASETS:
    for arg in ('', ',no_sa', ',released', ',released,no_sa'):
      configs.append(_config('sa.py', dataset + arg))
  ablation = helpers.load_config_module(
      os.path.join(REPO, 'configs', 'market1501_ablation.py'))
  configs += [ablation.get_config(row) for row in ablation.ROWS]
  for config in configs:
    assert config.model.family == 'sanet'
    assert config.model.attention_normalization == 'sum'
    # No silent training from scratch: these need an ImageNet backbone.
    assert config.init_from == ''
  softmax = helpers.parse_command(['train.py', '--config=' + os.path.join(
      REPO, 'configs', 'sa.py:market1501'),
                                   '--config.model.attention_normalization='
                                   'softmax'])
  assert softmax.model.attention_normalization == 'softmax'


def test_ablation_config_covers_table2():
  path = os.path.join(REPO, 'configs', 'market1501_ablation.py')
  module = helpers.load_config_module(path)
  documented = {re.search(r'ablation\.py:(\w+)', ' '.join(argv)).group(1)
                for argv in helpers.documented_commands(path, 'train.py')}
  assert documented == set(module.ROWS)
  for row in module.ROWS:
    config = module.get_config(row)
    assert config.model.variant == row and config.num_epochs == 60
    assert config.augmentation.erasing_probability == 0
  with pytest.raises(ValueError, match='needs a row argument'):
    module.get_config()


def test_eval_commands_parse():
  for path in CONFIG_FILES:
    for argv in helpers.documented_commands(path, 'eval.py'):
      assert helpers.parse_command(argv).eval.batch_size >= 1


# The datasets the RGA config documents.
RGA_DATASETS = ('market1501', 'cuhk03_labeled', 'cuhk03_detected', 'msmt17')


def test_rga_configs_follow_the_official_recipe():
  """REFERENCE.md, RGA: "The network and its training"."""
  for dataset in RGA_DATASETS:
    config = _config('rga.py', dataset)
    assert config.dataset.name == defaults.DATASETS[dataset]
    assert config.model.family == 'rga' and config.model.variant == 'rga_sc'
    assert tuple(config.image_size) == (256, 128)
    assert config.model.last_stride == 1
    # torch 0.4.0's BatchNorm2d weight default, U(0, 1), in the modules.
    assert config.model.module_bn_scale_init == 'uniform'
    assert config.data.sampler == 'identity'
    assert config.batch_size == 64 and config.data.images_per_identity == 4
    assert config.num_epochs == 600
    opt = config.optimizer
    assert (opt.name, opt.learning_rate, opt.weight_decay) == (
        'adam', 8e-4, 5e-4)
    assert opt.warmup_epochs == 20
    # A float64 product of two config values, not exactly 8e-6: a few units
    # of float64 rounding (2e-16 relative), well inside 1e-12.
    assert opt.warmup_start_factor * opt.learning_rate == pytest.approx(
        8e-6, rel=1e-12)
    assert tuple(opt.decay_milestones) == (80, 120, 160, 200, 240, 280, 320,
                                           360)
    assert opt.decay_factor == 0.5
    terms = config.loss.terms
    assert terms.cross_entropy.weight == 1 and terms.triplet.weight == 1
    assert terms.cross_entropy.label_smoothing == 0.1
    assert terms.triplet.margin == 0.3 and not terms.triplet.soft_margin
    aug = config.augmentation
    assert (aug.crop_probability, aug.crop_scale) == (0.5, 1.125)
    assert aug.flip_probability == 0.5
    assert (aug.erasing_probability, aug.erasing_fill) == (0.5, 'zeros')
    assert config.eval.metric == 'cosine' and not config.eval.rerank
    assert config.init_from == ''  # an ImageNet backbone is required
    for variant in ('rga_s', 'rga_c'):
      other = _config('rga.py', f'{dataset},{variant}')
      assert other.model.variant == variant
      other.model.variant = 'rga_sc'
      assert other.to_dict() == config.to_dict()


def test_bot_config_is_the_bnneck_baseline():
  config = _config('rga.py', 'market1501,baseline')
  assert config.model.family == 'rga' and config.model.variant == 'baseline'
  assert RGA_VARIANTS['baseline'] == {'spatial': False, 'channel': False}
  assert config.model.descriptor == 'post_bn'
  assert config.num_epochs == 120
  assert tuple(config.optimizer.decay_milestones) == (40, 70)
  assert config.optimizer.learning_rate == 3.5e-4
  # reid-strong-baseline's sampler: an epoch about one pass over the images.
  assert config.data.sampler == 'identity_chunks'
  assert (config.batch_size, config.data.images_per_identity) == (64, 4)
  # reid-strong-baseline's code warms up from 0.01 of the rate (its paper's
  # text says 0.1), over 10 epochs.
  assert config.optimizer.warmup_start_factor == 0.01
  assert config.optimizer.warmup_epochs == 10
  assert config.loss.terms.triplet.weight == 1


@pytest.mark.parametrize('arg', [
    'market1501,ide', 'market1501', 'dukemtmc_reid', 'cuhk03_labeled',
    'cuhk03_detected'])
def test_casn_epochs_are_passes_over_the_images(arg):
  """The notes' recipe counts 40 epochs of passes over the training images
  (REFERENCE.md, CASN): P x K batches of every identity's images in chunks,
  not one pass over the identities."""
  config = _config('casn.py', arg)
  assert config.model.variant == ('ide' if 'ide' in arg else 'pcb')
  assert config.data.sampler == 'identity_chunks'
  assert (config.batch_size, config.data.images_per_identity) == (16, 2)
  assert config.num_epochs == 40
  assert tuple(config.optimizer.decay_milestones) == (30,)


# The training splits of the real datasets (identities, images): the
# builders' descriptions (sa_reid_jax/datasets/builders.py) and, for
# CUHK03-NP, the new protocol's release (labeled 7,368 and detected 7,365
# training images of its 767 identities).
TRAIN_SPLITS = {'market1501': (751, 12_936), 'dukemtmc_reid': (702, 16_522),
                'cuhk03_np/labeled': (767, 7_368),
                'cuhk03_np/detected': (767, 7_365), 'msmt17': (1_041, 32_621)}
# A row of a config docstring's table of training lengths: the config
# argument, the real training split's identities and images, the steps per
# epoch and in all ("<= N": at most N, for the chunked samplers, whose
# count depends on how the images spread over the identities).
_ROW = re.compile(r'^  (\S+)\s+([\d,]+)\s+([\d,]+)\s+(<= )?([\d,]+)\s+'
                  r'(<= )?([\d,]+)$', re.MULTILINE)


def _number(text: str) -> int:
  return int(text.replace(',', ''))


def _stated_rows(path):
  """(config argument, identities, images, per epoch, 'exact' or 'at
  most', total) of every row of a config docstring's table."""
  rows = [(m.group(1), _number(m.group(2)), _number(m.group(3)),
           _number(m.group(5)), 'at most' if m.group(4) else 'exact',
           _number(m.group(7)))
          for m in _ROW.finditer(helpers.load_config_module(path).__doc__)]
  assert rows, f'{path}: no table of steps per epoch and in all'
  return rows


# Every (config file, table row) of the non-demo configs; the ablation's
# argument is its row, on Market-1501.
STATED = [(path, row) for path in CONFIG_FILES
          if 'demo' not in os.path.basename(path)
          for row in _stated_rows(path)]


@pytest.mark.parametrize(
    'path, row', STATED,
    ids=[f'{os.path.basename(p)}:{row[0]}' for p, row in STATED])
@pytest.mark.parametrize('seed', [0, 1])
def test_docstrings_state_the_steps_on_the_real_dataset(path, row, seed):
  """The steps per epoch and in all that a config's docstring states are
  its sampler's on a table of the real training split's size (how its
  images spread over the identities drawn: the real split is not in the
  repository, and only the chunked sampler depends on it)."""
  arg, identities, images, stated, kind, total = row
  config = helpers.load_config_module(path).get_config(arg)
  assert (identities, images) == TRAIN_SPLITS[config.dataset.name]
  rng = np.random.default_rng(seed)
  counts = 2 + rng.multinomial(images - 2 * identities,
                               rng.dirichlet(np.ones(identities)))
  labels = np.repeat(np.arange(identities), counts)
  steps = samplers.build(config.data.sampler, labels, config.batch_size,
                         config.data.images_per_identity).steps_per_epoch
  if kind == 'exact':
    assert steps == stated and total == stated * config.num_epochs
  else:
    # A chunked epoch: at most every image once, in batches.
    assert stated == images // config.batch_size and steps <= stated
    assert total == stated * config.num_epochs
