"""GoogLeNet / Inception-v1 (Szegedy et al. 2014, arXiv 1409.4842), as the paper describes it.

`GoogLeNet` is Table 1 and Figure 3 exactly: real 5x5 convolutions, a ReLU after every
convolution, biases, no BatchNorm, local response normalisation (LRN) after the first max pool and
after the 3x3 conv, 40% dropout before the classifier, and the two auxiliary classifiers on the
outputs of 4a and 4d (used only in training).

Parameter count: 6,998,552 without the auxiliary heads, 13,378,280 with them. Table 1's column sums
to about 6.8M because it rounds each row and leaves out the biases (and its first row lists 2.7K
parameters / 34M ops, where a 7x7x3x64 conv has 9.4K / 118M): the paper's "about 7 million".

`GoogLeNetBN` is the widely used BatchNorm variant with torchvision's exact structure so its
weights can be imported. DEVIATIONS FROM THE PAPER, all torchvision's: BatchNorm (eps 1e-3) after
every conv and no conv biases, no LRN, a 3x3 conv where the paper has the 5x5 (torchvision's own
"known bug"), a 2x2/2 max pool before 5a, adaptive 4x4 average pools in the auxiliary heads, and
20% dropout before the classifier. 6,624,904 parameters without auxiliary heads, 13,004,888 with.

The 32x32-input variants (`GoogLeNet32`, `GoogLeNetBN32`) replace the 224-pixel stem (7x7/2 conv and
3x3/2 max pool, a 4x reduction) with a 3x3/1 conv, so after the stem's remaining max pool the
inception stages run on 16x16, 8x8 and 4x4 maps — the ImageNet net's 28/14/7 grid scaled to CIFAR.
Everything after the stem is unchanged except that the auxiliary heads' 5x5/3 pool now yields 2x2
maps (so their first fully connected layer has 512 inputs instead of 2048).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from incres import ops

ModuleDef = Any


class InceptionRow(NamedTuple):
  """One row of Table 1: the filters of each branch of an inception module."""

  c1: int
  c3_reduce: int
  c3: int
  c5_reduce: int
  c5: int
  pool_proj: int

  @property
  def out_channels(self) -> int:
    return self.c1 + self.c3 + self.c5 + self.pool_proj


# Table 1 of the paper.
TABLE1 = {
    "3a": InceptionRow(64, 96, 128, 16, 32, 32),
    "3b": InceptionRow(128, 128, 192, 32, 96, 64),
    "4a": InceptionRow(192, 96, 208, 16, 48, 64),
    "4b": InceptionRow(160, 112, 224, 24, 64, 64),
    "4c": InceptionRow(128, 128, 256, 24, 64, 64),
    "4d": InceptionRow(112, 144, 288, 32, 64, 64),
    "4e": InceptionRow(256, 160, 320, 32, 128, 128),
    "5a": InceptionRow(256, 160, 320, 32, 128, 128),
    "5b": InceptionRow(384, 192, 384, 48, 128, 128),
}
# Table 1's max pools 3x3/2 between the stages follow these modules (`GoogLeNet.pool4_window` sets
# the second one's window: torchvision's is 2x2).
POOL_AFTER = ("3b", "4e")
AUX_AFTER = ("4a", "4d")


def local_response_norm(
    x: jnp.ndarray, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0
) -> jnp.ndarray:
  """Caffe's across-channel LRN: x / (k + alpha / size * sum_{window} x^2) ** beta.

  The window is `size` channels centred on each channel (zero beyond the edges). Caffe divides
  alpha by the window size; TensorFlow's `local_response_normalization` does not.
  """
  dtype = x.dtype
  x = x.astype(jnp.float32)  # The power and the sum of squares are unstable in bf16.
  half = size // 2
  sq = jnp.pad(jnp.square(x), ((0, 0),) * (x.ndim - 1) + ((half, size - 1 - half),))
  # A reduce-window, not a sum of shifted slices: XLA:CPU fused the slices' gradient with the power
  # and recomputed it per slice (GoogLeNet train step 9.6 vs 11.7 img/s on 2 cores).
  window_sum = jax.lax.reduce_window(
      sq, 0.0, jax.lax.add, (1,) * (x.ndim - 1) + (size,), (1,) * x.ndim, "VALID"
  )
  return (x / (k + alpha / size * window_sum) ** beta).astype(dtype)


def max_pool_ceil(
    x: jnp.ndarray, window: int, stride: int, pad: int = 0, cpu_conv_vjp: str = "auto"
) -> jnp.ndarray:
  """Max pool with Caffe's / torch's `ceil_mode=True` output size (extra -inf padding at the end)."""
  pads = []
  for n in x.shape[1:3]:
    out = math.ceil((n + 2 * pad - window) / stride) + 1
    if (out - 1) * stride >= n + pad:  # The last window must start inside the image (torch rule).
      out -= 1
    pads.append((pad, (out - 1) * stride + window - n - pad))
  return ops.max_pool(x, (window, window), (stride, stride), pads, cpu_conv_vjp=cpu_conv_vjp)


def adaptive_avg_pool(x: jnp.ndarray, out_size: int) -> jnp.ndarray:
  """torch's `adaptive_avg_pool2d`: bin i spans [floor(i*n/out), ceil((i+1)*n/out))."""
  for axis in (1, 2):
    n = x.shape[axis]
    bins = []
    for i in range(out_size):
      lo, hi = (i * n) // out_size, -(-((i + 1) * n) // out_size)
      bins.append(jnp.mean(jax.lax.slice_in_dim(x, lo, hi, axis=axis), axis=axis, keepdims=True))
    x = jnp.concatenate(bins, axis=axis)
  return x


