"""The format table (name -> reader), the registered datasets, format detection and loading."""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

from llm4rec_jax.data import events, paths
from llm4rec_jax.data.dataset import RecDataset
from llm4rec_jax.data.readers.amazon import (AMAZON_2023_FILE, AMAZON_REVIEWS_FILE, read_amazon_2023,
                                             read_amazon_reviews, read_amazon_scientific)
from llm4rec_jax.data.readers.coat import read_coat
from llm4rec_jax.data.readers.movielens import (read_movielens_100k, read_movielens_csv,
                                                read_movielens_dat)
from llm4rec_jax.data.readers.recbole import read_recbole_features
from llm4rec_jax.data.readers.s3rec import read_s3rec
from llm4rec_jax.data.readers.source import Source
from llm4rec_jax.data.readers.yelp import read_yelp_open
from llm4rec_jax.errors import DataError


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """A named dataset: its format, its folder under :func:`paths.data_root`, and reader options."""
  format: str
  path: str
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  description: str = ''


FORMATS: dict[str, Callable[..., RecDataset]] = {
    'ml-100k': read_movielens_100k,
    'ml-dat': read_movielens_dat,
    'ml-csv': read_movielens_csv,
    's3rec': read_s3rec,
    'scientific': read_amazon_scientific,
    'recbole': read_recbole_features,
    'events': events.read_events_dataset,  # JSON lines of user/item/timestamp (llm4rec adapt's input)
    'amazon-reviews': read_amazon_reviews,
    'amazon-2023': read_amazon_2023,
    'yelp-open': read_yelp_open,
    'coat': read_coat,
}

DATASETS: dict[str, DatasetSpec] = {
    'coat': DatasetSpec('coat', 'coat', description='Coat shopping: self-selected train, randomly '
                        'exposed test ratings (Schnabel et al. 2016)'),
    'ml-100k': DatasetSpec('ml-100k', 'movielens/ml-100k', description='MovieLens 100K'),
    'ml-latest-small': DatasetSpec('ml-csv', 'movielens/ml-latest-small',
                                   description='MovieLens latest-small (2018)'),
    'beauty': DatasetSpec('s3rec', 'amazon/beauty', {'name': 'Beauty'},
                          description='Amazon 2014 Beauty 5-core (S3-Rec)'),
    'yelp': DatasetSpec('s3rec', 'yelp', {'name': 'Yelp'}, description='Yelp (S3-Rec)'),
    'lastfm': DatasetSpec('s3rec', 'lastfm', {'name': 'LastFM'}, description='LastFM (S3-Rec)'),
    'scientific': DatasetSpec('scientific', 'amazon/scientific', {'name': 'Scientific'},
                              description='Amazon 2018 Industrial & Scientific'),
    'scientific-features': DatasetSpec(
        'recbole', 'amazon/scientific-features', {'name': 'Scientific', 'feature_dim': 512},
        description='Amazon 2018 Scientific subset with dense item features (RecBole atomic files)'),
    'musical-instruments': DatasetSpec('amazon-reviews', 'amazon/musical-instruments',
                                       {'category': 'Musical_Instruments'},
                                       description='Amazon 2014 Musical Instruments 5-core reviews'),
}


def known_datasets() -> list[str]:
  return sorted(DATASETS)


def _sniff_format(src: Source) -> str | None:
  names = set(src.basenames())
  if {'train.ascii', 'test.ascii'} <= names:
    return 'coat'
  if 'u.data' in names:
    return 'ml-100k'
  if 'ratings.dat' in names:
    return 'ml-dat'
  if 'ratings.csv' in names:
    return 'ml-csv'
  if any(n.endswith('.item2index') for n in names):
    return 'recbole'
  if any(n.endswith('.inter.json') for n in names):
    return 'scientific'
  if any(n.endswith('_item2attributes.json') for n in names):
    return 's3rec'
  if 'yelp_academic_dataset_review.json' in names:
    return 'yelp-open'
  if any(AMAZON_2023_FILE.match(n) for n in names if not n.startswith('meta_')):
    return 'amazon-2023'
  if any(AMAZON_REVIEWS_FILE.match(n) for n in names if not n.startswith('meta_')):
    return 'amazon-reviews'
  return None


def detect_format(path: str | os.PathLike) -> str | None:
  """The format (a key of :data:`FORMATS`) of a release directory, archive or file; None if unknown."""
  p = pathlib.Path(path).expanduser()
  if p.is_file() and p.suffix == '.txt':
    return 's3rec'
  if p.is_file() and p.suffix == '.item2index':
    return 'recbole'
  if not p.exists():
    return None
  with Source(p) as src:
    return _sniff_format(src)


def load_dataset(name_or_path: str | os.PathLike, *, min_rating: float | None = None,
                 k_core: int = 0) -> RecDataset:
  """Loads a dataset by registered name, ``format:path``, or a path whose format is detected.

  Names (see :data:`DATASETS`) resolve under :func:`paths.data_root`; formats are the keys of
  :data:`FORMATS` (e.g. ``ml-csv:/data/ml-25m.zip``); relative paths resolve under the data root.
  Then drops ratings below ``min_rating`` and applies ``k_core`` filtering when given.
  """
  spec = str(name_or_path)
  key = spec.lower()
  if key in DATASETS:
    d = DATASETS[key]
    ds = FORMATS[d.format](paths.resolve(d.path), dataset_name=key, **d.options)
  else:
    fmt, sep, rest = spec.partition(':')
    if sep and fmt.lower() in FORMATS and rest:
      ds = FORMATS[fmt.lower()](paths.resolve(rest))
    else:
      p = paths.resolve(spec)
      if not p.exists():
        raise DataError(f'unknown dataset {spec!r}: not a known name ({", ".join(known_datasets())}), '
                        f'not FORMAT:PATH with FORMAT in ({", ".join(FORMATS)}), and no such path',
                        path=str(p))
      fmt = detect_format(p)
      if fmt is None:
        raise DataError(f'cannot tell the dataset format; use FORMAT:PATH with FORMAT in '
                        f'({", ".join(FORMATS)})', path=str(p))
      ds = FORMATS[fmt](p)
  if min_rating is not None or k_core:
    ds = ds.filter(min_rating=min_rating, k_core=k_core)
  return ds
