"""Inception-v3 (Szegedy et al. 2015, "Rethinking the Inception Architecture", arXiv 1512.00567).

`InceptionV3` is the network as Google released it (the TF-slim graph, which torchvision's
`inception_v3` copies layer for layer): 299x299 input, a stem of 3x3 convolutions, three 35x35
modules (`InceptionA`), a grid-size reduction to 17x17 (`InceptionB`), four 17x17 modules with
7x7 convolutions factorised into 1x7 and 7x1 (`InceptionC`), a reduction to 8x8 (`InceptionD`)
and two 8x8 modules with expanded 1x3 / 3x1 filter banks (`InceptionE`); BatchNorm (eps 1e-3)
after every convolution, no conv biases; a BatchNorm'd auxiliary classifier on the last 17x17
map, used only in training. 23,834,568 parameters without the auxiliary head, 27,161,264 with it:
exactly torchvision's `inception_v3(aux_logits=False / True)`.

DEVIATIONS FROM THE PAPER, all the released graph's; they are what gives torchvision's counts (and
makes its weights importable), so they are the default here:
- Stem (Table 1): the paper lists conv 3x3/1 (80), conv 3x3/2 (192), conv 3x3/1 (288) after the
  first max pool, giving 35x35x288. The released graph has a 1x1 conv (80), a 3x3 conv (192) and a
  second 3x3/2 max pool, giving 35x35x192 (`STEM`).
- 35x35 modules (Table 1: "3 x Inception, Figure 5", every 5x5 factorised into two 3x3): the
  released modules keep one real 5x5 branch (48 -> 64) beside the double-3x3 branch, and their
  widths grow 256, 288, 288 (`InceptionA`, pool projections 32, 64, 64).
- 17x17 modules (Table 1: five of Figure 6 with n = 7): the released graph has four (`LAYOUT`,
  mixed_6b..6e), 768 channels wide, with 128, 160, 160, 192 channels in the 7x7 branches.
- Grid reductions (Figure 10) as released: 35->17 is a 3x3/2 conv (384) beside a 1x1 -> 3x3 ->
  3x3/2 branch (64, 96, 96) and a max pool; 17->8 is 1x1 -> 3x3/2 (192, 320) beside
  1x1 -> 1x7 -> 7x1 -> 3x3/2 (192 each) and a max pool.
- Auxiliary head (Figure 8, "BN-auxiliary": batch-normalised fully connected layer): 5x5/3 average
  pool, 1x1 conv 128, then a 5x5 conv 768 with BatchNorm that plays the role of the batch-normalised
  FC layer on the 5x5 map, then the classifier (no BatchNorm on the classifier itself).
- Average pools in the modules count the zero padding (torch's `count_include_pad=True`, which
  torchvision's port uses; TF-slim's "SAME" average pool does not) -- kept so that converted
  torchvision weights give torchvision's logits.
- Dropout before the classifier: 50% (torchvision's; TF-slim keeps 80%, i.e. drops 20%; the paper
  gives none). `experiments/inception.py` sets TF-slim's.
The aux head's 5x5/3 pool then 5x5 valid conv needs a 17x17 map, so training with the head needs
299x299 inputs (or larger); without it (`aux_heads=False`, or in evaluation) any input from 75x75
up works, as in torchvision.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from incres import ops
from incres.models.layers import ConvBN  # torchvision's `BasicConv2d` (eps 1e-3, He init).

ModuleDef = Any


class StemConv(NamedTuple):
  """One convolution of the stem: its name (torchvision's, lower-cased) and shape."""

  name: str
  features: int
  kernel: int
  stride: int = 1
  padding: str = "valid"  # "valid" (torchvision's default padding=0) or "same" (k // 2 each side).


# The stem as released; "max_pool" is a 3x3/2 max pool. 299 -> 149 -> 147 -> 147 -> 73 -> 73 ->
# 71 -> 35.
STEM = (
    StemConv("conv2d_1a_3x3", 32, 3, stride=2),
    StemConv("conv2d_2a_3x3", 32, 3),
    StemConv("conv2d_2b_3x3", 64, 3, padding="same"),
    "max_pool",
    StemConv("conv2d_3b_1x1", 80, 1),
    StemConv("conv2d_4a_3x3", 192, 3),
    "max_pool",
)

# The inception modules in order: (name, block, width argument). A: the pool projection's filters;
# C: the filters inside the factorised 7x7 branches; B, D, E have none.
LAYOUT = (
    ("mixed_5b", "A", 32),  # 35x35x256
    ("mixed_5c", "A", 64),  # 35x35x288
    ("mixed_5d", "A", 64),  # 35x35x288
    ("mixed_6a", "B", 0),  # 17x17x768
    ("mixed_6b", "C", 128),
    ("mixed_6c", "C", 160),
    ("mixed_6d", "C", 160),
    ("mixed_6e", "C", 192),  # 17x17x768
    ("mixed_7a", "D", 0),  # 8x8x1280
    ("mixed_7b", "E", 0),  # 8x8x2048
    ("mixed_7c", "E", 0),  # 8x8x2048
)
AUX_AFTER = "mixed_6e"  # The last 17x17 module.


def _scaled(c: int, width: float) -> int:
  return max(1, int(round(c * width)))


def _avg_pool_3x3(x):
  """3x3/1 average pool, zero padding counted (torch's default `count_include_pad=True`)."""
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=True)


