"""incres.ops: the CPU convolution paths give XLA's own gradients, to float32 rounding."""

from __future__ import annotations

import json
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from incres import checkpoint, configs, models, ops
from incres import state as state_lib

_DN = ("NHWC", "HWIO", "NHWC")


@pytest.fixture
def xla_then_custom():
  """Yields a function that evaluates `fn` with the custom path off, then on."""

  def both(fn, *args):
    outs = []
    for enabled in (False, True):
      ops.set_cpu_conv_vjp(enabled)
      outs.append(jax.jit(fn)(*args))  # A fresh jit: the switch is read at trace time.
    return outs

  yield both
  ops.set_cpu_conv_vjp(None)


def _assert_close(got, want, rtol=2e-6):
  """Equal to float32 rounding, relative to the largest entry (sums run in another order)."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  np.testing.assert_allclose(got, want, rtol=0, atol=rtol * max(np.abs(want).max(), 1e-30))


def _assert_gradients_equal_xla(
    xla_then_custom, monkeypatch, seed, kernel, stride, cin, cout, chunks, groups=1
):
  """`ops.conv_general_dilated`'s output and both gradients (of sum(sin(y))) on the custom path
  equal XLA's: random inputs drawn from `seed`, a `kernel`² kernel of `groups` groups with
  kernel // 2 padding, the weight gradient in `chunks` chunks of 6 // chunks images (one pass, or
  a loop over three chunks of two). Returns XLA's weight gradient."""
  rng = np.random.default_rng(seed)
  batch, size = 6, 17  # Odd size, so stride 2 leaves a remainder that the custom paths must handle.
  x = jnp.asarray(rng.standard_normal((batch, size, size, cin)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, cin // groups, cout)) / kernel, jnp.float32)
  pad = ((kernel // 2, kernel // 2),) * 2
  out = (size - 1) // stride + 1
  monkeypatch.setattr(
      ops, "CHUNK_BYTES", (size + kernel - 1) * out * kernel * cin * 4 * batch // chunks
  )

  def loss_and_grads(x, w):
    def loss(x, w):
      y = ops.conv_general_dilated(
          x, w, (stride, stride), pad, dimension_numbers=_DN, feature_group_count=groups
      )
      return jnp.sum(jnp.sin(y)), y

    (_, y), grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(x, w)
    return y, grads

  (y0, (dx0, dw0)), (y1, (dx1, dw1)) = xla_then_custom(loss_and_grads, x, w)
  _assert_close(y1, y0)
  _assert_close(dx1, dx0)
  _assert_close(dw1, dw0)
  return dw0


# The kernels, strides and symmetric k // 2 padding the models use. 1x1 convs take the GEMM path;
# larger kernels the chunked weight gradient, except big kernels on small maps, which stay XLA's.
CASES = [(1, s, 24, 40) for s in (1, 2)]
CASES += [(k, s, 16, 24) for k in (3, 5, 7) for s in (1, 2)]
CASES += [(3, 1, 3, 8), (3, 2, 128, 128)]


@pytest.mark.parametrize("shift_g", [False, True])
@pytest.mark.parametrize("chunks", [1, 3])
@pytest.mark.parametrize("kernel,stride,cin,cout", CASES)
def test_conv_gradients_equal_xla(
    xla_then_custom, monkeypatch, kernel, stride, cin, cout, chunks, shift_g
):
  # Both forms of the weight gradient (ops.conv_weight_grad); the shifted-gradient one: stride 1.
  monkeypatch.setattr(ops, "SHIFT_G_MAX_ROWS_RATIO", 10.0 if shift_g else 0.0)
  _assert_gradients_equal_xla(
      xla_then_custom, monkeypatch, kernel * 10 + stride, kernel, stride, cin, cout, chunks
  )


# Grouped convolutions (ResNeXt's 3x3s): (kernel, stride, input channels, output channels, groups).
GROUPED = [
    (3, 1, 16, 24, 4),
    (3, 2, 32, 32, 32),
    (3, 2, 12, 18, 3),
    (1, 1, 8, 12, 2),
    (5, 1, 8, 8, 2),
]


@pytest.mark.parametrize("chunks", [1, 3])
@pytest.mark.parametrize("kernel,stride,cin,cout,groups", GROUPED)
def test_grouped_conv_gradients_equal_xla(
    xla_then_custom, monkeypatch, kernel, stride, cin, cout, groups, chunks
):
  dw0 = _assert_gradients_equal_xla(
      xla_then_custom, monkeypatch, kernel * 10 + groups, kernel, stride, cin, cout, chunks, groups
  )
  assert float(jnp.abs(dw0).max()) > 0.1  # Every group's block of the weight gradient is real.


def test_grouped_conv_takes_the_custom_path():
  ops.set_cpu_conv_vjp(True)
  try:
    jaxpr = jax.make_jaxpr(
        lambda x, w: ops.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=_DN, feature_group_count=4
        )
    )(jnp.zeros((2, 8, 8, 16)), jnp.zeros((3, 3, 4, 16)))
    assert "custom_vjp" in str(jaxpr)
  finally:
    ops.set_cpu_conv_vjp(None)


def _takes_custom_path(x_shape, w_shape, stride):
  jaxpr = jax.make_jaxpr(
      lambda x, w: ops.conv_general_dilated(x, w, (stride,) * 2, "SAME", dimension_numbers=_DN)
  )(jnp.zeros(x_shape), jnp.zeros(w_shape))
  return "custom_vjp" in str(jaxpr)


def test_path_choice():
  ops.set_cpu_conv_vjp(True)
  try:
    assert _takes_custom_path((2, 32, 32, 16), (3, 3, 16, 16), 1)  # CIFAR ResNet.
    assert _takes_custom_path((2, 224, 224, 3), (7, 7, 3, 64), 2)  # The stems.
    assert _takes_custom_path((2, 14, 14, 32), (5, 5, 32, 128), 1)  # GoogLeNet 4e 5x5.
    assert not _takes_custom_path((2, 7, 7, 32), (5, 5, 32, 128), 1)  # 5a/5b 5x5: XLA's is faster.
    ops.set_cpu_conv_vjp(False)
    assert not _takes_custom_path((2, 32, 32, 16), (3, 3, 16, 16), 1)
  finally:
    ops.set_cpu_conv_vjp(None)


def test_same_padding_string(xla_then_custom):
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 128)), jnp.float32)
  w = jnp.ones((3, 3, 128, 128), jnp.float32) / 100
  grad = jax.grad(
      lambda w: jnp.sum(ops.conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=_DN) ** 2)
  )
  g0, g1 = xla_then_custom(grad, w)
  _assert_close(g1, g0)


