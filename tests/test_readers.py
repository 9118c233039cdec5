"""Readers of the published formats, checked against the real files under ``data_dir``."""

import json
import shutil
import zipfile

import numpy as np
import pytest

from llm4rec_jax.data import readers
from llm4rec_jax.data.readers import (DATASETS, FORMATS, load_dataset, read_amazon_scientific,
                                      read_movielens_100k, read_movielens_csv, read_movielens_dat,
                                      read_movielens_dat_metadata, read_s3rec)
from llm4rec_jax.errors import DataError


def _rows(ds, raw_user):
  """(raw item, rating, timestamp) of one user's interactions, in sequence order."""
  u = ds.users.id_of()[str(raw_user)]
  idx = ds.order()[ds.user[ds.order()] == u]
  return [(ds.items.raw_ids[ds.item[i]], float(ds.rating[i]), int(ds.timestamp[i])) for i in idx]


@pytest.fixture(scope='module')
def ml100k(data_dir):
  return read_movielens_100k(data_dir / 'movielens/ml-100k')


# ----------------------------------------------------------------------------------- MovieLens


def test_ml100k_counts_and_values(ml100k):
  ds = ml100k
  assert (ds.num_interactions, ds.num_users, ds.num_items) == (100_000, 943, 1682)
  assert ds.has_timestamps and ds.name == 'ml-100k'
  assert ('242', 3.0, 881250949) in _rows(ds, 196)
  i = ds.items.id_of()['1']
  assert ds.items.text['title'][i] == 'Toy Story (1995)'
  assert ds.items.categorical['genres'].labels(i) == ['Animation', "Children's", 'Comedy']
  assert ds.items.numeric['year'][i] == 1995
  u = ds.users.id_of()['1']
  assert ds.users.numeric['age'][u] == 24
  assert ds.users.categorical['gender'].labels(u) == ['M']
  assert ds.users.categorical['occupation'].labels(u) == ['technician']
  assert ds.users.categorical['age_group'].labels(u) == ['18']
  # Item 267 has the title 'unknown' and no release date.
  assert np.isnan(ds.items.numeric['year'][ds.items.id_of()['267']])
  assert np.nanmin(ds.items.numeric['year']) >= 1920


def test_ml_latest_small(data_dir):
  ds = read_movielens_csv(data_dir / 'movielens/ml-latest-small')
  assert (ds.num_interactions, ds.num_users, ds.num_items) == (100_836, 610, 9724)
  assert ('1', 4.0, 964982703) in _rows(ds, 1)
  ids = ds.items.id_of()
  # A quoted title with a comma.
  assert ds.items.text['title'][ids['11']] == 'American President, The (1995)'
  assert ds.items.categorical['genres'].labels(ids['1']) == [
      'Adventure', 'Animation', 'Children', 'Comedy', 'Fantasy']
  assert ds.items.numeric['year'][ids['1']] == 1995


def test_ml1m_metadata(data_dir):
  items, users = read_movielens_dat_metadata(data_dir / 'movielens/ml-1m-metadata')
  assert len(items) == 3883 and len(users) == 6040
  assert items['1'] == dict(title='Toy Story (1995)', genres=['Animation', "Children's", 'Comedy'],
                            year=1995.0)
  assert users['1'] == dict(gender=['F'], age_group=['1'], occupation=['K-12 student'])
  assert users['2'] == dict(gender=['M'], age_group=['56'], occupation=['self-employed'])


def test_ml1m_full_reader(data_dir, tmp_path):
  for f in ('movies.dat', 'users.dat'):
    shutil.copy(data_dir / 'movielens/ml-1m-metadata' / f, tmp_path / f)
  (tmp_path / 'ratings.dat').write_text(
      '1::1193::5::978300760\n1::661::3::978302109\n2::1357::5::978298709\n2::1::4::978299000\n')
  ds = read_movielens_dat(tmp_path, dataset_name='ml-1m')
  assert (ds.num_interactions, ds.num_users, ds.num_items) == (4, 2, 4)
  assert _rows(ds, 1) == [('1193', 5.0, 978300760), ('661', 3.0, 978302109)]
  i = ds.items.id_of()['1193']
  assert ds.items.text['title'][i] == "One Flew Over the Cuckoo's Nest (1975)"
  assert ds.items.categorical['genres'].labels(i) == ['Drama']
  u = ds.users.id_of()['2']
  assert ds.users.categorical['age_group'].labels(u) == ['56']
  assert ds.users.categorical['occupation'].labels(u) == ['self-employed']


