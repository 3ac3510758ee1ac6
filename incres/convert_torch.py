"""Import torchvision's ImageNet weights: `convert(state_dict, name) -> (model, variables)`.

Supported: torchvision's `resnet18/34/50/101/152` (to our ResNets with torchvision's "v1.5" strides,
`stride_in_1x1=False`), `resnext50_32x4d`, `resnext101_32x8d`, `resnext101_64x4d`,
`wide_resnet50_2` and `wide_resnet101_2` (to `ResNeXt50_32x4d` ... `WideResNet101_2`, the same
`ResNet` class with grouped or widened bottlenecks: the same tensor names), timm's (not
torchvision's) `resnet50c`, `resnet50d` and `resnet101d` (Bag of Tricks' ResNet-C/D, to
`ResNet50C`, `ResNet50D`, `ResNet101D`: timm's deep stem `conv1.0/1/3/4/6` + `bn1` becomes
`stem_conv1/stem_bn1/.../stem_conv3/stem_bn3`, and its ResNet-D shortcut `downsample.1/2` (after
the pool at `downsample.0`) `proj_conv/proj_bn`), `googlenet` (to `GoogLeNetBN`, torchvision's structure) and `inception_v3`
(to `InceptionV3`, whose layer names are torchvision's lower-cased). The converted
model's `model.apply(variables, nhwc_images, train=False)[0]` equals torchvision's logits on the
same NCHW images (tested to 1e-4 against torchvision itself). timm's `resnetv2_18/34/50/101/152`
(pre-activation ResNets, He et al. 2016) convert to `PreActResNet*` in timm's layout
(`stem_norm=False, stride_in_1x1=False`; see incres/models/preact_resnet.py), tested against timm
itself; timm's resnetv2 weights expect inputs scaled by mean = std = 0.5, which
`transform_input=True` (the default for them) builds in, as for GoogLeNet below.
Also timm's (not torchvision's)
`inception_v4` and `inception_resnet_v2` (to `InceptionV4Timm` / `InceptionResNetV2Timm`, the
TF-slim structures timm ports; tested against timm itself); their weights expect [-1, 1] inputs,
which `transform_input=True` (the default for them too) computes from ImageNet-normalised images.

torchvision's pretrained GoogLeNet was ported from TensorFlow and expects its `transform_input`
step, which maps ImageNet-normalised inputs ((x - mean) / std, per channel) to the [-1, 1] scaling
the TensorFlow weights were trained on. `convert(..., transform_input=True)` (the default for
`googlenet`, as torchvision does when it loads those weights) builds the step into the converted
model (`GoogLeNet.transform_input`), so both take the same ImageNet-normalised images; pass False
for a torchvision GoogLeNet built with `transform_input=False`. torchvision's `inception_v3` was
ported the same way and is treated the same way (`InceptionV3.transform_input`, default True here as
in torchvision's pretrained weights; `--no_transform_input` for a net trained without it). incres's
own Inception-v3 recipe trains without the step, on channel-mean-subtracted images.

Command line (no network: you supply the file):
  python -m incres.convert_torch --model=resnet50 --weights=resnet50-0676ba61.pth --out=DIR
writes a new incres run directory (checkpoint step 0 and `config.json`) that `config.init_from`,
`incres.predict` and `incres.evaluate` accept, then prints the commands that use it. `DIR` must be
new or empty: the converter never saves into an existing run (a save there would make orbax's
keep-the-newest policy delete the run's own checkpoints). `--overwrite` replaces `DIR` atomically:
the run is written into a temporary sibling, read back array by array, and only then swapped in;
the old contents are deleted after the swap. The `.pth` is read with `torch.load(...,
weights_only=True)`: a file holding pickled Python objects beyond tensors is refused unread.
User errors (unknown model, missing or unreadable file, weights of another model, an occupied
`DIR`) print one paragraph and exit with status 2.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import secrets
import shlex
import shutil
import sys
from typing import Any, Mapping

import jax
import numpy as np

from incres import errors
from incres import models
from incres.models import resnet

TORCHVISION_MODELS = {
    "resnet18": "ResNet18",
    "resnet34": "ResNet34",
    "resnet50": "ResNet50",
    "resnet101": "ResNet101",
    "resnet152": "ResNet152",
    "googlenet": "GoogLeNetBN",
    "inception_v3": "InceptionV3",
    # --- timm's pre-activation ResNets (He et al. 2016): `convert_timm_resnetv2` ---
    "resnetv2_18": "PreActResNet18",
    "resnetv2_34": "PreActResNet34",
    "resnetv2_50": "PreActResNet50",
    "resnetv2_101": "PreActResNet101",
    "resnetv2_152": "PreActResNet152",
    # --- timm (not torchvision): Inception-v4 / Inception-ResNet-v2 ---
    "inception_v4": "InceptionV4Timm",
    "inception_resnet_v2": "InceptionResNetV2Timm",
    # --- ResNet descendants (issue #26): torchvision's ResNeXts and wide ResNets ---
    "resnext50_32x4d": "ResNeXt50_32x4d",
    "resnext101_32x8d": "ResNeXt101_32x8d",
    "resnext101_64x4d": "ResNeXt101_64x4d",
    "wide_resnet50_2": "WideResNet50_2",
    "wide_resnet101_2": "WideResNet101_2",
    # ... and timm's Bag-of-Tricks ResNet-C / ResNet-D (torchvision has none).
    "resnet50c": "ResNet50C",
    "resnet50d": "ResNet50D",
    "resnet101d": "ResNet101D",
}
# The torchvision models ported from TensorFlow: their pretrained weights expect `transform_input`.
TRANSFORM_INPUT_MODELS = ("googlenet", "inception_v3")
# Each model's auxiliary-head prefix in torchvision's state dict, and the head's name here.
AUX_PREFIXES = {"googlenet": ("aux1.", "aux_4a"), "inception_v3": ("AuxLogits.", "aux_6e")}
# The entries above that are timm's models (`timm.create_model(name)`), not torchvision's.
TIMM_MODELS = ("inception_v4", "inception_resnet_v2")
# timm's ResNets with the deep stem ("c") and the average-pool shortcut ("d"): `_timm_resnet_module`.
TIMM_RESNETS = ("resnet50c", "resnet50d", "resnet101d")
# The classifier's weight, whose first dimension is the number of classes.
_HEAD_WEIGHT = {"inception_v4": "last_linear.weight", "inception_resnet_v2": "classif.weight"}


class ConversionError(errors.UserError, ValueError):
  """The state dict does not match the requested torchvision model."""


def _whose(name: str) -> str:
  """ "timm's" or "torchvision's", for messages about the model `name`."""
  timm = name in TIMM_MODELS or name in TIMM_RESNETS or is_timm_resnetv2(name)
  return "timm's" if timm else "torchvision's"


def _np(t) -> np.ndarray:
  if hasattr(t, "detach"):  # A torch tensor; torch itself is not needed to convert numpy arrays.
    t = t.detach().cpu().numpy()
  return np.asarray(t, np.float32)


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  if path[-1] in tree:
    raise ConversionError(f"Two torch tensors map to {'/'.join(path)}.")
  tree[path[-1]] = value


def _resnet_module(parts: list[str]) -> tuple[str, ...]:
  """torch module path (without the tensor name) -> our module path."""
  if parts == ["conv1"]:
    return ("stem_conv",)
  if parts == ["bn1"]:
    return ("stem_bn",)
  if parts == ["fc"]:
    return ("head",)
  m = re.fullmatch(r"layer(\d)", parts[0])
  if m and len(parts) >= 3:
    block = f"stage{m.group(1)}_block{parts[1]}"
    rest = parts[2:]
    if rest == ["downsample", "0"]:
      return (block, "proj_conv")
    if rest == ["downsample", "1"]:
      return (block, "proj_bn")
    if len(rest) == 1 and re.fullmatch(r"(conv|bn)\d", rest[0]):
      return (block, rest[0])
  raise ConversionError(f"Unexpected ResNet tensor prefix {'.'.join(parts)!r}.")


# --- timm's resnetv2 (pre-activation ResNet) -----------------------------------------------------

# timm's layout of the pre-activation ResNet (see incres/models/preact_resnet.py): no BN in the
# stem, the first unit pre-activates its own input, the bottleneck strides its 3x3.
TIMM_RESNETV2_KWARGS = {"stem_norm": False, "stride_in_1x1": False}


def is_resnet(name: str) -> bool:
  """Whether `name` (a TORCHVISION_MODELS key) converts to the `ResNet` class (torchvision's
  ResNets, ResNeXts and wide ResNets, timm's ResNet-C/D; not timm's pre-activation resnetv2)."""
  model = getattr(models, TORCHVISION_MODELS[name])
  return getattr(model, "func", model) is resnet.ResNet


# timm's deep stem, `conv1` a Sequential (conv, BN, ReLU, conv, BN, ReLU, conv), then `bn1`.
_TIMM_DEEP_STEM = {"0": "stem_conv1", "1": "stem_bn1", "3": "stem_conv2", "4": "stem_bn2"}
_TIMM_DEEP_STEM["6"] = "stem_conv3"


def _timm_resnet_module(parts: list[str], avg_down: bool) -> tuple[str, ...]:
  """timm resnet50c/d module path -> ours; the blocks and the head are named as torchvision's."""
  if len(parts) == 2 and parts[0] == "conv1" and parts[1] in _TIMM_DEEP_STEM:
    return (_TIMM_DEEP_STEM[parts[1]],)
  if parts == ["bn1"]:
    return ("stem_bn3",)
  if parts == ["conv1"]:  # Fail at once on a 7x7 stem (torchvision's weights, timm's resnet50).
    raise ConversionError("A single `conv1` is a 7x7 stem; timm's resnet50c/d have a deep one.")
  if avg_down and len(parts) == 4 and parts[2] == "downsample":  # (pool, conv, BN)
    if parts[3] in ("1", "2") and re.fullmatch(r"layer\d", parts[0]):
      layer = "proj_conv" if parts[3] == "1" else "proj_bn"
      return (f"stage{parts[0][-1]}_block{parts[1]}", layer)
    raise ConversionError(f"Unexpected ResNet-D tensor prefix {'.'.join(parts)!r}.")
  return _resnet_module(parts)