def test_conv_module_matches_nn_conv_parameters():
  x = jnp.ones((1, 8, 8, 3))
  kw = dict(features=4, kernel_size=(3, 3), padding=((1, 1), (1, 1)))
  ours = ops.Conv(**kw).init(jax.random.key(0), x)
  flax_ = nn.Conv(**kw).init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, flax_)
  np.testing.assert_array_equal(ours["params"]["kernel"], flax_["params"]["kernel"])


def test_switch_off_uses_lax(monkeypatch):
  monkeypatch.setenv("INCRES_CPU_CONV_VJP", "0")
  assert not ops.cpu_conv_vjp_enabled()
  monkeypatch.setenv("INCRES_CPU_CONV_VJP", "1")
  assert ops.cpu_conv_vjp_enabled() == (jax.default_backend() == "cpu")


def _path_taker(name: str):
  """A function of a `cpu_conv_vjp` setting: whether `name`, built by `create_model`, takes it."""
  config = configs.base_config()
  config.model = name
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(state_lib.create_model(config, 10).init, jax.random.key(0), x)

  def takes_custom_path(setting: str) -> bool:
    config.cpu_conv_vjp = setting
    jaxpr = jax.make_jaxpr(state_lib.create_model(config, 10).apply)(variables, x)
    return "custom_vjp" in str(jaxpr)

  return takes_custom_path


