"""Converted torchvision weights give torchvision's logits (torch is a test-only dependency)."""

import functools
import hashlib
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from incres import convert_torch, errors
from incres.models import googlenet

import torch_helpers  # tests/ is on the path (pytest's rootdir-relative import).

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _torchvision_model(name, **kwargs):
  if name == "googlenet":  # Both auxiliary heads, and torchvision's truncated-normal init.
    kwargs = {"aux_logits": True, "init_weights": True, **kwargs}
  return torch_helpers.torchvision_model(name, **kwargs)


def _compare(name, size, batch=2, scan_blocks=False, **kwargs):
  """The largest absolute logit difference between torchvision's `name` and its conversion."""
  tv = _torchvision_model(name, **kwargs)
  x = torch_helpers.images(size, batch)
  expected = torch_helpers.scale_logits(tv, tv.fc, x)
  model, variables = convert_torch.convert(
      tv.state_dict(), name, transform_input=kwargs.get("transform_input"), scan_blocks=scan_blocks
  )
  got = torch_helpers.incres_logits(model, variables, x)
  assert np.abs(expected).max() > 0.1  # Not a trivially small output.
  return np.abs(got - expected).max()


@pytest.mark.parametrize(
    "name,size,scan_blocks",
    [
        ("resnet18", 224, False),
        ("resnet34", 64, False),
        ("resnet50", 224, False),
        # The deepest two in the scanned layout, which compiles each stage's repeated block once
        # instead of once per block; it converts through the same per-tensor mapping.
        ("resnet101", 64, True),
        ("resnet152", 64, True),
    ],
)
def test_resnet_logits_equal_torchvision(name, size, scan_blocks):
  assert _compare(name, size, scan_blocks=scan_blocks) <= 1e-4


# --- The ResNet descendants (issue #26) ---


@pytest.mark.parametrize("name", ["resnext50_32x4d", "wide_resnet50_2", "resnet50d"])
def test_resnet_descendant_logits_equal_torchvision_and_timm(name):
  # One per family, at full width: 64x64 (2x2 maps in the last stage); 65 for resnet50d (timm's
  # deep stem and average-pool shortcuts), whose pools then meet odd sides (33 -> 17 -> 9 -> 5 ->
  # 3), where torch's ceil mode averages only the real pixels of the last window.
  timm = name in convert_torch.TIMM_RESNETS
  reference = torch_helpers.timm_model(name) if timm else _torchvision_model(name)
  x = torch_helpers.images(65 if name == "resnet50d" else 64)
  expected = torch_helpers.scale_logits(reference, reference.fc, x)
  model, variables = convert_torch.convert(reference.state_dict(), name)
  assert np.abs(expected).max() > 0.1
  assert torch_helpers.relative_error(
      torch_helpers.incres_logits(model, variables, x), expected
  ) <= (1e-4)


@pytest.mark.parametrize(
    "name", ["resnext101_32x8d", "resnext101_64x4d", "wide_resnet101_2", "resnet101d", "resnet50c"]
)
def test_other_resnet_descendants_convert_every_tensor(name):
  # The 101-layer twins of the nets above and timm's resnet50c (resnet50d without the pools):
  # every tensor maps to a variable of the right shape (`convert` checks the whole tree against the
  # model's) and the count is torchvision's / timm's. Their forward passes run the same blocks and
  # stems as the test above's with other table values, and are left out for the suite's time.
  timm = name in convert_torch.TIMM_RESNETS
  torch.manual_seed(0)
  make = (
      (lambda n: pytest.importorskip("timm").create_model(n, num_classes=10))
      if timm
      else (lambda n: getattr(torchvision.models, n)(weights=None, num_classes=10))
  )
  reference = make(name)
  model, variables = convert_torch.convert(reference.state_dict(), name)
  assert model.num_classes == 10
  count = sum(p.numel() for p in reference.parameters())
  assert jax.tree.reduce(lambda n, a: n + a.size, variables["params"], 0) == count
  first = reference.layer3[5].conv2.weight.detach().numpy().transpose(2, 3, 1, 0)
  np.testing.assert_array_equal(variables["params"]["stage3_block5"]["conv2"]["kernel"], first)


@pytest.mark.parametrize("size,transform_input", [(224, False), (224, True), (97, False)])
def test_googlenet_logits_equal_torchvision(size, transform_input):
  # 97 exercises the ceil-mode pooling edge cases.
  assert _compare("googlenet", size, transform_input=transform_input) <= 1e-4


def test_googlenet_auxiliary_heads_equal_torchvision():
  tv = _torchvision_model("googlenet")
  _, variables = convert_torch.convert(tv.state_dict(), "googlenet", transform_input=False)
  feat = np.random.default_rng(0).normal(size=(2, 512, 14, 14)).astype(np.float32)
  expected = torch_helpers.torch_logits(tv.aux1, feat)
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