def is_timm_resnetv2(name: str) -> bool:
  """Whether `name` (a key of TORCHVISION_MODELS) is one of timm's resnetv2s, not torchvision's."""
  return name.startswith("resnetv2_")


def _resnetv2_module(parts: list[str]) -> tuple[str, ...]:
  """timm resnetv2 module path (without the tensor name) -> our PreActResNet module path."""
  if parts == ["stem", "conv"]:
    return ("stem_conv",)
  if parts == ["norm"]:
    return ("final_bn",)
  if parts == ["head", "fc"]:
    return ("head",)
  if len(parts) >= 5 and parts[0] == "stages" and parts[2] == "blocks":
    block = f"stage{int(parts[1]) + 1}_block{parts[3]}"
    rest = parts[4:]
    if rest == ["downsample", "conv"]:
      return (block, "proj_conv")
    m = re.fullmatch(r"(conv|norm)(\d)", rest[0]) if len(rest) == 1 else None
    if m:
      return (block, ("conv" if m.group(1) == "conv" else "bn") + m.group(2))
  raise ConversionError(f"Unexpected resnetv2 tensor prefix {'.'.join(parts)!r}.")


def convert_timm_resnetv2(
    state_dict: Mapping[str, Any], name: str, *, transform_input: bool | None = None, dtype=None
):
  """timm's `resnetv2_*` state dict -> `(model, variables)` of the matching `PreActResNet`.

  The model has timm's layout (`TIMM_RESNETV2_KWARGS`); `transform_input` (default True) builds in
  the step from ImageNet mean/std inputs to the 0.5/0.5 scaling timm's resnetv2 weights expect.
  """
  fc = state_dict.get("head.fc.weight")
  if fc is None:
    raise ConversionError(
        f"The state dict has no 'head.fc.weight': is it really a timm {name}? Check that --model"
        " matches the weights file."
    )
  num_classes = int(fc.shape[0])
  kwargs: dict[str, Any] = {
      "num_classes": num_classes,
      **TIMM_RESNETV2_KWARGS,
      "transform_input": True if transform_input is None else transform_input,
  }
  if dtype is not None:
    kwargs["dtype"] = dtype
  model = models.get_model(TORCHVISION_MODELS[name], **kwargs)
  variables: dict = {"params": {}, "batch_stats": {}}
  for key, tensor in state_dict.items():
    value = _np(tensor)
    if key == "head.fc.weight":  # timm's classifier is a 1x1 conv: (classes, features, 1, 1).
      value = value.reshape(value.shape[0], -1)
    where = incres_variable(key, name, value.ndim)
    if where is not None:
      collection, path = where
      _set(variables[collection], path, to_incres_layout(value, path))
  _check_structure(model, variables, name)
  return model, jax.tree.map(jax.numpy.asarray, variables)


