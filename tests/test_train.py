"""The training loop: schedules, optimizer, steps, outputs, exact resume, NaN stop, bad input."""

from __future__ import annotations

import functools
import json
import math
import os
import weakref

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from incres import checkpoint, configs, errors, metrics, train
from incres import state as state_lib

import tiny_config as tiny  # tests/ is on the path (pytest's rootdir-relative import).
from tiny_config import assert_trees_equal, params_of

pytestmark = pytest.mark.usefixtures("compilation_cache")


def tiny_config(steps: int = 6, **overrides):
  defaults = dict(eval_batch_size=64, eval_split="test[:128]", lr_boundaries=(4,))
  return tiny.get(steps=steps, every=2, **{**defaults, **overrides})


# --- Schedules and optimizer ---------------------------------------------------------------------


def test_piecewise_schedule_with_constant_warmup_keeps_absolute_boundaries():
  # ResNet-110: 0.01 for the first 400 steps, then 0.1, divided by 10 at 32k and 48k.
  config = tiny_config(
      learning_rate=0.1, lr_boundaries=(32000, 48000), warmup_steps=400, warmup_learning_rate=0.01
  )
  lr = state_lib.create_learning_rate_fn(config)
  expected = {0: 0.01, 399: 0.01, 400: 0.1, 31999: 0.1, 32000: 0.01, 48000: 0.001, 63999: 0.001}
  for step, value in expected.items():
    assert float(lr(step)) == pytest.approx(value, rel=1e-6), step


def test_per_epoch_piecewise_schedule_changes_at_the_first_epoch_start_after_a_boundary():
  # 110 steps in 10.5 epochs: epoch e starts at step round(e * 110 / 10.5) (0, 10, 21, 31, ..., 73,
  # ...). A boundary at 2.5 epochs takes effect at epoch 3's first step (31), one at 7 at epoch 7's
  # (73); the warm-up's 1 epoch runs at its rate. The step values are resolve_config's.
  config = tiny_config(steps=110, learning_rate=1.0, lr_per_epoch=True, warmup_learning_rate=0.5)
  config.update(num_epochs=10.5, lr_boundary_epochs=(2.5, 7.0), warmup_epochs=1.0)
  config.update(lr_boundaries=(26, 73), warmup_steps=10)
  lr = state_lib.create_learning_rate_fn(config)
  expected = {0: 0.5, 9: 0.5, 10: 1.0, 30: 1.0, 31: 0.1, 72: 0.1, 73: 0.01, 109: 0.01}
  assert {s: float(lr(s)) for s in expected} == pytest.approx(expected, rel=1e-6)
  config.lr_boundaries = (4,)  # Set in steps: per-epoch stepping would ignore it, so it refuses.
  with pytest.raises(errors.ConfigError, match="lr_boundaries is set in steps.*lr_boundary_epochs"):
    state_lib.create_learning_rate_fn(config)


def test_exponential_schedule_is_a_staircase():
  # GoogLeNet: 4% lower every 8 epochs.
  config = tiny_config(
      schedule="exponential", learning_rate=0.01, lr_decay_steps=80, lr_decay_rate=0.96
  )
  lr = state_lib.create_learning_rate_fn(config)
  assert float(lr(79)) == pytest.approx(0.01)
  assert float(lr(80)) == pytest.approx(0.0096)
  assert float(lr(239)) == pytest.approx(0.01 * 0.96**2)


def test_cosine_schedule_with_linear_warmup():
  config = tiny_config(
      steps=110, schedule="cosine", learning_rate=1.0, warmup_steps=10, warmup_shape="linear"
  )
  lr = state_lib.create_learning_rate_fn(config)
  assert float(lr(0)) == pytest.approx(0.0)
  assert float(lr(5)) == pytest.approx(0.5)
  assert float(lr(10)) == pytest.approx(1.0)
  assert float(lr(60)) == pytest.approx(0.5, abs=1e-6)
  assert float(lr(110)) == pytest.approx(0.0, abs=1e-6)


