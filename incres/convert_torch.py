"""Import torchvision's ImageNet weights: `convert(state_dict, name) -> (model, variables)`.

Supported: torchvision's `resnet18/34/50/101/152` (to our ResNets with torchvision's "v1.5" strides,
`stride_in_1x1=False`) and `googlenet` (to `GoogLeNetBN`, torchvision's structure). The converted
model's `model.apply(variables, nhwc_images, train=False)[0]` equals torchvision's logits on the
same NCHW images (tested to 1e-4 against torchvision itself).

torchvision's pretrained GoogLeNet was ported from TensorFlow and expects its `transform_input`
step, which maps ImageNet-normalised inputs ((x - mean) / std, per channel) to the [-1, 1] scaling
the TensorFlow weights were trained on. `convert(..., transform_input=True)` (the default for
`googlenet`, as torchvision does when it loads those weights) builds the step into the converted
model (`GoogLeNet.transform_input`), so both take the same ImageNet-normalised images; pass False
for a torchvision GoogLeNet built with `transform_input=False`.

Command line (no network: you supply the file):
  python -m incres.convert_torch --model=resnet50 --weights=resnet50-0676ba61.pth --out=DIR
writes an incres checkpoint directory that `config.init_from` accepts.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import numpy as np

from incres import models

TORCHVISION_MODELS = {
    "resnet18": "ResNet18",
    "resnet34": "ResNet34",
    "resnet50": "ResNet50",
    "resnet101": "ResNet101",
    "resnet152": "ResNet152",
    "googlenet": "GoogLeNetBN",
}


class ConversionError(ValueError):
  """The state dict does not match the requested torchvision model."""


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


def convert(
    state_dict: Mapping[str, Any], name: str, *, transform_input: bool | None = None, dtype=None
):
  """Converts a torchvision state dict into `(model, variables)` of the matching incres model."""
  if name not in TORCHVISION_MODELS:
    raise ConversionError(
        f"Unknown torchvision model {name!r}; supported: {', '.join(TORCHVISION_MODELS)}."
    )
  is_googlenet = name == "googlenet"
  fc = state_dict.get("fc.weight")
  if fc is None:
    raise ConversionError(f"The state dict has no 'fc.weight': is it really a torchvision {name}?")
  num_classes = int(fc.shape[0])
  kwargs: dict[str, Any] = {"num_classes": num_classes}
  if dtype is not None:
    kwargs["dtype"] = dtype
  if is_googlenet:
    kwargs["aux_heads"] = any(k.startswith("aux1.") for k in state_dict)
    kwargs["transform_input"] = True if transform_input is None else transform_input
  else:
    kwargs["stride_in_1x1"] = False  # torchvision's v1.5.
  model = models.get_model(TORCHVISION_MODELS[name], **kwargs)
  module_path = _googlenet_module if is_googlenet else _resnet_module

  params: dict = {}
  stats: dict = {}
  for key, tensor in state_dict.items():
    *prefix, leaf = key.split(".")
    if leaf == "num_batches_tracked":
      continue
    path = module_path(prefix)
    value = _np(tensor)
    if leaf == "weight" and value.ndim == 4:  # OIHW -> HWIO
      _set(params, (*path, "kernel"), value.transpose(2, 3, 1, 0))
    elif leaf == "weight" and value.ndim == 2:  # (out, in) -> (in, out)
      if is_googlenet and path[-1] == "fc1" and path[0].startswith("aux"):
        # torch flattens the 128x4x4 aux map as (C, H, W); ours flattens (H, W, C).
        value = value.reshape(value.shape[0], 128, 4, 4).transpose(0, 2, 3, 1)
        value = value.reshape(value.shape[0], -1)
      _set(params, (*path, "kernel"), value.T)
    elif leaf == "weight":  # BatchNorm
      _set(params, (*path, "scale"), value)
    elif leaf == "bias":
      _set(params, (*path, "bias"), value)
    elif leaf == "running_mean":
      _set(stats, (*path, "mean"), value)
    elif leaf == "running_var":
      _set(stats, (*path, "var"), value)
    else:
      raise ConversionError(f"Unexpected tensor {key!r}.")

  variables = {"params": params, "batch_stats": stats}
  _check_structure(model, variables, name)
  return model, jax.tree.map(jax.numpy.asarray, variables)


def _check_structure(model, variables, name) -> None:
  from incres import complexity

  expected = complexity.abstract_variables(model, 224)
  want = {jax.tree_util.keystr(p): v.shape for p, v in jax.tree_util.tree_flatten_with_path(expected)[0]}
  got = {jax.tree_util.keystr(p): v.shape for p, v in jax.tree_util.tree_flatten_with_path(variables)[0]}
  problems = [f"missing {k} {want[k]}" for k in want if k not in got]
  problems += [f"unexpected {k} {got[k]}" for k in got if k not in want]
  problems += [f"{k}: torch {got[k]} vs incres {want[k]}" for k in want if k in got and got[k] != want[k]]
  if problems:
    raise ConversionError(
        f"The state dict does not fit torchvision's {name} ({len(problems)} problems; first: "
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
  config.image_size = 224
  config.eval_preprocess = "center"
  config.normalize = "mean_std"  # torchvision's input normalisation.
  if name == "googlenet":
    config.augment = "googlenet"
    config.model_kwargs.transform_input = transform_input
  else:
    config.augment = "resnet_imagenet"
    config.model_kwargs.stride_in_1x1 = False
  return config


def save(model_name: str, variables, out: str, *, transform_input: bool = True) -> str:
  """Writes converted variables as an incres checkpoint (step 0) in workdir `out`."""
  from incres import checkpoint, train

  params = variables["params"]
  num_classes = int(params["head"]["kernel"].shape[-1])
  config = import_config(model_name, num_classes, transform_input)
  if model_name == "googlenet" and "aux_4a" not in params:
    config.model_kwargs.aux_heads = False
  model = train.create_model(config)
  tx = train.create_optimizer(config, train.create_learning_rate_fn(config))
  mesh = train.create_mesh()
  state = train.create_train_state(config, model, tx, mesh)
  state = state.replace(params=variables["params"], batch_stats=variables.get("batch_stats", {}))
  ckpt = checkpoint.Checkpointer(out, config, save_every_steps=1, keep=1, async_save=False)
  try:
    ckpt.save(0, state)
    ckpt.wait()
  finally:
    ckpt.close()
  train.save_config(config, out)
  return checkpoint.checkpoint_dir(out)


def load_state_dict(path: str):
  """Reads a torchvision `.pth` state dict (needs torch; weights only, no code is unpickled)."""
  try:
    import torch
  except ImportError as e:
    raise SystemExit(
        "Reading a .pth file needs PyTorch: pip install torch (CPU build is enough)."
    ) from e
  state_dict = torch.load(path, map_location="cpu", weights_only=True)
  if isinstance(state_dict, dict) and "state_dict" in state_dict:
    state_dict = state_dict["state_dict"]
  return state_dict


def main(argv=None) -> int:
  import argparse

  parser = argparse.ArgumentParser(
      prog="python -m incres.convert_torch",
      description="Convert a torchvision state_dict file into an incres checkpoint.",
  )
  parser.add_argument("--model", required=True, choices=sorted(TORCHVISION_MODELS))
  parser.add_argument("--weights", required=True, help="A torchvision .pth state_dict file.")
  parser.add_argument("--out", required=True, help="Output workdir (usable as config.init_from).")
  parser.add_argument(
      "--no_transform_input",
      action="store_true",
      help="googlenet: the weights were trained without torchvision's transform_input step.",
  )
  args = parser.parse_args(argv)
  transform_input = not args.no_transform_input
  model, variables = convert(
      load_state_dict(args.weights), args.model, transform_input=transform_input
  )
  where = save(args.model, variables, args.out, transform_input=transform_input)
  print(
      f"Wrote {TORCHVISION_MODELS[args.model]} ({args.model}) to {where}.\n"
      f"Fine-tune: python launch.py --config=experiments/finetune.py --config.init_from={args.out}\n"
      f"Classify:  python -m incres.predict --checkpoint={args.out} image.jpg"
  )
  return 0


if __name__ == "__main__":
  from incres import runtime  # pylint: disable=g-import-not-at-top

  runtime.setup_process()  # Before TensorFlow is imported: quiet start-up, quick exit.
  raise SystemExit(main())