_GOOGLENET_BRANCHES = {
    "branch1": "b1",
    "branch2.0": "b3_reduce",
    "branch2.1": "b3",
    "branch3.0": "b5_reduce",
    "branch3.1": "b5",
    "branch4.1": "pool_proj",
}


def _googlenet_module(parts: list[str]) -> tuple[str, ...]:
  head = parts[0]
  stem = {"conv1": "conv1", "conv2": "conv2_reduce", "conv3": "conv2"}
  if head in stem:
    return (stem[head], *parts[1:])  # conv1.conv / conv1.bn -> conv1/conv, conv1/bn
  if head == "fc":
    return ("head",)
  m = re.fullmatch(r"inception(\d[a-e])", head)
  if m:
    branch = ".".join(parts[1:-1])
    if branch in _GOOGLENET_BRANCHES:
      return (f"inception_{m.group(1)}", _GOOGLENET_BRANCHES[branch], parts[-1])
  m = re.fullmatch(r"aux([12])", head)
  if m:
    name = "aux_4a" if m.group(1) == "1" else "aux_4d"
    return (name, *parts[1:])  # aux1.conv.conv -> aux_4a/conv/conv; aux1.fc1 -> aux_4a/fc1
  raise ConversionError(f"Unexpected GoogLeNet tensor prefix {'.'.join(parts)!r}.")


# --- Inception-v3 (issue #16) ---


def _inception_v3_module(parts: list[str]) -> tuple[str, ...]:
  """torchvision inception_v3 module path -> ours: its names lower-cased, `AuxLogits` -> aux_6e.

  `Conv2d_1a_3x3.conv` -> conv2d_1a_3x3/conv, `Mixed_6b.branch7x7_2.bn` -> mixed_6b/branch7x7_2/bn,
  `AuxLogits.conv1.conv` -> aux_6e/conv1/conv, `AuxLogits.fc` -> aux_6e/fc, `fc` -> head.
  """
  if parts == ["fc"]:
    return ("head",)
  if not parts:
    raise ConversionError("A tensor name without a module path is not Inception-v3's.")
  if parts[0] == "AuxLogits" and (parts[1:] == ["fc"] or parts[1:2] in (["conv0"], ["conv1"])):
    return ("aux_6e", *parts[1:])
  stem = re.fullmatch(r"Conv2d_\d[ab]_\dx\d", parts[0])
  mixed = re.fullmatch(r"Mixed_\d[a-e]", parts[0])
  if (stem and len(parts) == 2 or mixed and len(parts) == 3) and parts[-1] in ("conv", "bn"):
    return tuple(p.lower() for p in parts)
  raise ConversionError(f"Unexpected Inception-v3 tensor prefix {'.'.join(parts)!r}.")


# --- end Inception-v3 ---

_MODULE_MAPS = {"googlenet": _googlenet_module, "inception_v3": _inception_v3_module}


# --- timm's inception_v4 / inception_resnet_v2 -> InceptionV4Timm / InceptionResNetV2Timm ---