def test_weight_decay_only_touches_kernels():
  config = tiny_config(weight_decay=0.5, momentum=0.0, learning_rate=1.0)
  tx = state_lib.create_optimizer(config, state_lib.create_learning_rate_fn(config))
  params = {
      "conv": {"kernel": jnp.ones((3, 3, 2, 2)), "bias": jnp.ones((2,))},
      "bn": {"scale": jnp.ones((2,))},
  }
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new["conv"]["kernel"], 0.5)  # 1 - lr * wd * 1
  np.testing.assert_array_equal(new["conv"]["bias"], 1.0)
  np.testing.assert_array_equal(new["bn"]["scale"], 1.0)


def test_gradient_clipping_and_nesterov():
  config = tiny_config(weight_decay=0.0, learning_rate=1.0, grad_clip_norm=1.0, nesterov=True)
  tx = state_lib.create_optimizer(config, state_lib.create_learning_rate_fn(config))
  params = {"w": jnp.zeros((2, 2))}
  grads = {"w": jnp.full((2, 2), 100.0)}
  updates, _ = tx.update(grads, tx.init(params), params)
  # Clipped to norm 1, then Nesterov's first step is g + momentum * g = 1.9 g.
  assert float(optax.tree.norm(updates)) == pytest.approx(1.9, rel=1e-5)


# --- Steps ---------------------------------------------------------------------------------------


class _LogitsAreInputs(nn.Module):
  """A stand-in model whose logits are its inputs, to test eval_step's arithmetic exactly."""

  @nn.compact
  def __call__(self, x, train: bool):
    return x, {"features": x, "aux_logits": ()}


def test_eval_step_counts_top1_top5_and_ignores_padding():
  logits = jnp.array(
      [
          [9, 1, 2, 3, 4, 5, 0],  # label 0: top-1 hit
          [9, 8, 7, 6, 5, 0, 1],  # label 4: top-5 hit only
          [9, 8, 7, 6, 5, 4, 3],  # label 6: miss
          [0, 0, 0, 0, 0, 0, 9],  # padding (label 6 would be a hit)
      ],
      jnp.float32,
  )
  batch = {"image": logits, "label": jnp.array([0, 4, 6, 6]), "mask": jnp.array([1, 1, 1, 0.0])}
  sums = train.eval_step({}, batch, model=_LogitsAreInputs())
  assert (float(sums["top1"]), float(sums["top5"]), float(sums["count"])) == (1.0, 2.0, 3.0)


class _TinyNetWithAux(nn.Module):
  """GoogLeNet's interface in miniature: two auxiliary heads in training, dropout, a dtype."""

  num_classes: int = 10
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.relu(nn.Conv(4, (3, 3), strides=2, dtype=self.dtype)(x))
    # Like GoogLeNet, the heads exist (are initialised) in both modes and are returned in training.
    aux = (
        nn.Dense(self.num_classes, name="aux1")(x.mean((1, 2))),
        nn.Dense(self.num_classes, name="aux2")(x.max((1, 2))),
    )
    aux = aux if train else ()
    features = nn.Dropout(0.4, deterministic=not train)(x.mean((1, 2)))
    logits = nn.Dense(self.num_classes, dtype=self.dtype)(features).astype(jnp.float32)
    return logits, {"features": features, "aux_logits": aux}


def _aux_step(dtype: str):
  """The aux-head stand-in's (model, state, jitted train_step with aux weight 0.3 and label
  smoothing 0.1, batch of 8)."""
  config = tiny_config(dtype=dtype, aux_loss_weight=0.3, label_smoothing=0.1)
  model = _TinyNetWithAux(dtype=jnp.dtype(dtype))
  state, step = tiny.jitted_train_step(
      config, model, aux_loss_weight=0.3, label_smoothing=0.1, ema_decay=None
  )
  return model, state, step, tiny.random_batch(8)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_train_step_adds_weighted_aux_losses_and_updates_every_parameter(dtype):
  model, state, step, batch = _aux_step(dtype)
  new_state, m = step(state, batch)
  m = jax.device_get(m)
  assert m["aux_loss"] > 0 and all(math.isfinite(float(v)) for v in m.values())
  assert m["total_loss"] == pytest.approx(m["loss"] + 0.3 * m["aux_loss"], rel=1e-5)
  assert m["loss"] > 2.0  # Plain cross-entropy of the main head, about log(10) at init.
  assert int(new_state.step) == 1
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, new_state.params)
  assert all(jax.tree.leaves(changed)), changed


