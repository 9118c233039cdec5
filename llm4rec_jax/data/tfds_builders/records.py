"""A :class:`RecDataset` as TFDS records and back: the features of the three tables and both
conversions.

A dataset is stored as up to three TFDS configs of one builder, each a single split ``full``:
  * ``sequences``: one record per user: ``user_index`` (the internal id), ``user_id`` (raw), and the
    user's interactions in source order: ``item_index`` int32, ``timestamp`` int64, ``rating`` float32.
  * ``items``: one record per catalog item: ``item_index``, ``item_id`` (raw), ``text/*`` (string),
    ``categorical/*`` (list of labels), ``numeric/*`` (float32, NaN = missing).
  * ``users``: like ``items``, for datasets with user features (MovieLens 100K / 1M).
The internal ids are those the reader assigned, so the dataset read back equals the reader's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from llm4rec_jax.data.dataset import FeatureTable, MultiValued, RecDataset
from llm4rec_jax.errors import DataError

TABLES = ('sequences', 'items', 'users')
SPLIT = 'full'
KINDS = ('text', 'categorical', 'numeric')
Fields = Mapping[str, Sequence[str]]  # kind -> field names


def sequence_features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      'user_index': tfds.features.Scalar(np.int64),
      'user_id': tfds.features.Text(),
      'item_index': tfds.features.Tensor(shape=(None,), dtype=np.int32),
      'timestamp': tfds.features.Tensor(shape=(None,), dtype=np.int64),
      'rating': tfds.features.Tensor(shape=(None,), dtype=np.float32),
  })


def entity_features(entity: str, fields: Fields) -> tfds.features.FeaturesDict:
  """Features of an ``items``/``users`` record (``entity`` = 'item' | 'user')."""
  spec: dict[str, Any] = {f'{entity}_index': tfds.features.Scalar(np.int64),
                          f'{entity}_id': tfds.features.Text()}
  make = {'text': tfds.features.Text,
          'categorical': lambda: tfds.features.Sequence(tfds.features.Text()),
          'numeric': lambda: tfds.features.Scalar(np.float32)}
  for kind in KINDS:
    if fields.get(kind):
      spec[kind] = tfds.features.FeaturesDict({f: make[kind]() for f in fields[kind]})
  return tfds.features.FeaturesDict(spec)


def fields_of(table: FeatureTable) -> dict[str, list[str]]:
  """kind -> field names a feature table holds (dense matrices are not stored)."""
  return {'text': sorted(table.text), 'categorical': sorted(table.categorical),
          'numeric': sorted(table.numeric)}


def check_fields(table: FeatureTable, fields: Fields, what: str) -> None:
  """Raises DataError when ``table`` holds a field the builder's schema has no place for."""
  for kind, names in fields_of(table).items():
    extra = sorted(set(names) - set(fields.get(kind, ())))
    if extra:
      raise DataError(f'{what} {kind} field(s) {extra} are not in the builder schema '
                      f'{dict(fields)}', field=kind)


def sequence_examples(ds: RecDataset) -> Iterator[tuple[int, dict[str, Any]]]:
  """(key, record) per user; interactions keep their source order within the user."""
  order = np.argsort(ds.user, kind='stable')
  bounds = np.searchsorted(ds.user[order], np.arange(1, ds.num_users + 2))
  for u in range(1, ds.num_users + 1):
    rows = order[bounds[u - 1]:bounds[u]]
    yield u, {'user_index': u, 'user_id': str(ds.users.raw_ids[u]),
              'item_index': ds.item[rows].astype(np.int32),
              'timestamp': ds.timestamp[rows].astype(np.int64),
              'rating': ds.rating[rows].astype(np.float32)}