def test_ml10m_layout_without_users(tmp_path):
  (tmp_path / 'movies.dat').write_text('1::Toy Story (1995)::Adventure|Animation\n'
                                       '2::Jumanji (1995)::(no genres listed)\n', encoding='latin-1')
  (tmp_path / 'ratings.dat').write_text('5::1::4.5::838985046\n5::2::3::838983525\n')
  ds = load_dataset(f'ml-dat:{tmp_path}')
  assert (ds.num_interactions, ds.num_users, ds.num_items) == (2, 1, 2)
  assert ds.users.categorical == {}
  assert _rows(ds, 5) == [('2', 3.0, 838983525), ('1', 4.5, 838985046)]
  assert ds.items.categorical['genres'].labels(ds.items.id_of()['2']) == []


def test_zip_with_top_level_folder(data_dir, tmp_path, ml100k):
  src = data_dir / 'movielens/ml-100k'
  archive = tmp_path / 'ml-100k.zip'
  with zipfile.ZipFile(archive, 'w', zipfile.ZIP_DEFLATED) as z:
    z.writestr('ml-100k/', '')
    for f in ('u.data', 'u.item', 'u.user', 'u.genre'):
      z.write(src / f, f'ml-100k/{f}')
    z.writestr('__MACOSX/ml-100k/._u.data', 'junk')
  ds = read_movielens_100k(archive)
  assert (ds.num_interactions, ds.num_users, ds.num_items) == (100_000, 943, 1682)
  np.testing.assert_array_equal(ds.item, ml100k.item)
  np.testing.assert_array_equal(ds.rating, ml100k.rating)
  assert ds.items.text['title'] == ml100k.items.text['title']
  assert load_dataset(archive).num_interactions == 100_000  # format detected inside the zip


def test_filters(ml100k):
  pos = ml100k.filter(min_rating=4)
  assert pos.num_interactions == int((ml100k.rating >= 4).sum())
  assert 50_000 < pos.num_interactions < 60_000
  core = load_dataset('ml-100k', min_rating=4, k_core=5)
  assert core.num_interactions < pos.num_interactions
  assert core.num_users < ml100k.num_users and core.num_items < pos.num_items
  assert np.bincount(core.user)[1:].min() >= 5
  assert np.bincount(core.item)[1:].min() >= 5
  assert (core.rating >= 4).all()
  assert load_dataset('ml-100k', k_core=5).num_interactions < 100_000


# ------------------------------------------------------------------------------------ sequences


def _file_lines(path):
  return [line.split() for line in path.read_text().splitlines() if line.strip()]


def _check_sequences(ds, txt):
  lines = _file_lines(txt)
  seqs = ds.sequences()
  user_id = ds.users.id_of()
  assert ds.num_users == len(lines)
  for tokens in lines:
    assert list(ds.items.raw_ids[seqs[user_id[tokens[0]]]]) == tokens[1:]


def test_beauty(data_dir):
  ds = load_dataset('beauty')
  assert (ds.num_users, ds.num_items, ds.num_interactions) == (22_363, 12_101, 198_502)
  assert not ds.has_timestamps and ds.name == 'beauty'
  first = _file_lines(data_dir / 'amazon/beauty/Beauty.txt')[0]
  assert list(ds.items.raw_ids[ds.sequences()[ds.users.id_of()['1']]]) == first[1:]
  _check_sequences(ds, data_dir / 'amazon/beauty/Beauty.txt')
  # Internal ids keep the S3-Rec ids (1..N in order).
  assert list(ds.items.raw_ids[1:]) == [str(i) for i in range(1, 12_102)]
  assert list(ds.users.raw_ids[1:4]) == ['1', '2', '3']
  assert ds.items.text['asin'][1] == 'B004756YJA'
  attrs = json.loads((data_dir / 'amazon/beauty/Beauty_item2attributes.json').read_text())
  assert ds.items.categorical['attributes'].labels(4) == [str(a) for a in attrs['4']]


