"""The `Task` record every training task returns (see `sa_reid_jax.tasks`)."""

import dataclasses
from typing import Any, Callable, Optional

import jax

LossFn = Callable[[Any, Any, Any, dict[str, jax.Array], jax.Array,
                   Optional[str]], tuple[jax.Array, tuple[dict, Any]]]


@dataclasses.dataclass(frozen=True)
class Task:
  """A training recipe's step computation (see `sa_reid_jax.tasks`)."""
  name: str
  batch_keys: tuple[str, ...]
  loss_fn: LossFn
  # Start-up checks of the network at the config's input size, beyond its
  # own (network, (height, width)) -> None, raising ValueError naming the
  # config key; None when the task has none.
  check_network: Optional[Callable[[Any, tuple[int, int]], None]] = None
