"""Retrieved context for retrieval-augmented generation (``config.retrieval.rag``).

At a few *cutoff* positions of every input window (the last one, and every ``max_len /
num_cutoffs`` positions back) the history up to the cutoff is turned into a query (the mean item
embedding of its last ``query_window`` items) and ``num_context`` items are retrieved from the ScaNN
index over the model's current item table:

* ``source='items'``: the items nearest to the query;
* ``source='users'``: the most recent training items of the ``similar_users`` users whose profile
  (mean embedding of their training history) is nearest to the query;
* ``source='both'``: half from each.

The result is ``context`` int32 [batch, seq, C] (0 = empty), which the decoder adds to the
cross-attention memory of the cutoff position (``ItemDecoder.__call__``), so positions at and after
the cutoff see the retrieved items' content tokens and earlier positions do not.

Evaluation and serving exclude the history they are given. Training (``train_exclude``) does the
same: the context at cutoff p of a window excludes the user's training items up to and including p
(those before the window start too), and its query reads the history up to p, so it is the context
an evaluation case whose history ends at p would get. Nothing at or after the target of p is used
to build it: no leakage, while the true next item may be retrieved, as it may at evaluation (where
an exclusion of the whole user's sequence would teach "a retrieved item is never the answer").
``train_exclude='user'`` keeps the rule before: every item of the user is excluded at every cutoff.
The index is rebuilt from the current parameters every ``refresh_every`` training steps (default
once per epoch) and before every evaluation.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from llm4rec_jax.data import pipeline
from llm4rec_jax.data.pipeline import EvalBatch
from llm4rec_jax.errors import ConfigError
from llm4rec_jax.retrieval.index import ItemIndex, default_params

SOURCES = ('items', 'users', 'both')
TRAIN_EXCLUDE = ('history', 'user')


@dataclasses.dataclass
class ContextEvalBatch(EvalBatch):
  """Evaluation arrays plus the retrieved ``context`` [n, max_len, C] of every case."""
  context: np.ndarray | None = None


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks ``config.retrieval`` RAG fields (ConfigError naming the field)."""
  r = config.retrieval
  if not r.rag:
    return
  if r.source not in SOURCES:
    raise ConfigError('retrieval.source', f'{r.source!r} is not one of {SOURCES}')
  if r.get('train_exclude', 'history') not in TRAIN_EXCLUDE:
    raise ConfigError('retrieval.train_exclude',
                      f'{r.train_exclude!r} is not one of {TRAIN_EXCLUDE}')
  for field in ('num_context', 'query_window', 'num_cutoffs', 'similar_users'):
    if int(r[field]) <= 0:
      raise ConfigError(f'retrieval.{field}', f'must be positive, got {r[field]}')
  if not config.model.get('cross_attention_every', 0):
    raise ConfigError('retrieval.rag', 'retrieved items join the cross-attention memory: set '
                      'model.cross_attention_every > 0 and select item content (config.content)')
  if config.model.get('head', 'softmax') != 'softmax':
    raise ConfigError('retrieval.rag', 'needs the softmax head (model.head=softmax)')