def _timm_inception_top(parts: list[str], name: str) -> tuple[str, list[str]]:
  """timm's top-level module (eating its index, if any) -> (our module name, the rest)."""
  from incres.models import inception_v4  # pylint: disable=g-import-not-at-top

  head = {"inception_v4": "last_linear", "inception_resnet_v2": "classif"}[name]
  if not parts:
    raise ConversionError(f"Unexpected top-level tensor in a {name} state dict.")
  if parts == [head]:
    return "head", []
  if name == "inception_v4":  # features.0 ... features.21: the stem, then the blocks in order.
    order = [n for n, _ in inception_v4.STEM_V4_TIMM] + inception_v4.block_names((4, 7, 3))
    if (
        parts[0] == "features"
        and len(parts) > 1
        and parts[1].isdigit()
        and int(parts[1]) < len(order)
    ):
      return order[int(parts[1])], parts[2:]
    raise ConversionError(f"Unexpected inception_v4 tensor prefix {'.'.join(parts)!r}.")
  repeats = {"repeat": "inception_a", "repeat_1": "inception_b", "repeat_2": "inception_c"}
  if parts[0] in repeats and len(parts) > 1 and parts[1].isdigit():
    return f"{repeats[parts[0]]}{parts[1]}", parts[2:]
  renamed = {"mixed_6a": "reduction_a", "mixed_7a": "reduction_b", "block8": "inception_c9"}
  stem = {n for n, _ in inception_v4.STEM_RESNET_V2_TIMM} | {"conv2d_7b"}
  if parts[0] in renamed:
    return renamed[parts[0]], parts[1:]
  if parts[0] in stem:
    return parts[0], parts[1:]
  raise ConversionError(f"Unexpected inception_resnet_v2 tensor prefix {'.'.join(parts)!r}.")


def _timm_inception_module(parts: list[str], name: str) -> tuple[str, ...]:
  """timm module path (without the tensor name) -> our module path (InceptionBlock's names)."""
  top, rest = _timm_inception_top(parts, name)
  if top in _TIMM_SINGLE and len(rest) == 2 and rest[0] == "conv":
    return (top, _TIMM_SINGLE[top], rest[1])  # Mixed3a / Mixed5a call their one conv `conv`.
  if rest in ([], ["conv"], ["bn"]) and top not in _TIMM_SINGLE:
    return (top, *rest)  # The head, or a conv -> BN -> ReLU unit outside the blocks.
  if rest == ["conv2d"]:  # The residual blocks' filter-expansion convolution.
    return (top, "expand")
  m = re.fullmatch(r"branch(\d)", rest[0]) if rest else None
  if m and len(rest) == 3 and rest[1].isdigit():  # branch1.0.conv (a Sequential)
    return (top, f"branch{m.group(1)}_{rest[1]}", rest[2])
  if m and len(rest) == 2:  # branch0.conv (a single unit)
    return (top, f"branch{m.group(1)}_0", rest[1])
  if len(rest) == 2 and re.fullmatch(r"branch\d_\d[ab]?", rest[0]):  # InceptionC's branch2_3a
    return (top, *rest)
  raise ConversionError(f"Unexpected {name} tensor prefix {'.'.join(parts)!r}.")


# timm's Mixed3a (pool, conv) and Mixed5a (conv, pool) name their one conv `conv`.
_TIMM_SINGLE = {"mixed_3a": "branch1_0", "mixed_5a": "branch0_0"}


# torch tensor name -> (incres collection, variable name). A "weight" is a conv or dense "kernel"
# (rank 4 or 2) or a BatchNorm "scale" (rank 1); BatchNorm's "num_batches_tracked" has no twin.
_LEAVES = {
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}


def incres_variable(key: str, name: str, ndim: int) -> tuple[str, tuple[str, ...]] | None:
  """torchvision `name`'s tensor `key` (of rank `ndim`) -> (collection, path) of its incres twin.

  None for tensors without one (`num_batches_tracked`). `incres.export` walks the same mapping
  backwards, so this is the one place that pairs torchvision's names with ours.
  """
  if name not in TORCHVISION_MODELS:
    raise ConversionError(
        f"Unknown torchvision model {name!r}; supported: {', '.join(TORCHVISION_MODELS)}."
    )
  *prefix, leaf = key.split(".")
  if leaf == "num_batches_tracked":
    return None
  try:
    if is_timm_resnetv2(name):
      path = _resnetv2_module(prefix)
    elif name in TIMM_RESNETS:
      path = _timm_resnet_module(prefix, avg_down=name.endswith("d"))
    elif name in TIMM_MODELS:
      path = _timm_inception_module(prefix, name)
    else:
      path = _MODULE_MAPS.get(name, _resnet_module)(prefix)
  except ConversionError as e:
    raise ConversionError(
        f"{e} The state dict does not look like {_whose(name)} {name}: check that the model name"
        " matches the weights file."
    ) from None
  if leaf == "weight":
    return "params", (*path, "kernel" if ndim in (2, 4) else "scale")
  if leaf in _LEAVES:
    collection, variable = _LEAVES[leaf]
    return collection, (*path, variable)
  raise ConversionError(f"Unexpected tensor {key!r}.")


def _is_aux_fc1(path: tuple[str, ...]) -> bool:
  # torch flattens GoogLeNet's 128x4x4 aux map as (C, H, W) before fc1; ours flattens (H, W, C).
  return path[0].startswith("aux_") and path[-2:] == ("fc1", "kernel")


def to_incres_layout(value: np.ndarray, path: tuple[str, ...]) -> np.ndarray:
  """A torch tensor in our layout: OIHW -> HWIO convs, (out, in) -> (in, out) dense kernels."""
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 2:
    if _is_aux_fc1(path):
      value = value.reshape(value.shape[0], 128, 4, 4).transpose(0, 2, 3, 1)
      value = value.reshape(value.shape[0], -1)
    return value.T
  return value


