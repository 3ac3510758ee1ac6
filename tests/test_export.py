"""Exports reload and give the run's logits (StableHLO, SavedModel, torchvision); the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from incres import checkpoint, convert_torch, data, export
from incres import state as state_lib

import torch_helpers

torch = pytest.importorskip("torch")  # conftest.py imports torchvision before TensorFlow.
torchvision = pytest.importorskip("torchvision")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_config():
  """CifarResNet20 (width 4) on 16x16 digits, per-pixel mean normalisation, EMA kept."""
  sys.path.insert(0, os.path.dirname(__file__))
  import tiny_config  # pylint: disable=g-import-not-at-top

  config = tiny_config.get_config()
  config.num_classes = 10
  config.normalize = "pixel_mean"
  config.ema_decay = 0.9
  return config


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> str:
  """A saved tiny run whose EMA, raw parameters and batch statistics all differ (no training).

  Its logits vary with the image and with its normalisation (test_exports_normalise_the_input).
  """
  config = _tiny_config()
  model = state_lib.create_model(config)
  tx = state_lib.create_optimizer(config, state_lib.create_learning_rate_fn(config))
  state = state_lib.create_train_state(config, model, tx, state_lib.create_mesh())
  rng = np.random.default_rng(0)

  def randomise(x, lo):
    return x + lo * rng.standard_normal(x.shape).astype(np.float32)

  def stats(path, s):  # Signed means, positive variances: |mean| killed every ReLU after stage 1.
    s = randomise(np.asarray(s), 0.3)
    return s if path[-1].key == "mean" else np.abs(s)

  # Not shrunk: halving every weight (for an EMA unlike the raw parameters) left logits that did
  # not depend on the image, so no test could tell a wrong input transform.
  params = jax.tree.map(lambda p: randomise(np.asarray(p), 0.1), state.params)  # The head is 0.
  state = state.replace(
      params=params,
      ema_params=jax.tree.map(lambda p: randomise(p, 0.05), params),
      batch_stats=jax.tree_util.tree_map_with_path(stats, state.batch_stats),
  )
  workdir = str(tmp_path_factory.mktemp("tiny_run"))
  with checkpoint.Checkpointer(workdir, config, save_every_steps=1, keep=1, async_save=False) as c:
    c.save(3, state)
  return workdir


def _images(batch, size=16, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def _expected_logits(workdir, images_uint8, averaged):
  """The run's logits through incres's own eval preprocessing (incres.data), not the export's."""
  config, model, variables = checkpoint.load_variables(workdir, averaged=averaged)
  x = np.stack([data.preprocess_for_eval(im, config) for im in images_uint8])
  return np.asarray(model.apply(variables, x, train=False)[0])


def _assert_close(got, expected):
  scale = np.abs(expected).max()
  assert scale > 1e-2  # Not a trivially small output.
  np.testing.assert_allclose(np.asarray(got), expected, rtol=0, atol=1e-4 * scale)


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> str:
  out = str(tmp_path_factory.mktemp("exports") / "both")
  export.export(run, out, "stablehlo,saved_model")  # Lowered for CPU, CUDA and TPU.
  return out


def test_stablehlo_reloads_and_takes_any_batch_size(run, exported):
  with open(os.path.join(exported, "model.stablehlo"), "rb") as f:
    fn = jax.export.deserialize(bytearray(f.read()))
  assert fn.platforms == ("cpu", "cuda", "tpu")
  for batch in (1, 5):
    images = _images(batch, seed=batch)
    got = fn.call(images.astype(np.float32) / 255.0)
    assert got.shape == (batch, 10) and got.dtype == np.float32
    _assert_close(got, _expected_logits(run, images, averaged="ema"))


def test_saved_model_serving_default_gives_the_runs_logits(run, exported):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  loaded = tf.saved_model.load(os.path.join(exported, "saved_model"))
  serve = loaded.signatures["serving_default"]
  assert serve.structured_input_signature[1]["images"].shape.as_list() == [None, 16, 16, 3]
  for batch in (2, 3):
    images = _images(batch, seed=10 + batch)
    got = serve(images=tf.constant(images.astype(np.float32) / 255.0))["logits"].numpy()
    _assert_close(got, _expected_logits(run, images, averaged="ema"))


def test_sidecar_describes_the_input(run, exported):
  with open(os.path.join(exported, "export.json")) as f:
    info = json.load(f)
  assert info["input"]["shape"] == [None, 16, 16, 3] and info["input"]["dtype"] == "float32"
  assert info["input"]["range"] == [0.0, 1.0] and info["parameters"] == "ema"
  assert info["num_classes"] == 10 and info["label_names"] == [str(i) for i in range(10)]
  assert info["files"] == {"stablehlo": "model.stablehlo", "saved_model": "saved_model"}
  norm = info["input"]["normalization"]
  assert norm["mode"] == "pixel_mean" and norm["std"] is None
  mean = np.load(os.path.join(exported, norm["mean"]))
  assert mean.shape == (16, 16, 3)
  image = _images(1)[0]
  np.testing.assert_allclose(
      image / 255.0 - mean, data.preprocess_for_eval(image, _tiny_config()), atol=1e-6
  )


