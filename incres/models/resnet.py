"""ResNet (He et al. 2015, arXiv 1512.03385): ImageNet and CIFAR networks and their plain twins.

One `ResNet` class over a stage table; every named model is a `functools.partial` of it.

Faithfulness notes:
- BN after every convolution, before the nonlinearity; ReLU after the addition (Figure 2/5).
- He initialisation (He et al. 2015b) as in the paper's Torch code: normal with std sqrt(2 / n),
  n = k * k * output channels ("fan_out"), no truncation.
- Bottleneck strides: the paper (and its Torch code, "v1") strides the block's first 1x1 conv.
  torchvision and the Flax example stride the 3x3 ("v1.5"); `stride_in_1x1=False` gives that, and
  is what weight import from torchvision uses.
- Shortcuts (Section 3.3): "A" subsamples and pads the new channels with zeros (parameter-free; the
  zeros are appended after the identity channels, as in the paper's Torch code); "B" uses a 1x1
  projection (+BN) only where the shape changes; "C" projects in every block.
- Every 3x3 conv's output after BN and before the nonlinearity (ReLU or the addition) is sown into
  the `intermediates` collection as `<stage>_<block>/bn_out<i>` (Figure 7's "responses").

The descendants, as more rows of the same class (the named partials at the end of the tables):
- ResNeXt (Xie et al. 2017): the bottleneck's 3x3 in `groups` groups, its width
  int(filters * base_width / 64) * groups (ResNeXt-50 32x4d: 128 channels in 32 groups of 4 in the
  first stage), as torchvision and the authors' `resnext_bottleneck_C`; the 3x3 strides.
- Wide ResNets (Zagoruyko & Komodakis 2016), ImageNet "WRN-50-2-bottleneck": base_width 128 doubles
  the bottleneck's inner width. The CIFAR WRN-28-10 is a pre-activation net
  (`incres.models.preact_resnet.WRN28_10`).
- Bag of Tricks (He et al. 2019, Section 4.2): ResNet-B = stride on the 3x3 (`stride_in_1x1=False`),
  ResNet-C = the deep stem (`stem="deep"`), ResNet-D = a 2x2/2 average pool before a stride-1
  projection (`avg_down=True`). NAMES: the paper's "ResNet-B/C/D" are these network tweaks; the
  field `shortcut` holds the 2015 paper's shortcut *options* A/B/C (Section 3.3). They are
  unrelated: ResNet50D has `shortcut="B"` (projections only where the shape changes), as all the
  Bag-of-Tricks nets do. The named models say `ResNet50D`, never `shortcut="D"`.
- Stochastic depth (`drop_path_rate`, `incres.models.layers`): each block's residual branch is
  dropped per example in training, block k of the network's N at rate * k / (N - 1).

Layouts. By default every block is its own module (`stage<i>_block<j>`) and XLA compiles each one
separately, which for CifarResNet1202 (600 blocks) took 4 min for the init and grew past 24 GiB of
host memory compiling the train step. `scan_blocks=True` keeps each stage's block 0 (it changes the
width and stride) and runs blocks 1.. as one `nn.scan` named `stage<i>_blocks`: compiled once, with
params, batch statistics and sown intermediates stacked on a leading axis. `stack_blocks` and
`unstack_blocks` convert variables exactly between the layouts; analysis, torchvision import and
fine-tuning accept either. `remat_blocks=True` (with `scan_blocks`) recomputes each repeated block
in the backward pass, keeping one array per block instead of all its activations.

Which layout (benchmarks/RESULTS.md, "Compile time by depth"): unscanned is the default for every
model but CifarResNet1202, because on XLA:CPU a convolution's gradient inside a loop is slow (the
scanned CIFAR ResNet-20/56/110 train steps took 3x/4.6x/5.8x as long; with XLA's own weight
gradients, ResNet-20's backward pass took 20x as long), while the unscanned nets up to ResNet-152
compile in 10-90 s. `experiments/resnet_cifar.py` scans (and rematerialises) CifarResNet1202,
which cannot be compiled unscanned here (scanned: a 32 s compile, 4.3 GiB peak).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from incres import errors, ops
from incres.models import layers

ModuleDef = Any

he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def shortcut_a(x: jnp.ndarray, out_channels: int, stride: int) -> jnp.ndarray:
  """Option A: identity, subsampled by `stride`, with zero channels appended up to out_channels."""
  if stride > 1:
    x = x[:, ::stride, ::stride, :]
  extra = out_channels - x.shape[-1]
  if extra > 0:
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))
  return x


def layer_factories(net: nn.Module, train: bool) -> tuple[Callable[..., nn.Module], ModuleDef]:
  """The conv and BatchNorm factories of `ResNet` and `PreActResNet`, from `net`'s fields.

  `net` has `cpu_conv_vjp`, `dtype`, `bn_momentum`, `bn_epsilon` and `frozen_bn`. Convolutions
  have no bias, He initialisation and k // 2 padding; parameters are float32 whatever `dtype`.
  """
  # `ops.Conv` is `nn.Conv` (same parameters) with a fast weight gradient on XLA:CPU.
  conv = ops.conv_factory(
      net.cpu_conv_vjp,
      use_bias=False,
      kernel_init=he_normal,
      dtype=net.dtype,
      param_dtype=jnp.float32,
  )
  norm = functools.partial(
      nn.BatchNorm,
      use_running_average=not train or net.frozen_bn,
      momentum=net.bn_momentum,
      epsilon=net.bn_epsilon,
      dtype=net.dtype,
      param_dtype=jnp.float32,
  )
  return conv, norm


def classifier_head(net: nn.Module, x: jnp.ndarray) -> tuple[jnp.ndarray, dict[str, Any]]:
  """`ResNet`'s and `PreActResNet`'s classifier: global average pool, then a dense layer.

  Called in `net`'s compact `__call__`, so the dense layer is `net`'s "head" (`head/kernel`,
  `head/bias`, flax's default init), float32 parameters, computing in `net.dtype` (`num_classes`
  outputs). Returns what those models return: float32 logits and `{"features", "aux_logits": ()}`.
  """
  features = jnp.mean(x, axis=(1, 2))  # Global average pool.
  logits = nn.Dense(net.num_classes, dtype=net.dtype, param_dtype=jnp.float32, name="head")(
      features
  )
  return jnp.asarray(logits, jnp.float32), {
      "features": jnp.asarray(features, jnp.float32),
      "aux_logits": (),
  }


def avg_pool_ceil(x: jnp.ndarray, stride: int) -> jnp.ndarray:
  """A `stride` x `stride` average pool of stride `stride`, ceil mode, over real pixels only.

  torch's `AvgPool2d(k, k, ceil_mode=True, count_include_pad=False)`, as timm's ResNet-D shortcut
  uses it: on an odd side, the last window covers one row or column and averages only that.
  """
  pad = [(0, -n % stride) for n in x.shape[1:3]]
  return nn.avg_pool(x, (stride, stride), (stride, stride), pad, count_include_pad=False)


class _Block(nn.Module):
  """Shared shortcut logic of the basic and bottleneck blocks."""

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  shortcut: str = "B"
  residual: bool = True
  zero_init_last_bn: bool = False
  avg_down: bool = False  # Bag of Tricks' ResNet-D: average-pool before a strided projection.
  expansion: int = 1

  def add_shortcut(self, x, y, drop_rate: float | jax.Array = 0.0):
    """relu(y + shortcut(x)); in training, y goes through stochastic depth at `drop_rate`."""
    if not self.residual:  # The plain twin: no shortcut at all.
      return nn.relu(y)
    y = layers.drop_path(self, y, drop_rate)
    out_channels = self.filters * self.expansion
    shape_changes = self.strides > 1 or x.shape[-1] != out_channels
    if self.shortcut == "C" or (self.shortcut == "B" and shape_changes):
      stride = self.strides
      if self.avg_down and stride > 1:  # The pool subsamples; the 1x1 conv then reads every pixel.
        x, stride = avg_pool_ceil(x, stride), 1
      x = self.conv(out_channels, (1, 1), (stride, stride), name="proj_conv")(x)
      x = self.norm(name="proj_bn")(x)
    elif shape_changes:
      if self.shortcut not in ("A", "B"):
        raise ValueError(f"Unknown shortcut option {self.shortcut!r}; use 'A', 'B' or 'C'.")
      x = shortcut_a(x, out_channels, self.strides)
    return nn.relu(y + x)

  def last_norm(self, name: str):
    if self.zero_init_last_bn:
      return self.norm(name=name, scale_init=nn.initializers.zeros)
    return self.norm(name=name)


class BasicBlock(_Block):
  """Two 3x3 convs (Figure 5 left)."""

  @nn.compact
  def __call__(self, x, drop_rate: float | jax.Array = 0.0):
    s = (self.strides, self.strides)
    y = self.conv(self.filters, (3, 3), s, name="conv1")(x)
    y = self.norm(name="bn1")(y)
    self.sow("intermediates", "bn_out1", y)
    y = nn.relu(y)
    y = self.conv(self.filters, (3, 3), name="conv2")(y)
    y = self.last_norm("bn2")(y)
    self.sow("intermediates", "bn_out2", y)
    return self.add_shortcut(x, y, drop_rate)


class Bottleneck(_Block):
  """1x1 reduce, 3x3, 1x1 expand (x4) (Figure 5 right); grouped 3x3 for ResNeXt.

  The 1x1 reduce and the 3x3 have int(filters * base_width / 64) * groups channels, the 3x3 in
  `groups` groups (torchvision's `Bottleneck`, the ResNeXt authors' `resnext_bottleneck_C`):
  `filters` for the ResNets, 4 * 32 = 128 in ResNeXt-50 (32x4d)'s first stage, 2 * `filters` in
  the wide ResNets (base_width 128).
  """

  expansion: int = 4
  stride_in_1x1: bool = True  # The paper's placement ("v1"); False: torchvision's "v1.5".
  groups: int = 1  # ResNeXt's cardinality.
  base_width: int = 64  # The width of one group at filters = 64 (torchvision's width_per_group).

  @nn.compact
  def __call__(self, x, drop_rate: float | jax.Array = 0.0):
    s = (self.strides, self.strides)
    s1, s3 = (s, (1, 1)) if self.stride_in_1x1 else ((1, 1), s)
    width = int(self.filters * (self.base_width / 64.0)) * self.groups
    y = self.conv(width, (1, 1), s1, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(width, (3, 3), s3, feature_group_count=self.groups, name="conv2")(y)
    y = self.norm(name="bn2")(y)
    self.sow("intermediates", "bn_out2", y)
    y = nn.relu(y)
    y = self.conv(self.filters * self.expansion, (1, 1), name="conv3")(y)
    y = self.last_norm("bn3")(y)
    return self.add_shortcut(x, y, drop_rate)


def scan_repeats(
    module: nn.Module,
    x: jnp.ndarray,
    length: int,
    remat: bool,
    drop_rates: Sequence[float] | None = None,
    split_dropout: bool = False,
) -> jnp.ndarray:
  """Applies `length` copies of the block `module` in sequence as one `nn.scan` (one compile).

  `drop_rates` (one per copy, in training): each copy's stochastic-depth rate, passed to it as an
  argument (the copies share their fields) and drawn from its own slice of the "dropout" stream;
  `split_dropout` splits that stream for blocks that draw dropout masks otherwise.
  """
  split_rngs = {"params": True}
  if drop_rates is not None or split_dropout:
    split_rngs["dropout"] = True  # Each copy its own masks.
  if drop_rates is None:

    def body(module, x, _):
      return module(x), None

    xs = None
  else:

    def body(module, x, rate):
      return module(x, rate), None

    xs = jnp.asarray(drop_rates, jnp.float32)

  if remat:  # The backward pass recomputes each block from its input (one array per block).
    body = nn.remat(body)
  scan = nn.scan(
      body,
      variable_axes={"params": 0, "batch_stats": 0, "intermediates": 0},
      split_rngs=split_rngs,
      length=length,
  )
  return scan(module, x, xs)[0]


class ResNet(nn.Module):
  """A ResNet, ResNeXt, wide ResNet or plain net over a stage table.

  `stem="imagenet"`: 7x7/2 conv `width`, 3x3/2 max pool (Table 1). `stem="cifar"`: one 3x3 conv
  (4.2). `stem="deep"`: Bag of Tricks' ResNet-C, three 3x3 convs of width/2, width/2 and `width`
  channels (the first of stride 2, each with BN and ReLU), then the 3x3/2 max pool.
  Stage i has `stage_sizes[i]` blocks of `width * 2**i` filters; stages after the first start with
  stride 2. Returns `(logits, {'features', 'aux_logits': ()})` in every mode.
  """

  stage_sizes: Sequence[int]
  block: ModuleDef
  num_classes: int = 1000
  width: int = 64
  stem: str = "imagenet"
  # The 2015 paper's shortcut options A/B/C (Section 3.3), not Bag of Tricks' ResNet-B/C/D.
  shortcut: str = "B"
  residual: bool = True
  stride_in_1x1: bool = True
  groups: int = 1  # Bottleneck only: ResNeXt's cardinality (the 3x3's groups).
  base_width: int = 64  # Bottleneck only: the width per group (torchvision's width_per_group).
  avg_down: bool = False  # ResNet-D: 2x2/2 average pool, then a stride-1 projection shortcut.
  drop_path_rate: float = 0.0  # Stochastic depth: the last block's rate (incres.models.layers).
  zero_init_last_bn: bool = False
  bn_momentum: float = 0.9  # Torch's 0.1 in Flax's convention.
  bn_epsilon: float = 1e-5
  frozen_bn: bool = False  # Always normalise with the running statistics (frozen fine-tuning).
  cpu_conv_vjp: str = "auto"  # The CPU gradient paths of incres.ops: "auto", "on" or "off".
  scan_blocks: bool = False  # Blocks 1.. of each stage as one `nn.scan` (see the module docstring).
  remat_blocks: bool = False  # With scan_blocks: recompute the blocks in the backward pass.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    layers.check_drop_path_rate(self.drop_path_rate, "ResNet", self.residual)
    conv, norm = layer_factories(self, train)
    block = self.block
    if block is Bottleneck:
      block = functools.partial(
          Bottleneck,
          stride_in_1x1=self.stride_in_1x1,
          groups=self.groups,
          base_width=self.base_width,
      )
    elif self.groups != 1 or self.base_width != 64:
      raise errors.ConfigError(
          f"groups={self.groups}, base_width={self.base_width}: only bottleneck blocks have the"
          " grouped, widened 3x3 (ResNeXt, wide ResNets); the basic block's are 1 and 64 (as in"
          " torchvision). Use a bottleneck model (ResNet50 and deeper) or leave them unset."
      )

    x = jnp.asarray(x, self.dtype)
    if self.stem == "imagenet":
      x = conv(self.width, (7, 7), (2, 2), name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
      x = ops.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)), cpu_conv_vjp=self.cpu_conv_vjp)
    elif self.stem == "deep":  # Bag of Tricks' ResNet-C (Figure 2b): 32, 32, 64 for width 64.
      widths = (self.width // 2, self.width // 2, self.width)
      for i, features in enumerate(widths):
        stride = (2, 2) if i == 0 else (1, 1)
        x = conv(features, (3, 3), stride, name=f"stem_conv{i + 1}")(x)
        x = nn.relu(norm(name=f"stem_bn{i + 1}")(x))
      x = ops.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)), cpu_conv_vjp=self.cpu_conv_vjp)
    elif self.stem == "cifar":
      x = conv(self.width, (3, 3), name="stem_conv")(x)
      x = norm(name="stem_bn")(x)
      self.sow("intermediates", "stem_bn_out", x)
      x = nn.relu(x)
    else:
      raise ValueError(f"Unknown stem {self.stem!r}; use 'imagenet', 'deep' or 'cifar'.")

    # Stochastic depth in training only: block k of the whole net drops at rates[k].
    dropping = train and self.drop_path_rate > 0
    total = sum(self.stage_sizes)
    rates = layers.drop_path_rates(self.drop_path_rate, total) if dropping else (0.0,) * total
    k = 0
    for i, num_blocks in enumerate(self.stage_sizes):
      stage_block = functools.partial(
          block,
          filters=self.width * 2**i,
          conv=conv,
          norm=norm,
          shortcut=self.shortcut,
          residual=self.residual,
          zero_init_last_bn=self.zero_init_last_bn,
          avg_down=self.avg_down,
      )
      # Block 0 changes the width and (after the first stage) the resolution; the rest repeat it.
      x = stage_block(strides=2 if i > 0 else 1, name=f"stage{i + 1}_block0")(x, rates[k])
      if self.scan_blocks and num_blocks > 1:
        x = scan_repeats(
            stage_block(name=f"stage{i + 1}_blocks"),
            x,
            num_blocks - 1,
            self.remat_blocks,
            drop_rates=rates[k + 1 : k + num_blocks] if dropping else None,
        )
      else:
        for j in range(1, num_blocks):
          x = stage_block(name=f"stage{i + 1}_block{j}")(x, rates[k + j])
      k += num_blocks

    return classifier_head(self, x)


# Torchvision's parameter counts hold for option B (projection shortcuts only where shapes change).
ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=Bottleneck)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block=Bottleneck)
ResNet152 = functools.partial(ResNet, stage_sizes=(3, 8, 36, 3), block=Bottleneck)
Plain18 = functools.partial(ResNet18, residual=False)
Plain34 = functools.partial(ResNet34, residual=False)

# ResNeXt (Xie et al. 2017, arXiv 1611.05431): "C x Nd" is cardinality C, N channels per group at
# the first stage. The authors' code (facebookresearch/ResNeXt, `resnext_bottleneck_C`) and
# torchvision stride the grouped 3x3, so these do too (stride_in_1x1=False).
ResNeXt50_32x4d = functools.partial(ResNet50, groups=32, base_width=4, stride_in_1x1=False)
ResNeXt101_32x8d = functools.partial(ResNet101, groups=32, base_width=8, stride_in_1x1=False)
ResNeXt101_64x4d = functools.partial(ResNet101, groups=64, base_width=4, stride_in_1x1=False)
# Wide ResNet-50-2 / 101-2 (Zagoruyko & Komodakis 2016, "WRN-50-2-bottleneck"): the bottleneck's
# 1x1 reduce and 3x3 twice as wide, outputs unchanged. The 3x3 strides, as in the authors'
# released ImageNet model (szagoruyko/wide-residual-networks, pretrained/README.md) and torchvision.
WideResNet50_2 = functools.partial(ResNet50, base_width=128, stride_in_1x1=False)
WideResNet101_2 = functools.partial(ResNet101, base_width=128, stride_in_1x1=False)

# "Bag of Tricks" (He et al. 2019, arXiv 1812.01187, Section 4.2 and Figure 2) tweaks of ResNet-50,
# each on top of the previous one (Table 5): ResNet-B strides the bottleneck's 3x3 instead of its
# first 1x1 (torchvision's "v1.5": ResNet50B is ResNet50(stride_in_1x1=False)); ResNet-C replaces
# the 7x7 stem conv with three 3x3 convs (stem="deep"); ResNet-D average-pools 2x2/2 before the
# projection shortcut of each stage's first block, whose 1x1 conv then has stride 1
# (avg_down=True). Not to be confused with the 2015 paper's shortcut options A/B/C (the field
# `shortcut`): every Bag-of-Tricks net uses option B. timm's `resnet50c` / `resnet50d` /
# `resnet101d` are these networks (stem width 32, "deep").
ResNet50B = functools.partial(ResNet50, stride_in_1x1=False)
ResNet50C = functools.partial(ResNet50B, stem="deep")
ResNet50D = functools.partial(ResNet50C, avg_down=True)
ResNet101D = functools.partial(ResNet101, stride_in_1x1=False, stem="deep", avg_down=True)


def _cifar(depth: int, residual: bool) -> Callable[..., ResNet]:
  """Section 4.2: 6n+2 layers, 16/32/64 filters on 32/16/8 maps, option A everywhere."""
  assert (depth - 2) % 6 == 0, depth
  n = (depth - 2) // 6
  return functools.partial(
      ResNet,
      stage_sizes=(n, n, n),
      block=BasicBlock,
      num_classes=10,
      width=16,
      stem="cifar",
      shortcut="A",
      residual=residual,
  )


CifarResNet20 = _cifar(20, True)
CifarResNet32 = _cifar(32, True)
CifarResNet44 = _cifar(44, True)
CifarResNet56 = _cifar(56, True)
CifarResNet110 = _cifar(110, True)
CifarResNet1202 = _cifar(1202, True)
CifarPlain20 = _cifar(20, False)
CifarPlain32 = _cifar(32, False)
CifarPlain44 = _cifar(44, False)
CifarPlain56 = _cifar(56, False)
CifarPlain110 = _cifar(110, False)


# ---------------------------------------------------------------------------------------------
# The two layouts of the same variables
# ---------------------------------------------------------------------------------------------

_BLOCK = re.compile(r"^(stage\d+)_block(\d+)$")
_BLOCKS = re.compile(r"^(stage\d+)_blocks$")


def _stack(leaves: Sequence[Any]) -> Any:
  """Stacks along a new leading axis, in NumPy when every leaf is a NumPy array."""
  if all(isinstance(a, np.ndarray) for a in leaves):
    return np.stack(leaves)
  return jnp.stack(leaves)


def stack_blocks(tree: Mapping[str, Any]) -> dict[str, Any]:
  """Unscanned layout -> scanned (`scan_blocks=True`): `stage<i>_block1..` -> `stage<i>_blocks`.

  `tree` is any nesting of mappings holding the blocks (variables `{"params", "batch_stats"}`, one
  collection, or the `intermediates` a model sowed); each stage's blocks 1.. are stacked leaf by
  leaf on a new leading axis, in block order. A pure re-arrangement: `unstack_blocks` inverts it,
  and a tree already in the scanned layout (or with no ResNet blocks) comes back unchanged.
  """
  out: dict[str, Any] = {}
  repeats: dict[str, dict[int, Any]] = {}
  for key, value in tree.items():
    match = _BLOCK.match(str(key))
    if match and int(match.group(2)) > 0:
      repeats.setdefault(match.group(1), {})[int(match.group(2))] = value
    elif isinstance(value, Mapping):
      out[key] = stack_blocks(value)
    else:
      out[key] = value
  for stage, blocks in repeats.items():
    if sorted(blocks) != list(range(1, len(blocks) + 1)):
      raise ValueError(f"{stage}: blocks {sorted(blocks)} are not 1..{len(blocks)}; cannot stack.")
    trees = [blocks[j] for j in range(1, len(blocks) + 1)]
    out[f"{stage}_blocks"] = jax.tree.map(lambda *xs: _stack(xs), *trees)
  return out


def unstack_blocks(tree: Mapping[str, Any]) -> dict[str, Any]:
  """Scanned layout -> unscanned: `stage<i>_blocks` -> `stage<i>_block1..` (inverts `stack_blocks`).

  Also gives Figure 7's per-layer responses from a scanned net's `intermediates`, under the
  unscanned names.
  """
  out: dict[str, Any] = {}
  for key, value in tree.items():
    match = _BLOCKS.match(str(key))
    if match:
      length = jax.tree.leaves(value)[0].shape[0]
      for j in range(length):
        out[f"{match.group(1)}_block{j + 1}"] = jax.tree.map(lambda a, j=j: a[j], value)
    elif isinstance(value, Mapping):
      out[key] = unstack_blocks(value)
    else:
      out[key] = value
  return out


def has_stacked_blocks(tree: Mapping[str, Any]) -> bool:
  """Whether `tree` (variables, or one collection) is in the scanned layout."""
  return any(
      _BLOCKS.match(str(key)) or (isinstance(value, Mapping) and has_stacked_blocks(value))
      for key, value in tree.items()
  )


def to_layout(tree: Mapping[str, Any], scanned: bool) -> dict[str, Any]:
  """`tree` in the scanned (`stack_blocks`) or the unscanned layout, from either."""
  return stack_blocks(tree) if scanned else unstack_blocks(tree)
