"""Decoder-only transformer over item tokens, with an output head over the whole catalog."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from llm4rec_jax.data.content import ContentSpec, ItemContent
from llm4rec_jax.errors import ConfigError
from llm4rec_jax.model.adversary import AdversaryHead
from llm4rec_jax.model import lora as lora_lib
from llm4rec_jax.model.fusion import CatalogEncoding, CrossModalFusion, GatedCrossAttention
from llm4rec_jax.model.layers import (LAYER_TYPES, Attention, CausalFilter, RMSNorm, SwiGLU,
                                      layer_attention, param)
from llm4rec_jax.model.semantic_head import SemanticIdHead
from llm4rec_jax.model.text_encoder import BertConfig, BertEncoder

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
  attention_impl: str = 'auto'  # 'auto' (cuDNN on GPUs in bf16/fp16, else XLA), 'xla' or 'cudnn'
  rms_eps: float = 1e-6  # RMSNorm epsilon (a Hugging Face backbone's rms_norm_eps)
  # () or ('llama3', factor, low_freq_factor, high_freq_factor, original_max_len): a Hugging Face
  # backbone's rotary rescaling (layers.rope_frequencies).
  rope_scaling: tuple = ()
  attention_bias: bool = False  # q/k/v projection biases (a Qwen2 backbone)
  qk_norm: bool = False  # RMSNorm over each query/key head before the rotary (Qwen3, Gemma 3)
  # Options of Hugging Face backbones (layers.layer_attention): per layer 'full_attention' or
  # 'sliding_attention' (() = all full); how far back sliding layers see; their rotary base and
  # scaling (local_rope_theta 0 = the full layers'); the score scale query_pre_attn_scalar ** -0.5
  # (0 = head_dim ** -0.5); tanh soft-capping of attention scores (0 = none; Gemma 2); norms on
  # the attention and MLP outputs before their residuals (Gemma 2/3); the MLP's gate activation.
  layer_types: tuple[str, ...] = ()
  sliding_window: int = 0
  local_rope_theta: float = 0.0
  local_rope_scaling: tuple = ()
  query_pre_attn_scalar: float = 0.0
  attn_softcap: float = 0.0
  post_norms: bool = False
  activation: str = 'silu'  # or 'gelu_tanh' (Gemma's GeGLU)
  # A causal low/high-pass filter beside self-attention in every block (layers.CausalFilter): the
  # token mixer is filter_mix * filter + (1 - filter_mix) * attention. 0 = attention only.
  filter_mix: float = 0.0
  filter_lags: int = 0  # how many recent items the low-pass part averages (0 = max_len)
  filter_window: float = 4.0  # initial time constant of its weights, in items
  # Multimodal content (see llm4rec_jax.model.fusion): how items are represented on input and
  # output ('id', 'content' or 'both'), which blocks cross-attend to the history's content tokens
  # (every k-th; 0 = none), and the fusion encoder's size.
  item_repr: str = 'id'
  cross_attention_every: int = 0
  fusion_layers: int = 1
  fusion_heads: int = 2
  # item_repr='both', training only: the share of items whose id vector is dropped in a step, so the
  # content-only path (what cold items get) is trained to score on its own.
  id_dropout: float = 0.0
  content: ContentSpec | None = None
  head: str = 'softmax'  # or 'semantic_id'
  codebook_sizes: tuple[int, ...] = ()  # semantic-ID levels (from the computed codes)
  # config.debias.fairness='adversarial': classes of the sensitive-attribute adversary head (0 = none).
  adversary_classes: int = 0
  # LoRA (llm4rec_jax.model.lora): rank of the adapters on the blocks' projections (0 = off, every
  # parameter trained), their scale alpha / rank, which projections they adapt, and the dtype the
  # frozen base projections are stored in while adapters are on.
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_targets: tuple[str, ...] = ('q', 'k', 'v', 'o')
  frozen_dtype: str = 'bfloat16'
  # config.text_finetune: the text encoder is part of the model (trained in the step); None = the
  # item text embeddings are frozen inputs.
  text_encoder: BertConfig | None = None
  # With a Hugging Face backbone: each history item enters as its title's text tokens (T of them,
  # right padded; rows of the backbone's frozen text embeddings, ItemContent.title_tokens /
  # title_table) followed by its item token; 0 = item tokens only (content/title_tokens.py).
  title_tokens: int = 0
  # Large models: the blocks' parameters stacked on a leading 'layers' axis (never sharded) and run
  # by one lax.scan, so compile time does not grow with depth (needs identical blocks:
  # :func:`check_scannable`); and rematerialization of each block in the backward pass: 'none',
  # 'full' (keep only the block's input) or 'dots' (also keep matmul outputs without batch dims).
  scan_layers: bool = False
  remat: str = 'none'
  # A start token before every sequence (``bos``: one trained d_model vector; with a Hugging Face
  # backbone it starts as the checkpoint's bos_token_id embedding row), as the checkpoint saw in
  # pretraining. Its output is dropped: hidden states stay one per history item.
  bos_token: bool = False

  @property
  def uses_content(self) -> bool:
    return self.content is not None and self.content.num_tokens > 0 and (
        self.item_repr != 'id' or self.cross_attention_every > 0)

  @property
  def lora_scale(self) -> float:
    return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

  def projection_options(self) -> dict[str, Any]:
    """Keyword arguments of the blocks' ``Attention``/``SwiGLU``: storage dtype of the base
    projections and the adapters (none without LoRA)."""
    if not self.lora_rank:
      return {}
    return dict(weight_dtype=DTYPES[self.frozen_dtype], lora_rank=self.lora_rank,
                lora_alpha=self.lora_alpha, lora_targets=self.lora_targets)

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
  fields = {f.name for f in dataclasses.fields(DecoderConfig)} - {'vocab_size', 'num_items',
                                                                   'content', 'codebook_sizes',
                                                                   'text_encoder',
                                                                   'adversary_classes'}
  kwargs = {k: model_cfg[k] for k in fields if k in model_cfg}
  vocab = model_cfg.get('vocab_size', 0) or -(-(num_items + 1) // vocab_multiple) * vocab_multiple
  if vocab <= num_items:
    raise ConfigError('model.vocab_size', f'{vocab} must exceed the {num_items} items (id 0 = pad)')
  if kwargs.get('item_repr', 'id') not in ITEM_REPRS:
    raise ConfigError('model.item_repr', f'{kwargs["item_repr"]!r} is not one of {ITEM_REPRS}')
  for name in ('rope_scaling', 'local_rope_scaling', 'layer_types'):  # lists once read from JSON
    kwargs[name] = tuple(kwargs.get(name, ()))
  if 'lora_targets' in kwargs:
    try:
      kwargs['lora_targets'] = lora_lib.parse_targets(kwargs['lora_targets'])
    except ValueError as e:
      raise ConfigError('model.lora_targets', str(e)) from e
  layer_types = kwargs['layer_types']
  if layer_types and (len(layer_types) != kwargs.get('num_layers', DecoderConfig.num_layers)
                      or set(layer_types) - set(LAYER_TYPES)):
    raise ConfigError('model.layer_types', f'{layer_types}: one of {LAYER_TYPES} per layer')
  if 'sliding_attention' in layer_types and kwargs.get('sliding_window', 0) <= 0:
    raise ConfigError('model.sliding_window', 'sliding_attention layers need a positive window')
  return DecoderConfig(vocab_size=vocab, num_items=num_items, **kwargs)


ITEM_REPRS = ('id', 'content', 'both')
REMAT_POLICIES = {'none': None, 'full': jax.checkpoint_policies.nothing_saveable,
                  'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def check_scannable(cfg: DecoderConfig) -> None:
  """Raises ConfigError unless every block of ``cfg`` is built and run the same way (what
  ``model.scan_layers`` stacks): one attention variant for all layers (no alternating local/global
  layers) and cross-attention in every block or in none."""
  if cfg.cross_attention_every not in (0, 1):
    raise ConfigError('model.scan_layers', 'scanned blocks must be identical: cross-attention '
                      f'every {cfg.cross_attention_every} blocks differs by layer (use 0 or 1)')
  first = layer_attention(cfg, 0)
  for i in range(1, cfg.num_layers):
    if layer_attention(cfg, i) != first:
      raise ConfigError('model.scan_layers', f'scanned blocks must be identical: layer {i} '
                        'attends differently from layer 0 (model.layer_types alternates local '
                        'and global layers)')


class Block(nnx.Module):
  """Pre-norm transformer block: attention and SwiGLU, each with a residual and dropout.

  With ``cfg.filter_mix > 0`` the token mixer is a blend of attention and a causal frequency filter.
  ``layer`` picks the layer's attention options (sliding or full, rotary: layers.layer_attention);
  with ``cfg.post_norms`` the token mixer's and the MLP's outputs are normed before their residuals
  (Gemma 2/3).
  """

  def __init__(self, cfg: DecoderConfig, *, cross_attention: bool = False, rngs: nnx.Rngs,
               layer: int = 0):
    dt = DTYPES[cfg.dtype]
    self.cross = (GatedCrossAttention(cfg.d_model, cfg.num_heads, cfg.dim_per_head, dtype=dt,
                                      rngs=rngs) if cross_attention else None)
    self.attn_norm = RMSNorm(cfg.d_model, eps=cfg.rms_eps, rngs=rngs)
    self.attn = Attention(cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head, dtype=dt,
                          rngs=rngs, impl=cfg.attention_impl, bias=cfg.attention_bias,
                          qk_norm=cfg.qk_norm, norm_eps=cfg.rms_eps, **layer_attention(cfg, layer),
                          **cfg.projection_options())
    self.attn_post_norm = (RMSNorm(cfg.d_model, eps=cfg.rms_eps, rngs=rngs) if cfg.post_norms
                           else None)
    self.filter = (CausalFilter(cfg.d_model, cfg.filter_lags or cfg.max_len,
                                window=cfg.filter_window, rngs=rngs) if cfg.filter_mix else None)
    self.filter_mix = cfg.filter_mix
    self.mlp_norm = RMSNorm(cfg.d_model, eps=cfg.rms_eps, rngs=rngs)
    self.mlp = SwiGLU(cfg.d_model, cfg.ffn_dim, dtype=dt, rngs=rngs, activation=cfg.activation,
                      **cfg.projection_options())
    self.mlp_post_norm = (RMSNorm(cfg.d_model, eps=cfg.rms_eps, rngs=rngs) if cfg.post_norms
                          else None)
    self.dropout = nnx.Dropout(cfg.dropout)

  def __call__(self, x, positions, mask, *, deterministic: bool, rngs: nnx.Rngs | None,
               memory=None, memory_mask=None, valid=None):
    xn = self.attn_norm(x)
    h = self.attn(xn, positions, mask)
    if self.filter is not None:
      if valid is None:
        raise ValueError('the causal filter needs the valid-position mask')
      h = self.filter_mix * self.filter(xn, valid) + (1.0 - self.filter_mix) * h
    if self.attn_post_norm is not None:
      h = self.attn_post_norm(h)
    x = x + self.dropout(h, deterministic=deterministic, rngs=rngs)
    if self.cross is not None:
      h = self.cross(x, memory, memory_mask)
      x = x + self.dropout(h, deterministic=deterministic, rngs=rngs)
    h = self.mlp(self.mlp_norm(x))
    if self.mlp_post_norm is not None:
      h = self.mlp_post_norm(h)
    return x + self.dropout(h, deterministic=deterministic, rngs=rngs)


class ItemDecoder(nnx.Module):
  """Items as tokens: embed a left-padded item sequence, run causal blocks, score the catalog.

  Items are represented by their id embedding, their fused content embedding, or the sum
  (``cfg.item_repr``); :meth:`encode_catalog` computes that table (and the content tokens the
  cross-attention blocks read) once, and :meth:`__call__`/:meth:`logits` reuse it. ``__call__``
  returns final hidden states; losses and evaluation work from hidden states so they can avoid
  materialising logits at padded positions.
  """

  def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    if cfg.item_repr != 'id' and not (cfg.content and cfg.content.num_tokens):
      raise ConfigError('model.item_repr', f'{cfg.item_repr!r} needs item content; select fields '
                        'in config.content (categorical / numeric / dense / text)')
    if cfg.cross_attention_every and not (cfg.content and cfg.content.num_tokens):
      raise ConfigError('model.cross_attention_every', 'cross-attention needs item content; '
                        'select fields in config.content')
    if cfg.title_tokens and (cfg.cross_attention_every or cfg.filter_mix):
      # Both work per history item; with titles the sequence holds T + 1 positions per item.
      raise ConfigError('model.title_tokens', 'cannot be combined with cross-attention '
                        '(model.cross_attention_every) or the causal filter (model.filter_mix)')
    if cfg.bos_token and (cfg.cross_attention_every or cfg.filter_mix):
      # Both work per history item; the start token is not one.
      raise ConfigError('model.bos_token', 'cannot be combined with cross-attention '
                        '(model.cross_attention_every) or the causal filter (model.filter_mix)')
    emb_init = nnx.initializers.normal(stddev=cfg.d_model ** -0.5)
    if cfg.bos_token:
      self.bos = param(rngs, emb_init, (cfg.d_model,), ('embed',))
    if cfg.item_repr != 'content':
      self.item_embed = param(rngs, emb_init, (cfg.vocab_size, cfg.d_model), ('vocab', 'embed'))
    if cfg.uses_content:
      self.fusion = CrossModalFusion(cfg.content, cfg.d_model, num_layers=cfg.fusion_layers,
                                     num_heads=cfg.fusion_heads, rngs=rngs)
    if cfg.item_repr == 'content':
      # Items with no content at all get this explicit learned vector (never a zero row).
      self.no_content = param(rngs, emb_init, (cfg.d_model,), ('embed',))
    every = cfg.cross_attention_every
    if cfg.remat not in REMAT_POLICIES:
      raise ConfigError('model.remat', f'{cfg.remat!r} is not one of {tuple(REMAT_POLICIES)}')
    if cfg.scan_layers:
      check_scannable(cfg)
      self.blocks = stacked_blocks(cfg, cross_attention=every == 1, rngs=rngs)
    else:
      self.blocks = nnx.List([Block(cfg, cross_attention=bool(every) and (i + 1) % every == 0,
                                    rngs=rngs, layer=i) for i in range(cfg.num_layers)])
    self.final_norm = RMSNorm(cfg.d_model, eps=cfg.rms_eps, rngs=rngs)
    self.embed_dropout = nnx.Dropout(cfg.dropout)
    if not cfg.tie_embeddings:
      self.output_embed = param(rngs, emb_init, (cfg.vocab_size, cfg.d_model), ('vocab', 'embed'))
    if cfg.text_encoder is not None:
      if not (cfg.uses_content and cfg.content.text_dim == cfg.text_encoder.hidden_size):
        raise ConfigError('text_finetune.enabled', 'fine-tuning the text encoder needs the text '
                          'modality in use (content.text, and item_repr or cross-attention reading '
                          f'content) with width {cfg.text_encoder.hidden_size}')
      # Fine-tuned with the rest of the model; see llm4rec_jax.train.text_finetune.
      self.text_encoder = BertEncoder(cfg.text_encoder, rngs=rngs)
    if cfg.adversary_classes:
      # Predicts a sensitive user attribute behind gradient reversal (llm4rec_jax.debias.fairness).
      self.adversary = AdversaryHead(cfg.d_model, cfg.adversary_classes, rngs=rngs)
    if cfg.head == 'semantic_id':
      if not cfg.codebook_sizes:
        raise ConfigError('model.head', 'the semantic-ID head needs computed item codes')
      self.sid_head = SemanticIdHead(cfg.d_model, cfg.codebook_sizes, dtype=DTYPES[cfg.dtype],
                                     rngs=rngs)

  def encode_catalog(self, content: ItemContent | None = None,
                     rngs: nnx.Rngs | None = None) -> CatalogEncoding:
    """The item table [vocab, d_model] (and content tokens) for every vocabulary id.

    ``rngs`` (training only) enables ``id_dropout``.
    """
    encoding = self._encode_items(content, rngs)
    if self.cfg.title_tokens:
      if content is None or content.title_tokens is None:
        raise ConfigError('model.title_tokens', 'this model reads item titles; pass the '
                          'ItemContent arrays with title_tokens and title_table')
      encoding = dataclasses.replace(encoding, title_tokens=content.title_tokens,
                                     title_table=content.title_table)
    return encoding

  def _encode_items(self, content: ItemContent | None, rngs: nnx.Rngs | None) -> CatalogEncoding:
    cfg = self.cfg
    if not cfg.uses_content:
      return CatalogEncoding(self.item_embed[...])
    if content is None:
      raise ConfigError('content', 'this model reads item content; pass the ItemContent arrays')
    emb, tokens, token_mask, has_content = self.fusion(content)
    if cfg.item_repr == 'id':
      table = self.item_embed[...]
    elif cfg.item_repr == 'content':
      table = jnp.where(has_content[:, None], emb, self.no_content[...])
    else:
      # Ids never seen in training (id_known False) are represented by their content alone, so a
      # cold item's untrained id vector does not drown its content.
      known = (content.id_known if content.id_known is not None
               else jnp.ones((cfg.vocab_size,), bool))
      if rngs is not None and cfg.id_dropout > 0:
        known = known & (jax.random.uniform(rngs.dropout(), known.shape) >= cfg.id_dropout)
      table = jnp.where(known[:, None], self.item_embed[...], 0.0) + emb
    return CatalogEncoding(table, tokens, token_mask)

  def embed(self, items: jax.Array, catalog: CatalogEncoding) -> jax.Array:
    x = jnp.take(catalog.table, items, axis=0)  # [batch, seq, d_model]
    if self.cfg.embed_scale:
      x = x * (self.cfg.d_model ** 0.5)
    return x.astype(DTYPES[self.cfg.dtype])

  def __call__(self, items: jax.Array, catalog: CatalogEncoding | None = None, *,
               deterministic: bool = True, rngs: nnx.Rngs | None = None,
               context: jax.Array | None = None) -> jax.Array:
    """items: int [batch, seq] left-padded with 0 -> hidden [batch, seq, d_model] (float32).

    ``context`` int [batch, seq, C] (0 = none): retrieved items (llm4rec_jax.retrieval.context)
    whose content tokens join the cross-attention memory of position t, so positions >= t see them.
    With ``cfg.title_tokens`` the blocks run over each item's title tokens followed by its item
    token (:meth:`with_titles`) and the hidden states at the item tokens are returned.
    """
    if catalog is None:
      catalog = self.encode_catalog()
    valid = items > 0  # [batch, seq]
    memory = memory_mask = None
    if self.cfg.cross_attention_every:
      memory, memory_mask = cross_attention_memory(catalog, items, context)
    x = self.embed(items, catalog) * valid[..., None]
    if self.cfg.title_tokens:
      x, valid = self.with_titles(items, x, catalog)
      hidden = self.hidden_from_embeddings(x, valid, deterministic=deterministic, rngs=rngs)
      b, s = items.shape
      # Every (T + 1)-th position is an item token: its output is the item's.
      return hidden.reshape(b, s, self.cfg.title_tokens + 1, -1)[:, :, -1]  # [b, s, d_model]
    return self.hidden_from_embeddings(x, valid, memory, memory_mask, deterministic=deterministic,
                                       rngs=rngs)

  def with_titles(self, items: jax.Array, x: jax.Array, catalog: CatalogEncoding
                  ) -> tuple[jax.Array, jax.Array]:
    """Each item's title tokens, then its item token: items [b, s] and their embeddings x
    [b, s, d] -> (embeddings [b, s * (T + 1), d], valid [b, s * (T + 1)]).

    Title rows come from the backbone's text embeddings (scaled like item rows: Gemma's
    sqrt(d_model)); title padding and padded items are invalid, so they are masked out of
    attention and do not advance the rotary positions.
    """
    cfg = self.cfg
    b, s = items.shape
    rows = jnp.take(catalog.title_tokens, items, axis=0)  # [b, s, T], 0 = padding
    text_valid = (rows > 0) & (items > 0)[..., None]  # [b, s, T]
    text = jnp.take(catalog.title_table, rows, axis=0)  # [b, s, T, d_model]
    if cfg.embed_scale:
      text = text * (cfg.d_model ** 0.5)
    text = (text * text_valid[..., None]).astype(x.dtype)
    seq = s * (cfg.title_tokens + 1)
    x = jnp.concatenate([text, x[:, :, None]], axis=2).reshape(b, seq, -1)
    valid = jnp.concatenate([text_valid, (items > 0)[..., None]], axis=2).reshape(b, seq)
    return x, valid

  def hidden_from_embeddings(self, x: jax.Array, valid: jax.Array, memory: jax.Array | None = None,
                             memory_mask: jax.Array | None = None, *, deterministic: bool = True,
                             rngs: nnx.Rngs | None = None) -> jax.Array:
    """The decoder after the item lookup: embedded inputs x [batch, seq, d_model] (scaled, zero at
    padding), valid [batch, seq] -> hidden [batch, seq, d_model] (float32).

    ``memory`` [batch, seq, M, d_model] / ``memory_mask`` are the content tokens the cross-attention
    blocks read. Split from ``__call__`` so attributions can differentiate through the input
    embeddings (llm4rec_jax.explain.attribution).
    """
    if self.cfg.bos_token:
      # The start token goes first (array index 0, before the left padding): padding is masked out
      # of attention and does not advance positions, so it sits at position 0 right before the
      # first item, as in the unpadded sequence. Its output is dropped.
      bos = self.bos[...] * (self.cfg.d_model ** 0.5 if self.cfg.embed_scale else 1.0)
      x = jnp.concatenate([jnp.broadcast_to(bos.astype(x.dtype), (x.shape[0], 1, x.shape[2])), x],
                          axis=1)
      valid = jnp.concatenate([jnp.ones_like(valid[:, :1]), valid], axis=1)
      return self._hidden(x, valid, memory, memory_mask, deterministic, rngs)[:, 1:]
    return self._hidden(x, valid, memory, memory_mask, deterministic, rngs)

  def _hidden(self, x, valid, memory, memory_mask, deterministic, rngs):
    # Positions count real items only, so left padding does not shift them.
    positions = jnp.maximum(jnp.cumsum(valid, axis=-1) - 1, 0)
    seq = x.shape[1]
    causal = jnp.tril(jnp.ones((seq, seq), bool))
    # Padded queries see only themselves, so no softmax row is empty.
    mask = (causal[None] & valid[:, None, :]) | jnp.eye(seq, dtype=bool)[None]
    mask = mask[:, None]  # [batch, 1, seq, seq]
    x = self.embed_dropout(x, deterministic=deterministic, rngs=rngs)
    x = self._run_blocks(x, positions, mask, deterministic=deterministic, rngs=rngs,
                         memory=memory, memory_mask=memory_mask, valid=valid)
    return self.final_norm(x).astype(jnp.float32)

  def _run_blocks(self, x, positions, mask, *, deterministic, rngs, **kw):
    """The blocks in order: a Python loop over the list, or one scan over the stacked blocks
    (``cfg.scan_layers``); with ``cfg.remat`` each block is rematerialized in the backward pass.
    Dropout keys: the loop draws them from ``rngs`` block by block; the scan draws one key and
    splits it per layer."""
    cfg = self.cfg
    policy = REMAT_POLICIES[cfg.remat]
    if not cfg.scan_layers and policy is None:
      for block in self.blocks:
        x = block(x, positions, mask, deterministic=deterministic, rngs=rngs, **kw)
      return x

    def apply(graphdef, state, x, key):
      block = nnx.merge(graphdef, state)
      return block(x, positions, mask, deterministic=deterministic,
                   rngs=None if key is None else nnx.Rngs(dropout=key), **kw)

    if not cfg.scan_layers:
      for block in self.blocks:
        graphdef, state = nnx.split(block)
        key = None if rngs is None else rngs.dropout()
        x = jax.checkpoint(functools.partial(apply, graphdef), policy=policy)(state, x, key)
      return x
    graphdef, state = nnx.split(self.blocks)
    keys = None if rngs is None else jax.random.split(rngs.dropout(), cfg.num_layers)

    def body(x, layer):
      return apply(graphdef, layer[0], x, layer[1]), None

    if policy is not None:
      body = jax.checkpoint(body, policy=policy)
    x, _ = jax.lax.scan(body, x, (state, keys))
    return x

  def output_table(self, catalog: CatalogEncoding | None = None) -> jax.Array:
    """[vocab, d_model] item embeddings used to score the catalog."""
    if not self.cfg.tie_embeddings:
      return self.output_embed[...]
    return (catalog or self.encode_catalog()).table

  def logits(self, hidden: jax.Array, catalog: CatalogEncoding | None = None,
             mask: jax.Array | None = None) -> jax.Array:
    """hidden [..., d_model] -> [..., vocab]; padding and out-of-catalog ids are -inf.

    ``mask`` (bool [vocab]) replaces the catalog of ids 1..num_items (the online learner's catalog
    grows as items are registered).
    """
    table = self.output_table(catalog).astype(hidden.dtype)
    scores = hidden @ table.T
    return jnp.where(catalog_mask(self.cfg) if mask is None else mask, scores, -jnp.inf)


def stacked_blocks(cfg: DecoderConfig, *, cross_attention: bool, rngs: nnx.Rngs) -> Block:
  """``cfg.num_layers`` blocks as one :class:`Block` whose parameters have a leading 'layers'
  axis (logical axis name ``layers``, first in every parameter's sharding names).

  The layers are initialized one after another from ``rngs``, exactly as the unscanned list is,
  so a seed gives the same model with or without ``scan_layers``.
  """
  @nnx.split_rngs(splits=cfg.num_layers)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: 'layers'})
  def make(layer_rngs):
    return Block(cfg, cross_attention=cross_attention, rngs=layer_rngs)

  stacked = nnx.eval_shape(lambda: make(nnx.Rngs(0)))  # structure and sharding names only
  layers = [nnx.to_pure_dict(nnx.state(Block(cfg, cross_attention=cross_attention, rngs=rngs,
                                                 layer=i)))
            for i in range(cfg.num_layers)]
  graphdef, state = nnx.split(stacked)
  nnx.replace_by_pure_dict(state, stack_layers(dict(enumerate(layers))))
  return nnx.merge(graphdef, state)


def stack_layers(blocks: dict[int, Any]) -> Any:
  """Per-layer parameter trees {0: tree, 1: tree, ...} -> one tree of arrays stacked on a leading
  layer axis (the ``scan_layers`` layout of ``params['blocks']``)."""
  layers = [blocks[i] for i in sorted(blocks)]
  return jax.tree.map(lambda *xs: jnp.stack(xs), *layers)


def unstack_layers(stacked: Any) -> dict[int, Any]:
  """The inverse of :func:`stack_layers`: {layer index: tree}."""
  n = jax.tree.leaves(stacked)[0].shape[0]
  return {i: jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(n)}


def cross_attention_memory(catalog: CatalogEncoding, items: jax.Array,
                           context: jax.Array | None = None):
  """(memory [b, s, M (+ C*M), d], mask [b, s, M (+ C*M)]) the cross-attention blocks read.

  Each history item's content tokens, then (``context`` int [b, s, C], 0 = none) the retrieved
  items' content tokens, so position t's memory holds what it may condition on.
  """
  valid = items > 0  # [batch, seq]
  memory = jnp.take(catalog.tokens, items, axis=0)  # [batch, seq, M, d_model]
  mask = jnp.take(catalog.token_mask, items, axis=0) & valid[..., None]
  if context is not None:
    b, s, c = context.shape
    m = memory.shape[2]
    ctx = jnp.take(catalog.tokens, context, axis=0).reshape(b, s, c * m, -1)
    ctx_mask = (jnp.take(catalog.token_mask, context, axis=0)
                & (context > 0)[..., None]).reshape(b, s, c * m)
    memory = jnp.concatenate([memory, ctx.astype(memory.dtype)], axis=2)  # [b, s, M+C*M, d]
    mask = jnp.concatenate([mask, ctx_mask], axis=2)
  return memory, mask


def catalog_mask(cfg: DecoderConfig) -> jax.Array:
  """bool [vocab]: True for real items 1..num_items."""
  ids = jnp.arange(cfg.vocab_size)
  return (ids >= 1) & (ids <= cfg.num_items)
