"""Weight-file reading and conversion errors (no full forward passes here)."""

import os
import pickle

import helpers
import numpy as np
import pytest
import torch

from sa_reid_jax.convert import ConversionError, convert_checkpoint
from sa_reid_jax.convert import read_weights
from torch_reference import OfficialSANet


class PlantsAFile:
  """Unpickling this object would run `touch` on the marker path."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


@pytest.fixture(scope='module')
def official_state():
  torch.manual_seed(0)
  return OfficialSANet(num_classes=9).state_dict()


@pytest.mark.parametrize('writer', ['torch_zip', 'torch_legacy', 'pickle'])
def test_malicious_pickle_is_refused_not_executed(tmp_path, cli, writer):
  marker = tmp_path / 'executed'
  payload = {'state_dict': {'w': torch.zeros(2)},
             'extra': PlantsAFile(marker)}
  path = tmp_path / 'evil.pth'
  if writer == 'pickle':
    with open(path, 'wb') as f:
      pickle.dump(payload, f, protocol=2)
  else:
    torch.save(payload, path,
               _use_new_zipfile_serialization=writer == 'torch_zip')

  with pytest.raises(ConversionError, match='evil.pth: refused'):
    read_weights(str(path))
  result = cli('convert_weights.py', '--format=sa_official',
               f'--input={path}', f'--output={tmp_path / "out"}')
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  assert 'evil.pth: refused' in result.stderr
  assert not marker.exists()
  assert not (tmp_path / 'out').exists()


def test_every_problem_is_listed_in_one_message(tmp_path, official_state):
  state = dict(official_state)
  del state['base.layer2.1.conv2.weight']
  del state['instance_layer3.bias']
  state['base.layer5.0.conv1.weight'] = torch.zeros(3)
  state['local_conv.weight'] = torch.zeros(256, 2048, 3, 3)
  path = tmp_path / 'broken.pth.tar'
  torch.save({'state_dict': state}, path)
  with pytest.raises(ConversionError) as error:
    convert_checkpoint('sa_official', str(path), str(tmp_path / 'out'))
  message = str(error.value)
  assert '2 missing keys' in message
  assert 'base.layer2.1.conv2.weight' in message
  assert 'instance_layer3.bias' in message
  assert '1 unexpected keys' in message
  assert 'base.layer5.0.conv1.weight' in message
  assert ('local_conv.weight: file has (256, 2048, 3, 3), model needs '
          '(256, 2048, 1, 1)') in message
  assert not (tmp_path / 'out').exists()


def test_data_parallel_prefix_and_npz_without_torch(tmp_path, official_state):
  state = {f'module.{k}': v.numpy() for k, v in official_state.items()}
  path = tmp_path / 'weights.npz'
  np.savez(path, **state)
  read, metadata = read_weights(str(path))
  assert set(read) == set(official_state)
  assert metadata == {}
  assert read['instance0.weight'].dtype == np.float32


def test_wrong_format_for_the_file(tmp_path, official_state):
  path = tmp_path / 'official.pth.tar'
  torch.save({'state_dict': official_state}, path)
  # A file of another known format names the --format to use (its keys,
  # hundreds of them, are not listed).
  with pytest.raises(ConversionError, match='official SA code, not a '
                     'torchvision ResNet state dict .*: use '
                     '--format=sa_official$'):
    convert_checkpoint('torchvision', str(path), str(tmp_path / 'out'))

  resnet_only = {k[len('base.'):]: v for k, v in official_state.items()
                 if k.startswith('base.')}
  torch.save(resnet_only, tmp_path / 'resnet.pth')
  with pytest.raises(ConversionError, match='use --format=torchvision$'):
    convert_checkpoint('sa_official', str(tmp_path / 'resnet.pth'),
                       str(tmp_path / 'out'))
  # Neither layout: the classifier the official format needs is named.
  del resnet_only['conv1.weight']
  torch.save(resnet_only, tmp_path / 'partial.pth')
  with pytest.raises(ConversionError, match='no "instance0.weight"'):
    convert_checkpoint('sa_official', str(tmp_path / 'partial.pth'),
                       str(tmp_path / 'out'))


def test_num_classes_must_agree_with_an_official_file(tmp_path,
                                                      official_state):
  path = tmp_path / 'official.pth.tar'
  torch.save({'state_dict': official_state}, path)
  with pytest.raises(ConversionError, match='--num_classes=751 disagrees'):
    convert_checkpoint('sa_official', str(path), str(tmp_path / 'out'),
                       num_classes=751)


@pytest.mark.parametrize('args, message', [
    (['--format=sa_official', '--input=/no/such/file.pth', '--output=x'],
     '/no/such/file.pth: no such file'),
    (['--format=keras', '--input=a', '--output=b'], 'format'),
    (['--format=torchvision', '--input=a'], 'output'),
])
def test_cli_errors_are_one_clear_line(cli, args, message):
  result = cli('convert_weights.py', *args)
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr
  assert message in result.stderr


def test_convert_weights_py_error_in_a_real_process_is_one_line(tmp_path):
  # What a user's terminal shows: the error alone, without TensorFlow's
  # start-up notices (which some CPUs print whatever TF_CPP_MIN_LOG_LEVEL
  # says) or a traceback.
  missing = tmp_path / 'missing.pth'
  result = helpers.run_as_user('convert_weights.py', '--format=sa_official',
                               f'--input={missing}',
                               f'--output={tmp_path / "out"}')
  assert result.returncode == 1
  assert result.stderr.splitlines() == [
      f'convert_weights.py: error: --input: {missing}: no such file'
  ], result.stderr
  assert not (tmp_path / 'out').exists()


def test_existing_output_is_not_overwritten(tmp_path):
  (tmp_path / 'out').mkdir()
  weights = tmp_path / 'w.npz'
  np.savez(weights, a=np.zeros(1))
  with pytest.raises(ConversionError, match='^--output: .*out already exists; '
                     'choose another --output, or --overwrite to replace it$'):
    convert_checkpoint('torchvision', str(weights), str(tmp_path / 'out'))


def test_a_directory_given_as_input_is_named(tmp_path):
  (tmp_path / 'model').mkdir()
  with pytest.raises(ConversionError, match='^--input: .*model is a '
                     'directory; give the weights file'):
    convert_checkpoint('torchvision', str(tmp_path / 'model'),
                       str(tmp_path / 'out'))


def test_unreadable_files(tmp_path):
  garbage = tmp_path / 'garbage.safetensors'
  garbage.write_bytes(b'not a safetensors file')
  with pytest.raises(ConversionError, match='garbage.safetensors: not a '
                     'readable safetensors file'):
    read_weights(str(garbage))
  garbage_pth = tmp_path / 'garbage.pth'
  garbage_pth.write_bytes(b'\x00\x01 not a torch file')
  with pytest.raises(ConversionError, match='garbage.pth: not a PyTorch '
                     r'file \(neither the zip archive of torch.save nor a '
                     r'pickle\)'):
    read_weights(str(garbage_pth))
  text = tmp_path / 'notes.pth'
  text.write_text('not weights at all')
  with pytest.raises(ConversionError, match='notes.pth: not a PyTorch file'):
    read_weights(str(text))
  objects = tmp_path / 'objects.npz'
  np.savez(objects, a=np.array([{'x': 1}], dtype=object))
  with pytest.raises(ConversionError, match='objects.npz'):
    read_weights(str(objects))
