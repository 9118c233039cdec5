"""Matrix factorisation of explicit ratings with the debiasing objectives, for rating data without
sequence order (Coat): ``r(u, i) = mu + b_u + b_i + <p_u, q_i>``.

The loss is the squared error of the observed ratings weighted by inverse propensities
(:mod:`llm4rec_jax.debias.propensity`): ``sum w (r - r_hat)^2 / sum w`` (SNIPS, the same
normalisation as the sequence model's ``full_softmax_loss(weights=)``) or ``/ n`` (IPS); all weights
1 is the naive model. Full-batch Adam in one jitted ``lax.scan`` per evaluation interval; the
parameters with the best validation loss (weighted the same way, so for IPS an estimate of the error
under uniform exposure) are kept.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from llm4rec_jax.errors import ConfigError
from llm4rec_jax.model.layers import param


@dataclasses.dataclass(frozen=True)
class MFConfig:
  dim: int = 8
  l2: float = 1e-2  # on the factors and biases (sum of squares / number of ratings)
  learning_rate: float = 0.02
  steps: int = 2000
  eval_every: int = 50
  normalization: str = 'snips'  # 'snips' (divide by the sum of weights) or 'ips' (by n)
  seed: int = 0


class MatrixFactorization(nnx.Module):
  """Biased MF; user rows on the 'users' logical axis, item rows on 'vocab' (id 0 = padding)."""

  def __init__(self, num_users: int, num_items: int, dim: int, *, mean: float, rngs: nnx.Rngs):
    init = nnx.initializers.normal(stddev=0.1)
    self.user_factors = param(rngs, init, (num_users + 1, dim), ('users', 'embed'))
    self.item_factors = param(rngs, init, (num_items + 1, dim), ('vocab', 'embed'))
    self.user_bias = param(rngs, nnx.initializers.zeros, (num_users + 1,), ('users',))
    self.item_bias = param(rngs, nnx.initializers.zeros, (num_items + 1,), ('vocab',))
    self.mean = nnx.Param(jnp.asarray(mean, jnp.float32))

  def __call__(self, users: jax.Array, items: jax.Array) -> jax.Array:
    dot = jnp.sum(self.user_factors[...][users] * self.item_factors[...][items], axis=-1)
    return self.mean[...] + self.user_bias[...][users] + self.item_bias[...][items] + dot


def weighted_mse(pred: jax.Array, ratings: jax.Array, weights: jax.Array,
                 normalization: str) -> jax.Array:
  err = jnp.sum(weights * (pred - ratings) ** 2)
  return err / (jnp.sum(weights) if normalization == 'snips' else weights.shape[0])


def fit(users: np.ndarray, items: np.ndarray, ratings: np.ndarray, weights: np.ndarray, *,
        num_users: int, num_items: int, cfg: MFConfig,
        valid: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        ) -> tuple[MatrixFactorization, dict]:
  """Trains on (user, item, rating, weight) rows; ``valid`` = the same four arrays for model
  selection (default: the training rows). Returns the best model and a summary."""
  if cfg.normalization not in ('snips', 'ips'):
    raise ConfigError('mf.normalization', f"{cfg.normalization!r} is not 'snips' or 'ips'")
  data = tuple(jnp.asarray(x) for x in (users, items, np.asarray(ratings, np.float32),
                                         np.asarray(weights, np.float32)))
  vdata = data if valid is None else tuple(
      jnp.asarray(x) for x in (valid[0], valid[1], np.asarray(valid[2], np.float32),
                               np.asarray(valid[3], np.float32)))
  model = MatrixFactorization(num_users, num_items, cfg.dim, mean=float(np.mean(ratings)),
                              rngs=nnx.Rngs(params=cfg.seed))
  graphdef, params = nnx.split(model, nnx.Param)
  tx = optax.adam(cfg.learning_rate)
  n = float(len(ratings))

  def loss_fn(p, u, i, r, w):
    m = nnx.merge(graphdef, p)
    reg = sum(jnp.sum(x ** 2) for x in (m.user_factors[...], m.item_factors[...],
                                        m.user_bias[...], m.item_bias[...]))
    return weighted_mse(m(u, i), r, w, cfg.normalization) + cfg.l2 * reg / n

  @jax.jit
  def run(p, opt_state):
    def step(carry, _):
      p, s = carry
      g = jax.grad(loss_fn)(p, *data)
      upd, s = tx.update(g, s, p)
      return (optax.apply_updates(p, upd), s), None
    (p, opt_state), _ = jax.lax.scan(step, (p, opt_state), None, length=cfg.eval_every)
    m = nnx.merge(graphdef, p)
    return p, opt_state, weighted_mse(m(vdata[0], vdata[1]), vdata[2], vdata[3], cfg.normalization)

  opt_state = tx.init(params)
  best, best_params, best_step, step = float('inf'), params, 0, 0
  while step < cfg.steps:
    params, opt_state, vloss = run(params, opt_state)
    step += cfg.eval_every
    vloss = float(vloss)
    if vloss < best:
      best, best_params, best_step = vloss, params, step
  return nnx.merge(graphdef, best_params), {'best_step': best_step, 'valid_loss': best}


def one_hot_features(table) -> np.ndarray:
  """float32 [rows, sum of vocab sizes]: one-hot of every categorical field of a FeatureTable."""
  blocks = []
  for name in sorted(table.categorical):
    field = table.categorical[name]
    m = np.zeros((field.num_rows, len(field.vocab) - 1), np.float32)
    for r in range(field.num_rows):
      m[r, field.row(r) - 1] = 1.0
    blocks.append(m)
  if not blocks:
    raise ConfigError('debias.propensity', 'a learned propensity needs categorical features')
  return np.concatenate(blocks, axis=1)
