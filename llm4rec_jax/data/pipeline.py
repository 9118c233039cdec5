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
  ds = grain.MapDataset.source(_WindowSource(windows, users, weights)).seed(seed).shuffle()
  ds = ds.repeat(num_epochs)
  ds = ds.batch(global_batch_size // process_count, drop_remainder=True)
  if process_count > 1:
    # Local-size batches b = i * P + p, i = 0, 1, ...: block p of global batch i.
    ds = ds[process_index::process_count]
  return ds.map(_to_model_batch)


@dataclasses.dataclass
class EvalBatch:
  """Padded evaluation arrays. ``valid`` is False on the rows that pad the last batch."""
  inputs: np.ndarray  # int32 [n, max_len] last max_len history items, left-padded
  seen: np.ndarray  # int32 [n, max_hist] the whole history, 0-padded (for excluding seen items)
  targets: np.ndarray  # int32 [n]
  users: np.ndarray  # int32 [n]
  valid: np.ndarray  # bool [n]


def eval_arrays(examples: EvalExamples, max_len: int, batch_size: int,
                max_seen: int | None = None) -> EvalBatch:
  """Builds left-padded model inputs and the padded seen-item matrix, rows padded to the batch size."""
  n = len(examples)
  padded = -(-max(n, 1) // batch_size) * batch_size
  lengths = np.diff(examples.offsets)
  width = int(max(1, lengths.max() if n else 1)) if max_seen is None else max_seen
  width = -(-width // 8) * 8
  inputs = np.zeros((padded, max_len), np.int32)
  seen = np.zeros((padded, width), np.int32)
  for i in range(n):
    h = examples.history(i)
    tail = h[-max_len:]
    if len(tail):
      inputs[i, -len(tail):] = tail
    hs = h[-width:]
    seen[i, :len(hs)] = hs
  targets = np.zeros(padded, np.int32)
  targets[:n] = examples.targets
  users = np.zeros(padded, np.int32)
  users[:n] = examples.users
  valid = np.arange(padded) < n
  return EvalBatch(inputs, seen, targets, users, valid)


def iterate_eval(arrays: EvalBatch, batch_size: int):
  """Yields dict batches of exactly ``batch_size`` rows."""
  for s in range(0, len(arrays.targets), batch_size):
    yield {k: v[s:s + batch_size] for k, v in dataclasses.asdict(arrays).items()}
