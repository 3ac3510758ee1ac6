"""The base configuration every experiment in `experiments/` starts from, and what a run does to it.

Every number a run depends on lives in the config; `experiments/*.py` import `base_config()` and
override what their paper setup changes. Keys are grouped by the part of the library that reads
them. When a run starts, `resolve_config` fills in the values derived from the dataset (the run
length stated in epochs becomes steps), `validate` checks the result against the devices, and
`save_config` writes it into the workdir.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import yaml

from incres import fileio

from incres import errors


def base_config() -> ml_collections.ConfigDict:
  """Returns the defaults shared by all experiments (a small CIFAR ResNet on `digits`)."""
  c = ml_collections.ConfigDict()

  # --- Model (incres.models) ---
  c.model = "CifarResNet20"  # A name from `incres.models`.
  c.num_classes = -1  # -1: take the dataset's number of classes.
  c.dtype = "float32"  # Compute dtype: "float32" or "bfloat16" (parameters stay float32).
  c.model_kwargs = ml_collections.ConfigDict()  # Extra fields for the model (e.g. shortcut="A").
  # incres.ops's CPU gradients of convolutions and max pools (XLA's results, faster on XLA:CPU):
  # "auto" (on for the CPU backend unless INCRES_CPU_CONV_VJP=0), "on" or "off" (XLA's own
  # gradients). GPUs take only the max-pool one (faster there too), TPUs neither. Not part of the
  # checkpoint's identity.
  c.cpu_conv_vjp = "auto"

  # --- Data (incres.data) ---
  c.dataset = "digits"  # tfds name, "folder:<path>", "digits" or "fake".
  c.data_dir = ml_collections.config_dict.placeholder(str)  # tfds data_dir; None: tfds default.
  c.train_split = "train"
  c.eval_split = "test"
  c.image_size = 32  # Training / evaluation crop size.
  # "cifar", "resnet_imagenet", "googlenet", "random_resized_crop" (torchvision's and timm's
  # ImageNet recipe, with the keys below: incres.data.modern) or "none".
  c.augment = "cifar"
  # "cifar"'s border before its random crop: "zero" (ResNet §4.2, fb.resnet.torch: zeros after the
  # mean subtraction) or "reflect" (the wide ResNets' code: the image mirrored).
  c.cifar_padding = "zero"
  # random_resized_crop's policy on each uint8 crop, or cifar's after its pad-crop-flip
  # (incres.data.autoaugment, torchvision v2's semantics): "none", "randaugment",
  # "trivialaugment_wide" or "autoaugment_imagenet" ...
  c.auto_augment = "none"
  c.randaugment_num_ops = 2  # ... RandAugment's ops per image (torchvision's num_ops) ...
  c.randaugment_magnitude = 9  # ... their magnitude, bin 0-30 of 31 (torchvision's default 9) ...
  # ... and timm's mstd on that scale: each op's magnitude normal(magnitude, std), clipped to
  # [0, 30] (0: fixed; RSB's rand-m7-mstd0.5 is magnitude 21, std 1.5) ...
  c.randaugment_magnitude_std = 0.0
  # ... the geometric ops' sampling: "nearest" (torchvision's default) or "bilinear" (what
  # torchvision's reference recipes pass) ...
  c.auto_augment_interpolation = "nearest"
  c.random_erasing = 0.0  # ... then random erasing's probability (0: off; incres.data.erasing) ...
  c.random_erasing_fill = "zero"  # ... its fill: "zero" (torchvision's) or "pixel" (timm's normal).
  # random_resized_crop's colour on the uint8 crop, before the policy (Bag of Tricks' as mxnet's
  # ImageRecordIter applies it: incres.data.color_jitter): brightness, contrast and saturation
  # strengths s, each factor uniform in [1 - s, 1 + s], in a random order (0: that op off) ...
  c.color_jitter = (0.0, 0.0, 0.0)
  c.pca_lighting = 0.0  # ... then AlexNet's PCA lighting noise, its alphas' std (0: off).
  # Where "googlenet"'s photometric distortions run: "auto" (in the train step when JAX's backend is
  # a GPU or TPU, else in the host pipeline), "host" or "device" (incres.data.device_photometric:
  # the same draws; the pixels TensorFlow's to float32 rounding). "device" needs
  # augment="googlenet".
  c.photometric = "auto"
  # Where the crop's resampling and what follows it run ("resnet_imagenet": resample, flip, colour
  # shift, normalisation; "googlenet": resize with its drawn kernel, flip, and then the colour
  # distortions, which go along): "auto" (in the train step on a GPU or TPU, else in the host
  # pipeline), "host" or "device" (incres.data.device_resample: the host decodes the crop's window
  # and ships it as uint8; the same draws, the pixels to float32 rounding). "device" needs one of
  # those augmentations (and for googlenet, photometric not "host"). Neither place is part of a
  # checkpoint's identity: a run resumed where "auto" resolves otherwise (a GPU run resumed on CPUs)
  # trains on the same views, their pixels different by float32 rounding, so it is not bitwise the
  # uninterrupted run.
  c.resample = "auto"
  c.eval_preprocess = "single"  # "single" (original view) or "center" (shorter side 256, 224 crop).
  # FixRes-style evaluation (eval_preprocess="center"): the shorter side resized to this and the
  # central crop of eval_crop_size taken, apart from the training image_size (None: 256/224 scaled
  # by image_size/224, today's "center").
  c.eval_resize_size = ml_collections.config_dict.placeholder(int)
  c.eval_crop_size = ml_collections.config_dict.placeholder(int)
  c.batch_size = 128  # Global batch size, split across all devices and hosts.
  c.eval_batch_size = 256  # Global evaluation batch size (the last batch is padded and masked).
  # Repeated augmentation (torchvision's and timm's RA sampler): each image drawn appears this many
  # times in the global batch, each view augmented independently, its copies on different devices;
  # an epoch then holds as many views as the split has images (1: off).
  c.repeated_augmentation = 1
  c.normalize = "auto"  # "auto" (cifar: per-pixel mean, else ImageNet channel mean), "pixel_mean",
  # "channel_mean", "mean_std" (torchvision's: minus the ImageNet channel mean, divided by its
  # std; for imported weights) or "none"; images are on the [0, 1] scale before normalisation.
  c.fake_image_shape = ml_collections.config_dict.placeholder(tuple)  # fake: None = (S, S, 3).
  c.fake_num_train = 1024  # fake: examples in the "train" split ...
  c.fake_num_eval = 256  # ... and in every other split.

  # --- Optimisation (incres.train) ---
  # Run length and schedule in epochs of the training split; `resolve_config` (below) turns
  # them into the step-valued keys below from the dataset's actual size when a run starts:
  # num_train_steps = max(1, round(num_epochs * num_train / batch_size)), and every other step value
  # is its fraction of the run, round(num_train_steps * value_epochs / num_epochs) (at least 1 for
  # periods and a non-zero warm-up). A step-valued key set to a number is used as it is: an
  # explicit num_train_steps changes the length and the derived values keep their proportions.
  c.num_epochs = 170.0  # About 2,000 steps of 128 on digits' 1,497 training images.
  c.num_train_steps = ml_collections.config_dict.placeholder(int)  # None: from num_epochs.
  # "sgd", "rmsprop" (TensorFlow's, as the Inception papers used it), "lamb" (You et al. 2020,
  # ResNet strikes back's A1/A2 recipes) or "lars" (You et al. 2017; optax's, see state.py).
  c.optimizer = "sgd"
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.nesterov = False
  c.rmsprop_decay = 0.9  # rmsprop: decay of the mean square (Inception-v3 §8: 0.9) ...
  c.rmsprop_epsilon = 1.0  # ... epsilon, inside the square root (Inception-v3: 1.0) ...
  c.rmsprop_initial_scale = 1.0  # ... and the mean square's initial value (TensorFlow's: 1).
  c.lamb_b1 = 0.9  # lamb: the moments' decay rates and epsilon (timm's Lamb defaults) ...
  c.lamb_b2 = 0.999
  c.lamb_eps = 1e-6
  c.lars_trust_coefficient = 0.001  # lars: the trust ratio's coefficient and epsilon.
  c.lars_eps = 0.0
  c.weight_decay = 1e-4
  # Which parameters weight decay touches besides the kernels (of convolutions and dense layers):
  # the norms' scales and offsets, and the layers' biases. Off (kernels only) is the TF-slim
  # Inception setup; fb.resnet.torch decays every parameter (both on); torchvision's 2021 recipe
  # (--norm-weight-decay 0.0) decays the biases but not the norms; timm/RSB neither. LAMB and LARS
  # exclude the same parameters from their trust ratio (timm's filter_bias_and_bn).
  c.decay_norms = False
  c.decay_biases = False
  c.schedule = "piecewise"  # "piecewise", "exponential", "cosine" or "constant".
  c.lr_boundary_epochs = (85.0, 127.5)  # piecewise: epochs where the rate is multiplied by ...
  c.lr_decay_factor = 0.1  # ... this factor.
  c.lr_boundaries = ml_collections.config_dict.placeholder(tuple)  # Steps; None: from the epochs.
  c.lr_decay_epochs = 0.0  # exponential: decay every this many epochs ...
  c.lr_decay_steps = ml_collections.config_dict.placeholder(int)  # Steps; None: from the epochs.
  c.lr_decay_rate = 0.96  # ... by this factor (GoogLeNet: 4% every 8 epochs), staircase.
  c.warmup_epochs = 0.0  # Epochs at warmup_learning_rate before the schedule starts (ResNet-110).
  c.warmup_steps = ml_collections.config_dict.placeholder(int)  # None: from warmup_epochs.
  c.warmup_learning_rate = 0.0
  c.warmup_shape = (
      "constant"  # "constant" (at warmup_learning_rate) or "linear" (ramp to the rate).
  )
  # True: the cosine spans the whole run, the warm-up replacing its start (timm's default); False:
  # it spans the steps after the warm-up (torchvision's SequentialLR).
  c.cosine_spans_warmup = False
  # True: the rate changes once an epoch, at its first step (torchvision's and timm's schedulers,
  # stepped per epoch); False: every step.
  c.lr_per_epoch = False
  c.label_smoothing = 0.0
  # The loss: "softmax_ce" or "bce" (one sigmoid per class, averaged over batch x classes: ResNet
  # strikes back, Wightman et al. 2021), whose targets above bce_target_threshold become 1 and
  # the rest 0 (None: the soft targets as they are; RSB: 0.2). Evaluation's eval/loss stays the
  # softmax cross-entropy.
  c.loss = "softmax_ce"
  c.bce_target_threshold = ml_collections.config_dict.placeholder(float)
  # Mixup and CutMix of the whole batch in the train step (incres.mixing; timm's Mixup in batch
  # mode, torchvision's MixUp/CutMix): Beta(alpha, alpha) weights, 0 turns one off. A batch is
  # mixed with probability mix_prob, by CutMix with probability mix_switch_prob when both are on.
  # The labels are smoothed first, then mixed. torchvision's 2021 ResNet-50 recipe
  # (references/classification/README.md): 0.2 and 1.0.
  c.mixup_alpha = 0.0
  c.cutmix_alpha = 0.0
  c.mix_prob = 1.0
  c.mix_switch_prob = 0.5
  c.aux_loss_weight = 0.3  # GoogLeNet's auxiliary classifiers; ignored by models without them.
  c.grad_clip_norm = ml_collections.config_dict.placeholder(float)  # None: no clipping.
  c.ema_decay = ml_collections.config_dict.placeholder(float)  # None: no EMA of the parameters.
  # The EMA is updated after the steps whose index (from 0) is a multiple of this (torchvision's
  # --model-ema-steps, 32 in its 2021 recipe, whose decay is then `torchvision_ema_decay` below).
  c.ema_every_steps = 1
  # torchvision's AveragedModel restarts during the warm-up: its updates up to the first one
  # after warmup_steps set the average to the parameters. False: it starts at the initial ones.
  c.ema_warmup_copy = False
  # True: the EMA also averages the batch-norm statistics (same decay and timing), and evaluation
  # pairs the averaged parameters with them, as torchvision's ExponentialMovingAverage
  # (AveragedModel with use_buffers=True) and timm's ModelEmaV2/V3 do. False: it pairs them with
  # the run's own running statistics, and checkpoints keep no averaged statistics. Needs ema_decay.
  c.ema_batch_stats = False
  c.polyak = False  # Keep a Polyak (running mean) average of the parameters for evaluation.
  c.seed = 0

  # --- Loop, logging, checkpoints (incres.train, incres.checkpoint) ---
  c.log_every_steps = 50
  c.device_prefetch = 2  # Batches copied to the devices ahead of the step (0: none).
  c.eval_every_epochs = 42.5  # Evaluate four times a run.
  c.eval_every_steps = ml_collections.config_dict.placeholder(int)  # None: from the epochs.
  c.checkpoint_every_epochs = 42.5
  c.checkpoint_every_steps = ml_collections.config_dict.placeholder(int)  # None: from the epochs.
  c.keep_checkpoints = 3
  c.best_metric = "eval/top1"  # Also keep the best checkpoint by this metric (higher is better).

  # --- Fine-tuning (incres.finetune) ---
  c.init_from = ml_collections.config_dict.placeholder(str)  # Workdir or checkpoint path.
  c.init_from_step = ml_collections.config_dict.placeholder(int)  # None: latest.
  c.freeze_backbone = False
  c.head_learning_rate = ml_collections.config_dict.placeholder(float)  # None: same as the rest.
  return c


def torchvision_ema_decay(decay: float, batch_size: int, every_steps: int, epochs: float) -> float:
  """The EMA decay torchvision's classification recipe really uses for `--model-ema-decay`.

  references/classification/train.py scales `1 - decay` by the number of images between two
  updates over the number of epochs (after pycls), `alpha = min(1, (1 - decay) * batch * every /
  epochs)`: its ResNet-50 recipe (batch 8 x 128, every 32 steps, 600 epochs, 0.99998) averages
  with 1 - 0.00109227. `batch_size` is the global batch (its world size x batch per GPU).
  """
  return 1.0 - min(1.0, (1.0 - decay) * batch_size * every_steps / epochs)


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Every key of `config`, nested ones dotted ("model_kwargs.shortcut")."""
  keys = []
  for key, value in config.items():
    keys.append(prefix + key)
    if hasattr(value, "items"):
      keys += flat_keys(value, prefix + key + ".")
  return keys


