"""Stochastic depth (incres.models.layers.drop_path) in every residual family.

Semantics against torchvision's `ops.stochastic_depth(mode="row")` and the linear rule of timm and
torchvision's ConvNeXt; each block's rate in ResNet, PreActResNet (WRN) and Inception-ResNet;
identity at evaluation; no change at rate 0; masks determined by (config, step); exact resume.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from incres import errors, models
from incres import state as state_lib
from incres.models import layers

import tiny_config as tiny  # tests/ is on the path (pytest's rootdir-relative import).
import torch_helpers

pytestmark = pytest.mark.usefixtures("compilation_cache")

# One tiny net per residual family, with the 32x32 input each takes.
FAMILIES = {
    "ResNet": (functools.partial(models.CifarResNet20, width=4), 9),
    "PreActResNet": (functools.partial(models.WRN28_10, width=1, stage_sizes=(2, 2, 2)), 6),
    "InceptionResNet": (
        functools.partial(models.InceptionResNetV1_32, width=0.0625, num_blocks=(2, 2, 2)),
        6,
    ),
}


class _DropPath(nn.Module):
  rate: float

  @nn.compact
  def __call__(self, y):
    return layers.drop_path(self, y, self.rate)


def test_linear_schedule_is_timms_rule():
  assert layers.drop_path_rates(0.2, 5) == pytest.approx((0.0, 0.05, 0.1, 0.15, 0.2))
  assert layers.drop_path_rates(0.3, 1) == (0.3,)
  assert layers.drop_path_rates(0.0, 3) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_rows_are_dropped_at_the_rate_and_kept_rows_scaled_as_torchvision_does(rate):
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  n = 20_000
  y = np.random.default_rng(0).uniform(0.5, 1.5, size=(n, 2, 2, 3)).astype(np.float32)
  out = np.asarray(
      jax.jit(lambda y: _DropPath(rate).apply({}, y, rngs={"dropout": jax.random.key(0)}))(y)
  )
  torch.manual_seed(0)
  ref = torchvision.ops.stochastic_depth(torch.from_numpy(y), rate, "row", True).numpy()
  std = np.sqrt(rate * (1 - rate) / n)
  for got in (out, ref):
    dropped = np.all(got == 0, axis=(1, 2, 3))
    assert abs(dropped.mean() - rate) < 4 * std  # Whole rows (examples) go, at the rate.
    assert np.all(np.any(got[~dropped] != 0, axis=(1, 2, 3)))
    np.testing.assert_allclose(got[~dropped], y[~dropped] / (1 - rate), rtol=1e-6)


def _block_rates(model, train: bool) -> dict[str, float]:
  """The stochastic-depth rate each residual block is called with (traced, not compiled)."""
  seen = {}

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and len(args) == 2 and context.module.path:
      seen["/".join(context.module.path)] = float(args[1])
    return next_fun(*args, **kwargs)

  x = jnp.zeros((2, 32, 32, 3))
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  with nn.intercept_methods(interceptor):
    jax.eval_shape(
        lambda v: model.apply(
            v, x, train=train, rngs={"dropout": jax.random.key(1)}, mutable=["batch_stats"]
        ),
        variables,
    )
  return seen


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_residual_block_gets_its_linear_rate_in_training_only(family):
  build, num_blocks = FAMILIES[family]
  rates = _block_rates(build(drop_path_rate=0.4), train=True)
  assert len(rates) == num_blocks, rates  # Every residual block, no reduction or stem.
  expected = layers.drop_path_rates(0.4, num_blocks)
  assert list(rates.values()) == pytest.approx(expected), rates  # In the order they run.
  assert rates[next(iter(rates))] == 0.0 and max(rates.values()) == pytest.approx(0.4)
  assert set(_block_rates(build(drop_path_rate=0.4), train=False).values()) == {0.0}


def test_blocks_drop_their_rows_at_their_rates_in_a_network(monkeypatch):
  # Every block of a CIFAR ResNet-20, one training batch of 512: the fraction of examples whose
  # residual branch was zeroed matches that block's rate.
  model = models.CifarResNet20(width=4, drop_path_rate=0.8)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(512, 8, 8, 3)), jnp.float32)
  variables = torch_helpers.random_variables(model, x)
  real = layers.drop_path

  def forward(variables, x):
    seen = []

    def recording(module, y, rate):
      out = real(module, y, rate)
      seen.append((out, y))
      return out

    monkeypatch.setattr(layers, "drop_path", recording)
    model.apply(
        variables, x, train=True, rngs={"dropout": jax.random.key(3)}, mutable=["batch_stats"]
    )
    return seen

  seen = jax.jit(forward)(variables, x)
  monkeypatch.setattr(layers, "drop_path", real)
  for (out, y), rate in zip(seen, layers.drop_path_rates(0.8, 9), strict=True):
    out, y = np.asarray(out), np.asarray(y)
    live = np.any(y != 0, axis=(1, 2, 3))
    dropped = np.all(out[live] == 0, axis=(1, 2, 3))
    std = np.sqrt(rate * (1 - rate) / live.sum())
    assert abs(dropped.mean() - rate) <= 4 * std + 1e-9, (rate, dropped.mean())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_identity_at_evaluation_and_nothing_drawn_at_rate_zero(family):
  build, _ = FAMILIES[family]
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 32, 3)), jnp.float32)
  plain, dropping = build(), build(drop_path_rate=0.5)
  variables = torch_helpers.random_variables(plain, x)
  # The same variables: the rate adds no parameter or statistic.
  shapes = lambda m: jax.tree.map(jnp.shape, torch_helpers.random_variables(m, x))
  assert shapes(dropping) == jax.tree.map(jnp.shape, variables)
  eval_plain = jax.jit(functools.partial(plain.apply, train=False))(variables, x)[0]
  eval_dropping = jax.jit(functools.partial(dropping.apply, train=False))(variables, x)[0]
  np.testing.assert_array_equal(eval_dropping, eval_plain)
  if family != "InceptionResNet":  # Its classifier's own dropout draws in training.
    # At rate 0 training draws nothing: tracing it without a "dropout" stream succeeds.
    jax.eval_shape(lambda v: plain.apply(v, x, train=True, mutable=["batch_stats"]), variables)


def test_scanned_blocks_drop_independently_and_deterministically():
  model = models.CifarResNet20(width=4, scan_blocks=True, drop_path_rate=0.5)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 16, 16, 3)), jnp.float32)
  variables = torch_helpers.random_variables(model, x)

  @jax.jit
  def train_logits(key):
    return model.apply(variables, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"])[0][
        0
    ]

  a, b = train_logits(jax.random.key(0)), train_logits(jax.random.key(0))
  c = train_logits(jax.random.key(1))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  plain = models.CifarResNet20(width=4, scan_blocks=True)
  ref = plain.apply(variables, x, train=True, mutable=["batch_stats"])[0][0]
  assert not np.allclose(a, ref)  # The scanned blocks did drop.


@pytest.mark.parametrize(
    "build, message",
    [
        (functools.partial(models.CifarResNet20, drop_path_rate=1.0), r"rate in \[0, 1\)"),
        (functools.partial(models.WRN28_10, drop_path_rate=-0.1), r"rate in \[0, 1\)"),
        (functools.partial(models.CifarPlain20, drop_path_rate=0.1), "no residual blocks"),
        (functools.partial(models.InceptionV4, drop_path_rate=0.1), "no residual blocks"),
    ],
)
def test_bad_rates_are_config_errors(build, message):
  with pytest.raises(errors.ConfigError, match=message):
    jax.eval_shape(build().init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def _config(steps: int, **overrides):
  config = tiny.get(
      steps=steps, every=2, eval_batch_size=64, eval_split="test[:64]", lr_boundaries=(3,)
  )
  config.model_kwargs.drop_path_rate = 0.5
  config.update(overrides)
  return config


def test_masks_depend_on_the_step_and_the_seed_only():
  config = _config(4)
  model = state_lib.create_model(config, 10)
  state, step = tiny.jitted_train_step(
      config, model, aux_loss_weight=0.0, label_smoothing=0.0, ema_decay=None
  )
  batch = tiny.random_batch(16)
  loss = lambda s: float(step(s, batch)[1]["loss"])
  base = loss(state)
  assert loss(state) == base  # The same (state, step): the same masks.
  assert loss(state.replace(step=state.step + 1)) != base  # Another step: other masks.
  other_seed = jax.random.key_data(jax.random.key(123))
  assert loss(state.replace(rng=other_seed)) != base  # The run's key feeds the masks too.


@pytest.mark.slow  # Three tiny runs, two compiles: 30-71 s on the loaded shared 2-core machine.
def test_resume_is_bitwise_exact_with_drop_path(tmp_path):
  tiny.assert_exact_resume(_config(4), tmp_path, 2)
