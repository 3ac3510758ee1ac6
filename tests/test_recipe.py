"""The 2021 recipes' device-side parts: BCE, LAMB and LARS, the decay switches, EMA timing, resume."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from incres import checkpoint_compat, configs, errors, losses, train
from incres import state as state_lib

import tiny_config as tiny  # tests/ is on the path (pytest's rootdir-relative import).
from test_train import assert_trees_equal

pytestmark = pytest.mark.usefixtures("compilation_cache")

NEW_KEYS = (
    "lamb_b1",
    "lamb_b2",
    "lamb_eps",
    "lars_trust_coefficient",
    "lars_eps",
    "decay_norms",
    "decay_biases",
    "loss",
    "bce_target_threshold",
    "mixup_alpha",
    "cutmix_alpha",
    "mix_prob",
    "mix_switch_prob",
    "ema_every_steps",
    "ema_warmup_copy",
    "ema_batch_stats",
)


# --- Binary cross-entropy ------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [None, 0.2])
def test_bce_is_timms_on_mixed_smoothed_targets(threshold):
  torch = pytest.importorskip("torch")
  timm_loss = pytest.importorskip("timm.loss")
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 5)).astype(np.float32) * 3
  labels = rng.integers(0, 5, 6)
  smoothed = np.asarray(losses.one_hot_targets(jnp.asarray(labels), 5, 0.1))
  targets = 0.7 * smoothed + 0.3 * np.roll(smoothed, 1, axis=0)  # Mixed: 0.3 crosses 0.2.
  ours = losses.binary_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), threshold).mean()
  ref = timm_loss.BinaryCrossEntropy(smoothing=0.0, target_threshold=threshold)
  theirs = ref(torch.from_numpy(logits), torch.from_numpy(targets.astype(np.float32)))
  assert float(ours) == pytest.approx(float(theirs), rel=1e-6)
  # Integer labels: timm smooths them itself, as `one_hot_targets` does.
  sparse = timm_loss.BinaryCrossEntropy(smoothing=0.1, target_threshold=threshold)
  expected = sparse(torch.from_numpy(logits), torch.from_numpy(labels))
  got = losses.binary_cross_entropy(jnp.asarray(logits), jnp.asarray(smoothed), threshold).mean()
  assert float(got) == pytest.approx(float(expected), rel=1e-6)


class _NetWithAux(nn.Module):
  """A main head and one auxiliary head on the flattened image."""

  @nn.compact
  def __call__(self, x, train: bool):
    del train
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(10)(x), {"aux_logits": (nn.Dense(10, name="aux")(x),)}


def test_the_configs_loss_names_are_the_losses_the_step_knows():
  # configs.py validates `loss` without importing JAX; the names must be the step's.
  assert set(configs.LOSSES) == set(losses.LOSSES)


def test_bce_step_scores_the_aux_head_too_and_the_ema_follows_its_timing():
  # loss="bce" for both heads; the EMA (decay 0.5) updated after steps 0, 2, 4 (every 2), a copy
  # of the parameters at those below 3 (warm-up 1 step + every 2).
  config = tiny.get(schedule="constant", learning_rate=0.5, ema_decay=0.5)
  model = _NetWithAux()
  state, step = tiny.jitted_train_step(
      config,
      model,
      aux_loss_weight=0.3,
      label_smoothing=0.1,
      ema_decay=0.5,
      loss="bce",
      ema_every_steps=2,
      ema_copy_steps=3,
  )
  batch = tiny.random_batch(8)
  logits, extras = model.apply({"params": state.params}, batch["image"], train=True)
  targets = losses.one_hot_targets(jnp.asarray(batch["label"]), 10, 0.1)
  bce = lambda x: float(losses.binary_cross_entropy(x, targets).mean())  # noqa: E731
  expected = {"loss": bce(logits), "aux_loss": bce(extras["aux_logits"][0])}
  ema = jax.device_get(state.ema_params)
  for k in range(6):
    state, m = step(state, batch)
    if k == 0:
      assert {key: float(m[key]) for key in expected} == pytest.approx(expected, rel=1e-5)
    params = jax.device_get(state.params)
    if k in (0, 2):
      ema = params
    elif k == 4:
      ema = jax.tree.map(lambda e, p: 0.5 * e + 0.5 * p, ema, params)
    for got, want in zip(jax.tree.leaves(jax.device_get(state.ema_params)), jax.tree.leaves(ema)):
      np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=f"after step {k}")
  assert not np.allclose(jax.tree.leaves(ema)[0], jax.tree.leaves(params)[0])  # It lags.


class _NetWithBN(nn.Module):
  """A dense layer, batch norm (momentum 0.5: its statistics move fast), a classifier."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(8)(x.reshape(x.shape[0], -1))
    x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
    return nn.Dense(10)(nn.relu(x)), {}


