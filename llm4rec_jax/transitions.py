"""A transition prior from the training sequences, blended into the decoder's scores.

docs/val_test_gap.md found that on Beauty the decoder draws less from the newest history item than
a Markov chain over training transitions does, and that adding ``w * log1p(count(last -> item))``
to the decoder's scores gains on validation and test alike. This module is that prior as a part of
evaluation: a padded successor table (for each item, its most frequent followers in the training
sequences and ``log1p`` of their counts) that a jitted rank function scatters into a [batch, vocab]
bias for each case's newest items. The weight is chosen on validation (``eval.transition_weights``,
see ``train/trainer.py``); 0 turns it off.

Two settings widen the first-order prior (both 1 = the first-order prior):

* ``window`` (``eval.transition_window``): item b counts as a follower of a when it comes 1 to
  ``window`` steps after a in a training sequence, weighted ``1 / distance``;
* ``history`` (``eval.transition_history``): the rows of the ``history`` newest history items are
  summed, the j-th newest (j = 0 the newest) weighted ``decay ** j`` (``eval.transition_decay``).

The caller chooses the sequences counted: the training sequences (neither a validation nor a test
target enters the table), or under ``eval.transition_counts='known'`` everything known when a split
is ranked (``llm4rec_jax.data.splits.known_sequences``: at test the validation targets too, never a
test target).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath


@dataclasses.dataclass(frozen=True)
class SuccessorTable:
  """ids int32 [vocab, K] (0 = none) and weights float32 [vocab, K]: item a's followers; the
  prior sums the rows of the ``history`` newest items, the j-th newest weighted ``decay ** j``."""
  ids: np.ndarray
  weights: np.ndarray
  window: int = 1
  history: int = 1
  decay: float = 1.0

  def scales(self) -> np.ndarray:
    """float32 [history]: the weight of each of the newest items' rows, oldest first."""
    return (self.decay ** np.arange(self.history - 1, -1, -1, dtype=np.float64)).astype(np.float32)

  @property
  def max_successors(self) -> int:
    return self.ids.shape[1]


def successor_table(train: Sequence[np.ndarray], vocab_size: int, max_successors: int = 64, *,
                    window: int = 1, history: int = 1, decay: float = 1.0,
                    chunk_pairs: int = 4_000_000) -> SuccessorTable:
  """Counts the (a, b) pairs of every training sequence where b comes 1 to ``window`` steps after
  a, each weighted ``1 / distance`` (``window=1``: consecutive pairs, each counting 1); keeps each
  item's ``max_successors`` heaviest followers (ties by id) with weight ``log1p(count)``.
  ``history`` and ``decay`` are stored for :func:`prior` (see the module docstring).

  Pairs are counted ``chunk_pairs`` at a time and merged, so host memory follows the number of
  distinct pairs, not ``window`` x the number of interactions."""
  if window < 1 or history < 1 or not 0.0 < decay <= 1.0:
    raise ValueError(f'window and history must be >= 1 and decay in (0, 1], got {window}, '
                     f'{history}, {decay}')
  settings = dict(window=int(window), history=int(history), decay=float(decay))
  # Weights 1 / d as exact integers lcm(1..window) / d, so sums do not depend on the chunking.
  unit = math.lcm(*range(1, window + 1))
  keys, counts = np.zeros(0, np.int64), np.zeros(0, np.int64)
  for chunk_keys, chunk_counts in _pair_chunks(train, vocab_size, window, unit, chunk_pairs):
    keys, counts = _merge_counts(np.concatenate([keys, chunk_keys]),
                                 np.concatenate([counts, chunk_counts]))
  counts = counts / unit
  ids = np.zeros((vocab_size, 1), np.int32)
  weights = np.zeros((vocab_size, 1), np.float32)
  if not len(keys):
    return SuccessorTable(ids, weights, **settings)
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
  return SuccessorTable(ids, weights, **settings)


