"""Several datasets at once: dataset specs, the union of train sources,
evaluation targets, train-only datasets, and unknown cameras in the report
and its pictures.

The datasets are the synthetic Market-layout ones of `conftest` (two seeds
make two sources whose person ids overlap) and person folders and list
files written here (tiny PIL images).
"""

import json
import os
import re

import jax
import numpy as np
from PIL import Image
import pytest

import helpers
from sa_reid_jax.datasets import image_records
from sa_reid_jax.datasets import market_layout
from sa_reid_jax.datasets import sources
from sa_reid_jax.datasets import tables
from sa_reid_jax.evaluation import evaluate
from sa_reid_jax.evaluation import metrics
from sa_reid_jax.evaluation import pictures
from sa_reid_jax.evaluation import report
from sa_reid_jax.evaluation import report_figures
from sa_reid_jax.models import store
from sa_reid_jax.models.sanet import SANet
from sa_reid_jax.training import defaults
from sa_reid_jax.training import run as run_lib
from sa_reid_jax.training import trainer
from sa_reid_jax.training import validation

UNKNOWN = image_records.UNKNOWN_CAMERA
TARGETS = 'config.eval.extra_targets'
EXTRA = 'config.dataset.extra_train'
# The second synthetic source: helpers.P_K_DATASET's arguments (8 train
# identities, seed 1), so that the session makes it once for both files.
SECOND = helpers.P_K_DATASET


def _image(path, seed=0, size=(16, 8)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), np.uint8)
  Image.fromarray(pixels).save(path)


def _people(root, splits):
  """Writes {split: {person: count}} as person folders (cameras unknown)."""
  for split, people in splits.items():
    for p, (person, count) in enumerate(sorted(people.items())):
      for i in range(count):
        _image(os.path.join(root, split, person, f'{i}.jpg'),
               seed=100 * p + i)
  return str(root)


def _config(data, **overrides):
  return helpers.tiny_config(data, **overrides)


# --- dataset specs -------------


@pytest.mark.parametrize('spec, fields', [
    ('market1501', {'name': 'market1501', 'folder': '', 'list': ''}),
    ('cuhk03_np/labeled', {'name': 'cuhk03_np/labeled'}),
    ('folder:data/duke', {'name': '', 'folder': 'data/duke',
                          'layout': 'market1501'}),
    (' person_folders:my crops ', {'folder': 'my crops',
                                   'layout': 'person_folders'}),
    ('lists/crops.csv', {'list': 'lists/crops.csv', 'folder': ''}),
    ('crops.TSV', {'list': 'crops.TSV'}),
])
def test_each_spec_form_makes_its_block(spec, fields):
  block = sources.block_from_spec(spec, TARGETS, data_dir='/built')
  for key, value in fields.items():
    assert block[key] == value, key
  assert block.data_dir == '/built'
  assert block.spec == spec.strip()
  assert sources.describe(block) == f'{TARGETS}: {spec.strip()}'
  # The spec a block gives back names the same source.
  assert sources.spec_of(block) == spec.strip()


def test_the_spec_of_a_config_block():
  block = defaults.experiment_config('market1501').dataset
  assert sources.spec_of(block) == 'market1501'
  block.folder = 'd'
  assert sources.spec_of(block) == 'folder:d'
  block.layout = 'person_folders'
  assert sources.spec_of(block) == 'person_folders:d'
  block.folder, block.list = '', 'x.csv'
  assert sources.spec_of(block) == 'x.csv'


FORMS = ('a TFDS dataset name (e.g. market1501), folder:DIR (Market-1501 '
         'layout), person_folders:DIR, or a list file ending in .csv or .tsv')


@pytest.mark.parametrize('text, message', [
    ('market', f"{EXTRA}: 'market' is not a dataset spec (did you mean "
     f"'market1501'?); expected {FORMS}; the TFDS datasets: "),
    ('crops.txt', f"{EXTRA}: 'crops.txt' is not a dataset spec; expected "
     f'{FORMS}; the TFDS datasets: '),
    ('folder:', f"{EXTRA}: 'folder:' names no folder; expected {FORMS}"),
    ('market1501,,x.csv', f'{EXTRA}: an empty dataset spec; expected '
     f'{FORMS}, comma-separated'),
    ('x.csv, x.csv', f"{EXTRA}: 'x.csv' is given twice in 'x.csv, x.csv'; "
     'name each dataset once'),
])
def test_a_bad_spec_is_one_error_naming_key_and_spec(text, message):
  with pytest.raises(ValueError) as error:
    sources.blocks_from_specs(text, EXTRA)
  assert str(error.value).startswith(message), str(error.value)
  assert '\n' not in str(error.value)


