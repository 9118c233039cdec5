"""What online adaptation trains: the parameter selection (``online.params``) and its optimizer.

A step's AdamW updates only the selected parameters (the others get no gradient and a zero update);
the catalog rows of items registered online move at ``online.new_item_learning_rate``, as a factor
on their rows of every catalog-sharded update.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from llm4rec_jax.errors import ConfigError

# online.params='embeddings': the item tables and what computes item vectors from content.
EMBEDDING_PARAMS = ('item_embed', 'output_embed', 'no_content', 'fusion')


def trainable_mask(abstract_params: Any, selection: str) -> Any:
  """bool tree like ``abstract_params``: which parameters ``online.params`` selects.

  ``selection``: 'all', 'embeddings', or comma-separated path prefixes ('blocks.1', 'fusion').
  """
  paths = {jax.tree_util.keystr(p, simple=True, separator='.'): leaf
           for p, leaf in jax.tree_util.tree_leaves_with_path(abstract_params)}
  if selection == 'all':
    prefixes = ('',)
  elif selection == 'embeddings':
    prefixes = EMBEDDING_PARAMS
  else:
    prefixes = tuple(p.strip() for p in selection.split(',') if p.strip())
    unknown = [p for p in prefixes if not any(_matches(k, p) for k in paths)]
    if unknown or not prefixes:
      tops = sorted({k.split('.')[0] for k in paths})
      raise ConfigError('online.params', f'{unknown or selection!r} match no parameter; use '
                        f"'all', 'embeddings' or path prefixes of {tops}")
  return jax.tree_util.tree_map_with_path(
      lambda p, _: any(_matches(jax.tree_util.keystr(p, simple=True, separator='.'), q)
                       for q in prefixes), abstract_params)


def _matches(path: str, prefix: str) -> bool:
  return not prefix or path == prefix or path.startswith(prefix + '.')


def make_online_optimizer(oc: Any, mask: Any) -> optax.GradientTransformation:
  """Clipped AdamW at a constant ``online.learning_rate``; the update of every parameter outside
  ``mask`` is zero (its gradient is stopped too, so it costs no backward pass)."""
  keep = optax.stateless(lambda updates, _params=None: jax.tree.map(
      lambda u, m: u if m else jnp.zeros_like(u), updates, mask))
  decay = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  return optax.chain(
      optax.clip_by_global_norm(oc.grad_clip) if oc.grad_clip > 0 else optax.identity(),
      optax.adamw(oc.learning_rate, b1=oc.b1, b2=oc.b2, weight_decay=oc.weight_decay, mask=decay),
      keep)


def new_item_row_scale(vocab_size: int, num_trained: int, scale: float) -> np.ndarray:
  """float32 [vocab]: the factor on each catalog row's optimizer update, ``scale`` for the rows of
  items registered online (ids > ``num_trained``), 1 for the trained items and padding."""
  out = np.ones(vocab_size, np.float32)
  out[num_trained + 1:] = scale
  return out


def scale_catalog_rows(updates: Any, vocab_leaves: Any, row_scale: jax.Array) -> Any:
  """Multiplies row i of every catalog-sharded update (``vocab_leaves``) by ``row_scale[i]``."""
  def one(u, is_vocab):
    if not is_vocab:
      return u
    return u * row_scale.reshape((-1,) + (1,) * (u.ndim - 1)).astype(u.dtype)
  return jax.tree.map(one, updates, vocab_leaves)