def test_train_step_smooths_the_labels_of_the_aux_heads_too():
  # The metric `aux_loss` recomputed outside the step from the same model, variables and dropout
  # key: each head's cross-entropy against smoothed labels, not one-hot ones.
  model, state, step, batch = _aux_step("float32")
  apply = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
  (logits, extras), _ = apply(
      state_lib.model_variables(state.params, state.batch_stats),
      batch["image"],
      rngs={"dropout": jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)},
  )
  targets = np.eye(10, dtype=np.float32)[batch["label"]]

  def loss(x, smoothing):  # In NumPy: eager JAX would compile every operation (seconds).
    x = np.asarray(x, np.float64)
    log_p = x - x.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    return float(-(((1 - smoothing) * targets + smoothing / 10) * log_p).sum(-1).mean())

  heads = extras["aux_logits"]
  assert len(heads) == 2
  expected = {"loss": loss(logits, 0.1), "aux_loss": sum(loss(x, 0.1) for x in heads)}
  unsmoothed = sum(loss(x, 0.0) for x in heads)
  assert abs(unsmoothed - expected["aux_loss"]) > 1e-3  # The smoothing is visible at this scale.
  m = jax.device_get(step(state, batch)[1])
  assert {k: float(m[k]) for k in expected} == pytest.approx(expected, rel=1e-5)


def _one_step(config, model, aux_loss_weight, ema_decay=None):
  """(state before, state after) of one jitted `train_step` on a fixed random batch."""
  state, step = tiny.jitted_train_step(
      config, model, aux_loss_weight=aux_loss_weight, label_smoothing=0.0, ema_decay=ema_decay
  )
  batch = tiny.random_batch(8)
  before = jax.device_get(state)  # Copied before the step can donate or reuse its buffers.
  return before, jax.device_get(step(state, batch)[0])


def test_aux_loss_weight_scales_the_gradient_that_is_applied():
  # Plain SGD (no momentum, no decay): the update is -lr * gradient of the differentiated loss.
  # The auxiliary heads' parameters get gradient only from the auxiliary losses, so weighting those
  # by 0.3 must scale their update by 0.3, and leave the main classifier's update as it is.
  config = tiny_config(momentum=0.0, weight_decay=0.0, learning_rate=1.0)
  model = _TinyNetWithAux()
  moved = {}
  for weight in (1.0, 0.3):
    before, after = _one_step(config, model, aux_loss_weight=weight)
    moved[weight] = jax.tree.map(
        lambda a, b: np.asarray(b, np.float64) - a, before.params, after.params
    )
  for head in ("aux1", "aux2"):
    for name, delta in moved[1.0][head].items():
      assert np.abs(delta).max() > 1e-3, (head, name)  # The head really moved.
      np.testing.assert_allclose(
          moved[0.3][head][name], 0.3 * delta, rtol=1e-4, atol=1e-7, err_msg=f"{head}/{name}"
      )
  np.testing.assert_allclose(
      moved[0.3]["Dense_0"]["kernel"], moved[1.0]["Dense_0"]["kernel"], rtol=1e-5, atol=1e-7
  )


