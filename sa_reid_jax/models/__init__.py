"""Networks: the ResNet backbone, the model families and their registry."""

from sa_reid_jax.models.normalization import BatchNorm
from sa_reid_jax.models.resnet import ResNet
from sa_reid_jax.models.resnet import ResNet50
from sa_reid_jax.models.sanet import apply_spatial_attention
from sa_reid_jax.models.sanet import spatial_attention_map
from sa_reid_jax.models.sanet import SANet
from sa_reid_jax.models.sanet import VARIANTS
from sa_reid_jax.models.sanet import sanet_variant
from sa_reid_jax.models.rga import RGA_VARIANTS
from sa_reid_jax.models.rga import RGAModule
from sa_reid_jax.models.rga import RGANet
from sa_reid_jax.models.rga import rga_variant
from sa_reid_jax.models.casn import CASN_VARIANTS
from sa_reid_jax.models.casn import CASNNet
from sa_reid_jax.models.casn import casn_variant
from sa_reid_jax.models.registry import FAMILIES
from sa_reid_jax.models.registry import build
