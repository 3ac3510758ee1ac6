"""Inception-v3: torchvision's exact structure, its modes, its weights, and the Inception recipe."""

from __future__ import annotations

import functools
import importlib.util
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from incres import complexity, configs, convert_torch, data, metrics, models, paper, state, train
from incres.models import inception_v3

import torch_helpers  # tests/ is on the path (pytest's rootdir-relative import).

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One module of each kind (the aux head still follows mixed_6e), 2-28 channels per conv.
SHORT = (
    ("mixed_5b", "A", 32),
    ("mixed_6a", "B", 0),
    ("mixed_6e", "C", 192),
    ("mixed_7a", "D", 0),
    ("mixed_7b", "E", 0),
)
TINY = dict(width=0.0625, num_classes=5, layout=SHORT)


def _recipe(arg=None):
  spec = importlib.util.spec_from_file_location(
      "inception", os.path.join(ROOT, "experiments", "inception.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _tiny(size=75, **kw):
  """A width-1/16 InceptionV3 without the auxiliary head (which needs 299 inputs) and its input."""
  model = models.InceptionV3(**{**TINY, "aux_heads": False, **kw})
  x = jax.random.normal(jax.random.key(1), (4, size, size, 3))
  return model, torch_helpers.random_variables(model, x), x


# --- Structure (full size, shapes only) ----------------------------------------------------------


@pytest.mark.parametrize("aux_heads", [True, False])
def test_parameter_counts_equal_torchvisions(aux_heads):
  count = complexity.count_params(
      complexity.abstract_variables(models.InceptionV3(aux_heads=aux_heads), 299)
  )
  # torchvision.models.inception_v3(weights=None, aux_logits=..., init_weights=False).
  table = paper.PARAMS if aux_heads else paper.PARAMS_WITHOUT_AUX
  assert count == table["InceptionV3"] == (27_161_264 if aux_heads else 23_834_568)


def test_multiply_adds_are_torchvisions_and_near_the_papers_5_billion():
  macs = complexity.count_macs(models.InceptionV3(), 299)
  assert macs == 5_713_216_096 and round(macs / 1e9, 3) * 1e9 == paper.MACS["InceptionV3"]
  assert 1.0 < macs / paper.INCEPTION_V3_PAPER_MACS < 1.15  # "5 billion" (abstract).


def test_grid_sizes_are_35_17_8_and_widths_are_the_released_graphs():
  model = models.InceptionV3(num_classes=7)
  variables = complexity.abstract_variables(model, 299)
  x = jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32)
  _, inter = jax.eval_shape(
      lambda v, x: model.apply(
          v,
          x,
          train=False,
          capture_intermediates=lambda m, _: (m.name or "").startswith("mixed_"),
          mutable=["intermediates"],
      ),
      variables,
      x,
  )
  shapes = {k: v["__call__"][0].shape[1:] for k, v in inter["intermediates"].items()}
  assert shapes == {
      "mixed_5b": (35, 35, 256),
      "mixed_5c": (35, 35, 288),
      "mixed_5d": (35, 35, 288),
      **{f"mixed_6{m}": (17, 17, 768) for m in "abcde"},
      "mixed_7a": (8, 8, 1280),
      "mixed_7b": (8, 8, 2048),
      "mixed_7c": (8, 8, 2048),
  }
  p = variables["params"]
  # Factorised 7x7 (Figure 6) and expanded 1x3 / 3x1 banks (Figure 7).
  assert p["mixed_6b"]["branch7x7_2"]["conv"]["kernel"].shape == (1, 7, 128, 128)
  assert p["mixed_6b"]["branch7x7_3"]["conv"]["kernel"].shape == (7, 1, 128, 192)
  assert p["mixed_7b"]["branch3x3_2b"]["conv"]["kernel"].shape == (3, 1, 384, 384)
  assert "bias" not in p["conv2d_1a_3x3"]["conv"]  # BatchNorm after every conv, no conv biases.


@pytest.mark.parametrize("aux_heads", [True, False])
def test_outputs_features_and_auxiliary_logits_only_in_training(aux_heads):
  model = models.InceptionV3(num_classes=7, aux_heads=aux_heads)
  variables = complexity.abstract_variables(model, 299, batch=2)
  assert ("aux_6e" in variables["params"]) == aux_heads
  x = jax.ShapeDtypeStruct((2, 299, 299, 3), jnp.float32)
  for train_mode in (False, True):
    logits, extras = jax.eval_shape(
        lambda v, x: model.apply(
            v, x, train=train_mode, rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"]
        )[0],
        variables,
        x,
    )
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    assert extras["features"].shape == (2, 2048)
    aux = [a.shape for a in extras["aux_logits"]]
    assert aux == ([(2, 7)] if train_mode and aux_heads else []), aux


# --- Modes and numerics (tiny width) -------------------------------------------------------------


def _apply(model, train_mode):
  return jax.jit(functools.partial(model.apply, train=train_mode, mutable=["batch_stats"]))


def test_batchnorm_uses_batch_statistics_in_training_and_running_ones_in_evaluation():
  model, variables, x = _tiny(dropout_rate=0.0, layout=SHORT[:3])
  evaluate = _apply(model, False)
  (logits, _), eval_vars = evaluate(variables, x)
  assert jax.tree.all(
      jax.tree.map(np.array_equal, eval_vars["batch_stats"], variables["batch_stats"])
  )
  # Evaluation treats every image on its own: its logits do not depend on the rest of the batch.
  alone = evaluate(variables, x[::-1])[0][0]
  np.testing.assert_allclose(alone[::-1], logits, rtol=1e-5, atol=1e-5)
  (train_logits, _), train_vars = _apply(model, True)(variables, x)
  changed = jax.tree.map(
      lambda a, b: not np.array_equal(a, b), train_vars["batch_stats"], variables["batch_stats"]
  )
  assert all(jax.tree.leaves(changed))
  assert not np.allclose(train_logits, logits, atol=1e-3)


def test_bfloat16_forward_is_finite_and_close_to_float32():
  model, variables, x = _tiny()
  model16 = models.InceptionV3(**{**TINY, "aux_heads": False, "dtype": jnp.bfloat16})
  shapes16 = jax.eval_shape(functools.partial(model16.init, train=False), jax.random.key(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes16))  # fp32 parameters.
  f32 = jax.jit(functools.partial(model.apply, train=False))(variables, x)[0]
  bf16, extras = jax.jit(functools.partial(model16.apply, train=False))(variables, x)
  assert bf16.dtype == jnp.float32 and extras["features"].dtype == jnp.float32
  assert np.all(np.isfinite(bf16))
  scale = float(jnp.abs(f32).max())
  assert float(jnp.abs(bf16 - f32).max()) < 0.05 * scale + 1e-3
  assert not np.array_equal(np.asarray(bf16), np.asarray(f32))  # It really ran in bfloat16.


# --- torchvision ---------------------------------------------------------------------------------


def _torchvision_inception_v3():
  """torchvision's inception_v3 with random weights and statistics and its auxiliary head."""
  # linear_gain 10: logits of O(1-10), as trained weights give.
  return torch_helpers.torchvision_model(
      "inception_v3", linear_gain=10.0, aux_logits=True, init_weights=False
  )


@pytest.mark.slow
def test_converted_logits_equal_torchvisions():
  # 107x107 (any input from 75 up runs in evaluation), with torchvision's transform_input step.
  tv = _torchvision_inception_v3()
  tv.transform_input = True
  x = torch_helpers.images(107)
  expected = torch_helpers.torch_logits(tv, x)
  model, variables = convert_torch.convert(tv.state_dict(), "inception_v3")
  assert model.transform_input and model.aux_heads  # torchvision's pretrained weights' setting.
  assert np.abs(expected).max() > 1.0
  assert (
      torch_helpers.relative_error(torch_helpers.incres_logits(model, variables, x), expected)
      <= 1e-4
  )


def test_converted_auxiliary_head_equals_torchvisions():
  tv = _torchvision_inception_v3()
  model, variables = convert_torch.convert(tv.state_dict(), "inception_v3", transform_input=False)
  assert not model.transform_input
  feat = np.random.default_rng(0).normal(size=(2, 768, 17, 17)).astype(np.float32)
  expected = torch_helpers.torch_logits(tv.AuxLogits, feat)
  unit = functools.partial(inception_v3.ConvBN, train=False)
  head = inception_v3.AuxHead(10, unit, lambda c: c)
  aux_vars = {k: v["aux_6e"] for k, v in variables.items()}
  got = head.apply(aux_vars, feat.transpose(0, 2, 3, 1))
  np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())