def unknown_keys_message(spec: str, keys: list[str]) -> str:
  """What to say when `--config.KEY` overrides name keys that the config `spec` may not have.

  `spec` is the `--config` value ("experiments/<name>.py[:arg]"); the config is loaded again only
  to list its keys and suggest the nearest one for each misspelled key.
  """
  import difflib

  try:
    valid = flat_keys(load(spec))
  except Exception:  # pylint: disable=broad-except  (the config's own error is reported later)
    valid = []
  unknown = [k for k in keys if k not in valid] or keys
  hints = []
  for key in unknown:
    close = difflib.get_close_matches(key, valid, n=1)
    hints.append(f"--config.{key}" + (f" (did you mean --config.{close[0]}?)" if close else ""))
  return (
      f"Unknown config key: {', '.join(hints)}. The config has these keys: {', '.join(valid)}."
      " Fix the spelling, or add the key to incres/configs.py first."
  )


def parse_arg(arg: str | None, **defaults):
  """Parses a config-file argument "key=value,key=value" into a ConfigDict over `defaults`.

  Values are parsed as Python literals where possible ("56" -> 56, "True" -> True), otherwise kept
  as strings. Unknown keys fail with the list of known ones.
  """
  import ast

  parsed = ml_collections.ConfigDict(dict(defaults))
  if not arg:
    return parsed
  for item in arg.split(","):
    if not item.strip():
      continue
    if "=" not in item:
      raise errors.ConfigError(
          f"Config argument {item!r} is not of the form key=value (in {arg!r})."
      )
    key, value = (s.strip() for s in item.split("=", 1))
    if key not in parsed:
      raise errors.ConfigError(
          f"Unknown config argument {key!r} in {arg!r}; known arguments: {sorted(parsed.keys())}."
      )
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass
    parsed[key] = value
  return parsed