def test_yelp(data_dir):
  ds = read_s3rec(data_dir / 'yelp')  # name detected
  assert (ds.num_users, ds.num_items, ds.num_interactions) == (30_431, 20_033, 316_354)
  _check_sequences(ds, data_dir / 'yelp/Yelp.txt')
  assert ds.items.text['title'][1] == 'The Great Greek'  # key 0 is item 1
  assert ds.items.text['description'][2].startswith('Food Delivery Services')
  field = ds.items.categorical['attributes']
  assert len(field.vocab) == 1002  # 1001 attributes stay distinct
  assert 'Restaurants' in field.labels(1)


def test_lastfm(data_dir):
  ds = load_dataset('lastfm')
  assert (ds.num_users, ds.num_items, ds.num_interactions) == (1090, 3646, 52_551)
  _check_sequences(ds, data_dir / 'lastfm/LastFM.txt')


def test_scientific(data_dir):
  ds = read_amazon_scientific(data_dir / 'amazon/scientific')
  assert (ds.num_users, ds.num_items, ds.num_interactions) == (8317, 4344, 58_492)
  assert not ds.has_timestamps
  inter = json.loads((data_dir / 'amazon/scientific/Scientific.inter.json').read_text())
  seqs = ds.sequences()
  user_id = ds.users.id_of()
  for u, items in inter.items():
    assert list(ds.items.raw_ids[seqs[user_id[u]]]) == [str(i) for i in items]
  i = ds.items.id_of()['0']
  assert ds.items.text['title'][i].startswith('SUPCO SPP6')
  assert ds.items.text['brand'][i] == 'Sealed Unit Parts Co., Inc.'
  assert ds.items.categorical['categories'].labels(i) == [
      'Industrial & Scientific', 'Industrial Electrical', 'Passive Components', 'Capacitors']


# ------------------------------------------------------------------------------------ dispatcher


def test_registry_and_dispatch(data_dir):
  assert {'ml-100k', 'ml-latest-small', 'beauty', 'yelp', 'lastfm', 'scientific'} <= set(DATASETS)
  assert set(FORMATS) == {'ml-100k', 'ml-dat', 'ml-csv', 's3rec', 'scientific', 'recbole',
                          'amazon-reviews', 'amazon-2023', 'yelp-open', 'coat', 'events'}
  assert load_dataset(f's3rec:{data_dir / "lastfm"}').num_interactions == 52_551
  assert load_dataset(data_dir / 'lastfm/LastFM.txt').num_users == 1090
  assert load_dataset('scientific').num_items == 4344
  with pytest.raises(DataError, match='unknown dataset'):
    load_dataset('no-such-dataset')


# ------------------------------------------------------------------------------------ bad input


def _ml100k_dir(tmp_path, data='1\t10\t5\t100\n2\t10\t3\t200\n2\t11\t4\t300\n'):
  d = tmp_path / 'ml'
  d.mkdir(exist_ok=True)
  (d / 'u.data').write_text(data)
  (d / 'u.genre').write_text('unknown|0\nAction|1\n\n')
  (d / 'u.item').write_text('10|A (1990)|01-Jan-1990||url|0|1\n11|B (1991)|||url|1|0\n')
  (d / 'u.user').write_text('1|30|F|writer|1\n2|17|M|student|2\n')
  return d


def test_small_synthetic_100k(tmp_path):
  ds = read_movielens_100k(_ml100k_dir(tmp_path))
  assert (ds.num_interactions, ds.num_users, ds.num_items) == (3, 2, 2)
  assert ds.users.categorical['age_group'].labels(2) == ['1']
  assert ds.items.categorical['genres'].labels(1) == ['Action']


