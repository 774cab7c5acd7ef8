"""PyTorch reference of the official RGA network, for the parity tests.

Written from the project's reference notes ("Relation-Aware Global
Attention"), NCHW, with the official checkpoint's state-dict names:
``backbone.conv1``, ``backbone.bn1``, ``backbone.layer1..4.*``,
``backbone.rga_att1..4.<part>.<index>.*`` (embeds: 0 conv, 1 BN; ``W_*``:
0 conv, 1 BN, 3 conv, 4 BN), ``feat_bn.*``, ``cls.weight``. It does not
import the code under test.
"""

import torch
from torch import nn

from torch_reference import add_stages, randomize_weights


def embed(in_channels, out_channels):
  """1x1 conv without bias -> BatchNorm -> ReLU."""
  return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                       nn.BatchNorm2d(out_channels), nn.ReLU())


def attention_head(in_channels, down_ratio):
  hidden = in_channels // down_ratio
  return nn.Sequential(nn.Conv2d(in_channels, hidden, 1, bias=False),
                       nn.BatchNorm2d(hidden), nn.ReLU(),
                       nn.Conv2d(hidden, 1, 1, bias=False), nn.BatchNorm2d(1))


def joint_relations(theta, phi):
  """theta, phi (b, k, m) -> (b, 2m, m): at node i, [R[i, :], R[:, i]].

  R[i, j] = <theta at i, phi at j>; channel j of node i is R[i, j], channel
  m + j is R[j, i].
  """
  relations = torch.bmm(theta.transpose(1, 2), phi)  # (b, m, m) = R
  return torch.cat([relations.transpose(1, 2), relations], dim=1)


class TorchRGAModule(nn.Module):
  """RGA-S and/or RGA-C (spatial first) for C channels and N positions."""

  def __init__(self, channels, positions, spatial=True, channel=True,
               channel_ratio=8, spatial_ratio=8, down_ratio=8):
    super().__init__()
    self.spatial, self.channel = spatial, channel
    # The same construction for both parts, roles swapped: (part, nodes,
    # node ratio, features per node, feature ratio).
    for part, nodes, node_ratio, features, feature_ratio in (
        ('spatial', positions, spatial_ratio, channels, channel_ratio),
        ('channel', channels, channel_ratio, positions, spatial_ratio)):
      if not (spatial if part == 'spatial' else channel):
        continue
      inter_features = features // feature_ratio
      inter_nodes = nodes // node_ratio
      setattr(self, f'gx_{part}', embed(features, inter_features))
      setattr(self, f'gg_{part}', embed(2 * nodes, inter_nodes))
      setattr(self, f'W_{part}', attention_head(1 + inter_nodes, down_ratio))
      setattr(self, f'theta_{part}', embed(features, inter_features))
      setattr(self, f'phi_{part}', embed(features, inter_features))
    self.gates = {}

  def forward(self, x):
    b, c, h, w = x.shape
    n = h * w
    self.gates = {}
    if self.spatial:
      theta = self.theta_spatial(x).view(b, -1, n)
      phi = self.phi_spatial(x).view(b, -1, n)
      joint = joint_relations(theta, phi).view(b, 2 * n, h, w)
      related = self.gg_spatial(joint)
      own = self.gx_spatial(x).mean(dim=1, keepdim=True)
      gate = torch.sigmoid(self.W_spatial(torch.cat([own, related], dim=1)))
      self.gates['spatial'] = gate[:, 0]
      x = x * gate
    if self.channel:
      # Each channel is a node whose features are its n values: (b, n, c, 1).
      nodes = x.view(b, c, n).permute(0, 2, 1).unsqueeze(-1)
      theta = self.theta_channel(nodes).squeeze(-1)  # (b, n', c)
      phi = self.phi_channel(nodes).squeeze(-1)
      related = self.gg_channel(joint_relations(theta, phi).unsqueeze(-1))
      own = self.gx_channel(nodes).mean(dim=1, keepdim=True)
      logits = self.W_channel(torch.cat([own, related], dim=1))  # (b,1,c,1)
      gate = torch.sigmoid(logits.view(b, c, 1, 1))
      self.gates['channel'] = gate[:, :, 0, 0]
      x = x * gate
    return x


