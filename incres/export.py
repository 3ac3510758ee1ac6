"""Export a trained or converted run for serving: StableHLO, a TensorFlow SavedModel, torchvision.

  python -m incres.export --checkpoint=runs/quickstart --out=exported
  python -m incres.export --checkpoint=runs/tv_resnet50 --out=exported_r50 \\
      --format=stablehlo,saved_model,torch  # torch: only for a model torchvision has.

`--checkpoint` is a workdir (newest checkpoint) or `<workdir>/checkpoints/<step>`, as written by
`launch.py` or `python -m incres.convert_torch`. `--out` must not exist or be an empty directory;
nothing is ever overwritten (the files are written next to it and moved into place when complete).
The run's averaged parameters (EMA, else Polyak) are exported when it kept them, as `incres.predict`
uses them; `--averaged=false` exports the raw ones (`true`, `ema`, `polyak` insist on an average).

What the exported StableHLO and SavedModel functions take and return:
  images: float32 [batch, S, S, 3], NHWC, RGB, values in [0, 1], any batch size, where S is the
    side of the run's evaluation view (`incres.data.eval_image_size`: `config.image_size`, or a
    FixRes-style run's `eval_crop_size`), already in that view (`config.eval_preprocess`: "single"
    resizes the image to S x S, "center" resizes the shorter side to 8/7 S and crops the central
    S x S, or, where the run sets `eval_resize_size`/`eval_crop_size`, resizes it to the
    `resize` and crops the central `crop` that `export.json`'s input names, as torchvision's
    `Resize` and `CenterCrop` do; `incres.data.preprocess_for_eval` without its normalisation).
  -> logits: float32 [batch, num_classes] (softmax them for probabilities).
The run's input normalisation is applied inside (`config.normalize`: the per-pixel mean image of
the training set for CIFAR-style runs, its per-channel average for a view of another size, the
ImageNet channel mean, or torchvision's mean and std), so a server feeds plain [0, 1] pixels.
`export.json` beside them records the input shape, dtype, view (with a FixRes-style view's
`resize` and `crop`) and normalisation, the class count and names, where each file is, and
(`serialization`) the versions a consumer needs: jax and jaxlib, and for each of stablehlo and
saved_model its `stablehlo_target_version` (the StableHLO/VHLO version the portable artifact is
serialized for: a consumer of that version or newer reads it) and its `calling_convention_version`
(jax.export's); saved_model adds the TensorFlow that wrote it and the StableHLO version that
TensorFlow reads.

The formats (`--format`, comma-separated; default stablehlo,saved_model):
  stablehlo    `model.stablehlo`: a serialized `jax.export.Exported` (StableHLO plus its calling
               convention; the weights are constants inside), lowered for CPU, CUDA and TPU
               (`--platforms`). Load with `jax.export.deserialize(data).call(images)`, or hand its
               `mlir_module()` to any StableHLO consumer (IREE, XLA).
  saved_model  `saved_model/`: a TensorFlow SavedModel (jax2tf native serialization, the weights
               as variables) with a `serving_default` signature `images -> {"logits"}`, for TF
               Serving, TensorFlow or converters that read SavedModels. Its StableHLO is
               serialized for the older of jax's default target and the StableHLO of the
               installed TensorFlow (jax 0.12.1 with TF 2.21: 1.13.7, not jax's 1.22.0, which TF
               2.21 cannot read), so it serves in that TensorFlow and any newer one; export with
               the TensorFlow (or older) that will serve it.
  torch        `model.pth`: a torchvision `state_dict` for the models `incres.convert_torch`
               imports: ResNet18/34, ResNet50/101/152 with `stride_in_1x1=False` (torchvision's
               v1.5), GoogLeNetBN and InceptionV3, each with its default widths and stem
               (anything else is refused: torchvision would compute something else with its
               weights). It loads with
               `load_state_dict(strict=True)` into the torchvision model `export.json` names,
               which takes NCHW images normalised as `export.json` says (torch applies no
               normalisation inside). Needs torch and torchvision.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import json
import os
import re
import shutil
import sys
import tempfile
from typing import Any, Callable, Sequence

from absl import flags
import numpy as np

from incres import cli, errors

FORMATS = ("stablehlo", "saved_model", "torch")
DEFAULT_FORMATS = ("stablehlo", "saved_model")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")
SIDECAR = "export.json"
FILES = {"stablehlo": "model.stablehlo", "saved_model": "saved_model", "torch": "model.pth"}

# Model fields that change no array and no inference output (initialisation, training-only
# behaviour, compute dtype), so they may differ from the torchvision twin's.
_FREE_FIELDS = (
    "parent",
    "name",
    "num_classes",
    "dtype",
    "zero_init_last_bn",
    "bn_momentum",
    "frozen_bn",
    "dropout_rate",
    "drop_path_rate",
    "aux_heads",
    "transform_input",
    "conv_init",
)


class ExportError(errors.UserError, ValueError):
  """A user error: the run or the request cannot be exported as asked (message says why)."""


@dataclasses.dataclass(frozen=True)
class Normalization:
  """`(images - mean) / std`, broadcast over [batch, S, S, 3]; std None means 1."""

  mode: str  # incres.data.normalization: pixel_mean, channel_mean, mean_std or none.
  mean: np.ndarray  # [3] or (pixel_mean) [S, S, 3], on the [0, 1] scale.
  std: np.ndarray | None  # [3] or None.

  def __call__(self, images):
    x = images - self.mean
    return x if self.std is None else x / self.std


def normalization(config) -> Normalization:
  """The run's input normalisation as numpy constants (the per-pixel mean reads the train split)."""
  from incres import data  # pylint: disable=g-import-not-at-top
  from incres.data import imagenet_stats  # pylint: disable=g-import-not-at-top

  mode = data.normalization(config)
  std = np.asarray(imagenet_stats.IMAGENET_STD_RGB, np.float32) if mode == "mean_std" else None
  try:
    mean = np.asarray(data.eval_mean(config), np.float32)  # The evaluation view's.
  except Exception as e:  # pylint: disable=broad-except  (a missing dataset, said clearly below)
    raise ExportError(
        f"The run normalises its inputs by the per-pixel mean of {config.dataset!r}'s"
        f" {config.train_split!r} split, which could not be computed here ({type(e).__name__}:"
        f" {' '.join(str(e).split())}). Export on a machine where that dataset is prepared (config.data_dir"
        f" {config.data_dir!r})."
    ) from e
  return Normalization(mode, mean, std)


