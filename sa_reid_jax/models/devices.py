"""Data parallelism over the local devices, shared by every descriptor path.

A batch is split along its first axis over a one-axis mesh (``'data'``) of
the local devices; the variables are replicated. Used by
`models.extractor.FeatureExtractor` and `evaluation.features`.
"""

import dataclasses
from typing import Optional, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np


@dataclasses.dataclass(frozen=True)
class DataParallel:
  """Where a batch's rows and the variables go.

  Attributes:
    devices: the devices the batch is split over.
    batch: sharding of an array split along its first axis.
    replicated: sharding of an array copied whole to every device.
  """
  devices: tuple[jax.Device, ...]
  batch: NamedSharding
  replicated: NamedSharding

  def padded_size(self, size: int) -> int:
    """`size` rounded up to a multiple of the device count."""
    return -(-int(size) // len(self.devices)) * len(self.devices)


def data_parallel(devices: Optional[Sequence[jax.Device]] = None
                  ) -> DataParallel:
  """The batch and replicated shardings over `devices`.

  Args:
    devices: default ``jax.local_devices()``.

  Returns:
    a `DataParallel`.
  """
  devices = tuple(devices or jax.local_devices())
  mesh = Mesh(np.array(devices), ('data',))
  return DataParallel(devices, NamedSharding(mesh, PartitionSpec('data')),
                      NamedSharding(mesh, PartitionSpec()))
