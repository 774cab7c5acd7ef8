"""The RGA network's pictures: the layer-4 CAM and the spatial gates.

Maps are (B, h, w) float32 at the resolution of the stage they come from.
"""

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp

from sa_reid_jax.models.normalization import BatchNorm
from sa_reid_jax.models.resnet import STAGE_NAMES, backbone_stages
from sa_reid_jax.models.rga.network import RGANet


def rga_maps(model: RGANet, variables: Any, images: jax.Array,
             classes: Optional[Sequence[int]] = None) -> dict[str, Any]:
  """The layer-4 CAM through the BNNeck, and the RGA spatial gates.

  In eval mode the BNNeck's BatchNorm is a per-channel affine map, so the
  head (average pooling, BN, linear classifier without bias) is linear in
  the layer-4 map: applied at each position it gives a map whose mean is
  the class's logit exactly (CAM, Zhou et al. 2016).

  Args, Returns: as `models.sanet.maps.sa_maps`; ``attention`` holds the
  spatial gates (``'spatial1'``..``'spatial4'`` of the network's output, (B, h, w) in
  (0, 1)) by stage name; RGA-C's channel gates are not pictures.
  """
  outputs, stages = backbone_stages(model, variables, images)
  params = variables['params']
  if classes is None:
    classes = jnp.argmax(outputs['global_logits'], axis=-1)
  classes = jnp.asarray(classes)
  normalised = BatchNorm().apply(
      {'params': params['feat_bn'],
       'batch_stats': variables['batch_stats']['feat_bn']},
      stages['layer4'].astype(jnp.float32), train=False)
  weights = params['cls']['kernel'][:, classes].T
  attention = {stage: outputs['attention'][f'spatial{index}']
               for index, stage in enumerate(STAGE_NAMES, start=1)
               if f'spatial{index}' in outputs['attention']}
  return {'cams': {'layer4': jnp.einsum('bhwf,bf->bhw', normalised,
                                        weights)},
          'attention': attention, 'attention_name': 'RGA-S',
          'classes': classes, 'logits': {'layer4': outputs['global_logits'][
              jnp.arange(len(classes)), classes]}}
