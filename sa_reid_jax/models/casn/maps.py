"""CASN's pictures: the Grad-CAM of the class, as its training sees it.

Maps are (B, h, w) float32 at the resolution of layer 4.
"""

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp

from sa_reid_jax.models import gradcam
from sa_reid_jax.models.casn.network import CASNNet


def casn_maps(model: CASNNet, variables: Any, images: jax.Array,
              classes: Optional[Sequence[int]] = None) -> dict[str, Any]:
  """CASN's attention: the Grad-CAM of the class, as its training sees it.

  The same `models.gradcam.grad_cam` as the training step (layer-4 map,
  normalised to [0, 1]; the map attention mining erases), through the head
  in eval mode (running statistics, no dropout). The siamese module's maps
  (the Grad-CAM of the importance score, which the consistency term
  compares by default) are not drawn.

  Args, Returns: as `models.sanet.maps.sa_maps`; the map is under ``cams``
  (labelled ``cam_name`` 'Grad-CAM'); ``attention`` is empty.
  """
  feature_map = model.apply(variables, images, False, method='feature_map')

  def scores(maps):
    return model.apply(variables, maps, False,
                       method='head_outputs')['global_logits']

  logits = scores(feature_map)
  if classes is None:
    classes = jnp.argmax(logits, axis=-1)
  classes = jnp.asarray(classes)
  return {'cams': {'layer4': gradcam.grad_cam(scores, feature_map, classes,
                                              'none')},
          'cam_name': 'Grad-CAM', 'attention': {}, 'attention_name': '',
          'classes': classes,
          'logits': {'layer4': logits[jnp.arange(len(classes)), classes]}}
