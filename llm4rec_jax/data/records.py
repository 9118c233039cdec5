"""``config.data.name = 'records:DIR'``: training from a directory written by
``python -m llm4rec_jax.data.prepare`` (sharded ArrayRecord per-user sequences), without any process
holding the whole dataset.

The trainer gets a :class:`RecordsDataset` instead of a ``RecDataset``: counts, the item raw ids of
``items.txt`` and a summary from the manifest. Training windows and evaluation cases are read per
process by :mod:`llm4rec_jax.data.prepare.source`. The split is always leave-one-out (the one the
prepared layout serves); options that need the whole interaction table (item content, debiasing,
retrieval, semantic IDs, cold items, filtering, rankings by raw user id) raise a ``ConfigError``.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from llm4rec_jax.data import paths
from llm4rec_jax.data.dataset import FeatureTable
from llm4rec_jax.data.prepare import seqrecord, source
from llm4rec_jax.errors import ConfigError, DataError

PREFIX = 'records:'


def is_records(name: str) -> bool:
  return str(name).startswith(PREFIX)


class RecordsDataset:
  """What the trainer reads of a prepared directory: sizes, item raw ids, the manifest's summary."""

  def __init__(self, directory: str | os.PathLike):
    self.prepared = source.Prepared(directory)
    self.directory = self.prepared.directory
    self.items = FeatureTable(raw_ids=seqrecord.read_items(self.directory))
    m = self.prepared.manifest
    self.name = f'records:{os.path.basename(os.path.normpath(self.directory))}'
    self.num_users, self.num_items = int(m['num_users']), int(m['num_items'])
    self.num_interactions = int(m['num_interactions'])
    if self.items.num_rows != self.num_items + 1:
      raise DataError(f'items.txt has {self.items.num_rows - 1} items, the manifest '
                      f'{self.num_items}', path=os.path.join(self.directory, seqrecord.ITEMS))

  def summary(self) -> dict[str, Any]:
    lengths = self.prepared.lengths
    return dict(name=self.name, users=self.num_users, items=self.num_items,
                interactions=self.num_interactions,
                density=self.num_interactions / max(1, self.num_users * self.num_items),
                mean_seq_len=float(lengths.mean()) if len(lengths) else 0.0,
                max_seq_len=int(lengths.max(initial=0)), shards=len(self.prepared.shards))


def load(data_cfg: Any) -> RecordsDataset:
  """The prepared directory of ``data_cfg.name``: absolute, relative to the working directory when it
  is there, else under the data root."""
  directory = data_cfg.name[len(PREFIX):]
  if not directory:
    raise ConfigError('data.name', "'records:' needs a directory: records:DIR")
  local = os.path.abspath(os.path.expanduser(directory))
  return RecordsDataset(local if os.path.isdir(local) else paths.resolve(directory))


def check_config(c: Any) -> None:
  """Raises ``ConfigError`` naming the first option that training from records cannot honour."""
  name = c.data.name
  if c.data.split != 'leave_one_out':
    raise ConfigError('data.split', f'{c.data.split!r}: {name} supports leave_one_out only')
  unsupported = {
      'data.min_rating': c.data.min_rating > 0, 'data.k_core': c.data.k_core > 0,
      'data.cold_item_fraction': c.data.get('cold_item_fraction', 0.0) > 0,
      **{f'content.{k}': bool(c.content[k]) for k in ('categorical', 'numeric', 'dense', 'text')},
      'model.item_repr': c.model.get('item_repr', 'id') != 'id',
      'model.head': c.model.get('head', 'softmax') != 'softmax',
      'model.title_tokens': c.model.get('title_tokens', 0) > 0,
      'text_finetune.enabled': c.get('text_finetune', {}).get('enabled', False),
      'retrieval.rag': c.retrieval.rag,
      'debias.method': c.debias.method != 'none',
      'debias.fairness': c.debias.fairness != 'none',
      'debias.adjust_strength': bool(c.debias.adjust_strength),
      'eval.save_rankings': c.eval.save_rankings,
  }
  for field, bad in unsupported.items():
    if bad:
      raise ConfigError(field, f'not supported when training from {name} (prepared records hold '
                        'only the interaction sequences; filter when preparing)')


def auto_max_targets(lengths: np.ndarray, max_len: int, batch_size: int, *,
                     all_windows: bool) -> int:
  """``trainer.auto_max_targets`` over every window of the prepared data, from the lengths alone.

  A user's windows (``pipeline.make_windows`` on the training part ``t``) have ``max_len`` targets
  each but the oldest, which has ``min(end, max_len + 1) - 1``; the same on every process.
  """
  t = source.train_lengths(lengths)
  c = source.window_counts(lengths, max_len, all_windows=all_windows)
  last_end = t - np.maximum(c - 1, 0) * max_len
  last = np.where(c > 0, np.minimum(last_end, max_len + 1) - 1, 0).astype(np.float64)
  full = np.maximum(c - 1, 0).astype(np.float64)
  n = float(c.sum())
  if n == 0:
    return 0
  mean = (full.sum() * max_len + last.sum()) / n
  var = max((full.sum() * max_len ** 2 + (last ** 2).sum()) / n - mean ** 2, 0.0)
  budget = mean * batch_size + 6.0 * math.sqrt(var) * math.sqrt(batch_size) + 64
  budget = int(math.ceil(budget / 128) * 128)
  return min(budget, batch_size * max_len)
