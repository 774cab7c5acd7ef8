"""Importing PyTorch weights: torchvision ResNet-50, official SA and RGA."""

from sa_reid_jax.convert.convert import FORMATS
from sa_reid_jax.convert.convert import ConversionResult
from sa_reid_jax.convert.convert import convert_checkpoint
from sa_reid_jax.convert.readers import ConversionError
from sa_reid_jax.convert.readers import read_weights
