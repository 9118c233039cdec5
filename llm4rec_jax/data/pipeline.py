"""Grain input pipeline: per-user sequences -> causal training windows -> shuffle -> static batches.

Every training record is one window of ``max_len + 1`` items, left-padded with 0: the model reads
``window[:-1]`` and predicts ``window[1:]`` at every position (targets 0 are padding and ignored).
The pipeline is a Grain ``MapDataset`` (seeded shuffle, reshuffled every epoch, repeated), sliced per
process for multi-host runs, batched with ``drop_remainder`` so shapes are static. Its iterator state is
a few integers and is saved with every checkpoint, so a resumed run sees exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import grain
import numpy as np

from llm4rec_jax.data.splits import EvalExamples


def make_windows(sequences: Sequence[np.ndarray], max_len: int, *, all_windows: bool = False,
                 min_len: int = 2) -> tuple[np.ndarray, np.ndarray]:
  """Cuts sequences into left-padded windows of ``max_len + 1`` items.

  With ``all_windows=False`` (SASRec style) each user contributes the window ending at their last
  training item; otherwise the whole sequence is covered by windows stepping back ``max_len`` items,
  so every training item is a target exactly once.

  Returns:
    windows: int32 [num_windows, max_len + 1]; users: int32 [num_windows] (index into ``sequences``).
  """
  rows, users = [], []
  for u, seq in enumerate(sequences):
    end = len(seq)
    while end >= min_len:
      chunk = seq[max(0, end - max_len - 1):end]
      row = np.zeros(max_len + 1, np.int32)
      row[-len(chunk):] = chunk
      rows.append(row)
      users.append(u)
      if not all_windows:
        break
      end -= max_len
  if not rows:
    return np.zeros((0, max_len + 1), np.int32), np.zeros(0, np.int32)
  return np.stack(rows), np.asarray(users, np.int32)


def window_weights(weights: Sequence[np.ndarray], max_len: int, *, all_windows: bool = False,
                   min_len: int = 2) -> np.ndarray:
  """float32 [num_windows, max_len + 1]: per-interaction ``weights`` (one array per sequence) cut
  into exactly the windows :func:`make_windows` cuts the sequences into (0 on padding)."""
  flat = np.concatenate([np.zeros(1, np.float32)] + [np.asarray(w, np.float32) for w in weights])
  starts = np.cumsum([1] + [len(w) for w in weights])[:-1]
  index = [np.arange(s, s + len(w), dtype=np.int32) for s, w in zip(starts, weights)]
  rows, _ = make_windows(index, max_len, all_windows=all_windows, min_len=min_len)
  return flat[rows]


def window_ends(sequences: Sequence[np.ndarray], max_len: int, *, all_windows: bool = False,
                min_len: int = 2) -> np.ndarray:
  """int64 [num_windows]: where each window :func:`make_windows` cuts ends in its sequence (the
  index one past its last item), in the same order."""
  index = [np.arange(1, len(s) + 1, dtype=np.int32) for s in sequences]
  rows, _ = make_windows(index, max_len, all_windows=all_windows, min_len=min_len)
  return rows[:, -1].astype(np.int64)


@dataclasses.dataclass(frozen=True)
class _WindowSource:
  """Random-access source of (window, user[, weight]) records for Grain."""
  windows: np.ndarray
  users: np.ndarray
  weights: np.ndarray | None = None  # float32 [num_windows, max_len + 1]

  def __len__(self) -> int:
    return len(self.windows)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    record = {'window': self.windows[i], 'user': self.users[i]}
    if self.weights is not None:
      record['weight'] = self.weights[i]
    return record


def _to_model_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  w = batch['window']  # [batch, max_len + 1]
  inputs = w[:, :-1]
  # No target where the input is padding: a user's first item has no history to predict it from.
  targets = np.where(inputs > 0, w[:, 1:], 0)
  out = {'inputs': inputs, 'targets': targets, 'users': batch['user']}
  if 'weight' in batch:  # per-target loss weights (config.debias propensity='windowed')
    out['target_weights'] = np.where(targets > 0, batch['weight'][:, 1:], 0.0).astype(np.float32)
  return out


def train_dataset(windows: np.ndarray, users: np.ndarray, *, global_batch_size: int, seed: int,
                  num_epochs: int | None, process_index: int = 0, process_count: int = 1,
                  weights: np.ndarray | None = None) -> grain.MapDataset:
  """The training ``MapDataset``: shuffle (new order each epoch) -> repeat -> per-process slice -> batch.

  Process ``p`` of ``P`` reads only block ``p`` of every global batch: its local batch ``i`` is rows
  ``[p * B/P, (p + 1) * B/P)`` of global batch ``i``, the rows its devices hold once
  ``partitioning.to_global`` assembles the processes' blocks (process-major device order). The global
  batches, row order included, are the same for any ``P``, so losses do not depend on it.
  ``weights`` (from :func:`window_weights`) adds ``target_weights`` [batch, max_len] to each batch.
  """
  if global_batch_size % process_count:
    raise ValueError(f'global batch {global_batch_size} not divisible by {process_count} processes')
  # Grain shuffles and batches window *indices*; each batch's rows are then gathered in one numpy
  # take. The batches are those of shuffling the records themselves (the same index permutation),
  # at a fraction of the per-record cost.
  source = _WindowSource(windows, users, weights)
  ds = grain.MapDataset.range(len(source)).seed(seed).shuffle()
  ds = ds.repeat(num_epochs)
  ds = ds.batch(global_batch_size // process_count, drop_remainder=True)
  if process_count > 1:
    # Local-size batches b = i * P + p, i = 0, 1, ...: block p of global batch i.
    ds = ds[process_index::process_count]
  return ds.map(functools.partial(_gather_batch, source))


def _gather_batch(source: _WindowSource, rows: np.ndarray) -> dict[str, np.ndarray]:
  batch = {'window': source.windows[rows], 'user': source.users[rows]}
  if source.weights is not None:
    batch['weight'] = source.weights[rows]
  return _to_model_batch(batch)


@dataclasses.dataclass
class EvalBatch:
  """Evaluation cases padded to whole batches. ``valid`` is False on the rows that pad the last batch.

  Histories stay in CSR form (``seen_offsets``/``seen_items``, shared with the ``EvalExamples``):
  nothing here is sized by cases x longest history, so a release with one user of a million
  interactions costs what its interactions cost. :func:`iterate_eval` turns each batch's histories
  into a padded list of (row, item) pairs for the seen-item exclusion.
  """
  inputs: np.ndarray  # int32 [n, max_len] last max_len history items, left-padded
  targets: np.ndarray  # int32 [n]
  users: np.ndarray  # int32 [n]
  valid: np.ndarray  # bool [n]
  seen_offsets: np.ndarray  # int64 [n + 1] row i's history is seen_items[seen_offsets[i]:...[i+1]]
  seen_items: np.ndarray  # int32 [nnz] the whole histories (up to max_seen each), concatenated

  def history(self, i: int) -> np.ndarray:
    return self.seen_items[self.seen_offsets[i]:self.seen_offsets[i + 1]]

  def histories(self, rows: slice) -> list[np.ndarray]:
    return [self.history(i) for i in range(*rows.indices(len(self.targets)))]

  def dense_seen(self, rows: slice = slice(None)) -> np.ndarray:
    """int32 [rows, longest history of those rows, rounded up to 8], 0-padded: for small-data tools
    (unbiased evaluation, tests); evaluation itself never builds it."""
    hists = self.histories(rows)
    width = -(-max([len(h) for h in hists] + [1]) // 8) * 8
    out = np.zeros((len(hists), width), np.int32)
    for i, h in enumerate(hists):
      out[i, :len(h)] = h
    return out


_CSR_FIELDS = ('seen_offsets', 'seen_items')


def eval_arrays(examples: EvalExamples, max_len: int, batch_size: int,
                max_seen: int | None = None) -> EvalBatch:
  """Left-padded model inputs (rows padded to the batch size) and the histories in CSR form.

  ``max_seen`` keeps only the last ``max_seen`` items of each history for the seen-item exclusion.
  Vectorized over cases: O(cases x max_len + interactions) time and memory.
  """
  n = len(examples)
  padded = -(-max(n, 1) // batch_size) * batch_size
  lengths = np.diff(examples.offsets).astype(np.int64)
  ends = examples.offsets[1:].astype(np.int64)
  inputs = np.zeros((padded, max_len), np.int32)
  for lo in range(0, n, 1 << 16):  # chunks bound the [rows, max_len] temporaries
    end = ends[lo:lo + (1 << 16)]
    # inputs[i, j] = the history item at position len - max_len + j (0 before the start).
    pos = end[:, None] - max_len + np.arange(max_len, dtype=np.int64)[None, :]
    inside = pos >= (end - lengths[lo:lo + (1 << 16)])[:, None]
    if len(examples.items):
      inputs[lo:lo + len(end)] = np.where(inside, examples.items[np.where(inside, pos, 0)], 0)
  offsets, items = examples.offsets.astype(np.int64), examples.items
  if max_seen is not None and n and lengths.max() > max_seen:
    keep = np.minimum(lengths, max_seen)
    starts = ends - keep
    offsets = np.concatenate([[0], np.cumsum(keep)])
    index = np.repeat(starts - offsets[:-1], keep) + np.arange(offsets[-1])
    items = examples.items[index]
  offsets = np.concatenate([offsets, np.full(padded - n, offsets[-1], np.int64)])
  targets = np.zeros(padded, np.int32)
  targets[:n] = examples.targets
  users = np.zeros(padded, np.int32)
  users[:n] = examples.users
  valid = np.arange(padded) < n
  return EvalBatch(inputs, targets, users, valid, offsets, np.asarray(items, np.int32))


def pair_bucket(nnz: int, bucket_min: int = 1024) -> int:
  """The padded length of ``nnz`` seen pairs: a power of two, at least ``bucket_min``."""
  return max(bucket_min, 1 << max(0, (int(nnz) - 1).bit_length()))


def seen_pairs(offsets: np.ndarray, items: np.ndarray, bucket_min: int = 1024,
               size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(rows, items) int32 [nnz bucket] of one batch's histories (``offsets`` [batch + 1] into
  ``items``), padded with (0, 0) pairs (item 0 is the padding column, never ranked) to a power of
  two so that a whole evaluation compiles the ranking for a handful of sizes only (or to ``size``,
  at least the number of pairs)."""
  counts = np.diff(offsets)
  nnz = int(counts.sum())
  if size is None:
    size = pair_bucket(nnz, bucket_min)
  elif size < nnz:
    raise ValueError(f'{nnz} seen pairs do not fit in {size}')
  rows = np.zeros(size, np.int32)
  cols = np.zeros(size, np.int32)
  rows[:nnz] = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
  cols[:nnz] = items[offsets[0]:offsets[-1]]
  return rows, cols


