"""Coat shopping (Schnabel et al., ICML 2016): dense rating matrices and one-hot features."""

from __future__ import annotations

import os

import numpy as np

from llm4rec_jax.data.dataset import RecDataset, from_raw
from llm4rec_jax.data.readers.source import Source, text_lines
from llm4rec_jax.errors import DataError


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
  with Source(path) as src:
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
  ds = from_raw(dataset_name, u.astype(np.int64) + 1, i.astype(np.int64) + 1, None,  # 1-based ids
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


def _read_coat_matrix(src: Source, member: str, kind: type) -> np.ndarray:
  display = src.display(member)
  rows, width = [], None
  for n, line in text_lines(src, member, 'ascii'):
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


def _read_coat_features(src: Source, what: str, rows: int) -> dict[str, dict[str, list[str]]] | None:
  """``{what}_features.ascii`` one-hot columns named 'field:value' by ``{what}_features_map.txt``."""
  member, map_member = src.find(f'{what}_features.ascii'), src.find(f'{what}_features_map.txt')
  if member is None or map_member is None:
    return None
  names = [line.strip() for _, line in text_lines(src, map_member, 'utf-8')]
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

