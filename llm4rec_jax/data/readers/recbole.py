"""RecBole atomic files with dense item features (the UniSRec / VQ-Rec release layout)."""

from __future__ import annotations

import itertools
import os
import pathlib
import re
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from llm4rec_jax.data.dataset import RecDataset, from_raw
from llm4rec_jax.data.readers.source import Source, text_lines
from llm4rec_jax.data.readers.tables import int_field, not_int
from llm4rec_jax.data.readers.values import is_int, sorted_ids
from llm4rec_jax.errors import DataError


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
  with Source(p) as src:
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
  for key in (sorted(rows) if user_ids is not None else sorted_ids(list(rows))):
    seq = _recbole_sequence(key, rows[key], lmax, displays)
    raw_user.extend(itertools.repeat(user_ids[key] if user_ids is not None else key, len(seq)))
    raw_item.extend(item_ids[k] for k in seq)
  features = {iid: {f: values[k] for f, values in text.items()} for k, iid in enumerate(item_ids)}
  ds = from_raw(dataset_name or name.lower(), np.asarray(raw_user, object),
                np.asarray(raw_item, object), None, None,
                item_features=features, keep_all_items=True, item_fields={'text': list(text)})
  ds.items.dense.update(dense)
  return ds


def _detect_recbole_name(src: Source) -> str:
  found = sorted(b[:-len('.item2index')] for b in src.basenames() if b.endswith('.item2index'))
  if len(found) != 1:
    raise DataError(f'expected exactly one {{Name}}.item2index in {src.where()}, '
                    f'found {found or "none"}; pass name=', path=str(src.path))
  return found[0]


def _read_index_map(src: Source, member: str, what: str) -> list[str]:
  """``raw id<TAB>index`` lines (an optional header) -> raw ids in index order (indices 0..N-1)."""
  display = src.display(member)
  by_index: dict[int, str] = {}
  seen: dict[str, int] = {}
  first = True
  for n, line in text_lines(src, member, 'utf-8'):
    f = line.split('\t')
    if first:
      first = False
      if len(f) == 2 and not_int(f[1:]):
        continue
    if len(f) != 2:
      raise DataError(f'expected 2 tab-separated fields ({what} id, index), got {len(f)}',
                      path=display, line=n)
    raw, k = f[0].strip(), int_field(f[1], display, n, 'index')
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


def _read_recbole_inter(src: Source, member: str, file_index: int, num_items: int,
                        user_ids: list[str] | None, rows: dict[Any, list[_SeqRow]]) -> None:
  """Appends the file's rows to ``rows[user]`` (user = index when ``user_ids`` is given)."""
  display = src.display(member)
  cols = {'user_id': 0, 'item_id_list': 1, 'item_id': 2}
  ncols = 3
  count = 0
  first = True
  for n, line in text_lines(src, member, 'utf-8'):
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
      user = int_field(user, display, n, 'user_id')
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
    bad = next(t for t in text.split() if not is_int(t))
    raise DataError(f'expected item indices, got {bad[:40]!r}', path=display, line=line,
                    field=field) from None
  if values and (min(values) < 0 or max(values) >= num_items):
    bad_index = next(v for v in values if not 0 <= v < num_items)
    raise DataError(f'item index {bad_index} is not in the item2index map (0..{num_items - 1})',
                    path=display, line=line, field=field)
  return values



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


def _read_recbole_text(src: Source, member: str, item_ids: list[str]) -> dict[str, list[str]]:
  """Text fields of a ``{name}.text`` file -> field -> text per item index ('' where missing)."""
  display = src.display(member)
  index = {iid: k for k, iid in enumerate(item_ids)}
  fields = ['text']
  out: dict[str, list[str]] | None = None
  seen: dict[int, int] = {}
  for n, line in text_lines(src, member, 'utf-8'):
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


def _read_dense_matrix(src: Source, member: str, item_ids: list[str], dim: int | None,
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
