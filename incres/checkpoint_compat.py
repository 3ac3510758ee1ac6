"""Whether a config may resume a checkpoint: the saved config's identity and the state's shapes.

A checkpoint written for another model or an incompatible config is refused with
`IncompatibleCheckpointError`, which lists what differs, before anything in the workdir is touched.
Keys outside `IDENTITY_KEYS` (learning rate, number of steps, ...) may change between runs;
`changed_keys` lists them for the log.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import ml_collections

from incres import errors

# Config keys that define what a checkpoint *is*: resuming with any of them changed is refused.
# Other keys (learning rate, number of steps, ...) may change between runs; the change is logged.
IDENTITY_KEYS = ("model", "model_kwargs", "num_classes", "dataset", "image_size")

# `name -> (shape, dtype)` of a state's arrays, with `opt_state.0.trace.conv` style names.
Shapes = Mapping[str, tuple[tuple[int, ...], str]]


class IncompatibleCheckpointError(errors.UserError, ValueError):
  """The workdir holds a checkpoint this config cannot resume from."""


def config_dict(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
  """The config as plain JSON data (tuples become lists), for saving and comparing."""
  if isinstance(config, ml_collections.ConfigDict):
    return json.loads(config.to_json())
  return json.loads(json.dumps(dict(config)))


def describe_tree_mismatch(saved: Shapes, expected: Shapes, limit: int = 6) -> list[str]:
  """One line per array that is missing on either side or differs in shape or dtype."""
  problems = []
  # Parameters first: they say most about what differs.
  names = sorted(set(saved) | set(expected), key=lambda n: (n[:7] != "params.", n))
  for name in names:
    s, e = saved.get(name), expected.get(name)
    if s == e:
      continue
    if s is None:
      problems.append(f"{name} is not in the checkpoint")
    elif e is None:
      problems.append(f"{name} is in the checkpoint but not in this model/optimizer")
    else:
      problems.append(f"{name}: checkpoint {s[0]} {s[1]}, this config {e[0]} {e[1]}")
  if len(problems) > limit:
    problems = problems[:limit] + [f"... and {len(problems) - limit} more"]
  return problems


def check(
    where: str,
    saved_config: Mapping[str, Any],
    config: ml_collections.ConfigDict,
    saved_shapes: Shapes,
    expected_shapes: Shapes,
) -> None:
  """Raises `IncompatibleCheckpointError` unless `config` may resume the checkpoint at `where`."""
  current = config_dict(config)
  mismatched = [
      f"{k}: checkpoint {saved_config.get(k)!r}, this config {current.get(k)!r}"
      for k in IDENTITY_KEYS
      if saved_config.get(k) != current.get(k)
  ]
  tree_problems = describe_tree_mismatch(saved_shapes, expected_shapes)
  if mismatched or tree_problems:
    other = [
        f"{k}: checkpoint {saved_config.get(k)!r}, this config {current.get(k)!r}"
        for k in sorted(set(saved_config) & set(current))
        if k not in IDENTITY_KEYS and saved_config[k] != current[k]
    ]
    lines = mismatched + tree_problems + [f"(also differs) {o}" for o in other[:6]]
    raise IncompatibleCheckpointError(
        f"Cannot resume: the workdir's checkpoint {where} was written for a different model or"
        " an incompatible config:\n  - "
        + "\n  - ".join(lines)
        + "\nNothing in the workdir was changed. Train this config in a new --workdir, or pass"
        " the checkpoint's values (e.g. --config.model=...) to resume the old run."
    )


def changed_keys(saved_config: Mapping[str, Any], config: ml_collections.ConfigDict) -> list[str]:
  """`key: saved -> current` for each key both configs hold with different values."""
  current = config_dict(config)
  return [
      f"{k}: {saved_config[k]!r} -> {current[k]!r}"
      for k in sorted(set(saved_config) & set(current))
      if saved_config[k] != current[k]
  ]