def _fixres_view(config) -> dict[str, int]:
  """`{"resize": ..., "crop": ...}` of a FixRes-style evaluation view, else nothing."""
  from incres import configs  # pylint: disable=g-import-not-at-top

  sizes = configs.eval_view_sizes(config)
  return {} if sizes is None else {"resize": sizes[0], "crop": sizes[1]}


def _pick_average(config, averaged: bool | str | None) -> bool | str:
  """What `load_variables(averaged=...)` gets: the run's kept average, or False (raw)."""
  kept = [
      k
      for k, on in (("ema", config.get("ema_decay") is not None), ("polyak", config.get("polyak")))
      if on
  ]
  if averaged is None:
    return kept[0] if kept else False
  if averaged is False:
    return False
  wanted = kept if averaged is True else [averaged]
  if averaged not in (True, "ema", "polyak"):
    raise ExportError(f"--averaged={averaged!r}: use true, false, ema or polyak.")
  if not wanted or wanted[0] not in kept:
    raise ExportError(
        f"--averaged={str(averaged).lower()}: the run kept no"
        f" {'average' if averaged is True else averaged + ' average'} of its parameters (kept:"
        f" {', '.join(kept) or 'none'}). Pass --averaged=false to export the raw parameters."
    )
  return wanted[0]


def _latest_step(workdir: str) -> int:
  from incres import checkpoint  # pylint: disable=g-import-not-at-top

  directory = checkpoint.checkpoint_dir(workdir)
  steps = [int(d) for d in os.listdir(directory) if d.isdigit()] if os.path.isdir(directory) else []
  if not steps:
    raise ExportError(
        f"{workdir} holds no checkpoint ({directory} has no step folders). Point --checkpoint at"
        " a training run's workdir, a <workdir>/checkpoints/<step> folder, or the --out folder of"
        " `python -m incres.convert_torch`."
    )
  return max(steps)