def test_exports_normalise_the_input(run, exported):
  """Both exports equal the model on normalised images, not on the plain [0, 1] ones they take."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  images = _images(4, seed=20)
  pixels = images.astype(np.float32) / 255.0
  expected = _expected_logits(run, images, averaged="ema")  # incres.data's normalisation.
  _, model, variables = checkpoint.load_variables(run, averaged="ema")
  unnormalised = np.asarray(model.apply(variables, pixels, train=False)[0])
  tol = 1e-4 * np.abs(expected).max()  # _assert_close's.
  # The net would tell a missing normalisation: its logits depend on the image, and on the mean.
  assert np.abs(expected - expected[0]).max() > 100 * tol
  assert np.abs(unnormalised - expected).max() > 100 * tol
  with open(os.path.join(exported, "model.stablehlo"), "rb") as f:
    from_stablehlo = jax.export.deserialize(bytearray(f.read())).call(pixels)
  serve = tf.saved_model.load(os.path.join(exported, "saved_model")).signatures["serving_default"]
  from_saved_model = serve(images=tf.constant(pixels))["logits"].numpy()
  for got in (np.asarray(from_stablehlo), from_saved_model):
    _assert_close(got, expected)
    assert np.abs(got - unnormalised).max() > 100 * tol


def test_sidecar_states_the_serialization_versions(exported):
  """export.json names jax, jaxlib, each artifact's StableHLO target and calling convention."""
  # pylint: disable=g-import-not-at-top
  import jaxlib
  import tensorflow as tf
  from jax.extend.mlir.dialects import stablehlo
  from tensorflow.compiler.mlir.stablehlo import stablehlo as tf_stablehlo
  # pylint: enable=g-import-not-at-top

  with open(os.path.join(exported, "export.json")) as f:
    info = json.load(f)["serialization"]
  assert info["jax"] == jax.__version__ and info["jaxlib"] == jaxlib.__version__
  with open(os.path.join(exported, "model.stablehlo"), "rb") as f:
    fn = jax.export.deserialize(bytearray(f.read()))
  assert info["stablehlo"] == {
      "calling_convention_version": fn.calling_convention_version,
      "stablehlo_target_version": export.stablehlo_version(fn.mlir_module_serialized),
  }
  saved = info["saved_model"]
  target = saved["stablehlo_target_version"]
  assert saved["tensorflow"] == tf.__version__
  assert saved["tensorflow_stablehlo_version"] == tf_stablehlo.get_current_version()
  # Serialized for a StableHLO that TensorFlow is guaranteed to read: its own or older.
  assert stablehlo.get_smaller_version(target, saved["tensorflow_stablehlo_version"]) == target
  calls = export._saved_xla_call_modules(os.path.join(exported, "saved_model"))
  assert {export.stablehlo_version(call.attr["module"].s) for call in calls} == {target}
  assert {call.attr["version"].i for call in calls} == {saved["calling_convention_version"]}


def test_saved_models_target_the_older_of_jaxs_and_tensorflows_stablehlo():
  from jax.extend.mlir.dialects import stablehlo  # pylint: disable=g-import-not-at-top

  requirement = stablehlo.StablehloCompatibilityRequirement
  jax_target = stablehlo.get_version_from_compatibility_requirement(requirement.WEEK_4)
  assert export.saved_model_target("1.0.0") == "1.0.0"
  assert export.saved_model_target("99.0.0") == jax_target
  week_12 = stablehlo.get_version_from_compatibility_requirement(requirement.WEEK_12)
  assert export.saved_model_target(None) == week_12


@pytest.mark.parametrize("mode", ["channel_mean", "mean_std", "none"])
def test_normalization_is_the_eval_pipelines(mode):
  config = _tiny_config()
  config.normalize = mode
  image = _images(1)[0]
  norm = export.normalization(config)
  assert norm.mode == mode
  np.testing.assert_allclose(
      norm(image / 255.0), data.preprocess_for_eval(image, config), rtol=0, atol=1e-6
  )


def test_averaged_false_exports_the_raw_parameters(run, tmp_path):
  out = tmp_path / "raw"
  info = export.export(run, str(out), "stablehlo", averaged=False, platforms=("cpu",))
  assert info["parameters"] == "raw"
  fn = jax.export.deserialize(bytearray((out / "model.stablehlo").read_bytes()))
  images = _images(2)
  got = fn.call(images.astype(np.float32) / 255.0)
  _assert_close(got, _expected_logits(run, images, averaged=False))
  assert np.abs(got - _expected_logits(run, images, averaged="ema")).max() > 1e-3


def _torchvision_model(name, **kwargs):
  torch.manual_seed(0)
  model = getattr(torchvision.models, name)(weights=None, num_classes=10, **kwargs)
  return torch_helpers.randomize(model, seed=1).eval()  # Random BN statistics and affine params.


def _assert_same_state_dict(got, expected):
  assert list(got) == list(expected)
  for key, value in expected.items():
    assert got[key].dtype == value.dtype and torch.equal(got[key], value), key


