r"""CASN (Consistent Attentive Siamese Network, Zheng et al. 2019) on one
dataset, with the PCB or the IDE baseline.

The argument is DATASET[,OPTION...], the options in any order, each once:

  DATASET   market1501, dukemtmc_reid, cuhk03_labeled, cuhk03_detected
            (CUHK03-NP's two box sets), msmt17 or market_layout_folder
            (sa_reid_jax/training/defaults.py, DATASETS)
  pcb       the PCB baseline (the default): six stripes, 384x128, last
            stride 1
  ide       the IDE baseline: ResNet-50 + classifier, 288x144
  tiny      a one-block ResNet of width 8 at 128x64 in batches of 8, from
            random weights, evaluated at the end only: checks a command in
            seconds on a CPU (casn_defaults.py, TINY)

Grad-CAM attention: the true class's maps trained with the identification
attention loss, the siamese module's maps (of its importance score) kept
consistent across positive pairs; recipe and chosen values in
sa_reid_jax/training/casn_defaults.py. Train from the ImageNet backbone
(convert_weights.py --format=torchvision, see the README):

  python train.py --config=configs/casn.py:market1501 \
      --workdir=workdirs/casn_pcb_market1501 \
      --config.init_from=models/imagenet
  python train.py --config=configs/casn.py:dukemtmc_reid \
      --workdir=workdirs/casn_pcb_dukemtmc_reid \
      --config.init_from=models/imagenet
  python train.py --config=configs/casn.py:cuhk03_labeled \
      --workdir=workdirs/casn_pcb_cuhk03_labeled \
      --config.init_from=models/imagenet
  python train.py --config=configs/casn.py:cuhk03_detected \
      --workdir=workdirs/casn_pcb_cuhk03_detected \
      --config.init_from=models/imagenet
  python train.py --config=configs/casn.py:market1501,ide \
      --workdir=workdirs/casn_ide_market1501 \
      --config.init_from=models/imagenet

An epoch is about one pass over the training images, as the notes count:
P x K = 8 x 2 batches from every identity's images cut into pairs (sampler
'identity_chunks'), sum_i floor(max(n_i, 2) / 2) // 8 steps for identities
of n_i images, at most images // 16 (the run prints the exact number); 40
epochs, the decay after 30, with either baseline:

  argument          identities  images  steps/epoch      steps
  market1501               751  12,936       <= 808  <= 32,320
  dukemtmc_reid            702  16,522     <= 1,032  <= 41,280
  cuhk03_labeled           767   7,368       <= 460  <= 18,400
  cuhk03_detected          767   7,365       <= 460  <= 18,400
  market1501,ide           751  12,936       <= 808  <= 32,320

Evaluate a model directory:

  python eval.py --config=configs/casn.py:market1501 --checkpoint=DIR

Published CASN(PCB), rank-1 / mAP (%), a third-party table (reference
notes): Market-1501 94.4 / 82.8, DukeMTMC-reID 87.7 / 73.7, CUHK03-NP
labeled 73.7 / 68.0, detected 71.5 / 64.4. No CASN(IDE) figure is in the
reference notes.
"""

from sa_reid_jax.training.casn_defaults import casn_config


def get_config(arg=None):
  return casn_config(arg)