def test_no_spec_is_no_block():
  assert sources.blocks_from_specs('', TARGETS) == []
  assert sources.blocks_from_specs('  ', TARGETS) == []


def test_start_up_checks_name_the_key(data, tmp_path):
  config = _config(data, **{'dataset.extra_train': 'folder:a,dukemtmc'})
  with pytest.raises(ValueError, match=re.escape(
      f"{EXTRA}: 'dukemtmc' is not a dataset spec (did you mean "
      "'dukemtmc_reid'?)")):
    validation.check_config(config, 2, 1)
  # eval.py's checks read the targets; a list file's header is read too.
  config = _config(data, **{'eval.extra_targets': str(tmp_path / 'no.csv')})
  with pytest.raises(ValueError, match=re.escape(
      f'{TARGETS}: {tmp_path / "no.csv"}: {tmp_path / "no.csv"}: missing')):
    validation.check_evaluation_config(config)


# --- the union of train sources -----------------------------------------------


def _hand_count(root):
  """(person ids, images) of a Market-layout train folder, from its file
  names (independent of the readers)."""
  names = [n for n in os.listdir(os.path.join(root, 'bounding_box_train'))
           if n.endswith('.jpg')]
  return sorted({int(n.split('_')[0]) for n in names}), len(names)


def test_union_keeps_the_identities_of_two_sources_apart(
    data, synthetic_dataset):
  second = synthetic_dataset(**SECOND)
  config = _config(data, **{'dataset.extra_train': f'folder:{second}'})
  lines = []
  table, evaluates_main, targets = run_lib._read_sources(config, lines.append)
  assert evaluates_main and targets == []
  (ids_a, count_a), (ids_b, count_b) = _hand_count(data), _hand_count(second)
  # Both seeds draw person ids from the same range: they overlap.
  assert set(ids_a) & set(ids_b)
  assert lines[-3:] == [
      f'train source 1 of 2: folder:{data} \u2014 {len(ids_a)} identities, '
      f'{count_a} images',
      f'train source 2 of 2: folder:{second} \u2014 {len(ids_b)} '
      f'identities, {count_b} images',
      f'training on the union: {len(ids_a) + len(ids_b)} identities, '
      f'{count_a + count_b} images']
  # Source 2's person ids above source 1's largest; labels 0..K-1 in
  # sorted person-id order over the union.
  expected = ids_a + [max(ids_a) + 1 + i for i in ids_b]
  assert sorted(set(table.person_ids.tolist())) == expected
  np.testing.assert_array_equal(
      table.labels, [expected.index(p) for p in table.person_ids])
  assert table.num_classes == len(ids_a) + len(ids_b)
  second_table = sources.read_splits(
      sources.block_from_spec(f'folder:{second}', EXTRA), ('train',),
      log=lambda _: None)['train']
  np.testing.assert_array_equal(table.person_ids[count_a:],
                                second_table.person_ids + max(ids_a) + 1)


def test_union_reads_files_where_a_source_holds_encoded_images(tmp_path):
  def table(images, paths, pids):
    return tables.ExampleTable(
        images=np.array(images, dtype=object), images_are_paths=paths,
        person_ids=np.array(pids, np.int32),
        labels=np.unique(pids, return_inverse=True)[1].astype(np.int32),
        camera_ids=np.zeros(len(pids), np.int32),
        filenames=np.array([f'{i}.jpg' for i in range(len(pids))],
                           dtype=object))
  path = tmp_path / 'x.jpg'
  path.write_bytes(b'file bytes')
  # A TFDS table (encoded images) then a folder's (paths).
  union = sources.union_train([table([b'a', b'b'], False, [3, 5]),
                               table([str(path)], True, [3])])
  assert not union.images_are_paths
  assert list(union.images) == [b'a', b'b', b'file bytes']
  np.testing.assert_array_equal(union.person_ids, [3, 5, 9])
  np.testing.assert_array_equal(union.labels, [0, 1, 2])