@pytest.mark.slow  # ~15 s of CPU: a ResNet-18 checkpoint written, read and run.
def test_torchvision_resnet18_round_trip_is_exact(tmp_path, capsys):
  tv = _torchvision_model("resnet18")
  _, variables = convert_torch.convert(tv.state_dict(), "resnet18")
  run = str(tmp_path / "imported")
  convert_torch.save("resnet18", variables, run)
  out = tmp_path / "torch"
  assert export.main([f"--checkpoint={run}", f"--out={out}", "--format=torch"]) == 0
  assert "torch" in capsys.readouterr().out
  state_dict = torch.load(out / "model.pth", weights_only=True)
  _assert_same_state_dict(state_dict, tv.state_dict())

  info = json.loads((out / "export.json").read_text())
  assert info["torch"]["model"] == "torchvision.models.resnet18(num_classes=10)"
  assert info["input"]["normalization"]["std"] == pytest.approx([0.229, 0.224, 0.225])
  reloaded = torchvision.models.resnet18(num_classes=10)
  reloaded.load_state_dict(state_dict, strict=True)
  x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    got = reloaded.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  _, model, loaded = checkpoint.load_variables(run)
  _assert_close(got, np.asarray(model.apply(loaded, x, train=False)[0]))


@pytest.mark.parametrize("transform_input", [False, True])
def test_torchvision_googlenet_state_dict_round_trip_is_exact(transform_input):
  tv = _torchvision_model("googlenet", aux_logits=True, init_weights=False)
  _, variables = convert_torch.convert(
      tv.state_dict(), "googlenet", transform_input=transform_input
  )
  config = convert_torch.import_config("googlenet", 10, transform_input=transform_input)
  state_dict, constructor = export.torch_state_dict(config, variables)
  _assert_same_state_dict(state_dict, tv.state_dict())
  assert constructor == (
      "torchvision.models.googlenet(num_classes=10, aux_logits=True,"
      f" transform_input={transform_input})"
  )


def test_models_without_a_torchvision_twin_are_refused():
  config = convert_torch.import_config("resnet50", 10)
  assert export.torchvision_twin(config) == ("resnet50", {"num_classes": 10})
  config.model_kwargs.stride_in_1x1 = True  # The paper's v1 ResNet-50: same shapes, other output.
  with pytest.raises(export.ExportError, match="stride_in_1x1=True"):
    export.torchvision_twin(config)
  config = convert_torch.import_config("resnet18", 10)
  config.model_kwargs.stride_in_1x1 = True  # Basic blocks have no 1x1 conv: still resnet18.
  assert export.torchvision_twin(config)[0] == "resnet18"
  config.model_kwargs.width = 32
  with pytest.raises(export.ExportError, match="width=32"):
    export.torchvision_twin(config)
  with pytest.raises(export.ExportError, match="torchvision has no twin of CifarResNet20"):
    export.torchvision_twin(_tiny_config())


# --- User errors: one paragraph, exit status 2, nothing written or overwritten -------------------


def _fails(capsys, argv, match):
  assert export.main(argv) == 2
  err = capsys.readouterr().err
  assert match in err and "Traceback" not in err and err.count("\n") == 1
  return err


def test_cli_user_errors(run, tmp_path, capsys):
  out = tmp_path / "out"
  _fails(capsys, [f"--checkpoint={tmp_path}", f"--out={out}"], "neither a workdir")
  _fails(capsys, [f"--checkpoint={run}", f"--out={out}", "--format=onnx"], "Unknown --format onnx")
  _fails(capsys, [f"--checkpoint={run}", f"--out={out}", "--platforms=gpu"], "Unknown --platforms")
  _fails(capsys, [f"--checkpoint={run}", f"--out={out}", "--format=torch"], "has no twin")
  _fails(capsys, [f"--checkpoint={run}", f"--out={out}", "--averaged=polyak"], "no polyak average")
  _fails(capsys, [f"--checkpoint={run}/checkpoints/7", f"--out={out}"], "No checkpoint 7")
  assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  _fails(capsys, [f"--checkpoint={run}", f"--out={out}"], "never overwrites")
  assert [p.name for p in out.iterdir()] == ["keep.txt"]
  assert (out / "keep.txt").read_text() == "mine"


def test_damaged_checkpoint_is_a_user_error(run, tmp_path, capsys):
  damaged = tmp_path / "damaged"
  shutil.copytree(run, damaged)
  shutil.rmtree(damaged / "checkpoints" / "3" / "state")
  _fails(capsys, [f"--checkpoint={damaged}", f"--out={tmp_path / 'out'}"], "it is damaged")
  assert not (tmp_path / "out").exists()


def test_cli_error_from_the_command_line_has_no_traceback(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "incres.export", f"--checkpoint={tmp_path}", f"--out={tmp_path}/x"],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert result.returncode == 2
  assert "neither a workdir" in result.stderr and "Traceback" not in result.stderr
  assert not (tmp_path / "x").exists()