class TorchRGABackbone(nn.Module):
  """ResNet-50 v1.5 with last stride 1 and rga_att1..4 after each stage."""

  def __init__(self, height, width, spatial, channel, blocks=(3, 4, 6, 3),
               base_width=64, **ratios):
    super().__init__()
    self.conv1 = nn.Conv2d(3, base_width, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(base_width)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    self.out_channels = add_stages(self, blocks, base_width, last_stride=1)
    if spatial or channel:
      # The feature maps are H/4 x W/4 after layer1, then /8, /16, /16.
      for stage, scale in enumerate((4, 8, 16, 16)):
        setattr(self, f'rga_att{stage + 1}', TorchRGAModule(
            base_width * 4 * 2**stage, (height // scale) * (width // scale),
            spatial, channel, **ratios))
    self.attention = spatial or channel

  def forward(self, x):
    x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
    gates = {}
    for stage in range(1, 5):
      x = getattr(self, f'layer{stage}')(x)
      if self.attention:
        module = getattr(self, f'rga_att{stage}')
        x = module(x)
        gates.update({f'{part}{stage}': g for part, g in module.gates.items()})
    return x, gates


class OfficialRGANet(nn.Module):
  """ResNet50_RGA_Model: backbone -> GAP (feat_) -> BN (feat) -> cls."""

  def __init__(self, num_classes, spatial=True, channel=True, height=256,
               width=128, **backbone):
    super().__init__()
    self.backbone = TorchRGABackbone(height, width, spatial, channel,
                                     **backbone)
    features = self.backbone.out_channels
    self.feat_bn = nn.BatchNorm1d(features)
    self.feat_bn.bias.requires_grad_(False)
    self.cls = nn.Linear(features, num_classes, bias=False)
    nn.init.normal_(self.cls.weight, std=0.001)

  def forward(self, images):
    x, gates = self.backbone(images)
    feat_ = x.mean(dim=(2, 3))
    feat = self.feat_bn(feat_)
    return {'feat_': feat_, 'feat': feat, 'logits': self.cls(feat),
            'gates': gates}


def calibrate_in_eval_mode(model, images, generator):
  """Draws every BN's running statistics around the eval-mode activations.

  `torch_reference.randomize` calibrates in train mode and then perturbs
  every statistic; that is harmless for a ResNet, but RGA's relation
  matrices are quadratic in the activations and its gates are sigmoids, so
  the perturbations compound through four modules until gates saturate at 0
  or 1 (a network whose outputs ignore whole modules tests little). Here
  each BN, in forward order and in eval mode, takes the statistics of what
  actually reaches it (with the upstream perturbations) and perturbs them:
  mean + 0.2 std N(0, 1), variance x U(0.6, 1.6).
  """

  def set_statistics(module, inputs):
    x = inputs[0].detach()
    dims = [d for d in range(x.ndim) if d != 1]
    mean, var = x.mean(dim=dims), x.var(dim=dims)
    std = var.sqrt()
    module.running_mean.copy_(mean + 0.2 * std * torch.randn(
        std.shape, generator=generator))
    module.running_var.copy_(var * torch.empty_like(var).uniform_(
        0.6, 1.6, generator=generator))

  batch_norms = [m for m in model.modules()
                 if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
  handles = [bn.register_forward_pre_hook(set_statistics)
             for bn in batch_norms]
  model.eval()
  with torch.no_grad():
    model(images)
  for handle in handles:
    handle.remove()
  return model


def random_official_checkpoint(path, num_classes, calibration_images,
                               spatial=True, channel=True, seed=0, epoch=600,
                               best_top1=0.8, **backbone):
  """An `OfficialRGANet` with random weights and BN statistics, saved.

  Weights are drawn by `torch_reference.randomize_weights`, running
  statistics by `calibrate_in_eval_mode` on `calibration_images` (B, 3, H,
  W), whose size is the network's input size. The file is the official
  ``{'state_dict', 'epoch', 'best_top1'}``.

  Returns:
    the model, in eval mode.
  """
  height, width = calibration_images.shape[2:]
  torch.manual_seed(seed)
  model = OfficialRGANet(num_classes, spatial, channel, height, width,
                         **backbone)
  generator = torch.Generator().manual_seed(seed + 1)
  randomize_weights(model, generator)
  calibrate_in_eval_mode(model, calibration_images, generator)
  torch.save({'state_dict': model.state_dict(), 'epoch': epoch,
              'best_top1': best_top1}, path)
  return model