def iterate_eval(arrays: EvalBatch, batch_size: int):
  """Yields dict batches of exactly ``batch_size`` rows; the histories come as ``seen_rows`` /
  ``seen_cols`` pairs (see :func:`seen_pairs`), not batch-aligned."""
  fields = {f.name: getattr(arrays, f.name) for f in dataclasses.fields(arrays)
            if f.name not in _CSR_FIELDS}
  for s in range(0, len(arrays.targets), batch_size):
    batch = {k: v[s:s + batch_size] for k, v in fields.items() if v is not None}
    batch['seen_rows'], batch['seen_cols'] = seen_pairs(arrays.seen_offsets[s:s + batch_size + 1],
                                                        arrays.seen_items)
    yield batch


def pad_eval(arrays: EvalBatch, rows: int) -> EvalBatch:
  """``arrays`` with invalid rows (no history, target 0) appended up to ``rows``."""
  extra = rows - len(arrays.targets)
  if extra < 0:
    raise ValueError(f'{len(arrays.targets)} rows do not fit in {rows}')
  if not extra:
    return arrays
  pad = lambda x: np.concatenate([x, np.zeros((extra,) + x.shape[1:], x.dtype)])
  return EvalBatch(pad(arrays.inputs), pad(arrays.targets), pad(arrays.users), pad(arrays.valid),
                   np.concatenate([arrays.seen_offsets,
                                   np.full(extra, arrays.seen_offsets[-1], np.int64)]),
                   arrays.seen_items)
