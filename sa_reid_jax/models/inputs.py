"""What the networks take as input: ImageNet-normalised RGB.

The statistics belong to the networks (their ImageNet backbones were
trained with them), so every path to a network, the input pipelines, the
accelerator augmentation, the exports and `FeatureExtractor`, normalises
with these.
"""

import numpy as np

# ImageNet's per-channel pixel mean and standard deviation (RGB, pixels in
# [0, 1]): the statistics the pretrained backbones were trained with, so
# every input is normalised with them (torchvision's ImageNet weights).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(pixels: np.ndarray) -> np.ndarray:
  """(pixel / 255 - mean) / std per channel.

  Args:
    pixels: float32 (..., 3) RGB in [0, 255].

  Returns:
    float32 array of the same shape.
  """
  scale = np.array([1 / (255 * s) for s in IMAGENET_STD], np.float32)
  shift = np.array([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)],
                   np.float32)
  return (pixels * scale + shift).astype(np.float32)