def load(spec: str) -> ml_collections.ConfigDict:
  """Loads "experiments/<name>.py[:arg]" as launch.py's --config does (for notebooks and tests).

  A relative path is looked up from the current directory, then from the repository root.
  """
  import importlib.util

  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.exists(os.path.join(root, path)):
      path = os.path.join(root, path)
    else:
      raise errors.MissingFileError(f"No config file {path!r} (looked in . and {root}).")
  module_spec = importlib.util.spec_from_file_location(
      os.path.splitext(os.path.basename(path))[0], path
  )
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


# --- A run's config ------------------------------------------------------------------------------

# Values of `photometric` and `resample` (where part of an augmentation runs).
PHOTOMETRIC_PLACES = ("auto", "host", "device")

# key: (the augmentations it moves work of, what the work is).
_DEVICE_WORK = {
    "photometric": (("googlenet",), "GoogLeNet's colour distortions"),
    "resample": (("resnet_imagenet", "googlenet"), "the crop's resampling (and what follows it)"),
}


def _check_place(config: ml_collections.ConfigDict, key: str) -> str:
  augments, what = _DEVICE_WORK[key]
  place = config.get(key, "auto")
  if place not in PHOTOMETRIC_PLACES:
    raise ValueError(
        f"{key}={place!r} is not a place for {what}: use --config.{key}=auto (the train step on a"
        " GPU or TPU, else the host pipeline), host or device."
    )
  if place == "device" and config.augment not in augments:
    names = " or ".join(repr(a) for a in augments)
    raise ValueError(
        f"{key}='device' moves {what} of augment={names} into the train step, but this run's"
        f" augment is {config.augment!r}, which has none: leave {key} at 'auto'."
    )
  return place


