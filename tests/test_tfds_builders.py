"""TFDS builders: each built from the real files in ``data_dir`` (or tiny files in the original
layout where the shared copy is not in it) into a temporary data_dir as ArrayRecord, read back with
``tfds.data_source`` and compared with the package's reader of the same files."""

import shutil
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from llm4rec_jax import config_base
from llm4rec_jax.data import readers, registry
from llm4rec_jax.data import tfds_builders as tb
from llm4rec_jax.errors import DataError

import release_files as rf


def assert_same_dataset(got, ref):
  """Same users, items, per-user sequences (items, times, ratings) and feature tables."""
  assert (got.num_users, got.num_items, got.num_interactions) == (
      ref.num_users, ref.num_items, ref.num_interactions)
  assert got.has_timestamps == ref.has_timestamps
  for name in ('sequences', 'timestamp_sequences'):
    assert all(np.array_equal(a, b) for a, b in zip(getattr(got, name)(), getattr(ref, name)()))
  rating = lambda ds: np.concatenate([ds.rating[ds.order()]])
  np.testing.assert_array_equal(rating(got), rating(ref))
  for g, r in ((got.items, ref.items), (got.users, ref.users)):
    assert list(g.raw_ids) == list(r.raw_ids)
    assert g.text == r.text
    assert set(g.categorical) == set(r.categorical)
    for f in r.categorical:
      assert [g.categorical[f].labels(i) for i in range(g.num_rows)] == [
          r.categorical[f].labels(i) for i in range(r.num_rows)]
    assert set(g.numeric) == set(r.numeric)
    for f in r.numeric:
      np.testing.assert_array_equal(g.numeric[f], r.numeric[f])


def _built(tmp_path, spec, manual_dir):
  data_dir = tmp_path / 'tfds'
  tb.prepare(spec, data_dir=data_dir, manual_dir=manual_dir, download=False)
  return data_dir, tb.load(spec, data_dir=data_dir, prepare_missing=False)


def test_movielens_100k(data_dir, tmp_path):
  tfds_dir, ds = _built(tmp_path, 'movielens_100k', data_dir / 'movielens/ml-100k')
  ref = readers.read_movielens_100k(data_dir / 'movielens/ml-100k')
  assert_same_dataset(ds, ref)
  assert ds.name == 'movielens_100k'
  # The tables are ArrayRecord files that tfds.data_source reads with random access.
  assert list((tfds_dir / 'movielens_100k/sequences/1.0.0').glob('*.array_record-*'))
  sources = {t: tfds.data_source(f'movielens_100k/{t}', split='full', data_dir=tfds_dir)
             for t in ('sequences', 'items', 'users')}
  assert {t: len(s) for t, s in sources.items()} == {'sequences': 943, 'items': 1682, 'users': 943}
  rec = next(r for r in sources['sequences'].__getitems__(list(range(943)))
             if r['user_id'] == b'196')
  assert sum(len(r['item_index']) for r in sources['sequences'].__getitems__(
      list(range(943)))) == 100_000
  i = int(rec['item_index'][list(rec['timestamp']).index(881250949)])
  assert ref.items.raw_ids[i] == '242'
  item = next(r for r in sources['items'].__getitems__(list(range(1682))) if r['item_id'] == b'1')
  assert item['text']['title'] == b'Toy Story (1995)' and item['numeric']['year'] == 1995


def test_movielens_csv_family(data_dir, tmp_path):
  """ml-latest-small has the layout of the 20M / 25M releases."""
  src = data_dir / 'movielens/ml-latest-small'
  _, ds = _built(tmp_path, 'movielens_25m', src)
  ref = readers.read_movielens_csv(src)
  assert ds.num_interactions == 100_836 and ds.num_users == 610
  assert_same_dataset(ds, ref)


