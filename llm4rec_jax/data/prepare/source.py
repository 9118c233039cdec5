"""Per-process Grain input over prepared ArrayRecord sequences: training windows cut on the fly and
leave-one-out evaluation cases, each process opening only the records of its own slice.

Leave-one-out as :func:`llm4rec_jax.data.splits.leave_one_out`: a user with at least 3 interactions
keeps ``seq[:-2]`` for training, ``seq[-2]`` is the validation target (history ``seq[:-2]``) and
``seq[-1]`` the test target (history ``seq[:-1]``); shorter sequences only train. The training
windows of a user are those :func:`llm4rec_jax.data.pipeline.make_windows` cuts from its training
part, in the same order.

Slicing: the windows of all users, in user order, are numbered ``0..W-1`` (from the ``lengths``
files alone, no record is opened) and process ``p`` of ``P`` takes windows
``[p * (W // P), (p + 1) * (W // P))``: every process gets the same number of windows, so the same
number of steps per epoch; at most ``P - 1`` windows are left out. Evaluation cases are split the
same way (the last process takes the remainder: evaluation pads its batches). The ArrayRecord source
of a process is built from ``FileInstruction``s covering only its users' records.
"""

from __future__ import annotations

import dataclasses
import os

import grain
import numpy as np

from llm4rec_jax.data import pipeline
from llm4rec_jax.data.dataset import RecDataset
from llm4rec_jax.data.prepare import seqrecord
from llm4rec_jax.data.splits import EvalExamples


@dataclasses.dataclass(frozen=True)
class _Instruction:
  """What ``ArrayRecordDataSource`` accepts to read records ``[skip, skip + take)`` of one file."""
  filename: str
  skip: int
  take: int
  examples_in_shard: int


class Prepared:
  """A prepared directory: manifest, lengths (int32 [num_users], user ``i + 1`` at ``i``), shards."""

  def __init__(self, directory: str | os.PathLike):
    self.directory = os.fspath(directory)
    self.manifest = seqrecord.read_manifest(self.directory)
    n = self.manifest['num_shards']
    self.shards = self.manifest['shards']
    self.lengths = np.concatenate(
        [np.load(os.path.join(self.directory, seqrecord.lengths_shard(s['shard'], n)))
         for s in self.shards]).astype(np.int64)

  @property
  def num_users(self) -> int:
    return int(self.manifest['num_users'])

  @property
  def num_items(self) -> int:
    return int(self.manifest['num_items'])

  def source(self, first: int, stop: int) -> grain.sources.ArrayRecordDataSource | None:
    """A random-access source of records ``[first, stop)`` (record ``i`` = user ``i + 1``)."""
    instructions = []
    for s in self.shards:
      lo, hi = s['first_user'] - 1, s['first_user'] - 1 + s['users']
      a, b = max(lo, first), min(hi, stop)
      if a < b:
        instructions.append(_Instruction(os.path.join(self.directory, s['file']), a - lo, b - a,
                                         s['users']))
    return grain.sources.ArrayRecordDataSource(instructions) if instructions else None


def train_lengths(lengths: np.ndarray) -> np.ndarray:
  """Length of each user's leave-one-out training part."""
  return np.where(lengths >= 3, lengths - 2, lengths)


