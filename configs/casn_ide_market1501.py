r"""CASN with the IDE baseline on Market-1501.

IDE: ResNet-50 + classifier, 288x144. Grad-CAM attention: the true class's
maps trained with the identification attention loss, the siamese module's
maps (of its importance score) kept consistent across positive pairs
(CASN, Zheng et al. 2019); recipe and chosen values in
sa_reid_jax/training/casn_defaults.py. Train from the ImageNet backbone
(convert_weights.py --format=torchvision, see the README):

  python train.py --config=configs/casn_ide_market1501.py \
      --workdir=workdirs/casn_ide_market1501 \
      --config.init_from=models/imagenet

An epoch is about one pass over the 12,936 training images, as the notes
count: P x K = 8 x 2 batches from every identity's images cut into pairs
(sampler 'identity_chunks'), sum_i floor(max(n_i, 2) / 2) // 8 steps, at
most 808 (the run prints the exact number); 40 epochs, at most 32,320
steps, the decay after 30.

Evaluate a model directory:

  python eval.py --config=configs/casn_ide_market1501.py --checkpoint=DIR

No CASN(IDE) figure is in the reference notes (the published table is
CASN(PCB): 94.4 / 82.8 rank-1 / mAP on Market-1501).
"""

from sa_reid_jax.training.casn_defaults import casn_experiment_config


def get_config():
  return casn_experiment_config('market1501', 'ide')