def test_ema_step_averages_old_and_new_parameters():
  # One step from EMA = p0 with decay 0.9 gives 0.9 * p0 + 0.1 * p1 (p1: the updated parameters).
  config = tiny_config(ema_decay=0.9, learning_rate=1.0)
  before, after = _one_step(config, _TinyNetWithAux(), aux_loss_weight=0.3, ema_decay=0.9)
  for p0, e0 in zip(jax.tree.leaves(before.params), jax.tree.leaves(before.ema_params)):
    np.testing.assert_array_equal(e0, p0)  # The average starts at the initial parameters.
  flat = jax.tree_util.tree_flatten_with_path(before.params)[0]
  for (path, p0), p1, ema in zip(
      flat, jax.tree.leaves(after.params), jax.tree.leaves(after.ema_params)
  ):
    assert np.abs(p1 - p0).max() > 1e-3, jax.tree_util.keystr(path)  # The step moved them.
    np.testing.assert_allclose(
        ema,
        0.9 * np.asarray(p0, np.float64) + 0.1 * p1,
        rtol=1e-5,
        atol=1e-6,
        err_msg=jax.tree_util.keystr(path),
    )


# --- The loop ------------------------------------------------------------------------------------


class _Counting:
  """Batch i is filled with i; counts how many batches were taken; "skips" 2 images a batch."""

  def __init__(self, n: int):
    self.taken, self.n = 0, n

  @property
  def skipped(self) -> int:
    return 2 * self.taken

  def __iter__(self):
    return self

  def __next__(self):
    if self.taken == self.n:
      raise StopIteration
    self.taken += 1
    return {"image": np.full((8, 2), self.taken - 1, np.float32)}


@pytest.mark.parametrize("size", [0, 2])
def test_device_prefetch_keeps_size_batches_in_flight_in_order(size):
  mesh = state_lib.create_mesh()
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  source = _Counting(5)
  batches = train.DevicePrefetch(source, sharding, size)
  first = next(batches)
  assert source.taken == 1 + size  # Batch 0 for the step, `size` more already copied.
  assert isinstance(first["image"], jax.Array) and first["image"].sharding == sharding
  assert batches.skipped == 2  # As of batch 0: the batches in flight do not count yet.
  rest = []
  for b in batches:
    rest.append(int(b["image"][0, 0]))
    assert batches.skipped == 2 * len(rest) + 2
  assert [int(first["image"][0, 0])] + rest == [0, 1, 2, 3, 4]


def test_device_prefetch_closed_frees_its_source_and_the_batches_in_flight():
  """The loop closes it (`with`) before the last save: a freed tf.data iterator stops its threads,
  which would otherwise keep filling buffers while the save finishes."""
  sharding = jax.sharding.NamedSharding(state_lib.create_mesh(), jax.sharding.PartitionSpec("data"))
  source = _Counting(5)
  alive = weakref.ref(source)
  with train.DevicePrefetch(source, sharding, 2) as batches:
    del source
    next(batches)
  assert alive() is None
  with pytest.raises(StopIteration):  # Nothing left in flight either.
    next(batches)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """6 uninterrupted steps with EMA (of the batch statistics too) and Polyak averaging;
  checkpoints at 2, 4, 6."""
  workdir = str(tmp_path_factory.mktemp("run") / "uninterrupted")
  config = tiny_config(ema_decay=0.9, ema_batch_stats=True, polyak=True, keep_checkpoints=2)
  result = train.train_and_evaluate(config, workdir)
  return config, workdir, result