@pytest.mark.parametrize('data,line,what', [
    ('1\t10\t5\t100\n1\t10\t5\n', 2, 'expected 4 fields'),
    ('1\t10\t5\t100\n\n1\tx10\t5\t100\n', 3, "field 'item'"),
    ('1\t10\t5\t100\n1\t10\tgood\t100\n', 2, "field 'rating'"),
    ('1\t10\t5\t100\n1\t10\t5\t1.5e9\n', 2, "field 'timestamp'"),
    ('1.5\t10\t5\t100\n', 1, "field 'user'"),
])
def test_malformed_line(tmp_path, data, line, what):
  d = _ml100k_dir(tmp_path, data)
  with pytest.raises(DataError, match=what) as e:
    read_movielens_100k(d)
  assert f'u.data:{line}' in str(e.value)
  assert e.value.line == line


def test_malformed_line_number_across_chunks(tmp_path, monkeypatch):
  monkeypatch.setattr(readers, '_CHUNK_LINES', 2)
  d = _ml100k_dir(tmp_path, '1\t10\t5\t100\n' * 6 + '1\t10\t5\tnow\n' + '1\t10\t5\t100\n')
  with pytest.raises(DataError, match=r'u\.data:7'):
    read_movielens_100k(d)
  (d / 'u.data').write_text('1\t10\t5\t100\n' * 5)
  assert read_movielens_100k(d).num_interactions == 5


def test_malformed_metadata_and_sequences(tmp_path):
  d = _ml100k_dir(tmp_path)
  (d / 'u.item').write_text('10|A (1990)|01-Jan-1990||url|0|1\n11|B|||url|1\n')
  with pytest.raises(DataError, match=r'u\.item:2.*expected 7 fields'):
    read_movielens_100k(d)
  (tmp_path / 'X.txt').write_text('1 1 2 3\n2 4 5\n3 6 oops\n')
  (tmp_path / 'X_item2attributes.json').write_text('{"1": [1]}')
  with pytest.raises(DataError, match=r"X\.txt:3.*'oops'"):
    read_s3rec(tmp_path, 'X')
  (tmp_path / 'X.txt').write_text('1 1 2 3\n2\n')
  with pytest.raises(DataError, match=r'X\.txt:2.*no items'):
    read_s3rec(tmp_path, 'X')
  (tmp_path / 'X.txt').write_text('1 1 2 3\n')
  (tmp_path / 'X_item2attributes.json').write_text('{"1": [1],\n "2": [2}')
  with pytest.raises(DataError, match=r'X_item2attributes\.json:2.*invalid JSON'):
    read_s3rec(tmp_path, 'X')


def test_missing_file(tmp_path):
  d = _ml100k_dir(tmp_path)
  (d / 'u.user').unlink()
  with pytest.raises(DataError) as e:
    read_movielens_100k(d)
  assert str(d / 'u.user') in str(e.value) and 'not found' in str(e.value)
  with pytest.raises(DataError, match='does not exist'):
    read_movielens_csv(tmp_path / 'nowhere')
  with pytest.raises(DataError, match=r'Beauty_item2attributes\.json'):
    (tmp_path / 'Beauty.txt').write_text('1 1 2\n')
    read_s3rec(tmp_path, 'Beauty')


def test_empty_files(tmp_path):
  d = _ml100k_dir(tmp_path, '')
  with pytest.raises(DataError, match=r'u\.data.*dataset is empty'):
    read_movielens_100k(d)
  (tmp_path / 'E.txt').write_text('\n')
  (tmp_path / 'E_item2attributes.json').write_text('{}')
  with pytest.raises(DataError, match=r'E\.txt.*dataset is empty'):
    read_s3rec(tmp_path)
  (tmp_path / 'S.inter.json').write_text('{}')
  (tmp_path / 'S.item.json').write_text('')
  with pytest.raises(DataError, match='dataset is empty'):
    read_amazon_scientific(tmp_path)
  (tmp_path / 'ratings.csv').write_text('userId,movieId,rating,timestamp\n')
  (tmp_path / 'movies.csv').write_text('movieId,title,genres\n')
  with pytest.raises(DataError, match=r'ratings\.csv.*dataset is empty'):
    read_movielens_csv(tmp_path)


