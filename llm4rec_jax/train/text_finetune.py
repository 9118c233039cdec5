"""Fine-tuning the text encoder inside the recommender (``config.text_finetune.enabled``).

With the switch off, item texts are encoded once by the pretrained encoder, cached on disk
(:mod:`llm4rec_jax.content.text_cache`) and fed to fusion as a frozen ``[vocab, hidden]`` table.
With it on:

* the BERT encoder is a submodule of the decoder (``params['text_encoder']``), so it is sharded by
  its logical axes, updated by the optimizer (its own learning rate; the embeddings and the lowest
  ``freeze_layers`` layers can stay frozen), and checkpointed and restored by Orbax with the rest;
* item texts are stored as fixed-length token rows (``ItemContent.text_tokens``);
* the train state holds ``text_table`` [vocab, hidden], the catalog's text embeddings, initialised
  from the pretrained cache. In the one jitted step, the unique items of the batch (inputs and
  targets; at most ``max_items_per_step`` of them, a uniform random subset when there are more)
  are re-encoded by the live encoder and their rows substituted into that table before fusion, so
  the loss reaches the encoder through exactly those rows;
* **approximation**: every other row (items outside the batch, which the full softmax still scores
  as negatives, and the items beyond the budget) comes from the table, which is re-encoded with the
  live encoder only at each evaluation. Between evaluations those rows lag the encoder by up to
  ``train.eval_every`` steps and pass no gradient to it;
* at each evaluation the whole table is re-encoded (chunked), the evaluation uses it, and it is
  saved with the checkpoint together with the step it was computed at, so ``evaluate`` and
  ``recommend`` read it from the checkpoint instead of re-encoding (they re-encode only a checkpoint
  saved between evaluations, whose table is stale).

The encoder runs without dropout in the step, so the substituted rows and the refreshed table are
the same function of the parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llm4rec_jax import partitioning
from llm4rec_jax.model import text_encoder
from llm4rec_jax.data.content import ItemContent
from llm4rec_jax.errors import ConfigError

# The cache's encoding (text_cache.item_text_embeddings defaults): mean pooling, L2-normalised.
POOLING = 'mean'
NORMALIZE = True


def enabled(config: Any) -> bool:
  return bool(config.get('text_finetune', {}).get('enabled', False))


def encoder_config(config: Any) -> text_encoder.BertConfig:
  """The architecture of ``config.content.text_model`` (checked against ``config.text_finetune``)."""
  model_dir = text_encoder.resolve_model_dir(config.content.text_model
                                             or text_encoder.default_model_dir())
  path = model_dir / 'config.json'
  if not path.is_file():
    raise ConfigError(text_encoder.MODEL_FIELD, f'{path} not found')
  cfg = text_encoder.BertConfig.from_json(path)
  if config.text_finetune.freeze_layers >= cfg.num_hidden_layers:
    raise ConfigError('text_finetune.freeze_layers', f'{config.text_finetune.freeze_layers} '
                      f'freezes all {cfg.num_hidden_layers} layers of {model_dir}; nothing to tune')
  return cfg


def pretrained_params(config: Any, shardings: Any) -> Any:
  """The pretrained encoder's parameters as a pure dict, placed in ``shardings``."""
  model, _, _ = text_encoder.load_pretrained(config.content.text_model or None)
  pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  return jax.device_put(pure, shardings)


def init_state(state: dict[str, Any], config: Any, content: ItemContent,
               shardings: dict[str, Any]) -> dict[str, Any]:
  """A fresh train state with the pretrained encoder and the cached text table (step 0)."""
  params = dict(state['params'])
  params['text_encoder'] = pretrained_params(config, shardings['params']['text_encoder'])
  return dict(state, params=params,
              text_table=jax.device_put(content.text, shardings['text_table']),
              text_table_step=jax.device_put(np.int32(0), shardings['text_table_step']))


