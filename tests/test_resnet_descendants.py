"""ResNeXt, wide ResNets and Bag of Tricks' ResNet-B/C/D: the papers' figures and layer shapes.

Exact parameter counts against torchvision / timm are test_models.py's (`paper.PARAMS`); logits
against torchvision / timm after weight import are test_convert_torch.py's.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from incres import complexity, convert_torch, errors, export, models, paper
from incres.models import resnet


def _variables(name, **kw):
  model = models.get_model(name, **kw)
  return complexity.abstract_variables(model, models.MODELS[name])


@pytest.mark.parametrize("name", sorted(paper.PAPER_PARAMS_M))
def test_parameter_counts_give_the_papers_figures(name):
  figure, how = paper.PAPER_PARAMS_M[name]
  millions = complexity.count_params(_variables(name)) / 1e6
  if how == "round":
    assert round(millions, 1) == figure, millions
  else:
    assert math.floor(millions) == figure, millions


def test_wrn_28_10_count_by_hand():
  # Zagoruyko & Komodakis: a 3x3 conv of 16, then 4 basic units per stage at 160, 320, 640 filters
  # (BN-ReLU-3x3-BN-ReLU-3x3, biases off, a 1x1 projection where the width changes), BN, FC.
  total, c_in = 3 * 3 * 3 * 16, 16
  for width in (160, 320, 640):
    for _ in range(4):
      total += 2 * c_in + 9 * c_in * width + 2 * width + 9 * width * width
      total += c_in * width if c_in != width else 0
      c_in = width
  total += 2 * 640 + 640 * 10 + 10
  assert total == paper.PARAMS["WRN28_10"] == 36_479_194


def test_resnext_and_wide_bottlenecks_have_the_papers_widths():
  # ResNeXt-50 (32x4d), Table 1: conv2 is [1x1, 128; 3x3, 128, C=32; 1x1, 256]; conv5 [1024,
  # 1024 C=32, 2048]. torchvision's kernels are (3, 3, 128 / 32, 128) for the grouped 3x3.
  p = _variables("ResNeXt50_32x4d")["params"]
  assert p["stage1_block0"]["conv1"]["kernel"].shape == (1, 1, 64, 128)
  assert p["stage1_block0"]["conv2"]["kernel"].shape == (3, 3, 4, 128)
  assert p["stage4_block2"]["conv2"]["kernel"].shape == (3, 3, 32, 1024)
  assert p["stage4_block2"]["conv3"]["kernel"].shape == (1, 1, 1024, 2048)
  p = _variables("ResNeXt101_64x4d")["params"]
  assert p["stage1_block0"]["conv2"]["kernel"].shape == (3, 3, 4, 256)
  assert p["stage3_block22"]["conv2"]["kernel"].shape == (3, 3, 16, 1024)
  # WRN-50-2: the inner 1x1 and 3x3 twice ResNet-50's; outputs unchanged.
  p = _variables("WideResNet50_2")["params"]
  assert p["stage1_block0"]["conv2"]["kernel"].shape == (3, 3, 128, 128)
  assert p["stage4_block0"]["conv3"]["kernel"].shape == (1, 1, 1024, 2048)


def test_bag_of_tricks_tweaks():
  v = _variables("ResNet50D")["params"]
  stem = [v[f"stem_conv{i}"]["kernel"].shape for i in (1, 2, 3)]
  assert stem == [(3, 3, 3, 32), (3, 3, 32, 32), (3, 3, 32, 64)]  # Figure 2(b): 32, 32, 64.
  assert "stem_conv" not in v and v["stage2_block0"]["proj_conv"]["kernel"].shape == (
      1,
      1,
      256,
      512,
  )
  # Each tweak on top of the previous one (Table 5); ResNet-B is torchvision's v1.5 stride
  # placement (test_models.py's test_resnet_v1_strides_the_first_1x1_and_v15_the_3x3), and C and D
  # are timm's resnet50c / resnet50d (test_convert_torch.py compares the logits).
  b, c, d = models.ResNet50B(), models.ResNet50C(), models.ResNet50D()
  assert (b.stride_in_1x1, b.stem, b.avg_down) == (False, "imagenet", False)
  assert (c.stride_in_1x1, c.stem, c.avg_down) == (False, "deep", False)
  assert (d.stride_in_1x1, d.stem, d.avg_down, d.shortcut) == (False, "deep", True, "B")


def test_resnet_d_shortcut_averages_every_pixel_before_the_projection():
  # On a stride-2 block, the D shortcut's 1x1 conv (stride 1) reads the 2x2/2 average pool; the
  # B shortcut's reads one pixel in four.
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(0).normal(size=(2, 7, 9, 3)).astype(np.float32)  # Odd sides.
  got = np.asarray(resnet.avg_pool_ceil(jnp.asarray(x), 2))
  pool = torch.nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)
  expected = pool(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
  assert got.shape == expected.shape == (2, 4, 5, 3)
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_grouped_widths_on_basic_blocks_are_refused():
  with pytest.raises(errors.ConfigError, match="only bottleneck blocks"):
    jax.eval_shape(models.ResNet18(groups=32).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_torch_export_takes_the_torchvision_twins_and_refuses_timms():
  assert export.torchvision_twin(convert_torch.import_config("resnext50_32x4d", 10))[0] == (
      "resnext50_32x4d"
  )
  assert export.torchvision_twin(convert_torch.import_config("wide_resnet50_2", 10))[0] == (
      "wide_resnet50_2"
  )
  with pytest.raises(export.ExportError, match="timm's resnet50d"):
    export.torchvision_twin(convert_torch.import_config("resnet50d", 10))
