"""Test protocols: every protocol's crop boxes pinned, pixels against direct slicing, `center` equal
to the training loop's eval on a trained run, every example once, ensembles, the CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from incres import evaluate
from incres.data import eval_views, image_ops, imagenet_stats
from incres.evaluate import View

# A 375×500 landscape photo (ImageNet's most common shape) and its portrait twin.
H, W = 375, 500


# --- A trained tiny run, shared by the test files of this directory -------------------------------


def tiny_run_config():
  """CifarResNet20 (width 4) on 40×52 fake JPEGs, 16×16 crops, ImageNet-style centre eval."""
  import tiny_config  # pylint: disable=g-import-not-at-top  (tests/ is on the path)

  return tiny_config.get(
      steps=2,
      every=1,
      dataset="fake",
      fake_image_shape=(40, 52, 3),  # Larger than the 18-pixel shorter side of `center`.
      fake_num_train=64,
      fake_num_eval=37,  # Not a multiple of any batch: the last batch is padded.
      num_classes=5,
      eval_preprocess="center",
      normalize="channel_mean",
      eval_batch_size=16,
      eval_every_steps=1,
      checkpoint_every_steps=2,
      lr_boundaries=(1,),
  )


def trained_run(tmp_path_factory) -> str:
  """Trains the tiny run once per pytest session (the other test files reuse it)."""
  from incres import train  # pylint: disable=g-import-not-at-top

  workdir = tmp_path_factory.getbasetemp() / "incres_tiny_trained_run"
  if not (workdir / "done").exists():
    train.train_and_evaluate(tiny_run_config(), str(workdir))
    (workdir / "done").write_text("")
  return str(workdir)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> str:
  return trained_run(tmp_path_factory)


# --- Geometry -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape", [(375, 500), (500, 375), (333, 500), (256, 256), (40, 52), (31, 1000), (481, 479)]
)
@pytest.mark.parametrize("shorter", [18, 224, 256, 288, 320, 352, 640])
def test_resized_shape_is_what_tensorflow_resizes_to(shape, shorter):
  image = tf.zeros((*shape, 3), tf.float32)
  assert evaluate.resized_shape(*shape, shorter) == tuple(
      image_ops.resize_shorter_side(image, shorter).shape[:2]
  )


def test_single_is_the_original_view():
  assert evaluate.views("single", 32, 32, 32) == [View(None, (0, 0, 32, 32), None, False)]
  # Not already S×S: resized to it (as `eval_views.eval_single`).
  assert evaluate.views("single", 40, 52, 16) == [View(None, (0, 0, 40, 52), 16, False)]


def test_center_box():
  # 375×500 -> 256×341 (500 · 256/375 = 341.3), centre 224 crop.
  assert evaluate.views("center", H, W) == [View(256, (16, 58, 224, 224), None, False)]
  assert evaluate.views("center", W, H) == [View(256, (58, 16, 224, 224), None, False)]
  # Other crop sizes scale 256/224: 16 -> 18.
  assert evaluate.views("center", 40, 52, 16) == [View(18, (1, 3, 16, 16), None, False)]


def test_ten_crop_boxes():
  corners_and_centre = [(0, 0), (0, 117), (32, 0), (32, 117), (16, 58)]
  expected = [
      View(256, (t, l, 224, 224), None, flip)
      for flip in (False, True)
      for t, l in corners_and_centre
  ]
  assert evaluate.views("10crop", H, W) == expected


def test_144_crop_boxes_landscape():
  views = evaluate.views("144crop", H, W)
  assert len(views) == 144
  # Shorter side 288: the image is 288×384; squares at left 0, 48, 96.
  at_288 = [v for v in views if v.shorter == 288 and not v.flip]
  expected = []
  for left in (0, 48, 96):
    expected += [
        View(288, (t, left + l, 224, 224), None, False)
        for t, l in [(0, 0), (0, 64), (64, 0), (64, 64), (32, 32)]
    ]
    expected.append(View(288, (0, left, 288, 288), 224, False))
  assert at_288 == expected
  # Scales and their images: 256×341, 288×384, 320×427, 352×469; the right square ends at the edge.
  for shorter, width in ((256, 341), (288, 384), (320, 427), (352, 469)):
    squares = [v.box for v in views if v.shorter == shorter and v.out == 224 and not v.flip]
    assert squares == [
        (0, 0, shorter, shorter),
        (0, (width - shorter) // 2, shorter, shorter),
        (0, width - shorter, shorter, shorter),
    ]
  # Every view once unmirrored and once mirrored, in that order per square.
  for i in range(0, 144, 12):
    assert [v._replace(flip=True) for v in views[i : i + 6]] == views[i + 6 : i + 12]
    assert not any(v.flip for v in views[i : i + 6])


def test_144_crop_boxes_portrait_use_top_centre_bottom_squares():
  views = evaluate.views("144crop", W, H)  # 500×375 -> at 352: 469×352.
  squares = [v.box for v in views if v.shorter == 352 and v.out == 224 and not v.flip]
  assert squares == [(0, 0, 352, 352), (58, 0, 352, 352), (117, 0, 352, 352)]
  bottom = [v.box for v in views if v.shorter == 352 and v.out is None and not v.flip][10:15]
  assert bottom == [
      (117, 0, 224, 224),
      (117, 128, 224, 224),
      (245, 0, 224, 224),
      (245, 128, 224, 224),
      (181, 64, 224, 224),
  ]


def test_multiscale_is_the_whole_image_at_five_scales():
  expected = [(224, 299), (256, 341), (384, 512), (480, 640), (640, 853)]
  assert evaluate.views("multiscale", H, W) == [
      View(s, (0, 0, h, w), None, False) for s, (h, w) in zip((224, 256, 384, 480, 640), expected)
  ]


@pytest.mark.parametrize("protocol", evaluate.PROTOCOLS)
def test_every_box_fits_and_counts_match(protocol):
  rng = np.random.default_rng(0)
  for _ in range(50):
    h, w = (int(x) for x in rng.integers(16, 800, size=2))
    views = evaluate.views(protocol, h, w, 16)
    assert len(views) == evaluate.NUM_VIEWS[protocol]
    for v in views:
      rh, rw = (h, w) if v.shorter is None else evaluate.resized_shape(h, w, v.shorter)
      top, left, bh, bw = v.box
      assert 0 <= top and 0 <= left and top + bh <= rh and left + bw <= rw, (h, w, v)


def test_unknown_protocol_is_refused():
  with pytest.raises(ValueError, match="144crop"):
    evaluate.views("12crop", 10, 10)


# --- Pixels ---------------------------------------------------------------------------------------


def _image(h=40, w=52, seed=0):
  return tf.constant(np.random.default_rng(seed).integers(0, 256, (h, w, 3)), tf.uint8)


MEAN = tf.constant(imagenet_stats.IMAGENET_MEAN_RGB, tf.float32)


@pytest.mark.parametrize(
    "protocol,reference", [("center", eval_views.eval_center), ("single", eval_views.eval_single)]
)
def test_one_view_protocols_equal_the_training_loop_preprocessing(protocol, reference):
  image = _image()
  views = evaluate.make_view_fn(protocol, 16, MEAN)(image)
  np.testing.assert_array_equal(views.numpy()[0], reference(image, size=16, mean=MEAN).numpy())


def test_ten_crop_pixels_are_slices_of_the_resized_image():
  image = _image()
  views = evaluate.make_view_fn("10crop", 16, MEAN)(image).numpy()
  resized = (
      image_ops.resize_shorter_side(tf.cast(image, tf.float32) / 255.0, 18).numpy() - MEAN.numpy()
  )
  assert resized.shape == (18, 23, 3)
  for i, v in enumerate(evaluate.views("10crop", 40, 52, 16)):
    t, l, h, w = v.box
    crop = resized[t : t + h, l : l + w]
    np.testing.assert_allclose(views[i], crop[:, ::-1] if v.flip else crop, atol=1e-6)


def test_144_crop_square_views_are_the_square_resized():
  image = _image(52, 40)  # Portrait.
  views = evaluate.make_view_fn("144crop", 16, MEAN)(image).numpy()
  assert views.shape == (144, 16, 16, 3)
  x = tf.cast(image, tf.float32) / 255.0
  for i, v in enumerate(evaluate.views("144crop", 52, 40, 16)):
    if v.out is None or i % 3:  # Every third square view is enough.
      continue
    resized = image_ops.resize_shorter_side(x, v.shorter)
    t, l, h, w = v.box
    square = (
        tf.image.resize(resized[t : t + h, l : l + w], [16, 16], antialias=True).numpy()
        - MEAN.numpy()
    )
    np.testing.assert_allclose(views[i], square[:, ::-1] if v.flip else square, atol=1e-6)


def test_multiscale_views_are_whole_images_and_a_pixel_mean_becomes_a_channel_mean():
  image = _image()
  pixel_mean = tf.random.stateless_uniform([16, 16, 3], [1, 2])
  views = evaluate.make_view_fn("multiscale", 16, pixel_mean)(image)
  assert [tuple(v.shape) for v in views] == [
      (1, 16, 21, 3),
      (1, 18, 23, 3),
      (1, 27, 35, 3),
      (1, 34, 44, 3),
      (1, 46, 60, 3),
  ]
  x = image_ops.resize_shorter_side(tf.cast(image, tf.float32) / 255.0, 27)
  np.testing.assert_allclose(views[2][0], x - tf.reduce_mean(pixel_mean, (0, 1)), atol=1e-6)


def test_errors_top1_top5():
  probs = np.eye(6)[[0, 1, 2, 3]] * 0.5 + np.linspace(0, 0.1, 6)[None]
  labels = np.array([0, 1, 5, 4])  # Right, right, 2nd best (class 5), 3rd best.
  top1, top5 = evaluate.errors(probs, labels)
  assert top1 == pytest.approx(50.0) and top5 == pytest.approx(0.0)
  assert evaluate.errors(probs, labels, k=2)[1] == pytest.approx(25.0)


# --- On a trained run -----------------------------------------------------------------------------


def test_center_equals_the_training_loop_eval_on_the_same_checkpoint(run):
  from incres import metrics  # pylint: disable=g-import-not-at-top

  last = [r for r in metrics.read_metrics(run) if "eval/top1" in r][-1]
  assert last["step"] == 2
  p = evaluate.score_split(run, "center")
  top1, top5 = evaluate.errors(p.probs, p.labels)
  assert top1 == pytest.approx(100 * (1 - last["eval/top1"]), abs=1e-9)
  assert top5 == pytest.approx(100 * (1 - last["eval/top5"]), abs=1e-9)
  # Every example of the split exactly once, in order (fake labels are i % classes).
  np.testing.assert_array_equal(p.labels, np.arange(37) % 5)
  np.testing.assert_allclose(p.probs.sum(axis=1), 1.0, atol=1e-5)


def test_cli_ten_crop_ensemble_of_two_runs(run, tmp_path, capsys):
  out = tmp_path / "rows.json"
  rows = evaluate.main(
      [
          f"--workdir={run}",
          f"--workdir={run}",
          "--protocol=10crop",
          "--batch_size=8",
          f"--json={out}",
      ]
  )
  assert [r["models"] for r in rows] == [1, 1, 2]
  assert [r["examples"] for r in rows] == [37, 37, 37]
  assert rows[2]["crops"] == 37 * 10 * 2 and rows[0]["views_per_example"] == 10
  # The ensemble of a model with itself is that model.
  assert rows[2]["top1_err"] == pytest.approx(rows[0]["top1_err"])
  assert json.loads(out.read_text())[2]["models"] == 2
  assert "ensemble of 2" in capsys.readouterr().out


def test_ensemble_averages_probabilities():
  a = evaluate.Predictions(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 0]), "center", 1)
  b = evaluate.Predictions(np.array([[0.3, 0.7], [0.9, 0.1]]), np.array([0, 0]), "center", 1)
  e = evaluate.ensemble([a, b])
  np.testing.assert_allclose(e.probs, [[0.6, 0.4], [0.55, 0.45]])
  assert e.num_models == 2 and evaluate.errors(e.probs, e.labels)[0] == 0.0
  with pytest.raises(ValueError, match="same examples"):
    evaluate.ensemble([a, evaluate.Predictions(a.probs, np.array([1, 0]), "center", 1)])


# --- Memory: `multiscale` keeps a bounded set of compiled functions ------------------------------


def test_compiled_per_shape_keeps_at_most_its_bound_alive_and_matches_jit():
  import gc  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def fn(w, x):
    return jnp.mean(jnp.tanh(x * w), axis=(1, 2))

  client = jax.devices()[0].client
  gc.collect()
  alive_before = len(client.live_executables())
  per_shape = evaluate.CompiledPerShape(fn, max_size=3)
  w = np.float32(0.5)
  rng = np.random.default_rng(0)
  for i in range(30):  # 30 distinct shapes, as a validation set of varied images gives.
    x = rng.normal(size=(1, 5 + i, 7 + 2 * i, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(per_shape(w, x)), np.asarray(jax.jit(fn)(w, x)))
    assert len(per_shape) <= 3
  np.asarray(per_shape(w, x))  # The newest shape is still compiled.
  assert per_shape.compiles == 30
  jax.clear_caches()  # Drops the reference `jax.jit(fn)` executables, not `per_shape`'s.
  gc.collect()
  assert len(client.live_executables()) - alive_before <= 3


def test_multiscale_with_a_tight_bound_recompiles_and_scores_the_same(run, monkeypatch):
  made = []

  class Recording(evaluate.CompiledPerShape):

    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      made.append(self)

  monkeypatch.setattr(evaluate, "CompiledPerShape", Recording)
  roomy = evaluate.score_split(run, "multiscale", max_examples=2, max_compiled=32)
  tight = evaluate.score_split(run, "multiscale", max_examples=2, max_compiled=2)
  np.testing.assert_array_equal(tight.probs, roomy.probs)
  np.testing.assert_array_equal(tight.labels, roomy.labels)
  scales = len(set(evaluate._scales("multiscale", 16)))  # pylint: disable=protected-access
  assert made[0].compiles == scales > 2  # Every image has the same shape: one compile per scale.
  assert len(made[1]) == 2 and made[1].compiles == 2 * scales  # Cycling through 5 > 2 shapes.
