"""Class activation maps (CAM, Zhou et al. 2016; Grad-CAM for CASN) and
attention maps of trained networks, for `visualize cam`: one function per
model family.

Maps are (B, h, w) float32 at the resolution of the stage they come from.
"""

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp

from sa_reid_jax.losses import gradcam
from sa_reid_jax.models import registry
from sa_reid_jax.models.casn import CASNNet
from sa_reid_jax.models.normalization import BatchNorm
from sa_reid_jax.models.resnet import STAGE_NAMES
from sa_reid_jax.models.rga import RGANet
from sa_reid_jax.models.sanet.network import DS_STAGES, SANet


def _backbone_stages(model, variables, images):
  """The network's outputs and its backbone's stage maps (eval mode)."""
  outputs, state = model.apply(
      variables, images, train=False,
      capture_intermediates=lambda module, _: module.name == 'backbone')
  return outputs, state['intermediates']['backbone']['__call__'][0]


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
  outputs, stages = _backbone_stages(model, variables, images)
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


def rga_maps(model: RGANet, variables: Any, images: jax.Array,
             classes: Optional[Sequence[int]] = None) -> dict[str, Any]:
  """The layer-4 CAM through the BNNeck, and the RGA spatial gates.

  In eval mode the BNNeck's BatchNorm is a per-channel affine map, so the
  head (average pooling, BN, linear classifier without bias) is linear in
  the layer-4 map: applied at each position it gives a map whose mean is
  the class's logit exactly (CAM, Zhou et al. 2016).

  Args, Returns: as `sa_maps`; ``attention`` holds the spatial gates
  (``'spatial1'``..``'spatial4'`` of the network's output, (B, h, w) in
  (0, 1)) by stage name; RGA-C's channel gates are not pictures.
  """
  outputs, stages = _backbone_stages(model, variables, images)
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


def casn_maps(model: CASNNet, variables: Any, images: jax.Array,
              classes: Optional[Sequence[int]] = None) -> dict[str, Any]:
  """CASN's attention: the Grad-CAM of the class, as its training sees it.

  The same `losses.gradcam.grad_cam` as the training step (layer-4 map,
  normalised to [0, 1]; the map attention mining erases), through the head
  in eval mode (running statistics, no dropout). The siamese module's maps
  (the Grad-CAM of the importance score, which the consistency term
  compares by default) are not drawn.

  Args, Returns: as `sa_maps`; the map is under ``cams`` (labelled
  ``cam_name`` 'Grad-CAM'); ``attention`` is empty.
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


# Family name (models.registry) -> its maps for `cam`.
CAM_MAPS = {'sanet': sa_maps, 'rga': rga_maps, 'casn': casn_maps}


def class_activation_maps(model: Any, variables: Any, images: jax.Array,
                          classes: Optional[Sequence[int]] = None
                          ) -> dict[str, Any]:
  """The `cam` maps of any family in `CAM_MAPS` (see `sa_maps`)."""
  return CAM_MAPS[registry.family_of(model).name](model, variables, images,
                                                  classes)


def check_cam_model(model: Any, flag: str) -> None:
  """`cam` draws the families of `CAM_MAPS`; others are refused.

  Raises:
    ValueError: naming `flag` and the model's family.
  """
  family = registry.family_of(model).name
  if family not in CAM_MAPS:
    raise ValueError(f'{flag}: `cam` draws the class activation and '
                     f'attention maps of {sorted(CAM_MAPS)} networks; this '
                     f'is a {family!r} network (`ranks` works for every '
                     'family)')
