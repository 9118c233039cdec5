"""Hugging Face decoder LLMs (Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma 2, Gemma 3) as the
recommender's backbone.

:func:`load_hf_decoder` reads a checkpoint directory in the Hugging Face layout (``config.json`` and
``model.safetensors``, or shards listed in ``model.safetensors.index.json``) into
:class:`LlmRecDecoder`: the project's blocks (``layers.RMSNorm``, rotary, grouped-query
``layers.Attention`` with Qwen2's q/k/v biases or Qwen3's and Gemma 3's q/k norms, sliding-window
layers, Gemma 2's soft-capped scores, gated MLP, Gemma 2/3's norms on the attention and MLP outputs)
with the text vocabulary extended by one token per catalog item. Item ``i`` (1..num_items) is token
``text_vocab + i``; item tokens start at the mean text embedding plus small noise (seeded per row,
so any device layout gives the same values).

Every parameter is created straight into its ``NamedSharding`` (logical axes -> mesh rules):
``jax.make_array_from_callback`` asks for each device's block and the block is read from the
memory-mapped safetensors file (float32, float16 or bfloat16), so no host ever holds a whole tensor
of a sharded parameter, let alone the whole model. Prompts are tokenized with the checkpoint's
``transformers`` tokenizer and followed by the history's item tokens (:func:`encode_history`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from llm4rec_jax import partitioning
from llm4rec_jax.errors import ConfigError, DataError
from llm4rec_jax.model import layers

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
MODEL_TYPES = ('llama', 'mistral', 'qwen2', 'qwen3', 'gemma', 'gemma2', 'gemma3_text')
GEMMAS = ('gemma', 'gemma2', 'gemma3_text')
# Beside an exported backbone (hf_export): the recommender's trained item tables, which
# load_backbone reads instead of starting item rows from the text embeddings.
ITEM_TABLES = 'item_tables.safetensors'


@dataclasses.dataclass(frozen=True)
class LlmConfig:
  """Architecture of an imported decoder, plus the item tokens appended to its vocabulary."""
  model_type: str
  text_vocab: int
  num_items: int
  vocab_size: int  # text_vocab + num_items + 1, padded for sharding
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  rms_eps: float
  rope_theta: float
  tie_embeddings: bool
  attention_bias: bool  # Qwen2: biases on the q/k/v projections
  qk_norm: bool  # Qwen3, Gemma 3: RMSNorm over each query and key head before the rotary embedding
  activation: str  # 'silu' (Llama, Qwen2, Mistral) or 'gelu_tanh' (Gemma)
  norm_plus_one: bool  # Gemma: RMSNorm scales by (1 + weight)
  embed_scale: bool  # Gemma: embeddings times sqrt(d_model)
  dtype: str = 'float32'  # compute dtype; parameters are float32
  sliding_window: int = 0  # how far back the sliding_attention layers see
  # () or ('linear', factor) or Llama 3's ('llama3', factor, low, high, original_max_len)
  rope_scaling: tuple = ()
  # 'full_attention' or 'sliding_attention' per layer (() = all full; Mistral: all sliding; Gemma 2
  # and 3 alternate), see layers.layer_attention.
  layer_types: tuple[str, ...] = ()
  local_rope_theta: float = 0.0  # Gemma 3: the sliding layers' rotary base (0 = rope_theta)
  local_rope_scaling: tuple = ()
  query_pre_attn_scalar: float = 0.0  # Gemma 2/3: scores scaled by its ** -0.5 (0 = head_dim)
  attn_softcap: float = 0.0  # Gemma 2: attention scores soft-capped at this (0 = none)
  final_softcap: float = 0.0  # Gemma 2 (3 where set): logits soft-capped at this (0 = none)
  post_norms: bool = False  # Gemma 2/3: norms on the attention and MLP outputs
  max_positions: int = 0  # max_position_embeddings: the longest sequence it takes (0 = unset)
  bos_token_id: int = -1  # config.json's bos_token_id (-1 = none)

  def item_token(self, item: int | np.ndarray) -> int | np.ndarray:
    return self.text_vocab + item


def read_config(checkpoint: str | pathlib.Path, *, num_items: int, dtype: str = 'float32',
                vocab_multiple: int = 128) -> LlmConfig:
  """Parses ``config.json``; errors name the file and the field."""
  path = pathlib.Path(checkpoint) / 'config.json'
  if not path.is_file():
    raise DataError(f'{path}: not found (a Hugging Face checkpoint directory has config.json)')
  try:
    raw = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise DataError(f'{path}:{e.lineno}: invalid JSON: {e.msg}') from e

  def field(name, default=None):
    if name in raw and raw[name] is not None:
      return raw[name]
    if default is None:
      raise DataError(f'{path}: field {name!r} missing')
    return default

  model_type = field('model_type')
  if model_type == 'gemma3':
    raise DataError(f'{path}: field model_type=\'gemma3\' (the multimodal Gemma 3 with a nested '
                    'text_config) is not supported; text-only gemma3_text checkpoints '
                    '(Gemma3ForCausalLM, e.g. gemma-3-1b) are')
  if model_type not in MODEL_TYPES:
    raise DataError(f'{path}: field model_type={model_type!r} is not supported; '
                    f'supported: {MODEL_TYPES}')
  (rope_theta, rope_scaling), local_rope = _rope(raw, path, model_type)
  gemma = model_type in GEMMAS
  # Gemma 2/3's MLP reads hidden_activation; Gemma v1 configs have either field, and transformers
  # runs v1's legacy 'gelu' as the tanh approximation (Gemma 2/3 would run it exact).
  act_field = 'hidden_activation' if gemma and raw.get('hidden_activation') else 'hidden_act'
  if model_type in ('gemma2', 'gemma3_text'):
    act_field = 'hidden_activation'
  act = field(act_field, 'gelu_pytorch_tanh' if gemma else 'silu')
  activations = {'silu': 'silu', 'swish': 'silu', 'gelu_pytorch_tanh': 'gelu_tanh',
                 'gelu': 'gelu_tanh' if model_type == 'gemma' else None}
  if activations.get(act) is None:
    raise DataError(f'{path}: field {act_field}={act!r} is not supported (silu, '
                    'gelu_pytorch_tanh)')
  d_model, heads = int(field('hidden_size')), int(field('num_attention_heads'))
  text_vocab = int(field('vocab_size'))
  if num_items <= 0:
    raise ConfigError('num_items', f'must be positive, got {num_items}')
  needed = text_vocab + num_items + 1
  _refuse_unsupported(raw, path, model_type)
  num_layers = int(field('num_hidden_layers'))
  layer_types, window = _layer_types(raw, path, model_type, num_layers)
  gemma23 = model_type in ('gemma2', 'gemma3_text')
  softcaps = {'gemma2': (50.0, 30.0)}.get(model_type, (None, None))  # transformers' defaults
  return LlmConfig(
      model_type=model_type, text_vocab=text_vocab, num_items=num_items,
      vocab_size=-(-needed // vocab_multiple) * vocab_multiple, d_model=d_model,
      num_layers=num_layers, num_heads=heads,
      num_kv_heads=int(field('num_key_value_heads', heads)),
      head_dim=int(field('head_dim', d_model // heads)),
      mlp_dim=int(field('intermediate_size')), rms_eps=float(field('rms_norm_eps', 1e-6)),
      rope_theta=rope_theta, rope_scaling=rope_scaling,
      tie_embeddings=bool(raw.get('tie_word_embeddings', gemma)),
      attention_bias=model_type == 'qwen2', qk_norm=model_type in ('qwen3', 'gemma3_text'),
      activation=activations[act], norm_plus_one=gemma, embed_scale=gemma, dtype=dtype,
      sliding_window=window, layer_types=layer_types,
      local_rope_theta=local_rope[0], local_rope_scaling=local_rope[1],
      query_pre_attn_scalar=float(field('query_pre_attn_scalar', 256)) if gemma23 else 0.0,
      attn_softcap=float(raw.get('attn_logit_softcapping', softcaps[0]) or 0.0),
      final_softcap=float(raw.get('final_logit_softcapping', softcaps[1]) or 0.0),
      post_norms=gemma23, max_positions=int(raw.get('max_position_embeddings') or 0),
      bos_token_id=raw['bos_token_id'] if isinstance(raw.get('bos_token_id'), int) else -1)


LLAMA3_ROPE = ('factor', 'low_freq_factor', 'high_freq_factor', 'original_max_position_embeddings')


def _layer_types(raw: dict[str, Any], path: pathlib.Path, model_type: str,
                 num_layers: int) -> tuple[tuple[str, ...], int]:
  """(``layer_types``, sliding window) as transformers reads them: Mistral windows every layer;
  Gemma 2 and 3 take ``layer_types`` or, in older configs, alternate (Gemma 2: every other layer
  sliding; Gemma 3: every ``sliding_window_pattern``-th layer (6) full, the rest sliding)."""
  window = int(raw.get('sliding_window') or 0)
  if model_type == 'mistral':
    return (('sliding_attention',) * num_layers if window else ()), window
  if model_type not in ('gemma2', 'gemma3_text'):
    return (), 0  # other layer_types are refused by _refuse_unsupported
  window = int(raw.get('sliding_window', 4096) or 0)
  kinds = raw.get('layer_types')
  if kinds is None:
    every = 2 if model_type == 'gemma2' else int(raw.get('sliding_window_pattern') or 6)
    kinds = ['sliding_attention' if (i + 1) % every else 'full_attention'
             for i in range(num_layers)]
  kinds = tuple(kinds)
  if len(kinds) != num_layers or set(kinds) - set(layers.LAYER_TYPES):
    raise DataError(f'{path}: field layer_types={list(kinds)!r}: need one of '
                    f'{layers.LAYER_TYPES} for each of the {num_layers} layers')
  if 'sliding_attention' in kinds and window <= 0:
    raise DataError(f'{path}: field sliding_window={raw.get("sliding_window")!r}: layer_types has '
                    'sliding_attention layers, which need a positive window')
  return kinds, window


def _refuse_unsupported(raw: dict[str, Any], path: pathlib.Path, model_type: str):
  """Config features transformers would apply but these blocks have no place for: a DataError
  naming the field."""
  if raw.get('attention_bias') and model_type != 'qwen2':
    raise DataError(f'{path}: field attention_bias=true is not supported for {model_type} (it also '
                    'adds an o_proj bias); Qwen2 q/k/v biases are')
  if raw.get('mlp_bias'):
    raise DataError(f'{path}: field mlp_bias=true is not supported (bias-free gated MLP only)')
  if model_type in ('qwen2', 'qwen3') and raw.get('use_sliding_window'):
    raise DataError(f'{path}: field use_sliding_window=true is not supported for {model_type} '
                    '(transformers windows only the layers from max_window_layers on)')
  kinds = set(raw.get('layer_types') or ())
  if kinds - {'full_attention'} and model_type not in ('gemma2', 'gemma3_text'):
    raise DataError(f'{path}: field layer_types={raw["layer_types"]!r} is not supported for '
                    f'{model_type} (full_attention layers only; Gemma 2/3 alternate)')
  if raw.get('use_bidirectional_attention'):
    raise DataError(f'{path}: field use_bidirectional_attention=true is not supported (causal '
                    'decoders only)')
  if model_type == 'gemma3_text' and raw.get('attn_logit_softcapping') is not None:
    raise DataError(f'{path}: field attn_logit_softcapping={raw["attn_logit_softcapping"]!r} is '
                    'not supported for gemma3_text (transformers\' Gemma 3 attention does not '
                    'apply it; Gemma 3 checkpoints set null)')


def _rope(raw: dict[str, Any], path: pathlib.Path,
          model_type: str) -> tuple[tuple[float, tuple], tuple[float, tuple]]:
  """((rotary base, scaling) of the full-attention layers, the same of the sliding layers, (0, ())
  = as the full ones), from ``rope_theta``/``rope_scaling`` (transformers 4, most published
  checkpoints) or ``rope_parameters`` (what transformers 5 writes). Gemma 3 gives each layer type
  its own: ``rope_parameters.full_attention``/``.sliding_attention``, or ``rope_theta`` with
  ``rope_scaling`` for the full layers and ``rope_local_base_freq`` for the sliding ones (defaults
  1e6 and 1e4). Scaling: :func:`_rope_scaling`."""
  params = raw.get('rope_parameters')
  if model_type == 'gemma3_text':
    if params:
      if not {'full_attention', 'sliding_attention'} >= set(params):
        raise DataError(f'{path}: field rope_parameters: Gemma 3 has one entry per layer type '
                        f'(full_attention, sliding_attention), not {sorted(params)}')
      full, local = params.get('full_attention') or {}, params.get('sliding_attention') or {}
      return (_rope_scaling(raw, path, 'rope_parameters.full_attention', full,
                            full.get('rope_theta', 1e6)),
              _rope_scaling(raw, path, 'rope_parameters.sliding_attention', local,
                            local.get('rope_theta', 1e4)))
    return (_rope_scaling(raw, path, 'rope_scaling', raw.get('rope_scaling') or {},
                          raw.get('rope_theta', 1e6)),
            (float(raw.get('rope_local_base_freq') or 1e4), ()))
  if params:
    where, scaling = 'rope_parameters', params
    theta = params.get('rope_theta', raw.get('rope_theta'))
  else:
    where, scaling, theta = 'rope_scaling', raw.get('rope_scaling') or {}, raw.get('rope_theta')
  if not all(isinstance(v, (int, float, str, type(None))) for v in scaling.values()):
    raise DataError(f'{path}: field {where} holds per-layer-type rotary parameters; not supported '
                    f'for {model_type}')
  return _rope_scaling(raw, path, where, scaling, theta), (0.0, ())


def _rope_scaling(raw: dict[str, Any], path: pathlib.Path, where: str, scaling: dict[str, Any],
                  theta: float | None) -> tuple[float, tuple]:
  """(rotary base, scaling) of one rotary parameter dict, found at field ``where``. Scaling is (),
  ``('linear', factor)`` or Llama 3's ``('llama3', factor, low_freq_factor, high_freq_factor,
  original_max_position_embeddings)`` (:func:`layers.rope_frequencies`); any other ``rope_type``
  is refused."""
  partial = raw.get('partial_rotary_factor', scaling.get('partial_rotary_factor')) or 1.0
  if partial != 1.0:
    raise DataError(f'{path}: field partial_rotary_factor={partial!r} is not supported (1.0)')
  theta = float(theta or 10_000.0)
  kind = scaling.get('rope_type', scaling.get('type', 'default'))
  if kind == 'default':
    return theta, ()
  if kind == 'linear':
    if not isinstance(scaling.get('factor'), (int, float)) or scaling['factor'] <= 0:
      raise DataError(f'{path}: field {where}.factor missing or not positive (rope_type linear)')
    return theta, ('linear', float(scaling['factor']))
  if kind != 'llama3':
    raise DataError(f'{path}: field {where}.rope_type={kind!r} is not supported (default, linear, '
                    'llama3)')
  for name in LLAMA3_ROPE:
    if not isinstance(scaling.get(name), (int, float)):
      raise DataError(f'{path}: field {where}.{name} missing (rope_type llama3 needs '
                      f'{LLAMA3_ROPE})')
  if scaling['high_freq_factor'] <= scaling['low_freq_factor']:
    raise DataError(f'{path}: field {where}.high_freq_factor must exceed low_freq_factor')
  return theta, ('llama3',) + tuple(float(scaling[n]) for n in LLAMA3_ROPE)


class LlmBlock(nnx.Module):
  """Pre-norm decoder block of the imported LLM, layer ``layer`` (its attention options:
  ``layers.layer_attention``); Gemma 2/3 also norm the attention and MLP outputs."""

  def __init__(self, cfg: LlmConfig, layer: int, *, rngs: nnx.Rngs):
    norm = lambda: layers.RMSNorm(cfg.d_model, eps=cfg.rms_eps, rngs=rngs)
    self.attn_norm = norm()
    self.attn = layers.Attention(
        cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, dtype=DTYPES[cfg.dtype],
        rngs=rngs, bias=cfg.attention_bias, qk_norm=cfg.qk_norm, norm_eps=cfg.rms_eps,
        **layers.layer_attention(cfg, layer))
    self.attn_post_norm = norm() if cfg.post_norms else None
    self.mlp_norm = norm()
    self.mlp = layers.SwiGLU(cfg.d_model, cfg.mlp_dim, dtype=DTYPES[cfg.dtype], rngs=rngs,
                             activation=cfg.activation)
    self.mlp_post_norm = norm() if cfg.post_norms else None

  def __call__(self, x, positions, mask):
    h = self.attn(self.attn_norm(x), positions, mask)
    x = x + (h if self.attn_post_norm is None else self.attn_post_norm(h))
    h = self.mlp(self.mlp_norm(x))
    return x + (h if self.mlp_post_norm is None else self.mlp_post_norm(h))


class LlmRecDecoder(nnx.Module):
  """A pretrained decoder LLM over text tokens followed by item tokens.

  ``__call__`` returns final hidden states; :meth:`logits` scores the whole vocabulary (text and
  items), :meth:`item_scores` only the catalog (index = item id, 0 = padding at -inf), which is what
  ranking needs.
  """

  def __init__(self, cfg: LlmConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    init = nnx.initializers.normal(stddev=0.02)
    self.embed = layers.param(rngs, init, (cfg.vocab_size, cfg.d_model), ('vocab', 'embed'))
    self.blocks = nnx.List([LlmBlock(cfg, i, rngs=rngs) for i in range(cfg.num_layers)])
    self.final_norm = layers.RMSNorm(cfg.d_model, eps=cfg.rms_eps, rngs=rngs)
    if not cfg.tie_embeddings:
      self.lm_head = layers.param(rngs, init, (cfg.vocab_size, cfg.d_model), ('vocab', 'embed'))

  def __call__(self, tokens: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """tokens: int [batch, seq] (left padding marked False in ``valid``) -> [batch, seq, d_model]."""
    cfg = self.cfg
    if valid is None:
      valid = jnp.ones(tokens.shape, bool)
    positions = jnp.maximum(jnp.cumsum(valid, axis=-1) - 1, 0)  # padding does not shift positions
    seq = tokens.shape[-1]
    causal = jnp.tril(jnp.ones((seq, seq), bool))[None]  # [1, seq, seq]
    # Sliding layers narrow this to their window (layers.Attention).
    mask = ((causal & valid[:, None, :]) | jnp.eye(seq, dtype=bool)[None])[:, None]
    dt = DTYPES[cfg.dtype]
    x = jnp.take(self.embed[...], tokens, axis=0).astype(dt)  # [batch, seq, d_model]
    if cfg.embed_scale:
      x = x * jnp.asarray(cfg.d_model ** 0.5, dt)
    for block in self.blocks:
      x = block(x, positions, mask)
    return self.final_norm(x).astype(jnp.float32)

  def _head(self) -> jax.Array:
    return self.embed[...] if self.cfg.tie_embeddings else self.lm_head[...]

  def _capped(self, scores: jax.Array) -> jax.Array:
    """Gemma 2's final-logit soft-capping: ``cap * tanh(scores / cap)``."""
    cap = self.cfg.final_softcap
    return cap * jnp.tanh(scores / cap) if cap else scores

  def logits(self, hidden: jax.Array) -> jax.Array:
    """[..., d_model] -> [..., vocab_size]: text tokens and item tokens; padding rows -inf."""
    cfg = self.cfg
    scores = self._capped(hidden @ self._head().T)
    ids = jnp.arange(cfg.vocab_size)
    items = (ids > cfg.text_vocab) & (ids <= cfg.text_vocab + cfg.num_items)
    real = (ids < cfg.text_vocab) | items
    return jnp.where(real, scores, -jnp.inf)

  def item_scores(self, hidden: jax.Array) -> jax.Array:
    """[..., d_model] -> [..., num_items + 1] next-item scores (column 0, padding, is -inf)."""
    cfg = self.cfg
    rows = jax.lax.dynamic_slice_in_dim(self._head(), cfg.text_vocab, cfg.num_items + 1)
    scores = self._capped(hidden @ rows.T)
    return scores.at[..., 0].set(-jnp.inf)