def test_state_dict_round_trips_through_export_and_other_weights_fail_clearly():
  from incres import export

  torch = pytest.importorskip("torch")
  sd = _torchvision_inception_v3().state_dict()
  _, variables = convert_torch.convert(sd, "inception_v3")
  config = convert_torch.import_config("inception_v3", 10)
  assert config.image_size == 299 and config.model_kwargs.transform_input
  back, constructor = export.torch_state_dict(config, variables)  # Loads it with strict=True.
  assert back.keys() == sd.keys()
  for key, tensor in sd.items():
    assert torch.equal(back[key], tensor) or key.endswith("num_batches_tracked"), key
  assert constructor == (
      "torchvision.models.inception_v3(num_classes=10, aux_logits=True, transform_input=True)"
  )
  no_aux = {k: v for k, v in sd.items() if not k.startswith("AuxLogits.")}
  assert not convert_torch.convert(no_aux, "inception_v3")[0].aux_heads
  with pytest.raises(convert_torch.ConversionError, match="torchvision's inception_v3"):
    convert_torch.convert({**sd, "Mixed_5b.branch9.conv.weight": sd["fc.weight"]}, "inception_v3")
  with pytest.raises(
      convert_torch.ConversionError, match="does not fit torchvision's inception_v3"
  ):
    convert_torch.convert({k: v for k, v in sd.items() if "Mixed_7c" not in k}, "inception_v3")


