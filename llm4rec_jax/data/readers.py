"""Readers for the published dataset formats; each returns a :class:`RecDataset` built with ``from_raw``.

Every reader takes a directory or a ``.zip`` laid out as the original release (the archive may hold a
top-level folder such as ``ml-100k/u.data``; files are located by their base name, also one folder down).

Formats:
  * ``ml-100k``    MovieLens 100K: ``u.data``, ``u.item``, ``u.user``, ``u.genre``.
  * ``ml-dat``     MovieLens 1M / 10M: ``ratings.dat``, ``movies.dat``, optional ``users.dat`` (``::``).
  * ``ml-csv``     MovieLens 20M / 25M / 32M / latest(-small): ``ratings.csv``, ``movies.csv``.
  * ``s3rec``      S3-Rec sequences: ``{Name}.txt`` + ``{Name}_item2attributes.json`` (+ optional extras).
  * ``scientific`` Amazon 2018 Scientific: ``{Name}.inter.json`` + ``{Name}.item.json``.
  * ``amazon-reviews`` Amazon Reviews 2014 / 2018: ``reviews_{Cat}_5.json.gz`` or ``{Cat}_5.json.gz``
                   (JSON lines) + optional ``meta_{Cat}.json.gz``.
  * ``amazon-2023`` Amazon Reviews 2023: ``{Cat}.csv.gz`` (benchmark) or ``{Cat}.jsonl.gz`` (raw
                   reviews) + optional ``meta_{Cat}.jsonl.gz``.
  * ``yelp-open``  Yelp Open Dataset: ``yelp_academic_dataset_review.json`` (+ ``..._business.json``).
  * ``recbole``    RecBole atomic files (UniSRec layout): ``{Name}.item2index``, ``{Name}.user2index``,
                   ``{Name}.{train,valid,test}.inter``, ``{Name}.text``, dense ``{Name}.feat*`` matrices.

Malformed input raises :class:`DataError` naming the file and the 1-based line number.
"""

from __future__ import annotations

import ast
import csv
import contextlib
import dataclasses
import gc
import gzip
import io
import itertools
import json
import math
import os
import pathlib
import re
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from llm4rec_jax.data import events, paths
from llm4rec_jax.data.dataset import RecDataset, from_raw
from llm4rec_jax.errors import DataError

__all__ = [
    'AMAZON_ITEM_FIELDS', 'DATASETS', 'FORMATS', 'YELP_ITEM_FIELDS', 'DatasetSpec', 'detect_format',
    'known_datasets',
    'load_dataset', 'read_amazon_2023', 'read_amazon_reviews', 'read_amazon_scientific',
    'read_yelp_open', 'read_coat',
    'read_movielens_100k', 'read_movielens_csv', 'read_movielens_dat', 'read_movielens_dat_metadata',
    'read_recbole_features', 'read_s3rec',
]

_CHUNK_LINES = 1 << 18
_YEAR_IN_TITLE = re.compile(r'\((\d{4})[^()]*\)\s*$')
_YEAR_ANYWHERE = re.compile(r'(\d{4})')
_INT_LINE = re.compile(r'\s*\d+(?:\s+\d+)*\s*')

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


# ------------------------------------------------------------------------------------------------
# Sources: a directory or a zip archive.


class _Source:
  """Files of a release given as a directory or a ``.zip`` (members located by base name)."""

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path).expanduser()
    self._zip: zipfile.ZipFile | None = None
    if self.path.is_file():
      if not zipfile.is_zipfile(self.path):
        raise DataError('expected a directory or a .zip archive of the release', path=str(self.path))
      try:
        self._zip = zipfile.ZipFile(self.path)
      except (OSError, zipfile.BadZipFile) as e:
        raise DataError(f'cannot open zip archive: {e}', path=str(self.path)) from e
      names = [n for n in self._zip.namelist() if not n.endswith('/')]
    elif self.path.is_dir():
      names = self._list_dir()
    else:
      raise DataError('dataset path does not exist', path=str(self.path))
    self._names = [n for n in names
                   if not n.startswith('__MACOSX/') and not n.rsplit('/', 1)[-1].startswith('._')]

  def _list_dir(self) -> list[str]:
    names = []
    try:
      with os.scandir(self.path) as top:
        subdirs = []
        for e in top:
          if e.is_file():
            names.append(e.name)
          elif e.is_dir() and not e.name.startswith('.'):
            subdirs.append(e.name)
      for d in sorted(subdirs):
        with os.scandir(self.path / d) as sub:
          names.extend(f'{d}/{e.name}' for e in sub if e.is_file())
    except OSError as e:
      raise DataError(f'cannot list directory: {e}', path=str(self.path)) from e
    return names

  def __enter__(self) -> _Source:
    return self

  def __exit__(self, *exc) -> None:
    if self._zip is not None:
      self._zip.close()

  def where(self) -> str:
    return (f'zip archive {self.path}' if self._zip is not None
            else f'directory {self.path} and its subfolders')

  def display(self, member: str) -> str:
    """A user-facing path for a member (``archive.zip!/folder/file`` inside archives)."""
    return f'{self.path}!/{member}' if self._zip is not None else str(self.path / member)

  def basenames(self) -> list[str]:
    return sorted({n.rsplit('/', 1)[-1] for n in self._names})

  def find(self, basename: str) -> str | None:
    """The member with this base name, the shallowest one; None if absent."""
    hits = [n for n in self._names if n == basename or n.endswith('/' + basename)]
    if not hits:
      return None
    depth = min(n.count('/') for n in hits)
    hits = sorted(n for n in hits if n.count('/') == depth)
    if len(hits) > 1:
      raise DataError(f'{len(hits)} files named {basename!r} in {self.where()}: {hits}',
                      path=str(self.path))
    return hits[0]

  def require(self, basename: str) -> str:
    member = self.find(basename)
    if member is None:
      raise DataError(f'required file {basename!r} not found (searched {self.where()})',
                      path=str(self.path / basename))
    return member

  def open_text(self, member: str, encoding: str, newline: str | None = None) -> io.TextIOBase:
    """The member as text; ``*.gz`` members (as the Amazon releases ship) are decompressed."""
    try:
      if member.endswith('.gz'):
        target = self._zip.open(member) if self._zip is not None else self.path / member
        return gzip.open(target, 'rt', encoding=encoding, newline=newline)
      if self._zip is not None:
        return io.TextIOWrapper(self._zip.open(member), encoding=encoding, newline=newline)
      return open(self.path / member, encoding=encoding, newline=newline)
    except OSError as e:
      raise DataError(f'cannot read file: {e}', path=self.display(member)) from e

  def read_text(self, member: str, encoding: str = 'utf-8') -> str:
    try:
      data = self._zip.read(member) if self._zip is not None else (self.path / member).read_bytes()
      return data.decode(encoding)
    except OSError as e:
      raise DataError(f'cannot read file: {e}', path=self.display(member)) from e
    except UnicodeDecodeError as e:
      line = data[:e.start].count(b'\n') + 1
      raise DataError(f'not valid {encoding} text ({e.reason})', path=self.display(member),
                      line=line) from e

  def size(self, member: str) -> int:
    """The member's size in bytes (uncompressed, inside archives)."""
    try:
      if self._zip is not None:
        return self._zip.getinfo(member).file_size
      return (self.path / member).stat().st_size
    except (OSError, KeyError) as e:
      raise DataError(f'cannot read file: {e}', path=self.display(member)) from e

  def open_binary(self, member: str) -> io.BufferedIOBase:
    try:
      if self._zip is not None:
        return self._zip.open(member)
      return open(self.path / member, 'rb')
    except OSError as e:
      raise DataError(f'cannot read file: {e}', path=self.display(member)) from e

  def read_json(self, member: str) -> Any:
    text = self.read_text(member, 'utf-8-sig')
    if not text.strip():
      raise DataError('file is empty: the dataset is empty', path=self.display(member))
    try:
      return json.loads(text)
    except json.JSONDecodeError as e:
      raise DataError(f'invalid JSON: {e.msg} (column {e.colno})', path=self.display(member),
                      line=e.lineno) from e


