"""Fine-tuning: start a run from another run's (or converted torchvision) weights.

`config.init_from` names a workdir (its newest checkpoint, or `config.init_from_step`) or a
checkpoint step directory (`.../checkpoints/<step>`): a training run, or the `--out` of
`python -m incres.convert_torch`. The backbone's architecture is the source's: `config.model`
(left empty, as `experiments/finetune.py` does), the backbone's `model_kwargs` and the input
normalisation (`normalize="auto"`) are taken from the source run's config unless set, and values
that are set must agree with it (`inherit_architecture`). The new run's variables are initialised
as usual, then every parameter and batch statistic whose path and shape match the source is copied.
Heads — the classifier `head` and GoogLeNet's auxiliary heads `aux_*` — are re-initialised when
their shapes differ (a new number of classes) or when the source lacks them. Anything else that does
not match (another model, depth or width) is a backbone mismatch and fails with the first paths.

`config.freeze_backbone` trains only the heads: the backbone gets `optax.set_to_zero()` updates (so
it stays bitwise unchanged) and its BatchNorm layers use their running statistics (the models'
`frozen_bn`), so those stay unchanged too. `config.head_learning_rate` gives the heads their own
learning rate (the same schedule shape, scaled). Both are built into the optimizer
(`incres.state.create_optimizer`).

A run starts with `resolve_init_from(config)` (the source, and the architecture it implies) and,
when it does not resume, `initialize_from(...)` (the copy, logged to `<workdir>/init_from.txt`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from absl import logging

from incres import checkpoint
from incres import fileio
from incres import state as state_lib
from incres.models import resnet
from incres.state import is_head  # Heads are what fine-tuning re-initialises (and trains alone).

from incres import errors

PyTree = Any


class BackboneMismatchError(errors.UserError, ValueError):
  """The source checkpoint's backbone does not fit the new model."""


def _flat(tree: PyTree) -> dict[str, Any]:
  """{"conv1/kernel": leaf, ...}: the leaves by their "/"-joined paths."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out["/".join(state_lib.path_keys(path))] = leaf
  return out


def _unflatten_like(reference: PyTree, flat: dict[str, Any]) -> PyTree:
  """`reference`'s structure with the leaves of `flat` (as `_flat` names them)."""
  paths = jax.tree_util.tree_flatten_with_path(reference)[0]
  leaves = [flat["/".join(state_lib.path_keys(p))] for p, _ in paths]
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(reference), leaves)


@dataclasses.dataclass
class MergeLog:
  """Which variable paths were loaded from the source, re-initialised, or skipped (unused)."""

  loaded: list[str] = dataclasses.field(default_factory=list)
  reinitialized: list[str] = dataclasses.field(default_factory=list)
  skipped: list[str] = dataclasses.field(default_factory=list)

  def summary(self) -> str:
    def block(title, items):
      return f"{title} ({len(items)}):" + "".join(f"\n  {p}" for p in items)

    return "\n".join(
        [
            f"loaded {len(self.loaded)} arrays from the source checkpoint",
            block("re-initialised", self.reinitialized),
            block("skipped (in the source, not in this model)", self.skipped),
        ]
    )


def merge(init_variables: PyTree, source_variables: PyTree) -> tuple[PyTree, MergeLog]:
  """Copies matching arrays of `source_variables` into `init_variables` (see module docstring)."""
  log = MergeLog()
  merged = {}
  mismatches = []
  for collection, init_tree in init_variables.items():
    init_flat = _flat(init_tree)
    source_flat = _flat(source_variables.get(collection, {}))
    out = {}
    for path, init_leaf in init_flat.items():
      full = f"{collection}/{path}"
      src = source_flat.get(path)
      if src is not None and tuple(np.shape(src)) == tuple(init_leaf.shape):
        out[path] = src
        log.loaded.append(full)
      elif is_head(path):
        out[path] = init_leaf
        log.reinitialized.append(full)
      else:
        got = "missing" if src is None else tuple(np.shape(src))
        mismatches.append(f"{full}: source {got}, model {tuple(init_leaf.shape)}")
        out[path] = init_leaf
    log.skipped += [f"{collection}/{p}" for p in source_flat if p not in init_flat]
    merged[collection] = _unflatten_like(init_tree, out)
  backbone_skipped = [p for p in log.skipped if not is_head(p.split("/", 1)[1])]
  if mismatches or backbone_skipped:
    problems = mismatches + [f"{p}: in the source, not in the model" for p in backbone_skipped]
    raise BackboneMismatchError(
        f"The checkpoint's backbone does not fit this model ({len(problems)} mismatched arrays;"
        f" first: {'; '.join(problems[:5])}). init_from must come from the same model, depth and"
        " width (only the heads may differ): check config.model and config.model_kwargs."
    )
  return merged, log


