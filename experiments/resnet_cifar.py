r"""python launch.py --config=experiments/resnet_cifar.py:depth=56 --workdir=runs/cifar_resnet56

Hardware: sized for one GPU (H100 class); the `dataset=digits` quickstart for a 2-core CPU.
Expected time (estimates, not yet measured): ResNet-20 ~20 min, ResNet-110 ~1.5 h on one H100.
Reproduces ResNet §4.2 / Table 6, CIFAR-10 test error: ResNet-20/32/44/56/110/1202 8.75 / 7.51 /
7.17 / 6.97 / 6.43 (best of 5; mean 6.61) / 7.93 %; `plain=True` gives Figure 6's plain nets.

Arguments (`--config=experiments/resnet_cifar.py:depth=110,plain=False,...`):
  depth: 20 | 32 | 44 | 56 | 110 | 1202 (plain nets: up to 110; preact: 110 | 164 | 1001). 1202 and
    1001 are built in the scanned, rematerialised layout (`model_kwargs.scan_blocks`,
    `remat_blocks`; incres.models.resnet): the unscanned 1202 does not compile in 24 GiB. The other
    depths keep the faster unscanned layout.
  plain: True for the plain twin (same layers, no shortcuts).
  preact: True for the pre-activation ResNets of He et al. 2016 (see below).
  dataset: cifar10 (default), cifar100, digits, fake, folder:<path>, any tfds name.
  val_split: True trains on the first 90% of the training split and evaluates on the last 10%
    (CIFAR-10: the paper's 45k/5k split used to choose the recipe).
  smoke: True shrinks everything to run in about a minute on a laptop (dataset digits by default).
  tiny: True also shrinks the network to width 4 and one unit a stage (whatever the depth), so that
    `smoke=True,tiny=True` compiles in seconds: the test suite's launch.py path.
  model: wrn28_10 for the wide ResNet WRN-28-10 with dropout and its authors' recipe (below; no
    depth, plain or preact argument with it). tiny=True narrows it to k=2, one unit a stage.

Recipe (paper): batch 128, SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 at 32k and
48k iterations, stop at 64k; 4-pixel pad + random 32×32 crop + flip, per-pixel mean subtraction;
test on the single original view. ResNet-110 (and 1202) first train at lr 0.01 until the training
error is below 80%, which the paper says takes about 400 iterations: here a fixed 400-step warm-up.
In epochs of CIFAR-10's 50,000 training images (the paper chose the schedule on a 45k/5k split,
then trained on all 50k): 64k iterations of 128 = 163.84 epochs, the divisions at 81.92 and 122.88
epochs, the warm-up 1.024 epochs, evaluation and checkpoints every 10.24 epochs (4k iterations).
Resolved at run time from the dataset's size (incres.configs.resolve_config): CIFAR-10 and CIFAR-100
give exactly 64,000 steps with boundaries 32,000 and 48,000 (warm-up 400, eval every 4,000);
`val_split=True` (45,000 images) gives the same 163.84 epochs = 57,600 steps, boundaries 28,800
and 43,200 (add --config.num_train_steps=64000 for 64k iterations on the 45k split).

Pre-activation ResNets (He et al. 2016, arXiv 1603.05027), `preact=True`:
python launch.py --config=experiments/resnet_cifar.py:preact=True,depth=164 --workdir=runs/preact164
Same hardware; expected time (estimates, not yet measured): ResNet-164 ~2 h, ResNet-1001 ~12 h on
one H100 (the paper: 27 hours for ResNet-1001 on 2 GPUs of 2016). CifarPreActResNet110 (basic units,
option A), 164 and 1001 (bottleneck units, projection shortcuts). Reproduces Table 3 / Table 4,
CIFAR-10 test error 6.37 / 5.46 / 4.92 % (medians of 5 runs), CIFAR-100 (`dataset=cifar100`) 24.33 /
22.71 % for 164 / 1001. The recipe is the one above (the Appendix: "same as [1]", lr 0.1 divided by
10 at 32k and 48k iterations, batch 128, weight decay 1e-4, momentum 0.9, translation and flipping),
with the 400-iteration warm-up at lr 0.01 for every depth ("for all CIFAR experiments", although
"not necessary for our proposed Residual Unit"). The Appendix names only the divisions; the stop at
64k iterations is [1]'s ("hyperparameters are the same as those in [1]"). ResNet-1001's 4.62 % in
the abstract used mini-batch 64 (--config.batch_size=64; the authors' Torch code ran 200 epochs).

Wide ResNets (Zagoruyko & Komodakis 2016, arXiv 1605.07146), `model=wrn28_10`:
python launch.py --config=experiments/resnet_cifar.py:model=wrn28_10 --workdir=runs/wrn28_10
Same hardware; expected time (estimate, not measured): a few hours on one H100 (36.5M parameters,
5.24G multiply-adds an image: ~3e17 floating-point operations over 78,125 steps of 128).
Reproduces the authors' WRN-28-10-dropout: CIFAR-10 test error 3.89 %, CIFAR-100 18.85 %
(`dataset=cifar100`), medians of 5 runs (the authors' README; the paper's table: not confirmed
here). Nothing was trained here, so no error is estimated. Recipe (the authors' code,
szagoruyko/wide-residual-networks: scripts/train_cifar.sh and train.lua; incres/paper.py's
RECIPES["wrn28_10"], checked by tests/test_published_recipes.py): dropout 0.3 between each unit's
convolutions, batch 128, SGD with Nesterov momentum 0.9 (dampening 0), lr 0.1 multiplied by 0.2 at
epochs 60, 120 and 160 of 200, weight decay 5e-4 on every parameter (optim.sgd's weightDecay: the
BN scales and offsets and the fc's bias too), flip and a random 32x32 crop of the image reflected
4 pixels out (`cifar_padding="reflect"`), mean/std normalisation; test on the single original
view. Resolved on CIFAR's 50,000 images: 78,125 steps, the decays at steps 23,438, 46,875 and
62,500. Deviations: the authors' Lua loop may drop each epoch's last partial batch (390 steps an
epoch, not 390.6: not confirmed here). They normalise by CIFAR-10's channel mean and std
((125.3, 123.0, 113.9) / 255, (63.0, 62.1, 66.7) / 255); incres' per-channel normalisation is
ImageNet's (normalize="mean_std": within 0.04 of that mean and 10% of that std), the nearest here.

Quickstart, `dataset=digits` (scikit-learn's 1,497 training digits, 32×32): the same recipe
shortened to 34.2 epochs = 400 steps, the boundaries at the same fractions (50%, 75%: steps 200
and 300), the warm-up scaled alike, evaluation and checkpoints every 100 steps, a log line every 10.
Measured through launch.py on 2 CPU cores (other jobs finished, float32): 4 min 28 s wall-clock
including compilation, test top-1 92.0% at step 200, 97.67% at steps 300 and 400 (top-5 100%).
"""

