"""Samplers (uniform, P x K identity) and draws keyed by epoch position."""

import collections
import io
from typing import Any

import flax
import hypothesis
from hypothesis import strategies as st
import jax
import numpy as np
from PIL import Image
import pytest
from scipy import stats

import helpers
from sa_reid_jax.data import augmentation
from sa_reid_jax.data import pipeline
from sa_reid_jax.data import samplers
from sa_reid_jax.datasets import tables
from sa_reid_jax.training import checkpoints

SMALL_SIZE = (16, 8)


def _labels(counts, seed=0):
  """Shuffled rows, identity i (an arbitrary integer) holding counts[i]."""
  rng = np.random.default_rng(seed)
  ids = rng.choice(1000, size=len(counts), replace=False)
  return rng.permutation(np.repeat(ids, counts))


# Pure numpy, about 5 ms an example (no deadline: the first example pays
# for imports).
@hypothesis.settings(max_examples=helpers.examples(60), deadline=None)
@hypothesis.given(
    counts=st.lists(st.integers(1, 9), min_size=1, max_size=25),
    images_per_identity=st.integers(1, 5),
    identities_per_batch=st.integers(1, 6),
    seed=st.integers(0, 2**31), epoch=st.integers(0, 1000))
def test_identity_batches_hold_p_identities_of_k_rows(
    counts, images_per_identity, identities_per_batch, seed, epoch):
  hypothesis.assume(len(counts) >= identities_per_batch)
  labels = _labels(counts, seed)
  k, p = images_per_identity, identities_per_batch
  sampler = samplers.IdentitySampler(labels, p * k, k)
  rows = sampler.epoch_rows(seed, epoch)
  assert rows.dtype == np.int64
  assert rows.shape == (len(counts) // p, p * k) == (
      sampler.steps_per_epoch, sampler.global_batch_size)
  size = collections.Counter(labels.tolist())
  seen = []
  for batch in rows:
    groups = labels[batch].reshape(p, k)
    # Each group of K rows is one identity; the P groups are distinct.
    assert (groups == groups[:, :1]).all()
    assert len(set(groups[:, 0])) == p
    for identity, group_rows in zip(groups[:, 0], batch.reshape(p, k)):
      distinct = len(set(group_rows.tolist()))
      # Without replacement when it can: only identities with fewer than
      # K images repeat rows.
      assert distinct == k if size[identity] >= k else distinct <= size[
          identity]
    seen.extend(groups[:, 0])
  # One pass over the identities: each at most once per epoch.
  assert len(seen) == len(set(seen)) == sampler.steps_per_epoch * p
  np.testing.assert_array_equal(rows, sampler.epoch_rows(seed, epoch))


def test_identity_epochs_differ_and_draw_uniformly():
  counts = [6, 2, 5, 9, 1, 4, 7, 3]
  labels = _labels(counts)
  sampler = samplers.IdentitySampler(labels, 8, 4)
  assert sampler.steps_per_epoch == 4 and sampler.num_identities == 8
  epochs = [sampler.epoch_rows(5, epoch) for epoch in range(600)]
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[0], samplers.IdentitySampler(
      labels, 8, 4).epoch_rows(6, 0))
  # Every identity is drawn every epoch (8 identities, 4 steps of 2); the
  # first identity of the epoch is uniform over the 8.
  rows = np.stack(epochs)
  first = labels[rows[:, 0, 0]]
  ids = np.unique(labels)
  observed = [(first == i).sum() for i in ids]
  assert stats.chisquare(observed).pvalue > 1e-3  # the 0.1% level
  # An identity with 6 images gives 4 distinct ones: each image is drawn
  # with probability 4/6 per epoch (600 epochs: 400 +- 11.5 each; 60 is
  # over five deviations).
  six_id = [i for i in ids if (labels == i).sum() == 6][0]
  six = np.flatnonzero(labels == six_id)
  drawn = collections.Counter(rows.ravel().tolist())
  for row in six:
    assert abs(drawn[row] - 400) < 60



def reference_chunk_epoch(labels, p, k, rng):
  """reid-strong-baseline's sampler as REFERENCE.md describes it, in plain
  Python (`random.Random` `rng`): (its batches of rows, its reported
  length in rows). Written from the description, independently of
  `samplers.ChunkedIdentitySampler`."""
  by_identity = collections.defaultdict(list)
  for row, identity in enumerate(labels.tolist()):
    by_identity[identity].append(row)
  chunks, length = {}, 0
  for identity, rows in by_identity.items():
    if len(rows) < k:  # sampled up to K with replacement
      rows = [rng.choice(rows) for _ in range(k)]
    rows = list(rows)
    rng.shuffle(rows)
    chunks[identity] = [rows[i:i + k] for i in range(0, len(rows) - k + 1, k)]
    length += len(chunks[identity]) * k
  batches = []
  while len([i for i in chunks if chunks[i]]) >= p:
    chosen = rng.sample(sorted(i for i in chunks if chunks[i]), p)
    batches.append([row for i in chosen for row in chunks[i].pop(0)])
  return batches, length


