"""Pre-activation ResNets, He et al. 2016: "Identity Mappings in Deep Residual Networks".

arXiv 1603.05027. The "full pre-activation" Residual Unit of Figure 4(e): BN and ReLU come before
each weight layer, and nothing follows the addition, so the shortcut path from any unit to any
later one is a pure identity. One `PreActResNet` class over a stage table, as
`incres.models.resnet.ResNet`; every named model is a `functools.partial` of it.

Faithfulness notes (the paper's Appendix, "Implementation Details", unless said otherwise):
- First and last units: "we adopt the first activation right after conv1 and before splitting into
  two paths" (BN-ReLU `stem_bn`, before the ImageNet stem's max pool as in fb.resnet.torch's
  `preresnet.lua`, so the first unit has no pre-activation of its own), and "an extra activation
  right after its element-wise addition" for the last unit (BN-ReLU `final_bn` before the average
  pool and the classifier).
- Shortcuts: identity wherever the shape is kept. Where it changes, the bottleneck nets use
  projection shortcuts (option B) that are "also with pre-activation": the 1x1 conv reads the
  unit's pre-activated input, and has no BN of its own (a BN there would sit on the shortcut path).
  The CIFAR basic-block ResNet-110 keeps the 2015 paper's option A (the Appendix names projections
  only for the bottleneck nets); its subsampled, zero-padded shortcut reads the pre-activated input
  too, as in fb.resnet.torch's `preresnet.lua`.
- Bottleneck strides: on the first 1x1 conv (`stride_in_1x1=True`), as in the authors' released
  code (KaimingHe/resnet-1k-layers, `resnet-pre-act.lua`) and the 2015 paper; the 2016 paper itself
  does not say. `stride_in_1x1=False` strides the 3x3 (timm, fb.resnet.torch).
- CIFAR bottleneck nets (ResNet-164/1001): 9n+2 layers, a 3x3 conv of 16 filters, then three
  stages of n bottleneck units with 16/32/64 bottleneck filters and 64/128/256 outputs, as
  `resnet-pre-act.lua`: 1,703,258 and 10,327,706 parameters. Table 4 gives 1.7M and 10.2M; the
  latter is the count without BN's scales and shifts (10,178,490), the count with them is 10.3M.
- He initialisation (fan-out normal), BN momentum and epsilon as `incres.models.resnet`.
- `stem_norm=False` reproduces timm's `resnetv2_*` (and so imports its weights,
  `incres.convert_torch`): the stem is the 7x7 conv and the max pool only, and the first unit
  pre-activates its own input (its `bn1`), the projection shortcut reading the pre-activated input
  and an identity shortcut the raw one. Same parameter count as the paper's layout (the stem's BN
  becomes the first unit's); with `stride_in_1x1=False` every tensor of timm's `resnetv2_18/34/50/
  101/152` has one twin of its shape here (25,549,352 / 44,541,480 / 60,185,128 parameters for
  50/101/152), and the logits agree (tests/test_preact_resnet.py).
- `transform_input`: timm's resnetv2 weights expect inputs scaled by mean = std = 0.5 per channel
  (its `_cfg`); True maps ImageNet mean/std-normalised images to that scale inside the model, as
  `GoogLeNet.transform_input` does for torchvision's GoogLeNet.
- Layouts: `scan_blocks` and `remat_blocks` as `incres.models.resnet` (units 1.. of each stage as
  one `nn.scan` named `stage<i>_blocks`; `resnet.stack_blocks`/`unstack_blocks` convert the
  variables). Unscanned is the default; `experiments/resnet_cifar.py:preact=True,depth=1001`
  scans and rematerialises, as for CifarResNet1202 (benchmarks/RESULTS.md, "Compile time by
  depth").
- Nothing is sown into `intermediates`: Figure 7's responses (after BN, before the addition) are
  the original unit's; a pre-activation unit has no BN after its last conv.
- Wide ResNets (Zagoruyko & Komodakis 2016): `widen_factor` k multiplies the units' widths (not
  the stem's) and `dropout_rate` puts dropout between a basic unit's convs; `WRN28_10` (end of
  file) is the paper's CIFAR net in the authors' layout (`stem_norm=False`).
- Stochastic depth: `drop_path_rate`, as in `incres.models.resnet` (`incres.models.layers`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from incres import errors, ops
from incres.models import layers
from incres.models.resnet import classifier_head, layer_factories, scan_repeats, shortcut_a

ModuleDef = Any


class _PreActBlock(nn.Module):
  """Shared pre-activation and shortcut logic of the basic and bottleneck units."""

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  shortcut: str = "B"
  preact: bool = True  # False: the input is already activated (the network's first unit).
  dropout_rate: float = 0.0  # Basic units: dropout between the two convs (wide ResNets).
  train: bool = False  # Whether dropout drops (stochastic depth's rate is an argument).
  expansion: int = 1

  def preactivate(self, x):
    """BN-ReLU of the unit's input (`bn1`), or the input itself when it is already activated."""
    return nn.relu(self.norm(name="bn1")(x)) if self.preact else x

  def add_shortcut(self, x, x_act, y, drop_rate: float | jax.Array = 0.0):
    """y + the shortcut: identity of the raw input, or a projection / option A of `x_act`; in
    training, y goes through stochastic depth at `drop_rate` first."""
    y = layers.drop_path(self, y, drop_rate)
    out_channels = self.filters * self.expansion
    shape_changes = self.strides > 1 or x.shape[-1] != out_channels
    if self.shortcut == "C" or (self.shortcut == "B" and shape_changes):
      s = (self.strides, self.strides)
      return y + self.conv(out_channels, (1, 1), s, name="proj_conv")(x_act)
    if shape_changes:
      if self.shortcut not in ("A", "B"):
        raise ValueError(f"Unknown shortcut option {self.shortcut!r}; use 'A', 'B' or 'C'.")
      return y + shortcut_a(x_act, out_channels, self.strides)
    return y + x  # No activation after the addition (Figure 4(e)).