# --- The recipe ----------------------------------------------------------------------------------


def test_recipe_has_the_papers_values_and_resolves_in_epochs():
  c = _recipe()
  assert set(c.keys()) == set(configs.base_config().keys())
  assert (c.model, c.image_size, c.dataset, c.batch_size) == (
      "InceptionV3",
      299,
      "imagenet2012",
      32,
  )
  assert (c.optimizer, c.rmsprop_decay, c.rmsprop_epsilon, c.learning_rate) == (
      "rmsprop",
      0.9,
      1.0,
      0.045,
  )
  assert (c.schedule, c.lr_decay_rate, c.lr_decay_epochs, c.num_epochs) == (
      "exponential",
      0.94,
      2,
      100,
  )
  assert (c.grad_clip_norm, c.label_smoothing, c.ema_decay) == (2.0, 0.1, 0.9999)
  assert c.augment == "googlenet" and c.eval_preprocess == "center"
  assert c.num_train_steps is None and c.lr_decay_steps is None  # Sized by the dataset.
  r = configs.resolve_config(c, data.DatasetInfo("imagenet2012", 1000, 1_281_167, 50_000, (), ()))
  assert (r.num_train_steps, r.lr_decay_steps, r.eval_every_steps) == (4_003_647, 80_073, 160_146)
  lr = state.create_learning_rate_fn(r)
  np.testing.assert_allclose(
      [lr(0), lr(80_072), lr(80_073), lr(2 * 80_073)],
      [0.045, 0.045, 0.045 * 0.94, 0.045 * 0.94**2],
      rtol=1e-6,
  )


def test_recipe_maps_every_model_argument_to_its_name():
  names = {m: _recipe(f"model={m}").model for m in ("v3", "v4", "resnet_v1", "resnet_v2")}
  assert names == {
      "v3": "InceptionV3",
      "v4": "InceptionV4",
      "resnet_v1": "InceptionResNetV1",
      "resnet_v2": "InceptionResNetV2",
  }
  assert _recipe("model=v4").label_smoothing == 0.0
  digits = _recipe("dataset=digits")
  assert digits.image_size == 75 and not digits.model_kwargs.aux_heads
  from incres import errors

  with pytest.raises(errors.ConfigError, match="v3, v4, resnet_v1, resnet_v2"):
    _recipe("model=v2")


def test_rmsprop_is_tensorflows():
  # TF's RMSPropOptimizer: ms = 0.9 ms + 0.1 g^2 from ms = 1; mom = 0.9 mom + lr g / sqrt(ms + eps).
  c = _recipe()
  c.weight_decay, c.grad_clip_norm = 0.0, None
  tx = state.create_optimizer(c, optax.constant_schedule(0.045))
  params = {"w": jnp.zeros(3)}
  opt_state = tx.init(params)
  ms, mom = np.ones(3), np.zeros(3)
  for g in (np.array([1.0, -2.0, 0.5]), np.array([0.3, 0.1, -4.0])):
    updates, opt_state = tx.update({"w": jnp.asarray(g)}, opt_state, params)
    ms = 0.9 * ms + 0.1 * g**2
    mom = 0.9 * mom + 0.045 * g / np.sqrt(ms + 1.0)
    np.testing.assert_allclose(updates["w"], -mom, rtol=1e-6)


@pytest.mark.slow
def test_recipe_trains_a_tiny_inception_v3_in_process(tmp_path):
  # The smoke recipe at width 1/16: 299x299 fake images, the auxiliary head and its loss included.
  c = _recipe("smoke=True")
  # Up to the auxiliary head's 17x17 module only, and XLA's own CPU gradients: this model's
  # compile time (XLA:CPU spends most of this test compiling the init and the train step).
  c.model_kwargs.width, c.model_kwargs.layout = 0.0625, SHORT[:3]
  c.cpu_conv_vjp = "off"
  c.fake_image_shape = (300, 300, 3)
  c.num_train_steps = 2
  c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 1, 2, 2
  train.train_and_evaluate(c, str(tmp_path))
  rows = metrics.read_metrics(str(tmp_path))
  losses = [r["train/aux_loss"] for r in rows if "train/aux_loss" in r]
  assert losses and all(np.isfinite(l) and l > 0 for l in losses)  # The aux head trains.
  assert any("eval_ema/top1" in r for r in rows)