# --- torchvision ---------------------------------------------------------------------------------


def _torch_modules():
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import torchvision  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ExportError(
        f"--format=torch needs torch and torchvision ({e}): pip install torch torchvision (the"
        " CPU builds are enough), or leave torch out of --format."
    ) from e
  return torch, torchvision


def torchvision_twin(config) -> tuple[str, dict[str, Any]]:
  """`(torchvision model name, constructor kwargs)` of the run's model; ExportError if none."""
  from incres import convert_torch, models, state  # pylint: disable=g-import-not-at-top

  names = {
      ours: tv
      for tv, ours in convert_torch.TORCHVISION_MODELS.items()
      if tv not in convert_torch.TIMM_MODELS  # timm's Inceptions: no torchvision twin.
  }
  if config.model not in names:
    raise ExportError(
        f"torchvision has no twin of {config.model}: --format=torch writes only the models"
        f" incres.convert_torch imports ({', '.join(sorted(names))}). Export this run as"
        " stablehlo or saved_model instead."
    )
  name = names[config.model]
  if convert_torch.is_timm_resnetv2(name) or name in convert_torch.TIMM_RESNETS:
    raise ExportError(
        f"{config.model} is imported from timm's {name}, which torchvision does not have:"
        " --format=torch writes torchvision state_dicts only. Export it as stablehlo or"
        " saved_model instead."
    )
  model = state.create_model(config)
  if name in convert_torch.TRANSFORM_INPUT_MODELS:  # googlenet, inception_v3.
    reference = models.get_model(config.model, num_classes=model.num_classes)
    kwargs = {
        "num_classes": model.num_classes,
        "aux_logits": bool(model.aux_heads),
        "transform_input": bool(model.transform_input),
        "init_weights": False,
    }
  else:
    reference = models.get_model(config.model, num_classes=model.num_classes, stride_in_1x1=False)
    kwargs = {"num_classes": model.num_classes}
  free = _FREE_FIELDS + (("stride_in_1x1",) if name in ("resnet18", "resnet34") else ())
  differ = [
      f"{f.name}={getattr(model, f.name)!r} (torchvision's: {getattr(reference, f.name)!r})"
      for f in dataclasses.fields(reference)
      if f.name not in free and getattr(model, f.name) != getattr(reference, f.name)
  ]
  if differ:
    raise ExportError(
        f"This {config.model} differs from torchvision's {name} in {', '.join(differ)}, so its"
        " weights would compute something else in torchvision (stride_in_1x1=True is the paper's"
        " ResNet v1; torchvision's is v1.5). Export it as stablehlo or saved_model instead."
    )
  return name, kwargs


def torch_state_dict(config, variables) -> tuple[collections.OrderedDict, str]:
  """The run's variables as torchvision's `state_dict` and the constructor call that takes it.

  The inverse of `incres.convert_torch.convert`, through the same key mapping: every tensor of
  torchvision's model is looked up in `variables` (`num_batches_tracked`, which has no incres twin,
  keeps torchvision's initial 0), every incres variable must be used once, and the result is
  loaded into torchvision's model with `strict=True` before it is returned.
  """
  from incres import convert_torch, state  # pylint: disable=g-import-not-at-top

  torch, torchvision = _torch_modules()
  name, kwargs = torchvision_twin(config)
  template = getattr(torchvision.models, name)(weights=None, **kwargs).state_dict()
  flat = {state.path_keys(path): leaf for path, leaf in _flatten_with_path(variables)}
  state_dict = collections.OrderedDict()
  for key, ref in template.items():
    where = convert_torch.incres_variable(key, name, ref.ndim)
    if where is None:
      state_dict[key] = ref.clone()
      continue
    collection, path = where
    value = flat.pop((collection, *path), None)
    if value is None:
      raise ExportError(f"The run has no {collection}/{'/'.join(path)} for torchvision's {key}.")
    value = convert_torch.to_torch_layout(np.asarray(value, np.float32), path)
    if value.shape != tuple(ref.shape):
      raise ExportError(
          f"{collection}/{'/'.join(path)} has shape {value.shape} in torch's layout; torchvision's"
          f" {key} has {tuple(ref.shape)}."
      )
    state_dict[key] = torch.from_numpy(np.array(value, np.float32))  # A writable copy.
  if flat:
    raise ExportError(
        f"torchvision's {name} has no tensor for {len(flat)} of the run's variables (first:"
        f" {'/'.join(next(iter(flat)))})."
    )
  getattr(torchvision.models, name)(weights=None, **kwargs).load_state_dict(state_dict, strict=True)
  call = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k != "init_weights")
  return state_dict, f"torchvision.models.{name}({call})"


