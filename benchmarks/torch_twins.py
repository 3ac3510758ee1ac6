"""PyTorch twins of every `incres.models` network, for benchmarks/throughput.py's `--vs_torch`.

Each twin has the same architecture, parameter count and FLOPs as the JAX model of the same name,
so the two frameworks run the same arithmetic:
- ImageNet ResNets with shortcuts: torchvision's `resnet*`, with the bottleneck stride moved from
  the 3x3 to the first 1x1 conv (incres's default is the paper's "v1"; torchvision's is "v1.5").
- Plain and CIFAR ResNets (option A shortcuts: subsample, append zero channels): `ResNetTwin`,
  since torchvision has neither.
- `GoogLeNetBN`: torchvision's `googlenet` (incres's variant copies its structure).
- `GoogLeNet` (the paper's, with real 5x5 convs, LRN, biases, no BN) and the 32-pixel variants:
  `GoogLeNetTwin`, since torchvision's differs from the paper.
Only the architecture matters here (the benchmark never compares outputs), so initialisation is
left at PyTorch's defaults.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from incres.models.googlenet import AUX_AFTER, POOL_AFTER, TABLE1, InceptionRow

# ---------------------------------------------------------------------------------------- ResNet


class _Shortcut(nn.Module):
  """Option A (parameter-free) or B/C (1x1 conv + BN) shortcut, or none for plain nets."""

  def __init__(self, cin: int, cout: int, stride: int, option: str):
    super().__init__()
    self.cout, self.stride = cout, stride
    self.proj = None
    if option == "C" or (option == "B" and (stride > 1 or cin != cout)):
      self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.proj is not None:
      return self.proj(x)
    if self.stride > 1:
      x = x[:, :, :: self.stride, :: self.stride]
    if x.shape[1] < self.cout:
      x = F.pad(x, (0, 0, 0, 0, 0, self.cout - x.shape[1]))
    return x


class _Basic(nn.Module):
  expansion = 1

  def __init__(self, cin, filters, stride, option, residual, stride_in_1x1=True):
    super().__init__()
    del stride_in_1x1
    self.body = nn.Sequential(
        nn.Conv2d(cin, filters, 3, stride, 1, bias=False),
        nn.BatchNorm2d(filters),
        nn.ReLU(inplace=True),
        nn.Conv2d(filters, filters, 3, 1, 1, bias=False),
        nn.BatchNorm2d(filters),
    )
    self.shortcut = _Shortcut(cin, filters, stride, option) if residual else None

  def forward(self, x):
    y = self.body(x)
    return F.relu(y + self.shortcut(x) if self.shortcut is not None else y)


class _Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin, filters, stride, option, residual, stride_in_1x1=True):
    super().__init__()
    s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
    self.body = nn.Sequential(
        nn.Conv2d(cin, filters, 1, s1, bias=False),
        nn.BatchNorm2d(filters),
        nn.ReLU(inplace=True),
        nn.Conv2d(filters, filters, 3, s3, 1, bias=False),
        nn.BatchNorm2d(filters),
        nn.ReLU(inplace=True),
        nn.Conv2d(filters, 4 * filters, 1, bias=False),
        nn.BatchNorm2d(4 * filters),
    )
    self.shortcut = _Shortcut(cin, 4 * filters, stride, option) if residual else None

  def forward(self, x):
    y = self.body(x)
    return F.relu(y + self.shortcut(x) if self.shortcut is not None else y)


class ResNetTwin(nn.Module):
  """`incres.models.ResNet` in torch: same stage table, stems, shortcut options and plain twins."""

  def __init__(
      self,
      stage_sizes: Sequence[int],
      bottleneck: bool,
      num_classes: int = 1000,
      width: int = 64,
      stem: str = "imagenet",
      shortcut: str = "B",
      residual: bool = True,
      stride_in_1x1: bool = True,
  ):
    super().__init__()
    block = _Bottleneck if bottleneck else _Basic
    if stem == "imagenet":
      layers = [
          nn.Conv2d(3, width, 7, 2, 3, bias=False),
          nn.BatchNorm2d(width),
          nn.ReLU(inplace=True),
          nn.MaxPool2d(3, 2, 1),
      ]
    else:
      layers = [
          nn.Conv2d(3, width, 3, 1, 1, bias=False),
          nn.BatchNorm2d(width),
          nn.ReLU(inplace=True),
      ]
    cin = width
    for i, n in enumerate(stage_sizes):
      for j in range(n):
        stride = 2 if i > 0 and j == 0 else 1
        layers.append(block(cin, width * 2**i, stride, shortcut, residual, stride_in_1x1))
        cin = width * 2**i * block.expansion
    self.features = nn.Sequential(*layers)
    self.head = nn.Linear(cin, num_classes)

  def forward(self, x):
    return self.head(self.features(x).mean((2, 3)))


def _torchvision_resnet_v1(name: str, num_classes: int) -> nn.Module:
  """torchvision's ResNet with the bottleneck stride on the first 1x1 conv (the paper's v1)."""
  model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
  for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
    for blk in stage:
      if isinstance(blk, torchvision.models.resnet.Bottleneck) and blk.conv2.stride != (1, 1):
        blk.conv1.stride, blk.conv2.stride = blk.conv2.stride, (1, 1)
  return model


# ------------------------------------------------------------------------------------- GoogLeNet


def _max_pool_ceil(window: int, stride: int, pad: int = 0) -> nn.MaxPool2d:
  return nn.MaxPool2d(window, stride, pad, ceil_mode=True)


class _Unit(nn.Sequential):
  """conv -> (BN) -> ReLU with k // 2 padding, as incres's `ConvUnit`."""

  def __init__(self, cin: int, cout: int, k: int, stride: int = 1, batch_norm: bool = False):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=not batch_norm)]
    if batch_norm:
      layers.append(nn.BatchNorm2d(cout, eps=1e-3))
    super().__init__(*layers, nn.ReLU(inplace=True))


