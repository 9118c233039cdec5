"""Transformer building blocks (Flax NNX). Every parameter carries logical axis names.

Logical axes used: ``vocab`` (item catalog), ``embed`` (model width), ``heads``/``kv_heads`` (attention
heads), ``head_dim``, ``mlp`` (feed-forward width), ``norm`` (norm scales and other per-channel
vectors). One rules table in the
config maps them to mesh axes (see ``llm4rec_jax.partitioning``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from llm4rec_jax.model import lora as lora_lib

Initializer = Callable[..., jax.Array]


def param(rngs: nnx.Rngs, init: Initializer, shape: Sequence[int], axes: tuple[str | None, ...],
          dtype=jnp.float32) -> nnx.Param:
  """A parameter annotated with logical axis names (placed by the partitioner, not eagerly)."""
  assert len(axes) == len(shape), (shape, axes)
  return nnx.Param(init(rngs.params(), tuple(shape), dtype), sharding_names=axes,
                   eager_sharding=False)


def fan_in_init(fan_in: int) -> Initializer:
  """Truncated normal with std 1/sqrt(fan_in) (variance preserving for a matmul over ``fan_in``)."""
  return nnx.initializers.truncated_normal(stddev=fan_in ** -0.5)


class RMSNorm(nnx.Module):
  """Root-mean-square layer norm with a learned scale (computed in float32)."""

  def __init__(self, dim: int, *, eps: float = 1e-6, rngs: nnx.Rngs):
    self.scale = param(rngs, nnx.initializers.ones, (dim,), ('norm',))
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return (y * self.scale[...]).astype(x.dtype)


def rope_frequencies(head_dim: int, theta: float, scaling: tuple = ()) -> jax.Array:
  """Rotary angular frequencies [head_dim // 2]: ``theta ** (-2i / head_dim)``.

  ``scaling = ('linear', factor)`` divides every frequency by ``factor`` (positions interpolated,
  as Gemma 3's global layers do). ``scaling = ('llama3', factor, low_freq_factor,
  high_freq_factor, original_max_len)`` is Llama 3.1's long-context rescaling: wavelengths longer
  than ``original_max_len / low_freq_factor`` are stretched by ``factor``, those shorter than
  ``original_max_len / high_freq_factor`` kept, and the band between interpolated linearly in
  ``original_max_len / wavelength``.
  """
  half = head_dim // 2
  freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  if not scaling:
    return freq
  if scaling[0] == 'linear':
    return freq / scaling[1]
  kind, factor, low, high, original = scaling
  if kind != 'llama3':
    raise ValueError(f'rotary scaling {kind!r} is not supported (linear, llama3)')
  keep = jnp.clip((original * freq / (2 * math.pi) - low) / (high - low), 0.0, 1.0)
  return keep * freq + (1 - keep) * freq / factor


def rotary(x: jax.Array, positions: jax.Array, theta: float, scaling: tuple = ()) -> jax.Array:
  """Rotary position embedding on the last axis of ``x`` [batch, seq, heads, head_dim].

  ``scaling``: see :func:`rope_frequencies`.
  """
  freq = rope_frequencies(x.shape[-1], theta, scaling)  # [half]
  angle = positions[..., None].astype(jnp.float32) * freq  # [batch, seq, half]
  sin, cos = jnp.sin(angle)[:, :, None, :], jnp.cos(angle)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


ATTENTION_IMPLS = ('auto', 'xla', 'cudnn')


def attention_impl(impl: str, dtype) -> str:
  """Resolves ``'auto'``: cuDNN's fused (flash) kernel on GPUs in 16-bit compute, else XLA's."""
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f'attention implementation {impl!r} is not one of {ATTENTION_IMPLS}')
  if impl != 'auto':
    return impl
  half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  return 'cudnn' if half and jax.default_backend() == 'gpu' else 'xla'


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                          impl: str = 'auto', *, scale: float | None = None,
                          softcap: float = 0.0) -> jax.Array:
  """``jax.nn.dot_product_attention`` with the implementation chosen by :func:`attention_impl`.

  jax picks XLA's unfused attention when no implementation is named, also on GPUs; ``'auto'`` names
  cuDNN there (the boolean mask becomes the kernel's bias) and falls back to XLA when cuDNN rejects
  the shapes at trace time (e.g. a head size it does not support). ``scale`` multiplies the scores
  (default ``head_dim ** -0.5``). ``softcap > 0`` caps the scaled scores at ``softcap *
  tanh(score / softcap)`` (Gemma 2), which jax's kernels do not offer: :func:`softcapped_attention`.
  """
  if softcap:
    return softcapped_attention(q, k, v, mask, scale=scale, softcap=softcap)
  chosen = attention_impl(impl, q.dtype)
  if chosen == 'cudnn' and impl == 'auto':
    try:
      return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation='cudnn')
    except (ValueError, NotImplementedError, RuntimeError):
      chosen = 'xla'
  return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation=chosen)


def softcapped_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *,
                         scale: float | None, softcap: float) -> jax.Array:
  """Attention with tanh-capped scores, unfused: q [batch, seq, heads, hd], k/v [batch, seq,
  kv_heads, hd] (query head h reads key/value head ``h // (heads // kv_heads)``), mask bool
  [batch, 1, seq, seq] -> [batch, seq, heads, hd]. Scores and softmax in float32."""
  b, s, h, hd = q.shape
  groups = h // k.shape[2]
  scale = hd ** -0.5 if scale is None else scale
  qg = q.reshape(b, s, k.shape[2], groups, hd)  # [batch, seq, kv_heads, groups, hd]
  scores = jnp.einsum('bqkgd,bskd->bkgqs', qg, k, preferred_element_type=jnp.float32) * scale
  scores = softcap * jnp.tanh(scores / softcap)  # [batch, kv_heads, groups, seq_q, seq_k]
  scores = jnp.where(mask[:, :, None], scores, -jnp.inf)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum('bkgqs,bskd->bqkgd', probs, v)
  return out.reshape(b, s, h, hd)


class Attention(nnx.Module):
  """Causal self-attention with optional grouped-query attention (``num_kv_heads < num_heads``).

  ``impl`` picks the attention kernel (see :func:`dot_product_attention`): ``'auto'`` gives GPUs the
  fused cuDNN kernel in bf16/fp16 and everything else XLA's. ``rope_scaling``: see
  :func:`rope_frequencies`. Options of pretrained decoders: ``bias`` adds biases to the q/k/v
  projections (Qwen2), ``qk_norm`` an RMSNorm over each query and key head before the rotary
  embedding (Qwen3, Gemma 3), with epsilon ``norm_eps``; ``sliding_window > 0`` lets a query at
  position p see only keys at positions above ``p - sliding_window`` (Mistral, the local layers of
  Gemma 2/3); ``scale`` replaces ``head_dim ** -0.5`` as the score scale (Gemma's
  ``query_pre_attn_scalar ** -0.5``); ``softcap > 0`` tanh-caps the scores (Gemma 2).
  """

  def __init__(self, d_model: int, num_heads: int, num_kv_heads: int, head_dim: int, *,
               rope_theta: float, dtype, rngs: nnx.Rngs, impl: str = 'auto',
               rope_scaling: tuple = (), bias: bool = False, qk_norm: bool = False,
               norm_eps: float = 1e-6, sliding_window: int = 0, scale: float | None = None,
               softcap: float = 0.0, weight_dtype=jnp.float32, lora_rank: int = 0,
               lora_alpha: float = 1.0, lora_targets: tuple[str, ...] = ()):
    if num_heads % num_kv_heads:
      raise ValueError(f'num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads}')
    init = fan_in_init(d_model)
    wdt = weight_dtype
    shapes = {'q': ((d_model, num_heads, head_dim), ('embed', 'heads', 'head_dim')),
              'k': ((d_model, num_kv_heads, head_dim), ('embed', 'kv_heads', 'head_dim')),
              'v': ((d_model, num_kv_heads, head_dim), ('embed', 'kv_heads', 'head_dim')),
              'o': ((num_heads, head_dim, d_model), ('heads', 'head_dim', 'embed'))}
    self.wq = param(rngs, init, *shapes['q'], dtype=wdt)
    self.wk = param(rngs, init, *shapes['k'], dtype=wdt)
    self.wv = param(rngs, init, *shapes['v'], dtype=wdt)
    self.wo = param(rngs, fan_in_init(num_heads * head_dim), *shapes['o'], dtype=wdt)
    for name, (shape, axes) in shapes.items():
      # q/k/v read d_model and write heads; o reads heads x head_dim and writes d_model.
      split = 2 if name == 'o' else 1
      adapter = (lora_lib.LoraAdapter(shape[:split], axes[:split], shape[split:], axes[split:],
                                      rank=lora_rank, alpha=lora_alpha, rngs=rngs)
                 if lora_rank and name in lora_targets else None)
      setattr(self, 'lora_' + name, adapter)
    self.bias = bias
    if bias:
      zeros = nnx.initializers.zeros
      self.bq = param(rngs, zeros, (num_heads, head_dim), ('heads', 'head_dim'))
      self.bk = param(rngs, zeros, (num_kv_heads, head_dim), ('kv_heads', 'head_dim'))
      self.bv = param(rngs, zeros, (num_kv_heads, head_dim), ('kv_heads', 'head_dim'))
    self.q_norm = RMSNorm(head_dim, eps=norm_eps, rngs=rngs) if qk_norm else None
    self.k_norm = RMSNorm(head_dim, eps=norm_eps, rngs=rngs) if qk_norm else None
    self.rope_theta = rope_theta
    self.rope_scaling = tuple(rope_scaling)
    self.sliding_window, self.scale, self.softcap = sliding_window, scale, softcap
    self.dtype = dtype
    if impl not in ATTENTION_IMPLS:
      raise ValueError(f'attention implementation {impl!r} is not one of {ATTENTION_IMPLS}')
    self.impl = impl

  def _project(self, x: jax.Array, name: str) -> jax.Array:
    """x [batch, seq, d_model] -> [batch, seq, heads, head_dim] through ``w{name}`` (+ bias)."""
    dt = self.dtype
    y = jnp.einsum('bld,dhk->blhk', x, getattr(self, 'w' + name)[...].astype(dt))
    adapter = getattr(self, 'lora_' + name)
    if adapter is not None:
      y = y + adapter(x)
    return y + getattr(self, 'b' + name)[...].astype(dt) if self.bias else y

  def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array) -> jax.Array:
    """x [batch, seq, d_model], positions int [batch, seq], mask bool [batch, 1, seq, seq]."""
    if self.sliding_window:
      # Counted in positions, as Hugging Face counts it in (left-padding-free) indices.
      near = positions[:, :, None] - positions[:, None, :] < self.sliding_window  # [b, s, s]
      eye = jnp.eye(x.shape[1], dtype=bool)  # padded queries keep their one key
      mask = mask & (near | eye)[:, None]
    q = self._project(x, 'q')  # [batch, seq, heads, head_dim]
    k = self._project(x, 'k')  # [batch, seq, kv_heads, head_dim]
    v = self._project(x, 'v')
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    q = rotary(q, positions, self.rope_theta, self.rope_scaling)
    k = rotary(k, positions, self.rope_theta, self.rope_scaling)
    out = dot_product_attention(q, k, v, mask, self.impl, scale=self.scale,
                                softcap=self.softcap)  # [batch, seq, heads, head_dim]
    y = jnp.einsum('blhk,hkd->bld', out, self.wo[...].astype(self.dtype))
    return y if self.lora_o is None else y + self.lora_o(out)


LAYER_TYPES = ('full_attention', 'sliding_attention')


def layer_attention(cfg, layer: int) -> dict:
  """Attention options of decoder layer ``layer`` (keyword arguments of :class:`Attention`).

  ``cfg`` is a decoder config (``decoder.DecoderConfig`` or ``hf_import.LlmConfig``) with
  ``layer_types`` (one of :data:`LAYER_TYPES` per layer, Hugging Face's names; () = all full),
  ``sliding_window``, ``rope_theta``/``rope_scaling`` (full layers), ``local_rope_theta``/
  ``local_rope_scaling`` (sliding layers; ``local_rope_theta=0`` = the full layers' rotary),
  ``query_pre_attn_scalar`` (0 = head size) and ``attn_softcap``.
  """
  local = bool(cfg.layer_types) and cfg.layer_types[layer] == 'sliding_attention'
  theta, scaling = cfg.rope_theta, cfg.rope_scaling
  if local and cfg.local_rope_theta:
    theta, scaling = cfg.local_rope_theta, cfg.local_rope_scaling
  return dict(rope_theta=theta, rope_scaling=tuple(scaling),
              sliding_window=cfg.sliding_window if local else 0,
              scale=cfg.query_pre_attn_scalar ** -0.5 if cfg.query_pre_attn_scalar else None,
              softcap=cfg.attn_softcap)


ACTIVATIONS = ('silu', 'gelu_tanh')


class SwiGLU(nnx.Module):
  """Gated feed-forward: ``down(act(gate(x)) * up(x))``; ``act`` is SiLU (SwiGLU) or, with
  ``activation='gelu_tanh'``, tanh-approximated GELU (Gemma's GeGLU)."""

  def __init__(self, d_model: int, mlp_dim: int, *, dtype, rngs: nnx.Rngs,
               activation: str = 'silu', weight_dtype=jnp.float32, lora_rank: int = 0,
               lora_alpha: float = 1.0, lora_targets: tuple[str, ...] = ()):
    if activation not in ACTIVATIONS:
      raise ValueError(f'activation {activation!r} is not one of {ACTIVATIONS}')
    wdt = weight_dtype
    self.w_gate = param(rngs, fan_in_init(d_model), (d_model, mlp_dim), ('embed', 'mlp'), wdt)
    self.w_up = param(rngs, fan_in_init(d_model), (d_model, mlp_dim), ('embed', 'mlp'), wdt)
    self.w_down = param(rngs, fan_in_init(mlp_dim), (mlp_dim, d_model), ('mlp', 'embed'), wdt)
    io = {'gate': ((d_model,), ('embed',), (mlp_dim,), ('mlp',)),
          'up': ((d_model,), ('embed',), (mlp_dim,), ('mlp',)),
          'down': ((mlp_dim,), ('mlp',), (d_model,), ('embed',))}
    for name, (i_shape, i_axes, o_shape, o_axes) in io.items():
      setattr(self, 'lora_' + name,
              lora_lib.LoraAdapter(i_shape, i_axes, o_shape, o_axes, rank=lora_rank,
                                   alpha=lora_alpha, rngs=rngs)
              if lora_rank and name in lora_targets else None)
    self.dtype = dtype
    self.activation = activation

  def _project(self, x: jax.Array, name: str) -> jax.Array:
    y = x @ getattr(self, 'w_' + name)[...].astype(self.dtype)
    adapter = getattr(self, 'lora_' + name)
    return y if adapter is None else y + adapter(x)

  def __call__(self, x: jax.Array) -> jax.Array:
    g = self._project(x, 'gate')
    g = jax.nn.gelu(g, approximate=True) if self.activation == 'gelu_tanh' else jax.nn.silu(g)
    return self._project(g * self._project(x, 'up'), 'down')


class CausalFilter(nnx.Module):
  """A learned causal low-pass filter over the sequence, with its high-pass part re-weighted.

  The frequency-domain idea of BSARec/FMLP-Rec (split a sequence of item vectors into a smooth,
  low-frequency trend and the high-frequency rest, and weigh the two separately) made causal, so it
  fits training on every position: channel c's low-pass part at position t is the mean of the valid
  items at t, t-1, ..., t-lags+1 weighted by ``exp(-lag / tau_c)`` and renormalised over the valid
  ones (a short history is not diluted by padding); ``tau_c`` (the cut-off) is learned per channel.
  The output is ``low + gain * (x - low)`` with a learned per-channel ``gain``. An FFT over the whole
  sequence would let position t see later items, which next-item training on every position cannot
  allow. Both parameters are vectors, so weight decay (matrices only) leaves them alone.
  """

  def __init__(self, d_model: int, lags: int, *, window: float, rngs: nnx.Rngs):
    self.log_tau = param(rngs, nnx.initializers.constant(math.log(window)), (d_model,),
                         ('norm',))
    self.gain = param(rngs, nnx.initializers.constant(0.5), (d_model,), ('norm',))
    self.lags = lags

  def __call__(self, x: jax.Array, valid: jax.Array) -> jax.Array:
    """x [batch, seq, d], valid bool [batch, seq] -> [batch, seq, d] (zero where not valid)."""
    seq = x.shape[1]
    lag = jnp.arange(seq)[:, None] - jnp.arange(seq)[None, :]  # [t, s] = t - s
    inside = (lag >= 0) & (lag < self.lags)
    tau = jnp.exp(self.log_tau[...])  # [d]
    kernel = jnp.where(inside[..., None], jnp.exp(-jnp.maximum(lag, 0)[..., None] / tau), 0.0)
    v = valid.astype(jnp.float32)
    num = jnp.einsum('tsd,bsd->btd', kernel, x.astype(jnp.float32) * v[..., None])
    den = jnp.einsum('tsd,bs->btd', kernel, v)
    low = num / jnp.maximum(den, 1e-9)
    out = low + self.gain[...] * (x.astype(jnp.float32) - low)
    return (out * v[..., None]).astype(x.dtype)
