"""Inception-v4 and Inception-ResNet-v1/v2 (Szegedy et al. 2016, arXiv 1602.07261).

One `InceptionV4Family` class over module-level tables; each named network is a `functools.partial`
of it. A table is the paper's figure as data: a block is a tuple of branches, concatenated along
channels; a branch is a sequence of `Conv` (conv + BN + ReLU; `valid` is the figures' "V"), `Pool`
(3x3) and forks (a tuple of `Conv`s applied to the same input and concatenated: Inception-C's
1x3 / 3x1 pairs). Table 1's Reduction-A filter counts k, l, m, n are `REDUCTION_A`'s rows.

- `InceptionV4`: Figures 3-9. 4 Inception-A, Reduction-A (k, l, m, n = 192, 224, 256, 384),
  7 Inception-B, Reduction-B, 3 Inception-C, average pool, dropout (keep 0.8), softmax.
  42,679,816 parameters: the same as timm's `inception_v4`, from which it differs only in the
  orientation of three factorised convolutions (see `InceptionV4Timm` below).
- `InceptionResNetV1`: Figures 14, 10, 7, 11, 12, 13 and 15 (5 A, 10 B, 5 C blocks; k, l, m, n =
  192, 192, 256, 384), 22,756,328 parameters. There are no public weights; the count is checked in
  tests/test_inception_v4.py against sums written out by hand from each figure's filter sizes
  (every block, the stem and the head separately), not against this file's tables.
- `InceptionResNetV1_32` (not in the paper): InceptionResNetV1 for 32x32 inputs (digits, CIFAR),
  its stem without the first stride (`STEM_RESNET_V1_32`); with `residual=False`, its non-residual
  twin (experiments/residual_study.py).
- `InceptionResNetV2`: Figures 3, 16, 7, 17, 18, 19 and 15 (5 A, 10 B, 5 C blocks; k, l, m, n =
  256, 256, 384, 384), 32,433,928 parameters.

Residual blocks (Section 3.2, Figure 20): the concatenated branches go through a "filter-expansion"
1x1 convolution without activation (with a bias and no BN: "batch-normalization only on top of the
traditional layers, but not on top of the summations"; TF-slim's release does the same), are
scaled by `residual_scales` (one factor per block type A, B, C; the paper picked factors "between
0.1 and 0.3" and gives no per-network values, so the default is TF-slim's 0.17, 0.10, 0.20), added
to the block's input, and the sum goes through a ReLU.

DEVIATIONS FROM THE FIGURES (the first two forced by the paper contradicting itself):
- The expansion convolution always outputs as many channels as the block's input has, as the
  addition requires. Inception-ResNet-v2's Figure 17 prints 1154 where its input (Reduction-A's
  output) has 384 + 384 + 384 = 1152 channels, and Figure 19 prints 2048 where its input
  (Reduction-B's output) has 1152 + 384 + 288 + 320 = 2144.
- The stem's last 3x3 convolution (Figure 3's "3x3 Conv (192 V)") has stride 2, as the 71x71 ->
  35x35 grid (and its max-pool twin) requires.
- Branch order inside a concatenation is timm's (the figures fix no channel order; any order is the
  same network up to a permutation of the next layer's weights), so the weights import unchanged.

Stochastic depth (`drop_path_rate`, not in the paper; `incres.models.layers`) drops the scaled
residual branch of the A, B and C blocks per example in training, linearly over those blocks;
Inception-v4 and the reductions have no residual branch to drop.

Not stated in the paper and taken from TF-slim (and timm): BatchNorm epsilon 0.001, average pools
that exclude the padding from the mean (TensorFlow's "SAME" average pool), no auxiliary heads
(`aux_logits` is always empty). Initialisation (not stated either): He normal, zero biases.

timm twins, for importing its weights (incres.convert_torch) — both follow the TF-slim release:
- `InceptionV4Timm`: three factorised convolutions are transposed relative to the figures: the
  stem's 7x1 -> 1x7 pair (Figure 3) is 1x7 -> 7x1, Inception-B's 5-conv branch (Figure 5:
  1x7, 7x1, 1x7, 7x1) starts with 7x1, and Inception-C's 448 / 512 pair (Figure 6: 1x3 then 3x1)
  is 3x1 then 1x3. Same parameter count.
- `InceptionResNetV2Timm` (55,843,464 parameters, timm's `inception_resnet_v2`): the blocks of
  Figures 16-19 and Reduction-A/B with the paper's filters, but Inception-ResNet-v1's stem without
  its last convolution, then a 3x3/2 max pool and an extra Inception block ("Mixed_5b", 320 output
  channels) where Figure 3's stem is; 10 / 20 / 10 blocks instead of 5 / 10 / 5; the last C block
  unscaled and without ReLU; and a 1x1 convolution to 1536 channels (BN, ReLU) before the pool.
  TF-slim's auxiliary head is left out, as timm does. timm's default dropout is 0 (its
  `drop_rate`); the 0.2 here changes training only.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from incres import ops
from incres.models import layers

ModuleDef = Any


class Conv(NamedTuple):
  """One conv -> BN -> ReLU: `features` filters of `kernel` (rows, columns); `valid`: the "V"."""

  features: int
  kernel: tuple[int, int] = (1, 1)
  stride: int = 1
  valid: bool = False  # "V": no padding. Otherwise "same" (all such convs have stride 1).


class Pool(NamedTuple):
  """A 3x3 pool: "max" (stride 2, valid: the reductions) or "avg" (stride 1, same)."""

  kind: str
  stride: int = 1


# A block: a tuple of branches; a branch: a tuple of Conv, Pool or forks (tuples of Convs).
Block = tuple


def _c(features: int, kernel: int | tuple[int, int] = 1, stride: int = 1, valid: bool = False):
  return Conv(features, (kernel, kernel) if isinstance(kernel, int) else kernel, stride, valid)


MAX = Pool("max", 2)
AVG = Pool("avg", 1)


class ReductionARow(NamedTuple):
  """Table 1: the filters of Figure 7's four convolutions."""

  k: int  # 1x1
  l: int  # 3x3
  m: int  # 3x3 stride 2 V (after k and l)
  n: int  # 3x3 stride 2 V (alone)


