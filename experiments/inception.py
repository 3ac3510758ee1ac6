r"""python launch.py --config=experiments/inception.py:model=v3 --workdir=runs/inception_v3

Hardware: sized for one GPU (H100 class) at batch 32, the paper's batch per replica; ImageNet
decoding at 299x299 needs many CPU cores (see benchmarks/input_pipeline.py).
Expected time (estimate, not yet measured): Inception-v3, 100 epochs = 4.0M steps of 32, ~2 days on
one H100, input pipeline permitting.
Reproduces Inception-v3 ("Rethinking the Inception Architecture", arXiv 1512.00567): ILSVRC-2012
validation, single model, single crop, top-1 / top-5 error 21.2 % / 5.6 % (abstract, p. 1; also
Inception-v3's row in the Inception-v4 paper's Table 2, not re-checked here), at "5 billion"
multiply-adds (5.713G counted here).
The Inception-v4 paper's nets (arXiv 1602.07261, Table 2: single crop, single model, top-1 / top-5
error on the non-blacklisted part of the ILSVRC-2012 validation set, about 0.3 / 0.15 points better
than the whole set, Section 5): model=v4 20.0 % / 5.0 %, model=resnet_v1 21.3 % / 5.5 %,
model=resnet_v2 19.9 % / 4.9 % (incres.paper.INCEPTION_V4_TOP1_ERR_1CROP / _TOP5_; the v4 and
resnet_v2 values and the table's caption were checked with the search tool, the resnet_v1 row and
the table's page are from our reading of the paper: the stored copies hold the table as an image).
Same hardware; expected time (estimate, not measured): a step costs 2.1x (v4), 1.1x (resnet_v1)
and 1.6x (resnet_v2) Inception-v3's multiply-adds (`python -m incres.summary`), so roughly that
multiple of Inception-v3's ~2 days on one H100.

Arguments (`--config=experiments/inception.py:model=v3,...`):
  model: v3 (InceptionV3), v4 (InceptionV4), resnet_v1 (InceptionResNetV1) or resnet_v2
    (InceptionResNetV2); the last three are the Inception-v4 paper's (arXiv 1602.07261) nets, built
    in incres.models.inception_v4, and take the same recipe (that paper's training methodology, not re-checked here: RMSProp, decay 0.9,
    epsilon 1.0, lr 0.045 decayed by 0.94 every two epochs).
  dataset: imagenet2012 (default; manual download), imagenette, digits, fake, folder:<path>, ...
    32x32 datasets (digits, CIFAR) are resized to 75x75, the smallest input the networks take, and
    train without Inception-v3's auxiliary head (its 5x5/3 pool and 5x5 conv need the 17x17 map
    of a 299x299 input).
  smoke: True shrinks everything to a few steps (dataset fake by default; ~minutes on a laptop,
    most of it compiling the full-size network).
  tiny: True also shrinks the network (a sixteenth of the filters, one module of each kind), so
    that `smoke=True,tiny=True` compiles in seconds: the test suite's launch.py path.

Recipe (Rethinking §8, as quoted from the paper; our search tool only reached its abstract, so
these are not re-checked against the text here): RMSProp with decay 0.9 and epsilon 1.0
(TensorFlow's RMSPropOptimizer: epsilon inside the square root, mean square starting at 1,
momentum 0.9), learning rate 0.045 decayed by 0.94 every two epochs (staircase, optax
`exponential_decay`), gradient clipping at global norm 2.0, label smoothing 0.1 (§7; v3 only: the
Inception-v4 paper's recipe, as we read it, does not mention it), evaluation with a running average of the parameters (EMA,
decay 0.9999 as in Google's Inception training code). The paper trained 50 asynchronous replicas
of batch 32 for 100 epochs; one synchronous batch of 32 here (the paper gives no rule for scaling
the rate with the batch). Not stated by the paper, taken from TF-slim's Inception code: weight
decay 4e-5, auxiliary loss weight 0.4, dropout 20% before the classifier (keep 0.8).
Augmentation: GoogLeNet's (incres.data.googlenet_augment.googlenet_train) -- random crops of 8%-100%
of the area with aspect ratio in [3/4, 4/3], random interpolation to 299x299, flip, photometric
distortions in random order -- the same sampling as TF-slim's `inception_preprocessing` except its
crop area range of 5%-100%. Evaluation: shorter side 342, centre 299 crop (87.4% of the side;
TF-slim's central fraction is 87.5%). Pixels are channel-mean-subtracted on [0, 1]; TF-slim scales
to [-1, 1], a difference the first BatchNorm absorbs.
The data pipeline, the evaluation crops and the run layout are experiments/googlenet.py's: this
config loads that one and overrides the network, the image size and the recipe.

The schedule is stated in epochs (100; decay every 2; evaluation and checkpoints every 4) and
resolved at run time from the training split's actual size (incres.configs.resolve_config): on
ImageNet's 1,281,167 images at batch 32, 4,003,647 steps, the rate x0.94 every 80,073 steps,
evaluation every 160,146.
"""

