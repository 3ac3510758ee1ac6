"""ImageNet's RGB pixel statistics on the [0, 1] scale: the mean and std the images are normalised
by, and the colour covariance's principal components (AlexNet's PCA colour augmentation).

Pixel values are scaled to [0, 1] before the mean is subtracted. The papers' Caffe-era pipelines
worked on raw 0–255 values; the scale is absorbed by the BatchNorm after the first convolution and
[0, 1] keeps every input O(1) for the models without BatchNorm (GoogLeNet with LRN).

Plain tuples (no TensorFlow): `incres.export` and `incres.evaluate` read them too.
"""

# Per-channel RGB mean of ImageNet on the [0, 1] scale (the values torchvision and the Flax example
# use). The ResNet paper subtracts a per-pixel mean; over random scales and crops of ImageNet that
# mean image is spatially flat, so a per-channel mean is the same thing in practice.
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
# torchvision's normalisation divides by these too (normalize="mean_std", for imported weights).
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)

# AlexNet's PCA colour augmentation (Krizhevsky et al. 2012, §4.1): eigenvalues and eigenvectors
# (columns) of the 3×3 covariance of ImageNet RGB pixels on the [0, 1] scale, as published with
# fb.resnet.torch (55.46, 4.794, 1.148 on the 0–255 scale).
PCA_EIGENVALUES = (0.2175, 0.0188, 0.0045)
PCA_EIGENVECTORS = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
