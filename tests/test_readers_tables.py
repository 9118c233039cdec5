"""The pyarrow fast path of the readers: same datasets as the single-module reader it replaced, and
the same precise errors (file, line, field) however deep the bad value, plus resource failures."""

import errno
import gzip
import json
import re

import numpy as np
import pytest

from llm4rec_jax.data import readers
from llm4rec_jax.data.readers import jsonl, tables
from llm4rec_jax.data.readers.source import Source
from llm4rec_jax.errors import DataError

import reader_fingerprints as fp
import release_files as rf

_HEADER = 'userId,movieId,rating,timestamp\n'


@pytest.mark.parametrize('name', fp.NAMES)
def test_same_dataset_as_the_single_module_reader(data_dir, name):
  """Every shared dataset hashes as it did before the split (ids, order, values, features)."""
  want = json.loads(fp.FILE.read_text())[name]
  assert json.loads(json.dumps(fp.fingerprint(readers.load_dataset(name)))) == want


def _ratings_csv(root, rows: int, seed: int = 0, bad: str | None = None, newline: str = '\n'):
  """A MovieLens-shaped ratings.csv of ``rows`` rows (+ header), the last one replaced by ``bad``."""
  rng = np.random.default_rng(seed)
  cols = (rng.integers(1, 5000, rows), rng.integers(1, 20000, rows),
          rng.integers(1, 11, rows) / 2, rng.integers(789_000_000, 1_700_000_000, rows))
  lines = [f'{u},{i},{r},{t}' for u, i, r, t in zip(*(c.tolist() for c in cols))]
  if bad is not None:
    lines[-1] = bad
  root.mkdir(exist_ok=True)
  (root / 'ratings.csv').write_bytes((_HEADER + ''.join(x + '\n' for x in lines))
                                     .replace('\n', newline).encode())
  (root / 'movies.csv').write_text('movieId,title,genres\n1,"Shawshank Redemption, The (1994)",'
                                   'Crime|Drama\n')
  return cols


def _careful(monkeypatch):
  """Counts the careful parser's runs (the fallback of the pyarrow pass)."""
  runs = []
  original = tables._read_lines
  monkeypatch.setattr(tables, '_read_lines', lambda *a, **k: runs.append(1) or original(*a, **k))
  return runs


def test_large_file_fast_and_bad_value_deep_in_it(tmp_path, monkeypatch):
  runs = _careful(monkeypatch)
  user, item, rating, ts = _ratings_csv(tmp_path, 300_000)
  ds = readers.read_movielens_csv(tmp_path)
  assert not runs  # no Python pass over the lines
  assert ds.num_interactions == 300_000
  order = ds.order()
  np.testing.assert_array_equal(np.sort(ds.timestamp), np.sort(ts))
  assert float(ds.rating.astype(np.float64).sum()) == rating.sum()
  assert ds.users.raw_ids[ds.user[0]] == str(user[0]) and ds.items.raw_ids[ds.item[0]] == str(item[0])
  assert len(order) == 300_000
  _ratings_csv(tmp_path, 300_000, bad='7,12,4.5,soon')  # data line 300,000 is file line 300,001
  with pytest.raises(DataError, match=r"ratings\.csv:300001, field 'timestamp'.*'soon'") as e:
    readers.read_movielens_csv(tmp_path)
  assert e.value.line == 300_001 and e.value.field == 'timestamp' and runs


def test_crlf_and_gzip(tmp_path):
  _ratings_csv(tmp_path / 'lf', 1000)
  _ratings_csv(tmp_path / 'crlf', 1000, newline='\r\n')
  lf, crlf = (fp.fingerprint(readers.read_movielens_csv(tmp_path / d)) for d in ('lf', 'crlf'))
  assert lf == crlf
  _ratings_csv(tmp_path / 'crlf', 1000, bad='1,2,3.5,4,5', newline='\r\n')
  with pytest.raises(DataError, match=r'ratings\.csv:1001: expected 4 fields'):
    readers.read_movielens_csv(tmp_path / 'crlf')
  # Amazon 2023 benchmark files are csv.gz: the same rows gzipped or not give the same dataset.
  root = rf.write_amazon_2023(tmp_path / 'el', fmt='csv')
  plain = fp.fingerprint(readers.read_amazon_2023(root))
  [csv_file] = root.glob('Electronics.csv*')
  text = (gzip.decompress(csv_file.read_bytes()) if csv_file.suffix == '.gz'
          else csv_file.read_bytes()).decode()
  csv_file.unlink()
  packed = root / 'Electronics.csv.gz'
  packed.write_bytes(gzip.compress(text.encode()))
  assert fp.fingerprint(readers.read_amazon_2023(root)) == plain
  packed.write_bytes(gzip.compress(text.replace(',5.0,', ',five,', 1).encode()))
  with pytest.raises(DataError, match=r"Electronics\.csv\.gz:\d+, field 'rating'.*'five'"):
    readers.read_amazon_2023(root)
  packed.write_bytes(gzip.compress(text.encode())[:-20])  # truncated download
  with pytest.raises(DataError, match=r'Electronics\.csv\.gz.*cannot read'):
    readers.read_amazon_2023(root)