def test_run_writes_metrics_tensorboard_config_and_checkpoints(finished_run):
  config, workdir, result = finished_run
  assert result["step"] == 6 and not result["preempted"]
  for key in ("eval/top1", "eval/top5", "eval_ema/top1", "eval_polyak/top5", "train/loss"):
    assert key in result and math.isfinite(result[key]), key
  assert 0.0 <= result["eval/top1"] <= result["eval/top5"] <= 1.0

  records = metrics.read_metrics(workdir)
  assert [r["step"] for r in records if "train/loss" in r] == [2, 4, 6]
  assert {"train/loss", "train/accuracy", "train/learning_rate", "train/images_per_sec"} <= set(
      records[-2]
  )
  assert records[-1]["step"] == 6 and records[-1]["eval/top1"] == result["eval/top1"]

  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  tags = set()
  for name in os.listdir(workdir):
    if "tfevents" in name:
      for raw in tf.data.TFRecordDataset(os.path.join(workdir, name)):
        event = tf.compat.v1.Event.FromString(raw.numpy())
        tags |= {v.tag for v in event.summary.value}
  assert {
      "train/loss",
      "train/learning_rate",
      "train/images_per_sec",
      "eval/top1",
      "eval/top5",
  } <= tags

  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  assert saved["num_classes"] == 10 and saved["model"] == "CifarResNet20"  # Resolved from -1.
  assert os.path.exists(os.path.join(workdir, "config.yaml"))
  # keep_checkpoints=2 keeps the last two; the best by eval/top1 (only step 6 was evaluated).
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))) == [4, 6]


def test_load_variables_raw_and_averaged(finished_run):
  config, workdir, _ = finished_run
  cfg, model, raw = checkpoint.load_variables(workdir)
  _, _, ema = checkpoint.load_variables(workdir, averaged="ema")
  _, _, polyak = checkpoint.load_variables(workdir, averaged="polyak")
  assert cfg.model == config.model and set(raw) == {"params", "batch_stats"}
  x = jnp.zeros((2, 16, 16, 3))
  logits, _ = model.apply(raw, x, train=False)
  assert logits.shape == (2, 10)
  leaf = lambda v, key="params": jax.tree.leaves(v[key])[0]
  assert not np.array_equal(leaf(raw), leaf(ema)) and not np.array_equal(leaf(ema), leaf(polyak))
  # The EMA's own batch statistics (ema_batch_stats); Polyak's are the run's.
  assert not np.array_equal(leaf(raw, "batch_stats"), leaf(ema, "batch_stats"))
  assert_trees_equal(polyak["batch_stats"], raw["batch_stats"])
  with pytest.raises(FileNotFoundError, match="available steps"):
    checkpoint.load_variables(workdir, step=1)


def test_eval_ema_pairs_the_averaged_parameters_with_their_batch_statistics(finished_run):
  from incres import data  # pylint: disable=g-import-not-at-top

  _, workdir, result = finished_run
  config, model, ema = checkpoint.load_variables(workdir, averaged="ema")  # Step 6's.
  raw_stats = checkpoint.load_variables(workdir)[2]["batch_stats"]
  sharding = jax.sharding.NamedSharding(state_lib.create_mesh(), jax.sharding.PartitionSpec("data"))
  p_eval_step = jax.jit(functools.partial(train.eval_step, model=model))

  def loss(variables):
    metrics = train.evaluate_split(p_eval_step, variables, data.create_eval_iter(config), sharding)
    return metrics["loss"]

  assert loss(ema) == pytest.approx(result["eval_ema/loss"], rel=1e-6)
  assert loss({**ema, "batch_stats": raw_stats}) != pytest.approx(result["eval_ema/loss"], rel=1e-3)


def test_resume_is_bitwise_exact(finished_run, tmp_path):
  """3 steps, then a new run of the same config to 6: the same bits as 6 uninterrupted steps.

  The first 3 steps run without device prefetching: the batches and their order are the same.
  """
  config, reference, _ = finished_run
  workdir = tiny.assert_exact_resume(
      config, tmp_path, 3, averaged=(False, "ema", "polyak"), reference=reference
  )
  # One record per logged step, none duplicated by the restart.
  steps = [r["step"] for r in metrics.read_metrics(workdir) if "train/loss" in r]
  assert steps == sorted(set(steps)) and steps[-1] == 6


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch
):
  from incres import data  # pylint: disable=g-import-not-at-top

  real_iter = data.create_train_iter

  def poisoned_iter(config, *, start_step=0, **kw):  # The 5th batch (step 5) has a NaN pixel.
    for k, batch in enumerate(real_iter(config, start_step=start_step, **kw), start=start_step):
      if k == 4:
        batch = dict(batch, image=batch["image"].copy())
        batch["image"][0, 0, 0, 0] = np.nan
      yield batch

  monkeypatch.setattr(data, "create_train_iter", poisoned_iter)
  workdir = str(tmp_path / "nan")
  with pytest.raises(train.NonFiniteLossError, match=r"diverged at step 5: .*nan.*step 4, is kept"):
    train.train_and_evaluate(tiny_config(steps=8, ema_decay=0.9, polyak=True), workdir)
  config, _, variables = checkpoint.load_variables(workdir)
  assert checkpoint.Checkpointer(workdir, config, save_every_steps=1, keep=1).latest_step() == 4
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(variables))


