"""Images per second of the official SA network's training step in PyTorch.

The reference for benchmarks/bench_train.py: the network of
tests/torch_reference.py (`OfficialSANet`, the official code's layers and
forward pass) trained as the official code trains it: the sum of the ten
cross-entropies (six parts, the global head, three deep-supervision heads),
SGD with momentum 0.9, Nesterov and weight decay 5e-4 (backbone at 0.1x the
heads' learning rate), bfloat16 autocast, channels_last, `torch.compile`.
Synthetic batches live on the device; CUDA when present, else the CPU.

Run from the repository root::

  .venv/bin/python benchmarks/bench_train_torch.py [--no_compile] [--json]

`OfficialSANet` is fixed to the full network at 384x128: ResNet-50 widths,
and part pooling with a (4, 8) window that only yields six stripes on a
24x8 map. Other shapes (the small CPU runs) use `ScaledSANet`, the same
layers with the widths and block counts of the flags and adaptive pooling
into six stripes (identical to the (4, 8) window on a 24x8 map).
"""

import argparse
import json
import os
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(_ROOT, 'tests'))

# pylint: disable=g-import-not-at-top,wrong-import-position
from torch_reference import OfficialSANet
from torch_reference import TorchBottleneck
from torch_reference import TorchResNet
from torch_reference import official_attention

_OFFICIAL_SHAPE = dict(image_size=(384, 128), stage_sizes=(3, 4, 6, 3),
                       base_width=64)
NUM_PARTS = 6


def int_tuple(text):
  """'384,128' -> (384, 128)."""
  return tuple(int(v) for v in text.replace('x', ',').split(',') if v)


class ScaledSANet(OfficialSANet):
  """`OfficialSANet` with other backbone widths, depths and input sizes."""

  def __init__(self, num_classes, stage_sizes, base_width, num_features=256):
    super().__init__(num_classes, num_features)
    self.base = TorchResNet(blocks=tuple(stage_sizes), last_stride=1)
    self.base.conv1 = nn.Conv2d(3, base_width, 7, 2, 3, bias=False)
    self.base.bn1 = nn.BatchNorm2d(base_width)
    in_channels = base_width
    for stage, count in enumerate(stage_sizes):
      width = base_width * 2**stage
      stride = 2 if stage in (1, 2) else 1  # last stride 1, as official.
      blocks = []
      for block in range(count):
        blocks.append(TorchBottleneck(in_channels, width,
                                      stride if block == 0 else 1))
        in_channels = width * TorchBottleneck.expansion
      setattr(self.base, f'layer{stage + 1}', nn.Sequential(*blocks))
      if stage < 3:
        setattr(self, f'local_conv_layer{stage + 1}',
                nn.Conv2d(in_channels, num_features, 1, bias=False))
    self.local_conv = nn.Conv2d(in_channels, num_features, 1, bias=False)
    self.base.fc = nn.Identity()  # Unused by the SA network.

  def forward(self, images):
    """`OfficialSANet.forward` with six adaptive stripes (any map height)."""
    layer1, layer2, layer3, layer4 = self.base.stages(images)
    ds_logits = []
    for stage, x in enumerate((layer1, layer2, layer3), start=1):
      pooled = (x * official_attention(x)).mean(dim=(2, 3), keepdim=True)
      reduced = getattr(self, f'local_conv_layer{stage}')(pooled).flatten(1)
      ds_logits.append(getattr(self, f'instance_layer{stage}')(reduced))
    parts = F.adaptive_avg_pool2d(layer4, (NUM_PARTS, 1))
    x = F.relu(self.feat_bn2d(self.local_conv(self.drop(parts))))
    part_logits = [getattr(self, f'instance{p}')(x[:, :, p, 0])
                   for p in range(NUM_PARTS)]
    return {
        'part_logits': torch.stack(part_logits, dim=1),
        'global_logits': self.instance6(x.mean(dim=(2, 3))),
        'ds_logits': torch.stack(ds_logits, dim=1),
    }


def build_network(args):
  """The official network, or its scaled copy for other shapes."""
  shape = dict(image_size=tuple(args.image_size),
               stage_sizes=tuple(args.stage_sizes),
               base_width=args.base_width)
  if shape == _OFFICIAL_SHAPE:
    return OfficialSANet(args.num_classes), 'OfficialSANet'
  return ScaledSANet(args.num_classes, args.stage_sizes,
                     args.base_width), 'ScaledSANet'