class PreActBasicBlock(_PreActBlock):
  """BN-ReLU-3x3, BN-ReLU-[dropout]-3x3 (Figure 4(e) on the basic unit; WRN's dropout)."""

  @nn.compact
  def __call__(self, x, drop_rate: float | jax.Array = 0.0):
    x_act = self.preactivate(x)
    s = (self.strides, self.strides)
    y = self.conv(self.filters, (3, 3), s, name="conv1")(x_act)
    y = nn.relu(self.norm(name="bn2")(y))
    if self.dropout_rate:
      y = nn.Dropout(self.dropout_rate, deterministic=not self.train)(y)
    y = self.conv(self.filters, (3, 3), name="conv2")(y)
    return self.add_shortcut(x, x_act, y, drop_rate)


class PreActBottleneck(_PreActBlock):
  """BN-ReLU-1x1 reduce, BN-ReLU-3x3, BN-ReLU-1x1 expand (x4)."""

  expansion: int = 4
  stride_in_1x1: bool = True  # The authors' code; False: timm's and fb.resnet.torch's 3x3.

  @nn.compact
  def __call__(self, x, drop_rate: float | jax.Array = 0.0):
    x_act = self.preactivate(x)
    s = (self.strides, self.strides)
    s1, s3 = (s, (1, 1)) if self.stride_in_1x1 else ((1, 1), s)
    y = self.conv(self.filters, (1, 1), s1, name="conv1")(x_act)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.conv(self.filters, (3, 3), s3, name="conv2")(y)
    y = nn.relu(self.norm(name="bn3")(y))
    y = self.conv(self.filters * self.expansion, (1, 1), name="conv3")(y)
    return self.add_shortcut(x, x_act, y, drop_rate)


