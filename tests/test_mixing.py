"""Mixup and CutMix in the train step: the references' semantics, the draws, determinism, devices."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import conftest
from incres import losses, mixing

import tiny_config as tiny  # tests/ is on the path (pytest's rootdir-relative import).

# Both on, mixed 60% of the time, CutMix a quarter of those: every distribution test reads their
# draws (sampling a Beta compiles for seconds, so once).
BOTH = mixing.Mixing(mixup_alpha=0.2, cutmix_alpha=1.0, prob=0.6, switch_prob=0.25)
N = 6000


# CutMix alone: the switch probability must not matter.
CUTMIX = mixing.Mixing(cutmix_alpha=1.0, switch_prob=0.0)


@functools.lru_cache(maxsize=None)
def _all_draws() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """N draws of `BOTH` and of `CUTMIX` for a 32 x 32 image, from keys 0..N-1 (one compile)."""
  keys = jax.vmap(jax.random.key)(jnp.arange(N))
  f = jax.jit(jax.vmap(lambda k: (mixing.draw(k, BOTH, 32, 32), mixing.draw(k, CUTMIX, 32, 32))))
  return tuple({k: np.asarray(v) for k, v in d._asdict().items()} for d in f(keys))


def _draws() -> dict[str, np.ndarray]:
  return _all_draws()[0]


def test_mixup_weights_have_the_moments_of_beta():
  # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)); 0.2: 0.1786 (torchvision's recipe's alpha).
  d = _draws()
  lam = d["lam"][d["mixed"] & ~d["cutmix"]]
  assert len(lam) > 2000
  assert lam.mean() == pytest.approx(0.5, abs=0.04)  # 4 standard errors.
  assert lam.var() == pytest.approx(1 / (4 * 1.4), abs=0.012)


def test_mix_and_switch_probabilities_are_the_frequencies():
  d = _draws()
  assert d["mixed"].mean() == pytest.approx(0.6, abs=0.02)  # 3.2 standard errors.
  assert d["cutmix"][d["mixed"]].mean() == pytest.approx(0.25, abs=0.024)
  unmixed = ~d["mixed"]
  assert (d["lam"][unmixed] == 1.0).all() and (d["box"][unmixed] == 0).all()


def test_cutmix_weight_is_the_unpasted_share_and_the_box_follows_lambda():
  d = _draws()
  y0, y1, x0, x1 = d["box"][d["cutmix"]].T
  area = (y1 - y0) * (x1 - x0)
  np.testing.assert_allclose(d["lam"][d["cutmix"]], 1 - area / 32**2, rtol=0, atol=1e-6)
  assert (0 <= y0).all() and (y1 <= 32).all() and (0 <= x0).all() and (x1 <= 32).all()
  # Unclipped (centred), the box's side is sqrt(1 - lam) of the image's, rounded down to even.
  lam = jnp.linspace(0.0, 1.0, 101)
  boxes = np.asarray(jax.jit(jax.vmap(lambda l: mixing.cutmix_box(l, 100, 100, 200, 200)))(lam))
  side = 200 * np.sqrt(1 - np.asarray(lam))
  for got in (boxes[:, 1] - boxes[:, 0], boxes[:, 3] - boxes[:, 2]):
    assert ((got <= side + 1e-4) & (got > side - 2)).all()


def test_cutmix_box_is_torchvisions(monkeypatch):
  torch = pytest.importorskip("torch")
  v2 = pytest.importorskip("torchvision.transforms.v2")
  cases = [(0.3, 5, 9), (0.9, 0, 31), (0.05, 16, 16), (0.6, 31, 0), (0.999, 7, 20)]
  for lam, cy, cx in cases:
    draws = iter([torch.tensor([cx]), torch.tensor([cy])])  # Its order: x, then y.
    monkeypatch.setattr(torch, "randint", lambda *a, **k: next(draws))
    cut = v2.CutMix(num_classes=10)
    cut._dist = type("Fixed", (), {"sample": lambda self, shape: torch.tensor([lam])})()
    params = cut.make_params([torch.zeros(2, 3, 24, 32)])
    x1, y1, x2, y2 = params["box"]
    ours = mixing.cutmix_box(jnp.float32(lam), cy, cx, 24, 32)
    assert tuple(int(v) for v in ours) == (y1, y2, x1, x2), (lam, cy, cx)


def _first(kind: str) -> mixing.Draw:
  """The first of `_draws()` that is a CutMix ("cutmix") or a mixup ("mixup") draw."""
  d = _draws()
  i = int(np.argmax(d["cutmix"] if kind == "cutmix" else d["mixed"] & ~d["cutmix"]))
  return mixing.Draw(**{k: jnp.asarray(v[i]) for k, v in d.items()})


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_images_and_targets_are_torchvisions_on_the_same_draw(kind):
  torch = pytest.importorskip("torch")
  v2 = pytest.importorskip("torchvision.transforms.v2")
  rng = np.random.default_rng(0)
  images = rng.normal(size=(6, 32, 32, 3)).astype(np.float32)
  labels = rng.integers(0, 5, 6)
  targets = np.eye(5, dtype=np.float32)[labels]
  d = _first(kind)
  mixed = jax.jit(mixing.mix_images)(images, d)
  mixed_targets = mixing.mix_targets(jnp.asarray(targets), d.lam)
  assert bool(d.cutmix) == (kind == "cutmix") and float(d.lam) < 1.0
  if kind == "cutmix":
    ref = v2.CutMix(num_classes=5)
    y0, y1, x0, x1 = (int(v) for v in d.box)
    fixed = {"box": (x0, y0, x1, y1), "lam_adjusted": float(d.lam)}
    assert 0 < (y1 - y0) * (x1 - x0) < 32 * 32  # A real box: some pixels of each image.
  else:
    ref = v2.MixUp(num_classes=5)
    fixed = {"lam": float(d.lam)}
  ref.make_params = lambda flat_inputs: fixed
  out, out_targets = ref(torch.from_numpy(images.transpose(0, 3, 1, 2)), torch.from_numpy(labels))
  np.testing.assert_allclose(mixed, out.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(mixed_targets, out_targets.numpy(), rtol=1e-6, atol=1e-7)


def test_cutmix_alone_ignores_the_switch():
  d = _all_draws()[1]
  assert d["mixed"].all() and d["cutmix"].all()


def test_smoothed_then_mixed_targets_are_timms_and_give_torchs_smoothed_loss():
  torch = pytest.importorskip("torch")
  timm_mixup = pytest.importorskip("timm.data.mixup")
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 7, 8)
  logits = rng.normal(size=(8, 7)).astype(np.float32)
  # timm's smoothing: off-values s / K, on-value 1 - s + s / K.
  ours = losses.one_hot_targets(jnp.asarray(labels), 7, 0.1)
  theirs = timm_mixup.one_hot(
      torch.from_numpy(labels), 7, on_value=1 - 0.1 + 0.1 / 7, off_value=0.1 / 7
  )
  np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-6)
  lam = jnp.float32(0.3)
  mixed = mixing.mix_targets(ours, lam)
  np.testing.assert_allclose(mixed.sum(-1), 1.0, rtol=1e-6)
  # torchvision's recipe: CrossEntropyLoss(label_smoothing) on the mixed unsmoothed one-hots.
  plain = mixing.mix_targets(losses.one_hot_targets(jnp.asarray(labels), 7), lam)
  expected = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(
      torch.from_numpy(logits), torch.from_numpy(np.array(plain))
  )
  got = optax.softmax_cross_entropy(jnp.asarray(logits), mixed).mean()
  assert float(got) == pytest.approx(float(expected), rel=1e-5)


class _Linear(nn.Module):
  """A stand-in classifier: one dense layer on the flattened image."""

  @nn.compact
  def __call__(self, x, train: bool):
    del train
    return nn.Dense(10)(x.reshape(x.shape[0], -1)), {}


def test_the_steps_mixing_depends_only_on_the_state_rng_and_step():
  config = tiny.get(momentum=0.0, weight_decay=0.0)
  model, mix = _Linear(), mixing.Mixing(mixup_alpha=0.2, cutmix_alpha=1.0)
  state, step = tiny.jitted_train_step(
      config, model, aux_loss_weight=0.0, label_smoothing=0.0, ema_decay=None, mixing=mix
  )
  batch = tiny.random_batch(8)

  @jax.jit
  def expected_loss(state, batch):  # The documented key's draw, mixed and scored by hand.
    key = mixing.step_key(jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step))
    images, targets, _ = mixing.mix_batch(
        key, batch["image"], losses.one_hot_targets(batch["label"], 10), mix
    )
    logits, _ = model.apply({"params": state.params}, images, train=True)
    return optax.softmax_cross_entropy(logits, targets).mean()

  step_losses = []
  for k in (0, 1, 2):
    s = state.replace(step=jnp.int32(k))
    first = float(jax.device_get(step(s, batch)[1]["loss"]))
    assert first == float(jax.device_get(step(s, batch)[1]["loss"]))  # Same (rng, step), bits.
    assert first == pytest.approx(float(expected_loss(s, batch)), rel=1e-5)
    step_losses.append(first)
  assert len(set(step_losses)) == 3  # Each step draws anew.


_EIGHT_DEVICES = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from incres import mixing, state
assert jax.device_count() == 8
x = np.random.default_rng(0).normal(size=(16, 8, 8, 3)).astype(np.float32)
t = np.eye(10, dtype=np.float32)[np.arange(16) % 10]
f = jax.jit(lambda x, t, d: (mixing.mix_images(x, d), mixing.mix_targets(t, d.lam)))
sharded = NamedSharding(state.create_mesh(), P("data"))
one = jax.devices()[0]
draws = [  # A mixup and a CutMix draw: both pair across the devices' boundaries.
    mixing.Draw(jnp.float32(0.3), jnp.bool_(True), jnp.bool_(False), jnp.zeros(4, jnp.int32)),
    mixing.Draw(jnp.float32(0.75), jnp.bool_(True), jnp.bool_(True), jnp.int32([2, 6, 0, 4])),
]
for d in draws:
  a = f(jax.device_put(x, sharded), jax.device_put(t, sharded), d)
  b = f(jax.device_put(x, one), jax.device_put(t, one), d)
  assert a[0].sharding.spec == P("data")  # Mixed where the batch lies.
  for u, v in zip(a, b):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
  assert not np.array_equal(np.asarray(a[0]), x)
print("ok")
"""


def test_8_devices_mix_the_global_batch_as_1_device():
  conftest.assert_script_prints_ok(_EIGHT_DEVICES, devices=8)
