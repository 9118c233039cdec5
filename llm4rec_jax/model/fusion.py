"""Multimodal item fusion and the decoder's fused multimodal cross-attention.

:class:`ContentTokenizer` turns each modality of an item into a token (an embedding bag per
categorical field, one token for the numeric fields, one per dense matrix, one for the text
embedding); :class:`CrossModalFusion` lets the tokens of one item attend to each other, then pools
them with learned, input-dependent modality weights plus a residual mean path. Missing modalities are
masked out of both the attention and the pooling; an item with no content at all is reported by the
``has_content`` mask so callers decide what it gets (never a silent zero vector).

:class:`GatedCrossAttention` is the decoder side: a block's hidden states attend to the content
tokens of the items in the history (causally: position ``t`` sees items ``<= t``), scaled by
``tanh(gate)`` with the gate initialised to 0, so a freshly built model equals the plain decoder.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from llm4rec_jax.data.content import ContentSpec, ItemContent
from llm4rec_jax.model.layers import RMSNorm, SwiGLU, fan_in_init, param


@dataclasses.dataclass
class CatalogEncoding:
  """What the decoder needs about every vocabulary id, computed once per step.

  ``table`` [vocab, d_model] is the item representation used for input and output; ``tokens``
  [vocab, M, d_model] and ``token_mask`` [vocab, M] are the content tokens the decoder's
  cross-attention reads (None without content); ``title_tokens`` int [vocab, T] and
  ``title_table`` [rows, d_model] each item's title as rows of the backbone's text embeddings
  (``model.title_tokens``; None without).
  """
  table: jax.Array
  tokens: jax.Array | None = None
  token_mask: jax.Array | None = None
  title_tokens: jax.Array | None = None
  title_table: jax.Array | None = None


class ContentTokenizer(nnx.Module):
  """Item content -> ``[vocab, M, d_model]`` modality tokens and a ``[vocab, M]`` presence mask."""

  def __init__(self, spec: ContentSpec, d_model: int, *, rngs: nnx.Rngs):
    self.spec = spec
    emb = nnx.initializers.normal(stddev=d_model ** -0.5)
    self.cat_tables = nnx.List([param(rngs, emb, (n, d_model), ('cat_vocab', 'embed'))
                                for _, n, _ in spec.categorical])
    f = len(spec.numeric)
    if f:
      self.num_scale = param(rngs, emb, (f, d_model), ('num_fields', 'embed'))
      self.num_bias = param(rngs, emb, (f, d_model), ('num_fields', 'embed'))
      self.num_missing = param(rngs, emb, (f, d_model), ('num_fields', 'embed'))
    self.dense_proj = nnx.List([param(rngs, fan_in_init(dim), (dim, d_model), ('dense_in', 'embed'))
                                for _, dim in spec.dense])
    if spec.text_dim:
      self.text_proj = param(rngs, fan_in_init(spec.text_dim), (spec.text_dim, d_model),
                             ('text_in', 'embed'))
    # Which modality a token is, so fusion attention can tell them apart.
    self.type_embed = param(rngs, emb, (spec.num_tokens, d_model), ('modality', 'embed'))

  def __call__(self, content: ItemContent) -> tuple[jax.Array, jax.Array]:
    tokens = []
    for table, ids in zip(self.cat_tables, content.categorical):
      present = (ids > 0)[..., None]  # [vocab, max_values, 1]
      bag = jnp.sum(jnp.take(table[...], ids, axis=0) * present, axis=1)  # [vocab, d_model]
      tokens.append(bag / jnp.maximum(jnp.sum(present, axis=1), 1.0))
    if self.spec.numeric:
      m = content.numeric_mask[..., None]  # [vocab, fields, 1]
      per_field = content.numeric[..., None] * self.num_scale[...] + self.num_bias[...]
      # A missing numeric field gets its own learned vector; the token is masked only when every
      # field is missing.
      tokens.append(jnp.mean(jnp.where(m, per_field, self.num_missing[...]), axis=1))
    for proj, x in zip(self.dense_proj, content.dense):
      tokens.append(x @ proj[...])  # [vocab, d_model]
    if self.spec.text_dim:
      tokens.append(content.text @ self.text_proj[...])
    x = jnp.stack(tokens, axis=1) + self.type_embed[...]  # [vocab, M, d_model]
    return x, content.token_mask()


class TokenAttention(nnx.Module):
  """Unpositioned multi-head self-attention among an item's modality tokens, with a key mask."""

  def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs):
    head_dim = d_model // num_heads
    init = fan_in_init(d_model)
    self.wqkv = param(rngs, init, (3, d_model, num_heads, head_dim),
                      (None, 'embed', 'heads', 'head_dim'))
    self.wo = param(rngs, fan_in_init(d_model), (num_heads, head_dim, d_model),
                    ('heads', 'head_dim', 'embed'))

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    n, m, d = x.shape
    _, _, heads, head_dim = self.wqkv.shape
    flat = x.reshape(n * m, d)  # 2-D matmuls: XLA:CPU runs [n, 1, d] products ~1.5x slower
    wo = self.wo[...].reshape(heads * head_dim, d)
    if m == 1:
      # One token per item sees only itself: its softmax weight is exactly 1, so the output is
      # its value projection (queries and keys are skipped; the parameters stay the same).
      v = flat @ self.wqkv[2].reshape(d, heads * head_dim)
      return (v @ wo).reshape(n, m, d)
    qkv = flat @ jnp.moveaxis(self.wqkv[...], 0, 1).reshape(d, 3 * heads * head_dim)
    q, k, v = jnp.moveaxis(qkv.reshape(n, m, 3, heads, head_dim), 2, 0)  # each [n, M, h, hd]
    # Each token sees the present tokens and itself, so no softmax row is empty.
    attn_mask = (mask[:, None, :] | jnp.eye(m, dtype=bool)[None])[:, None]  # [vocab, 1, M, M]
    out = jax.nn.dot_product_attention(q, k, v, mask=attn_mask)
    return (out.reshape(n * m, heads * head_dim) @ wo).reshape(n, m, d)


