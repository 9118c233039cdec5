"""Scoring with an online learner's current parameters: prequential ranks and recommendations.

Functions of an :class:`~llm4rec_jax.online.learner.OnlineLearner` (its methods call them): they read
its parameters, catalog and histories, and run its ranking program in static-shape chunks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from llm4rec_jax import partitioning
from llm4rec_jax.data.events import Event
from llm4rec_jax.errors import DataError
from llm4rec_jax.online.programs import bucket

if TYPE_CHECKING:
  from llm4rec_jax.online.learner import OnlineLearner


def query_rows(learner: OnlineLearner, n: int) -> int:
  """Rows of a scoring batch for ``n`` queries: a small batch (8 rows, rounded to the batch
  sharding) when they fit, e.g. serving one user or imprinting a few new items, else
  ``online.batch_size``; two shapes, both compiled by ``warm_up``."""
  return learner.small_rows if n <= learner.small_rows else learner.oc.batch_size


def score(learner: OnlineLearner, rows: list[tuple[list[int], int]]
          ) -> tuple[np.ndarray, np.ndarray]:
  """(ranks [n], top items [n, k]) of (history, target row) pairs, in static-shape chunks."""
  b, width = learner.oc.batch_size, learner.width
  ranks, tops = [], []
  for s in range(0, len(rows), b):
    chunk = rows[s:s + b]
    # The seen-item width only ever grows (a bucket), so ranking rarely changes shape.
    seen_width = learner.seen_width = max(learner.seen_width,
                                          bucket(max(len(h) for h, _ in chunk)))
    n = query_rows(learner, len(chunk))
    inputs = np.zeros((n, width - 1), np.int32)
    seen = np.zeros((n, seen_width), np.int32)
    targets = np.zeros(n, np.int32)
    for i, (h, item) in enumerate(chunk):
      tail = h[-(width - 1):]
      if tail:
        inputs[i, -len(tail):] = tail
        seen[i, :len(h)] = h
      targets[i] = item
    batch = learner.put_batch({'inputs': inputs, 'seen': seen, 'targets': targets})
    r, top = learner.programs.rank(learner.state['params'], batch, learner.content,
                                   learner.catalog_mask)
    r = partitioning.fetch(r)[:len(chunk)].astype(np.int64)
    r[targets[:len(chunk)] == 0] = max(learner.catalog.num_items, 1)  # unknown item: a miss
    ranks.append(r)
    tops.append(partitioning.fetch(top)[:len(chunk)])
  return np.concatenate(ranks), np.concatenate(tops)


def recommend(learner: OnlineLearner, user: str, top_k: int) -> list[str]:
  """Raw ids of the top ``top_k`` items after ``user``'s current history."""
  ks = learner.config.eval.ks
  if not 0 < top_k <= max(ks):
    raise DataError(f'top_k must be in 1..{max(ks)}, got {top_k}', field='top_k')
  top = score(learner, [(learner.histories.get(str(user), []), 0)])[1][0]
  return [learner.catalog.raw_ids[int(i)] for i in top[:top_k]]


def rank(learner: OnlineLearner, events: Sequence[Event]) -> np.ndarray:
  """Prequential ranks (0 = top) of each interaction's item given the user's history before it
  (the earlier interactions of ``events`` included); an unknown item counts as a miss."""
  inter = [e for e in events if e.is_interaction]
  if not inter:
    return np.zeros(0, np.int64)
  extra: dict[str, list[int]] = {}
  rows = []
  for e in inter:
    h = learner.histories.get(e.user, []) + extra.get(e.user, [])
    item = learner.catalog.get(e.item)
    rows.append((h, item))
    if item:
      extra.setdefault(e.user, []).append(item)
  return score(learner, rows)[0]
