"""sa-reid-jax: the Parameter-Free Spatial Attention re-id network in JAX."""

from sa_reid_jax.models.store import load_model
from sa_reid_jax.models.store import save_model
