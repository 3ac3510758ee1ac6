"""Inception-v4 and Inception-ResNet-v1/v2: the paper's figures, timm's twins, modes, training."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from incres import complexity, convert_torch, models, paper
from incres.models import inception_v4

import torch_helpers  # tests/ is on the path (pytest's rootdir-relative import).

# --- Sizes: the paper's figures, summed by hand -------------------------------------------------


def _unit(cin, cout, kh=1, kw=None):
  """A conv (no bias) -> BN unit: kh x kw x cin x cout weights, BN scale and offset."""
  return kh * (kh if kw is None else kw) * cin * cout + 2 * cout


def _expand(cin, cout):
  """The filter-expansion 1x1 conv (with bias, no BN)."""
  return cin * cout + cout


# Written from the figures' filter sizes alone (not from incres/models/inception_v4.py's tables).
# Input channels follow the figures' output shapes; the expansion convs output the block's input
# width (Figure 17's 1154 and Figure 19's 2048 cannot be added to their 1152- and 2144-channel
# inputs; see the model's docstring).
RESNET_V1_BY_HAND = {
    "stem": _unit(3, 32, 3)  # Figure 14.
    + _unit(32, 32, 3)
    + _unit(32, 64, 3)
    + _unit(64, 80)
    + _unit(80, 192, 3)
    + _unit(192, 256, 3),
    "inception_a": _unit(256, 32)  # Figure 10, 35x35x256 in.
    + _unit(256, 32)
    + _unit(32, 32, 3)
    + _unit(256, 32)
    + 2 * _unit(32, 32, 3)
    + _expand(96, 256),
    "reduction_a": _unit(256, 384, 3)  # Figure 7, Table 1: k, l, m, n = 192, 192, 256, 384.
    + _unit(256, 192)
    + _unit(192, 192, 3)
    + _unit(192, 256, 3),
    "inception_b": _unit(896, 128)  # Figure 11, 17x17x896 in.
    + _unit(896, 128)
    + _unit(128, 128, 1, 7)
    + _unit(128, 128, 7, 1)
    + _expand(256, 896),
    "reduction_b": _unit(896, 256)  # Figure 12.
    + _unit(256, 384, 3)
    + _unit(896, 256)
    + _unit(256, 256, 3)
    + _unit(896, 256)
    + 2 * _unit(256, 256, 3),
    "inception_c": _unit(1792, 192)  # Figure 13, 8x8x1792 in.
    + _unit(1792, 192)
    + _unit(192, 192, 1, 3)
    + _unit(192, 192, 3, 1)
    + _expand(384, 1792),
    "head": 1792 * 1000 + 1000,
}
RESNET_V2_BY_HAND = {
    "stem": _unit(3, 32, 3)  # Figure 3.
    + _unit(32, 32, 3)
    + _unit(32, 64, 3)
    + _unit(64, 96, 3)
    + _unit(160, 64)
    + _unit(64, 96, 3)
    + _unit(160, 64)
    + _unit(64, 64, 7, 1)
    + _unit(64, 64, 1, 7)
    + _unit(64, 96, 3)
    + _unit(192, 192, 3),
    "inception_a": _unit(384, 32)  # Figure 16, 35x35x384 in.
    + _unit(384, 32)
    + _unit(32, 32, 3)
    + _unit(384, 32)
    + _unit(32, 48, 3)
    + _unit(48, 64, 3)
    + _expand(128, 384),
    "reduction_a": _unit(384, 384, 3)  # Figure 7, Table 1: k, l, m, n = 256, 256, 384, 384.
    + _unit(384, 256)
    + _unit(256, 256, 3)
    + _unit(256, 384, 3),
    "inception_b": _unit(1152, 192)  # Figure 17, 17x17x1152 in.
    + _unit(1152, 128)
    + _unit(128, 160, 1, 7)
    + _unit(160, 192, 7, 1)
    + _expand(384, 1152),
    "reduction_b": _unit(1152, 256)  # Figure 18.
    + _unit(256, 384, 3)
    + _unit(1152, 256)
    + _unit(256, 288, 3)
    + _unit(1152, 256)
    + _unit(256, 288, 3)
    + _unit(288, 320, 3),
    "inception_c": _unit(2144, 192)  # Figure 19, 8x8x2144 in.
    + _unit(2144, 192)
    + _unit(192, 224, 1, 3)
    + _unit(224, 256, 3, 1)
    + _expand(448, 2144),
    "head": 2144 * 1000 + 1000,
}


def _count(tree) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(tree))


def _counts_by_part(params) -> dict[str, int]:
  """Parameters of the stem, each block kind (per block), the reductions and the head."""
  by_part, blocks = {}, {}
  for name, sub in params.items():
    part = name.rstrip("0123456789") if name.startswith("inception_") else name
    if name.startswith("inception_"):
      blocks.setdefault(part, set()).add(_count(sub))
    elif name not in ("reduction_a", "reduction_b", "head"):
      part = "stem"
    by_part[part] = by_part.get(part, 0) + _count(sub)
  for part, sizes in blocks.items():
    assert len(sizes) == 1, (part, sizes)  # Every block of a kind is the same.
    by_part[part] = sizes.pop()
  return by_part


@pytest.mark.parametrize(
    "name, by_hand, blocks",
    [
        ("InceptionResNetV1", RESNET_V1_BY_HAND, (5, 10, 5)),
        ("InceptionResNetV2", RESNET_V2_BY_HAND, (5, 10, 5)),
    ],
)
def test_inception_resnet_counts_equal_the_figures_summed_by_hand(name, by_hand, blocks):
  variables = complexity.abstract_variables(models.get_model(name), 299)
  assert _counts_by_part(variables["params"]) == by_hand
  a, b, c = blocks
  total = by_hand["stem"] + by_hand["reduction_a"] + by_hand["reduction_b"] + by_hand["head"]
  total += a * by_hand["inception_a"] + b * by_hand["inception_b"] + c * by_hand["inception_c"]
  assert complexity.count_params(variables) == total == paper.PARAMS[name]


def test_table1_rows():
  assert inception_v4.REDUCTION_A["Inception-v4"] == (192, 224, 256, 384)
  assert inception_v4.REDUCTION_A["Inception-ResNet-v1"] == (192, 192, 256, 384)
  assert inception_v4.REDUCTION_A["Inception-ResNet-v2"] == (256, 256, 384, 384)


# Figures 9 and 15: the A, B and C blocks run on 35x35, 17x17 and 8x8 grids; their output widths.
GRIDS = {
    "InceptionV4": (384, 1024, 1536),
    "InceptionV4Timm": (384, 1024, 1536),
    "InceptionResNetV1": (256, 896, 1792),
    "InceptionResNetV2": (384, 1152, 2144),
    "InceptionResNetV2Timm": (320, 1088, 2080),  # TF-slim's widths.
}


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_counts_multiply_adds_and_grid_sizes_at_299(name):
  model = models.get_model(name)
  variables = complexity.abstract_variables(model, 299)
  assert complexity.count_params(variables) == paper.PARAMS[name]
  firsts = ("inception_a0", "inception_b0", "inception_c0")
  shapes, macs = {}, {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name == "__call__" and tuple(module.path) in [(n,) for n in firsts]:
      shapes[module.name] = out.shape[1:]
    if context.method_name == "__call__" and isinstance(module, (nn.Conv, nn.Dense)):
      k = np.prod(module.kernel_size) if isinstance(module, nn.Conv) else 1
      macs["/".join(module.path)] = int(np.prod(out.shape)) * args[0].shape[-1] * int(k)
    return out

  def forward(v, x):
    with nn.intercept_methods(interceptor):
      return model.apply(v, x)

  jax.eval_shape(forward, variables, jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32))
  a, b, c = GRIDS[name]
  assert [shapes[n] for n in firsts] == [(35, 35, a), (17, 17, b), (8, 8, c)]
  assert sum(macs.values()) == paper.INCEPTION_V4_MACS[name]


# --- Modes and numerics on tiny variants ---------------------------------------------------------

TINY = dict(num_classes=5, width=0.125, num_blocks=(1, 1, 1))


def _tiny(name="InceptionResNetV2", size=75, **kw):
  model = models.get_model(name, **{**TINY, **kw})
  x = jax.random.normal(jax.random.key(1), (2, size, size, 3))
  return model, torch_helpers.random_variables(model, x, random_bn=False), x


@functools.partial(jax.jit, static_argnums=0)
def _eval(model, variables, x):
  """Logits and extras in evaluation mode (jitted once per model: eager runs ~100 layers slowly)."""
  return model.apply(variables, x, train=False)


@functools.partial(jax.jit, static_argnums=0)
def _train(model, variables, x):
  """((logits, extras), updated batch_stats) of a training-mode forward pass."""
  return model.apply(
      variables, x, train=True, rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"]
  )


@pytest.mark.parametrize("name", ["InceptionV4", "InceptionResNetV2"])
def test_same_outputs_in_both_modes_and_no_auxiliary_heads(name):
  model, variables, x = _tiny(name)
  logits, extras = _eval(model, variables, x)
  (logits_t, extras_t), updated = _train(model, variables, x)
  assert logits.shape == logits_t.shape == (2, 5) and logits.dtype == jnp.float32
  assert set(extras) == set(extras_t) == {"features", "aux_logits"}
  assert extras["aux_logits"] == extras_t["aux_logits"] == ()
  assert extras["features"].shape == extras_t["features"].shape == (2, GRIDS[name][2] // 8)
  # Batch statistics move in training (every BN layer), and the two modes differ.
  changed = jax.tree.leaves(
      jax.tree.map(
          lambda a, b: not np.array_equal(a, b), updated["batch_stats"], variables["batch_stats"]
      )
  )
  assert changed and all(changed)
  assert not np.allclose(logits, logits_t)
  np.testing.assert_array_equal(logits, _eval(model, variables, x)[0])  # Eval is deterministic.


# The stem and the two reductions only: what the tests below check happens at every BN layer or at
# the input, and the blocks would only add compile time.
NO_BLOCKS = dict(num_blocks=(0, 0, 0))


def test_frozen_bn_keeps_the_statistics_in_training():
  model, variables, x = _tiny(frozen_bn=True, dropout_rate=0.0, **NO_BLOCKS)
  (logits_t, _), updated = _train(model, variables, x)
  assert jax.tree.all(
      jax.tree.map(np.array_equal, updated["batch_stats"], variables["batch_stats"])
  )
  np.testing.assert_allclose(logits_t, _eval(model, variables, x)[0], rtol=1e-5, atol=1e-6)


def _shift_expansions(variables):
  return jax.tree_util.tree_map_with_path(
      lambda p, a: a + 1.0 if "expand" in jax.tree_util.keystr(p) else a, variables
  )


def test_residual_scale_multiplies_the_residual_branch():
  # With zero residual scales every residual block is relu(x) = x (its input is post-ReLU): the
  # output then does not depend on the expansion convolutions at all.
  plain, v0, x = _tiny(residual_scales=(0.0, 0.0, 0.0))
  np.testing.assert_array_equal(_eval(plain, v0, x)[0], _eval(plain, _shift_expansions(v0), x)[0])
  scaled, v1, _ = _tiny()
  assert not np.allclose(_eval(scaled, v1, x)[0], _eval(scaled, _shift_expansions(v1), x)[0])


def test_bfloat16_forward_is_finite_and_close_to_float32():
  model, variables, x = _tiny()
  model16 = models.get_model("InceptionResNetV2", dtype=jnp.bfloat16, **TINY)
  params16 = jax.eval_shape(functools.partial(model16.init, train=False), jax.random.key(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params16))  # fp32 parameters.
  f32 = _eval(model, variables, x)[0]
  bf16 = _eval(model16, variables, x)[0]
  assert bf16.dtype == jnp.float32 and np.all(np.isfinite(bf16))
  assert float(jnp.abs(bf16 - f32).max()) < 0.05 * float(jnp.abs(f32).max()) + 1e-3
  _, inter = jax.eval_shape(
      lambda v, x: model16.apply(v, x, capture_intermediates=True, mutable=["intermediates"]),
      variables,
      x,
  )
  convs = [
      v
      for p, v in jax.tree_util.tree_flatten_with_path(inter)[0]
      if "['conv']" in jax.tree_util.keystr(p)
  ]
  assert convs and {c.dtype for c in convs} == {jnp.dtype(jnp.bfloat16)}


def test_transform_input_maps_imagenet_normalisation_to_minus_one_one():
  model, variables, _ = _tiny("InceptionV4Timm", **NO_BLOCKS)
  images = jax.random.uniform(jax.random.key(3), (2, 75, 75, 3))
  mean, std = jnp.array([0.485, 0.456, 0.406]), jnp.array([0.229, 0.224, 0.225])
  with_step = _eval(model.clone(transform_input=True), variables, (images - mean) / std)[0]
  np.testing.assert_allclose(
      with_step, _eval(model, variables, images * 2 - 1)[0], rtol=1e-4, atol=1e-5
  )


def test_paper_and_timm_v4_differ_only_in_the_orientation_of_factorised_convs():
  paper_v = complexity.abstract_variables(models.InceptionV4(**TINY), 75)["params"]
  timm_v = complexity.abstract_variables(models.InceptionV4Timm(**TINY), 75)["params"]
  flat_p = {
      jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_flatten_with_path(paper_v)[0]
  }
  flat_t = {
      jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_flatten_with_path(timm_v)[0]
  }
  assert flat_p.keys() == flat_t.keys()
  differ = {k for k in flat_p if flat_p[k] != flat_t[k]}
  # (1, 7) <-> (7, 1) and (1, 3) <-> (3, 1), same channels.
  assert differ and all(flat_p[k] == (*flat_t[k][1::-1], *flat_t[k][2:]) for k in differ)
  assert {k.split("'")[1] for k in differ} == {"mixed_4a", "inception_b0", "inception_c0"}


# --- timm's weights -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["inception_v4", "inception_resnet_v2"])
def test_logits_equal_timm(name):
  # 107 is the smallest input whose last (8x8 at 299) grid is still 2x2, so the 1x3 / 3x1 kernels
  # of the C blocks see more than their centre tap (75 is the smallest that runs at all).
  reference = torch_helpers.timm_model(name)
  x = torch_helpers.images(107)
  expected = torch_helpers.scale_logits(reference, reference.get_classifier(), x, shrink_only=False)
  model, variables = convert_torch.convert(reference.state_dict(), name, transform_input=False)
  assert type(model).__name__ == "InceptionV4Family"
  got = torch_helpers.incres_logits(model, variables, x)
  assert np.abs(expected).max() > 1.0
  assert torch_helpers.relative_error(got, expected) <= 1e-4


def test_other_weights_and_names_fail_clearly(tmp_path, capsys):
  torchvision = pytest.importorskip("torchvision")
  sd = torchvision.models.resnet18(weights=None, num_classes=10).state_dict()
  sd["last_linear.weight"] = sd["fc.weight"]
  with pytest.raises(convert_torch.ConversionError, match="does not look like timm's inception_v4"):
    convert_torch.convert(sd, "inception_v4")
  with pytest.raises(convert_torch.ConversionError, match="no 'classif.weight'.*timm"):
    convert_torch.convert(sd, "inception_resnet_v2")
  # The command line knows the names; a missing file is a user error (status 2, one paragraph).
  code = convert_torch.main(
      ["--model=inception_v4", f"--weights={tmp_path / 'missing.pth'}", f"--out={tmp_path / 'o'}"]
  )
  err = capsys.readouterr().err
  assert code == 2 and "no such file" in err and "Traceback" not in err


def test_import_config_is_the_299_inception_view():
  config = convert_torch.import_config("inception_resnet_v2", num_classes=10)
  assert config.model == "InceptionResNetV2Timm" and config.image_size == 299
  assert config.model_kwargs.transform_input and config.normalize == "mean_std"


# --- Training -----------------------------------------------------------------------------------


# Training a tiny Inception-ResNet-v2 (and v1, v4) a few steps on launch.py's path:
# tests/test_launch_new_models.py.


def test_torch_export_refuses_the_timm_twins_clearly():
  from incres import export

  with pytest.raises(export.ExportError, match="torchvision has no twin of InceptionV4Timm"):
    export.torchvision_twin(convert_torch.import_config("inception_v4", num_classes=10))