# ---------------------------------------------------------------------------------------------
# Loading


SAFETENSORS_DTYPES = {'F64': np.float64, 'F32': np.float32, 'F16': np.float16,
                      'BF16': ml_dtypes.bfloat16}


class _SafetensorsFile:
  """One ``.safetensors`` file, memory-mapped: reading a tensor's block touches only that block.

  The format is parsed here (8-byte little-endian header length, a JSON header of dtype, shape and
  data offsets, then the raw data) because ``safetensors``' numpy backend cannot return bfloat16,
  the dtype most published checkpoints are stored in.
  """

  def __init__(self, path: pathlib.Path):
    try:
      with open(path, 'rb') as f:
        size = int.from_bytes(f.read(8), 'little')
        header = json.loads(f.read(size))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise DataError(f'{path}: not a safetensors file (unreadable header: {e})') from e
    header.pop('__metadata__', None)
    self.path, self.data_start, self.header = path, 8 + size, header

  def keys(self) -> list[str]:
    return list(self.header)

  def array(self, name: str) -> np.ndarray:
    """The whole tensor as a read-only memory map (nothing is read until it is indexed)."""
    info = self.header[name]
    dtype = SAFETENSORS_DTYPES.get(info['dtype'])
    if dtype is None:
      raise DataError(f'{self.path}: tensor {name!r} has dtype {info["dtype"]}; readable: '
                      f'{sorted(SAFETENSORS_DTYPES)}')
    begin, end = info['data_offsets']
    shape = tuple(info['shape'])
    if end == begin:
      return np.zeros(shape, dtype)
    return np.memmap(self.path, dtype=dtype, mode='r', offset=self.data_start + begin, shape=shape)