def check_photometric(config: ml_collections.ConfigDict) -> str:
  """`config.photometric`, or ValueError if it is not a place or asks for "device" in vain."""
  return _check_place(config, "photometric")


def check_resample(config: ml_collections.ConfigDict) -> str:
  """`config.resample`, or ValueError if it is not a place, asks for "device" in vain, or would
  resize GoogLeNet's crops in the train step with their colour distortions kept on the host."""
  place = _check_place(config, "resample")
  if place == "device" and config.augment == "googlenet" and config.get("photometric") == "host":
    raise ValueError(
        "resample='device' resizes GoogLeNet's crops in the train step, but photometric='host'"
        " asks for their colour distortions, which come after the resize, in the input pipeline:"
        " leave photometric at 'auto' (or set resample='host')."
    )
  return place


# The centre view's shorter side for a 224 crop: 256 (ResNet §3.4, `incres.data.eval_views`).
EVAL_RESIZE_RATIO = 256 / 224


def eval_view_sizes(config: ml_collections.ConfigDict) -> tuple[int, int] | None:
  """`(shorter side, crop)` of the FixRes-style centre view `config` asks for with
  `eval_resize_size` or `eval_crop_size`, the one left at None at its default (round(image_size ·
  256 / 224), image_size); None when it sets neither (today's view, which older configs, lacking the
  keys, also get).

  Raises ConfigError for a size that is not a whole number above 0, a crop larger than the resized
  image's shorter side, or either key set with an `eval_preprocess` other than "center".
  """
  resize, crop = config.get("eval_resize_size", None), config.get("eval_crop_size", None)
  if resize is None and crop is None:
    return None
  problems = [
      f"{key}={value!r} must be a whole number of pixels, 1 or more"
      for key, value in (("eval_resize_size", resize), ("eval_crop_size", crop))
      if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1)
  ]
  if problems:
    raise errors.ConfigError("; ".join(problems) + " (or None: today's centre view's).")
  if config.eval_preprocess != "center":
    raise errors.ConfigError(
        f"eval_resize_size and eval_crop_size set the centre view, but this run's eval_preprocess"
        f" is {config.eval_preprocess!r}: set --config.eval_preprocess=center, or leave both sizes"
        " at None."
    )
  resize = round(config.image_size * EVAL_RESIZE_RATIO) if resize is None else resize
  crop = config.image_size if crop is None else crop
  if crop > resize:
    raise errors.ConfigError(
        f"eval_crop_size={crop} is larger than the image it is cropped from, whose shorter side is"
        f" resized to eval_resize_size={resize}: use a crop of at most {resize} (torchvision's 2021"
        " recipe: resize 232, crop 224; ResNet strikes back: 235 and 224)."
    )
  return resize, crop


