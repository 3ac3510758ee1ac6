"""Convolutions and max pools whose gradients are fast on XLA's CPU backend (max pools: GPUs too).

XLA:CPU runs a convolution's forward pass and its input gradient at close to the machine's matmul
speed, but its weight gradient (the "backprop filter" convolution) far below it: on two AVX-512
cores, a 3x3 16->16 conv on 32x32 maps (batch 128) reaches ~150 GFLOP/s forward and ~25 GFLOP/s
for the weight gradient, where PyTorch's oneDNN reaches ~310 (benchmarks/RESULTS.md). The weight
gradient is a sum over the kernel's k*k offsets of one GEMM each,

  dW[i, j] = sum_{n, h, w} x_pad[n, s*h + i, s*w + j, :]^T  dy[n, h, w, :],

and XLA runs GEMMs well when their operands are in cache. `conv_general_dilated` below keeps XLA's
own forward and input-gradient convolutions and computes the weight gradient as those GEMMs, a few
images at a time (`conv_weight_grad`): 1.5-5x XLA's speed for the 16-256-channel convolutions of
the CIFAR ResNets, GoogLeNet and ResNet-50. 1x1 convolutions are GEMMs in all three passes.

The custom convolution gradient is used only when JAX's default backend is the CPU and it is a plain
2-D NHWC/HWIO one (no dilation); everything else goes to `lax.conv_general_dilated` unchanged.
Grouped convolutions (`feature_group_count`, ResNeXt's 3x3s) take it too: XLA:CPU's grouped weight
gradient was 250x its forward pass (a 3x3, 32-group 128->128 conv on 56x56 maps, batch 16: 16.4 s
against 65 ms forward, where an ungrouped one takes 381 ms); here each chunk's GEMMs are batched
over the groups (`_grouped_weight_grad`). Whether it is used is the config value `cpu_conv_vjp`,
which `create_model` gives the model and the model gives each `Conv` and `max_pool` (the
`cpu_conv_vjp` argument below): "auto" (the default) uses it on the CPU, "on" too, and "off" never;
GPUs and TPUs never use it for convolutions. The max pools' gradient from the k*k views (`max_pool`)
is also used on GPUs, under the same setting ("auto" and "on" use it, "off" and the process-wide
switches below turn it off): XLA:GPU's select-and-scatter was slower there (one H200, bf16, batch
256, batch on the device: ResNet-50's train step 6,439 -> 6,856 images/s, GoogLeNet's 6,943 ->
9,404; benchmarks/RESULTS.md). For benchmarks, `INCRES_CPU_CONV_VJP=0` in the environment or
`set_cpu_conv_vjp(False)` turns "auto" off for the whole process (both are read when a function is
traced, so set them before `jit`); an explicit "on" or "off" ignores them."""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# The weight gradient of a k x k convolution (k > 1) is computed a few images at a time, in chunks
# whose column matrix (below) takes about this many bytes: small enough to stay in the cores' caches.
# On two AVX2/AVX-512 cores 0.5-4 MB all ran within 15% of each other (benchmarks/RESULTS.md).
CHUNK_BYTES = 3_000_000

# The output-gradient-shifting form of `conv_weight_grad` computes Hp/Ho times the FLOPs. For 3x3
# convs this bound admits 8x8 maps (10/8) and larger, not 7x7 (9/7), where the extra FLOPs
# outweighed the copies saved (~200 vs ~250 GFLOP/s at 512 channels). Whole train steps, 2 cores:
# CifarResNet20 273 -> 311 img/s, ResNet50 +2%.
SHIFT_G_MAX_ROWS_RATIO = 1.27

# XLA's own weight gradient stays faster for large kernels on small maps (GoogLeNet's 5x5 branches
# at 7x7: ~250 vs ~175 GFLOP/s), where the whole batch fits one chunk and XLA's kernel does better.
XLA_MAX_OUTPUT_PIXELS, XLA_MIN_KERNEL_TAPS = 64, 25

# The values of the config key `cpu_conv_vjp` (module doc).
CPU_CONV_VJP_VALUES = ("auto", "on", "off")

_enabled: bool | None = None  # The process-wide override of "auto"; None: read the environment.


def set_cpu_conv_vjp(enabled: bool | None) -> None:
  """Turns "auto" on or off in this process (benchmarks); None defers to `INCRES_CPU_CONV_VJP`."""
  global _enabled
  _enabled = enabled


