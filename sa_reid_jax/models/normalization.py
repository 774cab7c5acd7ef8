"""BatchNorm with PyTorch's semantics.

`flax.linen.BatchNorm` updates its running variance with the *biased* batch
variance, whereas PyTorch uses the unbiased one (n / (n - 1)). Converted
checkpoints and the parity tests need PyTorch's rule, so the project uses this
module everywhere a BatchNorm appears.
"""

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch defaults. PyTorch's momentum m is the weight of the *new* batch
# statistic: running = (1 - m) * running + m * batch.
TORCH_BN_EPS = 1e-5
TORCH_BN_MOMENTUM = 0.1


class BatchNorm(nn.Module):
  """BatchNorm over all axes but the last, matching `torch.nn.BatchNorm2d`.

  Statistics are computed in float32 (float64 for a float64 compute dtype)
  and kept in float32 variables whatever the compute dtype.

  Attributes:
    momentum: PyTorch-style momentum (weight of the new batch statistic).
    epsilon: added to the variance before the square root.
    dtype: dtype of the output.
    axis_name: if set, batch statistics are averaged over this mapped axis
      (synchronised BatchNorm across devices).
    scale_init: initialiser of the scale (PyTorch >= 1.0: ones).
  """
  momentum: float = TORCH_BN_MOMENTUM
  epsilon: float = TORCH_BN_EPS
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None
  scale_init: Callable[..., jax.Array] = nn.initializers.ones

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    features = x.shape[-1]
    scale = self.param('scale', self.scale_init, (features,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (features,), jnp.float32)
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,),
                                 jnp.float32)
    running_var = self.variable('batch_stats', 'var', jnp.ones, (features,),
                                jnp.float32)

    x32 = x.astype(jnp.promote_types(jnp.float32, self.dtype))
    if train:
      reduce_axes = tuple(range(x.ndim - 1))
      # Two passes (mean, then mean squared deviation) rather than
      # E[x^2] - E[x]^2, which loses precision in float32 when |mean| >> std.
      mean = jnp.mean(x32, axis=reduce_axes)
      if self.axis_name is not None:
        mean = jax.lax.pmean(mean, self.axis_name)
      var = jnp.mean(jnp.square(x32 - mean), axis=reduce_axes)
      count = x32.size // features
      if self.axis_name is not None:
        var = jax.lax.pmean(var, self.axis_name)
        count = count * jax.lax.psum(1, self.axis_name)
      # Offered to callers that make 'intermediates' mutable (CASN's
      # Grad-CAM re-runs a head with its batch's statistics as constants);
      # a no-op otherwise.
      self.sow('intermediates', 'batch_moments', (mean, var))
      if not self.is_initializing():
        # PyTorch keeps the unbiased variance in its running estimate.
        unbiased_var = var * count / jnp.maximum(count - 1, 1)
        running_mean.value = ((1 - self.momentum) * running_mean.value +
                              self.momentum * mean)
        running_var.value = ((1 - self.momentum) * running_var.value +
                             self.momentum * unbiased_var)
    else:
      mean, var = running_mean.value, running_var.value

    multiplier = scale * jax.lax.rsqrt(var + self.epsilon)
    y = x32 * multiplier + (bias - mean * multiplier)
    return y.astype(self.dtype)