def test_movielens_1m_layout(data_dir, tmp_path):
  """The real 1M movies/users files plus a small ratings.dat (the shared copy has none)."""
  src = tmp_path / 'ml-1m'
  src.mkdir()
  for f in ('movies.dat', 'users.dat'):
    shutil.copy(data_dir / 'movielens/ml-1m-metadata' / f, src / f)
  (src / 'ratings.dat').write_text('1::1193::5::978300760\n1::661::3::978302109\n'
                                   '2::1193::4::978298413\n2::3068::4::978299000\n')
  _, ds = _built(tmp_path, 'movielens_1m', src)
  assert_same_dataset(ds, readers.read_movielens_dat(src))
  assert ds.users.categorical['occupation'].labels(1) == ['K-12 student']


def test_amazon_2014_musical_instruments(data_dir, tmp_path):
  src = data_dir / 'amazon/musical-instruments'
  _, ds = _built(tmp_path, 'amazon_reviews_2014/Musical_Instruments', src)
  assert (ds.num_interactions, ds.num_users, ds.num_items) == (10_261, 1_429, 900)
  assert_same_dataset(ds, readers.read_amazon_reviews(src))


def test_amazon_2018(data_dir, tmp_path):
  # The shared Scientific subset is the preprocessed inter/item JSON layout (no times) ...
  src = data_dir / 'amazon/scientific'
  _, ds = _built(tmp_path / 'a', 'amazon_reviews_2018/Industrial_and_Scientific', src)
  assert not ds.has_timestamps and ds.num_users == 8_317 and ds.num_items == 4_344
  assert_same_dataset(ds, readers.read_amazon_scientific(src))
  # ... and the release layout: 5-core reviews + metadata.
  src = rf.write_amazon_2018(tmp_path / 'release')
  _, ds = _built(tmp_path / 'b', 'amazon_reviews_2018/Industrial_and_Scientific', src)
  assert ds.has_timestamps
  assert_same_dataset(ds, readers.read_amazon_reviews(src))


def test_amazon_2023_electronics(tmp_path):
  src = rf.write_amazon_2023(tmp_path / 'release')
  _, ds = _built(tmp_path, 'amazon_reviews_2023/Electronics', src)
  assert_same_dataset(ds, readers.read_amazon_2023(src))
  assert ds.items.numeric['price'][ds.items.id_of()['i1']] == 20.0


def test_yelp_open_from_tar(tmp_path):
  files = rf.write_yelp_open(tmp_path / 'files')
  manual = tmp_path / 'manual'
  manual.mkdir()
  with tarfile.open(manual / 'yelp_dataset.tar', 'w') as tar:
    for f in files.iterdir():
      tar.add(f, arcname=f.name)
  _, ds = _built(tmp_path, 'yelp_open', manual)
  assert_same_dataset(ds, readers.read_yelp_open(files))


def test_download_path_fetches_the_release_urls(data_dir, tmp_path, monkeypatch):
  """Without manual_dir the builder downloads the original files; served here from local copies."""
  asked = []

  def fake_download(self, urls):
    del self
    asked.extend(urls.values())
    out = {}
    for name, url in urls.items():
      local = tmp_path / 'fetched' / url.rsplit('/', 1)[-1].replace('.', '_')  # names not kept
      local.parent.mkdir(exist_ok=True)
      shutil.copy(data_dir / 'amazon/musical-instruments' / name, local) if 'reviews' in name \
          else local.write_bytes(b'')
      out[name] = local
    return out

  monkeypatch.setattr(tfds.download.DownloadManager, 'download', fake_download)
  ds = tb.load('amazon_reviews_2014/Musical_Instruments', data_dir=tmp_path / 'tfds')
  assert set(asked) == {
      'https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/meta_Musical_Instruments.json.gz',
      'https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/reviews_Musical_Instruments_5.json.gz'}
  assert ds.num_interactions == 10_261