def select_batch_items(inputs: jax.Array, targets: jax.Array, text_mask: jax.Array, budget: int,
                       rng: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The batch's unique items that have text, at most ``budget`` (0 = all) of them.

  Returns ``(items int [U], valid bool [U], skipped int)``: U is static; ``valid`` is False on
  filler slots (item 0); ``skipped`` counts text items of the batch left out by the budget (a
  uniform random subset is kept, so no item is systematically never tuned).
  """
  ids = jnp.concatenate([inputs.reshape(-1), targets.reshape(-1)])  # [batch * 2 * seq]
  n = min(ids.shape[0], text_mask.shape[0])
  uniq = jnp.unique(ids, size=n, fill_value=0)  # [n] sorted, padded with 0
  has = jnp.take(text_mask, uniq) & (uniq > 0)  # [n]
  u = min(budget, n) if budget > 0 else n
  priority = jnp.where(has, jax.random.uniform(rng, (n,)), -1.0)
  _, pos = jax.lax.top_k(priority, u)  # [u] the kept text items first
  valid = jnp.take(has, pos)
  return jnp.take(uniq, pos), valid, jnp.sum(has) - jnp.sum(valid)


def with_fresh_rows(encoder: text_encoder.BertEncoder, content: ItemContent, table: jax.Array,
                    batch: dict[str, jax.Array], rng: jax.Array, *, budget: int,
                    freeze_layers: int = 0, batch_sharding: Any = None
                    ) -> tuple[ItemContent, dict[str, jax.Array]]:
  """``content`` whose text embeddings are ``table`` [vocab, hidden] with the batch items' rows
  re-encoded by ``encoder`` (differentiable in the encoder's parameters through those rows only).

  Returns the content and step metrics (``text_items`` re-encoded, ``text_items_skipped``).
  """
  items, valid, skipped = select_batch_items(batch['inputs'], batch['targets'],
                                             content.text_mask, budget, rng)
  tokens = jnp.take(content.text_tokens, items, axis=0)  # [U, text_len]
  if batch_sharding is not None:
    tokens = jax.lax.with_sharding_constraint(tokens, batch_sharding)
  fresh = text_encoder.embed_token_rows(encoder, tokens, pooling=POOLING, normalize=NORMALIZE,
                                        freeze_below=freeze_layers)  # [U, hidden]
  rows = jnp.where(valid[:, None], fresh, jnp.take(table, items, axis=0))
  # Filler slots all hold item 0 and write back its own (unchanged) row.
  text = table.at[items].set(rows)  # [vocab, hidden]
  return (dataclasses.replace(content, text=text),
          {'text_items': jnp.sum(valid), 'text_items_skipped': skipped})


def make_refresh(graphdef: nnx.GraphDef, table_sharding: Any, chunk: int) -> Callable:
  """Jitted ``(params, text_tokens [vocab, len], text_mask [vocab]) -> table [vocab, hidden]``:
  every row re-encoded by the live encoder, ``chunk`` rows at a time (zero where there is no
  text, as in the cache)."""

  @functools.partial(jax.jit, out_shardings=table_sharding)
  def refresh(params, tokens, text_mask):
    encoder = nnx.merge(graphdef, params).text_encoder
    vocab, length = tokens.shape
    size = math.gcd(vocab, chunk)
    def encode(rows):  # [size, len] -> [size, hidden]
      return text_encoder.embed_token_rows(encoder, rows, pooling=POOLING, normalize=NORMALIZE)
    out = jax.lax.map(encode, tokens.reshape(vocab // size, size, length))
    out = out.reshape(vocab, -1)  # [vocab, hidden]
    return jnp.where(text_mask[:, None], out, 0.0)
  return refresh


def refresh_state(state: dict[str, Any], refresh: Callable, content: ItemContent, step: int,
                  step_sharding: Any) -> dict[str, Any]:
  """``state`` with the text table re-encoded from its current encoder, stamped with ``step``."""
  table = refresh(state['params'], content.text_tokens, content.text_mask)
  return dict(state, text_table=table,
              text_table_step=jax.device_put(np.int32(step), step_sharding))


def content_from_state(content: ItemContent, state: dict[str, Any]) -> ItemContent:
  """The content evaluation and serving read: text rows from the state's (fine-tuned) table."""
  return dataclasses.replace(content, text=state['text_table'])


def checkpoint_content(graphdef: nnx.GraphDef, content: ItemContent, state: dict[str, Any],
                       step: int, chunk: int) -> ItemContent:
  """The content for a restored checkpoint ``step``: its saved table when that was computed at
  ``step`` (every evaluation checkpoint), else (a save between evaluations) re-encoded."""
  if int(jax.device_get(state['text_table_step'])) != int(step):
    logging.info('checkpoint %d holds a text table of step %d; re-encoding the catalog texts',
                 step, int(jax.device_get(state['text_table_step'])))
    sharding = state['text_table'].sharding
    state = dict(state, text_table=make_refresh(graphdef, sharding, chunk)(
        state['params'], content.text_tokens, content.text_mask))
  return content_from_state(content, state)


def batch_rows_sharding(mesh: jax.sharding.Mesh, rules: Any, rows: int, length: int) -> Any:
  """Sharding of the re-encoded token rows: split over the batch axes when they divide ``rows``."""
  spec = partitioning.logical_to_mesh(('batch', None), rules, mesh, (rows, length))
  return jax.sharding.NamedSharding(mesh, spec)


def step_budget(config: Any, batch_size: int, max_len: int, vocab: int) -> int:
  """The static number of item slots re-encoded per step."""
  n = min(batch_size * 2 * max_len, vocab)
  b = config.text_finetune.max_items_per_step
  return min(b, n) if b > 0 else n