def _setting_on(setting: str) -> bool:
  """`setting` ("auto", "on", "off") resolved: "auto" follows `set_cpu_conv_vjp`, then the
  environment's `INCRES_CPU_CONV_VJP` (on unless 0/false/no/off)."""
  if setting not in CPU_CONV_VJP_VALUES:
    raise ValueError(
        f"Unknown cpu_conv_vjp {setting!r} (config key `cpu_conv_vjp`); use one of"
        f" {', '.join(repr(v) for v in CPU_CONV_VJP_VALUES)}."
    )
  if setting != "auto":
    return setting == "on"
  if _enabled is not None:
    return _enabled
  return os.environ.get("INCRES_CPU_CONV_VJP", "1").lower() not in ("0", "false", "no", "off")


def cpu_conv_vjp_enabled(setting: str = "auto") -> bool:
  """Whether convolutions traced now with this `cpu_conv_vjp` take the CPU paths (max pools:
  `max_pool_views_enabled`)."""
  on = _setting_on(setting)  # Validates the value on every backend.
  # The custom convolution paths are written for, and measured on, XLA:CPU only.
  return on and jax.default_backend() == "cpu"


_NHWC = lax.ConvDimensionNumbers(
    lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2)
)


def _lax_conv(x, w, strides, padding, precision, groups=1):
  return lax.conv_general_dilated(
      x,
      w,
      strides,
      padding,
      dimension_numbers=_NHWC,
      feature_group_count=groups,
      precision=precision,
  )


def _out_hw(x, window, strides, padding):
  """The output height and width of a window sliding over NHWC `x`."""
  return tuple(
      (x.shape[1 + d] + padding[d][0] + padding[d][1] - window[d]) // strides[d] + 1
      for d in range(2)
  )


def _pad_hw(x, value, padding, interior=(0, 0)):
  """Pads the two spatial axes of NHWC `x` with `value` (and `interior` values between rows/cols)."""
  (top, bottom), (left, right) = padding
  config = ((0, 0, 0), (top, bottom, interior[0]), (left, right, interior[1]), (0, 0, 0))
  return lax.pad(x, jnp.array(value, x.dtype), config)


def _hw_view(x, offset, strides, out_hw):
  """The out_hw positions of NHWC `x` that one window offset meets: x[:, i::sh, j::sw, :], cut."""
  n, c = x.shape[0], x.shape[3]
  end = [offset[d] + (out_hw[d] - 1) * strides[d] + 1 for d in range(2)]
  return lax.slice(x, (0, *offset, 0), (n, *end, c), (1, *strides, 1))


def _hw_place(y, offset, strides, hw):
  """The transpose of `_hw_view`: `y` at those positions of an (N, *hw, C) array of zeros."""
  span = [(y.shape[1 + d] - 1) * strides[d] + 1 for d in range(2)]
  padding = [(offset[d], hw[d] - offset[d] - span[d]) for d in range(2)]
  return _pad_hw(y, 0, padding, (strides[0] - 1, strides[1] - 1))


def _largest_divisor_at_most(n: int, m: int) -> int:
  m = max(1, min(n, m))
  while n % m:
    m -= 1
  return m