from __future__ import annotations

import ml_collections

from incres import configs, errors

PAPER_STEPS = 64_000
PAPER_BOUNDARIES = (32_000, 48_000)
PAPER_WARMUP_STEPS = 400  # ResNet-110: lr 0.01 "until the training error is below 80%".
PAPER_EVAL_EVERY_STEPS = 4_000
PAPER_BATCH = 128
CIFAR10_NUM_TRAIN = 50_000  # The paper's final runs trained on all of CIFAR-10's training set.
# 64k iterations of 128 over 50k images: 163.84 epochs (the schedule below keeps its fractions).
PAPER_EPOCHS = PAPER_STEPS * PAPER_BATCH / CIFAR10_NUM_TRAIN
DIGITS_EPOCHS = 34.2  # Quickstart: 400 steps of 128 on digits' 1,497 training images.


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The CIFAR ResNet / plain net of `depth` with the paper's recipe."""
  a = configs.parse_arg(
      arg,
      depth=20,
      plain=False,
      preact=False,
      dataset="",
      val_split=False,
      smoke=False,
      tiny=False,
      model="",
  )
  if a.model:
    if a.model != "wrn28_10":
      raise errors.ConfigError(
          f"Unknown model argument {a.model!r}: use model=wrn28_10 (the wide ResNet), or leave it"
          " out for the ResNets chosen by depth."
      )
    if a.depth not in (20, 28) or a.plain or a.preact:
      raise errors.ConfigError(
          "model=wrn28_10 is the 28-layer wide ResNet: give it no depth, plain or preact argument."
      )
    return wrn28_10(a)
  if a.preact:
    if a.plain or a.depth not in (110, 164, 1001):
      raise ValueError(
          f"preact=True takes depth 110, 164 or 1001 (He et al. 2016) and no plain=True, not"
          f" depth={a.depth}, plain={a.plain}."
      )
  elif a.depth not in (20, 32, 44, 56, 110, 1202) or (a.plain and a.depth == 1202):
    raise ValueError(
        f"depth must be 20, 32, 44, 56, 110 or 1202 (plain: up to 110), not {a.depth}."
    )
  c = configs.base_config()
  if a.preact:
    c.model = f"CifarPreActResNet{a.depth}"
  else:
    c.model = f"CifarPlain{a.depth}" if a.plain else f"CifarResNet{a.depth}"
  _data(c, a)
  # 111 / 200 units a stage: compiled once per stage (scan_blocks).
  if a.depth in (1001, 1202) and not a.tiny:
    c.model_kwargs.scan_blocks = True
    c.model_kwargs.remat_blocks = True  # Batch 128 would otherwise keep ~19 GiB of activations.

  if a.tiny:
    c.model_kwargs.width, c.model_kwargs.stage_sizes = 4, (1, 1, 1)

  c.image_size = 32
  c.augment = "cifar"
  c.eval_preprocess = "single"
  c.normalize = "pixel_mean"

  c.batch_size = PAPER_BATCH
  c.eval_batch_size = 500
  c.optimizer = "sgd"
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.weight_decay = 1e-4
  c.schedule = "piecewise"
  c.lr_decay_factor = 0.1
  c.num_epochs = DIGITS_EPOCHS if c.dataset == "digits" else PAPER_EPOCHS
  # The schedule keeps the paper's proportions whatever the length (32k/64k and 48k/64k).
  scale = c.num_epochs / PAPER_STEPS  # Epochs per paper iteration.
  c.lr_boundary_epochs = tuple(b * scale for b in PAPER_BOUNDARIES)
  if a.depth >= 110:  # Every preact depth: the 2016 paper warms up "for all CIFAR experiments".
    c.warmup_epochs = PAPER_WARMUP_STEPS * scale
    c.warmup_learning_rate = 0.01
  c.eval_every_epochs = c.checkpoint_every_epochs = PAPER_EVAL_EVERY_STEPS * scale
  c.log_every_steps = 100
  if c.dataset == "digits":  # 400 steps: evaluate 4 times, log 40 times.
    c.eval_every_epochs = c.checkpoint_every_epochs = c.num_epochs / 4
    c.log_every_steps = 10
  return _smoke_and_fake(c, a)  # smoke: boundaries at steps 10 and 15.


