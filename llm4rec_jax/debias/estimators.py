"""Debiased rating estimators for matrix factorisation, many models trained in one jitted call.

Each model minimises one estimator of the squared rating error under uniform exposure, from
self-selected (missing-not-at-random) observed ratings with inverse-propensity weights ``w``:

  * ``naive``: the plain mean squared error of the observed ratings;
  * ``snips``: ``sum w e / sum w`` (Schnabel et al., ICML 2016). In full batch IPS equals SNIPS up to
    a constant factor, which only rescales the regulariser (a grid over ``l2`` absorbs it);
  * ``dr``: doubly robust joint learning (Wang et al., ICML 2019) with a rating-imputation model:
    ``mean over all pairs of e_hat + sum w (e - e_hat) / sum w`` (the self-normalised form), where
    ``e_hat = (r_tilde - r_hat)^2`` with the imputed rating ``r_tilde`` held fixed; the imputation
    model (same MF form, own parameters) fits the observed ratings by SNIPS, in the same step. The
    estimate is unbiased when either the propensities or the imputed errors are right;
  * ``mnar``: a joint likelihood of the ratings and of which pairs were rated, with ratings missing
    not at random (in the spirit of Marlin & Zemel, RecSys 2009, and Hernandez-Lobato et al., ICML
    2014). The rating of every pair, observed or not, is a discretised normal around the MF
    prediction, ``P(r | u, i) = softmax_r(-(r - r_hat)^2 / 2 sigma^2)`` over the integer levels
    ``1..L`` (``sigma = cfg.mnar_sigma``); a pair is rated with probability
    ``sigmoid(c_r + d_u + e_i)``, which depends on the rating value itself (the self-selection,
    ``c_r = logit(level_propensity[r])``, given: e.g. naive Bayes from a few randomly exposed
    ratings) and on the user's and item's activity (``d_u``, ``e_i``, learned). Observed pairs
    contribute ``log P(r | u, i) + log P(rated | r, u, i)``, unobserved ones
    ``log sum_r P(r | u, i) P(not rated | r, u, i)``: items a user left unrated pull the prediction
    towards the ratings that tend to go unrated. The model's prediction (for MSE and ranking) is
    the location ``r_hat``. ``weights`` are unused. Learning ``c_r`` as well
    is not identified in practice: on Coat the model then explains every unrated pair as a low
    rating and its predictions drift below the rating scale. Ratings must be integers ``1..L``.

:func:`fit_many` trains ``K`` models at once (``jax.vmap``: own seed, ``l2``, weights and validation
set each) with full-batch Adam, the whole run in one ``lax.scan``. Model selection uses ratings of
randomly exposed items (an unbiased validation set): every ``eval_every`` steps the validation MSE
and NDCG@k are measured and the best parameters under each criterion are kept.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from llm4rec_jax.debias.mf import MatrixFactorization
from llm4rec_jax.errors import ConfigError

ESTIMATORS = ('naive', 'snips', 'dr', 'mnar')
CRITERIA = ('mse', 'ndcg')


@dataclasses.dataclass(frozen=True)
class FitConfig:
  estimator: str = 'naive'
  dim: int = 8
  learning_rate: float = 0.02
  steps: int = 2000
  eval_every: int = 25
  k: int = 5  # NDCG@k for model selection
  threshold: float = 4.0  # relevant = rating >= threshold
  mnar_sigma: float = 1.0  # 'mnar': the spread of the discretised normal rating distribution


@dataclasses.dataclass(frozen=True)
class RandomRatings:
  """Ratings of randomly exposed items, one row per user, padded: int32/float32 [users, m]."""
  users: np.ndarray
  items: np.ndarray
  ratings: np.ndarray
  mask: np.ndarray  # bool: real entries

  @classmethod
  def from_rows(cls, users: np.ndarray, items: np.ndarray, ratings: np.ndarray) -> RandomRatings:
    """Groups (user, item, rating) rows by user into padded rows."""
    ids = np.unique(users)
    width = max(int(np.sum(users == u)) for u in ids)
    out = [np.zeros((len(ids), width), t) for t in (np.int32, np.int32, np.float32, bool)]
    for r, u in enumerate(ids):
      sel = np.nonzero(users == u)[0]
      out[0][r], out[1][r, :len(sel)], out[2][r, :len(sel)] = u, items[sel], ratings[sel]
      out[3][r, :len(sel)] = True
    return cls(*out)


def ndcg_at_k(pred: jax.Array, rel: jax.Array, mask: jax.Array, k: int) -> jax.Array:
  """Mean NDCG@k (binary gains) over rows with a relevant entry; [users, m] inputs, padded entries
  masked. Ties are broken against the relevant entries, as in ``unbiased_eval.rating_metrics``."""
  rel = rel & mask
  score = jnp.where(mask, pred, -jnp.inf)
  order = jnp.lexsort((rel, -score), axis=-1)  # by score descending, irrelevant first among ties
  top = jnp.take_along_axis(rel, order, axis=-1)[:, :k].astype(jnp.float32)  # [users, k]
  discounts = 1.0 / jnp.log2(jnp.arange(2, k + 2, dtype=jnp.float32))
  dcg = jnp.sum(top * discounts[:top.shape[1]], axis=-1)
  n_rel = jnp.sum(rel, axis=-1)
  idcg = jnp.sum(discounts * (jnp.arange(k) < n_rel[:, None]), axis=-1)
  has = n_rel > 0
  return jnp.sum(jnp.where(has, dcg / jnp.maximum(idcg, 1e-9), 0.0)) / jnp.maximum(jnp.sum(has), 1)


def _init(num_users: int, num_items: int, dim: int, mean: float, seed: int):
  model = MatrixFactorization(num_users, num_items, dim, mean=mean, rngs=nnx.Rngs(params=seed))
  return nnx.split(model, nnx.Param)


def dense_predictions(graphdef: nnx.GraphDef, params) -> jax.Array:
  """float32 [users + 1, items + 1]: every rating of one model (vmap for a stack of models)."""
  m = nnx.merge(graphdef, params)
  dot = m.user_factors[...] @ m.item_factors[...].T  # [users + 1, items + 1]
  return m.mean[...] + m.user_bias[...][:, None] + m.item_bias[...][None, :] + dot


def _mnar_nll(pred: jax.Array, level_logits: jax.Array, missing: dict, sigma: float,
              rating_index: jax.Array, rated: jax.Array, unrated: jax.Array) -> jax.Array:
  """Negative joint log-likelihood (summed) of the ratings and the missingness pattern, ``mnar``.

  pred: [U + 1, I + 1] rating predictions; level_logits: [L] the logit of being rated by rating
  level; missing: ``user`` [U + 1] and ``item`` [I + 1] terms added to it; rating_index:
  [U + 1, I + 1] observed level - 1 (anything where unrated); rated / unrated: bool masks of the
  real pairs.
  """
  levels = jnp.arange(1, level_logits.shape[0] + 1, dtype=jnp.float32)
  log_p_r = jax.nn.log_softmax(-(levels - pred[..., None]) ** 2 / (2.0 * sigma ** 2), axis=-1)
  logit = level_logits + missing['user'][:, None, None] + missing['item'][None, :, None]
  observed = jnp.take_along_axis(log_p_r + jax.nn.log_sigmoid(logit), rating_index[..., None],
                                 axis=-1)[..., 0]
  unobserved = jax.nn.logsumexp(log_p_r + jax.nn.log_sigmoid(-logit), axis=-1)
  return -(jnp.sum(jnp.where(rated, observed, 0.0)) + jnp.sum(jnp.where(unrated, unobserved, 0.0)))


def fit_many(users: np.ndarray, items: np.ndarray, ratings: np.ndarray, weights: np.ndarray,
             l2: np.ndarray, seeds: np.ndarray, valid: list[RandomRatings], *, num_users: int,
             num_items: int, cfg: FitConfig, level_propensity: np.ndarray | None = None
             ) -> tuple[nnx.GraphDef, dict, dict]:
  """Trains ``K = len(l2)`` models on the same observed ratings.

  Args:
    users, items, ratings: the observed training ratings [n].
    weights: float [K, n] inverse-propensity weights of each model (ignored by ``naive``).
    l2: float [K]: ``l2 * sum of squared parameters / n`` is added to each model's loss.
    seeds: int [K] initialisation seeds.
    valid: K validation sets of randomly exposed ratings (same shapes).
    level_propensity: float [K, L + 1] (``mnar`` only): the probability that a pair with rating
      ``r`` is rated, at index ``r`` (index 0 unused), e.g. ``propensity.naive_bayes_propensity``;
      for small propensities mostly the ratios between levels matter (the learned user and item
      terms absorb the overall scale).

  Returns:
    ``(graphdef, params, info)``: ``params[criterion]`` is the stacked [K, ...] parameters with the
    best validation ``mse`` / ``ndcg``; ``info[criterion]`` holds the best value and step [K].
  """
  if cfg.estimator not in ESTIMATORS:
    raise ConfigError('estimator', f'{cfg.estimator!r} is not one of {ESTIMATORS}')
  k_models = len(l2)
  if not (np.shape(weights)[0] == len(seeds) == len(valid) == k_models):
    raise ValueError('weights, l2, seeds and valid need one entry per model')
  n = float(len(ratings))
  mean = float(np.mean(ratings))
  if cfg.estimator == 'mnar':
    if not np.all((ratings >= 1) & (ratings == np.round(ratings))) or np.max(ratings) > 20:
      raise ValueError("estimator 'mnar' needs integer ratings 1..L (L <= 20), got values "
                       f'{np.unique(ratings)[:10]}')
    if level_propensity is None or np.shape(level_propensity) != (k_models, np.max(ratings) + 1):
      raise ValueError("estimator 'mnar' needs level_propensity [K, L + 1] with L = "
                       f'{int(np.max(ratings))}, got {np.shape(level_propensity)}')
    lp = np.clip(np.asarray(level_propensity, np.float64)[:, 1:], 1e-6, 1 - 1e-6)
    level_logits = jnp.asarray(np.log(lp) - np.log1p(-lp), jnp.float32)  # [K, L]
  graphdef, _ = _init(num_users, num_items, cfg.dim, mean, 0)
  stack = lambda trees: jax.tree.map(lambda *x: jnp.stack(x), *trees)
  params = stack([_init(num_users, num_items, cfg.dim, mean, int(s))[1] for s in seeds])
  if cfg.estimator == 'dr':
    imputation = stack([_init(num_users, num_items, cfg.dim, mean, int(s) + 7919)[1]
                        for s in seeds])
    params = {'pred': params, 'imp': imputation}
  elif cfg.estimator == 'mnar':
    missing = {'user': jnp.zeros((k_models, num_users + 1)),
               'item': jnp.zeros((k_models, num_items + 1))}
    params = {'pred': params, 'missing': missing}
  else:
    params = {'pred': params}
  u, i = jnp.asarray(users, jnp.int32), jnp.asarray(items, jnp.int32)
  r = jnp.asarray(ratings, jnp.float32)
  w_all = jnp.asarray(weights, jnp.float32) if cfg.estimator != 'naive' else jnp.ones((k_models,
                                                                                     len(r)))
  if cfg.estimator != 'mnar':
    level_logits = jnp.zeros((k_models, 1))  # unused
  v = [jnp.asarray(np.stack([getattr(x, f) for x in valid])) for f in
       ('users', 'items', 'ratings', 'mask')]
  real = np.zeros((num_users + 1, num_items + 1), np.float32)
  real[1:, 1:] = 1.0
  real = jnp.asarray(real)
  if cfg.estimator == 'mnar':
    rating_index = np.full((num_users + 1, num_items + 1), -1, np.int32)  # -1: not rated
    rating_index[users, items] = np.asarray(np.round(ratings), np.int32) - 1
    rated_mask = jnp.asarray(rating_index >= 0)
    unrated_mask = (~rated_mask) & (real > 0)
    rating_index = jnp.asarray(np.maximum(rating_index, 0))
  tx = optax.adam(cfg.learning_rate)

  def reg(p):
    return sum(jnp.sum(x ** 2) for x in jax.tree.leaves(p) if x.ndim > 0) / n

  def loss_fn(p, w, lam, c):
    m = nnx.merge(graphdef, p['pred'])
    pred = m(u, i)  # [n]
    err = (pred - r) ** 2
    if cfg.estimator == 'naive':
      return jnp.mean(err) + lam * reg(p['pred'])
    if cfg.estimator == 'mnar':
      return _mnar_nll(dense_predictions(graphdef, p['pred']), c, p['missing'], cfg.mnar_sigma,
                       rating_index, rated_mask, unrated_mask) / n + lam * reg(p['pred'])
    loss = jnp.sum(w * err) / jnp.sum(w)
    if cfg.estimator == 'dr':
      g = nnx.merge(graphdef, p['imp'])
      imputed = jax.lax.stop_gradient(dense_predictions(graphdef, p['imp']))  # [U + 1, I + 1]
      e_hat_all = (imputed - dense_predictions(graphdef, p['pred'])) ** 2
      e_hat = (jax.lax.stop_gradient(g(u, i)) - pred) ** 2  # [n]
      loss = jnp.sum(real * e_hat_all) / jnp.sum(real) + jnp.sum(w * (err - e_hat)) / jnp.sum(w)
      loss += jnp.sum(w * (g(u, i) - r) ** 2) / jnp.sum(w) + lam * reg(p['imp'])
    return loss + lam * reg(p['pred'])

  def evaluate(p, vu, vi, vr, vm):
    m = nnx.merge(graphdef, p['pred'])
    pred = m(vu, vi)  # [V, width]
    mse = jnp.sum(vm * (pred - vr) ** 2) / jnp.sum(vm)
    return mse, ndcg_at_k(pred, vr >= cfg.threshold, vm, cfg.k)

  def train_one(p, w, lam, c, vu, vi, vr, vm):
    def step(carry, _):
      p, s = carry
      grads = jax.grad(loss_fn)(p, w, lam, c)
      upd, s = tx.update(grads, s, p)
      return (optax.apply_updates(p, upd), s), None

    def interval(carry, t):
      p, s, best = carry
      (p, s), _ = jax.lax.scan(step, (p, s), None, length=cfg.eval_every)
      mse, ndcg = evaluate(p, vu, vi, vr, vm)
      new = dict(best)
      for name, value, better in (('mse', mse, mse < best['mse'][0]),
                                  ('ndcg', ndcg, ndcg > best['ndcg'][0])):
        new[name] = (jnp.where(better, value, best[name][0]),
                     jnp.where(better, (t + 1) * cfg.eval_every, best[name][1]),
                     jax.tree.map(lambda a, b: jnp.where(better, a, b), p['pred'], best[name][2]))
      return (p, s, new), None

    best = {'mse': (jnp.inf, 0, p['pred']), 'ndcg': (-jnp.inf, 0, p['pred'])}
    (_, _, best), _ = jax.lax.scan(interval, (p, tx.init(p), best), jnp.arange(
        max(1, cfg.steps // cfg.eval_every)))
    return best

  run = jax.jit(jax.vmap(train_one))
  best = jax.device_get(run(params, w_all, jnp.asarray(l2, jnp.float32), level_logits, *v))
  out_params = {c: best[c][2] for c in CRITERIA}
  info = {c: {'value': np.asarray(best[c][0]), 'step': np.asarray(best[c][1])} for c in CRITERIA}
  return graphdef, out_params, info