class _Tensors:
  """Lazy access to the checkpoint's tensors (single file or sharded with an index)."""

  def __init__(self, checkpoint: pathlib.Path):
    index = checkpoint / 'model.safetensors.index.json'
    if index.is_file():
      try:
        weight_map = json.loads(index.read_text())['weight_map']
      except (json.JSONDecodeError, KeyError) as e:
        raise DataError(f'{index}: no valid weight_map ({e})') from e
    elif (checkpoint / 'model.safetensors').is_file():
      weight_map = None
    else:
      raise DataError(f'{checkpoint}: neither model.safetensors nor model.safetensors.index.json')
    files = sorted(set(weight_map.values())) if weight_map else ['model.safetensors']
    self._files = {}
    for name in files:
      if not (checkpoint / name).is_file():
        raise DataError(f'{index}: lists {name}, which is missing')
      self._files[name] = _SafetensorsFile(checkpoint / name)
    if weight_map is None:
      weight_map = {k: 'model.safetensors' for k in self._files['model.safetensors'].keys()}
    self.weight_map = weight_map
    self.checkpoint = checkpoint
    self.reads: list[tuple[str, tuple[int, ...]]] = []  # (tensor, block shape) of every read

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._array(name).shape)

  def _array(self, name: str) -> np.ndarray:
    if name not in self.weight_map:
      raise DataError(f'{self.checkpoint}: tensor {name!r} not found in the checkpoint')
    return self._files[self.weight_map[name]].array(name)

  def read(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
    """A block of a tensor in float32 (from any stored float dtype); only the block is read."""
    block = np.asarray(self._array(name)[index], np.float32)
    self.reads.append((name, block.shape))
    return block

  def rows(self, name: str, ids: np.ndarray) -> np.ndarray:
    """Rows ``ids`` (sorted, unique) of a 2-D tensor in float32; only those rows are read."""
    block = np.asarray(self._array(name)[np.asarray(ids, np.int64)], np.float32)
    self.reads.append((name, block.shape))
    return block

  def has(self, name: str) -> bool:
    return name in self.weight_map


def _span(s: slice, n: int) -> tuple[int, int]:
  start, stop, step = s.indices(n)
  assert step == 1
  return start, stop


def _head_major(t: _Tensors, name: str, heads: int, head_dim: int):
  """q/k/v projection [heads * head_dim, d] -> ours [d, heads, head_dim]."""
  def read(idx):
    d_sl, h_sl, k_sl = idx
    h0, h1 = _span(h_sl, heads)
    w = t.read(name, (slice(h0 * head_dim, h1 * head_dim), d_sl))  # [nh * hd, nd]
    return w.reshape(h1 - h0, head_dim, -1)[:, k_sl, :].transpose(2, 0, 1)
  return read


def _out_proj(t: _Tensors, name: str, heads: int, head_dim: int):
  """o_proj [d, heads * head_dim] -> ours [heads, head_dim, d]."""
  def read(idx):
    h_sl, k_sl, d_sl = idx
    h0, h1 = _span(h_sl, heads)
    w = t.read(name, (d_sl, slice(h0 * head_dim, h1 * head_dim)))  # [nd, nh * hd]
    return w.reshape(w.shape[0], h1 - h0, head_dim)[:, :, k_sl].transpose(1, 2, 0)
  return read


def _transposed(t: _Tensors, name: str):
  return lambda idx: t.read(name, (idx[1], idx[0])).T


def _bias(t: _Tensors, name: str, heads: int, head_dim: int):
  def read(idx):
    h_sl, k_sl = idx
    h0, h1 = _span(h_sl, heads)
    return t.read(name, (slice(h0 * head_dim, h1 * head_dim),)).reshape(h1 - h0, head_dim)[:, k_sl]
  return read


def _norm(t: _Tensors, name: str, plus_one: bool):
  return lambda idx: t.read(name, idx) + (1.0 if plus_one else 0.0)


def _vocab_rows(t: _Tensors, name: str, cfg: LlmConfig, item_rows: Callable):
  """[vocab, d]: text rows from the checkpoint, then item rows, then zero padding."""
  def read(idx):
    r_sl, d_sl = idx
    r0, r1 = _span(r_sl, cfg.vocab_size)
    d0, d1 = _span(d_sl, cfg.d_model)
    out = np.zeros((r1 - r0, d1 - d0), np.float32)
    a, b = r0, min(r1, cfg.text_vocab)
    if a < b:
      out[:b - a] = t.read(name, (slice(a, b), d_sl))
    a, b = max(r0, cfg.text_vocab + 1), min(r1, cfg.text_vocab + cfg.num_items + 1)
    if a < b:
      out[a - r0:b - r0] = item_rows(a, b)[:, d0:d1]
    return out
  return read


def _embedding_stats(t: _Tensors, name: str, rows: int, chunk: int = 4096):
  """Mean row and entry std of a [rows, d] embedding, read in chunks."""
  total, sq, n = 0.0, 0.0, 0
  for a in range(0, rows, chunk):
    block = t.read(name, (slice(a, min(rows, a + chunk)), slice(None)))
    total = total + block.sum(axis=0)
    sq += float((block.astype(np.float64) ** 2).sum())
    n += block.shape[0]
  mean = np.asarray(total / n, np.float32)
  std = math.sqrt(max(sq / (n * mean.size) - float((mean.astype(np.float64) ** 2).mean()), 0.0))
  return mean, std


def _item_init(mean: np.ndarray, std: float, cfg: LlmConfig, seed: int, noise: float):
  """Item token rows [a, b): the mean text embedding plus noise seeded by the row index."""
  def rows(a, b):
    out = np.empty((b - a, cfg.d_model), np.float32)
    for r in range(a, b):
      out[r - a] = mean + noise * std * np.random.default_rng([seed, r]).standard_normal(
          cfg.d_model, np.float32)
    return out
  return rows


def block_layout(cfg: LlmConfig) -> dict[int, Any]:
  """Where every decoder block's parameter lives in a Hugging Face checkpoint: per layer, the
  model's parameter tree (``layers`` names) with leaves ``(tensor name, kind)``. ``kind`` says how
  the tensor maps to ours: ``'head_major'`` (q/k/v [heads * head_dim, d] -> [d, heads,
  head_dim]), ``'out_proj'`` (o [d, heads * head_dim] -> [heads, head_dim, d]), ``'transposed'``
  (MLP), ``'bias'`` ([heads * head_dim] -> [heads, head_dim]) or ``'norm'`` (Gemma: scale = 1 +
  weight). The loader (:func:`_block_readers`) and the exporter (``hf_export``) both read it."""
  blocks = {}
  for i in range(cfg.num_layers):
    pre = f'model.layers.{i}.'
    attn = {'wq': (pre + 'self_attn.q_proj.weight', 'head_major'),
            'wk': (pre + 'self_attn.k_proj.weight', 'head_major'),
            'wv': (pre + 'self_attn.v_proj.weight', 'head_major'),
            'wo': (pre + 'self_attn.o_proj.weight', 'out_proj')}
    if cfg.attention_bias:
      attn.update(bq=(pre + 'self_attn.q_proj.bias', 'bias'),
                  bk=(pre + 'self_attn.k_proj.bias', 'bias'),
                  bv=(pre + 'self_attn.v_proj.bias', 'bias'))
    if cfg.qk_norm:
      attn.update(q_norm={'scale': (pre + 'self_attn.q_norm.weight', 'norm')},
                  k_norm={'scale': (pre + 'self_attn.k_norm.weight', 'norm')})
    norm = lambda name: {'scale': (pre + name + '.weight', 'norm')}
    blocks[i] = {
        'attn_norm': norm('input_layernorm'),
        'attn': attn,
        'mlp_norm': norm('post_attention_layernorm'),
        'mlp': {'w_gate': (pre + 'mlp.gate_proj.weight', 'transposed'),
                'w_up': (pre + 'mlp.up_proj.weight', 'transposed'),
                'w_down': (pre + 'mlp.down_proj.weight', 'transposed')}}
    if cfg.post_norms:  # Gemma 2/3: post_attention_layernorm norms the attention output
      blocks[i].update(attn_post_norm=norm('post_attention_layernorm'),
                       mlp_norm=norm('pre_feedforward_layernorm'),
                       mlp_post_norm=norm('post_feedforward_layernorm'))
  return blocks


def is_layout_leaf(x: Any) -> bool:
  return isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str)