class PreActResNet(nn.Module):
  """A pre-activation ResNet over a stage table.

  `stem="imagenet"`: 7x7/2 conv `width`, 3x3/2 max pool. `stem="cifar"`: one 3x3 conv `width`.
  Stage i has `stage_sizes[i]` units of `width * widen_factor * 2**i` filters (x4 outputs for
  bottlenecks); stages after the first start with stride 2. Returns `(logits, {'features', 'aux_logits': ()})` in every
  mode; the features are the average-pooled output of the final BN-ReLU.
  """

  stage_sizes: Sequence[int]
  block: ModuleDef
  num_classes: int = 1000
  width: int = 64
  widen_factor: int = 1  # WRN's k: the units' widths times k, the stem's not.
  stem: str = "imagenet"
  shortcut: str = "B"
  stride_in_1x1: bool = True
  dropout_rate: float = 0.0  # Basic units: dropout between the convs (WRN's "-dropout" nets).
  drop_path_rate: float = 0.0  # Stochastic depth: the last unit's rate (incres.models.layers).
  stem_norm: bool = True  # False: timm's resnetv2 layout (see the module docstring).
  transform_input: bool = False  # ImageNet mean/std inputs -> timm's (x - 0.5) / 0.5 scale.
  bn_momentum: float = 0.9  # Torch's 0.1 in Flax's convention.
  bn_epsilon: float = 1e-5
  frozen_bn: bool = False  # Always normalise with the running statistics (frozen fine-tuning).
  cpu_conv_vjp: str = "auto"  # The CPU gradient paths of incres.ops: "auto", "on" or "off".
  scan_blocks: bool = False  # Units 1.. of each stage as one `nn.scan` (see the module docstring).
  remat_blocks: bool = False  # With scan_blocks: recompute the units in the backward pass.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    layers.check_drop_path_rate(self.drop_path_rate, "PreActResNet")
    conv, norm = layer_factories(self, train)
    block = self.block
    if block is PreActBottleneck:
      block = functools.partial(PreActBottleneck, stride_in_1x1=self.stride_in_1x1)
    if self.dropout_rate:
      if block is not PreActBasicBlock:
        raise errors.ConfigError(
            f"dropout_rate={self.dropout_rate!r}: dropout between the convolutions is the wide"
            " ResNets' basic units' (Zagoruyko & Komodakis 2016); this net has bottleneck units."
            " Leave model_kwargs.dropout_rate at 0 for it."
        )
      block = functools.partial(block, dropout_rate=self.dropout_rate, train=train)

    if self.transform_input:  # ImageNet mean/std normalisation -> timm resnetv2's 0.5/0.5 scale.
      mean, std = jnp.array([0.485, 0.456, 0.406]), jnp.array([0.229, 0.224, 0.225])
      x = x * (std / 0.5) + (mean - 0.5) / 0.5
    x = jnp.asarray(x, self.dtype)
    stem_bn = lambda x: nn.relu(norm(name="stem_bn")(x)) if self.stem_norm else x
    if self.stem == "imagenet":
      x = stem_bn(conv(self.width, (7, 7), (2, 2), name="stem_conv")(x))
      x = ops.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)), cpu_conv_vjp=self.cpu_conv_vjp)
    elif self.stem == "cifar":
      x = stem_bn(conv(self.width, (3, 3), name="stem_conv")(x))
    else:
      raise ValueError(f"Unknown stem {self.stem!r}; use 'imagenet' or 'cifar'.")

    # Stochastic depth in training only: unit k of the whole net drops at rates[k].
    dropping = train and self.drop_path_rate > 0
    total = sum(self.stage_sizes)
    rates = layers.drop_path_rates(self.drop_path_rate, total) if dropping else (0.0,) * total
    k = 0
    for i, num_blocks in enumerate(self.stage_sizes):
      unit = functools.partial(
          block,
          filters=self.width * self.widen_factor * 2**i,
          conv=conv,
          norm=norm,
          shortcut=self.shortcut,
      )
      # Unit 0 changes the width and (after the first stage) the resolution; the rest repeat it.
      x = unit(
          strides=2 if i > 0 else 1,
          preact=not (self.stem_norm and i == 0),
          name=f"stage{i + 1}_block0",
      )(x, rates[k])
      if self.scan_blocks and num_blocks > 1:
        x = scan_repeats(
            unit(name=f"stage{i + 1}_blocks"),
            x,
            num_blocks - 1,
            self.remat_blocks,
            drop_rates=rates[k + 1 : k + num_blocks] if dropping else None,
            split_dropout=train and bool(self.dropout_rate),
        )
      else:
        for j in range(1, num_blocks):
          x = unit(name=f"stage{i + 1}_block{j}")(x, rates[k + j])
      k += num_blocks

    x = nn.relu(norm(name="final_bn")(x))  # The last unit's extra activation.
    return classifier_head(self, x)


