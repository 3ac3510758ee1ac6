"""Layers shared by several model families.

`ConvBN` is the conv -> BatchNorm -> ReLU unit of Inception-v3 (`incres.models.inception_v3`) and
of Inception-v4 / Inception-ResNet (`incres.models.inception_v4`): torchvision's `BasicConv2d`,
TF-slim's `conv2d` under its Inception arg scope.

Stochastic depth ("drop path"; Huang et al. 2016, "Deep Networks with Stochastic Depth", arXiv
1603.09382), in every residual family (`ResNet`, `PreActResNet`, the Inception-ResNets), set by the
model field `drop_path_rate` (`config.model_kwargs.drop_path_rate`):
- `drop_path`: in training, each example's residual branch is kept with probability 1 - rate and
  then scaled by 1 / (1 - rate), or zeroed (the identity path alone remains); in evaluation it is
  the identity. This is torchvision's `ops.stochastic_depth(mode="row")` and timm's `DropPath`. The
  paper drops a block for the whole mini-batch and scales by the survival probability at test time
  instead; per-example draws with rescaling at training time are what the later recipes (timm's,
  torchvision's) use and leave evaluation untouched.
- `drop_path_rates`: the linear decay over depth. Block i of the network's N residual blocks
  (counted across stages from 0) drops with rate * i / (N - 1): the first block never, the last
  with `rate`. This is timm's rule (`resnet.py`'s "stochastic depth linear decay rule") and
  torchvision's ConvNeXt and Swin; torchvision's EfficientNet uses i / N (the last block below
  `rate`), and the paper's p_l = 1 - (l / L)(1 - p_L) for blocks l = 1..L drops block l with
  rate * l / L (the first block too). With N = 1 the one block drops with `rate`.
- The draws come from the "dropout" RNG stream that `train.train_step` passes in (the run's key
  folded with the step), so a step's masks depend only on (config, step) and resuming is exact.
  Flax folds each block's module path into the stream, so blocks draw independently.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from incres import errors
from incres import ops


def check_drop_path_rate(rate: float, model: str, residual: bool = True) -> None:
  """Raises `errors.ConfigError` unless `rate` is in [0, 1) and the model has residual blocks."""
  if not 0.0 <= rate < 1.0:
    raise errors.ConfigError(
        f"model_kwargs.drop_path_rate={rate!r} for {model}: stochastic depth needs a rate in"
        " [0, 1) (the last residual block's drop probability; 0 turns it off). Set"
        " --config.model_kwargs.drop_path_rate=0.1, for example."
    )
  if rate and not residual:
    raise errors.ConfigError(
        f"model_kwargs.drop_path_rate={rate!r}, but this {model} has no residual blocks (a plain"
        " twin, or Inception-v4): stochastic depth drops a block's residual branch and keeps its"
        " identity path, so it needs one. Leave drop_path_rate at 0 for this model."
    )


def drop_path_rates(rate: float, num_blocks: int) -> tuple[float, ...]:
  """The drop rate of each of `num_blocks` residual blocks: rate * i / (N - 1) (module doc)."""
  if num_blocks == 1:
    return (float(rate),)
  return tuple(float(rate) * i / (num_blocks - 1) for i in range(num_blocks))


def drop_path(module: nn.Module, y: jax.Array, rate: float | jax.Array) -> jax.Array:
  """`y` (a residual branch, batch first) with each example's row zeroed with probability `rate`
  and the kept rows scaled by 1 / (1 - rate) (module doc). `rate` 0 (a Python number) returns `y`
  itself and draws nothing; a traced `rate` (a scanned block's) always draws. Call it from
  `module`'s compact method, in training only: the mask comes from its "dropout" stream.
  """
  if isinstance(rate, (int, float)) and rate == 0:
    return y
  keep = 1.0 - jnp.asarray(rate, jnp.float32)
  shape = (y.shape[0],) + (1,) * (y.ndim - 1)
  mask = jax.random.bernoulli(module.make_rng("dropout"), keep, shape)
  return y * (mask.astype(jnp.float32) / keep).astype(y.dtype)


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