def to_torch_layout(value: np.ndarray, path: tuple[str, ...]) -> np.ndarray:
  """The inverse of `to_incres_layout`: our array in torch's layout."""
  if value.ndim == 4:
    return value.transpose(3, 2, 0, 1)
  if value.ndim == 2:
    value = value.T
    if _is_aux_fc1(path):
      value = value.reshape(value.shape[0], 4, 4, 128).transpose(0, 3, 1, 2)
      value = value.reshape(value.shape[0], -1)
    return value
  return value


def convert(
    state_dict: Mapping[str, Any],
    name: str,
    *,
    transform_input: bool | None = None,
    dtype=None,
    scan_blocks: bool = False,
):
  """Converts a torchvision state dict into `(model, variables)` of the matching incres model.

  `scan_blocks`: a ResNet in the scanned layout (`incres.models.resnet`; `save` records it).
  Only the `ResNet` class (`is_resnet`) has that layout: for any other model it raises
  `ConversionError`.
  """
  if name not in TORCHVISION_MODELS:
    raise ConversionError(
        f"Unknown torchvision model {name!r}; supported: {', '.join(TORCHVISION_MODELS)}."
    )
  if scan_blocks and not is_resnet(name):
    resnets = ", ".join(n for n in TORCHVISION_MODELS if is_resnet(n))
    raise ConversionError(
        f"scan_blocks=True applies to the ResNet family only ({resnets}); {name} has no"
        " scanned layout. Convert it without scan_blocks."
    )
  try:
    return _convert(
        state_dict, name, transform_input=transform_input, dtype=dtype, scan_blocks=scan_blocks
    )
  except (ValueError, KeyError) as e:  # ConversionError, or a reshape the sizes do not allow.
    fits = _model_of(state_dict, other_than=name)
    if fits is None:
      raise
    what = (
        str(e)
        if isinstance(e, ConversionError)
        else f"The state dict does not fit {_whose(name)} {name} ({type(e).__name__}: {e})."
    )
  raise ConversionError(
      f"{what} These weights are {_whose(fits)} {fits}: convert them with --model={fits}."
  )


def _model_of(state_dict: Mapping[str, Any], other_than: str) -> str | None:
  """The name (a TORCHVISION_MODELS key) whose model these weights fit, besides `other_than`.

  For the message of a mismatch only: each candidate is converted in full (the wrong ones fail at
  once on their classifier's name, or at the structure check; under a second for a ResNet).
  """
  for candidate in TORCHVISION_MODELS:
    if candidate == other_than:
      continue
    try:
      _convert(state_dict, candidate)
    except (ValueError, KeyError):
      continue
    return candidate
  return None


def _convert(
    state_dict: Mapping[str, Any],
    name: str,
    *,
    transform_input: bool | None = None,
    dtype=None,
    scan_blocks: bool = False,
):
  """`convert` after its checks of the arguments."""
  if is_timm_resnetv2(name):
    return convert_timm_resnetv2(state_dict, name, transform_input=transform_input, dtype=dtype)
  head_key = _HEAD_WEIGHT.get(name, "fc.weight")
  fc = state_dict.get(head_key)
  if fc is None:
    source = "timm" if name in TIMM_MODELS or name in TIMM_RESNETS else "torchvision"
    raise ConversionError(f"The state dict has no {head_key!r}: is it really a {source} {name}?")
  num_classes = int(fc.shape[0])
  kwargs: dict[str, Any] = {"num_classes": num_classes}
  if dtype is not None:
    kwargs["dtype"] = dtype
  if name in TRANSFORM_INPUT_MODELS:
    kwargs["aux_heads"] = any(k.startswith(AUX_PREFIXES[name][0]) for k in state_dict)
    kwargs["transform_input"] = True if transform_input is None else transform_input
  elif name in TIMM_MODELS:  # Its weights expect [-1, 1] inputs (timm's mean = std = 0.5).
    kwargs["transform_input"] = True if transform_input is None else transform_input
  else:
    kwargs["stride_in_1x1"] = False  # torchvision's v1.5.
    kwargs["scan_blocks"] = scan_blocks
  model = models.get_model(TORCHVISION_MODELS[name], **kwargs)

  variables: dict = {"params": {}, "batch_stats": {}}
  for key, tensor in state_dict.items():
    value = _np(tensor)
    where = incres_variable(key, name, value.ndim)
    if where is not None:
      collection, path = where
      _set(variables[collection], path, to_incres_layout(value, path))
  if kwargs.get("scan_blocks"):  # Only the ResNets have the scanned layout.
    variables = resnet.stack_blocks(variables)

  _check_structure(model, variables, name)
  return model, jax.tree.map(jax.numpy.asarray, variables)


def _check_structure(model, variables, name) -> None:
  from incres import complexity

  # At the model's own input size: Inception-v3's auxiliary head needs 299x299.
  expected = complexity.abstract_variables(model, models.MODELS[TORCHVISION_MODELS[name]])

  def shapes(tree):
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): v.shape for p, v in leaves}

  want, got = shapes(expected), shapes(variables)
  problems = [f"missing {k} {want[k]}" for k in want if k not in got]
  problems += [f"unexpected {k} {got[k]}" for k in got if k not in want]
  problems += [
      f"{k}: torch {got[k]} vs incres {want[k]}" for k in want if k in got and got[k] != want[k]
  ]
  if problems:
    raise ConversionError(
        f"The state dict does not fit {_whose(name)} {name} ({len(problems)} problems; first: "
        + "; ".join(problems[:5])
        + "). Check --model matches the weights file."
    )