def _lines(src: _Source, member: str, encoding: str) -> Iterator[tuple[int, str]]:
  """(1-based line number, line without the newline) for each non-blank line."""
  with src.open_text(member, encoding) as f:
    try:
      for n, line in enumerate(f, 1):
        line = line.rstrip('\r\n')
        if line.strip():
          yield n, line
    except UnicodeDecodeError as e:
      raise DataError(f'not valid {encoding} text ({e.reason})', path=src.display(member)) from e


# ------------------------------------------------------------------------------------------------
# Fast delimited-table parsing with exact error locations.

_Column = tuple[str, str]  # (field name, kind: 'int' | 'float' | 'str')


def _convert(kind: str, value: str) -> Any:
  if kind == 'int':
    return int(value)
  if kind == 'float':
    v = float(value)
    if not math.isfinite(v):
      raise ValueError(value)
    return v
  return value.strip()


_KIND_NAMES = {'int': 'an integer', 'float': 'a number', 'str': 'text'}
_DTYPES = {'int': np.int64, 'float': np.float64, 'str': object}


def _read_table(src: _Source, member: str, sep: str | None, columns: Sequence[_Column], *,
                encoding: str, skip_header: Callable[[list[str]], bool] | None = None,
                what: str = 'interactions') -> list[np.ndarray]:
  """Parses a delimited file of exactly ``len(columns)`` fields per line into column arrays.

  Whole chunks are converted with numpy; a chunk that fails is re-parsed line by line to name the
  offending line and field. Blank lines are skipped. ``skip_header(fields)`` says whether the first
  line is a header. Raises DataError if the file holds no rows.
  """
  display = src.display(member)
  ncols = len(columns)
  kinds = [k for _, k in columns]
  out: list[list[np.ndarray]] = [[] for _ in columns]
  with src.open_text(member, encoding) as f, _gc_paused():
    lineno = 0
    first = True
    while True:
      try:
        chunk = list(itertools.islice(f, _CHUNK_LINES))
      except UnicodeDecodeError as e:
        raise DataError(f'not valid {encoding} text ({e.reason})', path=display,
                        line=lineno + 1) from e
      if not chunk:
        break
      start = lineno + 1
      lineno += len(chunk)
      if first:
        first = False
        if skip_header is not None and chunk[0].strip() and skip_header(chunk[0].strip().split(sep)):
          chunk, start = chunk[1:], start + 1
      while chunk and not chunk[-1].strip():  # trailing blank lines (numbering of the rest is kept)
        chunk.pop()
      cols = _parse_chunk_fast(chunk, sep, ncols, kinds)
      if cols is None:
        cols = _parse_chunk_slow(chunk, start, sep, columns, display)
      for acc, c in zip(out, cols):
        acc.append(c)
  arrays = [np.concatenate(acc) if acc else np.zeros(0, _DTYPES[k]) for acc, k in zip(out, kinds)]
  if len(arrays[0]) == 0:
    raise DataError(f'file contains no {what}: the dataset is empty', path=display)
  return arrays


@contextlib.contextmanager
def _gc_paused():
  """Pauses the cyclic GC: millions of short-lived row lists otherwise trigger it over and over."""
  enabled = gc.isenabled()
  gc.disable()
  try:
    yield
  finally:
    if enabled:
      gc.enable()


def _parse_chunk_fast(chunk: list[str], sep: str | None, ncols: int,
                      kinds: Sequence[str]) -> list[np.ndarray] | None:
  rows = [line.split(sep) for line in chunk]
  if any(len(r) != ncols for r in rows):
    return None
  cols = []
  try:
    for kind, col in zip(kinds, zip(*rows)):
      if kind == 'str':
        cols.append(np.asarray([v.strip() for v in col], dtype=object))
      else:
        arr = np.asarray(col, dtype=_DTYPES[kind])
        if kind == 'float' and not np.isfinite(arr).all():
          return None
        cols.append(arr)
  except (ValueError, OverflowError):
    return None
  return cols


def _parse_chunk_slow(chunk: list[str], start: int, sep: str | None, columns: Sequence[_Column],
                      display: str) -> list[np.ndarray]:
  ncols = len(columns)
  vals: list[list[Any]] = [[] for _ in columns]
  for n, line in enumerate(chunk, start):
    if not line.strip():
      continue
    fields = line.rstrip('\r\n').split(sep)
    if len(fields) != ncols:
      names = (sep or ' ').join(name for name, _ in columns)
      raise DataError(f'expected {ncols} fields ({names!r}), got {len(fields)}: {line.strip()[:80]!r}',
                      path=display, line=n)
    for (name, kind), v, acc in zip(columns, fields, vals):
      try:
        acc.append(_convert(kind, v))
      except (ValueError, OverflowError):
        raise DataError(f'expected {_KIND_NAMES[kind]}, got {v.strip()!r}', path=display, line=n,
                        field=name) from None
  return [np.asarray(v, dtype=_DTYPES[k]) for v, (_, k) in zip(vals, columns)]


def _int_field(value: str, display: str, line: int, field: str) -> int:
  try:
    return int(value)
  except ValueError:
    raise DataError(f'expected an integer, got {value.strip()!r}', path=display, line=line,
                    field=field) from None


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


def _not_int(fields: list[str]) -> bool:
  try:
    int(fields[0])
    return False
  except (ValueError, IndexError):
    return True


_RATING_COLUMNS: tuple[_Column, ...] = (('user', 'int'), ('item', 'int'), ('rating', 'float'),
                                        ('timestamp', 'int'))


def _source_name(path: str | os.PathLike, default: str) -> str:
  p = pathlib.Path(path)
  stem = p.name[:-4] if p.name.lower().endswith('.zip') else p.name
  return stem or default


# ------------------------------------------------------------------------------------------------
# MovieLens 100K.


def read_movielens_100k(path: str | os.PathLike, *, dataset_name: str = 'ml-100k') -> RecDataset:
  """MovieLens 100K: ``u.data`` ratings, ``u.item`` movies (title, genres, year), ``u.user`` users.

  Item features: text ``title``; categorical ``genres``; numeric ``year``.
  User features: categorical ``gender``, ``occupation``, ``age_group`` (1/18/25/35/45/50/56);
  numeric ``age``.
  """
  with _Source(path) as src:
    user, item, rating, ts = _read_table(src, src.require('u.data'), '\t', _RATING_COLUMNS,
                                         encoding='latin-1', what='ratings')
    genres = _read_100k_genres(src)
    items = _read_100k_items(src, genres)
    users = _read_100k_users(src)
  return from_raw(dataset_name, user, item, ts, rating, item_features=items, user_features=users,
                  item_fields={'text': ['title'], 'categorical': ['genres'], 'numeric': ['year']},
                  user_fields={'categorical': ['gender', 'occupation', 'age_group'],
                               'numeric': ['age']})


def _read_100k_genres(src: _Source) -> list[str]:
  member = src.find('u.genre')
  if member is None:
    return list(ML100K_GENRES)
  display = src.display(member)
  by_index: dict[int, str] = {}
  for n, line in _lines(src, member, 'latin-1'):
    fields = line.split('|')
    if len(fields) != 2:
      raise DataError(f"expected 'name|index', got {line[:80]!r}", path=display, line=n)
    by_index[_int_field(fields[1], display, n, 'index')] = fields[0].strip()
  if sorted(by_index) != list(range(len(by_index))) or not by_index:
    raise DataError(f'genre indices must be 0..N-1, got {sorted(by_index)}', path=display)
  return [by_index[i] for i in range(len(by_index))]


def _read_100k_items(src: _Source, genres: list[str]) -> dict[str, dict[str, Any]]:
  member = src.require('u.item')
  display = src.display(member)
  nfields = 5 + len(genres)
  items: dict[str, dict[str, Any]] = {}
  for n, line in _lines(src, member, 'latin-1'):
    f = line.split('|')
    if len(f) != nfields:
      raise DataError(f'expected {nfields} fields (id|title|release date|video release date|url|'
                      f'{len(genres)} genre flags), got {len(f)}', path=display, line=n)
    iid = _int_field(f[0], display, n, 'movie id')
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