def test_quoted_titles_with_commas(tmp_path):
  (tmp_path / 'ratings.csv').write_text(_HEADER + '1,1,4.0,10\n1,2,3.5,11\n2,3,5.0,12\n')
  (tmp_path / 'movies.csv').write_text(
      'movieId,title,genres\n1,"Shawshank Redemption, The (1994)",Crime|Drama\n'
      '2,"Dr. Strangelove or: How I Learned to Stop Worrying, ""and"" Love (1964)",Comedy\n'
      '3,Heat (1995),Action\n', newline='')
  items = readers.read_movielens_csv(tmp_path).items
  ids = items.id_of()
  assert items.text['title'][ids['1']] == 'Shawshank Redemption, The (1994)'
  assert (items.text['title'][ids['2']]
          == 'Dr. Strangelove or: How I Learned to Stop Worrying, "and" Love (1964)')
  assert items.numeric['year'][ids['2']] == 1964
  assert items.categorical['genres'].labels(ids['1']) == ['Crime', 'Drama']


@pytest.mark.parametrize('sep,name,header', [(',', 'ratings.csv', _HEADER), ('::', 'ratings.dat', ''),
                                             ('\t', 'u.data', '')])
def test_fast_pass_equals_careful_parser(tmp_path, sep, name, header):
  rng = np.random.default_rng(1)
  rows = [f'{rng.integers(1, 99)}{sep}{rng.integers(1, 999)}{sep}{rng.integers(1, 11) / 2}{sep}'
          f'{rng.integers(1e9)}' for _ in range(2000)]
  (tmp_path / name).write_text(header + '\n'.join(rows[:1000]) + '\n\n' + '\n'.join(rows[1000:]))
  with Source(tmp_path) as src:
    fast = tables._arrow_columns(src, name, sep, tables.RATING_COLUMNS, 'latin-1', tables.not_int)
    careful = tables._read_lines(src, name, sep, tables.RATING_COLUMNS, encoding='latin-1',
                                 skip_header=tables.not_int)
  assert fast is not None
  for a, b in zip(fast, careful):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)


def test_line_numbers_across_chunks_of_the_careful_parser(tmp_path, monkeypatch):
  monkeypatch.setattr(tables, 'CHUNK_LINES', 2)
  (tmp_path / 'ratings.dat').write_text('1::10::5::100\n' * 6 + '1::10::5::now\n' + '1::10::5::100\n')
  (tmp_path / 'movies.dat').write_text('10::A (1990)::Drama\n')
  with pytest.raises(DataError, match=r"ratings\.dat:7, field 'timestamp'"):
    readers.read_movielens_dat(tmp_path)


@pytest.mark.parametrize('failure', ['memory', 'disk'])
def test_resource_failures_are_clear_data_errors(tmp_path, monkeypatch, failure):
  def fail(*args, **kwargs):
    if failure == 'memory':
      raise MemoryError()
    raise OSError(errno.ENOSPC, 'No space left on device')

  _ratings_csv(tmp_path / 'ml', 100)
  monkeypatch.setattr(tables.pacsv, 'read_csv', fail)
  with pytest.raises(DataError) as e:
    readers.read_movielens_csv(tmp_path / 'ml')
  want = (r'out of memory reading the ratings \(0\.00 GB on disk\).*data\.name'
          if failure == 'memory' else r'no space left on device.*TMPDIR')
  assert str(tmp_path / 'ml' / 'ratings.csv') in str(e.value)
  assert re.search(want, str(e.value))
  assert e.value.__cause__ is None and e.value.__suppress_context__  # no traceback chain to print
  root = rf.write_amazon_2018(tmp_path / 'a')
  monkeypatch.setattr(jsonl.pajson, 'read_json', fail)
  with pytest.raises(DataError, match='out of memory reading the reviews' if failure == 'memory'
                     else 'no space left'):
    readers.read_amazon_reviews(root)
