"""TFDS builders for person re-id datasets.

Every dataset here is read from a manually downloaded folder (the datasets'
licences forbid redistribution): ``market1501``, ``dukemtmc_reid``,
``cuhk03_np`` (configs ``labeled`` and ``detected``), ``msmt17`` and
``market_layout_folder`` (any folder in Market-1501 layout, e.g. one written by
``sa_reid_jax.datasets.synthetic``). They share ``MarketLayoutBuilder`` and
differ in name, description and where the folder sits under ``manual_dir``;
``msmt17`` and ``cuhk03_np`` also read their original releases (list files;
``cuhk-03.mat`` with the new-protocol configs; see `original_releases`).

Splits: ``train`` (``bounding_box_train/``), ``query`` (``query/``) and
``gallery`` (``bounding_box_test/``). Features:

* ``image``: the image file's bytes as they are (JPEG for all but CUHK03-NP,
  whose PNG files are kept lossless; decoding detects the format).
* ``person_id``: the id in the file name (or the release's list or config);
  -1 junk and 0 distractors are kept in the gallery.
* ``label``: in ``train``, a contiguous class 0..K-1 assigned in sorted
  person-id order; ``NO_LABEL`` (-1) in ``query`` and ``gallery``.
* ``camera_id``: 0-based (camera ``c1`` in a file name is 0).
* ``filename``: the file's base name (CUHK03 from ``cuhk-03.mat``: the name
  the CUHK03-NP copy gives the image).

Building checks every file before writing anything: a name that does not
parse, junk in ``train`` or a missing split folder stops it with one
``LayoutError`` naming the file or folder, and undecodable images with one
error listing all of them (`image_check`).

Example::

  from sa_reid_jax.datasets import builders
  builder = builders.prepare('market1501', manual_dir='~/reid_downloads',
                             data_dir='~/tensorflow_datasets')
  gallery = builder.as_dataset(split='gallery')
"""

import contextlib
import difflib
import os
from typing import Callable

from sa_reid_jax.datasets.tensorflow_cpu import tf  # pylint: disable=g-import-not-at-top
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

from sa_reid_jax.datasets import image_check  # pylint: disable=g-import-not-at-top
from sa_reid_jax.datasets import market_layout  # pylint: disable=g-import-not-at-top
from sa_reid_jax.datasets import original_releases  # pylint: disable=g-import-not-at-top
from sa_reid_jax.datasets import tensorflow_cpu  # pylint: disable=g-import-not-at-top

NO_LABEL = -1
SPLITS = tuple(market_layout.SPLIT_FOLDERS)

_LAYOUT = ('bounding_box_train/, query/ and bounding_box_test/ with images '
           'named like 0002_c1s1_000451_03.jpg')


