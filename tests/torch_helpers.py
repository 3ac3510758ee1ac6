"""Random models on both sides of the weight-import tests (a helper module, not a test file).

torchvision and timm models with random weights and random BatchNorm statistics, their logits, the
converted incres model's logits on the same input, and random incres variables drawn without
compiling an initialiser. torch, torchvision and timm are test-only dependencies: each helper that
needs one skips the calling test when it is missing.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest


def randomize(model: Any, seed: int = 1, linear_gain: float | None = None) -> Any:
  """Draws every BatchNorm2d's statistics and affine parameters (and Linear weights) at random.

  Fresh BatchNorm layers hold mean 0, variance 1, scale 1 and offset 0, which would let a
  conversion that drops or swaps any of them pass. With `linear_gain`, each Linear weight becomes
  gain * N(0, 1 / fan_in): torchvision's own init gives the GoogLeNet ~0.01 logits.
  """
  torch = pytest.importorskip("torch")
  g = torch.Generator().manual_seed(seed)
  for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      c = m.num_features
      m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
      m.running_var.copy_(0.5 + torch.rand(c, generator=g))
      m.weight.data.copy_(0.5 + 0.5 * torch.rand(c, generator=g))
      m.bias.data.copy_(0.1 * torch.randn(c, generator=g))
    elif linear_gain is not None and isinstance(m, torch.nn.Linear):
      m.weight.data.copy_(
          linear_gain * torch.randn(m.weight.shape, generator=g) / m.in_features**0.5
      )
  return model


def torchvision_model(name: str, linear_gain: float = 1.0, **kwargs) -> Any:
  """torchvision's `name` (10 classes) with random weights and statistics, in eval mode."""
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  torch.manual_seed(0)
  model = getattr(torchvision.models, name)(weights=None, num_classes=10, **kwargs)
  return randomize(model, linear_gain=linear_gain).eval()


def timm_model(name: str, seed: int = 0) -> Any:
  """timm's `name` (10 classes) with random weights and statistics, in eval mode."""
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")
  torch.manual_seed(seed)
  model = timm.create_model(name, pretrained=False, num_classes=10)
  return randomize(model, seed=seed + 1).eval()


def images(size: int, batch: int = 2) -> np.ndarray:
  """A fixed batch of random NCHW float32 images (the converted model takes their NHWC twin)."""
  return np.random.default_rng(0).normal(size=(batch, 3, size, size)).astype(np.float32)


def torch_logits(model: Any, x_nchw: np.ndarray) -> np.ndarray:
  torch = pytest.importorskip("torch")
  with torch.no_grad():
    return model(torch.from_numpy(x_nchw)).numpy()


def scale_logits(
    model: Any, head: Any, x_nchw: np.ndarray, largest: float = 10.0, shrink_only: bool = True
) -> np.ndarray:
  """Scales the classifier `head` so that the largest logit on `x_nchw` is `largest`; the logits.

  Trained weights give logits of order 10. Random BatchNorm statistics through a hundred layers
  give logits in the thousands, where 1e-4 is below float32's resolution (and timm's random
  Inception-v4 gives ~0.1). `shrink_only`: leave logits that are already smaller alone.
  """
  torch = pytest.importorskip("torch")
  expected = torch_logits(model, x_nchw)
  scale = np.abs(expected).max() / largest
  if shrink_only and scale <= 1.0:
    return expected
  with torch.no_grad():
    head.weight.div_(scale)
    head.bias.div_(scale)
  return torch_logits(model, x_nchw)


def incres_logits(model: Any, variables: Any, x_nchw: np.ndarray) -> np.ndarray:
  """The converted model's evaluation-mode logits on the NHWC twin of `x_nchw` (jitted)."""
  apply = jax.jit(functools.partial(model.apply, train=False))
  return np.asarray(apply(variables, x_nchw.transpose(0, 2, 3, 1))[0])


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
  """The largest logit difference, relative to the largest logit (float32 rounds relatively)."""
  return float(np.abs(np.asarray(got) - expected).max() / np.abs(expected).max())


def random_variables(model: Any, x: Any, seed: int = 0, random_bn: bool = True) -> Any:
  """He-normal kernels and random BatchNorm variables of `model`'s shapes, drawn by numpy.

  Not `model.init`: XLA:CPU compiles a random initialiser per parameter, which took 38 s for an
  11-layer net on two busy cores (a tree of shapes takes a fraction of a second). `random_bn`:
  scales and variances in [0.5, 1.5), offsets and means ~N(0, 0.1); otherwise the fresh values
  (ones and zeros, and zero biases).
  """
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name, shape = path[-1].key, leaf.shape
    if name == "kernel":
      value = rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
    elif not random_bn:
      value = np.ones(shape) if name in ("scale", "var") else np.zeros(shape)
    elif name in ("scale", "var"):
      value = 0.5 + rng.random(shape)
    else:  # bias, mean
      value = 0.1 * rng.normal(size=shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)