def _block_readers(t: _Tensors, cfg: LlmConfig) -> dict[int, Any]:
  """Readers of every decoder block's attention, gated MLP and norms (``layers`` names)."""
  H, K, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

  def reader(leaf):
    name, kind = leaf
    heads = K if ('k_proj' in name or 'v_proj' in name) else H
    if kind == 'head_major':
      return _head_major(t, name, heads, hd)
    if kind == 'out_proj':
      return _out_proj(t, name, H, hd)
    if kind == 'bias':
      return _bias(t, name, heads, hd)
    if kind == 'norm':
      return _norm(t, name, cfg.norm_plus_one)
    return _transposed(t, name)

  return jax.tree.map(reader, block_layout(cfg), is_leaf=is_layout_leaf)


def param_readers(t: _Tensors, cfg: LlmConfig, *, seed: int = 0,
                  item_noise: float = 0.5) -> dict[str, Any]:
  """A pure-dict tree (the model's parameter structure) of block readers ``index -> ndarray``."""
  embed_name = 'model.embed_tokens.weight'
  if t.shape(embed_name) != (cfg.text_vocab, cfg.d_model):
    raise DataError(f'{t.checkpoint}: {embed_name} has shape {t.shape(embed_name)}, config.json '
                    f'says ({cfg.text_vocab}, {cfg.d_model})')
  mean, std = _embedding_stats(t, embed_name, cfg.text_vocab)
  items = _item_init(mean, std, cfg, seed, item_noise)
  p1 = cfg.norm_plus_one
  tree: dict[str, Any] = {'embed': _vocab_rows(t, embed_name, cfg, items), 'blocks': {},
                          'final_norm': {'scale': _norm(t, 'model.norm.weight', p1)}}
  if not cfg.tie_embeddings:
    if not t.has('lm_head.weight'):
      raise DataError(f'{t.checkpoint}: config.json field tie_word_embeddings=false, but the '
                      'checkpoint has no lm_head.weight (transformers would start it at random)')
    tree['lm_head'] = _vocab_rows(t, 'lm_head.weight', cfg, items)
  tree['blocks'] = _block_readers(t, cfg)
  return tree