# Table 1 of the paper.
REDUCTION_A = {
    "Inception-v4": ReductionARow(192, 224, 256, 384),
    "Inception-ResNet-v1": ReductionARow(192, 192, 256, 384),
    "Inception-ResNet-v2": ReductionARow(256, 256, 384, 384),
}


def reduction_a(row: ReductionARow) -> Block:
  """Figure 7."""
  return ((_c(row.n, 3, 2, True),), (_c(row.k), _c(row.l, 3), _c(row.m, 3, 2, True)), (MAX,))


# --- Stems: (name, Conv | Pool | Block) in order -------------------------------------------------

# Figure 3 (Inception-v4 and Inception-ResNet-v2): 299x299x3 -> 35x35x384.
STEM_V4 = (
    ("conv2d_1a", _c(32, 3, 2, True)),  # 149x149x32
    ("conv2d_2a", _c(32, 3, valid=True)),  # 147x147x32
    ("conv2d_2b", _c(64, 3)),  # 147x147x64
    ("mixed_3a", ((MAX,), (_c(96, 3, 2, True),))),  # 73x73x160
    (
        "mixed_4a",
        (
            (_c(64), _c(96, 3, valid=True)),
            (_c(64), _c(64, (7, 1)), _c(64, (1, 7)), _c(96, 3, valid=True)),
        ),
    ),  # 71x71x192
    ("mixed_5a", ((_c(192, 3, 2, True),), (MAX,))),  # 35x35x384 (the figure omits the stride)
)
# Figure 14 (Inception-ResNet-v1): 299x299x3 -> 35x35x256.
STEM_RESNET_V1 = (
    ("conv2d_1a", _c(32, 3, 2, True)),  # 149x149x32
    ("conv2d_2a", _c(32, 3, valid=True)),  # 147x147x32
    ("conv2d_2b", _c(64, 3)),  # 147x147x64
    ("maxpool_3a", MAX),  # 73x73x64
    ("conv2d_3b", _c(80)),  # 73x73x80
    ("conv2d_4a", _c(192, 3, valid=True)),  # 71x71x192
    ("conv2d_4b", _c(256, 3, 2, True)),  # 35x35x256
)
# 32x32-input variant (`InceptionResNetV1_32`, not in the paper): Figure 14's stem without its
# first stride and with "same" padding, so that only the max pool reduces the grid (as GoogLeNet32
# keeps one of its stem's two reductions): the A blocks run on 15x15, the B blocks on 7x7 and the
# C blocks on 3x3 maps, the ImageNet net's 35/17/8 grid scaled to CIFAR / digits.
STEM_RESNET_V1_32 = (
    ("conv2d_1a", _c(32, 3)),  # 32x32x32
    ("conv2d_2a", _c(32, 3)),  # 32x32x32
    ("conv2d_2b", _c(64, 3)),  # 32x32x64
    ("maxpool_3a", MAX),  # 15x15x64
    ("conv2d_3b", _c(80)),  # 15x15x80
    ("conv2d_4a", _c(192, 3)),  # 15x15x192
    ("conv2d_4b", _c(256, 3)),  # 15x15x256
)
# TF-slim's / timm's Inception-ResNet-v2 stem (not in the paper): 299x299x3 -> 35x35x320.
STEM_RESNET_V2_TIMM = STEM_RESNET_V1[:-1] + (
    ("maxpool_5a", MAX),  # 35x35x192
    (
        "mixed_5b",
        (
            (_c(96),),
            (_c(48), _c(64, 5)),
            (_c(64), _c(96, 3), _c(96, 3)),
            (AVG, _c(64)),
        ),
    ),  # 35x35x320
)

