"""The training objective: the recommender's loss over a batch, shared by training and the online
learner (which passes a catalog that grows as items are registered)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from llm4rec_jax.debias import objectives as debias_objectives
from llm4rec_jax.model import decoder as decoder_lib
from llm4rec_jax.model import semantic_head
from llm4rec_jax.train import losses


def make_loss_fn(cfg: decoder_lib.DecoderConfig, graphdef: nnx.GraphDef, lcfg: Any,
                 max_targets: int, debias: debias_objectives.DebiasObjective | None = None):
  """The training objective ``(params, batch, content, rng, catalog=None) -> (loss, aux)``.

  ``catalog`` (bool [vocab]) overrides the items the softmax ranges over (default: ids
  1..cfg.num_items); the online learner passes a catalog that grows as items are registered.
  """

  chunk = lcfg.get('chunk_targets', -1)
  if chunk < 0:
    chunk = losses.auto_chunk_targets(max_targets, cfg.vocab_size)

  def loss_fn(params, batch, content, rng, catalog=None):
    if catalog is None:
      catalog = decoder_lib.catalog_mask(cfg)
    model = nnx.merge(graphdef, params)
    rngs = nnx.Rngs(dropout=rng)
    encoded = model.encode_catalog(content, rngs=rngs)
    hidden = model(batch['inputs'], encoded, deterministic=False, rngs=rngs,
                   context=batch.get('context'))  # RAG: retrieved items (config.retrieval.rag)
    table = model.output_table(encoded)
    if cfg.head == 'semantic_id':
      h, t, w, dropped = losses.gather_targets(hidden, batch['targets'], max_targets)
      loss = semantic_head.semantic_id_loss(model.sid_head, h, content.codes[t], w)
      return loss, {'num_targets': jnp.sum(w > 0), 'dropped_targets': dropped}
    if lcfg.type == 'sampled_softmax':
      return losses.sampled_softmax_loss(
          hidden, table, batch['targets'], rng=jax.random.fold_in(rng, 1),
          num_items=cfg.num_items, num_negatives=lcfg.num_negatives, max_targets=max_targets)
    train_catalog = catalog
    if content is not None and content.id_known is not None:
      # Items absent from the training data (held out as cold) do not exist yet at training time:
      # they are not negatives of the training softmax, only candidates at evaluation.
      train_catalog = catalog & content.id_known
    seen = batch['inputs'] if lcfg.get('exclude_seen', False) else None
    if debias is None or not debias.changes_training:
      return losses.full_softmax_loss(hidden, table, batch['targets'], catalog=train_catalog,
                                      max_targets=max_targets, exclude_seen_of=seen,
                                      chunk_targets=chunk)
    weights = debias.target_weights(batch['targets'], batch.get('target_weights'))
    loss, aux = losses.full_softmax_loss(hidden, table, batch['targets'], catalog=train_catalog,
                                         max_targets=max_targets, weights=weights,
                                         logit_bias=debias.train_bias, exclude_seen_of=seen,
                                         chunk_targets=chunk)
    return debias.finish_loss(loss, aux, model, hidden, batch, table, train_catalog, weights)

  return loss_fn
