"""Interaction event logs as JSON lines: one record per line, the format training and streaming share.

A record is ``{"user": ID, "item": ID, "timestamp": SECONDS, "rating": R, "features": {...}}``: ids
are strings or integers (kept as strings), ``timestamp`` (seconds since the epoch) and ``rating`` are
optional, ``features`` (optional) describes the item (``{"title": ..., "genres": [...], "year": ...}``,
the field names of the item table). A record without ``user`` only registers or updates the item.

``read_events_dataset`` turns such a file into a :class:`RecDataset` (registered as the ``events``
format, ``config.data.name='events:/path/log.jsonl'``), so a model can be trained on the first part
of a log and adapted online on the rest (:mod:`llm4rec_jax.online`). Bad records raise
:class:`DataError` naming the file, the 1-based line and the field.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import math
import os
import pathlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from llm4rec_jax.data.dataset import RecDataset, from_raw
from llm4rec_jax.errors import DataError

_KEYS = ('user', 'item', 'timestamp', 'rating', 'features')


@dataclasses.dataclass(frozen=True)
class Event:
  """One interaction (``user`` set) or item registration (``user`` None); ids are raw strings."""
  item: str
  user: str | None = None
  timestamp: float | None = None
  rating: float | None = None
  features: Mapping[str, Any] | None = None
  line: int = 0  # 1-based line of the source (0: not from a file)

  @property
  def is_interaction(self) -> bool:
    return self.user is not None


def _id(value: Any, field: str, path: str, line: int) -> str:
  if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip() == '':
    raise DataError(f'must be a non-empty string or integer id, got {value!r}', path=path,
                    line=line, field=field)
  return str(value).strip()


def _number(value: Any, field: str, path: str, line: int) -> float | None:
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise DataError(f'must be a finite number, got {value!r}', path=path, line=line, field=field)
  return float(value)


def parse_event(record: Any, *, path: str = '<events>', line: int = 0) -> Event:
  """A decoded JSON object (or an :class:`Event`) -> Event; raises DataError on a bad record."""
  if isinstance(record, Event):
    return record
  if not isinstance(record, Mapping):
    raise DataError(f'an event must be a JSON object, got {type(record).__name__}', path=path,
                    line=line)
  unknown = sorted(set(record) - set(_KEYS))
  if unknown:
    raise DataError(f'unknown key(s) {unknown}; an event has {list(_KEYS)}', path=path, line=line,
                    field=unknown[0])
  if 'item' not in record:
    raise DataError('missing item id', path=path, line=line, field='item')
  features = record.get('features')
  if features is not None and not isinstance(features, Mapping):
    raise DataError(f'must be an object of item fields, got {features!r}', path=path, line=line,
                    field='features')
  user = record.get('user')
  return Event(item=_id(record['item'], 'item', path, line),
               user=None if user is None else _id(user, 'user', path, line),
               timestamp=_number(record.get('timestamp'), 'timestamp', path, line),
               rating=_number(record.get('rating'), 'rating', path, line),
               features=dict(features) if features is not None else None, line=line)


def iter_jsonl(source: str | os.PathLike | io.TextIOBase, *, name: str | None = None,
               on_error: Callable[[DataError], None] | None = None) -> Iterator[Event]:
  """Events of a JSON-lines file (``.gz`` is decompressed) or an open text stream, in order.

  Blank lines are skipped; every error names ``path:line``. With ``on_error``, a bad line (not
  JSON, not a valid event) is passed to it as a DataError and skipped instead of raised.
  """
  if isinstance(source, (str, os.PathLike)):
    path = pathlib.Path(source)
    if not path.is_file():
      raise DataError('events file not found', path=str(path))
    opener = gzip.open if path.suffix == '.gz' else open
    with opener(path, 'rt', encoding='utf-8') as f:
      yield from iter_jsonl(f, name=str(path), on_error=on_error)
    return
  display = name or getattr(source, 'name', '<stream>')

  def parse_line(text: str, n: int) -> Event | None:
    if not text.strip():
      return None
    try:
      record = json.loads(text)
    except json.JSONDecodeError as e:
      raise DataError(f'not valid JSON: {e.msg} (column {e.colno})', path=display, line=n) from e
    return parse_event(record, path=display, line=n)
  yield from parse_each(source, parse_line, on_error)


def parse_each(records: Iterable[Any], parse: Callable[[Any, int], Event | None],
               on_error: Callable[[DataError], None] | None = None) -> Iterator[Event]:
  """``parse(record, n)`` of each of ``records`` (``n`` counts from 1), in order; a None result is
  left out (a blank line). A record whose parse raises a DataError stops the stream with it, or,
  with ``on_error``, is handed to it and skipped."""
  for n, record in enumerate(records, start=1):
    try:
      event = parse(record, n)
    except DataError as e:
      if on_error is None:
        raise
      on_error(e)
      continue
    if event is not None:
      yield event


def read_events_dataset(path: str | os.PathLike, *, dataset_name: str | None = None
                        ) -> RecDataset:
  """A JSON-lines event log as a dataset (item features from the records' ``features``).

  Every interaction needs a timestamp, or none may have one (then the file order is the time order).
  Feature fields become text (strings), categorical (lists of strings) or numeric (numbers) item
  fields, decided by the first value seen.
  """
  path = pathlib.Path(path)
  users, items, times, ratings = [], [], [], []
  features: dict[str, dict[str, Any]] = {}
  kinds: dict[str, str] = {}
  for e in iter_jsonl(path):
    if e.features:
      for k, v in e.features.items():
        kind = ('categorical' if isinstance(v, list) else 'numeric'
                if isinstance(v, (int, float)) and not isinstance(v, bool) else 'text')
        if kinds.setdefault(k, kind) != kind:
          raise DataError(f'is {kind} here but {kinds[k]} on an earlier line', path=str(path),
                          line=e.line, field=f'features.{k}')
      features.setdefault(e.item, {}).update(e.features)
    if not e.is_interaction:
      continue
    if times and (times[-1] is None) != (e.timestamp is None):
      raise DataError('either every interaction has a timestamp or none has', path=str(path),
                      line=e.line, field='timestamp')
    users.append(e.user), items.append(e.item), times.append(e.timestamp)
    ratings.append(np.nan if e.rating is None else e.rating)
  if not users:
    raise DataError('no interactions (records with a user)', path=str(path))
  fields = {kind: sorted(k for k, v in kinds.items() if v == kind)
            for kind in ('text', 'categorical', 'numeric')}
  has_time = times[0] is not None
  return from_raw(dataset_name or path.name.split('.')[0], users, items,
                  [int(t) for t in times] if has_time else None, ratings,
                  item_features=features or None, item_fields=fields)


def write_jsonl(path: str | os.PathLike, records: list[dict[str, Any]]) -> None:
  """Writes event records (dicts with the keys of an event) one per line."""
  with open(path, 'w', encoding='utf-8') as f:
    for r in records:
      f.write(json.dumps(r) + '\n')
