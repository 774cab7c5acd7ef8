"""The CASN defaults: the recipe the reference notes give, and our choices.

CASN has no public code. The reference notes ("CASN") give the networks (IDE
or PCB, an identification and a siamese module sharing the backbone), the
input sizes and the optimiser (SGD, momentum 0.9, 0.03, 40 epochs, x0.1
after 30, batch 16); alpha, beta, the threshold t, the loss weights and the
width of the siamese fc are not published. Every such field below says
what was chosen and why.
`casn_experiment_config` starts from `defaults.experiment_config` (its run,
data, checkpoint and evaluation blocks, documented there); `casn_config` is
what ``configs/casn.py`` calls.
"""

import ml_collections

from sa_reid_jax.models import registry
from sa_reid_jax.models.casn import CASN_VARIANTS
from sa_reid_jax.training import defaults
from sa_reid_jax.training.defaults import experiment_config

# The CASN baselines are the network's (CASN_VARIANTS, imported from
# models.casn): 'ide' (ResNet-50 + classifier) and 'pcb' (six horizontal
# stripes, the 2048-d pooled stripes the descriptor; ONE reduction to 256
# shared by the stripes, then a classifier per stripe).
# Network input (height, width) per CASN_VARIANTS name (reference notes:
# 288x144 for IDE, 384x128 for PCB).
IMAGE_SIZES = {'ide': (288, 144), 'pcb': (384, 128)}


def casn_experiment_config(dataset_name: str, variant: str = 'pcb'
                           ) -> ml_collections.ConfigDict:
  """CASN on one dataset with the IDE or PCB baseline.

  Args:
    dataset_name: TFDS builder name.
    variant: one of `CASN_VARIANTS`.

  Returns:
    an unlocked config.

  Raises:
    ValueError: for an unknown variant.
  """
  config = experiment_config(dataset_name)
  config.task = 'casn'

  config.model = ml_collections.ConfigDict()
  config.model.family = 'casn'
  # The baseline network (CASN_VARIANTS).
  config.model.variant = variant
  registry.check_variant(config.model)
  config.image_size = IMAGE_SIZES[variant]
  # PCB: horizontal stripes, and the width of the one 1x1 reduction that
  # the stripes share before their classifiers (PCB paper and the PCB
  # author's code: 6 and 256); unused by IDE. The descriptor is the pooled
  # stripes themselves (2048-d each), not the reduced ones.
  config.model.num_stripes = 6
  config.model.reduced_dim = 256
  # Dropout in training (PCB and the IDE baseline: 0.5): on IDE's pooled
  # feature before its classifier; on PCB's pooled stripes before the
  # shared reduction.
  config.model.dropout_rate = 0.5
  # Width of the siamese feature f_i: the siamese module's own fc layer on
  # the pooled map (the identification and siamese modules "differ only in
  # their fc layers", seed 004 section 2). Not published; 2048, ResNet-50's
  # pooled width C, makes the fc square on the paper's backbone: f_i as
  # wide as the feature it is computed from, neither a bottleneck nor an
  # expansion.
  config.model.siamese_dim = 2048
  # ResNet-50 v1.5; last stride 1 for PCB (24x8 map at 384x128), 2 for IDE
  # (the ImageNet network, 9x5 at 288x144).
  config.model.stage_sizes = (3, 4, 6, 3)
  config.model.base_width = 64
  config.model.last_stride = 1 if variant == 'pcb' else 2
  # Compute dtype ('float32' or 'bfloat16').
  config.model.dtype = 'float32'
  # Synchronised BatchNorm (device-count invariant).
  config.model.sync_batch_norm = True

  config.casn = ml_collections.ConfigDict()
  # How gradients pass through the Grad-CAM maps (models.gradcam
  # .GRADIENT_MODES): 'feature_map' = through the feature map with the
  # channel weights (themselves a gradient) held constant; 'full' also
  # through the weights, a second-order gradient; 'none' not at all. The
  # CASN notes do not say which. 'feature_map' is the default because
  # 'full' diverged where it did not (the demo config at batch 8 on an
  # 8-identity synthetic set, 6 steps: first-step gradient norm 545 vs
  # 64.5, cross-entropy 12.5 -> 120 vs 12-16); one short run.
  config.casn.gradcam_gradient = 'feature_map'

  # P x K batches of 8 identities x 2 images = the notes' batch of 16: the
  # siamese module needs positive pairs in every batch, and K = 2 keeps the
  # most identities per batch that still gives every image a partner (not
  # published).
  config.batch_size = 16
  # An epoch is about one pass over the training images, as the notes count
  # (the IDE/PCB convention; REFERENCE.md, CASN): every identity's images in
  # chunks of K ('identity_chunks'), sum_i floor(max(n_i, 2) / 2) // 8 steps,
  # at most 12,936 / 16 = 808 on Market-1501 (the 'identity' sampler's
  # epoch, one pass over the identities, would be 751 // 8 = 93).
  config.data.sampler = 'identity_chunks'
  config.data.images_per_identity = 2
  # 40 epochs, x0.1 after 30 (the notes).
  config.num_epochs = 40
  config.optimizer.name = 'sgd'
  config.optimizer.learning_rate = 0.03
  # The notes give one rate for the whole network.
  config.optimizer.backbone_lr_multiplier = 1.0
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False
  # Not published; the common value for ResNet-50 re-id training.
  config.optimizer.weight_decay = 5e-4
  config.optimizer.decay_milestones = (30,)
  config.optimizer.decay_factor = 0.1

  terms = config.loss.terms
  # Identification loss: cross-entropy; for PCB the sum of the six stripe
  # classifiers' losses ('parts'), for IDE the one classifier's.
  terms.cross_entropy.weighting = 'parts'
  mining = terms.attention_mining = ml_collections.ConfigDict()
  # Identification attention loss (GAIN's attention mining): the true-class
  # score of the image with its attended region erased. Weight 1, as
  # every CASN term: the notes give no weights. The terms are NOT of one
  # scale: this one is a logit (unbounded; a probability, at most 1, with
  # score='probability'), verification a binary
  # cross-entropy (ln 2 at chance), consistency an L2 distance that grows
  # with the map (at most sqrt(h w): 5.7 on the demo's 8x4 map, 13.9 on
  # PCB's 24x8 at 384x128), and PCB's cross-entropy the sum of six stripe
  # losses (6 ln 751 = 40 untrained on Market-1501). Tune them per setting.
  mining.weight = 1.0
  # What is minimised: 'logit', the erased image's true-class score itself,
  # as the notes write the loss (seed 004, section 2.1, after GAIN); or
  # 'probability', its softmax probability, which is bounded, so the loss
  # cannot fall by raising the other classes' logits (training the
  # classifier rather than the attention), at the price of departing from
  # the source. The CPU demo's small network, from random weights, diverged
  # with the logit (configs/demo_casn_synthetic.py) and trains with the
  # probability.
  mining.score = 'logit'
  # Soft mask S = sigmoid(alpha (M - beta)) of the [0, 1] map M. beta 0.5
  # erases what is at least half as attended as the peak; alpha 10 makes S
  # 0.007 where M = 0 and 0.993 at the peak while keeping it smooth.
  mining.alpha = 10.0
  mining.beta = 0.5
  verification = terms.verification = ml_collections.ConfigDict()
  # Siamese same/different loss over every pair of the global batch,
  # positive and negative pairs weighted equally. Weight 1 (not published).
  verification.weight = 1.0
  consistency = terms.consistency = ml_collections.ConfigDict()
  # Siamese attention consistency: L2 between positive pairs' attended
  # crops. Weight 1 (not published).
  consistency.weight = 1.0
  # Which Grad-CAM maps it compares (losses.CONSISTENCY_MAPS):
  # 'siamese' (the source): the Grad-CAM of the siamese importance score
  # s_i = sum_k max(f_ik, 0), the components of the siamese feature that
  # favour the same/different prediction (seed 004, section 2.2, eq. 5, and
  # the author's reply: "s1 is not I1's class"); the maps that explain the
  # siamese decision. 'class': the identity-class Grad-CAM maps that
  # attention mining erases (the implementation's former behaviour, kept to
  # compare with and to reproduce runs made with it; with attention mining
  # on, one Grad-CAM per step instead of two), but the consistency then
  # constrains the identification module's attention, not the siamese
  # module's.
  consistency.maps = 'siamese'
  # Entries of the [0, 1] map at or above t form the attended region (the
  # same "half of the peak" as beta).
  consistency.threshold = 0.5
  # The triplet term stays off (CASN has none).

  # Cross-entropy networks with dropout: the SA recipe's augmentation
  # (flip, random erasing) is kept; the notes say nothing of it.
  config.eval.every_epochs = 10
  return config


