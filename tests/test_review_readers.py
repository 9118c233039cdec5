"""Readers of the JSON-lines review releases: Amazon 2014 (real file), 2018 / 2023 and the Yelp Open
Dataset (tiny files in the original layouts, see ``release_files.py``)."""

import gzip

import numpy as np
import pytest

from llm4rec_jax.data import readers
from llm4rec_jax.errors import DataError

import release_files as rf


def _sequences(ds):
  """raw user -> [(raw item, rating, timestamp)] in time order."""
  out = {}
  for k in ds.order():
    out.setdefault(ds.users.raw_ids[ds.user[k]], []).append(
        (ds.items.raw_ids[ds.item[k]], float(ds.rating[k]), int(ds.timestamp[k])))
  return out


def _expected(scale=1):
  out = {}
  for u, i, r, t in sorted(rf.INTERACTIONS, key=lambda x: (x[0], x[3])):
    out.setdefault(u, []).append((i, r, t * scale))
  return out


def test_amazon_2014_musical_instruments(data_dir):
  ds = readers.load_dataset('musical-instruments')
  assert (ds.num_interactions, ds.num_users, ds.num_items) == (10_261, 1_429, 900)
  assert ds.has_timestamps and ds.name == 'musical-instruments'
  seq = _sequences(ds)['A2IBPI20UZIR0U']
  assert ('1384719342', 5.0, 1393545600) in seq
  assert [t for _, _, t in seq] == sorted(t for _, _, t in seq)
  # No metadata file in the shared copy: the fields exist, empty.
  assert set(ds.items.text) == {'title', 'brand', 'description'}
  assert np.isnan(ds.items.numeric['price'][1:]).all()


def test_amazon_2014_literal_metadata(data_dir, tmp_path):
  rf.write_amazon_2014_meta(tmp_path, 'Musical_Instruments')
  (tmp_path / 'reviews_Musical_Instruments_5.json.gz').write_bytes(
      (data_dir / 'amazon/musical-instruments/reviews_Musical_Instruments_5.json.gz').read_bytes())
  # The real reviews name none of the tiny metadata's items: all rows stay empty; then a hit.
  ds = readers.read_amazon_reviews(tmp_path)
  assert ds.items.text['title'][1:].count('') == ds.num_items
  with gzip.open(tmp_path / 'meta_Musical_Instruments.json.gz', 'at') as f:
    f.write(repr({'asin': '1384719342', 'title': 'Pop filter', 'price': 12.0,
                  'categories': [['Musical Instruments', 'Microphones'], ['Musical Instruments']],
                  'description': 'Blocks plosives.'}) + '\n')
  ds = readers.read_amazon_reviews(tmp_path, 'Musical_Instruments')
  i = ds.items.id_of()['1384719342']
  assert ds.items.text['title'][i] == 'Pop filter'
  assert ds.items.categorical['categories'].labels(i) == ['Musical Instruments', 'Microphones']
  assert ds.items.numeric['price'][i] == 12.0


def test_amazon_2018_with_metadata(tmp_path):
  root = rf.write_amazon_2018(tmp_path / 'sci')
  ds = readers.load_dataset(str(root))  # format detected
  assert ds.name == 'industrial_and_scientific'
  assert _sequences(ds) == _expected()
  items = ds.items
  i1, i4 = items.id_of()['i1'], items.id_of()['i4']
  assert items.text['title'][i1] == 'Caliper'  # the repeated metadata line does not override
  assert items.text['description'][i1] == 'Made of steel.'
  assert items.categorical['categories'].labels(i1) == ['Industrial & Scientific', 'Lab']
  assert items.numeric['price'][i1] == 1012.5
  assert items.text['title'][i4] == '' and np.isnan(items.numeric['price'][i4])


@pytest.mark.parametrize('fmt', ['csv', 'jsonl'])
def test_amazon_2023(tmp_path, fmt):
  root = rf.write_amazon_2023(tmp_path / 'el', fmt=fmt)
  ds = readers.load_dataset(f'amazon-2023:{root}')
  assert ds.name == 'electronics-2023'
  assert _sequences(ds) == _expected()  # milliseconds -> seconds
  i1, i2 = ds.items.id_of()['i1'], ds.items.id_of()['i2']
  assert ds.items.text['brand'][i1] == 'Acme'
  assert ds.items.categorical['categories'].labels(i1) == ['All Electronics', 'Electronics', 'Lab']
  assert ds.items.numeric['price'][i1] == 20.0 and np.isnan(ds.items.numeric['price'][i2])
  assert readers.load_dataset(str(root)).num_interactions == len(rf.INTERACTIONS)


def test_yelp_open(tmp_path):
  root = rf.write_yelp_open(tmp_path / 'yelp')
  ds = readers.load_dataset(str(root))
  assert ds.name == 'yelp-open' and ds.num_items == 4  # the unrated business is not an item
  assert _sequences(ds) == _expected()
  i1, i4 = ds.items.id_of()['i1'], ds.items.id_of()['i4']
  assert ds.items.text['title'][i1] == 'Caliper'
  assert ds.items.categorical['categories'].labels(i1) == ['Shopping', 'Lab Supplies']
  assert ds.items.categorical['categories'].labels(i4) == []
  assert ds.items.categorical['city'].labels(i1) == ['Tucson']
  assert ds.items.numeric['stars'][i1] == 4.5


def test_review_files_errors(tmp_path):
  root = rf.write_yelp_open(tmp_path / 'y')
  path = root / 'yelp_academic_dataset_review.json'
  lines = path.read_text().splitlines()
  path.write_text('\n'.join(lines[:3] + ['{"user_id": "u9", "business_id": "b"}'] + lines[3:]))
  with pytest.raises(DataError, match=r"review.json:4, field 'stars'.*no 'stars'"):
    readers.read_yelp_open(root)
  path.write_text('\n'.join(lines[:2] + ['', lines[2].replace('"2017-', '"17th of ')]))
  with pytest.raises(DataError, match=r"review.json:4, field 'date'"):
    readers.read_yelp_open(root)
  path.write_text('\n'.join(lines[:1] + [lines[1][:-2]]))
  with pytest.raises(DataError, match=r'review.json:2: invalid JSON'):
    readers.read_yelp_open(root)
  root = rf.write_amazon_2018(tmp_path / 'a')
  rf.write_amazon_2018(root, 'Books')
  with pytest.raises(DataError, match=r'exactly one Amazon reviews file.*pass category='):
    readers.read_amazon_reviews(root)
  assert readers.read_amazon_reviews(root, 'Books').name == 'books'
  with gzip.open(root / 'Books_5.json.gz', 'wt') as f:
    f.write('{"reviewerID": "u", "asin": "i", "overall": "five", "unixReviewTime": 1}\n')
  with pytest.raises(DataError, match=r"Books_5.json.gz:1, field 'overall': expected a number"):
    readers.read_amazon_reviews(root, 'Books')
  (root / 'Books_5.json.gz').write_bytes(b'\x1f\x8b\x08\x00garbage')
  with pytest.raises(DataError, match=r'Books_5.json.gz.*cannot read'):
    readers.read_amazon_reviews(root, 'Books')
  with pytest.raises(DataError, match=r"for category 'Toys'"):
    readers.read_amazon_reviews(root, 'Toys')
