"""Layers shared by several model families.

`ConvBN` is the conv -> BatchNorm -> ReLU unit of Inception-v3 (`incres.models.inception_v3`) and
of Inception-v4 / Inception-ResNet (`incres.models.inception_v4`): torchvision's `BasicConv2d`,
TF-slim's `conv2d` under its Inception arg scope.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from incres import ops


class ConvBN(nn.Module):
  """conv (no bias) -> BatchNorm -> ReLU, named `conv` and `bn` (weight import relies on both).

  `padding="same"` pads k // 2 on each side of each axis (torch's; TensorFlow's "SAME" at stride 1,
  which is where the Inception nets use it); `"valid"` pads nothing (the papers' "V").
  """

  features: int
  kernel: tuple[int, int]
  stride: int = 1
  padding: str = "same"
  train: bool = False
  bn_momentum: float = 0.9  # torch's momentum 0.1.
  bn_epsilon: float = 1e-3  # TF-slim's (torchvision's Inception-v3 and timm copy it).
  # He (fan-in) initialisation, as TF-slim's arg scope; the Inception papers state none.
  kernel_init: Callable[..., jax.Array] = nn.initializers.variance_scaling(
      2.0, "fan_in", "truncated_normal"
  )
  cpu_conv_vjp: str = "auto"  # The CPU gradient paths of incres.ops: "auto", "on" or "off".
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.padding not in ("same", "valid"):
      raise ValueError(f"Unknown padding {self.padding!r}; use 'same' or 'valid'.")
    # `ops.Conv` is `nn.Conv` (same parameters) with a fast weight gradient on XLA:CPU.
    conv = ops.conv_factory(
        self.cpu_conv_vjp, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32
    )
    x = conv(
        self.features,
        self.kernel,
        (self.stride, self.stride),
        padding=None if self.padding == "same" else ((0, 0), (0, 0)),
        kernel_init=self.kernel_init,
        name="conv",
    )(x)
    x = nn.BatchNorm(
        use_running_average=not self.train,
        momentum=self.bn_momentum,
        epsilon=self.bn_epsilon,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        name="bn",
    )(x)
    return nn.relu(x)
