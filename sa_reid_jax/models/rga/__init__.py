"""The Relation-Aware Global Attention network family (RGA-S, -C, -SC)."""

from sa_reid_jax.models.rga.module import RGAModule
from sa_reid_jax.models.rga.module import relation_matrix
from sa_reid_jax.models.rga.network import FROZEN_PARAMETERS
from sa_reid_jax.models.rga.network import RGA_VARIANTS
from sa_reid_jax.models.rga.network import RGANet
from sa_reid_jax.models.rga.network import frozen_parameters
from sa_reid_jax.models.rga.network import rga_variant
from sa_reid_jax.models.rga.maps import rga_maps