PreActResNet18 = functools.partial(PreActResNet, stage_sizes=(2, 2, 2, 2), block=PreActBasicBlock)
PreActResNet34 = functools.partial(PreActResNet, stage_sizes=(3, 4, 6, 3), block=PreActBasicBlock)
PreActResNet50 = functools.partial(PreActResNet, stage_sizes=(3, 4, 6, 3), block=PreActBottleneck)
PreActResNet101 = functools.partial(PreActResNet, stage_sizes=(3, 4, 23, 3), block=PreActBottleneck)
PreActResNet152 = functools.partial(PreActResNet, stage_sizes=(3, 8, 36, 3), block=PreActBottleneck)
# Table 5's deepest ImageNet net (fb.resnet.torch's 200-layer stage table).
PreActResNet200 = functools.partial(
    PreActResNet, stage_sizes=(3, 24, 36, 3), block=PreActBottleneck
)


def _cifar(depth: int, bottleneck: bool) -> Callable[..., PreActResNet]:
  """Basic units: 6n+2 layers, option A (2015 §4.2); bottlenecks: 9n+2 layers, option B."""
  per_unit = 9 if bottleneck else 6
  assert (depth - 2) % per_unit == 0, depth
  n = (depth - 2) // per_unit
  return functools.partial(
      PreActResNet,
      stage_sizes=(n, n, n),
      block=PreActBottleneck if bottleneck else PreActBasicBlock,
      num_classes=10,
      width=16,
      stem="cifar",
      shortcut="B" if bottleneck else "A",
  )


CifarPreActResNet110 = _cifar(110, bottleneck=False)
CifarPreActResNet164 = _cifar(164, bottleneck=True)
CifarPreActResNet1001 = _cifar(1001, bottleneck=True)


# Wide ResNets for CIFAR (Zagoruyko & Komodakis 2016, arXiv 1605.07146): WRN-d-k has (d - 4) / 6
# basic units per stage of 16k, 32k and 64k filters after a 3x3 conv of 16. The authors' code
# (szagoruyko/wide-residual-networks, `models/wide-resnet.lua` and `pytorch/resnet.py`) has no BN
# after the stem conv: the first unit pre-activates its own input, and where a unit widens or
# strides, its 1x1 projection shortcut reads that pre-activated input (this file's
# `stem_norm=False` layout); convolutions have no biases; BN-ReLU before the pool. 36,479,194
# parameters for WRN-28-10 (the paper's 36.5M). Dropout between the convs (after the second
# BN-ReLU) is `dropout_rate`: the authors' "WRN-28-10-dropout" (CIFAR-10 / 100 test error 3.89 /
# 18.85 %, against 4.00 / 19.25 % without) used 0.3 (incres/paper.py). `WRN28_10` leaves it at 0,
# the network of the 36.5M count; `--config.model_kwargs.dropout_rate=0.3` gives the dropout net.
def _wrn(depth: int, k: int) -> Callable[..., PreActResNet]:
  assert (depth - 4) % 6 == 0, depth
  n = (depth - 4) // 6
  return functools.partial(
      PreActResNet,
      stage_sizes=(n, n, n),
      block=PreActBasicBlock,
      num_classes=10,
      width=16,
      widen_factor=k,
      stem="cifar",
      shortcut="B",
      stem_norm=False,
  )


WRN28_10 = _wrn(28, 10)
