"""Amazon releases: 2018 Scientific (JSON maps), Reviews 2014 / 2018 and 2023 (JSON lines or CSV).

The interaction files are read by pyarrow (:func:`jsonl.json_columns`, :func:`tables.read_table`);
metadata, a fraction of the size and irregular (2014 writes Python literals), record by record.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from llm4rec_jax.data.dataset import RecDataset, from_raw
from llm4rec_jax.data.readers.jsonl import json_records, review_columns
from llm4rec_jax.data.readers.source import Source
from llm4rec_jax.data.readers.tables import read_table
from llm4rec_jax.data.readers.values import amount, as_text, flat_labels, sorted_ids
from llm4rec_jax.errors import DataError


# Item fields of every Amazon reader (2014, 2018 and 2023 alike, so one model config fits them all).
AMAZON_ITEM_FIELDS = {'text': ['title', 'brand', 'description'], 'categorical': ['categories'],
                      'numeric': ['price']}

AMAZON_REVIEWS_FILE = re.compile(r'^(?:reviews_)?(?P<category>[A-Za-z0-9_&-]+?)(?P<core>_5)?'
                                  r'\.json(?:\.gz)?$')
AMAZON_2023_FILE = re.compile(r'^(?P<category>[A-Za-z0-9_&-]+)\.(?P<ext>csv|jsonl)(?:\.gz)?$')
_PRICE = re.compile(r'^\s*\$?\s*([0-9][0-9,]*(?:\.[0-9]+)?)')


# ------------------------------------------------------------------------------------------------
# Amazon 2018 Scientific (user -> item list JSON + item metadata JSON).


def read_amazon_scientific(path: str | os.PathLike, name: str | None = None, *,
                           dataset_name: str | None = None) -> RecDataset:
  """``{name}.inter.json`` (user -> item list in time order) + ``{name}.item.json`` (item metadata).

  Item features: text ``title``, ``description``, ``brand``; categorical ``categories`` (a
  comma-separated string or a possibly nested list). No timestamps: the list order is the sequence.
  Internal item ids follow the raw ids' numeric order.
  """
  with Source(path) as src:
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
  for iid in sorted_ids(raw_item):
    m = meta.get(iid)
    if m is None:
      features[iid] = {}
      continue
    if not isinstance(m, dict):
      raise DataError(f'item {iid!r}: expected an object', path=item_display)
    features[iid] = dict(title=as_text(m.get('title')), description=as_text(m.get('description')),
                         brand=as_text(m.get('brand')), categories=_categories(m.get('categories')))
  return from_raw(dataset_name or name.lower(), np.asarray(raw_user, object),
                  np.asarray(raw_item, object), None, None,
                  item_features=features, keep_all_items=True,
                  item_fields={'text': ['title', 'description', 'brand'],
                               'categorical': ['categories']})


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


def _pick_member(src: Source, pattern: re.Pattern, category: str | None, what: str,
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


def _meta_member(src: Source, category: str, suffixes: Sequence[str]) -> str | None:
  for suffix in suffixes:
    member = src.find(f'meta_{category}{suffix}')
    if member is not None:
      return member
  return None


def _read_amazon_meta(src: Source, member: str, wanted: set[str], id_field: str, *,
                      literal: bool) -> dict[str, dict[str, Any]]:
  """Metadata of the ``wanted`` items: title, brand (2023: store), description, categories, price."""
  items: dict[str, dict[str, Any]] = {}
  for _, rec in json_records(src, member, (id_field,), literal=literal):
    iid = str(rec[id_field])
    if iid not in wanted or iid in items:  # 2018 metadata repeats some products: first one wins
      continue
    cats = rec.get('categories') if rec.get('categories') is not None else rec.get('category')
    if id_field == 'parent_asin' and rec.get('main_category'):
      cats = [rec['main_category']] + list(cats or [])
    items[iid] = dict(title=as_text(rec.get('title')),
                      brand=as_text(rec.get('brand') or rec.get('store')),
                      description=as_text(rec.get('description')),
                      categories=flat_labels(cats), price=amount(rec.get('price')))
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
  with Source(path) as src:
    member, category = _pick_member(src, AMAZON_REVIEWS_FILE, category, 'Amazon reviews',
                                    prefer=lambda m: bool(m['core']))
    cols, _ = review_columns(src, member, {'reviewerID': 'str', 'asin': 'str', 'overall': 'float',
                                           'unixReviewTime': 'int'})
    user, item, rating, ts = cols.values()
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
  with Source(path) as src:
    member, category = _pick_member(src, AMAZON_2023_FILE, category, 'Amazon 2023 interactions')
    if '.csv' in member:
      user, item, rating, ts_ms = read_table(
          src, member, ',', (('user_id', 'str'), ('parent_asin', 'str'), ('rating', 'float'),
                             ('timestamp', 'int')),
          encoding='utf-8', skip_header=lambda f: f[0].strip() == 'user_id', what='ratings')
    else:
      cols, _ = review_columns(src, member, {'user_id': 'str', 'parent_asin': 'str',
                                             'rating': 'float', 'timestamp': 'int'})
      user, item, rating, ts_ms = cols.values()
    meta = _meta_member(src, category, ('.jsonl.gz', '.jsonl'))
    items = (_read_amazon_meta(src, meta, set(map(str, item)), 'parent_asin', literal=False)
             if meta is not None else None)
  ts = np.asarray(ts_ms, np.int64) // 1000
  return from_raw(dataset_name or f'{category.lower()}-2023', user, item, ts, rating,
                  item_features=items, item_fields=AMAZON_ITEM_FIELDS)

