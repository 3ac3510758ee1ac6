r"""python launch.py --config=experiments/finetune.py:dataset=imagenette --config.init_from=runs/imported_resnet50 --workdir=runs/ft_imagenette

Hardware: sized for one GPU (imagenette, 224×224); `dataset=digits` runs on a 2-core CPU.
Expected time (estimates): imagenette ~15 min on one H100; digits ~2 min on 2 CPU cores.
Reproduces no paper number: transfer learning from a trained run or from torchvision's ImageNet
weights (e.g. torchvision's ResNet-50: 76.13% ImageNet top-1), the way the papers' features are reused.

Weights come from `config.init_from`: a training run's workdir, or the --out of
  python -m incres.convert_torch --model=resnet50 --weights=resnet50-0676ba61.pth --out=runs/imported_resnet50
No model flag is needed: the architecture (`model`, the backbone's `model_kwargs`, `normalize`) is
taken from the source run, so the new head is the only difference. Values you set explicitly are
kept and must match the source (a different model or depth fails with the mismatch). The log (and
`init_from.txt` in the workdir) lists every array that was loaded, re-initialised or skipped.

Arguments (`--config=experiments/finetune.py:dataset=cifar10,freeze=True,...`):
  model: "" (default) takes the source run's model; a name must equal it. Naming a Cifar* model
    also picks the 32-pixel CIFAR view for any dataset.
  dataset: imagenette (default), cifar10, cifar100, folder:<path>, digits, fake, any tfds name.
  freeze: True trains only the new head (a linear probe: the backbone and its BN statistics stay
    bitwise unchanged); False (default) fine-tunes everything, the head at 10× the rate.
  smoke: True shrinks everything to a few steps.

Recipe: SGD momentum 0.9, weight decay 1e-4, cosine decay over 5 epochs, lr 0.01 for the backbone
and 0.1 for the head (0.1 for a frozen backbone's head), batch 64; the source run's input
normalisation (torchvision's mean/std for imported weights); 32-pixel CIFAR views for digits, CIFAR
and Cifar* models, otherwise 224-pixel crops with an ImageNet-style centre crop for evaluation.
The 5 epochs are of the dataset's actual training split, turned into steps when the run starts
(imagenette's 9,469 images: 740 steps; a 54-image folder: 4 steps); evaluation and the checkpoint
at the end.
"""

from __future__ import annotations

import ml_collections

from incres import configs

EPOCHS = 5


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Fine-tune `init_from` onto `dataset` with a new head."""
  a = configs.parse_arg(arg, model="", dataset="imagenette", freeze=False, smoke=False)
  c = configs.base_config()
  # Inherited from init_from unless set (incres.finetune.inherit_architecture): "" is the source's
  # model, unnamed backbone keywords are the source's, "auto" is the source's normalisation.
  c.model = a.model
  c.model_kwargs = ml_collections.ConfigDict()
  c.normalize = "auto"
  c.dataset = a.dataset
  small = a.dataset == "digits" or a.dataset.startswith("cifar") or a.model.startswith("Cifar")
  c.image_size = 32 if small else 224
  c.augment = "cifar" if small else "resnet_imagenet"
  c.eval_preprocess = "single" if small else "center"

  c.freeze_backbone = a.freeze
  c.batch_size = 64
  c.eval_batch_size = 200
  c.learning_rate = 0.1 if a.freeze else 0.01
  c.head_learning_rate = 0.1
  c.momentum = 0.9
  c.weight_decay = 1e-4
  c.schedule = "cosine"
  c.lr_boundary_epochs = ()  # Unused by the cosine schedule.
  # Epochs of the dataset's actual training split, resolved to steps when the run starts.
  c.num_epochs = EPOCHS
  c.eval_every_epochs = c.checkpoint_every_epochs = EPOCHS  # At the end.
  c.log_every_steps = 20
  if a.smoke:
    c.batch_size, c.eval_batch_size, c.num_train_steps = 16, 64, 10
    c.log_every_steps = 1
  return c