def resolve_source(init_from: str, step: int | None = None) -> tuple[str, int | None]:
  """`init_from` -> (workdir, step): accepts a workdir or a `<workdir>/checkpoints/<step>` dir."""
  path = os.path.abspath(os.path.expanduser(init_from))
  m = re.fullmatch(r"(.*)/checkpoints/(\d+)/?", path)
  if m:
    return m.group(1), int(m.group(2)) if step is None else step
  if not os.path.isdir(os.path.join(path, "checkpoints")):
    raise errors.MissingFileError(
        f"config.init_from={init_from!r} is neither a workdir with a checkpoints/ folder nor a"
        " checkpoint step folder (<workdir>/checkpoints/<step>). Point it at a training run's"
        " workdir or at the --out folder of `python -m incres.convert_torch`."
    )
  return path, step


# model_kwargs that only shape the heads or the training mode, not the backbone's arrays.
_NON_BACKBONE_KWARGS = ("aux_heads", "frozen_bn", "dropout_rate", "drop_path_rate")
# model_kwargs that only lay the same arrays out differently: inherited when unset, free to differ
# (`initialize_from` converts the source's variables to the new model's layout).
_LAYOUT_KWARGS = ("scan_blocks",)


def inherit_architecture(config, source_config) -> list[str]:
  """Makes `config`'s backbone the source run's (in place); returns the keys it filled in.

  What the new config leaves unset is taken from the source: the model when `config.model` is
  empty (`experiments/finetune.py`'s default), backbone `model_kwargs` it does not name (e.g. the
  v1.5 strides of converted torchvision ResNets, which no parameter shape would reveal), and the
  input normalisation when `config.normalize` is "auto". Values the user set are kept, and must
  describe the same backbone: a different model, or a backbone keyword set differently in both,
  fails with `BackboneMismatchError`. The exception is a ResNet's `scan_blocks`, a layout of the
  same arrays: inherited when unset, it may be set either way.
  """
  filled = []
  if not config.get("model"):
    config.model = source_config.model
    filled.append(f"model={config.model!r}")
  elif config.model != source_config.model:
    raise BackboneMismatchError(
        f"config.model={config.model!r} but init_from holds a {source_config.model!r}. Fine-tuning"
        " keeps the backbone: drop --config.model (experiments/finetune.py then takes the"
        " source's) or set it to the source's model."
    )
  source_kwargs = dict(source_config.get("model_kwargs", {}))
  for key, value in source_kwargs.items():
    if key in _NON_BACKBONE_KWARGS:
      continue
    if key not in config.model_kwargs:
      config.model_kwargs[key] = value
      filled.append(f"model_kwargs.{key}={value!r}")
    elif config.model_kwargs[key] != value and key not in _LAYOUT_KWARGS:
      raise BackboneMismatchError(
          f"config.model_kwargs.{key}={config.model_kwargs[key]!r} but the init_from run used"
          f" {value!r}: the backbone would differ. Drop the override to inherit the source's."
      )
  if config.get("normalize", "auto") == "auto":
    from incres import data  # pylint: disable=g-import-not-at-top  (TensorFlow)

    config.normalize = data.normalization(source_config)  # "auto" resolved as the source did.
    filled.append(f"normalize={config.normalize!r}")
  return filled


def resolve_init_from(config: ml_collections.ConfigDict) -> tuple[str, int | None] | None:
  """The `(workdir, step)` that `config.init_from` names, or None; fills in the source's backbone.

  `config` is changed in place (`inherit_architecture`). Without `init_from`, an empty
  `config.model` is an error (it means "the init_from run's model").
  """
  if not config.get("init_from"):
    if not config.model:
      raise ValueError(
          'config.model is empty, which means "the init_from run\'s model", but config.init_from'
          " is not set. Pass --config.init_from=<a run's workdir or a convert_torch --out>, or"
          " --config.model=<name>."
      )
    return None
  source = resolve_source(config.init_from, config.get("init_from_step"))
  filled = inherit_architecture(config, checkpoint.load_config(*source))
  if filled:
    logging.info("From the init_from run: %s", ", ".join(filled))
  return source


def initialize_from(
    state: state_lib.TrainState,
    source: tuple[str, int | None],
    tx: optax.GradientTransformation,
    state_sharding: state_lib.TrainState,
    workdir: str,
    is_chief: bool,
) -> state_lib.TrainState:
  """The fresh `state` with the source run's backbone (and matching heads) copied in.

  What was loaded, re-initialised and skipped is logged and written to `<workdir>/init_from.txt`
  (by the chief process). The optimizer state and the parameter averages start afresh.
  """
  _, _, source_vars = checkpoint.load_variables(*source)
  init = {"params": state.params, "batch_stats": state.batch_stats}
  # A ResNet run of the other layout (`scan_blocks`) holds the same arrays, stacked differently.
  source_vars = resnet.to_layout(jax.device_get(source_vars), resnet.has_stacked_blocks(init))
  merged, log = merge(init, source_vars)
  summary = f"init_from {source[0]} (step {source[1] or 'newest'}):\n{log.summary()}"
  logging.info("%s", summary)
  if is_chief:
    fileio.atomic_write_text(os.path.join(workdir, "init_from.txt"), summary + "\n")
  return state_lib.replace_variables(state, merged, tx, state_sharding)