def import_config(name: str, num_classes: int = 1000, transform_input: bool = True):
  """The incres config of an imported torchvision model (ImageNet data, torchvision's eval view)."""
  from incres import configs

  config = configs.base_config()
  config.model = TORCHVISION_MODELS[name]
  config.num_classes = num_classes
  config.dataset = "imagenet2012"
  config.image_size = models.MODELS[config.model]  # 224; Inception-v3: 299.
  config.eval_preprocess = "center"
  config.normalize = "mean_std"  # torchvision's input normalisation.
  # Nothing was trained here: the run's length and schedule are zero steps, not epochs to resolve
  # against a dataset (fine-tuning from it builds its own schedule from its own config).
  config.num_train_steps, config.lr_boundaries = 0, ()
  config.lr_decay_steps = config.warmup_steps = 0
  config.eval_every_steps = config.checkpoint_every_steps = 1
  if name in TRANSFORM_INPUT_MODELS:
    config.augment = (
        "googlenet"  # Inception-v3's crops sample the same way (experiments/inception.py).
    )
    config.model_kwargs.transform_input = transform_input
  elif is_timm_resnetv2(name):
    config.augment = "resnet_imagenet"
    config.model_kwargs.update(TIMM_RESNETV2_KWARGS, transform_input=transform_input)
  elif name in TIMM_MODELS:  # timm's 299x299 view; "center" crops 224/256 of it, as timm's 0.875.
    config.image_size = 299
    config.augment = "googlenet"  # Inception-style random-size, random-aspect crops.
    config.model_kwargs.transform_input = transform_input
  else:
    config.augment = "resnet_imagenet"
    config.model_kwargs.stride_in_1x1 = False
  return config


class OutputExistsError(ConversionError):
  """`--out` holds something and replacing it was not asked for (or is not safe)."""


@dataclasses.dataclass(frozen=True)
class Written:
  """What `save` wrote, as read back from the output directory through `incres.checkpoint`."""

  out: str
  model: str
  step: int
  num_classes: int


def _describe(path: str) -> str:
  """What a non-empty directory holds, in a few words (reads names only)."""
  from incres import checkpoint  # pylint: disable=g-import-not-at-top

  names = sorted(os.listdir(path))
  ckpt = os.path.join(path, checkpoint.CHECKPOINT_DIR)
  steps = sorted(int(n) for n in os.listdir(ckpt) if n.isdigit()) if os.path.isdir(ckpt) else []
  others = [n for n in names if n != checkpoint.CHECKPOINT_DIR or not steps]
  shown = ", ".join(others[:8]) + (f" and {len(others) - 8} more" if len(others) > 8 else "")
  if steps:
    return f"a training run: checkpoints {', '.join(map(str, steps))}" + (
        f"; {shown}" if others else ""
    )
  return f"{len(names)} entr{'y' if len(names) == 1 else 'ies'}: {shown}"


def _inside(path: str, directory: str) -> bool:
  path, directory = os.path.realpath(path), os.path.realpath(directory)
  return os.path.commonpath([path, directory]) == directory


def check_out(out: str, overwrite: bool = False, *, weights: str | None = None) -> bool:
  """Raises `OutputExistsError` unless `out` may receive a converted run; True if it replaces one.

  `out` may be missing or an empty directory; anything else needs `overwrite`, and even then a
  file, a symbolic link, a directory holding the weights being converted or the current directory
  is refused. Reads names only: a refused `out` is left exactly as it was.
  """
  if os.path.islink(out):
    raise OutputExistsError(
        f"--out={out} is a symbolic link; nothing was changed. Give the real directory it points"
        " to, or a new directory."
    )
  if not os.path.exists(out):
    return False
  if not os.path.isdir(out):
    raise OutputExistsError(
        f"--out={out} is a file, not a directory; nothing was changed. Give a new directory"
        " (--out names the run directory the converter creates)."
    )
  if not os.listdir(out):
    return False
  if not overwrite:
    raise OutputExistsError(
        f"--out={out} is not empty: it holds {_describe(out)}. Nothing was changed. Convert into a"
        " new or empty directory, or pass --overwrite to replace it (the new run is written and"
        " read back beside it first; the old contents are deleted only after the swap)."
    )
  inputs = ((weights, f"the weights file {weights}"), (os.getcwd(), "the current directory"))
  for inner, what in inputs:
    if inner and _inside(inner, out):
      raise OutputExistsError(
          f"--out={out} holds {what}, which --overwrite would delete; nothing was changed. Convert"
          " into another directory."
      )
  return True


