r"""The full SA model on Market-1501 (paper Tables 1 and 3).

Evaluate a model directory (e.g. from convert_weights.py) on the built TFDS
dataset, with re-ranking and flip test-time augmentation:

  python eval.py --config=configs/market1501.py --checkpoint=DIR \
      --rerank --flip

or directly on the extracted folder (bounding_box_test/, query/):

  python eval.py --config=configs/market1501.py --checkpoint=DIR \
      --config.dataset.folder=/data/Market-1501-v15.09.15
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.dataset = ml_collections.ConfigDict()
  # TFDS builder name (sa_reid_jax.datasets.builders.BUILDERS).
  config.dataset.name = 'market1501'
  # Where the TFDS dataset was built; '' for TFDS's default directory.
  config.dataset.data_dir = ''
  # A folder in Market-1501 layout read directly; when set, replaces TFDS.
  config.dataset.folder = ''

  # Network input (height, width); images are resized bilinearly to it.
  config.image_size = (384, 128)

  config.eval = ml_collections.ConfigDict()
  # Images per feature-extraction batch (the last one is padded and masked).
  config.eval.batch_size = 64
  # Average each descriptor with its mirrored image's (test-time flip).
  config.eval.flip = False
  # Also report k-reciprocal re-ranked metrics.
  config.eval.rerank = False
  # Distance between descriptors: 'euclidean' (official) or 'cosine'.
  config.eval.metric = 'euclidean'
  # Length of the CMC curve computed.
  config.eval.max_rank = 50
  # Re-ranking parameters (Zhong et al. 2017 defaults).
  config.eval.k1 = 20
  config.eval.k2 = 6
  config.eval.lambda_value = 0.3
  return config