from __future__ import annotations

import os

import ml_collections

from incres import configs, errors

# The `model` argument -> the incres.models name.
MODELS = {
    "v3": "InceptionV3",
    "v4": "InceptionV4",
    "resnet_v1": "InceptionResNetV1",
    "resnet_v2": "InceptionResNetV2",
}
EPOCHS = 100
DECAY_EVERY_EPOCHS = 2
# tiny=True: Inception-v3's modules cut to one of each kind (the auxiliary head still follows
# mixed_6e); the Inception-v4 family's A, B and C blocks to one each.
TINY_V3_LAYOUT = (
    ("mixed_5b", "A", 32),
    ("mixed_6a", "B", 0),
    ("mixed_6e", "C", 192),
    ("mixed_7a", "D", 0),
    ("mixed_7b", "E", 0),
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The Inception-v3 / v4 recipe for the network chosen by `model`."""
  a = configs.parse_arg(arg, model="v3", dataset="", smoke=False, tiny=False)
  if a.model not in MODELS:
    raise errors.ConfigError(
        f"Unknown model={a.model!r} in --config=experiments/inception.py:{arg}; use one of"
        f" {', '.join(MODELS)} (e.g. --config=experiments/inception.py:model=v3)."
    )
  # GoogLeNet's data and run layout: datasets and splits, its augmentation, the centre-crop
  # evaluation, batch 32, fake and smoke sizes, a staircase exponential decay stated in epochs,
  # evaluation and checkpoints every 4 epochs. Everything else is overridden below.
  googlenet = os.path.join(os.path.dirname(os.path.abspath(__file__)), "googlenet.py")
  c = configs.load(
      f"{googlenet}:bn=True,smoke={a.smoke}" + (f",dataset={a.dataset}" if a.dataset else "")
  )
  c.model = MODELS[a.model]
  small = c.image_size == 32  # googlenet.py's 32x32 datasets (digits, CIFAR).
  if a.model == "v3":
    c.model_kwargs.dropout_rate = 0.2  # TF-slim's keep probability 0.8.
    if small:
      c.model_kwargs.aux_heads = False  # Needs a 299x299 input (see above).

  if a.tiny:
    c.model_kwargs.width = 0.0625
    if a.model == "v3":
      c.model_kwargs.layout = TINY_V3_LAYOUT
    else:
      c.model_kwargs.num_blocks = (1, 1, 1)
  c.image_size = 75 if small else 299

  c.optimizer = "rmsprop"
  c.rmsprop_decay = 0.9
  c.rmsprop_epsilon = 1.0
  c.rmsprop_initial_scale = 1.0  # TensorFlow's RMSPropOptimizer.
  c.momentum = 0.9  # TF-slim's rmsprop_momentum; the paper does not state one.
  c.learning_rate = 0.045
  c.lr_decay_rate = 0.94
  c.grad_clip_norm = 2.0
  c.label_smoothing = 0.1 if a.model == "v3" else 0.0
  c.weight_decay = 4e-5
  c.aux_loss_weight = 0.4
  c.ema_decay = 0.9999
  # Deviation: Google's inception/inception_train.py also averages the BN moving statistics
  # (tf.moving_average_variables()); left off so that runs begun before the switch existed still
  # resume. --config.ema_batch_stats=True on a new run matches the source.
  c.ema_batch_stats = False
  c.polyak = False

  if a.smoke:
    c.fake_image_shape = (320, 320, 3)  # Crops of 299 from every image.
  c.num_epochs = EPOCHS
  c.lr_decay_epochs = DECAY_EVERY_EPOCHS
  return c
