"""The Consistent Attentive Siamese Network family (IDE and PCB heads)."""

from sa_reid_jax.models.casn.network import CASN_VARIANTS
from sa_reid_jax.models.casn.network import CASNNet
from sa_reid_jax.models.casn.network import HEADS
from sa_reid_jax.models.casn.network import casn_variant
from sa_reid_jax.models.casn.maps import casn_maps
