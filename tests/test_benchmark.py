"""Smoke runs of the benchmarks on tiny configurations (no timing assertions)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from incres import complexity, errors, metrics, models

BENCHMARKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "benchmarks")
sys.path.insert(0, BENCHMARKS)
import throughput  # noqa: E402  (benchmarks/ is not a package)
import tiny_config  # noqa: E402  (tests/ is on the path)


def test_throughput_json_jax_side(capsys):
  throughput.main(["--model=CifarResNet20", "--batch=2", "--steps=1", "--warmup=0", "--json"])
  result = json.loads(capsys.readouterr().out)
  for key in ("model", "batch", "train_img_per_s", "infer_img_per_s", "compile_s", "load_avg"):
    assert key in result, key
  assert result["model"] == "CifarResNet20" and result["batch"] == 2 and result["side"] == "jax"
  assert result["image_size"] == 32 and result["jax_version"] == jax.__version__
  assert not any(k.startswith("torch_") for k in result), result  # JAX alone.
  for kind in ("train", "infer"):
    speed = result[f"{kind}_img_per_s"]
    assert math.isfinite(speed) and speed > 0, kind
    assert speed * result[f"{kind}_step_s"] == pytest.approx(2)  # Images per second of batch 2.
  # Compilation is timed apart from the steps, and a step is not a recompilation.
  assert 0 < result["compile_s"] and result["train_step_s"] < result["compile_s"]
  # XLA's FLOPs per step against incres.complexity's multiply-adds (2 FLOPs each): inference is
  # the forward pass (XLA counted 0.92x on CPU, jax 0.10), training forward and two backward
  # passes (3.0x).
  model = models.get_model("CifarResNet20", num_classes=10)
  macs = complexity.count_macs(model, 32) * 2  # Batch 2.
  flops = {k: result[f"{k}_tflop_per_s"] * 1e12 * result[f"{k}_step_s"] for k in ("train", "infer")}
  assert 0.8 < flops["infer"] / (2 * macs) < 1.2, flops
  assert 2.5 < flops["train"] / (2 * macs) < 3.5, flops
  assert result["params"] == 269_722


@pytest.mark.parametrize("mode, copies_per_step", [("device", 0), ("host", 2)])
def test_input_device_keeps_the_batch_there_and_host_copies_it_every_step(
    monkeypatch, mode, copies_per_step
):
  """--input=device: the model's own rate (no copies in the timed steps); --input=host: the
  images and labels copied from host memory before each step."""
  args = throughput.parse_args(
      ["--model=CifarResNet20", "--batch=2", "--skip_infer", f"--input={mode}"]
  )
  _, steps = throughput.setup_jax(args, *throughput.synthetic_batch(args))
  copies, put = [], jax.device_put

  def counting_put(x, *a, **kw):
    copies.append(isinstance(x, np.ndarray))
    return put(x, *a, **kw)

  monkeypatch.setattr(jax, "device_put", counting_put)
  throughput.time_steps(steps, 3)
  assert len(copies) == 6 and sum(copies) == 3 * copies_per_step


def test_throughput_json_torch_side(capsys):
  pytest.importorskip("torch")
  pytest.importorskip("torchvision")
  throughput.main(
      ["--model=CifarResNet20", "--batch=2", "--steps=1", "--warmup=0", "--side=torch", "--json"]
  )
  result = json.loads(capsys.readouterr().out)
  assert result["side"] == "torch" and result["torch_device"] == "cpu"
  assert "train_img_per_s" not in result and "jax_version" not in result  # torch alone.
  for kind in ("train", "infer"):
    speed = result[f"torch_{kind}_img_per_s"]
    assert math.isfinite(speed) and speed > 0, kind
    assert speed * result[f"torch_{kind}_step_s"] == pytest.approx(2)
  # The twin is the same network: the JAX side's number of parameters.
  assert result["torch_params"] == 269_722


def test_vs_torch_alternates_processes_and_takes_medians(monkeypatch, capsys):
  calls = []
  rates = {"jax": iter([10.0, 30.0, 20.0]), "torch": iter([20.0, 20.0, 50.0])}

  def fake_side(args, side):  # A side's process: its JSON result.
    calls.append(side)
    rate = next(rates[side])
    prefix = "" if side == "jax" else "torch_"
    return {
        "model": args.model,
        "side": side,
        "load_avg": [len(calls), 0.0, 0.0],
        "cpu": "A CPU",
        f"{prefix}train_img_per_s": rate,
        f"{prefix}params": 7,
    }

  monkeypatch.setattr(throughput, "_run_side", fake_side)
  throughput.main(["--model=CifarResNet20", "--vs_torch", "--rounds=3", "--skip_infer", "--json"])
  result = json.loads(capsys.readouterr().out)
  assert calls == ["jax", "torch"] * 3  # A B A B A B.
  assert result["train_img_per_s"] == 20 and result["torch_train_img_per_s"] == 20
  assert result["train_ratio_vs_torch"] == 1.0
  assert result["train_ratio_vs_torch_rounds"] == [0.5, 1.5, 0.4]
  assert result["train_img_per_s_rounds"] == [10, 30, 20]
  assert result["load_avg"] == {
      "jax": [[1, 0, 0], [3, 0, 0], [5, 0, 0]],
      "torch": [[2, 0, 0], [4, 0, 0], [6, 0, 0]],
  }
  assert result["cpu"] == "A CPU" and result["params"] == result["torch_params"] == 7
  assert result["rounds"] == 3 and "infer_ratio_vs_torch" not in result


def test_vs_torch_with_torch_compile_adds_a_third_process(monkeypatch, capsys):
  calls = []

  def fake_side(args, side):
    calls.append(side)
    prefix = {"jax": "", "torch": "torch_", "torch_compile": "torch_compile_"}[side]
    rate = {"jax": 6.0, "torch": 3.0, "torch_compile": 4.0}[side]
    return {"load_avg": [1.0, 1.0, 1.0], f"{prefix}train_img_per_s": rate}

  monkeypatch.setattr(throughput, "_run_side", fake_side)
  throughput.main(["--vs_torch", "--torch_compile", "--rounds=2", "--skip_infer", "--json"])
  result = json.loads(capsys.readouterr().out)
  assert calls == ["jax", "torch", "torch_compile"] * 2
  assert result["train_ratio_vs_torch"] == 2.0 and result["train_ratio_vs_torch_compile"] == 1.5
  assert result["torch_compile_train_img_per_s_rounds"] == [4.0, 4.0]


def test_mixing_flag_mixes_in_the_timed_train_step(monkeypatch):
  from incres import mixing  # pylint: disable=g-import-not-at-top

  traced = []
  mix_images = mixing.mix_images
  monkeypatch.setattr(mixing, "mix_images", lambda *a: traced.append(1) or mix_images(*a))

  class Linear(nn.Module):

    @nn.compact
    def __call__(self, x, train):
      return nn.Dense(10)(x.reshape(x.shape[0], -1)), {}

  assert not throughput.parse_args([]).mixing  # Off unless asked: the step timed so far.
  args = throughput.parse_args(["--batch=4", "--skip_infer", "--warmup=0", "--mixing"])
  _, steps = throughput.setup_jax(args, *throughput.synthetic_batch(args), model=Linear())
  throughput.time_steps(steps, 1)
  assert traced == [1]  # Traced into the compiled train step, once.


def test_vs_mixing_alternates_processes_and_takes_the_medians_ratio(monkeypatch, capsys):
  calls = []
  times = {"jax": iter([1.0, 2.0, 1.5]), "jax_mixing": iter([1.2, 2.1, 1.8])}

  def fake_side(args, side):
    calls.append(side)
    return {"load_avg": [1.0, 1.0, 1.0], "train_step_s": next(times[side]), "cpu": "A CPU"}

  monkeypatch.setattr(throughput, "_run_side", fake_side)
  throughput.main(["--vs_mixing", "--rounds=3", "--skip_infer", "--json"])
  result = json.loads(capsys.readouterr().out)
  assert calls == ["jax", "jax_mixing"] * 3  # A B A B A B.
  assert result["train_step_s"] == 1.5 and result["mixing_train_step_s"] == 1.8
  assert result["mixing_step_ratio"] == pytest.approx(1.2)
  assert result["mixing_step_ratio_rounds"] == pytest.approx([1.2, 1.05, 1.2])
  with pytest.raises(errors.UserError, match="vs_mixing"):
    throughput.parse_args(["--vs_mixing", "--vs_torch"])


@pytest.mark.slow
def test_vs_torch_runs_each_side_in_its_own_process(capsys):
  pytest.importorskip("torch")
  pytest.importorskip("torchvision")
  throughput.main(
      [
          "--model=CifarResNet20",
          "--batch=2",
          "--steps=1",
          "--warmup=0",
          "--skip_infer",
          "--vs_torch",
          "--rounds=1",
          "--json",
      ]
  )
  result = json.loads(capsys.readouterr().out)
  assert set(result["load_avg"]) == {"jax", "torch"}
  jax_rate, torch_rate = result["train_img_per_s"], result["torch_train_img_per_s"]
  assert math.isfinite(jax_rate) and jax_rate > 0 and math.isfinite(torch_rate) and torch_rate > 0
  assert result["train_ratio_vs_torch"] == pytest.approx(jax_rate / torch_rate)
  assert result["train_ratio_vs_torch_rounds"] == [pytest.approx(jax_rate / torch_rate)]
  assert result["params"] == result["torch_params"] == 269_722
  assert result["cpu"] and result["cpu_count"] >= 1


@pytest.mark.slow
def test_throughput_imports_without_tensorflow():
  # The GPU machines have neither TensorFlow nor ml_collections: the model-only benchmark and its
  # torch side must need neither (end_to_end.py needs ml_collections, and TensorFlow only to run).
  code = (
      "import sys\n"
      "for name in ('tensorflow', 'tensorflow_datasets', 'ml_collections'):\n"
      "  sys.modules[name] = None\n"
      f"sys.path.insert(0, {BENCHMARKS!r})\n"
      "import throughput, torch_twins\n"
      "del sys.modules['ml_collections']\n"
      "import end_to_end\n"
  )
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr


TINY_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_config.py")


@pytest.mark.slow
def test_end_to_end_json(tmp_path, capsys):
  import end_to_end  # noqa: E402  (benchmarks/ is not a package)

  workdir = tmp_path / "run"
  end_to_end.main(
      [
          f"--config={TINY_CONFIG}",
          "--batch=4",
          "--steps=2",
          "--warmup=2",
          "--fake_image_shape=20,24,3",
          f"--workdir={workdir}",
          "--json",
      ]
  )
  result = json.loads(capsys.readouterr().out)
  for key in ("loop", "model", "input"):
    rate = result[f"{key}_img_per_s"]
    assert math.isfinite(rate) and rate > 0, key
  assert result["loop_fraction_of_model"] == pytest.approx(
      result["loop_img_per_s"] / result["model_img_per_s"]
  )
  assert result["input_bound"] == (result["input_img_per_s"] < result["model_img_per_s"])
  assert result["model"] == "CifarResNet20" and result["batch"] == 4 and result["steps"] == 2
  assert result["fake_image_shape"] == [20, 24, 3] and result["cpu"]
  # launch.py really trained in the workdir, inside tmp_path: 4 steps, logged at 2 and 4.
  assert result["workdir"] == str(workdir) and workdir.is_relative_to(tmp_path)
  logged = [r["step"] for r in metrics.read_metrics(str(workdir)) if "train/images_per_sec" in r]
  assert logged == [2, 4]


@pytest.mark.parametrize(
    "overrides",
    [
        dict(augment="resnet_imagenet", resample="device"),
        dict(augment="googlenet", photometric="device", resample="host"),
        dict(augment="googlenet", resample="device"),
    ],
)
def test_end_to_end_times_the_model_with_the_work_left_to_the_train_step(overrides):
  """The "model with preprocess" figure starts from a real batch of the pipeline (the window
  buffers or the undistorted images) and runs `data.device_preprocess` in the timed step."""
  import end_to_end  # noqa: E402

  from incres import data  # pylint: disable=g-import-not-at-top  (TensorFlow)

  config = tiny_config.get(
      dataset="fake", fake_image_shape=(20, 24, 3), num_classes=10, batch_size=4
  )
  config.update(overrides)
  args = end_to_end.parse_args(["--config=unused", "--steps=2", "--warmup=1"])
  placement = data.decide_placement(config)
  _, batch = end_to_end.run_input(config, placement, 1, 1)
  # A batch that needs the train step's preprocessing: the keys the placement leaves to it.
  assert set(batch) - {"image", "label"} == placement.batch_keys != set()
  result = end_to_end.run_model(args, config, batch, placement, prefix="model_with_preprocess")
  rate = result["model_with_preprocess_img_per_s"]
  assert math.isfinite(rate) and rate > 0
  assert result["model_with_preprocess_step_s"] == pytest.approx(4 / rate)


def test_end_to_end_refuses_a_used_workdir(tmp_path, capsys):
  import end_to_end  # noqa: E402

  (tmp_path / "metrics.jsonl").write_text("{}\n")
  with pytest.raises(SystemExit) as exit_info:
    errors.run(lambda: end_to_end.main([f"--config={TINY_CONFIG}", f"--workdir={tmp_path}"]))
  err = capsys.readouterr().err
  assert exit_info.value.code == 2 and "exists and is not empty" in err, err
  assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
  assert (tmp_path / "metrics.jsonl").read_text() == "{}\n"  # Untouched.


def test_profile_step_attributes_time_to_xla_ops(capsys):
  import profile_step  # noqa: E402  (benchmarks/ is not a package)

  profile_step.main(["--model=CifarResNet20", "--batch=2", "--steps=1", "--warmup=0"])
  out = capsys.readouterr().out
  header, *lines = out.splitlines()
  assert header.startswith("CifarResNet20, batch 2, 1 steps") and "ms of op time per step" in header
  shares = [float(line.split("%")[0]) for line in lines[: lines.index("slowest ops:")]]
  assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100.05
  assert any("convolution" in line or "ynn_fusion" in line for line in lines)


def test_conv_weight_grad_table(capsys):
  pytest.importorskip("torch")
  import conv_weight_grad  # noqa: E402  (asserts incres' gradient equals XLA's before timing)

  conv_weight_grad.main(["--shape=4,8,16,16,3,1", "--shape=4,9,3,8,7,2", "--steps=1"])
  rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| 4,")]
  assert [r.split("|")[1].strip() for r in rows] == ["4, 8, 16->16, 3x3/1", "4, 9, 3->8, 7x7/2"]
  for row in rows:
    assert all(float(v) > 0 for v in row.strip("|").split("|")[1:])


def _side_by_side(input_pipeline, capsys, *flags: str) -> tuple[dict[str, float], str]:
  """`input_pipeline.main`'s side-by-side lines, briefly timed: ({case: its rate}, the output)."""
  input_pipeline.main(
      [
          "--table=false",
          "--side_by_side=here",
          "--seconds=0.01",
          "--rounds=1",
          "--batch_size=2",
          *flags,
      ]
  )
  out = capsys.readouterr().out
  rates = {}
  for line in out.splitlines():
    name, _, rest = line.strip().partition("  ")
    if rest.strip().endswith(")") and rest.split()[0].replace(".", "").isdigit():
      rates[name.strip()] = float(rest.split()[0])
  return rates, out