def _write_run(model_name: str, variables, workdir: str, transform_input: bool) -> None:
  """Writes variables as checkpoint step 0 plus `config.json` in a new, empty `workdir`."""
  from incres import checkpoint, configs, state as state_lib  # pylint: disable=g-import-not-at-top

  params = variables["params"]
  num_classes = int(params["head"]["kernel"].shape[-1])
  config = import_config(model_name, num_classes, transform_input)
  if model_name in AUX_PREFIXES and AUX_PREFIXES[model_name][1] not in params:
    config.model_kwargs.aux_heads = False
  if resnet.has_stacked_blocks(params):  # Converted with scan_blocks=True: record the layout.
    config.model_kwargs.scan_blocks = True
  model = state_lib.create_model(config)
  # `import_config` states zero steps, so the config's own schedule needs no dataset.
  tx = state_lib.create_optimizer(config, state_lib.create_learning_rate_fn(config))
  abstract = state_lib.abstract_train_state(config, model, tx, state_lib.create_mesh())
  # The state a fresh run would have, with the converted variables in place of a random init (not
  # `create_train_state`: compiling the model's init takes longer than the whole conversion).
  params = jax.tree.map(np.asarray, variables["params"])
  batch_stats = jax.tree.map(np.asarray, variables.get("batch_stats", {}))
  _, train_rng = jax.random.split(jax.random.key(config.seed))  # As init_train_state splits.
  state = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract).replace(
      params=params,
      batch_stats=batch_stats,
      opt_state=jax.jit(tx.init)(params),
      rng=jax.random.key_data(train_rng),
  )
  state = jax.device_put(state, jax.tree.map(lambda a: a.sharding, abstract))
  ckpt = checkpoint.Checkpointer(workdir, config, save_every_steps=1, keep=1, async_save=False)
  try:
    ckpt.save(0, state)
  finally:
    ckpt.close()
  configs.save_config(config, workdir)


def _verify(workdir: str, model_name: str, variables) -> None:
  """Loads `workdir` as a user would and checks it holds exactly `variables` of `model_name`."""
  from incres import checkpoint  # pylint: disable=g-import-not-at-top

  config, _, loaded = checkpoint.load_variables(workdir)
  want = TORCHVISION_MODELS[model_name]
  flat_want = dict(jax.tree_util.tree_flatten_with_path(variables)[0])
  flat_got = dict(jax.tree_util.tree_flatten_with_path(jax.device_get(loaded))[0])
  differ = [
      jax.tree_util.keystr(k)
      for k in flat_want.keys() | flat_got.keys()
      if k not in flat_got
      or k not in flat_want
      or not np.array_equal(np.asarray(flat_want[k]), np.asarray(flat_got[k]))
  ]
  if config.model != want or differ:
    raise RuntimeError(
        f"Reading back the converted run in {workdir} gave {config.model} with"
        f" {len(differ)} arrays differing from the conversion (first: {sorted(differ)[:3]});"
        " it was not installed."
    )


def _new_sibling(out: str, tag: str) -> str:
  """Creates a new empty directory beside `out` (same file system, so renames are atomic)."""
  while True:
    name = f".{os.path.basename(out)}.{tag}-{secrets.token_hex(4)}"
    path = os.path.join(os.path.dirname(out), name)
    try:
      os.mkdir(path)  # Unlike tempfile.mkdtemp, keeps the umask's permissions for the final run.
      return path
    except FileExistsError:
      continue


def _swap(new: str, out: str, replacing: bool) -> None:
  """Moves the finished run `new` to `out`; an old `out` is renamed aside, then deleted."""
  if not replacing:
    os.rename(new, out)  # Onto a missing or empty directory; fails (changing nothing) otherwise.
    return
  aside = _new_sibling(out, "replaced")
  os.rename(out, aside)  # Onto an empty directory: atomic.
  try:
    os.rename(new, out)
  except BaseException:
    os.rename(aside, out)  # Put the old run back before reporting the failure.
    raise
  try:
    shutil.rmtree(aside)
  except OSError as e:
    print(
        f"warning: the replaced run is still at {aside} ({e}); delete it by hand.", file=sys.stderr
    )


def save(
    model_name: str,
    variables,
    out: str,
    *,
    transform_input: bool = True,
    overwrite: bool = False,
) -> Written:
  """Writes converted variables as an incres run (checkpoint step 0) in the new directory `out`.

  `out` must be missing or empty (`OutputExistsError` otherwise, touching nothing); `overwrite`
  replaces an existing run. Either way the run is written into a temporary sibling of `out` and
  read back (every array compared) before it is renamed into place, so an interruption leaves
  `out` as it was. Returns the model name and step read back from `out`.
  """
  from incres import checkpoint  # pylint: disable=g-import-not-at-top

  out = os.path.abspath(os.path.expanduser(out))
  replacing = check_out(out, overwrite)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  new = _new_sibling(out, "converting")
  try:
    _write_run(model_name, variables, new, transform_input)
    _verify(new, model_name, variables)
    _swap(new, out, replacing)
  finally:
    if os.path.isdir(new):  # Still there: something failed before the swap.
      shutil.rmtree(new, ignore_errors=True)
  config = checkpoint.load_config(out)
  step = checkpoint.Checkpointer(out, config, save_every_steps=1, keep=1).latest_step()
  return Written(out, config.model, step, config.num_classes)


def _unpickling_message(path: str, error: pickle.UnpicklingError) -> str:
  """Our message for torch's weights-only refusal, without its advice to unpickle anyway."""
  text = str(error)
  found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
  if found:
    return (
        f"{path} contains Python objects beyond tensors; refused — convert only weights you"
        f" trust, saved as a state_dict (torch.save(model.state_dict(), path)). The first object is"
        f" {found.group(1)}; nothing in the file was run."
    )
  detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(\n\n|$)", text, re.DOTALL)
  reason = detail.group(1) if detail else _first_line(error)
  return f"{path} is not a PyTorch weights file that torch can read ({reason})."