def conv_weight_grad(x, g, kernel, strides, padding, precision=None):
  """dL/dW of an NHWC/HWIO convolution, a chunk of images at a time (module doc).

  `x` is the input [N, H, W, C] and `g` the output's gradient [N, Ho, Wo, O]; `kernel`, `strides`
  and `padding` are (kh, kw), (sh, sw) and ((top, bottom), (left, right)). Returns [kh, kw, C, O]
  in float32. The custom gradient of `conv_general_dilated` on the CPU; public for the benchmarks.

  For a chunk of images, the kw horizontally shifted (and strided) views of the padded input are
  concatenated along channels into "rows" (nc, Hp, Wo, kw*C). Then either
  - the kh vertically shifted (strided) views of the rows give kh GEMMs, (nc*Ho*Wo, kw*C)^T
    (nc*Ho*Wo, O), one per kernel row; or, for stride-1 convolutions whose output gradient is the
    smaller operand (O <= kw*C),
  - the output gradient, placed at the kh vertical offsets within Hp zero rows and concatenated
    along channels, (nc, Hp, Wo, kh*O), gives one GEMM with the rows: no copy of the larger
    operand, one larger GEMM, at the cost of Hp/Ho times the FLOPs.
  Done for the whole batch at once, those operands are ~k times the activations and come from main
  memory; a chunk of a few images stays in cache. Chunks are summed in a `fori_loop`.
  """
  n, ho, wo, o = g.shape
  c = x.shape[3]
  (kh, kw), (sh, sw), (ph, pw) = kernel, strides, padding
  hp = x.shape[1] + ph[0] + ph[1]
  nc = _largest_divisor_at_most(n, CHUNK_BYTES // (hp * wo * kw * c * x.dtype.itemsize))
  q = n // nc
  shift_g = sh == 1 and o <= kw * c and hp <= SHIFT_G_MAX_ROWS_RATIO * ho
  # Chunk b holds images b, b + q, b + 2q, ...: with the batch split over devices in contiguous
  # blocks, every chunk is split the same way (no gathering under a data-parallel sharding).
  xr = x.reshape((nc, q) + x.shape[1:])
  gr = g.reshape((nc, q) + g.shape[1:])
  contract = (((0,), (0,)), ((), ()))

  def gemm(a, b):
    return lax.dot_general(a, b, contract, precision=precision, preferred_element_type=jnp.float32)

  def chunk(b):
    xc = lax.dynamic_index_in_dim(xr, b, 1, keepdims=False)
    gc = lax.dynamic_index_in_dim(gr, b, 1, keepdims=False)
    xc = _pad_hw(xc, 0, padding)
    cols = [lax.slice_in_dim(xc, j, j + (wo - 1) * sw + 1, sw, axis=2) for j in range(kw)]
    rows = jnp.concatenate(cols, axis=3) if kw > 1 else cols[0]
    if shift_g:  # (kw*C, kh*O)
      gs = [_pad_hw(gc, 0, ((i, hp - i - ho), (0, 0))) for i in range(kh)]
      gs = jnp.concatenate(gs, axis=3) if kh > 1 else gs[0]
      return gemm(rows.reshape(nc * hp * wo, kw * c), gs.reshape(nc * hp * wo, kh * o))
    gc = gc.reshape(nc * ho * wo, o)
    grads = []
    for i in range(kh):  # (kh, kw*C, O)
      lhs = lax.slice_in_dim(rows, i, i + (ho - 1) * sh + 1, sh, axis=1)
      grads.append(gemm(lhs.reshape(nc * ho * wo, kw * c), gc))
    return jnp.stack(grads)

  dw = chunk(0) if q == 1 else lax.fori_loop(1, q, lambda b, acc: acc + chunk(b), chunk(0))
  if shift_g:
    return dw.reshape(kw, c, kh, o).transpose(2, 0, 1, 3)
  return dw.reshape(kh, kw, c, o)


def _grouped_weight_grad(x, g, kernel, strides, padding, precision, groups):
  """dL/dW of a grouped NHWC/HWIO convolution (`groups` > 1), as `conv_weight_grad` without its
  shifted-gradient form: per chunk of images and kernel row, one GEMM batched over the groups,
  (G, nc*Ho*Wo, kw*C/G)^T (G, nc*Ho*Wo, O/G). The weight's HWIO layout holds group j's filters in
  output channels j*O/G .. (j+1)*O/G - 1, each reading input channels j*C/G .. (j+1)*C/G - 1.
  """
  n, ho, wo, o = g.shape
  c = x.shape[3]
  (kh, kw), (sh, sw), (ph, pw) = kernel, strides, padding
  cg, og = c // groups, o // groups
  hp = x.shape[1] + ph[0] + ph[1]
  nc = _largest_divisor_at_most(n, CHUNK_BYTES // (hp * wo * kw * c * x.dtype.itemsize))
  q = n // nc
  xr = x.reshape((nc, q) + x.shape[1:])  # Chunk b: images b, b + q, ... (as `conv_weight_grad`).
  gr = g.reshape((nc, q) + g.shape[1:])
  dims = (((0,), (0,)), ((1,), (1,)))  # Contract the pixels, batch over the groups.

  def chunk(b):
    xc = lax.dynamic_index_in_dim(xr, b, 1, keepdims=False)
    gc = lax.dynamic_index_in_dim(gr, b, 1, keepdims=False).reshape(nc * ho * wo, groups, og)
    xc = _pad_hw(xc, 0, padding)
    cols = [lax.slice_in_dim(xc, j, j + (wo - 1) * sw + 1, sw, axis=2) for j in range(kw)]
    rows = jnp.stack(cols, axis=3)  # (nc, Hp, Wo, kw, C)
    grads = []
    for i in range(kh):  # Each (G, kw, C/G, O/G).
      lhs = lax.slice_in_dim(rows, i, i + (ho - 1) * sh + 1, sh, axis=1)
      lhs = lhs.reshape(nc * ho * wo, kw, groups, cg).transpose(0, 2, 1, 3)
      lhs = lhs.reshape(nc * ho * wo, groups, kw * cg)
      grads.append(
          lax.dot_general(
              lhs, gc, dims, precision=precision, preferred_element_type=jnp.float32
          ).reshape(groups, kw, cg, og)
      )
    return jnp.stack(grads)  # (kh, G, kw, C/G, O/G)

  dw = chunk(0) if q == 1 else lax.fori_loop(1, q, lambda b, acc: acc + chunk(b), chunk(0))
  return dw.transpose(0, 2, 3, 1, 4).reshape(kh, kw, cg, o)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_cpu(x, w, strides, padding, precision, groups):
  return _lax_conv(x, w, strides, padding, precision, groups)


def _conv_cpu_fwd(x, w, strides, padding, precision, groups):
  return _lax_conv(x, w, strides, padding, precision, groups), (x, w)


def _conv_cpu_bwd(strides, padding, precision, groups, res, g):
  x, w = res
  # The input gradient is XLA's own transposed convolution, which is already fast on the CPU.
  _, input_vjp = jax.vjp(lambda x_: _lax_conv(x_, w, strides, padding, precision, groups), x)
  (dx,) = input_vjp(g)
  if groups == 1:
    dw = conv_weight_grad(x, g, w.shape[:2], strides, padding, precision)
  else:
    dw = _grouped_weight_grad(x, g, w.shape[:2], strides, padding, precision, groups)
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
  return lax.dot_general(
      _subsample(x, strides), w[0, 0], (((3,), (0,)), ((), ())), precision=precision
  )


def _conv_1x1_fwd(x, w, strides, precision):
  return _conv_1x1(x, w, strides, precision), (x, w)


def _conv_1x1_bwd(strides, precision, res, g):
  x, w = res
  n, ho, wo, o = g.shape
  xs = _subsample(x, strides)
  m = n * ho * wo
  dw = lax.dot_general(
      xs.reshape(m, x.shape[3]),
      g.reshape(m, o),
      (((0,), (0,)), ((), ())),
      precision=precision,
      preferred_element_type=jnp.float32,
  )
  dx = lax.dot_general(g, w[0, 0], (((3,), (1,)), ((), ())), precision=precision)
  if strides != (1, 1):  # Scatter back to the strided positions; rows/cols never read get zeros.
    dx = _hw_place(dx, (0, 0), strides, x.shape[1:3])
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
    cpu_conv_vjp: str = "auto",
) -> jax.Array:
  """`lax.conv_general_dilated`, with the fast weight gradient where it applies (module doc)."""
  plain = (
      lhs.ndim == 4
      and _as_dimension_numbers(dimension_numbers, 4) == _NHWC
      and all(d == 1 for d in (lhs_dilation or (1, 1)))
      and all(d == 1 for d in (rhs_dilation or (1, 1)))
      and batch_group_count == 1
      and preferred_element_type is None
      and lhs.dtype == rhs.dtype
  )
  if plain and cpu_conv_vjp_enabled(cpu_conv_vjp):
    if isinstance(padding, str):
      padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    strides = tuple(int(s) for s in window_strides)
    groups = int(feature_group_count)
    if groups > 1:  # XLA's grouped weight gradient is far slower in every case (module doc).
      return _conv_cpu(lhs, rhs, strides, padding, precision, groups)
    if rhs.shape[:2] == (1, 1) and padding == ((0, 0), (0, 0)):
      return _conv_1x1(lhs, rhs, strides, precision)
    out_h, out_w = _out_hw(lhs, rhs.shape[:2], strides, padding)
    out_pixels = out_h * out_w
    taps = rhs.shape[0] * rhs.shape[1]
    if not (out_pixels <= XLA_MAX_OUTPUT_PIXELS and taps >= XLA_MIN_KERNEL_TAPS):
      return _conv_cpu(lhs, rhs, strides, padding, precision, 1)
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


def _pool_views(xp, window, strides, out_hw):
  """The kh*kw strided views of the padded input, one per window offset, in row-major order."""
  for i in range(window[0]):
    for j in range(window[1]):
      yield (i, j), _hw_view(xp, (i, j), strides, out_hw)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_views(x, window, strides, padding):
  if strides != (1, 1):  # XLA's reduce-window was faster here: 21 vs 39 ms, 3x3/2 at 112x112x64.
    return nn.max_pool(x, window, strides=strides, padding=padding)
  out_hw = _out_hw(x, window, strides, padding)
  views = [v for _, v in _pool_views(_pad_hw(x, -jnp.inf, padding), window, strides, out_hw)]
  return functools.reduce(jnp.maximum, views)  # 15 vs 22 ms, 3x3/1 at 28x28x256.


def _max_pool_views_fwd(x, window, strides, padding):
  y = _max_pool_views(x, window, strides, padding)
  return y, (x, y)


def _max_pool_views_bwd(window, strides, padding, res, g):
  """Each output's gradient goes to the first maximum of its window (row-major), as XLA's does."""
  x, y = res
  xp = _pad_hw(x, -jnp.inf, padding)
  out_hw = y.shape[1:3]
  views = list(_pool_views(xp, window, strides, out_hw))
  # The window offset of each output's first maximum. (XLA fuses this into the scatter below and
  # recomputes it per offset; an argmax reduction that computes it once was 2x slower in total.)
  first = jnp.full(y.shape, len(views), jnp.int32)
  for k in reversed(range(len(views))):
    first = jnp.where(views[k][1] == y, k, first)
  dxp = None
  for k, (offset, _) in enumerate(views):
    term = _hw_place(jnp.where(first == k, g, 0), offset, strides, xp.shape[1:3])
    dxp = term if dxp is None else dxp + term
  (pt, pb), (pl, pr) = padding
  return (dxp[:, pt : xp.shape[1] - pb, pl : xp.shape[2] - pr, :],)


_max_pool_views.defvjp(_max_pool_views_fwd, _max_pool_views_bwd)


def max_pool_views_enabled(setting: str = "auto") -> bool:
  """Whether max pools traced now take `_max_pool_views` (the gradient from the k*k views): on CPUs
  and GPUs as `setting` says ("auto": on unless turned off for the process, module doc), never on
  TPUs (not measured there)."""
  return _setting_on(setting) and jax.default_backend() in ("cpu", "gpu")


def max_pool(
    x: jax.Array,
    window: Sequence[int],
    strides: Sequence[int],
    padding: Sequence[tuple[int, int]] | str = "VALID",
    cpu_conv_vjp: str = "auto",
) -> jax.Array:
  """`flax.linen.max_pool` for NHWC inputs (-inf padding), with a fast gradient on CPUs and GPUs.

  XLA:CPU computes a max pool's gradient through a packed-pair reduce-window and a scatter; in a
  GoogLeNet train step that was about 40% of the time (benchmarks/RESULTS.md), and XLA:GPU's
  select-and-scatter was slower than the alternative too (module doc). There this takes the
  maximum of the k*k shifted views instead, and sends each output's gradient to the first maximum
  of its window, as XLA does, with elementwise ops XLA fuses (`max_pool_views_enabled`). On TPUs,
  and with `cpu_conv_vjp="off"`, `nn.max_pool`.
  """
  window, strides = tuple(int(w) for w in window), tuple(int(s) for s in strides)
  if x.ndim != 4 or not max_pool_views_enabled(cpu_conv_vjp):
    return nn.max_pool(x, window, strides=strides, padding=padding)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], window, strides, padding)
  return _max_pool_views(x, window, strides, tuple((int(lo), int(hi)) for lo, hi in padding))