# ------------------------------------------------------------------------ RecBole atomic files


_SCI_FEATURES = 'amazon/scientific-features'


def _inter_rows(path):
  """(user index, history indices, target index) rows of a RecBole split file."""
  rows = []
  for line in path.read_text().splitlines()[1:]:
    u, h, t = line.split('\t')
    rows.append((int(u), [int(x) for x in h.split()], int(t)))
  return rows


@pytest.fixture(scope='module')
def sci_features(data_dir):
  return load_dataset('scientific-features')


def test_recbole_scientific_features(data_dir, sci_features):
  from llm4rec_jax.data.splits import leave_one_out  # pylint: disable=import-outside-toplevel
  ds = sci_features
  folder = data_dir / _SCI_FEATURES
  assert (ds.num_users, ds.num_items, ds.num_interactions) == (2928, 1585, 19_712)
  assert not ds.has_timestamps and ds.name == 'scientific-features'
  # Item index k is internal id k + 1; users follow user2index.
  asins = [line.split('\t')[0] for line in (folder / 'Scientific.item2index').read_text().splitlines()]
  assert list(ds.items.raw_ids[1:]) == asins
  users = [line.split('\t')[0] for line in (folder / 'Scientific.user2index').read_text().splitlines()]
  assert list(ds.users.raw_ids[1:]) == users
  # Dense matrices: [1 + items, 512] float32, finite except the NaN padding row, equal to the file.
  assert sorted(ds.items.dense) == ['feat1CLS', 'feat3CLS']
  for field, m in ds.items.dense.items():
    assert m.shape == (1586, 512) and m.dtype == np.float32
    assert np.isnan(m[0]).all() and np.isfinite(m[1:]).all()
    raw = np.fromfile(folder / f'Scientific.{field}', dtype='<f4').reshape(1585, 512)
    np.testing.assert_array_equal(m[1:], raw)
  assert not np.array_equal(ds.items.dense['feat1CLS'][1:], ds.items.dense['feat3CLS'][1:])
  # Text of every item.
  text = ds.items.text['text']
  assert text[0] == '' and all(text[1:])
  assert text[ds.items.id_of()['B0000223UV']].startswith('Gorilla Original Gorilla Glue')
  # Leave-one-out on the rebuilt sequences reproduces the published valid and test rows.
  split = leave_one_out(ds)
  for examples, file in ((split.test, 'test'), (split.valid, 'valid')):
    rows = _inter_rows(folder / f'Scientific.{file}.inter')
    assert len(examples) == len(rows) == 2928
    by_user = {int(u): i for i, u in enumerate(examples.users)}
    for u, hist, target in rows[::7]:
      i = by_user[u + 1]
      assert int(examples.targets[i]) == target + 1
      assert list(examples.history(i)) == [h + 1 for h in hist]
  # Every training row is a prefix of its user's sequence.
  seqs = ds.sequences()
  for u, hist, target in _inter_rows(folder / 'Scientific.train.inter')[::11]:
    assert list(seqs[u + 1][:len(hist) + 1]) == [h + 1 for h in hist] + [target + 1]
  assert split.num_train_interactions() == 19_712 - 2 * 2928