# --- Inception-v4 blocks (Figures 4, 5, 6, 8) ----------------------------------------------------

INCEPTION_A = ((_c(96),), (_c(64), _c(96, 3)), (_c(64), _c(96, 3), _c(96, 3)), (AVG, _c(96)))
INCEPTION_B = (
    (_c(384),),
    (_c(192), _c(224, (1, 7)), _c(256, (7, 1))),
    (_c(192), _c(192, (1, 7)), _c(224, (7, 1)), _c(224, (1, 7)), _c(256, (7, 1))),
    (AVG, _c(128)),
)
INCEPTION_C = (
    (_c(256),),
    (_c(384), (_c(256, (1, 3)), _c(256, (3, 1)))),
    (_c(384), _c(448, (1, 3)), _c(512, (3, 1)), (_c(256, (1, 3)), _c(256, (3, 1)))),
    (AVG, _c(256)),
)
REDUCTION_B = (
    (_c(192), _c(192, 3, 2, True)),
    (_c(256), _c(256, (1, 7)), _c(320, (7, 1)), _c(320, 3, 2, True)),
    (MAX,),
)

# timm's (TF-slim's) orientation of the factorised convolutions; same filters otherwise.
STEM_V4_TIMM = STEM_V4[:4] + (
    (
        "mixed_4a",
        (
            (_c(64), _c(96, 3, valid=True)),
            (_c(64), _c(64, (1, 7)), _c(64, (7, 1)), _c(96, 3, valid=True)),
        ),
    ),
    STEM_V4[5],
)
INCEPTION_B_TIMM = INCEPTION_B[:2] + (
    (_c(192), _c(192, (7, 1)), _c(224, (1, 7)), _c(224, (7, 1)), _c(256, (1, 7))),
    INCEPTION_B[3],
)
INCEPTION_C_TIMM = INCEPTION_C[:2] + (
    (_c(384), _c(448, (3, 1)), _c(512, (1, 3)), (_c(256, (1, 3)), _c(256, (3, 1)))),
    INCEPTION_C[3],
)

# --- Inception-ResNet blocks (the residual branch; the expansion conv is added by the model) -----

