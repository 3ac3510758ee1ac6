"""Every network by name: `getattr(incres.models, NAME)(num_classes=N, dtype=...)`."""

from incres import errors
from incres.models.googlenet import (
    GoogLeNet,
    GoogLeNet32,
    GoogLeNetBN,
    GoogLeNetBN32,
    InceptionModule,
    InceptionRow,
    TABLE1,
)

# --- Inception-v3 (issue #16) ---
from incres.models.inception_v3 import InceptionV3

# --- end Inception-v3 ---
# --- Inception-v4 / Inception-ResNet (incres/models/inception_v4.py) ---
from incres.models.inception_v4 import (
    InceptionBlock,
    InceptionResNetV1,
    InceptionResNetV1_32,
    InceptionResNetV2,
    InceptionResNetV2Timm,
    InceptionV4,
    InceptionV4Family,
    InceptionV4Timm,
)
from incres.models.resnet import (
    BasicBlock,
    Bottleneck,
    CifarPlain20,
    CifarPlain32,
    CifarPlain44,
    CifarPlain56,
    CifarPlain110,
    CifarResNet20,
    CifarResNet32,
    CifarResNet44,
    CifarResNet56,
    CifarResNet110,
    CifarResNet1202,
    Plain18,
    Plain34,
    ResNet,
    ResNet18,
    ResNet34,
    ResNet50,
    ResNet101,
    ResNet152,
)

# --- ResNet descendants (issue #26): ResNeXt, wide ResNets, Bag of Tricks' ResNet-B/C/D ---
from incres.models.resnet import (
    ResNeXt50_32x4d,
    ResNeXt101_32x8d,
    ResNeXt101_64x4d,
    ResNet50B,
    ResNet50C,
    ResNet50D,
    ResNet101D,
    WideResNet50_2,
    WideResNet101_2,
)

# --- Pre-activation ResNets (He et al. 2016) ---
from incres.models.preact_resnet import (
    CifarPreActResNet110,
    CifarPreActResNet164,
    CifarPreActResNet1001,
    PreActBasicBlock,
    PreActBottleneck,
    PreActResNet,
    PreActResNet18,
    PreActResNet34,
    PreActResNet50,
    PreActResNet101,
    PreActResNet152,
    PreActResNet200,
    WRN28_10,
)

# Named models and the input size each was designed for.
MODELS = {
    "GoogLeNet": 224,
    "GoogLeNetBN": 224,
    "GoogLeNet32": 32,
    "GoogLeNetBN32": 32,
    "ResNet18": 224,
    "ResNet34": 224,
    "ResNet50": 224,
    "ResNet101": 224,
    "ResNet152": 224,
    "Plain18": 224,
    "Plain34": 224,
    "CifarResNet20": 32,
    "CifarResNet32": 32,
    "CifarResNet44": 32,
    "CifarResNet56": 32,
    "CifarResNet110": 32,
    "CifarResNet1202": 32,
    "CifarPlain20": 32,
    "CifarPlain32": 32,
    "CifarPlain44": 32,
    "CifarPlain56": 32,
    "CifarPlain110": 32,
    # --- Pre-activation ResNets (He et al. 2016) ---
    "PreActResNet18": 224,
    "PreActResNet34": 224,
    "PreActResNet50": 224,
    "PreActResNet101": 224,
    "PreActResNet152": 224,
    "PreActResNet200": 224,
    "CifarPreActResNet110": 32,
    "CifarPreActResNet164": 32,
    "CifarPreActResNet1001": 32,
    # --- ResNet descendants (issue #26) ---
    "ResNeXt50_32x4d": 224,
    "ResNeXt101_32x8d": 224,
    "ResNeXt101_64x4d": 224,
    "WideResNet50_2": 224,
    "WideResNet101_2": 224,
    "WRN28_10": 32,
    "ResNet50B": 224,
    "ResNet50C": 224,
    "ResNet50D": 224,
    "ResNet101D": 224,
    # --- Inception-v3 (issue #16) ---
    "InceptionV3": 299,
    # --- end Inception-v3 ---
    # --- Inception-v4 / Inception-ResNet ---
    "InceptionV4": 299,
    "InceptionV4Timm": 299,
    "InceptionResNetV1": 299,
    "InceptionResNetV1_32": 32,
    "InceptionResNetV2": 299,
    "InceptionResNetV2Timm": 299,
}


def get_model(name: str, **kwargs):
  """Builds a named model, with a clear error for an unknown name."""
  if name not in MODELS:
    raise errors.ConfigError(
        f"Unknown model {name!r}. incres.models has: {', '.join(MODELS)}. Set config.model to one "
        "of these (e.g. --config.model=CifarResNet20)."
    )
  return globals()[name](**kwargs)
