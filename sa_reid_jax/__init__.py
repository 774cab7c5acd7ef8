"""sa-reid-jax: the Parameter-Free Spatial Attention re-id network in JAX.

Subpackages:

* ``models``: the ResNet backbone, the families (``sanet``, ``rga``,
  ``casn``), their registry and ``embed``, model directories (``store``),
  and `FeatureExtractor`: descriptors of crops from a model directory.
* ``datasets``: what the data is: the Market-1501 layout, TFDS builders,
  in-memory tables, the original releases, image checks, synthetic data.
* ``data``: how it is fed: the tf.data pipeline, samplers, augmentation
  draws, preprocessing, augmentation on the accelerator.
* ``tasks``, ``losses``: what a training step computes.
* ``training``: config defaults, optimizer, the step, checkpoints, the run.
* ``evaluation``: descriptors, distances, metrics, re-ranking, the report.
* ``convert``: PyTorch weight import.
* ``tools``: pictures, search on unlabeled crops, SavedModel/ONNX export.
"""

from sa_reid_jax.models.extractor import FeatureExtractor
from sa_reid_jax.models.store import load_model
from sa_reid_jax.models.store import save_model