def _read_100k_users(src: _Source) -> dict[str, dict[str, Any]]:
  member = src.require('u.user')
  display = src.display(member)
  users: dict[str, dict[str, Any]] = {}
  for n, line in _lines(src, member, 'latin-1'):
    f = line.split('|')
    if len(f) != 5:
      raise DataError(f'expected 5 fields (id|age|gender|occupation|zip), got {len(f)}',
                      path=display, line=n)
    uid = _int_field(f[0], display, n, 'user id')
    age = _int_field(f[1], display, n, 'age')
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
  with _Source(path) as src:
    user, item, rating, ts = _read_table(src, src.require('ratings.dat'), '::', _RATING_COLUMNS,
                                         encoding='latin-1', what='ratings')
    items, users = _read_dat_metadata(src)
  user_fields = {'categorical': ['gender', 'age_group', 'occupation']} if users is not None else None
  return from_raw(dataset_name or _source_name(path, 'ml-dat'), user, item, ts, rating,
                  item_features=items, user_features=users,
                  item_fields={'text': ['title'], 'categorical': ['genres'], 'numeric': ['year']},
                  user_fields=user_fields)


def read_movielens_dat_metadata(
    path: str | os.PathLike) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]] | None]:
  """Just the metadata of a MovieLens 1M/10M release: (movies.dat features, users.dat features or None).

  Movie features: ``title``, ``genres`` (list), ``year``; user features: ``gender``, ``age_group``,
  ``occupation`` (single-element lists, as categorical fields), keyed by raw id.
  """
  with _Source(path) as src:
    return _read_dat_metadata(src)


def _read_dat_metadata(src: _Source):
  member = src.require('movies.dat')
  display = src.display(member)
  items: dict[str, dict[str, Any]] = {}
  for n, line in _lines(src, member, 'latin-1'):
    f = line.split('::')
    if len(f) < 3:
      raise DataError(f"expected 3 fields (movie::title::genres), got {len(f)}: {line[:80]!r}",
                      path=display, line=n)
    iid = _int_field(f[0], display, n, 'movie id')
    title = '::'.join(f[1:-1]).strip()
    items[str(iid)] = dict(title=title, genres=_split_genres(f[-1]), year=_year_of(title))
  if not items:
    raise DataError('file is empty: the dataset is empty', path=display)
  member = src.find('users.dat')
  if member is None:
    return items, None
  display = src.display(member)
  users: dict[str, dict[str, Any]] = {}
  for n, line in _lines(src, member, 'latin-1'):
    f = line.split('::')
    if len(f) != 5:
      raise DataError(f'expected 5 fields (user::gender::age::occupation::zip), got {len(f)}',
                      path=display, line=n)
    uid = _int_field(f[0], display, n, 'user id')
    age = _int_field(f[2], display, n, 'age')
    occ = _int_field(f[3], display, n, 'occupation')
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
  with _Source(path) as src:
    user, item, rating, ts = _read_table(src, src.require('ratings.csv'), ',', _RATING_COLUMNS,
                                         encoding='utf-8', skip_header=_not_int, what='ratings')
    items = _read_movies_csv(src)
  return from_raw(dataset_name or _source_name(path, 'ml-csv'), user, item, ts, rating,
                  item_features=items,
                  item_fields={'text': ['title'], 'categorical': ['genres'], 'numeric': ['year']})


def _read_movies_csv(src: _Source) -> dict[str, dict[str, Any]]:
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
        iid = _int_field(row[i_id], display, n, 'movieId')
        title = row[i_title].strip()
        items[str(iid)] = dict(title=title, genres=_split_genres(row[i_genres]),
                               year=_year_of(title))
    except csv.Error as e:
      raise DataError(f'malformed CSV: {e}', path=display, line=reader.line_num) from e
    except UnicodeDecodeError as e:
      raise DataError(f'not valid utf-8 text ({e.reason})', path=display) from e
  return items


# ------------------------------------------------------------------------------------------------
# S3-Rec sequence files.


def read_s3rec(path: str | os.PathLike, name: str | None = None, *,
               dataset_name: str | None = None) -> RecDataset:
  """S3-Rec format: ``{name}.txt`` (``user item item ...`` per line, in time order) and
  ``{name}_item2attributes.json`` (item -> attribute ids).

  ``path`` is the folder (or zip, or the ``.txt`` itself); ``name`` is detected when there is a single
  ``*.txt`` with a matching ``*_item2attributes.json``. There are no timestamps: each user's sequence is
  the line's item order (``timestamp`` = interaction order, ``has_timestamps=False``). Raw ids are the
  file's ids as strings; internal item ids follow the raw ids' numeric order (so ``1..N`` stay ``1..N``).

  Item features: categorical ``attributes`` (labels are category names when
  ``attribute_id_to_category.tsv`` is present, else the attribute ids); text ``asin`` from
  ``item_id_to_asin.tsv``; text ``title``/``description`` from ``business_names_categories.json``
  (whose key ``k`` is item ``k+1``).
  """
  p = pathlib.Path(path).expanduser()
  if p.is_file() and p.suffix == '.txt':
    p, name = p.parent, name or p.stem
  with _Source(p) as src:
    if name is None:
      name = _detect_s3rec_name(src)
    seq_member = src.require(f'{name}.txt')
    attr_member = src.require(f'{name}_item2attributes.json')
    raw_user, raw_item = _read_s3rec_sequences(src, seq_member)
    attributes = _read_item2attributes(src, attr_member)
    labels = _read_attribute_names(src)
    extras: dict[str, dict[str, str]] = {}
    member = src.find('item_id_to_asin.tsv')
    if member is not None:
      extras['asin'] = _read_two_column_tsv(src, member, 'item id', 'asin')
    member = src.find('business_names_categories.json')
    if member is not None:
      extras.update(_read_business_names(src, member))
  features: dict[str, dict[str, Any]] = {}
  for iid in _sorted_ids(raw_item):
    feat: dict[str, Any] = {'attributes': [labels.get(a, a) for a in attributes.get(iid, ())]}
    for field, values in extras.items():
      feat[field] = values.get(iid, '')
    features[iid] = feat
  return from_raw(dataset_name or name.lower(), raw_user, raw_item, None, None,
                  item_features=features, keep_all_items=True,
                  item_fields={'text': sorted(extras), 'categorical': ['attributes']})


def _detect_s3rec_name(src: _Source) -> str:
  names = src.basenames()
  suffix = '_item2attributes.json'
  found = sorted({b[:-len(suffix)] for b in names if b.endswith(suffix)} & {
      b[:-4] for b in names if b.endswith('.txt')})
  if len(found) != 1:
    raise DataError(
        f'expected exactly one {{Name}}.txt with a matching {{Name}}{suffix} in {src.where()}, '
        f'found {found or "none"}; pass name=', path=str(src.path))
  return found[0]


def _read_s3rec_sequences(src: _Source, member: str) -> tuple[list[str], list[str]]:
  display = src.display(member)
  raw_user: list[str] = []
  raw_item: list[str] = []
  for n, line in _lines(src, member, 'utf-8'):
    if not _INT_LINE.fullmatch(line):
      bad = next((t for t in line.split() if not (t.isascii() and t.isdigit())), line.strip())
      raise DataError(f'expected integer ids (user_id item_id item_id ...), got {bad[:40]!r}',
                      path=display, line=n)
    tokens = line.split()
    if len(tokens) < 2:
      raise DataError(f'user {tokens[0]} has no items (expected user_id item_id item_id ...)',
                      path=display, line=n)
    raw_user.extend(itertools.repeat(tokens[0], len(tokens) - 1))
    raw_item.extend(tokens[1:])
  if not raw_item:
    raise DataError('file contains no interactions: the dataset is empty', path=display)
  return raw_user, raw_item


def _read_item2attributes(src: _Source, member: str) -> dict[str, list[str]]:
  display = src.display(member)
  data = src.read_json(member)
  if not isinstance(data, dict):
    raise DataError('expected a JSON object mapping item id to a list of attribute ids', path=display)
  out = {}
  for k, v in data.items():
    if not isinstance(v, list) or any(isinstance(a, (list, dict)) for a in v):
      raise DataError(f'item {k!r}: expected a list of attribute ids, got {str(v)[:60]}',
                      path=display, field='attributes')
    out[str(k)] = [str(a) for a in v]
  return out


