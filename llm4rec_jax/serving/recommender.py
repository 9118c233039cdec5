"""``recommend``: top-k items for a raw-id history, from a trained workdir (no dataset needed).

Training writes the effective config and the item catalog (raw item ids and titles) into the
workdir (:mod:`llm4rec_jax.workdir`), so serving needs only the workdir. Parameters are restored
onto a single device.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llm4rec_jax import config_base, evaluation
from llm4rec_jax import transitions as transitions_lib
from llm4rec_jax import workdir as workdir_lib
from llm4rec_jax.debias import objectives
from llm4rec_jax.errors import DataError, UnknownIdError
from llm4rec_jax.serving import index as index_lib
from llm4rec_jax.serving import snapshot as snapshot_lib
from llm4rec_jax.train import restore
from llm4rec_jax.train import state as state_lib


class Recommender:
  """A trained model loaded for serving: ``recommend(history, top_k)`` with raw ids."""

  def __init__(self, workdir: workdir_lib.PathLike, *, checkpoint: str = workdir_lib.AUTO,
               use_index: bool = True, adjust_strength: float | None = None,
               snapshot: str | int | None = 'none', transition_weight: float | None = None):
    """``checkpoint``: ``workdir.CHECKPOINT_CHOICES``; 'auto' serves the refit when the run
    saved one (``eval.refit_epochs``: the model its test figures rank), else the best checkpoint.
    ``use_index``: serve through ``WORKDIR/index`` when it exists (see ``llm4rec index``).
    ``snapshot``: serve an online-adapted model from ``WORKDIR/online/snapshots`` ('none': the
    training checkpoint; 'auto': the latest snapshot if any; 'latest'; or a stream position), with
    the items registered online; exact scoring (the ScaNN index belongs to the training checkpoint).
    ``adjust_strength``: scores ``-= adjust_strength * log popularity`` (the training counts saved
    in ``items.json``); None = the saved ``config.debias.adjust_strength``.
    ``transition_weight``: scores ``+= weight * prior``, the training transitions of the newest
    history items (``llm4rec_jax.transitions``, with the window and history saved by the run's
    ``eval.transition_*`` settings); None = the weight chosen on validation
    when the run had ``eval.transition_weights`` (``WORKDIR/transitions.npz``), 0 = off.
    ``workdir``: a local path or any ``etils.epath`` path (e.g. ``gs://bucket/run``)."""
    self.workdir = workdir_lib.root(workdir)
    self.config = config_base.load(self.workdir)
    if adjust_strength is not None:
      self.config.debias.adjust_strength = float(adjust_strength)
    catalog = workdir_lib.read_catalog(self.workdir)
    self.raw_ids: list[str] = catalog['raw_ids']
    self.titles: list[str] | None = catalog.get('titles')
    self.index = {r: i for i, r in enumerate(self.raw_ids) if i}
    mesh = restore.single_device_mesh(self.config)
    cfg, content, sid = restore.saved_model_config(self.workdir, self.config,
                                                   catalog['num_items'], mesh)
    self.content = jax.tree.map(jnp.asarray, content) if content is not None else None
    self.snapshot_position = workdir_lib.snapshot_position(self.workdir, snapshot)
    adapted = None
    if self.snapshot_position is not None:
      adapted = snapshot_lib.load(self.workdir, self.snapshot_position, self.config, cfg, mesh,
                                    self.content)
      self.raw_ids = self.raw_ids + adapted.new_items
      if self.titles:
        self.titles = list(self.titles) + [''] * len(adapted.new_items)
      self.index = {r: i for i, r in enumerate(self.raw_ids) if i}
      # The catalog is every registered item (ids 1..num_items); rows past it stay unscorable.
      cfg = dataclasses.replace(cfg, vocab_size=adapted.vocab_size,
                                num_items=len(self.raw_ids) - 1)
      if adapted.content is not None:
        self.content = jax.tree.map(jnp.asarray, adapted.content)
    self.trie = jax.device_put(sid.trie()) if sid is not None else None
    self.spec = state_lib.build_model_spec(cfg, mesh, self.config.mesh.rules)
    self.score_bias = _popularity_adjustment(self.config, catalog, cfg, len(self.raw_ids),
                                             workdir_lib.path(self.workdir, workdir_lib.CATALOG))
    saved = workdir_lib.read_transitions(self.workdir)
    self.transition_table = saved[0] if saved else None
    self.transition_weight = (float(transition_weight) if transition_weight is not None
                              else saved[1] if saved else 0.0)
    if self.transition_weight < 0:
      raise DataError(f'transition_weight must be >= 0, got {transition_weight}',
                      field='transition_weight')
    if self.transition_weight and self.transition_table is None:
      raise DataError('a transition blend needs the successor table that training writes when '
                      'eval.transition_weights chose a weight',
                      path=str(workdir_lib.path(self.workdir, workdir_lib.TRANSITIONS)))
    if adapted is not None:
      self.step, self.params = adapted.trained_step, adapted.params
      self.ann_index, self.ann_table = None, None
      self.rag = index_lib.serving_retriever(self) if self.config.retrieval.rag else None
      return
    # With a fine-tuned text encoder, the content's text rows come from the checkpoint.
    self.step, self.params, self.content = restore.restore_params(
        self.workdir, self.spec, checkpoint, self.content,
        self.config.text_finetune.encode_batch_size if cfg.text_encoder is not None else 0)
    # WORKDIR/index: ANN candidates re-scored exactly (refused if built from another checkpoint).
    self.ann_index, self.ann_table = (index_lib.load_index(self) if use_index
                                      else (None, None))
    self.rag = index_lib.serving_retriever(self) if self.config.retrieval.rag else None

  @functools.partial(jax.jit, static_argnums=(0, 4))
  def _top(self, params, inputs, seen, k, content=None, trie=None, context=None, score_bias=None):
    model = nnx.merge(self.spec.graphdef, params)
    if trie is not None:
      beam = max(k, self.config.semantic_ids.beam_size)
      items, scores = evaluation.generate_top(model, inputs, seen, content, trie, beam_size=beam,
                                              top_k=k)
      return scores, items
    scores = evaluation.scores_for(model, inputs, seen, content, context=context)
    if score_bias is not None:
      scores = scores + score_bias  # [1, vocab]; finite, so excluded (-inf) items stay excluded
    return jax.lax.top_k(scores, k)

  def item_table(self) -> np.ndarray:
    """float32 [rows, d_model]: the model's item representation of every catalog row."""
    return restore.catalog_table(self.spec.graphdef, self.params,
                                 self.content)[:len(self.raw_ids)]

  def encode(self, history: Sequence[str]) -> np.ndarray:
    unknown = [h for h in history if str(h) not in self.index]
    if unknown:
      raise UnknownIdError(f'unknown item id(s) {unknown[:10]} (not in the {len(self.index)} items '
                           f'of {workdir_lib.path(self.workdir, workdir_lib.CATALOG)})')
    return np.asarray([self.index[str(h)] for h in history], np.int32)

  def recommend(self, history: Sequence[str], top_k: int = 10, *,
                exclude_seen: bool = True) -> dict[str, Any]:
    """Top-k raw item ids (with scores and titles) to follow ``history`` (raw ids, oldest first)."""
    if not history:
      raise DataError('history is empty: give at least one item id', field='history')
    if top_k <= 0 or top_k > len(self.index):
      raise DataError(f'top_k must be in 1..{len(self.index)}, got {top_k}', field='top_k')
    ids = self.encode(history)
    max_len = self.spec.cfg.max_len
    inputs = np.zeros((1, max_len), np.int32)
    tail = ids[-max_len:]
    inputs[0, -len(tail):] = tail
    # Seen ids padded (0 = pad, never scorable) to a power-of-two bucket, so a served model
    # compiles once per bucket, not once per history length.
    seen = np.zeros((1, seen_bucket(len(ids)) if exclude_seen else 1), np.int32)
    if exclude_seen:
      seen[0, :len(ids)] = ids
    k = min(top_k, len(self.index) - (len(set(ids.tolist())) if exclude_seen else 0))
    context = self.rag.context(inputs, [ids]) if self.rag is not None else None  # RAG
    bias, successors = self.score_bias, ()
    if self.transition_weight:  # the newest items' training followers, as evaluation blends them
      row = transitions_lib.bias_row(self.transition_table, ids[-max_len:], self.spec.cfg.vocab_size)
      bias = (0.0 if bias is None else np.asarray(bias)) + self.transition_weight * row[None]
      successors = np.flatnonzero(row)
    if self.ann_index is not None:
      scores, items = index_lib.top_k_with_index(self, inputs, seen, k, context,
                                                     score_bias=bias, extra_candidates=successors)
    else:
      scores, items = jax.device_get(self._top(self.params, jnp.asarray(inputs), jnp.asarray(seen),
                                               k, self.content, self.trie, context,
                                               None if bias is None else jnp.asarray(bias)))
    recs = []
    for s, i in zip(scores[0], items[0]):
      rec = {'item': self.raw_ids[int(i)], 'score': float(s)}
      if self.titles:
        rec['title'] = self.titles[int(i)]
      recs.append(rec)
    out = {'history': [str(h) for h in history], 'checkpoint_step': self.step,
           'recommendations': recs}
    if self.snapshot_position is not None:
      out['snapshot_position'] = self.snapshot_position  # online-adapted parameters
    return out


def seen_bucket(n: int, smallest: int = 16) -> int:
  """The padded width of ``n`` seen ids: ``smallest`` or the next power of two above it."""
  return max(smallest, 1 << max(0, n - 1).bit_length())


def recommend(workdir: workdir_lib.PathLike, history: Sequence[str], top_k: int = 10, *,
              checkpoint: str = workdir_lib.AUTO, exclude_seen: bool = True,
              adjust_strength: float | None = None,
              snapshot: str | int | None = 'none',
              transition_weight: float | None = None) -> dict[str, Any]:
  """One-shot :meth:`Recommender.recommend` (loads the model each call; keep a Recommender to reuse).
  ``adjust_strength`` None applies the saved ``config.debias.adjust_strength``;
  ``transition_weight`` None the blend chosen on validation."""
  return Recommender(workdir, checkpoint=checkpoint, adjust_strength=adjust_strength,
                     snapshot=snapshot, transition_weight=transition_weight).recommend(
                         history, top_k, exclude_seen=exclude_seen)


def _popularity_adjustment(config, catalog: dict, cfg, rows: int,
                           path: workdir_lib.PathLike) -> jax.Array | None:
  """float32 [1, vocab] ``-adjust_strength * log popularity`` of the training counts (None when
  off), the adjustment evaluation applies (``debias.objectives.build``); catalog rows past the
  trained ones (registered online) count 0 interactions."""
  strength = float(config.debias.get('adjust_strength', 0.0))
  if not strength:
    return None
  if cfg.head != 'softmax':
    raise DataError('the popularity adjustment needs model.head=softmax', field='adjust_strength')
  counts = catalog.get('train_counts')
  if counts is None:
    raise DataError('debias.adjust_strength needs the training item counts, which this workdir '
                    'predates; train again to write them', path=str(path))
  full = np.zeros(max(rows, len(counts)), np.float64)
  full[:len(counts)] = counts
  log_pop = objectives.log_popularity(full, cfg.vocab_size, smoothing=config.debias.smoothing)
  return jnp.asarray(-strength * log_pop)[None]