class _Inception(nn.Module):

  def __init__(self, cin: int, r: InceptionRow, k5: int, bn: bool):
    super().__init__()
    self.b1 = _Unit(cin, r.c1, 1, batch_norm=bn)
    self.b3 = nn.Sequential(
        _Unit(cin, r.c3_reduce, 1, batch_norm=bn), _Unit(r.c3_reduce, r.c3, 3, batch_norm=bn)
    )
    self.b5 = nn.Sequential(
        _Unit(cin, r.c5_reduce, 1, batch_norm=bn), _Unit(r.c5_reduce, r.c5, k5, batch_norm=bn)
    )
    self.b4 = nn.Sequential(_max_pool_ceil(3, 1, 1), _Unit(cin, r.pool_proj, 1, batch_norm=bn))

  def forward(self, x):
    return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.b4(x)], 1)


class _AuxHead(nn.Module):

  def __init__(self, cin: int, num_classes: int, fc_in: int, adaptive: bool, bn: bool):
    super().__init__()
    self.pool = nn.AdaptiveAvgPool2d(4) if adaptive else nn.AvgPool2d(5, 3)
    self.conv = _Unit(cin, 128, 1, batch_norm=bn)
    self.fc1 = nn.Linear(fc_in, 1024)
    self.fc2 = nn.Linear(1024, num_classes)

  def forward(self, x):
    x = torch.flatten(self.conv(self.pool(x)), 1)
    return self.fc2(F.dropout(F.relu(self.fc1(x)), 0.7, self.training))