def snapshot(directory: str) -> dict[str, tuple[int, float]]:
  out = {}
  for root, dirs, files in os.walk(directory):
    for name in dirs + files:
      path = os.path.join(root, name)
      out[path] = (os.path.getsize(path), os.path.getmtime(path))
  return out


@pytest.mark.parametrize(
    "override, names",
    [
        ({"model_kwargs": {"width": 8}}, ["model_kwargs", "params."]),
        (
            {"model": "CifarPlain20"},
            ["model: checkpoint 'CifarResNet20', this config 'CifarPlain20'"],
        ),
        ({"polyak": False}, ["polyak_params"]),
        ({"ema_batch_stats": False}, ["ema_batch_stats.", "(also differs) ema_batch_stats"]),
    ],
    ids=["width", "model", "averaging", "averaged_statistics"],
)
def test_incompatible_workdir_is_refused_and_untouched(finished_run, override, names):
  config, workdir, _ = finished_run
  other = config.copy_and_resolve_references()
  other.num_train_steps = 8
  for key, value in override.items():
    other[key] = value
  before = snapshot(workdir)
  with pytest.raises(checkpoint.IncompatibleCheckpointError) as e:
    train.train_and_evaluate(other, workdir)
  for name in names:
    assert name in str(e.value)
  assert "Nothing in the workdir was changed" in str(e.value)
  assert snapshot(workdir) == before


def test_unknown_model_lists_the_known_ones():
  config = tiny_config(model="ResNet19")
  with pytest.raises(ValueError, match=r"Unknown model 'ResNet19'.*CifarResNet20"):
    state_lib.create_model(config, num_classes=10)


def test_batch_size_must_split_over_devices():
  config = tiny_config(batch_size=10)
  with pytest.raises(ValueError, match="batch_size=10 is not divisible"):
    configs.validate(config, num_devices=4, num_processes=1)


def test_placement_is_decided_once_per_run(tmp_path, monkeypatch):
  """One run decides where its augmentation runs once, and the pipeline, the train step and the
  run's message all take that decision (`data.decide_placement`)."""
  from incres import data  # pylint: disable=g-import-not-at-top  (heavy: TensorFlow)
  from incres.data import placement

  calls = []
  decide = placement.decide_placement

  def counting(*args, **kw):
    calls.append(args)
    return decide(*args, **kw)

  monkeypatch.setattr(placement, "decide_placement", counting)
  monkeypatch.setattr(data, "decide_placement", counting, raising=False)
  train.train_and_evaluate(tiny_config(2), str(tmp_path / "run"))
  assert len(calls) == 1


def test_prepare_run_builds_the_run_and_writes_nothing(tmp_path):
  """The run's parts come resolved and checked before its workdir is touched (the lock, the restore
  and the outputs come after)."""
  from incres import data  # pylint: disable=g-import-not-at-top  (heavy: TensorFlow)

  workdir = str(tmp_path / "run")
  run = train.prepare_run(tiny_config(2), workdir)
  try:
    assert not os.path.exists(workdir)
    assert run.resume_step is None and run.config.num_train_steps == 2
    assert run.placement == data.decide_placement(run.config)
    assert run.batch_sharding.spec == jax.sharding.PartitionSpec("data")
  finally:
    run.ckpt.close()