# Inception-ResNet-v1: Figures 10, 11, 12, 13.
RESNET_V1_A = ((_c(32),), (_c(32), _c(32, 3)), (_c(32), _c(32, 3), _c(32, 3)))
RESNET_V1_B = ((_c(128),), (_c(128), _c(128, (1, 7)), _c(128, (7, 1))))
RESNET_V1_REDUCTION_B = (
    (_c(256), _c(384, 3, 2, True)),
    (_c(256), _c(256, 3, 2, True)),
    (_c(256), _c(256, 3), _c(256, 3, 2, True)),
    (MAX,),
)
RESNET_V1_C = ((_c(192),), (_c(192), _c(192, (1, 3)), _c(192, (3, 1))))
# Inception-ResNet-v2: Figures 16, 17, 18, 19.
RESNET_V2_A = ((_c(32),), (_c(32), _c(32, 3)), (_c(32), _c(48, 3), _c(64, 3)))
RESNET_V2_B = ((_c(192),), (_c(128), _c(160, (1, 7)), _c(192, (7, 1))))
RESNET_V2_REDUCTION_B = (
    (_c(256), _c(384, 3, 2, True)),
    (_c(256), _c(288, 3, 2, True)),
    (_c(256), _c(288, 3), _c(320, 3, 2, True)),
    (MAX,),
)
RESNET_V2_C = ((_c(192),), (_c(192), _c(224, (1, 3)), _c(256, (3, 1))))


def block_names(num_blocks: tuple[int, int, int]) -> list[str]:
  """The names of the modules after the stem, in order (weight import maps timm's onto these)."""
  a, b, c = num_blocks
  return (
      [f"inception_a{i}" for i in range(a)]
      + ["reduction_a"]
      + [f"inception_b{i}" for i in range(b)]
      + ["reduction_b"]
      + [f"inception_c{i}" for i in range(c)]
  )


def _scaled(c: int, width: float) -> int:
  return max(1, int(round(c * width)))


# Returns the shared module rather than wrapping it in one, so that each unit's variables stay at
# `<name>/conv` and `<name>/bn` (the paths checkpoints and weight import use).
def ConvBN(  # pylint: disable=invalid-name
    layer: Conv,
    width: float = 1.0,
    **kwargs: Any,
) -> layers.ConvBN:
  """The conv (no bias) -> BN -> ReLU unit of the table row `layer`, its filters scaled by `width`.

  `kwargs` (train, bn_epsilon, cpu_conv_vjp, dtype, name) go to `layers.ConvBN`; "same" convs pad
  k // 2 on each side (torch; TensorFlow's "SAME" at stride 1).
  """
  return layers.ConvBN(
      _scaled(layer.features, width),
      layer.kernel,
      layer.stride,
      padding="valid" if layer.valid else "same",
      kernel_init=nn.initializers.variance_scaling(2.0, "fan_in", "normal"),
      **kwargs,
  )


def _pool(x, pool: Pool, cpu_conv_vjp: str):
  if pool.kind == "max":  # The reductions' 3x3/2 "V" max pools.
    return ops.max_pool(x, (3, 3), (pool.stride,) * 2, "VALID", cpu_conv_vjp=cpu_conv_vjp)
  # TensorFlow's "SAME" average pool (timm: count_include_pad=False) averages only real pixels.
  return nn.avg_pool(x, (3, 3), (pool.stride,) * 2, ((1, 1), (1, 1)), count_include_pad=False)