@pytest.mark.slow
def test_input_pipeline_side_by_side_names_every_case_and_the_decode_floor(capsys):
  import input_pipeline  # noqa: E402  (benchmarks/ is not a package)

  rates, out = _side_by_side(input_pipeline, capsys, "--decoders")
  assert set(rates) == {
      "resnet train, before",
      "resnet train, after",
      "resnet, resample on device",
      "plain tf.data",
      "center eval, before",
      "center eval, after",
      "googlenet, host",
      "googlenet, colour on device",
      "googlenet, resize on device",
      "jpeg decode only (floor)",
      *input_pipeline.DECODERS,
  }, out
  assert all(math.isfinite(r) and r > 0 for r in rates.values()), rates
  assert "against decoding each whole JPEG and nothing else" in out, out


@pytest.mark.slow  # ~14 s: six pipelines traced, as the side-by-side test above.
def test_input_pipeline_auto_augment_cases_side_by_side_with_the_resnet_pipeline(capsys):
  import input_pipeline  # noqa: E402

  rates, out = _side_by_side(input_pipeline, capsys, "--cases=auto_augment")
  assert set(rates) == {"resnet train, after", *input_pipeline.AUTO_AUGMENT_CASES}, out
  assert all(math.isfinite(r) and r > 0 for r in rates.values()), rates
  assert "against the resnet train pipeline" in out and "decoding each whole JPEG" not in out, out


def test_input_pipeline_decode_floor_decodes_each_whole_jpeg():
  import input_pipeline  # noqa: E402

  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from incres import data  # pylint: disable=g-import-not-at-top  (TensorFlow)

  pool = data.sources.fake_pool(input_pipeline.IMAGENET_SHAPE, data.FAKE_POOL_SIZE)
  shapes = {}
  for name, options in input_pipeline.DECODERS.items():
    batch = next(input_pipeline._decode_iter(3, **options))
    want = [tf.io.decode_jpeg(pool[i], channels=3, **options).numpy() for i in range(3)]
    np.testing.assert_array_equal(batch["last_pixel"], [w[-1, -1] for w in want])
    np.testing.assert_array_equal(batch["shape"], [w.shape for w in want])
    np.testing.assert_array_equal(batch["label"], [0, 1, 2])
    shapes[name] = tuple(batch["shape"][0])
  half = (188, 250, 3)  # ratio=2 decodes the half-size image; every other setting the whole one.
  assert shapes.pop("ratio=2 (half-size DCT)") == half
  assert set(shapes.values()) == {input_pipeline.IMAGENET_SHAPE}, shapes