def _data(c: ml_collections.ConfigDict, a: ml_collections.ConfigDict) -> None:
  """Both recipes' dataset (CIFAR-10 unless named; digits for a smoke run) and splits."""
  c.dataset = a.dataset or ("digits" if a.smoke else "cifar10")
  if a.val_split:
    c.train_split, c.eval_split = "train[:90%]", "train[90%:]"  # CIFAR-10: 45k / 5k.
  else:
    c.train_split, c.eval_split = "train", "test"


def _smoke_and_fake(
    c: ml_collections.ConfigDict, a: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
  """Both recipes' last words: smoke=True's 20 steps (whatever the dataset; the schedule keeps its
  fractions), evaluated 4 times; fake images in CIFAR's shape."""
  if a.smoke:
    c.batch_size, c.eval_batch_size, c.num_train_steps = 32, 100, 20
    c.eval_every_epochs = c.checkpoint_every_epochs = c.num_epochs / 4
    c.log_every_steps = 1
  if c.dataset == "fake":
    c.fake_image_shape = (32, 32, 3)
  return c


# The wide ResNets' recipe (the authors' scripts/train_cifar.sh and train.lua): incres/paper.py's
# RECIPES["wrn28_10"] cites each value.
WRN_EPOCHS = 200
WRN_BOUNDARY_EPOCHS = (60, 120, 160)


def wrn28_10(a: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """WRN-28-10 with dropout 0.3 and its authors' CIFAR recipe (the module docstring)."""
  c = configs.base_config()
  c.model = "WRN28_10"
  c.model_kwargs = ml_collections.ConfigDict({"dropout_rate": 0.3})
  if a.tiny:
    c.model_kwargs.update(widen_factor=2, stage_sizes=(1, 1, 1))
  _data(c, a)
  c.image_size = 32
  c.augment, c.cifar_padding = "cifar", "reflect"
  c.eval_preprocess = "single"
  c.normalize = "mean_std"  # Per channel; ImageNet's constants (deviation: the docstring).

  c.batch_size = 128
  c.eval_batch_size = 500
  c.optimizer, c.momentum, c.nesterov = "sgd", 0.9, True
  c.learning_rate = 0.1
  c.schedule, c.lr_decay_factor = "piecewise", 0.2
  c.num_epochs = WRN_EPOCHS
  c.lr_boundary_epochs = WRN_BOUNDARY_EPOCHS
  c.lr_per_epoch = True  # train.lua sets the rate at each epoch's start (the same rates here).
  c.weight_decay = 5e-4
  c.decay_norms = c.decay_biases = True  # optim.sgd decays every parameter.
  c.eval_every_epochs = c.checkpoint_every_epochs = 10
  c.log_every_steps = 100
  return _smoke_and_fake(c, a)
