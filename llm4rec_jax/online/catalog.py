"""The growing item catalog: raw id <-> embedding row, reserved capacity, content rows of new items.

Rows ``1..num_items`` are real items, ``0`` is padding and rows past ``num_items`` up to the padded
vocabulary are free capacity (training pads the vocabulary to a multiple of ``128 x`` the catalog
shards; set ``model.vocab_size`` at training time to reserve more). A registered item takes the next
free row; when none is left the learner grows every catalog-sharded array (see
:func:`pad_rows`) and re-shards it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from llm4rec_jax.content import text_cache
from llm4rec_jax.data import content as content_lib
from llm4rec_jax.data.content import ContentSpec, ItemContent
from llm4rec_jax.data.dataset import FeatureTable
from llm4rec_jax.errors import DataError


class ItemCatalog:
  """Raw item ids by row (``raw_ids[0] == ''``) and the rows still free up to ``vocab_size``."""

  def __init__(self, raw_ids: Sequence[str], vocab_size: int, num_trained: int | None = None):
    self.raw_ids = [str(r) for r in raw_ids]
    self.index = {r: i for i, r in enumerate(self.raw_ids) if i}
    self.vocab_size = vocab_size
    # Items of the full-training catalog (the rest were registered online).
    self.num_trained = len(self.raw_ids) - 1 if num_trained is None else num_trained

  @property
  def num_items(self) -> int:
    return len(self.raw_ids) - 1

  @property
  def free_rows(self) -> int:
    return self.vocab_size - 1 - self.num_items

  def get(self, raw: str) -> int:
    """The row of ``raw``, 0 if unknown."""
    return self.index.get(str(raw), 0)

  def register(self, raw: str) -> int:
    """The row of ``raw``, taking the next free row for a new item (caller ensures capacity)."""
    raw = str(raw)
    if raw in self.index:
      return self.index[raw]
    if self.free_rows <= 0:
      raise RuntimeError('no free catalog row: grow the vocabulary first')
    self.raw_ids.append(raw)
    self.index[raw] = len(self.raw_ids) - 1
    return self.index[raw]

  def mask(self) -> np.ndarray:
    """bool [vocab_size]: rows of registered items."""
    m = np.zeros(self.vocab_size, bool)
    m[1:self.num_items + 1] = True
    return m


GROW_MODES = ('linear', 'pow2')


def grown_vocab(needed_rows: int, current: int, grow_by: int, multiple: int,
                mode: str = 'linear') -> int:
  """The next vocabulary size, rounded up to ``multiple`` (so the catalog axis still divides the
  mesh): ``'linear'``: at least ``needed_rows`` and ``current + grow_by``; ``'pow2'``: the smallest
  power of two >= ``needed_rows`` and > ``current`` (few distinct sizes, each compiled once)."""
  if mode == 'pow2':
    least = max(int(needed_rows), int(current) + 1, 1)
    target = 1 << (least - 1).bit_length()
  elif mode == 'linear':
    target = max(needed_rows, current + max(grow_by, 1))
  else:
    raise ValueError(f'grow mode {mode!r} is not one of {GROW_MODES}')
  return -(-target // multiple) * multiple


def pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  """``x`` with zero rows appended up to ``rows``."""
  out = np.zeros((rows,) + tuple(x.shape[1:]), x.dtype)
  out[:len(x)] = x
  return out


def pad_content(content: ItemContent, rows: int) -> ItemContent:
  """Every per-item array of ``content`` padded with zero rows up to ``rows`` (items without
  content); the title table, whose rows are text tokens rather than items, is kept as it is."""
  padded = jax.tree.map(lambda x: pad_rows(np.asarray(x), rows),
                        dataclasses.replace(content, title_table=None))
  return dataclasses.replace(padded, title_table=content.title_table)


class ContentRows:
  """Content arrays for new items from their raw features, normalised like the training catalog.

  Categorical values map through the training vocabulary (unseen labels are dropped: the model has
  no embedding for them), numeric and dense fields use the training table's mean and deviation,
  text is encoded with the same sentence encoder (cached).
  """

  def __init__(self, table: FeatureTable, spec: ContentSpec, content_cfg: Any):
    self.table, self.spec, self.cfg = table, spec, content_cfg
    self.cat_index = {f: {label: i for i, label in enumerate(table.categorical[f].vocab) if i}
                      for f, _, _ in spec.categorical}
    self.num_stats = {f: _stats(table.numeric[f].astype(np.float64)) for f in spec.numeric}
    self.dense_stats = {}
    for f, _ in spec.dense:
      m = table.dense[f].astype(np.float32)
      present = np.isfinite(m).all(axis=1)
      present[0] = False
      self.dense_stats[f] = (m[present].mean(0), m[present].std(0) + 1e-6)

  def fill(self, content: ItemContent, rows: Sequence[int],
           features: Sequence[Mapping[str, Any] | None]) -> ItemContent:
    """Writes the content of ``rows`` (host arrays, in place where possible) and returns it."""
    c = content
    cats = [np.array(a) for a in c.categorical]
    for j, (f, _, width) in enumerate(self.spec.categorical):
      for r, feats in zip(rows, features):
        vals = (feats or {}).get(f) or []
        vals = [vals] if isinstance(vals, str) else list(vals)
        ids = [self.cat_index[f][str(v)] for v in vals if str(v) in self.cat_index[f]]
        if len(ids) < len(vals):
          logging.info('item row %d: %d %s value(s) unseen in training dropped', r,
                       len(vals) - len(ids), f)
        cats[j][r] = 0
        cats[j][r, :min(width, len(ids))] = ids[:width]
    numeric = None if c.numeric is None else np.array(c.numeric)
    numeric_mask = None if c.numeric_mask is None else np.array(c.numeric_mask)
    for j, f in enumerate(self.spec.numeric):
      mu, sd = self.num_stats[f]
      for r, feats in zip(rows, features):
        v = (feats or {}).get(f)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
        numeric[r, j] = (float(v) - mu) / sd if ok else 0.0
        numeric_mask[r, j] = ok
    dense = [np.array(a) for a in c.dense]
    dense_mask = [np.array(a) for a in c.dense_mask]
    for j, (f, dim) in enumerate(self.spec.dense):
      mu, sd = self.dense_stats[f]
      for r, feats in zip(rows, features):
        v = (feats or {}).get(f)
        ok = v is not None and np.shape(v) == (dim,) and np.isfinite(np.asarray(v, float)).all()
        if v is not None and not ok:
          raise DataError(f'must be {dim} finite numbers', field=f'features.{f}')
        dense[j][r] = (np.asarray(v, np.float32) - mu) / sd if ok else 0.0
        dense_mask[j][r] = ok
    text, text_mask = c.text, c.text_mask
    if self.spec.text_dim:
      text, text_mask = np.array(c.text), np.array(c.text_mask)
      emb, has = self._encode_text(features)
      for k, r in enumerate(rows):
        text[r], text_mask[r] = (emb[k] if has[k] else 0.0), has[k]
    id_known = None if c.id_known is None else np.array(c.id_known)
    if id_known is not None:
      # A new item's id row starts at zero, so on input and output it is its content (+ 0) until
      # the id row has learned a residual; it is a real softmax candidate from now on.
      id_known[list(rows)] = True
    # Other fields (title tokens: a new item enters with none) are carried over.
    return dataclasses.replace(c, categorical=tuple(cats), numeric=numeric,
                               numeric_mask=numeric_mask, dense=tuple(dense),
                               dense_mask=tuple(dense_mask), text=text, text_mask=text_mask,
                               id_known=id_known)

  def _encode_text(self, features: Sequence[Mapping[str, Any] | None]):
    fields = content_lib._select(list(self.table.text), self.cfg.text, 'content.text')  # pylint: disable=protected-access
    new = FeatureTable(raw_ids=np.asarray([''] + [str(i) for i in range(len(features))], object),
                       text={f: [''] + [str((x or {}).get(f) or '') for x in features]
                             for f in fields})
    emb, has = text_cache.table_text_embeddings(
        new, fields=fields, model_dir=self.cfg.text_model or None,
        cache_dir=content_lib.cache_dir(self.cfg), max_length=self.cfg.text_max_length,
        batch_size=self.cfg.text_batch_size)
    return emb[1:], has[1:]


def _stats(v: np.ndarray) -> tuple[float, float]:
  present = np.isfinite(v)
  present[0] = False
  if not present.any():
    return 0.0, 1.0
  sd = v[present].std()
  return float(v[present].mean()), float(sd if sd > 0 else 1.0)