def entity_examples(table: FeatureTable, entity: str,
                    fields: Fields) -> Iterator[tuple[int, dict[str, Any]]]:
  """(key, record) per row 1..N of ``table``; fields the table lacks are written empty."""
  for i in range(1, table.num_rows):
    rec: dict[str, Any] = {f'{entity}_index': i, f'{entity}_id': str(table.raw_ids[i])}
    if fields.get('text'):
      rec['text'] = {f: table.text[f][i] if f in table.text else '' for f in fields['text']}
    if fields.get('categorical'):
      rec['categorical'] = {f: table.categorical[f].labels(i) if f in table.categorical else []
                            for f in fields['categorical']}
    if fields.get('numeric'):
      rec['numeric'] = {f: float(table.numeric[f][i]) if f in table.numeric else np.nan
                        for f in fields['numeric']}
    yield i, rec


def read_all(source: Any, batch: int = 4096) -> list[dict[str, Any]]:
  """Every record of a ``tfds.data_source`` split (random access, read in batches)."""
  out: list[dict[str, Any]] = []
  for start in range(0, len(source), batch):
    out.extend(source.__getitems__(list(range(start, min(len(source), start + batch)))))
  return out


def _str(value: Any) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def table_from_records(records: Sequence[Mapping[str, Any]], entity: str, fields: Fields,
                       num_rows: int, what: str) -> FeatureTable:
  """A FeatureTable of ``num_rows`` rows (row 0 = pad) from ``items``/``users`` records."""
  by_index: list[Mapping[str, Any] | None] = [None] * num_rows
  for rec in records:
    i = int(rec[f'{entity}_index'])
    if not 0 < i < num_rows or by_index[i] is not None:
      raise DataError(f'{what}: {entity}_index {i} is out of range 1..{num_rows - 1} or repeated',
                      field=f'{entity}_index')
    by_index[i] = rec
  missing = [i for i in range(1, num_rows) if by_index[i] is None]
  if missing:
    raise DataError(f'{what}: no record for {entity}_index {missing[:5]} (of {num_rows - 1})',
                    field=f'{entity}_index')
  rows = by_index[1:]
  table = FeatureTable(raw_ids=np.asarray([''] + [_str(r[f'{entity}_id']) for r in rows], object))
  for f in fields.get('text', ()):
    table.text[f] = [''] + [_str(r['text'][f]) for r in rows]
  for f in fields.get('categorical', ()):
    table.categorical[f] = MultiValued.from_lists([[]] + [[_str(v) for v in r['categorical'][f]]
                                                          for r in rows])
  for f in fields.get('numeric', ()):
    table.numeric[f] = np.asarray([np.nan] + [r['numeric'][f] for r in rows], np.float32)
  return table


def dataset_from_records(name: str, sequences: Sequence[Mapping[str, Any]],
                         items: Sequence[Mapping[str, Any]], item_fields: Fields,
                         users: Sequence[Mapping[str, Any]] | None = None,
                         user_fields: Fields | None = None, *,
                         has_timestamps: bool = True) -> RecDataset:
  """The RecDataset the records describe (inverse of the ``*_examples`` functions)."""
  seqs = sorted(sequences, key=lambda r: int(r['user_index']))
  if [int(r['user_index']) for r in seqs] != list(range(1, len(seqs) + 1)):
    raise DataError(f'{name} sequences: user_index must be 1..{len(seqs)} without gaps',
                    field='user_index')
  lengths = np.asarray([len(r['item_index']) for r in seqs], np.int64)
  user = np.repeat(np.arange(1, len(seqs) + 1, dtype=np.int32), lengths)
  cat = lambda key, dtype: (np.concatenate([np.asarray(r[key], dtype) for r in seqs]) if seqs
                            else np.zeros(0, dtype))
  item_table = table_from_records(items, 'item', item_fields, len(items) + 1, f'{name} items')
  if users is not None:
    user_table = table_from_records(users, 'user', user_fields or {}, len(seqs) + 1,
                                    f'{name} users')
  else:
    user_table = FeatureTable(raw_ids=np.asarray([''] + [_str(r['user_id']) for r in seqs], object))
  ds = RecDataset(name=name, user=user, item=cat('item_index', np.int32),
                  timestamp=cat('timestamp', np.int64), rating=cat('rating', np.float32),
                  items=item_table, users=user_table, has_timestamps=has_timestamps)
  return ds.validate()
