"""The defaults every experiment config starts from (the official recipe).

The recipe is the paper's as the official code trains it (the code produced
the published numbers): 'sum' attention, the plain sum of the losses, the
official random erasing. The files in ``configs/`` call `experiment_config`
and change what their experiment changes; every field is documented here,
once.
"""

import ml_collections

from sa_reid_jax.models.sanet import VARIANTS

# The value of config.init_from that trains from random weights; an empty
# init_from is refused, so that a forgotten ImageNet backbone cannot pass
# unnoticed.
SCRATCH = 'scratch'


def experiment_config(dataset_name: str,
                      variant: str = 'full') -> ml_collections.ConfigDict:
  """The paper's training and evaluation recipe, as the official code does it.

  Args:
    dataset_name: TFDS builder name (``sa_reid_jax.datasets.builders``).
    variant: network, a key of ``sa_reid_jax.models.VARIANTS``.

  Returns:
    an unlocked config; `configs/*.py` adjust it and return it.
  """
  if variant not in VARIANTS:
    raise ValueError(f'unknown variant {variant!r}; choose one of '
                     f'{sorted(VARIANTS)}')
  config = ml_collections.ConfigDict()
  # Seeds the initialisation, the data order, augmentation and dropout.
  config.seed = 0
  # What a step computes (sa_reid_jax.tasks.TASKS): 'identification' = one
  # forward pass and the weighted loss terms of config.loss.terms.
  config.task = 'identification'

  config.dataset = ml_collections.ConfigDict()
  # TFDS builder name (sa_reid_jax.datasets.builders.BUILDERS).
  config.dataset.name = dataset_name
  # Where the TFDS dataset was built; '' for TFDS's default directory.
  config.dataset.data_dir = ''
  # A dataset folder read directly (its layout below); when set, replaces
  # TFDS.
  config.dataset.folder = ''
  # How config.dataset.folder is laid out (sa_reid_jax.datasets.sources
  # .LAYOUTS): 'market1501' (bounding_box_train/, query/, bounding_box_test/
  # with "<pid>_c<camera>..." file names) or 'person_folders' (train/,
  # query/, gallery/, each with one folder per person, optionally one per
  # camera inside; datasets/person_folders.py).
  config.dataset.layout = 'market1501'
  # A CSV or TSV list file (columns path, person_id, split, optionally
  # camera_id; relative paths from the file's folder; see
  # datasets/list_file.py); when set, replaces TFDS. Not with folder.
  config.dataset.list = ''
  # More train sources, comma-separated dataset specs (a TFDS name read
  # from data_dir, folder:DIR, person_folders:DIR, or a .csv/.tsv list
  # file; datasets/sources.py), e.g. 'dukemtmc_reid,person_folders:crops':
  # their train splits join this block's, each source's identities kept
  # apart (labels and person ids offset). '' for none.
  config.dataset.extra_train = ''

  # Network input (height, width); images are resized bilinearly to it.
  config.image_size = (384, 128)

  config.model = ml_collections.ConfigDict()
  # Model family (sa_reid_jax.models.registry.FAMILIES); the keys below
  # up to last_stride are the SA network's ('sanet').
  config.model.family = 'sanet'
  # Network of the paper (models.VARIANTS): 'full' = Backbone+P+DS+SA2.
  config.model.variant = variant
  # SA normalisation: 'sum' (official code: channel mean over its sum over
  # H*W; the published numbers came from it) or 'softmax' (the paper's text:
  # softmax over H*W of the channel sum, which on hundreds of post-ReLU
  # channels is nearly one-hot).
  config.model.attention_normalization = 'sum'
  # Dropout on the pooled part vectors (paper: 0.5; 0.47 on Market).
  config.model.dropout_rate = 0.5
  # Width of the reduced head features.
  config.model.num_features = 256
  # Backbone shape: ResNet-50 blocks per stage, first stage width, stride of
  # layer4 (1 = the paper's 24x8 final map).
  config.model.stage_sizes = (3, 4, 6, 3)
  config.model.base_width = 64
  config.model.last_stride = 1
  # Compute dtype: 'float32' or 'bfloat16' (mixed precision: parameters,
  # BatchNorm statistics, attention and losses stay float32).
  config.model.dtype = 'float32'
  # Synchronise BatchNorm statistics across all devices (results do not
  # depend on the device count); False normalises each device's share on
  # its own, as the official code's DataParallel did.
  config.model.sync_batch_norm = True

  # A model directory written by `convert_weights.py --format=torchvision`
  # whose backbone initialises ours (the paper starts from ImageNet weights),
  # or 'scratch' to train from random weights. Left empty, training stops
  # at once with an error naming this key (SCRATCH below).
  config.init_from = ''

  # Images per step over all devices and processes (paper: 48).
  config.batch_size = 48

  config.data = ml_collections.ConfigDict()
  # Which rows make each global batch (sa_reid_jax.data.samplers):
  # 'uniform' (every image once per epoch in a random order, the SA paper's),
  # 'identity' (P x K: batch_size / images_per_identity identities with
  # images_per_identity images each, drawn with replacement from identities
  # with fewer; an epoch is one pass over the identities; the official RGA
  # code's RandomIdentitySampler, REFERENCE.md RGA "Sampler") or
  # 'identity_chunks' (P x K from every identity's images cut into chunks
  # of K: an epoch is about one pass over the images; reid-strong-baseline's
  # sampler, REFERENCE.md, the BNNeck baseline).
  config.data.sampler = 'uniform'
  # K of the P x K samplers (official RGA: 4); batch_size must be a
  # multiple of it.
  config.data.images_per_identity = 4

  # Training length (paper: 100 epochs for Tables 1/3, 60 for Table 2).
  config.num_epochs = 100
  # Stop after this many steps when > 0 (quick checks; the learning-rate
  # schedule still follows num_epochs).
  config.max_steps = 0

  config.optimizer = ml_collections.ConfigDict()
  # 'sgd' (the SA paper), 'adam' (L2 weight decay added to the gradient, as
  # torch.optim.Adam; the RGA recipe) or 'adamw' (decoupled weight decay).
  config.optimizer.name = 'sgd'
  # Learning rate of the new layers; the backbone gets it times
  # backbone_lr_multiplier (paper: 0.1 and 0.1x for the ImageNet backbone).
  config.optimizer.learning_rate = 0.1
  config.optimizer.backbone_lr_multiplier = 0.1
  # SGD momentum and Nesterov (paper: 0.9, Nesterov).
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = True
  # L2 penalty added to every gradient, PyTorch's `weight_decay`.
  config.optimizer.weight_decay = 5e-4
  # Both learning rates are multiplied by decay_factor every decay_epochs,
  # or at each epoch of decay_milestones when it is not empty.
  config.optimizer.decay_epochs = 40
  config.optimizer.decay_milestones = ()
  config.optimizer.decay_factor = 0.1
  # Linear warm-up over the first warmup_epochs epochs from
  # warmup_start_factor x the rates (0 epochs: none; RGA: 20 and 0.01).
  config.optimizer.warmup_epochs = 0
  config.optimizer.warmup_start_factor = 0.01
  # Adam's moment decays and epsilon (PyTorch's defaults).
  config.optimizer.adam_b1 = 0.9
  config.optimizer.adam_b2 = 0.999
  config.optimizer.adam_epsilon = 1e-8

  config.loss = ml_collections.ConfigDict()
  # Named loss terms (sa_reid_jax.losses.TERMS), each scaled by its weight;
  # weight 0 switches a term off.
  config.loss.terms = ml_collections.ConfigDict()
  ce = config.loss.terms.cross_entropy = ml_collections.ConfigDict()
  ce.weight = 1.0
  # Label smoothing eps (0: none; RGA and BoT: 0.1).
  ce.label_smoothing = 0.0
  # How the heads' cross-entropies combine: 'sum' = the plain sum (official
  # SA code, which produced the published numbers); 'paper' = part_weight x
  # mean of the part losses + (1 - part_weight) x mean of the global and DS
  # losses (SA paper Sec. 3.3); 'parts' = the sum of the part losses only
  # (PCB: each stripe's own classifier), the global loss for a network
  # without parts.
  ce.weighting = 'sum'
  ce.part_weight = 0.8
  triplet = config.loss.terms.triplet = ml_collections.ConfigDict()
  # Batch-hard triplet loss over the global batch (off for SA, which has no
  # embedding for it; RGA and BoT: weight 1, margin 0.3 on 'global').
  triplet.weight = 0.0
  triplet.margin = 0.3
  # log(1 + exp(d_ap - d_an)) instead of the hinge with the margin.
  triplet.soft_margin = False
  # Which of the network's `embeddings` the loss reads ('global': the
  # pooled feature, official RGA; RGA networks also give 'bn', after the
  # BNNeck's BatchNorm).
  triplet.embedding = 'global'

  config.augmentation = ml_collections.ConfigDict()
  # Chance of a horizontal flip.
  config.augmentation.flip_probability = 0.5
  # Random erasing (Zhong et al.) as the official code: chance per image
  # (0 disables; the paper's Tables 1 and 3 erase, Table 2 and the released
  # main.py do not), area as a fraction of the image, smallest height/width
  # ratio (the largest is its inverse), fill ('random' = N(0, 1) noise per
  # pixel and channel after normalisation, the official code's; 'zeros' =
  # the mean colour).
  config.augmentation.erasing_probability = 0.5
  config.augmentation.erasing_area = (0.02, 0.2)
  config.augmentation.erasing_min_aspect = 0.3
  config.augmentation.erasing_fill = 'random'
  # The official RGA code's random crop (Random2DTranslation in its
  # reid/utils/data/transforms.py; REFERENCE.md RGA "Augmentation"): with
  # this chance resize to crop_scale x image_size (rounded) and cut an
  # image_size window at a random offset, before the flip and the erasing;
  # otherwise resize to image_size (0 disables; official RGA: 0.5).
  config.augmentation.crop_probability = 0.0
  # The enlargement before that crop (official RGA: 1.125).
  config.augmentation.crop_scale = 1.125
  # Decode on the CPU only and resize/flip/normalise/erase on the
  # accelerator (for hosts whose CPUs cannot keep up).
  config.augmentation.on_device = False
  # Size images are decoded to in that mode (Market-1501's own size); the
  # crop above resizes from it on the accelerator.
  config.augmentation.staging_size = (128, 64)

  config.checkpoint = ml_collections.ConfigDict()
  # Save every this many steps, and at the end of every epoch.
  config.checkpoint.every_steps = 1000
  # Checkpoints kept (the newest ones).
  config.checkpoint.keep = 3
  # With several processes, how often (in steps) they agree on whether one
  # got SIGTERM: an exchange between hosts that waits for the step to end.
  config.checkpoint.sigterm_check_steps = 10

  # Batches copied to the devices ahead of the step that uses them.
  config.prefetch_batches = 2
  # Write train metrics (averaged over the interval) every this many steps.
  config.log_every_steps = 50

  config.eval = ml_collections.ConfigDict()
  # Evaluate every this many epochs (0: only at the end) and once more at
  # the end of training.
  config.eval.every_epochs = 20
  # Also evaluate the network before training (step 0).
  config.eval.at_start = False
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
  # False-positive rates at which metrics.json and the report give the
  # verification TPR and distance threshold over query-gallery pairs (as
  # fast-reid reports them; evaluation/verification.py). Each in (0, 1).
  config.eval.verification_fprs = (1e-4, 1e-3, 1e-2)
  # More evaluation targets, comma-separated dataset specs as in
  # config.dataset.extra_train (e.g. 'folder:data/duke,crops.csv'): the
  # final evaluation (not the periodic ones) and eval.py also evaluate
  # their query and gallery splits, each in metrics.json under
  # targets[spec] and in its own report_<name>.html. '' for none.
  config.eval.extra_targets = ''
  # Write report.html (settings, metrics, CMC and AP plots, distances of
  # true and false matches, per-camera results, example rank lists) next to
  # metrics.json after the final evaluation (eval.py: with --report).
  config.eval.report = True
  # Lowest-AP queries shown with their rank lists in the report.
  config.eval.report_hardest = 6
  # Further queries drawn at random (seeded by config.seed) and shown.
  config.eval.report_random = 4
  # Gallery images shown per query in the report.
  config.eval.report_topk = 10
  # Size (height, width) of each image in the report's rank lists.
  config.eval.report_thumbnail = (128, 64)
  return config


