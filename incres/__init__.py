"""incres: paper-faithful GoogLeNet (Inception-v1) and ResNet in JAX/Flax."""

__version__ = "0.1.0"