def test_config_selects_tfds_dataset(data_dir, tmp_path):
  c = config_base.base_config()
  c.data.name = 'tfds:movielens_100k'
  c.data.tfds.data_dir = str(tmp_path / 'tfds')
  c.data.tfds.manual_dir = 'movielens/ml-100k'  # relative: under the data root
  c.data.k_core = 5
  ds, split = registry.load_split(c.data)
  ref = readers.load_dataset('ml-100k', k_core=5)
  assert_same_dataset(ds, ref)
  ref_split = registry.splits.make_split(ref, 'leave_one_out')
  assert all(np.array_equal(a, b) for a, b in zip(split.train, ref_split.train))
  for which in ('valid', 'test'):
    got, want = getattr(split, which), getattr(ref_split, which)
    for field in ('users', 'offsets', 'items', 'targets'):
      np.testing.assert_array_equal(getattr(got, field), getattr(want, field))


def test_errors(tmp_path, data_dir):
  with pytest.raises(DataError, match='unknown TFDS dataset'):
    tb.load('movielens_7m', data_dir=tmp_path)
  with pytest.raises(DataError, match="unknown release 'Nope'.*Electronics"):
    tb.load('amazon_reviews_2023/Nope', data_dir=tmp_path)
  with pytest.raises(DataError, match='not prepared'):
    tb.load('movielens_100k', data_dir=tmp_path, download=False)
  with pytest.raises(DataError, match=r"holds a 'ml-csv' release that movielens_100k reads"):
    tb.load('movielens_100k', data_dir=tmp_path, manual_dir=data_dir / 'movielens/ml-latest-small')
  with pytest.raises(AssertionError, match='yelp.com/dataset/download'):
    tb.load('yelp_open', data_dir=tmp_path)
  assert {'Electronics', 'Industrial_and_Scientific'} <= set(
      tb.BUILDERS['amazon_reviews_2023'].releases())


def test_real_downloader_over_http(data_dir, tmp_path, monkeypatch):
  """TFDS's own download manager (requests, no TensorFlow) fetches the release over HTTP; a local
  server stands in for GroupLens (this machine is offline)."""
  import functools
  import http.server
  import threading
  import zipfile
  root = tmp_path / 'www'
  root.mkdir()
  with zipfile.ZipFile(root / 'ml-100k.zip', 'w') as z:
    for f in ('u.data', 'u.item', 'u.user', 'u.genre'):
      z.write(data_dir / 'movielens/ml-100k' / f, f'ml-100k/{f}')
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    url = f'http://127.0.0.1:{server.server_address[1]}/ml-100k.zip'
    monkeypatch.setattr(tb.Movielens100k, '_urls', lambda self: {'ml-100k.zip': url})
    ds = tb.load('movielens_100k', data_dir=tmp_path / 'tfds')
  finally:
    server.shutdown()
  assert_same_dataset(ds, readers.read_movielens_100k(data_dir / 'movielens/ml-100k'))
  fetched = [p for p in (tmp_path / 'tfds/downloads').rglob('*') if p.is_file()]
  assert any(p.stat().st_size == (root / 'ml-100k.zip').stat().st_size for p in fetched)


@pytest.mark.parametrize('index,calls', [(0, ['prepare', 'barrier', 'prepare']),
                                         (1, ['barrier', 'prepare'])])
def test_processes_do_not_race_to_prepare(monkeypatch, index, calls):
  """Several JAX processes: process 0 prepares before the barrier, the others after it."""
  from llm4rec_jax.data.tfds_builders import loading
  seen = []
  monkeypatch.setattr(loading.jax, 'process_count', lambda: 2)
  monkeypatch.setattr(loading.jax, 'process_index', lambda: index)
  monkeypatch.setattr(loading.multihost_utils, 'sync_global_devices', lambda name: seen.append(
      'barrier'))
  monkeypatch.setattr(loading, 'prepare', lambda spec, **kw: seen.append('prepare'))
  loading.prepare_once('movielens_100k', data_dir='unused')
  assert seen == calls