class MarketLayoutBuilder(tfds.core.GeneratorBasedBuilder,
                          skip_registration=True):
  """Shared implementation; subclasses set the class attributes below.

  Attributes:
    DATASET_DESCRIPTION: what the dataset is.
    HOMEPAGE: where it is described.
    CITATION: BibTeX to cite.
    FOLDER: where the Market-layout folder sits, relative to ``manual_dir``
      ('' for ``manual_dir`` itself); a subclass with BuilderConfigs may
      override ``dataset_folder`` instead.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  DATASET_DESCRIPTION = ''
  HOMEPAGE = ''
  CITATION = ''
  FOLDER = ''

  def dataset_folder(self) -> str:
    """The dataset folder's path relative to ``manual_dir``."""
    return self.FOLDER

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(f'{self.DATASET_DESCRIPTION}\n\n'
                     f'{self.MANUAL_DOWNLOAD_INSTRUCTIONS}'),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3),
                                         encoding_format='jpeg'),
            'person_id': tf.int32,
            'label': tf.int32,
            'camera_id': tf.int32,
            'filename': tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'),
        homepage=self.HOMEPAGE,
        citation=self.CITATION,
    )

  def _source(self, manual_dir: str) -> tuple[dict[str, list], Callable]:
    """Where the images come from: records per split and a reader.

    Args:
      manual_dir: the download folder.

    Returns:
      ({split: records in file-name order}, a function that opens the
      source: a context manager giving ``read(record) -> bytes``).

    Raises:
      LayoutError: when the dataset is not there in a layout this builder
        reads, or a file or name is at fault.
    """
    root = os.path.join(manual_dir, self.dataset_folder())
    if not os.path.isdir(root):
      raise market_layout.LayoutError(
          f'{root}: missing; {self.name} expects it to hold {_LAYOUT}.\n'
          f'{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    # Scan all three splits first so a missing folder or a bad name stops the
    # build before anything is written.
    records = {split: market_layout.scan_split(root, split)
               for split in SPLITS}
    return records, _image_files(records)

  def _split_generators(self, dl_manager):
    tensorflow_cpu.hide_accelerators_from_tensorflow()
    records, open_source = self._source(os.fspath(dl_manager.manual_dir))
    labels = {'train': market_layout.train_labels(records['train'])}
    for split in ('query', 'gallery'):
      labels[split] = [NO_LABEL] * len(records[split])
    return {split: self._generate_examples(records[split], labels[split],
                                           open_source)
            for split in SPLITS}

  def _generate_examples(self, records, labels, open_source):
    with open_source() as read:
      for record, label in zip(records, labels):
        contents = read(record)
        check_image(record.path, contents)
        yield record.filename, {
            'image': contents,
            'person_id': record.person_id,
            'label': label,
            'camera_id': record.camera_id,
            'filename': record.filename,
        }


def _image_files(records: dict[str, list]) -> Callable:
  """The reader of image files, after checking every one of them decodes.

  All files are decoded (in parallel, verdicts cached by size and
  modification time, see `image_check`) before the build writes anything,
  so every unreadable file is named in one error.
  """
  paths = [record.path for split in SPLITS for record in records[split]]
  image_check.require_readable(paths, image_check.common_folder(paths))

  @contextlib.contextmanager
  def open_files():
    yield original_releases.file_reader

  return open_files


def check_image(path: str, contents: bytes):
  """Checks that an image file decodes to a non-empty RGB image.

  Args:
    path: the file, for the error message.
    contents: its bytes.

  Raises:
    LayoutError: naming the file when it does not decode.
  """
  try:
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
  except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
    reason = error.message.splitlines()[0] if error.message else 'unknown'
    raise market_layout.LayoutError(
        f'{path}: not a decodable image ({reason})') from None
  if 0 in image.shape:
    raise market_layout.LayoutError(f'{path}: empty image {image.shape}')


def _instructions(download: str, folder: str) -> str:
  return (f'{download}\nPlace (or link) the extracted folder so that '
          f'<manual_dir>/{folder}/ holds {_LAYOUT}.')


class Market1501(MarketLayoutBuilder):
  """Market-1501: 1,501 people, 6 cameras, Tsinghua University campus."""
  DATASET_DESCRIPTION = (
      'Market-1501: 32,668 detected pedestrian boxes of 1,501 people seen '
      'by 6 cameras; 751 identities for training (12,936 images), 750 for '
      'testing (3,368 queries, 19,732 gallery images incl. junk and '
      'distractors).')
  HOMEPAGE = 'https://zheng-lab-anu.github.io/Project/project_reid.html'
  CITATION = """@inproceedings{zheng2015scalable,
  title={Scalable Person Re-identification: A Benchmark},
  author={Zheng, Liang and Shen, Liyue and Tian, Lu and Wang, Shengjin and
          Wang, Jingdong and Tian, Qi},
  booktitle={ICCV}, year={2015}}"""
  FOLDER = 'Market-1501-v15.09.15'
  MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions(
      'Download Market-1501-v15.09.15.zip from the dataset homepage and '
      'unzip it into manual_dir.', FOLDER)


class DukemtmcReid(MarketLayoutBuilder):
  """DukeMTMC-reID: 1,404 people (plus distractors), 8 cameras."""
  DATASET_DESCRIPTION = (
      'DukeMTMC-reID: 36,411 boxes of 1,812 people seen by 8 cameras; 702 '
      'identities for training (16,522 images), 702 for testing (2,228 '
      'queries, 17,661 gallery images incl. 408 distractor identities).')
  HOMEPAGE = 'https://github.com/sxzrt/DukeMTMC-reID_evaluation'
  CITATION = """@inproceedings{zheng2017unlabeled,
  title={Unlabeled Samples Generated by GAN Improve the Person
         Re-identification Baseline in vitro},
  author={Zheng, Zhedong and Zheng, Liang and Yang, Yi},
  booktitle={ICCV}, year={2017}}"""
  FOLDER = 'DukeMTMC-reID'
  MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions(
      'Obtain DukeMTMC-reID.zip (the dataset has been withdrawn by its '
      'authors; use a copy you are entitled to) and unzip it into '
      'manual_dir.', FOLDER)


class Cuhk03Np(MarketLayoutBuilder):
  """CUHK03-NP: CUHK03 under the new 767/700 protocol.

  Read from the Market-layout copy (``cuhk03-np/labeled/``,
  ``cuhk03-np/detected/``) when it is there, else from the original release
  (``cuhk03_release/cuhk-03.mat`` plus the new-protocol config files, see
  `original_releases`); both give the same splits, ids, cameras, names and
  pixels.
  """
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(
          name='labeled', description='Hand-drawn bounding boxes.'),
      tfds.core.BuilderConfig(
          name='detected', description='DPM-detected bounding boxes.'),
  ]
  DATASET_DESCRIPTION = (
      'CUHK03-NP: CUHK03 (1,467 people, 2 cameras per person) with the new '
      'protocol of Zhong et al.: 767 identities for training, 700 for '
      'testing (1,400 queries, 5,332 gallery images), with labeled and '
      'detected boxes; read from the Market-1501-layout copy or from the '
      'original release.')
  HOMEPAGE = ('https://github.com/zhunzhong07/person-re-ranking/tree/master/'
              'CUHK03-NP')
  CITATION = """@inproceedings{li2014deepreid,
  title={DeepReID: Deep Filter Pairing Neural Network for Person
         Re-identification},
  author={Li, Wei and Zhao, Rui and Xiao, Tong and Wang, Xiaogang},
  booktitle={CVPR}, year={2014}}
@inproceedings{zhong2017re,
  title={Re-ranking Person Re-identification with k-reciprocal Encoding},
  author={Zhong, Zhun and Zheng, Liang and Cao, Donglin and Li, Shaozi},
  booktitle={CVPR}, year={2017}}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Either (a) download cuhk03-np.zip from the CUHK03-NP page of the '
      'person-re-ranking repository and unzip it into manual_dir, so that '
      f'<manual_dir>/cuhk03-np/labeled/ (and cuhk03-np/detected/) holds '
      f'{_LAYOUT}; or '
      '(b) unzip the original cuhk03_release.zip into manual_dir '
      '(<manual_dir>/cuhk03_release/cuhk-03.mat) and put '
      'cuhk03_new_protocol_config_labeled.mat and '
      'cuhk03_new_protocol_config_detected.mat (from the person-re-ranking '
      'repository, evaluation/data/CUHK03) beside cuhk03_release/.')

  def dataset_folder(self) -> str:
    return os.path.join('cuhk03-np', self.builder_config.name)

  def _source(self, manual_dir):
    boxes = self.builder_config.name
    if os.path.isdir(os.path.join(manual_dir, self.dataset_folder())):
      return super()._source(manual_dir)
    release = original_releases.find_cuhk03(manual_dir, boxes)
    if release is None:
      raise market_layout.LayoutError(
          f'{manual_dir}: holds neither {self.dataset_folder()}/ (Market '
          f'layout) nor {original_releases.CUHK03_RELEASE}/'
          f'{original_releases.CUHK03_MAT} with '
          f'{original_releases.CUHK03_CONFIG.format(boxes)} (the original '
          f'release).\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    mat, config_file = release
    records = original_releases.cuhk03_records(mat, config_file, boxes)
    return records, lambda: original_releases.Cuhk03Images(mat, boxes)


class Msmt17(MarketLayoutBuilder):
  """MSMT17, from the original release or its Market-layout conversion."""
  DATASET_DESCRIPTION = (
      'MSMT17: 126,441 boxes of 4,101 people seen by 15 cameras; 1,041 '
      'identities for training (32,621 images: the train and val lists), '
      '3,060 for testing (11,659 queries, 82,161 gallery images). Read from '
      'the original release (MSMT17_V1 or MSMT17_V2, with its list files) '
      'or from the common conversion to Market-1501 layout (ids and cameras '
      'in the file names). Person id 0000 is a real identity here, not a '
      'distractor.')
  HOMEPAGE = 'https://www.pkuvmc.com/dataset.html'
  CITATION = """@inproceedings{wei2018person,
  title={Person Transfer GAN to Bridge Domain Gap for Person
         Re-Identification},
  author={Wei, Longhui and Zhang, Shiliang and Gao, Wen and Tian, Qi},
  booktitle={CVPR}, year={2018}}"""
  FOLDER = 'MSMT17'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Obtain MSMT17 from its authors and extract it into manual_dir as it '
      'ships: <manual_dir>/MSMT17_V1/ (or MSMT17_V2/) holding train/, test/ '
      '(V2: mask_train_v2/, mask_test_v2/) and list_train.txt, '
      'list_val.txt, list_query.txt, list_gallery.txt. A conversion to '
      f'Market-1501 layout is read too: <manual_dir>/MSMT17/ holding '
      f'{_LAYOUT}.')

  def _source(self, manual_dir):
    release = original_releases.find_msmt17(manual_dir)
    if release is not None:
      records = {split: original_releases.msmt17_records(release, split)
                 for split in SPLITS}
      return records, _image_files(records)
    if not os.path.isdir(os.path.join(manual_dir, self.FOLDER)):
      raise market_layout.LayoutError(
          f'{manual_dir}: holds neither '
          f'{" nor ".join(original_releases.MSMT17_RELEASES)} with '
          f'list_train.txt (the original release) nor {self.FOLDER}/ '
          f'(Market layout).\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    return super()._source(manual_dir)


class MarketLayoutFolder(MarketLayoutBuilder):
  """Any folder in Market-1501 layout, e.g. your own or a synthetic one."""
  DATASET_DESCRIPTION = (
      'A person re-id dataset in Market-1501 layout supplied by the user '
      '(e.g. written by `python -m sa_reid_jax.datasets.synthetic`). Build '
      'each different folder into its own data_dir.')
  FOLDER = ''
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'Pass the dataset folder itself as manual_dir; it must hold {_LAYOUT}.')


BUILDERS = {builder.name: builder for builder in (
    Market1501, DukemtmcReid, Cuhk03Np, Msmt17, MarketLayoutFolder)}


def dataset_names() -> list[str]:
  """Every name `from_tfds` accepts for these builders, configs included
  (``cuhk03_np/labeled``)."""
  names = []
  for name, builder in BUILDERS.items():
    names.append(name)
    names.extend(f'{name}/{config.name}'
                 for config in builder.BUILDER_CONFIGS or ())
  return sorted(names)


def unknown_dataset(name: str, key: str = 'config.dataset.name') -> str:
  """One line for a dataset name that is none of `dataset_names`.

  TFDS's own error lists every dataset it knows (hundreds of lines) and
  does not say which setting held the name.

  Args:
    name: the name given.
    key: the setting that held it, for the message.

  Returns:
    the message: the key, the name, the close matches and the choices.
  """
  names = dataset_names()
  close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
  hint = (f'; did you mean {" or ".join(repr(c) for c in close)}?' if close
          else '')
  return (f'{key}: unknown dataset {name!r}{hint} (this project\'s datasets: '
          f'{", ".join(names)}; a folder in Market-1501 layout is read with '
          'config.dataset.folder)')


def prepare(name: str, manual_dir: str, data_dir: str | None = None,
            ) -> tfds.core.DatasetBuilder:
  """Builds (once) one of these datasets from its manually downloaded folder.

  Args:
    name: ``'market1501'``, ``'dukemtmc_reid'``, ``'cuhk03_np/labeled'``,
      ``'cuhk03_np/detected'``, ``'msmt17'`` or ``'market_layout_folder'``.
    manual_dir: the folder holding the download (see each builder's
      ``MANUAL_DOWNLOAD_INSTRUCTIONS``).
    data_dir: where TFDS keeps built datasets; None for its default
      (``~/tensorflow_datasets``).

  Returns:
    the prepared builder (``builder.as_dataset(split=...)`` reads it).

  Raises:
    ValueError: for an unknown name.
    LayoutError: for a missing or empty download folder, a missing
      dataset folder, a bad
      file name or list line, or undecodable images (all of them listed).
  """
  if name.split('/')[0] not in BUILDERS:
    raise ValueError(f'unknown dataset {name!r}; expected one of '
                     f'{sorted(BUILDERS)} (cuhk03_np needs /labeled or '
                     '/detected; plain cuhk03_np means labeled)')
  manual_dir = os.path.expanduser(os.fspath(manual_dir))
  # TFDS would stop on both with an AssertionError.
  if not os.path.isdir(manual_dir):
    raise market_layout.LayoutError(
        f'{manual_dir}: the download folder (manual_dir) does not exist')
  if not os.listdir(manual_dir):
    raise market_layout.LayoutError(
        f'{manual_dir}: the download folder (manual_dir) is empty.\n'
        f'{BUILDERS[name.split("/")[0]].MANUAL_DOWNLOAD_INSTRUCTIONS}')
  tensorflow_cpu.hide_accelerators_from_tensorflow()
  builder = tfds.builder(name, data_dir=data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          manual_dir=manual_dir))
  return builder
