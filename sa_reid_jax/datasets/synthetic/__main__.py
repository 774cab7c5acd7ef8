"""``python -m sa_reid_jax.datasets.synthetic``: writes a synthetic dataset."""

import sys

from sa_reid_jax.datasets.synthetic.generator import main

if __name__ == '__main__':
  sys.exit(main())