class Conv(nn.Conv):
  """`nn.Conv` (same parameters, names and shapes) routed through `conv_general_dilated` above.

  `conv_factory` binds the `cpu_conv_vjp` setting into `conv_general_dilated`; it is not a
  parameter, so the checkpoint does not depend on it.
  """

  conv_general_dilated: Any = conv_general_dilated


def conv_factory(cpu_conv_vjp: str = "auto", **defaults) -> Callable[..., Conv]:
  """Returns `conv(features, kernel_size, strides=(1, 1), padding=None, **kw)`: a `Conv` with
  k // 2 padding on each side unless `padding` is given.

  The models' one convolution factory (ResNet's, GoogLeNet's, the Inception nets'), with
  `defaults` (dtype, initialisers...) and the `cpu_conv_vjp` setting bound. Torch and Caffe pad
  symmetrically; XLA's "SAME" pads asymmetrically under stride 2, which would shift every strided
  window by a pixel relative to the papers' (and torchvision's) networks.
  """

  defaults.setdefault(
      "conv_general_dilated", functools.partial(conv_general_dilated, cpu_conv_vjp=cpu_conv_vjp)
  )

  def conv(features, kernel_size, strides=(1, 1), padding=None, **kw):
    if padding is None:
      padding = tuple((k // 2, k // 2) for k in kernel_size)
    return Conv(features, kernel_size, strides, padding=padding, **{**defaults, **kw})

  return conv
