"""ResNet's scanned layout (`scan_blocks`): the same network, its variables re-arranged exactly."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from incres import complexity, finetune, models
from incres.models import resnet

TINY = {
    # CifarResNet20 at width 4 (stages of 3 blocks) on 8x8 images.
    "cifar": (functools.partial(models.CifarResNet20, width=4), 8),
    # Bottleneck stages of 2 and 3 blocks (strided 1x1, projection shortcuts), 32x32 images.
    "bottleneck": (
        functools.partial(
            models.ResNet, stage_sizes=(2, 3), block=models.Bottleneck, width=4, num_classes=5
        ),
        32,
    ),
    # Pre-activation bottleneck units (stages of 2 and 3, the first unit without its own BN-ReLU).
    "preact": (
        functools.partial(
            models.PreActResNet,
            stage_sizes=(2, 3),
            block=models.PreActBottleneck,
            width=4,
            num_classes=5,
            stem="cifar",
        ),
        8,
    ),
}


@functools.cache
def _variables(kind):
  """Unscanned variables (random BN statistics too) and a batch, made once per kind."""
  make, size = TINY[kind]
  x = jax.random.normal(jax.random.key(1), (4, size, size, 3))
  variables = jax.jit(make().init)(jax.random.key(0), x)
  # Random running statistics and affine BN parameters, so that every array matters.
  leaves, treedef = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  leaves = [a + 0.1 * jax.random.uniform(k, a.shape) for a, k in zip(leaves, keys)]
  return jax.tree.unflatten(treedef, leaves), x


def _nets(kind, **scan_kwargs):
  """(unscanned model, scanned model, unscanned variables with random BN, a batch)."""
  make, _ = TINY[kind]
  return make(), make(scan_blocks=True, **scan_kwargs), *_variables(kind)


def _assert_close(a, b, tol=2e-5):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    u, v = np.asarray(u), np.asarray(v)
    assert u.shape == v.shape
    np.testing.assert_allclose(u, v, rtol=tol, atol=tol * max(1.0, float(np.abs(v).max())))


def test_the_layouts_convert_exactly_and_match_the_scanned_model():
  plain, scanned, variables, x = _nets("cifar")
  stacked = resnet.stack_blocks(variables)
  assert set(stacked["params"]) == {
      "stem_conv",
      "stem_bn",
      "head",
      *(f"stage{i}_block0" for i in (1, 2, 3)),
      *(f"stage{i}_blocks" for i in (1, 2, 3)),
  }
  assert stacked["params"]["stage2_blocks"]["conv1"]["kernel"].shape == (2, 3, 3, 8, 8)
  np.testing.assert_array_equal(
      stacked["batch_stats"]["stage3_blocks"]["bn2"]["mean"][1],
      variables["batch_stats"]["stage3_block2"]["bn2"]["mean"],
  )
  shapes = lambda t: jax.tree.map(lambda a: (a.shape, a.dtype), t)
  assert shapes(stacked) == shapes(jax.eval_shape(scanned.init, jax.random.key(0), x))
  assert resnet.has_stacked_blocks(stacked) and not resnet.has_stacked_blocks(variables)
  back = resnet.unstack_blocks(stacked)
  assert jax.tree.structure(back) == jax.tree.structure(variables)
  assert all(
      np.array_equal(a, b) for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(variables))
  )
  # Each direction leaves a tree already in its layout unchanged.
  assert shapes(resnet.to_layout(stacked, True)) == shapes(stacked)
  assert shapes(resnet.to_layout(variables, False)) == shapes(variables)


# Eval mode of a bottleneck net: test_torchvision_conversion_into_the_scanned_layout (ResNet-50).
@pytest.mark.parametrize(
    "kind,train,remat",
    [
        ("cifar", False, False),
        ("cifar", True, True),
        ("bottleneck", True, True),
        ("preact", True, True),
    ],
)
def test_scanned_and_unscanned_nets_compute_the_same(kind, train, remat):
  plain, scanned, variables, x = _nets(kind, remat_blocks=remat)
  labels = jnp.arange(x.shape[0]) % 3

  def loss_and_state(model, variables):
    def loss(params):
      (logits, extras), state = model.apply(
          {**variables, "params": params},
          x,
          train=train,
          mutable=["batch_stats", "intermediates"],
      )
      nll = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))
      return nll, (logits, extras["features"], state)

    return jax.jit(jax.grad(loss, has_aux=True))(variables["params"])

  grads, (logits, features, state) = loss_and_state(plain, variables)
  s_grads, (s_logits, s_features, s_state) = loss_and_state(scanned, resnet.stack_blocks(variables))
  _assert_close(s_logits, logits)
  _assert_close(s_features, features)
  _assert_close(resnet.unstack_blocks(s_grads), grads)
  # Figure 7's responses (the sown `intermediates`): same layers, same names, same values.
  # (A pre-activation net sows nothing: it has no BN after a unit's last conv.)
  _assert_close(
      resnet.unstack_blocks(s_state.get("intermediates", {})), state.get("intermediates", {})
  )
  if train:  # The running statistics' updates.
    _assert_close(resnet.unstack_blocks(s_state["batch_stats"]), state["batch_stats"])
    assert not np.allclose(
        state["batch_stats"]["stage1_block1"]["bn1"]["mean"],
        variables["batch_stats"]["stage1_block1"]["bn1"]["mean"],
    )
  assert float(np.abs(np.asarray(grads["stage2_block2"]["conv2"]["kernel"])).max()) > 0


@pytest.mark.slow  # Tracing the unscanned CifarResNet1202 and ResNet-152 (no compiling).
@pytest.mark.parametrize(
    "name,expected",
    [
        ("CifarResNet1202", 19_421_274),
        ("ResNet152", 60_192_808),
        ("CifarPreActResNet1001", 10_327_706),
    ],
)
def test_parameter_counts_are_the_same_in_both_layouts(name, expected):
  size = models.MODELS[name]
  counts = {}
  for scan in (False, True):
    model = models.get_model(name, scan_blocks=scan)
    variables = complexity.abstract_variables(model, size)
    counts[scan] = complexity.count_params(variables)
    stats = sum(math.prod(a.shape) for a in jax.tree.leaves(variables["batch_stats"]))
    counts[scan, "batch_stats"] = stats
  assert counts[False] == counts[True] == expected
  assert counts[False, "batch_stats"] == counts[True, "batch_stats"]


def test_multiply_adds_count_every_repeat_of_a_scanned_block():
  plain, scanned = models.CifarResNet20(), models.CifarResNet20(scan_blocks=True)
  assert complexity.count_macs(scanned, 32) == complexity.count_macs(plain, 32) > 40_000_000


def test_fine_tuning_inherits_the_layout_and_may_change_it():
  source = ml_collections.ConfigDict(
      {"model": "CifarResNet1202", "model_kwargs": {"scan_blocks": True}, "normalize": "none"}
  )
  config = ml_collections.ConfigDict({"model": "", "model_kwargs": {}, "normalize": "none"})
  finetune.inherit_architecture(config, source)
  assert config.model_kwargs.scan_blocks is True
  config = ml_collections.ConfigDict(
      {"model": "", "model_kwargs": {"scan_blocks": False}, "normalize": "none"}
  )
  finetune.inherit_architecture(config, source)  # No BackboneMismatchError: only the layout.
  assert config.model_kwargs.scan_blocks is False


@pytest.mark.slow  # Trains a tiny scanned run for one step, then fine-tunes it unscanned.
def test_a_scanned_run_serves_figure_7_and_fine_tunes_an_unscanned_net(tmp_path):
  import tiny_config as tiny  # pylint: disable=g-import-not-at-top

  from incres import analysis, checkpoint, state as state_lib, train

  source = str(tmp_path / "scanned")
  train.train_and_evaluate(
      tiny.get(steps=1, every=1, model_kwargs={"width": 4, "scan_blocks": True}), source
  )
  # Figure 7 reads the scanned run layer by layer, in the unscanned names and order.
  stds = analysis.layer_responses(source, max_examples=16)
  names = ["stem_bn_out"] + [
      f"stage{i}_block{j}/bn_out{k}" for i in (1, 2, 3) for j in range(3) for k in (1, 2)
  ]
  assert list(stds) == names and all(np.isfinite(v) and v > 0 for v in stds.values())

  config = tiny.get(steps=1, every=1, init_from=source, num_classes=10)
  config.model_kwargs = ml_collections.ConfigDict({"width": 4, "scan_blocks": False})
  assert finetune.resolve_init_from(config) == (source, None)
  model = state_lib.create_model(config)
  tx = state_lib.create_optimizer(config, state_lib.create_learning_rate_fn(config))
  mesh = state_lib.create_mesh()
  state = state_lib.create_train_state(config, model, tx, mesh)
  sharding = jax.tree.map(lambda a: a.sharding, state)
  state = finetune.initialize_from(
      state, (source, None), tx, sharding, str(tmp_path / "fine"), is_chief=False
  )
  _, _, loaded = checkpoint.load_variables(source)
  want = resnet.unstack_blocks(jax.device_get(loaded))
  got = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
  assert jax.tree.structure(got) == jax.tree.structure(want)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))


@pytest.mark.slow  # Converts a random torchvision ResNet-50 twice and writes the scanned run.
def test_torchvision_conversion_into_the_scanned_layout(tmp_path):
  torch = pytest.importorskip("torch")
  pytest.importorskip("torchvision")
  from test_convert_torch import _torchvision_model  # pylint: disable=g-import-not-at-top

  from incres import checkpoint, convert_torch

  tv = _torchvision_model("resnet50")
  x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
  with torch.no_grad():
    expected = tv(torch.from_numpy(x)).numpy()
  images = x.transpose(0, 2, 3, 1)
  logits = {}
  for scan in (False, True):
    model, variables = convert_torch.convert(tv.state_dict(), "resnet50", scan_blocks=scan)
    assert model.scan_blocks is scan and resnet.has_stacked_blocks(variables) is scan
    logits[scan] = np.asarray(jax.jit(lambda v, m=model: m.apply(v, images)[0])(variables))
  np.testing.assert_allclose(logits[True], logits[False], rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(logits[True], expected, rtol=1e-4, atol=1e-3)

  written = convert_torch.save("resnet50", variables, str(tmp_path / "run"))
  config, model, loaded = checkpoint.load_variables(written.out)
  assert config.model_kwargs.scan_blocks is True and model.scan_blocks is True
  assert resnet.has_stacked_blocks(loaded)
