"""Synthetic person re-id data in Market-1501 layout (the demo's proxy set).

``generate`` writes a dataset folder (same seed, same files); the command
line is ``python -m sa_reid_jax.datasets.synthetic --output DIR
--difficulty hard`` (``__main__.py``, flags: ``--help``). The modules:

  generator  ``generate`` and the command line: which identity is seen by
             which camera, the file names, the splits.
  settings   the difficulty presets (``EASY``, ``HARD``, ``DIFFICULTIES``).
  people     the drawn people (``Person``) and cameras (``Camera``).
  painting   paints a person onto a camera image (the ``easy`` renderer).
  scenes     the ``hard`` crops (occlusion, bystanders, bad boxes) and
             writing the image files.
  effects    image-level camera effects: blur, low resolution, light.
"""

from sa_reid_jax.datasets.synthetic.generator import SETTINGS_JSON
from sa_reid_jax.datasets.synthetic.generator import SyntheticSummary
from sa_reid_jax.datasets.synthetic.generator import generate
from sa_reid_jax.datasets.synthetic.generator import main
from sa_reid_jax.datasets.synthetic.settings import DIFFICULTIES

__all__ = ['DIFFICULTIES', 'SETTINGS_JSON', 'SyntheticSummary', 'generate',
           'main']
