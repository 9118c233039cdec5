"""MovieLens releases (GroupLens): 100K (``u.data``), 1M / 10M (``::`` files), 20M / 25M / 32M / latest
(CSV). The ratings files go through :func:`tables.read_table` (pyarrow); the metadata is small."""

from __future__ import annotations

import csv
import os
import re
from typing import Any

from llm4rec_jax.data.dataset import RecDataset, from_raw
from llm4rec_jax.data.readers.source import Source, source_name, text_lines
from llm4rec_jax.data.readers.tables import RATING_COLUMNS, int_field, not_int, read_table
from llm4rec_jax.errors import DataError

_YEAR_IN_TITLE = re.compile(r'\((\d{4})[^()]*\)\s*$')
_YEAR_ANYWHERE = re.compile(r'(\d{4})')


# MovieLens-1M occupation codes (README of the 1M release).
ML1M_OCCUPATIONS = (
    'other', 'academic/educator', 'artist', 'clerical/admin', 'college/grad student',
    'customer service', 'doctor/health care', 'executive/managerial', 'farmer', 'homemaker',
    'K-12 student', 'lawyer', 'programmer', 'retired', 'sales/marketing', 'scientist', 'self-employed',
    'technician/engineer', 'tradesman/craftsman', 'unemployed', 'writer')

# The 19 genres of MovieLens-100K in flag order (used only when ``u.genre`` is absent).
ML100K_GENRES = (
    'unknown', 'Action', 'Adventure', 'Animation', "Children's", 'Comedy', 'Crime', 'Documentary',
    'Drama', 'Fantasy', 'Film-Noir', 'Horror', 'Musical', 'Mystery', 'Romance', 'Sci-Fi', 'Thriller',
    'War', 'Western')


def _year_of(title: str, date: str = '') -> float | None:
  m = _YEAR_IN_TITLE.search(title)
  if m:
    return float(m.group(1))
  m = _YEAR_ANYWHERE.search(date or '')
  return float(m.group(1)) if m else None


def _age_group(age: int) -> str:
  """MovieLens-1M age bucket: 1 (<18), 18, 25, 35, 45, 50, 56 (56+)."""
  for lo in (56, 50, 45, 35, 25, 18):
    if age >= lo:
      return str(lo)
  return '1'


def _split_genres(text: str) -> list[str]:
  return [g for g in (s.strip() for s in text.split('|')) if g and g != '(no genres listed)']



# ------------------------------------------------------------------------------------------------
# MovieLens 100K.


def read_movielens_100k(path: str | os.PathLike, *, dataset_name: str = 'ml-100k') -> RecDataset:
  """MovieLens 100K: ``u.data`` ratings, ``u.item`` movies (title, genres, year), ``u.user`` users.

  Item features: text ``title``; categorical ``genres``; numeric ``year``.
  User features: categorical ``gender``, ``occupation``, ``age_group`` (1/18/25/35/45/50/56);
  numeric ``age``.
  """
  with Source(path) as src:
    user, item, rating, ts = read_table(src, src.require('u.data'), '\t', RATING_COLUMNS,
                                         encoding='latin-1', what='ratings')
    genres = _read_100k_genres(src)
    items = _read_100k_items(src, genres)
    users = _read_100k_users(src)
  return from_raw(dataset_name, user, item, ts, rating, item_features=items, user_features=users,
                  item_fields={'text': ['title'], 'categorical': ['genres'], 'numeric': ['year']},
                  user_fields={'categorical': ['gender', 'occupation', 'age_group'],
                               'numeric': ['age']})


