r"""python launch.py --config=experiments/resnet_imagenet.py:depth=50 --workdir=runs/resnet50

Hardware: sized for one 8-accelerator host (batch 256 = 32 per device); runs on one GPU too.
Expected time (estimate, not yet measured): ResNet-50, 120 epochs, ~2 days on one H100, input
pipeline permitting (ImageNet decoding needs many CPU cores; see benchmarks/input_pipeline.py).
Reproduces ResNet Table 3 / Table 2, ImageNet val 10-crop top-1 error: ResNet-18 27.88, ResNet-34
A/B/C 25.03/24.52/24.19, ResNet-50 22.85, -101 21.75, -152 21.43, plain-18 27.94, plain-34 28.54 %.
This config evaluates one centre crop, which the paper does not report; expect ~1-2 points more.

Arguments (`--config=experiments/resnet_imagenet.py:depth=34,shortcut=C,...`):
  depth: 18 | 34 | 50 | 101 | 152.
  plain: True for the plain twin (the paper's plain-18 and plain-34 only).
  shortcut: A | B | C (§3.3). Default: A for 18 and 34 (the Table 2 comparison with plain nets),
    B for 50, 101 and 152 (the paper's choice for the bottleneck nets).
  dataset: imagenet2012 (default; manual download), imagenette, digits, fake, folder:<path>, ...
  smoke: True shrinks everything to run in about a minute on a laptop (dataset fake by default).

Recipe (§3.4): batch 256, SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 "when the
error plateaus", up to 60×10^4 iterations. A plateau rule is not reproducible, so the rate is
divided at fixed epochs 30, 60 and 90 of 120 (600k iterations at batch 256 is 119.9 epochs; the
30-epoch steps are what torchvision's reference recipe settled on). Augmentation: shorter side
uniform in [256, 480], random 224 crop, flip, mean subtraction, AlexNet PCA colour noise
(σ = 0.1; the crop's resampling, flip and colour in the train step on a GPU or TPU, config
`resample`: the host decodes only the crop's JPEG window); evaluation: shorter side 256, centre
224 crop.

The length is stated in epochs and resolved at run time from the training split's actual size
(incres.configs.resolve_config): ImageNet's 1,281,167 images at batch 256 give 600,547 steps (the
paper's 60×10^4 iterations are 119.9 epochs), the divisions at steps 150,137, 300,274 and 450,410,
evaluation and checkpoints every 5 epochs (25,023 steps).

Other datasets keep the recipe in epochs. 32×32 datasets (digits, CIFAR) use image_size 32: the
scale augmentation and the eval resize are scaled by 32/224 (shorter side in [37, 69], eval resize
37), and the ImageNet network keeps its stem, so the final feature map is 1×1. That is the recipe
transplanted, not a good small-image network (use resnet_cifar.py for that).
"""

from __future__ import annotations

import ml_collections

from incres import configs

EPOCHS = 120
BOUNDARY_EPOCHS = (30, 60, 90)
SMALL_IMAGE_DATASETS = ("digits", "cifar10", "cifar100")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """ResNet / plain net of `depth` on ImageNet with the paper's recipe."""
  a = configs.parse_arg(arg, depth=50, plain=False, shortcut="", dataset="", smoke=False)
  if a.depth not in (18, 34, 50, 101, 152):
    raise ValueError(f"depth must be 18, 34, 50, 101 or 152, not {a.depth}.")
  if a.plain and a.depth not in (18, 34):
    raise ValueError(f"The paper's plain nets are plain-18 and plain-34, not plain-{a.depth}.")
  shortcut = a.shortcut or ("A" if a.depth in (18, 34) else "B")
  if shortcut not in ("A", "B", "C"):
    raise ValueError(f"shortcut must be A, B or C, not {shortcut!r}.")

  c = configs.base_config()
  c.model = f"Plain{a.depth}" if a.plain else f"ResNet{a.depth}"
  c.model_kwargs = ml_collections.ConfigDict({"shortcut": shortcut})
  c.dataset = a.dataset or ("fake" if a.smoke else "imagenet2012")

  c.train_split = "train"
  c.eval_split = "validation" if c.dataset in ("imagenet2012", "imagenette") else "test"
  c.image_size = 32 if c.dataset in SMALL_IMAGE_DATASETS else 224
  c.augment = "resnet_imagenet"
  c.eval_preprocess = "center"
  c.normalize = "channel_mean"

  c.batch_size = 256
  c.eval_batch_size = 500
  c.optimizer = "sgd"
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.weight_decay = 1e-4
  c.schedule = "piecewise"
  c.lr_decay_factor = 0.1

  if c.dataset == "fake":
    c.fake_image_shape = (375, 500, 3)  # A typical ImageNet photo.
    c.num_classes = 1000
  if a.smoke:
    c.image_size, c.batch_size, c.eval_batch_size = min(c.image_size, 64), 8, 8
    c.fake_image_shape, c.fake_num_train, c.fake_num_eval = (80, 96, 3), 64, 16
    c.num_classes = 10 if c.dataset == "fake" else c.num_classes
  c.num_epochs = EPOCHS
  c.lr_boundary_epochs = BOUNDARY_EPOCHS
  c.log_every_steps = 100
  c.eval_every_epochs = c.checkpoint_every_epochs = 5
  if a.smoke:  # A fixed handful of steps on any dataset.
    c.num_train_steps, c.lr_boundaries = 4, (2, 3)
    c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 1, 2, 2
  return c
