"""Train samplers: which table rows make each global batch of an epoch.

Every sampler follows one protocol (`Sampler`): ``steps_per_epoch``,
``global_batch_size``, ``epoch_rows(seed, epoch)`` (the epoch's global
batches of table rows, a function of (seed, epoch) alone) and
``signature()`` (its name and settings, recorded in the checkpoint's data
signature so that a run is not resumed with another sampler).

A global batch does not depend on the number of processes or devices:
`process_share` gives process p the p-th slice of each. An example's place
in the epoch, its *position* (step * global batch + index in the global
batch), is unique within the epoch even when a sampler repeats a row, and
keys the example's random augmentation and dropout.

- `UniformSampler`: all rows in a random order, cut into global batches
  (the rows after the last whole batch are left out).
- `IdentitySampler`: P x K batches, the official RGA code's
  ``RandomIdentitySampler`` (``reid/utils/data/sampler.py``): an epoch is one
  pass over the identities in a random order, each contributing K rows.
- `ChunkedIdentitySampler`: P x K batches, reid-strong-baseline's
  ``RandomIdentitySampler`` (``data/samplers/triplet_sampler.py``): every
  identity's images cut into chunks of K, so an epoch is about one pass
  over all the images.
"""

from typing import Any, Protocol

import numpy as np

SAMPLERS = ('uniform', 'identity', 'identity_chunks')
# The samplers whose batches are P identities x K images each.
P_K_SAMPLERS = ('identity', 'identity_chunks')


class Sampler(Protocol):
  """What the input pipeline and the trainer need of a sampler."""

  @property
  def steps_per_epoch(self) -> int:
    """Global batches per epoch (>= 1)."""

  @property
  def global_batch_size(self) -> int:
    """Rows per global batch, over all processes and devices."""

  def epoch_rows(self, seed: int, epoch: int) -> np.ndarray:
    """int64 (steps_per_epoch, global_batch_size) table rows."""

  def signature(self) -> dict[str, Any]:
    """JSON-able name and settings (besides the global batch size)."""


class _Batches:
  """The size properties every sampler shares; subclasses set `_steps`."""

  _steps: int

  def __init__(self, global_batch_size: int):
    if global_batch_size < 1:
      raise ValueError(f'the global batch size must be >= 1, got '
                       f'{global_batch_size}')
    self._global_batch_size = int(global_batch_size)

  @property
  def steps_per_epoch(self) -> int:
    return self._steps

  @property
  def global_batch_size(self) -> int:
    return self._global_batch_size


class UniformSampler(_Batches):
  """Every row once per epoch, in an order drawn from (seed, epoch).

  Args:
    num_examples: rows in the train table.
    global_batch_size: rows per global batch.

  Raises:
    ValueError: for a batch size < 1 or larger than the table.
  """

  # Its name; its settings are the global batch size, recorded anyway.
  SIGNATURE = {'name': 'uniform'}

  def __init__(self, num_examples: int, global_batch_size: int):
    super().__init__(global_batch_size)
    self.num_examples = int(num_examples)
    self._steps = self.num_examples // self._global_batch_size
    if self._steps < 1:
      raise ValueError(f'the global batch of {global_batch_size} is larger '
                       f'than the {num_examples} train examples')

  def epoch_rows(self, seed: int, epoch: int) -> np.ndarray:
    """A permutation of the rows drawn from (seed, epoch), cut into batches.

    Returns:
      int64 (steps_per_epoch, global_batch_size); the
      ``num_examples % global_batch_size`` rows permuted last are left out.
    """
    rows = np.random.default_rng([seed, epoch]).permutation(self.num_examples)
    used = rows[:self._steps * self._global_batch_size].astype(np.int64)
    return used.reshape(self._steps, self._global_batch_size)

  def signature(self) -> dict[str, Any]:
    return dict(self.SIGNATURE)