@pytest.fixture(scope="module")
def bn_steps():
  """`{ema_batch_stats: (states, metrics)}`: the initial state and those after each of 6 steps on
  random batches, EMA decay 0.5 updated after steps 0, 2, 4, a copy at those below 3."""
  config = tiny.get(schedule="constant", learning_rate=0.5, ema_decay=0.5)
  model = _NetWithBN()
  lr_fn = state_lib.create_learning_rate_fn(config)
  tx = state_lib.create_optimizer(config, lr_fn)
  step = jax.jit(
      functools.partial(
          train.train_step,
          model=model,
          tx=tx,
          learning_rate_fn=lr_fn,
          aux_loss_weight=0.0,
          label_smoothing=0.0,
          ema_decay=0.5,
          ema_every_steps=2,
          ema_copy_steps=3,
      )
  )
  rng = np.random.default_rng(0)
  batches = [
      {
          "image": rng.normal(size=(8, 16, 16, 3)).astype(np.float32) + k,
          "label": rng.integers(0, 10, 8).astype(np.int32),
      }
      for k in range(6)
  ]
  runs = {}
  for on in (False, True):
    config.ema_batch_stats = on
    state = state_lib.create_train_state(config, model, tx, state_lib.create_mesh())
    states, metrics = [jax.device_get(state)], []
    for batch in batches:
      state, m = step(state, batch)
      states.append(jax.device_get(state))
      metrics.append(jax.device_get(m))
    runs[on] = states, metrics
  return runs


def test_ema_of_the_batch_stats_follows_the_ema_rule_and_timing(bn_steps):
  states, _ = bn_steps[True]
  ema = states[0].batch_stats  # The average starts at the initial statistics.
  for got, want in zip(jax.tree.leaves(states[0].ema_batch_stats), jax.tree.leaves(ema)):
    np.testing.assert_array_equal(got, want)
  for k in range(6):
    new = states[k + 1].batch_stats  # This step's statistics, then the average's update.
    if k in (0, 2):
      ema = new
    elif k == 4:
      ema = jax.tree.map(lambda e, n: 0.5 * np.asarray(e, np.float64) + 0.5 * n, ema, new)
    for got, want in zip(
        jax.tree.leaves(states[k + 1].ema_batch_stats), jax.tree.leaves(ema), strict=True
    ):
      np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=f"after step {k}")
  last = jax.tree.leaves(states[-1].batch_stats)[0]
  assert np.abs(jax.tree.leaves(ema)[0] - last).max() > 0.1  # It lags the statistics.


def test_without_the_switch_nothing_else_changes(bn_steps):
  """No averaged statistics are kept, and the steps' states and metrics are bitwise those of the
  run that keeps them (the parameters' EMA included)."""
  (off, off_metrics), (on, on_metrics) = bn_steps[False], bn_steps[True]
  assert all(s.ema_batch_stats is None for s in off)
  for a, b in zip(off, on, strict=True):
    assert_trees_equal(a.replace(ema_batch_stats=None), b.replace(ema_batch_stats=None))
  assert_trees_equal(off_metrics, on_metrics)