def test_recbole_dispatch(data_dir, sci_features, tmp_path):
  folder = data_dir / _SCI_FEATURES
  assert DATASETS['scientific-features'].format == 'recbole'
  by_path = load_dataset(folder)  # format sniffed from *.item2index
  assert by_path.num_interactions == 19_712 and sorted(by_path.items.dense) == ['feat1CLS',
                                                                               'feat3CLS']
  assert load_dataset(f'recbole:{folder}').num_items == 1585
  assert load_dataset(folder / 'Scientific.item2index').num_users == 2928
  archive = tmp_path / 'sci.zip'
  with zipfile.ZipFile(archive, 'w') as z:
    for f in folder.iterdir():
      z.write(f, f'scientific-features/{f.name}')
  zipped = readers.read_recbole_features(archive)
  np.testing.assert_array_equal(zipped.item, sci_features.item)
  np.testing.assert_array_equal(zipped.items.dense['feat3CLS'], sci_features.items.dense['feat3CLS'])


def _recbole_dir(tmp_path, seqs, *, num_items=12, max_len=None, dim=4, drop=()):
  """A small RecBole split release written the way the UniSRec scripts write it.

  Training rows are every prefix (latest first), histories cut to the last ``max_len`` items.
  """
  d = tmp_path / 'rb'
  d.mkdir(exist_ok=True)
  (d / 'T.item2index').write_text(''.join(f'i{k}\t{k}\n' for k in range(num_items)))
  (d / 'T.user2index').write_text(''.join(f'u{u}\t{u}\n' for u in range(len(seqs))))
  (d / 'T.text').write_text('item_id:token\ttext:token_seq\n' +
                            ''.join(f'i{k}\titem number {k}\n' for k in range(num_items)))
  np.arange(num_items * dim, dtype='<f4').tofile(d / 'T.feat1CLS')

  def row(u, hist, target):
    hist = hist[-max_len:] if max_len else hist
    return f'{u}\t{" ".join(map(str, hist))}\t{target}\n'

  header = 'user_id:token\titem_id_list:token_seq\titem_id:token\n'
  files = {'train': [header], 'valid': [header], 'test': [header]}
  for u, s in enumerate(seqs):
    files['train'] += [row(u, s[:k], s[k]) for k in range(len(s) - 3, 0, -1)]
    files['valid'].append(row(u, s[:-2], s[-2]))
    files['test'].append(row(u, s[:-1], s[-1]))
  for name, lines in files.items():
    if name not in drop:
      (d / f'T.{name}.inter').write_text(''.join(lines))
  return d


def _raw_sequences(ds):
  return {ds.users.raw_ids[u]: [int(ds.items.raw_ids[i][1:]) for i in s]
          for u, s in enumerate(ds.sequences()) if u}


def test_recbole_small_release(tmp_path):
  seqs = [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9, 10, 11, 0, 1]]
  ds = readers.read_recbole_features(_recbole_dir(tmp_path, seqs))
  assert ds.name == 't' and not ds.has_timestamps
  assert _raw_sequences(ds) == {f'u{u}': s for u, s in enumerate(seqs)}
  assert ds.num_items == 12 and ds.items.text['text'][3] == 'item number 2'
  m = ds.items.dense['feat1CLS']
  assert m.shape == (13, 4) and m[1:].ravel().tolist() == list(range(48))


@pytest.mark.parametrize('drop', [(), ('valid',), ('train',)])
def test_recbole_truncated_histories(tmp_path, drop):
  rng = np.random.default_rng(0)
  seqs = [list(rng.integers(0, 12, int(n))) for n in rng.integers(3, 25, size=30)]
  seqs.append([1, 2, 3] * 5 + [4])  # a periodic sequence: histories repeat
  ds = readers.read_recbole_features(_recbole_dir(tmp_path, seqs, max_len=4, drop=drop))
  got = _raw_sequences(ds)
  for u, s in enumerate(seqs):
    if drop == ('train',):  # only the last 4 + 2 items are known, plus the items before if short
      assert got[f'u{u}'] == s[-len(got[f'u{u}']):] and len(got[f'u{u}']) >= min(len(s), 6)
    else:
      assert got[f'u{u}'] == s