def load_state_dict(path: str) -> dict[str, Any]:
  """Reads a torchvision `.pth` state dict: plain tensors only, no code is unpickled.

  Raises `ConversionError` (with a message for the user) when the file is missing, is not a
  PyTorch file, holds pickled Python objects beyond tensors, or is not a state dict.
  """
  if not os.path.isfile(path):
    raise ConversionError(
        f"--weights={path}: no such file. Give the .pth file holding the torchvision state_dict"
        " (e.g. resnet50-0676ba61.pth from torchvision's model page)."
    )
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ConversionError(  # pylint: disable=raise-missing-from
        "Reading a .pth file needs PyTorch: pip install torch (the CPU build is enough)."
    ) from None
  try:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:  # torch's restricted unpickler refused something.
    raise ConversionError(_unpickling_message(path, e)) from None
  except Exception as e:  # pylint: disable=broad-except  (zip/EOF/format errors of all kinds)
    raise ConversionError(
        f"{path} is not a PyTorch weights file that torch can read ({_first_line(e)})."
    ) from None
  state_dict = loaded
  if isinstance(loaded, Mapping):
    for key in ("state_dict", "model"):  # Training checkpoints that wrap the state dict.
      if isinstance(loaded.get(key), Mapping):
        state_dict = loaded[key]
        break
  if not isinstance(state_dict, Mapping) or not state_dict:
    raise ConversionError(
        f"{path} holds a {type(loaded).__name__}, not a state_dict (a dict of tensor names to"
        " tensors). Save one with torch.save(model.state_dict(), path)."
    )
  bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
  if bad:
    raise ConversionError(
        f"{path} is not a plain state_dict: {bad[0]!r} holds a {type(state_dict[bad[0]]).__name__},"
        " not a tensor. Save one with torch.save(model.state_dict(), path)."
    )
  return dict(state_dict)


def _first_line(e: BaseException) -> str:
  """`Type: first line` of an exception, without torch's advice to unpickle arbitrary code."""
  lines = [l for l in str(e).splitlines() if l.strip() and "weights_only" not in l]
  return f"{type(e).__name__}: {lines[0].strip() if lines else 'unreadable'}"


def next_steps(model_name: str, out: str) -> str:
  """The commands that fine-tune and use the run the converter wrote to `out` (as typed)."""
  q = shlex.quote
  name = os.path.basename(os.path.normpath(out)) or model_name
  workdir = os.path.join(os.path.dirname(os.path.normpath(out)) or ".", f"{name}_imagenette")
  return (
      "Fine-tune it (the model and its input normalisation come from the converted run):\n"
      f"  python launch.py --config=experiments/finetune.py:dataset=imagenette"
      f" --config.init_from={q(out)} --workdir={q(workdir)}\n"
      "  (your own images: dataset=folder:/path/to/images, one sub-folder per class)\n"
      "Classify images with it:\n"
      f"  python -m incres.predict --checkpoint={q(out)} image.jpg"
  )


def main(argv: list[str] | None = None) -> int:
  """`python -m incres.convert_torch`: returns 0, or 2 after printing a user error."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  from incres import cli  # pylint: disable=g-import-not-at-top

  args = flags.FlagValues()
  flags.DEFINE_enum(
      "model",
      None,
      sorted(TORCHVISION_MODELS),
      "The torchvision model.",
      required=True,
      flag_values=args,
  )
  flags.DEFINE_string(
      "weights", None, "A torchvision .pth state_dict file.", required=True, flag_values=args
  )
  flags.DEFINE_string(
      "out",
      None,
      "New (or empty) run directory, usable as config.init_from.",
      required=True,
      flag_values=args,
  )
  flags.DEFINE_bool(
      "overwrite",
      False,
      "Replace an existing --out (written beside it, read back, then swapped in).",
      flag_values=args,
  )
  flags.DEFINE_bool(
      "no_transform_input",
      False,
      "googlenet: the weights were trained without torchvision's transform_input step.",
      flag_values=args,
  )
  cli.parse(  # A usage error raises cli.UsageError: errors.run prints it and exits 2.
      args,
      argv,
      prog="python -m incres.convert_torch",
      description="Convert a torchvision state_dict file into a new incres run directory.",
  )
  transform_input = not args.no_transform_input
  try:
    check_out(args.out, args.overwrite, weights=args.weights)  # Before the slow part.
    state_dict = load_state_dict(args.weights)
    try:
      _, variables = convert(state_dict, args.model, transform_input=transform_input)
    except (ValueError, KeyError) as e:  # e.g. a reshape that the tensor's size does not allow.
      if isinstance(e, ConversionError):
        raise
      raise ConversionError(
          f"{args.weights} does not fit torchvision's {args.model} ({type(e).__name__}: {e})."
          " Check --model matches the weights file."
      ) from None
    written = save(
        args.model, variables, args.out, transform_input=transform_input, overwrite=args.overwrite
    )
  except errors.UserError as e:  # ConversionError, OutputExistsError, a missing file.
    print(errors.message(e), file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"Interrupted; --out={args.out} was left as it was.", file=sys.stderr)
    return 130
  except OSError as e:  # Permissions, a full disk: the old --out is kept (see save).
    print(f"error: could not write --out={args.out} ({e}); it was left as it was.", file=sys.stderr)
    return 2
  print(
      f"Wrote {written.model} (torchvision {args.model}, {written.num_classes} classes) to"
      f" {args.out}; read back: {written.model}, step {written.step}.\n"
      + next_steps(args.model, args.out)
  )
  return 0


if __name__ == "__main__":
  from incres import runtime  # pylint: disable=g-import-not-at-top

  runtime.run_command_line(main)  # Quiet start-up; a user error: its message, exit 2, no traceback.