@pytest.mark.parametrize(
    "name", ["googlenet", "inception_v3", "inception_v4", "inception_resnet_v2", "resnetv2_50"]
)
def test_scan_blocks_is_refused_for_models_without_the_scanned_layout(name):
  # Refused before the state dict is read: an empty one would fail later with another message.
  with pytest.raises(
      convert_torch.ConversionError,
      match=rf"scan_blocks=True applies to the ResNet family only \(resnet18, .*resnet101d\);"
      rf" {name} has no scanned layout",
  ):
    convert_torch.convert({}, name, scan_blocks=True)


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
  x = torch_helpers.images(64)
  got = torch_helpers.incres_logits(model, variables, x)
  assert np.abs(got - torch_helpers.torch_logits(tv, x)).max() <= 1e-4

  image = tmp_path / "cat.png"
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), np.uint8)).save(image)
  broken = tmp_path / "broken.jpg"
  broken.write_text("not an image")
  results, failed = predict.classify_images(str(out), [str(broken), str(image)], top_k=3)
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


# --- The command line: never lose a run, refuse what is not plain weights, user errors exit 2 ---


def _tree(root):
  """{relative path: sha256 of the content (None for a directory)} of everything under root."""
  out = {}
  for dirpath, dirnames, filenames in os.walk(root):
    for d in dirnames:
      out[os.path.relpath(os.path.join(dirpath, d), root)] = None
    for f in filenames:
      with open(os.path.join(dirpath, f), "rb") as fh:
        out[os.path.relpath(os.path.join(dirpath, f), root)] = hashlib.sha256(fh.read()).hexdigest()
  return out


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  """Two resnet18 state_dict files with different random weights, and their torch models."""
  root = tmp_path_factory.mktemp("weights")
  out = {}
  for seed in (0, 1):
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    path = str(root / f"resnet18_seed{seed}.pth")
    torch.save(model.state_dict(), path)
    out[seed] = (path, model)
  return out


def _convert(capsys, *args):
  """Runs the CLI in-process as `python -m` does: (exit status, stdout, stderr)."""
  with pytest.raises(SystemExit) as exit_info:  # errors.run reports a flag error (cli.UsageError).
    errors.run(lambda: convert_torch.main(list(args)))
  code = exit_info.value.code
  captured = capsys.readouterr()
  return code, captured.out, captured.err


def test_timm_weights_under_a_torchvision_name_say_which_name_fits(tmp_path, capsys):
  timm = pytest.importorskip("timm")
  path = tmp_path / "resnetv2_18.pth"
  torch.save(timm.create_model("resnetv2_18", pretrained=False, num_classes=10).state_dict(), path)
  code, stdout, err = _convert(
      capsys, "--model=resnet18", f"--weights={path}", f"--out={tmp_path / 'out'}"
  )
  assert code == 2 and not stdout and "Traceback" not in err, err
  assert "is it really a torchvision resnet18?" in err, err
  assert err.strip().endswith(
      "These weights are timm's resnetv2_18: convert them with --model=resnetv2_18."
  ), err
  assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
  # Weights that fit nothing known get no suggestion.
  with pytest.raises(convert_torch.ConversionError) as e:
    convert_torch.convert({"fc.weight": np.zeros((10, 7), np.float32)}, "resnet18")
  assert "--model=" not in str(e.value)


def _stem_kernel(workdir):
  from incres import checkpoint

  _, _, variables = checkpoint.load_variables(workdir)
  return np.asarray(variables["params"]["stem_conv"]["kernel"])


def _torch_stem_kernel(torch_model):
  return torch_model.conv1.weight.detach().numpy().transpose(2, 3, 1, 0)


@pytest.mark.slow
def test_converting_into_a_trained_run_changes_nothing_and_overwrite_replaces_it(
    weights, tmp_path, tmp_path_factory, capsys
):
  from test_evaluate import trained_run  # The tiny trained run, shared across the test files.

  from incres import checkpoint

  run = tmp_path / "runs" / "trained"
  shutil.copytree(trained_run(tmp_path_factory), run)  # A copy: this test replaces it.
  capsys.readouterr()
  before = _tree(run)
  steps = sorted(int(n) for n in os.listdir(run / "checkpoints") if n.isdigit())
  assert steps and {f"checkpoints/{s}" for s in steps} | {"config.json"} <= set(before)

  path, torch_model = weights[0]
  code, out, err = _convert(capsys, "--model=resnet18", f"--weights={path}", f"--out={run}")
  assert code == 2 and not out and "Traceback" not in err
  assert f"holds a training run: checkpoints {', '.join(map(str, steps))}" in err
  assert "Nothing was changed" in err
  assert _tree(run) == before  # Every file byte-identical, nothing added.
  assert os.listdir(run.parent) == ["trained"]

  code, out, err = _convert(
      capsys, "--model=resnet18", f"--weights={path}", f"--out={run}", "--overwrite"
  )
  assert code == 0, err
  assert "read back: ResNet18, step 0" in out
  assert sorted(os.listdir(run.parent)) == ["trained"]  # No temporary or set-aside copy left.
  assert sorted(os.listdir(run / "checkpoints")) == ["0"]
  config, model, variables = checkpoint.load_variables(str(run))
  assert config.model == "ResNet18" and config.num_classes == 10
  x = torch_helpers.images(64)
  got = torch_helpers.incres_logits(model, variables, x)
  assert np.abs(got - torch_helpers.torch_logits(torch_model, x)).max() <= 1e-4


