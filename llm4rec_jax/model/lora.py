"""Low-rank adapters (LoRA) on the decoder blocks' projections, and merging them back.

With ``model.lora_rank > 0`` every targeted projection ``W`` (``model.lora_targets``: attention
``q, k, v, o``, MLP ``gate, up, down``) computes ``x W + (alpha / rank) * (x A) B``: ``A`` starts
at a fan-in normal, ``B`` at zero, so the adapted model starts equal to the base. The base
projections (targeted or not, and Qwen2's q/k/v biases) are frozen and stored in
``model.frozen_dtype``; norms, item tables, heads and every module the backbone does not have stay
trainable (see :func:`is_frozen`).

``A`` carries the base weight's input axes and ``B`` its output axes (logical names), so the
adapters are sharded like the weight they adapt; the rank axis is never sharded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

# Target name -> (module, parameter) inside a decoder block.
TARGETS = {'q': ('attn', 'wq'), 'k': ('attn', 'wk'), 'v': ('attn', 'wv'), 'o': ('attn', 'wo'),
           'gate': ('mlp', 'w_gate'), 'up': ('mlp', 'w_up'), 'down': ('mlp', 'w_down')}
# Block parameters frozen when adapters are on: every base projection and the q/k/v biases.
FROZEN = {'attn': ('wq', 'wk', 'wv', 'wo', 'bq', 'bk', 'bv'),
          'mlp': ('w_gate', 'w_up', 'w_down')}


def parse_targets(targets: str | Sequence[str]) -> tuple[str, ...]:
  """``'q,k,v,o'`` (or a sequence of names) -> ``('q', 'k', 'v', 'o')``; raises ValueError naming
  an unknown target."""
  names = [t.strip() for t in targets.split(',')] if isinstance(targets, str) else list(targets)
  names = [t for t in names if t]
  unknown = [t for t in names if t not in TARGETS]
  if unknown:
    raise ValueError(f'unknown targets {unknown}; choose from {tuple(TARGETS)}')
  return tuple(dict.fromkeys(names))


class LoraAdapter(nnx.Module):
  """The low-rank update ``scale * (x A) B`` of one projection.

  ``A`` [*in_shape, rank] (axes ``in_axes`` + unsharded rank), ``B`` [rank, *out_shape] (unsharded
  rank + ``out_axes``), both float32; ``B`` starts at zero.
  """

  def __init__(self, in_shape: Sequence[int], in_axes: tuple[str | None, ...],
               out_shape: Sequence[int], out_axes: tuple[str | None, ...], *, rank: int,
               alpha: float, rngs: nnx.Rngs):
    fan_in = math.prod(in_shape)
    init_a = nnx.initializers.truncated_normal(stddev=fan_in ** -0.5)
    self.a = nnx.Param(init_a(rngs.params(), (*in_shape, rank), jnp.float32),
                       sharding_names=(*in_axes, None), eager_sharding=False)
    self.b = nnx.Param(jnp.zeros((rank, *out_shape), jnp.float32),
                       sharding_names=(None, *out_axes), eager_sharding=False)
    self.scale = alpha / rank
    self.in_ndim = len(in_shape)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x [..., *in_shape] -> [..., *out_shape] in x's dtype."""
    h = jnp.tensordot(x, self.a[...].astype(x.dtype), axes=self.in_ndim)  # [..., rank]
    return jnp.tensordot(h * self.scale, self.b[...].astype(x.dtype), axes=1)


def delta(a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
  """The dense update ``scale * A B`` [*in_shape, *out_shape] (float32) of one adapter."""
  return scale * jnp.tensordot(a.astype(jnp.float32), b.astype(jnp.float32), axes=1)


def _key(k) -> Any:
  return getattr(k, 'key', getattr(k, 'idx', k))


def is_frozen(path: Sequence[Any]) -> bool:
  """Whether the parameter at ``path`` (a pytree key path into the item decoder's parameter dict)
  is frozen by LoRA: the blocks' base projections and q/k/v biases. Norms (a few thousand values
  per layer, and what lets the pretrained blocks re-scale to item tokens), the item tables, heads,
  cross-attention, fusion and text encoder are trained."""
  keys = [_key(k) for k in path]
  if len(keys) == 4 and isinstance(keys[1], int):  # blocks/<layer>/module/name (not scanned)
    keys = [keys[0]] + keys[2:]
  return (len(keys) == 3 and keys[0] == 'blocks' and keys[1] in FROZEN
          and keys[2] in FROZEN[keys[1]])


def merge_params(params: dict[str, Any], scale: float) -> dict[str, Any]:
  """The item decoder's pure-dict parameters with every adapter folded into its base weight
  (``W + scale * A B``, in float32) and the adapters removed: the parameters of the same model
  with ``lora_rank = 0``. Works on sharded arrays (jit it with out_shardings to keep them so)."""
  out = dict(params)
  blocks = {}
  for i, block in params['blocks'].items():
    block = {k: dict(v) if isinstance(v, dict) else v for k, v in block.items()}
    for target, (module, weight) in TARGETS.items():
      adapter = block[module].pop('lora_' + target, None)
      if adapter is not None:
        block[module][weight] = (block[module][weight].astype(jnp.float32)
                                 + delta(adapter['a'], adapter['b'], scale))
    for module, names in FROZEN.items():  # untargeted base weights: float32, like a full run's
      for name in names:
        if name in block.get(module, {}):
          block[module][name] = block[module][name].astype(jnp.float32)
    blocks[i] = block
  out['blocks'] = blocks
  return out