def _read_attribute_names(src: _Source) -> dict[str, str]:
  """Attribute id -> category name; names shared by several ids get the id appended."""
  member = src.find('attribute_id_to_category.tsv')
  if member is None:
    return {}
  names = _read_two_column_tsv(src, member, 'attribute id', 'category', min_fields=2)
  counts: dict[str, int] = {}
  for v in names.values():
    counts[v] = counts.get(v, 0) + 1
  return {k: (v if counts[v] == 1 else f'{v} [{k}]') for k, v in names.items()}


def _read_two_column_tsv(src: _Source, member: str, key: str, value: str,
                         min_fields: int = 2) -> dict[str, str]:
  """First two columns of a tab-separated file with an optional header; the key is an integer."""
  display = src.display(member)
  out: dict[str, str] = {}
  first = True
  for n, line in _lines(src, member, 'utf-8'):
    f = line.split('\t')
    if first:
      first = False
      if _not_int(f):
        continue
    if len(f) < min_fields:
      raise DataError(f'expected {min_fields} tab-separated fields ({key}, {value}), got {len(f)}',
                      path=display, line=n)
    out[str(_int_field(f[0], display, n, key))] = f[1].strip()
  return out


def _read_business_names(src: _Source, member: str) -> dict[str, dict[str, str]]:
  """Yelp names: key ``k`` is S3-Rec item ``k+1``; returns field -> item id -> text."""
  display = src.display(member)
  data = src.read_json(member)
  if not isinstance(data, dict):
    raise DataError('expected a JSON object mapping index to {title, description}', path=display)
  title: dict[str, str] = {}
  desc: dict[str, str] = {}
  for k, v in data.items():
    try:
      iid = str(int(k) + 1)
    except ValueError:
      raise DataError(f'expected integer keys, got {k!r}', path=display) from None
    if not isinstance(v, dict):
      raise DataError(f'entry {k!r}: expected an object with title/description', path=display)
    title[iid] = str(v.get('title') or v.get('name') or '')
    desc[iid] = str(v.get('description') or v.get('categories') or '')
  return {'title': title, 'description': desc}


def _sorted_ids(raw: Sequence[str]) -> list[str]:
  """Distinct ids in numeric order when all are integers, else in order of first appearance."""
  distinct = list(dict.fromkeys(raw))
  try:
    return sorted(distinct, key=int)
  except ValueError:
    return distinct


# ------------------------------------------------------------------------------------------------
# Amazon 2018 Scientific (user -> item list JSON + item metadata JSON).


def read_amazon_scientific(path: str | os.PathLike, name: str | None = None, *,
                           dataset_name: str | None = None) -> RecDataset:
  """``{name}.inter.json`` (user -> item list in time order) + ``{name}.item.json`` (item metadata).

  Item features: text ``title``, ``description``, ``brand``; categorical ``categories`` (a
  comma-separated string or a possibly nested list). No timestamps: the list order is the sequence.
  Internal item ids follow the raw ids' numeric order.
  """
  with _Source(path) as src:
    if name is None:
      found = sorted(b[:-len('.inter.json')] for b in src.basenames() if b.endswith('.inter.json'))
      if len(found) != 1:
        raise DataError(f'expected exactly one {{Name}}.inter.json in {src.where()}, '
                        f'found {found or "none"}; pass name=', path=str(src.path))
      name = found[0]
    inter_member = src.require(f'{name}.inter.json')
    item_member = src.require(f'{name}.item.json')
    inter = src.read_json(inter_member)
    meta = src.read_json(item_member)
    inter_display, item_display = src.display(inter_member), src.display(item_member)
  if not isinstance(inter, dict):
    raise DataError('expected a JSON object mapping user id to a list of item ids', path=inter_display)
  if not isinstance(meta, dict):
    raise DataError('expected a JSON object mapping item id to its metadata', path=item_display)
  raw_user: list[str] = []
  raw_item: list[str] = []
  for u, seq in inter.items():
    if not isinstance(seq, list) or any(isinstance(i, (list, dict, float)) for i in seq):
      raise DataError(f'user {u!r}: expected a list of item ids, got {str(seq)[:60]}',
                      path=inter_display)
    raw_user.extend(itertools.repeat(str(u), len(seq)))
    raw_item.extend(str(i) for i in seq)
  if not raw_item:
    raise DataError('file contains no interactions: the dataset is empty', path=inter_display)
  features: dict[str, dict[str, Any]] = {}
  for iid in _sorted_ids(raw_item):
    m = meta.get(iid)
    if m is None:
      features[iid] = {}
      continue
    if not isinstance(m, dict):
      raise DataError(f'item {iid!r}: expected an object', path=item_display)
    features[iid] = dict(title=_text(m.get('title')), description=_text(m.get('description')),
                         brand=_text(m.get('brand')), categories=_categories(m.get('categories')))
  return from_raw(dataset_name or name.lower(), raw_user, raw_item, None, None,
                  item_features=features, keep_all_items=True,
                  item_fields={'text': ['title', 'description', 'brand'],
                               'categorical': ['categories']})


def _text(v: Any) -> str:
  if v is None:
    return ''
  if isinstance(v, list):
    return ' '.join(_text(x) for x in v).strip()
  return str(v).strip()


def _categories(v: Any) -> list[str]:
  if v is None:
    return []
  if isinstance(v, str):
    return [c for c in (s.strip() for s in v.split(',')) if c]
  if isinstance(v, (list, tuple)):
    out: list[str] = []
    for x in v:
      for c in _categories(x):
        if c not in out:
          out.append(c)
    return out
  return [str(v)]


# ------------------------------------------------------------------------------------------------
# RecBole-style atomic files with dense item features (the UniSRec / VQ-Rec release layout).

_RECBOLE_SPLITS = ('train', 'valid', 'test')
_DENSE_SUFFIX = re.compile(r'feat\w*|\w*CLS')

# One sequence row of a split file: (history item indices, target item index, file index, line).
_SeqRow = tuple[tuple[int, ...], int, int, int]


