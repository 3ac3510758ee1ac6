r"""The papers' test protocols, for one trained run or an ensemble of several.

  python -m incres.evaluate --workdir=runs/resnet50 --protocol=10crop
  python -m incres.evaluate --workdir=runs/a --workdir=runs/b --protocol=144crop  # An ensemble.

Protocols (sizes are for a 224 crop; for other `config.image_size` S every length is scaled by
S / 224 and rounded, as the training augmentations do, `incres.data`):

- `single`: the single original view (ResNet §4.2, CIFAR): the image, resized to S×S if it is not
  already (`incres.data.eval_views.eval_single`, the training loop's eval for
  `eval_preprocess="single"`).
- `center`: shorter side 256, the central 224 crop (`eval_views.eval_center`, the training loop's
  eval for `eval_preprocess="center"`; the two give the same numbers on the same checkpoint,
  tested).
- `10crop`: shorter side 256; the four corner and the central 224 crops, and their mirrors
  (ResNet Table 3, "standard 10-crop testing").

A run with a FixRes-style view (`config.eval_resize_size`, `eval_crop_size`: trained at one size,
evaluated at another, Touvron et al. 2019) takes `center` and `10crop` at its own sizes: shorter
side `eval_resize_size`, crops of `eval_crop_size`, in torchvision's geometry (the longer side
truncated, the centre crop's offset rounded half to even: `eval_views.eval_center` with `resize`),
so `center` stays the training loop's view. `single`, `144crop` and `multiscale` are the papers'
protocols at the training size; the model's global average pool takes any view size.
- `144crop`: GoogLeNet §7: shorter side 256, 288, 320, 352; three squares of side the shorter side
  (left/centre/right for landscape images, top/centre/bottom for portrait ones); in each square the
  four corner and the central 224 crops and the square resized to 224; each with its mirror.
  4 × 3 × 6 × 2 = 144 views.
- `multiscale`: ResNet §3.4/Table 4's fully-convolutional test: the whole image with its shorter
  side at 224, 256, 384, 480, 640, scored by the network as is (its global average pool takes any
  size), averaged over the scales. The paper's text mentions no flips here, so there are none.
  Each image and scale is scored at its exact shape (no padding to a common shape, which would let
  the padded border leak into the convolutions and the pool and change the numbers); the compiled
  functions, one per shape, are kept in a bounded least-recently-used cache
  (`MULTISCALE_COMPILED`, evicted ones are freed), so memory stays flat over a whole validation set
  of varied shapes, at the cost of recompiling shapes that come back after eviction.

Every view goes through the same operations as the training loop's eval (uint8 -> [0, 1] floats,
`incres.data.image_ops.resize_shorter_side`'s antialiased bilinear resize, crop, the run's mean
subtracted), and the softmax outputs of all views of an image are averaged; several workdirs
average the softmax of their models (the papers' ensembles, each model with its own
preprocessing). Every example of the split is scored exactly once.

The geometry of each protocol is a pure function of the image's shape (`views`), which the tests pin
box by box; the TensorFlow input pipeline asks it for the boxes of every image.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

from absl import flags
import numpy as np

from incres import cli

PROTOCOLS = ("single", "center", "10crop", "144crop", "multiscale")
# Lengths for a 224 crop.
CROP = 224
CENTER_SHORTER = 256  # `center` and `10crop` (ResNet; `eval_views.EVAL_RESIZE_RATIO`).
GOOGLENET_SHORTER = (256, 288, 320, 352)  # `144crop`.
MULTISCALE_SHORTER = (224, 256, 384, 480, 640)  # `multiscale` (ResNet Table 4).
# Compiled functions `multiscale` keeps (one per input shape): the five scales of a few images.
MULTISCALE_COMPILED = 32


class View(NamedTuple):
  """One test view: resize, crop a box, optionally resize the box, optionally mirror.

  shorter: resize the image so that its shorter side is this (`image_ops.resize_shorter_side`);
    None keeps the original image.
  box: (top, left, height, width) in the resized image.
  out: resize the box to out × out; None keeps the box's size.
  flip: mirror the view left-right.
  """

  shorter: int | None
  box: tuple[int, int, int, int]
  out: int | None
  flip: bool


def scaled(length: int, size: int) -> int:
  """A length given for a 224 crop, for a crop of `size` (round(length * size / 224))."""
  return round(length * size / CROP)


def resized_shape(height: int, width: int, shorter: int) -> tuple[int, int]:
  """The shape `image_ops.resize_shorter_side` gives: the shorter side exactly `shorter`, the
  longer side rounded (half to even) from float32 arithmetic, as TensorFlow computes it."""
  h, w, s = np.float32(height), np.float32(width), np.float32(shorter)
  scale = s / min(h, w)
  if height <= width:
    return shorter, int(np.round(w * scale))
  return int(np.round(h * scale)), shorter


def _corners_and_center(top: int, left: int, height: int, width: int, size: int) -> list[tuple]:
  """Boxes of side `size` in the region (top, left, height, width): TL, TR, BL, BR, centre."""
  b, r = top + height - size, left + width - size
  if b < top or r < left:
    raise ValueError(f"A {size}×{size} crop does not fit in a {height}×{width} region.")
  return [
      (top, left, size, size),
      (top, r, size, size),
      (b, left, size, size),
      (b, r, size, size),
      (top + (height - size) // 2, left + (width - size) // 2, size, size),
  ]


def _with_mirrors(views: list[View]) -> list[View]:
  return views + [v._replace(flip=True) for v in views]


def single_views(height: int, width: int, size: int = CROP) -> list[View]:
  """The original view, resized to size × size unless it already is."""
  return [
      View(None, (0, 0, height, width), None if (height, width) == (size, size) else size, False)
  ]


def torchvision_resized_shape(height: int, width: int, shorter: int) -> tuple[int, int]:
  """The shape torchvision's `Resize(shorter)` gives: the longer side `int(shorter * long /
  short)` (`image_ops.torchvision_shorter_side_shape`)."""
  if height <= width:
    return shorter, int(shorter * width / height)
  return int(shorter * height / width), shorter


def torchvision_center_offset(length: int, size: int) -> int:
  """torchvision's `center_crop` offset, `round((length - size) / 2)` (halves to even)."""
  return int(round((length - size) / 2.0))


def center_views(
    height: int, width: int, size: int = CROP, resize: int | None = None
) -> list[View]:
  """Shorter side 256, central 224 crop (`eval_views.eval_center`); with `resize`, shorter side
  `resize` and central `size` crop in torchvision's geometry (a FixRes-style view)."""
  if resize is not None:
    h, w = torchvision_resized_shape(height, width, resize)
    top, left = torchvision_center_offset(h, size), torchvision_center_offset(w, size)
    return [View(resize, (top, left, size, size), None, False)]
  shorter = scaled(CENTER_SHORTER, size)
  h, w = resized_shape(height, width, shorter)
  return [View(shorter, ((h - size) // 2, (w - size) // 2, size, size), None, False)]


def ten_crop_views(
    height: int, width: int, size: int = CROP, resize: int | None = None
) -> list[View]:
  """Shorter side 256; corners TL, TR, BL, BR and centre at 224; then the same five mirrored.
  With `resize`: shorter side `resize`, `size` crops, torchvision's geometry (its `TenCrop`)."""
  if resize is None:
    shorter = scaled(CENTER_SHORTER, size)
    h, w = resized_shape(height, width, shorter)
    boxes = _corners_and_center(0, 0, h, w, size)
  else:
    shorter = resize
    h, w = torchvision_resized_shape(height, width, resize)
    boxes = _corners_and_center(0, 0, h, w, size)[:4]
    center = (torchvision_center_offset(h, size), torchvision_center_offset(w, size), size, size)
    boxes.append(center)
  return _with_mirrors([View(shorter, b, None, False) for b in boxes])


def googlenet_144_views(height: int, width: int, size: int = CROP) -> list[View]:
  """GoogLeNet's 144 crops, by scale (256, 288, 320, 352), then square (left/top, centre,
  right/bottom), then crop (TL, TR, BL, BR, centre, whole square resized to 224), then mirror."""
  views = []
  for shorter in (scaled(s, size) for s in GOOGLENET_SHORTER):
    h, w = resized_shape(height, width, shorter)
    side = min(h, w)
    offsets = (0, (max(h, w) - side) // 2, max(h, w) - side)
    for offset in offsets:
      top, left = (0, offset) if w >= h else (offset, 0)
      crops = [
          View(shorter, b, None, False) for b in _corners_and_center(top, left, side, side, size)
      ]
      crops.append(View(shorter, (top, left, side, side), size, False))
      views += _with_mirrors(crops)
  return views


def multiscale_views(height: int, width: int, size: int = CROP) -> list[View]:
  """The whole image at shorter sides 224, 256, 384, 480, 640 (fully convolutional)."""
  views = []
  for shorter in (scaled(s, size) for s in MULTISCALE_SHORTER):
    h, w = resized_shape(height, width, shorter)
    views.append(View(shorter, (0, 0, h, w), None, False))
  return views


# The protocols that take a FixRes-style run's own resize and crop (the module docstring).
RESIZED_PROTOCOLS = ("center", "10crop")
_VIEW_FNS = {
    "single": single_views,
    "center": center_views,
    "10crop": ten_crop_views,
    "144crop": googlenet_144_views,
    "multiscale": multiscale_views,
}
NUM_VIEWS = {"single": 1, "center": 1, "10crop": 10, "144crop": 144, "multiscale": 5}


def views(
    protocol: str, height: int, width: int, size: int = CROP, resize: int | None = None
) -> list[View]:
  """The views `protocol` takes of a `height` × `width` image, for a model trained on `size`
  crops; `resize` (`center` and `10crop` only): a FixRes-style view's shorter side, `size` then
  being its crop."""
  if protocol not in _VIEW_FNS:
    raise ValueError(f"Unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}.")
  if resize is not None:
    if protocol not in RESIZED_PROTOCOLS:
      raise ValueError(f"Protocol {protocol!r} takes no resize; only {RESIZED_PROTOCOLS} do.")
    return _VIEW_FNS[protocol](int(height), int(width), size, resize)
  return _VIEW_FNS[protocol](int(height), int(width), size)


def _scales(protocol: str, size: int, resize: int | None = None) -> tuple[int | None, ...]:
  """The distinct `shorter` values of a protocol's views, in the order `views` lists them."""
  if resize is not None:
    return (resize,)
  return {
      "single": (None,),
      "center": (scaled(CENTER_SHORTER, size),),
      "10crop": (scaled(CENTER_SHORTER, size),),
      "144crop": tuple(scaled(s, size) for s in GOOGLENET_SHORTER),
      "multiscale": tuple(scaled(s, size) for s in MULTISCALE_SHORTER),
  }[protocol]


# ---------------------------------------------------------------------------------------------
# Applying views (TensorFlow, inside the input pipeline)
# ---------------------------------------------------------------------------------------------


def _view_table(protocol: str, size: int, shape, resize: int | None = None) -> np.ndarray:
  """int32 [V, 7]: shorter (0: none), top, left, height, width, out (0: none), flip."""
  rows = [
      (v.shorter or 0, *v.box, v.out or 0, int(v.flip))
      for v in views(protocol, int(shape[0]), int(shape[1]), size, resize)
  ]
  return np.asarray(rows, np.int32)


def _spatial_mean(mean, shape):
  """The mean to subtract from a view of `shape`: a per-pixel mean image only fits S×S views;
  larger or smaller views get its per-channel average."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  mean = tf.convert_to_tensor(mean, tf.float32)
  if mean.shape.rank == 3:
    fits = tf.reduce_all(tf.equal(tf.shape(mean)[:2], shape[:2]))
    return tf.cond(fits, lambda: mean, lambda: tf.reduce_mean(mean, axis=(0, 1)) + tf.zeros(shape))
  return mean


def apply_view(resized, row, mean):
  """One view (a row of the view table) of an image already resized to the view's scale (float32
  on [0, 1]): crop the box, resize it to `out` if asked, subtract the mean, mirror if asked."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  x = tf.image.crop_to_bounding_box(resized, row[1], row[2], row[3], row[4])
  out = row[5]
  x = tf.cond(
      (out > 0) & ((row[3] != out) | (row[4] != out)),
      # The antialiased bilinear resize of `image_ops.resize_shorter_side` and `eval_single`.
      lambda: tf.image.resize(x, tf.stack([out, out]), method="bilinear", antialias=True),
      lambda: x,
  )
  x = x - _spatial_mean(mean, tf.shape(x))
  return tf.cond(row[6] > 0, lambda: tf.image.flip_left_right(x), lambda: x)


def make_view_fn(protocol: str, size: int, mean, resize: int | None = None):
  """uint8 image [H, W, 3] -> float32 views [V, size, size, 3] (fixed-size protocols), or a tuple
  with one [1, h_i, w_i, 3] view per scale (`multiscale`). `resize`: a FixRes-style view's shorter
  side (`center`, `10crop`), resized as torchvision does (`views`)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from incres.data import eval_views, image_ops  # pylint: disable=g-import-not-at-top

  if resize is not None and protocol not in RESIZED_PROTOCOLS:
    raise ValueError(f"Protocol {protocol!r} takes no resize; only {RESIZED_PROTOCOLS} do.")
  scales = tuple(
      dict.fromkeys(_scales(protocol, size, resize))
  )  # Tiny sizes can round two scales together.

  def fn(image):
    if protocol == "single":  # Exactly the training loop's eval for `eval_preprocess="single"`.
      return eval_views.eval_single(image, size=size, mean=mean)[None]
    x = tf.cast(image, tf.float32) / 255.0
    table = tf.numpy_function(
        functools.partial(_view_table, protocol, size, resize=resize),
        [tf.shape(image)],
        tf.int32,
        stateful=False,
    )
    table = tf.ensure_shape(table, [NUM_VIEWS[protocol], 7])
    per_scale = []
    for shorter in scales:
      resized = image_ops.resize_shorter_side(x, shorter, torchvision_shape=resize is not None)
      rows = tf.boolean_mask(table, table[:, 0] == shorter)
      if protocol == "multiscale":
        per_scale.append(apply_view(resized, rows[0], mean)[None])
        continue
      crops = tf.map_fn(
          lambda row, r=resized: tf.ensure_shape(apply_view(r, row, mean), [size, size, 3]),
          rows,
          fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
      )
      per_scale.append(crops)
    if protocol == "multiscale":
      return tuple(per_scale)
    return tf.ensure_shape(tf.concat(per_scale, 0), [NUM_VIEWS[protocol], size, size, 3])

  return fn


# ---------------------------------------------------------------------------------------------
# Data: the raw (undecoded-size) eval images
# ---------------------------------------------------------------------------------------------


class CompiledPerShape:
  """`fn(variables, x)` compiled for each shape of `x`, keeping the `max_size` most recently used.

  `jax.jit` alone keeps every shape's executable for the life of the function. Here each shape
  gets a fresh `jax.jit` of a fresh closure (JAX's own caches are keyed weakly on the function),
  so an evicted executable is freed.
  """

  def __init__(self, fn: Any, max_size: int):
    from collections import OrderedDict  # pylint: disable=g-import-not-at-top

    if max_size < 1:
      raise ValueError(f"max_size must be at least 1, not {max_size}.")
    self._fn, self.max_size = fn, max_size
    self._compiled: OrderedDict = OrderedDict()
    self.compiles = 0

  def __len__(self) -> int:
    return len(self._compiled)

  def __call__(self, variables, x):
    import jax  # pylint: disable=g-import-not-at-top

    key = (tuple(x.shape), str(x.dtype))
    compiled = self._compiled.pop(key, None)
    if compiled is None:
      fn = self._fn

      def fresh(variables, x):
        return fn(variables, x)

      compiled = jax.jit(fresh).lower(variables, x).compile()
      self.compiles += 1
      while len(self._compiled) >= self.max_size:
        self._compiled.popitem(last=False)
    self._compiled[key] = compiled  # Most recently used last.
    return compiled(variables, x)


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Predictions:
  """Softmax probabilities averaged over a protocol's views (and models), one row per example."""

  probs: np.ndarray  # float32 [N, C].
  labels: np.ndarray  # int32 [N].
  protocol: str
  num_views: int  # Views per example (crops × scales × mirrors).
  num_models: int = 1
  names: tuple[str, ...] = ()

  @property
  def num_examples(self) -> int:
    return len(self.labels)


def errors(probs: np.ndarray, labels: np.ndarray, k: int = 5) -> tuple[float, float]:
  """(top-1 error, top-k error) in %, from class scores [N, C] and labels [N]."""
  probs, labels = np.asarray(probs), np.asarray(labels)
  k = min(k, probs.shape[1])
  # Stable order for ties: lower class index first (as `jax.lax.top_k` in the training loop).
  order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
  hit1 = order[:, 0] == labels
  hitk = np.any(order == labels[:, None], axis=1)
  return 100.0 * (1.0 - hit1.mean()), 100.0 * (1.0 - hitk.mean())


def _input_sharding(mesh, rows: int):
  """Rows split over the mesh's devices when they divide evenly, else replicated."""
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top

  return NamedSharding(mesh, P("data") if rows % mesh.size == 0 else P())


def score_split(
    workdir: str,
    protocol: str,
    *,
    dataset: str | None = None,
    eval_split: str | None = None,
    data_dir: str | None = None,
    step: int | None = None,
    averaged: bool | str = False,
    batch_size: int | None = None,
    max_examples: int | None = None,
    max_compiled: int = MULTISCALE_COMPILED,
) -> Predictions:
  """Scores every example of the eval split with `protocol` on the run in `workdir`.

  `dataset`, `eval_split` and `data_dir` override the run's; `batch_size` is in examples (each
  expands to its views; default: the run's eval batch divided by the number of views).
  `max_examples` scores only the first examples (for quick looks; reported counts say so).
  `max_compiled` bounds the compiled functions `multiscale` keeps (one per image shape).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from incres import checkpoint, data, state  # pylint: disable=g-import-not-at-top

  if protocol not in PROTOCOLS:
    raise ValueError(f"Unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}.")
  if jax.process_count() > 1:
    raise NotImplementedError(
        "incres.evaluate scores the whole split in one process; run it on a single host."
    )
  run_config, model, variables = checkpoint.load_variables(workdir, step=step, averaged=averaged)
  config = ml_collections.ConfigDict(run_config.to_dict())
  for key, value in (("dataset", dataset), ("eval_split", eval_split), ("data_dir", data_dir)):
    if value is not None:
      config[key] = value
  from incres import configs  # pylint: disable=g-import-not-at-top

  size, resize = config.image_size, None
  sizes = configs.eval_view_sizes(config)
  if sizes is not None and protocol in RESIZED_PROTOCOLS:  # The run's FixRes-style view.
    resize, size = sizes
  mesh = state.create_mesh()
  num_views = NUM_VIEWS[protocol]
  ds, n = data.eval_images(config)
  if max_examples is not None:
    n = min(n, max_examples)
    ds = ds.take(n)
  # The softmax is averaged over views with the mean of the *training* images (the run's config).
  mean = data.normalization_mean(run_config)
  view_fn = make_view_fn(protocol, size, mean, resize)
  ds = ds.map(lambda image, label: (view_fn(image), label), num_parallel_calls=tf.data.AUTOTUNE)

  def softmax_fn(variables, x):
    logits, _ = model.apply(variables, x, train=False)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

  softmax = jax.jit(softmax_fn)
  probs, labels = [], []
  if protocol == "multiscale":
    # Every image and scale has its own shape: one image at a time, a bounded set of compiles.
    per_shape = CompiledPerShape(softmax_fn, max_compiled)
    for per_scale, label in ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
      p = [
          np.asarray(per_shape(variables, jax.device_put(v, _input_sharding(mesh, 1))))
          for v in per_scale
      ]
      probs.append(np.mean(np.concatenate(p), axis=0, keepdims=True))
      labels.append(np.asarray(label)[None])
  else:
    per_batch = batch_size or max(1, config.eval_batch_size // num_views)
    for batch, label in ds.batch(per_batch).prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
      b = len(label)
      if b < per_batch:  # Pad the last batch to the compiled shape; padded rows are dropped.
        batch = np.concatenate([batch, np.zeros((per_batch - b, *batch.shape[1:]), batch.dtype)])
      x = batch.reshape(per_batch * num_views, *batch.shape[2:])
      p = np.asarray(softmax(variables, jax.device_put(x, _input_sharding(mesh, len(x)))))
      probs.append(p.reshape(per_batch, num_views, -1).mean(axis=1)[:b])
      labels.append(label)
  probs, labels = np.concatenate(probs), np.concatenate(labels).astype(np.int32)
  if len(labels) != n:
    raise RuntimeError(f"Scored {len(labels)} examples of {n}: the eval pipeline lost some.")
  return Predictions(probs, labels, protocol, num_views, 1, (workdir,))


def ensemble(predictions: Sequence[Predictions]) -> Predictions:
  """Averages the softmax outputs of several models over the same examples."""
  first = predictions[0]
  for p in predictions[1:]:
    if p.labels.shape != first.labels.shape or np.any(p.labels != first.labels):
      raise ValueError("Ensembled runs must be evaluated on the same examples in the same order.")
    if p.probs.shape != first.probs.shape:
      raise ValueError(
          f"Ensembled runs disagree on the classes: {p.probs.shape} vs {first.probs.shape}."
      )
  return Predictions(
      probs=np.mean([p.probs for p in predictions], axis=0),
      labels=first.labels,
      protocol=first.protocol,
      num_views=first.num_views,
      num_models=sum(p.num_models for p in predictions),
      names=tuple(n for p in predictions for n in p.names),
  )


def summarize(p: Predictions) -> dict[str, Any]:
  """Top-1/top-5 error (%), examples, views per example and models, as a flat dict."""
  top1, top5 = errors(p.probs, p.labels)
  return {
      "protocol": p.protocol,
      "models": p.num_models,
      "top1_err": top1,
      "top5_err": top5,
      "examples": p.num_examples,
      "views_per_example": p.num_views,
      "crops": p.num_examples * p.num_views * p.num_models,
      "workdirs": list(p.names),
  }


def evaluate_workdirs(workdirs: Sequence[str], protocol: str, **kwargs) -> list[dict[str, Any]]:
  """One summary per workdir, and for several workdirs one more for their ensemble (last)."""
  predictions = [score_split(w, protocol, **kwargs) for w in workdirs]
  rows = [summarize(p) for p in predictions]
  if len(predictions) > 1:
    rows.append(summarize(ensemble(predictions)))
  return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
  """A Markdown table of `summarize` rows."""
  lines = [
      "| run | protocol | top-1 err % | top-5 err % | examples | views/example | models |",
      "|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    name = r["workdirs"][0] if r["models"] == 1 else f"ensemble of {r['models']}"
    lines.append(
        f"| {name} | {r['protocol']} | {r['top1_err']:.2f} | {r['top5_err']:.2f} |"
        f" {r['examples']} | {r['views_per_example']} | {r['models']} |"
    )
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
  args = flags.FlagValues()
  flags.DEFINE_multi_string(
      "workdir", None, "A run; repeat for an ensemble.", required=True, flag_values=args
  )
  flags.DEFINE_enum("protocol", "center", PROTOCOLS, "The test protocol.", flag_values=args)
  flags.DEFINE_string("dataset", None, "Override the run's dataset.", flag_values=args)
  flags.DEFINE_string("eval_split", None, "Override the run's eval split.", flag_values=args)
  flags.DEFINE_string("data_dir", None, "Override the run's data_dir.", flag_values=args)
  flags.DEFINE_integer("step", None, "Checkpoint step (default: newest).", flag_values=args)
  flags.DEFINE_string(
      "averaged", "false", "false, true, ema or polyak parameters.", flag_values=args
  )
  flags.DEFINE_integer("batch_size", None, "Examples per batch.", flag_values=args)
  flags.DEFINE_integer(
      "max_examples", None, "Score only the first examples (a quick look).", flag_values=args
  )
  flags.DEFINE_string("json", None, "Also write the results here.", flag_values=args)
  cli.parse(
      args,
      argv,
      prog="python -m incres.evaluate",
      description="The papers' test protocols (and ensembles).",
  )
  averaged = {"false": False, "true": True}.get(args.averaged.lower(), args.averaged)
  rows = evaluate_workdirs(
      args.workdir,
      args.protocol,
      dataset=args.dataset,
      eval_split=args.eval_split,
      data_dir=args.data_dir,
      step=args.step,
      averaged=averaged,
      batch_size=args.batch_size,
      max_examples=args.max_examples,
  )
  print(format_table(rows))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=2)
  return rows


if __name__ == "__main__":
  from incres import runtime  # pylint: disable=g-import-not-at-top

  runtime.run_command_line(main)  # Quiet start-up; a user error: its message, exit 2, no traceback.