def load_hf_decoder(checkpoint: str | pathlib.Path, *, num_items: int, mesh: Mesh, rules: Any,
                    dtype: str = 'float32', seed: int = 0, item_noise: float = 0.5,
                    vocab_multiple: int | None = None) -> tuple[LlmRecDecoder, _Tensors]:
  """Builds :class:`LlmRecDecoder` from a Hugging Face checkpoint, every parameter in its sharding.

  Returns the model and the tensor reader (its ``reads`` list records every block read, for checks).
  """
  checkpoint = pathlib.Path(checkpoint)
  if vocab_multiple is None:
    shards = math.prod(mesh.shape[a] for a in partitioning.rule_axes(rules, 'vocab')
                       if a in mesh.shape)
    vocab_multiple = 128 * shards
  cfg = read_config(checkpoint, num_items=num_items, dtype=dtype, vocab_multiple=vocab_multiple)
  abstract = nnx.eval_shape(lambda: LlmRecDecoder(cfg, rngs=nnx.Rngs(0)))
  graphdef, abstract_state = nnx.split(abstract, nnx.Param)
  logical = nnx.to_pure_dict(nnx.get_partition_spec(abstract_state))
  shapes = nnx.to_pure_dict(abstract_state)
  shardings = partitioning.tree_shardings(logical, shapes, rules, mesh)
  tensors = _Tensors(checkpoint)
  readers = param_readers(tensors, cfg, seed=seed, item_noise=item_noise)

  def place(reader, shape, sharding):
    if sorted(_flat_keys(reader)) != sorted(_flat_keys(shape)):
      raise AssertionError('reader tree does not match the model')
    return jax.make_array_from_callback(shape.shape, sharding,
                                        lambda idx: _checked(reader(idx), idx, shape.shape))

  params = jax.tree.map(place, readers, shapes, shardings, is_leaf=callable)
  model = nnx.merge(graphdef, params)
  return model, tensors


