"""Full-ranking evaluation on device: every catalog item is scored, no sampled negatives.

Batches of users are sharded over the mesh's batch axes, the item table over the catalog axis;
memory stays bounded by ``config.eval.batch_size x vocab`` scores. By default items the user has
already interacted with are excluded from the ranking (``config.eval.exclude_seen``); a target that
repeats a seen item then counts as a miss (rank = catalog size). Set ``exclude_seen=False`` for
datasets with repeat consumption.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from llm4rec_jax import metrics as metrics_lib
from llm4rec_jax import partitioning
from llm4rec_jax import transitions as transitions_lib
from llm4rec_jax.data import pipeline
from llm4rec_jax.data.pipeline import EvalBatch, iterate_eval
from llm4rec_jax.model import semantic_head


Seen = jax.Array | tuple[jax.Array, jax.Array]


def exclude(scores: jax.Array, seen: Seen, value) -> jax.Array:
  """``scores`` [batch, vocab] with ``value`` at the seen items: ``seen`` is either a 0-padded
  [batch, width] matrix of item ids or a (rows, items) pair of flat arrays (``pipeline.seen_pairs``,
  padded with (0, 0)); item 0 is the padding column either way."""
  if isinstance(seen, tuple):
    rows, cols = seen
    return scores.at[rows, cols].set(value)
  rows = jnp.arange(scores.shape[0])[:, None]
  return scores.at[rows, seen].set(value)


def batch_seen(batch: dict) -> Seen | None:
  """The seen items of an evaluation batch, in whichever form it carries them."""
  if 'seen_rows' in batch:
    return batch['seen_rows'], batch['seen_cols']
  return batch.get('seen')


def scores_for(model, inputs: jax.Array, seen: Seen | None, content=None,
               context: jax.Array | None = None, mask: jax.Array | None = None) -> jax.Array:
  """[batch, vocab] next-item scores after each history; seen items (if given, see
  :func:`exclude`) set to -inf.

  ``content`` is the ItemContent a multimodal model reads (None for id-only models); ``context``
  [batch, seq, C] are retrieved items for the cross-attention memory (llm4rec_jax.retrieval.context);
  ``mask`` (bool [vocab]) overrides the scorable catalog (see ``ItemDecoder.logits``).
  """
  catalog = model.encode_catalog(content)
  hidden = model(inputs, catalog, context=context)[:, -1]  # [batch, d_model]
  scores = model.logits(hidden, catalog, mask)  # [batch, vocab]
  if seen is not None:
    scores = exclude(scores, seen, -jnp.inf)  # seen 0 = pad column, already -inf
  return scores


def generate_top(model, inputs: jax.Array, seen: Seen | None, content, trie, *,
                 beam_size: int, top_k: int) -> tuple[jax.Array, jax.Array]:
  """Semantic-ID head: (items [batch, top_k], scores) of a trie-constrained beam search after each
  history; seen items (if given) are excluded."""
  catalog = model.encode_catalog(content)
  hidden = model(inputs, catalog)[:, -1]  # [batch, d_model]
  excluded = None
  if seen is not None:
    excluded = exclude(jnp.zeros((hidden.shape[0], model.cfg.vocab_size), bool), seen, True)
  return semantic_head.constrained_beam_search(model.sid_head, hidden, trie, beam_size=beam_size,
                                               top_k=top_k, exclude=excluded)


def make_rank_fn(graphdef: nnx.GraphDef, *, exclude_seen: bool, top_k: int, trie=None,
                 beam_size: int = 0, score_bias: jax.Array | None = None,
                 transitions: tuple[jax.Array, jax.Array, jax.Array] | None = None,
                 transition_weight: float = 0.0) -> Callable:
  """Jitted ``(params, batch, content) -> (ranks [batch], top_items [batch, top_k])``.

  ``score_bias`` [vocab] (softmax head only) is added to every score before ranking, e.g. the
  popularity adjustment of ``config.debias.adjust_strength``. ``transitions`` (the follower ids,
  weights and per-position scales of a ``llm4rec_jax.transitions.SuccessorTable``) add
  ``transition_weight`` times the newest history items' training transitions (softmax head only).
  Rankings of one model share one compiled program (:func:`rank_program`).

  For a semantic-ID head (``trie`` given) the ranking is the trie-constrained beam search's top
  ``top_k``: a target outside it gets rank ``num_items``, so HR/NDCG@k are exact for k <= top_k and
  MRR is truncated at ``top_k``.
  """

  def generate(params, batch, content, trie_):
    model = nnx.merge(graphdef, params)
    top, _ = generate_top(model, batch['inputs'], batch_seen(batch) if exclude_seen else None,
                          content, trie_, beam_size=max(beam_size, top_k), top_k=top_k)
    hit = top == batch['targets'][:, None]  # [batch, top_k]
    r = jnp.where(jnp.any(hit, axis=1), jnp.argmax(hit, axis=1), model.cfg.num_items)
    return r.astype(jnp.int32), top.astype(jnp.int32)

  if trie is not None:
    jitted = jax.jit(generate)
    return lambda params, batch, content=None: jitted(params, batch, content, trie)
  program = rank_program(graphdef, exclude_seen, top_k)
  blend = None
  if transitions is not None and transition_weight:
    blend = (transitions, np.float32(transition_weight))
  return lambda params, batch, content=None, mask=None: program(params, batch, content, mask,
                                                                score_bias, blend)


@functools.lru_cache(maxsize=64)
def rank_program(graphdef: nnx.GraphDef, exclude_seen: bool, top_k: int) -> Callable:
  """The jitted ranking ``(params, batch, content, mask, score_bias, blend) -> (ranks, top)`` of
  every :func:`make_rank_fn` of one model: the bias and the transition blend (tables, weight) are
  arguments, not constants folded into the program, so rankings that differ only in them (the
  transition weights chosen among on validation, a debiasing strength sweep) compile once per
  batch shape, not once each."""

  def rank(params, batch, content, mask, score_bias, blend):
    model = nnx.merge(graphdef, params)
    scores = scores_for(model, batch['inputs'], batch_seen(batch) if exclude_seen else None, content,
                        context=batch.get('context'), mask=mask)
    if score_bias is not None:
      scores = scores + score_bias  # finite, so excluded (-inf) items stay excluded
    if blend is not None:  # the prior is finite too
      (ids, weights, scales), weight = blend
      scores = scores + weight * transitions_lib.prior(
          ids, weights, batch['inputs'][:, -scales.shape[0]:], scores.shape[-1], scales)
    target = jnp.take_along_axis(scores, batch['targets'][:, None], axis=1)  # [batch, 1]
    higher = jnp.sum(scores > target, axis=1)
    ties = jnp.sum(scores == target, axis=1) - 1
    r = jnp.where(jnp.isfinite(target[:, 0]), higher + ties, model.cfg.num_items)
    _, top = jax.lax.top_k(scores, top_k)
    return r.astype(jnp.int32), top.astype(jnp.int32)
  return jax.jit(rank)


def evaluate_arrays(rank_fn: Callable, params: Any, arrays: EvalBatch, batch_size: int,
                    put: Callable[[dict], dict], ks: Sequence[int] = metrics_lib.DEFAULT_KS,
                    content: Any = None) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
  """Ranks every case; returns (metrics, ranks [n], top items [n, top_k]) for the valid rows."""
  ranks, tops = [], []
  for batch in iterate_eval(arrays, batch_size):
    valid = batch.pop('valid')
    del batch['users']
    pairs = {k: batch.pop(k) for k in ('seen_rows', 'seen_cols')}
    device_batch = put(batch)
    # The (row, item) pairs are not batch-aligned: every device gets all of them.
    replicated = jax.sharding.NamedSharding(device_batch['inputs'].sharding.mesh,
                                            jax.sharding.PartitionSpec())
    device_batch.update({k: jax.make_array_from_process_local_data(replicated, v, v.shape)
                         for k, v in pairs.items()})
    r, top = rank_fn(params, device_batch, content)
    # fetch: on several processes each holds only its devices' rows.
    ranks.append(partitioning.fetch(r)[valid])
    tops.append(partitioning.fetch(top)[valid])
  ranks_np, tops_np = np.concatenate(ranks), np.concatenate(tops)
  return metrics_lib.ranking_metrics(ranks_np, ks), ranks_np, tops_np


def _allgather(x: np.ndarray) -> np.ndarray:
  """``x`` of every process, stacked on a new leading axis (no collective with one process)."""
  if jax.process_count() == 1:
    return np.asarray(x)[None]
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return np.asarray(multihost_utils.process_allgather(np.asarray(x)))


def evaluate_process_blocks(rank_fn: Callable, params: Any, arrays: EvalBatch, local_batch: int,
                            put: Callable[[dict], dict],
                            ks: Sequence[int] = metrics_lib.DEFAULT_KS, content: Any = None
                            ) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
  """:func:`evaluate_arrays` over cases held per process: ``arrays`` are this process's own cases
  (any number; each process passes its own), ``put`` assembles the processes' blocks of
  ``local_batch`` rows into a global batch (``partitioning.to_global``, as for training).

  One allgather agrees on the number of global batches (short processes pad with invalid rows) and
  one on each batch's seen-pair length: every process pads its pairs to the largest, with rows
  offset to its block (process ``p``'s row ``r`` is row ``p * local_batch + r`` of the global
  batch), and the global pair array is the processes' blocks concatenated, sharded like the batch.
  Returns the metrics, ranks and top items of every process's valid cases (each batch: process 0's,
  then process 1's...); metrics are means, so they do not depend on the number of processes.
  """
  p = jax.process_index()
  counts = _allgather(np.int64(arrays.valid.sum()))  # [P]
  num_batches = max(1, -(-int(counts.max()) // local_batch))
  arrays = pipeline.pad_eval(arrays, num_batches * local_batch)
  nnz = np.diff(arrays.seen_offsets[::local_batch])  # [num_batches] this process's pairs per batch
  sizes = _allgather(nnz).max(axis=0)
  ranks, tops = [], []
  for i in range(num_batches):
    s = i * local_batch
    batch = {'inputs': arrays.inputs[s:s + local_batch], 'targets': arrays.targets[s:s + local_batch]}
    device_batch = put(batch)
    # The pair block must split evenly over this process's shards of the batch axes.
    shards = len({str(x.index) for x in device_batch['inputs'].addressable_shards})
    size = -(-pipeline.pair_bucket(int(sizes[i])) // shards) * shards
    rows, cols = pipeline.seen_pairs(arrays.seen_offsets[s:s + local_batch + 1], arrays.seen_items,
                                     size=size)
    rows[:nnz[i]] += p * local_batch
    device_batch.update(put({'seen_rows': rows, 'seen_cols': cols}))
    r, top = rank_fn(params, device_batch, content)
    valid = (s + np.arange(local_batch)[None, :] < counts[:, None]).reshape(-1)  # [P * local_batch]
    ranks.append(partitioning.fetch(r)[valid])
    tops.append(partitioning.fetch(top)[valid])
  ranks_np, tops_np = np.concatenate(ranks), np.concatenate(tops)
  return metrics_lib.ranking_metrics(ranks_np, ks), ranks_np, tops_np


def write_rankings(path: str | os.PathLike, users: np.ndarray, targets: np.ndarray, ranks: np.ndarray,
                   tops: np.ndarray, user_raw: np.ndarray, item_raw: np.ndarray) -> None:
  """One JSON line per case: raw user id, raw target id, target rank, top-k raw item ids."""
  with epath.Path(path).open('w') as f:
    for u, t, r, top in zip(users, targets, ranks, tops):
      f.write(json.dumps({'user': str(user_raw[u]), 'target': str(item_raw[t]), 'rank': int(r),
                          'top': [str(item_raw[i]) for i in top]}) + '\n')
