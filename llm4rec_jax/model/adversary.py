"""The adversary head of adversarial fairness (``debias.fairness='adversarial'``): predicts a
sensitive user attribute from the user representation; ``llm4rec_jax.debias.fairness`` holds the
gradient reversal and the loss it is trained with."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from llm4rec_jax.model.layers import fan_in_init, param


class AdversaryHead(nnx.Module):
  """A one-hidden-layer MLP from a user representation [batch, d_model] to attribute logits."""

  def __init__(self, d_model: int, num_classes: int, *, hidden: int = 0, rngs: nnx.Rngs):
    hidden = hidden or d_model
    self.w1 = param(rngs, fan_in_init(d_model), (d_model, hidden), ('embed', 'mlp'))
    self.b1 = param(rngs, nnx.initializers.zeros, (hidden,), ('mlp',))
    self.w2 = param(rngs, fan_in_init(hidden), (hidden, num_classes), ('mlp', None))
    self.b2 = param(rngs, nnx.initializers.zeros, (num_classes,), (None,))

  def __call__(self, x: jax.Array) -> jax.Array:
    h = jax.nn.relu(x.astype(jnp.float32) @ self.w1[...] + self.b1[...])  # [batch, hidden]
    return h @ self.w2[...] + self.b2[...]  # [batch, classes]