# The dataset a family config's argument names first -> its TFDS builder
# (sa_reid_jax.datasets.builders.BUILDERS): the CUHK03-NP box sets are
# spelled without the slash, which a config argument cannot hold.
DATASETS = {'market1501': 'market1501', 'dukemtmc_reid': 'dukemtmc_reid',
            'cuhk03_labeled': 'cuhk03_np/labeled',
            'cuhk03_detected': 'cuhk03_np/detected', 'msmt17': 'msmt17',
            'market_layout_folder': 'market_layout_folder'}
# The option of every family config that makes it small: a network and
# input with which a command runs in seconds on a CPU, for checking a
# command or a change (what a run does, end to end, does not depend on the
# network's size). Each recipe has its own overrides (`TINY` here, and in
# rga_defaults and casn_defaults).
TINY_OPTION = 'tiny'


def parse_argument(arg: str | None, config_file: str,
                   options: tuple[str, ...],
                   exclusive: tuple[str, ...] = ()) -> tuple[str, list[str]]:
  """The dataset and options of a family config's argument.

  The argument is ``DATASET[,OPTION...]``, e.g. ``market1501,no_sa,tiny``
  (``--config=configs/sa.py:market1501,no_sa,tiny``); none: Market-1501.

  Args:
    arg: the argument after the config file's ``:``, or None.
    config_file: the file, for the error (``configs/sa.py``).
    options: the options the file takes (`TINY_OPTION` included).
    exclusive: options of which at most one may be given (e.g. networks).

  Returns:
    (TFDS builder name, the options given).

  Raises:
    ValueError: naming the file, for an unknown dataset or option, a
      repeated option, or two exclusive ones.
  """
  dataset, *given = (arg or 'market1501').split(',')
  usage = (f'{config_file}:DATASET[,OPTION...] with DATASET one of '
           f'{sorted(DATASETS)} and OPTIONs from {list(options)}, each at '
           'most once')
  if exclusive:
    usage += f' and at most one of {list(exclusive)}'
  unknown = [o for o in given if o not in options]
  repeated = sorted({o for o in given if given.count(o) > 1})
  networks = [o for o in given if o in exclusive]
  fault = (f'unknown dataset {dataset!r}' if dataset not in DATASETS else
           f'unknown option {unknown[0]!r}' if unknown else
           f'{repeated[0]!r} given twice' if repeated else
           f'{" and ".join(networks)} exclude each other'
           if len(networks) > 1 else None)
  if fault is not None:
    raise ValueError(f'config argument: expected {usage} (e.g. '
                     f'"market1501,{options[0]}"); got {arg!r}: {fault}')
  return DATASETS[dataset], given