class InceptionA(nn.Module):
  """35x35 module: 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg pool -> 1x1 (`pool_features`)."""

  pool_features: int
  unit: ModuleDef
  c: Callable[[int], int]

  @nn.compact
  def __call__(self, x):
    u, c = self.unit, self.c
    b1 = u(c(64), (1, 1), name="branch1x1")(x)
    b5 = u(c(48), (1, 1), name="branch5x5_1")(x)
    b5 = u(c(64), (5, 5), name="branch5x5_2")(b5)
    b3 = u(c(64), (1, 1), name="branch3x3dbl_1")(x)
    b3 = u(c(96), (3, 3), name="branch3x3dbl_2")(b3)
    b3 = u(c(96), (3, 3), name="branch3x3dbl_3")(b3)
    bp = u(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """35x35 -> 17x17 reduction (Figure 10): 3x3/2 | 1x1 -> 3x3 -> 3x3/2 | max pool 3x3/2."""

  unit: ModuleDef
  c: Callable[[int], int]
  pool: Callable[..., jax.Array]

  @nn.compact
  def __call__(self, x):
    u, c = self.unit, self.c
    b3 = u(c(384), (3, 3), stride=2, padding="valid", name="branch3x3")(x)
    bd = u(c(64), (1, 1), name="branch3x3dbl_1")(x)
    bd = u(c(96), (3, 3), name="branch3x3dbl_2")(bd)
    bd = u(c(96), (3, 3), stride=2, padding="valid", name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, self.pool(x)], axis=-1)