class TrainLoss(nn.Module):
  """The official objective: the plain sum of every head's cross-entropy."""

  def __init__(self, network):
    super().__init__()
    self.network = network

  def forward(self, images, labels):
    outputs = self.network(images)
    heads = [outputs['part_logits'][:, p]
             for p in range(outputs['part_logits'].shape[1])]
    heads.append(outputs['global_logits'])
    heads.extend(outputs['ds_logits'][:, i]
                 for i in range(outputs['ds_logits'].shape[1]))
    return sum(F.cross_entropy(logits.float(), labels) for logits in heads)


def make_optimizer(network):
  """SGD as the official code: heads at lr 0.1, the backbone at 0.01."""
  backbone = list(network.base.parameters())
  backbone_ids = {id(p) for p in backbone}
  heads = [p for p in network.parameters() if id(p) not in backbone_ids]
  return torch.optim.SGD([{'params': backbone, 'lr': 0.01},
                          {'params': heads, 'lr': 0.1}], lr=0.1, momentum=0.9,
                         nesterov=True, weight_decay=5e-4)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch_per_device', type=int, default=64)
  parser.add_argument('--image_size', type=int_tuple, default=(384, 128))
  parser.add_argument('--stage_sizes', type=int_tuple, default=(3, 4, 6, 3))
  parser.add_argument('--base_width', type=int, default=64)
  parser.add_argument('--num_classes', type=int, default=751)
  parser.add_argument('--dtype', choices=('bfloat16', 'float32'),
                      default='bfloat16', help='autocast dtype (float32: off)')
  parser.add_argument('--steps', type=int, default=50)
  parser.add_argument('--warmup', type=int, default=5,
                      help='untimed steps (compilation happens in the first)')
  parser.add_argument('--no_compile', action='store_true',
                      help='eager mode instead of torch.compile')
  parser.add_argument('--compile_mode', default=None,
                      help='torch.compile mode, e.g. max-autotune')
  parser.add_argument('--device', default=None,
                      help='cuda or cpu (default: cuda when available)')
  parser.add_argument('--json', action='store_true',
                      help='also print the figures as one JSON line')
  args = parser.parse_args(argv)
  if len(args.image_size) != 2 or len(args.stage_sizes) != 4:
    parser.error('--image_size needs 2 numbers, --stage_sizes 4')

  device = torch.device(args.device or (
      'cuda' if torch.cuda.is_available() else 'cpu'))
  cuda = device.type == 'cuda'
  if cuda:
    torch.backends.cudnn.benchmark = True
  # XLA's default precision on GPUs multiplies float32 in TF32 too.
  torch.set_float32_matmul_precision('high')
  torch.manual_seed(0)

  network, network_name = build_network(args)
  network = network.to(device, memory_format=torch.channels_last).train()
  optimizer = make_optimizer(network)
  loss_fn = TrainLoss(network)
  if not args.no_compile:
    loss_fn = torch.compile(loss_fn, mode=args.compile_mode)

  batch = args.batch_per_device
  images = torch.randn(batch, 3, *args.image_size, device=device).to(
      memory_format=torch.channels_last)
  labels = torch.randint(0, args.num_classes, (batch,), device=device)
  autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                            enabled=args.dtype == 'bfloat16')

  def train_step():
    optimizer.zero_grad(set_to_none=True)
    with autocast:
      loss = loss_fn(images, labels)
    loss.backward()
    optimizer.step()
    return loss

  def synchronize():
    if cuda:
      torch.cuda.synchronize(device)

  device_name = torch.cuda.get_device_name(device) if cuda else 'cpu'
  print(f'device: {device_name}; torch {torch.__version__}; {network_name}, '
        f'{args.image_size[0]}x{args.image_size[1]}, batch {batch}, '
        f'{args.dtype}, compile: {not args.no_compile}', flush=True)
  start = time.perf_counter()
  for _ in range(args.warmup):
    loss = train_step()
  synchronize()
  warmup_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(args.steps):
    loss = train_step()
  synchronize()
  seconds = time.perf_counter() - start
  loss = float(loss.detach())
  step_time = seconds / args.steps
  figures = dict(device=device_name, torch_version=torch.__version__,
                 network=network_name, compiled=not args.no_compile,
                 batch_per_device=batch, dtype=args.dtype,
                 image_size=list(args.image_size), steps=args.steps,
                 warmup=args.warmup, warmup_s=warmup_s,
                 step_ms=1e3 * step_time, images_per_s=batch / step_time,
                 loss=loss)
  print(f'warm-up ({args.warmup} steps, compilation included): '
        f'{warmup_s:.1f} s')
  print(f'train step: {figures["step_ms"]:.2f} ms, '
        f'{figures["images_per_s"]:.1f} images/s ({args.steps} steps timed; '
        f'loss {loss:.3f})')
  if args.json:
    print(json.dumps(figures))


if __name__ == '__main__':
  main()