def test_sampler_and_network_see_the_union(data, synthetic_dataset,
                                           tmp_path):
  second = synthetic_dataset(**SECOND)
  config = _config(data, **{'dataset.extra_train': f'folder:{second}',
                            'data.sampler': 'identity',
                            'data.images_per_identity': 2,
                            'batch_size': 8})
  run = run_lib.Run(config, str(tmp_path / 'run'))
  classes = len(_hand_count(data)[0]) + len(_hand_count(second)[0])
  assert run.table.num_classes == classes
  assert run.config_signature()['num_classes'] == classes
  assert run.model.num_classes == classes
  # The identity sampler's epoch is one pass over the identities: P = 4.
  assert run.steps_per_epoch == classes // 4


def test_an_extra_source_without_a_train_split_names_key_and_spec(
    data, tmp_path):
  folder = _people(tmp_path / 'p', {'query': {'a': 1}, 'gallery': {'a': 2}})
  config = _config(data, **{'dataset.extra_train':
                            f'person_folders:{folder}'})
  with pytest.raises(market_layout.LayoutError, match=re.escape(
      f'{EXTRA}: person_folders:{folder}: '
      f'{os.path.join(folder, "train")}: missing')):
    run_lib._read_sources(config, lambda _: None)


def test_a_faulty_target_stops_the_run_before_its_workdir(data, tmp_path):
  # Query without gallery: named before any step, no workdir written.
  folder = _people(tmp_path / 'p', {'query': {'a': 1}})
  config = _config(data, **{'eval.extra_targets': f'person_folders:{folder}'})
  workdir = tmp_path / 'run'
  with pytest.raises(market_layout.LayoutError, match=re.escape(
      f'{TARGETS}: person_folders:{folder}: '
      f'{os.path.join(folder, "gallery")}: missing; a person-folders')):
    trainer.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()
  # A target whose queries have no true match, named with its spec.
  folder = _people(tmp_path / 'q', {'query': {'a': 1}, 'gallery': {'b': 1}})
  config.eval.extra_targets = f'person_folders:{folder}'
  with pytest.raises(ValueError, match=re.escape(
      f'{TARGETS}: person_folders:{folder}: no query has a gallery image of '
      'its person')):
    trainer.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


# --- train-only datasets ------------------------------------------------------


def test_a_train_only_dataset_trains_without_evaluation(tmp_path, capfd):
  folder = _people(tmp_path / 'p', {'train': {'ann': 3, 'ben': 3, 'cas': 2,
                                              'dia': 3}})
  config = helpers.tiny_config(folder, **{
      'dataset.layout': 'person_folders', 'max_steps': 1, 'batch_size': 4,
      'eval.at_start': True, 'eval.report': True})
  workdir = tmp_path / 'run'
  capfd.readouterr()
  result = trainer.train_and_evaluate(config, str(workdir),
                                      devices=jax.devices()[:1])
  out = capfd.readouterr().out
  message = (f'no evaluation: config.dataset.folder: {folder} has no query '
             'and gallery splits and config.eval.extra_targets is empty; '
             'training runs without evaluation')
  assert out.count(message) == 1, out
  assert 'evaluation at step' not in out
  with open(workdir / 'metrics.json') as f:
    written = json.load(f)
  assert written['final'] is None and written['targets'] == {}
  assert written['not_evaluated'].startswith(
      f'config.dataset.folder: {folder} has no query and gallery splits')
  assert result['final'] is None
  info = store.load_model_info(str(workdir / 'model'))
  assert info['metadata']['dataset'] == f'config.dataset.folder: {folder}'
  assert not (workdir / 'report.html').exists()


def test_a_list_file_without_evaluation_rows_is_train_only(tmp_path):
  rows = ['path,person_id,split']
  for p, person in enumerate(('ann', 'ben')):
    for i in range(2):
      _image(tmp_path / 'imgs' / f'{person}{i}.jpg', seed=p * 10 + i)
      rows.append(f'imgs/{person}{i}.jpg,{person},train')
  (tmp_path / 'crops.csv').write_text('\n'.join(rows) + '\n')
  block = sources.block_from_spec(str(tmp_path / 'crops.csv'), EXTRA)
  assert not sources.has_evaluation_splits(block)
  (tmp_path / 'crops.csv').write_text(
      '\n'.join(rows + ['imgs/ann0.jpg,ann,query']) + '\n')
  # The missing split and the file's other fault (ann0.jpg listed as a
  # train and a query image), in one error.
  with pytest.raises(market_layout.LayoutError) as error:
    sources.has_evaluation_splits(block, log=lambda _: None)
  path = tmp_path / 'crops.csv'
  assert str(error.value).splitlines() == [
      f'{EXTRA}: {path}: {path}: 2 faults:',
      f"  {path}: no 'gallery' rows, but its query split is there: "
      'evaluation needs both (or neither, for a dataset that only trains)',
      f'  {path}:6: imgs/ann0.jpg listed twice (first on line 2)']


