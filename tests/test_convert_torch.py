"""Converted torchvision weights give torchvision's logits (torch is a test-only dependency)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from incres import convert_torch
from incres.models import googlenet

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")


def _torchvision_model(name, **kwargs):
  torch.manual_seed(0)
  if name == "googlenet":
    kwargs.setdefault("aux_logits", True)
    kwargs.setdefault("init_weights", True)
  model = getattr(torchvision.models, name)(weights=None, num_classes=10, **kwargs)
  # Randomise BN so that the statistics and affine parameters are really exercised.
  g = torch.Generator().manual_seed(1)
  for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      c = m.num_features
      m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
      m.running_var.copy_(0.5 + torch.rand(c, generator=g))
      m.weight.data.copy_(0.5 + 0.5 * torch.rand(c, generator=g))
      m.bias.data.copy_(0.1 * torch.randn(c, generator=g))
    elif isinstance(m, torch.nn.Linear):  # torchvision's GoogLeNet init gives ~0.01 logits.
      m.weight.data.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features**0.5)
  return model.eval()


def _compare(name, size, batch=2, **kwargs):
  tv = _torchvision_model(name, **kwargs)
  x = np.random.default_rng(0).normal(size=(batch, 3, size, size)).astype(np.float32)
  with torch.no_grad():
    expected = tv(torch.from_numpy(x)).numpy()
  model, variables = convert_torch.convert(
      tv.state_dict(), name, transform_input=kwargs.get("transform_input"))
  got = jax.jit(functools.partial(model.apply, train=False))(variables, x.transpose(0, 2, 3, 1))[0]
  assert np.abs(expected).max() > 0.1  # Not a trivially small output.
  return np.abs(np.asarray(got) - expected).max()


@pytest.mark.parametrize(
    "name,size",
    [("resnet18", 224), ("resnet34", 64), ("resnet50", 224), ("resnet101", 64), ("resnet152", 64)],
)
def test_resnet_logits_equal_torchvision(name, size):
  assert _compare(name, size) <= 1e-4


@pytest.mark.parametrize("size,transform_input", [(224, False), (224, True), (97, False)])
def test_googlenet_logits_equal_torchvision(size, transform_input):
  # 97 exercises the ceil-mode pooling edge cases.
  assert _compare("googlenet", size, transform_input=transform_input) <= 1e-4


def test_googlenet_auxiliary_heads_equal_torchvision():
  tv = _torchvision_model("googlenet")
  _, variables = convert_torch.convert(tv.state_dict(), "googlenet", transform_input=False)
  feat = np.random.default_rng(0).normal(size=(2, 512, 14, 14)).astype(np.float32)
  with torch.no_grad():
    expected = tv.aux1(torch.from_numpy(feat)).numpy()
  import flax.linen as nn  # noqa: F401  (documents that the head runs as a plain linen module)

  unit = functools.partial(googlenet.ConvUnit, batch_norm=True, train=False)
  head = googlenet.AuxHead(10, unit, adaptive_pool=True)
  aux_vars = {k: v["aux_4a"] for k, v in variables.items()}
  got = head.apply(aux_vars, feat.transpose(0, 2, 3, 1), train=False)
  np.testing.assert_allclose(got, expected, atol=1e-4)


def test_mismatched_weights_fail_clearly():
  sd = _torchvision_model("resnet18").state_dict()
  with pytest.raises(convert_torch.ConversionError, match="does not fit torchvision's resnet34"):
    convert_torch.convert(sd, "resnet34")
  with pytest.raises(convert_torch.ConversionError, match="Unknown torchvision model"):
    convert_torch.convert(sd, "vgg16")