def test_chunk_sampler_is_the_baselines_algorithm():
  """Against the transcription: the same length, the same kind of batches,
  and the same statistics of a round (how many batches before it stalls,
  how often each identity is drawn) over many draws."""
  import random  # pylint: disable=g-import-not-at-top
  counts = [1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 17, 20]
  labels = _labels(counts)
  p, k = 3, 4
  sampler = samplers.ChunkedIdentitySampler(labels, p * k, k)
  _, length = reference_chunk_epoch(labels, p, k, random.Random(0))
  # Its reported length: every identity's whole chunks (at least one).
  chunks = sum(max(c, k) // k for c in counts)
  assert length == chunks * k
  assert sampler.steps_per_epoch == length // (p * k) == chunks // p
  assert sampler.signature() == {'name': 'identity_chunks',
                                 'images_per_identity': k}
  ids = np.unique(labels)
  ours_batches, ref_batches = [], []
  ours_drawn = collections.Counter()
  ref_drawn = collections.Counter()
  draws = 400
  for draw in range(draws):
    round_ = sampler._round(np.random.default_rng(draw))  # pylint: disable=protected-access
    ref, _ = reference_chunk_epoch(labels, p, k, random.Random(draw))
    ours_batches.append(len(round_))
    ref_batches.append(len(ref))
    for batches, drawn in ((round_, ours_drawn), (ref, ref_drawn)):
      for batch in batches:
        groups = labels[np.asarray(batch)].reshape(p, k)
        assert (groups == groups[:, :1]).all()
        assert len(set(groups[:, 0])) == p
        drawn.update(groups[:, 0].tolist())
      # Within a round a row repeats only for identities under K images.
      rows = collections.Counter(np.concatenate(batches).tolist())
      assert all(count == 1 or (labels == labels[row]).sum() < k
                 for row, count in rows.items())
  # A round stalls a few batches short of chunks // P, by a number that
  # varies with the draw; both have the same mean (400 draws each: the
  # difference of the means within 4 standard errors).
  assert max(ours_batches) <= chunks // p and min(ours_batches) < chunks // p
  difference = np.mean(ours_batches) - np.mean(ref_batches)
  error = np.sqrt((np.var(ours_batches) + np.var(ref_batches)) / draws)
  assert abs(difference) <= 4 * error + 1e-9, (difference, error)
  # How often each identity is drawn: the same distribution (a chi-square
  # test of the two count tables, at the 0.1% level).
  table = np.array([[ours_drawn[i] for i in ids], [ref_drawn[i] for i in ids]])
  assert stats.chi2_contingency(table).pvalue > 1e-3


def test_chunk_epochs_have_one_length_and_start_with_a_round():
  """Every epoch has chunks // P steps: the reference's round, then
  batches of a fresh round where it stalled."""
  labels = _labels([1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 17, 20])
  sampler = samplers.ChunkedIdentitySampler(labels, 12, 4)
  for epoch in range(20):
    rows = sampler.epoch_rows(7, epoch)
    assert rows.dtype == np.int64
    assert rows.shape == (sampler.steps_per_epoch, 12)
    first = sampler._round(np.random.default_rng([7, epoch]))  # pylint: disable=protected-access
    np.testing.assert_array_equal(rows[:len(first)], np.stack(first))
    groups = labels[rows].reshape(len(rows), 3, 4)
    assert (groups == groups[..., :1]).all()
  np.testing.assert_array_equal(sampler.epoch_rows(7, 3),
                                sampler.epoch_rows(7, 3))
  assert not np.array_equal(sampler.epoch_rows(7, 3), sampler.epoch_rows(7, 4))
  # One pass over the images rather than over the identities: 25 chunks of
  # 4 (1+1+1+1+1+1+2+2+3+3+4+5; an identity under 4 images gives one), 8
  # steps of 3 identities, against 12 // 3 = 4 for the identity sampler.
  assert sampler.steps_per_epoch == 8
  assert samplers.IdentitySampler(labels, 12, 4).steps_per_epoch == 4


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_recipes_count_epochs_over_market1501s_images(seed):
  """Steps per epoch on a table of Market-1501's size (751 identities,
  12,936 images; REFERENCE.md), its split among the identities drawn (the
  real one is not in the repository): the CASN and BNNeck-baseline
  recipes' epoch is about one pass over the images, the RGA recipe's one
  pass over the identities."""
  rng = np.random.default_rng(seed)
  counts = 1 + rng.multinomial(12_936 - 751, rng.dirichlet(np.ones(751)))
  labels = np.repeat(np.arange(751), counts)
  assert len(labels) == 12_936
  # CASN: 8 x 2. Every identity's pairs: between (12,936 - 751) / 2 and
  # 12,936 / 2 pairs, 8 a step.
  casn = samplers.build('identity_chunks', labels, 16, 2)
  assert (12_936 - 751) // 16 <= casn.steps_per_epoch <= 12_936 // 16
  # The BNNeck baseline: 16 x 4 (about 184 by the reference notes).
  bot = samplers.build('identity_chunks', labels, 64, 4)
  assert (12_936 - 3 * 751) // 64 <= bot.steps_per_epoch <= 12_936 // 64
  # RGA: one pass over the identities, whatever their sizes.
  assert samplers.build('identity', labels, 64, 4).steps_per_epoch == 46

def test_uniform_sampler_is_a_seeded_permutation_cut_into_batches():
  # The order every run has used: a permutation from (seed, epoch), the
  # rows after the last whole batch left out.
  sampler = samplers.UniformSampler(30, 8)
  assert sampler.steps_per_epoch == 3
  rows = sampler.epoch_rows(3, 2)
  expected = np.random.default_rng([3, 2]).permutation(30)[:24]
  np.testing.assert_array_equal(rows, expected.reshape(3, 8))
  assert rows.dtype == np.int64 and sampler.signature() == {
      'name': 'uniform'}


@pytest.mark.parametrize('name', samplers.SAMPLERS)
def test_processes_share_the_one_process_batches(name):
  sampler = samplers.build(name, _labels([3, 5, 2, 4, 6, 1, 3, 2]), 8, 2)
  whole, positions = samplers.process_share(sampler, seed=1, epoch=4)
  np.testing.assert_array_equal(whole, sampler.epoch_rows(1, 4).ravel())
  np.testing.assert_array_equal(positions, np.arange(whole.size))
  for count in (2, 4):
    shares = [samplers.process_share(sampler, seed=1, epoch=4, start_step=1,
                                     process_index=index,
                                     process_count=count)
              for index in range(count)]
    for part in range(2):  # rows, positions
      together = np.concatenate(
          [share[part].reshape(-1, 8 // count) for share in shares], axis=1)
      expected = (whole, positions)[part].reshape(-1, 8)[1:]
      np.testing.assert_array_equal(together, expected)


def test_bad_sampler_arguments_are_named():
  labels = _labels([2, 2, 2])
  with pytest.raises(ValueError, match='batch size 6 must be a multiple of '
                     'images_per_identity 4'):
    samplers.IdentitySampler(labels, 6, 4)
  with pytest.raises(ValueError, match='needs at least 4 train identities; '
                     'the table has 3'):
    samplers.IdentitySampler(labels, 8, 2)
  with pytest.raises(ValueError, match="unknown sampler 'pk'"):
    samplers.build('pk', labels, 4, 2)
  with pytest.raises(ValueError, match='larger than the 6 train examples'):
    samplers.UniformSampler(6, 8)
  sampler = samplers.UniformSampler(6, 3)
  with pytest.raises(ValueError, match='multiple of the number of processes'):
    samplers.process_share(sampler, seed=0, epoch=0, process_index=0,
                           process_count=2)
  with pytest.raises(ValueError, match='start_step 3 must be in'):
    samplers.process_share(sampler, seed=0, epoch=0, start_step=3)


def _jpeg(pixels):
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format='JPEG', quality=95)
  return buffer.getvalue()


@pytest.fixture(scope='module')
def table():
  """Six identities with 1 to 6 tiny images each (21 rows)."""
  rng = np.random.default_rng(0)
  labels = _labels([1, 2, 3, 4, 5, 6], seed=1)
  _, labels = np.unique(labels, return_inverse=True)
  count = len(labels)
  return tables.ExampleTable(
      images=np.array([_jpeg(rng.integers(0, 256, (16, 8, 3), np.uint8))
                       for _ in range(count)], dtype=object),
      images_are_paths=False, person_ids=(labels + 1).astype(np.int32),
      labels=labels.astype(np.int32),
      camera_ids=(np.arange(count) % 2).astype(np.int32),
      filenames=np.array([f'{i}.jpg' for i in range(count)], dtype=object))


def _identity_batches(table, batch_size=8, process_count=1, **options):
  arguments = dict(seed=2, image_size=SMALL_SIZE,
                   crop=augmentation.RandomCrop(),
                   sampler=samplers.IdentitySampler(
                       table.labels, batch_size * process_count, 4),
                   process_count=process_count)
  arguments.update(options)
  return list(pipeline.train_batches(table, batch_size=batch_size,
                                           **arguments))


def _assert_same_batches(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_identity_pipeline_is_process_invariant_and_resumes(table):
  # 6 identities, 2 per batch of 8: 3 steps an epoch.
  whole = _identity_batches(table, num_epochs=2)
  assert len(whole) == 6
  halves = [_identity_batches(table, batch_size=4, process_count=2,
                              process_index=index, num_epochs=2)
            for index in range(2)]
  together = [{key: np.concatenate([a[key], b[key]]) for key in a}
              for a, b in zip(*halves)]
  _assert_same_batches(whole, together)
  for augment_on_device in (False, True):
    full = _identity_batches(table, num_epochs=2,
                             augment_on_device=augment_on_device,
                             staging_size=(16, 8))
    resumed = _identity_batches(table, start_epoch=0, start_step=2,
                                num_epochs=2,
                                augment_on_device=augment_on_device,
                                staging_size=(16, 8))
    _assert_same_batches(full[2:], resumed)


def test_repeated_rows_get_their_own_draws(table):
  batches = _identity_batches(
      table, num_epochs=1, crop=augmentation.RandomCrop(probability=0.5),
      erasing=augmentation.RandomErasing(probability=1.0, fill='zeros'),
      augment_on_device=True, staging_size=(16, 8))
  positions = np.concatenate([b['positions'] for b in batches])
  assert positions.dtype == np.int32
  np.testing.assert_array_equal(positions, np.arange(24))
  rows = np.concatenate([b['indices'] for b in batches])
  draws = {key: np.concatenate([b[key] for b in batches])
           for key in ('erase_box', 'noise_seed', 'crop_offset')}
  # Identities with fewer than 4 images repeat rows within their group.
  repeated = [row for row, n in collections.Counter(rows.tolist()).items()
              if n > 1]
  assert repeated
  for row in repeated:
    copies = np.flatnonzero(rows == row)
    boxes = draws['erase_box'][copies]
    assert len({tuple(box) for box in boxes}) == len(copies)
    seeds = draws['noise_seed'][copies]
    assert len({tuple(seed) for seed in seeds}) == len(copies)
  # On the tf.data path too: each copy of a row is its own image.
  images = np.concatenate([b['images'] for b in _identity_batches(
      table, num_epochs=1,
      erasing=augmentation.RandomErasing(probability=1.0, fill='zeros'))])
  for row in repeated:
    copies = images[rows == row]
    for i in range(len(copies)):
      for j in range(i):
        assert not np.array_equal(copies[i], copies[j])


@flax.struct.dataclass
class _State:
  step: Any
  weights: Any


def test_checkpoints_from_before_samplers_stand_for_the_uniform_one(
    tmp_path):
  manager = checkpoints.make_manager(str(tmp_path), keep=1)
  state = {'step': np.int32(5), 'weights': np.arange(3.0)}
  old_position = {'epoch': 0, 'step_in_epoch': 5, 'steps_per_epoch': 10,
                  'global_batch_size': 8, 'seed': 0}
  checkpoints.save(manager, _State(**state), old_position, str(tmp_path))
  manager.wait_until_finished()
  abstract = _State(**{key: jax.ShapeDtypeStruct(np.shape(value),
                                                 np.asarray(value).dtype)
                       for key, value in state.items()})
  expected = {'steps_per_epoch': 10, 'global_batch_size': 8, 'seed': 0,
              'sampler': samplers.UniformSampler.SIGNATURE}
  restored, position = checkpoints.restore_latest(
      manager, abstract, expected,
      recorded_later={'sampler': samplers.UniformSampler.SIGNATURE})
  assert int(restored.step) == 5 and position['sampler'] == {
      'name': 'uniform'}
  with pytest.raises(checkpoints.ResumeError, match="sampler was {'name': "
                     "'uniform'}, is now {'name': 'identity'"):
    checkpoints.restore_latest(
        manager, abstract, {**expected, 'sampler': {
            'name': 'identity', 'images_per_identity': 4}},
        recorded_later={'sampler': samplers.UniformSampler.SIGNATURE})
  manager.close()
