"""The Yelp Open Dataset (JSON lines as in ``yelp_dataset.tar``), not the S3-Rec subset."""

from __future__ import annotations

import os

import numpy as np

from llm4rec_jax.data.dataset import RecDataset, from_raw
from llm4rec_jax.data.readers.jsonl import json_records, review_columns
from llm4rec_jax.data.readers.source import Source
from llm4rec_jax.data.readers.values import amount, as_text, flat_labels
from llm4rec_jax.errors import DataError

YELP_ITEM_FIELDS = {'text': ['title', 'address'], 'categorical': ['categories', 'city', 'state'],
                    'numeric': ['stars', 'review_count']}


def read_yelp_open(path: str | os.PathLike, *, dataset_name: str | None = None) -> RecDataset:
  """The Yelp Open Dataset (JSON lines as in ``yelp_dataset.tar``), not the S3-Rec subset.

  ``yelp_academic_dataset_review.json`` (``user_id``, ``business_id``, ``stars``, ``date`` as
  ``YYYY-MM-DD HH:MM:SS``) and ``yelp_academic_dataset_business.json`` (optional; ``name``,
  ``address``, ``city``, ``state``, ``categories`` as ``'A, B'``, ``stars``, ``review_count``).
  Item features (:data:`YELP_ITEM_FIELDS`): text ``title`` (the name), ``address``; categorical
  ``categories``, ``city``, ``state``; numeric ``stars``, ``review_count``.
  """
  with Source(path) as src:
    member = src.require('yelp_academic_dataset_review.json')
    fields = {'user_id': 'str', 'business_id': 'str', 'stars': 'float', 'date': 'str'}
    cols, line_of = review_columns(src, member, fields)
    try:
      ts = np.asarray(cols['date'], 'datetime64[s]').astype(np.int64)
    except ValueError:
      if line_of is None:  # read again record by record, for the line numbers
        cols, line_of = review_columns(src, member, fields, careful=True)
      dates = cols['date']
      bad = next(k for k, d in enumerate(dates) if not _is_datetime(d))
      raise DataError(f'expected a date like 2018-07-07 22:09:11, got {dates[bad]!r:.40}',
                      path=src.display(member), line=int(line_of[bad]), field='date') from None
    user, item, rating = cols['user_id'], cols['business_id'], cols['stars']
    items = None
    member = src.find('yelp_academic_dataset_business.json')
    if member is not None:
      wanted = set(item)
      items = {}
      for _, rec in json_records(src, member, ('business_id',)):
        bid = str(rec['business_id'])
        if bid in wanted:
          cats = rec.get('categories')
          items[bid] = dict(title=as_text(rec.get('name')), address=as_text(rec.get('address')),
                            categories=[c.strip() for c in cats.split(',') if c.strip()]
                            if isinstance(cats, str) else flat_labels(cats),
                            city=flat_labels(rec.get('city')), state=flat_labels(rec.get('state')),
                            stars=amount(rec.get('stars')), review_count=amount(rec.get('review_count')))
  return from_raw(dataset_name or 'yelp-open', user, item, ts, rating, item_features=items,
                  item_fields=YELP_ITEM_FIELDS)


def _is_datetime(text: str) -> bool:
  try:
    np.datetime64(text, 's')
    return True
  except ValueError:
    return False

