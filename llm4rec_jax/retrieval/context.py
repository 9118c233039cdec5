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

No leakage: a training example never retrieves an item of its own user (the whole sequence in the
dataset: the targets of the window, and everything later, validation and test items included).
Evaluation and serving exclude only the history they are given. The index is rebuilt from the
current parameters every ``refresh_every`` training steps (default once per epoch) and before every
evaluation.
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

from llm4rec_jax.data.pipeline import EvalBatch
from llm4rec_jax.errors import ConfigError
from llm4rec_jax.retrieval.index import ItemIndex, default_params

SOURCES = ('items', 'users', 'both')


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

  ``user_items[u]`` are the items of user u that a training example of u must never retrieve;
  ``train_sequences[u]`` the training histories the ``users`` source draws from.
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

    ``exclude[r]``: items row r must never get (0 and ids > num_items are never returned either);
    ``users[r]`` (the ``users`` source): the row's own user, skipped among the similar users.
    """
    if self.index is None:
      raise RuntimeError('Retriever.refresh must run before context')
    inputs = np.asarray(inputs)
    b, s = inputs.shape
    c = self.cfg.num_context
    out = np.zeros((b, s, c), np.int32)
    rows, pos = [], []
    for r in range(b):
      for p in self.cutoffs:
        if p < s and inputs[r, p] > 0:
          rows.append(r)
          pos.append(p)
    if not rows:
      return out
    rows_a, pos_a = np.asarray(rows), np.asarray(pos)
    w = self.cfg.query_window
    window = np.stack([inputs[r, max(0, p - w + 1):p + 1] if p - w + 1 >= 0 else
                       np.pad(inputs[r, :p + 1], (w - p - 1, 0)) for r, p in zip(rows, pos)])
    vecs = self.table[window]  # [q, w, d]
    present = (window > 0)[..., None]
    queries = (vecs * present).sum(1) / np.maximum(present.sum(1), 1)  # [q, d]
    excl = [set(np.asarray(exclude[r]).tolist()) for r in range(b)]
    n_items = c if self.cfg.source == 'items' else (
        0 if self.cfg.source == 'users' else c - c // 2)
    item_ids = None
    if n_items:
      margin = max(len(e) for e in excl) if excl else 0
      item_ids, _ = self.index.search_batched(queries, n_items + min(margin, 256))
    user_ids = None
    if self.cfg.source != 'items':
      user_ids, _ = self.user_index.search_batched(queries, self.cfg.similar_users + 1)
    for q, (r, p) in enumerate(zip(rows_a, pos_a)):
      chosen: list[int] = []
      if item_ids is not None:
        for i in item_ids[q]:
          if len(chosen) == n_items:
            break
          if 0 < i <= self.num_items and i not in excl[r]:
            chosen.append(int(i))
      if user_ids is not None:
        own = None if users is None else int(users[r])
        recent = [self.train_sequences[v][::-1] for v in user_ids[q] if v >= 0 and v != own]
        for i in _interleave(recent):
          if len(chosen) == c:
            break
          if 0 < i <= self.num_items and i not in excl[r] and i not in chosen:
            chosen.append(int(i))
      out[r, p, :len(chosen)] = chosen
    return out

  def train_batch(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Adds ``context`` to a training batch; every item of the row's user is excluded."""
    users = batch['users']
    ctx = self.context(batch['inputs'], [self.user_items[u] for u in users], users)
    return dict(batch, context=ctx)

  def eval_arrays(self, arrays: EvalBatch) -> ContextEvalBatch:
    """``arrays`` plus the context of every case; a case excludes only its own history."""
    ctx = np.zeros(arrays.inputs.shape + (self.cfg.num_context,), np.int32)
    step = 1024
    for s in range(0, len(arrays.inputs), step):
      sl = slice(s, s + step)
      ctx[sl] = self.context(arrays.inputs[sl], arrays.histories(sl), arrays.users[sl])
    fields = {f.name: getattr(arrays, f.name) for f in dataclasses.fields(EvalBatch)}
    return ContextEvalBatch(**fields, context=ctx)


def _interleave(lists: list[np.ndarray]):
  """Round-robin over lists (most similar user's most recent item first)."""
  for j in range(max((len(x) for x in lists), default=0)):
    for x in lists:
      if j < len(x):
        yield int(x[j])


def for_experiment(exp) -> Retriever:
  """The Retriever of a training Experiment (llm4rec_jax.train.trainer.Experiment)."""
  validate(exp.config)
  full = exp.dataset.sequences()
  user_items = [np.unique(np.asarray(s, np.int64)) for s in full]
  return Retriever(exp.config.retrieval, exp.dataset.num_items, exp.config.data.max_len,
                   exp.split.train, user_items)