class FusionLayer(nnx.Module):
  """Pre-norm cross-modal attention + SwiGLU, each with a residual."""

  def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(d_model, rngs=rngs)
    self.attn = TokenAttention(d_model, num_heads, rngs=rngs)
    self.mlp_norm = RMSNorm(d_model, rngs=rngs)
    self.mlp = SwiGLU(d_model, 2 * d_model, dtype=jnp.float32, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    n, m, d = x.shape
    flat = x.reshape(n * m, d)  # per-token ops on 2-D arrays: XLA:CPU runs [n, M, d] ones slower
    flat = flat + self.attn(self.attn_norm(flat).reshape(n, m, d), mask).reshape(n * m, d)
    return (flat + self.mlp(self.mlp_norm(flat))).reshape(n, m, d)


class CrossModalFusion(nnx.Module):
  """Modality tokens -> one content embedding per item (plus the contextualised tokens).

  ``fused = sum_m softmax_m(score(token_m)) * token_m + mean_m(input token_m)`` over present
  modalities: the softmax weights are computed per item from its own tokens (adaptive weighting) and
  the mean of the raw tokens is the residual path.
  """

  def __init__(self, spec: ContentSpec, d_model: int, *, num_layers: int, num_heads: int,
               rngs: nnx.Rngs):
    self.tokenizer = ContentTokenizer(spec, d_model, rngs=rngs)
    self.layers = nnx.List([FusionLayer(d_model, num_heads, rngs=rngs) for _ in range(num_layers)])
    self.norm = RMSNorm(d_model, rngs=rngs)
    self.score_hidden = param(rngs, fan_in_init(d_model), (d_model, d_model), ('embed', 'mlp'))
    self.score_out = param(rngs, nnx.initializers.zeros, (d_model,), ('mlp',))
    self.out_norm = RMSNorm(d_model, rngs=rngs)
    # Content rows enter the same table as id embeddings (std d**-0.5 at init), so match that scale.
    self.out_proj = param(rngs, nnx.initializers.truncated_normal(stddev=1.0 / d_model),
                          (d_model, d_model), ('embed', 'embed_out'))

  def __call__(self, content: ItemContent):
    """-> (content embedding [vocab, d_model], tokens [vocab, M, d_model], token mask [vocab, M],
    has_content [vocab])."""
    x0, mask = self.tokenizer(content)
    return self.fuse(x0, mask)

  def fuse(self, x0: jax.Array, mask: jax.Array):
    """Modality tokens x0 [items, M, d_model] with presence mask [items, M] -> the same outputs as
    ``__call__`` (split out so attributions can differentiate through an item's modality tokens)."""
    x = x0
    for layer in self.layers:
      x = layer(x, mask)
    n, m, d = x.shape
    flat = self.norm(x.reshape(n * m, d))
    x = flat.reshape(n, m, d)  # [vocab, M, d_model]
    score = (jax.nn.silu(flat @ self.score_hidden[...]) @ self.score_out[...]).reshape(n, m)
    weights = jax.nn.softmax(jnp.where(mask, score, -1e30), axis=-1) * mask
    count = jnp.maximum(jnp.sum(mask, axis=-1, keepdims=True), 1)
    residual = jnp.sum(x0 * mask[..., None], axis=1) / count  # [vocab, d_model]
    fused = jnp.sum(weights[..., None] * x, axis=1) + residual
    emb = self.out_norm(fused) @ self.out_proj[...]
    has_content = jnp.any(mask, axis=-1)
    return emb, x, mask, has_content


class GatedCrossAttention(nnx.Module):
  """Decoder states attend to the content tokens of the history items, behind a zero-init gate."""

  def __init__(self, d_model: int, num_heads: int, head_dim: int, *, dtype, rngs: nnx.Rngs):
    init = fan_in_init(d_model)
    self.norm = RMSNorm(d_model, rngs=rngs)
    self.wq = param(rngs, init, (d_model, num_heads, head_dim), ('embed', 'heads', 'head_dim'))
    self.wk = param(rngs, init, (d_model, num_heads, head_dim), ('embed', 'heads', 'head_dim'))
    self.wv = param(rngs, init, (d_model, num_heads, head_dim), ('embed', 'heads', 'head_dim'))
    self.wo = param(rngs, fan_in_init(num_heads * head_dim), (num_heads, head_dim, d_model),
                    ('heads', 'head_dim', 'embed'))
    self.gate = param(rngs, nnx.initializers.zeros, (1,), ('norm',))
    self.dtype = dtype

  def __call__(self, x: jax.Array, memory: jax.Array, memory_mask: jax.Array) -> jax.Array:
    """x [batch, seq, d]; memory [batch, seq, M, d] (tokens of the item at each position);
    memory_mask [batch, seq, M]. Returns the gated update to add to ``x``."""
    dt = self.dtype
    b, s, m, d = memory.shape
    mem = memory.reshape(b, s * m, d).astype(dt)
    q = jnp.einsum('bld,dhk->blhk', self.norm(x).astype(dt), self.wq[...].astype(dt))
    k = jnp.einsum('bld,dhk->blhk', mem, self.wk[...].astype(dt))  # [batch, s*M, heads, head_dim]
    v = jnp.einsum('bld,dhk->blhk', mem, self.wv[...].astype(dt))
    # A zero key/value "sink" is always visible: positions with no visible content (padding, or
    # items without content) attend to it and receive nothing, instead of an empty softmax.
    k = jnp.concatenate([jnp.zeros_like(k[:, :1]), k], axis=1)
    v = jnp.concatenate([jnp.zeros_like(v[:, :1]), v], axis=1)
    item_pos = jnp.repeat(jnp.arange(s), m)  # [s*M] position of each memory token
    causal = item_pos[None, :] <= jnp.arange(s)[:, None]  # [s, s*M]
    visible = causal[None] & memory_mask.reshape(b, 1, s * m)  # [batch, s, s*M]
    visible = jnp.concatenate([jnp.ones((b, s, 1), bool), visible], axis=-1)
    out = jax.nn.dot_product_attention(q, k, v, mask=visible[:, None])  # [batch, s, heads, hd]
    h = jnp.einsum('blhk,hkd->bld', out, self.wo[...].astype(dt))
    return jnp.tanh(self.gate[...]).astype(dt) * h