# The CASN recipe's `defaults.TINY_OPTION`: the SA recipe's small network
# and input, at the size where PCB's six stripes have rows.
TINY = {
    **defaults.TINY,
    # 128x64 and width 8: a last-stride-1 layer4 map of 8x4, one row or more
    # per stripe.
    'model.base_width': 8,
    'image_size': (128, 64),
    'log_every_steps': 2,
}

# The options of configs/casn.py besides the dataset: the baseline network
# (CASN_VARIANTS; default 'pcb') and `defaults.TINY_OPTION`.
CASN_OPTIONS = tuple(CASN_VARIANTS) + (defaults.TINY_OPTION,)


def casn_config(arg: str | None) -> ml_collections.ConfigDict:
  """CASN on one dataset with the PCB (default) or IDE baseline.

  Args:
    arg: ``DATASET[,OPTION...]`` (`defaults.parse_argument`): at most one
      of ``pcb`` and ``ide``, and ``tiny`` (`TINY`).

  Returns:
    `casn_experiment_config` for that network.

  Raises:
    ValueError: for an unknown dataset or option, a repeated option, or two
      networks.
  """
  dataset, options = defaults.parse_argument(
      arg, 'configs/casn.py', CASN_OPTIONS, tuple(CASN_VARIANTS))
  variant = next((o for o in options if o in CASN_VARIANTS), 'pcb')
  config = casn_experiment_config(dataset, variant)
  if defaults.TINY_OPTION in options:
    defaults.with_overrides(config, TINY)
  return config
