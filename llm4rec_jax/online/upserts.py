"""Keeping an item index in step with an online learner: upserts of the rows whose vectors changed.

:class:`IndexUpserts` remembers the vector it last wrote for every row; given the current vectors of
some rows it upserts only those that differ (new items, and rows learning moved), in one batched
call. An index handed over from elsewhere holds vectors it does not know, so its first upsert of a
row always writes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class IndexUpserts:
  """``index`` (an ``llm4rec_jax.retrieval.ItemIndex``) and the vectors last upserted into it."""

  def __init__(self, index: Any):
    self.index = index
    self._written = np.zeros((0, 0), np.float32)  # [rows, d]: the vector last upserted per row
    self._known = np.zeros(0, bool)  # [rows]: whether a row was upserted through this object
    self.rows_upserted = 0  # rows written since construction

  def upsert(self, rows: Sequence[int] | np.ndarray, vectors: np.ndarray) -> int:
    """Upserts those of ``rows`` whose ``vectors`` [n, d] differ from what was last written (or
    that were never written), in one call; returns how many."""
    rows = np.asarray(rows, np.int64)
    vectors = np.asarray(vectors, np.float32)
    if not len(rows):
      return 0
    self._reserve(int(rows.max()) + 1, vectors.shape[1])
    changed = ~self._known[rows] | np.any(self._written[rows] != vectors, axis=1)
    if not changed.any():
      return 0
    rows, vectors = rows[changed], vectors[changed]
    self.index.upsert(rows, vectors)
    self._written[rows] = vectors
    self._known[rows] = True
    self.rows_upserted += len(rows)
    return len(rows)

  def _reserve(self, rows: int, dim: int) -> None:
    if rows <= len(self._known) and self._written.shape[1] == dim:
      return
    written = np.zeros((max(rows, 2 * len(self._known)), dim), np.float32)
    known = np.zeros(len(written), bool)
    if self._written.shape[1] == dim:
      written[:len(self._written)] = self._written
      known[:len(self._known)] = self._known
    self._written, self._known = written, known