def _scaled(c: int, width: float) -> int:
  return max(1, int(round(c * width)))


class ConvUnit(nn.Module):
  """conv -> (BN) -> ReLU with symmetric k // 2 padding (Caffe's and torch's)."""

  features: int
  kernel: int
  stride: int = 1
  batch_norm: bool = False
  bn_epsilon: float = 1e-3
  train: bool = False
  conv_init: str = "xavier"
  # Builds the conv with symmetric k // 2 padding; `GoogLeNet` binds its `cpu_conv_vjp` into it.
  conv: ModuleDef = ops.conv_factory()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    # The paper does not state its initialisation. "xavier": Xavier (Caffe's: uniform, var
    # 1/fan_in) and constant 0.2 biases, as in the BVLC replication of GoogLeNet; through 22 ReLU
    # layers it shrinks the input-dependent part of the signal about 0.7x per inception module,
    # so training starts slowly. "he": He et al. (2015) normal, var 2/fan_in, zero biases, which
    # keeps that signal's scale with depth.
    if self.conv_init == "xavier":
      kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")
      bias_init = nn.initializers.constant(0.2)
    elif self.conv_init == "he":
      kernel_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
      bias_init = nn.initializers.zeros
    else:
      raise ValueError(f"Unknown GoogLeNet conv_init {self.conv_init!r}; use 'xavier' or 'he'.")
    x = self.conv(
        self.features,
        (self.kernel, self.kernel),
        (self.stride, self.stride),
        use_bias=not self.batch_norm,
        kernel_init=kernel_init,
        bias_init=bias_init,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        name="conv",
    )(x)
    if self.batch_norm:
      x = nn.BatchNorm(
          use_running_average=not self.train,
          momentum=0.9,
          epsilon=self.bn_epsilon,
          dtype=self.dtype,
          param_dtype=jnp.float32,
          name="bn",
      )(x)
    return nn.relu(x)


class InceptionModule(nn.Module):
  """Figure 2: (b) with dimension reductions, or (a) naive when `reduce=False`.

  The naive form concatenates a 1x1 conv, a 3x3 conv, a 5x5 conv and the 3x3 max pool itself (no
  reductions, no pool projection); its output has c1 + c3 + c5 + input channels.
  """

  row: InceptionRow
  reduce: bool = True
  branch5_kernel: int = 5  # GoogLeNetBN: 3, as torchvision.
  unit: ModuleDef = ConvUnit
  pool: Callable[..., jnp.ndarray] = max_pool_ceil

  @nn.compact
  def __call__(self, x):
    r, unit = self.row, self.unit
    b1 = unit(r.c1, 1, name="b1")(x)
    pooled = self.pool(x, 3, 1, pad=1)
    if self.reduce:
      b3 = unit(r.c3, 3, name="b3")(unit(r.c3_reduce, 1, name="b3_reduce")(x))
      b5 = unit(r.c5, self.branch5_kernel, name="b5")(unit(r.c5_reduce, 1, name="b5_reduce")(x))
      b4 = unit(r.pool_proj, 1, name="pool_proj")(pooled)
    else:
      b3 = unit(r.c3, 3, name="b3")(x)
      b5 = unit(r.c5, self.branch5_kernel, name="b5")(x)
      b4 = pooled
    return jnp.concatenate([b1, b3, b5, b4], axis=-1)


class AuxHead(nn.Module):
  """Auxiliary classifier: avg pool 5x5/3, 1x1 conv 128, FC 1024, dropout 70%, linear."""

  num_classes: int
  unit: ModuleDef
  width: float = 1.0
  adaptive_pool: bool = False  # GoogLeNetBN: torchvision's adaptive 4x4 average pool.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    if self.adaptive_pool:
      x = adaptive_avg_pool(x, 4)
    else:
      x = nn.avg_pool(x, (5, 5), strides=(3, 3), padding="VALID")
    x = self.unit(_scaled(128, self.width), 1, name="conv")(x)
    x = x.reshape((x.shape[0], -1))
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32)
    x = nn.relu(dense(_scaled(1024, self.width), name="fc1")(x))
    x = nn.Dropout(0.7, deterministic=not train)(x)
    return jnp.asarray(dense(self.num_classes, name="fc2")(x), jnp.float32)