def window_counts(lengths: np.ndarray, max_len: int, *, all_windows: bool = False,
                  min_len: int = 2) -> np.ndarray:
  """int64 [users]: how many windows ``make_windows`` cuts from each training part."""
  t = train_lengths(lengths)
  if not all_windows:
    return (t >= min_len).astype(np.int64)
  return np.where(t >= min_len, (t - min_len) // max_len + 1, 0).astype(np.int64)


class TrainWindows(grain.sources.RandomAccessDataSource):
  """Process ``process_index``'s training windows: ``{'window': int32 [max_len + 1], 'user': int32}``."""

  def __init__(self, prepared: Prepared, max_len: int, *, all_windows: bool = False,
               process_index: int = 0, process_count: int = 1):
    counts = window_counts(prepared.lengths, max_len, all_windows=all_windows)
    cum = np.concatenate([[0], np.cumsum(counts)])
    per = int(cum[-1]) // process_count
    lo, hi = process_index * per, (process_index + 1) * per
    # Records [r_lo, r_hi) hold this slice's windows; only their prefix sums are kept.
    r_lo = int(np.searchsorted(cum, lo, side='right')) - 1
    r_hi = int(np.searchsorted(cum, hi, side='left')) if per else r_lo
    self._cum = cum[r_lo:r_hi + 1] - lo  # window offset of each record in the slice
    self._first_record = r_lo
    self._len = per
    self._train_len = train_lengths(prepared.lengths[r_lo:r_hi])
    self._source = prepared.source(r_lo, r_hi)
    self.max_len = max_len

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    r = int(np.searchsorted(self._cum, i, side='right')) - 1
    k = i - int(self._cum[r])  # k-th window from the end of the user's training part
    seq = seqrecord.decode(self._source[r])
    end = int(self._train_len[r]) - k * self.max_len
    chunk = seq.items[max(0, end - self.max_len - 1):end]
    window = np.zeros(self.max_len + 1, np.int32)
    window[-len(chunk):] = chunk
    return {'window': window, 'user': np.int32(seq.user_index)}

  def __repr__(self) -> str:
    return f'TrainWindows(records from {self._first_record}, {self._len} windows)'


def train_dataset(prepared: Prepared, *, max_len: int, global_batch_size: int, seed: int,
                  num_epochs: int | None, all_windows: bool = False, process_index: int = 0,
                  process_count: int = 1) -> grain.MapDataset:
  """This process's training batches (``inputs``, ``targets``, ``users``), as
  :func:`pipeline.train_dataset` but over this process's own windows: seeded shuffle (new order each
  epoch) -> repeat -> local batches of ``global_batch_size / process_count`` rows. The iterator's
  state (``get_state``/``set_state``) is a few integers, saved with the checkpoints."""
  if global_batch_size % process_count:
    raise ValueError(f'global batch {global_batch_size} not divisible by {process_count} processes')
  src = TrainWindows(prepared, max_len, all_windows=all_windows, process_index=process_index,
                     process_count=process_count)
  ds = grain.MapDataset.source(src).seed(seed).shuffle().repeat(num_epochs)
  ds = ds.batch(global_batch_size // process_count, drop_remainder=True)
  return ds.map(pipeline._to_model_batch)  # pylint: disable=protected-access


def eval_examples(prepared: Prepared, which: str, *, process_index: int = 0,
                  process_count: int = 1, max_cases: int = 0, seed: int = 0) -> EvalExamples:
  """This process's leave-one-out ``valid`` or ``test`` cases (users with >= 3 interactions).

  ``max_cases`` > 0 keeps a seeded sample of that many cases before any record is read, the same
  positions :func:`llm4rec_jax.data.splits.sample` keeps of the in-memory cases."""
  if which not in ('valid', 'test'):
    raise ValueError(f"which must be 'valid' or 'test', got {which!r}")
  eligible = np.flatnonzero(prepared.lengths >= 3)  # record indices
  if 0 < max_cases < len(eligible):
    rng = np.random.default_rng(seed)
    eligible = eligible[np.sort(rng.choice(len(eligible), max_cases, replace=False))]
  per = -(-len(eligible) // process_count)
  mine = eligible[process_index * per:(process_index + 1) * per]
  users, histories, targets = [], [], []
  if len(mine):
    src = prepared.source(int(mine[0]), int(mine[-1]) + 1)
    for r in mine - mine[0]:
      seq = seqrecord.decode(src[int(r)])
      cut = len(seq.items) - (2 if which == 'valid' else 1)
      users.append(seq.user_index)
      histories.append(seq.items[:cut])
      targets.append(seq.items[cut])
  return EvalExamples.from_lists(users, histories, targets)


def write_dataset(ds: RecDataset, output: str | os.PathLike, num_shards: int = 4) -> dict:
  """An in-memory dataset in the prepared layout, keeping its own user and item ids (contiguous
  user ranges per shard): what the tests and small releases use to reach the same Grain input."""
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
  import json  # pylint: disable=import-outside-toplevel
  out = os.fspath(output)
  os.makedirs(out, exist_ok=True)
  order = ds.order()
  bounds = np.searchsorted(ds.user[order], np.arange(ds.num_users + 2))
  per = -(-ds.num_users // num_shards)
  shards = []
  for s in range(num_shards):
    first, stop = 1 + s * per, min(1 + (s + 1) * per, ds.num_users + 1)
    name = seqrecord.sequence_shard(s, num_shards)
    writer = array_record_module.ArrayRecordWriter(os.path.join(out, name), 'group_size:1')
    lengths = []
    for u in range(first, max(first, stop)):
      rows = order[bounds[u]:bounds[u + 1]]
      lengths.append(len(rows))
      writer.write(seqrecord.encode(seqrecord.UserSequence(
          u, str(ds.users.raw_ids[u]), ds.item[rows], ds.timestamp[rows], ds.rating[rows])))
    writer.close()
    lengths = np.asarray(lengths, np.int32)
    np.save(os.path.join(out, seqrecord.lengths_shard(s, num_shards)), lengths)
    shards.append(dict(shard=s, file=name, first_user=first, users=len(lengths),
                       interactions=int(lengths.sum()), eval_users=int((lengths >= 3).sum()),
                       max_length=int(lengths.max(initial=0))))
  with open(os.path.join(out, seqrecord.ITEMS), 'w', encoding='utf-8') as f:
    f.writelines(f'{r}\n' for r in ds.items.raw_ids[1:])
  manifest = dict(schema_version=seqrecord.SCHEMA_VERSION, format=f'RecDataset {ds.name}',
                  num_users=ds.num_users, num_items=ds.num_items,
                  num_interactions=ds.num_interactions,
                  num_eval_users=sum(s['eval_users'] for s in shards),
                  max_length=max(s['max_length'] for s in shards), timestamps='seconds',
                  item_order='as the dataset', user_order='as the dataset',
                  num_shards=num_shards, shards=shards)
  with open(os.path.join(out, seqrecord.MANIFEST), 'w', encoding='utf-8') as f:
    json.dump(manifest, f, indent=1)
  return manifest