def _merge_counts(keys: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(sorted distinct keys, the summed integer weight of each)."""
  distinct, inverse = np.unique(keys, return_inverse=True)
  # float64 sums of integers are exact below 2 ** 53.
  summed = np.bincount(inverse.ravel(), weights=weights, minlength=len(distinct))
  return distinct, np.rint(summed).astype(np.int64)


def _pair_chunks(train: Sequence[np.ndarray], vocab_size: int, window: int, unit: int,
                 chunk_pairs: int):
  """Yields (distinct pair keys a * vocab_size + b, summed ``unit / distance``) of about
  ``chunk_pairs`` pairs of the sequences at a time."""
  src, dst, per_pair, n = [], [], [], 0
  for s in train:
    s = np.asarray(s, np.int64)
    for d in range(1, min(window, len(s) - 1) + 1):
      src.append(s[:-d])
      dst.append(s[d:])
      per_pair.append(np.full(len(s) - d, unit // d, np.int64))
      n += len(s) - d
    if n >= chunk_pairs:
      yield _merge_counts(np.concatenate(src) * vocab_size + np.concatenate(dst),
                          np.concatenate(per_pair))
      src, dst, per_pair, n = [], [], [], 0
  if n:
    yield _merge_counts(np.concatenate(src) * vocab_size + np.concatenate(dst),
                        np.concatenate(per_pair))


def prior(ids: jax.Array, weights: jax.Array, newest: jax.Array, vocab_size: int,
          scales: jax.Array | None = None) -> jax.Array:
  """[batch, vocab] bias. ``newest`` int [batch] (each case's newest item) or [batch, h] (its h
  newest items, oldest first, 0 = none): row r sums the followers of those items, the column j
  weighted ``scales[j]`` (default 1)."""
  if newest.ndim == 1:
    newest = newest[:, None]
  batch, h = newest.shape
  scale = jnp.ones((h,), jnp.float32) if scales is None else jnp.asarray(scales, jnp.float32)
  rows = jnp.arange(batch)[:, None]
  out = jnp.zeros((batch, vocab_size), jnp.float32)
  w = jnp.where((newest > 0)[..., None], weights[newest], 0.0) * scale[None, :, None]
  return out.at[rows, ids[newest].reshape(batch, -1)].add(w.reshape(batch, -1))


# The blend chosen on validation, saved beside the checkpoints so that serving applies it too. Read
# and written through ``llm4rec_jax.workdir`` (``read_transitions``/``write_transitions``, and
# ``workdir.TRANSITIONS`` is this name); the file format lives here, which imports no training module.
FILENAME = 'transitions.npz'


def save(workdir, table: SuccessorTable, weight: float) -> None:
  """Writes ``WORKDIR/transitions.npz`` (local or any ``etils.epath`` path): the successor table
  and the weight chosen on validation."""
  with (epath.Path(workdir) / FILENAME).open('wb') as f:
    np.savez(f, ids=table.ids, weights=table.weights, weight=np.float64(weight),
             window=np.int64(table.window), history=np.int64(table.history),
             decay=np.float64(table.decay))


def load(workdir) -> tuple[SuccessorTable, float] | None:
  """(table, chosen weight) from ``WORKDIR/transitions.npz``, or None when the run chose no blend."""
  path = epath.Path(workdir) / FILENAME
  if not path.exists():
    return None
  with path.open('rb') as f, np.load(f) as z:
    # Files written before the window/history settings hold the first-order prior.
    settings = {k: cast(z[k]) for k, cast in (('window', int), ('history', int), ('decay', float))
                if k in z.files}
    return SuccessorTable(z['ids'], z['weights'], **settings), float(z['weight'])


def bias_row(table: SuccessorTable, history: Sequence[int], vocab_size: int) -> np.ndarray:
  """float32 [vocab_size]: :func:`prior` for one history (item ids, oldest first), on the host,
  over its ``table.history`` newest items. Items beyond the table (registered after training) have
  no followers."""
  row = np.zeros(vocab_size, np.float32)
  newest = [int(i) for i in history][-table.history:]
  for item, scale in zip(newest, table.scales()[-len(newest):] if newest else ()):
    if 0 < item < len(table.ids):
      keep = table.ids[item] < vocab_size
      np.add.at(row, table.ids[item][keep], scale * table.weights[item][keep])
  return row
