"""Pre-activation ResNets (He et al. 2016): sizes, modes, numerics, timm weight import, training."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from incres import complexity, convert_torch, models, paper, train
from incres.models import preact_resnet

import tiny_config as tiny  # tests/ is on the path (pytest's rootdir-relative import).
import torch_helpers

# timm 1.0's `sum(p.numel() for p in timm.create_model(name).parameters())`.
TIMM_PARAMS = {
    "resnetv2_18": 11_687_720,
    "resnetv2_34": 21_795_880,
    "resnetv2_50": 25_549_352,
    "resnetv2_101": 44_541_480,
    "resnetv2_152": 60_185_128,
}


def _count(name, **kw):
  model = models.get_model(name, **kw)
  return complexity.count_params(complexity.abstract_variables(model, models.MODELS[name]))


# --- Sizes (eval_shape only: ResNet-1001 is never compiled here) --------------------------------


@pytest.mark.parametrize("timm_name", sorted(TIMM_PARAMS))
def test_imagenet_nets_have_timms_parameter_counts_in_both_layouts(timm_name):
  ours = convert_torch.TORCHVISION_MODELS[timm_name]
  assert _count(ours) == TIMM_PARAMS[timm_name] == paper.PARAMS[ours]
  assert _count(ours, **convert_torch.TIMM_RESNETV2_KWARGS) == TIMM_PARAMS[timm_name]


def test_cifar_nets_match_table4_sizes():
  # Table 4: 1.7M (ResNet-164) and 10.2M (ResNet-1001); the latter without BN's scales and shifts.
  assert round(_count("CifarPreActResNet164") / 1e6, 1) == 1.7
  v = complexity.abstract_variables(models.CifarPreActResNet1001(), 32)  # The slow one: once.
  assert complexity.count_params(v) == paper.PARAMS["CifarPreActResNet1001"]
  flat = jax.tree_util.tree_flatten_with_path(v["params"])[0]
  without_bn = sum(x.size for p, x in flat if "bn" not in jax.tree_util.keystr(p))
  assert round(without_bn / 1e6, 1) == 10.2
  # 333 bottleneck units, 111 per feature-map size (§4.1), and 110's 54 basic units.
  assert sum(k.startswith("stage") for k in v["params"]) == 333
  assert models.CifarPreActResNet110().stage_sizes == (18, 18, 18)


def test_structure_follows_the_appendix():
  p = complexity.abstract_variables(models.CifarPreActResNet164(), 32)["params"]
  # The first activation right after conv1, so the first unit has no BN of its own; projection
  # shortcuts (no BN) where the shape changes; an extra BN-ReLU after the last addition.
  assert "stem_bn" in p and "bn1" not in p["stage1_block0"] and "bn1" in p["stage1_block1"]
  assert p["stage1_block0"]["proj_conv"]["kernel"].shape == (1, 1, 16, 64)
  assert "proj_conv" in p["stage2_block0"] and "proj_conv" not in p["stage2_block1"]
  assert not any(k.startswith("proj_bn") for b in p.values() for k in b)
  assert p["final_bn"]["scale"].shape == (256,) and p["head"]["kernel"].shape == (256, 10)
  # ResNet-110 keeps option A: no projection anywhere.
  p110 = complexity.abstract_variables(models.CifarPreActResNet110(), 32)["params"]
  assert not any("proj_conv" in b for b in p110.values())


def test_strides_the_first_1x1_by_default_and_the_3x3_like_timm():
  paper_macs = complexity.macs_by_layer(models.PreActResNet50(), 224)
  timm_macs = complexity.macs_by_layer(models.PreActResNet50(stride_in_1x1=False), 224)
  assert timm_macs["stage2_block0/conv1"] == 4 * paper_macs["stage2_block0/conv1"]


# --- Modes and numerics on tiny nets -------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_net():
  """An 11-layer bottleneck pre-activation net of width 4, its variables and a 16x16 batch."""
  model = models.CifarPreActResNet164(num_classes=5, width=4, stage_sizes=(1, 1, 1))
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  return model, torch_helpers.random_variables(model, x), x


def _apply(model, **kw):
  """The jitted `model.apply(variables, x, train=..., **kw)` (eager runs op by op: slow)."""
  return jax.jit(functools.partial(model.apply, **kw), static_argnames="train")


def test_same_output_structure_in_both_modes_and_bn_updates_only_in_training(tiny_net):
  model, variables, x = tiny_net
  apply = _apply(model, mutable=["batch_stats"])
  (logits, extras), eval_vars = apply(variables, x, train=False)
  assert logits.shape == (4, 5) and set(extras) == {"features", "aux_logits"}
  assert extras["features"].shape == (4, 4 * 4 * 4) and extras["aux_logits"] == ()
  unchanged = jax.tree.map(np.array_equal, eval_vars["batch_stats"], variables["batch_stats"])
  assert all(jax.tree.leaves(unchanged))
  (t_logits, t_extras), train_vars = apply(variables, x, train=True)
  assert set(t_extras) == set(extras) and t_extras["aux_logits"] == ()
  changed = jax.tree.map(
      lambda a, b: not np.array_equal(a, b), train_vars["batch_stats"], variables["batch_stats"]
  )
  assert all(jax.tree.leaves(changed))
  assert not np.allclose(t_logits, logits)  # Batch statistics differ from the running ones.


def test_every_parameter_receives_a_gradient(tiny_net):
  model, variables, x = tiny_net

  @jax.jit
  def grad(params):
    def loss(params):
      logits, _ = model.apply(
          {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
      )[0]
      return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(4) % 5).mean()

    return jax.grad(loss)(params)

  flat = jax.tree_util.tree_flatten_with_path(grad(variables["params"]))[0]
  zero = [jax.tree_util.keystr(p) for p, g in flat if not np.any(np.asarray(g) != 0)]
  assert not zero and all(np.all(np.isfinite(g)) for _, g in flat)


def test_bfloat16_forward_is_finite_and_close_to_float32(tiny_net):
  model, variables, x = tiny_net
  model16 = model.clone(dtype=jnp.bfloat16)
  f32 = _apply(model)(variables, x, train=False)[0]
  (bf16, extras), inter = _apply(model16, capture_intermediates=True, mutable=["intermediates"])(
      variables, x, train=False
  )
  assert bf16.dtype == extras["features"].dtype == jnp.float32 and np.all(np.isfinite(bf16))
  assert float(jnp.abs(bf16 - f32).max()) < 0.05 * float(jnp.abs(f32).max()) + 1e-3
  conv_out = inter["intermediates"]["stage2_block0"]["conv2"]["__call__"][0]
  assert conv_out.dtype == jnp.bfloat16  # The convolutions really run in bfloat16.


# --- timm weights ---------------------------------------------------------------------------------


def test_resnetv2_50_logits_equal_timm():
  tm = torch_helpers.timm_model("resnetv2_50")
  x = torch_helpers.images(64)
  expected = torch_helpers.torch_logits(tm, x)
  model, variables = convert_torch.convert(tm.state_dict(), "resnetv2_50", transform_input=False)
  assert model.stem_norm is False and model.stride_in_1x1 is False
  assert np.abs(expected).max() > 0.1  # Not a trivially small output.
  assert (
      torch_helpers.relative_error(torch_helpers.incres_logits(model, variables, x), expected)
      <= 1e-4
  )


@pytest.mark.parametrize("name", sorted(TIMM_PARAMS))
def test_every_timm_tensor_has_one_twin_of_its_shape(name):
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")
  with torch.device("meta"):  # Shapes only: no memory, no initialisation.
    state_dict = timm.create_model(name, pretrained=False).state_dict()
  # Zero-stride stand-ins of the right shapes: `convert` checks every name and shape, allocating
  # nothing until it hands back the variables.
  fake = {k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in state_dict.items()}
  model, variables = convert_torch.convert(fake, name)
  assert model.num_classes == 1000 and model.transform_input is True
  assert complexity.count_params(variables) == TIMM_PARAMS[name]
  skipped = [k for k in state_dict if k.endswith("num_batches_tracked")]
  leaves = len(jax.tree.leaves(variables))
  assert leaves == len(state_dict) - len(skipped)


def test_wrong_weights_fail_clearly():
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")
  with torch.device("meta"):
    sd50 = timm.create_model("resnetv2_50", pretrained=False).state_dict()
  fake = {k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in sd50.items()}
  with pytest.raises(
      convert_torch.ConversionError,
      match=r"does not fit timm's resnetv2_101 .*These weights are timm's resnetv2_50: convert"
      r" them with --model=resnetv2_50\.$",
  ):
    convert_torch.convert(fake, "resnetv2_101")
  with pytest.raises(convert_torch.ConversionError, match="no 'head.fc.weight'"):
    convert_torch.convert({"fc.weight": np.zeros((10, 2048), np.float32)}, "resnetv2_50")


def test_cli_imports_resnetv2_with_its_input_scaling(tmp_path, capsys):
  torch = pytest.importorskip("torch")
  from incres import checkpoint  # pylint: disable=g-import-not-at-top

  tm = torch_helpers.timm_model("resnetv2_18")
  weights = tmp_path / "resnetv2_18.pth"
  torch.save(tm.state_dict(), weights)
  out = tmp_path / "imported"
  assert convert_torch.main(["--model=resnetv2_18", f"--weights={weights}", f"--out={out}"]) == 0
  assert "read back: PreActResNet18, step 0" in capsys.readouterr().out
  config, model, variables = checkpoint.load_variables(str(out))
  assert config.model == "PreActResNet18" and config.normalize == "mean_std"
  assert model.stem_norm is False and model.transform_input is True
  # incres takes ImageNet mean/std-normalised images; timm's weights want (x - 0.5) / 0.5.
  x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  timm_x = ((x * std + mean - 0.5) / 0.5).astype(np.float32).transpose(0, 3, 1, 2)
  expected = torch_helpers.torch_logits(tm, timm_x)
  got = np.asarray(model.apply(variables, x, train=False)[0])
  assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()

  # Weights of another depth: exit status 2, one paragraph, no traceback, nothing written.
  other = tmp_path / "other"
  code = convert_torch.main(["--model=resnetv2_34", f"--weights={weights}", f"--out={other}"])
  err = capsys.readouterr().err
  assert code == 2 and "does not fit timm's resnetv2_34" in err and "Traceback" not in err
  assert len(err.strip().splitlines()) == 1 and not other.exists()


def test_an_imported_resnetv2_fits_the_finetune_config_without_a_model_flag():
  from incres import configs, finetune  # pylint: disable=g-import-not-at-top

  source = convert_torch.import_config("resnetv2_50", num_classes=1000)
  config = configs.load("experiments/finetune.py:dataset=imagenette")
  config.num_classes = 10
  finetune.inherit_architecture(config, source)
  assert config.model == "PreActResNet50" and config.normalize == "mean_std"
  kwargs = config.model_kwargs
  assert (kwargs.stem_norm, kwargs.stride_in_1x1, kwargs.transform_input) == (False, False, True)


def test_export_refuses_a_torchvision_state_dict_for_timms_nets():
  from incres import export  # pylint: disable=g-import-not-at-top

  config = convert_torch.import_config("resnetv2_50")
  with pytest.raises(export.ExportError, match="torchvision does not have"):
    export.torchvision_twin(config)


# --- The recipe ---------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [110, 164, 1001])
def test_resnet_cifar_preact_selects_the_net_and_the_2016_recipe(depth):
  from incres import configs, data  # pylint: disable=g-import-not-at-top

  c = configs.load(f"experiments/resnet_cifar.py:preact=True,depth={depth}")
  assert c.model == f"CifarPreActResNet{depth}" and c.model in models.MODELS
  c = configs.resolve_config(c, data.DatasetInfo("cifar10", 10, 50_000, 10_000, (32, 32, 3), ()))
  # Appendix: lr 0.1, /10 at 32k and 48k, batch 128, wd 1e-4, 400 iterations at 0.01 for all depths.
  assert (c.num_train_steps, tuple(c.lr_boundaries), c.warmup_steps) == (
      64_000,
      (32_000, 48_000),
      400,
  )
  assert (c.learning_rate, c.warmup_learning_rate, c.batch_size, c.weight_decay) == (
      0.1,
      0.01,
      128,
      1e-4,
  )


@pytest.mark.parametrize("arg", ["preact=True,depth=56", "preact=True,depth=164,plain=True"])
def test_resnet_cifar_preact_refuses_other_depths(arg):
  from incres import configs  # pylint: disable=g-import-not-at-top

  with pytest.raises(ValueError, match="preact=True takes depth 110, 164 or 1001"):
    configs.load(f"experiments/resnet_cifar.py:{arg}")


# --- Training through train_and_evaluate ---------------------------------------------------------


@pytest.mark.slow  # Compiles the training and evaluation steps: tens of seconds on 2 cores.
def test_a_tiny_preact_net_trains_through_train_and_evaluate(tmp_path):
  config = tiny.get(
      steps=2, every=2, eval_split="test[:64]", eval_batch_size=64, lr_boundaries=(1,)
  )
  config.model = "CifarPreActResNet164"
  config.model_kwargs = ml_collections.ConfigDict({"width": 4, "stage_sizes": (1, 1, 1)})
  result = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["step"] == 2 and np.isfinite(result["train/loss"])
  assert 0.0 <= result["eval/top1"] <= result["eval/top5"] <= 1.0


def test_preact_modules_are_exported_by_name():
  for name in [n for n in models.MODELS if "PreAct" in n]:
    assert getattr(models, name) is getattr(preact_resnet, name)
