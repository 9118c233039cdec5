"""Tiny files in the original layouts of releases not in ``../shared/data`` (Amazon 2018 / 2023 with
metadata, the Yelp Open Dataset), for tests of their readers and TFDS builders."""

import gzip
import json
import pathlib

# (user, item, rating, unix seconds) of every tiny release: 3 users, 4 items, 9 interactions.
INTERACTIONS = [
    ('u1', 'i1', 5.0, 1_500_000_000), ('u1', 'i2', 4.0, 1_500_000_100), ('u1', 'i3', 3.0, 1_500_000_200),
    ('u2', 'i2', 2.0, 1_500_000_050), ('u2', 'i4', 5.0, 1_500_000_060), ('u2', 'i1', 1.0, 1_500_000_070),
    ('u3', 'i3', 4.0, 1_500_000_300), ('u3', 'i1', 4.0, 1_500_000_010), ('u3', 'i4', 3.0, 1_500_000_400),
]
TITLES = {'i1': 'Caliper', 'i2': 'Beaker set', 'i3': 'pH strips', 'i4': 'Safety goggles'}


def _write_lines(path: pathlib.Path, lines) -> pathlib.Path:
  text = ''.join(line + '\n' for line in lines)
  if path.suffix == '.gz':
    with gzip.open(path, 'wt', encoding='utf-8') as f:
      f.write(text)
  else:
    path.write_text(text, encoding='utf-8')
  return path


def write_amazon_2018(root: pathlib.Path, category: str = 'Industrial_and_Scientific') -> pathlib.Path:
  """``{Category}_5.json.gz`` + ``meta_{Category}.json.gz`` as in the 2018 release (one item lacks
  metadata; one metadata line is repeated, as in the release)."""
  root.mkdir(parents=True, exist_ok=True)
  _write_lines(root / f'{category}_5.json.gz', [json.dumps(
      {'overall': r, 'verified': True, 'reviewTime': '07 14, 2017', 'reviewerID': u, 'asin': i,
       'reviewerName': 'x', 'reviewText': 'ok', 'summary': 'ok', 'unixReviewTime': t})
      for u, i, r, t in INTERACTIONS])
  meta = [json.dumps({'asin': i, 'title': TITLES[i], 'brand': 'Acme', 'category': [
      'Industrial & Scientific', 'Lab'], 'description': ['Made of', 'steel.'], 'price': '$1,012.50'})
          for i in ('i1', 'i2', 'i3')]
  _write_lines(root / f'meta_{category}.json.gz', meta + [meta[0].replace('Caliper', 'Dup')])
  return root


def write_amazon_2014_meta(root: pathlib.Path, category: str) -> pathlib.Path:
  """``meta_{Category}.json.gz`` as the 2014 release writes it: Python dict literals."""
  _write_lines(root / f'meta_{category}.json.gz', [repr(
      {'asin': i, 'title': TITLES[i], 'price': 9.5, 'categories': [['Lab', 'Glass'], ['Lab']],
       'description': 'Useful.'}) for i in TITLES])
  return root


def write_amazon_2023(root: pathlib.Path, category: str = 'Electronics', *,
                      fmt: str = 'csv') -> pathlib.Path:
  """``{Category}.csv.gz`` (benchmark, ms timestamps) or ``{Category}.jsonl.gz`` (raw reviews) and
  ``meta_{Category}.jsonl.gz``."""
  root.mkdir(parents=True, exist_ok=True)
  if fmt == 'csv':
    _write_lines(root / f'{category}.csv.gz', ['user_id,parent_asin,rating,timestamp'] + [
        f'{u},{i},{r},{t * 1000 + 123}' for u, i, r, t in INTERACTIONS])
  else:
    _write_lines(root / f'{category}.jsonl.gz', [json.dumps(
        {'rating': r, 'title': 'ok', 'text': 'ok', 'images': [], 'asin': i + 'x', 'parent_asin': i,
         'user_id': u, 'timestamp': t * 1000 + 123, 'helpful_vote': 0, 'verified_purchase': True})
        for u, i, r, t in INTERACTIONS])
  _write_lines(root / f'meta_{category}.jsonl.gz', [json.dumps(
      {'main_category': 'All Electronics', 'title': TITLES[i], 'average_rating': 4.1,
       'rating_number': 10, 'features': ['a'], 'description': ['Good.'], 'price': None if i == 'i2'
       else 20.0, 'images': [], 'videos': [], 'store': 'Acme', 'categories': ['Electronics', 'Lab'],
       'details': {}, 'parent_asin': i, 'bought_together': None}) for i in TITLES])
  return root


def write_yelp_open(root: pathlib.Path) -> pathlib.Path:
  """``yelp_academic_dataset_review.json`` and ``..._business.json`` as in ``yelp_dataset.tar``."""
  root.mkdir(parents=True, exist_ok=True)
  _write_lines(root / 'yelp_academic_dataset_review.json', [json.dumps(
      {'review_id': f'r{k}', 'user_id': u, 'business_id': i, 'stars': r, 'useful': 0, 'funny': 0,
       'cool': 0, 'text': 'ok', 'date': _date(t)}) for k, (u, i, r, t) in enumerate(INTERACTIONS)])
  _write_lines(root / 'yelp_academic_dataset_business.json', [json.dumps(
      {'business_id': i, 'name': TITLES[i], 'address': '1 Main St', 'city': 'Tucson', 'state': 'AZ',
       'postal_code': '85711', 'latitude': 32.2, 'longitude': -110.9, 'stars': 4.5,
       'review_count': 7, 'is_open': 1, 'attributes': None,
       'categories': 'Shopping, Lab Supplies' if i != 'i4' else None, 'hours': None})
      for i in TITLES] + ['{"business_id": "unrated", "name": "Elsewhere"}'])
  return root


def _date(t: int) -> str:
  import datetime  # pylint: disable=import-outside-toplevel
  return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S')
