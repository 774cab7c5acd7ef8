"""sa-reid-jax: the Parameter-Free Spatial Attention re-id network in JAX."""
