"""The SA network's pictures: class activation maps and SA maps.

CAM (Zhou et al. 2016) of every supervised stage: each head pools, reduces
and classifies linearly, so applying it at each position gives a map whose
mean is the class's logit. Maps are (B, h, w) float32 at the resolution of
the stage they come from.
"""

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp

from sa_reid_jax.models.normalization import BatchNorm
from sa_reid_jax.models.resnet import backbone_stages
from sa_reid_jax.models.sanet.network import DS_STAGES, SANet


def sa_maps(model: SANet, variables: Any, images: jax.Array,
            classes: Optional[Sequence[int]] = None) -> dict[str, Any]:
  """CAMs of every supervised stage, and the SA maps, for a batch.

  Args:
    model: the network (needs deep supervision for stages 1-3).
    variables: its variables.
    images: (B, H, W, 3) float32, preprocessed as for evaluation.
    classes: the class of each image; None for the global head's argmax.

  Returns:
    ``cams``: stage name -> (B, h, w) float32 maps (class score per
    position); ``attention``: stage name -> (B, h, w) SA weights;
    ``attention_name``: how the picture labels them (``'SA'``);
    ``classes``: (B,) int; ``logits``: stage name -> (B,) logit of the
    class from the network itself (for checking).
  """
  outputs, stages = backbone_stages(model, variables, images)
  params = variables['params']
  if classes is None:
    classes = jnp.argmax(outputs['global_logits'], axis=-1)
  classes = jnp.asarray(classes)
  attention = outputs['attention']
  cams, logits = {}, {}
  if model.deep_supervision:
    for i, stage in enumerate(DS_STAGES, start=1):
      x = stages[stage].astype(jnp.float32)
      if stage in attention:
        x = x * attention[stage][..., None]  # the map the head pools
      weights = params[f'ds_classifier{i}']['kernel'][:, classes].T  # (B, F)
      reduced = x @ params[f'ds_reduce{i}']['kernel']  # (B, h, w, F)
      cams[stage] = jnp.einsum('bhwf,bf->bhw', reduced, weights)
      logits[stage] = outputs['ds_logits'][jnp.arange(len(classes)), i - 1,
                                           classes]
  x = stages['layer4'].astype(jnp.float32)
  if 'layer4' in attention:
    x = x * attention['layer4'][..., None]
  reduced = x @ params['part_reduce']['kernel']
  normalised = BatchNorm().apply(
      {'params': params['part_bn'],
       'batch_stats': variables['batch_stats']['part_bn']},
      reduced, train=False)
  weights = params['global_classifier']['kernel'][:, classes].T
  cams['layer4'] = jnp.einsum('bhwf,bf->bhw', jax.nn.relu(normalised),
                              weights)
  logits['layer4'] = outputs['global_logits'][jnp.arange(len(classes)),
                                              classes]
  return {'cams': cams, 'attention': attention, 'attention_name': 'SA',
          'classes': classes, 'logits': logits}