def _read_100k_genres(src: Source) -> list[str]:
  member = src.find('u.genre')
  if member is None:
    return list(ML100K_GENRES)
  display = src.display(member)
  by_index: dict[int, str] = {}
  for n, line in text_lines(src, member, 'latin-1'):
    fields = line.split('|')
    if len(fields) != 2:
      raise DataError(f"expected 'name|index', got {line[:80]!r}", path=display, line=n)
    by_index[int_field(fields[1], display, n, 'index')] = fields[0].strip()
  if sorted(by_index) != list(range(len(by_index))) or not by_index:
    raise DataError(f'genre indices must be 0..N-1, got {sorted(by_index)}', path=display)
  return [by_index[i] for i in range(len(by_index))]


def _read_100k_items(src: Source, genres: list[str]) -> dict[str, dict[str, Any]]:
  member = src.require('u.item')
  display = src.display(member)
  nfields = 5 + len(genres)
  items: dict[str, dict[str, Any]] = {}
  for n, line in text_lines(src, member, 'latin-1'):
    f = line.split('|')
    if len(f) != nfields:
      raise DataError(f'expected {nfields} fields (id|title|release date|video release date|url|'
                      f'{len(genres)} genre flags), got {len(f)}', path=display, line=n)
    iid = int_field(f[0], display, n, 'movie id')
    flags = f[5:]
    if any(x not in ('0', '1') for x in flags):
      raise DataError(f'genre flags must be 0 or 1, got {"|".join(flags)!r}', path=display, line=n,
                      field='genres')
    title = f[1].strip()
    items[str(iid)] = dict(title=title, genres=[g for g, x in zip(genres, flags) if x == '1'],
                           year=_year_of(title, f[2]))
  if not items:
    raise DataError('file is empty: the dataset is empty', path=display)
  return items


def _read_100k_users(src: Source) -> dict[str, dict[str, Any]]:
  member = src.require('u.user')
  display = src.display(member)
  users: dict[str, dict[str, Any]] = {}
  for n, line in text_lines(src, member, 'latin-1'):
    f = line.split('|')
    if len(f) != 5:
      raise DataError(f'expected 5 fields (id|age|gender|occupation|zip), got {len(f)}',
                      path=display, line=n)
    uid = int_field(f[0], display, n, 'user id')
    age = int_field(f[1], display, n, 'age')
    users[str(uid)] = dict(age=age, age_group=[_age_group(age)], gender=[f[2].strip()],
                           occupation=[f[3].strip()])
  if not users:
    raise DataError('file is empty: the dataset is empty', path=display)
  return users


# ------------------------------------------------------------------------------------------------
# MovieLens 1M / 10M (``::`` files).


def read_movielens_dat(path: str | os.PathLike, *, dataset_name: str | None = None) -> RecDataset:
  """MovieLens 1M / 10M: ``ratings.dat``, ``movies.dat`` and (1M only) ``users.dat``.

  Item features: text ``title``; categorical ``genres``; numeric ``year``. With ``users.dat``, user
  features: categorical ``gender``, ``age_group`` (the 1M age code) and ``occupation`` (its name).
  """
  with Source(path) as src:
    user, item, rating, ts = read_table(src, src.require('ratings.dat'), '::', RATING_COLUMNS,
                                         encoding='latin-1', what='ratings')
    items, users = _read_dat_metadata(src)
  user_fields = {'categorical': ['gender', 'age_group', 'occupation']} if users is not None else None
  return from_raw(dataset_name or source_name(path, 'ml-dat'), user, item, ts, rating,
                  item_features=items, user_features=users,
                  item_fields={'text': ['title'], 'categorical': ['genres'], 'numeric': ['year']},
                  user_fields=user_fields)


def read_movielens_dat_metadata(
    path: str | os.PathLike) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]] | None]:
  """Just the metadata of a MovieLens 1M/10M release: (movies.dat features, users.dat features or None).

  Movie features: ``title``, ``genres`` (list), ``year``; user features: ``gender``, ``age_group``,
  ``occupation`` (single-element lists, as categorical fields), keyed by raw id.
  """
  with Source(path) as src:
    return _read_dat_metadata(src)


