"""A new model family is one module and one registry entry.

`TinyNet` below is a whole family: a Flax module with the output contract
of `models.registry` and a function drawing its maps. Registered under
``config.model.family='tiny'`` (the one line a family adds), it trains,
evaluates, exports and is drawn through the same commands as the paper's
networks, with no other edit anywhere.
"""

import json
import os
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

import helpers
from sa_reid_jax.data import preprocessing
from sa_reid_jax.models import registry
from sa_reid_jax.models import store
from sa_reid_jax.models.normalization import BatchNorm
from sa_reid_jax.models.sanet import l2_normalize
from sa_reid_jax.tools import export
from sa_reid_jax.training import trainer


class TinyNet(nn.Module):
  """One strided convolution, BatchNorm (optional), ReLU, pooling and a
  classifier."""
  num_classes: int
  width: int = 8
  batch_norm: bool = True
  bn_axis_name: Optional[str] = None

  def setup(self):
    self.conv = nn.Conv(self.width, (3, 3), strides=(4, 4))
    if self.batch_norm:
      self.bn = BatchNorm(axis_name=self.bn_axis_name)
    self.classifier = nn.Dense(self.num_classes)

  def feature_map(self, images, train=False):
    x = self.conv(images)
    return nn.relu(self.bn(x, train) if self.batch_norm else x)

  def __call__(self, images, train=False, example_ids=None):
    del example_ids  # no dropout
    pooled = jnp.mean(self.feature_map(images, train), axis=(1, 2))
    return {'features': l2_normalize(pooled)[:, None],
            'global_logits': self.classifier(pooled),
            'embeddings': {'global': pooled}, 'attention': {}}


def tiny_maps(model: TinyNet, variables: Any, images: jax.Array,
              classes: Optional[Sequence[int]] = None) -> dict[str, Any]:
  """CAM: the classifier applied at each position of the pooled map."""
  outputs = model.apply(variables, images)
  classes = jnp.asarray(jnp.argmax(outputs['global_logits'], axis=-1)
                        if classes is None else classes)
  feature_map = model.apply(variables, images, method='feature_map')
  kernel = variables['params']['classifier']['kernel'][:, classes].T
  return {'cams': {'layer1': jnp.einsum('bhwc,bc->bhw', feature_map, kernel)},
          'attention': {}, 'attention_name': '', 'classes': classes,
          'logits': {'layer1': outputs['global_logits'][
              jnp.arange(len(classes)), classes]}}


@pytest.fixture
def tiny_family(monkeypatch):
  """The family registered, for this test only."""
  monkeypatch.setitem(registry.FAMILIES, 'tiny', registry.Family(
      'tiny', TinyNet, variants={'plain': {}, 'wide': {'width': 16},
                                 'no_bn': {'batch_norm': False}},
      maps=tiny_maps))


def _config(data: str) -> ml_collections.ConfigDict:
  config = helpers.tiny_config(data, max_steps=4)
  config.model = ml_collections.ConfigDict(
      {'family': 'tiny', 'variant': 'wide', 'sync_batch_norm': True})
  return config


def test_a_registered_family_trains_evaluates_exports_and_draws(
    tiny_family, data, cli, tmp_path):
  del tiny_family
  workdir = tmp_path / 'run'
  result = trainer.train_and_evaluate(_config(data), str(workdir))
  assert result['status'] == 'completed' and result['step'] == 4
  model, variables = store.load_model(str(workdir / 'model'))
  # The variant's attribute reached the network; the rest are its defaults.
  assert model == TinyNet(num_classes=8, width=16)
  assert variables['params']['conv']['kernel'].shape[-1] == 16

  evaluated = cli('eval.py', '--config=configs/sa.py:market_layout_folder',
                  f'--checkpoint={workdir}', f'--config.dataset.folder={data}',
                  '--config.image_size=(64,32)',
                  f'--output_dir={tmp_path / "eval"}')
  assert evaluated.returncode == 0, evaluated.stderr[-2000:]
  with open(tmp_path / 'eval' / 'metrics.json') as f:
    metrics = json.load(f)
  assert 0 <= metrics['plain']['rank1'] <= 1

  output = tmp_path / 'saved_model'
  assert export.main([f'--checkpoint={workdir / "model"}', f'--output={output}',
                      '--platforms=cpu']) == 0
  serve = tf.saved_model.load(str(output)).signatures['serving_default']
  images = helpers.block_images(np.random.default_rng(0), (2, 64, 32, 3))
  served = serve(images=tf.constant(images))['descriptors'].numpy()
  pixels = np.stack([preprocessing.preprocess(tf.constant(image),
                                              (64, 32)).numpy()
                     for image in images])
  expected = np.asarray(registry.embed(model, variables, pixels)).reshape(2, -1)
  # Two float32 programs compiled apart (see helpers.EXPORT_TOLERANCE).
  assert np.abs(served - expected).max() <= helpers.EXPORT_TOLERANCE

  for kind, arguments in (
      ('cam', [f'--images={os.path.join(data, "query")}', '--max_images=2']),
      ('ranks', [f'--dataset_folder={data}', '--queries=0,1', '--topk=3'])):
    drawn = cli('sa_reid_jax.tools.visualize', kind,
                f'--checkpoint={workdir / "model"}', *arguments,
                f'--output={tmp_path / f"{kind}.png"}')
    assert drawn.returncode == 0, drawn.stderr[-2000:]
    assert Image.open(tmp_path / f'{kind}.png').size[0] > 0


def test_a_family_block_is_checked_against_its_network(tiny_family):
  del tiny_family
  block = ml_collections.ConfigDict(
      {'family': 'tiny', 'variant': 'plain', 'sync_batch_norm': True,
       'width': 4})
  assert registry.build(block, 3, image_size=(64, 32)) == TinyNet(
      num_classes=3, width=4)
  block.dropout_rate = 0.5  # an attribute TinyNet does not have
  with pytest.raises(ValueError, match=(
      r"^config\.model\.dropout_rate: the tiny family's network has no such "
      r"attribute \(config\.model\.family='tiny'; its keys: "
      r"\['batch_norm', 'width'\]\)")):
    registry.build(block, 3, image_size=(64, 32))
  del block['dropout_rate']
  block.variant = 'deep'
  with pytest.raises(ValueError, match=r"^config\.model\.variant must be one "
                     r"of \['no_bn', 'plain', 'wide'\] for the tiny family"):
    registry.build(block, 3, image_size=(64, 32))


def test_a_family_without_batch_statistics_trains_and_loads(tiny_family,
                                                            data, tmp_path):
  # The trainer's state holds an empty batch_stats collection for it; the
  # model directory must hold what the network's own variables hold.
  del tiny_family
  config = _config(data)
  config.model.variant = 'no_bn'
  config.max_steps = 1
  result = trainer.train_and_evaluate(config, str(tmp_path))
  assert result['status'] == 'completed'
  model, variables = store.load_model(str(tmp_path / 'model'))
  assert not model.batch_norm and set(variables) == {'params'}
