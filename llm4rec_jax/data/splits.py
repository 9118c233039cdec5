"""Train/validation/test splits for sequential recommendation.

Protocols:
  * ``leave_one_out``: per user, the last item is the test target, the second last the validation
    target, the rest is training data. Validation history = training items; test history = training
    items + the validation item. Users with fewer than 3 interactions only contribute training data.
  * ``temporal``: one global time cut. Interactions before the ``valid_fraction``/``test_fraction``
    quantile cut points train; for every user with an interaction in the validation (test) window,
    the first such interaction is the target and everything of that user before it is the history.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from llm4rec_jax.data.dataset import RecDataset
from llm4rec_jax.errors import DataError


@dataclasses.dataclass
class EvalExamples:
  """Evaluation cases: a user, their history (CSR), and the held-out target item."""
  users: np.ndarray  # int32 [n]
  offsets: np.ndarray  # int64 [n + 1]
  items: np.ndarray  # int32 [nnz] histories, concatenated, oldest first
  targets: np.ndarray  # int32 [n]

  def __len__(self) -> int:
    return len(self.users)

  def history(self, i: int) -> np.ndarray:
    return self.items[self.offsets[i]:self.offsets[i + 1]]

  @classmethod
  def from_lists(cls, users, histories, targets) -> EvalExamples:
    lengths = np.asarray([len(h) for h in histories], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = (np.concatenate(histories).astype(np.int32) if len(histories)
             else np.zeros(0, np.int32))
    return cls(np.asarray(users, np.int32), offsets, items, np.asarray(targets, np.int32))


@dataclasses.dataclass
class Split:
  """Training sequences (``train[u]`` for user id u, time ordered) and the evaluation cases."""
  train: list[np.ndarray]
  valid: EvalExamples
  test: EvalExamples
  protocol: str
  # Items held out of training entirely (cold-start evaluation); empty when none.
  cold_items: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int32))

  def num_train_interactions(self) -> int:
    return int(sum(len(s) for s in self.train))


def known_sequences(train: list[np.ndarray], examples: EvalExamples) -> list[np.ndarray]:
  """Every user's interactions known when ``examples`` are ranked: a user with a case, its history
  (the shortest, when it has several), others their training sequence. No target of ``examples``
  is in them: a history precedes its own target, and the shortest one every other of its user's."""
  out = list(train)
  lengths = np.diff(examples.offsets)
  for i in np.argsort(-lengths, kind='stable'):  # longest first, so the shortest is kept
    out[int(examples.users[i])] = examples.history(int(i))
  return out


def leave_one_out(ds: RecDataset) -> Split:
  order = ds.order()
  items = ds.item[order]  # [n] every user's items in time order, users in id order
  bounds = np.searchsorted(ds.user[order], np.arange(ds.num_users + 2))
  starts, lengths = bounds[:-1], np.diff(bounds)  # per user id 0..num_users
  held = np.where(lengths >= 3, 2, 0)  # users with >= 3 interactions hold out their last two
  held[0] = 0
  train = [items[s:s + n - h] for s, n, h in zip(starts.tolist(), lengths.tolist(), held.tolist())]
  users = np.flatnonzero(held).astype(np.int32)
  if not len(users):
    raise DataError(f'dataset {ds.name!r}: no user has the 3 interactions leave-one-out needs')
  ends = starts[users] + lengths[users]
  return Split(train, _prefix_examples(items, users, starts[users], ends - 2, items[ends - 2]),
               _prefix_examples(items, users, starts[users], ends - 1, items[ends - 1]),
               'leave_one_out')


def _prefix_examples(items: np.ndarray, users: np.ndarray, starts: np.ndarray, stops: np.ndarray,
                     targets: np.ndarray) -> EvalExamples:
  """Cases whose histories are ``items[starts[i]:stops[i]]``, gathered without a per-user loop."""
  lengths = (stops - starts).astype(np.int64)
  offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  index = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
  return EvalExamples(users.astype(np.int32), offsets, items[index].astype(np.int32),
                      np.asarray(targets, np.int32))


def temporal(ds: RecDataset, valid_fraction: float = 0.1, test_fraction: float = 0.1) -> Split:
  if not ds.has_timestamps:
    raise DataError(f'dataset {ds.name!r} has no timestamps; use split.protocol=leave_one_out',
                    field='split.protocol')
  ts_sorted = np.sort(ds.timestamp)
  t_valid = ts_sorted[int(len(ts_sorted) * (1.0 - valid_fraction - test_fraction))]
  t_test = ts_sorted[int(len(ts_sorted) * (1.0 - test_fraction))]
  seqs, times = ds.sequences(), ds.timestamp_sequences()
  train, valid, test = [], ([], [], []), ([], [], [])
  for u, (seq, ts) in enumerate(zip(seqs, times)):
    train.append(seq[ts < t_valid])
    for lo, hi, out in ((t_valid, t_test, valid), (t_test, np.iinfo(np.int64).max, test)):
      inside = np.nonzero((ts >= lo) & (ts < hi))[0]
      if u and len(inside) and inside[0] > 0:
        out[0].append(u), out[1].append(seq[:inside[0]]), out[2].append(seq[inside[0]])
  if not test[0]:
    raise DataError(f'dataset {ds.name!r}: the temporal test window holds no user with history')
  return Split(train, EvalExamples.from_lists(*valid), EvalExamples.from_lists(*test), 'temporal')


def make_split(ds: RecDataset, protocol: str, **kwargs) -> Split:
  if protocol == 'leave_one_out':
    return leave_one_out(ds)
  if protocol == 'temporal':
    return temporal(ds, **kwargs)
  raise DataError(f"unknown split protocol {protocol!r} (leave_one_out | temporal)",
                  field='split.protocol')


def hold_out_items(split: Split, num_items: int, fraction: float, seed: int) -> Split:
  """Removes a random ``fraction`` of items (ids 1..num_items) from every training sequence.

  Evaluation cases are unchanged (histories may still contain held-out items: their content is what
  represents them); ``cold_items`` records the held-out ids so evaluation can report the cases whose
  target is a cold item.
  """
  rng = np.random.default_rng(seed)
  n = int(round(fraction * num_items))
  cold = np.sort(rng.choice(np.arange(1, num_items + 1), size=n, replace=False)).astype(np.int32)
  is_cold = np.zeros(num_items + 1, bool)
  is_cold[cold] = True
  train = [seq[~is_cold[seq]] for seq in split.train]
  return dataclasses.replace(split, train=train, cold_items=cold)


def subset(examples: EvalExamples, keep: np.ndarray) -> EvalExamples:
  """The cases where ``keep`` [n] is True (or the case indices ``keep``, in that order)."""
  keep = np.asarray(keep)
  idx = np.flatnonzero(keep) if keep.dtype == bool else keep.astype(np.int64)
  return _prefix_examples(examples.items, examples.users[idx], examples.offsets[idx],
                          examples.offsets[idx + 1], examples.targets[idx])


def sample(examples: EvalExamples, max_cases: int, seed: int = 0) -> EvalExamples:
  """At most ``max_cases`` of the cases, a seeded uniform sample kept in case order (the same
  positions for valid and test, which list the same users under leave-one-out); all when
  ``max_cases`` <= 0 or there are no more cases than that."""
  if max_cases <= 0 or len(examples) <= max_cases:
    return examples
  rng = np.random.default_rng(seed)
  return subset(examples, np.sort(rng.choice(len(examples), max_cases, replace=False)))