def check_repeated_augmentation(config: ml_collections.ConfigDict, num_processes: int) -> int:
  """`config.repeated_augmentation` (1 for older configs, which lack it); raises ConfigError unless
  it is a whole number, 1 or more, whose copies of each image fill the global batch evenly on every
  one of `num_processes` processes (a streamed dataset's processes each repeat their own images)."""
  k = config.get("repeated_augmentation", 1)
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise errors.ConfigError(
        f"repeated_augmentation={k!r} must be a whole number: 1 (off) or the copies of each image"
        " in a batch (torchvision's and timm's recipes: 3 or 4)."
    )
  unit = k * num_processes
  if config.batch_size % unit:
    suggestion = max(1, round(config.batch_size / unit)) * unit
    raise errors.ConfigError(
        f"repeated_augmentation={k} puts {k} views of each image in the global batch, so"
        f" batch_size={config.batch_size} must be divisible by {k} x the {num_processes}"
        f" process(es) (each process's share holds whole images): use e.g."
        f" --config.batch_size={suggestion}, or another repeated_augmentation."
    )
  return k


# `auto_augment`'s values and `random_erasing_fill`'s (incres.data.autoaugment, .erasing).
AUTO_AUGMENT_POLICIES = ("none", "randaugment", "trivialaugment_wide", "autoaugment_imagenet")
RANDOM_ERASING_FILLS = ("zero", "pixel")
AUTO_AUGMENT_RECIPES = ("random_resized_crop", "cifar")  # The `augment` values that run a policy.
AUTO_AUGMENT_INTERPOLATIONS = ("nearest", "bilinear")
RANDAUGMENT_MAX_MAGNITUDE = 30  # The last of torchvision's 31 magnitude bins.