class GoogLeNet(nn.Module):
  """GoogLeNet over `TABLE1`; the fields select the paper's network or its BN variant.

  Returns `(logits, {'features', 'aux_logits'})` in every mode; `aux_logits` holds the two auxiliary
  classifiers' logits when `train=True` (and `aux_heads`), and is an empty tuple otherwise.
  """

  num_classes: int = 1000
  width: float = 1.0  # Multiplies every channel count (1.0: the paper's; small values for tests).
  stem: str = "imagenet"  # "imagenet" (224x224 input) or "cifar" (32x32 input).
  batch_norm: bool = False
  lrn: bool = True
  branch5_kernel: int = 5
  pool4_window: int = 3  # The max pool before 5a: 3x3/2 (paper), 2x2/2 (torchvision).
  dropout_rate: float = 0.4
  aux_heads: bool = True
  aux_adaptive_pool: bool = False
  # torchvision's `transform_input` (its pretrained GoogLeNet expects it; see convert_torch.py).
  transform_input: bool = False
  frozen_bn: bool = False  # Always normalise with the running statistics (frozen fine-tuning).
  conv_init: str = "xavier"  # "xavier" (BVLC replication) or "he"; see ConvUnit.
  cpu_conv_vjp: str = "auto"  # The CPU gradient paths of incres.ops: "auto", "on" or "off".
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    # `ops.Conv` is `nn.Conv` (same parameters) with a fast weight gradient on XLA:CPU.
    unit = functools.partial(
        ConvUnit,
        batch_norm=self.batch_norm,
        train=train and not self.frozen_bn,
        conv_init=self.conv_init,
        conv=ops.conv_factory(self.cpu_conv_vjp),
        dtype=self.dtype,
    )
    pool = functools.partial(max_pool_ceil, cpu_conv_vjp=self.cpu_conv_vjp)
    pool_windows = dict(zip(POOL_AFTER, (3, self.pool4_window)))
    c = functools.partial(_scaled, width=self.width)
    maybe_lrn = local_response_norm if self.lrn else (lambda y: y)

    if self.transform_input:  # ImageNet mean/std normalisation -> the TF weights' [-1, 1] scale.
      mean, std = jnp.array([0.485, 0.456, 0.406]), jnp.array([0.229, 0.224, 0.225])
      x = x * (std / 0.5) + (mean - 0.5) / 0.5
    x = jnp.asarray(x, self.dtype)
    if self.stem == "imagenet":
      x = unit(c(64), 7, stride=2, name="conv1")(x)  # 112x112
      x = pool(x, 3, 2)  # 56x56
    elif self.stem == "cifar":
      x = unit(c(64), 3, name="conv1")(x)  # 32x32
    else:
      raise ValueError(f"Unknown stem {self.stem!r}; use 'imagenet' or 'cifar'.")
    x = maybe_lrn(x)
    x = unit(c(64), 1, name="conv2_reduce")(x)
    x = unit(c(192), 3, name="conv2")(x)
    x = maybe_lrn(x)
    x = pool(x, 3, 2)  # 28x28 (cifar stem: 16x16)

    aux_logits = []
    for name, row in TABLE1.items():
      row = InceptionRow(*(c(v) for v in row))
      x = InceptionModule(
          row, branch5_kernel=self.branch5_kernel, unit=unit, pool=pool, name=f"inception_{name}"
      )(x)
      # The heads run only in training, but `init` (train=False) must still create their params.
      if name in AUX_AFTER and self.aux_heads and (train or self.is_initializing()):
        aux = AuxHead(
            self.num_classes,
            unit,
            width=self.width,
            adaptive_pool=self.aux_adaptive_pool,
            dtype=self.dtype,
            name=f"aux_{name}",
        )(x, train)
        if train:
          aux_logits.append(aux)
      if name in pool_windows:
        x = pool(x, pool_windows[name], 2)  # After 3b: 14x14 (8x8); after 4e: 7x7 (4x4).

    features = jnp.mean(x, axis=(1, 2))  # The 7x7 average pool, for any input size.
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(features)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name="head")(y)
    return jnp.asarray(logits, jnp.float32), {
        "features": jnp.asarray(features, jnp.float32),
        "aux_logits": tuple(aux_logits),
    }


GoogLeNetBN = functools.partial(
    GoogLeNet,
    batch_norm=True,
    lrn=False,
    branch5_kernel=3,
    pool4_window=2,
    dropout_rate=0.2,
    aux_adaptive_pool=True,
)
GoogLeNet32 = functools.partial(GoogLeNet, stem="cifar", num_classes=10)
GoogLeNetBN32 = functools.partial(GoogLeNetBN, stem="cifar", num_classes=10)