def test_recbole_user_in_some_files(tmp_path):
  d = _recbole_dir(tmp_path, [[0, 1, 2, 3], [4, 5, 6, 7, 8]])
  with open(d / 'T.train.inter', 'a') as f:
    f.write('2\t9\t10\n')  # user 2 only in the training file
  with open(d / 'T.user2index', 'a') as f:
    f.write('u2\t2\nu3\t3\n')  # u3 has no rows at all
  ds = readers.read_recbole_features(d)
  assert _raw_sequences(ds) == {'u0': [0, 1, 2, 3], 'u1': [4, 5, 6, 7, 8], 'u2': [9, 10]}


def test_recbole_truncated_feature_file(tmp_path):
  d = _recbole_dir(tmp_path, [[0, 1, 2, 3]])
  (d / 'T.feat3CLS').write_bytes((d / 'T.feat1CLS').read_bytes()[:-4])
  with pytest.raises(DataError, match='not a whole float32 matrix') as e:
    readers.read_recbole_features(d)
  assert str(d / 'T.feat3CLS') in str(e.value) and e.value.field == 'feat3CLS'
  (d / 'T.feat3CLS').unlink()
  with pytest.raises(DataError, match=r'expected 12 x 8') as e:
    readers.read_recbole_features(d, feature_dim=8)
  assert str(d / 'T.feat1CLS') in str(e.value)
  assert readers.read_recbole_features(d, feature_dim={'feat1CLS': 4}).items.dense['feat1CLS'].shape \
      == (13, 4)
  with pytest.raises(DataError, match=r'no such feature file T\.feat9CLS'):
    readers.read_recbole_features(d, feature_dim={'feat9CLS': 4})
  m = np.arange(48, dtype='<f4').reshape(12, 4)
  m[5, 1] = np.inf
  m.tofile(d / 'T.feat1CLS')
  with pytest.raises(DataError, match=r"row 5 \(item 'i5'\) holds non-finite"):
    readers.read_recbole_features(d)
  m[5] = np.nan  # a whole NaN row marks an item without features
  m.tofile(d / 'T.feat1CLS')
  assert np.isnan(readers.read_recbole_features(d).items.dense['feat1CLS'][6]).all()


@pytest.mark.parametrize('line,what', [
    ('0\t0 1\n', 'expected 3 tab-separated fields'),
    ('0\t0 x1\t2\n', "field 'item_id_list'.*'x1'"),
    ('0\t0 1\t12\n', "field 'item_id'.*index 12 is not in the item2index"),
    ('7\t0 1\t2\n', "field 'user_id'.*user index 7"),
    ('0\t0 1\t2 3\n', "field 'item_id'.*one target"),
    ('0\t0 5\t2\n', 'disagrees with the longer history'),
])
def test_recbole_malformed_inter_line(tmp_path, line, what):
  d = _recbole_dir(tmp_path, [[0, 1, 2, 3], [4, 5, 6, 7]])
  with open(d / 'T.train.inter', 'a') as f:
    f.write(line)  # line 4 of the file: header + 2 training rows before it
  with pytest.raises(DataError, match=what) as e:
    readers.read_recbole_features(d)
  assert f'{d / "T.train.inter"}:4' in str(e.value) and e.value.line == 4


def test_recbole_bad_maps_and_names(tmp_path):
  d = _recbole_dir(tmp_path, [[0, 1, 2, 3]])
  (d / 'T.test.inter').write_text('user_id:token\titem_id:token\n0\t3\n')
  with pytest.raises(DataError, match=r'T\.test\.inter:1.*missing'):
    readers.read_recbole_features(d)
  (d / 'T.test.inter').unlink()
  (d / 'T.item2index').write_text('i0\t0\ni1\t2\n')
  with pytest.raises(DataError, match=r'T\.item2index.*index 1 is missing'):
    readers.read_recbole_features(d)
  (d / 'T.item2index').write_text('i0\t0\ni0\t1\n')
  with pytest.raises(DataError, match=r'T\.item2index:2.*listed twice'):
    readers.read_recbole_features(d)
  (d / 'U.item2index').write_text('i0\t0\n')
  with pytest.raises(DataError, match='exactly one .*pass name='):
    readers.read_recbole_features(d)