def _read_dat_metadata(src: Source):
  member = src.require('movies.dat')
  display = src.display(member)
  items: dict[str, dict[str, Any]] = {}
  for n, line in text_lines(src, member, 'latin-1'):
    f = line.split('::')
    if len(f) < 3:
      raise DataError(f"expected 3 fields (movie::title::genres), got {len(f)}: {line[:80]!r}",
                      path=display, line=n)
    iid = int_field(f[0], display, n, 'movie id')
    title = '::'.join(f[1:-1]).strip()
    items[str(iid)] = dict(title=title, genres=_split_genres(f[-1]), year=_year_of(title))
  if not items:
    raise DataError('file is empty: the dataset is empty', path=display)
  member = src.find('users.dat')
  if member is None:
    return items, None
  display = src.display(member)
  users: dict[str, dict[str, Any]] = {}
  for n, line in text_lines(src, member, 'latin-1'):
    f = line.split('::')
    if len(f) != 5:
      raise DataError(f'expected 5 fields (user::gender::age::occupation::zip), got {len(f)}',
                      path=display, line=n)
    uid = int_field(f[0], display, n, 'user id')
    age = int_field(f[2], display, n, 'age')
    occ = int_field(f[3], display, n, 'occupation')
    users[str(uid)] = dict(gender=[f[1].strip()], age_group=[str(age)],
                           occupation=[ML1M_OCCUPATIONS[occ] if 0 <= occ < len(ML1M_OCCUPATIONS)
                                       else str(occ)])
  if not users:
    raise DataError('file is empty: the dataset is empty', path=display)
  return items, users


# ------------------------------------------------------------------------------------------------
# MovieLens CSV releases (20M / 25M / 32M / latest).


def read_movielens_csv(path: str | os.PathLike, *, dataset_name: str | None = None) -> RecDataset:
  """MovieLens CSV layout: ``ratings.csv`` (userId,movieId,rating,timestamp) + ``movies.csv``.

  Item features: text ``title``; categorical ``genres``; numeric ``year``. Only rated items are kept.
  """
  with Source(path) as src:
    user, item, rating, ts = read_table(src, src.require('ratings.csv'), ',', RATING_COLUMNS,
                                         encoding='utf-8', skip_header=not_int, what='ratings')
    items = _read_movies_csv(src)
  return from_raw(dataset_name or source_name(path, 'ml-csv'), user, item, ts, rating,
                  item_features=items,
                  item_fields={'text': ['title'], 'categorical': ['genres'], 'numeric': ['year']})


def _read_movies_csv(src: Source) -> dict[str, dict[str, Any]]:
  member = src.require('movies.csv')
  display = src.display(member)
  items: dict[str, dict[str, Any]] = {}
  with src.open_text(member, 'utf-8-sig', newline='') as f:
    reader = csv.reader(f)
    try:
      header = next(reader, None)
      if header is None:
        raise DataError('file is empty: the dataset is empty', path=display)
      cols = [h.strip() for h in header]
      missing = [c for c in ('movieId', 'title', 'genres') if c not in cols]
      if missing:
        raise DataError(f'header must name movieId,title,genres; missing {missing}', path=display,
                        line=1)
      i_id, i_title, i_genres = (cols.index(c) for c in ('movieId', 'title', 'genres'))
      for row in reader:
        n = reader.line_num
        if not row or not any(x.strip() for x in row):
          continue
        if len(row) != len(cols):
          raise DataError(f'expected {len(cols)} fields ({",".join(cols)}), got {len(row)}',
                          path=display, line=n)
        iid = int_field(row[i_id], display, n, 'movieId')
        title = row[i_title].strip()
        items[str(iid)] = dict(title=title, genres=_split_genres(row[i_genres]),
                               year=_year_of(title))
    except csv.Error as e:
      raise DataError(f'malformed CSV: {e}', path=display, line=reader.line_num) from e
    except UnicodeDecodeError as e:
      raise DataError(f'not valid utf-8 text ({e.reason})', path=display) from e
  return items