def test_torchvision_ema_decay_is_its_recipes_adjustment():
  # ResNet-50 V2: 8 GPUs x 128, --model-ema-steps 32, --model-ema-decay 0.99998, 600 epochs.
  decay = configs.torchvision_ema_decay(0.99998, 8 * 128, 32, 600)
  assert decay == pytest.approx(1 - 2e-5 * 1024 * 32 / 600, rel=1e-12)
  assert configs.torchvision_ema_decay(0.9, 1024, 32, 1) == 0.0  # alpha capped at 1.


# --- Optimizers and weight decay -----------------------------------------------------------------


def _params():
  rng = np.random.default_rng(0)
  shapes = {
      "conv": {"kernel": (3, 4), "bias": (4,)},
      "bn": {"scale": (4,), "bias": (4,)},
      "stem": {"kernel": (2, 3)},
  }
  return {
      m: {n: rng.normal(size=s).astype(np.float32) for n, s in leaves.items()}
      for m, leaves in shapes.items()
  }


@pytest.mark.parametrize("norms", [False, True])
@pytest.mark.parametrize("biases", [False, True])
def test_the_decay_switches_choose_norms_and_biases(norms, biases):
  mask = state_lib.weight_decay_mask(_params(), norms=norms, biases=biases)
  assert mask == {
      "conv": {"kernel": True, "bias": biases},
      "bn": {"scale": norms, "bias": norms},
      "stem": {"kernel": True},
  }
  # The SGD chain applies it: with zero gradient only the decayed parameters shrink.
  config = tiny.get(
      weight_decay=0.5, momentum=0.0, learning_rate=1.0, decay_norms=norms, decay_biases=biases
  )
  tx = state_lib.create_optimizer(config, lambda step: 1.0)
  params = jax.tree.map(jnp.asarray, _params())
  zeros = jax.tree.map(jnp.zeros_like, params)
  new = optax.apply_updates(params, tx.update(zeros, tx.init(params), params)[0])
  shrunk = jax.tree.map(lambda a, b: bool(np.allclose(b, 0.5 * np.asarray(a))), params, new)
  assert shrunk == mask


def _two_steps(config):
  tx = state_lib.create_optimizer(config, lambda step: 0.1)
  params = jax.tree.map(jnp.asarray, _params())
  state = tx.init(params)
  grads = [
      jax.tree.map(
          lambda p, i=i: jnp.asarray(np.cos(np.arange(p.size) + i).reshape(p.shape)), params
      )
      for i in (1, 2)
  ]
  for g in grads:
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
  return jax.device_get(params), [jax.device_get(g) for g in grads]


def _norm(x):
  return float(np.sqrt(np.sum(np.asarray(x, np.float64) ** 2)))


def test_lamb_is_the_papers_algorithm_with_timms_exclusions():
  config = tiny.get(optimizer="lamb", weight_decay=0.01)
  got, grads = _two_steps(config)
  mask = state_lib.weight_decay_mask(_params())
  b1, b2, eps, lr, wd = 0.9, 0.999, 1e-6, 0.1, 0.01
  for m, leaves in _params().items():
    for n, w in leaves.items():
      w = np.asarray(w, np.float64)
      mom, vel = np.zeros_like(w), np.zeros_like(w)
      for t, g in enumerate((grads[0][m][n], grads[1][m][n]), start=1):
        mom = b1 * mom + (1 - b1) * g
        vel = b2 * vel + (1 - b2) * g**2
        r = (mom / (1 - b1**t)) / (np.sqrt(vel / (1 - b2**t)) + eps)
        if mask[m][n]:  # Decayed and adapted: the trust ratio ||w|| / ||r + wd w||.
          u = r + wd * w
          w = w - lr * _norm(w) / _norm(u) * u
        else:  # Excluded from both: Adam's step.
          w = w - lr * r
      np.testing.assert_allclose(got[m][n], w, rtol=1e-5, atol=1e-5, err_msg=f"{m}/{n}")