def read_recbole_features(path: str | os.PathLike, name: str | None = None, *,
                          dataset_name: str | None = None,
                          feature_dim: int | Mapping[str, int] | None = None) -> RecDataset:
  """RecBole atomic files as released with UniSRec / VQ-Rec, with precomputed dense item features.

  Files (``{name}`` is the common prefix, detected from the single ``*.item2index`` when not given):
    * ``{name}.item2index``: ``raw item id<TAB>index`` with indices ``0..N-1``.
    * ``{name}.user2index`` (optional): ``raw user id<TAB>index``.
    * ``{name}.train.inter`` / ``.valid.inter`` / ``.test.inter`` (any of them): header
      ``user_id:token<TAB>item_id_list:token_seq<TAB>item_id:token``, then one row per prediction:
      user index, the space-separated history (item indices, oldest first), the target item index.
    * ``{name}.text`` (optional): header ``item_id:token<TAB>text:token_seq`` (each further column is
      another text field), then ``raw item id<TAB>text``.
    * ``{name}.feat*`` / ``{name}.*CLS`` (optional): raw little-endian float32 matrices
      ``[N, dim]``, row ``k`` = item index ``k``; ``dim`` is the file size / (N * 4).

  ``path`` is the folder, a zip of it, or the ``.item2index`` file itself.

  Each user's full sequence is rebuilt from their rows: a row's history plus its target is a prefix of
  the sequence (so the test row alone usually gives it all, and every other row is checked against it).
  Histories cut to the last ``L`` items (``L`` = the longest history in the files, as the release
  scripts do with ``L=50``) are chained onto the sequence by their overlap. Users found only in some
  of the files get what their rows tell (rows missing in between are bridged by the longest overlap
  of the histories). There are no timestamps: ``timestamp`` is the position
  (``has_timestamps=False``), so leave-one-out on the result reproduces the published split.

  Ids: item raw ids are the ``item2index`` ids, and item index ``k`` is internal id ``k + 1`` (every
  item is kept, with or without interactions); user raw ids come from ``user2index`` when present
  (else the file's user tokens), internal user ids follow the user index order.

  Item features: text fields of ``{name}.text`` (``text`` here), '' where missing; dense matrices named
  by their suffix (``feat1CLS``, ``feat3CLS``), row 0 (padding) and rows that are NaN in the file are
  missing. ``feature_dim`` (one int, or field -> int) is the expected width; a file of another width,
  or whose size is no whole number of rows, raises :class:`DataError` naming the file.
  """
  p = pathlib.Path(path).expanduser()
  if p.is_file() and p.name.endswith('.item2index'):
    p, name = p.parent, name or p.name[:-len('.item2index')]
  with _Source(p) as src:
    if name is None:
      name = _detect_recbole_name(src)
    item_ids = _read_index_map(src, src.require(f'{name}.item2index'), 'item')
    member = src.find(f'{name}.user2index')
    user_ids = _read_index_map(src, member, 'user') if member is not None else None
    inter_members = [m for m in (src.find(f'{name}.{s}.inter') for s in _RECBOLE_SPLITS) if m]
    if not inter_members:
      raise DataError(f'no {name}.{{train,valid,test}}.inter file found (searched {src.where()})',
                      path=str(src.path / f'{name}.test.inter'))
    displays = [src.display(m) for m in inter_members]
    rows: dict[Any, list[_SeqRow]] = {}
    for i, m in enumerate(inter_members):
      _read_recbole_inter(src, m, i, len(item_ids), user_ids, rows)
    member = src.find(f'{name}.text')
    text = _read_recbole_text(src, member, item_ids) if member is not None else {}
    dense = {}
    for base in src.basenames():
      suffix = base[len(name) + 1:]
      if base.startswith(f'{name}.') and _DENSE_SUFFIX.fullmatch(suffix):
        dim = feature_dim.get(suffix) if isinstance(feature_dim, Mapping) else feature_dim
        dense[suffix] = _read_dense_matrix(src, src.require(base), item_ids, dim, suffix)
    missing = sorted(set(feature_dim or ()) - set(dense)) if isinstance(feature_dim, Mapping) else []
    if missing:
      raise DataError(f'feature_dim names {missing} but there is no such feature file '
                      f'{name}.{missing[0]} (searched {src.where()})', path=str(src.path))
  lmax = max(len(r[0]) for user_rows in rows.values() for r in user_rows)
  if lmax == 0:
    raise DataError('every history (item_id_list) is empty: the sequences cannot be rebuilt',
                    path=displays[0], field='item_id_list')
  raw_user: list[str] = []
  raw_item: list[str] = []
  for key in (sorted(rows) if user_ids is not None else _sorted_ids(list(rows))):
    seq = _recbole_sequence(key, rows[key], lmax, displays)
    raw_user.extend(itertools.repeat(user_ids[key] if user_ids is not None else key, len(seq)))
    raw_item.extend(item_ids[k] for k in seq)
  features = {iid: {f: values[k] for f, values in text.items()} for k, iid in enumerate(item_ids)}
  ds = from_raw(dataset_name or name.lower(), raw_user, raw_item, None, None,
                item_features=features, keep_all_items=True, item_fields={'text': list(text)})
  ds.items.dense.update(dense)
  return ds


def _detect_recbole_name(src: _Source) -> str:
  found = sorted(b[:-len('.item2index')] for b in src.basenames() if b.endswith('.item2index'))
  if len(found) != 1:
    raise DataError(f'expected exactly one {{Name}}.item2index in {src.where()}, '
                    f'found {found or "none"}; pass name=', path=str(src.path))
  return found[0]


def _read_index_map(src: _Source, member: str, what: str) -> list[str]:
  """``raw id<TAB>index`` lines (an optional header) -> raw ids in index order (indices 0..N-1)."""
  display = src.display(member)
  by_index: dict[int, str] = {}
  seen: dict[str, int] = {}
  first = True
  for n, line in _lines(src, member, 'utf-8'):
    f = line.split('\t')
    if first:
      first = False
      if len(f) == 2 and _not_int(f[1:]):
        continue
    if len(f) != 2:
      raise DataError(f'expected 2 tab-separated fields ({what} id, index), got {len(f)}',
                      path=display, line=n)
    raw, k = f[0].strip(), _int_field(f[1], display, n, 'index')
    if not raw:
      raise DataError(f'empty {what} id', path=display, line=n)
    if raw in seen:
      raise DataError(f'{what} {raw!r} is listed twice (also line {seen[raw]})', path=display, line=n)
    if k in by_index:
      raise DataError(f'index {k} is given twice (also {what} {by_index[k]!r})', path=display,
                      line=n, field='index')
    seen[raw] = n
    by_index[k] = raw
  if not by_index:
    raise DataError('file is empty: the dataset is empty', path=display)
  if min(by_index) != 0 or max(by_index) != len(by_index) - 1:
    missing = next(i for i in range(len(by_index) + 1) if i not in by_index)
    raise DataError(f'indices must be 0..{len(by_index) - 1} without gaps; index {missing} is missing',
                    path=display, field='index')
  return [by_index[i] for i in range(len(by_index))]


def _read_recbole_inter(src: _Source, member: str, file_index: int, num_items: int,
                        user_ids: list[str] | None, rows: dict[Any, list[_SeqRow]]) -> None:
  """Appends the file's rows to ``rows[user]`` (user = index when ``user_ids`` is given)."""
  display = src.display(member)
  cols = {'user_id': 0, 'item_id_list': 1, 'item_id': 2}
  ncols = 3
  count = 0
  first = True
  for n, line in _lines(src, member, 'utf-8'):
    f = line.split('\t')
    if first:
      first = False
      names = [x.split(':', 1)[0].strip() for x in f]
      if any(':' in x for x in f) or 'item_id' in names:
        missing = [c for c in cols if c not in names]
        if missing:
          raise DataError(f'header must name user_id, item_id_list and item_id (sequential split '
                          f'files); missing {missing}', path=display, line=n)
        cols = {c: names.index(c) for c in cols}
        ncols = len(f)
        continue
    if len(f) != ncols:
      raise DataError(f'expected {ncols} tab-separated fields (user_id, item_id_list, item_id), '
                      f'got {len(f)}: {line.strip()[:80]!r}', path=display, line=n)
    user: Any = f[cols['user_id']].strip()
    if user_ids is not None:
      user = _int_field(user, display, n, 'user_id')
      if not 0 <= user < len(user_ids):
        raise DataError(f'user index {user} is not in the user2index map (0..{len(user_ids) - 1})',
                        path=display, line=n, field='user_id')
    elif not user:
      raise DataError('empty user id', path=display, line=n, field='user_id')
    hist = _item_indices(f[cols['item_id_list']], num_items, display, n, 'item_id_list')
    target = _item_indices(f[cols['item_id']], num_items, display, n, 'item_id')
    if len(target) != 1:
      raise DataError(f'expected one target item index, got {len(target)}', path=display, line=n,
                      field='item_id')
    rows.setdefault(user, []).append((hist, target[0], file_index, n))
    count += 1
  if not count:
    raise DataError('file contains no interactions: the dataset is empty', path=display)


def _item_indices(text: str, num_items: int, display: str, line: int,
                  field: str) -> tuple[int, ...]:
  try:
    values = tuple(map(int, text.split()))
  except ValueError:
    bad = next(t for t in text.split() if not _is_int(t))
    raise DataError(f'expected item indices, got {bad[:40]!r}', path=display, line=line,
                    field=field) from None
  if values and (min(values) < 0 or max(values) >= num_items):
    bad_index = next(v for v in values if not 0 <= v < num_items)
    raise DataError(f'item index {bad_index} is not in the item2index map (0..{num_items - 1})',
                    path=display, line=line, field=field)
  return values


def _is_int(token: str) -> bool:
  try:
    int(token)
    return True
  except ValueError:
    return False