def test_eval_py_needs_a_split_to_evaluate(tmp_path, saved_sanet, cli):
  folder = _people(tmp_path / 'p', {'train': {'ann': 2}})
  result = cli('eval.py', '--config=configs/demo_synthetic.py',
               f'--checkpoint={saved_sanet[0]}',
               f'--config.dataset.folder={folder}',
               '--config.dataset.layout=person_folders')
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      f'eval.py: error: config.dataset.folder: {folder} has no query and '
      'gallery splits to evaluate on; name datasets that have them with '
      '--config.eval.extra_targets=SPEC[,SPEC...]')


# --- unknown cameras: histograms, match kinds, report ------------------------

# Two queries (persons 1, 2), four gallery images (persons 1, 2, 1, 3). The
# distances avoid the edges of 2 bins over [0, 1] (0.5).
DISTANCES = np.array([[0.3, 0.0, 0.9, 0.6],
                      [1.0, 0.4, 0.7, 0.2]], np.float64)
Q_PIDS, G_PIDS = np.array([1, 2]), np.array([1, 2, 1, 3])


@pytest.mark.parametrize('q_cams, g_cams, true_counts', [
    # Unknown cameras: every same-person pair is a true match: (0, 0) 0.3,
    # (1, 1) 0.4 below 0.5; (0, 2) 0.9 above.
    ([UNKNOWN] * 2, [UNKNOWN] * 4, [2, 1]),
    # Known cameras: (0, 0) and (1, 1) share theirs and are left out.
    ([0, 1], [0, 1, 1, 0], [0, 1]),
    # Query 0's camera unknown: both its pairs; query 1's (1, 1) left out.
    ([UNKNOWN, 1], [0, 1, 1, 0], [1, 1]),
    # Unknown gallery cameras equal to nothing either.
    ([0, 1], [UNKNOWN] * 4, [2, 1]),
])
def test_histograms_never_treat_unknown_as_the_same_camera(q_cams, g_cams,
                                                           true_counts):
  edges, true, false = report_figures.match_distance_histograms(
      DISTANCES, Q_PIDS, G_PIDS, np.array(q_cams), np.array(g_cams), bins=2)
  np.testing.assert_allclose(edges, [0.0, 0.5, 1.0])
  np.testing.assert_array_equal(true, true_counts)
  # False matches (another person): 0.0, 0.2 below; 0.6, 1.0, 0.7 above.
  np.testing.assert_array_equal(false, [2, 3])


def test_match_kinds_never_treat_unknown_as_the_same_camera():
  pids, junk = np.array([1, 2, 1, -1, 1]), market_layout.JUNK_PERSON_ID
  assert pids[3] == junk
  assert list(pictures.match_kinds(1, UNKNOWN, pids, np.array(
      [UNKNOWN, UNKNOWN, 0, UNKNOWN, UNKNOWN]))) == [
          'match', 'wrong', 'match', 'junk', 'match']
  assert list(pictures.match_kinds(1, 0, pids, np.array(
      [0, 0, UNKNOWN, 0, 1]))) == [
          'same cam', 'wrong', 'match', 'junk', 'match']


def _evaluation(cameras_known, pids=(Q_PIDS, G_PIDS)):
  q_cams = np.array([0, 1]) if cameras_known else np.full(2, UNKNOWN)
  g_cams = np.array([0, 0, 1, 0]) if cameras_known else np.full(4, UNKNOWN)

  def split(name, person_ids, cams):
    return tables.from_records(name, [image_records.ImageEntry(
        path=f'{name}{i}.jpg', person_id=int(p), camera_id=int(c),
        filename=f'{name}{i}.jpg') for i, (p, c) in enumerate(
            zip(person_ids, cams))])
  query, gallery = split('query', pids[0], q_cams), split('gallery', pids[1],
                                                         g_cams)
  plain = metrics.evaluate_rank(DISTANCES, query.person_ids,
                                gallery.person_ids, q_cams, g_cams,
                                max_rank=4)
  settings = {'flip': False, 'metric': 'euclidean', 'image_size': [32, 16],
              'num_query': 2, 'num_gallery': 4,
              'same_camera_removal': cameras_known, 'dataset': 'x.csv'}
  return evaluate.Evaluation(
      metrics={'plain': evaluate.summarize(plain), 'settings': settings},
      query=query, gallery=gallery, distances=DISTANCES, plain=plain,
      reranked=None)


