"""Semantic-ID output head: predict the next item as a code tuple, one level at a time.

An alternative to scoring the whole catalog (``ItemDecoder.logits``): the decoder's hidden state at
a position predicts the next item's codes (see ``semantic_ids``) autoregressively. Level ``l`` sees
the hidden state plus embeddings of the codes chosen at levels ``< l``; training is teacher-forced
(:func:`semantic_id_loss`) and retrieval is a beam search restricted to real items by the prefix
trie (:func:`constrained_beam_search`).

Logical axes: code tables use ``codes`` (one codebook's entries; mapped to no mesh axis), plus the
decoder's ``embed``/``mlp``/``norm``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from llm4rec_jax.errors import ConfigError, DataError
from llm4rec_jax.model.layers import RMSNorm, SwiGLU, fan_in_init, param
from llm4rec_jax.model.semantic_ids import PrefixTrie


class CodeLevel(nnx.Module):
  """One level: ``logits = norm(x + mlp(norm(x))) @ out``, and the embedding of its codes."""

  def __init__(self, d_model: int, codebook_size: int, mlp_dim: int, *, embed_codes: bool, dtype,
               rngs: nnx.Rngs):
    self.in_norm = RMSNorm(d_model, rngs=rngs)
    self.mlp = SwiGLU(d_model, mlp_dim, dtype=dtype, rngs=rngs)
    self.out_norm = RMSNorm(d_model, rngs=rngs)
    self.out = param(rngs, fan_in_init(d_model), (d_model, codebook_size), ('embed', 'codes'))
    if embed_codes:  # the last level's codes condition nothing
      # Unit scale, like the decoder's normalised hidden states they are added to.
      self.code_embed = param(rngs, nnx.initializers.normal(stddev=1.0), (codebook_size, d_model),
                              ('codes', 'embed'))

  def logits(self, x: jax.Array) -> jax.Array:
    """x [..., d_model] -> float32 [..., codebook_size]."""
    x = x + self.mlp(self.in_norm(x))
    return self.out_norm(x).astype(jnp.float32) @ self.out[...]

  def embed(self, codes: jax.Array) -> jax.Array:
    """int [...] -> [..., d_model]; negative (padding) codes are clamped to 0, callers mask them."""
    return jnp.take(self.code_embed[...], jnp.maximum(codes, 0), axis=0)


class SemanticIdHead(nnx.Module):
  """Predicts an item's code tuple from a decoder hidden state ``h`` [..., d_model].

  ``mlp_dim`` 0 means ``2 * d_model``. Level logits are float32.
  """

  def __init__(self, d_model: int, codebook_sizes: Sequence[int], *, mlp_dim: int = 0,
               dtype=jnp.float32, rngs: nnx.Rngs):
    if not codebook_sizes or min(codebook_sizes) < 1:
      raise ConfigError('model.semantic_ids.codebook_sizes',
                        f'need >= 1 level of size >= 1, got {tuple(codebook_sizes)}')
    self.codebook_sizes = tuple(int(s) for s in codebook_sizes)
    last = len(self.codebook_sizes) - 1
    self.levels = nnx.List([
        CodeLevel(d_model, size, mlp_dim or 2 * d_model, embed_codes=level < last, dtype=dtype,
                  rngs=rngs) for level, size in enumerate(self.codebook_sizes)])

  @property
  def num_levels(self) -> int:
    return len(self.codebook_sizes)

  def level_logits(self, level: int, hidden: jax.Array, prefix: jax.Array) -> jax.Array:
    """Level ``level`` logits given the codes before it.

    hidden [..., d_model], prefix int [..., level] -> float32 [..., codebook_sizes[level]].
    """
    x = hidden.astype(jnp.float32)
    for j in range(level):
      x = x + self.levels[j].embed(prefix[..., j])  # [..., d_model]
    return self.levels[level].logits(x)

  def log_probs(self, hidden: jax.Array, codes: jax.Array) -> jax.Array:
    """Teacher-forced log-probability of each level of ``codes``.

    hidden [..., d_model], codes int [..., L] -> float32 [..., L]; an item's total log-prob is the
    sum over levels. Negative (padding) codes give meaningless values: weight them out.
    """
    x = hidden.astype(jnp.float32)
    out = []
    for level, layer in enumerate(self.levels):
      logits = layer.logits(x)  # [..., codebook]
      labels = jnp.maximum(codes[..., level], 0)
      out.append(-optax.softmax_cross_entropy_with_integer_labels(logits, labels))
      if level + 1 < self.num_levels:
        x = x + layer.embed(codes[..., level])
    return jnp.stack(out, axis=-1)


def semantic_id_loss(head: SemanticIdHead, hidden: jax.Array, target_codes: jax.Array,
                     weights: jax.Array) -> jax.Array:
  """Sum over levels of the cross-entropy, averaged over targets with weights.

  hidden [N, d_model], target_codes int [N, L], weights [N] (0 for padding) -> scalar.
  """
  nll = -jnp.sum(head.log_probs(hidden, target_codes), axis=-1)  # [N]
  w = weights.astype(jnp.float32)
  return jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1e-9)


def constrained_beam_search(head: SemanticIdHead, hidden: jax.Array, trie: PrefixTrie, *,
                            beam_size: int, top_k: int, exclude: jax.Array | None = None
                            ) -> tuple[jax.Array, jax.Array]:
  """The ``top_k`` items with the highest total log-prob that a trie-constrained beam search finds.

  hidden [B, d_model]; ``exclude`` optional bool [B, >= num_items + 1], True for items that must not
  be returned (e.g. already seen), applied at the last level. Scores are sums of the head's
  per-level log-softmax (not renormalised over the allowed codes). Returns item ids int32 [B, top_k]
  (only real items 1..num_items, best first) and float32 scores [B, top_k]; slots with no reachable
  item hold id 0 and score -inf. Traceable: ``beam_size``/``top_k`` and the trie's levels are
  static.
  """
  if head.codebook_sizes != trie.codebook_sizes:
    raise ConfigError('model.semantic_ids.codebook_sizes',
                      f'head {head.codebook_sizes} does not match trie {trie.codebook_sizes}')
  if beam_size < 1 or top_k < 1:
    raise ConfigError('eval.beam_size', f'beam_size={beam_size} and top_k={top_k} must be >= 1')
  if exclude is not None and (exclude.ndim != 2 or exclude.shape[0] != hidden.shape[0]
                              or exclude.shape[1] <= trie.num_items):
    # A narrower mask would be silently clipped by the gather below.
    raise DataError(f'exclude mask {exclude.shape} must be [{hidden.shape[0]}, '
                    f'>= {trie.num_items + 1}]')
  batch = hidden.shape[0]
  nodes = jnp.zeros((batch, 1), jnp.int32)  # [B, beams] prefix node per beam (-1 = dead)
  scores = jnp.zeros((batch, 1), jnp.float32)  # [B, beams]
  prefix = jnp.zeros((batch, 1, 0), jnp.int32)  # [B, beams, level]
  for level in range(trie.num_levels):
    beams, size = nodes.shape[1], trie.codebook_sizes[level]
    h = jnp.broadcast_to(hidden[:, None, :], (batch, beams, hidden.shape[-1]))
    logp = jax.nn.log_softmax(head.level_logits(level, h, prefix), axis=-1)  # [B, beams, size]
    children = trie.next_nodes(level, nodes)  # [B, beams, size]; items at the last level
    last = level + 1 == trie.num_levels
    if last and exclude is not None:
      banned = jnp.take_along_axis(exclude, jnp.maximum(children, 0).reshape(batch, -1), axis=1)
      children = jnp.where(banned.reshape(children.shape), -1, children)
    cand = jnp.where(children >= 0, scores[..., None] + logp, -jnp.inf).reshape(batch, -1)
    children = children.reshape(batch, -1)  # [B, beams * size]
    keep = top_k if last else min(beam_size, beams * size)
    if cand.shape[1] < keep:  # fewer candidates than slots: pad with dead ones
      pad = keep - cand.shape[1]
      cand = jnp.pad(cand, ((0, 0), (0, pad)), constant_values=-jnp.inf)
      children = jnp.pad(children, ((0, 0), (0, pad)), constant_values=-1)
    scores, idx = jax.lax.top_k(cand, keep)  # [B, keep], best first
    nodes = jnp.take_along_axis(children, idx, axis=1)
    scores = jnp.where(nodes >= 0, scores, -jnp.inf)
    parent, code = idx // size, (idx % size).astype(jnp.int32)
    parent = jnp.minimum(parent, beams - 1)  # padded slots are dead; any parent will do
    prefix = jnp.concatenate(
        [jnp.take_along_axis(prefix, parent[..., None], axis=1), code[..., None]], axis=-1)
  return jnp.maximum(nodes, 0).astype(jnp.int32), scores
