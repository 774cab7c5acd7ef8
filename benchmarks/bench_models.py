"""Parameters and FLOPs per image of each network at its official input.

Counts, without running anything (shapes only), for the SA network (full
model and without SA, 384x128: arXiv 1811.12150 Sec. 4.2), RGA-SC, RGA-S,
RGA-C and the BNNeck baseline (256x128: the official RGA script), each with
751 identities (Market-1501's training set):

* parameters: every trainable value (BatchNorm statistics excluded);
* FLOPs per image: 2 x the multiply-accumulates of the convolutions and
  matmuls that the retrieval descriptor depends on, read off the network's
  jaxpr in evaluation mode (what a query or gallery image costs; training
  adds the classifiers and about twice as much again for the backward
  pass).

Run from the repository root::

  .venv/bin/python benchmarks/bench_models.py [--networks=sa,rga_sc] [--json]
"""

import argparse
import json
import math
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp

import bench_train
from sa_reid_jax.models import rga_variant
from sa_reid_jax.models import sanet_variant

NUM_CLASSES = 751
# Name -> (builder, official input (height, width), what it is).
NETWORKS = {
    'sa': (lambda: sanet_variant('full', num_classes=NUM_CLASSES),
           (384, 128), 'SA network: Backbone+P+DS+SA2'),
    'sa_no_sa': (lambda: sanet_variant('full_no_sa', num_classes=NUM_CLASSES),
                 (384, 128), 'the same without SA'),
    'rga_sc': (lambda: rga_variant('rga_sc', num_classes=NUM_CLASSES),
               (256, 128), 'RGA-SC'),
    'rga_s': (lambda: rga_variant('rga_s', num_classes=NUM_CLASSES),
              (256, 128), 'RGA-S'),
    'rga_c': (lambda: rga_variant('rga_c', num_classes=NUM_CLASSES),
              (256, 128), 'RGA-C'),
    'baseline': (lambda: rga_variant('baseline', num_classes=NUM_CLASSES),
                 (256, 128), 'ResNet-50 + BNNeck (BoT baseline)'),
}


def count(name: str) -> dict:
  """Parameters and descriptor FLOPs per image of one network."""
  build, image_size, description = NETWORKS[name]
  model = build()
  image = jax.ShapeDtypeStruct((1, *image_size, 3), jnp.float32)
  variables = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False), image)
  parameters = sum(math.prod(leaf.shape)
                   for leaf in jax.tree.leaves(variables['params']))
  macs = bench_train.forward_macs(model, variables, image_size,
                                  outputs=('features',))
  return {'network': name, 'description': description,
          'image_size': list(image_size), 'parameters': parameters,
          'flops_per_image': 2 * macs}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--networks', default=','.join(NETWORKS),
                      help=f'comma-separated, from {", ".join(NETWORKS)}')
  parser.add_argument('--json', action='store_true',
                      help='also print the figures as one JSON line')
  args = parser.parse_args(argv)
  names = [name for name in args.networks.split(',') if name]
  unknown = [name for name in names if name not in NETWORKS]
  if unknown or not names:
    parser.error(f'--networks: unknown {unknown}; choose from '
                 f'{", ".join(NETWORKS)}')
  rows = [count(name) for name in names]
  print(f'{"network":10} {"input":>8} {"parameters":>12} {"GFLOPs/image":>13}'
        '  description')
  for row in rows:
    size = 'x'.join(str(v) for v in row['image_size'])
    print(f'{row["network"]:10} {size:>8} {row["parameters"] / 1e6:>10.2f} M '
          f'{row["flops_per_image"] / 1e9:>13.2f}  {row["description"]}')
  if args.json:
    print(json.dumps(rows))


if __name__ == '__main__':
  main()