def _flatten_with_path(tree):
  import jax  # pylint: disable=g-import-not-at-top

  return jax.tree_util.tree_flatten_with_path(tree)[0]


# --- JAX, StableHLO and TensorFlow ---------------------------------------------------------------


def logits_fn(model, norm: Normalization) -> Callable[[Any, Any], Any]:
  """`(variables, images in [0, 1]) -> float32 logits`: the function every format exports."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def fn(variables, images):
    logits = model.apply(variables, norm(images), train=False)[0]
    return jnp.asarray(logits, jnp.float32)

  return fn


def stablehlo_version(artifact: bytes) -> str:
  """The StableHLO (VHLO) version a portable artifact was serialized for, e.g. "1.13.7"."""
  # serializePortableArtifact writes the target version as the bytecode's producer string
  # ("StableHLO_v1.13.7"); a consumer is guaranteed to read artifacts targeting its own version or
  # an older one. No Python API reads it back, so it is read from the bytes.
  found = re.search(rb"StableHLO_v(\d+\.\d+\.\d+)", artifact)
  if found is None:
    raise ExportError("The serialized module is not a StableHLO portable artifact.")
  return found.group(1).decode()


def export_stablehlo(
    fn, variables, image_size: int, platforms: Sequence[str]
) -> tuple[bytes, dict[str, Any]]:
  """Serialized `jax.export.Exported` of `fn` (variables as constants, batch symbolic); versions."""
  import jax  # pylint: disable=g-import-not-at-top

  (batch,) = jax.export.symbolic_shape("batch")
  spec = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), np.float32)
  exported = jax.export.export(jax.jit(functools.partial(fn, variables)), platforms=platforms)(spec)
  versions = {
      "calling_convention_version": exported.calling_convention_version,
      "stablehlo_target_version": stablehlo_version(exported.mlir_module_serialized),
  }
  return exported.serialize(), versions


def _tf_stablehlo_version() -> str | None:
  """The StableHLO version the installed TensorFlow's XlaCallModule reads, None if it won't say."""
  try:
    from tensorflow.compiler.mlir.stablehlo import stablehlo  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return stablehlo.get_current_version()


def saved_model_target(tf_version: str | None) -> str:
  """The StableHLO version SavedModels are serialized for: jax's own choice or TF's, the older."""
  from jax.extend.mlir.dialects import stablehlo  # pylint: disable=g-import-not-at-top

  requirement = stablehlo.StablehloCompatibilityRequirement
  # jax.export targets a StableHLO 4 weeks old (jax 0.12.1: 1.22.0), but TensorFlow ships an older
  # one (TF 2.21: 1.13.7), and a consumer is only guaranteed to read artifacts of its own version
  # or older. Without TF's version (a TF that does not expose it), 12 weeks old is the guess.
  jax_target = stablehlo.get_version_from_compatibility_requirement(requirement.WEEK_4)
  if tf_version is None:
    return stablehlo.get_version_from_compatibility_requirement(requirement.WEEK_12)
  return stablehlo.get_smaller_version(jax_target, tf_version)


@contextlib.contextmanager
def _serialize_stablehlo_for(target: str):
  """Makes jax.export (so jax2tf) serialize its StableHLO for `target`, not jax's default."""
  # jax.export has no option for the serialization target: it always calls
  # `_module_to_bytecode`, which targets WEEK_4. jax2tf embeds those bytes in the XlaCallModule op
  # as they are, so this re-serializes them for `target` there, through the public StableHLO
  # bindings: VHLO ops newer than `target` are downgraded (jax 0.12's shape assertion
  # `vhlo.custom_call_v2` becomes `custom_call_v1`, which TF 2.21 reads) or refused with an error
  # if the module needs a newer feature. Not thread-safe: one export at a time per process. If a
  # jax drops the hook, nothing is patched and export_saved_model's version check decides.
  from jax._src.export import _export  # pylint: disable=g-import-not-at-top
  from jax.extend.mlir.dialects import stablehlo  # pylint: disable=g-import-not-at-top

  original = getattr(_export, "_module_to_bytecode", None)
  if original is None:
    yield
    return

  def for_target(module):
    module = stablehlo.deserialize_portable_artifact_str(original(module))
    return stablehlo.serialize_portable_artifact_str(module, target)

  _export._module_to_bytecode = for_target  # pylint: disable=protected-access
  try:
    yield
  finally:
    _export._module_to_bytecode = original  # pylint: disable=protected-access


