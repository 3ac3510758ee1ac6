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
    # Random BN statistics through 150 layers give logits in the thousands, where 1e-4 is below
    # float32's resolution; rescale the classifier so logits are O(10), as trained weights give.
    scale = np.abs(expected).max() / 10.0
    if scale > 1.0:
      tv.fc.weight.div_(scale)
      tv.fc.bias.div_(scale)
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


def test_cli_round_trip_and_predict(tmp_path, capsys):
  from PIL import Image

  from incres import checkpoint, predict

  tv = _torchvision_model("resnet18")
  weights = tmp_path / "resnet18.pth"
  torch.save(tv.state_dict(), weights)
  out = tmp_path / "imported"
  assert convert_torch.main(["--model=resnet18", f"--weights={weights}", f"--out={out}"]) == 0
  assert "init_from" in capsys.readouterr().out

  config, model, variables = checkpoint.load_variables(str(out))
  assert config.model == "ResNet18" and config.num_classes == 10
  x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
  with torch.no_grad():
    expected = tv(torch.from_numpy(x)).numpy()
  got = model.apply(variables, x.transpose(0, 2, 3, 1), train=False)[0]
  assert np.abs(np.asarray(got) - expected).max() <= 1e-4

  image = tmp_path / "cat.png"
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), np.uint8)).save(image)
  broken = tmp_path / "broken.jpg"
  broken.write_text("not an image")
  results, failed = predict.predict(str(out), [str(broken), str(image)], top_k=3)
  assert [p for p, _ in results] == [str(image)]
  assert len(results[0][1]) == 3 and abs(sum(p for _, p in results[0][1])) <= 1.0
  assert results[0][1][0][1] >= results[0][1][1][1]
  assert failed[0][0] == str(broken) and "UnidentifiedImageError" in failed[0][1]
  # 10 classes of an ImageNet run that isn't 1000-way: names fall back to numbers.
  assert results[0][1][0][0].startswith("class ")


def test_imagenet_class_names_ship_with_the_package():
  from incres import predict

  names = predict.imagenet_class_names()
  assert len(names) == 1000 and names[0] == "tench" and names[207] == "golden retriever"