class InceptionC(nn.Module):
  """17x17 module (Figure 6, n = 7): 1x1 | 1x7 -> 7x1 | two 7x1 -> 1x7 | avg pool -> 1x1."""

  channels_7x7: int
  unit: ModuleDef
  c: Callable[[int], int]

  @nn.compact
  def __call__(self, x):
    u, c, c7 = self.unit, self.c, self.channels_7x7
    b1 = u(c(192), (1, 1), name="branch1x1")(x)
    b7 = u(c7, (1, 1), name="branch7x7_1")(x)
    b7 = u(c7, (1, 7), name="branch7x7_2")(b7)
    b7 = u(c(192), (7, 1), name="branch7x7_3")(b7)
    bd = u(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = u(c7, (7, 1), name="branch7x7dbl_2")(bd)
    bd = u(c7, (1, 7), name="branch7x7dbl_3")(bd)
    bd = u(c7, (7, 1), name="branch7x7dbl_4")(bd)
    bd = u(c(192), (1, 7), name="branch7x7dbl_5")(bd)
    bp = u(c(192), (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """17x17 -> 8x8 reduction: 1x1 -> 3x3/2 | 1x1 -> 1x7 -> 7x1 -> 3x3/2 | max pool 3x3/2."""

  unit: ModuleDef
  c: Callable[[int], int]
  pool: Callable[..., jax.Array]

  @nn.compact
  def __call__(self, x):
    u, c = self.unit, self.c
    b3 = u(c(192), (1, 1), name="branch3x3_1")(x)
    b3 = u(c(320), (3, 3), stride=2, padding="valid", name="branch3x3_2")(b3)
    b7 = u(c(192), (1, 1), name="branch7x7x3_1")(x)
    b7 = u(c(192), (1, 7), name="branch7x7x3_2")(b7)
    b7 = u(c(192), (7, 1), name="branch7x7x3_3")(b7)
    b7 = u(c(192), (3, 3), stride=2, padding="valid", name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, self.pool(x)], axis=-1)


class InceptionE(nn.Module):
  """8x8 module (Figure 7): 1x1 | 1x1 -> (1x3, 3x1) | 1x1 -> 3x3 -> (1x3, 3x1) | pool -> 1x1."""

  unit: ModuleDef
  c: Callable[[int], int]

  @nn.compact
  def __call__(self, x):
    u, c = self.unit, self.c
    b1 = u(c(320), (1, 1), name="branch1x1")(x)
    b3 = u(c(384), (1, 1), name="branch3x3_1")(x)
    b3 = [
        u(c(384), (1, 3), name="branch3x3_2a")(b3),
        u(c(384), (3, 1), name="branch3x3_2b")(b3),
    ]
    bd = u(c(448), (1, 1), name="branch3x3dbl_1")(x)
    bd = u(c(384), (3, 3), name="branch3x3dbl_2")(bd)
    bd = [
        u(c(384), (1, 3), name="branch3x3dbl_3a")(bd),
        u(c(384), (3, 1), name="branch3x3dbl_3b")(bd),
    ]
    bp = u(c(192), (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, *b3, *bd, bp], axis=-1)


class AuxHead(nn.Module):
  """Figure 8's auxiliary classifier as released: avg pool 5x5/3, 1x1 conv 128, 5x5 conv 768, FC."""

  num_classes: int
  unit: ModuleDef
  c: Callable[[int], int]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.avg_pool(x, (5, 5), strides=(3, 3), padding="VALID")  # 17x17 -> 5x5
    x = self.unit(self.c(128), (1, 1), name="conv0")(x)
    # torchvision's and TF-slim's initial scales for this head (truncated normal 0.01, 0.001).
    init = functools.partial(nn.initializers.truncated_normal, lower=-2.0, upper=2.0)
    x = self.unit(self.c(768), (5, 5), padding="valid", kernel_init=init(0.01), name="conv1")(x)
    x = jnp.mean(x, axis=(1, 2))  # torchvision's adaptive 1x1 pool (a no-op on 299 inputs).
    x = nn.Dense(
        self.num_classes,
        kernel_init=init(0.001),
        dtype=self.dtype,
        param_dtype=jnp.float32,
        name="fc",
    )(x)
    return jnp.asarray(x, jnp.float32)


class InceptionV3(nn.Module):
  """Inception-v3 over `STEM` and `LAYOUT`.

  Returns `(logits, {'features', 'aux_logits'})` in every mode: `features` is the 2048-wide pooled
  map before dropout; `aux_logits` holds the auxiliary classifier's logits when `train=True` (and
  `aux_heads`), and is an empty tuple otherwise.
  """

  num_classes: int = 1000
  width: float = 1.0  # Multiplies every channel count (1.0: the released net's; small for tests).
  # The modules after the stem; tests use a shorter table (one module of each kind) to compile
  # in a fraction of the time. The auxiliary head follows the module named `AUX_AFTER`.
  layout: tuple[tuple[str, str, int], ...] = LAYOUT
  dropout_rate: float = 0.5  # torchvision's; TF-slim's is 0.2 (keep 0.8).
  aux_heads: bool = True
  bn_momentum: float = 0.9  # Flax's convention (torch's 0.1); TF-slim trains with 0.9997.
  # torchvision's `transform_input` (its pretrained weights expect it; see convert_torch.py).
  transform_input: bool = False
  frozen_bn: bool = False  # Always normalise with the running statistics (frozen fine-tuning).
  cpu_conv_vjp: str = "auto"  # The CPU gradient paths of incres.ops: "auto", "on" or "off".
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    unit = functools.partial(
        ConvBN,
        train=train and not self.frozen_bn,
        bn_momentum=self.bn_momentum,
        cpu_conv_vjp=self.cpu_conv_vjp,
        dtype=self.dtype,
    )
    pool = functools.partial(
        ops.max_pool, window=(3, 3), strides=(2, 2), cpu_conv_vjp=self.cpu_conv_vjp
    )
    c = functools.partial(_scaled, width=self.width)
    blocks = {
        "A": lambda arg, name: InceptionA(c(arg), unit, c, name=name),
        "B": lambda arg, name: InceptionB(unit, c, pool, name=name),
        "C": lambda arg, name: InceptionC(c(arg), unit, c, name=name),
        "D": lambda arg, name: InceptionD(unit, c, pool, name=name),
        "E": lambda arg, name: InceptionE(unit, c, name=name),
    }

    if self.transform_input:  # ImageNet mean/std normalisation -> the TF weights' [-1, 1] scale.
      mean, std = jnp.array([0.485, 0.456, 0.406]), jnp.array([0.229, 0.224, 0.225])
      x = x * (std / 0.5) + (mean - 0.5) / 0.5
    x = jnp.asarray(x, self.dtype)
    for layer in STEM:
      if layer == "max_pool":
        x = pool(x)
      else:
        k = (layer.kernel, layer.kernel)
        x = unit(c(layer.features), k, layer.stride, layer.padding, name=layer.name)(x)

    aux_logits = []
    for name, kind, arg in self.layout:
      x = blocks[kind](arg, name)(x)
      # The head runs only in training, but `init` (train=False) must still create its params.
      if name == AUX_AFTER and self.aux_heads and (train or self.is_initializing()):
        aux = AuxHead(self.num_classes, unit, c, dtype=self.dtype, name="aux_6e")(x)
        if train:
          aux_logits.append(aux)

    features = jnp.mean(x, axis=(1, 2))  # The 8x8 average pool, for any input size.
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(features)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name="head")(y)
    return jnp.asarray(logits, jnp.float32), {
        "features": jnp.asarray(features, jnp.float32),
        "aux_logits": tuple(aux_logits),
    }
