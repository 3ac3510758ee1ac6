"""Parameter and multiply-add counts, computed from shapes alone (no compile, no FLOPs run).

Multiply-adds are counted by formula for every convolution and dense layer that runs in an
inference forward pass (auxiliary heads excluded): for a conv, output elements x kernel height x
kernel width x input channels / groups; for a dense layer, output elements x input features.
Pooling, normalisation, additions and activations are not counted, as in the papers. The counting
runs under `jax.eval_shape` (no compile), and `count` traces the ResNets with each stage's repeated
blocks as one `nn.scan` (traced once, counted once per block), so CifarResNet1202 takes about a
second, not the 30-80 s of tracing its 1,202 layers one by one.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def abstract_variables(model: nn.Module, image_size: int, batch: int = 1):
  """The model's variables as ShapeDtypeStructs (auxiliary heads included)."""
  x = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init({"params": jax.random.key(0)}, x, train=False), x)


def count_params(variables) -> int:
  """Number of trainable parameters (the `params` collection; BN statistics excluded)."""
  return sum(math.prod(p.shape) for p in jax.tree.leaves(variables["params"]))


def count_macs(model: nn.Module, image_size: int, variables=None) -> int:
  """Multiply-adds of one `image_size` x `image_size` image through the inference forward pass."""
  return sum(macs_by_layer(model, image_size, variables).values())


def count(model: nn.Module, image_size: int) -> tuple[int, int]:
  """(parameters, multiply-adds) as `count_params` and `count_macs` give them, from one quick trace.

  A ResNet's repeated blocks are traced as one `nn.scan` a stage: the parameters are the same
  arrays stacked, and each conv in the scan counts once per block.
  """
  if getattr(model, "scan_blocks", True) is False:
    model = model.clone(scan_blocks=True)
  variables = abstract_variables(model, image_size)
  return count_params(variables), sum(_layer_macs(model, image_size, variables).values())


def _unscanned(model: nn.Module, variables):
  """A scanned ResNet as its unscanned twin: a scan's body runs (and is counted) only once."""
  if not getattr(model, "scan_blocks", False):
    return model, variables
  from incres.models import resnet  # pylint: disable=g-import-not-at-top

  return model.clone(scan_blocks=False), (
      None if variables is None else resnet.unstack_blocks(variables)
  )


def macs_by_layer(model: nn.Module, image_size: int, variables=None) -> dict[str, int]:
  """Multiply-adds of each conv / dense layer, keyed by its module path ("inception_3a/b1/conv")."""
  model, variables = _unscanned(model, variables)
  if variables is None:
    variables = abstract_variables(model, image_size)
  return _layer_macs(model, image_size, variables)


def _layer_macs(model: nn.Module, image_size: int, variables) -> dict[str, int]:
  """`macs_by_layer` of any layout: a layer inside an `nn.scan` counts once per iteration."""
  counts = {}

  def repeats(path: tuple[str, ...], kernel_ndim: int) -> int:
    """Iterations of the scans around a layer: its kernel's leading axes beyond its own."""
    tree = variables["params"]
    for name in path:
      tree = tree[name]
    return math.prod(tree["kernel"].shape[:-kernel_ndim])

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name == "__call__" and isinstance(module, (nn.Conv, nn.Dense)):
      in_features = args[0].shape[-1]
      macs = math.prod(out.shape) * in_features
      kernel_ndim = 2
      if isinstance(module, nn.Conv):
        macs = macs * math.prod(module.kernel_size) // module.feature_group_count
        kernel_ndim = len(module.kernel_size) + 2
      counts["/".join(module.path)] = macs * repeats(module.path, kernel_ndim)
    return out

  def forward(variables, x):
    with nn.intercept_methods(interceptor):
      return model.apply(variables, x, train=False)

  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  jax.eval_shape(forward, variables, x)
  return counts


def xla_macs(model: nn.Module, image_size: int, variables=None) -> float:
  """XLA's cost analysis of the lowered (uncompiled) inference forward pass: flops / 2.

  A cross-check of the formula count; it also counts the element-wise work (BN, ReLU, pooling)
  that the papers leave out, so it reads a little higher than `count_macs` on most models.
  """
  model, variables = _unscanned(model, variables)
  if variables is None:
    variables = abstract_variables(model, image_size)
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  lowered = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x)
  return lowered.cost_analysis()["flops"] / 2
