"""Decoder-only transformer over item tokens, with an output head over the whole catalog."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from llm4rec_jax.errors import ConfigError
from llm4rec_jax.model.layers import Attention, RMSNorm, SwiGLU, param

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Architecture of :class:`ItemDecoder` (built from ``config.model`` by :func:`from_config`)."""
  vocab_size: int  # item ids 0..vocab_size-1; 0 is padding, ids > num_items pad for sharding
  num_items: int
  max_len: int = 50
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 1
  num_kv_heads: int = 0  # 0 = same as num_heads (no grouping)
  head_dim: int = 0  # 0 = d_model // num_heads
  mlp_dim: int = 0  # 0 = 4 * d_model
  dropout: float = 0.2
  tie_embeddings: bool = True
  rope_theta: float = 10_000.0
  embed_scale: bool = True
  dtype: str = 'float32'  # compute dtype; parameters stay float32

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.d_model // self.num_heads

  @property
  def ffn_dim(self) -> int:
    return self.mlp_dim or 4 * self.d_model


def from_config(model_cfg: Any, *, num_items: int, vocab_multiple: int) -> DecoderConfig:
  """Builds the DecoderConfig; the vocabulary is padded up to a multiple of ``vocab_multiple``."""
  fields = {f.name for f in dataclasses.fields(DecoderConfig)} - {'vocab_size', 'num_items'}
  kwargs = {k: model_cfg[k] for k in fields if k in model_cfg}
  vocab = model_cfg.get('vocab_size', 0) or -(-(num_items + 1) // vocab_multiple) * vocab_multiple
  if vocab <= num_items:
    raise ConfigError('model.vocab_size', f'{vocab} must exceed the {num_items} items (id 0 = pad)')
  return DecoderConfig(vocab_size=vocab, num_items=num_items, **kwargs)


class Block(nnx.Module):
  """Pre-norm transformer block: attention and SwiGLU, each with a residual and dropout."""

  def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
    dt = DTYPES[cfg.dtype]
    self.attn_norm = RMSNorm(cfg.d_model, rngs=rngs)
    self.attn = Attention(cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head,
                          rope_theta=cfg.rope_theta, dtype=dt, rngs=rngs)
    self.mlp_norm = RMSNorm(cfg.d_model, rngs=rngs)
    self.mlp = SwiGLU(cfg.d_model, cfg.ffn_dim, dtype=dt, rngs=rngs)
    self.dropout = nnx.Dropout(cfg.dropout)

  def __call__(self, x, positions, mask, *, deterministic: bool, rngs: nnx.Rngs | None):
    h = self.attn(self.attn_norm(x), positions, mask)
    x = x + self.dropout(h, deterministic=deterministic, rngs=rngs)
    h = self.mlp(self.mlp_norm(x))
    return x + self.dropout(h, deterministic=deterministic, rngs=rngs)


class ItemDecoder(nnx.Module):
  """Items as tokens: embed a left-padded item sequence, run causal blocks, score the catalog.

  ``__call__`` returns final hidden states; :meth:`logits` scores them against the output item table
  (the input table when ``tie_embeddings``). Losses and evaluation work from hidden states so they
  can avoid materialising logits at padded positions.
  """

  def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    emb_init = nnx.initializers.normal(stddev=cfg.d_model ** -0.5)
    self.item_embed = param(rngs, emb_init, (cfg.vocab_size, cfg.d_model), ('vocab', 'embed'))
    self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.final_norm = RMSNorm(cfg.d_model, rngs=rngs)
    self.embed_dropout = nnx.Dropout(cfg.dropout)
    if not cfg.tie_embeddings:
      self.output_embed = param(rngs, emb_init, (cfg.vocab_size, cfg.d_model), ('vocab', 'embed'))

  def embed(self, items: jax.Array) -> jax.Array:
    x = jnp.take(self.item_embed[...], items, axis=0)  # [batch, seq, d_model]
    if self.cfg.embed_scale:
      x = x * (self.cfg.d_model ** 0.5)
    return x.astype(DTYPES[self.cfg.dtype])

  def __call__(self, items: jax.Array, *, deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """items: int [batch, seq] left-padded with 0 -> hidden [batch, seq, d_model] (float32)."""
    valid = items > 0  # [batch, seq]
    # Positions count real items only, so left padding does not shift them.
    positions = jnp.maximum(jnp.cumsum(valid, axis=-1) - 1, 0)
    seq = items.shape[-1]
    causal = jnp.tril(jnp.ones((seq, seq), bool))
    # Padded queries see only themselves, so no softmax row is empty.
    mask = (causal[None] & valid[:, None, :]) | jnp.eye(seq, dtype=bool)[None]
    mask = mask[:, None]  # [batch, 1, seq, seq]
    x = self.embed(items) * valid[..., None]
    x = self.embed_dropout(x, deterministic=deterministic, rngs=rngs)
    for block in self.blocks:
      x = block(x, positions, mask, deterministic=deterministic, rngs=rngs)
    return self.final_norm(x).astype(jnp.float32)

  def output_table(self) -> jax.Array:
    """[vocab, d_model] item embeddings used to score the catalog."""
    table = self.item_embed if self.cfg.tie_embeddings else self.output_embed
    return table[...]

  def logits(self, hidden: jax.Array) -> jax.Array:
    """hidden [..., d_model] -> [..., vocab]; padding and out-of-catalog ids are -inf."""
    table = self.output_table().astype(hidden.dtype)
    scores = hidden @ table.T
    return jnp.where(catalog_mask(self.cfg), scores, -jnp.inf)


def catalog_mask(cfg: DecoderConfig) -> jax.Array:
  """bool [vocab]: True for real items 1..num_items."""
  ids = jnp.arange(cfg.vocab_size)
  return (ids >= 1) & (ids <= cfg.num_items)
