"""Reading weight files into flat {name: float32 numpy array} dicts.

PyTorch files (zip format and the legacy pre-1.6 format) are read with
``torch.load(weights_only=True)``: a file whose unpickling would run arbitrary
code is refused, never executed. ``.safetensors`` and ``.npz`` files are read
without PyTorch.
"""

import os
import pickle
from typing import Any
import zipfile

import numpy as np

# Checkpoint-level entries kept as provenance when a file wraps its
# state dict, as the official code does ({'state_dict', 'epoch', 'best_top1'}).
_METADATA_KEYS = ('epoch', 'best_top1')


class ConversionError(ValueError):
  """A weight file cannot be read or does not match the model."""


def _read_torch(path: str) -> Any:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise ConversionError(
        f'{path}: reading PyTorch files needs PyTorch; install it with '
        "`pip install 'sa-reid-jax[convert]'` (or convert the file to "
        '.safetensors / .npz elsewhere)') from error
  try:
    with open(path, 'rb') as file:
      head = file.read(2)
  except OSError as error:
    raise ConversionError(f'{path}: not a readable PyTorch file: '
                          f'{error.strerror}') from error
  # torch.save writes a zip archive ('PK'); files of PyTorch < 1.6 are a
  # pickle (protocol byte 0x80). Anything else would otherwise reach the
  # unpickler and be reported as unsafe rather than as not a PyTorch file.
  if not (head == b'PK' or head[:1] == b'\x80'):
    raise ConversionError(f'{path}: not a PyTorch file (neither the zip '
                          'archive of torch.save nor a pickle)')
  try:
    return torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as error:
    reason = str(error).strip().splitlines()
    detail = next((line for line in reason if 'Unsupported' in line or
                   'GLOBAL' in line), reason[0] if reason else '')
    raise ConversionError(
        f'{path}: refused: unpickling this file would run code or build '
        'objects other than tensors and plain containers, and it is loaded '
        f'with weights_only=True ({detail.strip()})') from error
  except (RuntimeError, EOFError, OSError) as error:
    raise ConversionError(f'{path}: not a readable PyTorch file: '
                          f'{str(error).strip().splitlines()[0]}') from error


def _tensor_to_numpy(name: str, value: Any, path: str) -> np.ndarray:
  if isinstance(value, np.ndarray):
    array = value
  elif hasattr(value, 'detach'):  # a torch.Tensor
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()  # bfloat16/float16 have no exact numpy twin here
    array = value.numpy()
  else:
    raise ConversionError(f'{path}: entry {name!r} is a '
                          f'{type(value).__name__}, not a tensor')
  if np.issubdtype(array.dtype, np.floating):
    array = array.astype(np.float32)
  return array


def _unwrap(obj: Any, path: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """Finds the state dict inside a loaded object; returns (state, metadata)."""
  if not isinstance(obj, dict):
    raise ConversionError(f'{path}: expected a dict of tensors, found a '
                          f'{type(obj).__name__}')
  metadata = {}
  if 'state_dict' in obj and isinstance(obj['state_dict'], dict):
    for key in _METADATA_KEYS:
      if key in obj:
        value = obj[key]
        metadata[key] = value.item() if hasattr(value, 'item') else value
    obj = obj['state_dict']
  return obj, metadata


def read_weights(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Reads a weight file.

  Args:
    path: ``.pth``/``.pth.tar``/``.pt`` (PyTorch, zip or legacy format),
      ``.safetensors`` or ``.npz``. A PyTorch file may hold the state dict
      itself or a dict with a ``state_dict`` entry.

  Returns:
    (state, metadata): tensor name -> numpy array (floating point as
    float32), and provenance found beside the state dict (epoch, best_top1).

  Raises:
    ConversionError: a missing, unreadable or truncated file, a file that
      needs arbitrary code to unpickle, or a ``.safetensors`` file without
      the safetensors package (the ``convert`` extra) installed.
  """
  if os.path.isdir(path):
    raise ConversionError(
        f'--input: {path} is a directory; give the weights file (a .pth, '
        '.pth.tar, .npz or .safetensors state dict); a model directory '
        'this project wrote is already converted')
  if not os.path.isfile(path):
    raise ConversionError(f'--input: {path}: no such file')
  lower = path.lower()
  if lower.endswith('.safetensors'):
    try:
      # pylint: disable=g-import-not-at-top
      from safetensors import SafetensorError
      from safetensors.numpy import load_file
      # pylint: enable=g-import-not-at-top
    except ImportError as error:
      raise ConversionError(
          f'{path}: reading .safetensors files needs the safetensors '
          f'package ({error.name or "safetensors"} is missing); install it '
          "with `pip install 'sa-reid-jax[convert]'`") from error
    try:
      raw, metadata = load_file(path), {}
    except (SafetensorError, OSError, ValueError) as error:
      raise ConversionError(f'{path}: not a readable safetensors file: '
                            f'{error}') from error
  elif lower.endswith('.npz'):
    try:
      with np.load(path, allow_pickle=False) as archive:
        raw = {name: archive[name] for name in archive.files}
    except ValueError as error:
      raise ConversionError(f'{path}: not a readable .npz file (object '
                            f'arrays are refused): {error}') from error
    except (OSError, EOFError, zipfile.BadZipFile) as error:
      # A truncated or damaged archive (e.g. an interrupted download).
      raise ConversionError(f'{path}: not a readable .npz file (truncated '
                            f'or damaged?): {error}') from error
    metadata = {}
  else:
    raw, metadata = _unwrap(_read_torch(path), path)
  # nn.DataParallel prefixes every name with "module.".
  prefix = 'module.' if raw and all(k.startswith('module.') for k in raw) else ''
  state = {name[len(prefix):]: _tensor_to_numpy(name, value, path)
           for name, value in raw.items()}
  return state, metadata
