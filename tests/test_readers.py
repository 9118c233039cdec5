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
  assert set(FORMATS) == {'ml-100k', 'ml-dat', 'ml-csv', 's3rec', 'scientific'}
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
