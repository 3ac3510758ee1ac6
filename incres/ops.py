"""A convolution whose weight gradient is fast on XLA's CPU backend.

XLA:CPU runs a convolution's forward pass and its input gradient at close to the machine's matmul
speed, but its weight gradient (the "backprop filter" convolution) at a quarter of it or less:
on two AVX2 cores, a 3x3 128->128 conv on 28x28 maps (batch 32) reaches ~80 GFLOP/s forward and
~20 GFLOP/s for the weight gradient (benchmarks/RESULTS.md). The weight gradient is a sum over
the kernel's k*k offsets of one GEMM each,

  dW[i, j] = sum_{n, h, w} x_pad[n, s*h + i, s*w + j, :]^T  dy[n, h, w, :],

and XLA runs those GEMMs at matmul speed. `conv_general_dilated` below keeps XLA's own forward and
input-gradient convolutions and computes the weight gradient as those k*k GEMMs (or, when the input
has few channels, as one im2col GEMM, which keeps the contraction wide for e.g. an RGB stem).

The custom gradient is used only when JAX's default backend is the CPU and the convolution is a
plain 2-D NHWC/HWIO one (no dilation, no groups); everything else goes to `lax.conv_general_dilated`
unchanged. Turn it off with `INCRES_CPU_CONV_VJP=0` in the environment or
`set_cpu_conv_vjp(False)` (both are read when a function is traced, so set them before `jit`).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# k x k convolutions (k > 1) take the shifted-GEMM weight gradient only when both channel counts
# are at least this: below it each GEMM's (C, O) output is too small to keep both cores busy, and
# XLA's own weight gradient was as fast or faster in measurements (benchmarks/RESULTS.md).
SHIFTED_GEMM_MIN_CHANNELS = 128

_enabled: bool | None = None  # None: read INCRES_CPU_CONV_VJP.


def set_cpu_conv_vjp(enabled: bool | None) -> None:
  """Forces the CPU weight-gradient path on or off; None defers to `INCRES_CPU_CONV_VJP`."""
  global _enabled
  _enabled = enabled


def cpu_conv_vjp_enabled() -> bool:
  """Whether convolutions traced now take the custom weight gradient."""
  if _enabled is not None:
    return _enabled
  if os.environ.get("INCRES_CPU_CONV_VJP", "1").lower() in ("0", "false", "no", "off"):
    return False
  return jax.default_backend() == "cpu"


_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


def _lax_conv(x, w, strides, padding, precision):
  return lax.conv_general_dilated(
      x, w, strides, padding, dimension_numbers=_NHWC, precision=precision
  )


def _shifted_inputs(x, kernel, strides, padding, out_hw):
  """The k*k strided views of the padded input that meet each kernel offset, as (M, C) matrices."""
  (ph, pw), (sh, sw), (ho, wo) = padding, strides, out_hw
  xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (ph[0], ph[1], 0), (pw[0], pw[1], 0), (0, 0, 0)))
  n, c = x.shape[0], x.shape[3]
  for i in range(kernel[0]):
    for j in range(kernel[1]):
      view = lax.slice(
          xp, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c), (1, sh, sw, 1)
      )
      yield view.reshape(n * ho * wo, c)


def _weight_grad(x, g, kernel, strides, padding, precision):
  """dL/dW of an NHWC/HWIO convolution as GEMMs over the batch and output pixels."""
  n, ho, wo, o = g.shape
  c = x.shape[3]
  g2 = g.reshape(n * ho * wo, o)
  contract = (((0,), (0,)), ((), ()))
  dot = functools.partial(
      lax.dot_general, dimension_numbers=contract, precision=precision,
      preferred_element_type=jnp.float32,
  )
  views = _shifted_inputs(x, kernel, strides, padding, (ho, wo))
  return jnp.stack([dot(v, g2) for v in views]).reshape(kernel + (c, o))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_cpu(x, w, strides, padding, precision):
  return _lax_conv(x, w, strides, padding, precision)


def _conv_cpu_fwd(x, w, strides, padding, precision):
  return _lax_conv(x, w, strides, padding, precision), (x, w)


def _conv_cpu_bwd(strides, padding, precision, res, g):
  x, w = res
  # The input gradient is XLA's own transposed convolution, which is already fast on the CPU.
  _, input_vjp = jax.vjp(lambda x_: _lax_conv(x_, w, strides, padding, precision), x)
  (dx,) = input_vjp(g)
  dw = _weight_grad(x, g, w.shape[:2], strides, padding, precision)
  return dx, dw.astype(w.dtype)


_conv_cpu.defvjp(_conv_cpu_fwd, _conv_cpu_bwd)


def _subsample(x, strides):
  return x[:, :: strides[0], :: strides[1], :] if strides != (1, 1) else x


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_1x1(x, w, strides, precision):
  """A 1x1 convolution (no padding) as one GEMM over the subsampled input.

  XLA:CPU's backprop-filter convolution ran 1x1 weight gradients at 4-20 GFLOP/s where a GEMM
  runs at 50-90, and the GEMM is as fast or faster for the forward pass and the input gradient.
  The backward pass is written out rather than left to JAX's transpose of `dot_general`: in a whole
  ResNet-50 that transpose made XLA lay each output gradient out transposed, inside the fused
  BatchNorm backward that produces it (a third of the step's time in strided copies).
  """
  return lax.dot_general(_subsample(x, strides), w[0, 0], (((3,), (0,)), ((), ())), precision=precision)


def _conv_1x1_fwd(x, w, strides, precision):
  return _conv_1x1(x, w, strides, precision), (x, w)


def _conv_1x1_bwd(strides, precision, res, g):
  x, w = res
  n, ho, wo, o = g.shape
  xs = _subsample(x, strides)
  m = n * ho * wo
  dw = lax.dot_general(
      xs.reshape(m, x.shape[3]), g.reshape(m, o), (((0,), (0,)), ((), ())),
      precision=precision, preferred_element_type=jnp.float32,
  )
  dx = lax.dot_general(g, w[0, 0], (((3,), (1,)), ((), ())), precision=precision)
  if strides != (1, 1):  # Scatter back to the strided positions; rows/cols never read get zeros.
    h, wd = x.shape[1:3]
    pads = [(0, h - ((ho - 1) * strides[0] + 1), strides[0] - 1)]
    pads.append((0, wd - ((wo - 1) * strides[1] + 1), strides[1] - 1))
    dx = lax.pad(dx, jnp.zeros((), dx.dtype), [(0, 0, 0), *pads, (0, 0, 0)])
  return dx.astype(x.dtype), dw.astype(w.dtype)[None, None]


_conv_1x1.defvjp(_conv_1x1_fwd, _conv_1x1_bwd)


def _as_dimension_numbers(dimension_numbers, ndim):
  if dimension_numbers is None:
    return None
  return lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, dimension_numbers)


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
  """`lax.conv_general_dilated`, with the fast weight gradient where it applies (module doc)."""
  plain = (
      lhs.ndim == 4
      and _as_dimension_numbers(dimension_numbers, 4) == _NHWC
      and all(d == 1 for d in (lhs_dilation or (1, 1)))
      and all(d == 1 for d in (rhs_dilation or (1, 1)))
      and feature_group_count == 1
      and batch_group_count == 1
      and preferred_element_type is None
      and lhs.dtype == rhs.dtype
  )
  if plain and cpu_conv_vjp_enabled():
    if isinstance(padding, str):
      padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    strides = tuple(int(s) for s in window_strides)
    if rhs.shape[:2] == (1, 1) and padding == ((0, 0), (0, 0)):
      return _conv_1x1(lhs, rhs, strides, precision)
    if min(rhs.shape[2:]) >= SHIFTED_GEMM_MIN_CHANNELS:
      return _conv_cpu(lhs, rhs, strides, padding, precision)
  return lax.conv_general_dilated(
      lhs,
      rhs,
      window_strides,
      padding,
      lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      batch_group_count=batch_group_count,
      precision=precision,
      preferred_element_type=preferred_element_type,
  )


class Conv(nn.Conv):
  """`nn.Conv` (same parameters, names and shapes) routed through `conv_general_dilated` above."""

  conv_general_dilated: Any = conv_general_dilated