# ---------------------------------------------------------------------------------------------
# A checkpoint's blocks as the training backbone of the item decoder (config.model.backbone)

def backbone_architecture(checkpoint: str | pathlib.Path) -> dict[str, Any]:
  """The ``config.model`` fields that give :class:`~llm4rec_jax.model.decoder.ItemDecoder` the blocks
  of a Hugging Face checkpoint of any of :data:`MODEL_TYPES`: width, depth, heads, MLP width and
  gate activation, rotary base and scaling (per layer type for Gemma 3), norm epsilon, Qwen2's q/k/v
  biases, Qwen3's and Gemma 3's q/k norms, sliding-window layers (Mistral, Gemma 2/3), Gemma's
  scaled embeddings, Gemma 2/3's output norms, query scale and Gemma 2's attention soft-capping.

  A checkpoint's final-logit soft-capping is not carried over: the item decoder scores the catalog
  with its own item table, not the checkpoint's text head (and the cap would not change a ranking).
  """
  cfg = read_config(checkpoint, num_items=1)  # refuses what the blocks cannot apply
  return dict(d_model=cfg.d_model, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
              num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, mlp_dim=cfg.mlp_dim,
              rope_theta=cfg.rope_theta, rope_scaling=cfg.rope_scaling, rms_eps=cfg.rms_eps,
              attention_bias=cfg.attention_bias, qk_norm=cfg.qk_norm, embed_scale=cfg.embed_scale,
              activation=cfg.activation, layer_types=cfg.layer_types,
              sliding_window=cfg.sliding_window, local_rope_theta=cfg.local_rope_theta,
              local_rope_scaling=cfg.local_rope_scaling,
              query_pre_attn_scalar=cfg.query_pre_attn_scalar, attn_softcap=cfg.attn_softcap,
              post_norms=cfg.post_norms, backbone_type=cfg.model_type)


