"""Attributions: how much each input of the recommender contributed to one recommended item's score.

The score explained is the model's logit of the item after the history (``hidden[-1] . row(item)``).
Inputs are scored by **integrated gradients** (Sundararajan et al., 2017) along a straight path
from a baseline to the actual input, or by **gradient x input** (one gradient at the input). Three kinds of
inputs, each a plain array the path scales, so a new kind is just one more leaf:

* ``history`` [batch, seq]: each history item's input embedding (baseline: the mean catalog item,
  an item that says nothing about this user) plus, when the decoder cross-attends to content,
  that item's content tokens in the memory;
* ``modalities`` [batch, M]: the recommended item's modality tokens (text, categorical bags,
  numeric, dense; baseline: the modality's type embedding, i.e. the token with the content removed), when the
  item's output representation is built from content (``item_repr`` content/both, tied head);
* ``context`` [batch, seq, C]: retrieved items (RAG, :mod:`llm4rec_jax.retrieval.context`) that
  joined the cross-attention memory; baseline: zero tokens.

All inputs move along the path together, so integrated gradients are *complete*: the attributions of
a row sum to ``score - baseline_score`` (up to the Riemann error of ``steps``). Batched and jitted:
one call explains a batch of (history, item) pairs.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llm4rec_jax.errors import ConfigError
from llm4rec_jax.model import decoder as decoder_lib

METHODS = ('integrated_gradients', 'grad_x_input')


@dataclasses.dataclass
class Attribution:
  """Attributions of a batch of (history, item) pairs (numpy, on the host)."""
  items: np.ndarray  # int [batch] the explained items
  score: np.ndarray  # [batch] their scores (logits) after the history
  baseline_score: np.ndarray  # [batch] the score with every attributed input at its baseline
  history: np.ndarray  # [batch, seq] per history position (0 at padding)
  modalities: np.ndarray | None = None  # [batch, M] the item's modality tokens
  context: np.ndarray | None = None  # [batch, seq, C] retrieved context items

  def total(self) -> np.ndarray:
    """[batch] the sum of every attribution (= score - baseline_score for integrated gradients)."""
    out = self.history.sum(axis=1)
    if self.modalities is not None:
      out = out + self.modalities.sum(axis=1)
    if self.context is not None:
      out = out + self.context.sum(axis=(1, 2))
    return out


def integrated_gradients(f: Callable[[Any], jax.Array], inputs: Any, baselines: Any, *,
                         steps: int = 32) -> Any:
  """Elementwise integrated gradients of ``f`` (pytree -> [batch] scores, rows independent).

  Returns a pytree shaped like ``inputs``: ``(x - x0) * integral_0^1 grad f(x0 + a (x - x0)) da``
  by the ``steps``-point midpoint rule; ``steps=0`` is gradient x input
  (``(x - x0) * grad f(x)``).
  """
  delta = jax.tree.map(jnp.subtract, inputs, baselines)
  grad = jax.grad(lambda z: jnp.sum(f(z)))
  if steps == 0:
    return jax.tree.map(jnp.multiply, delta, grad(inputs))

  def body(acc, alpha):
    point = jax.tree.map(lambda b, d: b + alpha * d, baselines, delta)
    return jax.tree.map(jnp.add, acc, grad(point)), None

  # Midpoint rule. (Gauss-Legendre nodes were tried: less accurate here, the path through attention
  # softmaxes is not smooth enough for them.)
  alphas = (jnp.arange(steps, dtype=jnp.float32) + 0.5) / steps
  total, _ = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, inputs), alphas)
  return jax.tree.map(lambda d, g: d * g / steps, delta, total)


def history_memory(model, inputs: jax.Array, catalog, context: jax.Array | None = None):
  """(memory, mask) the cross-attention blocks read, exactly as ``ItemDecoder.__call__`` builds it."""
  del model  # the memory depends only on the catalog encoding
  return decoder_lib.cross_attention_memory(catalog, inputs, context)


def _modality_path(model, items: jax.Array, content):
  """(actual tokens [b, M, d], baseline tokens, row_fn) for the recommended items' modality tokens,
  or None when the output row does not depend on content."""
  cfg = model.cfg
  if not (cfg.uses_content and cfg.item_repr != 'id' and cfg.tie_embeddings):
    return None
  tokens_all, mask_all = model.fusion.tokenizer(content)  # [vocab, M, d], [vocab, M]
  tokens = jnp.take(tokens_all, items, axis=0)
  tmask = jnp.take(mask_all, items, axis=0)
  baseline = jnp.broadcast_to(model.fusion.tokenizer.type_embed[...], tokens.shape)
  fused_actual = jax.lax.stop_gradient(model.fusion.fuse(tokens, tmask)[0])  # [b, d]

  def row_fn(table_rows, tok):
    # The catalog row with the content part recomputed from `tok` (equal to it at the input).
    return table_rows - fused_actual + model.fusion.fuse(tok, tmask)[0]

  return tokens, baseline, row_fn


def attribute(model, inputs: jax.Array, items: jax.Array, content=None,
              context: jax.Array | None = None, *, steps: int = 32,
              method: str = 'integrated_gradients') -> dict[str, jax.Array]:
  """Traceable core of :func:`make_attribution_fn`: one model, device arrays in and out.

  inputs int [b, s] left-padded histories; items int [b]; context int [b, s, C] or None.
  """
  if method not in METHODS:
    raise ValueError(f'unknown attribution method {method!r}; choose from {METHODS}')
  if model.cfg.title_tokens:  # the inputs would also need the title tokens' embeddings
    raise ConfigError('model.title_tokens', 'attributions are not built for histories entered '
                      'with title tokens')
  catalog = model.encode_catalog(content)
  valid = inputs > 0
  x = model.embed(inputs, catalog) * valid[..., None]  # [b, s, d]
  use_memory = bool(model.cfg.cross_attention_every)
  memory, memory_mask = (history_memory(model, inputs, catalog, context) if use_memory
                         else (None, None))
  table_rows = jnp.take(model.output_table(catalog), items, axis=0)  # [b, d]
  modal = _modality_path(model, items, content)

  def score(z):
    hidden = model.hidden_from_embeddings(z['x'], valid, z.get('memory'), memory_mask)[:, -1]
    rows = modal[2](table_rows, z['tokens']) if modal is not None else table_rows
    return jnp.sum(hidden * rows.astype(hidden.dtype), axis=-1)  # [b]

  z = {'x': x}
  # Baseline: the mean catalog item at every history position. A zero embedding would put the
  # path through the RMSNorm singularity at 0, where the score jumps (the midpoint rule misses it).
  real = decoder_lib.catalog_mask(model.cfg)
  mean_item = (jnp.sum(jnp.where(real[:, None], catalog.table, 0.0), axis=0)
               / model.cfg.num_items)  # [d]
  mean_x = model.embed(jnp.zeros((1, 1), jnp.int32),
                       dataclasses.replace(catalog, table=mean_item[None]))[0, 0]
  z0 = {'x': jnp.broadcast_to(mean_x, x.shape) * valid[..., None]}
  if use_memory:
    z['memory'], z0['memory'] = memory, jnp.zeros_like(memory)
  if modal is not None:
    z['tokens'], z0['tokens'] = modal[0], modal[1]
  attr = integrated_gradients(score, z, z0, steps=0 if method == 'grad_x_input' else steps)
  history = jnp.sum(attr['x'], axis=-1) * valid  # [b, s]
  out = {'score': score(z), 'baseline_score': score(z0)}
  if use_memory:
    per_token = jnp.sum(attr['memory'], axis=-1)  # [b, s, M (+ C*M)]
    m = model.cfg.content.num_tokens
    history = history + jnp.sum(per_token[..., :m], axis=-1)
    if context is not None:
      b, s, c = context.shape
      out['context'] = jnp.sum(per_token[..., m:].reshape(b, s, c, m), axis=-1)
  if modal is not None:
    out['modalities'] = jnp.sum(attr['tokens'], axis=-1)  # [b, M]
  out['history'] = history
  return out


@functools.lru_cache(maxsize=8)
def make_attribution_fn(graphdef: nnx.GraphDef, *, steps: int = 32,
                        method: str = 'integrated_gradients') -> Callable:
  """Jitted ``(params, inputs, items, content=None, context=None) -> dict`` of device arrays
  (``score``, ``baseline_score``, ``history`` and, where they exist, ``modalities``,
  ``context``)."""

  @jax.jit
  def fn(params, inputs, items, content=None, context=None):
    model = nnx.merge(graphdef, params)
    return attribute(model, inputs, items, content, context, steps=steps, method=method)

  return fn


def attribute_batch(graphdef: nnx.GraphDef, params: Any, inputs: np.ndarray, items: np.ndarray,
                    content=None, context: np.ndarray | None = None, *, steps: int = 32,
                    method: str = 'integrated_gradients', batch_size: int = 64) -> Attribution:
  """Attributions for many (history, item) pairs, ``batch_size`` at a time (the last batch is
  padded to the same static shape, so one compilation serves every batch)."""
  fn = make_attribution_fn(graphdef, steps=steps, method=method)
  inputs = np.asarray(inputs, np.int32)
  items = np.asarray(items, np.int32)
  n = len(items)
  parts: dict[str, list[np.ndarray]] = {}
  for start in range(0, n, batch_size):
    sl = slice(start, min(start + batch_size, n))
    pad = batch_size - (sl.stop - sl.start)
    b_in = np.pad(inputs[sl], ((0, pad), (0, 0)))
    b_it = np.pad(items[sl], (0, pad), constant_values=1)
    b_ctx = None if context is None else np.pad(context[sl], ((0, pad), (0, 0), (0, 0)))
    out = jax.device_get(fn(params, b_in, b_it, content, b_ctx))
    for k, v in out.items():
      parts.setdefault(k, []).append(np.asarray(v)[:batch_size - pad])
  got = {k: np.concatenate(v) for k, v in parts.items()}
  return Attribution(items=items, score=got['score'], baseline_score=got['baseline_score'],
                     history=got['history'], modalities=got.get('modalities'),
                     context=got.get('context'))