class GoogLeNetTwin(nn.Module):
  """`incres.models.GoogLeNet` in torch: the paper's network (real 5x5 convs, LRN) or its variants.

  Returns `(logits, aux_logits)` in training and `logits` in eval, like torchvision's.
  """

  def __init__(
      self,
      num_classes: int = 1000,
      stem: str = "imagenet",
      batch_norm: bool = False,
      lrn: bool = True,
      branch5_kernel: int = 5,
      pool4_window: int = 3,
      dropout_rate: float = 0.4,
      aux_adaptive_pool: bool = False,
  ):
    super().__init__()
    bn = batch_norm
    # Caffe's LRN, which torch's LocalResponseNorm matches (alpha divided by the window size).
    norm = (lambda: nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0)) if lrn else nn.Identity
    if stem == "imagenet":
      stem_layers = [_Unit(3, 64, 7, 2, bn), _max_pool_ceil(3, 2)]
    else:
      stem_layers = [_Unit(3, 64, 3, 1, bn)]
    self.stem = nn.Sequential(
        *stem_layers,
        norm(),
        _Unit(64, 64, 1, batch_norm=bn),
        _Unit(64, 192, 3, batch_norm=bn),
        norm(),
        _max_pool_ceil(3, 2),
    )
    self.blocks, self.aux, self.pools = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict()
    fc_in = 2048 if stem == "imagenet" or aux_adaptive_pool else 512
    cin = 192
    for name, row in TABLE1.items():
      self.blocks[name] = _Inception(cin, row, branch5_kernel, bn)
      cin = row.out_channels
      if name in AUX_AFTER:
        self.aux[name] = _AuxHead(cin, num_classes, fc_in, aux_adaptive_pool, bn)
      if name in POOL_AFTER:
        window = 3 if name == "3b" else pool4_window
        self.pools[name] = _max_pool_ceil(window, 2)
    self.dropout = nn.Dropout(dropout_rate)
    self.head = nn.Linear(cin, num_classes)

  def forward(self, x):
    x = self.stem(x)
    aux = []
    for name, block in self.blocks.items():
      x = block(x)
      if self.training and name in self.aux:
        aux.append(self.aux[name](x))
      if name in self.pools:
        x = self.pools[name](x)
    logits = self.head(self.dropout(x.mean((2, 3))))
    return (logits, tuple(aux)) if self.training else logits


# ----------------------------------------------------------------------------------------- names


def _cifar(depth: int, residual: bool = True):
  n = (depth - 2) // 6
  return lambda num_classes: ResNetTwin((n,) * 3, False, num_classes, 16, "cifar", "A", residual)


TWINS = {
    "ResNet18": lambda c: _torchvision_resnet_v1("resnet18", c),
    "ResNet34": lambda c: _torchvision_resnet_v1("resnet34", c),
    "ResNet50": lambda c: _torchvision_resnet_v1("resnet50", c),
    "ResNet101": lambda c: _torchvision_resnet_v1("resnet101", c),
    "ResNet152": lambda c: _torchvision_resnet_v1("resnet152", c),
    "Plain18": lambda c: ResNetTwin((2, 2, 2, 2), False, c, residual=False),
    "Plain34": lambda c: ResNetTwin((3, 4, 6, 3), False, c, residual=False),
    "GoogLeNet": lambda c: GoogLeNetTwin(c),
    "GoogLeNet32": lambda c: GoogLeNetTwin(c, stem="cifar"),
    "GoogLeNetBN": lambda c: torchvision.models.googlenet(
        weights=None, num_classes=c, aux_logits=True, init_weights=False
    ),
    "GoogLeNetBN32": lambda c: GoogLeNetTwin(
        c,
        stem="cifar",
        batch_norm=True,
        lrn=False,
        branch5_kernel=3,
        pool4_window=2,
        dropout_rate=0.2,
        aux_adaptive_pool=True,
    ),
}
for _depth in (20, 32, 44, 56, 110, 1202):
  TWINS[f"CifarResNet{_depth}"] = _cifar(_depth)
for _depth in (20, 32, 44, 56, 110):
  TWINS[f"CifarPlain{_depth}"] = _cifar(_depth, residual=False)


def torch_twin(name: str, num_classes: int) -> nn.Module:
  """The torch network with the same architecture as `incres.models.get_model(name)`."""
  if name not in TWINS:
    raise ValueError(f"No torch twin for {name!r}; have: {', '.join(TWINS)}.")
  return TWINS[name](num_classes)


def split_outputs(out) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
  """(logits, aux logits) from any twin's training output (torchvision's namedtuple included)."""
  if isinstance(out, torch.Tensor):
    return out, ()
  if hasattr(out, "aux_logits1"):  # torchvision's GoogLeNetOutputs.
    return out.logits, (out.aux_logits1, out.aux_logits2)
  return out[0], tuple(out[1])


def num_params(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())