def backbone_readers(checkpoint: str | pathlib.Path, num_items: int, vocab_size: int, *,
                     seed: int = 0, item_noise: float = 0.5) -> dict[str, Any]:
  """Readers for what a checkpoint gives the item decoder: every block's attention, MLP and norms,
  the final norm, and id-embedding rows started at the text embeddings' mean plus seeded noise (so
  item tokens enter the pretrained blocks at the scale of text tokens)."""
  llm = read_config(checkpoint, num_items=num_items)
  t = _Tensors(pathlib.Path(checkpoint))
  tables = pathlib.Path(checkpoint) / ITEM_TABLES
  readers = {'blocks': _block_readers(t, llm),
             'final_norm': {'scale': _norm(t, 'model.norm.weight', llm.norm_plus_one)}}
  if 0 <= llm.bos_token_id < llm.text_vocab:  # the start token's row (model.bos_token)
    bos = t.rows('model.embed_tokens.weight', np.asarray([llm.bos_token_id]))[0]
    readers['bos'] = lambda idx: np.asarray(bos[idx], np.float32)
  if tables.is_file():  # a recommender's own export (hf_export): its trained item tables
    items = _SafetensorsFile(tables)
    for name in items.keys():
      want = (llm.d_model,) if name == 'bos' else (vocab_size, llm.d_model)
      if items.array(name).shape != want:
        raise DataError(f'{tables}: {name} has shape {items.array(name).shape}, the model '
                        f'needs {want} (another catalog or vocab_size)')
      readers[name] = (lambda a: lambda idx: np.asarray(a[idx], np.float32))(items.array(name))
    return readers
  mean, std = _embedding_stats(t, 'model.embed_tokens.weight', llm.text_vocab)
  items = _item_init(mean, std, llm, seed, item_noise)

  def item_rows(idx):
    (r0, r1), (d0, d1) = _span(idx[0], vocab_size), _span(idx[1], llm.d_model)
    return items(r0, r1)[:, d0:d1]

  return {'item_embed': item_rows, **readers}