def test_config_value_selects_the_path(monkeypatch):
  takes_custom_path = _path_taker("CifarResNet20")
  # Other backends never take the custom convolutions; CifarResNet20 has no max pool.
  on_cpu = jax.default_backend() == "cpu"
  assert not takes_custom_path("off")
  assert takes_custom_path("on") == on_cpu
  assert takes_custom_path("auto") == on_cpu
  # The environment variable (benchmarks' override) turns "auto" off, not an explicit "on".
  monkeypatch.setenv("INCRES_CPU_CONV_VJP", "0")
  assert not takes_custom_path("auto")
  assert takes_custom_path("on") == on_cpu


def test_googlenet_takes_the_setting_for_its_convs_and_pools():
  takes_custom_path = _path_taker("GoogLeNet32")
  assert not takes_custom_path("off")
  # GPUs take the max pools' custom gradient (test_which_paths_each_backend_takes), TPUs none.
  assert takes_custom_path("on") == (jax.default_backend() in ("cpu", "gpu"))


def test_off_traces_the_same_program_as_xla_alone():
  # "off" is XLA's own gradients exactly: the program the process-wide switch gave before the key.
  config = configs.base_config()
  config.model = "GoogLeNet32"
  config.cpu_conv_vjp = "off"
  model = state_lib.create_model(config, num_classes=10)
  x = jnp.zeros((2, 32, 32, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)

  def grad_jaxpr(model):
    def loss(params):
      (logits, _), _ = model.apply(
          {**variables, "params": params},
          x,
          train=True,
          mutable=["batch_stats"],
          rngs={"dropout": jax.random.key(1)},
      )
      return jnp.sum(logits)

    return str(jax.make_jaxpr(jax.grad(loss))(variables["params"]))

  ops.set_cpu_conv_vjp(False)
  try:
    xla = grad_jaxpr(model.clone(cpu_conv_vjp="auto"))
  finally:
    ops.set_cpu_conv_vjp(None)
  assert grad_jaxpr(model) == xla
  assert "custom_vjp" not in xla


def test_unknown_setting_is_refused_naming_the_key():
  with pytest.raises(ValueError, match="cpu_conv_vjp.*'auto', 'on', 'off'"):
    ops.cpu_conv_vjp_enabled("yes")


def test_setting_is_recorded_in_config_json_and_not_part_of_the_identity(tmp_path):
  config = configs.base_config()
  config.cpu_conv_vjp = "off"
  resolved = configs.resolve_config(config, types.SimpleNamespace(num_classes=10, num_train=256))
  configs.save_config(resolved, str(tmp_path))
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["cpu_conv_vjp"] == "off"
  assert state_lib.create_model(ml_collections.ConfigDict(saved)).cpu_conv_vjp == "off"
  # A run may resume with another setting, and a config.json written before the key reads "auto".
  assert "cpu_conv_vjp" not in checkpoint.IDENTITY_KEYS
  del saved["cpu_conv_vjp"]
  assert state_lib.create_model(ml_collections.ConfigDict(saved)).cpu_conv_vjp == "auto"


@pytest.mark.parametrize(
    "model",
    [
        # A bottleneck ResNet: a 7x7/2 stem, strided 1x1s, projection shortcuts, and 3x3s at
        # 128 and 256 channels (the shifted-GEMM path).
        models.ResNet(stage_sizes=(1, 1), block=models.Bottleneck, width=128, num_classes=10),
        # A ResNeXt: grouped 3x3s (8 groups of 8 and of 16 channels), strided on the 3x3.
        models.ResNet(
            stage_sizes=(1, 1),
            block=models.Bottleneck,
            width=32,
            groups=8,
            base_width=16,
            stride_in_1x1=False,
            num_classes=10,
        ),
        # One of the paper's inception modules: 1x1s, a 3x3 and a real 5x5, with biases.
        models.InceptionModule(models.InceptionRow(16, 8, 16, 4, 8, 8)),
    ],
    ids=["ResNet", "ResNeXt", "InceptionModule"],
)
def test_whole_model_gradients_equal_xla(xla_then_custom, model):
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)
  variables = model.init(jax.random.key(0), x)

  def grads(variables):
    def loss(params):
      if isinstance(model, models.ResNet):
        (logits, _), _ = model.apply(
            {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
        )
        return -jax.nn.log_softmax(logits)[:, 3].mean()
      return jnp.mean(jnp.sin(model.apply({"params": params}, x)))

    return jax.grad(loss)(variables["params"])

  g0, g1 = xla_then_custom(grads, variables)
  flat0, flat1 = jax.tree.leaves_with_path(g0), jax.tree.leaves(g1)
  assert len(flat0) == len(flat1)
  for (path, a), b in zip(flat0, flat1):
    # Whole-network gradients compound rounding through many layers: allow a little more.
    np.testing.assert_allclose(
        b, a, rtol=0, atol=1e-4 * float(np.abs(a).max()) + 1e-7, err_msg=jax.tree_util.keystr(path)
    )


@pytest.mark.parametrize(
    "window,stride,padding",
    [
        ((3, 3), 2, ((1, 1), (1, 1))),  # The ResNet stem.
        ((3, 3), 1, ((1, 1), (1, 1))),  # The inception modules' pool branch.
        ((3, 3), 2, ((0, 1), (0, 1))),  # GoogLeNet's ceil-mode pools.
        ((2, 2), 2, ((0, 1), (0, 0))),  # GoogLeNetBN's pool before 5a, uneven.
        ((3, 3), 2, "SAME"),
    ],
)
def test_max_pool_equals_xla_with_ties(xla_then_custom, window, stride, padding):
  # After a ReLU a third of the inputs are zero, so many windows hold tied maxima: the gradient
  # must go where XLA's goes (the first maximum in row-major order), not just to a maximum.
  x = np.maximum(np.random.default_rng(1).standard_normal((3, 11, 10, 5)) - 0.5, 0)
  x = jnp.asarray(x, jnp.float32)

  def pool_and_grad(x):
    pool = lambda x: ops.max_pool(x, window, (stride, stride), padding)
    return pool(x), jax.grad(lambda x: jnp.sum(jnp.sin(3 * pool(x))))(x)

  (y0, dx0), (y1, dx1) = xla_then_custom(pool_and_grad, x)
  np.testing.assert_array_equal(y1, y0)
  np.testing.assert_array_equal(dx1, dx0)
  np.testing.assert_array_equal(y0, nn.max_pool(x, window, (stride, stride), padding))


@pytest.mark.parametrize(
    "backend, setting, conv, pool",
    [
        ("cpu", "auto", True, True),
        ("cpu", "off", False, False),
        ("gpu", "auto", False, True),  # Convolutions: cuDNN's; pools: the views' gradient.
        ("gpu", "on", False, True),
        ("gpu", "off", False, False),
        ("tpu", "auto", False, False),
    ],
)
def test_which_paths_each_backend_takes(monkeypatch, backend, setting, conv, pool):
  monkeypatch.setattr(ops.jax, "default_backend", lambda: backend)
  ops.set_cpu_conv_vjp(None)
  monkeypatch.delenv("INCRES_CPU_CONV_VJP", raising=False)
  assert ops.cpu_conv_vjp_enabled(setting) is conv
  assert ops.max_pool_views_enabled(setting) is pool
  with pytest.raises(ValueError, match="cpu_conv_vjp"):
    ops.max_pool_views_enabled("gpu")
  # What a model traces: the views' custom gradient exactly where `pool` says.
  jaxpr = str(
      jax.make_jaxpr(lambda x: ops.max_pool(x, (3, 3), (1, 1), "SAME", setting))(
          jnp.zeros((1, 4, 4, 2))
      )
  )
  assert ("custom_vjp_call" in jaxpr) is pool
