r"""CASN with the PCB baseline on DukeMTMC-reID.

PCB: six stripes, 384x128, last stride 1. Grad-CAM attention: the true
class's maps trained with the identification attention loss, the siamese
module's maps (of its importance score) kept consistent across positive
pairs (CASN, Zheng et al. 2019); recipe and chosen values in
sa_reid_jax/training/casn_defaults.py. Train from the ImageNet backbone
(convert_weights.py --format=torchvision, see the README):

  python train.py --config=configs/casn_pcb_dukemtmc_reid.py \
      --workdir=workdirs/casn_pcb_dukemtmc_reid \
      --config.init_from=models/imagenet

An epoch is about one pass over the 16,522 training images, as the notes
count: P x K = 8 x 2 batches from every identity's images cut into pairs
(sampler 'identity_chunks'), sum_i floor(max(n_i, 2) / 2) // 8 steps, at
most 1,032 (the run prints the exact number); 40 epochs, at most
41,280 steps, the decay after 30.

Evaluate a model directory:

  python eval.py --config=configs/casn_pcb_dukemtmc_reid.py --checkpoint=DIR

Published CASN(PCB), rank-1 / mAP (%), a third-party table (reference
notes): 87.7 / 73.7.
"""

from sa_reid_jax.training.casn_defaults import casn_experiment_config


def get_config():
  return casn_experiment_config('dukemtmc_reid', 'pcb')