def _recbole_sequence(user: Any, rows: list[_SeqRow], lmax: int, displays: list[str]) -> list[int]:
  """One user's item sequence (item indices) rebuilt from their split-file rows.

  Rows with a history shorter than ``lmax`` start at the sequence's first item; each must be a prefix
  of the longest one. Rows with ``lmax`` history items may have been cut to their last ``lmax`` items:
  they are chained on, each continuing the sequence whose last ``lmax`` items are its history; where
  rows are missing, a row is laid over the end of the sequence with the longest overlap.
  """
  def conflict(row: _SeqRow, why: str) -> DataError:
    return DataError(f'user {user}: this row {why}; the split files do not describe one sequence',
                     path=displays[row[2]], line=row[3])

  seq: list[int] = []
  anchored = [r for r in rows if len(r[0]) < lmax]
  if anchored:
    longest = max(anchored, key=lambda r: (len(r[0]), r[2]))  # ties: test over valid over train
    seq = list(longest[0]) + [longest[1]]
    for r in anchored:
      k = len(r[0])
      if seq[k] != r[1] or tuple(seq[:k]) != r[0]:
        raise conflict(r, f'disagrees with the longer history at {displays[longest[2]]}:{longest[3]}')
  pending: dict[tuple[int, ...], list[_SeqRow]] = {}
  for r in sorted((r for r in rows if len(r[0]) >= lmax), key=lambda r: (r[2], r[3])):
    pending.setdefault(r[0], []).append(r)
  left = sum(len(v) for v in pending.values())
  while left:
    bucket = pending.get(tuple(seq[-lmax:])) if len(seq) >= lmax else None
    if bucket:
      seq.append(bucket.pop(0)[1])
      left -= 1
      continue
    # No row continues the sequence (rows are missing from the files): take the row no other
    # remaining row leads to and lay its history over the end of the sequence, overlapping as much
    # as it can (at least one item unless the sequence is still empty).
    rest = [r for b in pending.values() for r in b]
    leads_to = {r[0][1:] + (r[1],) for r in rest}
    head = min((r for r in rest if r[0] not in leads_to), key=lambda r: (r[2], r[3]),
               default=min(rest, key=lambda r: (r[2], r[3])))
    start = next((a for a in range(max(0, len(seq) - lmax), max(1, len(seq)))
                  if tuple(seq[a:]) == head[0][:len(seq) - a]), None)
    if start is None:
      raise conflict(head, "has a history that does not overlap the end of the sequence the user's "
                     'other rows give (rows missing from the split files?)')
    pending[head[0]].remove(head)
    left -= 1
    seq = seq[:start] + list(head[0]) + [head[1]]
  return seq


def _read_recbole_text(src: _Source, member: str, item_ids: list[str]) -> dict[str, list[str]]:
  """Text fields of a ``{name}.text`` file -> field -> text per item index ('' where missing)."""
  display = src.display(member)
  index = {iid: k for k, iid in enumerate(item_ids)}
  fields = ['text']
  out: dict[str, list[str]] | None = None
  seen: dict[int, int] = {}
  for n, line in _lines(src, member, 'utf-8'):
    if out is None:
      out = {}
      head = line.split('\t')
      if head[0].split(':', 1)[0].strip() == 'item_id' and head[0].strip() not in index:
        fields = [h.split(':', 1)[0].strip() for h in head[1:]]
        if not fields or any(not h for h in fields) or len(set(fields)) != len(fields):
          raise DataError(f'header must be item_id then distinct field names, got {line[:80]!r}',
                          path=display, line=n)
        out = {h: [''] * len(item_ids) for h in fields}
        continue
      out = {h: [''] * len(item_ids) for h in fields}
    f = line.split('\t', len(fields))
    if len(f) != len(fields) + 1:
      raise DataError(f'expected {len(fields) + 1} tab-separated fields (item_id, '
                      f'{", ".join(fields)}), got {len(f)}', path=display, line=n)
    k = index.get(f[0].strip())
    if k is None:
      continue  # an item outside the item2index map (the text file may cover more items)
    if k in seen:
      raise DataError(f'item {f[0].strip()!r} is listed twice (also line {seen[k]})', path=display,
                      line=n)
    seen[k] = n
    for h, v in zip(fields, f[1:]):
      out[h][k] = v.strip()
  return out or {}


def _read_dense_matrix(src: _Source, member: str, item_ids: list[str], dim: int | None,
                       field: str) -> np.ndarray:
  """A raw little-endian float32 ``[N, dim]`` file -> float32 ``[N + 1, dim]`` (row 0 = NaN pad)."""
  display = src.display(member)
  n_items = len(item_ids)
  size = src.size(member)
  row_bytes = 4 * n_items
  if size == 0 or size % row_bytes:
    raise DataError(f'{size} bytes is not a whole float32 matrix for the {n_items} items of the '
                    f'item2index map (size must be a positive multiple of {n_items} x 4 = '
                    f'{row_bytes} bytes): truncated, or written for another item set',
                    path=display, field=field)
  width = size // row_bytes
  if dim is not None and width != dim:
    raise DataError(f'holds {n_items} x {width} float32 values, expected {n_items} x {dim}',
                    path=display, field=field)
  out = np.empty((n_items + 1, width), np.float32)
  view = memoryview(out[1:]).cast('B')
  with src.open_binary(member) as f:
    got = 0
    while got < len(view):
      k = f.readinto(view[got:])
      if not k:
        raise DataError(f'file ended after {got} of {size} bytes', path=display, field=field)
      got += k
  if sys.byteorder != 'little':
    out.byteswap(inplace=True)
  out[0] = np.nan
  body = out[1:]
  finite = np.isfinite(body)
  if not finite.all():
    bad = ~finite.all(axis=1) & ~np.isnan(body).all(axis=1)
    if bad.any():
      k = int(np.argmax(bad))
      raise DataError(f'row {k} (item {item_ids[k]!r}) holds non-finite values (only all-NaN rows '
                      f'may mark a missing item): not little-endian float32?', path=display,
                      field=field)
  return out


# ------------------------------------------------------------------------------------------------
# JSON-lines review releases: Amazon Reviews 2014 / 2018 / 2023 and the Yelp Open Dataset.

# Item fields of every Amazon reader (2014, 2018 and 2023 alike, so one model config fits them all).
AMAZON_ITEM_FIELDS = {'text': ['title', 'brand', 'description'], 'categorical': ['categories'],
                      'numeric': ['price']}
YELP_ITEM_FIELDS = {'text': ['title', 'address'], 'categorical': ['categories', 'city', 'state'],
                    'numeric': ['stars', 'review_count']}

_AMAZON_REVIEWS_FILE = re.compile(r'^(?:reviews_)?(?P<category>[A-Za-z0-9_&-]+?)(?P<core>_5)?'
                                  r'\.json(?:\.gz)?$')
_AMAZON_2023_FILE = re.compile(r'^(?P<category>[A-Za-z0-9_&-]+)\.(?P<ext>csv|jsonl)(?:\.gz)?$')
_PRICE = re.compile(r'^\s*\$?\s*([0-9][0-9,]*(?:\.[0-9]+)?)')