def with_overrides(config: ml_collections.ConfigDict,
                   overrides: dict[str, object]) -> ml_collections.ConfigDict:
  """`config` with dotted keys (``'model.base_width'``) set; returns it.

  Raises:
    KeyError: for a key the config does not have.
  """
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    block = config
    for parent in parents:
      block = block[parent]
    if leaf not in block:
      raise KeyError(f'config has no key {key!r}')
    block[leaf] = value
  return config


# The SA recipe's `TINY_OPTION`.
TINY = {
    # No ImageNet backbone fits the small network: random weights.
    'init_from': SCRATCH,
    # One block per ResNet stage, 4 channels in the first: a network of a
    # few thousand parameters.
    'model.stage_sizes': (1, 1, 1, 1),
    'model.base_width': 4,
    # Still enough rows for six stripes after the last-stride-1 ResNet.
    'image_size': (64, 32),
    'batch_size': 8,
    # Evaluate at the end only, in batches that hold a small test split.
    'eval.every_epochs': 0,
    'eval.batch_size': 32,
    'log_every_steps': 5,
}

# The options of the SA config (configs/sa.py) besides the dataset.
SA_OPTIONS = ('no_sa', 'released', TINY_OPTION)


def sa_config(arg: str | None) -> ml_collections.ConfigDict:
  """The main experiment (paper Tables 1 and 3) on one dataset.

  The default is the paper's recipe as the official code trains it: SA with
  the official 'sum' normalisation (the published numbers came from it; the
  paper's softmax is ``--config.model.attention_normalization=softmax``),
  the plain sum of the ten losses, and the official random erasing, which
  the paper says its Tables 1 and 3 used.

  Args:
    arg: ``DATASET[,OPTION...]`` (`parse_argument`), the options in any
      order: ``no_sa`` for the same network without SA (Table 3's "-SA"
      rows); ``released`` for the recipe of the official repository's
      released ``main.py`` command, which trains without random erasing
      (switched off after the paper was written; everything else is the
      default, which already follows that code); ``tiny`` (`TINY`).

  Returns:
    the config: 100 epochs, re-ranked metrics reported too (plain = Table 3,
    re-ranked = Table 1).

  Raises:
    ValueError: for an unknown dataset or option, or a repeated option.
  """
  dataset, options = parse_argument(arg, 'configs/sa.py', SA_OPTIONS)
  config = experiment_config(dataset,
                             'full_no_sa' if 'no_sa' in options else 'full')
  if 'released' in options:
    config.augmentation.erasing_probability = 0.0
  config.eval.rerank = True
  if TINY_OPTION in options:
    with_overrides(config, TINY)
  return config