class IdentitySampler(_Batches):
  """P x K batches: P identities, K rows of each (official RGA sampler).

  As the official ``RandomIdentitySampler`` with ``drop_last=True``: the
  identities are permuted (here by (seed, epoch)); each draws K of its rows
  without replacement, or with replacement when it has fewer than K; the
  identities in permuted order are cut into groups of P, each a global batch
  of P * K rows (identity by identity, K rows each). An epoch is one pass over
  the identities: ``num_identities // P`` steps, the identities permuted last
  left out. The official recipe has K = 4, batch 64 (REFERENCE.md, RGA,
  "Sampler").

  Args:
    labels: int (N,), the identity of each table row (any integers).
    global_batch_size: P * K rows per global batch.
    images_per_identity: K.

  Raises:
    ValueError: for K < 1, a batch size not a multiple of K, or fewer
      identities than P.
  """

  def __init__(self, labels: np.ndarray, global_batch_size: int,
               images_per_identity: int):
    super().__init__(global_batch_size)
    if images_per_identity < 1:
      raise ValueError(f'images_per_identity must be >= 1, got '
                       f'{images_per_identity}')
    if global_batch_size % images_per_identity:
      raise ValueError(f'the global batch size {global_batch_size} must be a '
                       f'multiple of images_per_identity '
                       f'{images_per_identity}')
    self.images_per_identity = int(images_per_identity)
    self.identities_per_batch = global_batch_size // images_per_identity
    labels = np.asarray(labels)
    if labels.ndim != 1 or not len(labels):
      raise ValueError('labels must be a non-empty 1-D array')
    _, inverse = np.unique(labels, return_inverse=True)
    order = np.argsort(inverse, kind='stable')
    bounds = np.cumsum(np.bincount(inverse))[:-1]
    # Each identity's rows, in table order.
    self._rows = np.split(order.astype(np.int64), bounds)
    self._steps = len(self._rows) // self.identities_per_batch
    if self._steps < 1:
      raise ValueError(
          f'a global batch of {global_batch_size} = {self.identities_per_batch}'
          f' identities x {images_per_identity} images needs at least '
          f'{self.identities_per_batch} train identities; the table has '
          f'{len(self._rows)}')

  @property
  def num_identities(self) -> int:
    return len(self._rows)

  def epoch_rows(self, seed: int, epoch: int) -> np.ndarray:
    """The epoch's P x K batches, drawn from (seed, epoch).

    Returns:
      int64 (steps_per_epoch, P * K): in each batch, P distinct identities
      one after the other, K rows each.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(self._rows))
    used = order[:self._steps * self.identities_per_batch]
    k = self.images_per_identity
    rows = [rng.choice(self._rows[i], size=k, replace=len(self._rows[i]) < k)
            for i in used]
    return np.concatenate(rows).reshape(self._steps, self._global_batch_size)

  def signature(self) -> dict[str, Any]:
    return {'name': 'identity',
            'images_per_identity': self.images_per_identity}



class ChunkedIdentitySampler(IdentitySampler):
  """P x K batches from every identity's images cut into chunks of K.

  reid-strong-baseline's ``RandomIdentitySampler`` (REFERENCE.md, the BNNeck
  baseline, "Sampler"), which the BNNeck baseline and the IDE/PCB-style
  recipes count epochs with: in each round, every identity's rows are
  shuffled (an identity with fewer than K rows draws K with replacement
  first) and cut into chunks of K, the rows left over dropped; then P
  distinct identities among those with chunks left are drawn uniformly, each
  gives its next chunk, until fewer than P identities have chunks left. An
  epoch is thus about one pass over all the images rather than one pass over
  the identities (`IdentitySampler`): on Market-1501 with 16 x 4, about 184
  steps against 46.

  The reference's epoch ends when its round stalls, a few batches short of
  ``total chunks // P`` (the length it reports) and by a number that varies
  with the draw. Here every epoch has ``total chunks // P`` steps, the
  batches after a stall drawn from a fresh round, so that epochs have one
  length: schedules, checkpoints and resume positions count steps.

  Arguments and errors: as `IdentitySampler`'s.
  """

  def __init__(self, labels: np.ndarray, global_batch_size: int,
               images_per_identity: int):
    super().__init__(labels, global_batch_size, images_per_identity)
    k = self.images_per_identity
    self._chunks = [max(len(rows), k) // k for rows in self._rows]
    self._steps = sum(self._chunks) // self.identities_per_batch

  def _round(self, rng: np.random.Generator) -> list[np.ndarray]:
    """One round of the reference algorithm: its batches, in order, until
    fewer than P identities have chunks left."""
    k, p = self.images_per_identity, self.identities_per_batch
    chunks = []
    for rows in self._rows:
      if len(rows) < k:
        rows = rng.choice(rows, size=k, replace=True)
      rows = rng.permutation(rows)
      whole = len(rows) // k * k
      chunks.append(list(rows[:whole].reshape(-1, k)))
    available = [i for i, c in enumerate(chunks) if c]
    batches = []
    while len(available) >= p:
      chosen = rng.choice(len(available), size=p, replace=False)
      identities = [available[j] for j in chosen]
      batches.append(np.concatenate([chunks[i].pop(0) for i in identities]))
      available = [i for i in available if chunks[i]]
    return batches

  def epoch_rows(self, seed: int, epoch: int) -> np.ndarray:
    """The epoch's P x K batches, drawn from (seed, epoch).

    Returns:
      int64 (steps_per_epoch, P * K): in each batch, P distinct identities
      one after the other, K rows each.
    """
    rng = np.random.default_rng([seed, epoch])
    batches = []
    while len(batches) < self._steps:
      batches.extend(self._round(rng))
    return np.stack(batches[:self._steps]).astype(np.int64)

  def signature(self) -> dict[str, Any]:
    return {'name': 'identity_chunks',
            'images_per_identity': self.images_per_identity}

def build(name: str, labels: np.ndarray, global_batch_size: int,
          images_per_identity: int) -> Sampler:
  """The sampler called `name` for a table's labels.

  Args:
    name: one of `SAMPLERS`.
    labels: int (N,) identity of each row.
    global_batch_size: rows per global batch.
    images_per_identity: K of the P x K samplers (unused otherwise).

  Raises:
    ValueError: for an unknown name, or from the sampler.
  """
  if name == 'uniform':
    return UniformSampler(len(labels), global_batch_size)
  if name == 'identity':
    return IdentitySampler(labels, global_batch_size, images_per_identity)
  if name == 'identity_chunks':
    return ChunkedIdentitySampler(labels, global_batch_size,
                                  images_per_identity)
  raise ValueError(f'unknown sampler {name!r}; choose one of {SAMPLERS}')


def process_share(sampler: Sampler, *, seed: int, epoch: int,
                  start_step: int = 0, process_index: int = 0,
                  process_count: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """The rows, and their positions in the epoch, one process trains on.

  Process p takes the p-th of ``process_count`` equal slices of each global
  batch, so together the processes see exactly the one-process batches.

  Args:
    sampler: the sampler.
    seed: the run's seed.
    epoch: the epoch.
    start_step: drop the batches before this step (resuming).
    process_index: this process.
    process_count: number of processes.

  Returns:
    (rows, positions): int64 arrays of ``(steps_per_epoch - start_step) *
    global_batch_size / process_count`` entries, in training order;
    position = step * global_batch_size + index in the global batch.

  Raises:
    ValueError: for a process index out of range, a global batch not
      divisible by the process count, or a start_step beyond the epoch.
  """
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} must be in '
                     f'[0, process_count={process_count})')
  batch, steps = sampler.global_batch_size, sampler.steps_per_epoch
  if batch % process_count:
    raise ValueError(f'the global batch size {batch} must be a multiple of '
                     f'the number of processes ({process_count})')
  if not 0 <= start_step <= steps:
    raise ValueError(f'start_step {start_step} must be in [0, {steps}]')
  share = batch // process_count
  columns = slice(process_index * share, (process_index + 1) * share)
  positions = np.arange(steps * batch, dtype=np.int64).reshape(steps, batch)
  rows = sampler.epoch_rows(seed, epoch)
  return (rows[start_step:, columns].reshape(-1),
          positions[start_step:, columns].reshape(-1))
