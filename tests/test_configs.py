"""Every experiment config loads, and the commands in its docstring work."""

import os
import re

import helpers
import numpy as np
import pytest

from sa_reid_jax.data import samplers
from sa_reid_jax.models.casn import CASN_VARIANTS
from sa_reid_jax.models.rga import RGA_VARIANTS
from sa_reid_jax.models.sanet import VARIANTS

REPO = helpers.REPO
CONFIG_FILES = helpers.CONFIG_FILES


def test_there_is_a_config_per_experiment():
  names = {os.path.basename(p) for p in CONFIG_FILES}
  assert {'market1501.py', 'dukemtmc_reid.py', 'cuhk03_labeled.py',
          'cuhk03_detected.py', 'market1501_ablation.py',
          'demo_synthetic.py', 'demo_rga_synthetic.py',
          'rga_sc_cuhk03_labeled.py', 'rga_sc_cuhk03_detected.py',
          'rga_sc_market1501.py', 'rga_sc_msmt17.py',
          'bot_market1501.py', 'casn_ide_market1501.py',
          'casn_pcb_market1501.py', 'casn_pcb_dukemtmc_reid.py',
          'casn_pcb_cuhk03_labeled.py', 'casn_pcb_cuhk03_detected.py',
          'demo_casn_synthetic.py'} <= names


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


TABLE3_CONFIGS = ('market1501', 'dukemtmc_reid', 'cuhk03_labeled',
                  'cuhk03_detected')


def _assert_official_erasing(config):
  """The official code's random erasing (p 0.5, area 0.02-0.2, N(0, 1))."""
  erasing = config.augmentation
  assert erasing.erasing_probability == 0.5
  assert tuple(erasing.erasing_area) == (0.02, 0.2)
  assert erasing.erasing_min_aspect == 0.3
  assert erasing.erasing_fill == 'random'


def test_table3_configs_with_and_without_sa():
  for name in TABLE3_CONFIGS:
    path = os.path.join(REPO, 'configs', f'{name}.py')
    full = helpers.parse_command(['train.py', f'--config={path}'])
    no_sa = helpers.parse_command(['train.py', f'--config={path}:no_sa'])
    assert VARIANTS[full.model.variant]['ds_attention']
    assert not VARIANTS[no_sa.model.variant]['ds_attention']
    assert not VARIANTS[no_sa.model.variant]['backbone_attention']
    assert full.num_epochs == 100 and full.batch_size == 48
    assert full.eval.rerank
    for config in (full, no_sa):
      _assert_official_erasing(config)
    with pytest.raises(ValueError, match='no_sa'):
      helpers.load_config_module(path).get_config('sa')


def test_released_preset_is_the_default_without_erasing():
  for name in TABLE3_CONFIGS:
    path = os.path.join(REPO, 'configs', f'{name}.py')
    full = helpers.parse_command(['train.py', f'--config={path}'])
    for arg, variant in (('released', 'full'), ('released,no_sa', 'full_no_sa'),
                         ('no_sa,released', 'full_no_sa')):
      released = helpers.parse_command(['train.py', f'--config={path}:{arg}'])
      assert released.model.variant == variant
      assert released.augmentation.erasing_probability == 0
      # Everything else is the default recipe.
      released.augmentation.erasing_probability = 0.5
      released.model.variant = 'full'
      assert released.to_dict() == full.to_dict()
    module = helpers.load_config_module(path)
    for bad in ('released,released', 'released,softmax', 'released;no_sa'):
      with pytest.raises(ValueError, match='released,no_sa'):
        module.get_config(bad)