def cutoffs(seq_len: int, num_cutoffs: int) -> np.ndarray:
  """Cutoff positions of a window: the last, and every ``seq_len // num_cutoffs`` back."""
  stride = max(1, seq_len // num_cutoffs)
  return np.asarray([p for p in range(seq_len - 1, -1, -stride)][:num_cutoffs], np.int64)


@functools.lru_cache(maxsize=4)
def _table_fn(graphdef: nnx.GraphDef):
  @jax.jit
  def table(p, c):
    model = nnx.merge(graphdef, p)
    return model.output_table(model.encode_catalog(c))
  return table


def item_table(graphdef: nnx.GraphDef, params: Any, content: Any = None) -> np.ndarray:
  """float32 [vocab, d_model] on the host: the model's item representation (what its head scores)."""
  return np.asarray(jax.device_get(_table_fn(graphdef)(params, content)), np.float32)


class Retriever:
  """Host-side retrieval of RAG context from a snapshot of the item table (see module doc).

  ``train_sequences[u]``: user u's training history, which the ``users`` source draws from and
  training windows are cut from (``train_exclude='history'``); ``user_items[u]``: the items a
  training example of u must never retrieve with ``train_exclude='user'``.
  """

  def __init__(self, rcfg: ml_collections.ConfigDict, num_items: int, seq_len: int,
               train_sequences: Sequence[np.ndarray], user_items: Sequence[np.ndarray]):
    self.cfg = rcfg
    self.num_items = num_items
    self.seq_len = seq_len
    self.train_sequences = train_sequences
    self.user_items = user_items
    self.cutoffs = cutoffs(seq_len, rcfg.num_cutoffs)
    self.table: np.ndarray | None = None
    self.index: ItemIndex | None = None
    self.user_index: ItemIndex | None = None
    self.refreshed_at: int | None = None
    # Built on first use by training: the sequences concatenated, each user's first occurrences,
    # (user, window) -> the window's end in the sequence.
    self._train: _Csr | None = None
    self._first: _Csr | None = None
    self._ends: dict[tuple[int, bytes], int] | None = None

  # --- index ---------------------------------------------------------------------------------
  def refresh(self, table: np.ndarray, step: int | None = None) -> None:
    """Rebuilds the item (and user) index from ``table`` [vocab, d] (rows 1..num_items used)."""
    self.table = np.asarray(table, np.float32)
    items = self.table[1:self.num_items + 1]
    self.index = ItemIndex.build(items, np.arange(1, self.num_items + 1),
                                 params=default_params(len(items), items.shape[1], self.cfg),
                                 step=step)
    if self.cfg.source in ('users', 'both'):
      users = [u for u, s in enumerate(self.train_sequences) if len(s)]
      profiles = np.stack([self.table[self.train_sequences[u][-self.seq_len:]].mean(axis=0)
                           for u in users])
      self.user_index = ItemIndex.build(
          profiles, users, params=default_params(len(users), profiles.shape[1], self.cfg),
          step=step, embedding='user_profile')
    self.refreshed_at = step

  def snapshot(self) -> dict[str, np.ndarray] | None:
    """What a checkpoint keeps to resume retrieval exactly: the table and the step it was built at."""
    if self.table is None:
      return None
    return {'table': self.table, 'step': np.asarray(-1 if self.refreshed_at is None
                                                    else self.refreshed_at, np.int64)}

  def restore(self, snapshot: dict[str, np.ndarray]) -> None:
    """Rebuilds the index from a :meth:`snapshot` (the same table gives the same index)."""
    step = int(snapshot['step'])
    self.refresh(snapshot['table'], None if step < 0 else step)

  def refresh_from_params(self, graphdef, params, content=None, step: int | None = None) -> None:
    self.refresh(item_table(graphdef, params, content), step)

  def maybe_refresh(self, step: int, every: int, graphdef, params, content=None) -> None:
    """Training schedule: rebuild at every ``every``-th step (unless already built at this step,
    e.g. by the evaluation just before), and on the first call (a fresh or resumed run)."""
    if self.table is None or (step % max(1, every) == 0 and self.refreshed_at != step):
      self.refresh_from_params(graphdef, params, content, step)

  # --- context -------------------------------------------------------------------------------
  def context(self, inputs: np.ndarray, exclude: Sequence[np.ndarray],
              users: np.ndarray | None = None) -> np.ndarray:
    """int32 [batch, seq, C] retrieved items at the cutoffs of ``inputs`` [batch, seq] (left-padded).

    ``exclude[r]``: items row r must never get, at any cutoff (0 and ids > num_items are never
    returned either); ``users[r]`` (the ``users`` source): the row's own user, skipped among the
    similar users.
    """
    return self._context(np.asarray(inputs), Exclusion.per_row(exclude), users)

  def _context(self, inputs: np.ndarray, excl: Exclusion, users: np.ndarray | None,
               before: np.ndarray | None = None) -> np.ndarray:
    """:meth:`context` with per-(row, cutoff) exclusions; ``before`` int [batch, query_window - 1]:
    the items preceding each row's first position (left-padded with 0), which queries at the
    first positions read as the history does; None: none."""
    if self.index is None:
      raise RuntimeError('Retriever.refresh must run before context')
    b, s = inputs.shape
    c, w = self.cfg.num_context, self.cfg.query_window
    out = np.zeros((b, s, c), np.int32)
    cut = self.cutoffs[self.cutoffs < s]
    rows = np.repeat(np.arange(b), len(cut))
    pos = np.tile(cut, b)
    keep = inputs[rows, pos] > 0
    rows, pos = rows[keep], pos[keep]
    if not len(rows):
      return out
    if before is None:
      before = np.zeros((b, w - 1), inputs.dtype)
    history = np.concatenate([before.astype(inputs.dtype), inputs], axis=1)  # [b, w - 1 + s]
    window = history[rows[:, None], pos[:, None] + np.arange(w)[None, :]]  # [q, w]: ends at pos
    vecs = self.table[window]  # [q, w, d]
    present = (window > 0)[..., None]
    queries = (vecs * present).sum(1) / np.maximum(present.sum(1), 1)  # [q, d]
    n_items = c if self.cfg.source == 'items' else (
        0 if self.cfg.source == 'users' else c - c // 2)
    chosen = np.zeros((len(rows), c), np.int64)
    filled = np.zeros(len(rows), np.int64)
    if n_items:
      # Enough candidates that a query keeps n_items after its exclusions (up to 256 of them).
      margin = int(excl.counts(b, s - 1).max(initial=0))
      ids, _ = self.index.search_batched(queries, n_items + min(margin, 256))
      ok = (ids > 0) & (ids <= self.num_items) & ~excl.mask(rows, pos, ids)
      filled = _place(chosen, ids, ok, filled, np.full(len(rows), n_items))
    if self.cfg.source != 'items':
      similar, _ = self.user_index.search_batched(queries, self.cfg.similar_users + 1)  # [q, S+1]
      if users is not None:
        similar = np.where(similar == np.asarray(users)[rows][:, None], -1, similar)
      cand = self._recent_items(similar)  # [q, K] round-robin over the similar users
      ok = ((cand > 0) & (cand <= self.num_items) & ~excl.mask(rows, pos, cand)
            & ~(cand[:, :, None] == chosen[:, None, :]).any(-1) & _first_occurrences(cand))
      _place(chosen, cand, ok, filled, c - filled)
    out[rows, pos] = chosen
    return out

  def _recent_items(self, users: np.ndarray) -> np.ndarray:
    """int64 [q, J * S]: round-robin over the training sequences of ``users`` [q, S] (-1: none),
    most recent first (the most similar user's latest item, the next user's latest, ...); 0 pads."""
    seqs = self._train_csr()
    lengths = np.where(users >= 0, np.diff(seqs.offsets)[np.clip(users, 0, None)], 0)  # [q, S]
    j = np.arange(int(lengths.max(initial=0)))
    at = seqs.offsets[np.clip(users, 0, None)][..., None] + lengths[..., None] - 1 - j  # [q, S, J]
    valid = j < lengths[..., None]
    items = np.where(valid, seqs.items[np.where(valid, at, 0)], 0)
    return items.transpose(0, 2, 1).reshape(len(users), -1)

  def _train_csr(self) -> _Csr:
    if self._train is None:
      self._train = _Csr.of(self.train_sequences)
    return self._train

  def train_batch(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Adds ``context`` to a training batch (a batch of :func:`pipeline.make_windows` windows).

    ``train_exclude='history'``: the context at cutoff p excludes the user's training items up to
    and including p (those before the window start too), what evaluation excludes for a history
    ending at p; the query reads the history up to p. Nothing at or after the target of p is
    used. ``'user'``: every item of the row's user is excluded at every cutoff.
    """
    users = np.asarray(batch['users'])
    inputs = np.asarray(batch['inputs'])
    if self.cfg.get('train_exclude', 'history') == 'user':
      return dict(batch, context=self.context(inputs, [self.user_items[u] for u in users], users))
    # inputs[r, p] is item starts[r] + p of the user's training sequence.
    starts = self.window_ends(inputs, batch['targets'], users) - self.seq_len - 1
    first = self._first_seen()
    excl = first.exclusion(users, starts)
    seqs = self._train_csr()
    w = self.cfg.query_window
    at = starts[:, None] - (w - 1) + np.arange(w - 1)[None, :]  # [b, w - 1]
    before = np.where(at >= 0, seqs.items[np.where(at >= 0, seqs.offsets[users][:, None] + at, 0)],
                      0)
    return dict(batch, context=self._context(inputs, excl, users, before))

  def window_ends(self, inputs: np.ndarray, targets: np.ndarray, users: np.ndarray) -> np.ndarray:
    """int64 [b]: where each training row's window ends in its user's training sequence (one past
    its last target). Windows are told apart by their items; a user with two identical windows
    (a repeating sequence) gets the later end, which excludes more, never less."""
    if self._ends is None:
      # all_windows=True cuts the data.all_windows=False window (the last one) too.
      windows, owners = pipeline.make_windows(self.train_sequences, self.seq_len, all_windows=True)
      ends = pipeline.window_ends(self.train_sequences, self.seq_len, all_windows=True)
      table: dict[tuple[int, bytes], int] = {}
      for row, u, e in zip(windows, owners.tolist(), ends.tolist()):
        key = (u, row.tobytes())
        table[key] = max(e, table.get(key, 0))
      self._ends = table
    # The window is inputs plus the last target (the last input is never padding).
    rows = np.concatenate([inputs, np.asarray(targets)[:, -1:]], axis=1).astype(np.int32)
    out = np.empty(len(rows), np.int64)
    for r, (u, row) in enumerate(zip(np.asarray(users).tolist(), rows)):
      end = self._ends.get((u, row.tobytes()))
      if end is None:
        raise ValueError(f'training batch row {r} is not a window of user {u}\'s training sequence '
                         f'(pipeline.make_windows, max_len={self.seq_len})')
      out[r] = end
    return out

  def _first_seen(self) -> _Csr:
    """Each user's distinct training items with the position of their first occurrence."""
    if self._first is None:
      self._first = _Csr.first_occurrences(self.train_sequences)
    return self._first

  def eval_arrays(self, arrays: EvalBatch) -> ContextEvalBatch:
    """``arrays`` plus the context of every case; a case excludes only its own history."""
    ctx = np.zeros(arrays.inputs.shape + (self.cfg.num_context,), np.int32)
    step = 1024
    for s in range(0, len(arrays.inputs), step):
      sl = slice(s, s + step)
      ctx[sl] = self.context(arrays.inputs[sl], arrays.histories(sl), arrays.users[sl])
    fields = {f.name: getattr(arrays, f.name) for f in dataclasses.fields(EvalBatch)}
    return ContextEvalBatch(**fields, context=ctx)


@dataclasses.dataclass(frozen=True)
class Exclusion:
  """The items each (row, cutoff) of a batch must not get: row r's item i (``keys`` int64 [nnz],
  sorted, unique: ``r << 32 | i``) is excluded at the cutoffs p >= ``since`` int64 [nnz]."""
  keys: np.ndarray
  since: np.ndarray

  @classmethod
  def per_row(cls, items: Sequence[np.ndarray]) -> Exclusion:
    """``items[r]`` excluded at every cutoff of row r."""
    lengths = [len(x) for x in items]
    rows = np.repeat(np.arange(len(items), dtype=np.int64), lengths)
    flat = np.concatenate([np.zeros(0, np.int64)]
                          + [np.asarray(x, np.int64).ravel() for x in items])
    keys = np.unique(rows << 32 | flat)
    return cls(keys, np.full(len(keys), -1, np.int64))

  def mask(self, rows: np.ndarray, pos: np.ndarray, items: np.ndarray) -> np.ndarray:
    """bool [q, k]: which ``items`` [q, k] query q (row ``rows[q]`` at cutoff ``pos[q]``) must not
    get."""
    if not len(self.keys):
      return np.zeros(items.shape, bool)
    key = (rows.astype(np.int64)[:, None] << 32) | np.clip(items, 0, None).astype(np.int64)
    at = np.minimum(np.searchsorted(self.keys, key), len(self.keys) - 1)
    return (self.keys[at] == key) & (self.since[at] <= pos[:, None])

  def counts(self, num_rows: int, pos: int) -> np.ndarray:
    """int64 [num_rows]: how many items each row excludes at cutoff ``pos`` (the most at the
    last cutoff)."""
    return np.bincount(self.keys[self.since <= pos] >> 32, minlength=num_rows)


@dataclasses.dataclass(frozen=True)
class _Csr:
  """Per-user item arrays, concatenated: user u's are ``items[offsets[u]:offsets[u + 1]]`` (with
  ``first[...]``, the position of each in the user's sequence, where kept)."""
  offsets: np.ndarray  # int64 [users + 1]
  items: np.ndarray  # int64 [nnz]
  first: np.ndarray | None = None  # int64 [nnz]

  @classmethod
  def of(cls, sequences: Sequence[np.ndarray]) -> _Csr:
    lengths = np.asarray([len(x) for x in sequences], np.int64)
    items = np.concatenate([np.zeros(0, np.int64)] + [np.asarray(x, np.int64) for x in sequences])
    return cls(np.concatenate([[0], np.cumsum(lengths)]), items)

  @classmethod
  def first_occurrences(cls, sequences: Sequence[np.ndarray]) -> _Csr:
    """Each user's distinct items (sorted) and where each first occurs in the user's sequence."""
    seqs = cls.of(sequences)
    lengths = np.diff(seqs.offsets)
    owner = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    keys, first = np.unique(owner << 32 | seqs.items, return_index=True)  # first occurrences
    offsets = np.searchsorted(keys >> 32, np.arange(len(lengths) + 1))
    return cls(offsets.astype(np.int64), keys & 0xFFFFFFFF, first - seqs.offsets[owner[first]])

  def exclusion(self, users: np.ndarray, starts: np.ndarray) -> Exclusion:
    """Row r excludes user ``users[r]``'s item i from cutoff ``first[i] - starts[r]`` on (where it
    first occurs, in row coordinates; ``starts[r]``: the sequence position of the row's first)."""
    lo, hi = self.offsets[users], self.offsets[np.asarray(users) + 1]
    counts = hi - lo
    rows = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    at = np.repeat(lo - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts) + np.arange(
        counts.sum())
    # Sorted, as Exclusion needs: rows ascend, and each user's items are sorted (np.unique).
    keys = rows << 32 | self.items[at]
    return Exclusion(keys, self.first[at] - np.asarray(starts, np.int64)[rows])


def _place(chosen: np.ndarray, cand: np.ndarray, ok: np.ndarray, filled: np.ndarray,
           room: np.ndarray) -> np.ndarray:
  """Appends each query's first ``room[q]`` ``ok`` candidates to ``chosen[q]`` after its
  ``filled[q]`` items; returns the new fill counts."""
  rank = np.cumsum(ok, axis=1)  # [q, k]
  take = ok & (rank <= room[:, None])
  q, k = np.nonzero(take)
  chosen[q, filled[q] + rank[q, k] - 1] = cand[q, k]
  return filled + take.sum(axis=1)


def _first_occurrences(x: np.ndarray) -> np.ndarray:
  """bool [q, k]: whether ``x[q, k]`` is the first occurrence of its value in row q."""
  order = np.argsort(x, axis=1, kind='stable')
  ordered = np.take_along_axis(x, order, axis=1)
  first_sorted = np.ones(x.shape, bool)
  first_sorted[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
  out = np.empty(x.shape, bool)
  np.put_along_axis(out, order, first_sorted, axis=1)
  return out


def for_experiment(exp) -> Retriever:
  """The Retriever of a training Experiment (llm4rec_jax.train.trainer.Experiment)."""
  validate(exp.config)
  full = exp.dataset.sequences()
  user_items = [np.unique(np.asarray(s, np.int64)) for s in full]
  return Retriever(exp.config.retrieval, exp.dataset.num_items, exp.config.data.max_len,
                   exp.split.train, user_items)