def _report_config():
  config = defaults.experiment_config('market1501')
  config.dataset.list = 'my_crops/crops.csv'
  config.image_size = (32, 16)
  config.eval.report_hardest = config.eval.report_random = 0
  return config


MODEL = SANet(num_classes=5, stage_sizes=(1, 1, 1, 1), base_width=4)


@pytest.mark.parametrize('known', [True, False])
def test_report_shows_the_same_camera_rule_and_the_dataset(tmp_path, known):
  path = report.write_report(_evaluation(known), str(tmp_path / 'r.html'),
                             MODEL, _report_config(), 'model')
  text = open(path, encoding='utf-8').read()
  assert ('<td class="name">same_camera_removal</td><td class="name">'
          f'{known}</td>') in text
  assert ('<td class="name">dataset</td><td class="name">'
          'config.dataset.list: my_crops/crops.csv</td>') in text
  sentence = re.sub(r'\s+', ' ', text)
  assert ('same-person same-camera gallery images removed per query' in
          sentence) == known
  assert ("no gallery image is removed for sharing the query's camera" in
          sentence.replace('&#x27;', "'")) == (not known)


def test_reports_of_targets_are_linked_from_report_html(tmp_path):
  config = _report_config()
  (tmp_path / 'report_stale.html').write_text('earlier')
  targets = {'folder:data/duke': _evaluation(True),
             'data/duke': _evaluation(False)}
  written = report.write_reports(_evaluation(True), targets, str(tmp_path),
                                 MODEL, config, 'model')
  names = ['report.html', 'report_folder_data_duke.html',
           'report_data_duke.html']
  assert [os.path.basename(p) for p in written] == names
  assert sorted(os.listdir(tmp_path)) == sorted(names)
  main = open(tmp_path / 'report.html', encoding='utf-8').read()
  # Query 0's first true match is gallery 2 at rank 4 (known cameras);
  # query 1's, gallery 1, at rank 2: rank-1 0 for both settings.
  for name, spec in zip(names[1:], targets):
    assert f'<li><a href="{name}">{spec}</a>: rank-1 0.00%' in main
  target = open(tmp_path / names[2], encoding='utf-8').read()
  assert '<td class="name">dataset</td><td class="name">x.csv</td>' in target
  # A train-only config.dataset: report.html only links the targets.
  written = report.write_reports(None, targets, str(tmp_path), MODEL,
                                 config, 'model', dataset='d')
  index = open(written[0], encoding='utf-8').read()
  assert 'd has no query and gallery splits' in index
  assert index.count('<li><a href=') == 2
  # Without a report, every earlier one goes.
  lines = []
  report.remove_stale_report(str(tmp_path), '--report', lines.append)
  assert os.listdir(tmp_path) == [] and len(lines) == 3


def test_target_report_names_are_safe_and_distinct():
  assert report.target_report_name('person_folders:/a b/c') == (
      'report_person_folders_a_b_c.html')
  assert report.target_report_name('a b', ['report_a_b.html']) == (
      'report_a_b_2.html')
  assert len(report.target_report_name('x' * 300)) == len(
      'report_.html') + report.TARGET_NAME_CHARS


# --- the documented commands, end to end -----------------------------------


def _own_crops(root):
  """``my_crops/crops.csv``: 3 test identities, a query and two gallery
  images each (cameras unknown), and 2 train identities."""
  rows = ['path,person_id,split']
  for i, person in enumerate(('ann', 'ben', 'eve', 'fay', 'gus')):
    for n in range(3):
      split = 'train' if i < 2 else ('query' if n == 0 else 'gallery')
      rows.append(f'{split}/{person}/{n}.jpg,{person},{split}')
      _image(root / 'my_crops' / split / person / f'{n}.jpg', seed=7 * i + n)
  (root / 'my_crops' / 'crops.csv').write_text('\n'.join(rows) + '\n')


