"""PyTorch references for the parity tests.

`TorchResNet` reproduces torchvision's ResNet-50 (v1.5) with its state-dict
names; `OfficialSANet` reproduces the official SA network with the official
checkpoint's names and its forward pass as described in the project's
reference notes (channel-mean / sum attention on the DS branches, 6 stripes,
per-part L2-normalised descriptor, summed heads). Neither imports the code
under test.
"""

import torch
from torch import nn
from torch.nn import functional as F


class TorchBottleneck(nn.Module):
  expansion = 4

  def __init__(self, in_channels, width, stride):
    super().__init__()
    out_channels = width * self.expansion
    self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(width)
    self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(out_channels)
    self.downsample = None
    if stride != 1 or in_channels != out_channels:
      self.downsample = nn.Sequential(
          nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
          nn.BatchNorm2d(out_channels))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    shortcut = x if self.downsample is None else self.downsample(x)
    return F.relu(y + shortcut)


def add_stages(module, blocks, base_width, last_stride):
  """Gives `module` torchvision's layer1..layer4; returns their output width."""
  in_channels = base_width
  for stage, count in enumerate(blocks):
    width = base_width * 2**stage
    first_stride = 1 if stage == 0 else (last_stride if stage == 3 else 2)
    layers = []
    for block in range(count):
      layers.append(TorchBottleneck(in_channels, width,
                                    first_stride if block == 0 else 1))
      in_channels = width * 4
    setattr(module, f'layer{stage + 1}', nn.Sequential(*layers))
  return in_channels


class TorchResNet(nn.Module):
  """torchvision's resnet50 layout; `last_stride` as in re-id networks.

  `blocks` and `base_width` (64 in ResNet-50) give narrower test networks of
  the same layout and names.
  """

  def __init__(self, blocks=(3, 4, 6, 3), last_stride=2, num_classes=1000,
               base_width=64):
    super().__init__()
    self.conv1 = nn.Conv2d(3, base_width, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(base_width)
    self.relu = nn.ReLU()
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    in_channels = add_stages(self, blocks, base_width, last_stride)
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(in_channels, num_classes)

  def stages(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    outputs = []
    for name in ('layer1', 'layer2', 'layer3', 'layer4'):
      x = getattr(self, name)(x)
      outputs.append(x)
    return outputs

  def forward(self, x):
    return self.fc(torch.flatten(self.avgpool(self.stages(x)[-1]), 1))


def official_attention(x):
  """Channel mean divided by its sum over all positions: (B, 1, H, W)."""
  mean = x.mean(dim=1, keepdim=True)
  return mean / mean.sum(dim=(2, 3), keepdim=True)


class OfficialSANet(nn.Module):
  """The official network (6 parts), with the official checkpoint's names.

  The defaults are the official sizes (ResNet-50, 256 reduced features);
  `blocks`, `base_width` and `num_features` give a narrow network of the
  same layout.
  """

  def __init__(self, num_classes, num_features=256, dropout=0.5,
               blocks=(3, 4, 6, 3), base_width=64):
    super().__init__()
    self.base = TorchResNet(blocks, last_stride=1, base_width=base_width)
    self.local_conv = nn.Conv2d(32 * base_width, num_features, 1, bias=False)
    for stage, channels in enumerate(
        (4 * base_width, 8 * base_width, 16 * base_width), start=1):
      setattr(self, f'local_conv_layer{stage}',
              nn.Conv2d(channels, num_features, 1, bias=False))
      setattr(self, f'instance_layer{stage}',
              nn.Linear(num_features, num_classes))
    self.feat_bn2d = nn.BatchNorm2d(num_features)
    for part in range(7):  # 0..5 parts, 6 global
      setattr(self, f'instance{part}', nn.Linear(num_features, num_classes))
    self.fusion_conv = nn.Conv1d(4, 1, 1, bias=False)  # unused
    self.drop = nn.Dropout(dropout)

  def forward(self, images):
    layer1, layer2, layer3, layer4 = self.base.stages(images)
    ds_logits, attention = [], []
    for stage, x in enumerate((layer1, layer2, layer3), start=1):
      weights = official_attention(x)
      attention.append(weights[:, 0])
      pooled = (x * weights).mean(dim=(2, 3), keepdim=True)
      reduced = getattr(self, f'local_conv_layer{stage}')(pooled).flatten(1)
      ds_logits.append(getattr(self, f'instance_layer{stage}')(reduced))
    # Six stripes of whole rows: the official (4, 8) kernel on the 24x8 map
    # of a 384x128 image.
    height, width = layer4.shape[2:]
    stripe = (height // 6, width)
    parts = F.avg_pool2d(layer4, kernel_size=stripe, stride=stripe)
    features = parts / parts.norm(2, dim=1, keepdim=True)
    x = F.relu(self.feat_bn2d(self.local_conv(self.drop(parts))))
    part_logits = [getattr(self, f'instance{p}')(x[:, :, p, 0])
                   for p in range(6)]
    global_logits = self.instance6(x.mean(dim=(2, 3)))
    return {
        'features': features[..., 0].permute(0, 2, 1),
        'part_logits': torch.stack(part_logits, dim=1),
        'global_logits': global_logits,
        'ds_logits': torch.stack(ds_logits, dim=1),
        'attention': attention,
    }


def to_nhwc(images):
  """A PyTorch NCHW image batch as a NumPy NHWC array (what JAX takes)."""
  return images.permute(0, 2, 3, 1).numpy()


def randomize_weights(model, generator):
  """He-normal convolutions, BN affine parameters around (1, 0), N(0, 0.02)
  linear layers, drawn from `generator`."""
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, (nn.Conv2d, nn.Conv1d)):
        fan_out = module.weight.shape[0] * module.weight[0, 0].numel()
        module.weight.normal_(0, (2.0 / fan_out)**0.5, generator=generator)
      elif isinstance(module, nn.Linear):
        module.weight.normal_(0, 0.02, generator=generator)
        if module.bias is not None:
          module.bias.normal_(0, 0.02, generator=generator)
      elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        module.weight.uniform_(0.5, 1.5, generator=generator)
        module.bias.normal_(0, 0.1, generator=generator)


def randomize(model, calibration_images, seed=0):
  """Gives `model` random non-trivial weights and BN running statistics.

  Convolutions get He-normal weights, BN affine parameters are drawn around
  (1, 0), linear layers get N(0, 0.02). Running statistics are first set to
  the statistics of `calibration_images` (so that activations stay in a sane
  range through 50 layers) and then perturbed, so that mean != 0 and var != 1
  everywhere: a transposed or misplaced statistic cannot go unnoticed.
  """
  generator = torch.Generator().manual_seed(seed)
  randomize_weights(model, generator)
  with torch.no_grad():
    batch_norms = [m for m in model.modules()
                   if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    for bn in batch_norms:
      bn.momentum = 1.0
    model.train()
    model(calibration_images)
    for bn in batch_norms:
      bn.momentum = 0.1
      std = bn.running_var.sqrt()
      bn.running_mean.add_(0.2 * std * torch.randn(
          std.shape, generator=generator))
      bn.running_var.mul_(torch.empty_like(std).uniform_(
          0.6, 1.6, generator=generator))
  model.eval()
  return model