def export_saved_model(
    fn, variables, image_size: int, path: str, platforms: Sequence[str]
) -> dict[str, Any]:
  """Writes a SavedModel whose `serving_default` maps float32 `images` to `{"logits"}`; versions."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.extend.mlir.dialects import stablehlo  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top

  # The weights are variables, not graph constants: a GraphDef holds at most 2 GB.
  tf_variables = tf.nest.map_structure(
      lambda x: tf.Variable(np.asarray(x), trainable=False), jax.tree.map(np.asarray, variables)
  )
  converted = jax2tf.convert(
      fn,
      polymorphic_shapes=[None, f"(batch, {image_size}, {image_size}, 3)"],
      with_gradient=False,
      native_serialization_platforms=tuple(platforms),
  )
  spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="images")

  @tf.function(input_signature=[spec], autograph=False)
  def serve(images):
    return {"logits": converted(tf_variables, images)}

  module = tf.Module()
  module.weights = tf.nest.flatten(tf_variables)  # Tracked, so that they are saved.
  module.serve = serve
  tf_version = _tf_stablehlo_version()
  with _serialize_stablehlo_for(saved_model_target(tf_version)):
    # jax2tf exports when tf.function traces, and saving traces again.
    tf.saved_model.save(module, path, signatures={"serving_default": serve})
  # What TF Serving will run, read back from the XlaCallModule ops in the saved graph.
  calls = _saved_xla_call_modules(path)
  written = sorted({stablehlo_version(call.attr["module"].s) for call in calls})
  versions = sorted({call.attr["version"].i for call in calls})
  newer = [v for v in written if tf_version and stablehlo.get_smaller_version(v, tf_version) != v]
  if len(written) != 1 or len(versions) != 1 or newer:
    raise ExportError(
        f"jax {jax.__version__} serialized the SavedModel's StableHLO for version(s)"
        f" {', '.join(written) or '(none)'}, calling convention {versions}, but TensorFlow"
        f" {tf.__version__} reads StableHLO {tf_version}: it could not serve it. Install the"
        " TensorFlow that matches this jax, or export with an older jax."
    )
  return {
      "calling_convention_version": versions[0],
      "stablehlo_target_version": written[0],
      "tensorflow": tf.__version__,
      "tensorflow_stablehlo_version": tf_version,
  }


def _saved_xla_call_modules(path: str) -> list[Any]:
  """The XlaCallModule nodes (NodeDefs) of the functions in the SavedModel at `path`."""
  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top

  saved = saved_model_pb2.SavedModel()
  with open(os.path.join(path, "saved_model.pb"), "rb") as f:
    saved.ParseFromString(f.read())
  return [
      node
      for graph in saved.meta_graphs
      for function in graph.graph_def.library.function
      for node in function.node_def
      if node.op == "XlaCallModule"
  ]


# --- The whole export ----------------------------------------------------------------------------


def _check_out(out: str) -> str:
  out = os.path.abspath(os.path.expanduser(out))
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise ExportError(
        f"--out={out} already exists and is not an empty directory; export never overwrites"
        " anything. Choose a new --out (or move that one away)."
    )
  return out


def _parse_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
  if isinstance(formats, str):
    formats = [f.strip() for f in formats.split(",") if f.strip()]
  unknown = [f for f in formats if f not in FORMATS]
  if unknown or not formats:
    raise ExportError(
        f"Unknown --format {', '.join(unknown) or '(empty)'}: choose one or more of"
        f" {', '.join(FORMATS)}, comma-separated (e.g. --format=stablehlo,saved_model)."
    )
  return tuple(dict.fromkeys(formats))


def export(
    checkpoint: str,
    out: str,
    formats: str | Sequence[str] = DEFAULT_FORMATS,
    *,
    averaged: bool | str | None = None,
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
) -> dict[str, Any]:
  """Exports a run; returns what `<out>/export.json` holds. Raises ExportError for user errors."""
  formats = _parse_formats(formats)
  out = _check_out(out)
  bad = [p for p in platforms if p not in PLATFORMS]
  if bad or not platforms:
    raise ExportError(
        f"Unknown --platforms {', '.join(bad) or '(empty)'}: choose from {', '.join(PLATFORMS)}."
    )
  if "torch" in formats:
    _torch_modules()  # Before TensorFlow: torch's triton must be imported first (see conftest).
  # pylint: disable=g-import-not-at-top
  import incres
  from incres import checkpoint as ckpt
  from incres import data, finetune, predict
  # pylint: enable=g-import-not-at-top

  try:
    workdir, step = finetune.resolve_source(checkpoint)
  except FileNotFoundError as e:
    raise ExportError(str(e).replace("config.init_from", "--checkpoint")) from e
  step = _latest_step(workdir) if step is None else step
  try:
    config = ckpt.load_config(workdir, step)
  except FileNotFoundError as e:
    raise ExportError(f"{e} Point --checkpoint at an existing step.") from e
  except Exception as e:  # pylint: disable=broad-except  (orbax's errors for unreadable files)
    raise ExportError(_unreadable(workdir, step, e)) from e
  if "torch" in formats:
    torchvision_twin(config)  # Refuse before the slow work.
  average = _pick_average(config, averaged)
  norm = normalization(config)
  try:
    config, model, variables = ckpt.load_variables(workdir, step, averaged=average)
  except Exception as e:  # pylint: disable=broad-except
    raise ExportError(_unreadable(workdir, step, e)) from e
  size = int(data.eval_image_size(config))  # The evaluation view's side.
  fn = logits_fn(model, norm)

  info: dict[str, Any] = {
      "incres_version": incres.__version__,
      "source": {
          "workdir": workdir,
          "step": step,
          "model": config.model,
          "model_kwargs": config.model_kwargs.to_dict(),
          "dataset": config.dataset,
      },
      "parameters": average or "raw",
      "input": {
          "name": "images",
          "shape": [None, size, size, 3],
          "dtype": "float32",
          "layout": "NHWC",
          "channels": "RGB",
          "range": [0.0, 1.0],
          "view": config.eval_preprocess,
          **_fixres_view(config),
          "normalization": {"mode": norm.mode, "applied_inside": ["stablehlo", "saved_model"]},
      },
      "output": {"name": "logits", "shape": [None, int(config.num_classes)], "dtype": "float32"},
      "num_classes": int(config.num_classes),
      "label_names": list(predict.label_names(config)),
      "platforms": list(platforms),
      "files": {},
  }
  if {"stablehlo", "saved_model"} & set(formats):
    import jax  # pylint: disable=g-import-not-at-top
    import jaxlib  # pylint: disable=g-import-not-at-top

    # Each format's versions are added as it is written.
    info["serialization"] = {"jax": jax.__version__, "jaxlib": jaxlib.__version__}
  norm_info = info["input"]["normalization"]
  if norm.mean.ndim == 1:
    norm_info["mean"] = norm.mean.tolist()
  else:
    norm_info["mean"] = "pixel_mean.npy"  # An [S, S, 3] image: a file, not 3,072+ JSON numbers.
  norm_info["std"] = None if norm.std is None else norm.std.tolist()

  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-", dir=parent)
  try:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0o700 would hide the export from other users.
    if norm.mean.ndim > 1:
      np.save(os.path.join(tmp, "pixel_mean.npy"), norm.mean)
    if "torch" in formats:
      torch, _ = _torch_modules()
      state_dict, constructor = torch_state_dict(config, variables)
      torch.save(state_dict, os.path.join(tmp, FILES["torch"]))
      info["torch"] = {
          "model": constructor,
          "input": "NCHW float32 [0, 1] images normalised as input.normalization says (torch does"
          " not normalise inside), in eval mode",
      }
    if "stablehlo" in formats:
      serialized, info["serialization"]["stablehlo"] = export_stablehlo(
          fn, variables, size, platforms
      )
      with open(os.path.join(tmp, FILES["stablehlo"]), "wb") as f:
        f.write(serialized)
    if "saved_model" in formats:
      info["serialization"]["saved_model"] = export_saved_model(
          fn, variables, size, os.path.join(tmp, FILES["saved_model"]), platforms
      )
    info["files"] = {f: FILES[f] for f in formats}
    with open(os.path.join(tmp, SIDECAR), "w") as f:
      json.dump(info, f, indent=2)
      f.write("\n")
    os.rename(tmp, out)  # Atomic; replaces `out` only if it is an empty directory.
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return info


def _unreadable(workdir: str, step: int, error: Exception) -> str:
  return (
      f"Could not read checkpoint {step} of {workdir} ({type(error).__name__}:"
      f" {' '.join(str(error).split())}): it is"
      " damaged or was not written by incres. Nothing was written; export another step"
      " (--checkpoint=<workdir>/checkpoints/<step>) or another run."
  )


def main(argv: Sequence[str] | None = None) -> int:
  args = flags.FlagValues()
  flags.DEFINE_string(
      "checkpoint",
      None,
      "A workdir or <workdir>/checkpoints/<step>.",
      required=True,
      flag_values=args,
  )
  flags.DEFINE_string(
      "out", None, "A new (or empty) directory to write.", required=True, flag_values=args
  )
  flags.DEFINE_string(
      "format",
      ",".join(DEFAULT_FORMATS),
      f"Comma-separated: {', '.join(FORMATS)}.",
      flag_values=args,
  )
  flags.DEFINE_enum(
      "averaged",
      None,
      ["true", "false", "ema", "polyak"],
      "The run's average when it kept one (default), false (raw), true, ema or polyak.",
      case_sensitive=False,
      flag_values=args,
  )
  flags.DEFINE_string(
      "platforms",
      ",".join(DEFAULT_PLATFORMS),
      "Platforms the StableHLO/SavedModel are lowered for (cpu, cuda, rocm, tpu).",
      flag_values=args,
  )
  cli.parse(
      args,
      argv,
      prog="python -m incres.export",
      description="Write a trained run as StableHLO, a TensorFlow SavedModel and/or a torchvision"
      " state_dict (see the module docstring for what the exported functions take).",
  )
  averaged = {"true": True, "false": False}.get(args.averaged, args.averaged)
  platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
  try:
    info = export(args.checkpoint, args.out, args.format, averaged=averaged, platforms=platforms)
  except errors.UserError as e:  # ExportError, a missing or damaged checkpoint.
    print(errors.message(e), file=sys.stderr)
    return 2
  out = os.path.abspath(os.path.expanduser(args.out))
  print(
      f"Wrote {', '.join(info['files'])} of {info['source']['model']} (step"
      f" {info['source']['step']}, {info['parameters']} parameters) to {out}; {SIDECAR} there"
      f" describes the input: float32 [batch, {info['input']['shape'][1]},"
      f" {info['input']['shape'][2]}, 3] in [0, 1], {info['input']['normalization']['mode']}"
      " normalisation applied inside."
  )
  return 0


if __name__ == "__main__":
  from incres import runtime  # pylint: disable=g-import-not-at-top

  runtime.run_command_line(main)  # Quiet start-up; a user error: its message, exit 2, no traceback.