def test_every_table_config_uses_the_official_sum_attention():
  """The published numbers came from the official code's 'sum' SA."""
  configs = []
  for name in TABLE3_CONFIGS:
    path = os.path.join(REPO, 'configs', f'{name}.py')
    for arg in ('', ':no_sa', ':released', ':released,no_sa'):
      configs.append(helpers.parse_command(['train.py',
                                            f'--config={path}{arg}']))
  ablation = helpers.load_config_module(
      os.path.join(REPO, 'configs', 'market1501_ablation.py'))
  configs += [ablation.get_config(row) for row in ablation.ROWS]
  for config in configs:
    assert config.model.family == 'sanet'
    assert config.model.attention_normalization == 'sum'
    # No silent training from scratch: these need an ImageNet backbone.
    assert config.init_from == ''
  softmax = helpers.parse_command(['train.py', '--config=' + os.path.join(
      REPO, 'configs', 'market1501.py'),
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


RGA_CONFIGS = {'rga_sc_cuhk03_labeled': 'cuhk03_np/labeled',
               'rga_sc_cuhk03_detected': 'cuhk03_np/detected',
               'rga_sc_market1501': 'market1501',
               'rga_sc_msmt17': 'msmt17'}


def test_rga_configs_follow_the_official_recipe():
  """REFERENCE.md, RGA: "The network and its training"."""
  for name, dataset in RGA_CONFIGS.items():
    path = os.path.join(REPO, 'configs', f'{name}.py')
    config = helpers.parse_command(['train.py', f'--config={path}'])
    assert config.dataset.name == dataset
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
    for arg, variant in (('rga_s', 'rga_s'), ('rga_c', 'rga_c')):
      other = helpers.parse_command(['train.py', f'--config={path}:{arg}'])
      assert other.model.variant == variant
      other.model.variant = 'rga_sc'
      assert other.to_dict() == config.to_dict()
    with pytest.raises(ValueError, match="'rga_s', 'rga_c'"):
      helpers.load_config_module(path).get_config('rga_sa')
    # The datasets' configs differ only in the dataset.
    market = helpers.parse_command(['train.py', '--config=' + os.path.join(
        REPO, 'configs', 'rga_sc_market1501.py')])
    config.dataset.name = market.dataset.name
    assert config.to_dict() == market.to_dict()


def test_bot_config_is_the_bnneck_baseline():
  config = helpers.parse_command(['train.py', '--config=' + os.path.join(
      REPO, 'configs', 'bot_market1501.py')])
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


@pytest.mark.parametrize('name', [
    'casn_ide_market1501.py', 'casn_pcb_market1501.py',
    'casn_pcb_dukemtmc_reid.py', 'casn_pcb_cuhk03_labeled.py',
    'casn_pcb_cuhk03_detected.py'])
def test_casn_epochs_are_passes_over_the_images(name):
  """The notes' recipe counts 40 epochs of passes over the training images
  (REFERENCE.md, CASN): P x K batches of every identity's images in chunks,
  not one pass over the identities."""
  config = helpers.parse_command(['train.py', '--config=' + os.path.join(
      REPO, 'configs', name)])
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
_NUMBER = r'(\d[\d,]*)'


def _stated_lengths(path):
  """(per epoch, 'exact' or 'at most', epochs, total) the docstring states."""
  text = ' '.join(helpers.load_config_module(path).__doc__.split())
  per_epoch = re.search(rf'= {_NUMBER} (?:steps|batches)|at most {_NUMBER} '
                        r'\(', text)
  total = re.search(rf'(\d+) epochs, (?:at most |about )?{_NUMBER} steps',
                    text)
  assert per_epoch and total, f'{path}: no steps per epoch and total stated'
  exact = per_epoch.group(1) is not None
  count = int((per_epoch.group(1) or per_epoch.group(2)).replace(',', ''))
  return (count, 'exact' if exact else 'at most', int(total.group(1)),
          int(total.group(2).replace(',', '')))


@pytest.mark.parametrize(
    'path', [p for p in CONFIG_FILES if 'demo' not in os.path.basename(p)],
    ids=os.path.basename)
@pytest.mark.parametrize('seed', [0, 1])
def test_docstrings_state_the_steps_on_the_real_dataset(path, seed):
  """The steps per epoch and in all that a config's docstring states are
  its sampler's on a table of the real training split's size (how its
  images spread over the identities drawn: the real split is not in the
  repository, and only the chunked sampler depends on it)."""
  config = helpers.parse_command(helpers.documented_commands(path,
                                                             'train.py')[0])
  identities, images = TRAIN_SPLITS[config.dataset.name]
  rng = np.random.default_rng(seed)
  counts = 2 + rng.multinomial(images - 2 * identities,
                               rng.dirichlet(np.ones(identities)))
  labels = np.repeat(np.arange(identities), counts)
  steps = samplers.build(config.data.sampler, labels, config.batch_size,
                         config.data.images_per_identity).steps_per_epoch
  stated, kind, epochs, total = _stated_lengths(path)
  assert epochs == config.num_epochs
  if kind == 'exact':
    assert steps == stated and total == stated * epochs
  else:
    # A chunked epoch: at most every image once, in batches.
    assert stated == images // config.batch_size and steps <= stated
    assert abs(total - steps * epochs) <= 0.15 * total
