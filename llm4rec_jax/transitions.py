"""A first-order transition prior from the training sequences, blended into the decoder's scores.

docs/val_test_gap.md found that on Beauty the decoder draws less from the newest history item than
a Markov chain over training transitions does, and that adding ``w * log1p(count(last -> item))``
to the decoder's scores gains on validation and test alike. This module is that prior as a part of
evaluation: a padded successor table (for each item, its most frequent next items in the training
sequences and ``log1p`` of their counts) that a jitted rank function scatters into a [batch, vocab]
bias for each case's newest item. The weight is chosen on validation (``eval.transition_weights``,
see ``train/trainer.py``); 0 turns it off.

Only training sequences are counted, so neither a validation nor a test target enters the table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath


@dataclasses.dataclass(frozen=True)
class SuccessorTable:
  """ids int32 [vocab, K] (0 = none) and weights float32 [vocab, K]: item a's successors."""
  ids: np.ndarray
  weights: np.ndarray

  @property
  def max_successors(self) -> int:
    return self.ids.shape[1]


def successor_table(train: Sequence[np.ndarray], vocab_size: int,
                    max_successors: int = 64) -> SuccessorTable:
  """Counts consecutive (a, b) pairs of every training sequence; keeps each item's
  ``max_successors`` most frequent successors (ties by id) with weight ``log1p(count)``."""
  src = [np.asarray(s[:-1], np.int64) for s in train if len(s) > 1]
  dst = [np.asarray(s[1:], np.int64) for s in train if len(s) > 1]
  width = 1
  ids = np.zeros((vocab_size, 1), np.int32)
  weights = np.zeros((vocab_size, 1), np.float32)
  if not src:
    return SuccessorTable(ids, weights)
  pairs = np.concatenate(src) * vocab_size + np.concatenate(dst)
  keys, counts = np.unique(pairs, return_counts=True)  # sorted by (a, b)
  a, b = keys // vocab_size, keys % vocab_size
  # Within each a: most frequent first, then by id (stable sort on -count after sorting by a).
  order = np.lexsort((b, -counts, a))
  a, b, counts = a[order], b[order], counts[order]
  starts = np.searchsorted(a, np.arange(vocab_size))
  rank = np.arange(len(a)) - starts[a]
  keep = rank < max_successors
  width = max(1, int(min(max_successors, rank.max() + 1)))
  ids = np.zeros((vocab_size, width), np.int32)
  weights = np.zeros((vocab_size, width), np.float32)
  ids[a[keep], rank[keep]] = b[keep]
  weights[a[keep], rank[keep]] = np.log1p(counts[keep])
  return SuccessorTable(ids, weights)


def prior(ids: jax.Array, weights: jax.Array, last: jax.Array, vocab_size: int) -> jax.Array:
  """[batch, vocab] bias: row r holds the successors of item ``last[r]`` (0 = empty history)."""
  rows = jnp.arange(last.shape[0])[:, None]
  out = jnp.zeros((last.shape[0], vocab_size), jnp.float32)
  w = jnp.where((last > 0)[:, None], weights[last], 0.0)
  return out.at[rows, ids[last]].add(w)


# The blend chosen on validation, saved beside the checkpoints so that serving applies it too. Read
# and written through ``llm4rec_jax.workdir`` (``read_transitions``/``write_transitions``, and
# ``workdir.TRANSITIONS`` is this name); the file format lives here, which imports no training module.
FILENAME = 'transitions.npz'


def save(workdir, table: SuccessorTable, weight: float) -> None:
  """Writes ``WORKDIR/transitions.npz`` (local or any ``etils.epath`` path): the successor table
  and the weight chosen on validation."""
  with (epath.Path(workdir) / FILENAME).open('wb') as f:
    np.savez(f, ids=table.ids, weights=table.weights, weight=np.float64(weight))


def load(workdir) -> tuple[SuccessorTable, float] | None:
  """(table, chosen weight) from ``WORKDIR/transitions.npz``, or None when the run chose no blend."""
  path = epath.Path(workdir) / FILENAME
  if not path.exists():
    return None
  with path.open('rb') as f, np.load(f) as z:
    return SuccessorTable(z['ids'], z['weights']), float(z['weight'])


def bias_row(table: SuccessorTable, last: int, vocab_size: int) -> np.ndarray:
  """float32 [vocab_size]: :func:`prior` for one history's newest item, on the host. Items beyond
  the table (registered after training) have no successors."""
  row = np.zeros(vocab_size, np.float32)
  if 0 < last < len(table.ids):
    keep = table.ids[last] < vocab_size
    np.add.at(row, table.ids[last][keep], table.weights[last][keep])
  return row
