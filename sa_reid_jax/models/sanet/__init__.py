"""The SA network family: the spatial attention layer and SANet."""

from sa_reid_jax.models.sanet.attention import NORMALIZATIONS
from sa_reid_jax.models.sanet.attention import apply_spatial_attention
from sa_reid_jax.models.sanet.attention import spatial_attention_map
from sa_reid_jax.models.sanet.network import DTYPES
from sa_reid_jax.models.sanet.network import SANet
from sa_reid_jax.models.sanet.network import VARIANTS
from sa_reid_jax.models.sanet.network import l2_normalize
from sa_reid_jax.models.sanet.network import per_example_dropout
from sa_reid_jax.models.sanet.network import sanet_variant
from sa_reid_jax.models.sanet.network import stripe_pool
from sa_reid_jax.models.sanet.maps import sa_maps