def _run_documented(section, root, cli, *train_extra):
  os.symlink(os.path.join(helpers.REPO, 'configs'), root / 'configs')
  (train, train_args), (evaluation, eval_args) = [
      (argv[0], argv[1:])
      for argv in helpers.documented_dataset_commands(section)]
  assert (train, evaluation) == ('train.py', 'eval.py')
  trained = cli('train.py', *train_args, *helpers.documented_stand_ins(),
                *train_extra, cwd=str(root))
  assert trained.returncode == 0, trained.stderr[-3000:]
  evaluated = cli('eval.py', *eval_args, cwd=str(root))
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  return trained, evaluated, train_args, eval_args


def _value(args, flag):
  return next(a.split('=', 1)[1] for a in args if a.startswith(flag + '='))


@pytest.mark.full
def test_two_sources_evaluated_on_two_targets(tmp_path, cli, data,
                                             synthetic_dataset):
  os.symlink(data, tmp_path / 'synthetic_a')
  os.symlink(synthetic_dataset(**SECOND), tmp_path / 'synthetic_b')
  _own_crops(tmp_path)
  trained, evaluated, train_args, eval_args = _run_documented(
      'several datasets', tmp_path, cli, '--config.eval.report=True')
  specs = _value(train_args, '--config.eval.extra_targets').split(',')
  assert specs == ['folder:synthetic_b', 'my_crops/crops.csv']
  assert 'train source 2 of 2: folder:synthetic_b \u2014 8 identities' in (
      trained.stdout)
  workdir = tmp_path / _value(train_args, '--workdir')
  with open(workdir / 'metrics.json') as f:
    written = json.load(f)
  assert list(written['targets']) == specs
  for spec in specs:
    target = written['targets'][spec]
    assert set(target) >= {'plain', 'verification', 'settings'}
    assert target['settings']['dataset'] == spec
    assert target['settings']['trained_steps'] == 2
    assert f'evaluation of {spec} at step 2:' in trained.stdout
  assert set(written['final']) >= {'plain', 'verification', 'settings'}
  # The list file has no cameras: its three queries each keep both gallery
  # images; the synthetic target has them.
  crops = written['targets']['my_crops/crops.csv']
  assert crops['settings']['same_camera_removal'] is False
  assert crops['plain']['num_valid_queries'] == 3
  assert written['targets']['folder:synthetic_b']['settings'][
      'same_camera_removal'] is True
  main = open(workdir / 'report.html', encoding='utf-8').read()
  for spec, name in zip(specs, ('report_folder_synthetic_b.html',
                                'report_my_crops_crops.csv.html')):
    assert f'<a href="{name}">{spec}</a>' in main
    assert (workdir / name).is_file()
  # The model's classifier: both sources' identities.
  info = store.load_model_info(str(workdir / 'model'))
  assert info['metadata']['extra_train'] == ['folder:synthetic_b']
  # eval.py: both targets printed under their names and in metrics.json.
  for spec in specs:
    assert f'target {spec}:' in evaluated.stdout
  with open(tmp_path / _value(eval_args, '--checkpoint') /
            'metrics.json') as f:
    again = json.load(f)
  assert list(again['targets']) == specs and 'plain' in again
  assert (tmp_path / _value(eval_args, '--checkpoint') /
          'report_my_crops_crops.csv.html').is_file()


@pytest.mark.full
def test_a_train_only_dataset_evaluates_on_its_target(tmp_path, cli):
  _own_crops(tmp_path)
  _people(tmp_path / 'my_train_crops', {'train': {'ann': 3, 'ben': 3,
                                                  'cas': 3, 'dia': 3}})
  trained, evaluated, train_args, eval_args = _run_documented(
      'train only', tmp_path, cli)
  assert ('has no query and gallery splits: no evaluation during training; '
          'the final evaluation is on config.eval.extra_targets only (1 '
          'target)') in trained.stdout
  with open(tmp_path / _value(train_args, '--workdir') / 'metrics.json') as f:
    written = json.load(f)
  assert written['final'] is None and 'not_evaluated' not in written
  assert written['targets']['my_crops/crops.csv']['plain'][
      'num_valid_queries'] == 3
  with open(tmp_path / _value(eval_args, '--checkpoint') /
            'metrics.json') as f:
    again = json.load(f)
  assert again['not_evaluated'].endswith('has no query and gallery splits')
  assert again['targets']['my_crops/crops.csv']['plain'][
      'num_valid_queries'] == 3
