"""S3-Rec sequence files (Beauty, Yelp, LastFM as preprocessed for S3-Rec, CIKM 2020)."""

from __future__ import annotations

import itertools
import os
import pathlib
import re
from typing import Any

import numpy as np

from llm4rec_jax.data.dataset import RecDataset, from_raw
from llm4rec_jax.data.readers.source import Source, text_lines
from llm4rec_jax.data.readers.tables import int_field, not_int
from llm4rec_jax.data.readers.values import sorted_ids
from llm4rec_jax.errors import DataError

_INT_LINE = re.compile(r'\s*\d+(?:\s+\d+)*\s*')


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
  with Source(p) as src:
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
  for iid in sorted_ids(raw_item):
    feat: dict[str, Any] = {'attributes': [labels.get(a, a) for a in attributes.get(iid, ())]}
    for field, values in extras.items():
      feat[field] = values.get(iid, '')
    features[iid] = feat
  return from_raw(dataset_name or name.lower(), np.asarray(raw_user, object),
                  np.asarray(raw_item, object), None, None,
                  item_features=features, keep_all_items=True,
                  item_fields={'text': sorted(extras), 'categorical': ['attributes']})


def _detect_s3rec_name(src: Source) -> str:
  names = src.basenames()
  suffix = '_item2attributes.json'
  found = sorted({b[:-len(suffix)] for b in names if b.endswith(suffix)} & {
      b[:-4] for b in names if b.endswith('.txt')})
  if len(found) != 1:
    raise DataError(
        f'expected exactly one {{Name}}.txt with a matching {{Name}}{suffix} in {src.where()}, '
        f'found {found or "none"}; pass name=', path=str(src.path))
  return found[0]


def _read_s3rec_sequences(src: Source, member: str) -> tuple[list[str], list[str]]:
  display = src.display(member)
  raw_user: list[str] = []
  raw_item: list[str] = []
  for n, line in text_lines(src, member, 'utf-8'):
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


def _read_item2attributes(src: Source, member: str) -> dict[str, list[str]]:
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


def _read_attribute_names(src: Source) -> dict[str, str]:
  """Attribute id -> category name; names shared by several ids get the id appended."""
  member = src.find('attribute_id_to_category.tsv')
  if member is None:
    return {}
  names = _read_two_column_tsv(src, member, 'attribute id', 'category', min_fields=2)
  counts: dict[str, int] = {}
  for v in names.values():
    counts[v] = counts.get(v, 0) + 1
  return {k: (v if counts[v] == 1 else f'{v} [{k}]') for k, v in names.items()}


def _read_two_column_tsv(src: Source, member: str, key: str, value: str,
                         min_fields: int = 2) -> dict[str, str]:
  """First two columns of a tab-separated file with an optional header; the key is an integer."""
  display = src.display(member)
  out: dict[str, str] = {}
  first = True
  for n, line in text_lines(src, member, 'utf-8'):
    f = line.split('\t')
    if first:
      first = False
      if not_int(f):
        continue
    if len(f) < min_fields:
      raise DataError(f'expected {min_fields} tab-separated fields ({key}, {value}), got {len(f)}',
                      path=display, line=n)
    out[str(int_field(f[0], display, n, key))] = f[1].strip()
  return out


def _read_business_names(src: Source, member: str) -> dict[str, dict[str, str]]:
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