def test_lars_is_optaxs_trust_ratio_with_exclusions():
  config = tiny.get(optimizer="lars", weight_decay=0.01, momentum=0.9, lars_trust_coefficient=0.02)
  got, grads = _two_steps(config)
  mask = state_lib.weight_decay_mask(_params())
  lr, wd, tc, mu = 0.1, 0.01, 0.02, 0.9
  for m, leaves in _params().items():
    for n, w in leaves.items():
      w = np.asarray(w, np.float64)
      trace = np.zeros_like(w)
      for g in (grads[0][m][n], grads[1][m][n]):
        if mask[m][n]:  # tc ||w|| / ||g + wd w|| (optax; the paper: ||g|| + wd ||w||).
          g = g + wd * w
          g = tc * _norm(w) / _norm(g) * g
        trace = lr * g + mu * trace
        w = w - trace
      np.testing.assert_allclose(got[m][n], w, rtol=1e-5, atol=1e-5, err_msg=f"{m}/{n}")


# --- Bad settings, old configs -------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, names",
    [
        ({"optimizer": "adamw"}, "optimizer='adamw'"),
        ({"loss": "focal"}, "loss='focal'"),
        ({"mixup_alpha": -0.2}, "mixup_alpha=-0.2"),
        ({"mix_switch_prob": 1.5}, "mix_switch_prob=1.5"),
        ({"bce_target_threshold": 1.0}, "bce_target_threshold=1.0"),
        ({"ema_every_steps": 0}, "ema_every_steps=0"),
        ({"cosine_spans_warmup": True, "schedule": "piecewise"}, "cosine_spans_warmup=True"),
        ({"lr_per_epoch": True, "num_epochs": 0.0}, "lr_per_epoch=True"),
        ({"ema_batch_stats": True}, "ema_batch_stats=True .* ema_decay is None"),
    ],
)
def test_bad_recipe_settings_are_user_errors_naming_the_key(override, names):
  config = tiny.get(**override)
  with pytest.raises(errors.ConfigError, match=names):
    configs.check_recipe(config)
  if "optimizer" in override:
    with pytest.raises(errors.ConfigError, match="adamw"):
      state_lib.create_optimizer(config, lambda step: 0.1)


def test_a_config_saved_before_the_recipe_keys_resumes_with_the_old_behaviour():
  config = tiny.get()
  old = {k: v for k, v in config.to_dict().items() if k not in NEW_KEYS}
  assert set(NEW_KEYS) <= set(config.keys())
  checkpoint_compat.check("step 4", old, config, {}, {})  # Not an identity key: no refusal.
  assert not state_lib.averages_batch_stats(ml_collections.ConfigDict({**old, "ema_decay": 0.9}))
  options = train.step_options(ml_collections.ConfigDict(old))
  assert options == {
      "mixing": None,
      "loss": "softmax_ce",
      "bce_target_threshold": None,
      "ema_every_steps": 1,
      "ema_copy_steps": 0,
  }
  assert state_lib.weight_decay_mask(_params()) == state_lib.config_decay_mask(
      ml_collections.ConfigDict(old)
  )(_params())


# --- Exact resume with everything on -------------------------------------------------------------


@pytest.mark.slow  # Three tiny runs: 25-57 s on a shared 2-core machine, mostly compiling.
def test_resume_with_mixing_bce_lamb_and_timed_ema_is_bitwise_exact(tmp_path):
  """2 steps, then a new run of the same config to 4: the bits of 4 uninterrupted steps, with
  every recipe part on (the mixing draws, the EMA's timing and LAMB's moments are all state or
  (rng, step))."""
  config = tiny.get(
      steps=4,
      every=2,
      eval_batch_size=16,
      eval_split="test[:16]",
      lr_boundaries=(3,),
      mixup_alpha=0.2,
      cutmix_alpha=1.0,
      label_smoothing=0.1,
      loss="bce",
      bce_target_threshold=0.2,
      optimizer="lamb",
      learning_rate=0.005,
      decay_norms=True,
      ema_decay=0.9,
      ema_every_steps=2,
      ema_warmup_copy=True,
      ema_batch_stats=True,
      warmup_steps=1,
  )
  tiny.assert_exact_resume(config, tmp_path, 2, averaged=(False, "ema"))