def _json_records(src: _Source, member: str, required: Sequence[str] = (), *,
                  literal: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
  """(1-based line number, object) for each non-blank line of a JSON-lines file (``.gz`` too).

  ``literal``: a line that is not JSON is read as a Python literal (the 2014 Amazon metadata files
  were written with ``str(dict)``). A missing ``required`` field raises DataError naming it.
  """
  display = src.display(member)
  try:
    for n, line in _lines(src, member, 'utf-8'):
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        if not literal:
          raise DataError(f'invalid JSON: {e.msg} (column {e.colno})', path=display,
                          line=n) from None
        try:
          rec = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
          raise DataError(f'neither JSON nor a Python literal: {line.strip()[:80]!r}',
                          path=display, line=n) from None
      if not isinstance(rec, dict):
        raise DataError(f'expected one JSON object per line, got {type(rec).__name__}',
                        path=display, line=n)
      for f in required:
        if rec.get(f) in (None, ''):
          raise DataError(f'record has no {f!r}', path=display, line=n, field=f)
      yield n, rec
  except (OSError, EOFError, zlib.error) as e:  # a corrupt or truncated .gz
    raise DataError(f'cannot read file: {e}', path=display) from e


def _json_number(rec: Mapping[str, Any], field: str, display: str, line: int,
                 kind: type = float) -> Any:
  v = rec[field]
  try:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
      raise ValueError
    out = kind(float(v)) if kind is int and not isinstance(v, int) else kind(v)
    if kind is float and not math.isfinite(out):
      raise ValueError
    return out
  except (ValueError, OverflowError):
    raise DataError(f'expected {"an integer" if kind is int else "a number"}, got {v!r:.40}',
                    path=display, line=line, field=field) from None


def _text(value: Any) -> str:
  """A metadata value as one string (lists, as in the 2018/2023 descriptions, are joined)."""
  if value is None:
    return ''
  if isinstance(value, (list, tuple)):
    return ' '.join(_text(v) for v in value if v).strip()
  return str(value).strip()


def _flat_labels(value: Any) -> list[str]:
  """Category labels from a string, a list or a list of lists (2014), without repeats."""
  if value is None:
    return []
  if isinstance(value, str):
    value = [value]
  out: list[str] = []
  for v in value:
    out.extend(_flat_labels(v) if isinstance(v, (list, tuple)) else [str(v).strip()])
  return [x for x in dict.fromkeys(out) if x]


def _amount(value: Any) -> float | None:
  """A number or a price ('$12.99', '$5.00 - $9.00' -> 5.0 in 2018 metadata); None if neither."""
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return float(value) if math.isfinite(value) else None
  m = _PRICE.match(value) if isinstance(value, str) else None
  return float(m.group(1).replace(',', '')) if m else None


def _pick_member(src: _Source, pattern: re.Pattern, category: str | None, what: str,
                 prefer: Callable[[re.Match], bool] = lambda m: True) -> tuple[str, str]:
  """The interactions file of ``category`` (detected when there is one): (member, category)."""
  found = [(b, m) for b in src.basenames() if not b.startswith('meta_')
           for m in [pattern.match(b)] if m and (category is None or m['category'] == category)]
  preferred = [x for x in found if prefer(x[1])]
  found = preferred or found
  cats = sorted({m['category'] for _, m in found})
  if len(cats) != 1 or len(found) != 1:
    which = f'for category {category!r} ' if category else ''
    raise DataError(f'expected exactly one {what} file {which}in {src.where()}, found '
                    f'{[b for b, _ in found] or "none"}' + ('' if category else '; pass category='),
                    path=str(src.path))
  return src.require(found[0][0]), cats[0]


def _meta_member(src: _Source, category: str, suffixes: Sequence[str]) -> str | None:
  for suffix in suffixes:
    member = src.find(f'meta_{category}{suffix}')
    if member is not None:
      return member
  return None


def _read_amazon_meta(src: _Source, member: str, wanted: set[str], id_field: str, *,
                      literal: bool) -> dict[str, dict[str, Any]]:
  """Metadata of the ``wanted`` items: title, brand (2023: store), description, categories, price."""
  items: dict[str, dict[str, Any]] = {}
  for _, rec in _json_records(src, member, (id_field,), literal=literal):
    iid = str(rec[id_field])
    if iid not in wanted or iid in items:  # 2018 metadata repeats some products: first one wins
      continue
    cats = rec.get('categories') if rec.get('categories') is not None else rec.get('category')
    if id_field == 'parent_asin' and rec.get('main_category'):
      cats = [rec['main_category']] + list(cats or [])
    items[iid] = dict(title=_text(rec.get('title')),
                      brand=_text(rec.get('brand') or rec.get('store')),
                      description=_text(rec.get('description')),
                      categories=_flat_labels(cats), price=_amount(rec.get('price')))
  return items


def read_amazon_reviews(path: str | os.PathLike, category: str | None = None, *,
                        dataset_name: str | None = None) -> RecDataset:
  """Amazon Reviews 2014 or 2018 (McAuley et al.), one category: reviews plus optional metadata.

  Reviews, JSON lines (gzipped as distributed or not) with ``reviewerID``, ``asin``, ``overall``,
  ``unixReviewTime``: ``reviews_{Category}_5.json.gz`` (2014) or ``{Category}_5.json.gz`` (2018),
  or the full (not 5-core) files without ``_5`` (the 5-core file wins when both are there).
  Metadata, ``meta_{Category}.json.gz``: JSON lines (2018) or Python dict literals (2014); optional.
  Item features (:data:`AMAZON_ITEM_FIELDS`): text ``title``, ``brand``, ``description``;
  categorical ``categories``; numeric ``price`` (NaN where missing or unparseable).
  """
  with _Source(path) as src:
    member, category = _pick_member(src, _AMAZON_REVIEWS_FILE, category, 'Amazon reviews',
                                    prefer=lambda m: bool(m['core']))
    display = src.display(member)
    user: list[str] = []
    item: list[str] = []
    rating: list[float] = []
    ts: list[int] = []
    for n, rec in _json_records(src, member, ('reviewerID', 'asin', 'overall', 'unixReviewTime')):
      user.append(str(rec['reviewerID']))
      item.append(str(rec['asin']))
      rating.append(_json_number(rec, 'overall', display, n))
      ts.append(_json_number(rec, 'unixReviewTime', display, n, int))
    if not user:
      raise DataError('file contains no reviews: the dataset is empty', path=display)
    meta = _meta_member(src, category, ('.json.gz', '.json'))
    items = (_read_amazon_meta(src, meta, set(item), 'asin', literal=True) if meta is not None
             else None)
  return from_raw(dataset_name or category.lower(), user, item, ts, rating, item_features=items,
                  item_fields=AMAZON_ITEM_FIELDS)


def read_amazon_2023(path: str | os.PathLike, category: str | None = None, *,
                     dataset_name: str | None = None) -> RecDataset:
  """Amazon Reviews 2023 (Hou et al.), one category; items are ``parent_asin`` (as the benchmarks).

  Interactions: the benchmark file ``{Category}.csv(.gz)`` (``user_id,parent_asin,rating,timestamp``,
  e.g. the 5-core ``rating_only`` release) or the raw reviews ``{Category}.jsonl(.gz)`` (``user_id``,
  ``parent_asin``, ``rating``, ``timestamp``); timestamps are milliseconds, stored as seconds.
  Metadata ``meta_{Category}.jsonl(.gz)`` (optional). Item features as :func:`read_amazon_reviews`
  (``brand`` is the ``store``; ``main_category`` leads the categories).
  """
  with _Source(path) as src:
    member, category = _pick_member(src, _AMAZON_2023_FILE, category, 'Amazon 2023 interactions')
    display = src.display(member)
    if '.csv' in member:
      user, item, rating, ts_ms = _read_table(
          src, member, ',', (('user_id', 'str'), ('parent_asin', 'str'), ('rating', 'float'),
                             ('timestamp', 'int')),
          encoding='utf-8', skip_header=lambda f: f[0].strip() == 'user_id', what='ratings')
    else:
      cols: tuple[list, list, list, list] = ([], [], [], [])
      for n, rec in _json_records(src, member, ('user_id', 'parent_asin', 'rating', 'timestamp')):
        cols[0].append(str(rec['user_id']))
        cols[1].append(str(rec['parent_asin']))
        cols[2].append(_json_number(rec, 'rating', display, n))
        cols[3].append(_json_number(rec, 'timestamp', display, n, int))
      if not cols[0]:
        raise DataError('file contains no reviews: the dataset is empty', path=display)
      user, item, rating, ts_ms = cols
    meta = _meta_member(src, category, ('.jsonl.gz', '.jsonl'))
    items = (_read_amazon_meta(src, meta, set(map(str, item)), 'parent_asin', literal=False)
             if meta is not None else None)
  ts = np.asarray(ts_ms, np.int64) // 1000
  return from_raw(dataset_name or f'{category.lower()}-2023', user, item, ts, rating,
                  item_features=items, item_fields=AMAZON_ITEM_FIELDS)


def read_yelp_open(path: str | os.PathLike, *, dataset_name: str | None = None) -> RecDataset:
  """The Yelp Open Dataset (JSON lines as in ``yelp_dataset.tar``), not the S3-Rec subset.

  ``yelp_academic_dataset_review.json`` (``user_id``, ``business_id``, ``stars``, ``date`` as
  ``YYYY-MM-DD HH:MM:SS``) and ``yelp_academic_dataset_business.json`` (optional; ``name``,
  ``address``, ``city``, ``state``, ``categories`` as ``'A, B'``, ``stars``, ``review_count``).
  Item features (:data:`YELP_ITEM_FIELDS`): text ``title`` (the name), ``address``; categorical
  ``categories``, ``city``, ``state``; numeric ``stars``, ``review_count``.
  """
  with _Source(path) as src:
    member = src.require('yelp_academic_dataset_review.json')
    display = src.display(member)
    user: list[str] = []
    item: list[str] = []
    rating: list[float] = []
    dates: list[str] = []
    line_of: list[int] = []
    for n, rec in _json_records(src, member, ('user_id', 'business_id', 'stars', 'date')):
      line_of.append(n)
      user.append(str(rec['user_id']))
      item.append(str(rec['business_id']))
      rating.append(_json_number(rec, 'stars', display, n))
      dates.append(str(rec['date']))
    if not user:
      raise DataError('file contains no reviews: the dataset is empty', path=display)
    try:
      ts = np.asarray(dates, 'datetime64[s]').astype(np.int64)
    except ValueError:
      bad = next(k for k, d in enumerate(dates) if not _is_datetime(d))
      raise DataError(f'expected a date like 2018-07-07 22:09:11, got {dates[bad]!r:.40}',
                      path=display, line=line_of[bad], field='date') from None
    items = None
    member = src.find('yelp_academic_dataset_business.json')
    if member is not None:
      wanted = set(item)
      items = {}
      for _, rec in _json_records(src, member, ('business_id',)):
        bid = str(rec['business_id'])
        if bid in wanted:
          cats = rec.get('categories')
          items[bid] = dict(title=_text(rec.get('name')), address=_text(rec.get('address')),
                            categories=[c.strip() for c in cats.split(',') if c.strip()]
                            if isinstance(cats, str) else _flat_labels(cats),
                            city=_flat_labels(rec.get('city')), state=_flat_labels(rec.get('state')),
                            stars=_amount(rec.get('stars')), review_count=_amount(rec.get('review_count')))
  return from_raw(dataset_name or 'yelp-open', user, item, ts, rating, item_features=items,
                  item_fields=YELP_ITEM_FIELDS)


def _is_datetime(text: str) -> bool:
  try:
    np.datetime64(text, 's')
    return True
  except ValueError:
    return False


# ------------------------------------------------------------------------------------------------
# Coat (Schnabel et al., ICML 2016): dense rating matrices.


def read_coat(path: str | os.PathLike, *, dataset_name: str = 'coat') -> RecDataset:
  """Coat shopping: ``train.ascii`` (self-selected ratings) and ``test.ascii`` (ratings of randomly
  exposed items), dense ``users x items`` matrices of 0-5 with 0 = missing.

  The interactions are the training ratings (no timestamps: row-major order). The random test
  ratings are ``extras['random_test']`` (``user``, ``item`` internal ids, ``rating``), kept out of the
  interactions; ``propensities.ascii`` when present is ``extras['propensities']`` [users+1, items+1].
  Raw ids are the 1-based row / column numbers. With ``user_item_features/``, user features are
  categorical ``gender``, ``age``, ``location``, ``fashioninterest`` and item features ``gender``,
  ``jackettype``, ``color``, ``onfrontpage`` (one-hot columns named by the ``*_map.txt`` files).
  """
  with _Source(path) as src:
    train = _read_coat_matrix(src, src.require('train.ascii'), int)
    test = _read_coat_matrix(src, src.require('test.ascii'), int)
    if test.shape != train.shape:
      raise DataError(f'test matrix is {test.shape[0]}x{test.shape[1]} but the training matrix is '
                      f'{train.shape[0]}x{train.shape[1]}', path=src.display(src.require('test.ascii')))
    for name, m in (('train.ascii', train), ('test.ascii', test)):
      if m.min() < 0 or m.max() > 5:
        raise DataError(f'ratings must lie in 0..5 (0 = missing), got {m.min()}..{m.max()}',
                        path=src.display(src.require(name)))
    member = src.find('propensities.ascii')
    given = _read_coat_matrix(src, member, float) if member is not None else None
    if given is not None and given.shape != train.shape:
      raise DataError(f'expected a {train.shape[0]}x{train.shape[1]} matrix, got '
                      f'{given.shape[0]}x{given.shape[1]}', path=src.display(member))
    user_feats = _read_coat_features(src, 'user', train.shape[0])
    item_feats = _read_coat_features(src, 'item', train.shape[1])
  num_users, num_items = train.shape
  if not (train > 0).any(axis=1).all():
    raise DataError('every user needs a training rating', path=str(path))
  u, i = np.nonzero(train)
  fields = {'categorical': sorted({f for row in (item_feats or {}).values() for f in row})}
  ufields = {'categorical': sorted({f for row in (user_feats or {}).values() for f in row})}
  if item_feats is None:
    item_feats = {str(j + 1): {} for j in range(num_items)}
  ds = from_raw(dataset_name, [str(x + 1) for x in u], [str(x + 1) for x in i], None,
                train[u, i].astype(np.float32), item_features=item_feats, user_features=user_feats,
                item_fields=fields, user_fields=ufields, keep_all_items=True)
  user_index, item_index = ds.users.id_of(), ds.items.id_of()
  uid = np.asarray([user_index[str(x + 1)] for x in range(num_users)], np.int32)
  iid = np.asarray([item_index[str(x + 1)] for x in range(num_items)], np.int32)
  tu, ti = np.nonzero(test)
  ds.extras['random_test'] = {'user': uid[tu], 'item': iid[ti],
                              'rating': test[tu, ti].astype(np.float32)}
  if given is not None:
    full = np.ones((num_users + 1, num_items + 1))
    full[np.ix_(uid, iid)] = given
    ds.extras['propensities'] = full
  return ds


def _read_coat_matrix(src: _Source, member: str, kind: type) -> np.ndarray:
  display = src.display(member)
  rows, width = [], None
  for n, line in _lines(src, member, 'ascii'):
    parts = line.split()
    if width is None:
      width = len(parts)
    elif len(parts) != width:
      raise DataError(f'expected {width} columns like the first row, got {len(parts)}',
                      path=display, line=n)
    try:
      rows.append([kind(x) for x in parts])
    except ValueError as e:
      raise DataError(f'not a number: {e}', path=display, line=n) from e
  if not rows:
    raise DataError('file is empty: the dataset is empty', path=display)
  return np.asarray(rows, np.float64 if kind is float else np.int64)


def _read_coat_features(src: _Source, what: str, rows: int) -> dict[str, dict[str, list[str]]] | None:
  """``{what}_features.ascii`` one-hot columns named 'field:value' by ``{what}_features_map.txt``."""
  member, map_member = src.find(f'{what}_features.ascii'), src.find(f'{what}_features_map.txt')
  if member is None or map_member is None:
    return None
  names = [line.strip() for _, line in _lines(src, map_member, 'utf-8')]
  display = src.display(map_member)
  for n, name in enumerate(names, 1):
    if ':' not in name:
      raise DataError(f"expected 'field:value', got {name!r}", path=display, line=n)
  matrix = _read_coat_matrix(src, member, int)
  if matrix.shape != (rows, len(names)):
    raise DataError(f'expected {rows} rows of {len(names)} columns (one per line of '
                    f'{map_member}), got {matrix.shape[0]}x{matrix.shape[1]}',
                    path=src.display(member))
  out: dict[str, dict[str, list[str]]] = {}
  for r in range(rows):
    row: dict[str, list[str]] = {}
    for c in np.nonzero(matrix[r])[0]:
      field, _, value = names[c].partition(':')
      row.setdefault(field, []).append(value)
    out[str(r + 1)] = row
  return out


# ------------------------------------------------------------------------------------------------
# Registry and dispatcher.


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


def _sniff_format(src: _Source) -> str | None:
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
  if any(_AMAZON_2023_FILE.match(n) for n in names if not n.startswith('meta_')):
    return 'amazon-2023'
  if any(_AMAZON_REVIEWS_FILE.match(n) for n in names if not n.startswith('meta_')):
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
  with _Source(p) as src:
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