def check_auto_augment(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for a value of the auto-augment, random-erasing, colour-jitter and
  PCA-lighting keys that is not one, for random erasing or colour without
  augment="random_resized_crop", or for a policy without that recipe or augment="cifar" (the
  recipes that run them)."""
  policy = config.get("auto_augment", "none")
  problems = []
  if policy not in AUTO_AUGMENT_POLICIES:
    problems.append(f"auto_augment={policy!r} is not one of {', '.join(AUTO_AUGMENT_POLICIES)}")
  num_ops = config.get("randaugment_num_ops", 2)
  if isinstance(num_ops, bool) or not isinstance(num_ops, int) or num_ops < 0:
    problems.append(f"randaugment_num_ops={num_ops!r} must be a whole number, 0 or more")
  magnitude = config.get("randaugment_magnitude", 9)
  if not _is_number(magnitude) or not 0 <= magnitude <= RANDAUGMENT_MAX_MAGNITUDE:
    problems.append(
        f"randaugment_magnitude={magnitude!r} must be a number in [0, {RANDAUGMENT_MAX_MAGNITUDE}]"
        " (torchvision's magnitude bins; timm's M of 0-10 is a third of it)"
    )
  std = config.get("randaugment_magnitude_std", 0.0)
  if not _is_number(std) or std < 0:
    problems.append(f"randaugment_magnitude_std={std!r} must be a number, 0 or more")
  interpolation = config.get("auto_augment_interpolation", "nearest")
  if interpolation not in AUTO_AUGMENT_INTERPOLATIONS:
    problems.append(
        f"auto_augment_interpolation={interpolation!r} is not one of"
        f" {', '.join(AUTO_AUGMENT_INTERPOLATIONS)}"
    )
  erasing = config.get("random_erasing", 0.0)
  if not _is_number(erasing) or not 0 <= erasing <= 1:
    problems.append(f"random_erasing={erasing!r} is a probability: a number in [0, 1]")
  fill = config.get("random_erasing_fill", "zero")
  if fill not in RANDOM_ERASING_FILLS:
    problems.append(f"random_erasing_fill={fill!r} is not one of {', '.join(RANDOM_ERASING_FILLS)}")
  jitter = config.get("color_jitter", (0.0, 0.0, 0.0))
  if (
      not isinstance(jitter, (tuple, list))
      or len(jitter) != 3
      or not all(_is_number(s) and 0 <= s <= 1 for s in jitter)
  ):
    problems.append(
        f"color_jitter={jitter!r} must be three numbers in [0, 1], the brightness, contrast and"
        " saturation strengths (e.g. (0.4, 0.4, 0.4): factors in [0.6, 1.4])"
    )
  lighting = config.get("pca_lighting", 0.0)
  if not _is_number(lighting) or lighting < 0:
    problems.append(f"pca_lighting={lighting!r} is a standard deviation: a number, 0 or more")
  if problems:
    raise errors.ConfigError("; ".join(problems) + ". Set --config.<key> to an allowed value.")
  if erasing > 0 and config.augment != "random_resized_crop":
    raise errors.ConfigError(
        "random_erasing runs in augment='random_resized_crop' (torchvision's and timm's ImageNet"
        f" recipe), but this run's augment is {config.augment!r}: set"
        " --config.augment=random_resized_crop, or leave random_erasing at 0."
    )
  colour = [k for k, on in (("color_jitter", any(jitter)), ("pca_lighting", lighting > 0)) if on]
  if colour and config.augment != "random_resized_crop":
    raise errors.ConfigError(
        f"{' and '.join(colour)} run in augment='random_resized_crop' (Bag of Tricks' colour"
        f" augmentation on its crop), but this run's augment is {config.augment!r}, whose recipe"
        " has its own colour (resnet_imagenet: PCA lighting; googlenet: photometric distortions):"
        f" set --config.augment=random_resized_crop, or leave {' and '.join(colour)} at 0."
    )
  if policy != "none" and config.augment not in AUTO_AUGMENT_RECIPES:
    raise errors.ConfigError(
        f"auto_augment={policy!r} runs in augment='random_resized_crop' (torchvision's and timm's"
        " ImageNet recipe) or augment='cifar' (after the pad-crop-flip), but this run's augment is"
        f" {config.augment!r}: set --config.augment to one of those, or leave auto_augment at"
        " 'none'."
    )


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


CIFAR_PADDINGS = ("zero", "reflect")  # `cifar_padding`'s values.


def check_cifar_padding(config: ml_collections.ConfigDict) -> str:
  """`config.cifar_padding` (older configs: "zero"), or ConfigError if it is not one."""
  padding = config.get("cifar_padding", "zero")
  if padding not in CIFAR_PADDINGS:
    raise errors.ConfigError(
        f"cifar_padding={padding!r} is not one of {', '.join(CIFAR_PADDINGS)}: set"
        " --config.cifar_padding=zero (ResNet's zeros after the mean) or reflect (the wide"
        " ResNets' mirrored border)."
    )
  return padding


# Step-valued config keys and the epoch-valued keys they are derived from by `resolve_config`.
EPOCH_KEYS = (
    ("lr_boundaries", "lr_boundary_epochs"),
    ("lr_decay_steps", "lr_decay_epochs"),
    ("warmup_steps", "warmup_epochs"),
    ("eval_every_steps", "eval_every_epochs"),
    ("checkpoint_every_steps", "checkpoint_every_epochs"),
)


def resolve_config(config: ml_collections.ConfigDict, info: Any) -> ml_collections.ConfigDict:
  """A copy of `config` with the values derived from the dataset filled in.

  `num_classes` (-1: the dataset's) and the step counts of a run stated in epochs. With
  N = `info.num_train` (the training split's actual size) and B = `batch_size`:
  `num_train_steps` = max(1, round(num_epochs * N / B)) unless set; every other step value left
  at None is its fraction of the run, round(num_train_steps * value_epochs / num_epochs) (at least
  1 for the decay, eval and checkpoint periods and for a non-zero warm-up). So an explicit
  `num_train_steps` keeps the schedule's proportions, and explicit step values are kept as they are.
  `info` is `incres.data.dataset_info(config)` (anything with `num_classes` and `num_train`).
  """
  config = ml_collections.ConfigDict(config.to_dict())  # Unlocked copy; the caller's is untouched.
  if config.num_classes == -1:
    config.num_classes = info.num_classes
  if config.num_train_steps is None or any(config[k] is None for k, _ in EPOCH_KEYS):
    if not config.num_epochs or config.num_epochs <= 0:
      raise ValueError(
          f"num_epochs={config.num_epochs} must be positive (or set --config.num_train_steps)."
      )
  if config.num_train_steps is None:
    config.num_train_steps = max(1, round(config.num_epochs * info.num_train / config.batch_size))
  for key, epochs_key in EPOCH_KEYS:
    if config[key] is None:
      config[key] = steps_of_epochs(config, epochs_key)
  return config


def steps_of_epochs(config: ml_collections.ConfigDict, epochs_key: str) -> int | tuple[int, ...]:
  """The steps `resolve_config` derives from `config[epochs_key]`: its fraction of the run,
  round(num_train_steps * epochs / num_epochs), at least 1 if not 0 (a tuple for the boundaries,
  which may be 0)."""
  total, epochs = config.num_train_steps, config[epochs_key]

  def steps(e: float, minimum: int) -> int:
    return max(minimum, round(total * e / config.num_epochs)) if e > 0 else 0

  if epochs_key == "lr_boundary_epochs":
    return tuple(steps(e, 0) for e in epochs)
  return steps(epochs, 1)


def describe_run_length(config: ml_collections.ConfigDict, info: Any) -> str:
  """One line for the start of a run: "N examples, E epochs = S steps of batch B; ..."."""
  total, batch = config.num_train_steps, config.batch_size
  epochs = total * batch / info.num_train
  parts = [
      f"{info.num_train:,} examples, {round(epochs, 2):g} epochs = {total:,} steps of batch {batch}"
  ]
  if config.schedule == "piecewise" and config.lr_boundaries:
    steps = ", ".join(f"{b:,}" for b in config.lr_boundaries)
    parts.append(f"lr x{config.lr_decay_factor:g} at steps {steps}")
  elif config.schedule == "exponential":
    parts.append(f"lr x{config.lr_decay_rate:g} every {config.lr_decay_steps:,} steps")
  if config.warmup_steps:
    parts.append(f"warm-up {config.warmup_steps:,} steps")
  parts.append(
      f"eval every {config.eval_every_steps:,}, checkpoint every"
      f" {config.checkpoint_every_steps:,} steps"
  )
  return "; ".join(parts)


def validate(config: ml_collections.ConfigDict, *, num_devices: int, num_processes: int) -> None:
  """Raises ValueError if the resolved `config` cannot run on this many devices and processes."""
  for key in ("batch_size", "eval_batch_size"):
    if config[key] % num_devices or config[key] % num_processes:
      raise ValueError(
          f"{key}={config[key]} is not divisible by the {num_devices} devices"
          f" ({num_processes} processes): every device gets an equal share of the global"
          f" batch. Use a multiple of {num_devices}, e.g. --config.{key}="
          f"{max(1, round(config[key] / num_devices)) * num_devices}."
      )
  for key in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps"):
    if config[key] <= 0:
      raise ValueError(f"{key}={config[key]} must be positive.")
  if config.device_prefetch < 0:
    raise ValueError(f"device_prefetch={config.device_prefetch} must be 0 (off) or more batches.")
  check_photometric(config)
  check_resample(config)
  check_recipe(config)
  check_auto_augment(config)
  check_repeated_augmentation(config, num_processes)
  eval_view_sizes(config)
  check_cifar_padding(config)
  averaged = [n for n, on in (("eval_ema", config.ema_decay), ("eval_polyak", config.polyak)) if on]
  known = [f"{p}/{m}" for p in ["eval"] + averaged for m in ("top1", "top5", "loss")]
  if config.best_metric and config.best_metric not in known:
    raise ValueError(f"best_metric={config.best_metric!r} is not computed; use one of {known}.")


OPTIMIZERS = ("sgd", "rmsprop", "lamb", "lars")
LOSSES = ("softmax_ce", "bce")


def check_recipe(config: ml_collections.ConfigDict) -> None:
  """Raises `errors.ConfigError` for an unknown optimizer or loss, schedule switches that do not
  apply, or mixing or EMA settings out of range. Keys older configs lack are taken at their
  defaults."""
  problems = []
  if config.optimizer not in OPTIMIZERS:
    problems.append(f"optimizer={config.optimizer!r} is not one of {list(OPTIMIZERS)}")
  if config.get("loss", "softmax_ce") not in LOSSES:
    problems.append(f"loss={config.loss!r} is not one of {list(LOSSES)}")
  if config.get("cosine_spans_warmup", False) and config.schedule != "cosine":
    problems.append(f"cosine_spans_warmup=True is for schedule='cosine', not {config.schedule!r}")
  if config.get("lr_per_epoch", False) and not (config.num_epochs and config.num_epochs > 0):
    problems.append(f"lr_per_epoch=True needs num_epochs > 0 to step at, not {config.num_epochs}")
  threshold = config.get("bce_target_threshold", None)
  if threshold is not None and not 0.0 <= threshold < 1.0:
    problems.append(f"bce_target_threshold={threshold} must be in [0, 1) or None")
  for key in ("mixup_alpha", "cutmix_alpha"):
    if config.get(key, 0.0) < 0:
      problems.append(f"{key}={config[key]} must be 0 (off) or positive")
  for key in ("mix_prob", "mix_switch_prob"):
    if not 0.0 <= config.get(key, 0.5) <= 1.0:
      problems.append(f"{key}={config[key]} is a probability, in [0, 1]")
  if config.get("ema_every_steps", 1) < 1:
    problems.append(f"ema_every_steps={config.ema_every_steps} must be 1 or more")
  if config.get("ema_batch_stats", False) and config.get("ema_decay", None) is None:
    problems.append(
        "ema_batch_stats=True averages the batch-norm statistics beside an EMA of the parameters,"
        " but ema_decay is None (no EMA): set ema_decay too, or ema_batch_stats=False"
    )
  if problems:
    raise errors.ConfigError(
        "The config's training recipe is not valid: "
        + "; ".join(problems)
        + ". Fix these with --config.KEY=VALUE (incres/configs.py documents each key)."
    )


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes the resolved config as `config.json` and plain `config.yaml`, atomically."""
  text = config.to_json(indent=2, sort_keys=True)
  fileio.atomic_write_text(os.path.join(workdir, "config.json"), text + "\n")
  # Plain YAML (`yaml.safe_load` reads it), not ConfigDict.to_yaml's `!!python/object` tags.
  fileio.atomic_write_text(
      os.path.join(workdir, "config.yaml"), yaml.safe_dump(json.loads(text), sort_keys=True)
  )