class InceptionBlock(nn.Module):
  """Concatenated branches; with `residual_scale`, an Inception-ResNet block (module doc).

  Layers are named `branch{i}_{j}` (j counts pools too) and fork members `branch{i}_{j}a`, `...b`,
  as timm names them; the expansion convolution is `expand`.
  """

  branches: Block
  unit: ModuleDef = ConvBN
  residual_scale: float | None = None  # None: no residual connection (Inception-v4, reductions).
  relu_after_add: bool = True  # TF-slim's last Inception-ResNet-v2 block: False.
  # False: the non-residual twin of an Inception-ResNet block (the model's `residual` field).
  residual: bool = True
  cpu_conv_vjp: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, drop_rate: float = 0.0):
    """`drop_rate`: stochastic depth of the scaled residual branch (training only; 0: none)."""
    outputs = []
    for i, branch in enumerate(self.branches):
      y = x
      for j, layer in enumerate(branch):
        if isinstance(layer, Pool):
          y = _pool(y, layer, self.cpu_conv_vjp)
        elif isinstance(layer, Conv):
          y = self.unit(layer, name=f"branch{i}_{j}")(y)
        else:  # A fork: parallel convolutions of the same input.
          y = jnp.concatenate(
              [self.unit(c, name=f"branch{i}_{j}{'ab'[k]}")(y) for k, c in enumerate(layer)], -1
          )
      outputs.append(y)
    y = jnp.concatenate(outputs, axis=-1)
    if self.residual_scale is None:
      return y
    # The filter-expansion layer: linear, as many channels as the input (module doc).
    y = ops.conv_factory(self.cpu_conv_vjp, dtype=self.dtype, param_dtype=jnp.float32)(
        x.shape[-1],
        (1, 1),
        kernel_init=nn.initializers.variance_scaling(2.0, "fan_in", "normal"),
        name="expand",
    )(y)
    if not self.residual:  # The twin: the scaling belongs to the addition (Section 3.3) and goes.
      return nn.relu(y) if self.relu_after_add else y
    y = x + layers.drop_path(self, self.residual_scale * y, drop_rate)
    return nn.relu(y) if self.relu_after_add else y


class InceptionV4Family(nn.Module):
  """Stem, A blocks, Reduction-A, B blocks, Reduction-B, C blocks, pool, dropout, classifier.

  Returns `(logits, {'features', 'aux_logits'})` in every mode; these networks have no auxiliary
  classifiers, so `aux_logits` is always an empty tuple.
  """

  num_classes: int = 1000
  stem: tuple = STEM_V4
  block_a: Block = INCEPTION_A
  reduction_a: Block = reduction_a(REDUCTION_A["Inception-v4"])
  block_b: Block = INCEPTION_B
  reduction_b: Block = REDUCTION_B
  block_c: Block = INCEPTION_C
  num_blocks: tuple[int, int, int] = (4, 7, 3)
  # Residual scaling of the A, B and C blocks; None: Inception-v4's plain concatenations.
  residual_scales: tuple[float, float, float] | None = None
  last_block_linear: bool = False  # TF-slim: the last C block unscaled (1.0), no ReLU after it.
  final_conv: int = 0  # TF-slim's 1x1 "conv2d_7b" before the pool (1536); 0: none (the paper).
  # False removes the residual connection of every Inception-ResNet block, the identity term and
  # the scaling that exists for it (Section 3.3), and keeps everything else (the expansion conv,
  # the ReLU): the non-residual twin of the digits study (experiments/residual_study.py). Same
  # parameters; no effect on Inception-v4's blocks or the reductions.
  residual: bool = True
  width: float = 1.0  # Multiplies every filter count (1.0: the paper's; small values for tests).
  dropout_rate: float = 0.2  # Figures 9 and 15: "Dropout (keep 0.8)".
  # Stochastic depth of the residual blocks (A, B, C; not the reductions): the last one's rate,
  # linear over the blocks (incres.models.layers). Not in the paper; needs residual blocks.
  drop_path_rate: float = 0.0
  bn_epsilon: float = 1e-3
  # ImageNet mean/std normalisation -> the [-1, 1] scale the TF-slim / timm weights expect.
  transform_input: bool = False
  frozen_bn: bool = False  # Always normalise with the running statistics (frozen fine-tuning).
  cpu_conv_vjp: str = "auto"  # The CPU gradient paths of incres.ops: "auto", "on" or "off".
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    residual = self.residual_scales is not None and self.residual
    layers.check_drop_path_rate(self.drop_path_rate, "InceptionV4Family", residual)
    unit = functools.partial(
        ConvBN,
        width=self.width,
        train=train and not self.frozen_bn,
        bn_epsilon=self.bn_epsilon,
        cpu_conv_vjp=self.cpu_conv_vjp,
        dtype=self.dtype,
    )
    block = functools.partial(
        InceptionBlock, unit=unit, cpu_conv_vjp=self.cpu_conv_vjp, dtype=self.dtype
    )
    if self.transform_input:  # As GoogLeNet.transform_input.
      mean, std = jnp.array([0.485, 0.456, 0.406]), jnp.array([0.229, 0.224, 0.225])
      x = x * (std / 0.5) + (mean - 0.5) / 0.5
    x = jnp.asarray(x, self.dtype)
    for name, layer in self.stem:
      if isinstance(layer, Pool):
        x = _pool(x, layer, self.cpu_conv_vjp)
      elif isinstance(layer, Conv):
        x = unit(layer, name=name)(x)
      else:
        x = block(layer, name=name)(x)

    scales = self.residual_scales or (None, None, None)
    kinds = {"a": (self.block_a, scales[0]), "b": (self.block_b, scales[1])}
    kinds["c"] = (self.block_c, scales[2])
    names = block_names(self.num_blocks)
    dropping = train and self.drop_path_rate > 0
    rates = iter(layers.drop_path_rates(self.drop_path_rate, sum(self.num_blocks)))
    for name in names:
      if name == "reduction_a":
        x = block(self.reduction_a, name=name)(x)
      elif name == "reduction_b":
        x = block(self.reduction_b, name=name)(x)
      else:
        branches, scale = kinds[name[len("inception_")]]
        last = self.last_block_linear and name == names[-1]
        if last:  # TF-slim: Block8(scale=1.0, activation_fn=None).
          scale = 1.0
        rate = next(rates)
        x = block(
            branches,
            residual_scale=scale,
            relu_after_add=not last,
            residual=self.residual,
            name=name,
        )(x, rate if dropping else 0.0)
    if self.final_conv:
      x = unit(Conv(self.final_conv), name="conv2d_7b")(x)

    features = jnp.mean(x, axis=(1, 2))  # The 8x8 average pool, for any input size.
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(features)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name="head")(y)
    return jnp.asarray(logits, jnp.float32), {
        "features": jnp.asarray(features, jnp.float32),
        "aux_logits": (),
    }


