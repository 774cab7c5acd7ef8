"""Every documented training command starts from a converted ImageNet backbone.

The commands are the ``python train.py`` lines of the configs' docstrings
(every config file and each of its documented variants). The ImageNet
backbone is made as the README says: ``convert_weights.py
--format=torchvision`` of a torchvision-layout ResNet-50 state dict, here
with random weights (ImageNet's cannot be had). Three checks, from cheap to
costly:

1. every command's config, as written, passes the start-up validation
   (`validation.check_config`: dataset name, batch and sampler, losses,
   task, ...);
2. every distinct network of those commands takes the converted ResNet-50
   through ``config.init_from`` as the trainer loads it: all its tensors
   loaded, exactly the family's own modules left fresh (traced abstractly:
   nothing is compiled);
3. one command per network family runs as written from a directory
   holding ``configs/`` and the converted ``models/imagenet``, with
   stand-in flags appended: the synthetic dataset folder, one step, a batch
   of 8 and, where the network allows, 128x64 images. The full ResNet-50
   stays (the backbone must fit it); the small images keep a run within
   about a minute. What differs between the recipes of a family
   (optimiser, schedule, augmentation, sampler, head) is trained at small
   size by the families' own tests, and each recipe's image size is
   checked in tests/test_configs.py.
"""

import os

import jax
import pytest
import torch

import helpers
from torch_reference import TorchResNet
from sa_reid_jax.models import registry
from sa_reid_jax.models import resnet as resnet_lib
from sa_reid_jax.training import defaults
from sa_reid_jax.training import optimizer as optimizer_lib
from sa_reid_jax.training import run as run_lib
from sa_reid_jax.training import step as step_lib
from sa_reid_jax.training import validation

pytestmark = pytest.mark.full

CONFIG_FILES = helpers.CONFIG_FILES
# (config file name, argv) of every documented train.py command.
COMMANDS = [(os.path.basename(path), argv) for path in CONFIG_FILES
            for argv in helpers.documented_commands(path, 'train.py')]
# One command per network family (and CASN's PCB head, the one CASN's
# recipes train on every dataset) for check 3, with the image size it runs
# at: 128x64 leaves PCB's six stripes 8 rows (last stride 1); RGA's modules
# need the official 256x128 (at 128x64 layer4's spatial head would have no
# channels). CASN's IDE head takes the backbone in check 2 and trains at
# small size in tests/test_casn_training.py: a full-size run of it costs
# about a minute more of the full tier.
RUNS = {'sa:market1501': '128,64', 'rga:market1501': '256,128',
        'rga:market1501,baseline': '128,64', 'casn:market1501': '128,64'}
# The other stand-ins of check 3. Batch 8 holds P >= 2 identities under
# every recipe's K (4 for RGA and the BNNeck baseline, 2 for CASN), as the
# siamese terms need.
STAND_INS = ('--config.max_steps=1', '--config.batch_size=8')
# Classes of the abstract networks of check 2: any count builds the same
# backbone.
NUM_CLASSES = 10


def _command_id(command):
  name, argv = command
  variant = argv[1].partition(':')[2]
  return name[:-3] + (f':{variant}' if variant else '')


@pytest.fixture(scope='module')
def imagenet(tmp_path_factory):
  """(root, torchvision tensor count): ``root`` holds the repository's
  ``configs/`` and the torchvision state dict; `converted` makes
  ``root/models/imagenet`` from it."""
  root = tmp_path_factory.mktemp('documented')
  os.symlink(os.path.join(helpers.REPO, 'configs'), root / 'configs')
  torch.manual_seed(0)
  state = TorchResNet(last_stride=2).state_dict()
  torch.save(state, root / 'resnet50-19c8e357.pth')
  # Everything but the ImageNet classifier and the batch counters must
  # reach the network.
  count = sum(not key.startswith('fc.') and
              not key.endswith('num_batches_tracked') for key in state)
  return root, count


@pytest.fixture
def converted(imagenet, cli):
  """`imagenet`, with ``models/imagenet`` converted by the README's command
  (once per test process)."""
  root, count = imagenet
  if not (root / 'models' / 'imagenet').exists():
    result = cli('convert_weights.py', '--format=torchvision',
                 '--input=resnet50-19c8e357.pth', '--output=models/imagenet',
                 cwd=str(root))
    assert result.returncode == 0, result.stderr
  return root, count


@pytest.mark.parametrize('command', COMMANDS, ids=_command_id)
def test_documented_config_passes_the_start_up_checks(command):
  validation.check_config(helpers.parse_command(command[1]))


def _networks():
  """{the first command id of each distinct network: its config}."""
  first = {}
  for command in COMMANDS:
    config = helpers.parse_command(command[1])
    if config.init_from != defaults.SCRATCH:
      key = (config.model.to_json(), tuple(config.image_size))
      first.setdefault(key, (_command_id(command), config))
  return dict(first.values())


def test_every_documented_network_takes_the_converted_backbone(converted):
  root, count = converted
  directory = str(root / 'models' / 'imagenet')
  networks = _networks()
  # Each family at least, and the SA ablation's networks.
  assert len(networks) >= 10, sorted(networks)
  for name, config in networks.items():
    model = step_lib.build_model(config, NUM_CLASSES)
    optimizer = optimizer_lib.make_optimizer(
        config.optimizer, steps_per_epoch=10,
        frozen=lambda params, model=model: registry.frozen_mask(model, params))
    # The trainer's fresh state, abstract (np.shape reads the shapes), with
    # the backbone loaded as the trainer loads it.
    state = jax.eval_shape(lambda model=model, optimizer=optimizer,
                           config=config: step_lib.create_train_state(
                               model, optimizer, 0, tuple(config.image_size)))
    state, line = run_lib._with_pretrained_backbone(state, directory)  # pylint: disable=protected-access
    backbone = state.params['backbone']
    own = sorted(f'backbone/{group}' for group in backbone
                 if not resnet_lib.is_resnet_group(group))
    outside = sorted(group for group in state.params if group != 'backbone')
    assert line == (
        f'init_from {directory}: loaded {count} ResNet tensors (parameters '
        'and BatchNorm statistics); fresh: ' + ', '.join(own + outside)), name


# Compiled optimised: XLA's optimisations cost less compile time than they
# save on a full ResNet-50 (a CASN IDE run: 50 s instead of 117 s).
@pytest.mark.optimized
@pytest.mark.parametrize('name', RUNS)
def test_documented_command_trains_a_step(name, converted, cli,
                                          synthetic_dataset):
  root, count = converted
  argv = next(argv for file, argv in COMMANDS
              if _command_id((file, argv)) == name)
  data = synthetic_dataset(num_ids=4, num_test_ids=2, seed=0)
  result = cli('train.py', *argv[1:], f'--config.dataset.folder={data}',
               *STAND_INS, f'--config.image_size={RUNS[name]}', cwd=str(root))
  assert result.returncode == 0, result.stderr[-3000:]
  workdir = root / [a for a in argv if a.startswith('--workdir=')][0][10:]
  assert helpers.finalized_steps(workdir) == [1]
  lines = [line for line in result.stdout.splitlines()
           if line.startswith('init_from ')]
  assert len(lines) == 1 and (
      f'loaded {count} ResNet tensors (parameters and BatchNorm statistics)'
      in lines[0]), result.stdout