def test_different_weights_give_different_checkpoints_and_none_are_kept_silently(
    weights, tmp_path, capsys
):
  (path_a, model_a), (path_b, model_b) = weights[0], weights[1]
  out_a, out_b = tmp_path / "a", tmp_path / "b"
  out_b.mkdir()  # An empty directory is a fine --out.
  assert _convert(capsys, "--model=resnet18", f"--weights={path_a}", f"--out={out_a}")[0] == 0
  assert _convert(capsys, "--model=resnet18", f"--weights={path_b}", f"--out={out_b}")[0] == 0
  kernel_a, kernel_b = _stem_kernel(str(out_a)), _stem_kernel(str(out_b))
  np.testing.assert_array_equal(kernel_a, _torch_stem_kernel(model_a))
  np.testing.assert_array_equal(kernel_b, _torch_stem_kernel(model_b))
  assert not np.array_equal(kernel_a, kernel_b)

  # Same architecture again without --overwrite: refused, the old weights are not claimed as new.
  code, out, err = _convert(capsys, "--model=resnet18", f"--weights={path_b}", f"--out={out_a}")
  assert code == 2 and "Wrote" not in out and "is not empty" in err
  np.testing.assert_array_equal(_stem_kernel(str(out_a)), kernel_a)
  # With --overwrite the new weights replace the old ones.
  code, out, err = _convert(
      capsys, "--model=resnet18", f"--weights={path_b}", f"--out={out_a}", "--overwrite"
  )
  assert code == 0, err
  np.testing.assert_array_equal(_stem_kernel(str(out_a)), kernel_b)


class _CreatesAFile:
  """Unpickling this calls shutil.copyfile(source, target): what a malicious .pth could do."""

  def __init__(self, source, target):
    self.source, self.target = source, target

  def __reduce__(self):
    return (shutil.copyfile, (self.source, self.target))


def test_a_pickle_with_python_objects_is_refused_unread(tmp_path):
  target = tmp_path / "created_by_the_pickle"
  evil = tmp_path / "evil.pth"
  source = tmp_path / "source.txt"
  source.write_text("written by unpickling")
  payload = _CreatesAFile(str(source), str(target))
  torch.save({"fc.weight": torch.zeros(10, 512), "payload": payload}, evil)
  result = subprocess.run(
      [
          sys.executable,
          "-m",
          "incres.convert_torch",
          "--model=resnet18",
          f"--weights={evil}",
          f"--out={tmp_path / 'out'}",
      ],
      capture_output=True,
      text=True,
      cwd=_REPO,
      timeout=300,
  )
  assert result.returncode == 2, result.stderr
  assert f"{evil} contains Python objects beyond tensors; refused" in result.stderr
  assert "Traceback" not in result.stderr and "weights_only" not in result.stderr
  assert not target.exists() and not (tmp_path / "out").exists()
  torch.load(evil, weights_only=False)  # The payload is real: trusting the file runs it.
  assert target.exists()


def test_user_errors_exit_2_with_one_paragraph(weights, tmp_path, capsys):
  path, _ = weights[0]
  garbage = tmp_path / "garbage.pth"
  garbage.write_bytes(b"\x00\x01 not a pickle" * 10)
  a_file = tmp_path / "a_file"
  a_file.write_text("keep me")
  whole_model = tmp_path / "whole_model.pth"
  torch.save(torchvision.models.resnet18(weights=None, num_classes=10), whole_model)
  holder = tmp_path / "holder"
  holder.mkdir()
  inside = shutil.copy(path, holder / "weights.pth")
  out = f"--out={tmp_path / 'out'}"
  cases = [
      (["--model=vgg16", f"--weights={path}", out], "--model=vgg16: value should be one of"),
      (["--model=resnet18", f"--weights={tmp_path / 'missing.pth'}", out], "no such file"),
      (["--model=resnet34", f"--weights={path}", out], "does not fit torchvision's resnet34"),
      (["--model=googlenet", f"--weights={path}", out], "not look like torchvision's googlenet"),
      (["--model=resnet18", f"--weights={garbage}", out], "not a PyTorch weights file"),
      (["--model=resnet18", f"--weights={whole_model}", out], "beyond tensors; refused"),
      (["--model=resnet18", f"--weights={path}", f"--out={a_file}", "--overwrite"], "is a file"),
      (
          ["--model=resnet18", f"--weights={inside}", f"--out={holder}", "--overwrite"],
          "holds the weights file",
      ),
  ]
  for args, message in cases:
    code, stdout, err = _convert(capsys, *args)
    assert code == 2 and message in err and "Traceback" not in err, (args, err)
    assert "weights_only" not in err and not stdout
    assert len(err.strip().splitlines()) == 1, err
  assert not (tmp_path / "out").exists() and a_file.read_text() == "keep me"
  assert os.listdir(holder) == ["weights.pth"]
