"""Item registration of an online learner: free rows, catalog growth, first rows of new items.

Functions of an :class:`~llm4rec_jax.online.learner.OnlineLearner` (its methods call them). A new
item takes the next free catalog row; when none is left, :func:`grow` pads every catalog-sharded
array (parameters, optimizer moments, content, catalog mask) to the next vocabulary size and
re-shards it with that size's programs. The new row starts at zero (:func:`zero_rows`; with content,
the item is its content embedding) or, with ``online.new_item_init='imprint'``, its scoring row is
imprinted (:func:`imprint`). Row writes run the cached jitted programs of the vocabulary size
(:class:`~llm4rec_jax.online.programs.Programs`), on rows padded to a few lengths.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from llm4rec_jax import partitioning
from llm4rec_jax.data.events import Event
from llm4rec_jax.errors import ConfigError
from llm4rec_jax.online import scoring
from llm4rec_jax.online.catalog import grown_vocab, pad_content, pad_rows
from llm4rec_jax.online.optimizer import new_item_row_scale
from llm4rec_jax.online.programs import padded_rows
from llm4rec_jax.train import state as state_lib

if TYPE_CHECKING:
  from llm4rec_jax.online.learner import OnlineLearner


def register_items(learner: OnlineLearner, raw_ids: Sequence[str],
                   features: Sequence[Mapping[str, Any] | None] | None = None) -> list[int]:
  """Registers items (new ones take free rows, growing the tables if needed) and sets the content
  of those given ``features``; returns their rows. Registered items are scorable."""
  catalog = learner.catalog
  features = list(features) if features is not None else [None] * len(raw_ids)
  new = list(dict.fromkeys(str(r) for r in raw_ids if catalog.get(r) == 0))
  if len(new) > catalog.free_rows:
    grow(learner, catalog.num_items + len(new) + 1)
  new_rows = [catalog.register(r) for r in new]
  rows = [catalog.get(r) for r in raw_ids]
  if new_rows:
    zero_rows(learner, new_rows)
  with_content = [(r, f) for r, f in zip(rows, features) if f is not None or r in new_rows]
  # Title tokens (model.title_tokens) are not filled: a new item's row has none.
  if learner.cfg.uses_content and with_content:
    if learner.content_rows is None:
      raise ConfigError('online.bootstrap', 'content of new items needs the training dataset '
                        '(its category vocabularies and feature statistics); keep it readable')
    learner.content_np = learner.content_rows.fill(learner.content_np,
                                                   [r for r, _ in with_content],
                                                   [f for _, f in with_content])
  changed = sorted(set(new_rows) | ({r for r, _ in with_content}
                                    if learner.cfg.uses_content else set()))
  if changed:
    put_catalog(learner)
    learner.upsert_index(changed)
  return rows


def imprint(learner: OnlineLearner, events: Sequence[Event], new_rows: Iterable[int]) -> None:
  """Weight imprinting: a new item's scoring row becomes the model's query direction after the
  histories that led to it in this micro-batch (averaged), scaled so that it just enters the
  top ``max(eval.ks)`` there (the median over those histories of the k-th best score over the
  query norm). A zero row starts at score 0 and, at an online learning rate, takes hundreds of
  steps to compete; a full-norm row would outrank everything for every user."""
  new_rows = set(new_rows)
  pairs: list[tuple[int, list[int]]] = []
  extra: dict[str, list[int]] = {}
  for e in events:
    if not e.is_interaction:
      continue
    item = learner.catalog.get(e.item)
    h = learner.histories.get(e.user, []) + extra.get(e.user, [])
    if item in new_rows and h:
      pairs.append((item, h))
    extra.setdefault(e.user, []).append(item)
  if not pairs:
    return
  cat, p = learner.catalog, learner.programs
  # Known items only: the new rows are still zero and must not set their own bar.
  known = jax.device_put(cat.mask() & (np.arange(cat.vocab_size) <= cat.num_trained),
                         p.catalog_sharding)
  b, width = learner.oc.batch_size, learner.width
  queries, kth = [], []
  for s in range(0, len(pairs), b):
    inputs = np.zeros((scoring.query_rows(learner, len(pairs[s:s + b])), width - 1), np.int32)
    for i, (_, h) in enumerate(pairs[s:s + b]):
      tail = h[-(width - 1):]
      inputs[i, -len(tail):] = tail
    q, k = p.query_and_kth(learner.state['params'], learner.content,
                           learner.put_batch({'inputs': inputs})['inputs'], known)
    n = len(pairs[s:s + b])
    queries.append(partitioning.fetch(q)[:n].astype(np.float32))
    kth.append(partitioning.fetch(k)[:n].astype(np.float32))
  q, kth = np.concatenate(queries), np.concatenate(kth)
  norm = np.maximum(np.linalg.norm(q, axis=1), 1e-9)
  q /= norm[:, None]
  owner = np.asarray([item for item, _ in pairs])
  rows = sorted(set(owner.tolist()))
  values = np.stack([q[owner == r].mean(0) for r in rows])
  values /= np.maximum(np.linalg.norm(values, axis=1, keepdims=True), 1e-9)
  scale = np.asarray([np.median(kth[owner == r] / norm[owner == r]) for r in rows])
  set_rows(learner, learner.imprint_leaf, rows, values * np.maximum(scale, 0.0)[:, None])


def set_rows(learner: OnlineLearner, leaf: str, rows: Sequence[int], values: np.ndarray) -> None:
  """Writes ``values`` [n, ...] into ``rows`` of parameter ``leaf``."""
  idx, vals = padded_rows(rows, values)
  # device_put, not jnp.asarray: the latter compiles a small program per new shape.
  params = learner.programs.set_rows(learner.state['params'], jax.device_put(idx),
                                     jax.device_put(vals), leaf)
  learner.state = dict(learner.state, params=params)


def zero_rows(learner: OnlineLearner, rows: Sequence[int]) -> None:
  """New items start from a zero id row (with content: their content embedding alone)."""
  idx, _ = padded_rows(rows)
  params = learner.programs.zero_rows(learner.state['params'], jax.device_put(idx))
  learner.state = dict(learner.state, params=params)


def next_vocab(learner: OnlineLearner, needed_rows: int, current: int) -> int:
  """The vocabulary size growth from ``current`` rows to at least ``needed_rows`` reaches."""
  oc = learner.oc
  return grown_vocab(needed_rows, current, oc.grow_items, learner.vocab_multiple, oc.grow)


def grow(learner: OnlineLearner, needed_rows: int) -> None:
  """More catalog rows: pads every catalog-sharded array (parameters, optimizer moments, content,
  catalog mask) and re-shards it for the new vocabulary size."""
  old = learner.catalog.vocab_size
  vocab = next_vocab(learner, needed_rows, old)
  logging.info('growing the item vocabulary %d -> %d rows', old, vocab)
  host = jax.device_get(learner.state)
  learner.catalog.vocab_size = vocab
  learner.use_vocab_size(vocab)
  p = learner.programs
  abstract_opt = jax.eval_shape(learner.tx.init, p.spec.abstract_params)

  def pad(x, like):
    return pad_rows(np.asarray(x), like.shape[0]) if np.shape(x) != like.shape else np.asarray(x)
  host['params'] = jax.tree.map(pad, host['params'], p.spec.abstract_params)
  host['opt_state'] = jax.tree.map(pad, host['opt_state'], abstract_opt)
  learner.state = jax.device_put(host, p.shardings)
  if learner.content_np is not None:
    learner.content_np = pad_content(learner.content_np, vocab)
  put_catalog(learner)


def put_catalog(learner: OnlineLearner) -> None:
  """Puts what follows the catalog on device, in the shardings of the current vocabulary size:
  the catalog mask, the row scale of new items' updates, the content and the L2-pull anchor."""
  cat, p, oc = learner.catalog, learner.programs, learner.oc
  learner.catalog_mask = jax.device_put(cat.mask(), p.catalog_sharding)
  # New items' rows learn at online.new_item_learning_rate: their updates are scaled by its ratio
  # to online.learning_rate (AdamW's update is proportional to the rate).
  ratio = oc.new_item_learning_rate / oc.learning_rate if oc.new_item_learning_rate > 0 else 1.0
  learner.row_scale = jax.device_put(new_item_row_scale(cat.vocab_size, cat.num_trained, ratio),
                                     p.catalog_sharding)
  learner.content = None
  if learner.content_np is not None:
    learner.content = state_lib.put_content(learner.content_np, learner.mesh, learner.rules)
  learner.anchor = None
  if learner.trained_host is not None:
    n, vocab = cat.num_trained, cat.vocab_size

    def anchor_leaf(x, is_vocab):
      if not is_vocab:
        return x
      x = pad_rows(np.asarray(x), vocab)
      x[n + 1:] = 0.0
      return x
    host = jax.tree.map(anchor_leaf, learner.trained_host, p.vocab_leaves)
    learner.anchor = jax.device_put(host, p.shardings['params'])