InceptionV4 = functools.partial(InceptionV4Family)
InceptionResNetV1 = functools.partial(
    InceptionV4Family,
    stem=STEM_RESNET_V1,
    block_a=RESNET_V1_A,
    reduction_a=reduction_a(REDUCTION_A["Inception-ResNet-v1"]),
    block_b=RESNET_V1_B,
    reduction_b=RESNET_V1_REDUCTION_B,
    block_c=RESNET_V1_C,
    num_blocks=(5, 10, 5),
    residual_scales=(0.17, 0.10, 0.20),
)
InceptionResNetV2 = functools.partial(
    InceptionV4Family,
    stem=STEM_V4,
    block_a=RESNET_V2_A,
    reduction_a=reduction_a(REDUCTION_A["Inception-ResNet-v2"]),
    block_b=RESNET_V2_B,
    reduction_b=RESNET_V2_REDUCTION_B,
    block_c=RESNET_V2_C,
    num_blocks=(5, 10, 5),
    residual_scales=(0.17, 0.10, 0.20),
)
InceptionV4Timm = functools.partial(
    InceptionV4Family, stem=STEM_V4_TIMM, block_b=INCEPTION_B_TIMM, block_c=INCEPTION_C_TIMM
)
InceptionResNetV2Timm = functools.partial(
    InceptionResNetV2,
    stem=STEM_RESNET_V2_TIMM,
    num_blocks=(10, 20, 10),
    last_block_linear=True,
    final_conv=1536,
)
# 32x32 inputs (digits, CIFAR): the stem above; blocks, reductions and head as InceptionResNetV1.
InceptionResNetV1_32 = functools.partial(InceptionResNetV1, stem=STEM_RESNET_V1_32, num_classes=10)
