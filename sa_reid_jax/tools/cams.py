"""Class activation maps (CAM, Zhou et al. 2016; Grad-CAM for CASN) and
attention maps of trained networks, for `visualize cam`.

Each family draws its own maps (`models.registry.Family.maps`, e.g.
`models.sanet.maps.sa_maps`); maps are (B, h, w) float32 at the
resolution of the stage they come from.
"""

from typing import Any, Optional, Sequence

import jax

from sa_reid_jax.models import registry


def class_activation_maps(model: Any, variables: Any, images: jax.Array,
                          classes: Optional[Sequence[int]] = None
                          ) -> dict[str, Any]:
  """The `cam` maps of a network whose family draws them (`Family.maps`;
  what they hold: `models.sanet.maps.sa_maps`)."""
  return registry.family_of(model).maps(model, variables, images, classes)


def check_cam_model(model: Any, flag: str) -> None:
  """`cam` draws the families that have maps (`Family.maps`); others are
  refused.

  Raises:
    ValueError: naming `flag` and the model's family.
  """
  family = registry.family_of(model)
  if family.maps is None:
    drawn = sorted(name for name, entry in registry.FAMILIES.items()
                   if entry.maps is not None)
    raise ValueError(f'{flag}: `cam` draws the class activation and '
                     f'attention maps of {drawn} networks; this '
                     f'is a {family.name!r} network (`ranks` works for every '
                     'family)')