def text_embedding_rows(checkpoint: str | pathlib.Path, ids: np.ndarray) -> np.ndarray:
  """float32 [len(ids), d_model]: rows ``ids`` (sorted, unique text token ids) of the checkpoint's
  text embedding table (``model.title_tokens``); only those rows are read."""
  cfg = read_config(checkpoint, num_items=1)
  t = _Tensors(pathlib.Path(checkpoint))
  name = 'model.embed_tokens.weight'
  if t.shape(name) != (cfg.text_vocab, cfg.d_model):
    raise DataError(f'{t.checkpoint}: {name} has shape {t.shape(name)}, config.json says '
                    f'({cfg.text_vocab}, {cfg.d_model})')
  return t.rows(name, ids)


def load_backbone(params: Any, checkpoint: str | pathlib.Path, num_items: int, shardings: Any, *,
                  seed: int = 0) -> Any:
  """``params`` (the item decoder's pure dict) with the checkpoint's blocks (and item rows) placed
  straight into their shardings, one device block at a time; other parameters (fusion, cross-
  attention, heads) keep their initial values."""
  vocab = params['item_embed'].shape[0] if 'item_embed' in params else 1
  readers = backbone_readers(checkpoint, num_items, vocab, seed=seed)
  for table in ('item_embed', 'output_embed'):
    if table not in params:  # item_repr='content': no id table; tied: no output table
      readers.pop(table, None)
  if 'bos' not in params:
    readers.pop('bos', None)
  elif 'bos' not in readers:
    raise ConfigError('model.bos_token', f'{checkpoint}/config.json has no bos_token_id within '
                      'its text vocabulary to start the start token from')

  if 'blocks' in params and 0 not in params['blocks']:  # model.scan_layers: blocks stacked
    readers['blocks'] = stack_readers(readers['blocks'])

  def graft(p, r, s, where):
    if callable(r):
      if not hasattr(p, 'shape'):
        raise ConfigError('model.backbone', f'{where} is not a parameter of the item decoder')
      # Frozen LoRA base weights are stored in model.frozen_dtype: cast each block as it is read.
      return jax.make_array_from_callback(
          p.shape, s, lambda idx: _checked(r(idx), idx, p.shape).astype(p.dtype))
    out = dict(p)
    for k, sub in r.items():
      if k not in p:
        raise ConfigError('model.backbone', f'{where}/{k}: the checkpoint has it, the model not')
      out[k] = graft(p[k], sub, s[k], f'{where}/{k}')
    return out

  return graft(params, readers, shardings, 'params')


def stack_readers(per_layer: dict[int, Any]) -> Any:
  """Per-layer block readers {layer: tree} -> readers of the stacked blocks (``scan_layers``:
  a leading layer axis): index ``[l0:l1, ...]`` reads layers l0..l1-1 and stacks them."""
  n = len(per_layer)

  def stacked(*readers):
    def read(idx):
      l0, l1 = _span(idx[0], n)
      return np.stack([readers[i](idx[1:]) for i in range(l0, l1)])
    return read

  return jax.tree.map(stacked, *[per_layer[i] for i in range(n)], is_leaf=callable)


def _flat_keys(x) -> list:
  return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(
      x, is_leaf=callable)]


def _checked(block: np.ndarray, idx: tuple[slice, ...], shape: Sequence[int]) -> np.ndarray:
  want = tuple(_span(s, n)[1] - _span(s, n)[0] for s, n in zip(idx, shape))
  if block.shape != want:
    raise DataError(f'checkpoint block has shape {block.shape}, expected {want} (shape mismatch '
                    'between config.json and the tensors)')
  return block


def encode_history(tokenizer: Any, prompt: str, history: Sequence[int], cfg: LlmConfig,
                   max_len: int | None = None) -> np.ndarray:
  """Prompt text tokenized by ``transformers`` followed by the history's item tokens (oldest first).

  With ``max_len`` the oldest items are dropped first, the prompt is kept.
  """
  text = list(tokenizer(prompt, add_special_tokens=True)['input_ids'])
  items = [int(i) for i in history]
  if any(i < 1 or i > cfg.num_items for i in items):
    raise ValueError(f'history item ids must be in 1..{cfg.num_items}, got {items}')
  if max_len is not None:
    items = items[max(0, len(items) - (max_len - len(text))):]
  return np.asarray(text + [int(cfg.item_token(i)) for i in items], np.int32)
